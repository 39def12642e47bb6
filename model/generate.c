/*
 * generate.c - text generation on top of the language model, reproducing
 * transformers v4.37.2 Blip2ForConditionalGeneration.generate().
 *
 * A request is a session: its sequences (seq.h: 1 for greedy, K beams, or
 * num_return_sequences samples), each with its KV cache and token list.
 * blip2_step() advances many sessions at once, the same way for every
 * family, through the model's language-model operations (m->lm, lm.h):
 *
 *   rows of every session (its prefill, or one row per live sequence)
 *     -> one lm->forward over all rows -> lm->logits of the rows that
 *        need them (a prefill's last row, every decode row)
 *     -> per session: select
 *        greedy:  repetition penalty -> min_new_tokens (eos = -inf) -> argmax
 *        sample:  same processors -> temperature -> top-k -> top-p
 *                 -> softmax -> draw (xoshiro256** seeded per sequence)   (seq.c)
 *        beam:    log_softmax -> processors -> + beam score -> top 2K over
 *                 K x V -> BeamSearchScorer rules (eos candidates ranked
 *                 below K dropped, hypotheses scored sum / gen_len^lp, early
 *                 stop when no beam can beat the worst kept hypothesis),
 *                 caches reordered; at the end the best hypotheses, with
 *                 eos appended when shorter than the length limit.  (beam.c)
 *
 * The prefill differs by family (lm.h):
 *   decoder-only (OPT): the decoder's prefix is [query_embeds (Q) ;
 *     embed(prompt ids with BOS) (L)]; the returned ids start as [bos] (the
 *     prompt is not echoed), so repetition_penalty sees [bos] + new tokens
 *     and length limits count from a length of 1;
 *   encoder-decoder (Flan-T5): a session's first step runs the encoder over
 *     [query_embeds ; shared(prompt ids + eos)] on its own (lm->prefill,
 *     the cross-attention keys and values once per request), and the
 *     decoder's prefix is [decoder_start_token_id]; the returned ids are
 *     the decoder sequence, the start token counting for the repetition
 *     penalty, the prompt not.
 * A session's numbers never depend on its batch neighbours: rows only
 * attend to their own caches.  So a prefill may also be cut into chunks
 * of rows fed over several steps (blip2_ctx_set_prefill_chunk) while other
 * sessions decode: the same bits, and their tokens keep coming.
 * blip2_forward_logits is a session's prefill alone, fed whole.
 */
#include "beam.h"
#include "error.h"
#include "model.h"
#include "seq.h"
#include "tok.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void blip2_gen_params_default(blip2_gen_params *p)
{
    *p = (blip2_gen_params){
        .max_new_tokens = 20, .min_new_tokens = 0, .num_beams = 1,
        .length_penalty = 1.0f, .early_stopping = 0, .repetition_penalty = 1.0f,
        .do_sample = 0, .temperature = 1.0f, .top_k = 50, .top_p = 1.0f, .seed = 0,
        .num_return_sequences = 1, .stop = NULL, .n_stop = 0,
    };
}

void blip2_result_free(blip2_result *r)
{
    if (!r) return;
    for (int i = 0; i < r->n && r->seqs; i++) {
        free(r->seqs[i].ids);
        free(r->seqs[i].text);
    }
    free(r->seqs);
    r->seqs = NULL;
    r->n = 0;
}

/* ---- sessions ---- */

enum { S_NEW, S_RUN, S_DONE };
enum { M_GREEDY, M_SAMPLE, M_BEAM };

struct blip2_session {
    const blip2_model *m;
    blip2_gen_params p;
    char **stop;         /* owned copies of p.stop */
    blip2_token_cb cb;
    void *user;
    int mode, K, nret, Q, L, V, D, state, cur_len;
    int P, PQ;           /* rows of the decoder's prefix: PQ query embeddings, then P - PQ ids of pids */
    const int32_t *pids; /* prompt (decoder-only), or &start (encoder-decoder) */
    int32_t start;       /* the decoder start token */
    int filled, take;    /* prefix rows already in the cache; rows fed this step */
    int32_t *prompt;     /* (L) with bos */
    float *query;        /* (Q, D) */
    b2_seq *seq;         /* (K) the sequences (seq.h) */
    float *logits;       /* (K, V) of the sequences after a step */
    float *tmp;          /* (V) sampling scratch */
    b2_beams beams;      /* beam search's bookkeeping (beam.h) */
    struct b2_lm_enc *enc; /* encoder-decoder: the encoder's state of the request (lm.h) */
    int err;             /* first failure inside a step */
};

