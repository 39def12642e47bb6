/*
 * beam.c - beam search bookkeeping (beam.h), as transformers 4.37.2's
 * BeamSearchScorer runs it:
 *
 *   logits (K, V) -> log_softmax -> processors -> + beam scores
 *     -> top 2K over K x V, best first (ties by index)
 *     -> for each candidate until K beams are chosen:
 *          eos:   ranked below K: dropped; else a finished hypothesis
 *                 (sum_logprobs / gen_len^length_penalty, the K best kept)
 *          other: the next beam (ids + token, a copy of its cache)
 *     -> done when K hypotheses are kept and either early_stopping or no
 *        beam's best score can beat the worst of them
 *   at the end the nret best hypotheses, eos appended when shorter than the
 *   length limit.
 */
#include "beam.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int b2__beams_init(b2_beams *b, const blip2_model *m, int K, int nret, int kv_cap, int enc_dec)
{
    memset(b, 0, sizeof *b);
    b->K = K;
    b->nret = nret;
    b->enc_dec = enc_dec;
    b->worst = 1e9f;
    b->h = calloc((size_t)K + 1, sizeof *b->h);
    b->cd = malloc(sizeof *b->cd * 2 * (size_t)K);
    b->next = calloc((size_t)K, sizeof *b->next);
    b->out = calloc((size_t)nret, sizeof *b->out);
    b->out_finish = calloc((size_t)nret, sizeof *b->out_finish);
    if (!b->h || !b->cd || !b->next || !b->out || !b->out_finish) return BLIP2_ENOMEM;
    for (int j = 0; j < K; j++)
        if (b2__kv_init(&b->next[j].kv, m, kv_cap) < 0) return BLIP2_ENOMEM;
    return 0;
}

