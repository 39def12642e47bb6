/*
 * packed.c - BLIP-2 in one GGUF file: the metadata a packed file carries
 * (hyper-parameters, tokenizer, preprocessor), written by the converter
 * (convert.c) and read back by the loader (model.c).  Key names and tensor
 * types are documented in docs/gguf.md.
 *
 *   convert: config.json --b2__config_load--> b2_config --> blip2.* keys
 *            preprocessor_config.json ------> blip2.preprocessor.* keys
 *            vocab.json, merges.txt --------> tokenizer.ggml.tokens/merges (OPT)
 *            spiece.model (bytes) -----------> blip2.tokenizer.spiece_model (T5)
 *            tokenizer_config.json, special_tokens_map.json (as text)
 *            safetensors (f32/f16/bf16) -> f32 rows -> b2__wquantize_row ->
 *            one tensor at a time into OUT's temporary file -> fsync ->
 *            loaded back as a model (every check the loader makes) -> rename
 *   load:    the same keys back into b2_config / b2_preproc / b2_bpe or
 *            b2_t5tok (blip2.text.model_type opt or t5), each
 *            value checked as config.json's are (a corrupt file must not
 *            reach the forward pass with a zero head count).
 */
#include "packed.h"
#include "error.h"
#include "t5tok.h"
#include "weights.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- the keys of b2_config ---- */

enum { K_INT, K_BOOL, K_F32, K_ACT };
enum { F_ALL, F_OPT, F_T5 }; /* which language model family has the key */
static const struct ckey {
    const char *key;
    int kind;
    size_t off;
    int fam;
} ckeys[] = {
#define CI(k, f) {k, K_INT, offsetof(b2_config, f), F_ALL}
#define CB(k, f) {k, K_BOOL, offsetof(b2_config, f), F_ALL}
#define CF(k, f) {k, K_F32, offsetof(b2_config, f), F_ALL}
#define CA(k, f) {k, K_ACT, offsetof(b2_config, f), F_ALL}
#define OI(k, f) {k, K_INT, offsetof(b2_config, f), F_OPT}
#define OB(k, f) {k, K_BOOL, offsetof(b2_config, f), F_OPT}
#define TI(k, f) {k, K_INT, offsetof(b2_config, f), F_T5}
#define TB(k, f) {k, K_BOOL, offsetof(b2_config, f), F_T5}
#define TF(k, f) {k, K_F32, offsetof(b2_config, f), F_T5}
    CI("blip2.vision.embedding_length", v_hidden), CI("blip2.vision.feed_forward_length", v_inter),
    CI("blip2.vision.block_count", v_layers), CI("blip2.vision.attention.head_count", v_heads),
    CI("blip2.vision.image_size", image_size), CI("blip2.vision.patch_size", patch_size),
    CI("blip2.vision.num_channels", v_channels), CB("blip2.vision.qkv_bias", v_qkv_bias),
    CF("blip2.vision.attention.layer_norm_epsilon", v_eps), CA("blip2.vision.hidden_act", v_act),
    CI("blip2.qformer.embedding_length", q_hidden), CI("blip2.qformer.feed_forward_length", q_inter),
    CI("blip2.qformer.block_count", q_layers), CI("blip2.qformer.attention.head_count", q_heads),
    CI("blip2.qformer.cross_attention_frequency", q_cross_freq),
    CI("blip2.qformer.encoder_hidden_size", q_enc_hidden),
    CF("blip2.qformer.attention.layer_norm_epsilon", q_eps), CA("blip2.qformer.hidden_act", q_act),
    CI("blip2.num_query_tokens", num_query),
    CI("blip2.text.embedding_length", t_hidden), CI("blip2.text.feed_forward_length", t_ffn),
    CI("blip2.text.block_count", t_layers), CI("blip2.text.attention.head_count", t_heads),
    CI("blip2.text.vocab_size", t_vocab), CI("blip2.text.context_length", t_max_pos),
    OI("blip2.text.word_embed_proj_dim", t_word_proj), OB("blip2.text.do_layer_norm_before", t_ln_before),
    OB("blip2.text.enable_bias", t_bias), OB("blip2.text.layer_norm_elementwise_affine", t_ln_affine),
    OB("blip2.text.final_layer_norm", t_final_ln), CB("blip2.text.tie_word_embeddings", t_tie),
    CA("blip2.text.activation_function", t_act),
    CI("blip2.text.bos_token_id", bos), CI("blip2.text.eos_token_id", eos), CI("blip2.text.pad_token_id", pad),
    /* T5: embedding_length d_model, feed_forward_length d_ff, block_count
     * the encoder's num_layers, activation_function dense_act_fn,
     * context_length n_positions */
    TI("blip2.text.attention.key_length", t_dkv), TI("blip2.text.decoder_block_count", t_dec_layers),
    TI("blip2.text.attention.relative_buckets_count", t_buckets),
    TI("blip2.text.attention.relative_max_distance", t_max_dist),
    TF("blip2.text.attention.layer_norm_rms_epsilon", t_eps), TB("blip2.text.is_gated_act", t_gated),
    TI("blip2.text.decoder_start_token_id", dec_start),
#undef CI
#undef CB
#undef CF
#undef CA
#undef OI
#undef OB
#undef TI
#undef TB
#undef TF
};

