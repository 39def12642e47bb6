#!/usr/bin/python3
# test_daemon.py - blip2d end to end, spoken from a second language with only
# docs/protocol.md and python3-msgpack: golden ids over the socket (greedy,
# beam, repetition penalty, batch), concurrent clients == serial, streaming,
# fd passing, cancel and disconnect, every class of bad input, busy, a client
# that never reads, SIGTERM with work in flight, stale sockets.  TAP output.
# Environment (for slow builds: valgrind, ThreadSanitizer; see
# tests/SANITIZERS.md): BLIP2_TEST_TIMEOUT_SCALE multiplies every wait for
# the daemon (start-up, replies, exit; default 1); BLIP2_TEST_CASES=N runs
# only N of the golden cases, the captions first, and so N concurrent
# clients if below 8 (default: all 18); BLIP2_TEST_MAX_TOKENS caps
# max_new_tokens of the long requests that must run to their end (300 to
# 1500 tokens; default: no cap).
import json, os, signal, socket, struct, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, BLIP2D, SCALE, Client, ok, finish, pack, start, stop, status, image, manifest, require_msgpack, \
    wait_status, golden_requests, show_log

msgpack = require_msgpack()
MAX_TOKENS = int(os.environ.get("BLIP2_TEST_MAX_TOKENS") or 0)


def long_tokens(n):
    """max_new_tokens n of a request that must finish, under BLIP2_TEST_MAX_TOKENS"""
    return min(n, MAX_TOKENS) if MAX_TOKENS > 0 else n


if len(sys.argv) > 1 and sys.argv[1] == "--client":
    # helper process (run as another uid): send N generate requests, print when each finished
    sock_path, n, delay = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    time.sleep(delay)
    cs = Client(sock_path, timeout=None)
    img = image("chelsea.png")
    for i in range(n):
        cs.send({"id": i, "op": "generate", "image": img, "max_new_tokens": long_tokens(1000)})
    done = {}
    while len(done) < n:
        r = cs.recv()
        if r["type"] in ("done", "error"):
            done[r["id"]] = (r["type"], time.monotonic())
    print(json.dumps(done))
    sys.exit(0)
MODEL = os.path.join(G, "opt-tiny")
TMP = b2test.tmpdir("b2dtest.")


man = manifest()

proc, SOCK = start(tmp=TMP)
c = Client(SOCK)
c.send({"id": 1, "op": "hello", "v": 7, "client": "test_daemon.py"})
r = c.recv()
ok(r["type"] == "hello" and r["v"] == 2 and r["max_frame"] == 67108864, "hello negotiates version 2 and reports limits")

# golden ids over the socket, from the image files
cases = [x for x in man["cases"] if x["model"] == "opt-tiny" and "image" in x]
all_cases = cases
if os.environ.get("BLIP2_TEST_CASES"):
    # captions first (one per image), and always rocket.jpg's caption,
    # which the descriptor and feature-cache checks below ask for again
    cases = sorted(cases, key=lambda x: x["prompt_key"] != "caption")[:max(1, int(os.environ["BLIP2_TEST_CASES"]))]
    cases += [x for x in all_cases if x["id"] == "opt-tiny/rocket.jpg/caption" and x not in cases]
bad = []
serial = {}
for case, name, gen, req in golden_requests(cases, 11):
    r = c.call(req)
    if r["type"] != "done" or r["ids"][0] != gen["ids"] or r["texts"][0] != gen["text"]:
        bad.append((case["id"], name, r))
    if name == "greedy":
        serial[case["id"]] = (req, r["ids"][0])
ok(not bad, "golden greedy, beam and repetition-penalty ids and texts over the socket (%d calls)%s"
   % (3 * len(cases), "" if not bad else ": " + repr(bad[0])[:300]))

# the batch case: two requests in flight together
b = [x for x in man["cases"] if x["id"] == "opt-tiny/batch"][0]
c.send({"id": 500, "op": "generate", "image": image(b["images"][0]), "prompt": b["prompts"][0]})
c.send({"id": 501, "op": "generate", "image": image(b["images"][1]), "prompt": b["prompts"][1]})
got = {}
while len(got) < 2:
    r = c.recv()
    if r["type"] == "done":
        got[r["id"]] = r["ids"][0]
