/*
 * gen_weights.c - writes a Hugging Face BLIP-2 model folder with seeded
 * random weights, at the shapes of any config.json (by default the real
 * Salesforce/blip2-opt-2.7b; an OPT or a T5 language model, following
 * text_config.model_type), for benchmarks and load tests.
 *
 *   config.json --b2__config_load--> b2_config --plan()--> tensor list
 *     (exactly the names and shapes model.c's bind_all / bind_t5 binds)
 *   tensor list --shard by size--> model-0000i-of-0000n.safetensors
 *     + model.safetensors.index.json   (or one model.safetensors)
 *   each tensor: xoshiro256+ stream seeded from (seed, name) -> values of
 *     its kind (weights ~N(0, 0.02), LN weights ~1, small biases; T5's
 *     weights by fan-in) -> f32 / f16 / bf16 bytes -> two 32 MiB
 *     buffers, one filled while a writer thread write()s the other
 *   config.json, preprocessor_config.json and the tokenizer files are
 *   copied from the golden data beside.
 *
 * The same seed gives the same bytes whatever the sharding.  Run with
 * --help for the options.  Built as bench/gen_weights (make bench); the
 * test tests/test_gen_weights compiles this file with
 * B2_GEN_WEIGHTS_NO_MAIN and calls b2bench_gen_weights() directly.
 */
#include "config.h"
#include "gen_weights.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef B2_GOLDEN_DIR
#define B2_GOLDEN_DIR "tests/golden"
#endif

enum kind { K_WEIGHT, K_BIAS, K_LN_W, K_LN_B, K_EMB };
enum dt { DT_F32, DT_F16, DT_BF16 };

typedef struct gtensor {
    char name[160];
    int ndim;
    int64_t shape[4];
    enum kind kind;
    float scale;     /* standard deviation; 0: the kind's default */
    uint64_t nbytes; /* in the output dtype */
    int shard;       /* 0-based */
    uint64_t off;    /* offset in the shard's data area */
} gtensor;

typedef struct plan {
    gtensor *t;
    int n, cap;
} plan;

static int add(plan *p, enum kind k, const char *name, int ndim, int64_t d0, int64_t d1,
               int64_t d2, int64_t d3)
{
    if (p->n == p->cap) {
        int nc = p->cap ? 2 * p->cap : 512;
        gtensor *nt = realloc(p->t, sizeof *nt * (size_t)nc);
        if (!nt) return -1;
        p->t = nt;
        p->cap = nc;
    }
    gtensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0; t->shape[1] = d1; t->shape[2] = d2; t->shape[3] = d3;
    t->kind = k;
    return 0;
}

/* A tensor with its own standard deviation (T5: scaled by fan-in). */
static int add_s(plan *p, enum kind k, float scale, const char *name, int ndim, int64_t d0, int64_t d1)
{
    if (add(p, k, name, ndim, d0, d1, 0, 0) < 0) return -1;
    p->t[p->n - 1].scale = scale;
    return 0;
}

static int add_linear(plan *p, const char *prefix, int out, int in, int bias)
{
    char n[160];
    snprintf(n, sizeof n, "%s.weight", prefix);
    if (add(p, K_WEIGHT, n, 2, out, in, 0, 0) < 0) return -1;
    if (!bias) return 0;
    snprintf(n, sizeof n, "%s.bias", prefix);
    return add(p, K_BIAS, n, 1, out, 0, 0, 0);
}

static int add_ln(plan *p, const char *prefix, int d)
{
    char n[160];
    snprintf(n, sizeof n, "%s.weight", prefix);
    if (add(p, K_LN_W, n, 1, d, 0, 0, 0) < 0) return -1;
    snprintf(n, sizeof n, "%s.bias", prefix);
    return add(p, K_LN_B, n, 1, d, 0, 0, 0);
}

static int add_bert_attn(plan *p, const char *prefix, int D, int Dkv)
{
    char n[160];
    int rc = 0;
    snprintf(n, sizeof n, "%s.attention.query", prefix); rc |= add_linear(p, n, D, D, 1);
    snprintf(n, sizeof n, "%s.attention.key", prefix); rc |= add_linear(p, n, D, Dkv, 1);
    snprintf(n, sizeof n, "%s.attention.value", prefix); rc |= add_linear(p, n, D, Dkv, 1);
    snprintf(n, sizeof n, "%s.output.dense", prefix); rc |= add_linear(p, n, D, D, 1);
    snprintf(n, sizeof n, "%s.output.LayerNorm", prefix); rc |= add_ln(p, n, D);
    return rc;
}

