/*
 * test_generate.c - the step-wise generation API on the golden tiny model:
 * sessions that join a running batch give the same ids as alone, sampling
 * is reproducible from its seed (and top_k=1 is greedy), num_return_sequences
 * for beams and samples, stop strings, and the streaming detokeniser (its
 * pieces are valid UTF-8 and concatenate to the final text).
 */
#include "blip2.h"
#include "kernels.h"
#include "tap.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *gdir;
static blip2_model *m;

static float *encode(const char *img)
{
    char p[1024];
    blip2_error err;
    snprintf(p, sizeof p, "%s/images/%s", gdir, img);
    float *px = malloc(sizeof(float) * blip2_pixel_values_len(m));
    float *q = malloc(sizeof(float) * blip2_query_embeds_len(m));
    if (blip2_preprocess_file(m, p, NULL, px, &err) < 0 || blip2_encode_image(m, px, 1, q, NULL, &err) < 0) {
        diag("%s", err.text);
        free(q);
        q = NULL;
    }
    free(px);
    return q;
}

static int same_ids(const blip2_seq_result *a, const blip2_seq_result *b)
{
    return a->n_ids == b->n_ids && !memcmp(a->ids, b->ids, sizeof(int32_t) * a->n_ids);
}

static int valid_utf8(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        int k = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
        if (k < 0 || i + (size_t)k >= n + (k == 0)) return 0;
        for (int j = 1; j <= k; j++) if (i + (size_t)j >= n || ((unsigned char)s[i + j] & 0xc0) != 0x80) return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

/* The decoder's products must give every row the same bits whatever else
 * shares the call (1 row alone, a batch of decode rows, a long prefill):
 * that is what makes batched ids equal unbatched ones, beyond the golden
 * models' margins.  Shapes large enough to take every kernel path. */
static void test_row_invariance(void)
{
    const int mm = 640, k = 520, maxn = 150;
    float *w = malloc(sizeof(float) * (size_t)mm * k), *x = malloc(sizeof(float) * (size_t)maxn * k);
    float *y1 = malloc(sizeof(float) * mm), *yn = malloc(sizeof(float) * (size_t)maxn * mm);
    uint32_t r = 12345;
    for (size_t i = 0; i < (size_t)mm * k; i++) { r = r * 1664525u + 1013904223u; w[i] = (float)((int)(r >> 9) - (1 << 22)) / (1 << 22); }
    for (size_t i = 0; i < (size_t)maxn * k; i++) { r = r * 1664525u + 1013904223u; x[i] = (float)((int)(r >> 9) - (1 << 22)) / (1 << 22); }
    const int ns[] = {2, 3, 6, 7, 40, 64, 65, 150};
    int same = 1;
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
        const int n = ns[t];
        b2__matmul_rows(yn, mm, x, k, w, k, n, mm, k);
        for (int row = 0; row < n && same; row += n > 10 ? 9 : 1) {
            b2__matmul_rows(y1, mm, x + (size_t)row * k, k, w, k, 1, mm, k);
            same = !memcmp(y1, yn + (size_t)row * mm, sizeof(float) * mm);
            if (!same) diag("row %d of %d differs from the row alone", row, n);
        }
    }
    ok(same, "decoder products give a row the same bits alone or in a batch of 2..150 rows");
    free(w); free(x); free(y1); free(yn);
}

