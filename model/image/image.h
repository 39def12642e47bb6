/*
 * image.h - internal: image decoding and BlipImageProcessor preprocessing.
 *
 * Data flow: encoded bytes --libvips--> decoded 8-bit RGB (H,W,3) (EXIF
 * rotation, colour conversion, alpha dropped as PIL convert("RGB") does)
 * --b2__resize_bicubic--> (h,w,3) u8, bit-exact with PIL's BICUBIC resize
 * --b2__normalize--> pixel_values (3,h,w) f32.
 */
#ifndef BLIP2_IMAGE_H
#define BLIP2_IMAGE_H
#include <stddef.h>
#include <stdint.h>
#include "error.h"

/* Preprocessor settings from preprocessor_config.json. */
typedef struct b2_preproc {
    int size_h, size_w;     /* target size (224) */
    int do_resize, do_rescale, do_normalize, do_convert_rgb;
    int resample;           /* PIL code; only 3 (BICUBIC) is supported */
    double rescale_factor;  /* 1/255 */
    float mean[3], std[3];
} b2_preproc;

/* Fills p with BlipImageProcessor defaults (224, bicubic, OpenAI CLIP mean/std). */
void b2__preproc_default(b2_preproc *p);

/* Parses preprocessor_config.json at path into p (starting from defaults).
 * A missing file is not an error (defaults are kept); a malformed one is. */
int b2__preproc_load(b2_preproc *p, const char *path, blip2_error *err);

/* Decodes bytes into 8-bit RGB, row-major (H,W,3).  *rgb is new (free()).
 * Applies EXIF orientation unless no_exif_rotate (into a second buffer:
 * b2__preprocess reads the orientation through a view instead).  Fails,
 * before any pixel is decoded, as blip2_image_probe does: BLIP2_EIMAGE for
 * non-images, empty images, formats and TIFF codecs not accepted and JPEGs
 * with more than 64 scans, BLIP2_ETOOBIG above max_pixels (0 = 64 Mpx);
 * BLIP2_EIMAGE for pixel data that does not decode. */
int b2__decode_rgb(const void *bytes, size_t len, const blip2_image_opts *o,
                   uint8_t **rgb, int *w, int *h, blip2_error *err);

/* Rows the decoder has delivered in this process, all calls together:
 * tests use it to check that a refused image decoded nothing. */
uint64_t b2__image_rows_decoded(void);

/* A read-only view of an interleaved RGB u8 image, w x h: pixel (x, y)
 * starts at p + x*sx + y*sy (strides in bytes, possibly negative).
 * Borrowed: p stays owned by whoever decoded it. */
typedef struct b2_rgb_view {
    const uint8_t *p;
    ptrdiff_t sx, sy;
    int w, h;
} b2_rgb_view;

/* *v = the image rgb (h,w,3, as stored) displayed with EXIF orientation
 * 1..8, as vips_autorot would turn it (5..8 swap w and h); anything else
 * is taken as 1.  No pixel is copied. */
void b2__orient_view(b2_rgb_view *v, const uint8_t *rgb, int w, int h,
                     int orientation);

/* b2__resize_bicubic of the image v shows: the same bits as resizing a
 * copy laid out row by row (dst (dh,dw,3), caller-owned); same errors. */
int b2__resize_view(const b2_rgb_view *v, uint8_t *dst, int dw, int dh);

/* PIL Image.resize((dw,dh), BICUBIC) on interleaved RGB u8, bit-exact:
 * separable antialiased convolution, horizontal pass then vertical, fixed-
 * point weights, rounding and clamping after each pass.  dst is (dh,dw,3),
 * caller-owned.  Returns 0, BLIP2_ENOMEM, BLIP2_EINVAL for a zero or
 * negative size, or BLIP2_ETOOBIG when the scratch it needs (weights and a
 * ring of rows, O(sw + dw*sh/dh)) passes 256 MiB or its work (multiply-
 * adds, ~12*(sw*sh + dw*sh)) passes 2e9 (about a second): only for images
 * thousands of times longer than wide, such as 2x2000000. */
int b2__resize_bicubic(const uint8_t *src, int sw, int sh,
                       uint8_t *dst, int dw, int dh);

/* rgb (h,w,3) u8 -> px (3,h,w) f32 with rescale and normalise as p says. */
void b2__normalize(const b2_preproc *p, const uint8_t *rgb, int w, int h,
                   float *px);

/* Whole pipeline into px (3,size_h,size_w). */
int b2__preprocess(const b2_preproc *p, const void *bytes, size_t len,
                   const blip2_image_opts *o, float *px, blip2_error *err);

#endif