/* ---- T5 (Flan-T5 BLIP-2): the tensors of model.c's bind_t5 ----
 * T5 scores are q.k without 1/sqrt(d_kv) and every norm is an RMSNorm, so
 * the standard deviations follow the fan-in as T5's own initialisation
 * does: q (D*d_kv)^-1/2, k, v and wi D^-1/2, o I^-1/2, wo F^-1/2 (scores
 * and every product's output then have about unit variance whatever the
 * width), lm_head D^-1/2 and the relative position biases 0.1;
 * token embeddings N(0, 1) (T5's own scale) and RMSNorm weights
 * 1 + N(0, 0.05). */

static int add_t5_attn(plan *p, const char *prefix, int D, int I, int dk)
{
    char n[160];
    int rc = 0;
    snprintf(n, sizeof n, "%s.q.weight", prefix);
    rc |= add_s(p, K_WEIGHT, 1.0f / sqrtf((float)D * (float)dk), n, 2, I, D);
    snprintf(n, sizeof n, "%s.k.weight", prefix); rc |= add_s(p, K_WEIGHT, 1.0f / sqrtf((float)D), n, 2, I, D);
    snprintf(n, sizeof n, "%s.v.weight", prefix); rc |= add_s(p, K_WEIGHT, 1.0f / sqrtf((float)D), n, 2, I, D);
    snprintf(n, sizeof n, "%s.o.weight", prefix); rc |= add_s(p, K_WEIGHT, 1.0f / sqrtf((float)I), n, 2, D, I);
    return rc;
}

static int add_t5_ff(plan *p, const char *prefix, int D, int F, int gated)
{
    char n[160];
    int rc = 0;
    const float si = 1.0f / sqrtf((float)D);
    if (gated) {
        snprintf(n, sizeof n, "%s.DenseReluDense.wi_0.weight", prefix); rc |= add_s(p, K_WEIGHT, si, n, 2, F, D);
        snprintf(n, sizeof n, "%s.DenseReluDense.wi_1.weight", prefix); rc |= add_s(p, K_WEIGHT, si, n, 2, F, D);
    } else {
        snprintf(n, sizeof n, "%s.DenseReluDense.wi.weight", prefix); rc |= add_s(p, K_WEIGHT, si, n, 2, F, D);
    }
    snprintf(n, sizeof n, "%s.DenseReluDense.wo.weight", prefix);
    rc |= add_s(p, K_WEIGHT, 1.0f / sqrtf((float)F), n, 2, D, F);
    snprintf(n, sizeof n, "%s.layer_norm.weight", prefix); rc |= add(p, K_LN_W, n, 1, D, 0, 0, 0);
    return rc;
}

