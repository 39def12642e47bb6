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
 *   q4_0          without VNNI the AVX2 kernel; with VNNI four blocks per
 *                 512-bit step (see q4_quad below): the nibbles go
 *                 unsigned (0..15) into vpdpbusd against the activations'
 *                 int8, and -8 * (the lane's sum of q_x), once per x row
 *                 and step for the whole tile, is where the sums start:
 *                 exact integer block sums, 4 lanes per block, scaled in
 *                 16 f32 lanes, so other bits than AVX2, within the same
 *                 bound.
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
    const b2_wpf pf = b2__wpf(w, rb, R);
    int j = 0;
    for (; j + 16 <= k; j += 16) {
        const size_t off = (size_t)j * es;
        if (pf.a && !(off & 63)) /* once per 64 bytes of each row */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) _mm_prefetch(B2_WPF_AT(pf, off, r, rb), _MM_HINT_T0);
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
_Static_assert(B2_DECODE_ROWS <= QN, "a decode step's x rows fit one tile");

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
    const b2_wpf pf = b2__wpf(w, rb, R);
    for (int b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb; /* else the last block alone, in the low half */
        const size_t off = (size_t)b * B2_Q8_0_BYTES;
        if (pf.a)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                _mm_prefetch(B2_WPF_AT(pf, off, r, rb), _MM_HINT_T0);
                _mm_prefetch(B2_WPF_AT(pf, off + B2_Q8_0_BYTES, r, rb), _MM_HINT_T0);
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
    B2_WTILES_Q(m, n, TR, QN, Q8_TILE);
}

/* ---- q4_0 with VNNI: four blocks per 512-bit step ----
 * W row, blocks b..b+3 (72 bytes, two overlapping loads: bytes 0..63 and
 * 8..71): one vpermt2w puts the four blocks' 16 bytes of nibbles side by
 * side, N = [n_b | n_b+1 | n_b+2 | n_b+3]; lo = N & 15 holds values 0..15
 * of each block, hi = (N >> 4) & 15 values 16..31, unsigned, for vpdpbusd
 * (no per-row unpacking beyond one shift and two ANDs, no -8); one vpermw
 * of the first load gives the four f16 scales, block b+j's in lanes
 * 4j..4j+3.  x row, once per step for the tile's R rows: its 128 bytes of
 * the four blocks as xlo = [x_b[0..15] | x_b+1[0..15] | ..] and xhi
 * (values 16..31), two vshufi32x4, and where every row's sums start,
 * -8 * the lane's sum of x (two vpdpbusd with 8s).  Then int32 lane
 * L = 4j + l holds sum (nibble - 8) * q_x over values 4l..4l+3 and
 * 16+4l..19+4l of block b+j, exact, and acc (16 f32 lanes) +=
 * (d_w d_x) * (float)lane.  Lanes end as lane j + lane j + 8, then the
 * tree.  Not the AVX2 kernel's bits (other lanes), within the same bound.
 * The last nb % 4 blocks: W and x copied into zeroed buffers (scales 0:
 * the missing blocks add exactly 0), the same step. */

#define Q4_QUAD (4 * B2_Q4_0_BYTES) /* W bytes of one step, per row */

/* acc[r][i] += the four blocks from w (R rows rb bytes apart) times the
 * four from xq (N rows xs bytes apart; scales xd, ds floats apart) */
B2XV static INL void q4_quad(__m512 acc[TR][QN], const int8_t *xq, size_t xs, const float *xd, size_t ds,
                             const unsigned char *w, size_t rb, const int R, const int N)
{
    const __m512i m15 = _mm512_set1_epi8(15), eights = _mm512_set1_epi8(8);
    /* word 9j + 1 + u of bytes 0..63: byte 18j + 2 + 2u, nibbles of block j
     * (j < 3); block 3's from the load at byte 8 (32 + word 24 + u) */
    const __m512i nib_idx = _mm512_set_epi16(63, 62, 61, 60, 59, 58, 57, 56, 26, 25, 24, 23, 22, 21, 20, 19,
                                             17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    const __m512i scale_idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                               27, 27, 27, 27, 18, 18, 18, 18, 9, 9, 9, 9, 0, 0, 0, 0);
    const __m512i quad = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 dw[TR];
    __m512i lo[TR], hi[TR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const unsigned char *p = w + (size_t)r * rb;
        const __m512i a = _mm512_loadu_si512((const void *)p), b = _mm512_loadu_si512((const void *)(p + 8));
        const __m512i nib = _mm512_permutex2var_epi16(a, nib_idx, b);
        dw[r] = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(scale_idx, a)));
        lo[r] = _mm512_and_si512(nib, m15);
        hi[r] = _mm512_and_si512(_mm512_srli_epi16(nib, 4), m15);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++) {
        const int8_t *xp = xq + (size_t)i * xs;
        const __m512i a = _mm512_loadu_si512((const void *)xp), b = _mm512_loadu_si512((const void *)(xp + 64));
        const __m512i xlo = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        const __m512i xhi = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        const __m512i s8 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), eights, xlo), eights, xhi);
        const __m512i off = _mm512_sub_epi32(_mm512_setzero_si512(), s8);
        const __m512 dx = _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(_mm_loadu_ps(xd + (size_t)i * ds)));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512i p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(off, lo[r], xlo), hi[r], xhi);
            acc[r][i] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], dx), _mm512_cvtepi32_ps(p), acc[r][i]);
        }
    }
}

