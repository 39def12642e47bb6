/*
 * decode.c - one frame payload -> b2ipc_request / b2ipc_reply.
 *
 *   payload --b2ipc__scan--> bounded, one object, no trailing bytes
 *           --msgpack_unpack_next--> msgpack_object tree (borrows payload)
 *           --top level: map? keys? duplicates? id? op/type?
 *           --schema walk (schema.c): unknown keys, types, sizes; copies
 *             strings into the message's arena (a msgpack_zone)
 *           --b2ipc_*_validate: ranges, UTF-8, combinations
 *
 * The steps follow docs/protocol.md section 10, so the first problem found
 * is the one reported.  Requests are strict (unknown fields are errors);
 * replies ignore unknown fields.  The image bin is not copied: it points
 * into the caller's payload.
 */
#include "ipc-private.h"

#include <stdio.h>
#include <string.h>

#define AT(root, off, type) ((type *)((char *)(root) + (off)))

#define B2IPC__REQUEST_MAX_KEYS 64u
#define B2IPC__REPLY_MAX_KEYS 256u
#define B2IPC__ARENA_CHUNK 2048u

typedef struct b2ipc__dec {
    msgpack_zone *z;              /* the message's arena */
    const b2ipc_limits *lim;
    b2ipc_error *err;
    const msgpack_object *seq[3]; /* done: texts, ids, finish */
} b2ipc__dec;

static const char *b2ipc__type_word(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_BIN: return "binary";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_EXT: return "an ext value";
    }
    return "an unknown type";
}

static int b2ipc__bad_type(b2ipc__dec *d, const char *name, const char *want,
                           const msgpack_object *o)
{
    return b2ipc__err(d->err, B2IPC_ETYPE, name, "%s: expected %s, got %s",
                      name, want, b2ipc__type_word(o));
}

static bool b2ipc__key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

/* NUL-terminated copy of n bytes in the arena. */
static char *b2ipc__dup(b2ipc__dec *d, const char *s, size_t n)
{
    char *c = msgpack_zone_malloc_no_align(d->z, n + 1);
    if (!c) return NULL;
    if (n) memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

/* Map-level checks: size, string keys, no duplicates. */
static int b2ipc__check_map(b2ipc__dec *d, const msgpack_object_map *m,
                            const char *prefix, size_t max_keys)
{
    char q[48], name[64];
    if (m->size > max_keys)
        return b2ipc__err(d->err, B2IPC_ETOO_LARGE, NULL,
                          "%smap has %u entries, at most %zu", prefix,
                          m->size, max_keys);
    for (uint32_t i = 0; i < m->size; i++)
        if (m->ptr[i].key.type != MSGPACK_OBJECT_STR)
            return b2ipc__err(d->err, B2IPC_ETYPE, NULL,
                              "%smap key %u is %s, keys must be strings",
                              prefix, i, b2ipc__type_word(&m->ptr[i].key));
    for (uint32_t i = 1; i < m->size; i++) {
        const msgpack_object_str *ki = &m->ptr[i].key.via.str;
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object_str *kj = &m->ptr[j].key.via.str;
            if (ki->size == kj->size && memcmp(ki->ptr, kj->ptr, ki->size) == 0) {
                b2ipc__quote(q, sizeof q, ki->ptr, ki->size);
                snprintf(name, sizeof name, "%s%s", prefix, q);
                return b2ipc__err(d->err, B2IPC_EDUP_KEY, name,
                                  "duplicate key \"%s\"", name);
            }
        }
    }
    return 0;
}

static int b2ipc__walk(b2ipc__dec *d, const b2ipc__schema *s, void *root,
                       const msgpack_object_map *m, const char *skip_key);

/* features: the map name -> {dtype, shape, data}.  Unknown keys inside a
 * tensor are ignored (replies); the data is copied into the arena. */
