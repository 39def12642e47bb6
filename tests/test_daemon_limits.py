#!/usr/bin/python3
# test_daemon_limits.py - what one buggy or hostile client may cost the
# others (issue 12): each check asserts a bound (descriptors, resident
# memory, work done), not just that the daemon is alive.
#   finding 1: a connection reset while replies are unread and descriptors
#     are in flight never closes another connection's descriptor (a failed
#     recvmsg left a stale SCM_RIGHTS buffer that was parsed again)
#   finding 2: a client that never reads gets no more replies produced once
#     its unread output is over --max-output: resident memory stays bounded,
#     and the replies all come once it reads
#   finding 5: features work of a client that has gone is dropped, image
#     decoding included
#   finding 3: the memory budget (--max-memory) refuses requests with busy
#     (or too_large) instead of growing, image decodes included (charged
#     from the header before decoding); status reports its use by category; a partial frame is dropped after
#     --frame-timeout; one uid's connections (--max-connections-per-uid,
#     its idle ones make room) and requests (--max-inflight-per-uid) are
#     capped; a connection that holds nothing and sends nothing is closed
#     after --idle-timeout; connections whose peers have gone, not read yet
#     (a batch accepted at once, or paused over the budget), are closed at
#     the cap instead of taking the place of the uid's open idle connection
# TAP output.  Environment: BLIP2_TEST_TIMEOUT_SCALE (see b2test.py).
import json, os, signal, socket, struct, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, SCALE, Client, ok, finish, pack, start, stop, image, require_msgpack, wait_status

msgpack = require_msgpack()
TMP = b2test.tmpdir("b2dlim.")


def fds(pid):
    """the daemon's open descriptors"""
    return sorted(int(x) for x in os.listdir("/proc/%d/fd" % pid))


def settled_fds(pid, quiet=0.5):
    """the daemon's descriptors once the set has not changed for `quiet`
    seconds: start()'s probe connection may still be open on its side"""
    end = time.monotonic() + 5 * SCALE
    last, since = fds(pid), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now = fds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def sanitized(pid):
    """An ASan/TSan build: its allocator keeps freed memory in quarantine
    (RSS says nothing of ours) and it opens descriptors of its own."""
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    return "libasan" in maps or "libtsan" in maps


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def png(n, side=3000):
    """a side x side RGB PNG, distinct for each n: costly to decode"""
    import struct, zlib
    row = b"\x00" + bytes((x * 7 + n) & 255 for x in range(side * 3))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * side, 1)) + chunk(b"IEND", b""))


# ---- finding 1 --------------------------------------------------------------
# A passes a descriptor (the daemon reads it and closes it: its number and
# control message stay in the daemon's stack); the victim V connects and
# gets that number; B leaves a reply unread, sends a burst of frames and
# closes, so a read of the daemon fails with ECONNRESET in the middle of
# its read loop.  Before the fix that read re-parsed the stale control
# message and closed V's socket (and libuv aborted).
proc, SOCK = start(tmp=TMP)
base = settled_fds(proc.pid)
img = open(os.path.join(G, "images", "rocket.jpg"), "rb")
# ~300 KB of pings (their pongs stay under --max-output, so reading goes
# on): the daemon reads it in several rounds of one read loop, and the
# round after the last byte finds the reset
burst = b"".join(pack({"id": i, "op": "ping"}) for i in range(20000))
rounds = alive = 0
for k in range(10):
    try:
        a = Client(SOCK)
        a.call({"id": 1, "op": "generate", "image_fd": True, "max_new_tokens": 2}, fds=[img.fileno()])
        v = Client(SOCK)
        v.send({"id": 1, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 2000})
        v.recv()
        b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        b.connect(SOCK)
        b.sendall(pack({"id": 1, "op": "ping"}))  # its pong stays unread
        time.sleep(0.05)
        try:
            b.sendall(burst)
        except OSError:
            pass
        b.close()  # unread replies: the daemon's next read fails with ECONNRESET
        rounds += 1
        try:
            v.send({"id": 2, "op": "cancel", "target": 1})
            while v.recv().get("id") != 2:
                pass
            v.send({"id": 3, "op": "ping"})
            alive += v.recv().get("type") == "pong"
        except (OSError, EOFError):
            pass
        v.close()
        a.close()
        if proc.poll() is not None:
            break
    except (OSError, EOFError):  # the daemon died
        break
