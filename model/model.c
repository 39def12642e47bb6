/*
 * model.c - loading a BLIP-2 checkpoint and the public entry points that are
 * neither generation nor features: shapes, preprocessing, tokenizer access.
 *
 * Load: config.json -> b2_config; preprocessor_config.json -> b2_preproc;
 * tokenizer files -> b2_bpe (OPT) or b2_t5tok (T5, spiece.model); safetensors -> every weight bound by name with
 * its expected shape (a missing or mis-shaped tensor fails the load with
 * its name), and the language model's operations (m->lm: b2__opt_lm or
 * b2__t5_lm) chosen with them.  After load the model is never written again.
 */
#include "blip2.h"
#include "model.h"
#include "tok.h"
#include "error.h"
#include "gguf.h"
#include "packed.h"
#include "pages.h"
#include "t5.h"
#include "t5tok.h"
#include "weights.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Binding context: formats names and keeps the first error. */
typedef struct binder {
    blip2_model *m;
    blip2_error *err;
    int rc;
} binder;

/* What bind and bind_typed share: the weight named by fmt, in its stored
 * type (wt) or as f32 (wt NULL); nothing once an earlier bind failed. */
__attribute__((format(printf, 5, 0)))
static const void *bindv(binder *b, b2_wtype *wt, int ndim, const int64_t *shape, const char *fmt, va_list ap)
{
    char name[256];
    vsnprintf(name, sizeof name, fmt, ap);
    if (wt) *wt = B2_WT_F32;
    if (b->rc < 0) return NULL;
    const void *p = NULL;
    if (wt) {
        b->rc = b2__weight_typed(b->m, name, ndim, shape, 1, &p, wt, b->err);
    } else {
        const float *f = NULL;
        b->rc = b2__weight(b->m, name, ndim, shape, &f, b->err);
        p = f;
    }
    return p;
}

__attribute__((format(printf, 4, 5)))
static const float *bind(binder *b, int ndim, const int64_t *shape, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const float *p = bindv(b, NULL, ndim, shape, fmt, ap);
    va_end(ap);
    return p;
}

/* A big matrix: in its stored type from a GGUF file. */
__attribute__((format(printf, 5, 6)))
static const void *bind_typed(binder *b, b2_wtype *wt, int ndim, const int64_t *shape, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const void *p = bindv(b, wt, ndim, shape, fmt, ap);
    va_end(ap);
    return p;
}

#define SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__}

static void bind_linear(binder *b, b2_linear *l, int out, int in, int bias, const char *prefix)
{
    l->out = out;
    l->in = in;
    l->w = bind_typed(b, &l->wt, SHAPE(out, in), "%s.weight", prefix);
    l->prec = b->m->prec;
    l->b = bias ? bind(b, SHAPE(out), "%s.bias", prefix) : NULL;
}

static void bind_ln(binder *b, b2_ln *ln, int d, int affine, const char *prefix)
{
    ln->d = d;
    ln->w = affine ? bind(b, SHAPE(d), "%s.weight", prefix) : NULL;
    ln->b = affine ? bind(b, SHAPE(d), "%s.bias", prefix) : NULL;
}

static void bind_bert_attn(binder *b, b2_bert_attn *a, int D, int Dkv, const char *prefix)
{
    char p[256];
    snprintf(p, sizeof p, "%s.attention.query", prefix); bind_linear(b, &a->q, D, D, 1, p);
    snprintf(p, sizeof p, "%s.attention.key", prefix); bind_linear(b, &a->k, D, Dkv, 1, p);
    snprintf(p, sizeof p, "%s.attention.value", prefix); bind_linear(b, &a->v, D, Dkv, 1, p);
    snprintf(p, sizeof p, "%s.output.dense", prefix); bind_linear(b, &a->o, D, D, 1, p);
    snprintf(p, sizeof p, "%s.output.LayerNorm", prefix); bind_ln(b, &a->ln, D, 1, p);
}

/* The T5 language model (t5.h): language_model.{shared, encoder, decoder,
 * lm_head}.  encoder/decoder.embed_tokens are tied to shared and not read. */
static void bind_t5_attn(binder *b, b2_t5_attn *a, int D, int I, const char *prefix)
{
    char p[256];
    snprintf(p, sizeof p, "%s.q", prefix); bind_linear(b, &a->q, I, D, 0, p);
    snprintf(p, sizeof p, "%s.k", prefix); bind_linear(b, &a->k, I, D, 0, p);
    snprintf(p, sizeof p, "%s.v", prefix); bind_linear(b, &a->v, I, D, 0, p);
    snprintf(p, sizeof p, "%s.o", prefix); bind_linear(b, &a->o, D, I, 0, p);
}

