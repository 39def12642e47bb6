/*
 * generate.c - text generation on top of the OPT decoder, reproducing
 * transformers v4.37.2 Blip2ForConditionalGeneration.generate():
 *
 *   inputs_embeds = [query_embeds (Q) ; embed(prompt ids with BOS) (L)]
 *   the returned ids start as [bos] (the prompt is not echoed), so
 *   repetition_penalty sees [bos] + new tokens and length limits count
 *   from a length of 1.
 *
 * A request is a session: its sequences (1 for greedy, K beams, or
 * num_return_sequences samples), their KV caches and token lists.
 * blip2_step() advances many sessions at once:
 *
 *   rows of every session (its prefill, or one row per live sequence)
 *     -> one b2__opt_forward over all rows -> logits per sequence
 *     -> per session: select
 *        greedy:  repetition penalty -> min_new_tokens (eos = -inf) -> argmax
 *        sample:  same processors -> temperature -> top-k -> top-p
 *                 -> softmax -> draw (xoshiro256** seeded per sequence)
 *        beam:    log_softmax -> processors -> + beam score -> top 2K over
 *                 K x V -> BeamSearchScorer rules (eos candidates ranked
 *                 below K dropped, hypotheses scored sum / gen_len^lp, early
 *                 stop when no beam can beat the worst kept hypothesis),
 *                 caches reordered; at the end the best hypotheses, with
 *                 eos appended when shorter than the length limit.
 * A session's numbers never depend on its batch neighbours: rows only
 * attend to their own caches.  So a prefill may also be cut into chunks
 * of rows fed over several steps (blip2_ctx_set_prefill_chunk) while other
 * sessions decode: the same bits, and their tokens keep coming.
 *
 * Flan-T5 (t5.h) returns the decoder sequence instead: ids start as
 * [decoder_start_token_id] (the start token counts for the repetition
 * penalty, the prompt does not), and a session's first step runs the
 * encoder over [query_embeds ; shared(prompt ids + eos)] on its own,
 * fills the cross-attention keys and values once, and feeds the start
 * token; later steps feed one decoder row per live sequence, batched
 * across sessions like OPT's.
 */
#include "model.h"
#include "tok.h"
#include "error.h"
#include "t5.h"

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

/* ---- small pieces ---- */

typedef struct toks {
    int32_t *v;
    int n, cap;
} toks;

static int toks_push(toks *t, int32_t id)
{
    if (t->n == t->cap) {
        int nc = t->cap ? 2 * t->cap : 32;
        int32_t *nv = realloc(t->v, sizeof *nv * (size_t)nc);
        if (!nv) return BLIP2_ENOMEM;
        t->v = nv;
        t->cap = nc;
    }
    t->v[t->n++] = id;
    return 0;
}

static int toks_copy(toks *dst, const toks *src)
{
    dst->n = 0;
    for (int i = 0; i < src->n; i++)
        if (toks_push(dst, src->v[i]) < 0) return BLIP2_ENOMEM;
    return 0;
}

/* The processors of 4.37.2 in their order: repetition penalty on the ids
 * so far (each distinct id once, as gather-then-scatter does), then
 * min_new_tokens suppressing eos. */
static void process_logits(float *x, const toks *ids, const blip2_gen_params *p, int eos)
{
    if (p->repetition_penalty != 1.0f)
        for (int i = 0; i < ids->n; i++) {
            int seen = 0;
            for (int j = 0; j < i && !seen; j++) seen = ids->v[j] == ids->v[i];
            if (seen) continue;
            float *s = &x[ids->v[i]];
            *s = *s < 0 ? *s * p->repetition_penalty : *s / p->repetition_penalty;
        }
    if (ids->n - 1 < p->min_new_tokens) x[eos] = -INFINITY;
}

static void log_softmax(float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)(x[i] - mx));
    float ls = (float)log(s);
    for (int i = 0; i < n; i++) x[i] = x[i] - mx - ls;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* xoshiro256** seeded through splitmix64. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* temperature -> top-k -> top-p -> softmax -> one draw; tmp holds V floats. */
