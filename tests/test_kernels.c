/*
 * test_kernels.c - the element-wise and attention kernels (model/compute/kernels.c,
 * kernels_avx2.c, pool.c) against double-precision references, for every
 * implementation this CPU runs (portable always, AVX2 when present), so the
 * path the golden test does not take on this machine is tested too.
 *
 *   gelu_bias  dense grid over [-12, 12] plus special values, with and
 *              without bias, odd row lengths (masked tails)
 *   softmax    lengths 1..40 and 257, wide and narrow ranges
 *   layernorm  widths 1..40 and 1408, affine and not
 *   residual   exact: h + (x + b) in float either way
 *   gemm_nn    all row / column tails of its 6 x 16 tiles
 *   gemm_nt    row tails, odd k, every alignment of w, alpha and beta
 *   convert    f16 / bf16 -> f32, every bit pattern, unaligned
 *   relu       b2__act ReLU: x > 0 ? x : +0 bit for bit (NaN, -0, infinities,
 *              subnormals; every length 0..40 and 10240, unaligned)
 *   attention  b2__attention (heads on the compute pool) vs a naive one
 *   pool       every task runs once; nested, empty and concurrent calls
 */
#include "kernels.h"
#include "pool.h"
#include "safetensors.h"
#include "tap.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(float lo, float hi)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * (1.0 / 16777216.0));
}

static double gelu_ref(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

static void test_gelu(const b2_simd *k)
{
    enum { N = 200003 };
    float *x = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * 13);
    double worst = 0, worst_x = 0;
    for (int i = 0; i < N; i++) x[i] = -12.0f + 24.0f * (float)i / (N - 1);
    float *y = malloc(sizeof(float) * N);
    memcpy(y, x, sizeof(float) * N);
    k->gelu_bias(y, NULL, 1, N);
    for (int i = 0; i < N; i++) {
        /* error relative to the float spacing of the result (min 1e-7 for values near 0) */
        double r = gelu_ref(x[i]), e = fabs(y[i] - r) / fmax(fabs(r), 1.0);
        if (!(e <= worst)) { worst = e; worst_x = x[i]; }
    }
    ok(worst < 5e-7, "%s gelu: max error %.2e (relative, floor 1) at x = %g", k->name, worst, worst_x);

    static const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, 0.99999994f, 1.0f, 1.00000012f,
                                    1.41421354f, 5.65685415f, 5.6568551f, 20.0f, -20.0f, 1e30f, -1e30f};
    const int ns = sizeof special / sizeof special[0];
    float sp[sizeof special / sizeof special[0]];
    memcpy(sp, special, sizeof sp);
    k->gelu_bias(sp, NULL, 1, (size_t)ns);
    int good = 1;
    for (int i = 0; i < ns; i++) {
        double r = gelu_ref(special[i]);
        if (!(fabs(sp[i] - r) <= 5e-7 * fmax(fabs(r), 1.0))) {
            diag("%s gelu(%g) = %.9g, expected %.9g", k->name, special[i], sp[i], r);
            good = 0;
        }
    }
    ok(good, "%s gelu: special values", k->name);
    float nanv[9];
    for (int i = 0; i < 9; i++) nanv[i] = i == 4 ? NAN : 1.0f;
    k->gelu_bias(nanv, NULL, 1, 9);
    ok(isnan(nanv[4]) && !isnan(nanv[3]), "%s gelu: NaN stays NaN", k->name);

    /* rows of 13 with a bias: the tail of every row */
    for (int j = 0; j < 13; j++) b[j] = frand(-1, 1);
    for (int i = 0; i < 13 * 7; i++) y[i] = frand(-4, 4);
    memcpy(x, y, sizeof(float) * 13 * 7);
    k->gelu_bias(y, b, 7, 13);
    worst = 0;
    for (int i = 0; i < 13 * 7; i++) {
        double r = gelu_ref((double)(x[i] + b[i % 13]));
        worst = fmax(worst, fabs(y[i] - r) / fmax(fabs(r), 1.0));
    }
    ok(worst < 5e-7, "%s gelu with bias, rows of 13: max error %.2e", k->name, worst);
    free(x);
    free(y);
    free(b);
}

