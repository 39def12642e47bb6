/*
 * ipc.c - the small shared pieces of libblip2ipc: error codes and their
 * wire names, the names of ops / reply types / finish reasons, defaults,
 * init and free of messages, and the text helpers (UTF-8 check, quoting
 * for messages) that the decoder, encoder and validator use.
 *
 * Data flow of the library as a whole:
 *
 *   bytes -> frame.c (reader) -> payload -> scan.c (bounded structure check)
 *         -> msgpack_unpack_next -> decode.c (schema walk, schema.c)
 *         -> validate.c -> b2ipc_request / b2ipc_reply
 *   b2ipc_request / b2ipc_reply -> validate.c -> encode.c -> msgpack_sbuffer
 */
#include "ipc-private.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- error codes ---------------------------------------------------------- */

typedef struct {
    int code;
    const char *name;  /* wire name or NULL */
    const char *text;  /* description */
} b2ipc__code_info;

static const b2ipc__code_info b2ipc__codes[] = {
    { B2IPC_OK, NULL, "success" },
    { B2IPC_ENOMEM, "no_memory", "out of memory" },
    { B2IPC_EINVAL, NULL, "invalid argument" },
    { B2IPC_EFRAME_TOO_LARGE, "frame_too_large", "frame larger than the limit" },
    { B2IPC_EBAD_MSGPACK, "bad_msgpack", "payload is not valid MessagePack" },
    { B2IPC_ETRAILING, "trailing_bytes", "bytes after the message in the frame" },
    { B2IPC_ENOT_MAP, "not_map", "message is not a MessagePack map" },
    { B2IPC_EDUP_KEY, "duplicate_key", "a map has a key twice" },
    { B2IPC_EMISSING, "missing_field", "a required field is missing" },
    { B2IPC_ETYPE, "bad_type", "a field has the wrong type" },
    { B2IPC_ERANGE, "out_of_range", "a value is out of range" },
    { B2IPC_EUTF8, "bad_utf8", "text is not valid UTF-8" },
    { B2IPC_EUNKNOWN_FIELD, "unknown_field", "unknown field" },
    { B2IPC_EUNKNOWN_OP, "unknown_op", "unknown operation" },
    { B2IPC_ETOO_LARGE, "too_large", "above a size limit" },
    { B2IPC_EVERSION, "unsupported_version", "protocol version not supported" },
    { B2IPC_EDUP_ID, "duplicate_id", "request id already in flight" },
    { B2IPC_EBAD_FD, "bad_fd", "no usable file descriptor for the image" },
    { B2IPC_EBAD_IMAGE, "bad_image", "not a decodable image" },
    { B2IPC_EUNSUPPORTED, "unsupported", "not supported by this server" },
    { B2IPC_EBUSY, "busy", "server busy, queue full" },
    { B2IPC_ESHUTDOWN, "shutting_down", "server shutting down" },
    { B2IPC_EINTERNAL, "internal", "internal server error" },
    { B2IPC_EUNKNOWN_CODE, NULL, "unknown error code" },
    { B2IPC_EPERM, "permission_denied", "this user may not use the server" },
};

static const b2ipc__code_info *b2ipc__code(int code)
{
    for (size_t i = 0; i < sizeof b2ipc__codes / sizeof b2ipc__codes[0]; i++)
        if (b2ipc__codes[i].code == code) return &b2ipc__codes[i];
    return NULL;
}

const char *b2ipc_strerror(int code)
{
    const b2ipc__code_info *c = b2ipc__code(code);
    return c ? c->text : "unknown error code";
}

const char *b2ipc_code_name(int code)
{
    const b2ipc__code_info *c = b2ipc__code(code);
    return c ? c->name : NULL;
}

int b2ipc_code_from_name(const char *name)
{
    if (!name) return B2IPC_EUNKNOWN_CODE;
    for (size_t i = 0; i < sizeof b2ipc__codes / sizeof b2ipc__codes[0]; i++)
        if (b2ipc__codes[i].name && strcmp(b2ipc__codes[i].name, name) == 0)
            return b2ipc__codes[i].code;
    return B2IPC_EUNKNOWN_CODE;
}