ok(got[500] == b["generate"]["greedy"]["ids"][0] and got[501] == b["generate"]["greedy"]["ids"][1][:len(got[501])]
   and all(t == 1 for t in b["generate"]["greedy"]["ids"][1][len(got[501]):]),
   "batched requests reproduce the golden batch ids")

# 8 concurrent clients == serial
keys = list(serial)[:8]


def concurrent(sock):
    """each request of keys from its own client at once -> {key: ids}"""
    got = {}

    def worker(k):
        cl = Client(sock)
        req = dict(serial[k][0])
        req["id"] = 7
        got[k] = cl.call(req)["ids"][0]
        cl.close()

    ths = [threading.Thread(target=worker, args=(k,)) for k in keys]
    [t.start() for t in ths]
    [t.join() for t in ths]
    return got


results = concurrent(SOCK)
ok(all(results.get(k) == serial[k][1] for k in keys), "8 concurrent clients get the serial results")

# the same against a daemon cutting prefills into chunks of 3 rows: the
# late requests' prompts go in over several steps, the ids do not change
proc3, SOCK3 = start("--prefill-chunk", "3", tmp=TMP, log="daemon-chunk.log")
results = concurrent(SOCK3)
st3 = status(SOCK3)
ok(all(results.get(k) == serial[k][1] for k in keys),
   "--prefill-chunk 3: 8 concurrent clients get the serial results (%d steps with a prefill, %d decode-only)"
   % (st3["engine"]["prefill_steps"], st3["engine"]["decode_steps"]))
# the paths the model runs: the golden folder computes in f32 on the own
# backend; its only weight type, f32, is kernels.c's (not tuned)
m3 = st3["model"]
ok(m3.get("precision") == "f32" and m3.get("backend") == "own" and m3.get("kernels", "").startswith("f32 "),
   "status: model.precision %r, backend %r, kernels %r" % (m3.get("precision"), m3.get("backend"), m3.get("kernels")))
stop(proc3)

# streaming: token events then done, pieces join to the text
req = {"id": 600, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 20}
c.send(dict(req, id=602))
evs = c.until_terminal(602)
toks = [e for e in evs if e["type"] == "token"]
done = evs[-1]
ok(done["type"] == "done" and [t["token"] for t in toks] == done["ids"][0][1:], "one token event per generated token, in order")
ok("".join(t["text"] for t in toks) == done["texts"][0], "streamed pieces join to the final text")

# fd passing
with open(os.path.join(G, "images", "rocket.jpg"), "rb") as f:
    r = c.call({"id": 700, "op": "generate", "image_fd": True, "max_new_tokens": 20}, fds=[f.fileno()])
want = [x for x in all_cases if x["image"] == "rocket.jpg" and x["prompt_key"] == "caption"][0]["generate"]["greedy"]["ids"]
ok(r["type"] == "done" and r["ids"][0] == want, "image passed as a descriptor (SCM_RIGHTS)")
ok(r.get("cached") is True, "the second request for the same image hits the feature cache")
r = c.call({"id": 701, "op": "generate", "image_fd": True})
ok(r["type"] == "error" and r["code"] == "bad_fd", "image_fd without a descriptor: bad_fd")
r = c.call({"id": 702, "op": "generate", "image_fd": True}, fds=[os.open(TMP, os.O_RDONLY)])
ok(r["type"] == "error" and r["code"] == "bad_fd", "a directory descriptor: bad_fd")
rfd, wfd = os.pipe()
r = c.call({"id": 703, "op": "generate", "image_fd": True}, fds=[rfd])
os.close(rfd); os.close(wfd)
ok(r["type"] == "error" and r["code"] == "bad_fd", "a pipe descriptor: bad_fd (never blocks the daemon)")

# cancel while running, then the slot is free at once
c.send({"id": 800, "op": "generate", "image": image("astronaut.png"), "stream": True, "max_new_tokens": 2000})
first = c.recv()
c.send({"id": 801, "op": "cancel", "target": 800})
rest = c.until_id(801)
term = [x for x in rest if x["id"] == 800 and x["type"] == "done"]
ok(first["type"] == "token" and len(term) == 1 and term[0]["finish"] == ["canceled"] and rest[-1]["found"] is True
   and rest.index(term[0]) < len(rest) - 1, "cancel: done(canceled) for the target, then cancel{found: true}")
