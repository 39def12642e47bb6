/*
 * test_golden_t5.c - the Flan-T5 BLIP-2 path against transformers v4.37.2
 * (tests/golden/manifest_t5.json, model t5-tiny).
 *
 * T5's relative-position buckets (both tables, -200..200) exactly; per
 * case: every stage from the golden pixel_values (1e-4), the prompt ids,
 * the encoder output (1e-4), logits_dec0 (5e-4), the teacher-forced top-5
 * values (5e-4) and indices (exact) at every decoder position (and the full
 * logits where stored), the greedy / beam / repetition-penalty ids and
 * texts exactly, greedy again from the image file; the right-padded batch
 * case; and the same greedy ids from f16 and bf16 copies of the weights.
 *
 * With GOLDEN_GGUF_TYPE=f32|f16|bf16|q8_0|q4_0 in the environment t5-tiny is
 * first packed into a GGUF file of that type (blip2_convert, in $TMPDIR)
 * and the mapped file is tested instead (tests/test_golden_gguf.sh): f32
 * must pass everything; for the rounded types (t5-tiny is an f32
 * checkpoint) the stage and logit tolerances and the ids are reported,
 * not asserted, the logits' cosine to the reference must exceed 0.99 and
 * a batched row must still equal the same row alone.  The 16-bit folder
 * copies are not rerun then.
 *
 * GOLDEN_PRECISION=f32|bf16|int8 loads with that math (tests/
 * test_golden_bf16.sh, test_golden_int8.sh): other than f32, the vision,
 * Q-Former and projection outputs must keep a cosine similarity to the
 * reference >= 0.999 and the logits >= 0.995; if the load fell back to
 * f32 math (GOLDEN_EXPECT_MATH, a prefix of blip2_model_math, says what
 * it must choose) everything is checked as without it.  GOLDEN_MM_ROWS=N
 * sends every product of N rows or more to the math backend.  The 16-bit
 * folder copies are not rerun with GOLDEN_PRECISION.
 * GOLDEN_INT8_VISION=1 packs the file with the int8 vision weights
 * (BLIP2_CONVERT_INT8_VISION; tests/test_golden_int8.sh).
 */
#include "blip2.h"
#include "safetensors.h"
#include "t5.h"
#include "tap.h"
#include "golden_util.h"
#include "kernels.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int cos_check; /* GOLDEN_PRECISION other than f32: cosines asserted */

static void check_buckets(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/cases-t5/t5_relative_position_buckets.safetensors", gdir);
    b2_st_file *f = NULL;
    blip2_error err = {0};
    if (!ok(b2__st_open(&f, path, &err) == 0, "open bucket tables")) { diag("%s", err.text); return; }
    const b2_tensor *rp = need(f, "relative_position");
    const char *names[2] = {"bucket_unidirectional_32_128", "bucket_bidirectional_32_128"};
    for (int bi = 0; bi < 2; bi++) {
        const b2_tensor *t = need(f, names[bi]);
        if (!rp || !t) { ok(0, "%s present", names[bi]); continue; }
        size_t n = (size_t)b2__tensor_numel(t);
        int32_t *r = malloc(sizeof(int32_t) * n), *b = malloc(sizeof(int32_t) * n);
        b2__to_i32(rp, r);
        b2__to_i32(t, b);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            if (b2__t5_bucket(r[i], bi, 32, 128) != b[i]) {
                if (!bad) diag("relative position %d: bucket %d, want %d", r[i], b2__t5_bucket(r[i], bi, 32, 128), b[i]);
                bad++;
            }
        ok(bad == 0 && n == 401, "%s: all %zu relative positions exact", names[bi], n);
        free(r);
        free(b);
    }
    b2__st_close(f);
}

