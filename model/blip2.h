/*
 * blip2.h - public API of libblip2model, the BLIP-2 inference engine.
 *
 * Usage (error handling elided):
 *
 *     blip2_error err;
 *     blip2_model *m;
 *     if (blip2_model_load(&m, "/path/to/hf-folder", NULL, &err) < 0)
 *         die(err.text);
 *     float *px = malloc(blip2_pixel_values_len(m) * sizeof(float));
 *     blip2_preprocess_file(m, "photo.png", NULL, px, &err);  // (3,H,W)
 *     float *q = malloc(blip2_query_embeds_len(m) * sizeof(float));
 *     blip2_encode_image(m, px, 1, q, NULL, &err);             // (Q,Dt)
 *     blip2_gen_params gp;
 *     blip2_gen_params_default(&gp);
 *     blip2_request rq = { .query_embeds = q, .prompt = "Question: what is it? Answer:" };
 *     blip2_result res;
 *     blip2_generate(m, &rq, 1, &gp, NULL, NULL, &res, &err);
 *     puts(res.seqs[0].text);
 *     blip2_result_free(&res);
 *     blip2_model_free(m);
 *
 * Conventions: functions return 0 on success and a negative BLIP2_E* code on
 * failure, with a one-line message in the caller's blip2_error (which may be
 * NULL).  The library never logs and never exits.  A loaded model is
 * immutable and may be used from several threads at once; every call keeps
 * its own scratch state.  There is no global state: several models may be
 * loaded in one process.
 */
#ifndef BLIP2_H
#define BLIP2_H

#include <stddef.h>
#include <stdint.h>

#include "base/blip2_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes, blip2_error and blip2_strerror: base/blip2_base.h (the
 * vocabulary every layer of the engine shares). */

typedef struct blip2_model blip2_model;

/* Progress of blip2_convert, called before each tensor (i of n, name) and
 * once at the end (i == n, name NULL); bytes counts the output written so
 * far of total.  Returning non-zero cancels (BLIP2_ECANCELED). */
typedef int (*blip2_convert_cb)(void *ud, int i, int n, const char *name, uint64_t bytes,
                                uint64_t total);

typedef struct blip2_load_opts {
    int reserved;   /* zero-initialise; more options later */
    /* A Hugging Face folder is converted once into a GGUF file in this
     * directory (created if missing; the file is named after the folder's
     * identity: resolved path, each weight file's size, mtime and inode,
     * and the type) and that file is mapped.  NULL: folders are loaded
     * directly (f16/bf16 widened to f32 copies).  Both families (OPT and
     * Flan-T5) are packed. */
    const char *cache_dir;
    /* The type of that cache file: "f32", "f16", "bf16", "q8_0", "q4_0", "auto"
     * (blip2_best_weights_type()), or NULL for the checkpoint's own storage
     * type. */
    const char *cache_type;
    /* 1: mlock() the GGUF mapping (BLIP2_EIO naming RLIMIT_MEMLOCK when the
     * limit is too small). */
    int mlock;
    /* Called while a folder is converted into the cache (may be NULL). */
    blip2_convert_cb convert_cb;
    void *convert_ud;
    /* Called (with convert_ud) before a folder is converted into the cache:
     * the file it writes and its type (may be NULL). */
    void (*convert_start_cb)(void *ud, const char *path, const char *type);
    /* Called (with convert_ud) for the other cache files of the same folder
     * once the model is loaded from the cache: removed 1 for a stale one
     * (an earlier version of the folder, or a conversion that died), which
     * is deleted; 0 for one in another type, which is kept (may be NULL). */
    void (*cache_note_cb)(void *ud, const char *path, uint64_t bytes, int removed);
    /* Decoded images above this many pixels (width x height) are refused;
     * 0: the default, 64 Mpx. */
    uint64_t max_pixels;
    /* The math of the products with many rows (vision encoder, Q-Former,
     * prefill, T5 encoder): "f32", "bf16" or "auto"/NULL.  auto (unless
     * the environment variable BLIP2_PRECISION says otherwise) follows the
     * weights as the reference does: a folder and an f32 GGUF compute in
     * f32; a GGUF of a reduced type (f16, bf16, q8_0, q4_0) in bf16 (bf16 x bf16
     * products accumulated in f32, oneDNN) where the CPU has native bf16
     * (AVX512-BF16, AMX), else f32.  bf16 asked for where it is not native
     * (or for a folder) falls back to f32; blip2_model_math says which and
     * why.  "int8": the vision encoder's attention output projection and
     * MLP as u8 x s8 (VNNI; else as auto), from the file's int8 copies in
     * place (BLIP2_CONVERT_INT8_VISION) or a private copy made at load; auto
     * picks int8 for them too when the file carries those copies.
     * Anything else: BLIP2_EINVAL. */
    const char *precision;
} blip2_load_opts;

