/*
 * seq.c - one sequence's token list and the choice of its next token, as
 * transformers 4.37.2's generate() makes it (seq.h):
 *
 *   logits (V) -> repetition penalty -> min_new_tokens
 *     greedy:  argmax
 *     sample:  temperature -> top-k -> top-p -> softmax -> one draw
 *              (xoshiro256** seeded through splitmix64, per sequence)
 */
#include "seq.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>

int b2__toks_push(b2_toks *t, int32_t id)
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

int b2__toks_copy(b2_toks *dst, const b2_toks *src)
{
    dst->n = 0;
    for (int i = 0; i < src->n; i++)
        if (b2__toks_push(dst, src->v[i]) < 0) return BLIP2_ENOMEM;
    return 0;
}

/* Each distinct id once, as gather-then-scatter does. */
void b2__process_logits(float *x, const b2_toks *ids, const blip2_gen_params *p, int eos)
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

int32_t b2__argmax(const float *x, int n)
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

void b2__seq_seed(b2_seq *s, uint64_t seed, int j)
{
    uint64_t sm = seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(j + 1));
    for (int w = 0; w < 4; w++) s->rng[w] = splitmix(&sm);
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

int32_t b2__sample(float *x, int V, const blip2_gen_params *p, uint64_t rng[4], float *tmp)
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
