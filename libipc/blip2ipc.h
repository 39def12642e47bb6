/*
 * blip2ipc.h - libblip2ipc: the blip2d wire protocol of docs/protocol.md.
 *
 * One library for both ends: a frame reader (bytes in, complete frames out),
 * encoders for every request and reply (frame prefix included), and strict
 * decoders into C structs.  The daemon and libblip2client both use it.
 *
 * Usage, a client (error handling shortened):
 *
 *     b2ipc_error err;
 *     msgpack_sbuffer out;
 *     msgpack_sbuffer_init(&out);
 *
 *     b2ipc_request rq;
 *     b2ipc_request_init(&rq, B2IPC_OP_GENERATE);   // defaults filled in
 *     rq.id = 7;
 *     rq.generate.image = png;  rq.generate.image_len = png_len;  // borrowed
 *     rq.generate.prompt = "Question: what is it? Answer:";
 *     rq.generate.stream = true;
 *     rq.generate.params.max_new_tokens = 30;
 *     if (b2ipc_encode_request(&out, &rq, NULL, &err) < 0)
 *         die("%s", err.message);        // e.g. "num_beams: 0 is out of range [1, 16]"
 *     write_all(fd, out.data, out.size); // one complete frame
 *
 *     b2ipc_reader rd;
 *     b2ipc_reader_init(&rd, 0);         // 0: default 64 MiB frame limit
 *     char chunk[65536];
 *     ssize_t got;
 *     while ((got = read(fd, chunk, sizeof chunk)) > 0) {
 *         size_t off = 0;
 *         while (off < (size_t)got) {
 *             size_t used;
 *             int rc = b2ipc_reader_feed(&rd, chunk + off, got - off, &used);
 *             off += used;
 *             if (rc < 0) die("%s", b2ipc_strerror(rc));
 *             if (rc == 0) break;              // need more bytes
 *             const uint8_t *p;  size_t n;     // rc == 1: a frame is complete
 *             b2ipc_reader_frame(&rd, &p, &n);
 *             b2ipc_reply rp;
 *             if (b2ipc_decode_reply(p, n, &rp, &err) < 0) die("%s", err.message);
 *             if (rp.type == B2IPC_REPLY_TOKEN)
 *                 fwrite(rp.token.text, 1, rp.token.text_len, stdout);
 *             else if (rp.type == B2IPC_REPLY_DONE)
 *                 printf("\n%s\n", rp.done.seqs[0].text);
 *             b2ipc_reply_free(&rp);
 *         }
 *     }
 *     b2ipc_reader_destroy(&rd);
 *     msgpack_sbuffer_destroy(&out);
 *
 * The daemon is the mirror image: b2ipc_reader_feed() on what it reads (a
 * negative return means "send an id-less error, close the connection"),
 * b2ipc_decode_request() on each frame (on failure answer with
 * b2ipc_encode_error(out, rq.has_id, rq.id, err.code, err.field,
 * err.message) and, if rq.takes_fd, consume and close one received
 * descriptor), and b2ipc_encode_reply() for tokens and results.
 *
 * Conventions: functions return 0 (or a documented positive value) on
 * success and a negative B2IPC_E* code on failure.  Detailed errors go into
 * a caller-provided b2ipc_error, which may be NULL.  The library has no
 * global state, never logs, never exits, and is thread-safe as long as one
 * object (reader, request, reply) is not used by two threads at once.
 *
 * Ownership, once for all:
 *  - Structs you fill for encoding only borrow your pointers; the encoders
 *    copy everything into `out` and keep nothing.
 *  - Encoders append to `out` (so frames can be queued back to back); on
 *    failure `out` is left exactly as it was.
 *  - A decoded request or reply owns its strings and arrays (one arena);
 *    release them with b2ipc_request_free() / b2ipc_reply_free().  The one
 *    exception is generate.image, which points INTO the payload you decoded
 *    (no 64 MiB copy): keep the payload alive while you use it;
 *    b2ipc_reader_take() gives you the payload to keep.
 *  - After a failed decode nothing needs freeing (calling the free function
 *    anyway is harmless).
 */
#ifndef BLIP2IPC_H
#define BLIP2IPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- constants (docs/protocol.md gives the meaning) ---------------------- */