static int32_t sample(float *x, int V, const blip2_gen_params *p, uint64_t *rng, float *tmp)
{
    if (p->temperature != 1.0f)
        for (int i = 0; i < V; i++) x[i] /= p->temperature;
    int nf = 0;
    for (int i = 0; i < V; i++) if (x[i] > -INFINITY) tmp[nf++] = x[i];
    if (nf == 0) return 0;
    qsort(tmp, (size_t)nf, sizeof *tmp, cmp_desc);
    float cut = -INFINITY;
    if (p->top_k > 0 && p->top_k < nf) { cut = tmp[p->top_k - 1]; nf = p->top_k; }
    if (p->top_p < 1.0f) {
        /* keep the smallest set of best tokens whose probability reaches top_p:
         * drop tokens whose ascending cumulative probability is <= 1 - top_p */
        double z = 0, acc = 0;
        for (int i = 0; i < nf; i++) z += exp((double)(tmp[i] - tmp[0]));
        int keep = nf;
        for (int i = nf - 1; i > 0; i--) {
            acc += exp((double)(tmp[i] - tmp[0])) / z;
            if (acc <= 1.0 - p->top_p) keep = i; else break;
        }
        if (tmp[keep - 1] > cut) cut = tmp[keep - 1];
    }
    double z = 0;
    float mx = tmp[0];
    for (int i = 0; i < V; i++) z += x[i] >= cut ? exp((double)(x[i] - mx)) : 0.0;
    double u = (double)(rng_next(rng) >> 11) * 0x1.0p-53 * z, acc = 0;
    int32_t last = 0;
    for (int i = 0; i < V; i++) {
        if (!(x[i] >= cut)) continue;
        acc += exp((double)(x[i] - mx));
        last = i;
        if (acc > u) return i;
    }
    return last;
}

/* ---- beam search bookkeeping (BeamHypotheses) ---- */

typedef struct hyp {
    float score;
    toks t;
} hyp;

typedef struct beam_hyps {
    hyp *h;       /* K + 1 slots */
    int n;
    float worst;
    int done;
} beam_hyps;

static int hyps_add(beam_hyps *bh, int K, const toks *t, float sum_logprobs, int gen_len, float lp)
{
    float score = sum_logprobs / powf((float)gen_len, lp);
    if (bh->n < K || score > bh->worst) {
        hyp *slot = &bh->h[bh->n++];
        slot->score = score;
        if (toks_copy(&slot->t, t) < 0) return BLIP2_ENOMEM;
        if (bh->n > K) {
            int wi = 0;
            for (int i = 1; i < bh->n; i++) if (bh->h[i].score < bh->h[wi].score) wi = i;
            hyp gone = bh->h[wi];
            memmove(&bh->h[wi], &bh->h[wi + 1], sizeof(hyp) * (size_t)(bh->n - wi - 1));
            bh->n--;
            bh->h[bh->n] = gone; /* keep its buffer for reuse */
            float w = INFINITY;
            for (int i = 0; i < bh->n; i++) if (bh->h[i].score < w) w = bh->h[i].score;
            bh->worst = w;
        } else {
            bh->worst = score < bh->worst ? score : bh->worst;
        }
    }
    return 0;
}

static int hyps_is_done(const beam_hyps *bh, int K, float best_sum, int cur_len, float lp, int early)
{
    if (bh->n < K) return 0;
    if (early) return 1;
    return bh->worst >= best_sum / powf((float)(cur_len - 1), lp);
}

typedef struct cand {
    float score;
    int beam;
    int32_t token;
} cand;