/* Whether key i belongs to a model of family f. */
static int key_in(size_t i, b2_family f)
{
    return ckeys[i].fam == F_ALL || ckeys[i].fam == (f == B2_FAMILY_T5 ? F_T5 : F_OPT);
}

static const struct { const char *name; b2_act act; } acts[] = {
    {"gelu", B2_ACT_GELU}, {"gelu_pytorch_tanh", B2_ACT_GELU_TANH}, {"quick_gelu", B2_ACT_QUICK_GELU},
    {"relu", B2_ACT_RELU}, {"silu", B2_ACT_SILU},
};

static const char *act_name(b2_act a)
{
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        if (acts[i].act == a) return acts[i].name;
    return "?";
}

static int write_config(b2_gguf_w *w, const b2_config *c)
{
    for (size_t i = 0; i < sizeof ckeys / sizeof ckeys[0]; i++) {
        const void *f = (const char *)c + ckeys[i].off;
        if (!key_in(i, c->family)) continue;
        switch (ckeys[i].kind) {
        case K_INT: b2__gguf_w_u32(w, ckeys[i].key, (uint32_t) * (const int *)f); break;
        case K_BOOL: b2__gguf_w_bool(w, ckeys[i].key, *(const int *)f); break;
        case K_F32: b2__gguf_w_f32(w, ckeys[i].key, *(const float *)f); break;
        case K_ACT: {
            const char *n = act_name(*(const b2_act *)f);
            b2__gguf_w_str(w, ckeys[i].key, n, strlen(n));
            break;
        }
        }
    }
    const char *mt = c->family == B2_FAMILY_T5 ? "t5" : "opt";
    return b2__gguf_w_str(w, "blip2.text.model_type", mt, strlen(mt));
}

