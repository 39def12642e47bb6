/*
 * error.c - error codes and messages of libblip2model.
 *
 * Every failing call returns a negative BLIP2_E* code and, when the caller
 * passed a blip2_error, a one-line message naming what failed (file, tensor,
 * field).  Nothing here allocates.
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

const char *blip2_strerror(int code)
{
    switch (code) {
    case BLIP2_OK: return "success";
    case BLIP2_EINVAL: return "invalid argument";
    case BLIP2_EIO: return "I/O error";
    case BLIP2_EFORMAT: return "corrupt or mis-shaped model file";
    case BLIP2_ENOMEM: return "out of memory";
    case BLIP2_EIMAGE: return "not a decodable image";
    case BLIP2_ETOOBIG: return "input too large";
    case BLIP2_ECANCELED: return "canceled";
    case BLIP2_EUNSUPPORTED: return "unsupported";
    default: return "unknown error";
    }
}

int b2__err(blip2_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->text, sizeof err->text, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}