static int b2ipc__tensors_value(b2ipc__dec *d, const b2ipc__field *f, void *root,
                                const msgpack_object *o, const char *name)
{
    if (o->type != MSGPACK_OBJECT_MAP) return b2ipc__bad_type(d, name, "a map", o);
    int rc = b2ipc__check_map(d, &o->via.map, "tensors.", B2IPC__REPLY_MAX_KEYS);
    if (rc < 0) return rc;
    uint32_t n = o->via.map.size;
    if ((double)n > f->hi)
        return b2ipc__err(d->err, B2IPC_ETOO_LARGE, name, "%s: %u tensors, at most %.0f",
                          name, n, f->hi);
    b2ipc_tensor *ts = NULL;
    if (n) {
        ts = msgpack_zone_malloc(d->z, n * sizeof *ts);
        if (!ts) return b2ipc__err(d->err, B2IPC_ENOMEM, name, "out of memory");
        memset(ts, 0, n * sizeof *ts);
    }
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        char tn[96], q[72];
        b2ipc__quote(q, sizeof q, k->via.str.ptr, k->via.str.size);
        snprintf(tn, sizeof tn, "tensors.%s", q);
        if ((double)k->via.str.size > f->ehi)
            return b2ipc__err(d->err, B2IPC_ETOO_LARGE, tn, "%s: name of %u bytes, at most %.0f",
                              tn, k->via.str.size, f->ehi);
        if (v->type != MSGPACK_OBJECT_MAP) return b2ipc__bad_type(d, tn, "a map", v);
        if ((rc = b2ipc__check_map(d, &v->via.map, "", B2IPC__REPLY_MAX_KEYS)) < 0) return rc;
        const msgpack_object *dt = NULL, *sh = NULL, *da = NULL;
        for (uint32_t j = 0; j < v->via.map.size; j++) {
            const msgpack_object *kk = &v->via.map.ptr[j].key;
            if (b2ipc__key_is(kk, "dtype")) dt = &v->via.map.ptr[j].val;
            else if (b2ipc__key_is(kk, "shape")) sh = &v->via.map.ptr[j].val;
            else if (b2ipc__key_is(kk, "data")) da = &v->via.map.ptr[j].val;
        }
        char fn[112];
        if (!dt || !sh || !da) {
            snprintf(fn, sizeof fn, "%s.%s", tn, !dt ? "dtype" : !sh ? "shape" : "data");
            return b2ipc__err(d->err, B2IPC_EMISSING, fn, "missing field \"%s\"", fn);
        }
        snprintf(fn, sizeof fn, "%s.dtype", tn);
        if (dt->type != MSGPACK_OBJECT_STR) return b2ipc__bad_type(d, fn, "a string", dt);
        snprintf(fn, sizeof fn, "%s.shape", tn);
        if (sh->type != MSGPACK_OBJECT_ARRAY) return b2ipc__bad_type(d, fn, "an array", sh);
        if (sh->via.array.size < 1 || sh->via.array.size > B2IPC_MAX_TENSOR_DIMS)
            return b2ipc__err(d->err, B2IPC_ERANGE, fn, "%s: %u dimensions, expected 1 to %u",
                              fn, sh->via.array.size, B2IPC_MAX_TENSOR_DIMS);
        for (uint32_t j = 0; j < sh->via.array.size; j++) {
            const msgpack_object *e = &sh->via.array.ptr[j];
            if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return b2ipc__bad_type(d, fn, "unsigned integers", e);
            ts[i].shape[j] = e->via.u64;
        }
        ts[i].ndim = sh->via.array.size;
        snprintf(fn, sizeof fn, "%s.data", tn);
        if (da->type != MSGPACK_OBJECT_BIN) return b2ipc__bad_type(d, fn, "binary", da);
        void *buf = NULL;
        if (da->via.bin.size) {
            if (!(buf = msgpack_zone_malloc(d->z, da->via.bin.size)))
                return b2ipc__err(d->err, B2IPC_ENOMEM, fn, "out of memory");
            memcpy(buf, da->via.bin.ptr, da->via.bin.size);
        }
        ts[i].data = buf;
        ts[i].data_len = da->via.bin.size;
        if (!(ts[i].name = b2ipc__dup(d, k->via.str.ptr, k->via.str.size)) ||
            !(ts[i].dtype = b2ipc__dup(d, dt->via.str.ptr, dt->via.str.size)))
            return b2ipc__err(d->err, B2IPC_ENOMEM, tn, "out of memory");
        if (strlen(ts[i].name) != k->via.str.size)
            return b2ipc__err(d->err, B2IPC_EUTF8, tn, "%s: the name contains U+0000", tn);
    }
    *AT(root, f->off, const b2ipc_tensor *) = ts;
    *AT(root, f->aux, uint32_t) = n;
    return 0;
}