static void test_softmax(const b2_simd *k)
{
    float x[300], y[300];
    double worst = 0; /* error over its allowance */
    for (int n = 1; n <= 257; n = n < 40 ? n + 1 : 257 + 2 * (n == 257)) {
        for (int range = 0; range < 2; range++) {
            for (int i = 0; i < n; i++) x[i] = range ? frand(-90, 10) : frand(-3, 3);
            memcpy(y, x, sizeof(float) * (size_t)n);
            k->softmax(y, n);
            double mx = -INFINITY, s = 0;
            for (int i = 0; i < n; i++) mx = fmax(mx, x[i]);
            for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
            for (int i = 0; i < n; i++) {
                /* x - max is rounded to float first (as torch does): allow for it */
                double r = exp((double)x[i] - mx) / s;
                double allow = r * (1e-6 + 1.2e-7 * fabs((double)x[i] - mx)) + 1e-37;
                double e = fabs(y[i] - r) / allow;
                if (!(e <= worst)) worst = e;
            }
        }
    }
    ok(worst <= 1.0, "%s softmax: lengths 1..40, 257: max error %.2f of the allowance "
       "(1e-6 + 1.2e-7 |x - max|, relative)", k->name, worst);
}

static void test_layernorm(const b2_simd *k)
{
    static float x[1408 * 3], y[1408 * 3], w[1408], b[1408];
    double worst = 0;
    for (int d = 1; d <= 1408; d = d < 40 ? d + 1 : 1408 + (d == 1408)) {
        if (d > 1408) break;
        for (int affine = 0; affine < 2; affine++) {
            b2_ln ln = {affine ? w : NULL, affine ? b : NULL, d};
            for (int i = 0; i < d; i++) { w[i] = frand(0.5f, 1.5f); b[i] = frand(-0.2f, 0.2f); }
            for (int i = 0; i < 3 * d; i++) x[i] = frand(-2, 3) + (i % 7 == 0 ? 20.0f : 0.0f);
            k->layernorm(y, x, 3, &ln, 1e-6f);
            for (int r = 0; r < 3; r++) {
                const float *xr = x + r * d;
                double s = 0, ss = 0;
                for (int i = 0; i < d; i++) s += xr[i];
                double mean = s / d;
                for (int i = 0; i < d; i++) ss += (xr[i] - mean) * (xr[i] - mean);
                double rstd = 1.0 / sqrt(ss / d + 1e-6);
                for (int i = 0; i < d; i++) {
                    double ref = (xr[i] - mean) * rstd;
                    if (affine) ref = ref * w[i] + b[i];
                    worst = fmax(worst, fabs(y[r * d + i] - ref));
                }
            }
        }
    }
    ok(worst < 2e-6, "%s layernorm: widths 1..40, 1408: max abs error %.2e", k->name, worst);
}

static void test_residual(const b2_simd *k)
{
    float h[3 * 21], h2[3 * 21], x[3 * 21], b[21];
    for (int i = 0; i < 3 * 21; i++) { h[i] = h2[i] = frand(-5, 5); x[i] = frand(-5, 5); }
    for (int i = 0; i < 21; i++) b[i] = frand(-1, 1);
    k->residual(h, x, b, 3, 21);
    int same = 1;
    for (int i = 0; i < 3 * 21; i++) same &= h[i] == h2[i] + (x[i] + b[i % 21]);
    k->residual(h, x, NULL, 3, 21);
    for (int i = 0; i < 3 * 21; i++) same &= h[i] == (h2[i] + (x[i] + b[i % 21])) + x[i];
    ok(same, "%s residual: h + (x + b) exactly", k->name);
}

