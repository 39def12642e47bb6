/*
 * test_ipc.c - libblip2ipc: framing, encoding, decoding, validation.
 *
 *   1. round trips of every request and reply with all fields set
 *   2. the exact bytes of the example frame in docs/protocol.md
 *   3. the frame reader fed one byte at a time and in random chunks;
 *      oversized declared lengths refused before any allocation
 *   4. table-driven malformed inputs: a valid base message, a few edits
 *      (set / delete / add a key), the expected code and field
 *   5. raw structural garbage (not msgpack, truncated, trailing, nesting)
 *   6. error codes: names round-trip and match docs/protocol.md section 9
 */
#include "tap.h"
#include "blip2ipc.h"
#include "status_fixture.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) /* xorshift64*, deterministic */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static uint32_t be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* Checks that buf holds exactly one frame and returns its payload. */
static const char *one_frame(const msgpack_sbuffer *sb, size_t *len)
{
    if (sb->size < 4 || be32(sb->data) != sb->size - 4) return NULL;
    *len = sb->size - 4;
    return sb->data + 4;
}

static bool streq(const char *a, const char *b)
{
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

/* ---- 1. round trips ------------------------------------------------------ */

static void test_request_roundtrips(void)
{
    static const uint8_t png[] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13 };
    static const char *const stop[] = { "\n", "Question:", "é✓" };
    b2ipc_error err;
    msgpack_sbuffer sb, sb2;
    msgpack_sbuffer_init(&sb);
    msgpack_sbuffer_init(&sb2);

    /* generate, every field away from its default */
    b2ipc_request rq, out;
    b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
    rq.id = UINT64_MAX;
    rq.generate.image = png;
    rq.generate.image_len = sizeof png;
    rq.generate.prompt = "Question: what is in the picture? Answer: ünï";
    rq.generate.stream = true;
    b2ipc_gen_params *p = &rq.generate.params;
    p->max_new_tokens = 2048;
    p->min_new_tokens = 5;
    p->num_beams = 4;
    p->length_penalty = -0.75;
    p->repetition_penalty = 1.3;
    p->do_sample = true;
    p->temperature = 0.7;
    p->top_k = 0;
    p->top_p = 0.9;
    p->has_seed = true;
    p->seed = 0xfedcba9876543210ull;
    p->num_return_sequences = 3;
    p->stop = stop;
    p->n_stop = 3;
    int rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
    ok(rc == 0, "encode generate (%s)", rc ? err.message : "ok");
    size_t len = 0;
    const char *pl = one_frame(&sb, &len);
    ok(pl != NULL, "generate: one frame with a correct length prefix");
    rc = pl ? b2ipc_decode_request(pl, len, NULL, &out, &err) : -1;
    ok(rc == 0, "decode generate (%s)", rc ? err.message : "ok");
    if (rc == 0) {
        const b2ipc_gen_params *q = &out.generate.params;
        ok(out.op == B2IPC_OP_GENERATE && out.id == UINT64_MAX && out.has_id &&
           !out.takes_fd, "generate: id, op");
        ok(out.generate.image_len == sizeof png &&
           memcmp(out.generate.image, png, sizeof png) == 0 &&
           (const char *)out.generate.image >= pl &&
           (const char *)out.generate.image < pl + len,
           "generate: image bytes, borrowed from the payload");
        ok(!out.generate.image_fd && out.generate.stream &&
           streq(out.generate.prompt, rq.generate.prompt), "generate: image_fd, stream, prompt");
        ok(q->max_new_tokens == 2048 && q->min_new_tokens == 5 && q->num_beams == 4 &&
           q->length_penalty == -0.75 && q->repetition_penalty == 1.3 &&
           q->do_sample && q->temperature == 0.7 && q->top_k == 0 &&
           q->top_p == 0.9 && q->has_seed && q->seed == 0xfedcba9876543210ull &&
           q->num_return_sequences == 3, "generate: every parameter");
        ok(q->n_stop == 3 && streq(q->stop[0], "\n") && streq(q->stop[1], "Question:") &&
           streq(q->stop[2], "é✓"), "generate: stop strings");
        rc = b2ipc_encode_request(&sb2, &out, NULL, &err);
        ok(rc == 0 && sb2.size == sb.size && memcmp(sb.data, sb2.data, sb.size) == 0,
           "generate: re-encoding the decoded request gives the same bytes");
        b2ipc_request_free(&out);
        ok(out.arena_ == NULL && out.generate.prompt == NULL, "request_free zeroes");
        b2ipc_request_free(&out); /* twice is fine */
    }

    /* generate with image_fd and defaults: optional fields absent */
    b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
    rq.id = 0;
    rq.generate.image_fd = true;
    msgpack_sbuffer_clear(&sb);
    rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
    pl = one_frame(&sb, &len);
    rc = rc == 0 && pl ? b2ipc_decode_request(pl, len, NULL, &out, &err) : -1;
    ok(rc == 0 && out.generate.image_fd && out.takes_fd && !out.generate.image &&
       !out.generate.prompt && !out.generate.params.has_seed &&
       out.generate.params.n_stop == 0 && out.generate.params.max_new_tokens == 20 &&
       out.generate.params.top_k == 50 && out.generate.params.num_beams == 1 &&
       out.id == 0, "generate by descriptor with defaults round-trips");
    b2ipc_request_free(&out);

    /* hello, cancel, status, ping */
    b2ipc_request_init(&rq, B2IPC_OP_HELLO);
    rq.id = 1;
    rq.hello.v = 7;
    rq.hello.client = "test_ipc 1.0";
    msgpack_sbuffer_clear(&sb);
    rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
    pl = one_frame(&sb, &len);
    rc = rc == 0 && pl ? b2ipc_decode_request(pl, len, NULL, &out, &err) : -1;
    ok(rc == 0 && out.op == B2IPC_OP_HELLO && out.id == 1 && out.hello.v == 7 &&
       streq(out.hello.client, "test_ipc 1.0"), "hello round-trips");
    b2ipc_request_free(&out);

    b2ipc_request_init(&rq, B2IPC_OP_CANCEL);
    rq.id = 2;
    rq.cancel.target = 1ull << 40;
    msgpack_sbuffer_clear(&sb);
    rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
    pl = one_frame(&sb, &len);
    rc = rc == 0 && pl ? b2ipc_decode_request(pl, len, NULL, &out, &err) : -1;
    ok(rc == 0 && out.op == B2IPC_OP_CANCEL && out.id == 2 &&
       out.cancel.target == 1ull << 40, "cancel round-trips");
    b2ipc_request_free(&out);

    for (int op = B2IPC_OP_STATUS; op <= B2IPC_OP_PING; op++) {
        b2ipc_request_init(&rq, (b2ipc_op)op);
        rq.id = 300 + op;
        msgpack_sbuffer_clear(&sb);
        rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
        pl = one_frame(&sb, &len);
        rc = rc == 0 && pl ? b2ipc_decode_request(pl, len, NULL, &out, &err) : -1;
        ok(rc == 0 && (int)out.op == op && out.id == (uint64_t)(300 + op),
           "%s round-trips", b2ipc_op_name((b2ipc_op)op));
        b2ipc_request_free(&out);
    }

    /* encoder refuses invalid structs and leaves the buffer alone */
    msgpack_sbuffer_clear(&sb);
    msgpack_sbuffer_write(&sb, "abc", 3);
    b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
    rq.generate.image = png;
    rq.generate.image_len = sizeof png;
    rq.generate.params.num_beams = 0;
    rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
    ok(rc == B2IPC_ERANGE && err.code == rc && strcmp(err.field, "num_beams") == 0 &&
       sb.size == 3, "encode refuses num_beams 0, buffer unchanged (%s)", err.message);
    rq.generate.params.num_beams = 1;
    rq.generate.prompt = "bad \xff";
    rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
    ok(rc == B2IPC_EUTF8 && sb.size == 3, "encode refuses an invalid UTF-8 prompt");
    rq.generate.prompt = NULL;
    b2ipc_limits lim = { .max_image_bytes = 4 };
    rc = b2ipc_encode_request(&sb, &rq, &lim, &err);
    ok(rc == B2IPC_ETOO_LARGE && strcmp(err.field, "image") == 0,
       "encode applies the peer's image limit (%s)", err.message);
    rc = b2ipc_encode_request(&sb, &rq, NULL, &err);
    ok(rc == 0 && sb.size > 3 && be32(sb.data + 3) == sb.size - 7,
       "encode appends after existing bytes");

    msgpack_sbuffer_destroy(&sb);
    msgpack_sbuffer_destroy(&sb2);
}

