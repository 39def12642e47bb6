/*
 * server.c - the loop thread of blip2d: connections, frames, replies.
 *
 *   listening socket --accept4--> conn (SO_PEERCRED logged)
 *   conn readable --recvmsg--> bytes + SCM_RIGHTS descriptors (FIFO, <= 8)
 *     -> b2ipc_reader -> frames -> b2ipc_decode_request
 *        hello / ping / status / cancel: answered here, never queued
 *        generate, features: b2d_submit to the core (core.c), each
 *        connection being one b2d_client of it (frontend.h)
 *   pool and engine threads --conn_reply, the client's sink: encoded,
 *     locked list + uv_async--> events -> the connection's output buffer
 *     -> conn writable --send-->
 *
 * With --queue, the queue front end (queue_front.c, queue.c: a thread of
 * its own) is one more client of the core.
 *
 * Only this thread touches connections.  Events carry the connection's id,
 * and the sink reads only the connection's immutable id and server, so
 * results for a connection that has gone are dropped.
 * Back-pressure: above cfg->max_output buffered bytes the connection is
 * not read any more (its requests keep their results: tokens are never
 * dropped); if the buffer stays full for cfg->stall_timeout seconds the
 * connection is closed, which cancels its requests.  SIGTERM/SIGINT: stop
 * accepting, refuse new work, let running work finish until the deadline,
 * cancel the rest, flush, exit.
 */
#include "daemon.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <grp.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define MAX_FDS 8

/* A frame produced off the loop thread for one connection. */
typedef struct b2d_event {
    uint64_t conn_id;
    size_t len;
    struct b2d_event *next;
    uint8_t data[];           /* one complete frame */
} b2d_event;

typedef struct conn {
    struct b2d_server *srv;
    uint64_t id;
    int fd;
    uv_poll_t poll;
    uv_timer_t stall;
    int handles_open;
    b2ipc_reader rd;
    int fds[MAX_FDS];
    int nfds;
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    size_t owed;           /* bytes of sink replies in out, not yet reported sent */
    size_t in_charged;     /* the reader's memory, charged to the budget */
    double frame_t0;       /* when the partial frame being read started (0: none) */
    double t_active;       /* when it last sent bytes */
    double t_busy;         /* when it last held something (a request, a partial frame, output) */
    int paused, stalled;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    b2d_client *client;    /* its requests in the core */
    uint32_t proto;        /* protocol version in use: 1 until a hello says more */
    struct conn *next;
} conn;

struct b2d_server {
    uv_loop_t loop;
    uv_poll_t listen_poll;
    int listen_fd;
    uv_async_t async;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t shutdown_timer, tick_timer, watchdog_timer;
    uv_timer_t accept_timer;  /* restarts the paused listen watcher */
    double starved_since;     /* > 0: accept ran out of descriptors then */
    unsigned long starved_tries;
    const b2d_config *cfg;
    b2d_core *core;           /* the pipeline (frontend.h) */
    int reloading;
    double idle_since;
    int trimmed;              /* heap handed back since the last work */
    char last_status[160];
    pthread_mutex_t evmu;
    b2d_event *evhead, *evtail;
    conn *conns;
    int nconns;
    uint64_t next_conn_id;
    double t_deadline;
    int shutting_down, canceled_all;
    b2d_queue_front *qf;      /* --queue: the queue front end (queue_front.c), or NULL */
};

static void conn_close(conn *c, const char *why);
static void conn_update_poll(conn *c);
static void poll_cb(uv_poll_t *h, int status, int events);

/* ---- events from other threads ---- */

static void deliver(struct b2d_server *s, b2d_event *ev)
{
    pthread_mutex_lock(&s->evmu);
    if (s->evtail) s->evtail->next = ev; else s->evhead = ev;
    s->evtail = ev;
    pthread_mutex_unlock(&s->evmu);
    uv_async_send(&s->async);
}

