/*
 * pool.h - internal: the compute threads for the engine's own kernels.
 *
 * One process-wide pool (like OpenBLAS's own), created on first use with
 * as many threads as OpenBLAS uses, the caller's thread included, so our
 * kernels and sgemm never ask for more cores than OpenBLAS was given.
 * Workers sleep between jobs.  A call made while the pool is busy (another
 * thread's job, or from inside a job) runs on the calling thread alone, as
 * slot 0: a nested call must not share per-slot scratch with its outer job.
 * The size is fixed at first use (set OPENBLAS_NUM_THREADS to change both).
 */
#ifndef BLIP2_POOL_H
#define BLIP2_POOL_H

#include <stddef.h>

/* fn(ctx, task, slot) for task in [0, n), spread over the pool; returns
 * when all are done.  slot in [0, b2__pool_size()) is unique among the
 * tasks running at the same time (index per-thread scratch with it). */
void b2__parallel_for(int n, void (*fn)(void *ctx, int task, int slot), void *ctx);

/* Names the bytes the next product will read first: size bytes at p in
 * tasks stride bytes apart, of which each waiting thread reads the first
 * bytes (at most stride) of the task it will likely take into its caches
 * (see pool.c) until its wait ends; p NULL or size 0: none.  A hint, not a
 * promise: it stays until replaced, changes no result, and p may be freed
 * or unmapped meanwhile (a prefetch never faults). */
void b2__pool_prefetch_next(const void *p, size_t size, size_t stride, size_t bytes);

/* The most threads a b2__parallel_for may use (>= 1). */
int b2__pool_size(void);

#endif