/* tests/status_fixture.h's status, with an uptime past 32 bits (a uint64 on
 * the wire) */
static void fill_status(b2ipc_reply *rp)
{
    b2ipc_reply_init(rp, B2IPC_REPLY_STATUS);
    rp->id = 77;
    status_fixture(&rp->status);
    rp->status.uptime_ms = 123456789012ull;
}

static bool status_equal(const b2ipc_status *a, const b2ipc_status *b)
{
    return streq(a->version, b->version) && a->protocol == b->protocol &&
           a->uptime_ms == b->uptime_ms && streq(a->model.path, b->model.path) &&
           streq(a->model.name, b->model.name) &&
           streq(a->model.family, b->model.family) &&
           streq(a->model.dtype, b->model.dtype) && streq(a->model.precision, b->model.precision) &&
           streq(a->model.backend, b->model.backend) && streq(a->model.kernels, b->model.kernels) &&
           streq(a->model.weights, b->model.weights) &&
           memcmp(&a->config, &b->config, sizeof a->config) == 0 &&
           a->queue_depth == b->queue_depth && a->active == b->active &&
           a->max_queue == b->max_queue && a->max_batch == b->max_batch &&
           a->connections == b->connections && a->threads == b->threads &&
           a->requests_total == b->requests_total &&
           memcmp(&a->cache, &b->cache, sizeof a->cache) == 0;
}

/* encode rp, decode into *out (caller frees), also check re-encoding. */
static int reply_roundtrip(const b2ipc_reply *rp, b2ipc_reply *out, const char *what)
{
    b2ipc_error err;
    msgpack_sbuffer sb, sb2;
    msgpack_sbuffer_init(&sb);
    msgpack_sbuffer_init(&sb2);
    int rc = b2ipc_encode_reply(&sb, rp, &err);
    if (rc < 0) diag("%s: encode: %s", what, err.message);
    size_t len = 0;
    const char *pl = rc == 0 ? one_frame(&sb, &len) : NULL;
    if (rc == 0 && !pl) rc = -100;
    if (rc == 0) {
        rc = b2ipc_decode_reply(pl, len, out, &err);
        if (rc < 0) diag("%s: decode: %s", what, err.message);
    }
    if (rc == 0) {
        int rc2 = b2ipc_encode_reply(&sb2, out, &err);
        if (rc2 < 0 || sb2.size != sb.size || memcmp(sb.data, sb2.data, sb.size) != 0) {
            diag("%s: re-encoding differs", what);
            rc = -101;
        }
    }
    msgpack_sbuffer_destroy(&sb);
    msgpack_sbuffer_destroy(&sb2);
    return rc;
}

static void test_reply_roundtrips(void)
{
    b2ipc_reply rp, out;

    b2ipc_reply_init(&rp, B2IPC_REPLY_HELLO);
    rp.id = 1;
    rp.hello.v = 1;
    rp.hello.server = "blip2d 0.1.0";
    rp.hello.max_frame = 64u << 20;
    rp.hello.max_image_bytes = 32u << 20;
    rp.hello.max_prompt_bytes = 16384;
    int rc = reply_roundtrip(&rp, &out, "hello");
    ok(rc == 0 && out.type == B2IPC_REPLY_HELLO && out.id == 1 && out.hello.v == 1 &&
       streq(out.hello.server, "blip2d 0.1.0") && out.hello.max_frame == 64u << 20 &&
       out.hello.max_image_bytes == 32u << 20 && out.hello.max_prompt_bytes == 16384,
       "hello reply round-trips");
    b2ipc_reply_free(&out);

    static const char piece[] = "caf\xc3\xa9\0x"; /* U+0000 is allowed in replies */
    b2ipc_reply_init(&rp, B2IPC_REPLY_TOKEN);
    rp.id = 9;
    rp.token.seq = 15;
    rp.token.token = 4294967295u;
    rp.token.text = piece;
    rp.token.text_len = sizeof piece - 1;
    rc = reply_roundtrip(&rp, &out, "token");
    ok(rc == 0 && out.type == B2IPC_REPLY_TOKEN && out.id == 9 && out.token.seq == 15 &&
       out.token.token == 4294967295u && out.token.text_len == sizeof piece - 1 &&
       memcmp(out.token.text, piece, sizeof piece) == 0,
       "token event round-trips (multi-byte and U+0000 text, NUL-terminated copy)");
    b2ipc_reply_free(&out);

    rp.token.text = NULL;
    rp.token.text_len = 0;
    rc = reply_roundtrip(&rp, &out, "empty token");
    ok(rc == 0 && out.token.text && out.token.text_len == 0 && out.token.text[0] == 0,
       "token event with empty text");
    b2ipc_reply_free(&out);

    static const uint32_t ids0[] = { 2, 10, 4045, 2 }, ids1[] = { 2, 50000 };
    b2ipc_seq seqs[3] = {
        { "a cup", 5, ids0, 4, B2IPC_FINISH_EOS },
        { "a mug on a", 10, ids1, 2, B2IPC_FINISH_STOP },
        { "", 0, NULL, 0, B2IPC_FINISH_CANCELED },
    };
    b2ipc_reply_init(&rp, B2IPC_REPLY_DONE);
    rp.id = 10;
    rp.done.seqs = seqs;
    rp.done.n_seqs = 3;
    rp.done.has_seed = true;
    rp.done.seed = 42;
    rp.done.prompt_tokens = 11;
    rp.done.cached = true;
    rp.done.timings = (b2ipc_timings){ 0.125, 12.5, 9800, 410.25, 230, 10452.1, 13.04 };
    rc = reply_roundtrip(&rp, &out, "done");
    bool same = rc == 0 && out.type == B2IPC_REPLY_DONE && out.id == 10 &&
                out.done.n_seqs == 3 && out.done.has_seed && out.done.seed == 42 &&
                out.done.prompt_tokens == 11 && out.done.cached &&
                memcmp(&out.done.timings, &rp.done.timings, sizeof rp.done.timings) == 0;
    for (int i = 0; same && i < 3; i++) {
        const b2ipc_seq *a = &seqs[i], *b = &out.done.seqs[i];
        same = a->text_len == b->text_len && memcmp(a->text, b->text, a->text_len) == 0 &&
               b->text[b->text_len] == 0 && a->n_ids == b->n_ids && a->finish == b->finish &&
               (a->n_ids == 0 || memcmp(a->ids, b->ids, a->n_ids * sizeof *a->ids) == 0);
    }
    ok(same, "done round-trips (3 sequences, all finish kinds but length, seed, timings)");
    b2ipc_reply_free(&out);

    seqs[0].finish = B2IPC_FINISH_LENGTH;
    rp.done.n_seqs = 1;
    rp.done.has_seed = false;
    rp.done.cached = false;
    rc = reply_roundtrip(&rp, &out, "done/1");
    ok(rc == 0 && out.done.n_seqs == 1 && !out.done.has_seed &&
       out.done.seqs[0].finish == B2IPC_FINISH_LENGTH, "done without seed, finish length");
    b2ipc_reply_free(&out);

    b2ipc_reply_init(&rp, B2IPC_REPLY_ERROR);
    rp.id = 11;
    rp.error.code = B2IPC_EBUSY;
    rp.error.message = "queue full (64 requests), retry later";
    rp.error.field = "op";
    rc = reply_roundtrip(&rp, &out, "error");
    ok(rc == 0 && out.type == B2IPC_REPLY_ERROR && out.has_id && out.id == 11 &&
       out.error.code == B2IPC_EBUSY && streq(out.error.code_name, "busy") &&
       streq(out.error.message, rp.error.message) && streq(out.error.field, "op"),
       "error reply round-trips");
    b2ipc_reply_free(&out);

    rp.has_id = false;
    rp.error.code = B2IPC_EFRAME_TOO_LARGE;
    rp.error.field = NULL;
    rc = reply_roundtrip(&rp, &out, "error without id");
    ok(rc == 0 && !out.has_id && out.error.code == B2IPC_EFRAME_TOO_LARGE &&
       out.error.field == NULL, "error reply without id round-trips");
    b2ipc_reply_free(&out);

    fill_status(&rp);
    rc = reply_roundtrip(&rp, &out, "status");
    ok(rc == 0 && out.type == B2IPC_REPLY_STATUS && out.id == 77 &&
       status_equal(&rp.status, &out.status), "status reply round-trips (every field)");
    b2ipc_reply_free(&out);

    b2ipc_reply_init(&rp, B2IPC_REPLY_PONG);
    rp.id = 12;
    rc = reply_roundtrip(&rp, &out, "pong");
    ok(rc == 0 && out.type == B2IPC_REPLY_PONG && out.id == 12, "pong round-trips");
    b2ipc_reply_free(&out);

    b2ipc_reply_init(&rp, B2IPC_REPLY_CANCEL);
    rp.id = 13;
    rp.cancel.found = true;
    rc = reply_roundtrip(&rp, &out, "cancel");
    ok(rc == 0 && out.type == B2IPC_REPLY_CANCEL && out.cancel.found, "cancel reply round-trips");
    b2ipc_reply_free(&out);

    /* replies the encoder must refuse */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_error err;
    b2ipc_reply_init(&rp, B2IPC_REPLY_TOKEN);
    rp.id = 1;
    rp.token.text = "\xe2\x82"; /* half a euro sign */
    rp.token.text_len = 2;
    ok(b2ipc_encode_reply(&sb, &rp, &err) == B2IPC_EUTF8 && sb.size == 0,
       "encoder refuses a token piece that splits a character");
    b2ipc_reply_init(&rp, B2IPC_REPLY_DONE);
    rp.id = 1;
    ok(b2ipc_encode_reply(&sb, &rp, &err) == B2IPC_ERANGE, "encoder refuses done without sequences");
    b2ipc_reply_init(&rp, B2IPC_REPLY_PONG);
    rp.has_id = false;
    ok(b2ipc_encode_reply(&sb, &rp, &err) == B2IPC_EMISSING, "encoder refuses pong without id");
    msgpack_sbuffer_destroy(&sb);
}

