/*
 * kernels.c - matmul (through OpenBLAS), layer norm, activations, softmax and
 * dense multi-head attention, all on row-major f32.
 *
 * Accuracy notes: layer norm accumulates mean and variance in double (the
 * reference's float32 results lie within ~1e-6 of that); GELU is the exact
 * erf form; softmax subtracts the row maximum as torch does.
 */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void b2__matmul_t(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                  int n, int m, int k, float alpha, float beta)
{
    if (n <= 0 || m <= 0) return;
    if (n == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, m, k, alpha, w, ldw, x, 1, beta, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, alpha, x, ldx, w, ldw,
                beta, y, ldy);
}

void b2__matmul_n(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                  int n, int m, int k)
{
    if (n <= 0 || m <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, m, k, 1.0f, x, ldx, w, ldw,
                0.0f, y, ldy);
}

void b2__linear(float *y, const float *x, int n, const b2_linear *l)
{
    if (l->b) {
        for (int i = 0; i < n; i++) memcpy(y + (size_t)i * l->out, l->b, sizeof(float) * l->out);
        b2__matmul_t(y, l->out, x, l->in, l->w, l->in, n, l->out, l->in, 1.0f, 1.0f);
    } else {
        b2__matmul_t(y, l->out, x, l->in, l->w, l->in, n, l->out, l->in, 1.0f, 0.0f);
    }
}

void b2__layernorm(float *y, const float *x, int n, const b2_ln *ln, float eps)
{
    int d = ln->d;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        double s = 0, ss = 0;
        for (int j = 0; j < d; j++) s += xi[j];
        double mean = s / d;
        for (int j = 0; j < d; j++) { double t = xi[j] - mean; ss += t * t; }
        float rstd = (float)(1.0 / sqrt(ss / d + (double)eps));
        float fm = (float)mean;
        for (int j = 0; j < d; j++) {
            float t = (xi[j] - fm) * rstd;
            if (ln->w) t = t * ln->w[j] + ln->b[j];
            yi[j] = t;
        }
    }
}

void b2__act(float *x, size_t n, b2_act a)
{
    switch (a) {
    case B2_ACT_GELU:
        for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        break;
    case B2_ACT_GELU_TANH:
        for (size_t i = 0; i < n; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
        }
        break;
    case B2_ACT_QUICK_GELU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        break;
    case B2_ACT_RELU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0.0f;
        break;
    case B2_ACT_SILU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    }
}

void b2__softmax(float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float s = 0;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - mx); s += x[i]; }
    float inv = 1.0f / s;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void b2__add(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void b2__attention(float *out, int ldo, const float *q, int ldq, const float *k, int ldk,
                   const float *v, int ldv, int nq, int nk, int heads, int hd,
                   float scale, float *scratch)
{
    for (int h = 0; h < heads; h++) {
        b2__matmul_t(scratch, nk, q + h * hd, ldq, k + h * hd, ldk, nq, nk, hd, scale, 0.0f);
        for (int i = 0; i < nq; i++) b2__softmax(scratch + (size_t)i * nk, nk);
        b2__matmul_n(out + h * hd, ldo, scratch, nk, v + h * hd, ldv, nq, hd, nk);
    }
}
