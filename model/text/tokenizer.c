/*
 * tokenizer.c - OPT's byte-level BPE tokenizer (the slow GPT2Tokenizer of
 * transformers 4.37.2, as Blip2Processor loads it).
 *
 * Load:   vocab.json (jansson) -> symbol table: every token string is
 *         interned once (open-addressing hash, strings in one arena) and
 *         knows its vocab id.  merges.txt -> pair table keyed by the two
 *         symbols, giving (rank, merged symbol).  tokenizer_config.json and
 *         special_tokens_map.json -> special / added tokens and flags.  The
 *         pre-tokenizer regex is compiled once.  After load the object is
 *         read-only; every call keeps its own scratch (PCRE2 match data,
 *         BPE buffers), so one tokenizer serves several threads.
 *
 * Encode: text (valid UTF-8) -> split out added tokens ("</s>", "<pad>"),
 *         leftmost-longest like the slow tokenizer's trie -> each remaining
 *         piece through the GPT-2 regex -> each match's bytes mapped to
 *         single-byte symbols -> BPE: a linked list of symbols plus a
 *         min-heap of adjacent pairs ordered by (rank, position), merged one
 *         rank at a time, so a word of n bytes costs O(n log n) -> ids.
 *
 * Decode: ids -> each token's raw bytes (precomputed at load from the
 *         byte-level alphabet) -> UTF-8 decoded with Python's "replace"
 *         rules (one U+FFFD per maximal invalid subpart) -> non-special
 *         added tokens as separate, space-joined segments -> the
 *         clean_up_tokenization_spaces replacements.
 */
#include "tokenizer.h"
#include "cleanup.h"
#include "error.h"
#include "utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define B2_TOK_MAX_FILE (256u << 20) /* cap on any tokenizer file */
#define B2_TOK_MAX_HOLES 65536       /* unused ids tolerated in vocab.json */
#define B2_TOK_MAX_ADDED 4096        /* added tokens (specials + extra) */

/* Token flags (id_flags). */
enum {
    TOK_SPECIAL = 1, /* in all_special_ids: skipped by decode(skip=1) */
    TOK_LEGACY = 2   /* added but not special: its own decode segment */
};

/* A growable byte string, NUL-terminated (buf_reserve, buf_add). */
typedef struct strbuf { char *p; size_t len, cap; } strbuf;

/* An interned string table: symbol -> (string, vocab id), string -> symbol. */
typedef struct symrec {
    uint32_t off;       /* start of the string in strs */
    uint32_t len;       /* its length in bytes */
    uint32_t hash;
    int32_t vid;        /* id in vocab.json, -1 if not in vocab.json */
} symrec;

typedef struct symtab {
    strbuf strs;        /* NUL-terminated strings back to back, each NUL in strs.len */
    symrec *rec;        /* (n) one per symbol */
    size_t n, ncap;
    uint64_t *slot;     /* (mask + 1) hash << 32 | (symbol + 1), 0 = empty */
    size_t mask;
} symtab;

/* The merges: (left symbol, right symbol) -> (rank, merged symbol). */
typedef struct mergetab {
    uint64_t *key;      /* (mask + 1) left << 32 | right, UINT64_MAX = empty */
    uint32_t *rank;     /* (mask + 1) line number in merges.txt, 0-based */
    int32_t *res;       /* (mask + 1) the merged symbol */
    size_t n, mask;
} mergetab;

/* A token split out of the text before BPE (specials and added tokens). */
typedef struct added_tok {
    int32_t id;
    int32_t sym;        /* its content, interned */
    int lstrip, rstrip; /* eat whitespace on the left / right */
    int special;        /* from the special-token attributes */
} added_tok;

struct b2_bpe {
    symtab st;
    mergetab mt;
    int32_t n_ids;      /* one more than the largest id */
    int32_t *id_sym;    /* (id_cap) symbol of each id, -1 for an unused id */
    int32_t id_cap;     /* vocab.json ids + room for added tokens */
    uint8_t *id_flags;  /* (n_ids) TOK_* */
    uint32_t *raw_off;  /* (n_ids) the token's raw bytes in raw */
    uint32_t *raw_len;  /* (n_ids) */
    uint8_t *raw;
    added_tok *added;   /* (n_added) in the order they were added */
    int n_added;
    uint8_t added_first[256]; /* 1 for bytes that start an added token */
    int32_t bos, eos, unk, pad; /* -1 when not configured */
    int add_bos, add_prefix_space, cleanup;
    int32_t byte_sym[256];  /* symbol of the one-character string of a byte */
    uint16_t byte_cp[256];  /* GPT-2 bytes_to_unicode */
    int16_t cp_byte[512];   /* its inverse, -1 outside the alphabet */
    pcre2_code *re;
};

/* ---------------------------------------------------------------- utf-8 */

/* Python's str.isspace(). */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 ||
           c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* ------------------------------------------------------------ buffers */

static int buf_reserve(strbuf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_add(strbuf *b, const void *s, size_t n)
{
    if (buf_reserve(b, n)) return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

/* Appends bytes decoded as Python's bytes.decode("utf-8", "replace"). */
static int buf_add_utf8_replace(strbuf *b, const uint8_t *s, size_t n)
{
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    if (buf_reserve(b, n * 3)) return -1;
    size_t i = 0, bad;
    uint32_t cp;
    while (i < n) {
        size_t k = s[i] < 0x80 ? 1 : b2__utf8_seq(s + i, n - i, &cp, &bad);
        if (k) {
            memcpy(b->p + b->len, s + i, k);
            b->len += k;
            i += k;
        } else {
            memcpy(b->p + b->len, fffd, 3);
            b->len += 3;
            i += bad;
        }
    }
    b->p[b->len] = 0;
    return 0;
}

/* Reads a whole file; *data is new (NUL-terminated). */
static int read_file(const char *path, char **data, size_t *len,
                     blip2_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return b2__err(err, BLIP2_EIO, "cannot open %s: %s", path,
                       strerror(errno));
    strbuf b = {0};
    int rc = 0;
    for (;;) {
        if (buf_reserve(&b, 1 << 16)) {
            rc = b2__err(err, BLIP2_ENOMEM, "%s: out of memory", path);
            break;
        }
        size_t got = fread(b.p + b.len, 1, b.cap - b.len - 1, f);
        b.len += got;
        if (b.len > B2_TOK_MAX_FILE) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: larger than %u bytes", path,
                         B2_TOK_MAX_FILE);
            break;
        }
        if (got == 0) {
            if (ferror(f))
                rc = b2__err(err, BLIP2_EIO, "cannot read %s: %s", path,
                             strerror(errno));
            break;
        }
    }
    fclose(f);
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    b.p[b.len] = 0;
    *data = b.p;
    *len = b.len;
    return 0;
}

