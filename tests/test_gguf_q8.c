/*
 * test_gguf_q8.c - q8_0 through the whole engine.
 *
 * The golden tiny models have no matrix whose rows are a multiple of 32
 * values, so a q8_0 file of them is an f16 one (docs/gguf.md).  Here the
 * benchmark's generator (bench/gen_weights.c, linked in) writes a small
 * random model whose every width is a multiple of 32 (vision 64, Q-Former
 * 64, OPT 64, feed-forward 128), which is packed twice, as f32 and as q8_0
 * (the language model's matrices quantised, the others bf16), and both files are
 * run on the same pixels and prompt: the q8_0 last-position logits must
 * keep a cosine above 0.99 to the f32 ones (asserted), and the greedy ids
 * are compared (first divergent position reported).  The vision encoder
 * and Q-Former run bf16 math on oneDNN where the CPU has native bf16 (else
 * the tiled f32-conversion path), the decoder the row kernels, the
 * embeddings the row conversion.
 *
 * The same for Flan-T5 (d_model 64, d_kv 32 x 2 heads, gated d_ff 128, a
 * tied lm_head, so the logits use q8_0 `shared` scaled by d_model^-0.5):
 * every language-model matrix is q8_0, the vision, Q-Former and projection
 * matrices bf16 (docs/gguf.md; relative position biases
 * and RMSNorm weights stay f32), and the f32 file gives bit for bit the
 * logits and ids of the folder loaded directly.
 */
#include "blip2.h"
#include "gen_weights.h"
#include "tap.h"
#include "tiny_opt_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static const char config_t5[] =
    "{\"model_type\": \"blip-2\", \"num_query_tokens\": 8,\n"
    " \"vision_config\": {\"hidden_size\": 64, \"intermediate_size\": 128, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2},\n"
    " \"qformer_config\": {\"hidden_size\": 64, \"intermediate_size\": 96, \"num_attention_heads\": 2,\n"
    "   \"num_hidden_layers\": 2, \"encoder_hidden_size\": 64},\n"
    " \"text_config\": {\"model_type\": \"t5\", \"d_model\": 64, \"d_kv\": 32, \"num_heads\": 2, \"d_ff\": 128,\n"
    "   \"num_layers\": 2, \"num_decoder_layers\": 2, \"feed_forward_proj\": \"gated-gelu\",\n"
    "   \"dense_act_fn\": \"gelu\", \"is_gated_act\": true, \"tie_word_embeddings\": true,\n"
    "   \"bos_token_id\": 1, \"decoder_start_token_id\": 0, \"eos_token_id\": 1, \"pad_token_id\": 0}}\n";

static double cos_of(const float *a, const float *b, size_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return ab / sqrt(aa * bb);
}

static int same_ids(const blip2_result *a, const blip2_result *b)
{
    return a->seqs[0].n_ids == b->seqs[0].n_ids &&
           !memcmp(a->seqs[0].ids, b->seqs[0].ids, sizeof(int32_t) * a->seqs[0].n_ids);
}

/* Generates a model from cfg_text (label names it), packs it as f32 and
 * q8_0 and compares; with the folder too (direct load) when folder_too. */