/* One value of field f, stored into root. */
/* A string or bin value of n bytes for field f (name) within its size
 * limit (b2ipc__size_limit), else B2IPC_ETOO_LARGE. */
static int b2ipc__check_max(b2ipc__dec *d, const b2ipc__field *f, const char *name, size_t n)
{
    const double max = b2ipc__size_limit(f, d->lim);
    if (max >= 0 && (double)n > max)
        return b2ipc__err(d->err, B2IPC_ETOO_LARGE, name, "%s: %zu bytes, at most %.0f", name, n, max);
    return 0;
}

static int b2ipc__field_value(b2ipc__dec *d, const b2ipc__field *f,
                              void *root, const msgpack_object *o,
                              const char *name)
{
    switch (f->kind) {
    case B2IPC__K_U32:
    case B2IPC__K_U64: {
        char range[64];
        b2ipc__fmt_range(range, sizeof range, f);
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return b2ipc__err(d->err, B2IPC_ERANGE, name,
                              "%s: %lld is out of range %s", name,
                              (long long)o->via.i64, range);
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return b2ipc__bad_type(d, name, "an unsigned integer", o);
        uint64_t v = o->via.u64;
        if (f->kind == B2IPC__K_U32) {
            if (v > UINT32_MAX)
                return b2ipc__err(d->err, B2IPC_ERANGE, name,
                                  "%s: %llu is out of range %s", name,
                                  (unsigned long long)v, range);
            *AT(root, f->off, uint32_t) = (uint32_t)v;
        } else {
            *AT(root, f->off, uint64_t) = v;
        }
        if (f->aux != B2IPC__NOAUX) *AT(root, f->aux, bool) = true;
        return 0;
    }
    case B2IPC__K_F64: {
        double v;
        if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
            v = o->via.f64;
        else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            v = (double)o->via.u64;
        else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            v = (double)o->via.i64;
        else
            return b2ipc__bad_type(d, name, "a number", o);
        *AT(root, f->off, double) = v;
        return 0;
    }
    case B2IPC__K_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN)
            return b2ipc__bad_type(d, name, "true or false", o);
        *AT(root, f->off, bool) = o->via.boolean;
        return 0;
    case B2IPC__K_STR:
    case B2IPC__K_TEXT:
    case B2IPC__K_CODE: {
        if (o->type != MSGPACK_OBJECT_STR)
            return b2ipc__bad_type(d, name, "a string", o);
        size_t n = o->via.str.size;
        int rc = b2ipc__check_max(d, f, name, n);
        if (rc < 0) return rc;
        if ((f->flags & B2IPC__F_NONUL) && memchr(o->via.str.ptr, 0, n))
            return b2ipc__err(d->err, B2IPC_EUTF8, name,
                              "%s: contains U+0000", name);
        char *c = b2ipc__dup(d, o->via.str.ptr, n);
        if (!c) return b2ipc__err(d->err, B2IPC_ENOMEM, name, "out of memory");
        if (f->kind == B2IPC__K_CODE) {
            *AT(root, f->off, int) = b2ipc_code_from_name(c);
            *AT(root, f->aux, const char *) = c;
        } else {
            *AT(root, f->off, const char *) = c;
            if (f->kind == B2IPC__K_TEXT) *AT(root, f->aux, size_t) = n;
        }
        return 0;
    }
    case B2IPC__K_BIN: {
        static const uint8_t empty[1];
        if (o->type != MSGPACK_OBJECT_BIN)
            return b2ipc__bad_type(d, name, "binary (bin)", o);
        size_t n = o->via.bin.size;
        int rc = b2ipc__check_max(d, f, name, n);
        if (rc < 0) return rc;
        const uint8_t *b = (const uint8_t *)o->via.bin.ptr;
        *AT(root, f->off, const uint8_t *) = b ? b : empty;
        *AT(root, f->aux, size_t) = n;
        return 0;
    }
    case B2IPC__K_STRARR: {
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return b2ipc__bad_type(d, name, "an array of strings", o);
        uint32_t n = o->via.array.size;
        if ((double)n > f->hi)
            return b2ipc__err(d->err, B2IPC_ETOO_LARGE, name,
                              "%s: %u strings, at most %.0f", name, n, f->hi);
        const char **arr = NULL;
        if (n) {
            arr = msgpack_zone_malloc(d->z, n * sizeof *arr);
            if (!arr) return b2ipc__err(d->err, B2IPC_ENOMEM, name, "out of memory");
        }
        for (uint32_t k = 0; k < n; k++) {
            const msgpack_object *e = &o->via.array.ptr[k];
            char ename[80];
            snprintf(ename, sizeof ename, "%s[%u]", name, k);
            if (e->type != MSGPACK_OBJECT_STR)
                return b2ipc__bad_type(d, ename, "a string", e);
            if ((double)e->via.str.size > f->ehi)
                return b2ipc__err(d->err, B2IPC_ETOO_LARGE, ename,
                                  "%s: %u bytes, at most %.0f", ename,
                                  e->via.str.size, f->ehi);
            if ((f->flags & B2IPC__F_NONUL) && memchr(e->via.str.ptr, 0, e->via.str.size))
                return b2ipc__err(d->err, B2IPC_EUTF8, ename,
                                  "%s: contains U+0000", ename);
            if (!(arr[k] = b2ipc__dup(d, e->via.str.ptr, e->via.str.size)))
                return b2ipc__err(d->err, B2IPC_ENOMEM, ename, "out of memory");
        }
        *AT(root, f->off, const char *const *) = arr;
        *AT(root, f->aux, uint32_t) = n;
        return 0;
    }
    case B2IPC__K_MAP: {
        if (o->type != MSGPACK_OBJECT_MAP)
            return b2ipc__bad_type(d, name, "a map", o);
        int rc = b2ipc__check_map(d, &o->via.map, f->sub->prefix,
                                  f->sub->strict ? B2IPC__REQUEST_MAX_KEYS
                                                 : B2IPC__REPLY_MAX_KEYS);
        if (rc < 0) return rc;
        return b2ipc__walk(d, f->sub, root, &o->via.map, NULL);
    }
    case B2IPC__K_TENSORS:
        return b2ipc__tensors_value(d, f, root, o, name);
    case B2IPC__K_SEQ_TEXTS:
    case B2IPC__K_SEQ_IDS:
    case B2IPC__K_SEQ_FINISH:
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return b2ipc__bad_type(d, name, "an array", o);
        d->seq[f->kind - B2IPC__K_SEQ_TEXTS] = o;
        return 0;
    }
    return b2ipc__err(d->err, B2IPC_EINVAL, name, "%s: bad schema", name);
}

