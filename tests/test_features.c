/*
 * test_features.c - blip2_image_features / blip2_text_features against the
 * Blip2Model features of transformers 4.37.2 (tests/golden/features/,
 * manifest_features.json): get_image_features, get_qformer_features
 * (max abs error <= 1e-4) and get_text_features (logits, <= 5e-4), plus
 * the projected query embeddings against the caption case files, the
 * partial requests (only some outputs) and the argument errors.
 */
#include "blip2.h"
#include "safetensors.h"
#include "tap.h"
#include "golden_util.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_image(const blip2_model *m, json_t *c)
{
    const char *file = json_string_value(json_object_get(c, "file"));
    json_t *pxl = json_object_get(c, "pixel_values");
    const int n = (int)json_array_size(pxl);
    b2_st_file *gf = open_st(file);
    if (!ok(gf && n == 2, "image features: golden file %s, %d images", file, n)) return;
    const size_t npx = blip2_pixel_values_len(m), T = (size_t)blip2_vision_tokens(m),
                 Dv = (size_t)blip2_vision_hidden(m), Q = (size_t)blip2_num_query_tokens(m),
                 Dq = (size_t)blip2_qformer_hidden(m), nq = blip2_query_embeds_len(m);
    float *px = malloc(sizeof(float) * npx * n);
    for (int i = 0; i < n; i++) {
        char rel[512];
        snprintf(rel, sizeof rel, "%s", json_string_value(json_array_get(pxl, i)));
        char *hash = strchr(rel, '#');
        if (hash) *hash = 0;
        b2_st_file *pf = open_st(rel);
        const b2_tensor *t = pf ? b2__st_find(pf, "pixel_values") : NULL;
        if (t && (size_t)b2__tensor_numel(t) == npx) b2__to_f32(t, px + npx * i);
        else memset(px + npx * i, 0, sizeof(float) * npx);
        b2__st_close(pf);
    }
    blip2_image_features_out f = {
        malloc(sizeof(float) * n * T * Dv), malloc(sizeof(float) * n * Dv),
        malloc(sizeof(float) * n * Q * Dq), malloc(sizeof(float) * n * Dq),
        malloc(sizeof(float) * n * nq)};
    blip2_error err = {0};
    int rc = blip2_image_features(m, px, n, &f, &err);
    if (!ok(rc == 0, "image features: all outputs for 2 images")) diag("%s", err.text);
    struct { const char *name; const float *v; size_t n; } s[] = {
        {"image_last_hidden_state", f.vision_last_hidden_state, n * T * Dv},
        {"image_pooler_output", f.vision_pooler_output, n * Dv},
        {"qformer_last_hidden_state", f.qformer_last_hidden_state, n * Q * Dq},
        {"qformer_pooler_output", f.qformer_pooler_output, n * Dq},
    };
    for (int i = 0; i < 4; i++) {
        double d = maxdiff(s[i].v, b2__st_find(gf, s[i].name), s[i].n, 0);
        ok(d <= TOL_STAGE, "image features: %s max abs err %.3g <= %g", s[i].name, d, TOL_STAGE);
    }
    /* the projection against the caption cases of the same images */
    const char *cases[2] = {"cases/opt-tiny__chelsea_png__caption.safetensors",
                            "cases/opt-tiny__rocket_jpg__caption.safetensors"};
    for (int i = 0; i < n; i++) {
        b2_st_file *cf = open_st(cases[i]);
        double d = cf ? maxdiff(f.query_embeds + nq * i, b2__st_find(cf, "language_model_inputs"), nq, 0)
                      : INFINITY;
        ok(d <= TOL_STAGE, "image features: query embeddings of image %d max abs err %.3g", i, d);
        b2__st_close(cf);
    }
    /* partial requests run fewer stages and give the same numbers */
    float *vp = malloc(sizeof(float) * Dv), *qp = malloc(sizeof(float) * Dq);
    blip2_image_features_out only_v = {.vision_pooler_output = vp};
    rc = blip2_image_features(m, px + npx, 1, &only_v, &err);
    double d = maxdiff(vp, b2__st_find(gf, "image_pooler_output"), Dv, Dv);
    ok(rc == 0 && d <= TOL_STAGE, "image features: vision pooler alone (image 1) max abs err %.3g", d);
    blip2_image_features_out only_q = {.qformer_pooler_output = qp};
    rc = blip2_image_features(m, px, 1, &only_q, &err);
    d = maxdiff(qp, b2__st_find(gf, "qformer_pooler_output"), Dq, 0);
    ok(rc == 0 && d <= TOL_STAGE, "image features: qformer pooler alone (image 0) max abs err %.3g", d);
    blip2_image_features_out none = {0};
    ok(blip2_image_features(m, px, 1, &none, &err) == 0, "image features: no outputs is a no-op");
    ok(blip2_image_features(m, px, 0, &f, &err) == BLIP2_EINVAL && err.code == BLIP2_EINVAL,
       "image features: n = 0 is EINVAL (%s)", err.text);
    ok(blip2_image_features(m, NULL, 1, &f, &err) == BLIP2_EINVAL, "image features: NULL pixels is EINVAL");
    free(vp);
    free(qp);
    free(f.vision_last_hidden_state);
    free(f.vision_pooler_output);
    free(f.qformer_last_hidden_state);
    free(f.qformer_pooler_output);
    free(f.query_embeds);
    free(px);
    b2__st_close(gf);
}

