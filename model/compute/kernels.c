/*
 * kernels.c - matmul, layer norm, activations, softmax and dense multi-head
 * attention, all on row-major f32.
 *
 * The element-wise kernels exist twice: the portable C here (libm's erff
 * and expf) and AVX2+FMA in kernels_avx2.c; b2__simd() picks one the first
 * time it is asked (cpuid), the public functions below call through it.
 * Work is spread over the compute pool (pool.c): rows of element-wise
 * passes, heads of attention, and chunks of weight rows of the products
 * with few rows.  Products:
 *   many rows (vision, Q-Former cross-attention keys) -> OpenBLAS sgemm
 *   2..64 rows (prefill, Q-Former, batched decode)   -> SIMD gemm_nt
 *   one row (decode)                                  -> OpenBLAS sgemv
 *
 * Accuracy notes: layer norm accumulates mean and variance in double (the
 * reference's float32 results lie within ~1e-6 of that); GELU is the exact
 * erf form; softmax subtracts the row maximum as torch does.
 */
#include "kernels.h"
#include "pool.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

/* ---- portable implementations ---- */

static void gelu_bias_c(float *x, const float *b, size_t n, size_t d)
{
    for (size_t i = 0; i < n; i++) {
        float *xi = x + i * d;
        if (b)
            for (size_t j = 0; j < d; j++) xi[j] += b[j];
        for (size_t j = 0; j < d; j++) xi[j] = 0.5f * xi[j] * (1.0f + erff(xi[j] * 0.70710678118654752f));
    }
}

static void softmax_c(float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float s = 0;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - mx); s += x[i]; }
    float inv = 1.0f / s;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

static void layernorm_c(float *y, const float *x, int n, const b2_ln *ln, float eps)
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

static void residual_c(float *h, const float *x, const float *b, size_t n, size_t d)
{
    for (size_t i = 0; i < n; i++) {
        float *hi = h + i * d;
        const float *xi = x + i * d;
        if (b)
            for (size_t j = 0; j < d; j++) hi[j] += xi[j] + b[j];
        else
            for (size_t j = 0; j < d; j++) hi[j] += xi[j];
    }
}

/* y (n) = the n 16-bit values at x (any alignment), each widened by conv */
static inline void halves_to_f32(float *y, const void *x, size_t n, float (*conv)(uint16_t))
{
    const unsigned char *p = x;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        y[i] = conv(h);
    }
}

static void f16_to_f32_c(float *y, const void *x, size_t n) { halves_to_f32(y, x, n, b2__f16_to_f32); }
static void bf16_to_f32_c(float *y, const void *x, size_t n) { halves_to_f32(y, x, n, b2__bf16_to_f32); }

static const b2_simd simd_portable = {
    .name = "portable",
    .gelu_bias = gelu_bias_c,
    .softmax = softmax_c,
    .layernorm = layernorm_c,
    .residual = residual_c,
    .gemm_nn = NULL,
    .gemm_nt = NULL,
    .f16_to_f32 = f16_to_f32_c,
    .bf16_to_f32 = bf16_to_f32_c,
};

#if defined(__x86_64__) || defined(__i386__)
extern const b2_simd b2__simd_avx2; /* kernels_avx2.c */