static void bind_t5_ff(binder *b, b2_t5_layer *L, int D, int F, int gated, const char *prefix)
{
    char p[256];
    if (gated) {
        snprintf(p, sizeof p, "%s.DenseReluDense.wi_0", prefix); bind_linear(b, &L->wi0, F, D, 0, p);
        snprintf(p, sizeof p, "%s.DenseReluDense.wi_1", prefix); bind_linear(b, &L->wi1, F, D, 0, p);
    } else {
        snprintf(p, sizeof p, "%s.DenseReluDense.wi", prefix); bind_linear(b, &L->wi0, F, D, 0, p);
    }
    snprintf(p, sizeof p, "%s.DenseReluDense.wo", prefix); bind_linear(b, &L->wo, D, F, 0, p);
    L->ln_ff = bind(b, SHAPE(D), "%s.layer_norm.weight", prefix);
}

/* Block l of the T5 encoder or decoder (side): self-attention (layer.0),
 * in the decoder cross-attention (layer.1), then the feed-forward. */
static void bind_t5_block(binder *b, b2_t5_layer *L, const char *side, int l)
{
    const b2_config *c = &b->m->cfg;
    const int D = c->t_hidden, I = c->t_heads * c->t_dkv, F = c->t_ffn;
    const int dec = strcmp(side, "decoder") == 0;
    char p[128]; /* room for bind_t5_attn/_ff's suffixes in their 256 */
    snprintf(p, sizeof p, "language_model.%s.block.%d.layer.0.SelfAttention", side, l);
    bind_t5_attn(b, &L->sa, D, I, p);
    L->ln_sa = bind(b, SHAPE(D), "language_model.%s.block.%d.layer.0.layer_norm.weight", side, l);
    if (dec) {
        snprintf(p, sizeof p, "language_model.decoder.block.%d.layer.1.EncDecAttention", l);
        bind_t5_attn(b, &L->ca, D, I, p);
        L->ln_ca = bind(b, SHAPE(D), "language_model.decoder.block.%d.layer.1.layer_norm.weight", l);
    }
    snprintf(p, sizeof p, "language_model.%s.block.%d.layer.%d", side, l, dec ? 2 : 1);
    bind_t5_ff(b, L, D, F, c->t_gated, p);
}

