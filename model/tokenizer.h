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
#include "blip2.h"

typedef struct b2_bpe b2_bpe;

/* Loads vocab.json, merges.txt, tokenizer_config.json and
 * special_tokens_map.json (the last two optional) from dir.  *out is new;
 * free with b2__bpe_free(). */
int b2__bpe_load(b2_bpe **out, const char *dir, blip2_error *err);
void b2__bpe_free(b2_bpe *t);

/* Encodes len bytes of UTF-8 text.  add_special: prepend BOS as the
 * processor does (add_bos_token).  *ids is new (free()). */
int b2__bpe_encode(const b2_bpe *t, const char *text, size_t len,
                   int add_special, int32_t **ids, size_t *n,
                   blip2_error *err);

/* Decodes as tokenizer.decode(ids, skip_special_tokens=skip) does, with
 * clean_up_tokenization_spaces as configured. *text is new (free()). */
int b2__bpe_decode(const b2_bpe *t, const int32_t *ids, size_t n, int skip,
                   char **text, blip2_error *err);

/* The token's raw bytes (its byte-level string mapped back), 0 for special
 * tokens; writes at most cap bytes, returns the full byte count or a
 * negative code for an unknown id. */
int b2__bpe_token_bytes(const b2_bpe *t, int32_t id, char *buf, size_t cap);

/* The token's byte-level string (as in vocab.json), borrowed; NULL if unknown. */
const char *b2__bpe_token_str(const b2_bpe *t, int32_t id);

int32_t b2__bpe_bos(const b2_bpe *t);
int32_t b2__bpe_eos(const b2_bpe *t);
int32_t b2__bpe_pad(const b2_bpe *t);
size_t b2__bpe_vocab_size(const b2_bpe *t);

#endif
