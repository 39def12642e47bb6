/*
 * utf8.h - internal: UTF-8 validation with Python's strict rules (utf8.c).
 */
#ifndef BLIP2_UTF8_H
#define BLIP2_UTF8_H
#include <stddef.h>
#include <stdint.h>

/* Length of the valid UTF-8 sequence at s (n bytes available) with its
 * code point in *cp, or 0 when invalid, with *bad the length of the maximal
 * invalid subpart to replace (by U+FFFD, as Python does). */
size_t b2__utf8_seq(const uint8_t *s, size_t n, uint32_t *cp, size_t *bad);

/* Offset of the first invalid byte of s, or n when all n bytes are valid. */
size_t b2__utf8_check(const void *s, size_t n);

#endif
