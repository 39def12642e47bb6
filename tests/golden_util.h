/*
 * golden_util.h - what tests/test_golden.c (OPT) and tests/test_golden_t5.c
 * (Flan-T5) share when comparing the engine with the golden reference
 * tensors and ids.  Included by exactly those two; after tap.h.
 *
 *   loose, n_same, n_diff   rounded weights (a GGUF file of f16/bf16/q8_0):
 *                           set loose; strict_ok() then reports instead of
 *                           asserting, report_ids() counts generations
 *   cosine / maxdiff        a against ref (widened to f32) from offset off;
 *                           a missing ref gives 0 / infinity (a failure)
 *   need                    a tensor of a golden file, or NULL with a diag
 *   ids_equal / show_ids / report_ids   ids against a JSON reference list
 *   check_from_file         image file -> preprocess -> encode -> greedy ids
 *   check_batch             the batched greedy case, and each row alone
 */
#ifndef BLIP2_GOLDEN_UTIL_H
#define BLIP2_GOLDEN_UTIL_H
#include "blip2.h"
#include "safetensors.h"
#include "tap.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_STAGE 1e-4
#define TOL_LOGITS 5e-4

static int loose; /* rounded weights: logit cosine asserted, ids reported */
static int n_same, n_diff;

/* ok() for the checks that rounded weights may miss: reported only. */
#define strict_ok(cond, ...) (loose ? (diag(__VA_ARGS__), (cond) ? diag("  (within)") : diag("  (outside, not asserted: rounded weights)"), 1) : ok(cond, __VA_ARGS__))

__attribute__((unused))
static double cosine(const float *a, const b2_tensor *ref, size_t n, size_t off)
{
    if (!ref) return 0;
    float *r = malloc(sizeof(float) * (size_t)b2__tensor_numel(ref));
    b2__to_f32(ref, r);
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * r[off + i];
        aa += (double)a[i] * a[i];
        bb += (double)r[off + i] * r[off + i];
    }
    free(r);
    return ab / sqrt(aa * bb);
}

__attribute__((unused))
static double maxdiff(const float *a, const b2_tensor *ref, size_t n, size_t off)
{
    if (!ref) return INFINITY;
    float *r = malloc(sizeof(float) * (size_t)b2__tensor_numel(ref));
    b2__to_f32(ref, r);
    double d = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - r[off + i]);
        if (!(e <= d)) d = e; /* NaN propagates as a failure */
    }
    free(r);
    return d;
}

__attribute__((unused))
static const b2_tensor *need(b2_st_file *f, const char *name)
{
    const b2_tensor *t = b2__st_find(f, name);
    if (!t) diag("missing tensor %s in %s", name, b2__st_path(f));
    return t;
}

static int ids_equal(const int32_t *a, size_t na, json_t *ref)
{
    if (json_array_size(ref) != na) return 0;
    for (size_t i = 0; i < na; i++)
        if (json_integer_value(json_array_get(ref, i)) != a[i]) return 0;
    return 1;
}

__attribute__((unused))
static void show_ids(const char *what, const int32_t *a, size_t n)
{
    char buf[1024];
    size_t o = 0;
    for (size_t i = 0; i < n && o < sizeof buf - 16; i++) o += (size_t)snprintf(buf + o, sizeof buf - o, "%d ", a[i]);
    diag("%s: %s", what, buf);
}

/* Rounded weights: whether ids equal the reference, and where they part. */
__attribute__((unused))
static void report_ids(const char *what, const int32_t *a, size_t n, json_t *ref)
{
    size_t j = 0;
    while (j < n && j < json_array_size(ref) && json_integer_value(json_array_get(ref, j)) == a[j]) j++;
    const int same = ids_equal(a, n, ref);
    if (same) n_same++;
    else n_diff++;
    diag("%s: ids %s", what, same ? "identical" : "differ");
    if (!same) diag("  first divergent position %zu (not asserted: rounded weights)", j);
}

/* End to end: the image file at path -> our preprocessing (EXIF ignored, as
 * the reference does) -> encode -> greedy generation with p must give g's
 * "ids". */
__attribute__((unused))
static void check_from_file(const blip2_model *m, const char *path, const char *img, const char *prompt,
                            json_t *g, const blip2_gen_params *p, const char *id)
{
    blip2_error err;
    float *px = malloc(sizeof(float) * blip2_pixel_values_len(m));
    float *q = malloc(sizeof(float) * blip2_query_embeds_len(m));
    blip2_image_opts io = {.no_exif_rotate = 1};
    if (ok(blip2_preprocess_file(m, path, &io, px, &err) == 0, "%s: preprocess %s", id, img) &&
        ok(blip2_encode_image(m, px, 1, q, NULL, &err) == 0, "%s: encode from file", id)) {
        blip2_request r = {.query_embeds = q, .prompt = prompt};
        blip2_result res;
        if (ok(blip2_generate(m, &r, 1, p, NULL, NULL, &res, &err) == 0, "%s: generate from file", id)) {
            strict_ok(ids_equal(res.seqs[0].ids, res.seqs[0].n_ids, json_object_get(g, "ids")),
                      "%s: greedy ids from the image file identical", id);
            blip2_result_free(&res);
        }
    } else {
        diag("%s", err.text);
    }
    free(px);
    free(q);
}

/* The batched greedy case: rq (B requests) generated together must give the
 * reference's ids (tg (B, W), finished rows padded with pad) and texts
 * (g's "text" list), and each row generated alone the same ids as in the
 * batch. */
__attribute__((unused))
static void check_batch(const blip2_model *m, const blip2_request *rq, int B, const blip2_gen_params *p,
                        const b2_tensor *tg, json_t *g, const char *id, int32_t pad)
{
    blip2_error err;
    blip2_result res;
    if (ok(blip2_generate(m, rq, B, p, NULL, NULL, &res, &err) == 0, "%s: generate batch", id)) {
        const int W = (int)tg->shape[1];
        int32_t *gen = malloc(sizeof(int32_t) * B * W);
        b2__to_i32(tg, gen);
        for (int b = 0; b < B; b++) {
            int same = res.seqs[b].n_ids <= (size_t)W;
            for (int j = 0; j < W && same; j++)
                same = gen[b * W + j] == (j < (int)res.seqs[b].n_ids ? res.seqs[b].ids[j] : pad);
            if (!strict_ok(same, "%s: row %d batched greedy ids identical", id, b)) show_ids("got", res.seqs[b].ids, res.seqs[b].n_ids);
            const char *text = json_string_value(json_array_get(json_object_get(g, "text"), (size_t)b));
            strict_ok(text && !strcmp(text, res.seqs[b].text), "%s: row %d text identical", id, b);
        }
        /* each row alone gives the same ids as in the batch */
        for (int b = 0; b < B; b++) {
            blip2_result one;
            if (blip2_generate(m, &rq[b], 1, p, NULL, NULL, &one, &err) == 0) {
                ok(one.seqs[0].n_ids == res.seqs[b].n_ids &&
                   !memcmp(one.seqs[0].ids, res.seqs[b].ids, sizeof(int32_t) * one.seqs[0].n_ids),
                   "%s: row %d alone == batched", id, b);
                blip2_result_free(&one);
            } else ok(0, "%s: row %d alone: %s", id, b, err.text);
        }
        free(gen);
        blip2_result_free(&res);
    } else {
        diag("%s", err.text);
    }
}

#endif
