/*
 * config.h - internal: the hyper-parameters of a BLIP-2 checkpoint.
 *
 * Read from a Hugging Face config.json in transformers' diff form: every
 * field left out takes its transformers v4.37.2 default (Blip2VisionConfig,
 * Blip2QFormerConfig, OPTConfig or T5Config), so the real Salesforce configs and the
 * golden tiny ones parse to the same effective values the reference used.
 */
#ifndef BLIP2_CONFIG_H
#define BLIP2_CONFIG_H
#include "error.h"
#include "kernels.h"

typedef enum b2_family { B2_FAMILY_OPT, B2_FAMILY_T5 } b2_family;

typedef struct b2_config {
    /* vision encoder (ViT) */
    int v_hidden, v_inter, v_layers, v_heads, image_size, patch_size, v_channels;
    int v_qkv_bias;
    float v_eps;
    b2_act v_act;
    /* Q-Former */
    int q_hidden, q_inter, q_layers, q_heads, q_cross_freq, q_enc_hidden;
    float q_eps;
    b2_act q_act;
    int num_query;
    /* language model */
    b2_family family;
    int t_hidden, t_ffn, t_layers, t_heads, t_vocab, t_max_pos, t_word_proj;
    int t_ln_before, t_bias, t_ln_affine, t_final_ln, t_tie;
    b2_act t_act;
    int bos, eos, pad;
    int dec_start;  /* first id of every generated sequence: OPT bos, T5 decoder_start_token_id */
    /* T5 only (family B2_FAMILY_T5): t_hidden = d_model, t_ffn = d_ff,
     * t_layers = encoder layers, t_heads = num_heads, t_act = dense_act_fn,
     * t_max_pos = n_positions (our limit on Q + prompt + new tokens),
     * t_tie = text_config.tie_word_embeddings (lm_head = shared, scaled). */
    int t_dkv, t_dec_layers, t_buckets, t_max_dist, t_gated;
    float t_eps;
} b2_config;

/* Parses config.json at path.  BLIP2_EIO if unreadable, BLIP2_EFORMAT for
 * malformed or inconsistent values (naming the field), BLIP2_EUNSUPPORTED
 * for a language model family this build does not run. */
int b2__config_load(b2_config *c, const char *path, blip2_error *err);

#endif
