/*
 * b2q.h - the Redis Streams job queue of blip2d (issue 16), shared by the
 * daemon's queue worker (daemon/queue.c) and the blip2-queue program that
 * `blip2ctl enqueue`, `results` and `queue-status` run.  Internal: never
 * installed.  docs/scale-out.md describes the keys for operators.
 *
 * Usage (error handling shortened):
 *
 *     b2q_url u;
 *     char msg[256];
 *     if (b2q_url_parse("redis://worker1:secret@db:6379/photos", &u, msg, sizeof msg) < 0)
 *         die("%s", msg);
 *     b2q_conn *q;
 *     if (b2q_connect(&u, 5000, &q, msg, sizeof msg) < 0) die("%s", msg);
 *     b2q_ensure_group(q, "blip2d", msg, sizeof msg);
 *     ... b2q_enqueue(q, &job, msg, sizeof msg) ...
 *     b2q_close(q);
 *
 * The keys, for a stream named S (the URL's STREAM, "blip2:jobs" if none):
 *   S            stream of jobs; fields id, src, op, req (a protocol request,
 *                docs/protocol.md, MessagePack), optionally path; consumer
 *                group "blip2d" (--queue-group)
 *   S:jobs       hash job id -> src: every job ever enqueued (enqueue dedup)
 *   S:done       hash job id -> "r <results entry>" | "d <dead entry>": the
 *                one terminal state of a job (results written idempotently)
 *   S:results    stream of results; fields id, src, by (consumer), res (the
 *                protocol reply: done, features or error, MessagePack)
 *   S:dead       stream of dead letters; fields id, src, code, message,
 *                field, tries, by, op, req, path
 *   S:fails      hash job id -> "code message" of its last transient failure
 * A job entry is XACKed and XDELed in the same Lua step that writes its
 * result, so S holds only jobs not yet done.
 *
 * Conventions: 0 or a negative B2Q_E* code; messages into the caller's
 * buffer; no logging, no global state; one b2q_conn per thread.
 */
#ifndef B2Q_H
#define B2Q_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define B2Q_DEFAULT_STREAM "blip2:jobs"
#define B2Q_DEFAULT_GROUP "blip2d"
#define B2Q_DEFAULT_PORT 6379
/* Largest image a job may carry inline; larger files go by path (docs/scale-out.md). */
#define B2Q_MAX_INLINE_IMAGE (16u << 20)
/* Longest job id, source name and path stored with a job. */
#define B2Q_MAX_ID 64u
#define B2Q_MAX_SRC 4096u

enum {
    B2Q_OK = 0,
    B2Q_ENOMEM = -1,
    B2Q_EINVAL = -2,  /* bad URL or argument */
    B2Q_EIO = -3,     /* the connection failed or broke: reconnect */
    B2Q_EREDIS = -4,  /* Redis answered with an error (message says which) */
    B2Q_EPROTO = -5   /* an unexpected reply shape */
};

typedef struct b2q_url {
    char host[256];       /* "" for a Unix socket */
    int port;
    char unix_path[4096]; /* "" for TCP */
    char user[128];       /* "" : no ACL user (AUTH password only, or none) */
    char password[256];   /* "" : no AUTH */
    char stream[256];
} b2q_url;

/* Parses redis://[user:password@]HOST[:PORT][/STREAM] (HOST may be [v6])
 * or unix:[user:password@]PATH[/STREAM].  For unix: the last component is
 * the stream when PATH itself is not a socket but its parent path is (a
 * stream name has no '/').  user and password are %XX-decoded.  Without a
 * password in the URL, the environment's BLIP2_QUEUE_PASSWORD is used, else
 * the file $CREDENTIALS_DIRECTORY/queue-password (systemd LoadCredential=),
 * so that the secret stays out of argv.  0, or B2Q_EINVAL with msg set. */
int b2q_url_parse(const char *s, b2q_url *u, char *msg, size_t msg_len);
/* The URL without its password, for logs: "redis://w1:***@db:6379/photos". */
void b2q_url_display(const b2q_url *u, char *buf, size_t len);

typedef struct b2q_conn b2q_conn;

/* Connects (timeout_ms for the connect and for each reply; 0 = none) and
 * authenticates.  *out is the caller's; b2q_close frees it. */
int b2q_connect(const b2q_url *u, int timeout_ms, b2q_conn **out, char *msg, size_t msg_len);
void b2q_close(b2q_conn *q);
/* The reply timeout from now on (ms, 0 = none). */
int b2q_set_timeout(b2q_conn *q, int timeout_ms);
/* The hiredis context, for the worker and the tool's own commands
 * (redisContext *; void here so that this header needs no hiredis). */
void *b2q_redis(b2q_conn *q);
const char *b2q_stream(const b2q_conn *q);
/* S + suffix ("S:done"); static per connection, valid until b2q_close. */
const char *b2q_key(const b2q_conn *q, const char *suffix);

/* XGROUP CREATE S group 0 MKSTREAM; an existing group is fine. */
int b2q_ensure_group(b2q_conn *q, const char *group, char *msg, size_t msg_len);

/* A job to enqueue. */
typedef struct b2q_job {
    const char *id;        /* 1 .. B2Q_MAX_ID bytes of [0-9a-zA-Z_.:-] */
    const char *src;       /* the source name results carry (the file path) */
    const char *op;        /* "caption", "ask" or "features" */
    const uint8_t *req;    /* the protocol request (one MessagePack map, no frame prefix) */
    size_t req_len;
    const char *path;      /* NULL, or the image as a path on shared storage */
} b2q_job;

/* Adds the job unless its id was ever enqueued (one Lua step).  1 added,
 * 0 already known, < 0 error. */
int b2q_enqueue(b2q_conn *q, const b2q_job *job, char *msg, size_t msg_len);

/* The terminal write of one job (one Lua step): unless the job already has
 * a terminal state, appends res to S:results (and, dead, a dead letter to
 * S:dead); then XACK and XDEL of the entry.  1 written, 0 it had one
 * already (another worker finished it first), < 0 error. */
typedef struct b2q_outcome {
    const char *entry;     /* the job's entry id in S */
    const char *id, *src;  /* job id and source name */
    const uint8_t *res;    /* the protocol reply, MessagePack map */
    size_t res_len;
    const char *by;        /* consumer name */
    bool dead;             /* also a dead letter: */
    const char *code, *message, *field; /* its error */
    unsigned tries;
    const char *op;        /* the job as read, kept in the dead letter */
    const uint8_t *req;
    size_t req_len;
    const char *path;
} b2q_outcome;
int b2q_finish(b2q_conn *q, const char *group, const b2q_outcome *o, char *msg, size_t msg_len);

/* Records a transient failure (HSET S:fails id "code message"); the entry
 * stays pending and is retried after the idle time. */
int b2q_note_failure(b2q_conn *q, const char *id, const char *code, const char *message,
                     char *msg, size_t msg_len);

/* A job id from content: the hex SHA-256 (64 characters + NUL) of the
 * image file's bytes, the op and the request as sent without its image
 * (the same file with the same op and parameters gives the same id,
 * however it is sent). */
void b2q_content_id(const uint8_t *image, size_t image_len, const char *op,
                    const uint8_t *req, size_t req_len, char out[65]);

#endif