struct blip2_ctx {
    const blip2_model *m;
    void *ws;                 /* the language model's scratch (m->lm->ws_reserve) */
    float *emb, *hid;         /* (rows, D) inputs and hidden states of a step */
    float *lg;                /* (sequences, V) logits of the rows that need them */
    int *seq, *pos;           /* (rows) sequence and cache slot of each row */
    b2_kv **kvp;              /* (sequences) their caches */
    const struct b2_lm_enc **encp; /* (sequences) their encoder states (NULL: decoder-only) */
    int cap_rows, cap_seqs;
    int chunk;                /* blip2_ctx_set_prefill_chunk; 0: whole prefills */
};

int blip2_ctx_new(const blip2_model *m, blip2_ctx **out, blip2_error *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    (*out)->m = m;
    return 0;
}

void blip2_ctx_set_prefill_chunk(blip2_ctx *c, int rows) { c->chunk = rows > 0 ? rows : 0; }

void blip2_ctx_free(blip2_ctx *c)
{
    if (!c) return;
    c->m->lm->ws_free(c->ws);
    free(c->emb); free(c->hid); free(c->lg); free(c->seq); free(c->pos); free(c->kvp); free(c->encp);
    free(c);
}

/* Room for a step of rows rows over seqs sequences attending to up to
 * ctxlen positions, with encoders over up to enc_rows rows. */
static int ctx_reserve(blip2_ctx *c, int rows, int seqs, int ctxlen, int enc_rows)
{
    const size_t D = (size_t)c->m->cfg.t_hidden;
    if (rows > c->cap_rows) {
        float *e = realloc(c->emb, sizeof(float) * D * rows), *h;
        if (!e) return BLIP2_ENOMEM;
        c->emb = e;
        if (!(h = realloc(c->hid, sizeof(float) * D * rows))) return BLIP2_ENOMEM;
        c->hid = h;
        int *s = realloc(c->seq, sizeof(int) * rows), *p;
        if (!s) return BLIP2_ENOMEM;
        c->seq = s;
        if (!(p = realloc(c->pos, sizeof(int) * rows))) return BLIP2_ENOMEM;
        c->pos = p;
        c->cap_rows = rows;
    }
    if (seqs > c->cap_seqs) { /* a step needs logits for at most one row per sequence */
        b2_kv **k = realloc(c->kvp, sizeof *k * seqs);
        if (!k) return BLIP2_ENOMEM;
        c->kvp = k;
        const struct b2_lm_enc **en = realloc(c->encp, sizeof *en * seqs);
        if (!en) return BLIP2_ENOMEM;
        c->encp = en;
        float *lg = realloc(c->lg, sizeof(float) * (size_t)c->m->cfg.t_vocab * seqs);
        if (!lg) return BLIP2_ENOMEM;
        c->lg = lg;
        c->cap_seqs = seqs;
    }
    return c->m->lm->ws_reserve(c->m, &c->ws, rows, ctxlen, enc_rows) < 0 ? BLIP2_ENOMEM : 0;
}

