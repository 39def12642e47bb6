/*
 * attention_bf16.c - many-query attention with its two products in bf16
 * (AVX512-BF16): the vision encoder's self-attention when its products run
 * in bf16 math.
 *
 * Per head, on the compute pool: S = scale * Q_h K_h^T and O_h = softmax(S)
 * V_h, each product with its operands rounded to bf16 (round to nearest
 * even, as vcvtne2ps2bf16 and oneDNN round) and its sums in f32
 * (vdpbf16ps: pairs of products added to an f32 lane), as the bf16 matmul
 * of the surrounding products takes them; the softmax stays in f32.
 *
 * vdpbf16ps multiplies pairs along the summed dimension, so each operand
 * is laid out in pairs of that dimension:
 *   qb  (nq, hd2)          Q_h rows in bf16: pairs of columns, as they lie
 *   kp  (hd2 / 2, nk32, 2) K_h transposed: for each column pair, the keys
 *   pb  (nq, nk2)          softmax(S) rows in bf16: pairs of keys
 *   vp  (nk2 / 2, hd32, 2) V_h: rows 2r and 2r + 1 interleaved
 * (and kb (nk, hd2), the key rows in bf16 on their way into kp)
 * hd2, nk2: hd, nk rounded up to even; nk32, hd32: to 32 (a register
 * tile's width).  Padding is zero, so it adds nothing to any sum; padded
 * scores and outputs are never written (masked stores), and the softmax
 * sees nk.
 * Register tiles: 6 query rows by 32 output columns (12 accumulators).
 */
#include "kernels.h"
#include "matmul_dnnl.h"
#include "pool.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define B2_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

typedef struct attb_dims {
    int nq, nk, hd, hd2, nk2, nk32, hd32;
} attb_dims;

static attb_dims dims_of(int nq, int nk, int hd)
{
    attb_dims d = {nq, nk, hd, (hd + 1) & ~1, (nk + 1) & ~1, (nk + 31) & ~31, (hd + 31) & ~31};
    return d;
}

/* One head's scratch: qb, kp, pb, vp, kb and two rows of hd32 (value
 * rows in bf16 on their way into vp), uint16_t, then S (f32). */
static size_t u16_count(const attb_dims *d)
{
    return (size_t)d->nq * d->hd2 + (size_t)d->hd2 * d->nk32 + (size_t)d->nq * d->nk2 +
           (size_t)d->nk2 * d->hd32 + (size_t)d->nk * d->hd2 + 2 * (size_t)d->hd32;
}

static size_t slot_bytes(const attb_dims *d)
{
    return (u16_count(d) * 2 + 63) / 64 * 64 + (size_t)d->nq * d->nk * sizeof(float);
}

/* n f32 as bf16 (b2__f32_to_bf16), then zeros up to the length `to` */
static void row_bf16(uint16_t *y, const float *x, int n, int to)
{
    b2__f32_to_bf16(y, x, (size_t)n);
    for (int i = n; i < to; i++) y[i] = 0;
}

/* c (rr rows of ldc)[:, :min(ncols, 32)] = scale * a b: a's rows are pairs
 * of the summed dimension (lda uint16_t apart), b's row p holds 32 output
 * columns of pair p (ldb uint16_t apart); pairs pairs. */
B2_BF16 static inline __attribute__((always_inline)) void
dp_tile(float *c, int ldc, const uint16_t *a, int lda, const uint16_t *b, int ldb, int pairs, int ncols,
        float scale, const int rr)
{
    __m512 acc[12];
#pragma GCC unroll 12
    for (int x = 0; x < 12; x++) acc[x] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; p++) {
        const uint16_t *bp = b + (size_t)p * ldb;
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + 32);
#pragma GCC unroll 6
        for (int r = 0; r < rr; r++) {
            uint32_t w;
            memcpy(&w, a + (size_t)r * lda + 2 * p, 4);
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)w);
            acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], av, b0);
            acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], av, b1);
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    const int n1 = ncols - 16;
    const __mmask16 m0 = ncols >= 16 ? 0xffff : (__mmask16)((1u << ncols) - 1);
    const __mmask16 m1 = n1 >= 16 ? 0xffff : n1 <= 0 ? 0 : (__mmask16)((1u << n1) - 1);
#pragma GCC unroll 6
    for (int r = 0; r < rr; r++) {
        float *cr = c + (size_t)r * ldc;
        _mm512_mask_storeu_ps(cr, m0, _mm512_mul_ps(acc[2 * r], sc));
        if (m1) _mm512_mask_storeu_ps(cr + 16, m1, _mm512_mul_ps(acc[2 * r + 1], sc));
    }
}

#define ROWS6(call)                                         \
    do {                                                    \
        int i = 0;                                          \
        for (; i + 6 <= d->nq; i += 6) call(6);             \
        switch (d->nq - i) {                                \
        case 5: call(5); break;                             \
        case 4: call(4); break;                             \
        case 3: call(3); break;                             \
        case 2: call(2); break;                             \
        case 1: call(1); break;                             \
        default: break;                                     \
        }                                                   \
    } while (0)

typedef struct attb_job {
    float *out;
    const float *q, *k, *v;
    int ldo, ldq, ldk, ldv;
    attb_dims d;
    float scale;
    unsigned char *scratch;
    size_t slot;
} attb_job;

