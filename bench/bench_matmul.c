/*
 * bench_matmul.c - the ViT-g products (257 rows: qkv, projection, fc1,
 * fc2) in each math the engine has, interleaved round by round so every
 * ratio is taken within seconds on a shared host: OpenBLAS sgemm (the
 * limit bench_engine measures), oneDNN f32, bf16 (bf16 weights, x rounded
 * per call) and int8 (u8 x s8, x quantised per call and the result
 * dequantised: b2__dnnl_mm_run_q whole, as the engine calls it).  Not a
 * test: `make bench`, then
 *
 *   bench/bench_matmul [--rounds N] [--rows N] [--shapes vit|opt]
 *
 * Prints, per shape and math, the median time and GFLOP/s over N rounds
 * (default 7; each round one call per math after one warm-up call) and
 * the median over rounds of the rate over the same round's sgemm rate.
 * With --shapes opt: the OPT-2.7b decoder's products at a prefill of 44
 * rows instead, where the weights of a reduced GGUF are q8_0 or q4_0:
 * also oneDNN bf16 on those (each call widens them to bf16 tiles) and the
 * engine's own path for them (f32 tiles and sgemm, b2__linear in f32).
 * A math oneDNN refuses here (no native bf16, no VNNI, DNNL_MAX_CPU_ISA)
 * is printed as refused.  Weights: uniform random, 0.05 scale.
 */
#include "blip2.h"
#include "kernels.h"
#include "matmul_dnnl.h"
#include "wkernels.h"
#include "membw.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { M_SGEMM, M_F32, M_BF16, M_INT8, M_BF16_Q8, M_BF16_Q4, M_OWN_Q8, M_N };
static const char *mname[M_N] = {"sgemm (OpenBLAS)", "oneDNN f32",       "oneDNN bf16",       "oneDNN int8",
                                 "oneDNN bf16, q8_0", "oneDNN bf16, q4_0", "own f32 tiles, q8_0"};