/* ------------------------------------------------------- symbol table */

static uint32_t str_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

static int32_t sym_find_h(const symtab *st, const char *s, size_t n,
                          uint32_t h)
{
    if (!st->slot) return -1;
    for (size_t i = h & st->mask;; i = (i + 1) & st->mask) {
        uint64_t v = st->slot[i];
        if (!v) return -1;
        if ((uint32_t)(v >> 32) != h) continue;
        const symrec *r = &st->rec[(uint32_t)v - 1];
        if (r->len == n && !memcmp(st->strs.p + r->off, s, n))
            return (int32_t)((uint32_t)v - 1);
    }
}

static int sym_rehash(symtab *st, size_t nslots)
{
    uint64_t *slot = calloc(nslots, sizeof *slot);
    if (!slot) return -1;
    for (size_t v = 0; v < st->n; v++) {
        uint32_t h = st->rec[v].hash;
        size_t i = h & (nslots - 1);
        while (slot[i]) i = (i + 1) & (nslots - 1);
        slot[i] = (uint64_t)h << 32 | (v + 1);
    }
    free(st->slot);
    st->slot = slot;
    st->mask = nslots - 1;
    return 0;
}

/* Makes room for n symbols and bytes of strings without rehashing. */
static int sym_reserve(symtab *st, size_t n, size_t bytes)
{
    size_t ns = st->slot ? st->mask + 1 : 1024;
    while (ns < 2 * n) ns *= 2;
    if ((!st->slot || ns != st->mask + 1) && sym_rehash(st, ns)) return -1;
    if (n > st->ncap) {
        symrec *r = realloc(st->rec, n * sizeof *r);
        if (!r) return -1;
        st->rec = r;
        st->ncap = n;
    }
    if (bytes > st->strs.len + 1 && buf_reserve(&st->strs, bytes - st->strs.len - 1)) return -1;
    return 0;
}

/* Symbol of s, added when new; -1 when out of memory or too large. */
static int32_t sym_intern(symtab *st, const char *s, size_t n)
{
    uint32_t h = str_hash(s, n);
    int32_t v = sym_find_h(st, s, n, h);
    if (v >= 0) return v;
    const size_t off = st->strs.len;
    if (st->n >= INT32_MAX - 1 || off + n + 1 > UINT32_MAX) return -1;
    if (!st->slot || (st->n + 1) * 2 > st->mask + 1 || st->n == st->ncap)
        if (sym_reserve(st, st->n == st->ncap ? (st->n + 1) * 2 : st->n + 1, 0)) return -1;
    if (buf_add(&st->strs, s, n)) return -1;
    st->strs.len++; /* keeps its NUL */
    v = (int32_t)st->n++;
    st->rec[v] = (symrec){(uint32_t)off, (uint32_t)n, h, -1};
    size_t i = h & st->mask;
    while (st->slot[i]) i = (i + 1) & st->mask;
    st->slot[i] = (uint64_t)h << 32 | (uint32_t)(v + 1);
    return v;
}

static void sym_free(symtab *st)
{
    free(st->strs.p);
    free(st->rec);
    free(st->slot);
}

/* ---------------------------------------------------------- merge table */

static size_t pair_slot(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static int merge_init(mergetab *mt, size_t lines)
{
    size_t ns = 1024;
    while (ns < lines * 2) ns *= 2;
    mt->key = malloc(ns * sizeof *mt->key);
    mt->rank = malloc(ns * sizeof *mt->rank);
    mt->res = malloc(ns * sizeof *mt->res);
    if (!mt->key || !mt->rank || !mt->res) return -1;
    memset(mt->key, 0xFF, ns * sizeof *mt->key);
    mt->mask = ns - 1;
    mt->n = 0;
    return 0;
}

/* Adds or overwrites (a later line wins, as Python's dict does). */
static void merge_put(mergetab *mt, int32_t a, int32_t b, uint32_t rank,
                      int32_t res)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = pair_slot(key, mt->mask);
    while (mt->key[i] != UINT64_MAX && mt->key[i] != key) i = (i + 1) & mt->mask;
    if (mt->key[i] == UINT64_MAX) mt->n++;
    mt->key[i] = key;
    mt->rank[i] = rank;
    mt->res[i] = res;
}

/* Slot of the pair, or -1 when (a, b) is not a merge. */
static ptrdiff_t merge_find(const mergetab *mt, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = pair_slot(key, mt->mask);; i = (i + 1) & mt->mask) {
        if (mt->key[i] == key) return (ptrdiff_t)i;
        if (mt->key[i] == UINT64_MAX) return -1;
    }
}

/* -------------------------------------------------------------- loading */

static int path_join(char *out, size_t cap, const char *dir, const char *name,
                     blip2_error *err)
{
    int k = snprintf(out, cap, "%s/%s", dir, name);
    if (k < 0 || (size_t)k >= cap)
        return b2__err(err, BLIP2_EINVAL, "path too long: %s/%s", dir, name);
    return 0;
}

/* Sets up GPT-2's bytes_to_unicode: printable Latin-1 bytes map to
 * themselves, the other 68 bytes to U+0100.. in byte order. */
