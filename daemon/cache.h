/*
 * cache.h - the image-feature cache: projected query embeddings of recent
 * images, keyed by SHA-256 of (image bytes, preprocessing settings), in a
 * size-bounded LRU.  Thread-safe.
 */
#ifndef B2D_CACHE_H
#define B2D_CACHE_H
#include <stddef.h>
#include <stdint.h>

typedef struct b2d_cache b2d_cache;

typedef struct b2d_cache_stats {
    uint64_t hits, misses, entries, bytes, capacity;
} b2d_cache_stats;

/* capacity in bytes; 0 disables the cache (every lookup misses). */
b2d_cache *b2d_cache_new(size_t capacity);
void b2d_cache_free(b2d_cache *c);
/* Copies n floats of the entry into out and returns 1 on a hit, else 0. */
int b2d_cache_get(b2d_cache *c, const uint8_t key[32], float *out, size_t n);
/* Inserts (or refreshes) a copy of n floats, evicting the least recently
 * used entries beyond the capacity. */
void b2d_cache_put(b2d_cache *c, const uint8_t key[32], const float *v, size_t n);
void b2d_cache_stats_get(b2d_cache *c, b2d_cache_stats *s);

#endif