/* tokenizer_golden_t5.json through blip2_tokenize / blip2_detokenize. */
static void check_tokenizer(const blip2_model *m)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer_golden_t5.json", gdir);
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    json_t *es = json_object_get(g, "entries");
    if (!ok(json_array_size(es) == 99, "tokenizer golden: 99 entries")) { json_decref(g); return; }
    int enc_ok = 0, enc_ns_ok = 0, skip_ok = 0, keep_ok = 0, n = 0;
    size_t i;
    json_t *e;
    blip2_error err = {0};
    json_array_foreach(es, i, e) {
        const char *text = json_string_value(json_object_get(e, "text"));
        json_t *want = json_object_get(e, "ids"), *want_ns = json_object_get(e, "ids_no_special");
        int32_t *ids = NULL;
        size_t nid = 0;
        n++;
        if (blip2_tokenize(m, text, 1, &ids, &nid, &err) == 0 && ids_equal(ids, nid, want)) enc_ok++;
        else { diag("ids of entry %zu differ", i); if (ids) show_ids("got", ids, nid); }
        free(ids);
        ids = NULL;
        if (blip2_tokenize(m, text, 0, &ids, &nid, &err) == 0 && ids_equal(ids, nid, want_ns)) enc_ns_ok++;
        else diag("ids_no_special of entry %zu differ", i);
        free(ids);
        size_t wn = json_array_size(want);
        int32_t *w = malloc(sizeof(int32_t) * (wn ? wn : 1));
        for (size_t k = 0; k < wn; k++) w[k] = (int32_t)json_integer_value(json_array_get(want, k));
        for (int skip = 1; skip >= 0; skip--) {
            char *out = NULL;
            const char *ref = json_string_value(json_object_get(e, skip ? "decode_skip_special" : "decode_keep_special"));
            if (blip2_detokenize(m, w, wn, skip, &out, &err) == 0 && ref && !strcmp(out, ref)) ++*(skip ? &skip_ok : &keep_ok);
            else diag("entry %zu decode(skip=%d): got '%s' want '%s'", i, skip, out ? out : "(error)", ref ? ref : "");
            free(out);
        }
        free(w);
    }
    ok(enc_ok == n, "tokenizer: ids (with eos) of %d/%d strings identical", enc_ok, n);
    ok(enc_ns_ok == n, "tokenizer: ids_no_special of %d/%d strings identical", enc_ns_ok, n);
    ok(skip_ok == n, "tokenizer: decode_skip_special of %d/%d identical", skip_ok, n);
    ok(keep_ok == n, "tokenizer: decode_keep_special of %d/%d identical", keep_ok, n);
    /* bad input: a clear error, not a crash */
    int32_t *ids = NULL;
    size_t nid = 0;
    ok(blip2_tokenize(m, "a\xff", 1, &ids, &nid, &err) == BLIP2_EINVAL, "tokenizer: invalid UTF-8 refused (%s)", err.text);
    free(ids);
    char *out = NULL;
    int32_t bad[2] = {5, 32100};
    ok(blip2_detokenize(m, bad, 2, 1, &out, &err) == BLIP2_EINVAL, "tokenizer: id 32100 refused (%s)", err.text);
    free(out);
    char buf[16];
    ok(blip2_token_bytes(m, 8774, buf, sizeof buf) == 6 && !memcmp(buf, " Hello", 6), "token_bytes: '▁Hello' is ' Hello'");
    ok(blip2_token_bytes(m, 1, buf, sizeof buf) == 0 && blip2_token_bytes(m, 32099, buf, sizeof buf) == 0,
       "token_bytes: special tokens have no bytes");
    json_decref(g);
}

/* The top-5 of row (V floats), best first. */
static void top5(const float *row, int V, int *idx)
{
    for (int k = 0; k < 5; k++) idx[k] = -1;
    for (int v = 0; v < V; v++) {
        int j = 5;
        while (j > 0 && (idx[j - 1] < 0 || row[v] > row[idx[j - 1]])) j--;
        if (j >= 5) continue;
        memmove(idx + j + 1, idx + j, sizeof(int) * (size_t)(4 - j));
        idx[j] = v;
    }
}

