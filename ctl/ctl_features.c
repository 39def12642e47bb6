/*
 * ctl_features.c - `blip2ctl features` over a collection (the operation
 * ctl_batch.c runs), and the safetensors writer it shares with the
 * one-image `features --out`.
 *
 *   open image fd --blip2c_features_submit--> features reply (callback)
 *       --> the line: each pooled output (shape (1, D)) as a JSON array of
 *           D floats; the other outputs too, nested, unless --out-dir
 *       --> with --out-dir: every output into DIR/<sha256 of the path>.safetensors
 *           (written to a temporary name, then renamed), named in "file"
 *
 * docs/blip2ctl.md "Features of a collection" is the user's description.
 */
#include "ctl_batch.h"
#include "b2json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- SHA-256 (FIPS 180-4), for the --out-dir file names ---------------------------- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror32(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ w[i - 15] >> 3;
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ w[i - 2] >> 10;
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) +
                      sha_k[i] + w[i];
        uint32_t t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

/* hex: 65 bytes, the lowercase hex digest of s. */
static void sha256_hex(const char *s, char hex[65])
{
    uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
    size_t n = strlen(s), i = 0;
    for (; n - i >= 64; i += 64) sha256_block(h, (const uint8_t *)s + i);
    uint8_t last[128];
    size_t r = n - i, tail = r < 56 ? 64 : 128;
    memset(last, 0, sizeof last);
    memcpy(last, s + i, r);
    last[r] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int b = 0; b < 8; b++) last[tail - 1 - b] = (uint8_t)(bits >> (8 * b));
    sha256_block(h, last);
    if (tail == 128) sha256_block(h, last + 64);
    for (int w = 0; w < 8; w++) snprintf(hex + 8 * w, 9, "%08x", h[w]);
}

/* ---- safetensors ------------------------------------------------------------------- */

int ctl_write_safetensors(const char *path, const blip2c_features *f, char *msg, size_t msg_len)
{
    json_t *hdr = json_object();
    uint64_t off = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const blip2c_tensor *t = &f->tensors[i];
        int ids = t->i32 != NULL;
        for (int k = 0; k < 1 + ids; k++) { /* input_ids, then attention_mask */
            json_t *o = json_object(), *sh = json_array();
            for (int d = 0; d < t->ndim; d++) json_array_append_new(sh, json_integer((json_int_t)t->shape[d]));
            uint64_t nb = (uint64_t)t->numel * (ids ? 8 : 4);
            json_object_set_new(o, "dtype", json_string(ids ? "I64" : "F32"));
            json_object_set_new(o, "shape", sh);
            json_object_set_new(o, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
            json_object_set_new(hdr, k ? "attention_mask" : t->name, o);
            off += nb;
        }
    }
    json_object_set_new(hdr, "__metadata__", json_pack("{ssss}", "format", "pt", "producer", "blip2ctl features"));
    char *h = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!h) {
        snprintf(msg, msg_len, "out of memory");
        return -1;
    }
    size_t hl = strlen(h), pad = (8 - hl % 8) % 8;
    size_t tl = strlen(path) + 5;
    char *tmp = malloc(tl);
    if (!tmp) {
        free(h);
        snprintf(msg, msg_len, "out of memory");
        return -1;
    }
    snprintf(tmp, tl, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wbe");
    if (!fp) {
        snprintf(msg, msg_len, "cannot create %s: %s", tmp, strerror(errno));
        free(h);
        free(tmp);
        return -1;
    }
    uint8_t len8[8];
    for (int b = 0; b < 8; b++) len8[b] = (uint8_t)((uint64_t)(hl + pad) >> (8 * b));
    fwrite(len8, 1, 8, fp);
    fwrite(h, 1, hl, fp);
    for (size_t b = 0; b < pad; b++) fputc(' ', fp);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const blip2c_tensor *t = &f->tensors[i];
        for (size_t e = 0; e < t->numel; e++) { /* little-endian, whatever the host */
            uint8_t b[8];
            if (t->i32) {
                uint64_t v = (uint64_t)(int64_t)t->i32[e];
                for (int k = 0; k < 8; k++) b[k] = (uint8_t)(v >> (8 * k));
                fwrite(b, 1, 8, fp);
            } else {
                uint32_t v;
                memcpy(&v, &t->f32[e], 4);
                for (int k = 0; k < 4; k++) b[k] = (uint8_t)(v >> (8 * k));
                fwrite(b, 1, 4, fp);
            }
        }
        if (t->i32)
            for (size_t e = 0; e < t->numel; e++) fwrite("\1\0\0\0\0\0\0\0", 1, 8, fp);
    }
    int bad = ferror(fp) != 0;
    int e = errno;
    if (fclose(fp) != 0) { bad = 1; e = errno; }
    if (!bad && rename(tmp, path) != 0) { bad = 1; e = errno; }
    if (bad) {
        snprintf(msg, msg_len, "cannot write %s: %s", path, strerror(e));
        unlink(tmp);
    }
    free(h);
    free(tmp);
    return bad ? -1 : 0;
}

