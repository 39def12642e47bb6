/*
 * wkernels.c - products with f16, bf16, q8_0 and q4_0 weights: the types, the
 * conversions, the portable C products and the dispatcher.
 *
 *   b2__wmatmul_rows(y, x, W, t)
 *     -> implementation: BLIP2_KERNELS if the CPU runs it, else the best
 *        of avx512 (wkernels_avx512.c) > avx2 (wkernels_avx2.c) > portable
 *     -> q8_0 and q4_0: every x row quantised to q8_0 blocks once per call
 *        (b2__wquantize_act_q8, into a per-thread scratch buffer)
 *     -> chunks of 64 W rows spread over the compute pool; each chunk
 *        runs impl->fp, impl->q8 or impl->q4 over all n rows of x
 * Batch invariance: every implementation computes y[i][r] from x row i
 * and W row r alone (one accumulator per pair, one order over k), so a
 * row's bits never depend on n or on which register tile it landed in.
 */
#include "wkernels.h"
#include "wkernels_impl.h"
#include "pool.h"
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static uint16_t load16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

static const b2_wimpl *wimpl(void);

/* The q4_0 entries of an implementation, the portable ones where its
 * table has none. */
static void q4_rows_c(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                      size_t rb, int n, int m, int k);
static void q4_to_f32_c(float *y, const unsigned char *w, int nb);
typedef void (*q4_to_f32_fn)(float *, const unsigned char *, int);
static q4_to_f32_fn q4_to_f32_of(const b2_wimpl *p) { return p->q4_to_f32 ? p->q4_to_f32 : q4_to_f32_c; }

/* f16 / bf16 through the element-wise kernels' converters (F16C, a 16-bit
 * shift; exact, so the same bits as b2__f16_to_f32 for every value but a
 * signalling NaN, which F16C quietens), q8_0 through the implementation's
 * block dequantiser. */
void b2__wrows_to_f32(float *dst, const void *w, b2_wtype t, int row0, int nrows, int k)
{
    const size_t rb = b2__wt_row_bytes(t, k);
    const unsigned char *src = (const unsigned char *)w + (size_t)row0 * rb;
    switch (t) {
    case B2_WT_F32: memcpy(dst, src, rb * (size_t)nrows); return;
    case B2_WT_F16: b2__simd()->f16_to_f32(dst, src, (size_t)k * (size_t)nrows); return;
    case B2_WT_BF16: b2__simd()->bf16_to_f32(dst, src, (size_t)k * (size_t)nrows); return;
    case B2_WT_Q8_0: wimpl()->q8_to_f32(dst, src, (k / B2_Q8_0_BLOCK) * nrows); return;
    case B2_WT_Q4_0: q4_to_f32_of(wimpl())(dst, src, (k / B2_Q4_0_BLOCK) * nrows); return;
    }
}

