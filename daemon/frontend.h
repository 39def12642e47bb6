/*
 * frontend.h - how a front end of blip2d hands requests to the one
 * scheduler and gets their replies back.
 *
 * blip2d has one pipeline (admission, preparation on the worker pool, the
 * scheduler thread) and can have several front ends, each on its own
 * thread: the Unix socket (server.c, the loop thread), and later an HTTP
 * server or a queue worker.  A front end speaks its own wire format but
 * hands over the same validated request struct the socket path decodes
 * (b2ipc_request, libipc/blip2ipc.h), and gets replies as b2ipc_reply
 * structs through a sink it supplies.  Every refusal, whatever front end
 * the request came from, is decided in one place: b2d_submit.
 *
 * Usage, a front end with its own thread (error handling shortened):
 *
 *     static void my_reply(void *ctx, const b2ipc_reply *rp, int terminal)
 *     {
 *         // any thread, under the client's lock: copy or encode rp (it is
 *         // borrowed), queue it for your thread and wake it; never call
 *         // b2d_* functions of the same client from here
 *     }
 *     static const b2d_sink my_sink = {my_reply};
 *
 *     b2d_client *cl = b2d_client_new(core, user_key, &my_sink, my_ctx);
 *     b2ipc_request rq;
 *     b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
 *     rq.id = 1;
 *     rq.generate.image = bytes;  rq.generate.image_len = n;  // borrowed
 *     if (b2ipc_request_validate(&rq, b2d_core_limits(core), &err) < 0) ...
 *     b2d_refusal why;
 *     if (b2d_submit(cl, &rq, -1, &why) < 0)
 *         reply_error(why.code, why.field, why.message);  // busy, duplicate_id ...
 *     // replies come to my_reply: token events, then one done/error
 *     b2d_cancel(cl, 1, NULL);            // optional
 *     b2d_client_close(cl);               // when the front end's peer leaves
 *
 * Threads: every function here is thread-safe.  The sink is called from
 * the pool threads, the scheduler thread, or the caller of b2d_cancel /
 * b2d_client_close, always with the client's lock held: the replies of one
 * client never overlap, and those of one request come in order.  After
 * b2d_client_close returns, the sink is never called for that client
 * again, so the front end may free its context.
 *
 * Fairness and caps: `user` is the key the scheduler serves round robin
 * (the socket uses the peer's uid); the per-client in-flight cap
 * (--max-inflight) applies per client.
 */
#ifndef B2D_FRONTEND_H
#define B2D_FRONTEND_H

#include <stdint.h>
#include <uv.h>

#include "blip2ipc.h"

typedef struct b2d_core b2d_core;     /* the pipeline, one per daemon */
typedef struct b2d_client b2d_client; /* one peer of a front end */

/* Where the replies of a client's requests go. */
typedef struct b2d_sink {
    /* One reply: for a generate, its token events (terminal 0), then one
     * terminal reply (done or error); for a features request, one
     * terminal features or error reply; after the terminal reply of a
     * request that a b2d_cancel with a reply id found, the cancel reply
     * (type cancel, found true, terminal 1).  rp and everything it points
     * to is borrowed for the call.  Returns the bytes the front end now
     * holds for its peer because of it (0 if it dropped it): they count
     * against the client's output cap until b2d_client_sent. */
    size_t (*reply)(void *ctx, const b2ipc_reply *rp, int terminal);
} b2d_sink;

/* A refused request: a protocol error code (B2IPC_E*), the field it
 * concerns (or NULL) and a message for the peer. */
typedef struct b2d_refusal {
    int code;
    const char *field;
    const char *message;
} b2d_refusal;

/* A new client of core whose replies go to sink (copied) with ctx; user
 * is its fairness key.  NULL when out of memory. */
b2d_client *b2d_client_new(b2d_core *core, uint64_t user, const b2d_sink *sink, void *ctx);
/* The front end's peer has gone: its requests are canceled (queued ones
 * dropped, features work too), no reply reaches the sink any more, and
 * the front end's reference is dropped.  Returns the number of requests
 * that were in flight.  NULL is fine. */
int b2d_client_close(b2d_client *c);
/* Output back-pressure.  While c holds more unsent reply bytes than its
 * cap (--max-output), or while the front end holds it, the scheduler
 * produces no replies for c: its queued requests are not started and its
 * running ones are not stepped (they keep their memory, not their batch
 * slots).  b2d_client_sent: the front end has passed on (or dropped)
 * that many of the bytes its sink reported. */
void b2d_client_hold(b2d_client *c, int held);
void b2d_client_sent(b2d_client *c, size_t bytes);

/* Admits rq (a generate or features request that passed
 * b2ipc_request_validate) from client c: fd is the image descriptor
 * (or -1), always taken (closed on refusal).  Returns 0 (the replies come
 * through the sink) or the refusal code (< 0, *why filled, nothing comes
 * through the sink): duplicate_id, shutting_down, busy, unsupported,
 * bad_fd, no_memory. */
int b2d_submit(b2d_client *c, const b2ipc_request *rq, int fd, b2d_refusal *why);
/* Is id in flight on c (submitted, its terminal reply not yet sent)? */
int b2d_in_flight(b2d_client *c, uint64_t id);
/* How many requests are in flight on c. */
int b2d_client_inflight(b2d_client *c);
/* Cancels the request target of c.  Returns 1 if it was in flight: its
 * terminal reply comes through the sink (done with finish "canceled" for
 * a generate), then, if reply_id is given, a cancel reply with that id.
 * Returns 0 if target is not in flight (nothing comes through the sink). */
int b2d_cancel(b2d_client *c, uint64_t target, const uint64_t *reply_id);

/* What a charge to the daemon's memory budget is for (status reports
 * each): admitted requests (jobs), image decodes in progress (decode),
 * partial input frames (input), unsent replies (output), HTTP request
 * bodies and the images decoded from their data: URLs (http). */
typedef enum b2d_mem_cat {
    B2D_MEM_JOBS, B2D_MEM_DECODE, B2D_MEM_INPUT, B2D_MEM_OUTPUT, B2D_MEM_HTTP,
    B2D_MEM_NCAT
} b2d_mem_cat;

/* The daemon's memory budget (--max-memory), for what a front end holds
 * of its peers' input (partial request frames, HTTP bodies): charges n
 * bytes (n > 0) or releases them (n < 0) under category cat.  Returns 1
 * while the budget is exceeded (stop taking input that would grow), else
 * 0.  Requests are charged by b2d_submit (refused with busy beyond the
 * budget), unsent replies by the sink's return value. */
int b2d_core_memory(b2d_core *core, b2d_mem_cat cat, long long n);
/* Takes n bytes for cat only if they fit the budget: 0, or -1 (nothing
 * taken: answer busy, or too_large when n alone exceeds the budget). */
int b2d_core_memory_take(b2d_core *core, b2d_mem_cat cat, size_t n);
/* The budget in bytes. */
long long b2d_core_memory_max(b2d_core *core);

/* The size limits requests are validated against. */
const b2ipc_limits *b2d_core_limits(b2d_core *core);
/* Room for the strings of a status reply. */
typedef struct b2d_status_text {
    char name[256], family[32], dtype[32], precision[16], backend[32], kernels[256], weights[200];
} b2d_status_text;
/* Fills st with the daemon's status (model, config, queue, cache, engine);
 * its strings point into txt (the caller's) and the daemon's
 * configuration. */
void b2d_core_status(b2d_core *core, b2ipc_status *st, b2d_status_text *txt);

#endif
