/*
 * test_blocked_vision.c - the blocked bf16 vision weights
 * (BLIP2_CONVERT_BLOCKED_VISION, blip2ctl convert --blocked-vision;
 * packed.h, docs/gguf.md "Math").
 *
 * The golden tiny models' vision matrices do not take the layout (rows
 * not a multiple of 64), so the generator (bench/gen_weights.c, linked
 * in) writes a small model whose do: the golden opt-tiny config with a
 * vision encoder of width 64 and MLP 128 (every qkv, projection, fc1 and
 * fc2 takes it).  Converted to q8_0 with and without the copies:
 *   - the file counts one copy per such matrix; f32 is refused;
 *   - loaded with bf16 math, the model says it reads them in place, and
 *     its vision output and query embeddings have exactly the bits of the
 *     file without them (the copies hold what the tiles would convert);
 *   - with a copy's values changed, the output changes (they are read);
 *   - every copy is its weight's stored bf16 rows in the layout
 *     (b2__bf16_rows_blocked, computed here from the file without them);
 *   - f32 math leaves them unused (said) and has the bits of the other
 *     file's f32 math;
 *   - a copy missing (renamed in the header) or a scheme other than 1:
 *     the load fails with BLIP2_EFORMAT naming it.
 * Without native bf16 the bf16 checks are skipped (said); the rest runs.
 */
#include "blip2.h"
#include "gen_weights.h"
#include "gguf.h"
#include "matmul_dnnl.h"
#include "packed.h"
#include "tap.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef B2_GOLDEN_DIR
#define B2_GOLDEN_DIR "tests/golden"
#endif

/* The golden opt-tiny config with a vision encoder of width 64 (4 heads),
 * MLP 128, into path. */
