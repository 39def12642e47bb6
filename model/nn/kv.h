/*
 * kv.h - internal: the self-attention cache of one sequence, shared by the
 * language models of every family (OPT's decoder, T5's decoder).
 *
 * Keys and values of each layer sit in cap slots of one row each; a row is
 * what the family's kv_dims (lm.h) says: OPT d_model, T5 heads * d_kv.
 * Slot p holds the keys and values of the sequence's position p.  The
 * forward passes write slots and read slots 0..p; only the caller moves len.
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
/* Frees the slots; kv may be empty or half-built. */
void b2__kv_free(b2_kv *kv);
/* dst takes src's first len positions (same shape, dst->cap >= src->len). */
void b2__kv_copy(b2_kv *dst, const b2_kv *src);

#endif
