/*
 * bench_engine.c - times the engine's stages on a model folder (random
 * weights at real shapes from gen_weights, or a real checkpoint) and puts
 * each next to the machine's limits measured in the same run.
 *
 *   load (blip2_model_load; f16/bf16 converted to f32 here)
 *   per round r = 1..R:
 *     limits:  OpenBLAS sgemm at the ViT's fc1 shape (T x Dv @ (F x Dv)^T,
 *              the engine's layout) -> GFLOP/s; memory read of >= 2 GiB
 *              with a multi-accumulator SIMD loop on as many threads as
 *              OpenBLAS uses (AVX-512 / AVX2 / portable, chosen at run time)
 *              -> GB/s
 *     vision:  b2__vision_forward, one image           FLOP / time / sgemm
 *     qformer: b2__qformer_forward + language projection     "
 *     prefill: b2__opt_forward over Q + L rows, logits of the last row  "
 *              (T5: b2__t5_encode over Q + L rows + the cross-attention
 *              keys and values of every decoder block)
 *     decode:  S steps of one token (forward + logits + argmax); per token
 *              the bytes of every OPT weight and the KV cache read / time
 *              / memory GB/s (T5: every decoder weight except the cross
 *              k/v projections, lm_head, self and cross caches)
 *     caption: the public API end to end: [blip2_preprocess_file of
 *              --image] + blip2_encode_image + blip2_generate (greedy,
 *              no prompt, exactly S new tokens); its ratio is the time the
 *              stages would take at the limits over the time taken
 *     versus:  with --versus-model FILE / --versus-precision P, a second
 *              model of the same shapes (P: --model in that math) runs
 *              prefill, decode and caption right after the first, on the
 *              same buffers: its time over the first's, per round; with
 *              --versus-prefetch-next BYTES the second is --model itself
 *              with that BLIP2_PREFETCH_NEXT
 *   -> a table of medians over rounds; each ratio is taken against the
 *      limits of its own round (the host's speed drifts), then the median.
 *
 * Uses the engine's internal header (model/nn/model.h) to call stages one by one.
 */
#include "blip2.h"
#include "model.h"
#include "t5.h"
#include "membw.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static float *rand_buf(size_t n, float scale, uint64_t seed)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p) return NULL;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        p[i] = scale * ((float)(x >> 40) * (1.0f / 8388608.0f) - 1.0f);
    }
    return p;
}

/* ---- the benchmark ---- */

typedef struct opts {
    const char *model;
    int rounds, warmup, steps, threads, verbose, batch;
    double mem_gib;
    const char *prompt, *image;
    const char *versus_model, *versus_precision; /* --versus-model, --versus-precision */
    long versus_pfn;          /* --versus-prefetch-next (-1: none) */
    int do_vision, do_qformer, do_lm, do_caption, limits_only;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: bench_engine --model DIR [options]\n"
        "  --rounds N        measurement rounds; medians over them (default 3)\n"
        "  --warmup N        uncounted rounds first (default 1): a process's first products\n"
        "                    create oneDNN's primitives and time both paths of each shape\n"
        "  --decode-steps N  decode steps per round, and new tokens of the caption (default 20)\n"
        "  --batch N         OPT decode: N sequences per step (copies of the prefilled\n"
        "                    cache), per token = per step / N (default 1)\n"
        "  --prompt TEXT     prompt after the 32 query tokens (default\n"
        "                    \"Question: what is shown in this picture? Answer:\")\n"
        "  --threads N       OpenBLAS threads (default: OpenBLAS's own choice)\n"
        "  --mem-gib G       memory-read buffer size (default 2, at least 2 for a fair limit)\n"
        "  --tile-rows N     typed weights with many rows: W rows converted to f32 per sgemm\n"
        "                    (b2__wtile_rows, default 256)\n"
        "  --image FILE      caption this image (its decoding and resize are timed too);\n"
        "                    default: random pixel values\n"
        "  --only LIST       stages to run: vision,qformer,lm,caption (default all)\n"
        "  --versus-model FILE\n"
        "                    a second model of the same shapes (e.g. the q4_0 file of a\n"
        "                    q8_0 --model): its prefill, decode and caption run right after\n"
        "                    the first one's in every round, and the median of the per-round\n"
        "                    time ratios is printed\n"
        "  --versus-precision P\n"
        "                    the same, with --model loaded again in math P (f32, bf16, int8):\n"
        "                    the f32-math path of a reduced file in the same run\n"
        "  --versus-prefetch-next BYTES\n"
        "                    the same, the same model with BLIP2_PREFETCH_NEXT=BYTES (the\n"
        "                    next product's bytes a waiting thread reads; 0 = none)\n"
        "  --limits-only     measure only the limits (sgemm at every ViT shape, memory\n"
        "                    read); needs no model\n"
        "  -v                per-round figures, and the products that ran on oneDNN\n");
}

