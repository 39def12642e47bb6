/*
 * blip2ctl.c - the command line client of blip2d (docs/blip2ctl.md).
 *
 *   argv --getopt--> options + generation parameters (checked locally with
 *        blip2c_params_validate before anything else) --> subcommand:
 *
 *   caption IMAGE...  every image opened first (a missing file is a usage
 *                     error before any work), then up to --jobs requests in
 *                     flight on one connection through the non-blocking API
 *                     (poll + blip2c_process); results are held back and
 *                     printed in input order; `busy` replies are retried
 *   ask IMAGE Q       one blocking blip2c_generate, "Question: Q Answer:"
 *   chat IMAGE        a question per stdin line; the prompt carries the
 *                     history ("Question: q Answer: a. ... Question: q Answer:"),
 *                     the oldest turns dropped when it no longer fits
 *   status, ping      blocking calls, printed as text or JSON
 *   caption with --jsonl, --recursive, --files-from, --resume or -o:
 *                     a collection, run by ctl_batch.c (JSON Lines, resumable)
 *   features IMAGE    blocking blip2c_features_get; the tensors as a summary,
 *                     JSON (--json) or a safetensors file (--out FILE)
 *
 * Files go to the daemon as descriptors (SCM_RIGHTS), `-` (stdin) inline.
 * Output: plain lines, tokens streamed when stdout is a terminal, or JSON
 * Lines (jansson).  The exit status says what kind of failure happened.
 */
#include "b2cli.h"
#include "b2json.h"
#include "blip2client.h"
#include "ctl_batch.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <editline/readline.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROG "blip2ctl"

enum {
    EXIT_OK = 0,
    EXIT_SERVER = 1,   /* the daemon refused or failed the request */
    EXIT_USAGE = 2,    /* bad command line or bad input (image, parameters) */
    EXIT_CONNECT = 3,  /* cannot connect to the daemon */
    EXIT_LOST = 4      /* connection lost mid-way */
};

#define MAX_STDIN_IMAGE (64u << 20)
#define BUSY_RETRIES 20
#define MAX_GLOBS 32

typedef struct ctl {
    const char *socket;
    const char *prompt;
    blip2c_params params;
    b2cli_gen gen;      /* the generation options given, applied to params */
    bool no_stream, json, verbose;
    unsigned jobs;
    bool jobs_set;
    /* collections (ctl_batch.c) */
    bool jsonl, recursive, hidden, null_sep, no_progress;
    const char *files_from, *resume, *output;
    int timeout_ms;
    blip2c_conn *conn;
    /* features */
    const char *text, *out, *out_dir;
    const char *outputs[8];
    size_t n_outputs;
    const char *type;   /* convert --type */
    bool int8_vision;   /* convert --int8-vision */
    const char *include[MAX_GLOBS], *exclude[MAX_GLOBS];
    size_t n_include, n_exclude;
    int argc;           /* the command line, for the resume hint */
    char **argv;
} ctl;

/* ---- messages and exit codes ------------------------------------------------ */

