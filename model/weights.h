/*
 * weights.h - internal: finding the checkpoint's tensors across one or more
 * safetensors files and presenting them as f32 arrays of checked shape.
 */
#ifndef BLIP2_WEIGHTS_H
#define BLIP2_WEIGHTS_H
#include "blip2.h"
#include "model.h"
#include "safetensors.h"

/* Opens model.safetensors, or the shards listed in
 * model.safetensors.index.json, from dir into m->files. */
int b2__weights_open(blip2_model *m, const char *dir, blip2_error *err);

/* The tensor `name` as f32 with exactly the given shape (ndim dims in
 * shape[]).  Aligned f32 data is used in place (borrowed from the mapping);
 * f16/bf16/unaligned data is converted into a buffer the model owns.
 * Missing -> BLIP2_EFORMAT naming the tensor; wrong shape or dtype ->
 * BLIP2_EFORMAT naming tensor, file and both shapes. */
int b2__weight(blip2_model *m, const char *name, int ndim, const int64_t *shape,
               const float **out, blip2_error *err);

/* The same for a GGUF model (m->gguf): typed_ok 1 accepts the tensor in
 * any stored type (*wt says which; used in place), 0 requires f32.  For a
 * folder it is b2__weight with *wt = B2_WT_F32.  A wrong type ->
 * BLIP2_EFORMAT naming file, tensor and both types. */
int b2__weight_typed(blip2_model *m, const char *name, int ndim, const int64_t *shape, int typed_ok,
                     const void **out, b2_wtype *wt, blip2_error *err);

/* A GGUF model's tensor of exactly the ggml type ggml_type (a b2_wtype's
 * value, or B2_GGUF_TYPE_I8 / _I32) and shape, in place from the mapping:
 * the int8 vision weights a file may carry (model.c).  Missing, another
 * type or shape, or data not aligned to 4 bytes for the 4-byte types ->
 * BLIP2_EFORMAT naming file and tensor.  BLIP2_EINVAL for a folder. */
int b2__weight_raw(blip2_model *m, const char *name, uint32_t ggml_type, int ndim, const int64_t *shape,
                   const void **out, blip2_error *err);

/* Whether a tensor of that name exists in any file. */
int b2__weight_exists(const blip2_model *m, const char *name);

/* Lower-case storage dtype name ("f32", "f16", "bf16") of a tensor, "?" if absent. */
const char *b2__weights_dtype(const blip2_model *m, const char *name);

/* Frees the files (and the GGUF mapping) and owned buffers of m. */
void b2__weights_close(blip2_model *m);

#endif
