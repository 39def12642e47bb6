/*
 * image.c - image decoding (libvips) and BlipImageProcessor preprocessing.
 *
 * Data flow of b2__preprocess:
 *
 *   encoded bytes (PNG, JPEG, WebP, GIF's first frame, TIFF: nothing else)
 *     -> open_header: the loader libvips picks must be on the accepted list
 *        (every other loader is also blocked inside libvips, and TIFF's
 *        codecs are cut down to none/LZW/Deflate/PackBits/JPEG); only the
 *        header is read (sequential access, fail on truncation); the cost
 *        is checked from it before any pixel is decoded: width*height
 *        against max_pixels (decompression bombs) and, for JPEG, the
 *        number of scans counted from the markers (progressive scan bombs)
 *     -> to_rgb8: CMYK/Lab/... -> sRGB, 16-bit -> high byte, grey -> three
 *        equal bands, alpha dropped (what PIL convert("RGB") does)
 *     -> vips_sink_disc copies rows, as stored, into a malloc'd (H,W,3) u8
 *        buffer: the only full-size buffer (no rotated copy)
 *     -> b2__orient_view: the EXIF orientation as a view (strides) of that
 *        buffer
 *     -> b2__resize_view: Pillow 9.4's BICUBIC resample, bit for bit, read
 *        through the view.  Horizontal pass over the rows the vertical
 *        pass needs, fed through a ring of rows, then the vertical pass;
 *        Q22 fixed-point weights, rounding and clamping after each pass
 *     -> b2__normalize: f32 (u8 * rescale_factor - mean) / std, HWC -> CHW
 *        in the same float precision as the numpy reference
 *
 * No shrink-on-load: PIL resizes the fully decoded image, and any
 * reduction before that (JPEG DCT scaling, vips_thumbnail) changes the
 * bits of the 224x224 result, so images above the pixel limit are refused
 * instead.
 *
 * libvips is initialised once per process (pthread_once), with its
 * operation cache disabled (nothing outlives a call), every loader but the
 * accepted ones blocked, libtiff's other codecs replaced by a refusal, and
 * its warnings on stderr silenced; these settings are process-wide.  All
 * vips objects of one call hang off one local context object and are
 * released together.
 *
 * Where the result differs from PIL 9.4's open().convert("RGB") on purpose
 * or by libvips: CMYK goes through ICC (embedded or libvips' default
 * profile) instead of PIL's naive 255-C-K formula; 16-bit greyscale keeps
 * the high byte where PIL saturates at 255; transparent GIF pixels come out
 * black instead of their palette colour; EXIF orientation is applied
 * unless no_exif_rotate.  8-bit PNG, JPEG (libjpeg-turbo, same IDCT and
 * upsampling), WebP and TIFF decode to the same bytes as PIL.
 */
#include "image.h"
#include "error.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>
#include <vips/vips.h>

/* The resampling weights must have the same bits as Pillow's, which is
 * built without FMA: no contraction of a*b+c anywhere in this file (GCC
 * would otherwise fuse inlined code under -march with FMA). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ThreadSanitizer cannot see libvips' own synchronisation (GLib futexes),
 * so the rows sink_rows_cb writes on a libvips worker and this thread
 * reads after vips_sink_disc returned look like a race; vips_sink_disc
 * returns only after its last callback finished.  These annotations tell
 * TSan about that hand-off (scripts/test-tsan.sh); no code otherwise. */
#if defined(__SANITIZE_THREAD__)
#define B2_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define B2_TSAN 1
#endif
#endif
#ifdef B2_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define B2_TSAN_ACQUIRE(p) __tsan_acquire(p)
#define B2_TSAN_RELEASE(p) __tsan_release(p)
#else
#define B2_TSAN_ACQUIRE(p) ((void)(p))
#define B2_TSAN_RELEASE(p) ((void)(p))
#endif

#define B2_DEFAULT_MAX_PIXELS (64ull << 20) /* 64 Mpx */
/* Scans a JPEG may have.  Baseline JPEGs have 1 (or one per component),
 * the usual progressive scripts 6-12; each scan costs a pass over the
 * whole image's coefficients, and a valid file can have 2080 of them
 * (21 s of CPU at 8000x8000, tests/test_image_limits.c). */
#define B2_MAX_JPEG_SCANS 64
#define B2_RESIZE_SCRATCH_MAX (256u << 20)  /* weights + row ring, bytes */
/* Multiply-adds one resize may cost (both passes, 3 channels), about 1 s
 * of one core.  The vertical pass costs ~12*dw*sh whatever the width, so
 * without it a hostile image thousands of times taller than wide (2x2M
 * px: 5 s; 2x20M px: nearly a minute) passes the pixel and scratch limits
 * and ties up a thread; an 8000x8000 image needs 0.8e9.  The fuzzing
 * build (tests/fuzz) lowers it for its slower instrumented code. */
#ifndef B2_RESIZE_WORK_MAX
#define B2_RESIZE_WORK_MAX 2e9
#endif
#define B2_MAX_TARGET_SIDE 16384            /* sanity bound on size_h/w */

/* ---- libvips set-up ------------------------------------------------- */

/* The loaders untrusted bytes may reach, as libvips class names (the
 * _File/_Buffer/_Source subclasses follow their base), and the names the
 * errors use.  Everything else (HEIF/AVIF, SVG, PDF, JPEG 2000, JPEG XL,
 * ImageMagick's BMP/ICO/..., FITS, OpenEXR, PPM, Radiance, CSV, matrix,
 * the vips format) is blocked. */