static int exit_for(int code)
{
    switch (code) {
    case BLIP2C_OK: return EXIT_OK;
    case BLIP2C_EINVAL:
    case BLIP2C_EBAD_IMAGE:
    case BLIP2C_ETOO_LARGE:
    case BLIP2C_EOUT_OF_RANGE:
    case BLIP2C_EBAD_UTF8:
    case BLIP2C_EBAD_FD:
    case BLIP2C_EUNSUPPORTED: return EXIT_USAGE;
    case BLIP2C_ECONNECT: return EXIT_CONNECT;
    case BLIP2C_ECONNLOST: return EXIT_LOST;
    default: return EXIT_SERVER;
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Offset of the first byte of s that is not valid UTF-8 (ctl_path_key
 * would replace it), or SIZE_MAX when all of it is. */
static size_t utf8_bad_at(const char *s)
{
    char *k = ctl_path_key(s);
    size_t i = 0;
    if (k && strcmp(k, s) == 0) i = SIZE_MAX;
    else if (k)
        while (s[i] && s[i] == k[i]) i++;
    free(k);
    return i;
}

/* ---- help ----------------------------------------------------------------------- */

static void print_help(void)
{
    fputs(
"Usage: " PROG " [OPTION]... caption IMAGE...\n"
"       " PROG " [OPTION]... caption --jsonl|-r|--files-from FILE [IMAGE|DIR]...\n"
"       " PROG " [OPTION]... ask IMAGE QUESTION...\n"
"       " PROG " [OPTION]... chat IMAGE\n"
"       " PROG " [OPTION]... status\n"
"       " PROG " [OPTION]... ping\n"
"       " PROG " [OPTION]... features [IMAGE] [--text TEXT] [--output NAME]...\n"
"       " PROG " [OPTION]... features -r|--files-from FILE|--out-dir DIR [IMAGE|DIR]...\n"
"       " PROG " convert SRC OUT.gguf [--type TYPE] [--int8-vision]\n"
"       " PROG " enqueue --queue URL [OPTION]... [-r] [--files-from FILE] [IMAGE|DIR]...\n"
"       " PROG " results --queue URL [-o FILE] [--follow]\n"
"       " PROG " queue-status --queue URL [--json]\n"
"Caption images or answer questions about them with blip2d, the BLIP-2 daemon.\n"
"IMAGE '-' reads the image from standard input.\n"
"\n"
"Commands:\n"
"  caption IMAGE...   one caption per image, in input order (several images run\n"
"                     concurrently; with more than one, lines start 'IMAGE: ')\n"
"  ask IMAGE QUESTION the answer (prompt \"Question: QUESTION Answer:\")\n"
"  chat IMAGE         questions from stdin, one per line, answered with the\n"
"                     conversation so far as context (line editing and\n"
"                     history on a terminal); /help, /image FILE, /reset,\n"
"                     /quit or end of input (Ctrl-D) stops\n"
"  status             the daemon's model, queue, cache and limits\n"
"  ping               round-trip time to the daemon\n"
"  features [IMAGE]   Blip2Model features of IMAGE and/or --text: tensor names\n"
"                     and shapes, all values with --json, or a safetensors\n"
"                     file with --out FILE; with several IMAGEs or the\n"
"                     collection options: one JSON line per image with its\n"
"                     pooled outputs (image_pooler_output, qformer_pooler_output)\n"
"  convert SRC OUT.gguf  pack the Hugging Face folder SRC into one GGUF file\n"
"                     (no daemon needed)\n"
"  enqueue            one job per image on a Redis Stream that blip2d --queue\n"
"                     workers do (resumable: a file already enqueued is skipped)\n"
"  results            the queue's results, one JSON line per job\n"
"  queue-status       jobs waiting, in flight per worker, done, dead letters, rate\n"
"\n"
"Generation (defaults in brackets; meanings as in Hugging Face generate()):\n"
"      --max-new-tokens N        tokens to generate at most [20], 1..2048\n"
"      --min-new-tokens N        no end-of-sequence before N tokens [0]\n"
"      --num-beams N             beam search with N beams [1 = greedy], 1..16\n"
"      --length-penalty X        beam search length penalty [1.0], -10..10\n"
"      --repetition-penalty X    [1.0 = off], (0..10]\n"
"      --do-sample               sample instead of greedy / beam search\n"
"      --temperature X           sampling temperature [1.0], 0..100; 0 = greedy\n"
"      --top-k N                 sample among the N likeliest tokens [50], 0 = all\n"
"      --top-p X                 nucleus sampling [1.0 = off], (0..1]\n"
"      --seed N                  sampling seed [the daemon picks and reports one]\n"
"      --num-return-sequences N  sequences per image [1] (sampling or beams)\n"
"      --stop TEXT               stop when TEXT is generated; repeatable, up to 8\n"
"  -p, --prompt TEXT             prompt for caption (e.g. \"a photo of\")\n"
"\n"
"Features:\n"
"      --text TEXT               also the language model's logits on TEXT alone\n"
"      --output NAME             only these outputs (repeatable): image_last_hidden_state,\n"
"                                image_pooler_output, qformer_last_hidden_state,\n"
"                                qformer_pooler_output, language_model_inputs, logits,\n"
"                                logits_last [all image outputs; logits with --text]\n"
"      --out FILE                write the tensors to FILE (safetensors)\n"
"      --out-dir DIR             collection: every output of each image to\n"
"                                DIR/<sha256 of its path>.safetensors [all five\n"
"                                image outputs], named in the line's \"file\"\n"
"Conversion:\n"
"      --type TYPE               convert: f32, f16, bf16, q8_0 or q4_0 [f16]\n"
"      --int8-vision             convert: also store the vision encoder's projection\n"
"                                and MLP quantised for int8 math, used in place and\n"
"                                shared by every daemon instead of a private copy\n"
"                                each (~720 MiB for blip2-opt-2.7b)\n"
"\n"
"Output and connection:\n"
"      --json                    JSON Lines: one object per result (and per error)\n"
"      --no-stream               print whole lines, never token by token\n"
"  -j, --jobs N                  caption: requests in flight at once [4; for a\n"
"                                collection twice the daemon's max_batch]\n"
"      --timeout SECONDS         give up on a request after SECONDS [no limit]\n"
"  -s, --socket PATH             the daemon's socket [$BLIP2_SOCKET, else\n"
"                                $XDG_RUNTIME_DIR/blip2.sock, then\n"
"                                /run/blip2/blip2.sock]\n"
"  -v, --verbose                 say which socket is used; timings on stderr\n"
"  -h, --help                    this help\n"
"  -V, --version                 version\n"
"\n"
"Collections (caption, features; any of these makes a resumable JSON Lines run):\n"
"      --jsonl                   one JSON line per file: {\"path\", \"text\", \"ids\",\n"
"                                \"finish\", \"ms\", \"cached\"} or {\"path\", \"error\"}\n"
"  -r, --recursive               caption the files in directory arguments, and\n"
"                                below (hidden names and symlinked directories\n"
"                                skipped)\n"
"      --hidden                  with --recursive: take names starting with '.'\n"
"      --files-from FILE         more paths from FILE, one per line ('-': stdin)\n"
"  -0, --null                    --files-from entries end with NUL, not newline\n"
"  -o, --output-file FILE        append the lines to FILE instead of stdout\n"
"      --resume FILE             skip the paths FILE (an earlier output) has done\n"
"      --no-progress             no progress bar on a terminal's stderr\n"
"      --include GLOB            only files whose name matches GLOB (repeatable;\n"
"                                a GLOB with '/' matches the whole path; case\n"
"                                is ignored)\n"
"      --exclude GLOB            leave out files whose name matches GLOB\n"
"                                (repeatable; as --include)\n"
"Files that are not images (by their first bytes) and the -o/--resume file\n"
"are skipped and counted in the summary.\n"
"\n"
"Queue (enqueue, results, queue-status; their options follow the command word,\n"
"with the generation options and -p, -r, --hidden, --files-from, -0, -o, --json):\n"
"      --queue URL               redis://[user:password@]HOST[:PORT][/STREAM] or\n"
"                                unix:PATH[/STREAM] [$BLIP2_QUEUE]\n"
"      --op OP                   enqueue: caption, ask or features [caption]\n"
"      --question TEXT           enqueue --op ask: the question\n"
"      --output NAME             enqueue --op features: an output (repeatable)\n"
"      --by-path                 enqueue the files' paths, not their bytes\n"
"      --max-image-bytes N       enqueue: larger files only by path [16777216]\n"
"      --follow                  results: keep waiting for new ones\n"
"\n"
"Exit status: 0 success, 1 the daemon failed the request, 2 bad usage or input\n"
"(missing image file, bad parameter, not an image), 3 cannot connect to the\n"
"daemon, 4 connection lost.  Collections: 1 when any file failed, 130\n"
"interrupted (Ctrl-C; 143 SIGTERM; chat too).  With --json every failure is\n"
"also an {\"error\": {\"code\", \"message\"}} object on stdout.\n"
"\n"
"Start the daemon with: blip2d --model DIR\n", stdout);
}

/* ---- argument parsing -------------------------------------------------------------- */

enum {
    O_NOSTREAM = B2CLI_O_NEXT, O_JSON, O_TIMEOUT,
    O_JSONL, O_HIDDEN, O_FILES_FROM, O_RESUME, O_NO_PROGRESS,
    O_TEXT, O_OUTPUT, O_OUT, O_OUT_DIR, O_TYPE, O_INT8_VISION, O_INCLUDE, O_EXCLUDE
};

static const struct option long_options[] = {
    B2CLI_GEN_LONG_OPTIONS,
    { "prompt", required_argument, NULL, 'p' },
    { "no-stream", no_argument, NULL, O_NOSTREAM },
    { "json", no_argument, NULL, O_JSON },
    { "jobs", required_argument, NULL, 'j' },
    { "timeout", required_argument, NULL, O_TIMEOUT },
    { "jsonl", no_argument, NULL, O_JSONL },
    { "recursive", no_argument, NULL, 'r' },
    { "hidden", no_argument, NULL, O_HIDDEN },
    { "files-from", required_argument, NULL, O_FILES_FROM },
    { "null", no_argument, NULL, '0' },
    { "output-file", required_argument, NULL, 'o' },
    { "resume", required_argument, NULL, O_RESUME },
    { "no-progress", no_argument, NULL, O_NO_PROGRESS },
    { "text", required_argument, NULL, O_TEXT },
    { "output", required_argument, NULL, O_OUTPUT },
    { "out", required_argument, NULL, O_OUT },
    { "out-dir", required_argument, NULL, O_OUT_DIR },
    { "type", required_argument, NULL, O_TYPE },
    { "int8-vision", no_argument, NULL, O_INT8_VISION },
    { "include", required_argument, NULL, O_INCLUDE },
    { "exclude", required_argument, NULL, O_EXCLUDE },
    { "socket", required_argument, NULL, 's' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
};

static void parse_args(ctl *x, int argc, char **argv)
{
    blip2c_params *p = &x->params;
    int ch;
    while ((ch = getopt_long(argc, argv, "p:j:s:vhVr0o:", long_options, NULL)) != -1) {
        if (b2cli_gen_option(&x->gen, ch, optarg)) continue;
        switch (ch) {
        case 'p': x->prompt = optarg; break;
        case O_NOSTREAM: x->no_stream = true; break;
        case O_JSON: x->json = true; break;
        case 'j': {
            uint64_t j = b2cli_uint("--jobs", optarg, 256);
            if (j == 0) b2cli_usage_error("--jobs: must be at least 1");
            x->jobs = (unsigned)j;
            x->jobs_set = true;
            break;
        }
        case O_TIMEOUT: {
            double t = b2cli_real("--timeout", optarg);
            if (t <= 0 || t > 86400) b2cli_usage_error("--timeout: '%s' is not in (0, 86400] seconds", optarg);
            x->timeout_ms = (int)(t * 1000 + 0.999);
            break;
        }
        case O_JSONL: x->jsonl = true; break;
        case 'r': x->recursive = true; break;
        case O_HIDDEN: x->hidden = true; break;
        case O_FILES_FROM: x->files_from = optarg; break;
        case '0': x->null_sep = true; break;
        case 'o': x->output = optarg; break;
        case O_RESUME: x->resume = optarg; break;
        case O_NO_PROGRESS: x->no_progress = true; break;
        case O_TEXT: x->text = optarg; break;
        case O_OUTPUT:
            if (x->n_outputs == 8) b2cli_usage_error("--output: at most 7 outputs");
            x->outputs[x->n_outputs++] = optarg;
            break;
        case O_OUT: x->out = optarg; break;
        case O_OUT_DIR: x->out_dir = optarg; break;
        case 's': x->socket = optarg; break;
        case O_TYPE: x->type = optarg; break;
        case O_INT8_VISION: x->int8_vision = true; break;
        case O_INCLUDE:
        case O_EXCLUDE: {
            const char **l = ch == O_INCLUDE ? x->include : x->exclude;
            size_t *nl = ch == O_INCLUDE ? &x->n_include : &x->n_exclude;
            if (*nl == MAX_GLOBS) b2cli_usage_error("--%s: at most %d patterns", ch == O_INCLUDE ? "include" : "exclude", MAX_GLOBS);
            l[(*nl)++] = optarg;
            break;
        }
        case 'v': x->verbose = true; break;
        case 'h': print_help(); exit(EXIT_OK);
        case 'V':
            printf(PROG " %s (libblip2client %s, protocol %u)\n", BLIP2C_VERSION,
                   blip2c_version(), BLIP2C_PROTOCOL_VERSION);
            exit(EXIT_OK);
        default:  /* getopt has said what is wrong */
            fputs("Try '" PROG " --help' for more information.\n", stderr);
            exit(EXIT_USAGE);
        }
    }
    B2CLI_GEN_APPLY(p, &x->gen);
    blip2c_error err;
    if (blip2c_params_validate(p, &err) < 0) {
        /* "num_beams: 0 is out of range" -> name the flag */
        char flag[160] = "";
        if (err.field[0]) {
            snprintf(flag, sizeof flag, " (--%s)", err.field);
            for (char *q = flag; *q; q++)
                if (*q == '_') *q = '-';
            char *br = strchr(flag, '[');  /* "stop[2]" -> "--stop" */
            if (br) strcpy(br, ")");
        }
        b2cli_usage_error("bad generation parameter%s: %s", flag, err.message);
    }
}

/* ---- images ------------------------------------------------------------------------- */

typedef struct image {
    const char *name;   /* as given */
    uint8_t *data;      /* stdin: the bytes (owned); files: NULL */
    size_t len;
} image;

/* Reads the image on standard input into im; 0, or -1 with err set (bad
 * input: empty, too large, unreadable). */
static int read_stdin_image(image *im, blip2c_error *err)
{
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    memset(err, 0, sizeof *err);
    err->code = BLIP2C_EINVAL;
    if (!buf) { b2cli_warn("out of memory"); exit(EXIT_SERVER); }
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_STDIN_IMAGE + 1) break;
            cap *= 2;
            if (cap > MAX_STDIN_IMAGE + 1) cap = MAX_STDIN_IMAGE + 1;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) { free(buf); b2cli_warn("out of memory"); exit(EXIT_SERVER); }
            buf = nb;
        }
        ssize_t n = read(0, buf + len, cap - len);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            snprintf(err->message, sizeof err->message,
                     "cannot read the image from standard input: %s", strerror(e));
            return -1;
        }
        len += (size_t)n;
    }
    if (len > MAX_STDIN_IMAGE || len == 0) {
        free(buf);
        if (len) snprintf(err->message, sizeof err->message,
                          "the image on standard input is larger than %u MiB", MAX_STDIN_IMAGE >> 20);
        else snprintf(err->message, sizeof err->message, "the image on standard input is empty");
        return -1;
    }
    im->data = buf;
    im->len = len;
    return 0;
}