static int check_params(const blip2_model *m, const blip2_gen_params *p, blip2_error *err)
{
    int nret = p->num_return_sequences ? p->num_return_sequences : 1;
    if (p->max_new_tokens < 1 || p->max_new_tokens > m->cfg.t_max_pos)
        return b2__err(err, BLIP2_EINVAL, "max_new_tokens %d out of range 1..%d", p->max_new_tokens, m->cfg.t_max_pos);
    if (p->min_new_tokens < 0 || p->min_new_tokens > p->max_new_tokens)
        return b2__err(err, BLIP2_EINVAL, "min_new_tokens %d out of range 0..max_new_tokens", p->min_new_tokens);
    if (p->num_beams < 1 || p->num_beams > 64)
        return b2__err(err, BLIP2_EINVAL, "num_beams %d out of range 1..64", p->num_beams);
    if (!(p->repetition_penalty > 0) || !isfinite(p->repetition_penalty))
        return b2__err(err, BLIP2_EINVAL, "repetition_penalty must be a positive number");
    if (!isfinite(p->length_penalty))
        return b2__err(err, BLIP2_EINVAL, "length_penalty must be finite");
    if (nret < 1 || nret > 16)
        return b2__err(err, BLIP2_EINVAL, "num_return_sequences %d out of range 1..16", nret);
    if (p->do_sample) {
        if (p->num_beams > 1)
            return b2__err(err, BLIP2_EINVAL, "do_sample with num_beams > 1 (beam sampling) is not supported");
        if (!(p->temperature > 0) || !isfinite(p->temperature))
            return b2__err(err, BLIP2_EINVAL, "temperature must be a positive number");
        if (p->top_k < 0) return b2__err(err, BLIP2_EINVAL, "top_k must be >= 0");
        if (!(p->top_p > 0 && p->top_p <= 1)) return b2__err(err, BLIP2_EINVAL, "top_p must be in (0, 1]");
    } else if (p->num_beams == 1 && nret != 1) {
        return b2__err(err, BLIP2_EINVAL, "num_return_sequences > 1 needs do_sample or num_beams >= it");
    } else if (nret > p->num_beams) {
        return b2__err(err, BLIP2_EINVAL, "num_return_sequences %d exceeds num_beams %d", nret, p->num_beams);
    }
    if (p->n_stop < 0 || p->n_stop > 16 || (p->n_stop && !p->stop))
        return b2__err(err, BLIP2_EINVAL, "at most 16 stop strings");
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0] || strlen(p->stop[i]) > 256)
            return b2__err(err, BLIP2_EINVAL, "stop strings must be 1..256 bytes");
    return 0;
}

void blip2_session_free(blip2_session *s)
{
    if (!s) return;
    for (int i = 0; s->stop && i < s->p.n_stop; i++) free(s->stop[i]);
    free(s->stop);
    for (int j = 0; s->seq && j < s->K; j++) {
        b2__kv_free(&s->seq[j].kv);
        free(s->seq[j].ids.v);
    }
    if (s->enc) s->m->lm->enc_free(s->enc);
    b2__beams_free(&s->beams);
    free(s->seq); free(s->logits); free(s->tmp);
    free(s->prompt); free(s->query);
    free(s);
}

