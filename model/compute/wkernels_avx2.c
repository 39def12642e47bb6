/*
 * wkernels_avx2.c - the typed-weight products of wkernels.c in AVX2 + FMA
 * + F16C (every function carries __attribute__((target)); the dispatcher
 * calls them only on a CPU that has all three).
 *
 *   f32/f16/bf16  register tiles of 4 W rows x 2 x rows, one 8-lane
 *                 accumulator per pair: W widened on load (F16C for f16),
 *                 acc = fma(w, x, acc) over k in steps of 8; the last
 *                 k % 8 values through a zero-padded copy of the W tail
 *                 and a masked load of x.  Then ((l0+l4)+(l2+l6)) +
 *                 ((l1+l5)+(l3+l7)).
 *   bf16          first steps of 16: one 32-byte load of W gives the 8
 *                 even values (<< 16) and the 8 odd ones (& 0xffff0000)
 *                 without widening; x is loaded in the matching order
 *                 (shuffles shared by the 4 rows) and lane l takes the
 *                 even then the odd product; the k % 16 rest in steps of
 *                 8 as above.
 *   q8_0          the same tiles over blocks of 32: |w| (unsigned) times
 *                 x with w's sign (_mm256_sign_epi8) in maddubs, pairs
 *                 summed to 8 int32 lanes by madd (exact: |sum| <= 32512
 *                 per 16-bit pair), converted, acc = fma(d_w d_x, lanes, acc);
 *                 d_w is widened straight into 8 lanes (vpbroadcastw +
 *                 vcvtph2ps) and multiplied by d_x there, the same
 *                 product, rounded once, as a scalar d_w * d_x.
 *   q4_0          the q8_0 tiles with the 16 bytes of a block unpacked
 *                 once per W row (low nibbles = values 0..15 in the low
 *                 128 bits, high nibbles = 16..31 in the high ones, minus
 *                 8), then exactly the q8_0 arithmetic.
 * Every tile also prefetches each W row b2__wprefetch bytes ahead of its
 * reads (once per 64 bytes, per block for q8_0): far enough ahead that the
 * next 4 KiB pages' lines are asked for while this one is read (the
 * hardware prefetchers stop at page boundaries).  Without it the reads
 * did not keep streaming, q8_0 (~3x bf16's work per byte) least of all
 * (bench/RESULTS.md, "Decoding at memory speed", 2026-11-27).
 * Smaller tiles for the row tails run the same per-pair arithmetic, so a
 * pair's result does not depend on the tile it landed in (batch
 * invariance).  W may have any alignment (rows of odd k are not even
 * 4-byte aligned): unaligned loads throughout.
 */
#include "wkernels_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

#define B2W __attribute__((target("avx2,fma,f16c")))
#define INL inline __attribute__((always_inline))
#define TR 4 /* W rows per tile */
#define TN 2 /* x rows per tile */

B2W static INL __m256 wload8(const unsigned char *p, b2_wtype t)
{
    switch (t) {
    case B2_WT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    case B2_WT_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    default: return _mm256_loadu_ps((const float *)p);
    }
}

/* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), the portable path's order */
B2W static INL float hsum8(__m256 a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

B2W static INL void fp_tile(float *y, int ldy, const float *x, int ldx, const unsigned char *w,
                            size_t rb, b2_wtype t, int k, const int R, const int N)
{
    const size_t es = t == B2_WT_F32 ? 4 : 2;
    __m256 acc[TR][TN], wv[TR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm256_setzero_ps();
    const size_t pf = (size_t)b2__wprefetch;
    int j = 0;
    if (t == B2_WT_BF16) { /* 16 at a time: one 32-byte load gives the even values (<< 16) and the odd (& mask) */
        const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
        for (; j + 16 <= k; j += 16) {
            if (pf && !(((size_t)j * 2) & 63))
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) _mm_prefetch((const char *)w + (size_t)r * rb + (size_t)j * 2 + pf, _MM_HINT_T0);
            __m256 xe[TN], xo[TN];
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) { /* x[j..j+15] as evens and odds in the order of the W lanes */
                const float *xp = x + (size_t)i * ldx + j;
                const __m256 lo = _mm256_loadu2_m128(xp + 8, xp), hi4 = _mm256_loadu2_m128(xp + 12, xp + 4);
                xe[i] = _mm256_shuffle_ps(lo, hi4, 0x88);
                xo[i] = _mm256_shuffle_ps(lo, hi4, 0xdd);
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(w + (size_t)r * rb + (size_t)j * 2));
                const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
#pragma GCC unroll 4
                for (int i = 0; i < N; i++) acc[r][i] = _mm256_fmadd_ps(wo, xo[i], _mm256_fmadd_ps(we, xe[i], acc[r][i]));
            }
        }
    }
    for (; j + 8 <= k; j += 8) {
        if (pf && !(((size_t)j * es) & 63)) /* once per 64 bytes of each row */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) _mm_prefetch((const char *)w + (size_t)r * rb + (size_t)j * es + pf, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = wload8(w + (size_t)r * rb + (size_t)j * es, t);
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const __m256 xv = _mm256_loadu_ps(x + (size_t)i * ldx + j);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
        }
    }
    if (j < k) { /* 1..7 left: zero-padded W, masked x */
        const int c = k - j;
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            unsigned char tmp[32] = {0};
            memcpy(tmp, w + (size_t)r * rb + (size_t)j * es, (size_t)c * es);
            wv[r] = wload8(tmp, t);
        }
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const __m256 xv = _mm256_maskload_ps(x + (size_t)i * ldx + j, mask);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum8(acc[r][i]);
}

