/*
 * test_wrows_bf16.c - b2__wrows_to_bf16 (model/compute/matmul_dnnl.c): the
 * one-step widening of q8_0, q4_0 and f16 weight rows to bf16 that the
 * bf16 products of a reduced GGUF use must give, bit for bit, what the
 * two-step path gives (b2__wrows_to_f32, then f32 -> bf16 to nearest
 * even, written here again from the definition).  Rows of random blocks
 * plus the edges: scales 0, subnormal, negative, the largest f16 and
 * f16 infinity; q8 values -128 and 127; q4 nibbles 0 and 15; f16 values
 * 0, -0, subnormal, largest, infinities.  Several row offsets and row
 * counts.  The same rows, and bf16 rows, in oneDNN's blocked layout
 * (b2__wrows_to_bf16_blocked): every value where the layout puts it; and
 * products on converted tiles (each tile widened and multiplied on one
 * pool thread; whole tiles and a tail, at k = 2560 and 10240) equal the
 * product on the same bf16 values given as rows (relative difference
 * <= 1e-6; the same kernel, so 0 on AVX512-BF16 CPUs as measured), and
 * that product (bf16 rows copied into the tiles) is within (k + 1) 2^-24
 * sum |x w| of one in double.  257 rows of x with a row stride (rounded
 * to bf16 over the pool) give the bits of the same rows packed.  One
 * backend choice per weight.
 * Skipped where the CPU has no AVX512-BF16
 * (the function then declines: checked too).
 */
#include "matmul_dnnl.h"
#include "tap.h"
#include "wkernels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* f32 -> bf16 to nearest even, NaN kept a NaN */
static uint16_t ref_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static const uint16_t edge_scales[] = {0x0000, 0x0001, 0x03ff, 0x8400, 0x7bff, 0x3c00, 0x2e66, 0xb555};
static const uint16_t edge_halves[] = {0x0000, 0x8000, 0x0001, 0x83ff, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x3555};

/* fills rows of type t: random, with the edges in the first blocks */
static void fill(unsigned char *w, b2_wtype t, int rows, int k)
{
    const size_t rb = b2__wt_row_bytes(t, k);
    for (int r = 0; r < rows; r++) {
        unsigned char *row = w + (size_t)r * rb;
        if (t == B2_WT_F16 || t == B2_WT_BF16) { /* bf16: any 16 bits */
            for (int i = 0; i < k; i++) {
                uint16_t h = (uint16_t)(next() & 0xffff);
                if ((h & 0x7c00) == 0x7c00) h &= 0xbfff; /* NaNs only... */
                if (r == 0 && i < (int)(sizeof edge_halves / 2)) h = edge_halves[i];
                memcpy(row + 2 * i, &h, 2);
            }
            continue;
        }
        const int bytes = t == B2_WT_Q8_0 ? B2_Q8_0_BYTES : B2_Q4_0_BYTES;
        for (int b = 0; b < k / 32; b++) {
            unsigned char *blk = row + (size_t)b * bytes;
            uint16_t d = (uint16_t)(0x2000 + next() % 0x1800) ^ (uint16_t)(next() & 0x8000);
            const int e = r * (k / 32) + b;
            if (e < (int)(sizeof edge_scales / 2)) d = edge_scales[e];
            memcpy(blk, &d, 2);
            for (int i = 2; i < bytes; i++) blk[i] = (unsigned char)next();
            if (e == 1) { blk[2] = 0x80; blk[3] = 0x7f; blk[4] = 0x00; blk[5] = 0xff; blk[6] = 0xf0; }
        }
    }
}

