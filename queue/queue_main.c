/*
 * queue_main.c - blip2-queue, the program behind `blip2ctl enqueue`,
 * `blip2ctl results` and `blip2ctl queue-status` (blip2ctl runs it, as it
 * runs blip2-convert for `convert`, so that blip2ctl itself links only
 * libblip2client).  It talks to Redis, never to a daemon.
 *
 *   enqueue:      arguments, -r walks (fts, sorted), --files-from
 *                 --> read the file (or take its real path with --by-path)
 *                 --> the protocol request (libipc encoder: the daemon's
 *                     checks, before anything is sent)
 *                 --> job id = SHA-256 of file bytes, op, request sans image
 *                 --> b2q_enqueue (a known id is a no-op: resumable)
 *   results:      XRANGE S:results in pages (then XREAD BLOCK with
 *                 --follow) --> libipc reply decoder --> one JSON line per
 *                 job, as collections write them, plus "job"
 *   queue-status: XLEN, XINFO GROUPS/CONSUMERS, HLEN --> a table or JSON
 */
#include "b2cli.h"
#include "b2json.h"
#include "b2q.h"
#include "b2strset.h"
#include "blip2ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <getopt.h>
#include <hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EX_OK = 0, EX_FAILED = 1, EX_USAGE_ = B2CLI_EXIT_USAGE, EX_CONNECT = 3, EX_LOST = 4 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static char prog[64] = "blip2-queue";   /* "blip2ctl CMD" once the command is known */

static volatile sig_atomic_t stop_sig;
static void on_signal(int sig) { stop_sig = sig; }

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---- options ------------------------------------------------------------------ */

typedef struct opts {
    const char *queue;
    /* enqueue */
    bool recursive, hidden, null_sep, by_path, no_progress, verbose;
    const char *files_from;
    const char *op;
    const char *prompt, *question;
    const char *outputs[8];
    uint32_t n_outputs;
    b2cli_gen gen;            /* the generation options given, applied to params */
    b2ipc_gen_params params;
    uint64_t max_image;
    /* results */
    const char *output;
    bool follow;
    /* queue-status */
    bool json;
} opts;

enum {
    O_QUEUE = B2CLI_O_NEXT, O_HIDDEN, O_FILES_FROM, O_OP, O_QUESTION, O_OUTPUT,
    O_BY_PATH, O_MAX_IMAGE, O_NO_PROGRESS, O_FOLLOW, O_JSON
};

