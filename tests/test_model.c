/*
 * test_model.c - engine behaviour beyond the golden numbers: config parsing
 * of the real checkpoints' configs (against transformers' effective values),
 * unsupported families, generation parameter validation, the per-token
 * callback and cancellation, and two models used from two threads at once
 * (no global state).
 */
#include "blip2.h"
#include "config.h"
#include "safetensors.h"
#include "tap.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *gdir;

/* A T5 config.json: the least a T5 text_config needs, then the members in
 * rest (a string literal). */
#define T5_CONFIG(rest) \
    "{\"text_config\": {\"model_type\": \"t5\", \"bos_token_id\": 1, \"decoder_start_token_id\": 0, " rest "}}"

static int geti(json_t *o, const char *a, const char *b)
{
    return (int)json_integer_value(json_object_get(json_object_get(o, a), b));
}

/* The int fields of b2_config that the real configs are checked on, with
 * their keys in transformers' effective configs of the OPT checkpoint
 * (blip2-opt-2.7b) and of the T5 one (blip2-flan-t5-xl); NULL: that
 * checkpoint is not checked on it. */
#define F(x) offsetof(b2_config, x)
static const struct {
    size_t off;
    const char *sec, *opt, *t5;
} real_fields[] = {
    {F(v_hidden), "vision_config", "hidden_size", "hidden_size"},
    {F(v_inter), "vision_config", "intermediate_size", NULL},
    {F(v_layers), "vision_config", "num_hidden_layers", "num_hidden_layers"},
    {F(v_heads), "vision_config", "num_attention_heads", NULL},
    {F(image_size), "vision_config", "image_size", NULL},
    {F(patch_size), "vision_config", "patch_size", NULL},
    {F(q_hidden), "qformer_config", "hidden_size", "hidden_size"},
    {F(q_inter), "qformer_config", "intermediate_size", NULL},
    {F(q_layers), "qformer_config", "num_hidden_layers", "num_hidden_layers"},
    {F(q_heads), "qformer_config", "num_attention_heads", NULL},
    {F(q_cross_freq), "qformer_config", "cross_attention_frequency", NULL},
    {F(q_enc_hidden), "qformer_config", "encoder_hidden_size", "encoder_hidden_size"},
    {F(t_hidden), "text_config", "hidden_size", "d_model"},
    {F(t_dkv), "text_config", NULL, "d_kv"},
    {F(t_ffn), "text_config", "ffn_dim", "d_ff"},
    {F(t_layers), "text_config", "num_hidden_layers", "num_layers"},
    {F(t_dec_layers), "text_config", NULL, "num_decoder_layers"},
    {F(t_heads), "text_config", "num_attention_heads", "num_heads"},
    {F(t_vocab), "text_config", "vocab_size", "vocab_size"},
    {F(t_buckets), "text_config", NULL, "relative_attention_num_buckets"},
    {F(t_max_dist), "text_config", NULL, "relative_attention_max_distance"},
    {F(t_max_pos), "text_config", "max_position_embeddings", "n_positions"},
    {F(t_word_proj), "text_config", "word_embed_proj_dim", NULL},
    {F(bos), "text_config", "bos_token_id", "bos_token_id"},
    {F(eos), "text_config", "eos_token_id", "eos_token_id"},
    {F(pad), "text_config", "pad_token_id", "pad_token_id"},
    {F(dec_start), "text_config", NULL, "decoder_start_token_id"},
};
#undef F

/* Parses gdir/real/NAME.config.json into *c, checks the fields of
 * real_fields the checkpoint has (t5: the T5 column) against the effective
 * config transformers 4.37.2 derives from it, and returns that (caller
 * decrefs), or NULL when either file fails (a failed check). */
