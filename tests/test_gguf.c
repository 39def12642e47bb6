/*
 * test_gguf.c - the GGUF reader and writer (model/formats/gguf.c) and the checks a
 * packed BLIP-2 file gets at load (model/packed.c, model/weights.c).
 *
 *   1. round trip: every value type, a string array, f32/f16/bf16/q8_0/q4_0
 *      tensors written and read back (values, data, 64-byte alignment);
 *      GGML's i8 and i32 (the int8 vision weights) too, and their names;
 *   2. corruption: bad magic, version, huge counts and lengths, unknown
 *      types, bad alignment, misaligned offset, tensor beyond the end,
 *      duplicate key and tensor, every truncation of a valid file: each
 *      refused with BLIP2_EFORMAT and the key or tensor named;
 *   3. a packed golden model: loads; with a tensor renamed (missing), a
 *      dimension changed (wrong shape), a norm stored as f16 (wrong type),
 *      or the file truncated, the load fails naming file and tensor;
 *   4. the weights cache: a folder loaded with a cache directory is
 *      converted once (same file on the next load, another for another
 *      type, converted again when damaged or when a weight file changes);
 *   5. mlock: locks the mapping, and with RLIMIT_MEMLOCK too small (and
 *      CAP_IPC_LOCK dropped) fails naming RLIMIT_MEMLOCK.
 */
#include "blip2.h"
#include "gguf.h"
#include "tap.h"

#include <dirent.h>
#include <linux/capability.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static char tmpdir[512];

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

/* Parses a buffer; returns the code, the message in err. */
static int parse(const unsigned char *b, size_t n, blip2_error *err)
{
    b2_gguf *g = NULL;
    int rc = b2__gguf_parse(&g, b, n, "test.gguf", err);
    if (rc == 0) b2__gguf_close(g);
    else if (g) rc = 99; /* a failure must leave nothing behind */
    return rc;
}

static void put64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }

/* Offset of the tensor info of name (just after its name). */
static size_t find_info(const unsigned char *b, size_t n, const char *name)
{
    const size_t l = strlen(name);
    for (size_t i = 0; i + 8 + l <= n; i++) {
        uint64_t len = 0;
        for (int k = 0; k < 8; k++) len |= (uint64_t)b[i + k] << (8 * k);
        if (len == l && !memcmp(b + i + 8, name, l)) {
            /* tensor infos follow the metadata: the last match is the info */
            size_t last = i + 8 + l;
            for (size_t j = i + 1; j + 8 + l <= n; j++) {
                uint64_t l2 = 0;
                for (int k = 0; k < 8; k++) l2 |= (uint64_t)b[j + k] << (8 * k);
                if (l2 == l && !memcmp(b + j + 8, name, l)) last = j + 8 + l;
            }
            return last;
        }
    }
    return 0;
}

static int has(const blip2_error *e, const char *s) { return strstr(e->text, s) != NULL; }

/* The metadata of the round trip: one key of every kind the writer has. */
static void write_keys(b2_gguf_w *w)
{
    static const char *const ss[] = {"x", "", "zz"};
    static const float fa[] = {1, 2, 3};
    static const int32_t ia[] = {-1, 5};
    b2__gguf_w_u32(w, "a.u32", 4000000000u);
    b2__gguf_w_i32(w, "a.i32", -7);
    b2__gguf_w_f32(w, "a.f32", 0.25f);
    b2__gguf_w_f64(w, "a.f64", 1.0 / 255);
    b2__gguf_w_bool(w, "a.bool", 1);
    b2__gguf_w_str(w, "a.str", "h\0llo", 5);
    b2__gguf_w_arr_str(w, "a.strs", ss, NULL, 3);
    b2__gguf_w_arr_f32(w, "a.f32s", fa, 3);
    b2__gguf_w_arr_i32(w, "a.i32s", ia, 2);
}