static void test_gemm(const b2_simd *k)
{
    if (!k->gemm_nn) return;
    enum { MAXM = 14, MAXN = 40, MAXK = 70, LD = 48 };
    static float a[MAXM * MAXK], b[MAXK * LD], c[MAXM * LD];
    double worst = 0;
    int canary = 1;
    for (int m = 1; m <= MAXM; m++)
        for (int n = 1; n <= MAXN; n += (n < 18 ? 1 : 7))
            for (int kk = 1; kk <= MAXK; kk += 23) {
                for (int i = 0; i < m * kk; i++) a[i] = frand(-1, 1);
                for (int i = 0; i < kk * LD; i++) b[i] = frand(-1, 1);
                for (int i = 0; i < MAXM * LD; i++) c[i] = 12345.0f;
                k->gemm_nn(c, LD, a, kk, b, LD, m, n, kk, 0.5f);
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        double s = 0;
                        for (int p = 0; p < kk; p++) s += (double)a[i * kk + p] * b[p * LD + j];
                        worst = fmax(worst, fabs(c[i * LD + j] - 0.5 * s));
                    }
                    for (int j = n; j < LD; j++) canary &= c[i * LD + j] == 12345.0f;
                }
                for (int i = m; i < MAXM; i++) canary &= c[i * LD] == 12345.0f;
            }
    ok(worst < 1e-5, "%s gemm_nn: every tile tail: max abs error %.2e", k->name, worst);
    ok(canary, "%s gemm_nn: writes nothing outside c[:m, :n]", k->name);
}

/* gemm_nt: every row tail of its 6 x 2 tiles, odd widths and depths
 * (masked heads and tails), w at every alignment, leading dimensions that
 * are and are not multiples of 8, several k blocks, alpha and beta */
static void test_gemm_nt(const b2_simd *k)
{
    if (!k->gemm_nt) return;
    enum { MAXN = 14, MAXM = 7, LDX = 1203, LDY = 9 };
    static const int ks[] = {1, 5, 8, 13, 64, 515, 1200};
    float *x = malloc(sizeof(float) * MAXN * LDX), *wbuf = malloc(sizeof(float) * (MAXM * 1210 + 8));
    float y[MAXN * LDY], y0[MAXN * LDY];
    double worst = 0;
    int canary = 1;
    for (int i = 0; i < MAXN * LDX; i++) x[i] = frand(-1, 1);
    for (int i = 0; i < MAXM * 1210 + 8; i++) wbuf[i] = frand(-1, 1);
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
        for (int ldwi = 0; ldwi < 2; ldwi++)
            for (int off = 0; off < 8; off += ldwi ? 3 : 1) {
                const int kk = ks[ki], ldw = ldwi ? kk + 3 : (kk + 7) / 8 * 8;
                const float *w = wbuf + off;
                for (int n = 1; n <= MAXN; n += (kk > 100 ? 3 : 1))
                    for (int m = 1; m <= MAXM; m++) {
                        const float alpha = m & 1 ? 1.0f : 0.5f, beta = n % 3 == 0 ? 0.25f : 0.0f;
                        for (int i = 0; i < MAXN * LDY; i++) y[i] = y0[i] = frand(-1, 1);
                        k->gemm_nt(y, LDY, x, LDX, w, ldw, n, m, kk, alpha, beta);
                        for (int i = 0; i < MAXN; i++)
                            for (int j = 0; j < LDY; j++) {
                                if (i >= n || j >= m) { canary &= y[i * LDY + j] == y0[i * LDY + j]; continue; }
                                double s = 0, mag = 0;
                                for (int p = 0; p < kk; p++) {
                                    s += (double)x[i * LDX + p] * w[(size_t)j * ldw + p];
                                    mag += fabs((double)x[i * LDX + p] * w[(size_t)j * ldw + p]);
                                }
                                double ref = alpha * s + (beta != 0.0f ? beta * y0[i * LDY + j] : 0.0);
                                mag = alpha * mag + fabs(beta * y0[i * LDY + j]);
                                /* in units of float rounding of the sum of magnitudes */
                                worst = fmax(worst, fabs(y[i * LDY + j] - ref) / (mag * 0x1p-24));
                            }
                    }
            }
    ok(worst < 16, "%s gemm_nt: tails, alignments, k blocks: max error %.1f x 2^-24 sum|x w|", k->name, worst);
    ok(canary, "%s gemm_nt: writes nothing outside y[:n, :m]", k->name);
    free(x);
    free(wbuf);
}

/* every f16 / bf16 bit pattern, at an odd address, against the scalar
 * decoders of safetensors.c (NaN: any NaN) */
