/*
 * schema.c - every request and reply field of docs/protocol.md, once.
 *
 * Each table row says: wire name, kind, flags, where the value lives in the
 * root struct (b2ipc_request or b2ipc_reply; nested maps use the same
 * root), and its limits.  decode.c, encode.c and validate.c walk these
 * tables, so changing a default range or adding a field happens here and in
 * the docs, nowhere else.  Rows are in the order of the docs' tables, which
 * is also the order in which values are checked and encoded.
 */
#include "ipc-private.h"

#include <stddef.h>

#define NOLIM (-1.0)
#define U32MAX 4294967295.0

#define FIELD(nm, k, fl, off_, aux_, lo_, hi_) \
    { .name = nm, .kind = B2IPC__K_##k, .flags = (fl), .off = (off_), \
      .aux = (aux_), .lo = (lo_), .hi = (hi_) }
#define RQ(m) offsetof(b2ipc_request, m)
#define RP(m) offsetof(b2ipc_reply, m)
#define GP(m) offsetof(b2ipc_request, generate.params.m)
#define NA B2IPC__NOAUX
#define REQ B2IPC__F_REQ

#define SCHEMA(var, pfx, arr, strict_) \
    static const b2ipc__schema var = { pfx, arr, sizeof arr / sizeof arr[0], strict_ }

/* ---- requests --------------------------------------------------------------- */

static const b2ipc__field b2ipc__hello_req_f[] = {
    FIELD("v", U32, REQ, RQ(hello.v), NA, 1, U32MAX),
    FIELD("client", STR, B2IPC__F_NONUL, RQ(hello.client), NA, 0, 256),
};

static const b2ipc__field b2ipc__generate_req_f[] = {
    FIELD("image", BIN, B2IPC__F_LIM_IMAGE, RQ(generate.image),
          RQ(generate.image_len), 1, NOLIM),
    FIELD("image_fd", BOOL, B2IPC__F_OMIT_FALSE, RQ(generate.image_fd), NA, 0, 0),
    FIELD("prompt", STR, B2IPC__F_NONUL | B2IPC__F_LIM_PROMPT,
          RQ(generate.prompt), NA, 0, NOLIM),
    FIELD("stream", BOOL, 0, RQ(generate.stream), NA, 0, 0),
    FIELD("max_new_tokens", U32, 0, GP(max_new_tokens), NA, 1, B2IPC_MAX_NEW_TOKENS),
    FIELD("min_new_tokens", U32, 0, GP(min_new_tokens), NA, 0, B2IPC_MAX_NEW_TOKENS),
    FIELD("num_beams", U32, 0, GP(num_beams), NA, 1, B2IPC_MAX_BEAMS),
    FIELD("length_penalty", F64, 0, GP(length_penalty), NA, -10, 10),
    FIELD("repetition_penalty", F64, B2IPC__F_LO_OPEN, GP(repetition_penalty), NA, 0, 10),
    FIELD("do_sample", BOOL, 0, GP(do_sample), NA, 0, 0),
    FIELD("temperature", F64, B2IPC__F_LO_OPEN, GP(temperature), NA, 0, 100),
    FIELD("top_k", U32, 0, GP(top_k), NA, 0, 1048576),
    FIELD("top_p", F64, B2IPC__F_LO_OPEN, GP(top_p), NA, 0, 1),
    FIELD("seed", U64, 0, GP(seed), GP(has_seed), 0, NOLIM),
    FIELD("num_return_sequences", U32, 0, GP(num_return_sequences), NA, 1, B2IPC_MAX_SEQS),
    { .name = "stop", .kind = B2IPC__K_STRARR, .flags = B2IPC__F_NONUL,
      .off = GP(stop), .aux = GP(n_stop), .lo = 0, .hi = B2IPC_MAX_STOP,
      .elo = 1, .ehi = B2IPC_MAX_STOP_BYTES },
};

static const b2ipc__field b2ipc__cancel_req_f[] = {
    FIELD("target", U64, REQ, RQ(cancel.target), NA, 0, NOLIM),
};

