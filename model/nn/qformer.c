/*
 * qformer.c - the BLIP-2 Querying Transformer on the query tokens alone (no
 * text input), as Blip2ForConditionalGeneration runs it.
 *
 *   h = LayerNorm(query_tokens)                         (Q, Dq) per image
 *   for each layer l:
 *     h = LN(h + dense(selfattn(h)))                    BERT post-norm
 *     if l % cross_attention_frequency == 0:
 *       h = LN(h + dense(crossattn(h, image (T, Dv))))
 *     h = LN(h + out(act(inter(h))))                    the query FFN path
 *   -> last_hidden_state (n, Q, Dq)
 * The image attention mask is all ones, so no masking is needed.
 */
#include "model.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Scratch of one image's pass: q, a (Q, D); k, v (max(Q, T), D); sc. */
typedef struct qf_ws {
    float *q, *a, *k, *v, *sc;
} qf_ws;

/* One BERT attention block, post-norm: h (Q, D) = LN(h + o(attn(q(h),
 * k(src), v(src)))), src (nsrc, width): h itself for self-attention, the
 * image tokens for cross-attention. */
static void bert_block(const b2_bert_attn *A, float *h, const float *src, int nsrc, int Q, int D,
                       int heads, float eps, const qf_ws *w)
{
    const int hd = D / heads;
    b2__linear(w->q, h, Q, &A->q);
    b2__linear(w->k, src, nsrc, &A->k);
    b2__linear(w->v, src, nsrc, &A->v);
    b2__attention(w->a, D, w->q, D, w->k, D, w->v, D, Q, nsrc, heads, hd, 1.0f / sqrtf((float)hd), w->sc);
    b2__linear(w->q, w->a, Q, &A->o);
    b2__add(w->q, h, (size_t)Q * D);
    b2__layernorm(h, w->q, Q, &A->ln, eps);
}

int b2__qformer_forward(const blip2_model *m, const float *img, int n, float *out,
                        blip2_error *err)
{
    const b2_config *c = &m->cfg;
    const int D = c->q_hidden, F = c->q_inter, Q = c->num_query, Dv = c->v_hidden;
    const int T = 1 + (c->image_size / c->patch_size) * (c->image_size / c->patch_size);
    const int hd = D / c->q_heads;
    float *q = malloc(sizeof(float) * Q * D), *a = malloc(sizeof(float) * Q * D);
    float *k = malloc(sizeof(float) * (size_t)T * D), *v = malloc(sizeof(float) * (size_t)T * D);
    const size_t nsc = b2__attention_scratch(Q, T > Q ? T : Q, hd);
    float *f = malloc(sizeof(float) * (size_t)Q * F), *sc = malloc(sizeof(float) * nsc);
    int rc = 0;
    if (!q || !a || !k || !v || !f || !sc) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory in the Q-Former");
        goto out;
    }
    const qf_ws ws = {q, a, k, v, sc};
    for (int b = 0; b < n; b++) {
        float *h = out + (size_t)b * Q * D;
        const float *im = img + (size_t)b * T * Dv;
        b2__layernorm(h, m->query_tokens, Q, &m->q_ln, c->q_eps);
        for (int l = 0; l < c->q_layers; l++) {
            const b2_qformer_layer *L = &m->ql[l];
            bert_block(&L->self, h, h, Q, Q, D, c->q_heads, c->q_eps, &ws);
            if (L->has_cross) bert_block(&L->cross, h, im, T, Q, D, c->q_heads, c->q_eps, &ws);
            b2__linear(f, h, Q, &L->inter);
            b2__act(f, (size_t)Q * F, c->q_act);
            b2__linear(q, f, Q, &L->out);
            b2__add(q, h, (size_t)Q * D);
            b2__layernorm(h, q, Q, &L->out_ln, c->q_eps);
        }
    }
out:
    free(q);
    free(a);
    free(k);
    free(v);
    free(f);
    free(sc);
    return rc;
}