static int make_plan_t5(plan *p, const b2_config *c)
{
    const int D = c->t_hidden, H = c->t_heads, dk = c->t_dkv, I = H * dk, F = c->t_ffn;
    const char *lm = "language_model";
    char n[160];
    int rc = 0;
    snprintf(n, sizeof n, "%s.shared.weight", lm); rc |= add_s(p, K_EMB, 1.0f, n, 2, c->t_vocab, D);
    snprintf(n, sizeof n, "%s.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", lm);
    rc |= add_s(p, K_WEIGHT, 0.1f, n, 2, c->t_buckets, H);
    snprintf(n, sizeof n, "%s.decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", lm);
    rc |= add_s(p, K_WEIGHT, 0.1f, n, 2, c->t_buckets, H);
    for (int l = 0; l < c->t_layers && !rc; l++) {
        snprintf(n, sizeof n, "%s.encoder.block.%d.layer.0.SelfAttention", lm, l); rc |= add_t5_attn(p, n, D, I, dk);
        snprintf(n, sizeof n, "%s.encoder.block.%d.layer.0.layer_norm.weight", lm, l);
        rc |= add(p, K_LN_W, n, 1, D, 0, 0, 0);
        snprintf(n, sizeof n, "%s.encoder.block.%d.layer.1", lm, l); rc |= add_t5_ff(p, n, D, F, c->t_gated);
    }
    snprintf(n, sizeof n, "%s.encoder.final_layer_norm.weight", lm); rc |= add(p, K_LN_W, n, 1, D, 0, 0, 0);
    for (int l = 0; l < c->t_dec_layers && !rc; l++) {
        snprintf(n, sizeof n, "%s.decoder.block.%d.layer.0.SelfAttention", lm, l); rc |= add_t5_attn(p, n, D, I, dk);
        snprintf(n, sizeof n, "%s.decoder.block.%d.layer.0.layer_norm.weight", lm, l);
        rc |= add(p, K_LN_W, n, 1, D, 0, 0, 0);
        snprintf(n, sizeof n, "%s.decoder.block.%d.layer.1.EncDecAttention", lm, l); rc |= add_t5_attn(p, n, D, I, dk);
        snprintf(n, sizeof n, "%s.decoder.block.%d.layer.1.layer_norm.weight", lm, l);
        rc |= add(p, K_LN_W, n, 1, D, 0, 0, 0);
        snprintf(n, sizeof n, "%s.decoder.block.%d.layer.2", lm, l); rc |= add_t5_ff(p, n, D, F, c->t_gated);
    }
    snprintf(n, sizeof n, "%s.decoder.final_layer_norm.weight", lm); rc |= add(p, K_LN_W, n, 1, D, 0, 0, 0);
    if (!c->t_tie) {
        snprintf(n, sizeof n, "%s.lm_head.weight", lm);
        rc |= add_s(p, K_WEIGHT, 1.0f / sqrtf((float)D), n, 2, c->t_vocab, D);
    }
    return rc ? -1 : 0;
}

/* The tensors model.c's bind_all expects, in its order (an untied
 * lm_head is not written: the loader then uses embed_tokens). */
