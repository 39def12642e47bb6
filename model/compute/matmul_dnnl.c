/*
 * matmul_dnnl.c - the many-row products on oneDNN (matmul_dnnl.h).
 *
 *   b2__dnnl_mm(shape, types)  -> look up the cache (a list under a mutex)
 *     miss: memory descriptors with W as the (k, m) view of the stored
 *           (m, k) rows -> matmul primitive descriptor -> refuse "ref" and
 *           emulated bf16 -> primitive (user-managed scratchpad) -> cache
 *   b2__dnnl_mm_run(p, y, x, W, b)
 *     bf16: x rounded to bf16 into this thread's buffer (over the pool
 *        when it is large)
 *     f32: memory objects around the caller's pointers -> execute on this
 *        thread's stream with its scratchpad buffer
 *     bf16/f16/q8_0/q4_0 weights: one tile of rows per pool task; each
 *     thread converts its tile to bf16 straight into the blocked layout
 *     oneDNN picked (else into rows), runs a one-thread primitive on it
 *     (its own stream and scratchpad) and copies the tile's columns into y
 *   b2__dnnl_mm_run_q(p, y, x, qW, b)  (int8)
 *     x (n, k) -> u8 (n, k) + a scale and zero point per row
 *     -> u8 x s8 -> s32 into y's own storage
 *     -> y = (acc - zp[r] * sum[c]) * xs[r] * ws[c] + b[c], in place
 * Nothing is copied or reordered at load for f32 and bf16: W stays in the
 * shared mapping (the tiles are per-thread buffers of about 640 KiB);
 * int8 uses the s8 copy the loader made (b2__quantize_s8).
 * The primitives live as long as the process (a handful of shapes per
 * model).
 */
#include "matmul_dnnl.h"
#include "pool.h"

#include <dnnl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

struct b2_dnnl_mm {
    int n, m, k, ldx, ldy, bias;
    b2_wtype wt;
    b2_prec prec;
    dnnl_primitive_t prim;        /* NULL: refused (kept so it is not tried again) */
    dnnl_memory_desc_t src, wei, dst, bmd;
    size_t scratch_bytes;
    /* bf16 / f16 / q8_0 / q4_0 weights (bf16 math): W converted to bf16 `tile`
     * rows at a time, a tile per pool task (prim: a whole tile; tail: the
     * last m % tile rows; both one-thread primitives) */
    int tile;
    int nb, nb_t; /* > 0: the tile (tail) is written in oneDNN's blocked layout of nb rows a block */
    dnnl_primitive_t tail;
    dnnl_memory_desc_t wei_t, dst_t, bmd_t;
    size_t scratch_tail;
    char impl[48];
    _Atomic int choice;
    double ms_dnnl, ms_other;
    struct b2_dnnl_mm *next;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static b2_dnnl_mm *cache;
static dnnl_engine_t engine;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

const char *b2__prec_name(b2_prec p) { return p == B2_PREC_BF16 ? "bf16" : p == B2_PREC_INT8 ? "int8" : "f32"; }

static void engine_init(void)
{
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) engine = NULL;
}

#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
static __thread int threads_set; /* this thread called omp_set_num_threads */
#endif

/* oneDNN's threads for this thread's next calls: as many as the pool. */
static void set_threads(void)
{
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
    if (!threads_set) {
        omp_set_num_threads(b2__pool_size());
        threads_set = 1;
    }
#endif
}

/* on: the primitives this thread makes next run on one thread (a pool
 * task's); off: as many as the pool again.  With a threading runtime
 * other than OpenMP or none, oneDNN keeps its own threads. */
static void one_thread(int on)
{
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP
    omp_set_num_threads(on ? 1 : b2__pool_size());
    threads_set = 1;
#else
    (void)on;
#endif
}

static int native_bf16_isa(void)
{
    return (dnnl_get_effective_cpu_isa() & dnnl_cpu_isa_avx512_core_bf16 & ~dnnl_cpu_isa_avx512_core_vnni) != 0;
}

/* VNNI (vpdpbusd): AVX512-VNNI, or AVX-VNNI on AVX2 */
static int native_int8_isa(void)
{
    const unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    return (isa & dnnl_cpu_isa_avx512_core_vnni) == dnnl_cpu_isa_avx512_core_vnni ||
           (isa & dnnl_cpu_isa_avx2_vnni) == dnnl_cpu_isa_avx2_vnni;
}

/* oneDNN adds the bias itself (f32 and bf16); int8 adds it with the scales */
static int dnnl_bias(const b2_dnnl_mm *p) { return p->bias && p->prec != B2_PREC_INT8; }

/* The types of x, W and y in oneDNN */
static dnnl_data_type_t src_dt(const b2_dnnl_mm *p)
{
    return p->prec == B2_PREC_BF16 ? dnnl_bf16 : p->prec == B2_PREC_INT8 ? dnnl_u8 : dnnl_f32;
}
static dnnl_data_type_t wei_dt(const b2_dnnl_mm *p)
{
    return p->prec == B2_PREC_BF16 ? dnnl_bf16 : p->prec == B2_PREC_INT8 ? dnnl_s8 : dnnl_f32;
}

/* Weights that bf16 math takes tile by tile: every reduced type (bf16
 * copied into the tiles, f16/q8_0/q4_0 widened); f32 is used in place */
static int tiled(b2_wtype wt) { return wt != B2_WT_F32; }

