/*
 * gen_ipc_corpus.c - writes the seed corpus of fuzz_ipc: one file per
 * protocol message (4-byte length + MessagePack map) made with libipc's own
 * encoders, and one stream of several frames.  Not part of the build:
 *   cc -Ilibipc $(pkg-config --cflags msgpack) tests/fuzz/gen_ipc_corpus.c \
 *      libipc/*.c $(pkg-config --libs msgpack) -lm -o /tmp/gen && /tmp/gen DIR
 */
#include "blip2ipc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static msgpack_sbuffer all;

static void put(const char *dir, const char *name, msgpack_sbuffer *sb)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(sb->data, 1, sb->size, f) != sb->size || fclose(f)) { perror(p); exit(1); }
    msgpack_sbuffer_write(&all, sb->data, sb->size);
    msgpack_sbuffer_clear(sb);
}

static void rq(const char *dir, const char *name, b2ipc_request *r)
{
    msgpack_sbuffer sb;
    b2ipc_error err;
    msgpack_sbuffer_init(&sb);
    if (b2ipc_encode_request(&sb, r, NULL, &err)) { fprintf(stderr, "%s: %s\n", name, err.message); exit(1); }
    put(dir, name, &sb);
    msgpack_sbuffer_destroy(&sb);
}

static void rp(const char *dir, const char *name, b2ipc_reply *r)
{
    msgpack_sbuffer sb;
    b2ipc_error err;
    msgpack_sbuffer_init(&sb);
    if (b2ipc_encode_reply(&sb, r, &err)) { fprintf(stderr, "%s: %s\n", name, err.message); exit(1); }
    put(dir, name, &sb);
    msgpack_sbuffer_destroy(&sb);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    msgpack_sbuffer_init(&all);
    b2ipc_request r;
    b2ipc_request_init(&r, B2IPC_OP_HELLO);
    r.id = 1; r.hello.v = 1; r.hello.client = "fuzz-seed";
    rq(dir, "req_hello", &r);
    static const uint8_t png[] = { 0x89, 'P', 'N', 'G', 13, 10, 26, 10, 0, 0, 0, 13, 'I', 'H', 'D', 'R' };
    b2ipc_request_init(&r, B2IPC_OP_GENERATE);
    r.id = 2; r.generate.image = png; r.generate.image_len = sizeof png;
    r.generate.prompt = "Question: what is in the picture? Answer:";
    r.generate.stream = true;
    rq(dir, "req_generate", &r);
    static const char *stop[] = { "\n", "Answer" };
    b2ipc_request_init(&r, B2IPC_OP_GENERATE);
    r.id = 3; r.generate.image_fd = true;
    r.generate.params.max_new_tokens = 30; r.generate.params.min_new_tokens = 2;
    r.generate.params.num_beams = 4; r.generate.params.num_return_sequences = 2;
    r.generate.params.length_penalty = 0.5; r.generate.params.repetition_penalty = 1.2;
    r.generate.params.stop = stop; r.generate.params.n_stop = 2;
    rq(dir, "req_generate_beams", &r);
    b2ipc_request_init(&r, B2IPC_OP_GENERATE);
    r.id = 4; r.generate.image = png; r.generate.image_len = sizeof png; r.generate.prompt = "";
    r.generate.params.do_sample = true; r.generate.params.temperature = 0.7;
    r.generate.params.top_k = 40; r.generate.params.top_p = 0.9;
    r.generate.params.has_seed = true; r.generate.params.seed = 42;
    rq(dir, "req_generate_sample", &r);
    b2ipc_request_init(&r, B2IPC_OP_CANCEL);
    r.id = 5; r.cancel.target = 2;
    rq(dir, "req_cancel", &r);
    b2ipc_request_init(&r, B2IPC_OP_STATUS);
    r.id = 6;
    rq(dir, "req_status", &r);
    b2ipc_request_init(&r, B2IPC_OP_PING);
    r.id = 7;
    rq(dir, "req_ping", &r);

    b2ipc_reply p;
    b2ipc_reply_init(&p, B2IPC_REPLY_HELLO);
    p.id = 1; p.hello.v = 1; p.hello.server = "blip2d 0.1";
    p.hello.max_frame = 1u << 26; p.hello.max_image_bytes = 1u << 26; p.hello.max_prompt_bytes = 16384;
    rp(dir, "rep_hello", &p);
    b2ipc_reply_init(&p, B2IPC_REPLY_TOKEN);
    p.id = 2; p.token.seq = 0; p.token.token = 1437; p.token.text = " a"; p.token.text_len = 2;
    rp(dir, "rep_token", &p);
    static const uint32_t ids[] = { 2, 10, 1437, 50118 };
    b2ipc_seq seqs[2] = {
        { .text = "a cat", .text_len = 5, .ids = ids, .n_ids = 4, .finish = B2IPC_FINISH_EOS },
        { .text = "a dog\0x", .text_len = 7, .ids = ids, .n_ids = 2, .finish = B2IPC_FINISH_LENGTH },
    };
    b2ipc_reply_init(&p, B2IPC_REPLY_DONE);
    p.id = 2; p.done.seqs = seqs; p.done.n_seqs = 2; p.done.has_seed = true; p.done.seed = 9;
    p.done.prompt_tokens = 12; p.done.cached = true;
    p.done.timings = (b2ipc_timings){ 1, 2, 3, 4, 5, 15, 100 };
    rp(dir, "rep_done", &p);
    b2ipc_reply_init(&p, B2IPC_REPLY_ERROR);
    p.id = 3; p.error.code = B2IPC_ERANGE; p.error.message = "num_beams out of range"; p.error.field = "num_beams";
    rp(dir, "rep_error", &p);
    b2ipc_reply_init(&p, B2IPC_REPLY_STATUS);
    p.id = 6; p.status.version = "0.1"; p.status.protocol = 1; p.status.uptime_ms = 1000;
    p.status.model.path = "/m"; p.status.model.name = "opt-tiny"; p.status.model.family = "opt";
    p.status.model.dtype = "f32"; p.status.config.image_size = 224; p.status.max_queue = 64;
    p.status.max_batch = 8; p.status.threads = 2; p.status.engine.decode_steps = 3;
    p.status.engine.decode_ms = 1.5;
    rp(dir, "rep_status", &p);
    b2ipc_reply_init(&p, B2IPC_REPLY_PONG);
    p.id = 7;
    rp(dir, "rep_pong", &p);
    b2ipc_reply_init(&p, B2IPC_REPLY_CANCEL);
    p.id = 5; p.cancel.found = true;
    rp(dir, "rep_cancel", &p);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_encode_error(&sb, false, 0, B2IPC_EBAD_MSGPACK, NULL, "bad msgpack");
    put(dir, "rep_error_noid", &sb);
    msgpack_sbuffer_destroy(&sb);

    char path[512];
    snprintf(path, sizeof path, "%s/stream_all", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(all.data, 1, all.size, f) != all.size || fclose(f)) { perror(path); return 1; }
    msgpack_sbuffer_destroy(&all);
    return 0;
}
