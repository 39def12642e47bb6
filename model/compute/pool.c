/*
 * pool.c - the compute thread pool behind b2__parallel_for.
 *
 *   caller: lock, publish job (fn, ctx, n), gen++, broadcast if a
 *           worker sleeps, unlock -> takes tasks itself (atomic counter)
 *           -> waits until every worker that joined has left the job
 *   worker: wait until gen changes (polling it for up to SPIN_NS first,
 *           then asleep on `wake`) -> take tasks until none are left ->
 *           leave, signal `done` if the caller sleeps on it -> wait again
 * The caller likewise polls for the workers' leaving before it sleeps,
 * and broadcasts only when a worker sleeps.  A decode step is a few
 * hundred small jobs tens of microseconds apart; a futex wake and the
 * sleeper's trip through the scheduler cost about as much as one of them
 * (most in a VM guest), so a worker that waits a little catches the next
 * job without either.
 * Tasks are handed out one at a time from a shared counter, so a stalled
 * vCPU delays only the task it holds.  Busy pool (another thread's job)
 * or a call from inside a task: the caller runs every task itself (slot 0).  A woken worker moves off the
 * caller's CPU (avoid_cpu below).  Workers live as long as the process;
 * in a child after fork() the caller simply runs every task.
 * A decode step streams one weight after another; between two products a
 * thread would only wait (a worker: the caller's last task and serial
 * work; the caller: the workers' last tasks), so it first reads into its
 * caches the first bytes of the task it will take of the product that
 * comes next, if the caller named it (b2__pool_prefetch_next below), and
 * the next product starts on bytes already near the cores.
 */
#include "pool.h"

#include <cblas.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define POOL_MAX 64
#define SPIN_NS 50000 /* how long a waiter polls before it sleeps */

