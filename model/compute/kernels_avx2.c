/*
 * kernels_avx2.c - the element-wise kernels of kernels.c in AVX2 + FMA, for
 * x86-64 CPUs that have them (chosen at run time by b2__simd(); every
 * function carries __attribute__((target)), so the file builds with the
 * default flags and nothing here runs on a CPU without AVX2, FMA and F16C).
 *
 *   gelu_bias   x = x + b (row broadcast), then 0.5 x (1 + erf(x / sqrt 2))
 *               with a polynomial erf: |z| < 1: z P(z^2); 1 <= |z| < 4:
 *               1 - erfc(z), erfc a polynomial in (|z| - 2.5) / 1.5;
 *               |z| >= 4: 1.  Within ~1 ulp of libm's erff (test_kernels).
 *   softmax     max, exp(x - max) (Cody-Waite reduction + degree-6
 *               polynomial, ~1 ulp), sum, scale
 *   layernorm   mean and variance accumulated in double, as the portable
 *               path does; the affine step without FMA, so the output
 *               matches the portable path up to the summation order
 *   residual    h += x + b
 *   gemm_nn     the two products of attention per head (register-tiled)
 *   gemm_nt     x W^T for x with 2..64 rows, W streamed without repacking
 *   f16/bf16    to f32 (F16C), for checkpoints at load
 * Row tails shorter than 8 use masked loads and stores.
 */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#define B2_AVX2 __attribute__((target("avx2,fma")))

/* Polynomials fitted with mpmath.chebyfit (highest degree first). */
/* erf(z) / z as a polynomial in u = z^2 on [0, 1]; abs. error 3.4e-11 */
static const float ERF_A[8] = {
    -9.667044571e-06f, 1.126595903e-04f, -8.484080406e-04f, 5.221031808e-03f,
    -2.686543073e-02f, 1.128378250e-01f, -3.761263847e-01f, 1.128379167e+00f};
/* erfc(2.5 + 1.5 t) on t in [-1, 1]; abs. error 1.0e-9 */
static const float ERFC_B[16] = {
    1.620658188e-04f, -2.608195591e-04f, -7.047926039e-04f, 2.042900234e-03f,
    -6.245496265e-04f, -4.681335134e-03f, 9.707038428e-03f, -6.627765269e-03f,
    -9.289363699e-03f, 3.186476684e-02f, -4.645088560e-02f, 4.365212417e-02f,
    -2.818168221e-02f, 1.225278746e-02f, -3.267425330e-03f, 4.069524920e-04f};
/* exp(r) on [-ln2/2, ln2/2]; rel. error 2.0e-9 */
static const float EXP_P[7] = {
    1.394110843e-03f, 8.375126398e-03f, 4.166635290e-02f, 1.666641551e-01f,
    5.000000047e-01f, 1.000000038e+00f, 1.000000000e+00f};

B2_AVX2 static inline __m256 horner(__m256 x, const float *c, int n)
{
    __m256 p = _mm256_set1_ps(c[0]);
#pragma GCC unroll 16
    for (int i = 1; i < n; i++) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c[i]));
    return p;
}

/* Lanes i < n set (n in 0..8). */
B2_AVX2 static inline __m256i tail_mask(int n)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

B2_AVX2 static inline __m256 erf8(__m256 z)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 a = _mm256_andnot_ps(sign, z);
    __m256 ra = _mm256_mul_ps(a, horner(_mm256_mul_ps(a, a), ERF_A, 8));
    __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_min_ps(a, _mm256_set1_ps(4.0f)), _mm256_set1_ps(2.5f)),
                             _mm256_set1_ps(1.0f / 1.5f));
    __m256 rb = _mm256_sub_ps(_mm256_set1_ps(1.0f), horner(t, ERFC_B, 16));
    __m256 r = _mm256_blendv_ps(ra, rb, _mm256_cmp_ps(a, _mm256_set1_ps(1.0f), _CMP_GE_OQ));
    r = _mm256_blendv_ps(r, _mm256_set1_ps(1.0f), _mm256_cmp_ps(a, _mm256_set1_ps(4.0f), _CMP_GE_OQ));
    return _mm256_or_ps(r, _mm256_and_ps(sign, z)); /* NaN in -> NaN out (ra is NaN) */
}