static int bind_t5(binder *b)
{
    blip2_model *m = b->m;
    const b2_config *c = &m->cfg;
    const int D = c->t_hidden, H = c->t_heads;
    m->lm = &b2__t5_lm;
    struct b2_t5 *t = m->t5 = calloc(1, sizeof *m->t5);
    if (!t || !(t->enc = calloc((size_t)c->t_layers, sizeof *t->enc)) ||
        !(t->dec = calloc((size_t)c->t_dec_layers, sizeof *t->dec)) || b2__t5_init_buckets(m) < 0)
        return b2__err(b->err, BLIP2_ENOMEM, "out of memory");
    t->shared = bind_typed(b, &t->shared_wt, SHAPE(c->t_vocab, D), "language_model.shared.weight");
    t->enc_rel = bind(b, SHAPE(c->t_buckets, H),
                      "language_model.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    t->dec_rel = bind(b, SHAPE(c->t_buckets, H),
                      "language_model.decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    for (int l = 0; l < c->t_layers; l++) bind_t5_block(b, &t->enc[l], "encoder", l);
    t->enc_final = bind(b, SHAPE(D), "language_model.encoder.final_layer_norm.weight");
    for (int l = 0; l < c->t_dec_layers; l++) bind_t5_block(b, &t->dec[l], "decoder", l);
    t->dec_final = bind(b, SHAPE(D), "language_model.decoder.final_layer_norm.weight");
    /* tied: lm_head is shared and the decoder output is scaled by D^-0.5 */
    t->lm_scale = c->t_tie ? 1.0f / sqrtf((float)D) : 1.0f;
    if (c->t_tie) {
        t->lm_head = t->shared;
        t->lm_head_wt = t->shared_wt;
    } else {
        t->lm_head = bind_typed(b, &t->lm_head_wt, SHAPE(c->t_vocab, D), "language_model.lm_head.weight");
    }
    m->dtype = b2__weights_dtype(m, "language_model.shared.weight");
    return b->rc;
}

static int bind_all(blip2_model *m, blip2_error *err)
{
    const b2_config *c = &m->cfg;
    binder b = {m, err, 0};
    char p[256];
    const int Dv = c->v_hidden, Dq = c->q_hidden, D = c->t_hidden, Dw = c->t_word_proj;
    const int ps = c->patch_size, g = c->image_size / ps, T = 1 + g * g;

    /* vision */
    m->patch.out = Dv;
    m->patch.in = 3 * ps * ps;
    m->patch.w = bind_typed(&b, &m->patch.wt, SHAPE(Dv, 3, ps, ps), "vision_model.embeddings.patch_embedding.weight");
    m->patch.b = bind(&b, SHAPE(Dv), "vision_model.embeddings.patch_embedding.bias");
    m->class_emb = bind(&b, SHAPE(1, 1, Dv), "vision_model.embeddings.class_embedding");
    m->pos_emb = bind(&b, SHAPE(1, T, Dv), "vision_model.embeddings.position_embedding");
    for (int l = 0; l < c->v_layers; l++) {
        b2_vision_layer *L = &m->vl[l];
        snprintf(p, sizeof p, "vision_model.encoder.layers.%d.layer_norm1", l); bind_ln(&b, &L->ln1, Dv, 1, p);
        snprintf(p, sizeof p, "vision_model.encoder.layers.%d.layer_norm2", l); bind_ln(&b, &L->ln2, Dv, 1, p);
        snprintf(p, sizeof p, "vision_model.encoder.layers.%d.self_attn.qkv", l);
        bind_linear(&b, &L->qkv, 3 * Dv, Dv, c->v_qkv_bias, p);
        snprintf(p, sizeof p, "vision_model.encoder.layers.%d.self_attn.projection", l);
        bind_linear(&b, &L->proj, Dv, Dv, 1, p);
        snprintf(p, sizeof p, "vision_model.encoder.layers.%d.mlp.fc1", l); bind_linear(&b, &L->fc1, c->v_inter, Dv, 1, p);
        snprintf(p, sizeof p, "vision_model.encoder.layers.%d.mlp.fc2", l); bind_linear(&b, &L->fc2, Dv, c->v_inter, 1, p);
    }
    bind_ln(&b, &m->post_ln, Dv, 1, "vision_model.post_layernorm");

    /* Q-Former */
    m->query_tokens = bind(&b, SHAPE(1, c->num_query, Dq), "query_tokens");
    bind_ln(&b, &m->q_ln, Dq, 1, "qformer.layernorm");
    for (int l = 0; l < c->q_layers; l++) {
        b2_qformer_layer *L = &m->ql[l];
        snprintf(p, sizeof p, "qformer.encoder.layer.%d.attention", l);
        bind_bert_attn(&b, &L->self, Dq, Dq, p);
        L->has_cross = l % c->q_cross_freq == 0;
        if (L->has_cross) {
            snprintf(p, sizeof p, "qformer.encoder.layer.%d.crossattention", l);
            bind_bert_attn(&b, &L->cross, Dq, c->q_enc_hidden, p);
        }
        snprintf(p, sizeof p, "qformer.encoder.layer.%d.intermediate_query.dense", l);
        bind_linear(&b, &L->inter, c->q_inter, Dq, 1, p);
        snprintf(p, sizeof p, "qformer.encoder.layer.%d.output_query.dense", l);
        bind_linear(&b, &L->out, Dq, c->q_inter, 1, p);
        snprintf(p, sizeof p, "qformer.encoder.layer.%d.output_query.LayerNorm", l);
        bind_ln(&b, &L->out_ln, Dq, 1, p);
    }
    bind_linear(&b, &m->proj, D, Dq, 1, "language_projection");
    if (c->family == B2_FAMILY_T5) return b.rc < 0 ? b.rc : bind_t5(&b);

    /* OPT */
    m->lm = &b2__opt_lm;
    const char *dec = "language_model.model.decoder";
    snprintf(p, sizeof p, "%s.embed_tokens.weight", dec);
    m->embed_tokens = bind_typed(&b, &m->embed_wt, SHAPE(c->t_vocab, Dw), "%s", p);
    snprintf(p, sizeof p, "%s.embed_positions.weight", dec);
    m->embed_pos = bind(&b, SHAPE(c->t_max_pos + 2, D), "%s", p);
    for (int l = 0; l < c->t_layers; l++) {
        b2_opt_layer *L = &m->tl[l];
        snprintf(p, sizeof p, "%s.layers.%d.self_attn.q_proj", dec, l); bind_linear(&b, &L->q, D, D, c->t_bias, p);
        snprintf(p, sizeof p, "%s.layers.%d.self_attn.k_proj", dec, l); bind_linear(&b, &L->k, D, D, c->t_bias, p);
        snprintf(p, sizeof p, "%s.layers.%d.self_attn.v_proj", dec, l); bind_linear(&b, &L->v, D, D, c->t_bias, p);
        snprintf(p, sizeof p, "%s.layers.%d.self_attn.out_proj", dec, l); bind_linear(&b, &L->o, D, D, c->t_bias, p);
        snprintf(p, sizeof p, "%s.layers.%d.self_attn_layer_norm", dec, l); bind_ln(&b, &L->attn_ln, D, c->t_ln_affine, p);
        snprintf(p, sizeof p, "%s.layers.%d.final_layer_norm", dec, l); bind_ln(&b, &L->ffn_ln, D, c->t_ln_affine, p);
        snprintf(p, sizeof p, "%s.layers.%d.fc1", dec, l); bind_linear(&b, &L->fc1, c->t_ffn, D, c->t_bias, p);
        snprintf(p, sizeof p, "%s.layers.%d.fc2", dec, l); bind_linear(&b, &L->fc2, D, c->t_ffn, c->t_bias, p);
    }
    if (c->t_final_ln) {
        snprintf(p, sizeof p, "%s.final_layer_norm", dec);
        bind_ln(&b, &m->final_ln, D, c->t_ln_affine, p);
    }
    if (c->t_tie || !b2__weight_exists(m, "language_model.lm_head.weight")) {
        m->lm_head = m->embed_tokens; /* tied: the stored copy, if any, equals it */
        m->lm_head_wt = m->embed_wt;
    } else {
        m->lm_head = bind_typed(&b, &m->lm_head_wt, SHAPE(c->t_vocab, Dw), "language_model.lm_head.weight");
    }
    m->dtype = b2__weights_dtype(m, "language_model.model.decoder.embed_tokens.weight");
    return b.rc;
}

void blip2_model_free(blip2_model *m)
{
    if (!m) return;
    b2__weights_close(m);
    b2__bpe_free(m->tok);
    b2__t5tok_free(m->t5tok);
    b2__t5_free(m->t5);
    free(m->vl);
    free(m->ql);
    free(m->tl);
    free(m->qarena);
    free(m);
}

static int alloc_layers(blip2_model *m, blip2_error *err)
{
    m->vl = calloc((size_t)m->cfg.v_layers, sizeof *m->vl);
    m->ql = calloc((size_t)m->cfg.q_layers, sizeof *m->ql);
    m->tl = calloc((size_t)m->cfg.t_layers, sizeof *m->tl);
    if (!m->vl || !m->ql || !m->tl) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    return 0;
}

/* The math of the many-row products (blip2_load_opts.precision), as the
 * reference computes: a folder and an f32 GGUF in f32; a GGUF of a
 * reduced type (f16, bf16, q8_0, q4_0) in bf16 where oneDNN runs bf16 natively
 * (AVX512-BF16, AMX), f32 elsewhere; opts->precision, else the
 * environment's BLIP2_PRECISION, overrides ("f32", "bf16", "int8",
 * "auto").  int8 is for the vision encoder's projection and MLP
 * (enc_linears) where oneDNN runs u8 x s8 with VNNI; everything else keeps
 * the automatic choice; without VNNI int8 falls back to that choice,
 * saying so.  auto picks int8 for them too when the file carries their
 * int8 copies (m->int8_file: converted with --int8-vision, which asks for
 * it; docs/gguf.md "Math").  Sets m->prec, m->enc_int8 and m->math;
 * m->dtype and m->int8_file must be known. */
static int choose_prec(blip2_model *m, const blip2_load_opts *opts, blip2_error *err)
{
    const char *want = opts && opts->precision && *opts->precision ? opts->precision : getenv("BLIP2_PRECISION");
    if (want && (!*want || !strcmp(want, "auto"))) want = NULL;
    if (want && strcmp(want, "f32") && strcmp(want, "bf16") && strcmp(want, "int8"))
        return b2__err(err, BLIP2_EINVAL, "precision '%s' is not f32, bf16, int8 or auto", want);
    const char *impl = NULL, *impl8 = NULL;
    const int asked8 = want && !strcmp(want, "int8");
    const int int8 = asked8 || (!want && m->int8_file);
    if (asked8) want = NULL; /* the language model: as without a choice */
    const int reduced = m->gguf && strcmp(m->dtype, "f32") != 0;
    char why[128], why8[192] = "";
    m->prec = B2_PREC_F32;
    m->enc_int8 = 0;
    if (want && !strcmp(want, "f32")) {
        snprintf(why, sizeof why, "asked for");
    } else if (!want && !reduced) {
        snprintf(why, sizeof why, "%s", m->gguf ? "f32 weights" : "a Hugging Face folder computes in f32");
    } else if (!m->gguf) {
        snprintf(why, sizeof why, "bf16 asked for, but a folder's weights are f32 in memory: bf16 needs a GGUF file");
    } else if (!b2__dnnl_bf16_native(&impl)) {
        snprintf(why, sizeof why, "bf16 %s, but %s", want ? "asked for" : "for reduced weights", impl);
    } else {
        m->prec = B2_PREC_BF16;
        snprintf(why, sizeof why, "%s, %s", want ? "asked for" : "reduced weights", impl);
    }
    const char *by = asked8 ? "asked for" : "the file's int8 weights";
    if (int8 && b2__dnnl_int8_native(&impl8)) {
        m->enc_int8 = 1;
        snprintf(why8, sizeof why8, "int8 vision MLP and projection (%s, %s); the rest ", by, impl8);
    } else if (int8) {
        snprintf(why8, sizeof why8, "int8 %s, but %s: as without it, ", asked8 ? "asked for" : "weights in the file",
                 impl8);
    }
    if (int8 && !m->enc_int8)
        snprintf(m->math, sizeof m->math, "%s (%s%s); %s", b2__prec_name(m->prec), why8, why, b2__dnnl_info());
    else
        snprintf(m->math, sizeof m->math, "%s%s (%s); %s", why8, b2__prec_name(m->prec), why, b2__dnnl_info());
    return 0;
}

/* The s8 copies of the vision encoder's linear layers for int8 math
 * (m->enc_int8).  Which layers: the attention's output projection and
 * the MLP (fc1, fc2), 77 % of the encoder's products, in the order of
 * b2__int8_layer (packed.h).  Measured on the golden models
 * (tests/test_golden_int8.sh): the qkv product in int8 too lowers the
 * Q-Former's cosine to 0.998, and the Q-Former's own products in int8 to
 * 0.996, below the 0.999 asked for; both keep the language model's math. */
static b2_linear **enc_linears(blip2_model *m, int *n)
{
    b2_linear **v = malloc(sizeof *v * (size_t)(m->cfg.v_layers ? 3 * m->cfg.v_layers : 1));
    int i = 0;
    if (!v) return NULL;
    for (int l = 0; l < m->cfg.v_layers; l++) {
        b2_vision_layer *L = &m->vl[l];
        v[i++] = &L->proj;
        v[i++] = &L->fc1;
        v[i++] = &L->fc2;
    }
    *n = i;
    return v;
}

/* Whether the GGUF file says it carries the int8 copies (B2_INT8_KEY,
 * packed.h): sets m->int8_file; a key of another type or scheme is
 * BLIP2_EFORMAT. */
static int int8_key(blip2_model *m, blip2_error *err)
{
    m->int8_file = 0;
    if (!b2__gguf_find_kv(m->gguf, B2_INT8_KEY)) return 0;
    int64_t v;
    int rc = b2__gguf_get_int(m->gguf, B2_INT8_KEY, &v, err);
    if (rc < 0) return rc;
    if (v != B2_INT8_SCHEME)
        return b2__err(err, BLIP2_EFORMAT, "%s: '%s' is %lld: int8 weights of an unknown scheme (%d is known)",
                       b2__gguf_name(m->gguf), B2_INT8_KEY, (long long)v, B2_INT8_SCHEME);
    m->int8_file = 1;
    return 0;
}

/* Matrix i's int8 copy in the file (packed.h) into *qw, in place: the
 * types and shapes, every scale finite and positive and every row sum
 * within +-127 * in (what b2__quantize_s8 makes); BLIP2_EFORMAT naming
 * the tensor otherwise.  The s8 values themselves are not read (any
 * value is valid; the sums say nothing about them without reading them). */
static int int8_bind(blip2_model *m, int i, b2_qweights *qw, blip2_error *err)
{
    char prefix[200], name[256];
    int out, in, rc;
    const void *q, *scale, *sum;
    b2__int8_layer(&m->cfg, i, prefix, sizeof prefix, &out, &in);
    snprintf(name, sizeof name, "%s%s", prefix, B2_INT8_Q);
    if ((rc = b2__weight_raw(m, name, B2_GGUF_TYPE_I8, SHAPE(out, in), &q, err)) < 0) return rc;
    snprintf(name, sizeof name, "%s%s", prefix, B2_INT8_SCALE);
    if ((rc = b2__weight_raw(m, name, (uint32_t)B2_WT_F32, SHAPE(out), &scale, err)) < 0) return rc;
    const float *s = scale;
    for (int r = 0; r < out; r++)
        if (!(s[r] > 0.0f && s[r] <= FLT_MAX))
            return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': scale %d is %g, not finite and positive",
                           b2__gguf_name(m->gguf), name, r, (double)s[r]);
    snprintf(name, sizeof name, "%s%s", prefix, B2_INT8_SUM);
    if ((rc = b2__weight_raw(m, name, B2_GGUF_TYPE_I32, SHAPE(out), &sum, err)) < 0) return rc;
    const int32_t *su = sum;
    for (int r = 0; r < out; r++)
        if ((int64_t)su[r] > 127 * (int64_t)in || (int64_t)su[r] < -127 * (int64_t)in)
            return b2__err(err, BLIP2_EFORMAT, "%s: tensor '%s': row sum %d is %d, outside +-127 x %d",
                           b2__gguf_name(m->gguf), name, r, (int)su[r], in);
    *qw = (b2_qweights){q, s, su};
    return 0;
}