#define B2IPC_PROTOCOL_VERSION 2u  /* 2: the features op (docs/protocol.md 5.6) */
#define B2IPC_DEFAULT_MAX_FRAME (64u << 20)        /* bytes of payload */
#define B2IPC_DEFAULT_MAX_IMAGE_BYTES (64u << 20)
#define B2IPC_DEFAULT_MAX_PROMPT_BYTES 16384u
#define B2IPC_MAX_NEW_TOKENS 2048u
#define B2IPC_MAX_BEAMS 16u
#define B2IPC_MAX_SEQS 16u          /* num_return_sequences, done arrays */
#define B2IPC_MAX_STOP 8u           /* stop strings per request */
#define B2IPC_MAX_STOP_BYTES 256u   /* bytes per stop string */
#define B2IPC_MAX_IDS_PER_SEQ 4096u /* done.ids[i] */
#define B2IPC_MAX_DEPTH 8u          /* MessagePack nesting */
#define B2IPC_MAX_OBJECTS 131072u   /* MessagePack objects per payload */
#define B2IPC_MAX_TENSORS 16u       /* features reply: tensors */
#define B2IPC_MAX_TENSOR_DIMS 8u    /* features reply: dimensions per tensor */

/* ---- errors -------------------------------------------------------------- */

/* Negative return codes.  Each except B2IPC_EINVAL has a stable wire name
 * (b2ipc_code_name), the `code` of an error reply. */
enum {
    B2IPC_OK = 0,
    B2IPC_ENOMEM = -1,           /* "no_memory" */
    B2IPC_EINVAL = -2,           /* library misuse (NULL argument, bad enum); never on the wire */
    B2IPC_EFRAME_TOO_LARGE = -3, /* "frame_too_large": declared length above the limit */
    B2IPC_EBAD_MSGPACK = -4,     /* "bad_msgpack": empty, truncated or invalid MessagePack */
    B2IPC_ETRAILING = -5,        /* "trailing_bytes": bytes after the top-level object */
    B2IPC_ENOT_MAP = -6,         /* "not_map": top-level object is not a map */
    B2IPC_EDUP_KEY = -7,         /* "duplicate_key" */
    B2IPC_EMISSING = -8,         /* "missing_field" */
    B2IPC_ETYPE = -9,            /* "bad_type" */
    B2IPC_ERANGE = -10,          /* "out_of_range" (also forbidden combinations) */
    B2IPC_EUTF8 = -11,           /* "bad_utf8" (also U+0000 in request text) */
    B2IPC_EUNKNOWN_FIELD = -12,  /* "unknown_field" (requests only) */
    B2IPC_EUNKNOWN_OP = -13,     /* "unknown_op" (unknown op or reply type) */
    B2IPC_ETOO_LARGE = -14,      /* "too_large": size limits, nesting, object count */
    B2IPC_EVERSION = -15,        /* "unsupported_version"            (server only) */
    B2IPC_EDUP_ID = -16,         /* "duplicate_id"                   (server only) */
    B2IPC_EBAD_FD = -17,         /* "bad_fd"                         (server only) */
    B2IPC_EBAD_IMAGE = -18,      /* "bad_image"                      (server only) */
    B2IPC_EUNSUPPORTED = -19,    /* "unsupported"                    (server only) */
    B2IPC_EBUSY = -20,           /* "busy"                           (server only) */
    B2IPC_ESHUTDOWN = -21,       /* "shutting_down"                  (server only) */
    B2IPC_EINTERNAL = -22,       /* "internal" */
    B2IPC_EUNKNOWN_CODE = -23,   /* a decoded error reply's code this library does not
                                    know (see error.code_name); treat like internal */
    B2IPC_EPERM = -24            /* "permission_denied"              (server only) */
};

/* Details of a failure, filled by the caller-provided struct. */
typedef struct b2ipc_error {
    int code;           /* B2IPC_E*, the same as the return value */
    char field[64];     /* the field concerned, e.g. "num_beams", "stop[2]",
                           "model.path"; "" if none */
    char message[256];  /* one line of printable ASCII/UTF-8, e.g.
                           "num_beams: 1000 is out of range [1, 16]" */
} b2ipc_error;

/* Static English description of a code; never NULL. */
const char *b2ipc_strerror(int code);
/* Wire name of a code ("out_of_range"); NULL for B2IPC_OK, B2IPC_EINVAL,
 * B2IPC_EUNKNOWN_CODE and values that are no code. */
