/*
 * client.c - a connection to blip2d: connect, send, receive, dispatch.
 *
 *   blip2c_connect: socket path (explicit, $BLIP2_SOCKET, $XDG_RUNTIME_DIR,
 *       /run/blip2) --> non-blocking AF_UNIX socket --> hello (version, limits)
 *
 *   submit/cancel --> b2ipc_encode_request --> out queue --> flush:
 *       send(MSG_NOSIGNAL), or sendmsg with SCM_RIGHTS for the first bytes
 *       of a frame that carries an image descriptor (protocol 6.2)
 *
 *   blip2c_process --> recv until EAGAIN --> b2ipc_reader (frames)
 *       --> b2ipc_decode_reply --> find the request by id --> token / done /
 *       error callbacks, or the waiter of a blocking call (sync.c)
 *
 * Anything unexpected from the daemon (undecodable frame, unknown id, a
 * reply type that does not fit the request) is a protocol error: the
 * stream cannot be trusted any more, so the connection is shut and every
 * pending request fails, as it does when the daemon goes away.  The socket
 * is always non-blocking; blocking calls poll() in b2c__wait.
 */
#include "client-private.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define B2C__CONNECT_TIMEOUT_MS 10000
#define B2C__SYSTEM_SOCKET "/run/blip2/blip2.sock"
#define B2C__START_HINT "Is blip2d running? Start it with: blip2d --model DIR"

static int64_t b2c__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- small accessors -------------------------------------------------------- */

void blip2c_options_init(blip2c_options *o)
{
    if (o) memset(o, 0, sizeof *o);
}

int blip2c_fd(const blip2c_conn *c)
{
    return c ? c->fd : -1;
}

bool blip2c_want_write(const blip2c_conn *c)
{
    return c && !c->broken && c->out_head != NULL;
}

size_t blip2c_pending(const blip2c_conn *c)
{
    return c ? c->n_user : 0;
}

const blip2c_info *blip2c_info_get(const blip2c_conn *c)
{
    return c ? &c->info : NULL;
}

const blip2c_error *blip2c_last_error(const blip2c_conn *c)
{
    return c ? &c->last : NULL;
}