B2_AVX2 static inline __m256 gelu8(__m256 x)
{
    __m256 e = erf8(_mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f)));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* exp(x); x below -87.3 gives ~1e-38 instead of 0 or a subnormal. */
B2_AVX2 static inline __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  /* ln2 hi (exact in 9 bits) */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);      /* ln2 lo */
    __m256 p = horner(r, EXP_P, 7);
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

B2_AVX2 static void gelu_bias(float *x, const float *b, size_t n, size_t d)
{
    for (size_t i = 0; i < n; i++) {
        float *xi = x + i * d;
        size_t j = 0;
        /* four independent vectors per step: the polynomials are latency-bound */
        for (; j + 32 <= d; j += 32) {
            __m256 v0 = _mm256_loadu_ps(xi + j), v1 = _mm256_loadu_ps(xi + j + 8);
            __m256 v2 = _mm256_loadu_ps(xi + j + 16), v3 = _mm256_loadu_ps(xi + j + 24);
            if (b) {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(b + j));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(b + j + 8));
                v2 = _mm256_add_ps(v2, _mm256_loadu_ps(b + j + 16));
                v3 = _mm256_add_ps(v3, _mm256_loadu_ps(b + j + 24));
            }
            _mm256_storeu_ps(xi + j, gelu8(v0));
            _mm256_storeu_ps(xi + j + 8, gelu8(v1));
            _mm256_storeu_ps(xi + j + 16, gelu8(v2));
            _mm256_storeu_ps(xi + j + 24, gelu8(v3));
        }
        for (; j + 8 <= d; j += 8) {
            __m256 v = _mm256_loadu_ps(xi + j);
            if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
            _mm256_storeu_ps(xi + j, gelu8(v));
        }
        if (j < d) {
            __m256i m = tail_mask((int)(d - j));
            __m256 v = _mm256_maskload_ps(xi + j, m);
            if (b) v = _mm256_add_ps(v, _mm256_maskload_ps(b + j, m));
            _mm256_maskstore_ps(xi + j, m, gelu8(v));
        }
    }
}

B2_AVX2 static float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

B2_AVX2 static float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

B2_AVX2 static double hsum4d(__m256d v)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

B2_AVX2 static void softmax(float *x, int n)
{
    int j = 0;
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
    float mx = hmax8(vm);
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vs = _mm256_setzero_ps(), vs1 = vs;
    for (j = 0; j + 16 <= n; j += 16) {
        __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vmx));
        __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vmx));
        _mm256_storeu_ps(x + j, e0);
        _mm256_storeu_ps(x + j + 8, e1);
        vs = _mm256_add_ps(vs, e0);
        vs1 = _mm256_add_ps(vs1, e1);
    }
    vs = _mm256_add_ps(vs, vs1);
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vmx));
        _mm256_storeu_ps(x + j, e);
        vs = _mm256_add_ps(vs, e);
    }
    if (j < n) {
        __m256i m = tail_mask(n - j);
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(x + j, m), vmx)), _mm256_castsi256_ps(m));
        _mm256_maskstore_ps(x + j, m, e);
        vs = _mm256_add_ps(vs, e);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum8(vs));
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
    if (j < n) {
        __m256i m = tail_mask(n - j);
        _mm256_maskstore_ps(x + j, m, _mm256_mul_ps(_mm256_maskload_ps(x + j, m), inv));
    }
}

