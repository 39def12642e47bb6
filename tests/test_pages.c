/*
 * test_pages.c - b2__map_large_pages (model/formats/pages.c): a file just
 * written is cached in small folios; mapped, it is found so and read
 * again, with every byte of it unchanged; a second mapping then finds it
 * in 2 MiB pages when the file system gave them, and is not read again.
 * A file below 64 MiB is probed and left alone; a file not in the page
 * cache is read in at load, every byte intact; no mapping, or a file
 * gone from its path, is left as it is, every byte intact;
 * BLIP2_LARGE_PAGES=off does nothing; the one-line descriptions for the
 * load report.  The 96 MiB files live in the current directory (the
 * build tree), not in /tmp, which may be a tmpfs: its pages are the
 * file, nothing can drop them, and the re-read checks are then skipped.
 * TAP output.
 */
#include "pages.h"
#include "tap.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

static uint64_t word(size_t i) { return (uint64_t)i * 0x9e3779b97f4a7c15ull ^ (i >> 7); }

/* a file of n MiB of word(i), written 1 MiB at a time as a download or
 * blip2ctl convert writes; 0 on success */
static int write_file(const char *path, size_t mib)
{
    const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    uint64_t *buf = malloc(MIB);
    int rc = buf ? 0 : -1;
    for (size_t c = 0; rc == 0 && c < mib; c++) {
        for (size_t j = 0; j < MIB / 8; j++) buf[j] = word(c * (MIB / 8) + j);
        if (write(fd, buf, MIB) != (ssize_t)MIB) rc = -1;
    }
    free(buf);
    if (close(fd) != 0) rc = -1;
    return rc;
}

static void *map_file(const char *path, size_t *size)
{
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    void *m = fstat(fd, &st) == 0 ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    *size = (size_t)st.st_size;
    return m == MAP_FAILED ? NULL : m;
}

/* the index of the first word that is not word(i), or n */
static size_t first_wrong(const uint64_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != word(i)) return i;
    return n;
}

static int has(const char *s, const char *part) { return strstr(s, part) != NULL; }

/* pages of [m, m + size) in the page cache (mincore; 0 when it fails) */
static size_t resident(const void *m, size_t size)
{
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE), pages = (size + pg - 1) / pg;
    unsigned char *vec = malloc(pages);
    size_t n = 0;
    if (vec && mincore((void *)m, size, vec) == 0)
        for (size_t i = 0; i < pages; i++) n += vec[i] & 1;
    free(vec);
    return n;
}

static void descriptions(void)
{
    char b[200];
    b2_map_pages st = {.off = 1};
    b2__map_pages_describe(&st, b, sizeof b);
    ok(has(b, "BLIP2_LARGE_PAGES=off"), "off: %s", b);
    st = (b2_map_pages){.unaligned = 1};
    b2__map_pages_describe(&st, b, sizeof b);
    ok(has(b, "not on a 2 MiB boundary"), "unaligned: %s", b);
    st = (b2_map_pages){.size = 4 * 1024 * MIB, .probed = 4 * 1024 * MIB, .reread = 3 * 1024 * MIB,
                        .large_after = 4 * 1024 * MIB - 40 * MIB};
    b2__map_pages_describe(&st, b, sizeof b);
    ok(has(b, "3.0 GiB were cached in small pages, read again: 99 % of 4.0 GiB in 2 MiB pages"), "re-read: %s", b);
    st.lazy = 1;
    b2__map_pages_describe(&st, b, sizeof b);
    ok(has(b, "3.0 GiB were cached in small pages, dropped to be read again on first use"), "re-read later: %s", b);
    st = (b2_map_pages){.size = 4 * 1024 * MIB, .probed = 2 * 1024 * MIB, .large = 1024 * MIB};
    b2__map_pages_describe(&st, b, sizeof b);
    ok(has(b, "weights in 2 MiB pages: 50 % of the 2.0 GiB cached"), "probed: %s", b);
    st = (b2_map_pages){.size = 4 * 1024 * MIB, .probed = 1024 * MIB, .large = 1024 * MIB, .readin = 3 * 1024 * MIB,
                        .large_after = 4 * 1024 * MIB};
    b2__map_pages_describe(&st, b, sizeof b);
    ok(has(b, "weights: 3.0 GiB read in at load: 100 % of 4.0 GiB in 2 MiB pages"), "read in: %s", b);
    st = (b2_map_pages){.size = 4 * 1024 * MIB, .probed = 32 * MIB};
    b2__map_pages_describe(&st, b, sizeof b);
    ok(has(b, "read on first use"), "little cached: %s", b);
}

