/*
 * t5.c - the T5 encoder-decoder of Flan-T5 BLIP-2, as transformers v4.37.2
 * runs T5ForConditionalGeneration inside Blip2ForConditionalGeneration.
 *
 *   encoder: emb (n, D) = [query embeds ; shared(prompt ids)], no scaling
 *     for each block (pre-norm, residual):
 *       h += o(attn(q, k, v of rms(h)) + bias_enc[bucket(k - q)])
 *       h += wo(act(wi0 x) * wi1 x), x = rms(h)     (wo(act(wi x)) ungated)
 *     -> final rms -> enc (n, D); cross keys/values of every decoder block
 *        are computed from it once per request (b2_t5_cross)
 *   decoder: shared(token) at position p
 *     for each block: self-attention over the cache 0..p with the causal
 *       bias_dec[bucket(k - p)], cross-attention over enc (no bias),
 *       feed-forward as above
 *     -> final rms -> (* d_model^-0.5 if tied) -> lm_head -> logits
 *
 * T5 arithmetic: RMSNorm w * x / sqrt(mean(x^2) + eps) without mean or
 * bias; attention scores q.k without 1/sqrt(d_kv); inner size I = heads *
 * d_kv, which need not equal d_model; the position bias is the embedding
 * (buckets, H) of block 0, reused by every block of its stack.
 * Decoder projections go through b2__linear_rows so a row's numbers do not
 * depend on what it is batched with.
 * b2__t5_lm (at the end) is T5 behind the language-model interface of
 * lm.h: an encoder-decoder family, its prefill runs the encoder.
 */
#include "t5.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int b2__t5_bucket(int rel, int bidirectional, int num_buckets, int max_distance)
{
    int ret = 0, n;
    if (bidirectional) {
        num_buckets /= 2;
        if (rel > 0) ret = num_buckets;
        n = rel < 0 ? -rel : rel;
    } else {
        n = rel < 0 ? -rel : 0;
    }
    const int max_exact = num_buckets / 2;
    if (n < max_exact) return ret + n;
    /* as torch does it: float32 log, the divisor a double rounded to f32 */
    float v = logf((float)n / (float)max_exact) / (float)log((double)max_distance / max_exact) *
              (float)(num_buckets - max_exact);
    long large = max_exact + (long)v;
    if (large > num_buckets - 1) large = num_buckets - 1;
    return ret + (int)large;
}

int b2__t5_init_buckets(blip2_model *m)
{
    const b2_config *c = &m->cfg;
    struct b2_t5 *t = m->t5;
    const int md = c->t_max_dist;
    t->enc_bucket = malloc(sizeof(int) * (size_t)(2 * md + 1));
    t->dec_bucket = malloc(sizeof(int) * (size_t)(2 * md + 1));
    if (!t->enc_bucket || !t->dec_bucket) return BLIP2_ENOMEM;
    for (int r = -md; r <= md; r++) {
        t->enc_bucket[r + md] = b2__t5_bucket(r, 1, c->t_buckets, md);
        t->dec_bucket[r + md] = b2__t5_bucket(r, 0, c->t_buckets, md);
    }
    return 0;
}

void b2__t5_free(struct b2_t5 *t)
{
    if (!t) return;
    free(t->enc);
    free(t->dec);
    free(t->enc_bucket);
    free(t->dec_bucket);
    free(t);
}

/* Beyond +-max_distance the bucket no longer changes. */
static inline int bucket_of(const int *table, int md, int rel)
{
    return table[(rel < -md ? -md : rel > md ? md : rel) + md];
}

void b2__t5_embed(const blip2_model *m, const int32_t *ids, int n, float *emb)
{
    const size_t D = (size_t)m->cfg.t_hidden;
    const struct b2_t5 *t = m->t5;
    for (int i = 0; i < n; i++) {
        if (t->shared_wt == B2_WT_F32)
            memcpy(emb + i * D, (const float *)t->shared + (size_t)ids[i] * D, sizeof(float) * D);
        else
            b2__wrows_to_f32(emb + i * D, t->shared, t->shared_wt, ids[i], 1, (int)D);
    }
}

