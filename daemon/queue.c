/*
 * queue.c - the --queue worker thread: Redis Streams jobs in, results out.
 *
 *   connect (backoff 0.1 s .. 5 s) --> XGROUP CREATE (if missing)
 *   loop, named phases:
 *     write_results   replies handed over by the daemon (b2d_queue_reply)
 *                     --> FINISH_LUA: result (+ dead letter) + XACK + XDEL
 *     heartbeat       XCLAIM ... JUSTID of the jobs we hold, every idle/3:
 *                     a long job is not taken from a live worker
 *     reclaim         XAUTOCLAIM entries idle > --queue-idle (their worker
 *                     died), every idle/2; delivered > max tries: dead letter
 *     read            XREADGROUP ... > while the window has room
 *     wait            for a reply, or BLOCK in XREADGROUP when nothing runs
 *   each job: decode + validate the request with libipc (the socket's
 *   limits and codes), open a path job beneath --queue-allow-paths
 *   (openat2 RESOLVE_BENEATH), submit to the daemon.
 *
 * Outcomes: a result (done / features) is written with the XACK in one Lua
 * step.  An error that the same request would always get (bad request,
 * bad image, path outside the root...) goes to the dead letters at once;
 * others (busy, out of memory, internal, canceled by a shutdown) leave the
 * entry pending, so after the idle time some worker tries again, and after
 * max tries deliveries it is a dead letter with its last error.  Nothing is
 * acknowledged without its result, so a crash anywhere loses no result.
 */
#include "queue.h"
#include "b2q.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { Q_SUBMIT, Q_RUNNING };

typedef struct qjob {
    uint64_t token;
    int state;
    char entry[48];           /* the entry id in S */
    char id[B2Q_MAX_ID + 1];
    char *src, *op, *path;    /* owned; path may be NULL */
    uint8_t *req;             /* owned: the request as stored */
    size_t req_len;
    unsigned tries;           /* deliveries so far */
    double retry_at;          /* Q_SUBMIT: after a busy refusal */
    struct qjob *next;
} qjob;

typedef struct qreply {
    uint64_t token;
    size_t len;
    struct qreply *next;
    uint8_t data[];
} qreply;