/* nb if md is oneDNN's blocked bf16 layout for (k, cols) weights that
 * b2__wrows_to_bf16_blocked writes (BA16a<nb>b2a, nothing padded), else 0 */
static int blocked_nb(const dnnl_memory_desc_t *md, int k, int cols)
{
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    if (md->format_kind != dnnl_blocked || md->ndims != 2 || md->data_type != dnnl_bf16 || md->dims[0] != k ||
        md->dims[1] != cols || md->padded_dims[0] != k || md->padded_dims[1] != cols || md->offset0 != 0 ||
        md->extra.flags != 0 || b->inner_nblks != 3 || b->inner_idxs[0] != 0 || b->inner_idxs[1] != 1 ||
        b->inner_idxs[2] != 0 || b->inner_blks[0] != 16 || b->inner_blks[2] != 2)
        return 0;
    const dnnl_dim_t nb = b->inner_blks[1];
    if ((nb != 16 && nb != 32 && nb != 64) || cols % nb || k % 32 || b->strides[0] != 32 * nb ||
        b->strides[1] != (dnnl_dim_t)k * nb)
        return 0;
    return (int)nb;
}

/* One primitive for y (n, ldy)[:, :cols] = x @ W^T over `cols` weight
 * rows; *prim NULL if refused.  impl (48 bytes) gets its name.  nb
 * non-NULL: W is a converted tile, in oneDNN's own blocked layout if it
 * picks one b2__wrows_to_bf16_blocked writes (*nb its block), else in
 * rows (*nb 0). */
static void create_one(const b2_dnnl_mm *p, int cols, dnnl_primitive_t *prim, dnnl_memory_desc_t *wei,
                       dnnl_memory_desc_t *dst, dnnl_memory_desc_t *bmd, size_t *scratch, char *impl_out, int *nb)
{
    const dnnl_data_type_t dt = src_dt(p), ddt = p->prec == B2_PREC_INT8 ? dnnl_s32 : dnnl_f32;
    /* bf16, int8: x is converted into a packed (n, k) copy */
    const dnnl_dims_t sd = {p->n, p->k}, ss = {dt != dnnl_f32 ? p->k : p->ldx, 1};
    const dnnl_dims_t wd = {p->k, cols}, ws = {1, p->k};
    /* a tile writes a dense (n, cols) buffer: with y's row stride oneDNN
     * 2.6 leaves brgemm for its slower gemm:jit (3-18x at 44 rows) */
    const dnnl_dims_t dd = {p->n, cols}, ds = {cols == p->m ? p->ldy : cols, 1};
    const dnnl_dims_t bd = {1, cols}, bs = {cols, 1};
    dnnl_memory_desc_t src;
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const char *impl = NULL;
    *prim = NULL;
    snprintf(impl_out, 48, "unavailable");
    if (!engine) return;
    if (nb) *nb = 0;
    /* a converted tile runs on one pool thread: a one-thread primitive
     * (oneDNN fixes its thread count when the primitive is made) */
    if (tiled(p->wt)) one_thread(1);
    if (dnnl_memory_desc_init_by_strides(&src, 2, sd, dt, ss) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(dst, 2, dd, ddt, ds) != dnnl_success ||
        dnnl_memory_desc_init_by_strides(bmd, 2, bd, dnnl_f32, bs) != dnnl_success ||
        dnnl_primitive_attr_create(&attr) != dnnl_success ||
        dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) != dnnl_success)
        goto done;
    /* a converted tile: first with the weights' layout left to oneDNN */
    for (int blocked = nb != NULL; blocked >= 0; blocked--) {
        if ((blocked ? dnnl_memory_desc_init_by_tag(wei, 2, wd, wei_dt(p), dnnl_format_tag_any)
                     : dnnl_memory_desc_init_by_strides(wei, 2, wd, wei_dt(p), ws)) != dnnl_success ||
            dnnl_matmul_desc_init(&md, &src, wei, dnnl_bias(p) ? bmd : NULL, dst) != dnnl_success)
            goto done;
        if (dnnl_primitive_desc_create(&pd, &md, attr, engine, NULL) != dnnl_success) {
            pd = NULL;
            continue;
        }
        if (!blocked) break;
        const dnnl_memory_desc_t *chosen = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        if (chosen && (*nb = blocked_nb(chosen, p->k, cols)) > 0) {
            *wei = *chosen;
            break;
        }
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
    }
    if (!pd) {
        snprintf(impl_out, 48, "unimplemented");
        goto done;
    }
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl) goto done;
    snprintf(impl_out, 48, "%s", impl);
    /* the reference C implementation, bf16 without native bf16 (oneDNN
     * then emulates it with f32 instructions at a fraction of sgemm's
     * rate), or int8 without VNNI (pairs of products saturating in 16
     * bits): not used */
    if (!strncmp(impl, "ref", 3) || strstr(impl, ":ref") || (dt == dnnl_bf16 && !native_bf16_isa()) ||
        (dt == dnnl_u8 && !native_int8_isa()))
        goto done;
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    *scratch = sp ? dnnl_memory_desc_get_size(sp) : 0;
    if (dnnl_primitive_create(prim, pd) != dnnl_success) *prim = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (tiled(p->wt)) one_thread(0);
}

