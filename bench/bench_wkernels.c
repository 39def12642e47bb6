/*
 * bench_wkernels.c - the typed-weight products (model/compute/wkernels.h) at the
 * decode shapes of OPT-2.7b, next to the machine's memory-read rate
 * measured in the same run.
 *
 *   one "pass" = one token through every decoder product: 32 layers of
 *   q, k, v, o (2560 x 2560), fc1 (10240 x 2560), fc2 (2560 x 10240), then
 *   lm_head (50272 x 2560), as b2__wmatmul_rows on n activation rows.
 *   Memory: per type as many copies of one layer's six weights as make
 *   at least MIN_CYCLE bytes (the 32 layers go round them), and lm_head:
 *   a pass streams from DRAM.  (With one copy, a q4_0 layer of 44 MB was
 *   read back partly from the L3 (32 MiB a CCD on Zen 4 and 5), and the products looked ~15 %
 *   faster than in the engine; bench/RESULTS.md, 2026-12-08 02:50.)
 *
 *   per round r = 1..R, for each implementation (--impl LIST), batch n
 *   and type (f32, f16, bf16, q8_0, q4_0; the types of one configuration
 *   back to back):
 *     memory read of >= 2 GiB (multi-accumulator AVX2 / AVX-512 / portable
 *     loop, one pinned thread per pool thread) -> GB/s
 *     one pass -> ms, weight bytes / time -> GB/s, over the mean of the
 *     memory reads right before and after it
 *   -> medians over rounds.  --prefetch runs each pass once per software
 *   prefetch distance (b2__wkernels_set_prefetch), interleaved.  With
 *   both bf16 and q8_0, the per-round ratio of their times is printed too
 *   (the "q8_0 at least 1.6x bf16 in the same run"), and with
 *   both q8_0 and q4_0 the per-round q4_0/q8_0 ratio (issue 13: "q4_0
 *   decode at least 1.6x q8_0 in the same run"), per implementation, each
 *   with the ratio of the two types' fastest passes (the least disturbed
 *   when the host's memory is shared).
 */
#include "pool.h"
#include "wkernels.h"
#include "membw.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the decoder's weights ---- */

enum { D = 2560, F = 10240, V = 50272, LAYERS = 32, NMAX = 64, COPIES_MAX = 8 };
#define MIN_CYCLE ((size_t)256 << 20) /* bytes of distinct layers a pass goes round */

typedef struct mat {
    int m, k;
    unsigned char *w;
} mat;

typedef struct wset {
    b2_wtype t;
    mat layer[COPIES_MAX][6]; /* copies of q, k, v, o, fc1, fc2 */
    int copies;
    mat head;
    double bytes; /* weight bytes read per pass */
} wset;

/* m rows of k values, N(0, 0.02)-ish; 61 distinct rows repeated (the
 * values do not matter for speed, only that every byte is read). */
static int mat_make(mat *a, b2_wtype t, int m, int k, uint64_t seed)
{
    const size_t rb = b2__wt_row_bytes(t, k);
    a->m = m;
    a->k = k;
    a->w = b2b_alloc_large((rb * m + 63) & ~(size_t)63);
    float *row = malloc(sizeof(float) * k);
    unsigned char *rows = malloc(rb * 61);
    if (!a->w || !row || !rows) { free(row); free(rows); return -1; }
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int r = 0; r < 61; r++) {
        for (int j = 0; j < k; j++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            row[j] = 0.04f * ((float)(x >> 40) * (1.0f / 16777216.0f) - 0.5f);
        }
        b2__wquantize_row(rows + rb * r, row, t, k);
    }
    for (int r = 0; r < m; r++) memcpy(a->w + rb * r, rows + rb * (r % 61), rb);
    free(row);
    free(rows);
    return 0;
}