/* The weights type that runs best on this CPU, for the weights cache:
 * "q8_0" with the AVX2 or AVX-512 products (bench/RESULTS.md, 2026-11-27 04:30),
 * else "f16".  Static string. */
const char *blip2_best_weights_type(void);

/* Loads a model from a packed GGUF file (blip2ctl convert; docs/gguf.md),
 * mapped read-only and MAP_SHARED with its weights used in place in their
 * stored type (f32, f16, bf16, q8_0, q4_0), or from a Hugging Face BLIP-2 folder
 * (config.json, model.safetensors or sharded model-*.safetensors + index,
 * tokenizer and preprocessor files; weights in f32, f16 or bf16).  opts
 * may be NULL.  On success *out is a new model the caller frees with
 * blip2_model_free(). */
int blip2_model_load(blip2_model **out, const char *path,
                     const blip2_load_opts *opts, blip2_error *err);
/* Frees a model; NULL is allowed. */
void blip2_model_free(blip2_model *m);

/* The mapped GGUF file of a model loaded from one (or from the cache):
 * its path and the mapping's address and size; 0 and NULLs for a model
 * loaded from a folder.  Borrowed, valid until blip2_model_free. */
int blip2_model_mapping(const blip2_model *m, const char **path, const void **addr,
                        size_t *size);

/* ---- packing a Hugging Face folder into one GGUF file ---- */


typedef struct blip2_convert_stats {
    int tensors;            /* written */
    int n_f32, n_f16, n_bf16, n_q8_0; /* tensors per stored type */
    int n_q4_0;
    int n_int8;             /* matrices with int8 copies (BLIP2_CONVERT_INT8_VISION):
                             * 3 more tensors each, counted in tensors only */
    uint64_t bytes;         /* size of the file */
    double seconds;
} blip2_convert_stats;

/* Converts the Hugging Face BLIP-2 folder src (OPT or Flan-T5) into the
 * GGUF file out, with the big matrices (linear weights, embed_tokens or
 * T5's shared, lm_head) stored as type
 * ("f32", "f16", "bf16", "q8_0", "q4_0") and everything else (layer
 * norms, biases, position/class embeddings, T5's relative position biases,
 * query tokens) as f32; q8_0 and q4_0 are for the language model only
 * (the vision encoder's, Q-Former's and projection's matrices become
 * bf16) and need rows of a multiple of 32 values, other matrices fall
 * back to f16.  Hyper-
 * parameters, tokenizer and preprocessor settings go into the metadata.
 * The file is written under a temporary name in out's directory and
 * renamed when complete and verified (loaded back): an interrupted run
 * never leaves a file at out.  cb and stats may be NULL. */
int blip2_convert(const char *src, const char *out, const char *type, blip2_convert_cb cb,
                  void *ud, blip2_convert_stats *stats, blip2_error *err);

/* blip2_convert_opt's flags.  BLIP2_CONVERT_INT8_VISION: the file also
 * carries, for each vision layer's attention output projection and MLP
 * (fc1, fc2), its weight quantised for int8 math as the loader would
 * quantise it (s8 rows, an f32 scale and an i32 row sum per output
 * channel), so that int8 math uses them in place from the shared mapping
 * instead of a private copy per process (~720 MiB for blip2-opt-2.7b);
 * about a quarter more file (docs/gguf.md "Math"). */
#define BLIP2_CONVERT_INT8_VISION 1u

/* blip2_convert with flags (0: blip2_convert); unknown flags: BLIP2_EINVAL. */
int blip2_convert_opt(const char *src, const char *out, const char *type, unsigned flags, blip2_convert_cb cb,
                      void *ud, blip2_convert_stats *stats, blip2_error *err);

