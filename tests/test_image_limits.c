/*
 * test_image_limits.c - what an untrusted image may cost, checked before
 * its pixels are decoded (docs/security.md, "Images").
 *
 * Each hostile image is made here, in memory:
 *   - a JPEG with EXIF orientation 6 (6000x4000): preprocessing resizes
 *     from the decoded buffer through an oriented view, so the peak RSS
 *     grows by about one decoded image (the old path, a rotated copy,
 *     took two); all eight orientations give the bits vips_autorot +
 *     resize give;
 *   - progressive JPEGs written with libjpeg's own scan scripts: 64 scans
 *     decode, 65 and a 2080-scan bomb (21 s of CPU at 8000x8000 before the
 *     cap) are refused from the markers, with no row decoded;
 *   - a PNG whose header says 100000x100000: too_large, no row decoded,
 *     RSS flat;
 *   - formats outside the accepted list (HEIF/AVIF, SVG, PDF, BMP) and
 *     TIFF codecs outside it (ZSTD, WebP, CCITT G4): refused with the
 *     documented message, no row decoded; LZW, Deflate, PackBits and
 *     JPEG-in-TIFF decode.
 *   - a stop callback (blip2_image_opts.stop, a server's canceled job)
 *     ends a decode in progress with BLIP2_ECANCELED.
 * "No row decoded" is b2__image_rows_decoded(), a counter of the rows the
 * decoder delivered; memory is ru_maxrss.  No test depends on time.
 */
#include "image.h"
#include "tap.h"

#include <jpeglib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <vips/vips.h>

static long maxrss_kib(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_maxrss;
}

/* ---- images made with libjpeg: progressive with a chosen scan script -- */

typedef struct membuf {
    unsigned char *p;
    unsigned long n;
} membuf;

static void add_scan(jpeg_scan_info *s, int *n, int comp, int ss, int se,
                     int ah, int al)
{
    jpeg_scan_info *x = &s[(*n)++];
    memset(x, 0, sizeof *x);
    x->comps_in_scan = comp < 0 ? 3 : 1;
    for (int i = 0; i < x->comps_in_scan; i++)
        x->component_index[i] = comp < 0 ? i : comp;
    x->Ss = ss;
    x->Se = se;
    x->Ah = ah;
    x->Al = al;
}

/* A progressive JPEG of side x side (a gradient) with the script s. */
static membuf jpeg_with_script(int side, const jpeg_scan_info *s, int n)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    membuf m = {NULL, 0};
    unsigned char *row = malloc((size_t)side * 3);
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &m.p, &m.n);
    c.image_width = c.image_height = (JDIMENSION)side;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    c.scan_info = s;
    c.num_scans = n;
    jpeg_start_compress(&c, TRUE);
    for (int y = 0; y < side; y++) {
        for (int x = 0; x < side * 3; x++)
            row[x] = (unsigned char)((x * 7 + y * 3) & 255);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    return m;
}

/* Exactly n scans (n >= 64 - 61 + 3... see below), every coefficient sent:
 * DC of all components, components 1 and 2 in one AC scan each, and
 * component 0's 63 AC coefficients split over n - 3 scans. */
static membuf jpeg_n_scans(int side, int n)
{
    jpeg_scan_info s[80];
    int k = 0, parts = n - 3, lo = 1;
    add_scan(s, &k, -1, 0, 0, 0, 0);
    add_scan(s, &k, 1, 1, 63, 0, 0);
    add_scan(s, &k, 2, 1, 63, 0, 0);
    for (int i = 0; i < parts; i++) { /* 63 coefficients in parts bands */
        int hi = 63 * (i + 1) / parts;
        add_scan(s, &k, 0, lo, hi, 0, 0);
        lo = hi + 1;
    }
    return jpeg_with_script(side, s, k);
}

/* The scan bomb: every AC coefficient of every component alone, first at
 * Al=10 then refined bit by bit: 1 + 3*63*11 = 2080 valid scans. */
static membuf jpeg_scan_bomb(int side)
{
    static jpeg_scan_info s[2100];
    int k = 0;
    add_scan(s, &k, -1, 0, 0, 0, 0);
    for (int c = 0; c < 3; c++)
        for (int co = 1; co <= 63; co++) {
            add_scan(s, &k, c, co, co, 0, 10);
            for (int a = 10; a > 0; a--)
                add_scan(s, &k, c, co, co, a, a - 1);
        }
    return jpeg_with_script(side, s, k);
}

/* ---- helpers --------------------------------------------------------- */

