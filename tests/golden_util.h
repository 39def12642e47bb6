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
 */
#ifndef BLIP2_GOLDEN_UTIL_H
#define BLIP2_GOLDEN_UTIL_H
#include "safetensors.h"
#include "tap.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif
