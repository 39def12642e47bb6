/*
 * spm.h - internal: a C view of Debian's libsentencepiece (the one C++
 * file of the engine, spm.cc).  Only what T5Tokenizer needs: load a
 * spiece.model (file or bytes), text -> piece ids, ids -> text, id -> piece.
 * A loaded processor is immutable and may be used from several threads.
 */
#ifndef BLIP2_SPM_H
#define BLIP2_SPM_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct b2_spm b2_spm;

/* Loads the model file at path.  Returns 0, or -1 with a one-line reason
 * in msg (cap bytes, NUL-terminated); -2 when out of memory. */
int b2__spm_load(b2_spm **out, const char *path, char *msg, size_t cap);
/* The same from the len bytes of a serialized model (the contents of a
 * spiece.model file, e.g. as stored in a GGUF file); data is copied. */
int b2__spm_load_mem(b2_spm **out, const void *data, size_t len, char *msg, size_t cap);
void b2__spm_free(b2_spm *sp);
/* Number of pieces (ids 0 .. size-1). */
int b2__spm_size(const b2_spm *sp);
/* The piece of id (borrowed, valid until b2__spm_free), NULL if out of range. */
const char *b2__spm_piece(const b2_spm *sp, int32_t id);
/* SentencePiece encoding of len bytes of UTF-8 (normalised, with the
 * dummy "▁" prefix the model asks for).  *ids is new (free()), non-NULL on
 * success.  Returns 0, or -2 when out of memory, -1 on other failures. */
int b2__spm_encode(const b2_spm *sp, const char *text, size_t len, int32_t **ids, size_t *n);
/* SentencePiece decoding of n piece ids (each < size) to UTF-8; *text is
 * new (free()), NUL-terminated.  Returns 0, -2 out of memory, -1 otherwise. */
int b2__spm_decode(const b2_spm *sp, const int32_t *ids, size_t n, char **text);

#ifdef __cplusplus
}
#endif
#endif