int blip2_session_new(const blip2_model *m, const blip2_request *rq, const blip2_gen_params *p,
                      blip2_token_cb cb, void *user, blip2_session **out, blip2_error *err)
{
    const b2_config *c = &m->cfg;
    const b2_lm_ops *lm = m->lm;
    blip2_gen_params def;
    if (!p) { blip2_gen_params_default(&def); p = &def; }
    *out = NULL;
    int rc = check_params(m, p, err);
    if (rc < 0) return rc;
    if (!rq || !rq->query_embeds) return b2__err(err, BLIP2_EINVAL, "request has no image embeddings");
    blip2_session *s = calloc(1, sizeof *s);
    if (!s) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    s->m = m;
    s->p = *p;
    s->p.stop = NULL;
    s->cb = cb;
    s->user = user;
    s->nret = p->num_return_sequences ? p->num_return_sequences : 1;
    s->p.num_return_sequences = s->nret;
    s->mode = p->num_beams > 1 ? M_BEAM : p->do_sample ? M_SAMPLE : M_GREEDY;
    s->K = s->mode == M_BEAM ? p->num_beams : s->nret;
    s->Q = c->num_query;
    s->D = c->t_hidden;
    s->V = c->t_vocab;
    s->cur_len = 1;
    if (p->n_stop) {
        if (!(s->stop = calloc((size_t)p->n_stop, sizeof *s->stop))) goto nomem;
        for (int i = 0; i < p->n_stop; i++)
            if (!(s->stop[i] = strdup(p->stop[i]))) goto nomem;
    }
    if (rq->prompt_ids && rq->n_prompt_ids > 0) {
        if (rq->n_prompt_ids > (size_t)c->t_max_pos) {
            rc = b2__err(err, BLIP2_ETOOBIG, "prompt too long: %zu tokens", rq->n_prompt_ids);
            goto fail;
        }
        s->L = (int)rq->n_prompt_ids;
        if (!(s->prompt = malloc(sizeof(int32_t) * (size_t)s->L))) goto nomem;
        memcpy(s->prompt, rq->prompt_ids, sizeof(int32_t) * (size_t)s->L);
        for (int j = 0; j < s->L; j++)
            if (s->prompt[j] < 0 || s->prompt[j] >= s->V) {
                rc = b2__err(err, BLIP2_EINVAL, "prompt id %d is outside the vocabulary", (int)s->prompt[j]);
                goto fail;
            }
    } else if (rq->prompt && rq->prompt[0]) {
        size_t nn = 0;
        if ((rc = b2__tok_encode(m, rq->prompt, strlen(rq->prompt), 1, &s->prompt, &nn, err)) < 0) goto fail;
        s->L = nn > (size_t)c->t_max_pos ? c->t_max_pos + 1 : (int)nn;
    } else {
        if (!(s->prompt = malloc(sizeof(int32_t)))) goto nomem;
        s->prompt[0] = c->bos;
        s->L = 1;
    }
    long total = (long)s->Q + s->L + p->max_new_tokens;
    if (total > c->t_max_pos) {
        rc = b2__err(err, BLIP2_ETOOBIG,
                     "prompt too long: %d query + %d prompt + %d new tokens exceed the model's %d positions",
                     s->Q, s->L, p->max_new_tokens, c->t_max_pos);
        goto fail;
    }
    const int K = s->K, V = s->V;
    if (!(s->query = malloc(sizeof(float) * (size_t)s->Q * s->D))) goto nomem;
    memcpy(s->query, rq->query_embeds, sizeof(float) * (size_t)s->Q * s->D);
    s->seq = calloc((size_t)K, sizeof *s->seq);
    s->logits = malloc(sizeof(float) * (size_t)K * V);
    if (!s->seq || !s->logits) goto nomem;
    /* the decoder's prefix: [query ; prompt] for a decoder-only model; an
     * encoder-decoder's encoder reads that, its decoder starts from [start] */
    s->start = c->dec_start;
    if (lm->prefill) {
        s->PQ = 0;
        s->P = 1;
        s->pids = &s->start;
        if (lm->enc_new(m, s->Q + s->L, &s->enc) < 0) goto nomem;
    } else {
        s->PQ = s->Q;
        s->P = s->Q + s->L;
        s->pids = s->prompt;
    }
    /* the caches hold the prefix and the new tokens */
    const int cap = s->P + p->max_new_tokens;
    for (int j = 0; j < K; j++) {
        if (b2__kv_init(&s->seq[j].kv, m, cap) < 0 || b2__toks_push(&s->seq[j].ids, c->dec_start) < 0)
            goto nomem;
        s->seq[j].live = 1;
    }
    if (s->mode == M_SAMPLE) {
        if (!(s->tmp = malloc(sizeof(float) * (size_t)V))) goto nomem;
        for (int j = 0; j < K; j++) b2__seq_seed(&s->seq[j], p->seed, j);
    }
    if (s->mode == M_BEAM) {
        if (b2__beams_init(&s->beams, m, K, s->nret, cap, lm->prefill != NULL) < 0) goto nomem;
        for (int j = 0; j < K; j++) s->seq[j].score = j == 0 ? 0.0f : -1e9f;
    }
    *out = s;
    return 0;
nomem:
    rc = b2__err(err, BLIP2_ENOMEM, "out of memory for a generation session");
fail:
    blip2_session_free(s);
    return rc;
}

int blip2_session_done(const blip2_session *s) { return s->state == S_DONE; }

int blip2_session_prefilling(const blip2_session *s) { return s->state == S_NEW; }

void blip2_session_cancel(blip2_session *s)
{
    if (s->state == S_DONE) return;
    for (int j = 0; j < s->K; j++)
        if (s->seq[j].live) { s->seq[j].live = 0; s->seq[j].finish = BLIP2_FINISH_CANCELED; }
    if (s->mode == M_BEAM)
        for (int r = 0; r < s->nret; r++) s->beams.out_finish[r] = BLIP2_FINISH_CANCELED;
    s->state = S_DONE;
}

