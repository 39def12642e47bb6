/*
 * features.c - the features op (docs/protocol.md 5.6) in the daemon.
 *
 *   loop thread: handle_features (server.c) makes a b2d_job of kind
 *     B2D_JOB_FEATURES --uv pool--> b2d_prepare_features:
 *       image: bytes (inline or descriptor) -> SHA-256 key -> feature cache
 *         lookup of the full stage blob (vision last hidden state + pooler,
 *         Q-Former output, projection) -> on a miss, decode + resize
 *       text: tokenise (BOS first), OPT only, <= max positions
 *       the reply's size against the frame limit (too_large before any work)
 *   --engine queue--> b2d_run_features on the engine thread, between two
 *     decode steps: on a cache miss all image stages at once (so a repeated
 *     request of any output is a hit), stored in the cache twice: the full
 *     blob under a features key and the projection under the key generate
 *     uses; the text pass; then one features reply.
 * Tensors go on the wire as little-endian float32 (int32 for input_ids).
 */
#include "daemon.h"
#include "log.h"

#include <glib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Element counts of the image stages of model m, in blob order. */
static void stage_sizes(const blip2_model *m, size_t n[4])
{
    const size_t T = (size_t)blip2_vision_tokens(m), Dv = (size_t)blip2_vision_hidden(m),
                 Q = (size_t)blip2_num_query_tokens(m), Dq = (size_t)blip2_qformer_hidden(m);
    n[0] = T * Dv;                  /* image_last_hidden_state */
    n[1] = Dv;                      /* image_pooler_output */
    n[2] = Q * Dq;                  /* qformer_last_hidden_state (pooler: row 0) */
    n[3] = blip2_query_embeds_len(m); /* language_model_inputs */
}

__attribute__((format(printf, 3, 4)))
static int fail(b2d_job *j, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->errmsg, sizeof j->errmsg, fmt, ap);
    va_end(ap);
    j->err = code;
    return code;
}

/* Points the image outputs into j->blob. */
static void slice_blob(b2d_job *j, const size_t n[4])
{
    float *b = j->blob;
    j->feat[B2IPC_FEAT_IMAGE_LAST_HIDDEN_STATE] = b;
    j->feat[B2IPC_FEAT_IMAGE_POOLER_OUTPUT] = b + n[0];
    j->feat[B2IPC_FEAT_QFORMER_LAST_HIDDEN_STATE] = b + n[0] + n[1];
    j->feat[B2IPC_FEAT_QFORMER_POOLER_OUTPUT] = b + n[0] + n[1]; /* row 0 */
    j->feat[B2IPC_FEAT_LANGUAGE_MODEL_INPUTS] = b + n[0] + n[1] + n[2];
}

/* The key of the full stage blob: the image key, tagged. */
static void blob_key(const uint8_t key[32], uint8_t out[32])
{
    static const char tag[] = "features: vision, vision pooler, qformer, projection";
    GChecksum *ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(ck, key, 32);
    g_checksum_update(ck, (const guchar *)tag, sizeof tag - 1);
    gsize klen = 32;
    g_checksum_get_digest(ck, out, &klen);
    g_checksum_free(ck);
}

/* Bytes of tensor data the reply will carry. */
static uint64_t reply_bytes(const b2d_job *j, const size_t n[4])
{
    const blip2_model *m = j->model->m;
    const uint64_t V = (uint64_t)blip2_vocab_size(m), L = j->n_prompt_ids;
    uint64_t b = 512; /* the map, names, shapes, timings */
    for (int k = 0; k < B2IPC_FEAT_COUNT; k++) {
        if (!(j->outputs & (1u << k))) continue;
        uint64_t e = k == B2IPC_FEAT_LOGITS ? L * V : k == B2IPC_FEAT_LOGITS_LAST ? V
                     : k == B2IPC_FEAT_QFORMER_POOLER_OUTPUT ? (uint64_t)blip2_qformer_hidden(m)
                     : k == B2IPC_FEAT_IMAGE_LAST_HIDDEN_STATE ? n[0]
                     : k == B2IPC_FEAT_IMAGE_POOLER_OUTPUT ? n[1]
                     : k == B2IPC_FEAT_QFORMER_LAST_HIDDEN_STATE ? n[2] : n[3];
        b += 4 * e + 96;
    }
    if (j->prompt) b += 4 * L + 96;
    return b;
}

