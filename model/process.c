/*
 * process.c - blip2_process_prepare: what a program that computes with the
 * engine sets up for its whole process before anything else runs.
 *
 * oneDNN (the many-row products) runs on libgomp's OpenMP threads.  Unless
 * told otherwise, an idle libgomp thread spins for a while (GOMP_SPINCOUNT:
 * some milliseconds) after each parallel region, on the very CPUs the
 * engine's own pool and OpenBLAS need for the work between two products.
 * On two CPUs that halves what follows each product; under load the
 * spinners starve the rest (bench/RESULTS.md: a q8_0 prefill took 10.6 and
 * 13.1 s spinning, 2.5 and 2.8 s passive, in the same minutes).  libgomp
 * reads OMP_WAIT_POLICY once, in its constructor, before main(), and it is
 * loaded at start-up by libvips whatever we link; so the only way to change
 * it for this process is to run the program again with it set.
 *
 * malloc: a request's large buffers (a caption's key/value cache is two
 * blocks of 21 MiB for blip2-opt-2.7b; the vision encoder's activations)
 * are freed when it ends.  By default glibc maps such blocks afresh for
 * each request (or trims them off the heap), and the next request takes a
 * page fault on each of their thousands of pages: about 8,500 a caption,
 * each a trip through the kernel (and the hypervisor in a VM guest).
 * Keeping freed memory up to 256 MiB and blocks up to 32 MiB (glibc's
 * largest mmap threshold) on the heap lets the next request reuse them;
 * blip2d hands the heap back when its work runs out (malloc_trim).
 */
#include "blip2.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __GLIBC__ /* defined by the C library's headers above */
#include <malloc.h>
#endif

/* Freed memory stays for the next request (above), unless the user has
 * tuned malloc (GLIBC_TUNABLES, MALLOC_*_ variables). */
static void keep_freed_memory(void)
{
#ifdef __GLIBC__
    const char *t = getenv("GLIBC_TUNABLES");
    if ((t && strstr(t, "glibc.malloc.")) || getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_"))
        return;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

void blip2_process_prepare(char **argv)
{
    keep_freed_memory();
    if (!argv || !argv[0]) return;
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return; /* the user chose */
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "vgpreload")) return; /* under valgrind: an exec would leave it */
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 0) < 0) return;
    execv("/proc/self/exe", argv);
    /* not executed again (no /proc, say): go on as we are, spinning; the
     * variable stays set for any program this one starts */
}
