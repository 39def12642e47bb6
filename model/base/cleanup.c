/*
 * cleanup.c - transformers' clean_up_tokenization for both tokenizers
 * (text/tokenizer.c, text/t5tok.c): ten replacements, each a left-to-right
 * pass over the text that only ever shortens it, so all run in place.
 */
#include "cleanup.h"

#include <string.h>

/* Python's str.replace(from, to) on the n bytes at s, in place (to is
 * never longer, and every pattern starts with a space, which memchr finds
 * quickly); the new length. */
static size_t replace_all(char *s, size_t n, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), w = 0, i = 0;
    while (i < n) {
        const char *sp = memchr(s + i, from[0], n - i);
        size_t j = sp ? (size_t)(sp - s) : n;
        if (w != i) memmove(s + w, s + i, j - i);
        w += j - i;
        i = j;
        if (i >= n) break;
        if (i + fl <= n && !memcmp(s + i, from, fl)) {
            memcpy(s + w, to, tl);
            w += tl;
            i += fl;
        } else {
            s[w++] = s[i++];
        }
    }
    return w;
}

size_t b2__clean_up_tokenization(char *s, size_t n)
{
    static const char *const rep[][2] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
    };
    for (size_t k = 0; k < sizeof rep / sizeof rep[0]; k++) n = replace_all(s, n, rep[k][0], rep[k][1]);
    s[n] = 0;
    return n;
}