/* The int8 weights of enc_linears: the file's, in place, when it carries
 * them (checked at every load, int8 math or not: a file that says it has
 * them must have them whole), else, for int8 math, quantised into one
 * private allocation the model owns (m * k bytes and 8 bytes per output
 * channel each).  Which one, and the private size, go into m->math. */
static int int8_weights(blip2_model *m, blip2_error *err)
{
    if (!m->enc_int8 && !m->int8_file) return 0;
    int n = 0, rc = 0;
    b2_linear **v = enc_linears(m, &n);
    if (!v) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t bytes = 0, shared = 0;
    if (m->int8_file) {
        bytes = sizeof(b2_qweights) * (size_t)(n ? n : 1);
        b2_qweights *qw = m->qarena = malloc(bytes);
        if (!qw) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
        for (int i = 0; i < n; i++) {
            if ((rc = int8_bind(m, i, &qw[i], err)) < 0) goto out;
            shared += (size_t)v[i]->out * v[i]->in + (size_t)v[i]->out * 8;
            if (!m->enc_int8) continue;
            v[i]->q = &qw[i];
            v[i]->prec = B2_PREC_INT8;
        }
        m->qbytes = bytes;
        if (!m->enc_int8) goto out;
        const size_t len = strlen(m->math);
        snprintf(m->math + len, sizeof m->math - len, "; int8 weights %.1f MiB in place from the file (shared), "
                 "%zu bytes private", (double)shared / (1 << 20), bytes);
        goto out;
    }
    for (int i = 0; i < n; i++)
        bytes += ((size_t)v[i]->out * v[i]->in + 63) / 64 * 64 + (size_t)v[i]->out * 8 + sizeof(b2_qweights);
    unsigned char *a = m->qarena = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!a) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory for the int8 weights (%zu MiB)", bytes >> 20);
        goto out;
    }
    m->qbytes = bytes;
    for (int i = 0; i < n; i++) {
        b2_linear *l = v[i];
        int8_t *q = (int8_t *)a;
        a += ((size_t)l->out * l->in + 63) / 64 * 64;
        float *scale = (float *)a;
        a += sizeof(float) * (size_t)l->out;
        int32_t *sum = (int32_t *)a;
        a += sizeof(int32_t) * (size_t)l->out;
        b2_qweights *qw = (b2_qweights *)a;
        a += sizeof(b2_qweights);
        if (b2__quantize_s8(q, scale, sum, l->w, l->wt, l->out, l->in) < 0) {
            rc = b2__err(err, BLIP2_ENOMEM, "out of memory quantising the int8 weights");
            goto out;
        }
        *qw = (b2_qweights){q, scale, sum};
        l->q = qw;
        l->prec = B2_PREC_INT8;
    }
    const size_t len = strlen(m->math);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    snprintf(m->math + len, sizeof m->math - len, "; int8 weights %.1f MiB private (per process; %s), quantised "
             "in %.1f s", (double)bytes / (1 << 20), m->gguf ? "blip2ctl convert --int8-vision puts them in the "
             "file, shared" : "a folder", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
out:
    free(v);
    return rc;
}