/* Weight rows per converted tile: about TILE_BYTES of bf16, a multiple
 * of 64 (every block oneDNN picks), at least 64.  Each pool thread
 * widens a tile and multiplies it at once, so the tile is written and
 * read in that core's own cache: 128 rows at k = 2560, 64 at 10240.
 * Against tiles of 5 MiB shared by both threads (a multi-thread
 * primitive), 33 and 44-row products at the 2.7b shapes ran 15-45 %
 * faster with the same bits, and bf16 weights (which oneDNN used to
 * reorder itself, multi-threaded) 5-20 % (bench/RESULTS.md, 2026-12-06
 * 15:28). */
#define TILE_BYTES ((size_t)640 << 10)

static void create(b2_dnnl_mm *p)
{
    if (tiled(p->wt)) {
        const size_t t = TILE_BYTES / (2 * (size_t)p->k) / 64 * 64;
        p->tile = t < 64 ? 64 : (int)t;
        if (p->tile > p->m) p->tile = p->m;
    } else {
        p->tile = p->m;
    }
    const int conv = p->prec == B2_PREC_BF16 && tiled(p->wt) && b2__cpu_bf16();
    create_one(p, p->tile, &p->prim, &p->wei, &p->dst, &p->bmd, &p->scratch_bytes, p->impl, conv ? &p->nb : NULL);
    const int rest = p->m % p->tile;
    if (p->prim && rest) {
        char impl[48];
        create_one(p, rest, &p->tail, &p->wei_t, &p->dst_t, &p->bmd_t, &p->scratch_tail, impl, conv ? &p->nb_t : NULL);
        if (!p->tail) {
            dnnl_primitive_destroy(p->prim);
            p->prim = NULL;
            snprintf(p->impl, sizeof p->impl, "%.40s (tail)", impl);
        }
    }
}

b2_dnnl_mm *b2__dnnl_mm(int n, int m, int k, int ldx, int ldy, b2_wtype wt, b2_prec prec, int bias)
{
    if (n <= 0 || m <= 0 || k <= 0) return NULL;
    if (prec == B2_PREC_INT8 && k > 65536) return NULL; /* 255 * 127 * k must fit in the s32 sums */
    if (prec == B2_PREC_INT8) wt = B2_WT_F32; /* its weights are always the s8 copy */
    else if (prec == B2_PREC_F32 ? wt != B2_WT_F32 : prec != B2_PREC_BF16 || wt == B2_WT_F32) return NULL;
    if (wt == B2_WT_Q8_0 && k % B2_Q8_0_BLOCK) return NULL;
    if (wt == B2_WT_Q4_0 && k % B2_Q4_0_BLOCK) return NULL;
    pthread_once(&engine_once, engine_init);
    set_threads();
    pthread_mutex_lock(&mu);
    b2_dnnl_mm *p = cache;
    for (; p; p = p->next)
        if (p->n == n && p->m == m && p->k == k && p->ldx == ldx && p->ldy == ldy && p->wt == wt &&
            p->prec == prec && p->bias == !!bias)
            break;
    if (!p && (p = calloc(1, sizeof *p))) {
        *p = (b2_dnnl_mm){.n = n, .m = m, .k = k, .ldx = ldx, .ldy = ldy, .bias = !!bias, .wt = wt, .prec = prec};
        create(p);
        p->next = cache;
        cache = p;
    }
    pthread_mutex_unlock(&mu);
    return p && p->prim ? p : NULL;
}

int b2__dnnl_mm_choice(b2_dnnl_mm *p)
{
    int c = p->choice;
    if (c) return c;
    /* undecided: the choice made for the same weights with another row
     * count, so that a row's math does not depend on the rows beside it */
    pthread_mutex_lock(&mu);
    for (const b2_dnnl_mm *q = cache; q && !c; q = q->next)
        if (q != p && q->choice && q->m == p->m && q->k == p->k && q->wt == p->wt && q->prec == p->prec &&
            q->bias == p->bias) {
            c = q->choice;
            p->ms_dnnl = q->ms_dnnl;
            p->ms_other = q->ms_other;
            p->choice = c;
        }
    pthread_mutex_unlock(&mu);
    return c;
}

void b2__dnnl_mm_choose(b2_dnnl_mm *p, int choice, double ms_dnnl, double ms_other)
{
    pthread_mutex_lock(&mu);
    p->ms_dnnl = ms_dnnl;
    p->ms_other = ms_other;
    p->choice = choice;
    pthread_mutex_unlock(&mu);
}

const char *b2__dnnl_mm_impl(const b2_dnnl_mm *p) { return p->impl; }

/* ---- per-thread buffers: x in bf16, oneDNN's scratchpad, the stream ---- */

typedef struct tbuf {
    void *p;
    size_t cap;
} tbuf;

static pthread_key_t tkey;
static pthread_once_t tkey_once = PTHREAD_ONCE_INIT;

typedef struct tstate {
    tbuf xb, scratch, wtile, wconv, ytile, xq; /* xq: (n) scales, (n) zero points */
    dnnl_stream_t stream;
} tstate;

static void tstate_free(void *v)
{
    tstate *t = v;
    free(t->xb.p);
    free(t->scratch.p);
    free(t->wtile.p);
    free(t->wconv.p);
    free(t->ytile.p);
    free(t->xq.p);
    if (t->stream) dnnl_stream_destroy(t->stream);
    free(t);
}

static void tkey_init(void) { (void)pthread_key_create(&tkey, tstate_free); }