/* w x h, 3 bands of noise (seeded), as uchar. */
static VipsImage *noise(int w, int h)
{
    VipsImage *n = NULL, *u = NULL, *b[3];
    for (int i = 0; i < 3; i++) {
        b[i] = NULL;
        vips_gaussnoise(&b[i], w, h, "mean", 128.0, "sigma", 60.0,
                        "seed", 7 + i, NULL);
    }
    vips_bandjoin(b, &n, 3, NULL);
    vips_cast_uchar(n, &u, NULL);
    for (int i = 0; i < 3; i++)
        g_object_unref(b[i]);
    g_object_unref(n);
    u->Type = VIPS_INTERPRETATION_sRGB;
    return u;
}

static void *save(VipsImage *im, const char *suffix, int orientation,
                  size_t *len)
{
    VipsImage *cp = NULL;
    void *buf = NULL;
    *len = 0;
    if (vips_copy(im, &cp, NULL))
        return NULL;
    if (orientation)
        vips_image_set_int(cp, "orientation", orientation);
    if (vips_image_write_to_buffer(cp, suffix, &buf, len, NULL))
        buf = NULL;
    g_object_unref(cp);
    return buf;
}

static unsigned long crc32_png(const unsigned char *p, size_t n)
{
    unsigned long c = 0xffffffffUL;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320UL ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xffffffffUL;
}

/* The refusal of bytes: rc, the message holds want, no row decoded. */
static void refused(const void *bytes, size_t len, int want_rc,
                    const char *want, const char *name)
{
    b2_preproc p;
    blip2_error err;
    static float px[3 * 224 * 224];
    uint64_t rows0 = b2__image_rows_decoded();
    b2__preproc_default(&p);
    memset(&err, 0, sizeof err);
    int rc = b2__preprocess(&p, bytes, len, NULL, px, &err);
    ok(rc == want_rc && strstr(err.text, want) &&
       b2__image_rows_decoded() == rows0,
       "%s: refused (%d) before decoding: %s", name, rc, err.text);
}

/* ---- the tests --------------------------------------------------------- */

/* First in the process, so that ru_maxrss measures this decode. */
static void test_rotated_memory(void)
{
    const int W = 6000, H = 4000;
    VipsImage *b = NULL;
    size_t len;
    vips_black(&b, W, H, "bands", 3, NULL);
    b->Type = VIPS_INTERPRETATION_sRGB;
    void *jpg = save(b, ".jpg", 6, &len);
    g_object_unref(b);
    if (!ok(jpg != NULL, "made a %dx%d JPEG with orientation 6", W, H))
        return;
    b2_preproc p;
    blip2_error err;
    static float px[3 * 224 * 224];
    b2__preproc_default(&p);
    long before = maxrss_kib();
    int rc = b2__preprocess(&p, jpg, len, NULL, px, &err);
    long grew = maxrss_kib() - before;
    long one = (long)W * H * 3 / 1024;
    ok(rc == 0, "rotated %dx%d JPEG preprocessed", W, H);
    ok(grew < one * 3 / 2,
       "peak RSS grew %ld KiB, under 1.5 decoded images (%ld KiB)", grew,
       one * 3 / 2);
    g_free(jpg);
}

/* Every orientation: the view gives vips_autorot's pixels, and the
 * preprocessed result is resize(autorot(decode)) bit for bit. */
static void test_orientations(void)
{
    VipsImage *im = noise(37, 23);
    for (int o = 1; o <= 8; o++) {
        size_t len;
        void *jpg = save(im, ".jpg[Q=90]", o, &len);
        blip2_image_opts raw = {.no_exif_rotate = 1};
        uint8_t *s = NULL, *r = NULL, *rs = NULL;
        int w, h, rw, rh, good = 0;
        b2_preproc p;
        blip2_error err;
        static float px[3 * 224 * 224], want[3 * 224 * 224];
        b2__preproc_default(&p);
        if (jpg && b2__decode_rgb(jpg, len, &raw, &s, &w, &h, &err) == 0 &&
            b2__decode_rgb(jpg, len, NULL, &r, &rw, &rh, &err) == 0) {
            VipsImage *m = vips_image_new_from_memory(s, (size_t)w * h * 3, w,
                                                      h, 3, VIPS_FORMAT_UCHAR);
            VipsImage *rot = NULL;
            size_t n = 0;
            void *ref = NULL;
            vips_image_set_int(m, "orientation", o);
            if (vips_autorot(m, &rot, NULL) == 0 &&
                (ref = vips_image_write_to_memory(rot, &n)) &&
                n == (size_t)rw * rh * 3 && rot->Xsize == rw &&
                rot->Ysize == rh && memcmp(ref, r, n) == 0 &&
                (rs = malloc(224 * 224 * 3)) &&
                b2__resize_bicubic(ref, rw, rh, rs, 224, 224) == 0) {
                b2__normalize(&p, rs, 224, 224, want);
                good = b2__preprocess(&p, jpg, len, NULL, px, &err) == 0 &&
                       memcmp(px, want, sizeof px) == 0;
            }
            g_free(ref);
            if (rot)
                g_object_unref(rot);
            g_object_unref(m);
        }
        ok(good, "orientation %d: decode = vips_autorot, preprocess = "
           "resize(autorot) bit for bit", o);
        free(s);
        free(r);
        free(rs);
        g_free(jpg);
    }
    g_object_unref(im);
}