static conn *find_conn(struct b2d_server *s, uint64_t id)
{
    for (conn *c = s->conns; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

static int out_append(conn *c, const void *data, size_t len)
{
    if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + len > c->out_cap) {
        if (c->out_off > 0) { /* compact first */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t nc = c->out_cap ? c->out_cap : 65536;
            while (nc < c->out_len + len) nc *= 2;
            uint8_t *n = realloc(c->out, nc);
            if (!n) return -1;
            c->out = n;
            c->out_cap = nc;
        }
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return 0;
}

static void send_reply(conn *c, const b2ipc_reply *rp)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error err;
    if (b2ipc_encode_reply(&sb, rp, &err) == 0) out_append(c, sb.data, sb.size);
    else LOG_ERR("cannot encode a %s reply: %s", b2ipc_reply_type_name(rp->type), err.message);
    msgpack_sbuffer_destroy(&sb);
    conn_update_poll(c);
}

static void send_error(conn *c, int has_id, uint64_t id, int code, const char *field, const char *msg)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (b2ipc_encode_error(&sb, has_id, id, code, field, msg) == 0) out_append(c, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    conn_update_poll(c);
}

/* The sink of a connection's client (frontend.h): any thread, under the
 * client's lock.  Encodes rp into an event for the loop thread; reads
 * only the connection's immutable id and server (b2d_client_close in
 * conn_close ends the calls before the connection is freed). */
static size_t conn_reply(void *ctx, const b2ipc_reply *rp, int terminal)
{
    const conn *c = ctx;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error err;
    int rc = rp->type == B2IPC_REPLY_ERROR
                 ? b2ipc_encode_error(&sb, rp->has_id, rp->id, rp->error.code, rp->error.field, rp->error.message)
                 : b2ipc_encode_reply(&sb, rp, &err);
    if (rc < 0 && rp->type != B2IPC_REPLY_ERROR) {
        LOG_ERR("cannot encode a %s reply: %s", b2ipc_reply_type_name(rp->type), err.message);
        if (terminal) rc = b2ipc_encode_error(&sb, true, rp->id, B2IPC_EINTERNAL, NULL, err.message);
    }
    b2d_event *ev = rc == 0 ? malloc(sizeof *ev + sb.size) : NULL;
    size_t bytes = ev ? sb.size : 0;
    if (ev) {
        *ev = (b2d_event){.conn_id = c->id, .len = sb.size};
        memcpy(ev->data, sb.data, sb.size);
        deliver(c->srv, ev);
    } else {
        LOG_ERR("out of memory: a reply was lost");
    }
    msgpack_sbuffer_destroy(&sb);
    return bytes;
}

static const b2d_sink conn_sink = {conn_reply};

static void event_to_conn(conn *c, b2d_event *ev)
{
    if (out_append(c, ev->data, ev->len) == 0) c->owed += ev->len;
    else b2d_client_sent(c->client, ev->len); /* lost: it holds nothing */
    conn_update_poll(c);
}

static void async_cb(uv_async_t *h)
{
    struct b2d_server *s = h->data;
    pthread_mutex_lock(&s->evmu);
    b2d_event *ev = s->evhead;
    s->evhead = s->evtail = NULL;
    pthread_mutex_unlock(&s->evmu);
    while (ev) {
        b2d_event *n = ev->next;
        conn *c = find_conn(s, ev->conn_id);
        if (c) event_to_conn(c, ev);
        free(ev);
        ev = n;
    }
}

/* ---- output and back-pressure ---- */

static void stall_cb(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->out_len - c->out_off > c->srv->cfg->max_output) {
        LOG_WARN("connection %llu (uid %u): client stopped reading for %.0f s; closing it",
                 (unsigned long long)c->id, (unsigned)c->uid, c->srv->cfg->stall_timeout);
        conn_close(c, NULL);
    }
}

static void conn_update_poll(conn *c)
{
    if (c->fd < 0 || !c->handles_open) return;
    assert(c->handles_open == 2 && c->client && c->out_off <= c->out_len);
    const b2d_config *cfg = c->srv->cfg;
    size_t pending = c->out_len - c->out_off;
    int full = pending > cfg->max_output;
    if (full && !c->stalled) {
        c->stalled = 1;
        uv_timer_start(&c->stall, stall_cb, (uint64_t)(cfg->stall_timeout * 1000), 0);
    } else if (!full && c->stalled) {
        c->stalled = 0;
        uv_timer_stop(&c->stall);
    }
    /* over the memory budget, a partial frame waits (--frame-timeout bounds it) */
    int starved = b2ipc_reader_pending(&c->rd) > 0 && b2d_core_memory(c->srv->core, B2D_MEM_INPUT, 0);
    c->paused = full || starved;
    int ev = (c->paused ? 0 : UV_READABLE) | (pending ? UV_WRITABLE : 0);
    if (ev) uv_poll_start(&c->poll, ev, poll_cb);
    else uv_poll_stop(&c->poll);
}

/* ---- requests ---- */

static int take_fd(conn *c)
{
    if (c->nfds == 0) return -1;
    int fd = c->fds[0];
    memmove(c->fds, c->fds + 1, sizeof(int) * (size_t)(c->nfds - 1));
    c->nfds--;
    return fd;
}

