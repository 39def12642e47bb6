/*
 * t5tok.h - internal: the slow T5Tokenizer of transformers v4.37.2 with
 * legacy=true, as Blip2Processor uses it for Flan-T5 checkpoints.
 *
 * Encode: text -> special tokens written in the text (</s>, <pad>, <unk>,
 * <extra_id_N>) split out first -> each piece of text between them through
 * SentencePiece (spiece.model: NFKC, whitespace collapsed, a "▁" prefix per
 * piece, unknown characters -> <unk>) -> ids, + </s> unless already last.
 * Decode: ids -> SentencePiece text per run of ordinary ids, special tokens
 * spelled out with T5Tokenizer's spacing, <extra_id_N> joined with spaces
 * -> clean_up_tokenization_spaces.
 */
#ifndef BLIP2_T5TOK_H
#define BLIP2_T5TOK_H
#include <stddef.h>
#include <stdint.h>
#include "error.h"

typedef struct b2_t5tok b2_t5tok;

/* Loads spiece.model and the optional tokenizer_config.json (extra_ids,
 * clean_up_tokenization_spaces) from dir.  *out is new (b2__t5tok_free).
 * BLIP2_EIO for a missing/unreadable file, BLIP2_EFORMAT for a model whose
 * ids 0, 1, 2 are not <pad>, </s>, <unk>.  Immutable after load. */
int b2__t5tok_load(b2_t5tok **out, const char *dir, blip2_error *err);
/* The same from memory (a packed GGUF file): model_len bytes of a
 * serialized SentencePiece model (spiece.model's contents) and the text of
 * tokenizer_config.json (NULL: none).  model_what / config_what name them
 * in errors (BLIP2_EFORMAT for an empty or unparsable model). */
int b2__t5tok_load_mem(b2_t5tok **out, const void *model, size_t model_len, const char *model_what,
                       const char *config_json, size_t config_len, const char *config_what, blip2_error *err);
void b2__t5tok_free(b2_t5tok *t);

/* Encodes len bytes of UTF-8 (invalid UTF-8: BLIP2_EINVAL).  add_eos
 * appends </s> as the processor does.  *ids is new (free()). */
int b2__t5tok_encode(const b2_t5tok *t, const char *text, size_t len, int add_eos,
                     int32_t **ids, size_t *n, blip2_error *err);
/* tokenizer.decode(ids, skip_special_tokens=skip); *text is new (free()).
 * An id outside the tokenizer's vocabulary: BLIP2_EINVAL. */
int b2__t5tok_decode(const b2_t5tok *t, const int32_t *ids, size_t n, int skip,
                     char **text, blip2_error *err);
/* The piece's text ("▁" as a space), 0 for special tokens; writes at most
 * cap bytes, returns the full length or BLIP2_EINVAL for an unknown id. */
int b2__t5tok_token_bytes(const b2_t5tok *t, int32_t id, char *buf, size_t cap);
/* Ids of the tokenizer: SentencePiece pieces plus the extra ids. */
size_t b2__t5tok_vocab_size(const b2_t5tok *t);

#endif
