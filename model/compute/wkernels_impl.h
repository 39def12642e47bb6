/*
 * wkernels_impl.h - internal to wkernels*.c: one implementation of the
 * typed-weight products, as a table the dispatcher in wkernels.c picks
 * from (portable C there, AVX2 in wkernels_avx2.c, AVX-512 in
 * wkernels_avx512.c).
 *
 * Both entry points compute a block of y for m consecutive weight rows
 * (one pool task's chunk) and all n activation rows.  The contract that
 * gives batch invariance: the value of y[i][r] depends only on x row i,
 * W row r and k, never on n, m or where the pair falls in a register tile
 * (one accumulator per (i, r) pair, one loop order over k).
 */
#ifndef BLIP2_WKERNELS_IMPL_H
#define BLIP2_WKERNELS_IMPL_H
#include "wkernels.h"

typedef struct b2_wimpl {
    const char *name; /* "portable", "avx2", "avx512", "avx512-vnni" */
    /* y (n, ldy)[:, :m] = x (n, ldx)[:, :k] @ W^T, W (m, k) of type t in
     * {f32, f16, bf16}, rows rb bytes apart, any alignment. */
    void (*fp)(float *y, int ldy, const float *x, int ldx, const unsigned char *w, size_t rb,
               b2_wtype t, int n, int m, int k);
    /* The same for q8_0 weights, with the activations already quantised
     * (b2__wquantize_act_q8): xq (n, k) int8, xd (n, k / 32) block
     * scales; per block the integer dot product is exact, then
     * acc += (d_w * d_x) * (float)isum in 8 lanes. */
    void (*q8)(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
               size_t rb, int n, int m, int k);
    /* y (nb * 32) = the nb q8_0 blocks at w as f32: d * (float)q, one
     * rounding per value, the same bits in every implementation. */
    void (*q8_to_f32)(float *y, const unsigned char *w, int nb);
    /* q4_0 weights with q8_0 activations as for q8: per block the integer
     * dot product sum (nibble - 8) * q_x is exact in int32 lanes, then
     * acc += (d_w * d_x) * (float)lane in f32 lanes (portable: lane l
     * takes values 4l..4l+3 of the block, 8 lanes; the SIMD kernels
     * other groupings, e.g. values 4l..4l+3 and 16+4l..19+4l, within the
     * same bound).  NULL in a table: the dispatcher uses the portable
     * one. */
    void (*q4)(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
               size_t rb, int n, int m, int k);
    /* y (nb * 32) = the nb q4_0 blocks at w as f32: d * (float)(nibble -
     * 8), one rounding per value, the same bits in every implementation
     * (NULL: the portable one). */
    void (*q4_to_f32)(float *y, const unsigned char *w, int nb);
    /* b2__wquantize_act_q8 with the same bits (NULL: that one). */
    void (*act_q8)(int8_t *q, float *d, const float *x, int k);
} b2_wimpl;

/* The tile driver every SIMD file shares: TILE(r0, i0, R, N) for a tile
 * of R W rows from r0 and N x rows from i0, over m W rows and n x rows,
 * in tiles of TR_ x TN_ and then the row tails (R, N literal constants in
 * every expansion, so a forced-inline tile is specialised for each). */
#define B2_WTILES(m, n, TR_, TN_, TILE)                                     \
    do {                                                                    \
        int r0_ = 0;                                                        \
        for (; r0_ + (TR_) <= (m); r0_ += (TR_)) {                          \
            int i0_ = 0;                                                    \
            for (; i0_ + (TN_) <= (n); i0_ += (TN_)) TILE(r0_, i0_, TR_, TN_); \
            for (; i0_ < (n); i0_++) TILE(r0_, i0_, TR_, 1);                \
        }                                                                   \
        for (; r0_ < (m); r0_++) {                                          \
            int i0_ = 0;                                                    \
            for (; i0_ + (TN_) <= (n); i0_ += (TN_)) TILE(r0_, i0_, 1, TN_);  \
            for (; i0_ < (n); i0_++) TILE(r0_, i0_, 1, 1);                  \
        }                                                                   \
    } while (0)

/* x rows up to which a q8_0 product is a decode step: its W rows go one
 * at a time (B2_WTILES_Q) in larger pool tasks (wkernels.c).  At most
 * the q8_0 kernels' x tile (TN in wkernels_avx2.c, QN in
 * wkernels_avx512.c). */
#define B2_DECODE_ROWS 2

/* B2_WTILES for the q8_0 kernels: with one tile of x rows (a
 * decode step) the W rows go one at a time, so each thread reads W as one
 * sequential stream the hardware prefetcher follows; TR_ rows at once are
 * TR_ interleaved streams of one row each (2720 bytes at k = 2560), which
 * it loses at every row's end (one core, q8_0 with VNNI: 10-12 GB/s
 * without software prefetch against 23-24 row by row, 22 against 24.5
 * with it; bench/RESULTS.md, 2026-12-06 15:28).  With more x rows TR_ W
 * rows share each x load.  (The q4_0 kernels, with more arithmetic per
 * byte, were slower row by row: 63-68 against 57-63 ms a step.) */
#define B2_WTILES_Q(m, n, TR_, TN_, TILE)                                   \
    do {                                                                    \
        if ((n) <= B2_DECODE_ROWS) B2_WTILES(m, n, 1, TN_, TILE);           \
        else B2_WTILES(m, n, TR_, TN_, TILE);                               \
    } while (0)

/* NAME: fp_rows_t (B2_FP_ROWS) with the weight type T a constant. */
#define B2_FP_TYPED(ATTR, NAME, T)                                                                  \
    ATTR static void NAME(float *y, int ldy, const float *x, int ldx, const unsigned char *w,       \
                          size_t rb, int n, int m, int k)                                           \
    {                                                                                               \
        fp_rows_t(y, ldy, x, ldx, w, rb, T, n, m, k);                                               \
    }

