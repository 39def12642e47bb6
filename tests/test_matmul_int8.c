/*
 * test_matmul_int8.c - the int8 products of model/compute/matmul_dnnl.c
 * (b2__quantize_s8, b2__dnnl_mm_run_q) against a double-precision product
 * of the unquantised numbers, within the bound the quantisation allows:
 *
 *   |y - x.w| <= sum_i (|w_i| sx/2 + |x_i| sw/2 + sx sw/4) + f32 slack
 *
 * (sx, sw: the row's activation and weight steps, as the quantisers
 * define them; halves of a step per element).  Cases: odd k (no multiple
 * of 4), rows all positive (zero point 0), all negative (255), of mixed
 * sign, constant, zero, with a large offset; bias and none; f32, bf16 and
 * f16 weights; a NaN weight row and a NaN activation row (quantised as 0,
 * no crash); each row's bits the same alone as in a batch (the sums are
 * exact in s32, the scales per row).  Skipped where
 * oneDNN has no VNNI (b2__dnnl_int8_native), where the product is refused.
 */
#include "kernels.h"
#include "matmul_dnnl.h"
#include "pool.h"
#include "tap.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / (1 << 24)) - 1.0);
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* the quantisers' steps, as matmul_dnnl.c defines them */
static double x_step(const float *x, int k)
{
    float lo = 0, hi = 0;
    for (int i = 0; i < k; i++) { lo = x[i] < lo ? x[i] : lo; hi = x[i] > hi ? x[i] : hi; }
    return hi > lo ? (hi - lo) / 255.0 : 1.0;
}

/* One case: x (n, k) with the given kind of rows, W (m, k) of type wt. */
static void run(const char *name, int n, int m, int k, b2_wtype wt, int bias, float xoff, float xscale)
{
    float *x = malloc(sizeof(float) * (size_t)n * k), *wf = malloc(sizeof(float) * (size_t)m * k);
    float *b = malloc(sizeof(float) * m), *y = malloc(sizeof(float) * (size_t)n * m);
    void *w = malloc(sizeof(float) * (size_t)m * k);
    int8_t *q = malloc((size_t)m * k);
    float *sc = malloc(sizeof(float) * m);
    int32_t *sum = malloc(sizeof(int32_t) * m);
    for (size_t i = 0; i < (size_t)n * k; i++) x[i] = xoff + xscale * frand();
    for (int i = 0; i < m; i++) b[i] = frand();
    for (size_t i = 0; i < (size_t)m * k; i++) {
        float v = 0.05f * frand();
        if (wt == B2_WT_BF16) {
            ((uint16_t *)w)[i] = to_bf16(v);
        } else if (wt == B2_WT_F16) {
            _Float16 h = (_Float16)v;
            memcpy((uint16_t *)w + i, &h, 2);
        } else {
            ((float *)w)[i] = v;
        }
    }
    b2__wrows_to_f32(wf, w, wt, 0, m, k); /* the numbers the weights hold */
    b2__quantize_s8(q, sc, sum, w, wt, m, k);
    int sums_ok = 1;
    for (int r = 0; r < m; r++) {
        int32_t s = 0;
        for (int i = 0; i < k; i++) s += q[(size_t)r * k + i];
        sums_ok &= s == sum[r];
    }
    ok(sums_ok, "%s: weight row sums", name);
    b2_qweights qw = {q, sc, sum};
    b2_dnnl_mm *p = b2__dnnl_mm(n, m, k, k, m, wt, B2_PREC_INT8, bias);
    if (!ok(p != NULL, "%s: %d x %d x %d int8 product created", name, n, m, k)) goto out;
    if (!ok(b2__dnnl_mm_run_q(p, y, x, &qw, bias ? b : NULL) == 0, "%s: run", name)) goto out;
    double worst = 0; /* error over its bound */
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * k;
        const double sx = x_step(xr, k);
        for (int c = 0; c < m; c++) {
            const float *wr = wf + (size_t)c * k;
            double ref = bias ? b[c] : 0, bound = 0, mag = fabs(ref);
            for (int i = 0; i < k; i++) {
                ref += (double)xr[i] * wr[i];
                bound += fabs(wr[i]) * sx / 2 + fabs(xr[i]) * sc[c] / 2 + sx * sc[c] / 4;
                mag += fabs((double)xr[i] * wr[i]);
            }
            bound += 1e-5 * mag + 1e-6;
            const double e = fabs(y[(size_t)r * m + c] - ref) / bound;
            if (!(e <= worst)) worst = e;
        }
    }
    ok(worst <= 1.0, "%s: error within the quantisation bound (worst %.3f of it)", name, worst);
