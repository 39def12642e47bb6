/* error.h - internal: filling blip2_error. */
#ifndef BLIP2_ERROR_H
#define BLIP2_ERROR_H
#include "blip2_base.h"

/* Formats the message into err (if non-NULL) and returns code, so callers
 * can write `return b2__err(err, BLIP2_EINVAL, "bad %s", x);`. */
int b2__err(blip2_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
