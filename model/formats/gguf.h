/*
 * gguf.h - internal: read (mmap) and write GGUF v3 files, the packed
 * single-file format of llama.cpp / whisper.cpp (docs/gguf.md).
 *
 * Layout (all integers little-endian):
 *   u32 magic "GGUF", u32 version 3, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 value type, value },
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
 *                 u64 offset (relative to the data section) },
 *   padding to general.alignment (default 32; we write 64),
 *   data section: each tensor at its offset, a multiple of the alignment.
 * A string is u64 length + bytes (no NUL).  An array is u32 element type,
 * u64 count, elements.  ne[0] is the fastest-varying dimension (ggml's
 * order), i.e. the reverse of a row-major (PyTorch) shape.
 *
 * The reader is strict and checks every count, length and offset against
 * the bytes it has before using it: it never reads outside the buffer, and
 * every failure is BLIP2_EFORMAT with the file (and key or tensor) named.
 * Accepted tensor types: f32, f16, bf16, q8_0, q4_0 (wkernels.h numbering),
 * and GGML's integer types i8 and i32 (B2_GGUF_TYPE_I8, _I32: the int8
 * vision weights a file may carry, docs/gguf.md "Math").
 */
#ifndef BLIP2_GGUF_H
#define BLIP2_GGUF_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "error.h"
#include "wkernels.h"

#define B2_GGUF_MAGIC 0x46554747u /* "GGUF" read as LE u32 */
#define B2_GGUF_VERSION 3
#define B2_GGUF_ALIGN 64          /* what we write */
#define B2_GGUF_MAX_DIMS 4
/* Caps the reader enforces (far above a real BLIP-2 file). */
#define B2_GGUF_MAX_TENSORS (1u << 20)
#define B2_GGUF_MAX_KV (1u << 16)
#define B2_GGUF_MAX_NAME 256      /* tensor names (ggml uses 64) */
#define B2_GGUF_MAX_KEY 1024

/* GGML's integer tensor types (ggml.h numbering), accepted beside the
 * weight types of wkernels.h (b2_wtype).  Neither is a b2_wtype:
 * b2__wt_name() of either is NULL, so a weight lookup refuses them. */
#define B2_GGUF_TYPE_I8 24u
#define B2_GGUF_TYPE_I32 26u

typedef enum b2_gguf_vtype {
    B2_GGUF_U8 = 0, B2_GGUF_I8 = 1, B2_GGUF_U16 = 2, B2_GGUF_I16 = 3,
    B2_GGUF_U32 = 4, B2_GGUF_I32 = 5, B2_GGUF_F32 = 6, B2_GGUF_BOOL = 7,
    B2_GGUF_STRING = 8, B2_GGUF_ARRAY = 9, B2_GGUF_U64 = 10, B2_GGUF_I64 = 11,
    B2_GGUF_F64 = 12, B2_GGUF_VTYPE_COUNT
} b2_gguf_vtype;

/* A string inside the file: not NUL-terminated. */
typedef struct b2_gguf_str {
    const char *p;
    uint64_t len;
} b2_gguf_str;

/* One metadata entry.  Scalars are decoded into the union; arrays keep a
 * pointer to their first element in the buffer (numeric elements, LE,
 * possibly unaligned) or, for string arrays, an owned table of strings. */
typedef struct b2_gguf_kv {
    b2_gguf_str key;
    b2_gguf_vtype type;
    union {
        uint64_t u;     /* U8, U16, U32, U64, BOOL */
        int64_t i;      /* I8, I16, I32, I64 */
        double f;       /* F32, F64 */
    } v;
    b2_gguf_str str;       /* STRING */
    b2_gguf_vtype arr_type; /* ARRAY: element type (never ARRAY) */
    uint64_t arr_n;        /* ARRAY: element count */
    const void *arr;       /* ARRAY of numbers: first element */
    b2_gguf_str *arr_str;  /* ARRAY of strings: arr_n entries (owned) */
} b2_gguf_kv;

typedef struct b2_gguf_tensor {
    b2_gguf_str name;
    int n_dims;
    int64_t ne[B2_GGUF_MAX_DIMS]; /* ne[0] fastest; unused dims are 1 */
    b2_wtype type;        /* the ggml type as stored: a weight type, or
                           * B2_GGUF_TYPE_I8 / _I32 (b2__gguf_type_name) */
    uint64_t offset;      /* relative to the data section */
    size_t nbytes;
    const void *data;     /* inside the buffer, alignment-aligned */
} b2_gguf_tensor;

typedef struct b2_gguf b2_gguf;

/* Parses a GGUF image of size bytes at data (borrowed: must outlive the
 * result).  name is used in error messages.  *out is new (b2__gguf_close).
 * Checks: magic, version 3, counts within the caps and the buffer, every
 * string and array inside the buffer, no duplicate key or tensor name,
 * general.alignment a u32 power of two (1..65536), known tensor types, 1..4
 * dims each >= 1, q8_0 and q4_0 rows a multiple of 32, every tensor's offset a
 * multiple of the alignment and its data inside the buffer. */