/* The decode kernels (ktune.c), then appended to m->math. */
static int kernels(blip2_model *m, const char *gguf_path, blip2_error *err)
{
    const int rc = b2__kernels_choose(m, gguf_path, err);
    if (rc < 0) return rc;
    const size_t len = strlen(m->math);
    snprintf(m->math + len, sizeof m->math - len, "; decode kernels %s", m->kernels);
    return 0;
}

/* A GGUF file: map, read the metadata, bind every tensor in place. */
static int load_gguf(blip2_model **out, const char *path, const blip2_load_opts *opts, int tune, blip2_error *err);

int b2__load_gguf(blip2_model **out, const char *path, const blip2_load_opts *opts, blip2_error *err)
{
    return load_gguf(out, path, opts, 1, err);
}

int b2__load_gguf_check(blip2_model **out, const char *path, blip2_error *err)
{
    return load_gguf(out, path, NULL, 0, err);
}

static int load_gguf(blip2_model **out, const char *path, const blip2_load_opts *opts, int tune, blip2_error *err)
{
    int rc;
    blip2_model *m = calloc(1, sizeof *m);
    if (!m) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    if ((rc = b2__gguf_open(&m->gguf, path, err)) < 0) goto fail;
    b2_map_pages pages;
    size_t size;
    void *map = b2__gguf_map(m->gguf, &size);
    if (tune) b2__map_large_pages(map, size, path, &pages); /* before anything reads the weights */
    if ((rc = b2__packed_read_meta(m, m->gguf, err)) < 0) goto fail;
    if ((rc = int8_key(m, err)) < 0) goto fail;
    if ((rc = alloc_layers(m, err)) < 0) goto fail;
    m->dtype = b2__weights_dtype(m, m->cfg.family == B2_FAMILY_T5 ? "language_model.shared.weight"
                                 : "language_model.model.decoder.embed_tokens.weight");
    if ((rc = choose_prec(m, opts, err)) < 0) goto fail;
    if ((rc = bind_all(m, err)) < 0) goto fail;
    if ((rc = int8_weights(m, err)) < 0) goto fail;
    if (tune && (rc = kernels(m, path, err)) < 0) goto fail;
    if (!tune) snprintf(m->kernels, sizeof m->kernels, "not chosen (a check load)");
    if (tune) { /* appended as kernels() appends the decode kernels */
        b2__map_pages_describe(&pages, m->weights, sizeof m->weights);
        const size_t len = strlen(m->math);
        snprintf(m->math + len, sizeof m->math - len, "; %s", m->weights);
    }
    madvise(map, size, MADV_WILLNEED); /* start reading ahead; a hint */
    if (opts && opts->mlock) {
        if (mlock(map, size) != 0) {
            struct rlimit rl = {0, 0};
            getrlimit(RLIMIT_MEMLOCK, &rl);
            int e = errno;
            if (e == ENOMEM || e == EPERM)
                rc = b2__err(err, BLIP2_EIO, "%s: cannot lock %zu MiB in memory: RLIMIT_MEMLOCK is %llu KiB "
                             "(raise it: LimitMEMLOCK= in the unit, ulimit -l)", path, size >> 20,
                             rl.rlim_cur == RLIM_INFINITY ? 0ull : (unsigned long long)(rl.rlim_cur >> 10));
            else
                rc = b2__err(err, BLIP2_EIO, "%s: mlock: %s", path, strerror(e));
            goto fail;
        }
        m->locked = 1;
    }
    *out = m;
    return 0;
fail:
    blip2_model_free(m);
    return rc;
}