static const struct option long_options[] = {
    { "queue", required_argument, NULL, O_QUEUE },
    { "recursive", no_argument, NULL, 'r' },
    { "hidden", no_argument, NULL, O_HIDDEN },
    { "files-from", required_argument, NULL, O_FILES_FROM },
    { "null", no_argument, NULL, '0' },
    { "op", required_argument, NULL, O_OP },
    { "prompt", required_argument, NULL, 'p' },
    { "question", required_argument, NULL, O_QUESTION },
    { "output", required_argument, NULL, O_OUTPUT },
    { "by-path", no_argument, NULL, O_BY_PATH },
    { "max-image-bytes", required_argument, NULL, O_MAX_IMAGE },
    { "no-progress", no_argument, NULL, O_NO_PROGRESS },
    { "output-file", required_argument, NULL, 'o' },
    { "follow", no_argument, NULL, O_FOLLOW },
    { "json", no_argument, NULL, O_JSON },
    B2CLI_GEN_LONG_OPTIONS,
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

static void parse_args(opts *o, int argc, char **argv)
{
    b2ipc_gen_params *p = &o->params;
    int ch;
    while ((ch = getopt_long(argc, argv, "r0p:o:vh", long_options, NULL)) != -1) {
        if (b2cli_gen_option(&o->gen, ch, optarg)) continue;
        switch (ch) {
        case O_QUEUE: o->queue = optarg; break;
        case 'r': o->recursive = true; break;
        case O_HIDDEN: o->hidden = true; break;
        case O_FILES_FROM: o->files_from = optarg; break;
        case '0': o->null_sep = true; break;
        case O_OP: o->op = optarg; break;
        case 'p': o->prompt = optarg; break;
        case O_QUESTION: o->question = optarg; break;
        case O_OUTPUT:
            if (o->n_outputs == 7) b2cli_usage_error("--output: at most 7 outputs");
            o->outputs[o->n_outputs++] = optarg;
            break;
        case O_BY_PATH: o->by_path = true; break;
        case O_MAX_IMAGE: o->max_image = b2cli_uint("--max-image-bytes", optarg, B2Q_MAX_INLINE_IMAGE); break;
        case O_NO_PROGRESS: o->no_progress = true; break;
        case 'o': o->output = optarg; break;
        case O_FOLLOW: o->follow = true; break;
        case O_JSON: o->json = true; break;
        case 'v': o->verbose = true; break;
        case 'h':
            printf("%s: the queue commands of blip2ctl; see blip2ctl --help and blip2ctl(1)\n", prog);
            exit(EX_OK);
        default:
            fprintf(stderr, "Try 'blip2ctl --help' for more information.\n");
            exit(B2CLI_EXIT_USAGE);
        }
    }
    B2CLI_GEN_APPLY(p, &o->gen);
    if (!o->queue) o->queue = getenv("BLIP2_QUEUE");
    if (!o->queue || !*o->queue) b2cli_usage_error("--queue URL is required (or set BLIP2_QUEUE)");
}

static b2q_conn *connect_or_exit(const opts *o)
{
    b2q_url u;
    char msg[600];
    if (b2q_url_parse(o->queue, &u, msg, sizeof msg) < 0) b2cli_usage_error("--queue: %s", msg);
    b2q_conn *q;
    if (b2q_connect(&u, 10000, &q, msg, sizeof msg) < 0) {
        b2cli_warn("%s", msg);
        exit(EX_CONNECT);
    }
    return q;
}

/* ---- enqueue -------------------------------------------------------------------- */

typedef struct enq {
    const opts *o;
    b2q_conn *q;
    const char *op;
    char prompt_buf[20000];
    const char *prompt;
    size_t files, added, known, failed;
    double t0, shown;
    bool progress, lost;
} enq;

static void progress(enq *e, bool force)
{
    if (!e->progress) return;
    double t = now_s();
    if (!force && t - e->shown < 0.25) return;
    e->shown = t;
    double rate = t > e->t0 ? (double)e->files / (t - e->t0) : 0;
    fprintf(stderr, "\r\033[K%zu files: %zu enqueued, %zu already known, %zu failed  %.1f files/s",
            e->files, e->added, e->known, e->failed, rate);
    fflush(stderr);
}

static void file_error(enq *e, const char *path, const char *what)
{
    if (e->progress) fputs("\r\033[K", stderr);
    b2cli_warn("%s: %s", path, what);
    e->failed++;
}

/* Encodes rq and returns the payload without its 4-byte prefix in sb. */
static int encode(const b2ipc_request *rq, msgpack_sbuffer *sb, b2ipc_error *err)
{
    msgpack_sbuffer_init(sb);
    return b2ipc_encode_request(sb, rq, NULL, err);
}

static void fill_request(enq *e, b2ipc_request *rq)
{
    const opts *o = e->o;
    if (strcmp(e->op, "features") == 0) {
        b2ipc_request_init(rq, B2IPC_OP_FEATURES);
        static const char *const pooled[] = { "image_pooler_output", "qformer_pooler_output" };
        rq->features.outputs = o->n_outputs ? o->outputs : pooled;
        rq->features.n_outputs = o->n_outputs ? o->n_outputs : 2;
    } else {
        b2ipc_request_init(rq, B2IPC_OP_GENERATE);
        rq->generate.prompt = e->prompt;
        rq->generate.params = o->params;
    }
}

static void set_image(b2ipc_request *rq, const uint8_t *img, size_t n, bool fd)
{
    if (rq->op == B2IPC_OP_FEATURES) {
        rq->features.image = img;
        rq->features.image_len = n;
        rq->features.image_fd = fd;
    } else {
        rq->generate.image = img;
        rq->generate.image_len = n;
        rq->generate.image_fd = fd;
    }
}

static uint8_t *read_file(const char *path, size_t max, size_t *len, char *msg, size_t ml)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) { snprintf(msg, ml, "cannot open: %s", strerror(errno)); return NULL; }
    struct stat st;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) { snprintf(msg, ml, "not a regular file"); goto out; }
    if ((uint64_t)st.st_size > max) {
        snprintf(msg, ml, "%lld bytes, more than --max-image-bytes %zu (use --by-path)",
                 (long long)st.st_size, max);
        goto out;
    }
    if (st.st_size == 0) { snprintf(msg, ml, "the file is empty"); goto out; }
    buf = malloc((size_t)st.st_size);
    if (!buf) { snprintf(msg, ml, "out of memory"); goto out; }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got != (size_t)st.st_size) {
        snprintf(msg, ml, "cannot read: %s", strerror(errno ? errno : EIO));
        free(buf);
        buf = NULL;
        goto out;
    }
    *len = got;
