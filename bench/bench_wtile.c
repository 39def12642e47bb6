/*
 * bench_wtile.c - the tile size of b2__linear with typed weights and many
 * rows (vision encoder, Q-Former): W is converted TILE rows at a time to
 * f32 and multiplied with sgemm.  Times one fc1 of the ViT-g (257 rows,
 * 6144 x 1408) for each type and tile size, against the f32 sgemm, and
 * prints medians of 5 runs.  Not a test: `make bench`, then run it.
 *
 * One run on the shared 2-core host (portable conversion kernels, a loaded
 * moment: f32 sgemm at 45 GFLOP/s), ms for tiles 32/64/128/256/512/1024:
 * bf16 95/80/75/68/77/110, q8_0 103/77/68/65/68/77, f16 151/212/141/191/
 * 133/130 (its scalar portable conversion dominates).  256 rows (1.4 MB of
 * f32 at k = 1408, inside L2 with the sgemm's panels) is the default.
 */
#include "kernels.h"
#include "wkernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double run(const b2_linear *l, float *y, const float *x, int n)
{
    double t[5];
    b2__linear(y, x, n, l); /* warm */
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        b2__linear(y, x, n, l);
        t[r] = now() - t0;
    }
    qsort(t, 5, sizeof t[0], cmp);
    return t[2];
}

int main(int argc, char **argv)
{
    const int n = argc > 1 ? atoi(argv[1]) : 257, m = 6144, k = 1408;
    float *w = malloc(sizeof(float) * (size_t)m * k), *x = malloc(sizeof(float) * (size_t)n * k);
    float *y = malloc(sizeof(float) * (size_t)n * m);
    for (size_t i = 0; i < (size_t)m * k; i++) w[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < (size_t)n * k; i++) x[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
    b2_linear l = {w, NULL, m, k, B2_WT_F32};
    const double f32 = run(&l, y, x, n), gf = 2.0 * n * m * k * 1e-9;
    printf("rows %d, W %dx%d, kernels %s\nf32 sgemm: %.2f ms (%.0f GFLOP/s)\n", n, m, k, b2__wkernels_name(),
           f32 * 1e3, gf / f32);
    const b2_wtype types[] = {B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0};
    const int tiles[] = {32, 64, 128, 256, 512, 1024};
    for (int ti = 0; ti < 3; ti++) {
        const size_t rb = b2__wt_row_bytes(types[ti], k);
        unsigned char *tw = malloc(rb * m);
        for (int r = 0; r < m; r++) b2__wquantize_row(tw + r * rb, w + (size_t)r * k, types[ti], k);
        b2_linear lt = {tw, NULL, m, k, types[ti]};
        printf("%-5s", b2__wt_name(types[ti]));
        for (int s = 0; s < 6; s++) {
            b2__wtile_rows = tiles[s];
            const double t = run(&lt, y, x, n);
            printf("  tile %4d: %6.2f ms (%.2fx f32)", tiles[s], t * 1e3, t / f32);
        }
        printf("\n");
        free(tw);
    }
    free(w); free(x); free(y);
    return 0;
}