static void init_byte_alphabet(b2_bpe *t)
{
    int extra = 0;
    for (int i = 0; i < 512; i++) t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
                   (b >= 0xAE && b <= 0xFF);
        t->byte_cp[b] = (uint16_t)(keep ? b : 256 + extra++);
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* One "token": id pair of vocab.json; key is not NUL-terminated. */
typedef struct vocab_ent { const char *key; size_t len; long long id; } vocab_ent;

/* Interns the vocab entries (jansson's object keeps the last value of a
 * repeated key, as Python's json does). */
static int vocab_build(b2_bpe *t, const vocab_ent *e, size_t n,
                       const char *path, blip2_error *err)
{
    long long max_id = -1;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].id < 0 || e[i].id >= (long long)n + B2_TOK_MAX_HOLES)
            return b2__err(err, BLIP2_EFORMAT,
                           "%s: token '%.*s': id is not an integer in [0, %zu)",
                           path, (int)(e[i].len < 40 ? e[i].len : 40), e[i].key,
                           n + B2_TOK_MAX_HOLES);
        if (e[i].id > max_id) max_id = e[i].id;
        bytes += e[i].len + 1;
    }
    /* Room for special tokens that are not in the vocabulary. */
    size_t cap = (size_t)max_id + 1 + B2_TOK_MAX_ADDED;
    t->id_sym = malloc(cap * sizeof *t->id_sym);
    if (!t->id_sym || sym_reserve(&t->st, n + 1024, bytes + (1 << 16)))
        return b2__err(err, BLIP2_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < cap; i++) t->id_sym[i] = -1;
    t->id_cap = (int32_t)cap;
    t->n_ids = (int32_t)max_id + 1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = (int32_t)e[i].id;
        int32_t s = sym_intern(&t->st, e[i].key, e[i].len);
        if (s < 0) return b2__err(err, BLIP2_ENOMEM, "%s: out of memory", path);
        if (t->id_sym[id] >= 0)
            return b2__err(err, BLIP2_EFORMAT, "%s: id %d used twice", path, id);
        t->id_sym[id] = s;
        t->st.rec[s].vid = id;
    }
    return 0;
}

static int load_vocab(b2_bpe *t, const char *path, blip2_error *err)
{
    char *data = NULL;
    size_t len;
    vocab_ent *e;
    int rc = read_file(path, &data, &len, err);
    if (rc < 0) return rc;
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    free(data);
    if (!root)
        return b2__err(err, BLIP2_EFORMAT, "%s: line %d: %s", path, je.line,
                       je.text);
    if (!json_is_object(root) || json_object_size(root) == 0) {
        json_decref(root);
        return b2__err(err, BLIP2_EFORMAT, "%s: not a non-empty JSON object",
                       path);
    }
    size_t count = json_object_size(root), i = 0;
    const char *key;
    json_t *val;
    e = malloc(count * sizeof *e);
    if (!e) {
        json_decref(root);
        return b2__err(err, BLIP2_ENOMEM, "%s: out of memory", path);
    }
    json_object_foreach(root, key, val) {
        if (!json_is_integer(val)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: token '%.40s': id is not an "
                         "integer", path, key);
            break;
        }
        e[i++] = (vocab_ent){key, strlen(key), json_integer_value(val)};
    }
    if (rc == 0) rc = vocab_build(t, e, i, path, err);
    free(e);
    json_decref(root);
    return rc;
}

int b2__bpe_merge_fields(const char *line, const char *end, const char *f[2], size_t fl[2])
{
    const char *g[3];
    size_t gl[3];
    int nf = 0;
    for (const char *q = line; q < end && nf < 3;) {
        while (q < end && (*q == ' ' || (*q >= 9 && *q <= 13))) q++;
        if (q == end) break;
        g[nf] = q;
        while (q < end && !(*q == ' ' || (*q >= 9 && *q <= 13))) q++;
        gl[nf] = (size_t)(q - g[nf]);
        nf++;
    }
    if (nf != 2) return 0;
    f[0] = g[0], fl[0] = gl[0], f[1] = g[1], fl[1] = gl[1];
    return 1;
}

/* One line of merges.txt (line .. end, no newline): up to three
 * whitespace-separated fields; exactly two is the merge of that rank. */
static int merge_line(b2_bpe *t, strbuf *cat, const char *line, const char *end,
                      uint32_t rank, const char *path, blip2_error *err)
{
    const char *f[2];
    size_t fl[2];
    if (!b2__bpe_merge_fields(line, end, f, fl)) return 0;
    int32_t a = sym_intern(&t->st, f[0], fl[0]);
    int32_t b = sym_intern(&t->st, f[1], fl[1]);
    cat->len = 0;
    int32_t r = -1;
    if (a >= 0 && b >= 0 && !buf_add(cat, f[0], fl[0]) && !buf_add(cat, f[1], fl[1]))
        r = sym_intern(&t->st, cat->p, cat->len);
    if (r < 0) return b2__err(err, BLIP2_ENOMEM, "%s: out of memory", path);
    merge_put(&t->mt, a, b, rank, r);
    return 0;
}

/* merges.txt as 4.37.2 reads it: split on "\n", drop the first line (the
 * "#version" header) and the last piece (empty after the final newline);
 * line k + 1 is the merge of rank k, split on whitespace into two symbols. */
static int load_merges(b2_bpe *t, const char *path, blip2_error *err)
{
    char *data = NULL;
    size_t len;
    int rc = read_file(path, &data, &len, err);
    if (rc < 0) return rc;
    size_t bad = b2__utf8_check(data, len);
    if (bad != len) {
        free(data);
        return b2__err(err, BLIP2_EFORMAT, "%s: invalid UTF-8 at byte %zu",
                       path, bad);
    }
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    strbuf cat = {0};
    if (merge_init(&t->mt, lines)) {
        free(data);
        return b2__err(err, BLIP2_ENOMEM, "%s: out of memory", path);
    }
    char *p = memchr(data, '\n', len);
    uint32_t rank = 0;
    while (p) {
        char *line = p + 1, *end = memchr(line, '\n', len - (size_t)(line - data));
        if (!end) break; /* the last piece is dropped */
        if ((rc = merge_line(t, &cat, line, end, rank, path, err)) < 0) break;
        rank++;
        p = end;
    }
    free(cat.p);
    free(data);
    return rc;
}

/* Parses a special-token value: a string or an AddedToken object with
 * "content" (and lstrip/rstrip).  *content is borrowed from v. */
static int parse_token_value(json_t *v, const char **content, int *lstrip,
                             int *rstrip)
{
    *lstrip = *rstrip = 0;
    if (json_is_string(v)) {
        *content = json_string_value(v);
        return 0;
    }
    if (!json_is_object(v)) return -1;
    json_t *c = json_object_get(v, "content");
    if (!json_is_string(c)) return -1;
    *content = json_string_value(c);
    *lstrip = json_is_true(json_object_get(v, "lstrip"));
    *rstrip = json_is_true(json_object_get(v, "rstrip"));
    return 0;
}