static void print_error_json(const char *image_name, const char *question,
                             const blip2c_error *e);

/* A failure on stderr, and with --json as an {"error"} object on stdout. */
/* Tells e (with --json, also as an error object on stdout); the exit
 * status for it. */
static int report_error(const ctl *x, const char *image_name, const char *question, const blip2c_error *e)
{
    if (x->json) print_error_json(image_name, question, e);
    b2cli_warn("%s", e->message);
    return exit_for(e->code);
}

/* Checks every image before any work: a typo fails fast with status 2
 * (with --json, an error object per bad image on stdout too). */
static image *load_images(const ctl *x, char **names, size_t n, const char *question)
{
    image *ims = calloc(n, sizeof *ims);
    if (!ims) { b2cli_warn("out of memory"); exit(EXIT_SERVER); }
    bool used_stdin = false, bad = false;
    for (size_t i = 0; i < n; i++) {
        ims[i].name = names[i];
        blip2c_error err;
        int fd = -1;
        if (strcmp(names[i], "-") == 0) {
            if (used_stdin) b2cli_usage_error("'-' (standard input) can be given only once");
            used_stdin = true;
            if (read_stdin_image(&ims[i], &err) == 0) continue;
        } else if (blip2c_open_image(names[i], &fd, &err) == 0) {
            close(fd);  /* reopened when its request is sent (keeps few fds open) */
            continue;
        } else {
            struct stat st;
            if (stat(names[i], &st) == 0 && S_ISDIR(st.st_mode)) {
                size_t l = strlen(err.message);
                snprintf(err.message + l, sizeof err.message - l,
                         "; to caption the images in it, use -r (--recursive)");
            }
        }
        report_error(x, names[i], question, &err);
        bad = true;
    }
    if (bad) exit(EXIT_USAGE);
    return ims;
}

static void free_images(image *ims, size_t n)
{
    for (size_t i = 0; i < n; i++) free(ims[i].data);
    free(ims);
}

static void image_request(const image *im, blip2c_request *rq)
{
    blip2c_request_init(rq);
    if (im->data) {
        rq->image = im->data;
        rq->image_len = im->len;
    } else {
        rq->image_path = im->name;
    }
}

/* ---- connection ------------------------------------------------------------------------ */

/* Connects, or exits with status 3 (cannot connect) and the library's
 * message; with --json also an error object on stdout for each of the n
 * images the command was for (one without "image" when n is 0). */
/* x->conn = a connection to the daemon with x's options; 0 or a
 * BLIP2C_E* code (err says what). */
static int ctl_connect(ctl *x, blip2c_error *err)
{
    blip2c_options o;
    blip2c_options_init(&o);
    o.socket_path = x->socket;
    o.client_name = PROG " " BLIP2C_VERSION;
    o.timeout_ms = x->timeout_ms;
    return blip2c_connect_with(&o, &x->conn, err);
}

static void connect_or_exit(ctl *x, char **names, size_t n, const char *question)
{
    blip2c_error err;
    if (ctl_connect(x, &err) < 0) {
        if (x->json) {
            for (size_t i = 0; i < n; i++) print_error_json(names[i], question, &err);
            if (n == 0) print_error_json(NULL, question, &err);
        }
        b2cli_warn("%s", err.message);
        if (err.code == BLIP2C_ECONNECT && !x->socket)
            fputs("(or point " PROG " at the daemon's socket with --socket PATH or "
                  "BLIP2_SOCKET=PATH)\n", stderr);
        exit(exit_for(err.code));
    }
    const blip2c_info *in = blip2c_info_get(x->conn);
    if (x->verbose)
        b2cli_warn("connected to %s (%s): %s, protocol %u", in->socket_path,
               in->socket_origin, in->server, in->protocol);
}

/* ---- output -------------------------------------------------------------------------------- */

/* Text for one output line: surrounding whitespace removed, control
 * characters (newlines, escapes) shown as spaces. */
static void put_clean(const char *s, size_t n, bool trim)
{
    if (trim) {
        while (n && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) { s++; n--; }
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' ||
                     s[n - 1] == '\r'))
            n--;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        putchar(ch < 0x20 || ch == 0x7f ? ' ' : ch);
    }
}

/* json_string that survives file names that are not UTF-8: each byte of
 * an invalid sequence becomes U+FFFD, as on the lines of a collection. */
static json_t *jstr(const char *s)
{
    char *k = ctl_path_key(s);
    json_t *j = k ? json_string(k) : NULL;
    free(k);
    return j ? j : json_string("");
}

/* Prints one JSON object as a line; seed (if any) is appended as an exact
 * unsigned 64-bit number, which jansson's signed integers cannot hold. */
static void print_json(json_t *o, bool has_seed, uint64_t seed)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!s) { b2cli_warn("out of memory"); return; }
    size_t n = strlen(s);
    if (has_seed && n >= 2 && s[n - 1] == '}') {
        s[n - 1] = '\0';
        printf("%s%s\"seed\":%" PRIu64 "}\n", s, n > 2 ? "," : "", seed);
    } else {
        printf("%s\n", s);
    }
    free(s);
    fflush(stdout);
}

static void print_result_json(const char *image_name, const char *question,
                              const char *prompt, const blip2c_result *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "image", jstr(image_name));
    if (question) json_object_set_new(o, "question", jstr(question));
    if (prompt && prompt[0]) json_object_set_new(o, "prompt", jstr(prompt));
    json_object_set_new(o, "text", r->n_seqs ? b2cli_json_trimmed(r->seqs[0].text, r->seqs[0].text_len)
                                             : json_string(""));
    json_t *texts = json_array(), *ids = json_array(), *fin = json_array();
    for (size_t i = 0; i < r->n_seqs; i++) {
        const blip2c_seq *s = &r->seqs[i];
        json_t *t = json_stringn(s->text, s->text_len);
        json_array_append_new(texts, t ? t : json_string(""));
        json_t *a = json_array();
        for (size_t k = 0; k < s->n_ids; k++) json_array_append_new(a, json_integer(s->ids[k]));
        json_array_append_new(ids, a);
        const char *f = blip2c_finish_name(s->finish);
        json_array_append_new(fin, json_string(f ? f : "?"));
    }
    json_object_set_new(o, "texts", texts);
    json_object_set_new(o, "ids", ids);
    json_object_set_new(o, "finish", fin);
    json_object_set_new(o, "prompt_tokens", json_integer(r->prompt_tokens));
    json_object_set_new(o, "cached", json_boolean(r->cached));
    const blip2c_timings *t = &r->timings;
    json_object_set_new(o, "timings",
        json_pack("{s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "queue_ms", t->queue_ms,
                  "preprocess_ms", t->preprocess_ms, "vision_ms", t->vision_ms,
                  "prefill_ms", t->prefill_ms, "decode_ms", t->decode_ms,
                  "total_ms", t->total_ms, "tokens_per_s", t->tokens_per_s));
    print_json(o, r->has_seed, r->seed);
}

