/*
 * bench_attention.c - the attention kernels at the real shapes, not a test:
 * `make bench/bench_attention`, then
 *
 *   bench/bench_attention [--rounds N] [--keys LIST] [--mem-gib G] [--decode-only] [--hot]
 *
 * Vision: ViT-g's self-attention (257 queries and keys, 16 heads of 88),
 * 39 layers on one qkv buffer, in f32 (b2__attention) and in bf16
 * (b2__attention_bf16, where the CPU has AVX512-BF16), alternating in every
 * round; prints the medians, GFLOP/s (two products of 2 T^2 D each) and
 * the median of the per-round ratios f32 / bf16.
 *
 * Decode: one query against LIST keys (default 53,150,250), OPT-2.7b's 32
 * heads of 80, 32 layers each with its own key and value cache (so a
 * step reads them from memory, as a decode step does): b2__attention
 * (simd->attend1, a group of heads per pool thread) against the same products
 * head by head on the pool (gemm_nt, softmax, gemm_nn per head, as
 * b2__attention took them before attend1), alternating; the time a step,
 * the cache read rate, and that rate over the memory read measured
 * alongside (G GiB, default 2).  --decode-only: no vision part.  --hot:
 * every layer reads layer 0's cache, which then stays in L2: the
 * arithmetic without the memory (a decode step finds its caches in
 * memory: the weights read since evict them).  Figures: bench/RESULTS.md.
 */
#include "kernels.h"
#include "membw.h"
#include "pool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((int)(*s >> 8) - (1 << 23)) / (float)(1 << 23);
}

/* ---- one query, head by head (the path before attend1) ---- */
typedef struct hh_job {
    float *out, *s;
    const float *q, *k, *v;
    int ld, nk, hd;
    float scale;
} hh_job;