void blip2c_set_timeout(blip2c_conn *c, int timeout_ms)
{
    if (c) c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

/* ---- requests in flight ----------------------------------------------------- */

static void b2c__link(blip2c_conn *c, b2c__req *r)
{
    r->prev = NULL;
    r->next = c->reqs;
    if (c->reqs) c->reqs->prev = r;
    c->reqs = r;
}

static void b2c__unlink(blip2c_conn *c, b2c__req *r)
{
    if (r->prev) r->prev->next = r->next;
    else c->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    r->next = r->prev = NULL;
    if (r->user_visible) {
        r->user_visible = false;
        c->n_user--;
    }
}

static b2c__req *b2c__find(blip2c_conn *c, uint64_t id)
{
    for (b2c__req *r = c->reqs; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

static void b2c__out_free(b2c__out *o)
{
    if (o->fd >= 0) close(o->fd);
    free(o->data);
    free(o);
}

static void b2c__drop_output(blip2c_conn *c)
{
    b2c__out *o = c->out_head;
    while (o) {
        b2c__out *next = o->next;
        b2c__out_free(o);
        o = next;
    }
    c->out_head = c->out_tail = NULL;
}

/* ---- breaking ----------------------------------------------------------------- */

void b2c__mark_broken(blip2c_conn *c, int code, const char *fmt, ...)
{
    if (c->broken) return;  /* the first cause wins */
    va_list ap;
    va_start(ap, fmt);
    c->broken = code;
    c->broken_err.code = code;
    c->broken_err.code_name[0] = '\0';
    c->broken_err.field[0] = '\0';
    vsnprintf(c->broken_err.message, sizeof c->broken_err.message, fmt, ap);
    va_end(ap);
    c->settled = false;
    b2c__drop_output(c);
    /* Wakes the caller's poll (readable, HUP) and makes the daemon cancel
     * our work; the descriptor itself stays open until blip2c_close so its
     * number is not reused under a main loop that still watches it. */
    shutdown(c->fd, SHUT_RDWR);
}

/* Fails every pending request with the break's error.  Only where no
 * callback of c is running (depth 0). */
static void b2c__settle(blip2c_conn *c)
{
    if (!c->broken || c->settled || c->depth > 0) return;
    c->settled = true;
    b2c__req *list = c->reqs;
    c->reqs = NULL;  /* new requests are refused from now on */
    while (list) {
        b2c__req *r = list;
        list = r->next;
        bool visible = r->user_visible;
        if (visible) {
            r->user_visible = false;
            c->n_user--;
        }
        if (r->w) {
            r->w->finished = true;
            r->w->rc = c->broken;
            r->w->err = c->broken_err;
        } else if (visible && r->cb.error) {
            c->depth++;
            r->cb.error(r->user, r->id, &c->broken_err);
            c->depth--;
        }
        free(r);
    }
}

/* ---- writing ------------------------------------------------------------------ */

/* The daemon closed the connection while we were writing.  What it sent
 * before closing is still readable, and an error without id among it says
 * why (permission_denied, busy, a frame it could not read): keep that one.
 * Nothing is dispatched (this may run inside a callback); the connection is
 * about to break and fail every request anyway. */
static void b2c__salvage_idless(blip2c_conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->rbuf, sizeof c->rbuf, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        size_t off = 0;
        while (off < (size_t)n) {
            size_t used = 0;
            int rc = b2ipc_reader_feed(&c->rd, c->rbuf + off, (size_t)n - off, &used);
            off += used;
            if (rc < 0) return;
            if (rc == 0) break;
            const uint8_t *payload;
            size_t len;
            if (b2ipc_reader_frame(&c->rd, &payload, &len) != 0) continue;
            b2ipc_reply rp;
            b2ipc_error ie;
            if (b2ipc_decode_reply(payload, len, &rp, &ie) < 0) return;
            if (!rp.has_id && rp.type == B2IPC_REPLY_ERROR) {
                b2c__from_reply(&c->idless, &rp);
                c->have_idless = true;
                c->last = c->idless;
            }
            b2ipc_reply_free(&rp);
        }
    }
}

static void b2c__flush(blip2c_conn *c)
{
    while (c->out_head && !c->broken) {
        b2c__out *o = c->out_head;
        ssize_t n;
        if (o->fd >= 0) {
            /* The descriptor rides with the first bytes of its frame. */
            struct iovec iov = { o->data + o->off, o->len - o->off };
            union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
            } ctl;
            memset(&ctl, 0, sizeof ctl);
            struct msghdr msg = { 0 };
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctl.buf;
            msg.msg_controllen = sizeof ctl.buf;
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &o->fd, sizeof(int));
            n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        } else {
            n = send(c->fd, o->data + o->off, o->len - o->off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            int e = errno;
            if (e == EPIPE || e == ECONNRESET) b2c__salvage_idless(c);
            if (e == EPIPE || e == ECONNRESET)
                b2c__mark_broken(c, BLIP2C_ECONNLOST,
                                 "connection lost: blip2d closed the connection%s%s",
                                 c->have_idless ? " after: " : " (did it stop or crash?)",
                                 c->have_idless ? c->idless.message : "");
            else
                b2c__mark_broken(c, BLIP2C_ECONNLOST,
                                 "connection lost: cannot write to blip2d: %s",
                                 strerror(e));
            return;
        }
        if (o->fd >= 0) {  /* the kernel has passed it on */
            close(o->fd);
            o->fd = -1;
        }
        o->off += (size_t)n;
        if (o->off == o->len) {
            c->out_head = o->next;
            if (!c->out_head) c->out_tail = NULL;
            b2c__out_free(o);
        }
    }
}

int b2c__send(blip2c_conn *c, const b2ipc_request *rq_in, int kind, int fd,
              const blip2c_callbacks *cb, void *user, b2c__waiter *w,
              b2c__req **out_req, blip2c_error *err)
{
    if (c->broken) {
        if (fd >= 0) close(fd);
        return b2c__report(c, err, &c->broken_err);
    }
    b2ipc_request rq = *rq_in;
    rq.id = c->next_id;

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error ie;
    int rc = b2ipc_encode_request(&sb, &rq, &c->lim, &ie);
    if (rc < 0) {
        msgpack_sbuffer_destroy(&sb);
        if (fd >= 0) close(fd);
        blip2c_error e;
        b2c__from_ipc(&e, rc, &ie);
        return b2c__report(c, err, &e);
    }
    if (c->info.max_frame && sb.size - 4 > c->info.max_frame) {
        size_t size = sb.size - 4;
        msgpack_sbuffer_destroy(&sb);
        if (fd >= 0) close(fd);
        return b2c__cerr(c, err, BLIP2C_EINVAL,
                         "the request is %zu bytes, above the daemon's frame limit "
                         "of %llu bytes; pass a large image by file instead of inline",
                         size, (unsigned long long)c->info.max_frame);
    }
    b2c__out *o = calloc(1, sizeof *o);
    b2c__req *r = calloc(1, sizeof *r);
    if (!o || !r) {
        free(o);
        free(r);
        msgpack_sbuffer_destroy(&sb);
        if (fd >= 0) close(fd);
        return b2c__cerr(c, err, BLIP2C_ENOMEM, "out of memory");
    }
    o->len = sb.size;
    o->data = (uint8_t *)msgpack_sbuffer_release(&sb);
    o->fd = fd;
    if (c->out_tail) c->out_tail->next = o;
    else c->out_head = o;
    c->out_tail = o;

    r->id = c->next_id++;
    r->kind = kind;
    r->stream = kind == B2C__GENERATE && rq.generate.stream;
    if (cb) r->cb = *cb;
    r->user = user;
    r->w = w;
    if ((kind == B2C__GENERATE || kind == B2C__FEATURES) && !w) {
        r->user_visible = true;
        c->n_user++;
    }
    b2c__link(c, r);
    if (out_req) *out_req = r;
    b2c__flush(c);  /* a failure here reaches the request through settle */
    return 0;
}

/* ---- generate requests ---------------------------------------------------------- */

int blip2c_open_image(const char *path, int *fd, blip2c_error *err)
{
    if (fd) *fd = -1;
    if (!path || !fd) return b2c__err(err, BLIP2C_EINVAL, "no image path given");
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (f < 0) {
        int e = errno;
        return b2c__err(err, BLIP2C_EINVAL, "cannot open %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(f, &st) < 0) {
        int e = errno;
        close(f);
        return b2c__err(err, BLIP2C_EINVAL, "cannot read %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(f);
        return b2c__err(err, BLIP2C_EINVAL, "%s is not a regular file%s", path,
                        S_ISDIR(st.st_mode) ? " (it is a directory)" : "");
    }
    if (st.st_size == 0) {
        close(f);
        return b2c__err(err, BLIP2C_EINVAL, "%s is empty", path);
    }
    *fd = f;
    return 0;
}

int b2c__submit(blip2c_conn *c, const blip2c_request *rq,
                const blip2c_callbacks *cb, void *user, b2c__waiter *w,
                bool stream, b2c__req **out_req, blip2c_error *err)
{
    if (!rq) return b2c__cerr(c, err, BLIP2C_EINVAL, "no request given");
    if (c->broken) return b2c__report(c, err, &c->broken_err);
    int sources = (rq->image_path != NULL) + (rq->image_fd >= 0) + (rq->image != NULL);
    if (sources != 1)
        return b2c__cerr(c, err, BLIP2C_EINVAL,
                         sources ? "give only one image source (image_path, image_fd "
                                   "or image bytes)"
                                 : "no image given (set image_path, image_fd or image)");
    if (rq->image && rq->image_len == 0)
        return b2c__cerr(c, err, BLIP2C_EINVAL, "the image is empty (0 bytes)");

    int fd = -1;
    if (rq->image_path) {
        blip2c_error e;
        if (blip2c_open_image(rq->image_path, &fd, &e) < 0) return b2c__report(c, err, &e);
    } else if (rq->image_fd >= 0) {
        struct stat st;
        if (fstat(rq->image_fd, &st) < 0 || !S_ISREG(st.st_mode))
            return b2c__cerr(c, err, BLIP2C_EINVAL,
                             "image_fd %d is not an open regular file", rq->image_fd);
        if (st.st_size == 0)
            return b2c__cerr(c, err, BLIP2C_EINVAL, "image_fd %d is an empty file",
                             rq->image_fd);
        fd = fcntl(rq->image_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0) {
            int e = errno;
            return b2c__cerr(c, err, BLIP2C_EINVAL, "cannot duplicate image_fd %d: %s",
                             rq->image_fd, strerror(e));
        }
    }

    b2ipc_request q;
    b2ipc_request_init(&q, B2IPC_OP_GENERATE);
    if (fd >= 0) {
        q.generate.image_fd = true;
    } else {
        q.generate.image = rq->image;
        q.generate.image_len = rq->image_len;
    }
    q.generate.prompt = rq->prompt;
    q.generate.stream = stream;
    b2c__params_to_ipc(rq->params, &q.generate.params);
    return b2c__send(c, &q, B2C__GENERATE, fd, cb, user, w, out_req, err);
}

int blip2c_submit(blip2c_conn *c, const blip2c_request *rq,
                  const blip2c_callbacks *cb, void *user, uint64_t *id,
                  blip2c_error *err)
{
    if (!c) return b2c__err(err, BLIP2C_EINVAL, "no connection");
    b2c__req *r;
    int rc = b2c__submit(c, rq, cb, user, NULL, cb && cb->token, &r, err);
    if (rc < 0) return rc;
    if (id) *id = r->id;
    return 0;
}

static int b2c__queue_cancel(blip2c_conn *c, b2c__req *target, blip2c_error *err)
{
    if (target->cancel_sent) return 0;
    b2ipc_request q;
    b2ipc_request_init(&q, B2IPC_OP_CANCEL);
    q.cancel.target = target->id;
    int rc = b2c__send(c, &q, B2C__CANCEL, -1, NULL, NULL, NULL, NULL, err);
    if (rc == 0) target->cancel_sent = true;
    return rc;
}

int blip2c_cancel(blip2c_conn *c, uint64_t id, blip2c_error *err)
{
    if (!c) return b2c__err(err, BLIP2C_EINVAL, "no connection");
    if (c->broken) return b2c__report(c, err, &c->broken_err);
    b2c__req *r = b2c__find(c, id);
    if (!r || (r->kind != B2C__GENERATE && r->kind != B2C__FEATURES))
        return b2c__cerr(c, err, BLIP2C_EINVAL, "no request %llu in flight",
                         (unsigned long long)id);
    return b2c__queue_cancel(c, r, err);
}

void b2c__abandon(blip2c_conn *c, b2c__req *r)
{
    r->w = NULL;
    memset(&r->cb, 0, sizeof r->cb);
    r->fdone = NULL;
    if (r->kind == B2C__GENERATE && !c->broken) b2c__queue_cancel(c, r, NULL);
}

/* ---- reading and dispatch ------------------------------------------------------- */

static const char *b2c__kind_name(int kind)
{
    static const char *const names[] = { "hello", "generate", "cancel", "status", "ping", "features" };
    return kind >= 0 && kind < 6 ? names[kind] : "?";
}

static void b2c__on_hello(blip2c_conn *c, const b2ipc_reply *rp)
{
    char *s = strdup(rp->hello.server ? rp->hello.server : "");
    if (s) {
        free(c->server);
        c->server = s;
    }
    c->info.server = c->server ? c->server : "";
    c->info.protocol = rp->hello.v;
    c->info.max_frame = rp->hello.max_frame;
    c->info.max_image_bytes = rp->hello.max_image_bytes;
    c->info.max_prompt_bytes = rp->hello.max_prompt_bytes;
    c->lim.max_image_bytes = rp->hello.max_image_bytes;
    c->lim.max_prompt_bytes = rp->hello.max_prompt_bytes;
}

/* One reply frame.  Never called from inside a callback. */
static void b2c__dispatch(blip2c_conn *c, const uint8_t *p, size_t n)
{
    b2ipc_reply rp;
    b2ipc_error ie;
    int rc = b2ipc_decode_reply(p, n, &rp, &ie);
    if (rc < 0) {
        b2c__mark_broken(c, BLIP2C_EPROTO,
                         "protocol error: blip2d sent a reply this client cannot read "
                         "(%s)", ie.message[0] ? ie.message : b2ipc_strerror(rc));
        return;
    }
    if (!rp.has_id) {
        if (rp.type == B2IPC_REPLY_ERROR) {
            /* About a frame it could not attribute; usually followed by the
             * daemon closing the connection.  Keep it to explain that. */
            b2c__from_reply(&c->idless, &rp);
            c->have_idless = true;
            c->last = c->idless;
        } else {
            b2c__mark_broken(c, BLIP2C_EPROTO,
                             "protocol error: blip2d sent a %s reply without id",
                             b2ipc_reply_type_name(rp.type));
        }
        b2ipc_reply_free(&rp);
        return;
    }
    b2c__req *r = b2c__find(c, rp.id);
    if (!r) {
        b2c__mark_broken(c, BLIP2C_EPROTO,
                         "protocol error: blip2d sent a %s reply for id %llu, which is "
                         "not in flight", b2ipc_reply_type_name(rp.type),
                         (unsigned long long)rp.id);
        b2ipc_reply_free(&rp);
        return;
    }

    bool fits;
    switch (rp.type) {
    case B2IPC_REPLY_TOKEN: fits = r->kind == B2C__GENERATE && r->stream; break;
    case B2IPC_REPLY_DONE: fits = r->kind == B2C__GENERATE; break;
    case B2IPC_REPLY_ERROR: fits = true; break;
    case B2IPC_REPLY_HELLO: fits = r->kind == B2C__HELLO; break;
    case B2IPC_REPLY_STATUS: fits = r->kind == B2C__STATUS; break;
    case B2IPC_REPLY_PONG: fits = r->kind == B2C__PING; break;
    case B2IPC_REPLY_CANCEL: fits = r->kind == B2C__CANCEL; break;
    case B2IPC_REPLY_FEATURES: fits = r->kind == B2C__FEATURES; break;
    default: fits = false; break;
    }
    if (!fits) {
        b2c__mark_broken(c, BLIP2C_EPROTO,
                         "protocol error: blip2d answered a %s request (id %llu) with "
                         "a %s reply%s", b2c__kind_name(r->kind),
                         (unsigned long long)rp.id, b2ipc_reply_type_name(rp.type),
                         rp.type == B2IPC_REPLY_TOKEN && r->kind == B2C__GENERATE
                             ? " although it did not ask for streaming" : "");
        b2ipc_reply_free(&rp);
        return;
    }

    if (rp.type == B2IPC_REPLY_TOKEN) {
        blip2c_token tok = {
            .id = rp.id, .seq = rp.token.seq, .token = rp.token.token,
            .text = rp.token.text ? rp.token.text : "",
            .text_len = rp.token.text ? rp.token.text_len : 0,
        };
        int stop = 0;
        c->depth++;
        if (r->w && r->w->on_token) stop = r->w->on_token(r->w->user, &tok);
        else if (!r->w && r->cb.token) stop = r->cb.token(r->user, &tok);
        c->depth--;
        /* r is still in flight: only its terminal reply removes it */
        if (stop && !c->broken) b2c__queue_cancel(c, r, NULL);
        b2ipc_reply_free(&rp);
        return;
    }

    /* A terminal reply: the request leaves the table before its callback,
     * so the callback may submit or cancel freely. */
    bool visible = r->user_visible;
    b2c__unlink(c, r);
    b2c__waiter *w = r->w;
    if (rp.type == B2IPC_REPLY_ERROR) {
        blip2c_error e;
        b2c__from_reply(&e, &rp);
        if (w) {
            w->rc = e.code;
            w->err = e;
        } else if (visible && r->cb.error) {
            c->depth++;
            r->cb.error(r->user, r->id, &e);
            c->depth--;
        }
    } else if (rp.type == B2IPC_REPLY_DONE) {
        blip2c_seq seqs[B2IPC_MAX_SEQS];
        blip2c_result view;
        b2c__result_view(&rp, &view, seqs);
        if (w) {
            w->res = blip2c_result_dup(&view);
            if (!w->res) {
                w->rc = BLIP2C_ENOMEM;
                b2c__err(&w->err, BLIP2C_ENOMEM, "out of memory");
            }
        } else if (visible && r->cb.done) {
            c->depth++;
            r->cb.done(r->user, &view);
            c->depth--;
        }
    } else if (rp.type == B2IPC_REPLY_HELLO) {
        b2c__on_hello(c, &rp);
    } else if (rp.type == B2IPC_REPLY_FEATURES) {
        if (w) {
            w->features = b2c__features_copy(&rp, true);
            if (!w->features) {
                w->rc = BLIP2C_ENOMEM;
                b2c__err(&w->err, BLIP2C_ENOMEM, "out of memory");
            }
        } else if (visible && (r->fdone || r->cb.error)) {
            blip2c_features *f = b2c__features_copy(&rp, true);
            c->depth++;
            if (f) {
                if (r->fdone) r->fdone(r->user, f);
            } else if (r->cb.error) {
                blip2c_error e;
                b2c__err(&e, BLIP2C_ENOMEM, "out of memory while reading the features reply");
                r->cb.error(r->user, r->id, &e);
            }
            c->depth--;
            blip2c_features_free(f);
        }
    } else if (rp.type == B2IPC_REPLY_STATUS) {
        if (w) {
            w->status = b2c__status_copy(&rp.status);
            if (!w->status) {
                w->rc = BLIP2C_ENOMEM;
                b2c__err(&w->err, BLIP2C_ENOMEM, "out of memory");
            }
        }
    }
    /* pong and cancel carry nothing we keep */
    if (w) w->finished = true;
    free(r);
    b2ipc_reply_free(&rp);
}

static void b2c__read(blip2c_conn *c)
{
    while (!c->broken) {
        ssize_t n = recv(c->fd, c->rbuf, sizeof c->rbuf, MSG_DONTWAIT);
        if (n == 0) {
            if (c->have_idless)
                b2c__mark_broken(c, BLIP2C_ECONNLOST,
                                 "connection lost: blip2d closed the connection after: %s",
                                 c->idless.message);
            else
                b2c__mark_broken(c, BLIP2C_ECONNLOST,
                                 "connection lost: blip2d closed the connection%s",
                                 b2ipc_reader_pending(&c->rd)
                                     ? " in the middle of a reply"
                                     : " (did it stop or crash?)");
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            int e = errno;
            b2c__mark_broken(c, BLIP2C_ECONNLOST, "connection lost: %s", strerror(e));
            return;
        }
        size_t off = 0;
        while (off < (size_t)n && !c->broken) {
            size_t used = 0;
            int rc = b2ipc_reader_feed(&c->rd, c->rbuf + off, (size_t)n - off, &used);
            off += used;
            if (rc < 0) {
                b2c__mark_broken(c, BLIP2C_EPROTO, "protocol error: %s (reply frame)",
                                 b2ipc_strerror(rc));
                return;
            }
            if (rc == 0) break;
            const uint8_t *payload;
            size_t len;
            if (b2ipc_reader_frame(&c->rd, &payload, &len) == 0)
                b2c__dispatch(c, payload, len);
        }
    }
}

/* One round of I/O at depth 0: read and dispatch, write, then settle. */
static void b2c__io(blip2c_conn *c)
{
    b2c__read(c);
    b2c__flush(c);
    b2c__settle(c);
}

int blip2c_process(blip2c_conn *c, blip2c_error *err)
{
    if (!c) return b2c__err(err, BLIP2C_EINVAL, "no connection");
    if (c->depth > 0)
        return b2c__cerr(c, err, BLIP2C_EINVAL,
                         "blip2c_process called from inside a callback");
    b2c__io(c);
    if (c->broken) return b2c__report(c, err, &c->broken_err);
    return 0;
}

int b2c__wait(blip2c_conn *c, b2c__waiter *w, int timeout_ms)
{
    int64_t deadline = timeout_ms > 0 ? b2c__now_ms() + timeout_ms : -1;
    while (!w->finished) {
        int t = -1;
        if (deadline >= 0) {
            int64_t left = deadline - b2c__now_ms();
            if (left <= 0) return BLIP2C_ETIMEDOUT;
            t = left > 1000000 ? 1000000 : (int)left;
        }
        struct pollfd pfd = { c->fd, POLLIN, 0 };
        if (c->out_head) pfd.events |= POLLOUT;
        int r = poll(&pfd, 1, t);
        if (r < 0 && errno != EINTR) {
            int e = errno;
            b2c__mark_broken(c, BLIP2C_ECONNLOST, "connection lost: poll: %s",
                             strerror(e));
        }
        b2c__io(c);
    }
    return 0;
}

/* ---- connecting ------------------------------------------------------------------ */

static blip2c_conn *b2c__conn_new(int fd, const blip2c_options *o)
{
    blip2c_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    c->next_id = 1;
    c->timeout_ms = o && o->timeout_ms > 0 ? o->timeout_ms : 0;
    b2ipc_reader_init(&c->rd, o && o->max_frame ? o->max_frame : 0);
    c->info.socket_path = c->path;
    c->info.socket_origin = "fd";
    c->info.server = "";
    return c;
}

void blip2c_close(blip2c_conn *c)
{
    if (!c) return;
    b2c__drop_output(c);
    b2c__req *r = c->reqs;
    while (r) {
        b2c__req *next = r->next;
        free(r);
        r = next;
    }
    b2ipc_reader_destroy(&c->rd);
    if (c->fd >= 0) close(c->fd);
    free(c->server);
    free(c);
}

/* hello on a fresh connection; on failure closes c. */
static int b2c__hello(blip2c_conn *c, const blip2c_options *o, blip2c_conn **out,
                      blip2c_error *err)
{
    const char *where = c->path[0] ? c->path : "the given socket";
    char name[64];
    snprintf(name, sizeof name, "libblip2client %s", BLIP2C_VERSION);
    b2ipc_request q;
    b2ipc_request_init(&q, B2IPC_OP_HELLO);
    q.hello.v = BLIP2C_PROTOCOL_VERSION;
    q.hello.client = o && o->client_name ? o->client_name : name;

    b2c__waiter w;
    memset(&w, 0, sizeof w);
    b2c__req *r;
    int rc = b2c__send(c, &q, B2C__HELLO, -1, NULL, NULL, &w, &r, err);
    if (rc < 0) goto fail;
    int timeout = o && o->connect_timeout_ms ? o->connect_timeout_ms
                                             : B2C__CONNECT_TIMEOUT_MS;
    rc = b2c__wait(c, &w, timeout < 0 ? 0 : timeout);
    if (rc == BLIP2C_ETIMEDOUT) {
        rc = b2c__err(err, BLIP2C_ECONNECT,
                      "cannot connect to blip2d: connected to %s, but it did not answer "
                      "within %d ms (is the daemon stopped or hung?)", where, timeout);
        goto fail;
    }
    rc = w.rc;
    if (rc == BLIP2C_ECONNLOST && c->have_idless) {
        /* the daemon said why it closed: permission_denied (its allow
         * lists), busy (too many connections), shutting_down */
        rc = c->idless.code;
        if (err) {
            *err = c->idless;
            snprintf(err->message, sizeof err->message, "blip2d at %s refused the connection: %.800s",
                     where, c->idless.message);
        }
        goto fail;
    }
    if (rc == BLIP2C_ECONNLOST || rc == BLIP2C_EPROTO) {
        rc = b2c__err(err, BLIP2C_ECONNECT,
                      "cannot connect to blip2d: connected to %s, but %s (is it a "
                      "blip2d socket?)", where, w.err.message);
        goto fail;
    }
    if (rc < 0) {
        if (err) *err = w.err;
        goto fail;
    }
    if (c->info.protocol < 1 || c->info.protocol > BLIP2C_PROTOCOL_VERSION) {
        rc = b2c__err(err, BLIP2C_ECONNECT,
                      "cannot connect to blip2d: %s speaks protocol version %u, this "
                      "client versions 1 to %u", where, c->info.protocol,
                      BLIP2C_PROTOCOL_VERSION);
        goto fail;
    }
    *out = c;
    return 0;
fail:
    blip2c_close(c);
    return rc;
}

static int b2c__set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return -1;
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    return 0;
}

int blip2c_connect_fd(int fd, const blip2c_options *o, blip2c_conn **out,
                      blip2c_error *err)
{
    if (out) *out = NULL;
    if (fd < 0 || !out) {
        if (fd >= 0) close(fd);
        return b2c__err(err, BLIP2C_EINVAL, "no descriptor or no output pointer");
    }
    if (b2c__set_nonblock(fd) < 0) {
        int e = errno;
        close(fd);
        return b2c__err(err, BLIP2C_ECONNECT, "cannot use descriptor: %s", strerror(e));
    }
    blip2c_conn *c = b2c__conn_new(fd, o);
    if (!c) {
        close(fd);
        return b2c__err(err, BLIP2C_ENOMEM, "out of memory");
    }
    return b2c__hello(c, o, out, err);
}

/* connect() one path; 0 and *fd, or an errno value. */
static int b2c__dial(const char *path, int timeout_ms, int *fd)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) return ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) return ENOTSOCK;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) return errno;
    int64_t deadline = b2c__now_ms() + (timeout_ms > 0 ? timeout_ms : 1000000000);
    for (;;) {
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0) break;
        int e = errno;
        if (e == EINTR) continue;
        if (e == EINPROGRESS) {
            struct pollfd pfd = { s, POLLOUT, 0 };
            int64_t left = deadline - b2c__now_ms();
            if (left <= 0 || poll(&pfd, 1, (int)(left > 1000000 ? 1000000 : left)) <= 0) {
                close(s);
                return ETIMEDOUT;
            }
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr) {
                close(s);
                return soerr;
            }
            break;
        }
        if (e == EAGAIN) {  /* the listen backlog is full: the daemon is not accepting */
            if (b2c__now_ms() >= deadline) {
                close(s);
                return e;
            }
            struct timespec ts = { 0, 10 * 1000000 };
            nanosleep(&ts, NULL);
            continue;
        }
        close(s);
        return e;
    }
    *fd = s;
    return 0;
}

