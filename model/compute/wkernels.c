/*
 * wkernels.c - products with f16, bf16, q8_0 and q4_0 weights: the types, the
 * conversions, the portable C products and the dispatcher.
 *
 *   b2__wmatmul_rows(y, x, W, t)
 *     -> implementation, per type t: the one b2__wkernels_use set (the
 *        autotuner's choice at load, model/ktune.c), else BLIP2_KERNELS
 *        if the CPU runs it, else the first of wcands it runs:
 *        avx512-vnni > avx512 (wkernels_avx512.c) > avx2
 *        (wkernels_avx2.c) > portable
 *     -> q8_0 and q4_0: every x row quantised to q8_0 blocks once per call
 *        (b2__wquantize_act_q8 or the implementation's act_q8, the same
 *        bits, into a per-thread scratch buffer)
 *     -> chunks of 64 W rows (a decode step: larger, its last ones cut
 *        smaller, see decode_chunk and split_tail) spread over the compute
 *        pool; each chunk runs impl->fp, impl->q8 or impl->q4 over all n
 *        rows of x
 *   b2__wkernels_tune(t, samples)
 *     -> each candidate this CPU runs for t (b2__wkernels_candidates)
 *        checked against portable on the first sample's rows, refused
 *        beyond the bound; the rest timed as decode steps; the fastest
 *        (of several within 10 % at the end, the fastest in cache)
 * A new weight type: one entry in wtypes, its entry point in wentry (and
 * in b2_wimpl), and, for a block type, wt_block; the tuner, the per-type choice and the cache file
 * (model/ktune.c, kt_types) then cover it.
 * Batch invariance: every implementation computes y[i][r] from x row i
 * and W row r alone (one accumulator per pair, one order over k), so a
 * row's bits never depend on n or on which register tile it landed in.
 */
#include "wkernels.h"
#include "wkernels_impl.h"
#include "pool.h"
#include "kernels.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

/* a[l] += s * (the exact int32 sum of v * qx over values 4l..4l+3): one
 * block of 32 in the 8 lanes both block types' portable products use */