static json_t *check_real(const char *name, const char *label, int t5, b2_config *c)
{
    char p[1024], pe[1024];
    snprintf(p, sizeof p, "%s/real/%s.config.json", gdir, name);
    snprintf(pe, sizeof pe, "%s/real/%s.config.effective-4.37.2.json", gdir, name);
    blip2_error err = {0};
    if (!ok(b2__config_load(c, p, &err) == 0, "parse the real %s config", name)) {
        diag("%s", err.text);
        return NULL;
    }
    json_t *e = json_load_file(pe, 0, NULL);
    if (!ok(e != NULL, "load the effective %s config", label)) return NULL;
    for (size_t i = 0; i < sizeof real_fields / sizeof real_fields[0]; i++) {
        const char *key = t5 ? real_fields[i].t5 : real_fields[i].opt;
        if (!key) continue;
        const int got = *(const int *)((const char *)c + real_fields[i].off);
        ok(got == geti(e, real_fields[i].sec, key), "%s %s.%s = %d", label, real_fields[i].sec, key, got);
    }
    return e;
}

static void test_real_config(void)
{
    b2_config c;
    json_t *e = check_real("blip2-opt-2.7b", "2.7b", 0, &c);
    if (!e) return;
    ok(c.num_query == (int)json_integer_value(json_object_get(e, "num_query_tokens")), "num_query_tokens");
    ok(c.v_eps == (float)json_number_value(json_object_get(json_object_get(e, "vision_config"), "layer_norm_eps")), "vision eps");
    ok(c.q_eps == (float)json_number_value(json_object_get(json_object_get(e, "qformer_config"), "layer_norm_eps")), "qformer eps");
    ok(c.v_qkv_bias == 1 && c.t_ln_before == 1 && c.t_act == B2_ACT_RELU && c.v_act == B2_ACT_GELU, "flags");
    json_decref(e);
}

/* The real Salesforce/blip2-flan-t5-xl config parses to the values
 * transformers 4.37.2 derives from it (effective config), including the
 * gated exact GELU that dense_act_fn "gelu" selects. */
