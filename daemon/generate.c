/*
 * generate.c - the generate op (docs/protocol.md 5.2) as a job kind.
 *
 *   prepare (pool): image -> key -> cache lookup of the query embeddings
 *     -> on a miss decode + resize; tokenise the prompt; the prompt plus
 *     max_new_tokens against the model's positions
 *   start (engine, when admitted): vision encoder + Q-Former + projection
 *     unless cached (the result goes into the cache), then a session
 *   every step (engine): token_cb records each new id and, when
 *     streaming, sends the text that became final as a token event
 *   finish: the done reply, from the session's result (or empty, finish
 *     "canceled", when it never started)
 */
#include "daemon.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void prepare(b2d_job *j, const b2d_prep_env *env)
{
    const blip2_model *m = j->model->m;
    const size_t nq = blip2_query_embeds_len(m);
    if (!(j->query = malloc(sizeof(float) * nq))) {
        b2d_job_fail(j, B2IPC_ENOMEM, "out of memory");
        return;
    }
    if (b2d_prepare_image(j, env, NULL, j->query, nq) < 0) return;
    blip2_error err = {0};
    if (j->prompt && j->prompt[0] &&
        blip2_tokenize(m, j->prompt, 1, &j->prompt_ids, &j->n_prompt_ids, &err) < 0) {
        b2d_job_fail(j, B2IPC_EUTF8, "%s", err.text);
        return;
    }
    /* positions: the image's query tokens, the prompt (BOS alone without one), the new tokens */
    const size_t np = j->n_prompt_ids ? j->n_prompt_ids : 1, pos = (size_t)blip2_max_positions(m),
                 nqt = (size_t)blip2_num_query_tokens(m);
    if (nqt + np >= pos)
        b2d_job_fail(j, B2IPC_ETOO_LARGE, "the prompt (%zu tokens) is too long: the model has %zu positions, "
                     "%zu of them for the image's query tokens", np, pos, nqt);
    else if (nqt + np + j->params.max_new_tokens > pos)
        b2d_job_fail(j, B2IPC_ETOO_LARGE, "max_new_tokens %d is too many for this model: its %zu positions "
                     "hold the image's %zu query tokens, the prompt's %zu token%s and at most %zu new tokens",
                     j->params.max_new_tokens, pos, nqt, np, np == 1 ? "" : "s", pos - nqt - np);
}

/* Beams take a row each; sampled sequences count once started. */
static int width(const b2d_job *j)
{
    return j->params.num_beams > 1 ? j->params.num_beams : j->nret;
}

/* The token event of the newest id of sequence seq. */
static void stream_token(b2d_job *j, int seq)
{
    const char *piece = "";
    size_t len = 0;
    blip2_error err;
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
    b2d_job_emit(j, &rp, 0);
}

/* Token callback, inside blip2_step on the engine thread: records the id
 * and streams the text that became final.  Non-zero cancels the session.
 * The session keeps the token it reports even when that cancels it, so
 * the token is streamed first: done then holds exactly the streamed ids
 * (docs/protocol.md 7.2). */
static int token_cb(void *user, int seq, int32_t tok)
{
    b2d_job *j = user;
    const int stop = atomic_load(&j->canceled) != B2D_CANCEL_NONE;
    if (seq < 0 || seq >= j->nret) return stop; /* beam search: no token events */
    if (j->n_ids[seq] == j->cap_ids[seq]) {
        size_t nc = 2 * j->cap_ids[seq];
        int32_t *nv = realloc(j->ids[seq], sizeof *nv * nc);
        if (!nv) return stop; /* streaming degrades; the done reply stays exact */
        j->ids[seq] = nv;
        j->cap_ids[seq] = nc;
    }
    j->ids[seq][j->n_ids[seq]++] = tok;
    if (j->stream) stream_token(j, seq);
    return stop;
}

static int start(b2d_job *j, b2d_cache *cache, int prefill_chunk)
{
    blip2_error err = {0};
    const blip2_model *m = j->model->m;
    if (!j->model->ctx) {
        if (blip2_ctx_new(m, &j->model->ctx, &err) < 0) {
            b2d_job_error(j, B2IPC_ENOMEM, NULL, err.text);
            return 0;
        }
        blip2_ctx_set_prefill_chunk(j->model->ctx, prefill_chunk);
    }
    if (!j->cached) {
        double t = b2d_now_ms();
        if (blip2_encode_image(m, j->px, 1, j->query, NULL, &err) < 0) {
            b2d_job_error(j, B2IPC_EINTERNAL, NULL, err.text);
            return 0;
        }
        j->vision_ms = b2d_now_ms() - t;
        b2d_cache_put(cache, j->key, j->query, blip2_query_embeds_len(m));
        free(j->px);
        j->px = NULL;
    }
    j->nret = j->params.num_return_sequences;
    j->streams = calloc((size_t)j->nret, sizeof *j->streams);
    j->ids = calloc((size_t)j->nret, sizeof *j->ids);
    j->n_ids = calloc((size_t)j->nret, sizeof *j->n_ids);
    j->cap_ids = calloc((size_t)j->nret, sizeof *j->cap_ids);
    if (!j->streams || !j->ids || !j->n_ids || !j->cap_ids) {
        b2d_job_error(j, B2IPC_ENOMEM, NULL, "out of memory");
        return 0;
    }
    /* no prompt ids: a caption, the session starts from bos */
    blip2_request rq = {.query_embeds = j->query, .prompt_ids = j->prompt_ids, .n_prompt_ids = j->n_prompt_ids};
    int rc = blip2_session_new(m, &rq, &j->params, token_cb, j, &j->sess, &err);
    if (rc < 0) {
        b2d_job_error(j, b2d_ipc_code(rc), NULL, err.text);
        return 0;
    }
    for (int s = 0; s < j->nret; s++) { /* the leading bos of every sequence */
        j->ids[s] = malloc(sizeof(int32_t) * 64);
        if (!j->ids[s]) {
            b2d_job_error(j, B2IPC_ENOMEM, NULL, "out of memory");
            return 0;
        }
        j->cap_ids[s] = 64;
        j->ids[s][0] = blip2_bos_id(m);
        j->n_ids[s] = 1;
    }
    return 1;
}

/* The done reply: the session's result, or (never started, or canceled
 * before its first token) every sequence empty with finish "canceled". */
static void finish(b2d_job *j)
{
    blip2_result res = {0};
    blip2_error err = {0};
    b2ipc_seq seqs[B2IPC_MAX_SEQS];
    uint32_t *idbuf[B2IPC_MAX_SEQS] = {0};
    int n = j->params.num_return_sequences > 0 ? j->params.num_return_sequences : 1;
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
    b2d_timings(j, b2d_now_ms(), new_tokens, &rp.done.timings);
    b2d_job_emit(j, &rp, 1);
    for (int i = 0; i < n; i++) free(idbuf[i]);
    blip2_result_free(&res);
}

const b2d_job_ops b2d_generate_ops = {
    .name = "generate",
    .prepare = prepare,
    .width = width,
    .start = start,
    .finish = finish,
    .abandon = finish,
    .cancel_stops = 1,
};