struct b2d_queue {
    b2d_queue_opts o;
    b2q_url url;
    char where[600];
    char group[128], consumer[256];
    char root[PATH_MAX];      /* realpath of allow_paths, or "" */
    int rootfd;
    b2d_queue_submit_fn submit;
    b2d_queue_written_fn written; /* or NULL */
    void *ctx;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    qreply *rhead, *rtail;    /* under mu */
    int draining, stop;       /* under mu */
    double stop_deadline;
    int inflight;             /* under mu: submitted, not answered */
    /* worker thread only */
    b2q_conn *q;
    qjob *jobs;
    int njobs;
    uint64_t next_token;
    double backoff_ms, next_connect, next_heartbeat, next_reclaim;
    int read_own;             /* after a connect: our own pending entries first */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void qjob_free(qjob *j)
{
    if (!j) return;
    free(j->src);
    free(j->op);
    free(j->path);
    free(j->req);
    free(j);
}

/* ---- the connection ------------------------------------------------------------ */

static void drop_conn(b2d_queue *w, const char *why)
{
    if (!w->q) return;
    LOG_WARN("queue: lost %s: %s; reconnecting", w->where, why);
    b2q_close(w->q);
    w->q = NULL;
    w->next_connect = now_ms() + w->backoff_ms;
}

static int ensure_conn(b2d_queue *w)
{
    if (w->q) return 0;
    if (now_ms() < w->next_connect) return -1;
    char msg[512];
    int timeout = 5000 + (int)(w->o.idle_s * 1000 / 3);
    if (b2q_connect(&w->url, timeout, &w->q, msg, sizeof msg) < 0 ||
        b2q_ensure_group(w->q, w->group, msg, sizeof msg) < 0) {
        if (w->backoff_ms <= 100) LOG_WARN("queue: %s", msg);
        else LOG_DEBUG("queue: %s", msg);
        b2q_close(w->q);
        w->q = NULL;
        w->next_connect = now_ms() + w->backoff_ms;
        w->backoff_ms = w->backoff_ms * 2 > 5000 ? 5000 : w->backoff_ms * 2;
        return -1;
    }
    LOG_INFO("queue: connected to %s as %s in group %s", w->where, w->consumer, w->group);
    w->backoff_ms = 100;
    w->read_own = 1;
    w->next_reclaim = 0;
    return 0;
}

/* ---- outcomes ------------------------------------------------------------------ */

static bool permanent(int code)
{
    switch (code) {
    case B2IPC_EBUSY: case B2IPC_ESHUTDOWN: case B2IPC_ENOMEM: case B2IPC_EINTERNAL:
    case B2IPC_EUNKNOWN_CODE: case B2IPC_EINVAL:
        return false;
    default:
        return true;
    }
}

static void unlink_job(b2d_queue *w, qjob *j)
{
    for (qjob **pp = &w->jobs; *pp; pp = &(*pp)->next)
        if (*pp == j) { *pp = j->next; w->njobs--; break; }
    qjob_free(j);
}

/* The terminal write.  0 done (job freed), -1 the connection broke (job kept). */
static int finish(b2d_queue *w, qjob *j, const uint8_t *res, size_t res_len, int code,
                  const char *field, const char *message)
{
    b2q_outcome o = { .entry = j->entry, .id = j->id, .src = j->src, .res = res, .res_len = res_len,
                      .by = w->consumer, .dead = code != 0, .code = code ? b2ipc_code_name(code) : NULL,
                      .message = message, .field = field, .tries = j->tries, .op = j->op,
                      .req = j->req, .req_len = j->req_len, .path = j->path };
    char msg[512];
    int rc = b2q_finish(w->q, w->group, &o, msg, sizeof msg);
    if (rc == B2Q_EIO) { drop_conn(w, msg); return -1; }
    if (rc < 0) LOG_ERR("queue: job %s: %s", j->id, msg);
    else if (code) LOG_WARN("queue: job %s (%s) is a dead letter: %s", j->id, j->src ? j->src : "", message);
    else LOG_DEBUG("queue: job %s done%s", j->id, rc == 0 ? " (already done elsewhere)" : "");
    unlink_job(w, j);
    return 0;
}

/* A dead letter with an error reply as its result. */
static int fail_dead(b2d_queue *w, qjob *j, int code, const char *field, const char *message)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = -1;
    if (b2ipc_encode_error(&sb, true, 0, code, field, message) == 0 && sb.size > 4)
        rc = finish(w, j, (const uint8_t *)sb.data + 4, sb.size - 4, code, field, message);
    else
        unlink_job(w, j);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* A failure that may pass: leave the entry pending (retried after the
 * idle time, a dead letter after max tries), note why. */
static int fail_later(b2d_queue *w, qjob *j, int code, const char *message)
{
    char msg[512];
    const char *name = b2ipc_code_name(code) ? b2ipc_code_name(code) : "internal";
    if (w->q && b2q_note_failure(w->q, j->id, name, message, msg, sizeof msg) == B2Q_EIO) {
        drop_conn(w, msg);
        return -1;
    }
    LOG_WARN("queue: job %s (%s): %s: %s; it stays pending and is retried after %.1f s",
             j->id, j->src ? j->src : "", name, message, w->o.idle_s);
    unlink_job(w, j);
    return 0;
}

/* A reply from the daemon for j. */
static int handle_reply(b2d_queue *w, qjob *j, const uint8_t *p, size_t n)
{
    b2ipc_reply rp;
    b2ipc_error err;
    if (b2ipc_decode_reply(p, n, &rp, &err) < 0)
        return fail_later(w, j, B2IPC_EINTERNAL, err.message);
    int rc;
    if (rp.type == B2IPC_REPLY_ERROR) {
        char m[1100];
        snprintf(m, sizeof m, "%s", rp.error.message ? rp.error.message : "");
        int code = rp.error.code;
        if (code == B2IPC_EBUSY) { /* the daemon's queue is full (local clients): again soon */
            j->state = Q_SUBMIT;
            j->retry_at = now_ms() + 250;
            rc = 0;
        } else if (permanent(code)) rc = finish(w, j, p, n, code, rp.error.field ? rp.error.field : "", m);
        else rc = fail_later(w, j, code, m);
    } else if (rp.type == B2IPC_REPLY_DONE || rp.type == B2IPC_REPLY_FEATURES) {
        bool canceled = false;
        for (uint32_t i = 0; rp.type == B2IPC_REPLY_DONE && i < rp.done.n_seqs; i++)
            canceled |= rp.done.seqs[i].finish == B2IPC_FINISH_CANCELED;
        rc = canceled ? fail_later(w, j, B2IPC_ESHUTDOWN, "canceled (the daemon is stopping)")
                      : finish(w, j, p, n, 0, NULL, NULL);
    } else {
        rc = fail_later(w, j, B2IPC_EINTERNAL, "the daemon answered with no terminal reply");
    }
    b2ipc_reply_free(&rp);
    return rc;
}

static qjob *find_token(b2d_queue *w, uint64_t token)
{
    for (qjob *j = w->jobs; j; j = j->next)
        if (j->token == token) return j;
    return NULL;
}

/* Phase: the replies handed over since last time. */
static void write_results(b2d_queue *w)
{
    pthread_mutex_lock(&w->mu);
    qreply *r = w->rhead;
    w->rhead = w->rtail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (r) {
        qreply *next = r->next;
        qjob *j = find_token(w, r->token);
        if (j && (!w->q || handle_reply(w, j, r->data, r->len) < 0)) {
            /* Redis is away: keep the rest for after the reconnect */
            pthread_mutex_lock(&w->mu);
            qreply *last = r;
            while (last->next) last = last->next;
            last->next = w->rhead;
            w->rhead = r;
            if (!w->rtail) w->rtail = last;
            pthread_mutex_unlock(&w->mu);
            return;
        }
        if (w->written) w->written(w->ctx, r->len);
        free(r);
        r = next;
    }
}

/* ---- taking jobs --------------------------------------------------------------- */

static const redisReply *field_of(const redisReply *kv, const char *name)
{
    if (!kv || kv->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < kv->elements; i += 2)
        if (kv->element[i]->type == REDIS_REPLY_STRING && strcmp(kv->element[i]->str, name) == 0)
            return kv->element[i + 1]->type == REDIS_REPLY_STRING ? kv->element[i + 1] : NULL;
    return NULL;
}

static char *dup_field(const redisReply *kv, const char *name, size_t max)
{
    const redisReply *f = field_of(kv, name);
    if (!f || f->len > max) return NULL;
    return strndup(f->str, f->len);
}

/* Opens a path job's image beneath the allowed root.  fd, or a negative
 * B2IPC_E* with msg set (*later: the failure may pass). */
static int open_path(b2d_queue *w, const char *path, bool *later, char *msg, size_t ml)
{
    *later = false;
    if (!w->root[0]) {
        snprintf(msg, ml, "path: jobs by path are refused (this worker has no --queue-allow-paths)");
        return B2IPC_EPERM;
    }
    char real[PATH_MAX];
    if (!realpath(path, real)) {
        int e = errno;
        *later = e == EIO || e == ESTALE || e == ETIMEDOUT || e == EAGAIN || e == ENOMEM || e == EINTR;
        snprintf(msg, ml, "path: %s", strerror(e));
        return B2IPC_EBAD_FD;
    }
    size_t rl = strlen(w->root);
    if (strncmp(real, w->root, rl) != 0 || (real[rl] != '/' && !(rl == 1 && w->root[0] == '/'))) {
        snprintf(msg, ml, "path: outside the allowed root of this worker");
        return B2IPC_EPERM;
    }
    const char *rel = real + rl + (real[rl] == '/' ? 1 : 0);
    struct open_how how = { .flags = O_RDONLY | O_CLOEXEC | O_NOCTTY,
                            .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS };
    int fd = (int)syscall(SYS_openat2, w->rootfd, rel, &how, sizeof how);
    if (fd < 0 && errno == ENOSYS) fd = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
    if (fd < 0) {
        int e = errno;
        if (e == EXDEV || e == ELOOP) {
            snprintf(msg, ml, "path: outside the allowed root of this worker");
            return B2IPC_EPERM;
        }
        *later = e == EIO || e == ESTALE || e == ETIMEDOUT || e == EAGAIN || e == ENOMEM || e == EINTR;
        snprintf(msg, ml, "path: %s", strerror(e));
        return B2IPC_EBAD_FD;
    }
    return fd;
}

/* Decode, check, open, submit.  0, or -1 when the connection broke. */
static int submit_job(b2d_queue *w, qjob *j)
{
    char msg[600];
    b2ipc_request rq;
    b2ipc_error err;
    if (j->req_len > w->o.max_frame) {
        snprintf(msg, sizeof msg, "req: %zu bytes, more than the worker's frame limit %zu", j->req_len,
                 w->o.max_frame);
        return fail_dead(w, j, B2IPC_ETOO_LARGE, "req", msg);
    }
    if (b2ipc_decode_request(j->req, j->req_len, &w->o.lim, &rq, &err) < 0)
        return fail_dead(w, j, err.code, err.field, err.message);
    int rc = 0, code = 0, fd = -1;
    const char *field = NULL;
    bool gen = rq.op == B2IPC_OP_GENERATE, feat = rq.op == B2IPC_OP_FEATURES;
    bool want_fd = gen ? rq.generate.image_fd : feat ? rq.features.image_fd : false;
    if (!gen && !feat) {
        code = B2IPC_ERANGE, field = "op";
        snprintf(msg, sizeof msg, "op: a queue job is generate or features, not %s", b2ipc_op_name(rq.op));
    } else if (strcmp(j->op, feat ? "features" : "caption") != 0 && !(gen && strcmp(j->op, "ask") == 0)) {
        code = B2IPC_ERANGE, field = "op";
        snprintf(msg, sizeof msg, "op: the job says %s, its request is %s", j->op, b2ipc_op_name(rq.op));
    } else if (j->path && !want_fd) {
        code = B2IPC_ERANGE, field = "path";
        snprintf(msg, sizeof msg, "path: a path job's request has image_fd: true, not an image");
    } else if (!j->path && want_fd) {
        code = B2IPC_EMISSING, field = "path";
        snprintf(msg, sizeof msg, "path: image_fd: true needs the job's path field");
    } else if (j->path) {
        bool later;
        fd = open_path(w, j->path, &later, msg, sizeof msg);
        if (fd < 0 && later) {
            b2ipc_request_free(&rq);
            return fail_later(w, j, fd, msg);
        }
        if (fd < 0) code = fd, field = "path";
    }
    if (code) {
        b2ipc_request_free(&rq);
        return fail_dead(w, j, code, field, msg);
    }
    pthread_mutex_lock(&w->mu);
    w->inflight++;
    pthread_mutex_unlock(&w->mu);
    j->state = Q_RUNNING;
    rc = w->submit(w->ctx, &rq, fd, j->token);
    b2ipc_request_free(&rq);
    if (rc == 0) return 0;
    pthread_mutex_lock(&w->mu);
    w->inflight--;
    pthread_mutex_unlock(&w->mu);
    if (rc == B2IPC_EBUSY) { /* the window is the daemon's too: later */
        j->state = Q_SUBMIT;
        j->retry_at = now_ms() + 250;
        return 0;
    }
    if (permanent(rc)) return fail_dead(w, j, rc, NULL, b2ipc_strerror(rc));
    return fail_later(w, j, rc, b2ipc_strerror(rc));
}

static bool holds_entry(b2d_queue *w, const char *entry)
{
    for (qjob *j = w->jobs; j; j = j->next)
        if (strcmp(j->entry, entry) == 0) return true;
    return false;
}

/* An entry [id, [field, value, ...]] delivered `tries` times. */
static int take_entry(b2d_queue *w, const redisReply *e, unsigned tries)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[0]->type != REDIS_REPLY_STRING ||
        e->element[0]->len >= sizeof ((qjob *)0)->entry)
        return 0;
    const char *eid = e->element[0]->str;
    if (holds_entry(w, eid)) return 0;
    const redisReply *kv = e->element[1];
    qjob *j = calloc(1, sizeof *j);
    if (!j) return 0; /* stays pending: reclaimed later */
    j->token = ++w->next_token;
    j->tries = tries;
    snprintf(j->entry, sizeof j->entry, "%s", eid);
    j->next = w->jobs;
    w->jobs = j;
    w->njobs++;
    if (kv->type != REDIS_REPLY_ARRAY) { /* deleted meanwhile: done elsewhere */
        snprintf(j->id, sizeof j->id, "%s", eid);
        redisReply *r = redisCommand(b2q_redis(w->q), "XACK %s %s %s", b2q_stream(w->q), w->group, eid);
        if (!r) { /* still pending in Redis: reclaimed later */
            unlink_job(w, j);
            drop_conn(w, "XACK");
            return -1;
        }
        freeReplyObject(r);
        unlink_job(w, j);
        return 0;
    }
    const redisReply *id = field_of(kv, "id");
    if (id && id->len > 0 && id->len <= B2Q_MAX_ID) snprintf(j->id, sizeof j->id, "%s", id->str);
    else snprintf(j->id, sizeof j->id, "%s", eid);
    j->src = dup_field(kv, "src", B2Q_MAX_SRC);
    j->op = dup_field(kv, "op", 16);
    j->path = dup_field(kv, "path", PATH_MAX);
    const redisReply *req = field_of(kv, "req");
    if (req && req->len <= w->o.max_frame && (j->req = malloc(req->len ? req->len : 1))) {
        memcpy(j->req, req->str, req->len);
        j->req_len = req->len;
    }
    if (!j->src) j->src = strdup("");
    if (tries > w->o.max_tries) {
        char last[1200] = "";
        redisReply *r = redisCommand(b2q_redis(w->q), "HGET %s:fails %s", b2q_stream(w->q), j->id);
        if (!r) {
            unlink_job(w, j);
            drop_conn(w, "HGET");
            return -1;
        }
        if (r->type == REDIS_REPLY_STRING) snprintf(last, sizeof last, "%s", r->str);
        freeReplyObject(r);
        char m[1400];
        char *sp = strchr(last, ' ');
        if (sp) *sp = '\0';
        snprintf(m, sizeof m, "delivered %u times without a result%s%s%s%s", tries, last[0] ? "; last error: " : "",
                 last, sp ? ": " : "", sp ? sp + 1 : "");
        int code = last[0] ? b2ipc_code_from_name(last) : B2IPC_EINTERNAL;
        if (code == B2IPC_EUNKNOWN_CODE) code = B2IPC_EINTERNAL;
        return fail_dead(w, j, code, NULL, m);
    }
    if (!id || id->len == 0 || id->len > B2Q_MAX_ID)
        return fail_dead(w, j, id ? B2IPC_ERANGE : B2IPC_EMISSING, "id", "id: required, 1 to 64 bytes");
    if (!j->op) return fail_dead(w, j, B2IPC_EMISSING, "op", "op: required (caption, ask or features)");
    if (!req) return fail_dead(w, j, B2IPC_EMISSING, "req", "req: required (a protocol request)");
    if (!j->req) {
        char m[160];
        snprintf(m, sizeof m, "req: %zu bytes, more than the worker's frame limit %zu", req->len, w->o.max_frame);
        return fail_dead(w, j, B2IPC_ETOO_LARGE, "req", m);
    }
    return submit_job(w, j);
}