const char *b2ipc_code_name(int code);
/* The code for a wire name; B2IPC_EUNKNOWN_CODE if it is not known. */
int b2ipc_code_from_name(const char *name);

/* ---- frame reader -------------------------------------------------------- */

/* Accumulates a byte stream and cuts it into frames.  Memory: at most one
 * frame (grown as its bytes arrive, never beyond the declared length); a
 * declared length above max_frame is refused as soon as the 4 length bytes
 * are in, before any payload byte is stored.  Between frames it keeps at
 * most 64 KiB.  Fields are private. */
typedef struct b2ipc_reader {
    uint8_t hdr_[4];
    size_t hdr_len_;
    uint8_t *buf_;
    size_t len_, want_, cap_, max_frame_;
    int state_; /* 0 reading, 1 frame complete, < 0 sticky error */
} b2ipc_reader;

/* max_frame: the largest payload accepted; 0 = B2IPC_DEFAULT_MAX_FRAME;
 * values above UINT32_MAX mean UINT32_MAX. */
void b2ipc_reader_init(b2ipc_reader *r, size_t max_frame);
/* Frees the buffer; safe on a zeroed or already destroyed reader. */
void b2ipc_reader_destroy(b2ipc_reader *r);

/* Consumes bytes of data[0..len) up to the end of the next frame and sets
 * *used to the number consumed.  Returns 1 when a frame is complete (get it
 * with b2ipc_reader_frame or _take; feed the rest, data + *used, after
 * handling it), 0 when everything was consumed and more bytes are needed,
 * B2IPC_EFRAME_TOO_LARGE or B2IPC_ENOMEM on failure.  Failures are sticky:
 * every later call returns the same code (close the connection).  A
 * complete frame not taken is discarded by the next call. */
int b2ipc_reader_feed(b2ipc_reader *r, const void *data, size_t len,
                      size_t *used);
/* The complete frame's payload, borrowed: valid until the next
 * b2ipc_reader_feed/_take/_destroy.  Returns 0, or B2IPC_EINVAL when no
 * frame is complete.  *payload is never NULL on success (len may be 0). */
int b2ipc_reader_frame(const b2ipc_reader *r, const uint8_t **payload,
                       size_t *len);
/* The same, but the caller takes the payload and frees it with free(). */
int b2ipc_reader_take(b2ipc_reader *r, uint8_t **payload, size_t *len);
/* Bytes of a frame received so far (prefix included); 0 between frames.
 * Non-zero at end of stream means the peer stopped mid-frame. */
size_t b2ipc_reader_pending(const b2ipc_reader *r);
/* Bytes of heap memory the reader holds now. */
size_t b2ipc_reader_memory(const b2ipc_reader *r);

/* ---- messages ------------------------------------------------------------ */

/* Size limits the receiving server applies (advertised in the hello
 * reply).  Pass NULL, or zero fields, for the defaults. */
typedef struct b2ipc_limits {
    uint64_t max_image_bytes;  /* 0 = B2IPC_DEFAULT_MAX_IMAGE_BYTES */
    uint64_t max_prompt_bytes; /* 0 = B2IPC_DEFAULT_MAX_PROMPT_BYTES */
} b2ipc_limits;

typedef enum b2ipc_op {
    B2IPC_OP_NONE = 0,
    B2IPC_OP_HELLO,
    B2IPC_OP_GENERATE,
    B2IPC_OP_CANCEL,
    B2IPC_OP_STATUS,
    B2IPC_OP_PING,
    B2IPC_OP_FEATURES          /* protocol version 2 */
} b2ipc_op;

/* Generation parameters; the comments give default and accepted range. */
typedef struct b2ipc_gen_params {
    uint32_t max_new_tokens;      /* 20;  1 .. 2048 */
    uint32_t min_new_tokens;      /* 0;   0 .. max_new_tokens */
    uint32_t num_beams;           /* 1;   1 .. 16 */
    double length_penalty;        /* 1.0; -10 .. 10 */
    double repetition_penalty;    /* 1.0; (0 .. 10] */
    bool do_sample;               /* false */
    double temperature;           /* 1.0; (0 .. 100] */
    uint32_t top_k;               /* 50;  0 .. 1048576, 0 = off */
    double top_p;                 /* 1.0; (0 .. 1] */
    bool has_seed;                /* false: the server picks the seed */
    uint64_t seed;                /* any, used if has_seed */
    uint32_t num_return_sequences;/* 1;   1 .. 16; 1 for greedy; <= num_beams for beams */
    const char *const *stop;      /* n_stop strings, 1 .. 256 bytes each, UTF-8 without NUL */
    uint32_t n_stop;              /* 0 .. 8 */
} b2ipc_gen_params;

