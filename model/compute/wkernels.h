/*
 * wkernels.h - internal: products with weights stored in 16-bit or 8-bit
 * types, activations always f32.
 *
 * A weight matrix W (m, k) is m consecutive rows, each
 * b2__wt_row_bytes(t, k) bytes, as a GGUF file stores it (the type numbers
 * are GGML's, so a GGUF tensor's type field maps directly).  q8_0 is GGML's
 * block format: each run of 32 values is one IEEE half scale d followed by
 * 32 int8 q, value = d * q.  q4_0 is GGML's 4-bit block: each run of 32
 * values is one IEEE half scale d followed by 16 bytes, byte j holding
 * value j in its low nibble and value j + 16 in its high nibble, value =
 * d * (nibble - 8).
 *
 * The products exist in a portable C version (always built and tested)
 * and SIMD versions chosen at run time, per weight type: by default the
 * best this CPU runs, or the one the autotuner measured fastest on the
 * model's own weights (b2__wkernels_tune, b2__wkernels_use); the
 * environment variable BLIP2_KERNELS (portable, avx2, avx512,
 * avx512-vnni) forces one, as for the f32 kernels (kernels.h).
 */
#ifndef BLIP2_WKERNELS_H
#define BLIP2_WKERNELS_H
#include <stddef.h>
#include <stdint.h>

typedef enum b2_wtype {
    B2_WT_F32 = 0,
    B2_WT_F16 = 1,
    B2_WT_Q4_0 = 2,
    B2_WT_Q8_0 = 8,
    B2_WT_BF16 = 30,
} b2_wtype;

/* Values per q8_0 block, and bytes per block (f16 scale + 32 int8). */
#define B2_Q8_0_BLOCK 32
#define B2_Q8_0_BYTES 34
/* Values per q4_0 block, and bytes per block (f16 scale + 16 bytes of
 * nibbles). */
#define B2_Q4_0_BLOCK 32
#define B2_Q4_0_BYTES 18

/* 1 if t is a type this build handles and rows of k values are valid for
 * it (q8_0 and q4_0 need k % 32 == 0), else 0. */
int b2__wt_ok(b2_wtype t, int k);

/* Bytes of one row of k values of type t (b2__wt_ok(t, k) must hold). */
size_t b2__wt_row_bytes(b2_wtype t, int k);

/* "f32", "f16", "bf16", "q8_0", "q4_0", or NULL for an unknown type. */
const char *b2__wt_name(b2_wtype t);

/* y (n, ldy)[:, :m] = x (n, ldx)[:, :k] @ W^T for W (m, k) of type t.
 * Each row of y has the same bits whatever n is (the decoder's batch
 * invariance, see b2__matmul_rows).  Chunks of W's rows are spread over
 * the compute pool.  For few rows n (decode, small batches).
 *
 * Numerics: f32, f16 and bf16 weights are widened exactly and summed in
 * f32 (8 or 16 lanes, each in k order, then a fixed tree; which values a
 * lane takes depends on the implementation and type).  q8_0 quantises the
 * activations too, as GGML's q8_0 x q8_0 product does: each block of 32
 * values of an x row becomes d_x * q_x (b2__wquantize_act_q8, f32 scale),
 * the block's dot product sum q_w q_x is exact in integers, and
 * acc += (d_w d_x) * sum in f32.  The extra error is at most
 * sum_blocks (d_x / 2) * sum |w| (half a step of x per value); a NaN or
 * infinity in a block of x makes that row's outputs NaN.  q4_0 is the
 * same with 4-bit weights (GGML's q4_0 x q8_0 product): the weight values
 * d_w * (nibble - 8) are taken exactly, sum (nibble - 8) q_x is exact in
 * integers, acc += (d_w d_x) * sum in f32, with the same bound (the
 * weights' own rounding is the file's, not the product's). */
void b2__wmatmul_rows(float *y, int ldy, const float *x, int ldx, const void *w, b2_wtype t,
                      int n, int m, int k);