/* y (n, d) = w * x / sqrt(mean(x^2) + eps), row by row; y may equal x. */
static void rmsnorm(float *y, const float *x, int n, int d, const float *w, float eps)
{
    for (int i = 0; i < n; i++) {
        const float *xr = x + (size_t)i * d;
        float *yr = y + (size_t)i * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)xr[j] * xr[j];
        const float r = 1.0f / sqrtf((float)(ss / d) + eps);
        for (int j = 0; j < d; j++) yr[j] = w[j] * (xr[j] * r);
    }
}

/* One query's attention over nk keys: out (I) for q (I); keys and values
 * rows of width ld (head h at columns h*dk).  The bias of head h and key j
 * is rel[bucket[key_pos - qpos] * H + h] when rel is non-NULL. */
static void attend(float *out, const float *q, const float *K, const float *V, size_t ld, int nk,
                   int H, int dk, const float *rel, const int *bucket, int md, int qpos, float *s)
{
    for (int h = 0; h < H; h++) {
        const float *qh = q + h * dk;
        for (int j = 0; j < nk; j++) {
            const float *kj = K + (size_t)j * ld + h * dk;
            float acc = 0;
            for (int e = 0; e < dk; e++) acc += qh[e] * kj[e];
            if (rel) acc += rel[bucket_of(bucket, md, j - qpos) * H + h];
            s[j] = acc;
        }
        b2__softmax(s, nk);
        float *oh = out + h * dk;
        memset(oh, 0, sizeof(float) * dk);
        for (int j = 0; j < nk; j++) {
            const float *vj = V + (size_t)j * ld + h * dk;
            const float w = s[j];
            for (int e = 0; e < dk; e++) oh[e] += w * vj[e];
        }
    }
}

/* h (n, D) += wo(act(wi0 x) [* wi1 x]) for x = rms(h); per-row kernels.
 * next: the product after wo (a decode step's prefetch hint), or NULL. */
static void feed_forward(const blip2_model *m, const b2_t5_layer *L, float *h, float *x, float *f0,
                         float *f1, int n, const b2_linear *next)
{
    const b2_config *c = &m->cfg;
    const int D = c->t_hidden, F = c->t_ffn;
    rmsnorm(x, h, n, D, L->ln_ff, c->t_eps);
    b2__linear_prefetch_next(&L->wo, n);
    if (c->t_gated)
        b2__linear_rows_multi((float *const[]){f0, f1}, x, n, (const b2_linear *const[]){&L->wi0, &L->wi1}, 2);
    else
        b2__linear_rows(f0, x, n, &L->wi0);
    for (int i = 0; i < n; i++) b2__act(f0 + (size_t)i * F, (size_t)F, c->t_act);
    if (c->t_gated)
        for (size_t i = 0; i < (size_t)n * F; i++) f0[i] *= f1[i];
    b2__linear_prefetch_next(next, n);
    b2__linear_rows(x, f0, n, &L->wo);
    b2__add(h, x, (size_t)n * D);
}

size_t b2__t5_encode_scratch(const blip2_model *m, int n)
{
    const b2_config *c = &m->cfg;
    const size_t N = (size_t)n, I = (size_t)c->t_heads * c->t_dkv;
    return N * c->t_hidden * 2 + N * I * 4 + N * c->t_ffn * 2 + N;
}

void b2__t5_encode(const blip2_model *m, const float *emb, int n, float *out, float *scratch)
{
    const b2_config *c = &m->cfg;
    const struct b2_t5 *t = m->t5;
    const int D = c->t_hidden, H = c->t_heads, dk = c->t_dkv, I = H * dk;
    const size_t N = (size_t)n;
    float *h = scratch, *x = h + N * D, *q = x + N * D, *k = q + N * I, *v = k + N * I;
    float *a = v + N * I, *f0 = a + N * I, *f1 = f0 + N * c->t_ffn, *s = f1 + N * c->t_ffn;
    memcpy(h, emb, sizeof(float) * N * D);
    for (int l = 0; l < c->t_layers; l++) {
        const b2_t5_layer *L = &t->enc[l];
        rmsnorm(x, h, n, D, L->ln_sa, c->t_eps);
        b2__linear_rows_multi((float *const[]){q, k, v}, x, n,
                              (const b2_linear *const[]){&L->sa.q, &L->sa.k, &L->sa.v}, 3);
        for (int i = 0; i < n; i++)
            attend(a + (size_t)i * I, q + (size_t)i * I, k, v, (size_t)I, n, H, dk, t->enc_rel,
                   t->enc_bucket, c->t_max_dist, i, s);
        b2__linear_rows(x, a, n, &L->sa.o);
        b2__add(h, x, N * D);
        feed_forward(m, L, h, x, f0, f1, n, NULL);
    }
    rmsnorm(out, h, n, D, t->enc_final, c->t_eps);
}