static int room(b2d_queue *w)
{
    return w->o.window - w->njobs;
}

/* Phase: XREADGROUP, own pending entries first after a (re)connect. */
static int read_jobs(b2d_queue *w, int block_ms)
{
    int n = room(w);
    if (n <= 0) return 0;
    char count[16], block[16];
    snprintf(count, sizeof count, "%d", n);
    snprintf(block, sizeof block, "%d", block_ms);
    const char *argv[11] = { "XREADGROUP", "GROUP", w->group, w->consumer, "COUNT", count };
    int argc = 6;
    if (block_ms > 0 && !w->read_own) { argv[argc++] = "BLOCK"; argv[argc++] = block; }
    argv[argc++] = "STREAMS";
    argv[argc++] = b2q_stream(w->q);
    argv[argc++] = w->read_own ? "0" : ">";
    redisReply *r = redisCommandArgv(b2q_redis(w->q), argc, argv, NULL);
    if (!r) { drop_conn(w, ((redisContext *)b2q_redis(w->q))->errstr); return -1; }
    int got = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        LOG_WARN("queue: XREADGROUP: %s", r->str);
        if (strncmp(r->str, "NOGROUP", 7) == 0) { freeReplyObject(r); drop_conn(w, "the group is gone"); return -1; }
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->elements == 2) {
        const redisReply *es = r->element[0]->element[1];
        /* own pending entries (after a reconnect) were delivered before:
         * this is at least their second try */
        for (size_t i = 0; i < es->elements && w->q; i++, got++)
            if (take_entry(w, es->element[i], w->read_own ? 2 : 1) < 0) break;
    }
    /* one look at our history per connection: what did not fit the window
     * is reclaimed after the idle time like any other pending entry */
    w->read_own = 0;
    freeReplyObject(r);
    return w->q ? got : -1;
}