static void test_convert(const b2_simd *k)
{
    unsigned char *raw = malloc(2 * 65536 + 1);
    float *y = malloc(sizeof(float) * 65536);
    for (int i = 0; i < 65536; i++) { raw[1 + 2 * i] = (unsigned char)(i & 0xff); raw[2 + 2 * i] = (unsigned char)(i >> 8); }
    int same16 = 1, same_bf = 1;
    k->f16_to_f32(y, raw + 1, 65536);
    for (int i = 0; i < 65536; i++) {
        float r = b2__f16_to_f32((uint16_t)i);
        same16 &= isnan(r) ? isnan(y[i]) : memcmp(&r, &y[i], 4) == 0;
    }
    k->bf16_to_f32(y, raw + 1, 65535); /* and a tail */
    for (int i = 0; i < 65535; i++) {
        float r = b2__bf16_to_f32((uint16_t)i);
        same_bf &= isnan(r) ? isnan(y[i]) : memcmp(&r, &y[i], 4) == 0;
    }
    ok(same16, "%s f16 -> f32: all 65536 values exact", k->name);
    ok(same_bf, "%s bf16 -> f32: exact", k->name);
    free(raw);
    free(y);
}

static void test_convert_big(void)
{
    const size_t n = 3 * (1 << 20) + 77;
    uint16_t *x = malloc(2 * n);
    float *y = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = (uint16_t)(i * 2654435761u >> 7);
    b2__f16_to_f32_n(y, x, n);
    int same = 1;
    for (size_t i = 0; i < n; i++) {
        float r = b2__f16_to_f32(x[i]);
        same &= isnan(r) ? isnan(y[i]) : r == y[i];
    }
    b2__bf16_to_f32_n(y, x, n);
    for (size_t i = 0; i < n; i++) {
        float r = b2__bf16_to_f32(x[i]);
        same &= isnan(r) ? isnan(y[i]) : r == y[i];
    }
    ok(same, "f16 / bf16 -> f32 of %zu values over the pool", n);
    free(x);
    free(y);
}

/* b2__attention, dispatched, against a double-precision one */
static void test_attention(void)
{
    static const int shapes[][4] = {{257, 257, 4, 24}, {8, 257, 4, 12}, {8, 8, 3, 16}, {1, 5, 2, 7}, {13, 17, 5, 9},
                                    {1, 250, 3, 80}, {2, 53, 2, 64}, {9, 40, 2, 80}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int nq = shapes[s][0], nk = shapes[s][1], H = shapes[s][2], hd = shapes[s][3], D = H * hd;
        float *q = malloc(sizeof(float) * nq * D), *kk = malloc(sizeof(float) * nk * D);
        float *v = malloc(sizeof(float) * nk * D), *out = malloc(sizeof(float) * nq * D);
        float *sc = malloc(sizeof(float) * b2__attention_scratch(nq, nk, hd));
        double *p = malloc(sizeof(double) * nk);
        for (int i = 0; i < nq * D; i++) q[i] = frand(-1, 1);
        for (int i = 0; i < nk * D; i++) { kk[i] = frand(-1, 1); v[i] = frand(-1, 1); }
        const float scale = 1.0f / sqrtf((float)hd);
        b2__attention(out, D, q, D, kk, D, v, D, nq, nk, H, hd, scale, sc);
        double worst = 0;
        for (int h = 0; h < H; h++)
            for (int i = 0; i < nq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < nk; j++) {
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double)q[i * D + h * hd + e] * kk[j * D + h * hd + e];
                    p[j] = d * scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < nk; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int j = 0; j < nk; j++) o += p[j] / sum * v[j * D + h * hd + e];
                    worst = fmax(worst, fabs(out[i * D + h * hd + e] - o));
                }
            }
        ok(worst < 1e-5, "attention (%s) %d queries x %d keys, %d heads of %d: max abs error %.2e",
           b2__simd()->name, nq, nk, H, hd, worst);
        free(q); free(kk); free(v); free(out); free(sc); free(p);
    }
}

/* One query (decoding): b2__attention takes simd->attend1, all the heads'
 * columns of each key and value row at once; it must give the bits of the
 * head-by-head products (gemm_nt, softmax, gemm_nn) it replaces, for any
 * alignment of the rows (gemm_nt's lanes depend on it), row strides that
 * are and are not multiples of 8, head sizes with and without a tail, key
 * counts odd and even, and more heads than the pool has groups */