c.send({"id": 803, "op": "cancel", "target": 12345})
r = c.recv()
ok(r["type"] == "cancel" and r["found"] is False, "cancel of an unknown id: found false")
t0 = time.monotonic()
r = c.call({"id": 804, "op": "generate", "image": image("camera.png"), "max_new_tokens": 5})
ok(r["type"] == "done" and time.monotonic() - t0 < 2 * SCALE, "a request after a cancel is served at once")

# a cancel racing its target's end: whatever the reply, nothing of the
# target follows it, and found: true comes after exactly one terminal (a
# found: false once went out ahead of the target's last frames, still
# queued for the loop thread)
bad, found = [], 0
for k in range(150):
    rid = 900 + 2 * k
    c.send({"id": rid, "op": "generate", "image": image("camera.png"), "stream": True, "max_new_tokens": 2})
    terms = 0
    if k % 3:  # its first event first, so the cancel meets it at every stage
        r = c.recv()
        terms += r.get("id") == rid and r["type"] in ("done", "error")
    c.send({"id": rid + 1, "op": "cancel", "target": rid})
    while True:
        r = c.recv()
        if r.get("id") == rid + 1:
            break
        terms += r.get("id") == rid and r["type"] in ("done", "error")
    found += r["found"] is True
    c.send({"id": 899, "op": "ping"})
    n = c.recv()
    if n["type"] != "pong" or (r["found"] and terms != 1) or terms > 1:
        bad.append((rid, r["found"], terms, n.get("type"), n.get("id")))
ok(not bad, "150 cancels racing their target's end (%d found): nothing of the target after the cancel reply; "
   "found: true after exactly one terminal %s" % (found, bad[:3]))

# a client that disconnects mid-stream frees its slot
d = Client(SOCK)
d.send({"id": 1, "op": "generate", "image": image("coffee.png"), "stream": True, "max_new_tokens": 2000})
d.recv()
d.close()
_, st = wait_status(c, lambda st: st["active"] == 0 and st["connections"] == 1, 2, interval=0.02, rid=900)
ok(st is not None and st["active"] == 0, "a disconnect mid-stream cancels the request and frees the slot")

# bad input: the daemon answers and keeps serving
def bad_frame(payload, code, name, rid=None):
    cl = Client(SOCK)
    cl.raw(struct.pack(">I", len(payload)) + payload)
    r = cl.recv()
    okc = r["type"] == "error" and r["code"] == code and (rid is None or r.get("id") == rid)
    cl.send({"id": 99, "op": "ping"})
    okc = okc and cl.recv()["type"] == "pong"
    cl.close()
    ok(okc, name + " -> " + code + ", connection still usable")


bad_frame(b"\xc1\xc1\xc1", "bad_msgpack", "garbage payload")
bad_frame(b"", "bad_msgpack", "empty payload")
bad_frame(msgpack.packb([1, 2, 3]), "not_map", "an array instead of a map")
bad_frame(msgpack.packb({"id": 5, "op": "dance"}), "unknown_op", "unknown op", rid=5)
bad_frame(msgpack.packb({"op": "ping"}), "missing_field", "no id")
bad_frame(msgpack.packb({"id": 6, "op": "generate", "image": b"x", "max_new_tokens": "many"}), "bad_type", "wrong type", rid=6)
bad_frame(msgpack.packb({"id": 7, "op": "generate", "image": b"x", "num_beams": 0}), "out_of_range", "num_beams 0", rid=7)
bad_frame(msgpack.packb({"id": 8, "op": "generate", "image": b"x", "temprature": 0.5}), "unknown_field", "misspelt field", rid=8)
bad_frame(msgpack.packb({"id": 9, "op": "generate", "image": b"not an image at all"}), "bad_image", "non-image bytes", rid=9)
bad_frame(msgpack.packb({"id": 10, "op": "generate", "image": image("chelsea.png")[:3000]}), "bad_image", "truncated PNG", rid=10)
bad_frame(msgpack.packb({"id": 11, "op": "generate", "image": image("chelsea.png"), "prompt": "cat " * 3000}), "too_large", "prompt beyond the context", rid=11)
bad_frame(msgpack.packb({"id": 12, "op": "generate", "image": b"x", "do_sample": True, "num_beams": 2}), "unsupported", "beam sampling", rid=12)
bad_frame(msgpack.packb({"id": 13, "op": "generate", "image": b"x", "prompt": "a\x00b"}), "bad_utf8", "NUL in the prompt", rid=13)

