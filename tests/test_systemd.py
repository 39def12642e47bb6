#!/usr/bin/python3
# test_systemd.py - blip2d as systemd runs it: the notify protocol (READY
# after the model is loaded, STATUS, WATCHDOG pings, RELOADING/READY around a
# SIGHUP reload that swaps to the other golden model under a connected
# client, a failed reload that keeps serving, STOPPING), socket activation
# through systemd-socket-activate, --idle-exit with an activator that
# restarts the daemon on demand (no request lost in the hand-over), and the
# --allow-uid/--allow-gid lists.  TAP output.
import os, select, shutil, signal, socket, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import SCALE, Client, ok, finish, image, manifest, require_msgpack

require_msgpack()
G = os.path.abspath(b2test.G)
BLIP2D = os.path.abspath(b2test.BLIP2D)
TMP = tempfile.mkdtemp(prefix="b2sdtest.")


man = manifest()


def golden(model, img, prompt="caption"):
    for c in man["cases"]:
        if c["model"] == model and c.get("image") == img and c["prompt_key"] == prompt:
            return c["generate"]["greedy"]["ids"]


# ---- notify protocol, watchdog, reload ----
notify_path = os.path.join(TMP, "notify")
ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
ns.bind(notify_path)
msgs = []


def collect():
    while True:
        try:
            data = ns.recv(4096)
        except OSError:
            return
        msgs.append((time.monotonic(), data.decode()))


threading.Thread(target=collect, daemon=True).start()
link = os.path.join(TMP, "model")
os.symlink(os.path.join(G, "opt-tiny"), link)
sock = os.path.join(TMP, "n.sock")
# BLIP2_PRECISION=f32: the reload below maps the f16 checkpoint's cache file,
# which computes in bf16 by default where the CPU has it (docs/gguf.md,
# "Math"); f32 math keeps the golden ids exact
env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="200000", BLIP2_PRECISION="f32")
p = subprocess.Popen([BLIP2D, "--model", link, "--socket", sock, "-q"], env=env, stderr=subprocess.DEVNULL)


