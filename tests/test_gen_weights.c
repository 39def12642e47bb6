/*
 * test_gen_weights.c - the benchmark's random-weights generator
 * (bench/gen_weights.c, linked in) writes folders the loader accepts.
 *
 * For the golden tiny config: generate into a temporary folder (f16
 * sharded into several files, bf16 sharded, f32 as one model.safetensors),
 * load it with blip2_model_load, run image encoding and a short greedy
 * generation, and check the outputs are finite; the same seed gives the
 * same bytes whatever the sharding.
 *
 * T5 mode (a config whose text_config.model_type is t5): the golden
 * t5-tiny config (gated, untied lm_head) as f16 shards, and the real
 * blip2-flan-t5-xl config shrunk in the test (ungated relu, tied lm_head,
 * inner size heads*d_kv != d_model, more decoder than encoder blocks) as
 * one bf16 file; each loads as family t5, encodes, generates exactly the
 * forced number of tokens, and holds exactly the language_model.* tensors
 * bind_t5 binds (counted from the safetensors header).  Well under a
 * second or two.
 */
#include "blip2.h"
#include "gen_weights.h"
#include "tap.h"

#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static int run_gen(const char *dir, const char *dtype, const char *shard_mb)
{
    char *argv[] = {"gen_weights", "--tiny", "-q", "--dtype", (char *)dtype, "--shard-mb",
                    (char *)shard_mb, "--seed", "7", (char *)dir, NULL};
    return b2bench_gen_weights(10, argv);
}

static int run_gen_args(const char *dir, const char *config, const char *dtype, const char *shard_mb)
{
    char *argv[] = {"gen_weights", "--config", (char *)config, "-q", "--dtype", (char *)dtype,
                    "--shard-mb", (char *)shard_mb, "--seed", "7", (char *)dir, NULL};
    return b2bench_gen_weights(11, argv);
}

/* The query embeddings (new, caller frees) of a fixed pixel pattern;
 * checks they are finite. */
static float *encode_pattern(const blip2_model *m, const char *what)
{
    blip2_error err = {0};
    size_t npx = blip2_pixel_values_len(m), nq = blip2_query_embeds_len(m);
    float *px = malloc(sizeof(float) * npx), *q = malloc(sizeof(float) * nq);
    for (size_t i = 0; i < npx; i++) px[i] = (float)((i * 7919) % 255) / 127.0f - 1.0f;
    ok(blip2_encode_image(m, px, 1, q, NULL, &err) == 0 && all_finite(q, nq),
       "%s: encode_image gives finite embeddings", what);
    free(px);
    return q;
}

/* Loads dir, encodes an image and generates; returns the query embeddings
 * (new, caller frees) or NULL. */
static float *check_folder(const char *dir, const char *what)
{
    blip2_error err = {0};
    blip2_model *m = NULL;
    if (!ok(blip2_model_load(&m, dir, NULL, &err) == 0, "%s: loads", what)) {
        diag("%s", err.text);
        return NULL;
    }
    float *q = encode_pattern(m, what);
    blip2_gen_params gp;
    blip2_gen_params_default(&gp);
    gp.max_new_tokens = 4;
    blip2_request rq = {.query_embeds = q, .prompt = "Question: what is it? Answer:"};
    blip2_result res = {0};
    ok(blip2_generate(m, &rq, 1, &gp, NULL, NULL, &res, &err) == 0 && res.n == 1 &&
       res.seqs[0].n_ids >= 2, "%s: generates", what);
    blip2_result_free(&res);
    blip2_model_free(m);
    return q;
}

/* The shards model-*-of-*.safetensors of dir, globbed into gl (globfree it
 * when the count is not 0). */
