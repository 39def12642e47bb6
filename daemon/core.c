/*
 * core.c - the one pipeline every front end submits to (frontend.h):
 * clients, admission, the preparation queue, cancel, status.
 *
 *   front end thread: b2d_submit -> admit() (every refusal, in one place)
 *     -> job_from_request() -> the client's in-flight list, its user's
 *     queue in the scheduler (b2d_engine_submit, arrival order) and the
 *     preparation queue --uv_async--> the loop thread: dispatch() hands
 *     jobs to the pool, at most one per pool thread, the user with the
 *     fewest on the pool first (one user's backlog never delays another
 *     user's preparation by more than the jobs already running)
 *   pool thread: prep_cb -> ops->prepare
 *   loop thread: after_prep_cb -> error reply | abandon (canceled), then
 *     b2d_engine_prepared (the scheduler thread may start it)
 *
 * libuv is touched from the loop thread only: a front end on another
 * thread only appends to the locked preparation queue and wakes the loop.
 * Lock order: core->mu, then a client's mu, then the engine's; the sink
 * is called with its client's mu held and nothing else.
 */
#include "daemon.h"
#include "log.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct b2d_core {
    const b2d_config *cfg;
    uv_loop_t *loop;
    uv_async_t prep_async;    /* wakes the loop: the preparation queue has jobs */
    b2d_cache *cache;
    b2d_engine *eng;
    b2ipc_limits lim;
    b2d_prep_env env;
    double t_start;
    atomic_ullong served;     /* terminal replies of jobs */
    b2d_budget budget;        /* --max-memory */
    pthread_mutex_t mu;       /* guards everything below */
    b2d_model *cur;           /* the model new requests use */
    b2d_job *prep_head, *prep_tail; /* admitted, not yet on the pool (a reference each) */
    b2d_job **pool;           /* (slots) the jobs on the pool */
    int npool, slots;
    int in_prep;              /* admitted, not yet handed to the engine */
    int shutting_down;
    int prep_delay_ms;        /* BLIP2D_TEST_PREP_DELAY_MS: tests only */
    b2d_client *clients;      /* the open clients */
    int nclients;
    /* Jobs of each user from admission until freed, whether their client
     * is open or has gone (--max-inflight-per-uid counts these: a client
     * that reconnects cannot leave canceled jobs filling the queue).  The
     * entries are changed under mu, except that a job decrements its
     * user's count when freed (job.c); one at 0 is held by no job. */
    struct user_jobs { uint64_t user; atomic_int n; } **users;
    int nusers, capusers;
};

typedef struct prep_work {
    uv_work_t w;
    b2d_job *job;             /* the preparation's reference */
    b2d_core *core;
} prep_work;

/* ---- clients ---- */

b2d_client *b2d_client_new(b2d_core *core, uint64_t user, const b2d_sink *sink, void *ctx)
{
    b2d_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 1);
    atomic_init(&c->held, 0);
    atomic_init(&c->unsent, 0);
    c->out_cap = core->cfg->max_output;
    pthread_mutex_init(&c->mu, NULL);
    c->core = core;
    c->user = user;
    c->sink = *sink;
    c->ctx = ctx;
    c->served = &core->served;
    c->budget = &core->budget;
    pthread_mutex_lock(&core->mu);
    c->next = core->clients;
    if (c->next) c->next->prev = c;
    core->clients = c;
    core->nclients++;
    pthread_mutex_unlock(&core->mu);
    return c;
}

/* Marks every job in flight on c canceled for why; under c->mu. */
static int cancel_listed(b2d_client *c, int why)
{
    for (int i = 0; i < c->ninf; i++) b2d_job_cancel(c->inf[i], why);
    return c->ninf;
}

int b2d_client_close(b2d_client *c)
{
    if (!c) return 0;
    b2d_core *core = c->core;
    pthread_mutex_lock(&core->mu);
    assert(!c->closed);
    if (c->prev) c->prev->next = c->next;
    else core->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    core->nclients--;
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    int n = cancel_listed(c, B2D_CANCEL_GONE);
    b2d_job **inf = c->inf;
    c->inf = NULL;
    c->ninf = c->capinf = 0;
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&core->mu);
    for (int i = 0; i < n; i++) b2d_job_unref(inf[i]); /* the list's references */
    free(inf);
    if (n) b2d_engine_poke(core->eng);
    b2d_client_unref(c);
    return n;
}

