/*
 * generate.c - text generation on top of the OPT decoder, reproducing
 * transformers v4.37.2 Blip2ForConditionalGeneration.generate():
 *
 *   inputs_embeds = [query_embeds (Q) ; embed(prompt ids with BOS) (L)]
 *   the returned ids start as [bos] (the prompt is not echoed), so
 *   repetition_penalty sees [bos] + new tokens and length limits count
 *   from a length of 1.
 *
 *   greedy:  logits -> repetition penalty -> min_new_tokens (eos = -inf)
 *            -> argmax; a finished row stops; all rows of a batch advance
 *            together in one decoder call per step.
 *   beam:    log_softmax -> same processors -> + beam score -> top 2K over
 *            K beams x V -> BeamSearchScorer rules (eos candidates ranked
 *            below K are dropped, hypotheses scored by sum / gen_len^lp,
 *            early stop when no beam can beat the worst kept hypothesis)
 *            -> the best hypothesis, with eos appended when shorter than
 *            the length limit.
 *
 * Scratch (KV caches, logits, workspace) is allocated once per call.
 */
#include "engine.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void blip2_gen_params_default(blip2_gen_params *p)
{
    *p = (blip2_gen_params){
        .max_new_tokens = 20, .min_new_tokens = 0, .num_beams = 1,
        .length_penalty = 1.0f, .early_stopping = 0, .repetition_penalty = 1.0f,
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

/* A growable token list. */
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
 * so far, then min_new_tokens suppressing eos. */
static void process_logits(float *x, const toks *ids, int new_tokens, const blip2_gen_params *p,
                           int eos)
{
    if (p->repetition_penalty != 1.0f)
        for (int i = 0; i < ids->n; i++) {
            float *s = &x[ids->v[i]];
            /* the reference gathers all scores first, then scatters: a repeated id is penalised once */
            int seen = 0;
            for (int j = 0; j < i && !seen; j++) seen = ids->v[j] == ids->v[i];
            if (!seen) *s = *s < 0 ? *s * p->repetition_penalty : *s / p->repetition_penalty;
        }
    if (new_tokens < p->min_new_tokens) x[eos] = -INFINITY;
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

/* Per-request prepared input. */
typedef struct prep {
    int32_t *ids;  /* prompt ids with BOS */
    int L;
} prep;

typedef struct gen {
    const blip2_model *m;
    const blip2_gen_params *p;
    int n, K, Q, D, V;
    prep *pr;
    b2_kv *kv, *kv2;    /* n*K caches, and a spare set for beam reordering */
    b2_kv **kvp;        /* pointers: row seq index -> cache */
    b2_opt_ws ws;
    float *emb, *hid, *logits;
    int *seq, *pos;
} gen;

static void gen_free(gen *g)
{
    if (g->pr) for (int i = 0; i < g->n; i++) free(g->pr[i].ids);
    free(g->pr);
    if (g->kv) for (int i = 0; i < g->n * g->K; i++) b2__kv_free(&g->kv[i]);
    if (g->kv2) for (int i = 0; i < g->n * g->K; i++) b2__kv_free(&g->kv2[i]);
    free(g->kv);
    free(g->kv2);
    free(g->kvp);
    b2__opt_ws_free(&g->ws);
    free(g->emb);
    free(g->hid);
    free(g->logits);
    free(g->seq);
    free(g->pos);
}

static int gen_init(gen *g, const blip2_model *m, const blip2_request *rq, int n,
                    const blip2_gen_params *p, blip2_error *err)
{
    const b2_config *c = &m->cfg;
    memset(g, 0, sizeof *g);
    g->m = m;
    g->p = p;
    g->n = n;
    g->K = p->num_beams;
    g->Q = c->num_query;
    g->D = c->t_hidden;
    g->V = c->t_vocab;
    g->pr = calloc((size_t)n, sizeof *g->pr);
    if (!g->pr) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    int prefill_rows = 0, max_ctx = 0;
    for (int i = 0; i < n; i++) {
        prep *pr = &g->pr[i];
        if (!rq[i].query_embeds) return b2__err(err, BLIP2_EINVAL, "request %d has no image embeddings", i);
        if (rq[i].prompt_ids && rq[i].n_prompt_ids > 0) {
            if (rq[i].n_prompt_ids > (size_t)c->t_max_pos)
                return b2__err(err, BLIP2_ETOOBIG, "prompt of request %d is too long", i);
            pr->L = (int)rq[i].n_prompt_ids;
            pr->ids = malloc(sizeof(int32_t) * (size_t)pr->L);
            if (!pr->ids) return b2__err(err, BLIP2_ENOMEM, "out of memory");
            memcpy(pr->ids, rq[i].prompt_ids, sizeof(int32_t) * (size_t)pr->L);
            for (int j = 0; j < pr->L; j++)
                if (pr->ids[j] < 0 || pr->ids[j] >= g->V)
                    return b2__err(err, BLIP2_EINVAL, "prompt id %d of request %d is outside the vocabulary",
                                   (int)pr->ids[j], i);
        } else if (rq[i].prompt && rq[i].prompt[0]) {
            size_t nn = 0;
            int rc = b2__bpe_encode(m->tok, rq[i].prompt, strlen(rq[i].prompt), 1, &pr->ids, &nn, err);
            if (rc < 0) return rc;
            pr->L = (int)(nn < (size_t)1 << 30 ? nn : (size_t)1 << 30);
        } else {
            pr->ids = malloc(sizeof(int32_t));
            if (!pr->ids) return b2__err(err, BLIP2_ENOMEM, "out of memory");
            pr->ids[0] = c->bos;
            pr->L = 1;
        }
        long total = (long)g->Q + pr->L + p->max_new_tokens;
        if (total > c->t_max_pos)
            return b2__err(err, BLIP2_ETOOBIG,
                           "prompt too long: %d query + %d prompt + %d new tokens exceed the model's %d positions",
                           g->Q, pr->L, p->max_new_tokens, c->t_max_pos);
        prefill_rows += g->Q + pr->L;
        if (total > max_ctx) max_ctx = (int)total;
    }
    const int S = n * g->K;
    int max_rows = prefill_rows > S ? prefill_rows : S;
    g->kv = calloc((size_t)S, sizeof *g->kv);
    g->kv2 = calloc((size_t)S, sizeof *g->kv2);
    g->kvp = calloc((size_t)S, sizeof *g->kvp);
    g->emb = malloc(sizeof(float) * (size_t)max_rows * g->D);
    g->hid = malloc(sizeof(float) * (size_t)max_rows * g->D);
    g->logits = malloc(sizeof(float) * (size_t)S * g->V);
    g->seq = malloc(sizeof(int) * (size_t)max_rows);
    g->pos = malloc(sizeof(int) * (size_t)max_rows);
    if (!g->kv || !g->kv2 || !g->kvp || !g->emb || !g->hid || !g->logits || !g->seq || !g->pos)
        return b2__err(err, BLIP2_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        int cap = g->Q + g->pr[i].L + p->max_new_tokens;
        for (int b = 0; b < g->K; b++) {
            if (b2__kv_init(&g->kv[i * g->K + b], m, cap) < 0 ||
                (g->K > 1 && b2__kv_init(&g->kv2[i * g->K + b], m, cap) < 0))
                return b2__err(err, BLIP2_ENOMEM, "out of memory for the KV cache");
            g->kvp[i * g->K + b] = &g->kv[i * g->K + b];
        }
    }
    if (b2__opt_ws_init(&g->ws, m, max_rows, max_ctx) < 0)
        return b2__err(err, BLIP2_ENOMEM, "out of memory");
    return 0;
}

/* Prefill every request into cache i*K (beam 0); logits of the last prompt
 * position of request i go to g->logits row i*K. */
static void prefill(gen *g, const blip2_request *rq)
{
    int r = 0;
    for (int i = 0; i < g->n; i++) {
        const int Q = g->Q, L = g->pr[i].L, s = i * g->K;
        memcpy(g->emb + (size_t)r * g->D, rq[i].query_embeds, sizeof(float) * (size_t)Q * g->D);
        b2__opt_embed(g->m, g->pr[i].ids, L, g->emb + (size_t)(r + Q) * g->D);
        for (int j = 0; j < Q + L; j++) {
            g->seq[r + j] = s;
            g->pos[r + j] = j;
        }
        r += Q + L;
    }
    b2__opt_forward(g->m, &g->ws, g->emb, r, g->kvp, g->seq, g->pos, g->hid);
    r = 0;
    for (int i = 0; i < g->n; i++) {
        const int len = g->Q + g->pr[i].L;
        r += len;
        g->kvp[i * g->K]->len = len;
        b2__opt_logits(g->m, g->hid + (size_t)(r - 1) * g->D, 1, g->logits + (size_t)i * g->K * g->V);
    }
}

/* One decoder step for `rows` sequences (indices in sidx) with tokens tok. */
static void step(gen *g, const int *sidx, const int32_t *tok, int rows)
{
    for (int j = 0; j < rows; j++) {
        b2__opt_embed(g->m, &tok[j], 1, g->emb + (size_t)j * g->D);
        g->seq[j] = sidx[j];
        g->pos[j] = g->kvp[sidx[j]]->len;
    }
    b2__opt_forward(g->m, &g->ws, g->emb, rows, g->kvp, g->seq, g->pos, g->hid);
    for (int j = 0; j < rows; j++) {
        g->kvp[sidx[j]]->len++;
        b2__opt_logits(g->m, g->hid + (size_t)j * g->D, 1, g->logits + (size_t)sidx[j] * g->V);
    }
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int greedy(gen *g, toks *out, int *finish, blip2_token_cb cb, void *user, blip2_error *err)
{
    const blip2_gen_params *p = g->p;
    const int eos = g->m->cfg.eos;
    int *active = malloc(sizeof(int) * (size_t)g->n);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)g->n);
    int rc = 0;
    if (!active || !tok) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
    int na = g->n;
    for (int i = 0; i < g->n; i++) active[i] = i;
    for (int t = 0; t < p->max_new_tokens && na > 0; t++) {
        int nn = 0;
        for (int a = 0; a < na; a++) {
            const int i = active[a];
            float *lg = g->logits + (size_t)i * g->V;
            process_logits(lg, &out[i], out[i].n - 1, p, eos);
            int32_t id = argmax(lg, g->V);
            if (toks_push(&out[i], id) < 0) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto out; }
            if (cb && cb(user, i, id)) { rc = b2__err(err, BLIP2_ECANCELED, "generation canceled"); goto out; }
            if (id == eos) finish[i] = BLIP2_FINISH_EOS;
            else { active[nn] = i; tok[nn] = id; nn++; }
        }
        na = nn;
        if (t + 1 < p->max_new_tokens && na > 0) step(g, active, tok, na);
    }
out:
    free(active);
    free(tok);
    return rc;
}

/* ---- beam search ---- */

typedef struct hyp {
    float score;
    toks t;
} hyp;

typedef struct beam_hyps {
    hyp *h;       /* up to K */
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
            /* drop the worst (first minimum), the new worst is the second smallest */
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
    float highest = best_sum / powf((float)(cur_len - 1), lp);
    return bh->worst >= highest;
}

typedef struct cand {
    float score;
    int beam;
    int32_t token;
} cand;

/* Keeps the top `k` of (K*V) scores, ordered best first, ties by index. */
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

static int beam_search(gen *g, toks *out, int *finish, blip2_token_cb cb, void *user, blip2_error *err)
{
    const blip2_gen_params *p = g->p;
    const int K = g->K, V = g->V, n = g->n, eos = g->m->cfg.eos, max_len = 1 + p->max_new_tokens;
    const float lp = p->length_penalty;
    int rc = 0;
    float *bscore = malloc(sizeof(float) * (size_t)n * K);
    toks *bt = calloc((size_t)n * K, sizeof *bt), *bt2 = calloc((size_t)n * K, sizeof *bt2);
    beam_hyps *bh = calloc((size_t)n, sizeof *bh);
    cand *cd = malloc(sizeof(cand) * 2 * (size_t)K);
    int *sidx = malloc(sizeof(int) * (size_t)n * K);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)n * K);
    if (!bscore || !bt || !bt2 || !bh || !cd || !sidx || !tok) { rc = BLIP2_ENOMEM; goto out; }
    for (int i = 0; i < n; i++) {
        if (!(bh[i].h = calloc((size_t)K + 1, sizeof(hyp)))) { rc = BLIP2_ENOMEM; goto out; }
        bh[i].worst = 1e9f;
        for (int b = 0; b < K; b++) {
            const int s = i * K + b;
            bscore[s] = b == 0 ? 0.0f : -1e9f;
            if (toks_push(&bt[s], g->m->cfg.bos) < 0) { rc = BLIP2_ENOMEM; goto out; }
            if (b > 0) { /* every beam starts from the same prefix */
                b2__kv_copy(g->kvp[s], g->kvp[i * K], g->m);
                memcpy(g->logits + (size_t)s * V, g->logits + (size_t)i * K * V, sizeof(float) * V);
            }
        }
    }
    int cur_len = 1;
    for (;;) {
        int rows = 0;
        for (int i = 0; i < n; i++) {
            if (bh[i].done) continue;
            for (int b = 0; b < K; b++) {
                const int s = i * K + b;
                float *lg = g->logits + (size_t)s * V;
                log_softmax(lg, V);
                process_logits(lg, &bt[s], cur_len - 1, p, eos);
                for (int v = 0; v < V; v++) lg[v] += bscore[s];
            }
            topk(g->logits + (size_t)i * K * V, K, V, 2 * K, cd);
            int nb = 0;
            for (int r = 0; r < 2 * K && nb < K; r++) {
                const int src = i * K + cd[r].beam;
                if (cd[r].token == eos) {
                    if (r >= K) continue;
                    if ((rc = hyps_add(&bh[i], K, &bt[src], cd[r].score, cur_len - 1, lp)) < 0) goto out;
                } else {
                    const int dst = i * K + nb;
                    if ((rc = toks_copy(&bt2[dst], &bt[src])) < 0 || (rc = toks_push(&bt2[dst], cd[r].token)) < 0)
                        goto out;
                    b2__kv_copy(&g->kv2[dst], g->kvp[src], g->m);
                    bscore[dst] = cd[r].score; /* safe: rows of request i are read via cd, not bscore */
                    tok[rows] = cd[r].token;
                    sidx[rows++] = dst;
                    nb++;
                }
            }
            bh[i].done = hyps_is_done(&bh[i], K, cd[0].score, cur_len, lp, p->early_stopping);
            for (int b = 0; b < K; b++) {
                const int s = i * K + b;
                toks tt = bt[s]; bt[s] = bt2[s]; bt2[s] = tt;
                /* the new cache content is in kv2; swap the storage */
                b2_kv kt = g->kv[s]; g->kv[s] = g->kv2[s]; g->kv2[s] = kt;
            }
        }
        cur_len++;
        if (cb && cb(user, -1, -1)) { rc = b2__err(err, BLIP2_ECANCELED, "generation canceled"); goto out; }
        int all_done = 1;
        for (int i = 0; i < n; i++) all_done &= bh[i].done;
        if (all_done || cur_len >= max_len) break;
        /* only requests still searching advance */
        int r2 = 0;
        for (int j = 0; j < rows; j++)
            if (!bh[sidx[j] / K].done) { sidx[r2] = sidx[j]; tok[r2] = tok[j]; r2++; }
        step(g, sidx, tok, r2);
    }
    for (int i = 0; i < n; i++) {
        if (!bh[i].done)
            for (int b = 0; b < K; b++)
                if ((rc = hyps_add(&bh[i], K, &bt[i * K + b], bscore[i * K + b], bt[i * K + b].n - 1, lp)) < 0)
                    goto out;
        /* best: the last of a stable ascending sort, i.e. the latest among equal maxima */
        int best = 0;
        for (int h = 1; h < bh[i].n; h++) if (bh[i].h[h].score >= bh[i].h[best].score) best = h;
        if ((rc = toks_copy(&out[i], &bh[i].h[best].t)) < 0) goto out;
        finish[i] = BLIP2_FINISH_LENGTH;
        if (out[i].n < max_len) {
            if ((rc = toks_push(&out[i], eos)) < 0) goto out;
            finish[i] = BLIP2_FINISH_EOS;
        }
    }