static tstate *tstate_get(void)
{
    pthread_once(&tkey_once, tkey_init);
    tstate *t = pthread_getspecific(tkey);
    if (t) return t;
    if (!(t = calloc(1, sizeof *t))) return NULL;
    if (dnnl_stream_create(&t->stream, engine, dnnl_stream_default_flags) != dnnl_success ||
        pthread_setspecific(tkey, t) != 0) {
        if (t->stream) dnnl_stream_destroy(t->stream);
        free(t);
        return NULL;
    }
    return t;
}

static void *tbuf_get(tbuf *b, size_t bytes)
{
    if (bytes <= b->cap) return b->p;
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p) return NULL;
    free(b->p);
    b->p = p;
    b->cap = bytes;
    return p;
}

/* ---- f32 -> bf16, round to nearest even (NaN stays NaN) ---- */

static void to_bf16_c(uint16_t *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        y[i] = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u)
                                                : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    }
}

#if defined(__x86_64__)
/* vcvtneps2bf16 rounds to nearest even as the C above does (NaN quietened) */
__attribute__((target("avx512f,avx512bf16")))
static void to_bf16_avx512(uint16_t *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
        _mm256_storeu_si256((__m256i *)(y + i), (__m256i)v);
    }
    to_bf16_c(y + i, x + i, n - i);
}
#endif

void b2__f32_to_bf16(uint16_t *y, const float *x, size_t n)
{
#if defined(__x86_64__)
    if (b2__cpu_bf16()) {
        to_bf16_avx512(y, x, n);
        return;
    }
#endif
    to_bf16_c(y, x, n);
}

static void to_bf16_rows(uint16_t *y, const float *x, int n, int k, int ldx)
{
    if (ldx == k) b2__f32_to_bf16(y, x, (size_t)n * k);
    else
        for (int i = 0; i < n; i++) b2__f32_to_bf16(y + (size_t)i * k, x + (size_t)i * ldx, (size_t)k);
}

/* x rounded to bf16 over the pool, X_ROWS rows a task, when it has at
 * least X_MIN values (the vision encoder's 257 rows: 3 % of its time on
 * one thread) */
#define X_ROWS 16
#define X_MIN 65536

typedef struct x_job {
    uint16_t *y;
    const float *x;
    int n, k, ldx;
} x_job;

static void x_task(void *ctx, int task, int slot)
{
    (void)slot;
    const x_job *j = ctx;
    const int r0 = task * X_ROWS, nr = j->n - r0 < X_ROWS ? j->n - r0 : X_ROWS;
    to_bf16_rows(j->y + (size_t)r0 * j->k, j->x + (size_t)r0 * j->ldx, nr, j->k, j->ldx);
}

static void x_to_bf16(uint16_t *y, const float *x, int n, int k, int ldx)
{
    x_job j = {y, x, n, k, ldx};
    if ((size_t)n * k < X_MIN || n <= X_ROWS) to_bf16_rows(y, x, n, k, ldx);
    else b2__parallel_for((n + X_ROWS - 1) / X_ROWS, x_task, &j);
}

/* One execution: y (n, ldy)[:, :cols] = xs @ W^T (+ b) on `prim`. */
static int exec_one(tstate *t, dnnl_primitive_t prim, const b2_dnnl_mm *p, const dnnl_memory_desc_t *wei,
                    const dnnl_memory_desc_t *dst, const dnnl_memory_desc_t *bmd, size_t scratch_bytes,
                    const void *xs, const void *w, float *y, const float *b)
{
    const dnnl_data_type_t dt = src_dt(p);
    const dnnl_dims_t sd = {p->n, p->k}, ss = {dt != dnnl_f32 ? p->k : p->ldx, 1};
    dnnl_memory_desc_t src;
    void *sp = scratch_bytes ? tbuf_get(&t->scratch, scratch_bytes) : NULL;
    if (scratch_bytes && !sp) return -1;
    dnnl_memory_t ms = NULL, mw = NULL, md = NULL, mb = NULL, msp = NULL;
    int rc = -1;
    if (dnnl_memory_desc_init_by_strides(&src, 2, sd, dt, ss) != dnnl_success) return -1;
    if (dnnl_memory_create(&ms, &src, engine, (void *)xs) != dnnl_success) { ms = NULL; goto out; }
    if (dnnl_memory_create(&mw, wei, engine, (void *)w) != dnnl_success) { mw = NULL; goto out; }
    if (dnnl_memory_create(&md, dst, engine, y) != dnnl_success) { md = NULL; goto out; }
    if (dnnl_bias(p) && dnnl_memory_create(&mb, bmd, engine, (void *)b) != dnnl_success) { mb = NULL; goto out; }
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}};
    int na = 3;
    if (dnnl_bias(p)) args[na++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, mb};
    if (sp) {
        dnnl_memory_desc_t smd;
        const dnnl_dims_t sdims = {(dnnl_dim_t)scratch_bytes};
        if (dnnl_memory_desc_init_by_tag(&smd, 1, sdims, dnnl_u8, dnnl_a) != dnnl_success ||
            dnnl_memory_create(&msp, &smd, engine, sp) != dnnl_success) { msp = NULL; goto out; }
        args[na++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, msp};
    }
    if (dnnl_primitive_execute(prim, t->stream, na, args) == dnnl_success &&
        dnnl_stream_wait(t->stream) == dnnl_success)
        rc = 0;
out:
    if (ms) dnnl_memory_destroy(ms);
    if (mw) dnnl_memory_destroy(mw);
    if (md) dnnl_memory_destroy(md);
    if (mb) dnnl_memory_destroy(mb);
    if (msp) dnnl_memory_destroy(msp);
    return rc;
}