static void print_error_json(const char *image_name, const char *question,
                             const blip2c_error *e)
{
    json_t *o = json_object();
    if (image_name) json_object_set_new(o, "image", jstr(image_name));
    if (question) json_object_set_new(o, "question", jstr(question));
    json_t *er = json_object();
    json_object_set_new(er, "code", json_string(ctl_error_code(e)));
    json_object_set_new(er, "message", jstr(e->message));
    if (e->field[0]) json_object_set_new(er, "field", jstr(e->field));
    json_object_set_new(o, "error", er);
    print_json(o, false, 0);
}

/* Plain text: one line per sequence, "PREFIX: " before each if prefix. */
static void print_result_text(const char *prefix, const blip2c_result *r,
                              bool first_streamed)
{
    for (size_t i = 0; i < r->n_seqs; i++) {
        if (i == 0 && first_streamed) {
            putchar('\n');
            continue;
        }
        if (prefix) printf("%s: ", prefix);
        put_clean(r->seqs[i].text, r->seqs[i].text_len, true);
        putchar('\n');
    }
    fflush(stdout);
}

static void print_timings(const char *what, const blip2c_result *r)
{
    const blip2c_timings *t = &r->timings;
    b2cli_warn("%s: queue %.1f ms, preprocess %.1f ms, vision %.1f ms%s, prefill %.1f ms, "
           "decode %.1f ms (%.2f tokens/s), total %.1f ms, %u prompt tokens",
           what, t->queue_ms, t->preprocess_ms, t->vision_ms, r->cached ? " (cached)" : "",
           t->prefill_ms, t->decode_ms, t->tokens_per_s, t->total_ms, r->prompt_tokens);
    if (r->has_seed) b2cli_warn("%s: seed %" PRIu64, what, r->seed);
}

/* Tokens to the terminal as they come: sequence 0 only, leading whitespace
 * skipped, control characters as spaces. */
typedef struct streamer {
    bool started;   /* printed something */
} streamer;

static int on_token_print(void *user, const blip2c_token *t)
{
    streamer *st = user;
    if (t->seq != 0) return 0;
    const char *s = t->text;
    size_t n = t->text_len;
    if (!st->started) {
        while (n && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) { s++; n--; }
        if (!n) return 0;
        st->started = true;
    }
    put_clean(s, n, false);
    fflush(stdout);
    return 0;
}

static bool want_stream(const ctl *x)
{
    return !x->no_stream && !x->json && isatty(1) && x->params.num_beams == 1 &&
           x->params.num_return_sequences == 1;
}

/* ---- caption: several images, one connection, many requests in flight --------------------- */

enum { JOB_WAITING, JOB_RUNNING, JOB_DONE };

typedef struct job {
    const image *im;
    int state;
    uint64_t id;
    int busy_tries;
    int64_t not_before;     /* retry after busy */
    int64_t deadline;       /* --timeout, while running */
    bool abandoned;         /* --timeout passed: canceled, its replies ignored */
    blip2c_result *res;
    blip2c_error err;       /* err.code < 0: failed */
    streamer st;
    size_t *inflight;
} job;

static void job_done_cb(void *user, const blip2c_result *res)
{
    job *j = user;
    if (j->abandoned) return;
    (*j->inflight)--;
    j->state = JOB_DONE;
    j->res = blip2c_result_dup(res);
    if (!j->res) {
        j->err.code = BLIP2C_ENOMEM;
        snprintf(j->err.message, sizeof j->err.message, "out of memory");
    }
}

static void job_error_cb(void *user, uint64_t id, const blip2c_error *err)
{
    job *j = user;
    if (j->abandoned) return;
    (*j->inflight)--;
    if (err->code == BLIP2C_EBUSY && j->busy_tries < BUSY_RETRIES) {
        int64_t wait = 250ll << (j->busy_tries < 3 ? j->busy_tries : 3);  /* up to 2 s */
        j->busy_tries++;
        j->state = JOB_WAITING;
        j->not_before = now_ms() + wait;
        return;
    }
    j->state = JOB_DONE;
    j->err = *err;
}

static int job_token_cb(void *user, const blip2c_token *t)
{
    job *j = user;
    return j->abandoned ? 1 : on_token_print(&j->st, t);
}

static int cmd_caption(ctl *x, char **names, size_t n)
{
    image *ims = load_images(x, names, n, NULL);
    connect_or_exit(x, names, n, NULL);
    bool stream = n == 1 && want_stream(x);
    job *jobs = calloc(n, sizeof *jobs);
    if (!jobs) { b2cli_warn("out of memory"); exit(EXIT_SERVER); }
    size_t inflight = 0, printed = 0;
    for (size_t i = 0; i < n; i++) {
        jobs[i].im = &ims[i];
        jobs[i].inflight = &inflight;
    }
    blip2c_callbacks cbs = { stream ? job_token_cb : NULL, job_done_cb, job_error_cb };
    int broken = 0;
    blip2c_error broken_err;
    int status = EXIT_OK;

    while (printed < n) {
        int64_t now = now_ms(), wake = -1;
        /* submit, in input order, as the window allows */
        for (size_t i = printed; i < n && inflight < x->jobs; i++) {
            job *j = &jobs[i];
            if (j->state != JOB_WAITING) continue;
            if (broken) {
                j->state = JOB_DONE;
                j->err = broken_err;
                continue;
            }
            if (j->not_before > now) {
                if (wake < 0 || j->not_before < wake) wake = j->not_before;
                continue;
            }
            blip2c_request rq;
            image_request(j->im, &rq);
            rq.prompt = x->prompt;
            rq.params = &x->params;
            blip2c_error err;
            if (blip2c_submit(x->conn, &rq, &cbs, j, &j->id, &err) < 0) {
                j->state = JOB_DONE;
                j->err = err;
                if (err.code == BLIP2C_ECONNLOST || err.code == BLIP2C_EPROTO) {
                    broken = err.code;
                    broken_err = err;
                }
                continue;
            }
            j->state = JOB_RUNNING;
            j->deadline = x->timeout_ms ? now + x->timeout_ms : 0;
            inflight++;
        }
        if (broken)  /* nothing more will be submitted */
            for (size_t i = printed; i < n; i++)
                if (jobs[i].state == JOB_WAITING) {
                    jobs[i].state = JOB_DONE;
                    jobs[i].err = broken_err;
                }
        /* print what is complete, in input order */
        while (printed < n && jobs[printed].state == JOB_DONE) {
            job *j = &jobs[printed++];
            const char *prefix = n > 1 ? j->im->name : NULL;
            if (j->res) {
                if (x->json) print_result_json(j->im->name, NULL, x->prompt, j->res);
                else print_result_text(prefix, j->res, j->st.started);
                if (x->verbose) print_timings(j->im->name, j->res);
                blip2c_result_free(j->res);
                j->res = NULL;
            } else {
                if (j->st.started) putchar('\n');
                if (x->json) print_error_json(j->im->name, NULL, &j->err);
                b2cli_warn("%s: %s", j->im->name, j->err.message);
                if (status == EXIT_OK) status = exit_for(j->err.code);
            }
        }
        if (printed == n) break;
        if (inflight == 0 && broken) continue;  /* drain the rest as errors */

        /* --timeout: give up on what ran too long (the daemon is asked to
         * stop it; whatever it still sends for it is ignored) */
        bool expired = false;
        for (size_t i = printed; i < n && x->timeout_ms; i++) {
            job *j = &jobs[i];
            if (j->state != JOB_RUNNING) continue;
            if (j->deadline <= now) {
                blip2c_cancel(x->conn, j->id, NULL);
                j->abandoned = true;
                j->state = JOB_DONE;
                inflight--;
                j->err.code = BLIP2C_ETIMEDOUT;
                j->err.code_name[0] = j->err.field[0] = '\0';
                snprintf(j->err.message, sizeof j->err.message,
                         "no result within the --timeout; the request was canceled");
                expired = true;
            } else if (wake < 0 || j->deadline < wake) {
                wake = j->deadline;
            }
        }
        if (expired || (inflight == 0 && wake < 0)) continue;  /* print / submit more */
        struct pollfd pfd = { blip2c_fd(x->conn), POLLIN, 0 };
        if (blip2c_want_write(x->conn)) pfd.events |= POLLOUT;
        int t = -1;
        if (wake >= 0) {
            int64_t left = wake - now_ms();
            t = left < 0 ? 0 : left > 60000 ? 60000 : (int)left;
        }
        if (poll(&pfd, 1, t) < 0 && errno != EINTR) {
            b2cli_warn("poll: %s", strerror(errno));
            exit(EXIT_SERVER);
        }
        blip2c_error err;
        if (!broken && blip2c_process(x->conn, &err) < 0) {
            broken = err.code;
            broken_err = err;
        }
    }
    free(jobs);
    free_images(ims, n);
    return status;
}