/* Phase: jobs whose worker died (idle beyond the limit) become ours. */
static int reclaim(b2d_queue *w)
{
    double now = now_ms();
    if (now < w->next_reclaim) return 0;
    w->next_reclaim = now + (w->o.idle_s * 1000 / 2 > 250 ? w->o.idle_s * 1000 / 2 : 250);
    char cursor[48] = "0-0", idle[32], count[16];
    snprintf(idle, sizeof idle, "%.0f", w->o.idle_s * 1000);
    for (int rounds = 0; rounds < 16 && room(w) > 0 && w->q; rounds++) {
        snprintf(count, sizeof count, "%d", room(w));
        const char *argv[] = { "XAUTOCLAIM", b2q_stream(w->q), w->group, w->consumer, idle, cursor, "COUNT", count };
        redisReply *r = redisCommandArgv(b2q_redis(w->q), 8, argv, NULL);
        if (!r) { drop_conn(w, "XAUTOCLAIM"); return -1; }
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) { freeReplyObject(r); return 0; }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str ? r->element[0]->str : "0-0");
        const redisReply *es = r->element[1];
        for (size_t i = 0; i < es->elements && w->q; i++) {
            const redisReply *e = es->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 1) continue;
            unsigned tries = 1;
            redisReply *p = redisCommand(b2q_redis(w->q), "XPENDING %s %s %s %s 1", b2q_stream(w->q), w->group,
                                         e->element[0]->str, e->element[0]->str);
            if (!p) { drop_conn(w, "XPENDING"); break; }
            if (p->type == REDIS_REPLY_ARRAY && p->elements == 1 && p->element[0]->elements == 4)
                tries = (unsigned)p->element[0]->element[3]->integer;
            freeReplyObject(p);
            LOG_INFO("queue: reclaimed %s (delivery %u)", e->element[0]->str, tries);
            if (take_entry(w, e, tries) < 0) break;
        }
        freeReplyObject(r);
        if (strcmp(cursor, "0-0") == 0) break;
    }
    return w->q ? 0 : -1;
}

