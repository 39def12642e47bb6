/*
 * utf8.c - UTF-8 as Python's strict decoder sees it: no overlong forms, no
 * surrogates, nothing above U+10FFFF.  Used by both tokenizers (text/).
 */
#include "utf8.h"

/* Length of the valid UTF-8 sequence at s (Python's strict rules: no
 * overlongs, no surrogates, nothing above U+10FFFF), or 0 when invalid;
 * *bad gets the length of the maximal invalid subpart to replace. */
size_t b2__utf8_seq(const uint8_t *s, size_t n, uint32_t *cp, size_t *bad)
{
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xC2 || c > 0xF4) { *bad = 1; return 0; }
    if (c < 0xE0) { need = 1; *cp = c & 0x1F; }
    else if (c < 0xF0) {
        need = 2; *cp = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else {
        need = 3; *cp = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) { *bad = i; return 0; }
        *cp = (*cp << 6) | (s[i] & 0x3F);
        lo = 0x80; hi = 0xBF;
    }
    return need + 1;
}

/* Offset of the first invalid byte, or n when all of s is valid UTF-8. */
size_t b2__utf8_check(const void *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0, bad;
    uint32_t cp;
    while (i < n) {
        if (p[i] < 0x80) { i++; continue; }
        size_t k = b2__utf8_seq(p + i, n - i, &cp, &bad);
        if (!k) return i;
        i += k;
    }
    return n;
}
