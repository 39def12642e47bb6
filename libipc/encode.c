/*
 * encode.c - b2ipc_request / b2ipc_reply -> one frame appended to a
 * msgpack_sbuffer.
 *
 *   struct --b2ipc_*_validate--> ok --reserve 4 bytes--> map via the schema
 *          (schema.c: "id", "op"/"type", then the op's fields in table
 *          order) --patch the big-endian length--> frame
 *
 * On any failure the buffer is cut back to its size on entry, so a caller
 * queueing several frames in one buffer never sends half a frame.
 */
#include "ipc-private.h"

#include <string.h>

#define AT(root, off, type) ((type *)((const char *)(root) + (off)))

static int b2ipc__pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    if (msgpack_pack_str(pk, n) < 0) return -1;
    return n ? msgpack_pack_str_body(pk, s, n) : 0;
}

static int b2ipc__pack_cstr(msgpack_packer *pk, const char *s)
{
    return b2ipc__pack_str(pk, s, strlen(s));
}

/* Whether the encoder writes field f of root. */
static bool b2ipc__present(const b2ipc__field *f, const void *root)
{
    switch (f->kind) {
    case B2IPC__K_U32:
    case B2IPC__K_U64:
    case B2IPC__K_F64:
        return f->aux == B2IPC__NOAUX || *AT(root, f->aux, const bool);
    case B2IPC__K_BOOL:
        return !(f->flags & B2IPC__F_OMIT_FALSE) || *AT(root, f->off, const bool);
    case B2IPC__K_STR:
    case B2IPC__K_BIN:
        return *AT(root, f->off, const void *const) != NULL;
    case B2IPC__K_STRARR:
        return *AT(root, f->aux, const uint32_t) > 0;
    default:
        return true;
    }
}

static int b2ipc__pack_fields(msgpack_packer *pk, const b2ipc__schema *s,
                              const void *root);

/* Item i of the counted field f: a string of a string array, a tensor's
 * name and {dtype, shape, data}, or a sequence's text, ids or finish. */
static int b2ipc__pack_item(msgpack_packer *pk, const b2ipc__field *f, const void *root, uint32_t i)
{
    if (f->kind == B2IPC__K_STRARR) return b2ipc__pack_cstr(pk, (*AT(root, f->off, const char *const *const))[i]);
    if (f->kind == B2IPC__K_TENSORS) {
        const b2ipc_tensor *t = &(*AT(root, f->off, const b2ipc_tensor *const))[i];
        if (b2ipc__pack_cstr(pk, t->name) < 0 || msgpack_pack_map(pk, 3) < 0 ||
            b2ipc__pack_cstr(pk, "dtype") < 0 || b2ipc__pack_cstr(pk, t->dtype) < 0 ||
            b2ipc__pack_cstr(pk, "shape") < 0 || msgpack_pack_array(pk, t->ndim) < 0)
            return -1;
        for (uint32_t k = 0; k < t->ndim; k++)
            if (msgpack_pack_uint64(pk, t->shape[k]) < 0) return -1;
        if (b2ipc__pack_cstr(pk, "data") < 0 || msgpack_pack_bin(pk, t->data_len) < 0 ||
            (t->data_len && msgpack_pack_bin_body(pk, t->data, t->data_len) < 0))
            return -1;
        return 0;
    }
    const b2ipc_seq *q = &(*AT(root, f->off, const b2ipc_seq *const))[i];
    if (f->kind == B2IPC__K_SEQ_TEXTS) return b2ipc__pack_str(pk, q->text ? q->text : "", q->text_len);
    if (f->kind == B2IPC__K_SEQ_FINISH) return b2ipc__pack_cstr(pk, b2ipc_finish_name(q->finish));
    if (msgpack_pack_array(pk, q->n_ids) < 0) return -1;
    for (size_t k = 0; k < q->n_ids; k++)
        if (msgpack_pack_uint32(pk, q->ids[k]) < 0) return -1;
    return 0;
}

