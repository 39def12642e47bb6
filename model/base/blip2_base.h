/*
 * blip2_base.h - the public vocabulary every layer of libblip2model shares:
 * the error codes and error struct, the image decoding options, and what
 * an image costs to decode (blip2_image_probe, implemented in image/).
 *
 * Part of the public API (blip2.h includes it); it sits in model/base/, the
 * lowest layer, so that compute/, formats/, text/, image/ and nn/ can use
 * these types without including the top-level blip2.h.
 */
#ifndef BLIP2_BASE_H
#define BLIP2_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (negative returns). Stable: the daemon maps them to protocol codes. */
enum {
    BLIP2_OK = 0,
    BLIP2_EINVAL = -1,    /* bad argument or parameter out of range */
    BLIP2_EIO = -2,       /* a file could not be opened or read */
    BLIP2_EFORMAT = -3,   /* a model file is corrupt, truncated or mis-shaped */
    BLIP2_ENOMEM = -4,    /* allocation failed */
    BLIP2_EIMAGE = -5,    /* bytes are not a decodable image, or empty */
    BLIP2_ETOOBIG = -6,   /* image above the pixel limit, prompt too long */
    BLIP2_ECANCELED = -7, /* the token callback asked to stop */
    BLIP2_EUNSUPPORTED = -8 /* a model or feature this build does not handle */
};

/* Detailed error, filled by the caller-provided struct (like json_error_t). */
typedef struct blip2_error {
    int code;        /* one of BLIP2_E* */
    char text[320];  /* one line, no trailing newline */
} blip2_error;

/* Static description of a code; never NULL. */
const char *blip2_strerror(int code);

typedef struct blip2_image_opts {
    int no_exif_rotate;   /* 1: ignore EXIF orientation (the reference does) */
    uint64_t max_pixels;  /* decoded width*height limit; 0 = default (64 Mpx) */
    /* Optional: polled before decoding and between bands of rows while
     * decoding, on whatever thread decodes (libvips' workers too); once it
     * returns nonzero the decode stops with BLIP2_ECANCELED.  For a server
     * whose client has gone. */
    int (*stop)(void *stop_ud);
    void *stop_ud;
} blip2_image_opts;

/* What an image's header says, read by blip2_image_probe without decoding
 * a pixel (docs/security.md, "Images"). */
typedef struct blip2_image_info {
    const char *format;  /* "PNG", "JPEG", "WebP", "GIF", "TIFF" (static) */
    int width, height;   /* as displayed: after the EXIF orientation */
    int orientation;     /* EXIF 1..8 that will be applied (1: none) */
    int scans;           /* JPEG: scans (1 baseline, more progressive); else 0 */
    size_t decode_bytes; /* memory a decode holds at its peak: the decoded
                          * RGB plus what the decoder keeps of the whole
                          * image (a few MiB of rows and scratch besides) */
} blip2_image_info;

/* Whether bytes would be accepted, and what decoding them would cost, from
 * the header alone (no pixel is decoded): the format (PNG, JPEG, WebP,
 * GIF's first frame, TIFF with no compression, LZW, Deflate, PackBits or
 * JPEG; nothing else), the JPEG scans (at most 64) and width*height
 * against opts->max_pixels.  Fills *info (may be NULL).  Returns 0,
 * BLIP2_EIMAGE (not an image, or refused; err says why) or BLIP2_ETOOBIG
 * (too many pixels).  blip2_preprocess makes the same checks first; a
 * server calls this to charge decode_bytes to a memory budget before it
 * decodes.  Thread-safe; opts may be NULL. */
int blip2_image_probe(const void *bytes, size_t len,
                      const blip2_image_opts *opts, blip2_image_info *info,
                      blip2_error *err);

#ifdef __cplusplus
}
#endif

#endif