B2_BF16 static void head_task(void *ctx, int h, int slot)
{
    const attb_job *j = ctx;
    const attb_dims *d = &j->d;
    uint16_t *qb = (uint16_t *)(void *)(j->scratch + (size_t)slot * j->slot);
    uint16_t *kp = qb + (size_t)d->nq * d->hd2, *pb = kp + (size_t)d->hd2 * d->nk32;
    uint16_t *vp = pb + (size_t)d->nq * d->nk2, *kb = vp + (size_t)d->nk2 * d->hd32;
    uint16_t *r0 = kb + (size_t)d->nk * d->hd2, *r1 = r0 + d->hd32;
    float *s = (float *)(void *)((unsigned char *)qb + (u16_count(d) * 2 + 63) / 64 * 64);
    const float *qh = j->q + (size_t)h * d->hd, *kh = j->k + (size_t)h * d->hd, *vh = j->v + (size_t)h * d->hd;

    for (int i = 0; i < d->nq; i++) row_bf16(qb + (size_t)i * d->hd2, qh + (size_t)i * j->ldq, d->hd, d->hd2);
    /* kp: the key rows in bf16 (kb), their column pairs down kp's rows */
    for (int r = 0; r < d->nk; r++) row_bf16(kb + (size_t)r * d->hd2, kh + (size_t)r * j->ldk, d->hd, d->hd2);
    const int np = d->hd2 / 2;
    for (int p = 0; p < np; p++) {
        uint32_t *dst = (uint32_t *)(void *)kp + (size_t)p * d->nk32;
        const uint32_t *src = (const uint32_t *)(const void *)kb + p;
        for (int r = 0; r < d->nk; r++) dst[r] = src[(size_t)r * np];
        for (int r = d->nk; r < d->nk32; r++) dst[r] = 0;
    }
    for (int c = 0; c < d->nk32; c += 32) { /* S = scale * qb kp */
#define SCORE(rr)                                                                                              \
    dp_tile(s + (size_t)i * d->nk + c, d->nk, qb + (size_t)i * d->hd2, d->hd2, kp + (size_t)c * 2, d->nk32 * 2, \
            d->hd2 / 2, d->nk - c, j->scale, rr)
        ROWS6(SCORE);
#undef SCORE
    }
    const b2_simd *simd = b2__simd();
    for (int i = 0; i < d->nq; i++) {
        simd->softmax(s + (size_t)i * d->nk, d->nk);
        row_bf16(pb + (size_t)i * d->nk2, s + (size_t)i * d->nk, d->nk, d->nk2);
    }
    /* vp: value rows 2p and 2p + 1 in bf16 (zero past hd, and past nk),
     * interleaved: word i of 64 is word i / 2 of a (i even) or of b (odd),
     * of the 32 words from c; lo: the first 32 of them, hi: the next */
    __m512i lo, hi;
    {
        uint16_t il[32], ih[32];
        for (int i = 0; i < 32; i++) {
            il[i] = (uint16_t)((i / 2) | (i & 1) << 5);
            ih[i] = (uint16_t)((16 + i / 2) | (i & 1) << 5);
        }
        lo = _mm512_loadu_si512(il);
        hi = _mm512_loadu_si512(ih);
    }
    for (int p = 0; p < d->nk2 / 2; p++) {
        memset(r0, 0, sizeof(uint16_t) * 2 * (size_t)d->hd32);
        row_bf16(r0, vh + (size_t)(2 * p) * j->ldv, d->hd, d->hd2);
        if (2 * p + 1 < d->nk) row_bf16(r1, vh + (size_t)(2 * p + 1) * j->ldv, d->hd, d->hd2);
        uint16_t *dst = vp + (size_t)p * d->hd32 * 2;
        for (int c = 0; c < d->hd32; c += 32) {
            const __m512i a = _mm512_loadu_si512(r0 + c), b = _mm512_loadu_si512(r1 + c);
            _mm512_storeu_si512(dst + 2 * c, _mm512_permutex2var_epi16(a, lo, b));
            _mm512_storeu_si512(dst + 2 * c + 32, _mm512_permutex2var_epi16(a, hi, b));
        }
    }
    float *oh = j->out + (size_t)h * d->hd;
    for (int c = 0; c < d->hd32; c += 32) { /* O_h = pb vp (* 1: no bits change) */
#define OUT(rr)                                                                                                  \
    dp_tile(oh + (size_t)i * j->ldo + c, j->ldo, pb + (size_t)i * d->nk2, d->nk2, vp + (size_t)c * 2, d->hd32 * 2, \
            d->nk2 / 2, d->hd - c, 1.0f, rr)
        ROWS6(OUT);
#undef OUT
    }
}

size_t b2__attention_bf16_scratch(int nq, int nk, int hd)
{
    if (!b2__cpu_bf16()) return 0;
    const attb_dims d = dims_of(nq, nk, hd);
    return (size_t)b2__pool_size() * slot_bytes(&d);
}

int b2__attention_bf16(float *out, int ldo, const float *q, int ldq, const float *k, int ldk, const float *v,
                       int ldv, int nq, int nk, int heads, int hd, float scale, void *scratch)
{
    if (!b2__cpu_bf16() || nq <= 0 || nk <= 0 || hd <= 0) return -1;
    attb_job j = {out, q, k, v, ldo, ldq, ldk, ldv, dims_of(nq, nk, hd), scale, scratch, 0};
    j.slot = slot_bytes(&j.d);
    b2__parallel_for(heads, head_task, &j);
    return 0;
}

#else
size_t b2__attention_bf16_scratch(int nq, int nk, int hd)
{
    (void)nq; (void)nk; (void)hd;
    return 0;
}

int b2__attention_bf16(float *out, int ldo, const float *q, int ldq, const float *k, int ldk, const float *v,
                       int ldv, int nq, int nk, int heads, int hd, float scale, void *scratch)
{
    (void)out; (void)ldo; (void)q; (void)ldq; (void)k; (void)ldk; (void)v; (void)ldv;
    (void)nq; (void)nk; (void)heads; (void)hd; (void)scale; (void)scratch;
    return -1;
}
#endif
