/*
 * infer_main.c - blip2-infer, the offline tool: one process, no daemon.
 *
 *   image file(s) ('-': standard input) or --pixel-values
 *   -> blip2_preprocess each (a bad image is reported and left out)
 *   -> blip2_encode_image -> blip2_generate over the good ones
 *   -> one line per input, in input order: the text (trimmed, as blip2ctl
 *      prints it; "IMAGE: text" with several images), or with --json one
 *      object per input, {"text", "ids", "finish", "image"} or
 *      {"image", "error": {"code", "message"}};
 *   --dump-tensors writes every stage with the names the golden files use.
 *
 * Exit status, as blip2ctl's: 0 success, 1 the model could not be loaded
 * or run, 2 bad usage or input (an image that is missing or not an image,
 * a bad pixel-values file, a prompt too long); with several images the
 * status of the first failure.
 */
#include "blip2.h"
#include "matmul_dnnl.h"
#include "safetensors.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_INPUTS 64
#define MAX_STDIN_IMAGE (64u << 20)

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

extern void openblas_set_num_threads(int);

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: blip2-infer --model DIR (--image FILE... | --pixel-values FILE.safetensors)\n"
        "                   [--prompt TEXT]... [options]\n"
        "Caption an image, or answer a question about it, with a BLIP-2 checkpoint.\n\n"
        "  -m, --model DIR            Hugging Face BLIP-2 folder (config.json, *.safetensors, tokenizer)\n"
        "                             or a packed .gguf file (blip2-convert)\n"
        "  -i, --image FILE           image to describe ('-': standard input); repeat for a batch\n"
        "      --pixel-values FILE    take the preprocessed 'pixel_values' (n,3,H,W) from a safetensors file\n"
        "  -p, --prompt TEXT          prompt, e.g. \"Question: how many cats are there? Answer:\";\n"
        "                             once for all images or once per image\n"
        "      --max-new-tokens N     default 20\n"
        "      --min-new-tokens N     default 0\n"
        "      --num-beams K          beam search with K beams (default 1: greedy)\n"
        "      --length-penalty F     beam search length penalty (default 1.0)\n"
        "      --repetition-penalty F default 1.0 (off)\n"
        "      --no-exif-rotate       ignore EXIF orientation (as the reference does)\n"
        "      --max-pixels N         refuse images above N pixels (default 67108864 = 64 Mpx)\n"
        "  -t, --threads N            compute threads (default: all cores)\n"
        "      --json                 print {\"text\", \"ids\", \"finish\", \"image\"} per input\n"
        "      --dump-tensors FILE    write the intermediate tensors to a safetensors file\n"
        "      --precision P          math of the many-row products: f32, bf16, int8 or auto\n"
        "                             (default; env BLIP2_PRECISION): a GGUF of a reduced type\n"
        "                             computes in bf16 where the CPU has native bf16, all else in\n"
        "                             f32; int8: the vision MLP and projection in u8 x s8\n"
        "                             (VNNI; a private int8 copy of them, or the file's, shared,\n"
        "                             from blip2ctl convert --int8-vision, which auto then\n"
        "                             uses too), the rest as auto\n"
        "  -v, --verbose              print the math chosen at load, and oneDNN's products, to stderr\n"
        "  -h, --help                 this help\n"
        "  -V, --version              print the version\n"
        "\n"
        "Exit status: 0 success, 1 the model could not be loaded or run, 2 bad usage or\n"
        "input (missing image, not an image, bad pixel values, prompt too long).\n");
}

static void die(int status, const char *fmt, const char *a)
{
    fprintf(stderr, "blip2-infer: ");
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    exit(status);
}

/* The exit status for a library error: the input's fault (2) or not (1). */
static int status_for(int code)
{
    return code == BLIP2_EIMAGE || code == BLIP2_ETOOBIG || code == BLIP2_EINVAL || code == BLIP2_EIO
               ? EXIT_USAGE : EXIT_FAIL;
}