static int config_bool(json_t *cfg, const char *name, int dflt, int *out,
                       const char *path, blip2_error *err)
{
    json_t *v = json_object_get(cfg, name);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v))
        return b2__err(err, BLIP2_EFORMAT, "%s: \"%s\" is not a boolean", path,
                       name);
    *out = json_is_true(v);
    return 0;
}

/* Reads an optional JSON file: *root stays NULL when it does not exist. */
static int load_json_opt(const char *path, json_t **root, blip2_error *err)
{
    char *data = NULL;
    size_t len;
    *root = NULL;
    FILE *f = fopen(path, "rb");
    if (!f && errno == ENOENT) return 0;
    if (f) fclose(f);
    int rc = read_file(path, &data, &len, err);
    if (rc < 0) return rc;
    json_error_t je;
    /* model_max_length is 1e30: read integers as reals. */
    *root = json_loadb(data, len, JSON_DECODE_INT_AS_REAL, &je);
    free(data);
    if (!*root)
        return b2__err(err, BLIP2_EFORMAT, "%s: line %d: %s", path, je.line,
                       je.text);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return b2__err(err, BLIP2_EFORMAT, "%s: not a JSON object", path);
    }
    return 0;
}

/* Registers content as an added token (split out before BPE) and returns its
 * id: the vocab id when the string is in vocab.json, else the next free id
 * (as _add_tokens does).  A token already added keeps its first flags. */
static int add_token(b2_bpe *t, const char *content, int32_t want_id, int lstrip,
                     int rstrip, int special, int32_t *id, const char *path,
                     blip2_error *err)
{
    size_t n = strlen(content);
    if (n == 0)
        return b2__err(err, BLIP2_EFORMAT, "%s: empty special token", path);
    for (int i = 0; i < t->n_added; i++) {
        const symtab *st = &t->st;
        int32_t s = t->added[i].sym;
        if (st->rec[s].len == n && !memcmp(st->strs.p + st->rec[s].off, content, n)) {
            t->added[i].special |= special;
            *id = t->added[i].id;
            return 0;
        }
    }
    if (t->n_added >= B2_TOK_MAX_ADDED)
        return b2__err(err, BLIP2_EFORMAT, "%s: more than %d added tokens", path,
                       B2_TOK_MAX_ADDED);
    int32_t s = sym_intern(&t->st, content, n);
    if (s < 0) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    int32_t tid = want_id >= 0 ? want_id : t->st.rec[s].vid >= 0 ? t->st.rec[s].vid
                                                               : t->n_ids;
    if (tid >= t->id_cap)
        return b2__err(err, BLIP2_EFORMAT, "%s: added token '%.40s': id %d "
                       "out of range", path, content, tid);
    if (t->id_sym[tid] >= 0 && t->id_sym[tid] != s)
        return b2__err(err, BLIP2_EFORMAT, "%s: added token '%.40s': id %d "
                       "already belongs to another token", path, content, tid);
    t->id_sym[tid] = s;
    if (tid >= t->n_ids) t->n_ids = tid + 1;
    t->added_first[(uint8_t)content[0]] = 1;
    added_tok *a = &t->added[t->n_added++];
    a->id = tid;
    a->sym = s;
    a->lstrip = lstrip;
    a->rstrip = rstrip;
    a->special = special;
    *id = tid;
    return 0;
}

/* The special-token attributes of PreTrainedTokenizer, in its order. */
static const char *const special_keys[] = {
    "bos_token", "eos_token", "unk_token", "sep_token",
    "pad_token", "cls_token", "mask_token",
};
#define N_SPECIAL_KEYS (sizeof special_keys / sizeof special_keys[0])

/* Applies tokenizer_config.json (cfg) and special_tokens_map.json (map),
 * either of which may be NULL; the paths name them in errors. */
static int apply_config(b2_bpe *t, json_t *cfg, json_t *map, const char *cpath,
                        const char *mpath, blip2_error *err)
{
    int rc = 0;
    json_t *empty = json_object();
    if (!empty) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    json_t *c = cfg ? cfg : empty;
    if ((rc = config_bool(c, "add_bos_token", 0, &t->add_bos, cpath, err)) < 0 ||
        (rc = config_bool(c, "add_prefix_space", 0, &t->add_prefix_space, cpath,
                          err)) < 0 ||
        (rc = config_bool(c, "clean_up_tokenization_spaces", 1, &t->cleanup,
                          cpath, err)) < 0) {
        json_decref(empty);
        goto done;
    }

    /* Tokens listed with their ids (newer tokenizer_config.json files). */
    json_t *atd = json_object_get(c, "added_tokens_decoder");
    if (atd && !json_is_null(atd)) {
        const char *k;
        json_t *v;
        if (!json_is_object(atd)) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: bad added_tokens_decoder", cpath);
            json_decref(empty);
            goto done;
        }
        json_object_foreach(atd, k, v) {
            const char *content;
            int ls, rs;
            char *endp;
            long id = strtol(k, &endp, 10);
            if (*k == 0 || *endp || id < 0 || id > INT32_MAX ||
                parse_token_value(v, &content, &ls, &rs) < 0) {
                rc = b2__err(err, BLIP2_EFORMAT,
                             "%s: added_tokens_decoder: bad entry '%.40s'", cpath, k);
                break;
            }
            int32_t got;
            if ((rc = add_token(t, content, (int32_t)id, ls, rs, 0, &got, cpath,
                                err)) < 0)
                break;
        }
        if (rc < 0) {
            json_decref(empty);
            goto done;
        }
    }

    /* Special tokens: special_tokens_map.json overrides tokenizer_config.json;
     * GPT2Tokenizer's defaults for bos/eos/unk are <|endoftext|>. */
    t->bos = t->eos = t->unk = t->pad = -1;
    for (size_t i = 0; i < N_SPECIAL_KEYS + 1 && rc == 0; i++) {
        const char *key = i < N_SPECIAL_KEYS ? special_keys[i]
                                             : "additional_special_tokens";
        const char *src = mpath;
        json_t *v = map ? json_object_get(map, key) : NULL;
        if (!v) {
            v = json_object_get(c, key);
            src = cpath;
        }
        if (i < N_SPECIAL_KEYS) {
            const char *content = NULL;
            int ls = 0, rs = 0;
            int32_t id;
            if (!v && i < 3) content = "<|endoftext|>";
            else if (!v || json_is_null(v)) continue;
            else if (parse_token_value(v, &content, &ls, &rs) < 0) {
                rc = b2__err(err, BLIP2_EFORMAT, "%s: bad \"%s\"", src, key);
                break;
            }
            if ((rc = add_token(t, content, -1, ls, rs, 1, &id, src, err)) < 0)
                break;
            if (i == 0) t->bos = id;
            if (i == 1) t->eos = id;
            if (i == 2) t->unk = id;
            if (i == 4) t->pad = id;
        } else if (v && !json_is_null(v)) {
            size_t j;
            json_t *e;
            if (!json_is_array(v)) {
                rc = b2__err(err, BLIP2_EFORMAT, "%s: bad \"%s\"", src, key);
                break;
            }
            json_array_foreach(v, j, e) {
                const char *content;
                int ls, rs;
                int32_t id;
                if (parse_token_value(e, &content, &ls, &rs) < 0) {
                    rc = b2__err(err, BLIP2_EFORMAT, "%s: bad \"%s\"", src, key);
                    break;
                }
                if ((rc = add_token(t, content, -1, ls, rs, 1, &id, src, err)) < 0)
                    break;
            }
        }
    }
    json_decref(empty);