static int read_config(b2_config *c, const b2_gguf *g, blip2_error *err)
{
    const char *name = b2__gguf_name(g);
    int rc;
    b2_gguf_str s;
    memset(c, 0, sizeof *c);
    if ((rc = b2__gguf_get_str(g, "blip2.text.model_type", &s, err)) < 0) return rc;
    if (s.len == 3 && !memcmp(s.p, "opt", 3)) {
        c->family = B2_FAMILY_OPT;
    } else if (s.len == 2 && !memcmp(s.p, "t5", 2)) {
        /* what config.c fixes for T5 */
        c->family = B2_FAMILY_T5;
        c->t_bias = 0;
        c->t_ln_before = c->t_final_ln = c->t_ln_affine = 1;
    } else {
        return b2__err(err, BLIP2_EUNSUPPORTED, "%s: language model type '%.*s' is not supported in GGUF files",
                       name, (int)(s.len > 40 ? 40 : s.len), s.p);
    }
    for (size_t i = 0; i < sizeof ckeys / sizeof ckeys[0]; i++) {
        void *f = (char *)c + ckeys[i].off;
        const char *key = ckeys[i].key;
        int64_t v;
        if (!key_in(i, c->family)) continue;
        switch (ckeys[i].kind) {
        case K_INT:
            if ((rc = b2__gguf_get_int(g, key, &v, err)) < 0) return rc;
            if (v < 0 || v > (1 << 30)) return b2__err(err, BLIP2_EFORMAT, "%s: '%s' is %lld", name, key, (long long)v);
            *(int *)f = (int)v;
            break;
        case K_BOOL:
            if ((rc = b2__gguf_get_bool(g, key, (int *)f, err)) < 0) return rc;
            break;
        case K_F32:
            if ((rc = b2__gguf_get_f32(g, key, (float *)f, err)) < 0) return rc;
            if (!(*(float *)f >= 0 && *(float *)f < 1))
                return b2__err(err, BLIP2_EFORMAT, "%s: '%s' must be in [0, 1)", name, key);
            break;
        case K_ACT: {
            if ((rc = b2__gguf_get_str(g, key, &s, err)) < 0) return rc;
            size_t a = 0;
            while (a < sizeof acts / sizeof acts[0] && !(strlen(acts[a].name) == s.len &&
                                                         !memcmp(acts[a].name, s.p, s.len)))
                a++;
            if (a == sizeof acts / sizeof acts[0])
                return b2__err(err, BLIP2_EUNSUPPORTED, "%s: '%s': unsupported activation", name, key);
            *(b2_act *)f = acts[a].act;
            break;
        }
        }
    }
    if (c->family == B2_FAMILY_T5) {
        c->t_word_proj = c->t_hidden;
        const struct { const char *name; int val; } tpos[] = {
            {"key_length", c->t_dkv}, {"decoder_block_count", c->t_dec_layers},
            {"relative_buckets_count", c->t_buckets}, {"relative_max_distance", c->t_max_dist},
        };
        for (size_t i = 0; i < sizeof tpos / sizeof tpos[0]; i++)
            if (tpos[i].val <= 0) return b2__err(err, BLIP2_EFORMAT, "%s: text %s must be positive", name, tpos[i].name);
        if (c->t_buckets < 4)
            return b2__err(err, BLIP2_EFORMAT, "%s: relative_buckets_count must be at least 4", name);
        if (!(c->t_eps > 0)) return b2__err(err, BLIP2_EFORMAT, "%s: layer_norm_rms_epsilon must be positive", name);
        if (c->t_dec_layers > 1024 || c->t_dkv > (1 << 16) || c->t_buckets > (1 << 16) ||
            c->t_max_dist > (1 << 20) || (int64_t)c->t_heads * c->t_dkv > (1 << 20))
            return b2__err(err, BLIP2_EFORMAT, "%s: decoder_block_count, key_length, relative_buckets_count or "
                           "relative_max_distance too large", name);
        if (c->dec_start >= c->t_vocab)
            return b2__err(err, BLIP2_EFORMAT, "%s: decoder_start_token_id outside the vocabulary", name);
    } else {
        c->dec_start = c->bos; /* OPT: generated sequences start with bos */
    }
    /* the checks config.c makes */
    const struct { const char *name; int val; } pos[] = {
        {"vision embedding_length", c->v_hidden}, {"vision feed_forward_length", c->v_inter},
        {"vision block_count", c->v_layers}, {"vision head_count", c->v_heads},
        {"image_size", c->image_size}, {"patch_size", c->patch_size},
        {"qformer embedding_length", c->q_hidden}, {"qformer feed_forward_length", c->q_inter},
        {"qformer block_count", c->q_layers}, {"qformer head_count", c->q_heads},
        {"cross_attention_frequency", c->q_cross_freq}, {"num_query_tokens", c->num_query},
        {"text embedding_length", c->t_hidden}, {"text feed_forward_length", c->t_ffn},
        {"text block_count", c->t_layers}, {"text head_count", c->t_heads},
        {"vocab_size", c->t_vocab}, {"context_length", c->t_max_pos},
        {"word_embed_proj_dim", c->t_word_proj},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].val <= 0) return b2__err(err, BLIP2_EFORMAT, "%s: %s must be positive", name, pos[i].name);
    if (c->v_channels != 3) return b2__err(err, BLIP2_EUNSUPPORTED, "%s: num_channels must be 3", name);
    if (c->q_enc_hidden != c->v_hidden)
        return b2__err(err, BLIP2_EFORMAT, "%s: qformer encoder_hidden_size must equal the vision width", name);
    if (c->t_word_proj != c->t_hidden)
        return b2__err(err, BLIP2_EUNSUPPORTED, "%s: word_embed_proj_dim != embedding_length is not supported", name);
    if (c->v_hidden % c->v_heads || c->q_hidden % c->q_heads ||
        (c->family == B2_FAMILY_OPT && c->t_hidden % c->t_heads))
        return b2__err(err, BLIP2_EFORMAT, "%s: a hidden size is not divisible by its number of heads", name);
    if (c->image_size % c->patch_size)
        return b2__err(err, BLIP2_EFORMAT, "%s: image_size is not a multiple of patch_size", name);
    if (c->image_size > 8192 || c->num_query > 4096 || c->t_max_pos > (1 << 20) || c->v_layers > 1024 ||
        c->q_layers > 1024 || c->t_layers > 1024)
        return b2__err(err, BLIP2_EFORMAT, "%s: image_size, num_query_tokens, context_length or a block_count "
                       "too large", name);
    if (c->bos >= c->t_vocab || c->eos >= c->t_vocab || c->pad >= c->t_vocab)
        return b2__err(err, BLIP2_EFORMAT, "%s: bos/eos/pad id outside the vocabulary", name);
    return 0;
}

