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

/* fn(ctx, task, slot) for task in [0, n), spread over the pool; returns
 * when all are done.  slot in [0, b2__pool_size()) is unique among the
 * tasks running at the same time (index per-thread scratch with it). */
void b2__parallel_for(int n, void (*fn)(void *ctx, int task, int slot), void *ctx);

/* The most threads a b2__parallel_for may use (>= 1). */
int b2__pool_size(void);

#endif
