/*
 * linear.c - y = x W^T + b for a b2_linear of any stored weight type: the
 * one place that chooses how a linear layer's product is computed.
 *
 * f32 weights go to the f32 matrix products of kernels.c (b2__matmul_t:
 * the skinny AVX2 path or OpenBLAS sgemm); typed weights (f16, bf16, q8_0)
 * with few rows of x go to the typed row kernels of wkernels.c, and with
 * many rows are widened a tile of TILE_ROWS weight rows at a time (spread
 * over the pool) and multiplied with sgemm.  Both kernel files are leaves
 * below this one: neither calls the other's products.
 *
 * Products with many rows may instead go to oneDNN (matmul_dnnl.c), in
 * the layer's math (l->prec: f32, or bf16 for a GGUF of a reduced type on
 * a CPU with native bf16, or int8 on the s8 copy l->q when asked for):
 * per shape, whichever of oneDNN and the path above was faster the first
 * time (backend_linear below).
 */
#include "kernels.h"
#include "matmul_dnnl.h"
#include "pool.h"
#include "wkernels.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static int backend_linear(float *y, const float *x, int n, const b2_linear *l, int bias);

int b2__mm_min_rows = 16;
int b2__mm_min_rows_dec = 32;

/* Whether b2__linear_rows tries oneDNN for n rows of l (prefill in bf16 math) */
static int rows_backend(const b2_linear *l, int n) { return l->prec != B2_PREC_F32 && n >= b2__mm_min_rows_dec; }

static void add_bias(float *y, int n, const b2_linear *l)
{
    if (l->b)
        for (int i = 0; i < n; i++) b2__add(y + (size_t)i * l->out, l->b, (size_t)l->out);
}

void b2__linear_rows(float *y, const float *x, int n, const b2_linear *l)
{
    if (rows_backend(l, n) && backend_linear(y, x, n, l, 1) == 0) return;
    if (l->wt == B2_WT_F32) b2__matmul_rows(y, l->out, x, l->in, l->w, l->in, n, l->out, l->in);
    else b2__wmatmul_rows(y, l->out, x, l->in, l->w, l->wt, n, l->out, l->in);
    add_bias(y, n, l);
}

void b2__linear_prefetch_next(const b2_linear *l, int n)
{
    if (l && l->wt != B2_WT_F32 && !rows_backend(l, n)) b2__wprefetch_next(l->w, l->wt, n, l->out, l->in);
    else b2__wprefetch_next(NULL, B2_WT_F32, n, 0, 0); /* no hint */
}

void b2__linear_rows_multi(float *const *y, const float *x, int n, const b2_linear *const *l, int count)
{
    if (n <= 0 || count <= 0) return;
    int fuse = count <= B2_WMULTI_MAX;
    for (int i = 0; i < count && fuse; i++)
        fuse = l[i]->wt != B2_WT_F32 && l[i]->wt == l[0]->wt && l[i]->in == l[0]->in && !rows_backend(l[i], n);
    if (!fuse) {
        for (int i = 0; i < count; i++) b2__linear_rows(y[i], x, n, l[i]);
        return;
    }
    int ldy[B2_WMULTI_MAX], m[B2_WMULTI_MAX];
    const void *w[B2_WMULTI_MAX];
    for (int i = 0; i < count; i++) {
        ldy[i] = m[i] = l[i]->out;
        w[i] = l[i]->w;
    }
    b2__wmatmul_rows_multi(y, ldy, x, l[0]->in, w, l[0]->wt, n, m, l[0]->in, count);
    for (int i = 0; i < count; i++) add_bias(y[i], n, l[i]);
}

/* Typed weights with at most this many rows of x use b2__wmatmul_rows;
 * more rows convert TILE_ROWS rows of W at a time to f32 (spread over the
 * pool in CONV_CHUNK-row tasks) and multiply the tile with sgemm. */
#define TYPED_FEW_ROWS 8
#define CONV_CHUNK 16
int b2__wtile_rows = 256; /* bench/bench_wtile.c measured it */
#define TILE_ROWS b2__wtile_rows

typedef struct conv_job {
    float *dst;
    const void *w;
    b2_wtype t;
    int row0, nrows, k;
} conv_job;

static void conv_task(void *ctx, int task, int slot)
{
    const conv_job *j = ctx;
    (void)slot;
    const int r = task * CONV_CHUNK, nr = j->nrows - r < CONV_CHUNK ? j->nrows - r : CONV_CHUNK;
    b2__wrows_to_f32(j->dst + (size_t)r * j->k, j->w, j->t, j->row0 + r, nr, j->k);
}