/* ---- ask and chat ---------------------------------------------------------------------------- */

/* One blocking generate; prints the answer (or the error).  Returns the
 * error code (0 on success) and, if answer is not NULL, the trimmed answer
 * (caller frees). */
static int run_one(ctl *x, const image *im, int fd, const char *question,
                   const char *prompt, char **answer, bool report_too_large)
{
    blip2c_request rq;
    if (fd >= 0) {
        blip2c_request_init(&rq);
        rq.image_fd = fd;
    } else {
        image_request(im, &rq);
    }
    rq.prompt = prompt;
    rq.params = &x->params;
    streamer st = { false };
    bool stream = want_stream(x);
    blip2c_result *res;
    blip2c_error err;
    int rc = blip2c_generate(x->conn, &rq, stream ? on_token_print : NULL, &st, &res, &err);
    if (rc < 0) {
        if (st.started) putchar('\n');
        if (rc == BLIP2C_ETOO_LARGE && !report_too_large) return rc;
        report_error(x, im->name, question, &err);
        return rc;
    }
    if (x->json) print_result_json(im->name, question, prompt, res);
    else print_result_text(NULL, res, st.started);
    if (x->verbose) print_timings(im->name, res);
    if (answer) {
        const char *s = res->n_seqs ? res->seqs[0].text : "";
        size_t len = res->n_seqs ? res->seqs[0].text_len : 0;
        while (len && (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')) { s++; len--; }
        while (len && (s[len - 1] == ' ' || s[len - 1] == '\n' || s[len - 1] == '\t' ||
                       s[len - 1] == '\r'))
            len--;
        *answer = strndup(s, len);
    }
    blip2c_result_free(res);
    return 0;
}

static int cmd_ask(ctl *x, char *name, char **words, size_t nw)
{
    size_t qlen = 0;
    for (size_t i = 0; i < nw; i++) qlen += strlen(words[i]) + 1;
    char *q = malloc(qlen + 1);
    if (!q) { b2cli_warn("out of memory"); return EXIT_SERVER; }
    q[0] = '\0';
    for (size_t i = 0; i < nw; i++) {
        if (i) strcat(q, " ");
        strcat(q, words[i]);
    }
    if (!q[strspn(q, " \t")]) b2cli_usage_error("ask: the question is empty");
    size_t bad = utf8_bad_at(q);
    if (bad != SIZE_MAX) {
        blip2c_error err = { .code = BLIP2C_EINVAL };
        snprintf(err.message, sizeof err.message, "the question is not valid UTF-8 (at byte %zu "
                 "of the question)", bad + 1);
        report_error(x, name, NULL, &err);
        free(q);
        return EXIT_USAGE;
    }
    image *im = load_images(x, &name, 1, q);
    connect_or_exit(x, &name, 1, q);
    size_t plen = strlen(q) + sizeof "Question:  Answer:";
    char *prompt = malloc(plen);
    if (!prompt) { b2cli_warn("out of memory"); return EXIT_SERVER; }
    snprintf(prompt, plen, "Question: %s Answer:", q);
    int rc = run_one(x, im, -1, q, prompt, NULL, true);
    free(prompt);
    free(q);
    free_images(im, 1);
    return exit_for(rc);
}

typedef struct turn { char *q, *a; } turn;

/* "Question: q1 Answer: a1. Question: q2 Answer: a2. Question: q Answer:"
 * from turns [first, n), the template the BLIP-2 documentation shows (the
 * period is left out when the answer already ends a sentence). */
static char *chat_prompt(const turn *t, size_t first, size_t n, const char *q)
{
    size_t len = strlen(q) + 32;
    for (size_t i = first; i < n; i++) len += strlen(t[i].q) + strlen(t[i].a) + 32;
    char *p = malloc(len), *w = p;
    if (!p) return NULL;
    for (size_t i = first; i < n; i++) {
        size_t al = strlen(t[i].a);
        bool ends = al && strchr(".!?", t[i].a[al - 1]);
        w += sprintf(w, "Question: %s Answer: %s%s ", t[i].q, t[i].a, ends ? "" : ".");
    }
    sprintf(w, "Question: %s Answer:", q);
    return p;
}

/* One line of chat input, without its newline (caller frees), or NULL at
 * end of input.  On a terminal through libedit: line editing, and the
 * history of this session (Up/Down, Ctrl-R); Ctrl-D on an empty line ends
 * with the prompt's line erased, so the shell's prompt starts clean. */
static char *chat_read(bool interactive)
{
    if (interactive) {
        char *l = readline("> ");
        if (!l) {
            /* libedit has echoed "^D": erase the prompt's line, so the
             * shell's prompt starts on a clean line of its own */
            const char *term = getenv("TERM");
            fputs(term && strcmp(term, "dumb") ? "\r\033[K" : "\n", stdout);
            fflush(stdout);
            return NULL;
        }
        if (l[strspn(l, " \t")]) add_history(l);
        return l;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got = getline(&line, &cap, stdin);
    if (got < 0) {
        free(line);
        return NULL;
    }
    while (got && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
    return line;
}

static const char chat_help[] =
    "One question per line about the image; each answer knows the conversation so far.\n"
    "  /image FILE   talk about another image (the conversation starts over)\n"
    "  /reset        forget the conversation\n"
    "  /help         this text\n"
    "  /quit, /exit  stop (or Ctrl-D; Ctrl-C stops at once)\n"
    "Up and Down recall earlier lines; the usual line editing keys work.\n";

/* Opens the chat's image (a descriptor passed each turn); 0 or -1 (said). */
static int chat_open(ctl *x, const char *name, int *fd)
{
    blip2c_error err;
    if (blip2c_open_image(name, fd, &err) < 0) {
        report_error(x, name, NULL, &err);
        return -1;
    }
    return 0;
}

/* A chat may sit idle longer than the daemon's --idle-timeout, which then
 * closes the connection; before the next question, a connection the
 * daemon has closed (readable with nothing in flight: end of file) is
 * replaced by a new one.  0, or -1 when no new connection could be made
 * (said; the caller ends as for a lost connection). */
static int chat_reconnect_if_closed(ctl *x)
{
    struct pollfd p = { .fd = blip2c_fd(x->conn), .events = POLLIN };
    if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR))) return 0;
    blip2c_close(x->conn);
    x->conn = NULL;
    blip2c_error err;
    if (ctl_connect(x, &err) < 0) {
        b2cli_warn("the daemon closed the connection, and a new one failed: %s", err.message);
        return -1;
    }
    if (x->verbose) b2cli_warn("the daemon had closed the idle connection; connected again");
    return 0;
}

static int cmd_chat(ctl *x, char *name)
{
    if (strcmp(name, "-") == 0)
        b2cli_usage_error("chat: the image cannot come from standard input, which carries "
                    "the questions");
    int fd;
    if (chat_open(x, name, &fd) < 0) return EXIT_USAGE;
    connect_or_exit(x, &name, 1, NULL);
    const blip2c_info *info = blip2c_info_get(x->conn);
    bool interactive = isatty(0) && isatty(1);
    char *cur = strdup(name);   /* the image being discussed */
    if (!cur) { b2cli_warn("out of memory"); return EXIT_SERVER; }
    if (interactive)
        fprintf(stderr, "Chatting about %s. One question per line; /help lists the commands, "
                        "/quit or Ctrl-D ends.\n", cur);
    turn *hist = NULL;
    size_t nh = 0, first = 0, cap = 0;
    int status = EXIT_OK;
    char *line;
    while ((line = chat_read(interactive)) != NULL) {
        char *q = line + strspn(line, " \t");
        size_t ql = strlen(q);
        while (ql && (q[ql - 1] == ' ' || q[ql - 1] == '\t')) q[--ql] = '\0';
        if (!*q) { free(line); continue; }
        if (strcmp(q, "/quit") == 0 || strcmp(q, "/exit") == 0) { free(line); break; }
        if (strcmp(q, "/reset") == 0) {
            first = nh;
            if (interactive || x->verbose) fputs("(conversation forgotten)\n", stderr);
            free(line);
            continue;
        }
        if (strcmp(q, "/help") == 0 || strcmp(q, "/?") == 0) {
            fputs(chat_help, interactive ? stdout : stderr);
            free(line);
            continue;
        }
        if (strncmp(q, "/image", 6) == 0 && (q[6] == ' ' || q[6] == '\t' || !q[6])) {
            const char *f = q + 6 + strspn(q + 6, " \t");
            int nfd;
            if (!*f) {
                b2cli_warn("/image: give a FILE");
            } else if (chat_open(x, f, &nfd) == 0) {
                close(fd);
                fd = nfd;
                char *c = strdup(f);
                if (c) { free(cur); cur = c; }
                first = nh;
                if (interactive || x->verbose)
                    fprintf(stderr, "(now about %s; conversation forgotten)\n", cur);
            } else if (status == EXIT_OK) {
                status = EXIT_USAGE;
            }
            free(line);
            continue;
        }
        if (q[0] == '/' && q[1] != '/' && !strchr(q, ' ')) {
            b2cli_warn("%s: no such command (/help lists them; start a question with // to "
                   "ask it as is)", q);
            free(line);
            continue;
        }
        if (q[0] == '/' && q[1] == '/') q++;
        size_t bad = utf8_bad_at(q);
        if (bad != SIZE_MAX) {
            b2cli_warn("the question is not valid UTF-8 (at byte %zu of the question)", bad + 1);
            if (status == EXIT_OK) status = EXIT_USAGE;
            free(line);
            continue;
        }
        if (chat_reconnect_if_closed(x) < 0) {
            status = exit_for(BLIP2C_ECONNLOST);
            free(line);
            break;
        }
        info = blip2c_info_get(x->conn);
        image im = { cur, NULL, 0 };
        char *answer = NULL;
        int rc;
        for (;;) {
            char *prompt = chat_prompt(hist, first, nh, q);
            if (!prompt) { b2cli_warn("out of memory"); return EXIT_SERVER; }
            if (strlen(prompt) > info->max_prompt_bytes && first < nh) {
                free(prompt);
                first++;  /* drop the oldest turn */
                continue;
            }
            rc = run_one(x, &im, fd, q, prompt, &answer, first == nh);
            free(prompt);
            if (rc == BLIP2C_ETOO_LARGE && first < nh) {
                first++;
                if (x->verbose) b2cli_warn("dropped the oldest turn to fit the model's context");
                continue;
            }
            break;
        }
        if (rc == BLIP2C_ECONNLOST || rc == BLIP2C_EPROTO) {
            status = exit_for(rc);
            free(line);
            break;
        }
        if (rc < 0) {
            if (status == EXIT_OK) status = exit_for(rc);
            free(line);
            continue;
        }
        if (!answer) { b2cli_warn("out of memory"); return EXIT_SERVER; }
        if (nh == cap) {
            cap = cap ? 2 * cap : 8;
            turn *nt = realloc(hist, cap * sizeof *nt);
            if (!nt) { b2cli_warn("out of memory"); return EXIT_SERVER; }
            hist = nt;
        }
        hist[nh].q = strdup(q);
        hist[nh].a = answer;
        if (!hist[nh].q) { b2cli_warn("out of memory"); return EXIT_SERVER; }
        nh++;
        free(line);
    }
    for (size_t i = 0; i < nh; i++) {
        free(hist[i].q);
        free(hist[i].a);
    }
    free(hist);
    free(cur);
    close(fd);
    return status;
}

/* ---- status and ping ------------------------------------------------------------------------- */

static void fmt_bytes(char *buf, size_t n, uint64_t b)
{
    if (b >= (1ull << 30)) snprintf(buf, n, "%.1f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, n, "%.1f MiB", (double)b / (1ull << 20));
    else if (b >= 1024) snprintf(buf, n, "%.1f KiB", (double)b / 1024);
    else snprintf(buf, n, "%" PRIu64 " B", b);
}

static int cmd_status(ctl *x)
{
    connect_or_exit(x, NULL, 0, NULL);
    blip2c_status *s;
    blip2c_error err;
    if (blip2c_status_get(x->conn, &s, &err) < 0) return report_error(x, NULL, NULL, &err);
    const blip2c_info *in = blip2c_info_get(x->conn);
    if (x->json) {
        json_t *o = json_pack(
            "{s:s, s:s, s:s, s:I, s:I, s:{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}, s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I},"
            " s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:{s:I,s:I,s:I,s:I,s:I},"
            " s:{s:I,s:I,s:I}}",
            "socket", in->socket_path, "server", in->server, "version", s->version,
            "protocol", (json_int_t)s->protocol, "uptime_ms", (json_int_t)s->uptime_ms,
            "model", "path", s->model_path, "name", s->model_name,
            "family", s->model_family, "dtype", s->model_dtype, "precision", s->model_precision,
            "backend", s->model_backend, "kernels", s->model_kernels, "weights", s->model_weights,
            "config", "image_size", (json_int_t)s->image_size, "vision_layers", (json_int_t)s->vision_layers,
            "vision_hidden", (json_int_t)s->vision_hidden, "qformer_layers", (json_int_t)s->qformer_layers,
            "num_query_tokens", (json_int_t)s->num_query_tokens, "text_layers", (json_int_t)s->text_layers,
            "text_hidden", (json_int_t)s->text_hidden, "vocab_size", (json_int_t)s->vocab_size,
            "max_positions", (json_int_t)s->max_positions,
            "queue_depth", (json_int_t)s->queue_depth, "active", (json_int_t)s->active,
            "max_queue", (json_int_t)s->max_queue, "max_batch", (json_int_t)s->max_batch,
            "connections", (json_int_t)s->connections, "threads", (json_int_t)s->threads,
            "requests_total", (json_int_t)s->requests_total,
            "cache", "hits", (json_int_t)s->cache_hits, "misses", (json_int_t)s->cache_misses,
            "entries", (json_int_t)s->cache_entries, "bytes", (json_int_t)s->cache_bytes,
            "capacity_bytes", (json_int_t)s->cache_capacity_bytes,
            "limits", "max_frame", (json_int_t)in->max_frame,
            "max_image_bytes", (json_int_t)in->max_image_bytes,
            "max_prompt_bytes", (json_int_t)in->max_prompt_bytes);
        if (o && s->memory_max) /* the memory budget (daemons that report it) */
            json_object_set_new(o, "memory", json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
                "max", (json_int_t)s->memory_max, "used", (json_int_t)s->memory_used,
                "jobs", (json_int_t)s->memory_jobs, "decode", (json_int_t)s->memory_decode,
                "input", (json_int_t)s->memory_input, "output", (json_int_t)s->memory_output,
                "http", (json_int_t)s->memory_http));
        if (o) print_json(o, false, 0);
        else b2cli_warn("cannot format the status as JSON (invalid UTF-8 from the daemon?)");
    } else {
        uint64_t up = s->uptime_ms / 1000;
        char cb[32], cc[32];
        fmt_bytes(cb, sizeof cb, s->cache_bytes);
        fmt_bytes(cc, sizeof cc, s->cache_capacity_bytes);
        printf("daemon:      blip2d %s, protocol %u, up %" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s\n",
               s->version, s->protocol, up / 3600, up / 60 % 60, up % 60);
        printf("socket:      %s (%s)\n", in->socket_path, in->socket_origin);
        printf("model:       %s (%s, %s) from %s\n", s->model_name, s->model_family,
               s->model_dtype, s->model_path);
        if (*s->model_precision || *s->model_kernels)
            printf("math:        %s on %s; decode kernels %s\n", *s->model_precision ? s->model_precision : "?",
                   *s->model_backend ? s->model_backend : "?", *s->model_kernels ? s->model_kernels : "?");
        if (*s->model_weights) printf("mapping:     %s\n", s->model_weights);
        printf("config:      image %u px; vision %u layers x %u; Q-Former %u layers, %u queries;\n"
               "             text %u layers x %u, vocabulary %u, context %u\n",
               s->image_size, s->vision_layers, s->vision_hidden, s->qformer_layers,
               s->num_query_tokens, s->text_layers, s->text_hidden, s->vocab_size,
               s->max_positions);
        printf("requests:    %u queued (max %u), %u active (batch up to %u), %" PRIu64 " done\n",
               s->queue_depth, s->max_queue, s->active, s->max_batch, s->requests_total);
        printf("connections: %u\nthreads:     %u\n", s->connections, s->threads);
        printf("cache:       %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64 " entries, %s of %s\n",
               s->cache_hits, s->cache_misses, s->cache_entries, cb, cc);
        if (s->memory_max) {
            char mu[32], mm[32], m[5][32];
            fmt_bytes(mu, sizeof mu, s->memory_used);
            fmt_bytes(mm, sizeof mm, s->memory_max);
            const uint64_t by[5] = {s->memory_jobs, s->memory_decode, s->memory_input, s->memory_output,
                                    s->memory_http};
            for (int i = 0; i < 5; i++) fmt_bytes(m[i], sizeof m[i], by[i]);
            printf("memory:      %s of %s budget (requests %s, decoding %s, input %s, output %s, http %s)\n",
                   mu, mm, m[0], m[1], m[2], m[3], m[4]);
        }
        printf("limits:      frame %" PRIu64 " B, image %" PRIu64 " B, prompt %" PRIu64 " B\n",
               in->max_frame, in->max_image_bytes, in->max_prompt_bytes);
    }
    blip2c_status_free(s);
    return EXIT_OK;
}

/* ---- convert and the queue commands: programs of their own ------------------------------- */

/* Runs the program `tool` with av (av[0] is what its messages call it).
 * Where it is looked for: $env, then beside this program (both are
 * installed in bindir; a libtool build keeps the real binary one level
 * down, in .libs/), then $PATH.  Returns only if none could be run. */
static int run_tool(const char *tool, const char *env_name, char *const av[])
{
    const char *env = getenv(env_name);
    if (env && *env) {
        execv(env, av);
        b2cli_warn("cannot run %s: %s", env, strerror(errno));
        return EXIT_USAGE;
    }
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 64);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            strcpy(slash + 1, tool);
            execv(self, av);
            *slash = 0;
            slash = strrchr(self, '/');
            if (slash && !strcmp(slash, "/.libs")) {
                strcpy(slash + 1, tool);
                execv(self, av);
                *slash = 0;
                slash = strrchr(self, '/');
            }
            /* the build tree: ctl/blip2ctl next to model/blip2-convert */
            if (slash && !strcmp(slash, "/ctl")) {
                strcpy(slash + 1, "model/blip2-convert");
                execv(self, av);
            }
        }
    }
    execvp(tool, av);
    b2cli_warn("cannot run %s (installed beside blip2ctl, or set %s): %s", tool, env_name, strerror(errno));
    return EXIT_USAGE;
}