out:
    close(fd);
    return buf;
}

static void enqueue_file(enq *e, const char *path)
{
    char msg[600];
    size_t n = 0;
    e->files++;
    /* by path the file is still read: its bytes name the job */
    uint8_t *img = read_file(path, e->o->by_path ? (size_t)1 << 40 : e->o->max_image, &n, msg, sizeof msg);
    if (!img) { file_error(e, path, msg); return; }
    char real[PATH_MAX];
    if (e->o->by_path && !realpath(path, real)) {
        file_error(e, path, strerror(errno));
        free(img);
        return;
    }
    b2ipc_request rq;
    b2ipc_error err;
    msgpack_sbuffer rest, full;
    fill_request(e, &rq);
    set_image(&rq, NULL, 0, true);
    if (encode(&rq, &rest, &err) < 0) { /* parameters were checked up front */
        file_error(e, path, err.message);
        msgpack_sbuffer_destroy(&rest);
        free(img);
        return;
    }
    char id[65];
    b2q_content_id(img, n, e->op, (const uint8_t *)rest.data + 4, rest.size - 4, id);
    const msgpack_sbuffer *req = &rest;
    msgpack_sbuffer_init(&full);
    if (!e->o->by_path) {
        set_image(&rq, img, n, false);
        if (encode(&rq, &full, &err) < 0) {
            file_error(e, path, err.message);
            goto out;
        }
        req = &full;
    }
    b2q_job job = { .id = id, .src = path, .op = e->op, .req = (const uint8_t *)req->data + 4,
                    .req_len = req->size - 4, .path = e->o->by_path ? real : NULL };
    int rc = b2q_enqueue(e->q, &job, msg, sizeof msg);
    if (rc == 1) e->added++;
    else if (rc == 0) e->known++;
    else {
        b2cli_warn("%s", msg);
        e->lost = true;
    }
    if (e->o->verbose && rc >= 0) {
        if (e->progress) fputs("\r\033[K", stderr);
        b2cli_warn("%s: %s (job %.16s)", path, rc ? "enqueued" : "already enqueued", id);
    }
out:
    msgpack_sbuffer_destroy(&rest);
    msgpack_sbuffer_destroy(&full);
    free(img);
    progress(e, false);
}

static int by_name(const FTSENT **a, const FTSENT **b)
{
    return strcmp((*a)->fts_name, (*b)->fts_name);
}

