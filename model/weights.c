/*
 * weights.c - the checkpoint's tensors.
 *
 * dir/model.safetensors.index.json (sharded checkpoints) names the shard of
 * every tensor; each distinct shard is mapped once.  Without an index,
 * dir/model.safetensors is the only file.  Lookups check the name, shape
 * and dtype, and hand out f32 views: in place for aligned F32 data, or a
 * converted copy (F16, BF16, F64) that the model owns and frees.
 */
#include "weights.h"
#include "error.h"
#include "gguf.h"
#include "kernels.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int add_file(blip2_model *m, const char *path, blip2_error *err)
{
    for (int i = 0; i < m->n_files; i++)
        if (!strcmp(b2__st_path(m->files[i]), path)) return 0;
    b2_st_file **nf = realloc(m->files, sizeof *nf * (size_t)(m->n_files + 1));
    if (!nf) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    m->files = nf;
    int rc = b2__st_open(&m->files[m->n_files], path, err);
    if (rc < 0) return rc;
    m->n_files++;
    return 0;
}

int b2__weights_open(blip2_model *m, const char *dir, blip2_error *err)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (stat(path, &st) == 0) {
        json_error_t je;
        json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        if (!root) return b2__err(err, BLIP2_EFORMAT, "%s:%d: %s", path, je.line, je.text);
        json_t *map = json_object_get(root, "weight_map");
        int rc = 0;
        if (!json_is_object(map) || json_object_size(map) == 0) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: no weight_map", path);
        } else {
            const char *k;
            json_t *v;
            json_object_foreach(map, k, v) {
                const char *fn = json_string_value(v);
                if (!fn || !*fn || strchr(fn, '/') || strstr(fn, "..")) {
                    rc = b2__err(err, BLIP2_EFORMAT, "%s: bad shard name for '%s'", path, k);
                    break;
                }
                char shard[4096];
                snprintf(shard, sizeof shard, "%s/%s", dir, fn);
                if ((rc = add_file(m, shard, err)) < 0) break;
            }
        }
        json_decref(root);
        return rc;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) != 0)
        return b2__err(err, BLIP2_EIO, "%s: no model.safetensors or model.safetensors.index.json "
                       "(only safetensors checkpoints are supported)", dir);
    return add_file(m, path, err);
}

static const b2_tensor *find(const blip2_model *m, const char *name, int *file)
{
    for (int i = 0; i < m->n_files; i++) {
        const b2_tensor *t = b2__st_find(m->files[i], name);
        if (t) { if (file) *file = i; return t; }
    }
    return NULL;
}

int b2__weight_exists(const blip2_model *m, const char *name)
{
    if (m->gguf) return b2__gguf_find_tensor(m->gguf, name) != NULL;
    return find(m, name, NULL) != NULL;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "(");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, ")");
}

int b2__weight(blip2_model *m, const char *name, int ndim, const int64_t *shape,
               const float **out, blip2_error *err)
{
    if (m->gguf) {
        b2_wtype wt;
        const void *p = NULL;
        int rc = b2__weight_typed(m, name, ndim, shape, 0, &p, &wt, err);
        *out = p;
        return rc;
    }
    int fi = 0;
    const b2_tensor *t = find(m, name, &fi);
    if (!t) return b2__err(err, BLIP2_EFORMAT, "missing tensor '%s' in the checkpoint", name);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[128], got[128];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' has shape %s, expected %s",
                       b2__st_path(m->files[fi]), name, got, want);
    }
    if (t->dtype != B2_F32 && t->dtype != B2_F16 && t->dtype != B2_BF16 && t->dtype != B2_F64)
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' has dtype %s, expected a float type",
                       b2__st_path(m->files[fi]), name, b2__dtype_name(t->dtype));
    if (t->dtype == B2_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = t->data;
        return 0;
    }
    if (m->n_owned == m->cap_owned) {
        int nc = m->cap_owned ? 2 * m->cap_owned : 256;
        void **no = realloc(m->owned, sizeof *no * (size_t)nc);
        if (!no) return b2__err(err, BLIP2_ENOMEM, "out of memory");
        m->owned = no;
        m->cap_owned = nc;
    }
    float *buf = malloc(sizeof(float) * (size_t)(b2__tensor_numel(t) ? b2__tensor_numel(t) : 1));
    if (!buf) return b2__err(err, BLIP2_ENOMEM, "out of memory converting '%s'", name);
    const size_t ne = (size_t)b2__tensor_numel(t);
    if (t->dtype == B2_F16) b2__f16_to_f32_n(buf, t->data, ne);        /* F16C over the pool */
    else if (t->dtype == B2_BF16) b2__bf16_to_f32_n(buf, t->data, ne);
    else b2__to_f32(t, buf);
    m->owned[m->n_owned++] = buf;
    *out = buf;
    return 0;
}

