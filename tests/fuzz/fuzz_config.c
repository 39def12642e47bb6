/*
 * fuzz_config.c - libFuzzer target: config.json and the sharded checkpoint
 * index (model.safetensors.index.json).
 *
 * The first input byte picks the parser, the rest is the file.  Even:
 * written to a memfd and parsed by b2__config_load through
 * /proc/self/fd/N.  Odd: written as model.safetensors.index.json into a
 * private temporary directory that also holds two small valid shards
 * (a.safetensors, b.safetensors), then b2__weights_open maps the shards the
 * index names, refusing names that leave the directory.
 */
#define _GNU_SOURCE
#include "config.h"
#include "model.h"
#include "safetensors.h"
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char dir[64];

/* weights.c converts F16/BF16 with the SIMD kernels; b2__weights_open
 * never converts, so portable loops stand in for kernels.c here. */
void b2__f16_to_f32_n(float *y, const void *x, size_t n);
void b2__bf16_to_f32_n(float *y, const void *x, size_t n);
void b2__f16_to_f32_n(float *y, const void *x, size_t n)
{
    const uint16_t *h = x;
    for (size_t i = 0; i < n; i++) y[i] = b2__f16_to_f32(h[i]);
}
void b2__bf16_to_f32_n(float *y, const void *x, size_t n)
{
    const uint16_t *h = x;
    for (size_t i = 0; i < n; i++) y[i] = b2__bf16_to_f32(h[i]);
}

static void cleanup(void)
{
    char p[128];
    const char *names[] = { "model.safetensors.index.json", "a.safetensors", "b.safetensors" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    snprintf(dir, sizeof dir, "/tmp/b2fuzz-config-XXXXXX");
    if (!mkdtemp(dir)) abort();
    atexit(cleanup);
    static const float v[4] = { 1, 2, 3, 4 };
    b2_tensor t = { .name = "w", .dtype = B2_F32, .ndim = 2, .shape = { 2, 2 },
                    .data = v, .nbytes = sizeof v };
    blip2_error err;
    char p[128];
    snprintf(p, sizeof p, "%s/a.safetensors", dir);
    if (b2__st_write(p, &t, 1, &err)) abort();
    t.name = "x";
    snprintf(p, sizeof p, "%s/b.safetensors", dir);
    if (b2__st_write(p, &t, 1, &err)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    blip2_error err;
    if (!(data[0] & 1)) {
        int fd = memfd_create("config.json", MFD_CLOEXEC);
        if (fd < 0) abort();
        if (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) abort();
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        b2_config c;
        b2__config_load(&c, path, &err);
        close(fd);
    } else {
        char path[128];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        FILE *f = fopen(path, "wb");
        if (!f) abort();
        if (size > 1 && fwrite(data + 1, 1, size - 1, f) != size - 1) abort();
        if (fclose(f)) abort();
        blip2_model *m = calloc(1, sizeof *m);
        if (!m) abort();
        b2__weights_open(m, dir, &err);
        b2__weights_close(m);
        free(m);
    }
    return 0;
}