int blip2_session_rows(const blip2_session *s)
{
    if (s->state == S_DONE) return 0;
    /* what is left of the prefill (an encoder-decoder's goes in one step:
     * its encoder's Q + L rows) */
    if (s->state == S_NEW) return s->Q + s->L - s->filled;
    int r = 0;
    for (int j = 0; j < s->K; j++) r += s->seq[j].live;
    return r;
}

/* Decodes seq ids (skip special) and returns the offset of the earliest
 * stop string in *cut (or the text length).  *text is new. */
static int decode_cut(const blip2_session *s, const b2_toks *t, char **text, size_t *cut, blip2_error *err)
{
    int rc = b2__tok_decode(s->m, t->v, (size_t)t->n, 1, text, err);
    if (rc < 0) return rc;
    *cut = strlen(*text);
    for (int i = 0; i < s->p.n_stop; i++) {
        char *hit = strstr(*text, s->stop[i]);
        if (hit && (size_t)(hit - *text) < *cut) *cut = (size_t)(hit - *text);
    }
    return 0;
}

/* Greedy and sampled sequences: each picks its own next token. */
static int select_independent(blip2_session *s)
{
    const int eos = s->m->cfg.eos;
    int any = 0;
    for (int j = 0; j < s->K; j++) {
        b2_seq *q = &s->seq[j];
        if (!q->live) continue;
        float *lg = s->logits + (size_t)j * s->V;
        b2__process_logits(lg, &q->ids, &s->p, eos);
        int32_t id = s->mode == M_SAMPLE ? b2__sample(lg, s->V, &s->p, q->rng, s->tmp) : b2__argmax(lg, s->V);
        if (b2__toks_push(&q->ids, id) < 0) return BLIP2_ENOMEM;
        if (s->cb && s->cb(s->user, j, id)) { blip2_session_cancel(s); return 0; }
        if (id == eos) { q->live = 0; q->finish = BLIP2_FINISH_EOS; continue; }
        if (s->p.n_stop) {
            char *text;
            size_t cut;
            if (decode_cut(s, &q->ids, &text, &cut, NULL) < 0) return BLIP2_ENOMEM;
            int hit = cut < strlen(text);
            free(text);
            if (hit) { q->live = 0; q->finish = BLIP2_FINISH_STOP; continue; }
        }
        if (q->ids.n - 1 >= s->p.max_new_tokens) { q->live = 0; q->finish = BLIP2_FINISH_LENGTH; continue; }
        q->pending = id;
        any = 1;
    }
    if (!any) s->state = S_DONE;
    return 0;
}

/* Beams: one step of beam search over all K (beam.c). */
static int select_beam(blip2_session *s)
{
    int e = b2__beams_step(&s->beams, s->seq, s->logits, s->V, &s->p, s->m->cfg.eos, s->cur_len);
    if (e < 0) return e;
    s->cur_len++;
    if (s->cb && s->cb(s->user, -1, -1)) { blip2_session_cancel(s); return 0; }
    if (s->beams.done || s->cur_len >= 1 + s->p.max_new_tokens) {
        if ((e = b2__beams_finish(&s->beams, s->seq, &s->p, s->m->cfg.eos)) < 0) return e;
        s->state = S_DONE;
    }
    return 0;
}

/* ---- a step ---- */

/* Assembles the rows of a step and runs them through the language model
 * (m->lm): a new session feeds rows filled .. filled + take of its decoder
 * prefix (an encoder-decoder's encoder runs first), a running one a row
 * per live sequence, its pending token.  ctx->hid (rows, D) gets the
 * hidden states in that order, *nrows the number of rows.  Of the
 * sessions only take changes (and an encoder-decoder's encoder state). */
