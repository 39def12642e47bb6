# b2test.py - what the Python tests of blip2d share (tests/test_*.py): TAP
# output, the wire protocol of docs/protocol.md spoken with python3-msgpack
# (4-byte big-endian length + msgpack map), starting and stopping a blip2d,
# blip2ctl runs, and reading the golden data (tests/golden).  Not a test
# itself; each test imports it from its own directory:
#
#     sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
#     import b2test
#
# so that it is found from a VPATH build and `make distcheck` too.
#
# Environment (set by Makefile.am's AM_TESTS_ENVIRONMENT; the defaults are
# for a run from the top of an in-tree build):
#   GOLDEN_DIR   the golden data (default tests/golden)
#   BLIP2D       the daemon (default daemon/blip2d)
#   BLIP2CTL     the command-line client (default ctl/blip2ctl)
#   BLIP2_TEST_TIMEOUT_SCALE  multiplies every wait for the daemon (start-up,
#                replies, exit; default 1, never below 1), for slow builds
#                (valgrind, ThreadSanitizer: tests/SANITIZERS.md).  SCALE
#                below; the default timeouts here are scaled by it.
import array, json, os, shutil, signal, socket, struct, subprocess, sys, tempfile, time

try:
    import msgpack
except ImportError:  # the tests that speak the protocol skip: require_msgpack()
    msgpack = None

G = os.environ.get("GOLDEN_DIR", "tests/golden")
BLIP2D = os.environ.get("BLIP2D", "daemon/blip2d")
CTL = os.environ.get("BLIP2CTL", "ctl/blip2ctl")
SCALE = max(1.0, float(os.environ.get("BLIP2_TEST_TIMEOUT_SCALE") or 1))


def require_msgpack():
    """The msgpack module; without it, the whole test is skipped (TAP plan
    1..0 # SKIP, exit 0)."""
    if msgpack is None:
        print("1..0 # SKIP python3-msgpack is not installed")
        sys.exit(0)
    return msgpack


# ---- TAP ---------------------------------------------------------------------
n_tests = 0
failed = 0


def ok(cond, name):
    """One TAP check: prints `ok N - name` or `not ok N - name`, returns cond.
    A name starting with `# SKIP` makes it a skipped check."""
    global n_tests, failed
    n_tests += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n_tests, name), flush=True)
    if not cond:
        failed += 1
    return cond


_tmpdirs = []


