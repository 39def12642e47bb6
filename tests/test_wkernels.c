/*
 * test_wkernels.c - the typed-weight products (model/wkernels*.c) for
 * every implementation this CPU runs (portable always; avx2, avx512 when
 * present, else a diag line says they were skipped), and the conversions
 * behind them.
 *
 *   products    f32, f16, bf16, q8_0 and q4_0 weights, m in {1,7,63,65,130},
 *               k in {32,96,1056} (and 33, 1027 where the type allows),
 *               n in {1,2,3,5,17,64}, W at byte offsets 0, 1, 2 (rows of
 *               odd k are unaligned anyway), strided x and y, against a
 *               double-precision product of the dequantised weights:
 *                 |y - ref| <= (k / 8 + 6) * 2^-24 * sum_j |w_j x_j|
 *               (the worst case of 8-lane f32 sums plus a 3-level tree;
 *               a wrong element or lane is off by O(1) of that sum).
 *               q8_0 is checked against the double product with the
 *               activations as b2__wquantize_act_q8 quantised them (that
 *               bound), and against the unquantised x within
 *                 sum_blocks (d_x / 2) sum_j |w_j|  (+ the f32 bound);
 *               q4_0 the same (its weights with all-zero blocks and
 *               nibbles 0 and 15), and every SIMD implementation against
 *               the portable one within twice the f32 bound
 *   batch       row i of every n-row call has the same bits as the
 *               1-row call on row i (memcmp), and the dispatching entry
 *               point equals the implementation it names
 *   special     NaN in one x row: that row NaN, the others untouched;
 *               q8_0 weights with -128 and all-zero blocks
 *   multi       b2__wmatmul_rows_multi (5 weights of rows 300, 513, 70,
 *               1, 257: two jobs) and b2__linear_rows_multi (with biases)
 *               give each y the bits of its own call, for every type and
 *               n in {1, 2, 5}; y's padding untouched; a weight of 0 rows
 *               skipped
 *   tasks       a decode product cut into several pool tasks (k 10240,
 *               300 rows) gives each row the bits of that row alone
 *   threads     two threads multiplying q8_0 at once (per-thread scratch)
 *   prefetch    the software prefetch distance changes no bit; each row
 *               of a tile is prefetched in its own stream (b2__wpf)
 *   widen       b2__wrows_to_f32 (the many-row path's tile conversion and
 *               the embedding lookups; SIMD where the CPU has it) against
 *               the scalar definitions, bit for bit: every f16 and bf16
 *               pattern (a signalling NaN may come back quiet), q8_0 with
 *               random, -128, subnormal-scale and zero blocks; rows from
 *               an odd row0 at an unaligned address, odd k
 *   tune        b2__wkernels_tune per type on random matrices: the choice
 *               is one of b2__wkernels_candidates, no real implementation
 *               is refused, and the chosen one's products (5 x rows, every
 *               W row) agree with the portable ones within
 *               2 gamma(k/8 + 8) sum_j |w_j x_j|; two deliberately wrong
 *               candidates (b2__wkernels_test_candidate: all zeros, the
 *               fastest possible; and a product that drops the last 8
 *               values of each row) are refused and never chosen; a
 *               right but slower one (the chosen one twice over, or
 *               scalar code) is timed and never chosen; one measurement
 *               phase only when the runner-up is 5 % behind, at most 3;
 *               candidates within 10 % of the best at the end are
 *               timed in cache too and the fastest there is chosen, the
 *               rest are not (and with every candidate counted close,
 *               b2__wkernels_test_tie, each is, and the right but
 *               slower one is slower there); b2__wtune_pick's rule on
 *               fixed scores;
 *               b2__wkernels_use sets what the dispatching entry point
 *               runs per type (same bits as the named implementation)
 *   quantise    f16 / bf16 round to nearest even: every 16-bit pattern
 *               round trips, midpoints go to even, overflow to infinity,
 *               subnormals, NaN stays NaN; q8_0 weights vs GGML's
 *               definition (incl. all-zero blocks); q8_0 activations vs
 *               their definition; q4_0 blocks against bytes worked
 *               out by hand from GGML's definition (d = max / -8, nibble
 *               = min(15, trunc(x / d + 8.5)), low nibbles = values
 *               0..15), dequantise -> quantise gives the same bytes, and
 *               q4_0 rows -> f32 against d * (nibble - 8)
 */
#include "wkernels.h"
#include "kernels.h"
#include "wkernels_impl.h"
#include "safetensors.h"
#include "tap.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;

static float frand(float lo, float hi)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * (1.0 / 16777216.0));
}

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static int isq(b2_wtype t) { return t == B2_WT_Q8_0 || t == B2_WT_Q4_0; }

static uint16_t q16(float f, b2_wtype t)
{
    uint16_t h;
    b2__wquantize_row(&h, &f, t, 1);
    return h;
}

/* ---- f16 / bf16 ---- */

static void test_round16(b2_wtype t)
{
    const char *nm = b2__wt_name(t);
    float (*wide)(uint16_t) = t == B2_WT_F16 ? b2__f16_to_f32 : b2__bf16_to_f32;
    const uint16_t inf = t == B2_WT_F16 ? 0x7c00 : 0x7f80;
    int trip = 1, nan = 1, mid = 1, near = 1;
    for (uint32_t h = 0; h < 0x10000; h++) {
        const float f = wide((uint16_t)h);
        const uint16_t back = q16(f, t);
        if (isnan(f)) {
            if (!isnan(wide(back)) && nan) { diag("%s: NaN %04x -> %04x", nm, h, back); nan = 0; }
            continue;
        }
        if (back != h && trip) { diag("%s: %04x -> %g -> %04x", nm, h, f, back); trip = 0; }
        /* the midpoint to the next value up in magnitude, and one f32 ulp either side */
        if ((h & 0x7fff) >= inf) continue;
        const uint16_t up = (uint16_t)(h + 1);
        const double a = f, b = (up & 0x7fff) == inf ? 2.0 * a - wide((uint16_t)(h - 1)) : wide(up); /* past the top: one more step */
        const float m = (float)((a + b) / 2);
        if ((double)m != (a + b) / 2) { diag("%s: midpoint not exact at %04x", nm, h); mid = 0; continue; }
        const uint16_t even = (h & 1) ? up : (uint16_t)h;
        if (q16(m, t) != even && mid) { diag("%s: midpoint of %04x, %04x -> %04x", nm, h, up, q16(m, t)); mid = 0; }
        const float lo = bitsf(fbits(m) - 1), hi = bitsf(fbits(m) + 1); /* same sign: magnitudes */
        if ((q16(lo, t) != h || q16(hi, t) != up) && near) {
            diag("%s: near the midpoint of %04x, %04x: %04x %04x", nm, h, up, q16(lo, t), q16(hi, t));
            near = 0;
        }
    }
    ok(trip, "%s: every non-NaN pattern round trips", nm);
    ok(nan, "%s: every NaN pattern stays NaN", nm);
    ok(mid, "%s: midpoints round to even (incl. subnormals and the top, to infinity)", nm);
    ok(near, "%s: one f32 ulp off a midpoint rounds to the nearer value", nm);
    const float big = t == B2_WT_F16 ? 1e10f : 3.4028235e38f;
    ok(q16(big, t) == inf && q16(-big, t) == (inf | 0x8000) && q16(INFINITY, t) == inf &&
       q16(-INFINITY, t) == (inf | 0x8000), "%s: overflow and infinity go to +-infinity", nm);
    ok(isnan(wide(q16(bitsf(0x7f800001u), t))) && isnan(wide(q16(bitsf(0xffc00000u), t))) &&
       q16(0.0f, t) == 0 && q16(-0.0f, t) == 0x8000, "%s: signalling / negative NaN, signed zero", nm);
    if (t == B2_WT_F16) /* below half the smallest subnormal: zero; just above: the smallest */
        ok(q16(bitsf(0x33000000u), t) == 0 && q16(bitsf(0x33000001u), t) == 1 && q16(1e-30f, t) == 0 &&
           q16(65519.996f, t) == 0x7bff && q16(65520.0f, t) == 0x7c00, "f16: subnormal and overflow edges");
}

/* ---- q8_0 weights: GGML's definition, written out again ---- */