int b2__t5_cross_init(b2_t5_cross *cr, const blip2_model *m, int n)
{
    const b2_config *c = &m->cfg;
    if (b2__kv_alloc(&cr->kv, (size_t)c->t_dec_layers, n, (size_t)c->t_heads * c->t_dkv) < 0) return BLIP2_ENOMEM;
    cr->kv.len = n;
    return 0;
}

void b2__t5_cross_free(b2_t5_cross *cr)
{
    b2__kv_free(&cr->kv);
}

void b2__t5_cross_fill(const blip2_model *m, b2_t5_cross *cr, const float *enc)
{
    const b2_kv *kv = &cr->kv;
    for (int l = 0; l < m->cfg.t_dec_layers; l++) {
        const b2_t5_layer *L = &m->t5->dec[l];
        b2__linear_rows_multi((float *const[]){kv->k + b2__kv_layer(kv, l), kv->v + b2__kv_layer(kv, l)}, enc,
                              kv->len, (const b2_linear *const[]){&L->ca.k, &L->ca.v}, 2);
    }
}

int b2__t5_ws_init(b2_t5_ws *ws, const blip2_model *m, int max_rows, int max_ctx)
{
    const b2_config *c = &m->cfg;
    const size_t R = (size_t)max_rows, D = (size_t)c->t_hidden, I = (size_t)c->t_heads * c->t_dkv;
    const size_t F = (size_t)c->t_ffn;
    memset(ws, 0, sizeof *ws);
    ws->h = malloc(sizeof(float) * R * D);
    ws->x = malloc(sizeof(float) * R * (D > I ? D : I));
    ws->q = malloc(sizeof(float) * R * I);
    ws->k = malloc(sizeof(float) * R * I);
    ws->v = malloc(sizeof(float) * R * I);
    ws->a = malloc(sizeof(float) * R * I);
    ws->f0 = malloc(sizeof(float) * R * F);
    ws->f1 = malloc(sizeof(float) * R * F);
    /* scores for attend(), and b2__attention's scratch (larger) */
    ws->s = malloc(sizeof(float) * b2__attention_scratch(1, max_ctx, m->cfg.t_dkv));
    ws->max_rows = max_rows;
    ws->max_ctx = max_ctx;
    if (!ws->h || !ws->x || !ws->q || !ws->k || !ws->v || !ws->a || !ws->f0 || !ws->f1 || !ws->s) {
        b2__t5_ws_free(ws);
        return BLIP2_ENOMEM;
    }
    return 0;
}

void b2__t5_ws_free(b2_t5_ws *ws)
{
    free(ws->h); free(ws->x); free(ws->q); free(ws->k); free(ws->v);
    free(ws->a); free(ws->f0); free(ws->f1); free(ws->s);
    memset(ws, 0, sizeof *ws);
}

