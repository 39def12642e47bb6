/*
 * bench_matmul.c - the ViT-g products (257 rows: qkv, projection, fc1,
 * fc2) in each math the engine has, interleaved round by round so every
 * ratio is taken within seconds on a shared host: OpenBLAS sgemm (the
 * limit bench_engine measures), oneDNN f32, bf16 (bf16 weights, x rounded
 * per call) and int8 (u8 x s8, x quantised per call and the result
 * dequantised: b2__dnnl_mm_run_q whole, as the engine calls it).  Not a
 * test: `make bench`, then
 *
 *   bench/bench_matmul [--rounds N] [--rows N]
 *
 * Prints, per shape and math, the median time and GFLOP/s over N rounds
 * (default 7; each round one call per math after one warm-up call) and
 * the median over rounds of the rate over the same round's sgemm rate.
 * A math oneDNN refuses here (no native bf16, no VNNI, DNNL_MAX_CPU_ISA)
 * is printed as refused.  Weights: uniform random, 0.05 scale.
 */
#include "kernels.h"
#include "matmul_dnnl.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

enum { M_SGEMM, M_F32, M_BF16, M_INT8, M_N };
static const char *mname[M_N] = {"sgemm (OpenBLAS)", "oneDNN f32", "oneDNN bf16", "oneDNN int8"};

int main(int argc, char **argv)
{
    int rounds = 7, n = 257;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) n = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_matmul [--rounds N] [--rows N]\n");
            return 2;
        }
    }
    if (rounds < 1 || n < 1) return 2;
    const struct { const char *name; int m, k; } sh[] = {
        {"qkv", 4224, 1408}, {"projection", 1408, 1408}, {"fc1", 6144, 1408}, {"fc2", 1408, 6144}};
    printf("%s; %d rows; %d rounds\n", b2__dnnl_info(), n, rounds);
    uint64_t s = 1;
    for (size_t si = 0; si < sizeof sh / sizeof *sh; si++) {
        const int m = sh[si].m, k = sh[si].k;
        float *x = malloc(sizeof(float) * (size_t)n * k), *w = malloc(sizeof(float) * (size_t)m * k);
        float *y = malloc(sizeof(float) * (size_t)n * m);
        uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)m * k);
        int8_t *q = malloc((size_t)m * k);
        float *sc = malloc(sizeof(float) * m);
        int32_t *sum = malloc(sizeof(int32_t) * m);
        if (!x || !w || !y || !wb || !q || !sc || !sum) return 1;
        for (size_t i = 0; i < (size_t)n * k; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            x[i] = (float)((s >> 40) * (2.0 / (1 << 24)) - 1.0);
        }
        for (size_t i = 0; i < (size_t)m * k; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            w[i] = 0.05f * (float)((s >> 40) * (2.0 / (1 << 24)) - 1.0);
            uint32_t u;
            memcpy(&u, w + i, 4);
            wb[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
        }
        b2__quantize_s8(q, sc, sum, w, B2_WT_F32, m, k);
        const b2_qweights qw = {q, sc, sum};
        b2_dnnl_mm *p[M_N] = {NULL, b2__dnnl_mm(n, m, k, k, m, B2_WT_F32, B2_PREC_F32, 0),
                              b2__dnnl_mm(n, m, k, k, m, B2_WT_BF16, B2_PREC_BF16, 0),
                              b2__dnnl_mm(n, m, k, k, m, B2_WT_F32, B2_PREC_INT8, 0)};
        double *t[M_N], *ratio[M_N];
        for (int j = 0; j < M_N; j++) {
            t[j] = calloc((size_t)rounds, sizeof(double));
            ratio[j] = calloc((size_t)rounds, sizeof(double));
        }
        for (int r = -1; r < rounds; r++) { /* round -1: warm-up */
            for (int j = 0; j < M_N; j++) {
                if (j && !p[j]) continue;
                const double t0 = now();
                if (j == M_SGEMM)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, x, k, w, k, 0.0f, y, m);
                else if (j == M_F32) b2__dnnl_mm_run(p[j], y, x, w, NULL);
                else if (j == M_BF16) b2__dnnl_mm_run(p[j], y, x, wb, NULL);
                else b2__dnnl_mm_run_q(p[j], y, x, &qw, NULL);
                if (r >= 0) t[j][r] = now() - t0;
            }
            for (int j = 0; r >= 0 && j < M_N; j++) ratio[j][r] = t[M_SGEMM][r] / (t[j][r] > 0 ? t[j][r] : 1);
        }
        const double flop = 2.0 * n * m * k;
        printf("\n%s: %d x %d @ (%d x %d)^T\n", sh[si].name, n, k, m, k);
        for (int j = 0; j < M_N; j++) {
            if (j && !p[j]) {
                printf("  %-18s refused\n", mname[j]);
                continue;
            }
            const double tm = median(t[j], rounds);
            printf("  %-18s %8.2f ms %8.1f GFLOP/s %6.2fx sgemm%s%s\n", mname[j], tm * 1e3, flop / tm * 1e-9,
                   median(ratio[j], rounds), j ? "  " : "", j ? b2__dnnl_mm_impl(p[j]) : "");
        }
        for (int j = 0; j < M_N; j++) { free(t[j]); free(ratio[j]); }
        free(x); free(w); free(y); free(wb); free(q); free(sc); free(sum);
    }
    return 0;
}
