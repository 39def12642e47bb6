/*
 * wkernels_avx512.c - the typed-weight products in AVX-512 (F, BW, VL),
 * for CPUs that have them (every function carries
 * __attribute__((target)); the dispatcher checks cpuid first).
 *
 *   f32/f16/bf16  as wkernels_avx2.c with 16 lanes and tiles of 4 W rows
 *                 x 4 x rows; the k tail by masked loads (16-bit masked
 *                 loads need BW + VL).  Sum: lane j + lane j + 8, then
 *                 the AVX2 tree over the 8.  No AVX512-BF16 dot products:
 *                 vdpbf16ps would round the activations to bf16 (8
 *                 significant bits) and the product is bound by reading
 *                 W, not by the widening, so they would buy no speed.
 *   q8_0          without VNNI the AVX2 kernel; with AVX512-VNNI two
 *                 blocks per 512-bit vector and vpdpbusd (see q8_tile
 *                 below): the same exact int32 block sums as AVX2, summed
 *                 in 16 f32 lanes instead of 8.
 *   q4_0          without VNNI the AVX2 kernel; with VNNI two blocks per
 *                 512-bit step: the nibbles go unsigned (0..15) into
 *                 vpdpbusd against the activations' int8, and 8 * (the
 *                 lane's sum of q_x), once per x row and block pair for
 *                 the whole tile, is where the sums start: the exact integer
 *                 sums of the AVX2 path, folded to 8 lanes (4 per block)
 *                 and scaled in 8 f32 lanes, even and odd blocks apart,
 *                 so other bits than AVX2, within the same bound.
 */
#include "wkernels_impl.h"

#if defined(B2_WK_EMULATE)
#if (defined(__x86_64__) || defined(__i386__)) && defined(__has_include)
#if __has_include(<simde/x86/avx512.h>)
/* tests/test_wkernels_avx512emu: the same code on any x86 CPU, the
 * AVX-512 intrinsics emulated (model/compute/wkernels_emu.h), the tables renamed */
#include "wkernels_emu.h"
#define B2X
#define B2XV
#define b2__wimpl_avx512 b2__wimpl_avx512_emu
#define b2__wimpl_avx512_vnni b2__wimpl_avx512_vnni_emu
#define B2_WK_AVX512_BODY 1
#endif
#endif
#elif defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>
#define B2X __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define B2XV __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define B2_WK_AVX512_BODY 1
#endif

#ifdef B2_WK_AVX512_BODY
#define INL inline __attribute__((always_inline))
#define TR 4 /* W rows per tile */
#define TN 4 /* x rows per tile */

B2X static INL __m512 wload16(const unsigned char *p, b2_wtype t)
{
    switch (t) {
    case B2_WT_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    case B2_WT_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
    default: return _mm512_loadu_ps((const float *)p);
    }
}

/* the first c (1..15) values only; nothing past them is read */
B2X static INL __m512 wload16_tail(const unsigned char *p, b2_wtype t, __mmask16 m)
{
    switch (t) {
    case B2_WT_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    case B2_WT_BF16: return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    default: return _mm512_maskz_loadu_ps(m, p);
    }
}

B2X static INL float hsum16(__m512 a)
{
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

B2X static INL void fp_tile(float *y, int ldy, const float *x, int ldx, const unsigned char *w,
                            size_t rb, b2_wtype t, int k, const int R, const int N)
{
    const size_t es = t == B2_WT_F32 ? 4 : 2;
    __m512 acc[TR][TN], wv[TR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm512_setzero_ps();
    const size_t pf = (size_t)b2__wprefetch;
    int j = 0;
    for (; j + 16 <= k; j += 16) {
        if (pf && !(((size_t)j * es) & 63)) /* once per 64 bytes of each row */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) _mm_prefetch((const char *)w + (size_t)r * rb + (size_t)j * es + pf, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = wload16(w + (size_t)r * rb + (size_t)j * es, t);
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const __m512 xv = _mm512_loadu_ps(x + (size_t)i * ldx + j);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
        }
    }
    if (j < k) {
        const __mmask16 m = (__mmask16)((1u << (k - j)) - 1);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = wload16_tail(w + (size_t)r * rb + (size_t)j * es, t, m);
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)i * ldx + j);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum16(acc[r][i]);
}

/* the f32/f16/bf16 entry point: fp_rows (wkernels_impl.h) */
B2_FP_ROWS(B2X)