/* Shapes. */
int blip2_image_size(const blip2_model *m);      /* H == W of pixel_values */
size_t blip2_pixel_values_len(const blip2_model *m); /* 3*H*W floats */
int blip2_num_query_tokens(const blip2_model *m);   /* Q */
int blip2_text_hidden(const blip2_model *m);        /* Dt */
size_t blip2_query_embeds_len(const blip2_model *m); /* Q*Dt floats */
int blip2_vocab_size(const blip2_model *m);
/* OPT max_position_embeddings; T5 n_positions.  Bounds Q + prompt + new tokens. */
int blip2_max_positions(const blip2_model *m);
/* The id every generated sequence starts with: OPT bos, T5 decoder_start_token_id. */
int32_t blip2_bos_id(const blip2_model *m);
/* Storage type of the checkpoint's big matrices: "f32", "f16", "bf16",
 * "q8_0", "q4_0" (static). */
const char *blip2_model_dtype(const blip2_model *m);
/* The math chosen at load and why, e.g. "bf16 (reduced weights,
 * brg:avx512_core_bf16); oneDNN 2.6.3, avx512_core_bf16; decode kernels
 * avx512", and for a GGUF how its mapping is paged, e.g. "; weights in
 * 2 MiB pages: 100 % of the 4.7 GiB cached" (docs/gguf.md); for logs
 * (blip2d's "math:" line, blip2-infer -v).  Borrowed, valid until
 * blip2_model_free. */
const char *blip2_model_math(const blip2_model *m);
/* The parts of that choice, for status displays (static or borrowed,
 * valid until blip2_model_free):
 * precision: the math of the many-row products, "f32" or "bf16";
 * backend: who computes them, "oneDNN" (bf16 math; per shape unless the
 *   own path measured faster) or "own" (OpenBLAS sgemm and the engine's
 *   kernels);
 * kernels: the decode product per weight type the model holds and how it
 *   was chosen, e.g. "q8_0 avx2 (measured), f32 avx2 (kernels.c, not
 *   tuned)": "measured" at this load (the fastest implementation within
 *   the type's error bound of the portable one, on the model's own
 *   weights), "cached" (read from the file "<model.gguf>.kernels" written
 *   by an earlier load on this CPU and version) or "forced by
 *   BLIP2_KERNELS";
 * kernels_log: the measurement behind it (rates, refusals, cache file). */
const char *blip2_model_precision(const blip2_model *m);
const char *blip2_model_backend(const blip2_model *m);
const char *blip2_model_kernels(const blip2_model *m);
const char *blip2_model_kernels_log(const blip2_model *m);
/* How a GGUF file's weights are mapped, the clause that ends
 * blip2_model_math, e.g. "weights: 3.4 GiB read in at load: 100 % of 3.4
 * GiB in 2 MiB pages" (docs/gguf.md); "" where no GGUF file is mapped (a
 * folder loaded without the weights cache).  Borrowed, valid until
 * blip2_model_free. */
const char *blip2_model_weights(const blip2_model *m);
/* Model family: "opt" or "t5" (Flan-T5), from config.json (static). */
const char *blip2_model_family(const blip2_model *m);
/* Layer counts for status displays. */
int blip2_vision_layers(const blip2_model *m);
int blip2_qformer_layers(const blip2_model *m);
int blip2_text_layers(const blip2_model *m);
int32_t blip2_eos_id(const blip2_model *m);

/* ---- image preprocessing (BlipImageProcessor) ---- */

/* blip2_image_opts: base/blip2_base.h */

/* Decodes an encoded image (PNG, JPEG, WebP, GIF, TIFF: the formats
 * blip2_image_probe accepts, base/blip2_base.h) from memory and writes
 * pixel_values (3,H,W) f32 into px (blip2_pixel_values_len floats,
 * caller-owned).  opts may be NULL. */
int blip2_preprocess(const blip2_model *m, const void *bytes, size_t len,
                     const blip2_image_opts *opts, float *px, blip2_error *err);
/* The same, reading the file at path. */
int blip2_preprocess_file(const blip2_model *m, const char *path,
                          const blip2_image_opts *opts, float *px,
                          blip2_error *err);

/* ---- vision encoder + Q-Former + projection ---- */