/* A Hugging Face folder, loaded directly: f16/bf16 widened to f32 copies. */
int b2__load_folder(blip2_model **out, const char *path, const blip2_load_opts *opts, blip2_error *err)
{
    char p[4096];
    int rc;
    *out = NULL;
    blip2_model *m = calloc(1, sizeof *m);
    if (!m) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    snprintf(p, sizeof p, "%s/config.json", path);
    if ((rc = b2__config_load(&m->cfg, p, err)) < 0) goto fail;
    b2__preproc_default(&m->pp);
    snprintf(p, sizeof p, "%s/preprocessor_config.json", path);
    if ((rc = b2__preproc_load(&m->pp, p, err)) < 0) goto fail;
    if (m->pp.size_h != m->cfg.image_size || m->pp.size_w != m->cfg.image_size) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: resize to %dx%d does not match the vision image_size %d",
                     p, m->pp.size_w, m->pp.size_h, m->cfg.image_size);
        goto fail;
    }
    if (m->cfg.family == B2_FAMILY_T5) rc = b2__t5tok_load(&m->t5tok, path, err);
    else rc = b2__bpe_load(&m->tok, path, err);
    if (rc < 0) goto fail;
    if ((rc = alloc_layers(m, err)) < 0) goto fail;
    if ((rc = b2__weights_open(m, path, err)) < 0) goto fail;
    m->dtype = b2__weights_dtype(m, m->cfg.family == B2_FAMILY_T5 ? "language_model.shared.weight"
                                 : "language_model.model.decoder.embed_tokens.weight");
    if ((rc = choose_prec(m, opts, err)) < 0) goto fail;
    if ((rc = bind_all(m, err)) < 0) goto fail;
    if ((rc = int8_weights(m, err)) < 0) goto fail;
    if ((rc = kernels(m, NULL, err)) < 0) goto fail;
    *out = m;
    return 0;