static int b2ipc__pack_value(msgpack_packer *pk, const b2ipc__field *f,
                             const void *root)
{
    switch (f->kind) {
    case B2IPC__K_U32:
        return msgpack_pack_uint32(pk, *AT(root, f->off, const uint32_t));
    case B2IPC__K_U64:
        return msgpack_pack_uint64(pk, *AT(root, f->off, const uint64_t));
    case B2IPC__K_F64:
        return msgpack_pack_double(pk, *AT(root, f->off, const double));
    case B2IPC__K_BOOL:
        return *AT(root, f->off, const bool) ? msgpack_pack_true(pk)
                                             : msgpack_pack_false(pk);
    case B2IPC__K_STR:
        return b2ipc__pack_cstr(pk, *AT(root, f->off, const char *const));
    case B2IPC__K_TEXT: {
        const char *t = *AT(root, f->off, const char *const);
        return b2ipc__pack_str(pk, t ? t : "", *AT(root, f->aux, const size_t));
    }
    case B2IPC__K_BIN: {
        size_t n = *AT(root, f->aux, const size_t);
        if (msgpack_pack_bin(pk, n) < 0) return -1;
        return n ? msgpack_pack_bin_body(pk, *AT(root, f->off, const uint8_t *const), n) : 0;
    }
    case B2IPC__K_MAP:
        return b2ipc__pack_fields(pk, f->sub, root);
    case B2IPC__K_CODE: {
        int code = *AT(root, f->off, const int);
        const char *nm = b2ipc_code_name(code);
        return b2ipc__pack_cstr(pk, nm ? nm : *AT(root, f->aux, const char *const));
    }
    case B2IPC__K_STRARR:
    case B2IPC__K_TENSORS:
    case B2IPC__K_SEQ_TEXTS:
    case B2IPC__K_SEQ_IDS:
    case B2IPC__K_SEQ_FINISH: {
        /* counted (aux: the count): an array of items, tensors a map */
        uint32_t n = *AT(root, f->aux, const uint32_t);
        if ((f->kind == B2IPC__K_TENSORS ? msgpack_pack_map(pk, n) : msgpack_pack_array(pk, n)) < 0) return -1;
        for (uint32_t i = 0; i < n; i++)
            if (b2ipc__pack_item(pk, f, root, i) < 0) return -1;
        return 0;
    }
    }
    return -1;
}

/* A map of the present fields of s (nested maps only). */
static int b2ipc__pack_fields(msgpack_packer *pk, const b2ipc__schema *s,
                              const void *root)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) n += b2ipc__present(&s->fields[i], root);
    if (msgpack_pack_map(pk, n) < 0) return -1;
    for (size_t i = 0; i < s->n; i++) {
        const b2ipc__field *f = &s->fields[i];
        if (!b2ipc__present(f, root)) continue;
        if (b2ipc__pack_cstr(pk, f->name) < 0 || b2ipc__pack_value(pk, f, root) < 0)
            return -1;
    }
    return 0;
}