static int feed(blip2_ctx *ctx, blip2_session *const *ss, int n, int *nrows, blip2_error *err)
{
    const blip2_model *m = ctx->m;
    const b2_lm_ops *lm = m->lm;
    const int D = m->cfg.t_hidden;
    /* prefills in chunks only while someone else is decoding */
    int decoding = 0;
    for (int i = 0; i < n; i++) decoding |= ss[i]->state == S_RUN;
    int rows = 0, seqs = 0, maxctx = 0, enc_rows = 0;
    for (int i = 0; i < n; i++) {
        blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        seqs += s->K;
        if (s->seq[0].kv.cap > maxctx) maxctx = s->seq[0].kv.cap;
        if (s->enc && s->Q + s->L > maxctx) maxctx = s->Q + s->L; /* cross-attention */
        if (s->state == S_NEW) {
            const int left = s->P - s->filled;
            s->take = ctx->chunk && decoding && left > ctx->chunk ? ctx->chunk : left;
            rows += s->take;
            if (s->enc && s->filled == 0 && s->Q + s->L > enc_rows) enc_rows = s->Q + s->L;
        } else {
            rows += blip2_session_rows(s);
        }
    }
    if (ctx_reserve(ctx, rows, seqs, maxctx, enc_rows) < 0)
        return b2__err(err, BLIP2_ENOMEM, "out of memory");
    int r = 0, q = 0;
    for (int i = 0; i < n; i++) {
        blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        for (int j = 0; j < s->K; j++) { ctx->kvp[q + j] = &s->seq[j].kv; ctx->encp[q + j] = s->enc; }
        if (s->state == S_NEW) { /* rows a .. b of the prefix [query (PQ) ; ids] */
            if (s->enc && s->filled == 0) lm->prefill(m, ctx->ws, s->query, s->Q, s->prompt, s->L, s->enc);
            const int a = s->filled, b = s->filled + s->take, PQ = s->PQ;
            const int qa = a < PQ ? a : PQ, qb = b < PQ ? b : PQ, pa = a > PQ ? a : PQ;
            memcpy(ctx->emb + (size_t)r * D, s->query + (size_t)qa * D,
                   sizeof(float) * (size_t)(qb - qa) * D);
            if (b > pa) lm->embed(m, s->pids + (pa - PQ), b - pa, ctx->emb + (size_t)(r + qb - qa) * D);
            for (int j = a; j < b; j++) { ctx->seq[r + j - a] = q; ctx->pos[r + j - a] = j; }
            r += s->take;
        } else {
            for (int j = 0; j < s->K; j++) {
                const b2_seq *sq = &s->seq[j];
                if (!sq->live) continue;
                lm->embed(m, &sq->pending, 1, ctx->emb + (size_t)r * D);
                ctx->seq[r] = q + j;
                ctx->pos[r++] = sq->kv.len;
            }
        }
        q += s->K;
    }
    const b2_lm_rows in = {.n = rows, .emb = ctx->emb, .seq = ctx->seq, .pos = ctx->pos,
                           .kv = ctx->kvp, .enc = ctx->encp};
    lm->forward(m, ctx->ws, &in, ctx->hid);
    *nrows = rows;
    return 0;
}

/* After the forward pass: ctx->lg holds one row of logits per session
 * that completed its prefill and per live sequence, in session order.
 * Advances the caches and picks the next tokens. */
static int take_logits(blip2_ctx *ctx, blip2_session *const *ss, int n, blip2_error *err)
{
    int rc = 0, l = 0;
    for (int i = 0; i < n; i++) {
        blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        const size_t V = (size_t)s->V;
        if (s->state == S_NEW && s->filled + s->take < s->P) {
            s->filled += s->take; /* a chunk of the prefill: no token yet */
            s->seq[0].kv.len = s->filled;
            continue;
        }
        if (s->state == S_NEW) {
            s->filled = s->P;
            s->seq[0].kv.len = s->P;
            for (int j = 0; j < s->K; j++) { /* every sequence starts from the same prefix */
                if (j) b2__kv_copy(&s->seq[j].kv, &s->seq[0].kv);
                memcpy(s->logits + j * V, ctx->lg + l * V, sizeof(float) * V);
            }
            l++;
            s->state = S_RUN;
        } else {
            for (int j = 0; j < s->K; j++) {
                if (!s->seq[j].live) continue;
                s->seq[j].kv.len++;
                memcpy(s->logits + j * V, ctx->lg + l++ * V, sizeof(float) * V);
            }
        }
        int e = s->mode == M_BEAM ? select_beam(s) : select_independent(s);
        if (e < 0) {
            s->err = e;
            blip2_session_cancel(s);
            if (rc == 0) rc = b2__err(err, e, "out of memory while generating");
        }
    }
    return rc;
}