int main(void)
{
    const b2_wtype types[] = {B2_WT_Q8_0, B2_WT_Q4_0, B2_WT_F16};
    const char *names[] = {"q8_0", "q4_0", "f16"};
    const int ks[] = {32, 96, 2560};
    uint16_t probe[32];
    unsigned char zeros[64] = {0};
    if (b2__wrows_to_bf16(probe, zeros, B2_WT_Q8_0, 0, 1, 32) < 0) {
        __builtin_cpu_init();
        ok(!(__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16")),
           "declined only where the CPU has no AVX512-BW/AVX512-BF16");
        ok(b2__wrows_to_bf16(probe, zeros, B2_WT_F32, 0, 1, 32) < 0, "... and for f32 (nothing to widen)");
        printf("# SKIP the one-step widening needs AVX512-BF16\n");
        return tap_done();
    }
    ok(b2__wrows_to_bf16(probe, zeros, B2_WT_BF16, 0, 1, 32) < 0 &&
       b2__wrows_to_bf16(probe, zeros, B2_WT_F32, 0, 1, 32) < 0, "bf16 and f32 rows are declined (nothing to widen)");
    ok(b2__wrows_to_bf16(probe, zeros, B2_WT_Q8_0, 0, 1, 48) < 0, "a row length that is no multiple of 32 is declined");
    for (int ti = 0; ti < 3; ti++)
        for (int ki = 0; ki < 3; ki++) {
            const b2_wtype t = types[ti];
            const int k = ks[ki], rows = 19;
            const size_t rb = b2__wt_row_bytes(t, k);
            unsigned char *w = malloc(rb * rows);
            float *f = malloc(sizeof(float) * (size_t)rows * k);
            uint16_t *got = malloc(sizeof(uint16_t) * ((size_t)rows * k + 1)); /* + 1: a guard */
            if (!w || !f || !got) return 1;
            fill(w, t, rows, k);
            int bad = 0, first = -1, rc = 0;
            const int spans[][2] = {{0, rows}, {3, 1}, {5, 7}};
            for (int s = 0; s < 3; s++) {
                const int r0 = spans[s][0], nr = spans[s][1];
                memset(got, 0xee, sizeof(uint16_t) * ((size_t)rows * k + 1));
                rc |= b2__wrows_to_bf16(got, w, t, r0, nr, k);
                b2__wrows_to_f32(f, w, t, r0, nr, k);
                for (size_t i = 0; i < (size_t)nr * k; i++)
                    if (got[i] != ref_bf16(f[i])) {
                        if (first < 0) first = (int)i;
                        bad++;
                    }
                if (got[(size_t)nr * k] != 0xeeee) bad++; /* nothing written past the rows */
            }
            ok(rc == 0 && bad == 0, "%s, k %d: the same bits as f32 then bf16 (rows 0..%d, 3, 5..11)%s", names[ti], k,
               rows - 1, bad ? " MISMATCH" : "");
            if (bad) printf("# %d values differ, first at %d\n", bad, first);
            free(w); free(f); free(got);
        }
    /* the blocked layout: every value where the formula puts it, each block
     * size, two row offsets, and not a value written past the rows */
    ok(b2__wrows_to_bf16_blocked(probe, zeros, B2_WT_Q8_0, 0, 16, 32, 8) < 0 &&
       b2__wrows_to_bf16_blocked(probe, zeros, B2_WT_Q8_0, 0, 24, 32, 16) < 0 &&
       b2__wrows_to_bf16_blocked(probe, zeros, B2_WT_F32, 0, 16, 32, 16) < 0,
       "blocked: a block size other than 16/32/64, rows no multiple of it, or f32 rows are declined");
    for (int ti = 0; ti < 4; ti++) /* q8_0, q4_0, f16, and bf16 copied as it is */
        for (int ki = 0; ki < 3; ki++) {
            const b2_wtype t = ti < 3 ? types[ti] : B2_WT_BF16;
            const int k = ks[ki], rows = 136;
            const size_t rb = b2__wt_row_bytes(t, k), nv = (size_t)128 * k;
            unsigned char *w = malloc(rb * rows);
            uint16_t *plain = malloc(sizeof(uint16_t) * nv), *got = malloc(sizeof(uint16_t) * (nv + 1));
            if (!w || !plain || !got) return 1;
            fill(w, t, rows, k);
            int bad = 0, rc = 0;
            const int nbs[] = {16, 32, 64};
            for (int bi = 0; bi < 3; bi++)
                for (int r0 = 0; r0 <= 8; r0 += 8) {
                    const int nb = nbs[bi], nr = 128;
                    memset(got, 0xee, sizeof(uint16_t) * (nv + 1));
                    rc |= b2__wrows_to_bf16_blocked(got, w, t, r0, nr, k, nb);
                    if (t == B2_WT_BF16) memcpy(plain, w + rb * r0, sizeof(uint16_t) * nv);
                    else rc |= b2__wrows_to_bf16(plain, w, t, r0, nr, k);
                    for (int n = 0; n < nr; n++)
                        for (int c = 0; c < k; c++) {
                            const size_t at = (size_t)(n / nb) * k * nb + (size_t)(c / 32) * 32 * nb +
                                              (size_t)((c % 32) / 2) * 2 * nb + (size_t)(n % nb) * 2 + c % 2;
                            bad += got[at] != plain[(size_t)n * k + c];
                        }
                    bad += got[nv] != 0xeeee;
                }
            ok(rc == 0 && bad == 0, "%s, k %d: blocked (16, 32, 64 rows a block) holds the same bits in oneDNN's order%s",
               ti < 3 ? names[ti] : "bf16", k, bad ? " MISMATCH" : "");
            if (bad) printf("# %d values misplaced\n", bad);
            free(w); free(plain); free(got);
        }
    /* the products: W converted tile by tile (blocked where oneDNN picks
     * that layout) against the same bf16 values given in rows */
    if (!b2__dnnl_bf16_native(NULL)) {
        printf("# SKIP the bf16 products: oneDNN has no native bf16 here\n");
        return tap_done();
    }
    for (int si = 0; si < 6; si++) {
        /* whole tiles (128 rows at k = 2560, 64 at 10240) and a tail */
        const int ti = si % 3, n = 44, k = si < 3 ? 2560 : 10240, m = si < 3 ? 10 * 128 + 96 : 3 * 64 + 32;
        const b2_wtype t = types[ti];
        const size_t rb = b2__wt_row_bytes(t, k);
        unsigned char *w = malloc(rb * m);
        uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)m * k);
        float *x = malloc(sizeof(float) * (size_t)n * k), *y = malloc(sizeof(float) * (size_t)n * m),
              *yr = malloc(sizeof(float) * (size_t)n * m), *bias = malloc(sizeof(float) * m);
        if (!w || !wb || !x || !y || !yr || !bias) return 1;
        fill(w, t, m, k);
        if (t != B2_WT_F16) /* finite scales only: the edges above would make whole columns inf or NaN */
            for (int r = 0; r < m; r++)
                for (int b = 0; b < k / 32; b++) {
                    const uint16_t d = (uint16_t)(0x1800 + next() % 0x0800);
                    memcpy(w + (size_t)r * rb + (size_t)b * (t == B2_WT_Q8_0 ? B2_Q8_0_BYTES : B2_Q4_0_BYTES), &d, 2);
                }
        else
            for (size_t i = 0; i < (size_t)m * k; i++) {
                const uint16_t h = (uint16_t)(0x2000 + next() % 0x1000) ^ (uint16_t)(next() & 0x8000);
                memcpy(w + 2 * i, &h, 2);
            }
        for (size_t i = 0; i < (size_t)n * k; i++) x[i] = (float)((int)(next() % 2001) - 1000) / 1000.0f;
        for (int r = 0; r < m; r++) bias[r] = (float)r / m;
        int rc = b2__wrows_to_bf16(wb, w, t, 0, m, k);
        b2_dnnl_mm *pt = b2__dnnl_mm(n, m, k, k, m, t, B2_PREC_BF16, 1);
        b2_dnnl_mm *pr = b2__dnnl_mm(n, m, k, k, m, B2_WT_BF16, B2_PREC_BF16, 1);
        rc |= !pt || !pr;
        if (!rc) rc |= b2__dnnl_mm_run(pt, y, x, w, bias) | b2__dnnl_mm_run(pr, yr, x, wb, bias);
        double worst = 0;
        for (size_t i = 0; !rc && i < (size_t)n * m; i++) {
            const double d = fabs((double)y[i] - yr[i]) / (fabs((double)yr[i]) + 1e-3);
            worst = d > worst ? d : worst;
        }
        ok(rc == 0 && worst <= 1e-6, "%s: %d x %d @ (%d x %d)^T + b in converted tiles (%s) = the bf16 rows' product "
           "(worst relative difference %.2g)", names[ti], n, k, m, k, pt ? b2__dnnl_mm_impl(pt) : "-", worst);
        if (ti == 0) { /* the bf16 rows' product itself, against one in double from the same bf16 values */
            double over = 0;
            for (int i = 0; !rc && i < n; i++)
                for (int r = 0; r < m; r++) {
                    double sum = bias[r], mag = fabs((double)bias[r]);
                    for (int c = 0; c < k; c++) {
                        const uint32_t xu = (uint32_t)ref_bf16(x[(size_t)i * k + c]) << 16,
                                       wu = (uint32_t)wb[(size_t)r * k + c] << 16;
                        float xf, wf;
                        memcpy(&xf, &xu, 4);
                        memcpy(&wf, &wu, 4);
                        sum += (double)xf * wf;
                        mag += fabs((double)xf * wf);
                    }
                    /* f32 sums of k + 1 exact products: at most (k + 1) 2^-24 of the magnitudes */
                    const double e = fabs(yr[(size_t)i * m + r] - sum) / ((k + 1) * 0x1p-24 * mag + 1e-30);
                    over = e > over ? e : over;
                }
            ok(rc == 0 && over <= 1, "bf16: %d x %d @ (%d x %d)^T + b in copied tiles = the product in double within "
               "(k + 1) 2^-24 sum |x w| (worst %.2g of it)", n, k, m, k, over);
        }
        free(w); free(wb); free(x); free(y); free(yr); free(bias);
    }
    /* x with a row stride (ldx > k) and enough values to be rounded over
     * the pool: the same bits as the same rows given densely */
    {
        const int n = 257, k = 1408, m = 192, ldx = k + 40;
        uint16_t *w = malloc(sizeof(uint16_t) * (size_t)m * k);
        float *xs = malloc(sizeof(float) * (size_t)n * ldx), *xd = malloc(sizeof(float) * (size_t)n * k),
              *ys = malloc(sizeof(float) * (size_t)n * m), *yd = malloc(sizeof(float) * (size_t)n * m);
        if (!w || !xs || !xd || !ys || !yd) return 1;
        for (size_t i = 0; i < (size_t)m * k; i++) w[i] = (uint16_t)(0x3c00 + next() % 0x0400) ^ (uint16_t)(next() & 0x8000);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < ldx; c++) {
                const float v = (float)((int)(next() % 20001) - 10000) / 7777.0f;
                xs[(size_t)i * ldx + c] = c < k ? v : NAN; /* the gap is never read */
                if (c < k) xd[(size_t)i * k + c] = v;
            }
        b2_dnnl_mm *ps = b2__dnnl_mm(n, m, k, ldx, m, B2_WT_BF16, B2_PREC_BF16, 0),
                   *pd = b2__dnnl_mm(n, m, k, k, m, B2_WT_BF16, B2_PREC_BF16, 0);
        const int rc = !ps || !pd || b2__dnnl_mm_run(ps, ys, xs, w, NULL) || b2__dnnl_mm_run(pd, yd, xd, w, NULL);
        ok(rc == 0 && !memcmp(ys, yd, sizeof(float) * (size_t)n * m),
           "bf16: %d rows of x %d floats apart (rounded over the pool) give the bits of the same rows packed", n, ldx);
        free(w); free(xs); free(xd); free(ys); free(yd);
    }
    /* one choice of backend per weight, whatever the row count */
    b2_dnnl_mm *a = b2__dnnl_mm(40, 256, 64, 64, 256, B2_WT_Q8_0, B2_PREC_BF16, 0),
               *b = b2__dnnl_mm(80, 256, 64, 64, 256, B2_WT_Q8_0, B2_PREC_BF16, 0),
               *c = b2__dnnl_mm(40, 320, 64, 64, 320, B2_WT_Q8_0, B2_PREC_BF16, 0);
    if (a && b && c) b2__dnnl_mm_choose(a, -1, 2.0, 1.0);
    ok(a && b && c && b2__dnnl_mm_choice(b) == -1 && b2__dnnl_mm_choice(c) == 0,
       "the choice made for 40 rows holds for 80 rows of the same weights, not for other weights");
    return tap_done();
}
