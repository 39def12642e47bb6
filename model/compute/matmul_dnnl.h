/*
 * matmul_dnnl.h - internal: the products with many rows on oneDNN.
 *
 * y (n, ldy)[:, :m] = x (n, ldx)[:, :k] @ W^T (+ b), with W (m, k) as the
 * weight file stores it (rows of type wt, read from the mapping: for f32
 * oneDNN reads it in place as the (k, m) matrix with strides (1, k)).
 * The math:
 *   B2_PREC_F32   f32 x f32 -> f32        W f32
 *   B2_PREC_BF16  bf16 x bf16 -> f32      W bf16, f16, q8_0 or q4_0, a tile
 *                                          of rows (about 640 KiB of bf16)
 *                                          per pool task, converted to bf16
 *                                          in oneDNN's blocked layout and
 *                                          multiplied on that thread; x
 *                                          rounded to bf16 (nearest even)
 *   B2_PREC_INT8  u8 x s8 -> s32          W quantised once at load to s8
 *                                          rows with a scale per row (output
 *                                          channel; b2__quantize_s8); x
 *                                          quantised per call, a scale and a
 *                                          zero point per row; the zero
 *                                          points and the scales applied to
 *                                          the s32 result here
 * One matmul primitive per shape, created at first use and kept for the
 * life of the process (thread-safe); a primitive whose implementation is
 * oneDNN's reference C ("ref"), whose bf16 would be emulated (no
 * AVX512-BF16 or AMX) or whose int8 would run without VNNI is refused, and
 * the caller uses its own path.
 * oneDNN's threads: as many as the compute pool (pool.h), set in the
 * calling thread before each call; the bf16 tiles' primitives run on one
 * thread each, inside the pool's tasks.
 */
#ifndef BLIP2_MATMUL_DNNL_H
#define BLIP2_MATMUL_DNNL_H
#include "wkernels.h"

#include <stdint.h>

/* The math of a linear layer's products with many rows. */
typedef enum b2_prec {
    B2_PREC_F32 = 0,  /* f32 math (the reference's) */
    B2_PREC_BF16 = 1, /* bf16 x bf16 -> f32 accumulation */
    B2_PREC_INT8 = 2, /* u8 x s8 -> s32 accumulation (VNNI) */
} b2_prec;

/* A linear layer's weights quantised for B2_PREC_INT8: w[r][i] ~=
 * scale[r] * q[r][i], q in [-127, 127]; sum[r] = sum_i q[r][i] (for the
 * activations' zero points). */
typedef struct b2_qweights {
    const int8_t *q;      /* (m, k) */
    const float *scale;   /* (m) */
    const int32_t *sum;   /* (m) */
} b2_qweights;

/* Quantises W (m, k) of type wt into q (m, k), scale (m), sum (m):
 * symmetric, a scale per row = max |w| / 127, to nearest (halves away
 * from 0), NaN as 0 (on the pool).  Returns 0, or -1 out of memory for
 * its row buffers. */
int b2__quantize_s8(int8_t *q, float *scale, int32_t *sum, const void *w, b2_wtype wt, int m, int k);

/* 1 where the CPU has AVX512-BW and AVX512-BF16: the one-step widenings
 * below, b2__f32_to_bf16's vector path and the bf16 attention
 * (kernels.h) run there; decided once. */
int b2__cpu_bf16(void);

/* y = the n f32 values of x as bf16, rounded to nearest even (NaN stays a
 * NaN, quietened); vcvtneps2bf16 where b2__cpu_bf16, the same bits in C
 * elsewhere. */
void b2__f32_to_bf16(uint16_t *y, const float *x, size_t n);

/* Rows [row0, row0 + nrows) of W (k values each, type wt) as bf16 into dst
 * (nrows, k) in one step, with the same bits as widening them to f32
 * (b2__wrows_to_f32) and rounding to nearest even: q8_0, q4_0 and f16
 * where the CPU has AVX512-BW and AVX512-BF16 and k is a multiple of 32.
 * Returns 0, or -1 (nothing written) for any other case. */