static int have_avx2(void)
{
    unsigned a, b, c, d; /* F16C by cpuid: clang 14 has no __builtin_cpu_supports("f16c") */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

const b2_simd *b2__simd_get(const char *name)
{
    if (!strcmp(name, "portable")) return &simd_portable;
#if defined(__x86_64__) || defined(__i386__)
    if (!strcmp(name, "avx2") && have_avx2()) return &b2__simd_avx2;
#endif
    return NULL;
}

const b2_simd *b2__simd(void)
{
    /* decided once; a race only stores the same pointer twice.
     * BLIP2_KERNELS=portable (or avx2) forces a choice, for tests. */
    static const b2_simd *_Atomic chosen;
    const b2_simd *s = chosen;
    if (!s) {
        const char *want = getenv("BLIP2_KERNELS");
        if (want && *want) s = b2__simd_get(want);
        if (!s) s = b2__simd_get("avx2");
        if (!s) s = &simd_portable;
        chosen = s;
    }
    return s;
}

/* ---- matrix products ---- */

/* Products with at most this many rows, against a weight of at least
 * SKINNY_MIN_W elements, go to the SIMD gemm_nt (if any) in chunks of
 * SKINNY_CHUNK weight rows spread over the compute pool; OpenBLAS spends
 * as long repacking such a weight as multiplying with it. */
#define SKINNY_MIN_ROWS 2 /* one row: OpenBLAS's sgemv streams faster */
#define SKINNY_MAX_ROWS 64
#define SKINNY_MIN_W (1 << 16)
#define SKINNY_CHUNK 64

typedef struct nt_job {
    float *y;
    const float *x, *w;
    int ldy, ldx, ldw, n, m, k;
    float alpha, beta;
    const b2_simd *simd;
} nt_job;

static void nt_task(void *ctx, int t, int slot)
{
    const nt_job *j = ctx;
    (void)slot;
    const int j0 = t * SKINNY_CHUNK, mm = j->m - j0 < SKINNY_CHUNK ? j->m - j0 : SKINNY_CHUNK;
    j->simd->gemm_nt(j->y + j0, j->ldy, j->x, j->ldx, j->w + (size_t)j0 * j->ldw, j->ldw, j->n, mm, j->k,
                     j->alpha, j->beta);
}

void b2__matmul_t(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                  int n, int m, int k, float alpha, float beta)
{
    if (n <= 0 || m <= 0) return;
    const b2_simd *simd = b2__simd();
    if (simd->gemm_nt && n >= SKINNY_MIN_ROWS && n <= SKINNY_MAX_ROWS && (size_t)m * k >= SKINNY_MIN_W) {
        nt_job j = {y, x, w, ldy, ldx, ldw, n, m, k, alpha, beta, simd};
        b2__parallel_for((m + SKINNY_CHUNK - 1) / SKINNY_CHUNK, nt_task, &j);
        return;
    }
    if (n == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, m, k, alpha, w, ldw, x, 1, beta, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, alpha, x, ldx, w, ldw,
                beta, y, ldy);
}

void b2__matmul_rows(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                     int n, int m, int k)
{
    if (n <= 0 || m <= 0) return;
    const b2_simd *simd = b2__simd();
    if (simd->gemm_nt) { /* every row through gemm_nt, whatever the tile it lands in */
        for (int r0 = 0; r0 < n; r0 += SKINNY_MAX_ROWS) {
            const int nn = n - r0 < SKINNY_MAX_ROWS ? n - r0 : SKINNY_MAX_ROWS;
            nt_job j = {y + (size_t)r0 * ldy, x + (size_t)r0 * ldx, w, ldy, ldx, ldw, nn, m, k, 1.0f, 0.0f, simd};
            b2__parallel_for((m + SKINNY_CHUNK - 1) / SKINNY_CHUNK, nt_task, &j);
        }
        return;
    }
    for (int i = 0; i < n; i++) /* portable: one sgemv per row */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, m, k, 1.0f, w, ldw, x + (size_t)i * ldx, 1, 0.0f,
                    y + (size_t)i * ldy, 1);
}

void b2__matmul_n(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                  int n, int m, int k)
{
    if (n <= 0 || m <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, m, k, 1.0f, x, ldx, w, ldw,
                0.0f, y, ldy);
}

/* ---- element-wise kernels, rows spread over the compute pool ---- */

/* Below this many floats a pass is not worth waking a thread for. */
#define PAR_MIN_FLOATS 32768

/* One pass over n rows of d floats, cut into tasks of whole rows. */
typedef struct rows_job {
    int kind;                 /* RJ_* */
    float *y, *h;
    const float *x, *b;
    const b2_ln *ln;
    float eps;
    size_t d;
    int n, per;               /* rows, rows per task */
    const b2_simd *k;
} rows_job;

enum { RJ_LN, RJ_RES_LN, RJ_GELU };

static void rows_task(void *ctx, int t, int slot)
{
    const rows_job *j = ctx;
    (void)slot;
    const int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
    const size_t d = j->d;
    switch (j->kind) {
    case RJ_LN:
        j->k->layernorm(j->y + r0 * d, j->x + r0 * d, r1 - r0, j->ln, j->eps);
        break;
    case RJ_RES_LN:
        for (int i = r0; i < r1; i++) {
            j->k->residual(j->h + i * d, j->x + i * d, j->b, 1, d);
            j->k->layernorm(j->y + i * d, j->h + i * d, 1, j->ln, j->eps);
        }
        break;
    case RJ_GELU:
        j->k->gelu_bias(j->y + r0 * d, j->b, (size_t)(r1 - r0), d);
        break;
    }
}

