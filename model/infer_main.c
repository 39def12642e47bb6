/*
 * infer_main.c - blip2-infer, the offline tool: one process, no daemon.
 *
 *   image file(s) or --pixel-values -> blip2_encode_image -> blip2_generate
 *   -> text (or one JSON object per input with --json); --dump-tensors
 *   writes every stage with the names the golden files use.
 *
 * Exit status: 0 success, 1 bad input or runtime failure, 2 usage error.
 */
#include "blip2.h"
#include "safetensors.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUTS 64

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: blip2-infer --model DIR (--image FILE... | --pixel-values FILE.safetensors)\n"
        "                   [--prompt TEXT]... [options]\n"
        "Caption an image, or answer a question about it, with a BLIP-2 checkpoint.\n\n"
        "  -m, --model DIR            Hugging Face BLIP-2 folder (config.json, *.safetensors, tokenizer)\n"
        "                             or a packed .gguf file (blip2ctl convert)\n"
        "  -i, --image FILE           image to describe; repeat for a batch\n"
        "      --pixel-values FILE    take the preprocessed 'pixel_values' (n,3,H,W) from a safetensors file\n"
        "  -p, --prompt TEXT          prompt, e.g. \"Question: how many cats are there? Answer:\";\n"
        "                             once for all images or once per image\n"
        "      --max-new-tokens N     default 20\n"
        "      --min-new-tokens N     default 0\n"
        "      --num-beams K          beam search with K beams (default 1: greedy)\n"
        "      --length-penalty F     beam search length penalty (default 1.0)\n"
        "      --repetition-penalty F default 1.0 (off)\n"
        "      --no-exif-rotate       ignore EXIF orientation (as the reference does)\n"
        "      --json                 print {\"text\": ..., \"ids\": [...]} per input\n"
        "      --dump-tensors FILE    write the intermediate tensors to a safetensors file\n"
        "  -h, --help                 this help\n"
        "      --version              print the version\n");
}

static void die(const char *fmt, const char *a)
{
    fprintf(stderr, "blip2-infer: ");
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    exit(1);
}

static int parse_int(const char *s, const char *opt, int lo, int hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "blip2-infer: %s: '%s' is not an integer in %d..%d\n", opt, s, lo, hi);
        exit(2);
    }
    return (int)v;
}

static float parse_float(const char *s, const char *opt)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s) {
        fprintf(stderr, "blip2-infer: %s: '%s' is not a number\n", opt, s);
        exit(2);
    }
    return v;
}

static int stream_cb(void *user, int req, int32_t tok)
{
    (void)user; (void)req; (void)tok;
    return 0;
}