B2_AVX2 static void layernorm(float *y, const float *x, int n, const b2_ln *ln, float eps)
{
    const int d = ln->d;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        __m256d s0 = _mm256_setzero_pd(), s1 = s0;
        int j = 0;
        for (; j + 8 <= d; j += 8) {
            s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm_loadu_ps(xi + j)));
            s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm_loadu_ps(xi + j + 4)));
        }
        double s = hsum4d(_mm256_add_pd(s0, s1));
        for (; j < d; j++) s += xi[j];
        const double mean = s / d;
        const __m256d vmean = _mm256_set1_pd(mean);
        s0 = s1 = _mm256_setzero_pd();
        for (j = 0; j + 8 <= d; j += 8) {
            __m256d t0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xi + j)), vmean);
            __m256d t1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xi + j + 4)), vmean);
            s0 = _mm256_add_pd(s0, _mm256_mul_pd(t0, t0));
            s1 = _mm256_add_pd(s1, _mm256_mul_pd(t1, t1));
        }
        double ss = hsum4d(_mm256_add_pd(s0, s1));
        for (; j < d; j++) { double t = xi[j] - mean; ss += t * t; }
        const float rstd = (float)(1.0 / sqrt(ss / d + (double)eps)), fm = (float)mean;
        const __m256 vr = _mm256_set1_ps(rstd), vfm = _mm256_set1_ps(fm);
        for (j = 0; j + 8 <= d; j += 8) {
            __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xi + j), vfm), vr);
            if (ln->w) t = _mm256_add_ps(_mm256_mul_ps(t, _mm256_loadu_ps(ln->w + j)), _mm256_loadu_ps(ln->b + j));
            _mm256_storeu_ps(yi + j, t);
        }
        for (; j < d; j++) {
            float t = (xi[j] - fm) * rstd;
            if (ln->w) t = t * ln->w[j] + ln->b[j];
            yi[j] = t;
        }
    }
}

B2_AVX2 static void residual(float *h, const float *x, const float *b, size_t n, size_t d)
{
    for (size_t i = 0; i < n; i++) {
        float *hi = h + i * d;
        const float *xi = x + i * d;
        size_t j = 0;
        for (; j + 8 <= d; j += 8) {
            __m256 v = _mm256_loadu_ps(xi + j);
            if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
            _mm256_storeu_ps(hi + j, _mm256_add_ps(_mm256_loadu_ps(hi + j), v));
        }
        for (; j < d; j++) hi[j] += b ? xi[j] + b[j] : xi[j];
    }
}

/* ---- small matrix product for attention ----
 * c (m, ldc) [:, :n] = alpha * a (m, lda) [:, :k] @ b (k, ldb) [:, :n], all
 * row-major.  Register tiles of 6 rows x 16 columns (12 accumulators):
 * per k, two loads of b, six broadcasts of a, twelve FMAs.  Column tails
 * use masked loads and stores. */

B2_AVX2 __attribute__((always_inline)) static inline void
tile(float *c, int ldc, const float *a, int lda, const float *b, int ldb, int k, float alpha,
     const int mr, const int masked, __m256i m0, __m256i m1)
{
    __m256 acc0[6], acc1[6];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
    for (int p = 0; p < k; p++) {
        const float *bp = b + (size_t)p * ldb;
        __m256 b0 = masked ? _mm256_maskload_ps(bp, m0) : _mm256_loadu_ps(bp);
        __m256 b1 = masked ? _mm256_maskload_ps(bp + 8, m1) : _mm256_loadu_ps(bp + 8);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m256 av = _mm256_broadcast_ss(a + (size_t)r * lda + p);
            acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
        }
    }
    const __m256 va = _mm256_set1_ps(alpha);
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        if (masked) {
            _mm256_maskstore_ps(cr, m0, _mm256_mul_ps(acc0[r], va));
            _mm256_maskstore_ps(cr + 8, m1, _mm256_mul_ps(acc1[r], va));
        } else {
            _mm256_storeu_ps(cr, _mm256_mul_ps(acc0[r], va));
            _mm256_storeu_ps(cr + 8, _mm256_mul_ps(acc1[r], va));
        }
    }
}