void b2d_client_hold(b2d_client *c, int held)
{
    if (atomic_exchange(&c->held, held != 0) != (held != 0) && !held) b2d_engine_poke(c->core->eng);
}

void b2d_client_sent(b2d_client *c, size_t bytes)
{
    /* exact, never clamped: the producer's count (job.c) may come after */
    const long long cap = (long long)c->out_cap, cur = atomic_fetch_sub(&c->unsent, (long long)bytes);
    b2d_budget_add(c->budget, B2D_MEM_OUTPUT, -(long long)bytes);
    if (cur > cap && cur - (long long)bytes <= cap) b2d_engine_poke(c->core->eng);
}

static b2d_job *find_listed(b2d_client *c, uint64_t id)
{
    for (int i = 0; i < c->ninf; i++)
        if (c->inf[i]->req_id == id) return c->inf[i];
    return NULL;
}

int b2d_in_flight(b2d_client *c, uint64_t id)
{
    pthread_mutex_lock(&c->mu);
    int found = find_listed(c, id) != NULL;
    pthread_mutex_unlock(&c->mu);
    return found;
}

int b2d_client_inflight(b2d_client *c)
{
    pthread_mutex_lock(&c->mu);
    int n = c->ninf;
    pthread_mutex_unlock(&c->mu);
    return n;
}

int b2d_core_memory(b2d_core *core, b2d_mem_cat cat, long long n)
{
    if (n) b2d_budget_add(&core->budget, cat, n);
    return atomic_load(&core->budget.used) > core->budget.max;
}

int b2d_core_memory_take(b2d_core *core, b2d_mem_cat cat, size_t n)
{
    return b2d_budget_take(&core->budget, cat, n);
}

long long b2d_core_memory_max(b2d_core *core)
{
    return core->budget.max;
}

int b2d_cancel(b2d_client *c, uint64_t target, const uint64_t *reply_id)
{
    pthread_mutex_lock(&c->mu);
    b2d_job *j = find_listed(c, target);
    int found = j && !j->cancel_pending;
    if (found) {
        j->cancel_pending = reply_id != NULL;
        j->cancel_id = reply_id ? *reply_id : 0;
        b2d_job_cancel(j, B2D_CANCEL_CLIENT);
    }
    pthread_mutex_unlock(&c->mu);
    if (found) b2d_engine_poke(c->core->eng);
    return found;
}

/* ---- admission ---- */

static const b2d_job_ops *ops_of(b2ipc_op op)
{
    return op == B2IPC_OP_GENERATE ? &b2d_generate_ops : op == B2IPC_OP_FEATURES ? &b2d_features_ops : NULL;
}

/* Does rq carry an image (inline or by descriptor)? */
static int has_image(const b2ipc_request *rq)
{
    if (rq->op == B2IPC_OP_GENERATE) return rq->generate.image_len || rq->generate.image_fd;
    return rq->features.image_len || rq->features.image_fd;
}

/* Every reason to refuse rq from c before any work, in the order
 * docs/protocol.md section 10 step 8 gives.  Under core->mu. */
/* Bytes a request will hold at most (an estimate from the model's
 * shapes): its image bytes (a descriptor's are charged when read), the
 * pixel values, the image stages, and for a generate the KV cache of
 * every sequence, for a features request the logits. */
static size_t job_cost(const b2d_core *core, const b2ipc_request *rq)
{
    const blip2_model *m = core->cur->m;
    const size_t T = (size_t)blip2_vision_tokens(m), Dv = (size_t)blip2_vision_hidden(m),
                 Q = (size_t)blip2_num_query_tokens(m), Dq = (size_t)blip2_qformer_hidden(m),
                 V = (size_t)blip2_vocab_size(m);
    size_t cost = 4096 + 4 * blip2_pixel_values_len(m) + 4 * (T * Dv + Dv + Q * Dq + blip2_query_embeds_len(m));
    if (has_image(rq)) cost += B2D_DECODE_RESERVE; /* its decode, up to this much (prepare.c) */
    if (rq->op == B2IPC_OP_GENERATE) {
        const b2ipc_generate *g = &rq->generate;
        size_t rows = Q + (g->prompt ? strlen(g->prompt) : 0) + 1 + g->params.max_new_tokens;
        size_t width = g->params.num_beams > g->params.num_return_sequences ? g->params.num_beams
                       : g->params.num_return_sequences;
        cost += g->image_len + 2 * 4 * (size_t)blip2_text_layers(m) * (size_t)blip2_text_hidden(m) * rows * width;
    } else {
        const b2ipc_features *q = &rq->features;
        cost += q->image_len + (q->text ? 2 * 4 * V * (strlen(q->text) + 2) : 0);
    }
    return cost;
}