/* Rows widened at a time through an f32 buffer where the CPU cannot
 * widen straight to bf16 */
#define CONV_ROWS 8

#if defined(__x86_64__)
/* q8_0, q4_0 and f16 rows straight to bf16, 32 values a step: the same
 * bits as widening to f32 (b2__wrows_to_f32: d * q, one rounding) and
 * rounding that with vcvtne2ps2bf16, without the f32 buffer between.
 * n values (a multiple of 32). */
#define DIRECT_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16,f16c")))
/* One group of 32 values as 32 bf16 in memory order: a q8_0 or q4_0
 * block (q4_0: byte j holds value j in its low nibble, j + 16 in its
 * high one), or 32 f16 values (64 bytes). */
DIRECT_TARGET static inline __m512i q8_block_bf16(const unsigned char *w)
{
    uint16_t h;
    memcpy(&h, w, 2);
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(h));
    const __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 2)));
    const __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 18)));
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(d, _mm512_cvtepi32_ps(q1)), _mm512_mul_ps(d, _mm512_cvtepi32_ps(q0)));
}

DIRECT_TARGET static inline __m512i q4_block_bf16(const unsigned char *w)
{
    const __m512i eight = _mm512_set1_epi32(8), fifteen = _mm512_set1_epi32(15);
    uint16_t h;
    memcpy(&h, w, 2);
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(h));
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + 2)));
    const __m512i q0 = _mm512_sub_epi32(_mm512_and_si512(b, fifteen), eight);
    const __m512i q1 = _mm512_sub_epi32(_mm512_srli_epi32(b, 4), eight);
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(d, _mm512_cvtepi32_ps(q1)), _mm512_mul_ps(d, _mm512_cvtepi32_ps(q0)));
}

DIRECT_TARGET static inline __m512i f16_block_bf16(const unsigned char *w)
{
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 32))),
                                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)w)));
}

/* n values (a multiple of 32), one group after another */
#define B2_GROUPS_TO_BF16(name, block, bytes)                                                   \
    DIRECT_TARGET static void name(uint16_t *y, const unsigned char *w, size_t n)               \
    {                                                                                           \
        for (size_t i = 0; i < n; i += 32, w += (bytes)) _mm512_storeu_si512(y + i, block(w)); \
    }
B2_GROUPS_TO_BF16(q8_to_bf16, q8_block_bf16, B2_Q8_0_BYTES)
B2_GROUPS_TO_BF16(q4_to_bf16, q4_block_bf16, B2_Q4_0_BYTES)
B2_GROUPS_TO_BF16(f16_to_bf16, f16_block_bf16, 64)
#undef B2_GROUPS_TO_BF16

/* r[i] (16 dwords each) -> r[j] = the j-th dword of every r[i] */
DIRECT_TARGET static inline __attribute__((always_inline)) void transpose16(__m512i r[16])
{
    __m512i t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) { /* t[2a], t[2a+1]: dwords of inputs 2a, 2a+1 interleaved */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) { /* then the 64-bit pairs of four inputs */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 16; i += 8) /* then the 128-bit lanes of eight, and of all sixteen */
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) {
            t[i + b] = _mm512_shuffle_i32x4(r[i + b], r[i + 4 + b], 0x88);
            t[i + 4 + b] = _mm512_shuffle_i32x4(r[i + b], r[i + 4 + b], 0xdd);
        }
#pragma GCC unroll 8
    for (int b = 0; b < 8; b++) {
        r[b] = _mm512_shuffle_i32x4(t[b], t[8 + b], 0x88);
        r[8 + b] = _mm512_shuffle_i32x4(t[b], t[8 + b], 0xdd);
    }
}

/* nrows (a multiple of nb) rows of k values (k a multiple of 32) into
 * oneDNN's blocked bf16 weights (see b2__wrows_to_bf16_blocked), 16 rows
 * at a time: each row's group of 32 values is 16 pairs; the 16 rows'
 * pair j go out together as one 64-byte line.  The 16 rows are read as
 * 16 streams, each prefetched PF_AHEAD bytes ahead. */
#define PF_AHEAD 256
#define B2_TO_BLOCKED(name, block, gb)                                                                        \
    DIRECT_TARGET static void name(uint16_t *dst, const unsigned char *w, size_t rb, int nrows, int k, int nb) \
    {                                                                                                         \
        const int groups = k / 32;                                                                            \
        for (int n0 = 0; n0 < nrows; n0 += 16) {                                                              \
            const unsigned char *src = w + (size_t)n0 * rb;                                                   \
            uint16_t *out = dst + (size_t)(n0 / nb) * k * nb + (size_t)(n0 % nb) * 2;                         \
            for (int g = 0; g < groups; g++) {                                                                \
                __m512i r[16];                                                                                \
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)                                         \
                {                                                                                             \
                    const unsigned char *p = src + (size_t)i * rb + (size_t)g * (gb);                         \
                    _mm_prefetch((const char *)p + PF_AHEAD, _MM_HINT_T0);                                    \
                    r[i] = block(p);                                                                          \
                }                                                                                             \
                transpose16(r);                                                                               \
                uint16_t *o = out + (size_t)g * 32 * nb;                                                      \
                _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++)                                         \
                    _mm512_storeu_si512(o + (size_t)j * 2 * nb, r[j]);                                        \
            }                                                                                                 \
        }                                                                                                     \
    }