/* ---- preprocessor ---- */

static int write_preproc(b2_gguf_w *w, const b2_preproc *p)
{
    b2__gguf_w_u32(w, "blip2.preprocessor.height", (uint32_t)p->size_h);
    b2__gguf_w_u32(w, "blip2.preprocessor.width", (uint32_t)p->size_w);
    b2__gguf_w_bool(w, "blip2.preprocessor.do_resize", p->do_resize);
    b2__gguf_w_bool(w, "blip2.preprocessor.do_rescale", p->do_rescale);
    b2__gguf_w_bool(w, "blip2.preprocessor.do_normalize", p->do_normalize);
    b2__gguf_w_bool(w, "blip2.preprocessor.do_convert_rgb", p->do_convert_rgb);
    b2__gguf_w_u32(w, "blip2.preprocessor.resample", (uint32_t)p->resample);
    b2__gguf_w_f64(w, "blip2.preprocessor.rescale_factor", p->rescale_factor);
    b2__gguf_w_arr_f32(w, "blip2.preprocessor.image_mean", p->mean, 3);
    return b2__gguf_w_arr_f32(w, "blip2.preprocessor.image_std", p->std, 3);
}

static int read_f32x3(const b2_gguf *g, const char *key, float *out, blip2_error *err)
{
    const b2_gguf_kv *kv = b2__gguf_find_kv(g, key);
    if (!kv || kv->type != B2_GGUF_ARRAY || kv->arr_type != B2_GGUF_F32 || kv->arr_n != 3)
        return b2__err(err, BLIP2_EFORMAT, "%s: '%s' must be an array of 3 f32", b2__gguf_name(g), key);
    for (int i = 0; i < 3; i++) out[i] = (float)b2__gguf_arr_num(kv, (uint64_t)i);
    return 0;
}

