/*
 * kv.c - the per-sequence self-attention cache (kv.h): allocation, and the
 * copy beam search and multi-sequence sessions make of a prefix.
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