out:
    if (rc == BLIP2_ENOMEM) b2__err(err, rc, "out of memory in beam search");
    if (bh) for (int i = 0; i < n; i++) {
        if (bh[i].h) for (int h = 0; h <= K; h++) free(bh[i].h[h].t.v);
        free(bh[i].h);
    }
    if (bt) for (int s = 0; s < n * K; s++) free(bt[s].v);
    if (bt2) for (int s = 0; s < n * K; s++) free(bt2[s].v);
    free(bh); free(bt); free(bt2); free(bscore); free(cd); free(sidx); free(tok);
    return rc;
}

static int check_params(const blip2_model *m, int n, const blip2_gen_params *p, blip2_error *err)
{
    if (n <= 0 || n > 1024) return b2__err(err, BLIP2_EINVAL, "batch size %d out of range 1..1024", n);
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
    return 0;
}

int blip2_generate(const blip2_model *m, const blip2_request *rq, int n, const blip2_gen_params *p,
                   blip2_token_cb cb, void *user, blip2_result *res, blip2_error *err)
{
    blip2_gen_params def;
    if (!p) { blip2_gen_params_default(&def); p = &def; }
    memset(res, 0, sizeof *res);
    int rc = check_params(m, n, p, err);
    if (rc < 0) return rc;
    gen g;
    toks *out = calloc((size_t)n, sizeof *out);
    int *finish = calloc((size_t)n, sizeof *finish);
    if (!out || !finish) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto done; }
    if ((rc = gen_init(&g, m, rq, n, p, err)) < 0) goto fail;
    for (int i = 0; i < n; i++)
        if (toks_push(&out[i], m->cfg.bos) < 0) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto fail; }
    prefill(&g, rq);
    rc = p->num_beams > 1 ? beam_search(&g, out, finish, cb, user, err) : greedy(&g, out, finish, cb, user, err);
    if (rc < 0) goto fail;
    res->seqs = calloc((size_t)n, sizeof *res->seqs);
    if (!res->seqs) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto fail; }
    res->n = n;
    for (int i = 0; i < n; i++) {
        blip2_seq_result *s = &res->seqs[i];
        s->ids = out[i].v;
        s->n_ids = (size_t)out[i].n;
        s->finish = finish[i];
        out[i].v = NULL;
        if ((rc = b2__bpe_decode(m->tok, s->ids, s->n_ids, 1, &s->text, err)) < 0) goto fail;
    }
fail:
    gen_free(&g);
done:
    if (out) for (int i = 0; i < n; i++) free(out[i].v);
    free(out);
    free(finish);
    if (rc < 0) blip2_result_free(res);
    return rc;
}

int blip2_forward_logits(const blip2_model *m, const blip2_request *rq, float *last_logits,
                         float *all_logits, blip2_error *err)
{
    blip2_gen_params p;
    blip2_gen_params_default(&p);
    p.max_new_tokens = 1;
    gen g;
    int rc = gen_init(&g, m, rq, 1, &p, err);
    if (rc == 0) {
        const int rows = g.Q + g.pr[0].L;
        prefill(&g, rq);
        memcpy(last_logits, g.logits, sizeof(float) * (size_t)g.V);
        if (all_logits) b2__opt_logits(m, g.hid, rows, all_logits);
    }
    gen_free(&g);
    return rc;
}