static int write_config(const char *path)
{
    json_error_t je;
    json_t *c = json_load_file(B2_GOLDEN_DIR "/opt-tiny/config.json", 0, &je);
    if (!c) return -1;
    json_t *v = json_object_get(c, "vision_config"), *q = json_object_get(c, "qformer_config");
    int rc = !v || !q || json_object_set_new(v, "hidden_size", json_integer(64)) ||
             json_object_set_new(v, "intermediate_size", json_integer(128)) ||
             json_object_set_new(v, "num_attention_heads", json_integer(4)) ||
             json_object_set_new(q, "encoder_hidden_size", json_integer(64)) ||
             json_dump_file(c, path, JSON_INDENT(1));
    json_decref(c);
    return rc ? -1 : 0;
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = len > 0 ? malloc((size_t)len) : NULL;
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static int write_all(const char *path, const unsigned char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const int rc = fwrite(b, 1, n, f) == n ? 0 : -1;
    return fclose(f) == 0 ? rc : -1;
}

/* The offset of the first occurrence of s (len bytes) in b, or -1 */
static long find(const unsigned char *b, size_t n, const char *s, size_t len)
{
    for (size_t i = 0; i + len <= n; i++)
        if (!memcmp(b + i, s, len)) return (long)i;
    return -1;
}

/* A copy of src at dst with one change made by edit; 0 or -1 */
static int patched(const char *src, const char *dst, int (*edit)(unsigned char *, size_t))
{
    size_t n;
    unsigned char *b = read_all(src, &n);
    const int rc = b && edit(b, n) == 0 ? write_all(dst, b, n) : -1;
    free(b);
    return rc;
}

#define COPY_NAME "vision_model.encoder.layers.1.mlp.fc1.bf16_b64"

/* the copy of layer 1's fc1 renamed in the header (same length) */
static int rename_copy(unsigned char *b, size_t n)
{
    const long at = find(b, n, COPY_NAME, strlen(COPY_NAME));
    if (at < 0) return -1;
    b[at + strlen(COPY_NAME) - 1] = 'X';
    return 0;
}

/* the scheme key's u32 value (after the key, its type 4) set to 2 */
static int bad_scheme(unsigned char *b, size_t n)
{
    static const char key[] = "blip2.vision.bf16_blocked";
    const long at = find(b, n, key, sizeof key - 1);
    if (at < 0) return -1;
    unsigned char *t = b + at + sizeof key - 1;
    if (t[0] != 4 || t[4] != 1) return -1;
    t[4] = 2;
    return 0;
}

/* The file offset of the copy's data, for poke_copy */
static size_t g_copy_off;

/* its first 64 values set to 1.0 (bf16 0x3f80) */
static int poke_copy(unsigned char *b, size_t n)
{
    if (!g_copy_off || g_copy_off + 128 > n) return -1;
    for (int i = 0; i < 64; i++) {
        b[g_copy_off + 2 * i] = 0x80;
        b[g_copy_off + 2 * i + 1] = 0x3f;
    }
    return 0;
}

/* Every copy in the blocked file against the layout computed here from
 * the plain file's weight (bf16 rows): 1 if all are equal; sets
 * g_copy_off to layer 1's fc1 copy. */
static int copies_match(const char *plain, const char *blk)
{
    b2_gguf *gp = NULL, *gb = NULL;
    blip2_error err;
    int good = 0, n = 0;
    if (b2__gguf_open(&gp, plain, &err) < 0 || b2__gguf_open(&gb, blk, &err) < 0) goto out;
    size_t size;
    const unsigned char *base = b2__gguf_map(gb, &size);
    good = 1;
    for (int i = 0; i < b2__gguf_n_tensors(gb); i++) {
        const b2_gguf_tensor *t = b2__gguf_tensor_at(gb, i);
        const size_t len = t->name.len, sl = strlen(B2_BLOCKED_SUFFIX);
        if (len <= sl || memcmp(t->name.p + len - sl, B2_BLOCKED_SUFFIX, sl)) continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s.weight", (int)(len - sl), t->name.p);
        const b2_gguf_tensor *w = b2__gguf_find_tensor(gp, name);
        if (!w || w->type != B2_WT_BF16 || w->n_dims != 2 || t->type != B2_WT_BF16 ||
            t->ne[0] != 64 * w->ne[0] || t->ne[1] * 64 != w->ne[1]) {
            diag("%s: not a bf16 copy of the right shape", name);
            good = 0;
            continue;
        }
        const int k = (int)w->ne[0], rows = (int)w->ne[1];
        uint16_t *want = malloc(sizeof(uint16_t) * (size_t)k * rows);
        if (!want || b2__bf16_rows_blocked(want, w->data, rows, k, 64) < 0 ||
            memcmp(want, t->data, sizeof(uint16_t) * (size_t)k * rows)) {
            diag("%s: the copy is not the weight's rows in the layout", name);
            good = 0;
        }
        free(want);
        if (strlen(COPY_NAME) == len && !memcmp(t->name.p, COPY_NAME, len))
            g_copy_off = (size_t)((const unsigned char *)t->data - base);
        n++;
    }
    if (n != 8) good = 0;
out:
    if (gp) b2__gguf_close(gp);
    if (gb) b2__gguf_close(gb);
    return good;
}

typedef struct outputs {
    float *vis, *q;
    size_t nvis, nq;
} outputs;

/* Loads path with precision prec, encodes a fixed pattern: *o filled
 * (caller frees), the model's math string into math (cap bytes).  0, or
 * the blip2 error code with err filled. */
static int run(const char *path, const char *prec, outputs *o, char *math, size_t cap, blip2_error *err)
{
    blip2_load_opts lo = {.precision = prec};
    err->text[0] = 0;
    blip2_model *m = NULL;
    memset(o, 0, sizeof *o);
    int rc = blip2_model_load(&m, path, &lo, err);
    if (rc < 0) return rc;
    snprintf(math, cap, "%s", blip2_model_math(m));
    const size_t npx = blip2_pixel_values_len(m);
    o->nq = blip2_query_embeds_len(m);
    o->nvis = (size_t)blip2_vision_tokens(m) * blip2_vision_hidden(m);
    float *px = malloc(sizeof(float) * npx);
    o->q = malloc(sizeof(float) * o->nq);
    o->vis = malloc(sizeof(float) * o->nvis);
    if (!px || !o->q || !o->vis) rc = -1;
    for (size_t i = 0; !rc && i < npx; i++) px[i] = (float)((i * 7919) % 255) / 127.0f - 1.0f;
    blip2_stages st = {.vision_last_hidden_state = o->vis};
    if (!rc) rc = blip2_encode_image(m, px, 1, o->q, &st, err);
    free(px);
    blip2_model_free(m);
    return rc;
}

static void outputs_free(outputs *o)
{
    free(o->vis);
    free(o->q);
}

static int same_bits(const outputs *a, const outputs *b)
{
    return a->vis && b->vis && a->nvis == b->nvis && a->nq == b->nq &&
           !memcmp(a->vis, b->vis, sizeof(float) * a->nvis) && !memcmp(a->q, b->q, sizeof(float) * a->nq);
}

int main(void)
{
    char tmpl[] = "/tmp/b2-blocked-XXXXXX";
    char *base = mkdtemp(tmpl);
    if (!base) { ok(0, "mkdtemp"); return tap_done(); }
    char cfg[600], dir[600], plain[600], blk[600], bad[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", base);
    snprintf(dir, sizeof dir, "%s/model", base);
    snprintf(plain, sizeof plain, "%s/plain.gguf", base);
    snprintf(blk, sizeof blk, "%s/blocked.gguf", base);
    snprintf(bad, sizeof bad, "%s/bad.gguf", base);
    /* the choice between oneDNN and the own path is made by timing: not here */
    setenv("BLIP2_MATMUL", "onednn", 1);
    unsetenv("BLIP2_PRECISION");

    char *gargv[] = {"gen_weights", "--config", cfg, "-q", "--dtype", "f16", "--seed", "11", dir, NULL};
    if (!ok(write_config(cfg) == 0 && b2bench_gen_weights(9, gargv) == 0, "a model with 64-wide vision generated"))
        return tap_done();

    blip2_error err = {0};
    blip2_convert_stats st;
    ok(blip2_convert_opt(dir, plain, "q8_0", 0, NULL, NULL, &st, &err) == 0 && st.n_blocked == 0,
       "converted to q8_0 without copies (%s)", err.text);
    err.text[0] = 0;
    const int rc = blip2_convert_opt(dir, blk, "q8_0", BLIP2_CONVERT_BLOCKED_VISION, NULL, NULL, &st, &err);
    ok(rc == 0 && st.n_blocked == 8, "with --blocked-vision: 8 copies (2 layers x qkv, projection, fc1, fc2): %d (%s)",
       st.n_blocked, rc ? err.text : "");
    ok(blip2_convert_opt(dir, bad, "f32", BLIP2_CONVERT_BLOCKED_VISION, NULL, NULL, &st, &err) == BLIP2_EINVAL &&
       strstr(err.text, "f32"), "with type f32: refused (%s)", err.text);
    ok(access(bad, F_OK) != 0, "and nothing written");

    ok(copies_match(plain, blk), "every copy is its weight's rows as stored, in the blocked layout");

    char math_a[1024], math_b[1024];
    outputs a, b, c;
    /* f32 math: the copies unused */
    ok(run(plain, "f32", &a, math_a, sizeof math_a, &err) == 0, "plain file, f32 math: runs (%s)", err.text);
    ok(run(blk, "f32", &b, math_b, sizeof math_b, &err) == 0, "blocked file, f32 math: runs (%s)", err.text);
    ok(strstr(math_b, "8 blocked vision matrices unused (f32 math)") != NULL, "f32 math says the copies are unused: %s",
       math_b);
    ok(same_bits(&a, &b), "f32 math: the same bits with and without the copies");
    outputs_free(&a);
    outputs_free(&b);

    /* bf16 math: read in place, the same bits */
    ok(run(plain, "bf16", &a, math_a, sizeof math_a, &err) == 0, "plain file, bf16 math: runs (%s)", err.text);
    ok(run(blk, "bf16", &b, math_b, sizeof math_b, &err) == 0, "blocked file, bf16 math: runs (%s)", err.text);
    const int native = !strncmp(math_b, "bf16", 4);
    if (!native) {
        diag("no native bf16 here (%s): the bf16 checks are skipped", math_b);
    } else {
        ok(strstr(math_b, "8 vision matrices read in place in oneDNN's blocked layout") != NULL,
           "bf16 math says it reads the copies in place: %s", math_b);
        ok(strstr(math_a, "blocked") == NULL, "the plain file says nothing of copies: %s", math_a);
        ok(same_bits(&a, &b), "bf16 math: the same bits with and without the copies");
        ok(patched(blk, bad, poke_copy) == 0, "layer 1's fc1 copy changed in a file");
        ok(run(bad, "bf16", &c, math_b, sizeof math_b, &err) == 0 && !same_bits(&a, &c),
           "bf16 math reads the copies: the output changes with them (%s)", err.text);
        outputs_free(&c);
    }
    outputs_free(&a);
    outputs_free(&b);

    /* a copy missing, an unknown scheme */
    ok(patched(blk, bad, rename_copy) == 0, "a copy renamed in the header");
    ok(run(bad, "bf16", &c, math_b, sizeof math_b, &err) == BLIP2_EFORMAT && strstr(err.text, COPY_NAME),
       "a missing copy: BLIP2_EFORMAT naming it (%s)", err.text);
    outputs_free(&c);
    ok(run(bad, "f32", &c, math_b, sizeof math_b, &err) == BLIP2_EFORMAT, "the same with f32 math (%s)", err.text);
    outputs_free(&c);
    ok(patched(blk, bad, bad_scheme) == 0, "the scheme set to 2");
    ok(run(bad, "bf16", &c, math_b, sizeof math_b, &err) == BLIP2_EFORMAT && strstr(err.text, "unknown scheme"),
       "an unknown scheme: BLIP2_EFORMAT (%s)", err.text);
    outputs_free(&c);

    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0) diag("could not remove %s", base);
    return tap_done();
}