static void run_rows(rows_job *j)
{
    const size_t total = (size_t)j->n * j->d;
    int tasks = 1;
    if (total >= PAR_MIN_FLOATS) {
        /* a few tasks per thread, so a stalled vCPU's share can move */
        tasks = 4 * b2__pool_size();
        if ((size_t)tasks > total / (PAR_MIN_FLOATS / 4)) tasks = (int)(total / (PAR_MIN_FLOATS / 4));
        if (tasks > j->n) tasks = j->n;
        if (tasks < 1) tasks = 1;
    }
    j->per = (j->n + tasks - 1) / tasks;
    tasks = (j->n + j->per - 1) / j->per;
    j->k = b2__simd();
    if (tasks == 1) rows_task(j, 0, 0);
    else b2__parallel_for(tasks, rows_task, j);
}

void b2__layernorm(float *y, const float *x, int n, const b2_ln *ln, float eps)
{
    rows_job j = {.kind = RJ_LN, .y = y, .x = x, .ln = ln, .eps = eps, .d = (size_t)ln->d, .n = n};
    run_rows(&j);
}

void b2__residual_layernorm(float *y, float *h, const float *x, const float *b, int n,
                            const b2_ln *ln, float eps)
{
    rows_job j = {.kind = RJ_RES_LN, .y = y, .h = h, .x = x, .b = b, .ln = ln, .eps = eps,
                  .d = (size_t)ln->d, .n = n};
    run_rows(&j);
}

static void gelu_rows(float *x, const float *b, int n, size_t d)
{
    rows_job j = {.kind = RJ_GELU, .y = x, .b = b, .d = d, .n = n};
    run_rows(&j);
}

void b2__act(float *x, size_t n, b2_act a)
{
    switch (a) {
    case B2_ACT_GELU:
        if (n % 1024 == 0 && n / 1024 <= INT32_MAX) gelu_rows(x, NULL, (int)(n / 1024), 1024);
        else b2__simd()->gelu_bias(x, NULL, 1, n);
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
    case B2_ACT_RELU: { /* blocks of 8 the compiler turns into compare-and-mask: a branch per value
                          * missed on every other one (activations' signs are a coin toss), ~4 ns each */
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; j++) x[i + j] = x[i + j] > 0 ? x[i + j] : 0.0f;
        for (; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0.0f;
        break;
    }
    case B2_ACT_SILU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
        break;
    }
}

void b2__softmax(float *x, int n)
{
    b2__simd()->softmax(x, n);
}

void b2__bias_act(float *x, const float *b, int n, int d, b2_act a)
{
    if (a == B2_ACT_GELU) {
        gelu_rows(x, b, n, (size_t)d);
        return;
    }
    if (b)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) x[(size_t)i * d + j] += b[j];
    b2__act(x, (size_t)n * d, a);
}

/* ---- 16-bit to f32, in chunks over the pool ---- */

#define CONVERT_CHUNK ((size_t)1 << 20)

typedef struct cvt_job {
    float *y;
    const unsigned char *x;
    size_t n;
    void (*fn)(float *, const void *, size_t);
} cvt_job;

static void cvt_task(void *ctx, int t, int slot)
{
    const cvt_job *j = ctx;
    (void)slot;
    const size_t i0 = (size_t)t * CONVERT_CHUNK, len = j->n - i0 < CONVERT_CHUNK ? j->n - i0 : CONVERT_CHUNK;
    j->fn(j->y + i0, j->x + 2 * i0, len);
}

static void convert(float *y, const void *x, size_t n, void (*fn)(float *, const void *, size_t))
{
    cvt_job j = {y, x, n, fn};
    const size_t tasks = (n + CONVERT_CHUNK - 1) / CONVERT_CHUNK;
    if (tasks <= 1 || tasks > INT32_MAX) fn(y, x, n);
    else b2__parallel_for((int)tasks, cvt_task, &j);
}

void b2__f16_to_f32_n(float *y, const void *x, size_t n) { convert(y, x, n, b2__simd()->f16_to_f32); }
void b2__bf16_to_f32_n(float *y, const void *x, size_t n) { convert(y, x, n, b2__simd()->bf16_to_f32); }

void b2__add(float *y, const float *x, size_t n)
{
    b2__simd()->residual(y, x, NULL, 1, n);
}

/* one head per task: scores S (nq, nk), then softmax, then S v_h.  (One
 * query, decoding, takes simd->attend1 instead: att1_task below.)  With
 * few queries the scores are dot products of each query
 * with the key rows as they lie in the cache (gemm_nt); with many, the
 * keys are first transposed into kt (hd, nkp) so both products stream rows
 * of their right operand.  (Transposing for one query cost 4.5 ms of a
 * 2.7b decode step at 53 keys and 57 ms at 250, kt's 1 KiB stride
 * thrashing L1; bench/RESULTS.md, 2026-12-06 15:28.) */