void b2d_prepare_features(b2d_job *j, b2d_cache *cache, size_t max_image)
{
    const blip2_model *m = j->model->m;
    blip2_error err = {0};
    size_t n[4];
    stage_sizes(m, n);
    j->t_prep0 = b2d_now_ms();
    if (j->prompt) {
        if (strcmp(blip2_model_family(m), "opt") != 0) {
            fail(j, B2IPC_EUNSUPPORTED, "text features are unsupported for this model family (%s): only OPT models have them",
                 blip2_model_family(m));
            goto out;
        }
        if (blip2_tokenize(m, j->prompt, 1, &j->prompt_ids, &j->n_prompt_ids, &err) < 0) {
            fail(j, B2IPC_EUTF8, "text: %s", err.text);
            goto out;
        }
        if (j->n_prompt_ids > (size_t)blip2_max_positions(m)) {
            fail(j, B2IPC_ETOO_LARGE, "text: %zu tokens, the model has %d positions",
                 j->n_prompt_ids, blip2_max_positions(m));
            goto out;
        }
    }
    uint64_t need = reply_bytes(j, n);
    if (need > j->max_reply) {
        fail(j, B2IPC_ETOO_LARGE,
                 "the requested outputs need %llu bytes, more than the reply frame limit of %zu "
                 "bytes (blip2d --max-frame); ask for fewer outputs%s",
                 (unsigned long long)need, j->max_reply,
                 (j->outputs & (1u << B2IPC_FEAT_LOGITS)) ? " (logits_last instead of logits, or a shorter text)" : "");
        goto out;
    }
    if (!(j->outputs & ((1u << B2IPC_FEAT_LOGITS) - 1))) goto out; /* no image output */
    if (j->image_fd >= 0 && b2d_read_image_fd(j, max_image) < 0) goto out;
    b2d_image_key(j, j->key);
    const size_t total = n[0] + n[1] + n[2] + n[3];
    if (!(j->blob = malloc(sizeof(float) * total))) {
        fail(j, B2IPC_ENOMEM, "out of memory");
        goto out;
    }
    slice_blob(j, n);
    uint8_t bk[32];
    blob_key(j->key, bk);
    j->cached = b2d_cache_get(cache, bk, j->blob, total);
    if (!j->cached) {
        if (!(j->px = malloc(sizeof(float) * blip2_pixel_values_len(m)))) {
            fail(j, B2IPC_ENOMEM, "out of memory");
            goto out;
        }
        int rc = blip2_preprocess(m, j->image, j->image_len, NULL, j->px, &err);
        if (rc < 0) {
            fail(j, rc == BLIP2_ETOOBIG ? B2IPC_ETOO_LARGE : rc == BLIP2_ENOMEM ? B2IPC_ENOMEM : B2IPC_EBAD_IMAGE,
                 "%s", err.text);
            goto out;
        }
    }
    free(j->image);
    j->image = NULL;
out:
    j->t_prep1 = b2d_now_ms();
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
static void to_le(void *p, size_t n)
{
    uint32_t *w = p;
    for (size_t i = 0; i < n; i++) w[i] = __builtin_bswap32(w[i]);
}
#else
static void to_le(void *p, size_t n) { (void)p; (void)n; }
#endif

b2d_event *b2d_run_features(b2d_job *j, b2d_cache *cache)
{
    const blip2_model *m = j->model->m;
    blip2_error err = {0};
    size_t n[4];
    stage_sizes(m, n);
    const size_t V = (size_t)blip2_vocab_size(m), L = j->n_prompt_ids;
    if (j->blob && !j->cached) {
        double t = b2d_now_ms();
        blip2_image_features_out f = {
            j->feat[B2IPC_FEAT_IMAGE_LAST_HIDDEN_STATE], j->feat[B2IPC_FEAT_IMAGE_POOLER_OUTPUT],
            j->feat[B2IPC_FEAT_QFORMER_LAST_HIDDEN_STATE], NULL, j->feat[B2IPC_FEAT_LANGUAGE_MODEL_INPUTS]};
        int rc = blip2_image_features(m, j->px, 1, &f, &err);
        if (rc < 0)
            return b2d_event_error(j->conn_id, j->req_id, 1,
                                   rc == BLIP2_ENOMEM ? B2IPC_ENOMEM : B2IPC_EINTERNAL, NULL, err.text);
        j->vision_ms = b2d_now_ms() - t;
        uint8_t bk[32];
        blob_key(j->key, bk);
        b2d_cache_put(cache, bk, j->blob, n[0] + n[1] + n[2] + n[3]);
        b2d_cache_put(cache, j->key, j->feat[B2IPC_FEAT_LANGUAGE_MODEL_INPUTS], n[3]);
    }
    if (j->prompt && (j->outputs & (3u << B2IPC_FEAT_LOGITS))) {
        double t = b2d_now_ms();
        float *lg = NULL, *last = NULL;
        if ((j->outputs & (1u << B2IPC_FEAT_LOGITS)) && !(lg = j->feat[B2IPC_FEAT_LOGITS] = malloc(sizeof(float) * L * V)))
            return b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_ENOMEM, NULL, "out of memory for the logits");
        if ((j->outputs & (1u << B2IPC_FEAT_LOGITS_LAST)) && !(last = j->feat[B2IPC_FEAT_LOGITS_LAST] = malloc(sizeof(float) * V)))
            return b2d_event_error(j->conn_id, j->req_id, 1, B2IPC_ENOMEM, NULL, "out of memory for the logits");
        int rc = blip2_text_features(m, j->prompt_ids, L, lg, last, &err);
        if (rc < 0)
            return b2d_event_error(j->conn_id, j->req_id, 1,
                                   rc == BLIP2_EUNSUPPORTED ? B2IPC_EUNSUPPORTED : rc == BLIP2_ENOMEM ? B2IPC_ENOMEM
                                   : rc == BLIP2_ETOOBIG ? B2IPC_ETOO_LARGE : B2IPC_EINTERNAL, NULL, err.text);
        j->text_ms = b2d_now_ms() - t;
    }

    b2ipc_tensor ts[B2IPC_FEAT_COUNT + 1];
    uint32_t nt = 0;
    const uint64_t T = (uint64_t)blip2_vision_tokens(m), Dv = (uint64_t)blip2_vision_hidden(m),
                   Q = (uint64_t)blip2_num_query_tokens(m), Dq = (uint64_t)blip2_qformer_hidden(m),
                   Dt = (uint64_t)blip2_text_hidden(m);
    for (int k = 0; k < B2IPC_FEAT_COUNT; k++) {
        if (!(j->outputs & (1u << k))) continue;
        b2ipc_tensor *t = &ts[nt++];
        *t = (b2ipc_tensor){.name = b2ipc_feature_output_name(k), .dtype = "float32", .data = j->feat[k]};
        uint64_t *s = t->shape;
        switch (k) {
        case B2IPC_FEAT_IMAGE_LAST_HIDDEN_STATE: t->ndim = 3; s[0] = 1; s[1] = T; s[2] = Dv; break;
        case B2IPC_FEAT_IMAGE_POOLER_OUTPUT: t->ndim = 2; s[0] = 1; s[1] = Dv; break;
        case B2IPC_FEAT_QFORMER_LAST_HIDDEN_STATE: t->ndim = 3; s[0] = 1; s[1] = Q; s[2] = Dq; break;
        case B2IPC_FEAT_QFORMER_POOLER_OUTPUT: t->ndim = 2; s[0] = 1; s[1] = Dq; break;
        case B2IPC_FEAT_LANGUAGE_MODEL_INPUTS: t->ndim = 3; s[0] = 1; s[1] = Q; s[2] = Dt; break;
        case B2IPC_FEAT_LOGITS: t->ndim = 3; s[0] = 1; s[1] = L; s[2] = V; break;
        default: t->ndim = 2; s[0] = 1; s[1] = V; break;
        }
        t->data_len = 4;
        for (uint32_t d = 0; d < t->ndim; d++) t->data_len *= (size_t)s[d];
        to_le(j->feat[k], t->data_len / 4);
    }
    if (j->prompt) {
        b2ipc_tensor *t = &ts[nt++];
        *t = (b2ipc_tensor){.name = "input_ids", .dtype = "int32", .ndim = 2, .shape = {1, L},
                            .data = j->prompt_ids, .data_len = 4 * L};
        to_le(j->prompt_ids, L);
    }
    b2ipc_reply rp;
    b2ipc_reply_init(&rp, B2IPC_REPLY_FEATURES);
    rp.id = j->req_id;
    rp.features.tensors = ts;
    rp.features.n_tensors = nt;
    rp.features.cached = j->cached;
    double now = b2d_now_ms(), t0 = j->t_recv;
    rp.features.timings.queue_ms = (j->t_prep0 > t0 ? j->t_prep0 - t0 : 0) +
                                   (j->t_admit > j->t_prep1 && j->t_prep1 > 0 ? j->t_admit - j->t_prep1 : 0);
    rp.features.timings.preprocess_ms = j->t_prep1 > j->t_prep0 ? j->t_prep1 - j->t_prep0 : 0;
    rp.features.timings.vision_ms = j->vision_ms;
    rp.features.timings.text_ms = j->text_ms;
    rp.features.timings.total_ms = now > t0 ? now - t0 : 0;
    return b2d_event_reply(j->conn_id, &rp, 1);
}