/* Phase: keep the entries we hold from looking idle. */
static int heartbeat(b2d_queue *w)
{
    double now = now_ms();
    if (now < w->next_heartbeat || !w->jobs) return 0;
    w->next_heartbeat = now + w->o.idle_s * 1000 / 3;
    int argc = 0, cap = 8 + w->njobs;
    const char **argv = malloc(sizeof *argv * (size_t)cap);
    if (!argv) return 0;
    argv[argc++] = "XCLAIM";
    argv[argc++] = b2q_stream(w->q);
    argv[argc++] = w->group;
    argv[argc++] = w->consumer;
    argv[argc++] = "0";
    for (qjob *j = w->jobs; j; j = j->next) argv[argc++] = j->entry;
    argv[argc++] = "JUSTID";
    redisReply *r = redisCommandArgv(b2q_redis(w->q), argc, argv, NULL);
    free(argv);
    if (!r) { drop_conn(w, "XCLAIM"); return -1; }
    freeReplyObject(r);
    return 0;
}

/* Busy refusals are tried again. */
static int resubmit(b2d_queue *w)
{
    double now = now_ms();
    for (qjob *j = w->jobs, *next; j; j = next) {
        next = j->next;
        if (j->state == Q_SUBMIT && j->retry_at <= now && submit_job(w, j) < 0) return -1;
    }
    return 0;
}