static void test_round_trip(void)
{
    char path[600];
    snprintf(path, sizeof path, "%s/rt.gguf", tmpdir);
    b2_gguf_w *w = b2__gguf_w_new();
    write_keys(w);
    /* tensors: (3, 5) f32, (2, 7) f16, (4, 64) q8_0, (1, 33) bf16, (4, 64) q4_0 */
    float src[4 * 64];
    for (int i = 0; i < 4 * 64; i++) src[i] = (float)((i * 37) % 23) - 11.0f;
    const struct { const char *name; b2_wtype t; int rows, k; } ts[] = {
        {"t.f32", B2_WT_F32, 3, 5}, {"t.f16", B2_WT_F16, 2, 7}, {"t.q8", B2_WT_Q8_0, 4, 64}, {"t.bf16", B2_WT_BF16, 1, 33},
        {"t.q4", B2_WT_Q4_0, 4, 64}};
    unsigned char *data[5];
    for (int i = 0; i < 5; i++) {
        int64_t ne[2] = {ts[i].k, ts[i].rows};
        ok(b2__gguf_w_tensor(w, ts[i].name, ts[i].t, 2, ne) == i, "declare %s", ts[i].name);
        const size_t rb = b2__wt_row_bytes(ts[i].t, ts[i].k);
        data[i] = malloc(rb * ts[i].rows);
        for (int r = 0; r < ts[i].rows; r++) b2__wquantize_row(data[i] + r * rb, src + r * ts[i].k, ts[i].t, ts[i].k);
    }
    int64_t bad[2] = {33, 1};
    ok(b2__gguf_w_tensor(w, "bad", B2_WT_Q8_0, 2, bad) < 0, "writer refuses q8_0 rows of 33");
    ok(b2__gguf_w_tensor(w, "bad4", B2_WT_Q4_0, 2, bad) < 0, "writer refuses q4_0 rows of 33");
    /* the refusal is sticky: start again without it */
    b2__gguf_w_free(w);
    w = b2__gguf_w_new();
    write_keys(w);
    for (int i = 0; i < 5; i++) {
        int64_t ne[2] = {ts[i].k, ts[i].rows};
        b2__gguf_w_tensor(w, ts[i].name, ts[i].t, 2, ne);
    }
    FILE *f = fopen(path, "wb");
    blip2_error err = {0};
    int rc = b2__gguf_w_write_header(w, f, &err);
    for (int i = 0; i < 5 && rc == 0; i++) rc = b2__gguf_w_write_data(w, f, i, data[i], &err);
    fclose(f);
    ok(rc == 0, "write %s", path);
    const uint64_t want_size = b2__gguf_w_file_size(w);
    b2__gguf_w_free(w);

    b2_gguf *g = NULL;
    rc = b2__gguf_open(&g, path, &err);
    if (!ok(rc == 0, "read back")) { diag("%s", err.text); return; }
    size_t msize;
    const unsigned char *map = b2__gguf_map(g, &msize);
    ok(msize == want_size, "file size %zu == predicted %llu", msize, (unsigned long long)want_size);
    ok(b2__gguf_alignment(g) == 64, "general.alignment 64");
    int64_t iv;
    float fv;
    int bv;
    b2_gguf_str sv;
    ok(b2__gguf_get_int(g, "a.u32", &iv, &err) == 0 && iv == 4000000000ll, "u32");
    ok(b2__gguf_get_int(g, "a.i32", &iv, &err) == 0 && iv == -7, "i32");
    ok(b2__gguf_get_f32(g, "a.f32", &fv, &err) == 0 && fv == 0.25f, "f32");
    const b2_gguf_kv *kv = b2__gguf_find_kv(g, "a.f64");
    ok(kv && kv->type == B2_GGUF_F64 && kv->v.f == 1.0 / 255, "f64 exact");
    ok(b2__gguf_get_bool(g, "a.bool", &bv, &err) == 0 && bv == 1, "bool");
    ok(b2__gguf_get_str(g, "a.str", &sv, &err) == 0 && sv.len == 5 && !memcmp(sv.p, "h\0llo", 5), "string with NUL");
    kv = b2__gguf_find_kv(g, "a.strs");
    ok(kv && kv->arr_type == B2_GGUF_STRING && kv->arr_n == 3 && kv->arr_str[1].len == 0 && kv->arr_str[2].len == 2 &&
       !memcmp(kv->arr_str[2].p, "zz", 2), "string array");
    kv = b2__gguf_find_kv(g, "a.f32s");
    ok(kv && kv->arr_n == 3 && b2__gguf_arr_num(kv, 2) == 3.0, "f32 array");
    kv = b2__gguf_find_kv(g, "a.i32s");
    ok(kv && kv->arr_n == 2 && b2__gguf_arr_num(kv, 0) == -1.0, "i32 array");
    ok(b2__gguf_get_str(g, "a.u32", &sv, &err) == BLIP2_EFORMAT && has(&err, "a.u32"), "wrong type named: %s", err.text);
    ok(b2__gguf_get_int(g, "nope", &iv, &err) == BLIP2_EFORMAT && has(&err, "nope") && has(&err, "rt.gguf"),
       "missing key named: %s", err.text);
    ok(b2__gguf_n_tensors(g) == 5, "5 tensors");
    for (int i = 0; i < 5; i++) {
        const b2_gguf_tensor *t = b2__gguf_find_tensor(g, ts[i].name);
        const size_t rb = b2__wt_row_bytes(ts[i].t, ts[i].k);
        ok(t && t->type == ts[i].t && t->ne[0] == ts[i].k && t->ne[1] == ts[i].rows && t->nbytes == rb * ts[i].rows &&
           !memcmp(t->data, data[i], t->nbytes) && ((const unsigned char *)t->data - map) % 64 == 0,
           "tensor %s: type, shape, data, 64-byte aligned", ts[i].name);
        free(data[i]);
    }
    ok(b2__gguf_find_tensor(g, "t.f3") == NULL, "absent tensor");
    b2__gguf_close(g);

    /* GGML's integer types: i8 (3, 5) and i32 (7) */
    snprintf(path, sizeof path, "%s/rti.gguf", tmpdir);
    w = b2__gguf_w_new();
    int8_t q[15];
    int32_t s32[7];
    for (int i = 0; i < 15; i++) q[i] = (int8_t)(i * 17 - 127);
    for (int i = 0; i < 7; i++) s32[i] = -1000000 * i;
    const int64_t ne_q[2] = {5, 3}, ne_s[1] = {7};
    ok(b2__gguf_w_tensor_t(w, "t.i8", B2_GGUF_TYPE_I8, 2, ne_q) == 0 &&
       b2__gguf_w_tensor_t(w, "t.i32", B2_GGUF_TYPE_I32, 1, ne_s) == 1, "declare i8 and i32 tensors");
    f = fopen(path, "wb");
    rc = b2__gguf_w_write_header(w, f, &err);
    if (rc == 0) rc = b2__gguf_w_write_data(w, f, 0, q, &err);
    if (rc == 0) rc = b2__gguf_w_write_data(w, f, 1, s32, &err);
    fclose(f);
    b2__gguf_w_free(w);
    ok(rc == 0 && b2__gguf_open(&g, path, &err) == 0, "write and read back %s", path);
    if (rc == 0 && g) {
        const b2_gguf_tensor *ti = b2__gguf_find_tensor(g, "t.i8"), *tl = b2__gguf_find_tensor(g, "t.i32");
        ok(ti && (uint32_t)ti->type == B2_GGUF_TYPE_I8 && ti->nbytes == 15 && !memcmp(ti->data, q, 15),
           "i8 tensor: type 24, 15 bytes, data");
        ok(tl && (uint32_t)tl->type == B2_GGUF_TYPE_I32 && tl->nbytes == 28 && !memcmp(tl->data, s32, 28),
           "i32 tensor: type 26, 28 bytes, data");
        ok(ti && tl && !b2__wt_name(ti->type) && !b2__wt_name(tl->type) &&
           !strcmp(b2__gguf_type_name(B2_GGUF_TYPE_I8), "i8") && !strcmp(b2__gguf_type_name(B2_GGUF_TYPE_I32), "i32") &&
           !b2__gguf_type_name(25), "neither is a weight type; named i8 and i32; i16 (25) unknown");
        b2__gguf_close(g);
    }
}

