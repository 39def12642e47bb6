/*
 * bench_wkernels.c - the typed-weight products (model/compute/wkernels.h) at the
 * decode shapes of OPT-2.7b, next to the machine's memory-read rate
 * measured in the same run.
 *
 *   one "pass" = one token through every decoder product: 32 layers of
 *   q, k, v, o (2560 x 2560), fc1 (10240 x 2560), fc2 (2560 x 10240), then
 *   lm_head (50272 x 2560), as b2__wmatmul_rows on n activation rows.
 *   Memory: one layer's six weights and lm_head per type (the 32 layers
 *   reuse them; a layer is 84 MB even as q8_0, far past any cache, so
 *   every pass still streams from DRAM).
 *
 *   per round r = 1..R, for each type (f32, f16, bf16, q8_0, q4_0) and batch n:
 *     memory read of >= 2 GiB (multi-accumulator AVX2 / AVX-512 / portable
 *     loop, one pinned thread per pool thread) -> GB/s
 *     one pass -> ms, weight bytes / time -> GB/s, over the mean of the
 *     memory reads right before and after it
 *   -> medians over rounds.  --prefetch runs each pass once per software
 *   prefetch distance (b2__wkernels_set_prefetch), interleaved.  With
 *   both bf16 and q8_0, the per-round ratio of their times is printed too
 *   (the "q8_0 at least 1.6x bf16 in the same run"), and with
 *   both q8_0 and q4_0 the per-round q4_0/q8_0 ratio (issue 13: "q4_0
 *   decode at least 1.6x q8_0 in the same run").
 */
#include "pool.h"
#include "wkernels.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define B2B_X86 1
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- memory-read rate ---- */

volatile float bench_sink;

typedef float (*read_fn)(const float *p, size_t n);