done:
    return rc;
}

static int load_config(b2_bpe *t, const char *dir, blip2_error *err)
{
    char cpath[4096], mpath[4096];
    json_t *cfg = NULL, *map = NULL;
    int rc;
    if ((rc = path_join(cpath, sizeof cpath, dir, "tokenizer_config.json", err)) < 0 ||
        (rc = path_join(mpath, sizeof mpath, dir, "special_tokens_map.json", err)) < 0)
        return rc;
    if ((rc = load_json_opt(cpath, &cfg, err)) == 0 &&
        (rc = load_json_opt(mpath, &map, err)) == 0)
        rc = apply_config(t, cfg, map, cpath, mpath, err);
    json_decref(cfg);
    json_decref(map);
    return rc;
}

/* Per-id flags and raw bytes (the byte-level string mapped back). */
static int build_id_tables(b2_bpe *t, blip2_error *err)
{
    size_t n = (size_t)t->n_ids;
    t->id_flags = calloc(n, 1);
    t->raw_off = calloc(n, sizeof *t->raw_off);
    t->raw_len = calloc(n, sizeof *t->raw_len);
    size_t total = 1;
    for (size_t id = 0; id < n; id++)
        if (t->id_sym[id] >= 0) total += t->st.rec[t->id_sym[id]].len;
    if (total > UINT32_MAX)
        return b2__err(err, BLIP2_EFORMAT, "tokenizer: token strings too large");
    t->raw = malloc(total);
    if (!t->id_flags || !t->raw_off || !t->raw_len || !t->raw)
        return b2__err(err, BLIP2_ENOMEM, "out of memory");
    for (int i = 0; i < t->n_added; i++)
        t->id_flags[t->added[i].id] = t->added[i].special ? TOK_SPECIAL : TOK_LEGACY;
    size_t w = 0;
    for (size_t id = 0; id < n; id++) {
        int32_t s = t->id_sym[id];
        if (s < 0) continue;
        const uint8_t *p = (const uint8_t *)t->st.strs.p + t->st.rec[s].off;
        size_t len = t->st.rec[s].len, i = 0, bad;
        t->raw_off[id] = (uint32_t)w;
        while (i < len) {
            uint32_t cp;
            size_t k = b2__utf8_seq(p + i, len - i, &cp, &bad);
            if (!k) { /* not reachable: jansson and merges are checked */
                t->raw[w++] = p[i++];
                continue;
            }
            if (cp < 512 && t->cp_byte[cp] >= 0 && !(t->id_flags[id] & TOK_LEGACY)) {
                t->raw[w++] = (uint8_t)t->cp_byte[cp];
            } else { /* outside the byte alphabet: kept as written */
                memcpy(t->raw + w, p + i, k);
                w += k;
            }
            i += k;
        }
        t->raw_len[id] = (uint32_t)(w - t->raw_off[id]);
    }
    return 0;
}

/* The GPT-2 pattern with \s spelled out as Unicode White_Space, which is
 * what Python's regex module uses for \s (PCRE2's \s differs on U+0085). */
#define WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}" \
           "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+"
    "|[" WS "]+(?![^" WS "])|[" WS "]+";

static int finish_load(b2_bpe *t, blip2_error *err);
static int intern_bytes(b2_bpe *t, blip2_error *err);

int b2__bpe_load(b2_bpe **out, const char *dir, blip2_error *err)
{
    char path[4096];
    int rc;
    *out = NULL;
    if (!dir) return b2__err(err, BLIP2_EINVAL, "tokenizer: no directory");
    b2_bpe *t = calloc(1, sizeof *t);
    if (!t) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    init_byte_alphabet(t);

    if ((rc = path_join(path, sizeof path, dir, "vocab.json", err)) < 0 ||
        (rc = load_vocab(t, path, err)) < 0)
        goto fail;
    if ((rc = intern_bytes(t, err)) < 0) goto fail;
    if ((rc = path_join(path, sizeof path, dir, "merges.txt", err)) < 0 ||
        (rc = load_merges(t, path, err)) < 0)
        goto fail;
    t->added = calloc(B2_TOK_MAX_ADDED, sizeof *t->added);
    if (!t->added) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = load_config(t, dir, err)) < 0 || (rc = finish_load(t, err)) < 0)
        goto fail;
    *out = t;
    return 0;
fail:
    b2__bpe_free(t);
    return rc;
}

/* The byte symbols every tokenizer interns after its vocabulary. */
static int intern_bytes(b2_bpe *t, blip2_error *err)
{
    for (int b = 0; b < 256; b++) {
        char u[4];
        t->byte_sym[b] = sym_intern(&t->st, u, put_utf8(u, t->byte_cp[b]));
        if (t->byte_sym[b] < 0) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    }
    return 0;
}

