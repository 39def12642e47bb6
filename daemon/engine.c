/*
 * engine.c - preparation of requests and the engine thread.
 *
 *   loop thread --uv_queue_work--> b2d_prepare (pool): read the image (from
 *     the frame or the client's descriptor), SHA-256 key, feature cache,
 *     decode + PIL-exact resize, tokenise
 *   --b2d_engine_submit--> per-uid FIFO queues
 *   engine thread: admit round-robin over uids while the batch has room
 *     -> vision encoder + Q-Former for new jobs (unless cached)
 *     -> blip2_step over every active session: one decoder call per layer
 *        for all of them; the token callback streams text pieces
 *     -> finished or canceled jobs produce their done frame
 *   Frames go back through `deliver` (the server's locked list + uv_async).
 *
 * Cancellation is a flag on the job, read by the engine before admission,
 * before each step and inside the token callback, so a canceled request
 * stops within one decode step.
 */
#include "daemon.h"
#include "log.h"

#include <errno.h>
#include <glib.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double b2d_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

b2d_model *b2d_model_ref(b2d_model *bm)
{
    atomic_fetch_add(&bm->refs, 1);
    return bm;
}

void b2d_model_unref(b2d_model *bm)
{
    if (!bm || atomic_fetch_sub(&bm->refs, 1) != 1) return;
    blip2_ctx_free(bm->ctx);
    blip2_model_free(bm->m);
    free(bm);
}

void b2d_job_unref(b2d_job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1) return;
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
    free(j);
}

/* ---- frames ---- */

static b2d_event *event_from(uint64_t conn_id, uint64_t req_id, int terminal, const msgpack_sbuffer *sb)
{
    b2d_event *ev = malloc(sizeof *ev + sb->size);
    if (!ev) return NULL;
    *ev = (b2d_event){.conn_id = conn_id, .req_id = req_id, .terminal = terminal, .len = sb->size};
    memcpy(ev->data, sb->data, sb->size);
    return ev;
}

b2d_event *b2d_event_error(uint64_t conn_id, uint64_t req_id, int has_id, int code,
                           const char *field, const char *msg)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2d_event *ev = NULL;
    if (b2ipc_encode_error(&sb, has_id, req_id, code, field, msg) == 0)
        ev = event_from(conn_id, req_id, 1, &sb);
    msgpack_sbuffer_destroy(&sb);
    return ev;
}

b2d_event *b2d_event_reply(uint64_t conn_id, const b2ipc_reply *rp, int terminal)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error err;
    b2d_event *ev = NULL;
    if (b2ipc_encode_reply(&sb, rp, &err) == 0) {
        ev = event_from(conn_id, rp->id, terminal, &sb);
    } else {
        LOG_ERR("cannot encode a %s reply: %s", b2ipc_reply_type_name(rp->type), err.message);
        if (terminal) ev = b2d_event_error(conn_id, rp->id, 1, B2IPC_EINTERNAL, NULL, err.message);
    }
    msgpack_sbuffer_destroy(&sb);
    return ev;
}