int blip2_step(blip2_ctx *ctx, blip2_session *const *ss, int n, blip2_error *err)
{
    const blip2_model *m = ctx->m;
    const int D = m->cfg.t_hidden;
    int rows = 0;
    for (int i = 0; i < n; i++) {
        if (ss[i]->m != m) return b2__err(err, BLIP2_EINVAL, "session belongs to another model");
        rows += blip2_session_rows(ss[i]);
    }
    if (rows == 0) return 0;
    int rc = feed(ctx, ss, n, &rows, err);
    if (rc < 0) return rc;
    /* the rows that need logits (a prefill's last row, every decode row),
     * packed into emb (free again) for one logits product */
    int nl = 0, r = 0;
    for (int i = 0; i < n; i++) {
        const blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        if (s->state == S_NEW) {
            r += s->take;
            if (s->filled + s->take == s->P) /* the prefill's last row */
                memcpy(ctx->emb + (size_t)nl++ * D, ctx->hid + (size_t)(r - 1) * D, sizeof(float) * D);
        } else {
            for (int j = 0; j < s->K; j++) {
                if (!s->seq[j].live) continue;
                memcpy(ctx->emb + (size_t)nl++ * D, ctx->hid + (size_t)r * D, sizeof(float) * D);
                r++;
            }
        }
    }
    m->lm->logits(m, ctx->emb, nl, ctx->lg);
    return take_logits(ctx, ss, n, err);
}

int blip2_session_result(const blip2_session *s, blip2_result *res, blip2_error *err)
{
    memset(res, 0, sizeof *res);
    if (s->state != S_DONE) return b2__err(err, BLIP2_EINVAL, "session is not finished");
    res->seqs = calloc((size_t)s->nret, sizeof *res->seqs);
    if (!res->seqs) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    res->n = s->nret;
    for (int r = 0; r < s->nret; r++) {
        const b2_toks *t = s->mode == M_BEAM ? &s->beams.out[r] : &s->seq[r].ids;
        blip2_seq_result *o = &res->seqs[r];
        o->finish = s->mode == M_BEAM ? s->beams.out_finish[r] : s->seq[r].finish;
        o->n_ids = (size_t)t->n;
        o->ids = malloc(sizeof(int32_t) * (t->n ? (size_t)t->n : 1));
        size_t cut;
        int rc = o->ids ? decode_cut(s, t, &o->text, &cut, err) : b2__err(err, BLIP2_ENOMEM, "out of memory");
        if (rc < 0) { blip2_result_free(res); return rc; }
        if (t->n) memcpy(o->ids, t->v, sizeof(int32_t) * (size_t)t->n);
        o->text[cut] = 0;
    }
    return 0;
}

/* ---- one-shot batch ---- */

typedef struct tramp {
    blip2_token_cb cb;
    void *user;
    int base;
} tramp;

static int tramp_cb(void *u, int seq, int32_t tok)
{
    tramp *t = u;
    return t->cb(t->user, seq < 0 ? t->base : t->base + seq, tok);
}

int blip2_generate(const blip2_model *m, const blip2_request *rq, int n, const blip2_gen_params *p,
                   blip2_token_cb cb, void *user, blip2_result *res, blip2_error *err)
{
    blip2_gen_params def;
    if (!p) { blip2_gen_params_default(&def); p = &def; }
    memset(res, 0, sizeof *res);
    if (n <= 0 || n > 1024) return b2__err(err, BLIP2_EINVAL, "batch size %d out of range 1..1024", n);
    int rc = check_params(m, p, err);
    if (rc < 0) return rc;
    const int nret = p->num_return_sequences ? p->num_return_sequences : 1;
    blip2_session **ss = calloc((size_t)n, sizeof *ss);
    tramp *tr = calloc((size_t)n, sizeof *tr);
    blip2_ctx *ctx = NULL;
    if (!ss || !tr) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
    for (int i = 0; i < n; i++) {
        tr[i] = (tramp){cb, user, i * nret};
        if ((rc = blip2_session_new(m, &rq[i], p, cb ? tramp_cb : NULL, &tr[i], &ss[i], err)) < 0) goto out;
    }
    if ((rc = blip2_ctx_new(m, &ctx, err)) < 0) goto out;
    for (;;) {
        int live = 0;
        for (int i = 0; i < n; i++) live |= !blip2_session_done(ss[i]);
        if (!live) break;
        if ((rc = blip2_step(ctx, ss, n, err)) < 0) goto out;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ss[i]->K; j++)
            if (ss[i]->seq[j].finish == BLIP2_FINISH_CANCELED ||
                (ss[i]->mode == M_BEAM && j < nret && ss[i]->beams.out_finish[j] == BLIP2_FINISH_CANCELED)) {
                rc = b2__err(err, BLIP2_ECANCELED, "generation canceled");
                goto out;
            }
    res->seqs = calloc((size_t)n * nret, sizeof *res->seqs);
    if (!res->seqs) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
    for (int i = 0; i < n; i++) {
        blip2_result one;
        if ((rc = blip2_session_result(ss[i], &one, err)) < 0) goto out;
        memcpy(res->seqs + (size_t)i * nret, one.seqs, sizeof *one.seqs * (size_t)nret);
        res->n += nret;
        free(one.seqs);
    }
out:
    if (ss) for (int i = 0; i < n; i++) blip2_session_free(ss[i]);
    free(ss);
    free(tr);
    blip2_ctx_free(ctx);
    if (rc < 0) blip2_result_free(res);
    return rc;
}

