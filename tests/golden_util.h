/*
 * golden_util.h - what tests/test_golden.c (OPT), tests/test_golden_t5.c
 * (Flan-T5) and tests/test_features.c share when comparing the engine with
 * the golden reference tensors and ids.  Included by those three; after
 * tap.h.
 *
 *   loose, n_same, n_diff   rounded weights (a GGUF file of f16/bf16/q8_0):
 *                           set loose; strict_ok() then reports instead of
 *                           asserting, report_ids() counts generations
 *   cosine / maxdiff        a against ref (widened to f32) from offset off;
 *                           a missing ref gives 0 / infinity (a failure)
 *   need                    a tensor of a golden file, or NULL with a diag
 *   open_st                 a golden file by its path under gdir, or NULL
 *   ids_equal / show_ids / report_ids   ids against a JSON reference list
 *   check_from_file         image file -> preprocess -> encode -> greedy ids
 *   check_batch             the batched greedy case, and each row alone
 *   params_from, check_generate   a case's greedy / beam3 / reppen calls
 *   golden_case_open/_close a case's files, its image encoded and the four
 *                           stage outputs checked, its prompt tokenised
 *   golden_case_from_file   greedy again from the image file
 *   unpadded_rows           a padded batch's prompts without their padding
 *   golden_int8_flags       GOLDEN_INT8_VISION=1: the file packed with the
 *                           int8 vision weights (blip2_convert_opt's flags)
 *   golden_gguf_remove      a temporary GGUF and the tuner's cache beside it
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
#include <unistd.h>

#define TOL_STAGE 1e-4
#define TOL_LOGITS 5e-4

__attribute__((unused)) static const char *gdir; /* the golden folder ($GOLDEN_DIR) */
__attribute__((unused)) static int loose; /* rounded weights: logit cosine asserted, ids reported */

/* Removes a test's temporary GGUF (a loaded model's mapping of it stays
 * valid) and the decode-kernel tuner's "<file>.kernels" beside it. */
__attribute__((unused)) static void golden_gguf_remove(const char *gguf)
{
    char kc[4096 + 16];
    snprintf(kc, sizeof kc, "%s.kernels", gguf);
    unlink(gguf);
    unlink(kc);
}

__attribute__((unused)) static unsigned golden_int8_flags(void)
{
    const char *v = getenv("GOLDEN_INT8_VISION");
    return v && !strcmp(v, "1") ? BLIP2_CONVERT_INT8_VISION : 0;
}
__attribute__((unused)) static int n_same, n_diff;

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
    size_t numel = (size_t)b2__tensor_numel(ref);
    if (off + n > numel) return INFINITY;
    float *r = malloc(sizeof(float) * numel);
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

