# blip2/client.py - the blocking client: one Unix-socket connection to blip2d.
#
#   Client() --connect (explicit path, $BLIP2_SOCKET, $XDG_RUNTIME_DIR,
#   /run/blip2)--> hello v2 (limits) --> caption / ask / run / generate /
#   features / status / ping, each: id++ -> frame (image as SCM_RIGHTS
#   descriptor or inline bytes) -> read frames until the id's terminal reply.
#
# Replies are routed by id: frames for other requests in flight on the same
# connection (an unfinished generate() iterator) are queued for them, so
# calls may interleave.  Not thread-safe: one Client per thread.
import collections
import socket as _socket

from . import errors
from . import _protocol as P


class _Closing:
    """close() on leaving a with block and when garbage-collected."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Client(P.ClientBase, _Closing):
    """A connection to blip2d.

    socket: the socket path; None for the default order (the explicit path,
    else $BLIP2_SOCKET, else $XDG_RUNTIME_DIR/blip2.sock, then
    /run/blip2/blip2.sock).  timeout: seconds a blocking call may take (None:
    no limit; a caption may take a minute on a slow machine); when it passes
    the request is canceled and blip2.TimeoutError raised.  connect_timeout:
    seconds to wait for the daemon's hello.  Use as a context manager or
    call close()."""

    def __init__(self, socket=None, timeout=None, connect_timeout=10.0, client_name=None,
                 max_frame=P.DEFAULT_MAX_FRAME):
        super().__init__(timeout, max_frame)
        self._rx = P.FrameBuffer(max_frame)
        dial = P.Dial(socket)
        for s, path in dial:
            s.settimeout(connect_timeout)
            try:
                s.connect(path)
            except OSError as e:
                dial.failed(e)
                continue
            self._sock = dial.connected(self)
            break
        if self._sock is None:
            raise dial.error()
        try:
            r = self._call(P.hello_request(client_name), timeout=connect_timeout)
        except BaseException:
            self.close()
            raise
        P.take_hello(self, r)

    # ---- life ---------------------------------------------------------------
    def close(self):
        """Closes the connection; the daemon cancels what is still running."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._broken = self._broken or errors.ConnectionLostError("the connection was closed")

    # ---- frames -------------------------------------------------------------
    def _send(self, req, fds=()):
        rid, data = self._number(req)
        try:
            self._sock.settimeout(None)
            if fds:  # the descriptor goes with the frame's first bytes
                sent = _socket.send_fds(self._sock, [data], list(fds))
                if sent < len(data):
                    self._sock.sendall(data[sent:])
            else:
                self._sock.sendall(data)
        except OSError as e:
            self._break(errors.ConnectionLostError("connection lost while sending: %s" % e))
            raise self._broken from None
        self._queues[rid] = collections.deque()
        return rid

    def _break(self, exc):
        self._broken = exc
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _recv(self, deadline):
        """Reads what the socket has into the frame buffer (socket.timeout
        at the deadline)."""
        import time
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _socket.timeout
            self._sock.settimeout(left)
        else:
            self._sock.settimeout(None)
        try:
            chunk = self._sock.recv(1 << 20)
        except _socket.timeout:
            raise
        except OSError as e:
            self._break(errors.ConnectionLostError("connection lost: %s" % e))
            raise self._broken from None
        if not chunk:
            self._break(errors.ConnectionLostError("connection lost: the daemon closed it"))
            raise self._broken
        self._rx.buf += chunk

    def _read_frame(self, deadline):
        """Reads one reply and puts it into its id's queue (or drops it)."""
        if self._broken:
            raise self._broken
        try:
            while len(self._rx.buf) < self._rx.need():
                self._recv(deadline)
            r = self._rx.pop()
            rid = P.reply_id(r)
        except errors.Blip2Error as e:
            if e is not self._broken:
                self._break(e)
            raise
        q = self._queues.get(rid)
        if q is not None:
            q.append(r)

    def _next(self, rid, deadline):
        """The next reply for request rid (waiting for it)."""
        q = self._queues[rid]
        while not q:
            try:
                self._read_frame(deadline)
            except _socket.timeout:
                self._timeout(rid)
        r = q.popleft()
        if r["type"] in P.TERMINAL:
            del self._queues[rid]
        return r

    def _deadline(self, timeout):
        import time
        t = self.timeout if timeout is None else timeout
        return None if t is None else time.monotonic() + t

    def _timeout(self, rid):
        """The time limit of request rid passed: cancel it, drop its replies."""
        self._queues.pop(rid, None)  # its later replies are dropped
        try:
            self._send({"op": "cancel", "target": rid})
        except errors.Blip2Error:
            pass
        raise errors.TimeoutError("no reply within the time limit; the request was canceled")

    def _call(self, req, fds=(), timeout=None):
        """Sends req and returns its terminal reply; an error reply raises."""
        rid = self._send(req, fds)
        deadline = self._deadline(timeout)
        while True:
            r = P.final_reply(self._next(rid, deadline))
            if r is not None:
                return r

    def _with_image(self, image, req, timeout=None):
        with P.image_fds(image, req) as fds:
            return self._call(req, fds, timeout)

    # ---- the API ------------------------------------------------------------
    def run(self, image, prompt=None, timeout=None, **params):
        """Generates for image (a path, bytes, a binary file object or a
        descriptor) and returns the whole Result (texts, ids, finish, seed,
        timings).  params: the generation parameters of docs/protocol.md 5.2
        (max_new_tokens, num_beams, do_sample, temperature, top_p, seed,
        stop, ...)."""
        req = P.generate_request(prompt, False, params)
        return P.Result(self._with_image(image, req, timeout))

    def caption(self, image, prompt=None, timeout=None, **params):
        """The caption of image, as blip2ctl caption prints it (surrounding
        whitespace removed).  prompt: an optional text the caption continues
        ("a photo of")."""
        return P.trimmed(self.run(image, prompt, timeout, **params).text)

    def ask(self, image, question, timeout=None, **params):
        """The answer to question about image, with the prompt
        "Question: {question} Answer:" (as blip2ctl ask)."""
        return P.trimmed(self.run(image, P.question_prompt(question), timeout, **params).text)

    def generate(self, image, prompt=None, timeout=None, **params):
        """Streams: a Stream iterating over the text pieces of sequence 0 as
        the daemon decodes them ("".join of them is a prefix of
        stream.result.text, which is authoritative).  Breaking out of the loop
        or closing the stream cancels the request."""
        req = P.generate_request(prompt, True, params)
        return Stream(self, image, req, timeout)

    def features(self, image=None, text=None, outputs=None, timeout=None):
        """Blip2Model's features for an image, a text or both (docs/protocol.md
        5.6): a Features dict of numpy arrays (e.g. f["image_pooler_output"],
        shape (1, Dv)), with .cached and .timings.  Needs numpy."""
        req = P.features_request(self.protocol, image, text, outputs)
        if image is None:
            return P.Features(self._call(req, timeout=timeout))
        return P.Features(self._with_image(image, req, timeout))

    def status(self, timeout=None):
        """The daemon's status (docs/protocol.md 7.5) as a dict."""
        return self._call({"op": "status"}, timeout=timeout)

    def ping(self, timeout=None):
        """A round trip; returns its duration in seconds."""
        import time
        t = time.monotonic()
        self._call({"op": "ping"}, timeout=timeout)
        return time.monotonic() - t

    def cancel(self, rid):
        """Asks the daemon to stop request rid (Stream.id); True if it was in flight."""
        if rid not in self._queues:
            return False
        return bool(self._call({"op": "cancel", "target": rid}).get("found"))


class Stream(P.StreamEvents, _Closing):
    """A streaming generate request (Client.generate).  Iterate for the text
    pieces; afterwards .result is the Result.  .tokens lists (seq, token id,
    piece) of every token event.  close() (or leaving a for loop early and
    dropping the stream) cancels the request."""

    def __init__(self, client, image, req, timeout):
        super().__init__()
        self._c = client
        with P.image_fds(image, req) as fds:
            self.id = client._send(req, fds)
        self._deadline = client._deadline(timeout)

    def __iter__(self):
        return self

    def __next__(self):
        while not self._done:
            piece = self._event(self._c._next(self.id, self._deadline))
            if piece is not None:
                return piece
        raise StopIteration

    def text(self):
        """Consumes the stream; the result's text (sequence 0)."""
        for _ in self:
            pass
        return self.result.text

    def close(self):
        """Cancels the request if it is still running and drains its replies."""
        if self._done or self._c._sock is None:
            return
        try:
            self._c.cancel(self.id)
            while not self._done:
                self._drain(self._c._next(self.id, self._deadline))
        except errors.Blip2Error:
            self._done = True