static void test_text(const blip2_model *m, json_t *c)
{
    const char *id = json_string_value(json_object_get(c, "id"));
    const char *file = json_string_value(json_object_get(c, "file"));
    json_t *prompts = json_object_get(c, "prompts");
    if (json_array_size(prompts) != 1) return; /* the batch case is not kept */
    b2_st_file *gf = open_st(file);
    if (!gf) { ok(0, "%s: golden file %s", id, file); return; }
    const char *text = json_string_value(json_array_get(prompts, 0));
    blip2_error err = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = blip2_tokenize(m, text, 1, &ids, &n, &err);
    const b2_tensor *ti = b2__st_find(gf, "input_ids");
    int32_t ref[64];
    size_t rn = ti ? (size_t)b2__tensor_numel(ti) : 0;
    if (rn <= 64 && ti) b2__to_i32(ti, ref);
    ok(rc == 0 && n == rn && !memcmp(ids, ref, n * sizeof *ids), "%s: \"%s\" tokenised as the processor does", id, text);
    const size_t V = (size_t)blip2_vocab_size(m);
    float *lg = malloc(sizeof(float) * n * V), *last = malloc(sizeof(float) * V),
          *last2 = malloc(sizeof(float) * V);
    rc = blip2_text_features(m, ids, n, lg, last, &err);
    if (!ok(rc == 0, "%s: text features", id)) diag("%s", err.text);
    double d = maxdiff(lg, b2__st_find(gf, "logits"), n * V, 0);
    ok(d <= TOL_LOGITS, "%s: logits (1,%zu,%zu) max abs err %.3g <= %g", id, n, V, d, TOL_LOGITS);
    ok(!memcmp(last, lg + (n - 1) * V, sizeof(float) * V), "%s: last_logits is the last row", id);
    rc = blip2_text_features(m, ids, n, NULL, last2, &err);
    d = maxdiff(last2, b2__st_find(gf, "logits"), V, (n - 1) * V);
    ok(rc == 0 && d <= TOL_LOGITS, "%s: last position alone, max abs err %.3g", id, d);
    free(lg);
    free(last);
    free(last2);
    free(ids);
    b2__st_close(gf);
}

static void test_text_errors(const blip2_model *m)
{
    blip2_error err = {0};
    const size_t V = (size_t)blip2_vocab_size(m);
    float *lg = malloc(sizeof(float) * V);
    int32_t bad[2] = {2, (int32_t)V};
    ok(blip2_text_features(m, bad, 2, NULL, lg, &err) == BLIP2_EINVAL && strstr(err.text, "vocabulary"),
       "text features: an id outside the vocabulary is EINVAL (%s)", err.text);
    int32_t one = 2;
    ok(blip2_text_features(m, &one, 0, NULL, lg, &err) == BLIP2_EINVAL, "text features: no ids is EINVAL");
    ok(blip2_text_features(m, &one, 1, NULL, NULL, &err) == BLIP2_EINVAL, "text features: no output is EINVAL");
    size_t big = (size_t)blip2_max_positions(m) + 1;
    int32_t *many = calloc(big, sizeof *many);
    ok(blip2_text_features(m, many, big, NULL, lg, &err) == BLIP2_ETOOBIG,
       "text features: more tokens than positions is ETOOBIG (%s)", err.text);
    ok(blip2_text_features(m, &one, 1, NULL, lg, &err) == 0, "text features: BOS alone works");
    free(many);
    free(lg);
}

int main(void)
{
    gdir = getenv("GOLDEN_DIR");
    if (!gdir) gdir = "tests/golden";
    char path[1024];
    snprintf(path, sizeof path, "%s/manifest_features.json", gdir);
    json_error_t je;
    json_t *man = json_load_file(path, 0, &je);
    if (!ok(man != NULL, "manifest_features.json loads")) {
        diag("%s: %s", path, je.text);
        return tap_done();
    }
    snprintf(path, sizeof path, "%s/opt-tiny", gdir);
    blip2_model *m = NULL;
    blip2_error err = {0};
    if (!ok(blip2_model_load(&m, path, NULL, &err) == 0, "load opt-tiny")) {
        diag("%s", err.text);
        json_decref(man);
        return tap_done();
    }
    json_t *cases = json_object_get(man, "cases"), *c;
    size_t i;
    json_array_foreach(cases, i, c) {
        if (json_object_get(c, "pixel_values")) test_image(m, c);
        else test_text(m, c);
    }
    test_text_errors(m);
    blip2_model_free(m);
    json_decref(man);
    return tap_done();
}