static void test_corrupt(void)
{
    char path[600];
    snprintf(path, sizeof path, "%s/c.gguf", tmpdir);
    b2_gguf_w *w = b2__gguf_w_new();
    b2__gguf_w_str(w, "general.architecture", "test", 4);
    const char *ss[] = {"ab", "cd"};
    b2__gguf_w_arr_str(w, "k.strs", ss, NULL, 2);
    int64_t ne[2] = {8, 2};
    b2__gguf_w_tensor(w, "first", B2_WT_F32, 2, ne);
    b2__gguf_w_tensor(w, "second", B2_WT_F32, 2, ne);
    float d[16] = {0};
    FILE *f = fopen(path, "wb");
    b2__gguf_w_write_header(w, f, NULL);
    b2__gguf_w_write_data(w, f, 0, d, NULL);
    b2__gguf_w_write_data(w, f, 1, d, NULL);
    fclose(f);
    b2__gguf_w_free(w);
    size_t n;
    unsigned char *good = slurp(path, &n), *b = malloc(n);
    blip2_error err;
    ok(parse(good, n, &err) == 0, "the valid file parses");

#define CASE(what, mutate, expect)                                                          \
    do {                                                                                    \
        memcpy(b, good, n);                                                                 \
        size_t bn = n;                                                                      \
        mutate;                                                                             \
        memset(&err, 0, sizeof err);                                                        \
        int rc_ = parse(b, bn, &err);                                                       \
        ok(rc_ == BLIP2_EFORMAT && has(&err, "test.gguf") && has(&err, expect),             \
           "%s refused: %s", what, err.text);                                               \
    } while (0)

    const size_t i1 = find_info(good, n, "first"), i2 = find_info(good, n, "second");
    ok(i1 && i2, "tensor infos found");
    CASE("bad magic", b[0] = 'X', "bad magic");
    CASE("version 2", put32(b + 4, 2), "version 2");
    CASE("version 4", put32(b + 4, 4), "version 4");
    CASE("huge tensor count", put64(b + 8, 1ull << 40), "tensors");
    CASE("tensor count past the file", put64(b + 8, 1000), "tensors");
    CASE("huge metadata count", put64(b + 16, ~0ull), "metadata");
    CASE("huge key length", put64(b + 24, 1ull << 62), "metadata key");
    /* the first key is general.alignment (u32 64) */
    CASE("alignment not a power of two", put32(b + 24 + 8 + 17 + 4, 48), "general.alignment");
    CASE("alignment zero", put32(b + 24 + 8 + 17 + 4, 0), "general.alignment");
    CASE("alignment of the wrong type", put32(b + 24 + 8 + 17, B2_GGUF_I32), "general.alignment");
    CASE("unknown value type", put32(b + 24 + 8 + 17, 13), "unknown value type");
    CASE("duplicate tensor", memcpy(b + i2 - 6, "first\0", 6); put64(b + i2 - 14, 5);
         memmove(b + i2 - 1, b + i2, n - i2); bn = n - 1, "'first'");
    CASE("zero dims", put32(b + i1, 0), "'first'");
    CASE("five dims", put32(b + i1, 5), "'first'");
    CASE("zero dimension", put64(b + i1 + 4, 0), "'first'");
    CASE("unknown tensor type", put32(b + i1 + 4 + 16, 3), "'first'");
    CASE("i16 tensor type (GGML's, not read)", put32(b + i1 + 4 + 16, 25), "'first'");
    CASE("q8_0 with rows of 8", put32(b + i1 + 4 + 16, B2_WT_Q8_0), "'first'");
    CASE("q4_0 with rows of 8", put32(b + i1 + 4 + 16, B2_WT_Q4_0), "'first'");
    CASE("misaligned offset", put64(b + i2 + 4 + 16 + 4, 68), "'second'");
    CASE("tensor beyond the end", put64(b + i2 + 4 + 16 + 4, 1ull << 40), "'second'");
    CASE("tensor beyond the end by one block", put64(b + i2 + 4 + 16 + 4, 128), "'second'");
    CASE("huge dimension", put64(b + i1 + 4 + 8, 1ull << 62), "'first'");
    /* every truncation of the valid file is refused (and never read past) */
    int all = 1;
    for (size_t len = 0; len < n; len++) {
        unsigned char *t = malloc(len ? len : 1); /* exact size: ASan sees any overread */
        memcpy(t, good, len);
        int rc = parse(t, len, &err);
        if (rc != BLIP2_EFORMAT) { all = 0; diag("length %zu: rc %d", len, rc); }
        free(t);
    }
    ok(all, "all %zu truncations refused", n);
    /* a key written twice */
    w = b2__gguf_w_new();
    b2__gguf_w_u32(w, "k.x", 1);
    b2__gguf_w_str(w, "k.y", "y", 1);
    b2__gguf_w_u32(w, "k.x", 2);
    f = fopen(path, "wb");
    b2__gguf_w_write_header(w, f, NULL);
    fclose(f);
    b2__gguf_w_free(w);
    size_t dn;
    unsigned char *dup = slurp(path, &dn);
    ok(parse(dup, dn, &err) == BLIP2_EFORMAT && has(&err, "duplicate metadata key 'k.x'"), "duplicate key refused: %s",
       err.text);
    free(dup);
    free(good);
    free(b);
}

