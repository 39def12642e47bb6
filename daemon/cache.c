/*
 * cache.c - LRU of query embeddings.  A doubly linked list in recency
 * order (head = most recent) plus a linear key search: the cache holds at
 * most a few hundred entries (each is Q x D floats, 320 KiB at the real
 * shapes), so a scan of 32-byte keys costs nothing next to the vision
 * encoder it saves.  One mutex guards everything.
 */
#include "cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    uint8_t key[32];
    float *v;
    size_t n;
    struct entry *prev, *next;
} entry;

struct b2d_cache {
    pthread_mutex_t mu;
    entry *head, *tail;
    size_t bytes, capacity;
    uint64_t hits, misses, entries;
};

b2d_cache *b2d_cache_new(size_t capacity)
{
    b2d_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->capacity = capacity;
    return c;
}

static void unlink_entry(b2d_cache *c, entry *e)
{
    if (e->prev) e->prev->next = e->next; else c->head = e->next;
    if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(b2d_cache *c, entry *e)
{
    e->next = c->head;
    e->prev = NULL;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

void b2d_cache_free(b2d_cache *c)
{
    if (!c) return;
    for (entry *e = c->head, *n; e; e = n) {
        n = e->next;
        free(e->v);
        free(e);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static entry *find(b2d_cache *c, const uint8_t key[32])
{
    for (entry *e = c->head; e; e = e->next)
        if (!memcmp(e->key, key, 32)) return e;
    return NULL;
}

int b2d_cache_get(b2d_cache *c, const uint8_t key[32], float *out, size_t n)
{
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, key);
    int hit = e && e->n == n;
    if (hit) {
        memcpy(out, e->v, sizeof(float) * n);
        unlink_entry(c, e);
        push_front(c, e);
        c->hits++;
    } else {
        c->misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void b2d_cache_put(b2d_cache *c, const uint8_t key[32], const float *v, size_t n)
{
    const size_t sz = sizeof(float) * n;
    if (sz > c->capacity) return;
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, key);
    if (e) {
        unlink_entry(c, e);
        push_front(c, e);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    while (c->tail && c->bytes + sz > c->capacity) {
        entry *old = c->tail;
        unlink_entry(c, old);
        c->bytes -= sizeof(float) * old->n;
        c->entries--;
        free(old->v);
        free(old);
    }
    e = calloc(1, sizeof *e);
    if (e && (e->v = malloc(sz))) {
        memcpy(e->key, key, 32);
        memcpy(e->v, v, sz);
        e->n = n;
        push_front(c, e);
        c->bytes += sz;
        c->entries++;
    } else {
        free(e);
    }
    pthread_mutex_unlock(&c->mu);
}

void b2d_cache_stats_get(b2d_cache *c, b2d_cache_stats *s)
{
    pthread_mutex_lock(&c->mu);
    *s = (b2d_cache_stats){c->hits, c->misses, c->entries, c->bytes, c->capacity};
    pthread_mutex_unlock(&c->mu);
}
