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

/* ---- the int8 vision weights (docs/gguf.md "Math") ----
 * A file converted with --int8-vision (BLIP2_CONVERT_INT8_VISION) carries,
 * beside the weight W (out, in) of each vision layer's attention output
 * projection and MLP (b2__int8_layer), what b2__quantize_s8 makes of W as
 * stored: PREFIX.s8 (i8, (out, in)), PREFIX.s8_scale (f32, (out)) and
 * PREFIX.s8_sum (i32, (out)), PREFIX being the weight's name without
 * ".weight"; and the key B2_INT8_KEY (u32 B2_INT8_SCHEME).  The loader
 * (model.c) uses them in place for int8 math instead of a private copy. */
#define B2_INT8_KEY "blip2.vision.int8_weights"
#define B2_INT8_SCHEME 1
#define B2_INT8_Q ".s8"
#define B2_INT8_SCALE ".s8_scale"
#define B2_INT8_SUM ".s8_sum"

/* How many matrices have int8 copies: 3 per vision layer. */
int b2__int8_count(const b2_config *c);
/* Matrix i (0 <= i < b2__int8_count) of them: layer i / 3's
 * self_attn.projection, mlp.fc1, mlp.fc2 for i % 3 = 0, 1, 2 (the order
 * of model.c's enc_linears); its name prefix into prefix (cap bytes),
 * its shape into *out, *in. */
void b2__int8_layer(const b2_config *c, int i, char *prefix, size_t cap, int *out, int *in);
/* The index i of the matrix whose weight is named `name`
 * ("PREFIX.weight"), or -1 if it has no int8 copy. */
int b2__int8_find(const b2_config *c, const char *name);

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