/* Walks map m against schema s: every key (except "id" and skip_key) must
 * be a field (strict schemas) or is ignored; then required fields. */
static int b2ipc__walk(b2ipc__dec *d, const b2ipc__schema *s, void *root,
                       const msgpack_object_map *m, const char *skip_key)
{
    uint64_t seen = 0;  /* schemas have fewer than 64 fields */
    char name[64], q[48];
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        if (skip_key && (b2ipc__key_is(k, "id") || b2ipc__key_is(k, skip_key)))
            continue;
        size_t fi;
        for (fi = 0; fi < s->n; fi++)
            if (b2ipc__key_is(k, s->fields[fi].name)) break;
        if (fi == s->n) {
            if (!s->strict) continue;
            b2ipc__quote(q, sizeof q, k->via.str.ptr, k->via.str.size);
            snprintf(name, sizeof name, "%s%s", s->prefix, q);
            return b2ipc__err(d->err, B2IPC_EUNKNOWN_FIELD, name,
                              "unknown field \"%s\"", name);
        }
        seen |= (uint64_t)1 << fi;
        snprintf(name, sizeof name, "%s%s", s->prefix, s->fields[fi].name);
        int rc = b2ipc__field_value(d, &s->fields[fi], root, &m->ptr[i].val, name);
        if (rc < 0) return rc;
    }
    for (size_t fi = 0; fi < s->n; fi++)
        if ((s->fields[fi].flags & B2IPC__F_REQ) && !(seen & ((uint64_t)1 << fi))) {
            snprintf(name, sizeof name, "%s%s", s->prefix, s->fields[fi].name);
            return b2ipc__err(d->err, B2IPC_EMISSING, name,
                              "missing field \"%s\"", name);
        }
    return 0;
}

