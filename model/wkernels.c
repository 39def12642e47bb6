/*
 * wkernels.c - products with f16, bf16 and q8_0 weights: the portable C
 * reference.  Every row of the result is computed the same way whatever
 * the number of rows, and sums run in one fixed order.
 */
#include "wkernels.h"
#include "pool.h"
#include "safetensors.h"

#include <math.h>
#include <string.h>

int b2__wt_ok(b2_wtype t, int k)
{
    if (k <= 0) return 0;
    switch (t) {
    case B2_WT_F32: case B2_WT_F16: case B2_WT_BF16: return 1;
    case B2_WT_Q8_0: return k % B2_Q8_0_BLOCK == 0;
    }
    return 0;
}

size_t b2__wt_row_bytes(b2_wtype t, int k)
{
    switch (t) {
    case B2_WT_F32: return (size_t)k * 4;
    case B2_WT_F16: case B2_WT_BF16: return (size_t)k * 2;
    case B2_WT_Q8_0: return (size_t)(k / B2_Q8_0_BLOCK) * B2_Q8_0_BYTES;
    }
    return 0;
}

const char *b2__wt_name(b2_wtype t)
{
    switch (t) {
    case B2_WT_F32: return "f32";
    case B2_WT_F16: return "f16";
    case B2_WT_BF16: return "bf16";
    case B2_WT_Q8_0: return "q8_0";
    }
    return NULL;
}

static uint16_t load16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

void b2__wrows_to_f32(float *dst, const void *w, b2_wtype t, int row0, int nrows, int k)
{
    const size_t rb = b2__wt_row_bytes(t, k);
    for (int r = 0; r < nrows; r++) {
        const unsigned char *src = (const unsigned char *)w + (size_t)(row0 + r) * rb;
        float *d = dst + (size_t)r * k;
        switch (t) {
        case B2_WT_F32: memcpy(d, src, rb); break;
        case B2_WT_F16: for (int j = 0; j < k; j++) d[j] = b2__f16_to_f32(load16(src + 2 * j)); break;
        case B2_WT_BF16: for (int j = 0; j < k; j++) d[j] = b2__bf16_to_f32(load16(src + 2 * j)); break;
        case B2_WT_Q8_0:
            for (int b = 0; b < k / B2_Q8_0_BLOCK; b++) {
                const unsigned char *blk = src + (size_t)b * B2_Q8_0_BYTES;
                const float s = b2__f16_to_f32(load16(blk));
                for (int j = 0; j < B2_Q8_0_BLOCK; j++)
                    d[b * B2_Q8_0_BLOCK + j] = s * (float)(int8_t)blk[2 + j];
            }
            break;
        }
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
    }
}

/* ---- the products, portable ---- */

#define CHUNK 64 /* weight rows per pool task */

typedef struct wjob {
    float *y;
    const float *x;
    const unsigned char *w;
    b2_wtype t;
    int ldy, ldx, n, m, k;
} wjob;

static void wtask(void *ctx, int task, int slot)
{
    (void)slot;
    const wjob *j = ctx;
    const size_t rb = b2__wt_row_bytes(j->t, j->k);
    const int r1 = (task + 1) * CHUNK < j->m ? (task + 1) * CHUNK : j->m;
    float row[1024];
    for (int r = task * CHUNK; r < r1; r++) {
        for (int i = 0; i < j->n; i++) {
            const float *x = j->x + (size_t)i * j->ldx;
            float acc = 0;
            for (int c0 = 0; c0 < j->k; c0 += 1024) { /* k is cut at multiples of 32 */
                const int c = j->k - c0 < 1024 ? j->k - c0 : 1024;
                const size_t off = c0 ? b2__wt_row_bytes(j->t, c0) : 0;
                b2__wrows_to_f32(row, j->w + (size_t)r * rb + off, j->t, 0, 1, c);
                for (int q = 0; q < c; q++) acc += row[q] * x[c0 + q];
            }
            j->y[(size_t)i * j->ldy + r] = acc;
        }
    }
}

void b2__wmatmul_rows(float *y, int ldy, const float *x, int ldx, const void *w, b2_wtype t,
                      int n, int m, int k)
{
    if (n <= 0 || m <= 0) return;
    wjob j = {y, x, w, t, ldy, ldx, n, m, k};
    b2__parallel_for((m + CHUNK - 1) / CHUNK, wtask, &j);
}

const char *b2__wkernels_name(void) { return "portable"; }
