/*
 * test_image.c - image decoding and preprocessing against the golden dumps.
 *
 * For every tests/golden/images{,-extra}/<name>.pixels.safetensors the
 * encoded file next to it goes through b2__decode_rgb, b2__resize_bicubic
 * and b2__normalize (and b2__preprocess as a whole); decoded_rgb_u8 (where
 * stored) and resized_rgb_u8 must match byte for byte, pixel_values to
 * 1e-5.  Then: resizes of synthetic patterns against hashes of Pillow 9.4's
 * output, bad inputs (empty, garbage, truncated, over the pixel limit, a
 * header-only decompression bomb), images made here with libvips (EXIF
 * orientation 6, 16-bit PNG, CMYK JPEG, WebP/TIFF/GIF, an animated GIF),
 * preprocessor_config.json parsing, and decoding from several threads.
 * TAP output; GOLDEN_DIR names the golden directory (default tests/golden).
 */
#include "image.h"
#include "safetensors.h"
#include "tap.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <vips/vips.h>

static const char *golden;
static char tmpdir[256];

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b = NULL;
    long n;
    *len = 0;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
        fseek(f, 0, SEEK_SET) == 0 && (b = malloc(n ? (size_t)n : 1))) {
        if (fread(b, 1, (size_t)n, f) != (size_t)n) {
            free(b);
            b = NULL;
        } else {
            *len = (size_t)n;
        }
    }
    fclose(f);
    return b;
}

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

/* Count of differing bytes and the largest difference. */
static size_t diff_u8(const uint8_t *a, const uint8_t *b, size_t n, int *maxd)
{
    size_t cnt = 0;
    *maxd = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) {
            int d = abs(a[i] - b[i]);
            cnt++;
            if (d > *maxd)
                *maxd = d;
        }
    return cnt;
}