static struct {
    pthread_once_t once;
    int size;                 /* threads including the caller */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    unsigned gen;             /* job generation (written under mu, polled without) */
    int busy;                 /* a job is being run */
    void (*fn)(void *, int, int);
    void *ctx;
    int n;
    int next;                 /* next task (atomic) */
    unsigned active;          /* workers inside the current job (as gen) */
    int sleepers;             /* workers asleep on wake */
    int caller_waits;         /* the caller sleeps on done */
    int caller_cpu;           /* where the job's caller runs (-1: unknown) */
    cpu_set_t allowed;        /* the process's CPUs at start-up */
    /* the next product's first bytes (b2__pool_prefetch_next; atomic:
     * waiting threads read them without mu) */
    const char *pf_p;
    size_t pf_size, pf_stride, pf_bytes;
    unsigned pf_gen;          /* changed with each new hint */
} P = {.once = PTHREAD_ONCE_INIT, .mu = PTHREAD_MUTEX_INITIALIZER,
       .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

/* set while this thread runs tasks: a nested call runs inline */
static __thread int in_task;

static void run_tasks(void (*fn)(void *, int, int), void *ctx, int n, int slot)
{
    in_task = 1;
    for (;;) {
        int t = __atomic_fetch_add(&P.next, 1, __ATOMIC_RELAXED);
        if (t >= n) break;
        fn(ctx, t, slot);
    }
    in_task = 0;
}

/* Keeps a worker off the caller's CPU.  OpenBLAS's idle threads spin with
 * sched_yield() for a while after each sgemm, so the scheduler sees every
 * CPU busy and often wakes a worker next to the caller, halving both;
 * moving it elsewhere lets it share a CPU only with a yielding spinner. */
static void avoid_cpu(int cpu, int *avoided)
{
    if (cpu < 0 || cpu == *avoided || !CPU_ISSET(cpu, &P.allowed) || CPU_COUNT(&P.allowed) < 2) return;
    cpu_set_t cs = P.allowed;
    CPU_CLR(cpu, &cs);
    if (sched_setaffinity(0, sizeof cs, &cs) == 0) *avoided = cpu;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Polls *p for up to SPIN_NS while (*p == v) == eq. */
static void spin_while(const unsigned *p, unsigned v, int eq)
{
    const long long end = now_ns() + SPIN_NS;
    for (int i = 1; (__atomic_load_n(p, __ATOMIC_ACQUIRE) == v) == eq; i++) {
        cpu_relax();
        if (!(i & 63) && now_ns() >= end) break;
    }
}

/* How far a thread has read the hinted bytes: the hint it read them for,
 * and the offset reached (it resumes there after a job). */
typedef struct pf_state {
    unsigned gen;
    size_t off;
} pf_state;

#define PF_STEP 4096 /* bytes read between two looks at what it waits for */

/* While (*wp == v) == eq (a worker: no job comes; the caller: workers are
 * still in its job), reads the hinted bytes of the task this slot is
 * likely to take first: slot s takes task s of the next job (the caller,
 * slot 0, starts on task 0 the moment it publishes), so it reads
 * [s * stride, s * stride + bytes), and a worker then task 0's too, which
 * the caller will find in the shared cache.  A prefetch never faults, so
 * a hint replaced mid-way costs nothing but the bytes. */
static void prefetch_while(const unsigned *wp, unsigned v, int eq, int slot, pf_state *st)
{
    const unsigned g = __atomic_load_n(&P.pf_gen, __ATOMIC_ACQUIRE);
    if (g != st->gen) *st = (pf_state){g, 0};
    const char *p = __atomic_load_n(&P.pf_p, __ATOMIC_RELAXED);
    const size_t size = __atomic_load_n(&P.pf_size, __ATOMIC_RELAXED);
    const size_t stride = __atomic_load_n(&P.pf_stride, __ATOMIC_RELAXED);
    const size_t bytes = __atomic_load_n(&P.pf_bytes, __ATOMIC_RELAXED);
    if (!p) return;
    const size_t all = slot ? 2 * bytes : bytes;
    while (st->off < all && (__atomic_load_n(wp, __ATOMIC_ACQUIRE) == v) == eq) {
        const size_t o = st->off < bytes ? (size_t)slot * stride + st->off : st->off - bytes;
        if (o >= size) { /* no such task: on to task 0's */
            st->off = st->off < bytes ? bytes : 2 * bytes;
            continue;
        }
        const size_t end = size - o < PF_STEP ? size - o : PF_STEP;
        for (size_t b = 0; b < end; b += 64) __builtin_prefetch(p + o + b, 0, 3);
        st->off += PF_STEP;
    }
}

void b2__pool_prefetch_next(const void *p, size_t size, size_t stride, size_t bytes)
{
    if (b2__pool_size() == 1) return;
    if (bytes > stride) bytes = stride;
    __atomic_store_n(&P.pf_p, size && bytes ? (const char *)p : NULL, __ATOMIC_RELAXED);
    __atomic_store_n(&P.pf_size, size, __ATOMIC_RELAXED);
    __atomic_store_n(&P.pf_stride, stride, __ATOMIC_RELAXED);
    __atomic_store_n(&P.pf_bytes, (bytes + PF_STEP - 1) / PF_STEP * PF_STEP, __ATOMIC_RELAXED);
    __atomic_fetch_add(&P.pf_gen, 1, __ATOMIC_RELEASE);
}

static void *worker(void *arg)
{
    const int slot = (int)(long)arg;
    unsigned seen = 0;
    int avoided = -1;
    pf_state pf = {0, 0};
    pthread_mutex_lock(&P.mu);
    for (;;) {
        if (P.gen == seen) {
            pthread_mutex_unlock(&P.mu);
            prefetch_while(&P.gen, seen, 1, slot, &pf);
            spin_while(&P.gen, seen, 1);
            pthread_mutex_lock(&P.mu);
            P.sleepers++;
            while (P.gen == seen) pthread_cond_wait(&P.wake, &P.mu);
            P.sleepers--;
        }
        seen = P.gen;
        if (!P.busy) continue; /* the job already finished without us */
        void (*fn)(void *, int, int) = P.fn;
        void *ctx = P.ctx;
        int n = P.n, cpu = P.caller_cpu;
        __atomic_store_n(&P.active, P.active + 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&P.mu);
        avoid_cpu(cpu, &avoided);
        run_tasks(fn, ctx, n, slot);
        pthread_mutex_lock(&P.mu);
        __atomic_store_n(&P.active, P.active - 1, __ATOMIC_RELEASE);
        if (P.active == 0 && P.caller_waits) pthread_cond_signal(&P.done);
    }
    return NULL;
}

static void pool_init(void)
{
    int n = openblas_get_num_threads();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus > 0 && n > cpus) n = (int)cpus;
    if (n < 1) n = 1;
    if (n > POOL_MAX) n = POOL_MAX;
    if (sched_getaffinity(0, sizeof P.allowed, &P.allowed) != 0) CPU_ZERO(&P.allowed);
    P.size = 1;
    for (int i = 1; i < n; i++) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, worker, (void *)(long)i) == 0) P.size++;
        pthread_attr_destroy(&at);
    }
}

int b2__pool_size(void)
{
    pthread_once(&P.once, pool_init);
    return P.size;
}

void b2__parallel_for(int n, void (*fn)(void *ctx, int task, int slot), void *ctx)
{
    if (n <= 0) return;
    if (n == 1 || in_task || b2__pool_size() == 1) {
        for (int t = 0; t < n; t++) fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&P.mu);
    if (P.busy) { /* another thread's job */
        pthread_mutex_unlock(&P.mu);
        for (int t = 0; t < n; t++) fn(ctx, t, 0);
        return;
    }
    P.busy = 1;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.caller_cpu = sched_getcpu();
    __atomic_store_n(&P.next, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&P.gen, P.gen + 1, __ATOMIC_RELEASE);
    if (P.sleepers) pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    run_tasks(fn, ctx, n, 0);
    static __thread pf_state pf; /* the caller's progress through the hint */
    prefetch_while(&P.active, 0, 0, 0, &pf);

    /* busy until every worker that joined has left: the task counter and
     * the job stay theirs until then; later wakers see !busy and wait.
     * (A worker that joins after the poll saw none is waited for below.) */
    spin_while(&P.active, 0, 0);
    pthread_mutex_lock(&P.mu);
    P.caller_waits = 1;
    while (P.active > 0) pthread_cond_wait(&P.done, &P.mu);
    P.caller_waits = 0;
    P.busy = 0;
    pthread_mutex_unlock(&P.mu);
}