int main(void)
{
    test_row_invariance();
    gdir = getenv("GOLDEN_DIR");
    if (!gdir) gdir = "tests/golden";
    char p[1024];
    blip2_error err = {0};
    snprintf(p, sizeof p, "%s/opt-tiny", gdir);
    if (!ok(blip2_model_load(&m, p, NULL, &err) == 0, "load")) { diag("%s", err.text); return tap_done(); }
    const char *imgs[3] = {"chelsea.png", "rocket.jpg", "astronaut.png"};
    const char *prompts[3] = {NULL, "Question: how many cats are there? Answer:",
                              "  D\xc3\xa9" "cris l'image\t: \xe7\x8c\xab\xef\xbc\x9f \xf0\x9f\x90\xb1 na\xc3\xafve   caf\xc3\xa9\xe2\x80\xa6\n Answer:"};
    float *q[3];
    for (int i = 0; i < 3; i++) q[i] = encode(imgs[i]);
    blip2_gen_params gp;
    blip2_gen_params_default(&gp);
    gp.max_new_tokens = 12;

    /* reference: each request alone */
    blip2_result alone[3];
    for (int i = 0; i < 3; i++) {
        blip2_request rq = {.query_embeds = q[i], .prompt = prompts[i]};
        ok(blip2_generate(m, &rq, 1, &gp, NULL, NULL, &alone[i], &err) == 0, "alone %d", i);
    }
    /* sessions joining a running batch at steps 0, 3 and 7 */
    blip2_ctx *ctx;
    blip2_ctx_new(m, &ctx, &err);
    blip2_session *ss[3] = {0};
    int n = 0, steps = 0;
    for (;;) {
        if ((steps == 0 || steps == 3 || steps == 7) && n < 3) {
            blip2_request rq = {.query_embeds = q[n], .prompt = prompts[n]};
            ok(blip2_session_new(m, &rq, &gp, NULL, NULL, &ss[n], &err) == 0, "session %d joins at step %d", n, steps);
            n++;
        }
        int live = n < 3;
        for (int i = 0; i < n; i++) live |= !blip2_session_done(ss[i]);
        if (!live) break;
        if (blip2_step(ctx, ss, n, &err) < 0) { ok(0, "step: %s", err.text); break; }
        steps++;
    }
    for (int i = 0; i < 3; i++) {
        blip2_result r;
        if (ok(blip2_session_result(ss[i], &r, &err) == 0, "result %d", i)) {
            ok(same_ids(&r.seqs[0], &alone[i].seqs[0]), "session %d batched with late joiners == alone", i);
            blip2_result_free(&r);
        }
        blip2_session_free(ss[i]);
    }
    /* the same with prefills in chunks of 3 rows while others decode: the
     * joiners' prefills (8 query rows + prompt) span several steps, and
     * every session still gets the ids it gets alone; a 3-beam session
     * joining late too */
    {
        blip2_ctx *cc;
        blip2_ctx_new(m, &cc, &err);
        blip2_ctx_set_prefill_chunk(cc, 3);
        blip2_gen_params bp3;
        blip2_gen_params_default(&bp3);
        bp3.num_beams = 3;
        bp3.max_new_tokens = 12;
        blip2_result beam_alone;
        blip2_request rb = {.query_embeds = q[0], .prompt = prompts[0]}; /* session 3 below */
        ok(blip2_generate(m, &rb, 1, &bp3, NULL, NULL, &beam_alone, &err) == 0, "beam 3 alone");
        blip2_session *cs[4] = {0};
        int cn = 0, st = 0, chunk_steps = 0, first_whole = 0;
        for (;;) {
            if ((st == 0 || st == 3 || st == 5 || st == 7) && cn < 4) {
                blip2_request rq = {.query_embeds = q[cn % 3], .prompt = prompts[cn % 3]};
                blip2_session_new(m, &rq, cn == 3 ? &bp3 : &gp, NULL, NULL, &cs[cn], &err);
                cn++;
            }
            int live = cn < 4;
            for (int i = 0; i < cn; i++) live |= !blip2_session_done(cs[i]);
            if (!live) break;
            if (blip2_step(cc, cs, cn, &err) < 0) { ok(0, "chunked step: %s", err.text); break; }
            if (st == 0) first_whole = !blip2_session_prefilling(cs[0]);
            for (int i = 1; i < cn; i++) chunk_steps += blip2_session_prefilling(cs[i]);
            st++;
        }
        ok(first_whole, "alone in its step, a prefill runs whole even with a chunk size");
        ok(chunk_steps >= 6, "late joiners' prefills took several steps (%d step-sessions still prefilling)", chunk_steps);
        for (int i = 0; i < 4; i++) {
            blip2_result r;
            if (blip2_session_result(cs[i], &r, &err) == 0) {
                ok(same_ids(&r.seqs[0], i == 3 ? &beam_alone.seqs[0] : &alone[i].seqs[0]),
                   "chunked prefill: session %d (%s) has the ids it has alone", i, i == 3 ? "beam 3" : "greedy");
                blip2_result_free(&r);
            } else {
                ok(0, "chunked prefill: result %d: %s", i, err.text);
            }
            blip2_session_free(cs[i]);
        }
        blip2_result_free(&beam_alone);
        blip2_ctx_free(cc);
    }
    /* canceling one session leaves its neighbour untouched */
    {
        blip2_request r0 = {.query_embeds = q[0], .prompt = prompts[0]}, r1 = {.query_embeds = q[1], .prompt = prompts[1]};
        blip2_session *s2[2];
        blip2_session_new(m, &r0, &gp, NULL, NULL, &s2[0], &err);
        blip2_session_new(m, &r1, &gp, NULL, NULL, &s2[1], &err);
        for (int k = 0; k < 2; k++) blip2_step(ctx, s2, 2, &err);
        blip2_session_cancel(s2[0]);
        ok(blip2_session_done(s2[0]) && blip2_session_rows(s2[0]) == 0, "a canceled session is done and feeds no rows");
        while (!blip2_session_done(s2[1])) blip2_step(ctx, s2, 2, &err);
        blip2_result r;
        blip2_session_result(s2[0], &r, &err);
        ok(r.n == 1 && r.seqs[0].finish == BLIP2_FINISH_CANCELED, "canceled session reports CANCELED");
        blip2_result_free(&r);
        blip2_session_result(s2[1], &r, &err);
        ok(same_ids(&r.seqs[0], &alone[1].seqs[0]), "its neighbour finishes with the same ids as alone");
        blip2_result_free(&r);
        blip2_session_free(s2[0]);
        blip2_session_free(s2[1]);
    }
    blip2_ctx_free(ctx);

    /* sampling */
    blip2_request rq0 = {.query_embeds = q[0]};
    blip2_gen_params sp = gp;
    sp.do_sample = 1;
    sp.seed = 42;
    blip2_result a, b, c;
    ok(blip2_generate(m, &rq0, 1, &sp, NULL, NULL, &a, &err) == 0, "sample seed 42");
    ok(blip2_generate(m, &rq0, 1, &sp, NULL, NULL, &b, &err) == 0, "sample seed 42 again");
    ok(same_ids(&a.seqs[0], &b.seqs[0]), "same seed, same ids");
    sp.seed = 43;
    ok(blip2_generate(m, &rq0, 1, &sp, NULL, NULL, &c, &err) == 0, "sample seed 43");
    ok(!same_ids(&a.seqs[0], &c.seqs[0]), "another seed, other ids");
    blip2_result_free(&a); blip2_result_free(&b); blip2_result_free(&c);
    sp.top_k = 1;
    ok(blip2_generate(m, &rq0, 1, &sp, NULL, NULL, &a, &err) == 0 && same_ids(&a.seqs[0], &alone[0].seqs[0]),
       "top_k=1 sampling == greedy");
    blip2_result_free(&a);
    sp.top_k = 0;
    sp.top_p = 1e-6f;
    ok(blip2_generate(m, &rq0, 1, &sp, NULL, NULL, &a, &err) == 0 && same_ids(&a.seqs[0], &alone[0].seqs[0]),
       "tiny top_p sampling == greedy");
    blip2_result_free(&a);
    sp.top_p = 0.9f;
    sp.temperature = 0.7f;
    sp.num_return_sequences = 3;
    if (ok(blip2_generate(m, &rq0, 1, &sp, NULL, NULL, &a, &err) == 0 && a.n == 3, "3 samples")) {
        ok(!same_ids(&a.seqs[0], &a.seqs[1]) || !same_ids(&a.seqs[1], &a.seqs[2]), "samples differ");
        blip2_result_free(&a);
    }
    /* beams: two returned sequences, the first is the best */
    blip2_gen_params bp;
    blip2_gen_params_default(&bp);
    bp.num_beams = 3;
    bp.max_new_tokens = 12;
    blip2_result b1, b2;
    ok(blip2_generate(m, &rq0, 1, &bp, NULL, NULL, &b1, &err) == 0, "beam 3");
    bp.num_return_sequences = 2;
    if (ok(blip2_generate(m, &rq0, 1, &bp, NULL, NULL, &b2, &err) == 0 && b2.n == 2, "beam 3, 2 sequences")) {
        ok(same_ids(&b1.seqs[0], &b2.seqs[0]) && !same_ids(&b2.seqs[0], &b2.seqs[1]), "first is the best beam, second differs");
        blip2_result_free(&b2);
    }
    blip2_result_free(&b1);

    /* stop strings: the chelsea caption is " TERProf feed incomplete ..." */
    const char *stops[] = {"zzz-never", " feed"};
    blip2_gen_params tp = gp;
    tp.stop = stops;
    tp.n_stop = 2;
    if (ok(blip2_generate(m, &rq0, 1, &tp, NULL, NULL, &a, &err) == 0, "generate with stop strings")) {
        ok(a.seqs[0].finish == BLIP2_FINISH_STOP && !strcmp(a.seqs[0].text, " TERProf"),
           "stops at ' feed', text cut before it ('%s')", a.seqs[0].text);
        ok(a.seqs[0].n_ids == 4 && !memcmp(a.seqs[0].ids, alone[0].seqs[0].ids, 4 * sizeof(int32_t)),
           "ids run through the token that completed the stop string");
        blip2_result_free(&a);
    }

    /* streaming pieces over every golden greedy output (incl. invalid UTF-8 ones) */
    snprintf(p, sizeof p, "%s/manifest.json", gdir);
    json_t *man = json_load_file(p, 0, NULL);
    size_t ci;
    json_t *cs;
    int cases = 0, good = 0;
    json_array_foreach(json_object_get(man, "cases"), ci, cs) {
        json_t *g = json_object_get(json_object_get(cs, "generate"), "greedy");
        json_t *ids = json_object_get(g, "ids");
        if (!json_is_array(ids) || json_is_array(json_array_get(ids, 0))) continue;
        int32_t v[64];
        size_t nv = json_array_size(ids);
        for (size_t j = 0; j < nv && j < 64; j++) v[j] = (int32_t)json_integer_value(json_array_get(ids, j));
        blip2_stream st = {0};
        char acc[4096] = "";
        size_t al = 0;
        int utf8 = 1;
        for (size_t j = 2; j <= nv + 1; j++) {
            const char *piece;
            size_t len;
            blip2_stream_piece(m, &st, v, j <= nv ? j : nv, j > nv, NULL, 0, &piece, &len, &err);
            utf8 &= valid_utf8(piece, len);
            if (al + len < sizeof acc) { memcpy(acc + al, piece, len); al += len; acc[al] = 0; }
        }
        cases++;
        good += utf8 && !strcmp(acc, json_string_value(json_object_get(g, "text")));
        blip2_stream_free(&st);
    }
    ok(cases > 30 && good == cases, "stream pieces are valid UTF-8 and join to the text (%d/%d)", good, cases);
    /* with a stop string, nothing from it on is streamed, even partially */
    {
        const int32_t *v = alone[0].seqs[0].ids; /* " TERProf feed incomplete ..." */
        const char *stop[] = {" feed in"};
        blip2_stream st = {0};
        char acc[1024] = "";
        size_t al = 0;
        int leaked = 0;
        for (size_t j = 2; j <= alone[0].seqs[0].n_ids; j++) {
            const char *piece;
            size_t len;
            blip2_stream_piece(m, &st, v, j, j == alone[0].seqs[0].n_ids, stop, 1, &piece, &len, &err);
            memcpy(acc + al, piece, len);
            al += len;
            acc[al] = 0;
            leaked |= strstr(acc, " fe") != NULL;
        }
        ok(!leaked && !strcmp(acc, " TERProf"), "a stop string's beginning is held back and never streamed ('%s')", acc);
        blip2_stream_free(&st);
    }
    json_decref(man);

    for (int i = 0; i < 3; i++) { blip2_result_free(&alone[i]); free(q[i]); }
    blip2_model_free(m);
    return tap_done();
}