fail:
    blip2_model_free(m);
    return rc;
}


int blip2_model_mapping(const blip2_model *m, const char **path, const void **addr, size_t *size)
{
    size_t sz = 0;
    void *a = m->gguf ? b2__gguf_map(m->gguf, &sz) : NULL;
    if (path) *path = m->gguf ? b2__gguf_name(m->gguf) : NULL;
    if (addr) *addr = a;
    if (size) *size = sz;
    return a != NULL;
}

int blip2_image_size(const blip2_model *m) { return m->cfg.image_size; }
size_t blip2_pixel_values_len(const blip2_model *m) { return 3 * (size_t)m->cfg.image_size * m->cfg.image_size; }
int blip2_num_query_tokens(const blip2_model *m) { return m->cfg.num_query; }
int blip2_text_hidden(const blip2_model *m) { return m->cfg.t_word_proj; }
size_t blip2_query_embeds_len(const blip2_model *m) { return (size_t)m->cfg.num_query * m->cfg.t_word_proj; }
int blip2_vocab_size(const blip2_model *m) { return m->cfg.t_vocab; }
int blip2_max_positions(const blip2_model *m) { return m->cfg.t_max_pos; }
int32_t blip2_bos_id(const blip2_model *m) { return m->cfg.dec_start; }
const char *blip2_model_dtype(const blip2_model *m) { return m->dtype; }
const char *blip2_model_math(const blip2_model *m) { return m->math; }
const char *blip2_model_precision(const blip2_model *m) { return b2__prec_name(m->prec); }
const char *blip2_model_backend(const blip2_model *m) { return b2__linear_backend(m->prec); }
const char *blip2_model_kernels(const blip2_model *m) { return m->kernels; }
const char *blip2_model_kernels_log(const blip2_model *m) { return m->kernels_log; }
const char *blip2_model_weights(const blip2_model *m) { return m->weights; }
const char *blip2_model_family(const blip2_model *m) { return m->lm->name; }
int blip2_vision_layers(const blip2_model *m) { return m->cfg.v_layers; }
int blip2_qformer_layers(const blip2_model *m) { return m->cfg.q_layers; }
int blip2_text_layers(const blip2_model *m) { return m->cfg.t_layers; }
int32_t blip2_eos_id(const blip2_model *m) { return m->cfg.eos; }
int blip2_vision_hidden(const blip2_model *m) { return m->cfg.v_hidden; }
int blip2_qformer_hidden(const blip2_model *m) { return m->cfg.q_hidden; }
int blip2_vision_tokens(const blip2_model *m)
{
    int g = m->cfg.image_size / m->cfg.patch_size;
    return 1 + g * g;
}