static float read_portable(const float *p, size_t n)
{
    float a[8] = {0};
    for (size_t i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

#ifdef B2B_X86
__attribute__((target("avx2"))) static float read_avx2(const float *p, size_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i < n; i += 64) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
        a4 = _mm256_add_ps(a4, _mm256_load_ps(p + i + 32));
        a5 = _mm256_add_ps(a5, _mm256_load_ps(p + i + 40));
        a6 = _mm256_add_ps(a6, _mm256_load_ps(p + i + 48));
        a7 = _mm256_add_ps(a7, _mm256_load_ps(p + i + 56));
    }
    a0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                       _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    float t[8];
    _mm256_storeu_ps(t, a0);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

__attribute__((target("avx512f"))) static float read_avx512(const float *p, size_t n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
#endif

static read_fn pick_read(const char **name)
{
#ifdef B2B_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) { *name = "AVX-512"; return read_avx512; }
    if (__builtin_cpu_supports("avx2")) { *name = "AVX2"; return read_avx2; }
#endif
    *name = "portable";
    return read_portable;
}

typedef struct rd_job {
    read_fn fn;
    const float *p;
    size_t n;
    int cpu;
    float sum;
} rd_job;

static void *rd_thread(void *arg)
{
    rd_job *j = arg;
    if (j->cpu >= 0) {
        cpu_set_t cs;
        CPU_ZERO(&cs);
        CPU_SET(j->cpu, &cs);
        sched_setaffinity(0, sizeof cs, &cs);
    }
    j->sum = j->fn(j->p, j->n);
    return NULL;
}

/* One pass over buf (n floats) on nt threads, each pinned to its own CPU;
 * returns GB/s. */
static double mem_pass(read_fn fn, const float *buf, size_t n, int nt)
{
    rd_job jobs[64];
    pthread_t th[64];
    cpu_set_t saved;
    int cpus[64], nc = 0;
    if (nt > 64) nt = 64;
    int pinned = sched_getaffinity(0, sizeof saved, &saved) == 0;
    for (int c = 0; pinned && c < CPU_SETSIZE && nc < nt; c++)
        if (CPU_ISSET(c, &saved)) cpus[nc++] = c;
    if (nc < nt) pinned = 0;
    size_t per = (n / (size_t)nt) & ~(size_t)63;
    double t0 = now();
    for (int i = 0; i < nt; i++) {
        jobs[i] = (rd_job){fn, buf + (size_t)i * per, per, pinned ? cpus[i] : -1, 0};
        if (i > 0) pthread_create(&th[i], NULL, rd_thread, &jobs[i]);
    }
    rd_thread(&jobs[0]);
    for (int i = 1; i < nt; i++) pthread_join(th[i], NULL);
    double dt = now() - t0;
    if (pinned) sched_setaffinity(0, sizeof saved, &saved);
    for (int i = 0; i < nt; i++) bench_sink += jobs[i].sum;
    return (double)per * nt * sizeof(float) / dt / 1e9;
}

/* ---- the decoder's weights ---- */

enum { D = 2560, F = 10240, V = 50272, LAYERS = 32, NMAX = 64 };

typedef struct mat {
    int m, k;
    unsigned char *w;
} mat;

typedef struct wset {
    b2_wtype t;
    mat layer[6]; /* q, k, v, o, fc1, fc2 */
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
    a->w = aligned_alloc(64, (rb * m + 63) & ~(size_t)63);
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
    for (int i = 0; i < 6; i++) {
        if (mat_make(&s->layer[i], t, shape[i][0], shape[i][1], (uint64_t)(10 * t + i))) return -1;
        s->bytes += LAYERS * (double)b2__wt_row_bytes(t, shape[i][1]) * shape[i][0];
    }
    if (mat_make(&s->head, t, V, D, (uint64_t)(10 * t + 7))) return -1;
    s->bytes += (double)b2__wt_row_bytes(t, D) * V;
    return 0;
}

static void wset_free(wset *s)
{
    for (int i = 0; i < 6; i++) free(s->layer[i].w);
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
    double t0 = now();
    for (int l = 0; l < LAYERS; l++)
        for (int i = 0; i < 6; i++) mul(impl, y, x, &s->layer[i], s->t, n);
    mul(impl, y, x, &s->head, s->t, n);
    return now() - t0;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: bench_wkernels [options]\n"
        "  --rounds N     measurement rounds; medians over them (default 5)\n"
        "  --batch LIST   activation rows per pass, comma-separated (default 1,4)\n"
        "  --types LIST   f32,f16,bf16,q8_0,q4_0 (default all)\n"
        "  --impl NAME    portable, avx2, avx512 (default: the one chosen from the CPU)\n"
        "  --mem-gib G    memory-read buffer (default 2; at least 2 for a fair figure)\n"
        "  --prefetch LIST  software prefetch distances in bytes to compare in the same\n"
        "                 rounds, comma-separated (default: the library's, see BLIP2_PREFETCH)\n"
        "RAM: ~1.9 GB of weights for all four types plus the read buffer.\n");
}

int main(int argc, char **argv)
{
    int rounds = 5, batches[8] = {1, 4}, nbatch = 2, pfs[8] = {b2__wkernels_set_prefetch(-1)}, npf = 1;
    double mem_gib = 2.0;
    const char *impl = NULL, *types = "f32,f16,bf16,q8_0,q4_0";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!v) { usage(stderr); return 2; }
        i++;
        if (!strcmp(a, "--rounds")) rounds = atoi(v);
        else if (!strcmp(a, "--mem-gib")) mem_gib = atof(v);
        else if (!strcmp(a, "--impl")) impl = v;
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
    read_fn rfn = pick_read(&rname);
    const size_t nmem = (size_t)(mem_gib * (1u << 30) / sizeof(float)) & ~(size_t)1023;
    float *buf = aligned_alloc(64, nmem * sizeof(float));
    float *x = malloc(sizeof(float) * NMAX * F), *y = malloc(sizeof(float) * NMAX * V);
    if (!buf || !x || !y) { fprintf(stderr, "bench_wkernels: out of memory\n"); return 1; }
    for (size_t i = 0; i < nmem; i++) buf[i] = (float)(i & 1023) * 1e-3f;
    for (int i = 0; i < NMAX * F; i++) x[i] = (float)((int)(((unsigned)i * 7919u) % 2001u) - 1000) * 1e-3f;
    const int threads = b2__pool_size();
    if (impl && mul(impl, y, x, &sets[0].layer[0], sets[0].t, 1)) {
        fprintf(stderr, "bench_wkernels: implementation %s not available here\n", impl);
        return 1;
    }
    double la[3] = {0};
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) { if (fscanf(lf, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = -1; fclose(lf); }
    printf("bench_wkernels: products %s, %d threads, memory read %s over %.1f GiB, load average %.2f\n",
           impl ? impl : b2__wkernels_name(), threads, rname, mem_gib, la[0]);

    for (int s = 0; s < nset; s++) pass(impl, &sets[s], y, x, 1); /* warm up */
    /* one configuration = (batch, prefetch distance); results at [(s * ncfg + c) * rounds + r] */
    const int ncfg = nbatch * npf;
    double *ms = calloc((size_t)nset * ncfg * rounds, sizeof(double));
    double *ratio = calloc((size_t)nset * ncfg * rounds, sizeof(double));
    double *mem = calloc((size_t)rounds * (nset * ncfg + 1), sizeof(double));
    double *vsbf = calloc((size_t)ncfg * rounds, sizeof(double));
    double *vs8 = calloc((size_t)ncfg * rounds, sizeof(double)); /* q4_0 vs q8_0 */
    int nmem_meas = 0;
    for (int r = 0; r < rounds; r++) {
        double before = mem_pass(rfn, buf, nmem, threads);
        mem[nmem_meas++] = before;
        for (int s = 0; s < nset; s++)
            for (int c = 0; c < ncfg; c++) {
                b2__wkernels_set_prefetch(pfs[c % npf]);
                const double dt = pass(impl, &sets[s], y, x, batches[c / npf]);
                const double after = mem_pass(rfn, buf, nmem, threads);
                mem[nmem_meas++] = after;
                const size_t o = ((size_t)s * ncfg + c) * rounds + r;
                ms[o] = dt * 1e3;
                ratio[o] = sets[s].bytes / dt / 1e9 / (0.5 * (before + after));
                before = after;
            }
    }
    const double memmed = median(mem, nmem_meas);
    printf("memory read: median %.1f GB/s over %d measurements (%.1f .. %.1f)\n", memmed, nmem_meas, mem[0],
           mem[nmem_meas - 1]);
    /* q8_0 against bf16 in the same round and configuration, before the
     * medians reorder ms */
    int sbf = -1, sq8 = -1, sq4 = -1;
    for (int s = 0; s < nset; s++) {
        if (sets[s].t == B2_WT_BF16) sbf = s;
        if (sets[s].t == B2_WT_Q8_0) sq8 = s;
        if (sets[s].t == B2_WT_Q4_0) sq4 = s;
    }
    if (sq8 >= 0 && sq4 >= 0)
        for (int c = 0; c < ncfg; c++)
            for (int r = 0; r < rounds; r++)
                vs8[(size_t)c * rounds + r] = ms[((size_t)sq8 * ncfg + c) * rounds + r] / ms[((size_t)sq4 * ncfg + c) * rounds + r];
    if (sbf >= 0 && sq8 >= 0)
        for (int c = 0; c < ncfg; c++)
            for (int r = 0; r < rounds; r++)
                vsbf[(size_t)c * rounds + r] = ms[((size_t)sbf * ncfg + c) * rounds + r] / ms[((size_t)sq8 * ncfg + c) * rounds + r];
    printf("%-5s %5s %8s %9s %10s %10s %9s %9s\n", "type", "batch", "prefetch", "GB/pass", "ms/pass", "ms/token", "GB/s",
           "of mem");
    for (int s = 0; s < nset; s++)
        for (int c = 0; c < ncfg; c++) {
            const int b = c / npf;
            const size_t o = ((size_t)s * ncfg + c) * rounds;
            const double t = median(ms + o, rounds), q = median(ratio + o, rounds);
            printf("%-5s %5d %8d %9.3f %10.1f %10.1f %9.1f %8.1f%%\n", b2__wt_name(sets[s].t), batches[b], pfs[c % npf],
                   sets[s].bytes / 1e9, t, t / batches[b], sets[s].bytes / (t * 1e-3) / 1e9, 100 * q);
        }
    if (sbf >= 0 && sq8 >= 0)
        for (int c = 0; c < ncfg; c++) {
            double *v = vsbf + (size_t)c * rounds;
            const double med = median(v, rounds);
            printf("q8_0 vs bf16, batch %d, prefetch %d: %.2fx faster (median of the per-round ratios; %.2f .. %.2f)\n",
                   batches[c / npf], pfs[c % npf], med, v[0], v[rounds - 1]);
        }
    if (sq8 >= 0 && sq4 >= 0)
        for (int c = 0; c < ncfg; c++) {
            double *v = vs8 + (size_t)c * rounds;
            const double med = median(v, rounds);
            printf("q4_0 vs q8_0, batch %d, prefetch %d: %.2fx faster (median of the per-round ratios; %.2f .. %.2f)\n",
                   batches[c / npf], pfs[c % npf], med, v[0], v[rounds - 1]);
        }
    lf = fopen("/proc/loadavg", "r");
    if (lf) { if (fscanf(lf, "%lf", &la[0]) != 1) la[0] = -1; fclose(lf); }
    printf("load average after: %.2f\n", la[0]);
    for (int s = 0; s < nset; s++) wset_free(&sets[s]);
    free(buf); free(x); free(y); free(ms); free(ratio); free(mem); free(vsbf); free(vs8);
    return 0;
}
