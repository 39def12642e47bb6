/*
 * fake_server.c - a scripted blip2d for the client tests (see fake_server.h).
 *
 *   recvmsg (bytes + SCM_RIGHTS descriptors into a FIFO) --> b2ipc_reader
 *   --> b2ipc_decode_request --> hello / ping / status / cancel answered at
 *   once; generate: image bytes (inline, or pread from the oldest received
 *   descriptor) --> first word picks the behaviour --> tokens + done, an
 *   error, silence (held), or misbehaviour on purpose --> b2ipc_encode_reply
 *   --> send
 */
#include "fake_server.h"
#include "blip2ipc.h"
#include "status_fixture.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_HELD 64
#define MAX_FDS 16

typedef struct held {
    uint64_t id;
    bool stream;
    uint32_t nrs;
    char text[256];
} held;

typedef struct srv {
    int fd;
    int fds[MAX_FDS];
    int nfds;
    held held[MAX_HELD];
    int nheld;
    bool busy1_used;
    bool closing;
} srv;

static void send_all(srv *s, const void *p, size_t n)
{
    const char *c = p;
    while (n && !s->closing) {
        ssize_t w = send(s->fd, c, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            s->closing = true;
            return;
        }
        c += w;
        n -= (size_t)w;
    }
}

static void send_reply(srv *s, const b2ipc_reply *rp)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error e;
    if (b2ipc_encode_reply(&sb, rp, &e) < 0) {
        fprintf(stderr, "fake server: cannot encode a %s reply: %s\n",
                b2ipc_reply_type_name(rp->type), e.message);
        abort();
    }
    send_all(s, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void send_error(srv *s, bool has_id, uint64_t id, int code, const char *field,
                       const char *msg)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_encode_error(&sb, has_id, id, code, field, msg);
    send_all(s, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void send_token(srv *s, uint64_t id, uint32_t seq, uint32_t tok, const char *text)
{
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_TOKEN);
    rp.id = id;
    rp.token.seq = seq;
    rp.token.token = tok;
    rp.token.text = text;
    rp.token.text_len = strlen(text);
    send_reply(s, &rp);
}

/* Streams every word of text (token ids 100, 101, ...) then the EOS token. */
static void stream_words(srv *s, uint64_t id, const char *text, int max_words)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", text);
    int i = 0;
    for (char *save = NULL, *w = strtok_r(buf, " ", &save); w && i != max_words;
         w = strtok_r(NULL, " ", &save), i++) {
        char piece[260];
        snprintf(piece, sizeof piece, " %s", w);
        send_token(s, id, 0, 100 + (uint32_t)i, piece);
    }
    if (max_words < 0) send_token(s, id, 0, 2, "");
}

static int count_words(const char *t)
{
    int n = 0;
    bool in = false;
    for (; *t; t++) {
        if (*t != ' ' && !in) n++;
        in = *t != ' ';
    }
    return n;
}

static void send_done(srv *s, uint64_t id, const char *text, uint32_t nrs, bool canceled,
                      bool seed)
{
    b2ipc_seq seqs[B2IPC_MAX_SEQS];
    char texts[B2IPC_MAX_SEQS][300];
    uint32_t ids[B2IPC_MAX_SEQS][64];
    if (nrs < 1) nrs = 1;
    for (uint32_t k = 0; k < nrs; k++) {
        if (canceled) texts[k][0] = '\0';
        else if (nrs > 1) snprintf(texts[k], sizeof texts[k], "%s #%u", text, k);
        else snprintf(texts[k], sizeof texts[k], "%s", text);
        int nw = count_words(texts[k]);
        size_t n = 0;
        if (!canceled) {
            ids[k][n++] = 2;
            for (int i = 0; i < nw && n < 62; i++) ids[k][n++] = 100 + (uint32_t)i;
            ids[k][n++] = 2;
        }
        seqs[k] = (b2ipc_seq){ texts[k], strlen(texts[k]), n ? ids[k] : NULL, n,
                               canceled ? B2IPC_FINISH_CANCELED : B2IPC_FINISH_EOS };
    }
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_DONE);
    rp.id = id;
    rp.done.seqs = seqs;
    rp.done.n_seqs = nrs;
    rp.done.prompt_tokens = 7;
    rp.done.has_seed = seed;
    rp.done.seed = UINT64_MAX;
    rp.done.timings = (b2ipc_timings){ 0.5, 1.5, 2.5, 3.5, 4.5, 12.5, 20.0 };
    send_reply(s, &rp);
}

