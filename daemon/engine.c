/*
 * engine.c - the scheduler thread: per-user queues of prepared jobs,
 * round-robin admission into one batch, one decoder step at a time.
 *
 *   b2d_engine_submit (the loop thread, after preparation)
 *     -> the FIFO queue of the job's user
 *   engine_main, one round:
 *     wait -> drop_canceled -> admit_round_robin -> start_admitted
 *          -> step_models -> retire_done
 *
 * The scheduler knows jobs only through their ops (daemon.h): it asks
 * their width, starts them, steps the sessions they have, and lets them
 * emit their terminal replies.  Cancellation is a flag on the job, read
 * before admission, before each step and inside the token callback, so a
 * canceled request stops within one decode step.
 */
#include "daemon.h"
#include "log.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The queue of one user (fairness key). */
typedef struct uq {
    uint64_t user;
    b2d_job *head, *tail;
} uq;

struct b2d_engine {
    pthread_t th;
    pthread_mutex_t mu;       /* guards everything down to stats */
    pthread_cond_t cv;
    const b2d_config *cfg;
    b2d_cache *cache;
    uq *q;
    int nq, capq, rr;
    int queued, active, stop, cancel_all;
    b2d_engine_stats stats;
    /* engine thread only: */
    int cap;                  /* batch width (max_batch) */
    b2d_job **act;            /* the running jobs (nact of cap + 64) */
    int nact;
    blip2_session **ss;       /* their sessions, for one step */
};

