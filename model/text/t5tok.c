/*
 * t5tok.c - T5Tokenizer (slow, legacy=true) of transformers v4.37.2 on top
 * of libsentencepiece (spm.h).
 *
 * Ids: 0 <pad>, 1 </s>, 2 <unk> and the other SentencePiece pieces below
 * S (32000 for T5), then <extra_id_0> = S + extra_ids - 1 down to
 * <extra_id_{extra_ids-1}> = S.  The special tokens are <pad>, </s>, <unk>
 * and the extra ids; the extra ids are also "added tokens" for decoding,
 * so they come out as separate words joined by spaces.
 *
 * encode: find the special tokens in the raw text (longest match, left to
 *   right); every text run between them goes through SentencePiece on its
 *   own (legacy: each run starts a new word) -> + </s> unless last.
 * decode: drop specials if asked; runs of ordinary ids are decoded by
 *   SentencePiece, a special token is preceded by a space unless the
 *   previous token was special, the result is stripped; extra ids split
 *   the text into space-joined parts; then clean_up_tokenization_spaces.
 */
#include "t5tok.h"
#include "cleanup.h"
#include "error.h"
#include "utf8.h"
#include "spm.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct b2_t5tok {
    b2_spm *sp;
    int S;          /* SentencePiece pieces */
    int extra;      /* extra ids */
    int cleanup;    /* clean_up_tokenization_spaces */
    char **extra_str; /* (extra) "<extra_id_N>" by N */
};

static const char *const base_special[3] = {"<pad>", "</s>", "<unk>"};

void b2__t5tok_free(b2_t5tok *t)
{
    if (!t) return;
    b2__spm_free(t->sp);
    for (int i = 0; t->extra_str && i < t->extra; i++) free(t->extra_str[i]);
    free(t->extra_str);
    free(t);
}

/* tokenizer_config.json's text (len bytes, NULL: none): extra_ids and
 * clean_up_tokenization_spaces; what names it in errors. */
static int apply_config(b2_t5tok *t, const char *json, size_t len, const char *what, blip2_error *err)
{
    if (!json) return 0;
    json_error_t je;
    json_t *cfg = json_loadb(json, len, 0, &je);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return b2__err(err, BLIP2_EFORMAT, "%s: not a JSON object", what);
    }
    json_t *e = json_object_get(cfg, "extra_ids");
    if (json_is_integer(e)) t->extra = (int)json_integer_value(e);
    e = json_object_get(cfg, "clean_up_tokenization_spaces");
    if (json_is_boolean(e)) t->cleanup = json_is_true(e);
    json_decref(cfg);
    if (t->extra < 0 || t->extra > 100000) return b2__err(err, BLIP2_EFORMAT, "%s: extra_ids out of range", what);
    return 0;
}

/* After the SentencePiece model is loaded: T5's first pieces, the extra ids. */
static int finish(b2_t5tok *t, const char *what, blip2_error *err)
{
    t->S = b2__spm_size(t->sp);
    for (int i = 0; i < 3; i++) {
        const char *p = b2__spm_piece(t->sp, i);
        if (!p || strcmp(p, base_special[i]))
            return b2__err(err, BLIP2_EFORMAT, "%s: piece %d is not %s as T5 needs", what, i, base_special[i]);
    }
    if (!(t->extra_str = calloc((size_t)t->extra + 1, sizeof *t->extra_str)))
        return b2__err(err, BLIP2_ENOMEM, "out of memory");
    for (int i = 0; i < t->extra; i++) {
        char b[32];
        snprintf(b, sizeof b, "<extra_id_%d>", i);
        if (!(t->extra_str[i] = strdup(b))) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    }
    return 0;
}

static b2_t5tok *t5tok_new(void)
{
    b2_t5tok *t = calloc(1, sizeof *t);
    if (t) {
        t->extra = 100;
        t->cleanup = 1;
    }
    return t;
}

/* The end of both loads: lr is the SentencePiece load's result (-2 out
 * of memory, other negatives msg says why, what names the model and note
 * goes before msg), then finish().  0 with *out = t, or the error with t
 * freed. */
static int load_end(b2_t5tok *t, int lr, const char *what, const char *note, const char *msg, b2_t5tok **out,
                    blip2_error *err)
{
    int rc;
    if (lr < 0)
        rc = lr == -2 ? b2__err(err, BLIP2_ENOMEM, "out of memory")
                      : b2__err(err, BLIP2_EFORMAT, "%s: %s%s", what, note, msg);
    else if ((rc = finish(t, what, err)) >= 0) {
        *out = t;
        return 0;
    }
    b2__t5tok_free(t);
    return rc;
}