b2d_event *b2d_event_done(b2d_job *j, double now)
{
    blip2_result res = {0};
    blip2_error err = {0};
    b2ipc_seq seqs[B2IPC_MAX_SEQS];
    uint32_t *idbuf[B2IPC_MAX_SEQS] = {0};
    int n = j->nret > 0 ? j->nret : 1;
    if (n > (int)B2IPC_MAX_SEQS) n = B2IPC_MAX_SEQS;
    int have = j->sess && blip2_session_done(j->sess) && blip2_session_result(j->sess, &res, &err) == 0;
    size_t new_tokens = 0;
    for (int i = 0; i < n; i++) {
        seqs[i] = (b2ipc_seq){.text = "", .text_len = 0, .ids = NULL, .n_ids = 0, .finish = B2IPC_FINISH_CANCELED};
        if (!have || i >= res.n) continue;
        const blip2_seq_result *s = &res.seqs[i];
        seqs[i].text = s->text;
        seqs[i].text_len = strlen(s->text);
        idbuf[i] = malloc(sizeof(uint32_t) * (s->n_ids ? s->n_ids : 1));
        if (idbuf[i]) {
            for (size_t k = 0; k < s->n_ids; k++) idbuf[i][k] = (uint32_t)s->ids[k];
            seqs[i].ids = idbuf[i];
            seqs[i].n_ids = s->n_ids;
        }
        seqs[i].finish = s->finish == BLIP2_FINISH_EOS ? B2IPC_FINISH_EOS
                         : s->finish == BLIP2_FINISH_STOP ? B2IPC_FINISH_STOP
                         : s->finish == BLIP2_FINISH_CANCELED ? B2IPC_FINISH_CANCELED
                         : B2IPC_FINISH_LENGTH;
        new_tokens += s->n_ids ? s->n_ids - 1 : 0;
    }
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_DONE);
    rp.id = j->req_id;
    rp.done.seqs = seqs;
    rp.done.n_seqs = (uint32_t)n;
    rp.done.has_seed = j->params.do_sample;
    rp.done.seed = j->params.seed;
    rp.done.prompt_tokens = (uint32_t)(j->n_prompt_ids ? j->n_prompt_ids : 1);
    rp.done.cached = j->cached;
    double t0 = j->t_recv;
    rp.done.timings.queue_ms = (j->t_prep0 > t0 ? j->t_prep0 - t0 : 0) +
                               (j->t_admit > j->t_prep1 && j->t_prep1 > 0 ? j->t_admit - j->t_prep1 : 0);
    rp.done.timings.preprocess_ms = j->t_prep1 > j->t_prep0 ? j->t_prep1 - j->t_prep0 : 0;
    rp.done.timings.vision_ms = j->vision_ms;
    rp.done.timings.prefill_ms = j->prefill_ms;
    rp.done.timings.decode_ms = j->decode_ms;
    rp.done.timings.total_ms = now > t0 ? now - t0 : 0;
    rp.done.timings.tokens_per_s = j->decode_ms > 0 ? new_tokens / (j->decode_ms / 1e3) : 0;
    b2d_event *ev = b2d_event_reply(j->conn_id, &rp, 1);
    for (int i = 0; i < n; i++) free(idbuf[i]);
    blip2_result_free(&res);
    return ev;
}

/* ---- preparation (pool thread) ---- */

static int fail(b2d_job *j, int code, const char *msg)
{
    j->err = code;
    snprintf(j->errmsg, sizeof j->errmsg, "%s", msg);
    return code;
}

int b2d_read_image_fd(b2d_job *j, size_t max_image)
{
    struct stat st;
    if (fstat(j->image_fd, &st) < 0 || !S_ISREG(st.st_mode))
        return fail(j, B2IPC_EBAD_FD, "image_fd: the descriptor is not a regular file");
    if ((uint64_t)st.st_size > max_image) {
        char m[128];
        snprintf(m, sizeof m, "image_fd: the file has %lld bytes, more than the limit %zu",
                 (long long)st.st_size, max_image);
        return fail(j, B2IPC_ETOO_LARGE, m);
    }
    if (st.st_size == 0) return fail(j, B2IPC_EBAD_IMAGE, "image_fd: the file is empty");
    j->image = malloc((size_t)st.st_size);
    if (!j->image) return fail(j, B2IPC_ENOMEM, "out of memory for the image");
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = pread(j->image_fd, j->image + got, (size_t)st.st_size - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fail(j, B2IPC_EBAD_FD, "image_fd: the descriptor cannot be read");
        if (r == 0) break; /* the file shrank: use what is there */
        got += (size_t)r;
    }
    j->image_len = got;
    close(j->image_fd);
    j->image_fd = -1;
    if (got == 0) return fail(j, B2IPC_EBAD_IMAGE, "image_fd: the file is empty");
    return 0;
}

void b2d_image_key(const b2d_job *j, uint8_t key[32])
{
    GChecksum *ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(ck, j->image, (gssize)j->image_len);
    char settings[64]; /* what else decides the features: preprocessing and model */
    int sl = snprintf(settings, sizeof settings, "blip2d v1 exif-rotate model-gen %u", j->model->gen);
    g_checksum_update(ck, (const guchar *)settings, sl);
    gsize klen = 32;
    g_checksum_get_digest(ck, key, &klen);
    g_checksum_free(ck);
}