/* src: the golden model name; path: out in tmpdir; bad: tmpdir's bad.gguf. */
static void test_paths(const char *gdir, const char *name, const char *out, char src[600], char path[700],
                       char bad[700])
{
    snprintf(src, 600, "%s/%s", gdir, name);
    snprintf(path, 700, "%s/%s", tmpdir, out);
    snprintf(bad, 700, "%s/bad.gguf", tmpdir);
}

/* A packed golden model with one change made in its bytes. */
static void test_model(const char *gdir)
{
    char src[600], path[700], bad[700];
    test_paths(gdir, "opt-tiny", "tiny.gguf", src, path, bad);
    blip2_error err = {0};
    blip2_convert_stats st;
    if (!ok(blip2_convert(src, path, "f16", NULL, NULL, &st, &err) == 0, "convert opt-tiny")) {
        diag("%s", err.text);
        return;
    }
    blip2_model *m = NULL;
    ok(blip2_model_load(&m, path, NULL, &err) == 0 && !strcmp(blip2_model_dtype(m), "f16"), "packed model loads");
    const char *mp = NULL;
    const void *addr = NULL;
    size_t msize = 0;
    ok(m && blip2_model_mapping(m, &mp, &addr, &msize) && addr && msize == (size_t)st.bytes && !strcmp(mp, path),
       "mapping reported");
    blip2_model_free(m);
    size_t n;
    unsigned char *good = slurp(path, &n);
    const char *ln = "language_model.model.decoder.final_layer_norm.weight";
    const size_t iq = find_info(good, n, "query_tokens"), il = find_info(good, n, ln);
    ok(iq && il, "tensor infos found");

    unsigned char *b = malloc(n);
#define MCASE(what, mutate, len, expect) MCASE2(what, mutate, len, expect, BLIP2_EFORMAT)
#define MCASE2(what, mutate, len, expect, code)                                                            \
    do {                                                                                              \
        memcpy(b, good, n);                                                                           \
        mutate;                                                                                       \
        spit(bad, b, len);                                                                            \
        m = NULL;                                                                                     \
        memset(&err, 0, sizeof err);                                                                  \
        int rc_ = blip2_model_load(&m, bad, NULL, &err);                                              \
        ok(rc_ == code && !m && has(&err, "bad.gguf") && has(&err, expect), "%s refused: %s", \
           what, err.text);                                                                           \
        blip2_model_free(m);                                                                          \
    } while (0)
    MCASE("missing tensor", b[iq - 1] = 'X', n, "missing tensor 'query_tokens'");
    MCASE("wrong shape", put64(b + il + 4, 28), n, ln);
    MCASE("wrong type", put32(b + il + 4 + 8, B2_WT_F16), n, "stored as f16, expected f32");
    MCASE("truncated file", (void)0, n - 100, "truncated");
    MCASE("truncated header", (void)0, 100000, "bad.gguf");
    MCASE2("not blip2", memcpy(memmem(b, n, "blip2", 5), "blip3", 5), n, "general.architecture", BLIP2_EUNSUPPORTED);
    /* a head count of 0 must not reach the forward pass */
    const char *key = "blip2.text.attention.head_count";
    unsigned char *k = memmem(good, n, key, strlen(key));
    ok(k != NULL, "head count key found");
    if (k) MCASE("zero heads", put32(b + (k - good) + strlen(key) + 4, 0), n, "head_count must be positive");
    free(b);
    free(good);
    unlink(bad);
    unlink(path);
}