static void run_case(const blip2_model *m, json_t *c)
{
    golden_case gc;
    if (golden_case_open(&gc, m, c, NULL, cos_check) < 0) return;
    const char *id = gc.id;
    b2_st_file *cf = gc.cf;
    const float *q = gc.q;
    const int32_t *ids = gc.ids;
    const size_t L = gc.L, nq = blip2_query_embeds_len(m);
    const int Q = blip2_num_query_tokens(m), V = blip2_vocab_size(m), D = blip2_text_hidden(m);
    blip2_error err = {0};

    const b2_tensor *td = need(cf, "decoder_input_ids");
    const int Tdec = td ? (int)b2__tensor_numel(td) : 0;
    int32_t *dec = malloc(sizeof(int32_t) * (Tdec ? Tdec : 1));
    if (td) b2__to_i32(td, dec);

    /* encoder output and teacher-forced logits over the greedy sequence */
    const int ne = Q + (int)L;
    float *emb = malloc(sizeof(float) * (size_t)ne * D), *enc = malloc(sizeof(float) * (size_t)ne * D);
    float *lg = malloc(sizeof(float) * (size_t)(Tdec ? Tdec : 1) * V);
    memcpy(emb, q, sizeof(float) * nq);
    b2__t5_embed(m, ids, (int)L, emb + nq);
    if (ok(Tdec > 0 && b2__t5_forward(m, emb, ne, dec, Tdec, enc, lg) == 0, "%s: teacher-forced forward", id)) {
        double d = maxdiff(enc, need(cf, "encoder_last_hidden_state"), (size_t)ne * D, 0);
        strict_ok(d <= TOL_STAGE, "%s: encoder_last_hidden_state max abs err %.3g <= %g", id, d, TOL_STAGE);
        const b2_tensor *tv = need(cf, "logits_top5_values"), *tx = need(cf, "logits_top5_indices");
        if (tv && tx && b2__tensor_numel(tv) == (int64_t)Tdec * 5) {
            float *gv = malloc(sizeof(float) * Tdec * 5);
            int32_t *gx = malloc(sizeof(int32_t) * Tdec * 5);
            b2__to_f32(tv, gv);
            b2__to_i32(tx, gx);
            double dv = 0;
            int same = 1;
            for (int t = 0; t < Tdec; t++) {
                int mine[5];
                top5(lg + (size_t)t * V, V, mine);
                for (int k = 0; k < 5; k++) {
                    same &= mine[k] == gx[t * 5 + k];
                    double e = fabs((double)lg[(size_t)t * V + gx[t * 5 + k]] - gv[t * 5 + k]);
                    if (!(e <= dv)) dv = e;
                }
            }
            strict_ok(dv <= TOL_LOGITS, "%s: teacher-forced top-5 values at %d positions max abs err %.3g", id, Tdec, dv);
            strict_ok(same, "%s: teacher-forced top-5 indices at %d positions identical", id, Tdec);
            free(gv);
            free(gx);
        } else ok(0, "%s: top-5 tensors present", id);
        const b2_tensor *tfull = b2__st_find(cf, "logits");
        if (tfull) {
            d = maxdiff(lg, tfull, (size_t)Tdec * V, 0);
            strict_ok(d <= TOL_LOGITS, "%s: all %d decoder positions' logits max abs err %.3g", id, Tdec, d);
            if (loose) {
                const double cs = cosine(lg, tfull, (size_t)Tdec * V, 0);
                if (cos_check) ok(cs >= 0.995, "%s: all %d decoder positions' logits cosine %.6f >= 0.995", id, Tdec, cs);
                else ok(cs > 0.99, "%s: all %d decoder positions' logits cosine %.6f > 0.99", id, Tdec, cs);
            }
        }
    }
    /* the public forward: the first decoder step */
    blip2_request rq_ids = {.query_embeds = q, .prompt_ids = ids, .n_prompt_ids = L};
    float *last = malloc(sizeof(float) * V);
    if (ok(blip2_forward_logits(m, &rq_ids, last, NULL, &err) == 0, "%s: forward", id)) {
        double d = maxdiff(last, need(cf, "logits_dec0"), (size_t)V, 0);
        strict_ok(d <= TOL_LOGITS, "%s: logits_dec0 max abs err %.3g <= %g", id, d, TOL_LOGITS);
        if (loose) {
            const double cs = cosine(last, need(cf, "logits_dec0"), (size_t)V, 0);
            if (cos_check) ok(cs >= 0.995, "%s: logits_dec0 cosine %.6f >= 0.995", id, cs);
            else ok(cs > 0.99, "%s: logits_dec0 cosine %.6f > 0.99", id, cs);
        }
    } else diag("%s", err.text);

    blip2_request rq = {.query_embeds = q, .prompt = gc.prompt};
    check_generate(m, &rq, json_object_get(c, "generate"), id, 1);
    golden_case_from_file(&gc, m, c);
    free(last); free(emb); free(enc); free(lg); free(dec);
    golden_case_close(&gc);
}