typedef struct b2ipc_generate {
    const uint8_t *image;  /* inline image file bytes, or NULL; decoded: points
                              into the payload (see Ownership above) */
    size_t image_len;      /* 1 .. max_image_bytes */
    bool image_fd;         /* true: the image comes as an SCM_RIGHTS descriptor;
                              exclusive with image */
    const char *prompt;    /* UTF-8 without NUL, or NULL; "" = no prompt */
    bool stream;           /* send token events */
    b2ipc_gen_params params;
} b2ipc_generate;

/* The outputs a features request may name (docs/protocol.md 5.6), in
 * the order the reply lists them. */
typedef enum b2ipc_feature_output {
    B2IPC_FEAT_IMAGE_LAST_HIDDEN_STATE = 0, /* "image_last_hidden_state" (1,T,Dv) */
    B2IPC_FEAT_IMAGE_POOLER_OUTPUT,         /* "image_pooler_output" (1,Dv) */
    B2IPC_FEAT_QFORMER_LAST_HIDDEN_STATE,   /* "qformer_last_hidden_state" (1,Q,Dq) */
    B2IPC_FEAT_QFORMER_POOLER_OUTPUT,       /* "qformer_pooler_output" (1,Dq) */
    B2IPC_FEAT_LANGUAGE_MODEL_INPUTS,       /* "language_model_inputs" (1,Q,Dt) */
    B2IPC_FEAT_LOGITS,                      /* "logits" (1,L,V): needs text */
    B2IPC_FEAT_LOGITS_LAST,                 /* "logits_last" (1,V): needs text */
    B2IPC_FEAT_COUNT
} b2ipc_feature_output;

/* Wire name of an output; NULL out of range. */
const char *b2ipc_feature_output_name(int output);
/* The output a wire name names, or -1. */
int b2ipc_feature_output_index(const char *name, size_t len);
/* true for the outputs computed from the image (the others need text). */
bool b2ipc_feature_output_is_image(int output);

typedef struct b2ipc_features {
    const uint8_t *image;  /* as generate.image (borrowed from the payload), or NULL */
    size_t image_len;
    bool image_fd;         /* as generate.image_fd */
    const char *text;      /* UTF-8 without NUL, 1 .. max_prompt_bytes, or NULL */
    const char *const *outputs; /* n_outputs wire names (b2ipc_feature_output_name);
                                   0 = the default: every image output if there
                                   is an image, plus "logits" if there is text */
    uint32_t n_outputs;    /* 0 .. B2IPC_FEAT_COUNT, no repeats */
} b2ipc_features;

typedef struct b2ipc_request {
    uint64_t id;
    b2ipc_op op;
    /* Set by the decoder, also when it fails, ignored by the encoder: */
    bool has_id;     /* a usable id was found (so an error reply can carry it) */
    bool takes_fd;   /* the map has image_fd: true, so this frame consumes one
                        received descriptor even if it is refused */
    /* Only the member matching op is meaningful. */
    struct { uint32_t v; const char *client; } hello;  /* v 1 .. 2^32-1; client <= 256 bytes or NULL */
    b2ipc_generate generate;
    struct { uint64_t target; } cancel;
    b2ipc_features features;
    void *arena_;    /* private: what a decoded request owns */
} b2ipc_request;

typedef enum b2ipc_reply_type {
    B2IPC_REPLY_NONE = 0,
    B2IPC_REPLY_HELLO,
    B2IPC_REPLY_TOKEN,
    B2IPC_REPLY_DONE,
    B2IPC_REPLY_ERROR,
    B2IPC_REPLY_STATUS,
    B2IPC_REPLY_PONG,
    B2IPC_REPLY_CANCEL,
    B2IPC_REPLY_FEATURES       /* protocol version 2 */
} b2ipc_reply_type;

