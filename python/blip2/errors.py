# blip2/errors.py - the exceptions of the blip2 package.
#
# Two kinds, as in libblip2client (client/blip2client.h):
#   - failures this library detects: ConnectError (no daemon to talk to),
#     ConnectionLostError, ProtocolError (a reply it cannot accept),
#     TimeoutError (a call's time limit passed; the request was canceled);
#   - the daemon's error replies, one class per stable wire code of
#     docs/protocol.md section 9 (BusyError for "busy", ...).  A code this
#     version does not know becomes InternalError with .code set to it, as the
#     protocol asks ("treat a code you do not know like internal").
# Every exception derives from Blip2Error, which carries .code (the wire name,
# or a library name such as "connect"), .field (the request field concerned,
# or None) and .message (one line for humans).  Classes also derive from the
# closest built-in exception where one fits (ConnectionError, TimeoutError,
# ValueError, MemoryError) so generic handlers work.
import builtins


class Blip2Error(Exception):
    """Base of every blip2 exception: .code, .field (or None), .message."""

    code = "error"

    def __init__(self, message, code=None, field=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def __str__(self):
        return self.message


# ---- detected by the library -------------------------------------------------
class ConnectError(Blip2Error, ConnectionError):
    """Could not connect; the message lists the sockets tried and how to start blip2d."""
    code = "connect"


class ConnectionLostError(Blip2Error, ConnectionError):
    """The daemon closed the connection or died; pending requests fail with it."""
    code = "connection_lost"


class ProtocolError(Blip2Error):
    """A reply this library cannot accept (the connection is closed)."""
    code = "protocol"


class TimeoutError(Blip2Error, builtins.TimeoutError):
    """A call's time limit passed; the request was canceled, the connection stays usable."""
    code = "timeout"


# ---- the daemon's error replies (docs/protocol.md section 9) ------------------
class ServerError(Blip2Error):
    """The daemon refused or failed the request (an `error` reply)."""
    code = "internal"


def _server_error(name, doc, *bases):
    cls = type(name, (ServerError,) + bases, {"__doc__": doc})
    return cls


FrameTooLargeError = _server_error("FrameTooLargeError", "frame_too_large: a request above the daemon's --max-frame")
BadMsgpackError = _server_error("BadMsgpackError", "bad_msgpack", ValueError)
TrailingBytesError = _server_error("TrailingBytesError", "trailing_bytes", ValueError)
NotMapError = _server_error("NotMapError", "not_map", ValueError)
DuplicateKeyError = _server_error("DuplicateKeyError", "duplicate_key", ValueError)
MissingFieldError = _server_error("MissingFieldError", "missing_field", ValueError)
BadTypeError = _server_error("BadTypeError", "bad_type", ValueError)
OutOfRangeError = _server_error("OutOfRangeError", "out_of_range: a parameter outside its range (see .field)", ValueError)
BadUtf8Error = _server_error("BadUtf8Error", "bad_utf8", ValueError)
UnknownFieldError = _server_error("UnknownFieldError", "unknown_field", ValueError)
UnknownOpError = _server_error("UnknownOpError", "unknown_op", ValueError)
TooLargeError = _server_error("TooLargeError", "too_large: image, prompt or context above its limit", ValueError)
UnsupportedVersionError = _server_error("UnsupportedVersionError", "unsupported_version")
DuplicateIdError = _server_error("DuplicateIdError", "duplicate_id")
BadFdError = _server_error("BadFdError", "bad_fd: the image descriptor was not a readable regular file", ValueError)
BadImageError = _server_error("BadImageError", "bad_image: not an image the daemon can decode", ValueError)
UnsupportedError = _server_error("UnsupportedError", "unsupported: valid but not implemented (beam sampling, a model family)")
BusyError = _server_error("BusyError", "busy: the daemon's queue is full; retry later")
ShuttingDownError = _server_error("ShuttingDownError", "shutting_down: the daemon is stopping")
PermissionDeniedError = _server_error("PermissionDeniedError", "permission_denied: not in the daemon's allow lists",
                                      PermissionError)
NoMemoryError = _server_error("NoMemoryError", "no_memory: the daemon could not allocate memory", MemoryError)
InternalError = _server_error("InternalError", "internal, or a code this version does not know (.code holds it)")

# wire code -> class, in the order of docs/protocol.md section 9
CODES = {
    "frame_too_large": FrameTooLargeError,
    "bad_msgpack": BadMsgpackError,
    "trailing_bytes": TrailingBytesError,
    "not_map": NotMapError,
    "duplicate_key": DuplicateKeyError,
    "missing_field": MissingFieldError,
    "bad_type": BadTypeError,
    "out_of_range": OutOfRangeError,
    "bad_utf8": BadUtf8Error,
    "unknown_field": UnknownFieldError,
    "unknown_op": UnknownOpError,
    "too_large": TooLargeError,
    "unsupported_version": UnsupportedVersionError,
    "duplicate_id": DuplicateIdError,
    "bad_fd": BadFdError,
    "bad_image": BadImageError,
    "unsupported": UnsupportedError,
    "busy": BusyError,
    "shutting_down": ShuttingDownError,
    "permission_denied": PermissionDeniedError,
    "no_memory": NoMemoryError,
    "internal": InternalError,
}
for _code, _cls in CODES.items():
    _cls.code = _code


def from_reply(reply):
    """The exception for an `error` reply (a dict): its code's class, or
    InternalError carrying an unknown code."""
    code = reply.get("code")
    code = code if isinstance(code, str) else "internal"
    msg = reply.get("message")
    msg = msg if isinstance(msg, str) else code
    field = reply.get("field")
    field = field if isinstance(field, str) else None
    return CODES.get(code, InternalError)(msg, code=code, field=field)


__all__ = ["Blip2Error", "ConnectError", "ConnectionLostError", "ProtocolError", "TimeoutError",
           "ServerError", "CODES", "from_reply"] + [c.__name__ for c in CODES.values()]