static void test_scans(void)
{
    b2_preproc p;
    blip2_error err;
    static float px[3 * 224 * 224];
    b2__preproc_default(&p);

    membuf m64 = jpeg_n_scans(256, 64);
    blip2_image_info info;
    int rc = blip2_image_probe(m64.p, m64.n, NULL, &info, &err);
    ok(rc == 0 && info.scans == 64 && !strcmp(info.format, "JPEG") &&
       info.width == 256 && info.height == 256,
       "probe: a 64-scan progressive JPEG, 256x256 (scans %d)", info.scans);
    ok(b2__preprocess(&p, m64.p, m64.n, NULL, px, &err) == 0,
       "64 scans (the limit) decode");
    free(m64.p);

    membuf m65 = jpeg_n_scans(256, 65);
    refused(m65.p, m65.n, BLIP2_EIMAGE, "scans", "65 scans");
    free(m65.p);

    membuf bomb = jpeg_scan_bomb(1024);
    refused(bomb.p, bomb.n, BLIP2_EIMAGE, "scans", "a 2080-scan JPEG");
    free(bomb.p);
}

static void test_huge_header(void)
{
    VipsImage *b = NULL;
    size_t len;
    vips_black(&b, 1, 1, "bands", 3, NULL);
    unsigned char *png = save(b, ".png", 0, &len);
    g_object_unref(b);
    /* IHDR: 8 signature, 4 length, "IHDR" at 12, width at 16, height at
     * 20, CRC over type + data at 29. */
    if (!ok(png && len > 33 && !memcmp(png + 12, "IHDR", 4), "made a PNG"))
        return;
    const unsigned long side = 100000;
    for (int i = 0; i < 2; i++) {
        png[16 + 4 * i] = (unsigned char)(side >> 24);
        png[17 + 4 * i] = (unsigned char)(side >> 16);
        png[18 + 4 * i] = (unsigned char)(side >> 8);
        png[19 + 4 * i] = (unsigned char)side;
    }
    unsigned long crc = crc32_png(png + 12, 17);
    png[29] = (unsigned char)(crc >> 24);
    png[30] = (unsigned char)(crc >> 16);
    png[31] = (unsigned char)(crc >> 8);
    png[32] = (unsigned char)crc;
    long before = maxrss_kib();
    refused(png, len, BLIP2_ETOOBIG, "pixels", "a 100000x100000 PNG header");
    ok(maxrss_kib() - before < 16 * 1024, "peak RSS grew %ld KiB",
       maxrss_kib() - before);
    blip2_image_info info;
    blip2_error err;
    ok(blip2_image_probe(png, len, NULL, &info, &err) == BLIP2_ETOOBIG,
       "probe refuses it too: %s", err.text);
    g_free(png);
}

static int stop_after(void *ud)
{
    int *calls = ud;
    return ++*calls > 3;
}

/* A stop callback ends a decode in progress: BLIP2_ECANCELED, and only the
 * first bands of rows were decoded. */
static void test_stop(void)
{
    VipsImage *b = NULL;
    size_t len;
    vips_black(&b, 3000, 3000, "bands", 3, NULL);
    b->Type = VIPS_INTERPRETATION_sRGB;
    void *png = save(b, ".png", 0, &len);
    g_object_unref(b);
    b2_preproc p;
    blip2_error err;
    static float px[3 * 224 * 224];
    int calls = 0;
    blip2_image_opts o = {.stop = stop_after, .stop_ud = &calls};
    b2__preproc_default(&p);
    uint64_t rows0 = b2__image_rows_decoded();
    int rc = png ? b2__preprocess(&p, png, len, &o, px, &err) : 0;
    uint64_t rows = b2__image_rows_decoded() - rows0;
    ok(rc == BLIP2_ECANCELED && rows < 3000,
       "a stop callback ends a 3000x3000 decode: rc %d, %llu of 3000 rows "
       "decoded", rc, (unsigned long long)rows);
    calls = -1000000;
    ok(png && b2__preprocess(&p, png, len, &o, px, &err) == 0,
       "the same image decodes when the callback says go on");
    g_free(png);
}

