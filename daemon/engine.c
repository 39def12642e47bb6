/*
 * engine.c - the scheduler thread: per-user queues of prepared jobs,
 * round-robin admission into one batch, one decoder step at a time.
 *
 *   b2d_engine_submit (at admission, any front end's thread)
 *     -> the FIFO queue of the job's user, in arrival order
 *   b2d_engine_prepared (the loop thread, after preparation): it may run;
 *     a job starts only after every earlier job of its client started,
 *     so each connection's requests start in arrival order
 *   engine_main, one round:
 *     wait -> drop_canceled -> admit_round_robin -> start_admitted
 *          -> step_models -> retire_done
 *
 * The scheduler knows jobs only through their ops (daemon.h): it asks
 * their width, starts them, steps the sessions they have, and lets them
 * emit their terminal replies.  Cancellation is a flag on the job, read
 * before admission, before each step and inside the token callback, so a
 * canceled request stops within one decode step.
 *
 * Back-pressure: a job whose client takes no more output (blocked,
 * frontend.h) is neither admitted nor stepped; it keeps its session but
 * not its batch slot, and goes on when its client drains.
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
    int queued, active, stop;
    b2d_engine_stats stats;
    _Atomic int cancel_all;   /* set under mu; also read without it (runnable, drops) */
    /* engine thread only: */
    int cap;                  /* batch width (max_batch) */
    b2d_job **act;            /* the running jobs (nact of capact) */
    int nact, capact;
    b2d_job **run;            /* (capact) those stepped this round */
    blip2_session **ss;       /* (capact) their sessions, for one step */
};