int b2__gguf_parse(b2_gguf **out, const void *data, size_t size, const char *name,
                   blip2_error *err);

/* Maps path read-only (MAP_SHARED) and parses it; the mapping lives until
 * b2__gguf_close.  BLIP2_EIO if it cannot be opened or mapped. */
int b2__gguf_open(b2_gguf **out, const char *path, blip2_error *err);
/* Frees (and unmaps); NULL allowed. */
void b2__gguf_close(b2_gguf *g);

const char *b2__gguf_name(const b2_gguf *g);        /* path or name given */
uint32_t b2__gguf_alignment(const b2_gguf *g);
/* The mapping b2__gguf_open made (NULL/0 for b2__gguf_parse). */
void *b2__gguf_map(const b2_gguf *g, size_t *size);

int b2__gguf_n_kv(const b2_gguf *g);
const b2_gguf_kv *b2__gguf_kv_at(const b2_gguf *g, int i);
/* Entry by key, borrowed until close; NULL if absent. */
const b2_gguf_kv *b2__gguf_find_kv(const b2_gguf *g, const char *key);
int b2__gguf_n_tensors(const b2_gguf *g);
const b2_gguf_tensor *b2__gguf_tensor_at(const b2_gguf *g, int i);
const b2_gguf_tensor *b2__gguf_find_tensor(const b2_gguf *g, const char *name);

/* Typed getters: 0 and *v set, or BLIP2_EFORMAT naming file and key when
 * the key is missing or has another type (integer getters accept any
 * integer type whose value fits). */
int b2__gguf_get_int(const b2_gguf *g, const char *key, int64_t *v, blip2_error *err);
int b2__gguf_get_f32(const b2_gguf *g, const char *key, float *v, blip2_error *err);
int b2__gguf_get_bool(const b2_gguf *g, const char *key, int *v, blip2_error *err);
int b2__gguf_get_str(const b2_gguf *g, const char *key, b2_gguf_str *v, blip2_error *err);
/* Element i of a numeric array entry, as double (no bounds check beyond arr_n). */
double b2__gguf_arr_num(const b2_gguf_kv *kv, uint64_t i);

/* Byte size of a tensor of that type and ne (0 if invalid). */
size_t b2__gguf_nbytes(b2_wtype t, int n_dims, const int64_t *ne);
/* The same for any ggml type the reader accepts (a b2_wtype's value, or
 * B2_GGUF_TYPE_I8 / _I32); 0 for any other type. */
size_t b2__gguf_type_nbytes(uint32_t ggml_type, int n_dims, const int64_t *ne);
/* "f32" ... "q4_0", "i8", "i32"; NULL for a type the reader refuses. */
const char *b2__gguf_type_name(uint32_t ggml_type);

/* ---- writer ----
 * Declare metadata and tensors, then b2__gguf_w_write_header(), then each
 * tensor's data in declaration order with b2__gguf_w_write_data().  Keys
 * and names are copied.  Errors are sticky: every call after a failure
 * returns the same code. */
typedef struct b2_gguf_w b2_gguf_w;

b2_gguf_w *b2__gguf_w_new(void);
void b2__gguf_w_free(b2_gguf_w *w);
int b2__gguf_w_u32(b2_gguf_w *w, const char *key, uint32_t v);
int b2__gguf_w_i32(b2_gguf_w *w, const char *key, int32_t v);
int b2__gguf_w_f32(b2_gguf_w *w, const char *key, float v);
int b2__gguf_w_f64(b2_gguf_w *w, const char *key, double v);
int b2__gguf_w_bool(b2_gguf_w *w, const char *key, int v);
int b2__gguf_w_str(b2_gguf_w *w, const char *key, const char *s, size_t len);
int b2__gguf_w_arr_str(b2_gguf_w *w, const char *key, const char *const *s,
                       const size_t *lens, size_t n);
int b2__gguf_w_arr_f32(b2_gguf_w *w, const char *key, const float *v, size_t n);
int b2__gguf_w_arr_i32(b2_gguf_w *w, const char *key, const int32_t *v, size_t n);
/* An array of n u8 (raw bytes, e.g. a file's contents). */
int b2__gguf_w_arr_u8(b2_gguf_w *w, const char *key, const void *v, size_t n);
/* Declares a tensor with ne in ggml order (ne[0] fastest); returns its
 * index, or a negative code. */
int b2__gguf_w_tensor(b2_gguf_w *w, const char *name, b2_wtype t, int n_dims,
                      const int64_t *ne);
/* The same for any type b2__gguf_type_name knows (B2_GGUF_TYPE_I8 ...). */
int b2__gguf_w_tensor_t(b2_gguf_w *w, const char *name, uint32_t ggml_type, int n_dims,
                        const int64_t *ne);
/* Total bytes the file will have (header, padding, data). */
uint64_t b2__gguf_w_file_size(const b2_gguf_w *w);
int b2__gguf_w_write_header(b2_gguf_w *w, FILE *f, blip2_error *err);
/* data holds exactly the tensor's nbytes. */
int b2__gguf_w_write_data(b2_gguf_w *w, FILE *f, int idx, const void *data, blip2_error *err);

#endif