int main(int argc, char **argv)
{
    int rounds = 7, n = 0, opt = 0;
    blip2_process_prepare(argv);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--shapes") && i + 1 < argc && (!strcmp(argv[i + 1], "vit") ||
                                                                  !strcmp(argv[i + 1], "opt")))
            opt = !strcmp(argv[++i], "opt");
        else {
            fprintf(stderr, "usage: bench_matmul [--rounds N] [--rows N] [--shapes vit|opt]\n");
            return 2;
        }
    }
    if (!n) n = opt ? 44 : 257;
    if (rounds < 1 || n < 1) return 2;
    typedef struct { const char *name; int m, k; } shape;
    static const shape vit[] = {{"qkv", 4224, 1408}, {"projection", 1408, 1408}, {"fc1", 6144, 1408},
                                {"fc2", 1408, 6144}, {NULL, 0, 0}};
    static const shape dec[] = {{"q, k, v, out", 2560, 2560}, {"fc1", 10240, 2560}, {"fc2", 2560, 10240},
                                {NULL, 0, 0}};
    const shape *sh = opt ? dec : vit;
    printf("%s; %d rows; %d rounds\n", b2__dnnl_info(), n, rounds);
    uint64_t s = 1;
    for (size_t si = 0; sh[si].name; si++) {
        const int m = sh[si].m, k = sh[si].k;
        float *x = malloc(sizeof(float) * (size_t)n * k), *w = malloc(sizeof(float) * (size_t)m * k);
        float *y = malloc(sizeof(float) * (size_t)n * m);
        uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)m * k);
        int8_t *q = malloc((size_t)m * k);
        float *sc = malloc(sizeof(float) * m);
        int32_t *sum = malloc(sizeof(int32_t) * m);
        const size_t rb8 = b2__wt_row_bytes(B2_WT_Q8_0, k), rb4 = b2__wt_row_bytes(B2_WT_Q4_0, k);
        unsigned char *w8 = malloc(rb8 * m), *w4 = malloc(rb4 * m);
        if (!x || !w || !y || !wb || !q || !sc || !sum || !w8 || !w4) return 1;
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
        for (int r = 0; r < m; r++) {
            b2__wquantize_row(w8 + r * rb8, w + (size_t)r * k, B2_WT_Q8_0, k);
            b2__wquantize_row(w4 + r * rb4, w + (size_t)r * k, B2_WT_Q4_0, k);
        }
        const b2_linear l8 = {.w = w8, .out = m, .in = k, .wt = B2_WT_Q8_0, .prec = B2_PREC_F32};
        const b2_qweights qw = {q, sc, sum};
        b2_dnnl_mm *p[M_N] = {NULL, b2__dnnl_mm(n, m, k, k, m, B2_WT_F32, B2_PREC_F32, 0),
                              b2__dnnl_mm(n, m, k, k, m, B2_WT_BF16, B2_PREC_BF16, 0),
                              b2__dnnl_mm(n, m, k, k, m, B2_WT_F32, B2_PREC_INT8, 0),
                              opt ? b2__dnnl_mm(n, m, k, k, m, B2_WT_Q8_0, B2_PREC_BF16, 0) : NULL,
                              opt ? b2__dnnl_mm(n, m, k, k, m, B2_WT_Q4_0, B2_PREC_BF16, 0) : NULL, NULL};
        double *t[M_N], *ratio[M_N];
        for (int j = 0; j < M_N; j++) {
            t[j] = calloc((size_t)rounds, sizeof(double));
            ratio[j] = calloc((size_t)rounds, sizeof(double));
        }
        for (int r = -1; r < rounds; r++) { /* round -1: warm-up */
            for (int j = 0; j < M_N; j++) {
                if (j && j != M_OWN_Q8 && !p[j]) continue;
                if (j == M_OWN_Q8 && !opt) continue;
                const double t0 = b2b_now();
                if (j == M_SGEMM)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, x, k, w, k, 0.0f, y, m);
                else if (j == M_F32) b2__dnnl_mm_run(p[j], y, x, w, NULL);
                else if (j == M_BF16) b2__dnnl_mm_run(p[j], y, x, wb, NULL);
                else if (j == M_INT8) b2__dnnl_mm_run_q(p[j], y, x, &qw, NULL);
                else if (j == M_BF16_Q8) b2__dnnl_mm_run(p[j], y, x, w8, NULL);
                else if (j == M_BF16_Q4) b2__dnnl_mm_run(p[j], y, x, w4, NULL);
                else b2__linear_nobias(y, x, n, &l8);
                if (r >= 0) t[j][r] = b2b_now() - t0;
            }
            for (int j = 0; r >= 0 && j < M_N; j++) ratio[j][r] = t[M_SGEMM][r] / (t[j][r] > 0 ? t[j][r] : 1);
        }
        const double flop = 2.0 * n * m * k;
        printf("\n%s: %d x %d @ (%d x %d)^T\n", sh[si].name, n, k, m, k);
        for (int j = 0; j < M_N; j++) {
            if (j == M_OWN_Q8 && !opt) continue;
            if (j && j != M_OWN_Q8 && !p[j]) {
                if (opt || j < M_BF16_Q8) printf("  %-20s refused\n", mname[j]);
                continue;
            }
            const double tm = b2b_median(t[j], rounds);
            printf("  %-20s %8.2f ms %8.1f GFLOP/s %6.2fx sgemm%s%s\n", mname[j], tm * 1e3, flop / tm * 1e-9,
                   b2b_median(ratio[j], rounds), p[j] ? "  " : "", p[j] ? b2__dnnl_mm_impl(p[j]) : "");
        }
        for (int j = 0; j < M_N; j++) { free(t[j]); free(ratio[j]); }
        free(x); free(w); free(y); free(wb); free(q); free(sc); free(sum); free(w8); free(w4);
    }
    return 0;
}
