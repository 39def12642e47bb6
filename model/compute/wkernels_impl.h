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
    const char *name; /* "portable", "avx2", "avx512" */
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
     * dot product sum (nibble - 8) * q_x is exact, lane l taking values
     * 4l..4l+3 of the block (in value order, nibbles unpacked), then
     * acc += (d_w * d_x) * (float)isum in 8 lanes.  NULL in a table: the
     * dispatcher uses the portable one. */
    void (*q4)(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
               size_t rb, int n, int m, int k);
    /* y (nb * 32) = the nb q4_0 blocks at w as f32: d * (float)(nibble -
     * 8), one rounding per value, the same bits in every implementation
     * (NULL: the portable one). */
    void (*q4_to_f32)(float *y, const unsigned char *w, int nb);
} b2_wimpl;

/* How far ahead of its reads, in bytes, each W row of a tile is
 * prefetched (0: not at all); see b2__wkernels_set_prefetch. */
extern int b2__wprefetch;

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
#endif

#endif