static double max_abs(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* ---- golden images --------------------------------------------------- */

static double worst_px_err;
static int n_golden;

static void check_golden(const char *dir, const char *stname,
                         const b2_preproc *pp)
{
    char base[1200], img[1300], stp[1300];
    int blen = (int)(strlen(stname) - strlen(".pixels.safetensors"));
    blip2_error err = {0};
    b2_st_file *st = NULL;
    uint8_t *bytes = NULL, *rgb = NULL, *rs = NULL;
    float *px = NULL, *ref = NULL;
    size_t len;
    int w, h, maxd = 0;

    snprintf(base, sizeof base, "%.600s/%.*s", dir, blen < 500 ? blen : 500, stname);
    snprintf(stp, sizeof stp, "%.600s/%.600s", dir, stname);
    snprintf(img, sizeof img, "%s.png", base);
    if (!file_exists(img))
        snprintf(img, sizeof img, "%s.jpg", base);
    const char *name = strrchr(img, '/') + 1;
    n_golden++;

    if (!ok(b2__st_open(&st, stp, &err) == 0, "%s: open golden", name)) {
        diag("%s", err.text);
        return;
    }
    const b2_tensor *tr = b2__st_find(st, "resized_rgb_u8");
    const b2_tensor *tp = b2__st_find(st, "pixel_values");
    const b2_tensor *td = b2__st_find(st, "decoded_rgb_u8");
    size_t n224 = (size_t)pp->size_h * pp->size_w * 3;
    if (!ok(tr && tp && tr->dtype == B2_U8 && tr->nbytes == n224 &&
                b2__tensor_numel(tp) == (int64_t)n224,
            "%s: golden tensors present", name))
        goto out;

    bytes = slurp(img, &len);
    if (!ok(bytes != NULL, "%s: read %s", name, img))
        goto out;
    int rc = b2__decode_rgb(bytes, len, NULL, &rgb, &w, &h, &err);
    if (!ok(rc == 0, "%s: decodes", name)) {
        diag("rc %d: %s", rc, err.text);
        goto out;
    }
    if (td) {
        size_t cnt = 0;
        int shape_ok = td->ndim == 3 && td->shape[0] == h &&
                       td->shape[1] == w && td->shape[2] == 3;
        if (shape_ok)
            cnt = diff_u8(rgb, td->data, (size_t)w * h * 3, &maxd);
        ok(shape_ok && cnt == 0, "%s: decoded_rgb_u8 %dx%d exact", name, w,
           h);
        if (shape_ok && cnt)
            diag("%zu bytes differ, max %d", cnt, maxd);
    }

    rs = malloc(n224);
    rc = b2__resize_bicubic(rgb, w, h, rs, pp->size_w, pp->size_h);
    size_t cnt = rc ? n224 : diff_u8(rs, tr->data, n224, &maxd);
    ok(rc == 0 && cnt == 0, "%s: resized_rgb_u8 bit-exact (from %dx%d)", name,
       w, h);
    if (cnt)
        diag("%zu of %zu bytes differ, max %d", cnt, n224, maxd);
    if (td) { /* the resizer alone, from the reference decode */
        rc = b2__resize_bicubic(td->data, (int)td->shape[1],
                                (int)td->shape[0], rs, pp->size_w,
                                pp->size_h);
        cnt = rc ? n224 : diff_u8(rs, tr->data, n224, &maxd);
        ok(rc == 0 && cnt == 0,
           "%s: resize of the golden decoded_rgb_u8 bit-exact", name);
    }

    px = malloc(n224 * sizeof *px);
    ref = malloc(n224 * sizeof *ref);
    b2__to_f32(tp, ref);
    b2__normalize(pp, tr->data, pp->size_w, pp->size_h, px);
    double e1 = max_abs(px, ref, n224);
    ok(e1 <= 1e-6, "%s: normalize(golden resized) max abs err %.3g", name,
       e1);
    rc = b2__preprocess(pp, bytes, len, NULL, px, &err);
    double e2 = rc ? INFINITY : max_abs(px, ref, n224);
    ok(rc == 0 && e2 <= 1e-5, "%s: preprocess -> pixel_values max abs err %.3g",
       name, e2);
    if (rc)
        diag("rc %d: %s", rc, err.text);
    if (e2 > worst_px_err)
        worst_px_err = e2;

out:
    free(bytes);
    free(rgb);
    free(rs);
    free(px);
    free(ref);
    b2__st_close(st);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void golden_dir(const char *sub, const b2_preproc *pp)
{
    char dir[512];
    char *names[64];
    int n = 0;
    struct dirent *e;
    snprintf(dir, sizeof dir, "%s/%s", golden, sub);
    DIR *d = opendir(dir);
    if (!ok(d != NULL, "open %s", dir))
        return;
    while ((e = readdir(d)) && n < 64) {
        size_t l = strlen(e->d_name), s = strlen(".pixels.safetensors");
        if (l > s && strcmp(e->d_name + l - s, ".pixels.safetensors") == 0)
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    ok(n > 0, "%s: %d golden images", sub, n);
    for (int i = 0; i < n; i++) {
        check_golden(dir, names[i], pp);
        free(names[i]);
    }
}

/* coffee_rgba.png: alpha is dropped, not composited. */
static void test_rgba_drops_alpha(void)
{
    char p1[512], p2[512];
    size_t l1, l2;
    uint8_t *a = NULL, *b = NULL;
    int w1 = 0, h1 = 0, w2 = 0, h2 = 0, maxd;
    snprintf(p1, sizeof p1, "%s/images/coffee.png", golden);
    snprintf(p2, sizeof p2, "%s/images/coffee_rgba.png", golden);
    uint8_t *f1 = slurp(p1, &l1), *f2 = slurp(p2, &l2);
    int ok1 = f1 && f2 && b2__decode_rgb(f1, l1, NULL, &a, &w1, &h1, NULL) == 0 &&
              b2__decode_rgb(f2, l2, NULL, &b, &w2, &h2, NULL) == 0;
    ok(ok1 && w1 == w2 && h1 == h2 &&
           diff_u8(a, b, (size_t)w1 * h1 * 3, &maxd) == 0,
       "coffee_rgba.png decodes to exactly coffee.png's RGB");
    free(f1);
    free(f2);
    free(a);
    free(b);
}

/* ---- synthetic resizes against Pillow 9.4 ----------------------------- */

/* A hash-based pattern: noise (mode 0) or black/white noise (mode 1), the
 * worst cases for rounding and clamping. */
static void pattern(uint8_t *b, int sw, int sh, uint64_t seed, int mode)
{
    size_t n = (size_t)sw * sh * 3;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
        v ^= v >> 31;
        v *= 0x94D049BB133111EBull;
        v ^= v >> 29;
        uint8_t x = (uint8_t)(v >> 56);
        b[i] = mode ? (x >= 128 ? 255 : 0) : x;
    }
}

static uint64_t fnv1a(const uint8_t *b, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void test_resize_pillow(void)
{
    /* FNV-1a 64 of np.asarray(Image.fromarray(pattern(...), "RGB")
     * .resize((dw, dh), Image.BICUBIC)), Debian's python3-pil 9.4.0. */
    static const struct {
        int sw, sh, dw, dh, seed, mode;
        uint64_t fnv;
    } cases[] = {
        {1, 1, 224, 224, 1, 0, 0xb4b3af6ce0612325ull},
        {3, 500, 224, 224, 2, 1, 0x170296983fd78136ull},
        {500, 3, 224, 224, 3, 0, 0x1dee1e3ce4c0efd7ull},
        {224, 100, 224, 224, 4, 1, 0x819d4d8a369b6063ull},  /* vertical only */
        {100, 224, 224, 224, 5, 0, 0x85b919105492065full},  /* horizontal only */
        {224, 224, 224, 224, 6, 0, 0xfe858b27226655c8ull},  /* copy */
        {4000, 37, 224, 224, 7, 1, 0x49266510f2b138e7ull},
        {1023, 767, 224, 224, 8, 0, 0xa47ff95ba5a8b2eaull},
        {225, 223, 224, 224, 9, 1, 0xd66c3a76427c7d20ull},
        {7, 5, 3, 2, 10, 0, 0x356394025e75839bull},
        {640, 480, 384, 384, 11, 1, 0x968ceb7eb11c9289ull},
        {300, 300, 17, 301, 12, 0, 0x8958991c914be734ull},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int sw = cases[i].sw, sh = cases[i].sh, dw = cases[i].dw,
            dh = cases[i].dh;
        uint8_t *s = malloc((size_t)sw * sh * 3), *d = malloc((size_t)dw * dh * 3);
        pattern(s, sw, sh, (uint64_t)cases[i].seed, cases[i].mode);
        int rc = b2__resize_bicubic(s, sw, sh, d, dw, dh);
        ok(rc == 0 && fnv1a(d, (size_t)dw * dh * 3) == cases[i].fnv,
           "resize %dx%d -> %dx%d (%s) matches Pillow 9.4", sw, sh, dw, dh,
           cases[i].mode ? "b/w noise" : "noise");
        free(s);
        free(d);
    }

    /* A line of 30 M pixels would need ~480 MiB of weights: refused
     * before any pixel is read. */
    uint8_t *s = calloc((size_t)30000000 * 3, 1), d[224 * 224 * 3];
    ok(s && b2__resize_bicubic(s, 30000000, 1, d, 224, 224) == BLIP2_ETOOBIG,
       "resize of a 30000000x1 line: BLIP2_ETOOBIG");
    free(s);
    ok(b2__resize_bicubic(d, 0, 5, d, 224, 224) == BLIP2_EINVAL,
       "resize from width 0: BLIP2_EINVAL");

    /* Found by tests/fuzz (fuzz_image): the vertical pass costs ~12*dw*sh
     * multiply-adds whatever the width, so a 2x2000000 image (4 Mpx, well
     * within max_pixels) took 5 s of CPU and 2x20M nearly a minute.  Over
     * the work cap it is refused at once; a 4000x4000 one still resizes. */
    uint8_t *tall = calloc((size_t)2 * 2000000 * 3, 1);
    ok(tall && b2__resize_bicubic(tall, 2, 2000000, d, 224, 224) == BLIP2_ETOOBIG,
       "resize of a 2x2000000 image: BLIP2_ETOOBIG (work cap)");
    ok(tall && b2__resize_bicubic(tall, 2000000, 2, d, 224, 224) == 0,
       "resize of a 2000000x2 image (cheap: ~12 multiply-adds a pixel) works");
    free(tall);
    uint8_t *big = calloc((size_t)4000 * 4000 * 3, 1);
    ok(big && b2__resize_bicubic(big, 4000, 4000, d, 224, 224) == 0,
       "resize of a 4000x4000 image is within the work cap");
    free(big);
}

/* ---- bad inputs ------------------------------------------------------- */

static void expect_fail(const void *bytes, size_t len,
                        const blip2_image_opts *o, int code, const char *what)
{
    blip2_error err = {0};
    uint8_t *rgb = (uint8_t *)1;
    int w = -1, h = -1;
    int rc = b2__decode_rgb(bytes, len, o, &rgb, &w, &h, &err);
    ok(rc == code && err.code == code && err.text[0] && !rgb && !w && !h,
       "%s: %s", what, blip2_strerror(code));
    diag("rc %d: %s", rc, err.text);
}

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = (uint8_t)v;
}

static void test_bad_inputs(void)
{
    char path[512];
    size_t len, jlen;
    uint8_t junk[4096];
    blip2_image_opts o = {0};

    expect_fail("", 0, NULL, BLIP2_EIMAGE, "empty buffer");
    expect_fail(NULL, 0, NULL, BLIP2_EIMAGE, "NULL buffer");
    pattern(junk, 4096 / 3, 1, 99, 0);
    junk[4095] = junk[4094] = 0;
    expect_fail(junk, sizeof junk, NULL, BLIP2_EIMAGE, "4 KiB of noise");
    expect_fail("GIF89a", 6, NULL, BLIP2_EIMAGE, "a bare GIF signature");
    /* A 2x1 24-bit BMP: libvips reads BMP only through ImageMagick, which
     * is blocked for untrusted input. */
    static const uint8_t bmp[] = {
        'B', 'M', 62, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0,
        0, 0, 1, 0, 0, 0, 1, 0, 24, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 48, 32, 16, 48, 32, 16,
        0, 0};
    expect_fail(bmp, sizeof bmp, NULL, BLIP2_EIMAGE,
                "BMP (ImageMagick-only, blocked)");

    snprintf(path, sizeof path, "%s/images/chelsea.png", golden);
    uint8_t *png = slurp(path, &len);
    snprintf(path, sizeof path, "%s/images/rocket.jpg", golden);
    uint8_t *jpg = slurp(path, &jlen);
    if (!ok(png && jpg && len > 1000 && jlen > 1000, "read chelsea.png and rocket.jpg"))
        goto out;
    expect_fail(png, len / 2, NULL, BLIP2_EIMAGE, "PNG cut in half");
    expect_fail(png, 60, NULL, BLIP2_EIMAGE, "PNG cut after its header");
    expect_fail(jpg, jlen / 2, NULL, BLIP2_EIMAGE, "JPEG cut in half");

    o.max_pixels = 451 * 300 - 1;
    expect_fail(png, len, &o, BLIP2_ETOOBIG, "451x300 over max_pixels 135299");
    o.max_pixels = 451 * 300;
    uint8_t *rgb = NULL;
    int w, h;
    ok(b2__decode_rgb(png, len, &o, &rgb, &w, &h, NULL) == 0 && w == 451 &&
           h == 300,
       "451x300 at max_pixels 135300 decodes");
    free(rgb);

    /* A decompression bomb: chelsea.png's IHDR rewritten to 100000 x
     * 100000 (with a valid CRC).  The limit must trip on the header,
     * before libpng would inflate anything. */
    if (memcmp(png + 12, "IHDR", 4) == 0) {
        uint8_t *bomb = malloc(len);
        memcpy(bomb, png, len);
        put_be32(bomb + 16, 100000);
        put_be32(bomb + 20, 100000);
        put_be32(bomb + 29, crc32_png(bomb + 12, 17));
        expect_fail(bomb, len, NULL, BLIP2_ETOOBIG,
                    "PNG header claiming 100000x100000 (default limit)");
        float *px = malloc(224 * 224 * 3 * sizeof *px);
        b2_preproc pp;
        b2__preproc_default(&pp);
        blip2_error err = {0};
        ok(b2__preprocess(&pp, bomb, len, NULL, px, &err) == BLIP2_ETOOBIG &&
               err.text[0],
           "preprocess passes BLIP2_ETOOBIG through");
        free(px);
        free(bomb);
    }
out:
    free(png);
    free(jpg);
}

/* ---- images made here with libvips ------------------------------------ */

/* A w x h image of bands x fmt, every pixel = px[0..bands). */
static VipsImage *flat(int w, int h, int bands, VipsBandFormat fmt,
                       const double *px)
{
    size_t es = fmt == VIPS_FORMAT_USHORT ? 2 : 1;
    size_t n = (size_t)w * h * bands;
    uint8_t *buf = malloc(n * es);
    for (size_t i = 0; i < n; i++) {
        double v = px[i % bands];
        if (es == 2)
            ((uint16_t *)buf)[i] = (uint16_t)v;
        else
            buf[i] = (uint8_t)v;
    }
    VipsImage *im = vips_image_new_from_memory_copy(buf, n * es, w, h, bands,
                                                    fmt);
    free(buf);
    return im;
}

static int decode_buf(void *buf, size_t len, const blip2_image_opts *o,
                      uint8_t **rgb, int *w, int *h)
{
    blip2_error err = {0};
    int rc = b2__decode_rgb(buf, len, o, rgb, w, h, &err);
    if (rc)
        diag("decode: rc %d: %s", rc, err.text);
    return rc;
}

/* Largest distance of any pixel from (r,g,b). */
static int dist_flat(const uint8_t *rgb, int w, int h, const int *want)
{
    int m = 0;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        int d = abs(rgb[i] - want[i % 3]);
        if (d > m)
            m = d;
    }
    return m;
}

static void test_exif_rotation(void)
{
    /* 40x20, a white block in the top-left 10x5, orientation 6 (the
     * viewer turns it 90 degrees clockwise). */
    static const double black[3] = {0, 0, 0};
    VipsImage *im = flat(40, 20, 3, VIPS_FORMAT_UCHAR, black), *cp = NULL;
    uint8_t *p = (uint8_t *)VIPS_IMAGE_ADDR(im, 0, 0);
    void *buf = NULL;
    size_t len = 0;
    for (int y = 0; y < 5; y++)
        memset(p + (size_t)y * 40 * 3, 255, 10 * 3);
    if (vips_copy(im, &cp, NULL) == 0) {
        vips_image_set_int(cp, "orientation", 6);
        if (vips_jpegsave_buffer(cp, &buf, &len, "Q", 95, NULL))
            buf = NULL;
    }
    if (!ok(buf != NULL, "made a JPEG with EXIF orientation 6"))
        goto out;
    blip2_image_opts o = {0};
    uint8_t *rgb = NULL;
    int w, h;
    if (decode_buf(buf, len, &o, &rgb, &w, &h) == 0) {
        ok(w == 20 && h == 40, "orientation 6 applied: 40x20 -> %dx%d", w, h);
        if (w == 20 && h == 40)
            ok(rgb[(4 * 20 + 17) * 3] > 200 && rgb[(4 * 20 + 2) * 3] < 50 &&
                   rgb[(30 * 20 + 17) * 3] < 50,
               "the top-left block went to the top right");
        free(rgb);
    } else {
        ok(0, "orientation 6 applied");
    }
    o.no_exif_rotate = 1;
    rgb = NULL;
    if (decode_buf(buf, len, &o, &rgb, &w, &h) == 0) {
        ok(w == 40 && h == 20 && rgb[(2 * 40 + 4) * 3] > 200 &&
               rgb[(2 * 40 + 30) * 3] < 50,
           "no_exif_rotate keeps 40x20 as stored (%dx%d)", w, h);
        free(rgb);
    } else {
        ok(0, "no_exif_rotate decodes");
    }
out:
    g_free(buf);
    if (cp)
        g_object_unref(cp);
    g_object_unref(im);
}

static void test_16bit_png(void)
{
    static const double rgb16[3] = {200 * 257, 120 * 257, 50 * 257};
    static const double grey16[1] = {40000};
    static const int want_rgb[3] = {200, 120, 50}, want_grey[3] = {156, 156, 156};
    struct {
        const double *px;
        int bands;
        VipsInterpretation interp;
        const int *want;
        const char *what;
    } c[] = {
        {rgb16, 3, VIPS_INTERPRETATION_RGB16, want_rgb, "RGB"},
        {grey16, 1, VIPS_INTERPRETATION_GREY16, want_grey, "grey"},
    };
    for (int i = 0; i < 2; i++) {
        VipsImage *im = flat(16, 8, c[i].bands, VIPS_FORMAT_USHORT, c[i].px);
        void *buf = NULL;
        size_t len = 0;
        uint8_t *rgb = NULL;
        int w = 0, h = 0;
        im->Type = c[i].interp;
        if (vips_pngsave_buffer(im, &buf, &len, "bitdepth", 16, NULL))
            buf = NULL;
        int made = buf && len > 33 && buf && ((uint8_t *)buf)[24] == 16;
        ok(made && decode_buf(buf, len, NULL, &rgb, &w, &h) == 0 && w == 16 &&
               h == 8 && dist_flat(rgb, w, h, c[i].want) == 0,
           "16-bit %s PNG -> high byte (%d,%d,%d)", c[i].what, c[i].want[0],
           c[i].want[1], c[i].want[2]);
        free(rgb);
        g_free(buf);
        g_object_unref(im);
    }
}

static void test_cmyk_jpeg(void)
{
    static const double orange[3] = {200, 120, 60};
    static const int want[3] = {200, 120, 60};
    VipsImage *im = flat(32, 16, 3, VIPS_FORMAT_UCHAR, orange), *cmyk = NULL;
    void *buf = NULL;
    size_t len = 0;
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    im->Type = VIPS_INTERPRETATION_sRGB;
    if (vips_colourspace(im, &cmyk, VIPS_INTERPRETATION_CMYK, NULL) ||
        cmyk->Bands != 4 ||
        vips_jpegsave_buffer(cmyk, &buf, &len, "Q", 100, NULL))
        buf = NULL;
    VipsImage *back = buf ? vips_image_new_from_buffer(buf, len, "", NULL)
                          : NULL;
    int bands = back ? back->Bands : 0;
    if (back)
        g_object_unref(back);
    if (ok(buf != NULL && bands == 4, "made a CMYK JPEG (%d bands)", bands) &&
        ok(decode_buf(buf, len, NULL, &rgb, &w, &h) == 0 && w == 32 && h == 16,
           "CMYK JPEG decodes to 32x16 RGB")) {
        int d = dist_flat(rgb, w, h, want);
        ok(d <= 4, "CMYK round trip of (200,120,60) within 4 levels (max %d)",
           d);
    }
    free(rgb);
    g_free(buf);
    if (cmyk)
        g_object_unref(cmyk);
    g_object_unref(im);
}

static void test_other_formats(void)
{
    static const double teal[3] = {30, 160, 220};
    static const int want[3] = {30, 160, 220};
    static const struct {
        const char *suffix;
        int tol;
    } fmt[] = {
        {".webp[lossless]", 0}, {".tif", 0}, {".gif", 3}, {".png", 0},
        {".jpg[Q=95]", 4},
    };
    VipsImage *im = flat(24, 12, 3, VIPS_FORMAT_UCHAR, teal);
    im->Type = VIPS_INTERPRETATION_sRGB;
    for (size_t i = 0; i < sizeof fmt / sizeof fmt[0]; i++) {
        void *buf = NULL;
        size_t len = 0;
        uint8_t *rgb = NULL;
        int w = 0, h = 0, d = -1;
        if (vips_image_write_to_buffer(im, fmt[i].suffix, &buf, &len, NULL)) {
            vips_error_clear();
            ok(1, "# SKIP this libvips cannot write %s", fmt[i].suffix);
            continue;
        }
        if (decode_buf(buf, len, NULL, &rgb, &w, &h) == 0 && w == 24 && h == 12)
            d = dist_flat(rgb, w, h, want);
        ok(d >= 0 && d <= fmt[i].tol, "%s decodes to 24x12 (30,160,220) +-%d",
           fmt[i].suffix, fmt[i].tol);
        free(rgb);
        g_free(buf);
    }
    g_object_unref(im);

    /* An animated GIF, red frame then blue: the first frame only. */
    static const double red[3] = {255, 0, 0}, blue[3] = {0, 0, 255};
    static const int want_red[3] = {255, 0, 0};
    VipsImage *a = flat(16, 10, 3, VIPS_FORMAT_UCHAR, red);
    VipsImage *b = flat(16, 10, 3, VIPS_FORMAT_UCHAR, blue), *ab = NULL;
    void *buf = NULL;
    size_t len = 0;
    if (vips_join(a, b, &ab, VIPS_DIRECTION_VERTICAL, NULL) == 0) {
        VipsImage *anim = NULL;
        if (vips_copy(ab, &anim, NULL) == 0) {
            vips_image_set_int(anim, "page-height", 10);
            if (vips_gifsave_buffer(anim, &buf, &len, NULL))
                buf = NULL;
            g_object_unref(anim);
        }
        g_object_unref(ab);
    }
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    int rc = buf ? decode_buf(buf, len, NULL, &rgb, &w, &h) : -1;
    ok(rc == 0 && w == 16 && h == 10 && dist_flat(rgb, w, h, want_red) <= 3,
       "animated GIF (2 frames, 16x10 each): first frame only (%dx%d)", w, h);
    free(rgb);
    g_free(buf);
    g_object_unref(a);
    g_object_unref(b);
}

/* ---- preprocessor_config.json ----------------------------------------- */

static int load_json(const char *text, b2_preproc *p, blip2_error *err,
                     char *path, size_t psize)
{
    static int n;
    snprintf(path, psize, "%s/pp%d.json", tmpdir, n++);
    FILE *f = fopen(path, "w");
    if (!f)
        return -100;
    fputs(text, f);
    fclose(f);
    b2__preproc_default(p);
    p->size_h = -7; /* must not survive a successful load */
    return b2__preproc_load(p, path, err);
}

static int pp_equal(const b2_preproc *a, const b2_preproc *b)
{
    return a->size_h == b->size_h && a->size_w == b->size_w &&
           a->do_resize == b->do_resize && a->do_rescale == b->do_rescale &&
           a->do_normalize == b->do_normalize &&
           a->do_convert_rgb == b->do_convert_rgb &&
           a->resample == b->resample &&
           a->rescale_factor == b->rescale_factor &&
           memcmp(a->mean, b->mean, sizeof a->mean) == 0 &&
           memcmp(a->std, b->std, sizeof a->std) == 0;
}

static void test_preproc_config(void)
{
    char path[512];
    b2_preproc d, p;
    blip2_error err = {0};
    b2__preproc_default(&d);

    snprintf(path, sizeof path, "%s/opt-tiny/preprocessor_config.json", golden);
    memset(&p, 0, sizeof p);
    ok(b2__preproc_load(&p, path, &err) == 0 && pp_equal(&p, &d),
       "opt-tiny preprocessor_config.json == defaults (224, bicubic, CLIP "
       "mean/std, 1/255)");
    snprintf(path, sizeof path, "%s/real/blip2-opt-2.7b.preprocessor_config.json",
             golden);
    memset(&p, 0, sizeof p);
    ok(!file_exists(path) ||
           (b2__preproc_load(&p, path, &err) == 0 &&
            pp_equal(&p, &d)),
       "the real blip2-opt-2.7b preprocessor config == defaults");
    memset(&p, 0, sizeof p);
    ok(b2__preproc_load(&p, "/nonexistent/preprocessor_config.json", &err) ==
               0 && pp_equal(&p, &d),
       "missing file: defaults kept");

    int rc = load_json("{\"size\": {\"height\": 224,", &p, &err, path,
                       sizeof path);
    ok(rc == BLIP2_EFORMAT && strstr(err.text, path),
       "malformed JSON: BLIP2_EFORMAT naming the file");
    diag("%s", err.text);
    rc = load_json("[1, 2]", &p, &err, path, sizeof path);
    ok(rc == BLIP2_EFORMAT, "a JSON array: BLIP2_EFORMAT");
    rc = load_json("{\"resample\": 2}", &p, &err, path, sizeof path);
    ok(rc == BLIP2_EUNSUPPORTED && strstr(err.text, "resample"),
       "resample 2 (bilinear): BLIP2_EUNSUPPORTED");
    diag("%s", err.text);
    rc = load_json("{\"size\": {\"shortest_edge\": 224}}", &p, &err, path,
                   sizeof path);
    ok(rc == BLIP2_EUNSUPPORTED, "size {shortest_edge}: BLIP2_EUNSUPPORTED");
    rc = load_json("{\"size\": {\"height\": 0, \"width\": 224}}", &p, &err,
                   path, sizeof path);
    ok(rc == BLIP2_EFORMAT, "size height 0: BLIP2_EFORMAT");
    rc = load_json("{\"image_std\": [1, 0, 1]}", &p, &err, path, sizeof path);
    ok(rc == BLIP2_EFORMAT, "a zero image_std: BLIP2_EFORMAT");
    rc = load_json("{\"image_mean\": [0.5, 0.5]}", &p, &err, path, sizeof path);
    ok(rc == BLIP2_EFORMAT, "image_mean of 2 numbers: BLIP2_EFORMAT");
    rc = load_json("{\"do_resize\": \"yes\"}", &p, &err, path, sizeof path);
    ok(rc == BLIP2_EFORMAT, "do_resize as a string: BLIP2_EFORMAT");
    rc = load_json("{\"size\": 384, \"do_normalize\": false, \"image_mean\": "
                   "0.5, \"rescale_factor\": 0.5, \"resample\": 3, "
                   "\"unknown\": {}}",
                   &p, &err, path, sizeof path);
    ok(rc == 0 && p.size_h == 384 && p.size_w == 384 && !p.do_normalize &&
           p.do_rescale && p.mean[2] == 0.5f && p.rescale_factor == 0.5,
       "size as an int, flags, a scalar mean, unknown keys ignored");
    rc = load_json("{\"size\": {\"height\": 20, \"width\": 30}}", &p, &err,
                   path, sizeof path);
    ok(rc == 0 && p.size_h == 20 && p.size_w == 30, "size {height, width}");

    /* do_normalize off: pixel_values are u8 / 255 of the golden resize. */
    snprintf(path, sizeof path, "%s/images/astronaut.png", golden);
    size_t len;
    uint8_t *png = slurp(path, &len);
    snprintf(path, sizeof path, "%s/images/astronaut.pixels.safetensors",
             golden);
    b2_st_file *st = NULL;
    if (png && b2__st_open(&st, path, NULL) == 0) {
        const b2_tensor *tr = b2__st_find(st, "resized_rgb_u8");
        float *px = malloc(3 * 224 * 224 * sizeof *px);
        const uint8_t *u = tr ? tr->data : NULL;
        p = d;
        p.do_normalize = 0;
        rc = b2__preprocess(&p, png, len, NULL, px, &err);
        int good = rc == 0 && u;
        for (int i = 0; good && i < 224 * 224; i++)
            for (int c = 0; c < 3; c++)
                if (px[c * 224 * 224 + i] != (float)(u[3 * i + c] / 255.0))
                    good = 0;
        ok(good, "do_normalize off: pixel_values == u8/255, CHW");
        p = d;
        p.do_resize = 0;
        ok(b2__preprocess(&p, png, len, NULL, px, &err) == BLIP2_EINVAL,
           "do_resize off with a 512x512 image: BLIP2_EINVAL");
        p = d;
        p.resample = 2;
        ok(b2__preprocess(&p, png, len, NULL, px, &err) == BLIP2_EUNSUPPORTED,
           "preprocess with resample 2: BLIP2_EUNSUPPORTED");
        free(px);
    } else {
        ok(0, "read astronaut.png and its golden");
    }
    b2__st_close(st);
    free(png);
}

/* ---- several threads at once ------------------------------------------ */

typedef struct job {
    const uint8_t *bytes;
    size_t len;
    const float *ref;
    double err;
} job;

static void *job_run(void *a)
{
    job *j = a;
    b2_preproc p;
    float *px = malloc(3 * 224 * 224 * sizeof *px);
    b2__preproc_default(&p);
    j->err = INFINITY;
    for (int it = 0; it < 3; it++)
        if (b2__preprocess(&p, j->bytes, j->len, NULL, px, NULL) == 0) {
            double e = max_abs(px, j->ref, 3 * 224 * 224);
            if (it == 0 || e > j->err)
                j->err = e;
        }
    free(px);
    return NULL;
}

static void test_threads(void)
{
    static const char *names[4] = {"chelsea.png", "rocket.jpg", "camera.png",
                                   "coffee_rgba.png"};
    pthread_t th[4];
    job jobs[4];
    uint8_t *bytes[4] = {0};
    float *refs[4] = {0};
    b2_st_file *st[4] = {0};
    int started[4] = {0}, good = 1;
    for (int i = 0; i < 4; i++) {
        char p[512];
        size_t l = strlen(names[i]) - 4;
        snprintf(p, sizeof p, "%s/images/%s", golden, names[i]);
        bytes[i] = slurp(p, &jobs[i].len);
        snprintf(p, sizeof p, "%s/images/%.*s.pixels.safetensors", golden,
                 (int)l, names[i]);
        const b2_tensor *t = NULL;
        if (b2__st_open(&st[i], p, NULL) == 0)
            t = b2__st_find(st[i], "pixel_values");
        if (!bytes[i] || !t) {
            good = 0;
            continue;
        }
        refs[i] = malloc(3 * 224 * 224 * sizeof(float));
        b2__to_f32(t, refs[i]);
        jobs[i].bytes = bytes[i];
        jobs[i].ref = refs[i];
        started[i] = pthread_create(&th[i], NULL, job_run, &jobs[i]) == 0;
    }
    for (int i = 0; i < 4; i++) {
        if (started[i]) {
            pthread_join(th[i], NULL);
            good &= jobs[i].err <= 1e-5;
        } else {
            good = 0;
        }
        free(bytes[i]);
        free(refs[i]);
        b2__st_close(st[i]);
    }
    ok(good, "4 threads x 3 preprocesses of different images match golden");
}

int main(void)
{
    b2_preproc pp;
    golden = getenv("GOLDEN_DIR");
    if (!golden || !*golden)
        golden = "tests/golden";
    const char *tmp = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/test_image.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpdir))
        snprintf(tmpdir, sizeof tmpdir, ".");

    b2__preproc_default(&pp);
    test_threads(); /* first: the threads race to initialise libvips */
    if (VIPS_INIT("test_image")) /* a no-op now; the test calls vips too */
        ok(0, "libvips starts");
    golden_dir("images", &pp);
    golden_dir("images-extra", &pp);
    diag("worst pixel_values max abs err over %d golden images: %.3g",
         n_golden, worst_px_err);
    test_rgba_drops_alpha();
    test_resize_pillow();
    test_bad_inputs();
    test_exif_rotation();
    test_16bit_png();
    test_cmyk_jpeg();
    test_other_formats();
    test_preproc_config();

    /* clean up the scratch files */
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[600];
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(tmpdir);
    vips_shutdown(); /* the test owns the process: lets valgrind see clean */
    return tap_done();
}
