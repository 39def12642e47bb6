/*
 * blip2_base.h - the public vocabulary every layer of libblip2model shares:
 * the error codes and error struct, and the image decoding options.
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
} blip2_image_opts;

#ifdef __cplusplus
}
#endif

#endif
