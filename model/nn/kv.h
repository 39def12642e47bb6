/*
 * kv.h - internal: the self-attention cache of one sequence, shared by the
 * language models of every family (OPT's decoder, T5's decoder).
 *
 * Keys and values of each layer sit in cap slots of one row each; a row is
 * what the family's kv_dims (lm.h) says: OPT d_model, T5 heads * d_kv.
 * Slot p holds the keys and values of the sequence's position p.  The
 * forward passes write slots and read slots 0..p; only the caller moves len.
 * T5's cross-attention keys and values of one request (t5.h) are a b2_kv
 * too, shaped (dec_layers, encoder rows, H*d_kv), every slot filled.
 */
#ifndef BLIP2_KV_H
#define BLIP2_KV_H
#include <stddef.h>

typedef struct blip2_model blip2_model; /* as in blip2.h */

typedef struct b2_kv {
    float *k, *v;   /* (layers, cap, width) each */
    int len, cap;   /* slots filled, slots allocated */
    int layers, width;
} b2_kv;

/* Allocates a cache of cap slots shaped for m's language model
 * (m->lm->kv_dims).  BLIP2_ENOMEM (kv is then empty). */
int b2__kv_init(b2_kv *kv, const blip2_model *m, int cap);
/* Allocates cap slots of layers rows of width floats each, len 0 (any
 * keys and values of that shape: T5's cross-attention keeps its encoder's
 * in one).  BLIP2_ENOMEM (kv is then empty). */
int b2__kv_alloc(b2_kv *kv, size_t layers, int cap, size_t width);
/* Frees the slots; kv may be empty or half-built. */
void b2__kv_free(b2_kv *kv);
/* dst takes src's first len positions (same shape, dst->cap >= src->len). */
void b2__kv_copy(b2_kv *dst, const b2_kv *src);
/* Stores n rows: row i of k and of v (n, width) each goes to slot pos[i]
 * of layer l of kvs[seq[i]] (what one layer's forward pass does with the
 * keys and values of the rows it runs). */
void b2__kv_store(b2_kv *const *kvs, const int *seq, const int *pos, int n, int l,
                  const float *k, const float *v);

/* Offset of layer l's first slot in kv->k and kv->v. */
static inline size_t b2__kv_layer(const b2_kv *kv, int l)
{
    return (size_t)l * kv->cap * kv->width;
}

#endif
