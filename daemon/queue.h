/*
 * queue.h - blip2d's Redis Streams front end (--queue, issue 16): a worker
 * thread that takes jobs from a consumer group and feeds them to the same
 * admission and scheduler as socket clients.  docs/scale-out.md describes
 * it for operators; queue/b2q.h has the keys.
 *
 * The daemon gives the worker one submission function; the worker calls it
 * from its own thread with a request decoded and validated by libipc
 * exactly as a socket request would be, and the daemon answers once per
 * submitted job with b2d_queue_reply() (any thread), passing the terminal
 * reply payload it would have sent on a socket (done, features or error).
 * Jobs are named by a token, never a pointer: a reply for a job the worker
 * no longer holds is dropped.
 */
#ifndef B2D_QUEUE_H
#define B2D_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "blip2ipc.h"

typedef struct b2d_queue b2d_queue;

typedef struct b2d_queue_opts {
    const char *url;          /* redis://... or unix:... (b2q_url_parse) */
    const char *group;        /* consumer group; NULL: "blip2d" */
    const char *consumer;     /* NULL: "HOST:PID" */
    int window;               /* queue jobs in the scheduler at once (>= 1) */
    double idle_s;            /* a pending job idle this long is reclaimed */
    unsigned max_tries;       /* deliveries before a job goes to the dead letters */
    const char *allow_paths;  /* NULL: path jobs refused; else the root they must be under */
    b2ipc_limits lim;         /* the socket's limits (max_image_bytes, max_prompt_bytes) */
    size_t max_frame;         /* a job's request may not be larger */
} b2d_queue_opts;

/* Hands one job to the daemon.  rq is borrowed for the call (copy what you
 * keep; generate.image points into the worker's buffer); fd is -1 or the
 * image file opened by the worker (ownership passes, also on failure).
 * Returns 0, then b2d_queue_reply(token, ...) follows exactly once, or a
 * refusal B2IPC_E* (B2IPC_EBUSY: the worker tries again later). */
typedef int (*b2d_queue_submit_fn)(void *ctx, const b2ipc_request *rq, int fd, uint64_t token);
/* Optional: the worker has written (or dropped) a reply of len bytes that
 * b2d_queue_reply handed it; called from the worker thread, holding none
 * of its locks, until b2d_queue_stop returns.  The daemon uses it
 * to release the reply's bytes from the client's output cap, so replies
 * waiting for an absent Redis hold the scheduler back. */
typedef void (*b2d_queue_written_fn)(void *ctx, size_t len);

/* Checks the options and starts the worker thread (it connects on its own
 * and keeps reconnecting).  0, or -1 with msg set (bad URL, bad root). */
int b2d_queue_start(b2d_queue **out, const b2d_queue_opts *o, b2d_queue_submit_fn submit,
                    b2d_queue_written_fn written, void *ctx, char *msg, size_t msg_len);
/* The terminal reply of a submitted job: one MessagePack map (no frame
 * prefix), copied.  Thread-safe. */
void b2d_queue_reply(b2d_queue *w, uint64_t token, const uint8_t *payload, size_t len);
/* Stops taking jobs (shutdown begins); results still arriving are written. */
void b2d_queue_drain(b2d_queue *w);
/* Jobs submitted and not yet answered. */
int b2d_queue_inflight(b2d_queue *w);
/* Writes what is left (for at most deadline_s if Redis is away), stops
 * the thread and frees everything.  Jobs without a result stay pending in
 * Redis and are reclaimed by another worker.  NULL is fine. */
void b2d_queue_stop(b2d_queue *w, double deadline_s);

#endif
