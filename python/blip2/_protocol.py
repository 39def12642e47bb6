# blip2/_protocol.py - what the blocking and the asyncio clients share: the
# wire format of docs/protocol.md (4-byte big-endian length, one msgpack map),
# where the socket is, how a request is built from Python arguments, and the
# result types built from replies.  No I/O here: the clients move bytes,
# this module says what they mean.
#
#   caption/ask/generate kwargs --generate_request--> request dict (id added
#   by the client) --frame--> bytes;  reply bytes --FrameBuffer--> dict
#   --reply_id--> the request it answers --final_reply / StreamEvents-->
#   Result/Features, what the caller gets.
import contextlib
import os
import struct

import msgpack

from . import errors

VERSION = "0.1.0"
PROTOCOL = 2                       # the highest version this package speaks
DEFAULT_MAX_FRAME = 64 << 20       # replies above it break the connection
SYSTEM_SOCKET = "/run/blip2/blip2.sock"
START_HINT = "Is blip2d running? Start it with: blip2d --model DIR"

# docs/protocol.md 5.2: the generation parameters a request may carry
GEN_PARAMS = ("max_new_tokens", "min_new_tokens", "num_beams", "length_penalty",
              "repetition_penalty", "do_sample", "temperature", "top_k", "top_p", "seed",
              "num_return_sequences", "stop")

FEATURE_OUTPUTS = ("image_last_hidden_state", "image_pooler_output", "qformer_last_hidden_state",
                   "qformer_pooler_output", "language_model_inputs", "logits", "logits_last")

TERMINAL = ("done", "error", "hello", "status", "pong", "cancel", "features")


def socket_candidates(path=None):
    """[(path, origin)] in the order libblip2client tries them: the explicit
    path, else $BLIP2_SOCKET, else $XDG_RUNTIME_DIR/blip2.sock then the
    system daemon's /run/blip2/blip2.sock."""
    if path:
        return [(os.fspath(path), "explicit")]
    env = os.environ.get("BLIP2_SOCKET")
    if env:
        return [(env, "$BLIP2_SOCKET")]
    out = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        out.append((os.path.join(xdg, "blip2.sock"), "$XDG_RUNTIME_DIR"))
    out.append((SYSTEM_SOCKET, "system default"))
    return out


def dial_hint(exc):
    """A hint for a failed connect, as libblip2client gives."""
    import errno
    return {errno.ECONNREFUSED: " (a stale socket file: no daemon is listening)",
            errno.EACCES: " (check the socket's owner, group and mode, or your groups)",
            errno.EPERM: " (check the socket's owner, group and mode, or your groups)",
            errno.EAGAIN: " (the daemon is not accepting connections)"}.get(exc.errno or 0, "")


def connect_error(tried):
    """ConnectError listing [(path, origin, OSError)]."""
    parts = ["%s (from %s): %s%s" % (p, o, e.strerror or e, dial_hint(e)) for p, o, e in tried]
    return errors.ConnectError("cannot connect to blip2d: tried %s. %s" % ("; ".join(parts), START_HINT))


class ClientBase:
    """What Client and AsyncClient share: the state of one connection and
    the numbering of its requests."""

    def __init__(self, timeout, max_frame):
        self.timeout = timeout
        self.max_frame = max_frame
        self._sock = None
        self._queues = {}              # id in flight -> its replies
        self._next_id = 1
        self._broken = None            # the error that ended the connection

    def _number(self, req):
        """Gives req the next id; returns (id, its frame).  Raises the error
        that broke the connection, if one did."""
        if self._broken:
            raise self._broken
        rid = self._next_id
        self._next_id += 1
        req["id"] = rid
        return rid, frame(req)


class Dial:
    """The connect attempts of a client: iterate for (socket, path), one
    fresh AF_UNIX stream socket per candidate of socket_candidates(path);
    after a try, failed(OSError) (the socket is closed and the failure kept
    for error()) or connected(client) (sets client.socket_path and
    .socket_origin; returns the socket)."""

    def __init__(self, path=None):
        self._candidates = socket_candidates(path)
        self._tried = []
        self._cur = None

    def __iter__(self):
        import socket
        for path, origin in self._candidates:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._cur = (s, path, origin)
            yield s, path

    def failed(self, exc):
        s, path, origin = self._cur
        s.close()
        self._tried.append((path, origin, exc))

    def connected(self, client):
        s, client.socket_path, client.socket_origin = self._cur
        return s

    def error(self):
        """ConnectError naming every path tried and why it failed."""
        return connect_error(self._tried)