static void test_encode_error(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_reply out;
    b2ipc_error err;
    char longmsg[3000];
    memset(longmsg, 'x', sizeof longmsg);
    memcpy(longmsg + 1023, "\xc3\xa9", 2);  /* é across the 1024-byte cut */
    longmsg[sizeof longmsg - 1] = 0;
    int rc = b2ipc_encode_error(&sb, true, 5, B2IPC_EBAD_IMAGE, "image", "bad \xff\xfe bytes");
    size_t len;
    const char *pl = one_frame(&sb, &len);
    rc = rc == 0 && pl ? b2ipc_decode_reply(pl, len, &out, &err) : -1;
    ok(rc == 0 && out.error.code == B2IPC_EBAD_IMAGE && streq(out.error.message, "bad ?? bytes") &&
       streq(out.error.field, "image") && out.id == 5,
       "encode_error replaces invalid UTF-8 with '?'");
    b2ipc_reply_free(&out);

    msgpack_sbuffer_clear(&sb);
    rc = b2ipc_encode_error(&sb, false, 0, B2IPC_EINTERNAL, "", longmsg);
    pl = one_frame(&sb, &len);
    rc = rc == 0 && pl ? b2ipc_decode_reply(pl, len, &out, &err) : -1;
    ok(rc == 0 && !out.has_id && strlen(out.error.message) == 1023 && !out.error.field,
       "encode_error cuts the message at 1024 bytes on a character boundary");
    b2ipc_reply_free(&out);

    ok(b2ipc_encode_error(&sb, true, 1, B2IPC_EINVAL, NULL, NULL) == B2IPC_EINVAL,
       "encode_error refuses a code without wire name");
    msgpack_sbuffer_destroy(&sb);
}

/* ---- 2. the example of docs/protocol.md ------------------------------------ */

static void test_spec_example(void)
{
    static const unsigned char want[] = {
        0x00, 0x00, 0x00, 0x0d, 0x82, 0xa2, 0x69, 0x64, 0x01,
        0xa2, 0x6f, 0x70, 0xa4, 0x70, 0x69, 0x6e, 0x67 };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_request rq;
    b2ipc_request_init(&rq, B2IPC_OP_PING);
    rq.id = 1;
    int rc = b2ipc_encode_request(&sb, &rq, NULL, NULL);
    ok(rc == 0 && sb.size == sizeof want && memcmp(sb.data, want, sizeof want) == 0,
       "ping {id 1} encodes to the 17 bytes shown in docs/protocol.md");
    msgpack_sbuffer_destroy(&sb);
}

/* ---- 3. frame reader -------------------------------------------------------- */

/* A stream of frames: encoded requests, a zero-length frame, a big image. */
static void build_stream(msgpack_sbuffer *sb, size_t *n_frames)
{
    static uint8_t big[200000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7);
    b2ipc_request rq;
    *n_frames = 0;
    for (int k = 0; k < 6; k++) {
        b2ipc_request_init(&rq, k == 3 ? B2IPC_OP_GENERATE : B2IPC_OP_PING);
        rq.id = (uint64_t)k;
        if (k == 3) {
            rq.generate.image = big;
            rq.generate.image_len = sizeof big;
        }
        b2ipc_encode_request(sb, &rq, NULL, NULL);
        (*n_frames)++;
        if (k == 1) { /* an empty frame: the reader delivers it, decoding refuses it */
            msgpack_sbuffer_write(sb, "\0\0\0\0", 4);
            (*n_frames)++;
        }
    }
}

/* Feeds sb in chunks from chunk(); checks every frame. */
static bool read_stream(const msgpack_sbuffer *sb, size_t n_frames,
                        size_t (*chunk)(void), size_t *max_mem, const char *what)
{
    b2ipc_reader r;
    b2ipc_reader_init(&r, 0);
    size_t off = 0, got = 0, ids_seen = 0, empty = 0;
    bool good = true;
    *max_mem = 0;
    while (off < sb->size && good) {
        size_t n = chunk();
        if (n > sb->size - off) n = sb->size - off;
        const char *p = sb->data + off;
        size_t left = n;
        for (;;) {
            size_t used;
            int rc = b2ipc_reader_feed(&r, p, left, &used);
            if (b2ipc_reader_memory(&r) > *max_mem) *max_mem = b2ipc_reader_memory(&r);
            p += used;
            left -= used;
            if (rc < 0) {
                diag("%s: feed failed: %s", what, b2ipc_strerror(rc));
                good = false;
                break;
            }
            if (rc == 0) break;
            const uint8_t *fr;
            size_t flen;
            if (b2ipc_reader_frame(&r, &fr, &flen) < 0) { good = false; break; }
            got++;
            if (flen == 0) {
                empty++;
            } else {
                b2ipc_request rq;
                if (b2ipc_decode_request(fr, flen, NULL, &rq, NULL) < 0 ||
                    rq.id != ids_seen) {
                    diag("%s: frame %zu does not decode to id %zu", what, got, ids_seen);
                    good = false;
                }
                ids_seen++;
                b2ipc_request_free(&rq);
            }
            if (left == 0) break;
        }
        off += n;
    }
    good = good && got == n_frames && empty == 1 && b2ipc_reader_pending(&r) == 0;
    b2ipc_reader_destroy(&r);
    return good;
}