/* convert runs blip2-convert (the program that links the model library),
 * with argv[0] "blip2ctl convert" so that its messages read as this
 * command's. */
static int cmd_convert(ctl *x, const char *src, const char *out)
{
    const char *type = x->type ? x->type : "f16";
    char *av[8] = {(char *)PROG " convert", (char *)"--type", (char *)type};
    int n = 3;
    if (x->int8_vision) av[n++] = (char *)"--int8-vision";
    av[n++] = (char *)"--";
    av[n++] = (char *)src;
    av[n++] = (char *)out;
    av[n] = NULL;
    return run_tool("blip2-convert", "BLIP2_CONVERT", av);
}

/* enqueue, results and queue-status talk to Redis, not to a daemon: they
 * run blip2-queue (which links hiredis), so that blip2ctl links only
 * libblip2client.  Their options follow the command word; argv from the
 * command on is passed as it is. */
static bool is_queue_command(const char *cmd)
{
    return !strcmp(cmd, "enqueue") || !strcmp(cmd, "results") || !strcmp(cmd, "queue-status");
}

static int cmd_queue(int argc, char **argv)
{
    char **av = calloc((size_t)argc + 1, sizeof *av);
    if (!av) return EXIT_USAGE;
    av[0] = (char *)"blip2-queue";
    for (int i = 1; i < argc; i++) av[i] = argv[i];
    int st = run_tool("blip2-queue", "BLIP2_QUEUE_TOOL", av);
    free(av);
    return st;
}

