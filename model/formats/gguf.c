/*
 * gguf.c - the GGUF v3 reader and writer (layout in gguf.h, keys in
 * docs/gguf.md).
 *
 * Reading: b2__gguf_open maps the file read-only and MAP_SHARED (the page
 * cache is shared with every process mapping it) and hands the bytes to
 * b2__gguf_parse, which walks a bounds-checked cursor over the header:
 * metadata entries, then tensor infos, then places the data section at the
 * next multiple of general.alignment.  Nothing is copied except the tables
 * of entries; strings and tensor data are views into the buffer.
 *
 * Writing: entries are serialised into a byte buffer as they are declared,
 * tensor infos are collected with their offsets, and the header, padding
 * and data are streamed to a FILE (the converter writes one tensor at a
 * time, so a 15 GB model never sits in memory).
 */
#include "gguf.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct b2_gguf {
    char *name;
    void *map;               /* b2__gguf_open's mapping, or NULL */
    size_t map_size;
    uint32_t alignment;
    int n_kv, n_tensors;
    b2_gguf_kv *kv;
    b2_gguf_tensor *t;
    uint32_t *kv_hash, *t_hash; /* open addressing: index + 1, 0 empty */
    uint32_t kv_mask, t_mask;
};

/* ------------------------------------------------------------- helpers */

static uint64_t hash_str(const char *p, uint64_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static int str_eq(b2_gguf_str a, const char *b, size_t blen)
{
    return a.len == blen && memcmp(a.p, b, blen) == 0;
}

static size_t vtype_size(b2_gguf_vtype t)
{
    switch (t) {
    case B2_GGUF_U8: case B2_GGUF_I8: case B2_GGUF_BOOL: return 1;
    case B2_GGUF_U16: case B2_GGUF_I16: return 2;
    case B2_GGUF_U32: case B2_GGUF_I32: case B2_GGUF_F32: return 4;
    case B2_GGUF_U64: case B2_GGUF_I64: case B2_GGUF_F64: return 8;
    default: return 0;
    }
}

static const char *vtype_name(b2_gguf_vtype t)
{
    static const char *const names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                        "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < B2_GGUF_VTYPE_COUNT ? names[t] : "?";
}

const char *b2__gguf_type_name(uint32_t ggml_type)
{
    if (ggml_type == B2_GGUF_TYPE_I8) return "i8";
    if (ggml_type == B2_GGUF_TYPE_I32) return "i32";
    return b2__wt_name((b2_wtype)ggml_type);
}

size_t b2__gguf_type_nbytes(uint32_t ggml_type, int n_dims, const int64_t *ne)
{
    if (n_dims < 1 || n_dims > B2_GGUF_MAX_DIMS || ne[0] <= 0 || ne[0] > INT32_MAX) return 0;
    const int ints = ggml_type == B2_GGUF_TYPE_I8 || ggml_type == B2_GGUF_TYPE_I32;
    if (!ints && !b2__wt_ok((b2_wtype)ggml_type, (int)ne[0])) return 0;
    uint64_t rows = 1;
    for (int i = 1; i < n_dims; i++) {
        if (ne[i] <= 0 || (uint64_t)ne[i] > (UINT64_MAX >> 2) / rows) return 0;
        rows *= (uint64_t)ne[i];
    }
    const uint64_t rb = ggml_type == B2_GGUF_TYPE_I8    ? (uint64_t)ne[0]
                        : ggml_type == B2_GGUF_TYPE_I32 ? 4 * (uint64_t)ne[0]
                                                        : b2__wt_row_bytes((b2_wtype)ggml_type, (int)ne[0]);
    if (rows > (uint64_t)(SIZE_MAX >> 1) / rb) return 0;
    return (size_t)(rows * rb);
}

size_t b2__gguf_nbytes(b2_wtype t, int n_dims, const int64_t *ne)
{
    return b2__gguf_type_nbytes((uint32_t)t, n_dims, ne);
}

/* ------------------------------------------------------------- reading */

typedef struct cursor {
    const unsigned char *p;
    size_t size, off;
    const char *name;
    blip2_error *err;
} cursor;

static int need(cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->off)
        return b2__err(c->err, BLIP2_EFORMAT, "%s: truncated GGUF header (%s at byte %zu needs %llu bytes, "
                       "file has %zu)", c->name, what, c->off, (unsigned long long)n, c->size);
    return 0;
}

