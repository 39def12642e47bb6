/*
 * t5.h - internal: the T5 encoder-decoder language model of Flan-T5 BLIP-2
 * checkpoints (T5ForConditionalGeneration as transformers v4.37.2 runs it
 * inside Blip2ForConditionalGeneration).
 *
 * The weights (struct b2_t5) hang off blip2_model.t5 when the config's
 * family is B2_FAMILY_T5; model.c binds them.  Request state is separate:
 * a decoder self-attention cache per sequence (b2_kv, shaped
 * (dec_layers, cap, H*d_kv)), the cross-attention keys and values of one
 * request (b2_t5_cross, computed once from the encoder output) and a
 * workspace per thread (b2_t5_ws).  b2__t5_lm (lm.h) is T5 behind the
 * language-model interface generation uses.
 */
#ifndef BLIP2_T5_H
#define BLIP2_T5_H
#include "kv.h"
#include "model.h"

/* One attention block: q, k, v (I, D), o (D, I) with I = heads * d_kv, no biases. */
typedef struct b2_t5_attn {
    b2_linear q, k, v, o;
} b2_t5_attn;

typedef struct b2_t5_layer {
    const float *ln_sa;      /* (D) RMSNorm weight before self-attention */
    b2_t5_attn sa;
    const float *ln_ca;      /* (D) before cross-attention (decoder only) */
    b2_t5_attn ca;           /* decoder only */
    const float *ln_ff;      /* (D) before the feed-forward */
    b2_linear wi0, wi1, wo;  /* (F, D); (F, D) only when gated; (D, F) */
} b2_t5_layer;

struct b2_t5 {
    const void *shared;      /* (V, D) token embeddings of encoder and decoder, of type shared_wt */
    b2_wtype shared_wt;      /* f32 from a folder; the stored type from a GGUF file */
    const void *lm_head;     /* (V, D): lm_head.weight, or shared when tied, of type lm_head_wt */
    b2_wtype lm_head_wt;
    float lm_scale;          /* d_model^-0.5 when tied, else 1 */
    const float *enc_rel;    /* (buckets, H) encoder block 0 relative_attention_bias */
    const float *dec_rel;    /* (buckets, H) decoder block 0 relative_attention_bias */
    b2_t5_layer *enc, *dec;  /* (t_layers), (t_dec_layers) */
    const float *enc_final, *dec_final; /* (D) final RMSNorm weights */
    int *enc_bucket;         /* (2*max_dist+1): bucket of key-query = r at [r + max_dist] */
    int *dec_bucket;         /* the same, unidirectional */
};

/* T5's relative position bucket of key_pos - query_pos = rel, as
 * T5Attention._relative_position_bucket computes it (log buckets in f32). */
int b2__t5_bucket(int rel, int bidirectional, int num_buckets, int max_distance);

/* Fills the bucket tables of m->t5 (called by the loader).  BLIP2_ENOMEM. */
int b2__t5_init_buckets(blip2_model *m);
/* Frees what m->t5 owns and m->t5 itself; NULL allowed. */
void b2__t5_free(struct b2_t5 *t5);

/* emb (n, D) = shared[ids] (rows widened to f32). */
void b2__t5_embed(const blip2_model *m, const int32_t *ids, int n, float *emb);

/* Floats of scratch b2__t5_encode needs for n rows. */
size_t b2__t5_encode_scratch(const blip2_model *m, int n);
/* Encoder: emb (n, D) -> out (n, D) after the final RMSNorm.  Every row
 * attends to all n rows (the caller passes only unmasked positions). */
void b2__t5_encode(const blip2_model *m, const float *emb, int n, float *out, float *scratch);

/* One request's cross-attention keys and values: what the decoder keeps
 * of the encoder, T5's struct b2_lm_enc (lm.h). */
typedef struct b2_lm_enc {
    b2_kv kv; /* (dec_layers, n, I) each, every slot filled: len = cap = n */
} b2_t5_cross;

/* Allocates c for an encoder output of n rows.  BLIP2_ENOMEM (c is then empty). */
int b2__t5_cross_init(b2_t5_cross *c, const blip2_model *m, int n);
void b2__t5_cross_free(b2_t5_cross *c);
/* Computes c's keys and values from the encoder output enc (c->kv.len, D). */
void b2__t5_cross_fill(const blip2_model *m, b2_t5_cross *c, const float *enc);

/* Decoder scratch for up to max_rows rows and max_ctx attended positions
 * (decoder cache or encoder length, whichever is larger). */
typedef struct b2_t5_ws {
    float *h, *x, *q, *k, *v, *a, *f0, *f1, *s; /* (rows,D) x2, (rows,I) x4, (rows,F) x2, b2__attention_scratch(1, max_ctx, d_kv) */
    int max_rows, max_ctx;
} b2_t5_ws;

int b2__t5_ws_init(b2_t5_ws *ws, const blip2_model *m, int max_rows, int max_ctx);
void b2__t5_ws_free(b2_t5_ws *ws);

/* Runs n decoder rows.  Row i is the embedding emb[i] (D floats, b2__t5_embed
 * of a token) of sequence seq[i] at
 * decoder position pos[i]: its self-attention keys and values go to slot
 * pos[i] of kvs[seq[i]] and it attends to slots 0..pos[i] (rows of one
 * sequence in position order), then to all of cross[seq[i]].  hidden
 * (n, D) gets the final-RMSNorm output.  Each row's numbers do not depend
 * on the other rows.  Does not change kv->len. */
void b2__t5_decode(const blip2_model *m, b2_t5_ws *ws, const float *emb, int n,
                   struct b2_kv *const *kvs, const b2_t5_cross *const *cross,
                   const int *seq, const int *pos, float *hidden);

/* logits (n, V) = (lm_scale * hidden (n, D)) @ lm_head^T, each row's
 * numbers independent of n (typed heads: b2__wmatmul_rows).  hidden is
 * scaled in place when the head is tied. */
void b2__t5_logits(const blip2_model *m, float *hidden, int n, float *logits);

/* Teacher-forced pass for one request: encoder over emb (n_enc, D), decoder
 * over dec (T ids, starting with decoder_start_token_id) -> logits (T, V);
 * enc_out (n_enc, D) may be NULL.  Allocates its own scratch: BLIP2_ENOMEM. */
int b2__t5_forward(const blip2_model *m, const float *emb, int n_enc, const int32_t *dec,
                   int T, float *enc_out, float *logits);

#endif