static int make_plan(plan *p, const b2_config *c)
{
    const int Dv = c->v_hidden, Dq = c->q_hidden, D = c->t_hidden, Dw = c->t_word_proj;
    const int ps = c->patch_size, g = c->image_size / ps, T = 1 + g * g;
    char n[160];
    int rc = 0;
    rc |= add(p, K_WEIGHT, "vision_model.embeddings.patch_embedding.weight", 4, Dv, 3, ps, ps);
    rc |= add(p, K_BIAS, "vision_model.embeddings.patch_embedding.bias", 1, Dv, 0, 0, 0);
    rc |= add(p, K_EMB, "vision_model.embeddings.class_embedding", 3, 1, 1, Dv, 0);
    rc |= add(p, K_EMB, "vision_model.embeddings.position_embedding", 3, 1, T, Dv, 0);
    for (int l = 0; l < c->v_layers && !rc; l++) {
        snprintf(n, sizeof n, "vision_model.encoder.layers.%d.layer_norm1", l); rc |= add_ln(p, n, Dv);
        snprintf(n, sizeof n, "vision_model.encoder.layers.%d.layer_norm2", l); rc |= add_ln(p, n, Dv);
        snprintf(n, sizeof n, "vision_model.encoder.layers.%d.self_attn.qkv", l);
        rc |= add_linear(p, n, 3 * Dv, Dv, c->v_qkv_bias);
        snprintf(n, sizeof n, "vision_model.encoder.layers.%d.self_attn.projection", l);
        rc |= add_linear(p, n, Dv, Dv, 1);
        snprintf(n, sizeof n, "vision_model.encoder.layers.%d.mlp.fc1", l); rc |= add_linear(p, n, c->v_inter, Dv, 1);
        snprintf(n, sizeof n, "vision_model.encoder.layers.%d.mlp.fc2", l); rc |= add_linear(p, n, Dv, c->v_inter, 1);
    }
    rc |= add_ln(p, "vision_model.post_layernorm", Dv);

    rc |= add(p, K_EMB, "query_tokens", 3, 1, c->num_query, Dq, 0);
    rc |= add_ln(p, "qformer.layernorm", Dq);
    for (int l = 0; l < c->q_layers && !rc; l++) {
        snprintf(n, sizeof n, "qformer.encoder.layer.%d.attention", l); rc |= add_bert_attn(p, n, Dq, Dq);
        if (l % c->q_cross_freq == 0) {
            snprintf(n, sizeof n, "qformer.encoder.layer.%d.crossattention", l);
            rc |= add_bert_attn(p, n, Dq, c->q_enc_hidden);
        }
        snprintf(n, sizeof n, "qformer.encoder.layer.%d.intermediate_query.dense", l);
        rc |= add_linear(p, n, c->q_inter, Dq, 1);
        snprintf(n, sizeof n, "qformer.encoder.layer.%d.output_query.dense", l);
        rc |= add_linear(p, n, Dq, c->q_inter, 1);
        snprintf(n, sizeof n, "qformer.encoder.layer.%d.output_query.LayerNorm", l);
        rc |= add_ln(p, n, Dq);
    }
    rc |= add_linear(p, "language_projection", D, Dq, 1);
    if (c->family == B2_FAMILY_T5) return rc || make_plan_t5(p, c) < 0 ? -1 : 0;

    const char *dec = "language_model.model.decoder";
    snprintf(n, sizeof n, "%s.embed_tokens.weight", dec); rc |= add(p, K_EMB, n, 2, c->t_vocab, Dw, 0, 0);
    snprintf(n, sizeof n, "%s.embed_positions.weight", dec); rc |= add(p, K_EMB, n, 2, c->t_max_pos + 2, D, 0, 0);
    for (int l = 0; l < c->t_layers && !rc; l++) {
        snprintf(n, sizeof n, "%s.layers.%d.self_attn.q_proj", dec, l); rc |= add_linear(p, n, D, D, c->t_bias);
        snprintf(n, sizeof n, "%s.layers.%d.self_attn.k_proj", dec, l); rc |= add_linear(p, n, D, D, c->t_bias);
        snprintf(n, sizeof n, "%s.layers.%d.self_attn.v_proj", dec, l); rc |= add_linear(p, n, D, D, c->t_bias);
        snprintf(n, sizeof n, "%s.layers.%d.self_attn.out_proj", dec, l); rc |= add_linear(p, n, D, D, c->t_bias);
        if (c->t_ln_affine) {
            snprintf(n, sizeof n, "%s.layers.%d.self_attn_layer_norm", dec, l); rc |= add_ln(p, n, D);
            snprintf(n, sizeof n, "%s.layers.%d.final_layer_norm", dec, l); rc |= add_ln(p, n, D);
        }
        snprintf(n, sizeof n, "%s.layers.%d.fc1", dec, l); rc |= add_linear(p, n, c->t_ffn, D, c->t_bias);
        snprintf(n, sizeof n, "%s.layers.%d.fc2", dec, l); rc |= add_linear(p, n, D, c->t_ffn, c->t_bias);
    }
    if (c->t_final_ln && c->t_ln_affine) {
        snprintf(n, sizeof n, "%s.final_layer_norm", dec);
        rc |= add_ln(p, n, D);
    }
    return rc ? -1 : 0;
}

/* ---- random numbers ---- */

typedef struct rng { uint64_t s[4]; } rng;

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the name */
    for (const char *s = name; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    uint64_t x = seed ^ h;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix(&x);
}

static inline uint64_t rng_next(rng *r) /* xoshiro256+ */
{
    uint64_t *s = r->s, res = s[0] + s[3], t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return res;
}

/* About N(0,1): Irwin-Hall sum of four 16-bit uniforms, rescaled (|z| < 3.47). */
static inline float rng_normal(rng *r)
{
    uint64_t u = rng_next(r);
    int32_t s = (int32_t)(u & 0xffff) + (int32_t)((u >> 16) & 0xffff) +
                (int32_t)((u >> 32) & 0xffff) + (int32_t)(u >> 48);
    return (float)(s - 131070) * (1.0f / 37837.23f);
}

/* ---- dtype conversion (round to nearest even) ---- */

static inline uint16_t to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x47800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax < 0x38800000u) { /* below 2^-14: subnormal, in units of 2^-24 */
        float v;
        memcpy(&v, &ax, 4);
        return (uint16_t)(sign | (uint32_t)nearbyintf(v * 16777216.0f));
    }
    ax += 0xc8000fffu + ((ax >> 13) & 1u); /* rebias 127 -> 15 and round */
    return (uint16_t)(sign | (ax >> 13));
}

