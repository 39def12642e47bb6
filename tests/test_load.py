#!/usr/bin/python3
# test_load.py - blip2d under load and faults, spoken over the socket like
# test_daemon.py (docs/protocol.md, python3-msgpack).  TAP output.
#   load:     64 connections for a bounded time send a mix of golden greedy
#             requests (streamed or not), cancels, disconnects mid-stream and
#             malformed frames; every valid request gets exactly one terminal
#             reply, every completed greedy result equals the golden ids, and
#             the daemon's RSS and open descriptors return to their warm baseline
#   overflow: with --max-queue 2 a flood is answered busy at once (95 % within
#             200 ms, all within 1 s) and RSS does not grow with it
#   faults:   a client process killed with SIGKILL mid-stream frees its slot;
#             a weight file (safetensors, or the GGUF the weights cache made)
#             truncated under a running daemon ends it loudly
#             (exit 70, one log line) and its clients see the connection lost
# Environment: LOAD_SECONDS (length of the load round, default 6; the
# warm-up round is half of it), LOAD_CONNECTIONS (default 64), and
# BLIP2_TEST_TIMEOUT_SCALE, which multiplies every wait for the daemon
# (start-up, replies, settling, exit; default 1), for slow builds (valgrind,
# ThreadSanitizer; see tests/SANITIZERS.md).
import json, os, random, shutil, socket, struct, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from b2test import G, SCALE, Client, ok, finish, pack, start, stop, status, wait_status, image, manifest, \
    require_msgpack

require_msgpack()
MODEL = os.path.join(G, "opt-tiny")
LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "6"))
CONNS = max(1, int(os.environ.get("LOAD_CONNECTIONS") or 64))


if len(sys.argv) > 1 and sys.argv[1] == "--stream-and-wait":
    # helper process: start a long streamed request, say so after the first token, then wait to be killed
    c = Client(sys.argv[2])
    c.send({"id": 1, "op": "generate", "image": image("coffee.png"), "stream": True, "max_new_tokens": 2000})
    r = c.recv()
    print(r["type"], flush=True)
    time.sleep(60)
    sys.exit(0)

TMP = tempfile.mkdtemp(prefix="b2dload.")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def sanitized(pid):
    # under ASan the allocator keeps freed memory in quarantine, under TSan
    # the shadow memory grows with what was touched: RSS says nothing then
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    return "libasan" in maps or "libtsan" in maps


def rss_ok(cond, name, pid):
    if sanitized(pid):
        return ok(True, "# SKIP %s (ASan/TSan build: RSS is the sanitizer's)" % name)
    return ok(cond, name)


def settle(p, sock, fd_base=None, timeout=10):
    # wait for no work, only our status connection, and (if given) the baseline descriptor count
    return wait_status(sock, lambda st: st["active"] == 0 and st["queue_depth"] == 0 and st["connections"] == 1 and
                       (fd_base is None or nfds(p.pid) <= fd_base), timeout)[0]


man = manifest()
CASES = []
for x in man["cases"]:
    if x["model"] == "opt-tiny" and "image" in x:
        g = x["generate"]["greedy"]
        CASES.append((image(x["image"]), x["prompt"], g["kwargs"]["max_new_tokens"], g["ids"]))


def golden_request(rid, stream=False):
    img, prompt, mnt, want = random.choice(CASES)
    req = {"id": rid, "op": "generate", "image": img, "max_new_tokens": mnt}
    if prompt:
        req["prompt"] = prompt
    if stream:
        req["stream"] = True
    return req, want


# ---- load ------------------------------------------------------------------
proc, SOCK = start("--max-queue", "256", tmp=TMP)
# an ASan build is several times slower (and make check runs other tests
# beside it): a shorter round, one request at a time per connection, and
# patience before a reply counts as lost
SLOW = sanitized(proc.pid)
if SLOW:
    LOAD_SECONDS = min(LOAD_SECONDS, 3)
PIPELINE = 1 if SLOW else 3
TIMEOUT = (300 if SLOW else 30) * SCALE

# warm-up: every case once, from 8 connections at a time, then the baseline
def warm(cases):
    c = Client(SOCK)
    for i, (img, prompt, mnt, want) in enumerate(cases):
        req = {"id": i, "op": "generate", "image": img, "max_new_tokens": mnt}
        if prompt:
            req["prompt"] = prompt
        c.send(req)
        while c.recv()["type"] not in ("done", "error"):
            pass
    c.close()