/* The top k of (K*V) scores, best first, ties by index. */
static void topk(const float *s, int K, int V, int k, cand *out)
{
    int n = 0;
    for (int b = 0; b < K; b++)
        for (int v = 0; v < V; v++) {
            float x = s[(size_t)b * V + v];
            if (n == k && !(x > out[k - 1].score)) continue;
            int j = n < k ? n++ : k - 1;
            while (j > 0 && x > out[j - 1].score) { out[j] = out[j - 1]; j--; }
            out[j] = (cand){x, b, v};
        }
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
    int filled, take;    /* prefill rows already in the cache; rows fed this step */
    int32_t *prompt;     /* (L) with bos */
    float *query;        /* (Q, D) */
    b2_kv *kv, *kv2;     /* (K); kv2 only for beams */
    toks *bt, *bt2;      /* (K) ids so far, starting with bos */
    float *bscore;       /* (K) beam scores */
    float *logits;       /* (K, V) */
    float *tmp;          /* (V) sampling scratch */
    int *live;           /* (K) sequence still generating */
    int *finish;         /* (K) BLIP2_FINISH_* */
    int32_t *pending;    /* (K) token to feed next step */
    uint64_t (*rng)[4];  /* (K) */
    beam_hyps bh;
    cand *cd;            /* (2K) */
    toks *out;           /* (nret) final sequences (beam) */
    int *out_finish;
    int err;             /* first failure inside a step */
    b2_t5_cross cross;   /* T5: cross-attention keys/values of the request */
};

struct blip2_ctx {
    const blip2_model *m;
    b2_opt_ws ws;
    b2_t5_ws tws;             /* T5 decoder scratch */
    const b2_t5_cross **crp;  /* (sequences) T5 cross keys/values per sequence */
    int32_t *tok;             /* (rows) T5 decoder input ids */
    float *enc;               /* T5 encoder input, output and scratch */
    size_t cap_enc;
    float *emb, *hid;         /* (rows, D) */
    float *lg;                /* (sequences, V) logits of the rows that need them */
    int *seq, *pos;
    b2_kv **kvp;
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
    b2__opt_ws_free(&c->ws);
    b2__t5_ws_free(&c->tws);
    free(c->crp); free(c->tok); free(c->enc);
    free(c->emb); free(c->hid); free(c->lg); free(c->seq); free(c->pos); free(c->kvp);
    free(c);
}

static int ctx_reserve(blip2_ctx *c, int rows, int seqs, int ctxlen)
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
        int32_t *t = realloc(c->tok, sizeof(int32_t) * rows);
        if (!t) return BLIP2_ENOMEM;
        c->tok = t;
        c->cap_rows = rows;
    }
    if (seqs > c->cap_seqs) { /* a step needs logits for at most one row per sequence */
        b2_kv **k = realloc(c->kvp, sizeof *k * seqs);
        if (!k) return BLIP2_ENOMEM;
        c->kvp = k;
        const b2_t5_cross **cr = realloc(c->crp, sizeof *cr * seqs);
        if (!cr) return BLIP2_ENOMEM;
        c->crp = cr;
        float *lg = realloc(c->lg, sizeof(float) * (size_t)c->m->cfg.t_vocab * seqs);
        if (!lg) return BLIP2_ENOMEM;
        c->lg = lg;
        c->cap_seqs = seqs;
    }
    if (c->m->cfg.family == B2_FAMILY_T5) {
        if (rows > c->tws.max_rows || ctxlen > c->tws.max_ctx) {
            int r = rows > c->tws.max_rows ? rows : c->tws.max_rows;
            int x = ctxlen > c->tws.max_ctx ? ctxlen : c->tws.max_ctx;
            b2__t5_ws_free(&c->tws);
            if (b2__t5_ws_init(&c->tws, c->m, r, x) < 0) return BLIP2_ENOMEM;
        }
    } else if (rows > c->ws.max_rows || ctxlen > c->ws.max_ctx) {
        int r = rows > c->ws.max_rows ? rows : c->ws.max_rows;
        int x = ctxlen > c->ws.max_ctx ? ctxlen : c->ws.max_ctx;
        b2__opt_ws_free(&c->ws);
        if (b2__opt_ws_init(&c->ws, c->m, r, x) < 0) return BLIP2_ENOMEM;
    }
    return 0;
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
    for (int j = 0; j < s->K; j++) {
        if (s->kv) b2__kv_free(&s->kv[j]);
        if (s->kv2) b2__kv_free(&s->kv2[j]);
        if (s->bt) free(s->bt[j].v);
        if (s->bt2) free(s->bt2[j].v);
    }
    b2__t5_cross_free(&s->cross);
    if (s->bh.h) for (int h = 0; h <= s->K; h++) free(s->bh.h[h].t.v);
    for (int r = 0; s->out && r < s->nret; r++) free(s->out[r].v);
    free(s->kv); free(s->kv2); free(s->bt); free(s->bt2); free(s->bscore); free(s->logits);
    free(s->tmp); free(s->live); free(s->finish); free(s->pending); free(s->rng);
    free(s->bh.h); free(s->cd); free(s->out); free(s->out_finish);
    free(s->prompt); free(s->query);
    free(s);
}