def wait_msg(pred, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for t, m in list(msgs):
            if pred(m):
                return t, m
        time.sleep(0.01)
    return None


ready = wait_msg(lambda m: "READY=1" in m)
c = Client(sock) if ready else None
st = c.call({"id": 1, "op": "status"}) if c else {}
ok(ready is not None and st.get("model", {}).get("name") == "model" and st["config"]["num_query_tokens"] == 8,
   "READY=1 once the model is loaded: the socket answers at once")
loading = wait_msg(lambda m: m.startswith("STATUS=loading"))
ok(loading is not None and loading[0] <= ready[0] and wait_msg(lambda m: m.startswith("STATUS=serving") or "\nSTATUS=serving" in m) is not None,
   "STATUS= lines: loading before READY, then serving")
time.sleep(1.0)
pings = [t for t, m in msgs if "WATCHDOG=1" in m]
ok(len(pings) >= 6, "WATCHDOG=1 every half interval from the loop (%d pings in ~1 s at WATCHDOG_USEC=200ms)" % len(pings))

# reload: swap to the sharded fp16 model under a connected client with a request in flight
c.send({"id": 2, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 300})
os.unlink(link)
os.symlink(os.path.join(G, "opt-tiny-sharded"), link)
n_before = len(msgs)
p.send_signal(signal.SIGHUP)
r = c.recv()
while r.get("id") != 2:
    r = c.recv()
ok(r["type"] == "done" and len(r["ids"][0]) == 301, "a request running across the reload completes")
rel = wait_msg(lambda m: "RELOADING=1" in m)
rdy = None
end = time.monotonic() + 20
while time.monotonic() < end and rdy is None:
    later = [(t, m) for t, m in msgs[n_before:] if "READY=1" in m]
    rdy = later[0] if later else None
    time.sleep(0.01)
ok(rel is not None and rdy is not None and rel[0] <= rdy[0], "RELOADING=1, then READY=1")
st = c.call({"id": 3, "op": "status"})
r = c.call({"id": 4, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 20})
# the cache file's type: make check sets BLIP2_WEIGHTS_TYPE=f32, which keeps
# the golden ids exact (the default, auto, may pick q8_0)
want_dtype = os.environ.get("BLIP2_WEIGHTS_TYPE")
ok(st["config"]["num_query_tokens"] == 12 and (not want_dtype or st["model"]["dtype"] == want_dtype)
   and r["ids"][0] == golden("opt-tiny-sharded", "chelsea.png"),
   "after SIGHUP the same connection is served by the other golden model (its golden ids): %s %s %s"
   % (st["config"]["num_query_tokens"], st["model"].get("dtype"), r.get("ids", r)))
os.unlink(link)
os.symlink(os.path.join(TMP, "no-such-model"), link)
n_before = len(msgs)
p.send_signal(signal.SIGHUP)
end = time.monotonic() + 20
while time.monotonic() < end and not any("READY=1" in m for _, m in msgs[n_before:]):
    time.sleep(0.01)
r = c.call({"id": 5, "op": "generate", "image": image("chelsea.png"), "max_new_tokens": 20})
ok(r["type"] == "done" and r["ids"][0] == golden("opt-tiny-sharded", "chelsea.png") and p.poll() is None,
   "a failed reload keeps serving the previous model")
c.close()
p.send_signal(signal.SIGTERM)
ok(p.wait(20) == 0 and wait_msg(lambda m: "STOPPING=1" in m, 2) is not None, "SIGTERM: STOPPING=1, exit 0")
ns.close()

# ---- socket activation through systemd-socket-activate ----
ssa = shutil.which("systemd-socket-activate")
if ssa:
    path = os.path.join(TMP, "act.sock")
    # systemd-socket-activate passes on only the variables named with -E:
    # the harness's weights cache settings (f32, its own folder), else the
    # daemon would convert to the user's cache and compute in bf16
    keep = [a for v in ("BLIP2_WEIGHTS_TYPE", "XDG_CACHE_HOME", "BLIP2_KERNELS_CACHE", "ASAN_OPTIONS",
                        "UBSAN_OPTIONS") if v in os.environ for a in ("-E", v)]
    a = subprocess.Popen([ssa, "-l", path] + keep + [BLIP2D, "--model", os.path.join(G, "opt-tiny"), "-q"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the path exists once bound, before it listens: connect until accepted
    cl, r, end = None, {}, time.monotonic() + 10 * SCALE
    while cl is None and time.monotonic() < end:
        try:
            cl = Client(path)
        except OSError:
            time.sleep(0.02)
    try:
        r = cl.call({"id": 1, "op": "generate", "image": image("rocket.jpg"), "max_new_tokens": 20}) if cl else {}
    except (OSError, EOFError):
        pass
    ok(r.get("type") == "done" and r["ids"][0] == golden("opt-tiny", "rocket.jpg"),
       "socket activation: the first client's request is served on the passed socket")
    if cl:
        cl.close()
    a.send_signal(signal.SIGTERM)
    ok(a.wait(20) == 0 and os.path.exists(path), "exit 0, and the socket (systemd's) is left in place")
else:
    ok(True, "# SKIP systemd-socket-activate is not installed")
    ok(True, "# SKIP systemd-socket-activate is not installed")

# ---- --idle-exit and on-demand restarts: no request lost ----
path = os.path.join(TMP, "idle.sock")
ls = socket.socket(socket.AF_UNIX)
ls.bind(path)
ls.listen(64)
starts = []
stop_act = threading.Event()


def activator():
    while not stop_act.is_set():
        rd, _, _ = select.select([ls], [], [], 0.05)
        if not rd:
            continue
        fd = ls.fileno()
        os.set_inheritable(fd, True)
        child = subprocess.Popen(["sh", "-c", 'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@"', BLIP2D,
                                  "--model", os.path.join(G, "opt-tiny"), "--idle-exit", "1", "-q"],
                                 preexec_fn=lambda: fd != 3 and os.dup2(fd, 3), close_fds=False, stderr=subprocess.DEVNULL)
        starts.append(child)
        child.wait()


act = threading.Thread(target=activator)
act.start()
want = golden("opt-tiny", "coffee.png")
results = []
t_end = time.monotonic() + 9
delays = [0.0, 0.3, 1.2, 0.9, 1.05, 1.1, 1.0, 0.95, 1.15, 1.3]
for d in delays:
    time.sleep(d)
    try:
        cl = Client(path)
        results.append(cl.call({"id": 1, "op": "generate", "image": image("coffee.png"), "max_new_tokens": 20}))
        cl.close()
    except Exception as e:
        results.append({"type": "exception", "what": repr(e)})
time.sleep(1.6)
stop_act.set()
act.join(10)
codes = [s.poll() for s in starts]
ok(all(r["type"] == "done" and r["ids"][0] == want for r in results),
   "--idle-exit: every request served across %d daemon starts (%d requests)" % (len(starts), len(results)))
ok(len(starts) >= 2 and all(code == 0 for code in codes), "the daemon exits 0 when idle and is started again on demand")
ls.close()

# ---- access control ----
if os.geteuid() == 0:
    path = os.path.join(TMP, "acl.sock")
    d = subprocess.Popen([BLIP2D, "--model", os.path.join(G, "opt-tiny"), "--socket", path, "-q",
                          "--allow-uid", "0", "--allow-gid", "4004"], stderr=subprocess.DEVNULL)
    for _ in range(300):
        if os.path.exists(path):
            break
        time.sleep(0.02)
    time.sleep(0.1)
    os.chmod(TMP, 0o755)
    os.chmod(path, 0o666)
    probe = ("import socket,struct,msgpack,sys\n"
             "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
             "b=msgpack.packb({'id':1,'op':'ping'})\n"
             "try: s.sendall(struct.pack('>I',len(b))+b)\n"
             "except OSError: pass\n"
             "d=b''\n"
             "while True:\n"
             "    c=s.recv(4096)\n"
             "    if not c: break\n"
             "    d+=c\n"
             "    if len(d)>=4 and len(d)>=4+struct.unpack('>I',d[:4])[0]: break\n"
             "print(msgpack.unpackb(d[4:4+struct.unpack('>I',d[:4])[0]],raw=False) if len(d)>4 else 'EOF')\n")

    def as_user(uid, gid):
        out = subprocess.run([sys.executable, "-c", probe, path], user=uid, group=gid, extra_groups=[],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip()

    denied = as_user(4003, 4003)
    ok("permission_denied" in denied, "a uid outside the allow lists is refused with permission_denied")
    ok("pong" in as_user(4005, 4004), "a member of an allowed group is served")
    cl = Client(path)
    ok(cl.call({"id": 1, "op": "ping"})["type"] == "pong", "an allowed uid is served")
    cl.close()
    d.send_signal(signal.SIGTERM)
    ok(d.wait(20) == 0, "exit 0")
else:
    for _ in range(4):
        ok(True, "# SKIP access control between uids needs root")

shutil.rmtree(TMP, ignore_errors=True)
finish()