/* The GGUF tensor name with exactly that shape (row-major, as PyTorch's). */
static int gguf_find(blip2_model *m, const char *name, int ndim, const int64_t *shape, const b2_gguf_tensor **out,
                     blip2_error *err)
{
    const char *file = b2__gguf_name(m->gguf);
    const b2_gguf_tensor *t = b2__gguf_find_tensor(m->gguf, name);
    if (!t) return b2__err(err, BLIP2_EFORMAT, "%s: missing tensor '%s'", file, name);
    int same = t->n_dims == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->ne[i] == shape[ndim - 1 - i];
    if (!same) {
        int64_t got[B2_GGUF_MAX_DIMS];
        for (int i = 0; i < t->n_dims; i++) got[i] = t->ne[t->n_dims - 1 - i];
        char want_s[128], got_s[128];
        shape_str(want_s, sizeof want_s, ndim, shape);
        shape_str(got_s, sizeof got_s, t->n_dims, got);
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' has shape %s, expected %s", file, name, got_s, want_s);
    }
    *out = t;
    return 0;
}

int b2__weight_typed(blip2_model *m, const char *name, int ndim, const int64_t *shape, int typed_ok,
                     const void **out, b2_wtype *wt, blip2_error *err)
{
    if (!m->gguf) {
        const float *p = NULL;
        int rc = b2__weight(m, name, ndim, shape, &p, err);
        *out = p;
        *wt = B2_WT_F32;
        return rc;
    }
    const b2_gguf_tensor *t = NULL;
    int rc = gguf_find(m, name, ndim, shape, &t, err);
    if (rc < 0) return rc;
    const char *file = b2__gguf_name(m->gguf);
    if (!b2__wt_name(t->type))
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' is stored as %s, not as a weight type", file, name,
                       b2__gguf_type_name((uint32_t)t->type));
    if (!typed_ok && t->type != B2_WT_F32)
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' is stored as %s, expected f32", file, name,
                       b2__wt_name(t->type));
    if (t->type == B2_WT_F32 && ((uintptr_t)t->data & 3))
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' is not aligned", file, name);
    *out = t->data;
    *wt = t->type;
    return 0;
}

int b2__weight_raw(blip2_model *m, const char *name, uint32_t ggml_type, int ndim, const int64_t *shape,
                   const void **out, blip2_error *err)
{
    *out = NULL;
    if (!m->gguf) return b2__err(err, BLIP2_EINVAL, "tensor '%s': only a GGUF file has it", name);
    const b2_gguf_tensor *t = NULL;
    int rc = gguf_find(m, name, ndim, shape, &t, err);
    if (rc < 0) return rc;
    const char *file = b2__gguf_name(m->gguf);
    if ((uint32_t)t->type != ggml_type)
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' is stored as %s, expected %s", file, name,
                       b2__gguf_type_name((uint32_t)t->type), b2__gguf_type_name(ggml_type));
    const int four = ggml_type == B2_GGUF_TYPE_I32 || ggml_type == (uint32_t)B2_WT_F32;
    if (four && ((uintptr_t)t->data & 3))
        return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' is not aligned", file, name);
    *out = t->data;
    return 0;
}

const char *b2__weights_dtype(const blip2_model *m, const char *name)
{
    if (m->gguf) {
        const b2_gguf_tensor *g = b2__gguf_find_tensor(m->gguf, name);
        const char *n = g ? b2__wt_name(g->type) : NULL;
        return n ? n : "?";
    }
    const b2_tensor *t = find(m, name, NULL);
    if (!t) return "?";
    switch (t->dtype) {
    case B2_F32: return "f32";
    case B2_F16: return "f16";
    case B2_BF16: return "bf16";
    case B2_F64: return "f64";
    default: return "?";
    }
}

void b2__weights_close(blip2_model *m)
{
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (int i = 0; i < m->n_files; i++) b2__st_close(m->files[i]);
    free(m->files);
    b2__gguf_close(m->gguf);
    m->gguf = NULL;
    m->owned = NULL;
    m->files = NULL;
    m->n_owned = m->n_files = m->cap_owned = 0;
}
