/*
 * pages.h - a weight file's mapping in 2 MiB pages.
 *
 * A decode step reads every weight once.  Mapped with 4 KiB pages, each
 * 4 KiB costs the CPU a page-table walk, and on a virtual machine whose
 * page tables the host shadows, far more: on the 2-vCPU guests of
 * bench/RESULTS.md a bf16 decode step took 2.4 s with the file in small
 * pages against 0.1 s in 2 MiB ones (entry of 2026-12-07 21:00).  The
 * kernel maps a file with 2 MiB pages where its page cache holds it in
 * 2 MiB folios: what reading it in gives on file systems with large
 * folios (ext4 and xfs of recent kernels), but not what writing it leaves:
 * a file just written by blip2ctl convert, a download or cp is cached
 * in small folios until the cache drops it.
 */
#ifndef B2_PAGES_H
#define B2_PAGES_H

#include <stddef.h>

/* What b2__map_large_pages found and did, in bytes. */
typedef struct b2_map_pages {
    int off;         /* BLIP2_LARGE_PAGES=off: nothing was done */
    int unaligned;   /* the mapping does not start on 2 MiB: no 2 MiB page can map it */
    size_t size;     /* the mapping */
    size_t probed;   /* the 2 MiB pieces that were wholly in the page cache, touched once each */
    size_t large;    /* of those, mapped with 2 MiB pages */
    size_t reread;   /* dropped from the page cache and read again (0: not needed) */
    size_t readin;   /* not in the page cache, read in at load (0: all was, or could not be) */
    size_t large_after; /* after the re-read or read-in, the whole mapping: mapped with 2 MiB pages */
    int lazy;        /* the re-read is left to the first use (no MADV_POPULATE_READ) */
} b2_map_pages;

/* For the read-only MAP_SHARED mapping [map, map + size) of the file at
 * path: asks for 2 MiB pages (MADV_HUGEPAGE), then finds how the part
 * already in the page cache is mapped by touching one byte of every
 * 2 MiB piece wholly in it.  When at least 64 MiB was probed and less
 * than 90 % of it got 2 MiB pages, the file's cached pages are dropped
 * (written back first; pages another process maps stay) and the whole
 * mapping is read again (MADV_POPULATE_READ), which the kernel does in
 * 2 MiB folios where the file system allows.  Otherwise, what was not
 * cached is read in the same way now: the first requests do not read
 * the disk, and their faults under a full page cache had left much of a
 * file in small folios (bench/RESULTS.md, 2026-12-08).  Call before
 * anything else reads the mapping.  The environment variable
 * BLIP2_LARGE_PAGES=off skips all of it.  Never fails: what it could not
 * do shows in *st. */
void b2__map_large_pages(void *map, size_t size, const char *path, b2_map_pages *st);

/* One line for the load report from *st, e.g. "weights in 2 MiB pages:
 * 99 % of the 4.7 GiB cached", "weights: 4.7 GiB were cached in small
 * pages, read again: 100 % of 4.7 GiB in 2 MiB pages" or "weights: 3.1
 * GiB read in at load: 100 % of 4.7 GiB in 2 MiB pages". */
void b2__map_pages_describe(const b2_map_pages *st, char *buf, size_t size);

#endif