int b2__bpe_load_src(b2_bpe **out, const b2_bpe_src *src, blip2_error *err)
{
    int rc;
    *out = NULL;
    const char *name = src->name ? src->name : "tokenizer";
    if (!src->n_tokens || src->n_tokens > (1u << 24) || src->n_merges > (1u << 24))
        return b2__err(err, BLIP2_EFORMAT, "%s: tokenizer with %zu tokens and %zu merges", name,
                       src->n_tokens, src->n_merges);
    b2_bpe *t = calloc(1, sizeof *t);
    vocab_ent *e = malloc(src->n_tokens * sizeof *e);
    strbuf cat = {0};
    json_t *cfg = NULL, *map = NULL;
    if (!t || !e) {
        free(t);
        free(e);
        return b2__err(err, BLIP2_ENOMEM, "out of memory");
    }
    init_byte_alphabet(t);
    size_t n = 0;
    for (size_t i = 0; i < src->n_tokens; i++) {
        const b2_bpe_str *s = &src->tokens[i];
        if (s->len == 0) continue; /* a hole in vocab.json's ids */
        if (memchr(s->p, 0, s->len) || b2__utf8_check(s->p, s->len) != s->len) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: token %zu is not valid UTF-8 text", name, i);
            goto fail;
        }
        e[n++] = (vocab_ent){s->p, s->len, (long long)i};
    }
    if ((rc = vocab_build(t, e, n, name, err)) < 0 || (rc = intern_bytes(t, err)) < 0) goto fail;
    if (merge_init(&t->mt, src->n_merges + 1)) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < src->n_merges; i++) {
        const b2_bpe_str *s = &src->merges[i];
        if (b2__utf8_check(s->p, s->len) != s->len) {
            rc = b2__err(err, BLIP2_EFORMAT, "%s: merge %zu is not valid UTF-8 text", name, i);
            goto fail;
        }
        if ((rc = merge_line(t, &cat, s->p, s->p + s->len, (uint32_t)i, name, err)) < 0) goto fail;
    }
    t->added = calloc(B2_TOK_MAX_ADDED, sizeof *t->added);
    if (!t->added) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        goto fail;
    }
    json_error_t je;
    if (src->config_json && !(cfg = json_loadb(src->config_json, src->config_len, JSON_DECODE_INT_AS_REAL, &je))) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: tokenizer_config: line %d: %s", name, je.line, je.text);
        goto fail;
    }
    if (src->map_json && !(map = json_loadb(src->map_json, src->map_len, JSON_DECODE_INT_AS_REAL, &je))) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: special_tokens_map: line %d: %s", name, je.line, je.text);
        goto fail;
    }
    if ((cfg && !json_is_object(cfg)) || (map && !json_is_object(map))) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: tokenizer settings are not a JSON object", name);
        goto fail;
    }
    if ((rc = apply_config(t, cfg, map, name, name, err)) < 0 || (rc = finish_load(t, err)) < 0) goto fail;
    json_decref(cfg);
    json_decref(map);
    free(cat.p);
    free(e);
    *out = t;
    return 0;
fail:
    json_decref(cfg);
    json_decref(map);
    free(cat.p);
    free(e);
    b2__bpe_free(t);
    return rc;
}

/* The id tables and the pre-tokenizer regex, once vocabulary, merges and
 * settings are in. */
static int finish_load(b2_bpe *t, blip2_error *err)
{
    int rc;
    if ((rc = build_id_tables(t, err)) < 0) return rc;
    int ec;
    PCRE2_SIZE eo;
    t->re = pcre2_compile((PCRE2_SPTR)gpt2_pattern, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &ec, &eo,
                          NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return b2__err(err, BLIP2_EUNSUPPORTED, "tokenizer regex: %s at %zu",
                       (char *)msg, (size_t)eo);
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional speed-up */
    return 0;
}

void b2__bpe_free(b2_bpe *t)
{
    if (!t) return;
    sym_free(&t->st);
    free(t->mt.key);
    free(t->mt.rank);
    free(t->mt.res);
    free(t->id_sym);
    free(t->id_flags);
    free(t->raw_off);
    free(t->raw_len);
    free(t->raw);
    free(t->added);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

/* ------------------------------------------------------------ encoding */

typedef struct ids_vec { int32_t *p; size_t n, cap; } ids_vec;

static int ids_push(ids_vec *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->p, c * sizeof *p);
        if (!p) return -1;
        v->p = p;
        v->cap = c;
    }
    v->p[v->n++] = id;
    return 0;
}

/* A candidate merge of two adjacent symbols; left/right are node indices. */
typedef struct pair_ent {
    uint32_t rank;
    int32_t left, right;
    int32_t sym_l, sym_r, res;
} pair_ent;

/* Scratch for BPE on one word, grown per call and reused across words. */
typedef struct bpe_scratch {
    int32_t *sym, *next, *prev; /* (cap) the symbol list; sym -1 = removed */
    pair_ent *heap, *phase;     /* (3 * cap) */
    size_t cap, nheap;
} bpe_scratch;

static int scratch_grow(bpe_scratch *s, size_t n)
{
    if (n <= s->cap) return 0;
    size_t c = s->cap ? s->cap : 64;
    while (c < n) c *= 2;
    free(s->sym); free(s->next); free(s->prev); free(s->heap); free(s->phase);
    s->sym = malloc(c * sizeof *s->sym);
    s->next = malloc(c * sizeof *s->next);
    s->prev = malloc(c * sizeof *s->prev);
    s->heap = malloc(3 * c * sizeof *s->heap);
    s->phase = malloc(3 * c * sizeof *s->phase);
    s->cap = c;
    if (!s->sym || !s->next || !s->prev || !s->heap || !s->phase) {
        s->cap = 0;
        return -1;
    }
    return 0;
}

static void scratch_free(bpe_scratch *s)
{
    free(s->sym); free(s->next); free(s->prev); free(s->heap); free(s->phase);
}