static void test_attention_one(void)
{
    const b2_simd *k = b2__simd();
    if (!k->attend1) {
        ok(1, "# SKIP attention of one query: the %s kernels have no attend1", k->name);
        return;
    }
    static const int shapes[][3] = {{1, 1, 8}, {2, 3, 7}, {3, 53, 16}, {32, 53, 80}, {32, 250, 80},
                                    {5, 17, 9}, {16, 257, 88}, {33, 40, 24}, {4, 64, 64}, {7, 2, 1}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int off = 0; off < 3; off++) {
            const int H = shapes[si][0], nk = shapes[si][1], hd = shapes[si][2], pad = off == 2 ? 3 : 0;
            const int ld = H * hd + pad; /* off 2: a stride that is no multiple of 8 */
            float *q = malloc(sizeof(float) * (ld + 8)), *kk = malloc(sizeof(float) * ((size_t)nk * ld + 8));
            float *v = malloc(sizeof(float) * ((size_t)nk * ld + 8));
            float *out = malloc(sizeof(float) * ld), *ref = malloc(sizeof(float) * ld);
            float *sc = malloc(sizeof(float) * b2__attention_scratch(1, nk, hd)), *s = malloc(sizeof(float) * nk);
            for (int i = 0; i < ld + 8; i++) q[i] = frand(-1, 1);
            for (int i = 0; i < nk * ld + 8; i++) { kk[i] = frand(-2, 2); v[i] = frand(-1, 1); }
            const float *qo = q + off, *ko = kk + off, *vo = v + 2 * off; /* off 1: rows not 32-byte aligned */
            const float scale = 1.0f / sqrtf((float)hd);
            b2__attention(out, ld, qo, ld, ko, ld, vo, ld, 1, nk, H, hd, scale, sc);
            for (int h = 0; h < H; h++) {
                k->gemm_nt(s, nk, qo + h * hd, ld, ko + h * hd, ld, 1, nk, hd, scale, 0.0f);
                k->softmax(s, nk);
                k->gemm_nn(ref + h * hd, ld, s, nk, vo + h * hd, ld, 1, hd, nk, 1.0f);
            }
            ok(!memcmp(out, ref, sizeof(float) * H * hd),
               "attention of one query (%s attend1), %d heads of %d, %d keys, offset %d, stride %d: "
               "the bits of gemm_nt + softmax + gemm_nn head by head", k->name, H, hd, nk, off, ld);
            free(q); free(kk); free(v); free(out); free(ref); free(sc); free(s);
        }
}

/* f32 -> bf16 -> f32, round to nearest even (no NaN here) */
static double bf16r(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    b = (b + 0x7fff + ((b >> 16) & 1)) & 0xffff0000u;
    float y;
    memcpy(&y, &b, 4);
    return y;
}

/* b2__attention_bf16 (the vision encoder's attention in bf16 math): against
 * a double-precision attention of the same bf16-rounded operands (Q, K, the
 * probabilities, V), which leaves only its f32 sums and softmax: each
 * output within 2e-6 plus, for each probability within 1 % of a bf16 ulp
 * of a rounding tie (its f32 value may round the other way), one ulp of it
 * times |v|.  Against the f32
 * attention: cosine >= 0.9999, the price of bf16 operands.  Odd head
 * sizes and key counts exercise the pair padding; row strides wider than
 * the heads, the pointers into a qkv-like buffer. */
