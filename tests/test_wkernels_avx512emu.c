/*
 * test_wkernels_avx512emu.c - model/compute/wkernels_avx512.c's kernels, run on a
 * CPU without AVX-512: the same source compiled with B2_WK_EMULATE, its
 * intrinsics emulated by SIMDe (model/compute/wkernels_emu.h).  This checks the
 * code's logic (tiles, tails, masks, lane sums, the VNNI q8_0 product)
 * where the hardware cannot run it; tests/test_wkernels runs the real
 * thing on a CPU that has AVX-512.
 *
 *   f32/f16/bf16  m in {1,3,4,5,9}, k in {1,7,15,16,17,33,100,1027}
 *                 (the 16-lane steps and every tail length), n in
 *                 {1,2,4,5,9}, W at byte offsets 0/1/2: within the f32
 *                 summation bound of the double product of the widened
 *                 weights, (k/8 + 6) 2^-24 sum |w x| (tests/test_wkernels),
 *                 and row i of every n-row call equal (memcmp) to the
 *                 1-row call on row i.
 *   q8_0          with and without VNNI: the same bits as the AVX2
 *                 kernel, as wkernels_avx512.c says (exact int32 block
 *                 sums either way), k in {32, 96, 1056}.
 *   q4_0          without VNNI the AVX2 kernel's bits; with VNNI (four
 *                 blocks per 512-bit step) within the f32 bound of the
 *                 double product, batch rows equal, block counts with
 *                 every remainder mod 4 (the zero-padded last step).
 * Skipped (exit 77 via TAP "1..0 # SKIP") without SIMDe or off x86.
 */
#include "tap.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__has_include)
#if __has_include(<simde/x86/avx512.h>)
#define HAVE_EMU 1
#endif
#endif

#ifndef HAVE_EMU
int main(void)
{
    printf("1..0 # SKIP no SIMDe (libsimde-dev) or not x86\n");
    return 0;
}
#else
#include "wkernels.h"
#include "wkernels_impl.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern const b2_wimpl b2__wimpl_avx512_emu, b2__wimpl_avx512_vnni_emu;

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(float lo, float hi)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * (1.0 / 16777216.0));
}

enum { NMAX = 9 };

static void test_fp(b2_wtype t)
{
    static const int MS[] = {1, 3, 4, 5, 9}, KS[] = {1, 7, 15, 16, 17, 33, 100, 1027}, NS[] = {1, 2, 4, 5, 9};
    int cases = 0, bound_ok = 1, batch_ok = 1;
    double worst = 0;
    for (size_t mi = 0; mi < sizeof MS / sizeof MS[0]; mi++)
        for (size_t ki = 0; ki < sizeof KS / sizeof KS[0]; ki++) {
            const int m = MS[mi], k = KS[ki], off = (int)((mi + ki) % 3), ldx = k + 5, ldy = m + 3;
            const size_t rb = b2__wt_row_bytes(t, k);
            unsigned char *wbuf = malloc(rb * m + 8), *w = wbuf + off;
            float *row = malloc(sizeof(float) * k), *wf = malloc(sizeof(float) * m * k);
            float *x = malloc(sizeof(float) * NMAX * ldx), *y = malloc(sizeof(float) * NMAX * ldy);
            float *y1 = malloc(sizeof(float) * ldy);
            for (int r = 0; r < m; r++) {
                const float s = r % 3 == 0 ? 0.02f : r % 3 == 1 ? 1.0f : 30.0f;
                for (int j = 0; j < k; j++) row[j] = frand(-s, s);
                b2__wquantize_row(w + rb * r, row, t, k);
            }
            b2__wrows_to_f32(wf, w, t, 0, m, k);
            for (int i = 0; i < NMAX * ldx; i++) x[i] = i % ldx < k ? frand(-1, 1) * (i / ldx % 4 == 3 ? 100.0f : 1.0f) : NAN;
            for (size_t ni = 0; ni < sizeof NS / sizeof NS[0]; ni++) {
                const int n = NS[ni];
                b2__wimpl_avx512_emu.fp(y, ldy, x, ldx, w, rb, t, n, m, k);
                for (int i = 0; i < n; i++) {
                    for (int r = 0; r < m; r++) {
                        double ref = 0, mag = 0;
                        for (int j = 0; j < k; j++) {
                            const double p = (double)wf[(size_t)r * k + j] * x[(size_t)i * ldx + j];
                            ref += p;
                            mag += fabs(p);
                        }
                        const double tol = (k / 8.0 + 6) * ldexp(1.0, -24) * mag, err = fabs(y[(size_t)i * ldy + r] - ref);
                        if (!(err <= tol)) bound_ok = 0;
                        if (tol > 0 && err / tol > worst) worst = err / tol;
                    }
                    b2__wimpl_avx512_emu.fp(y1, ldy, x + (size_t)i * ldx, ldx, w, rb, t, 1, m, k);
                    if (memcmp(y1, y + (size_t)i * ldy, sizeof(float) * m)) batch_ok = 0;
                }
                cases++;
            }
            free(wbuf); free(row); free(wf); free(x); free(y); free(y1);
        }
    ok(bound_ok, "%s (AVX-512, emulated): %d shapes within the f32 summation bound (worst %.2f of it)", b2__wt_name(t),
       cases, worst);
    ok(batch_ok, "%s (AVX-512, emulated): each row of an n-row call has the bits of the 1-row call", b2__wt_name(t));
}

