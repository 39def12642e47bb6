/*
 * seq.h - internal to generation: one sequence of a session and the choice
 * of its next token (seq.c).
 *
 * A session (generate.c) holds K of these: 1 for greedy search,
 * num_return_sequences samples, or K beams (beam.h keeps the rest of beam
 * search's state).  Each owns its language model cache and its ids.
 */
#ifndef BLIP2_SEQ_H
#define BLIP2_SEQ_H
#include "blip2.h"
#include "kv.h"

#include <stdint.h>

/* A growing list of token ids. */
typedef struct b2_toks {
    int32_t *v;     /* (cap) */
    int n, cap;
} b2_toks;

/* Appends id.  BLIP2_ENOMEM. */
int b2__toks_push(b2_toks *t, int32_t id);
/* dst = src.  BLIP2_ENOMEM. */
int b2__toks_copy(b2_toks *dst, const b2_toks *src);

/* One sequence: a greedy or sampled continuation, or a beam. */
typedef struct b2_seq {
    b2_kv kv;         /* the language model's self-attention cache */
    b2_toks ids;      /* ids so far, starting with the decoder start token (OPT: bos) */
    float score;      /* beam search: the beam's sum of log-probabilities */
    int live;         /* still generating */
    int finish;       /* BLIP2_FINISH_* once not live */
    int32_t pending;  /* the token the next step feeds */
    uint64_t rng[4];  /* sampling: xoshiro256** state */
} b2_seq;

/* Seeds sequence j's generator from the request's seed (splitmix64). */
void b2__seq_seed(b2_seq *s, uint64_t seed, int j);

/* The logits processors of transformers 4.37.2 in their order on x (V):
 * repetition penalty on the ids so far, then min_new_tokens (eos = -inf
 * while ids (with its start token) is not longer than min_new_tokens). */
void b2__process_logits(float *x, const b2_toks *ids, const blip2_gen_params *p, int eos);

/* The first index of the largest of x (n). */
int32_t b2__argmax(const float *x, int n);

/* temperature -> top-k -> top-p -> softmax -> one draw from rng; x (V) is
 * scaled in place; tmp holds V floats of scratch. */
int32_t b2__sample(float *x, int V, const blip2_gen_params *p, uint64_t rng[4], float *tmp);

#endif
