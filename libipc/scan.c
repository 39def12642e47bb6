/*
 * scan.c - a bounded structure check of a MessagePack payload.
 *
 * msgpack-c's unpacker allocates an array of msgpack_object (24 bytes each)
 * as soon as it reads a container header, sized by the count the header
 * declares.  A 5-byte payload "array32 of 100 million" would make it
 * allocate 2.4 GB before noticing the bytes are missing.  So before handing
 * a payload to msgpack_unpack_next the decoder walks it here, iteratively
 * and without allocating, and refuses it unless:
 *
 *   - it is exactly one complete object (else bad_msgpack / trailing_bytes),
 *   - no container declares more elements than bytes remain (every element
 *     takes at least one byte, so a lie is a truncation),
 *   - nesting is at most B2IPC_MAX_DEPTH and the payload has at most
 *     B2IPC_MAX_OBJECTS objects (else too_large).
 *
 * After that the unpacker's memory is bounded by 24 * B2IPC_MAX_OBJECTS.
 * This does not re-implement decoding: values are not interpreted, only the
 * lengths that MessagePack's format byte table gives are followed.
 */
#include "ipc-private.h"

static uint64_t b2ipc__be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

int b2ipc__scan(const uint8_t *p, size_t n, b2ipc_error *err)
{
    uint64_t rem[B2IPC_MAX_DEPTH + 1]; /* elements still expected per level */
    int d = 0;
    size_t i = 0, objects = 0;

    if (n == 0)
        return b2ipc__err(err, B2IPC_EBAD_MSGPACK, NULL, "empty payload");
    rem[0] = 1;
    for (;;) {
        while (d >= 0 && rem[d] == 0) d--;
        if (d < 0) break;
        if (i >= n)
            return b2ipc__err(err, B2IPC_EBAD_MSGPACK, NULL,
                              "truncated MessagePack: payload ends at byte %zu "
                              "inside an object", n);
        rem[d]--;
        if (++objects > B2IPC_MAX_OBJECTS)
            return b2ipc__err(err, B2IPC_ETOO_LARGE, NULL,
                              "more than %u MessagePack objects", B2IPC_MAX_OBJECTS);
        size_t at = i;
        uint8_t b = p[i++];
        size_t lenbytes = 0;  /* size of a following big-endian length */
        uint64_t skip = 0;    /* fixed data bytes that follow */
        uint64_t count = 0;   /* container elements (maps: keys + values) */
        int kind = 0;         /* 0 scalar, 1 str/bin/ext (length-prefixed), 2 container */
        int extra = 0;        /* ext: the type byte */

        if (b <= 0x7f || b >= 0xe0) {
            /* positive / negative fixint */
        } else if (b <= 0x8f) {
            kind = 2, count = 2u * (b & 0x0f);
        } else if (b <= 0x9f) {
            kind = 2, count = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc0: case 0xc2: case 0xc3: break;              /* nil false true */
            case 0xc4: kind = 1, lenbytes = 1; break;              /* bin 8/16/32 */
            case 0xc5: kind = 1, lenbytes = 2; break;
            case 0xc6: kind = 1, lenbytes = 4; break;
            case 0xc7: kind = 1, lenbytes = 1, extra = 1; break;   /* ext 8/16/32 */
            case 0xc8: kind = 1, lenbytes = 2, extra = 1; break;
            case 0xc9: kind = 1, lenbytes = 4, extra = 1; break;
            case 0xca: skip = 4; break;                            /* float32 */
            case 0xcb: skip = 8; break;                            /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;                 /* (u)int8 */
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                            /* fixext 1..16 */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xd9: kind = 1, lenbytes = 1; break;              /* str 8/16/32 */
            case 0xda: kind = 1, lenbytes = 2; break;
            case 0xdb: kind = 1, lenbytes = 4; break;
            case 0xdc: kind = 2, lenbytes = 2; break;              /* array 16/32 */
            case 0xdd: kind = 2, lenbytes = 4; break;
            case 0xde: kind = 2, lenbytes = 2; break;              /* map 16/32 */
            case 0xdf: kind = 2, lenbytes = 4; break;
            default: /* 0xc1 is never used */
                return b2ipc__err(err, B2IPC_EBAD_MSGPACK, NULL,
                                  "invalid MessagePack byte 0x%02x at %zu", b, at);
            }
        }
        if (lenbytes) {
            if (n - i < lenbytes)
                return b2ipc__err(err, B2IPC_EBAD_MSGPACK, NULL,
                                  "truncated MessagePack: length at byte %zu", at);
            uint64_t v = b2ipc__be(p + i, lenbytes);
            i += lenbytes;
            if (kind == 1) skip = v + (uint64_t)extra;
            else count = (b >= 0xde) ? 2 * v : v;
        }
        if (skip > n - i)
            return b2ipc__err(err, B2IPC_EBAD_MSGPACK, NULL,
                              "truncated MessagePack: object at byte %zu needs "
                              "%llu bytes, %zu left", at,
                              (unsigned long long)skip, n - i);
        i += (size_t)skip;
        if (kind == 2 && count > 0) {
            if (count > n - i)
                return b2ipc__err(err, B2IPC_EBAD_MSGPACK, NULL,
                                  "truncated MessagePack: container at byte %zu "
                                  "declares %llu elements, %zu bytes left", at,
                                  (unsigned long long)count, n - i);
            if (d + 1 > (int)B2IPC_MAX_DEPTH)
                return b2ipc__err(err, B2IPC_ETOO_LARGE, NULL,
                                  "MessagePack nested deeper than %u levels",
                                  B2IPC_MAX_DEPTH);
            rem[++d] = count;
        }
    }
    if (i != n)
        return b2ipc__err(err, B2IPC_ETRAILING, NULL,
                          "%zu trailing bytes after the message", n - i);
    return 0;
}