int blip2_session_new(const blip2_model *m, const blip2_request *rq, const blip2_gen_params *p,
                      blip2_token_cb cb, void *user, blip2_session **out, blip2_error *err)
{
    const b2_config *c = &m->cfg;
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
    s->kv = calloc((size_t)K, sizeof *s->kv);
    s->bt = calloc((size_t)K, sizeof *s->bt);
    s->bscore = calloc((size_t)K, sizeof *s->bscore);
    s->logits = malloc(sizeof(float) * (size_t)K * V);
    s->live = calloc((size_t)K, sizeof *s->live);
    s->finish = calloc((size_t)K, sizeof *s->finish);
    s->pending = calloc((size_t)K, sizeof *s->pending);
    if (!s->kv || !s->bt || !s->bscore || !s->logits || !s->live || !s->finish || !s->pending) goto nomem;
    /* OPT caches hold the prefix and the new tokens; T5's the decoder tokens */
    const int cap = c->family == B2_FAMILY_T5 ? 1 + p->max_new_tokens : (int)total;
    for (int j = 0; j < K; j++) {
        if (b2__kv_init(&s->kv[j], m, cap) < 0 || toks_push(&s->bt[j], c->dec_start) < 0) goto nomem;
        s->live[j] = 1;
    }
    if (c->family == B2_FAMILY_T5 && b2__t5_cross_init(&s->cross, m, s->Q + s->L) < 0) goto nomem;
    if (s->mode == M_SAMPLE) {
        if (!(s->rng = calloc((size_t)K, sizeof *s->rng)) || !(s->tmp = malloc(sizeof(float) * (size_t)V))) goto nomem;
        for (int j = 0; j < K; j++) {
            uint64_t sm = p->seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(j + 1));
            for (int w = 0; w < 4; w++) s->rng[j][w] = splitmix(&sm);
        }
    }
    if (s->mode == M_BEAM) {
        s->kv2 = calloc((size_t)K, sizeof *s->kv2);
        s->bt2 = calloc((size_t)K, sizeof *s->bt2);
        s->bh.h = calloc((size_t)K + 1, sizeof(hyp));
        s->cd = malloc(sizeof(cand) * 2 * (size_t)K);
        s->out = calloc((size_t)s->nret, sizeof *s->out);
        s->out_finish = calloc((size_t)s->nret, sizeof *s->out_finish);
        if (!s->kv2 || !s->bt2 || !s->bh.h || !s->cd || !s->out || !s->out_finish) goto nomem;
        for (int j = 0; j < K; j++) {
            if (b2__kv_init(&s->kv2[j], m, cap) < 0) goto nomem;
            s->bscore[j] = j == 0 ? 0.0f : -1e9f;
        }
        s->bh.worst = 1e9f;
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
        if (s->live[j]) { s->live[j] = 0; s->finish[j] = BLIP2_FINISH_CANCELED; }
    if (s->mode == M_BEAM)
        for (int r = 0; r < s->nret; r++) s->out_finish[r] = BLIP2_FINISH_CANCELED;
    s->state = S_DONE;
}

int blip2_session_rows(const blip2_session *s)
{
    if (s->state == S_DONE) return 0;
    if (s->state == S_NEW) return s->Q + s->L - s->filled;
    int r = 0;
    for (int j = 0; j < s->K; j++) r += s->live[j];
    return r;
}

/* Decodes seq ids (skip special) and returns the offset of the earliest
 * stop string in *cut (or the text length).  *text is new. */
