/*
 * bench_wtile.c - b2__linear with typed weights and many rows (vision
 * encoder, Q-Former, prefill): W is converted TILE rows at a time to f32
 * (b2__wrows_to_f32 over the compute pool) and multiplied with sgemm.
 * At one fc1 of the ViT-g (257 rows, 6144 x 1408), not a test: `make
 * bench`, then
 *
 *   bench/bench_wtile [ROWS] [--rounds N] [--sweep] [--shape OUT IN]
 *
 * Default: N rounds (15) of f32, f16, bf16, q8_0 products back to back at
 * the default tile (b2__wtile_rows), plus the conversion of the whole W
 * to f32 on one thread; prints medians, and the median over rounds of
 * each type's time over the f32 time of the same round (the host is
 * shared: a ratio taken seconds apart means little).  --sweep adds the
 * tile sizes 32..1024 (median of 5 each, against one f32 median).
 * --shape OUT IN: W (OUT, IN) instead of fc1's (6144, 1408), e.g. fc2
 * 1408 6144, qkv 4224 1408 (IN a multiple of 32, for q8_0).
 *
 * 256 rows per tile (1.4 MB of f32 at k = 1408, inside L2 with the sgemm's
 * panels) is the default, from a sweep with the earlier scalar conversion
 * (ms for tiles 32..1024, f32 sgemm 45 GFLOP/s: bf16 95/80/75/68/77/110,
 * q8_0 103/77/68/65/68/77).  Figures: bench/RESULTS.md, "GGUF at real
 * shapes" (2026-11-27), "The conversion of typed tiles".
 */
#include "kernels.h"
#include "wkernels.h"
#include "membw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double run(const b2_linear *l, float *y, const float *x, int n)
{
    double t[5];
    b2__linear(y, x, n, l); /* warm */
    for (int r = 0; r < 5; r++) {
        double t0 = b2b_now();
        b2__linear(y, x, n, l);
        t[r] = b2b_now() - t0;
    }
    return b2b_median(t, 5);
}

int main(int argc, char **argv)
{
    int n = 257, rounds = 15, sweep = 0, m = 6144, k = 1408;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--rounds") && a + 1 < argc) rounds = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--sweep")) sweep = 1;
        else if (!strcmp(argv[a], "--shape") && a + 2 < argc) { m = atoi(argv[++a]); k = atoi(argv[++a]); }
        else n = atoi(argv[a]);
    }
    if (n < 1 || rounds < 1 || rounds > 1000 || m < 1 || k < 32 || k % 32) {
        fprintf(stderr, "usage: bench_wtile [ROWS] [--rounds N] [--sweep] [--shape OUT IN]\n");
        return 2;
    }
    float *w = malloc(sizeof(float) * (size_t)m * k), *x = malloc(sizeof(float) * (size_t)n * k);
    float *y = malloc(sizeof(float) * (size_t)n * m), *wf = malloc(sizeof(float) * (size_t)m * k);
    if (!w || !x || !y || !wf) return 1;
    for (size_t i = 0; i < (size_t)m * k; i++) w[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < (size_t)n * k; i++) x[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
    const b2_wtype types[] = {B2_WT_F32, B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0};
    b2_linear l[4];
    for (int ti = 0; ti < 4; ti++) {
        const size_t rb = b2__wt_row_bytes(types[ti], k);
        unsigned char *tw = malloc(rb * m);
        if (!tw) return 1;
        for (int r = 0; r < m; r++) b2__wquantize_row(tw + r * rb, w + (size_t)r * k, types[ti], k);
        l[ti] = (b2_linear){.w = tw, .out = m, .in = k, .wt = types[ti]};
    }
    const double gf = 2.0 * n * m * k * 1e-9;
    printf("rows %d, W %dx%d, kernels %s, tile %d rows, %d rounds\n", n, m, k, b2__wkernels_name(),
           b2__wtile_rows, rounds);
    b2b_print_load("before");
    double *tl = malloc(sizeof(double) * 4 * rounds), *tc = malloc(sizeof(double) * 4 * rounds);
    double *ratio = malloc(sizeof(double) * 4 * rounds);
    for (int ti = 0; ti < 4; ti++) b2__linear(y, x, n, &l[ti]); /* warm */
    for (int r = 0; r < rounds; r++) {
        for (int ti = 0; ti < 4; ti++) {
            double t0 = b2b_now();
            b2__linear(y, x, n, &l[ti]);
            tl[ti * rounds + r] = b2b_now() - t0;
            t0 = b2b_now();
            b2__wrows_to_f32(wf, l[ti].w, types[ti], 0, m, k);
            tc[ti * rounds + r] = b2b_now() - t0;
        }
        for (int ti = 0; ti < 4; ti++) ratio[ti * rounds + r] = tl[ti * rounds + r] / tl[r];
    }
    b2b_print_load("after");
    printf("type   product ms  GFLOP/s  vs f32 (median of per-round ratios)  convert W ms (1 thread)  GB/s of W read\n");
    for (int ti = 0; ti < 4; ti++) {
        const double t = b2b_median(tl + ti * rounds, rounds), c = b2b_median(tc + ti * rounds, rounds);
        const double rt = b2b_median(ratio + ti * rounds, rounds);
        printf("%-5s  %9.2f  %7.1f  %6.2fx  %22.2f  %15.1f\n", b2__wt_name(types[ti]), t * 1e3, gf / t, rt, c * 1e3,
               (double)b2__wt_row_bytes(types[ti], k) * m / c * 1e-9);
    }
    if (sweep) {
        const double f32 = run(&l[0], y, x, n);
        printf("sweep: f32 sgemm %.2f ms (%.0f GFLOP/s)\n", f32 * 1e3, gf / f32);
        const int tiles[] = {32, 64, 128, 256, 512, 1024}, def = b2__wtile_rows;
        for (int ti = 1; ti < 4; ti++) {
            printf("%-5s", b2__wt_name(types[ti]));
            for (int s = 0; s < 6; s++) {
                b2__wtile_rows = tiles[s];
                const double t = run(&l[ti], y, x, n);
                printf("  tile %4d: %6.2f ms (%.2fx f32)", tiles[s], t * 1e3, t / f32);
            }
            printf("\n");
        }
        b2__wtile_rows = def;
    }
    for (int ti = 0; ti < 4; ti++) free((void *)l[ti].w);
    free(w); free(x); free(y); free(wf); free(tl); free(tc); free(ratio);
    return 0;
}