int b2__t5tok_load(b2_t5tok **out, const char *dir, blip2_error *err)
{
    char path[4096], msg[256];
    int rc = 0;
    *out = NULL;
    b2_t5tok *t = t5tok_new();
    if (!t) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        json_error_t je;
        json_t *cfg = json_loadf(f, 0, &je);
        fclose(f);
        char *text = cfg ? json_dumps(cfg, 0) : NULL;
        json_decref(cfg);
        rc = apply_config(t, text ? text : "", text ? strlen(text) : 0, path, err);
        free(text);
        if (rc < 0) goto fail;
    }
    snprintf(path, sizeof path, "%s/spiece.model", dir);
    if (!(f = fopen(path, "rb"))) {
        rc = b2__err(err, BLIP2_EIO, "%s: cannot open the SentencePiece model", path);
        goto fail;
    }
    fclose(f);
    return load_end(t, b2__spm_load(&t->sp, path, msg, sizeof msg), path, "", msg, out, err);
fail:
    b2__t5tok_free(t);
    return rc;
}

int b2__t5tok_load_mem(b2_t5tok **out, const void *model, size_t model_len, const char *model_what,
                       const char *config_json, size_t config_len, const char *config_what, blip2_error *err)
{
    char msg[256];
    int rc;
    *out = NULL;
    b2_t5tok *t = t5tok_new();
    if (!t) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    if ((rc = apply_config(t, config_json, config_len, config_what, err)) < 0) goto fail;
    if (!model || model_len == 0) {
        rc = b2__err(err, BLIP2_EFORMAT, "%s: empty SentencePiece model", model_what);
        goto fail;
    }
    return load_end(t, b2__spm_load_mem(&t->sp, model, model_len, msg, sizeof msg), model_what,
                    "not a SentencePiece model: ", msg, out, err);
fail:
    b2__t5tok_free(t);
    return rc;
}

size_t b2__t5tok_vocab_size(const b2_t5tok *t) { return (size_t)t->S + (size_t)t->extra; }

/* The special token's text for id, or NULL for an ordinary piece. */
static const char *special_str(const b2_t5tok *t, int32_t id)
{
    if (id >= 0 && id < 3) return base_special[id];
    if (id >= t->S && id < t->S + t->extra) return t->extra_str[t->S + t->extra - 1 - id];
    return NULL;
}

/* Length of the special token at s (n bytes left) and its id, or 0. */
static size_t match_special(const b2_t5tok *t, const char *s, size_t n, int32_t *id)
{
    if (n < 4 || s[0] != '<') return 0;
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(base_special[i]);
        if (n >= l && !memcmp(s, base_special[i], l)) { *id = i; return l; }
    }
    /* <extra_id_N>: N as written by the tokenizer (no sign, no leading zeros) */
    if (n < 12 || memcmp(s, "<extra_id_", 10) != 0) return 0;
    size_t j = 10;
    long v = 0;
    while (j < n && j < 18 && s[j] >= '0' && s[j] <= '9') v = v * 10 + (s[j++] - '0');
    if (j == 10 || j >= n || s[j] != '>' || (s[10] == '0' && j > 11) || v >= t->extra) return 0;
    *id = (int32_t)(t->S + t->extra - 1 - v);
    return j + 1;
}

typedef struct ibuf {
    int32_t *v;
    size_t n, cap;
} ibuf;

static int ibuf_push(ibuf *b, const int32_t *x, size_t n)
{
    if (n == 0) return 0;
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap : 16;
        while (nc < b->n + n) nc *= 2;
        int32_t *nv = realloc(b->v, sizeof *nv * nc);
        if (!nv) return BLIP2_ENOMEM;
        b->v = nv;
        b->cap = nc;
    }
    memcpy(b->v + b->n, x, sizeof *x * n);
    b->n += n;
    return 0;
}

/* SentencePiece on text[0..len) appended to b. */
static int encode_run(const b2_t5tok *t, const char *text, size_t len, ibuf *b)
{
    if (len == 0) return 0;
    int32_t *ids;
    size_t n;
    int r = b2__spm_encode(t->sp, text, len, &ids, &n);
    if (r < 0) return r == -2 ? BLIP2_ENOMEM : BLIP2_EINVAL;
    r = ibuf_push(b, ids, n);
    free(ids);
    return r;
}

int b2__t5tok_encode(const b2_t5tok *t, const char *text, size_t len, int add_eos, int32_t **ids,
                     size_t *n, blip2_error *err)
{
    *ids = NULL;
    *n = 0;
    size_t bad = b2__utf8_check((const unsigned char *)text, len);
    if (bad < len) return b2__err(err, BLIP2_EINVAL, "text is not valid UTF-8 (byte %zu)", bad);
    ibuf b = {0};
    int rc = 0;
    size_t start = 0;
    for (size_t i = 0; i < len && rc == 0;) {
        int32_t id;
        size_t l = match_special(t, text + i, len - i, &id);
        if (!l) { i++; continue; }
        if ((rc = encode_run(t, text + start, i - start, &b)) == 0) rc = ibuf_push(&b, &id, 1);
        i += l;
        start = i;
    }
    if (rc == 0) rc = encode_run(t, text + start, len - start, &b);
    const int32_t eos = 1;
    if (rc == 0 && add_eos && !(b.n && b.v[b.n - 1] == eos)) rc = ibuf_push(&b, &eos, 1);
    if (rc == 0 && !b.v && !(b.v = malloc(sizeof(int32_t)))) rc = BLIP2_ENOMEM;
    if (rc < 0) {
        free(b.v);
        return rc == BLIP2_ENOMEM ? b2__err(err, rc, "out of memory")
                                  : b2__err(err, rc, "SentencePiece could not encode the text");
    }
    *ids = b.v;
    *n = b.n;
    return 0;
}

typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->oom = 1; return; }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* Length of the Python whitespace character at s[0..n), or 0. */
static size_t space_len(const unsigned char *s, size_t n)
{
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3) {
        unsigned cp = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
        if ((s[0] & 0xf0) == 0xe0 && (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
                                      cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000))
            return 3;
    }
    return 0;
}

/* str.strip() of b->s[from..) in place. */
static void sb_strip_from(sbuf *b, size_t from)
{
    if (b->oom || !b->s) return;
    size_t a = from, e = b->n, l;
    while (a < e && (l = space_len((const unsigned char *)b->s + a, e - a))) a += l;
    for (;;) { /* trailing: find the last character */
        size_t k = e;
        while (k > a && ((unsigned char)b->s[k - 1] & 0xc0) == 0x80) k--;
        if (k > a) k--;
        if (e > a && space_len((const unsigned char *)b->s + k, e - k) == e - k) e = k;
        else break;
    }
    memmove(b->s + from, b->s + a, e - a);
    b->n = from + (e - a);
    b->s[b->n] = 0;
}

/* SentencePiece text of ids[0..n) appended to b. */
static int decode_run(const b2_t5tok *t, const int32_t *ids, size_t n, sbuf *b)
{
    if (n == 0) return 0;
    char *s;
    int r = b2__spm_decode(t->sp, ids, n, &s);
    if (r < 0) return r == -2 ? BLIP2_ENOMEM : BLIP2_EINVAL;
    sb_str(b, s);
    free(s);
    return 0;
}

/* convert_tokens_to_string of ids[0..n) (no extra ids), appended to b. */
static int tokens_to_string(const b2_t5tok *t, const int32_t *ids, size_t n, sbuf *b)
{
    const size_t from = b->n;
    size_t run = 0;
    int prev_special = 0, rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *sp = special_str(t, ids[i]);
        if (!sp) { prev_special = 0; continue; }
        if (!prev_special) sb_str(b, " ");
        rc = decode_run(t, ids + run, i - run, b);
        sb_str(b, sp);
        prev_special = 1;
        run = i + 1;
    }
    if (rc == 0) rc = decode_run(t, ids + run, n - run, b);
    sb_strip_from(b, from);
    return rc;
}

int b2__t5tok_decode(const b2_t5tok *t, const int32_t *ids, size_t n, int skip, char **text,
                     blip2_error *err)
{
    *text = NULL;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->S + t->extra)
            return b2__err(err, BLIP2_EINVAL, "token id %d is outside the vocabulary", (int)ids[i]);
    int32_t *keep = malloc(sizeof(int32_t) * (n ? n : 1));
    if (!keep) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!skip || !special_str(t, ids[i])) keep[k++] = ids[i];
    sbuf b = {0};
    sb_add(&b, "", 0);
    int rc = 0, parts = 0;
    size_t run = 0;
    for (size_t i = 0; i <= k && rc == 0; i++) {
        int is_extra = i < k && keep[i] >= t->S;
        if (i < k && !is_extra) continue;
        if (i > run) { /* the text run before: a part unless it decodes to nothing */
            size_t before = b.n;
            if (parts) sb_str(&b, " ");
            size_t at = b.n;
            rc = tokens_to_string(t, keep + run, i - run, &b);
            if (b.n == at) b.n = before; else parts++;
            if (!b.oom) b.s[b.n] = 0;
        }
        if (is_extra) {
            if (parts) sb_str(&b, " ");
            sb_str(&b, special_str(t, keep[i]));
            parts++;
        }
        run = i + 1;
    }
    free(keep);
    if (rc == 0 && b.oom) rc = BLIP2_ENOMEM;
    if (rc == 0 && t->cleanup) b.n = b2__clean_up_tokenization(b.s, b.n);
    if (rc < 0) {
        free(b.s);
        return rc == BLIP2_ENOMEM ? b2__err(err, rc, "out of memory")
                                  : b2__err(err, rc, "SentencePiece could not decode the ids");
    }
    *text = b.s;
    return 0;
}

int b2__t5tok_token_bytes(const b2_t5tok *t, int32_t id, char *buf, size_t cap)
{
    if (id < 0 || id >= t->S + t->extra) return BLIP2_EINVAL;
    if (special_str(t, id)) return 0;
    const char *p = b2__spm_piece(t->sp, id);
    size_t o = 0;
    for (size_t i = 0; p[i];) {
        const char *c = !strncmp(p + i, "\xe2\x96\x81", 3) ? " " : p + i;
        size_t l = c == p + i ? 1 : 3;
        if (o < cap) buf[o] = *c;
        o++;
        i += l;
    }
    return (int)o;
}