/* generate and features: the protocol version gate of this front end,
 * then the core's admission (b2d_submit); fd is taken. */
static void handle_submit(conn *c, const b2ipc_request *rq, int fd)
{
    if (rq->op == B2IPC_OP_FEATURES && c->proto < 2) {
        if (fd >= 0) close(fd);
        send_error(c, 1, rq->id, B2IPC_EUNKNOWN_OP, "op", "features needs protocol version 2: send hello with v >= 2 first");
        return;
    }
    b2d_refusal why;
    if (b2d_submit(c->client, rq, fd, &why) < 0) send_error(c, 1, rq->id, why.code, why.field, why.message);
}

static void handle_status(conn *c, uint64_t id)
{
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_STATUS);
    rp.id = id;
    b2d_status_text txt;
    b2d_core_status(c->srv->core, &rp.status, &txt);
    send_reply(c, &rp);
}

static void handle_frame(conn *c, const uint8_t *payload, size_t len)
{
    struct b2d_server *s = c->srv;
    b2ipc_request rq;
    b2ipc_error err;
    const b2ipc_limits *lim = b2d_core_limits(s->core);
    int bad = b2ipc_decode_request(payload, len, lim, &rq, &err) < 0;
    if (rq.has_id && b2d_in_flight(c->client, rq.id)) {
        /* whatever the op and whatever else is wrong: a reply with an id in
         * flight must not look like that request's terminal reply */
        err.code = B2IPC_EDUP_ID;
        snprintf(err.message, sizeof err.message, "this id is already in flight on this connection");
        err.field[0] = 0;
        bad = 1;
    }
    if (bad) {
        if (rq.takes_fd) {
            int fd = take_fd(c);
            if (fd >= 0) close(fd);
        }
        LOG_DEBUG("connection %llu: refused a frame: %s", (unsigned long long)c->id, err.message);
        send_error(c, rq.has_id, rq.id, err.code, err.field[0] ? err.field : NULL, err.message);
        b2ipc_request_free(&rq);
        return;
    }
    int fd = rq.takes_fd ? take_fd(c) : -1;
    b2ipc_reply rp;
    switch (rq.op) {
    case B2IPC_OP_HELLO:
        b2ipc_reply_init(&rp, B2IPC_REPLY_HELLO);
        rp.id = rq.id;
        rp.hello.v = rq.hello.v < B2IPC_PROTOCOL_VERSION ? rq.hello.v : B2IPC_PROTOCOL_VERSION;
        c->proto = rp.hello.v;
        rp.hello.server = "blip2d " PACKAGE_VERSION;
        rp.hello.max_frame = s->cfg->max_frame;
        rp.hello.max_image_bytes = lim->max_image_bytes;
        rp.hello.max_prompt_bytes = lim->max_prompt_bytes;
        if (rq.hello.client) LOG_DEBUG("connection %llu: client \"%s\"", (unsigned long long)c->id, rq.hello.client);
        send_reply(c, &rp);
        break;
    case B2IPC_OP_PING:
        b2ipc_reply_init(&rp, B2IPC_REPLY_PONG);
        rp.id = rq.id;
        send_reply(c, &rp);
        break;
    case B2IPC_OP_STATUS:
        handle_status(c, rq.id);
        break;
    case B2IPC_OP_CANCEL:
        if (!b2d_cancel(c->client, rq.cancel.target, &rq.id)) {
            /* not in flight: perhaps its terminal reply unlisted it a moment
             * ago and waits, with its last tokens, in the event queue; they
             * go out first, so nothing of the target follows this reply */
            async_cb(&s->async);
            b2ipc_reply_init(&rp, B2IPC_REPLY_CANCEL);
            rp.id = rq.id;
            rp.cancel.found = false;
            send_reply(c, &rp);
        }
        break;
    case B2IPC_OP_GENERATE:
    case B2IPC_OP_FEATURES:
        handle_submit(c, &rq, fd);
        fd = -1;
        break;
    default:
        send_error(c, 1, rq.id, B2IPC_EUNKNOWN_OP, "op", "unknown op");
        break;
    }
    if (fd >= 0) close(fd);
    b2ipc_request_free(&rq);
}

/* ---- connection I/O ---- */

/* Does c hold nothing: no request in flight, no partial frame, no unsent
 * output? */
static int conn_idle(conn *c)
{
    return b2d_client_inflight(c->client) == 0 && !b2ipc_reader_pending(&c->rd) && c->out_off == c->out_len;
}