static int decode_cut(const blip2_session *s, const toks *t, char **text, size_t *cut, blip2_error *err)
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

static int select_independent(blip2_session *s)
{
    const int eos = s->m->cfg.eos;
    int any = 0;
    for (int j = 0; j < s->K; j++) {
        if (!s->live[j]) continue;
        float *lg = s->logits + (size_t)j * s->V;
        process_logits(lg, &s->bt[j], &s->p, eos);
        int32_t id = s->mode == M_SAMPLE ? sample(lg, s->V, &s->p, s->rng[j], s->tmp) : argmax(lg, s->V);
        if (toks_push(&s->bt[j], id) < 0) return BLIP2_ENOMEM;
        if (s->cb && s->cb(s->user, j, id)) { blip2_session_cancel(s); return 0; }
        if (id == eos) { s->live[j] = 0; s->finish[j] = BLIP2_FINISH_EOS; continue; }
        if (s->p.n_stop) {
            char *text;
            size_t cut;
            if (decode_cut(s, &s->bt[j], &text, &cut, NULL) < 0) return BLIP2_ENOMEM;
            int hit = cut < strlen(text);
            free(text);
            if (hit) { s->live[j] = 0; s->finish[j] = BLIP2_FINISH_STOP; continue; }
        }
        if (s->bt[j].n - 1 >= s->p.max_new_tokens) { s->live[j] = 0; s->finish[j] = BLIP2_FINISH_LENGTH; continue; }
        s->pending[j] = id;
        any = 1;
    }
    if (!any) s->state = S_DONE;
    return 0;
}

static int beam_finalize(blip2_session *s)
{
    const int K = s->K, max_len = 1 + s->p.max_new_tokens, eos = s->m->cfg.eos;
    const float lp = s->p.length_penalty;
    beam_hyps *bh = &s->bh;
    if (!bh->done)
        for (int b = 0; b < K; b++)
            if (hyps_add(bh, K, &s->bt[b], s->bscore[b], s->bt[b].n - 1, lp) < 0) return BLIP2_ENOMEM;
    /* best first: a stable ascending sort popped from the end, so among equal
     * scores the later-added hypothesis wins */
    int used[65] = {0};
    for (int r = 0; r < s->nret; r++) {
        int best = -1;
        for (int h = 0; h < bh->n; h++)
            if (!used[h] && (best < 0 || bh->h[h].score >= bh->h[best].score)) best = h;
        used[best] = 1;
        if (toks_copy(&s->out[r], &bh->h[best].t) < 0) return BLIP2_ENOMEM;
        s->out_finish[r] = BLIP2_FINISH_LENGTH;
        if (s->out[r].n < max_len) {
            if (toks_push(&s->out[r], eos) < 0) return BLIP2_ENOMEM;
            s->out_finish[r] = BLIP2_FINISH_EOS;
        }
    }
    s->state = S_DONE;
    return 0;
}