static inline uint16_t to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static size_t dt_size(enum dt d) { return d == DT_F32 ? 4 : 2; }
static const char *dt_name(enum dt d) { return d == DT_F32 ? "F32" : d == DT_F16 ? "F16" : "BF16"; }

static uint64_t numel(const gtensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
    return n;
}

/* ---- output ----
 * Double-buffered: while a writer thread write()s one buffer, values are
 * generated into the other, so generation hides behind the disk. */

typedef struct out {
    int fd;
    unsigned char *bufs[2], *buf; /* buf: the one being filled */
    size_t len, cap;
    const char *path;
    pthread_t th;
    int pending;                  /* a writer thread is running */
    unsigned char *wbuf;          /* what it writes */
    size_t wlen;
    int werr;                     /* errno of a failed write, 0 if none */
} out;

static void *writer(void *arg)
{
    out *o = arg;
    size_t done = 0;
    while (done < o->wlen) {
        ssize_t w = write(o->fd, o->wbuf + done, o->wlen - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { o->werr = w < 0 ? errno : EIO; break; }
        done += (size_t)w;
    }
    return NULL;
}

/* Waits for the writer thread; -1 if its write failed. */
static int out_wait(out *o)
{
    if (o->pending) {
        pthread_join(o->th, NULL);
        o->pending = 0;
    }
    if (o->werr) {
        fprintf(stderr, "gen_weights: %s: write failed: %s\n", o->path, strerror(o->werr));
        return -1;
    }
    return 0;
}

/* Hands the filled buffer to a writer thread and switches buffers. */
static int out_flush(out *o)
{
    if (out_wait(o) < 0) return -1;
    if (o->len == 0) return 0;
    o->wbuf = o->buf;
    o->wlen = o->len;
    if (pthread_create(&o->th, NULL, writer, o) != 0) {
        writer(o); /* no thread: write in line */
        if (out_wait(o) < 0) return -1;
    } else {
        o->pending = 1;
    }
    o->buf = o->buf == o->bufs[0] ? o->bufs[1] : o->bufs[0];
    o->len = 0;
    return 0;
}

static int out_bytes(out *o, const void *p, size_t n)
{
    const unsigned char *s = p;
    while (n) {
        size_t k = o->cap - o->len < n ? o->cap - o->len : n;
        memcpy(o->buf + o->len, s, k);
        o->len += k; s += k; n -= k;
        if (o->len == o->cap && out_flush(o) < 0) return -1;
    }
    return 0;
}

/* Streams tensor t's values straight into the output buffer. */
static int out_tensor(out *o, const gtensor *t, enum dt d, uint64_t seed)
{
    rng r;
    rng_seed(&r, seed, t->name);
    float scale, base;
    switch (t->kind) {
    case K_WEIGHT: case K_EMB: scale = 0.02f; base = 0.0f; break;
    case K_LN_W: scale = 0.05f; base = 1.0f; break;
    default: scale = 0.01f; base = 0.0f; break; /* biases */
    }
    if (t->scale > 0) scale = t->scale;
    const size_t es = dt_size(d);
    uint64_t left = numel(t);
    while (left) {
        size_t room = (o->cap - o->len) / es;
        if (room == 0) { if (out_flush(o) < 0) return -1; continue; }
        size_t k = left < room ? (size_t)left : room;
        unsigned char *dst = o->buf + o->len;
        if (d == DT_F32) {
            float *f = (float *)(void *)dst;
            for (size_t i = 0; i < k; i++) f[i] = base + scale * rng_normal(&r);
        } else if (d == DT_F16) {
            uint16_t *h = (uint16_t *)(void *)dst;
            for (size_t i = 0; i < k; i++) h[i] = to_f16(base + scale * rng_normal(&r));
        } else {
            uint16_t *h = (uint16_t *)(void *)dst;
            for (size_t i = 0; i < k; i++) h[i] = to_bf16(base + scale * rng_normal(&r));
        }
        o->len += k * es;
        left -= k;
    }
    return 0;
}

/* A growable string. */
typedef struct sbuf { char *s; size_t len, cap; } sbuf;

__attribute__((format(printf, 2, 3)))
static int sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return -1;
        if (b->s && b->len + (size_t)n < b->cap) { b->len += (size_t)n; return 0; }
        size_t nc = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
        char *ns = realloc(b->s, nc);
        if (!ns) return -1;
        b->s = ns;
        b->cap = nc;
    }
}