void b2d_prepare(b2d_job *j, b2d_cache *cache, size_t max_image)
{
    const blip2_model *m = j->model->m;
    j->t_prep0 = b2d_now_ms();
    if (atomic_load(&j->canceled)) goto out;
    if (j->image_fd >= 0 && b2d_read_image_fd(j, max_image) < 0) goto out;
    b2d_image_key(j, j->key);
    const size_t nq = blip2_query_embeds_len(m);
    if (!(j->query = malloc(sizeof(float) * nq))) { fail(j, B2IPC_ENOMEM, "out of memory"); goto out; }
    j->cached = b2d_cache_get(cache, j->key, j->query, nq);
    blip2_error err = {0};
    if (!j->cached) {
        if (!(j->px = malloc(sizeof(float) * blip2_pixel_values_len(m)))) { fail(j, B2IPC_ENOMEM, "out of memory"); goto out; }
        int rc = blip2_preprocess(m, j->image, j->image_len, NULL, j->px, &err);
        if (rc < 0) {
            fail(j, rc == BLIP2_ETOOBIG ? B2IPC_ETOO_LARGE : rc == BLIP2_ENOMEM ? B2IPC_ENOMEM : B2IPC_EBAD_IMAGE, err.text);
            goto out;
        }
    }
    free(j->image);
    j->image = NULL;
    if (j->prompt && j->prompt[0]) {
        if (blip2_tokenize(m, j->prompt, 1, &j->prompt_ids, &j->n_prompt_ids, &err) < 0) {
            fail(j, B2IPC_EUTF8, err.text);
            goto out;
        }
    }
    size_t ctx = (size_t)blip2_num_query_tokens(m) + (j->n_prompt_ids ? j->n_prompt_ids : 1) + j->params.max_new_tokens;
    if (ctx > (size_t)blip2_max_positions(m)) {
        char msg[200];
        snprintf(msg, sizeof msg, "the prompt (%zu tokens) plus max_new_tokens (%d) exceed the model's %d positions",
                 j->n_prompt_ids, j->params.max_new_tokens, blip2_max_positions(m) - blip2_num_query_tokens(m));
        fail(j, B2IPC_ETOO_LARGE, msg);
    }
out:
    j->t_prep1 = b2d_now_ms();
}

/* ---- the engine thread ---- */

typedef struct uq {
    uid_t uid;
    b2d_job *head, *tail;
} uq;

struct b2d_engine {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const b2d_config *cfg;
    b2d_cache *cache;
    void (*deliver)(void *, b2d_event *);
    void *user;
    uq *q;
    int nq, capq, rr;
    int queued, active, stop, cancel_all;
    b2d_engine_stats stats;   /* under mu */
    b2d_job **act;            /* engine thread: the active jobs (max_batch + 64) */
    blip2_session **ss;       /* engine thread: their sessions for one step */
};

static void emit(b2d_engine *e, b2d_event *ev)
{
    if (ev) e->deliver(e->user, ev);
    else LOG_ERR("out of memory: a reply was lost");
}

void b2d_engine_submit(b2d_engine *e, b2d_job *j)
{
    pthread_mutex_lock(&e->mu);
    int i;
    for (i = 0; i < e->nq; i++) if (e->q[i].uid == j->uid) break;
    if (i == e->nq) {
        if (e->nq == e->capq) {
            int nc = e->capq ? 2 * e->capq : 8;
            uq *nqv = realloc(e->q, sizeof *nqv * (size_t)nc);
            if (!nqv) { /* keep going with what we have: admit it to queue 0 */
                i = 0;
                goto add;
            }
            e->q = nqv;
            e->capq = nc;
        }
        e->q[e->nq++] = (uq){j->uid, NULL, NULL};
    }
add:
    j->next = NULL;
    if (e->nq == 0) { /* only on allocation failure with no queue at all */
        pthread_mutex_unlock(&e->mu);
        emit(e, b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_ENOMEM, NULL, "out of memory"));
        b2d_job_unref(j);
        return;
    }
    if (e->q[i].tail) e->q[i].tail->next = j; else e->q[i].head = j;
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

static int job_width(const b2d_job *j)
{
    return j->params.num_beams > 1 ? j->params.num_beams : j->nret;
}

static void stream_token(b2d_engine *e, b2d_job *j, int seq)
{
    const char *piece = "";
    size_t len = 0;
    blip2_error err;
    (void)e;
    if (blip2_stream_piece(j->model->m, &j->streams[seq], j->ids[seq], j->n_ids[seq], 0,
                           (const char *const *)j->stop, j->n_stop, &piece, &len, &err) < 0)
        len = 0;
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_TOKEN);
    rp.id = j->req_id;
    rp.token.seq = (uint32_t)seq;
    rp.token.token = (uint32_t)j->ids[seq][j->n_ids[seq] - 1];
    rp.token.text = piece;
    rp.token.text_len = len > 4096 ? 4096 : len;
    emit(e, b2d_event_reply(j->conn_id, &rp, 0));
}

/* Token callback, inside blip2_step on the engine thread: records the id
 * and streams the text that became final.  Non-zero cancels the session. */
