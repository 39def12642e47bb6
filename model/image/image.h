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
 * Applies EXIF orientation unless no_exif_rotate.  Fails with
 * BLIP2_EIMAGE for non-images or empty images and BLIP2_ETOOBIG above
 * max_pixels (0 = 64 Mpx default), checked before full decoding. */
int b2__decode_rgb(const void *bytes, size_t len, const blip2_image_opts *o,
                   uint8_t **rgb, int *w, int *h, blip2_error *err);

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