static void shard_name(char *buf, size_t cap, int i, int nshards)
{
    if (nshards == 1) snprintf(buf, cap, "model.safetensors");
    else snprintf(buf, cap, "model-%05d-of-%05d.safetensors", i + 1, nshards);
}

static int write_shard(const char *dir, const plan *p, int si, int nshards, enum dt d, uint64_t seed,
                       out *o)
{
    char name[64], path[4096], tmp[4200];
    shard_name(name, sizeof name, si, nshards);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    sbuf h = {0};
    int rc = sb_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < p->n && rc == 0; i++) {
        const gtensor *t = &p->t[i];
        if (t->shard != si) continue;
        rc |= sb_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, dt_name(d));
        for (int k = 0; k < t->ndim; k++) rc |= sb_printf(&h, "%s%lld", k ? "," : "", (long long)t->shape[k]);
        rc |= sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)t->off,
                        (unsigned long long)(t->off + t->nbytes));
    }
    rc |= sb_printf(&h, "}");
    while (rc == 0 && (8 + h.len) % 8) rc |= sb_printf(&h, " "); /* data area 8-byte aligned */
    if (rc) { free(h.s); fprintf(stderr, "gen_weights: out of memory\n"); return -1; }
    o->fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    o->path = tmp;
    o->len = 0;
    o->werr = 0;
    if (o->fd < 0) {
        fprintf(stderr, "gen_weights: %s: %s\n", tmp, strerror(errno));
        free(h.s);
        return -1;
    }
    unsigned char len8[8];
    for (int k = 0; k < 8; k++) len8[k] = (unsigned char)((uint64_t)h.len >> (8 * k));
    rc = out_bytes(o, len8, 8);
    if (rc == 0) rc = out_bytes(o, h.s, h.len);
    free(h.s);
    for (int i = 0; i < p->n && rc == 0; i++)
        if (p->t[i].shard == si) rc = out_tensor(o, &p->t[i], d, seed);
    if (rc == 0) rc = out_flush(o);
    if (out_wait(o) < 0) rc = -1;
    if (close(o->fd) < 0 && rc == 0) {
        fprintf(stderr, "gen_weights: %s: %s\n", tmp, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && rename(tmp, path) < 0) {
        fprintf(stderr, "gen_weights: rename %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (rc < 0) unlink(tmp);
    return rc;
}

static int write_index(const char *dir, const plan *p, int nshards, uint64_t total)
{
    char path[4096], name[64];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "gen_weights: %s: %s\n", path, strerror(errno)); return -1; }
    fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {\n",
            (unsigned long long)total);
    for (int i = 0; i < p->n; i++) {
        shard_name(name, sizeof name, p->t[i].shard, nshards);
        fprintf(f, "    \"%s\": \"%s\"%s\n", p->t[i].name, name, i + 1 < p->n ? "," : "");
    }
    fprintf(f, "  }\n}\n");
    if (fclose(f) != 0) { fprintf(stderr, "gen_weights: %s: write failed\n", path); return -1; }
    return 0;
}

static int copy_file(const char *src, const char *dir, const char *name)
{
    char dst[4096];
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    FILE *in = fopen(src, "rb");
    if (!in) { fprintf(stderr, "gen_weights: %s: %s\n", src, strerror(errno)); return -1; }
    FILE *o = fopen(dst, "wb");
    if (!o) { fprintf(stderr, "gen_weights: %s: %s\n", dst, strerror(errno)); fclose(in); return -1; }
    char buf[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, o) != n) { rc = -1; break; }
    if (ferror(in)) rc = -1;
    fclose(in);
    if (fclose(o) != 0) rc = -1;
    if (rc) fprintf(stderr, "gen_weights: copying %s to %s failed\n", src, dst);
    return rc;
}

