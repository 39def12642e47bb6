# blip2/aio.py - the asyncio client: the same calls as blip2.Client, as
# coroutines, many requests in flight on one connection.
#
#   AsyncClient.connect() --> non-blocking AF_UNIX socket, hello v2
#   a reader task: frames --> per-id asyncio.Queue (dropped when the id is
#   not in flight); connection lost --> every waiting request gets the error
#   calls: lock, frame (+ SCM_RIGHTS descriptor) written, await the queue
#
# The daemon schedules concurrent requests of one connection together
# (batched decoding), so asyncio.gather(c.caption(a), c.caption(b)) is the
# cheap way to caption many images.
import array
import asyncio
import os
import socket as _socket

from . import errors
from . import _protocol as P


class AsyncClient:
    """An asyncio connection to blip2d; create it with
    `await AsyncClient.connect(socket=None, ...)` (arguments as blip2.Client)
    or `async with AsyncClient(...) as c`."""

    def __init__(self, socket=None, timeout=None, connect_timeout=10.0, client_name=None,
                 max_frame=P.DEFAULT_MAX_FRAME):
        self._args = (socket, connect_timeout, client_name)
        self.timeout = timeout
        self.max_frame = max_frame
        self._sock = None
        self._queues = {}
        self._next_id = 1
        self._broken = None
        self._reader = None
        self._wlock = None

    @classmethod
    async def connect(cls, socket=None, **kw):
        c = cls(socket, **kw)
        await c._open()
        return c

    async def __aenter__(self):
        if self._sock is None:
            await self._open()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _open(self):
        socket, connect_timeout, client_name = self._args
        loop = asyncio.get_running_loop()
        self._wlock = asyncio.Lock()
        tried = []
        for path, origin in P.socket_candidates(socket):
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            s.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(s, path), connect_timeout)
            except (OSError, asyncio.TimeoutError) as e:
                s.close()
                if not isinstance(e, OSError):
                    import errno
                    e = OSError(errno.ETIMEDOUT, "timed out")
                tried.append((path, origin, e))
                continue
            self._sock, self.socket_path, self.socket_origin = s, path, origin
            break
        if self._sock is None:
            raise P.connect_error(tried)
        self._reader = asyncio.ensure_future(self._read_loop())
        try:
            r = await self._call({"op": "hello", "v": P.PROTOCOL,
                                  "client": client_name or "blip2-python " + P.VERSION},
                                 timeout=connect_timeout)
        except BaseException:
            await self.close()
            raise
        self.protocol = r.get("v", 1)
        self.server = r.get("server", "")
        self.max_image_bytes = r.get("max_image_bytes")
        self.max_prompt_bytes = r.get("max_prompt_bytes")
        self.server_max_frame = r.get("max_frame")

    async def close(self):
        """Closes the connection; the daemon cancels what is still running."""
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._fail(self._broken or errors.ConnectionLostError("the connection was closed"))

    def _fail(self, exc):
        self._broken = self._broken or exc
        for q in self._queues.values():
            q.put_nowait(exc)
        self._queues.clear()

    # ---- frames -------------------------------------------------------------
    async def _recv_exact(self, n, buf):
        loop = asyncio.get_running_loop()
        while len(buf) < n:
            chunk = await loop.sock_recv(self._sock, 1 << 20)
            if not chunk:
                raise errors.ConnectionLostError("connection lost: the daemon closed it")
            buf += chunk

    async def _read_loop(self):
        buf = bytearray()
        try:
            while True:
                await self._recv_exact(4, buf)
                n = P.frame_length(bytes(buf[:4]), self.max_frame)
                await self._recv_exact(4 + n, buf)
                r = P.unpack(bytes(buf[4:4 + n]))
                del buf[:4 + n]
                rid = r.get("id")
                if rid is None and r["type"] == "error":
                    raise errors.from_reply(r)
                q = self._queues.get(rid)
                if q is not None:
                    if r["type"] in P.TERMINAL:
                        del self._queues[rid]
                    q.put_nowait(r)
        except asyncio.CancelledError:
            raise
        except errors.Blip2Error as e:
            self._fail(e)
        except OSError as e:
            self._fail(errors.ConnectionLostError("connection lost: %s" % e))
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _sendmsg_fds(self, data, fds):
        """Writes data with fds attached to its first byte(s)."""
        loop = asyncio.get_running_loop()
        anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))]
        while True:
            try:
                sent = self._sock.sendmsg([data], anc)
                break
            except BlockingIOError:
                fut = loop.create_future()
                loop.add_writer(self._sock.fileno(), lambda: fut.done() or fut.set_result(None))
                try:
                    await fut
                finally:
                    loop.remove_writer(self._sock.fileno())
        if sent < len(data):
            await loop.sock_sendall(self._sock, data[sent:])

    async def _send(self, req, fds=()):
        if self._broken:
            raise self._broken
        rid = self._next_id
        self._next_id += 1
        req["id"] = rid
        data = P.frame(req)
        q = self._queues[rid] = asyncio.Queue()
        try:
            async with self._wlock:
                if fds:
                    await self._sendmsg_fds(data, list(fds))
                else:
                    await asyncio.get_running_loop().sock_sendall(self._sock, data)
        except OSError as e:
            self._fail(errors.ConnectionLostError("connection lost while sending: %s" % e))
            raise self._broken from None
        return rid, q

    async def _next(self, rid, q, deadline):
        loop = asyncio.get_running_loop()
        try:
            if deadline is None:
                r = await q.get()
            else:
                r = await asyncio.wait_for(q.get(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            self._queues.pop(rid, None)
            try:
                await self._send({"op": "cancel", "target": rid})
            except errors.Blip2Error:
                pass
            raise errors.TimeoutError("no reply within the time limit; the request was canceled") from None
        if isinstance(r, BaseException):
            raise r
        return r

    def _deadline(self, timeout):
        t = self.timeout if timeout is None else timeout
        return None if t is None else asyncio.get_running_loop().time() + t

    async def _call(self, req, fds=(), timeout=None):
        rid, q = await self._send(req, fds)
        deadline = self._deadline(timeout)
        while True:
            r = await self._next(rid, q, deadline)
            if r["type"] == "error":
                raise errors.from_reply(r)
            if r["type"] != "token":
                return r

    async def _with_image(self, image, req, timeout=None):
        src = P.image_source(image)
        try:
            fds = P.add_image(req, src)
            rid, q = await self._send(req, fds)
        finally:
            if src[0] == "fd" and src[2]:
                os.close(src[1])
        deadline = self._deadline(timeout)
        while True:
            r = await self._next(rid, q, deadline)
            if r["type"] == "error":
                raise errors.from_reply(r)
            if r["type"] != "token":
                return r

    # ---- the API (as blip2.Client) -------------------------------------------
    async def run(self, image, prompt=None, timeout=None, **params):
        """The whole Result of a generate request (see blip2.Client.run)."""
        req = P.generate_request(prompt, False, params)
        return P.Result(await self._with_image(image, req, timeout))

    async def caption(self, image, prompt=None, timeout=None, **params):
        """The caption, trimmed, as blip2ctl caption prints it."""
        return P.trimmed((await self.run(image, prompt, timeout, **params)).text)

    async def ask(self, image, question, timeout=None, **params):
        """The answer, with the prompt "Question: {question} Answer:"."""
        return P.trimmed((await self.run(image, P.question_prompt(question), timeout, **params)).text)

    def generate(self, image, prompt=None, timeout=None, **params):
        """An AsyncStream: `async for piece in c.generate(img)`; then
        stream.result.  aclose() (or leaving the loop and closing it) cancels."""
        return AsyncStream(self, image, P.generate_request(prompt, True, params), timeout)

    async def features(self, image=None, text=None, outputs=None, timeout=None):
        """Blip2Model's features as numpy arrays (see blip2.Client.features)."""
        if image is None and text is None:
            raise ValueError("features needs an image, a text or both")
        if self.protocol < 2:
            raise errors.UnsupportedError("the daemon speaks protocol %d; features needs 2" % self.protocol,
                                          code="unsupported")
        req = P.features_request(text, outputs)
        if image is None:
            return P.Features(await self._call(req, timeout=timeout))
        return P.Features(await self._with_image(image, req, timeout))

    async def status(self, timeout=None):
        return await self._call({"op": "status"}, timeout=timeout)

    async def ping(self, timeout=None):
        loop = asyncio.get_running_loop()
        t = loop.time()
        await self._call({"op": "ping"}, timeout=timeout)
        return loop.time() - t

    async def cancel(self, rid):
        """Asks the daemon to stop request rid; True if it was in flight."""
        if rid not in self._queues:
            return False
        return bool((await self._call({"op": "cancel", "target": rid})).get("found"))


class AsyncStream:
    """A streaming generate request of an AsyncClient: an async iterator of
    text pieces (sequence 0); .result after the end; .tokens every
    (seq, token id, piece); aclose() cancels it if still running."""

    def __init__(self, client, image, req, timeout):
        self._c, self._image, self._req, self._timeout = client, image, req, timeout
        self.id = None
        self._q = None
        self.result = None
        self.tokens = []
        self._done = False

    async def _start(self):
        src = P.image_source(self._image)
        try:
            fds = P.add_image(self._req, src)
            self.id, self._q = await self._c._send(self._req, fds)
        finally:
            if src[0] == "fd" and src[2]:
                os.close(src[1])
        self._deadline = self._c._deadline(self._timeout)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.id is None:
            await self._start()
        while not self._done:
            r = await self._c._next(self.id, self._q, self._deadline)
            t = r["type"]
            if t == "token":
                self.tokens.append((r.get("seq", 0), r.get("token"), r.get("text", "")))
                if r.get("seq", 0) == 0 and r.get("text"):
                    return r["text"]
            elif t == "done":
                self._done = True
                self.result = P.Result(r)
            elif t == "error":
                self._done = True
                raise errors.from_reply(r)
        raise StopAsyncIteration

    async def text(self):
        """Consumes the stream; the result's text."""
        async for _ in self:
            pass
        return self.result.text

    async def aclose(self):
        if self._done or self.id is None:
            return
        try:
            await self._c.cancel(self.id)
            while not self._done:
                r = await self._c._next(self.id, self._q, self._deadline)
                if r["type"] in ("done", "error"):
                    self._done = True
                    if r["type"] == "done":
                        self.result = P.Result(r)
        except errors.Blip2Error:
            self._done = True

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
