/*
 * pages.c - a weight file's mapping in 2 MiB pages (see pages.h).
 *
 * How the pages already cached are mapped is read back from the kernel
 * (/proc/self/smaps, FilePmdMapped of this mapping) after touching one
 * byte of each 2 MiB piece that mincore says is wholly cached: touching
 * maps a 2 MiB folio with one 2 MiB page, small folios with 4 KiB ones.
 */
#include "pages.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define LARGE ((size_t)2 << 20)
#define MIN_PROBED ((size_t)64 << 20) /* below this a re-read is not worth a look */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif

/* FilePmdMapped of the mapping that starts at map, in bytes; 0 if absent */
static size_t pmd_mapped(const void *map)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f) return 0;
    char line[512];
    int in = 0;
    size_t kb = 0;
    while (fgets(line, sizeof line, f)) {
        uintptr_t a, b;
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2) { /* a mapping's first line */
            if (in) break;
            in = a == (uintptr_t)map;
        } else if (in && sscanf(line, "FilePmdMapped: %zu kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb << 10;
}

/* Touches one byte of every 2 MiB piece wholly in the page cache; the
 * bytes of those pieces (0 when mincore cannot tell) */
static size_t probe(const unsigned char *map, size_t size, size_t page)
{
    const size_t pages = (size + page - 1) / page, per = LARGE / page;
    unsigned char *vec = malloc(pages);
    if (!vec) return 0;
    size_t probed = 0;
    if (mincore((void *)map, size, vec) == 0) {
        volatile unsigned char sink = 0;
        for (size_t p = 0; p + per <= pages; p += per) {
            size_t i = 0;
            while (i < per && (vec[p + i] & 1)) i++;
            if (i < per) continue;
            sink ^= map[p * page];
            probed += LARGE;
        }
        (void)sink;
    }
    free(vec);
    return probed;
}

void b2__map_large_pages(void *map, size_t size, const char *path, b2_map_pages *st)
{
    memset(st, 0, sizeof *st);
    st->size = size;
    const char *env = getenv("BLIP2_LARGE_PAGES");
    if (env && strcmp(env, "off") == 0) {
        st->off = 1;
        return;
    }
    const long pg = sysconf(_SC_PAGESIZE);
    if (!map || size < LARGE || pg <= 0 || LARGE % (size_t)pg) return;
    madvise(map, size, MADV_HUGEPAGE); /* EINVAL where the kernel has no THP: nothing to do */
    if ((uintptr_t)map % LARGE) {
        st->unaligned = 1;
        return;
    }
    st->probed = probe(map, size, (size_t)pg);
    if (st->probed >= MIN_PROBED) st->large = pmd_mapped(map);
    if (st->probed < MIN_PROBED || st->large >= st->probed / 10 * 9) {
        if (size - st->probed < LARGE) return; /* cached whole (but for a last piece) */
        /* The rest is read in now, in 2 MiB folios where the kernel can,
         * rather than by the first requests' faults (see pages.h). */
        if (madvise(map, size, MADV_POPULATE_READ) == 0) {
            st->readin = size - st->probed;
            st->large_after = pmd_mapped(map);
        }
        return;
    }
    /* Mostly small folios: drop them (dirty ones written back first, so
     * they can go) and read the file again through the mapping. */
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    fdatasync(fd);
    madvise(map, size, MADV_DONTNEED); /* this mapping's page-table entries; the data stays the file's */
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    st->reread = st->probed - probe(map, size, (size_t)pg); /* what is still cached is mapped elsewhere */
    if (madvise(map, size, MADV_POPULATE_READ) == 0)
        st->large_after = pmd_mapped(map);
    else
        st->lazy = 1; /* before Linux 5.14: read on first use */
}

static double gib(size_t b) { return (double)b / (1u << 30); }

void b2__map_pages_describe(const b2_map_pages *st, char *buf, size_t size)
{
    if (st->off)
        snprintf(buf, size, "weights: as the kernel maps them (BLIP2_LARGE_PAGES=off)");
    else if (st->unaligned)
        snprintf(buf, size, "weights: the mapping is not on a 2 MiB boundary, 4 KiB pages");
    else if (st->reread && st->lazy)
        snprintf(buf, size, "weights: %.1f GiB were cached in small pages, dropped to be read again on first use",
                 gib(st->reread));
    else if (st->reread)
        snprintf(buf, size, "weights: %.1f GiB were cached in small pages, read again: %.0f %% of %.1f GiB in 2 MiB pages",
                 gib(st->reread), 100.0 * (double)st->large_after / (double)st->size, gib(st->size));
    else if (st->readin)
        snprintf(buf, size, "weights: %.1f GiB read in at load: %.0f %% of %.1f GiB in 2 MiB pages", gib(st->readin),
                 100.0 * (double)st->large_after / (double)st->size, gib(st->size));
    else if (st->probed >= MIN_PROBED)
        snprintf(buf, size, "weights in 2 MiB pages: %.0f %% of the %.1f GiB cached", 100.0 * (double)st->large / (double)st->probed,
                 gib(st->probed));
    else
        snprintf(buf, size, "weights: 2 MiB pages asked for, read on first use");
}