out:
    free(x); free(wf); free(b); free(y); free(w); free(q); free(sc); free(sum);
}

int main(void)
{
    const char *impl = NULL;
    if (!b2__dnnl_int8_native(&impl)) {
        printf("1..0 # SKIP no native int8: %s\n", impl);
        return 0;
    }
    diag("int8 products: %s", impl);
    run("mixed, odd k, bias", 37, 29, 45, B2_WT_F32, 1, 0.0f, 1.0f);
    run("all positive (zero point 0)", 17, 64, 64, B2_WT_F32, 0, 3.0f, 1.0f);
    run("all negative (zero point 255)", 17, 64, 64, B2_WT_F32, 1, -3.0f, 1.0f);
    run("large offset", 9, 33, 100, B2_WT_F32, 1, 50.0f, 0.5f);
    run("constant rows", 5, 16, 32, B2_WT_F32, 1, 2.0f, 0.0f);
    run("zero rows", 5, 16, 32, B2_WT_F32, 1, 0.0f, 0.0f);
    run("bf16 weights, ViT-like k", 20, 96, 1408, B2_WT_BF16, 1, 0.1f, 2.0f);
    run("f16 weights", 20, 48, 256, B2_WT_F16, 0, 0.0f, 4.0f);

    /* NaN in a weight row and in an activation row: finite elsewhere, no crash */
    {
        const int n = 4, m = 8, k = 16;
        float x[4 * 16], w[8 * 16], y[4 * 8];
        int8_t q[8 * 16];
        float sc[8];
        int32_t sum[8];
        for (int i = 0; i < n * k; i++) x[i] = frand();
        for (int i = 0; i < m * k; i++) w[i] = frand();
        w[3 * k + 5] = NAN;
        x[2 * k + 7] = NAN;
        b2__quantize_s8(q, sc, sum, w, B2_WT_F32, m, k);
        b2_qweights qw = {q, sc, sum};
        b2_dnnl_mm *p = b2__dnnl_mm(n, m, k, k, m, B2_WT_F32, B2_PREC_INT8, 0);
        int fin = p && b2__dnnl_mm_run_q(p, y, x, &qw, NULL) == 0;
        for (int r = 0; fin && r < n; r++)
            for (int c = 0; c < m; c++) fin &= isfinite(y[r * m + c]) != 0;
        ok(fin && q[3 * k + 5] == 0, "NaN weight and activation quantised as 0, results finite");
    }

    /* a row alone gives the bits it gets in a batch of 40 */
    {
        const int n = 40, m = 64, k = 128;
        float *x = malloc(sizeof(float) * n * k), *w = malloc(sizeof(float) * m * k);
        float *y = malloc(sizeof(float) * n * m), y1[64];
        int8_t *q = malloc((size_t)m * k);
        float sc[64];
        int32_t sum[64];
        for (int i = 0; i < n * k; i++) x[i] = frand();
        for (int i = 0; i < m * k; i++) w[i] = frand();
        b2__quantize_s8(q, sc, sum, w, B2_WT_F32, m, k);
        b2_qweights qw = {q, sc, sum};
        b2_dnnl_mm *p = b2__dnnl_mm(n, m, k, k, m, B2_WT_F32, B2_PREC_INT8, 0);
        b2_dnnl_mm *p1 = b2__dnnl_mm(1, m, k, k, m, B2_WT_F32, B2_PREC_INT8, 0);
        int same = p && p1 && b2__dnnl_mm_run_q(p, y, x, &qw, NULL) == 0;
        for (int r = 0; same && r < n; r += 13)
            same = b2__dnnl_mm_run_q(p1, y1, x + (size_t)r * k, &qw, NULL) == 0 &&
                   !memcmp(y1, y + (size_t)r * m, sizeof y1);
        ok(same, "a row's bits alone equal its bits in a batch of %d", n);
        free(x); free(w); free(y); free(q);
    }
    return tap_done();
}