B2_TO_BLOCKED(q8_to_blocked, q8_block_bf16, B2_Q8_0_BYTES)
B2_TO_BLOCKED(q4_to_blocked, q4_block_bf16, B2_Q4_0_BYTES)
B2_TO_BLOCKED(f16_to_blocked, f16_block_bf16, 64)
B2_TO_BLOCKED(bf16_to_blocked, _mm512_loadu_si512, 64)
#undef B2_TO_BLOCKED
#undef DIRECT_TARGET

int b2__cpu_bf16(void)
{
    static _Atomic int v; /* 0 unread, 1 yes, 2 no */
    if (!v) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16") ? 1 : 2;
    }
    return v == 1;
}
#else
int b2__cpu_bf16(void) { return 0; }
#endif

int b2__wrows_to_bf16(uint16_t *dst, const void *w, b2_wtype wt, int row0, int nrows, int k)
{
#if defined(__x86_64__)
    const size_t n = (size_t)nrows * k;
    const unsigned char *src = (const unsigned char *)w + (size_t)row0 * b2__wt_row_bytes(wt, k);
    if (k % 32 == 0 && b2__cpu_bf16()) {
        if (wt == B2_WT_Q8_0) { q8_to_bf16(dst, src, n); return 0; }
        if (wt == B2_WT_Q4_0) { q4_to_bf16(dst, src, n); return 0; }
        if (wt == B2_WT_F16) { f16_to_bf16(dst, src, n); return 0; }
    }
#else
    (void)dst; (void)w; (void)wt; (void)row0; (void)nrows; (void)k;
#endif
    return -1;
}


int b2__wrows_to_bf16_blocked(uint16_t *dst, const void *w, b2_wtype wt, int row0, int nrows, int k, int nb)
{
    if ((nb != 16 && nb != 32 && nb != 64) || nrows % nb || k % 32 || !tiled(wt)) return -1;
#if defined(__x86_64__)
    if (!b2__cpu_bf16()) return -1;
    const size_t rb = b2__wt_row_bytes(wt, k);
    const unsigned char *src = (const unsigned char *)w + (size_t)row0 * rb;
    (wt == B2_WT_Q8_0 ? q8_to_blocked : wt == B2_WT_Q4_0 ? q4_to_blocked : wt == B2_WT_BF16 ? bf16_to_blocked : f16_to_blocked)(dst, src, rb, nrows, k, nb);
    return 0;
#else
    (void)dst; (void)w; (void)row0;
    return -1;
#endif
}

/* One converted tile per pool task: W rows [r0, r0 + rows) widened to
 * bf16 into this thread's tile buffer (blocked, or rows), multiplied on
 * this thread, its columns copied into y. */
typedef struct tile_job {
    const b2_dnnl_mm *p;
    float *y;
    const void *xs; /* x in bf16, (n, k) */
    const unsigned char *w;
    const float *b;
    _Atomic int failed;
} tile_job;

static int widen_tile(tstate *t, uint16_t *dst, const unsigned char *w, b2_wtype wt, int r0, int rows, int k, int nb)
{
    if (nb) return b2__wrows_to_bf16_blocked(dst, w, wt, r0, rows, k, nb);
    if (wt == B2_WT_BF16) {
        memcpy(dst, w + (size_t)r0 * k * 2, (size_t)rows * k * 2);
        return 0;
    }
    for (int r = 0; r < rows; r += CONV_ROWS) {
        const int nr = rows - r < CONV_ROWS ? rows - r : CONV_ROWS;
        uint16_t *y = dst + (size_t)r * k;
        if (b2__wrows_to_bf16(y, w, wt, r0 + r, nr, k) == 0) continue;
        float *f = tbuf_get(&t->wconv, sizeof(float) * CONV_ROWS * (size_t)k);
        if (!f) return -1;
        b2__wrows_to_f32(f, w, wt, r0 + r, nr, k);
        to_bf16_rows(y, f, 1, nr * k, nr * k);
    }
    return 0;
}

static void tile_task(void *ctx, int task, int slot)
{
    (void)slot;
    tile_job *j = ctx;
    const b2_dnnl_mm *p = j->p;
    const int r0 = task * p->tile, rows = p->m - r0 < p->tile ? p->m - r0 : p->tile;
    const int full = rows == p->tile, dense = rows == p->m; /* dense: y itself (create_one) */
    tstate *t = tstate_get();
    uint16_t *wb = t ? tbuf_get(&t->wtile, sizeof(uint16_t) * (size_t)p->tile * p->k) : NULL;
    float *yt = wb ? tbuf_get(&t->ytile, sizeof(float) * (size_t)p->n * p->tile) : NULL;
    if (!yt || widen_tile(t, wb, j->w, p->wt, r0, rows, p->k, full ? p->nb : p->nb_t) < 0) {
        j->failed = 1;
        return;
    }
    float *yo = dense ? j->y : yt;
    if (exec_one(t, full ? p->prim : p->tail, p, full ? &p->wei : &p->wei_t, full ? &p->dst : &p->dst_t,
                 full ? &p->bmd : &p->bmd_t, full ? p->scratch_bytes : p->scratch_tail, j->xs, wb, yo,
                 j->b ? j->b + r0 : NULL) < 0) {
        j->failed = 1;
        return;
    }
    if (!dense)
        for (int i = 0; i < p->n; i++)
            memcpy(j->y + (size_t)i * p->ldy + r0, yt + (size_t)i * rows, sizeof(float) * rows);
}