void b2__t5_decode(const blip2_model *m, b2_t5_ws *ws, const float *emb, int n,
                   struct b2_kv *const *kvs, const b2_t5_cross *const *cross,
                   const int *seq, const int *pos, float *hidden)
{
    const b2_config *c = &m->cfg;
    const struct b2_t5 *t = m->t5;
    const int D = c->t_hidden, H = c->t_heads, dk = c->t_dkv, I = H * dk;
    float *h = ws->h, *x = ws->x;
    /* the logits' weight, as the product after the last layer */
    const b2_linear lm = {.w = t->lm_head, .out = c->t_vocab, .in = D, .wt = t->lm_head_wt, .prec = B2_PREC_F32};
    memcpy(h, emb, sizeof(float) * (size_t)n * D);
    for (int l = 0; l < c->t_dec_layers; l++) {
        const b2_t5_layer *L = &t->dec[l];
        rmsnorm(x, h, n, D, L->ln_sa, c->t_eps);
        /* each product names the next (read meanwhile by waiting threads) */
        b2__linear_prefetch_next(&L->sa.o, n);
        b2__linear_rows_multi((float *const[]){ws->q, ws->k, ws->v}, x, n,
                              (const b2_linear *const[]){&L->sa.q, &L->sa.k, &L->sa.v}, 3);
        b2__kv_store(kvs, seq, pos, n, l, ws->k, ws->v);
        for (int i = 0; i < n; i++) {
            const b2_kv *kv = kvs[seq[i]];
            size_t base = b2__kv_layer(kv, l);
            attend(ws->a + (size_t)i * I, ws->q + (size_t)i * I, kv->k + base, kv->v + base, (size_t)I,
                   pos[i] + 1, H, dk, t->dec_rel, t->dec_bucket, c->t_max_dist, pos[i], ws->s);
        }
        b2__linear_prefetch_next(&L->ca.q, n);
        b2__linear_rows(x, ws->a, n, &L->sa.o);
        b2__add(h, x, (size_t)n * D);

        rmsnorm(x, h, n, D, L->ln_ca, c->t_eps);
        b2__linear_prefetch_next(&L->ca.o, n);
        b2__linear_rows(ws->q, x, n, &L->ca.q);
        for (int i = 0; i < n; i++) {
            const b2_kv *cr = &cross[seq[i]]->kv;
            size_t base = b2__kv_layer(cr, l);
            /* no position bias: the SIMD attention, heads on the pool */
            b2__attention(ws->a + (size_t)i * I, I, ws->q + (size_t)i * I, I, cr->k + base, I, cr->v + base, I,
                          1, cr->len, H, dk, 1.0f, ws->s);
        }
        b2__linear_prefetch_next(&L->wi0, n);
        b2__linear_rows(x, ws->a, n, &L->ca.o);
        b2__add(h, x, (size_t)n * D);
        feed_forward(m, L, h, x, ws->f0, ws->f1, n, l + 1 < c->t_dec_layers ? &t->dec[l + 1].sa.q : &lm);
    }
    rmsnorm(hidden, h, n, D, t->dec_final, c->t_eps);
}

void b2__t5_logits(const blip2_model *m, float *hidden, int n, float *logits)
{
    const int D = m->cfg.t_hidden, V = m->cfg.t_vocab;
    b2__linear_prefetch_next(&m->t5->dec[0].sa.q, n); /* the next step starts there */
    if (m->t5->lm_scale != 1.0f)
        for (size_t i = 0; i < (size_t)n * D; i++) hidden[i] *= m->t5->lm_scale;
    if (m->t5->lm_head_wt == B2_WT_F32) b2__matmul_rows(logits, V, hidden, D, m->t5->lm_head, D, n, V, D);
    else b2__wmatmul_rows(logits, V, hidden, D, m->t5->lm_head, m->t5->lm_head_wt, n, V, D);
}

int b2__t5_forward(const blip2_model *m, const float *emb, int n_enc, const int32_t *dec, int T,
                   float *enc_out, float *logits)
{
    const int D = m->cfg.t_hidden;
    float *scratch = malloc(sizeof(float) * b2__t5_encode_scratch(m, n_enc));
    float *enc = malloc(sizeof(float) * (size_t)n_enc * D);
    float *hid = malloc(sizeof(float) * (size_t)T * D), *demb = malloc(sizeof(float) * (size_t)T * D);
    int *seq = calloc((size_t)T, sizeof(int)), *pos = malloc(sizeof(int) * (size_t)T);
    b2_t5_cross cr = {0};
    b2_kv kv = {0};
    b2_t5_ws ws = {0};
    int rc = BLIP2_ENOMEM;
    if (!scratch || !enc || !hid || !demb || !seq || !pos) goto out;
    if (b2__t5_cross_init(&cr, m, n_enc) < 0 || b2__kv_init(&kv, m, T) < 0) goto out;
    if (b2__t5_ws_init(&ws, m, T, T > n_enc ? T : n_enc) < 0) goto out;
    b2__t5_encode(m, emb, n_enc, enc, scratch);
    if (enc_out) memcpy(enc_out, enc, sizeof(float) * (size_t)n_enc * D);
    b2__t5_cross_fill(m, &cr, enc);
    for (int i = 0; i < T; i++) pos[i] = i;
    b2_kv *kvp = &kv;
    const b2_t5_cross *crp = &cr;
    b2__t5_embed(m, dec, T, demb);
    b2__t5_decode(m, &ws, demb, T, &kvp, &crp, seq, pos, hid);
    b2__t5_logits(m, hid, T, logits);
    rc = 0;
out:
    b2__t5_ws_free(&ws);
    b2__kv_free(&kv);
    b2__t5_cross_free(&cr);
    free(scratch); free(enc); free(hid); free(demb); free(seq); free(pos);
    return rc;
}

