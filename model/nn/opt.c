/*
 * opt.c - the OPT decoder (Meta's Open Pre-trained Transformer) with a KV
 * cache per sequence, as OPTForCausalLM computes it.
 *
 *   emb (n, D) -> + embed_pos[pos + 2]
 *   for each layer (pre-norm when do_layer_norm_before):
 *     x = ln(h); q = (x Wq + bq) / sqrt(hd); k, v -> cache slot pos
 *     h += o(softmax(q K[0..pos]^T) V[0..pos])
 *     h += fc2(act(fc1(ffn_ln(h))))
 *   -> final_layer_norm -> hidden (n, D)
 *   logits = hidden @ embed_tokens^T (tied lm_head)
 *
 * Rows of several sequences are processed together: every projection is
 * one matrix product over all rows (this is how decode steps of several
 * requests are batched), through b2__linear_rows, which gives each row the
 * same bits whatever else is in the batch; attention is per row over that
 * row's own cache.
 * Positions are cache slots: the reference derives position ids from the
 * attention mask (cumsum - 1), which for unpadded rows is the slot index.
 * b2__opt_lm (at the end) is OPT behind the language-model interface of
 * lm.h: a decoder-only family, its prefill is rows of the decoder.
 */
#include "model.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int b2__opt_ws_init(b2_opt_ws *ws, const blip2_model *m, int max_rows, int max_ctx)
{
    const size_t D = (size_t)m->cfg.t_hidden, Dm = D, F = (size_t)m->cfg.t_ffn, R = (size_t)max_rows;
    memset(ws, 0, sizeof *ws);
    ws->h = malloc(sizeof(float) * R * Dm);
    ws->x = malloc(sizeof(float) * R * Dm);
    ws->q = malloc(sizeof(float) * R * D);
    ws->k = malloc(sizeof(float) * R * D);
    ws->v = malloc(sizeof(float) * R * D);
    ws->a = malloc(sizeof(float) * R * D);
    ws->f = malloc(sizeof(float) * R * F);
    ws->s = malloc(sizeof(float) * b2__attention_scratch(1, max_ctx, (int)(D / (size_t)m->cfg.t_heads)));
    ws->max_rows = max_rows;
    ws->max_ctx = max_ctx;
    if (!ws->h || !ws->x || !ws->q || !ws->k || !ws->v || !ws->a || !ws->f || !ws->s) {
        b2__opt_ws_free(ws);
        return BLIP2_ENOMEM;
    }
    return 0;
}

void b2__opt_ws_free(b2_opt_ws *ws)
{
    free(ws->h); free(ws->x); free(ws->q); free(ws->k);
    free(ws->v); free(ws->a); free(ws->f); free(ws->s);
    memset(ws, 0, sizeof *ws);
}

void b2__opt_embed(const blip2_model *m, const int32_t *ids, int n, float *emb)
{
    const size_t D = (size_t)m->cfg.t_hidden;
    for (int i = 0; i < n; i++)
        b2__wrows_to_f32(emb + i * D, m->embed_tokens, m->embed_wt, ids[i], 1, (int)D);
}

void b2__opt_logits(const blip2_model *m, const float *hidden, int n, float *logits)
{
    const int D = m->cfg.t_hidden, V = m->cfg.t_vocab;
    b2__linear_prefetch_next(&m->tl[0].q, n); /* the next step starts there */
    if (m->lm_head_wt == B2_WT_F32) b2__matmul_rows(logits, V, hidden, D, m->lm_head, D, n, V, D);
    else b2__wmatmul_rows(logits, V, hidden, D, m->lm_head, m->lm_head_wt, n, V, D);
}

