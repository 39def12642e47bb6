/*
 * http_backend.c - the HTTP front end's submission point: a generate
 * request in, its token/done/error replies out, in the calling HTTP
 * connection thread.
 *
 * It speaks the wire protocol (libipc) to the daemon's own Unix socket, one
 * connection per HTTP request.  So an HTTP request enters the daemon
 * through the same admission as every socket client: validation, queue
 * limit and `busy`, fairness, the feature cache, the engine's batching,
 * shutdown; and closing the connection is the protocol's cancel (docs/
 * protocol.md section 8), which is how a vanished HTTP client cancels its
 * request.  No second engine and no second scheduler.
 *
 *   submit: socket() -> connect(daemon socket) -> generate frame
 *   next:   poll(daemon fd, HTTP client fd for POLLRDHUP) -> b2ipc_reader
 *           -> b2ipc_decode_reply -> the caller
 *   close:  close(daemon fd) = cancel (if it had not finished)
 */
#include "http.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct b2d_backend {
    char path[108];
};

struct b2d_bjob {
    int fd;
    int finished;       /* the terminal reply was read */
    b2ipc_reader rd;
    uint8_t buf[65536];
    size_t off, len;    /* unread bytes of buf */
};

b2d_backend *b2d_backend_new(const char *socket_path)
{
    b2d_backend *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    snprintf(b->path, sizeof b->path, "%s", socket_path);
    return b;
}

void b2d_backend_free(b2d_backend *b)
{
    free(b);
}

static int dial(const b2d_backend *b, b2d_http_error *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", b->path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return b2d_http_fail(err, 503, "unavailable", NULL, "the daemon's scheduler cannot be reached: %s",
                             strerror(e));
    }
    return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_request(int fd, const b2ipc_request *rq, b2d_http_error *err)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error e;
    int rc = b2ipc_encode_request(&sb, rq, NULL, &e);
    if (rc < 0) {
        b2d_http_from_code(err, rc, e.field, e.message);
    } else if (send_all(fd, sb.data, sb.size) < 0) {
        rc = b2d_http_fail(err, 503, "unavailable", NULL, "the daemon's scheduler went away: %s",
                           strerror(errno));
    }
    msgpack_sbuffer_destroy(&sb);
    return rc < 0 ? -1 : 0;
}

int b2d_backend_submit(b2d_backend *b, const b2ipc_request *rq, b2d_bjob **out, b2d_http_error *err)
{
    *out = NULL;
    b2d_bjob *j = calloc(1, sizeof *j);
    if (!j) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    b2ipc_reader_init(&j->rd, 0);
    if ((j->fd = dial(b, err)) < 0) {
        b2ipc_reader_destroy(&j->rd);
        free(j);
        return -1;
    }
    b2ipc_request q = *rq;
    q.id = 1;
    if (send_request(j->fd, &q, err) < 0) {
        b2d_backend_close(j);
        return -1;
    }
    *out = j;
    return 0;
}

/* The next complete frame from the bytes read so far: 1 and *rp, 0 when
 * more bytes are needed, -1 on a broken stream. */
static int next_frame(b2d_bjob *j, b2ipc_reply *rp, b2d_http_error *err)
{
    while (j->off < j->len) {
        size_t used;
        int rc = b2ipc_reader_feed(&j->rd, j->buf + j->off, j->len - j->off, &used);
        j->off += used;
        if (rc < 0) return b2d_http_fail(err, 500, "internal", NULL, "a reply of the daemon: %s", b2ipc_strerror(rc));
        if (rc == 0) break;
        const uint8_t *p;
        size_t n;
        b2ipc_reader_frame(&j->rd, &p, &n);
        b2ipc_error e;
        if (b2ipc_decode_reply(p, n, rp, &e) < 0)
            return b2d_http_fail(err, 500, "internal", NULL, "a reply of the daemon: %s", e.message);
        if (rp->type == B2IPC_REPLY_DONE || rp->type == B2IPC_REPLY_ERROR || rp->type == B2IPC_REPLY_STATUS)
            j->finished = 1;
        return 1;
    }
    j->off = j->len = 0;
    return 0;
}

int b2d_backend_next(b2d_bjob *j, int watch_fd, b2ipc_reply *rp, b2d_http_error *err)
{
    for (;;) {
        int rc = next_frame(j, rp, err);
        if (rc != 0) return rc;
        if (j->finished) return b2d_http_fail(err, 500, "internal", NULL, "no reply after the last one");
        struct pollfd p[2] = { { j->fd, POLLIN, 0 }, { watch_fd, POLLRDHUP, 0 } };
        int np = watch_fd >= 0 ? 2 : 1;
        if (poll(p, (nfds_t)np, -1) < 0) {
            if (errno == EINTR) continue;
            return b2d_http_fail(err, 500, "internal", NULL, "poll: %s", strerror(errno));
        }
        if (np == 2 && p[1].revents) { /* the HTTP client hung up: closing cancels */
            close(j->fd);
            j->fd = -1;
            j->finished = 1;
            return 0;
        }
        if (!p[0].revents) continue;
        ssize_t got = recv(j->fd, j->buf, sizeof j->buf, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return b2d_http_fail(err, 503, "unavailable", NULL, "the daemon closed the connection");
        j->off = 0;
        j->len = (size_t)got;
    }
}

void b2d_backend_close(b2d_bjob *j)
{
    if (!j) return;
    if (j->fd >= 0) close(j->fd); /* before the terminal reply: the daemon cancels the request */
    b2ipc_reader_destroy(&j->rd);
    free(j);
}

int b2d_backend_status(b2d_backend *b, b2ipc_reply *rp, b2d_http_error *err)
{
    b2ipc_request rq;
    b2ipc_request_init(&rq, B2IPC_OP_STATUS);
    b2d_bjob *j;
    if (b2d_backend_submit(b, &rq, &j, err) < 0) return -1;
    int rc = b2d_backend_next(j, -1, rp, err);
    b2d_backend_close(j);
    if (rc == 1 && rp->type != B2IPC_REPLY_STATUS) {
        const char *t = b2ipc_reply_type_name(rp->type);
        b2d_http_fail(err, 500, "internal", NULL, "the daemon answered status with %s", t ? t : "?");
        b2ipc_reply_free(rp);
        return -1;
    }
    return rc == 1 ? 0 : -1;
}