static void add_source(enq *e, const char *p)
{
    struct stat st;
    if (!e->o->recursive || stat(p, &st) < 0 || !S_ISDIR(st.st_mode)) {
        enqueue_file(e, p);
        return;
    }
    char *argv[2] = { (char *)p, NULL };
    FTS *f = fts_open(argv, FTS_PHYSICAL | FTS_COMFOLLOW | FTS_NOCHDIR, by_name);
    if (!f) { file_error(e, p, strerror(errno)); return; }
    FTSENT *x;
    while (!stop_sig && !e->lost && (x = fts_read(f)) != NULL) {
        bool hidden = x->fts_level > 0 && x->fts_name[0] == '.' && !e->o->hidden;
        if (x->fts_info == FTS_D && hidden) fts_set(f, x, FTS_SKIP);
        else if ((x->fts_info == FTS_F || x->fts_info == FTS_SLNONE) && !hidden) enqueue_file(e, x->fts_path);
        else if (x->fts_info == FTS_SL && !hidden) {
            if (stat(x->fts_accpath, &st) == 0 && S_ISDIR(st.st_mode)) continue;
            enqueue_file(e, x->fts_path);
        } else if ((x->fts_info == FTS_DNR || x->fts_info == FTS_ERR) && !hidden)
            file_error(e, x->fts_path, strerror(x->fts_errno));
    }
    fts_close(f);
}

static int read_list(enq *e, const char *file)
{
    FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "re");
    if (!f) { b2cli_warn("--files-from: cannot open %s: %s", file, strerror(errno)); return -1; }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (!stop_sig && !e->lost && (n = getdelim(&line, &cap, e->o->null_sep ? '\0' : '\n', f)) > 0) {
        if (line[n - 1] == (e->o->null_sep ? '\0' : '\n')) line[--n] = '\0';
        if (n > 0) add_source(e, line);
    }
    free(line);
    if (f != stdin) fclose(f);
    return 0;
}

static int cmd_enqueue(const opts *o, char **args, int nargs)
{
    enq ee, *e = &ee;
    memset(e, 0, sizeof *e);
    e->o = o;
    e->op = o->op ? o->op : o->question ? "ask" : o->n_outputs ? "features" : "caption";
    if (strcmp(e->op, "caption") && strcmp(e->op, "ask") && strcmp(e->op, "features"))
        b2cli_usage_error("--op: '%s' is not caption, ask or features", e->op);
    if (strcmp(e->op, "ask") == 0) {
        if (!o->question || !o->question[strspn(o->question, " \t")]) b2cli_usage_error("enqueue --op ask needs --question TEXT");
        if (o->prompt) b2cli_usage_error("--prompt is for caption (ask builds it from --question)");
        snprintf(e->prompt_buf, sizeof e->prompt_buf, "Question: %s Answer:", o->question);
        e->prompt = e->prompt_buf;
    } else {
        if (o->question) b2cli_usage_error("--question is for --op ask");
        e->prompt = o->prompt;
    }
    if (strcmp(e->op, "features") == 0 && o->prompt) b2cli_usage_error("--prompt is not for features");
    if (strcmp(e->op, "features") != 0 && o->n_outputs) b2cli_usage_error("--output is for --op features");
    if (nargs == 0 && !o->files_from) b2cli_usage_error("enqueue: give at least one IMAGE or DIR, or --files-from");
    if (o->null_sep && !o->files_from) b2cli_usage_error("--null is for --files-from");
    if (o->hidden && !o->recursive) b2cli_usage_error("--hidden is for --recursive");
    /* check the request once, before anything is sent: the daemon's own rules */
    b2ipc_request rq;
    b2ipc_error err;
    msgpack_sbuffer sb;
    static const uint8_t one = 0;
    fill_request(e, &rq);
    set_image(&rq, &one, 1, false);
    if (encode(&rq, &sb, &err) < 0) {
        char flag[80] = "";
        if (err.field[0]) {
            snprintf(flag, sizeof flag, " (--%s)", err.field);
            for (char *c = flag; *c; c++) if (*c == '_') *c = '-';
            char *br = strchr(flag, '[');
            if (br) strcpy(br, ")");
        }
        msgpack_sbuffer_destroy(&sb);
        b2cli_usage_error("bad parameter%s: %s", flag, err.message);
    }
    msgpack_sbuffer_destroy(&sb);
    if (!o->max_image) ((opts *)o)->max_image = B2Q_MAX_INLINE_IMAGE;
    e->q = connect_or_exit(o);
    char msg[600];
    if (b2q_ensure_group(e->q, B2Q_DEFAULT_GROUP, msg, sizeof msg) < 0) {
        b2cli_warn("%s", msg);
        b2q_close(e->q);
        return EX_CONNECT;
    }
    e->progress = !o->no_progress && isatty(2);
    e->t0 = now_s();
    catch_signals();
    for (int i = 0; i < nargs && !stop_sig && !e->lost; i++) add_source(e, args[i]);
    if (o->files_from && !stop_sig && !e->lost && read_list(e, o->files_from) < 0) {
        b2q_close(e->q);
        return EX_USAGE_;
    }
    progress(e, true);
    if (e->progress) fputc('\n', stderr);
    b2q_close(e->q);
    b2cli_warn("%zu files: %zu enqueued, %zu already enqueued, %zu failed%s", e->files, e->added, e->known,
           e->failed, stop_sig ? " (interrupted: run again to continue)" : "");
    if (e->lost) return EX_LOST;
    if (stop_sig) return 128 + stop_sig;
    return e->failed ? EX_FAILED : EX_OK;
}