/* Round-to-nearest-even f32 -> IEEE half. */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);       /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);      /* overflow (and inf) */
    if (a < 0x38800000u) {                                          /* subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;                             /* 14..24 */
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((a >> 13) - (112u << 10));
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

void b2__wquantize_row(void *dst, const float *src, b2_wtype t, int k)
{
    unsigned char *o = dst;
    switch (t) {
    case B2_WT_F32: memcpy(o, src, (size_t)k * 4); break;
    case B2_WT_F16:
        for (int j = 0; j < k; j++) { uint16_t h = f32_to_f16(src[j]); memcpy(o + 2 * j, &h, 2); }
        break;
    case B2_WT_BF16:
        for (int j = 0; j < k; j++) { uint16_t h = f32_to_bf16(src[j]); memcpy(o + 2 * j, &h, 2); }
        break;
    case B2_WT_Q8_0:
        for (int b = 0; b < k / B2_Q8_0_BLOCK; b++) {
            const float *x = src + b * B2_Q8_0_BLOCK;
            unsigned char *blk = o + (size_t)b * B2_Q8_0_BYTES;
            float amax = 0;
            for (int j = 0; j < B2_Q8_0_BLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
            const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
            uint16_t h = f32_to_f16(d);
            memcpy(blk, &h, 2);
            for (int j = 0; j < B2_Q8_0_BLOCK; j++) blk[2 + j] = (unsigned char)(int8_t)roundf(x[j] * id);
        }
        break;
    case B2_WT_Q4_0:
        for (int b = 0; b < k / B2_Q4_0_BLOCK; b++) {
            const float *x = src + b * B2_Q4_0_BLOCK;
            unsigned char *blk = o + (size_t)b * B2_Q4_0_BYTES;
            float amax = 0, max = 0; /* the value of largest magnitude, the first of equals */
            for (int j = 0; j < B2_Q4_0_BLOCK; j++)
                if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
            const float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
            uint16_t h = f32_to_f16(d);
            memcpy(blk, &h, 2);
            for (int j = 0; j < B2_Q4_0_BLOCK / 2; j++) {
                unsigned char nib[2];
                for (int u = 0; u < 2; u++) {
                    const float v = x[j + 16 * u] * id + 8.5f; /* in [0.5, 16.5] for finite x */
                    nib[u] = v >= 15.0f ? 15 : v > 0.0f ? (unsigned char)(int)v : 0; /* trunc; NaN: 0 */
                }
                blk[2 + j] = (unsigned char)(nib[0] | nib[1] << 4);
            }
        }
        break;
    }
}

/* ---- activations as q8_0 blocks ---- */

/* Round to nearest even for |v| < 2^22 (1.5 * 2^23 pushes the fraction
 * out of the mantissa), the same in every build. */
static float round_ne(float v) { const float b = 12582912.0f; return (v + b) - b; }

void b2__wquantize_act_q8(int8_t *q, float *d, const float *x, int k)
{
    for (int b = 0; b < k / B2_Q8_0_BLOCK; b++) {
        const float *xb = x + b * B2_Q8_0_BLOCK;
        int8_t *qb = q + b * B2_Q8_0_BLOCK;
        float amax = 0;
        int bad = 0;
        for (int j = 0; j < B2_Q8_0_BLOCK; j++) {
            const float a = fabsf(xb[j]);
            bad |= !(a <= 3.4028235e38f);
            amax = a > amax ? a : amax;
        }
        if (bad || amax == 0) {
            d[b] = bad ? NAN : 0.0f;
            memset(qb, 0, B2_Q8_0_BLOCK);
            continue;
        }
        const float id = 127.0f / amax;
        d[b] = amax / 127.0f;
        for (int j = 0; j < B2_Q8_0_BLOCK; j++) {
            float v = round_ne(xb[j] * id);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            qb[j] = (int8_t)v;
        }
    }
}

/* ---- the products, portable C ----
 * Per (x row, W row) pair: 8 lane sums, element j into lane j % 8 in k
 * order, then ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), as the AVX2 path
 * does (which fuses the multiply-adds, so the bits differ from these). */

#define PR 4    /* W rows per tile */
#define PN 16   /* x rows per tile */
#define PSEG 256 /* W values widened at a time */

static float lanes8(const float *a)
{
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

static void widen(float *d, const unsigned char *src, b2_wtype t, int c)
{
    switch (t) {
    case B2_WT_F32: memcpy(d, src, (size_t)c * 4); break;
    case B2_WT_F16: for (int j = 0; j < c; j++) d[j] = b2__f16_to_f32(load16(src + 2 * j)); break;
    case B2_WT_BF16: for (int j = 0; j < c; j++) d[j] = b2__bf16_to_f32(load16(src + 2 * j)); break;
    case B2_WT_Q8_0: case B2_WT_Q4_0: break;
    }
}

static void fp_rows_c(float *y, int ldy, const float *x, int ldx, const unsigned char *w, size_t rb,
                      b2_wtype t, int n, int m, int k)
{
    const size_t es = t == B2_WT_F32 ? 4 : 2;
    float wf[PR][PSEG], acc[PN][PR][8];
    for (int r0 = 0; r0 < m; r0 += PR) {
        const int R = m - r0 < PR ? m - r0 : PR;
        for (int i0 = 0; i0 < n; i0 += PN) {
            const int N = n - i0 < PN ? n - i0 : PN;
            memset(acc, 0, sizeof acc);
            for (int c0 = 0; c0 < k; c0 += PSEG) {
                const int c = k - c0 < PSEG ? k - c0 : PSEG;
                for (int r = 0; r < R; r++) widen(wf[r], w + (size_t)(r0 + r) * rb + (size_t)c0 * es, t, c);
                for (int i = 0; i < N; i++) {
                    const float *xi = x + (size_t)(i0 + i) * ldx + c0;
                    for (int r = 0; r < R; r++) {
                        float *a = acc[i][r];
                        const float *wr = wf[r];
                        int j = 0;
                        for (; j + 8 <= c; j += 8)
                            for (int l = 0; l < 8; l++) a[l] += wr[j + l] * xi[j + l];
                        for (int l = 0; j + l < c; l++) a[l] += wr[j + l] * xi[j + l];
                    }
                }
            }
            for (int i = 0; i < N; i++)
                for (int r = 0; r < R; r++) y[(size_t)(i0 + i) * ldy + r0 + r] = lanes8(acc[i][r]);
        }
    }
}

static void q8_rows_c(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                      size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q8_0_BLOCK;
    for (int r = 0; r < m; r++) {
        const unsigned char *wr = w + (size_t)r * rb;
        for (int i = 0; i < n; i++) {
            const int8_t *qi = xq + (size_t)i * k;
            const float *di = xd + (size_t)i * nb;
            float a[8] = {0};
            for (int b = 0; b < nb; b++) {
                const unsigned char *blk = wr + (size_t)b * B2_Q8_0_BYTES;
                const int8_t *qx = qi + b * B2_Q8_0_BLOCK;
                const float s = b2__f16_to_f32(load16(blk)) * di[b];
                for (int l = 0; l < 8; l++) {
                    int32_t sum = 0;
                    for (int u = 0; u < 4; u++) sum += (int32_t)(int8_t)blk[2 + 4 * l + u] * qx[4 * l + u];
                    a[l] += s * (float)sum;
                }
            }
            y[(size_t)i * ldy + r] = lanes8(a);
        }
    }
}

/* d * (float)q per value, one rounding: the bits of every implementation */
static void q8_to_f32_c(float *y, const unsigned char *w, int nb)
{
    for (int b = 0; b < nb; b++, w += B2_Q8_0_BYTES, y += B2_Q8_0_BLOCK) {
        const float s = b2__f16_to_f32(load16(w));
        const int8_t *q = (const int8_t *)(w + 2);
        for (int j = 0; j < B2_Q8_0_BLOCK; j++) y[j] = s * (float)q[j];
    }
}

/* q4_0: as q8_rows_c with the nibbles unpacked to nibble - 8 first */
static void q4_rows_c(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                      size_t rb, int n, int m, int k)
{
    const int nb = k / B2_Q4_0_BLOCK;
    for (int r = 0; r < m; r++) {
        const unsigned char *wr = w + (size_t)r * rb;
        for (int i = 0; i < n; i++) {
            const int8_t *qi = xq + (size_t)i * k;
            const float *di = xd + (size_t)i * nb;
            float a[8] = {0};
            for (int b = 0; b < nb; b++) {
                const unsigned char *blk = wr + (size_t)b * B2_Q4_0_BYTES;
                const int8_t *qx = qi + b * B2_Q4_0_BLOCK;
                int8_t v[B2_Q4_0_BLOCK];
                for (int j = 0; j < 16; j++) {
                    v[j] = (int8_t)((blk[2 + j] & 15) - 8);
                    v[j + 16] = (int8_t)((blk[2 + j] >> 4) - 8);
                }
                const float s = b2__f16_to_f32(load16(blk)) * di[b];
                for (int l = 0; l < 8; l++) {
                    int32_t sum = 0;
                    for (int u = 0; u < 4; u++) sum += (int32_t)v[4 * l + u] * qx[4 * l + u];
                    a[l] += s * (float)sum;
                }
            }
            y[(size_t)i * ldy + r] = lanes8(a);
        }
    }
}

/* d * (float)(nibble - 8) per value, one rounding */
static void q4_to_f32_c(float *y, const unsigned char *w, int nb)
{
    for (int b = 0; b < nb; b++, w += B2_Q4_0_BYTES, y += B2_Q4_0_BLOCK) {
        const float s = b2__f16_to_f32(load16(w));
        for (int j = 0; j < 16; j++) {
            y[j] = s * (float)((w[2 + j] & 15) - 8);
            y[j + 16] = s * (float)((w[2 + j] >> 4) - 8);
        }
    }
}

static const b2_wimpl wimpl_portable = {"portable", fp_rows_c, q8_rows_c, q8_to_f32_c, q4_rows_c, q4_to_f32_c};

/* ---- choosing an implementation ---- */

#if defined(__x86_64__) || defined(__i386__)
static int cpu_avx2(void)
{
    unsigned a, b, c, d; /* F16C by cpuid: clang 14 has no __builtin_cpu_supports("f16c") */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int cpu_avx512(void)
{
    return cpu_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}
#endif

static const b2_wimpl *wimpl_get(const char *name)
{
    if (!strcmp(name, "portable")) return &wimpl_portable;
#if defined(__x86_64__) || defined(__i386__)
    if (!strcmp(name, "avx2") && cpu_avx2()) return &b2__wimpl_avx2;
    if (!strcmp(name, "avx512") && cpu_avx512())
        return __builtin_cpu_supports("avx512vnni") ? &b2__wimpl_avx512_vnni : &b2__wimpl_avx512;
#endif
    return NULL;
}

/* Decided once, as b2__simd() does: BLIP2_KERNELS if this CPU runs it,
 * else the best it runs.  A race only stores the same pointer twice. */
static const b2_wimpl *wimpl(void)
{
    static const b2_wimpl *_Atomic chosen;
    const b2_wimpl *s = chosen;
    if (!s) {
        const char *want = getenv("BLIP2_KERNELS");
        if (want && *want) s = wimpl_get(want);
        if (!s) s = wimpl_get("avx512");
        if (!s) s = wimpl_get("avx2");
        if (!s) s = &wimpl_portable;
        chosen = s;
    }
    return s;
}

const char *b2__wkernels_name(void) { return wimpl()->name; }

/* ---- how far ahead the SIMD tiles prefetch W ----
 * The hardware prefetchers stop at 4 KiB page boundaries; asking for the
 * lines a few pages ahead keeps the reads streaming (bench/RESULTS.md,
 * "Decoding at memory speed", 2026-11-27: 8 to 32 KiB gave q8_0 ~85-90 %
 * of the memory rate against ~70 % without, f16/bf16 +3 to +6 points). */

/* b2__wprefetch itself is defined in wtype.c, the leaf every kernel file may use. */
static pthread_once_t wprefetch_once = PTHREAD_ONCE_INIT;

static void wprefetch_init(void)
{
    const char *e = getenv("BLIP2_PREFETCH");
    if (!e || !*e) return;
    char *end;
    const long v = strtol(e, &end, 10);
    if (!*end && v >= 0 && v <= (1L << 20)) b2__wprefetch = (int)v;
}

int b2__wkernels_set_prefetch(int bytes)
{
    pthread_once(&wprefetch_once, wprefetch_init);
    const int old = b2__wprefetch;
    if (bytes >= 0) b2__wprefetch = bytes > (1 << 20) ? 1 << 20 : bytes;
    return old;
}

/* ---- the products over the compute pool ---- */

#define CHUNK 64 /* weight rows per pool task */

typedef struct wjob {
    float *y;
    const float *x;
    const int8_t *xq; /* q8_0: the activations quantised */
    const float *xd;
    const unsigned char *w;
    b2_wtype t;
    size_t rb;
    int ldy, ldx, n, m, k;
    const b2_wimpl *impl;
} wjob;

static void wtask(void *ctx, int task, int slot)
{
    (void)slot;
    const wjob *j = ctx;
    const int r0 = task * CHUNK, mm = j->m - r0 < CHUNK ? j->m - r0 : CHUNK;
    if (j->t == B2_WT_Q4_0)
        (j->impl->q4 ? j->impl->q4 : q4_rows_c)(j->y + r0, j->ldy, j->xq, j->xd, j->w + (size_t)r0 * j->rb, j->rb,
                                                 j->n, mm, j->k);
    else if (j->t == B2_WT_Q8_0)
        j->impl->q8(j->y + r0, j->ldy, j->xq, j->xd, j->w + (size_t)r0 * j->rb, j->rb, j->n, mm, j->k);
    else
        j->impl->fp(j->y + r0, j->ldy, j->x, j->ldx, j->w + (size_t)r0 * j->rb, j->rb, j->t, j->n, mm, j->k);
}

/* Without scratch for the quantised activations (out of memory): the
 * weights widened to f32 and multiplied with the unquantised x. */
static void ref_task(void *ctx, int task, int slot)
{
    (void)slot;
    const wjob *j = ctx;
    const int r1 = (task + 1) * CHUNK < j->m ? (task + 1) * CHUNK : j->m;
    float row[1024];
    for (int r = task * CHUNK; r < r1; r++) {
        for (int i = 0; i < j->n; i++) {
            const float *x = j->x + (size_t)i * j->ldx;
            float acc = 0;
            for (int c0 = 0; c0 < j->k; c0 += 1024) { /* k is cut at multiples of 32 */
                const int c = j->k - c0 < 1024 ? j->k - c0 : 1024;
                const size_t off = c0 ? b2__wt_row_bytes(j->t, c0) : 0;
                b2__wrows_to_f32(row, j->w + (size_t)r * j->rb + off, j->t, 0, 1, c);
                for (int q = 0; q < c; q++) acc += row[q] * x[c0 + q];
            }
            j->y[(size_t)i * j->ldy + r] = acc;
        }
    }
}

/* The quantised activations live in a per-thread buffer that grows as
 * needed (n * k * 1.125 bytes; 737 KiB for 64 rows of 10240) and is
 * freed when the thread exits. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static _Thread_local void *scratch;
static _Thread_local size_t scratch_cap;

static void scratch_free(void *p) { free(p); }
static void scratch_init(void) { (void)pthread_key_create(&scratch_key, scratch_free); }

static void *scratch_get(size_t bytes)
{
    if (bytes <= scratch_cap) return scratch;
    pthread_once(&scratch_once, scratch_init);
    void *p = malloc(bytes);
    if (!p) return NULL;
    free(scratch);
    scratch = p;
    scratch_cap = bytes;
    (void)pthread_setspecific(scratch_key, p);
    return p;
}

static void run(const b2_wimpl *impl, float *y, int ldy, const float *x, int ldx, const void *w,
                b2_wtype t, int n, int m, int k)
{
    pthread_once(&wprefetch_once, wprefetch_init);
    wjob j = {y, x, NULL, NULL, w, t, b2__wt_row_bytes(t, k), ldy, ldx, n, m, k, impl};
    const int tasks = (m + CHUNK - 1) / CHUNK;
    if (t != B2_WT_Q8_0 && t != B2_WT_Q4_0) {
        b2__parallel_for(tasks, wtask, &j);
        return;
    }
    const int nb = k / B2_Q8_0_BLOCK;
    /* all rows at once; if that much scratch cannot be had, one row at a
     * time (the same bits, the weight read n times) */
    const int per = scratch_get((size_t)n * nb * (B2_Q8_0_BLOCK + sizeof(float))) ? n : 1;
    unsigned char *buf = scratch_get((size_t)per * nb * (B2_Q8_0_BLOCK + sizeof(float)));
    if (!buf) { /* not even one row: the f32 reference, unquantised */
        wjob r = {y, x, NULL, NULL, w, t, j.rb, ldy, ldx, n, m, k, NULL};
        b2__parallel_for(tasks, ref_task, &r);
        return;
    }
    float *xd = (float *)buf;
    int8_t *xq = (int8_t *)(buf + (size_t)per * nb * sizeof(float));
    for (int i0 = 0; i0 < n; i0 += per) {
        const int nn = n - i0 < per ? n - i0 : per;
        for (int i = 0; i < nn; i++)
            b2__wquantize_act_q8(xq + (size_t)i * k, xd + (size_t)i * nb, x + (size_t)(i0 + i) * ldx, k);
        j.y = y + (size_t)i0 * ldy;
        j.n = nn;
        j.xq = xq;
        j.xd = xd;
        b2__parallel_for(tasks, wtask, &j);
    }
}

void b2__wmatmul_rows(float *y, int ldy, const float *x, int ldx, const void *w, b2_wtype t,
                      int n, int m, int k)
{
    if (n <= 0 || m <= 0) return;
    run(wimpl(), y, ldy, x, ldx, w, t, n, m, k);
}

int b2__wmatmul_rows_impl(const char *impl, float *y, int ldy, const float *x, int ldx,
                          const void *w, b2_wtype t, int n, int m, int k)
{
    const b2_wimpl *p = wimpl_get(impl);
    if (!p) return -1;
    if (n > 0 && m > 0) run(p, y, ldy, x, ldx, w, t, n, m, k);
    return 0;
}