int b2ipc__err(b2ipc_error *err, int code, const char *field,
               const char *fmt, ...)
{
    if (!err) return code;
    err->code = code;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

/* ---- names ----------------------------------------------------------------- */

static const char *const b2ipc__op_names[] = {
    [B2IPC_OP_HELLO] = "hello", [B2IPC_OP_GENERATE] = "generate",
    [B2IPC_OP_CANCEL] = "cancel", [B2IPC_OP_STATUS] = "status",
    [B2IPC_OP_PING] = "ping", [B2IPC_OP_FEATURES] = "features",
};

static const char *const b2ipc__type_names[] = {
    [B2IPC_REPLY_HELLO] = "hello", [B2IPC_REPLY_TOKEN] = "token",
    [B2IPC_REPLY_DONE] = "done", [B2IPC_REPLY_ERROR] = "error",
    [B2IPC_REPLY_STATUS] = "status", [B2IPC_REPLY_PONG] = "pong",
    [B2IPC_REPLY_CANCEL] = "cancel", [B2IPC_REPLY_FEATURES] = "features",
};

static const char *const b2ipc__feature_names[B2IPC_FEAT_COUNT] = {
    [B2IPC_FEAT_IMAGE_LAST_HIDDEN_STATE] = "image_last_hidden_state",
    [B2IPC_FEAT_IMAGE_POOLER_OUTPUT] = "image_pooler_output",
    [B2IPC_FEAT_QFORMER_LAST_HIDDEN_STATE] = "qformer_last_hidden_state",
    [B2IPC_FEAT_QFORMER_POOLER_OUTPUT] = "qformer_pooler_output",
    [B2IPC_FEAT_LANGUAGE_MODEL_INPUTS] = "language_model_inputs",
    [B2IPC_FEAT_LOGITS] = "logits",
    [B2IPC_FEAT_LOGITS_LAST] = "logits_last",
};

const char *b2ipc_feature_output_name(int output)
{
    return output >= 0 && output < B2IPC_FEAT_COUNT ? b2ipc__feature_names[output] : NULL;
}

int b2ipc_feature_output_index(const char *name, size_t len)
{
    for (int i = 0; name && i < B2IPC_FEAT_COUNT; i++)
        if (strlen(b2ipc__feature_names[i]) == len && !memcmp(b2ipc__feature_names[i], name, len))
            return i;
    return -1;
}

bool b2ipc_feature_output_is_image(int output)
{
    return output >= 0 && output < B2IPC_FEAT_LOGITS;
}

static const char *const b2ipc__finish_names[] = {
    [B2IPC_FINISH_LENGTH] = "length", [B2IPC_FINISH_EOS] = "eos",
    [B2IPC_FINISH_STOP] = "stop", [B2IPC_FINISH_CANCELED] = "canceled",
};

const char *b2ipc_op_name(b2ipc_op op)
{
    if ((unsigned)op >= sizeof b2ipc__op_names / sizeof b2ipc__op_names[0])
        return NULL;
    return b2ipc__op_names[op];
}

const char *b2ipc_reply_type_name(b2ipc_reply_type type)
{
    if ((unsigned)type >= sizeof b2ipc__type_names / sizeof b2ipc__type_names[0])
        return NULL;
    return b2ipc__type_names[type];
}

const char *b2ipc_finish_name(b2ipc_finish finish)
{
    if ((unsigned)finish >= sizeof b2ipc__finish_names / sizeof b2ipc__finish_names[0])
        return NULL;
    return b2ipc__finish_names[finish];
}

/* ---- defaults, init, free ------------------------------------------------- */

void b2ipc_gen_params_default(b2ipc_gen_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_new_tokens = 20;
    p->min_new_tokens = 0;
    p->num_beams = 1;
    p->length_penalty = 1.0;
    p->repetition_penalty = 1.0;
    p->do_sample = false;
    p->temperature = 1.0;
    p->top_k = 50;
    p->top_p = 1.0;
    p->num_return_sequences = 1;
}

void b2ipc_request_init(b2ipc_request *rq, b2ipc_op op)
{
    memset(rq, 0, sizeof *rq);
    rq->op = op;
    rq->has_id = true;
    if (op == B2IPC_OP_HELLO) rq->hello.v = B2IPC_PROTOCOL_VERSION;
    b2ipc_gen_params_default(&rq->generate.params);
}

void b2ipc_reply_init(b2ipc_reply *rp, b2ipc_reply_type type)
{
    memset(rp, 0, sizeof *rp);
    rp->type = type;
    rp->has_id = true;
}

void b2ipc_request_free(b2ipc_request *rq)
{
    if (!rq) return;
    if (rq->arena_) msgpack_zone_free(rq->arena_);
    memset(rq, 0, sizeof *rq);
}

void b2ipc_reply_free(b2ipc_reply *rp)
{
    if (!rp) return;
    if (rp->arena_) msgpack_zone_free(rp->arena_);
    memset(rp, 0, sizeof *rp);
}

uint64_t b2ipc__max_image(const b2ipc_limits *lim)
{
    return lim && lim->max_image_bytes ? lim->max_image_bytes
                                       : B2IPC_DEFAULT_MAX_IMAGE_BYTES;
}

uint64_t b2ipc__max_prompt(const b2ipc_limits *lim)
{
    return lim && lim->max_prompt_bytes ? lim->max_prompt_bytes
                                        : B2IPC_DEFAULT_MAX_PROMPT_BYTES;
}

double b2ipc__size_limit(const b2ipc__field *f, const b2ipc_limits *lim)
{
    if (f->flags & B2IPC__F_LIM_PROMPT) return (double)b2ipc__max_prompt(lim);
    if (f->flags & B2IPC__F_LIM_IMAGE) return (double)b2ipc__max_image(lim);
    return f->hi;
}

/* ---- text ----------------------------------------------------------------- */

int b2ipc__utf8_check(const char *s, size_t n, bool allow_nul, size_t *at)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;  /* range of the first continuation */
        if (c < 0x80) {
            if (c == 0 && !allow_nul) {
                if (at) *at = i;
                return -2;
            }
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;       /* no overlong */
            if (c == 0xED) hi = 0x9F;       /* no surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;       /* no overlong */
            if (c == 0xF4) hi = 0x8F;       /* <= U+10FFFF */
        } else {
            if (at) *at = i;
            return -1;
        }
        if (n - i <= need) {
            if (at) *at = i;
            return -1;
        }
        if (p[i + 1] < lo || p[i + 1] > hi) {
            if (at) *at = i;
            return -1;
        }
        for (size_t k = 2; k <= need; k++)
            if ((p[i + k] & 0xC0) != 0x80) {
                if (at) *at = i;
                return -1;
            }
        i += need + 1;
    }
    return 0;
}

void b2ipc__quote(char *dst, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0) return;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t w = (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') ? 1 : 4;
        if (o + w + 4 > cap) { /* room for "..." and NUL */
            if (o + 4 <= cap) memcpy(dst + o, "...", 3), o += 3;
            break;
        }
        if (w == 1) {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    dst[o] = '\0';
}