typedef enum b2ipc_finish {
    B2IPC_FINISH_LENGTH = 0, /* "length" */
    B2IPC_FINISH_EOS,        /* "eos" */
    B2IPC_FINISH_STOP,       /* "stop" */
    B2IPC_FINISH_CANCELED    /* "canceled" */
} b2ipc_finish;

/* One returned sequence of a done reply. */
typedef struct b2ipc_seq {
    const char *text;      /* valid UTF-8, NUL-terminated when decoded */
    size_t text_len;       /* bytes, without the terminator */
    const uint32_t *ids;   /* n_ids token ids (may be NULL if n_ids is 0) */
    size_t n_ids;          /* 0 .. 4096 */
    b2ipc_finish finish;
} b2ipc_seq;

typedef struct b2ipc_timings { /* all >= 0 */
    double queue_ms, preprocess_ms, vision_ms, prefill_ms, decode_ms, total_ms;
    double tokens_per_s;
} b2ipc_timings;

typedef struct b2ipc_status {
    const char *version;   /* daemon version */
    uint32_t protocol;     /* highest protocol version */
    uint64_t uptime_ms;
    /* precision, backend, kernels, weights: optional on the wire (NULL if
     * absent: older servers; weights also when no GGUF file is mapped):
     * the math of the many-row products ("f32", "bf16"), their backend
     * ("oneDNN", "own"), the decode kernel per weight type with how it was
     * chosen (blip2_model_kernels, model/blip2.h) and how a GGUF file's
     * weights are mapped (blip2_model_weights) */
    struct { const char *path, *name, *family, *dtype, *precision, *backend, *kernels, *weights; } model;
    struct {
        uint32_t image_size, vision_layers, vision_hidden, qformer_layers,
            num_query_tokens, text_layers, text_hidden, vocab_size,
            max_positions;
        /* optional on the wire (0 if absent: older servers): the
         * Q-Former hidden size Dq and the vision patch size */
        uint32_t qformer_hidden, patch_size;
    } config;
    uint32_t queue_depth, active, max_queue, max_batch, connections, threads;
    uint64_t requests_total;
    struct { uint64_t hits, misses, entries, bytes, capacity_bytes; } cache;
    /* Decoder work since start (optional on the wire; zero if absent):
     * steps that only decoded (one row per live sequence) and the tokens
     * they produced, and steps that included a prefill. */
    struct {
        uint64_t decode_steps, decode_tokens, prefill_steps;
        double decode_ms, prefill_ms;
    } engine;
    /* The memory budget (--max-memory; optional on the wire, zero if
     * absent): its size, the bytes charged now, and by what: admitted
     * requests, image decodes in progress, partial input frames, unsent
     * replies, HTTP bodies and their images. */
    struct {
        uint64_t max, used, jobs, decode, input, output, http;
    } memory;
} b2ipc_status;

/* One tensor of a features reply.  data holds numel * 4 bytes, little-
 * endian, row-major.  Decoded: data is a copy in the reply's arena,
 * aligned for float / int32_t access on a little-endian host. */
typedef struct b2ipc_tensor {
    const char *name;      /* 1 .. 64 bytes, distinct within the reply */
    const char *dtype;     /* "float32" or "int32" */
    uint32_t ndim;         /* 1 .. B2IPC_MAX_TENSOR_DIMS */
    uint64_t shape[B2IPC_MAX_TENSOR_DIMS];
    const void *data;
    size_t data_len;       /* == 4 * product(shape) */
} b2ipc_tensor;

