/*
 * kernels.h - internal: the numeric building blocks of the forward passes.
 *
 * Pure functions: output first, inputs const, no allocation, no logging.
 * Matrices are row-major f32.  b2__matmul_t is the one place that calls
 * OpenBLAS sgemm; everything with many rows goes through it.  The
 * element-wise kernels (GELU, softmax, layer norm, residual adds) run the
 * fastest implementation the CPU supports, chosen at run time (b2_simd):
 * AVX2+FMA (kernels_avx2.c) or portable C (kernels.c).
 */
#ifndef BLIP2_KERNELS_H
#define BLIP2_KERNELS_H
#include <stddef.h>
#include "wkernels.h"
#include "matmul_dnnl.h"

/* Activation functions of the configs (config.h reads them by name). */
typedef enum b2_act { B2_ACT_GELU, B2_ACT_GELU_TANH, B2_ACT_QUICK_GELU, B2_ACT_RELU, B2_ACT_SILU } b2_act;


/* A linear layer y = x W^T + b, as torch.nn.Linear stores it.  W is f32
 * (wt == B2_WT_F32, the zero value) or rows of another type (wkernels.h),
 * as a GGUF file stores them.  prec is the math of its products with many
 * rows (matmul_dnnl.h; the loader sets it per model, f32 by default, int8
 * only with q). */
typedef struct b2_linear {
    const void *w;   /* (out, in) of type wt */
    const float *b;  /* (out) or NULL */
    int out, in;
    b2_wtype wt;
    b2_prec prec;
    /* prec B2_PREC_INT8: w quantised to s8 rows (the model owns it); the
     * paths that do not compute in int8 still read w */
    const b2_qweights *q;
} b2_linear;

/* LayerNorm affine parameters; w/b NULL for elementwise_affine=False. */
typedef struct b2_ln {
    const float *w, *b; /* (d) */
    int d;
} b2_ln;

/* y (n, ldy) [:, :m] = alpha * x (n, ldx)[:, :k] @ w (m, ldw)[:, :k]^T (+ beta*y). */
void b2__matmul_t(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                  int n, int m, int k, float alpha, float beta);
/* y (n, ldy) [:, :m] = x (n, ldx) [:, :k] @ w (k, ldw) [:, :m]. */
void b2__matmul_n(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                  int n, int m, int k);

/* y (n, l->out) = x (n, l->in) @ W^T + b.  At least b2__mm_min_rows rows:
 * oneDNN in the layer's math (l->prec) where it has an implementation
 * (matmul_dnnl.h) and was measured faster for that shape than the path
 * below, chosen the first time the shape comes (BLIP2_MATMUL=onednn|own
 * forces one).  Otherwise: f32 weights through b2__matmul_t; typed weights
 * with few rows through b2__wmatmul_rows, with many rows tiles of W
 * converted to f32 and sgemm. */
void b2__linear(float *y, const float *x, int n, const b2_linear *l);
/* Rows from which b2__linear (16) and, for layers whose math is not f32,
 * b2__linear_rows (32) try oneDNN; tests set them lower. */
extern int b2__mm_min_rows, b2__mm_min_rows_dec;
/* Weight rows per tile of that conversion (default 256; benchmarks set it). */
extern int b2__wtile_rows;
/* y (n, l->out) = x (n, l->in) @ W^T, without the bias. */
void b2__linear_nobias(float *y, const float *x, int n, const b2_linear *l);

/* The same products with a guarantee the decoder needs: each row's result
 * has the same bits whatever n is (one kernel and one summation order for
 * every row), so a request decoded in a batch gets exactly the numbers it
 * gets alone.  y (n, ldy) [:, :m] = x (n, ldx) [:, :k] @ w (m, ldw)^T. */
void b2__matmul_rows(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                     int n, int m, int k);
/* Typed weights go through b2__wmatmul_rows (row-invariant).  The
 * exception: a layer whose math is not f32 (l->prec, a GGUF of a reduced
 * type) with at least b2__mm_min_rows_dec rows goes to oneDNN as
 * b2__linear does (prefill); such rows' bits then depend on the batch. */
void b2__linear_rows(float *y, const float *x, int n, const b2_linear *l);
/* b2__linear_rows of the same x through count layers (y[i] (n,
 * l[i]->out)), with each y[i]'s bits: typed weights of one type and
 * input width that b2__linear_rows would give b2__wmatmul_rows (at most
 * B2_WMULTI_MAX) go through one b2__wmatmul_rows_multi, the pool's
 * threads meeting once instead of once per layer (a decoder layer's q, k
 * and v); any other case, one b2__linear_rows each. */
void b2__linear_rows_multi(float *const *y, const float *x, int n, const b2_linear *const *l, int count);

/* Names l as the product of n rows that follows the one about to start,
 * so that the pool's threads read its first bytes while they wait between
 * the two (a decode step's typed weights: b2__wprefetch_next); l NULL,
 * f32 weights or many rows: no hint.  Changes no result. */
void b2__linear_prefetch_next(const b2_linear *l, int n);

