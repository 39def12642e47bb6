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
 *   q4_0          tiles over steps of four blocks (see q4_step): the
 *                 nibbles unsigned (0..15) in maddubs against the
 *                 activations' int8, the x side (reordered, -8 * sum
 *                 q_x, scales) made once per x row and step for all the
 *                 chunk's rows, so no sign, abs or shuffle per row; the
 *                 exact integer block sums in 4 lanes per block.
 *   activations   quantised to q8_0 (b2__act_q8_avx2, the portable
 *                 quantiser's bits) for every SIMD table.
 * Every tile also prefetches its W rows b2__wprefetch bytes ahead of its
 * reads, each row in its own stream (b2__wpf in wkernels_impl.h; once
 * per 64 bytes, per block for q8_0, twice per 72-byte step for q4_0):
 * far enough ahead that the
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
#include <math.h>
#include <string.h>

#define B2W __attribute__((target("avx2,fma,f16c")))
#define INL inline __attribute__((always_inline))
#define TR 4 /* W rows per tile */
#define TN 2 /* x rows per tile */
_Static_assert(B2_DECODE_ROWS <= TN, "a decode step's x rows fit one tile");

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
    const b2_wpf pf = b2__wpf(w, rb, R);
    int j = 0;
    if (t == B2_WT_BF16) { /* 16 at a time: one 32-byte load gives the even values (<< 16) and the odd (& mask) */
        const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
        for (; j + 16 <= k; j += 16) {
            if (pf.a && !(((size_t)j * 2) & 63))
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) _mm_prefetch(B2_WPF_AT(pf, (size_t)j * 2, r, rb), _MM_HINT_T0);
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
        if (pf.a && !(((size_t)j * es) & 63)) /* once per 64 bytes of each row */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) _mm_prefetch(B2_WPF_AT(pf, (size_t)j * es, r, rb), _MM_HINT_T0);
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
    const b2_wpf pf = b2__wpf(w, rb, R);
    for (int b = 0; b < nb; b++) {
        if (pf.a)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) _mm_prefetch(B2_WPF_AT(pf, (size_t)b * B2_Q8_0_BYTES, r, rb), _MM_HINT_T0);
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
    B2_WTILES_Q(m, n, TR, TN, Q8_TILE);
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

/* The q4_0 product in steps of four blocks, b..b+3, as two pairs: u = 0
 * blocks b and b+2, u = 1 blocks b+1 and b+3.
 *   x side (q4x_make), once per step and x row for all the chunk's W
 *   rows, kept in memory (so the row loop holds only its accumulators):
 *   per pair xlo = [x_b+u[0..15] | x_b+2+u[0..15]] and xhi the values
 *   16..31 (vperm2i128), off = -8 * the sum of the four x values each
 *   16-bit lane meets, and the four d_x.
 *   W side (q4_step), per row: per pair the two blocks' 16 bytes of
 *   nibbles side by side (one load, one vinserti128), lo = v & 15 (values
 *   0..15 of each block), hi = (v >> 4) & 15 (16..31), unsigned; the
 *   four f16 scales widened at once (one vcvtph2ps), times the four d_x,
 *   spread to a pair's lanes by one vpermps.
 *   Per pair maddubs(lo, xlo) + maddubs(hi, xhi) + off in 16 bits (|.| <=
 *   4 * 15 * 127 + 8 * 4 * 127 = 11684, no saturation), madd to int32:
 *   lane l of the pair's first block (lanes 0..3; 4..7 the second) holds
 *   sum (nibble - 8) q_x over values 4l..4l+3 and 16+4l..19+4l, exact;
 *   acc += (d_w d_x) * (float)lane.
 * The rows go in blocks of Q4_ROWS, the x rows in groups of TN, k in
 * segments of Q4_SEG steps (the x side's buffer), the accumulators kept
 * in memory between segments (exactly).  A last step past nb (nb % 4
 * blocks left) takes zeroed copies of W and x: scales 0, so the missing
 * blocks add exactly 0. */

/* steps per segment: 10240 values, every OPT-2.7b row in one (the x
 * side of two x rows is then 36 KiB of stack); 2048-value segments
 * chopped each row's stream into pieces and read measurably slower
 * (bench/RESULTS.md, 2026-12-06 09:19, "Faster q4_0 decode kernels") */
#define Q4_SEG 80
#define Q4_ROWS 64 /* W rows per block */

typedef struct q4x {
    __m256i lo[2], hi[2], off[2];
    __m128 dx;
} q4x;

/* the x side of the step at block b of one x row (xr: its k values,
 * dr: its nb scales) */
B2W static INL void q4x_make(q4x *o, const int8_t *xr, const float *dr, int nb, int b)
{
    const __m256i eights = _mm256_set1_epi8(8);
    const int8_t *xp = xr + (size_t)b * B2_Q4_0_BLOCK;
    const float *dp = dr + b;
    int8_t xt[4 * B2_Q4_0_BLOCK];
    float dt[4];
    if (b + 4 > nb) {
        memset(xt, 0, sizeof xt);
        memset(dt, 0, sizeof dt);
        memcpy(xt, xp, (size_t)(nb - b) * B2_Q4_0_BLOCK);
        memcpy(dt, dp, sizeof(float) * (size_t)(nb - b));
        xp = xt;
        dp = dt;
    }
    for (int u = 0; u < 2; u++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)(xp + 32 * u));
        const __m256i c = _mm256_loadu_si256((const __m256i *)(const void *)(xp + 64 + 32 * u));
        o->lo[u] = _mm256_permute2x128_si256(a, c, 0x20);
        o->hi[u] = _mm256_permute2x128_si256(a, c, 0x31);
        o->off[u] = _mm256_sub_epi16(_mm256_setzero_si256(),
                                     _mm256_add_epi16(_mm256_maddubs_epi16(eights, o->lo[u]), _mm256_maddubs_epi16(eights, o->hi[u])));
    }
    o->dx = _mm_loadu_ps(dp);
}

