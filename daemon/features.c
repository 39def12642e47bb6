/*
 * features.c - the features op (docs/protocol.md 5.6) as a job kind.
 *
 *   prepare (pool): text: tokenise (BOS first), OPT only, <= max
 *     positions; the reply's size against the frame limit (too_large
 *     before any work); image: b2d_prepare_image with the full stage blob
 *     (vision last hidden state + pooler, Q-Former output, projection) as
 *     the cache entry
 *   start (engine, between two decode steps): on a cache miss all image
 *     stages at once (so a repeated request of any output is a hit),
 *     stored in the cache twice: the full blob under a features key and
 *     the projection under the key generate uses; the text pass; then one
 *     features reply.  It never has a session to step.
 * Tensors go on the wire as little-endian float32 (int32 for input_ids).
 */
#include "daemon.h"
#include "log.h"

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

/* The cache entry of the full stage blob. */
static const char BLOB_TAG[] = "features: vision, vision pooler, qformer, projection";

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

static void prepare(b2d_job *j, const b2d_prep_env *env)
{
    const blip2_model *m = j->model->m;
    blip2_error err = {0};
    size_t n[4];
    stage_sizes(m, n);
    if (j->prompt) {
        if (strcmp(blip2_model_family(m), "opt") != 0) {
            b2d_job_fail(j, B2IPC_EUNSUPPORTED, "text features are unsupported for this model family (%s): only OPT models have them",
                         blip2_model_family(m));
            return;
        }
        if (blip2_tokenize(m, j->prompt, 1, &j->prompt_ids, &j->n_prompt_ids, &err) < 0) {
            b2d_job_fail(j, B2IPC_EUTF8, "text: %s", err.text);
            return;
        }
        if (j->n_prompt_ids > (size_t)blip2_max_positions(m)) {
            b2d_job_fail(j, B2IPC_ETOO_LARGE, "text: %zu tokens, the model has %d positions",
                         j->n_prompt_ids, blip2_max_positions(m));
            return;
        }
    }
    uint64_t need = reply_bytes(j, n);
    if (need > j->max_reply) {
        b2d_job_fail(j, B2IPC_ETOO_LARGE,
                     "the requested outputs need %llu bytes, more than the reply frame limit of %zu "
                     "bytes (blip2d --max-frame); ask for fewer outputs%s",
                     (unsigned long long)need, j->max_reply,
                     (j->outputs & (1u << B2IPC_FEAT_LOGITS)) ? " (logits_last instead of logits, or a shorter text)" : "");
        return;
    }
    if (!(j->outputs & ((1u << B2IPC_FEAT_LOGITS) - 1))) return; /* no image output */
    const size_t total = n[0] + n[1] + n[2] + n[3];
    if (!(j->blob = malloc(sizeof(float) * total))) {
        b2d_job_fail(j, B2IPC_ENOMEM, "out of memory");
        return;
    }
    slice_blob(j, n);
    b2d_prepare_image(j, env, BLOB_TAG, j->blob, total);
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

/* The features reply of j (the stages and the text pass, then the
 * tensors); an error reply when a stage fails. */
static void run(b2d_job *j, b2d_cache *cache)
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
        if (rc < 0) {
            b2d_job_error(j, b2d_ipc_code(rc), NULL, err.text);
            return;
        }
        j->vision_ms = b2d_now_ms() - t;
        uint8_t bk[32];
        b2d_cache_key(j->key, BLOB_TAG, bk);
        b2d_cache_put(cache, bk, j->blob, n[0] + n[1] + n[2] + n[3]);
        b2d_cache_put(cache, j->key, j->feat[B2IPC_FEAT_LANGUAGE_MODEL_INPUTS], n[3]);
    }
    if (j->prompt && (j->outputs & (3u << B2IPC_FEAT_LOGITS))) {
        double t = b2d_now_ms();
        float *lg = NULL, *last = NULL;
        if ((j->outputs & (1u << B2IPC_FEAT_LOGITS)) && !(lg = j->feat[B2IPC_FEAT_LOGITS] = malloc(sizeof(float) * L * V)))
        {
            b2d_job_error(j, B2IPC_ENOMEM, NULL, "out of memory for the logits");
            return;
        }
        if ((j->outputs & (1u << B2IPC_FEAT_LOGITS_LAST)) && !(last = j->feat[B2IPC_FEAT_LOGITS_LAST] = malloc(sizeof(float) * V)))
        {
            b2d_job_error(j, B2IPC_ENOMEM, NULL, "out of memory for the logits");
            return;
        }
        int rc = blip2_text_features(m, j->prompt_ids, L, lg, last, &err);
        if (rc < 0) {
            b2d_job_error(j, b2d_ipc_code(rc), NULL, err.text);
            return;
        }
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
    b2ipc_timings t;
    b2d_timings(j, b2d_now_ms(), 0, &t);
    rp.features.timings.queue_ms = t.queue_ms;
    rp.features.timings.preprocess_ms = t.preprocess_ms;
    rp.features.timings.vision_ms = t.vision_ms;
    rp.features.timings.text_ms = j->text_ms;
    rp.features.timings.total_ms = t.total_ms;
    b2d_job_emit(j, &rp, 1);
}

/* One features request needs no batch slot: it runs between two steps. */
static int width(const b2d_job *j)
{
    (void)j;
    return 0;
}

static int start(b2d_job *j, b2d_cache *cache, int prefill_chunk)
{
    (void)prefill_chunk;
    run(j, cache);
    return 0;
}

/* Stopped before it ran: only shutting down (or a client that has gone,
 * which reads nothing) stops a features request. */
static void abandon(b2d_job *j)
{
    b2d_job_error(j, B2IPC_ESHUTDOWN, NULL, "blip2d is shutting down");
}

const b2d_job_ops b2d_features_ops = {
    .name = "features",
    .prepare = prepare,
    .width = width,
    .start = start,
    .finish = NULL,
    .abandon = abandon,
    .cancel_stops = 0,
};