static void on_readable(conn *c)
{
    uint8_t buf[65536];
    for (int rounds = 0; rounds < 16 && c->fd >= 0 && !c->paused; rounds++) {
        union { char b[CMSG_SPACE(sizeof(int) * MAX_FDS)]; struct cmsghdr align; } ctl;
        memset(&ctl, 0, sizeof ctl);
        struct iovec iov = {buf, sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
        ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0) { /* nothing was received: the control buffer is not ours to parse */
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            if (b2ipc_reader_pending(&c->rd)) LOG_DEBUG("connection %llu: closed mid-frame", (unsigned long long)c->id);
            conn_close(c, strerror(errno));
            return;
        }
        int too_many = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
            int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *fds = (int *)CMSG_DATA(cm);
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, &fds[i], sizeof fd);
                if (c->nfds < MAX_FDS) c->fds[c->nfds++] = fd;
                else { close(fd); too_many = 1; }
            }
        }
        if (too_many || (mh.msg_flags & MSG_CTRUNC)) {
            send_error(c, 0, 0, B2IPC_EBAD_FD, NULL, "more than 8 unclaimed descriptors; closing the connection");
            conn_close(c, "too many descriptors");
            return;
        }
        if (n == 0) {
            if (b2ipc_reader_pending(&c->rd)) LOG_DEBUG("connection %llu: closed mid-frame", (unsigned long long)c->id);
            conn_close(c, NULL);
            return;
        }
        size_t off = 0;
        while (off < (size_t)n && c->fd >= 0) {
            size_t used = 0;
            int rc = b2ipc_reader_feed(&c->rd, buf + off, (size_t)n - off, &used);
            off += used;
            if (rc < 0) {
                send_error(c, 0, 0, rc, NULL, rc == B2IPC_EFRAME_TOO_LARGE ?
                           "frame larger than the server's max_frame; closing the connection" : b2ipc_strerror(rc));
                conn_close(c, "bad frame"); /* sends the error first, best effort */
                return;
            }
            if (rc == 0) break;
            c->frame_t0 = 0;
            const uint8_t *p;
            size_t len;
            if (b2ipc_reader_frame(&c->rd, &p, &len) == 0) handle_frame(c, p, len);
        }
        if (c->fd < 0) return;
        c->t_active = b2d_now_ms();
        if (b2ipc_reader_pending(&c->rd) && !c->frame_t0) c->frame_t0 = c->t_active;
        size_t mem = b2ipc_reader_memory(&c->rd);
        int over = b2d_core_memory(c->srv->core, B2D_MEM_INPUT, (long long)mem - (long long)c->in_charged);
        c->in_charged = mem;
        if (over && b2ipc_reader_pending(&c->rd)) return; /* conn_update_poll pauses it */
    }
}

static void on_writable(conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n < 0) { conn_close(c, strerror(errno)); return; }
        c->out_off += (size_t)n;
        size_t done = (size_t)n < c->owed ? (size_t)n : c->owed;
        c->owed -= done;
        b2d_client_sent(c->client, done);
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->owed) b2d_client_sent(c->client, c->owed);
        c->owed = 0;
        if (c->out_cap > (1u << 20)) { /* a large reply went out: give its room back */
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
    }
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    conn *c = h->data;
    if (status < 0) { conn_close(c, uv_strerror(status)); return; }
    if (events & UV_WRITABLE) on_writable(c);
    if (c->fd >= 0 && (events & UV_READABLE)) on_readable(c);
    if (c->fd >= 0) conn_update_poll(c);
}

static void conn_free_cb(uv_handle_t *h)
{
    conn *c = h->data;
    assert(c->fd < 0 && c->handles_open > 0 && !c->client);
    if (--c->handles_open > 0) return;
    assert(c->nfds == 0);
    free(c->out);
    b2ipc_reader_destroy(&c->rd);
    free(c);
}

static void conn_close(conn *c, const char *why)
{
    struct b2d_server *s = c->srv;
    if (c->fd < 0) return;
    /* unlink first: results still arriving for it are dropped */
    for (conn **pp = &s->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) { *pp = c->next; break; }
    s->nconns--;
    int canceled = b2d_client_close(c->client); /* no reply reaches it from here */
    c->client = NULL;
    b2d_core_memory(s->core, B2D_MEM_INPUT, -(long long)c->in_charged);
    c->in_charged = 0;
    for (int i = 0; i < c->nfds; i++) close(c->fds[i]);
    c->nfds = 0;
    if (c->out_off < c->out_len) /* best effort: a last error frame */
        (void)send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    LOG_INFO("connection %llu (pid %ld uid %u gid %u) closed%s%s%s", (unsigned long long)c->id, (long)c->pid,
             (unsigned)c->uid, (unsigned)c->gid, why ? ": " : "", why ? why : "",
             canceled ? "; its requests were canceled" : "");
    uv_poll_stop(&c->poll);
    uv_timer_stop(&c->stall);
    close(c->fd);
    c->fd = -1;
    uv_close((uv_handle_t *)&c->poll, conn_free_cb);
    uv_close((uv_handle_t *)&c->stall, conn_free_cb);
}