int main(int argc, char **argv)
{
    enum { O_PX = 256, O_MAXNEW, O_MINNEW, O_BEAMS, O_LP, O_RP, O_NOEXIF, O_JSON, O_DUMP, O_VERSION };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"image", required_argument, 0, 'i'},
        {"prompt", required_argument, 0, 'p'}, {"pixel-values", required_argument, 0, O_PX},
        {"max-new-tokens", required_argument, 0, O_MAXNEW}, {"min-new-tokens", required_argument, 0, O_MINNEW},
        {"num-beams", required_argument, 0, O_BEAMS}, {"length-penalty", required_argument, 0, O_LP},
        {"repetition-penalty", required_argument, 0, O_RP}, {"no-exif-rotate", no_argument, 0, O_NOEXIF},
        {"json", no_argument, 0, O_JSON}, {"dump-tensors", required_argument, 0, O_DUMP},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, O_VERSION}, {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *pxfile = NULL, *dump = NULL;
    const char *images[MAX_INPUTS], *prompts[MAX_INPUTS];
    int n_images = 0, n_prompts = 0, json = 0, c;
    blip2_gen_params gp;
    blip2_gen_params_default(&gp);
    blip2_image_opts io = {0};
    while ((c = getopt_long(argc, argv, "m:i:p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'i':
            if (n_images == MAX_INPUTS) { fprintf(stderr, "blip2-infer: at most %d images\n", MAX_INPUTS); return 2; }
            images[n_images++] = optarg;
            break;
        case 'p':
            if (n_prompts == MAX_INPUTS) { fprintf(stderr, "blip2-infer: at most %d prompts\n", MAX_INPUTS); return 2; }
            prompts[n_prompts++] = optarg;
            break;
        case O_PX: pxfile = optarg; break;
        case O_MAXNEW: gp.max_new_tokens = parse_int(optarg, "--max-new-tokens", 1, 1 << 20); break;
        case O_MINNEW: gp.min_new_tokens = parse_int(optarg, "--min-new-tokens", 0, 1 << 20); break;
        case O_BEAMS: gp.num_beams = parse_int(optarg, "--num-beams", 1, 64); break;
        case O_LP: gp.length_penalty = parse_float(optarg, "--length-penalty"); break;
        case O_RP: gp.repetition_penalty = parse_float(optarg, "--repetition-penalty"); break;
        case O_NOEXIF: io.no_exif_rotate = 1; break;
        case O_JSON: json = 1; break;
        case O_DUMP: dump = optarg; break;
        case 'h': usage(stdout); return 0;
        case O_VERSION: printf("blip2-infer %s\n", PACKAGE_VERSION); return 0;
        default: fprintf(stderr, "Try 'blip2-infer --help'.\n"); return 2;
        }
    }
    if (optind < argc) { fprintf(stderr, "blip2-infer: unexpected argument '%s'\n", argv[optind]); return 2; }
    if (!model_dir) { fprintf(stderr, "blip2-infer: --model is required (try --help)\n"); return 2; }
    if (!n_images && !pxfile) { fprintf(stderr, "blip2-infer: give --image FILE or --pixel-values FILE\n"); return 2; }
    if (n_images && pxfile) { fprintf(stderr, "blip2-infer: --image and --pixel-values exclude each other\n"); return 2; }

    blip2_error err = {0};
    blip2_model *m = NULL;
    if (blip2_model_load(&m, model_dir, NULL, &err) < 0) die("%s", err.text);

    const size_t npx = blip2_pixel_values_len(m);
    int n = n_images;
    float *px = NULL;
    b2_st_file *pf = NULL;
    if (pxfile) {
        if (b2__st_open(&pf, pxfile, &err) < 0) die("%s", err.text);
        const b2_tensor *t = b2__st_find(pf, "pixel_values");
        const int S = blip2_image_size(m);
        if (!t) die("%s: no tensor 'pixel_values'", pxfile);
        if (t->ndim != 4 || t->shape[0] < 1 || t->shape[0] > MAX_INPUTS || t->shape[1] != 3 ||
            t->shape[2] != S || t->shape[3] != S) {
            fprintf(stderr, "blip2-infer: %s: 'pixel_values' must have shape (n, 3, %d, %d)\n", pxfile, S, S);
            exit(1);
        }
        if (t->dtype != B2_F32 && t->dtype != B2_F16 && t->dtype != B2_BF16 && t->dtype != B2_F64)
            die("%s: 'pixel_values' must be a float tensor", pxfile);
        n = (int)t->shape[0];
        px = malloc(sizeof(float) * npx * (size_t)n);
        if (!px) die("%s", "out of memory");
        b2__to_f32(t, px);
        b2__st_close(pf);
    } else {
        px = malloc(sizeof(float) * npx * (size_t)n);
        if (!px) die("%s", "out of memory");
        for (int i = 0; i < n; i++)
            if (blip2_preprocess_file(m, images[i], &io, px + npx * i, &err) < 0) die("%s", err.text);
    }
    if (n_prompts > 1 && n_prompts != n) {
        fprintf(stderr, "blip2-infer: %d prompts for %d images: give one prompt, or one per image\n", n_prompts, n);
        exit(2);
    }
    const size_t nq = blip2_query_embeds_len(m);
    const int T = blip2_vision_tokens(m), Dv = blip2_vision_hidden(m), Q = blip2_num_query_tokens(m);
    const int Dq = blip2_qformer_hidden(m), V = blip2_vocab_size(m);
    float *q = malloc(sizeof(float) * nq * (size_t)n);
    blip2_stages st = {0};
    if (dump) {
        st.vision_last_hidden_state = malloc(sizeof(float) * (size_t)n * T * Dv);
        st.vision_pooler_output = malloc(sizeof(float) * (size_t)n * Dv);
        st.qformer_last_hidden_state = malloc(sizeof(float) * (size_t)n * Q * Dq);
    }
    if (!q) die("%s", "out of memory");
    if (blip2_encode_image(m, px, n, q, dump ? &st : NULL, &err) < 0) die("%s", err.text);

    blip2_request rq[MAX_INPUTS];
    for (int i = 0; i < n; i++)
        rq[i] = (blip2_request){.query_embeds = q + nq * i,
                                .prompt = n_prompts == 0 ? NULL : prompts[n_prompts == 1 ? 0 : i]};
    if (dump) {
        float *logits = malloc(sizeof(float) * (size_t)n * V);
        if (!logits) die("%s", "out of memory");
        for (int i = 0; i < n; i++)
            if (blip2_forward_logits(m, &rq[i], logits + (size_t)i * V, NULL, &err) < 0) die("%s", err.text);
        const int S = blip2_image_size(m), Dt = blip2_text_hidden(m);
        b2_tensor ts[] = {
            {"pixel_values", B2_F32, 4, {n, 3, S, S}, px, sizeof(float) * npx * n},
            {"vision_last_hidden_state", B2_F32, 3, {n, T, Dv}, st.vision_last_hidden_state, sizeof(float) * (size_t)n * T * Dv},
            {"vision_pooler_output", B2_F32, 2, {n, Dv}, st.vision_pooler_output, sizeof(float) * (size_t)n * Dv},
            {"qformer_last_hidden_state", B2_F32, 3, {n, Q, Dq}, st.qformer_last_hidden_state, sizeof(float) * (size_t)n * Q * Dq},
            {"language_model_inputs", B2_F32, 3, {n, Q, Dt}, q, sizeof(float) * nq * n},
            {"logits_last", B2_F32, 2, {n, V}, logits, sizeof(float) * (size_t)n * V},
        };
        if (b2__st_write(dump, ts, 6, &err) < 0) die("%s", err.text);
        free(logits);
    }
    blip2_result res;
    if (blip2_generate(m, rq, n, &gp, stream_cb, NULL, &res, &err) < 0) die("%s", err.text);
    for (int i = 0; i < res.n; i++) {
        if (json) {
            json_t *o = json_object(), *ids = json_array();
            for (size_t j = 0; j < res.seqs[i].n_ids; j++) json_array_append_new(ids, json_integer(res.seqs[i].ids[j]));
            json_object_set_new(o, "text", json_string(res.seqs[i].text));
            json_object_set_new(o, "ids", ids);
            json_object_set_new(o, "finish", json_string(res.seqs[i].finish == BLIP2_FINISH_EOS ? "eos" : "length"));
            char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
            puts(s);
            free(s);
            json_decref(o);
        } else {
            puts(res.seqs[i].text);
        }
    }
    blip2_result_free(&res);
    free(q);
    free(px);
    free(st.vision_last_hidden_state);
    free(st.vision_pooler_output);
    free(st.qformer_last_hidden_state);
    blip2_model_free(m);
    return 0;
}