/* Several products of the same x in one pass over the pool: y[i] (n,
 * ldy[i]) [:, :m[i]] = x (n, ldx) [:, :k] @ W[i] (m[i], k)^T for i <
 * count, every W[i] of type t.  Each y[i] gets exactly the bits
 * b2__wmatmul_rows gives it alone (the same kernel, the same rows per
 * task); x is quantised once (q8_0, q4_0), and the pool's threads wait
 * for each other once, not once per weight (a layer's q, k and v).  A
 * weight with m[i] <= 0 is skipped (its y untouched), as alone. */
#define B2_WMULTI_MAX 4
void b2__wmatmul_rows_multi(float *const *y, const int *ldy, const float *x, int ldx, const void *const *w,
                            b2_wtype t, int n, const int *m, int k, int count);

/* Names W (m rows of k, type t) as the next product of a decode step of n
 * rows: while they wait, the pool's threads read the first bytes of the
 * tasks they will take of it (b2__pool_prefetch_next), at most
 * BLIP2_PREFETCH_NEXT bytes each (default 1 MiB, 0 = off).  w NULL, or
 * n above the decode rows: no hint.  Changes no result. */
void b2__wprefetch_next(const void *w, b2_wtype t, int n, int m, int k);

/* b2__wmatmul_rows with the named implementation ("portable", "avx2",
 * "avx512", "avx512-vnni") instead of the one chosen from the CPU, for tests and
 * benchmarks.  Returns 0, or -1 (y untouched) if this build or CPU lacks
 * it. */
int b2__wmatmul_rows_impl(const char *impl, float *y, int ldy, const float *x, int ldx,
                          const void *w, b2_wtype t, int n, int m, int k);

/* The activation side of the q8_0 product: x (k, k % 32 == 0) as blocks
 * of 32, q (k) int8 and d (k / 32) f32 with x[j] ~ d[j / 32] * q[j]:
 * d = max|x| / 127 over the block, q = x * (127 / max|x|) rounded to
 * nearest even (|q| <= 127); an all-zero block has d = 0, q = 0; a block
 * holding NaN or infinity has d = NaN, q = 0. */
void b2__wquantize_act_q8(int8_t *q, float *d, const float *x, int k);

/* dst (nrows, k) = rows [row0, row0 + nrows) of W (m, k) of type t, as f32
 * (exact for f16 and bf16; d * q for q8_0, d * (nibble - 8) for q4_0,
 * one rounding per value, the same bits in every implementation). */
void b2__wrows_to_f32(float *dst, const void *w, b2_wtype t, int row0, int nrows, int k);

/* dst = one row of k f32 values stored as type t: f16 and bf16 round to
 * nearest even (NaN stays NaN, overflow goes to infinity); q8_0 as GGML
 * quantises (per block d = max|x| / 127, q = round(x / d)); q4_0 as GGML
 * quantises (per block max = the value of largest magnitude, the first
 * of equals; d = max / -8, id = 1 / d (0 if d is 0), nibble =
 * min(15, trunc(x * id + 8.5)); NaN gives nibble 0).  The scale is
 * rounded to f16 after id is taken from the f32 d, as GGML does. */
void b2__wquantize_row(void *dst, const float *src, b2_wtype t, int k);

/* How far ahead of its reads (bytes) each SIMD tile prefetches its weight
 * rows, each of a tile's R rows 1/R of it ahead in its own stream (which
 * goes on in the same row of the next tile): 8192 unless the environment
 * variable BLIP2_PREFETCH (0 to 1048576, 0 = no software prefetch) says
 * otherwise.  bytes >= 0 sets it (for benchmarks; not while products
 * run), bytes < 0 only asks.  Returns the distance in use before the
 * call.  The results do not depend on it. */
int b2__wkernels_set_prefetch(int bytes);

/* The bytes of the next product each waiting thread reads
 * (b2__wprefetch_next; default 1 MiB, or BLIP2_PREFETCH_NEXT): bytes >= 0
 * sets it (for benchmarks; from the next hint on), bytes < 0 only asks.
 * Returns the value in use before the call. */
long b2__wkernels_set_prefetch_next(long bytes);

/* The default implementation of the products ("portable", "avx2",
 * "avx512", "avx512-vnni"): the one BLIP2_KERNELS names if the CPU runs
 * it, else the best this CPU runs.  Used for every weight type that
 * b2__wkernels_use has not set. */
const char *b2__wkernels_name(void);

