/*
 * fuzz_tokenizer.c - libFuzzer target: the byte-level BPE tokenizer.
 *
 * The real OPT tokenizer of tests/golden/opt-tiny is loaded once (directory
 * from $B2_FUZZ_TOKENIZER, else the source tree).  The first input byte is
 * a mode: bit 0 chooses encode or decode, bit 1 add_special / skip.
 * Encode: the rest is text; it must succeed exactly when it is valid UTF-8
 * (invalid text is refused with BLIP2_EINVAL, nothing replaced), and the
 * ids must be in the vocabulary.  Decode: the rest is a sequence of 16-bit
 * values mapped onto ids from -4 to vocab_size+3 (so unknown ids appear);
 * it must succeed exactly when every id is known, and the text must be
 * valid UTF-8.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef B2_FUZZ_TOKENIZER_DIR
#define B2_FUZZ_TOKENIZER_DIR "tests/golden/opt-tiny"
#endif

static b2_bpe *tok;
static size_t vocab;

/* Strict UTF-8 as Python's str accepts it: no overlongs, surrogates or
 * code points above U+10FFFF. */
static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t k;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) { k = 1; cp = c & 0x1f; min = 0x80; }
        else if (c >= 0xe0 && c <= 0xef) { k = 2; cp = c & 0x0f; min = 0x800; }
        else if (c >= 0xf0 && c <= 0xf4) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *d = getenv("B2_FUZZ_TOKENIZER");
    blip2_error err;
    if (b2__bpe_load(&tok, d && *d ? d : B2_FUZZ_TOKENIZER_DIR, &err)) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.text);
        abort();
    }
    vocab = b2__bpe_vocab_size(tok);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0];
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    blip2_error err;
    if (!(mode & 1)) {
        int32_t *ids = NULL;
        size_t nid = 0;
        int rc = b2__bpe_encode(tok, (const char *)p, n, mode >> 1 & 1, &ids, &nid, &err);
        if (valid_utf8(p, n)) {
            if (rc != 0 || !ids) abort();
            for (size_t i = 0; i < nid; i++)
                if (ids[i] < 0 || (size_t)ids[i] >= vocab) abort();
            char *text = NULL;
            if (b2__bpe_decode(tok, ids, nid, 0, &text, &err) != 0 || !text) abort();
            if (!valid_utf8((const uint8_t *)text, strlen(text))) abort();
            free(text);
        } else if (rc != BLIP2_EINVAL) {
            abort();
        }
        free(ids);
    } else {
        size_t nid = n / 2;
        int32_t *ids = malloc(sizeof *ids * (nid ? nid : 1));
        if (!ids) abort();
        int known = 1;
        for (size_t i = 0; i < nid; i++) {
            uint32_t v = (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8;
            ids[i] = (int32_t)(v % (vocab + 8)) - 4;
            if (ids[i] < 0 || (size_t)ids[i] >= vocab || !b2__bpe_token_str(tok, ids[i]))
                known = 0;
        }
        char *text = NULL;
        int rc = b2__bpe_decode(tok, ids, nid, mode >> 1 & 1, &text, &err);
        if (known != (rc == 0)) abort();
        if (rc == 0) {
            if (!text || !valid_utf8((const uint8_t *)text, strlen(text))) abort();
            free(text);
        }
        free(ids);
    }
    return 0;
}