/* ---- b2_lm_ops ---- */

static void t5_kv_dims(const blip2_model *m, size_t *layers, size_t *width)
{
    *layers = (size_t)m->cfg.t_dec_layers;
    *width = (size_t)m->cfg.t_heads * m->cfg.t_dkv;
}

/* The decoder's scratch, and the encoder's input, output and scratch. */
typedef struct t5_lm_ws {
    b2_t5_ws dec;
    float *enc;     /* (enc_rows, D) in, (enc_rows, D) out, b2__t5_encode_scratch(enc_rows) */
    size_t cap_enc; /* floats */
} t5_lm_ws;

static int t5_ws_reserve(const blip2_model *m, void **ws, int rows, int ctx, int enc_rows)
{
    t5_lm_ws *w = *ws;
    if (!w && !(w = *ws = calloc(1, sizeof *w))) return BLIP2_ENOMEM;
    if (rows > w->dec.max_rows || ctx > w->dec.max_ctx) {
        const int r = rows > w->dec.max_rows ? rows : w->dec.max_rows;
        const int x = ctx > w->dec.max_ctx ? ctx : w->dec.max_ctx;
        b2__t5_ws_free(&w->dec);
        if (b2__t5_ws_init(&w->dec, m, r, x) < 0) return BLIP2_ENOMEM;
    }
    /* the encoder's input and output (enc_rows, D) each, then its scratch */
    const size_t need = enc_rows > 0
                        ? 2 * (size_t)enc_rows * m->cfg.t_hidden + b2__t5_encode_scratch(m, enc_rows) : 0;
    if (need > w->cap_enc) {
        free(w->enc);
        w->cap_enc = 0;
        if (!(w->enc = malloc(sizeof(float) * need))) return BLIP2_ENOMEM;
        w->cap_enc = need;
    }
    return 0;
}

static void t5_ws_free(void *ws)
{
    t5_lm_ws *w = ws;
    if (!w) return;
    b2__t5_ws_free(&w->dec);
    free(w->enc);
    free(w);
}

static void t5_forward(const blip2_model *m, void *ws, const b2_lm_rows *r, float *hidden)
{
    t5_lm_ws *w = ws;
    b2__t5_decode(m, &w->dec, r->emb, r->n, r->kv, r->enc, r->seq, r->pos, hidden);
}

static int t5_enc_new(const blip2_model *m, int n, struct b2_lm_enc **enc)
{
    b2_t5_cross *cr = calloc(1, sizeof *cr);
    if (!cr || b2__t5_cross_init(cr, m, n) < 0) {
        free(cr);
        return BLIP2_ENOMEM;
    }
    *enc = cr;
    return 0;
}

static void t5_enc_free(struct b2_lm_enc *enc)
{
    if (!enc) return;
    b2__t5_cross_free(enc);
    free(enc);
}

/* encoder over [query ; shared(ids)], then the cross keys and values */
static void t5_prefill(const blip2_model *m, void *ws, const float *query, int Q, const int32_t *ids, int L,
                       struct b2_lm_enc *enc)
{
    t5_lm_ws *w = ws;
    const int D = m->cfg.t_hidden, ne = Q + L;
    float *in = w->enc, *out = in + (size_t)ne * D;
    memcpy(in, query, sizeof(float) * (size_t)Q * D);
    b2__t5_embed(m, ids, L, in + (size_t)Q * D);
    b2__t5_encode(m, in, ne, out, out + (size_t)ne * D);
    b2__t5_cross_fill(m, enc, out);
}

const b2_lm_ops b2__t5_lm = {
    .name = "t5",
    .kv_dims = t5_kv_dims,
    .embed = b2__t5_embed,
    .ws_reserve = t5_ws_reserve,
    .ws_free = t5_ws_free,
    .forward = t5_forward,
    .logits = b2__t5_logits,
    .enc_new = t5_enc_new,
    .enc_free = t5_enc_free,
    .prefill = t5_prefill,
};