/* done: the parallel arrays texts / ids / finish -> done.seqs. */
static int b2ipc__build_seqs(b2ipc__dec *d, b2ipc_reply *rp)
{
    const msgpack_object_array *t = &d->seq[0]->via.array,
                               *ids = &d->seq[1]->via.array,
                               *fin = &d->seq[2]->via.array;
    char name[32];
    if (t->size > B2IPC_MAX_SEQS)
        return b2ipc__err(d->err, B2IPC_ETOO_LARGE, "texts",
                          "texts: %u sequences, at most %u", t->size, B2IPC_MAX_SEQS);
    if (ids->size != t->size || fin->size != t->size)
        return b2ipc__err(d->err, B2IPC_ERANGE, "ids",
                          "texts, ids and finish have different lengths (%u, %u, %u)",
                          t->size, ids->size, fin->size);
    b2ipc_seq *seqs = NULL;
    if (t->size) {
        seqs = msgpack_zone_malloc(d->z, t->size * sizeof *seqs);
        if (!seqs) return b2ipc__err(d->err, B2IPC_ENOMEM, "texts", "out of memory");
        memset(seqs, 0, t->size * sizeof *seqs);
    }
    for (uint32_t i = 0; i < t->size; i++) {
        const msgpack_object *o = &t->ptr[i];
        snprintf(name, sizeof name, "texts[%u]", i);
        if (o->type != MSGPACK_OBJECT_STR)
            return b2ipc__bad_type(d, name, "a string", o);
        if (!(seqs[i].text = b2ipc__dup(d, o->via.str.ptr, o->via.str.size)))
            return b2ipc__err(d->err, B2IPC_ENOMEM, name, "out of memory");
        seqs[i].text_len = o->via.str.size;

        o = &ids->ptr[i];
        snprintf(name, sizeof name, "ids[%u]", i);
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return b2ipc__bad_type(d, name, "an array of token ids", o);
        uint32_t n = o->via.array.size;
        if (n > B2IPC_MAX_IDS_PER_SEQ)
            return b2ipc__err(d->err, B2IPC_ETOO_LARGE, name,
                              "%s: %u ids, at most %u", name, n, B2IPC_MAX_IDS_PER_SEQ);
        uint32_t *v = NULL;
        if (n && !(v = msgpack_zone_malloc(d->z, n * sizeof *v)))
            return b2ipc__err(d->err, B2IPC_ENOMEM, name, "out of memory");
        for (uint32_t k = 0; k < n; k++) {
            const msgpack_object *e = &o->via.array.ptr[k];
            if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
                e->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return b2ipc__bad_type(d, name, "token ids (unsigned integers)", e);
            if (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER || e->via.u64 > UINT32_MAX)
                return b2ipc__err(d->err, B2IPC_ERANGE, name,
                                  "%s: element %u is not a token id (0 to 4294967295)",
                                  name, k);
            v[k] = (uint32_t)e->via.u64;
        }
        seqs[i].ids = v;
        seqs[i].n_ids = n;

        o = &fin->ptr[i];
        snprintf(name, sizeof name, "finish[%u]", i);
        if (o->type != MSGPACK_OBJECT_STR)
            return b2ipc__bad_type(d, name, "a string", o);
        int fr = -1;
        for (int c = B2IPC_FINISH_LENGTH; c <= B2IPC_FINISH_CANCELED; c++) {
            const char *fn = b2ipc_finish_name((b2ipc_finish)c);
            if (strlen(fn) == o->via.str.size &&
                memcmp(fn, o->via.str.ptr, o->via.str.size) == 0)
                fr = c;
        }
        if (fr < 0) {
            char q[48];
            b2ipc__quote(q, sizeof q, o->via.str.ptr, o->via.str.size);
            return b2ipc__err(d->err, B2IPC_ERANGE, name,
                              "%s: \"%s\" is no finish reason", name, q);
        }
        seqs[i].finish = (b2ipc_finish)fr;
    }
    rp->done.seqs = seqs;
    rp->done.n_seqs = t->size;
    return 0;
}

/* Shared front half: scan, unpack, map checks.  On success *top is the
 * top-level map inside *up (which the caller destroys). */