static const struct {
    const char *cls, *name;
} accepted[] = {
    {"VipsForeignLoadPng", "PNG"},   {"VipsForeignLoadJpeg", "JPEG"},
    {"VipsForeignLoadWebp", "WebP"}, {"VipsForeignLoadNsgif", "GIF"},
    {"VipsForeignLoadTiff", "TIFF"},
};
#define B2_ACCEPTED "PNG, JPEG, WebP, GIF (first frame) or TIFF"

/* libtiff's codecs other than these are replaced by refuse_tiff_codec:
 * no compression, LZW, Deflate (both tags), PackBits, JPEG (new style).
 * Old-style JPEG, CCITT fax, JBIG, LZMA, ZSTD, WebP, LERC, PixarLog,
 * SGILog, NeXT and ThunderScan are refused. */
static const uint16_t tiff_codecs_kept[] = {
    COMPRESSION_NONE, COMPRESSION_LZW, COMPRESSION_ADOBE_DEFLATE,
    COMPRESSION_DEFLATE, COMPRESSION_PACKBITS, COMPRESSION_JPEG,
};

/* The scheme refuse_tiff_codec refused last on this thread (libtiff reads
 * the header on the caller's thread), for the error message. */
static _Thread_local int tiff_refused;

/* A libtiff codec init method that fails: TIFFReadDirectory cannot set the
 * compression, so the header read fails before any strip is decoded. */
static int refuse_tiff_codec(TIFF *tif, int scheme)
{
    (void)tif;
    tiff_refused = scheme;
    return 0;
}

static void restrict_tiff_codecs(void)
{
    TIFFCodec *all = TIFFGetConfiguredCODECs();
    if (!all)
        return;
    for (const TIFFCodec *c = all; c->name; c++) {
        int keep = 0;
        for (size_t i = 0; i < sizeof tiff_codecs_kept / sizeof *tiff_codecs_kept; i++)
            keep |= c->scheme == tiff_codecs_kept[i];
        if (!keep) /* registered codecs are looked up before built-in ones */
            TIFFRegisterCODEC(c->scheme, c->name, refuse_tiff_codec);
    }
    _TIFFfree(all);
}

static pthread_once_t vips_once = PTHREAD_ONCE_INIT;
static int vips_ready;
static uint64_t rows_decoded; /* b2__image_rows_decoded; atomic */

static void drop_log_cb(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer user)
{
    (void)domain; (void)level; (void)msg; (void)user;
}

static void vips_init_once(void)
{
    if (VIPS_INIT("blip2"))
        return;
    vips_cache_set_max(0);          /* no operation outlives its call */
    vips_block_untrusted_set(TRUE); /* no magick, matlab, ... loaders */
    vips_operation_block_set("VipsForeignLoad", TRUE); /* then the list */
    for (size_t i = 0; i < sizeof accepted / sizeof *accepted; i++)
        vips_operation_block_set(accepted[i].cls, FALSE);
    restrict_tiff_codecs();
    /* libvips reports damaged input as g_warning()s on stderr; the library
     * never logs (the caller gets the error), so those are dropped. */
    g_log_set_handler("VIPS", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO,
                      drop_log_cb, NULL);
    vips_ready = 1;
}

uint64_t b2__image_rows_decoded(void)
{
    return __atomic_load_n(&rows_decoded, __ATOMIC_RELAXED);
}

/* Takes (and clears) libvips' error text: the first line, trimmed, into
 * buf.  The buffer is process-wide, so under concurrency it may hold
 * another call's text or nothing; the caller's message stands anyway. */
static const char *vips_reason(char *buf, size_t size)
{
    char *e = vips_error_buffer_copy();
    size_t n = 0;
    if (e) {
        n = strcspn(e, "\n");
        if (n >= size)
            n = size - 1;
        memcpy(buf, e, n);
        g_free(e);
    }
    buf[n] = '\0';
    if (n == 0)
        snprintf(buf, size, "truncated or corrupt");
    return buf;
}

/* libvips started once per process; BLIP2_EIMAGE if it could not be. */
static int vips_start(blip2_error *err)
{
    char why[200];
    pthread_once(&vips_once, vips_init_once);
    if (!vips_ready)
        return b2__err(err, BLIP2_EIMAGE, "image: libvips failed to start: %s",
                       vips_reason(why, sizeof why));
    return 0;
}

/* Checks the input is not empty, then starts libvips (vips_start). */
static int vips_start_bytes(const void *bytes, size_t len, blip2_error *err)
{
    if (!bytes || len == 0)
        return b2__err(err, BLIP2_EIMAGE, "image: empty input (0 bytes)");
    return vips_start(err);
}

/* ---- decoding ------------------------------------------------------- */

/* Converts in (borrowed) to 3-band 8-bit sRGB as PIL convert("RGB") does:
 * grey replicated, alpha and extra bands dropped, 16 bits -> high byte.
 * Intermediates belong to ctx; *out is borrowed from ctx too. */