/* The job count of user (created at 0 if none; NULL when out of memory);
 * under core->mu.  Entries at 0 are dropped to make room. */
static struct user_jobs *user_entry(b2d_core *core, uint64_t user, int create)
{
    for (int i = 0; i < core->nusers; i++)
        if (core->users[i]->user == user) return core->users[i];
    if (!create) return NULL;
    if (core->nusers == core->capusers) {
        int k = 0;
        for (int i = 0; i < core->nusers; i++) {
            if (atomic_load(&core->users[i]->n) == 0) free(core->users[i]);
            else core->users[k++] = core->users[i];
        }
        core->nusers = k;
    }
    if (core->nusers == core->capusers) {
        int cap = core->capusers ? 2 * core->capusers : 8;
        struct user_jobs **nu = realloc(core->users, sizeof *nu * (size_t)cap);
        if (!nu) return NULL;
        core->users = nu;
        core->capusers = cap;
    }
    struct user_jobs *e = malloc(sizeof *e);
    if (!e) return NULL;
    e->user = user;
    atomic_init(&e->n, 0);
    core->users[core->nusers++] = e;
    return e;
}

/* Jobs of user in the pipeline (admitted, not yet freed); under core->mu. */
static int user_jobs(b2d_core *core, uint64_t user)
{
    struct user_jobs *e = user_entry(core, user, 0);
    return e ? atomic_load(&e->n) : 0;
}

static int admit(b2d_client *c, const b2ipc_request *rq, int fd, size_t cost, b2d_refusal *why)
{
    b2d_core *core = c->core;
    const b2ipc_gen_params *gp = &rq->generate.params;
    int image_fd = rq->op == B2IPC_OP_GENERATE ? rq->generate.image_fd : rq->features.image_fd;
    int queued = 0, active = 0, ninf;
    b2d_engine_counts(core->eng, &queued, &active);
    pthread_mutex_lock(&c->mu);
    int dup = find_listed(c, rq->id) != NULL;
    ninf = c->ninf;
    pthread_mutex_unlock(&c->mu);
    *why = (b2d_refusal){0, NULL, NULL};
    if (!ops_of(rq->op))
        *why = (b2d_refusal){B2IPC_EUNKNOWN_OP, "op", "this op is not queued"};
    else if (dup)
        *why = (b2d_refusal){B2IPC_EDUP_ID, NULL, "this id is already in flight on this connection"};
    else if (core->shutting_down)
        *why = (b2d_refusal){B2IPC_ESHUTDOWN, NULL, "blip2d is shutting down"};
    else if (ninf >= core->cfg->max_inflight)
        *why = (b2d_refusal){B2IPC_EBUSY, NULL, "too many requests in flight on this connection"};
    else if (core->in_prep + queued >= core->cfg->max_queue)
        *why = (b2d_refusal){B2IPC_EBUSY, NULL, "the queue is full; retry later"};
    else if (user_jobs(core, c->user) >= core->cfg->max_inflight_per_uid)
        *why = (b2d_refusal){B2IPC_EBUSY, NULL, "too many requests in flight for this user (--max-inflight-per-uid); retry later"};
    else if (cost > (size_t)core->budget.max)
        *why = (b2d_refusal){B2IPC_ETOO_LARGE, NULL, "this request alone needs more memory than blip2d's budget (--max-memory)"};
    else if (b2d_budget_take(&core->budget, B2D_MEM_JOBS, cost) < 0)
        *why = (b2d_refusal){B2IPC_EBUSY, NULL, "blip2d's memory budget (--max-memory) is taken by other requests; retry later"};
    else if (rq->op == B2IPC_OP_GENERATE && gp->do_sample && gp->num_beams > 1)
        *why = (b2d_refusal){B2IPC_EUNSUPPORTED, NULL, "beam sampling (do_sample with num_beams > 1) is not supported"};
    else if (image_fd && fd < 0)
        *why = (b2d_refusal){B2IPC_EBAD_FD, "image_fd", "image_fd: no descriptor was received with this request"};
    return why->code;
}