for _ in range(2):
    ths = [threading.Thread(target=warm, args=(CASES[i::8],)) for i in range(8)]
    [t.start() for t in ths]
    [t.join() for t in ths]
lock = threading.Lock()
stats = {"sent": 0, "done": 0, "error": 0, "canceled": 0, "compared": 0, "disconnects": 0, "malformed": 0,
         "cancels": 0, "busy": 0}
problems = []


def note(msg):
    with lock:
        if len(problems) < 20:
            problems.append(msg)


def bump(k, n=1):
    with lock:
        stats[k] += n


def load_worker(seed, deadline):
    rnd = random.Random(seed)
    c = None
    rid = 0
    while time.monotonic() < deadline:
        if c is None:
            c = Client(SOCK, TIMEOUT)
        act = rnd.random()
        try:
            if act < 0.6:
                # 1-3 pipelined golden requests, each answered by exactly one terminal
                want = {}
                for _ in range(rnd.randint(1, PIPELINE)):
                    rid += 1
                    req, ids = golden_request(rid, stream=rnd.random() < 0.3)
                    want[rid] = ids
                    c.send(req)
                bump("sent", len(want))
                seen = {}
                while len(seen) < len(want):
                    r = c.recv()
                    if r.get("id") not in want:
                        note("reply for an unknown id: %r" % (r,))
                        continue
                    if r["type"] in ("done", "error"):
                        if r["id"] in seen:
                            note("second terminal for id %d" % r["id"])
                        seen[r["id"]] = r
                for i, r in seen.items():
                    if r["type"] == "error":
                        bump("busy" if r["code"] == "busy" else "error")
                    else:
                        bump("done")
                        bump("compared")
                        if r["ids"][0] != want[i]:
                            note("greedy ids differ from the golden: %r" % (r["ids"][0],))
            elif act < 0.75:
                # cancel a streamed request after its first event
                rid += 1
                req, ids = golden_request(rid, stream=True)
                c.send(req)
                bump("sent")
                first = c.recv()
                cancel_id = rid + 1000000
                c.send({"id": cancel_id, "op": "cancel", "target": rid})
                bump("cancels")
                terms, cancel_reply = [], None
                if first["type"] in ("done", "error"):
                    terms.append(first)
                while cancel_reply is None:
                    r = c.recv()
                    if r.get("id") == cancel_id:
                        cancel_reply = r
                    elif r.get("id") == rid and r["type"] in ("done", "error"):
                        terms.append(r)
                if len(terms) != 1:
                    note("canceled request: %d terminal replies" % len(terms))
                elif terms[0]["type"] == "done":
                    if terms[0]["finish"] == ["canceled"]:
                        bump("canceled")
                    else:
                        bump("done")
                        bump("compared")
                        if terms[0]["ids"][0] != ids:
                            note("greedy ids (finished before the cancel) differ from the golden")
                else:
                    bump("busy" if terms[0]["code"] == "busy" else "error")
            elif act < 0.87:
                # disconnect mid-stream
                rid += 1
                req, _ = golden_request(rid, stream=True)
                c.send(req)
                if rnd.random() < 0.5:
                    c.recv()
                c.close()
                c = None
                bump("disconnects")
            else:
                # malformed frames
                k = rnd.randrange(4)
                bump("malformed")
                if k == 0:
                    c.raw(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
                    r = c.recv()
                    if r["type"] != "error" or r["code"] != "bad_msgpack":
                        note("garbage payload: %r" % (r,))
                elif k == 1:
                    rid += 1
                    c.send({"id": rid, "op": "generate", "image": b"not an image"})
                    r = c.recv()
                    if r["type"] != "error" or r["code"] != "bad_image":
                        note("bad image: %r" % (r,))
                elif k == 2:
                    c.raw(struct.pack(">I", 0x7fffffff) + b"abc")
                    r = c.recv()
                    if r["type"] != "error" or r["code"] != "frame_too_large":
                        note("huge frame: %r" % (r,))
                    c.close()
                    c = None
                else:
                    c.raw(pack({"id": 1, "op": "generate", "image": image("chelsea.png")})[:3000])
                    c.close()
                    c = None
        except (EOFError, OSError) as e:
            note("connection failed: %r" % (e,))
            if c:
                c.close()
            c = None
    if c is not None:
        # nothing may follow the terminals: a ping is answered next
        c.send({"id": 424242, "op": "ping"})
        r = c.recv()
        if r["type"] != "pong":
            note("after the terminals, a ping got %r" % (r,))
        c.close()


def load_round(seconds):
    t0 = time.monotonic()
    ths = [threading.Thread(target=load_worker, args=(seed_base[0] + i, t0 + seconds)) for i in range(CONNS)]
    seed_base[0] += 64
    [t.start() for t in ths]
    peak = rss_kib(proc.pid)
    while any(t.is_alive() for t in ths):
        peak = max(peak, rss_kib(proc.pid))
        time.sleep(0.1)
    [t.join() for t in ths]
    return time.monotonic() - t0, peak


seed_base = [0]
# warm-up round with the same mix (malloc arenas of the pool and libvips
# threads, the feature cache), then the baseline
load_round(LOAD_SECONDS / 2)
settle(proc, SOCK)
time.sleep(1.5)  # the daemon trims its heap at the first quiet tick (once a second)
rss0, fd0 = rss_kib(proc.pid), nfds(proc.pid)
for k in stats:
    stats[k] = 0
elapsed, rss_peak = load_round(LOAD_SECONDS)
settled = settle(proc, SOCK, fd0)
time.sleep(1.5)  # the daemon trims its heap at the first quiet tick (once a second)
rss1, fd1 = rss_kib(proc.pid), nfds(proc.pid)
print("# load %.1f s, %d connections: %s" % (elapsed, CONNS, json.dumps(stats)))
print("# RSS warm %d KiB, peak %d KiB, after %d KiB; fds %d -> %d" % (rss0, rss_peak, rss1, fd0, fd1))
ok(not problems, "%d connections: every valid request got exactly one terminal reply, greedy == golden%s"
   % (CONNS, "" if not problems else ": " + "; ".join(problems[:3])[:400]))
ok(stats["compared"] >= max(1, (16 if SLOW else 64) * CONNS // 64) and stats["cancels"] > 0 and stats["disconnects"] > 0 and stats["malformed"] > 0,
   "the mix ran: %d compared with the golden, %d cancels, %d disconnects, %d malformed"
   % (stats["compared"], stats["cancels"], stats["disconnects"], stats["malformed"]))
ok(proc.poll() is None and settled, "the daemon is idle again, with only our connection")
rss_ok(rss1 - rss0 < 20 * 1024, "RSS back near the warm baseline (%d -> %d KiB, +%d KiB)" % (rss0, rss1, rss1 - rss0),
       proc.pid)
ok(fd1 == fd0, "open descriptors back to the baseline (%d -> %d)" % (fd0, fd1))

# a client process killed with SIGKILL mid-stream frees its slot; others are served meanwhile
helper = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--stream-and-wait", SOCK],
                          stdout=subprocess.PIPE, env=dict(os.environ, GOLDEN_DIR=os.path.abspath(G)))
line = helper.stdout.readline().strip()
st = status(SOCK)
busy_before = st["active"] == 1 and st["connections"] == 2
helper.kill()
helper.wait()
freed = settle(proc, SOCK, fd0, timeout=5)
c = Client(SOCK)
req, want = golden_request(1)
c.send(req)
r = c.recv()
c.close()
ok(line == b"token" and busy_before and freed, "SIGKILL of a client process mid-stream: the slot and descriptor are freed")
ok(r["type"] == "done" and r["ids"][0] == want, "the next client is served the golden ids")
ok(stop(proc) == 0, "exit 0 after the load")

# ---- queue overflow ---------------------------------------------------------
proc, SOCK = start("--max-queue", "2", "--max-batch", "1", tmp=TMP)
warm(CASES[:2])
settle(proc, SOCK)
rss0 = rss_kib(proc.pid)
lat = []
kinds = {}
peak = [rss0]


def flooder(n):
    c = Client(SOCK)
    sent = {}
    got = {}

    def reader():
        try:
            while len(got) < n:
                r = c.recv()
                if r["type"] in ("done", "error"):
                    got[r["id"]] = (r, time.monotonic())
        except (EOFError, OSError):
            pass
    rt = threading.Thread(target=reader)
    rt.start()
    img = image("chelsea.png")
    for i in range(n):
        sent[i] = time.monotonic()
        c.send({"id": i, "op": "generate", "image": img, "max_new_tokens": 60})
        time.sleep(0.002)
    rt.join(60 * SCALE)
    c.close()
    with lock:
        for i, (r, t) in got.items():
            k = r["code"] if r["type"] == "error" else "done"
            kinds[k] = kinds.get(k, 0) + 1
            if k == "busy":
                lat.append(t - sent[i])


ths = [threading.Thread(target=flooder, args=(60,)) for _ in range(4)]
[t.start() for t in ths]
while any(t.is_alive() for t in ths):
    peak[0] = max(peak[0], rss_kib(proc.pid))
    time.sleep(0.05)
[t.join() for t in ths]
settle(proc, SOCK)
rss1 = rss_kib(proc.pid)
lat.sort()
print("# flood: %s; busy latency median %.1f ms, max %.1f ms; RSS %d -> peak %d -> %d KiB"
      % (json.dumps(kinds), 1000 * lat[len(lat) // 2] if lat else -1, 1000 * lat[-1] if lat else -1, rss0, peak[0], rss1))
ok(sum(kinds.values()) == 240 and kinds.get("busy", 0) >= 200, "a flood of 240 requests: each answered, %d busy"
   % kinds.get("busy", 0))
# prompt: 95 % within 200 ms of the request, none beyond 1 s (a loaded CI
# machine can stall the Python client itself for a moment); ASan x5
BUSY_MS = 1000 if SLOW else 200
p95 = lat[int(0.95 * (len(lat) - 1))] if lat else 99
ok(lat and p95 < BUSY_MS / 1000 and lat[-1] < 5 * BUSY_MS / 1000,
   "busy replies are prompt: 95 %% within %d ms of the request (%.1f ms), the slowest %.1f ms"
   % (BUSY_MS, 1000 * p95, 1000 * lat[-1] if lat else -1))
rss_ok(peak[0] - rss0 < 20 * 1024 and rss1 - rss0 < 20 * 1024, "RSS does not grow with the flood (+%d KiB at the peak)"
       % (peak[0] - rss0), proc.pid)
ok(stop(proc) == 0, "exit 0 after the flood")

# ---- the weight file truncated under a running daemon ------------------------
# twice: the safetensors of a folder loaded directly, and the GGUF file the
# weights cache made from it (both mapped MAP_SHARED)
def truncated_weights(kind):
    mdir = os.path.join(TMP, "model-" + kind)
    shutil.copytree(MODEL, mdir)
    if kind == "folder":
        proc, SOCK = start("--no-weights-cache", model=mdir, log="sigbus-%s.log" % kind, tmp=TMP)
        victim = os.path.join(mdir, "model.safetensors")
    else:
        wc = os.path.join(TMP, "wcache")
        proc, SOCK = start("--weights-cache", wc, model=mdir, log="sigbus-%s.log" % kind, tmp=TMP)
        files = [f for f in os.listdir(wc) if f.endswith(".gguf")]
        ok(len(files) == 1, "the weights cache holds one GGUF file (%r)" % files)
        victim = os.path.join(wc, files[0]) if files else os.path.join(mdir, "model.safetensors")
    c = Client(SOCK)
    req, want = golden_request(1)
    c.send(req)
    first = c.recv()
    with open(victim, "r+b") as f:
        f.truncate(4096)
    lost = False
    t0 = time.monotonic()
    try:
        c.send({"id": 2, "op": "generate", "image": image("camera.png"), "max_new_tokens": 20})
        while True:
            c.recv()
    except (EOFError, ConnectionResetError, BrokenPipeError):
        lost = True
    except socket.timeout:
        lost = False
    c.close()
    try:
        rc = proc.wait(15 * SCALE)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    log = open(os.path.join(TMP, "sigbus-%s.log" % kind), "rb").read().decode(errors="replace")
    ok(first["type"] == "done" and first["ids"][0] == want, "%s: a copied model serves before it is truncated" % kind)
    ok(lost and time.monotonic() - t0 < 15 * SCALE, "%s: after truncation the client sees the connection lost, not a hang"
       % kind)
    ok(rc == 70, "%s: the daemon exits with status 70 (got %r)" % (kind, rc))
    ok("model file changed underneath the daemon (SIGBUS at 0x" in log and "exiting so systemd restarts it" in log,
       "%s: and says why in its log" % kind)


truncated_weights("folder")
truncated_weights("gguf")

shutil.rmtree(TMP, ignore_errors=True)
finish()
