/*
 * test_gguf_q8.c - q8_0 through the whole engine.
 *
 * The golden tiny models have no matrix whose rows are a multiple of 32
 * values, so a q8_0 file of them is an f16 one (docs/gguf.md).  Here the
 * benchmark's generator (bench/gen_weights.c, linked in) writes a small
 * random model whose every width is a multiple of 32 (vision 64, Q-Former
 * 64, OPT 64, feed-forward 128), which is packed twice, as f32 and as q8_0
 * (every matrix but the patch embedding quantised), and both files are
 * run on the same pixels and prompt: the q8_0 last-position logits must
 * keep a cosine above 0.99 to the f32 ones (asserted), and the greedy ids
 * are compared (first divergent position reported).  The vision encoder
 * and Q-Former run the tiled f32-conversion path, the decoder the row
 * kernels, the embeddings the row conversion.
 */
#include "blip2.h"
#include "gen_weights.h"
#include "tap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char config[] =
    "{\"model_type\": \"blip-2\", \"num_query_tokens\": 8,\n"
    " \"vision_config\": {\"hidden_size\": 64, \"intermediate_size\": 128, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2},\n"
    " \"qformer_config\": {\"hidden_size\": 64, \"intermediate_size\": 96, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2, \"encoder_hidden_size\": 64},\n"
    " \"text_config\": {\"model_type\": \"opt\", \"hidden_size\": 64, \"ffn_dim\": 128, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2, \"word_embed_proj_dim\": 64, \"eos_token_id\": 50118}}\n";

int main(void)
{
    const char *t = getenv("TMPDIR");
    char dir[512], cfg[600], src[600], f32[600], q8[600], cmd[700];
    snprintf(dir, sizeof dir, "%s/test_gguf_q8.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) { ok(0, "mkdtemp"); return tap_done(); }
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(src, sizeof src, "%s/model", dir);
    snprintf(f32, sizeof f32, "%s/f32.gguf", dir);
    snprintf(q8, sizeof q8, "%s/q8.gguf", dir);
    FILE *f = fopen(cfg, "w");
    fputs(config, f);
    fclose(f);
    char *argv[] = {"gen_weights", "-q", "--config", cfg, "--dtype", "f32", "--seed", "11", src, NULL};
    if (!ok(b2bench_gen_weights(9, argv) == 0, "generate a model with widths of multiples of 32")) return tap_done();
    blip2_error err = {0};
    blip2_convert_stats s32, s8;
    ok(blip2_convert(src, f32, "f32", NULL, NULL, &s32, &err) == 0, "pack f32");
    const int rc8 = blip2_convert(src, q8, "q8_0", NULL, NULL, &s8, &err);
    ok(rc8 == 0, "pack q8_0: %d q8_0, %d f16, %d f32 tensors", s8.n_q8_0, s8.n_f16, s8.n_f32);
    ok(s8.n_q8_0 > 0 && s8.n_f16 == 1, "every matrix but the patch embedding is q8_0");
    blip2_model *m[2] = {NULL, NULL};
    ok(blip2_model_load(&m[0], f32, NULL, &err) == 0, "load f32");
    ok(blip2_model_load(&m[1], q8, NULL, &err) == 0 && !strcmp(blip2_model_dtype(m[1]), "q8_0"), "load q8_0");
    if (!m[0] || !m[1]) { diag("%s", err.text); return tap_done(); }
    const size_t npx = blip2_pixel_values_len(m[0]), nq = blip2_query_embeds_len(m[0]);
    const int V = blip2_vocab_size(m[0]);
    float *px = malloc(sizeof(float) * npx), *q[2], *logits[2];
    for (size_t i = 0; i < npx; i++) px[i] = (float)((i * 7919) % 255) / 127.0f - 1.0f;
    blip2_result res[2];
    for (int k = 0; k < 2; k++) {
        q[k] = malloc(sizeof(float) * nq);
        logits[k] = malloc(sizeof(float) * V);
        ok(blip2_encode_image(m[k], px, 1, q[k], NULL, &err) == 0, "%s: encode", k ? "q8_0" : "f32");
        blip2_request rq = {.query_embeds = q[k], .prompt = "Question: what is it? Answer:"};
        ok(blip2_forward_logits(m[k], &rq, logits[k], NULL, &err) == 0, "%s: forward", k ? "q8_0" : "f32");
        blip2_gen_params gp;
        blip2_gen_params_default(&gp);
        gp.max_new_tokens = 12;
        ok(blip2_generate(m[k], &rq, 1, &gp, NULL, NULL, &res[k], &err) == 0, "%s: generate", k ? "q8_0" : "f32");
    }
    double ab = 0, aa = 0, bb = 0, qa = 0, qb = 0, qab = 0;
    for (int i = 0; i < V; i++) {
        ab += (double)logits[0][i] * logits[1][i];
        aa += (double)logits[0][i] * logits[0][i];
        bb += (double)logits[1][i] * logits[1][i];
    }
    for (size_t i = 0; i < nq; i++) {
        qab += (double)q[0][i] * q[1][i];
        qa += (double)q[0][i] * q[0][i];
        qb += (double)q[1][i] * q[1][i];
    }
    const double cq = qab / sqrt(qa * qb), cl = ab / sqrt(aa * bb);
    ok(cq > 0.99, "query embeddings: cosine %.6f > 0.99", cq);
    ok(cl > 0.99, "last-position logits: cosine %.6f > 0.99", cl);
    size_t j = 0;
    while (j < res[0].seqs[0].n_ids && j < res[1].seqs[0].n_ids && res[0].seqs[0].ids[j] == res[1].seqs[0].ids[j]) j++;
    diag("greedy ids: %s (%zu of %zu equal before the first difference)",
         j == res[0].seqs[0].n_ids && j == res[1].seqs[0].n_ids ? "identical" : "diverge", j, res[0].seqs[0].n_ids);
    for (int k = 0; k < 2; k++) {
        blip2_result_free(&res[k]);
        blip2_model_free(m[k]);
        free(q[k]);
        free(logits[k]);
    }
    free(px);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ok(system(cmd) == 0, "clean up");
    return tap_done();
}