/* the f32/f16/bf16 entry point: fp_rows (wkernels_impl.h) */
B2_FP_ROWS(B2W)

/* ---- q8_0 ---- */

B2W static INL void q8_tile(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                            size_t rb, int k, const int R, const int N)
{
    const int nb = k / B2_Q8_0_BLOCK;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TR][TN];
    __m256i wq[TR], aw[TR];
    __m256 dw[TR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm256_setzero_ps();
    const size_t pf = (size_t)b2__wprefetch;
    for (int b = 0; b < nb; b++) {
        if (pf)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)w + (size_t)r * rb + (size_t)b * B2_Q8_0_BYTES + pf, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const unsigned char *blk = w + (size_t)r * rb + (size_t)b * B2_Q8_0_BYTES;
            short h;
            memcpy(&h, blk, 2);
            dw[r] = _mm256_cvtph_ps(_mm_set1_epi16(h)); /* 8 lanes of d_w: no scalar round trip */
            wq[r] = _mm256_loadu_si256((const __m256i *)(blk + 2));
            aw[r] = _mm256_abs_epi8(wq[r]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(xq + (size_t)i * k + (size_t)b * B2_Q8_0_BLOCK));
            const __m256 dx = _mm256_broadcast_ss(xd + (size_t)i * nb + b);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(q, wq[r])), ones);
                acc[r][i] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dx), _mm256_cvtepi32_ps(p), acc[r][i]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum8(acc[r][i]);
}

#define Q8_TILE(r0, i0, R, N)                                                                       \
    q8_tile(y + (size_t)(i0) * ldy + (r0), ldy, xq + (size_t)(i0) * k, xd + (size_t)(i0) * nb,         \
            w + (size_t)(r0) * rb, rb, k, R, N)

B2W void b2__q8_rows_avx2(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                          size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q8_0_BLOCK;
    B2_WTILES(m, n, TR, TN, Q8_TILE);
}

B2W void b2__q8_to_f32_avx2(float *y, const unsigned char *w, int nb)
{
    for (int b = 0; b < nb; b++, w += B2_Q8_0_BYTES, y += B2_Q8_0_BLOCK) {
        uint16_t h;
        memcpy(&h, w, 2);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(h));
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(w + 2 + 8 * p)));
            _mm256_storeu_ps(y + 8 * p, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
    }
}

/* ---- q4_0 ---- */

/* The 32 values of a q4_0 block's nibbles, minus 8, in value order. */
B2W static INL __m256i q4_unpack(const unsigned char *qs)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)qs), lo4 = _mm_set1_epi8(15);
    const __m256i u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), lo4), _mm_and_si128(v, lo4));
    return _mm256_sub_epi8(u, _mm256_set1_epi8(8));
}

B2W static INL void q4_tile(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                            size_t rb, int k, const int R, const int N)
{
    const int nb = k / B2_Q4_0_BLOCK;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TR][TN];
    __m256i wq[TR], aw[TR];
    __m256 dw[TR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm256_setzero_ps();
    const size_t pf = (size_t)b2__wprefetch;
    for (int b = 0; b < nb; b++) {
        if (pf && !(b & 1)) /* a block is 18 bytes: once per 36 */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)w + (size_t)r * rb + (size_t)b * B2_Q4_0_BYTES + pf, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const unsigned char *blk = w + (size_t)r * rb + (size_t)b * B2_Q4_0_BYTES;
            short h;
            memcpy(&h, blk, 2);
            dw[r] = _mm256_cvtph_ps(_mm_set1_epi16(h));
            wq[r] = q4_unpack(blk + 2);
            aw[r] = _mm256_abs_epi8(wq[r]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(xq + (size_t)i * k + (size_t)b * B2_Q4_0_BLOCK));
            const __m256 dx = _mm256_broadcast_ss(xd + (size_t)i * nb + b);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(q, wq[r])), ones);
                acc[r][i] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dx), _mm256_cvtepi32_ps(p), acc[r][i]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum8(acc[r][i]);
}

B2W void b2__q4_rows_avx2(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                          size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q4_0_BLOCK;
    int r0 = 0;
    for (; r0 + TR <= m; r0 += TR) {
        int i0 = 0;
        for (; i0 + TN <= n; i0 += TN)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, TR, TN);
        for (; i0 < n; i0++)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, TR, 1);
    }
    for (; r0 < m; r0++) {
        int i0 = 0;
        for (; i0 + TN <= n; i0 += TN)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, 1, TN);
        for (; i0 < n; i0++)
            q4_tile(y + (size_t)i0 * ldy + r0, ldy, xq + (size_t)i0 * k, xd + (size_t)i0 * nb, w + (size_t)r0 * rb, rb, k, 1, 1);
    }
}

B2W void b2__q4_to_f32_avx2(float *y, const unsigned char *w, int nb)
{
    for (int b = 0; b < nb; b++, w += B2_Q4_0_BYTES, y += B2_Q4_0_BLOCK) {
        uint16_t h;
        memcpy(&h, w, 2);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(h));
        const __m256i v = q4_unpack(w + 2);
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            const __m128i q8 = p < 2 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1);
            const __m256i q = _mm256_cvtepi8_epi32(p & 1 ? _mm_srli_si128(q8, 8) : q8);
            _mm256_storeu_ps(y + 8 * p, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
    }
}

const b2_wimpl b2__wimpl_avx2 = {"avx2", fp_rows, b2__q8_rows_avx2, b2__q8_to_f32_avx2, b2__q4_rows_avx2,
                                 b2__q4_to_f32_avx2};

#endif