static void block_lanes(float a[8], float s, const int8_t *v, const int8_t *qx)
{
    for (int l = 0; l < 8; l++) {
        int32_t sum = 0;
        for (int u = 0; u < 4; u++) sum += (int32_t)v[4 * l + u] * qx[4 * l + u];
        a[l] += s * (float)sum;
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
                block_lanes(a, b2__f16_to_f32(load16(blk)) * di[b], (const int8_t *)(blk + 2), qi + b * B2_Q8_0_BLOCK);
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
                block_lanes(a, b2__f16_to_f32(load16(blk)) * di[b], v, qx);
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

static const b2_wimpl wimpl_portable = {"portable", fp_rows_c, q8_rows_c, q8_to_f32_c, q4_rows_c, q4_to_f32_c,
                                        b2__wquantize_act_q8};

/* ---- choosing an implementation, per weight type ---- */

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

static int cpu_avx512vnni(void) { return cpu_avx512() && __builtin_cpu_supports("avx512vnni"); }
#endif

/* Every implementation this build has, best first (the default order);
 * the ones this CPU runs are the autotuner's candidates. */
typedef struct wcand {
    const b2_wimpl *impl;
    int (*runs)(void); /* NULL: everywhere */
} wcand;

static const wcand wcands[] = {
#if defined(__x86_64__) || defined(__i386__)
    {&b2__wimpl_avx512_vnni, cpu_avx512vnni},
    {&b2__wimpl_avx512, cpu_avx512},
    {&b2__wimpl_avx2, cpu_avx2},
#endif
    {&wimpl_portable, NULL},
};
enum { NCANDS = sizeof wcands / sizeof wcands[0] };

/* The weight types the products take, one entry each: a new type is one
 * more entry here (and its entry point in b2_wimpl, see wentry). */
static const b2_wtype wtypes[] = {B2_WT_F32, B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
enum { NWT = sizeof wtypes / sizeof wtypes[0] };

static int wslot(b2_wtype t)
{
    for (int i = 0; i < NWT; i++)
        if (wtypes[i] == t) return i;
    return -1;
}

/* 1 for the block types, whose products quantise the activations to q8_0 */
static int wt_block(b2_wtype t) { return t == B2_WT_Q8_0 || t == B2_WT_Q4_0; }

/* The function an implementation runs for type t: two implementations
 * with the same one are the same candidate for that type. */
static const void *wentry(const b2_wimpl *p, b2_wtype t)
{
    if (t == B2_WT_Q4_0) return p->q4 ? (const void *)p->q4 : (const void *)q4_rows_c;
    return t == B2_WT_Q8_0 ? (const void *)p->q8 : (const void *)p->fp;
}

static const b2_wimpl *wimpl_get(const char *name)
{
    for (int i = 0; i < NCANDS; i++)
        if (!strcmp(name, wcands[i].impl->name))
            return !wcands[i].runs || wcands[i].runs() ? wcands[i].impl : NULL;
    /* "avx512" (BLIP2_KERNELS' historic name): the best AVX-512 one this CPU runs */
    if (!strcmp(name, "avx512"))
        for (int i = 0; i < NCANDS; i++)
            if (!strncmp(wcands[i].impl->name, "avx512", 6) && (!wcands[i].runs || wcands[i].runs()))
                return wcands[i].impl;
    return NULL;
}

/* BLIP2_KERNELS if this CPU runs it, else NULL; decided once. */
static const b2_wimpl *wforced(void)
{
    static const b2_wimpl *_Atomic forced;
    static _Atomic int known;
    if (!known) {
        const char *want = getenv("BLIP2_KERNELS");
        forced = want && *want ? wimpl_get(want) : NULL;
        known = 1;
    }
    return forced;
}

/* The default: BLIP2_KERNELS if this CPU runs it, else the first of
 * wcands it runs.  Decided once, as b2__simd() does. */
static const b2_wimpl *wimpl(void)
{
    static const b2_wimpl *_Atomic chosen;
    const b2_wimpl *s = chosen;
    if (!s) {
        s = wforced();
        for (int i = 0; !s && i < NCANDS; i++)
            if (!wcands[i].runs || wcands[i].runs()) s = wcands[i].impl;
        chosen = s;
    }
    return s;
}

/* Per type: the implementation set by b2__wkernels_use, else NULL (the default). */
static const b2_wimpl *_Atomic wchosen[NWT];

static const b2_wimpl *wimpl_for(b2_wtype t)
{
    const int s = wslot(t);
    const b2_wimpl *p = s >= 0 ? wchosen[s] : NULL;
    return p ? p : wimpl();
}

const char *b2__wkernels_name(void) { return wimpl()->name; }

const char *b2__wkernels_name_for(b2_wtype t) { return wimpl_for(t)->name; }

const char *b2__wkernels_forced(void)
{
    const b2_wimpl *p = wforced();
    return p ? p->name : NULL;
}

int b2__wkernels_use(b2_wtype t, const char *impl)
{
    const int s = wslot(t);
    const b2_wimpl *p = impl ? wimpl_get(impl) : NULL;
    if (s < 0 || (impl && !p)) return -1;
    wchosen[s] = p;
    return 0;
}


/* ---- how far ahead the SIMD tiles prefetch W ----
 * The hardware prefetchers stop at 4 KiB page boundaries; asking for the
 * lines a few pages ahead keeps the reads streaming (bench/RESULTS.md,
 * "Decoding at memory speed", 2026-11-27: 8 to 32 KiB gave q8_0 ~85-90 %
 * of the memory rate against ~70 % without, f16/bf16 +3 to +6 points). */

/* b2__wprefetch itself is defined in wtype.c, the leaf every kernel file may use. */
static pthread_once_t wprefetch_once = PTHREAD_ONCE_INIT;

/* bytes of the next product a waiting thread reads (b2__wprefetch_next) */
static size_t wnext_bytes = (size_t)1 << 20;

/* The environment variable name as bytes in [0, max], or -1 (unset, not a
 * number, out of range) */
static long env_bytes(const char *name, long max)
{
    const char *e = getenv(name);
    if (!e || !*e) return -1;
    char *end;
    const long v = strtol(e, &end, 10);
    return !*end && v >= 0 && v <= max ? v : -1;
}

static void wprefetch_init(void)
{
    const long v = env_bytes("BLIP2_PREFETCH", 1L << 20), nx = env_bytes("BLIP2_PREFETCH_NEXT", 1L << 26);
    if (v >= 0) b2__wprefetch = (int)v;
    if (nx >= 0) wnext_bytes = (size_t)nx;
}

int b2__wkernels_set_prefetch(int bytes)
{
    pthread_once(&wprefetch_once, wprefetch_init);
    const int old = b2__wprefetch;
    if (bytes >= 0) b2__wprefetch = bytes > (1 << 20) ? 1 << 20 : bytes;
    return old;
}

long b2__wkernels_set_prefetch_next(long bytes)
{
    pthread_once(&wprefetch_once, wprefetch_init);
    const long old = (long)wnext_bytes;
    if (bytes >= 0) wnext_bytes = (size_t)bytes;
    return old;
}

/* ---- the products over the compute pool ---- */

/* Weight rows per pool task: 64, or for a decode step (at most
 * B2_DECODE_ROWS x rows) 256, except q8_0: as many rows as make about
 * CHUNK_DECODE_BYTES of W, but no more than give each thread
 * DECODE_TASKS_PER_THREAD tasks of the largest weight, in multiples of 8.
 * A thread streams a task's bytes before it moves on, and the last tasks
 * decide how long one thread waits for the other.  Measured on whole
 * decode steps, old and new alternating (bench/RESULTS.md, 2026-12-07
 * 12:25): q8_0 steps were faster in 10 of 10 pairs, q4_0 no faster
 * (five pairs), bf16 slower in 10 of 11 (its fc2 in tasks of 72 rows), so
 * every other type keeps 256 rows (which had beaten 64, 2026-12-06
 * 15:28).  The rows of a task change no output's bits: every row is its
 * own dot product. */
#define CHUNK 64
#define CHUNK_DECODE 256
#define CHUNK_DECODE_BYTES ((size_t)1300 << 10)
#define DECODE_TASKS_PER_THREAD 4

static int decode_chunk(b2_wtype t, size_t rb, int m)
{
    if (t != B2_WT_Q8_0) return CHUNK_DECODE;
    size_t rows = CHUNK_DECODE_BYTES / (rb ? rb : 1);
    const size_t tasks = (size_t)DECODE_TASKS_PER_THREAD * (size_t)b2__pool_size();
    const size_t even = ((size_t)m + tasks - 1) / tasks;
    if (even < rows) rows = even;
    rows = (rows + 7) & ~(size_t)7;
    return rows < 8 ? 8 : rows > (1 << 20) ? 1 << 20 : (int)rows;
}

void b2__wprefetch_next(const void *w, b2_wtype t, int n, int m, int k)
{
    pthread_once(&wprefetch_once, wprefetch_init);
    if (!w || n > B2_DECODE_ROWS || m <= 0 || !wnext_bytes) {
        b2__pool_prefetch_next(NULL, 0, 0, 0);
        return;
    }
    const size_t rb = b2__wt_row_bytes(t, k);
    b2__pool_prefetch_next(w, (size_t)m * rb, (size_t)decode_chunk(t, rb, m) * rb, wnext_bytes);
}

/* One weight of a job: its output, rows and first task */
typedef struct wpart {
    float *y;
    const unsigned char *w;
    int ldy, m, task0;
} wpart;

typedef struct wjob {
    const float *x;
    const int8_t *xq; /* q8_0: the activations quantised */
    const float *xd;
    b2_wtype t;
    size_t rb;
    int ldx, n, k;
    int i0; /* the first of the n activation rows (each y's row offset) */
    const b2_wimpl *impl;
    int chunk; /* weight rows per task */
    /* tasks from tail_task on (INT_MAX: none): the last weight's rows
     * from tail_r0 on, tail_chunk a task (see split_tail) */
    int tail_task, tail_r0, tail_chunk;
    int nparts;
    wpart part[B2_WMULTI_MAX]; /* the weights, their tasks one after another */
} wjob;

/* The weight of a task, the task's first row in it and its rows */
static const wpart *task_part(const wjob *j, int task, int *r0, int *rows)
{
    int p = 0, c = j->chunk;
    if (task >= j->tail_task) {
        p = j->nparts - 1;
        *r0 = j->tail_r0 + (task - j->tail_task) * j->tail_chunk;
        c = j->tail_chunk;
    } else {
        while (p + 1 < j->nparts && task >= j->part[p + 1].task0) p++;
        *r0 = (task - j->part[p].task0) * c;
    }
    *rows = j->part[p].m - *r0 < c ? j->part[p].m - *r0 : c;
    return &j->part[p];
}

/* A decode step's job ends on smaller tasks: the last weight's last
 * TAIL_TASKS_PER_THREAD full tasks a thread are cut in TAIL_SPLIT.  Tasks
 * are taken in order, so while one thread runs its last task the others
 * wait (or read the next product's first bytes, b2__pool_prefetch_next);
 * with tasks of 256 bf16 rows at k = 10240 (fc2: 5 MiB) that wait was
 * up to a whole task, and smaller tasks everywhere ran slower (the
 * comment on CHUNK_DECODE).  Whole decode steps, old and new alternating
 * on a busy host (bench/RESULTS.md, 2026-12-07 18:35): bf16 median 124.3
 * -> 120.7 ms (9 of 14 pairs faster), q8_0 60.8 -> 60.1 (5 of 6), q4_0
 * 34.2 -> 34.3 (3 of 6).  Returns the job's tasks. */
#define TAIL_SPLIT 4
#define TAIL_TASKS_PER_THREAD 1
static int split_tail(wjob *j, int tasks)
{
    const int threads = b2__pool_size();
    wpart *L = &j->part[j->nparts - 1];
    if (threads < 2 || L->m <= 0) return tasks;
    const int full = (L->m + j->chunk - 1) / j->chunk, cut = threads * TAIL_TASKS_PER_THREAD;
    if (full <= cut || j->chunk < 8 * TAIL_SPLIT) return tasks;
    j->tail_task = L->task0 + full - cut;
    j->tail_r0 = (full - cut) * j->chunk;
    j->tail_chunk = j->chunk / TAIL_SPLIT;
    return j->tail_task + (L->m - j->tail_r0 + j->tail_chunk - 1) / j->tail_chunk;
}

/* impl's product for type t on m rows of W at w (q8_0, q4_0: of x
 * quantised, xq and xd), on this thread */
static void rows_on(const b2_wimpl *impl, b2_wtype t, float *y, int ldy, const float *x, int ldx,
                    const int8_t *xq, const float *xd, const unsigned char *w, size_t rb, int n, int m, int k)
{
    if (t == B2_WT_Q4_0) (impl->q4 ? impl->q4 : q4_rows_c)(y, ldy, xq, xd, w, rb, n, m, k);
    else if (t == B2_WT_Q8_0) impl->q8(y, ldy, xq, xd, w, rb, n, m, k);
    else impl->fp(y, ldy, x, ldx, w, rb, t, n, m, k);
}

static void wtask(void *ctx, int task, int slot)
{
    (void)slot;
    const wjob *j = ctx;
    int r0, mm;
    const wpart *P = task_part(j, task, &r0, &mm);
    rows_on(j->impl, j->t, P->y + (size_t)j->i0 * P->ldy + r0, P->ldy, j->x, j->ldx, j->xq, j->xd,
            P->w + (size_t)r0 * j->rb, j->rb, j->n, mm, j->k);
}

/* Without scratch for the quantised activations (out of memory): the
 * weights widened to f32 and multiplied with the unquantised x. */
static void ref_task(void *ctx, int task, int slot)
{
    (void)slot;
    const wjob *j = ctx;
    int r0, rows;
    const wpart *P = task_part(j, task, &r0, &rows);
    const int r1 = r0 + rows;
    float row[1024];
    for (int r = r0; r < r1; r++) {
        for (int i = 0; i < j->n; i++) {
            const float *x = j->x + (size_t)i * j->ldx;
            float acc = 0;
            for (int c0 = 0; c0 < j->k; c0 += 1024) { /* k is cut at multiples of 32 */
                const int c = j->k - c0 < 1024 ? j->k - c0 : 1024;
                const size_t off = c0 ? b2__wt_row_bytes(j->t, c0) : 0;
                b2__wrows_to_f32(row, P->w + (size_t)r * j->rb + off, j->t, 0, 1, c);
                for (int q = 0; q < c; q++) acc += row[q] * x[c0 + q];
            }
            P->y[(size_t)i * P->ldy + r] = acc;
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

static void run(const b2_wimpl *impl, float *const *y, const int *ldy, const float *x, int ldx,
                const void *const *w, b2_wtype t, int n, const int *m, int k, int count)
{
    pthread_once(&wprefetch_once, wprefetch_init);
    const size_t rb = b2__wt_row_bytes(t, k);
    int mmax = 0;
    for (int i = 0; i < count; i++) mmax = m[i] > mmax ? m[i] : mmax;
    const int chunk = n <= B2_DECODE_ROWS ? decode_chunk(t, rb, mmax) : CHUNK;
    wjob j = {.x = x, .t = t, .rb = rb, .ldx = ldx, .n = n, .k = k, .impl = impl,
              .chunk = chunk, .tail_task = INT_MAX, .nparts = count};
    int tasks = 0;
    for (int i = 0; i < count; i++) { /* a weight without rows has no tasks */
        j.part[i] = (wpart){y[i], w[i], ldy[i], m[i], tasks};
        if (m[i] > 0) tasks += (m[i] + chunk - 1) / chunk;
    }
    if (n <= B2_DECODE_ROWS) tasks = split_tail(&j, tasks);
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
        j.impl = NULL;
        b2__parallel_for(tasks, ref_task, &j);
        return;
    }
    float *xd = (float *)buf;
    int8_t *xq = (int8_t *)(buf + (size_t)per * nb * sizeof(float));
    void (*quant)(int8_t *, float *, const float *, int) = impl->act_q8 ? impl->act_q8 : b2__wquantize_act_q8;
    for (int i0 = 0; i0 < n; i0 += per) {
        const int nn = n - i0 < per ? n - i0 : per;
        for (int i = 0; i < nn; i++)
            quant(xq + (size_t)i * k, xd + (size_t)i * nb, x + (size_t)(i0 + i) * ldx, k);
        j.i0 = i0;
        j.n = nn;
        j.xq = xq;
        j.xd = xd;
        b2__parallel_for(tasks, wtask, &j);
    }
}

/* run for one weight */
static void run1(const b2_wimpl *impl, float *y, int ldy, const float *x, int ldx, const void *w, b2_wtype t,
                 int n, int m, int k)
{
    run(impl, &y, &ldy, x, ldx, &w, t, n, &m, k, 1);
}

void b2__wmatmul_rows(float *y, int ldy, const float *x, int ldx, const void *w, b2_wtype t,
                      int n, int m, int k)
{
    if (n <= 0 || m <= 0) return;
    run1(wimpl_for(t), y, ldy, x, ldx, w, t, n, m, k);
}

void b2__wmatmul_rows_multi(float *const *y, const int *ldy, const float *x, int ldx, const void *const *w,
                            b2_wtype t, int n, const int *m, int k, int count)
{
    if (n <= 0 || count <= 0) return;
    if (count > B2_WMULTI_MAX) { /* more than a job holds: in jobs of B2_WMULTI_MAX */
        b2__wmatmul_rows_multi(y, ldy, x, ldx, w, t, n, m, k, B2_WMULTI_MAX);
        b2__wmatmul_rows_multi(y + B2_WMULTI_MAX, ldy + B2_WMULTI_MAX, x, ldx, w + B2_WMULTI_MAX, t, n,
                               m + B2_WMULTI_MAX, k, count - B2_WMULTI_MAX);
        return;
    }
    run(wimpl_for(t), y, ldy, x, ldx, w, t, n, m, k, count);
}

int b2__wmatmul_rows_impl(const char *impl, float *y, int ldy, const float *x, int ldx,
                          const void *w, b2_wtype t, int n, int m, int k)
{
    const b2_wimpl *p = wimpl_get(impl);
    if (!p) return -1;
    if (n > 0 && m > 0) run1(p, y, ldy, x, ldx, w, t, n, m, k);
    return 0;
}

/* ---- the autotuner ---- */

static const b2_wimpl *_Atomic wextra; /* b2__wkernels_test_candidate */

void b2__wkernels_test_candidate(const b2_wimpl *extra) { wextra = extra; }

/* The candidates for type t this CPU runs, fastest-looking first; of two
 * with the same code for t only the lower (e.g. "avx512" q8_0 is the AVX2
 * kernel: "avx2") is kept. */
static int wcand_list(b2_wtype t, const b2_wimpl **out, int max)
{
    int n = 0;
    for (int i = 0; i < NCANDS; i++) {
        if (wcands[i].runs && !wcands[i].runs()) continue;
        int dup = 0;
        for (int j = i + 1; j < NCANDS; j++)
            dup |= (!wcands[j].runs || wcands[j].runs()) && wentry(wcands[j].impl, t) == wentry(wcands[i].impl, t);
        if (!dup && n < max) out[n++] = wcands[i].impl;
    }
    const b2_wimpl *x = wextra;
    if (x && n < max) out[n++] = x;
    return n;
}

int b2__wkernels_candidates(b2_wtype t, const char **names, int max)
{
    const b2_wimpl *c[B2_WTUNE_MAX];
    const int n = wcand_list(t, c, B2_WTUNE_MAX);
    for (int i = 0; i < n && i < max; i++) names[i] = c[i]->name;
    return n;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_dbl(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* the median of v[0..n) (reordered), n > 0 */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define TUNE_CHECK_ROWS 128  /* W rows of the first sample each candidate is checked on */
#define TUNE_CHECK_N 3       /* x rows of the check (tiles of 2 and a tail) */
#define TUNE_BYTES (240u << 20) /* weights each candidate reads per phase, timed */
#define TUNE_WARM 2             /* groups of products first, not counted */
#define TUNE_PHASES 3           /* at most: a phase more while the best two are close */
#define TUNE_CLOSE 0.05         /* close: scores within 5 % */
#define TUNE_TIE 0.10           /* a tie at the end: scores within 10 % */
#define TUNE_MAX_GROUPS 4096
#define TUNE_HOT_BYTES (192u << 10) /* weights of the in-cache measurement (in any L2) */
#define TUNE_HOT_REPS 48            /* its products per candidate; the fastest counts */

static double tune_tie = TUNE_TIE; /* b2__wkernels_test_tie */

void b2__wkernels_test_tie(double tie) { tune_tie = tie >= 0 ? tie : TUNE_TIE; }

int b2__wtune_pick(const double *score, const double *hot, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (score[i] > 0 && (best < 0 || score[i] > score[best])) best = i;
    if (best < 0) return -1;
    int pick = best;
    for (int i = 0; i < n; i++)
        if (score[i] >= score[best] * (1 - tune_tie) &&
            (hot[i] > hot[pick] || (hot[i] == hot[pick] && score[i] > score[pick])))
            pick = i;
    return pick;
}

/* GB/s of impl's fastest of TUNE_HOT_REPS products on the first rows of
 * s (TUNE_HOT_BYTES of them) with x row 0 (xq, xd: it quantised), on
 * this thread: after the first, the weights come from its caches, so
 * this is how fast the kernel computes, not how fast memory feeds it. */
static double hot_rate(const b2_wimpl *impl, b2_wtype t, const b2_wsample *s, float *y, const float *x,
                       const int8_t *xq, const float *xd)
{
    const size_t rb = b2__wt_row_bytes(t, s->k);
    int rows = (int)(TUNE_HOT_BYTES / rb);
    rows = rows < 1 ? 1 : rows > s->m ? s->m : rows;
    double best = INFINITY;
    for (int rep = 0; rep <= TUNE_HOT_REPS; rep++) {
        const double t0 = now_s();
        rows_on(impl, t, y, rows, x, s->k, xq, xd, s->w, rb, 1, rows, s->k);
        const double dt = now_s() - t0;
        if (rep && dt < best) best = dt; /* the first brings them in */
    }
    return (double)rb * rows / (best > 0 ? best : 1e-9) / 1e9;
}

/* Reads a byte of every page of the samples from s[i0] on (round robin)
 * as far as want bytes, so that no timed product faults them in. */
static void touch(const b2_wsample *s, int ns, int i0, b2_wtype t, size_t want)
{
    size_t seen = 0;
    volatile unsigned char sink = 0;
    for (int n = 0; n < ns && seen < want; n++) {
        const b2_wsample *w = &s[(i0 + n) % ns];
        const size_t bytes = b2__wt_row_bytes(t, w->k) * (size_t)w->m;
        const unsigned char *p = w->w;
        for (size_t o = 0; o < bytes; o += 4096) sink ^= p[o];
        seen += bytes;
    }
    (void)sink;
}

/* Per row r: |y - y_portable| <= 2 gamma(k/8 + 8) sum_j |w_rj x_j|, with
 * gamma(n) = n u / (1 - n u), u = 2^-24: both are sums of the same
 * products (q8_0: the same block terms) in lanes of at most k/8 terms
 * and a short tree, each within gamma of the exact sum.  Returns the
 * largest |diff| / bound (> 1: out of bounds; NaN in one and not the
 * other: infinity). */
static double check_err(const float *y, const float *yp, const double *bound, int cnt)
{
    double worst = 0;
    for (int i = 0; i < cnt; i++) {
        if (isnan(y[i]) != isnan(yp[i])) return INFINITY;
        if (isnan(y[i])) continue;
        const double d = fabs((double)y[i] - (double)yp[i]);
        const double e = bound[i] > 0 ? d / bound[i] : d > 0 ? INFINITY : 0;
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

int b2__wkernels_tune(b2_wtype t, const b2_wsample *s, int ns, b2_wtune *res)
{
    memset(res, 0, sizeof *res);
    if (wslot(t) < 0 || ns <= 0) return -1;
    int kmax = 0, mmax = 0;
    for (int i = 0; i < ns; i++) {
        if (!s[i].w || s[i].m <= 0 || !b2__wt_ok(t, s[i].k)) return -1;
        kmax = s[i].k > kmax ? s[i].k : kmax;
        mmax = s[i].m > mmax ? s[i].m : mmax;
    }
    const int k0 = s[0].k, cr = s[0].m < TUNE_CHECK_ROWS ? s[0].m : TUNE_CHECK_ROWS;
    const int cm = cr * TUNE_CHECK_N;
    float *x = malloc(sizeof(float) * (size_t)kmax * TUNE_CHECK_N);
    float *y = malloc(sizeof(float) * (size_t)(mmax > cm ? mmax : cm));
    float *yp = malloc(sizeof(float) * (size_t)cm);
    float *wrow = malloc(sizeof(float) * (size_t)k0);
    float *xd = malloc(sizeof(float) * (size_t)k0 * TUNE_CHECK_N);
    double *bound = malloc(sizeof(double) * (size_t)cm);
    int rc = -1;
    if (!x || !y || !yp || !wrow || !xd || !bound) goto out;
    /* activations: a fixed pseudo-random sequence in [-1, 1) */
    uint32_t lcg = 12345;
    for (size_t j = 0; j < (size_t)kmax * TUNE_CHECK_N; j++) {
        lcg = lcg * 1664525u + 1013904223u;
        x[j] = (float)((int32_t)lcg >> 8) * (1.0f / 8388608.0f);
    }
    /* the bound per (x row, W row), with q8_0's x as the products see it */
    memcpy(xd, x, sizeof(float) * (size_t)k0 * TUNE_CHECK_N);
    if (wt_block(t)) {
        for (int i = 0; i < TUNE_CHECK_N; i++) {
            int8_t qq[B2_Q8_0_BLOCK];
            float dd;
            for (int b = 0; b < k0 / B2_Q8_0_BLOCK; b++) {
                float *xb = xd + (size_t)i * k0 + (size_t)b * B2_Q8_0_BLOCK;
                b2__wquantize_act_q8(qq, &dd, x + (size_t)i * k0 + (size_t)b * B2_Q8_0_BLOCK, B2_Q8_0_BLOCK);
                for (int j = 0; j < B2_Q8_0_BLOCK; j++) xb[j] = dd * (float)qq[j];
            }
        }
    }
    const double u = 1.0 / 16777216.0, g = (k0 / 8 + 8) * u / (1 - (k0 / 8 + 8) * u);
    for (int r = 0; r < cr; r++) {
        b2__wrows_to_f32(wrow, s[0].w, t, r, 1, k0);
        for (int i = 0; i < TUNE_CHECK_N; i++) {
            double a = 0;
            for (int j = 0; j < k0; j++) a += fabs((double)wrow[j] * (double)xd[(size_t)i * k0 + j]);
            bound[(size_t)i * cr + r] = 2 * g * a;
        }
    }
    run1(&wimpl_portable, yp, cr, x, k0, s[0].w, t, TUNE_CHECK_N, cr, k0);

    const b2_wimpl *cand[B2_WTUNE_MAX];
    const int nc = wcand_list(t, cand, B2_WTUNE_MAX);
    int ok[B2_WTUNE_MAX];
    res->n = nc;
    for (int c = 0; c < nc; c++) {
        res->c[c].name = cand[c]->name;
        run1(cand[c], y, cr, x, k0, s[0].w, t, TUNE_CHECK_N, cr, k0);
        res->c[c].err = check_err(y, yp, bound, cm);
        ok[c] = res->c[c].err <= 1;
        res->c[c].refused = !ok[c];
    }
    /* Timed: groups of products, one sample per ok candidate, the
     * candidates in an order rotated by one each group (samples round
     * robin, so each product reads weights nobody has just read, from
     * memory when the samples are larger than the caches, as in a decode
     * step).  A product's rate over its group's geometric mean is its
     * score; a candidate's score is the median of its products' scores.
     * So each comparison is between neighbouring weights read within a
     * millisecond, and a moment the host takes the CPU away spoils one
     * group, not a candidate's whole run, as it did when each candidate
     * read its own 48 MiB stretch in turn (5 rounds, median rate).  Two
     * candidates are never timed on the same weights: the second would
     * find part of them in the L3 (41-57 against 13-41 GB/s for the
     * first on a Zen 5).  Where the candidates are within a few per
     * cent of each other (AVX2 and AVX-512 for bf16, AVX2 and VNNI for
     * q8_0 on that Zen 5 in a busy minute), the choice varied from load
     * to load, where on a quiet host VNNI was 5-17 % faster in the engine
     * (bench/RESULTS.md, 2026-12-06 21:40 and 22:45): while the best two
     * scores are within TUNE_CLOSE, another phase of as many groups
     * follows, up to TUNE_PHASES. */
    int okc[B2_WTUNE_MAX], nok = 0;
    for (int c = 0; c < nc; c++)
        if (ok[c]) okc[nok++] = c;
    if (!nok) goto out;
    double *score = malloc(sizeof(double) * (size_t)TUNE_MAX_GROUPS * (size_t)nok);
    double *rates = malloc(sizeof(double) * (size_t)TUNE_MAX_GROUPS * (size_t)nok);
    if (!score || !rates) {
        free(score);
        free(rates);
        goto out;
    }
    /* small samples (cached: a test's tiny model) are read at most 5
     * times over by each candidate per phase, in whole rotations */
    int per_phase = 5 * ns < TUNE_MAX_GROUPS / TUNE_PHASES ? 5 * ns : TUNE_MAX_GROUPS / TUNE_PHASES;
    per_phase = per_phase < nok ? nok : per_phase - per_phase % nok;
    int cur = 0, ng = 0, gi = 0, best = -1;
    size_t read = 0, budget = 0; /* bytes of the counted groups, all candidates */
    for (int phase = 0; phase < TUNE_PHASES; phase++) {
        touch(s, ns, cur, t, (size_t)nok * (TUNE_BYTES + (64u << 20)));
        budget += (size_t)nok * TUNE_BYTES;
        const int max_groups = ng + per_phase;
        for (; ng < max_groups && (read < budget || ng % nok); gi++) {
            double r[B2_WTUNE_MAX], lsum = 0;
            for (int q = 0; q < nok; q++) {
                const int o = (q + gi) % nok; /* okc[o] runs the group's q-th sample */
                const b2_wsample *w = &s[cur];
                cur = (cur + 1) % ns;
                const double t0 = now_s();
                run1(cand[okc[o]], y, w->m, x, w->k, w->w, t, 1, w->m, w->k);
                const double dt = now_s() - t0;
                const size_t bytes = b2__wt_row_bytes(t, w->k) * (size_t)w->m;
                r[o] = (double)bytes / (dt > 0 ? dt : 1e-9);
                lsum += log(r[o]);
                if (gi >= TUNE_WARM) read += bytes;
            }
            if (gi < TUNE_WARM) continue;
            for (int o = 0; o < nok; o++) {
                rates[(size_t)o * TUNE_MAX_GROUPS + ng] = r[o];
                score[(size_t)o * TUNE_MAX_GROUPS + ng] = r[o] / exp(lsum / nok);
            }
            ng++;
        }
        /* the medians (they reorder each candidate's values, which the
         * next phase only appends to) */
        best = -1;
        double best_score = 0, second = 0;
        for (int o = 0; o < nok; o++) {
            const int c = okc[o];
            res->c[c].gbs = median(rates + (size_t)o * TUNE_MAX_GROUPS, ng) / 1e9;
            res->c[c].score = median(score + (size_t)o * TUNE_MAX_GROUPS, ng);
            if (best < 0 || res->c[c].score > best_score) {
                second = best_score;
                best = c;
                best_score = res->c[c].score;
            } else if (res->c[c].score > second) {
                second = res->c[c].score;
            }
        }
        res->phases = phase + 1;
        if (second < best_score * (1 - TUNE_CLOSE)) break; /* a clear winner */
    }
    res->mbytes = (double)read / nok / 1e6;
    free(score);
    free(rates);
    /* Within TUNE_TIE of the best score after the last phase: memory
     * feeds them about alike, and of those the one that computes fastest
     * with its weights in cache wins, the one with the most room left when
     * memory is faster or a decode step's other work shares the core.  On
     * a Zen 5 the q4_0 loads of bench/targets.sh scored AVX2 1-9 % over
     * VNNI, whose products then ran 3-15 % faster in the engine; in cache
     * VNNI computes q4_0 and q8_0 1.4-1.9 times as fast as AVX2
     * (bench/RESULTS.md, 2026-12-08 02:50).  There AVX-512 also computes
     * bf16 and f16 faster in cache, and the scores pick it in nearly every
     * load anyway, though AVX2 decoded the bf16 file 0-8 % faster in the
     * engine. */
    {
        double sc[B2_WTUNE_MAX], hot[B2_WTUNE_MAX];
        for (int c = 0; c < nc; c++) {
            sc[c] = ok[c] ? res->c[c].score : 0;
            hot[c] = 0;
        }
        const double near = sc[best] * (1 - tune_tie); /* best: the highest median score */
        int close = 0;
        for (int c = 0; c < nc; c++) close += ok[c] && c != best && sc[c] >= near;
        if (close) {
            int8_t *xq = malloc((size_t)k0);
            float *xd8 = malloc(sizeof(float) * (size_t)(k0 / B2_Q8_0_BLOCK + 1));
            if (xq && xd8) {
                if (wt_block(t)) b2__wquantize_act_q8(xq, xd8, x, k0);
                for (int c = 0; c < nc; c++)
                    if (ok[c] && sc[c] >= near)
                        hot[c] = res->c[c].hot = hot_rate(cand[c], t, &s[0], y, x, xq, xd8);
                best = b2__wtune_pick(sc, hot, nc);
            }
            free(xq);
            free(xd8);
        }
    }
    res->chosen = cand[best]->name;
    rc = 0;
out:
    free(x);
    free(y);
    free(yp);
    free(wrow);
    free(xd);
    free(bound);
    return rc;
}

size_t b2__wkernels_cpu_key(char *buf, size_t size)
{
    char brand[49] = "unknown cpu";
#if defined(__x86_64__) || defined(__i386__)
    unsigned r[12];
    if (__get_cpuid_max(0x80000000u, NULL) >= 0x80000004u) {
        for (unsigned i = 0; i < 3; i++) __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        memcpy(brand, r, 48);
        brand[48] = 0;
    }
#endif
    char *b = brand;
    while (*b == ' ') b++;
    for (char *p = b; *p; p++)
        if (*p == '\t' || *p == '\n' || *p == ';') *p = ' ';
    for (size_t l = strlen(b); l && b[l - 1] == ' ';) b[--l] = 0;
    size_t len = (size_t)snprintf(buf, size, "%s;", b);
    for (int i = 0; i < NCANDS; i++)
        if (!wcands[i].runs || wcands[i].runs())
            len += (size_t)snprintf(buf + (len < size ? len : size), len < size ? size - len : 0, " %s",
                                    wcands[i].impl->name);
    return len;
}