static int mkdirs(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) < 0 && errno != EEXIST) return -1;
            *s = '/';
        }
    return mkdir(p, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: gen_weights [options] OUT_DIR\n"
        "Writes a Hugging Face BLIP-2 folder with seeded random weights.\n"
        "  --config FILE        config.json to follow (default: the real blip2-opt-2.7b,\n"
        "                       <golden>/real/blip2-opt-2.7b.config.json)\n"
        "  --tiny               the golden tiny model's config (<golden>/opt-tiny/config.json)\n"
        "  --preprocessor FILE  preprocessor_config.json (default: the one beside --config,\n"
        "                       else <golden>/real/blip2-opt-2.7b.preprocessor_config.json)\n"
        "  --tokenizer DIR      vocab.json, merges.txt, tokenizer_config.json,\n"
        "                       special_tokens_map.json (default <golden>/opt-tiny); for a\n"
        "                       T5 config (text_config.model_type t5, e.g.\n"
        "                       <golden>/real/blip2-flan-t5-xl.config.json) spiece.model,\n"
        "                       tokenizer_config.json, special_tokens_map.json\n"
        "                       (default <golden>/t5-tiny)\n"
        "  --dtype f32|f16|bf16 tensor dtype (default f16)\n"
        "  --shard-mb N         shard size limit in MB (default 2000; 0 = one model.safetensors)\n"
        "  --seed N             random seed (default 1)\n"
        "  --golden DIR         the golden data (default $GOLDEN_DIR or %s)\n"
        "  -q                   quiet\n", B2_GOLDEN_DIR);
}