img.close()
ok(proc.poll() is None and alive == rounds,
   "10 resets with unread replies after a descriptor was passed: the daemon and the connection that got the "
   "descriptor's number live on (%d of %d%s)" % (alive, rounds, "" if proc.poll() is None else
                                                   ", daemon died with %s" % proc.poll()))
end = time.monotonic() + 5 * SCALE  # the connections' closes are processed
while proc.poll() is None and fds(proc.pid) != base and time.monotonic() < end:
    time.sleep(0.05)
now = fds(proc.pid) if proc.poll() is None else []
# under a sanitizer a descriptor of its own may be open at the baseline:
# there, none may be added (no leak); the exact set is checked without one
strict = proc.poll() is not None or not sanitized(proc.pid)
ok(now == base if strict else set(now) <= set(base),
   "no descriptor leaked or closed twice: the daemon's descriptors are back to the baseline %s (%s)%s"
   % (base, now, "" if strict else " (sanitizer build: no descriptor added)"))
ok(stop(proc) == 0, "exit 0")

# ---- finding 2 --------------------------------------------------------------
proc, SOCK = start("--max-output", str(4 << 20), "--stall-timeout", "60", tmp=TMP, log="daemon-out.log")
lazy = Client(SOCK, timeout=120 * SCALE)
lazy.send({"id": 1, "op": "hello", "v": 2})
lazy.recv()
honest = Client(SOCK)
honest.call({"id": 1, "op": "generate", "image": image("rocket.jpg"), "max_new_tokens": 2})
base = rss_mib(proc.pid)
text = "the cat " * 60  # 122 tokens: logits of 24 MiB per reply
N = 16
for i in range(N):
    lazy.send({"id": 10 + i, "op": "features", "text": text, "outputs": ["logits"]})
# watch until all 16 were produced (as before) or nothing moves for 3 s
peak, last, still = base, -1, time.monotonic()
while time.monotonic() - still < 3 * SCALE:
    peak = max(peak, rss_mib(proc.pid))
    st = honest.call({"id": 3, "op": "status"})
    if st["requests_total"] != last:
        last, still = st["requests_total"], time.monotonic()
    if st["requests_total"] >= N + 1:
        break
    time.sleep(0.05)
r = honest.call({"id": 2, "op": "generate", "image": image("rocket.jpg"), "max_new_tokens": 2})
# at most the cap plus the reply being produced (and its encoding) are held;
# before, all 16 replies were (16 x 24 MiB)
ok(r["type"] == "done" and (peak - base < 160 or sanitized(proc.pid)),
   "a client that never reads 16 large replies: resident memory grew %.0f MiB (bound 160; the replies total %d MiB)"
   % (peak - base, N * 24))
got = []
while len(got) < N:
    r = lazy.recv()
    got.append((r["type"], r["tensors"]["logits"]["shape"] if r["type"] == "features" else r.get("message")))
ok(all(t[0] == "features" and t[1][2] == 50272 for t in got), "once it reads, it gets all %d replies, none dropped%s"
   % (N, "" if all(t[0] == "features" for t in got) else ": " + repr(got)[:300]))
lazy.close()
honest.close()
ok(stop(proc) == 0, "exit 0")

# ---- finding 5 --------------------------------------------------------------
# one batch slot, held by a long generate: the features requests are
# prepared and then wait in the queue until their client has gone
proc, SOCK = start("--max-batch", "1", tmp=TMP, log="daemon-gone.log")
blocker = Client(SOCK)
blocker.send({"id": 1, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 2000})
blocker.recv()
cl = Client(SOCK)
cl.send({"id": 1, "op": "hello", "v": 2})
cl.recv()
for i in range(8):
    cl.send({"id": 10 + i, "op": "features", "image": png(i), "outputs": ["image_pooler_output"]})
