/*
 * job.c - the lifetime of a request in the pipeline, and its replies.
 *
 *   b2d_job_new (core.c, at admission): refs 1 (the creator's), a
 *     reference to its client and, once admitted, one in the client's
 *     in-flight list
 *   each pipeline stage holds a reference while it has the job; the last
 *   b2d_job_unref frees it, its buffers, its session and its model
 *   reference
 *   b2d_job_emit: every reply of the request goes to its client's sink
 *     under the client's lock; the terminal one (at most once) also takes
 *     the job out of the in-flight list, then answers a waiting cancel
 *
 * Models: b2d_model is refcounted the same way (the core's current model,
 * plus one reference per job), so a reload never frees a model a job
 * still runs on.  Clients: one reference for the front end (dropped by
 * b2d_client_close) and one per job.
 */
#include "daemon.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double b2d_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- the counts models, clients and jobs share ---- */

/* One more reference to a thing still alive (refs > 0). */
static void ref_take(atomic_int *refs)
{
    int before = atomic_fetch_add(refs, 1);
    assert(before > 0);
    (void)before;
}

/* One reference fewer; 1 when it was the last (the caller frees). */
static int ref_drop(atomic_int *refs)
{
    int before = atomic_fetch_sub(refs, 1);
    assert(before > 0);
    return before == 1;
}

/* ---- models ---- */

b2d_model *b2d_model_ref(b2d_model *bm)
{
    ref_take(&bm->refs);
    return bm;
}

void b2d_model_unref(b2d_model *bm)
{
    if (!bm || !ref_drop(&bm->refs)) return;
    blip2_ctx_free(bm->ctx);
    blip2_model_free(bm->m);
    free(bm);
}

/* ---- clients ---- */

b2d_client *b2d_client_ref(b2d_client *c)
{
    ref_take(&c->refs);
    return c;
}

void b2d_client_unref(b2d_client *c)
{
    if (!c || !ref_drop(&c->refs)) return;
    assert(c->closed && c->ninf == 0);
    pthread_mutex_destroy(&c->mu);
    free(c->inf);
    free(c);
}

int b2d_client_unlist(b2d_client *c, b2d_job *j)
{
    for (int i = 0; i < c->ninf; i++)
        if (c->inf[i] == j) {
            c->inf[i] = c->inf[--c->ninf];
            return 1;
        }
    return 0;
}

/* ---- jobs ---- */

b2d_job *b2d_job_new(const b2d_job_ops *ops, b2d_client *c, uint64_t req_id)
{
    b2d_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    atomic_init(&j->refs, 1);
    atomic_init(&j->canceled, B2D_CANCEL_NONE);
    atomic_init(&j->ended, 0);
    j->ops = ops;
    j->client = b2d_client_ref(c);
    j->req_id = req_id;
    j->user = c->user;
    j->image_fd = -1;
    return j;
}

b2d_job *b2d_job_ref(b2d_job *j)
{
    ref_take(&j->refs);
    return j;
}

void b2d_job_unref(b2d_job *j)
{
    if (!j || !ref_drop(&j->refs)) return;
    if (j->image_fd >= 0) close(j->image_fd);
    free(j->image);
    free(j->prompt);
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->stop);
    free(j->px);
    free(j->query);
    free(j->prompt_ids);
    free(j->blob);
    free(j->feat[B2IPC_FEAT_LOGITS]);
    free(j->feat[B2IPC_FEAT_LOGITS_LAST]);
    blip2_session_free(j->sess);
    for (int i = 0; i < j->nret; i++) {
        if (j->streams) blip2_stream_free(&j->streams[i]);
        if (j->ids) free(j->ids[i]);
    }
    free(j->streams);
    free(j->ids);
    free(j->n_ids);
    free(j->cap_ids);
    b2d_model_unref(j->model);
    if (j->user_jobs) atomic_fetch_sub(j->user_jobs, 1);
    b2d_client_unref(j->client);
    if (j->budget) b2d_budget_add(j->budget, B2D_MEM_JOBS, -(long long)j->charged);
    free(j);
}

void b2d_job_cancel(b2d_job *j, int why)
{
    int cur = atomic_load(&j->canceled);
    while (cur < why && !atomic_compare_exchange_weak(&j->canceled, &cur, why)) {
    }
}

/* ---- replies ---- */

void b2d_job_emit(b2d_job *j, const b2ipc_reply *rp, int terminal)
{
    b2d_client *c = j->client;
    assert(atomic_load(&j->refs) > 0);
    if (terminal && atomic_exchange(&j->ended, 1)) return; /* one terminal reply */
    if (!terminal && atomic_load(&j->ended)) return;       /* nothing after it */
    int listed = 0;
    pthread_mutex_lock(&c->mu);
    if (terminal) listed = b2d_client_unlist(c, j);
    if (!c->closed) {
        size_t bytes = c->sink.reply(c->ctx, rp, terminal);
        if (listed && j->cancel_pending) {
            b2ipc_reply cr;
            b2ipc_reply_init(&cr, B2IPC_REPLY_CANCEL);
            cr.id = j->cancel_id;
            cr.cancel.found = true;
            bytes += c->sink.reply(c->ctx, &cr, 1);
        }
        atomic_fetch_add(&c->unsent, (long long)bytes);
        b2d_budget_add(c->budget, B2D_MEM_OUTPUT, (long long)bytes);
    }
    pthread_mutex_unlock(&c->mu);
    if (terminal) atomic_fetch_add(c->served, 1);
    if (listed) b2d_job_unref(j); /* the in-flight list's reference (never the caller's last) */
}

void b2d_job_error(b2d_job *j, int code, const char *field, const char *msg)
{
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_ERROR);
    rp.id = j->req_id;
    rp.error.code = code;
    rp.error.field = field;
    rp.error.message = msg && msg[0] ? msg : b2ipc_strerror(code);
    b2d_job_emit(j, &rp, 1);
}

void b2d_timings(const b2d_job *j, double now, size_t new_tokens, b2ipc_timings *t)
{
    const double t0 = j->t_recv;
    t->queue_ms = (j->t_prep0 > t0 ? j->t_prep0 - t0 : 0) +
                  (j->t_admit > j->t_prep1 && j->t_prep1 > 0 ? j->t_admit - j->t_prep1 : 0);
    t->preprocess_ms = j->t_prep1 > j->t_prep0 ? j->t_prep1 - j->t_prep0 : 0;
    t->vision_ms = j->vision_ms;
    t->prefill_ms = j->prefill_ms;
    t->decode_ms = j->decode_ms;
    t->total_ms = now > t0 ? now - t0 : 0;
    t->tokens_per_s = j->decode_ms > 0 ? new_tokens / (j->decode_ms / 1e3) : 0;
}