/* Why connecting to path failed (errno e), for the message: the reason
 * and what to do, into buf. */
static void b2c__dial_why(const char *path, int e, char *buf, size_t n)
{
    struct stat st;
    struct group *g;
    switch (e) {
    case ENOTSOCK:
        snprintf(buf, n, "it is not a socket (%s)",
                 lstat(path, &st) == 0 && S_ISDIR(st.st_mode) ? "a directory" : "a file");
        break;
    case ECONNREFUSED:
        snprintf(buf, n, "%s (a stale socket file: no daemon is listening)", strerror(e));
        break;
    case EACCES:
    case EPERM:
        if (stat(path, &st) == 0 && (g = getgrgid(st.st_gid)) != NULL && st.st_gid != 0)
            snprintf(buf, n, "%s: the socket is for the group '%s'; join it with "
                     "'sudo usermod -aG %s $USER', then log in again", strerror(e), g->gr_name,
                     g->gr_name);
        else
            snprintf(buf, n, "%s (check the socket's owner, group and mode, or your groups)", strerror(e));
        break;
    case EAGAIN:
    case ETIMEDOUT:
        snprintf(buf, n, "%s (the daemon is not accepting connections)", strerror(e));
        break;
    default:
        snprintf(buf, n, "%s", strerror(e));
    }
}