int b2__dnnl_mm_run(const b2_dnnl_mm *p, float *y, const float *x, const void *w, const float *b)
{
    tstate *t = tstate_get();
    if (!t || p->prec == B2_PREC_INT8) return -1;
    const void *src = x;
    if (p->prec == B2_PREC_BF16) {
        uint16_t *xb = tbuf_get(&t->xb, sizeof(uint16_t) * (size_t)p->n * p->k);
        if (!xb) return -1;
        x_to_bf16(xb, x, p->n, p->k, p->ldx);
        src = xb;
    }
    set_threads();
    if (!tiled(p->wt))
        return exec_one(t, p->prim, p, &p->wei, &p->dst, &p->bmd, p->scratch_bytes, src, w, y, b);
    tile_job j = {.p = p, .y = y, .xs = src, .w = w, .b = b};
    const int tasks = (p->m + p->tile - 1) / p->tile;
#if DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_OMP || DNNL_CPU_THREADING_RUNTIME == DNNL_RUNTIME_SEQ
    b2__parallel_for(tasks, tile_task, &j);
#else /* the primitives have oneDNN's own threads: one tile after another */
    for (int i = 0; i < tasks; i++) tile_task(&j, i, 0);
#endif
    return j.failed ? -1 : 0;
}

/* ---- int8 ---- */

/* Rows per pool task of the quantisations and of the dequantisation */
#define Q_ROWS 4

typedef struct wq_job {
    int8_t *q;
    float *scale;
    int32_t *sum;
    const void *w;
    b2_wtype wt;
    int m, k;
    float *f32; /* (pool size, Q_ROWS * k) */
} wq_job;