#define TILE_ROWS(masked)                                                                      \
    do {                                                                                       \
        int i = 0;                                                                             \
        for (; i + 6 <= m; i += 6)                                                             \
            tile(c + (size_t)i * ldc + j, ldc, a + (size_t)i * lda, lda, b + j, ldb, k, alpha, \
                 6, masked, m0, m1);                                                           \
        float *ci = c + (size_t)i * ldc + j;                                                   \
        const float *ai = a + (size_t)i * lda;                                                 \
        switch (m - i) {                                                                       \
        case 5: tile(ci, ldc, ai, lda, b + j, ldb, k, alpha, 5, masked, m0, m1); break;        \
        case 4: tile(ci, ldc, ai, lda, b + j, ldb, k, alpha, 4, masked, m0, m1); break;        \
        case 3: tile(ci, ldc, ai, lda, b + j, ldb, k, alpha, 3, masked, m0, m1); break;        \
        case 2: tile(ci, ldc, ai, lda, b + j, ldb, k, alpha, 2, masked, m0, m1); break;        \
        case 1: tile(ci, ldc, ai, lda, b + j, ldb, k, alpha, 1, masked, m0, m1); break;        \
        default: break;                                                                        \
        }                                                                                      \
    } while (0)

B2_AVX2 static void gemm_nn(float *c, int ldc, const float *a, int lda, const float *b, int ldb,
                            int m, int n, int k, float alpha)
{
    for (int j = 0; j < n; j += 16) {
        __m256i m0 = tail_mask(n - j), m1 = tail_mask(n - j - 8);
        if (n - j >= 16) TILE_ROWS(0);
        else TILE_ROWS(1);
    }
}

/* ---- products with few rows: y = alpha x W^T + beta y ----
 * For x with a handful of rows (prefill, the Q-Former, batched decode)
 * against a large weight W (m, k) stored as torch keeps it.  Dot-product
 * form, so W streams from memory once without being repacked: tiles of 6
 * rows of x by 2 rows of W (12 accumulators of 8 lanes; each operand
 * loaded once, 8 loads per 12 FMAs), over k blocks of KB floats that keep
 * the x rows in L1 and the caller's W rows in L2; the lanes are summed at
 * the end of each block (which also keeps the rounding error near
 * OpenBLAS's).  Loads of W are aligned by peeling the first few columns (a
 * 32-byte load across a cache line costs two), and the next pair of W rows
 * is prefetched while one is in use. */

#define KB 512

/* sums of 8 vectors, lane i of the result = sum of v[i] */
B2_AVX2 static inline __m256 hsum8x8(const __m256 *v)
{
    __m256 a = _mm256_hadd_ps(v[0], v[1]), b = _mm256_hadd_ps(v[2], v[3]);
    __m256 c = _mm256_hadd_ps(v[4], v[5]), d = _mm256_hadd_ps(v[6], v[7]);
    a = _mm256_hadd_ps(a, b); /* v0 v1 v2 v3 partial, per 128-bit half */
    c = _mm256_hadd_ps(c, d);
    return _mm256_add_ps(_mm256_permute2f128_ps(a, c, 0x20), _mm256_permute2f128_ps(a, c, 0x31));
}

/* Lanes lo <= i < hi set. */
B2_AVX2 static inline __m256i range_mask(int lo, int hi)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), idx),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), idx));
}

#define NT_STEP(LOADW, LOADX)                                                                  \
    do {                                                                                       \
        __m256 w0 = LOADW(w + q), w1 = cc > 1 ? LOADW(w + ldw + q) : w0;                       \
        _Pragma("GCC unroll 6") for (int r = 0; r < rr; r++) {                                 \
            __m256 xv = LOADX(x + (size_t)r * ldx + q);                                        \
            __asm__("" : "+x"(xv)); /* one load, two FMAs (not two folded loads) */           \
            acc[2 * r] = _mm256_fmadd_ps(xv, w0, acc[2 * r]);                                  \
            if (cc > 1) acc[2 * r + 1] = _mm256_fmadd_ps(xv, w1, acc[2 * r + 1]);              \
        }                                                                                      \
    } while (0)