B2XV static INL void q4_tile(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                             size_t rb, int k, const int R, const int N)
{
    const int nb = k / B2_Q4_0_BLOCK;
    __m512 acc[TR][QN];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm512_setzero_ps();
    const b2_wpf pf = b2__wpf(w, rb, R);
    int b = 0;
    for (; b + 4 <= nb; b += 4) {
        const size_t off = (size_t)b * B2_Q4_0_BYTES;
        const unsigned char *wb = w + off;
        if (pf.a)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                _mm_prefetch(B2_WPF_AT(pf, off, r, rb), _MM_HINT_T0);
                _mm_prefetch(B2_WPF_AT(pf, off + 64, r, rb), _MM_HINT_T0);
            }
        q4_quad(acc, xq + (size_t)b * B2_Q4_0_BLOCK, (size_t)k, xd + b, (size_t)nb, wb, rb, R, N);
    }
    if (b < nb) { /* 1..3 blocks left: zero-padded copies */
        const int c = nb - b;
        unsigned char wt[TR * Q4_QUAD];
        int8_t xt[QN * 4 * B2_Q4_0_BLOCK];
        float dt[QN * 4];
        memset(wt, 0, sizeof wt);
        memset(xt, 0, sizeof xt);
        memset(dt, 0, sizeof dt);
        for (int r = 0; r < R; r++)
            memcpy(wt + r * Q4_QUAD, w + (size_t)r * rb + (size_t)b * B2_Q4_0_BYTES, (size_t)c * B2_Q4_0_BYTES);
        for (int i = 0; i < N; i++) {
            memcpy(xt + i * 4 * B2_Q4_0_BLOCK, xq + (size_t)i * k + (size_t)b * B2_Q4_0_BLOCK, (size_t)c * B2_Q4_0_BLOCK);
            memcpy(dt + i * 4, xd + (size_t)i * nb + b, sizeof(float) * (size_t)c);
        }
        q4_quad(acc, xt, 4 * B2_Q4_0_BLOCK, dt, 4, wt, Q4_QUAD, R, N);
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) y[(size_t)i * ldy + r] = hsum16v(acc[r][i]);
}

#define Q4_TILE(r0, i0, R, N)                                                                       \
    q4_tile(y + (size_t)(i0) * ldy + (r0), ldy, xq + (size_t)(i0) * k, xd + (size_t)(i0) * nb,         \
            w + (size_t)(r0) * rb, rb, k, R, N)

B2XV static void q4_rows_vnni(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                              size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q4_0_BLOCK;
    B2_WTILES(m, n, TR, QN, Q4_TILE);
}

const b2_wimpl b2__wimpl_avx512 = {"avx512", fp_rows, b2__q8_rows_avx2, b2__q8_to_f32_avx2, b2__q4_rows_avx2,
                                   b2__q4_to_f32_avx2, b2__act_q8_avx2};
const b2_wimpl b2__wimpl_avx512_vnni = {"avx512-vnni", fp_rows, q8_rows_vnni, b2__q8_to_f32_avx2, q4_rows_vnni,
                                        b2__q4_to_f32_avx2, b2__act_q8_avx2};

#endif