/* ---- q8_0 with VNNI: two blocks per 512-bit vector ----
 * W's blocks b and b+1 (32 q each, 2 scale bytes apart) go into the low
 * and high halves of one vector; x's are contiguous.  Per block the
 * integer dot product is exact: vpdpbusd of |w| (unsigned) with x negated
 * where w < 0 (a masked subtraction: AVX-512 has no vpsignb), lane l of a
 * half = bytes 4l..4l+3 of its block, as the AVX2 kernel.  Then
 * acc = fma(d_w * d_x, (float)lanes, acc) with the two blocks' scales in
 * the two halves: the low 8 lanes sum the even blocks, the high 8 the odd
 * ones (and an odd last block, the high half adding 0 * 0), and the 16
 * lanes end as lane j + lane j + 8, then the AVX2 tree.  Not the AVX2
 * kernel's bits (its 8 lanes take every block), within the same bound. */

#define QN 2 /* x rows per tile, as AVX2 */

B2XV static INL float hsum16v(__m512 a)
{
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

B2XV static INL void q8_tile(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                             size_t rb, int k, const int R, const int N)
{
    const int nb = k / B2_Q8_0_BLOCK;
    const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[TR][QN], dw[TR];
    __m512i aw[TR];
    __mmask64 neg[TR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm512_setzero_ps();
    const size_t pf = (size_t)b2__wprefetch;
    for (int b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb; /* else the last block alone, in the low half */
        if (pf)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const char *p = (const char *)w + (size_t)r * rb + (size_t)b * B2_Q8_0_BYTES + pf;
                _mm_prefetch(p, _MM_HINT_T0);
                _mm_prefetch(p + B2_Q8_0_BYTES, _MM_HINT_T0);
            }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const unsigned char *blk = w + (size_t)r * rb + (size_t)b * B2_Q8_0_BYTES;
            unsigned short h0, h1 = 0;
            memcpy(&h0, blk, 2);
            __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(blk + 2)));
            if (two) {
                memcpy(&h1, blk + B2_Q8_0_BYTES, 2);
                v = _mm512_inserti64x4(v, _mm256_loadu_si256((const __m256i *)(blk + B2_Q8_0_BYTES + 2)), 1);
            } else {
                v = _mm512_inserti64x4(v, _mm256_setzero_si256(), 1);
            }
            const __m128 d2 = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((unsigned)h0 | (unsigned)h1 << 16)));
            dw[r] = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(d2));
            aw[r] = _mm512_abs_epi8(v);
            neg[r] = _mm512_movepi8_mask(v);
        }
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const int8_t *xp = xq + (size_t)i * k + (size_t)b * B2_Q8_0_BLOCK;
            const float *dp = xd + (size_t)i * nb + b;
            __m512i q;
            __m128 x2;
            if (two) {
                q = _mm512_loadu_si512((const void *)xp);
                x2 = _mm_castsi128_ps(_mm_loadu_si64((const void *)dp)); /* two floats, any alignment */
            } else {
                q = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)xp));
                q = _mm512_inserti64x4(q, _mm256_setzero_si256(), 1);
                x2 = _mm_load_ss(dp);
            }
            const __m512 dx = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(x2));
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m512i sx = _mm512_mask_sub_epi8(q, neg[r], zero, q);
                const __m512i p = _mm512_dpbusd_epi32(zero, aw[r], sx);
                acc[r][i] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], dx), _mm512_cvtepi32_ps(p), acc[r][i]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum16v(acc[r][i]);
}

#define Q8_TILE(r0, i0, R, N)                                                                       \
    q8_tile(y + (size_t)(i0) * ldy + (r0), ldy, xq + (size_t)(i0) * k, xd + (size_t)(i0) * nb,         \
            w + (size_t)(r0) * rb, rb, k, R, N)

B2XV static void q8_rows_vnni(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                              size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q8_0_BLOCK;
    B2_WTILES(m, n, TR, QN, Q8_TILE);
}