void b2d_engine_submit(b2d_engine *e, b2d_job *j)
{
    pthread_mutex_lock(&e->mu);
    int i;
    for (i = 0; i < e->nq; i++)
        if (e->q[i].user == j->user) break;
    if (i == e->nq) {
        if (e->nq == e->capq) {
            int nc = e->capq ? 2 * e->capq : 8;
            uq *nqv = realloc(e->q, sizeof *nqv * (size_t)nc);
            if (!nqv) { /* keep going with what we have: queue it with the first user */
                i = 0;
                goto add;
            }
            e->q = nqv;
            e->capq = nc;
        }
        e->q[e->nq++] = (uq){j->user, NULL, NULL};
    }
add:
    j->next = NULL;
    if (e->nq == 0) { /* only on allocation failure with no queue at all */
        pthread_mutex_unlock(&e->mu);
        b2d_job_error(j, B2IPC_ENOMEM, NULL, "out of memory");
        b2d_job_unref(j);
        return;
    }
    if (e->q[i].tail) e->q[i].tail->next = j;
    else e->q[i].head = j;
    e->q[i].tail = j;
    e->queued++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void b2d_engine_counts(b2d_engine *e, int *queued, int *active)
{
    pthread_mutex_lock(&e->mu);
    *queued = e->queued;
    *active = e->active;
    pthread_mutex_unlock(&e->mu);
}

void b2d_engine_stats_get(b2d_engine *e, b2d_engine_stats *st)
{
    pthread_mutex_lock(&e->mu);
    *st = e->stats;
    pthread_mutex_unlock(&e->mu);
}

void b2d_engine_poke(b2d_engine *e)
{
    if (!e) return; /* stopped: nothing left to wake */
    pthread_mutex_lock(&e->mu);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void b2d_engine_cancel_all(b2d_engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->cancel_all = 1;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* A job leaves the engine (its terminal reply emitted): the count, then
 * the scheduler's reference. */
static void retire(b2d_engine *e, b2d_job *j)
{
    assert(atomic_load(&j->ended));
    pthread_mutex_lock(&e->mu);
    assert(e->active > 0);
    e->active--;
    pthread_mutex_unlock(&e->mu);
    b2d_job_unref(j);
}

/* wait: sleeps until there is something to do.  Returns 0 when the
 * engine is told to stop and has nothing left, else 1. */
static int wait_for_work(b2d_engine *e)
{
    pthread_mutex_lock(&e->mu);
    while (!e->stop && e->nact == 0 && e->queued == 0) pthread_cond_wait(&e->cv, &e->mu);
    int go = !(e->stop && e->nact == 0 && e->queued == 0);
    pthread_mutex_unlock(&e->mu);
    return go;
}

/* Does a queued job leave the queue without running? */
static int drops(const b2d_engine *e, const b2d_job *j)
{
    int why = atomic_load(&j->canceled);
    return e->cancel_all || why >= B2D_CANCEL_GONE || (why && j->ops->cancel_stops);
}

/* drop_canceled: queued jobs that were canceled (a features request only
 * when its client has gone, or at shutdown) leave their queues; each
 * emits its terminal reply (ops->abandon) and is released. */
static void drop_canceled(b2d_engine *e)
{
    b2d_job *dropped = NULL;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->nq; i++) {
        b2d_job **pp = &e->q[i].head, *prev = NULL;
        while (*pp) {
            b2d_job *j = *pp;
            if (drops(e, j)) {
                *pp = j->next;
                if (e->q[i].tail == j) e->q[i].tail = prev;
                j->next = dropped;
                dropped = j;
                e->queued--;
            } else {
                prev = j;
                pp = &j->next;
            }
        }
    }
    pthread_mutex_unlock(&e->mu);
    for (b2d_job *j = dropped, *n; j; j = n) {
        n = j->next;
        j->ops->abandon(j);
        b2d_job_unref(j);
    }
}

/* admit_round_robin: takes jobs from the users' queues in turn, one per
 * user per turn, while the batch has room (cap jobs, and the width of the
 * running ones plus the new one within cap, unless nothing runs).
 * Returns them in admission order (counted active from here). */
static b2d_job *admit_round_robin(b2d_engine *e)
{
    b2d_job *fresh = NULL, **ft = &fresh;
    int width = 0, n = e->nact;
    for (int i = 0; i < e->nact; i++) width += e->act[i]->ops->width(e->act[i]);
    pthread_mutex_lock(&e->mu);
    while (e->queued > 0 && n < e->cap) {
        int tried = 0;
        while (tried < e->nq && !e->q[e->rr % e->nq].head) {
            e->rr++;
            tried++;
        }
        uq *u = &e->q[e->rr % e->nq];
        b2d_job *j = u->head;
        if (!j || (n > 0 && width + j->ops->width(j) > e->cap)) break;
        u->head = j->next;
        if (!u->head) u->tail = NULL;
        j->next = NULL;
        *ft = j;
        ft = &j->next;
        e->queued--;
        e->active++;
        e->rr++;
        width += j->ops->width(j);
        n++;
    }
    pthread_mutex_unlock(&e->mu);
    return fresh;
}

/* start_admitted: each admitted job starts (ops->start: vision unless
 * cached, a session; a features request runs here whole).  Those with a
 * session join the running set; the others, and those canceled
 * meanwhile, have emitted their terminal reply and are retired. */
static void start_admitted(b2d_engine *e, b2d_job *fresh)
{
    for (b2d_job *j = fresh, *n; j; j = n) {
        n = j->next;
        j->next = NULL;
        j->t_admit = b2d_now_ms();
        if (drops(e, j)) {
            j->ops->abandon(j);
            retire(e, j);
            continue;
        }
        if (j->ops->start(j, e->cache, e->cfg->prefill_chunk) == 0) {
            retire(e, j);
            continue;
        }
        assert(j->sess && e->nact < e->cap + 64);
        e->act[e->nact++] = j;
    }
}

/* step_models: cancels the sessions of canceled jobs, then runs one
 * batched decoder step per model (after a reload, jobs of the old model
 * finish on it), and books the time to the jobs and the stats. */
static void step_models(b2d_engine *e)
{
    b2d_job **act = e->act;
    const int nact = e->nact;
    pthread_mutex_lock(&e->mu);
    int cancel_all = e->cancel_all;
    pthread_mutex_unlock(&e->mu);
    int prefills = 0, rows = 0;
    for (int i = 0; i < nact; i++) {
        if (atomic_load(&act[i]->canceled) || cancel_all) blip2_session_cancel(act[i]->sess);
        act[i]->prefilling = blip2_session_prefilling(act[i]->sess); /* before the step */
        if (blip2_session_done(act[i]->sess)) continue;
        if (act[i]->prefilling) prefills++;
        else rows += blip2_session_rows(act[i]->sess);
    }
    double t0 = b2d_now_ms();
    for (int i = 0; i < nact; i++) {
        b2d_model *bm = act[i]->model;
        int first = 1;
        for (int k = 0; k < i && first; k++) first = act[k]->model != bm;
        if (!first) continue;
        int n = 0;
        for (int k = i; k < nact; k++)
            if (act[k]->model == bm) e->ss[n++] = act[k]->sess;
        blip2_error err = {0};
        if (blip2_step(bm->ctx, e->ss, n, &err) < 0) LOG_ERR("decode step: %s", err.text);
    }
    double dt = b2d_now_ms() - t0;
    pthread_mutex_lock(&e->mu);
    if (prefills) {
        e->stats.prefill_steps++;
        e->stats.prefill_ms += dt;
    } else if (rows) {
        e->stats.decode_steps++;
        e->stats.decode_tokens += (uint64_t)rows;
        e->stats.decode_ms += dt;
    }
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < nact; i++) {
        act[i]->steps++;
        if (act[i]->prefilling) act[i]->prefill_ms += dt; /* every step of a chunked prefill */
        else act[i]->decode_ms += dt;
    }
}

/* retire_done: jobs whose session is done emit their terminal reply
 * (ops->finish) and leave; the running set keeps its order. */
static void retire_done(b2d_engine *e)
{
    int k = 0;
    for (int i = 0; i < e->nact; i++) {
        b2d_job *j = e->act[i];
        if (blip2_session_done(j->sess)) {
            j->ops->finish(j);
            retire(e, j);
        } else {
            e->act[k++] = j;
        }
    }
    e->nact = k;
}

static void *engine_main(void *arg)
{
    b2d_engine *e = arg;
    while (wait_for_work(e)) {
        drop_canceled(e);
        start_admitted(e, admit_round_robin(e));
        step_models(e);
        retire_done(e);
    }
    assert(e->nact == 0 && e->queued == 0);
    return NULL;
}

int b2d_engine_start(b2d_engine **out, const b2d_config *cfg, b2d_cache *cache)
{
    b2d_engine *e = calloc(1, sizeof *e);
    if (!e) return -1;
    e->cfg = cfg;
    e->cache = cache;
    e->cap = cfg->max_batch > 0 ? cfg->max_batch : 8;
    const size_t cap = (size_t)e->cap + 64;
    e->act = calloc(cap, sizeof *e->act);
    e->ss = calloc(cap, sizeof *e->ss);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (!e->act || !e->ss || pthread_create(&e->th, NULL, engine_main, e) != 0) {
        free(e->act);
        free(e->ss);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
        free(e);
        return -1;
    }
    *out = e;
    return 0;
}

void b2d_engine_stop(b2d_engine *e)
{
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->th, NULL);
    free(e->act);
    free(e->ss);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->q);
    free(e);
}