static const char *code_name(int code)
{
    switch (code) {
    case BLIP2_EIMAGE: return "bad_image";
    case BLIP2_ETOOBIG: return "too_large";
    case BLIP2_EIO: return "unreadable";
    case BLIP2_EINVAL: return "bad_input";
    case BLIP2_ENOMEM: return "out_of_memory";
    default: return "internal";
    }
}

/* A JSON string of s with each byte that is not part of valid UTF-8 as
 * U+FFFD, as blip2ctl writes file names. */
static json_t *json_name(const char *s)
{
    json_t *j = json_string(s);
    if (j) return j;
    size_t n = strlen(s);
    char *o = malloc(3 * n + 1), *w = o;
    if (!o) return json_string("");
    for (size_t i = 0; i < n;) {
        const unsigned char *p = (const unsigned char *)s + i;
        size_t len = p[0] < 0x80 ? 1 : (p[0] & 0xe0) == 0xc0 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3
                   : (p[0] & 0xf8) == 0xf0 ? 4 : 0;
        for (size_t k = 1; len && k < len; k++)
            if (i + k >= n || (p[k] & 0xc0) != 0x80) len = 0;
        if (len) {
            char tmp[5] = {0};
            memcpy(tmp, p, len);
            json_t *t = json_string(tmp);    /* overlong, surrogates: jansson says */
            if (!t) len = 0;
            json_decref(t);
        }
        if (!len) {
            memcpy(w, "\xef\xbf\xbd", 3);
            w += 3;
            i++;
        } else {
            memcpy(w, p, len);
            w += len;
            i += len;
        }
    }
    *w = '\0';
    j = json_string(o);
    free(o);
    return j ? j : json_string("");
}