static void answer(srv *s, uint64_t id, bool stream, uint32_t nrs, const char *text,
                   bool seed)
{
    if (stream) stream_words(s, id, text, -1);
    send_done(s, id, text, nrs, false, seed);
}

/* Raw frame (payload given), for misbehaviour. */
static void send_raw(srv *s, const void *payload, uint32_t n)
{
    uint8_t hdr[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
    send_all(s, hdr, 4);
    send_all(s, payload, n);
}

static void send_badreply(srv *s, uint64_t id)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint64(&pk, id);
    msgpack_pack_str_with_body(&pk, "type", 4);
    msgpack_pack_str_with_body(&pk, "done", 4);
    msgpack_pack_str_with_body(&pk, "texts", 5);
    msgpack_pack_int(&pk, 5);
    send_raw(s, sb.data, (uint32_t)sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void send_status(srv *s, uint64_t id)
{
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_STATUS);
    rp.id = id;
    status_fixture(&rp.status);
    send_reply(s, &rp);
}

/* The image's first line, at most 100 bytes. */
static void content_of(const uint8_t *p, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    while (k < n && k + 1 < cap && k < 100 && p[k] != '\n' && p[k] != '\0') {
        out[k] = (p[k] >= 0x20 && p[k] < 0x7f) ? (char)p[k] : '?';
        k++;
    }
    out[k] = '\0';
}

static void on_generate(srv *s, const b2ipc_request *rq)
{
    const b2ipc_generate *g = &rq->generate;
    char content[128];
    if (g->image_fd) {
        if (s->nfds == 0) {
            send_error(s, true, rq->id, B2IPC_EBAD_FD, "image_fd", "no descriptor received");
            return;
        }
        int fd = s->fds[0];
        memmove(s->fds, s->fds + 1, (size_t)(s->nfds - 1) * sizeof(int));
        s->nfds--;
        uint8_t buf[128];
        ssize_t n = pread(fd, buf, sizeof buf, 0);
        close(fd);
        if (n <= 0) {
            send_error(s, true, rq->id, B2IPC_EBAD_FD, "image_fd", "cannot read the descriptor");
            return;
        }
        content_of(buf, (size_t)n, content, sizeof content);
    } else {
        content_of(g->image, g->image_len, content, sizeof content);
    }
    char control[32];
    sscanf(content, "%31s", control);

    char text[256];
    if (g->prompt && g->prompt[0]) {
        int q = 0;
        for (const char *p = g->prompt; (p = strstr(p, "Question:")); p++) q++;
        snprintf(text, sizeof text, "answer %d about %s", q, content);
    } else {
        snprintf(text, sizeof text, "a picture of %s", content);
    }
    uint32_t nrs = g->params.num_return_sequences;
    uint64_t id = rq->id;

    if (strcmp(control, "hold") == 0 || strcmp(control, "streamhold") == 0) {
        if (control[0] == 's' && g->stream) stream_words(s, id, text, 2);
        if (s->nheld < MAX_HELD) {
            held *h = &s->held[s->nheld++];
            h->id = id;
            h->stream = g->stream && control[0] != 's';
            h->nrs = nrs;
            snprintf(h->text, sizeof h->text, "%s", text);
        }
    } else if (strcmp(control, "release") == 0) {
        answer(s, id, g->stream, nrs, text, false);
        while (s->nheld > 0) {
            held *h = &s->held[--s->nheld];
            answer(s, h->id, h->stream, h->nrs, h->text, false);
        }
    } else if (strcmp(control, "die") == 0) {
        if (g->stream) stream_words(s, id, text, 2);
        s->closing = true;
    } else if (strcmp(control, "fatal") == 0) {
        send_error(s, false, 0, B2IPC_EFRAME_TOO_LARGE, NULL,
                   "frame of 99999999999 bytes is above the limit");
        s->closing = true;
    } else if (strcmp(control, "garbage") == 0) {
        send_raw(s, "\xc1\xc1\xc1", 3);
    } else if (strcmp(control, "badreply") == 0) {
        send_badreply(s, id);
    } else if (strcmp(control, "unknownid") == 0) {
        send_done(s, id + 1000, text, 1, false, false);
    } else if (strcmp(control, "tokenfirst") == 0) {
        send_token(s, id, 0, 5, " x");
    } else if (strcmp(control, "busy") == 0 ||
               (strcmp(control, "busy1") == 0 && !s->busy1_used)) {
        s->busy1_used = true;
        send_error(s, true, id, B2IPC_EBUSY, NULL, "the queue is full (64 requests); retry later");
    } else if (strcmp(control, "internal") == 0) {
        send_error(s, true, id, B2IPC_EINTERNAL, NULL, "fake internal failure");
    } else if (strcmp(control, "badimage") == 0) {
        send_error(s, true, id, B2IPC_EBAD_IMAGE, "image", "not an image: unknown format");
    } else {
        answer(s, id, g->stream, nrs, text, strcmp(control, "seed") == 0);
    }
}

static void on_frame(srv *s, const uint8_t *p, size_t n)
{
    b2ipc_request rq;
    b2ipc_error e;
    if (b2ipc_decode_request(p, n, NULL, &rq, &e) < 0) {
        if (rq.takes_fd && s->nfds > 0) {
            close(s->fds[0]);
            memmove(s->fds, s->fds + 1, (size_t)(s->nfds - 1) * sizeof(int));
            s->nfds--;
        }
        send_error(s, rq.has_id, rq.id, e.code, e.field, e.message);
        return;
    }
    b2ipc_reply rp;
    switch (rq.op) {
    case B2IPC_OP_HELLO:
        b2ipc_reply_init(&rp, B2IPC_REPLY_HELLO);
        rp.id = rq.id;
        rp.hello.v = rq.hello.v < 1 ? rq.hello.v : 1;
        rp.hello.server = "fake-blip2d 0";
        rp.hello.max_frame = B2IPC_DEFAULT_MAX_FRAME;
        rp.hello.max_image_bytes = B2IPC_DEFAULT_MAX_IMAGE_BYTES;
        rp.hello.max_prompt_bytes = B2IPC_DEFAULT_MAX_PROMPT_BYTES;
        send_reply(s, &rp);
        break;
    case B2IPC_OP_PING:
        b2ipc_reply_init(&rp, B2IPC_REPLY_PONG);
        rp.id = rq.id;
        send_reply(s, &rp);
        break;
    case B2IPC_OP_STATUS:
        send_status(s, rq.id);
        break;
    case B2IPC_OP_CANCEL: {
        bool found = false;
        for (int i = 0; i < s->nheld; i++)
            if (s->held[i].id == rq.cancel.target) {
                send_done(s, s->held[i].id, "", s->held[i].nrs, true, false);
                s->held[i] = s->held[--s->nheld];
                found = true;
                break;
            }
        b2ipc_reply_init(&rp, B2IPC_REPLY_CANCEL);
        rp.id = rq.id;
        rp.cancel.found = found;
        send_reply(s, &rp);
        break;
    }
    case B2IPC_OP_GENERATE:
        on_generate(s, &rq);
        break;
    default:
        break;
    }
    b2ipc_request_free(&rq);
}

int fake_serve_conn(int fd)
{
    srv *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return -1;
    }
    s->fd = fd;
    b2ipc_reader rd;
    b2ipc_reader_init(&rd, 0);
    static uint8_t buf[65536];
    while (!s->closing) {
        union {
            char b[CMSG_SPACE(MAX_FDS * sizeof(int))];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = { buf, sizeof buf };
        struct msghdr msg = { 0 };
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.b;
        msg.msg_controllen = sizeof ctl.b;
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k; i++) {
                int rfd;
                memcpy(&rfd, CMSG_DATA(cm) + i * sizeof(int), sizeof rfd);
                if (s->nfds < MAX_FDS) s->fds[s->nfds++] = rfd;
                else close(rfd);
            }
        }
        size_t off = 0;
        while (off < (size_t)n && !s->closing) {
            size_t used;
            int rc = b2ipc_reader_feed(&rd, buf + off, (size_t)n - off, &used);
            off += used;
            if (rc < 0) {
                send_error(s, false, 0, rc, NULL, b2ipc_strerror(rc));
                s->closing = true;
                break;
            }
            if (rc == 0) break;
            const uint8_t *p;
            size_t len;
            b2ipc_reader_frame(&rd, &p, &len);
            on_frame(s, p, len);
        }
    }
    for (int i = 0; i < s->nfds; i++) close(s->fds[i]);
    b2ipc_reader_destroy(&rd);
    close(fd);
    free(s);
    return 0;
}

int fake_listen(const char *path)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    strcpy(sa.sun_path, path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void fake_serve(int lfd)
{
    signal(SIGCHLD, SIG_IGN);  /* connection processes reap themselves */
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            _exit(1);
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            fake_serve_conn(c);
            _exit(0);
        }
        close(c);
    }
}

pid_t fake_start(const char *path)
{
    int lfd = fake_listen(path);
    if (lfd < 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) fake_serve(lfd);
    close(lfd);
    return pid;
}
