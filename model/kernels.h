/*
 * kernels.h - internal: the numeric building blocks of the forward passes.
 *
 * Pure functions: output first, inputs const, no allocation, no logging.
 * Matrices are row-major f32.  b2__matmul_t is the one place that calls
 * OpenBLAS sgemm; everything with many rows goes through it.
 */
#ifndef BLIP2_KERNELS_H
#define BLIP2_KERNELS_H
#include <stddef.h>
#include "config.h"

/* A linear layer y = x W^T + b, as torch.nn.Linear stores it. */
typedef struct b2_linear {
    const float *w;  /* (out, in) */
    const float *b;  /* (out) or NULL */
    int out, in;
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

/* y (n, l->out) = x (n, l->in) @ W^T + b. */
void b2__linear(float *y, const float *x, int n, const b2_linear *l);

/* y (n, d) = LayerNorm(x (n, d)); y may equal x. */
void b2__layernorm(float *y, const float *x, int n, const b2_ln *ln, float eps);

/* x (n) = act(x), in place. */
void b2__act(float *x, size_t n, b2_act a);

/* x (n) = softmax(x), in place. */
void b2__softmax(float *x, int n);

/* y (n) += x (n). */
void b2__add(float *y, const float *x, size_t n);

/* Multi-head attention without masking, for nq queries and nk keys:
 * out (nq, ldo) [:, h*hd..] = softmax(scale * q_h k_h^T) v_h for each head h,
 * where q (nq, ldq), k (nk, ldk), v (nk, ldv) hold head h at columns h*hd.
 * scratch holds nq*nk floats. */
void b2__attention(float *out, int ldo, const float *q, int ldq, const float *k, int ldk,
                   const float *v, int ldv, int nq, int nk, int heads, int hd,
                   float scale, float *scratch);

#endif