/* ---- results -------------------------------------------------------------------- */

static json_t *nest(const float *d, const uint64_t *shape, uint32_t ndim, size_t *at)
{
    json_t *a = json_array();
    for (uint64_t i = 0; i < shape[0]; i++) {
        if (ndim == 1) json_array_append_new(a, json_real(d[(*at)++]));
        else json_array_append_new(a, nest(d, shape + 1, ndim - 1, at));
    }
    return a;
}

/* The line of one result: {"path": src, fields..., "job": id}. */
static char *result_line(const char *id, const char *src, const uint8_t *res, size_t len)
{
    json_t *f = json_object();
    json_object_set_new(f, "path", json_string(src));
    b2ipc_reply rp;
    b2ipc_error err;
    char raw[64] = "";
    if (b2ipc_decode_reply(res, len, &rp, &err) < 0) {
        json_t *er = json_object();
        json_object_set_new(er, "code", json_string("protocol_error"));
        json_object_set_new(er, "message", json_string(err.message));
        json_object_set_new(f, "error", er);
    } else if (rp.type == B2IPC_REPLY_DONE) {
        b2cli_seq seqs[B2CLI_MAX_SEQS];
        const uint32_t n = rp.done.n_seqs < B2CLI_MAX_SEQS ? rp.done.n_seqs : B2CLI_MAX_SEQS;
        for (uint32_t i = 0; i < n; i++)
            seqs[i] = (b2cli_seq){rp.done.seqs[i].text, rp.done.seqs[i].text_len, rp.done.seqs[i].ids,
                                  rp.done.seqs[i].n_ids, b2ipc_finish_name(rp.done.seqs[i].finish)};
        b2cli_json_generation(f, seqs, n, rp.done.timings.total_ms, rp.done.cached);
        if (rp.done.has_seed) snprintf(raw, sizeof raw, ",\"seed\":%" PRIu64, rp.done.seed);
    } else if (rp.type == B2IPC_REPLY_FEATURES) {
        for (uint32_t i = 0; i < rp.features.n_tensors; i++) {
            const b2ipc_tensor *t = &rp.features.tensors[i];
            if (strcmp(t->dtype, "float32") != 0) continue;
            size_t at = 0;
            uint64_t shape[B2IPC_MAX_TENSOR_DIMS];
            uint32_t nd = t->ndim;
            memcpy(shape, t->shape, sizeof shape);
            if (nd > 1 && shape[0] == 1) { memmove(shape, shape + 1, sizeof(uint64_t) * (nd - 1)); nd--; }
            json_object_set_new(f, t->name, nest(t->data, shape, nd, &at));
        }
        json_object_set_new(f, "cached", json_boolean(rp.features.cached));
        json_object_set_new(f, "ms", json_real(b2cli_ms3(rp.features.timings.total_ms)));
    } else if (rp.type == B2IPC_REPLY_ERROR) {
        json_t *er = json_object();
        json_object_set_new(er, "code", json_string(rp.error.code_name ? rp.error.code_name
                                                    : b2ipc_code_name(rp.error.code)));
        json_object_set_new(er, "message", json_string(rp.error.message ? rp.error.message : ""));
        json_object_set_new(f, "error", er);
    }
    b2ipc_reply_free(&rp);
    json_object_set_new(f, "job", json_string(id));
    char *s = json_dumps(f, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(f);
    if (!s) return NULL;
    if (raw[0]) { /* 64-bit seeds as exact integers, after "job" */
        size_t n = strlen(s);
        char *t = malloc(n + strlen(raw) + 1);
        if (t) {
            memcpy(t, s, n - 1);
            strcpy(t + n - 1, raw);
            strcat(t, "}");
        }
        free(s);
        s = t;
    }
    return s;
}

/* Job ids already written (out of memory: one may be written twice). */
static void seen_add(b2_strset *seen, const char *id)
{
    char *k = strdup(id);
    if (k) b2_strset_add(seen, k);
}

/* The "job" of each whole line of an earlier output; a cut last line is
 * dropped from the file (truncated) so that appending stays whole. */
static int read_earlier(const char *path, b2_strset *seen)
{
    FILE *f = fopen(path, "r+e");
    if (!f) return errno == ENOENT ? 0 : -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    off_t whole = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n') break;
        whole += n;
        json_t *j = json_loads(line, 0, NULL);
        const char *id = j ? json_string_value(json_object_get(j, "job")) : NULL;
        if (id) seen_add(seen, id);
        json_decref(j);
    }
    free(line);
    int rc = ftruncate(fileno(f), whole);
    fclose(f);
    return rc;
}