static int to_rgb8(VipsObject *ctx, VipsImage *in, VipsImage **out)
{
    VipsImage **t = (VipsImage **)vips_object_local_array(ctx, 6);
    VipsImage *x = in;

    switch (vips_image_guess_interpretation(x)) {
    case VIPS_INTERPRETATION_CMYK: /* embedded or built-in CMYK profile */
    case VIPS_INTERPRETATION_LAB:
    case VIPS_INTERPRETATION_LABQ:
    case VIPS_INTERPRETATION_LABS:
    case VIPS_INTERPRETATION_LCH:
    case VIPS_INTERPRETATION_CMC:
    case VIPS_INTERPRETATION_XYZ:
    case VIPS_INTERPRETATION_YXY:
    case VIPS_INTERPRETATION_scRGB:
    case VIPS_INTERPRETATION_HSV:
        if (vips_colourspace(x, &t[0], VIPS_INTERPRETATION_sRGB, NULL))
            return -1;
        x = t[0];
        break;
    default: /* sRGB, RGB16, B_W, GREY16, MULTIBAND ...: no ICC, as PIL */
        break;
    }

    if (x->BandFmt == VIPS_FORMAT_USHORT) { /* PIL keeps the high byte */
        if (vips_rshift_const1(x, &t[1], 8, NULL))
            return -1;
        x = t[1];
    }
    if (x->BandFmt != VIPS_FORMAT_UCHAR) {
        if (vips_cast_uchar(x, &t[2], NULL))
            return -1;
        x = t[2];
    }

    if (x->Bands >= 3) {
        if (x->Bands > 3) {
            if (vips_extract_band(x, &t[3], 0, "n", 3, NULL))
                return -1;
            x = t[3];
        }
    } else {
        VipsImage *g[3];
        if (x->Bands == 2) {
            if (vips_extract_band(x, &t[4], 0, NULL))
                return -1;
            x = t[4];
        }
        g[0] = g[1] = g[2] = x;
        if (vips_bandjoin(g, &t[5], 3, NULL))
            return -1;
        x = t[5];
    }
    *out = x;
    return 0;
}

typedef struct sink_rows {
    uint8_t *dst; /* (H,W,3) */
    size_t stride; /* W*3 */
    const blip2_image_opts *o; /* its stop callback, if any */
    int stopped;
} sink_rows;

/* vips_sink_disc calls this in row order with full-width areas. */
static int sink_rows_cb(VipsRegion *region, VipsRect *area, void *a)
{
    sink_rows *s = a;
    if (s->o && s->o->stop && s->o->stop(s->o->stop_ud)) {
        s->stopped = 1; /* vips_sink_disc ends with an error */
        return -1;
    }
    for (int y = area->top; y < area->top + area->height; y++)
        memcpy(s->dst + (size_t)y * s->stride,
               VIPS_REGION_ADDR(region, area->left, y), s->stride);
    __atomic_fetch_add(&rows_decoded, (uint64_t)area->height,
                       __ATOMIC_RELAXED);
    B2_TSAN_RELEASE(s); /* the rows, to the caller of vips_sink_disc */
    return 0;
}

/* The scans (SOS markers) of the JPEG p[0..n), counted from its marker
 * segments without decoding anything; stops at cap + 1.  libvips gives no
 * hook into libjpeg's progress monitor, which would count the same scans
 * only while paying for them.  Entropy-coded data runs up to the next
 * 0xFF that is neither a stuffed 0xFF00 nor a restart marker. */
static int jpeg_count_scans(const uint8_t *p, size_t n, int cap)
{
    size_t i = 2;
    int scans = 0;

    if (n < 4 || p[0] != 0xFF || p[1] != 0xD8)
        return 0;
    while (i + 1 < n) {
        uint8_t m = p[i + 1];
        if (p[i] != 0xFF || m == 0xFF) { /* stray byte, fill byte */
            i++;
            continue;
        }
        i += 2;
        if (m == 0xD9) /* EOI */
            break;
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD7))
            continue; /* no length */
        if (i + 2 > n)
            break;
        size_t seg = (size_t)p[i] << 8 | p[i + 1];
        if (seg < 2)
            break;
        i += seg;
        if (m != 0xDA)
            continue;
        if (++scans > cap)
            break;
        while (i + 1 < n && !(p[i] == 0xFF && p[i + 1] != 0x00 &&
                              !(p[i + 1] >= 0xD0 && p[i + 1] <= 0xD7)))
            i++;
    }
    return scans;
}

/* The accepted format whose loader class loader (libvips' *Buffer class)
 * is, or NULL. */
static const char *accepted_format(const char *loader)
{
    for (size_t i = 0; i < sizeof accepted / sizeof *accepted; i++) {
        size_t n = strlen(accepted[i].cls);
        if (!strncmp(loader, accepted[i].cls, n) &&
            !strcmp(loader + n, "Buffer"))
            return accepted[i].name;
    }
    return NULL;
}

static int refused_tiff(blip2_error *err)
{
    return b2__err(err, BLIP2_EIMAGE,
                   "image: TIFF compression %d is not accepted (send "
                   "uncompressed, LZW, Deflate, PackBits or JPEG TIFF)",
                   tiff_refused);
}

/* Reads the header of bytes into *img (owned by ctx) and checks what
 * decoding it will cost, filling *info; nothing is decoded.  The refusals
 * are the documented ones: a format not accepted, a TIFF codec not
 * accepted, too many JPEG scans (BLIP2_EIMAGE), too many pixels
 * (BLIP2_ETOOBIG). */