int blip2c_connect_with(const blip2c_options *o, blip2c_conn **out,
                        blip2c_error *err)
{
    if (out) *out = NULL;
    if (!out) return b2c__err(err, BLIP2C_EINVAL, "no output pointer");

    /* candidates in order */
    const char *paths[2];
    const char *origins[2];
    char xdg[sizeof ((struct sockaddr_un *)0)->sun_path + 32];
    size_t n = 0;
    const char *env;
    if (o && o->socket_path && o->socket_path[0]) {
        paths[n] = o->socket_path;
        origins[n++] = "explicit";
    } else if ((env = getenv("BLIP2_SOCKET")) && env[0]) {
        paths[n] = env;
        origins[n++] = "$BLIP2_SOCKET";
    } else {
        if ((env = getenv("XDG_RUNTIME_DIR")) && env[0]) {
            snprintf(xdg, sizeof xdg, "%s/blip2.sock", env);
            paths[n] = xdg;
            origins[n++] = "$XDG_RUNTIME_DIR";
        }
        paths[n] = B2C__SYSTEM_SOCKET;
        origins[n++] = "system default";
    }
    int timeout = o && o->connect_timeout_ms ? o->connect_timeout_ms
                                             : B2C__CONNECT_TIMEOUT_MS;

    char tried[768];
    size_t tl = 0;
    tried[0] = '\0';
    bool down = false;  /* some candidate looks like no daemon: say how to start one */
    for (size_t i = 0; i < n; i++) {
        int fd = -1;
        int e = b2c__dial(paths[i], timeout, &fd);
        if (e == 0) {
            blip2c_conn *c = b2c__conn_new(fd, o);
            if (!c) {
                close(fd);
                return b2c__err(err, BLIP2C_ENOMEM, "out of memory");
            }
            snprintf(c->path, sizeof c->path, "%s", paths[i]);
            c->info.socket_origin = origins[i];
            return b2c__hello(c, o, out, err);
        }
        char why[256];
        b2c__dial_why(paths[i], e, why, sizeof why);
        down |= e == ENOENT || e == ECONNREFUSED;
        if (tl < sizeof tried)
            tl += (size_t)snprintf(tried + tl, sizeof tried - tl, "%s%s (from %s): %s",
                                   i ? "; " : "", paths[i], origins[i], why);
    }
    return b2c__err(err, BLIP2C_ECONNECT, "cannot connect to blip2d: tried %s.%s%s",
                    tried, down ? " " : "", down ? B2C__START_HINT : "");
}

int blip2c_connect(const char *socket_path, blip2c_conn **out, blip2c_error *err)
{
    blip2c_options o;
    blip2c_options_init(&o);
    o.socket_path = socket_path;
    return blip2c_connect_with(&o, out, err);
}