static void test_q8_weights(void)
{
    enum { K = 32 * 7 };
    float x[K];
    unsigned char got[K / 32 * B2_Q8_0_BYTES];
    int good = 1;
    for (int trial = 0; trial < 50; trial++) {
        for (int j = 0; j < K; j++) x[j] = frand(-1, 1) * (trial % 5 == 0 ? 1e-6f : trial % 5 == 1 ? 300.0f : 1.0f);
        for (int j = 0; j < 32; j++) x[32 + j] = 0;            /* an all-zero block */
        x[64 + trial % 32] = trial & 1 ? 5.0f : -5.0f;          /* a block dominated by one value */
        b2__wquantize_row(got, x, B2_WT_Q8_0, K);
        for (int b = 0; b < K / 32; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
            const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
            uint16_t dh;
            memcpy(&dh, got + b * B2_Q8_0_BYTES, 2);
            if (dh != q16(d, B2_WT_F16)) { if (good) diag("q8_0 block %d: d %04x, want %04x", b, dh, q16(d, B2_WT_F16)); good = 0; }
            for (int j = 0; j < 32; j++) {
                const int q = (int)roundf(x[32 * b + j] * id);
                if ((int8_t)got[b * B2_Q8_0_BYTES + 2 + j] != q) {
                    if (good) diag("q8_0 block %d value %d: %d, want %d", b, j, (int8_t)got[b * B2_Q8_0_BYTES + 2 + j], q);
                    good = 0;
                }
            }
        }
        float back[K];
        b2__wrows_to_f32(back, got, B2_WT_Q8_0, 0, 1, K);
        for (int j = 32; j < 64; j++) good &= back[j] == 0.0f;
    }
    ok(good, "q8_0 weights: scale (f16 of max/127) and values (round(x/d)) as GGML; all-zero blocks are 0");
    ok(b2__wt_ok(B2_WT_Q8_0, 64) && !b2__wt_ok(B2_WT_Q8_0, 33) && b2__wt_ok(B2_WT_F16, 33) && !b2__wt_ok(B2_WT_F32, 0) &&
       !b2__wt_ok((b2_wtype)3, 32) && b2__wt_row_bytes(B2_WT_Q8_0, 64) == 68 && b2__wt_row_bytes(B2_WT_BF16, 33) == 66,
       "type checks and row sizes");
}

/* ---- q4_0 weights ---- */

