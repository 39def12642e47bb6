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
 */
#include "blip2.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void blip2_process_prepare(char **argv)
{
    if (!argv || !argv[0]) return;
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return; /* the user chose */
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "vgpreload")) return; /* under valgrind: an exec would leave it */
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 0) < 0) return;
    execv("/proc/self/exe", argv);
    /* not executed again (no /proc, say): go on as we are, spinning; the
     * variable stays set for any program this one starts */
}
