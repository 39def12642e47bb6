/*
 * test_gen_weights.c - the benchmark's random-weights generator
 * (bench/gen_weights.c, linked in) writes folders the loader accepts.
 *
 * For the golden tiny config: generate into a temporary folder (f16
 * sharded into several files, bf16 sharded, f32 as one model.safetensors),
 * load it with blip2_model_load, run image encoding and a short greedy
 * generation, and check the outputs are finite; the same seed gives the
 * same bytes whatever the sharding.  Takes well under a second.
 */
#include "blip2.h"
#include "gen_weights.h"
#include "tap.h"

#include <glob.h>
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
    size_t npx = blip2_pixel_values_len(m), nq = blip2_query_embeds_len(m);
    float *px = malloc(sizeof(float) * npx), *q = malloc(sizeof(float) * nq);
    for (size_t i = 0; i < npx; i++) px[i] = (float)((i * 7919) % 255) / 127.0f - 1.0f;
    ok(blip2_encode_image(m, px, 1, q, NULL, &err) == 0 && all_finite(q, nq),
       "%s: encode_image gives finite embeddings", what);
    blip2_gen_params gp;
    blip2_gen_params_default(&gp);
    gp.max_new_tokens = 4;
    blip2_request rq = {.query_embeds = q, .prompt = "Question: what is it? Answer:"};
    blip2_result res = {0};
    ok(blip2_generate(m, &rq, 1, &gp, NULL, NULL, &res, &err) == 0 && res.n == 1 &&
       res.seqs[0].n_ids >= 2, "%s: generates", what);
    blip2_result_free(&res);
    free(px);
    blip2_model_free(m);
    return q;
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
    snprintf(path, sizeof path, "%s/model-*-of-*.safetensors", dir);
    size_t nshards = glob(path, 0, NULL, &gl) == 0 ? gl.gl_pathc : 0;
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

    ok(run_gen(base, "f64", "0") == 2, "bad dtype is a usage error");
    ok(rm_rf(base) == 0, "clean up %s", base);
    return tap_done();
}