def frame(obj):
    """obj (a dict) as one frame: 4-byte big-endian length, then its msgpack."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def frame_length(prefix, max_frame):
    """The payload length of a frame from its 4 prefix bytes; ProtocolError
    when it is 0 or above max_frame."""
    (n,) = struct.unpack(">I", prefix)
    if n == 0 or n > max_frame:
        raise errors.ProtocolError("the daemon sent a frame of %d bytes (limit %d)" % (n, max_frame))
    return n


class FrameBuffer:
    """The bytes read from the daemon so far, cut into replies: a client
    reads until len(buf) >= need(), then pop() returns the next reply."""

    def __init__(self, max_frame):
        self.buf = bytearray()
        self.max_frame = max_frame

    def need(self):
        """How many bytes buf must hold for the next whole frame
        (ProtocolError for a length out of range)."""
        if len(self.buf) < 4:
            return 4
        return 4 + frame_length(bytes(self.buf[:4]), self.max_frame)

    def pop(self):
        """The next reply (a dict), taken out of buf; needs len(buf) >= need()."""
        n = self.need()
        payload = bytes(self.buf[4:n])
        del self.buf[:n]
        return unpack(payload)


def reply_id(r):
    """The id of the request reply r answers; an error that answers none
    (frame_too_large, permission_denied) raises: the connection is over."""
    rid = r.get("id")
    if rid is None and r["type"] == "error":
        raise errors.from_reply(r)
    return rid


def final_reply(r):
    """r when it ends a call, None for a token event; an error reply raises."""
    if r["type"] == "error":
        raise errors.from_reply(r)
    return None if r["type"] == "token" else r


def hello_request(client_name):
    return {"op": "hello", "v": PROTOCOL, "client": client_name or "blip2-python " + VERSION}


def take_hello(client, r):
    """Sets what the hello reply r says on client: protocol, server, limits."""
    client.protocol = r.get("v", 1)
    client.server = r.get("server", "")
    client.max_image_bytes = r.get("max_image_bytes")
    client.max_prompt_bytes = r.get("max_prompt_bytes")
    client.server_max_frame = r.get("max_frame")


def unpack(payload):
    """A reply payload -> dict; ProtocolError when it is not one msgpack map
    with a str `type`."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise errors.ProtocolError("cannot decode a reply: %s" % e) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise errors.ProtocolError("a reply is not a map with a type")
    return obj


def check_params(params):
    """TypeError for a keyword that is not a generation parameter (a
    misspelt `temprature` is caught here, as the daemon would)."""
    bad = [k for k in params if k not in GEN_PARAMS]
    if bad:
        raise TypeError("unknown generation parameter%s: %s (known: %s)" % (
            "s" if len(bad) > 1 else "", ", ".join(sorted(bad)), ", ".join(GEN_PARAMS)))


def question_prompt(question):
    """The prompt blip2ctl ask and blip2c_ask send: "Question: {q} Answer:"."""
    return "Question: %s Answer:" % question


def image_source(image):
    """Classifies an image argument: ("bytes", data), ("fd", fd, owned) for a
    path (opened here, read-only) or an int descriptor (borrowed), or
    TypeError.  A binary file object is read."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ValueError("the image is empty")
        return ("bytes", data)
    if isinstance(image, int) and not isinstance(image, bool):
        return ("fd", image, False)
    if isinstance(image, (str, os.PathLike)):
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        return ("fd", fd, True)
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("the image file object must be opened in binary mode")
        return image_source(bytes(data))
    raise TypeError("image must be a path, bytes or a file descriptor, not %s" % type(image).__name__)


def add_image(req, src):
    """Puts the image into request dict req; returns the descriptors to pass."""
    if src[0] == "bytes":
        req["image"] = src[1]
        return []
    req["image_fd"] = True
    return [src[1]]


@contextlib.contextmanager
def image_fds(image, req):
    """Puts image (see image_source) into req; the with-body gets the
    descriptors to send with it, and a descriptor opened here (for a path)
    is closed when the body ends."""
    src = image_source(image)
    try:
        yield add_image(req, src)
    finally:
        if src[0] == "fd" and src[2]:
            os.close(src[1])


def generate_request(prompt, stream, params):
    """The generate request (without id and image) for the keyword params."""
    check_params(params)
    req = {"op": "generate"}
    if prompt:
        req["prompt"] = prompt
    if stream:
        req["stream"] = True
    for k in GEN_PARAMS:
        v = params.get(k)
        if v is None:
            continue
        if k == "stop":
            v = [v] if isinstance(v, str) else list(v)
            if not v:
                continue
        req[k] = v
    return req


def features_request(protocol, image, text, outputs):
    """The features request (without id and image); ValueError without an
    image and a text, UnsupportedError when the daemon's protocol is < 2."""
    if image is None and text is None:
        raise ValueError("features needs an image, a text or both")
    if protocol < 2:
        raise errors.UnsupportedError("the daemon speaks protocol %d; features needs 2" % protocol,
                                      code="unsupported")
    req = {"op": "features"}
    if text is not None:
        req["text"] = text
    if outputs:
        req["outputs"] = [outputs] if isinstance(outputs, str) else list(outputs)
    return req