/* Optional stage outputs of blip2_encode_image; any pointer may be NULL.
 * Each is caller-owned, sized for n images. */
typedef struct blip2_stages {
    float *vision_last_hidden_state; /* (n, 1+P, Dv) after post_layernorm */
    float *vision_pooler_output;     /* (n, Dv) */
    float *qformer_last_hidden_state;/* (n, Q, Dq) */
} blip2_stages;

int blip2_vision_hidden(const blip2_model *m);   /* Dv */
int blip2_vision_tokens(const blip2_model *m);   /* 1+P */
int blip2_qformer_hidden(const blip2_model *m);  /* Dq */

/* pixel values (n,3,H,W) -> projected query embeddings (n,Q,Dt) in out:
 * blip2_image_features with query_embeds = out and the stages as its other
 * outputs (the general form, below). */
int blip2_encode_image(const blip2_model *m, const float *px, int n,
                       float *out, blip2_stages *stages, blip2_error *err);

/* ---- tokenizer ---- */

/* Encodes text as the processor does (add_special: OPT's leading BOS, or
 * T5's trailing </s>).  *ids is new (caller frees with free()). */
int blip2_tokenize(const blip2_model *m, const char *text, int add_special,
                   int32_t **ids, size_t *n, blip2_error *err);
/* Decodes ids to UTF-8 text (invalid bytes become U+FFFD), with the
 * tokenizer's clean-up of spaces; *text is new (free()). */
int blip2_detokenize(const blip2_model *m, const int32_t *ids, size_t n,
                     int skip_special, char **text, blip2_error *err);
/* Raw bytes of one token (byte-level BPE; for T5 the SentencePiece piece
 * with "▁" as a space), for streaming; returns the byte count (0 for
 * special tokens) or a negative code; writes at most cap. */
int blip2_token_bytes(const blip2_model *m, int32_t id, char *buf, size_t cap);

/* ---- generation ---- */

typedef struct blip2_gen_params {
    int max_new_tokens;       /* default 20; 1..max positions */
    int min_new_tokens;       /* default 0 */
    int num_beams;            /* default 1 (greedy or sampling); 1..64 */
    float length_penalty;     /* default 1.0 (beam search) */
    int early_stopping;       /* default 0 (beam search, as the reference) */
    float repetition_penalty; /* default 1.0 = off; > 0 */
    int do_sample;            /* default 0: greedy / beam search */
    float temperature;        /* default 1.0; > 0 (sampling) */
    int top_k;                /* default 50, 0 = off (sampling) */
    float top_p;              /* default 1.0 = off; (0, 1] (sampling) */
    uint64_t seed;            /* sampling seed: equal seeds give equal output */
    int num_return_sequences; /* default 1; <= num_beams for beam search,
                                 any (<= 16) for sampling, 1 for greedy */
    const char *const *stop;  /* stop strings (borrowed), or NULL */
    int n_stop;
} blip2_gen_params;

/* Sets the defaults above (the reference's generation defaults). */
void blip2_gen_params_default(blip2_gen_params *p);

/* One sequence to generate for. */
typedef struct blip2_request {
    const float *query_embeds; /* (Q,Dt), from blip2_encode_image; copied */
    const char *prompt;        /* UTF-8 or NULL; tokenised with BOS (T5: + </s>) */
    const int32_t *prompt_ids; /* alternatively the ids (with BOS / </s>); used if non-NULL */
    size_t n_prompt_ids;
} blip2_request;

enum {
    BLIP2_FINISH_LENGTH = 0, /* max_new_tokens reached */
    BLIP2_FINISH_EOS = 1,    /* the model produced eos */
    BLIP2_FINISH_STOP = 2,   /* a stop string appeared (text ends before it) */
    BLIP2_FINISH_CANCELED = 3
};

typedef struct blip2_seq_result {
    int32_t *ids;   /* [bos] + new tokens, as the reference's generate returns
                       (T5: [decoder_start 0] + new tokens (+ eos 1)) */
    size_t n_ids;
    char *text;     /* decode(ids, skip_special_tokens=True), cut at a stop string */
    int finish;     /* BLIP2_FINISH_* */
} blip2_seq_result;

typedef struct blip2_result {
    blip2_seq_result *seqs; /* n_requests * num_return_sequences, by request */
    int n;
} blip2_result;

