/*
 * tok.h - internal, top layer: the tokenizer of either family (model.c),
 * GPT-2 BPE for OPT or SentencePiece for Flan-T5, behind one call pair.
 */
#ifndef BLIP2_TOK_H
#define BLIP2_TOK_H
#include "blip2.h"
#include "model.h"

/* As b2__bpe_encode / b2__bpe_decode, through the model's tokenizer. */
int b2__tok_encode(const blip2_model *m, const char *text, size_t len, int add_special,
                   int32_t **ids, size_t *n, blip2_error *err);
int b2__tok_decode(const blip2_model *m, const int32_t *ids, size_t n, int skip,
                   char **text, blip2_error *err);

#endif