typedef struct b2ipc_reply {
    uint64_t id;
    bool has_id;           /* false only for an error without id */
    b2ipc_reply_type type;
    /* Only the member matching type is meaningful.  Strings are UTF-8 and,
     * when decoded, NUL-terminated; text pieces carry their length since
     * generated text may contain U+0000. */
    struct {
        uint32_t v;
        const char *server;
        uint64_t max_frame, max_image_bytes, max_prompt_bytes;
    } hello;
    struct {
        uint32_t seq;      /* 0 .. 15 */
        uint32_t token;
        const char *text;  /* may be "" (NULL allowed when text_len is 0) */
        size_t text_len;   /* <= 4096 */
    } token;
    struct {
        const b2ipc_seq *seqs; /* n_seqs sequences, 1 .. 16 */
        uint32_t n_seqs;
        bool has_seed;
        uint64_t seed;
        uint32_t prompt_tokens;
        bool cached;
        b2ipc_timings timings;
    } done;
    struct {
        int code;              /* B2IPC_E*; B2IPC_EUNKNOWN_CODE if decoded from an
                                  unknown name, then code_name says which */
        const char *code_name; /* decoded: the wire name; encoding: ignored unless
                                  code is B2IPC_EUNKNOWN_CODE */
        const char *message;   /* required, <= 1024 bytes */
        const char *field;     /* or NULL */
    } error;
    b2ipc_status status;
    struct { bool found; } cancel;
    struct {
        const b2ipc_tensor *tensors; /* n_tensors, 0 .. B2IPC_MAX_TENSORS */
        uint32_t n_tensors;
        bool cached;           /* the image stages came from the feature cache */
        struct { double queue_ms, preprocess_ms, vision_ms, text_ms, total_ms; } timings;
    } features;
    void *arena_;          /* private: what a decoded reply owns */
} b2ipc_reply;

/* Wire names ("generate", "done", "eos"); NULL for values out of range. */
const char *b2ipc_op_name(b2ipc_op op);
const char *b2ipc_reply_type_name(b2ipc_reply_type type);
const char *b2ipc_finish_name(b2ipc_finish finish);

/* Writes the protocol defaults into *p. */
void b2ipc_gen_params_default(b2ipc_gen_params *p);
/* Zeroes *rq, sets op and, for generate, the default parameters. */
void b2ipc_request_init(b2ipc_request *rq, b2ipc_op op);
/* Zeroes *rp and sets type (has_id true). */
void b2ipc_reply_init(b2ipc_reply *rp, b2ipc_reply_type type);

/* Checks a request against the protocol: ranges, text validity, sizes
 * (against lim, NULL = defaults), combinations.  The decoder and the
 * encoder both apply exactly this check.  Returns 0 or a B2IPC_E* code. */
int b2ipc_request_validate(const b2ipc_request *rq, const b2ipc_limits *lim,
                           b2ipc_error *err);
int b2ipc_reply_validate(const b2ipc_reply *rp, b2ipc_error *err);

/* Validate, then append one frame (4-byte length + map) to out.  lim is
 * the peer's limits (NULL = defaults).  Fields at their defaults are
 * written anyway; optional ones that are absent (NULL string, no seed,
 * image_fd false, no stop strings) are left out. */
int b2ipc_encode_request(msgpack_sbuffer *out, const b2ipc_request *rq,
                         const b2ipc_limits *lim, b2ipc_error *err);
int b2ipc_encode_reply(msgpack_sbuffer *out, const b2ipc_reply *rp,
                       b2ipc_error *err);
/* Appends an error reply.  code is any code with a wire name; field may be
 * NULL or ""; message may be NULL.  Unlike b2ipc_encode_reply this never
 * refuses text: invalid UTF-8 becomes '?', and field and message are cut
 * to 128 and 1024 bytes, so any b2ipc_error or library message can be sent
 * as is.  Returns 0, B2IPC_EINVAL (code has no wire name) or
 * B2IPC_ENOMEM. */
int b2ipc_encode_error(msgpack_sbuffer *out, bool has_id, uint64_t id,
                       int code, const char *field, const char *message);

/* Decode one frame payload (without the 4-byte prefix) into *rq, checking
 * everything docs/protocol.md section 10 lists (steps 2 to 7) against lim
 * (NULL = defaults).  On success the caller frees with
 * b2ipc_request_free(); generate.image borrows from payload.  On failure
 * *rq holds only id/has_id, op and takes_fd, and nothing to free. */
int b2ipc_decode_request(const void *payload, size_t len,
                         const b2ipc_limits *lim, b2ipc_request *rq,
                         b2ipc_error *err);
/* The same for a reply.  Reply fields this library does not know are
 * ignored (forward compatibility); known ones are checked strictly. */
int b2ipc_decode_reply(const void *payload, size_t len, b2ipc_reply *rp,
                       b2ipc_error *err);

/* Free what a decoded message owns and zero it; NULL, zeroed, encoded-only
 * and already freed structs are fine. */
void b2ipc_request_free(b2ipc_request *rq);
void b2ipc_reply_free(b2ipc_reply *rp);

#ifdef __cplusplus
}
#endif
#endif