/* Turns a just-accepted connection away: one id-less error frame (best
 * effort, never blocking), then close. */
static void refuse(int fd, int code, const char *msg)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (b2ipc_encode_error(&sb, false, 0, code, NULL, msg) == 0)
        (void)send(fd, sb.data, sb.size, MSG_NOSIGNAL | MSG_DONTWAIT);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
}

/* --allow-uid / --allow-gid: the peer's uid, primary gid or one of its
 * supplementary groups (SO_PEERGROUPS) must be listed. */
static int peer_allowed(const b2d_config *cfg, int fd, const struct ucred *cr)
{
    if (cfg->n_allow_uid == 0 && cfg->n_allow_gid == 0) return 1;
    for (int i = 0; i < cfg->n_allow_uid; i++)
        if (cfg->allow_uid[i] == cr->uid) return 1;
    for (int i = 0; i < cfg->n_allow_gid; i++)
        if (cfg->allow_gid[i] == cr->gid) return 1;
    gid_t groups[256];
    socklen_t len = sizeof groups;
    if (cfg->n_allow_gid && getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
        for (size_t k = 0; k < len / sizeof(gid_t); k++)
            for (int i = 0; i < cfg->n_allow_gid; i++)
                if (cfg->allow_gid[i] == groups[k]) return 1;
    return 0;
}

/* Has the peer of fd closed (or reset) the connection?  It can read no
 * reply any more.  The loop learns it only when it reads the end of the
 * stream, which can be late: connections accepted in one batch are read
 * after the whole batch, and one paused (over --max-output, or with a
 * partial frame over the memory budget) is not read until it resumes. */
static int peer_gone(int fd)
{
    struct pollfd pf = {fd, POLLIN, 0};
    return poll(&pf, 1, 0) > 0 && (pf.revents & (POLLHUP | POLLERR));
}

/* Is uid at its connection cap (--max-connections-per-uid)?  Its
 * connections whose peers have gone are closed first: they only wait to
 * be read, and counting them would close an open connection for them (in
 * a burst of short connections, the one long-lived idle connection).
 * Then if one of its connections is idle (nothing in flight, nothing half
 * read or unsent), the least recently active one is closed to make room. */
static int user_full(struct b2d_server *s, uid_t uid)
{
    int n = 0;
    for (conn *c = s->conns; c; c = c->next) n += c->uid == uid;
    if (n < s->cfg->max_conns_per_uid) return 0;
    n = 0;
    conn *idle = NULL;
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->uid != uid) continue;
        if (peer_gone(c->fd)) {
            conn_close(c, "its peer had gone (found when its user reached --max-connections-per-uid)");
            continue;
        }
        n++;
        if (conn_idle(c) && (!idle || c->t_active < idle->t_active))
            idle = c;
    }
    if (n < s->cfg->max_conns_per_uid) return 0;
    if (!idle) return 1;
    conn_close(idle, "idle, and its user opened more than --max-connections-per-uid");
    return 0;
}

static void accept_cb(uv_poll_t *h, int status, int events);

static void accept_resume_cb(uv_timer_t *t)
{
    struct b2d_server *s = t->data;
    if (!s->shutting_down && s->listen_fd >= 0) uv_poll_start(&s->listen_poll, UV_READABLE, accept_cb);
}

/* accept4 found no descriptor free (EMFILE, ENFILE; or no kernel memory).
 * The connection stays in the backlog and the listening socket readable,
 * so the level-triggered watcher would call back at once, for ever: stop
 * it and look again in a second.  One warning per episode, which ends when
 * the backlog is drained (accept4 says EAGAIN; an info line then), however
 * often descriptors came and went meanwhile. */
static void accept_starved(struct b2d_server *s, int err)
{
    if (s->starved_since == 0) {
        s->starved_since = b2d_now_ms();
        s->starved_tries = 0;
        LOG_WARN("accept: %s; new connections wait in the backlog until descriptors are free (retrying every second)",
                 strerror(err));
    }
    s->starved_tries++;
    uv_poll_stop(&s->listen_poll);
    uv_timer_start(&s->accept_timer, accept_resume_cb, 1000, 0);
}