/* One q8_0 or q4_0 product, m = 9 rows of k, n = 5 activation rows, ldy
 * = m + 2: the weights (every third row 40 times larger, every fourth with
 * an extreme value: q8_0 -128, |w| = 128 in VNNI's unsigned operand; q4_0
 * nibbles 0 and 15), the activations quantised, and the products of the
 * AVX2 kernel (ya), the AVX-512 table without VNNI (yp) and with (yv). */
typedef struct qcase {
    b2_wtype t;
    int k, nb, m, n, ldy;
    size_t rb;
    unsigned char *w;    /* (m, rb) */
    float *wf;           /* (m, k): w as f32 */
    float *xd;           /* (n, nb) activation block scales */
    int8_t *xq;          /* (n, k) quantised activations */
    float *ya, *yp, *yv; /* (n, ldy) each */
} qcase;

typedef void qrows_fn(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                      size_t rb, int n, int m, int k);

static qrows_fn *qrows(const b2_wimpl *im, b2_wtype t)
{
    return t == B2_WT_Q8_0 ? im->q8 : im->q4;
}

static void qcase_make(qcase *c, b2_wtype t, int k)
{
    const int m = 9, n = 5, nb = k / 32, ldy = m + 2;
    const size_t rb = b2__wt_row_bytes(t, k);
    *c = (qcase){.t = t, .k = k, .nb = nb, .m = m, .n = n, .ldy = ldy, .rb = rb};
    c->w = malloc(rb * m);
    c->wf = malloc(sizeof(float) * m * k);
    c->xd = malloc(sizeof(float) * n * nb);
    c->xq = malloc((size_t)n * k);
    c->ya = malloc(sizeof(float) * n * ldy);
    c->yp = malloc(sizeof(float) * n * ldy);
    c->yv = malloc(sizeof(float) * n * ldy);
    float *row = malloc(sizeof(float) * k), *x = malloc(sizeof(float) * k);
    for (int r = 0; r < m; r++) {
        for (int j = 0; j < k; j++) row[j] = frand(-1, 1) * (r % 3 ? 1.0f : 40.0f);
        b2__wquantize_row(c->w + rb * r, row, t, k);
        if (r % 4 == 1 && t == B2_WT_Q8_0) c->w[rb * r + 2 + (size_t)(r % 32)] = 0x80;
        if (r % 4 == 1 && t == B2_WT_Q4_0) c->w[rb * r + 2 + (size_t)(r % 16)] = 0xf0;
    }
    b2__wrows_to_f32(c->wf, c->w, t, 0, m, k);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < k; j++) x[j] = frand(-3, 3);
        b2__wquantize_act_q8(c->xq + (size_t)i * k, c->xd + (size_t)i * nb, x, k);
    }
    free(row);
    free(x);
    (t == B2_WT_Q8_0 ? b2__q8_rows_avx2 : b2__q4_rows_avx2)(c->ya, ldy, c->xq, c->xd, c->w, rb, n, m, k);
    qrows(&b2__wimpl_avx512_emu, t)(c->yp, ldy, c->xq, c->xd, c->w, rb, n, m, k);
    qrows(&b2__wimpl_avx512_vnni_emu, t)(c->yv, ldy, c->xq, c->xd, c->w, rb, n, m, k);
}

/* Whether the table without VNNI gave the AVX2 kernel's bits (*plain),
 * and each row of the VNNI n-row call the bits of a 1-row call (*batch);
 * a check that fails clears its flag. */
static void qcase_same_bits(const qcase *c, int *plain, int *batch)
{
    float *y1 = malloc(sizeof(float) * c->ldy);
    for (int i = 0; i < c->n; i++) {
        const size_t o = (size_t)i * c->ldy;
        *plain &= !memcmp(c->ya + o, c->yp + o, sizeof(float) * c->m);
        qrows(&b2__wimpl_avx512_vnni_emu, c->t)(y1, c->ldy, c->xq + (size_t)i * c->k, c->xd + (size_t)i * c->nb,
                                                 c->w, c->rb, 1, c->m, c->k);
        *batch &= !memcmp(y1, c->yv + o, sizeof(float) * c->m);
    }
    free(y1);
}

static void qcase_free(qcase *c)
{
    free(c->w); free(c->wf); free(c->xd); free(c->xq); free(c->ya); free(c->yp); free(c->yv);
}

