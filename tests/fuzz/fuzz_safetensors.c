/*
 * fuzz_safetensors.c - libFuzzer target: the safetensors header parser.
 *
 * The input is a whole safetensors file.  It is written to a memfd and
 * opened through /proc/self/fd/N, so b2__st_open maps it exactly as it maps
 * a checkpoint.  On success every tensor is looked up by name and its data
 * converted, so an offset or shape the parser failed to check against the
 * file size shows up as an out-of-bounds read.
 */
#define _GNU_SOURCE
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (fd < 0) abort();
    if (size && write(fd, data, size) != (ssize_t)size) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    b2_st_file *f = NULL;
    blip2_error err;
    if (b2__st_open(&f, path, &err) == 0) {
        int n = b2__st_count(f);
        for (int i = 0; i < n; i++) {
            const b2_tensor *t = b2__st_at(f, i);
            if (!t || !t->name || b2__st_find(f, t->name) == NULL) abort();
            if (t->ndim < 0 || t->ndim > B2_MAX_DIMS) abort();
            int64_t numel = b2__tensor_numel(t);
            if (numel < 0) abort();
            if ((size_t)numel * b2__dtype_size(t->dtype) != t->nbytes) abort();
            if (numel > (1 << 16)) continue;
            float *fo = malloc(sizeof *fo * (size_t)(numel ? numel : 1));
            int32_t *io = malloc(sizeof *io * (size_t)(numel ? numel : 1));
            if (!fo || !io) abort();
            b2__to_f32(t, fo);
            if (t->dtype >= B2_I64) b2__to_i32(t, io);
            free(fo);
            free(io);
        }
        b2__st_close(f);
    } else if (f) {
        abort(); /* failure leaves nothing to close */
    }
    close(fd);
    return 0;
}