/* acc[r][i] += one step of W rows r < R (p: the step's first byte of row
 * 0, rows rb bytes apart) with x rows i < N (x: their q4x, xstride apart) */
B2W static INL void q4_step(__m256 acc[TR][TN], const q4x *x, size_t xstride, const unsigned char *p, size_t rb,
                            const int R, const int N)
{
    const __m256i m15 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const __m256i spread[2] = {_mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3)};
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const unsigned char *q = p + (size_t)r * rb;
        uint16_t h[4];
        for (int j = 0; j < 4; j++) memcpy(&h[j], q + j * B2_Q4_0_BYTES, 2);
        const uint64_t h4 = (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
        const __m128 dw = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)h4));
        __m256 sc[TN];
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) sc[i] = _mm256_castps128_ps256(_mm_mul_ps(dw, x[i * xstride].dx));
#pragma GCC unroll 2
        for (int u = 0; u < 2; u++) {
            const unsigned char *nib = q + u * B2_Q4_0_BYTES + 2;
            const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)nib)),
                                                      _mm_loadu_si128((const __m128i *)(const void *)(nib + 2 * B2_Q4_0_BYTES)), 1);
            const __m256i lo = _mm256_and_si256(v, m15), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                const q4x *xi = &x[i * xstride];
                const __m256i t = _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xi->lo[u]), _mm256_maddubs_epi16(hi, xi->hi[u])),
                                                   xi->off[u]);
                acc[r][i] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(sc[i], spread[u]), _mm256_cvtepi32_ps(_mm256_madd_epi16(t, ones)),
                                            acc[r][i]);
            }
        }
    }
}

/* steps s0 .. s0 + ns - 1 of R W rows from w and N x rows (x: the
 * segment's q4x, row i at x + i * Q4_SEG), accumulators in a (row r,
 * x row i at a[r * TN + i]) */
B2W static INL void q4_seg(__m256 *a, const q4x *x, const unsigned char *w, size_t rb, int nb, int s0, int ns,
                           const int R, const int N)
{
    __m256 acc[TR][TN];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = a[r * TN + i];
    const b2_wpf pf = b2__wpf(w, rb, R);
    for (int s = 0; s < ns; s++) {
        const int b = 4 * (s0 + s);
        const size_t off = (size_t)b * B2_Q4_0_BYTES;
        const unsigned char *wb = w + off;
        if (b + 4 <= nb) {
            if (pf.a) /* 72 bytes a step: the lines of its bytes 0 and 64 */
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    _mm_prefetch(B2_WPF_AT(pf, off, r, rb), _MM_HINT_T0);
                    _mm_prefetch(B2_WPF_AT(pf, off + 64, r, rb), _MM_HINT_T0);
                }
            q4_step(acc, x + s, Q4_SEG, wb, rb, R, N);
        } else {
            unsigned char wt[TR * 4 * B2_Q4_0_BYTES];
            memset(wt, 0, sizeof wt);
            for (int r = 0; r < R; r++) memcpy(wt + r * 4 * B2_Q4_0_BYTES, wb + (size_t)r * rb, (size_t)(nb - b) * B2_Q4_0_BYTES);
            q4_step(acc, x + s, Q4_SEG, wt, 4 * B2_Q4_0_BYTES, R, N);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) a[r * TN + i] = acc[r][i];
}