static int read_preproc(b2_preproc *p, const b2_gguf *g, blip2_error *err)
{
    const char *name = b2__gguf_name(g);
    int64_t h, w, rs;
    float sf;
    int rc;
    const b2_gguf_kv *kv = b2__gguf_find_kv(g, "blip2.preprocessor.rescale_factor");
    if ((rc = b2__gguf_get_int(g, "blip2.preprocessor.height", &h, err)) < 0 ||
        (rc = b2__gguf_get_int(g, "blip2.preprocessor.width", &w, err)) < 0 ||
        (rc = b2__gguf_get_int(g, "blip2.preprocessor.resample", &rs, err)) < 0 ||
        (rc = b2__gguf_get_bool(g, "blip2.preprocessor.do_resize", &p->do_resize, err)) < 0 ||
        (rc = b2__gguf_get_bool(g, "blip2.preprocessor.do_rescale", &p->do_rescale, err)) < 0 ||
        (rc = b2__gguf_get_bool(g, "blip2.preprocessor.do_normalize", &p->do_normalize, err)) < 0 ||
        (rc = b2__gguf_get_bool(g, "blip2.preprocessor.do_convert_rgb", &p->do_convert_rgb, err)) < 0 ||
        (rc = b2__gguf_get_f32(g, "blip2.preprocessor.rescale_factor", &sf, err)) < 0 ||
        (rc = read_f32x3(g, "blip2.preprocessor.image_mean", p->mean, err)) < 0 ||
        (rc = read_f32x3(g, "blip2.preprocessor.image_std", p->std, err)) < 0)
        return rc;
    if (h < 1 || h > 8192 || w < 1 || w > 8192)
        return b2__err(err, BLIP2_EFORMAT, "%s: preprocessor size %lldx%lld", name, (long long)w, (long long)h);
    if (rs != 3) return b2__err(err, BLIP2_EUNSUPPORTED, "%s: only bicubic resampling (3) is supported", name);
    for (int i = 0; i < 3; i++)
        if (!(p->std[i] > 0 && p->std[i] < 1e30f) || !(p->mean[i] > -1e30f && p->mean[i] < 1e30f))
            return b2__err(err, BLIP2_EFORMAT, "%s: image_mean/image_std must be finite, image_std positive", name);
    if (!(kv->v.f > 0 && kv->v.f <= 1))
        return b2__err(err, BLIP2_EFORMAT, "%s: rescale_factor must be in (0, 1]", name);
    p->size_h = (int)h;
    p->size_w = (int)w;
    p->resample = 3;
    p->rescale_factor = kv->v.f; /* the f64 as written */
    return 0;
}

/* ---- tokenizer ---- */

static int read_file(const char *path, char **data, size_t *len, int optional, blip2_error *err)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (optional && errno == ENOENT) return 0;
        return b2__err(err, BLIP2_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    int rc = 0;
    for (;;) {
        if (!buf) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); break; }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) {
            if (ferror(f)) rc = b2__err(err, BLIP2_EIO, "%s: read error", path);
            break;
        }
        if (cap >= (256u << 20)) { rc = b2__err(err, BLIP2_EFORMAT, "%s: too large", path); break; }
        char *nb = realloc(buf, cap * 2);
        if (!nb) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); break; }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (rc < 0) { free(buf); return rc; }
    *data = buf;
    *len = n;
    return 0;
}

/* vocab.json as an id-indexed table (holes empty), merges.txt as "a b"
 * lines (the rules of tokenizer.c: the first line and the piece after the
 * last newline dropped; lines of other than two fields keep their rank
 * but are never applied, so they are left out), and the two settings
 * files as text. */