static int open_header(VipsObject *ctx, const void *bytes, size_t len,
                       const blip2_image_opts *o, VipsImage **img,
                       blip2_image_info *info, blip2_error *err)
{
    uint64_t max_px = o && o->max_pixels ? o->max_pixels
                                         : B2_DEFAULT_MAX_PIXELS;
    VipsImage **t = (VipsImage **)vips_object_local_array(ctx, 1);
    char why[200];

    memset(info, 0, sizeof *info);
    int rc = vips_start_bytes(bytes, len, err);
    if (rc < 0)
        return rc;

    /* libvips' TIFF sniffer opens the file with libtiff: a refused codec
     * fails there already, and the bytes look like no TIFF at all. */
    tiff_refused = 0;
    const char *loader = vips_foreign_find_load_buffer(bytes, len);
    if (tiff_refused && !(loader && accepted_format(loader))) {
        vips_error_clear();
        return refused_tiff(err);
    }
    if (!loader) {
        vips_error_clear();
        return b2__err(err, BLIP2_EIMAGE,
                       "image: %zu bytes in no known image format (send "
                       B2_ACCEPTED ")", len);
    }
    info->format = accepted_format(loader);
    if (!info->format) {
        static const struct {
            const char *cls, *name;
        } known[] = {
            {"VipsForeignLoadHeif", "HEIF/AVIF"},
            {"VipsForeignLoadMagick", "BMP, ICO and other ImageMagick"},
            {"VipsForeignLoadSvg", "SVG"}, {"VipsForeignLoadPdf", "PDF"},
            {"VipsForeignLoadJp2k", "JPEG 2000"},
            {"VipsForeignLoadJxl", "JPEG XL"},
        };
        const char *name = "these";
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            if (!strncmp(loader, known[i].cls, strlen(known[i].cls)))
                name = known[i].name;
        return b2__err(err, BLIP2_EIMAGE,
                       "image: %s images are not accepted (send "
                       B2_ACCEPTED ")", name);
    }
    if (!strcmp(info->format, "JPEG")) {
        info->scans = jpeg_count_scans(bytes, len, B2_MAX_JPEG_SCANS);
        if (info->scans > B2_MAX_JPEG_SCANS)
            return b2__err(err, BLIP2_EIMAGE,
                           "image: a JPEG with more than %d scans is not "
                           "accepted (each scan of a progressive JPEG is "
                           "another pass over the whole image)",
                           B2_MAX_JPEG_SCANS);
    }

    /* Header only: nothing is decoded until the sink. */
    t[0] = vips_image_new_from_buffer(bytes, len, "",
                                      "access", VIPS_ACCESS_SEQUENTIAL,
                                      "fail_on", VIPS_FAIL_ON_TRUNCATED, NULL);
    if (!t[0]) {
        if (tiff_refused) {
            vips_error_clear();
            return refused_tiff(err);
        }
        return b2__err(err, BLIP2_EIMAGE, "image: unreadable header: %s",
                       vips_reason(why, sizeof why));
    }
    VipsImage *x = t[0];
    uint64_t px = (uint64_t)x->Xsize * (uint64_t)x->Ysize;
    if (px > max_px)
        return b2__err(err, BLIP2_ETOOBIG,
                       "image: %dx%d is %llu pixels, above the limit of %llu",
                       x->Xsize, x->Ysize, (unsigned long long)px,
                       (unsigned long long)max_px);

    info->orientation = 1;
    if (!(o && o->no_exif_rotate)) {
        int or = vips_image_get_orientation(x);
        info->orientation = or >= 1 && or <= 8 ? or : 1;
    }
    int swap = info->orientation >= 5;
    info->width = swap ? x->Ysize : x->Xsize;
    info->height = swap ? x->Xsize : x->Ysize;
    /* The decoded (H,W,3) buffer, plus what the loader holds for the whole
     * image: libjpeg's coefficients of a multi-scan JPEG (2 bytes per
     * component and pixel at most), an interlaced PNG or GIF frame, a WebP
     * frame.  Baseline JPEG, plain PNG and TIFF stream a few rows. */
    uint64_t held = 0;
    size_t bps = vips_format_sizeof(x->BandFmt);
    if (!strcmp(info->format, "JPEG") && info->scans > 1)
        held = px * (uint64_t)x->Bands * 2;
    else if (!strcmp(info->format, "PNG") &&
             vips_image_get_typeof(x, "interlaced"))
        held = px * (uint64_t)x->Bands * bps;
    else if (!strcmp(info->format, "GIF") || !strcmp(info->format, "WebP"))
        held = px * 4;
    info->decode_bytes = (size_t)(px * 3 + held);
    *img = x;
    return 0;
}

int blip2_image_probe(const void *bytes, size_t len,
                      const blip2_image_opts *opts, blip2_image_info *info,
                      blip2_error *err)
{
    blip2_image_info tmp;
    VipsObject *ctx;
    VipsImage *x;
    int rc;

    if (!info)
        info = &tmp;
    memset(info, 0, sizeof *info);
    if ((rc = vips_start(err)) < 0)
        return rc;
    ctx = VIPS_OBJECT(vips_image_new());
    rc = open_header(ctx, bytes, len, opts, &x, info, err);
    g_object_unref(ctx);
    return rc;
}

/* Decodes bytes as stored (no orientation applied) into *rgb (H,W,3),
 * new; *orient is the EXIF orientation still to apply (1: none). */