void blip2_result_free(blip2_result *r);

/* Token callback.  seq is the sequence index inside the session (0 for
 * greedy; 0..num_return_sequences-1 for sampling); for beam search it is
 * called once per step with seq = -1 and token = -1 (nothing is final
 * before the end).  Return non-zero to cancel the session. */
typedef int (*blip2_token_cb)(void *user, int seq, int32_t token);

/* ---- step-wise generation (what the daemon batches) ----
 *
 *     blip2_ctx *ctx; blip2_ctx_new(m, &ctx);
 *     blip2_session *s[2];
 *     blip2_session_new(m, &rq0, &gp, cb, u0, &s[0], &err);
 *     blip2_session_new(m, &rq1, &gp, cb, u1, &s[1], &err);
 *     while (!blip2_session_done(s[0]) || !blip2_session_done(s[1]))
 *         blip2_step(ctx, s, 2, &err);   // one batched decoder call
 *     blip2_session_result(s[0], &res0, &err); ...
 *
 * Sessions may join and leave between steps; a session's output does not
 * depend on what it was batched with.
 */
typedef struct blip2_session blip2_session;
typedef struct blip2_ctx blip2_ctx;

/* Scratch for blip2_step (grows as needed); one per thread. */
int blip2_ctx_new(const blip2_model *m, blip2_ctx **out, blip2_error *err);
void blip2_ctx_free(blip2_ctx *ctx);
/* OPT: while other sessions are decoding in the same blip2_step, a new
 * session's prefill (query tokens + prompt) is fed at most `rows` decoder
 * rows per step, over as many steps as it takes, so the others' next
 * tokens do not wait for the whole prefill.  0 (the default): the whole
 * prefill in one step.  Results do not change (a row only attends to its
 * own cache, and every product gives a row the same bits whatever the
 * batch); only when the first token comes.  Flan-T5's encoder runs whole. */
void blip2_ctx_set_prefill_chunk(blip2_ctx *ctx, int rows);

/* Validates parameters, tokenises the prompt and allocates the caches.
 * No model computation yet.  cb may be NULL.  *out is new
 * (blip2_session_free). */
int blip2_session_new(const blip2_model *m, const blip2_request *rq,
                      const blip2_gen_params *p, blip2_token_cb cb, void *user,
                      blip2_session **out, blip2_error *err);
/* Advances every session that is not done by one token (the first call
 * of a session runs its prefill, or the first chunk of it, see
 * blip2_ctx_set_prefill_chunk: then no token until its last chunk): one
 * decoder call for all rows. */
int blip2_step(blip2_ctx *ctx, blip2_session *const *s, int n, blip2_error *err);
int blip2_session_done(const blip2_session *s);
/* Rows the session's next step feeds the decoder (what is left of the
 * prefill first; a chunked step takes fewer). */
int blip2_session_rows(const blip2_session *s);
/* 1 until the session's prefill has completed (its first token chosen). */
int blip2_session_prefilling(const blip2_session *s);
/* Stops the session now (its finish reason becomes CANCELED). */
void blip2_session_cancel(blip2_session *s);
/* The finished session's sequences (num_return_sequences of them). */
int blip2_session_result(const blip2_session *s, blip2_result *res, blip2_error *err);
void blip2_session_free(blip2_session *s);

/* Generates for n requests together (a batch) with blip2_step.  Each row
 * gives the same ids as generating it alone.  The callback's seq argument
 * is request * num_return_sequences + sequence.  res is filled on success
 * (free with blip2_result_free). */
int blip2_generate(const blip2_model *m, const blip2_request *rq, int n,
                   const blip2_gen_params *p, blip2_token_cb cb, void *user,
                   blip2_result *res, blip2_error *err);

/* Incremental detokenisation for streaming: given all ids so far (with the
 * leading bos), returns in *piece / *len the text that became final since
 * the previous call.  Never a broken UTF-8 character; text that a later
 * token could still change (a trailing space, an incomplete character) or
 * that could begin one of the n_stop stop strings is held back until
 * final != 0, and nothing from a stop string on is ever returned.  The
 * pieces concatenate to the decoded text as blip2_session_result gives it
 * (should a later token ever rewrite text already returned, nothing more
 * is returned and the full decode stays authoritative).  *piece points
 * into st and stays valid until the next call. */
