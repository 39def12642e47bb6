/*
 * test_chaos.c - allocation failure injection (like jansson's test_chaos):
 * for N = 1, 2, 3 ... each operation runs with its Nth allocation failing,
 * until it runs through without reaching N.  Every injected failure must
 * come back as an error code (never a crash, never success with garbage),
 * and nothing allocated during the failed call may stay allocated.
 *
 *   operation -> our code calls malloc/calloc/realloc/strdup
 *             -> linked with -Wl,--wrap=malloc,... (Makefile.am), those
 *                calls land in __wrap_* here: count, fail the Nth, and keep
 *                a table of the blocks still live -> __real_*
 *
 * Only our code is wrapped: --wrap rewrites the references of the objects
 * linked into this program, that is model/ and libipc/ (noinst convenience
 * libraries) and this file, plus msgpack-c's inline sbuffer functions that
 * compile into libipc.  OpenBLAS, libvips, GLib, PCRE2 and jansson are
 * shared libraries and keep the real allocator: GLib's g_malloc aborts on
 * failure by design, so injecting there would test GLib, not us.
 *
 * The operations: libipc's decoder (a valid generate request) and encoder
 * (done, token, status and error replies), the frame reader, blip2_model_load
 * of the golden opt-tiny, blip2_tokenize / blip2_detokenize,
 * blip2_preprocess of a golden image, blip2_encode_image, blip2_generate
 * (greedy and beam search).  An operation with more than 64 allocations
 * (the model load: ~175, 0.15 s each) is tried at N = 1..16, the last 8
 * and a stride between, unless CHAOS_FULL=1 asks for every N.  msgpack-c is
 * shared too, but it reports failures, so its allocating entry points
 * (msgpack_zone_new, _malloc_expand, msgpack_unpack_next) are wrapped to
 * fail as if their malloc had.  Leaks: the table here catches blocks our
 * wrapped calls allocated and did not free; run under ASan/LSan for the rest.
 */
#include "blip2.h"
#include "blip2ipc.h"
#include "tap.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>
#include <time.h>

/* The functions the link wraps (-Wl,--wrap, Makefile.am): each is
 * __real_NAME (the library's) and __wrap_NAME (below). */
#define WRAPPED(X)                                                                  \
    X(void *, malloc, (size_t n))                                                   \
    X(void *, calloc, (size_t k, size_t n))                                         \
    X(void *, realloc, (void *p, size_t n))                                         \
    X(char *, strdup, (const char *s))                                              \
    X(void, free, (void *p))                                                        \
    X(msgpack_zone *, msgpack_zone_new, (size_t chunk_size))                        \
    X(void *, msgpack_zone_malloc_expand, (msgpack_zone *z, size_t size))           \
    X(void, msgpack_zone_free, (msgpack_zone *z))                                   \
    X(msgpack_unpack_return, msgpack_unpack_next,                                   \
      (msgpack_unpacked *res, const char *data, size_t len, size_t *off))
#define DECLARE(ret, name, params) ret __real_##name params; ret __wrap_##name params;
WRAPPED(DECLARE)
#undef DECLARE

/* ---- the injecting allocator ---- */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int armed;          /* count (and fail) allocations */
static long fail_at;       /* the call that fails; 0 = none */
static long calls;         /* allocations counted while armed */
static int injected;       /* the failure happened */

#define LIVE_CAP (1u << 18)
static void *live[LIVE_CAP]; /* open addressing; (void *)1 = deleted */
static long n_live;

static size_t slot_of(void *p)
{
    return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull >> 46) & (LIVE_CAP - 1);
}

static void live_add(void *p)
{
    if (!p) return;
    size_t i = slot_of(p);
    while (live[i] && live[i] != (void *)1) i = (i + 1) & (LIVE_CAP - 1);
    live[i] = p;
    n_live++;
}

static void live_del(void *p)
{
    if (!p) return;
    for (size_t i = slot_of(p); live[i]; i = (i + 1) & (LIVE_CAP - 1))
        if (live[i] == p) { live[i] = (void *)1; n_live--; return; }
}

/* Whether this allocation fails; counts it when armed. */
static int fail_now(void)
{
    if (!armed) return 0;
    if (++calls == fail_at) { injected = 1; return 1; }
    return 0;
}

void *__wrap_malloc(size_t n)
{
    pthread_mutex_lock(&mu);
    void *p = fail_now() ? NULL : __real_malloc(n);
    if (armed) live_add(p);
    pthread_mutex_unlock(&mu);
    return p;
}