static int write_tokenizer(b2_gguf_w *w, const char *dir, const b2_config *c, blip2_error *err)
{
    char path[4096];
    json_error_t je;
    int rc = 0;
    const char **tok = NULL;
    size_t *tlen = NULL, n_tok = 0, n_m = 0;
    char *merges = NULL, *cfg = NULL, *map = NULL;
    size_t mlen, clen, maplen;
    const char **ml = NULL;
    size_t *mll = NULL;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    json_t *vocab = json_load_file(path, 0, &je);
    if (!vocab || !json_is_object(vocab)) {
        json_decref(vocab);
        return b2__err(err, BLIP2_EFORMAT, "%s: %s", path, vocab ? "not an object" : je.text);
    }
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (1 << 24)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: bad id of '%.40s'", path, k);
            goto out;
        }
        if ((size_t)json_integer_value(v) >= n_tok) n_tok = (size_t)json_integer_value(v) + 1;
    }
    tok = calloc(n_tok + 1, sizeof *tok);
    tlen = calloc(n_tok + 1, sizeof *tlen);
    if (!tok || !tlen) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
    json_object_foreach(vocab, k, v) {
        tok[json_integer_value(v)] = k;
        tlen[json_integer_value(v)] = strlen(k);
    }
    for (size_t i = 0; i < n_tok; i++) if (!tok[i]) tok[i] = "";
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if ((rc = read_file(path, &merges, &mlen, 0, err)) < 0) goto out;
    size_t lines = 0;
    for (size_t i = 0; i < mlen; i++) lines += merges[i] == '\n';
    ml = calloc(lines + 1, sizeof *ml);
    mll = calloc(lines + 1, sizeof *mll);
    if (!ml || !mll) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
    for (char *p = memchr(merges, '\n', mlen); p;) {
        char *line = p + 1, *end = memchr(line, '\n', mlen - (size_t)(line - merges));
        if (!end) break;
        /* two whitespace-separated fields -> "a b" in place */
        const char *f[2];
        size_t fl[2];
        if (b2__bpe_merge_fields(line, end, f, fl)) {
            memmove(line, f[0], fl[0]);
            line[fl[0]] = ' ';
            memmove(line + fl[0] + 1, f[1], fl[1]);
            ml[n_m] = line;
            mll[n_m++] = fl[0] + 1 + fl[1];
        }
        p = end;
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if ((rc = read_file(path, &cfg, &clen, 1, err)) < 0) goto out;
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    if ((rc = read_file(path, &map, &maplen, 1, err)) < 0) goto out;

    b2__gguf_w_str(w, "tokenizer.ggml.model", "gpt2", 4);
    b2__gguf_w_str(w, "tokenizer.ggml.pre", "gpt-2", 5);
    b2__gguf_w_arr_str(w, "tokenizer.ggml.tokens", tok, tlen, n_tok);
    b2__gguf_w_arr_str(w, "tokenizer.ggml.merges", ml, mll, n_m);
    b2__gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)c->bos);
    b2__gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)c->eos);
    b2__gguf_w_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)c->pad);
    if (cfg) {
        json_t *root = json_loadb(cfg, clen, JSON_DECODE_INT_AS_REAL, &je);
        json_t *ab = root ? json_object_get(root, "add_bos_token") : NULL;
        if (json_is_boolean(ab)) b2__gguf_w_bool(w, "tokenizer.ggml.add_bos_token", json_is_true(ab));
        json_decref(root);
        b2__gguf_w_str(w, "blip2.tokenizer.config_json", cfg, clen);
    }
    if (map) b2__gguf_w_str(w, "blip2.tokenizer.special_tokens_map_json", map, maplen);
out:
    json_decref(vocab);
    free(tok);
    free(tlen);
    free(ml);
    free(mll);
    free(merges);
    free(cfg);
    free(map);
    return rc;
}

/* Flan-T5: spiece.model's bytes as they are (libsentencepiece loads the
 * serialized model from memory), the two settings files as text. */
static int write_tokenizer_t5(b2_gguf_w *w, const char *dir, const b2_config *c, blip2_error *err)
{
    char path[4096];
    char *model = NULL, *cfg = NULL, *map = NULL;
    size_t mlen, clen, maplen;
    int rc;
    snprintf(path, sizeof path, "%s/spiece.model", dir);
    if ((rc = read_file(path, &model, &mlen, 0, err)) < 0) goto out;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if ((rc = read_file(path, &cfg, &clen, 1, err)) < 0) goto out;
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    if ((rc = read_file(path, &map, &maplen, 1, err)) < 0) goto out;
    b2__gguf_w_str(w, "tokenizer.ggml.model", "t5", 2);
    b2__gguf_w_arr_u8(w, "blip2.tokenizer.spiece_model", model, mlen);
    b2__gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)c->bos);
    b2__gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)c->eos);
    b2__gguf_w_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)c->pad);
    if (cfg) b2__gguf_w_str(w, "blip2.tokenizer.config_json", cfg, clen);
    if (map) b2__gguf_w_str(w, "blip2.tokenizer.special_tokens_map_json", map, maplen);