int b2bench_gen_weights(int argc, char **argv)
{
    const char *golden = getenv("GOLDEN_DIR") ? getenv("GOLDEN_DIR") : B2_GOLDEN_DIR;
    const char *cfg_path = NULL, *pp_path = NULL, *tok_dir = NULL, *outdir = NULL;
    int tiny = 0, quiet = 0;
    enum dt d = DT_F16;
    double shard_mb = 2000;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--tiny")) tiny = 1;
        else if (!strcmp(a, "-q")) quiet = 1;
        else if (a[0] == '-' && a[1] == '-' && !v) { fprintf(stderr, "gen_weights: %s needs a value\n", a); return 2; }
        else if (!strcmp(a, "--config")) cfg_path = argv[++i];
        else if (!strcmp(a, "--preprocessor")) pp_path = argv[++i];
        else if (!strcmp(a, "--tokenizer")) tok_dir = argv[++i];
        else if (!strcmp(a, "--golden")) golden = argv[++i];
        else if (!strcmp(a, "--seed")) seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--shard-mb")) {
            char *e;
            shard_mb = strtod(argv[++i], &e);
            if (*e || shard_mb < 0) { fprintf(stderr, "gen_weights: bad --shard-mb\n"); return 2; }
        } else if (!strcmp(a, "--dtype")) {
            ++i;
            if (!strcmp(v, "f32")) d = DT_F32;
            else if (!strcmp(v, "f16")) d = DT_F16;
            else if (!strcmp(v, "bf16")) d = DT_BF16;
            else { fprintf(stderr, "gen_weights: --dtype must be f32, f16 or bf16\n"); return 2; }
        } else if (a[0] == '-') { fprintf(stderr, "gen_weights: unknown option %s\n", a); usage(stderr); return 2; }
        else if (!outdir) outdir = a;
        else { fprintf(stderr, "gen_weights: more than one output folder\n"); return 2; }
    }
    if (!outdir) { usage(stderr); return 2; }

    char cfgbuf[4096], ppbuf[4096], tokbuf[4096], path[8400];
    if (!cfg_path) {
        snprintf(cfgbuf, sizeof cfgbuf, tiny ? "%s/opt-tiny/config.json" : "%s/real/blip2-opt-2.7b.config.json",
                 golden);
        cfg_path = cfgbuf;
    }
    if (!pp_path) {
        const char *slash = strrchr(cfg_path, '/');
        int dl = slash ? (int)(slash - cfg_path) : 1;
        snprintf(ppbuf, sizeof ppbuf, "%.*s/preprocessor_config.json", dl, slash ? cfg_path : ".");
        if (!exists(ppbuf))
            snprintf(ppbuf, sizeof ppbuf, "%s/real/blip2-opt-2.7b.preprocessor_config.json", golden);
        pp_path = ppbuf;
    }

    b2_config c;
    blip2_error err = {0};
    if (b2__config_load(&c, cfg_path, &err) < 0) { fprintf(stderr, "gen_weights: %s\n", err.text); return 1; }
    const int t5 = c.family == B2_FAMILY_T5;
    if (!tok_dir) {
        snprintf(tokbuf, sizeof tokbuf, t5 ? "%s/t5-tiny" : "%s/opt-tiny", golden);
        tok_dir = tokbuf;
    }
    plan p = {0};
    if (make_plan(&p, &c) < 0) { fprintf(stderr, "gen_weights: out of memory\n"); free(p.t); return 1; }

    /* shard assignment */
    const uint64_t limit = shard_mb > 0 ? (uint64_t)(shard_mb * 1e6) : UINT64_MAX;
    uint64_t total = 0, cur = 0;
    int si = 0;
    for (int i = 0; i < p.n; i++) {
        gtensor *t = &p.t[i];
        t->nbytes = numel(t) * dt_size(d);
        if (cur > 0 && cur + t->nbytes > limit) { si++; cur = 0; }
        t->shard = si;
        t->off = cur;
        cur += t->nbytes;
        total += t->nbytes;
    }
    const int nshards = si + 1;
    if (!quiet)
        fprintf(stderr, "gen_weights: %d tensors, %.3f G parameters, %.2f GB as %s in %d file%s -> %s\n",
                p.n, (double)total / dt_size(d) / 1e9, (double)total / 1e9, dt_name(d), nshards,
                nshards > 1 ? "s" : "", outdir);

    int rc = 1;
    out o = {.fd = -1, .cap = 32u << 20};
    o.bufs[0] = malloc(o.cap);
    o.bufs[1] = malloc(o.cap);
    o.buf = o.bufs[0];
    if (!o.bufs[0] || !o.bufs[1]) { fprintf(stderr, "gen_weights: out of memory\n"); goto done; }
    if (mkdirs(outdir) < 0) { fprintf(stderr, "gen_weights: %s: %s\n", outdir, strerror(errno)); goto done; }
    /* a previous run's files under other names would confuse the loader */
    snprintf(path, sizeof path, "%s/model.safetensors", outdir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", outdir);
    unlink(path);
    DIR *dh = opendir(outdir);
    for (struct dirent *de; dh && (de = readdir(dh));)
        if (!strncmp(de->d_name, "model-", 6) && strstr(de->d_name, ".safetensors")) {
            snprintf(path, sizeof path, "%s/%s", outdir, de->d_name);
            unlink(path);
        }
    if (dh) closedir(dh);
    if (copy_file(cfg_path, outdir, "config.json") < 0) goto done;
    if (copy_file(pp_path, outdir, "preprocessor_config.json") < 0) goto done;
    static const char *const tokfiles[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                           "special_tokens_map.json"};
    static const char *const t5files[] = {"spiece.model", "tokenizer_config.json", "special_tokens_map.json"};
    const char *const *tf = t5 ? t5files : tokfiles;
    const size_t ntf = t5 ? sizeof t5files / sizeof t5files[0] : sizeof tokfiles / sizeof tokfiles[0];
    for (size_t i = 0; i < ntf; i++) {
        snprintf(path, sizeof path, "%s/%s", tok_dir, tf[i]);
        if (copy_file(path, outdir, tf[i]) < 0) goto done;
    }
    double t0 = now();
    for (int s = 0; s < nshards; s++) {
        if (write_shard(outdir, &p, s, nshards, d, seed, &o) < 0) goto done;
        if (!quiet) {
            char name[64];
            shard_name(name, sizeof name, s, nshards);
            fprintf(stderr, "  %s  (%.1f s)\n", name, now() - t0);
        }
    }
    if (nshards > 1 && write_index(outdir, &p, nshards, total) < 0) goto done;
    if (!quiet)
        fprintf(stderr, "gen_weights: done in %.1f s (%.2f GB/s)\n", now() - t0,
                (double)total / 1e9 / (now() - t0 + 1e-9));
    rc = 0;
done:
    free(o.bufs[0]);
    free(o.bufs[1]);
    free(p.t);
    return rc;
}

#ifndef B2_GEN_WEIGHTS_NO_MAIN
int main(int argc, char **argv)
{
    return b2bench_gen_weights(argc, argv);
}
#endif
