/*
 * beam.h - internal to generation: the bookkeeping of beam search for one
 * session of K beams, as transformers 4.37.2's BeamSearchScorer and
 * BeamHypotheses keep it (beam.c).  The beams themselves are the session's
 * sequences (seq.h); this holds the finished hypotheses, the candidates of
 * a step and the caches the next step's beams are built in.
 */
#ifndef BLIP2_BEAM_H
#define BLIP2_BEAM_H
#include "seq.h"

/* A finished hypothesis: its ids and sum_logprobs / gen_len^length_penalty. */
typedef struct b2_hyp {
    float score;
    b2_toks t;
} b2_hyp;

/* A continuation: beam's ids + token, with its summed log-probability. */
typedef struct b2_cand {
    float score;
    int beam;
    int32_t token;
} b2_cand;

typedef struct b2_beams {
    int K, nret;      /* beams; sequences returned */
    int enc_dec;      /* an encoder-decoder model (see the lengths in beam.c) */
    b2_hyp *h;        /* (K + 1) finished hypotheses, n of them kept */
    int n;
    float worst;      /* the lowest score kept */
    int done;         /* no beam can beat the kept hypotheses any more */
    b2_cand *cd;      /* (2K) the step's best candidates, best first */
    b2_seq *next;     /* (K) the next step's beams are built here (kv and ids), then swapped in */
    b2_toks *out;     /* (nret) the final sequences, best first (b2__beams_finish) */
    int *out_finish;  /* (nret) BLIP2_FINISH_* of each */
} b2_beams;

/* Allocates b for K beams whose caches hold kv_cap slots of m's language
 * model.  BLIP2_ENOMEM (b2__beams_free cleans up). */
int b2__beams_init(b2_beams *b, const blip2_model *m, int K, int nret, int kv_cap, int enc_dec);
/* Frees what b owns; b may be zeroed or half-built. */
void b2__beams_free(b2_beams *b);

/* One step over the K beams seq[0..K-1] of length cur_len (their ids,
 * with the start token), given their logits (K, V) (overwritten):
 * log_softmax -> processors -> + beam score -> the top 2K over K x V ->
 * eos candidates ranked below K dropped, the others' hypotheses kept
 * (scored sum / gen_len^length_penalty), the K best continuations become
 * the beams (ids, cache, score, pending token); sets b->done when no beam
 * can beat the worst kept hypothesis (or early_stopping and K kept).
 * BLIP2_ENOMEM. */
int b2__beams_step(b2_beams *b, b2_seq *seq, float *logits, int V, const blip2_gen_params *p, int eos,
                   int cur_len);
/* The end: the beams still running join the hypotheses (unless done), and
 * b->out gets the nret best, eos appended to those shorter than the length
 * limit (1 + max_new_tokens).  BLIP2_ENOMEM. */
int b2__beams_finish(b2_beams *b, const b2_seq *seq, const blip2_gen_params *p, int eos);

#endif