static int cmd_results(const opts *o)
{
    b2_strset seen = { 0 };
    int out = 1, status = EX_OK;
    if (o->output) {
        if (read_earlier(o->output, &seen) < 0) {
            b2cli_warn("-o %s: %s", o->output, strerror(errno));
            return EX_USAGE_;
        }
        out = open(o->output, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (out < 0) {
            b2cli_warn("-o %s: %s", o->output, strerror(errno));
            b2_strset_free(&seen);
            return EX_USAGE_;
        }
    }
    b2q_conn *q = connect_or_exit(o);
    redisContext *c = b2q_redis(q);
    char key[320], last[64] = "-";
    snprintf(key, sizeof key, "%s:results", b2q_stream(q));
    catch_signals();
    size_t written = 0, skipped = 0;
    bool caught_up = false;
    while (!stop_sig) {
        redisReply *r;
        if (!caught_up) {
            char start[70];
            snprintf(start, sizeof start, "%s%s", strcmp(last, "-") ? "(" : "", last);
            r = redisCommand(c, "XRANGE %s %s + COUNT 200", key, start);
        } else {
            b2q_set_timeout(q, 0);
            r = redisCommand(c, "XREAD COUNT 200 BLOCK 1000 STREAMS %s %s", key, strcmp(last, "-") ? last : "0-0");
        }
        if (!r) { b2cli_warn("Redis: %s", c->errstr); status = EX_LOST; break; }
        if (r->type == REDIS_REPLY_ERROR) { b2cli_warn("Redis: %s", r->str); freeReplyObject(r); status = EX_LOST; break; }
        const redisReply *es = r;
        if (caught_up) es = r->type == REDIS_REPLY_ARRAY && r->elements == 1 ? r->element[0]->element[1] : NULL;
        size_t got = es && es->type == REDIS_REPLY_ARRAY ? es->elements : 0;
        for (size_t i = 0; i < got; i++) {
            const redisReply *e = es->element[i], *kv = e->element[1];
            snprintf(last, sizeof last, "%s", e->element[0]->str);
            const char *id = NULL, *src = "";
            const redisReply *res = NULL;
            for (size_t k = 0; kv && k + 1 < kv->elements; k += 2) {
                const char *name = kv->element[k]->str;
                if (!strcmp(name, "id")) id = kv->element[k + 1]->str;
                else if (!strcmp(name, "src")) src = kv->element[k + 1]->str;
                else if (!strcmp(name, "res")) res = kv->element[k + 1];
            }
            if (!id || !res) continue;
            if (b2_strset_has(&seen, id)) { skipped++; continue; }
            seen_add(&seen, id);
            char *line = result_line(id, src, (const uint8_t *)res->str, res->len);
            if (!line) continue;
            size_t n = strlen(line), off = 0;
            line[n] = '\n'; /* over the terminator: one write per line */
            while (off < n + 1) {
                ssize_t w = write(out, line + off, n + 1 - off);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) { b2cli_warn("cannot write the output: %s", strerror(errno)); status = EX_FAILED; break; }
                off += (size_t)w;
            }
            written++;
            free(line);
        }
        freeReplyObject(r);
        if (status != EX_OK) break;
        if (!caught_up && got < 200) {
            if (!o->follow) break;
            caught_up = true;
        }
    }
    if (o->verbose || o->output)
        b2cli_warn("%zu result%s written%s%zu already in the output", written, written == 1 ? "" : "s",
               skipped ? ", " : "; ", skipped);
    b2q_close(q);
    b2_strset_free(&seen);
    if (o->output && close(out) < 0) status = EX_FAILED;
    return status;
}