static void test_q4_weights(void)
{
    /* block 0: x[j] = j - 16: max = -16, d = 2 (f16 0x4000), id = 0.5,
     *   nibble j = min(15, trunc(j / 2 + 0.5)) = 0 1 1 2 2 .. 7 7 8 | 8 9 9 .. 15 15 15
     * block 1: +-0.25 alternating (even j +), x[5] = 4: max = 4, d = -0.5
     *   (0xb800), id = -2: 0.25 -> trunc(8.0) = 8, -0.25 -> 9, 4 -> 0
     * block 2: all zero: max = 0, d = 0 / -8 = -0 (0x8000), id = 0, every
     *   nibble trunc(8.5) = 8 */
    static const unsigned char want[3 * B2_Q4_0_BYTES] = {
        0x00, 0x40, 0x80, 0x91, 0x91, 0xa2, 0xa2, 0xb3, 0xb3, 0xc4, 0xc4, 0xd5, 0xd5, 0xe6, 0xe6, 0xf7, 0xf7, 0xf8,
        0x00, 0xb8, 0x88, 0x99, 0x88, 0x99, 0x88, 0x90, 0x88, 0x99, 0x88, 0x99, 0x88, 0x99, 0x88, 0x99, 0x88, 0x99,
        0x00, 0x80, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
    float x[96], back[96];
    for (int j = 0; j < 32; j++) {
        x[j] = (float)(j - 16);
        x[32 + j] = j == 5 ? 4.0f : j % 2 ? -0.25f : 0.25f;
        x[64 + j] = 0;
    }
    unsigned char got[3 * B2_Q4_0_BYTES];
    b2__wquantize_row(got, x, B2_WT_Q4_0, 96);
    int same = !memcmp(got, want, sizeof want);
    for (int i = 0; !same && i < (int)sizeof want; i++)
        if (got[i] != want[i]) { diag("q4_0 byte %d: %02x, want %02x", i, got[i], want[i]); break; }
    ok(same, "q4_0 weights: three blocks quantise to the bytes worked out by hand from GGML's definition");
    b2__wrows_to_f32(back, want, B2_WT_Q4_0, 0, 1, 96);
    int deq = 1;
    for (int j = 0; j < 32; j++) {
        const int n0 = (j + 1) / 2 > 15 ? 15 : (j + 1) / 2;
        deq &= back[j] == 2.0f * (float)(n0 - 8);
        deq &= back[32 + j] == (j == 5 ? 4.0f : j % 2 ? -0.5f : 0.0f);
        deq &= back[64 + j] == 0.0f;
    }
    ok(deq, "q4_0 weights: those bytes dequantise to d * (nibble - 8) (-16, -14, .., 14; 4, 0, -0.5; 0)");
    ok(b2__wt_ok(B2_WT_Q4_0, 64) && !b2__wt_ok(B2_WT_Q4_0, 48) && b2__wt_row_bytes(B2_WT_Q4_0, 96) == 54 &&
       !strcmp(b2__wt_name(B2_WT_Q4_0), "q4_0") && B2_WT_Q4_0 == 2, "q4_0: GGML type 2, rows of 32k values, 18 bytes a block");
    /* random blocks holding nibble 0 (the block's max): dequantise, quantise -> the same bytes */
    enum { NB = 64 };
    unsigned char blk[NB * B2_Q4_0_BYTES], again[NB * B2_Q4_0_BYTES];
    float v[NB * 32];
    for (int b = 0; b < NB; b++) {
        unsigned char *p = blk + b * B2_Q4_0_BYTES;
        const uint16_t d = q16(frand(-1, 1) * (b % 3 == 0 ? 1e-3f : b % 3 == 1 ? 1.0f : 500.0f), B2_WT_F16);
        memcpy(p, &d, 2);
        for (int j = 0; j < 16; j++) p[2 + j] = (unsigned char)(1 + (int)frand(0, 14.99f)) | (unsigned char)((1 + (int)frand(0, 14.99f)) << 4);
        p[2 + b % 16] = (unsigned char)(b % 2 ? p[2 + b % 16] & 0xf0 : p[2 + b % 16] & 0x0f); /* one nibble 0 */
    }
    b2__wrows_to_f32(v, blk, B2_WT_Q4_0, 0, 1, NB * 32);
    b2__wquantize_row(again, v, B2_WT_Q4_0, NB * 32);
    int trip = 1;
    for (int b = 0; b < NB; b++) {
        uint16_t d;
        memcpy(&d, blk + b * B2_Q4_0_BYTES, 2);
        if ((d & 0x7fff) == 0) continue; /* a zero scale comes back as -0 with nibbles 8 */
        trip &= !memcmp(blk + b * B2_Q4_0_BYTES, again + b * B2_Q4_0_BYTES, B2_Q4_0_BYTES);
    }
    ok(trip, "q4_0 weights: %d random blocks with a nibble 0 survive dequantise -> quantise byte for byte", NB);
    /* NaN: nibble 0 (documented), the rest of the block as usual: max 31,
     * d = -3.875, value 3 the NaN, value 30 -> trunc(30 / -3.875 + 8.5) = 0 */
    float xn[32];
    for (int j = 0; j < 32; j++) xn[j] = j == 3 ? NAN : (float)j;
    b2__wquantize_row(got, xn, B2_WT_Q4_0, 32);
    uint16_t dn;
    memcpy(&dn, got, 2);
    ok(dn == q16(-3.875f, B2_WT_F16) && (got[2 + 3] & 15) == 0 && (got[2 + 2] & 15) == 7 && (got[2 + 14] >> 4) == 0 &&
       (got[2 + 0] & 15) == 8, "q4_0: a NaN value gets nibble 0, the block's others as GGML (d %04x)", dn);
}

/* ---- q8_0 activations ---- */

static void test_q8_act(void)
{
    enum { K = 32 * 6 };
    float x[K], d[K / 32];
    int8_t q[K];
    int good = 1;
    for (int trial = 0; trial < 200; trial++) {
        for (int j = 0; j < K; j++) x[j] = frand(-2, 2) * (trial % 3 ? 1.0f : 1e-20f);
        for (int j = 0; j < 32; j++) x[j] = 0;                          /* zero block */
        for (int j = 32; j < 64; j++) x[j] = (float)((j % 9) - 4) * 0.5f;  /* exact ties: x * 127/2 */
        x[64 + trial % 32] = trial & 1 ? NAN : INFINITY;                 /* a bad block */
        b2__wquantize_act_q8(q, d, x, K);
        for (int b = 0; b < K / 32; b++) {
            float amax = 0;
            int bad = 0;
            for (int j = 0; j < 32; j++) { bad |= !isfinite(x[32 * b + j]); amax = fmaxf(amax, fabsf(x[32 * b + j])); }
            for (int j = 0; j < 32; j++) {
                const int want = bad || amax == 0 ? 0 : (int)nearbyintf(x[32 * b + j] * (127.0f / amax));
                if (q[32 * b + j] != want) { if (good) diag("act block %d: q %d want %d", b, q[32 * b + j], want); good = 0; }
            }
            const int dok = bad ? isnan(d[b]) : amax == 0 ? d[b] == 0.0f : d[b] == amax / 127.0f;
            if (!dok) { if (good) diag("act block %d: d %g", b, d[b]); good = 0; }
        }
    }
    ok(good, "q8_0 activations: d = max/127, q = nearest-even(x * 127/max); zero block 0; NaN/inf block d = NaN");
#if defined(__x86_64__) || defined(__i386__)
    /* the SIMD tables' quantiser: the same bits, ties, tiny and huge
     * values, zero and bad blocks included */
    float probe = 0, px[32] = {0};
    unsigned char pw[32 * 4] = {0};
    if (b2__wmatmul_rows_impl("avx2", &probe, 1, px, 32, pw, B2_WT_F32, 1, 1, 32)) {
        diag("act_q8 avx2: not run, this CPU lacks AVX2");
        return;
    }
    int same = 1;
    for (int trial = 0; trial < 300 && same; trial++) {
        const float scale = trial % 5 == 0 ? 1e-30f : trial % 5 == 1 ? 3e38f : 1.0f;
        for (int j = 0; j < K; j++) x[j] = frand(-1, 1) * scale;
        for (int j = 0; j < 32; j++) x[j] = 0;
        for (int j = 32; j < 64; j++) x[j] = (float)((j % 9) - 4) * 0.5f;
        if (trial % 3) x[64 + trial % 32] = trial & 1 ? NAN : -INFINITY;
        if (trial % 7 == 0) x[96 + trial % 32] = -0.0f;
        int8_t q2[K];
        float d2[K / 32];
        b2__wquantize_act_q8(q, d, x, K);
        b2__act_q8_avx2(q2, d2, x, K);
        same = !memcmp(q, q2, sizeof q);
        for (int b = 0; b < K / 32; b++) same &= isnan(d[b]) ? isnan(d2[b]) : !memcmp(&d[b], &d2[b], sizeof(float));
        if (!same) diag("act_q8 avx2: trial %d differs", trial);
    }
    ok(same, "q8_0 activations, AVX2 quantiser (the SIMD tables'): the portable one's bytes and scales in 300 trials");
#endif
}

/* ---- the products ---- */

static const char *const IMPLS[] = {"portable", "avx2", "avx512", "avx512-vnni"};
enum { NIMPL = 4 };

typedef struct shape_stats {
    double worst;       /* max |y - ref| / tol */
    double worst_x;     /* q8_0: max |y - ref_unquantised| / its bound */
    int batch_ok, count;
} shape_stats;

/* Everything for one (type, m, k): W (at byte offset off), dequantised W,
 * x rows, the references. */
typedef struct problem {
    b2_wtype t;
    int m, k, off;
    unsigned char *wbuf, *w;
    float *wf;      /* (m, k) dequantised */
    float *x;       /* (NMAX, ldx) */
    int ldx;
    double *ref, *tol, *refx, *tolx; /* (NMAX, m) */
} problem;

enum { NMAX = 64 };
static const int NS[] = {1, 2, 3, 5, 17, 64};

static void problem_make(problem *p, b2_wtype t, int m, int k, int off)
{
    *p = (problem){.t = t, .m = m, .k = k, .off = off, .ldx = k + 3};
    const size_t rb = b2__wt_row_bytes(t, k);
    p->wbuf = malloc(rb * m + 8);
    p->w = p->wbuf + off;
    float *row = malloc(sizeof(float) * k);
    for (int r = 0; r < m; r++) {
        const float scale = r % 3 == 0 ? 0.02f : r % 3 == 1 ? 1.0f : 30.0f;
        for (int j = 0; j < k; j++) row[j] = frand(-scale, scale);
        if (isq(t) && r % 4 == 1 && k >= 64)
            for (int j = 32; j < 64; j++) row[j] = 0; /* an all-zero block */
        b2__wquantize_row(p->w + rb * r, row, t, k);
        if (t == B2_WT_Q8_0 && r % 5 == 2) /* -128 never comes out of quantising, but a file may hold it */
            for (int b = 0; b < k / 32; b++) p->w[rb * r + (size_t)b * B2_Q8_0_BYTES + 2 + (b * 7 + r) % 32] = 0x80;
        if (t == B2_WT_Q4_0 && r % 5 == 2) /* nibbles 15 and 0 (+7 and -8) where quantising may not put them */
            for (int b = 0; b < k / 32; b++) p->w[rb * r + (size_t)b * B2_Q4_0_BYTES + 2 + (b * 5 + r) % 16] = 0x0f;
    }
    free(row);
    p->wf = malloc(sizeof(float) * m * k);
    b2__wrows_to_f32(p->wf, p->w, t, 0, m, k);
    p->x = malloc(sizeof(float) * NMAX * p->ldx);
    for (int i = 0; i < NMAX; i++)
        for (int j = 0; j < p->ldx; j++) p->x[(size_t)i * p->ldx + j] = j < k ? frand(-1, 1) * (i % 4 == 3 ? 100.0f : 1.0f) : NAN;
    p->ref = malloc(sizeof(double) * NMAX * m);
    p->tol = malloc(sizeof(double) * NMAX * m);
    p->refx = malloc(sizeof(double) * NMAX * m);
    p->tolx = malloc(sizeof(double) * NMAX * m);
    int8_t *q = malloc(k);
    float *d = malloc(sizeof(float) * (k / 32 + 1));
    for (int i = 0; i < NMAX; i++) {
        const float *xi = p->x + (size_t)i * p->ldx;
        if (isq(t)) b2__wquantize_act_q8(q, d, xi, k);
        for (int r = 0; r < m; r++) {
            const float *wr = p->wf + (size_t)r * k;
            double s = 0, a = 0, sx = 0, ax = 0, qb = 0;
            for (int j = 0; j < k; j++) {
                sx += (double)wr[j] * xi[j];
                ax += fabs((double)wr[j] * xi[j]);
                if (isq(t)) {
                    const double xq = (double)d[j / 32] * q[j];
                    s += (double)wr[j] * xq;
                    a += fabs((double)wr[j] * xq);
                    qb += fabs((double)wr[j]) * d[j / 32] * 0.5 * (1 + 1e-5);
                }
            }
            const double u = ldexp(1.0, -24), n8 = k / 8 + 6;
            const size_t o = (size_t)i * m + r;
            if (isq(t)) {
                p->ref[o] = s;
                p->tol[o] = n8 * u * a + 1e-35;
                p->refx[o] = sx;
                p->tolx[o] = qb + n8 * u * (a + ax) + 1e-35;
            } else {
                p->ref[o] = p->refx[o] = sx;
                p->tol[o] = p->tolx[o] = n8 * u * ax + 1e-35;
            }
        }
    }
    free(q);
    free(d);
}

static void problem_free(problem *p)
{
    free(p->wbuf); free(p->wf); free(p->x); free(p->ref); free(p->tol); free(p->refx); free(p->tolx);
}

/* All n of NS with impl on p; accumulates into st. */
static void run_problem(const char *impl, const problem *p, shape_stats *st)
{
    const int m = p->m, ldy = m + 5;
    float *y1 = malloc(sizeof(float) * NMAX * ldy), *y = malloc(sizeof(float) * NMAX * ldy);
    for (int i = 0; i < NMAX; i++)
        b2__wmatmul_rows_impl(impl, y1 + (size_t)i * ldy, ldy, p->x + (size_t)i * p->ldx, p->ldx, p->w, p->t, 1, m, p->k);
    for (size_t ni = 0; ni < sizeof NS / sizeof NS[0]; ni++) {
        const int n = NS[ni];
        for (size_t j = 0; j < (size_t)NMAX * ldy; j++) y[j] = -7.0f; /* padding must survive */
        b2__wmatmul_rows_impl(impl, y, ldy, p->x, p->ldx, p->w, p->t, n, m, p->k);
        for (int i = 0; i < n; i++) {
            const float *yi = y + (size_t)i * ldy;
            if (memcmp(yi, y1 + (size_t)i * ldy, sizeof(float) * m) || yi[m] != -7.0f) {
                if (st->batch_ok)
                    diag("%s %s m %d k %d: row %d of %d differs from its 1-row call", impl, b2__wt_name(p->t), m, p->k, i, n);
                st->batch_ok = 0;
            }
            for (int r = 0; r < m; r++) {
                const size_t o = (size_t)i * m + r;
                const double e = fabs(yi[r] - p->ref[o]) / p->tol[o], ex = fabs(yi[r] - p->refx[o]) / p->tolx[o];
                if (!(e <= st->worst)) {
                    if (!(e <= 1))
                        diag("%s %s m %d k %d n %d: y[%d][%d] = %.9g, ref %.9g, tol %.3g", impl, b2__wt_name(p->t),
                             m, p->k, n, i, r, yi[r], p->ref[o], p->tol[o]);
                    st->worst = e;
                }
                if (!(ex <= st->worst_x)) st->worst_x = ex;
            }
        }
        st->count++;
    }
    free(y1);
    free(y);
}

static void test_products(void)
{
    static const b2_wtype TYPES[] = {B2_WT_F32, B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    static const int MS[] = {1, 7, 63, 65, 130};
    static const int KS[] = {32, 33, 96, 1027, 1056};
    int have[NIMPL];
    float probe = 0, px[32] = {0};
    unsigned char pw[32 * 4];
    memset(pw, 0, sizeof pw);
    for (int a = 0; a < NIMPL; a++) {
        have[a] = b2__wmatmul_rows_impl(IMPLS[a], &probe, 1, px, 32, pw, B2_WT_F32, 1, 1, 32) == 0;
        if (!have[a]) diag("%s: not run, this CPU lacks it (built, not tested here)", IMPLS[a]);
    }
    ok(have[0], "portable is always available");
    ok(b2__wmatmul_rows_impl("sse9", &probe, 1, px, 32, pw, B2_WT_F32, 1, 1, 32) == -1, "unknown implementation: -1");

    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        const b2_wtype t = TYPES[ti];
        shape_stats st[NIMPL];
        for (int a = 0; a < NIMPL; a++) st[a] = (shape_stats){0, 0, 1, 0};
        int shapes = 0;
        for (size_t mi = 0; mi < sizeof MS / sizeof MS[0]; mi++)
            for (size_t ki = 0; ki < sizeof KS / sizeof KS[0]; ki++) {
                if (!b2__wt_ok(t, KS[ki])) continue;
                problem p;
                problem_make(&p, t, MS[mi], KS[ki], (int)((mi + ki) % 3));
                for (int a = 0; a < NIMPL; a++)
                    if (have[a]) run_problem(IMPLS[a], &p, &st[a]);
                problem_free(&p);
                shapes++;
            }
        for (int a = 0; a < NIMPL; a++) {
            if (!have[a]) continue;
            ok(st[a].worst <= 1, "%s %s: %d shapes x %d batch sizes within the f32 bound (worst %.3f of it)",
               IMPLS[a], b2__wt_name(t), shapes, (int)(sizeof NS / sizeof NS[0]), st[a].worst);
            if (isq(t))
                ok(st[a].worst_x <= 1, "%s %s: within the activation quantisation bound of the unquantised product (worst %.3f of it)",
                   IMPLS[a], b2__wt_name(t), st[a].worst_x);
            ok(st[a].batch_ok, "%s %s: every row of every n-row call has the bits of its 1-row call", IMPLS[a], b2__wt_name(t));
        }
    }
}

/* Several weights of one x at once against each alone, bit for bit */
static void test_multi(void)
{
    static const b2_wtype TYPES[] = {B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    enum { NW = 5, K = 96, PAD = 3 };
    static const int M[NW] = {300, 513, 70, 1, 257};
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        const b2_wtype t = TYPES[ti];
        problem p[NW];
        for (int i = 0; i < NW; i++) problem_make(&p[i], t, M[i], K, i % 3);
        float *ya[NW], *yb[NW], *bias[NW];
        int ldy[NW], same = 1, lin_same = 1;
        const void *w[NW];
        b2_linear l[NW];
        const b2_linear *lp[NW];
        for (int i = 0; i < NW; i++) {
            ldy[i] = M[i] + PAD;
            ya[i] = malloc(sizeof(float) * 5 * ldy[i]);
            yb[i] = malloc(sizeof(float) * 5 * ldy[i]);
            bias[i] = malloc(sizeof(float) * M[i]);
            for (int r = 0; r < M[i]; r++) bias[i][r] = frand(-1, 1);
            w[i] = p[i].w;
            l[i] = (b2_linear){.w = p[i].w, .b = i % 2 ? bias[i] : NULL, .out = M[i], .in = K, .wt = t};
            lp[i] = &l[i];
        }
        static const int NN[] = {1, 2, 5};
        for (size_t ni = 0; ni < 3; ni++) {
            const int n = NN[ni];
            for (int i = 0; i < NW; i++)
                for (int j = 0; j < 5 * ldy[i]; j++) ya[i][j] = yb[i][j] = -7.0f;
            /* every problem has its own x: all take p[0]'s */
            for (int i = 0; i < NW; i++) b2__wmatmul_rows(ya[i], ldy[i], p[0].x, p[0].ldx, w[i], t, n, M[i], K);
            b2__wmatmul_rows_multi(yb, ldy, p[0].x, p[0].ldx, w, t, n, M, K, NW);
            for (int i = 0; i < NW; i++)
                if (memcmp(ya[i], yb[i], sizeof(float) * 5 * ldy[i])) {
                    if (same) diag("%s n %d: weight %d differs from its own call", b2__wt_name(t), n, i);
                    same = 0;
                }
            /* linear: x packed (ldx = in), y packed (ldy = out) */
            float *xs = malloc(sizeof(float) * n * K);
            for (int r = 0; r < n; r++) memcpy(xs + (size_t)r * K, p[0].x + (size_t)r * p[0].ldx, sizeof(float) * K);
            for (int i = 0; i < NW; i++) b2__linear_rows(ya[i], xs, n, &l[i]);
            b2__linear_rows_multi(yb, xs, n, lp, 3);
            b2__linear_rows_multi(yb + 3, xs, n, lp + 3, 2);
            for (int i = 0; i < NW; i++)
                if (memcmp(ya[i], yb[i], sizeof(float) * n * M[i])) {
                    if (lin_same) diag("%s n %d: linear %d differs from its own call", b2__wt_name(t), n, i);
                    lin_same = 0;
                }
            free(xs);
        }
        /* a weight without rows is skipped, its y untouched; the others computed */
        int zm[3] = {M[0], 0, M[2]}, skipped = 1;
        for (int j = 0; j < 5 * ldy[1]; j++) yb[1][j] = -7.0f;
        memset(yb[0], 0, sizeof(float) * ldy[0]);
        b2__wmatmul_rows_multi(yb, ldy, p[0].x, p[0].ldx, w, t, 1, zm, K, 3);
        for (int j = 0; j < 5 * ldy[1]; j++) skipped &= yb[1][j] == -7.0f;
        b2__wmatmul_rows(ya[0], ldy[0], p[0].x, p[0].ldx, w[0], t, 1, M[0], K);
        ok(skipped && !memcmp(ya[0], yb[0], sizeof(float) * M[0]),
           "%s: a weight of 0 rows in a multi call is skipped (its y untouched), the others computed", b2__wt_name(t));
        ok(same, "%s: one multi call over %d weights (two jobs) gives each the bits of its own call, padding kept",
           b2__wt_name(t), NW);
        ok(lin_same, "%s: b2__linear_rows_multi (biases on two) gives each layer the bits of b2__linear_rows",
           b2__wt_name(t));
        for (int i = 0; i < NW; i++) {
            problem_free(&p[i]);
            free(ya[i]);
            free(yb[i]);
            free(bias[i]);
        }
    }
}

/* A decode step's product is cut into pool tasks (wkernels.c: 256 rows,
 * or for q8_0 up to about 1.3 MB of W), the last ones cut smaller
 * (split_tail): at k = 10240 and 700 rows, f16, bf16 and q4_0 one task
 * of 256 rows then 7 of 64 (the last one short), q8_0 6 of 88 then 8 of
 * 22 (with 2 pool threads).  Each row must still come out once, with
 * the bits of a 1-row weight (one task) at its place, n = 1 and 2, in
 * every implementation. */
static void test_decode_tasks(void)
{
    static const b2_wtype TYPES[] = {B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    enum { M = 700, K = 10240, LDY = M + 3 };
    float *row = malloc(sizeof(float) * K), *x = malloc(sizeof(float) * 2 * K);
    float *y = malloc(sizeof(float) * 2 * LDY), *y1 = malloc(sizeof(float) * 2 * LDY);
    for (int j = 0; j < 2 * K; j++) x[j] = frand(-1, 1);
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        const b2_wtype t = TYPES[ti];
        const size_t rb = b2__wt_row_bytes(t, K);
        unsigned char *w = malloc(rb * M);
        for (int r = 0; r < M; r++) {
            for (int j = 0; j < K; j++) row[j] = frand(-0.05f, 0.05f);
            b2__wquantize_row(w + rb * r, row, t, K);
        }
        int same = 1, impls = 0;
        for (int ii = 0; ii < NIMPL; ii++) {
            for (int n = 1; n <= 2; n++) {
                for (int j = 0; j < 2 * LDY; j++) y[j] = y1[j] = -7.0f;
                if (b2__wmatmul_rows_impl(IMPLS[ii], y, LDY, x, K, w, t, n, M, K) != 0) break; /* not on this CPU */
                impls += n == 1;
                for (int r = 0; r < M; r++)
                    b2__wmatmul_rows_impl(IMPLS[ii], y1 + r, LDY, x, K, w + rb * r, t, n, 1, K);
                if (memcmp(y, y1, sizeof(float) * 2 * LDY)) {
                    if (same) diag("%s %s n %d: a row differs from its 1-row weight", IMPLS[ii], b2__wt_name(t), n);
                    same = 0;
                }
            }
        }
        ok(same && impls > 0, "%s: a decode product over several tasks (k %d, %d rows) gives each row the bits of "
           "that row alone, n 1 and 2, %d implementations", b2__wt_name(t), K, M, impls);
        free(w);
    }
    free(row); free(x); free(y); free(y1);
}

/* Every SIMD implementation against the portable one for q4_0 and q8_0,
 * at every block count mod 4 (q4_0's VNNI kernel takes four blocks a
 * step, q8_0's two): the same exact integer block sums, so they differ
 * only by f32 rounding (the SIMD paths fuse the multiply-adds): within
 * twice the f32 bound. */
static void test_quad_vs_portable(b2_wtype t)
{
    const char *tn = b2__wt_name(t);
    static const int MS[] = {1, 7, 130};
    /* 1, 2, 3, 7, 80 blocks: every remainder mod 4; 321: two of the
     * AVX2 kernel's k segments (10240 values), the second one step */
    static const int KS[] = {32, 64, 96, 224, 2560, 10272};
    for (int a = 1; a < NIMPL; a++) {
        float probe = 0, px[32] = {0};
        unsigned char pw[B2_Q8_0_BYTES] = {0};
        if (b2__wmatmul_rows_impl(IMPLS[a], &probe, 1, px, 32, pw, t, 1, 1, 32)) continue;
        double worst = 0;
        int cases = 0, batch = 1;
        for (size_t mi = 0; mi < sizeof MS / sizeof MS[0]; mi++)
            for (size_t ki = 0; ki < sizeof KS / sizeof KS[0]; ki++) {
                problem p;
                const int m = MS[mi], k = KS[ki], n = 5;
                problem_make(&p, t, m, k, (int)(mi % 3));
                float *y0 = malloc(sizeof(float) * n * m), *y1 = malloc(sizeof(float) * n * m), *yr = malloc(sizeof(float) * m);
                b2__wmatmul_rows_impl("portable", y0, m, p.x, p.ldx, p.w, p.t, n, m, k);
                b2__wmatmul_rows_impl(IMPLS[a], y1, m, p.x, p.ldx, p.w, p.t, n, m, k);
                for (int i = 0; i < n * m; i++) {
                    const double e = fabs((double)y1[i] - y0[i]) / (2 * p.tol[i]);
                    if (!(e <= worst)) worst = e;
                }
                for (int i = 0; i < n; i++) { /* each row alone: the bits of the 5-row call */
                    b2__wmatmul_rows_impl(IMPLS[a], yr, m, p.x + (size_t)i * p.ldx, p.ldx, p.w, p.t, 1, m, k);
                    batch &= !memcmp(yr, y1 + (size_t)i * m, sizeof(float) * m);
                }
                cases++;
                free(y0); free(y1); free(yr);
                problem_free(&p);
            }
        ok(worst <= 1, "%s %s vs portable: %d shapes within twice the f32 bound (worst %.3f of it)", IMPLS[a], tn, cases, worst);
        ok(batch, "%s %s: those shapes' rows alone have the bits of the 5-row calls (k segments included)", IMPLS[a], tn);
    }
}

/* NaN in one row; the dispatching entry point is the named implementation */
static void test_special(void)
{
    static const b2_wtype TYPES[] = {B2_WT_F32, B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    const char *name = b2__wkernels_name();
    int known = 0;
    for (int a = 0; a < NIMPL; a++) known |= !strcmp(name, IMPLS[a]);
    ok(known, "b2__wkernels_name() = %s", name);
    const char *want = getenv("BLIP2_KERNELS");
    float dummy = 0, px[32] = {0};
    unsigned char pw[128] = {0};
    if (want && *want && b2__wmatmul_rows_impl(want, &dummy, 1, px, 32, pw, B2_WT_F32, 1, 1, 32) == 0)
        ok(!strncmp(name, want, strlen(want)), "BLIP2_KERNELS=%s is honoured (%s)", want, name);
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        problem p;
        problem_make(&p, TYPES[ti], 65, 96, 1);
        const int n = 5, ldy = 70;
        float y[5 * 70], yd[5 * 70];
        p.x[2 * p.ldx + 40] = NAN;
        int good = 1;
        for (int a = 0; a < NIMPL; a++) {
            if (b2__wmatmul_rows_impl(IMPLS[a], y, ldy, p.x, p.ldx, p.w, p.t, n, 65, 96)) continue;
            for (int i = 0; i < n; i++)
                for (int r = 0; r < 65; r++) good &= i == 2 ? isnan(y[i * ldy + r]) : !isnan(y[i * ldy + r]);
            if (!strcmp(IMPLS[a], name)) {
                b2__wmatmul_rows(yd, ldy, p.x, p.ldx, p.w, p.t, n, 65, 96);
                for (int i = 0; i < n; i++) good &= !memcmp(y + i * ldy, yd + i * ldy, sizeof(float) * 65);
            }
        }
        ok(good, "%s: a NaN in one x row makes that row NaN only; b2__wmatmul_rows is %s", b2__wt_name(p.t), name);
        problem_free(&p);
    }
}

/* two threads at once: the q8_0 scratch is per thread */
typedef struct thr {
    const problem *p;
    float *y;
} thr;

static void *thr_run(void *arg)
{
    thr *a = arg;
    for (int rep = 0; rep < 20; rep++)
        b2__wmatmul_rows(a->y, a->p->m, a->p->x + (size_t)(rep % 2) * a->p->ldx, a->p->ldx, a->p->w, a->p->t,
                         rep % 2 ? 7 : 17, a->p->m, a->p->k);
    return NULL;
}

static void test_threads(void)
{
    problem p;
    problem_make(&p, B2_WT_Q8_0, 130, 1056, 0);
    float *ya = malloc(sizeof(float) * 17 * 130), *yb = malloc(sizeof(float) * 17 * 130), *ys = malloc(sizeof(float) * 17 * 130);
    thr a = {&p, ya}, b = {&p, yb};
    pthread_t th;
    pthread_create(&th, NULL, thr_run, &a);
    thr_run(&b);
    pthread_join(th, NULL);
    b2__wmatmul_rows(ys, 130, p.x + p.ldx, p.ldx, p.w, p.t, 7, 130, 1056);
    ok(!memcmp(ya, ys, sizeof(float) * 7 * 130) && !memcmp(yb, ys, sizeof(float) * 7 * 130),
       "q8_0 from two threads at once: the same bits as alone");
    free(ya); free(yb); free(ys);
    problem_free(&p);
}

/* The prefetch distance changes speed only: the same bits at 0, the
 * default and 1 MiB (far past the end of W: a prefetch never faults). */
static void test_prefetch(void)
{
    const int def = b2__wkernels_set_prefetch(-1);
    ok(def >= 0 && def <= 1 << 20, "prefetch distance in use: %d bytes", def);
    ok(b2__wkernels_set_prefetch(5 << 20) == def && b2__wkernels_set_prefetch(-1) == 1 << 20,
       "a distance past 1 MiB is clamped to 1 MiB");
    static const b2_wtype TYPES[] = {B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        problem p;
        problem_make(&p, TYPES[ti], 130, 1056, 1);
        const int n = 3;
        float *y0 = malloc(sizeof(float) * n * 130), *y1 = malloc(sizeof(float) * n * 130);
        int good = 1, ran = 0;
        for (int a = 0; a < NIMPL; a++) {
            b2__wkernels_set_prefetch(0);
            if (b2__wmatmul_rows_impl(IMPLS[a], y0, 130, p.x, p.ldx, p.w, p.t, n, 130, 1056)) continue;
            ran++;
            b2__wkernels_set_prefetch(def);
            b2__wmatmul_rows_impl(IMPLS[a], y1, 130, p.x, p.ldx, p.w, p.t, n, 130, 1056);
            good &= !memcmp(y0, y1, sizeof(float) * n * 130);
            b2__wkernels_set_prefetch(1 << 20);
            b2__wmatmul_rows_impl(IMPLS[a], y1, 130, p.x, p.ldx, p.w, p.t, n, 130, 1056);
            good &= !memcmp(y0, y1, sizeof(float) * n * 130);
        }
        ok(good && ran >= 1, "%s: prefetch 0, %d and 1 MiB give the same bits (%d implementations)",
           b2__wt_name(p.t), def, ran);
        free(y0); free(y1);
        problem_free(&p);
    }
    b2__wkernels_set_prefetch(def);
}

/* b2__wpf: each row of a tile of R rows (rb bytes apart, the tiles one
 * after another) is prefetched distance / R bytes ahead in its own
 * stream, the same row of the next tiles once it passes the row's end.
 * (Shifting every row's address by the distance, as before 2026-12-07,
 * fails this for any tile whose rows are shorter than the distance.) */
static void test_prefetch_streams(void)
{
    unsigned char *w = malloc((size_t)5 << 20); /* every address below is inside it */
    static const size_t RB[] = {72, 1440, 2720, 5120, 20480};
    static const int DIST[] = {64, 4096, 8192, 16384, 1 << 20};
    const int def = b2__wkernels_set_prefetch(-1);
    int good = 1, cases = 0;
    for (size_t a = 0; a < sizeof RB / sizeof RB[0]; a++)
        for (size_t b = 0; b < sizeof DIST / sizeof DIST[0]; b++)
            for (int R = 1; R <= 4; R++) {
                b2__wkernels_set_prefetch(DIST[b]);
                const b2_wpf p = b2__wpf(w, RB[a], R);
                const size_t d = (size_t)DIST[b] / (size_t)R;
                for (size_t off = 0; off < RB[a]; off += 8)
                    for (int r = 0; r < R; r++) {
                        const size_t s = off + d; /* this row's stream, in row bytes */
                        const char *want = (const char *)w + s / RB[a] * (size_t)R * RB[a] + (size_t)r * RB[a] + s % RB[a];
                        good &= B2_WPF_AT(p, off, r, RB[a]) == want;
                    }
                cases++;
            }
    b2__wkernels_set_prefetch(0);
    const b2_wpf none = b2__wpf(w, 5120, 4);
    free(w);
    ok(good && !none.a, "prefetch: each row of a tile followed in its own stream (%d row sizes x distances x tiles); "
       "none at distance 0", cases);
    b2__wkernels_set_prefetch(def);
}

/* ---- b2__wrows_to_f32 against the scalar definitions ---- */

/* Integer weight j (0..31) of the q8_0 or q4_0 (t) block at blk: q8_0 the
 * signed byte, q4_0 the nibble (low nibbles first) - 8. */
static int qweight(b2_wtype t, const unsigned char *blk, int j)
{
    if (t == B2_WT_Q8_0) return (int8_t)blk[2 + j];
    return (j < 16 ? blk[2 + j] & 15 : blk[2 + j - 16] >> 4) - 8;
}
/* Whether y (n values) is d * q of the q8_0 or q4_0 (t) blocks from w,
 * each value to the bit; the first wrong one is told. */
static int q_exact(b2_wtype t, const float *y, const unsigned char *w, int n)
{
    const size_t bytes = t == B2_WT_Q8_0 ? B2_Q8_0_BYTES : B2_Q4_0_BYTES;
    for (int i = 0; i < n; i++) {
        const unsigned char *blk = w + (size_t)(i / 32) * bytes;
        uint16_t d;
        memcpy(&d, blk, 2);
        const float r = b2__f16_to_f32(d) * (float)qweight(t, blk, i % 32);
        if (fbits(y[i]) != fbits(r)) {
            diag("%s value %d: %08x, want %08x", b2__wt_name(t), i, fbits(y[i]), fbits(r));
            return 0;
        }
    }
    return 1;
}
static int same_or_nan(float a, float b) { return fbits(a) == fbits(b) || (isnan(a) && isnan(b)); }

static void test_widen(void)
{
    /* 65536 patterns as 2048 rows of 32 (f16, bf16), then 512 rows of 127
     * from row 3 (odd k: rows start at odd multiples of 2 bytes) */
    unsigned char *raw = malloc(2 * 65536 + 1);
    float *y = malloc(sizeof(float) * 300 * 224); /* the q8_0 rows below need more than 65536 */
    int good16 = 1, goodbf = 1, nanq = 1;
    for (uint32_t h = 0; h < 0x10000; h++) { uint16_t v = (uint16_t)h; memcpy(raw + 1 + 2 * h, &v, 2); }
    for (int pass = 0; pass < 2; pass++) {
        const int k = pass ? 127 : 32, row0 = pass ? 3 : 0, rows = pass ? 512 : 2048;
        for (int t = 0; t < 2; t++) {
            const b2_wtype wt = t ? B2_WT_BF16 : B2_WT_F16;
            b2__wrows_to_f32(y, raw + 1, wt, row0, rows, k);
            for (int i = 0; i < rows * k; i++) {
                const uint32_t h = (uint32_t)(row0 * k + i);
                const float r = t ? b2__bf16_to_f32((uint16_t)h) : b2__f16_to_f32((uint16_t)h);
                if (!same_or_nan(y[i], r)) {
                    if (t ? goodbf : good16) diag("%s %04x: %08x, want %08x", b2__wt_name(wt), h, fbits(y[i]), fbits(r));
                    *(t ? &goodbf : &good16) = 0;
                }
                nanq &= !isnan(r) || isnan(y[i]);
            }
        }
    }
    ok(good16 && nanq, "f16 rows -> f32: every pattern exact (k 32 and 127, unaligned)");
    ok(goodbf, "bf16 rows -> f32: every pattern exact (k 32 and 127, unaligned)");
    /* q8_0: 300 rows of 7 blocks, from row 5, at an odd address */
    enum { NB = 7, K = NB * 32, ROWS = 300 }; /* (ROWS - 5) * K fits y */
    const size_t rb = (size_t)NB * B2_Q8_0_BYTES;
    unsigned char *q = malloc(rb * ROWS + 1);
    for (size_t b = 0; b < (size_t)NB * ROWS; b++) {
        unsigned char *blk = q + 1 + b * B2_Q8_0_BYTES;
        const uint16_t d = b % 11 == 0 ? (uint16_t)(b % 1024) /* subnormal or zero scale */
                         : b % 13 == 0 ? 0xfbff : q16(frand(-0.1f, 0.1f), B2_WT_F16);
        memcpy(blk, &d, 2);
        for (int j = 0; j < 32; j++) blk[2 + j] = b % 17 == 0 ? 0 : (unsigned char)(int)frand(-128, 128);
        blk[2 + b % 32] = 0x80;
    }
    b2__wrows_to_f32(y, q + 1, B2_WT_Q8_0, 5, ROWS - 5, K);
    ok(q_exact(B2_WT_Q8_0, y, q + 1 + 5 * rb, (ROWS - 5) * K), "q8_0 rows -> f32: d * q exact (-128, zero and subnormal scales, unaligned)");
    /* q4_0: the same rows' worth of random blocks, from row 5, unaligned */
    const size_t rb4 = (size_t)NB * B2_Q4_0_BYTES;
    unsigned char *q4 = malloc(rb4 * ROWS + 1);
    for (size_t b = 0; b < (size_t)NB * ROWS; b++) {
        unsigned char *blk = q4 + 1 + b * B2_Q4_0_BYTES;
        const uint16_t d = b % 11 == 0 ? (uint16_t)(b % 1024) : b % 13 == 0 ? 0xfbff : q16(frand(-0.1f, 0.1f), B2_WT_F16);
        memcpy(blk, &d, 2);
        for (int j = 0; j < 16; j++) blk[2 + j] = (unsigned char)(int)frand(0, 255.99f);
    }
    b2__wrows_to_f32(y, q4 + 1, B2_WT_Q4_0, 5, ROWS - 5, K);
    ok(q_exact(B2_WT_Q4_0, y, q4 + 1 + 5 * rb4, (ROWS - 5) * K), "q4_0 rows -> f32: d * (nibble - 8) exact, low nibbles first (zero and subnormal scales, unaligned)");
    free(q4);
    free(raw); free(y); free(q);
}

/* ---- the autotuner ---- */

/* Deliberately wrong candidates for b2__wkernels_tune. */
static void zero_fp(float *y, int ldy, const float *x, int ldx, const unsigned char *w, size_t rb,
                    b2_wtype t, int n, int m, int k)
{
    (void)x; (void)ldx; (void)w; (void)rb; (void)t; (void)k;
    for (int i = 0; i < n; i++) memset(y + (size_t)i * ldy, 0, sizeof(float) * m);
}
static void zero_q8(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w,
                    size_t rb, int n, int m, int k)
{
    (void)xq; (void)xd; (void)w; (void)rb; (void)k;
    for (int i = 0; i < n; i++) memset(y + (size_t)i * ldy, 0, sizeof(float) * m);
}
/* right but for the last 8 values of each row (a tail bug) */
static void short_fp(float *y, int ldy, const float *x, int ldx, const unsigned char *w, size_t rb,
                     b2_wtype t, int n, int m, int k)
{
    float *row = malloc(sizeof(float) * k);
    for (int r = 0; r < m; r++) {
        b2__wrows_to_f32(row, w + rb * r, t, 0, 1, k);
        for (int i = 0; i < n; i++) {
            double a = 0;
            for (int j = 0; j < k - 8; j++) a += (double)row[j] * x[(size_t)i * ldx + j];
            y[(size_t)i * ldy + r] = (float)a;
        }
    }
    free(row);
}
/* q8_0 or q4_0 (t) likewise: right but for the last drop (8) values of
 * each row (drop 0: right, in scalar code with double sums) */
static void short_q(b2_wtype t, int drop, float *y, int ldy, const int8_t *xq, const float *xd,
                    const unsigned char *w, size_t rb, int n, int m, int k)
{
    const int nb = k / 32; /* B2_Q8_0_BLOCK = B2_Q4_0_BLOCK */
    const size_t bytes = t == B2_WT_Q8_0 ? B2_Q8_0_BYTES : B2_Q4_0_BYTES;
    for (int r = 0; r < m; r++)
        for (int i = 0; i < n; i++) {
            double a = 0;
            for (int b = 0; b < nb; b++) {
                const unsigned char *blk = w + rb * r + (size_t)b * bytes;
                uint16_t h;
                memcpy(&h, blk, 2);
                int32_t sum = 0;
                const int last = b == nb - 1 ? 32 - drop : 32;
                for (int j = 0; j < last; j++) sum += qweight(t, blk, j) * xq[(size_t)i * k + b * 32 + j];
                a += (double)b2__f16_to_f32(h) * xd[(size_t)i * nb + b] * sum;
            }
            y[(size_t)i * ldy + r] = (float)a;
        }
}
/* NAME: short_q for type T without the last DROP values, as a b2_wimpl
 * q8/q4 entry */
#define SHORT_Q(NAME, T, DROP)                                                                      \
    static void NAME(float *y, int ldy, const int8_t *xq, const float *xd, const unsigned char *w, \
                     size_t rb, int n, int m, int k)                                                \
    {                                                                                               \
        short_q(T, DROP, y, ldy, xq, xd, w, rb, n, m, k);                                           \
    }
SHORT_Q(short_q8, B2_WT_Q8_0, 8)
SHORT_Q(short_q4, B2_WT_Q4_0, 8)
static void dq_c(float *y, const unsigned char *w, int nb) { b2__wrows_to_f32(y, w, B2_WT_Q8_0, 0, 1, nb * 32); }
static void dq4_c(float *y, const unsigned char *w, int nb) { b2__wrows_to_f32(y, w, B2_WT_Q4_0, 0, 1, nb * 32); }
/* Right but slower: f32/f16/bf16 the implementation slow_base twice
 * over; q8_0 and q4_0 in scalar code. */
static const char *slow_base;
static void slow_fp(float *y, int ldy, const float *x, int ldx, const unsigned char *w, size_t rb,
                    b2_wtype t, int n, int m, int k)
{
    (void)rb;
    for (int rep = 0; rep < 2; rep++) b2__wmatmul_rows_impl(slow_base, y, ldy, x, ldx, w, t, n, m, k);
}
SHORT_Q(slow_q8, B2_WT_Q8_0, 0)
SHORT_Q(slow_q4, B2_WT_Q4_0, 0)
static const b2_wimpl slow_twin = {"test-slow", slow_fp, slow_q8, dq_c, slow_q4, dq4_c, NULL};
static const b2_wimpl wrong_zero = {"test-zero", zero_fp, zero_q8, dq_c, zero_q8, dq4_c, NULL};
static const b2_wimpl wrong_short = {"test-short", short_fp, short_q8, dq_c, short_q4, dq4_c, NULL};

/* The tuner's result is consistent with its rule: where others ended
 * within 10 % of the best score, exactly those were timed in cache and
 * the fastest there was chosen; else none was and the best score won.
 */
static void tune_consistent(b2_wtype t, const b2_wtune *r)
{
    double sc[B2_WTUNE_MAX] = {0}, hot[B2_WTUNE_MAX] = {0}, top = 0;
    for (int c = 0; c < r->n; c++) {
        sc[c] = r->c[c].refused ? 0 : r->c[c].score;
        hot[c] = r->c[c].hot;
        top = sc[c] > top ? sc[c] : top;
    }
    int close = 0, timed_right = 1;
    for (int c = 0; c < r->n; c++) close += sc[c] > 0 && sc[c] >= 0.90 * top;
    for (int c = 0; c < r->n; c++) {
        const int in = close > 1 && sc[c] > 0 && sc[c] >= 0.90 * top;
        timed_right &= in ? hot[c] > 0 : hot[c] == 0;
    }
    const int pick = b2__wtune_pick(sc, hot, r->n);
    ok(timed_right && pick >= 0 && !strcmp(r->chosen, r->c[pick].name),
       "%s: %d candidate(s) ended within 10 %% of the best score, %s, %s chosen", b2__wt_name(t), close,
       close > 1 ? "each timed in cache too" : "none timed in cache", r->chosen);
}

static void test_tune_pick(void)
{
    const double s1[] = {2.0, 1.0, 3.0}, h0[] = {0, 0, 0};
    ok(b2__wtune_pick(s1, h0, 3) == 2, "b2__wtune_pick: a clear winner by score");
    const double h1[] = {50, 90, 10};
    ok(b2__wtune_pick(s1, h1, 3) == 2, "b2__wtune_pick: in-cache rates do not matter beyond 10 %%");
    const double s2[] = {2.90, 2.65, 0.12}, h2[] = {40, 55, 0};
    ok(b2__wtune_pick(s2, h2, 3) == 1, "b2__wtune_pick: within 10 %%, the fastest in cache");
    const double s3[] = {2.90, 2.85, 2.55}, h3[] = {40, 40, 90};
    ok(b2__wtune_pick(s3, h3, 3) == 0, "b2__wtune_pick: 12 %% behind is out, even fastest in cache; equal in cache, the higher score");
    const double s4[] = {0, 0}, h4[] = {1, 2};
    ok(b2__wtune_pick(s4, h4, 2) == -1, "b2__wtune_pick: no score above 0, no choice");
    const double s5[] = {0, 2.0, 1.99}, h5[] = {99, 0, 5};
    ok(b2__wtune_pick(s5, h5, 3) == 2, "b2__wtune_pick: a refused candidate (score 0) is never picked");
}

static void test_tune(void)
{
    static const b2_wtype TYPES[] = {B2_WT_F32, B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    const int m = 300, k = 1056, n = 5;
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        const b2_wtype t = TYPES[ti];
        problem p[2];
        problem_make(&p[0], t, m, k, 0);
        problem_make(&p[1], t, m, k, 1);
        const b2_wsample s[3] = {{p[0].w, m, k}, {p[1].w, m, k}, {p[0].w, m / 2, k}};
        const char *names[B2_WTUNE_MAX];
        const int nn = b2__wkernels_candidates(t, names, B2_WTUNE_MAX);
        b2_wtune res;
        const int rc = b2__wkernels_tune(t, s, 3, &res);
        int known = 0, none_refused = 1;
        for (int c = 0; rc == 0 && c < nn; c++) known |= !strcmp(res.chosen, names[c]);
        for (int c = 0; rc == 0 && c < res.n; c++) {
            diag("%s %s: %.2f of the bound, %.2f GB/s", b2__wt_name(t), res.c[c].name, res.c[c].err, res.c[c].gbs);
            none_refused &= !res.c[c].refused;
        }
        ok(rc == 0 && known && res.n == nn, "%s: the tuner chose %s, one of the %d this CPU runs", b2__wt_name(t),
           rc == 0 ? res.chosen : "nothing", nn);
        ok(none_refused, "%s: every real implementation is within the bound of portable", b2__wt_name(t));
        /* one phase only with a clear winner (the runner-up 5 % behind) */
        double sc1 = 0, sc2 = 0;
        for (int c = 0; rc == 0 && c < res.n; c++) {
            const double v = res.c[c].refused ? 0 : res.c[c].score;
            if (v > sc1) { sc2 = sc1; sc1 = v; }
            else if (v > sc2) sc2 = v;
        }
        ok(rc == 0 && res.phases >= 1 && res.phases <= 3 && (res.phases > 1 || sc2 < 0.95 * sc1),
           "%s: %d measurement phase(s), best two scores %.2f and %.2f", b2__wt_name(t), rc == 0 ? res.phases : 0,
           sc1, sc2);
        tune_consistent(t, &res);
        /* the chosen one against portable, all rows, by the tuner's bound */
        float *y = malloc(sizeof(float) * n * m), *yp = malloc(sizeof(float) * n * m);
        double worst = 0;
        if (rc == 0 && b2__wmatmul_rows_impl(res.chosen, y, m, p[0].x, p[0].ldx, p[0].w, t, n, m, k) == 0 &&
            b2__wmatmul_rows_impl("portable", yp, m, p[0].x, p[0].ldx, p[0].w, t, n, m, k) == 0) {
            const double u = 1.0 / 16777216.0, g = (k / 8 + 8) * u / (1 - (k / 8 + 8) * u);
            int8_t q[1056];
            float d[33], xq[1056];
            for (int i = 0; i < n; i++) {
                const float *xi = p[0].x + (size_t)i * p[0].ldx;
                if (t == B2_WT_Q8_0 || t == B2_WT_Q4_0) {
                    b2__wquantize_act_q8(q, d, xi, k);
                    for (int j = 0; j < k; j++) xq[j] = d[j / 32] * q[j];
                    xi = xq;
                }
                for (int r = 0; r < m; r++) {
                    double a = 0;
                    for (int j = 0; j < k; j++) a += fabs((double)p[0].wf[(size_t)r * k + j] * xi[j]);
                    const double e = fabs((double)y[i * m + r] - yp[i * m + r]) / (2 * g * a);
                    if (!(e <= worst)) worst = e;
                }
            }
        } else {
            worst = INFINITY;
        }
        ok(worst <= 1, "%s: the chosen %s agrees with portable on %d x %d outputs (worst %.3f of the bound)",
           b2__wt_name(t), rc == 0 ? res.chosen : "-", n, m, worst);
        free(y);
        free(yp);
        /* wrong candidates: refused, never chosen */
        const b2_wimpl *wrong[2] = {&wrong_zero, &wrong_short};
        for (int w = 0; w < 2; w++) {
            b2__wkernels_test_candidate(wrong[w]);
            b2_wtune r2;
            const int rc2 = b2__wkernels_tune(t, s, 3, &r2);
            int refused = 0, listed = 0;
            for (int c = 0; c < r2.n; c++)
                if (!strcmp(r2.c[c].name, wrong[w]->name)) { listed = 1; refused = r2.c[c].refused; }
            ok(rc2 == 0 && listed && refused && strcmp(r2.chosen, wrong[w]->name) != 0,
               "%s: a wrong candidate (%s) is refused and %s chosen", b2__wt_name(t), wrong[w]->name,
               rc2 == 0 ? r2.chosen : "nothing");
            b2__wkernels_test_candidate(NULL);
        }
        /* a right but slower candidate: timed, never chosen (for
         * f32/f16/bf16 the chosen one run twice over: a factor of 2 the
         * measurement must see) */
        {
            slow_base = rc == 0 ? res.chosen : "portable";
            b2__wkernels_test_candidate(&slow_twin);
            b2_wtune r3;
            const int rc3 = b2__wkernels_tune(t, s, 3, &r3);
            int timed = 0;
            for (int c = 0; rc3 == 0 && c < r3.n; c++)
                if (!strcmp(r3.c[c].name, slow_twin.name)) timed = !r3.c[c].refused;
            ok(rc == 0 && rc3 == 0 && timed && strcmp(r3.chosen, slow_twin.name) != 0,
               "%s: a right but slower candidate (%s) is timed and %s chosen", b2__wt_name(t),
               t == B2_WT_Q8_0 || t == B2_WT_Q4_0 ? "scalar code" : "the chosen one twice over",
               rc3 == 0 ? r3.chosen : "nothing");
            /* everything counted close: each candidate within the bound
             * timed in cache too, the fastest there chosen, the slower
             * one slower there than the chosen one */
            b2__wkernels_test_tie(1);
            b2_wtune ra;
            const int rca = b2__wkernels_tune(t, s, 3, &ra);
            b2__wkernels_test_tie(-1);
            int all = rca == 0, fastest = rca == 0, chosen = -1, slow = -1;
            for (int c = 0; rca == 0 && c < ra.n; c++) {
                all &= ra.c[c].refused || ra.c[c].hot > 0;
                if (!strcmp(ra.c[c].name, ra.chosen)) chosen = c;
                if (!strcmp(ra.c[c].name, slow_twin.name)) slow = c;
            }
            for (int c = 0; rca == 0 && chosen >= 0 && c < ra.n; c++) fastest &= ra.c[c].hot <= ra.c[chosen].hot;
            ok(all && fastest && chosen >= 0 && slow >= 0 && slow != chosen && ra.c[slow].hot < ra.c[chosen].hot,
               "%s: all counted close: each of %d timed in cache, the fastest there (%s, %.2f GB/s) chosen, "
               "the slower one slower there (%.2f GB/s)", b2__wt_name(t), rca == 0 ? ra.n : 0,
               rca == 0 ? ra.chosen : "-", chosen >= 0 ? ra.c[chosen].hot : 0.0, slow >= 0 ? ra.c[slow].hot : 0.0);
            b2__wkernels_test_candidate(NULL);
        }
        /* b2__wkernels_use: the dispatching entry point runs what it names */
        float y1[5 * 300], y2[5 * 300];
        int same = 1, used = 0;
        for (int c = 0; c < nn; c++) {
            if (b2__wkernels_use(t, names[c]) != 0) { same = 0; continue; }
            used += !strcmp(b2__wkernels_name_for(t), names[c]);
            b2__wmatmul_rows(y1, m, p[0].x, p[0].ldx, p[0].w, t, n, m, k);
            b2__wmatmul_rows_impl(names[c], y2, m, p[0].x, p[0].ldx, p[0].w, t, n, m, k);
            same &= !memcmp(y1, y2, sizeof y1);
        }
        b2__wkernels_use(t, NULL);
        ok(same && used == nn && !strcmp(b2__wkernels_name_for(t), b2__wkernels_name()),
           "%s: b2__wkernels_use makes b2__wmatmul_rows run each of the %d (same bits), NULL the default again",
           b2__wt_name(t), nn);
        for (int i = 0; i < 2; i++) {
            problem_free(&p[i]);
        }
    }
    ok(b2__wkernels_use(B2_WT_Q8_0, "no-such-kernel") == -1 && b2__wkernels_use((b2_wtype)5, "portable") == -1 &&
       !strcmp(b2__wkernels_name_for(B2_WT_Q8_0), b2__wkernels_name()),
       "b2__wkernels_use refuses an unknown implementation or type and changes nothing");
    b2_wtune r;
    const b2_wsample bad = {NULL, 4, 32};
    ok(b2__wkernels_tune(B2_WT_Q8_0, &bad, 1, &r) == -1, "b2__wkernels_tune refuses a sample without weights");
}

int main(void)
{
    test_round16(B2_WT_F16);
    test_round16(B2_WT_BF16);
    test_q8_weights();
    test_q8_act();
    test_q4_weights();
    test_products();
    test_quad_vs_portable(B2_WT_Q4_0);
    test_quad_vs_portable(B2_WT_Q8_0);
    test_special();
    test_multi();
    test_decode_tasks();
    test_threads();
    test_prefetch();
    test_prefetch_streams();
    test_widen();
    test_tune_pick();
    test_tune();
    return tap_done();
}
