/*
 * error.c - libblip2client's error codes and messages.
 *
 *   library failure ------------------> b2c__err(code, printf-style message)
 *   daemon error reply (wire "busy") --> b2c__from_reply --> BLIP2C_EBUSY
 *   libipc validation failure ---------> b2c__from_ipc --> BLIP2C_EINVAL
 *                                          |
 *                     caller's blip2c_error and the connection's last error
 *
 * The daemon codes are numbered -20 - i, i being the position of the wire
 * name in b2c__names (docs/protocol.md section 9 order); a name this
 * library does not know becomes BLIP2C_EINTERNAL and keeps its name.
 */
#include "client-private.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const b2c__names[] = {
    "frame_too_large", "bad_msgpack", "trailing_bytes", "not_map",
    "duplicate_key", "missing_field", "bad_type", "out_of_range", "bad_utf8",
    "unknown_field", "unknown_op", "too_large", "unsupported_version",
    "duplicate_id", "bad_fd", "bad_image", "unsupported", "busy",
    "shutting_down", "no_memory", "internal", "permission_denied",
};
#define B2C__NNAMES (sizeof b2c__names / sizeof b2c__names[0])
#define B2C__FIRST_SERVER (-20)

static const char *const b2c__descr[] = {
    "the request frame was larger than the daemon accepts",
    "the daemon could not parse the request",
    "the request had trailing bytes",
    "the request was not a map",
    "the request had a duplicate key",
    "the request lacked a required field",
    "a request field had the wrong type",
    "a request value was out of range",
    "request text was not valid UTF-8",
    "the daemon does not know a request field",
    "the daemon does not know the operation",
    "image, prompt or context too large",
    "protocol version not supported by the daemon",
    "request id already in flight",
    "the image descriptor was refused",
    "the image could not be decoded",
    "not supported by the daemon",
    "the daemon is busy (queue full)",
    "the daemon is shutting down",
    "the daemon ran out of memory",
    "internal error in the daemon",
    "the daemon does not allow this user",
};

const char *blip2c_strerror(int code)
{
    switch (code) {
    case BLIP2C_OK: return "success";
    case BLIP2C_EINVAL: return "bad input";
    case BLIP2C_ENOMEM: return "out of memory";
    case BLIP2C_ECONNECT: return "cannot connect to blip2d";
    case BLIP2C_ECONNLOST: return "connection lost";
    case BLIP2C_EPROTO: return "protocol error";
    case BLIP2C_ETIMEDOUT: return "timed out";
    default: break;
    }
    if (code <= B2C__FIRST_SERVER && code > B2C__FIRST_SERVER - (int)B2C__NNAMES)
        return b2c__descr[B2C__FIRST_SERVER - code];
    return "unknown error";
}

const char *blip2c_code_name(int code)
{
    if (code <= B2C__FIRST_SERVER && code > B2C__FIRST_SERVER - (int)B2C__NNAMES)
        return b2c__names[B2C__FIRST_SERVER - code];
    return NULL;
}

bool blip2c_is_server_error(int code)
{
    return blip2c_code_name(code) != NULL;
}

const char *blip2c_version(void)
{
    return BLIP2C_VERSION;
}

static void b2c__vset(blip2c_error *e, int code, const char *fmt, va_list ap)
{
    e->code = code;
    e->code_name[0] = '\0';
    e->field[0] = '\0';
    vsnprintf(e->message, sizeof e->message, fmt, ap);
}

int b2c__err(blip2c_error *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        b2c__vset(e, code, fmt, ap);
        va_end(ap);
    }
    return code;
}

int b2c__cerr(blip2c_conn *c, blip2c_error *e, int code, const char *fmt, ...)
{
    blip2c_error tmp;
    va_list ap;
    va_start(ap, fmt);
    b2c__vset(&tmp, code, fmt, ap);
    va_end(ap);
    return b2c__report(c, e, &tmp);
}

int b2c__report(blip2c_conn *c, blip2c_error *e, const blip2c_error *src)
{
    if (c && &c->last != src) c->last = *src;
    if (e && e != src) *e = *src;
    return src->code;
}

/* Copies a possibly long string into a fixed buffer, cutting it. */
static void b2c__copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

void b2c__from_reply(blip2c_error *e, const b2ipc_reply *rp)
{
    const char *name = rp->error.code_name;
    if (!name) name = b2ipc_code_name(rp->error.code);
    if (!name) name = "internal";
    e->code = BLIP2C_EINTERNAL;
    for (size_t i = 0; i < B2C__NNAMES; i++)
        if (strcmp(b2c__names[i], name) == 0) {
            e->code = B2C__FIRST_SERVER - (int)i;
            break;
        }
    b2c__copy(e->code_name, sizeof e->code_name, name);
    b2c__copy(e->field, sizeof e->field, rp->error.field);
    b2c__copy(e->message, sizeof e->message,
              rp->error.message && rp->error.message[0] ? rp->error.message : name);
}

int b2c__from_ipc(blip2c_error *e, int ipc_rc, const b2ipc_error *ie)
{
    int code = ipc_rc == B2IPC_ENOMEM ? BLIP2C_ENOMEM : BLIP2C_EINVAL;
    if (e) {
        e->code = code;
        e->code_name[0] = '\0';
        b2c__copy(e->field, sizeof e->field, ie->field);
        b2c__copy(e->message, sizeof e->message,
                  ie->message[0] ? ie->message : b2ipc_strerror(ipc_rc));
    }
    return code;
}