static size_t chunk_one(void) { return 1; }
static size_t chunk_random(void)
{
    uint64_t x = rnd();
    switch (x % 4) {
    case 0: return 1 + (x >> 8) % 3;        /* tiny, splits length prefixes */
    case 1: return 1 + (x >> 8) % 64;
    case 2: return 1 + (x >> 8) % 5000;
    default: return 1 + (x >> 8) % 300000;  /* several frames at once */
    }
}
static size_t chunk_all(void) { return SIZE_MAX; }

static void test_reader(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    size_t n_frames, mem;
    build_stream(&sb, &n_frames);

    ok(read_stream(&sb, n_frames, chunk_one, &mem, "1 byte"),
       "reader: %zu frames fed one byte at a time", n_frames);
    size_t largest = 0;
    for (size_t off = 0; off < sb.size; off += 4 + be32(sb.data + off))
        if (be32(sb.data + off) > largest) largest = be32(sb.data + off);
    ok(mem == largest, "reader: memory never above the largest frame (%zu of %zu)", mem, largest);
    bool all = true;
    for (int i = 0; i < 20; i++)
        all = all && read_stream(&sb, n_frames, chunk_random, &mem, "random");
    ok(all, "reader: the same stream in random chunks, 20 times");
    ok(read_stream(&sb, n_frames, chunk_all, &mem, "all"), "reader: the whole stream in one call");

    /* take(): the caller owns the payload; reader releases big buffers */
    b2ipc_reader r;
    b2ipc_reader_init(&r, 0);
    size_t off = 0, used, taken = 0;
    while (off < sb.size) {
        int rc = b2ipc_reader_feed(&r, sb.data + off, sb.size - off, &used);
        off += used;
        if (rc != 1) break;
        uint8_t *fr;
        size_t flen;
        if (b2ipc_reader_take(&r, &fr, &flen) == 0) {
            taken++;
            free(fr);
        }
        if (b2ipc_reader_frame(&r, (const uint8_t **)&fr, &flen) != B2IPC_EINVAL) taken = 999;
    }
    ok(taken == n_frames && b2ipc_reader_memory(&r) <= 64u << 10,
       "reader: take() hands over every frame; idle memory stays small");
    b2ipc_reader_destroy(&r);

    /* after a big frame that was not taken, the buffer is released */
    b2ipc_reader_init(&r, 0);
    size_t big_end = 0;
    off = 0;
    for (size_t k = 0; k < 5; k++) {  /* frames 0,1,empty,2 then the big one */
        uint32_t l = be32(sb.data + off);
        off += 4 + l;
    }
    big_end = off;
    off = 0;
    while (off < big_end) {
        int rc = b2ipc_reader_feed(&r, sb.data + off, big_end - off, &used);
        off += used;
        if (rc < 0) break;
    }
    size_t mem_full = b2ipc_reader_memory(&r);
    b2ipc_reader_feed(&r, sb.data + off, 2, &used); /* starts the next frame */
    ok(mem_full >= 200000 && b2ipc_reader_memory(&r) == 0 && b2ipc_reader_pending(&r) == 2,
       "reader: a 200 kB buffer is freed once the next frame starts");
    b2ipc_reader_destroy(&r);
    msgpack_sbuffer_destroy(&sb);

    /* oversized declared lengths */
    static const char huge[] = { (char)0xff, (char)0xff, (char)0xff, (char)0xff, 'x', 'y' };
    b2ipc_reader_init(&r, 0);
    int rc = b2ipc_reader_feed(&r, huge, sizeof huge, &used);
    ok(rc == B2IPC_EFRAME_TOO_LARGE && used == 4 && b2ipc_reader_memory(&r) == 0,
       "reader: 4 GiB declared length refused after the prefix, nothing allocated");
    rc = b2ipc_reader_feed(&r, "\0\0\0\1x", 5, &used);
    ok(rc == B2IPC_EFRAME_TOO_LARGE && used == 0, "reader: the error is sticky");
    b2ipc_reader_destroy(&r);

    b2ipc_reader_init(&r, 100);
    char frame[105] = { 0, 0, 0, 100 };
    memset(frame + 4, 0xc0, 101);
    rc = b2ipc_reader_feed(&r, frame, 104, &used);
    ok(rc == 1 && used == 104, "reader: a frame of exactly max_frame is accepted");
    frame[3] = 101;
    rc = b2ipc_reader_feed(&r, frame, 1, &used);
    rc = rc == 0 ? b2ipc_reader_feed(&r, frame + 1, 3, &used) : rc;
    ok(rc == B2IPC_EFRAME_TOO_LARGE && b2ipc_reader_memory(&r) <= 4096,
       "reader: max_frame + 1 refused, prefix split across calls");
    b2ipc_reader_destroy(&r);

    /* a peer that announces 64 MiB and sends 10 bytes costs little */
    b2ipc_reader_init(&r, 0);
    char lie[14] = { 0x04, 0, 0, 0 };
    rc = b2ipc_reader_feed(&r, lie, sizeof lie, &used);
    ok(rc == 0 && b2ipc_reader_memory(&r) <= 4096 && b2ipc_reader_pending(&r) == 14,
       "reader: 64 MiB announced, 10 bytes sent: %zu bytes held",
       b2ipc_reader_memory(&r));
    b2ipc_reader_destroy(&r);
    b2ipc_reader_destroy(&r); /* twice is fine */
}

/* ---- 4. table-driven malformed messages -------------------------------------- */

typedef enum { V_UINT = 1, V_INT, V_F64, V_F32, V_BOOL, V_STR, V_BIN, V_NIL, V_EXT,
               V_STRS, V_RAW, V_TIMINGS } vkind;
typedef struct { vkind k; uint64_t u; int64_t i; double f; const char *s; size_t n; } val;

#define U(x) { .k = V_UINT, .u = (x) }
#define I(x) { .k = V_INT, .i = (x) }
#define F(x) { .k = V_F64, .f = (x) }
#define F32(x) { .k = V_F32, .f = (x) }
#define BOOL(x) { .k = V_BOOL, .u = (x) }
#define S(lit) { .k = V_STR, .s = (lit), .n = sizeof(lit) - 1 }
#define SFILL(len) { .k = V_STR, .s = NULL, .n = (len) }     /* len bytes of 'a' */
#define BIN(len) { .k = V_BIN, .n = (len) }
#define NIL { .k = V_NIL }
#define EXT { .k = V_EXT }
#define STRS(cnt, len) { .k = V_STRS, .u = (cnt), .n = (len) } /* cnt strings of len 'a' */
#define RAW(lit) { .k = V_RAW, .s = (lit), .n = sizeof(lit) - 1 }
#define TIMINGS { .k = V_TIMINGS }
#define TIMINGS_Q(q) { .k = V_TIMINGS, .f = (q) }                 /* queue_ms = q */

typedef struct { const char *key; val v; } kv;
enum { E_SET = 1, E_DEL, E_ADD };
typedef struct { int what; const char *key; val v; } edit;

enum { B_GENERATE, B_HELLO, B_CANCEL, B_PING, B_STATUS, B_TOKEN, B_DONE, B_ERROR };

typedef struct {
    const char *name;
    int base;
    edit e[3];
    int code;          /* expected return */
    const char *field; /* expected err.field (NULL: not checked) */
} tcase;