static const b2ipc__field b2ipc__features_req_f[] = {
    FIELD("image", BIN, B2IPC__F_LIM_IMAGE, RQ(features.image),
          RQ(features.image_len), 1, NOLIM),
    FIELD("image_fd", BOOL, B2IPC__F_OMIT_FALSE, RQ(features.image_fd), NA, 0, 0),
    FIELD("text", STR, B2IPC__F_NONUL | B2IPC__F_LIM_PROMPT, RQ(features.text), NA, 1, NOLIM),
    { .name = "outputs", .kind = B2IPC__K_STRARR, .flags = B2IPC__F_NONUL,
      .off = RQ(features.outputs), .aux = RQ(features.n_outputs), .lo = 0,
      .hi = B2IPC_FEAT_COUNT, .elo = 1, .ehi = 64 },
};

SCHEMA(b2ipc__hello_req, "", b2ipc__hello_req_f, true);
SCHEMA(b2ipc__features_req, "", b2ipc__features_req_f, true);
SCHEMA(b2ipc__generate_req, "", b2ipc__generate_req_f, true);
SCHEMA(b2ipc__cancel_req, "", b2ipc__cancel_req_f, true);
static const b2ipc__schema b2ipc__empty_req = { "", NULL, 0, true };

const b2ipc__schema *b2ipc__request_schema(b2ipc_op op)
{
    switch (op) {
    case B2IPC_OP_HELLO: return &b2ipc__hello_req;
    case B2IPC_OP_GENERATE: return &b2ipc__generate_req;
    case B2IPC_OP_CANCEL: return &b2ipc__cancel_req;
    case B2IPC_OP_FEATURES: return &b2ipc__features_req;
    case B2IPC_OP_STATUS:
    case B2IPC_OP_PING: return &b2ipc__empty_req;
    default: return NULL;
    }
}

/* ---- replies ----------------------------------------------------------------- */

static const b2ipc__field b2ipc__hello_rep_f[] = {
    FIELD("v", U32, REQ, RP(hello.v), NA, 1, U32MAX),
    FIELD("server", STR, REQ, RP(hello.server), NA, 0, 256),
    FIELD("max_frame", U64, REQ, RP(hello.max_frame), NA, 0, NOLIM),
    FIELD("max_image_bytes", U64, REQ, RP(hello.max_image_bytes), NA, 0, NOLIM),
    FIELD("max_prompt_bytes", U64, REQ, RP(hello.max_prompt_bytes), NA, 0, NOLIM),
};

static const b2ipc__field b2ipc__token_rep_f[] = {
    FIELD("seq", U32, REQ, RP(token.seq), NA, 0, B2IPC_MAX_SEQS - 1),
    FIELD("token", U32, REQ, RP(token.token), NA, 0, U32MAX),
    FIELD("text", TEXT, REQ, RP(token.text), RP(token.text_len), 0, 4096),
};

static const b2ipc__field b2ipc__timings_f[] = {
    FIELD("queue_ms", F64, REQ, RP(done.timings.queue_ms), NA, 0, NOLIM),
    FIELD("preprocess_ms", F64, REQ, RP(done.timings.preprocess_ms), NA, 0, NOLIM),
    FIELD("vision_ms", F64, REQ, RP(done.timings.vision_ms), NA, 0, NOLIM),
    FIELD("prefill_ms", F64, REQ, RP(done.timings.prefill_ms), NA, 0, NOLIM),
    FIELD("decode_ms", F64, REQ, RP(done.timings.decode_ms), NA, 0, NOLIM),
    FIELD("total_ms", F64, REQ, RP(done.timings.total_ms), NA, 0, NOLIM),
    FIELD("tokens_per_s", F64, REQ, RP(done.timings.tokens_per_s), NA, 0, NOLIM),
};
SCHEMA(b2ipc__timings, "timings.", b2ipc__timings_f, false);

