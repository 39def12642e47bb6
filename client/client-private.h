/*
 * client-private.h - internal to libblip2client, never installed.
 *
 * A connection keeps three things: the list of requests in flight (each
 * with its callbacks, or a waiter when a blocking call sits on it), the
 * queue of encoded frames not yet written (a frame may carry one
 * descriptor, sent with its first byte), and the frame reader for replies.
 * Breaking the connection is two-step: b2c_mark_broken() records the error
 * and shuts the socket (safe anywhere, also inside a user callback);
 * b2c_settle() later fails every pending request, at a point where no
 * callback of this connection is running.
 */
#ifndef BLIP2CLIENT_PRIVATE_H
#define BLIP2CLIENT_PRIVATE_H

#include "blip2client.h"
#include "blip2ipc.h"

#define B2C__RBUF 65536u

enum b2c__kind { B2C__HELLO, B2C__GENERATE, B2C__CANCEL, B2C__STATUS, B2C__PING, B2C__FEATURES };

/* A blocking call waiting for one request's terminal reply (on its stack). */
typedef struct b2c__waiter {
    bool finished;
    int rc;                  /* 0 or BLIP2C_E* */
    blip2c_error err;        /* when rc < 0 */
    blip2c_token_cb on_token;
    void *user;
    blip2c_result *res;      /* generate: a copy of the result (owned) */
    blip2c_status *status;   /* status: a copy (owned) */
    blip2c_features *features; /* features: a copy (owned) */
} b2c__waiter;

typedef struct b2c__req {
    struct b2c__req *next, *prev;
    uint64_t id;
    int kind;                /* enum b2c__kind */
    bool stream;             /* generate asked for token events */
    bool cancel_sent;
    bool user_visible;       /* submitted with blip2c_submit, callbacks pending */
    blip2c_callbacks cb;     /* async requests; zeroed when orphaned */
    blip2c_features_cb fdone; /* async features requests (cb.error for errors) */
    void *user;
    b2c__waiter *w;          /* a blocking call waits on it, or NULL */
} b2c__req;

typedef struct b2c__out {
    struct b2c__out *next;
    uint8_t *data;           /* one or more complete frames (malloc) */
    size_t len, off;
    int fd;                  /* descriptor to send with the first byte, or -1 (owned) */
} b2c__out;

struct blip2c_conn {
    int fd;
    int broken;              /* 0, or the sticky BLIP2C_E* once the connection broke */
    blip2c_error broken_err;
    bool settled;            /* pending requests were failed after the break */
    blip2c_error last;       /* blip2c_last_error */
    bool have_idless;        /* the daemon sent an error without id */
    blip2c_error idless;
    int depth;               /* > 0 while a user callback runs */
    int timeout_ms;          /* blocking calls, 0 = none */
    uint64_t next_id;
    size_t n_user;           /* blip2c_pending */
    b2c__req *reqs;          /* in flight (doubly linked) */
    b2c__out *out_head, *out_tail;
    b2ipc_reader rd;
    b2ipc_limits lim;        /* the daemon's, from hello */
    blip2c_info info;
    char *server;            /* info.server (owned) */
    char path[112];          /* info.socket_path */
    uint8_t rbuf[B2C__RBUF];
};

/* error.c */
int b2c__err(blip2c_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sets c->last (and *e if not NULL); returns code. */
int b2c__cerr(blip2c_conn *c, blip2c_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Copies src into c->last and *e; returns src->code. */
int b2c__report(blip2c_conn *c, blip2c_error *e, const blip2c_error *src);
/* A decoded error reply as a blip2c_error. */
void b2c__from_reply(blip2c_error *e, const b2ipc_reply *rp);
/* A libipc failure (validation while encoding) as BLIP2C_EINVAL/ENOMEM. */
int b2c__from_ipc(blip2c_error *e, int ipc_rc, const b2ipc_error *ie);

/* result.c */
void b2c__params_to_ipc(const blip2c_params *p, b2ipc_gen_params *q);
void b2c__result_view(const b2ipc_reply *rp, blip2c_result *r,
                      blip2c_seq seqs[B2IPC_MAX_SEQS]);
blip2c_status *b2c__status_copy(const b2ipc_status *s);

/* features.c: a decoded features reply as a new blip2c_features (NULL if
 * out of memory).  from_wire: the data is little-endian (a decoded reply),
 * else already in host order (blip2c_features_dup). */
blip2c_features *b2c__features_copy(const b2ipc_reply *rp, bool from_wire);

/* client.c */
void b2c__mark_broken(blip2c_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Queues a request of any kind; w: a waiter or NULL; out_req: the entry. */
int b2c__send(blip2c_conn *c, const b2ipc_request *rq, int kind, int fd,
              const blip2c_callbacks *cb, void *user, b2c__waiter *w,
              b2c__req **out_req, blip2c_error *err);
/* Prepares a generate request (image source, prompt, params) and sends it. */
int b2c__submit(blip2c_conn *c, const blip2c_request *rq,
                const blip2c_callbacks *cb, void *user, b2c__waiter *w,
                bool stream, b2c__req **out_req, blip2c_error *err);
/* Waits until w is finished; BLIP2C_ETIMEDOUT after timeout_ms (> 0). */
int b2c__wait(blip2c_conn *c, b2c__waiter *w, int timeout_ms);
/* Forgets the waiter of a request still in flight (after a timeout) and
 * cancels it if it is a generate request. */
void b2c__abandon(blip2c_conn *c, b2c__req *r);

#endif
