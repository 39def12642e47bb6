/*
 * safetensors.c - read-only mapping and validation of safetensors files, and
 * a small writer (used for --dump-tensors and by tools).
 *
 * open: mmap(PROT_READ, MAP_SHARED) -> u64 header length (bounded by file
 * size and 100 MiB) -> jansson parses the header -> every entry's dtype,
 * shape and data_offsets are checked (offsets ordered, inside the data area,
 * byte count == numel * element size, no overflow) -> a table of b2_tensor
 * pointing into the mapping.  Nothing is copied.
 */
#include "safetensors.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define B2_ST_MAX_HEADER (100u << 20)

struct b2_st_file {
    char *path;
    void *map;
    size_t size;
    b2_tensor *t;
    char **names;
    int n;
};

static const struct { const char *name; size_t size; } dtypes[B2_DTYPE_COUNT] = {
    [B2_F32] = {"F32", 4}, [B2_F16] = {"F16", 2}, [B2_BF16] = {"BF16", 2},
    [B2_F64] = {"F64", 8}, [B2_I64] = {"I64", 8}, [B2_I32] = {"I32", 4},
    [B2_I16] = {"I16", 2}, [B2_I8] = {"I8", 1},   [B2_U8] = {"U8", 1},
    [B2_BOOL] = {"BOOL", 1},
};

size_t b2__dtype_size(b2_dtype t) { return t < B2_DTYPE_COUNT ? dtypes[t].size : 0; }
const char *b2__dtype_name(b2_dtype t) { return t < B2_DTYPE_COUNT ? dtypes[t].name : "?"; }

int64_t b2__tensor_numel(const b2_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void b2__st_close(b2_st_file *f)
{
    if (!f) return;
    if (f->map && f->map != MAP_FAILED) munmap(f->map, f->size);
    if (f->names)
        for (int i = 0; i < f->n; i++) free(f->names[i]);
    free(f->names);
    free(f->t);
    free(f->path);
    free(f);
}

static int parse_entry(b2_st_file *f, const char *key, json_t *v, size_t data_off,
                       int idx, blip2_error *err)
{
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    b2_tensor *t = &f->t[idx];
    if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off) ||
        json_array_size(off) != 2)
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': bad header entry",
                       f->path, key);
    int d;
    for (d = 0; d < B2_DTYPE_COUNT; d++)
        if (!strcmp(json_string_value(dt), dtypes[d].name)) break;
    if (d == B2_DTYPE_COUNT)
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': unknown dtype '%s'",
                       f->path, key, json_string_value(dt));
    t->dtype = (b2_dtype)d;
    if (json_array_size(sh) > B2_MAX_DIMS)
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': too many dims", f->path, key);
    t->ndim = (int)json_array_size(sh);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *e = json_array_get(sh, (size_t)i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 ||
            json_integer_value(e) > (1ll << 40))
            return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': bad shape", f->path, key);
        t->shape[i] = json_integer_value(e);
        if (t->shape[i] && numel > (1ull << 40) / (uint64_t)t->shape[i])
            return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': shape too large", f->path, key);
        numel *= (uint64_t)t->shape[i];
    }
    json_t *b = json_array_get(off, 0), *e = json_array_get(off, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
        json_integer_value(e) < json_integer_value(b))
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': bad data_offsets", f->path, key);
    uint64_t begin = (uint64_t)json_integer_value(b), end = (uint64_t)json_integer_value(e);
    if (end > f->size - data_off)
        return b2__err(err, BLIP2_EFORMAT,
                       "%s: tensor '%s': data [%llu,%llu) beyond end of file (truncated?)",
                       f->path, key, (unsigned long long)begin, (unsigned long long)end);
    if (end - begin != numel * dtypes[d].size)
        return b2__err(err, BLIP2_EFORMAT,
                       "%s: tensor '%s': %llu bytes for %llu elements of %s",
                       f->path, key, (unsigned long long)(end - begin),
                       (unsigned long long)numel, dtypes[d].name);
    f->names[idx] = strdup(key);
    if (!f->names[idx]) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    t->name = f->names[idx];
    t->data = (const char *)f->map + data_off + begin;
    t->nbytes = (size_t)(end - begin);
    return 0;
}