/* ---- the features operation -------------------------------------------------------- */

/* The values of t from element *at on, nested along dims d.. of its shape. */
static json_t *nested(const blip2c_tensor *t, int d, size_t *at)
{
    json_t *a = json_array();
    for (uint64_t i = 0; i < t->shape[d]; i++) {
        if (d == t->ndim - 1) {
            size_t k = (*at)++;
            json_array_append_new(a, t->i32 ? json_integer(t->i32[k]) : json_real(t->f32[k]));
        } else {
            json_array_append_new(a, nested(t, d + 1, at));
        }
    }
    return a;
}

static void features_done_cb(void *user, const blip2c_features *f)
{
    ctl_job *job = user;
    const ctl_features_args *a = ctl_job_user(job);
    json_t *fl = json_object();
    for (size_t i = 0; i < f->n_tensors; i++) {
        const blip2c_tensor *t = &f->tensors[i];
        if (t->i32 || t->ndim < 2 || t->shape[0] != 1) continue;  /* input_ids; odd shapes */
        if (a->out_dir && t->ndim != 2) continue;                  /* big ones: the file only */
        size_t at = 0;
        json_object_set_new(fl, t->name, nested(t, 1, &at));
    }
    if (a->out_dir) {
        char hex[65], msg[1024];
        char *key = ctl_path_key(ctl_job_path(job));
        if (!key) {
            json_decref(fl);
            blip2c_error e = { .code = BLIP2C_ENOMEM };
            snprintf(e.message, sizeof e.message, "out of memory");
            ctl_job_fail(job, &e);
            return;
        }
        sha256_hex(key, hex);
        free(key);
        size_t n = strlen(a->out_dir) + 80;
        char *file = malloc(n);
        if (file) {
            const char *sep = a->out_dir[0] && a->out_dir[strlen(a->out_dir) - 1] == '/' ? "" : "/";
            snprintf(file, n, "%s%s%s.safetensors", a->out_dir, sep, hex);
        }
        if (!file || ctl_write_safetensors(file, f, msg, sizeof msg) < 0) {
            json_decref(fl);
            blip2c_error e = { .code = BLIP2C_EINVAL };
            snprintf(e.code_name, sizeof e.code_name, "cannot_write");
            snprintf(e.message, sizeof e.message, "%s", file ? msg : "out of memory");
            free(file);
            ctl_job_fail(job, &e);
            return;
        }
        json_object_set_new(fl, "file", json_string(file));
        free(file);
    }
    json_object_set_new(fl, "cached", json_boolean(f->cached));
    json_object_set_new(fl, "ms", json_real(b2cli_ms3(f->timings.total_ms)));
    ctl_job_done(job, fl, NULL, false);
}

static void features_error_cb(void *user, uint64_t id, const blip2c_error *err)
{
    (void)id;
    ctl_job_fail(user, err);
}

static const char *const pooled[] = { "image_pooler_output", "qformer_pooler_output" };

static int features_submit(void *user, blip2c_conn *c, int fd, ctl_job *job, uint64_t *id,
                           blip2c_error *err)
{
    const ctl_features_args *a = user;
    static const blip2c_features_callbacks cbs = { features_done_cb, features_error_cb };
    blip2c_features_request fr;
    blip2c_features_request_init(&fr);
    fr.image_fd = fd;
    if (a->n_outputs) {
        fr.outputs = a->outputs;
        fr.n_outputs = a->n_outputs;
    } else if (!a->out_dir) {
        fr.outputs = pooled;
        fr.n_outputs = 2;
    } /* else: every image output */
    return blip2c_features_submit(c, &fr, &cbs, job, id, err);
}

ctl_batch_op ctl_batch_features_op(ctl_features_args *a)
{
    ctl_batch_op op = { "processed", features_submit, a, 1 };
    return op;
}