int b2__wrows_to_bf16(uint16_t *dst, const void *w, b2_wtype wt, int row0, int nrows, int k);

/* The same rows, the same bits, in oneDNN's blocked layout for bf16
 * weights of a (k, nrows) product (BA16a<nb>b2a): value (row n, column c)
 * at (n / nb) * k * nb + (c / 32) * 32 * nb + ((c % 32) / 2) * 2 * nb +
 * (n % nb) * 2 + c % 2.  nb is 16, 32 or 64, nrows a multiple of it.
 * bf16 rows are copied into the layout as they are.  Returns 0, or -1
 * (nothing written) where b2__wrows_to_bf16 declines (bf16 aside) or for
 * another nb. */
int b2__wrows_to_bf16_blocked(uint16_t *dst, const void *w, b2_wtype wt, int row0, int nrows, int k, int nb);

/* "f32", "bf16", "int8". */
const char *b2__prec_name(b2_prec p);

/* One cached product (opaque). */
typedef struct b2_dnnl_mm b2_dnnl_mm;

/* The product for these shapes, types and math, created on first use;
 * NULL if oneDNN has no acceptable implementation for it (or wt is not
 * f32 for f32 math, a reduced type for bf16 math; int8 math takes any wt,
 * its weights being the b2_qweights given to b2__dnnl_mm_run_q).  Borrowed, valid for the life of
 * the process. */
b2_dnnl_mm *b2__dnnl_mm(int n, int m, int k, int ldx, int ldy, b2_wtype wt, b2_prec prec, int bias);

/* Runs it: y (n, ldy) = x (n, ldx) @ W^T (+ b (m) if it was created with
 * a bias).  Returns 0, or a negative code (out of memory for the
 * activations in bf16, or oneDNN failed) with y unspecified. */
int b2__dnnl_mm_run(const b2_dnnl_mm *p, float *y, const float *x, const void *w, const float *b);

/* The same for a product created with B2_PREC_INT8: x (n, ldx) quantised
 * to u8 per row (scale (max - min) / 255 over the row and 0, zero point),
 * y (n, ldy) = dequantised x q^T (+ b (m) if created with a bias).  The
 * same x gives the same bits whatever the thread count. */
int b2__dnnl_mm_run_q(const b2_dnnl_mm *p, float *y, const float *x, const b2_qweights *w, const float *b);

/* The choice kept with the product: 0 undecided, 1 oneDNN, -1 the
 * caller's own path (linear.c decides by timing both).  An undecided
 * product takes the choice made for the same weights (m, k, type, math,
 * bias) with another row count, if any: a batch's rows then get the same
 * math as each alone. */
int b2__dnnl_mm_choice(b2_dnnl_mm *p);
void b2__dnnl_mm_choose(b2_dnnl_mm *p, int choice, double ms_dnnl, double ms_other);

/* The implementation's name as oneDNN reports it ("brg:avx512_core_bf16"). */
const char *b2__dnnl_mm_impl(const b2_dnnl_mm *p);

/* 1 if oneDNN computes bf16 natively on this CPU (AVX512-BF16 or AMX, as
 * far as DNNL_MAX_CPU_ISA allows), else 0; *impl (may be NULL) gets the
 * implementation of a probe product, or why not.  Decided once. */
int b2__dnnl_bf16_native(const char **impl);

/* 1 if oneDNN computes u8 x s8 natively on this CPU (AVX512-VNNI or
 * AVX-VNNI, as far as DNNL_MAX_CPU_ISA allows), else 0; *impl as above. */
int b2__dnnl_int8_native(const char **impl);

/* oneDNN's version and the instruction set it uses, e.g.
 * "oneDNN 2.6.3, avx512_core_bf16" (static storage). */
const char *b2__dnnl_info(void);

/* Writes a line per product used so far (shape, types, implementation,
 * choice and the times measured) into buf (for -v and benchmarks);
 * returns the length it needed. */
size_t b2__dnnl_report(char *buf, size_t size);

#endif