/* The matrix backend of the many-row products in math p, for reports:
 * "oneDNN" (bf16 math: oneDNN, per shape unless the own path measured
 * faster) or "own" (f32 math, or BLIP2_MATMUL=own: OpenBLAS sgemm and
 * the own kernels).  Static string. */
const char *b2__linear_backend(b2_prec p);

/* y (n, d) = LayerNorm(x (n, d)); y may equal x. */
void b2__layernorm(float *y, const float *x, int n, const b2_ln *ln, float eps);

/* x (n) = act(x), in place. */
void b2__act(float *x, size_t n, b2_act a);

/* x (n, d) = act(x + b), in place; b (d) is added to every row, or NULL. */
void b2__bias_act(float *x, const float *b, int n, int d, b2_act a);

/* h (n, d) += x (n, d) + b (d) (b may be NULL), then y (n, d) =
 * LayerNorm(h), row by row while the row is in cache.  y must not alias
 * h or x. */
void b2__residual_layernorm(float *y, float *h, const float *x, const float *b, int n,
                            const b2_ln *ln, float eps);

/* x (n) = softmax(x), in place. */
void b2__softmax(float *x, int n);

/* y (n) += x (n). */
void b2__add(float *y, const float *x, size_t n);

/* y (n) = the n IEEE half (f16) or bfloat16 values at x (any alignment), as
 * f32; large n is spread over the compute pool.  For converting 16-bit
 * checkpoints at load. */
void b2__f16_to_f32_n(float *y, const void *x, size_t n);
void b2__bf16_to_f32_n(float *y, const void *x, size_t n);

/* One implementation of the element-wise kernels.  Semantics as the
 * functions above; GELU is the exact erf form. */
typedef struct b2_simd {
    const char *name;                                 /* "avx2", "portable" */
    void (*gelu_bias)(float *x, const float *b, size_t n, size_t d); /* x (n,d) = gelu(x + b) */
    void (*softmax)(float *x, int n);
    void (*layernorm)(float *y, const float *x, int n, const b2_ln *ln, float eps);
    void (*residual)(float *h, const float *x, const float *b, size_t n, size_t d); /* h += x + b */
    /* c (m, ldc)[:, :n] = alpha * a (m, lda)[:, :k] @ b (k, ldb)[:, :n]; NULL:
     * attention uses OpenBLAS, one head after another */
    void (*gemm_nn)(float *c, int ldc, const float *a, int lda, const float *b, int ldb,
                    int m, int n, int k, float alpha);
    /* y (n, ldy)[:, :m] = alpha * x (n, ldx)[:, :k] @ w (m, ldw)[:, :k]^T + beta * y,
     * for few rows n; NULL: OpenBLAS does all products */
    void (*gemm_nt)(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                    int n, int m, int k, float alpha, float beta);
    /* One query (decoding), heads [h0, h1): out[h*hd..] = softmax(scale *
     * q_h k_h^T) v_h, with the bits of gemm_nt, softmax and gemm_nn head by
     * head but each key and value row read once in memory order; s holds
     * (h1 - h0) * nk floats; hd <= 512.  NULL: head by head. */
    void (*attend1)(float *out, const float *q, const float *k, int ldk, const float *v, int ldv,
                    int nk, int h0, int h1, int hd, float scale, float *s);
    void (*f16_to_f32)(float *y, const void *x, size_t n);
    void (*bf16_to_f32)(float *y, const void *x, size_t n);
} b2_simd;

/* The implementation in use: the best this CPU runs, or the one named by
 * the environment variable BLIP2_KERNELS (decided once, at first use). */
const b2_simd *b2__simd(void);
/* The implementation called name, or NULL if this build or CPU lacks it
 * (for tests and benchmarks that compare them). */
const b2_simd *b2__simd_get(const char *name);

/* Multi-head attention without masking, for nq queries and nk keys:
 * out (nq, ldo) [:, h*hd..] = softmax(scale * q_h k_h^T) v_h for each head h,
 * where q (nq, ldq), k (nk, ldk), v (nk, ldv) hold head h at columns h*hd.
 * Heads run in parallel on the compute pool (pool.h) when the SIMD kernels
 * have gemm_nn.  scratch holds b2__attention_scratch(nq, nk, hd) floats. */
void b2__attention(float *out, int ldo, const float *q, int ldq, const float *k, int ldk,
                   const float *v, int ldv, int nq, int nk, int heads, int hd,
                   float scale, float *scratch);
size_t b2__attention_scratch(int nq, int nk, int hd);

/* b2__attention with both products in bf16 (attention_bf16.c): Q, K, the
 * softmax's output and V rounded to bf16 (nearest even), the sums in f32,
 * the softmax in f32, as the bf16 matmul takes its operands.  For the
 * vision encoder when its products run in bf16 math.  Returns -1 having
 * done nothing where the CPU lacks AVX512-BF16 (and the scratch size is
 * then 0).  scratch holds b2__attention_bf16_scratch(nq, nk, hd) bytes. */
int b2__attention_bf16(float *out, int ldo, const float *q, int ldq, const float *k, int ldk,
                       const float *v, int ldv, int nq, int nk, int heads, int hd, float scale, void *scratch);
size_t b2__attention_bf16_scratch(int nq, int nk, int hd);

#endif