/* The f32/f16/bf16 entry point of a SIMD file (b2_wimpl.fp), named fp_rows:
 * one driver per type with t a constant (so fp_tile, the file's own,
 * is specialised for it), chosen by t.  ATTR: the file's target
 * attribute; TR, TN: its tile. */
#define B2_FP_ROWS(ATTR)                                                                            \
    ATTR static INL void fp_rows_t(float *y, int ldy, const float *x, int ldx,                     \
                                   const unsigned char *w, size_t rb, b2_wtype t, int n, int m, int k) \
    {                                                                                               \
        B2_WTILES(m, n, TR, TN, FP_TILE);                                                           \
    }                                                                                               \
    B2_FP_TYPED(ATTR, fp_f32, B2_WT_F32)                                                            \
    B2_FP_TYPED(ATTR, fp_f16, B2_WT_F16)                                                            \
    B2_FP_TYPED(ATTR, fp_bf16, B2_WT_BF16)                                                          \
    static void fp_rows(float *y, int ldy, const float *x, int ldx, const unsigned char *w,         \
                        size_t rb, b2_wtype t, int n, int m, int k)                                 \
    {                                                                                               \
        switch (t) {                                                                                \
        case B2_WT_F16: fp_f16(y, ldy, x, ldx, w, rb, n, m, k); break;                              \
        case B2_WT_BF16: fp_bf16(y, ldy, x, ldx, w, rb, n, m, k); break;                            \
        default: fp_f32(y, ldy, x, ldx, w, rb, n, m, k); break;                                     \
        }                                                                                           \
    }
/* the tile call B2_FP_ROWS's driver makes (names from fp_rows_t) */
#define FP_TILE(r0, i0, R, N)                                                                       \
    fp_tile(y + (size_t)(i0) * ldy + (r0), ldy, x + (size_t)(i0) * ldx, ldx, w + (size_t)(r0) * rb, \
            rb, t, k, R, N)

/* How far ahead of its reads, in bytes, a tile's W rows are
 * prefetched (0: not at all); see b2__wkernels_set_prefetch. */
extern int b2__wprefetch;

/* Software prefetch for a tile of R W rows (rows rb bytes apart, the
 * tiles of one task one after another): each row is a stream that goes
 * on, past the row's end, in the same row of the next tiles, and each is
 * prefetched b2__wprefetch / R bytes ahead in its own stream, so the tile
 * as a whole stays b2__wprefetch bytes ahead of its reads.  (Shifting
 * every row's address by b2__wprefetch instead left the rows of a tile
 * whose R rows are longer than that only ~1 KiB ahead in their own
 * streams: bf16 at k = 2560, R = 4, 16 KiB.)  a: where the row being
 * read is prefetched at byte off of it while off < lim, b: past lim (both
 * plus r * rb for row r); a == NULL: no prefetch. */
typedef struct b2_wpf {
    const unsigned char *a, *b;
    size_t lim;
} b2_wpf;

static inline b2_wpf b2__wpf(const unsigned char *w, size_t rb, int R)
{
    b2_wpf p = {NULL, NULL, 0};
    const size_t d = (size_t)b2__wprefetch / (size_t)R;
    if (!d || !rb) return p;
    const size_t ts = (size_t)R * rb, rem = d % rb;
    p.a = w + d / rb * ts + rem;
    p.b = p.a + ts - rb;
    p.lim = rb - rem;
    return p;
}

/* the address to prefetch for row r of the tile at byte off of its rows */
#define B2_WPF_AT(p, off, r, rb) ((const char *)((off) < (p).lim ? (p).a : (p).b) + (off) + (size_t)(r) * (rb))

/* The tuner's choice (wkernels.c): the highest score[i] (> 0; 0: not a
 * candidate), unless others are within 10 % of it (b2__wkernels_test_tie):
 * then of those the one with the highest hot[i] (> 0 where measured; a
 * tie keeps the higher score).  Returns the index, or -1 if no score is
 * above 0. */
int b2__wtune_pick(const double *score, const double *hot, int n);

/* Tests only: what b2__wkernels_tune and b2__wtune_pick count as a tie
 * at the end (a fraction of the best score; 1: every candidate; < 0: the
 * default, 0.10). */
void b2__wkernels_test_tie(double tie);

/* Tests only: an extra candidate for b2__wkernels_tune (NULL: none),
 * e.g. a deliberately wrong one that must be refused. */
void b2__wkernels_test_candidate(const b2_wimpl *extra);

#if defined(__x86_64__) || defined(__i386__)
extern const b2_wimpl b2__wimpl_avx2;        /* wkernels_avx2.c */
extern const b2_wimpl b2__wimpl_avx512;      /* wkernels_avx512.c */
extern const b2_wimpl b2__wimpl_avx512_vnni; /* the same, q8_0 with VNNI */
/* AVX2's q8 entry (the avx512 table without VNNI uses it). */
void b2__q8_rows_avx2(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                      size_t rb, int n, int m, int k);
void b2__q8_to_f32_avx2(float *y, const unsigned char *w, int nb);
/* AVX2's q4_0 entries (the avx512 table without VNNI uses them). */
void b2__q4_rows_avx2(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                      size_t rb, int n, int m, int k);
void b2__q4_to_f32_avx2(float *y, const unsigned char *w, int nb);
/* b2__wquantize_act_q8 in AVX2, the same bits (every SIMD table uses it). */
void b2__act_q8_avx2(int8_t *q, float *d, const float *x, int k);
#endif

#endif
