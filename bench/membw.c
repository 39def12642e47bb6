/*
 * membw.c - the benchmarks' clock, medians and memory-read probe (membw.h).
 * The read loops are plain sums over 64-float blocks with independent
 * accumulators (8 AVX2 or 4 AVX-512 registers, 8 floats portable), chosen
 * at run time; a pass splits the buffer over pinned threads.
 */
#include "membw.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define B2B_X86 1
#endif

double b2b_loadavg(void)
{
    double la = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &la) != 1) la = -1;
        fclose(f);
    }
    return la;
}

void b2b_print_load(const char *when)
{
    FILE *f = fopen("/proc/loadavg", "r");
    char buf[128] = "?";
    if (f) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = 0;
    printf("load average %s: %s\n", when, buf);
}

double b2b_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void *b2b_alloc_large(size_t bytes)
{
    const size_t large = (size_t)2 << 20, n = (bytes + large - 1) / large * large;
    void *p = aligned_alloc(large, n ? n : large);
    if (p) madvise(p, n ? n : large, MADV_HUGEPAGE); /* a hint: EINVAL without THP */
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void b2b_sort(double *v, int n)
{
    if (n > 0) qsort(v, (size_t)n, sizeof(double), cmp_double);
}

double b2b_median(const double *v, int n)
{
    double *t = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!t || n <= 0) { free(t); return NAN; }
    memcpy(t, v, sizeof(double) * (size_t)n);
    b2b_sort(t, n);
    double m = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return m;
}

static volatile float sink; /* keeps the reads from being optimised away */

/* Portable: eight independent accumulators (n is a multiple of 64). */
static float read_portable(const float *p, size_t n)
{
    float a[8] = {0};
    for (size_t i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

#ifdef B2B_X86
__attribute__((target("avx2")))
static float read_avx2(const float *p, size_t n)
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

__attribute__((target("avx512f")))
static float read_avx512(const float *p, size_t n)
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

b2b_read_fn b2b_pick_read(const char **name)
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
    b2b_read_fn fn;
    const float *p;
    size_t n;
    int cpu;        /* pin to this CPU first, or -1 */
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

double b2b_mem_pass(b2b_read_fn fn, const float *buf, size_t n, int nt)
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
    double t0 = b2b_now();
    for (int i = 0; i < nt; i++) {
        jobs[i] = (rd_job){fn, buf + (size_t)i * per, per, pinned ? cpus[i] : -1, 0};
        if (i > 0) pthread_create(&th[i], NULL, rd_thread, &jobs[i]);
    }
    rd_thread(&jobs[0]);
    for (int i = 1; i < nt; i++) pthread_join(th[i], NULL);
    double dt = b2b_now() - t0;
    if (pinned) sched_setaffinity(0, sizeof saved, &saved);
    for (int i = 0; i < nt; i++) sink += jobs[i].sum;
    return (double)per * nt * sizeof(float) / dt / 1e9;
}