/* ---- the thread ---------------------------------------------------------------- */

static void wait_event(b2d_queue *w, double ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long ns = ts.tv_nsec + (long)(ms * 1e6);
    ts.tv_sec += ns / 1000000000L;
    ts.tv_nsec = ns % 1000000000L;
    pthread_mutex_lock(&w->mu);
    if (!w->rhead && !w->stop) pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    pthread_mutex_unlock(&w->mu);
}

static void *queue_main(void *arg)
{
    b2d_queue *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int stop = w->stop, draining = w->draining || w->stop, inflight = w->inflight;
        int replies = w->rhead != NULL;
        pthread_mutex_unlock(&w->mu);
        if (stop && !replies) break;
        if (stop && now_ms() > w->stop_deadline) {
            LOG_WARN("queue: stopping with results not written (Redis away); their jobs stay pending");
            break;
        }
        if (ensure_conn(w) < 0) { wait_event(w, 100); continue; }
        write_results(w);
        if (!w->q) continue;
        if (!draining) {
            if (heartbeat(w) < 0 || resubmit(w) < 0 || reclaim(w) < 0) continue;
        }
        int got = 0;
        if (!draining && room(w) > 0) {
            /* block in Redis only when nothing of ours is running */
            got = read_jobs(w, inflight == 0 && !w->jobs ? 1000 : 0);
            if (got < 0) continue;
        }
        pthread_mutex_lock(&w->mu);
        replies = w->rhead != NULL;
        pthread_mutex_unlock(&w->mu);
        if (!replies && got == 0 && (w->jobs || draining)) wait_event(w, 200);
    }
    return NULL;
}