static int count_gguf(const char *dir, char *last, size_t cap);

/* A packed Flan-T5 model: the SentencePiece model travels in the file;
 * without it, or with a damaged one, the file is refused naming the key. */
static void test_t5(const char *gdir)
{
    char src[600], path[700], bad[700];
    test_paths(gdir, "t5-tiny", "t5.gguf", src, path, bad);
    blip2_error err = {0};
    if (!ok(blip2_convert(src, path, "bf16", NULL, NULL, NULL, &err) == 0, "convert t5-tiny")) {
        diag("%s", err.text);
        return;
    }
    blip2_model *m = NULL;
    ok(blip2_model_load(&m, path, NULL, &err) == 0 && !strcmp(blip2_model_family(m), "t5") &&
       !strcmp(blip2_model_dtype(m), "bf16"), "packed T5 model loads (family t5, bf16)");
    int32_t *ids = NULL;
    size_t nid = 0;
    const int trc = m ? blip2_tokenize(m, "Question: what is this? Answer:", 1, &ids, &nid, &err) : -1;
    ok(trc == 0 && nid > 2 && ids[nid - 1] == 1, "its tokenizer (from the stored spiece.model) encodes: %zu ids "
       "ending in </s>", nid);
    free(ids);
    blip2_model_free(m);
    size_t n;
    unsigned char *good = slurp(path, &n);
    const char *key = "blip2.tokenizer.spiece_model";
    unsigned char *k = memmem(good, n, key, strlen(key));
    ok(k != NULL, "spiece_model key found");
    unsigned char *b = malloc(n);
    if (k) {
        const size_t at = (size_t)(k - good) + strlen(key); /* then u32 ARRAY, u32 U8, u64 count, bytes */
        MCASE("missing spiece model", b[at - 1] = 'X', n, "missing 'blip2.tokenizer.spiece_model'");
        MCASE("corrupt spiece model", memset(b + at + 16, 0xff, 64), n, "'blip2.tokenizer.spiece_model': not a SentencePiece model");
        /* the same bytes as half as many u16 (spiece.model has an even size) */
        uint64_t cnt = 0;
        for (int i = 0; i < 8; i++) cnt |= (uint64_t)good[at + 8 + i] << (8 * i);
        if (cnt % 2 == 0)
            MCASE("spiece model as a u16 array", put32(b + at + 4, B2_GGUF_U16); put64(b + at + 8, cnt / 2), n,
                  "'blip2.tokenizer.spiece_model' must be an array of u8");
    }
    const char *tk = "blip2.text.decoder_start_token_id";
    k = memmem(good, n, tk, strlen(tk));
    if (ok(k != NULL, "decoder_start_token_id key found"))
        MCASE("decoder start outside the vocabulary", put32(b + (k - good) + strlen(tk) + 4, 40000), n,
              "decoder_start_token_id outside the vocabulary");
    const char *mt = "blip2.text.model_type";
    k = memmem(good, n, mt, strlen(mt));
    if (ok(k != NULL, "model_type key found"))
        MCASE2("unknown language model type", memcpy(b + (k - good) + strlen(mt) + 4 + 8, "t6", 2), n,
               "language model type 't6'", BLIP2_EUNSUPPORTED);
    free(b);
    free(good);
    unlink(bad);
    unlink(path);

    /* the weights cache packs a T5 folder; a changed spiece.model changes its key */
    char copy[700], cache[700], cmd[1600];
    snprintf(copy, sizeof copy, "%s/t5src", tmpdir);
    snprintf(cache, sizeof cache, "%s/t5cache", tmpdir);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", src, copy);
    if (!ok(system(cmd) == 0, "copy t5-tiny")) return;
    blip2_load_opts o = {.cache_dir = cache};
    m = NULL;
    char t5a[300] = "", t5b[300] = "";
    ok(blip2_model_load(&m, copy, &o, &err) == 0 && blip2_model_mapping(m, NULL, NULL, NULL) &&
       !strcmp(blip2_model_family(m), "t5") && count_gguf(cache, t5a, sizeof t5a) == 1,
       "a T5 folder with a cache directory is converted and mapped");
    blip2_model_free(m);
    m = NULL;
    snprintf(cmd, sizeof cmd, "touch -d '2001-01-01' '%s/spiece.model'", copy);
    ok(system(cmd) == 0 && blip2_model_load(&m, copy, &o, &err) == 0 &&
       count_gguf(cache, t5b, sizeof t5b) == 1 && strcmp(t5a, t5b) != 0,
       "a changed spiece.model is converted again, and the stale file removed (%s -> %s)", t5a, t5b);
    blip2_model_free(m);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", copy, cache);
    system(cmd);
}

