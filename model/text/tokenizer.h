/*
 * tokenizer.h - internal: GPT-2 byte-level BPE as OPT's GPT2Tokenizer uses it.
 *
 * Data flow (encode): text -> split out special tokens (</s>, <pad>, ...)
 * -> GPT-2 pre-tokenizer regex (PCRE2, Unicode classes) -> bytes mapped to
 * the byte-level alphabet -> BPE merges by rank -> ids from vocab.json.
 * Decode: ids -> token strings -> bytes (invalid UTF-8 becomes U+FFFD)
 * -> clean_up_tokenization_spaces.
 */
#ifndef BLIP2_TOKENIZER_H
#define BLIP2_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>
#include "error.h"

typedef struct b2_bpe b2_bpe;

/* Loads vocab.json, merges.txt, tokenizer_config.json and
 * special_tokens_map.json (the last two optional) from dir.  *out is new;
 * free with b2__bpe_free().  Errors: BLIP2_EIO naming the path of a file
 * that is missing or unreadable, BLIP2_EFORMAT naming a malformed file.
 * Read from the configs: add_bos_token (default false), add_prefix_space,
 * clean_up_tokenization_spaces (default true), bos/eos/unk/sep/pad/cls/
 * mask_token and additional_special_tokens (a string or an AddedToken
 * object; special_tokens_map.json wins; bos/eos/unk default to
 * <|endoftext|>), added_tokens_decoder, and the lstrip/rstrip flags.
 * Not supported: single_word, added_tokens.json.  The tokenizer is
 * immutable after load and may be used from several threads at once. */
int b2__bpe_load(b2_bpe **out, const char *dir, blip2_error *err);
void b2__bpe_free(b2_bpe *t);

/* A byte string, not NUL-terminated. */
typedef struct b2_bpe_str { const char *p; uint64_t len; } b2_bpe_str;

/* The same tokenizer from data held in memory (a GGUF file's metadata):
 * tokens[i] is the vocab.json string of id i (empty for an unused id),
 * merges[r] the merge of rank r as "a b", and the texts of
 * tokenizer_config.json and special_tokens_map.json (NULL when absent).
 * Everything is copied; name labels errors (BLIP2_EFORMAT). */
typedef struct b2_bpe_src {
    const char *name;
    const b2_bpe_str *tokens;
    size_t n_tokens;
    const b2_bpe_str *merges;
    size_t n_merges;
    const char *config_json, *map_json;
    size_t config_len, map_len;
} b2_bpe_src;

/* The two fields of one line of merges.txt (line .. end, no newline):
 * whitespace-separated; 1 and f/fl set when there are exactly two, 0 for
 * anything else (the "#version" header, blank or malformed lines). */
int b2__bpe_merge_fields(const char *line, const char *end, const char *f[2], size_t fl[2]);

int b2__bpe_load_src(b2_bpe **out, const b2_bpe_src *src, blip2_error *err);

/* Encodes len bytes of UTF-8 text.  add_special: prepend BOS as the
 * processor does (add_bos_token).  *ids is new (free()), non-NULL on
 * success even when *n is 0.  The reference works on a Python str, so the
 * text must be valid UTF-8 (no overlongs, surrogates or code points above
 * U+10FFFF): anything else fails with BLIP2_EINVAL and the offset of the
 * first bad byte, nothing is replaced.  NUL bytes are ordinary characters. */
int b2__bpe_encode(const b2_bpe *t, const char *text, size_t len,
                   int add_special, int32_t **ids, size_t *n,
                   blip2_error *err);

/* Decodes as tokenizer.decode(ids, skip_special_tokens=skip) does, with
 * clean_up_tokenization_spaces as configured. *text is new (free()),
 * NUL-terminated.  Invalid UTF-8 in the joined bytes becomes U+FFFD per
 * maximal invalid subpart (Python's errors="replace").  An id outside the
 * vocabulary fails with BLIP2_EINVAL. */
int b2__bpe_decode(const b2_bpe *t, const int32_t *ids, size_t n, int skip,
                   char **text, blip2_error *err);

/* The token's raw bytes (its byte-level string mapped back), 0 for special
 * tokens; writes at most cap bytes, returns the full byte count or a
 * negative code for an unknown id. */
int b2__bpe_token_bytes(const b2_bpe *t, int32_t id, char *buf, size_t cap);

/* The token's byte-level string (as in vocab.json), borrowed until
 * b2__bpe_free(); NULL if unknown. */
const char *b2__bpe_token_str(const b2_bpe *t, int32_t id);

/* Special token ids, -1 when the tokenizer has none. */
int32_t b2__bpe_bos(const b2_bpe *t);
int32_t b2__bpe_eos(const b2_bpe *t);
int32_t b2__bpe_pad(const b2_bpe *t);
/* One more than the largest id (vocab.json plus added tokens). */
size_t b2__bpe_vocab_size(const b2_bpe *t);

#endif