int main(void)
{
    descriptions();

    char path[64], small[64];
    snprintf(path, sizeof path, "test_pages.%ld.bin", (long)getpid());
    snprintf(small, sizeof small, "test_pages.%ld.small", (long)getpid());
    const size_t mib = 96, n = mib * MIB / 8;
    if (!ok(write_file(path, mib) == 0 && write_file(small, 8) == 0, "write the files")) {
        unlink(path);
        unlink(small);
        return tap_done();
    }
    struct statfs fs;
    const int tmpfs = statfs(path, &fs) == 0 && fs.f_type == TMPFS_MAGIC;

    /* 1. just written: probed, found in small pages, read again */
    size_t size = 0;
    uint64_t *m = map_file(path, &size);
    b2_map_pages st;
    if (m) b2__map_large_pages(m, size, path, &st);
    ok(m && size == mib * MIB && !st.off && st.size == size, "the mapping, %zu bytes", size);
    if (m) {
        diag("written: probed %zu MiB, in 2 MiB pages %zu MiB, re-read %zu MiB, then %zu MiB in 2 MiB pages%s%s",
             st.probed >> 20, st.large >> 20, st.reread >> 20, st.large_after >> 20, st.unaligned ? " (unaligned)" : "",
             tmpfs ? " (tmpfs)" : "");
        ok(st.probed <= size && st.large <= st.probed && st.reread <= st.probed && st.large_after <= size,
           "the figures are within the mapping");
        ok(first_wrong(m, n) == n, "every byte as written, after the probe and any re-read");
        if (st.unaligned || tmpfs) {
            ok(1, "# SKIP the mapping is not on 2 MiB or the file is on tmpfs");
            ok(1, "# SKIP the same");
        } else {
            ok(st.probed >= 64 * MIB, "the file just written is found in the page cache (%zu MiB)", st.probed >> 20);
            ok(st.large >= st.probed / 10 * 9 || st.reread > 0,
               "found in small pages (%zu of %zu MiB large), it is read again", st.large >> 20, st.probed >> 20);
        }
        munmap(m, size);
    }

    /* 2. a second mapping: what the re-read left is found, not read again */
    m = map_file(path, &size);
    b2_map_pages st2;
    if (m) {
        b2__map_large_pages(m, size, path, &st2);
        diag("again: probed %zu MiB, in 2 MiB pages %zu MiB, re-read %zu MiB", st2.probed >> 20, st2.large >> 20,
             st2.reread >> 20);
        ok((st2.reread > 0) == (st2.probed >= 64 * MIB && st2.large < st2.probed / 10 * 9),
           "read again exactly when less than 90 %% of 64 MiB or more is in 2 MiB pages");
        if (st.reread && !st.lazy && st.large_after >= size / 10 * 9)
            ok(st2.large >= st2.probed / 10 * 9 && st2.reread == 0, "after a re-read into 2 MiB pages, found so and left alone");
        else
            ok(1, "# SKIP the file system gave no 2 MiB pages (%zu MiB after the re-read)", st.large_after >> 20);
        ok(first_wrong(m, n) == n, "every byte as written, second mapping");
        munmap(m, size);
    }

    /* 3. below 64 MiB: probed, nothing more */
    m = map_file(small, &size);
    if (m) {
        b2__map_large_pages(m, size, small, &st);
        ok(st.probed <= size && st.large == 0 && st.reread == 0, "8 MiB: probed %zu MiB, not read again", st.probed >> 20);
        ok(first_wrong(m, size / 8) == size / 8, "every byte as written, 8 MiB");
        munmap(m, size);
    }

    /* 4. bad input: no mapping; a file gone from its path (renamed or
     * deleted under a running daemon): found in small pages, it cannot be
     * reopened to drop them, so it is left as it is, every byte intact */
    b2__map_large_pages(NULL, 0, path, &st);
    ok(st.size == 0 && st.probed == 0 && st.reread == 0 && !st.off, "no mapping: nothing done");
    char gone[64];
    snprintf(gone, sizeof gone, "test_pages.%ld.gone", (long)getpid());
    m = write_file(gone, mib) == 0 ? map_file(gone, &size) : NULL;
    if (m) {
        unlink(gone);
        b2__map_large_pages(m, size, gone, &st);
        ok(st.reread == 0 && st.large_after == 0, "a file gone from its path: not read again");
        ok(first_wrong(m, n) == n, "every byte as written, file gone from its path");
        munmap(m, size);
    } else {
        unlink(gone);
        ok(0, "write and map %s", gone);
    }

    /* 5. not in the page cache: read in at load, every byte intact, and
     * a second mapping finds it all cached */
    {
        const int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            close(fd);
        }
    }
    m = map_file(path, &size);
    if (m) {
        const size_t pages = size / (size_t)sysconf(_SC_PAGESIZE), cached = resident(m, size);
        b2__map_large_pages(m, size, path, &st);
        diag("dropped: %zu of %zu pages cached; probed %zu MiB, read in %zu MiB, then %zu MiB in 2 MiB pages",
             cached, pages, st.probed >> 20, st.readin >> 20, st.large_after >> 20);
        if (st.unaligned || tmpfs || cached * 2 > pages) {
            ok(1, "# SKIP the file stayed cached, or its mapping is not on 2 MiB");
            ok(1, "# SKIP the same");
        } else {
            const size_t after = resident(m, size);
            ok(st.readin >= size - st.probed && st.readin > 0 && st.reread == 0 && after == pages,
               "not cached: read in at load (%zu MiB), every page cached after (%zu of %zu)", st.readin >> 20, after,
               pages);
            char b[256];
            b2__map_pages_describe(&st, b, sizeof b);
            ok(has(b, "read in at load") && has(b, "in 2 MiB pages"), "its report: %s", b);
        }
        ok(first_wrong(m, n) == n, "every byte as written, after the read-in");
        munmap(m, size);
        m = map_file(path, &size);
        if (m) {
            b2__map_large_pages(m, size, path, &st2);
            ok(st2.readin == 0 && st2.reread == 0, "a second mapping finds it cached: nothing read (%zu MiB probed)",
               st2.probed >> 20);
            munmap(m, size);
        }
    }

    /* 6. BLIP2_LARGE_PAGES=off */
    m = map_file(path, &size);
    if (m) {
        setenv("BLIP2_LARGE_PAGES", "off", 1);
        b2__map_large_pages(m, size, path, &st);
        unsetenv("BLIP2_LARGE_PAGES");
        ok(st.off && st.probed == 0 && st.reread == 0 && st.size == size, "BLIP2_LARGE_PAGES=off: nothing done");
        munmap(m, size);
    }
    unlink(path);
    unlink(small);
    return tap_done();
}