static size_t glob_shards(const char *dir, glob_t *gl)
{
    char path[600];
    snprintf(path, sizeof path, "%s/model-*-of-*.safetensors", dir);
    return glob(path, 0, NULL, gl) == 0 ? gl->gl_pathc : 0;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int rm_rf(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

/* Number of tensors named language_model.* in the safetensors file at
 * path (its JSON header), or -1. */
static int count_lm_tensors(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char len8[8];
    int n = -1;
    if (!f) return -1;
    if (fread(len8, 1, 8, f) == 8) {
        uint64_t hl = 0;
        for (int k = 7; k >= 0; k--) hl = hl << 8 | len8[k];
        char *h = hl < (1u << 26) ? malloc(hl) : NULL;
        json_t *j = h && fread(h, 1, hl, f) == hl ? json_loadb(h, hl, 0, NULL) : NULL;
        const char *key;
        json_t *v;
        if (j) {
            n = 0;
            json_object_foreach(j, key, v) n += !strncmp(key, "language_model.", 15);
        }
        json_decref(j);
        free(h);
    }
    fclose(f);
    return n;
}

/* T5 language-model tensors bind_t5 binds: shared, two relative biases,
 * the blocks, two final norms, and lm_head when untied. */
static int t5_lm_tensors(int enc, int dec, int gated, int tied)
{
    const int ff = (gated ? 3 : 2) + 1; /* wi (wi_0, wi_1), wo, layer_norm */
    return 3 + enc * (4 + 1 + ff) + 1 + dec * (4 + 1 + 4 + 1 + ff) + 1 + !tied;
}

/* Loads a T5 folder: family, embeddings, and greedy generation forced to
 * exactly n_new tokens (min_new_tokens = max_new_tokens). */
static void check_t5_folder(const char *dir, const char *what, int n_new)
{
    blip2_error err = {0};
    blip2_model *m = NULL;
    if (!ok(blip2_model_load(&m, dir, NULL, &err) == 0, "%s: loads", what)) {
        diag("%s", err.text);
        return;
    }
    ok(!strcmp(blip2_model_family(m), "t5"), "%s: family t5 (%s)", what, blip2_model_family(m));
    float *q = encode_pattern(m, what);
    blip2_gen_params gp;
    blip2_gen_params_default(&gp);
    gp.max_new_tokens = gp.min_new_tokens = n_new;
    blip2_request rq = {.query_embeds = q, .prompt = "Question: what is it? Answer:"};
    blip2_result res = {0};
    int rc = blip2_generate(m, &rq, 1, &gp, NULL, NULL, &res, &err);
    ok(rc == 0 && res.n == 1 && res.seqs[0].n_ids == (size_t)n_new + 1 && res.seqs[0].ids[0] == 0,
       "%s: generates [decoder_start] + %d tokens (%zu ids)", what, n_new, rc == 0 && res.n ? res.seqs[0].n_ids : 0);
    if (rc < 0) diag("%s", err.text);
    blip2_result_free(&res);
    free(q);
    blip2_model_free(m);
}

/* The real blip2-flan-t5-xl config, shrunk to test size. */
static int write_small_t5_config(const char *golden, const char *out)
{
    char path[600];
    snprintf(path, sizeof path, "%s/real/blip2-flan-t5-xl.config.json", golden);
    json_t *j = json_load_file(path, 0, NULL);
    json_t *v = json_object_get(j, "vision_config"), *q = json_object_get(j, "qformer_config");
    json_t *t = json_object_get(j, "text_config");
    if (!v || !q || !t) { json_decref(j); return -1; }
    json_object_set_new(j, "num_query_tokens", json_integer(4));
    json_object_set_new(v, "hidden_size", json_integer(32));
    json_object_set_new(v, "intermediate_size", json_integer(48));
    json_object_set_new(v, "num_hidden_layers", json_integer(2));
    json_object_set_new(v, "num_attention_heads", json_integer(4));
    json_object_set_new(q, "hidden_size", json_integer(32));
    json_object_set_new(q, "intermediate_size", json_integer(40));
    json_object_set_new(q, "num_hidden_layers", json_integer(2));
    json_object_set_new(q, "num_attention_heads", json_integer(4));
    json_object_set_new(q, "encoder_hidden_size", json_integer(32));
    json_object_set_new(t, "d_model", json_integer(48));
    json_object_set_new(t, "d_ff", json_integer(40));
    json_object_set_new(t, "d_kv", json_integer(8));
    json_object_set_new(t, "num_heads", json_integer(4));
    json_object_set_new(t, "num_layers", json_integer(2));
    json_object_set_new(t, "num_decoder_layers", json_integer(3));
    json_object_set_new(t, "feed_forward_proj", json_string("relu"));
    json_object_set_new(t, "dense_act_fn", json_string("relu"));
    json_object_set_new(t, "is_gated_act", json_false());
    json_object_set_new(t, "tie_word_embeddings", json_true());
    int rc = json_dump_file(j, out, JSON_INDENT(1));
    json_decref(j);
    return rc;
}

static void t5_tests(const char *base)
{
    const char *golden = getenv("GOLDEN_DIR") ? getenv("GOLDEN_DIR") : B2_GOLDEN_DIR;
    char dir[512], path[600], cfg[600];

    /* the golden t5-tiny shapes: gated, untied lm_head; f16 in shards */
    snprintf(cfg, sizeof cfg, "%s/t5-tiny/config.json", golden);
    snprintf(dir, sizeof dir, "%s/t5-tiny-f16", base);
    ok(run_gen_args(dir, cfg, "f16", "1") == 0, "t5-tiny, f16, 1 MB shards: generated");
    snprintf(path, sizeof path, "%s/spiece.model", dir);
    ok(file_size(path) > 0, "t5-tiny: spiece.model copied");
    glob_t gl;
    size_t nshards = glob_shards(dir, &gl);
    ok(nshards >= 3, "t5-tiny: several shards (%zu)", nshards);
    int nlm = 0;
    for (size_t i = 0; i < nshards; i++) {
        int k = count_lm_tensors(gl.gl_pathv[i]);
        nlm = k < 0 || nlm < 0 ? -1 : nlm + k;
    }
    if (nshards) globfree(&gl);
    ok(nlm == t5_lm_tensors(2, 2, 1, 0), "t5-tiny: %d language_model tensors (want %d)", nlm,
       t5_lm_tensors(2, 2, 1, 0));
    check_t5_folder(dir, "t5-tiny f16", 5);

    /* the real flan-t5-xl config shrunk: ungated, tied, I != D, 2 + 3 blocks; bf16, one file */
    snprintf(cfg, sizeof cfg, "%s/t5-small.config.json", base);
    ok(write_small_t5_config(golden, cfg) == 0, "shrunk blip2-flan-t5-xl config written");
    snprintf(dir, sizeof dir, "%s/t5-small-bf16", base);
    ok(run_gen_args(dir, cfg, "bf16", "0") == 0, "shrunk flan-t5-xl, bf16, one file: generated");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    nlm = count_lm_tensors(path);
    ok(nlm == t5_lm_tensors(2, 3, 0, 1), "shrunk flan-t5-xl: %d language_model tensors (want %d)", nlm,
       t5_lm_tensors(2, 3, 0, 1));
    check_t5_folder(dir, "shrunk flan-t5-xl bf16", 20);
}

int main(void)
{
    char tmpl[] = "/tmp/b2-gen-weights-XXXXXX";
    char *base = mkdtemp(tmpl);
    if (!base) { ok(0, "mkdtemp"); return tap_done(); }
    char dir[512], path[600];

    snprintf(dir, sizeof dir, "%s/f16", base);
    ok(run_gen(dir, "f16", "2") == 0, "f16, 2 MB shards: generated");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    ok(file_size(path) > 0, "f16: has an index");
    glob_t gl;
    size_t nshards = glob_shards(dir, &gl);
    ok(nshards >= 3, "f16: several shards (%zu)", nshards);
    if (nshards) globfree(&gl);
    float *q_sharded = check_folder(dir, "f16 sharded");

    snprintf(dir, sizeof dir, "%s/bf16", base);
    ok(run_gen(dir, "bf16", "3") == 0, "bf16, 3 MB shards: generated");
    free(check_folder(dir, "bf16 sharded"));

    snprintf(dir, sizeof dir, "%s/f32", base);
    ok(run_gen(dir, "f32", "0") == 0, "f32, one file: generated");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ok(file_size(path) > 0, "f32: model.safetensors exists");
    free(check_folder(dir, "f32 single file"));

    /* the same seed and dtype give the same model whatever the sharding */
    snprintf(dir, sizeof dir, "%s/f16-one", base);
    ok(run_gen(dir, "f16", "0") == 0, "f16, one file: generated");
    float *q_one = check_folder(dir, "f16 single file");
    ok(q_sharded && q_one && !memcmp(q_sharded, q_one, sizeof(float) * 8 * 56), /* Q x Dt */
       "f16 sharded and single file give the same embeddings");
    free(q_sharded);
    free(q_one);

    t5_tests(base);

    ok(run_gen(base, "f64", "0") == 2, "bad dtype is a usage error");
    ok(rm_rf(base) == 0, "clean up %s", base);
    return tap_done();
}