#define SET(k, v) { E_SET, k, v }
#define DEL(k) { E_DEL, k, { 0 } }
#define ADD(k, v) { E_ADD, k, v }

static const tcase cases[] = {
    /* valid variants first */
    { "base generate", B_GENERATE, { { 0 } }, 0, NULL },
    { "temperature as an integer", B_GENERATE, { SET("temperature", U(2)) }, 0, NULL },
    { "top_p as float32", B_GENERATE, { SET("top_p", F32(0.5)) }, 0, NULL },
    { "length_penalty negative integer", B_GENERATE, { SET("length_penalty", I(-2)) }, 0, NULL },
    { "ids as int8 encodings", B_GENERATE, { SET("id", RAW("\xd0\x05")) }, 0, NULL },
    { "prompt empty", B_GENERATE, { SET("prompt", S("")) }, 0, NULL },
    { "prompt at the limit", B_GENERATE, { SET("prompt", SFILL(16384)) }, 0, NULL },
    { "image_fd instead of image", B_GENERATE, { DEL("image"), ADD("image_fd", BOOL(1)) }, 0, NULL },
    { "image_fd false with image", B_GENERATE, { ADD("image_fd", BOOL(0)) }, 0, NULL },
    { "sampling, 4 sequences", B_GENERATE,
      { SET("do_sample", BOOL(1)), SET("num_return_sequences", U(4)) }, 0, NULL },
    { "beam 4, 4 sequences", B_GENERATE,
      { SET("num_beams", U(4)), SET("num_return_sequences", U(4)) }, 0, NULL },
    { "8 stop strings of 256 bytes", B_GENERATE, { SET("stop", STRS(8, 256)) }, 0, NULL },
    { "seed 2^64-1", B_GENERATE, { SET("seed", U(UINT64_MAX)) }, 0, NULL },
    { "hello v 1000 (newer client)", B_HELLO, { SET("v", U(1000)) }, 0, NULL },
    { "base cancel", B_CANCEL, { { 0 } }, 0, NULL },
    { "base ping", B_PING, { { 0 } }, 0, NULL },
    { "base status", B_STATUS, { { 0 } }, 0, NULL },

    /* ranges */
    { "num_beams 0", B_GENERATE, { SET("num_beams", U(0)) }, B2IPC_ERANGE, "num_beams" },
    { "num_beams 1000", B_GENERATE, { SET("num_beams", U(1000)) }, B2IPC_ERANGE, "num_beams" },
    { "num_beams -1", B_GENERATE, { SET("num_beams", I(-1)) }, B2IPC_ERANGE, "num_beams" },
    { "num_beams 2^40", B_GENERATE, { SET("num_beams", U(1ull << 40)) }, B2IPC_ERANGE, "num_beams" },
    { "temperature negative", B_GENERATE, { SET("temperature", F(-0.5)) }, B2IPC_ERANGE, "temperature" },
    { "temperature 0", B_GENERATE, { SET("temperature", F(0)) }, B2IPC_ERANGE, "temperature" },
    { "temperature NaN", B_GENERATE, { SET("temperature", F(NAN)) }, B2IPC_ERANGE, "temperature" },
    { "temperature inf", B_GENERATE, { SET("temperature", F(INFINITY)) }, B2IPC_ERANGE, "temperature" },
    { "top_p 0", B_GENERATE, { SET("top_p", F(0)) }, B2IPC_ERANGE, "top_p" },
    { "top_p 1.5", B_GENERATE, { SET("top_p", F(1.5)) }, B2IPC_ERANGE, "top_p" },
    { "top_k 2000000", B_GENERATE, { SET("top_k", U(2000000)) }, B2IPC_ERANGE, "top_k" },
    { "max_new_tokens 0", B_GENERATE, { SET("max_new_tokens", U(0)) }, B2IPC_ERANGE, "max_new_tokens" },
    { "max_new_tokens 2049", B_GENERATE, { SET("max_new_tokens", U(2049)) }, B2IPC_ERANGE, "max_new_tokens" },
    { "min_new_tokens above max", B_GENERATE, { SET("min_new_tokens", U(30)) }, B2IPC_ERANGE, "min_new_tokens" },
    { "length_penalty 11", B_GENERATE, { SET("length_penalty", F(11)) }, B2IPC_ERANGE, "length_penalty" },
    { "repetition_penalty 0", B_GENERATE, { SET("repetition_penalty", F(0)) }, B2IPC_ERANGE, "repetition_penalty" },
    { "num_return_sequences 17", B_GENERATE,
      { SET("do_sample", BOOL(1)), SET("num_return_sequences", U(17)) }, B2IPC_ERANGE, "num_return_sequences" },
    { "greedy with 2 sequences", B_GENERATE, { SET("num_return_sequences", U(2)) },
      B2IPC_ERANGE, "num_return_sequences" },
    { "beam 2 with 3 sequences", B_GENERATE,
      { SET("num_beams", U(2)), SET("num_return_sequences", U(3)) }, B2IPC_ERANGE, "num_return_sequences" },
    { "image and image_fd", B_GENERATE, { ADD("image_fd", BOOL(1)) }, B2IPC_ERANGE, "image_fd" },
    { "image empty", B_GENERATE, { SET("image", BIN(0)) }, B2IPC_ERANGE, "image" },
    { "hello v 0", B_HELLO, { SET("v", U(0)) }, B2IPC_ERANGE, "v" },
    { "hello v 2^32", B_HELLO, { SET("v", U(1ull << 32)) }, B2IPC_ERANGE, "v" },
    { "id negative", B_PING, { SET("id", I(-3)) }, B2IPC_ERANGE, "id" },
    { "cancel target negative", B_CANCEL, { SET("target", I(-1)) }, B2IPC_ERANGE, "target" },

    /* types */
    { "max_new_tokens as string", B_GENERATE, { SET("max_new_tokens", S("20")) }, B2IPC_ETYPE, "max_new_tokens" },
    { "max_new_tokens as 20.0", B_GENERATE, { SET("max_new_tokens", F(20.0)) }, B2IPC_ETYPE, "max_new_tokens" },
    { "do_sample as 1", B_GENERATE, { SET("do_sample", U(1)) }, B2IPC_ETYPE, "do_sample" },
    { "stream as string", B_GENERATE, { SET("stream", S("yes")) }, B2IPC_ETYPE, "stream" },
    { "seed nil", B_GENERATE, { SET("seed", NIL) }, B2IPC_ETYPE, "seed" },
    { "temperature as string", B_GENERATE, { SET("temperature", S("0.7")) }, B2IPC_ETYPE, "temperature" },
    { "prompt as bin", B_GENERATE, { SET("prompt", BIN(4)) }, B2IPC_ETYPE, "prompt" },
    { "image as string", B_GENERATE, { SET("image", S("PNG...")) }, B2IPC_ETYPE, "image" },
    { "image as ext", B_GENERATE, { SET("image", EXT) }, B2IPC_ETYPE, "image" },
    { "stop as string", B_GENERATE, { SET("stop", S("\n")) }, B2IPC_ETYPE, "stop" },
    { "stop element integer", B_GENERATE, { SET("stop", RAW("\x92\xa1x\x05")) }, B2IPC_ETYPE, "stop[1]" },
    { "id as string", B_PING, { SET("id", S("1")) }, B2IPC_ETYPE, "id" },
    { "id as float", B_PING, { SET("id", F(1.0)) }, B2IPC_ETYPE, "id" },
    { "op as integer", B_PING, { SET("op", U(5)) }, B2IPC_ETYPE, "op" },
    { "map key not a string", B_PING, { ADD(NULL, U(1)) }, B2IPC_ETYPE, "" },

    /* text */
    { "prompt invalid UTF-8", B_GENERATE, { SET("prompt", S("a photo \xff\xfe")) }, B2IPC_EUTF8, "prompt" },
    { "prompt overlong '/'", B_GENERATE, { SET("prompt", S("\xc0\xaf")) }, B2IPC_EUTF8, "prompt" },
    { "prompt UTF-16 surrogate", B_GENERATE, { SET("prompt", S("\xed\xa0\x80")) }, B2IPC_EUTF8, "prompt" },
    { "prompt above U+10FFFF", B_GENERATE, { SET("prompt", S("\xf4\x90\x80\x80")) }, B2IPC_EUTF8, "prompt" },
    { "prompt cut inside a character", B_GENERATE, { SET("prompt", S("price \xe2\x82")) }, B2IPC_EUTF8, "prompt" },
    { "prompt with U+0000", B_GENERATE, { SET("prompt", S("a\0b")) }, B2IPC_EUTF8, "prompt" },
    { "stop with invalid UTF-8", B_GENERATE, { SET("stop", RAW("\x91\xa2\xc3\x28")) }, B2IPC_EUTF8, "stop[0]" },
    { "hello client invalid UTF-8", B_HELLO, { ADD("client", S("\x80")) }, B2IPC_EUTF8, "client" },

    /* sizes */
    { "prompt 16385 bytes", B_GENERATE, { SET("prompt", SFILL(16385)) }, B2IPC_ETOO_LARGE, "prompt" },
    { "9 stop strings", B_GENERATE, { SET("stop", STRS(9, 1)) }, B2IPC_ETOO_LARGE, "stop" },
    { "stop string 257 bytes", B_GENERATE, { SET("stop", STRS(1, 257)) }, B2IPC_ETOO_LARGE, "stop[0]" },
    { "stop string empty", B_GENERATE, { SET("stop", STRS(1, 0)) }, B2IPC_ERANGE, "stop[0]" },
    { "hello client 257 bytes", B_HELLO, { ADD("client", SFILL(257)) }, B2IPC_ETOO_LARGE, "client" },

    /* structure of the map */
    { "unknown op", B_PING, { SET("op", S("explode")) }, B2IPC_EUNKNOWN_OP, "op" },
    { "op reply type name", B_PING, { SET("op", S("done")) }, B2IPC_EUNKNOWN_OP, "op" },
    { "missing op", B_PING, { DEL("op") }, B2IPC_EMISSING, "op" },
    { "missing id", B_PING, { DEL("id") }, B2IPC_EMISSING, "id" },
    { "missing id (generate)", B_GENERATE, { DEL("id") }, B2IPC_EMISSING, "id" },
    { "missing image", B_GENERATE, { DEL("image") }, B2IPC_EMISSING, "image" },
    { "missing cancel target", B_CANCEL, { DEL("target") }, B2IPC_EMISSING, "target" },
    { "missing hello v", B_HELLO, { DEL("v") }, B2IPC_EMISSING, "v" },
    { "unknown field (misspelt)", B_GENERATE, { ADD("temprature", F(0.5)) }, B2IPC_EUNKNOWN_FIELD, "temprature" },
    { "unknown field on ping", B_PING, { ADD("payload", S("x")) }, B2IPC_EUNKNOWN_FIELD, "payload" },
    { "generate field on cancel", B_CANCEL, { ADD("num_beams", U(2)) }, B2IPC_EUNKNOWN_FIELD, "num_beams" },
    { "unknown field with odd bytes", B_PING, { ADD("\x01\xff", U(1)) }, B2IPC_EUNKNOWN_FIELD, "\\x01\\xff" },
    { "duplicate key", B_GENERATE, { ADD("max_new_tokens", U(30)) }, B2IPC_EDUP_KEY, "max_new_tokens" },
    { "duplicate id", B_PING, { ADD("id", U(2)) }, B2IPC_EDUP_KEY, "id" },
    { "v is no request field", B_PING, { ADD("v", U(1)) }, B2IPC_EUNKNOWN_FIELD, "v" },

    /* replies (client side): unknown fields ignored, the rest strict */
    { "token base", B_TOKEN, { { 0 } }, 0, NULL },
    { "token with an unknown field", B_TOKEN, { ADD("logprob", F(-0.1)) }, 0, NULL },
    { "token text invalid UTF-8", B_TOKEN, { SET("text", S("\xe2\x82")) }, B2IPC_EUTF8, "text" },
    { "token seq 16", B_TOKEN, { SET("seq", U(16)) }, B2IPC_ERANGE, "seq" },
    { "token without id", B_TOKEN, { DEL("id") }, B2IPC_EMISSING, "id" },
    { "token without text", B_TOKEN, { DEL("text") }, B2IPC_EMISSING, "text" },
    { "token id 2^32", B_TOKEN, { SET("token", U(1ull << 32)) }, B2IPC_ERANGE, "token" },
    { "unknown reply type", B_TOKEN, { SET("type", S("tokens")) }, B2IPC_EUNKNOWN_OP, "type" },
    { "done base", B_DONE, { { 0 } }, 0, NULL },
    { "done arrays of different lengths", B_DONE, { SET("ids", RAW("\x92\x91\x02\x91\x02")) }, B2IPC_ERANGE, "ids" },
    { "done unknown finish", B_DONE, { SET("finish", RAW("\x91\xa4" "done")) }, B2IPC_ERANGE, "finish[0]" },
    { "done negative token id", B_DONE, { SET("ids", RAW("\x91\x91\xff")) }, B2IPC_ERANGE, "ids[0]" },
    { "done no sequences", B_DONE,
      { SET("texts", RAW("\x90")), SET("ids", RAW("\x90")), SET("finish", RAW("\x90")) }, B2IPC_ERANGE, "texts" },
    { "done timings negative", B_DONE, { SET("timings", TIMINGS_Q(-1)) }, B2IPC_ERANGE, "timings.queue_ms" },
    { "done timings missing field", B_DONE, { SET("timings", RAW("\x80")) }, B2IPC_EMISSING, "timings.queue_ms" },
    { "done without cached", B_DONE, { DEL("cached") }, B2IPC_EMISSING, "cached" },
    { "error without id", B_ERROR, { DEL("id") }, 0, NULL },
    { "error with an unknown code", B_ERROR, { SET("code", S("overheated")) }, 0, NULL },
    { "error code not a string", B_ERROR, { SET("code", I(-20)) }, B2IPC_ETYPE, "code" },
    { "error without message", B_ERROR, { DEL("message") }, B2IPC_EMISSING, "message" },
};