/* y (rr, ldy)[:, :cc] (op)= alpha * x (rr, ldx)[:, :kk] @ w (cc, ldw)[:, :kk]^T, where
 * op is "= beta y +" on the first k block and "+=" after.  head >= 0: the
 * columns before w's first 32-byte boundary (w + head is aligned, in every
 * row); head < 0: w is not aligned that way, load it unaligned. */
B2_AVX2 __attribute__((always_inline)) static inline void
nt_tile(float *y, int ldy, const float *x, int ldx, const float *w, int ldw, int kk, int head,
        float alpha, int first, float beta, const int rr, const int cc)
{
    __m256 acc[16]; /* 12 used; 16 so the second lane sum reads zeros */
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm256_setzero_ps();
    int q = 0;
    if (head > 0) { /* the lanes before w + head: load from 8 - head columns back */
        const __m256i m = range_mask(8 - head, 8);
        q = head - 8;
#define LOADM(p) _mm256_maskload_ps((p), m)
        NT_STEP(LOADM, LOADM);
        q = head;
    }
#define LOADA(p) _mm256_load_ps(p)
#define LOADU(p) _mm256_loadu_ps(p)
    /* the next pair of w rows is what follows in memory order: fetch it now */
    const float *wn = w + 2 * (size_t)ldw;
    if (head >= 0)
        for (; q + 8 <= kk; q += 8) {
            if (!(q & 8)) {
                _mm_prefetch((const char *)(wn + q), _MM_HINT_T0);
                _mm_prefetch((const char *)(wn + ldw + q), _MM_HINT_T0);
            }
            NT_STEP(LOADA, LOADU);
        }
    else
        for (; q + 8 <= kk; q += 8) {
            if (!(q & 8)) {
                _mm_prefetch((const char *)(wn + q), _MM_HINT_T0);
                _mm_prefetch((const char *)(wn + ldw + q), _MM_HINT_T0);
            }
            NT_STEP(LOADU, LOADU);
        }
    if (q < kk) {
        const __m256i m = tail_mask(kk - q);
        NT_STEP(LOADM, LOADM);
    }
#undef LOADM
#undef LOADA
#undef LOADU
    float sums[16];
    _mm256_storeu_ps(sums, hsum8x8(acc));
    _mm256_storeu_ps(sums + 8, hsum8x8(acc + 8));
#pragma GCC unroll 6
    for (int r = 0; r < rr; r++)
#pragma GCC unroll 2
        for (int c = 0; c < cc; c++) {
            float *yp = y + (size_t)r * ldy + c;
            const float v = alpha * sums[2 * r + c];
            *yp = first ? (beta == 0.0f ? v : beta * *yp + v) : *yp + v;
        }
}

/* all weight rows for rr rows of x starting at row i: the x rows stay in L1 */
#define NT_COLS(rr)                                                                            \
    do {                                                                                       \
        const float *xi = x + (size_t)i * ldx + p0;                                            \
        float *yi = y + (size_t)i * ldy;                                                       \
        int j = 0;                                                                             \
        for (; j + 2 <= m; j += 2)                                                             \
            nt_tile(yi + j, ldy, xi, ldx, w + (size_t)j * ldw + p0, ldw, kk, head, alpha,      \
                    first, beta, rr, 2);                                                       \
        if (j < m)                                                                             \
            nt_tile(yi + j, ldy, xi, ldx, w + (size_t)j * ldw + p0, ldw, kk, head, alpha,      \
                    first, beta, rr, 1);                                                       \
    } while (0)

/* nt_tile's head for a block of kk columns of w (ldw apart): every row of
 * w shares one alignment when ldw is a multiple of 8 (and KB is), so the
 * columns before the 32-byte boundary are peeled; else -1 (unaligned
 * loads).  The lanes each column lands in, and so the bits, follow it. */
static inline int nt_head(const float *w, int ldw, int kk)
{
    int head = -1;
    if ((ldw & 7) == 0 && ((uintptr_t)w & 3) == 0) head = (int)((32 - ((uintptr_t)w & 31)) & 31) / 4;
    return head <= kk ? head : -1;
}