static uint64_t rd(cursor *c, int n) /* n <= 8 bytes LE; need() checked */
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)c->p[c->off + i] << (8 * i);
    c->off += (size_t)n;
    return v;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    int rc = need(c, 4, what);
    if (rc < 0) return rc;
    *v = (uint32_t)rd(c, 4);
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    int rc = need(c, 8, what);
    if (rc < 0) return rc;
    *v = rd(c, 8);
    return 0;
}

static int rd_str(cursor *c, b2_gguf_str *s, uint64_t max, const char *what)
{
    uint64_t n;
    int rc = rd_u64(c, &n, what);
    if (rc < 0) return rc;
    if (n > max) return b2__err(c->err, BLIP2_EFORMAT, "%s: %s of %llu bytes (limit %llu)", c->name, what,
                                (unsigned long long)n, (unsigned long long)max);
    if ((rc = need(c, n, what)) < 0) return rc;
    s->p = (const char *)c->p + c->off;
    s->len = n;
    c->off += (size_t)n;
    return 0;
}

static int rd_value(cursor *c, b2_gguf_kv *kv, b2_gguf_vtype t)
{
    const int ks = kv->key.len > 200 ? 200 : (int)kv->key.len;
    int rc;
    size_t sz = vtype_size(t);
    if (sz) {
        if ((rc = need(c, sz, "value")) < 0) return rc;
        uint64_t raw = rd(c, (int)sz);
        switch (t) {
        case B2_GGUF_I8: kv->v.i = (int8_t)raw; break;
        case B2_GGUF_I16: kv->v.i = (int16_t)raw; break;
        case B2_GGUF_I32: kv->v.i = (int32_t)raw; break;
        case B2_GGUF_I64: kv->v.i = (int64_t)raw; break;
        case B2_GGUF_F32: { uint32_t u = (uint32_t)raw; float f; memcpy(&f, &u, 4); kv->v.f = f; break; }
        case B2_GGUF_F64: memcpy(&kv->v.f, &raw, 8); break;
        case B2_GGUF_BOOL:
            if (raw > 1) return b2__err(c->err, BLIP2_EFORMAT, "%s: key '%.*s': bool value %llu", c->name, ks,
                                        kv->key.p, (unsigned long long)raw);
            kv->v.u = raw;
            break;
        default: kv->v.u = raw; break;
        }
        return 0;
    }
    if (t == B2_GGUF_STRING) return rd_str(c, &kv->str, UINT64_MAX, "string value");
    if (t != B2_GGUF_ARRAY)
        return b2__err(c->err, BLIP2_EFORMAT, "%s: key '%.*s': unknown value type %u", c->name, ks, kv->key.p,
                       (unsigned)t);
    uint32_t at;
    uint64_t n;
    if ((rc = rd_u32(c, &at, "array type")) < 0 || (rc = rd_u64(c, &n, "array length")) < 0) return rc;
    if (at == B2_GGUF_ARRAY || at >= B2_GGUF_VTYPE_COUNT)
        return b2__err(c->err, BLIP2_EFORMAT, "%s: key '%.*s': array of %s elements is not supported", c->name,
                       ks, kv->key.p, at == B2_GGUF_ARRAY ? "array" : "unknown");
    kv->arr_type = (b2_gguf_vtype)at;
    kv->arr_n = n;
    if (at == B2_GGUF_STRING) {
        if (n > (c->size - c->off) / 8)
            return b2__err(c->err, BLIP2_EFORMAT, "%s: key '%.*s': %llu strings cannot fit in the file", c->name,
                           ks, kv->key.p, (unsigned long long)n);
        kv->arr_str = malloc(sizeof *kv->arr_str * (size_t)(n ? n : 1));
        if (!kv->arr_str) return b2__err(c->err, BLIP2_ENOMEM, "%s: out of memory", c->name);
        for (uint64_t i = 0; i < n; i++)
            if ((rc = rd_str(c, &kv->arr_str[i], UINT64_MAX, "array string")) < 0) return rc;
        return 0;
    }
    sz = vtype_size(kv->arr_type);
    if (n > (c->size - c->off) / sz)
        return b2__err(c->err, BLIP2_EFORMAT, "%s: key '%.*s': array of %llu elements runs past the end of the "
                       "file", c->name, ks, kv->key.p, (unsigned long long)n);
    kv->arr = c->p + c->off;
    c->off += (size_t)(n * sz);
    if (at == B2_GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
            if (((const unsigned char *)kv->arr)[i] > 1)
                return b2__err(c->err, BLIP2_EFORMAT, "%s: key '%.*s': bool element %llu is not 0 or 1", c->name,
                               ks, kv->key.p, (unsigned long long)i);
    return 0;
}

/* Inserts entry i into a table; 1 if the name is already there. */
static int hash_insert(uint32_t *tab, uint32_t mask, const b2_gguf_str *names, size_t stride, uint32_t i)
{
    const b2_gguf_str *s = (const b2_gguf_str *)((const char *)names + stride * i);
    uint64_t h = hash_str(s->p, s->len);
    for (uint32_t k = (uint32_t)h & mask;; k = (k + 1) & mask) {
        if (!tab[k]) { tab[k] = i + 1; return 0; }
        const b2_gguf_str *o = (const b2_gguf_str *)((const char *)names + stride * (tab[k] - 1));
        if (o->len == s->len && !memcmp(o->p, s->p, s->len)) return 1;
    }
}

static int hash_find(const uint32_t *tab, uint32_t mask, const void *names, size_t stride, const char *key)
{
    if (!tab) return -1;
    const size_t n = strlen(key);
    for (uint32_t k = (uint32_t)hash_str(key, n) & mask; tab[k]; k = (k + 1) & mask) {
        const b2_gguf_str *o = (const b2_gguf_str *)((const char *)names + stride * (tab[k] - 1));
        if (str_eq(*o, key, n)) return (int)tab[k] - 1;
    }
    return -1;
}

static uint32_t *hash_new(uint32_t n, uint32_t *mask)
{
    uint32_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    *mask = cap - 1;
    return calloc(cap, sizeof(uint32_t));
}

static int has_nul(b2_gguf_str s) { return memchr(s.p, 0, (size_t)s.len) != NULL; }

int b2__gguf_parse(b2_gguf **out, const void *data, size_t size, const char *name, blip2_error *err)
{
    *out = NULL;
    if (!name) name = "(gguf)";
    cursor c = {data, size, 0, name, err};
    uint32_t magic, version;
    uint64_t nt, nkv;
    int rc;
    if (size < 4 || (magic = (uint32_t)rd(&c, 4)) != B2_GGUF_MAGIC)
        return b2__err(err, BLIP2_EFORMAT, "%s: not a GGUF file (bad magic)", name);
    if ((rc = rd_u32(&c, &version, "version")) < 0) return rc;
    if (version != B2_GGUF_VERSION)
        return b2__err(err, BLIP2_EFORMAT, "%s: GGUF version %u, only version 3 is supported", name, version);
    if ((rc = rd_u64(&c, &nt, "tensor count")) < 0 || (rc = rd_u64(&c, &nkv, "metadata count")) < 0) return rc;
    if (nt > B2_GGUF_MAX_TENSORS || nt > (size - c.off) / 32)
        return b2__err(err, BLIP2_EFORMAT, "%s: %llu tensors is more than the file can hold", name,
                       (unsigned long long)nt);
    if (nkv > B2_GGUF_MAX_KV || nkv > (size - c.off) / 13)
        return b2__err(err, BLIP2_EFORMAT, "%s: %llu metadata entries is more than the file can hold", name,
                       (unsigned long long)nkv);
    b2_gguf *g = calloc(1, sizeof *g);
    if (!g) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    g->name = strdup(name);
    g->kv = calloc((size_t)nkv + 1, sizeof *g->kv);
    g->t = calloc((size_t)nt + 1, sizeof *g->t);
    g->kv_hash = hash_new((uint32_t)nkv, &g->kv_mask);
    g->t_hash = hash_new((uint32_t)nt, &g->t_mask);
    if (!g->name || !g->kv || !g->t || !g->kv_hash || !g->t_hash) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        goto fail;
    }
    g->alignment = 32;
    for (uint64_t i = 0; i < nkv; i++) {
        b2_gguf_kv *kv = &g->kv[i];
        uint32_t t;
        if ((rc = rd_str(&c, &kv->key, B2_GGUF_MAX_KEY, "metadata key")) < 0) goto fail;
        g->n_kv = (int)i + 1; /* owns arr_str from here on */
        const int ks = kv->key.len > 200 ? 200 : (int)kv->key.len;
        if (kv->key.len == 0 || has_nul(kv->key)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: metadata key %llu is empty or holds a NUL byte", name,
                         (unsigned long long)i);
            goto fail;
        }
        if (hash_insert(g->kv_hash, g->kv_mask, &g->kv[0].key, sizeof *g->kv, (uint32_t)i)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: duplicate metadata key '%.*s'", name, ks, kv->key.p);
            goto fail;
        }
        if ((rc = rd_u32(&c, &t, "value type")) < 0) goto fail;
        kv->type = (b2_gguf_vtype)t;
        if (t >= B2_GGUF_VTYPE_COUNT) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: key '%.*s': unknown value type %u", name, ks, kv->key.p, t);
            goto fail;
        }
        if ((rc = rd_value(&c, kv, kv->type)) < 0) goto fail;
        if (str_eq(kv->key, "general.alignment", 17)) {
            if (kv->type != B2_GGUF_U32 || kv->v.u == 0 || kv->v.u > 65536 || (kv->v.u & (kv->v.u - 1))) {
                rc = b2__err(err, BLIP2_EFORMAT, "%s: general.alignment must be a u32 power of two up to 65536",
                             name);
                goto fail;
            }
            g->alignment = (uint32_t)kv->v.u;
        }
    }
    for (uint64_t i = 0; i < nt; i++) {
        b2_gguf_tensor *T = &g->t[i];
        uint32_t nd, type;
        if ((rc = rd_str(&c, &T->name, B2_GGUF_MAX_NAME, "tensor name")) < 0) goto fail;
        g->n_tensors = (int)i + 1;
        const int ns = (int)T->name.len;
        if (T->name.len == 0 || has_nul(T->name)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor %llu has an empty name or one with a NUL byte", name,
                         (unsigned long long)i);
            goto fail;
        }
        if (hash_insert(g->t_hash, g->t_mask, &g->t[0].name, sizeof *g->t, (uint32_t)i)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: duplicate tensor '%.*s'", name, ns, T->name.p);
            goto fail;
        }
        if ((rc = rd_u32(&c, &nd, "tensor dims")) < 0) goto fail;
        if (nd < 1 || nd > B2_GGUF_MAX_DIMS) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%.*s': %u dimensions (1 to 4 allowed)", name, ns,
                         T->name.p, nd);
            goto fail;
        }
        T->n_dims = (int)nd;
        for (int d = 0; d < B2_GGUF_MAX_DIMS; d++) T->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t v;
            if ((rc = rd_u64(&c, &v, "tensor dim")) < 0) goto fail;
            if (v == 0 || v > INT64_MAX) {
                rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%.*s': dimension %u is %llu", name, ns, T->name.p,
                             d, (unsigned long long)v);
                goto fail;
            }
            T->ne[d] = (int64_t)v;
        }
        if ((rc = rd_u32(&c, &type, "tensor type")) < 0 || (rc = rd_u64(&c, &T->offset, "tensor offset")) < 0)
            goto fail;
        if (!b2__gguf_type_name(type)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%.*s': unsupported ggml type %u (f32, f16, bf16, "
                         "q8_0, q4_0, i8 and i32 are)", name, ns, T->name.p, type);
            goto fail;
        }
        T->type = (b2_wtype)type;
        T->nbytes = b2__gguf_type_nbytes(type, T->n_dims, T->ne);
        if (!T->nbytes) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%.*s': shape invalid for %s (q8_0 and q4_0 rows "
                         "must be a multiple of 32; size limit)", name, ns, T->name.p, b2__gguf_type_name(type));
            goto fail;
        }
    }
    /* the data section starts at the next multiple of the alignment */
    const size_t al = g->alignment;
    size_t start = c.off + (al - c.off % al) % al;
    if (start > size) start = size;
    for (int i = 0; i < g->n_tensors; i++) {
        b2_gguf_tensor *T = &g->t[i];
        const int ns = (int)T->name.len;
        if (T->offset % al) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%.*s': offset %llu is not a multiple of the alignment "
                         "%zu", name, ns, T->name.p, (unsigned long long)T->offset, al);
            goto fail;
        }
        if (T->offset > size - start || T->nbytes > size - start - T->offset) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%.*s' (%zu bytes at data offset %llu) lies beyond the "
                         "end of the file (%zu bytes): truncated?", name, ns, T->name.p, T->nbytes,
                         (unsigned long long)T->offset, size);
            goto fail;
        }
        T->data = (const unsigned char *)data + start + T->offset;
    }
    *out = g;
    return 0;