#define ATT_DIRECT_MAX 8 /* queries scored straight from the key rows */
typedef struct att_job {
    float *out;
    const float *q, *k, *v;
    int ldo, ldq, ldk, ldv, nq, nk, nkp, hd, heads;
    float scale;
    float *scratch;
    const b2_simd *simd;
} att_job;

static size_t att_slot_floats(int nq, int nk, int hd)
{
    const size_t nkp = ((size_t)nk + 15) & ~(size_t)15;
    return (size_t)nq * nk + (size_t)hd * nkp;
}

static void att_head(void *ctx, int h, int slot)
{
    const att_job *j = ctx;
    float *s = j->scratch + (size_t)slot * att_slot_floats(j->nq, j->nk, j->hd);
    float *kt = s + (size_t)j->nq * j->nk;
    const float *kh = j->k + (size_t)h * j->hd, *qh = j->q + (size_t)h * j->hd;
    if (j->nq <= ATT_DIRECT_MAX && j->simd->gemm_nt) {
        j->simd->gemm_nt(s, j->nk, qh, j->ldq, kh, j->ldk, j->nq, j->nk, j->hd, j->scale, 0.0f);
    } else {
        for (int r = 0; r < j->nk; r++)
            for (int e = 0; e < j->hd; e++) kt[(size_t)e * j->nkp + r] = kh[(size_t)r * j->ldk + e];
        j->simd->gemm_nn(s, j->nk, qh, j->ldq, kt, j->nkp, j->nq, j->nk, j->hd, j->scale);
    }
    for (int i = 0; i < j->nq; i++) j->simd->softmax(s + (size_t)i * j->nk, j->nk);
    j->simd->gemm_nn(j->out + (size_t)h * j->hd, j->ldo, s, j->nk, j->v + (size_t)h * j->hd, j->ldv,
                     j->nq, j->hd, j->nk, 1.0f);
}

/* One query (decoding): a task per group of heads, each reading its
 * heads' columns of every key and value row at once (simd->attend1).  One
 * group per pool thread: each reads one longer piece of every row (2.7b:
 * 5 KiB of 10), 7-9 % faster than two groups per thread of half pieces
 * (bench/RESULTS.md, 2026-12-08); a thread that starts late leaves its
 * group to the others.  A group's scores fit a slot (at most 1 + hd rows
 * of nk). */
static int att1_group(int heads, int hd)
{
    const int tasks = b2__pool_size();
    int g = (heads + tasks - 1) / tasks;
    return g > hd + 1 ? hd + 1 : g;
}

static void att1_task(void *ctx, int task, int slot)
{
    const att_job *j = ctx;
    const int g = att1_group(j->heads, j->hd), h0 = task * g, h1 = h0 + g < j->heads ? h0 + g : j->heads;
    j->simd->attend1(j->out, j->q, j->k, j->ldk, j->v, j->ldv, j->nk, h0, h1, j->hd, j->scale,
                     j->scratch + (size_t)slot * att_slot_floats(1, j->nk, j->hd));
}

size_t b2__attention_scratch(int nq, int nk, int hd)
{
    return (size_t)b2__pool_size() * att_slot_floats(nq, nk, hd);
}

void b2__attention(float *out, int ldo, const float *q, int ldq, const float *k, int ldk,
                   const float *v, int ldv, int nq, int nk, int heads, int hd,
                   float scale, float *scratch)
{
    const b2_simd *simd = b2__simd();
    if (simd->gemm_nn) {
        att_job j = {out, q, k, v, ldo, ldq, ldk, ldv, nq, nk, (nk + 15) & ~15, hd, heads, scale, scratch, simd};
        if (nq == 1 && simd->attend1 && hd <= 512) {
            const int g = att1_group(heads, hd);
            b2__parallel_for((heads + g - 1) / g, att1_task, &j);
        } else {
            b2__parallel_for(heads, att_head, &j);
        }
        return;
    }
    for (int h = 0; h < heads; h++) {
        b2__matmul_t(scratch, nk, q + h * hd, ldq, k + h * hd, ldk, nq, nk, hd, scale, 0.0f);
        for (int i = 0; i < nq; i++) simd->softmax(scratch + (size_t)i * nk, nk);
        b2__matmul_n(out + h * hd, ldo, scratch, nk, v + h * hd, ldv, nq, hd, nk);
    }
}
