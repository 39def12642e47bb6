/*
 * membw.h - what the benchmarks share: a monotonic clock, medians, the host
 * load (beside every figure), and the machine's memory-read rate (the limit
 * a decode step is held against).
 *
 *   b2b_pick_read: the widest read loop the CPU runs (AVX-512, AVX2 or
 *   portable, several independent accumulators so that the adds never
 *   limit the rate) --> b2b_mem_pass: one pass over a buffer split over nt
 *   threads, each pinned to its own CPU --> GB/s
 */
#ifndef B2B_MEMBW_H
#define B2B_MEMBW_H

#include <stddef.h>

/* Seconds on CLOCK_MONOTONIC. */
double b2b_now(void);

/* The median of v[0..n-1] (NAN for n = 0); v is left as it was. */
double b2b_median(const double *v, int n);
/* Sorts v[0..n-1] ascending (for the min and max next to a median). */
void b2b_sort(double *v, int n);

/* The 1-minute load average (/proc/loadavg), -1 when it cannot be read. */
double b2b_loadavg(void);
/* Prints "load average WHEN: " and the /proc/loadavg line ("?" without it). */
void b2b_print_load(const char *when);

/* bytes of memory on 2 MiB boundaries in 2 MiB pages where the kernel
 * gives them (MADV_HUGEPAGE before the first touch), as the engine maps
 * its weight file (model/formats/pages.h): a read limit measured through
 * 4 KiB pages would be a handicap the weights do not have.  free() it;
 * NULL when out of memory. */
void *b2b_alloc_large(size_t bytes);

/* Sums n floats (n a multiple of 64, p 64-byte aligned). */
typedef float (*b2b_read_fn)(const float *p, size_t n);
/* The fastest read loop this CPU runs; *name says which ("AVX-512", ...). */
b2b_read_fn b2b_pick_read(const char **name);

/* One read pass over buf (n floats) split over nt (<= 64) threads, each
 * pinned to its own CPU when the affinity mask has enough (two readers on
 * one CPU would halve the figure); returns GB/s. */
double b2b_mem_pass(b2b_read_fn fn, const float *buf, size_t n, int nt);

#endif