static int b2ipc__unpack(const void *payload, size_t len, msgpack_unpacked *up,
                         const msgpack_object_map **top, b2ipc_error *err)
{
    int rc = b2ipc__scan(payload, len, err);
    if (rc < 0) return rc;
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(up, payload, len, &off);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR)
        return b2ipc__err(err, B2IPC_ENOMEM, NULL, "out of memory");
    if (r != MSGPACK_UNPACK_SUCCESS)
        return b2ipc__err(err, B2IPC_EBAD_MSGPACK, NULL, "invalid MessagePack");
    if (off != len)
        return b2ipc__err(err, B2IPC_ETRAILING, NULL,
                          "%zu trailing bytes after the message", len - off);
    if (up->data.type != MSGPACK_OBJECT_MAP)
        return b2ipc__err(err, B2IPC_ENOT_MAP, NULL,
                          "message is %s, not a map", b2ipc__type_word(&up->data));
    *top = &up->data.via.map;
    return 0;
}

/* The id, when there is exactly one "id" key and it holds a uint. */
static bool b2ipc__peek_id(const msgpack_object_map *m, uint64_t *id)
{
    const msgpack_object *v = NULL;
    for (uint32_t i = 0; i < m->size; i++)
        if (b2ipc__key_is(&m->ptr[i].key, "id")) {
            if (v) return false;
            v = &m->ptr[i].val;
        }
    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *id = v->via.u64;
    return true;
}

static const msgpack_object *b2ipc__find(const msgpack_object_map *m,
                                         const char *key)
{
    for (uint32_t i = 0; i < m->size; i++)
        if (b2ipc__key_is(&m->ptr[i].key, key)) return &m->ptr[i].val;
    return NULL;
}

/* "id" after the map checks: required (requests, most replies) and a uint. */
static int b2ipc__check_id(const msgpack_object_map *m, bool required,
                           b2ipc_error *err)
{
    const msgpack_object *v = b2ipc__find(m, "id");
    if (!v)
        return required ? b2ipc__err(err, B2IPC_EMISSING, "id", "missing field \"id\"")
                        : 0;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return b2ipc__err(err, B2IPC_ERANGE, "id", "id: %lld is negative",
                          (long long)v->via.i64);
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return b2ipc__err(err, B2IPC_ETYPE, "id",
                          "id: expected an unsigned integer, got %s",
                          b2ipc__type_word(v));
    return 0;
}

/* The discriminator ("op" / "type"): index into names[] or an error. */
static int b2ipc__discriminator(const msgpack_object_map *m, const char *key,
                                const char *(*name_of)(int), int first,
                                int last, int unknown_code, int *out,
                                b2ipc_error *err)
{
    const msgpack_object *v = b2ipc__find(m, key);
    if (!v)
        return b2ipc__err(err, B2IPC_EMISSING, key, "missing field \"%s\"", key);
    if (v->type != MSGPACK_OBJECT_STR)
        return b2ipc__err(err, B2IPC_ETYPE, key, "%s: expected a string, got %s",
                          key, b2ipc__type_word(v));
    for (int i = first; i <= last; i++) {
        const char *nm = name_of(i);
        if (strlen(nm) == v->via.str.size &&
            memcmp(nm, v->via.str.ptr, v->via.str.size) == 0) {
            *out = i;
            return 0;
        }
    }
    char q[48];
    b2ipc__quote(q, sizeof q, v->via.str.ptr, v->via.str.size);
    return b2ipc__err(err, unknown_code, key, "%s: unknown %s \"%s\"", key,
                      strcmp(key, "op") == 0 ? "operation" : "reply type", q);
}

static const char *b2ipc__op_name_i(int i) { return b2ipc_op_name((b2ipc_op)i); }
static const char *b2ipc__type_name_i(int i)
{
    return b2ipc_reply_type_name((b2ipc_reply_type)i);
}

/* The end of a decode, rc its result: the unpacked message goes; when rc
 * >= 0 the arena becomes the caller's (*arena) and 0 is returned, else the
 * arena is freed and rc returned. */
static int b2ipc__decode_end(b2ipc__dec *d, msgpack_unpacked *up, int rc, void **arena)
{
    msgpack_unpacked_destroy(up);
    if (rc >= 0) {
        *arena = d->z;
        return 0;
    }
    if (d->z) msgpack_zone_free(d->z);
    return rc;
}

