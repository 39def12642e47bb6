/*
 * vision.c - the BLIP-2 vision transformer (EVA ViT-g in the real models).
 *
 *   pixel_values (n,3,H,W)
 *     -> patches (n*P, 3*ps*ps)   im2col of the stride-ps convolution
 *     -> patch linear (n*P, Dv), prepend class embedding, add positions
 *     -> L x [ h += proj(attn(ln1(h)));  h += fc2(act(fc1(ln2(h)))) ]
 *     -> post_layernorm -> last_hidden_state (n, T=1+P, Dv)
 *     -> pooled = post_layernorm(last_hidden_state[:, 0])   (normed twice,
 *        as transformers 4.37.2 does)
 * Linear layers run over all n*T rows at once (sgemm, without bias); the
 * bias rides on the next element-wise pass: fc1's with the GELU, proj's and
 * fc2's with the residual add, which also yields the next layer norm
 * (ln2, the next layer's ln1, or post_layernorm) while the row is in
 * cache.  Attention runs per image, its heads spread over the compute
 * threads.
 */
#include "model.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int b2__vision_forward(const blip2_model *m, const float *px, int n, float *out,
                       float *pooled, blip2_error *err)
{
    const b2_config *c = &m->cfg;
    const int D = c->v_hidden, F = c->v_inter, S = c->image_size, ps = c->patch_size;
    const int g = S / ps, P = g * g, T = 1 + P, K = 3 * ps * ps, hd = D / c->v_heads;
    const size_t rows = (size_t)n * T;
    float *patches = malloc(sizeof(float) * (size_t)n * P * K);
    float *h = malloc(sizeof(float) * rows * D);  /* the residual stream */
    float *x = malloc(sizeof(float) * rows * D);  /* layer-norm output */
    float *qkv = malloc(sizeof(float) * rows * 3 * D);
    float *att = malloc(sizeof(float) * rows * D);
    float *ff = malloc(sizeof(float) * rows * (size_t)F);
    /* attention in bf16 where the layers' products are (bf16 math; int8
     * math's qkv), and the CPU has AVX512-BF16 */
    const size_t sc16 = c->v_layers > 0 && m->vl[0].qkv.prec == B2_PREC_BF16 ? b2__attention_bf16_scratch(T, T, hd) : 0;
    const int att16 = sc16 > 0;
    const size_t sc_bytes = att16 ? sc16 : sizeof(float) * b2__attention_scratch(T, T, hd);
    void *sc = aligned_alloc(64, (sc_bytes + 63) / 64 * 64);
    int rc = 0;
    if (!patches || !h || !x || !qkv || !att || !ff || !sc) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory in the vision encoder");
        goto out;
    }
    /* im2col: patch p = (gy, gx), feature (ch, ky, kx) as the conv weight is laid out */
    for (int b = 0; b < n; b++)
        for (int gy = 0; gy < g; gy++)
            for (int gx = 0; gx < g; gx++) {
                float *dst = patches + ((size_t)b * P + (size_t)gy * g + gx) * K;
                for (int ch = 0; ch < 3; ch++)
                    for (int ky = 0; ky < ps; ky++)
                        memcpy(dst + (ch * ps + ky) * ps,
                               px + (((size_t)b * 3 + ch) * S + (size_t)gy * ps + ky) * S + (size_t)gx * ps,
                               sizeof(float) * ps);
            }
    for (int b = 0; b < n; b++) {
        float *hb = h + (size_t)b * T * D;
        memcpy(hb, m->class_emb, sizeof(float) * D);
        b2__linear(hb + D, patches + (size_t)b * P * K, P, &m->patch);
        b2__add(hb, m->pos_emb, (size_t)T * D);
    }
    const float scale = 1.0f / sqrtf((float)hd);
    float *y = qkv; /* sgemm output before its bias; qkv is free by then */
    if (c->v_layers > 0) b2__layernorm(x, h, (int)rows, &m->vl[0].ln1, c->v_eps);
    else b2__layernorm(out, h, (int)rows, &m->post_ln, c->v_eps);
    for (int l = 0; l < c->v_layers; l++) {
        const b2_vision_layer *L = &m->vl[l];
        const b2_ln *next_ln = l + 1 < c->v_layers ? &m->vl[l + 1].ln1 : &m->post_ln;
        b2__linear(qkv, x, (int)rows, &L->qkv);
        for (int b = 0; b < n; b++) {
            const float *qb = qkv + (size_t)b * T * 3 * D;
            if (att16)
                b2__attention_bf16(att + (size_t)b * T * D, D, qb, 3 * D, qb + D, 3 * D, qb + 2 * D, 3 * D, T, T,
                                   c->v_heads, hd, scale, sc);
            else
                b2__attention(att + (size_t)b * T * D, D, qb, 3 * D, qb + D, 3 * D, qb + 2 * D, 3 * D,
                              T, T, c->v_heads, hd, scale, sc);
        }
        b2__linear_nobias(y, att, (int)rows, &L->proj);
        b2__residual_layernorm(x, h, y, L->proj.b, (int)rows, &L->ln2, c->v_eps);
        b2__linear_nobias(ff, x, (int)rows, &L->fc1);
        b2__bias_act(ff, L->fc1.b, (int)rows, F, c->v_act);
        b2__linear_nobias(y, ff, (int)rows, &L->fc2);
        b2__residual_layernorm(l + 1 < c->v_layers ? x : out, h, y, L->fc2.b, (int)rows, next_ln, c->v_eps);
    }
    if (pooled)
        for (int b = 0; b < n; b++)
            b2__layernorm(pooled + (size_t)b * D, out + (size_t)b * T * D, 1, &m->post_ln, c->v_eps);
out:
    free(patches);
    free(h);
    free(x);
    free(qkv);
    free(att);
    free(ff);
    free(sc);
    return rc;
}
