/*
 * test_safetensors.c - the safetensors reader and writer: round trip, the
 * f16/bf16 conversions, and every class of corrupt file refused with a
 * message (never a crash or an out-of-bounds read).
 */
#include "safetensors.h"
#include "tap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/b2st.XXXXXX";

static void put(const char *name, const void *data, size_t n)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

/* A file with header text hdr (length given by hlen_field) and ndata bytes. */
static void put_st(const char *name, const char *hdr, uint64_t hlen_field, size_t ndata)
{
    size_t hl = strlen(hdr);
    unsigned char *buf = calloc(1, 8 + hl + ndata);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen_field >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    put(name, buf, 8 + hl + ndata);
    free(buf);
}

static int open_fails(const char *name, int code, const char *needle)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    b2_st_file *f = NULL;
    blip2_error err = {0};
    int rc = b2__st_open(&f, p, &err);
    b2__st_close(f);
    int good = rc == code && f == NULL && strstr(err.text, needle) != NULL;
    if (!good) diag("%s: rc %d, message '%s'", name, rc, err.text);
    return good;
}

int main(void)
{
    if (!mkdtemp(dir)) return 1;
    char path[256];
    blip2_error err = {0};

    /* round trip */
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, 65504};
    int64_t ids[3] = {2, 50118, 7};
    b2_tensor ts[2] = {
        {"a", B2_F32, 2, {2, 3}, a, sizeof a},
        {"ids", B2_I64, 1, {3}, ids, sizeof ids},
    };
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    ok(b2__st_write(path, ts, 2, &err) == 0, "write");
    b2_st_file *f = NULL;
    if (ok(b2__st_open(&f, path, &err) == 0, "reopen")) {
        const b2_tensor *t = b2__st_find(f, "a");
        float back[6];
        ok(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->dtype == B2_F32, "shape and dtype kept");
        if (t) { b2__to_f32(t, back); ok(!memcmp(back, a, sizeof a), "values kept"); }
        const b2_tensor *ti = b2__st_find(f, "ids");
        int32_t i32[3];
        if (ok(ti != NULL, "second tensor")) { b2__to_i32(ti, i32); ok(i32[1] == 50118, "int64 -> int32"); }
        ok(b2__st_find(f, "nope") == NULL, "absent name gives NULL");
        ok(b2__st_count(f) == 2, "count excludes __metadata__");
        b2__st_close(f);
    }

    /* conversions */
    ok(b2__f16_to_f32(0x3c00) == 1.0f, "f16 1.0");
    ok(b2__f16_to_f32(0xc000) == -2.0f, "f16 -2.0");
    ok(b2__f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    ok(b2__f16_to_f32(0x0001) == ldexpf(1, -24), "f16 smallest subnormal");
    ok(isinf(b2__f16_to_f32(0x7c00)), "f16 inf");
    ok(isnan(b2__f16_to_f32(0x7e00)), "f16 nan");
    ok(b2__bf16_to_f32(0x3f80) == 1.0f, "bf16 1.0");
    ok(b2__bf16_to_f32(0xc0a0) == -5.0f, "bf16 -5.0");

    /* corrupt files */
    put("short", "abc", 3);
    ok(open_fails("short", BLIP2_EFORMAT, "too short"), "3-byte file refused");
    put_st("hlen_huge", "{}", (uint64_t)1 << 62, 0);
    ok(open_fails("hlen_huge", BLIP2_EFORMAT, "header length"), "header length beyond the file refused");
    put_st("hlen_zero", "{}", 0, 0);
    ok(open_fails("hlen_zero", BLIP2_EFORMAT, "header length"), "zero header length refused");
    put_st("badjson", "{\"a\": [1, 2", 11, 0);
    ok(open_fails("badjson", BLIP2_EFORMAT, "bad safetensors header"), "broken JSON refused");
    put_st("notobj", "[1, 2, 3]", 9, 0);
    ok(open_fails("notobj", BLIP2_EFORMAT, "not an object"), "non-object header refused");
    const char *h1 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    put_st("trunc", h1, strlen(h1), 8);
    ok(open_fails("trunc", BLIP2_EFORMAT, "beyond end of file"), "data beyond the end refused");
    const char *h2 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,12]}}";
    put_st("count", h2, strlen(h2), 16);
    ok(open_fails("count", BLIP2_EFORMAT, "12 bytes for 4 elements"), "byte count != shape refused");
    const char *h3 = "{\"w\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    put_st("dtype", h3, strlen(h3), 16);
    ok(open_fails("dtype", BLIP2_EFORMAT, "unknown dtype"), "unknown dtype refused");
    const char *h4 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}";
    put_st("negshape", h4, strlen(h4), 16);
    ok(open_fails("negshape", BLIP2_EFORMAT, "bad shape"), "negative dimension refused");
    const char *h5 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}";
    put_st("order", h5, strlen(h5), 16);
    ok(open_fails("order", BLIP2_EFORMAT, "bad data_offsets"), "reversed offsets refused");
    const char *h6 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,16]}}";
    put_st("overflow", h6, strlen(h6), 16);
    ok(open_fails("overflow", BLIP2_EFORMAT, "shape"), "overflowing shape refused");
    const char *h7 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    put_st("dup", h7, strlen(h7), 16);
    ok(open_fails("dup", BLIP2_EFORMAT, "bad safetensors header"), "duplicate names refused");
    const char *h8 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}";
    put_st("nooff", h8, strlen(h8), 16);
    ok(open_fails("nooff", BLIP2_EFORMAT, "bad header entry"), "missing data_offsets refused");
    ok(open_fails("does-not-exist", BLIP2_EIO, "No such file"), "missing file is an I/O error");
    ok(open_fails(".", BLIP2_EIO, "not a regular file"), "a directory is refused");

    snprintf(path, sizeof path, "rm -rf %s", dir);
    if (system(path) != 0) diag("cleanup failed");
    return tap_done();
}