static void hh_task(void *ctx, int h, int slot)
{
    const hh_job *j = ctx;
    const b2_simd *simd = b2__simd();
    float *s = j->s + (size_t)slot * j->nk;
    simd->gemm_nt(s, j->nk, j->q + (size_t)h * j->hd, j->ld, j->k + (size_t)h * j->hd, j->ld, 1, j->nk, j->hd,
                  j->scale, 0.0f);
    simd->softmax(s, j->nk);
    simd->gemm_nn(j->out + (size_t)h * j->hd, j->ld, s, j->nk, j->v + (size_t)h * j->hd, j->ld, 1, j->hd, j->nk,
                  1.0f);
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int main(int argc, char **argv)
{
    int rounds = 7, keys[16] = {53, 150, 250}, nkeys = 3, decode_only = 0, hot = 0;
    double mem_gib = 2;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--rounds") && a + 1 < argc) rounds = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--mem-gib") && a + 1 < argc) mem_gib = atof(argv[++a]);
        else if (!strcmp(argv[a], "--decode-only")) decode_only = 1;
        else if (!strcmp(argv[a], "--hot")) hot = 1;
        else if (!strcmp(argv[a], "--keys") && a + 1 < argc) {
            nkeys = 0;
            for (char *t = strtok(argv[++a], ","); t && nkeys < 16; t = strtok(NULL, ",")) keys[nkeys++] = atoi(t);
        } else {
            fprintf(stderr, "usage: bench_attention [--rounds N] [--keys LIST] [--mem-gib G] [--decode-only] [--hot]\n");
            return 2;
        }
    }
    qsort(keys, (size_t)nkeys, sizeof *keys, cmp_int);
    if (rounds < 1 || rounds > 1000 || nkeys < 1 || keys[0] < 1 || keys[nkeys - 1] > 4096 || mem_gib < 0.25) {
        fprintf(stderr, "bench_attention: bad arguments\n");
        return 2;
    }
    const b2_simd *simd = b2__simd();
    printf("bench_attention: kernels %s, %d threads, %d rounds\n", simd->name, b2__pool_size(), rounds);
    b2b_print_load("before");
    unsigned seed = 1;

    /* ---- vision ---- */
    if (!decode_only) {
        const int T = 257, H = 16, hd = 88, D = H * hd, L = 39;
        const float scale = 1.0f / sqrtf((float)hd);
        float *qkv = malloc(sizeof(float) * (size_t)T * 3 * D), *out = malloc(sizeof(float) * (size_t)T * D);
        float *sc = malloc(sizeof(float) * b2__attention_scratch(T, T, hd));
        const size_t bb = b2__attention_bf16_scratch(T, T, hd);
        void *sb = bb ? aligned_alloc(64, (bb + 63) / 64 * 64) : NULL;
        double *t32 = malloc(sizeof(double) * rounds), *t16 = malloc(sizeof(double) * rounds);
        double *ratio = malloc(sizeof(double) * rounds);
        if (!qkv || !out || !sc || (bb && !sb) || !t32 || !t16 || !ratio) return 1;
        for (size_t i = 0; i < (size_t)T * 3 * D; i++) qkv[i] = frand(&seed);
        for (int r = -1; r < rounds; r++) { /* round -1: warm */
            double t0 = b2b_now();
            for (int l = 0; l < L; l++) b2__attention(out, D, qkv, 3 * D, qkv + D, 3 * D, qkv + 2 * D, 3 * D, T, T, H, hd, scale, sc);
            const double a = b2b_now() - t0;
            double b = NAN;
            if (sb) {
                t0 = b2b_now();
                for (int l = 0; l < L; l++)
                    b2__attention_bf16(out, D, qkv, 3 * D, qkv + D, 3 * D, qkv + 2 * D, 3 * D, T, T, H, hd, scale, sb);
                b = b2b_now() - t0;
            }
            if (r >= 0) { t32[r] = a; t16[r] = b; ratio[r] = a / b; }
        }
        const double flop = 4.0 * T * T * D * L, m32 = b2b_median(t32, rounds);
        printf("vision attention, %d layers of %d x %d, %d heads of %d:\n", L, T, T, H, hd);
        printf("  f32   %8.1f ms  %6.1f GFLOP/s\n", m32 * 1e3, flop / m32 / 1e9);
        if (sb) {
            const double m16 = b2b_median(t16, rounds);
            printf("  bf16  %8.1f ms  %6.1f GFLOP/s   f32 over bf16: %.2fx (median of the per-round ratios)\n",
                   m16 * 1e3, flop / m16 / 1e9, b2b_median(ratio, rounds));
        } else {
            printf("  bf16  not run: this CPU has no AVX512-BF16\n");
        }
        free(qkv); free(out); free(sc); free(sb); free(t32); free(t16); free(ratio);
    }

    /* ---- decode ---- */
    {
        const int H = 32, hd = 80, D = H * hd, L = 32, maxk = keys[nkeys - 1];
        const float scale = 1.0f / sqrtf((float)hd);
        float *kc[32], *vc[32];
        float *q = malloc(sizeof(float) * D), *out = malloc(sizeof(float) * D);
        float *sc = malloc(sizeof(float) * b2__attention_scratch(1, maxk, hd));
        float *shh = malloc(sizeof(float) * (size_t)b2__pool_size() * maxk);
        const size_t memn = (size_t)(mem_gib * (1 << 30)) / sizeof(float) / 64 * 64;
        float *mem = b2b_alloc_large(memn * sizeof(float));
        double *tn = malloc(sizeof(double) * rounds), *th = malloc(sizeof(double) * rounds);
        double *ratio = malloc(sizeof(double) * rounds), *mr = malloc(sizeof(double) * (rounds + 1));
        if (!q || !out || !sc || !shh || !mem || !tn || !th || !ratio || !mr) return 1;
        for (int l = 0; l < L; l++) {
            kc[l] = malloc(sizeof(float) * (size_t)maxk * D);
            vc[l] = malloc(sizeof(float) * (size_t)maxk * D);
            if (!kc[l] || !vc[l]) return 1;
            for (size_t i = 0; i < (size_t)maxk * D; i++) { kc[l][i] = frand(&seed); vc[l][i] = frand(&seed); }
        }
        for (int i = 0; i < D; i++) q[i] = frand(&seed);
        memset(mem, 0, memn * sizeof(float));
        const char *rname;
        b2b_read_fn rd = b2b_pick_read(&rname);
        printf("decode attention, one query, %d layers%s, %d heads of %d (memory read: %s, %d threads, %.1f GiB):\n",
               L, hot ? " all on layer 0's cache (--hot)" : "", H, hd, rname, b2__pool_size(), mem_gib);
        for (int ki = 0; ki < nkeys; ki++) {
            const int nk = keys[ki];
            int nm = 0;
            for (int r = -1; r < rounds; r++) {
                if (r == -1 || r % 2 == 0) mr[nm++] = b2b_mem_pass(rd, mem, memn, b2__pool_size());
                double t0 = b2b_now();
                for (int l = 0; l < L; l++)
                    b2__attention(out, D, q, D, kc[hot ? 0 : l], D, vc[hot ? 0 : l], D, 1, nk, H, hd, scale, sc);
                const double a = b2b_now() - t0;
                t0 = b2b_now();
                for (int l = 0; l < L; l++) {
                    hh_job j = {out, shh, q, kc[hot ? 0 : l], vc[hot ? 0 : l], D, nk, hd, scale};
                    b2__parallel_for(H, hh_task, &j);
                }
                const double b = b2b_now() - t0;
                if (r >= 0) { tn[r] = a; th[r] = b; ratio[r] = b / a; }
            }
            const double bytes = 2.0 * nk * D * sizeof(float) * L, mn = b2b_median(tn, rounds);
            const double mh = b2b_median(th, rounds), lim = b2b_median(mr, nm);
            printf("  %4d keys (%6.1f MB a step): grouped %6.2f ms %5.1f GB/s %5.1f%%; head by head %6.2f ms "
                   "%5.1f GB/s %5.1f%%; head by head over grouped %.2fx\n",
                   nk, bytes / 1e6, mn * 1e3, bytes / mn / 1e9, 100 * bytes / mn / 1e9 / lim, mh * 1e3,
                   bytes / mh / 1e9, 100 * bytes / mh / 1e9 / lim, b2b_median(ratio, rounds));
        }
        for (int l = 0; l < L; l++) { free(kc[l]); free(vc[l]); }
        free(q); free(out); free(sc); free(shh); free(mem); free(tn); free(th); free(ratio); free(mr);
    }
    b2b_print_load("after");
    return 0;
}