static void wq_task(void *ctx, int task, int slot)
{
    const wq_job *j = ctx;
    const int r0 = task * Q_ROWS, nr = j->m - r0 < Q_ROWS ? j->m - r0 : Q_ROWS;
    float *f = j->f32 + (size_t)slot * Q_ROWS * j->k;
    b2__wrows_to_f32(f, j->w, j->wt, r0, nr, j->k);
    for (int r = 0; r < nr; r++) {
        const float *x = f + (size_t)r * j->k;
        int8_t *q = j->q + (size_t)(r0 + r) * j->k;
        float amax = 0.0f;
        for (int i = 0; i < j->k; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        const float s = amax > 0.0f && isfinite(amax) ? amax / 127.0f : 1.0f, inv = 1.0f / s;
        int32_t sum = 0;
        for (int i = 0; i < j->k; i++) { /* to nearest, halves away from 0; NaN: 0 */
            float v = x[i] * inv;
            v = v > 127.0f ? 127.0f : v;
            v = v < -127.0f ? -127.0f : v;
            q[i] = (int8_t)(v >= 0.0f ? (int)(v + 0.5f) : v < 0.0f ? (int)(v - 0.5f) : 0);
            sum += q[i];
        }
        j->scale[r0 + r] = s;
        j->sum[r0 + r] = sum;
    }
}

int b2__quantize_s8(int8_t *q, float *scale, int32_t *sum, const void *w, b2_wtype wt, int m, int k)
{
    float *f32 = malloc(sizeof(float) * (size_t)b2__pool_size() * Q_ROWS * k);
    if (!f32) return -1;
    wq_job j = {q, scale, sum, w, wt, m, k, f32};
    b2__parallel_for((m + Q_ROWS - 1) / Q_ROWS, wq_task, &j);
    free(f32);
    return 0;
}

/* x (n, ldx) -> xq (n, k) u8, scale xs (n), zero point zp (n): the row's
 * range widened to include 0, split in 255 steps */
typedef struct xq_job {
    uint8_t *xq;
    float *xs;
    int32_t *zp;
    const float *x;
    int n, k, ldx;
} xq_job;

static void xq_task(void *ctx, int task, int slot)
{
    const xq_job *j = ctx;
    (void)slot;
    const int r0 = task * Q_ROWS, nr = j->n - r0 < Q_ROWS ? j->n - r0 : Q_ROWS;
    for (int r = r0; r < r0 + nr; r++) {
        const float *x = j->x + (size_t)r * j->ldx;
        uint8_t *q = j->xq + (size_t)r * j->k;
        float lo = 0.0f, hi = 0.0f;
        for (int i = 0; i < j->k; i++) {
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
        const float s = hi > lo && isfinite(hi - lo) ? (hi - lo) / 255.0f : 1.0f, inv = 1.0f / s;
        float z = -lo * inv + 0.5f; /* in [0, 255] but for infinities */
        z = z > 255.0f ? 255.0f : z >= 0.0f ? (float)(int)z : 0.0f;
        for (int i = 0; i < j->k; i++) {
            float v = x[i] * inv + z;
            v = v > 255.0f ? 255.0f : v > 0.0f ? v : 0.0f;
            q[i] = (uint8_t)(v + 0.5f);
        }
        j->xs[r] = s;
        j->zp[r] = (int32_t)z;
    }
}

/* y (n, ldy) holds the s32 products in place: to f32, with the zero
 * points, scales and bias */
typedef struct dq_job {
    float *y;
    const float *xs, *ws, *b;
    const int32_t *zp, *wsum;
    int n, m, ldy;
} dq_job;

static void dq_task(void *ctx, int task, int slot)
{
    const dq_job *j = ctx;
    (void)slot;
    const int r0 = task * Q_ROWS, nr = j->n - r0 < Q_ROWS ? j->n - r0 : Q_ROWS;
    for (int r = r0; r < r0 + nr; r++) {
        float *y = j->y + (size_t)r * j->ldy;
        int32_t acc[256];
        const int32_t zp = j->zp[r];
        const float xs = j->xs[r];
        for (int c0 = 0; c0 < j->m; c0 += 256) { /* the s32 out of y's storage first (no aliasing) */
            const int nc = j->m - c0 < 256 ? j->m - c0 : 256;
            memcpy(acc, y + c0, sizeof(int32_t) * (size_t)nc);
            for (int c = 0; c < nc; c++)
                y[c0 + c] = (float)(acc[c] - zp * j->wsum[c0 + c]) * (xs * j->ws[c0 + c]) + (j->b ? j->b[c0 + c] : 0.0f);
        }
    }
}

int b2__dnnl_mm_run_q(const b2_dnnl_mm *p, float *y, const float *x, const b2_qweights *w, const float *b)
{
    tstate *t = tstate_get();
    if (!t || p->prec != B2_PREC_INT8) return -1;
    uint8_t *xq = tbuf_get(&t->xb, (size_t)p->n * p->k);
    float *xs = xq ? tbuf_get(&t->xq, (sizeof(float) + sizeof(int32_t)) * (size_t)p->n) : NULL;
    if (!xs) return -1;
    int32_t *zp = (int32_t *)(xs + p->n);
    const int tasks = (p->n + Q_ROWS - 1) / Q_ROWS;
    xq_job xj = {xq, xs, zp, x, p->n, p->k, p->ldx};
    b2__parallel_for(tasks, xq_task, &xj);
    set_threads();
    if (exec_one(t, p->prim, p, &p->wei, &p->dst, &p->bmd, p->scratch_bytes, xq, w->q, y, NULL) < 0) return -1;
    dq_job dj = {y, xs, w->scale, p->bias ? b : NULL, zp, w->sum, p->n, p->m, p->ldy};
    b2__parallel_for(tasks, dq_task, &dj);
    return 0;
}

/* ---- probes and reports ---- */

static int bf16_native;
static char bf16_why[96];
static pthread_once_t bf16_once = PTHREAD_ONCE_INIT;

static void bf16_probe(void)
{
    pthread_once(&engine_once, engine_init);
    if (!native_bf16_isa()) {
        snprintf(bf16_why, sizeof bf16_why, "no native bf16 (%s)", b2__dnnl_info());
        return;
    }
    b2_dnnl_mm *p = b2__dnnl_mm(64, 64, 64, 64, 64, B2_WT_BF16, B2_PREC_BF16, 0);
    if (!p) {
        snprintf(bf16_why, sizeof bf16_why, "no usable oneDNN bf16 matmul");
        return;
    }
    snprintf(bf16_why, sizeof bf16_why, "%s", p->impl);
    bf16_native = 1;
}

int b2__dnnl_bf16_native(const char **impl)
{
    pthread_once(&bf16_once, bf16_probe);
    if (impl) *impl = bf16_why;
    return bf16_native;
}

static int int8_native;
static char int8_why[96];
static pthread_once_t int8_once = PTHREAD_ONCE_INIT;

static void int8_probe(void)
{
    pthread_once(&engine_once, engine_init);
    if (!native_int8_isa()) {
        snprintf(int8_why, sizeof int8_why, "no VNNI (%s)", b2__dnnl_info());
        return;
    }
    b2_dnnl_mm *p = b2__dnnl_mm(64, 64, 64, 64, 64, B2_WT_F32, B2_PREC_INT8, 0);
    if (!p) {
        snprintf(int8_why, sizeof int8_why, "no usable oneDNN u8 x s8 matmul");
        return;
    }
    snprintf(int8_why, sizeof int8_why, "%s", p->impl);
    int8_native = 1;
}

int b2__dnnl_int8_native(const char **impl)
{
    pthread_once(&int8_once, int8_probe);
    if (impl) *impl = int8_why;
    return int8_native;
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch ((int)isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    default: return "other";
    }
}

static char info[64];

static void info_fill(void)
{
    const dnnl_version_t *v = dnnl_version();
    snprintf(info, sizeof info, "oneDNN %d.%d.%d, %s", v->major, v->minor, v->patch,
             isa_name(dnnl_get_effective_cpu_isa()));
}

const char *b2__dnnl_info(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, info_fill);
    return info;
}

size_t b2__dnnl_report(char *buf, size_t size)
{
    size_t len = 0;
    if (size) buf[0] = 0;
    pthread_mutex_lock(&mu);
    for (const b2_dnnl_mm *p = cache; p; p = p->next) {
        if (p->n == 64 && p->m == 64 && p->k == 64 && p->choice == 0) continue; /* the probe */
        char line[256];
        const int l = snprintf(line, sizeof line, "%d x %d x %d %s%s: %s, %s (oneDNN %.2f ms, other %.2f ms)\n",
                               p->n, p->m, p->k, b2__prec_name(p->prec), p->bias ? " +bias" : "",
                               p->impl, !p->prim ? "refused" : p->choice > 0 ? "oneDNN" : p->choice < 0 ? "other" : "undecided",
                               p->ms_dnnl, p->ms_other);
        if (l > 0 && len + (size_t)l < size) memcpy(buf + len, line, (size_t)l + 1);
        len += l > 0 ? (size_t)l : 0;
    }
    pthread_mutex_unlock(&mu);
    return len;
}