void *__wrap_calloc(size_t k, size_t n)
{
    pthread_mutex_lock(&mu);
    void *p = fail_now() ? NULL : __real_calloc(k, n);
    if (armed) live_add(p);
    pthread_mutex_unlock(&mu);
    return p;
}

void *__wrap_realloc(void *old, size_t n)
{
    pthread_mutex_lock(&mu);
    void *p = fail_now() ? NULL : __real_realloc(old, n);
    if (p) {
        /* a block from before the window that moves is not ours to count */
        long before = n_live;
        live_del(old);
        if (armed || n_live < before) live_add(p);
    }
    pthread_mutex_unlock(&mu);
    return p;
}

char *__wrap_strdup(const char *s)
{
    pthread_mutex_lock(&mu);
    char *p = fail_now() ? NULL : __real_strdup(s);
    if (armed) live_add(p);
    pthread_mutex_unlock(&mu);
    return p;
}

void __wrap_free(void *p)
{
    pthread_mutex_lock(&mu);
    live_del(p);
    pthread_mutex_unlock(&mu);
    __real_free(p);
}

/* msgpack-c (a shared library) reports its allocation failures: fail its
 * entry points that allocate, as if their malloc had failed, and track the
 * zones they make (a zone not freed is a leak of ours). */
msgpack_zone *__wrap_msgpack_zone_new(size_t chunk_size)
{
    pthread_mutex_lock(&mu);
    int f = fail_now();
    pthread_mutex_unlock(&mu);
    msgpack_zone *z = f ? NULL : __real_msgpack_zone_new(chunk_size);
    pthread_mutex_lock(&mu);
    if (armed) live_add(z);
    pthread_mutex_unlock(&mu);
    return z;
}

void *__wrap_msgpack_zone_malloc_expand(msgpack_zone *z, size_t size)
{
    pthread_mutex_lock(&mu);
    int f = fail_now();
    pthread_mutex_unlock(&mu);
    return f ? NULL : __real_msgpack_zone_malloc_expand(z, size);
}

void __wrap_msgpack_zone_free(msgpack_zone *z)
{
    pthread_mutex_lock(&mu);
    live_del(z);
    pthread_mutex_unlock(&mu);
    __real_msgpack_zone_free(z);
}

msgpack_unpack_return __wrap_msgpack_unpack_next(msgpack_unpacked *res, const char *data, size_t len, size_t *off)
{
    pthread_mutex_lock(&mu);
    int f = fail_now();
    pthread_mutex_unlock(&mu);
    return f ? MSGPACK_UNPACK_NOMEM_ERROR : __real_msgpack_unpack_next(res, data, len, off);
}

static void arm(long n)
{
    pthread_mutex_lock(&mu);
    fail_at = n;
    calls = 0;
    injected = 0;
    armed = 1;
    pthread_mutex_unlock(&mu);
}

static void disarm(void)
{
    pthread_mutex_lock(&mu);
    armed = 0;
    pthread_mutex_unlock(&mu);
}

/* ---- the driver ---- */

/* One operation: run() returns 0 or a negative code and leaves anything it
 * made for undo() (called after success only, outside the window). */
typedef struct chaos_op {
    const char *name;
    int (*run)(void);
    void (*undo)(void);
    int enomem;  /* the code expected when an allocation fails */
} chaos_op;

/* Runs op with its Nth allocation failing, for every N until a run does
 * not reach N (with CHAOS_FULL=1, or when the operation allocates at most
 * 64 times); otherwise for N = 1..16, the last 8 and a stride between, at
 * most 40 runs, so that make check stays fast.  Each failed run must return
 * the operation's out-of-memory code and leave nothing allocated. */