B2_AVX2 static void gemm_nt(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                            int n, int m, int k, float alpha, float beta)
{
    for (int p0 = 0; p0 < k; p0 += KB) {
        const int kk = k - p0 < KB ? k - p0 : KB, first = p0 == 0;
        const int head = nt_head(w, ldw, kk);
        int i = 0;
        for (; i + 6 <= n; i += 6) NT_COLS(6);
        switch (n - i) {
        case 5: NT_COLS(5); break;
        case 4: NT_COLS(4); break;
        case 3: NT_COLS(3); break;
        case 2: NT_COLS(2); break;
        case 1: NT_COLS(1); break;
        default: break;
        }
    }
}

/* ---- attention of one query (decoding), heads h0..h1 ----
 * The products of gemm_nt (scores), softmax and gemm_nn (the weighted sum
 * of values) with the same bits as taking them head by head, but in
 * another order: each block of ATT1_ROWS key rows, then of value rows, is
 * read once for all the group's heads, instead of each head walking its own
 * columns down the whole cache (320-byte pieces 10 KiB apart for OPT-2.7b,
 * one pass per head and per 16 columns of it).  The same bits: each score
 * is nt_tile's (the lanes aligned as gemm_nt aligns them, each lane's FMAs
 * in the same order, the lanes summed by the same tree, hsum8x8), and
 * each output element is the same sequence of FMAs from zero over the
 * keys in order, as gemm_nn's tile makes it (its final * 1.0f changes no
 * bits).  A head's scores for a block take one lane sum (eight rows at
 * once) where nt_tile took two per pair of rows, and its outputs are
 * loaded and stored once per block of values instead of once per value
 * row.  s holds (h1 - h0) rows of nk scores; hd <= KB. */
#define ATT1_ROWS 8  /* key or value rows per block */
#define ATT1_AHEAD 8 /* rows prefetched ahead: the group's columns of each */

/* the group's columns of rows r..r+n-1 (ld floats apart) from col, to L1 */
B2_AVX2 static inline void att1_prefetch(const float *m, int ld, int r, int n, int nk, size_t col, size_t width)
{
    for (int i = r; i < r + n && i < nk; i++)
        for (size_t c = 0; c < width; c += 16)
            _mm_prefetch((const char *)(m + (size_t)i * ld + col + c), _MM_HINT_T0);
}

/* s[c] = scale * (q . k row c) for the cc <= 8 rows at k (ldk apart),
 * hd columns, head as nt_head gives it for them: nt_tile's lanes */
B2_AVX2 static inline void att1_scores(float *s, const float *q, const float *k, int ldk, int hd, int head,
                                       float scale, int cc)
{
    __m256 acc[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
#define ATT1_STEP(LOADW, LOADX)                                                                    \
    do {                                                                                           \
        const __m256 xv = LOADX(q + j);                                                            \
        _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) if (c < cc)                            \
            acc[c] = _mm256_fmadd_ps(xv, LOADW(k + (size_t)c * ldk + j), acc[c]);                  \
    } while (0)
#define LOADA(p) _mm256_load_ps(p)
#define LOADU(p) _mm256_loadu_ps(p)
    int j = 0;
    if (head > 0) { /* the lanes before k + head: from 8 - head columns back */
        const __m256i m = range_mask(8 - head, 8);
        j = head - 8;
#define LOADM(p) _mm256_maskload_ps((p), m)
        ATT1_STEP(LOADM, LOADM);
        j = head;
    }
    if (head >= 0)
        for (; j + 8 <= hd; j += 8) ATT1_STEP(LOADA, LOADU);
    else
        for (; j + 8 <= hd; j += 8) ATT1_STEP(LOADU, LOADU);
    if (j < hd) {
        const __m256i m = tail_mask(hd - j);
        ATT1_STEP(LOADM, LOADM);
    }
#undef LOADM
#undef LOADA
#undef LOADU
#undef ATT1_STEP
    float sums[8];
    _mm256_storeu_ps(sums, hsum8x8(acc));
    for (int c = 0; c < cc; c++) s[c] = scale * sums[c];
}