static void run_batch(const blip2_model *m, json_t *c)
{
    json_t *imgs = json_object_get(c, "images");
    golden_batch gb;
    if (json_array_size(imgs) != 2) { ok(0, "%s: two images", json_string_value(json_object_get(c, "id"))); return; }
    if (golden_batch_open(&gb, m, c, 2) < 0) return;
    const char *id = gb.id;
    b2_st_file *cf = gb.cf;
    const int B = gb.B, L = gb.L, V = blip2_vocab_size(m), D = blip2_text_hidden(m), Q = blip2_num_query_tokens(m);
    const size_t npx = blip2_pixel_values_len(m), nq = blip2_query_embeds_len(m);
    float *px = gb.px, *q = gb.q;
    blip2_error err = {0};
    for (int b = 0; b < B; b++) {
        b2_st_file *pf = NULL;
        if (open_pixels(json_string_value(json_array_get(imgs, (size_t)b)), &pf, &err) == 0) {
            b2__to_f32(need(pf, "pixel_values"), px + npx * b);
            b2__st_close(pf);
        } else diag("%s", err.text);
    }
    if (ok(blip2_encode_image(m, px, B, q, NULL, &err) == 0, "%s: encode %d images together", id, B)) {
        double d = maxdiff(q, need(cf, "language_model_inputs"), nq * B, 0);
        strict_ok(d <= TOL_STAGE, "%s: language_model_inputs max abs err %.3g", id, d);
    }
    /* strip the right padding: the encoder masks it and nothing else sees it */
    blip2_request rq[2];
    int32_t *rows[2];
    float *last = malloc(sizeof(float) * V);
    unpadded_rows(gb.ids, gb.mask, B, L, q, nq, rq, rows);
    for (int b = 0; b < B; b++) {
        const size_t n = rq[b].n_prompt_ids;
        const int ne = Q + (int)n;
        float *emb = malloc(sizeof(float) * (size_t)ne * D), *enc = malloc(sizeof(float) * (size_t)ne * D);
        int32_t start = blip2_bos_id(m);
        memcpy(emb, q + nq * b, sizeof(float) * nq);
        b2__t5_embed(m, rows[b], (int)n, emb + nq);
        if (b2__t5_forward(m, emb, ne, &start, 1, enc, last) == 0) {
            double d = maxdiff(enc, need(cf, "encoder_last_hidden_state"), (size_t)ne * D, (size_t)b * (Q + L) * D);
            strict_ok(d <= TOL_STAGE, "%s: row %d encoder_last_hidden_state (unpadded part) max abs err %.3g", id, b, d);
        } else ok(0, "%s: row %d encoder", id, b);
        if (blip2_forward_logits(m, &rq[b], last, NULL, &err) == 0) {
            double d = maxdiff(last, need(cf, "logits_dec0"), (size_t)V, (size_t)b * V);
            strict_ok(d <= TOL_LOGITS, "%s: row %d logits_dec0 max abs err %.3g", id, b, d);
            if (loose) {
                const double cs = cosine(last, need(cf, "logits_dec0"), (size_t)V, (size_t)b * V);
                ok(cs > 0.99, "%s: row %d logits_dec0 cosine %.6f > 0.99", id, b, cs);
            }
        } else ok(0, "%s: forward row %d: %s", id, b, err.text);
        free(emb);
        free(enc);
    }
    json_t *g = json_object_get(json_object_get(c, "generate"), "greedy");
    blip2_gen_params p;
    params_from(json_object_get(g, "kwargs"), &p);
    check_batch(m, rq, B, &p, gb.tg, g, id, 0); /* finished rows are padded with pad id 0 */
    for (int b = 0; b < B; b++) free(rows[b]);
    free(last);
    golden_batch_close(&gb);
}

/* ---- 16-bit copies of the weights ---- */