static void test_formats(void *const *tif, const size_t *tlen,
                         const char *const *tname, int ntif)
{
    /* An AVIF and a HEIC file type box: enough for libheif's sniffer. */
    static const unsigned char avif[] = {
        0, 0, 0, 0x1c, 'f', 't', 'y', 'p', 'a', 'v', 'i', 'f', 0, 0, 0, 0,
        'a', 'v', 'i', 'f', 'm', 'i', 'f', '1', 'm', 'i', 'a', 'f',
        0, 0, 0, 8, 'm', 'e', 't', 'a'};
    static const unsigned char heic[] = {
        0, 0, 0, 0x18, 'f', 't', 'y', 'p', 'h', 'e', 'i', 'c', 0, 0, 0, 0,
        'm', 'i', 'f', '1', 'h', 'e', 'i', 'c', 0, 0, 0, 8, 'm', 'e', 't', 'a'};
    static const char svg[] =
        "<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\" "
        "width=\"10\" height=\"10\"></svg>";
    static const char pdf[] = "%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n";
    static const unsigned char bmp[] = {
        'B', 'M', 58, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 1, 0, 0, 0,
        1, 0, 0, 0, 1, 0, 24, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    refused(avif, sizeof avif, BLIP2_EIMAGE, "accepted", "AVIF");
    refused(heic, sizeof heic, BLIP2_EIMAGE, "accepted", "HEIC");
    refused(svg, sizeof svg - 1, BLIP2_EIMAGE, "accepted", "SVG");
    refused(pdf, sizeof pdf - 1, BLIP2_EIMAGE, "accepted", "PDF");
    refused(bmp, sizeof bmp, BLIP2_EIMAGE, "accepted", "BMP");

    b2_preproc p;
    blip2_error err;
    static float px[3 * 224 * 224];
    b2__preproc_default(&p);
    for (int i = 0; i < ntif; i++) {
        int bad = strstr(tname[i], "zstd") || strstr(tname[i], "webp") ||
                  strstr(tname[i], "ccitt");
        if (!tif[i]) {
            ok(1, "# SKIP this libvips cannot write TIFF %s", tname[i]);
            continue;
        }
        if (bad) {
            refused(tif[i], tlen[i], BLIP2_EIMAGE, "compression", tname[i]);
        } else {
            int rc = b2__preprocess(&p, tif[i], tlen[i], NULL, px, &err);
            ok(rc == 0, "TIFF %s decodes%s%s", tname[i], rc ? ": " : "",
               rc ? err.text : "");
        }
    }
}

int main(void)
{
    if (VIPS_INIT("test_image_limits"))
        return 1;
    vips_cache_set_max(0);

    /* TIFFs first: once image.c has started, the refused codecs can no
     * longer be written in this process either. */
    static const char *const tname[] = {"lzw", "deflate", "packbits", "jpeg",
                                        "zstd", "webp", "ccittfax4"};
    enum { NT = sizeof tname / sizeof tname[0] };
    void *tif[NT];
    size_t tlen[NT];
    VipsImage *im = noise(48, 32), *grey = NULL;
    vips_extract_band(im, &grey, 0, NULL);
    for (int i = 0; i < NT; i++) {
        int fax = !strcmp(tname[i], "ccittfax4");
        int comp = vips_enum_from_nick("test", VIPS_TYPE_FOREIGN_TIFF_COMPRESSION,
                                       tname[i]);
        tif[i] = NULL;
        tlen[i] = 0;
        if (comp < 0 || vips_tiffsave_buffer(fax ? grey : im, &tif[i], &tlen[i],
                                             "compression", comp,
                                             "bitdepth", fax ? 1 : 0, NULL)) {
            vips_error_clear();
            tif[i] = NULL;
        }
    }
    g_object_unref(grey);
    g_object_unref(im);

    test_rotated_memory();
    test_orientations();
    test_scans();
    test_huge_header();
    test_stop();
    test_formats(tif, tlen, tname, NT);
    for (int i = 0; i < NT; i++)
        g_free(tif[i]);
    return tap_done();
}