static int token_cb(void *user, int seq, int32_t tok)
{
    b2d_job *j = user;
    if (atomic_load(&j->canceled)) return 1;
    if (seq < 0 || seq >= j->nret) return 0; /* beam search: no token events */
    if (j->n_ids[seq] == j->cap_ids[seq]) {
        size_t nc = 2 * j->cap_ids[seq];
        int32_t *nv = realloc(j->ids[seq], sizeof *nv * nc);
        if (!nv) return 0; /* streaming degrades; the done reply stays exact */
        j->ids[seq] = nv;
        j->cap_ids[seq] = nc;
    }
    j->ids[seq][j->n_ids[seq]++] = tok;
    if (j->stream) stream_token(j->engine, j, seq);
    return 0;
}

static int start_job(b2d_engine *e, b2d_job *j)
{
    blip2_error err = {0};
    const blip2_model *m = j->model->m;
    j->t_admit = b2d_now_ms();
    if (!j->model->ctx) {
        if (blip2_ctx_new(m, &j->model->ctx, &err) < 0) {
            emit(e, b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_ENOMEM, NULL, err.text));
            return -1;
        }
        blip2_ctx_set_prefill_chunk(j->model->ctx, e->cfg->prefill_chunk);
    }
    if (!j->cached) {
        double t = b2d_now_ms();
        if (blip2_encode_image(m, j->px, 1, j->query, NULL, &err) < 0) {
            emit(e, b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_EINTERNAL, NULL, err.text));
            return -1;
        }
        j->vision_ms = b2d_now_ms() - t;
        b2d_cache_put(e->cache, j->key, j->query, blip2_query_embeds_len(m));
        free(j->px);
        j->px = NULL;
    }
    j->nret = j->params.num_return_sequences;
    j->streams = calloc((size_t)j->nret, sizeof *j->streams);
    j->ids = calloc((size_t)j->nret, sizeof *j->ids);
    j->n_ids = calloc((size_t)j->nret, sizeof *j->n_ids);
    j->cap_ids = calloc((size_t)j->nret, sizeof *j->cap_ids);
    if (!j->streams || !j->ids || !j->n_ids || !j->cap_ids) {
        emit(e, b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_ENOMEM, NULL, "out of memory"));
        return -1;
    }
    /* no prompt ids: a caption, the session starts from bos */
    blip2_request rq = {.query_embeds = j->query, .prompt_ids = j->prompt_ids, .n_prompt_ids = j->n_prompt_ids};
    j->engine = e;
    int rc = blip2_session_new(m, &rq, &j->params, token_cb, j, &j->sess, &err);
    if (rc < 0) {
        int code = rc == BLIP2_ETOOBIG ? B2IPC_ETOO_LARGE : rc == BLIP2_ENOMEM ? B2IPC_ENOMEM
                   : rc == BLIP2_EINVAL ? B2IPC_ERANGE : B2IPC_EINTERNAL;
        emit(e, b2d_event_error(j->conn_id, j->req_id, 1, code, NULL, err.text));
        return -1;
    }
    for (int s = 0; s < j->nret; s++) { /* the leading bos of every sequence */
        j->ids[s] = malloc(sizeof(int32_t) * 64);
        if (!j->ids[s]) {
            emit(e, b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_ENOMEM, NULL, "out of memory"));
            return -1;
        }
        j->cap_ids[s] = 64;
        j->ids[s][0] = blip2_bos_id(m);
        j->n_ids[s] = 1;
    }
    return 0;
}