static int parse(opts *o, int argc, char **argv)
{
    *o = (opts){.rounds = 3, .warmup = 1, .steps = 20, .threads = 0, .mem_gib = 2.0, .batch = 1,
                .prompt = "Question: what is shown in this picture? Answer:",
                .do_vision = 1, .do_qformer = 1, .do_lm = 1, .do_caption = 1, .versus_pfn = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(a, "-v")) { o->verbose = 1; continue; }
        if (!strcmp(a, "--limits-only")) { o->limits_only = 1; continue; }
        if (!v) { fprintf(stderr, "bench_engine: %s needs a value\n", a); return -1; }
        i++;
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--rounds")) o->rounds = atoi(v);
        else if (!strcmp(a, "--warmup")) o->warmup = atoi(v);
        else if (!strcmp(a, "--decode-steps")) o->steps = atoi(v);
        else if (!strcmp(a, "--batch")) o->batch = atoi(v);
        else if (!strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--image")) o->image = v;
        else if (!strcmp(a, "--versus-model")) o->versus_model = v;
        else if (!strcmp(a, "--versus-precision")) o->versus_precision = v;
        else if (!strcmp(a, "--versus-prefetch-next")) o->versus_pfn = atol(v) >= 0 ? atol(v) : 0;
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else if (!strcmp(a, "--mem-gib")) o->mem_gib = atof(v);
        else if (!strcmp(a, "--tile-rows")) b2__wtile_rows = atoi(v) > 0 ? atoi(v) : b2__wtile_rows;
        else if (!strcmp(a, "--only")) {
            o->do_vision = strstr(v, "vision") != NULL;
            o->do_qformer = strstr(v, "qformer") != NULL;
            o->do_lm = strstr(v, "lm") != NULL;
            o->do_caption = strstr(v, "caption") != NULL;
        } else { fprintf(stderr, "bench_engine: unknown option %s\n", a); return -1; }
    }
    if ((!o->model && !o->limits_only) || o->rounds < 1 || o->warmup < 0 || o->steps < 1 || o->mem_gib <= 0 ||
        o->batch < 1 || o->batch > 64 || (!!o->versus_model + !!o->versus_precision + (o->versus_pfn >= 0) > 1)) {
        usage(stderr);
        return -1;
    }
    return 0;
}

static long rss_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t fl = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl)) v = atol(line + fl + 1);
    if (f) fclose(f);
    return v;
}

/* FLOP counts of the stages (multiply-adds count 2). */
static double vision_flop(const b2_config *c)
{
    const double D = c->v_hidden, F = c->v_inter, g = c->image_size / c->patch_size, P = g * g, T = 1 + P;
    const double K = 3.0 * c->patch_size * c->patch_size;
    return 2 * P * K * D + c->v_layers * (2 * T * D * (3 * D + D + 2 * F) + 4 * T * T * D);
}

static double qformer_flop(const b2_config *c)
{
    const double D = c->q_hidden, F = c->q_inter, Q = c->num_query, Dv = c->v_hidden;
    const double g = c->image_size / c->patch_size, T = 1 + g * g;
    double f = 0;
    for (int l = 0; l < c->q_layers; l++) {
        f += 8 * Q * D * D + 4 * Q * Q * D + 4 * Q * D * F;
        if (l % c->q_cross_freq == 0) f += 4 * Q * D * D + 4 * T * Dv * D + 4 * Q * T * D;
    }
    return f + 2 * Q * D * c->t_hidden;
}

/* n rows at positions p0..p0+n-1, plus logits for one row */
static double opt_flop(const b2_config *c, int n, int p0)
{
    const double D = c->t_hidden, F = c->t_ffn;
    double att = 0;
    for (int i = 0; i < n; i++) att += 4.0 * (p0 + i + 1) * D;
    return c->t_layers * (2.0 * n * (4 * D * D + 2 * D * F) + att) + 2.0 * D * c->t_vocab;
}

static double lin_bytes(const b2_linear *l)
{
    return (double)b2__wt_row_bytes(l->wt, l->in) * l->out + (l->b ? 4.0 * l->out : 0);
}

/* bytes of every OPT weight as stored in memory (f32 after widening at
 * load, or the typed matrices of a GGUF file): set once the model is
 * loaded */
static double opt_weight_bytes;

static void opt_weight_bytes_init(const blip2_model *m)
{
    const b2_config *c = &m->cfg;
    double b = (double)b2__wt_row_bytes(m->lm_head_wt, c->t_hidden) * c->t_vocab;
    for (int l = 0; l < c->t_layers; l++) {
        const b2_opt_layer *L = &m->tl[l];
        b += lin_bytes(&L->q) + lin_bytes(&L->k) + lin_bytes(&L->v) + lin_bytes(&L->o) +
             lin_bytes(&L->fc1) + lin_bytes(&L->fc2) + (c->t_ln_affine ? 4.0 * 4 * c->t_hidden : 0);
    }
    opt_weight_bytes = b;
}

/* bytes read by one decode step of nseq sequences at position pos: every
 * weight once and the keys and values of pos+1 positions per sequence */
static double decode_bytes_n(const b2_config *c, int pos, int nseq)
{
    const double D = c->t_hidden;
    return opt_weight_bytes + nseq * 4.0 * c->t_layers * 2.0 * (pos + 1) * D;
}

static double decode_bytes(const b2_config *c, int pos) { return decode_bytes_n(c, pos, 1); }

/* T5: encoder over n rows + the cross keys and values of every decoder
 * block from its output (no logits). */
static double t5_enc_flop(const b2_config *c, int n)
{
    const double D = c->t_hidden, F = c->t_ffn, Di = (double)c->t_heads * c->t_dkv;
    const double ff = (c->t_gated ? 3.0 : 2.0) * D * F;
    return c->t_layers * (2.0 * n * (4 * D * Di + ff) + 4.0 * n * n * Di) + c->t_dec_layers * 4.0 * n * D * Di;
}

/* T5: bytes one decoder step at position pos reads, with n encoder rows:
 * every decoder weight but the cross k/v projections (used once per
 * request) as stored (f32 after widening at load, or the GGUF file's
 * types), the f32 norms, lm_head, the token's embedding row, and the f32
 * self cache of pos+1 positions and cross cache of n rows.  Set up once
 * the model is loaded. */
static double t5_weight_bytes;