int blip2_forward_logits(const blip2_model *m, const blip2_request *rq, float *last_logits,
                         float *all_logits, blip2_error *err)
{
    /* a session's prefill, fed whole: the same rows as its first step */
    blip2_gen_params p;
    blip2_gen_params_default(&p);
    p.max_new_tokens = 1;
    blip2_session *s = NULL;
    blip2_ctx *ctx = NULL;
    int rows = 0;
    int rc = blip2_session_new(m, rq, &p, NULL, NULL, &s, err);
    if (rc == 0) rc = blip2_ctx_new(m, &ctx, err);
    if (rc == 0) rc = feed(ctx, &s, 1, &rows, err);
    if (rc == 0) {
        /* one logits call per hidden row (T5's may scale it in place) */
        m->lm->logits(m, ctx->hid + (size_t)(rows - 1) * s->D, 1, last_logits);
        if (all_logits && rows == 1) memcpy(all_logits, last_logits, sizeof(float) * (size_t)s->V);
        else if (all_logits) m->lm->logits(m, ctx->hid, rows, all_logits);
    }
    blip2_ctx_free(ctx);
    blip2_session_free(s);
    return rc;
}

/* ---- streaming text ---- */

void blip2_stream_free(blip2_stream *st)
{
    if (!st) return;
    free(st->text);
    st->text = NULL;
    st->emitted = 0;
}

int blip2_stream_piece(const blip2_model *m, blip2_stream *st, const int32_t *ids, size_t n,
                       int final, const char *const *stop, int n_stop, const char **piece,
                       size_t *len, blip2_error *err)
{
    char *text = NULL;
    int rc = b2__tok_decode(m, ids, n, 1, &text, err);
    *piece = "";
    *len = 0;
    if (rc < 0) return rc;
    size_t tl = strlen(text), safe = tl;
    if (!final) {
        /* hold back what the next token can still change: an incomplete
         * UTF-8 character (decoded as U+FFFD for now) and the space or
         * apostrophe that clean_up_tokenization_spaces may remove */
        for (;;) {
            if (safe >= 3 && !memcmp(text + safe - 3, "\xef\xbf\xbd", 3)) safe -= 3;
            else if (safe >= 1 && (text[safe - 1] == ' ' || text[safe - 1] == '\'')) safe--;
            else break;
        }
    }
    for (int i = 0; i < n_stop; i++) {
        const size_t sl = strlen(stop[i]);
        if (sl == 0) continue;
        const char *hit = strstr(text, stop[i]);
        if (hit && (size_t)(hit - text) < safe) safe = (size_t)(hit - text);
        if (final) continue;
        /* the longest tail that could still grow into this stop string */
        for (size_t k = sl - 1 < safe ? sl - 1 : safe; k > 0; k--)
            if (!memcmp(text + safe - k, stop[i], k)) { safe -= k; break; }
    }
    /* earlier pieces are final: continue only where the text still extends them */
    int extends = st->emitted <= tl && (!st->text || !memcmp(st->text, text, st->emitted));
    free(st->text);
    st->text = text;
    if (extends && safe > st->emitted) {
        *piece = text + st->emitted;
        *len = safe - st->emitted;
        st->emitted = safe;
    }
    return 0;
}
