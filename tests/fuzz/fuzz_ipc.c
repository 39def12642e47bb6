/*
 * fuzz_ipc.c - libFuzzer target: libipc's frame reader and message decoders.
 *
 * The input is a byte stream as a peer would send it.  It is cut into
 * frames twice, once fed whole and once in small chunks of varying sizes;
 * both passes must yield the same frames.  Every frame is decoded as a
 * request and as a reply; a message that decodes must encode again (the
 * encoder applies the same validation as the decoder).
 */
#include "blip2ipc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_FRAME (1u << 20)

static void check_payload(const uint8_t *p, size_t n)
{
    b2ipc_error err;
    b2ipc_request rq;
    memset(&rq, 0, sizeof rq);
    if (b2ipc_decode_request(p, n, NULL, &rq, &err) == 0) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        if (b2ipc_encode_request(&sb, &rq, NULL, &err) != 0) abort();
        msgpack_sbuffer_destroy(&sb);
        b2ipc_request_free(&rq);
    }
    b2ipc_reply rp;
    memset(&rp, 0, sizeof rp);
    if (b2ipc_decode_reply(p, n, &rp, &err) == 0) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        if (b2ipc_encode_reply(&sb, &rp, &err) != 0) abort();
        msgpack_sbuffer_destroy(&sb);
        b2ipc_reply_free(&rp);
    }
}

/* Feeds data in chunks (chunk == 0: all at once); returns the number of
 * frames, with the final reader status in *status. */
static size_t run(const uint8_t *data, size_t size, size_t chunk, int decode,
                  int *status)
{
    b2ipc_reader r;
    b2ipc_reader_init(&r, FUZZ_MAX_FRAME);
    size_t off = 0, frames = 0, i = 0;
    int rc = 0;
    while (off < size) {
        size_t n = chunk ? 1 + (size * 31 + i++ * 17) % chunk : size - off;
        if (n > size - off) n = size - off;
        size_t pos = 0;
        while (pos < n) {
            size_t used = 0;
            rc = b2ipc_reader_feed(&r, data + off + pos, n - pos, &used);
            if (used > n - pos) abort();
            pos += used;
            if (rc < 0) goto done;
            if (rc == 1) {
                const uint8_t *p;
                size_t len;
                if (b2ipc_reader_frame(&r, &p, &len) != 0 || !p) abort();
                if (len > FUZZ_MAX_FRAME) abort();
                frames++;
                if (decode) check_payload(p, len);
            } else if (used == 0) {
                abort(); /* 0 means all consumed */
            }
        }
        off += n;
    }
done:
    if (r.state_ >= 0 && b2ipc_reader_memory(&r) > FUZZ_MAX_FRAME + (64u << 10)) abort();
    b2ipc_reader_destroy(&r);
    *status = rc < 0 ? rc : 0;
    return frames;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int s1, s2;
    size_t f1 = run(data, size, 0, 1, &s1);
    size_t f2 = run(data, size, 64, 0, &s2);
    if (f1 != f2 || s1 != s2) abort();
    return 0;
}
