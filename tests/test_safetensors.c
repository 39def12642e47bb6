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

/* Header text of tensor "w" with that dtype, shape and data_offsets (JSON
 * text), and a whole header of it alone. */
#define ENTRY(dtype, shape, offsets) \
    "\"w\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offsets "}"
#define ONE_ENTRY(dtype, shape, offsets) "{" ENTRY(dtype, shape, offsets) "}"

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
    /* headers refused as a whole: the length field (-1: the header's
     * length), the header, the bytes after it */
    static const struct { const char *name, *hdr; int64_t hlen; size_t ndata; const char *needle, *what; } bad_hdr[] = {
        {"hlen_huge", "{}", (int64_t)1 << 62, 0, "header length", "header length beyond the file refused"},
        {"hlen_zero", "{}", 0, 0, "header length", "zero header length refused"},
        {"badjson", "{\"a\": [1, 2", -1, 0, "bad safetensors header", "broken JSON refused"},
        {"notobj", "[1, 2, 3]", -1, 0, "not an object", "non-object header refused"},
        {"dup", "{" ENTRY("F32", "[4]", "[0,16]") "," ENTRY("F32", "[4]", "[0,16]") "}", -1, 16, "bad safetensors header", "duplicate names refused"},
        {"nooff", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}", -1, 16, "bad header entry", "missing data_offsets refused"},
    };
    for (size_t i = 0; i < sizeof bad_hdr / sizeof bad_hdr[0]; i++) {
        const uint64_t hlen = bad_hdr[i].hlen < 0 ? strlen(bad_hdr[i].hdr) : (uint64_t)bad_hdr[i].hlen;
        put_st(bad_hdr[i].name, bad_hdr[i].hdr, hlen, bad_hdr[i].ndata);
        ok(open_fails(bad_hdr[i].name, BLIP2_EFORMAT, bad_hdr[i].needle), "%s", bad_hdr[i].what);
    }
    /* one tensor "w" with a wrong entry, and the data bytes after the header */
    static const struct { const char *name, *hdr; size_t ndata; const char *needle, *what; } bad_entry[] = {
        {"trunc", ONE_ENTRY("F32", "[4]", "[0,16]"), 8, "beyond end of file", "data beyond the end refused"},
        {"count", ONE_ENTRY("F32", "[4]", "[0,12]"), 16, "12 bytes for 4 elements", "byte count != shape refused"},
        {"dtype", ONE_ENTRY("F33", "[4]", "[0,16]"), 16, "unknown dtype", "unknown dtype refused"},
        {"negshape", ONE_ENTRY("F32", "[-4]", "[0,16]"), 16, "bad shape", "negative dimension refused"},
        {"order", ONE_ENTRY("F32", "[4]", "[16,0]"), 16, "bad data_offsets", "reversed offsets refused"},
        {"overflow", ONE_ENTRY("F32", "[1099511627776,1099511627776]", "[0,16]"), 16, "shape", "overflowing shape refused"},
    };
    for (size_t i = 0; i < sizeof bad_entry / sizeof bad_entry[0]; i++) {
        put_st(bad_entry[i].name, bad_entry[i].hdr, strlen(bad_entry[i].hdr), bad_entry[i].ndata);
        ok(open_fails(bad_entry[i].name, BLIP2_EFORMAT, bad_entry[i].needle), "%s", bad_entry[i].what);
    }
    ok(open_fails("does-not-exist", BLIP2_EIO, "No such file"), "missing file is an I/O error");
    ok(open_fails(".", BLIP2_EIO, "not a regular file"), "a directory is refused");

    snprintf(path, sizeof path, "rm -rf %s", dir);
    if (system(path) != 0) diag("cleanup failed");
    return tap_done();
}