static int decode_stored(const void *bytes, size_t len,
                         const blip2_image_opts *o, uint8_t **rgb, int *w,
                         int *h, int *orient, blip2_error *err)
{
    VipsObject *ctx = NULL;
    VipsImage *x;
    blip2_image_info info;
    uint8_t *buf = NULL;
    char why[200];
    int rc;

    *rgb = NULL;
    *w = *h = 0;
    *orient = 1;
    if ((rc = vips_start_bytes(bytes, len, err)) < 0)
        return rc;
    ctx = VIPS_OBJECT(vips_image_new());
    rc = open_header(ctx, bytes, len, o, &x, &info, err);
    if (rc < 0)
        goto fail;
    if (to_rgb8(ctx, x, &x) < 0) {
        rc = b2__err(err, BLIP2_EIMAGE, "image: colour conversion failed: %s",
                     vips_reason(why, sizeof why));
        goto fail;
    }
    buf = malloc((size_t)x->Xsize * (size_t)x->Ysize * 3);
    if (!buf) {
        rc = b2__err(err, BLIP2_ENOMEM, "image: out of memory for %dx%d RGB",
                     x->Xsize, x->Ysize);
        goto fail;
    }
    sink_rows s = {buf, (size_t)x->Xsize * 3, o, 0};
    if (o && o->stop && o->stop(o->stop_ud)) {
        rc = b2__err(err, BLIP2_ECANCELED, "image: decoding canceled");
        goto fail;
    }
    rc = vips_sink_disc(x, sink_rows_cb, &s);
    B2_TSAN_ACQUIRE(&s);
    if (rc && s.stopped) {
        vips_error_clear();
        rc = b2__err(err, BLIP2_ECANCELED, "image: decoding canceled");
        goto fail;
    }
    if (rc) {
        rc = b2__err(err, BLIP2_EIMAGE, "image: decode failed: %s",
                     vips_reason(why, sizeof why));
        goto fail;
    }
    *rgb = buf;
    *w = x->Xsize;
    *h = x->Ysize;
    *orient = info.orientation;
    g_object_unref(ctx);
    return 0;

fail:
    free(buf);
    g_object_unref(ctx);
    return rc;
}

void b2__orient_view(b2_rgb_view *v, const uint8_t *rgb, int w, int h,
                     int orientation)
{
    const ptrdiff_t px = 3, row = (ptrdiff_t)w * 3;
    const uint8_t *last_row = rgb + (ptrdiff_t)(h - 1) * row;
    const uint8_t *last_col = rgb + (ptrdiff_t)(w - 1) * px;

    /* Displayed pixel (x, y) -> stored pixel, as vips_autorot maps it. */
    switch (orientation) {
    case 2: /* mirrored: (w-1-x, y) */
        *v = (b2_rgb_view){last_col, -px, row, w, h};
        break;
    case 3: /* rotated 180: (w-1-x, h-1-y) */
        *v = (b2_rgb_view){last_row + (w - 1) * px, -px, -row, w, h};
        break;
    case 4: /* flipped: (x, h-1-y) */
        *v = (b2_rgb_view){last_row, px, -row, w, h};
        break;
    case 5: /* transposed: (y, x) */
        *v = (b2_rgb_view){rgb, row, px, h, w};
        break;
    case 6: /* rotated 90 clockwise: (y, h-1-x) */
        *v = (b2_rgb_view){last_row, -row, px, h, w};
        break;
    case 7: /* transversed: (w-1-y, h-1-x) */
        *v = (b2_rgb_view){last_row + (w - 1) * px, -row, -px, h, w};
        break;
    case 8: /* rotated 270 clockwise: (w-1-y, x) */
        *v = (b2_rgb_view){last_col, row, -px, h, w};
        break;
    default:
        *v = (b2_rgb_view){rgb, px, row, w, h};
        break;
    }
}

/* Row y of the view v into dst (w,3). */
static void view_row(uint8_t *dst, const b2_rgb_view *v, int y)
{
    const uint8_t *s = v->p + (ptrdiff_t)y * v->sy;
    if (v->sx == 3) {
        memcpy(dst, s, (size_t)v->w * 3);
        return;
    }
    for (int x = 0; x < v->w; x++, s += v->sx, dst += 3) {
        dst[0] = s[0];
        dst[1] = s[1];
        dst[2] = s[2];
    }
}

int b2__decode_rgb(const void *bytes, size_t len, const blip2_image_opts *o,
                   uint8_t **rgb, int *w, int *h, blip2_error *err)
{
    uint8_t *stored, *out;
    int sw, sh, orient;
    b2_rgb_view v;
    int rc = decode_stored(bytes, len, o, &stored, &sw, &sh, &orient, err);

    *rgb = NULL;
    *w = *h = 0;
    if (rc < 0)
        return rc;
    if (orient == 1) {
        *rgb = stored;
        *w = sw;
        *h = sh;
        return 0;
    }
    b2__orient_view(&v, stored, sw, sh, orient);
    out = malloc((size_t)sw * sh * 3);
    if (!out) {
        free(stored);
        return b2__err(err, BLIP2_ENOMEM, "image: out of memory for %dx%d RGB",
                       v.w, v.h);
    }
    for (int y = 0; y < v.h; y++)
        view_row(out + (size_t)y * v.w * 3, &v, y);
    free(stored);
    *rgb = out;
    *w = v.w;
    *h = v.h;
    return 0;
}

/* ---- PIL BICUBIC resampling ------------------------------------------ */

/*
 * Pillow's antialiasing resample, one axis at a time.  For output sample i
 * of an axis mapping in_size -> out_size:
 *   scale   = in_size / out_size, fscale = max(scale, 1)
 *   support = 2 * fscale (the bicubic kernel, a = -0.5, reaches +-2)
 *   center  = (i + 0.5) * scale
 *   taps j in [lo, hi): lo = trunc(center - support + 0.5) clamped >= 0,
 *                       hi = trunc(center + support + 0.5) clamped <= in
 *   w_j = cubic((j - center + 0.5) / fscale), normalised by their sum and
 *   rounded half away from zero to Q22 integers.
 * The double arithmetic is written in the same order as Pillow's so every
 * weight has the same bits (and FMA contraction is off, see the top).
 */
