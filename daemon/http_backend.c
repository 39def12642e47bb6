/*
 * http_backend.c - the HTTP front end's side of frontend.h: a generate
 * request in, its token/done/error replies out, in the calling HTTP
 * connection thread.
 *
 * Each HTTP request is a b2d_client of the core (the one admission,
 * scheduler, fairness and limits every front end shares), keyed for
 * fairness by the HTTP peer's address, so HTTP clients are served round
 * robin with each other and with local users.  The core calls the sink
 * from its threads with the reply borrowed: the sink encodes it (libipc,
 * the deep copy) onto the job's queue and wakes the HTTP thread through an
 * eventfd; the HTTP thread decodes the replies in order.  While it waits it
 * also watches the HTTP client's socket: a hang-up closes the b2d_client,
 * which cancels the request.
 *
 *   submit: b2d_client_new -> b2d_submit (refusals: busy, shutting_down ...)
 *   sink:   b2ipc_encode_reply -> queue (locked) -> eventfd
 *   next:   poll(eventfd, client fd POLLRDHUP) -> b2ipc_reader -> decode
 *   close:  b2d_client_close (cancels what has not finished)
 */
#include "http.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct b2d_backend {
    b2d_core *core;
};

struct b2d_bjob {
    b2d_client *cl;
    int efd;               /* eventfd: replies are waiting */
    pthread_mutex_t mu;    /* q */
    msgpack_sbuffer q;     /* encoded replies the sink queued */
    int finished;          /* the terminal reply was decoded */
    b2ipc_reader rd;
    char *buf;             /* replies taken from q, being decoded */
    size_t off, len;
};

b2d_backend *b2d_backend_new(b2d_core *core)
{
    b2d_backend *b = calloc(1, sizeof *b);
    if (b) b->core = core;
    return b;
}

void b2d_backend_free(b2d_backend *b)
{
    free(b);
}

/* The core's sink: any thread, under the client's lock, rp borrowed.
 * Returns the bytes queued: they count against the client's output cap
 * until the HTTP thread has taken them on (b2d_client_sent), which for a
 * stream is when libmicrohttpd asks for more to send - a client that does
 * not read holds its request back, as on the socket. */
static size_t sink_reply(void *ctx, const b2ipc_reply *rp, int terminal)
{
    b2d_bjob *j = ctx;
    (void)terminal;
    pthread_mutex_lock(&j->mu);
    size_t before = j->q.size;
    if (b2ipc_encode_reply(&j->q, rp, NULL) < 0) /* not expected: say so rather than hang */
        b2ipc_encode_error(&j->q, true, rp->id, B2IPC_EINTERNAL, NULL, "a reply could not be encoded");
    size_t added = j->q.size - before;
    pthread_mutex_unlock(&j->mu);
    uint64_t one = 1;
    ssize_t w = write(j->efd, &one, sizeof one);
    (void)w; /* the counter only saturates after 2^64 - 1 wakes */
    return added;
}

static const b2d_sink http_sink = { sink_reply };

int b2d_backend_submit(b2d_backend *b, uint64_t user, const b2ipc_request *rq, b2d_bjob **out,
                       b2d_http_error *err)
{
    *out = NULL;
    b2d_bjob *j = calloc(1, sizeof *j);
    if (!j) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&j->mu, NULL);
    msgpack_sbuffer_init(&j->q);
    b2ipc_reader_init(&j->rd, 0);
    if (j->efd < 0 || !(j->cl = b2d_client_new(b->core, user, &http_sink, j))) {
        b2d_backend_close(j);
        return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    }
    b2ipc_request q = *rq;
    q.id = 1;
    b2d_refusal why;
    if (b2d_submit(j->cl, &q, -1, &why) < 0) {
        b2d_http_from_code(err, why.code, why.field, why.message);
        b2d_backend_close(j);
        return -1;
    }
    *out = j;
    return 0;
}

