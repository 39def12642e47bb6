/*
 * lm.h - internal: the language model of every family behind one table of
 * operations, so generation (generate.c at the top) drives OPT and T5 the
 * same way.
 *
 * A step of generation is a set of rows.  Row i is one input of sequence
 * seq[i] at cache slot pos[i]: an embedding (D floats) the caller has
 * assembled, a query embedding or a token's embed().  forward() runs the
 * rows through the decoder (each row attends to its own sequence's cache,
 * slots 0..pos[i], and nothing else, so a row's numbers do not depend on
 * its batch neighbours) and logits() turns hidden states into scores.
 *
 * The families differ in what a request's prefill is:
 *   decoder-only (OPT, prefill == NULL): the rows [query embeds (Q) ;
 *     embed(prompt ids) (L)] themselves, at slots 0..Q+L-1 of the decoder;
 *   encoder-decoder (T5): prefill() runs the encoder over [query embeds ;
 *     embed(prompt ids)] once per request and keeps what the decoder
 *     attends to (struct b2_lm_enc, one per request, shared by its
 *     sequences); the decoder's own prefix is one row,
 *     [decoder_start_token_id] at slot 0.
 *
 *            rows (emb, seq, pos)      per sequence: kv[s], enc[s]
 *                     |                         |
 *                 forward ---------------------+--> hidden (n, D)
 *                                                     |
 *                                                  logits --> (n, V)
 *
 * blip2_model.lm points at the family's table (b2__opt_lm in opt.c,
 * b2__t5_lm in t5.c), set by the loader; the tables are constant.
 * Scratch (ws) is per thread and opaque: ws_reserve() creates and grows
 * it, ws_free() frees it.
 */
#ifndef BLIP2_LM_H
#define BLIP2_LM_H
#include "kv.h"

#include <stddef.h>
#include <stdint.h>

/* What an encoder-decoder family keeps of a request's encoder pass (T5:
 * the cross-attention keys and values, t5.h).  Opaque here. */
struct b2_lm_enc;

/* The rows of one forward call. */
typedef struct b2_lm_rows {
    int n;                                /* rows */
    const float *emb;                     /* (n, D) input embeddings */
    const int *seq;                       /* (n) sequence of each row: an index into kv and enc */
    const int *pos;                       /* (n) cache slot of each row */
    b2_kv *const *kv;                     /* (sequences) self-attention caches */
    const struct b2_lm_enc *const *enc;   /* (sequences) encoder state; NULL for decoder-only */
} b2_lm_rows;

typedef struct b2_lm_ops {
    const char *name;   /* "opt", "t5": blip2_model_family() */
    /* Layers and row width (floats) of a sequence's cache (b2_kv). */
    void (*kv_dims)(const blip2_model *m, size_t *layers, size_t *width);
    /* emb (n, D) = the token embeddings of ids (n). */
    void (*embed)(const blip2_model *m, const int32_t *ids, int n, float *emb);
    /* Makes *ws (NULL: none yet) hold scratch for forward() over up to rows
     * rows attending to up to ctx positions, and for prefill() over up to
     * enc_rows rows.  Keeps what it has when that is enough.  BLIP2_ENOMEM. */
    int (*ws_reserve)(const blip2_model *m, void **ws, int rows, int ctx, int enc_rows);
    void (*ws_free)(void *ws);
    /* Runs r's rows: keys and values of row i go to slot pos[i] of
     * kv[seq[i]] (len is not changed); hidden (n, D) gets the final hidden
     * states.  Rows of one sequence in slot order. */
    void (*forward)(const blip2_model *m, void *ws, const b2_lm_rows *r, float *hidden);
    /* logits (n, V) from hidden (n, D), each row independent of n.  May
     * scale hidden in place (T5's tied head): one call per hidden row. */
    void (*logits)(const blip2_model *m, float *hidden, int n, float *logits);

    /* Encoder-decoder families only (all three NULL for decoder-only): */
    /* A request's encoder state for n encoder rows.  BLIP2_ENOMEM. */
    int (*enc_new)(const blip2_model *m, int n, struct b2_lm_enc **enc);
    void (*enc_free)(struct b2_lm_enc *enc);
    /* Runs the encoder over [query (Q, D) ; embed(ids) (L)] into enc (made
     * for Q + L rows); ws reserved for enc_rows >= Q + L. */
    void (*prefill)(const blip2_model *m, void *ws, const float *query, int Q, const int32_t *ids,
                    int L, struct b2_lm_enc *enc);
} b2_lm_ops;

extern const b2_lm_ops b2__opt_lm; /* opt.c */
extern const b2_lm_ops b2__t5_lm;  /* t5.c */

#endif