static int select_beam(blip2_session *s)
{
    const int K = s->K, V = s->V, eos = s->m->cfg.eos, max_len = 1 + s->p.max_new_tokens;
    const float lp = s->p.length_penalty;
    /* 4.37.2's BeamSearchScorer scores an eos candidate by cur_len (the
     * decoder length + 1) minus the decoder prompt length: for T5's [start]
     * prompt that counts the eos, while the reference's OPT path ends up
     * one shorter.  The early-stop bound uses the same length. */
    const int extra = s->m->cfg.family == B2_FAMILY_T5;
    for (int b = 0; b < K; b++) {
        float *lg = s->logits + (size_t)b * V;
        log_softmax(lg, V);
        process_logits(lg, &s->bt[b], &s->p, eos);
        for (int v = 0; v < V; v++) lg[v] += s->bscore[b];
    }
    topk(s->logits, K, V, 2 * K, s->cd);
    int nb = 0;
    for (int r = 0; r < 2 * K && nb < K; r++) {
        const cand *c = &s->cd[r];
        if (c->token == eos) {
            if (r >= K) continue;
            if (hyps_add(&s->bh, K, &s->bt[c->beam], c->score, s->cur_len - 1 + extra, lp) < 0) return BLIP2_ENOMEM;
        } else {
            if (toks_copy(&s->bt2[nb], &s->bt[c->beam]) < 0 || toks_push(&s->bt2[nb], c->token) < 0)
                return BLIP2_ENOMEM;
            b2__kv_copy(&s->kv2[nb], &s->kv[c->beam], s->m);
            s->bscore[nb] = c->score; /* bscore is not read again this step */
            s->pending[nb] = c->token;
            nb++;
        }
    }
    s->bh.done = hyps_is_done(&s->bh, K, s->cd[0].score, s->cur_len + extra, lp, s->p.early_stopping);
    for (int b = 0; b < K; b++) {
        toks tt = s->bt[b]; s->bt[b] = s->bt2[b]; s->bt2[b] = tt;
        b2_kv kt = s->kv[b]; s->kv[b] = s->kv2[b]; s->kv2[b] = kt;
    }
    s->cur_len++;
    if (s->cb && s->cb(s->user, -1, -1)) { blip2_session_cancel(s); return 0; }
    if (s->bh.done || s->cur_len >= max_len) return beam_finalize(s);
    return 0;
}

static int take_logits(blip2_ctx *ctx, blip2_session *const *ss, int n, blip2_error *err);

/* The T5 step (see the top of the file). */
static int step_t5(blip2_ctx *ctx, blip2_session *const *ss, int n, blip2_error *err)
{
    const blip2_model *m = ctx->m;
    const int D = m->cfg.t_hidden;
    int rows = 0, seqs = 0, maxctx = 0;
    size_t need_enc = 0;
    for (int i = 0; i < n; i++) {
        const blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        rows += s->state == S_NEW ? 1 : blip2_session_rows(s);
        seqs += s->K;
        if (s->kv[0].cap > maxctx) maxctx = s->kv[0].cap;
        if (s->cross.n > maxctx) maxctx = s->cross.n;
        if (s->state == S_NEW) {
            size_t e = 2 * (size_t)s->cross.n * D + b2__t5_encode_scratch(m, s->cross.n);
            if (e > need_enc) need_enc = e;
        }
    }
    if (ctx_reserve(ctx, rows, seqs, maxctx) < 0) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    if (need_enc > ctx->cap_enc) {
        free(ctx->enc);
        ctx->cap_enc = 0;
        if (!(ctx->enc = malloc(sizeof(float) * need_enc))) return b2__err(err, BLIP2_ENOMEM, "out of memory");
        ctx->cap_enc = need_enc;
    }
    int r = 0, q = 0;
    for (int i = 0; i < n; i++) {
        blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        for (int j = 0; j < s->K; j++) { ctx->kvp[q + j] = &s->kv[j]; ctx->crp[q + j] = &s->cross; }
        if (s->state == S_NEW) {
            const int ne = s->cross.n;
            float *in = ctx->enc, *out = in + (size_t)ne * D;
            memcpy(in, s->query, sizeof(float) * (size_t)s->Q * D);
            b2__t5_embed(m, s->prompt, s->L, in + (size_t)s->Q * D);
            b2__t5_encode(m, in, ne, out, out + (size_t)ne * D);
            b2__t5_cross_fill(m, &s->cross, out);
            ctx->tok[r] = s->bt[0].v[0];
            ctx->seq[r] = q;
            ctx->pos[r++] = 0;
        } else {
            for (int j = 0; j < s->K; j++) {
                if (!s->live[j]) continue;
                ctx->tok[r] = s->pending[j];
                ctx->seq[r] = q + j;
                ctx->pos[r++] = s->kv[j].len;
            }
        }
        q += s->K;
    }
    b2__t5_decode(m, &ctx->tws, ctx->tok, rows, (b2_kv *const *)ctx->kvp, ctx->crp, ctx->seq, ctx->pos, ctx->hid);
    b2__t5_logits(m, ctx->hid, rows, ctx->lg);
    return take_logits(ctx, ss, n, err);
}