static char *dupn(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* The protocol's generation parameters as the model library's. */
static void gen_params(const b2ipc_gen_params *g, blip2_gen_params *p)
{
    blip2_gen_params_default(p);
    p->max_new_tokens = (int)g->max_new_tokens;
    p->min_new_tokens = (int)g->min_new_tokens;
    p->num_beams = (int)g->num_beams;
    p->length_penalty = (float)g->length_penalty;
    p->repetition_penalty = (float)g->repetition_penalty;
    p->do_sample = g->do_sample;
    p->temperature = (float)g->temperature;
    p->top_k = g->top_k > (1u << 30) ? 1 << 30 : (int)g->top_k;
    p->top_p = (float)g->top_p;
    p->num_return_sequences = (int)g->num_return_sequences;
    if (g->has_seed) p->seed = g->seed;
    else if (getrandom(&p->seed, sizeof p->seed, 0) != sizeof p->seed) p->seed = (uint64_t)(b2d_now_ms() * 1e3);
}

/* The job of an admitted request (the image copied, fd taken), or NULL
 * when out of memory (fd then still the caller's). */
static b2d_job *job_from_request(b2d_client *c, const b2ipc_request *rq, int fd, b2d_model *model)
{
    b2d_core *core = c->core;
    b2d_job *j = b2d_job_new(ops_of(rq->op), c, rq->id);
    if (!j) return NULL;
    j->model = b2d_model_ref(model);
    j->t_recv = b2d_now_ms();
    const uint8_t *img = NULL;
    size_t img_len = 0;
    int nomem = 0;
    if (rq->op == B2IPC_OP_GENERATE) {
        const b2ipc_generate *g = &rq->generate;
        img = g->image;
        img_len = g->image_len;
        j->stream = g->stream;
        gen_params(&g->params, &j->params);
        if (g->prompt && !(j->prompt = dupn(g->prompt))) nomem = 1;
        if (g->params.n_stop && !(j->stop = calloc(g->params.n_stop, sizeof *j->stop))) nomem = 1;
        for (uint32_t i = 0; !nomem && i < g->params.n_stop; i++)
            if ((j->stop[i] = dupn(g->params.stop[i]))) j->n_stop++;
            else nomem = 1;
        j->params.stop = (const char *const *)j->stop;
        j->params.n_stop = j->n_stop;
    } else {
        const b2ipc_features *q = &rq->features;
        img = q->image;
        img_len = q->image_len;
        j->max_reply = core->cfg->max_frame;
        for (uint32_t i = 0; i < q->n_outputs; i++)
            j->outputs |= 1u << b2ipc_feature_output_index(q->outputs[i], strlen(q->outputs[i]));
        if (!q->n_outputs) /* the default: every image output, and logits for a text */
            j->outputs = (q->image || q->image_fd ? (1u << B2IPC_FEAT_LOGITS) - 1 : 0) |
                         (q->text ? 1u << B2IPC_FEAT_LOGITS : 0);
        if (q->text && !(j->prompt = dupn(q->text))) nomem = 1;
    }
    if (img && img_len) {
        if ((j->image = malloc(img_len))) {
            memcpy(j->image, img, img_len);
            j->image_len = img_len;
        } else {
            nomem = 1;
        }
    }
    if (nomem) {
        b2d_job_unref(j);
        return NULL;
    }
    j->image_fd = fd;
    return j;
}

/* Adds j to c's in-flight list (a reference); under core->mu. */
static int list_job(b2d_client *c, b2d_job *j)
{
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    if (c->ninf == c->capinf) {
        int cap = c->capinf ? 2 * c->capinf : 8;
        b2d_job **ni = realloc(c->inf, sizeof *ni * (size_t)cap);
        if (ni) {
            c->inf = ni;
            c->capinf = cap;
        } else {
            rc = -1;
        }
    }
    if (rc == 0) c->inf[c->ninf++] = b2d_job_ref(j);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int b2d_submit(b2d_client *c, const b2ipc_request *rq, int fd, b2d_refusal *why)
{
    b2d_core *core = c->core;
    assert(!c->closed);
    pthread_mutex_lock(&core->mu);
    b2d_job *j = NULL;
    const size_t cost = ops_of(rq->op) ? job_cost(core, rq) : 0;
    if (admit(c, rq, fd, cost, why) == 0) {
        j = job_from_request(c, rq, fd, core->cur);
        if (j) { /* the descriptor and the memory charged are the job's now */
            fd = -1;
            j->budget = &core->budget;
            j->charged = cost;
            j->decode_reserve = has_image(rq) ? B2D_DECODE_RESERVE : 0;
            struct user_jobs *e = user_entry(core, j->user, 1);
            if (e) { /* uncounted if out of memory: nothing worse */
                atomic_fetch_add(&e->n, 1);
                j->user_jobs = &e->n;
            }
        } else {
            b2d_budget_add(&core->budget, B2D_MEM_JOBS, -(long long)cost);
        }
        if (j && b2d_engine_submit(core->eng, b2d_job_ref(j)) < 0) {
            b2d_job_unref(j); /* the engine's */
            b2d_job_unref(j);
            j = NULL;
        }
        if (j && list_job(c, j) < 0) { /* the engine drops it as ended */
            atomic_store(&j->ended, 1);
            b2d_engine_prepared(core->eng, j);
            b2d_job_unref(j);
            j = NULL;
        }
        if (!j) *why = (b2d_refusal){B2IPC_ENOMEM, NULL, "out of memory"};
    }
    if (j) { /* the creator's reference goes to the preparation queue */
        core->in_prep++;
        j->prep_next = NULL;
        if (core->prep_tail) core->prep_tail->prep_next = j;
        else core->prep_head = j;
        core->prep_tail = j;
    }
    pthread_mutex_unlock(&core->mu);
    if (!j) {
        if (fd >= 0) close(fd);
        return why->code;
    }
    uv_async_send(&core->prep_async);
    return 0;
}

/* ---- preparation ---- */

static void dispatch(b2d_core *core);

static void prep_cb(uv_work_t *w)
{
    prep_work *p = w->data;
    b2d_job *j = p->job;
    j->t_prep0 = b2d_now_ms();
    if (p->core->prep_delay_ms > 0) /* a preparation that outlasts the shutdown (tests) */
        nanosleep(&(struct timespec){p->core->prep_delay_ms / 1000, (long)(p->core->prep_delay_ms % 1000) * 1000000L},
                  NULL);
    int why = atomic_load(&j->canceled);
    if (!why || (!j->ops->cancel_stops && why < B2D_CANCEL_GONE)) j->ops->prepare(j, &p->core->env);
    j->t_prep1 = b2d_now_ms();
}

/* Under core->mu: j leaves the pool. */
static void off_pool(b2d_core *core, b2d_job *j)
{
    for (int i = 0; i < core->npool; i++)
        if (core->pool[i] == j) {
            core->pool[i] = core->pool[--core->npool];
            return;
        }
    assert(!"a job left the pool twice");
}

/* The end of j's preparation (loop thread): a failure or a cancel
 * answers it here; then the scheduler may start it (or drops it).  After
 * b2d_core_stop (a stop past the shutdown deadline does not wait for the
 * pool) the engine has let it go: it ends here as canceled. */
static void prepared(b2d_core *core, b2d_job *j, int status)
{
    pthread_mutex_lock(&core->mu);
    assert(core->in_prep > 0);
    core->in_prep--;
    pthread_mutex_unlock(&core->mu);
    int why = atomic_load(&j->canceled);
    if (status == 0 && why && (j->ops->cancel_stops || why >= B2D_CANCEL_GONE))
        j->ops->abandon(j); /* canceled: whatever preparation did (a decode
                              * it stopped included) ends as canceled */
    else if (status < 0 || j->err)
        b2d_job_error(j, status < 0 ? B2IPC_EINTERNAL : j->err, NULL, status < 0 ? "cannot prepare the request" : j->errmsg);
    if (core->eng) b2d_engine_prepared(core->eng, j);
    else if (!atomic_load(&j->ended)) j->ops->abandon(j);
    b2d_job_unref(j); /* the preparation's reference */
}

static void after_prep_cb(uv_work_t *w, int status)
{
    prep_work *p = w->data;
    b2d_core *core = p->core;
    pthread_mutex_lock(&core->mu);
    off_pool(core, p->job);
    pthread_mutex_unlock(&core->mu);
    prepared(core, p->job, status);
    free(p);
    dispatch(core);
}

/* Under core->mu: the queued job to prepare next: of the user with the
 * fewest jobs on the pool, the earliest (so each user's come in arrival
 * order); unlinked. */
static b2d_job *next_to_prepare(b2d_core *core)
{
    b2d_job *best = NULL, *best_prev = NULL;
    int best_n = 0;
    for (b2d_job *j = core->prep_head, *prev = NULL; j; prev = j, j = j->prep_next) {
        int n = 0;
        for (int i = 0; i < core->npool; i++) n += core->pool[i]->user == j->user;
        if (!best || n < best_n) {
            best = j;
            best_prev = prev;
            best_n = n;
            if (n == 0) break;
        }
    }
    if (!best) return NULL;
    if (best_prev) best_prev->prep_next = best->prep_next;
    else core->prep_head = best->prep_next;
    if (core->prep_tail == best) core->prep_tail = best_prev;
    best->prep_next = NULL;
    return best;
}

/* Loop thread: queued jobs go to the pool while it has a free thread. */
static void dispatch(b2d_core *core)
{
    for (;;) {
        pthread_mutex_lock(&core->mu);
        b2d_job *j = core->npool < core->slots ? next_to_prepare(core) : NULL;
        if (j) core->pool[core->npool++] = j;
        pthread_mutex_unlock(&core->mu);
        if (!j) return;
        prep_work *p = calloc(1, sizeof *p);
        if (p) {
            p->job = j;
            p->core = core;
            p->w.data = p;
        }
        if (!p || uv_queue_work(core->loop, &p->w, prep_cb, after_prep_cb) < 0) {
            free(p);
            pthread_mutex_lock(&core->mu);
            off_pool(core, j);
            pthread_mutex_unlock(&core->mu);
            prepared(core, j, -1);
        }
    }
}

static void prep_async_cb(uv_async_t *h)
{
    dispatch(h->data);
}

/* ---- the core ---- */

int b2d_core_new(b2d_core **out, const b2d_config *cfg, blip2_model *m, uv_loop_t *loop)
{
    b2d_core *core = calloc(1, sizeof *core);
    b2d_model *bm = calloc(1, sizeof *bm);
    if (!core || !bm) goto fail;
    bm->m = m;
    atomic_init(&bm->refs, 1);
    core->cur = bm;
    core->cfg = cfg;
    core->loop = loop;
    core->t_start = b2d_now_ms();
    atomic_init(&core->served, 0);
    core->lim.max_image_bytes = cfg->max_frame < B2IPC_DEFAULT_MAX_IMAGE_BYTES ? cfg->max_frame : B2IPC_DEFAULT_MAX_IMAGE_BYTES;
    core->lim.max_prompt_bytes = B2IPC_DEFAULT_MAX_PROMPT_BYTES;
    /* as many preparations at once as libuv's pool has threads */
    const char *ps = getenv("UV_THREADPOOL_SIZE");
    core->slots = ps && atoi(ps) > 0 ? atoi(ps) : 4;
    if (core->slots > 1024) core->slots = 1024;
    const char *pd = getenv("BLIP2D_TEST_PREP_DELAY_MS");
    core->prep_delay_ms = pd && atoi(pd) > 0 ? atoi(pd) : 0;
    if (!(core->pool = calloc((size_t)core->slots, sizeof *core->pool))) goto fail;
    pthread_mutex_init(&core->mu, NULL);
    if (!(core->cache = b2d_cache_new(cfg->cache_bytes))) goto fail_mu;
    atomic_init(&core->budget.used, 0);
    for (int i = 0; i < B2D_MEM_NCAT; i++) atomic_init(&core->budget.by[i], 0);
    core->budget.max = (long long)cfg->max_memory;
    core->env = (b2d_prep_env){core->cache, core->lim.max_image_bytes, &core->budget};
    if (b2d_engine_start(&core->eng, cfg, core->cache) < 0) goto fail_cache;
    uv_async_init(loop, &core->prep_async, prep_async_cb);
    core->prep_async.data = core;
    *out = core;
    return 0;
fail_cache:
    b2d_cache_free(core->cache);
fail_mu:
    pthread_mutex_destroy(&core->mu);
fail:
    if (core) free(core->pool);
    free(bm);
    free(core);
    blip2_model_free(m);
    return -1;
}

void b2d_core_set_model(b2d_core *core, blip2_model *m)
{
    b2d_model *nm = calloc(1, sizeof *nm);
    if (!nm) {
        blip2_model_free(m);
        LOG_ERR("reload: out of memory, still serving the previous model");
        return;
    }
    nm->m = m;
    atomic_init(&nm->refs, 1);
    pthread_mutex_lock(&core->mu);
    b2d_model *old = core->cur;
    nm->gen = old->gen + 1;
    core->cur = nm; /* running jobs keep their references to the old one */
    pthread_mutex_unlock(&core->mu);
    b2d_model_unref(old);
}

void b2d_core_shutdown(b2d_core *core)
{
    pthread_mutex_lock(&core->mu);
    core->shutting_down = 1;
    pthread_mutex_unlock(&core->mu);
}

void b2d_core_cancel_all(b2d_core *core)
{
    pthread_mutex_lock(&core->mu);
    for (b2d_client *c = core->clients; c; c = c->next) {
        pthread_mutex_lock(&c->mu);
        cancel_listed(c, B2D_CANCEL_SHUTDOWN);
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&core->mu);
    b2d_engine_cancel_all(core->eng);
}

void b2d_core_end_preparing(b2d_core *core)
{
    static const char msg[] = "blip2d is shutting down";
    pthread_mutex_lock(&core->mu); /* then each client's mu, in the emit */
    for (int i = 0; i < core->npool; i++) b2d_job_error(core->pool[i], B2IPC_ESHUTDOWN, NULL, msg);
    for (b2d_job *j = core->prep_head; j; j = j->prep_next) b2d_job_error(j, B2IPC_ESHUTDOWN, NULL, msg);
    pthread_mutex_unlock(&core->mu);
}

void b2d_core_counts_get(b2d_core *core, b2d_core_counts *n)
{
    int queued = 0, active = 0, inflight = 0;
    if (core->eng) b2d_engine_counts(core->eng, &queued, &active);
    pthread_mutex_lock(&core->mu);
    for (b2d_client *c = core->clients; c; c = c->next) {
        pthread_mutex_lock(&c->mu);
        inflight += c->ninf;
        pthread_mutex_unlock(&c->mu);
    }
    *n = (b2d_core_counts){core->in_prep, queued, active, inflight, core->nclients};
    pthread_mutex_unlock(&core->mu);
}

const b2ipc_limits *b2d_core_limits(b2d_core *core)
{
    return &core->lim;
}

void b2d_core_status(b2d_core *core, b2ipc_status *st, b2d_status_text *txt)
{
    pthread_mutex_lock(&core->mu);
    b2d_model *bm = b2d_model_ref(core->cur);
    pthread_mutex_unlock(&core->mu);
    const blip2_model *m = bm->m;
    const b2d_config *cfg = core->cfg;
    st->version = PACKAGE_VERSION;
    st->protocol = B2IPC_PROTOCOL_VERSION;
    st->uptime_ms = (uint64_t)(b2d_now_ms() - core->t_start);
    st->model.path = cfg->model_path;
    const char *slash = strrchr(cfg->model_path, '/');
    snprintf(txt->name, sizeof txt->name, "%s", slash && slash[1] ? slash + 1 : cfg->model_path);
    snprintf(txt->family, sizeof txt->family, "%s", blip2_model_family(m));
    snprintf(txt->dtype, sizeof txt->dtype, "%s", blip2_model_dtype(m));
    st->model.name = txt->name;
    st->model.family = txt->family;
    st->model.dtype = txt->dtype;
    snprintf(txt->precision, sizeof txt->precision, "%s", blip2_model_precision(m));
    snprintf(txt->backend, sizeof txt->backend, "%s", blip2_model_backend(m));
    snprintf(txt->kernels, sizeof txt->kernels, "%s", blip2_model_kernels(m));
    st->model.precision = txt->precision;
    st->model.backend = txt->backend;
    st->model.kernels = txt->kernels;
    snprintf(txt->weights, sizeof txt->weights, "%s", blip2_model_weights(m));
    st->model.weights = *txt->weights ? txt->weights : NULL; /* no GGUF file mapped: none */
    st->config.image_size = (uint32_t)blip2_image_size(m);
    st->config.vision_layers = (uint32_t)blip2_vision_layers(m);
    st->config.vision_hidden = (uint32_t)blip2_vision_hidden(m);
    st->config.qformer_layers = (uint32_t)blip2_qformer_layers(m);
    st->config.num_query_tokens = (uint32_t)blip2_num_query_tokens(m);
    st->config.text_layers = (uint32_t)blip2_text_layers(m);
    st->config.text_hidden = (uint32_t)blip2_text_hidden(m);
    st->config.vocab_size = (uint32_t)blip2_vocab_size(m);
    st->config.max_positions = (uint32_t)blip2_max_positions(m);
    st->config.qformer_hidden = (uint32_t)blip2_qformer_hidden(m);
    /* vision tokens T = 1 + (image_size / patch)^2 */
    int g = 1, cells = blip2_vision_tokens(m) - 1;
    while ((g + 1) * (g + 1) <= cells) g++;
    st->config.patch_size = (uint32_t)(blip2_image_size(m) / g);
    b2d_model_unref(bm);
    b2d_core_counts n;
    b2d_core_counts_get(core, &n);
    st->queue_depth = (uint32_t)(n.queued + n.in_prep);
    st->active = (uint32_t)n.active;
    st->max_queue = (uint32_t)cfg->max_queue;
    st->max_batch = (uint32_t)cfg->max_batch;
    st->connections = (uint32_t)n.clients;
    st->threads = (uint32_t)cfg->threads;
    st->requests_total = atomic_load(&core->served);
    b2d_cache_stats cs;
    b2d_cache_stats_get(core->cache, &cs);
    st->cache.hits = cs.hits;
    st->cache.misses = cs.misses;
    st->cache.entries = cs.entries;
    st->cache.bytes = cs.bytes;
    st->cache.capacity_bytes = cs.capacity;
    b2d_engine_stats es;
    b2d_engine_stats_get(core->eng, &es);
    st->engine.decode_steps = es.decode_steps;
    st->engine.decode_tokens = es.decode_tokens;
    st->engine.decode_ms = es.decode_ms;
    st->engine.prefill_steps = es.prefill_steps;
    st->engine.prefill_ms = es.prefill_ms;
    st->memory.max = (uint64_t)core->budget.max;
    long long used = atomic_load(&core->budget.used);
    st->memory.used = used > 0 ? (uint64_t)used : 0;
    uint64_t *by[B2D_MEM_NCAT] = {&st->memory.jobs, &st->memory.decode, &st->memory.input,
                                  &st->memory.output, &st->memory.http};
    for (int i = 0; i < B2D_MEM_NCAT; i++) {
        long long v = atomic_load(&core->budget.by[i]);
        *by[i] = v > 0 ? (uint64_t)v : 0;
    }
}

void b2d_core_stop(b2d_core *core)
{
    b2d_engine_stop(core->eng);
    core->eng = NULL;
    /* Past the shutdown deadline the loop stops without waiting for
     * preparation: the jobs still waiting for the pool end here, those on
     * it in prepared() when it returns them. */
    for (;;) {
        pthread_mutex_lock(&core->mu);
        b2d_job *j = core->prep_head;
        if (j) {
            core->prep_head = j->prep_next;
            if (!core->prep_head) core->prep_tail = NULL;
            core->in_prep--;
        }
        pthread_mutex_unlock(&core->mu);
        if (!j) break;
        j->ops->abandon(j);
        b2d_job_unref(j); /* the preparation queue's */
    }
    uv_close((uv_handle_t *)&core->prep_async, NULL);
}

void b2d_core_free(b2d_core *core)
{
    if (!core) return;
    assert(core->clients == NULL && core->eng == NULL);
    b2d_model_unref(core->cur);
    b2d_cache_free(core->cache);
    for (int i = 0; i < core->nusers; i++) free(core->users[i]);
    free(core->users);
    pthread_mutex_destroy(&core->mu);
    free(core->pool);
    free(core);
}