int b2d_queue_start(b2d_queue **out, const b2d_queue_opts *o, b2d_queue_submit_fn submit,
                    b2d_queue_written_fn written, void *ctx, char *msg, size_t ml)
{
    *out = NULL;
    b2d_queue *w = calloc(1, sizeof *w);
    if (!w) { snprintf(msg, ml, "out of memory"); return -1; }
    w->o = *o;
    w->rootfd = -1;
    if (w->o.window < 1) w->o.window = 1;
    if (w->o.max_tries < 1) w->o.max_tries = 1;
    if (w->o.idle_s <= 0) w->o.idle_s = 60;
    if (b2q_url_parse(o->url, &w->url, msg, ml) < 0) goto fail;
    b2q_url_display(&w->url, w->where, sizeof w->where);
    snprintf(w->group, sizeof w->group, "%s", o->group ? o->group : B2Q_DEFAULT_GROUP);
    if (o->consumer) {
        snprintf(w->consumer, sizeof w->consumer, "%s", o->consumer);
    } else {
        char host[200] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(w->consumer, sizeof w->consumer, "%s:%ld", host, (long)getpid());
    }
    if (o->allow_paths) {
        if (!realpath(o->allow_paths, w->root)) {
            snprintf(msg, ml, "--queue-allow-paths %s: %s", o->allow_paths, strerror(errno));
            goto fail;
        }
        w->rootfd = open(w->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (w->rootfd < 0) {
            snprintf(msg, ml, "--queue-allow-paths %s: %s", o->allow_paths, strerror(errno));
            goto fail;
        }
    }
    w->submit = submit;
    w->written = written;
    w->ctx = ctx;
    w->backoff_ms = 100;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->th, NULL, queue_main, w) != 0) {
        snprintf(msg, ml, "cannot start the queue thread");
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        goto fail;
    }
    *out = w;
    return 0;
fail:
    if (w->rootfd >= 0) close(w->rootfd);
    free(w);
    return -1;
}

void b2d_queue_reply(b2d_queue *w, uint64_t token, const uint8_t *payload, size_t len)
{
    qreply *r = malloc(sizeof *r + len);
    pthread_mutex_lock(&w->mu);
    w->inflight--;
    if (r) {
        r->token = token;
        r->len = len;
        r->next = NULL;
        memcpy(r->data, payload, len);
        if (w->rtail) w->rtail->next = r; else w->rhead = r;
        w->rtail = r;
    } /* else: the entry stays pending and is redone elsewhere */
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void b2d_queue_drain(b2d_queue *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->draining = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int b2d_queue_inflight(b2d_queue *w)
{
    if (!w) return 0;
    pthread_mutex_lock(&w->mu);
    int n = w->inflight;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void b2d_queue_stop(b2d_queue *w, double deadline_s)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    w->draining = 1;
    w->stop_deadline = now_ms() + deadline_s * 1000;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    while (w->rhead) {
        qreply *n = w->rhead->next;
        free(w->rhead);
        w->rhead = n;
    }
    while (w->jobs) {
        qjob *n = w->jobs->next;
        qjob_free(w->jobs);
        w->jobs = n;
    }
    b2q_close(w->q);
    if (w->rootfd >= 0) close(w->rootfd);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