static const b2ipc__field b2ipc__done_rep_f[] = {
    FIELD("texts", SEQ_TEXTS, REQ, RP(done.seqs), RP(done.n_seqs), 1, B2IPC_MAX_SEQS),
    FIELD("ids", SEQ_IDS, REQ, RP(done.seqs), RP(done.n_seqs), 1, B2IPC_MAX_SEQS),
    FIELD("finish", SEQ_FINISH, REQ, RP(done.seqs), RP(done.n_seqs), 1, B2IPC_MAX_SEQS),
    FIELD("seed", U64, 0, RP(done.seed), RP(done.has_seed), 0, NOLIM),
    FIELD("prompt_tokens", U32, REQ, RP(done.prompt_tokens), NA, 0, U32MAX),
    FIELD("cached", BOOL, REQ, RP(done.cached), NA, 0, 0),
    { .name = "timings", .kind = B2IPC__K_MAP, .flags = REQ, .off = 0,
      .aux = NA, .lo = 0, .hi = NOLIM, .sub = &b2ipc__timings },
};

static const b2ipc__field b2ipc__error_rep_f[] = {
    FIELD("code", CODE, REQ, RP(error.code), RP(error.code_name), 1, 64),
    FIELD("message", STR, REQ, RP(error.message), NA, 0, 1024),
    FIELD("field", STR, 0, RP(error.field), NA, 0, 128),
};

static const b2ipc__field b2ipc__model_f[] = {
    FIELD("path", STR, REQ, RP(status.model.path), NA, 0, 4096),
    FIELD("name", STR, REQ, RP(status.model.name), NA, 0, 256),
    FIELD("family", STR, REQ, RP(status.model.family), NA, 0, 64),
    FIELD("dtype", STR, REQ, RP(status.model.dtype), NA, 0, 64),
    FIELD("precision", STR, 0, RP(status.model.precision), NA, 0, 64),
    FIELD("backend", STR, 0, RP(status.model.backend), NA, 0, 64),
    FIELD("kernels", STR, 0, RP(status.model.kernels), NA, 0, 1024),
    FIELD("weights", STR, 0, RP(status.model.weights), NA, 0, 256),
};
SCHEMA(b2ipc__model, "model.", b2ipc__model_f, false);

#define CFG(nm) FIELD(#nm, U32, REQ, RP(status.config.nm), NA, 0, U32MAX)
static const b2ipc__field b2ipc__config_f[] = {
    CFG(image_size), CFG(vision_layers), CFG(vision_hidden),
    CFG(qformer_layers), CFG(num_query_tokens), CFG(text_layers),
    CFG(text_hidden), CFG(vocab_size), CFG(max_positions),
    FIELD("qformer_hidden", U32, 0, RP(status.config.qformer_hidden), NA, 0, U32MAX),
    FIELD("patch_size", U32, 0, RP(status.config.patch_size), NA, 0, U32MAX),
};
SCHEMA(b2ipc__config, "config.", b2ipc__config_f, false);

#define CACHE(nm) FIELD(#nm, U64, REQ, RP(status.cache.nm), NA, 0, NOLIM)
static const b2ipc__field b2ipc__cache_f[] = {
    CACHE(hits), CACHE(misses), CACHE(entries), CACHE(bytes),
    CACHE(capacity_bytes),
};
SCHEMA(b2ipc__cache, "cache.", b2ipc__cache_f, false);

#define ENG(nm, k) FIELD(#nm, k, 0, RP(status.engine.nm), NA, 0, NOLIM)
static const b2ipc__field b2ipc__engine_f[] = {
    ENG(decode_steps, U64), ENG(decode_tokens, U64), ENG(decode_ms, F64),
    ENG(prefill_steps, U64), ENG(prefill_ms, F64),
};
SCHEMA(b2ipc__engine, "engine.", b2ipc__engine_f, false);

#define MEM(nm) FIELD(#nm, U64, 0, RP(status.memory.nm), NA, 0, NOLIM)
static const b2ipc__field b2ipc__memory_f[] = {
    MEM(max), MEM(used), MEM(jobs), MEM(decode), MEM(input), MEM(output), MEM(http),
};
SCHEMA(b2ipc__memory, "memory.", b2ipc__memory_f, false);