static void pack_val(msgpack_packer *pk, msgpack_sbuffer *sb, const val *v)
{
    switch (v->k) {
    case V_UINT: msgpack_pack_uint64(pk, v->u); break;
    case V_INT: msgpack_pack_int64(pk, v->i); break;
    case V_F64: msgpack_pack_double(pk, v->f); break;
    case V_F32: msgpack_pack_float(pk, (float)v->f); break;
    case V_BOOL: v->u ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
    case V_NIL: msgpack_pack_nil(pk); break;
    case V_EXT: msgpack_pack_ext(pk, 1, 1); msgpack_pack_ext_body(pk, "x", 1); break;
    case V_STR:
        msgpack_pack_str(pk, v->n);
        if (v->s) {
            msgpack_pack_str_body(pk, v->s, v->n);
        } else {
            for (size_t i = 0; i < v->n; i++) msgpack_pack_str_body(pk, "a", 1);
        }
        break;
    case V_BIN:
        msgpack_pack_bin(pk, v->n);
        for (size_t i = 0; i < v->n; i++) msgpack_pack_bin_body(pk, "\x89", 1);
        break;
    case V_STRS:
        msgpack_pack_array(pk, (size_t)v->u);
        for (uint64_t k = 0; k < v->u; k++) {
            msgpack_pack_str(pk, v->n);
            for (size_t i = 0; i < v->n; i++) msgpack_pack_str_body(pk, "a", 1);
        }
        break;
    case V_RAW: msgpack_sbuffer_write(sb, v->s, v->n); break;
    case V_TIMINGS: {
        static const char *const names[] = { "queue_ms", "preprocess_ms", "vision_ms",
            "prefill_ms", "decode_ms", "total_ms", "tokens_per_s" };
        msgpack_pack_map(pk, 7);
        for (int i = 0; i < 7; i++) {
            msgpack_pack_str(pk, strlen(names[i]));
            msgpack_pack_str_body(pk, names[i], strlen(names[i]));
            msgpack_pack_double(pk, i == 0 ? v->f : 1.5 * i);
        }
        break;
    }
    }
}