/* the sum of a's 8 lanes (q4_0's folded accumulators) */
B2XV static INL float hsum8v(__m256 a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- q4_0 with VNNI: two blocks per 512-bit step ----
 * W row, blocks b and b + 1: the 16 + 16 bytes of nibbles side by side,
 * shifted copy above: [lo_b | lo_b1 | hi_b | hi_b1] (values 0..15 of
 * each block, then 16..31).  The activations' 64 bytes of the two blocks
 * are put in the same order once per x row (vpermq), with the lanes'
 * -8 * sum q_x where vpdpbusd starts.  Int32 lane L then holds block
 * b + (L / 4) % 2; the upper 8 lanes are added to the lower 8 (exact), so
 * lanes 0-3 hold block b (values 4l..4l+3 and 16+4l..19+4l) and 4-7 block
 * b + 1, and the f32 work is 8 lanes wide: acc += (d_w d_x) * lanes with
 * the scales of b in lanes 0-3 and of b + 1 in 4-7 (blends).  An odd last
 * block goes alone, the other half zero (nibbles, activations and
 * scales: it adds exactly 0). */

B2XV static INL __m256 q4_pair_scale(const unsigned char *blk, int two)
{
    unsigned short h0, h1 = 0;
    memcpy(&h0, blk, 2);
    if (two) memcpy(&h1, blk + B2_Q4_0_BYTES, 2);
    return _mm256_cvtph_ps(_mm_blend_epi16(_mm_set1_epi16((short)h0), _mm_set1_epi16((short)h1), 0xf0));
}

B2XV static INL __m512i q4_pair_nibbles(const unsigned char *blk, int two)
{
    const __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(blk + 2));
    const __m128i b = two ? _mm_loadu_si128((const __m128i *)(const void *)(blk + B2_Q4_0_BYTES + 2)) : _mm_setzero_si128();
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
    return _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1),
                            _mm512_set1_epi8(15));
}

/* lanes 0..7 + lanes 8..15, exact */
B2XV static INL __m256i q4_fold(__m512i p)
{
    return _mm256_add_epi32(_mm512_castsi512_si256(p), _mm512_extracti64x4_epi64(p, 1));
}

/* one step of the tile: blocks b and (if two) b + 1 */
B2XV static INL void q4_step(__m256 acc[TR][QN], const int8_t *xq, const float *xd, const unsigned char *w, size_t rb,
                             int k, int nb, int b, const int two, const int R, const int N)
{
    const __m512i eights = _mm512_set1_epi8(8), order = _mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0);
    __m256 dw[TR];
    __m512i nib[TR];
    const size_t pf = (size_t)b2__wprefetch;
    if (pf)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            _mm_prefetch((const char *)w + (size_t)r * rb + (size_t)b * B2_Q4_0_BYTES + pf, _MM_HINT_T0);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const unsigned char *blk = w + (size_t)r * rb + (size_t)b * B2_Q4_0_BYTES;
        dw[r] = q4_pair_scale(blk, two);
        nib[r] = q4_pair_nibbles(blk, two);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++) {
        const int8_t *xp = xq + (size_t)i * k + (size_t)b * B2_Q4_0_BLOCK;
        const __m512i raw = two ? _mm512_loadu_si512((const void *)xp)
                                : _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_loadu_si256((const __m256i *)(const void *)xp), 0);
        const __m512i q = _mm512_permutexvar_epi64(order, raw);
        /* -8 * sum q per lane: where each W row's vpdpbusd starts */
        const __m512i off = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), eights, q));
        const float *dp = xd + (size_t)i * nb + b;
        const __m256 dx = _mm256_blend_ps(_mm256_set1_ps(dp[0]), _mm256_set1_ps(two ? dp[1] : 0.0f), 0xf0);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256i p = q4_fold(_mm512_dpbusd_epi32(off, nib[r], q));
            acc[r][i] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dx), _mm256_cvtepi32_ps(p), acc[r][i]);
        }
    }
}

B2XV static INL void q4_tile(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                             size_t rb, int k, const int R, const int N)
{
    const int nb = k / B2_Q4_0_BLOCK;
    __m256 acc[TR][QN];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) q4_step(acc, xq, xd, w, rb, k, nb, b, 1, R, N);
    if (b < nb) q4_step(acc, xq, xd, w, rb, k, nb, b, 0, R, N);
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum8v(acc[r][i]);
}

B2XV static void q4_rows_vnni(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                              size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q4_0_BLOCK;
    int r0 = 0;
    for (; r0 + TR <= m; r0 += TR) {
        int i0 = 0;
        for (; i0 + QN <= n; i0 += QN)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, TR, QN);
        for (; i0 < n; i0++)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, TR, 1);
    }
    for (; r0 < m; r0++) {
        int i0 = 0;
        for (; i0 + QN <= n; i0 += QN)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, 1, QN);
        for (; i0 < n; i0++)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, 1, 1);
    }
}

const b2_wimpl b2__wimpl_avx512 = {"avx512", fp_rows, b2__q8_rows_avx2, b2__q8_to_f32_avx2, b2__q4_rows_avx2,
                                   b2__q4_to_f32_avx2};
const b2_wimpl b2__wimpl_avx512_vnni = {"avx512-vnni", fp_rows, q8_rows_vnni, b2__q8_to_f32_avx2, q4_rows_vnni,
                                        b2__q4_to_f32_avx2};

#endif