/* The next complete reply from the bytes taken so far: 1 and *rp, 0 when
 * more are needed, -1 on a broken stream. */
static int next_frame(b2d_bjob *j, b2ipc_reply *rp, b2d_http_error *err)
{
    while (j->off < j->len) {
        size_t used;
        int rc = b2ipc_reader_feed(&j->rd, j->buf + j->off, j->len - j->off, &used);
        j->off += used;
        if (rc < 0) return b2d_http_fail(err, 500, "internal", NULL, "a reply: %s", b2ipc_strerror(rc));
        if (rc == 0) break;
        const uint8_t *p;
        size_t n;
        b2ipc_reader_frame(&j->rd, &p, &n);
        b2ipc_error e;
        if (b2ipc_decode_reply(p, n, rp, &e) < 0)
            return b2d_http_fail(err, 500, "internal", NULL, "a reply: %s", e.message);
        if (rp->type == B2IPC_REPLY_DONE || rp->type == B2IPC_REPLY_ERROR || rp->type == B2IPC_REPLY_FEATURES)
            j->finished = 1;
        return 1;
    }
    if (j->len && j->cl) b2d_client_sent(j->cl, j->len); /* all of it passed on */
    free(j->buf);
    j->buf = NULL;
    j->off = j->len = 0;
    return 0;
}

int b2d_backend_next(b2d_bjob *j, int watch_fd, b2ipc_reply *rp, b2d_http_error *err)
{
    for (;;) {
        int rc = next_frame(j, rp, err);
        if (rc != 0) return rc;
        if (j->finished) return b2d_http_fail(err, 500, "internal", NULL, "no reply after the last one");
        pthread_mutex_lock(&j->mu);
        if (j->q.size) { /* take what the sink queued */
            j->buf = j->q.data;
            j->len = j->q.size;
            j->off = 0;
            msgpack_sbuffer_init(&j->q);
        }
        pthread_mutex_unlock(&j->mu);
        if (j->len) continue;
        struct pollfd p[2] = { { j->efd, POLLIN, 0 }, { watch_fd, POLLRDHUP, 0 } };
        int np = watch_fd >= 0 ? 2 : 1;
        if (poll(p, (nfds_t)np, -1) < 0) {
            if (errno == EINTR) continue;
            return b2d_http_fail(err, 500, "internal", NULL, "poll: %s", strerror(errno));
        }
        if (np == 2 && p[1].revents) { /* the HTTP client hung up: closing the client cancels */
            b2d_client_close(j->cl);
            j->cl = NULL;
            j->finished = 1;
            return 0;
        }
        uint64_t n;
        ssize_t r = read(j->efd, &n, sizeof n);
        (void)r;
    }
}

void b2d_backend_close(b2d_bjob *j)
{
    if (!j) return;
    b2d_client_close(j->cl); /* before the terminal reply: cancels; after it, the sink is never called again */
    if (j->efd >= 0) close(j->efd);
    msgpack_sbuffer_destroy(&j->q);
    b2ipc_reader_destroy(&j->rd);
    free(j->buf);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

int b2d_backend_status(b2d_backend *b, b2ipc_reply *rp, b2d_status_text *txt, b2d_http_error *err)
{
    (void)err;
    b2ipc_reply_init(rp, B2IPC_REPLY_STATUS);
    b2d_core_status(b->core, &rp->status, txt);
    return 0;
}

int b2d_backend_memory(b2d_backend *b, long long n)
{
    return b2d_core_memory(b->core, B2D_MEM_HTTP, n);
}

int b2d_backend_memory_take(b2d_backend *b, size_t n)
{
    if ((long long)n > b2d_core_memory_max(b->core)) return -2;
    return b2d_core_memory_take(b->core, B2D_MEM_HTTP, n);
}

const b2ipc_limits *b2d_backend_limits(b2d_backend *b)
{
    return b2d_core_limits(b->core);
}