/* The implementation the products with weights of type t run. */
const char *b2__wkernels_name_for(b2_wtype t);

/* The implementation BLIP2_KERNELS names if this CPU runs it, else NULL. */
const char *b2__wkernels_forced(void);

/* Makes the products of type t run the named implementation (NULL: back
 * to the default), for every caller in the process; not while products
 * run.  Returns 0, or -1 (nothing changed) for a type the products do not
 * take or an implementation this build or CPU lacks.  "avx512" is the
 * best AVX-512 implementation this CPU runs. */
int b2__wkernels_use(b2_wtype t, const char *impl);

/* At most B2_WTUNE_MAX candidates per type. */
#define B2_WTUNE_MAX 8

/* The implementations this CPU runs for type t, as the autotuner sees
 * them: of two with the same code for t only the plainer is listed (the
 * "avx512" q8_0 product without VNNI is the AVX2 one: "avx2").  Writes up
 * to max names (static strings), returns how many there are. */
int b2__wkernels_candidates(b2_wtype t, const char **names, int max);

/* One weight matrix W (m, k) of the type being tuned, e.g. a layer's
 * fc1, used in place. */
typedef struct b2_wsample {
    const void *w;
    int m, k;
} b2_wsample;

/* What b2__wkernels_tune found. */
typedef struct b2_wtune {
    const char *chosen;  /* the fastest candidate within the bound (static) */
    int n;               /* candidates */
    struct {
        const char *name;
        double err;      /* largest |y - y_portable| / bound on the check rows */
        int refused;     /* err > 1: not timed, never chosen */
        double gbs;      /* median weight read rate of its timed products, GB/s */
        double score;    /* median of its products' rates over their groups' geometric means */
        double hot;      /* GB/s with its weights in cache, one thread; measured only for the
                          * candidates within 10 % of the best score at the end, else 0 */
    } c[B2_WTUNE_MAX];
    double mbytes;       /* weights each candidate read, timed, MB */
    int phases;          /* measurement phases: 1, or up to 3 while the best two were within 5 % */
} b2_wtune;

/* The decode kernel choice by measurement, for type t on the samples
 * (matrices of type t; the first one's rows are also the check rows).
 * Each candidate (b2__wkernels_candidates) is first checked against the
 * portable product on the first 128 rows of s[0] with 3 activation rows
 * (fixed pseudo-random values in [-1, 1)): for every output,
 * |y - y_portable| <= 2 gamma(k/8 + 8) sum_j |w_j x_j| (gamma(n) = n u /
 * (1 - n u), u = 2^-24; for q8_0 x as quantised), and NaN where the
 * portable one has NaN; a candidate outside that is refused.  The others
 * are timed as a decode step (one activation row, over the compute
 * pool), one product per sample, the samples round robin (so the weights
 * come from memory when the samples are larger than the caches), the
 * pages touched first: in groups of one product per candidate, in an
 * order rotated by one each group, until each has read 240 MiB (after
 * two groups not counted), and as much again (twice at most) while the
 * best two median scores are within 5 %.  A product's score is its rate
 * over its group's geometric mean; the highest median score wins, unless
 * others are within 10 % of it after the last phase: then of those
 * the one fastest with its weights in cache (the fastest of 48 products
 * of 192 KiB of s[0]'s rows on the calling thread) wins.  Does not
 * change the choice in use (b2__wkernels_use does).  Takes some
 * milliseconds per candidate.
 * Returns 0 (res->chosen set), or -1: bad samples, out of memory, or
 * every candidate refused. */
int b2__wkernels_tune(b2_wtype t, const b2_wsample *s, int ns, b2_wtune *res);

/* What the autotuner's choice depends on besides the weight type, for
 * its cache: the CPU's brand string and the implementations this build
 * runs on it, e.g. "AMD EPYC; avx512-vnni avx512 avx2 portable" (no tab
 * or newline).  Writes at most size bytes (NUL included), returns the
 * length it needs, as snprintf. */
size_t b2__wkernels_cpu_key(char *buf, size_t size);

/* One IEEE half / bfloat16 value widened to f32 (exact; wtype.c). */
float b2__f16_to_f32(uint16_t h);
float b2__bf16_to_f32(uint16_t h);

#endif
