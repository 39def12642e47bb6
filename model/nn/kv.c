/*
 * kv.c - the per-sequence self-attention cache (kv.h): allocation, and the
 * copy beam search and multi-sequence sessions make of a prefix, and the
 * store of one layer's new keys and values.
 *
 *   k, v: layer l, slot p at [(l * cap + p) * width], width floats
 */
#include "kv.h"
#include "error.h"
#include "lm.h"
#include "model.h"

#include <stdlib.h>
#include <string.h>

int b2__kv_init(b2_kv *kv, const blip2_model *m, int cap)
{
    size_t layers, width;
    m->lm->kv_dims(m, &layers, &width);
    return b2__kv_alloc(kv, layers, cap, width);
}

int b2__kv_alloc(b2_kv *kv, size_t layers, int cap, size_t width)
{
    size_t sz = layers * cap * width;
    kv->k = malloc(sizeof(float) * sz);
    kv->v = malloc(sizeof(float) * sz);
    kv->len = 0;
    kv->cap = cap;
    kv->layers = (int)layers;
    kv->width = (int)width;
    if (!kv->k || !kv->v) {
        b2__kv_free(kv);
        return BLIP2_ENOMEM;
    }
    return 0;
}

void b2__kv_free(b2_kv *kv)
{
    free(kv->k);
    free(kv->v);
    kv->k = kv->v = NULL;
    kv->len = kv->cap = 0;
}

void b2__kv_copy(b2_kv *dst, const b2_kv *src)
{
    const size_t D = (size_t)src->width;
    for (size_t l = 0; l < (size_t)src->layers; l++) {
        memcpy(dst->k + (size_t)l * dst->cap * D, src->k + (size_t)l * src->cap * D,
               sizeof(float) * src->len * D);
        memcpy(dst->v + (size_t)l * dst->cap * D, src->v + (size_t)l * src->cap * D,
               sizeof(float) * src->len * D);
    }
    dst->len = src->len;
}

void b2__kv_store(b2_kv *const *kvs, const int *seq, const int *pos, int n, int l,
                  const float *k, const float *v)
{
    for (int i = 0; i < n; i++) {
        b2_kv *kv = kvs[seq[i]];
        const size_t D = (size_t)kv->width, off = b2__kv_layer(kv, l) + (size_t)pos[i] * D;
        memcpy(kv->k + off, k + (size_t)i * D, sizeof(float) * D);
        memcpy(kv->v + off, v + (size_t)i * D, sizeof(float) * D);
    }
}