static int cmd_ping(ctl *x)
{
    connect_or_exit(x, NULL, 0, NULL);
    double rtt;
    blip2c_error err;
    if (blip2c_ping(x->conn, &rtt, &err) < 0) return report_error(x, NULL, NULL, &err);
    const blip2c_info *in = blip2c_info_get(x->conn);
    if (x->json) {
        json_t *o = json_pack("{s:s, s:s, s:f}", "server", in->server, "socket",
                              in->socket_path, "rtt_ms", rtt);
        if (o) print_json(o, false, 0);
    } else {
        printf("pong from %s at %s in %.3f ms\n", in->server, in->socket_path, rtt);
    }
    return EXIT_OK;
}

/* ---- caption over a collection (ctl_batch.c) ------------------------------------------------ */

static bool collection_mode(const ctl *x)
{
    return x->jsonl || x->recursive || x->files_from || x->resume || x->output;
}

/* Appends s to the buffer at *w (cap bytes at most), quoted for a POSIX
 * shell when it needs it ('...' with ' as '\''). */
static void shell_word(char **w, char *end, const char *s)
{
    bool plain = *s != '\0';
    for (const char *c = s; *c; c++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=./,:@%", *c))
            plain = false;
    if (*w < end) *(*w)++ = ' ';
    if (plain) {
        for (; *s && *w < end; s++) *(*w)++ = *s;
        return;
    }
    if (*w < end) *(*w)++ = '\'';
    for (; *s && *w < end; s++) {
        if (*s == '\'') {
            for (const char *q = "'\\''"; *q && *w < end; q++) *(*w)++ = *q;
        } else {
            *(*w)++ = *s;
        }
    }
    if (*w < end) *(*w)++ = '\'';
}

/* The command that continues an interrupted collection: this one as it was
 * typed, plus --resume FILE when -o FILE was given without it.  NULL when
 * the lines went to stdout (nothing to resume from) or out of memory;
 * caller frees. */
static char *resume_command(const ctl *x)
{
    if (!x->output) return NULL;
    size_t cap = 64 + 2 * strlen(x->output);
    for (int i = 0; i < x->argc; i++) cap += 4 * strlen(x->argv[i]) + 3;
    char *buf = malloc(cap), *w = buf, *end = buf + cap - 1;
    if (!buf) return NULL;
    w += snprintf(w, cap, "%s", PROG);
    for (int i = 1; i < x->argc; i++) shell_word(&w, end, x->argv[i]);
    if (!x->resume) {
        shell_word(&w, end, "--resume");
        shell_word(&w, end, x->output);
    }
    *w = '\0';
    return buf;
}

/* caption or features over a collection: the walk, the list, --resume,
 * the output and the window as the options say. */
static int run_collection(ctl *x, char **names, size_t n, const ctl_batch_op *op)
{
    ctl_batch_opts o = {
        .paths = names, .n_paths = n, .recursive = x->recursive, .hidden = x->hidden,
        .files_from = x->files_from, .null_sep = x->null_sep, .resume = x->resume,
        .output = x->output, .jobs = x->jobs_set ? x->jobs : 0, .timeout_ms = x->timeout_ms,
        .progress = x->no_progress ? 0 : -1, .verbose = x->verbose,
        .include = x->include, .n_include = x->n_include,
        .exclude = x->exclude, .n_exclude = x->n_exclude,
    };
    char *cmd = resume_command(x);
    o.resume_cmd = cmd;
    int rc = ctl_batch_run(x->conn, &o, op);
    free(cmd);
    return rc;
}

static int cmd_caption_collection(ctl *x, char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], "-") == 0)
            b2cli_usage_error("caption: '-' (an image on standard input) does not go with a "
                        "collection (--jsonl, --recursive, --files-from, --resume, -o)");
    connect_or_exit(x, NULL, 0, NULL);
    ctl_caption_args a = { x->prompt, &x->params };
    ctl_batch_op op = ctl_batch_caption_op(&a);
    return run_collection(x, names, n, &op);
}

static int cmd_features_collection(ctl *x, char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], "-") == 0)
            b2cli_usage_error("features: '-' (an image on standard input) does not go with a "
                        "collection");
    static const char *const image_outputs[] = {
        "image_last_hidden_state", "image_pooler_output", "qformer_last_hidden_state",
        "qformer_pooler_output", "language_model_inputs", NULL };
    for (size_t i = 0; i < x->n_outputs; i++) {
        if (!strcmp(x->outputs[i], "logits") || !strcmp(x->outputs[i], "logits_last"))
            b2cli_usage_error("features: --output %s needs --text, which is for one image, not a "
                        "collection", x->outputs[i]);
        size_t k = 0;
        while (image_outputs[k] && strcmp(image_outputs[k], x->outputs[i])) k++;
        if (!image_outputs[k])
            b2cli_usage_error("features: --output %s is no output (image_last_hidden_state, "
                        "image_pooler_output, qformer_last_hidden_state, qformer_pooler_output, "
                        "language_model_inputs)", x->outputs[i]);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(x->outputs[j], x->outputs[i]))
                b2cli_usage_error("features: --output %s is given twice", x->outputs[i]);
    }
    if (x->out_dir) {
        struct stat st;
        if (stat(x->out_dir, &st) != 0 || !S_ISDIR(st.st_mode))
            b2cli_usage_error("--out-dir: %s is not a directory%s", x->out_dir,
                        errno == ENOENT ? " (create it first)" : "");
        if (access(x->out_dir, W_OK | X_OK) != 0)
            b2cli_usage_error("--out-dir: cannot write to %s: %s", x->out_dir, strerror(errno));
    }
    connect_or_exit(x, NULL, 0, NULL);
    ctl_features_args a = { x->outputs, x->n_outputs, x->out_dir };
    ctl_batch_op op = ctl_batch_features_op(&a);
    return run_collection(x, names, n, &op);
}