static void chaos(const chaos_op *op, int full)
{
    long tried = 0, bad = 0, other = 0;
    char why[200] = "";
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    arm(0);
    int rc = op->run();
    disarm();
    long total = calls;
    if (rc < 0) {
        ok(0, "%s: fails (%d) with no failure injected", op->name, rc);
        return;
    }
    op->undo();
    long stride = full || total <= 64 ? 1 : (total - 24) / 16 + 1;
    for (long n = 1; n <= total; n = n < 16 || n > total - 8 || stride == 1 ? n + 1 : n + stride) {
        long live0 = n_live;
        arm(n);
        rc = op->run();
        disarm();
        tried++;
        if (!injected) {
            bad++;
            snprintf(why, sizeof why, "allocation %ld was not reached (%ld of %ld)", n, calls, total);
        } else if (rc >= 0) {
            op->undo(); /* a failure the code can work around: fine if the result is complete */
        } else {
            if (rc != op->enomem) other++;
            if (n_live != live0) {
                bad++;
                snprintf(why, sizeof why, "allocation %ld failed: %ld block(s) leaked", n, n_live - live0);
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    diag("%s: %ld allocations, %ld runs, %.2f s", op->name, total, tried,
         (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    if (other) diag("%s: %ld failures returned another code than out-of-memory", op->name, other);
    ok(bad == 0 && other == 0 && total > 0, "%s: %s%ld allocation failures return out-of-memory without leaks%s%s",
       op->name, tried == total ? "all " : "", tried, bad ? ": " : "", why);
}

/* ---- fixtures ---- */
static const char *gdir;
static blip2_model *model;
static blip2_model *loaded;
static uint8_t *req_frame;    /* a generate request payload */
static size_t req_len;
static uint8_t *png;
static size_t png_len;
static float *px, *qe;
static msgpack_sbuffer sb;
static b2ipc_request rq;
static int32_t *ids;
static size_t n_ids;
static char *text;
static blip2_result res;
static blip2_error err;

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static int op_decode(void)
{
    b2ipc_error e;
    return b2ipc_decode_request(req_frame + 4, req_len - 4, NULL, &rq, &e);
}
static void undo_decode(void) { b2ipc_request_free(&rq); }

static int op_encode(void)
{
    b2ipc_error e;
    uint32_t tok[] = {2, 100, 200, 300, 2};
    b2ipc_seq seqs[2] = {{"a cat on a couch", 16, tok, 5, B2IPC_FINISH_EOS},
                         {"two cats", 8, tok, 3, B2IPC_FINISH_LENGTH}};
    b2ipc_reply rp;
    msgpack_sbuffer_init(&sb);
    b2ipc_reply_init(&rp, B2IPC_REPLY_DONE);
    rp.id = 7;
    rp.done.seqs = seqs;
    rp.done.n_seqs = 2;
    rp.done.prompt_tokens = 3;
    int rc = b2ipc_encode_reply(&sb, &rp, &e);
    if (rc < 0) goto fail;
    b2ipc_reply_init(&rp, B2IPC_REPLY_TOKEN);
    rp.id = 7;
    rp.token.token = 100;
    rp.token.text = " cat";
    rp.token.text_len = 4;
    if ((rc = b2ipc_encode_reply(&sb, &rp, &e)) < 0) goto fail;
    b2ipc_reply_init(&rp, B2IPC_REPLY_STATUS);
    rp.id = 8;
    rp.status.version = "0.1.0";
    rp.status.protocol = 1;
    rp.status.model.path = "/var/lib/blip2/model";
    rp.status.model.name = "opt-tiny";
    rp.status.model.family = "opt";
    rp.status.model.dtype = "f32";
    if ((rc = b2ipc_encode_reply(&sb, &rp, &e)) < 0) goto fail;
    if ((rc = b2ipc_encode_error(&sb, true, 9, B2IPC_EBUSY, NULL, "the queue is full")) < 0) goto fail;
    return 0;
fail:
    msgpack_sbuffer_destroy(&sb);
    return rc;
}
static void undo_encode(void) { msgpack_sbuffer_destroy(&sb); }

static int op_reader(void)
{
    b2ipc_reader r;
    uint8_t *payload = NULL;
    size_t len, used, off = 0;
    int rc = 0;
    b2ipc_reader_init(&r, 0);
    /* the request frame in uneven pieces, then once more whole */
    while (off < req_len && rc == 0) {
        size_t k = req_len - off < 1000 ? req_len - off : 1000;
        rc = b2ipc_reader_feed(&r, req_frame + off, k, &used);
        off += used;
    }
    if (rc == 1) rc = b2ipc_reader_take(&r, &payload, &len);
    if (rc == 0 && (rc = b2ipc_reader_feed(&r, req_frame, req_len, &used)) == 1)
        rc = 0;
    else if (rc == 0)
        rc = -1000; /* a complete frame must be complete */
    b2ipc_reader_destroy(&r);
    free(payload);
    return rc;
}
static void undo_none(void) {}

static int op_load(void)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/opt-tiny", gdir);
    return blip2_model_load(&loaded, p, NULL, &err);
}
static void undo_load(void) { blip2_model_free(loaded); loaded = NULL; }

static int op_tokenize(void)
{
    int rc = blip2_tokenize(model, "  Décris l'image\t: 猫？ 🐱 naïve   café…\n Answer:", 1, &ids, &n_ids, &err);
    if (rc < 0) return rc;
    rc = blip2_detokenize(model, ids, n_ids, 1, &text, &err);
    if (rc < 0) { free(ids); ids = NULL; }
    return rc;
}
static void undo_tokenize(void) { free(ids); free(text); ids = NULL; text = NULL; }

static int op_preprocess(void) { return blip2_preprocess(model, png, png_len, NULL, px, &err); }

static int op_encode_image(void) { return blip2_encode_image(model, px, 1, qe, NULL, &err); }

static int generate(int beams)
{
    blip2_gen_params gp;
    blip2_gen_params_default(&gp);
    gp.max_new_tokens = 5;
    gp.num_beams = beams;
    blip2_request r = {.query_embeds = qe, .prompt = "Question: how many cats are there? Answer:"};
    return blip2_generate(model, &r, 1, &gp, NULL, NULL, &res, &err);
}
static int op_greedy(void) { return generate(1); }
static int op_beam(void) { return generate(3); }
static void undo_generate(void) { blip2_result_free(&res); }

int main(void)
{
    gdir = getenv("GOLDEN_DIR");
    if (!gdir) gdir = "tests/golden";
    char p[1024];
    snprintf(p, sizeof p, "%s/opt-tiny", gdir);
    if (blip2_model_load(&model, p, NULL, &err) < 0) {
        printf("1..0 # SKIP cannot load %s: %s\n", p, err.text);
        return 0;
    }
    snprintf(p, sizeof p, "%s/images/chelsea.png", gdir);
    png = slurp(p, &png_len);
    px = malloc(sizeof(float) * blip2_pixel_values_len(model));
    qe = malloc(sizeof(float) * blip2_query_embeds_len(model));
    if (!png || !px || !qe || blip2_preprocess(model, png, png_len, NULL, px, &err) < 0 ||
        blip2_encode_image(model, px, 1, qe, NULL, &err) < 0) {
        printf("1..0 # SKIP cannot prepare the fixtures: %s\n", err.text);
        return 0;
    }

    /* a generate request with every kind of field */
    b2ipc_request g;
    b2ipc_error e;
    const char *stops[] = {"cat", "\n"};
    b2ipc_request_init(&g, B2IPC_OP_GENERATE);
    g.id = 42;
    g.generate.image = png;
    g.generate.image_len = png_len;
    g.generate.prompt = "Question: how many cats are there? Answer:";
    g.generate.stream = true;
    g.generate.params.max_new_tokens = 30;
    g.generate.params.stop = stops;
    g.generate.params.n_stop = 2;
    msgpack_sbuffer_init(&sb);
    if (b2ipc_encode_request(&sb, &g, NULL, &e) < 0) {
        printf("1..0 # SKIP cannot encode the request\n");
        return 0;
    }
    req_frame = (uint8_t *)sb.data;
    req_len = sb.size;
    sb.data = NULL;

    static const chaos_op ops[] = {
        {"b2ipc_decode_request (generate)", op_decode, undo_decode, B2IPC_ENOMEM},
        {"b2ipc_encode_reply / _error (done, token, status, error)", op_encode, undo_encode, B2IPC_ENOMEM},
        {"b2ipc_reader (a frame in pieces, then whole)", op_reader, undo_none, B2IPC_ENOMEM},
        {"blip2_model_load (opt-tiny)", op_load, undo_load, BLIP2_ENOMEM},
        {"blip2_tokenize + blip2_detokenize", op_tokenize, undo_tokenize, BLIP2_ENOMEM},
        {"blip2_preprocess (chelsea.png)", op_preprocess, undo_none, BLIP2_ENOMEM},
        {"blip2_encode_image", op_encode_image, undo_none, BLIP2_ENOMEM},
        {"blip2_generate greedy (5 tokens)", op_greedy, undo_generate, BLIP2_ENOMEM},
        {"blip2_generate beam search (3 beams, 5 tokens)", op_beam, undo_generate, BLIP2_ENOMEM},
    };
    const char *full = getenv("CHAOS_FULL");
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) chaos(&ops[i], full && *full == '1');

    free(req_frame);
    free(png);
    free(px);
    free(qe);
    blip2_model_free(model);
    return tap_done();
}