static uint16_t to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, e = (x >> 23) & 0xffu, mant = x & 0x7fffffu;
    if (e == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    int ex = (int)e - 127 + 15;
    if (ex >= 31) return (uint16_t)(sign | 0x7c00u);
    if (ex <= 0) { /* subnormal: round to nearest even */
        if (ex < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - ex;
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)ex << 10) | (mant >> 13), rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static uint16_t to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* Writes dir (a copy of t5-tiny with its weights in dtype) and a second
 * folder dir_ref holding the same rounded values as f32.  0 on success. */
static int write_copy(const char *dir, const char *ref, b2_dtype dt)
{
    char path[1024], src[512];
    const char *files[] = {"config.json", "generation_config.json", "preprocessor_config.json",
                           "spiece.model", "tokenizer_config.json", "special_tokens_map.json"};
    snprintf(path, sizeof path, "%s/t5-tiny/model.safetensors", gdir);
    b2_st_file *f = NULL;
    blip2_error err = {0};
    if (b2__st_open(&f, path, &err) < 0) { diag("%s", err.text); return -1; }
    const int n = b2__st_count(f);
    b2_tensor *ts = calloc((size_t)n, sizeof *ts), *tr = calloc((size_t)n, sizeof *tr);
    void **bufs = calloc((size_t)n * 2, sizeof *bufs);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const b2_tensor *t = b2__st_at(f, i);
        size_t cnt = (size_t)b2__tensor_numel(t);
        float *v = malloc(sizeof(float) * cnt);
        uint16_t *h = malloc(2 * cnt);
        b2__to_f32(t, v);
        for (size_t j = 0; j < cnt; j++) {
            h[j] = dt == B2_F16 ? to_f16(v[j]) : to_bf16(v[j]);
            v[j] = dt == B2_F16 ? b2__f16_to_f32(h[j]) : b2__bf16_to_f32(h[j]);
        }
        ts[i] = *t;
        ts[i].dtype = dt;
        ts[i].data = h;
        ts[i].nbytes = 2 * cnt;
        tr[i] = *t;
        tr[i].data = v;
        tr[i].nbytes = 4 * cnt;
        bufs[2 * i] = h;
        bufs[2 * i + 1] = v;
    }
    const char *dirs[2] = {dir, ref};
    for (int k = 0; k < 2 && rc == 0; k++) {
        snprintf(path, sizeof path, "%s/model.safetensors", dirs[k]);
        if (b2__st_write(path, k ? tr : ts, n, &err) < 0) { diag("%s", err.text); rc = -1; }
        for (size_t i = 0; i < sizeof files / sizeof files[0] && rc == 0; i++) {
            snprintf(src, sizeof src, "%s/t5-tiny/%s", gdir, files[i]);
            snprintf(path, sizeof path, "%s/%s", dirs[k], files[i]);
            if (src[0] != '/') {
                char cwd[256], abs[1024];
                if (!getcwd(cwd, sizeof cwd)) { rc = -1; break; }
                snprintf(abs, sizeof abs, "%s/%s", cwd, src);
                rc = symlink(abs, path);
            } else {
                rc = symlink(src, path);
            }
        }
    }
    for (int i = 0; i < 2 * n; i++) free(bufs[i]);
    free(bufs); free(ts); free(tr);
    b2__st_close(f);
    return rc;
}