/* ---- queue-status --------------------------------------------------------------- */

static long long int_of(redisContext *c, const char *fmt, const char *a)
{
    redisReply *r = redisCommand(c, fmt, a);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r) freeReplyObject(r);
    return v;
}

static const redisReply *map_get(const redisReply *m, const char *k)
{
    for (size_t i = 0; m && m->type == REDIS_REPLY_ARRAY && i + 1 < m->elements; i += 2)
        if (m->element[i]->type == REDIS_REPLY_STRING && !strcmp(m->element[i]->str, k)) return m->element[i + 1];
    return NULL;
}

static int cmd_status(const opts *o)
{
    b2q_conn *q = connect_or_exit(o);
    redisContext *c = b2q_redis(q);
    const char *s = b2q_stream(q);
    char k[320];
    snprintf(k, sizeof k, "%s:jobs", s);
    long long enqueued = int_of(c, "HLEN %s", k);
    long long left = int_of(c, "XLEN %s", s);
    snprintf(k, sizeof k, "%s:results", s);
    long long done = int_of(c, "XLEN %s", k);
    snprintf(k, sizeof k, "%s:dead", s);
    long long dead = int_of(c, "XLEN %s", k);
    if (enqueued < 0 || left < 0) {
        b2cli_warn("Redis: %s", c->errstr[0] ? c->errstr : "unexpected reply");
        b2q_close(q);
        return EX_LOST;
    }
    /* rate: results of the last minute (entry ids are millisecond times) */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long now_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    char since[32];
    snprintf(since, sizeof since, "%lld", now_ms - 60000);
    snprintf(k, sizeof k, "%s:results", s);
    redisReply *r = redisCommand(c, "XRANGE %s %s + COUNT 100000", k, since);
    long long minute = r && r->type == REDIS_REPLY_ARRAY ? (long long)r->elements : 0;
    if (r) freeReplyObject(r);
    json_t *st = json_object();
    json_object_set_new(st, "stream", json_string(s));
    json_object_set_new(st, "enqueued", json_integer(enqueued));
    json_object_set_new(st, "done", json_integer(done - (dead > 0 ? dead : 0)));
    json_object_set_new(st, "dead_letters", json_integer(dead > 0 ? dead : 0));
    json_object_set_new(st, "rate_per_s", json_real(minute / 60.0));
    long long pending = 0, waiting = left;
    json_t *cons = json_array();
    r = redisCommand(c, "XINFO GROUPS %s", s);
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *g = r->element[i], *name = map_get(g, "name"), *pend = map_get(g, "pending");
        if (!name || strcmp(name->str, B2Q_DEFAULT_GROUP) != 0) continue;
        pending = pend ? pend->integer : 0;
        redisReply *cr = redisCommand(c, "XINFO CONSUMERS %s %s", s, name->str);
        for (size_t j = 0; cr && cr->type == REDIS_REPLY_ARRAY && j < cr->elements; j++) {
            const redisReply *cn = map_get(cr->element[j], "name"), *cp = map_get(cr->element[j], "pending"),
                             *ci = map_get(cr->element[j], "idle");
            json_t *one = json_object();
            json_object_set_new(one, "name", json_string(cn ? cn->str : "?"));
            json_object_set_new(one, "in_flight", json_integer(cp ? cp->integer : 0));
            json_object_set_new(one, "idle_s", json_real(ci ? ci->integer / 1000.0 : 0));
            json_array_append_new(cons, one);
        }
        if (cr) freeReplyObject(cr);
    }
    if (r) freeReplyObject(r);
    waiting = left - pending;
    json_object_set_new(st, "waiting", json_integer(waiting < 0 ? 0 : waiting));
    json_object_set_new(st, "in_flight", json_integer(pending));
    json_object_set_new(st, "consumers", cons);
    if (o->json) {
        char *t = json_dumps(st, JSON_COMPACT | JSON_REAL_PRECISION(6));
        if (t) puts(t);
        free(t);
    } else {
        printf("stream %s, group %s\n", s, B2Q_DEFAULT_GROUP);
        printf("  enqueued      %lld\n  waiting       %lld\n  in flight     %lld\n  done          %lld\n"
               "  dead letters  %lld\n  rate          %.2f jobs/s (last minute)\n",
               enqueued, waiting < 0 ? 0 : waiting, pending, done - (dead > 0 ? dead : 0), dead > 0 ? dead : 0,
               minute / 60.0);
        size_t i;
        json_t *one;
        if (json_array_size(cons)) printf("consumers:\n");
        json_array_foreach(cons, i, one)
            printf("  %-40s in flight %-4lld idle %.1f s\n", json_string_value(json_object_get(one, "name")),
                   (long long)json_integer_value(json_object_get(one, "in_flight")),
                   json_real_value(json_object_get(one, "idle_s")));
    }
    json_decref(st);
    b2q_close(q);
    return EX_OK;
}

int main(int argc, char **argv)
{
    b2cli_set_prog(prog, "blip2ctl");
    if (argc < 2) b2cli_usage_error("missing command (enqueue, results or queue-status)");
    const char *cmd = argv[1];
    snprintf(prog, sizeof prog, "blip2ctl %s", cmd);
    opts o;
    memset(&o, 0, sizeof o);
    b2ipc_gen_params_default(&o.params);
    parse_args(&o, argc - 1, argv + 1);
    char **args = argv + 1 + optind;
    int nargs = argc - 1 - optind;
    if (!strcmp(cmd, "enqueue")) return cmd_enqueue(&o, args, nargs);
    if (nargs) b2cli_usage_error("%s takes no arguments ('%s')", cmd, args[0]);
    if (!strcmp(cmd, "results")) return cmd_results(&o);
    if (!strcmp(cmd, "queue-status")) return cmd_status(&o);
    b2cli_usage_error("unknown command '%s' (enqueue, results or queue-status)", cmd);
}