typedef struct blip2_stream {
    char *text;     /* last full decode */
    size_t emitted; /* bytes of text already returned */
} blip2_stream;
int blip2_stream_piece(const blip2_model *m, blip2_stream *st, const int32_t *ids,
                       size_t n, int final, const char *const *stop, int n_stop,
                       const char **piece, size_t *len, blip2_error *err);
void blip2_stream_free(blip2_stream *st);

/* Plain forward pass of the language model on [query_embeds ; embed(ids)]
 * for one request; writes the last position's logits (V floats) and, if
 * all_logits is non-NULL, every position's ((Q+L),V).  For T5 the
 * encoder reads [query_embeds ; shared(ids)] and the logits are those of
 * the first decoder step (decoder_start_token_id), one row: last_logits,
 * and all_logits gets the same V floats. */
int blip2_forward_logits(const blip2_model *m, const blip2_request *rq,
                         float *last_logits, float *all_logits,
                         blip2_error *err);

/* ---- Blip2Model features (get_image_features, get_qformer_features,
 * get_text_features of transformers 4.37.2) ----
 *
 *     blip2_image_features_out f = { .vision_pooler_output = vp, .query_embeds = q };
 *     blip2_image_features(m, px, 1, &f, &err);          // runs what f asks for
 *     float *lg = malloc(sizeof(float) * n_ids * blip2_vocab_size(m));
 *     blip2_text_features(m, ids, n_ids, lg, NULL, &err);  // (L,V), OPT only
 */

/* Outputs of blip2_image_features; every pointer may be NULL (not wanted).
 * Each is caller-owned, sized for n images, f32 row-major. */
typedef struct blip2_image_features_out {
    float *vision_last_hidden_state;  /* (n, T, Dv) after post_layernorm */
    float *vision_pooler_output;      /* (n, Dv): post_layernorm again on token 0 */
    float *qformer_last_hidden_state; /* (n, Q, Dq): the query outputs */
    float *qformer_pooler_output;     /* (n, Dq): qformer_last_hidden_state[:, 0] */
    float *query_embeds;              /* (n, Q, Dt): language_projection output */
} blip2_image_features_out;

/* pixel values (n,3,H,W) -> the requested outputs of *out.  Runs only the
 * stages they need (vision outputs alone skip the Q-Former).  All NULL is
 * a no-op.  Any model family. */
int blip2_image_features(const blip2_model *m, const float *px, int n,
                         const blip2_image_features_out *out, blip2_error *err);

/* get_text_features: the language model on the text alone (no image, no
 * query tokens), ids (n, with the leading BOS as blip2_tokenize adds it)
 * at positions 0..n-1.  Writes every position's next-token logits (n, V)
 * into logits and/or the last position's (V) into last_logits (either may
 * be NULL, not both).  OPT models only: BLIP2_EUNSUPPORTED for other
 * families; BLIP2_ETOOBIG beyond blip2_max_positions; BLIP2_EINVAL for an
 * id outside the vocabulary. */
int blip2_text_features(const blip2_model *m, const int32_t *ids, size_t n,
                        float *logits, float *last_logits, blip2_error *err);

/* Call first in main() of a program that computes with the engine (argv
 * as main got it).  Unless the environment already chooses
 * (OMP_WAIT_POLICY or GOMP_SPINCOUNT set) or the program runs under
 * valgrind, it executes the program again (/proc/self/exe: the same
 * process id, arguments and open descriptors) with OMP_WAIT_POLICY=PASSIVE,
 * so that oneDNN's idle OpenMP threads sleep instead of spinning on the
 * CPUs the engine needs next (process.c says why it takes an exec).
 * Returns only when it did not execute again; then nothing has changed
 * but that variable and, with glibc, malloc's thresholds: freed memory up
 * to 256 MiB and blocks up to 32 MiB stay on the heap for the next request
 * (mallopt M_TRIM_THRESHOLD, M_MMAP_THRESHOLD), so it does not take a page
 * fault on every page of its key/value cache again; not when GLIBC_TUNABLES
 * sets glibc.malloc.* or MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
 * is set.  A long-lived program hands the heap back when idle
 * (malloc_trim), as blip2d does. */
void blip2_process_prepare(char **argv);

#ifdef __cplusplus
}
#endif
#endif
