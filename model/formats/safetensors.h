/*
 * safetensors.h - internal: read (mmap) and write safetensors files.
 *
 * File layout: u64 LE header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
 * "__metadata__": {...}}, then the data area.  Every offset and shape is
 * checked against the file size before use.
 */
#ifndef BLIP2_SAFETENSORS_H
#define BLIP2_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>
#include "error.h"
#include "wkernels.h"

typedef enum b2_dtype {
    B2_F32, B2_F16, B2_BF16, B2_F64, B2_I64, B2_I32, B2_I16, B2_I8, B2_U8,
    B2_BOOL, B2_DTYPE_COUNT
} b2_dtype;

#define B2_MAX_DIMS 8

typedef struct b2_tensor {
    const char *name;      /* borrowed from the file object */
    b2_dtype dtype;
    int ndim;
    int64_t shape[B2_MAX_DIMS];
    const void *data;      /* inside the read-only mapping */
    size_t nbytes;
} b2_tensor;

typedef struct b2_st_file b2_st_file;

/* Element size in bytes and the safetensors name ("F32") of a dtype. */
size_t b2__dtype_size(b2_dtype t);
const char *b2__dtype_name(b2_dtype t);
int64_t b2__tensor_numel(const b2_tensor *t);

/* Maps path read-only and parses its header; *out is new (b2__st_close). */
int b2__st_open(b2_st_file **out, const char *path, blip2_error *err);
void b2__st_close(b2_st_file *f);
const char *b2__st_path(const b2_st_file *f);
int b2__st_count(const b2_st_file *f);
const b2_tensor *b2__st_at(const b2_st_file *f, int i);
/* Tensor by name, borrowed (valid until close); NULL if absent. */
const b2_tensor *b2__st_find(const b2_st_file *f, const char *name);

/* Converts a float tensor (F32/F16/BF16/F64) or an integer one to f32. */
void b2__to_f32(const b2_tensor *t, float *out);
/* Converts an integer tensor (I64/I32/...) to int32 (values must fit). */
void b2__to_i32(const b2_tensor *t, int32_t *out);


/* Writes n tensors (data in host=LE order) to path atomically (temp file +
 * rename).  Names must be distinct. */
int b2__st_write(const char *path, const b2_tensor *ts, int n,
                 blip2_error *err);

#endif