/* y (n, out) = x (n, in) @ W^T + beta * y for any weight type. */
static void linear_mm(float *y, const float *x, int n, const b2_linear *l, float beta)
{
    const int m = l->out, k = l->in;
    if (l->wt == B2_WT_F32) {
        b2__matmul_t(y, m, x, k, l->w, k, n, m, k, 1.0f, beta);
        return;
    }
    float *tile = n > TYPED_FEW_ROWS ? malloc(sizeof(float) * (size_t)TILE_ROWS * k) : NULL;
    if (!tile) { /* few rows (or no memory for a tile): the row kernels */
        if (beta == 0.0f) {
            b2__wmatmul_rows(y, m, x, k, l->w, l->wt, n, m, k);
            return;
        }
        float *t = malloc(sizeof(float) * (size_t)n * m);
        if (t) {
            b2__wmatmul_rows(t, m, x, k, l->w, l->wt, n, m, k);
            b2__add(y, t, (size_t)n * m);
            free(t);
            return;
        }
        for (int i = 0; i < n; i++) { /* no memory at all: a row at a time through y's own row */
            float acc[1];
            for (int r = 0; r < m; r++) {
                b2__wmatmul_rows(acc, 1, x + (size_t)i * k, k, (const unsigned char *)l->w +
                                 (size_t)r * b2__wt_row_bytes(l->wt, k), l->wt, 1, 1, k);
                y[(size_t)i * m + r] += acc[0];
            }
        }
        return;
    }
    for (int r0 = 0; r0 < m; r0 += TILE_ROWS) {
        const int tr = m - r0 < TILE_ROWS ? m - r0 : TILE_ROWS;
        conv_job j = {tile, l->w, l->wt, r0, tr, k};
        b2__parallel_for((tr + CONV_CHUNK - 1) / CONV_CHUNK, conv_task, &j);
        b2__matmul_t(y + r0, m, x, k, tile, k, n, tr, k, 1.0f, beta);
    }
    free(tile);
}

/* ---- the math backend for products with many rows ----
 * A product of at least b2__mm_min_rows rows whose weight type and math
 * oneDNN accepts (matmul_dnnl.h) runs on oneDNN or on the path above
 * (OpenBLAS, the typed tiles), whichever was faster the first time that
 * weight came: both run twice, interleaved, into y, and the faster is
 * kept for the life of the process and for every row count (so a row
 * gets the same math alone as in a batch; b2__dnnl_mm_choice).
 * BLIP2_MATMUL=onednn or =own forces one. */

static int mm_mode(void)
{
    static _Atomic int mode; /* 0 unread, 1 auto, 2 oneDNN, 3 own */
    int v = mode;
    if (!v) {
        const char *e = getenv("BLIP2_MATMUL");
        v = !e || !*e || !strcmp(e, "auto") ? 1 : !strcmp(e, "onednn") ? 2 : 3;
        mode = v;
    }
    return v;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

const char *b2__linear_backend(b2_prec p)
{
    return p != B2_PREC_F32 && mm_mode() != 3 ? "oneDNN" : "own";
}

/* y (n, out) = x (n, in) @ W^T (+ b if bias) on the path above */
static void own_linear(float *y, const float *x, int n, const b2_linear *l, int bias)
{
    if (bias && l->b) {
        for (int i = 0; i < n; i++) memcpy(y + (size_t)i * l->out, l->b, sizeof(float) * l->out);
        linear_mm(y, x, n, l, 1.0f);
    } else {
        linear_mm(y, x, n, l, 0.0f);
    }
}

/* 0: y computed (on oneDNN, or by own_linear while timing); -1: not, the
 * caller runs its own path */
static int backend_linear(float *y, const float *x, int n, const b2_linear *l, int bias)
{
    const int mode = mm_mode();
    if (mode == 3) return -1;
    const float *b = bias ? l->b : NULL;
    const b2_prec prec = l->prec == B2_PREC_INT8 && !l->q ? B2_PREC_F32 : l->prec;
    b2_dnnl_mm *p = b2__dnnl_mm(n, l->out, l->in, l->in, l->out, l->wt, prec, b != NULL);
    if (!p) return -1;
#define RUN() (prec == B2_PREC_INT8 ? b2__dnnl_mm_run_q(p, y, x, l->q, b) : b2__dnnl_mm_run(p, y, x, l->w, b))
    int ch = mode == 2 ? 1 : b2__dnnl_mm_choice(p);
    if (ch == 0) { /* the first time: both twice, interleaved; keep the faster */
        double td = 1e30, to = 1e30;
        for (int r = 0; r < 2; r++) {
            const double t0 = now_ms();
            if (RUN() < 0) return -1;
            const double t1 = now_ms();
            own_linear(y, x, n, l, bias);
            const double t2 = now_ms();
            td = t1 - t0 < td ? t1 - t0 : td;
            to = t2 - t1 < to ? t2 - t1 : to;
        }
        ch = td < to ? 1 : -1;
        b2__dnnl_mm_choose(p, ch, td, to);
        if (ch < 0) return 0; /* y holds own_linear's result */
    }
    if (ch < 0) return -1;
    return RUN() < 0 ? -1 : 0;
#undef RUN
}

void b2__linear(float *y, const float *x, int n, const b2_linear *l)
{
    if (n <= 0) return;
    if (n >= b2__mm_min_rows && backend_linear(y, x, n, l, 1) == 0) return;
    own_linear(y, x, n, l, 1);
}

void b2__linear_nobias(float *y, const float *x, int n, const b2_linear *l)
{
    if (n <= 0) return;
    if (n >= b2__mm_min_rows && backend_linear(y, x, n, l, 0) == 0) return;
    linear_mm(y, x, n, l, 0.0f);
}