static void test_attention_bf16(void)
{
    static const int shapes[][4] = {{257, 257, 16, 88}, {32, 257, 4, 64}, {1, 1, 1, 1}, {7, 33, 3, 9},
                                    {13, 64, 2, 32}, {6, 31, 2, 17}, {44, 44, 3, 80}, {5, 70, 1, 96}};
    int any = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int nq = shapes[si][0], nk = shapes[si][1], H = shapes[si][2], hd = shapes[si][3], D = H * hd;
        const int ld = 3 * D + 5, nr = nq > nk ? nq : nk; /* q, k, v at 0, D, 2D of each row */
        float *qkv = malloc(sizeof(float) * (size_t)nr * ld), *out = malloc(sizeof(float) * (size_t)nq * (D + 3));
        float *ref32 = malloc(sizeof(float) * (size_t)nq * D);
        void *sc = aligned_alloc(64, (b2__attention_bf16_scratch(nq, nk, hd) + 63) / 64 * 64);
        float *sc32 = malloc(sizeof(float) * b2__attention_scratch(nq, nk, hd));
        double *p = malloc(sizeof(double) * nk), *pf = malloc(sizeof(double) * nk), *tie = malloc(sizeof(double) * nk);
        for (size_t i = 0; i < (size_t)nr * ld; i++) qkv[i] = frand(-1.5f, 1.5f);
        const float scale = 1.0f / sqrtf((float)hd);
        const float *q = qkv, *kk = qkv + D, *v = qkv + 2 * D;
        if (b2__attention_bf16(out, D + 3, q, ld, kk, ld, v, ld, nq, nk, H, hd, scale, sc) < 0) {
            if (!any++) ok(1, "# SKIP attention in bf16: this CPU has no AVX512-BF16");
            free(qkv); free(out); free(ref32); free(sc); free(sc32); free(p); free(pf); free(tie);
            continue;
        }
        b2__attention(ref32, D, q, ld, kk, ld, v, ld, nq, nk, H, hd, scale, sc32);
        double worst = 0, worst_abs = 0, dot = 0, n1 = 0, n2 = 0;
        for (int h = 0; h < H; h++)
            for (int i = 0; i < nq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < nk; j++) {
                    double d = 0;
                    for (int e = 0; e < hd; e++)
                        d += bf16r(q[(size_t)i * ld + h * hd + e]) * bf16r(kk[(size_t)j * ld + h * hd + e]);
                    p[j] = d * scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < nk; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                for (int j = 0; j < nk; j++) {
                    const double x = p[j] / sum;
                    int ex;
                    (void)frexp(x, &ex);
                    const double ulp = ldexp(1.0, ex - 8), frac = x / ulp - floor(x / ulp);
                    pf[j] = bf16r((float)x);
                    tie[j] = fabs(frac - 0.5) < 0.01 ? ulp : 0;
                }
                for (int e = 0; e < hd; e++) {
                    double o = 0, slack = 2e-6;
                    for (int j = 0; j < nk; j++) {
                        const double vj = bf16r(v[(size_t)j * ld + h * hd + e]);
                        o += pf[j] * vj;
                        slack += tie[j] * fabs(vj);
                    }
                    const double got = out[(size_t)i * (D + 3) + h * hd + e], f = ref32[(size_t)i * D + h * hd + e];
                    worst = fmax(worst, fabs(got - o) / slack);
                    worst_abs = fmax(worst_abs, fabs(got - o));
                    dot += got * f;
                    n1 += got * got;
                    n2 += f * f;
                }
            }
        const double cosv = dot / sqrt(n1 * n2);
        if (si == 0) { /* nothing to attend: refused, nothing written */
            const size_t nb = sizeof(float) * (size_t)nq * (D + 3);
            float *before = malloc(nb);
            if (before) memcpy(before, out, nb);
            ok(before && b2__attention_bf16(out, D + 3, q, ld, kk, ld, v, ld, nq, 0, H, hd, scale, sc) == -1 &&
                   b2__attention_bf16(out, D + 3, q, ld, kk, ld, v, ld, 0, nk, H, hd, scale, sc) == -1 &&
                   b2__attention_bf16(out, D + 3, q, ld, kk, ld, v, ld, nq, nk, H, 0, scale, sc) == -1 &&
                   !memcmp(before, out, nb),
               "attention in bf16: no keys, no queries or empty heads give -1 and write nothing");
            free(before);
        }
        ok(worst <= 1 && cosv >= 0.9999,
           "attention in bf16, %d queries x %d keys, %d heads of %d: against the same bf16 operands in "
           "double max abs error %.2e, %.2f of its bound; cosine %.6f to the f32 attention (>= 0.9999)",
           nq, nk, H, hd, worst_abs, worst, cosv);
        free(qkv); free(out); free(ref32); free(sc); free(sc32); free(p); free(pf); free(tie);
    }
}

