/*
 * cleanup.h - internal: transformers' clean_up_tokenization (cleanup.c),
 * which both tokenizers (text/) apply to decoded text when their
 * configuration asks for it.
 */
#ifndef BLIP2_CLEANUP_H
#define BLIP2_CLEANUP_H
#include <stddef.h>

/* PreTrainedTokenizerBase.clean_up_tokenization on the n bytes at s, in
 * place: " ." -> ".", " ?", " !", " ,", " ' " -> "'", " n't", " 'm", " 's",
 * " 've", " 're" likewise, each as Python's str.replace in that order.
 * Returns the new length (never more than n) and writes a NUL there: s
 * has room for n + 1 bytes. */
size_t b2__clean_up_tokenization(char *s, size_t n);

#endif