int blip2_step(blip2_ctx *ctx, blip2_session *const *ss, int n, blip2_error *err)
{
    const blip2_model *m = ctx->m;
    const int D = m->cfg.t_hidden;
    int rows = 0, seqs = 0, maxctx = 0;
    for (int i = 0; i < n; i++) {
        const blip2_session *s = ss[i];
        if (s->m != m) return b2__err(err, BLIP2_EINVAL, "session belongs to another model");
        rows += blip2_session_rows(s);
        seqs += s->K;
        if (s->kv[0].cap > maxctx) maxctx = s->kv[0].cap;
    }
    if (rows == 0) return 0;
    if (m->cfg.family == B2_FAMILY_T5) return step_t5(ctx, ss, n, err);
    /* prefills in chunks only while someone else is decoding */
    int decoding = 0;
    for (int i = 0; i < n; i++) decoding |= ss[i]->state == S_RUN;
    rows = 0;
    for (int i = 0; i < n; i++) {
        blip2_session *s = ss[i];
        if (s->state == S_NEW) {
            const int left = s->Q + s->L - s->filled;
            s->take = ctx->chunk && decoding && left > ctx->chunk ? ctx->chunk : left;
            rows += s->take;
        } else {
            rows += blip2_session_rows(s);
        }
    }
    if (ctx_reserve(ctx, rows, seqs, maxctx) < 0) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    int r = 0, q = 0;
    for (int i = 0; i < n; i++) {
        blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        for (int j = 0; j < s->K; j++) ctx->kvp[q + j] = &s->kv[j];
        if (s->state == S_NEW) { /* rows filled .. filled + take of [query ; prompt] */
            const int a = s->filled, b = s->filled + s->take;
            const int qa = a < s->Q ? a : s->Q, qb = b < s->Q ? b : s->Q, pa = a > s->Q ? a : s->Q;
            memcpy(ctx->emb + (size_t)r * D, s->query + (size_t)qa * D, sizeof(float) * (size_t)(qb - qa) * D);
            if (b > pa) b2__opt_embed(m, s->prompt + (pa - s->Q), b - pa, ctx->emb + (size_t)(r + qb - qa) * D);
            for (int j = a; j < b; j++) { ctx->seq[r + j - a] = q; ctx->pos[r + j - a] = j; }
            r += s->take;
        } else {
            for (int j = 0; j < s->K; j++) {
                if (!s->live[j]) continue;
                b2__opt_embed(m, &s->pending[j], 1, ctx->emb + (size_t)r * D);
                ctx->seq[r] = q + j;
                ctx->pos[r] = s->kv[j].len;
                r++;
            }
        }
        q += s->K;
    }
    b2__opt_forward(m, &ctx->ws, ctx->emb, rows, ctx->kvp, ctx->seq, ctx->pos, ctx->hid);
    /* the rows that need logits (a prefill's last row, every decode row),
     * packed into emb (free again) for one lm_head product */
    int nl = 0;
    r = 0;
    for (int i = 0; i < n; i++) {
        const blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        if (s->state == S_NEW) {
            r += s->take;
            if (s->filled + s->take == s->Q + s->L) /* the prefill's last row */
                memcpy(ctx->emb + (size_t)nl++ * D, ctx->hid + (size_t)(r - 1) * D, sizeof(float) * D);
        } else {
            for (int j = 0; j < s->K; j++)
                if (s->live[j]) { memcpy(ctx->emb + (size_t)nl++ * D, ctx->hid + (size_t)r * D, sizeof(float) * D); r++; }
        }
    }
    b2__opt_logits(m, ctx->emb, nl, ctx->lg);
    return take_logits(ctx, ss, n, err);
}

/* After the forward pass: ctx->lg holds one row of logits per new session
 * and per live sequence, in session order.  Advances the caches and picks
 * the next tokens. */