/* The whole of standard input (at most 64 MiB); NULL with err set. */
static unsigned char *read_stdin(size_t *len, blip2_error *err)
{
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) { snprintf(err->text, sizeof err->text, "out of memory"); err->code = BLIP2_ENOMEM; return NULL; }
        if (n == cap) {
            if (cap > MAX_STDIN_IMAGE) break;
            unsigned char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb;
            cap *= 2;
            continue;
        }
        ssize_t r = read(0, buf + n, cap - n);
        if (r == 0) break;
        if (r < 0) {
            if (errno == EINTR) continue;
            err->code = BLIP2_EIO;
            snprintf(err->text, sizeof err->text, "cannot read the image from standard input: %s", strerror(errno));
            free(buf);
            return NULL;
        }
        n += (size_t)r;
    }
    if (n == 0 || n > MAX_STDIN_IMAGE) {
        err->code = BLIP2_EIMAGE;
        snprintf(err->text, sizeof err->text, n ? "the image on standard input is larger than %u MiB"
                                                 : "the image on standard input is empty", MAX_STDIN_IMAGE >> 20);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* text without surrounding whitespace (OPT's first token starts with a space) */
static const char *trim(const char *s, size_t *n)
{
    size_t l = strlen(s);
    while (l && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) { s++; l--; }
    while (l && (s[l - 1] == ' ' || s[l - 1] == '\t' || s[l - 1] == '\n' || s[l - 1] == '\r')) l--;
    *n = l;
    return s;
}

static void print_error(int json, const char *name, const blip2_error *e)
{
    if (json) {
        json_t *o = json_object();
        if (name) json_object_set_new(o, "image", json_name(name));
        json_object_set_new(o, "error", json_pack("{s:s,s:o}", "code", code_name(e->code), "message",
                                                  json_name(e->text)));
        char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (s) puts(s);
        free(s);
        json_decref(o);
        fflush(stdout);
    }
    fprintf(stderr, "blip2-infer: %s\n", e->text);
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
    enum { O_PX = 256, O_MAXNEW, O_MINNEW, O_BEAMS, O_LP, O_RP, O_NOEXIF, O_JSON, O_DUMP, O_MAXPX, O_PREC };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"image", required_argument, 0, 'i'},
        {"prompt", required_argument, 0, 'p'}, {"pixel-values", required_argument, 0, O_PX},
        {"max-new-tokens", required_argument, 0, O_MAXNEW}, {"min-new-tokens", required_argument, 0, O_MINNEW},
        {"num-beams", required_argument, 0, O_BEAMS}, {"length-penalty", required_argument, 0, O_LP},
        {"repetition-penalty", required_argument, 0, O_RP}, {"no-exif-rotate", no_argument, 0, O_NOEXIF},
        {"json", no_argument, 0, O_JSON}, {"dump-tensors", required_argument, 0, O_DUMP},
        {"threads", required_argument, 0, 't'}, {"max-pixels", required_argument, 0, O_MAXPX},
        {"precision", required_argument, 0, O_PREC}, {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'}, {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *pxfile = NULL, *dump = NULL;
    const char *images[MAX_INPUTS], *prompts[MAX_INPUTS];
    int n_images = 0, n_prompts = 0, json = 0, c, threads = 0, used_stdin = 0, verbose = 0;
    blip2_load_opts lo = {0};
    blip2_gen_params gp;
    blip2_process_prepare(argv);
    blip2_gen_params_default(&gp);
    blip2_image_opts io = {0};
    while ((c = getopt_long(argc, argv, "m:i:p:t:vhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'i':
            if (n_images == MAX_INPUTS) { fprintf(stderr, "blip2-infer: at most %d images\n", MAX_INPUTS); return 2; }
            if (!strcmp(optarg, "-") && used_stdin++) { fprintf(stderr, "blip2-infer: '-' (standard input) can be given only once\n"); return 2; }
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
        case O_MAXPX: io.max_pixels = (uint64_t)parse_int(optarg, "--max-pixels", 1, 1 << 30); break;
        case 't': threads = parse_int(optarg, "--threads", 1, 1024); break;
        case O_JSON: json = 1; break;
        case O_DUMP: dump = optarg; break;
        case O_PREC:
            if (strcmp(optarg, "f32") && strcmp(optarg, "bf16") && strcmp(optarg, "int8") &&
                strcmp(optarg, "auto")) {
                fprintf(stderr, "blip2-infer: --precision: '%s' is not f32, bf16, int8 or auto\n", optarg);
                return 2;
            }
            lo.precision = optarg;
            break;
        case 'v': verbose = 1; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("blip2-infer %s\n", PACKAGE_VERSION); return 0;
        default: fprintf(stderr, "Try 'blip2-infer --help'.\n"); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "blip2-infer: unexpected argument '%s' (give images with --image FILE)\n", argv[optind]);
        return 2;
    }
    if (!model_dir) { fprintf(stderr, "blip2-infer: --model is required (try --help)\n"); return 2; }
    if (!n_images && !pxfile) { fprintf(stderr, "blip2-infer: give --image FILE or --pixel-values FILE\n"); return 2; }
    if (n_images && pxfile) { fprintf(stderr, "blip2-infer: --image and --pixel-values exclude each other\n"); return 2; }
    if (n_prompts > 1 && n_images && n_prompts != n_images) {
        fprintf(stderr, "blip2-infer: %d prompts for %d images: give one prompt, or one per image\n", n_prompts, n_images);
        return 2;
    }
    if (threads) openblas_set_num_threads(threads);

    blip2_error err = {0};
    blip2_model *m = NULL;
    if (blip2_model_load(&m, model_dir, &lo, &err) < 0) die(EXIT_FAIL, "%s", err.text);
    if (verbose) {
        fprintf(stderr, "blip2-infer: %s weights; math %s\n", blip2_model_dtype(m), blip2_model_math(m));
        fprintf(stderr, "blip2-infer: precision %s, matrix backend %s, decode kernels %s\n", blip2_model_precision(m),
                blip2_model_backend(m), blip2_model_kernels(m));
        if (*blip2_model_kernels_log(m)) fprintf(stderr, "blip2-infer: decode kernels: %s\n", blip2_model_kernels_log(m));
    }

    const size_t npx = blip2_pixel_values_len(m);
    int n = n_images, status = EXIT_OK;
    float *px = NULL;
    b2_st_file *pf = NULL;
    /* which inputs decoded (ok[i]), and their rows in px: the good ones, packed */
    int ok[MAX_INPUTS], row_of[MAX_INPUTS], nrows = 0;
    blip2_error ierr[MAX_INPUTS];
    if (pxfile) {
        if (b2__st_open(&pf, pxfile, &err) < 0) die(EXIT_USAGE, "%s", err.text);
        const b2_tensor *t = b2__st_find(pf, "pixel_values");
        const int S = blip2_image_size(m);
        if (!t) die(EXIT_USAGE, "%s: no tensor 'pixel_values'", pxfile);
        if (t->ndim != 4 || t->shape[0] < 1 || t->shape[0] > MAX_INPUTS || t->shape[1] != 3 ||
            t->shape[2] != S || t->shape[3] != S) {
            fprintf(stderr, "blip2-infer: %s: 'pixel_values' must have shape (n, 3, %d, %d)\n", pxfile, S, S);
            exit(EXIT_USAGE);
        }
        if (t->dtype != B2_F32 && t->dtype != B2_F16 && t->dtype != B2_BF16 && t->dtype != B2_F64)
            die(EXIT_USAGE, "%s: 'pixel_values' must be a float tensor", pxfile);
        n = (int)t->shape[0];
        px = malloc(sizeof(float) * npx * (size_t)n);
        if (!px) die(EXIT_FAIL, "%s", "out of memory");
        b2__to_f32(t, px);
        b2__st_close(pf);
        for (int i = 0; i < n; i++) { ok[i] = 1; row_of[i] = nrows++; }
        if (n_prompts > 1 && n_prompts != n) {
            fprintf(stderr, "blip2-infer: %d prompts for %d images: give one prompt, or one per image\n", n_prompts, n);
            exit(EXIT_USAGE);
        }
    } else {
        px = malloc(sizeof(float) * npx * (size_t)n);
        if (!px) die(EXIT_FAIL, "%s", "out of memory");
        for (int i = 0; i < n; i++) {
            int rc;
            memset(&ierr[i], 0, sizeof ierr[i]);
            if (!strcmp(images[i], "-")) {
                size_t len;
                unsigned char *b = read_stdin(&len, &ierr[i]);
                rc = b ? blip2_preprocess(m, b, len, &io, px + npx * nrows, &ierr[i]) : -1;
                free(b);
            } else {
                rc = blip2_preprocess_file(m, images[i], &io, px + npx * nrows, &ierr[i]);
            }
            ok[i] = rc == 0;
            if (ok[i]) row_of[i] = nrows++;
            else if (status == EXIT_OK) status = status_for(ierr[i].code);
        }
    }
    const size_t nq = blip2_query_embeds_len(m);
    const int T = blip2_vision_tokens(m), Dv = blip2_vision_hidden(m), Q = blip2_num_query_tokens(m);
    const int Dq = blip2_qformer_hidden(m), V = blip2_vocab_size(m);
    float *q = malloc(sizeof(float) * nq * (size_t)(nrows ? nrows : 1));
    blip2_stages st = {0};
    if (dump) {
        st.vision_last_hidden_state = malloc(sizeof(float) * (size_t)n * T * Dv);
        st.vision_pooler_output = malloc(sizeof(float) * (size_t)n * Dv);
        st.qformer_last_hidden_state = malloc(sizeof(float) * (size_t)n * Q * Dq);
    }
    if (!q) die(EXIT_FAIL, "%s", "out of memory");
    if (nrows && blip2_encode_image(m, px, nrows, q, dump ? &st : NULL, &err) < 0) die(EXIT_FAIL, "%s", err.text);

    blip2_request rq[MAX_INPUTS];
    for (int i = 0; i < n; i++)
        if (ok[i])
            rq[row_of[i]] = (blip2_request){.query_embeds = q + nq * row_of[i],
                                            .prompt = n_prompts == 0 ? NULL : prompts[n_prompts == 1 ? 0 : i]};
    if (dump && nrows) {
        float *logits = malloc(sizeof(float) * (size_t)nrows * V);
        if (!logits) die(EXIT_FAIL, "%s", "out of memory");
        for (int i = 0; i < nrows; i++)
            if (blip2_forward_logits(m, &rq[i], logits + (size_t)i * V, NULL, &err) < 0) die(status_for(err.code), "%s", err.text);
        const int S = blip2_image_size(m), Dt = blip2_text_hidden(m);
        b2_tensor ts[] = {
            {"pixel_values", B2_F32, 4, {nrows, 3, S, S}, px, sizeof(float) * npx * nrows},
            {"vision_last_hidden_state", B2_F32, 3, {nrows, T, Dv}, st.vision_last_hidden_state, sizeof(float) * (size_t)nrows * T * Dv},
            {"vision_pooler_output", B2_F32, 2, {nrows, Dv}, st.vision_pooler_output, sizeof(float) * (size_t)nrows * Dv},
            {"qformer_last_hidden_state", B2_F32, 3, {nrows, Q, Dq}, st.qformer_last_hidden_state, sizeof(float) * (size_t)nrows * Q * Dq},
            {"language_model_inputs", B2_F32, 3, {nrows, Q, Dt}, q, sizeof(float) * nq * nrows},
            {"logits_last", B2_F32, 2, {nrows, V}, logits, sizeof(float) * (size_t)nrows * V},
        };
        if (b2__st_write(dump, ts, 6, &err) < 0) die(EXIT_FAIL, "%s", err.text);
        free(logits);
    }
    blip2_result res = {0};
    if (nrows && blip2_generate(m, rq, nrows, &gp, stream_cb, NULL, &res, &err) < 0) {
        /* the whole batch failed (a prompt too long, say): every good input gets the error */
        for (int i = 0; i < n; i++)
            if (ok[i]) { ok[i] = 0; ierr[i] = err; }
        if (status == EXIT_OK) status = status_for(err.code);
        nrows = 0;
    }
    for (int i = 0; i < n; i++) {
        const char *name = pxfile ? NULL : images[i];
        if (!ok[i]) {
            print_error(json, name, &ierr[i]);
            continue;
        }
        const blip2_seq_result *sq = &res.seqs[row_of[i]];
        size_t tl;
        const char *text = trim(sq->text, &tl);
        if (json) {
            json_t *o = json_object(), *ids = json_array();
            for (size_t j = 0; j < sq->n_ids; j++) json_array_append_new(ids, json_integer(sq->ids[j]));
            json_t *tj = json_stringn(text, tl);
            json_object_set_new(o, "text", tj ? tj : json_string(""));
            json_object_set_new(o, "ids", ids);
            json_object_set_new(o, "finish", json_string(sq->finish == BLIP2_FINISH_EOS ? "eos" : "length"));
            if (name) json_object_set_new(o, "image", json_name(name));
            char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
            puts(s);
            free(s);
            json_decref(o);
        } else {
            if (name && n > 1) printf("%s: ", name);
            printf("%.*s\n", (int)tl, text);
        }
    }
    if (nrows) blip2_result_free(&res);
    free(q);
    free(px);
    free(st.vision_last_hidden_state);
    free(st.vision_pooler_output);
    free(st.qformer_last_hidden_state);
    if (verbose) {
        char rep[8192];
        if (b2__dnnl_report(rep, sizeof rep) > 0) fprintf(stderr, "blip2-infer: products on the math backend:\n%s", rep);
    }
    blip2_model_free(m);
    if (fflush(stdout) != 0 && status == EXIT_OK) status = EXIT_FAIL;
    return status;
}