static void t5_weight_bytes_init(const blip2_model *m)
{
    const b2_config *c = &m->cfg;
    const struct b2_t5 *t = m->t5;
    double b = (double)b2__wt_row_bytes(t->lm_head_wt, c->t_hidden) * c->t_vocab +
               (double)b2__wt_row_bytes(t->shared_wt, c->t_hidden) + 4.0 * c->t_hidden;
    for (int l = 0; l < c->t_dec_layers; l++) {
        const b2_t5_layer *L = &t->dec[l];
        b += lin_bytes(&L->sa.q) + lin_bytes(&L->sa.k) + lin_bytes(&L->sa.v) + lin_bytes(&L->sa.o) +
             lin_bytes(&L->ca.q) + lin_bytes(&L->ca.o) + lin_bytes(&L->wi0) + lin_bytes(&L->wo) +
             (c->t_gated ? lin_bytes(&L->wi1) : 0) + 3 * 4.0 * c->t_hidden;
    }
    t5_weight_bytes = b;
}

static double t5_decode_bytes(const b2_config *c, int pos, int n)
{
    const double Di = (double)c->t_heads * c->t_dkv;
    return t5_weight_bytes + 4.0 * c->t_dec_layers * (2.0 * (pos + 1) * Di + 2.0 * n * Di);
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

enum { S_VISION, S_QFORMER, S_PREFILL, S_DECODE, S_CAPTION, S_N };
static const char *const stage_name[S_N] = {"vision encoder", "Q-Former + proj", "prefill", "decode (per step)",
                                            "caption (end to end)"};

/* Median rate of 5 sgemm calls x (m, k) @ w (n, k)^T: the engine's layout. */
static double sgemm_rate(const float *x, const float *w, float *y, int m, int n, int k)
{
    double v[5];
    for (int i = 0; i < 5; i++) {
        double t0 = b2b_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
        v[i] = 2.0 * m * n * k / (b2b_now() - t0) / 1e9;
    }
    return b2b_median(v, 5);
}

/* Median of 3 read passes over the buffer. */
static double mem_rate(b2b_read_fn fn, const float *buf, size_t n, int nt)
{
    double v[3];
    for (int i = 0; i < 3; i++) v[i] = b2b_mem_pass(fn, buf, n, nt);
    return b2b_median(v, 3);
}

/* --limits-only: sgemm at each ViT-g shape (both weight layouts) and the
 * memory read, without a model. */
static int limits_only(const opts *o, b2b_read_fn rfn, const char *rname, int nt)
{
    static const struct { const char *what; int m, n, k; } sh[] = {
        {"fc1   257x1408 @ 1408x6144", 257, 6144, 1408}, {"qkv   257x1408 @ 1408x4224", 257, 4224, 1408},
        {"proj  257x1408 @ 1408x1408", 257, 1408, 1408}, {"fc2   257x6144 @ 6144x1408", 257, 1408, 6144},
        {"head  257x88 @ 88x257     ", 257, 257, 88},    {"head  257x257 @ 257x88    ", 257, 88, 257},
        {"OPT   44x2560 @ 2560x10240", 44, 10240, 2560},
    };
    float *a = rand_buf((size_t)257 * 6144, 1.0f, 2), *b = rand_buf((size_t)6144 * 6144, 0.05f, 3);
    float *cc = malloc(sizeof(float) * (size_t)257 * 10240);
    const size_t mem_n = ((size_t)(o->mem_gib * 1073741824.0) / sizeof(float)) & ~(size_t)1023;
    float *mem = b2b_alloc_large(mem_n * sizeof(float));
    if (!a || !b || !cc || !mem) { fprintf(stderr, "bench_engine: out of memory\n"); return 1; }
    for (size_t i = 0; i < mem_n; i++) mem[i] = (float)(i & 7);
    printf("%-28s %14s %14s\n", "sgemm (median of rounds)", "x @ W^T", "x @ W");
    for (size_t si = 0; si < sizeof sh / sizeof sh[0]; si++) {
        double g[2];
        for (int tr = 0; tr < 2; tr++) {
            double v[64];
            int R = o->rounds * 5 > 64 ? 64 : o->rounds * 5;
            for (int r = -1; r < R; r++) {
                double t0 = b2b_now();
                cblas_sgemm(CblasRowMajor, CblasNoTrans, tr ? CblasNoTrans : CblasTrans, sh[si].m, sh[si].n,
                            sh[si].k, 1.0f, a, sh[si].k, b, tr ? sh[si].n : sh[si].k, 0.0f, cc, sh[si].n);
                if (r >= 0) v[r] = 2.0 * sh[si].m * sh[si].n * sh[si].k / (b2b_now() - t0) / 1e9;
            }
            g[tr] = b2b_median(v, R);
        }
        printf("%-28s %8.1f GFLOP/s %8.1f GFLOP/s\n", sh[si].what, g[0], g[1]);
    }
    double v[64];
    int R = o->rounds * 3 > 64 ? 64 : o->rounds * 3;
    b2b_mem_pass(rfn, mem, mem_n, nt);
    for (int r = 0; r < R; r++) v[r] = b2b_mem_pass(rfn, mem, mem_n, nt);
    printf("memory read %.1f GiB, %s, %d threads: %.1f GB/s (median of %d)\n", o->mem_gib, rname, nt,
           b2b_median(v, R), R);
    free(a); free(b); free(cc); free(mem);
    return 0;
}


/* What the language-model stages of a model need: the prompt, buffers
 * shaped for the first model (a second one of the same shapes shares
 * them) and the caches. */
typedef struct lm_bufs {
    int t5, rows, Q, D, V, B, steps, L;
    const int32_t *ids;
    const float *qemb;
    float *emb, *hid, *logits, *logitsb, *enc, *escr;
    int32_t *toks;
    b2_kv *kv, **kvps; /* kvps[0] = kv, then the batch's copies */
    b2_opt_ws *ws;
    b2_t5_ws *tws;
    b2_t5_cross *cross;
} lm_bufs;

/* The prefill's input rows: the query embeddings and the prompt. */
static void lm_embed_prompt(const blip2_model *m, const lm_bufs *b)
{
    memcpy(b->emb, b->qemb, sizeof(float) * (size_t)b->Q * b->D);
    if (b->t5) b2__t5_embed(m, b->ids, b->L, b->emb + (size_t)b->Q * b->D);
    else b2__opt_embed(m, b->ids, b->L, b->emb + (size_t)b->Q * b->D);
}

/* The prefill over those rows (T5: the encoder and the cross keys and
 * values); the first token to decode. */
static int32_t lm_prefill(const blip2_model *m, const lm_bufs *b)
{
    int seq[1024], pos[1024];
    b2_kv *kvp = b->kv;
    for (int i = 0; i < b->rows; i++) { seq[i] = 0; pos[i] = i; }
    if (b->t5) {
        b2__t5_encode(m, b->emb, b->rows, b->enc, b->escr);
        b2__t5_cross_fill(m, b->cross, b->enc);
        return m->cfg.dec_start;
    }
    b2__opt_forward(m, b->ws, b->emb, b->rows, &kvp, seq, pos, b->hid);
    b2__opt_logits(m, b->hid + (size_t)(b->rows - 1) * b->D, 1, b->logits);
    return argmax(b->logits, b->V);
}

/* b->steps decode steps from the cache the prefill left (B sequences
 * copied from it), the first token tok; each step's time in dstep. */
static void lm_decode(const blip2_model *m, const lm_bufs *b, int32_t tok, double *dstep)
{
    const int B = b->B, V = b->V;
    int seq[64] = {0}, pos[64];
    b2_kv *kvp = b->kv;
    const b2_t5_cross *crp = b->cross;
    b->kv->len = b->t5 ? 0 : b->rows;
    for (int i = 1; i < B; i++) b2__kv_copy(b->kvps[i], b->kv);
    for (int i = 0; i < B; i++) b->toks[i] = tok;
    for (int st = 0; st < b->steps; st++) {
        const double a = b2b_now();
        pos[0] = b->kv->len;
        if (B > 1) { /* B sequences, one row each */
            for (int i = 0; i < B; i++) { seq[i] = i; pos[i] = b->kv->len; }
            b2__opt_embed(m, b->toks, B, b->emb);
            b2__opt_forward(m, b->ws, b->emb, B, b->kvps, seq, pos, b->hid);
            b2__opt_logits(m, b->hid, B, b->logitsb);
            for (int i = 0; i < B; i++) b->toks[i] = argmax(b->logitsb + (size_t)i * V, V);
            memcpy(b->logits, b->logitsb, sizeof(float) * (size_t)V);
        } else if (b->t5) {
            b2__t5_embed(m, &tok, 1, b->emb);
            b2__t5_decode(m, b->tws, b->emb, 1, &kvp, &crp, seq, pos, b->hid);
            b2__t5_logits(m, b->hid, 1, b->logits);
        } else {
            b2__opt_embed(m, &tok, 1, b->emb);
            b2__opt_forward(m, b->ws, b->emb, 1, &kvp, seq, pos, b->hid);
            b2__opt_logits(m, b->hid, 1, b->logits);
        }
        tok = argmax(b->logits, V);
        dstep[st] = b2b_now() - a;
        b->kv->len++;
        for (int i = 1; i < B; i++) b->kvps[i]->len = b->kv->len;
    }
}

/* One caption through the public API: [decoding and resizing --image] +
 * blip2_encode_image + blip2_generate (greedy, no prompt, exactly
 * o->steps new tokens).  Its time in seconds, or -1 on an error
 * (printed); *n_new and, if still NULL, *text set. */
static double caption_once(const blip2_model *m, const opts *o, const float *px, float *pxc, float *cq,
                           int *n_new, char **text)
{
    blip2_gen_params gp;
    blip2_gen_params_default(&gp);
    gp.max_new_tokens = gp.min_new_tokens = o->steps;
    blip2_result res = {0};
    blip2_error err = {0};
    const double a = b2b_now();
    if ((o->image && blip2_preprocess_file(m, o->image, NULL, pxc, &err) < 0) ||
        blip2_encode_image(m, o->image ? pxc : px, 1, cq, NULL, &err) < 0 ||
        blip2_generate(m, &(blip2_request){.query_embeds = cq}, 1, &gp, NULL, NULL, &res, &err) < 0) {
        fprintf(stderr, "bench_engine: caption: %s\n", err.text);
        return -1;
    }
    const double t = b2b_now() - a;
    /* the returned ids are [bos or decoder start] + the new tokens */
    *n_new = (int)res.seqs[0].n_ids - 1;
    if (!*text) *text = strdup(res.seqs[0].text ? res.seqs[0].text : "");
    blip2_result_free(&res);
    return t;
}

/* --versus-model / --versus-precision: the second model, loaded like the
 * first (precision: the first one's file in that math).  NULL after a
 * message if it cannot be, or if its shapes differ. */
static blip2_model *load_versus(const opts *o, const blip2_model *m)
{
    blip2_load_opts lo = {0};
    lo.precision = o->versus_precision;
    blip2_model *m2 = NULL;
    blip2_error err = {0};
    /* the decode kernels are chosen per weight type for the process: a
     * second measurement at load (no cache file) may change the first
     * model's; both then run the later choice, which is said */
    static const b2_wtype types[] = {B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    const char *before[4];
    for (int i = 0; i < 4; i++) before[i] = b2__wkernels_name_for(types[i]);
    if (blip2_model_load(&m2, o->versus_model ? o->versus_model : o->model, o->versus_precision ? &lo : NULL,
                         &err) < 0) {
        fprintf(stderr, "bench_engine: versus: %s\n", err.text);
        return NULL;
    }
    for (int i = 0; i < 4; i++)
        if (strcmp(before[i], b2__wkernels_name_for(types[i])) != 0)
            printf("note: loading the second model chose %s %s instead of %s; both models run it\n",
                   b2__wt_name(types[i]), b2__wkernels_name_for(types[i]), before[i]);
    const b2_config *a = &m->cfg, *b = &m2->cfg;
    if (a->family != b->family || a->t_hidden != b->t_hidden || a->t_layers != b->t_layers ||
        a->t_dec_layers != b->t_dec_layers || a->t_vocab != b->t_vocab || a->t_ffn != b->t_ffn ||
        a->t_heads != b->t_heads || a->num_query != b->num_query || a->v_hidden != b->v_hidden ||
        a->image_size != b->image_size || a->patch_size != b->patch_size || a->q_hidden != b->q_hidden) {
        fprintf(stderr, "bench_engine: versus: the two models' shapes differ\n");
        blip2_model_free(m2);
        return NULL;
    }
    return m2;
}

int main(int argc, char **argv)
{
    opts o;
    blip2_process_prepare(argv);
    if (parse(&o, argc, argv) < 0) return 2;
    if (o.threads > 0) openblas_set_num_threads(o.threads);
    const int nt = openblas_get_num_threads();
    const char *rname;
    b2b_read_fn rfn = b2b_pick_read(&rname);

    if (o.limits_only) {
        printf("OpenBLAS %s (core %s), %d threads\n", openblas_get_config(), openblas_get_corename(), nt);
        return limits_only(&o, rfn, rname, nt);
    }
    printf("bench_engine: model %s\n", o.model);
    printf("OpenBLAS %s (core %s), %d threads; memory read with %s on %d threads over %.1f GiB\n",
           openblas_get_config(), openblas_get_corename(), nt, rname, nt, o.mem_gib);
    fflush(stdout);

    blip2_error err = {0};
    blip2_model *m = NULL;
    double t0 = b2b_now();
    if (blip2_model_load(&m, o.model, NULL, &err) < 0) {
        fprintf(stderr, "bench_engine: %s\n", err.text);
        return 1;
    }
    const double t_load = b2b_now() - t0;
    const b2_config *c = &m->cfg;
    const int t5 = c->family == B2_FAMILY_T5;
    const int Dv = c->v_hidden, T = blip2_vision_tokens(m), Q = c->num_query, D = c->t_hidden;
    const int V = c->t_vocab;
    if (!t5) opt_weight_bytes_init(m);
    else t5_weight_bytes_init(m);
    if (t5 && o.batch > 1) { fprintf(stderr, "bench_engine: --batch is for OPT models\n"); return 1; }
    const int B = o.batch;
    printf("math: %s\n", blip2_model_math(m));
    if (*blip2_model_kernels_log(m)) printf("decode kernels: %s\n", blip2_model_kernels_log(m));
    if (t5)
        printf("loaded in %.1f s (stored as %s), RSS %.2f GiB (peak %.2f GiB): ViT %dx%d (T=%d, F=%d), "
               "Q-Former %dx%d, T5 %d+%dx%d (I=%d, F=%d%s, V=%d)\n", t_load, blip2_model_dtype(m),
               rss_kib("VmRSS:") / 1048576.0, rss_kib("VmHWM:") / 1048576.0, c->v_layers, Dv, T, c->v_inter,
               c->q_layers, c->q_hidden, c->t_layers, c->t_dec_layers, D, c->t_heads * c->t_dkv, c->t_ffn,
               c->t_gated ? " gated" : "", V);
    else
        printf("loaded in %.1f s (stored as %s), RSS %.2f GiB (peak %.2f GiB): ViT %dx%d (T=%d, F=%d), "
               "Q-Former %dx%d, OPT %dx%d (F=%d, V=%d)\n", t_load, blip2_model_dtype(m),
               rss_kib("VmRSS:") / 1048576.0, rss_kib("VmHWM:") / 1048576.0, c->v_layers, Dv, T, c->v_inter,
               c->q_layers, c->q_hidden, c->t_layers, D, c->t_ffn, V);

    b2b_print_load("before");

    /* prompt */
    int32_t *ids = NULL;
    size_t L = 0;
    if (blip2_tokenize(m, o.prompt, 1, &ids, &L, &err) < 0) {
        fprintf(stderr, "bench_engine: %s\n", err.text);
        return 1;
    }
    /* OPT caches hold prompt and new tokens; T5's only the decoder tokens */
    const int rows = Q + (int)L, cap = t5 ? o.steps + 1 : rows + o.steps + 1;
    if (rows + o.steps + 1 > c->t_max_pos || rows > 1024) { fprintf(stderr, "bench_engine: prompt too long\n"); return 1; }

    /* buffers */
    const size_t npx = blip2_pixel_values_len(m);
    float *px = rand_buf(npx, 2.0f, 1), *pxc = malloc(sizeof(float) * npx);
    float *vis = malloc(sizeof(float) * (size_t)T * Dv), *pooled = malloc(sizeof(float) * (size_t)Dv);
    float *qf = malloc(sizeof(float) * (size_t)Q * c->q_hidden);
    float *emb = malloc(sizeof(float) * (size_t)rows * D), *hid = malloc(sizeof(float) * (size_t)rows * D);
    float *logits = malloc(sizeof(float) * (size_t)V), *logitsb = malloc(sizeof(float) * (size_t)V * B), *cq = malloc(sizeof(float) * blip2_query_embeds_len(m));
    const int sg_m = T, sg_n = c->v_inter, sg_k = Dv;
    float *sa = rand_buf((size_t)sg_m * sg_k, 1.0f, 2), *sb = rand_buf((size_t)sg_n * sg_k, 0.05f, 3);
    float *sc = malloc(sizeof(float) * (size_t)sg_m * sg_n);
    const size_t mem_n = ((size_t)(o.mem_gib * 1073741824.0) / sizeof(float)) & ~(size_t)1023;
    float *mem = b2b_alloc_large(mem_n * sizeof(float));
    b2_kv kv = {0}, kvb[64] = {{0}};
    b2_kv *kvps[64];
    int32_t toks[64];
    b2_opt_ws ws = {0};
    b2_t5_ws tws = {0};
    b2_t5_cross cross = {0};
    float *enc = NULL, *escr = NULL;
    int ok = logitsb && px && pxc && vis && pooled && qf && emb && hid && logits && cq && sa && sb && sc && mem &&
             b2__kv_init(&kv, m, cap) == 0;
    for (int i = 1; ok && i < B; i++) ok = b2__kv_init(&kvb[i], m, cap) == 0;
    kvps[0] = &kv;
    for (int i = 1; i < B; i++) kvps[i] = &kvb[i];
    if (ok && t5) {
        enc = malloc(sizeof(float) * (size_t)rows * D);
        escr = malloc(sizeof(float) * b2__t5_encode_scratch(m, rows));
        ok = enc && escr && b2__t5_cross_init(&cross, m, rows) == 0 &&
             b2__t5_ws_init(&tws, m, 1, cap > rows ? cap : rows) == 0;
    } else if (ok) {
        ok = b2__opt_ws_init(&ws, m, rows > B ? rows : B, cap) == 0;
    }
    if (!ok) {
        fprintf(stderr, "bench_engine: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < mem_n; i++) mem[i] = (float)(i & 7);
    /* the query embeddings for prefill come from a real Q-Former run (or noise if skipped) */
    float *qemb = rand_buf((size_t)Q * D, 0.5f, 4);
    if (!qemb) return 1;

    const int R = o.rounds;
    double *lim_gf = calloc((size_t)R * 8 + 1, sizeof(double)), *lim_gb = calloc((size_t)R * 4 + 1, sizeof(double));
    int nlim_gf = 0, nlim_gb = 0;
    double *tm[S_N], *ratio[S_N], *ideal = calloc((size_t)R, sizeof(double));
    for (int s = 0; s < S_N; s++) {
        tm[s] = calloc((size_t)R, sizeof(double));
        ratio[s] = calloc((size_t)R, sizeof(double));
    }
    const double f_vis = vision_flop(c), f_qf = qformer_flop(c);
    const double f_pre = t5 ? t5_enc_flop(c, rows) : opt_flop(c, rows, 0);
    /* caption: no prompt, so the language model starts from Q + 1 rows ([bos]) */
    const int crow = Q + 1;
    const double f_cap = f_vis + f_qf + (t5 ? t5_enc_flop(c, crow) : opt_flop(c, crow, 0));
    int cap_new = 0;
    char *cap_text = NULL;
    double *dstep = malloc(sizeof(double) * (size_t)o.steps), *dbw = malloc(sizeof(double) * (size_t)o.steps);
    const char *pre_name = t5 ? "T5 encoder + cross k/v" : "prefill";
    lm_bufs lb = {t5, rows, Q, D, V, B, o.steps, (int)L, ids, qemb, emb, hid, logits, logitsb, enc, escr,
                  toks, &kv, kvps, &ws, &tws, &cross};
    /* --versus-*: per stage and round its time and its time over the first model's */
    blip2_model *m2 = NULL;
    double *vs[S_N], *vs_t[S_N];
    char *vs_text = NULL;
    for (int s = 0; s < S_N; s++) {
        vs[s] = calloc((size_t)R, sizeof(double));
        vs_t[s] = calloc((size_t)R, sizeof(double));
    }
    /* --versus-prefetch-next: the same model, the other setting around its runs */
    const long pfn_first = b2__wkernels_set_prefetch_next(-1);
#define VS_PFN(on) (o.versus_pfn >= 0 ? (void)b2__wkernels_set_prefetch_next((on) ? o.versus_pfn : pfn_first) : (void)0)
    if (o.versus_pfn >= 0) {
        m2 = m;
        printf("versus: the same model with BLIP2_PREFETCH_NEXT=%ld (the first: %ld)\n", o.versus_pfn, pfn_first);
        fflush(stdout);
    } else if (o.versus_model || o.versus_precision) {
        if (!(m2 = load_versus(&o, m))) return 1;
        printf("versus: %s%s: math: %s\n", o.versus_model ? o.versus_model : "the same file in ",
               o.versus_model ? "" : o.versus_precision, blip2_model_math(m2));
        if (*blip2_model_kernels_log(m2)) printf("versus: decode kernels: %s\n", blip2_model_kernels_log(m2));
        fflush(stdout);
    }

    /* warm-up: first-touch of scratch, OpenBLAS thread start-up */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, sg_m, sg_n, sg_k, 1.0f, sa, sg_k, sb, sg_k, 0.0f, sc, sg_n);
    b2b_mem_pass(rfn, mem, mem_n, nt);

    /* Each stage is bracketed by limit measurements; its ratio uses the
     * mean of the two, so a change of the host's speed during a round
     * shifts stage and limit alike.  Every measurement is also kept for
     * the limits' medians. */
#define SGEMM_LIMIT() (lim_gf[nlim_gf++] = sgemm_rate(sa, sb, sc, sg_m, sg_n, sg_k))
#define MEM_LIMIT() (lim_gb[nlim_gb++] = mem_rate(rfn, mem, mem_n, nt))
    for (int rr = -o.warmup; rr < R; rr++) {
        /* a warm-up round (rr < 0) fills slot 0, which round 0 overwrites,
         * and its limit measurements are dropped */
        const int r = rr < 0 ? 0 : rr, kept_gf = nlim_gf, kept_gb = nlim_gb;
        double gf0, gf1;
        if (o.do_vision) {
            gf0 = SGEMM_LIMIT();
            double a = b2b_now();
            if (b2__vision_forward(m, px, 1, vis, pooled, &err) < 0) { fprintf(stderr, "%s\n", err.text); return 1; }
            tm[S_VISION][r] = b2b_now() - a;
            gf1 = SGEMM_LIMIT();
            ratio[S_VISION][r] = f_vis / tm[S_VISION][r] / 1e9 / (0.5 * (gf0 + gf1));
        }
        if (o.do_qformer) {
            gf0 = SGEMM_LIMIT();
            double a = b2b_now();
            if (b2__qformer_forward(m, vis, 1, qf, &err) < 0) { fprintf(stderr, "%s\n", err.text); return 1; }
            b2__linear(qemb, qf, Q, &m->proj);
            tm[S_QFORMER][r] = b2b_now() - a;
            gf1 = SGEMM_LIMIT();
            ratio[S_QFORMER][r] = f_qf / tm[S_QFORMER][r] / 1e9 / (0.5 * (gf0 + gf1));
        }
        if (o.do_lm) {
            lm_embed_prompt(m, &lb);
            gf0 = SGEMM_LIMIT();
            double a = b2b_now();
            const int32_t tok = lm_prefill(m, &lb);
            tm[S_PREFILL][r] = b2b_now() - a;
            gf1 = SGEMM_LIMIT();
            ratio[S_PREFILL][r] = f_pre / tm[S_PREFILL][r] / 1e9 / (0.5 * (gf0 + gf1));
            double gb0 = MEM_LIMIT();
            lm_decode(m, &lb, tok, dstep);
            double gb1 = MEM_LIMIT();
            for (int st = 0; st < o.steps; st++) /* the step at position start + st */
                dbw[st] = (t5 ? t5_decode_bytes(c, st, rows) : decode_bytes_n(c, rows + st, B)) / dstep[st] / 1e9;
            tm[S_DECODE][r] = b2b_median(dstep, o.steps);
            ratio[S_DECODE][r] = b2b_median(dbw, o.steps) / (0.5 * (gb0 + gb1));
            if (m2) { /* the second model right after, on the same buffers */
                VS_PFN(1);
                lm_embed_prompt(m2, &lb);
                a = b2b_now();
                const int32_t tok2 = lm_prefill(m2, &lb);
                vs_t[S_PREFILL][r] = b2b_now() - a;
                lm_decode(m2, &lb, tok2, dstep);
                vs_t[S_DECODE][r] = b2b_median(dstep, o.steps);
                VS_PFN(0);
                for (int st = S_PREFILL; st <= S_DECODE; st++) vs[st][r] = vs_t[st][r] / tm[st][r];
            }
        }
        if (o.do_caption) {
            gf0 = SGEMM_LIMIT();
            double gb0 = MEM_LIMIT();
            tm[S_CAPTION][r] = caption_once(m, &o, px, pxc, cq, &cap_new, &cap_text);
            if (tm[S_CAPTION][r] < 0) return 1;
            gf1 = SGEMM_LIMIT();
            double gb1 = MEM_LIMIT();
            /* at the limits: the matmul work at the sgemm rate, every decode
             * step (T5: all new tokens; OPT: all but the first, which
             * prefill gives) at the memory-read rate */
            const double g = 0.5 * (gf0 + gf1) * 1e9, bw = 0.5 * (gb0 + gb1) * 1e9;
            double id = f_cap / g;
            for (int k = t5 ? 0 : 1; k < cap_new; k++)
                id += (t5 ? t5_decode_bytes(c, k, crow) : decode_bytes(c, crow + k - 1)) / bw;
            ideal[r] = id;
            ratio[S_CAPTION][r] = id / tm[S_CAPTION][r];
            if (m2) {
                int n2 = 0;
                VS_PFN(1);
                vs_t[S_CAPTION][r] = caption_once(m2, &o, px, pxc, cq, &n2, &vs_text);
                VS_PFN(0);
                if (vs_t[S_CAPTION][r] < 0) return 1;
                vs[S_CAPTION][r] = vs_t[S_CAPTION][r] / tm[S_CAPTION][r];
            }
        }
        if (rr < 0) {
            nlim_gf = kept_gf;
            nlim_gb = kept_gb;
            continue;
        }
        if (o.verbose) {
            printf("round %d:", r + 1);
            for (int st = 0; st < S_N; st++)
                if (tm[st][r] > 0)
                    printf(" %s %.1f ms (%.1f%%);", st == S_PREFILL ? pre_name : stage_name[st], 1e3 * tm[st][r],
                           100 * ratio[st][r]);
            printf(" limits so far: sgemm %.1f GFLOP/s", b2b_median(lim_gf, nlim_gf));
            if (nlim_gb) printf(", mem %.1f GB/s", b2b_median(lim_gb, nlim_gb));
            printf("\n");
            fflush(stdout);
        }
    }

#undef SGEMM_LIMIT
#undef MEM_LIMIT
    const double gf = b2b_median(lim_gf, nlim_gf), gb = b2b_median(lim_gb, nlim_gb);
    printf("\nlimits (medians of %d and %d measurements, each right before or after a stage):\n", nlim_gf, nlim_gb);
    printf("  sgemm %dx%d @ (%dx%d)^T, %d threads     %8.1f GFLOP/s\n", sg_m, sg_k, sg_n, sg_k, nt, gf);
    if (nlim_gb) printf("  memory read %.1f GiB, %s, %d threads   %8.1f GB/s\n", o.mem_gib, rname, nt, gb);
    printf("\n%-22s %10s %12s %16s %10s\n", "stage", "time ms", "work", "rate", "of limit");
    for (int s = 0; s < S_N; s++) {
        if (tm[s][0] <= 0) continue;
        double t = b2b_median(tm[s], R), rt = b2b_median(ratio[s], R);
        char work[32], rate[40];
        if (s == S_DECODE) {
            double by = t5 ? t5_decode_bytes(c, o.steps / 2, rows) : decode_bytes_n(c, rows, B);
            snprintf(work, sizeof work, "%.2f GB", by / 1e9);
            snprintf(rate, sizeof rate, "%.1f GB/s", by / t / 1e9);
        } else if (s == S_CAPTION) {
            snprintf(work, sizeof work, "%d tokens", cap_new);
            snprintf(rate, sizeof rate, "ideal %.0f ms", 1e3 * b2b_median(ideal, R));
        } else {
            double f = s == S_VISION ? f_vis : s == S_QFORMER ? f_qf : f_pre;
            snprintf(work, sizeof work, "%.1f GFLOP", f / 1e9);
            snprintf(rate, sizeof rate, "%.1f GFLOP/s", f / t / 1e9);
        }
        printf("%-22s %10.1f %12s %16s %9.1f%%\n", s == S_PREFILL ? pre_name : stage_name[s], 1e3 * t,
               work, rate, 100 * rt);
    }
    if (tm[S_PREFILL][0] > 0)
        printf("\n%s: %d rows (%d query + %zu prompt tokens incl. %s), %.1f tokens/s; decode: %d steps of %d "
               "sequence(s), %.2f tokens/s, %.1f ms per token (weights as stored: %s)\n",
               t5 ? "encoder" : "prefill", rows, Q, L, t5 ? "</s>" : "BOS", rows / b2b_median(tm[S_PREFILL], R),
               o.steps, B, B / b2b_median(tm[S_DECODE], R), 1e3 * b2b_median(tm[S_DECODE], R) / B, blip2_model_dtype(m));
    if (tm[S_CAPTION][0] > 0)
        printf("caption: %s, no prompt, greedy, %d new tokens (min_new_tokens %d): %.2f s; at the limits %.2f s\n"
               "  text of round 1 (random weights): \"%.80s\"\n",
               o.image ? o.image : "random pixel values", cap_new, o.steps, b2b_median(tm[S_CAPTION], R),
               b2b_median(ideal, R), cap_text ? cap_text : "");
    if (m2) {
        if (o.versus_pfn >= 0)
            printf("\nversus BLIP2_PREFETCH_NEXT=%ld, right after in every round (time, and the median of the\n"
                   "per-round ratios of its time over the first's):\n", o.versus_pfn);
        else
            printf("\nversus %s%s, right after in every round (time, and the median of the per-round\n"
                   "ratios of its time over the first model's):\n", o.versus_model ? o.versus_model : "math ",
                   o.versus_model ? "" : o.versus_precision);
        for (int s = S_PREFILL; s < S_N; s++) {
            if (tm[s][0] <= 0) continue;
            const double r2 = b2b_median(vs[s], R);
            printf("  %-22s %10.1f ms   its time over the first's: %.2f\n", s == S_PREFILL ? pre_name :
                   stage_name[s], 1e3 * b2b_median(vs_t[s], R), r2);
        }
        if (tm[S_CAPTION][0] > 0) printf("  its caption text of round 1: \"%.80s\"\n", vs_text ? vs_text : "");
    }
    printf("(ratios: each stage over the mean of the limits measured right before and after it,\n"
           " median over rounds; decode: median step of each round; caption: time at the limits\n"
           " (matmul FLOP at the sgemm rate + every decode step's bytes at the memory rate) over time taken)\n");
    if (o.verbose) { /* which products ran on oneDNN, in which math, and the times that chose it */
        char rep[8192];
        if (b2__dnnl_report(rep, sizeof rep) > 0) printf("products on the math backend:\n%s", rep);
    }
    b2b_print_load("after");

    for (int s = 0; s < S_N; s++) { free(tm[s]); free(ratio[s]); free(vs[s]); free(vs_t[s]); }
    free(vs_text);
#undef VS_PFN
    if (m2 != m) blip2_model_free(m2);
    free(lim_gf); free(lim_gb); free(dstep); free(dbw); free(ideal); free(cap_text);
    for (int i = 1; i < B; i++) b2__kv_free(&kvb[i]);
    free(logitsb);
    free(px); free(pxc); free(vis); free(pooled); free(qf); free(emb); free(hid); free(logits); free(cq);
    free(sa); free(sb); free(sc); free(mem); free(qemb); free(ids); free(enc); free(escr);
    b2__kv_free(&kv);
    b2__opt_ws_free(&ws);
    b2__t5_ws_free(&tws);
    b2__t5_cross_free(&cross);
    blip2_model_free(m);
    return 0;
}