#define MAXKV 24
static size_t base_map(int base, kv *m)
{
    size_t n = 0;
    const char *disc = base >= B_TOKEN ? "type" : "op";
    m[n++] = (kv){ "id", U(42) };
    switch (base) {
    case B_GENERATE:
        m[n++] = (kv){ disc, S("generate") };
        m[n++] = (kv){ "image", BIN(16) };
        m[n++] = (kv){ "prompt", S("Question: what is it? Answer:") };
        m[n++] = (kv){ "max_new_tokens", U(20) };
        break;
    case B_HELLO:
        m[n++] = (kv){ disc, S("hello") };
        m[n++] = (kv){ "v", U(1) };
        break;
    case B_CANCEL:
        m[n++] = (kv){ disc, S("cancel") };
        m[n++] = (kv){ "target", U(7) };
        break;
    case B_PING: m[n++] = (kv){ disc, S("ping") }; break;
    case B_STATUS: m[n++] = (kv){ disc, S("status") }; break;
    case B_TOKEN:
        m[n++] = (kv){ disc, S("token") };
        m[n++] = (kv){ "seq", U(0) };
        m[n++] = (kv){ "token", U(4045) };
        m[n++] = (kv){ "text", S(" cup") };
        break;
    case B_DONE:
        m[n++] = (kv){ disc, S("done") };
        m[n++] = (kv){ "texts", RAW("\x91\xa5" "a cup") };
        m[n++] = (kv){ "ids", RAW("\x91\x93\x02\x0a\x04") };
        m[n++] = (kv){ "finish", RAW("\x91\xa3" "eos") };
        m[n++] = (kv){ "prompt_tokens", U(1) };
        m[n++] = (kv){ "cached", BOOL(0) };
        m[n++] = (kv){ "timings", TIMINGS };
        break;
    case B_ERROR:
        m[n++] = (kv){ disc, S("error") };
        m[n++] = (kv){ "code", S("busy") };
        m[n++] = (kv){ "message", S("queue full") };
        break;
    }
    return n;
}

static void build_case(const tcase *c, msgpack_sbuffer *sb)
{
    kv m[MAXKV];
    size_t n = base_map(c->base, m);
    for (int k = 0; k < 3 && c->e[k].what; k++) {
        const edit *e = &c->e[k];
        size_t i;
        for (i = 0; i < n; i++)
            if (e->key && strcmp(m[i].key, e->key) == 0) break;
        if (e->what == E_SET && i < n) {
            m[i].v = e->v;
        } else if (e->what == E_DEL && i < n) {
            memmove(&m[i], &m[i + 1], (n - i - 1) * sizeof *m);
            n--;
        } else if (e->what == E_ADD || e->what == E_SET) {
            m[n++] = (kv){ e->key, e->v };
        }
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < n; i++) {
        if (m[i].key) {
            msgpack_pack_str(&pk, strlen(m[i].key));
            msgpack_pack_str_body(&pk, m[i].key, strlen(m[i].key));
        } else {
            msgpack_pack_uint64(&pk, 99); /* a key that is not a string */
        }
        pack_val(&pk, sb, &m[i].v);
    }
}

static void test_table(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const tcase *c = &cases[i];
        b2ipc_error err;
        memset(&err, 0, sizeof err);
        msgpack_sbuffer_clear(&sb);
        build_case(c, &sb);
        int rc;
        bool extra = true;
        if (c->base >= B_TOKEN) {
            b2ipc_reply rp;
            rc = b2ipc_decode_reply(sb.data, sb.size, &rp, &err);
            if (rc == 0 && strstr(c->name, "unknown code"))
                extra = rp.error.code == B2IPC_EUNKNOWN_CODE &&
                        streq(rp.error.code_name, "overheated");
            b2ipc_reply_free(&rp);
        } else {
            b2ipc_request rq;
            rc = b2ipc_decode_request(sb.data, sb.size, NULL, &rq, &err);
            /* the id is known to an error reply unless it is missing/bad */
            bool id_ok = !(c->field && (strcmp(c->field, "id") == 0));
            if (rc < 0 && id_ok) extra = rq.has_id && rq.id == 42;
            if (rc < 0 && rq.arena_) extra = false;
            if (rc == 0 && strstr(c->name, "image_fd instead")) extra = rq.takes_fd;
            b2ipc_request_free(&rq);
        }
        bool field_ok = !c->field || (rc < 0 && strcmp(err.field, c->field) == 0);
        ok(rc == c->code && (rc == 0 || err.code == rc) && field_ok && extra,
           "table: %s -> %s%s%s", c->name,
           c->code ? b2ipc_code_name(c->code) : "ok",
           rc != c->code || !field_ok ? " // got: " : "",
           rc != c->code || !field_ok ? err.message : "");
        if (rc < 0) diag("  %s: %s", b2ipc_code_name(rc) ? b2ipc_code_name(rc) : "?", err.message);
    }

    /* limits from the caller: a daemon with a 1 KiB prompt limit */
    msgpack_sbuffer_clear(&sb);
    tcase c = { "prompt 2000 bytes", B_GENERATE, { SET("prompt", SFILL(2000)) }, 0, NULL };
    build_case(&c, &sb);
    b2ipc_limits lim = { .max_prompt_bytes = 1024 };
    b2ipc_request rq;
    b2ipc_error err;
    int rc = b2ipc_decode_request(sb.data, sb.size, &lim, &rq, &err);
    ok(rc == B2IPC_ETOO_LARGE && strcmp(err.field, "prompt") == 0,
       "decode applies the daemon's prompt limit");
    lim.max_prompt_bytes = 0;
    lim.max_image_bytes = 8;
    rc = b2ipc_decode_request(sb.data, sb.size, &lim, &rq, &err);
    ok(rc == B2IPC_ETOO_LARGE && strcmp(err.field, "image") == 0,
       "decode applies the daemon's image limit (16 > 8)");

    /* a refused request with image_fd: true still takes the descriptor */
    msgpack_sbuffer_clear(&sb);
    tcase c2 = { "", B_GENERATE, { ADD("image_fd", BOOL(1)), ADD("bogus", U(1)) }, 0, NULL };
    build_case(&c2, &sb);
    rc = b2ipc_decode_request(sb.data, sb.size, NULL, &rq, &err);
    ok(rc == B2IPC_EUNKNOWN_FIELD && rq.takes_fd && rq.has_id && rq.op == B2IPC_OP_GENERATE,
       "refused request with image_fd: true reports takes_fd, id and op");
    msgpack_sbuffer_destroy(&sb);
}

/* ---- 5. raw structure ----------------------------------------------------- */

typedef struct { const char *name; const char *bytes; size_t n; int code; } rawcase;
#define RAWC(nm, lit, code) { nm, lit, sizeof(lit) - 1, code }

