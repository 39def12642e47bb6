# blip2 - Python client of blip2d, the BLIP-2 captioning and visual question
# answering daemon (docs/python.md).  Pure Python over the documented wire
# protocol (docs/protocol.md) with msgpack; numpy for features.
#
#     import blip2
#     with blip2.Client() as c:                       # the default socket
#         print(c.caption("photo.jpg"))               # "a cat sitting on a sofa"
#         print(c.ask("photo.jpg", "what colour is the cat?"))
#         for piece in c.generate("photo.jpg", max_new_tokens=40):
#             print(piece, end="", flush=True)
#         f = c.features("photo.jpg", outputs=["image_pooler_output"])
#         f["image_pooler_output"].shape               # (1, 1408)
#
#     async with blip2.AsyncClient() as c:            # asyncio
#         caps = await asyncio.gather(*(c.caption(p) for p in paths))
#
# Errors are exceptions deriving from blip2.Blip2Error: one class per error
# code of the protocol (blip2.BusyError for "busy", blip2.BadImageError, ...)
# plus ConnectError, ConnectionLostError, ProtocolError and TimeoutError.
from ._protocol import VERSION as __version__, PROTOCOL, Result, Sequence, Features
from .client import Client, Stream
from .aio import AsyncClient, AsyncStream
from .errors import *  # noqa: F401,F403  (the exception classes)
from . import errors

__all__ = ["Client", "Stream", "AsyncClient", "AsyncStream", "Result", "Sequence", "Features",
           "PROTOCOL", "errors"] + errors.__all__