int b2__st_open(b2_st_file **out, const char *path, blip2_error *err)
{
    int rc, fd = -1;
    json_t *root = NULL;
    b2_st_file *f = calloc(1, sizeof *f);
    *out = NULL;
    if (!f || !(f->path = strdup(path))) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto fail; }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { rc = b2__err(err, BLIP2_EIO, "%s: %s", path, strerror(errno)); goto fail; }
    struct stat st;
    if (fstat(fd, &st) < 0) { rc = b2__err(err, BLIP2_EIO, "%s: %s", path, strerror(errno)); goto fail; }
    if (!S_ISREG(st.st_mode)) { rc = b2__err(err, BLIP2_EIO, "%s: not a regular file", path); goto fail; }
    if (st.st_size < 8) { rc = b2__err(err, BLIP2_EFORMAT, "%s: too short for a safetensors file (%lld bytes)", path, (long long)st.st_size); goto fail; }
    f->size = (size_t)st.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_SHARED, fd, 0);
    if (f->map == MAP_FAILED) { rc = b2__err(err, BLIP2_EIO, "%s: mmap: %s", path, strerror(errno)); goto fail; }
    uint64_t hlen = 0;
    const unsigned char *p = f->map;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen == 0 || hlen > B2_ST_MAX_HEADER || hlen > f->size - 8) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: bad safetensors header length %llu (file %zu bytes)",
                     path, (unsigned long long)hlen, f->size);
        goto fail;
    }
    json_error_t je;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: bad safetensors header: %s", path,
                     root ? "not an object" : je.text);
        goto fail;
    }
    size_t cap = json_object_size(root);
    f->t = calloc(cap ? cap : 1, sizeof *f->t);
    f->names = calloc(cap ? cap : 1, sizeof *f->names);
    if (!f->t || !f->names) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto fail; }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        if (!json_is_object(v)) { rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': not an object", path, key); goto fail; }
        f->n++;
        if ((rc = parse_entry(f, key, v, 8 + (size_t)hlen, f->n - 1, err)) < 0) goto fail;
    }
    json_decref(root);
    close(fd);
    *out = f;
    return 0;
fail:
    json_decref(root);
    if (fd >= 0) close(fd);
    b2__st_close(f);
    return rc;
}

const char *b2__st_path(const b2_st_file *f) { return f->path; }
int b2__st_count(const b2_st_file *f) { return f->n; }
const b2_tensor *b2__st_at(const b2_st_file *f, int i) { return &f->t[i]; }

const b2_tensor *b2__st_find(const b2_st_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}


void b2__to_f32(const b2_tensor *t, float *out)
{
    int64_t n = b2__tensor_numel(t);
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case B2_F32: { float v; memcpy(&v, p + 4 * i, 4); out[i] = v; break; }
        case B2_F64: { double v; memcpy(&v, p + 8 * i, 8); out[i] = (float)v; break; }
        case B2_F16: { uint16_t v; memcpy(&v, p + 2 * i, 2); out[i] = b2__f16_to_f32(v); break; }
        case B2_BF16: { uint16_t v; memcpy(&v, p + 2 * i, 2); out[i] = b2__bf16_to_f32(v); break; }
        case B2_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); out[i] = (float)v; break; }
        case B2_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); out[i] = (float)v; break; }
        case B2_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); out[i] = (float)v; break; }
        case B2_I8: out[i] = (float)(int8_t)p[i]; break;
        case B2_U8: case B2_BOOL: out[i] = (float)p[i]; break;
        default: out[i] = 0; break;
        }
    }
}

void b2__to_i32(const b2_tensor *t, int32_t *out)
{
    int64_t n = b2__tensor_numel(t);
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case B2_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); out[i] = (int32_t)v; break; }
        case B2_I32: memcpy(&out[i], p + 4 * i, 4); break;
        case B2_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); out[i] = v; break; }
        case B2_I8: out[i] = (int8_t)p[i]; break;
        case B2_U8: case B2_BOOL: out[i] = p[i]; break;
        default: { float v[1]; b2__to_f32(&(b2_tensor){.dtype = t->dtype, .ndim = 0, .data = p + i * b2__dtype_size(t->dtype)}, v); out[i] = (int32_t)v[0]; }
        }
    }
}

int b2__st_write(const char *path, const b2_tensor *ts, int n, blip2_error *err)
{
    int rc = 0;
    char *hdr = NULL, *tmp = NULL;
    FILE *fp = NULL;
    json_t *root = json_object();
    if (!root) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *e = json_object(), *sh = json_array(), *o = json_array();
        for (int d = 0; d < ts[i].ndim; d++) json_array_append_new(sh, json_integer(ts[i].shape[d]));
        json_array_append_new(o, json_integer((json_int_t)off));
        off += ts[i].nbytes;
        json_array_append_new(o, json_integer((json_int_t)off));
        json_object_set_new(e, "dtype", json_string(b2__dtype_name(ts[i].dtype)));
        json_object_set_new(e, "shape", sh);
        json_object_set_new(e, "data_offsets", o);
        json_object_set_new(root, ts[i].name, e);
    }
    hdr = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    if (!hdr) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    size_t plen = strlen(path) + 16;
    tmp = malloc(plen);
    if (!tmp) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
    snprintf(tmp, plen, "%s.tmp%ld", path, (long)getpid());
    fp = fopen(tmp, "wb");
    if (!fp) { rc = b2__err(err, BLIP2_EIO, "%s: %s", tmp, strerror(errno)); goto out; }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int bad = fwrite(lenb, 1, 8, fp) != 8 || fwrite(hdr, 1, hl, fp) != hl;
    for (size_t i = hl; i < padded && !bad; i++) bad = fputc(' ', fp) == EOF;
    for (int i = 0; i < n && !bad; i++)
        bad = ts[i].nbytes && fwrite(ts[i].data, 1, ts[i].nbytes, fp) != ts[i].nbytes;
    if (fclose(fp) != 0) bad = 1;
    fp = NULL;
    if (bad || rename(tmp, path) != 0) {
        rc = b2__err(err, BLIP2_EIO, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
    }
out:
    if (fp) fclose(fp);
    free(tmp);
    free(hdr);
    return rc;
}