static void run(const char *label, const char *cfg_text, const char *prompt, int folder_too, const char *qt,
                double bound)
{
    const char *t = getenv("TMPDIR");
    char dir[512], cfg[600], src[600], f32[600], q8[600], cmd[700];
    fflush(stdout); /* the reader's lines go out after what came before */
    snprintf(dir, sizeof dir, "%s/test_gguf_q8.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) { ok(0, "mkdtemp"); return; }
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(src, sizeof src, "%s/model", dir);
    snprintf(f32, sizeof f32, "%s/f32.gguf", dir);
    snprintf(q8, sizeof q8, "%s/q8.gguf", dir);
    FILE *f = fopen(cfg, "w");
    fputs(cfg_text, f);
    fclose(f);
    char *argv[] = {"gen_weights", "-q", "--config", cfg, "--dtype", "f32", "--seed", "11", src, NULL};
    if (!ok(b2bench_gen_weights(9, argv) == 0, "%s: generate a model with widths of multiples of 32", label)) return;
    blip2_error err = {0};
    blip2_convert_stats s32, s8;
    ok(blip2_convert(src, f32, "f32", NULL, NULL, &s32, &err) == 0, "%s: pack f32", label);
    const int rc8 = blip2_convert(src, q8, qt, NULL, NULL, &s8, &err);
    const int nq_t = !strcmp(qt, "q4_0") ? s8.n_q4_0 : s8.n_q8_0;
    ok(rc8 == 0, "%s: pack %s: %d %s, %d bf16, %d f16, %d f32 tensors", label, qt, nq_t, qt, s8.n_bf16,
       s8.n_f16, s8.n_f32);
    ok(nq_t > 0 && s8.n_bf16 > 0 && s8.n_f16 == 0 && (s8.n_q8_0 == 0 || s8.n_q4_0 == 0),
       "%s: the language model's matrices are %s, the vision encoder's, Q-Former's and projection's bf16", label, qt);
    const int nm = folder_too ? 3 : 2;
    blip2_model *m[3] = {NULL, NULL, NULL};
    const char *name[3] = {"f32", qt, "folder"};
    ok(blip2_model_load(&m[0], f32, NULL, &err) == 0, "%s: load f32", label);
    ok(blip2_model_load(&m[1], q8, NULL, &err) == 0 && !strcmp(blip2_model_dtype(m[1]), qt), "%s: load %s", label, qt);
    if (folder_too) ok(blip2_model_load(&m[2], src, NULL, &err) == 0, "%s: load the folder directly", label);
    if (!m[0] || !m[1] || (folder_too && !m[2])) { diag("%s", err.text); return; }
    const size_t npx = blip2_pixel_values_len(m[0]), nq = blip2_query_embeds_len(m[0]);
    const int V = blip2_vocab_size(m[0]);
    float *px = malloc(sizeof(float) * npx), *q[3], *logits[3];
    for (size_t i = 0; i < npx; i++) px[i] = (float)((i * 7919) % 255) / 127.0f - 1.0f;
    blip2_result res[3];
    for (int k = 0; k < nm; k++) {
        q[k] = malloc(sizeof(float) * nq);
        logits[k] = malloc(sizeof(float) * V);
        ok(blip2_encode_image(m[k], px, 1, q[k], NULL, &err) == 0, "%s %s: encode", label, name[k]);
        blip2_request rq = {.query_embeds = q[k], .prompt = prompt};
        ok(blip2_forward_logits(m[k], &rq, logits[k], NULL, &err) == 0, "%s %s: forward", label, name[k]);
        blip2_gen_params gp;
        blip2_gen_params_default(&gp);
        gp.max_new_tokens = 12;
        ok(blip2_generate(m[k], &rq, 1, &gp, NULL, NULL, &res[k], &err) == 0, "%s %s: generate", label, name[k]);
    }
    const double cq = cos_of(q[0], q[1], nq), cl = cos_of(logits[0], logits[1], (size_t)V);
    ok(cq > 0.99, "%s %s: query embeddings: cosine %.6f > 0.99", label, qt, cq);
    ok(cl > bound, "%s %s: last-position logits: cosine %.6f > %g", label, qt, cl, bound);
    size_t j = 0;
    while (j < res[0].seqs[0].n_ids && j < res[1].seqs[0].n_ids && res[0].seqs[0].ids[j] == res[1].seqs[0].ids[j]) j++;
    diag("%s %s greedy ids: %s (%zu of %zu equal before the first difference)", label, qt,
         j == res[0].seqs[0].n_ids && j == res[1].seqs[0].n_ids ? "identical" : "diverge", j, res[0].seqs[0].n_ids);
    if (folder_too) {
        ok(!memcmp(logits[0], logits[2], sizeof(float) * V) && same_ids(&res[0], &res[2]),
           "%s: the f32 file gives the folder's logits bit for bit and its greedy ids", label);
    }
    for (int k = 0; k < nm; k++) {
        blip2_result_free(&res[k]);
        blip2_model_free(m[k]);
        free(q[k]);
        free(logits[k]);
    }
    free(px);
    if (!strcmp(qt, "q4_0")) { /* the file as an independent reader of the GGUF spec sees it */
        const char *sd = getenv("srcdir");
        char rd[2400];
        snprintf(rd, sizeof rd, "python3 '%s/tests/gguf_q4_reader.py' '%s' '%s' > '%s/reader.log' 2>&1", sd && *sd ? sd : ".",
                 q8, src, dir);
        const int rrc = system(rd);
        snprintf(rd, sizeof rd, "sed 's/^/# /' '%s/reader.log'", dir);
        if (system(rd) != 0) diag("no reader output");
        ok(rrc == 0, "%s q4_0: tests/gguf_q4_reader.py (GGUF spec + GGML's q4_0, in Python) reads every tensor info "
           "and finds the bytes GGML's quantisation gives, decoding within |d| (1 + 2^-8) of the source", label);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ok(system(cmd) == 0, "%s: clean up", label);
}

int main(void)
{
    run("opt", tiny_opt_config, "Question: what is it? Answer:", 0, "q8_0", 0.99);
    run("t5", config_t5, "Question: what is it? Answer:", 1, "q8_0", 0.99);
    run("opt", tiny_opt_config, "Question: what is it? Answer:", 0, "q4_0", 0.95);
    run("t5", config_t5, "Question: what is it? Answer:", 0, "q4_0", 0.95);
    return tap_done();
}