static void accept_cb(uv_poll_t *h, int status, int events)
{
    struct b2d_server *s = h->data;
    (void)events;
    if (status < 0) return;
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                accept_starved(s, errno);
            } else if ((errno == EAGAIN || errno == EWOULDBLOCK) && s->starved_since > 0) {
                LOG_INFO("accept: the backlog is drained, %.0f s after descriptors ran out (%lu pauses)",
                         (b2d_now_ms() - s->starved_since) / 1000, s->starved_tries);
                s->starved_since = 0;
            }
            return;
        }
        struct ucred cr = {0, (uid_t)-1, (gid_t)-1};
        socklen_t crl = sizeof cr;
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crl);
        if (!peer_allowed(s->cfg, fd, &cr)) {
            refuse(fd, B2IPC_EPERM, "this user may not use blip2d (see its --allow-uid/--allow-gid)");
            LOG_WARN("refused a connection from pid %ld uid %u gid %u: not in the allow lists",
                     (long)cr.pid, (unsigned)cr.uid, (unsigned)cr.gid);
            continue;
        }
        if (user_full(s, cr.uid)) {
            refuse(fd, B2IPC_EBUSY, "too many connections from this user, none of them idle");
            LOG_WARN("refused a connection from uid %u: too many connections from this user", (unsigned)cr.uid);
            continue;
        }
        if (s->nconns >= s->cfg->max_connections || s->shutting_down) {
            refuse(fd, s->shutting_down ? B2IPC_ESHUTDOWN : B2IPC_EBUSY,
                   s->shutting_down ? "blip2d is shutting down" : "too many connections");
            LOG_WARN("refused a connection from uid %u: %s", (unsigned)cr.uid,
                     s->shutting_down ? "shutting down" : "too many connections");
            continue;
        }
        conn *c = calloc(1, sizeof *c);
        if (c && !(c->client = b2d_client_new(s->core, cr.uid, &conn_sink, c))) {
            free(c);
            c = NULL;
        }
        if (!c) { close(fd); continue; }
        c->srv = s;
        c->id = ++s->next_conn_id;
        c->fd = fd;
        c->uid = cr.uid;
        c->t_active = c->t_busy = b2d_now_ms();
        c->proto = 1;
        c->gid = cr.gid;
        c->pid = cr.pid;
        int prc = uv_poll_init(&s->loop, &c->poll, fd);
        if (prc < 0) { /* e.g. a number still registered: never poll a half-made handle */
            LOG_ERR("connection from uid %u: cannot watch its socket: %s", (unsigned)cr.uid, uv_strerror(prc));
            b2d_client_close(c->client);
            free(c);
            close(fd);
            continue;
        }
        b2ipc_reader_init(&c->rd, s->cfg->max_frame);
        uv_timer_init(&s->loop, &c->stall);
        c->handles_open = 2;
        c->poll.data = c->stall.data = c;
        c->next = s->conns;
        s->conns = c;
        s->nconns++;
        LOG_DEBUG("connection %llu from pid %ld uid %u gid %u", (unsigned long long)c->id, (long)c->pid,
                 (unsigned)c->uid, (unsigned)c->gid);
        conn_update_poll(c);
    }
}

/* ---- shutdown ---- */

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void shutdown_tick(uv_timer_t *t)
{
    struct b2d_server *s = t->data;
    double now = b2d_now_ms();
    if (!s->canceled_all && now >= s->t_deadline) {
        LOG_WARN("shutdown deadline reached: canceling the remaining requests");
        s->canceled_all = 1;
        b2d_core_cancel_all(s->core);
    }
    int unsent = 0;
    b2d_core_counts n;
    b2d_core_counts_get(s->core, &n);
    for (conn *c = s->conns; c; c = c->next) unsent |= c->out_off < c->out_len;
    int idle = n.in_prep == 0 && n.queued == 0 && n.active == 0 && n.inflight == 0;
    if ((idle && !unsent) || now >= s->t_deadline + 5000) {
        if (!idle) { /* the hard stop: a last reply for what is still being prepared */
            b2d_core_end_preparing(s->core);
            async_cb(&s->async);
        }
        while (s->conns) conn_close(s->conns, "shutting down");
        uv_stop(&s->loop);
    }
}

