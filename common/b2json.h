/*
 * b2json.h - the JSON of a generation result as blip2ctl's collections and
 * blip2-queue's results write it (one object per image, jansson), so the
 * two outputs cannot drift:
 *
 *   {"text": seq 0 trimmed, "ids": [...], "finish": "...", "ms": 1.234,
 *    "cached": false, "texts": [every sequence, trimmed] (two or more)}
 *
 * A leaf like b2cli.h: callers describe their sequences with b2cli_seq.
 */
#ifndef B2JSON_H
#define B2JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* s[0..n) without surrounding white space, as a new JSON string ("" when
 * out of memory or not UTF-8). */
json_t *b2cli_json_trimmed(const char *s, size_t n);

/* ms rounded to three decimals, as the outputs give times. */
double b2cli_ms3(double ms);

/* The most sequences a result has (the protocol's num_return_sequences). */
#define B2CLI_MAX_SEQS 16

/* One sequence of a result, borrowed from the caller's reply. */
typedef struct b2cli_seq {
    const char *text;
    size_t text_len;
    const uint32_t *ids;
    size_t n_ids;
    const char *finish;   /* its name; NULL gives "?" */
} b2cli_seq;

/* Sets text, ids, finish, ms, cached (and texts for n > 1) on object f. */
void b2cli_json_generation(json_t *f, const b2cli_seq *seqs, size_t n, double total_ms, bool cached);

#endif