static int wset_make(wset *s, b2_wtype t)
{
    static const int shape[6][2] = {{D, D}, {D, D}, {D, D}, {D, D}, {F, D}, {D, F}};
    s->t = t;
    s->bytes = 0;
    size_t layer = 0;
    for (int i = 0; i < 6; i++) layer += b2__wt_row_bytes(t, shape[i][1]) * (size_t)shape[i][0];
    s->copies = (int)((MIN_CYCLE + layer - 1) / layer);
    if (s->copies > COPIES_MAX) s->copies = COPIES_MAX;
    for (int c = 0; c < s->copies; c++)
        for (int i = 0; i < 6; i++)
            if (mat_make(&s->layer[c][i], t, shape[i][0], shape[i][1], (uint64_t)(10 * t + i + 100 * c))) return -1;
    s->bytes = LAYERS * (double)layer;
    if (mat_make(&s->head, t, V, D, (uint64_t)(10 * t + 7))) return -1;
    s->bytes += (double)b2__wt_row_bytes(t, D) * V;
    return 0;
}

static void wset_free(wset *s)
{
    for (int c = 0; c < s->copies; c++)
        for (int i = 0; i < 6; i++) free(s->layer[c][i].w);
    free(s->head.w);
}

static int mul(const char *impl, float *y, const float *x, const mat *a, b2_wtype t, int n)
{
    if (impl) return b2__wmatmul_rows_impl(impl, y, a->m, x, a->k, a->w, t, n, a->m, a->k);
    b2__wmatmul_rows(y, a->m, x, a->k, a->w, t, n, a->m, a->k);
    return 0;
}

/* One token-equivalent pass (n rows): seconds. */
static double pass(const char *impl, const wset *s, float *y, const float *x, int n)
{
    double t0 = b2b_now();
    for (int l = 0; l < LAYERS; l++)
        for (int i = 0; i < 6; i++) mul(impl, y, x, &s->layer[l % s->copies][i], s->t, n);
    mul(impl, y, x, &s->head, s->t, n);
    return b2b_now() - t0;
}

static const char *const ALLIMPL[] = {"portable", "avx2", "avx512", "avx512-vnni"};

static void usage(FILE *f)
{
    fprintf(f,
        "usage: bench_wkernels [options]\n"
        "  --rounds N     measurement rounds; medians over them (default 5)\n"
        "  --batch LIST   activation rows per pass, comma-separated (default 1,4)\n"
        "  --types LIST   f32,f16,bf16,q8_0,q4_0 (default all)\n"
        "  --impl LIST    implementations to compare in the same rounds, comma-separated:\n"
        "                 portable, avx2, avx512, avx512-vnni, or all (every one this CPU\n"
        "                 runs; default: the dispatcher's default)\n"
        "  --mem-gib G    memory-read buffer (default 2; at least 2 for a fair figure)\n"
        "  --prefetch LIST  software prefetch distances in bytes to compare in the same\n"
        "                 rounds, comma-separated (default: the library's, see BLIP2_PREFETCH)\n"
        "RAM: ~2.6 GB of weights for all five types plus the read buffer.\n");
}

