/*
 * test_queue_worker.c - the --queue worker (daemon/queue.c) against a real
 * redis-server (a Unix socket in a temporary directory, AOF on), with a
 * stand-in for the daemon's scheduler: a thread that answers each job with
 * a reply computed from its image bytes (or an error for images starting
 * with "BAD").  What it checks, at the Redis level, without a model:
 *   - 3 workers, 300 jobs: every job exactly one result, the right one;
 *     re-enqueueing is a no-op; S holds nothing afterwards;
 *   - a worker that stops answering (a hung or dead host): its jobs are
 *     reclaimed by another worker after --queue-idle and finished once;
 *   - poison jobs: bad MessagePack, bad parameters, an op that does not
 *     match, an oversized request, a path outside the root, no path root,
 *     a corrupt image: dead letters with their codes, the rest still done;
 *   - a job that always fails with a passing error: a dead letter after
 *     max tries deliveries, with its last error;
 *   - path jobs under the root are read through the allowed root.
 * TAP output.  Needs redis-server in PATH (skips otherwise).
 */
#include "b2q.h"
#include "blip2ipc.h"
#include "queue.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[256], sock[300], url[400];
static pid_t redis_pid = -1;

static void start_redis(void)
{
    unlink(sock); /* a killed server leaves its socket behind */
    redis_pid = fork();
    if (redis_pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock, "--dir", dir,
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        struct stat st;
        if (stat(sock, &st) == 0) return;
        usleep(25000);
    }
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* ---- the stand-in scheduler ------------------------------------------------------- */

typedef struct fjob {
    uint64_t token;
    b2d_queue *w;
    uint8_t *img;
    size_t len;
    int op;
    struct fjob *next;
} fjob;

typedef struct fake {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fjob *head;
    int stop, mute;       /* mute: take jobs, never answer (a hung worker) */
    int always_internal;  /* answer every job with internal */
    b2d_queue *w;
    pthread_t th;
    int answered;
} fake;

/* The text of a job: "len <n> sum <s>" over its bytes. */
static void expected_text(const uint8_t *p, size_t n, char *out, size_t cap)
{
    unsigned long s = 0;
    for (size_t i = 0; i < n; i++) s = s * 31 + p[i];
    snprintf(out, cap, "len %zu sum %lu", n, s);
}

static void answer(fake *f, fjob *j)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (f->always_internal) {
        b2ipc_encode_error(&sb, true, 0, B2IPC_EINTERNAL, NULL, "a stand-in failure");
    } else if (j->len >= 3 && memcmp(j->img, "BAD", 3) == 0) {
        b2ipc_encode_error(&sb, true, 0, B2IPC_EBAD_IMAGE, NULL, "not an image");
    } else {
        char text[80];
        expected_text(j->img, j->len, text, sizeof text);
        uint32_t ids[2] = { 2, (uint32_t)j->len };
        b2ipc_seq seq = { .text = text, .text_len = strlen(text), .ids = ids, .n_ids = 2,
                          .finish = B2IPC_FINISH_LENGTH };
        b2ipc_reply rp;
        b2ipc_reply_init(&rp, B2IPC_REPLY_DONE);
        rp.done.seqs = &seq;
        rp.done.n_seqs = 1;
        b2ipc_encode_reply(&sb, &rp, NULL);
    }
    b2d_queue_reply(j->w, j->token, (const uint8_t *)sb.data + 4, sb.size - 4);
    msgpack_sbuffer_destroy(&sb);
}

