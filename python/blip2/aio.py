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
import errno
import socket as _socket

from . import errors
from . import _protocol as P


class AsyncClient(P.ClientBase):
    """An asyncio connection to blip2d; create it with
    `await AsyncClient.connect(socket=None, ...)` (arguments as blip2.Client)
    or `async with AsyncClient(...) as c`."""

    def __init__(self, socket=None, timeout=None, connect_timeout=10.0, client_name=None,
                 max_frame=P.DEFAULT_MAX_FRAME):
        self._args = (socket, connect_timeout, client_name)
        super().__init__(timeout, max_frame)
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
        dial = P.Dial(socket)
        for s, path in dial:
            s.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(s, path), connect_timeout)
            except OSError as e:
                dial.failed(e)
                continue
            except asyncio.TimeoutError:
                dial.failed(OSError(errno.ETIMEDOUT, "timed out"))
                continue
            self._sock = dial.connected(self)
            break
        if self._sock is None:
            raise dial.error()
        self._reader = asyncio.ensure_future(self._read_loop())
        try:
            r = await self._call(P.hello_request(client_name), timeout=connect_timeout)
        except BaseException:
            await self.close()
            raise
        P.take_hello(self, r)

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
    async def _read_loop(self):
        loop = asyncio.get_running_loop()
        rx = P.FrameBuffer(self.max_frame)
        try:
            while True:
                while len(rx.buf) < rx.need():
                    chunk = await loop.sock_recv(self._sock, 1 << 20)
                    if not chunk:
                        raise errors.ConnectionLostError("connection lost: the daemon closed it")
                    rx.buf += chunk
                r = rx.pop()
                rid = P.reply_id(r)
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
        rid, data = self._number(req)
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

    async def _call(self, req, fds=(), timeout=None, sent=None):
        """Sends req (unless sent: its (rid, queue)) and returns its terminal
        reply; an error reply raises."""
        rid, q = sent or await self._send(req, fds)
        deadline = self._deadline(timeout)
        while True:
            r = P.final_reply(await self._next(rid, q, deadline))
            if r is not None:
                return r

    async def _with_image(self, image, req, timeout=None):
        with P.image_fds(image, req) as fds:
            sent = await self._send(req, fds)
        return await self._call(req, timeout=timeout, sent=sent)

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
        req = P.features_request(self.protocol, image, text, outputs)
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


class AsyncStream(P.StreamEvents):
    """A streaming generate request of an AsyncClient: an async iterator of
    text pieces (sequence 0); .result after the end; .tokens every
    (seq, token id, piece); aclose() cancels it if still running."""

    def __init__(self, client, image, req, timeout):
        super().__init__()
        self._c, self._image, self._req, self._timeout = client, image, req, timeout
        self.id = None
        self._q = None

    async def _start(self):
        with P.image_fds(self._image, self._req) as fds:
            self.id, self._q = await self._c._send(self._req, fds)
        self._deadline = self._c._deadline(self._timeout)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.id is None:
            await self._start()
        while not self._done:
            piece = self._event(await self._c._next(self.id, self._q, self._deadline))
            if piece is not None:
                return piece
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
                self._drain(await self._c._next(self.id, self._q, self._deadline))
        except errors.Blip2Error:
            self._done = True

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
