/*
 * strset.c - the string set of b2strset.h: open addressing over a power of
 * two slots, FNV-1a hashes, doubled (and rehashed) before it is half full.
 */
#include "b2strset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

bool b2_strset_has(const b2_strset *s, const char *k)
{
    if (!s->cap) return false;
    for (size_t i = hash_str(k) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slot[i]) return false;
        if (strcmp(s->slot[i], k) == 0) return true;
    }
}

int b2_strset_add(b2_strset *s, char *k)
{
    if (b2_strset_has(s, k)) { free(k); return 1; }
    if (2 * (s->n + 1) > s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 1024;
        char **ns = calloc(nc, sizeof *ns);
        if (!ns) { free(k); return -1; }
        for (size_t j = 0; j < s->cap; j++) {
            if (!s->slot[j]) continue;
            size_t i = hash_str(s->slot[j]) & (nc - 1);
            while (ns[i]) i = (i + 1) & (nc - 1);
            ns[i] = s->slot[j];
        }
        free(s->slot);
        s->slot = ns;
        s->cap = nc;
    }
    size_t i = hash_str(k) & (s->cap - 1);
    while (s->slot[i]) i = (i + 1) & (s->cap - 1);
    s->slot[i] = k;
    s->n++;
    return 0;
}

void b2_strset_free(b2_strset *s)
{
    for (size_t i = 0; i < s->cap; i++) free(s->slot[i]);
    free(s->slot);
    memset(s, 0, sizeof *s);
}
