/*
 * b2strset.h - a set of strings in one open-addressing hash table (FNV-1a,
 * linear probing, grown at half full): the paths a blip2ctl collection has
 * done or seen, the job ids blip2-queue's `results -o` already wrote.
 * A leaf, like b2cli.h.
 */
#ifndef B2STRSET_H
#define B2STRSET_H

#include <stdbool.h>
#include <stddef.h>

typedef struct b2_strset {
    char **slot;
    size_t cap, n;   /* cap: 0 or a power of two */
} b2_strset;         /* zero-initialise; b2_strset_free when done */

bool b2_strset_has(const b2_strset *s, const char *k);
/* Adds k, which the set takes (it frees it).  0 added, 1 already there
 * (k freed at once), -1 out of memory (k freed, the set unchanged). */
int b2_strset_add(b2_strset *s, char *k);
/* Frees every member and the table; s is empty (zeroed) afterwards. */
void b2_strset_free(b2_strset *s);

#endif
