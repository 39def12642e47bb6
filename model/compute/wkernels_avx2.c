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
 *   q4_0          the same tiles over pairs of blocks (see q4_pair): the
 *                 nibbles unsigned (0..15) in maddubs against the
 *                 activations' int8, -8 * sum q_x added once per x row
 *                 and pair for the whole tile, so no sign or abs per row;
 *                 the exact integer block sums in 4 lanes per block.
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

/* One step of the q4_0 tile: blocks b and b + 1 of R W rows (rb bytes
 * apart) and N x rows (xs bytes apart; scales xd, ds floats apart).
 * W: the two blocks' 16 bytes of nibbles side by side (one load, one
 * vinserti128), lo = v & 15 (values 0..15 of each block), hi =
 * (v >> 4) & 15 (16..31), unsigned; the scales in lanes 0-3 and 4-7.
 * x, once per step for the tile's rows: xlo = [x_b[0..15] | x_b+1[0..15]],
 * xhi the values 16..31 (vperm2i128), and off = -8 * the sum of the four
 * x values each 16-bit lane meets.  Then per pair maddubs(lo, xlo) +
 * maddubs(hi, xhi) + off in 16 bits (|.| <= 4 * 15 * 127 + 8 * 4 * 127 =
 * 11684, no saturation), madd to int32: lane l of block b+j (lanes
 * 4j..4j+3) holds sum (nibble - 8) q_x over values 4l..4l+3 and
 * 16+4l..19+4l, exact; acc += (d_w d_x) * (float)lane. */
B2W static INL void q4_pair(__m256 acc[TR][TN], const int8_t *xq, size_t xs, const float *xd, size_t ds,
                            const unsigned char *w, size_t rb, const int R, const int N)
{
    const __m256i m15 = _mm256_set1_epi8(15), eights = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    __m256i xlo[TN], xhi[TN], off[TN];
    __m256 dx[TN];
#pragma GCC unroll 4
    for (int i = 0; i < N; i++) {
        const int8_t *xp = xq + (size_t)i * xs;
        const __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)xp);
        const __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)(xp + 32));
        xlo[i] = _mm256_permute2x128_si256(a, b, 0x20);
        xhi[i] = _mm256_permute2x128_si256(a, b, 0x31);
        off[i] = _mm256_sub_epi16(_mm256_setzero_si256(),
                                  _mm256_add_epi16(_mm256_maddubs_epi16(eights, xlo[i]), _mm256_maddubs_epi16(eights, xhi[i])));
        const float *dp = xd + (size_t)i * ds;
        dx[i] = _mm256_blend_ps(_mm256_broadcast_ss(dp), _mm256_broadcast_ss(dp + 1), 0xf0);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const unsigned char *p = w + (size_t)r * rb;
        short h0, h1;
        memcpy(&h0, p, 2);
        memcpy(&h1, p + B2_Q4_0_BYTES, 2);
        const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(p + 2))),
                                                  _mm_loadu_si128((const __m128i *)(const void *)(p + B2_Q4_0_BYTES + 2)), 1);
        const __m256i lo = _mm256_and_si256(v, m15), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
        const __m256 dw = _mm256_cvtph_ps(_mm_blend_epi16(_mm_set1_epi16(h0), _mm_set1_epi16(h1), 0xf0));
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const __m256i t = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo[i]), _mm256_maddubs_epi16(hi, xhi[i])), off[i]);
            acc[r][i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx[i]), _mm256_cvtepi32_ps(_mm256_madd_epi16(t, ones)), acc[r][i]);
        }
    }
}

/* Pairs of blocks (q4_pair); an odd last block through zeroed copies
 * with a zero second block (scale 0: it adds exactly 0). */
B2W static INL void q4_tile(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                            size_t rb, int k, const int R, const int N)
{
    const int nb = k / B2_Q4_0_BLOCK;
    __m256 acc[TR][TN];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm256_setzero_ps();
    const size_t pf = (size_t)b2__wprefetch;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        const unsigned char *wb = w + (size_t)b * B2_Q4_0_BYTES;
        if (pf) /* 36 bytes a step: the line of the step's first byte */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) _mm_prefetch((const char *)wb + (size_t)r * rb + pf, _MM_HINT_T0);
        q4_pair(acc, xq + (size_t)b * B2_Q4_0_BLOCK, (size_t)k, xd + b, (size_t)nb, wb, rb, R, N);
    }
    if (b < nb) {
        unsigned char wt[TR * 2 * B2_Q4_0_BYTES];
        int8_t xt[TN * 2 * B2_Q4_0_BLOCK];
        float dt[TN * 2];
        memset(wt, 0, sizeof wt);
        memset(xt, 0, sizeof xt);
        memset(dt, 0, sizeof dt);
        for (int r = 0; r < R; r++)
            memcpy(wt + r * 2 * B2_Q4_0_BYTES, w + (size_t)r * rb + (size_t)b * B2_Q4_0_BYTES, B2_Q4_0_BYTES);
        for (int i = 0; i < N; i++) {
            memcpy(xt + i * 2 * B2_Q4_0_BLOCK, xq + (size_t)i * k + (size_t)b * B2_Q4_0_BLOCK, B2_Q4_0_BLOCK);
            dt[2 * i] = xd[(size_t)i * nb + b];
        }
        q4_pair(acc, xt, 2 * B2_Q4_0_BLOCK, dt, 2, wt, 2 * B2_Q4_0_BYTES, R, N);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum8(acc[r][i]);
}

#define Q4_TILE(r0, i0, R, N)                                                                       \
    q4_tile(y + (size_t)(i0) * ldy + (r0), ldy, xq + (size_t)(i0) * k, xd + (size_t)(i0) * nb,         \
            w + (size_t)(r0) * rb, rb, k, R, N)

B2W void b2__q4_rows_avx2(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                          size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q4_0_BLOCK;
    B2_WTILES(m, n, TR, TN, Q4_TILE);
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
