/*
 * packed.h - internal: BLIP-2 in one GGUF file (docs/gguf.md): the
 * metadata keys of the hyper-parameters, tokenizer and preprocessor
 * (packed.c), and the two loaders below blip2_model_load (model.c).
 */
#ifndef BLIP2_PACKED_H
#define BLIP2_PACKED_H
#include "blip2.h"
#include "model.h"
#include "gguf.h"

/* Fills m->cfg, m->pp and m->tok (OPT) or m->t5tok (Flan-T5) from g's
 * metadata, checking every value
 * as config.json is checked (BLIP2_EFORMAT naming file and key). */
int b2__packed_read_meta(blip2_model *m, const b2_gguf *g, blip2_error *err);

/* Writes the metadata of m (its config and preprocessor settings, and the
 * tokenizer files read from the folder dir) into w (BLIP2_EIO naming an
 * unreadable tokenizer file, BLIP2_ENOMEM). */
int b2__packed_write_meta(b2_gguf_w *w, const blip2_model *m, const char *dir, blip2_error *err);

/* Parses "f32", "f16", "bf16", "q8_0", "q4_0"; BLIP2_EINVAL otherwise. */
int b2__wtype_parse(const char *s, b2_wtype *t, blip2_error *err);

/* Loaders (model.c): a GGUF file, mapped read-only with its weights used
 * in place (opts: mlock; may be NULL); a Hugging Face folder, its 16-bit
 * weights widened to f32 copies.  *out is a new model (blip2_model_free). */
int b2__load_gguf(blip2_model **out, const char *path, const blip2_load_opts *opts, blip2_error *err);
/* The same without choosing the decode kernels (ktune.c: no measuring,
 * no .kernels file, the process's choice untouched), for checking a
 * file just written (blip2_convert). */
int b2__load_gguf_check(blip2_model **out, const char *path, blip2_error *err);
int b2__load_folder(blip2_model **out, const char *path, const blip2_load_opts *opts, blip2_error *err);

#endif