static void *fake_main(void *arg)
{
    fake *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->stop && (!f->head || f->mute)) pthread_cond_wait(&f->cv, &f->mu);
        if (f->stop) break;
        fjob *j = f->head;
        f->head = j->next;
        pthread_mutex_unlock(&f->mu);
        sleep_ms(2);
        answer(f, j);
        free(j->img);
        free(j);
        pthread_mutex_lock(&f->mu);
        f->answered++;
    }
    while (f->head) {
        fjob *j = f->head;
        f->head = j->next;
        free(j->img);
        free(j);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static int fake_submit(void *ctx, const b2ipc_request *rq, int fd, uint64_t token)
{
    fake *f = ctx;
    fjob *j = calloc(1, sizeof *j);
    const uint8_t *img = rq->op == B2IPC_OP_GENERATE ? rq->generate.image : rq->features.image;
    size_t len = rq->op == B2IPC_OP_GENERATE ? rq->generate.image_len : rq->features.image_len;
    j->token = token;
    j->w = f->w;
    if (fd >= 0) {
        struct stat st;
        fstat(fd, &st);
        j->img = malloc((size_t)st.st_size + 1);
        j->len = (size_t)read(fd, j->img, (size_t)st.st_size);
        close(fd);
    } else {
        j->img = malloc(len);
        memcpy(j->img, img, len);
        j->len = len;
    }
    pthread_mutex_lock(&f->mu);
    j->next = f->head;
    f->head = j;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static fake *fake_start(const char *consumer, double idle_s, unsigned tries, const char *root, int mute,
                        int internal)
{
    fake *f = calloc(1, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->mute = mute;
    f->always_internal = internal;
    b2d_queue_opts o = { .url = url, .consumer = consumer, .window = 4, .idle_s = idle_s, .max_tries = tries,
                         .allow_paths = root, .max_frame = 1 << 20 };
    o.lim.max_image_bytes = 1 << 20;
    char msg[256];
    pthread_create(&f->th, NULL, fake_main, f);
    pthread_mutex_lock(&f->mu);
    if (b2d_queue_start(&f->w, &o, fake_submit, NULL, f, msg, sizeof msg) < 0) {
        diag("b2d_queue_start: %s", msg);
        exit(1);
    }
    pthread_mutex_unlock(&f->mu);
    return f;
}

static void fake_stop(fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->th, NULL);
    b2d_queue_stop(f->w, 5);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

/* ---- helpers over a plain connection --------------------------------------------------- */

static b2q_conn *conn(void)
{
    b2q_url u;
    char msg[256];
    b2q_conn *q = NULL;
    if (b2q_url_parse(url, &u, msg, sizeof msg) < 0) exit(1);
    for (int i = 0; i < 200; i++) { /* a restarted server answers LOADING for a moment */
        if (b2q_connect(&u, 5000, &q, msg, sizeof msg) == 0 && b2q_ensure_group(q, B2Q_DEFAULT_GROUP, msg, sizeof msg) == 0)
            return q;
        b2q_close(q);
        q = NULL;
        sleep_ms(50);
    }
    diag("%s", msg);
    exit(1);
}

static void make_image(int i, uint8_t *buf, size_t *len)
{
    *len = 100 + (size_t)(i * 7) % 300;
    for (size_t k = 0; k < *len; k++) buf[k] = (uint8_t)(i * 131 + k * 17);
    buf[0] = 'I';
}

/* The caption request blip2ctl enqueue stores for a job (the image goes
 * apart, as bytes or a path), encoded into sb with its 4-byte prefix; the
 * caller destroys sb. */
static void caption_fd_request(msgpack_sbuffer *sb)
{
    b2ipc_request rq;
    b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
    rq.generate.image_fd = true;
    msgpack_sbuffer_init(sb);
    b2ipc_encode_request(sb, &rq, NULL, NULL);
}

/* The id blip2ctl enqueue gives a caption job of these bytes. */
static void job_id(const uint8_t *img, size_t len, char id[65])
{
    msgpack_sbuffer sb;
    caption_fd_request(&sb);
    b2q_content_id(img, len, "caption", (const uint8_t *)sb.data + 4, sb.size - 4, id);
    msgpack_sbuffer_destroy(&sb);
}

/* Enqueues a caption job for the bytes; returns b2q_enqueue's result. */
static int enqueue_bytes(b2q_conn *q, const char *src, const uint8_t *img, size_t len, const char *path)
{
    b2ipc_request rq;
    b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
    if (path) rq.generate.image_fd = true;
    else rq.generate.image = img, rq.generate.image_len = len;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_encode_request(&sb, &rq, NULL, NULL);
    char id[65], msg[256];
    job_id(img, len, id);
    b2q_job job = { .id = id, .src = src, .op = "caption", .req = (const uint8_t *)sb.data + 4,
                    .req_len = sb.size - 4, .path = path };
    int rc = b2q_enqueue(q, &job, msg, sizeof msg);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* A raw job entry (poison). */
static void xadd_raw(b2q_conn *q, const char *id, const char *op, const void *req, size_t req_len, const char *path)
{
    const char *argv[14] = { "XADD", b2q_stream(q), "*", "id", id, "src", id, "op", op, "req", req };
    size_t len[14] = { 4, strlen(b2q_stream(q)), 1, 2, strlen(id), 3, strlen(id), 2, strlen(op), 3, req_len };
    int argc = 11;
    if (path) { argv[argc] = "path"; len[argc] = 4; argc++; argv[argc] = path; len[argc] = strlen(path); argc++; }
    redisReply *r = redisCommandArgv(b2q_redis(q), argc, argv, len);
    freeReplyObject(r);
}

static long long llen_of(b2q_conn *q, const char *cmd, const char *key)
{
    redisReply *r = redisCommand(b2q_redis(q), "%s %s", cmd, key);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

/* Waits until S:results has n entries (at most 60 s; no timing is asserted). */
static long long wait_results(b2q_conn *q, long long n)
{
    char key[300];
    snprintf(key, sizeof key, "%s:results", b2q_stream(q));
    long long have = 0;
    for (int i = 0; i < 1200 && (have = llen_of(q, "XLEN", key)) < n; i++) sleep_ms(50);
    return have;
}

/* The results: checks each id once and the text; returns the count of
 * mismatches, fills *n. */
typedef struct expect { char id[65]; char text[80]; int seen; const char *code; } expect;

static int check_results(b2q_conn *q, expect *ex, int nex, int *dups, int *unknown)
{
    char key[300];
    snprintf(key, sizeof key, "%s:results", b2q_stream(q));
    redisReply *r = redisCommand(b2q_redis(q), "XRANGE %s - +", key);
    int bad = 0;
    *dups = *unknown = 0;
    for (size_t i = 0; r && i < r->elements; i++) {
        const redisReply *kv = r->element[i]->element[1];
        const char *id = NULL;
        const redisReply *res = NULL;
        for (size_t k = 0; k + 1 < kv->elements; k += 2) {
            if (!strcmp(kv->element[k]->str, "id")) id = kv->element[k + 1]->str;
            if (!strcmp(kv->element[k]->str, "res")) res = kv->element[k + 1];
        }
        int m = -1;
        for (int e = 0; id && e < nex; e++)
            if (!strcmp(ex[e].id, id)) m = e;
        if (m < 0) { (*unknown)++; continue; }
        if (ex[m].seen++) (*dups)++;
        b2ipc_reply rp;
        if (!res || b2ipc_decode_reply(res->str, res->len, &rp, NULL) < 0) { bad++; continue; }
        if (ex[m].code) {
            const char *got = rp.type == B2IPC_REPLY_ERROR ? b2ipc_code_name(rp.error.code) : "(a result)";
            if (!got || strcmp(got, ex[m].code)) {
                diag("job %s: expected error %s, got %s", id, ex[m].code, got ? got : "?");
                bad++;
            }
        } else if (rp.type != B2IPC_REPLY_DONE || strcmp(rp.done.seqs[0].text, ex[m].text)) {
            diag("job %s: wrong result", id);
            bad++;
        }
        b2ipc_reply_free(&rp);
    }
    freeReplyObject(r);
    return bad;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (system("command -v redis-server >/dev/null 2>&1") != 0) {
        printf("1..0 # SKIP redis-server not installed\n");
        return 0;
    }
    snprintf(dir, sizeof dir, "%s/b2qw.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) return 1;
    snprintf(sock, sizeof sock, "%s/redis.sock", dir);
    start_redis();

    /* ---- 3 workers, 300 jobs ---- */
    snprintf(url, sizeof url, "unix:%s/t1", sock);
    b2q_conn *q = conn();
    enum { N = 300 };
    static expect ex[N + 16];
    uint8_t img[512];
    size_t len;
    int added = 0;
    for (int i = 0; i < N; i++) {
        make_image(i, img, &len);
        char src[32];
        snprintf(src, sizeof src, "img%03d", i);
        added += enqueue_bytes(q, src, img, len, NULL) == 1;
        expected_text(img, len, ex[i].text, sizeof ex[i].text);
        job_id(img, len, ex[i].id);
    }
    ok(added == N, "300 jobs enqueued (%d)", added);
    int again = 0;
    for (int i = 0; i < 10; i++) {
        make_image(i, img, &len);
        again += enqueue_bytes(q, "again", img, len, NULL);
    }
    ok(again == 0, "re-enqueueing the same content is a no-op");
    fake *w[3];
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "w%d", i);
        w[i] = fake_start(name, 30, 3, NULL, 0, 0);
    }
    /* Redis dies (kill -9; AOF with appendfsync always) and comes back mid-run */
    long long have = wait_results(q, N / 3);
    b2q_close(q);
    stop_redis();
    sleep_ms(300);
    start_redis();
    q = conn();
    int restarted = have < N;
    have = wait_results(q, N);
    for (int i = 0; i < 3; i++) fake_stop(w[i]);
    int dups, unknown;
    int bad = check_results(q, ex, N, &dups, &unknown);
    int missing = 0;
    for (int i = 0; i < N; i++) missing += !ex[i].seen;
    ok(have == N && bad == 0 && dups == 0 && unknown == 0 && missing == 0,
       "3 workers, Redis killed and restarted mid-run%s: every job exactly one result, the right one "
       "(%lld results, %d wrong, %d duplicates, %d missing)", restarted ? "" : " (too late: after the end)", have, bad, dups, missing);
    ok(llen_of(q, "XLEN", b2q_stream(q)) == 0, "the job stream is empty afterwards (acknowledged and deleted)");
    b2q_close(q);

    /* ---- a hung worker: its jobs are reclaimed ---- */
    snprintf(url, sizeof url, "unix:%s/t2", sock);
    q = conn();
    memset(ex, 0, sizeof ex);
    for (int i = 0; i < 8; i++) {
        make_image(1000 + i, img, &len);
        enqueue_bytes(q, "r", img, len, NULL);
        expected_text(img, len, ex[i].text, sizeof ex[i].text);
        job_id(img, len, ex[i].id);
    }
    fake *hung = fake_start("hung", 1, 3, NULL, 1, 0);
    for (int i = 0; i < 200; i++) {
        redisReply *r = redisCommand(b2q_redis(q), "XPENDING %s blip2d", b2q_stream(q));
        long long p = r && r->type == REDIS_REPLY_ARRAY ? r->element[0]->integer : 0;
        freeReplyObject(r);
        if (p >= 4) break;
        sleep_ms(25);
    }
    fake_stop(hung);  /* its 4 jobs stay pending under "hung" */
    fake *rescuer = fake_start("rescuer", 1, 3, NULL, 0, 0);
    have = wait_results(q, 8);
    fake_stop(rescuer);
    bad = check_results(q, ex, 8, &dups, &unknown);
    missing = 0;
    for (int i = 0; i < 8; i++) missing += !ex[i].seen;
    ok(have == 8 && bad == 0 && dups == 0 && missing == 0,
       "a hung worker's jobs are reclaimed after the idle time and finished once (%lld results)", have);
    b2q_close(q);

    /* ---- poison jobs ---- */
    snprintf(url, sizeof url, "unix:%s/t3", sock);
    q = conn();
    memset(ex, 0, sizeof ex);
    char root[300], inside[400], outside[400];
    snprintf(root, sizeof root, "%s/root", dir);
    mkdir(root, 0755);
    snprintf(inside, sizeof inside, "%s/ok.img", root);
    snprintf(outside, sizeof outside, "%s/secret.img", dir);
    make_image(7, img, &len);
    FILE *f = fopen(inside, "wb");
    fwrite(img, 1, len, f);
    fclose(f);
    f = fopen(outside, "wb");
    fwrite(img, 1, len, f);
    fclose(f);
    char link[400];
    snprintf(link, sizeof link, "%s/escape.img", root);
    symlink(outside, link);
    int ne = 0;
    /* a good path job */
    enqueue_bytes(q, "inside", img, len, inside);
    snprintf(ex[ne].id, 65, "%s", "");
    {
        msgpack_sbuffer sb;
        caption_fd_request(&sb);
        b2q_content_id(img, len, "caption", (const uint8_t *)sb.data + 4, sb.size - 4, ex[ne].id);
        expected_text(img, len, ex[ne].text, sizeof ex[ne].text);
        ne++;
        /* paths outside the root: absolute, .., a symlink */
        char dotdot[500];
        snprintf(dotdot, sizeof dotdot, "%s/../secret.img", root);
        const char *bad_paths[3] = { outside, dotdot, link };
        for (int i = 0; i < 3; i++) {
            snprintf(ex[ne].id, 65, "outside%d", i);
            ex[ne].code = "permission_denied";
            xadd_raw(q, ex[ne].id, "caption", sb.data + 4, sb.size - 4, bad_paths[i]);
            ne++;
        }
        msgpack_sbuffer_destroy(&sb);
    }
    /* not MessagePack; a bad parameter; an op that does not match; too large; corrupt image */
    snprintf(ex[ne].id, 65, "garbage");
    ex[ne].code = "bad_msgpack";
    xadd_raw(q, ex[ne].id, "caption", "\xc1\xc1", 2, NULL);
    ne++;
    {
        /* {"id":0,"op":"generate","image":bin,"num_beams":99} by hand */
        uint8_t m[64];
        size_t k = 0;
        m[k++] = 0x84;
        m[k++] = 0xa2; memcpy(m + k, "id", 2); k += 2; m[k++] = 0;
        m[k++] = 0xa2; memcpy(m + k, "op", 2); k += 2;
        m[k++] = 0xa8; memcpy(m + k, "generate", 8); k += 8;
        m[k++] = 0xa5; memcpy(m + k, "image", 5); k += 5; m[k++] = 0xc4; m[k++] = 1; m[k++] = 'I';
        m[k++] = 0xa9; memcpy(m + k, "num_beams", 9); k += 9; m[k++] = 99;
        snprintf(ex[ne].id, 65, "beams");
        ex[ne].code = "out_of_range";
        xadd_raw(q, ex[ne].id, "caption", m, k, NULL);
        ne++;
        snprintf(ex[ne].id, 65, "opmismatch");
        ex[ne].code = "out_of_range";
        m[k - 1] = 2; /* num_beams 2: valid */
        xadd_raw(q, ex[ne].id, "features", m, k, NULL);
        ne++;
    }
    {
        static uint8_t big[(1 << 20) + 100];
        b2ipc_request rq;
        b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
        rq.generate.image = big;
        rq.generate.image_len = sizeof big;
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        b2ipc_limits lim = { .max_image_bytes = 2u << 20 };
        b2ipc_encode_request(&sb, &rq, &lim, NULL);
        snprintf(ex[ne].id, 65, "oversized");
        ex[ne].code = "too_large";
        xadd_raw(q, ex[ne].id, "caption", sb.data + 4, sb.size - 4, NULL);
        ne++;
        msgpack_sbuffer_destroy(&sb);
        memcpy(img, "BAD", 3);
        enqueue_bytes(q, "corrupt", img, len, NULL);
        b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
        rq.generate.image_fd = true;
        msgpack_sbuffer_init(&sb);
        b2ipc_encode_request(&sb, &rq, NULL, NULL);
        b2q_content_id(img, len, "caption", (const uint8_t *)sb.data + 4, sb.size - 4, ex[ne].id);
        ex[ne].code = "bad_image";
        ne++;
        msgpack_sbuffer_destroy(&sb);
    }
    /* and ordinary jobs after them */
    for (int i = 0; i < 5; i++) {
        make_image(2000 + i, img, &len);
        enqueue_bytes(q, "after", img, len, NULL);
        expected_text(img, len, ex[ne].text, sizeof ex[ne].text);
        job_id(img, len, ex[ne].id);
        ne++;
    }
    fake *pw = fake_start("poison", 30, 3, root, 0, 0);
    have = wait_results(q, ne);
    fake_stop(pw);
    bad = check_results(q, ex, ne, &dups, &unknown);
    missing = 0;
    for (int i = 0; i < ne; i++) missing += !ex[i].seen;
    char dkey[300];
    snprintf(dkey, sizeof dkey, "%s:dead", b2q_stream(q));
    long long dead = llen_of(q, "XLEN", dkey);
    ok(have == ne && bad == 0 && dups == 0 && missing == 0 && dead == 8,
       "poison jobs: dead letters with their codes (%lld), the other jobs done (%lld of %d results, %d wrong)",
       dead, have, ne, bad);
    b2q_close(q);

    /* ---- a path job on a worker without a root; a job that always fails ---- */
    snprintf(url, sizeof url, "unix:%s/t4", sock);
    q = conn();
    memset(ex, 0, sizeof ex);
    make_image(9, img, &len);
    enqueue_bytes(q, "noroot", img, len, inside);
    fake *nr = fake_start("noroot", 30, 3, NULL, 0, 0);
    have = wait_results(q, 1);
    fake_stop(nr);
    snprintf(dkey, sizeof dkey, "%s:dead", b2q_stream(q));
    redisReply *r = redisCommand(b2q_redis(q), "XRANGE %s - +", dkey);
    int pd = r && r->elements == 1 && !strcmp(r->element[0]->element[1]->element[5]->str, "permission_denied");
    freeReplyObject(r);
    ok(have == 1 && pd, "a path job on a worker without --queue-allow-paths: permission_denied");
    make_image(10, img, &len);
    enqueue_bytes(q, "flaky", img, len, NULL);
    fake *fl = fake_start("flaky", 0.3, 2, NULL, 0, 1);
    have = wait_results(q, 2);
    fake_stop(fl);
    r = redisCommand(b2q_redis(q), "XRANGE %s - +", dkey);
    int ok_dead = 0;
    if (r && r->elements == 2) {
        const redisReply *kv = r->element[1]->element[1];
        const char *code = NULL, *tries = NULL, *message = NULL;
        for (size_t k = 0; k + 1 < kv->elements; k += 2) {
            if (!strcmp(kv->element[k]->str, "code")) code = kv->element[k + 1]->str;
            if (!strcmp(kv->element[k]->str, "tries")) tries = kv->element[k + 1]->str;
            if (!strcmp(kv->element[k]->str, "message")) message = kv->element[k + 1]->str;
        }
        ok_dead = code && !strcmp(code, "internal") && tries && atoi(tries) == 3 && message &&
                  strstr(message, "a stand-in failure");
        if (!ok_dead) diag("dead letter: code %s tries %s message %s", code, tries, message);
    }
    freeReplyObject(r);
    ok(have == 2 && ok_dead, "a job failing with a passing error: a dead letter after max tries, with its last error");
    b2q_close(q);

    stop_redis();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) diag("cannot remove %s", dir);
    return tap_done();
}