static int counts[1000];
static int counts[1000];
static int counts[1000];

static void count_cb(void *ctx, int t, int slot)
{
    int *bad = ctx;
    if (slot < 0 || slot >= b2__pool_size()) __atomic_store_n(bad, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&counts[t], 1, __ATOMIC_RELAXED);
}

static void nested_cb(void *ctx, int t, int slot)
{
    (void)slot;
    int *bad = ctx;
    b2__parallel_for(10, count_cb, bad); /* runs inline */
    __atomic_fetch_add(&counts[500 + t], 1, __ATOMIC_RELAXED);
}

/* several threads submitting jobs at once, each with its own counters */
typedef struct conc {
    int counts[64];
    int bad;
} conc;

static void conc_cb(void *ctx, int t, int slot)
{
    conc *c = ctx;
    (void)slot;
    __atomic_fetch_add(&c->counts[t], 1, __ATOMIC_RELAXED);
}

static void *conc_thread(void *arg)
{
    conc *c = arg;
    for (int rep = 0; rep < 3000 && !c->bad; rep++) {
        int n = 1 + rep % 64;
        memset(c->counts, 0, sizeof c->counts);
        b2__parallel_for(n, conc_cb, c);
        for (int t = 0; t < 64; t++)
            if (c->counts[t] != (t < n)) c->bad = 1;
    }
    return NULL;
}

static void test_pool_concurrent(void)
{
    enum { NT = 4 };
    pthread_t th[NT];
    conc c[NT];
    memset(c, 0, sizeof c);
    for (int i = 0; i < NT; i++) pthread_create(&th[i], NULL, conc_thread, &c[i]);
    int bad = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        bad |= c[i].bad;
    }
    ok(!bad, "pool: %d threads submitting 3000 jobs each at once: every task once", NT);
}

static void test_pool(void)
{
    int bad = 0, once = 1;
    ok(b2__pool_size() >= 1, "pool: %d threads", b2__pool_size());
    for (int rep = 0; rep < 200; rep++) {
        memset(counts, 0, sizeof counts);
        int n = 1 + rep % 37;
        b2__parallel_for(n, count_cb, &bad);
        for (int t = 0; t < 1000; t++) once &= counts[t] == (t < n);
    }
    ok(once && !bad, "pool: every task runs exactly once, slots in range");
    memset(counts, 0, sizeof counts);
    b2__parallel_for(4, nested_cb, &bad);
    int good = 1;
    for (int t = 0; t < 10; t++) good &= counts[t] == 4;
    for (int t = 0; t < 4; t++) good &= counts[500 + t] == 1;
    ok(good && !bad, "pool: nested calls run inline");
    b2__parallel_for(0, count_cb, &bad);
    ok(1, "pool: an empty job returns");
}

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* The CPU time the whole process uses in 200 ms of sleep, settle_ms after now */
static double idle_cpu_ms(long settle_ms)
{
    const struct timespec settle = {0, settle_ms * 1000 * 1000}, idle = {0, 200 * 1000 * 1000};
    nanosleep(&settle, NULL);
    const double c0 = cpu_ms();
    nanosleep(&idle, NULL);
    return cpu_ms() - c0;
}

/* Workers poll for the next job only briefly (pool.c: SPIN_NS, 50 us),
 * then sleep: an idle pool costs no CPU.  After a burst of jobs, 200 ms
 * of idleness may cost the whole process at most 20 ms of CPU time
 * (polling for ever: about 200 ms per worker). */
static void test_pool_idle(void)
{
    int bad = 0;
    for (int rep = 0; rep < 100; rep++) b2__parallel_for(4, count_cb, &bad);
    const double used = idle_cpu_ms(20);
    ok(used < 20.0 && !bad, "pool: idle after a burst of jobs, the process used %.2f ms of CPU in 200 ms (< 20)", used);
}

/* b2__pool_prefetch_next: waiting workers read a named next product's
 * first bytes.  A hint on memory unmapped since, or with tasks past its
 * end, changes nothing and faults nowhere; a standing hint is read once,
 * not polled for ever (the idle bound above holds with one in place). */
