/*
 * convert.c - blip2_convert: a Hugging Face folder packed into one GGUF
 * file (docs/gguf.md).
 *
 *   safetensors (f32/f16/bf16) -> f32 rows -> b2__wquantize_row ->
 *   one tensor at a time into OUT's temporary file -> fsync ->
 *   loaded back (b2__load_gguf_check: every check the loader makes) -> rename
 *
 * With BLIP2_CONVERT_INT8_VISION each vision matrix of b2__int8_layer is
 * followed by its int8 copy (packed.h): b2__quantize_s8 of the rows just
 * written, the loader's own quantisation of the same stored bytes, so the
 * copy in the file and one made at load are the same bits.
 *
 * The metadata keys come from packed.c; the folder's tensors are opened by
 * weights.c.
 */
#include "blip2.h"
#include "error.h"
#include "model.h"
#include "packed.h"
#include "t5tok.h"
#include "weights.h"
#include "matmul_dnnl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The stored type of a checkpoint tensor: big matrices (every ".weight"
 * of two or more dimensions except the position table) get want, with
 * q8_0 or q4_0 for the language model only (vision_model, qformer and
 * language_projection matrices become bf16) and falling back to f16 when
 * the rows are not a multiple of 32;
 * everything else (norms, biases, embeddings of positions and class,
 * T5's relative position biases, query tokens) stays f32. */
static b2_wtype tensor_type(const b2_tensor *t, b2_wtype want)
{
    const size_t n = strlen(t->name);
    if (t->ndim < 2 || n < 7 || strcmp(t->name + n - 7, ".weight") != 0 || strstr(t->name, "embed_positions") ||
        strstr(t->name, "position_embedding") || strstr(t->name, "relative_attention_bias"))
        return B2_WT_F32;
    const int64_t k = t->shape[t->ndim - 1];
    /* q8_0 is for the language model's decode, which reads every weight
     * per token; the vision encoder, Q-Former and projection run as
     * products with many rows (bf16 math on oneDNN, in place) */
    const int blocks = want == B2_WT_Q8_0 || want == B2_WT_Q4_0;
    if (blocks && strncmp(t->name, "language_model.", 15) != 0) return B2_WT_BF16;
    if (blocks && !b2__wt_ok(want, (int)(k > INT32_MAX ? 1 : k))) return B2_WT_F16;
    return want;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int is_float(b2_dtype d) { return d == B2_F32 || d == B2_F16 || d == B2_BF16 || d == B2_F64; }

int blip2_convert(const char *src, const char *out, const char *type, blip2_convert_cb cb, void *ud,
                  blip2_convert_stats *stats, blip2_error *err)
{
    return blip2_convert_opt(src, out, type, 0, cb, ud, stats, err);
}

/* Declares matrix i's int8 tensors (packed.h) after its weight; 0 or a
 * negative code. */
static int declare_int8(b2_gguf_w *w, const b2_config *c, int i)
{
    char prefix[200], name[256];
    int out, in;
    b2__int8_layer(c, i, prefix, sizeof prefix, &out, &in);
    const int64_t ne2[2] = {in, out}, ne1[1] = {out};
    snprintf(name, sizeof name, "%s%s", prefix, B2_INT8_Q);
    b2__gguf_w_tensor_t(w, name, B2_GGUF_TYPE_I8, 2, ne2);
    snprintf(name, sizeof name, "%s%s", prefix, B2_INT8_SCALE);
    b2__gguf_w_tensor_t(w, name, (uint32_t)B2_WT_F32, 1, ne1);
    snprintf(name, sizeof name, "%s%s", prefix, B2_INT8_SUM);
    const int rc = b2__gguf_w_tensor_t(w, name, B2_GGUF_TYPE_I32, 1, ne1);
    return rc < 0 ? rc : 0;
}

int blip2_convert_opt(const char *src, const char *out, const char *type, unsigned flags, blip2_convert_cb cb,
                      void *ud, blip2_convert_stats *stats, blip2_error *err)
{
    const double t0 = now_s();
    char p[4096], tmp[4096];
    b2_wtype want;
    int rc, fd = -1;
    FILE *f = NULL;
    float *row = NULL;
    unsigned char *obuf = NULL;
    b2_gguf_w *w = NULL;
    const b2_tensor **list = NULL;
    int *i8 = NULL;          /* per list entry: its b2__int8_layer index, or -1 */
    int8_t *q8 = NULL;       /* an int8 copy being written: (out, in) */
    float *q8s = NULL;       /* its scales (out) */
    int32_t *q8sum = NULL;   /* its row sums (out) */
    const int int8 = (flags & BLIP2_CONVERT_INT8_VISION) != 0;
    tmp[0] = 0;
    if (stats) memset(stats, 0, sizeof *stats);
    if (!src || !out) return b2__err(err, BLIP2_EINVAL, "convert: no source or output given");
    if (flags & ~BLIP2_CONVERT_INT8_VISION) return b2__err(err, BLIP2_EINVAL, "convert: unknown flags %#x", flags);
    if ((rc = b2__wtype_parse(type, &want, err)) < 0) return rc;
    struct stat st;
    if (stat(src, &st) != 0 || !S_ISDIR(st.st_mode))
        return b2__err(err, BLIP2_EIO, "%s: not a Hugging Face model folder", src);
    blip2_model *m = calloc(1, sizeof *m);
    if (!m) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    snprintf(p, sizeof p, "%s/config.json", src);
    if ((rc = b2__config_load(&m->cfg, p, err)) < 0) goto fail;
    const int t5 = m->cfg.family == B2_FAMILY_T5;
    b2__preproc_default(&m->pp);
    snprintf(p, sizeof p, "%s/preprocessor_config.json", src);
    if ((rc = b2__preproc_load(&m->pp, p, err)) < 0) goto fail;
    /* refuse what could not load */
    if ((rc = t5 ? b2__t5tok_load(&m->t5tok, src, err) : b2__bpe_load(&m->tok, src, err)) < 0) goto fail;
    if ((rc = b2__weights_open(m, src, err)) < 0) goto fail;

    if (!(w = b2__gguf_w_new())) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto fail; }
    const char *base = strrchr(src, '/');
    char bname[256];
    snprintf(bname, sizeof bname, "%s", base && base[1] ? base + 1 : src);
    b2__gguf_w_str(w, "general.architecture", "blip2", 5);
    b2__gguf_w_str(w, "general.name", bname, strlen(bname));
    b2__gguf_w_u32(w, "general.file_type", want == B2_WT_F32 ? 0 : want == B2_WT_F16 ? 1
                                            : want == B2_WT_Q8_0 ? 7 : want == B2_WT_Q4_0 ? 2 : 32);
    b2__gguf_w_u32(w, "general.quantization_version", 2);
    if ((rc = b2__packed_write_meta(w, m, src, err)) < 0) goto fail;
    if (int8) b2__gguf_w_u32(w, B2_INT8_KEY, B2_INT8_SCHEME);

    /* every float tensor of every file, except a tied lm_head and T5's
     * copies of shared (encoder/decoder.embed_tokens, never read) */
    int total = 0, n = 0;
    for (int i = 0; i < m->n_files; i++) total += b2__st_count(m->files[i]);
    if (!(list = calloc((size_t)total + 1, sizeof *list)) || !(i8 = calloc((size_t)total + 1, sizeof *i8))) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        goto fail;
    }
    size_t max_row = 1, max_bytes = 1, max_q8 = 0, max_q8_bytes = 0;
    int n_int8 = 0;
    for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < b2__st_count(m->files[i]); j++) {
            const b2_tensor *t = b2__st_at(m->files[i], j);
            if (!is_float(t->dtype) || t->ndim < 1 || t->ndim > B2_GGUF_MAX_DIMS) continue;
            if (m->cfg.t_tie && !strcmp(t->name, "language_model.lm_head.weight")) continue;
            if (t5 && (!strcmp(t->name, "language_model.encoder.embed_tokens.weight") ||
                       !strcmp(t->name, "language_model.decoder.embed_tokens.weight")))
                continue;
            int dup = 0;
            for (int q = 0; q < n && !dup; q++) dup = !strcmp(list[q]->name, t->name);
            if (dup) continue;
            int64_t ne[B2_GGUF_MAX_DIMS];
            for (int d = 0; d < t->ndim; d++) ne[d] = t->shape[t->ndim - 1 - d];
            const b2_wtype tt = tensor_type(t, want);
            if (b2__gguf_w_tensor(w, t->name, tt, t->ndim, ne) < 0) {
                rc = b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s' cannot be stored as %s", b2__st_path(m->files[i]),
                             t->name, b2__wt_name(tt));
                goto fail;
            }
            if ((size_t)ne[0] > max_row) max_row = (size_t)ne[0];
            const size_t nb = b2__gguf_nbytes(tt, t->ndim, ne);
            if (nb > max_bytes) max_bytes = nb;
            i8[n] = int8 ? b2__int8_find(&m->cfg, t->name) : -1;
            if (i8[n] >= 0) {
                if ((rc = declare_int8(w, &m->cfg, i8[n])) < 0) {
                    rc = b2__err(err, rc, "%s: the int8 copy of '%s' cannot be stored", b2__st_path(m->files[i]),
                                 t->name);
                    goto fail;
                }
                if ((size_t)(b2__tensor_numel(t) / ne[0]) > max_q8) max_q8 = (size_t)(b2__tensor_numel(t) / ne[0]);
                if ((size_t)b2__tensor_numel(t) > max_q8_bytes) max_q8_bytes = (size_t)b2__tensor_numel(t);
                n_int8++;
            }
            list[n++] = t;
            if (stats) {
                stats->n_f32 += tt == B2_WT_F32;
                stats->n_f16 += tt == B2_WT_F16;
                stats->n_bf16 += tt == B2_WT_BF16;
                stats->n_q8_0 += tt == B2_WT_Q8_0;
                stats->n_q4_0 += tt == B2_WT_Q4_0;
            }
        }

    if (int8 && n_int8 != b2__int8_count(&m->cfg)) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: %d of the %d vision matrices for int8 found (the projection and "
                     "MLP of each layer)", src, n_int8, b2__int8_count(&m->cfg));
        goto fail;
    }

    /* the temporary file next to out */
    const char *slash = strrchr(out, '/');
    if (slash) snprintf(tmp, sizeof tmp, "%.*s/.%s.tmp-XXXXXX", (int)(slash - out), out, slash + 1);
    else snprintf(tmp, sizeof tmp, ".%s.tmp-XXXXXX", out);
    if ((fd = mkstemp(tmp)) < 0) {
        rc = b2__err(err, BLIP2_EIO, "%s: cannot create a temporary file there: %s", out, strerror(errno));
        tmp[0] = 0;
        goto fail;
    }
    fchmod(fd, 0644);
    if (!(f = fdopen(fd, "wb"))) { rc = b2__err(err, BLIP2_EIO, "%s: %s", tmp, strerror(errno)); goto fail; }
    fd = -1;
    if ((rc = b2__gguf_w_write_header(w, f, err)) < 0) goto fail;
    const uint64_t fsize = b2__gguf_w_file_size(w);
    row = malloc(sizeof(float) * max_row);
    obuf = malloc(max_bytes);
    if (!row || !obuf) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto fail; }
    if (n_int8 && (!(q8 = malloc(max_q8_bytes)) || !(q8s = malloc(sizeof(float) * max_q8)) ||
                   !(q8sum = malloc(sizeof(int32_t) * max_q8)))) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0, idx = 0; i < n; i++) {
        const b2_tensor *t = list[i];
        if (cb && cb(ud, i, n, t->name, (uint64_t)ftello(f), fsize)) {
            rc = b2__err(err, BLIP2_ECANCELED, "conversion canceled");
            goto fail;
        }
        const int k = (int)t->shape[t->ndim - 1];
        const b2_wtype tt = tensor_type(t, want);
        const size_t rows = (size_t)(b2__tensor_numel(t) / k), rb = b2__wt_row_bytes(tt, k);
        const size_t es = b2__dtype_size(t->dtype);
        for (size_t r = 0; r < rows; r++) {
            b2_tensor one = *t; /* one row as its own tensor for b2__to_f32 */
            one.ndim = 1;
            one.shape[0] = k;
            one.data = (const unsigned char *)t->data + r * (size_t)k * es;
            b2__to_f32(&one, row);
            b2__wquantize_row(obuf + r * rb, row, tt, k);
        }
        if ((rc = b2__gguf_w_write_data(w, f, idx++, obuf, err)) < 0) goto fail;
        if (i8[i] >= 0) { /* its int8 copy, from the rows as stored */
            if (b2__quantize_s8(q8, q8s, q8sum, obuf, tt, (int)rows, k) < 0) {
                rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
                goto fail;
            }
            if ((rc = b2__gguf_w_write_data(w, f, idx++, q8, err)) < 0 ||
                (rc = b2__gguf_w_write_data(w, f, idx++, q8s, err)) < 0 ||
                (rc = b2__gguf_w_write_data(w, f, idx++, q8sum, err)) < 0)
                goto fail;
        }
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        rc = b2__err(err, BLIP2_EIO, "%s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (fclose(f) != 0) { f = NULL; rc = b2__err(err, BLIP2_EIO, "%s: %s", tmp, strerror(errno)); goto fail; }
    f = NULL;
    /* load it back: every check a reader makes, before it gets its name */
    blip2_model *back = NULL;
    if ((rc = b2__load_gguf_check(&back, tmp, err)) < 0) goto fail;
    blip2_model_free(back);
    if (rename(tmp, out) != 0) { rc = b2__err(err, BLIP2_EIO, "%s: %s", out, strerror(errno)); goto fail; }
    tmp[0] = 0;
    if (cb) cb(ud, n, n, NULL, fsize, fsize);
    if (stats) {
        stats->tensors = n + 3 * n_int8;
        stats->n_int8 = n_int8;
        stats->bytes = fsize;
        stats->seconds = now_s() - t0;
    }
    rc = 0;
fail:
    if (f) fclose(f);
    if (fd >= 0) close(fd);
    if (tmp[0]) unlink(tmp);
    free(row);
    free(obuf);
    free(list);
    free(i8);
    free(q8);
    free(q8s);
    free(q8sum);
    b2__gguf_w_free(w);
    blip2_model_free(m);
    return rc;
}