/* The safetensors file rel (a path under gdir), or NULL with a diag. */
__attribute__((unused))
static b2_st_file *open_st(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", gdir, rel);
    b2_st_file *f = NULL;
    blip2_error err = {0};
    if (b2__st_open(&f, path, &err) < 0) diag("%s", err.text);
    return f;
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

/* The generation parameters of a golden call's kwargs (defaults for the rest). */
__attribute__((unused))
static void params_from(json_t *kw, blip2_gen_params *p)
{
    blip2_gen_params_default(p);
    if (json_object_get(kw, "max_new_tokens")) p->max_new_tokens = (int)json_integer_value(json_object_get(kw, "max_new_tokens"));
    if (json_object_get(kw, "min_new_tokens")) p->min_new_tokens = (int)json_integer_value(json_object_get(kw, "min_new_tokens"));
    if (json_object_get(kw, "num_beams")) p->num_beams = (int)json_integer_value(json_object_get(kw, "num_beams"));
    if (json_object_get(kw, "repetition_penalty")) p->repetition_penalty = (float)json_number_value(json_object_get(kw, "repetition_penalty"));
}

/* Generates with each of the case's calls (greedy, beam3, reppen) and
 * compares ids and text; required: a missing call is a failure. */
__attribute__((unused))
static void check_generate(const blip2_model *m, const blip2_request *rq, json_t *gens, const char *id, int required)
{
    const char *names[] = {"greedy", "beam3", "reppen"};
    for (int k = 0; k < 3; k++) {
        json_t *g = json_object_get(gens, names[k]);
        if (required && !ok(g != NULL, "%s %s: golden call present", id, names[k])) continue;
        if (!g) continue;
        blip2_gen_params p;
        params_from(json_object_get(g, "kwargs"), &p);
        blip2_result res;
        blip2_error err = {0};
        int rc = blip2_generate(m, rq, 1, &p, NULL, NULL, &res, &err);
        if (!ok(rc == 0, "%s %s: generate", id, names[k])) { diag("%s", err.text); continue; }
        int same = ids_equal(res.seqs[0].ids, res.seqs[0].n_ids, json_object_get(g, "ids"));
        if (loose) { /* rounded weights move logits by more than the golden top-2 gaps */
            char what[256];
            snprintf(what, sizeof what, "%s %s", id, names[k]);
            report_ids(what, res.seqs[0].ids, res.seqs[0].n_ids, json_object_get(g, "ids"));
            blip2_result_free(&res);
            continue;
        }
        if (!ok(same, "%s %s: ids identical", id, names[k])) show_ids("got", res.seqs[0].ids, res.seqs[0].n_ids);
        const char *text = json_string_value(json_object_get(g, "text"));
        if (!ok(text && !strcmp(res.seqs[0].text, text), "%s %s: text identical", id, names[k]))
            diag("got '%s' want '%s'", res.seqs[0].text, text ? text : "(null)");
        blip2_result_free(&res);
    }
}

/* The golden pixel values of image img (images/STEM.pixels.safetensors). */
__attribute__((unused))
static int open_pixels(const char *img, b2_st_file **pf, blip2_error *err)
{
    char stem[256], path[1024];
    snprintf(stem, sizeof stem, "%s", img);
    char *dot = strrchr(stem, '.');
    if (dot) *dot = 0;
    snprintf(path, sizeof path, "%s/images/%s.pixels.safetensors", gdir, stem);
    return b2__st_open(pf, path, err);
}

/* One case of a manifest, opened by golden_case_open. */
typedef struct golden_case {
    const char *id, *img, *prompt;  /* borrowed from the manifest */
    b2_st_file *cf, *pf;            /* the case's tensors, the image's pixel values */
    float *px, *q;                  /* pixel values; query embeds (Q, D), from encode */
    blip2_stages st;                /* vision (T, Dv), pooled (Dv), Q-Former (Q, Dq) */
    int32_t *ids;                   /* the processor's input_ids (L) */
    size_t L;
} golden_case;

/* Opens case c, encodes its golden pixel values and checks the four stage
 * outputs (their max abs error raises worst[0..3] when worst is given; with
 * cos_check their cosine must be >= 0.999), reads input_ids and checks the
 * prompt tokenises to them.  -1 (reported) when a file does not open. */
__attribute__((unused))
static int golden_case_open(golden_case *gc, const blip2_model *m, json_t *c, double *worst, int cos_check)
{
    memset(gc, 0, sizeof *gc);
    gc->id = json_string_value(json_object_get(c, "id"));
    const char *id = gc->id;
    blip2_error err = {0};
    gc->cf = open_st(json_string_value(json_object_get(c, "file")));
    if (!ok(gc->cf != NULL, "%s: open case file", id)) return -1;
    gc->img = json_string_value(json_object_get(c, "image"));
    if (!ok(open_pixels(gc->img, &gc->pf, &err) == 0, "%s: open pixels", id)) {
        diag("%s", err.text);
        b2__st_close(gc->cf);
        return -1;
    }
    const int T = blip2_vision_tokens(m), Dv = blip2_vision_hidden(m), Q = blip2_num_query_tokens(m);
    const int Dq = blip2_qformer_hidden(m);
    const size_t npx = blip2_pixel_values_len(m), nq = blip2_query_embeds_len(m);
    gc->px = malloc(sizeof(float) * npx);
    gc->q = malloc(sizeof(float) * nq);
    gc->st = (blip2_stages){
        malloc(sizeof(float) * (size_t)T * Dv), malloc(sizeof(float) * Dv), malloc(sizeof(float) * (size_t)Q * Dq)};
    b2__to_f32(need(gc->pf, "pixel_values"), gc->px);
    if (ok(blip2_encode_image(m, gc->px, 1, gc->q, &gc->st, &err) == 0, "%s: encode image", id)) {
        struct { const char *name; const float *v; size_t n; } s[] = {
            {"vision_last_hidden_state", gc->st.vision_last_hidden_state, (size_t)T * Dv},
            {"vision_pooler_output", gc->st.vision_pooler_output, (size_t)Dv},
            {"qformer_last_hidden_state", gc->st.qformer_last_hidden_state, (size_t)Q * Dq},
            {"language_model_inputs", gc->q, nq},
        };
        for (int i = 0; i < 4; i++) {
            const b2_tensor *t = need(gc->cf, s[i].name);
            double d = t ? maxdiff(s[i].v, t, s[i].n, 0) : INFINITY;
            if (worst && d > worst[i]) worst[i] = d;
            strict_ok(d <= TOL_STAGE, "%s: %s max abs err %.3g <= %g", id, s[i].name, d, TOL_STAGE);
            if (cos_check && t) {
                const double cs = cosine(s[i].v, t, s[i].n, 0);
                ok(cs >= 0.999, "%s: %s cosine %.6f >= 0.999", id, s[i].name, cs);
            }
        }
    } else diag("%s", err.text);

    /* prompt ids: the tokenizer must give the processor's ids */
    const b2_tensor *ti = need(gc->cf, "input_ids");
    gc->L = ti ? (size_t)b2__tensor_numel(ti) : 0;
    gc->ids = malloc(sizeof(int32_t) * (gc->L ? gc->L : 1));
    if (ti) b2__to_i32(ti, gc->ids);
    json_t *pj = json_object_get(c, "prompt");
    gc->prompt = json_is_string(pj) ? json_string_value(pj) : NULL;
    if (gc->prompt) {
        int32_t *tid = NULL;
        size_t tn = 0;
        int rc = blip2_tokenize(m, gc->prompt, 1, &tid, &tn, &err);
        ok(rc == 0 && tn == gc->L && !memcmp(tid, gc->ids, gc->L * sizeof *gc->ids),
           "%s: prompt tokenised as the processor does", id);
        free(tid);
    }
    return 0;
}

/* End to end: case c's image file -> our preprocessing -> greedy ids. */
__attribute__((unused))
static void golden_case_from_file(const golden_case *gc, const blip2_model *m, json_t *c)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/images/%s", gdir, gc->img);
    json_t *g = json_object_get(json_object_get(c, "generate"), "greedy");
    blip2_gen_params p;
    params_from(json_object_get(g, "kwargs"), &p);
    check_from_file(m, path, gc->img, gc->prompt, g, &p, gc->id);
}

