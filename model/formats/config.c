/*
 * config.c - config.json -> b2_config.
 *
 * Start from the transformers v4.37.2 defaults of each sub-config, overlay
 * the fields present in the file, then check that sizes are positive and
 * consistent (heads divide hidden sizes, ...).  The language model is OPT
 * or T5 (text_config.model_type; Flan-T5 BLIP-2 checkpoints).  Unknown fields are ignored,
 * as transformers does.
 */
#include "config.h"
#include "error.h"

#include <jansson.h>
#include <string.h>

/* What a member can be, and what the error says it must be. */
typedef enum { K_INT, K_BOOL, K_FLOAT } kind;

/* Member k of o into *v (int for K_INT and K_BOOL, float for K_FLOAT);
 * absent or null leaves *v.  BLIP2_EFORMAT for the wrong kind (an integer
 * outside 0..2^30 too). */
static int get_member(json_t *o, const char *k, kind t, void *v, const char *path, blip2_error *err)
{
    static const char *const must[] = {"a non-negative integer", "true or false", "a number"};
    json_t *e = json_object_get(o, k);
    if (!e || json_is_null(e)) return 0;
    const int good = t == K_INT ? json_is_integer(e) && json_integer_value(e) >= 0 && json_integer_value(e) <= (1 << 30)
                   : t == K_BOOL ? json_is_boolean(e) : json_is_number(e);
    if (!good) return b2__err(err, BLIP2_EFORMAT, "%s: field '%s' must be %s", path, k, must[t]);
    if (t == K_INT) *(int *)v = (int)json_integer_value(e);
    else if (t == K_BOOL) *(int *)v = json_is_true(e);
    else *(float *)v = (float)json_number_value(e);
    return 0;
}

static int get_int(json_t *o, const char *k, int *v, const char *path, blip2_error *err)
{
    return get_member(o, k, K_INT, v, path, err);
}

static int get_bool(json_t *o, const char *k, int *v, const char *path, blip2_error *err)
{
    return get_member(o, k, K_BOOL, v, path, err);
}

static int get_float(json_t *o, const char *k, float *v, const char *path, blip2_error *err)
{
    return get_member(o, k, K_FLOAT, v, path, err);
}

static int get_act(json_t *o, const char *k, b2_act *v, const char *path, blip2_error *err)
{
    static const struct { const char *name; b2_act act; } acts[] = {
        {"gelu", B2_ACT_GELU}, {"gelu_new", B2_ACT_GELU_TANH},
        {"gelu_pytorch_tanh", B2_ACT_GELU_TANH}, {"quick_gelu", B2_ACT_QUICK_GELU},
        {"relu", B2_ACT_RELU}, {"silu", B2_ACT_SILU}, {"swish", B2_ACT_SILU},
    };
    json_t *e = json_object_get(o, k);
    if (!e || json_is_null(e)) return 0;
    if (json_is_string(e))
        for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
            if (!strcmp(json_string_value(e), acts[i].name)) { *v = acts[i].act; return 0; }
    return b2__err(err, BLIP2_EUNSUPPORTED, "%s: unsupported activation in '%s'", path, k);
}

#define TRY(x) do { if ((rc = (x)) < 0) goto out; } while (0)

/* text_config of a T5 language model over T5Config's 4.37.2 defaults.
 * feed_forward_proj "[gated-]ACT" gives dense_act_fn and is_gated_act
 * ("gated-gelu" means gelu_new), but explicit dense_act_fn / is_gated_act
 * fields win, as they do when transformers loads the config (the real
 * blip2-flan-t5 config says "gelu": exact GELU). */
static int t5_config(b2_config *c, json_t *t, const char *path, blip2_error *err)
{
    int rc = 0, have_bos = 0, have_start = 0;
    c->family = B2_FAMILY_T5;
    c->t_vocab = 32128; c->t_hidden = 512; c->t_dkv = 64; c->t_ffn = 2048; c->t_layers = 6;
    c->t_dec_layers = -1; c->t_heads = 8; c->t_buckets = 32; c->t_max_dist = 128;
    c->t_eps = 1e-6f; c->t_act = B2_ACT_RELU; c->t_gated = 0; c->t_tie = 1;
    c->t_max_pos = 512; c->pad = 0; c->eos = 1; c->bos = -1; c->dec_start = -1;
    c->t_bias = 0; c->t_ln_before = 1; c->t_final_ln = 1; c->t_ln_affine = 1; c->t_word_proj = -1;
    if (!t || !json_is_object(t)) goto check;
    TRY(get_int(t, "vocab_size", &c->t_vocab, path, err));
    TRY(get_int(t, "d_model", &c->t_hidden, path, err));
    TRY(get_int(t, "d_kv", &c->t_dkv, path, err));
    TRY(get_int(t, "d_ff", &c->t_ffn, path, err));
    TRY(get_int(t, "num_layers", &c->t_layers, path, err));
    TRY(get_int(t, "num_decoder_layers", &c->t_dec_layers, path, err));
    TRY(get_int(t, "num_heads", &c->t_heads, path, err));
    TRY(get_int(t, "relative_attention_num_buckets", &c->t_buckets, path, err));
    TRY(get_int(t, "relative_attention_max_distance", &c->t_max_dist, path, err));
    TRY(get_int(t, "n_positions", &c->t_max_pos, path, err));
    TRY(get_float(t, "layer_norm_epsilon", &c->t_eps, path, err));
    TRY(get_bool(t, "tie_word_embeddings", &c->t_tie, path, err));
    json_t *ff = json_object_get(t, "feed_forward_proj");
    if (ff && !json_is_null(ff)) {
        const char *fs = json_is_string(ff) ? json_string_value(ff) : "";
        const char *act = fs;
        if (!strncmp(fs, "gated-", 6)) { c->t_gated = 1; act = fs + 6; }
        json_t *a = json_string(!strcmp(fs, "gated-gelu") ? "gelu_new" : act);
        json_t *tmp = json_object();
        json_object_set_new(tmp, "feed_forward_proj", a);
        rc = strchr(act, '-') ? b2__err(err, BLIP2_EFORMAT, "%s: feed_forward_proj '%s' is not "
                                        "'ACT' or 'gated-ACT'", path, fs)
                              : get_act(tmp, "feed_forward_proj", &c->t_act, path, err);
        json_decref(tmp);
        if (rc < 0) goto out;
    }
    TRY(get_act(t, "dense_act_fn", &c->t_act, path, err));
    TRY(get_bool(t, "is_gated_act", &c->t_gated, path, err));
    have_bos = json_is_integer(json_object_get(t, "bos_token_id"));
    have_start = json_is_integer(json_object_get(t, "decoder_start_token_id"));
    TRY(get_int(t, "bos_token_id", &c->bos, path, err));
    TRY(get_int(t, "eos_token_id", &c->eos, path, err));
    TRY(get_int(t, "pad_token_id", &c->pad, path, err));
    TRY(get_int(t, "decoder_start_token_id", &c->dec_start, path, err));
check:
    if (!have_bos || !have_start) {
        /* generate() needs both: [bos] is the encoder input without a
         * prompt, decoder_start_token_id starts every output */
        return b2__err(err, BLIP2_EFORMAT, "%s: text_config needs bos_token_id and decoder_start_token_id", path);
    }
    if (c->t_dec_layers < 0) c->t_dec_layers = c->t_layers;
    c->t_word_proj = c->t_hidden;
    struct { const char *name; int val; } pos[] = {
        {"d_kv", c->t_dkv}, {"num_decoder_layers", c->t_dec_layers},
        {"relative_attention_num_buckets", c->t_buckets}, {"relative_attention_max_distance", c->t_max_dist},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].val <= 0) return b2__err(err, BLIP2_EFORMAT, "%s: %s must be positive", path, pos[i].name);
    if (c->t_buckets < 4) return b2__err(err, BLIP2_EFORMAT, "%s: relative_attention_num_buckets must be >= 4", path);
    if (!(c->t_eps > 0)) return b2__err(err, BLIP2_EFORMAT, "%s: layer_norm_epsilon must be positive", path);
out:
    return rc;
}

