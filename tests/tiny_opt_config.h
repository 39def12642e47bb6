/*
 * tiny_opt_config.h - the config.json of a small random BLIP-2 OPT model
 * whose widths are multiples of 32 (q8_0/q4_0 blocks), for the tests
 * that make one with bench/gen_weights.c (test_gguf_q8, test_ktune).
 */
#ifndef BLIP2_TINY_OPT_CONFIG_H
#define BLIP2_TINY_OPT_CONFIG_H

static const char tiny_opt_config[] =
    "{\"model_type\": \"blip-2\", \"num_query_tokens\": 8,\n"
    " \"vision_config\": {\"hidden_size\": 64, \"intermediate_size\": 128, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2},\n"
    " \"qformer_config\": {\"hidden_size\": 64, \"intermediate_size\": 96, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2, \"encoder_hidden_size\": 64},\n"
    " \"text_config\": {\"model_type\": \"opt\", \"hidden_size\": 64, \"ffn_dim\": 128, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2, \"word_embed_proj_dim\": 64, \"eos_token_id\": 50118}}\n";

#endif