static void rm_dir(const char *dir)
{
    const char *files[] = {"model.safetensors", "config.json", "generation_config.json", "preprocessor_config.json",
                           "spiece.model", "tokenizer_config.json", "special_tokens_map.json"};
    char path[1024];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* 16-bit copies of t5-tiny: a 16-bit file must give exactly what an f32
 * file holding the same rounded values gives (logits and ids: the loader
 * widens exactly), and f16 (11 significant bits) must still give the
 * golden greedy ids of all 18 cases (the reference ran in f32; f16 moves
 * the logits by about 1e-3, below the smallest top-1/top-2 gap, 1.7e-2).
 * bf16 keeps 8 bits, which moves these random logits by more than the gaps,
 * so its agreement with the f32 golden ids is only reported. */
static void run_16bit(json_t *man, b2_dtype dt, const char *name)
{
    char tmpl[] = "/tmp/blip2-t5-XXXXXX";
    if (!mkdtemp(tmpl)) { ok(0, "%s: temporary folder", name); return; }
    char dir[256], ref[256];
    snprintf(dir, sizeof dir, "%s/%s", tmpl, name);
    snprintf(ref, sizeof ref, "%s/%s-as-f32", tmpl, name);
    blip2_model *m = NULL, *mr = NULL;
    blip2_error err = {0};
    if (ok(mkdir(dir, 0700) == 0 && mkdir(ref, 0700) == 0, "%s: folders", name) &&
        ok(write_copy(dir, ref, dt) == 0, "%s: copy of t5-tiny written", name) &&
        ok(blip2_model_load(&m, dir, NULL, &err) == 0, "%s: load", name) &&
        ok(blip2_model_load(&mr, ref, NULL, &err) == 0, "%s as f32: load", name)) {
        ok(!strcmp(blip2_model_dtype(m), name), "%s: reported dtype %s", name, blip2_model_dtype(m));
        size_t i;
        json_t *c;
        int total = 0, same = 0, same_rounded = 0;
        double worst = 0;
        const size_t nq = blip2_query_embeds_len(m);
        float *px = malloc(sizeof(float) * blip2_pixel_values_len(m)), *q = malloc(sizeof(float) * nq);
        float *l1 = malloc(sizeof(float) * blip2_vocab_size(m)), *l2 = malloc(sizeof(float) * blip2_vocab_size(m));
        json_array_foreach(json_object_get(man, "cases"), i, c) {
            if (json_object_get(c, "images")) continue;
            b2_st_file *pf = NULL;
            if (open_pixels(json_string_value(json_object_get(c, "image")), &pf, &err) < 0) continue;
            b2__to_f32(need(pf, "pixel_values"), px);
            b2__st_close(pf);
            json_t *pj = json_object_get(c, "prompt");
            blip2_request rq = {.query_embeds = q, .prompt = json_is_string(pj) ? json_string_value(pj) : NULL};
            json_t *g = json_object_get(json_object_get(c, "generate"), "greedy");
            blip2_gen_params p;
            params_from(json_object_get(g, "kwargs"), &p);
            blip2_result res;
            total++;
            blip2_result rr;
            if (blip2_encode_image(m, px, 1, q, NULL, &err) == 0 &&
                blip2_generate(m, &rq, 1, &p, NULL, NULL, &res, &err) == 0) {
                if (ids_equal(res.seqs[0].ids, res.seqs[0].n_ids, json_object_get(g, "ids"))) same++;
                else if (dt == B2_F16) {
                    diag("%s: %s differs", name, json_string_value(json_object_get(c, "id")));
                    show_ids("got", res.seqs[0].ids, res.seqs[0].n_ids);
                }
                if (blip2_generate(mr, &rq, 1, &p, NULL, NULL, &rr, &err) == 0) {
                    same_rounded += rr.seqs[0].n_ids == res.seqs[0].n_ids &&
                                    !memcmp(rr.seqs[0].ids, res.seqs[0].ids, sizeof(int32_t) * rr.seqs[0].n_ids);
                    blip2_result_free(&rr);
                }
                blip2_result_free(&res);
            }
            if (blip2_forward_logits(m, &rq, l1, NULL, &err) == 0 && blip2_encode_image(mr, px, 1, q, NULL, &err) == 0 &&
                blip2_forward_logits(mr, &rq, l2, NULL, &err) == 0)
                for (int v = 0; v < blip2_vocab_size(m); v++)
                    if (!(fabs((double)l1[v] - l2[v]) <= worst)) worst = fabs((double)l1[v] - l2[v]);
        }
        if (dt == B2_F16)
            ok(total == 18 && same == total, "%s: greedy ids of %d/%d cases identical to the golden ones", name, same, total);
        else /* 8 significant bits move these random logits by more than the golden margins */
            diag("%s: greedy ids of %d/%d cases identical to the golden (f32) ones", name, same, total);
        ok(total == 18 && same_rounded == total,
           "%s: greedy ids of %d/%d cases identical to an f32 file holding the same rounded values", name, same_rounded, total);
        ok(worst == 0, "%s: logits equal those of an f32 file with the same values (max diff %.3g)", name, worst);
        free(px); free(q); free(l1); free(l2);
    } else diag("%s", err.text);
    blip2_model_free(m);
    blip2_model_free(mr);
    rm_dir(dir);
    rm_dir(ref);
    rmdir(tmpl);
}

int main(int argc, char **argv)
{
    gdir = getenv("GOLDEN_DIR");
    if (!gdir) gdir = "tests/golden";
    const char *only = argc > 1 ? argv[1] : NULL; /* optional: "cases", "tokenizer", "16bit" */
    char path[1024];
    snprintf(path, sizeof path, "%s/manifest_t5.json", gdir);
    json_error_t je;
    json_t *man = json_load_file(path, 0, &je);
    if (!ok(man != NULL, "load %s", path)) { diag("%s", je.text); return tap_done(); }
    check_buckets();
    blip2_model *m = NULL;
    blip2_error err = {0};
    snprintf(path, sizeof path, "%s/t5-tiny", gdir);
    const char *gtype = getenv("GOLDEN_GGUF_TYPE");
    char gguf[1024] = "";
    if (gtype && *gtype) {
        const char *tmp = getenv("TMPDIR");
        snprintf(gguf, sizeof gguf, "%s/test_golden_t5-%d-%s.gguf", tmp && *tmp ? tmp : "/tmp", (int)getpid(), gtype);
        blip2_convert_stats cs;
        if (!ok(blip2_convert_opt(path, gguf, gtype, golden_int8_flags(), NULL, NULL, &cs, &err) == 0, "convert t5-tiny to %s%s", gtype,
                    golden_int8_flags() ? " --int8-vision" : "")) {
            diag("%s", err.text);
            json_decref(man);
            return tap_done();
        }
        diag("%s: %d tensors (%d f32, %d f16, %d bf16, %d q8_0, %d q4_0), %llu bytes", gguf, cs.tensors, cs.n_f32,
             cs.n_f16, cs.n_bf16, cs.n_q8_0, cs.n_q4_0, (unsigned long long)cs.bytes);
        snprintf(path, sizeof path, "%s", gguf);
        loose = strcmp(gtype, "f32") != 0; /* t5-tiny is an f32 checkpoint */
    }
    const char *gprec = getenv("GOLDEN_PRECISION"), *gexpect = getenv("GOLDEN_EXPECT_MATH");
    if (gprec && !*gprec) gprec = NULL;
    if (getenv("GOLDEN_MM_ROWS")) b2__mm_min_rows = b2__mm_min_rows_dec = atoi(getenv("GOLDEN_MM_ROWS"));
    /* the same numbers are checked in f32 math unless asked otherwise */
    blip2_load_opts lo = {.precision = gprec ? gprec : loose ? NULL : "f32"};
    int lrc = blip2_model_load(&m, path, &lo, &err);
    if (gguf[0]) golden_gguf_remove(gguf);
    if (ok(lrc == 0, "load %s", path)) {
        diag("t5-tiny: math %s", blip2_model_math(m));
        if (gexpect)
            ok(!strncmp(blip2_model_math(m), gexpect, strlen(gexpect)), "math '%s' starts with '%s'",
               blip2_model_math(m), gexpect);
        if (gprec && strcmp(gprec, "f32")) {
            cos_check = 1;
            if (strncmp(blip2_model_math(m), "f32", 3)) loose = 1;
        }
        if (gguf[0]) {
            /* q8_0 and q4_0 fall back to f16 where rows are not a
             * multiple of 32: every matrix of t5-tiny (widths 36, 44, 70) */
            const char *want = !strcmp(gtype, "q8_0") || !strcmp(gtype, "q4_0") ? "f16" : gtype;
            ok(!strcmp(blip2_model_dtype(m), want), "stored type %s (%s wanted)", blip2_model_dtype(m), gtype);
            ok(!strcmp(b2__wt_name(m->t5->shared_wt), want) && !strcmp(b2__wt_name(m->t5->lm_head_wt), want) &&
               m->t5->lm_head != m->t5->shared, "shared and the untied lm_head are used in place as %s", want);
        }
        ok(!strcmp(blip2_model_family(m), "t5"), "family is t5");
        ok(blip2_bos_id(m) == 0 && blip2_eos_id(m) == 1, "sequences start with decoder_start 0, end with eos 1");
        /* the loader's bucket tables agree with the function */
        int good = 1;
        for (int r = -128; r <= 128; r++)
            good &= m->t5->enc_bucket[r + 128] == b2__t5_bucket(r, 1, 32, 128) &&
                    m->t5->dec_bucket[r + 128] == b2__t5_bucket(r, 0, 32, 128);
        ok(good, "the model's bucket tables");
        if (!only || !strcmp(only, "tokenizer")) check_tokenizer(m);
        size_t i;
        json_t *c;
        if (!only || !strcmp(only, "cases"))
            json_array_foreach(json_object_get(man, "cases"), i, c) {
                if (json_object_get(c, "images")) run_batch(m, c);
                else run_case(m, c);
            }
        blip2_model_free(m);
    } else diag("%s", err.text);
    if (n_same + n_diff) diag("rounded weights: generations identical to the reference: %d of %d", n_same, n_same + n_diff);
    if (!gguf[0] && !gprec && (!only || !strcmp(only, "16bit"))) {
        run_16bit(man, B2_F16, "f16");
        run_16bit(man, B2_BF16, "bf16");
    }
    json_decref(man);
    return tap_done();
}