#define B2_PREC 22 /* 32 - 8 bits of pixel - 2 bits of headroom */

typedef struct axis {
    int in_size, out_size;
    int ksize;          /* most taps any output sample has */
    double scale, fscale, support;
} axis;

static void axis_init(axis *a, int in_size, int out_size)
{
    /* Pillow takes the box edges as floats: (float)in - 0.0f. */
    a->in_size = in_size;
    a->out_size = out_size;
    a->scale = (double)(float)in_size / out_size;
    a->fscale = a->scale < 1.0 ? 1.0 : a->scale;
    a->support = 2.0 * a->fscale;
    a->ksize = (int)ceil(a->support) * 2 + 1;
}

static double cubic(double x)
{
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Weights of output sample i: k (ksize, Q22), first input index *lo;
 * tmp is ksize doubles of scratch.  Returns the tap count. */
static int axis_taps(const axis *a, int i, int32_t *k, double *tmp, int *lo)
{
    double center = (i + 0.5) * a->scale;
    double inv = 1.0 / a->fscale;
    double sum = 0.0;
    int first = (int)(center - a->support + 0.5);
    int end = (int)(center + a->support + 0.5);
    if (first < 0)
        first = 0;
    if (end > a->in_size)
        end = a->in_size;
    int n = end - first;
    for (int j = 0; j < n; j++) {
        tmp[j] = cubic((j + first - center + 0.5) * inv);
        sum += tmp[j];
    }
    for (int j = 0; j < n; j++) {
        double v = sum != 0.0 ? tmp[j] / sum : tmp[j];
        k[j] = v < 0 ? (int32_t)(-0.5 + v * (1 << B2_PREC))
                     : (int32_t)(0.5 + v * (1 << B2_PREC));
    }
    for (int j = n; j < a->ksize; j++)
        k[j] = 0;
    *lo = first;
    return n;
}

static inline uint8_t clip_q(int32_t acc)
{
    int32_t v = acc >> B2_PREC; /* arithmetic shift, as Pillow's table */
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* One row through the horizontal weights: src (sw pixels, sx bytes apart,
 * 3 channels each) -> dst (dw,3).  kh (dw, ksize) Q22, lo/n (dw) first tap
 * and tap count.  Inlined with sx = 3 for the contiguous case. */
static inline __attribute__((always_inline)) void
hpass_row(uint8_t *dst, const uint8_t *src, ptrdiff_t sx, int dw, int ksize,
          const int32_t *kh, const int *lo, const int *n)
{
    for (int xx = 0; xx < dw; xx++) {
        const int32_t *k = kh + (size_t)xx * ksize;
        const uint8_t *s = src + lo[xx] * sx;
        int32_t r = 1 << (B2_PREC - 1), g = r, b = r;
        for (int j = 0; j < n[xx]; j++, s += sx) {
            r += s[0] * k[j];
            g += s[1] * k[j];
            b += s[2] * k[j];
        }
        dst[3 * xx + 0] = clip_q(r);
        dst[3 * xx + 1] = clip_q(g);
        dst[3 * xx + 2] = clip_q(b);
    }
}

/* The horizontal weights of one resize, for row_to. */
typedef struct hweights {
    int need;           /* 0: the row is copied */
    int dw, ksize;
    const int32_t *k;   /* (dw, ksize) */
    const int *lo, *n;  /* (dw) */
} hweights;

/* Row y of the view, horizontally resampled (or copied) into dst (dw,3). */
static void row_to(uint8_t *dst, const b2_rgb_view *v, int y,
                   const hweights *hw)
{
    const uint8_t *s = v->p + (ptrdiff_t)y * v->sy;
    if (!hw->need)
        view_row(dst, v, y);
    else if (v->sx == 3)
        hpass_row(dst, s, 3, hw->dw, hw->ksize, hw->k, hw->lo, hw->n);
    else
        hpass_row(dst, s, v->sx, hw->dw, hw->ksize, hw->k, hw->lo, hw->n);
}

int b2__resize_bicubic(const uint8_t *src, int sw, int sh,
                       uint8_t *dst, int dw, int dh)
{
    b2_rgb_view v = {src, 3, (ptrdiff_t)sw * 3, sw, sh};
    return b2__resize_view(&v, dst, dw, dh);
}

int b2__resize_view(const b2_rgb_view *v, uint8_t *dst, int dw, int dh)
{
    axis ax, ay;
    int sw = v->w, sh = v->h;
    int need_h = dw != sw, need_v = dh != sh;
    int direct = !need_h && v->sx == 3; /* rows read in place */
    int32_t *kh = NULL, *kv = NULL, *acc = NULL;
    int *lo_h = NULL, *n_h = NULL;
    double *tmp = NULL;
    uint8_t *ring = NULL;
    size_t row = (size_t)dw * 3;
    int rc = BLIP2_ENOMEM;

    if (sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0)
        return BLIP2_EINVAL;
    if (!need_h && !need_v) { /* Pillow copies */
        for (int y = 0; y < sh; y++)
            view_row(dst + (size_t)y * row, v, y);
        return 0;
    }
    axis_init(&ax, sw, dw);
    axis_init(&ay, sh, dh);

    /* Scratch: horizontal weights for every column, one set of vertical
     * weights, a ring of ksize_v horizontally resampled (or gathered)
     * rows. */
    double need = 0;
    if (need_h)
        need += (double)dw * ax.ksize * 4 + (double)dw * 8;
    if (need_v)
        need += (double)ay.ksize * (4 + row) + row * 4;
    need += (double)(ax.ksize > ay.ksize ? ax.ksize : ay.ksize) * 8;
    if (need > B2_RESIZE_SCRATCH_MAX)
        return BLIP2_ETOOBIG;
    double work = 0; /* multiply-adds, upper bound */
    if (need_h)
        work += (double)sh * dw * ax.ksize * 3;
    if (need_v)
        work += (double)dh * row * ay.ksize;
    if (work > B2_RESIZE_WORK_MAX)
        return BLIP2_ETOOBIG;

    tmp = malloc((size_t)(ax.ksize > ay.ksize ? ax.ksize : ay.ksize) *
                 sizeof *tmp);
    if (!tmp)
        goto done;
    if (need_h) {
        kh = malloc((size_t)dw * ax.ksize * sizeof *kh);
        lo_h = malloc((size_t)dw * sizeof *lo_h);
        n_h = malloc((size_t)dw * sizeof *n_h);
        if (!kh || !lo_h || !n_h)
            goto done;
        for (int xx = 0; xx < dw; xx++)
            n_h[xx] = axis_taps(&ax, xx, kh + (size_t)xx * ax.ksize, tmp,
                                &lo_h[xx]);
    }
    hweights hw = {need_h, dw, ax.ksize, kh, lo_h, n_h};

    if (!need_v) { /* rows map 1:1 */
        for (int y = 0; y < sh; y++)
            row_to(dst + (size_t)y * row, v, y, &hw);
        rc = 0;
        goto done;
    }

    /* Vertical pass.  The tap windows only move down as yy grows, so the
     * rows [lo, lo+n) an output row needs are the last n horizontally
     * resampled ones: keep ksize_v of them in a ring. */
    kv = malloc((size_t)ay.ksize * sizeof *kv);
    acc = malloc(row * sizeof *acc);
    if (!direct)
        ring = malloc((size_t)ay.ksize * row);
    if (!kv || !acc || (!direct && !ring))
        goto done;
    int next = 0; /* next source row to resample horizontally */
    for (int yy = 0; yy < dh; yy++) {
        int lo, n = axis_taps(&ay, yy, kv, tmp, &lo);
        if (!direct) {
            if (next < lo)
                next = lo; /* rows above every later window: skipped */
            for (; next < lo + n; next++)
                row_to(ring + (size_t)(next % ay.ksize) * row, v, next, &hw);
        }
        for (size_t c = 0; c < row; c++)
            acc[c] = 1 << (B2_PREC - 1);
        for (int j = 0; j < n; j++) {
            const uint8_t *s = direct
                ? v->p + (ptrdiff_t)(lo + j) * v->sy
                : ring + (size_t)((lo + j) % ay.ksize) * row;
            int32_t k = kv[j];
            for (size_t c = 0; c < row; c++)
                acc[c] += s[c] * k;
        }
        uint8_t *d = dst + (size_t)yy * row;
        for (size_t c = 0; c < row; c++)
            d[c] = clip_q(acc[c]);
    }
    rc = 0;

done:
    free(tmp);
    free(kh);
    free(lo_h);
    free(n_h);
    free(kv);
    free(acc);
    free(ring);
    return rc;
}

/* ---- rescale and normalise ------------------------------------------ */

void b2__normalize(const b2_preproc *p, const uint8_t *rgb, int w, int h,
                   float *px)
{
    /* The reference: float32(u8 * rescale_factor) with the product in
     * float64 (numpy), then (x - float32(mean)) / float32(std) in float32.
     * 256 values per channel: a table gives the same bits. */
    float lut[3][256];
    size_t hw = (size_t)w * h;

    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = p->do_rescale ? (float)(v * p->rescale_factor)
                                    : (float)v;
            if (p->do_normalize)
                x = (x - p->mean[c]) / p->std[c];
            lut[c][v] = x;
        }
    for (size_t i = 0; i < hw; i++) {
        px[i] = lut[0][rgb[3 * i + 0]];
        px[hw + i] = lut[1][rgb[3 * i + 1]];
        px[2 * hw + i] = lut[2][rgb[3 * i + 2]];
    }
}

/* ---- preprocessor_config.json ---------------------------------------- */

void b2__preproc_default(b2_preproc *p)
{
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    p->size_h = p->size_w = 224;
    p->do_resize = p->do_rescale = p->do_normalize = p->do_convert_rgb = 1;
    p->resample = 3;
    p->rescale_factor = 1.0 / 255.0;
    memcpy(p->mean, mean, sizeof mean);
    memcpy(p->std, std, sizeof std);
}

/* A flag: true/false, or 0/1 as Python's truthiness would take it; null
 * keeps the current value. */
static int get_flag(json_t *root, const char *key, int *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (json_is_boolean(v))
        *out = json_is_true(v);
    else if (json_is_integer(v))
        *out = json_integer_value(v) != 0;
    else
        return -1;
    return 0;
}

static int get_side(json_t *v, int *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > B2_MAX_TARGET_SIDE)
        return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

/* image_mean / image_std: three numbers, or one for all channels. */
static int get_triple(json_t *v, float out[3])
{
    if (json_is_number(v)) {
        out[0] = out[1] = out[2] = (float)json_number_value(v);
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) != 3)
        return -1;
    for (int c = 0; c < 3; c++) {
        json_t *e = json_array_get(v, c);
        if (!json_is_number(e))
            return -1;
        out[c] = (float)json_number_value(e);
    }
    return 0;
}