int b2ipc_decode_request(const void *payload, size_t len,
                         const b2ipc_limits *lim, b2ipc_request *rq,
                         b2ipc_error *err)
{
    msgpack_unpacked up;
    const msgpack_object_map *m = NULL;
    b2ipc__dec d = { .lim = lim, .err = err };
    int op = B2IPC_OP_NONE, rc;
    uint64_t id = 0;
    bool has_id = false, takes_fd = false;

    if (!rq || (len && !payload))
        return b2ipc__err(err, B2IPC_EINVAL, NULL, "NULL argument");
    msgpack_unpacked_init(&up);
    if ((rc = b2ipc__unpack(payload, len, &up, &m, err)) < 0) goto fail;

    /* What an error reply and the descriptor FIFO need, even if it fails. */
    has_id = b2ipc__peek_id(m, &id);
    for (uint32_t i = 0; i < m->size; i++)
        if (b2ipc__key_is(&m->ptr[i].key, "image_fd") &&
            m->ptr[i].val.type == MSGPACK_OBJECT_BOOLEAN && m->ptr[i].val.via.boolean)
            takes_fd = true;

    if ((rc = b2ipc__check_map(&d, m, "", B2IPC__REQUEST_MAX_KEYS)) < 0 ||
        (rc = b2ipc__check_id(m, true, err)) < 0 ||
        (rc = b2ipc__discriminator(m, "op", b2ipc__op_name_i, B2IPC_OP_HELLO,
                                   B2IPC_OP_FEATURES, B2IPC_EUNKNOWN_OP, &op, err)) < 0)
        goto fail;

    b2ipc_request_init(rq, (b2ipc_op)op);
    rq->id = id;
    rq->has_id = has_id;
    rq->takes_fd = takes_fd;
    if (!(d.z = msgpack_zone_new(B2IPC__ARENA_CHUNK))) {
        rc = b2ipc__err(err, B2IPC_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    if ((rc = b2ipc__walk(&d, b2ipc__request_schema(rq->op), rq, m, "op")) >= 0)
        rc = b2ipc_request_validate(rq, lim, err);
fail:
    if ((rc = b2ipc__decode_end(&d, &up, rc, &rq->arena_)) == 0) return 0;
    memset(rq, 0, sizeof *rq);
    rq->id = id;
    rq->has_id = has_id;
    rq->takes_fd = takes_fd;
    rq->op = (b2ipc_op)op;
    return rc;
}

int b2ipc_decode_reply(const void *payload, size_t len, b2ipc_reply *rp,
                       b2ipc_error *err)
{
    msgpack_unpacked up;
    const msgpack_object_map *m = NULL;
    b2ipc__dec d = { .err = err };
    int type = B2IPC_REPLY_NONE, rc;
    uint64_t id = 0;
    bool has_id = false;

    if (!rp || (len && !payload))
        return b2ipc__err(err, B2IPC_EINVAL, NULL, "NULL argument");
    msgpack_unpacked_init(&up);
    if ((rc = b2ipc__unpack(payload, len, &up, &m, err)) < 0) goto fail;
    has_id = b2ipc__peek_id(m, &id);
    if ((rc = b2ipc__check_map(&d, m, "", B2IPC__REPLY_MAX_KEYS)) < 0 ||
        (rc = b2ipc__discriminator(m, "type", b2ipc__type_name_i,
                                   B2IPC_REPLY_HELLO, B2IPC_REPLY_FEATURES,
                                   B2IPC_EUNKNOWN_OP, &type, err)) < 0 ||
        (rc = b2ipc__check_id(m, type != B2IPC_REPLY_ERROR, err)) < 0)
        goto fail;

    b2ipc_reply_init(rp, (b2ipc_reply_type)type);
    rp->id = id;
    rp->has_id = has_id;
    if (!(d.z = msgpack_zone_new(B2IPC__ARENA_CHUNK))) {
        rc = b2ipc__err(err, B2IPC_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    if ((rc = b2ipc__walk(&d, b2ipc__reply_schema(rp->type), rp, m, "type")) >= 0 &&
        (type != B2IPC_REPLY_DONE || (rc = b2ipc__build_seqs(&d, rp)) >= 0))
        rc = b2ipc_reply_validate(rp, err);
fail:
    if ((rc = b2ipc__decode_end(&d, &up, rc, &rp->arena_)) == 0) return 0;
    memset(rp, 0, sizeof *rp);
    rp->id = id;
    rp->has_id = has_id;
    rp->type = (b2ipc_reply_type)type;
    return rc;
}