/* The frame: prefix, {id?, disc: name, fields...}. */
static int b2ipc__encode(msgpack_sbuffer *out, const b2ipc__schema *s,
                         const void *root, bool has_id, uint64_t id,
                         const char *disc, const char *disc_name,
                         b2ipc_error *err)
{
    size_t start = out->size;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);

    size_t n = (has_id ? 1 : 0) + 1;
    for (size_t i = 0; i < s->n; i++) n += b2ipc__present(&s->fields[i], root);
    if (msgpack_sbuffer_write(out, "\0\0\0\0", 4) < 0 ||
        msgpack_pack_map(&pk, n) < 0 ||
        (has_id && (b2ipc__pack_cstr(&pk, "id") < 0 || msgpack_pack_uint64(&pk, id) < 0)) ||
        b2ipc__pack_cstr(&pk, disc) < 0 || b2ipc__pack_cstr(&pk, disc_name) < 0)
        goto nomem;
    for (size_t i = 0; i < s->n; i++) {
        const b2ipc__field *f = &s->fields[i];
        if (!b2ipc__present(f, root)) continue;
        if (b2ipc__pack_cstr(&pk, f->name) < 0 || b2ipc__pack_value(&pk, f, root) < 0)
            goto nomem;
    }
    size_t len = out->size - start - 4;
    if (len > UINT32_MAX) {
        out->size = start;
        return b2ipc__err(err, B2IPC_ETOO_LARGE, NULL,
                          "message of %zu bytes does not fit a frame", len);
    }
    unsigned char *p = (unsigned char *)out->data + start;
    p[0] = (unsigned char)(len >> 24);
    p[1] = (unsigned char)(len >> 16);
    p[2] = (unsigned char)(len >> 8);
    p[3] = (unsigned char)len;
    return 0;

nomem:
    out->size = start;
    return b2ipc__err(err, B2IPC_ENOMEM, NULL, "out of memory");
}

int b2ipc_encode_request(msgpack_sbuffer *out, const b2ipc_request *rq,
                         const b2ipc_limits *lim, b2ipc_error *err)
{
    if (!out) return b2ipc__err(err, B2IPC_EINVAL, NULL, "NULL buffer");
    int rc = b2ipc_request_validate(rq, lim, err);
    if (rc < 0) return rc;
    return b2ipc__encode(out, b2ipc__request_schema(rq->op), rq, true, rq->id,
                         "op", b2ipc_op_name(rq->op), err);
}

int b2ipc_encode_reply(msgpack_sbuffer *out, const b2ipc_reply *rp,
                       b2ipc_error *err)
{
    if (!out) return b2ipc__err(err, B2IPC_EINVAL, NULL, "NULL buffer");
    int rc = b2ipc_reply_validate(rp, err);
    if (rc < 0) return rc;
    return b2ipc__encode(out, b2ipc__reply_schema(rp->type), rp, rp->has_id,
                         rp->id, "type", b2ipc_reply_type_name(rp->type), err);
}

/* Copies s into dst (cap bytes incl. NUL), at most max bytes of text:
 * invalid UTF-8 bytes become '?', never cut inside a character. */
static void b2ipc__sanitize(char *dst, size_t cap, const char *s, size_t max)
{
    size_t o = 0, n = s ? strlen(s) : 0, i = 0;
    if (max > cap - 1) max = cap - 1;
    while (i < n) {
        size_t at, w;
        if (b2ipc__utf8_check(s + i, n - i, false, &at) == 0) at = n - i;
        if (at == 0) {  /* s[i] starts an invalid sequence */
            if (o + 1 > max) break;
            dst[o++] = '?';
            i++;
            continue;
        }
        /* s[i .. i+at) is valid: copy whole characters that fit */
        w = at;
        if (o + w > max) {
            w = max - o;
            while (w > 0 && ((unsigned char)s[i + w] & 0xC0) == 0x80) w--;
        }
        memcpy(dst + o, s + i, w);
        o += w;
        i += w;
        if (w < at) break;
    }
    dst[o] = '\0';
}

int b2ipc_encode_error(msgpack_sbuffer *out, bool has_id, uint64_t id,
                       int code, const char *field, const char *message)
{
    char f[129], m[1025];
    if (!out || !b2ipc_code_name(code)) return B2IPC_EINVAL;
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_ERROR);
    rp.has_id = has_id;
    rp.id = id;
    rp.error.code = code;
    b2ipc__sanitize(m, sizeof m, message ? message : b2ipc_strerror(code), 1024);
    rp.error.message = m;
    if (field && *field) {
        b2ipc__sanitize(f, sizeof f, field, 128);
        rp.error.field = f;
    }
    return b2ipc_encode_reply(out, &rp, NULL);
}