def tmpdir(prefix):
    """A fresh temporary directory for a test's files and daemon logs;
    finish() removes it when every check passed and keeps it (naming it)
    when one failed, for the logs."""
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def finish():
    """Prints the plan (1..N, the checks made), removes the tmpdir()s (or
    names them when a check failed) and exits 1 if any failed."""
    print("1..%d" % n_tests)
    for d in _tmpdirs:
        if failed:
            print("# kept for its logs: %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if failed else 0)


# ---- the wire protocol -------------------------------------------------------
def pack(obj):
    """obj as one frame: its msgpack encoding after its length (4 bytes, big-endian)."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class Client:
    """One connection to a blip2d socket.  Every receive waits at most
    `timeout` seconds (socket.timeout then; None: no limit); EOFError when the
    daemon closes the connection."""

    def __init__(self, path, timeout=30 * SCALE):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def send(self, obj, fds=None):
        """Sends obj as a frame; fds (a list of descriptors) go with it (SCM_RIGHTS)."""
        if fds:
            socket.send_fds(self.s, [pack(obj)], fds)
        else:
            self.s.sendall(pack(obj))

    def raw(self, data):
        """Sends bytes as they are (malformed frames)."""
        self.s.sendall(data)

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """The next reply (a dict), whichever request it is for."""
        (n,) = struct.unpack(">I", self._exact(4))
        return msgpack.unpackb(self._exact(n), raw=False)

    def until_terminal(self, rid):
        """The replies for request rid up to its done or error (that one last);
        replies for other ids are dropped."""
        events = []
        while True:
            r = self.recv()
            if r.get("id") == rid:
                events.append(r)
                if r["type"] in ("done", "error"):
                    return events

    def until_id(self, rid):
        """Every reply, whichever request it is for, up to and including the
        first one for request rid."""
        seen = []
        while True:
            r = self.recv()
            seen.append(r)
            if r.get("id") == rid:
                return seen

    def call(self, obj, fds=None):
        """Sends the request obj and returns its answer: the first reply for
        its id that is not a token event (done, error, status, features, ...);
        replies for other ids and obj's token events are dropped."""
        self.send(obj, fds)
        while True:
            r = self.recv()
            if r.get("id") == obj["id"] and r["type"] != "token":
                return r

    def close(self):
        self.s.close()


def status(where, rid=1):
    """The status reply, on the Client `where`, or on a new connection to the
    socket path `where` (closed after)."""
    if isinstance(where, Client):
        where.send({"id": rid, "op": "status"})
        return where.recv()
    c = Client(where)
    try:
        c.send({"id": rid, "op": "status"})
        return c.recv()
    finally:
        c.close()


def wait_status(where, pred, timeout, interval=0.05, rid=1):
    """Asks for the status (see status()) until pred(status) holds, for at
    most timeout * SCALE seconds; returns (whether it held, the last status)."""
    end = time.monotonic() + timeout * SCALE
    st = None
    while time.monotonic() < end:
        st = status(where, rid)
        if pred(st):
            return True, st
        time.sleep(interval)
    return False, st


# ---- the daemon --------------------------------------------------------------
def start(*extra, tmp, model=None, sock=None, log="daemon.log", wait=30, bail=None, env=None):
    """Starts blip2d on model (default: the golden opt-tiny) with the
    arguments extra (and the environment env, default this one's),
    listening on sock (default: a new path in the directory
    tmp), its output appended to tmp/log; returns (Popen, socket path) once a
    connection is accepted.  If it does not come up within wait * SCALE
    seconds (or exits), it is killed and RuntimeError raised, or with bail
    given, `Bail out! <bail>` printed and the test ended (exit 1)."""
    model = model or os.path.join(G, "opt-tiny")
    sock = sock or os.path.join(tmp, "d%d.sock" % time.monotonic_ns())
    logf = open(os.path.join(tmp, log), "ab")
    p = subprocess.Popen([BLIP2D, "--model", model, "--socket", sock, "-q"] + list(extra),
                         stdout=logf, stderr=logf, env=env)
    logf.close()
    p.b2_log = os.path.join(tmp, log)
    end = time.monotonic() + wait * SCALE
    while time.monotonic() < end:
        if os.path.exists(sock):
            try:
                Client(sock).close()
                return p, sock
            except OSError:
                pass
        if p.poll() is not None:
            break
        time.sleep(0.02)
    if p.poll() is None:
        p.kill()
        p.wait()
    if bail:
        print("Bail out! " + bail, flush=True)
        sys.exit(1)
    raise RuntimeError("blip2d did not start")


def stop(p, wait=15):
    """SIGTERM to the daemon p; its exit status, or -9 when it had to be
    killed after wait * SCALE seconds.  A status other than 0 is shown
    with the end of the daemon's log (TAP comments), for the failure's
    cause."""
    p.send_signal(signal.SIGTERM)
    try:
        st = p.wait(wait * SCALE)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        st = -9
    if st != 0:
        print("# blip2d exited with status %d%s" % (st, " (killed: no exit within %g s)" % (wait * SCALE)
                                                     if st == -9 else ""), flush=True)
        show_log(p)
    return st


def show_log(p):
    """Prints the end of the log of the daemon p (started by start()) as TAP
    comments: a sanitizer's report from its start (the direct leak or the
    error comes first), else the log's last 40 lines."""
    try:
        with open(p.b2_log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        at = text.rfind("==ERROR: ")
        lines = text[at:].splitlines()[:80] if at >= 0 else text.splitlines()[-40:]
        for line in lines:
            print("#   " + line, flush=True)
    except (AttributeError, OSError):
        pass


def ctl(sock, *args, stdin=None, timeout=300):
    """Runs `blip2ctl --socket sock args...` (stdin: bytes for its standard
    input; at most timeout * SCALE seconds); returns (exit status, stdout,
    stderr), the outputs decoded."""
    p = subprocess.run([CTL, "--socket", sock] + list(args), capture_output=True,
                       timeout=timeout * SCALE, input=stdin)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def first(text):
    """The first line of text (at most 160 characters), for a check's name."""
    return (text.strip().splitlines() or [""])[0][:160]


# ---- golden data -------------------------------------------------------------
def image(name):
    """The bytes of the golden image tests/golden/images/name."""
    with open(os.path.join(G, "images", name), "rb") as f:
        return f.read()


def manifest(name="manifest.json"):
    """A golden manifest (manifest.json: the OPT models; manifest_t5.json)."""
    with open(os.path.join(G, name)) as f:
        return json.load(f)


# the keyword arguments of a golden case's generate calls (the manifest's
# "generate" keys) beyond its max_new_tokens
CALLS = {"greedy": {}, "beam3": {"num_beams": 3}, "reppen": {"repetition_penalty": 1.5, "min_new_tokens": 5}}


def golden_requests(cases, first_id):
    """For each generate call of each case (manifest cases with an image):
    (case, call name, its golden results, the generate request that should
    reproduce them, image by bytes), the request ids counting from first_id."""
    rid = first_id
    for case in cases:
        for name, gen in case["generate"].items():
            req = {"id": rid, "op": "generate", "image": image(case["image"]),
                   "max_new_tokens": gen["kwargs"]["max_new_tokens"]}
            req.update(CALLS[name])
            if case["prompt"] is not None:
                req["prompt"] = case["prompt"]
            yield case, name, gen, req
            rid += 1


def read_st(path, check=False):
    """A safetensors file (F32 and I64 tensors) -> {name: (dtype, shape,
    array)}.  With check, asserts the layout as well: the header padded to 8
    bytes, each tensor's size its shape's, the data area exactly covered."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    if check:
        assert n % 8 == 0, "header not padded to 8 bytes"
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out, end = {}, 0
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        end = max(end, e)
        a = array.array({"F32": "f", "I64": "q"}[v["dtype"]])
        a.frombytes(data[b:e])
        if sys.byteorder == "big":
            a.byteswap()
        if check:
            n_el = 1
            for d in v["shape"]:
                n_el *= d
            assert len(a) == n_el, "%s: %d elements for shape %s" % (k, len(a), v["shape"])
        out[k] = (v["dtype"], v["shape"], a)
    if check:
        assert end == len(data), "data area size"
    return out


def wire(t):
    """A tensor of a features reply (docs/protocol.md) -> (dtype, shape, array)."""
    a = array.array({"float32": "f", "int32": "i"}[t["dtype"]])
    a.frombytes(t["data"])
    if sys.byteorder == "big":
        a.byteswap()
    return t["dtype"], t["shape"], a


IMAGE_OUTPUTS = ("image_last_hidden_state", "image_pooler_output", "qformer_last_hidden_state",
                 "qformer_pooler_output")


def check_image_file(st, gold, row, what, tol=1e-4):
    """A features file of one image (read_st): it holds the five image
    outputs, and the four of Blip2Model equal row `row` of the golden
    features `gold` (read_st too) within tol."""
    ok(sorted(st) == sorted(IMAGE_OUTPUTS + ("language_model_inputs",)),
       "%s: the file holds the five image outputs" % what)
    for name in IMAGE_OUTPUTS:
        dt, shape, arr = st[name]
        g = gold[name]
        d = maxdiff(arr, g[2], row * (len(g[2]) // g[1][0]))
        ok(dt == "F32" and shape == [1] + g[1][1:] and d <= tol,
           "%s: %s %s max abs err %.3g <= %g" % (what, name, shape, d, tol))


def maxdiff(a, b, off=0, whole=False):
    """The largest |a[i] - b[off + i]|; infinite when a is empty or does not
    fit in b from off, or (whole) does not cover b to its end."""
    if not len(a) or len(a) + off > len(b) or (whole and len(a) + off != len(b)):
        return float("inf")
    return max(abs(x - b[off + i]) for i, x in enumerate(a))