int b2d_engine_submit(b2d_engine *e, b2d_job *j)
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
        return -1;
    }
    j->prepared = j->counted = 0;
    if (e->q[i].tail) e->q[i].tail->next = j;
    else e->q[i].head = j;
    e->q[i].tail = j;
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void b2d_engine_prepared(b2d_engine *e, b2d_job *j)
{
    pthread_mutex_lock(&e->mu);
    assert(!j->prepared);
    j->prepared = 1;
    if (!atomic_load(&j->ended)) {
        j->counted = 1;
        e->queued++;
    }
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
    atomic_store(&e->cancel_all, 1);
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

/* Does a queued job leave the queue without running? */
static int drops(const b2d_engine *e, const b2d_job *j)
{
    int why = atomic_load(&j->canceled);
    return atomic_load(&e->cancel_all) || why >= B2D_CANCEL_GONE || (why && j->ops->cancel_stops);
}

/* May the job make progress now (its client takes output, or it is to
 * be canceled)? */
static int runnable(const b2d_engine *e, const b2d_job *j)
{
    return atomic_load(&e->cancel_all) || atomic_load(&j->canceled) || !b2d_client_blocked(j->client);
}

/* Under mu: is there anything to do? */
static int has_work(const b2d_engine *e)
{
    for (int i = 0; i < e->nact; i++)
        if (runnable(e, e->act[i])) return 1;
    for (int i = 0; i < e->nq; i++)
        for (const b2d_job *j = e->q[i].head; j; j = j->next)
            if (j->prepared && (atomic_load(&j->ended) || runnable(e, j))) return 1;
    return 0;
}

/* wait: sleeps until a job can make progress (a submit, a cancel, a
 * client that drained pokes it).  Returns 0 when the engine is told to
 * stop and has nothing left, else 1. */
static int wait_for_work(b2d_engine *e)
{
    pthread_mutex_lock(&e->mu);
    while (!(e->stop && e->nact == 0 && e->queued == 0) && !has_work(e)) pthread_cond_wait(&e->cv, &e->mu);
    int go = !(e->stop && e->nact == 0 && e->queued == 0);
    pthread_mutex_unlock(&e->mu);
    return go;
}

/* drop_canceled: prepared jobs that have ended (their preparation
 * failed) or were canceled (a features request only when its client has
 * gone, or at shutdown) leave their queues; the canceled ones emit their
 * terminal reply (ops->abandon; once only, so not again for the ended);
 * all are released.  Jobs still in preparation stay: the pool has them. */
static void drop_canceled(b2d_engine *e)
{
    b2d_job *dropped = NULL;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->nq; i++) {
        b2d_job **pp = &e->q[i].head, *prev = NULL;
        while (*pp) {
            b2d_job *j = *pp;
            if (j->prepared && (atomic_load(&j->ended) || drops(e, j))) {
                *pp = j->next;
                if (e->q[i].tail == j) e->q[i].tail = prev;
                j->next = dropped;
                dropped = j;
                if (j->counted) e->queued--;
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

/* The first job of u that may start now (NULL: none), and the job
 * before it in the queue.  Passed over: jobs still in preparation, and
 * every later job of their clients (a client's requests start in arrival
 * order), and jobs of blocked clients (all of a client's, so the order
 * holds). */
static b2d_job *first_runnable(const b2d_engine *e, uq *u, b2d_job **prev)
{
    const b2d_client *waiting[16];
    int nw = 0;
    *prev = NULL;
    for (b2d_job *j = u->head; j; *prev = j, j = j->next) {
        int behind = 0;
        for (int k = 0; k < nw && !behind; k++) behind = waiting[k] == j->client;
        if (behind || atomic_load(&j->ended)) continue;
        if (!j->prepared) {
            if (nw == 16) return NULL; /* many clients preparing: wait for them */
            waiting[nw++] = j->client;
            continue;
        }
        if (runnable(e, j)) return j;
    }
    return NULL;
}

/* admit_round_robin: takes jobs from the users' queues in turn, one per
 * user per turn, while the batch has room (cap jobs, and the width of the
 * running ones plus the new one within cap, unless nothing runs; jobs of
 * blocked clients do not count).  Returns them in admission order
 * (counted active from here). */
static b2d_job *admit_round_robin(b2d_engine *e)
{
    b2d_job *fresh = NULL, **ft = &fresh;
    int width = 0, n = 0;
    for (int i = 0; i < e->nact; i++)
        if (runnable(e, e->act[i])) {
            width += e->act[i]->ops->width(e->act[i]);
            n++;
        }
    pthread_mutex_lock(&e->mu);
    while (e->queued > 0 && n < e->cap) {
        b2d_job *j = NULL, *prev = NULL;
        uq *u = NULL;
        for (int tried = 0; tried < e->nq && !j; tried++, e->rr++) {
            u = &e->q[e->rr % e->nq];
            j = first_runnable(e, u, &prev);
        }
        if (!j) break;
        e->rr--; /* the user found is the one served: move past it below */
        if (n > 0 && width + j->ops->width(j) > e->cap) break;
        if (prev) prev->next = j->next;
        else u->head = j->next;
        if (u->tail == j) u->tail = prev;
        j->next = NULL;
        *ft = j;
        ft = &j->next;
        assert(j->counted);
        e->queued--;
        e->active++;
        e->rr++;
        width += j->ops->width(j);
        n++;
    }
    pthread_mutex_unlock(&e->mu);
    return fresh;
}

/* Room for twice as many running jobs. */
static int grow_active(b2d_engine *e)
{
    int nc = 2 * e->capact;
    b2d_job **na = realloc(e->act, sizeof *na * (size_t)nc);
    if (!na) return -1;
    e->act = na;
    b2d_job **nr = realloc(e->run, sizeof *nr * (size_t)nc);
    if (!nr) return -1;
    e->run = nr;
    blip2_session **ns = realloc(e->ss, sizeof *ns * (size_t)nc);
    if (!ns) return -1;
    e->ss = ns;
    e->capact = nc;
    return 0;
}

/* An admitted job whose client got blocked before it started goes back
 * to the head of its user's queue (it was its client's first). */
static void requeue(b2d_engine *e, b2d_job *j)
{
    pthread_mutex_lock(&e->mu);
    int i;
    for (i = 0; i < e->nq && e->q[i].user != j->user; i++) {
    }
    assert(i < e->nq);
    j->next = e->q[i].head;
    e->q[i].head = j;
    if (!e->q[i].tail) e->q[i].tail = j;
    e->queued++;
    e->active--;
    pthread_mutex_unlock(&e->mu);
}

/* start_admitted: each admitted job starts (ops->start: vision unless
 * cached, a session; a features request runs here whole).  Those with a
 * session join the running set; the others, and those canceled
 * meanwhile, have emitted their terminal reply and are retired.  A job
 * whose client got blocked by an earlier one's reply waits again. */
static void start_admitted(b2d_engine *e, b2d_job *fresh)
{
    b2d_job *back = NULL;
    for (b2d_job *j = fresh, *n; j; j = n) {
        n = j->next;
        j->next = NULL;
        if (!runnable(e, j)) { /* the latest first: pushed back in reverse */
            j->next = back;
            back = j;
            continue;
        }
        j->t_admit = b2d_now_ms();
        if (drops(e, j)) {
            j->ops->abandon(j);
            retire(e, j);
            continue;
        }
        if (e->nact == e->capact && grow_active(e) < 0) {
            b2d_job_error(j, B2IPC_ENOMEM, NULL, "out of memory");
            retire(e, j);
            continue;
        }
        if (j->ops->start(j, e->cache, e->cfg->prefill_chunk) == 0) {
            retire(e, j);
            continue;
        }
        assert(j->sess && e->nact < e->capact);
        e->act[e->nact++] = j;
    }
    for (b2d_job *j = back, *n; j; j = n) {
        n = j->next;
        requeue(e, j);
    }
}

/* step_models: cancels the sessions of canceled jobs, then runs one
 * batched decoder step per model over the jobs that may run (after a
 * reload, jobs of the old model finish on it), and books the time to
 * those jobs and the stats. */
static void step_models(b2d_engine *e)
{
    const int cancel_all = atomic_load(&e->cancel_all);
    b2d_job **act = e->run;
    int nact = 0, prefills = 0, rows = 0;
    for (int i = 0; i < e->nact; i++) {
        b2d_job *j = e->act[i];
        if (atomic_load(&j->canceled) || cancel_all) blip2_session_cancel(j->sess);
        if (!runnable(e, j) || blip2_session_done(j->sess)) continue;
        j->prefilling = blip2_session_prefilling(j->sess); /* before the step */
        act[nact++] = j;
        if (j->prefilling) prefills++;
        else rows += blip2_session_rows(j->sess);
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
    /* jobs that ended uncounted since the last wake (a gone client's,
     * abandoned as its preparation ended just before the stop) would
     * otherwise stay queued, with their client and model, past the exit */
    drop_canceled(e);
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
    e->capact = 2 * (e->cap + 64);
    e->act = calloc((size_t)e->capact, sizeof *e->act);
    e->run = calloc((size_t)e->capact, sizeof *e->run);
    e->ss = calloc((size_t)e->capact, sizeof *e->ss);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (!e->act || !e->run || !e->ss || pthread_create(&e->th, NULL, engine_main, e) != 0) {
        free(e->act);
        free(e->run);
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
    /* Jobs still queued were in preparation when a stop past the shutdown
     * deadline came (a normal stop waits for them): the core answers them
     * (b2d_core_stop, or as the pool returns them); the engine's
     * references go. */
    for (int i = 0; i < e->nq; i++)
        for (b2d_job *j = e->q[i].head, *n; j; j = n) {
            n = j->next;
            b2d_job_unref(j);
        }
    free(e->act);
    free(e->run);
    free(e->ss);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->q);
    free(e);
}