__attribute__((unused))
static void golden_case_close(golden_case *gc)
{
    free(gc->ids);
    free(gc->px);
    free(gc->q);
    free(gc->st.vision_last_hidden_state);
    free(gc->st.vision_pooler_output);
    free(gc->st.qformer_last_hidden_state);
    b2__st_close(gc->cf);
    b2__st_close(gc->pf);
}

/* A padded batch (ids and mask (B, L)) as B requests without the padding
 * (masked positions are neither attended nor counted, left or right);
 * rows[b] are allocated here (the caller frees them), q holds B query
 * embeddings of nq floats. */
__attribute__((unused))
static void unpadded_rows(const int32_t *ids, const int32_t *mask, int B, int L, const float *q, size_t nq,
                          blip2_request *rq, int32_t **rows)
{
    for (int b = 0; b < B; b++) {
        rows[b] = malloc(sizeof(int32_t) * L);
        size_t n = 0;
        for (int j = 0; j < L; j++) if (mask[b * L + j]) rows[b][n++] = ids[b * L + j];
        rq[b] = (blip2_request){.query_embeds = q + nq * b, .prompt_ids = rows[b], .n_prompt_ids = n};
    }
}

/* A batch case of the manifest, opened by golden_batch_open. */
typedef struct golden_batch {
    const char *id;
    b2_st_file *cf;
    const b2_tensor *tp, *tg;   /* pixel_values (B, ...) if the file has it; generated_ids (B, W) */
    int B, L;                   /* rows; the padded prompts' length */
    int32_t *ids, *mask;        /* input_ids, attention_mask (B, L) */
    float *px, *q;              /* B pixel values (from tp, else the caller fills them); B query embeds */
} golden_batch;

/* Opens batch case c: its file, input_ids, attention_mask, generated_ids
 * and, with B < 0, pixel_values (B is then its rows; else B must be the
 * rows).  -1 (reported as "tensors present") when any is missing. */
__attribute__((unused))
static int golden_batch_open(golden_batch *gb, const blip2_model *m, json_t *c, int B)
{
    memset(gb, 0, sizeof *gb);
    gb->id = json_string_value(json_object_get(c, "id"));
    gb->cf = open_st(json_string_value(json_object_get(c, "file")));
    if (!ok(gb->cf != NULL, "%s: open", gb->id)) return -1;
    const b2_tensor *ti = need(gb->cf, "input_ids"), *tm = need(gb->cf, "attention_mask");
    gb->tg = need(gb->cf, "generated_ids");
    if (B < 0) {
        gb->tp = need(gb->cf, "pixel_values");
        B = gb->tp ? (int)gb->tp->shape[0] : 0;
    }
    if (!ti || !tm || !gb->tg || B < 1 || B > 8 || (int)ti->shape[0] != B) {
        ok(0, "%s: tensors present", gb->id);
        b2__st_close(gb->cf);
        return -1;
    }
    gb->B = B;
    gb->L = (int)ti->shape[1];
    gb->px = malloc(sizeof(float) * blip2_pixel_values_len(m) * B);
    gb->q = malloc(sizeof(float) * blip2_query_embeds_len(m) * B);
    gb->ids = malloc(sizeof(int32_t) * B * gb->L);
    gb->mask = malloc(sizeof(int32_t) * B * gb->L);
    if (gb->tp) b2__to_f32(gb->tp, gb->px);
    b2__to_i32(ti, gb->ids);
    b2__to_i32(tm, gb->mask);
    return 0;
}

__attribute__((unused))
static void golden_batch_close(golden_batch *gb)
{
    free(gb->px);
    free(gb->q);
    free(gb->ids);
    free(gb->mask);
    b2__st_close(gb->cf);
}

#endif
