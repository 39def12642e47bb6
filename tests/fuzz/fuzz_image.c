/*
 * fuzz_image.c - libFuzzer target: image decoding and preprocessing through
 * libvips.
 *
 * The input is an encoded image (PNG, JPEG, GIF, WebP, TIFF, ...) as a
 * client would send it.  b2__preprocess decodes it with a 4 Mpx limit
 * (checked from the header, before full decoding), resizes it to 224x224
 * and normalises it.  The last byte's low bit toggles EXIF rotation.
 * libvips runs single-threaded with its operation cache off, so memory and
 * time stay bounded per input.
 */
#include "image.h"

#include <stdlib.h>

#define FUZZ_MAX_PIXELS (4u << 20)

static b2_preproc pp;
static float *px;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    setenv("VIPS_CONCURRENCY", "1", 1);
    b2__preproc_default(&pp);
    px = malloc(sizeof *px * 3 * (size_t)pp.size_h * (size_t)pp.size_w);
    if (!px) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    blip2_image_opts o = { .no_exif_rotate = size && (data[size - 1] & 1),
                           .max_pixels = FUZZ_MAX_PIXELS };
    blip2_error err;
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    if (b2__decode_rgb(data, size, &o, &rgb, &w, &h, &err) == 0) {
        if (w <= 0 || h <= 0 || (uint64_t)w * (uint64_t)h > FUZZ_MAX_PIXELS) abort();
        free(rgb);
        b2__preprocess(&pp, data, size, &o, px, &err);
    }
    return 0;
}