int b2__config_load(b2_config *c, const char *path, blip2_error *err)
{
    json_error_t je;
    int rc = 0;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line == -1 || strstr(je.text, "unable to open"))
            return b2__err(err, BLIP2_EIO, "%s: cannot read: %s", path, je.text);
        return b2__err(err, BLIP2_EFORMAT, "%s:%d: %s", path, je.line, je.text);
    }
    if (!json_is_object(root)) { rc = b2__err(err, BLIP2_EFORMAT, "%s: not a JSON object", path); goto out; }
    json_t *mt = json_object_get(root, "model_type");
    if (json_is_string(mt) && strcmp(json_string_value(mt), "blip-2") != 0) {
        rc = b2__err(err, BLIP2_EUNSUPPORTED, "%s: model_type '%s' is not a BLIP-2 model", path,
                     json_string_value(mt));
        goto out;
    }

    /* transformers 4.37.2 defaults */
    *c = (b2_config){
        .v_hidden = 1408, .v_inter = 6144, .v_layers = 39, .v_heads = 16, .image_size = 224,
        .patch_size = 14, .v_channels = 3, .v_qkv_bias = 1, .v_eps = 1e-6f, .v_act = B2_ACT_GELU,
        .q_hidden = 768, .q_inter = 3072, .q_layers = 12, .q_heads = 12, .q_cross_freq = 2,
        .q_enc_hidden = 1408, .q_eps = 1e-12f, .q_act = B2_ACT_GELU, .num_query = 32,
        .family = B2_FAMILY_OPT, .t_hidden = 768, .t_ffn = 3072, .t_layers = 12, .t_heads = 12,
        .t_vocab = 50272, .t_max_pos = 2048, .t_word_proj = -1, .t_ln_before = 1, .t_bias = 1,
        .t_ln_affine = 1, .t_final_ln = 1, .t_tie = 1, .t_act = B2_ACT_RELU,
        .bos = 2, .eos = 2, .pad = 1,
    };
    TRY(get_int(root, "num_query_tokens", &c->num_query, path, err));

    json_t *v = json_object_get(root, "vision_config");
    if (v && json_is_object(v)) {
        TRY(get_int(v, "hidden_size", &c->v_hidden, path, err));
        TRY(get_int(v, "intermediate_size", &c->v_inter, path, err));
        TRY(get_int(v, "num_hidden_layers", &c->v_layers, path, err));
        TRY(get_int(v, "num_attention_heads", &c->v_heads, path, err));
        TRY(get_int(v, "image_size", &c->image_size, path, err));
        TRY(get_int(v, "patch_size", &c->patch_size, path, err));
        TRY(get_int(v, "num_channels", &c->v_channels, path, err));
        TRY(get_bool(v, "qkv_bias", &c->v_qkv_bias, path, err));
        TRY(get_float(v, "layer_norm_eps", &c->v_eps, path, err));
        TRY(get_act(v, "hidden_act", &c->v_act, path, err));
    }
    json_t *q = json_object_get(root, "qformer_config");
    if (q && json_is_object(q)) {
        TRY(get_int(q, "hidden_size", &c->q_hidden, path, err));
        TRY(get_int(q, "intermediate_size", &c->q_inter, path, err));
        TRY(get_int(q, "num_hidden_layers", &c->q_layers, path, err));
        TRY(get_int(q, "num_attention_heads", &c->q_heads, path, err));
        TRY(get_int(q, "cross_attention_frequency", &c->q_cross_freq, path, err));
        TRY(get_int(q, "encoder_hidden_size", &c->q_enc_hidden, path, err));
        TRY(get_float(q, "layer_norm_eps", &c->q_eps, path, err));
        TRY(get_act(q, "hidden_act", &c->q_act, path, err));
    }
    /* Blip2Config sets the Q-Former's encoder width from the vision config. */
    c->q_enc_hidden = c->v_hidden;

    json_t *t = json_object_get(root, "text_config");
    const char *tmt = "opt";
    if (t && json_is_object(t) && json_is_string(json_object_get(t, "model_type"))) {
        tmt = json_string_value(json_object_get(t, "model_type"));
    } else if (t && json_is_object(t)) { /* no model_type: the architecture names it */
        json_t *a = json_array_get(json_object_get(t, "architectures"), 0);
        if (json_is_string(a) && !strncmp(json_string_value(a), "T5", 2)) tmt = "t5";
    }
    if (!strcmp(tmt, "t5")) {
        if ((rc = t5_config(c, t, path, err)) < 0) goto out;
    } else if (strcmp(tmt, "opt") != 0) {
        rc = b2__err(err, BLIP2_EUNSUPPORTED, "%s: language model type '%s' is not supported", path, tmt);
        goto out;
    } else if (t && json_is_object(t)) {
        TRY(get_int(t, "hidden_size", &c->t_hidden, path, err));
        TRY(get_int(t, "ffn_dim", &c->t_ffn, path, err));
        TRY(get_int(t, "num_hidden_layers", &c->t_layers, path, err));
        TRY(get_int(t, "num_attention_heads", &c->t_heads, path, err));
        TRY(get_int(t, "vocab_size", &c->t_vocab, path, err));
        TRY(get_int(t, "max_position_embeddings", &c->t_max_pos, path, err));
        TRY(get_int(t, "word_embed_proj_dim", &c->t_word_proj, path, err));
        TRY(get_bool(t, "do_layer_norm_before", &c->t_ln_before, path, err));
        TRY(get_bool(t, "enable_bias", &c->t_bias, path, err));
        TRY(get_bool(t, "layer_norm_elementwise_affine", &c->t_ln_affine, path, err));
        int remove_final = 0;
        TRY(get_bool(t, "_remove_final_layer_norm", &remove_final, path, err));
        c->t_final_ln = c->t_ln_before && !remove_final;
        TRY(get_bool(t, "tie_word_embeddings", &c->t_tie, path, err));
        TRY(get_act(t, "activation_function", &c->t_act, path, err));
        TRY(get_int(t, "bos_token_id", &c->bos, path, err));
        TRY(get_int(t, "eos_token_id", &c->eos, path, err));
        TRY(get_int(t, "pad_token_id", &c->pad, path, err));
    }
    if (c->family == B2_FAMILY_OPT) c->dec_start = c->bos;
    if (c->t_word_proj < 0) c->t_word_proj = c->t_hidden;
    if (c->t_word_proj != c->t_hidden) {
        /* BLIP-2 concatenates projected queries (hidden_size wide) with token
         * embeddings (word_embed_proj_dim wide): only equal widths work. */
        rc = b2__err(err, BLIP2_EUNSUPPORTED, "%s: word_embed_proj_dim %d != hidden_size %d is not supported",
                     path, c->t_word_proj, c->t_hidden);
        goto out;
    }

    struct { const char *name; int val; } pos[] = {
        {"vision hidden_size", c->v_hidden}, {"vision intermediate_size", c->v_inter},
        {"vision num_hidden_layers", c->v_layers}, {"vision num_attention_heads", c->v_heads},
        {"image_size", c->image_size}, {"patch_size", c->patch_size},
        {"qformer hidden_size", c->q_hidden}, {"qformer intermediate_size", c->q_inter},
        {"qformer num_hidden_layers", c->q_layers}, {"qformer num_attention_heads", c->q_heads},
        {"cross_attention_frequency", c->q_cross_freq}, {"num_query_tokens", c->num_query},
        {"text hidden_size", c->t_hidden}, {"ffn_dim", c->t_ffn},
        {"text num_hidden_layers", c->t_layers}, {"text num_attention_heads", c->t_heads},
        {"vocab_size", c->t_vocab}, {"max_position_embeddings", c->t_max_pos},
        {"word_embed_proj_dim", c->t_word_proj},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].val <= 0) { rc = b2__err(err, BLIP2_EFORMAT, "%s: %s must be positive", path, pos[i].name); goto out; }
    if (c->v_channels != 3) { rc = b2__err(err, BLIP2_EUNSUPPORTED, "%s: num_channels must be 3", path); goto out; }
    if (c->v_hidden % c->v_heads || c->q_hidden % c->q_heads ||
        (c->family == B2_FAMILY_OPT && c->t_hidden % c->t_heads)) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: a hidden size is not divisible by its number of heads", path);
        goto out;
    }
    if (c->image_size % c->patch_size) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: image_size %d is not a multiple of patch_size %d", path,
                     c->image_size, c->patch_size);
        goto out;
    }
    if (c->bos >= c->t_vocab || c->eos >= c->t_vocab || c->pad >= c->t_vocab || c->dec_start >= c->t_vocab) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: bos/eos/pad id outside the vocabulary", path);
        goto out;
    }
out:
    json_decref(root);
    return rc;
}