int b2__preproc_load(b2_preproc *p, const char *path, blip2_error *err)
{
    b2_preproc q;
    json_error_t je;
    json_t *root, *v;
    FILE *f;
    int rc = 0;

    b2__preproc_default(&q);
    f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) {
            *p = q;
            return 0;
        }
        return b2__err(err, BLIP2_EIO, "%s: %s", path, strerror(errno));
    }
    root = json_loadf(f, 0, &je);
    fclose(f);
    if (!root)
        return b2__err(err, BLIP2_EFORMAT, "%s: line %d: %s", path, je.line,
                       je.text);
    if (!json_is_object(root)) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }

    if (get_flag(root, "do_resize", &q.do_resize) ||
        get_flag(root, "do_rescale", &q.do_rescale) ||
        get_flag(root, "do_normalize", &q.do_normalize) ||
        get_flag(root, "do_convert_rgb", &q.do_convert_rgb)) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: a do_* field is not a boolean",
                     path);
        goto done;
    }

    if ((v = json_object_get(root, "size")) && !json_is_null(v)) {
        if (json_is_integer(v)) { /* an int means a square */
            if (get_side(v, &q.size_h) == 0)
                q.size_w = q.size_h;
            else
                v = NULL;
        } else if (json_is_object(v) && json_object_get(v, "height") &&
                   json_object_get(v, "width")) {
            if (get_side(json_object_get(v, "height"), &q.size_h) ||
                get_side(json_object_get(v, "width"), &q.size_w))
                v = NULL;
        } else if (json_is_object(v)) {
            rc = b2__err(err, BLIP2_EUNSUPPORTED,
                         "%s: size needs \"height\" and \"width\" (BLIP "
                         "resizes to a fixed size; shortest_edge and "
                         "friends are not supported)", path);
            goto done;
        } else {
            v = NULL;
        }
        if (!v) {
            rc = b2__err(err, BLIP2_EFORMAT,
                         "%s: size must hold integers in 1..%d", path,
                         B2_MAX_TARGET_SIDE);
            goto done;
        }
    }

    if ((v = json_object_get(root, "resample")) && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: resample is not an integer",
                         path);
            goto done;
        }
        if (json_integer_value(v) != 3) {
            rc = b2__err(err, BLIP2_EUNSUPPORTED,
                         "%s: resample=%lld is not supported (only 3, PIL "
                         "BICUBIC)", path, (long long)json_integer_value(v));
            goto done;
        }
        q.resample = 3;
    }

    if ((v = json_object_get(root, "rescale_factor")) && !json_is_null(v)) {
        double r = json_number_value(v);
        if (!json_is_number(v) || !(r > 0) || !isfinite(r)) {
            rc = b2__err(err, BLIP2_EFORMAT,
                         "%s: rescale_factor must be a positive number", path);
            goto done;
        }
        q.rescale_factor = r;
    }

    if (((v = json_object_get(root, "image_mean")) && !json_is_null(v) &&
         get_triple(v, q.mean)) ||
        ((v = json_object_get(root, "image_std")) && !json_is_null(v) &&
         get_triple(v, q.std))) {
        rc = b2__err(err, BLIP2_EFORMAT,
                     "%s: image_mean and image_std must be 3 numbers", path);
        goto done;
    }
    for (int c = 0; c < 3; c++)
        if (!(q.std[c] != 0) || !isfinite(q.std[c]) || !isfinite(q.mean[c])) {
            rc = b2__err(err, BLIP2_EFORMAT,
                         "%s: image_std must be finite and non-zero", path);
            goto done;
        }
    *p = q;