static void *engine_main(void *arg)
{
    b2d_engine *e = arg;
    const int cap = e->cfg->max_batch > 0 ? e->cfg->max_batch : 8;
    b2d_job **act = e->act;         /* (cap + 64), allocated by b2d_engine_start */
    blip2_session **ss = e->ss;
    int nact = 0;
    for (;;) {
        b2d_job *dropped = NULL, *fresh = NULL, **ft = &fresh;
        pthread_mutex_lock(&e->mu);
        while (!e->stop && nact == 0 && e->queued == 0) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stop && nact == 0 && e->queued == 0) { pthread_mutex_unlock(&e->mu); break; }
        /* canceled jobs leave the queues at once */
        for (int i = 0; i < e->nq; i++) {
            b2d_job **pp = &e->q[i].head, *prev = NULL;
            while (*pp) {
                b2d_job *j = *pp;
                /* a features request is one encoder pass: cancel does not skip it
                 * (docs/protocol.md 5.6), only shutting down does */
                if ((atomic_load(&j->canceled) && j->kind != B2D_JOB_FEATURES) || e->cancel_all) {
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
        /* admit round-robin over users while the batch has room */
        int width = 0;
        for (int i = 0; i < nact; i++) width += job_width(act[i]);
        while (e->queued > 0 && nact < cap) {
            int tried = 0;
            while (tried < e->nq && !e->q[e->rr % e->nq].head) { e->rr++; tried++; }
            uq *u = &e->q[e->rr % e->nq];
            b2d_job *j = u->head;
            if (!j || (nact > 0 && width + job_width(j) > cap)) break;
            u->head = j->next;
            if (!u->head) u->tail = NULL;
            j->next = NULL;
            *ft = j;
            ft = &j->next;
            e->queued--;
            e->active++;
            e->rr++;
            width += job_width(j);
            nact++; /* reserved; filled below */
        }
        pthread_mutex_unlock(&e->mu);
        for (b2d_job *j = dropped, *n; j; j = n) {
            n = j->next;
            if (j->kind == B2D_JOB_FEATURES)
                emit(e, b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_ESHUTDOWN, NULL,
                                        "blip2d is shutting down"));
            else
                emit(e, b2d_event_done(j, b2d_now_ms()));
            b2d_job_unref(j);
        }
        /* start the admitted jobs: vision (unless cached) and a session */
        int filled = nact;
        for (b2d_job *j = fresh; j; j = j->next) filled--;
        for (b2d_job *j = fresh, *n; j; j = n) {
            n = j->next;
            j->next = NULL;
            if (j->kind == B2D_JOB_FEATURES) { /* between decode steps, then gone */
                j->t_admit = b2d_now_ms();
                emit(e, b2d_run_features(j, e->cache));
                b2d_job_unref(j);
                pthread_mutex_lock(&e->mu);
                e->active--;
                pthread_mutex_unlock(&e->mu);
                continue;
            }
            if (atomic_load(&j->canceled) || start_job(e, j) < 0) {
                if (atomic_load(&j->canceled)) emit(e, b2d_event_done(j, b2d_now_ms()));
                b2d_job_unref(j);
                pthread_mutex_lock(&e->mu);
                e->active--;
                pthread_mutex_unlock(&e->mu);
                continue;
            }
            act[filled++] = j;
        }
        nact = filled;
        /* cancellations, then one batched step */
        int cancel_all;
        pthread_mutex_lock(&e->mu);
        cancel_all = e->cancel_all;
        pthread_mutex_unlock(&e->mu);
        for (int i = 0; i < nact; i++)
            if (atomic_load(&act[i]->canceled) || cancel_all) blip2_session_cancel(act[i]->sess);
        /* one step per model: after a reload, jobs of the old model finish on it */
        int prefills = 0, rows = 0;
        for (int i = 0; i < nact; i++) {
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
                if (act[k]->model == bm) ss[n++] = act[k]->sess;
            blip2_error err = {0};
            if (blip2_step(bm->ctx, ss, n, &err) < 0) LOG_ERR("decode step: %s", err.text);
        }
        double dt = b2d_now_ms() - t0;
        pthread_mutex_lock(&e->mu);
        if (prefills) { e->stats.prefill_steps++; e->stats.prefill_ms += dt; }
        else if (rows) { e->stats.decode_steps++; e->stats.decode_tokens += (uint64_t)rows; e->stats.decode_ms += dt; }
        pthread_mutex_unlock(&e->mu);
        int k = 0;
        for (int i = 0; i < nact; i++) {
            b2d_job *j = act[i];
            j->steps++;
            if (j->prefilling) j->prefill_ms += dt; /* every step of a chunked prefill */
            else j->decode_ms += dt;
            if (blip2_session_done(j->sess)) {
                emit(e, b2d_event_done(j, b2d_now_ms()));
                b2d_job_unref(j);
                pthread_mutex_lock(&e->mu);
                e->active--;
                pthread_mutex_unlock(&e->mu);
            } else {
                act[k++] = j;
            }
        }
        nact = k;
    }
    return NULL;
}

int b2d_engine_start(b2d_engine **out, const b2d_config *cfg, b2d_cache *cache,
                     void (*deliver)(void *, b2d_event *), void *user)
{
    b2d_engine *e = calloc(1, sizeof *e);
    if (!e) return -1;
    e->cfg = cfg;
    e->cache = cache;
    const size_t cap = (size_t)(cfg->max_batch > 0 ? cfg->max_batch : 8) + 64;
    e->act = calloc(cap, sizeof *e->act);
    e->ss = calloc(cap, sizeof *e->ss);
    e->deliver = deliver;
    e->user = user;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (!e->act || !e->ss || pthread_create(&e->th, NULL, engine_main, e) != 0) {
        free(e->act);
        free(e->ss);
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
