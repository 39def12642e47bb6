/*
 * packed.h - internal: BLIP-2 in one GGUF file (docs/gguf.md): the
 * metadata keys of the hyper-parameters, tokenizer and preprocessor, the
 * converter from a Hugging Face folder, and the cache of converted folders.
 */
#ifndef BLIP2_PACKED_H
#define BLIP2_PACKED_H
#include "engine.h"
#include "gguf.h"

/* Fills m->cfg, m->pp and m->tok (OPT) or m->t5tok (Flan-T5) from g's
 * metadata, checking every value
 * as config.json is checked (BLIP2_EFORMAT naming file and key). */
int b2__packed_read_meta(blip2_model *m, const b2_gguf *g, blip2_error *err);

/* Parses "f32", "f16", "bf16", "q8_0"; BLIP2_EINVAL otherwise. */
int b2__wtype_parse(const char *s, b2_wtype *t, blip2_error *err);

/* The cache file for folder src converted to type, in dir:
 * dir/<basename>-<16 hex digits of the identity hash>-<type>.gguf.
 * type NULL: the folder's own storage type.  BLIP2_EIO if src cannot be
 * resolved or its weight files cannot be stat'ed. */
int b2__cache_path(char *out, size_t cap, const char *dir, const char *src, const char *type,
                   blip2_error *err);

#endif
