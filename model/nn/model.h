/*
 * model.h - internal: the loaded model (immutable weights) and the stage
 * functions that run on it.
 *
 * Weights are views into the read-only mapping of a GGUF file in their
 * stored type (b2_linear.wt; norms, biases and embeddings always f32), or,
 * for a Hugging Face folder, views into the safetensors mappings when they
 * are stored as aligned f32 and f32 copies owned by the model otherwise
 * (f16 and bf16 checkpoints).  Request state (KV caches, scratch) lives outside the
 * model, so one model serves many threads.
 */
#ifndef BLIP2_ENGINE_H
#define BLIP2_ENGINE_H
#include "error.h"
#include "config.h"
#include "image.h"
#include "kernels.h"
#include "lm.h"
#include "tokenizer.h"

typedef struct b2_vision_layer {
    b2_ln ln1, ln2;          /* (Dv) */
    b2_linear qkv;           /* (3*Dv, Dv): q, k, v stacked */
    b2_linear proj;          /* (Dv, Dv) */
    b2_linear fc1, fc2;      /* (Fv, Dv), (Dv, Fv) */
} b2_vision_layer;

typedef struct b2_bert_attn {
    b2_linear q, k, v;       /* (Dq, Dq) self; k, v (Dq, Dv) for cross */
    b2_linear o;             /* (Dq, Dq) */
    b2_ln ln;                /* (Dq) post-residual */
} b2_bert_attn;

typedef struct b2_qformer_layer {
    b2_bert_attn self, cross; /* cross used only if has_cross */
    int has_cross;
    b2_linear inter, out;    /* (Fq, Dq), (Dq, Fq): the query feed-forward */
    b2_ln out_ln;            /* (Dq) */
} b2_qformer_layer;

typedef struct b2_opt_layer {
    b2_ln attn_ln, ffn_ln;   /* (D) */
    b2_linear q, k, v, o;    /* (D, D) */
    b2_linear fc1, fc2;      /* (F, D), (D, F) */
} b2_opt_layer;

typedef struct blip2_model blip2_model; /* as in blip2.h */

struct blip2_model {
    b2_config cfg;
    const b2_lm_ops *lm;      /* the language model's operations (lm.h): b2__opt_lm or b2__t5_lm */
    b2_preproc pp;
    uint64_t max_pixels;   /* blip2_load_opts.max_pixels: images above are refused (0: default) */
    b2_bpe *tok;

    /* vision */
    b2_linear patch;          /* (Dv, 3*ps*ps), the conv as a matmul over patches */
    const float *class_emb;   /* (Dv) */
    const float *pos_emb;     /* (1+P, Dv) */
    b2_vision_layer *vl;      /* (v_layers) */
    b2_ln post_ln;

    /* Q-Former */
    const float *query_tokens; /* (Q, Dq) */
    b2_ln q_ln;               /* applied to the query embeddings first */
    b2_qformer_layer *ql;     /* (q_layers) */
    b2_linear proj;           /* (Dt, Dq) language_projection */

    /* OPT */
    const void *embed_tokens;  /* (V, D) of type embed_wt */
    b2_wtype embed_wt;
    const float *embed_pos;    /* (max_pos + 2, D) */
    b2_opt_layer *tl;         /* (t_layers) */
    b2_ln final_ln;           /* d == 0 when absent */
    const void *lm_head;      /* (V, D) of type lm_head_wt */
    b2_wtype lm_head_wt;

    /* T5 (family B2_FAMILY_T5; the OPT fields above are then unused) */
    struct b2_t5 *t5;         /* t5.h */
    struct b2_t5tok *t5tok;   /* SentencePiece tokenizer (t5tok.h); tok is NULL */

    /* storage */
    const char *dtype;        /* "f32", "f16", "bf16", "q8_0": how the matrices are stored */
    b2_prec prec;             /* the math of the many-row products (every b2_linear's prec) */
    int enc_int8;             /* the vision MLP and projection in int8 (prec B2_PREC_INT8) */
    int int8_file;            /* the GGUF file carries their int8 copies (packed.h, B2_INT8_KEY) */
    void *qarena;             /* their b2_qweights (b2_linear.q), owned; with the s8 copies
                               * themselves unless they are the file's, in place */
    size_t qbytes;            /* its size */
    char math[1024];          /* that choice and why, for blip2_model_math */
    char kernels[256];        /* the decode kernel per weight type and how chosen (blip2_model_kernels) */
    char kernels_log[768];    /* the measurement behind it (blip2_model_kernels_log) */
    char weights[200];        /* how a GGUF file's weights are mapped (blip2_model_weights) */
    struct b2_gguf *gguf;     /* the mapped GGUF file, or NULL (safetensors files) */
    int locked;               /* the mapping is mlock()ed */
    struct b2_st_file **files;
    int n_files;
    void **owned;
    int n_owned, cap_owned;
};

/* The decode kernel of each typed weight type m holds, by measurement
 * (b2__wkernels_tune) or from the cache file "<gguf_path>.kernels"
 * (gguf_path may be NULL: measured, not cached), or BLIP2_KERNELS;
 * fills m->kernels and m->kernels_log (ktune.c).  Needs the weights bound.
 * Returns 0 or BLIP2_ENOMEM. */
int b2__kernels_choose(blip2_model *m, const char *gguf_path, blip2_error *err);
/* How many times (process-wide) b2__kernels_choose measured a type. */
int b2__kernels_measured(void);

/* Vision tower: px (n,3,H,W) -> out (n,T,Dv) after post_layernorm, pooled
 * (n,Dv) (may be NULL). */
int b2__vision_forward(const blip2_model *m, const float *px, int n, float *out,
                       float *pooled, blip2_error *err);

/* Q-Former: img (n,T,Dv) -> out (n,Q,Dq). */
int b2__qformer_forward(const blip2_model *m, const float *img, int n, float *out,
                        blip2_error *err);

/* ---- OPT decoder (its KV cache: kv.h; its b2_lm_ops: b2__opt_lm) ---- */

/* Scratch for b2__opt_forward, sized for up to max_rows rows and contexts
 * up to max_ctx positions. */
typedef struct b2_opt_ws {
    float *h, *x, *q, *k, *v, *a, *f, *s; /* (rows,D) x6, (rows,F), b2__attention_scratch(1, max_ctx, hd) */
    int max_rows, max_ctx;
} b2_opt_ws;

int b2__opt_ws_init(b2_opt_ws *ws, const blip2_model *m, int max_rows, int max_ctx);
void b2__opt_ws_free(b2_opt_ws *ws);

/* Runs n rows through the decoder.  Row i is the input embedding emb[i]
 * (D floats) of sequence kvs[seq[i]] at position pos[i]; its keys and
 * values are written at slot pos[i] and it attends to slots 0..pos[i] of
 * its own sequence (rows of one sequence in position order).  Writes the
 * final hidden states (n, D) into hidden.  Does not change kv->len. */
void b2__opt_forward(const blip2_model *m, b2_opt_ws *ws, const float *emb, int n,
                     b2_kv *const *kvs, const int *seq, const int *pos, float *hidden);

/* logits (n, V) = hidden (n, D) @ lm_head^T. */
void b2__opt_logits(const blip2_model *m, const float *hidden, int n, float *logits);

/* emb (n, D) = embed_tokens[ids]. */
void b2__opt_embed(const blip2_model *m, const int32_t *ids, int n, float *emb);

#endif