#define ST32(nm) FIELD(#nm, U32, REQ, RP(status.nm), NA, 0, U32MAX)
static const b2ipc__field b2ipc__status_rep_f[] = {
    FIELD("version", STR, REQ, RP(status.version), NA, 0, 256),
    FIELD("protocol", U32, REQ, RP(status.protocol), NA, 1, U32MAX),
    FIELD("uptime_ms", U64, REQ, RP(status.uptime_ms), NA, 0, NOLIM),
    { .name = "model", .kind = B2IPC__K_MAP, .flags = REQ, .aux = NA,
      .hi = NOLIM, .sub = &b2ipc__model },
    { .name = "config", .kind = B2IPC__K_MAP, .flags = REQ, .aux = NA,
      .hi = NOLIM, .sub = &b2ipc__config },
    ST32(queue_depth), ST32(active), ST32(max_queue), ST32(max_batch),
    ST32(connections), ST32(threads),
    FIELD("requests_total", U64, REQ, RP(status.requests_total), NA, 0, NOLIM),
    { .name = "cache", .kind = B2IPC__K_MAP, .flags = REQ, .aux = NA,
      .hi = NOLIM, .sub = &b2ipc__cache },
    { .name = "engine", .kind = B2IPC__K_MAP, .flags = 0, .aux = NA,
      .hi = NOLIM, .sub = &b2ipc__engine },
    { .name = "memory", .kind = B2IPC__K_MAP, .flags = 0, .aux = NA,
      .hi = NOLIM, .sub = &b2ipc__memory },
};

static const b2ipc__field b2ipc__cancel_rep_f[] = {
    FIELD("found", BOOL, REQ, RP(cancel.found), NA, 0, 0),
};

static const b2ipc__field b2ipc__ftimings_f[] = {
    FIELD("queue_ms", F64, REQ, RP(features.timings.queue_ms), NA, 0, NOLIM),
    FIELD("preprocess_ms", F64, REQ, RP(features.timings.preprocess_ms), NA, 0, NOLIM),
    FIELD("vision_ms", F64, REQ, RP(features.timings.vision_ms), NA, 0, NOLIM),
    FIELD("text_ms", F64, REQ, RP(features.timings.text_ms), NA, 0, NOLIM),
    FIELD("total_ms", F64, REQ, RP(features.timings.total_ms), NA, 0, NOLIM),
};
SCHEMA(b2ipc__ftimings, "timings.", b2ipc__ftimings_f, false);

static const b2ipc__field b2ipc__features_rep_f[] = {
    { .name = "tensors", .kind = B2IPC__K_TENSORS, .flags = REQ,
      .off = RP(features.tensors), .aux = RP(features.n_tensors), .lo = 0,
      .hi = B2IPC_MAX_TENSORS, .elo = 1, .ehi = 64 },
    FIELD("cached", BOOL, REQ, RP(features.cached), NA, 0, 0),
    { .name = "timings", .kind = B2IPC__K_MAP, .flags = REQ, .off = 0,
      .aux = NA, .lo = 0, .hi = NOLIM, .sub = &b2ipc__ftimings },
};

SCHEMA(b2ipc__hello_rep, "", b2ipc__hello_rep_f, false);
SCHEMA(b2ipc__features_rep, "", b2ipc__features_rep_f, false);
SCHEMA(b2ipc__token_rep, "", b2ipc__token_rep_f, false);
SCHEMA(b2ipc__done_rep, "", b2ipc__done_rep_f, false);
SCHEMA(b2ipc__error_rep, "", b2ipc__error_rep_f, false);
SCHEMA(b2ipc__status_rep, "", b2ipc__status_rep_f, false);
SCHEMA(b2ipc__cancel_rep, "", b2ipc__cancel_rep_f, false);
static const b2ipc__schema b2ipc__empty_rep = { "", NULL, 0, false };

const b2ipc__schema *b2ipc__reply_schema(b2ipc_reply_type type)
{
    switch (type) {
    case B2IPC_REPLY_HELLO: return &b2ipc__hello_rep;
    case B2IPC_REPLY_TOKEN: return &b2ipc__token_rep;
    case B2IPC_REPLY_DONE: return &b2ipc__done_rep;
    case B2IPC_REPLY_ERROR: return &b2ipc__error_rep;
    case B2IPC_REPLY_STATUS: return &b2ipc__status_rep;
    case B2IPC_REPLY_PONG: return &b2ipc__empty_rep;
    case B2IPC_REPLY_CANCEL: return &b2ipc__cancel_rep;
    case B2IPC_REPLY_FEATURES: return &b2ipc__features_rep;
    default: return NULL;
    }
}