int blip2_preprocess(const blip2_model *m, const void *bytes, size_t len,
                     const blip2_image_opts *opts, float *px, blip2_error *err)
{
    blip2_image_opts o = {0};
    if (opts) o = *opts;
    if (!o.max_pixels) o.max_pixels = m->max_pixels; /* the model's, from blip2_load_opts */
    return b2__preprocess(&m->pp, bytes, len, &o, px, err);
}

int blip2_preprocess_file(const blip2_model *m, const char *path, const blip2_image_opts *opts,
                          float *px, blip2_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return b2__err(err, BLIP2_EIO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    int rc = 0;
    for (;;) {
        if (!buf) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); break; }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (len < cap) {
            if (ferror(f)) rc = b2__err(err, BLIP2_EIO, "%s: read error", path);
            break;
        }
        if (cap >= ((size_t)1 << 31)) { rc = b2__err(err, BLIP2_ETOOBIG, "%s: file larger than 2 GiB", path); break; }
        unsigned char *nb = realloc(buf, cap * 2);
        if (!nb) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); break; }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (rc == 0) {
        rc = blip2_preprocess(m, buf, len, opts, px, err);
        if (rc < 0 && err) { /* prefix the file name */
            char tmp[sizeof err->text];
            memcpy(tmp, err->text, sizeof tmp);
            snprintf(err->text, sizeof err->text, "%.100s: %.200s", path, tmp);
        }
    }
    free(buf);
    return rc;
}

int b2__tok_encode(const blip2_model *m, const char *text, size_t len, int add_special,
                   int32_t **ids, size_t *n, blip2_error *err)
{
    if (m->t5tok) return b2__t5tok_encode(m->t5tok, text, len, add_special, ids, n, err);
    return b2__bpe_encode(m->tok, text, len, add_special, ids, n, err);
}

int b2__tok_decode(const blip2_model *m, const int32_t *ids, size_t n, int skip, char **text,
                   blip2_error *err)
{
    if (m->t5tok) return b2__t5tok_decode(m->t5tok, ids, n, skip, text, err);
    return b2__bpe_decode(m->tok, ids, n, skip, text, err);
}

int blip2_tokenize(const blip2_model *m, const char *text, int add_special, int32_t **ids,
                   size_t *n, blip2_error *err)
{
    return b2__tok_encode(m, text, strlen(text), add_special, ids, n, err);
}

int blip2_detokenize(const blip2_model *m, const int32_t *ids, size_t n, int skip_special,
                     char **text, blip2_error *err)
{
    return b2__tok_decode(m, ids, n, skip_special, text, err);
}

int blip2_token_bytes(const blip2_model *m, int32_t id, char *buf, size_t cap)
{
    if (m->t5tok) return b2__t5tok_token_bytes(m->t5tok, id, buf, cap);
    return b2__bpe_token_bytes(m->tok, id, buf, cap);
}