cl = Client(SOCK)
cl.send({"id": 1, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": long_tokens(300)})
cl.send({"id": 1, "op": "generate", "image": image("chelsea.png")})
rs = [cl.recv(), cl.recv()]
ok(any(x["type"] == "error" and x["code"] == "duplicate_id" for x in rs) and any(x["type"] == "done" for x in rs),
   "a duplicate id in flight is refused; the original completes")
cl.close()

cl = Client(SOCK)
cl.raw(struct.pack(">I", 0x7fffffff) + b"abc")
r = cl.recv()
closed = False
try:
    closed = cl.s.recv(1) == b""
except OSError:
    closed = True
ok(r["type"] == "error" and r["code"] == "frame_too_large" and "id" not in r and closed,
   "a huge declared frame length: frame_too_large without reading it, then closed")
cl.close()
cl = Client(SOCK)
cl.raw(pack({"id": 1, "op": "generate", "image": image("chelsea.png")})[:5000])
cl.close()
cl = Client(SOCK)
cl.raw(os.urandom(3))
cl.close()
r = c.call({"id": 950, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 3})
ok(r["type"] == "done" and proc.poll() is None, "truncated frames and vanished clients leave the daemon serving")

# SIGTERM with work in flight: the client gets its terminal reply, the daemon exits 0 and removes its socket
# (in flight: its first token has arrived; a request still unread in the
# socket when the signal lands is refused with shutting_down instead)
c.send({"id": 1000, "op": "generate", "image": image("coffee.png"), "stream": True,
        "max_new_tokens": long_tokens(1500)})
first = c.recv()
proc.send_signal(signal.SIGTERM)
try:
    evs = c.until_terminal(1000)
    last = evs[-1]
except EOFError:
    last = {"type": "EOF"}
rc = proc.wait(20 * SCALE)
if not ok(first.get("id") == 1000 and first["type"] == "token" and last["type"] == "done" and rc == 0
          and not os.path.exists(SOCK),
          "SIGTERM: in-flight request finished, exit 0, socket removed (first %s, last %s %s, exit %s)"
          % (first["type"], last["type"], last.get("finish", last.get("code", "")), rc)):
    show_log(proc)
c.close()

# busy: a full queue answers at once
proc, SOCK = start("--max-queue", "1", "--max-batch", "1", tmp=TMP)
cl = Client(SOCK)
t0 = time.monotonic()
for i in range(6):
    cl.send({"id": i, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": long_tokens(400)})
res = [cl.recv() for _ in range(6)]
busy = [x for x in res if x["type"] == "error" and x["code"] == "busy"]
ok(len(busy) >= 1 and all(x["type"] == "done" for x in res if x not in busy), "a full queue answers busy; admitted requests complete (%d busy)" % len(busy))
cl.close()
stop(proc)

# a client that never reads: bounded buffer, dropped after the stall timeout; others unaffected
proc, SOCK = start("--max-output", "4096", "--stall-timeout", "1", tmp=TMP)
lazy = Client(SOCK)
for i in range(40):
    lazy.send({"id": i, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 1000})
other = Client(SOCK)
r = other.call({"id": 1, "op": "generate", "image": image("rocket.jpg"), "max_new_tokens": 20})
ok(r["type"] == "done" and r["ids"][0] == want, "another client is served while one never reads")
dropped, _ = wait_status(other, lambda st: st["connections"] == 1, 7.5, rid=2)
ok(dropped, "the non-reading client is disconnected after the stall timeout")
other.close()
lazy.close()
ok(stop(proc) == 0, "clean exit after that")

# fairness: users are served round-robin (needs root to run clients as two uids)
if os.geteuid() == 0:
    proc, SOCK = start("--max-batch", "1", tmp=TMP)
    os.chmod(TMP, 0o755)
    os.chmod(SOCK, 0o666)
    me = os.path.abspath(__file__)
    env = dict(os.environ, GOLDEN_DIR=os.path.abspath(G))
    a = subprocess.Popen([sys.executable, me, "--client", SOCK, "6", "0"], user=4001, group=4001, env=env,
                         stdout=subprocess.PIPE)
    b = subprocess.Popen([sys.executable, me, "--client", SOCK, "1", "0.3"], user=4002, group=4002, env=env,
                         stdout=subprocess.PIPE)
    try:
        ra = json.loads(a.communicate(timeout=300 * SCALE)[0])
        rb = json.loads(b.communicate(timeout=300 * SCALE)[0])
    except Exception:
        a.kill(); b.kill(); proc.kill()
        raise
    ta = sorted(t for _, t in ra.values())
    tb = rb["0"][1]
    later = sum(1 for t in ta if t > tb)
    ok(all(v[0] == "done" for v in ra.values()) and rb["0"][0] == "done" and later >= 3,
       "round-robin over users: a second user's request overtakes the first user's backlog (%d of 6 finished after it)" % later)
    ok(stop(proc) == 0, "exit 0")
else:
    ok(True, "# SKIP fairness between uids needs root")

# shutdown deadline: running work is canceled, the client still gets its done
proc, SOCK = start("--shutdown-timeout", "0", tmp=TMP)
cl = Client(SOCK)
cl.send({"id": 1, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 2000})
cl.recv()
proc.send_signal(signal.SIGTERM)
evs = cl.until_terminal(1)
ok(evs[-1]["type"] == "done" and evs[-1]["finish"] == ["canceled"] and 1 < len(evs[-1]["ids"][0]) < 2001 and proc.wait(20 * SCALE) == 0,
   "SIGTERM past the deadline: done(canceled) with the tokens so far, exit 0")
cl.close()

# a preparation that outlasts the shutdown: the deadline (0 s) passes, the
# hard stop 5 s later closes the connections without waiting for the pool;
# the job on it and the one queued behind it (one preparation thread) get
# their terminal reply, shutting_down, before the connection closes (they
# used to get only the end of the connection), are released when the pool
# returns, and the daemon exits 0 with a clean log (the old daemon handed
# the returned job to the stopped engine: a NULL dereference; ASan/UBSan
# builds report any leak or error in the log)
env = dict(os.environ, BLIP2D_TEST_PREP_DELAY_MS="8000", UV_THREADPOOL_SIZE="1")
proc, SOCK = start("--shutdown-timeout", "0", tmp=TMP, log="daemon-prep.log", env=env)
cl = Client(SOCK)
for rid in (1, 2):
    cl.send({"id": rid, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 3})
wait_status(SOCK, lambda st: st["queue_depth"] >= 2, 10)
t0 = time.monotonic()
proc.send_signal(signal.SIGTERM)
try:
    rc = proc.wait(30 * SCALE)
except subprocess.TimeoutExpired:
    proc.kill()
    rc = proc.wait()
took = time.monotonic() - t0
got = {}
try:
    while True:
        r = cl.recv()
        got.setdefault(r.get("id"), []).append((r.get("type"), r.get("code")))
except (EOFError, OSError):
    pass
with open(os.path.join(TMP, "daemon-prep.log"), "rb") as f:
    bad = [line for line in f.read().decode("utf-8", "replace").splitlines()
           if "runtime error" in line or "Sanitizer" in line]
if not ok(rc == 0 and not bad and not os.path.exists(SOCK),
          "SIGTERM while a preparation outlasts the deadline: exit 0 after the hard stop (%s, %.1f s), a clean log"
          % (rc, took)):
    show_log(proc)
ok(got == {1: [("error", "shutting_down")], 2: [("error", "shutting_down")]},
   "the hard stop: the request being prepared and the one waiting for it each answered shutting_down, "
   "then the connection closed (%r)" % (got,))
cl.close()

# stale socket file, live daemon, kill -9 and restart on the same path
path = os.path.join(TMP, "stale.sock")
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.close()
proc, _ = start(sock=path, tmp=TMP)
ok(proc.poll() is None, "a stale socket file is replaced")
second = subprocess.run([BLIP2D, "--model", MODEL, "--socket", path], capture_output=True, timeout=30 * SCALE)
ok(second.returncode == 1 and b"already listening" in second.stderr, "a second daemon on a live socket refuses to start")
proc.kill()
proc.wait()
proc, _ = start(sock=path, tmp=TMP)
cl = Client(path)
ok(cl.call({"id": 1, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 2})["type"] == "done",
   "after kill -9 a new daemon serves on the same path")
cl.close()
ok(stop(proc) == 0, "exit 0")

finish()