int main(int argc, char **argv)
{
    int rounds = 5, batches[8] = {1, 4}, nbatch = 2, pfs[8] = {b2__wkernels_set_prefetch(-1)}, npf = 1;
    double mem_gib = 2.0;
    const char *impl_arg = NULL, *types = "f32,f16,bf16,q8_0,q4_0";
    const char *impls[8] = {NULL};
    char implbuf[256] = "";
    int nimpl = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!v) { usage(stderr); return 2; }
        i++;
        if (!strcmp(a, "--rounds")) rounds = atoi(v);
        else if (!strcmp(a, "--mem-gib")) mem_gib = atof(v);
        else if (!strcmp(a, "--impl")) impl_arg = v;
        else if (!strcmp(a, "--types")) types = v;
        else if (!strcmp(a, "--batch")) {
            nbatch = 0;
            for (const char *p = v; *p && nbatch < 8; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p))
                batches[nbatch++] = atoi(p);
        } else if (!strcmp(a, "--prefetch")) {
            npf = 0;
            for (const char *p = v; *p && npf < 8; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p))
                pfs[npf++] = atoi(p);
        } else { usage(stderr); return 2; }
    }
    if (rounds < 1 || rounds > 100 || mem_gib <= 0 || nbatch < 1 || npf < 1) { usage(stderr); return 2; }
    for (int p = 0; p < npf; p++)
        if (pfs[p] < 0 || pfs[p] > 1 << 20) { fprintf(stderr, "bench_wkernels: prefetch 0..1048576\n"); return 2; }
    for (int b = 0; b < nbatch; b++)
        if (batches[b] < 1 || batches[b] > NMAX) { fprintf(stderr, "bench_wkernels: batch 1..%d\n", NMAX); return 2; }

    static const b2_wtype ALL[] = {B2_WT_F32, B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
    wset sets[5];
    int nset = 0;
    for (int i = 0; i < 5; i++) {
        const char *nm = b2__wt_name(ALL[i]);
        const size_t len = strlen(nm);
        int want = 0;
        for (const char *p = types; *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) /* whole names only */
            want |= strcspn(p, ",") == len && !strncmp(p, nm, len);
        if (!want) continue;
        if (wset_make(&sets[nset], ALL[i])) { fprintf(stderr, "bench_wkernels: out of memory\n"); return 1; }
        nset++;
    }
    const char *rname;
    b2b_read_fn rfn = b2b_pick_read(&rname);
    const size_t nmem = (size_t)(mem_gib * (1u << 30) / sizeof(float)) & ~(size_t)1023;
    float *buf = b2b_alloc_large(nmem * sizeof(float));
    float *x = malloc(sizeof(float) * NMAX * F), *y = malloc(sizeof(float) * NMAX * V);
    if (!buf || !x || !y) { fprintf(stderr, "bench_wkernels: out of memory\n"); return 1; }
    for (size_t i = 0; i < nmem; i++) buf[i] = (float)(i & 1023) * 1e-3f;
    for (int i = 0; i < NMAX * F; i++) x[i] = (float)((int)(((unsigned)i * 7919u) % 2001u) - 1000) * 1e-3f;
    const int threads = b2__pool_size();
    if (impl_arg && !strcmp(impl_arg, "all")) {
        nimpl = 0;
        for (size_t i = 0; i < sizeof ALLIMPL / sizeof ALLIMPL[0]; i++)
            if (mul(ALLIMPL[i], y, x, &sets[0].layer[0][0], sets[0].t, 1) == 0) impls[nimpl++] = ALLIMPL[i];
    } else if (impl_arg) {
        snprintf(implbuf, sizeof implbuf, "%s", impl_arg);
        nimpl = 0;
        for (char *p = strtok(implbuf, ","); p && nimpl < 8; p = strtok(NULL, ",")) {
            if (mul(p, y, x, &sets[0].layer[0][0], sets[0].t, 1)) {
                fprintf(stderr, "bench_wkernels: implementation %s not available here\n", p);
                return 1;
            }
            impls[nimpl++] = p;
        }
    }
    if (nimpl < 1) { usage(stderr); return 2; }
    printf("bench_wkernels: products %s%s, %d threads, memory read %s over %.1f GiB, load average %.2f\n",
           impl_arg ? impl_arg : b2__wkernels_name(), impl_arg && !strcmp(impl_arg, "all") ? " runnable here" : "", threads,
           rname, mem_gib, b2b_loadavg());

    for (int s = 0; s < nset; s++) pass(impls[0], &sets[s], y, x, 1); /* warm up */
    /* one configuration = (implementation, batch, prefetch distance);
     * results at [(s * ncfg + c) * rounds + r] */
    const int ncfg = nimpl * nbatch * npf;
#define CFG_IMPL(c) impls[(c) / (nbatch * npf)]
#define CFG_BATCH(c) batches[(c) / npf % nbatch]
    double *ms = calloc((size_t)nset * ncfg * rounds, sizeof(double));
    double *ratio = calloc((size_t)nset * ncfg * rounds, sizeof(double));
    double *mem = calloc((size_t)rounds * (nset * ncfg + 1), sizeof(double));
    double *vs = calloc((size_t)rounds, sizeof(double)); /* one configuration's per-round ratios */
    int nmem_meas = 0;
    for (int r = 0; r < rounds; r++) {
        double before = b2b_mem_pass(rfn, buf, nmem, threads);
        mem[nmem_meas++] = before;
        /* the types of one configuration back to back, so that a ratio
         * between them compares passes seconds apart, not a round apart */
        for (int c = 0; c < ncfg; c++)
            for (int s = 0; s < nset; s++) {
                b2__wkernels_set_prefetch(pfs[c % npf]);
                const double dt = pass(CFG_IMPL(c), &sets[s], y, x, CFG_BATCH(c));
                const double after = b2b_mem_pass(rfn, buf, nmem, threads);
                mem[nmem_meas++] = after;
                const size_t o = ((size_t)s * ncfg + c) * rounds + r;
                ms[o] = dt * 1e3;
                ratio[o] = sets[s].bytes / dt / 1e9 / (0.5 * (before + after));
                before = after;
            }
    }
    b2b_sort(mem, nmem_meas);
    const double memmed = b2b_median(mem, nmem_meas);
    printf("memory read: median %.1f GB/s over %d measurements (%.1f .. %.1f)\n", memmed, nmem_meas, mem[0],
           mem[nmem_meas - 1]);
    int sbf = -1, sq8 = -1, sq4 = -1;
    for (int s = 0; s < nset; s++) {
        if (sets[s].t == B2_WT_BF16) sbf = s;
        if (sets[s].t == B2_WT_Q8_0) sq8 = s;
        if (sets[s].t == B2_WT_Q4_0) sq4 = s;
    }
    printf("%-5s %-11s %5s %8s %9s %10s %10s %9s %9s\n", "type", "impl", "batch", "prefetch", "GB/pass", "ms/pass",
           "ms/token", "GB/s", "of mem");
    for (int s = 0; s < nset; s++)
        for (int c = 0; c < ncfg; c++) {
            const size_t o = ((size_t)s * ncfg + c) * rounds;
            const double t = b2b_median(ms + o, rounds), q = b2b_median(ratio + o, rounds);
            printf("%-5s %-11s %5d %8d %9.3f %10.1f %10.1f %9.1f %8.1f%%\n", b2__wt_name(sets[s].t),
                   CFG_IMPL(c) ? CFG_IMPL(c) : b2__wkernels_name_for(sets[s].t), CFG_BATCH(c), pfs[c % npf],
                   sets[s].bytes / 1e9, t, t / CFG_BATCH(c), sets[s].bytes / (t * 1e-3) / 1e9, 100 * q);
        }
    /* q8_0 against bf16 and q4_0 against q8_0, each in the same round and
     * configuration: the median and range of the per-round ratios */
    const struct { int slow, fast; const char *what; } cmp[] = {{sbf, sq8, "q8_0 vs bf16"}, {sq8, sq4, "q4_0 vs q8_0"}};
    for (size_t k = 0; k < sizeof cmp / sizeof cmp[0]; k++)
        for (int c = 0; cmp[k].slow >= 0 && cmp[k].fast >= 0 && c < ncfg; c++) {
            for (int r = 0; r < rounds; r++)
                vs[r] = ms[((size_t)cmp[k].slow * ncfg + c) * rounds + r] / ms[((size_t)cmp[k].fast * ncfg + c) * rounds + r];
            b2b_sort(vs, rounds);
            /* the fastest pass of each: the least disturbed by a shared host */
            double bs = 1e300, bf = 1e300;
            for (int r = 0; r < rounds; r++) {
                const double ts = ms[((size_t)cmp[k].slow * ncfg + c) * rounds + r];
                const double tf = ms[((size_t)cmp[k].fast * ncfg + c) * rounds + r];
                bs = ts < bs ? ts : bs;
                bf = tf < bf ? tf : bf;
            }
            printf("%s, %s, batch %d, prefetch %d: %.2fx faster (median of the per-round ratios; %.2f .. %.2f); "
                   "fastest passes %.1f vs %.1f ms: %.2fx\n",
                   cmp[k].what, CFG_IMPL(c) ? CFG_IMPL(c) : "default", CFG_BATCH(c), pfs[c % npf],
                   b2b_median(vs, rounds), vs[0], vs[rounds - 1], bf, bs, bs / bf);
        }
    printf("load average after: %.2f\n", b2b_loadavg());
    for (int s = 0; s < nset; s++) wset_free(&sets[s]);
    free(buf); free(x); free(y); free(ms); free(ratio); free(mem); free(vs);
    return 0;
}