static int ent_less(const pair_ent *a, const pair_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bpe_scratch *s, pair_ent e)
{
    size_t i = s->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&e, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static pair_ent heap_pop(bpe_scratch *s)
{
    pair_ent top = s->heap[0], last = s->heap[--s->nheap];
    size_t i = 0, n = s->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && ent_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!ent_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* Queues the pair (l, next of l) when it is a merge. */
static void push_pair(const b2_bpe *t, bpe_scratch *s, int32_t l)
{
    int32_t r = s->next[l];
    if (r < 0) return;
    ptrdiff_t k = merge_find(&t->mt, s->sym[l], s->sym[r]);
    if (k < 0) return;
    pair_ent e = {t->mt.rank[k], l, r, s->sym[l], s->sym[r], t->mt.res[k]};
    heap_push(s, e);
}

static int pair_valid(const bpe_scratch *s, const pair_ent *e)
{
    return s->sym[e->left] == e->sym_l && s->next[e->left] == e->right &&
           s->sym[e->right] == e->sym_r;
}

/* BPE of one pre-token (its raw bytes).  Equivalent to GPT2Tokenizer.bpe:
 * the lowest-ranked pair present is merged at every non-overlapping
 * occurrence, left to right, before the next rank is looked at.  The heap
 * yields all entries of one rank in position order; they are collected
 * first, so pairs created meanwhile wait for the next round, as in the
 * Python loop. */
static int bpe_word(const b2_bpe *t, bpe_scratch *s, const uint8_t *w,
                    size_t n, ids_vec *out)
{
    if (scratch_grow(s, n)) return BLIP2_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        s->sym[i] = t->byte_sym[w[i]];
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    s->nheap = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, s, (int32_t)i);
    while (s->nheap) {
        pair_ent e = heap_pop(s);
        if (!pair_valid(s, &e)) continue;
        size_t np = 0;
        s->phase[np++] = e;
        while (s->nheap && s->heap[0].rank == e.rank) {
            pair_ent f = heap_pop(s);
            if (pair_valid(s, &f)) s->phase[np++] = f;
        }
        for (size_t i = 0; i < np; i++) {
            pair_ent *m = &s->phase[i];
            if (!pair_valid(s, m)) continue; /* overlapped an earlier one */
            int32_t l = m->left, r = m->right;
            s->sym[l] = m->res;
            s->next[l] = s->next[r];
            if (s->next[r] >= 0) s->prev[s->next[r]] = l;
            s->sym[r] = -1;
            if (s->prev[l] >= 0) push_pair(t, s, s->prev[l]);
            push_pair(t, s, l);
        }
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) {
        int32_t id = t->st.rec[s->sym[i]].vid;
        if (id < 0) id = t->unk; /* encoder.get(token, unk) */
        if (id < 0)
            return BLIP2_EFORMAT;
        if (ids_push(out, id)) return BLIP2_ENOMEM;
    }
    return 0;
}

/* Pre-tokenizes one piece of text (no added tokens in it) and BPEs it. */
static int encode_piece(const b2_bpe *t, pcre2_match_data *md, bpe_scratch *s,
                        const char *p, size_t n, ids_vec *out, blip2_error *err)
{
    size_t start = 0;
    while (start < n) {
        int m = pcre2_match(t->re, (PCRE2_SPTR)p, n, start, PCRE2_NO_UTF_CHECK,
                            md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(m, msg, sizeof msg);
            return b2__err(err, m == PCRE2_ERROR_NOMEMORY ? BLIP2_ENOMEM
                                                          : BLIP2_EINVAL,
                           "tokenizer regex: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b <= a) { /* cannot happen: no branch matches the empty string */
            start = a + 1;
            continue;
        }
        int rc = bpe_word(t, s, (const uint8_t *)p + a, b - a, out);
        if (rc == BLIP2_ENOMEM) return b2__err(err, rc, "out of memory");
        if (rc < 0)
            return b2__err(err, rc, "tokenizer: no unknown-token id for a "
                           "symbol outside vocab.json");
        start = b;
    }
    return 0;
}

/* The added token matching at p (longest first), or -1. */
static int match_added(const b2_bpe *t, const char *p, size_t n, size_t *len)
{
    int best = -1;
    size_t bl = 0;
    *len = 0;
    if (!t->added_first[(uint8_t)p[0]]) return -1;
    for (int i = 0; i < t->n_added; i++) {
        int32_t s = t->added[i].sym;
        size_t l = t->st.rec[s].len;
        const char *c = t->st.strs.p + t->st.rec[s].off;
        if (l <= n && l > bl && c[0] == p[0] && !memcmp(c, p, l)) {
            best = i;
            bl = l;
        }
    }
    *len = bl;
    return best;
}

/* Length of the leading / trailing Python whitespace of s[0..n). */
static size_t lead_space(const char *s, size_t n)
{
    size_t i = 0, bad;
    uint32_t cp;
    while (i < n) {
        size_t k = b2__utf8_seq((const uint8_t *)s + i, n - i, &cp, &bad);
        if (!k || !py_space(cp)) break;
        i += k;
    }
    return i;
}

static size_t trail_space(const char *s, size_t n)
{
    size_t e = n, bad;
    uint32_t cp;
    while (e > 0) {
        size_t b = e - 1;
        while (b > 0 && ((uint8_t)s[b] & 0xC0) == 0x80) b--;
        if (!b2__utf8_seq((const uint8_t *)s + b, e - b, &cp, &bad) || !py_space(cp))
            break;
        e = b;
    }
    return n - e;
}

/* One piece of the text after the added-token split. */
typedef struct piece { size_t off, len; int added; /* index or -1 */ } piece;

int b2__bpe_encode(const b2_bpe *t, const char *text, size_t len,
                   int add_special, int32_t **ids, size_t *n,
                   blip2_error *err)
{
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len)) return b2__err(err, BLIP2_EINVAL, "tokenize: NULL text");
    size_t bad = b2__utf8_check(text, len);
    if (bad != len)
        return b2__err(err, BLIP2_EINVAL,
                       "tokenize: text is not valid UTF-8 (byte %zu)", bad);

    int rc = 0;
    char *own = NULL;
    piece *pc = NULL;
    size_t npc = 0, cap = 0;
    ids_vec out = {0};
    bpe_scratch s = {0};
    pcre2_match_data *md = NULL;

    if (t->add_prefix_space) { /* prepare_for_tokenization */
        own = malloc(len + 1);
        if (!own) goto nomem;
        own[0] = ' ';
        if (len) memcpy(own + 1, text, len);
        text = own;
        len++;
    }
    /* Split out added tokens, leftmost and longest, as the trie does. */
    for (size_t i = 0, start = 0; i <= len; i++) {
        size_t ml = 0;
        int a = i < len ? match_added(t, text + i, len - i, &ml) : -1;
        if (a < 0 && i < len) continue;
        if (npc + 2 > cap) {
            cap = cap ? cap * 2 : 16;
            piece *np = realloc(pc, cap * sizeof *np);
            if (!np) goto nomem;
            pc = np;
        }
        if (i > start) pc[npc++] = (piece){start, i - start, -1};
        if (a >= 0) {
            pc[npc++] = (piece){i, ml, a};
            i += ml - 1;
            start = i + 1;
        }
    }
    /* lstrip/rstrip eat the whitespace of the neighbouring text pieces. */
    for (size_t i = 0; i < npc; i++) {
        if (pc[i].added < 0) continue;
        const added_tok *a = &t->added[pc[i].added];
        if (a->rstrip && i + 1 < npc && pc[i + 1].added < 0) {
            size_t k = lead_space(text + pc[i + 1].off, pc[i + 1].len);
            pc[i + 1].off += k;
            pc[i + 1].len -= k;
        }
        if (a->lstrip && i > 0 && pc[i - 1].added < 0)
            pc[i - 1].len -= trail_space(text + pc[i - 1].off, pc[i - 1].len);
    }

    if (add_special && t->add_bos && t->bos >= 0 && ids_push(&out, t->bos))
        goto nomem;
    md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) goto nomem;
    for (size_t i = 0; i < npc && rc == 0; i++) {
        if (pc[i].len == 0) continue;
        if (pc[i].added >= 0) {
            if (ids_push(&out, t->added[pc[i].added].id)) goto nomem;
        } else {
            rc = encode_piece(t, md, &s, text + pc[i].off, pc[i].len, &out, err);
        }
    }
    if (rc == 0) {
        if (!out.p && !(out.p = malloc(sizeof *out.p))) goto nomem;
        *ids = out.p; /* never NULL on success, even when n is 0 */
        *n = out.n;
        out.p = NULL;
    }
    goto done;