fail:
    b2__gguf_close(g);
    return rc;
}

int b2__gguf_open(b2_gguf **out, const char *path, blip2_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return b2__err(err, BLIP2_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return b2__err(err, BLIP2_EIO, "%s: not a regular file", path);
    }
    if (st.st_size < 24) {
        close(fd);
        return b2__err(err, BLIP2_EFORMAT, "%s: %lld bytes is too short for a GGUF file", path,
                       (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return b2__err(err, BLIP2_EIO, "%s: cannot map: %s", path, strerror(errno));
    int rc = b2__gguf_parse(out, map, (size_t)st.st_size, path, err);
    if (rc < 0) {
        munmap(map, (size_t)st.st_size);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_size = (size_t)st.st_size;
    return 0;
}

void b2__gguf_close(b2_gguf *g)
{
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) free(g->kv[i].arr_str);
    if (g->map) munmap(g->map, g->map_size);
    free(g->kv);
    free(g->t);
    free(g->kv_hash);
    free(g->t_hash);
    free(g->name);
    free(g);
}

const char *b2__gguf_name(const b2_gguf *g) { return g->name; }
uint32_t b2__gguf_alignment(const b2_gguf *g) { return g->alignment; }
void *b2__gguf_map(const b2_gguf *g, size_t *size)
{
    if (size) *size = g->map_size;
    return g->map;
}
int b2__gguf_n_kv(const b2_gguf *g) { return g->n_kv; }
const b2_gguf_kv *b2__gguf_kv_at(const b2_gguf *g, int i) { return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL; }
int b2__gguf_n_tensors(const b2_gguf *g) { return g->n_tensors; }
const b2_gguf_tensor *b2__gguf_tensor_at(const b2_gguf *g, int i)
{
    return i >= 0 && i < g->n_tensors ? &g->t[i] : NULL;
}

const b2_gguf_kv *b2__gguf_find_kv(const b2_gguf *g, const char *key)
{
    int i = hash_find(g->kv_hash, g->kv_mask, &g->kv[0].key, sizeof *g->kv, key);
    return i < 0 ? NULL : &g->kv[i];
}

const b2_gguf_tensor *b2__gguf_find_tensor(const b2_gguf *g, const char *name)
{
    int i = hash_find(g->t_hash, g->t_mask, &g->t[0].name, sizeof *g->t, name);
    return i < 0 ? NULL : &g->t[i];
}

static const b2_gguf_kv *get(const b2_gguf *g, const char *key, blip2_error *err)
{
    const b2_gguf_kv *kv = b2__gguf_find_kv(g, key);
    if (!kv) b2__err(err, BLIP2_EFORMAT, "%s: missing metadata key '%s'", g->name, key);
    return kv;
}

static int wrong_type(const b2_gguf *g, const b2_gguf_kv *kv, const char *key, const char *want, blip2_error *err)
{
    return b2__err(err, BLIP2_EFORMAT, "%s: metadata key '%s' is a %s, expected %s", g->name, key,
                   vtype_name(kv->type), want);
}

int b2__gguf_get_int(const b2_gguf *g, const char *key, int64_t *v, blip2_error *err)
{
    const b2_gguf_kv *kv = get(g, key, err);
    if (!kv) return BLIP2_EFORMAT;
    switch (kv->type) {
    case B2_GGUF_U8: case B2_GGUF_U16: case B2_GGUF_U32: case B2_GGUF_U64:
        if (kv->v.u > INT64_MAX) return b2__err(err, BLIP2_EFORMAT, "%s: '%s' out of range", g->name, key);
        *v = (int64_t)kv->v.u;
        return 0;
    case B2_GGUF_I8: case B2_GGUF_I16: case B2_GGUF_I32: case B2_GGUF_I64:
        *v = kv->v.i;
        return 0;
    default: return wrong_type(g, kv, key, "an integer", err);
    }
}

int b2__gguf_get_f32(const b2_gguf *g, const char *key, float *v, blip2_error *err)
{
    const b2_gguf_kv *kv = get(g, key, err);
    if (!kv) return BLIP2_EFORMAT;
    if (kv->type != B2_GGUF_F32 && kv->type != B2_GGUF_F64) return wrong_type(g, kv, key, "a float", err);
    *v = (float)kv->v.f;
    return 0;
}

int b2__gguf_get_bool(const b2_gguf *g, const char *key, int *v, blip2_error *err)
{
    const b2_gguf_kv *kv = get(g, key, err);
    if (!kv) return BLIP2_EFORMAT;
    if (kv->type != B2_GGUF_BOOL) return wrong_type(g, kv, key, "a bool", err);
    *v = (int)kv->v.u;
    return 0;
}

int b2__gguf_get_str(const b2_gguf *g, const char *key, b2_gguf_str *v, blip2_error *err)
{
    const b2_gguf_kv *kv = get(g, key, err);
    if (!kv) return BLIP2_EFORMAT;
    if (kv->type != B2_GGUF_STRING) return wrong_type(g, kv, key, "a string", err);
    *v = kv->str;
    return 0;
}

double b2__gguf_arr_num(const b2_gguf_kv *kv, uint64_t i)
{
    const unsigned char *p = (const unsigned char *)kv->arr + i * vtype_size(kv->arr_type);
    uint64_t raw = 0;
    const size_t sz = vtype_size(kv->arr_type);
    for (size_t b = 0; b < sz; b++) raw |= (uint64_t)p[b] << (8 * b);
    switch (kv->arr_type) {
    case B2_GGUF_I8: return (int8_t)raw;
    case B2_GGUF_I16: return (int16_t)raw;
    case B2_GGUF_I32: return (int32_t)raw;
    case B2_GGUF_I64: return (double)(int64_t)raw;
    case B2_GGUF_F32: { uint32_t u = (uint32_t)raw; float f; memcpy(&f, &u, 4); return f; }
    case B2_GGUF_F64: { double d; memcpy(&d, &raw, 8); return d; }
    default: return (double)raw;
    }
}

/* ------------------------------------------------------------- writing */

typedef struct wtensor {
    char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[B2_GGUF_MAX_DIMS];
    uint64_t offset;
    size_t nbytes;
} wtensor;

struct b2_gguf_w {
    unsigned char *kv;       /* serialised entries */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    wtensor *t;
    int n_t, cap_t;
    uint64_t data_len;       /* aligned end of the data section */
    uint64_t header_len;     /* computed by write_header */
    int next;                /* next tensor to write */
    int rc;                  /* sticky error */
};

static int wbytes(b2_gguf_w *w, const void *p, size_t n)
{
    if (w->rc) return w->rc;
    if (w->kv_len + n > w->kv_cap) {
        size_t nc = w->kv_cap ? w->kv_cap : 4096;
        while (nc < w->kv_len + n) nc *= 2;
        unsigned char *nb = realloc(w->kv, nc);
        if (!nb) return w->rc = BLIP2_ENOMEM;
        w->kv = nb;
        w->kv_cap = nc;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return 0;
}

static int wle(b2_gguf_w *w, uint64_t v, int n)
{
    unsigned char b[8];
    for (int i = 0; i < n; i++) b[i] = (unsigned char)(v >> (8 * i));
    return wbytes(w, b, (size_t)n);
}

static int wstr(b2_gguf_w *w, const char *s, size_t n)
{
    wle(w, n, 8);
    return wbytes(w, s, n);
}

static int wkey(b2_gguf_w *w, const char *key, b2_gguf_vtype t)
{
    w->n_kv++;
    wstr(w, key, strlen(key));
    return wle(w, (uint64_t)t, 4);
}

b2_gguf_w *b2__gguf_w_new(void)
{
    b2_gguf_w *w = calloc(1, sizeof *w);
    if (w && b2__gguf_w_u32(w, "general.alignment", B2_GGUF_ALIGN) < 0) {
        b2__gguf_w_free(w);
        return NULL;
    }
    return w;
}

void b2__gguf_w_free(b2_gguf_w *w)
{
    if (!w) return;
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w->kv);
    free(w);
}

int b2__gguf_w_u32(b2_gguf_w *w, const char *key, uint32_t v) { wkey(w, key, B2_GGUF_U32); return wle(w, v, 4); }
int b2__gguf_w_i32(b2_gguf_w *w, const char *key, int32_t v)
{
    wkey(w, key, B2_GGUF_I32);
    return wle(w, (uint32_t)v, 4);
}
int b2__gguf_w_f32(b2_gguf_w *w, const char *key, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    wkey(w, key, B2_GGUF_F32);
    return wle(w, u, 4);
}
int b2__gguf_w_f64(b2_gguf_w *w, const char *key, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    wkey(w, key, B2_GGUF_F64);
    return wle(w, u, 8);
}
int b2__gguf_w_bool(b2_gguf_w *w, const char *key, int v) { wkey(w, key, B2_GGUF_BOOL); return wle(w, !!v, 1); }
int b2__gguf_w_str(b2_gguf_w *w, const char *key, const char *s, size_t len)
{
    wkey(w, key, B2_GGUF_STRING);
    return wstr(w, s, len);
}

int b2__gguf_w_arr_str(b2_gguf_w *w, const char *key, const char *const *s, const size_t *lens, size_t n)
{
    wkey(w, key, B2_GGUF_ARRAY);
    wle(w, B2_GGUF_STRING, 4);
    wle(w, n, 8);
    for (size_t i = 0; i < n; i++) wstr(w, s[i], lens ? lens[i] : strlen(s[i]));
    return w->rc;
}

int b2__gguf_w_arr_f32(b2_gguf_w *w, const char *key, const float *v, size_t n)
{
    wkey(w, key, B2_GGUF_ARRAY);
    wle(w, B2_GGUF_F32, 4);
    wle(w, n, 8);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        wle(w, u, 4);
    }
    return w->rc;
}

int b2__gguf_w_arr_i32(b2_gguf_w *w, const char *key, const int32_t *v, size_t n)
{
    wkey(w, key, B2_GGUF_ARRAY);
    wle(w, B2_GGUF_I32, 4);
    wle(w, n, 8);
    for (size_t i = 0; i < n; i++) wle(w, (uint32_t)v[i], 4);
    return w->rc;
}

int b2__gguf_w_arr_u8(b2_gguf_w *w, const char *key, const void *v, size_t n)
{
    wkey(w, key, B2_GGUF_ARRAY);
    wle(w, B2_GGUF_U8, 4);
    wle(w, n, 8);
    return wbytes(w, v, n);
}

int b2__gguf_w_tensor(b2_gguf_w *w, const char *name, b2_wtype t, int n_dims, const int64_t *ne)
{
    return b2__gguf_w_tensor_t(w, name, (uint32_t)t, n_dims, ne);
}

int b2__gguf_w_tensor_t(b2_gguf_w *w, const char *name, uint32_t t, int n_dims, const int64_t *ne)
{
    if (w->rc) return w->rc;
    const size_t nb = b2__gguf_type_nbytes(t, n_dims, ne);
    if (!nb || strlen(name) == 0 || strlen(name) > B2_GGUF_MAX_NAME) return w->rc = BLIP2_EINVAL;
    if (w->n_t == w->cap_t) {
        int nc = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *nt = realloc(w->t, sizeof *nt * (size_t)nc);
        if (!nt) return w->rc = BLIP2_ENOMEM;
        w->t = nt;
        w->cap_t = nc;
    }
    wtensor *T = &w->t[w->n_t];
    if (!(T->name = strdup(name))) return w->rc = BLIP2_ENOMEM;
    T->type = t;
    T->n_dims = n_dims;
    for (int i = 0; i < B2_GGUF_MAX_DIMS; i++) T->ne[i] = i < n_dims ? ne[i] : 1;
    T->offset = w->data_len;
    T->nbytes = nb;
    w->data_len += (nb + B2_GGUF_ALIGN - 1) / B2_GGUF_ALIGN * B2_GGUF_ALIGN;
    return w->n_t++;
}

static uint64_t header_len(const b2_gguf_w *w)
{
    uint64_t n = 24 + w->kv_len;
    for (int i = 0; i < w->n_t; i++) n += 8 + strlen(w->t[i].name) + 4 + 8 * (uint64_t)w->t[i].n_dims + 4 + 8;
    return (n + B2_GGUF_ALIGN - 1) / B2_GGUF_ALIGN * B2_GGUF_ALIGN;
}

uint64_t b2__gguf_w_file_size(const b2_gguf_w *w) { return header_len(w) + w->data_len; }

static int fwrite_le(FILE *f, uint64_t v, int n)
{
    unsigned char b[8];
    for (int i = 0; i < n; i++) b[i] = (unsigned char)(v >> (8 * i));
    return fwrite(b, 1, (size_t)n, f) == (size_t)n ? 0 : -1;
}

static int pad(FILE *f, uint64_t n)
{
    static const unsigned char zero[B2_GGUF_ALIGN];
    return n && fwrite(zero, 1, (size_t)n, f) != n ? -1 : 0;
}

int b2__gguf_w_write_header(b2_gguf_w *w, FILE *f, blip2_error *err)
{
    if (w->rc) return b2__err(err, w->rc, "GGUF writer: %s", blip2_strerror(w->rc));
    int bad = fwrite_le(f, B2_GGUF_MAGIC, 4) | fwrite_le(f, B2_GGUF_VERSION, 4) |
              fwrite_le(f, (uint64_t)w->n_t, 8) | fwrite_le(f, w->n_kv, 8);
    if (!bad && w->kv_len && fwrite(w->kv, 1, w->kv_len, f) != w->kv_len) bad = 1;
    uint64_t n = 24 + w->kv_len;
    for (int i = 0; i < w->n_t && !bad; i++) {
        const wtensor *T = &w->t[i];
        const size_t nl = strlen(T->name);
        bad |= fwrite_le(f, nl, 8) | (fwrite(T->name, 1, nl, f) != nl) | fwrite_le(f, (uint64_t)T->n_dims, 4);
        for (int d = 0; d < T->n_dims; d++) bad |= fwrite_le(f, (uint64_t)T->ne[d], 8);
        bad |= fwrite_le(f, (uint64_t)T->type, 4) | fwrite_le(f, T->offset, 8);
        n += 8 + nl + 4 + 8 * (uint64_t)T->n_dims + 4 + 8;
    }
    if (!bad) bad = pad(f, header_len(w) - n);
    if (bad) {
        w->rc = BLIP2_EIO;
        return b2__err(err, BLIP2_EIO, "GGUF writer: write failed: %s", strerror(errno));
    }
    w->header_len = header_len(w);
    w->next = 0;
    return 0;
}

int b2__gguf_w_write_data(b2_gguf_w *w, FILE *f, int idx, const void *data, blip2_error *err)
{
    if (w->rc) return b2__err(err, w->rc, "GGUF writer: %s", blip2_strerror(w->rc));
    if (idx != w->next || idx >= w->n_t)
        return b2__err(err, BLIP2_EINVAL, "GGUF writer: tensor %d written out of order", idx);
    const wtensor *T = &w->t[idx];
    if (fwrite(data, 1, T->nbytes, f) != T->nbytes ||
        pad(f, (B2_GGUF_ALIGN - T->nbytes % B2_GGUF_ALIGN) % B2_GGUF_ALIGN) < 0) {
        w->rc = BLIP2_EIO;
        return b2__err(err, BLIP2_EIO, "GGUF writer: writing '%s' failed: %s", T->name, strerror(errno));
    }
    w->next++;
    return 0;
}