class StreamEvents:
    """What Stream and AsyncStream share: the replies of one streaming
    generate request.  .tokens lists (seq, token id, piece) of every token
    event; .result is the Result once the request is done."""

    def __init__(self):
        self.result = None
        self.tokens = []
        self._done = False

    def _event(self, r):
        """Takes reply r; returns the text piece of sequence 0 it carries,
        else None.  An error reply ends the stream and raises."""
        t = r["type"]
        if t == "token":
            self.tokens.append((r.get("seq", 0), r.get("token"), r.get("text", "")))
            if r.get("seq", 0) == 0 and r.get("text"):
                return r["text"]
        elif t == "done":
            self._done = True
            self.result = Result(r)
        elif t == "error":
            self._done = True
            raise errors.from_reply(r)
        return None

    def _drain(self, r):
        """Takes reply r after a cancel: the stream ends at done or error."""
        if r["type"] in ("done", "error"):
            self._done = True
            if r["type"] == "done":
                self.result = Result(r)


class Sequence:
    """One generated sequence: .text, .ids (token ids as Hugging Face
    generate() returns them) and .finish ("length", "eos", "stop", "canceled")."""
    __slots__ = ("text", "ids", "finish")

    def __init__(self, text, ids, finish):
        self.text, self.ids, self.finish = text, ids, finish

    def __repr__(self):
        return "Sequence(text=%r, finish=%r, ids=%r)" % (self.text, self.finish, self.ids)


class Result:
    """The `done` reply of a generate request (docs/protocol.md 7.3).
    .text is the best sequence's text as the daemon sent it (not trimmed);
    .sequences all of them; .seed (sampling) reproduces it; .prompt_tokens,
    .cached and .timings (dict of milliseconds and tokens_per_s) as sent."""

    def __init__(self, reply):
        try:
            texts, ids, finish = reply["texts"], reply["ids"], reply["finish"]
            if not (len(texts) == len(ids) == len(finish)):
                raise ValueError("texts, ids and finish differ in length")
            self.sequences = [Sequence(t, list(i), f) for t, i, f in zip(texts, ids, finish)]
        except (KeyError, TypeError, ValueError) as e:
            raise errors.ProtocolError("a done reply without valid texts/ids/finish: %s" % e) from None
        self.id = reply.get("id")
        self.seed = reply.get("seed")
        self.prompt_tokens = reply.get("prompt_tokens")
        self.cached = bool(reply.get("cached", False))
        self.timings = dict(reply.get("timings") or {})
        self.reply = reply

    @property
    def text(self):
        return self.sequences[0].text if self.sequences else ""

    @property
    def texts(self):
        return [s.text for s in self.sequences]

    @property
    def ids(self):
        return self.sequences[0].ids if self.sequences else []

    @property
    def finish(self):
        return self.sequences[0].finish if self.sequences else "canceled"

    def __repr__(self):
        return "Result(text=%r, finish=%r, cached=%r)" % (self.text, self.finish, self.cached)


class Features(dict):
    """A features reply (docs/protocol.md 7.8): a dict from output name (and
    "input_ids" when there was a text) to a numpy array of the tensor's dtype
    and shape, plus .cached and .timings."""

    def __init__(self, reply):
        super().__init__()
        import numpy
        tensors = reply.get("tensors")
        if not isinstance(tensors, dict):
            raise errors.ProtocolError("a features reply without tensors")
        for name, t in tensors.items():
            try:
                dt = {"float32": "<f4", "int32": "<i4"}[t["dtype"]]
                shape = [int(d) for d in t["shape"]]
                a = numpy.frombuffer(t["data"], dtype=dt).reshape(shape)
                self[name] = a.astype(dt[1:])  # a writable copy in native order
            except (KeyError, TypeError, ValueError) as e:
                raise errors.ProtocolError("features tensor %s: %s" % (name, e)) from None
        self.cached = bool(reply.get("cached", False))
        self.timings = dict(reply.get("timings") or {})
        self.id = reply.get("id")


def trimmed(text):
    """text without surrounding ASCII whitespace, as blip2c_caption returns it."""
    return text.strip(" \t\r\n")