out:
    free(model);
    free(cfg);
    free(map);
    return rc;
}

static int str_array(const b2_gguf *g, const char *key, b2_bpe_str **out, size_t *n, blip2_error *err)
{
    const b2_gguf_kv *kv = b2__gguf_find_kv(g, key);
    if (!kv || kv->type != B2_GGUF_ARRAY || kv->arr_type != B2_GGUF_STRING)
        return b2__err(err, BLIP2_EFORMAT, "%s: '%s' must be an array of strings", b2__gguf_name(g), key);
    *out = malloc(sizeof **out * (size_t)(kv->arr_n + 1));
    if (!*out) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < kv->arr_n; i++) (*out)[i] = (b2_bpe_str){kv->arr_str[i].p, kv->arr_str[i].len};
    *n = (size_t)kv->arr_n;
    return 0;
}

static int opt_str(const b2_gguf *g, const char *key, const char **p, size_t *len, blip2_error *err)
{
    const b2_gguf_kv *kv = b2__gguf_find_kv(g, key);
    *p = NULL;
    *len = 0;
    if (!kv) return 0;
    if (kv->type != B2_GGUF_STRING)
        return b2__err(err, BLIP2_EFORMAT, "%s: '%s' must be a string", b2__gguf_name(g), key);
    *p = kv->str.p;
    *len = (size_t)kv->str.len;
    return 0;
}

static int read_tokenizer(b2_bpe **out, const b2_gguf *g, blip2_error *err)
{
    b2_bpe_src src = {.name = b2__gguf_name(g)};
    b2_bpe_str *tok = NULL, *mer = NULL;
    b2_gguf_str s;
    int rc;
    if ((rc = b2__gguf_get_str(g, "tokenizer.ggml.model", &s, err)) < 0) return rc;
    if (!(s.len == 4 && !memcmp(s.p, "gpt2", 4)))
        return b2__err(err, BLIP2_EUNSUPPORTED, "%s: tokenizer model '%.*s' (only gpt2 is supported)", src.name,
                       (int)(s.len > 40 ? 40 : s.len), s.p);
    if ((rc = str_array(g, "tokenizer.ggml.tokens", &tok, &src.n_tokens, err)) == 0 &&
        (rc = str_array(g, "tokenizer.ggml.merges", &mer, &src.n_merges, err)) == 0 &&
        (rc = opt_str(g, "blip2.tokenizer.config_json", &src.config_json, &src.config_len, err)) == 0 &&
        (rc = opt_str(g, "blip2.tokenizer.special_tokens_map_json", &src.map_json, &src.map_len, err)) == 0) {
        src.tokens = tok;
        src.merges = mer;
        rc = b2__bpe_load_src(out, &src, err);
    }
    free(tok);
    free(mer);
    return rc;
}

static int read_tokenizer_t5(b2_t5tok **out, const b2_gguf *g, blip2_error *err)
{
    const char *name = b2__gguf_name(g), *key = "blip2.tokenizer.spiece_model";
    char what[4200], cwhat[4200];
    const char *cfg;
    size_t clen;
    b2_gguf_str s;
    int rc;
    if ((rc = b2__gguf_get_str(g, "tokenizer.ggml.model", &s, err)) < 0) return rc;
    if (!(s.len == 2 && !memcmp(s.p, "t5", 2)))
        return b2__err(err, BLIP2_EUNSUPPORTED, "%s: tokenizer model '%.*s' (a T5 model needs t5)", name,
                       (int)(s.len > 40 ? 40 : s.len), s.p);
    const b2_gguf_kv *kv = b2__gguf_find_kv(g, key);
    if (!kv) return b2__err(err, BLIP2_EFORMAT, "%s: missing '%s' (the SentencePiece model)", name, key);
    if (kv->type != B2_GGUF_ARRAY || (kv->arr_type != B2_GGUF_U8 && kv->arr_type != B2_GGUF_I8))
        return b2__err(err, BLIP2_EFORMAT, "%s: '%s' must be an array of u8", name, key);
    if ((rc = opt_str(g, "blip2.tokenizer.config_json", &cfg, &clen, err)) < 0) return rc;
    snprintf(what, sizeof what, "%s: '%s'", name, key);
    snprintf(cwhat, sizeof cwhat, "%s: 'blip2.tokenizer.config_json'", name);
    return b2__t5tok_load_mem(out, kv->arr, (size_t)kv->arr_n, what, cfg, clen, cwhat, err);
}

