/*
 * fuzz_gguf.c - libFuzzer target: the GGUF reader (model/formats/gguf.c).
 *
 * The input is a whole GGUF file, copied into a buffer of exactly its size
 * (so ASan sees any read past the end) and given to b2__gguf_parse.  On
 * success every entry and tensor is walked: keys and tensor names are found
 * again by name, every array element is read, each tensor's byte count is
 * recomputed from its type and shape and its data must lie inside the
 * input and be aligned; the first and last rows of each tensor are
 * converted to f32 (b2__wrows_to_f32), so an unchecked offset or shape is
 * an out-of-bounds read.
 */
#include "gguf.h"

#include <stdlib.h>
#include <string.h>

/* wkernels.c's products use the compute pool; the fuzzer only converts
 * rows, so a serial stand-in replaces model/compute/pool.c (and OpenBLAS). */
void b2__parallel_for(int n, void (*fn)(void *ctx, int task, int slot), void *ctx);
void b2__parallel_for(int n, void (*fn)(void *ctx, int task, int slot), void *ctx)
{
    for (int i = 0; i < n; i++) fn(ctx, i, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) abort();
    if (size) memcpy(buf, data, size);
    b2_gguf *g = NULL;
    blip2_error err;
    if (b2__gguf_parse(&g, buf, size, "fuzz.gguf", &err) == 0) {
        char name[B2_GGUF_MAX_KEY + 1];
        double sink = 0;
        for (int i = 0; i < b2__gguf_n_kv(g); i++) {
            const b2_gguf_kv *kv = b2__gguf_kv_at(g, i);
            if (!kv || kv->key.len > B2_GGUF_MAX_KEY) abort();
            memcpy(name, kv->key.p, kv->key.len);
            name[kv->key.len] = 0;
            if (b2__gguf_find_kv(g, name) != kv) abort(); /* keys are unique */
            if (kv->type == B2_GGUF_STRING && kv->str.len && (kv->str.p < (const char *)buf ||
                kv->str.p + kv->str.len > (const char *)buf + size)) abort();
            if (kv->type == B2_GGUF_ARRAY) {
                if (kv->arr_type == B2_GGUF_STRING) {
                    for (uint64_t j = 0; j < kv->arr_n; j++)
                        if (kv->arr_str[j].len) sink += (unsigned char)kv->arr_str[j].p[kv->arr_str[j].len - 1];
                } else {
                    for (uint64_t j = 0; j < kv->arr_n; j++) sink += b2__gguf_arr_num(kv, j);
                }
            }
            int64_t iv;
            float fv;
            b2__gguf_get_int(g, name, &iv, &err);
            b2__gguf_get_f32(g, name, &fv, &err);
        }
        const uint32_t al = b2__gguf_alignment(g);
        for (int i = 0; i < b2__gguf_n_tensors(g); i++) {
            const b2_gguf_tensor *t = b2__gguf_tensor_at(g, i);
            memcpy(name, t->name.p, t->name.len);
            name[t->name.len] = 0;
            if (b2__gguf_find_tensor(g, name) != t) abort();
            if (t->nbytes != b2__gguf_nbytes(t->type, t->n_dims, t->ne)) abort();
            const unsigned char *d = t->data;
            if (d < buf || d + t->nbytes > buf + size || (size_t)(d - buf) % al) abort();
            const int k = (int)t->ne[0];
            /* touch every byte of the first and the last row: ASan sees
             * any read the reader's bounds let through */
            const size_t rb = b2__wt_row_bytes(t->type, k), rows = rb ? t->nbytes / rb : 0;
            if (rows == 0) continue;
            const unsigned char *last = d + (rows - 1) * rb;
            for (size_t j = 0; j < rb; j++) sink += d[j] + last[j];
        }
        if (sink == 12345.678) abort(); /* keep the reads */
        b2__gguf_close(g);
    } else if (g) {
        abort(); /* failure leaves nothing to close */
    }
    free(buf);
    return 0;
}