cl.call({"id": 2, "op": "ping"})  # the daemon has read all 8
cl.close()
blocker.send({"id": 2, "op": "cancel", "target": 1})
while blocker.recv().get("id") != 2:
    pass
idle, st = wait_status(blocker, lambda s: s["active"] == 0 and s["queue_depth"] == 0 and s["connections"] == 1, 60,
                       rid=3)
# the generate put one cache entry; each features request that ran would
# have put two more
ok(idle and st["cache"]["entries"] == 1, "features requests of a client that has gone are dropped, not run "
   "(%d of 8 ran)" % ((st["cache"]["entries"] - 1) // 2))
blocker.close()
ok(stop(proc) == 0, "exit 0")

# ---- finding 3 --------------------------------------------------------------
def start_or_none(*args, **kw):
    try:
        return start(*args, **kw)
    except RuntimeError:  # a daemon without the option
        return None, None


def drain(cl, rid):
    """cancels rid on cl and reads up to the cancel reply"""
    cl.send({"id": 9000 + rid, "op": "cancel", "target": rid})
    while cl.recv().get("id") != 9000 + rid:
        pass


proc, SOCK = start_or_none("--max-memory", str(16 << 20), "--max-batch", "1", tmp=TMP, log="daemon-mem.log")
if proc:
    cl = Client(SOCK)
    cl.send({"id": 1, "op": "hello", "v": 2})
    cl.recv()
    r = cl.call({"id": 2, "op": "features", "text": "cat " * 4000, "outputs": ["logits_last"]})
    ok(r["type"] == "error" and r["code"] == "too_large" and "--max-memory" in r["message"],
       "a request that alone needs more than --max-memory: too_large (%s)" % r.get("code"))
    cl.call({"id": 3, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 20})  # warm
    base = rss_mib(proc.pid)
    for i in range(12):  # each holds ~2.5 MB at most: pixels, a 2000-token KV cache
        cl.send({"id": 10 + i, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 2000})
    busy, admitted = 0, []
    while busy + len(admitted) < 12:
        r = cl.recv()
        if r["type"] == "error" and r["code"] == "busy" and "--max-memory" in r["message"]:
            busy += 1
        elif r["type"] == "token" and r["id"] not in admitted:
            admitted.append(r["id"])
        elif r["type"] == "error":
            busy = 99
    peak = rss_mib(proc.pid)
    ok(busy >= 1 and len(admitted) >= 1 and (peak - base < 16 + 8 or sanitized(proc.pid)),
       "beyond --max-memory 16 MiB requests get busy: %d admitted, %d busy, RSS +%.1f MiB (bound 16 + 8 of "
       "uncounted slack)" % (len(admitted), busy, peak - base))
    for rid in range(10, 22):
        cl.send({"id": 9000 + rid, "op": "cancel", "target": rid})
    cl.close()
    ok(stop(proc) == 0, "exit 0")
else:
    ok(False, "blip2d --max-memory")

# decoding is charged too: from the header, before a pixel is decoded; and
# status reports the budget (total, used, by category)
proc, SOCK = start_or_none("--max-memory", str(40 << 20), "--max-batch", "1", tmp=TMP, log="daemon-dec.log")
if proc:
    import subprocess
    from b2test import CTL
    cl = Client(SOCK)
    st0 = cl.call({"id": 1, "op": "status"})
    mem0 = st0.get("memory", {})
    ok(mem0.get("max") == 40 << 20 and mem0.get("used") == 0,
       "status: memory.max is --max-memory, nothing used when idle (%s)" % mem0)
    # 4000x4000: 48 MB of RGB (and libvips' scratch), above the 40 MiB budget
    r = cl.call({"id": 2, "op": "generate", "image": png(1, 4000), "max_new_tokens": 5})
    ok(r["type"] == "error" and r["code"] == "too_large" and "--max-memory" in r["message"]
       and "4000x4000" in r["message"], "a decode that alone needs more than --max-memory: too_large (%s)" %
       r.get("message"))
    # 2500x2500 (19 MB) fits alone, not beside a 24 MiB partial frame
    holder = Client(SOCK)
    holder.raw(struct.pack(">I", 30 << 20) + b"\x85" + b"\0" * (24 << 20))
    held, st = wait_status(cl, lambda s: s["memory"]["input"] >= 24 << 20, 20, rid=3)
    ok(held and st["memory"]["used"] >= st["memory"]["input"],
       "status: a partial frame is charged as input (%s)" % st.get("memory"))
    r = cl.call({"id": 4, "op": "generate", "image": png(2, 2500), "max_new_tokens": 5})
    ok(r["type"] == "error" and r["code"] == "busy" and "--max-memory" in r["message"],
       "a decode that does not fit beside what others hold: busy (%s)" % r.get("message"))
    holder.close()
    # what stays: the input buffers of the open connections (the asking
    # one's status frame, a few bytes)
    idle = lambda s: s["memory"]["used"] == s["memory"]["input"] < 4096 and s["active"] == 0
    freed, st = wait_status(cl, idle, 20, rid=5)
    ok(freed, "the partial frame's memory is given back when its connection closes (%s)" % st.get("memory"))
    r = cl.call({"id": 6, "op": "generate", "image": png(2, 2500), "max_new_tokens": 5})
    ok(r["type"] == "done", "the same decode once memory is free: done (%s)" % r.get("code"))
    # a job holds memory while it runs; all of it comes back after
    cl.send({"id": 7, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 2000})
    while cl.recv().get("type") != "token":
        pass
    other = Client(SOCK)
    st = other.call({"id": 1, "op": "status"})["memory"]
    ctl = subprocess.run([CTL, "--socket", SOCK, "status", "--json"], capture_output=True, text=True)
    try:
        cj = json.loads(ctl.stdout).get("memory", {})
    except ValueError:
        cj = {}
    txt = subprocess.run([CTL, "--socket", SOCK, "status"], capture_output=True, text=True).stdout
    ok(st["used"] > 0 and st["jobs"] > 0 and st["used"] == sum(st[k] for k in
                                                              ("jobs", "decode", "input", "output", "http")),
       "status while a generate runs: used %d > 0, the sum of its categories (%s)" % (st["used"], st))
    ok(cj.get("max") == 40 << 20 and cj.get("jobs", 0) > 0 and "memory:" in txt and "of 40.0 MiB" in txt,
       "blip2ctl status (and --json) report the budget: %s / %s" %
       (cj, [l for l in txt.splitlines() if l.startswith("memory")]))
    drain(cl, 7)
    back, st = wait_status(other, idle, 20, rid=2)
    ok(back, "after it: memory.used back to the baseline, the open connections' input buffers (%s)" %
       st.get("memory"))
    cl.close()
    other.close()
    ok(stop(proc) == 0, "exit 0")
else:
    ok(False, "blip2d --max-memory (decoding)")

proc, SOCK = start_or_none("--frame-timeout", "1", tmp=TMP, log="daemon-frame.log")
if proc:
    slow = Client(SOCK)
    frame = pack({"id": 1, "op": "generate", "image": image("chelsea.png")})
    slow.raw(frame[:1000])  # and never the rest
    try:
        r = slow.recv()
        closed = slow.s.recv(1) == b""
    except (OSError, EOFError):
        r, closed = {}, True
    ok(closed and r.get("code") == "busy" and "id" not in r,
       "a frame not completed within --frame-timeout: an id-less error, then the connection is closed")
    other = Client(SOCK)
    ok(other.call({"id": 1, "op": "ping"})["type"] == "pong", "others are served")
    other.close()
    ok(stop(proc) == 0, "exit 0")
else:
    ok(False, "blip2d --frame-timeout")

# --idle-timeout: a connection holding nothing and sending nothing is closed;
# one with a request in flight, or one that keeps talking, is not
proc, SOCK = start_or_none("--idle-timeout", "1", "--max-batch", "1", tmp=TMP, log="daemon-idle.log")
if proc:
    def closed_within(cl, secs):
        cl.s.settimeout(secs * SCALE)
        try:
            return cl.s.recv(1) == b""
        except socket.timeout:
            return False
        except OSError:
            return True
    quiet = Client(SOCK)
    busy = Client(SOCK)
    busy.send({"id": 1, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 2000})
    ok(closed_within(quiet, 15), "a connection that sends nothing and holds nothing is closed after --idle-timeout")
    talk = Client(SOCK)
    alive = True
    for k in range(6):  # 3 s: three idle timeouts
        time.sleep(0.5)
        alive = alive and talk.call({"id": 10 + k, "op": "ping"}).get("type") == "pong"
    ok(alive, "a connection that keeps sending is not closed")
    busy.s.settimeout(10 * SCALE)
    try:  # after 3 s of silence: still open (it answers a ping between its tokens)
        busy.send({"id": 99, "op": "ping"})
        while True:
            got = busy.recv()
            if got is None or got.get("id") == 99:
                break
    except (OSError, EOFError):
        got = None
    ok(got is not None and got.get("type") == "pong",
       "a connection with a request in flight (sending nothing for 3 s) is not closed")
    drain(busy, 1)
    ok(closed_within(busy, 15), "once its request is over, it is closed after --idle-timeout too")
    talk.close()
    # blip2ctl chat outlives it: a question after the daemon closed its idle
    # connection goes on a new one
    import subprocess
    from b2test import CTL
    chat = subprocess.Popen([CTL, "--socket", SOCK, "chat", os.path.join(G, "images", "chelsea.png")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chat.stdin.write(b"what is it?\n")
    chat.stdin.flush()
    first = chat.stdout.readline()
    time.sleep(2.5)  # more than --idle-timeout: the daemon has closed the connection
    chat.stdin.write(b"and now?\n")
    chat.stdin.close()
    second = chat.stdout.readline()
    cerr = chat.stderr.read()
    ok(chat.wait(60 * SCALE) == 0 and first.strip() and second.strip(),
       "blip2ctl chat asks its next question on a new connection after the daemon closed the idle one "
       "(%r, %r, %r)" % (first, second, cerr[-300:]))
    ok(stop(proc) == 0, "exit 0")
else:
    ok(False, "blip2d --idle-timeout")

proc, SOCK = start_or_none("--max-connections-per-uid", "3", "--max-inflight-per-uid", "4", "--max-batch", "1",
                           tmp=TMP, log="daemon-uid.log")
if proc:
    # cs[0] and cs[1] stay in flight until they are closed: 4-beam searches of
    # 2000 tokens run for seconds, one at a time (--max-batch 1); a greedy
    # one ended in under a second and so, now and then, before check 33
    cs = [Client(SOCK) for _ in range(3)]
    for k, cl in enumerate(cs):
        cl.send({"id": 1, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 2000,
                 "num_beams": 4 if k < 2 else 1})
    d = Client(SOCK)
    try:
        r = d.recv()
    except (OSError, EOFError):
        r = {}
    ok(r.get("code") == "busy", "a 4th connection of a uid whose 3 connections are all busy: busy (%s)" % r.get("code"))
    d.close()
    cs[2].s.settimeout(30 * SCALE)
    drain(cs[2], 1)  # the third connection is idle now
    e = Client(SOCK)
    r = e.call({"id": 1, "op": "ping"})
    try:
        cs[2].send({"id": 5, "op": "ping"})
        gone = cs[2].recv() is None
    except (OSError, EOFError):
        gone = True
    ok(r["type"] == "pong" and gone, "the next one is accepted and the uid's idle connection is closed to make room")
    # 2 generates in flight on cs[0] and cs[1]; 2 more fit the uid's 4, then busy
    res = []
    for k in range(3):
        res.append(e.call({"id": 10 + k, "op": "generate", "image": image("chelsea.png"), "stream": True,
                           "max_new_tokens": 2000}) if k == 2 else None)
        if k < 2:
            e.send({"id": 10 + k, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 2000})
    r = res[2]
    st = e.call({"id": 20, "op": "status"}) if r["type"] != "error" else {}
    ok(r["type"] == "error" and r["code"] == "busy" and "--max-inflight-per-uid" in r["message"],
       "a uid's 5th request in flight over all its connections: busy (%s%s)"
       % (r.get("message") or r["type"], "; then %s" % {k: st.get(k) for k in ("active", "queue_depth")} if st else ""))
    for cl in cs[:2] + [e]:
        cl.close()
    # their requests end (canceled) before SIGTERM (a SIGTERM that meets
    # requests still in preparation is test_daemon.py's, checks 35 and 43)
    idle, st = wait_status(SOCK, lambda s: s["active"] == 0 and s["queue_depth"] == 0 and s["connections"] == 1, 60)
    ok(idle, "the closed connections' requests all end (%s)" % ({k: st.get(k) for k in ("active", "queue_depth",
                                                                                        "connections")} if st else st))
    ok(stop(proc) == 0, "exit 0")
else:
    ok(False, "blip2d --max-connections-per-uid --max-inflight-per-uid")
    ok(False, "the closed connections' requests all end")


# At the cap, connections whose peers have gone but that the daemon has not
# read yet (so it has not seen their end) are closed first; before, they
# counted, and the uid's one idle connection still open, the least recently
# active, was closed to make room for them (fuzz_server's victim, when the
# loop fell behind: the backlog's short connections accepted in one batch).
proc, SOCK = start_or_none("--max-connections-per-uid", "4", "--max-memory", str(16 << 20), tmp=TMP,
                           log="daemon-gone.log")
if proc:
    def still_open(cl, rid):
        try:
            return cl.call({"id": rid, "op": "ping"}).get("type") == "pong"
        except (OSError, EOFError):
            return False

    def gone_peer(data):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(SOCK)
        s.sendall(data)
        s.close()

    quiet = Client(SOCK)  # open and idle throughout: it never sends before the checks
    wait_status(SOCK, lambda s: s["connections"] <= 2, 20)
    # the loop stopped: 8 connections come and go in the backlog, then are
    # accepted in one batch before any of them is read
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for k in range(8):
            gone_peer(pack({"id": 1, "op": "ping"}))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    late = Client(SOCK)
    r = late.call({"id": 1, "op": "ping"})
    ok(r.get("type") == "pong" and still_open(quiet, 1),
       "8 connections already closed, accepted in one batch past --max-connections-per-uid 4: the uid's open "
       "idle connection is not closed for them")
    late.close()
    done, st = wait_status(SOCK, lambda s: s["connections"] <= 2, 20)
    ok(done, "and they are all closed (%s connections)" % (st or {}).get("connections"))
    # the same with connections paused over the memory budget: a partial
    # frame above --max-memory stops the reading of every other one, so
    # peers that send half a frame and go are not seen to go
    quiet2 = Client(SOCK)
    holder = Client(SOCK)
    def hold():  # blocks once the daemon stops reading it
        try:
            holder.raw(struct.pack(">I", 30 << 20) + b"\x85" + b"\0" * (20 << 20))
        except OSError:
            pass
    feed = threading.Thread(target=hold, daemon=True)
    feed.start()
    over, st = wait_status(SOCK, lambda s: s["memory"]["used"] > s["memory"]["max"], 30)
    for k in range(4):
        gone_peer(struct.pack(">I", 100) + b"\x82")
    late = Client(SOCK)
    r = late.call({"id": 1, "op": "ping"})
    ok(over and r.get("type") == "pong" and still_open(quiet2, 1) and still_open(quiet, 2),
       "4 connections paused over --max-memory whose peers have gone: the uid's open idle connections are not "
       "closed for them (memory %s)" % (st or {}).get("memory"))
    holder.s.shutdown(socket.SHUT_RDWR)  # ends the blocked send
    feed.join(10 * SCALE)
    for cl in (holder, late, quiet, quiet2):
        cl.close()
    ok(stop(proc) == 0, "exit 0")
else:
    ok(False, "blip2d --max-connections-per-uid: connections whose peers have gone")
    ok(False, "and they are all closed")
    ok(False, "paused connections whose peers have gone")

finish()