static void test_real_t5_config(void)
{
    b2_config c;
    json_t *e = check_real("blip2-flan-t5-xl", "flan-t5-xl", 1, &c);
    if (!e) return;
    json_t *t = json_object_get(e, "text_config");
    ok(c.family == B2_FAMILY_T5 && c.num_query == 32, "flan-t5-xl: family t5, 32 queries");
    ok(c.t_eps == (float)json_number_value(json_object_get(t, "layer_norm_epsilon")), "flan-t5-xl: layer_norm_epsilon");
    ok(c.t_gated == json_is_true(json_object_get(t, "is_gated_act")) && c.t_gated, "flan-t5-xl: gated feed-forward");
    ok(c.t_act == B2_ACT_GELU && !strcmp(json_string_value(json_object_get(t, "dense_act_fn")), "gelu"),
       "flan-t5-xl: exact GELU (dense_act_fn gelu)");
    ok(c.t_tie == json_is_true(json_object_get(t, "tie_word_embeddings")) && !c.t_tie, "flan-t5-xl: untied lm_head");
    ok(c.t_word_proj == c.t_hidden, "flan-t5-xl: query embeddings are d_model wide");
    json_decref(e);
    /* without dense_act_fn, "gated-gelu" means T5's tanh GELU */
    char dir[] = "/tmp/b2t5cfg.XXXXXX", p[1024];
    blip2_error err = {0};
    if (!mkdtemp(dir)) return;
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *fp = fopen(p, "w");
    fputs(T5_CONFIG("\"feed_forward_proj\": \"gated-gelu\""), fp);
    fclose(fp);
    ok(b2__config_load(&c, p, &err) == 0 && c.t_act == B2_ACT_GELU_TANH && c.t_gated && c.t_tie &&
       c.t_dec_layers == 6 && c.t_hidden == 512, "T5Config defaults; gated-gelu alone is gelu_new");
    remove(p);
    rmdir(dir);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_bad_configs(void)
{
    char dir[] = "/tmp/b2cfg.XXXXXX", p[256];
    if (!mkdtemp(dir)) return;
    snprintf(p, sizeof p, "%s/config.json", dir);
    struct { const char *json; int code; const char *needle; } cases[] = {
        {"{\"model_type\": \"blip-2\", \"text_config\": {\"model_type\": \"t5\"}}", BLIP2_EFORMAT, "decoder_start_token_id"},
        {T5_CONFIG("\"feed_forward_proj\": \"gated-gelu-x\""), BLIP2_EFORMAT, "gated-ACT"},
        {T5_CONFIG("\"d_kv\": 0"), BLIP2_EFORMAT, "d_kv must be positive"},
        {"{\"text_config\": {\"model_type\": \"t5\", \"bos_token_id\": 1, \"decoder_start_token_id\": 40000}}",
         BLIP2_EFORMAT, "outside the vocabulary"},
        {"{\"model_type\": \"llava\"}", BLIP2_EUNSUPPORTED, "not a BLIP-2"},
        {"{\"text_config\": {\"model_type\": \"llama\"}}", BLIP2_EUNSUPPORTED, "llama"},
        {"{\"vision_config\": {\"hidden_size\": 100, \"num_attention_heads\": 3}}", BLIP2_EFORMAT, "divisible"},
        {"{\"vision_config\": {\"patch_size\": 15}}", BLIP2_EFORMAT, "multiple of patch_size"},
        {"{\"num_query_tokens\": 0}", BLIP2_EFORMAT, "num_query_tokens must be positive"},
        {"{\"num_query_tokens\": -3}", BLIP2_EFORMAT, "non-negative"},
        {"{\"text_config\": {\"eos_token_id\": 60000}}", BLIP2_EFORMAT, "outside the vocabulary"},
        {"{\"text_config\": {\"word_embed_proj_dim\": 512}}", BLIP2_EUNSUPPORTED, "word_embed_proj_dim"},
        {"{\"vision_config\": {\"hidden_act\": \"mish\"}}", BLIP2_EUNSUPPORTED, "activation"},
        {"{\"vision_config\": {\"qkv_bias\": 1}}", BLIP2_EFORMAT, "true or false"},
        {"[1, 2]", BLIP2_EFORMAT, "not a JSON object"},
        {"{\"a\": 1, \"a\": 2}", BLIP2_EFORMAT, "config.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(p, cases[i].json);
        b2_config c;
        blip2_error err = {0};
        int rc = b2__config_load(&c, p, &err);
        if (!ok(rc == cases[i].code && strstr(err.text, cases[i].needle), "config %s refused", cases[i].json))
            diag("rc %d: %s", rc, err.text);
    }
    remove(p);
    rmdir(dir);
}


/* A bf16 copy of opt-tiny (weights rounded to nearest even) must load and
 * stay close to the f32 model: the real checkpoints ship in f16 and bf16. */
static void test_bf16(const blip2_model *ref)
{
    char dir[] = "/tmp/b2bf16.XXXXXX", p[1024], cmd[2048];
    if (!mkdtemp(dir)) return;
    snprintf(cmd, sizeof cmd, "cp %s/opt-tiny/*.json %s/opt-tiny/merges.txt %s/", gdir, gdir, dir);
    if (system(cmd) != 0) { ok(0, "copy the tiny model's files"); return; }
    snprintf(p, sizeof p, "%s/opt-tiny/model.safetensors", gdir);
    b2_st_file *f = NULL;
    blip2_error err = {0};
    if (!ok(b2__st_open(&f, p, &err) == 0, "open the f32 weights")) return;
    int n = b2__st_count(f);
    b2_tensor *ts = calloc((size_t)n, sizeof *ts);
    for (int i = 0; i < n; i++) {
        const b2_tensor *t = b2__st_at(f, i);
        int64_t ne = b2__tensor_numel(t);
        float *v = malloc(sizeof(float) * (size_t)ne);
        uint16_t *h = malloc(sizeof(uint16_t) * (size_t)(ne ? ne : 1));
        b2__to_f32(t, v);
        for (int64_t k = 0; k < ne; k++) {
            uint32_t b;
            memcpy(&b, &v[k], 4);
            h[k] = (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
        }
        free(v);
        ts[i] = *t;
        ts[i].dtype = B2_BF16;
        ts[i].data = h;
        ts[i].nbytes = sizeof(uint16_t) * (size_t)ne;
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    ok(b2__st_write(p, ts, n, &err) == 0, "write a bf16 checkpoint");
    for (int i = 0; i < n; i++) free((void *)ts[i].data);
    free(ts);
    b2__st_close(f);
    blip2_model *m = NULL;
    if (ok(blip2_model_load(&m, dir, NULL, &err) == 0, "load the bf16 checkpoint") &&
        ok(!strcmp(blip2_model_dtype(m), "bf16") && !strcmp(blip2_model_dtype(ref), "f32"), "dtype reported as bf16 (reference f32)")) {
        snprintf(p, sizeof p, "%s/images/chelsea.png", gdir);
        const size_t npx = blip2_pixel_values_len(m), nq = blip2_query_embeds_len(m);
        float *px = malloc(sizeof(float) * npx), *qa = malloc(sizeof(float) * nq), *qb = malloc(sizeof(float) * nq);
        blip2_preprocess_file(m, p, NULL, px, &err);
        int rc = blip2_encode_image(m, px, 1, qb, NULL, &err) | blip2_encode_image(ref, px, 1, qa, NULL, &err);
        double d = 0, mag = 0;
        for (size_t k = 0; k < nq; k++) {
            double e = fabs((double)qa[k] - qb[k]);
            d = e > d ? e : d;
            mag = fabs(qa[k]) > mag ? fabs(qa[k]) : mag;
        }
        ok(rc == 0 && d < 0.05 * mag, "bf16 projection within 5%% of the f32 one's range (max abs %.3g of %.3g)", d, mag);
        blip2_result res;
        blip2_request rq = {.query_embeds = qb};
        ok(blip2_generate(m, &rq, 1, NULL, NULL, NULL, &res, &err) == 0 && res.seqs[0].n_ids == 21, "bf16 model generates");
        blip2_result_free(&res);
        free(px); free(qa); free(qb);
    }
    blip2_model_free(m);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) diag("cleanup failed");
}

typedef struct cbstate {
    int32_t ids[64];
    int n, stop_after;
} cbstate;

static int record_cb(void *user, int req, int32_t tok)
{
    cbstate *s = user;
    (void)req;
    if (s->n < 64) s->ids[s->n++] = tok;
    return s->stop_after && s->n >= s->stop_after;
}

static void test_generate_api(const blip2_model *m, const float *q)
{
    blip2_gen_params p;
    blip2_result res;
    blip2_error err = {0};
    blip2_request rq = {.query_embeds = q};
    struct { const char *what; blip2_gen_params p; int n; } bad[] = {
        {"max_new_tokens 0", {.max_new_tokens = 0, .num_beams = 1, .repetition_penalty = 1, .length_penalty = 1}, 1},
        {"min > max", {.max_new_tokens = 3, .min_new_tokens = 4, .num_beams = 1, .repetition_penalty = 1, .length_penalty = 1}, 1},
        {"num_beams 0", {.max_new_tokens = 3, .num_beams = 0, .repetition_penalty = 1, .length_penalty = 1}, 1},
        {"num_beams 1000", {.max_new_tokens = 3, .num_beams = 1000, .repetition_penalty = 1, .length_penalty = 1}, 1},
        {"repetition_penalty 0", {.max_new_tokens = 3, .num_beams = 1, .repetition_penalty = 0, .length_penalty = 1}, 1},
        {"batch of 0", {.max_new_tokens = 3, .num_beams = 1, .repetition_penalty = 1, .length_penalty = 1}, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = blip2_generate(m, &rq, bad[i].n, &bad[i].p, NULL, NULL, &res, &err);
        ok(rc == BLIP2_EINVAL && res.seqs == NULL && err.text[0], "generate refuses %s (%s)", bad[i].what, err.text);
    }
    int32_t bad_ids[2] = {2, 999999};
    blip2_request rq_bad = {.query_embeds = q, .prompt_ids = bad_ids, .n_prompt_ids = 2};
    blip2_gen_params_default(&p);
    ok(blip2_generate(m, &rq_bad, 1, &p, NULL, NULL, &res, &err) == BLIP2_EINVAL, "an id outside the vocabulary is refused");

    /* the callback sees every token in order */
    cbstate s = {0};
    blip2_gen_params_default(&p);
    p.max_new_tokens = 10;
    if (ok(blip2_generate(m, &rq, 1, &p, record_cb, &s, &res, &err) == 0, "generate with a callback")) {
        ok(s.n == (int)res.seqs[0].n_ids - 1 && !memcmp(s.ids, res.seqs[0].ids + 1, sizeof(int32_t) * (size_t)s.n),
           "callback tokens == result ids after bos");
        blip2_result_free(&res);
    }
    /* cancel after 3 tokens: greedy and beam */
    cbstate c = {.stop_after = 3};
    ok(blip2_generate(m, &rq, 1, &p, record_cb, &c, &res, &err) == BLIP2_ECANCELED && c.n == 3 && res.seqs == NULL,
       "callback cancels greedy generation");
    cbstate cb = {.stop_after = 2};
    p.num_beams = 3;
    ok(blip2_generate(m, &rq, 1, &p, record_cb, &cb, &res, &err) == BLIP2_ECANCELED && res.seqs == NULL,
       "callback cancels beam search");
}

typedef struct job {
    const blip2_model *m;
    const float *q;
    int32_t ids[32];
    size_t n;
    int rc;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    blip2_gen_params p;
    blip2_gen_params_default(&p);
    blip2_request rq = {.query_embeds = j->q, .prompt = "Question: how many cats are there? Answer:"};
    blip2_result res;
    blip2_error err;
    j->rc = blip2_generate(j->m, &rq, 1, &p, NULL, NULL, &res, &err);
    if (j->rc == 0) {
        j->n = res.seqs[0].n_ids;
        memcpy(j->ids, res.seqs[0].ids, sizeof(int32_t) * j->n);
        blip2_result_free(&res);
    }
    return NULL;
}

static int encode_file(const blip2_model *m, const char *img, float **q)
{
    char p[1024];
    blip2_error err;
    snprintf(p, sizeof p, "%s/images/%s", gdir, img);
    float *px = malloc(sizeof(float) * blip2_pixel_values_len(m));
    *q = malloc(sizeof(float) * blip2_query_embeds_len(m));
    int rc = blip2_preprocess_file(m, p, NULL, px, &err);
    if (rc == 0) rc = blip2_encode_image(m, px, 1, *q, NULL, &err);
    free(px);
    return rc;
}

int main(void)
{
    gdir = getenv("GOLDEN_DIR");
    if (!gdir) gdir = "tests/golden";
    test_real_config();
    test_real_t5_config();
    test_bad_configs();

    char p[1024];
    blip2_model *a = NULL, *b = NULL;
    blip2_error err = {0};
    snprintf(p, sizeof p, "%s/opt-tiny", gdir);
    if (!ok(blip2_model_load(&a, p, NULL, &err) == 0, "load opt-tiny")) { diag("%s", err.text); return tap_done(); }
    snprintf(p, sizeof p, "%s/opt-tiny-sharded", gdir);
    if (!ok(blip2_model_load(&b, p, NULL, &err) == 0, "load opt-tiny-sharded alongside")) { diag("%s", err.text); return tap_done(); }
    ok(blip2_model_load(&(blip2_model *){NULL}, "/nonexistent", NULL, &err) == BLIP2_EIO, "missing folder: %s", err.text);
    ok(blip2_model_load(&(blip2_model *){NULL}, "/etc/hostname", NULL, &err) == BLIP2_EUNSUPPORTED, "a file, not a folder: %s", err.text);

    float *qa = NULL, *qb = NULL;
    ok(encode_file(a, "chelsea.png", &qa) == 0 && encode_file(b, "rocket.jpg", &qb) == 0, "encode images");
    test_generate_api(a, qa);
    test_bf16(a);

    /* two models, four threads at once, results equal to serial runs */
    job serial[2] = {{a, qa, {0}, 0, 0}, {b, qb, {0}, 0, 0}};
    run_job(&serial[0]);
    run_job(&serial[1]);
    job par[4] = {{a, qa, {0}, 0, 0}, {b, qb, {0}, 0, 0}, {a, qa, {0}, 0, 0}, {b, qb, {0}, 0, 0}};
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, run_job, &par[i]);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        ok(par[i].rc == 0 && par[i].n == serial[i % 2].n && !memcmp(par[i].ids, serial[i % 2].ids, sizeof(int32_t) * par[i].n),
           "thread %d (model %s) == serial", i, i % 2 ? "B" : "A");
    free(qa);
    free(qb);
    blip2_model_free(a);
    blip2_model_free(b);
    blip2_model_free(NULL);
    return tap_done();
}