static void test_q8(void)
{
    static const int KS[] = {32, 64, 96, 1056, 1088, 2560}; /* 1, 2, 3, 33, 34, 80 blocks */
    int same_plain = 1, batch_vnni = 1, cases = 0;
    double worst_vnni = 0;
    for (size_t ki = 0; ki < sizeof KS / sizeof KS[0]; ki++) {
        qcase c;
        qcase_make(&c, B2_WT_Q8_0, KS[ki]);
        const int k = c.k, nb = c.nb, ldy = c.ldy;
        /* VNNI: two blocks per vector, 16 lanes: within 2 gamma(k/8 + 8)
         * sum |w x| of the AVX2 result (x as quantised), and each row's
         * bits the same in a 1-row call */
        const double u = 1.0 / 16777216.0, g = (k / 8 + 8) * u / (1 - (k / 8 + 8) * u);
        for (int r = 0; r < c.m; r++) {
            const float *wf = c.wf + (size_t)r * k;
            for (int i = 0; i < c.n; i++) {
                double a = 0;
                for (int j = 0; j < k; j++) a += fabs((double)wf[j] * c.xd[(size_t)i * nb + j / 32] * c.xq[(size_t)i * k + j]);
                const double e = fabs((double)c.yv[(size_t)i * ldy + r] - c.ya[(size_t)i * ldy + r]) / (2 * g * a);
                if (!(e <= worst_vnni)) worst_vnni = e;
            }
        }
        qcase_same_bits(&c, &same_plain, &batch_vnni);
        cases++;
        qcase_free(&c);
    }
    ok(same_plain, "q8_0 (AVX-512 table without VNNI, emulated): the AVX2 kernel's bits (%d shapes)", cases);
    ok(worst_vnni <= 1, "q8_0 (AVX-512 VNNI, emulated vpdpbusd): within 2 gamma(k/8+8) sum|w x| of the AVX2 kernel "
       "(%d shapes, odd and even block counts, blocks with -128; worst %.3f of it)", cases, worst_vnni);
    ok(batch_vnni, "q8_0 (AVX-512 VNNI, emulated): each row of an n-row call has the bits of the 1-row call");
}

/* q4_0: the table without VNNI is the AVX2 kernel (same bits); the VNNI
 * kernel (four blocks per 512-bit step, unsigned nibbles, 8 * sum q_x
 * subtracted) has the same exact block sums but other f32 sums: within
 * the f32 bound (k/8 + 6) 2^-24 sum |w_j xq_j| of the double product of
 * the dequantised weights and quantised activations, and a row's bits the
 * same alone or in a batch.  Block counts 1..8 and 33 (every remainder
 * mod 4: the last step's zero-padded copies). */
static void test_q4(void)
{
    static const int KS[] = {32, 64, 96, 128, 160, 192, 224, 256, 1056};
    int same_plain = 1, bound_ok = 1, batch_ok = 1, cases = 0;
    double worst = 0;
    for (size_t ki = 0; ki < sizeof KS / sizeof KS[0]; ki++) {
        qcase c;
        qcase_make(&c, B2_WT_Q4_0, KS[ki]);
        const int k = c.k, nb = c.nb, ldy = c.ldy;
        qcase_same_bits(&c, &same_plain, &batch_ok);
        for (int i = 0; i < c.n; i++)
            for (int r = 0; r < c.m; r++) {
                double ref = 0, mag = 0;
                for (int j = 0; j < k; j++) {
                    const double p = (double)c.wf[(size_t)r * k + j] * ((double)c.xd[(size_t)i * nb + j / 32] * c.xq[(size_t)i * k + j]);
                    ref += p;
                    mag += fabs(p);
                }
                const double tol = (k / 8.0 + 6) * ldexp(1.0, -24) * mag + 1e-35, err = fabs(c.yv[(size_t)i * ldy + r] - ref);
                if (!(err <= tol)) bound_ok = 0;
                if (err / tol > worst) worst = err / tol;
            }
        cases++;
        qcase_free(&c);
    }
    ok(same_plain, "q4_0 (AVX-512 table without VNNI, emulated): the AVX2 kernel's bits (%d shapes)", cases);
    ok(bound_ok, "q4_0 (AVX-512 VNNI, emulated, four blocks a step): %d shapes within the f32 bound (worst %.3f of it; "
       "1..8 and 33 blocks, nibbles 0 and 15)", cases, worst);
    ok(batch_ok, "q4_0 (AVX-512 VNNI, emulated): each row of a 5-row call has the bits of the 1-row call");
}

int main(void)
{
    if (b2__wmatmul_rows_impl("avx2", NULL, 1, NULL, 1, NULL, B2_WT_F32, 0, 0, 0)) {
        printf("1..0 # SKIP the q8_0 comparison needs this CPU to run AVX2\n");
        return 0;
    }
    test_fp(B2_WT_F32);
    test_fp(B2_WT_F16);
    test_fp(B2_WT_BF16);
    test_q8();
    test_q4();
    return tap_done();
}
#endif