B2_AVX2 static void attend1(float *out, const float *q, const float *k, int ldk, const float *v, int ldv,
                            int nk, int h0, int h1, int hd, float scale, float *s)
{
    const size_t width = (size_t)(h1 - h0) * hd, col = (size_t)h0 * hd;
    att1_prefetch(k, ldk, 0, ATT1_AHEAD, nk, col, width);
    for (int r = 0; r < nk; r += ATT1_ROWS) {
        const int cc = nk - r >= ATT1_ROWS ? ATT1_ROWS : nk - r;
        att1_prefetch(k, ldk, r + ATT1_AHEAD, ATT1_ROWS, nk, col, width);
        for (int h = h0; h < h1; h++) {
            const float *kh = k + (size_t)h * hd; /* gemm_nt's w: its alignment decides the lanes */
            att1_scores(s + (size_t)(h - h0) * nk + r, q + (size_t)h * hd, kh + (size_t)r * ldk, ldk, hd,
                        nt_head(kh, ldk, hd), scale, cc);
        }
    }
    att1_prefetch(v, ldv, 0, ATT1_AHEAD, nk, col, width);
    for (int h = h0; h < h1; h++) softmax(s + (size_t)(h - h0) * nk, nk);
    float *o = out + col;
    memset(o, 0, sizeof(float) * width);
    const int full = hd & ~7;
    const __m256i mt = tail_mask(hd - full);
    for (int p = 0; p < nk; p += ATT1_ROWS) {
        const int cc = nk - p >= ATT1_ROWS ? ATT1_ROWS : nk - p;
        att1_prefetch(v, ldv, p + ATT1_AHEAD, ATT1_ROWS, nk, col, width);
        const float *vp = v + (size_t)p * ldv + col;
        for (int h = 0; h < h1 - h0; h++) {
            const float *sh = s + (size_t)h * nk + p, *vh = vp + (size_t)h * hd;
            float *oh = o + (size_t)h * hd;
            int j = 0;
            for (; j < full; j += 8) {
                __m256 acc = _mm256_loadu_ps(oh + j);
                for (int c = 0; c < cc; c++)
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(sh + c), _mm256_loadu_ps(vh + (size_t)c * ldv + j), acc);
                _mm256_storeu_ps(oh + j, acc);
            }
            if (j < hd) {
                __m256 acc = _mm256_maskload_ps(oh + j, mt);
                for (int c = 0; c < cc; c++)
                    acc = _mm256_fmadd_ps(_mm256_broadcast_ss(sh + c), _mm256_maskload_ps(vh + (size_t)c * ldv + j, mt),
                                          acc);
                _mm256_maskstore_ps(oh + j, mt, acc);
            }
        }
    }
}

/* ---- 16-bit floats to f32 ---- */

__attribute__((target("avx2,f16c"))) static void f16_to_f32(float *y, const void *x, size_t n)
{
    const unsigned char *p = x;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i h0 = _mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i));
        __m128i h1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i + 16));
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h0));
        _mm256_storeu_ps(y + i + 8, _mm256_cvtph_ps(h1));
    }
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        y[i] = _cvtsh_ss(h);
    }
}

B2_AVX2 static void bf16_to_f32(float *y, const void *x, size_t n)
{
    const unsigned char *p = x;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i)));
        _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t b = (uint32_t)h << 16;
        memcpy(y + i, &b, 4);
    }
}

const b2_simd b2__simd_avx2 = {
    .name = "avx2",
    .gelu_bias = gelu_bias,
    .softmax = softmax,
    .layernorm = layernorm,
    .residual = residual,
    .gemm_nn = gemm_nn,
    .gemm_nt = gemm_nt,
    .attend1 = attend1,
    .f16_to_f32 = f16_to_f32,
    .bf16_to_f32 = bf16_to_f32,
};

#endif
