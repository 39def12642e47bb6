/*
 * gen_image_corpus.c - writes the small seed images of fuzz_image with
 * libvips (PNG grey/RGB/RGBA/16-bit, JPEG, GIF, WebP lossy and lossless,
 * TIFF), a few pixels each.  Not part of the build:
 *   cc $(pkg-config --cflags vips) tests/fuzz/gen_image_corpus.c \
 *      $(pkg-config --libs vips) -o /tmp/gen && /tmp/gen DIR
 */
#include <stdio.h>
#include <vips/vips.h>

int main(int argc, char **argv)
{
    if (VIPS_INIT(argv[0])) vips_error_exit(NULL);
    const char *dir = argc > 1 ? argv[1] : ".";
    VipsImage *n, *g, *rgb, *rgba, *g16;
    if (vips_gaussnoise(&n, 9, 7, "mean", 128.0, "sigma", 60.0, NULL) ||
        vips_cast_uchar(n, &g, NULL) ||
        vips_bandjoin_const1(g, &rgba, 255.0, NULL))
        vips_error_exit(NULL);
    VipsImage *in[3] = { g, g, g };
    if (vips_bandjoin(in, &rgb, 3, NULL) || vips_cast_ushort(n, &g16, NULL))
        vips_error_exit(NULL);
    rgb->Type = VIPS_INTERPRETATION_sRGB;
    struct { VipsImage *im; const char *name; } out[] = {
        { g, "gray.png" }, { rgb, "rgb.png" }, { rgba, "ga.png" },
        { g16, "gray16.png" }, { rgb, "tiny.jpg[Q=50]" }, { g, "gray.jpg" },
        { rgb, "tiny.gif" }, { rgb, "tiny.webp" }, { rgb, "tiny_lossless.webp[lossless]" },
        { rgb, "tiny.tif" },
    };
    for (size_t i = 0; i < sizeof out / sizeof *out; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, out[i].name);
        if (vips_image_write_to_file(out[i].im, p, NULL)) vips_error_exit(NULL);
    }
    return 0;
}