/* Number of .gguf files in dir. */
static int count_gguf(const char *dir, char *last, size_t cap)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls '%s' 2>/dev/null | grep -c '\\.gguf$'", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p && fscanf(p, "%d", &n) != 1) n = -1;
    if (p) pclose(p);
    if (last) {
        snprintf(cmd, sizeof cmd, "ls -t '%s' | grep '\\.gguf$' | head -1", dir);
        p = popen(cmd, "r");
        last[0] = 0;
        if (p && fgets(last, (int)cap, p)) last[strcspn(last, "\n")] = 0;
        if (p) pclose(p);
    }
    return n;
}

static void test_cache(const char *gdir)
{
    char src[600], cache[600], cmd[1400], name[256], name2[256];
    snprintf(src, sizeof src, "%s/model", tmpdir);
    snprintf(cache, sizeof cache, "%s/cache/sub", tmpdir);
    snprintf(cmd, sizeof cmd, "cp -r '%s/opt-tiny-sharded' '%s'", gdir, src);
    if (!ok(system(cmd) == 0, "copy the sharded model")) return;
    blip2_load_opts o = {.cache_dir = cache};
    blip2_error err = {0};
    blip2_model *m = NULL;
    const char *path = NULL;
    ok(blip2_model_load(&m, src, &o, &err) == 0 && blip2_model_mapping(m, &path, NULL, NULL) &&
       !strcmp(blip2_model_dtype(m), "f16"), "a folder with a cache directory is converted (f16, its own type) "
       "and mapped");
    ok(count_gguf(cache, name, sizeof name) == 1 && path && strstr(path, name) && strstr(name, "model-") == name,
       "one file in the (created) cache: %s", name);
    blip2_model_free(m);
    m = NULL;
    ok(blip2_model_load(&m, src, &o, &err) == 0 && count_gguf(cache, name2, sizeof name2) == 1 &&
       !strcmp(name, name2), "the next load maps the same file");
    blip2_model_free(m);
    m = NULL;
    o.cache_type = "bf16";
    ok(blip2_model_load(&m, src, &o, &err) == 0 && !strcmp(blip2_model_dtype(m), "bf16") &&
       count_gguf(cache, NULL, 0) == 2, "another type is another file");
    blip2_model_free(m);
    m = NULL;
    o.cache_type = NULL;
    char full[1000];
    snprintf(full, sizeof full, "%s/%s", cache, name);
    truncate(full, 5000);
    int rc = blip2_model_load(&m, src, &o, &err);
    ok(rc == 0 && count_gguf(cache, NULL, 0) == 2, "a damaged cache file is converted again%s%s",
       rc ? ": " : "", rc ? err.text : "");
    blip2_model_free(m);
    m = NULL;
    /* a changed weight file changes the key */
    snprintf(cmd, sizeof cmd, "touch -d '2001-01-01' '%s/model-00002-of-00002.safetensors'", src);
    system(cmd);
    ok(blip2_model_load(&m, src, &o, &err) == 0 && count_gguf(cache, name2, sizeof name2) == 1 &&
       strcmp(name, name2) != 0,
       "a changed weight file is converted again, and the earlier version's files (f16, bf16) removed");
    {
        char k1[1100], k2[1100];
        snprintf(k1, sizeof k1, "%s/%s.kernels", cache, name);
        snprintf(k2, sizeof k2, "%s/%s.kernels", cache, name2);
        ok(access(k1, F_OK) != 0 && access(k2, F_OK) == 0,
           "the decode kernel choice is cached beside the new file, the earlier file's removed with it");
    }
    blip2_model_free(m);
    m = NULL;
    o.cache_dir = "/proc/no/such/dir";
    ok(blip2_model_load(&m, src, &o, &err) == BLIP2_EIO && has(&err, "cache"), "an unusable cache directory: %s",
       err.text);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s/cache'", src, tmpdir);
    system(cmd);
}