static void test_raw(void)
{
    static const rawcase raw[] = {
        { "empty payload", "", 0, B2IPC_EBAD_MSGPACK },
        RAWC("0xc1 (never used)", "\xc1", B2IPC_EBAD_MSGPACK),
        RAWC("truncated ping", "\x82\xa2id\x01\xa2op\xa4pin", B2IPC_EBAD_MSGPACK),
        RAWC("truncated map (missing values)", "\x82\xa2id\x01", B2IPC_EBAD_MSGPACK),
        RAWC("truncated str length", "\x81\xd9", B2IPC_EBAD_MSGPACK),
        RAWC("truncated float", "\xcb\x00\x01", B2IPC_EBAD_MSGPACK),
        RAWC("array32 declaring 4 billion elements", "\xdd\xff\xff\xff\xff\x00\x00", B2IPC_EBAD_MSGPACK),
        RAWC("map32 declaring 2 billion entries", "\xdf\x7f\xff\xff\xff\x00", B2IPC_EBAD_MSGPACK),
        RAWC("bin32 declaring 4 GiB", "\x81\xa1x\xc6\xff\xff\xff\xff", B2IPC_EBAD_MSGPACK),
        RAWC("trailing garbage", "\x82\xa2id\x01\xa2op\xa4ping" "GARBAGE", B2IPC_ETRAILING),
        RAWC("two maps", "\x82\xa2id\x01\xa2op\xa4ping\x80", B2IPC_ETRAILING),
        RAWC("array at top level", "\x92\x01\x02", B2IPC_ENOT_MAP),
        RAWC("integer at top level", "\x05", B2IPC_ENOT_MAP),
        RAWC("string at top level", "\xa4ping", B2IPC_ENOT_MAP),
        RAWC("nil at top level", "\xc0", B2IPC_ENOT_MAP),
        RAWC("nested 9 deep", "\x81\xa1x\x91\x91\x91\x91\x91\x91\x91\x91\x01", B2IPC_ETOO_LARGE),
        RAWC("bin key", "\x82\xc4\x02id\x01\xa2op\xa4ping", B2IPC_ETYPE),
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        b2ipc_request rq;
        b2ipc_error err;
        int rc = b2ipc_decode_request(raw[i].bytes, raw[i].n, NULL, &rq, &err);
        ok(rc == raw[i].code && err.code == rc && !rq.has_id,
           "raw: %s -> %s (%s)", raw[i].name, b2ipc_code_name(raw[i].code), err.message);
        b2ipc_request_free(&rq);
    }

    /* nesting 8 deep is structurally fine (then refused as a type) */
    b2ipc_request rq;
    b2ipc_error err;
    static const char deep8[] = "\x82\xa2id\x01\xa2op\x91\x91\x91\x91\x91\x91\x91\x01";
    int rc = b2ipc_decode_request(deep8, sizeof deep8 - 1, NULL, &rq, &err);
    ok(rc == B2IPC_ETYPE && strcmp(err.field, "op") == 0 && rq.has_id,
       "raw: 8 levels pass the structure check (%s)", err.message);

    /* too many objects, too many keys */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str(&pk, 1);
    msgpack_pack_str_body(&pk, "x", 1);
    msgpack_pack_array(&pk, B2IPC_MAX_OBJECTS);
    for (unsigned i = 0; i < B2IPC_MAX_OBJECTS; i++) msgpack_pack_nil(&pk);
    rc = b2ipc_decode_request(sb.data, sb.size, NULL, &rq, &err);
    ok(rc == B2IPC_ETOO_LARGE, "raw: more than %u objects refused (%s)", B2IPC_MAX_OBJECTS, err.message);

    msgpack_sbuffer_clear(&sb);
    msgpack_pack_map(&pk, 65);
    for (int i = 0; i < 65; i++) {
        char k[8];
        int kl = snprintf(k, sizeof k, "k%d", i);
        msgpack_pack_str(&pk, (size_t)kl);
        msgpack_pack_str_body(&pk, k, (size_t)kl);
        msgpack_pack_nil(&pk);
    }
    rc = b2ipc_decode_request(sb.data, sb.size, NULL, &rq, &err);
    ok(rc == B2IPC_ETOO_LARGE, "raw: a request map of 65 entries refused (%s)", err.message);
    msgpack_sbuffer_destroy(&sb);

    /* every truncation of a valid full request is refused cleanly */
    static const uint8_t img[3] = { 1, 2, 3 };
    static const char *const stop[] = { "x" };
    b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
    rq.id = 5;
    rq.generate.image = img;
    rq.generate.image_len = 3;
    rq.generate.prompt = "hi";
    rq.generate.params.has_seed = true;
    rq.generate.params.stop = stop;
    rq.generate.params.n_stop = 1;
    msgpack_sbuffer_init(&sb);
    b2ipc_encode_request(&sb, &rq, NULL, NULL);
    bool all = true;
    for (size_t n = 0; n < sb.size - 4; n++) {
        b2ipc_request out;
        rc = b2ipc_decode_request(sb.data + 4, n, NULL, &out, NULL);
        if (rc != B2IPC_EBAD_MSGPACK) {
            diag("truncated at %zu: %d", n, rc);
            all = false;
        }
        b2ipc_request_free(&out);
    }
    ok(all, "raw: all %zu truncations of a generate request are bad_msgpack", sb.size - 4);
    /* and random corruption never crashes or leaks */
    for (int t = 0; t < 2000; t++) {
        char buf[512];
        size_t n = sb.size - 4 < sizeof buf ? sb.size - 4 : sizeof buf;
        memcpy(buf, sb.data + 4, n);
        for (int k = 0; k < 3; k++) buf[rnd() % n] = (char)rnd();
        b2ipc_request out;
        b2ipc_reply rout;
        if (b2ipc_decode_request(buf, n, NULL, &out, NULL) == 0) b2ipc_request_free(&out);
        if (b2ipc_decode_reply(buf, n, &rout, NULL) == 0) b2ipc_reply_free(&rout);
    }
    ok(1, "raw: 2000 randomly corrupted requests decoded without crashing");
    msgpack_sbuffer_destroy(&sb);
}

/* ---- 6. error codes --------------------------------------------------------- */

static void test_codes(void)
{
    bool good = true;
    int wire = 0;
    for (int c = 0; c >= -30; c--) {
        const char *n = b2ipc_code_name(c);
        if (!b2ipc_strerror(c)) good = false;
        if (n) {
            wire++;
            if (b2ipc_code_from_name(n) != c) good = false;
        }
    }
    ok(good && wire == 22, "codes: %d wire names, each maps back to its code", wire);
    ok(b2ipc_code_from_name("nope") == B2IPC_EUNKNOWN_CODE &&
       b2ipc_code_name(B2IPC_EINVAL) == NULL && b2ipc_code_name(1) == NULL,
       "codes: unknown names and non-wire codes");

    /* docs/protocol.md section 9 lists exactly the wire names */
    const char *srcdir = getenv("TESTS_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/../docs/protocol.md", srcdir ? srcdir : "tests");
    FILE *f = fopen(path, "r");
    if (!f) {
        ok(1, "# SKIP codes: %s not found", path);
        return;
    }
    char line[1024];
    bool in9 = false;
    int listed = 0, unknown = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "## ", 3) == 0) in9 = strncmp(line, "## 9.", 5) == 0;
        if (!in9 || strncmp(line, "| `", 3) != 0) continue;
        char *e = strchr(line + 3, '`');
        if (!e) continue;
        *e = 0;
        listed++;
        if (b2ipc_code_from_name(line + 3) == B2IPC_EUNKNOWN_CODE) {
            diag("docs list unknown code %s", line + 3);
            unknown++;
        }
    }
    fclose(f);
    ok(listed == wire && unknown == 0,
       "codes: docs/protocol.md section 9 lists the same %d codes", listed);
}

int main(void)
{
    test_request_roundtrips();
    test_reply_roundtrips();
    test_encode_error();
    test_spec_example();
    test_reader();
    test_table();
    test_raw();
    test_codes();
    return tap_done();
}