/* ---- main ------------------------------------------------------------------------------------- */

/* ---- features ---------------------------------------------------------------------- */

/* Writes the tensors as a safetensors file (ctl_write_safetensors); 0 or
 * -1 (said). */
static int write_safetensors(const char *path, const blip2c_features *f)
{
    char msg[1024];
    if (ctl_write_safetensors(path, f, msg, sizeof msg) == 0) return 0;
    b2cli_warn("%s", msg);
    return -1;
}

static json_t *shape_json(const blip2c_tensor *t)
{
    json_t *a = json_array();
    for (int d = 0; d < t->ndim; d++) json_array_append_new(a, json_integer((json_int_t)t->shape[d]));
    return a;
}

static int cmd_features(ctl *x, char *name)
{
    image *im = name ? load_images(x, &name, 1, NULL) : NULL;
    connect_or_exit(x, name ? &name : NULL, name ? 1 : 0, NULL);
    blip2c_features_request fr;
    blip2c_features_request_init(&fr);
    if (im && im->data) {
        fr.image = im->data;
        fr.image_len = im->len;
    } else if (im) {
        fr.image_path = im->name;
    }
    fr.text = x->text;
    fr.outputs = x->outputs;
    fr.n_outputs = x->n_outputs;
    blip2c_features *f;
    blip2c_error err;
    int rc = blip2c_features_get(x->conn, &fr, &f, &err);
    if (im) free_images(im, 1);
    if (rc < 0) {
        if (x->json) {
            json_t *o = json_object();
            if (name) json_object_set_new(o, "image", jstr(name));
            if (x->text) json_object_set_new(o, "text", jstr(x->text));
            json_object_set_new(o, "error", json_pack("{s:s,s:o}", "code", ctl_error_code(&err),
                                                      "message", jstr(err.message)));
            print_json(o, false, 0);
        }
        b2cli_warn("%s%s%s", name ? name : "", name ? ": " : "", err.message);
        return exit_for(rc);
    }
    int status = EXIT_OK;
    if (x->out && write_safetensors(x->out, f) < 0) status = EXIT_USAGE;
    if (x->json) {
        json_t *o = json_object(), *ts = json_object();
        if (name) json_object_set_new(o, "image", jstr(name));
        if (x->text) json_object_set_new(o, "text", jstr(x->text));
        for (size_t i = 0; i < f->n_tensors; i++) {
            const blip2c_tensor *t = &f->tensors[i];
            json_t *v = json_array();
            for (size_t e = 0; e < t->numel; e++)
                json_array_append_new(v, t->i32 ? json_integer(t->i32[e]) : json_real(t->f32[e]));
            json_object_set_new(ts, t->name, json_pack("{s:s,s:o,s:o}", "dtype", t->dtype,
                                                       "shape", shape_json(t), "data", v));
        }
        json_object_set_new(o, "tensors", ts);
        json_object_set_new(o, "cached", json_boolean(f->cached));
        json_object_set_new(o, "timings", json_pack("{s:f,s:f,s:f,s:f,s:f}",
                            "queue_ms", f->timings.queue_ms, "preprocess_ms", f->timings.preprocess_ms,
                            "vision_ms", f->timings.vision_ms, "text_ms", f->timings.text_ms,
                            "total_ms", f->timings.total_ms));
        print_json(o, false, 0);
    } else if (!x->out) {
        for (size_t i = 0; i < f->n_tensors; i++) {
            const blip2c_tensor *t = &f->tensors[i];
            printf("%-26s %-7s (", t->name, t->dtype);
            for (int d = 0; d < t->ndim; d++) printf("%s%" PRIu64, d ? ", " : "", t->shape[d]);
            printf(")\n");
        }
    }
    if (x->verbose)
        b2cli_warn("features: %s, vision %.1f ms, text %.1f ms, total %.1f ms",
               f->cached ? "cached" : "computed", f->timings.vision_ms, f->timings.text_ms,
               f->timings.total_ms);
    blip2c_features_free(f);
    return status;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && is_queue_command(argv[1])) return cmd_queue(argc, argv);
    ctl x;
    memset(&x, 0, sizeof x);
    x.jobs = 4;
    blip2c_params_init(&x.params);
    x.argc = argc;
    x.argv = argv;
    parse_args(&x, argc, argv);

    if (optind >= argc) b2cli_usage_error("missing command (caption, ask, chat, features, convert, status or ping)");
    const char *cmd = argv[optind];
    char **args = argv + optind + 1;
    size_t nargs = (size_t)(argc - optind - 1);
    if (x.null_sep && !x.files_from) b2cli_usage_error("--null is for --files-from");
    if (x.hidden && !x.recursive) b2cli_usage_error("--hidden is for --recursive");
    bool features = strcmp(cmd, "features") == 0;
    if (collection_mode(&x) && strcmp(cmd, "caption") != 0 && !features)
        b2cli_usage_error("--jsonl, --recursive, --files-from, --resume and -o are for caption "
                    "and features");
    if ((x.text || x.n_outputs || x.out || x.out_dir) && !features)
        b2cli_usage_error("--text, --output, --out and --out-dir are for features");
    bool fcoll = features && (collection_mode(&x) || x.out_dir || nargs > 1);
    if (fcoll && x.text)
        b2cli_usage_error("features: --text is for one image (or none), not a collection "
                    "(--jsonl, -r, --files-from, --resume, -o, --out-dir, several IMAGEs)");
    if (fcoll && x.out)
        b2cli_usage_error("features: --out FILE is for one image; a collection writes one file "
                    "per image with --out-dir DIR");
    if (x.prompt && strcmp(cmd, "caption") != 0)
        b2cli_usage_error("--prompt is for caption (ask and chat build the prompt from the question)");

    int status;
    if (strcmp(cmd, "caption") == 0 && collection_mode(&x)) {
        if (nargs == 0 && !x.files_from)
            b2cli_usage_error("caption: give at least one IMAGE or DIR, or --files-from");
        status = cmd_caption_collection(&x, args, nargs);
    } else if (strcmp(cmd, "caption") == 0) {
        if (nargs == 0) b2cli_usage_error("caption: give at least one IMAGE (or - for stdin)");
        status = cmd_caption(&x, args, nargs);
    } else if (strcmp(cmd, "ask") == 0) {
        if (nargs < 2) b2cli_usage_error("ask: give an IMAGE and a QUESTION");
        status = cmd_ask(&x, args[0], args + 1, nargs - 1);
    } else if (strcmp(cmd, "chat") == 0) {
        if (nargs != 1) b2cli_usage_error("chat: give exactly one IMAGE");
        status = cmd_chat(&x, args[0]);
    } else if (fcoll) {
        if (nargs == 0 && !x.files_from)
            b2cli_usage_error("features: give at least one IMAGE or DIR, or --files-from");
        status = cmd_features_collection(&x, args, nargs);
    } else if (features) {
        if (nargs == 0 && !x.text) b2cli_usage_error("features: give an IMAGE, --text TEXT or both");
        status = cmd_features(&x, nargs ? args[0] : NULL);
    } else if (strcmp(cmd, "convert") == 0) {
        if (nargs != 2) b2cli_usage_error("convert: give a SOURCE folder and an OUTPUT.gguf file");
        status = cmd_convert(&x, args[0], args[1]);
    } else if (strcmp(cmd, "status") == 0 || strcmp(cmd, "ping") == 0) {
        if (nargs) b2cli_usage_error("%s: takes no arguments", cmd);
        status = cmd[0] == 's' ? cmd_status(&x) : cmd_ping(&x);
    } else {
        b2cli_usage_error("unknown command '%s' (caption, ask, chat, features, convert, status or ping)", cmd);
    }
    blip2c_close(x.conn);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        b2cli_warn("cannot write the output: %s", strerror(errno));
        if (status == EXIT_OK) status = EXIT_SERVER;
    }
    return status;
}