static int take_logits(blip2_ctx *ctx, blip2_session *const *ss, int n, blip2_error *err)
{
    const blip2_model *m = ctx->m;
    int rc = 0, l = 0;
    for (int i = 0; i < n; i++) {
        blip2_session *s = ss[i];
        if (s->state == S_DONE) continue;
        if (s->state == S_NEW && m->cfg.family != B2_FAMILY_T5 && s->filled + s->take < s->Q + s->L) {
            s->filled += s->take; /* a chunk of the prefill: no token yet */
            s->kv[0].len = s->filled;
            continue;
        }
        if (s->state == S_NEW) {
            s->filled = s->Q + s->L;
            s->kv[0].len = m->cfg.family == B2_FAMILY_T5 ? 1 : s->Q + s->L;
            for (int j = 0; j < s->K; j++) { /* every sequence starts from the same prefix */
                if (j) b2__kv_copy(&s->kv[j], &s->kv[0], m);
                memcpy(s->logits + (size_t)j * s->V, ctx->lg + (size_t)l * s->V, sizeof(float) * (size_t)s->V);
            }
            l++;
            s->state = S_RUN;
        } else {
            for (int j = 0; j < s->K; j++) {
                if (!s->live[j]) continue;
                s->kv[j].len++;
                memcpy(s->logits + (size_t)j * s->V, ctx->lg + (size_t)l++ * s->V, sizeof(float) * (size_t)s->V);
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

int blip2_session_result(const blip2_session *s, blip2_result *res, blip2_error *err)
{
    memset(res, 0, sizeof *res);
    if (s->state != S_DONE) return b2__err(err, BLIP2_EINVAL, "session is not finished");
    res->seqs = calloc((size_t)s->nret, sizeof *res->seqs);
    if (!res->seqs) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    res->n = s->nret;
    for (int r = 0; r < s->nret; r++) {
        const toks *t = s->mode == M_BEAM ? &s->out[r] : &s->bt[r];
        blip2_seq_result *o = &res->seqs[r];
        o->finish = s->mode == M_BEAM ? s->out_finish[r] : s->finish[r];
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
            if (ss[i]->finish[j] == BLIP2_FINISH_CANCELED ||
                (ss[i]->mode == M_BEAM && j < nret && ss[i]->out_finish[j] == BLIP2_FINISH_CANCELED)) {
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
    blip2_gen_params p;
    blip2_gen_params_default(&p);
    p.max_new_tokens = 1;
    blip2_session *s = NULL;
    blip2_ctx *ctx = NULL;
    int rc = blip2_session_new(m, rq, &p, NULL, NULL, &s, err);
    if (rc == 0 && m->cfg.family == B2_FAMILY_T5) { /* the first decoder step */
        const int D = s->D, ne = s->Q + s->L;
        float *emb = malloc(sizeof(float) * (size_t)ne * D);
        if (emb) {
            memcpy(emb, s->query, sizeof(float) * (size_t)s->Q * D);
            b2__t5_embed(m, s->prompt, s->L, emb + (size_t)s->Q * D);
            rc = b2__t5_forward(m, emb, ne, &s->bt[0].v[0], 1, NULL, last_logits);
            if (rc == 0 && all_logits) memcpy(all_logits, last_logits, sizeof(float) * (size_t)s->V);
        }
        if (!emb || rc < 0) rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        free(emb);
        blip2_session_free(s);
        return rc;
    }
    if (rc == 0) rc = blip2_ctx_new(m, &ctx, err);
    if (rc == 0) {
        const int rows = s->Q + s->L, D = s->D;
        if (ctx_reserve(ctx, rows, 1, rows) < 0) {
            rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        } else {
            memcpy(ctx->emb, s->query, sizeof(float) * (size_t)s->Q * D);
            b2__opt_embed(m, s->prompt, s->L, ctx->emb + (size_t)s->Q * D);
            for (int j = 0; j < rows; j++) { ctx->seq[j] = 0; ctx->pos[j] = j; }
            ctx->kvp[0] = &s->kv[0];
            b2__opt_forward(m, &ctx->ws, ctx->emb, rows, ctx->kvp, ctx->seq, ctx->pos, ctx->hid);
            b2__opt_logits(m, ctx->hid + (size_t)(rows - 1) * D, 1, last_logits);
            if (all_logits) b2__opt_logits(m, ctx->hid, rows, all_logits);
        }
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