void b2__beams_free(b2_beams *b)
{
    for (int j = 0; b->next && j < b->K; j++) {
        b2__kv_free(&b->next[j].kv);
        free(b->next[j].ids.v);
    }
    if (b->h) for (int h = 0; h <= b->K; h++) free(b->h[h].t.v);
    for (int r = 0; b->out && r < b->nret; r++) free(b->out[r].v);
    free(b->h); free(b->cd); free(b->next); free(b->out); free(b->out_finish);
    memset(b, 0, sizeof *b);
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

/* BeamHypotheses.add: keeps the K best, the slot of a dropped one reused. */
static int hyps_add(b2_beams *b, const b2_toks *t, float sum_logprobs, int gen_len, float lp)
{
    const int K = b->K;
    float score = sum_logprobs / powf((float)gen_len, lp);
    if (b->n < K || score > b->worst) {
        b2_hyp *slot = &b->h[b->n++];
        slot->score = score;
        if (b2__toks_copy(&slot->t, t) < 0) return BLIP2_ENOMEM;
        if (b->n > K) {
            int wi = 0;
            for (int i = 1; i < b->n; i++) if (b->h[i].score < b->h[wi].score) wi = i;
            b2_hyp gone = b->h[wi];
            memmove(&b->h[wi], &b->h[wi + 1], sizeof(b2_hyp) * (size_t)(b->n - wi - 1));
            b->n--;
            b->h[b->n] = gone; /* keep its buffer for reuse */
            float w = INFINITY;
            for (int i = 0; i < b->n; i++) if (b->h[i].score < w) w = b->h[i].score;
            b->worst = w;
        } else {
            b->worst = score < b->worst ? score : b->worst;
        }
    }
    return 0;
}

/* BeamHypotheses.is_done */
static int hyps_is_done(const b2_beams *b, float best_sum, int cur_len, float lp, int early)
{
    if (b->n < b->K) return 0;
    if (early) return 1;
    return b->worst >= best_sum / powf((float)(cur_len - 1), lp);
}

/* The top k of (K*V) scores, best first, ties by index. */
static void topk(const float *s, int K, int V, int k, b2_cand *out)
{
    int n = 0;
    for (int b = 0; b < K; b++)
        for (int v = 0; v < V; v++) {
            float x = s[(size_t)b * V + v];
            if (n == k && !(x > out[k - 1].score)) continue;
            int j = n < k ? n++ : k - 1;
            while (j > 0 && x > out[j - 1].score) { out[j] = out[j - 1]; j--; }
            out[j] = (b2_cand){x, b, v};
        }
}

int b2__beams_step(b2_beams *b, b2_seq *seq, float *logits, int V, const blip2_gen_params *p, int eos,
                   int cur_len)
{
    const int K = b->K;
    const float lp = p->length_penalty;
    /* 4.37.2's BeamSearchScorer scores an eos candidate by cur_len (the
     * decoder length + 1) minus the decoder prompt length: for an
     * encoder-decoder's [start] prompt (T5) that counts the eos, while the
     * reference's decoder-only path (OPT) ends up one shorter.  The
     * early-stop bound uses the same length. */
    const int extra = b->enc_dec;
    for (int j = 0; j < K; j++) {
        float *lg = logits + (size_t)j * V;
        log_softmax(lg, V);
        b2__process_logits(lg, &seq[j].ids, p, eos);
        for (int v = 0; v < V; v++) lg[v] += seq[j].score;
    }
    topk(logits, K, V, 2 * K, b->cd);
    int nb = 0;
    for (int r = 0; r < 2 * K && nb < K; r++) {
        const b2_cand *c = &b->cd[r];
        if (c->token == eos) {
            if (r >= K) continue;
            if (hyps_add(b, &seq[c->beam].ids, c->score, cur_len - 1 + extra, lp) < 0) return BLIP2_ENOMEM;
        } else {
            b2_seq *nx = &b->next[nb];
            if (b2__toks_copy(&nx->ids, &seq[c->beam].ids) < 0 || b2__toks_push(&nx->ids, c->token) < 0)
                return BLIP2_ENOMEM;
            b2__kv_copy(&nx->kv, &seq[c->beam].kv);
            seq[nb].score = c->score; /* scores and pending tokens are not read again this step */
            seq[nb].pending = c->token;
            nb++;
        }
    }
    b->done = hyps_is_done(b, b->cd[0].score, cur_len + extra, lp, p->early_stopping);
    for (int j = 0; j < K; j++) {
        b2_toks tt = seq[j].ids; seq[j].ids = b->next[j].ids; b->next[j].ids = tt;
        b2_kv kt = seq[j].kv; seq[j].kv = b->next[j].kv; b->next[j].kv = kt;
    }
    return 0;
}

int b2__beams_finish(b2_beams *b, const b2_seq *seq, const blip2_gen_params *p, int eos)
{
    const int K = b->K, max_len = 1 + p->max_new_tokens;
    const float lp = p->length_penalty;
    if (!b->done)
        for (int j = 0; j < K; j++)
            if (hyps_add(b, &seq[j].ids, seq[j].score, seq[j].ids.n - 1, lp) < 0) return BLIP2_ENOMEM;
    /* best first: a stable ascending sort popped from the end, so among equal
     * scores the later-added hypothesis wins */
    int used[65] = {0};
    for (int r = 0; r < b->nret; r++) {
        int best = -1;
        for (int h = 0; h < b->n; h++)
            if (!used[h] && (best < 0 || b->h[h].score >= b->h[best].score)) best = h;
        used[best] = 1;
        if (b2__toks_copy(&b->out[r], &b->h[best].t) < 0) return BLIP2_ENOMEM;
        b->out_finish[r] = BLIP2_FINISH_LENGTH;
        if (b->out[r].n < max_len) {
            if (b2__toks_push(&b->out[r], eos) < 0) return BLIP2_ENOMEM;
            b->out_finish[r] = BLIP2_FINISH_EOS;
        }
    }
    return 0;
}