void b2__opt_forward(const blip2_model *m, b2_opt_ws *ws, const float *emb, int n,
                     b2_kv *const *kvs, const int *seq, const int *pos, float *hidden)
{
    const b2_config *c = &m->cfg;
    const int D = c->t_hidden, F = c->t_ffn, H = c->t_heads, hd = D / H;
    const float eps = 1e-5f, scale = 1.0f / sqrtf((float)hd);
    float *h = ws->h, *x = ws->x;
    memcpy(h, emb, sizeof(float) * (size_t)n * D);
    for (int i = 0; i < n; i++)
        b2__add(h + (size_t)i * D, m->embed_pos + (size_t)(pos[i] + 2) * D, (size_t)D);
    for (int l = 0; l < c->t_layers; l++) {
        const b2_opt_layer *L = &m->tl[l];
        if (c->t_ln_before) b2__layernorm(x, h, n, &L->attn_ln, eps);
        else memcpy(x, h, sizeof(float) * (size_t)n * D);
        /* each product names the next (read meanwhile by waiting threads) */
        b2__linear_prefetch_next(&L->o, n);
        b2__linear_rows_multi((float *const[]){ws->q, ws->k, ws->v}, x, n,
                              (const b2_linear *const[]){&L->q, &L->k, &L->v}, 3);
        for (size_t i = 0; i < (size_t)n * D; i++) ws->q[i] *= scale;
        b2__kv_store(kvs, seq, pos, n, l, ws->k, ws->v);
        for (int i = 0; i < n; i++) {
            const b2_kv *kv = kvs[seq[i]];
            size_t base = b2__kv_layer(kv, l);
            /* one query over its own cache, heads spread over the pool */
            b2__attention(ws->a + (size_t)i * D, D, ws->q + (size_t)i * D, D, kv->k + base, D, kv->v + base, D,
                          1, pos[i] + 1, H, hd, 1.0f, ws->s);
        }
        b2__linear_prefetch_next(&L->fc1, n);
        b2__linear_rows(x, ws->a, n, &L->o);
        b2__add(h, x, (size_t)n * D);
        if (!c->t_ln_before) b2__layernorm(h, h, n, &L->attn_ln, eps);
        if (c->t_ln_before) b2__layernorm(x, h, n, &L->ffn_ln, eps);
        else memcpy(x, h, sizeof(float) * (size_t)n * D);
        b2__linear_prefetch_next(&L->fc2, n);
        b2__linear_rows(ws->f, x, n, &L->fc1);
        b2__act(ws->f, (size_t)n * F, c->t_act);
        if (l + 1 < c->t_layers) b2__linear_prefetch_next(&m->tl[l + 1].q, n);
        else b2__wprefetch_next(m->lm_head_wt != B2_WT_F32 ? m->lm_head : NULL, m->lm_head_wt, n, c->t_vocab, D);
        b2__linear_rows(x, ws->f, n, &L->fc2);
        b2__add(h, x, (size_t)n * D);
        if (!c->t_ln_before) b2__layernorm(h, h, n, &L->ffn_ln, eps);
    }
    if (c->t_final_ln) b2__layernorm(h, h, n, &m->final_ln, eps);
    memcpy(hidden, h, sizeof(float) * (size_t)n * D);
}

/* ---- b2_lm_ops ---- */

static void opt_kv_dims(const blip2_model *m, size_t *layers, size_t *width)
{
    *layers = (size_t)m->cfg.t_layers;
    *width = (size_t)m->cfg.t_hidden;
}

static int opt_ws_reserve(const blip2_model *m, void **ws, int rows, int ctx, int enc_rows)
{
    (void)enc_rows; /* no encoder */
    b2_opt_ws *w = *ws;
    if (!w && !(w = *ws = calloc(1, sizeof *w))) return BLIP2_ENOMEM;
    if (rows <= w->max_rows && ctx <= w->max_ctx) return 0;
    const int r = rows > w->max_rows ? rows : w->max_rows, x = ctx > w->max_ctx ? ctx : w->max_ctx;
    b2__opt_ws_free(w);
    return b2__opt_ws_init(w, m, r, x);
}

static void opt_ws_free(void *ws)
{
    if (!ws) return;
    b2__opt_ws_free(ws);
    free(ws);
}

static void opt_forward(const blip2_model *m, void *ws, const b2_lm_rows *r, float *hidden)
{
    b2__opt_forward(m, ws, r->emb, r->n, r->kv, r->seq, r->pos, hidden);
}

static void opt_logits(const blip2_model *m, float *hidden, int n, float *logits)
{
    b2__opt_logits(m, hidden, n, logits);
}

const b2_lm_ops b2__opt_lm = {
    .name = "opt",
    .kv_dims = opt_kv_dims,
    .embed = b2__opt_embed,
    .ws_reserve = opt_ws_reserve,
    .ws_free = opt_ws_free,
    .forward = opt_forward,
    .logits = opt_logits,
};