static void signal_cb(uv_signal_t *h, int signum)
{
    struct b2d_server *s = h->data;
    if (s->shutting_down) {
        LOG_WARN("second signal: canceling everything now");
        s->t_deadline = b2d_now_ms();
        return;
    }
    LOG_INFO("%s: shutting down (running requests get %.0f s to finish)", strsignal(signum), s->cfg->shutdown_timeout);
    s->shutting_down = 1;
    b2d_core_shutdown(s->core);
    b2d_queue_front_drain(s->qf); /* no new jobs; running ones finish and are written */
    sd_notify(0, "STOPPING=1\nSTATUS=stopping");
    s->t_deadline = b2d_now_ms() + s->cfg->shutdown_timeout * 1000;
    uv_poll_stop(&s->listen_poll);
    close(s->listen_fd);
    s->listen_fd = -1;
    b2d_sockfile_remove(s->cfg->sockfile); /* once, and only if still ours */
    uv_timer_start(&s->shutdown_timer, shutdown_tick, 0, 20);
}

/* ---- reload (SIGHUP), status, watchdog, idle exit ---- */

typedef struct reload_work {
    uv_work_t w;
    struct b2d_server *srv;
    blip2_model *m;
    blip2_error err;
    double t0;
} reload_work;

static void reload_load_cb(uv_work_t *w)
{
    reload_work *r = w->data;
    if (blip2_model_load(&r->m, r->srv->cfg->model_path, &r->srv->cfg->load, &r->err) < 0) r->m = NULL;
}

static void reload_done_cb(uv_work_t *w, int status)
{
    reload_work *r = w->data;
    struct b2d_server *s = r->srv;
    s->reloading = 0;
    if (r->m && status == 0) {
        LOG_INFO("reloaded %s in %.0f ms (%s weights); new requests use it", s->cfg->model_path,
                 b2d_now_ms() - r->t0, blip2_model_dtype(r->m));
        b2d_core_set_model(s->core, r->m); /* running jobs keep the old one */
    } else {
        blip2_model_free(r->m);
        LOG_ERR("reload failed, still serving the previous model: %s", r->err.text[0] ? r->err.text : "out of memory");
    }
    sd_notify(0, "READY=1");
    s->last_status[0] = 0;
    free(r);
}

static void sighup_cb(uv_signal_t *h, int signum)
{
    struct b2d_server *s = h->data;
    (void)signum;
    if (s->reloading || s->shutting_down) return;
    reload_work *r = calloc(1, sizeof *r);
    if (!r) return;
    r->srv = s;
    r->w.data = r;
    r->t0 = b2d_now_ms();
    LOG_INFO("SIGHUP: reloading %s", s->cfg->model_path);
    sd_notifyf(0, "RELOADING=1\nSTATUS=reloading %s", s->cfg->model_path);
    s->reloading = 1;
    if (uv_queue_work(&s->loop, &r->w, reload_load_cb, reload_done_cb) < 0) {
        s->reloading = 0;
        free(r);
        sd_notify(0, "READY=1");
    }
}

static void watchdog_cb(uv_timer_t *t)
{
    (void)t;
    sd_notify(0, "WATCHDOG=1");
}

/* Once a second: the STATUS= line (when it changed), handing freed heap
 * back to the system once the work is done, and the idle exit. */
static void tick_cb(uv_timer_t *t)
{
    struct b2d_server *s = t->data;
    b2d_core_counts n;
    b2d_core_counts_get(s->core, &n);
    char st[sizeof s->last_status];
    snprintf(st, sizeof st, "serving %s: %d active, %d queued, %d connections", s->cfg->model_path, n.active,
             n.queued + n.in_prep, s->nconns);
    if (!s->reloading && !s->shutting_down && strcmp(st, s->last_status) != 0) {
        memcpy(s->last_status, st, sizeof st);
        sd_notifyf(0, "STATUS=%s", st);
    }
    int no_work = n.in_prep == 0 && n.queued == 0 && n.active == 0 && !s->reloading;
#ifdef __GLIBC__
    /* a burst leaves freed chunks in the per-thread malloc arenas of the
     * worker pool, the engine and libvips; a long-lived daemon gives them
     * back when it falls quiet rather than keep its peak size for ever */
    if (no_work && !s->trimmed)
        malloc_trim(0);
#endif
    s->trimmed = no_work;
    /* partial frames past --frame-timeout; connections that held nothing
     * and sent nothing for --idle-timeout; reads paused for memory retried */
    double t_now = b2d_now_ms();
    for (conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        int idle_c = conn_idle(c);
        if (!idle_c) c->t_busy = t_now;
        double quiet = t_now - (c->t_busy > c->t_active ? c->t_busy : c->t_active);
        if (c->frame_t0 && !c->stalled && t_now - c->frame_t0 > s->cfg->frame_timeout * 1000) {
            send_error(c, 0, 0, B2IPC_EBUSY, NULL, "the request frame was not completed in time (--frame-timeout); closing the connection");
            conn_close(c, "a request frame was not completed in time");
        } else if (s->cfg->idle_timeout > 0 && idle_c && quiet > s->cfg->idle_timeout * 1000) {
            conn_close(c, "idle for --idle-timeout");
        } else {
            conn_update_poll(c);
        }
    }
    int idle = no_work && s->nconns == 0 && !s->qf; /* a queue worker waits for jobs */
    double now = b2d_now_ms();
    if (!idle) s->idle_since = now;
    if (s->cfg->idle_exit > 0 && idle && !s->shutting_down && now - s->idle_since >= s->cfg->idle_exit * 1000) {
        /* connections not yet accepted stay in the listening socket's queue,
         * which systemd keeps: the next instance serves them */
        LOG_INFO("idle for %.0f s: exiting", s->cfg->idle_exit);
        sd_notify(0, "STOPPING=1\nSTATUS=idle exit");
        s->shutting_down = 1;
        b2d_core_shutdown(s->core);
        uv_poll_stop(&s->listen_poll);
        uv_stop(&s->loop);
    }
}

