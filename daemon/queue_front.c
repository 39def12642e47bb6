/*
 * queue_front.c - the --queue front end: the worker thread of queue.c as
 * one client of the job pipeline (frontend.h).
 *
 *   queue.c worker thread --queue_submit_cb: the job's request, id = its
 *     token--> b2d_submit (the socket's admission; refusals go back as codes)
 *   pool / scheduler threads --queue_reply_cb (the client's sink): the
 *     terminal reply encoded with libipc, unframed--> b2d_queue_reply
 *     --> the worker thread writes it to Redis with its XACK
 *
 * All the worker's jobs share one client and one fairness key above every
 * uid, so the queue is one more user of the scheduler's round robin, and
 * --queue-window bounds how much of the batch it takes.
 */
#include "daemon.h"
#include "log.h"

#include <stdlib.h>

/* The fairness key of queue jobs: above every uid. */
#define QUEUE_USER ((uint64_t)1 << 40)

struct b2d_queue_front {
    b2d_queue *w;
    b2d_client *client;
};

/* Returns the bytes now held for the worker: they count against the
 * client's output cap until queue_written_cb, so results that cannot be
 * written (Redis away) stop the scheduler from making more. */
static size_t queue_reply_cb(void *ctx, const b2ipc_reply *rp, int terminal)
{
    b2d_queue_front *qf = ctx;
    if (!terminal || rp->type == B2IPC_REPLY_CANCEL) return 0; /* no streaming, no cancels */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error err;
    if (b2ipc_encode_reply(&sb, rp, &err) < 0 &&
        b2ipc_encode_error(&sb, true, rp->id, B2IPC_EINTERNAL, NULL, err.message) < 0) {
        msgpack_sbuffer_destroy(&sb);
        return 0; /* no reply: the job stays pending in Redis and is done again */
    }
    size_t n = sb.size - 4;
    b2d_queue_reply(qf->w, rp->id, (const uint8_t *)sb.data + 4, n);
    msgpack_sbuffer_destroy(&sb);
    return n;
}

static void queue_written_cb(void *ctx, size_t len)
{
    b2d_queue_front *qf = ctx;
    b2d_client_sent(qf->client, len);
}

static const b2d_sink queue_sink = {queue_reply_cb};

static int queue_submit_cb(void *ctx, const b2ipc_request *rq, int fd, uint64_t token)
{
    b2d_queue_front *qf = ctx;
    b2ipc_request r = *rq;
    r.id = token;
    if (r.op == B2IPC_OP_GENERATE) r.generate.stream = false; /* only the terminal reply is kept */
    b2d_refusal why;
    if (b2d_submit(qf->client, &r, fd, &why) < 0) {
        LOG_DEBUG("queue: job refused: %s", why.message);
        return why.code;
    }
    return 0;
}

int b2d_queue_front_start(b2d_queue_front **out, b2d_core *core, const b2d_config *cfg)
{
    *out = NULL;
    b2d_queue_front *qf = calloc(1, sizeof *qf);
    if (!qf || !(qf->client = b2d_client_new(core, QUEUE_USER, &queue_sink, qf))) {
        free(qf);
        LOG_ERR("--queue: out of memory");
        return -1;
    }
    b2d_queue_opts o = cfg->queue;
    o.lim = *b2d_core_limits(core);
    o.max_frame = cfg->max_frame;
    char msg[512];
    if (b2d_queue_start(&qf->w, &o, queue_submit_cb, queue_written_cb, qf, msg, sizeof msg) < 0) {
        LOG_ERR("--queue: %s", msg);
        b2d_client_close(qf->client);
        free(qf);
        return -1;
    }
    *out = qf;
    return 0;
}

void b2d_queue_front_drain(b2d_queue_front *qf)
{
    if (qf) b2d_queue_drain(qf->w);
}

void b2d_queue_front_stop(b2d_queue_front *qf)
{
    if (!qf) return;
    /* the core has stopped, so the sink is not called any more: what
     * finished is written (5 s at most if Redis is away; queue_written_cb
     * still reports to the client), then the client goes */
    b2d_queue_stop(qf->w, 5);
    b2d_client_close(qf->client);
    free(qf);
}
