/*
 * test_tokenizer.c - the OPT byte-level BPE tokenizer against the
 * transformers 4.37.2 golden strings, plus bad input and edge cases.
 *
 * Data flow: $GOLDEN_DIR/opt-tiny (tokenizer files) -> b2__bpe_load ->
 * every entry of $GOLDEN_DIR/tokenizer_golden.json: encode with and without
 * BOS, token strings, raw token bytes, decode of the golden ids with and
 * without special tokens, all compared exactly.  Then: files that are
 * missing or broken (written to a temporary directory), unknown ids,
 * invalid UTF-8 in and out, a small hand-made tokenizer that pins down BPE
 * tie-breaking, added-token stripping and config options, and timings of
 * load and of long inputs (reported with diag()).
 */
#include "tokenizer.h"
#include "tap.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int ids_equal(const int32_t *a, size_t na, json_t *want)
{
    if (!json_is_array(want) || json_array_size(want) != na) return 0;
    for (size_t i = 0; i < na; i++)
        if (json_integer_value(json_array_get(want, i)) != a[i]) return 0;
    return 1;
}

static void diag_ids(const char *what, const int32_t *a, size_t n)
{
    char line[512];
    size_t w = 0;
    for (size_t i = 0; i < n && w + 16 < sizeof line; i++)
        w += (size_t)snprintf(line + w, sizeof line - w, "%d ", a[i]);
    line[w] = 0;
    diag("%s: %s", what, line);
}

static int32_t *json_ids(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n ? *n : 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

static void check_decode(const b2_bpe *t, const char *name, const int32_t *ids,
                         size_t n, int skip, json_t *want)
{
    char *text = NULL;
    blip2_error err = {0};
    int rc = b2__bpe_decode(t, ids, n, skip, &text, &err);
    int good = rc == 0 && json_is_string(want) &&
               strlen(text) == json_string_length(want) &&
               !memcmp(text, json_string_value(want), json_string_length(want));
    if (!ok(good, "%s: decode skip_special=%d", name, skip))
        diag("rc %d (%s) got '%s' want '%s'", rc, err.text, text ? text : "",
             json_string_value(want));
    free(text);
}

/* All checks for one golden entry. */
static void check_entry(const b2_bpe *t, size_t k, json_t *e)
{
    json_t *jt = json_object_get(e, "text");
    const char *text = json_string_value(jt);
    size_t len = json_string_length(jt);
    char name[96], shown[40];
    size_t w = 0;
    for (size_t i = 0; i < len && w + 3 < sizeof shown; i++) {
        uint8_t c = (uint8_t)text[i];
        if (c < 0x20) {  /* keep the TAP line on one line */
            shown[w++] = '\\';
            shown[w++] = c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : '?';
        } else if (c >= 0x80 && w + 8 >= sizeof shown) {
            break;  /* do not cut a character */
        } else {
            shown[w++] = (char)c;
        }
    }
    shown[w] = 0;
    snprintf(name, sizeof name, "golden[%zu] '%s'", k, shown);
    blip2_error err = {0};
    int32_t *ids = NULL;
    size_t n = 0;

    int rc = b2__bpe_encode(t, text, len, 1, &ids, &n, &err);
    if (!ok(rc == 0 && ids_equal(ids, n, json_object_get(e, "ids")),
            "%s: ids", name)) {
        diag("rc %d %s", rc, err.text);
        diag_ids("got", ids, n);
    }
    free(ids);

    rc = b2__bpe_encode(t, text, len, 0, &ids, &n, &err);
    json_t *tokens = json_object_get(e, "tokens");
    if (!ok(rc == 0 && ids_equal(ids, n, json_object_get(e, "ids_no_special")),
            "%s: ids_no_special", name)) {
        diag("rc %d %s", rc, err.text);
        diag_ids("got", ids, n);
    }
    /* Token strings, and the raw bytes that streaming concatenates. */
    int tok_ok = rc == 0 && json_array_size(tokens) == n, bytes_ok = 1,
        has_special = 0;
    char *cat = malloc(len * 2 + 16);
    size_t cl = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *s = b2__bpe_token_str(t, ids[i]);
        const char *want = json_string_value(json_array_get(tokens, i));
        if (!s || !want || strcmp(s, want)) tok_ok = 0;
        int nb = b2__bpe_token_bytes(t, ids[i], cat + cl, len * 2 + 16 - cl);
        if (nb < 0) bytes_ok = 0;
        else if (nb == 0) has_special = 1;
        else cl += (size_t)nb;
    }
    ok(tok_ok, "%s: token strings", name);
    if (!has_special)
        ok(bytes_ok && cl == len && !memcmp(cat, text, len),
           "%s: token bytes concatenate to the text", name);
    free(cat);
    free(ids);

    ids = json_ids(json_object_get(e, "ids"), &n);
    check_decode(t, name, ids, n, 1, json_object_get(e, "decode_skip_special"));
    check_decode(t, name, ids, n, 0, json_object_get(e, "decode_keep_special"));
    free(ids);
}