static void test_mlock(const char *gdir)
{
    char src[600], path[600];
    snprintf(src, sizeof src, "%s/opt-tiny", gdir);
    snprintf(path, sizeof path, "%s/lock.gguf", tmpdir);
    blip2_error err = {0};
    if (!ok(blip2_convert(src, path, "bf16", NULL, NULL, NULL, &err) == 0, "convert for mlock")) return;
    blip2_load_opts o = {.mlock = 1};
    blip2_model *m = NULL;
    int rc = blip2_model_load(&m, path, &o, &err);
    if (rc == 0) {
        ok(1, "--mlock: the mapping is locked");
        blip2_model_free(m);
        m = NULL;
    } else {
        ok(has(&err, "RLIMIT_MEMLOCK"), "mlock refused by this machine's limit, named: %s", err.text);
    }
    /* drop CAP_IPC_LOCK (root ignores the limit with it), then a 64 KiB limit */
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) == 0) {
        d[0].effective &= ~(1u << CAP_IPC_LOCK);
        syscall(SYS_capset, &h, d);
    }
    struct rlimit rl = {64 << 10, 64 << 10};
    setrlimit(RLIMIT_MEMLOCK, &rl);
    rc = blip2_model_load(&m, path, &o, &err);
#ifdef __SANITIZE_ADDRESS__
    /* ASan's mlock interceptor does nothing and succeeds */
    printf("ok %d - # SKIP RLIMIT_MEMLOCK: mlock is a no-op under AddressSanitizer\n", ++tap__n);
#else
    ok(rc == BLIP2_EIO && !m && has(&err, "RLIMIT_MEMLOCK") && has(&err, "lock.gguf"),
       "RLIMIT_MEMLOCK too small: refused by name: %s", err.text);
#endif
    blip2_model_free(m);
    unlink(path);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/test_gguf.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) { ok(0, "mkdtemp"); return tap_done(); }
    const char *gdir = getenv("GOLDEN_DIR");
    test_round_trip();
    test_corrupt();
    test_model(gdir ? gdir : "tests/golden");
    test_t5(gdir ? gdir : "tests/golden");
    test_cache(gdir ? gdir : "tests/golden");
    test_mlock(gdir ? gdir : "tests/golden");
    /* whatever the tests left there (files and the tuner's caches) */
    DIR *d = opendir(tmpdir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char p[sizeof tmpdir + sizeof e->d_name + 1];
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    ok(rmdir(tmpdir) == 0, "the temporary directory is left empty and removed");
    return tap_done();
}