nomem:
    rc = b2__err(err, BLIP2_ENOMEM, "tokenize: out of memory");
done:
    free(out.p);
    free(own);
    free(pc);
    scratch_free(&s);
    if (md) pcre2_match_data_free(md);
    return rc;
}

/* ------------------------------------------------------------ decoding */

/* Ends the current run of tokens: its bytes become one text segment. */
static int flush_segment(strbuf *o, strbuf *cur, int *nseg, int keep_empty)
{
    size_t mark = o->len;
    if (*nseg > 0 && buf_add(o, " ", 1)) return -1;
    size_t before = o->len;
    if (buf_add_utf8_replace(o, (const uint8_t *)cur->p, cur->len)) return -1;
    if (o->len == before && !keep_empty) {
        o->len = mark; /* an empty string is not appended */
        o->p[o->len] = 0;
    } else {
        (*nseg)++;
    }
    cur->len = 0;
    return 0;
}

int b2__bpe_decode(const b2_bpe *t, const int32_t *ids, size_t n, int skip,
                   char **text, blip2_error *err)
{
    *text = NULL;
    if (!t || (!ids && n)) return b2__err(err, BLIP2_EINVAL, "detokenize: NULL ids");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_ids || t->id_sym[ids[i]] < 0)
            return b2__err(err, BLIP2_EINVAL,
                           "detokenize: unknown token id %d at position %zu",
                           ids[i], i);
    strbuf o = {0}, cur = {0};
    int nseg = 0, has_cur = 0;
    if (buf_reserve(&o, 0) || buf_reserve(&cur, 0)) goto nomem;
    o.p[0] = cur.p[0] = 0;
    /* convert_ids_to_tokens drops all_special_ids when skipping; added
     * tokens that are not special are separate segments, joined by " "
     * (spaces_between_special_tokens); everything else, specials kept
     * included, goes through the byte decoder as one run. */
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        uint8_t fl = t->id_flags[id];
        if (skip && (fl & TOK_SPECIAL)) continue;
        if (fl & TOK_LEGACY) {
            if (has_cur && flush_segment(&o, &cur, &nseg, 0)) goto nomem;
            has_cur = 0;
            if (nseg > 0 && buf_add(&o, " ", 1)) goto nomem;
            if (buf_add(&o, t->raw + t->raw_off[id], t->raw_len[id])) goto nomem;
            nseg++;
        } else {
            if (buf_add(&cur, t->raw + t->raw_off[id], t->raw_len[id])) goto nomem;
            has_cur = 1;
        }
    }
    if (has_cur && flush_segment(&o, &cur, &nseg, 1)) goto nomem;
    if (t->cleanup) o.len = b2__clean_up_tokenization(o.p, o.len);
    free(cur.p);
    *text = o.p;
    return 0;
nomem:
    free(o.p);
    free(cur.p);
    return b2__err(err, BLIP2_ENOMEM, "detokenize: out of memory");
}

/* ----------------------------------------------------------- accessors */

int b2__bpe_token_bytes(const b2_bpe *t, int32_t id, char *buf, size_t cap)
{
    if (!t || id < 0 || id >= t->n_ids || t->id_sym[id] < 0) return BLIP2_EINVAL;
    if (t->id_flags[id] & TOK_SPECIAL) return 0;
    size_t len = t->raw_len[id];
    if (buf && cap) memcpy(buf, t->raw + t->raw_off[id], len < cap ? len : cap);
    return (int)len;
}

const char *b2__bpe_token_str(const b2_bpe *t, int32_t id)
{
    if (!t || id < 0 || id >= t->n_ids || t->id_sym[id] < 0) return NULL;
    return t->st.strs.p + t->st.rec[t->id_sym[id]].off;
}

int32_t b2__bpe_bos(const b2_bpe *t) { return t->bos; }
int32_t b2__bpe_eos(const b2_bpe *t) { return t->eos; }
int32_t b2__bpe_pad(const b2_bpe *t) { return t->pad; }
size_t b2__bpe_vocab_size(const b2_bpe *t) { return (size_t)t->n_ids; }