B2W void b2__q4_rows_avx2(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                          size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q4_0_BLOCK, nsteps = (nb + 3) / 4;
    q4x xs[TN * Q4_SEG];
    __m256 acc[Q4_ROWS * TN];
    for (int r0 = 0; r0 < m; r0 += Q4_ROWS) {
        const int mr = m - r0 < Q4_ROWS ? m - r0 : Q4_ROWS;
        const unsigned char *wr = w + (size_t)r0 * rb;
        for (int i0 = 0; i0 < n; i0 += TN) {
            const int N = n - i0 < TN ? n - i0 : TN;
            for (int j = 0; j < mr * TN; j++) acc[j] = _mm256_setzero_ps();
            for (int s0 = 0; s0 < nsteps; s0 += Q4_SEG) {
                const int ns = nsteps - s0 < Q4_SEG ? nsteps - s0 : Q4_SEG;
                for (int i = 0; i < N; i++)
                    for (int s = 0; s < ns; s++)
                        q4x_make(&xs[i * Q4_SEG + s], xq + (size_t)(i0 + i) * k, xd + (size_t)(i0 + i) * nb, nb, 4 * (s0 + s));
                int r = 0;
                for (; r + TR <= mr; r += TR) {
                    if (N == TN) q4_seg(acc + r * TN, xs, wr + (size_t)r * rb, rb, nb, s0, ns, TR, TN);
                    else q4_seg(acc + r * TN, xs, wr + (size_t)r * rb, rb, nb, s0, ns, TR, 1);
                }
                for (; r < mr; r++) {
                    if (N == TN) q4_seg(acc + r * TN, xs, wr + (size_t)r * rb, rb, nb, s0, ns, 1, TN);
                    else q4_seg(acc + r * TN, xs, wr + (size_t)r * rb, rb, nb, s0, ns, 1, 1);
                }
            }
            for (int i = 0; i < N; i++)
                for (int r = 0; r < mr; r++) y[(size_t)(i0 + i) * ldy + r0 + r] = hsum8(acc[r * TN + i]);
        }
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

/* ---- the activations as q8_0 blocks ----
 * b2__wquantize_act_q8's arithmetic 8 lanes at a time: max |x| (a NaN or
 * infinity sends the block to d = NaN, q = 0), the scalar id = 127 / max
 * and d = max / 127, then x * id (the same product), rounded to nearest
 * even by vroundps (as round_ne: |x * id| <= 127.5 < 2^22), clamped to
 * +-127 and packed to bytes in order: the same bits. */
B2W void b2__act_q8_avx2(int8_t *q, float *d, const float *x, int k)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), big = _mm256_set1_ps(3.4028235e38f);
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    for (int b = 0; b < k / B2_Q8_0_BLOCK; b++) {
        const float *xb = x + (size_t)b * B2_Q8_0_BLOCK;
        int8_t *qb = q + (size_t)b * B2_Q8_0_BLOCK;
        __m256 v[4], m = _mm256_setzero_ps();
        int bad = 0;
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            const __m256 a = _mm256_and_ps(v[j], absmask);
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_NLE_UQ)); /* > max or NaN */
            m = _mm256_max_ps(m, a);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        if (bad || amax == 0) {
            d[b] = bad ? NAN : 0.0f;
            memset(qb, 0, B2_Q8_0_BLOCK);
            continue;
        }
        const __m256 id = _mm256_set1_ps(127.0f / amax);
        d[b] = amax / 127.0f;
        __m256i iq[4];
        for (int j = 0; j < 4; j++) {
            const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[j], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            iq[j] = _mm256_cvtps_epi32(_mm256_max_ps(lo, _mm256_min_ps(hi, r)));
        }
        /* packs work per 128-bit lane: int32 groups (0,1 | 2,3) of 4 come
         * out as bytes 0-3, 8-11, 16-19, 24-27 | 4-7, ..; vpermd puts them
         * back in order */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(iq[0], iq[1]), _mm256_packs_epi32(iq[2], iq[3]));
        _mm256_storeu_si256((__m256i *)(void *)qb, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
}

const b2_wimpl b2__wimpl_avx2 = {"avx2", fp_rows, b2__q8_rows_avx2, b2__q8_to_f32_avx2, b2__q4_rows_avx2,
                                 b2__q4_to_f32_avx2, b2__act_q8_avx2};

#endif