int b2d_server_run(const b2d_config *cfg, blip2_model *m, int listen_fd)
{
    struct b2d_server *s = calloc(1, sizeof *s);
    if (!s) {
        blip2_model_free(m);
        return -1;
    }
    s->cfg = cfg;
    s->listen_fd = listen_fd;
    pthread_mutex_init(&s->evmu, NULL);
    uv_loop_init(&s->loop);
    uv_async_init(&s->loop, &s->async, async_cb);
    s->async.data = s;
    if (b2d_core_new(&s->core, cfg, m, &s->loop) < 0) { /* takes the model */
        LOG_ERR("cannot start the engine thread");
        return -1;
    }
    if (cfg->queue.url && b2d_queue_front_start(&s->qf, s->core, cfg) < 0) return -1;
    if (cfg->frontends_start && cfg->frontends_start(s->core, cfg->frontends_ud) < 0) {
        b2d_core_stop(s->core);
        b2d_core_free(s->core);
        return -1;
    }
    uv_poll_init(&s->loop, &s->listen_poll, listen_fd);
    s->listen_poll.data = s;
    uv_poll_start(&s->listen_poll, UV_READABLE, accept_cb);
    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    s->sig_term.data = s->sig_int.data = s;
    uv_signal_start(&s->sig_term, signal_cb, SIGTERM);
    uv_signal_start(&s->sig_int, signal_cb, SIGINT);
    uv_signal_init(&s->loop, &s->sig_hup);
    s->sig_hup.data = s;
    uv_signal_start(&s->sig_hup, sighup_cb, SIGHUP);
    uv_timer_init(&s->loop, &s->shutdown_timer);
    s->shutdown_timer.data = s;
    uv_timer_init(&s->loop, &s->tick_timer);
    s->tick_timer.data = s;
    uv_timer_init(&s->loop, &s->accept_timer);
    s->accept_timer.data = s;
    s->idle_since = b2d_now_ms();
    uv_timer_start(&s->tick_timer, tick_cb, 1000, cfg->idle_exit > 0 && cfg->idle_exit < 2 ? 250 : 1000);
    uint64_t wd_usec = 0;
    uv_timer_init(&s->loop, &s->watchdog_timer);
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        uint64_t every = wd_usec / 2000 ? wd_usec / 2000 : 1; /* half the interval, in ms */
        uv_timer_start(&s->watchdog_timer, watchdog_cb, every, every);
        LOG_INFO("watchdog: pinging every %llu ms", (unsigned long long)every);
    }
    LOG_INFO("ready: serving %s on %s", cfg->model_path, cfg->activated ? "the socket passed by systemd" : cfg->socket_path);
    sd_notifyf(0, "READY=1\nSTATUS=serving %s", cfg->model_path);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    /* the engine has nothing left; the other front ends close their
     * clients; drain the last events, then tear down */
    if (cfg->frontends_stop) cfg->frontends_stop(cfg->frontends_ud);
    b2d_core_stop(s->core);
    async_cb(&s->async);
    b2d_queue_front_stop(s->qf); /* after the core: what finished is written */
    s->qf = NULL;
    while (s->conns) conn_close(s->conns, NULL);
    if (s->listen_fd >= 0) close(s->listen_fd);
    uv_walk(&s->loop, close_walk_cb, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    b2d_core_free(s->core);
    pthread_mutex_destroy(&s->evmu);
    free(s);
    LOG_INFO("stopped");
    return 0;
}