static int write_file(const char *dir, const char *name, const char *data,
                      size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

static int write_str(const char *dir, const char *name, const char *s)
{
    return write_file(dir, name, s, strlen(s));
}

static int copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", from_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *d = malloc((size_t)n + 1);
    size_t got = fread(d, 1, (size_t)n, f);
    fclose(f);
    int rc = got == (size_t)n ? write_file(to_dir, name, d, (size_t)n) : -1;
    free(d);
    return rc;
}

static void rm_dir(const char *dir)
{
    static const char *const names[] = {"vocab.json", "merges.txt",
                                        "tokenizer_config.json",
                                        "special_tokens_map.json"};
    char path[1024];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Loads dir and expects failure with code and a message containing what. */
static void expect_load_error(const char *dir, int code, const char *what,
                              const char *name)
{
    b2_bpe *t = NULL;
    blip2_error err = {0};
    int rc = b2__bpe_load(&t, dir, &err);
    if (!ok(rc == code && !t && strstr(err.text, what), "%s", name))
        diag("rc %d, message '%s' (want %d, '%s')", rc, err.text, code, what);
    b2__bpe_free(t);
}

static void test_bad_files(const char *tokdir)
{
    char dir[] = "/tmp/b2tokXXXXXX";
    if (!mkdtemp(dir)) {
        ok(0, "mkdtemp");
        return;
    }
    expect_load_error("/nonexistent/blip2-tokenizer", BLIP2_EIO,
                      "/nonexistent/blip2-tokenizer/vocab.json",
                      "missing directory -> EIO naming the path");

    /* vocab.json that does not load */
    static const struct { const char *json, *name; } bad_vocab[] = {
        {"{\"a\": 0, \"b\": ", "truncated vocab.json -> EFORMAT naming the file"},
        {"[1, 2]", "vocab.json not an object -> EFORMAT"},
        {"{\"a\": \"0\"}", "vocab.json string id -> EFORMAT"},
        {"{\"a\": -1}", "vocab.json negative id -> EFORMAT"},
        {"{\"a\": 0, \"b\": 0}", "vocab.json duplicate id -> EFORMAT"},
        {"{\"a\": 0, \"b\": 99999999}", "vocab.json absurd id -> EFORMAT"},
    };
    for (size_t i = 0; i < sizeof bad_vocab / sizeof bad_vocab[0]; i++) {
        write_str(dir, "vocab.json", bad_vocab[i].json);
        expect_load_error(dir, BLIP2_EFORMAT, "vocab.json", bad_vocab[i].name);
    }
    /* then, in order, one file written (NULL text: the real one copied from
     * tokdir) and, when named, the load refused with code and a message
     * containing what; each file stays for the steps after it */
    static const struct { const char *file, *text; int code; const char *what, *name; } steps[] = {
        {"vocab.json", "{\"a\": 0, \"b\": 1}", BLIP2_EIO, "merges.txt", "missing merges.txt -> EIO naming the file"},
        {"merges.txt", "#version: 0.2\na \xff\n", BLIP2_EFORMAT, "merges.txt", "merges.txt with invalid UTF-8 -> EFORMAT"},
        {"vocab.json", NULL, 0, NULL, NULL},
        {"merges.txt", NULL, 0, NULL, NULL},
        {"tokenizer_config.json", "{\"add_bos_token\": tru", BLIP2_EFORMAT, "tokenizer_config.json",
         "malformed tokenizer_config.json -> EFORMAT naming it"},
        {"tokenizer_config.json", "{\"add_bos_token\": \"yes\"}", BLIP2_EFORMAT, "add_bos_token",
         "non-boolean add_bos_token -> EFORMAT"},
        {"tokenizer_config.json", "{}", 0, NULL, NULL},
        {"special_tokens_map.json", "{\"bos_token\": 5}", BLIP2_EFORMAT, "special_tokens_map.json",
         "bad special token -> EFORMAT naming the file"},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        if (steps[i].text) write_str(dir, steps[i].file, steps[i].text);
        else copy_file(tokdir, dir, steps[i].file);
        if (steps[i].name) expect_load_error(dir, steps[i].code, steps[i].what, steps[i].name);
    }

    /* Only vocab.json and merges.txt: GPT2Tokenizer's defaults. */
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    unlink(path);
    b2_bpe *t = NULL;
    blip2_error err = {0};
    int rc = b2__bpe_load(&t, dir, &err);
    ok(rc == 0, "vocab.json + merges.txt alone load (%s)", err.text);
    if (rc == 0) {
        int32_t *ids;
        size_t n;
        ok(b2__bpe_bos(t) == 50260 && b2__bpe_eos(t) == 50260 &&
           b2__bpe_pad(t) == -1,
           "defaults: bos = eos = <|endoftext|> (50260), no pad");
        rc = b2__bpe_encode(t, "a", 1, 1, &ids, &n, &err);
        ok(rc == 0 && n == 1 && ids[0] == 102,
           "default add_bos_token is false");
        free(ids);
    }
    b2__bpe_free(t);
    rm_dir(dir);
}

/* Ids of the single-byte tokens: byte_id[b] encodes byte b alone. */
static void byte_ids(const b2_bpe *t, int32_t byte_id[256])
{
    for (int b = 0; b < 256; b++) byte_id[b] = -1;
    for (size_t id = 0; id < b2__bpe_vocab_size(t); id++) {
        char c[8];
        if (b2__bpe_token_bytes(t, (int32_t)id, c, sizeof c) == 1 &&
            byte_id[(uint8_t)c[0]] < 0)
            byte_id[(uint8_t)c[0]] = (int32_t)id;
    }
}

static void test_decode_invalid_utf8(const b2_bpe *t)
{
    /* Inputs and Python's bytes.decode("utf-8", "replace") of each. */
    static const struct { const char *in, *out; } cases[] = {
        {"\xe7\x8c", "\xef\xbf\xbd"},
        {"\xe0\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf0\x9f\x90", "\xef\xbf\xbd"},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xff" "a", "\xef\xbf\xbd" "a"},
        {"\xf0\x9f\x90" "a", "\xef\xbf\xbd" "a"},
        {"a\x80\x80" "b", "a\xef\xbf\xbd\xef\xbf\xbd" "b"},
        {"\xe2\x82\xac\xe2\x82", "\xe2\x82\xac\xef\xbf\xbd"},
        {"\xf1\x80\x80\xc3\xa9", "\xef\xbf\xbd\xc3\xa9"},
        {"\xc3", "\xef\xbf\xbd"},
        {"\xf8\x88\x80\x80\x80",
         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe0\xa0", "\xef\xbf\xbd"},
    };
    int32_t byte_id[256];
    byte_ids(t, byte_id);
    int all = 1;
    for (int b = 0; b < 256; b++) all &= byte_id[b] >= 0;
    ok(all, "every byte has a single-byte token");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int32_t ids[16];
        size_t n = strlen(cases[k].in);
        for (size_t i = 0; i < n; i++) ids[i] = byte_id[(uint8_t)cases[k].in[i]];
        char *text = NULL;
        int rc = b2__bpe_decode(t, ids, n, 0, &text, NULL);
        if (!ok(rc == 0 && !strcmp(text, cases[k].out),
                "decode invalid UTF-8 case %zu as Python's errors='replace'", k))
            diag("got '%s'", text ? text : "(null)");
        free(text);
    }
    /* Split across tokens: the emoji's bytes in two tokens decode whole. */
    int32_t ids[4] = {byte_id[0xF0], byte_id[0x9F], byte_id[0x90], byte_id[0xB1]};
    char *text = NULL;
    int rc = b2__bpe_decode(t, ids, 4, 1, &text, NULL);
    ok(rc == 0 && !strcmp(text, "\xf0\x9f\x90\xb1"),
       "a character split over byte tokens decodes whole");
    free(text);
}

static void test_edges(const b2_bpe *t)
{
    blip2_error err = {0};
    int32_t *ids = NULL;
    size_t n = 99;
    char *text = NULL;

    ok(b2__bpe_vocab_size(t) == 50265, "vocab size 50265");
    ok(b2__bpe_bos(t) == 2 && b2__bpe_eos(t) == 2 && b2__bpe_pad(t) == 1,
       "bos 2, eos 2, pad 1");
    ok(!strcmp(b2__bpe_token_str(t, 50118), "\xc4\x8a"), "token 50118 is 'Ċ'");
    char c[8];
    ok(b2__bpe_token_bytes(t, 50118, c, sizeof c) == 1 && c[0] == '\n',
       "token 50118 is the byte '\\n'");
    ok(b2__bpe_token_bytes(t, 2, c, sizeof c) == 0, "special token has 0 bytes");
    ok(b2__bpe_token_bytes(t, 0, c, sizeof c) == 3 && !memcmp(c, "<s>", 3),
       "<s> (not special in this config) is the text '<s>'");
    ok(b2__bpe_token_bytes(t, 31414, c, 2) == 5 && !memcmp(c, "He", 2),
       "token_bytes truncates to cap, returns the full length");
    ok(b2__bpe_token_bytes(t, -1, c, sizeof c) < 0 &&
       b2__bpe_token_bytes(t, 50265, c, sizeof c) < 0,
       "token_bytes of unknown ids fails");
    ok(!b2__bpe_token_str(t, 50265) && !b2__bpe_token_str(t, -5),
       "token_str of unknown ids is NULL");

    int rc = b2__bpe_encode(t, "", 0, 0, &ids, &n, &err);
    ok(rc == 0 && n == 0 && ids, "empty text: no ids, non-NULL array");
    free(ids);
    rc = b2__bpe_encode(t, NULL, 0, 1, &ids, &n, &err);
    ok(rc == 0 && n == 1 && ids[0] == 2, "NULL text of length 0 with BOS: [2]");
    free(ids);
    rc = b2__bpe_decode(t, NULL, 0, 0, &text, &err);
    ok(rc == 0 && text && !*text, "decode of no ids is \"\"");
    free(text);

    /* NUL inside the text is an ordinary character (byte 0 -> 'Ā'). */
    rc = b2__bpe_encode(t, "a\0b", 3, 0, &ids, &n, &err);
    ok(rc == 0 && n == 3 && ids[0] == 102 && ids[1] == 50108 && ids[2] == 428,
       "NUL byte encodes as its byte token");
    free(ids);

    static const struct { const char *s; size_t n; } bad[] = {
        {"\xff", 1}, {"abc\xc3", 4}, {"\xc0\xaf", 2}, {"\xed\xa0\x80", 3},
        {"\xf4\x90\x80\x80", 4}, {"caf\xe9", 4},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        ids = (int32_t *)&n; /* must be reset */
        rc = b2__bpe_encode(t, bad[k].s, bad[k].n, 1, &ids, &n, &err);
        ok(rc == BLIP2_EINVAL && !ids && strstr(err.text, "UTF-8"),
           "invalid UTF-8 input %zu -> EINVAL (%s)", k, err.text);
    }

    int32_t unknown[][3] = {{31414, 50265, 232}, {-1, 2, 2}, {INT32_MAX, 0, 0}};
    for (size_t k = 0; k < 3; k++) {
        text = (char *)"x";
        rc = b2__bpe_decode(t, unknown[k], 3, 0, &text, &err);
        ok(rc == BLIP2_EINVAL && !text && strstr(err.text, "unknown token id"),
           "decode with unknown id (case %zu) -> EINVAL (%s)", k, err.text);
    }

    /* Round trip of text that the clean-up does not touch. */
    const char *rt = "  Décris l'image\t: 猫？ 🐱 naïve   café…\n Answer:\r\n\x0b";
    rc = b2__bpe_encode(t, rt, strlen(rt), 1, &ids, &n, &err);
    if (rc == 0) rc = b2__bpe_decode(t, ids, n, 1, &text, &err);
    ok(rc == 0 && !strcmp(text, rt), "round trip of the unicode prompt");
    free(ids);
    free(text);
}

/* A hand-made tokenizer: vocab, merges and config chosen so that the
 * expected ids follow from GPT2Tokenizer's rules by hand. */
static void test_small(const char *label, const char *vocab)
{
    char dir[] = "/tmp/b2tokXXXXXX";
    if (!mkdtemp(dir)) {
        ok(0, "mkdtemp");
        return;
    }
    write_str(dir, "vocab.json", vocab);
    /* "ab a" ranks before "a b": a pair created by a merge may rank lower
     * than the merge that made it; Python still finishes the current rank
     * everywhere first. */
    write_str(dir, "merges.txt",
              "#version: 0.2\nab a\na b\na a\naa aa\n");
    write_str(dir, "special_tokens_map.json",
              "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\","
              " \"unk_token\": \"<unk>\", \"pad_token\": \"<pad>\","
              " \"mask_token\": {\"content\": \"<mask>\", \"lstrip\": true,"
              "   \"rstrip\": false}}");
    write_str(dir, "tokenizer_config.json",
              "{\"add_bos_token\": true, \"clean_up_tokenization_spaces\": false,"
              " \"model_max_length\": 1000000000000000019884624838656,"
              " \"added_tokens_decoder\": {\"20\": {\"content\": \"<x>\","
              "   \"lstrip\": false, \"rstrip\": true, \"special\": false}}}");
    b2_bpe *t = NULL;
    blip2_error err = {0};
    int rc = b2__bpe_load(&t, dir, &err);
    if (!ok(rc == 0, "%s: small tokenizer loads (%s)", label, err.text)) {
        rm_dir(dir);
        return;
    }
    static const struct { const char *text; int bos; int32_t ids[8]; size_t n; } enc[] = {
        {"aaa", 0, {6, 4}, 2},          /* leftmost pair first, no overlap */
        {"aaaa", 0, {7}, 1},
        {"aaaaa", 0, {7, 4}, 2},
        {"abab", 0, {8, 8}, 2},         /* rank 1 everywhere before rank 0 */
        {"aba", 0, {12}, 1},
        {"abd", 0, {8, 3}, 2},          /* 'd' not in vocab -> unk */
        {"a", 1, {0, 4}, 2},            /* add_bos_token with bos <s> */
        {"a <mask>b", 0, {4, 11, 5}, 3}, /* lstrip eats the space before */
        {"a<x> b", 0, {4, 20, 5}, 3},    /* rstrip eats the space after */
        {"a </s> b", 0, {4, 9, 2, 9, 5}, 5}, /* no stripping for </s> */
        {" .", 0, {9, 10}, 2},
    };
    for (size_t k = 0; k < sizeof enc / sizeof enc[0]; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        rc = b2__bpe_encode(t, enc[k].text, strlen(enc[k].text), enc[k].bos, &ids,
                            &n, &err);
        int good = rc == 0 && n == enc[k].n &&
                   !memcmp(ids, enc[k].ids, n * sizeof *ids);
        if (!ok(good, "%s: encode '%s'", label, enc[k].text)) diag_ids("got", ids, n);
        free(ids);
    }
    ok(b2__bpe_vocab_size(t) == 21, "%s: added token id 20 extends the ids", label);
    static const struct { int32_t ids[6]; size_t n; int skip; const char *want; } dec[] = {
        {{9, 10}, 2, 0, " ."},                 /* clean-up disabled */
        {{0, 4, 2}, 3, 1, "a"},
        {{0, 4, 2}, 3, 0, "<s>a</s>"},
        {{4, 20, 5}, 3, 1, "a <x> b"},         /* non-special added token */
        {{20, 20}, 2, 0, "<x> <x>"},
        {{4, 11, 13}, 3, 1, "ac"},             /* <mask> is special */
    };
    for (size_t k = 0; k < sizeof dec / sizeof dec[0]; k++) {
        char *text = NULL;
        rc = b2__bpe_decode(t, dec[k].ids, dec[k].n, dec[k].skip, &text, &err);
        if (!ok(rc == 0 && !strcmp(text, dec[k].want), "%s: decode case %zu", label, k))
            diag("got '%s' want '%s'", text ? text : "", dec[k].want);
        free(text);
    }
    b2__bpe_free(t);

    /* Without a final newline Python's split("\n")[1:-1] drops the last
     * merge ("aa aa"). */
    write_str(dir, "merges.txt", "#version: 0.2\nab a\na b\na a\naa aa");
    rc = b2__bpe_load(&t, dir, &err);
    int32_t *ids = NULL;
    size_t n = 0;
    if (rc == 0) rc = b2__bpe_encode(t, "aaaa", 4, 0, &ids, &n, &err);
    ok(rc == 0 && n == 2 && ids[0] == 6 && ids[1] == 6,
       "%s: last merges.txt line without newline is ignored, as in Python", label);
    free(ids);
    b2__bpe_free(t);
    rm_dir(dir);
}

/* The same small vocabulary three ways: plain, with \u escapes and with a
 * repeated key (the later wins, as in Python). */
static void test_small_all(void)
{
    static const char plain[] =
        "{\"<s>\": 0, \"<pad>\": 1, \"</s>\": 2, \"<unk>\": 3, \"a\": 4,"
        " \"b\": 5, \"aa\": 6, \"aaaa\": 7, \"ab\": 8, \"\xc4\xa0\": 9,"
        " \".\": 10, \"<mask>\": 11, \"aba\": 12, \"c\": 13}";
    static const char escaped[] =
        "{\"\\u003cs>\": 0, \"<pad>\": 1, \"<\\/s>\": 2, \"<unk>\": 3,"
        " \"\\u0061\": 4, \"b\": 5, \"aa\": 6, \"aaaa\": 7, \"ab\": 8,"
        " \"\\u0120\": 9, \".\": 10, \"<mask>\": 11, \"aba\": 12, \"c\": 13}";
    static const char repeated[] =
        "{\"c\": 4, \"<s>\": 0, \"<pad>\": 1, \"</s>\": 2, \"<unk>\": 3, \"a\": 4,"
        " \"b\": 5, \"aa\": 6, \"aaaa\": 7, \"ab\": 8, \"\xc4\xa0\": 9,"
        " \".\": 10, \"<mask>\": 11, \"aba\": 12, \"c\": 13}";
    test_small("small", plain);
    test_small("small-escaped", escaped);
    test_small("small-repeated-key", repeated);
}

/* The real vocab.json with a repeated first key (the later value wins)
 * must give the same tokenizer. */
static void test_repeated_key(const b2_bpe *ref, const char *tokdir,
                              json_t *entries)
{
    char dir[] = "/tmp/b2tokXXXXXX", path[1200];
    if (!mkdtemp(dir)) {
        ok(0, "mkdtemp");
        return;
    }
    snprintf(path, sizeof path, "%s/vocab.json", tokdir);
    FILE *f = fopen(path, "rb");
    char *d = NULL;
    long n = -1;
    if (f) {
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        fseek(f, 0, SEEK_SET);
        d = malloc((size_t)n + 16);
        memcpy(d, "{\"!\": 5, ", 9);
        if (fread(d + 9, 1, (size_t)n, f) != (size_t)n) n = -1;
        fclose(f);
    }
    b2_bpe *t = NULL;
    blip2_error err = {0};
    int rc = -1;
    if (n > 0 && d[9] == '{') {
        d[9] = ' ';
        write_file(dir, "vocab.json", d, (size_t)n + 9);
        copy_file(tokdir, dir, "merges.txt");
        copy_file(tokdir, dir, "tokenizer_config.json");
        copy_file(tokdir, dir, "special_tokens_map.json");
        double t0 = now_ms();
        rc = b2__bpe_load(&t, dir, &err);
        diag("load with a repeated key: %.1f ms", now_ms() - t0);
    }
    free(d);
    int same = rc == 0 && b2__bpe_vocab_size(t) == b2__bpe_vocab_size(ref);
    for (size_t id = 0; same && id < b2__bpe_vocab_size(t); id++) {
        const char *a = b2__bpe_token_str(t, (int32_t)id),
                   *b = b2__bpe_token_str(ref, (int32_t)id);
        same = a && b && !strcmp(a, b);
    }
    size_t k;
    json_t *e;
    json_array_foreach(entries, k, e) {
        if (!same) break;
        json_t *jt = json_object_get(e, "text");
        int32_t *ids = NULL;
        size_t m = 0;
        same = b2__bpe_encode(t, json_string_value(jt), json_string_length(jt), 1,
                              &ids, &m, &err) == 0 &&
               ids_equal(ids, m, json_object_get(e, "ids"));
        free(ids);
    }
    ok(same, "vocab.json with a repeated key gives the same tokens and ids (%s)",
       err.text);
    b2__bpe_free(t);
    rm_dir(dir);
}

static void test_long(const b2_bpe *t)
{
    blip2_error err = {0};
    size_t n_a = 200000;
    char *s = malloc(n_a);
    memset(s, 'a', n_a);
    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = now_ms();
    int rc = b2__bpe_encode(t, s, n_a, 0, &ids, &n, &err);
    double dt = now_ms() - t0;
    int good = rc == 0 && n == n_a / 4;
    for (size_t i = 0; good && i < n; i++) good = ids[i] == 44172;
    ok(good, "200000 'a's: one word -> 50000 x 'aaaa'");
    diag("one 200000-byte word: %.1f ms", dt);
    free(ids);
    free(s);

    /* ~1 MB of mixed text. */
    const char *unit = "Question: how many cats are there? Answer: two. "
                       "Zürich straße 日本語のテキスト 🐱 x</s>y 12345678901234567890 "
                       "supercalifragilisticexpialidocious\n";
    size_t ul = strlen(unit), reps = (1u << 20) / ul, len = ul * reps;
    s = malloc(len + 1);
    for (size_t i = 0; i < reps; i++) memcpy(s + i * ul, unit, ul);
    s[len] = 0;
    t0 = now_ms();
    rc = b2__bpe_encode(t, s, len, 1, &ids, &n, &err);
    dt = now_ms() - t0;
    ok(rc == 0 && n > len / 8, "1 MB of text encodes (%zu ids)", n);
    diag("encode %zu bytes: %.1f ms", len, dt);
    char *text = NULL;
    t0 = now_ms();
    if (rc == 0) rc = b2__bpe_decode(t, ids, n, 0, &text, &err);
    dt = now_ms() - t0;
    ok(rc == 0 && text && strlen(text) > len / 2, "and decodes");
    diag("decode %zu ids: %.1f ms", n, dt);
    free(text);
    free(ids);
    free(s);
}

int main(void)
{
    const char *gd = getenv("GOLDEN_DIR");
    if (!gd || !*gd) gd = "tests/golden";
    char tokdir[1024], gpath[1024];
    snprintf(tokdir, sizeof tokdir, "%s/opt-tiny", gd);
    snprintf(gpath, sizeof gpath, "%s/tokenizer_golden.json", gd);

    b2_bpe *t = NULL;
    blip2_error err = {0};
    double best = 1e30;
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++) {
        b2__bpe_free(t);
        t = NULL;
        double t0 = now_ms();
        rc = b2__bpe_load(&t, tokdir, &err);
        double dt = now_ms() - t0;
        if (dt < best) best = dt;
    }
    if (!ok(rc == 0, "load %s", tokdir)) {
        diag("%s", err.text);
        return tap_done();
    }
    diag("load time: %.1f ms (best of 3)", best);

    json_error_t je;
    json_t *g = json_load_file(gpath, 0, &je);
    json_t *entries = json_object_get(g, "entries");
    if (!ok(json_array_size(entries) == 74, "golden file has 74 entries")) {
        diag("%s: %s", gpath, je.text);
    } else {
        size_t k;
        json_t *e;
        json_array_foreach(entries, k, e) check_entry(t, k, e);
        test_repeated_key(t, tokdir, entries);
    }
    json_decref(g);

    test_edges(t);
    test_decode_invalid_utf8(t);
    test_long(t);
    test_bad_files(tokdir);
    test_small_all();
    b2__bpe_free(t);
    return tap_done();
}