done:
    json_decref(root);
    return rc;
}

/* ---- the whole pipeline ---------------------------------------------- */

int b2__preprocess(const b2_preproc *p, const void *bytes, size_t len,
                   const blip2_image_opts *o, float *px, blip2_error *err)
{
    uint8_t *rgb = NULL, *rs = NULL;
    b2_rgb_view v;
    int w, h, orient, rc;

    if (p->resample != 3)
        return b2__err(err, BLIP2_EUNSUPPORTED,
                       "image: resample=%d is not supported (only 3, PIL "
                       "BICUBIC)", p->resample);
    if (p->size_w < 1 || p->size_h < 1)
        return b2__err(err, BLIP2_EINVAL, "image: bad target size %dx%d",
                       p->size_w, p->size_h);
    rc = decode_stored(bytes, len, o, &rgb, &w, &h, &orient, err);
    if (rc < 0)
        return rc;
    /* The orientation is read through the view: no rotated copy. */
    b2__orient_view(&v, rgb, w, h, orient);
    if ((v.w != p->size_w || v.h != p->size_h) && !p->do_resize) {
        rc = b2__err(err, BLIP2_EINVAL,
                     "image: %dx%d, but do_resize is off and the model "
                     "takes %dx%d", v.w, v.h, p->size_w, p->size_h);
        goto done;
    }
    rs = malloc((size_t)p->size_w * p->size_h * 3);
    if (!rs) {
        rc = b2__err(err, BLIP2_ENOMEM, "image: out of memory");
        goto done;
    }
    rc = b2__resize_view(&v, rs, p->size_w, p->size_h); /* or copies */
    if (rc == BLIP2_ETOOBIG) {
        rc = b2__err(err, rc, "image: %dx%d is too thin to resample to "
                     "%dx%d", v.w, v.h, p->size_w, p->size_h);
        goto done;
    }
    if (rc < 0) {
        rc = b2__err(err, rc, "image: out of memory while resizing %dx%d",
                     v.w, v.h);
        goto done;
    }
    b2__normalize(p, rs, p->size_w, p->size_h, px);

done:
    free(rgb);
    free(rs);
    return rc;
}