int b2__packed_read_meta(blip2_model *m, const b2_gguf *g, blip2_error *err)
{
    const char *name = b2__gguf_name(g);
    b2_gguf_str s;
    int rc;
    if ((rc = b2__gguf_get_str(g, "general.architecture", &s, err)) < 0) return rc;
    if (!(s.len == 5 && !memcmp(s.p, "blip2", 5)))
        return b2__err(err, BLIP2_EUNSUPPORTED, "%s: general.architecture is '%.*s', not blip2", name,
                       (int)(s.len > 40 ? 40 : s.len), s.p);
    if ((rc = read_config(&m->cfg, g, err)) < 0) return rc;
    b2__preproc_default(&m->pp);
    if ((rc = read_preproc(&m->pp, g, err)) < 0) return rc;
    if (m->pp.size_h != m->cfg.image_size || m->pp.size_w != m->cfg.image_size)
        return b2__err(err, BLIP2_EFORMAT, "%s: preprocessor size does not match the vision image_size", name);
    if (m->cfg.family == B2_FAMILY_T5) return read_tokenizer_t5(&m->t5tok, g, err);
    return read_tokenizer(&m->tok, g, err);
}

int b2__packed_write_meta(b2_gguf_w *w, const blip2_model *m, const char *dir, blip2_error *err)
{
    write_config(w, &m->cfg);
    write_preproc(w, &m->pp);
    return m->cfg.family == B2_FAMILY_T5 ? write_tokenizer_t5(w, dir, &m->cfg, err)
                                         : write_tokenizer(w, dir, &m->cfg, err);
}

/* ---- the int8 vision weights ---- */

int b2__int8_count(const b2_config *c) { return 3 * c->v_layers; }

void b2__int8_layer(const b2_config *c, int i, char *prefix, size_t cap, int *out, int *in)
{
    static const char *const part[3] = {"self_attn.projection", "mlp.fc1", "mlp.fc2"};
    snprintf(prefix, cap, "vision_model.encoder.layers.%d.%s", i / 3, part[i % 3]);
    *out = i % 3 == 1 ? c->v_inter : c->v_hidden;
    *in = i % 3 == 2 ? c->v_inter : c->v_hidden;
}

int b2__int8_find(const b2_config *c, const char *name)
{
    char p[256];
    int out, in;
    const size_t n = strlen(name);
    if (n < 7 || strcmp(name + n - 7, ".weight") != 0) return -1;
    for (int i = 0; i < b2__int8_count(c); i++) {
        b2__int8_layer(c, i, p, sizeof p, &out, &in);
        if (strlen(p) == n - 7 && !memcmp(p, name, n - 7)) return i;
    }
    return -1;
}

/* ---- weight types ---- */

int b2__wtype_parse(const char *s, b2_wtype *t, blip2_error *err)
{
    static const b2_wtype all[] = {B2_WT_F32, B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    for (size_t i = 0; s && i < sizeof all / sizeof all[0]; i++)
        if (!strcmp(s, b2__wt_name(all[i]))) { *t = all[i]; return 0; }
    return b2__err(err, BLIP2_EINVAL, "unknown weight type '%s' (f32, f16, bf16, q8_0, q4_0)", s ? s : "(null)");
}