static void test_pool_prefetch(void)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), len = 64 * page;
    int bad = 0, once = 1;
    const struct timespec gap = {0, 2 * 1000 * 1000};
    char *gone = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (gone == MAP_FAILED) {
        ok(0, "pool: mmap for the prefetch hints");
        return;
    }
    munmap(gone, len);
    /* unmapped; then its tasks mostly past its end; then no hint */
    const size_t hint[][3] = {{len, len / 4, len / 4}, {page, 8 * page, len}, {0, 0, 0}};
    for (int h = 0; h < 3; h++) {
        b2__pool_prefetch_next(hint[h][0] ? gone : NULL, hint[h][0], hint[h][1], hint[h][2]);
        for (int rep = 0; rep < 20; rep++) {
            memset(counts, 0, sizeof counts);
            b2__parallel_for(8, count_cb, &bad);
            for (int t = 0; t < 1000; t++) once &= counts[t] == (t < 8);
            nanosleep(&gap, NULL); /* the workers wait, reading the hint */
        }
    }
    ok(once && !bad, "pool: prefetch hints on unmapped memory and past its end: no fault, every task once");
    char *buf = malloc((size_t)64 << 20);
    if (!buf) {
        ok(0, "pool: 64 MiB for the idle check");
        return;
    }
    memset(buf, 1, (size_t)64 << 20);
    b2__pool_prefetch_next(buf, (size_t)64 << 20, (size_t)32 << 20, (size_t)32 << 20);
    for (int rep = 0; rep < 100; rep++) b2__parallel_for(4, count_cb, &bad);
    const double used = idle_cpu_ms(50);
    b2__pool_prefetch_next(NULL, 0, 0, 0);
    free(buf);
    ok(used < 20.0 && !bad, "pool: idle with a 64 MiB hint standing, the process used %.2f ms of CPU in 200 ms (< 20)",
       used);
}

static void test_relu(void)
{
    static const float special[] = {NAN, -NAN, -0.0f, 0.0f, INFINITY, -INFINITY, 1e-45f, -1e-45f, 1.17e-38f, -3.0f, 2.5f};
    enum { NS = sizeof special / sizeof special[0] };
    int good = 1;
    float *x = malloc(sizeof(float) * (10240 + 1)), *y = malloc(sizeof(float) * (10240 + 1));
    for (int i = 0; i <= 10240; i++) x[i] = 0.5f; /* x[0] stands before the unaligned rows: set, as compared */
    for (int n = 0; n <= 10240; n = n < 40 ? n + 1 : 10240) {
        for (int off = 0; off < 2; off++) {
            for (int i = 0; i < n; i++) x[off + i] = i % 3 == 2 ? special[(i / 3) % NS] : frand(-4, 4);
            memcpy(y, x, sizeof(float) * (size_t)(n + off));
            b2__act(y + off, (size_t)n, B2_ACT_RELU);
            for (int i = 0; i < n; i++) {
                const float v = x[off + i], want = v > 0 ? v : 0.0f;
                good &= !memcmp(&y[off + i], &want, sizeof want);
            }
            good &= !off || !memcmp(y, x, sizeof *x); /* nothing before the row touched */
        }
        if (n == 10240) break;
    }
    ok(good, "relu: x > 0 ? x : +0 bit for bit (NaN and -0 give +0), lengths 0..40 and 10240, unaligned");
    free(x);
    free(y);
}

int main(void)
{
    const char *names[] = {"portable", "avx2"};
    for (int i = 0; i < 2; i++) {
        const b2_simd *k = b2__simd_get(names[i]);
        if (!k) { diag("no %s kernels on this CPU/build", names[i]); continue; }
        test_gelu(k);
        test_softmax(k);
        test_layernorm(k);
        test_residual(k);
        test_gemm(k);
        test_gemm_nt(k);
        test_convert(k);
    }
    diag("in use: %s", b2__simd()->name);
    test_relu();
    test_attention();
    test_attention_one();
    test_attention_bf16();
    test_convert_big();
    test_pool();
    test_pool_concurrent();
    test_pool_idle();
    test_pool_prefetch();
    return tap_done();
}
