/*
 * blip2client.h - libblip2client: ask blip2d, the local BLIP-2 daemon, what
 * is in a picture.
 *
 * Build with:  cc app.c $(pkg-config --cflags --libs blip2client)
 *
 * Blocking (the simplest; error handling shown once):
 *
 *     blip2c_conn *c;
 *     blip2c_error err;
 *     if (blip2c_connect(NULL, &c, &err) < 0) {   // NULL: the default socket
 *         fprintf(stderr, "%s\n", err.message);   // says how to start blip2d
 *         return 1;
 *     }
 *     char *text;
 *     if (blip2c_caption(c, "photo.jpg", &text, &err) == 0) {
 *         puts(text);                             // "a cat sitting on a sofa"
 *         free(text);
 *     }
 *     if (blip2c_ask(c, "photo.jpg", "what colour is the cat?", &text, &err) == 0) {
 *         puts(text);                             // "black"
 *         free(text);
 *     }
 *     blip2c_close(c);
 *
 * Streaming with parameters and the full result:
 *
 *     static int on_token(void *user, const blip2c_token *t)
 *     {
 *         fwrite(t->text, 1, t->text_len, stdout);
 *         fflush(stdout);
 *         return 0;                      // non-zero cancels the request
 *     }
 *
 *     blip2c_params p;
 *     blip2c_params_init(&p);            // the protocol defaults
 *     p.max_new_tokens = 40;
 *     p.num_beams = 1;
 *     blip2c_request rq;
 *     blip2c_request_init(&rq);
 *     rq.image_path = "photo.jpg";       // or .image/.image_len, or .image_fd
 *     rq.prompt = "Question: what is on the table? Answer:";
 *     rq.params = &p;
 *     blip2c_result *res;
 *     if (blip2c_generate(c, &rq, on_token, NULL, &res, &err) == 0) {
 *         printf("\n%s (%.1f tokens/s)\n", res->text, res->timings.tokens_per_s);
 *         blip2c_result_free(res);
 *     }
 *
 * Non-blocking, inside any main loop (poll, GLib, Qt, libuv), no threads:
 *
 *     static const blip2c_callbacks cbs = { on_token, on_done, on_error };
 *     uint64_t id;
 *     blip2c_submit(c, &rq, &cbs, my_state, &id, &err);  // returns at once
 *     for (;;) {                                          // your loop
 *         struct pollfd pfd = { blip2c_fd(c), POLLIN, 0 };
 *         if (blip2c_want_write(c)) pfd.events |= POLLOUT;
 *         poll(&pfd, 1, -1);
 *         if (blip2c_process(c, &err) < 0) break;         // callbacks run here
 *     }
 *
 * With GLib: g_unix_fd_add(blip2c_fd(c), G_IO_IN | ..., cb, c) and call
 * blip2c_process() from cb; with libuv: uv_poll_start() on blip2c_fd(c).
 * Watch for writability only while blip2c_want_write() is true (it becomes
 * true when a large request could not be sent at once), and re-check it
 * after every submit/cancel/process call.
 *
 * What the library guarantees:
 *  - Every submitted request ends with exactly one call of its `done` or
 *    `error` callback (unless you blip2c_close() first: then none).
 *  - Never hangs on a dead daemon: when the connection breaks, every
 *    pending call fails with BLIP2C_ECONNLOST ("connection lost").  Blocking
 *    calls can also be given a time limit (blip2c_set_timeout).
 *  - Never raises SIGPIPE (sends use MSG_NOSIGNAL), never logs, never exits,
 *    no global state.  Functions return 0 (or a documented positive value)
 *    on success and a negative BLIP2C_E* code on failure; details go into a
 *    caller-provided blip2c_error (which may be NULL) and into the
 *    connection's blip2c_last_error().
 *  - Images are read by the daemon through a descriptor passed with
 *    SCM_RIGHTS (image_path, image_fd) or sent inline (image bytes); the
 *    daemon never opens a path you name.
 *
 * Threads: a connection is not thread-safe.  Use one connection per thread
 * (connections are cheap), or make sure only one thread at a time calls
 * into a given connection.  Different connections are independent.
 *
 * Protocol: docs/protocol.md (versions 1 and 2; blip2c_features needs 2).  The socket is found in this
 * order: the path you pass, else $BLIP2_SOCKET, else
 * $XDG_RUNTIME_DIR/blip2.sock (a user's daemon), then /run/blip2/blip2.sock
 * (the system daemon).  blip2c_info() says which one was used.
 */
#ifndef BLIP2CLIENT_H
#define BLIP2CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BLIP2C_VERSION "0.1.0"
#define BLIP2C_PROTOCOL_VERSION 2u /* the highest it speaks; 2 adds features */

/* ---- errors -------------------------------------------------------------- */

/* Stable return codes.  -1 .. -9 are detected by the library; -20 and
 * below are error replies of the daemon, one per wire code of
 * docs/protocol.md section 9 (blip2c_code_name gives the wire name). */
enum {
    BLIP2C_OK = 0,
    BLIP2C_EINVAL = -1,      /* bad input: NULL argument, bad parameter, unreadable
                                image file, id not in flight, call from a callback */
    BLIP2C_ENOMEM = -2,      /* out of memory in this process */
    BLIP2C_ECONNECT = -3,    /* could not connect (the message says what was tried
                                and how to start blip2d) */
    BLIP2C_ECONNLOST = -4,   /* connection lost: the daemon closed it or died */
    BLIP2C_EPROTO = -5,      /* protocol error: a reply this library cannot accept
                                (the connection is closed) */
    BLIP2C_ETIMEDOUT = -6,   /* a blocking call's time limit passed (the request
                                was canceled; the connection stays usable) */

    BLIP2C_EFRAME_TOO_LARGE = -20, /* "frame_too_large" */
    BLIP2C_EBAD_MSGPACK = -21,     /* "bad_msgpack" */
    BLIP2C_ETRAILING_BYTES = -22,  /* "trailing_bytes" */
    BLIP2C_ENOT_MAP = -23,         /* "not_map" */
    BLIP2C_EDUPLICATE_KEY = -24,   /* "duplicate_key" */
    BLIP2C_EMISSING_FIELD = -25,   /* "missing_field" */
    BLIP2C_EBAD_TYPE = -26,        /* "bad_type" */
    BLIP2C_EOUT_OF_RANGE = -27,    /* "out_of_range" */
    BLIP2C_EBAD_UTF8 = -28,        /* "bad_utf8" */
    BLIP2C_EUNKNOWN_FIELD = -29,   /* "unknown_field" */
    BLIP2C_EUNKNOWN_OP = -30,      /* "unknown_op" */
    BLIP2C_ETOO_LARGE = -31,       /* "too_large": image, prompt, context */
    BLIP2C_EUNSUPPORTED_VERSION = -32, /* "unsupported_version" */
    BLIP2C_EDUPLICATE_ID = -33,    /* "duplicate_id" */
    BLIP2C_EBAD_FD = -34,          /* "bad_fd" */
    BLIP2C_EBAD_IMAGE = -35,       /* "bad_image": not an image the daemon can decode */
    BLIP2C_EUNSUPPORTED = -36,     /* "unsupported" */
    BLIP2C_EBUSY = -37,            /* "busy": the daemon's queue is full; retry later */
    BLIP2C_ESHUTTING_DOWN = -38,   /* "shutting_down" */
    BLIP2C_ENO_MEMORY = -39,       /* "no_memory" (in the daemon) */
    BLIP2C_EINTERNAL = -40,        /* "internal", and any code this library does not
                                      know (then error.code_name holds it) */
    BLIP2C_EPERMISSION_DENIED = -41 /* "permission_denied": not in the daemon's allow lists */
};

/* Details of a failure, in storage the caller provides. */
typedef struct blip2c_error {
    int code;             /* BLIP2C_E*, the same as the return value */
    char code_name[32];   /* daemon errors: the wire code ("busy"), also when the
                             code is unknown to this library; "" otherwise */
    char field[128];      /* the request field concerned ("num_beams"), or "" */
    char message[1024];   /* one line of English for humans, never parse it */
} blip2c_error;

/* Static English description of a code ("connection lost"); never NULL. */
const char *blip2c_strerror(int code);
/* Wire name of a daemon error code ("busy"); NULL for library codes. */
const char *blip2c_code_name(int code);
/* true for the codes -20 and below (the daemon refused the request). */
bool blip2c_is_server_error(int code);
/* "0.1.0": the library's version (compare with BLIP2C_VERSION). */
const char *blip2c_version(void);

/* ---- connections ---------------------------------------------------------- */

typedef struct blip2c_conn blip2c_conn;

typedef struct blip2c_options {
    const char *socket_path;  /* NULL: the default order (top of this file) */
    const char *client_name;  /* sent in hello for the daemon's log;
                                 NULL: "libblip2client 0.1.0" */
    int connect_timeout_ms;   /* how long to wait for the hello reply;
                                 0: 10000; < 0: no limit */
    int timeout_ms;           /* time limit of blocking calls (blip2c_set_timeout);
                                 0: none */
    uint32_t max_frame;       /* largest reply frame accepted; 0: 64 MiB */
} blip2c_options;

/* Fills *o with the defaults (all zero / NULL). */
void blip2c_options_init(blip2c_options *o);

/* Connects to the daemon and exchanges hello (protocol version, limits).
 * socket_path: NULL for the default order.  On success *out is a new
 * connection the caller closes with blip2c_close().  On failure *out is
 * NULL and the code is BLIP2C_ECONNECT (message lists the paths tried and
 * what to do), BLIP2C_ENOMEM, BLIP2C_EINVAL, or the code of a daemon that
 * answered hello with an error or turned the connection away
 * (BLIP2C_EPERMISSION_DENIED: its --allow-uid/--allow-gid lists).
 * Blocks at most connect_timeout_ms (default 10 s). */
int blip2c_connect(const char *socket_path, blip2c_conn **out,
                   blip2c_error *err);
/* The same with options (NULL = defaults). */
int blip2c_connect_with(const blip2c_options *o, blip2c_conn **out,
                        blip2c_error *err);
/* Adopts an already connected SOCK_STREAM Unix socket (socketpair(), an
 * inherited descriptor) and exchanges hello.  Takes ownership of fd, also
 * on failure (it is closed then). */
int blip2c_connect_fd(int fd, const blip2c_options *o, blip2c_conn **out,
                      blip2c_error *err);

/* Closes the connection and frees it; NULL is fine.  Pending requests get
 * no callbacks; the daemon cancels them when it sees the socket close.
 * Must not be called from inside a callback of the same connection. */
void blip2c_close(blip2c_conn *c);

/* What hello negotiated and where the socket is.  Borrowed from c, valid
 * until blip2c_close(c). */
typedef struct blip2c_info {
    const char *socket_path;   /* the socket used ("" for blip2c_connect_fd) */
    const char *socket_origin; /* why it: "explicit", "$BLIP2_SOCKET",
                                  "$XDG_RUNTIME_DIR", "system default", "fd" */
    uint32_t protocol;         /* protocol version in use */
    const char *server;        /* e.g. "blip2d 0.1.0" */
    uint64_t max_frame, max_image_bytes, max_prompt_bytes; /* daemon limits */
} blip2c_info;
const blip2c_info *blip2c_info_get(const blip2c_conn *c);

/* The last failure of any call on c (code 0 if none yet).  Borrowed, valid
 * until the next call on c. */
const blip2c_error *blip2c_last_error(const blip2c_conn *c);

/* Time limit of the blocking calls below, in ms; 0 = none (the default:
 * a caption may take a minute on a slow machine).  When it passes, the
 * call cancels its request and returns BLIP2C_ETIMEDOUT. */
void blip2c_set_timeout(blip2c_conn *c, int timeout_ms);

/* ---- requests ------------------------------------------------------------ */

/* Generation parameters (docs/protocol.md 5.2); the comments give default
 * and range.  Semantics are those of Hugging Face generate(). */
typedef struct blip2c_params {
    uint32_t max_new_tokens;       /* 20;  1 .. 2048 */
    uint32_t min_new_tokens;       /* 0;   0 .. max_new_tokens */
    uint32_t num_beams;            /* 1;   1 .. 16 (1: greedy or sampling) */
    double length_penalty;         /* 1.0; -10 .. 10 (beam search) */
    double repetition_penalty;     /* 1.0; (0 .. 10], 1 = off */
    bool do_sample;                /* false */
    double temperature;            /* 1.0; (0 .. 100] (sampling) */
    uint32_t top_k;                /* 50;  0 .. 1048576, 0 = off (sampling) */
    double top_p;                  /* 1.0; (0 .. 1] (sampling) */
    bool has_seed;                 /* false: the daemon picks one (see result) */
    uint64_t seed;                 /* used when has_seed */
    uint32_t num_return_sequences; /* 1;   1 for greedy, <= num_beams for beams */
    const char *const *stop;       /* n_stop stop strings (borrowed), 1 .. 256 bytes */
    uint32_t n_stop;               /* 0 .. 8 */
} blip2c_params;

/* Fills *p with the protocol defaults. */
void blip2c_params_init(blip2c_params *p);
/* Checks ranges and combinations as the daemon will; 0 or BLIP2C_EINVAL
 * with a message such as "num_beams: 0 is out of range [1, 16]". */
int blip2c_params_validate(const blip2c_params *p, blip2c_error *err);

/* One generate request.  Give exactly one image source. */
typedef struct blip2c_request {
    const char *image_path;      /* a file the library opens read-only and passes
                                    by descriptor; closed after sending */
    int image_fd;                /* >= 0: a readable regular file (or memfd), passed
                                    with SCM_RIGHTS; the library duplicates it, so
                                    you may close yours when the call returns;
                                    -1: none */
    const void *image;           /* inline image file bytes (copied into the
                                    request), or NULL */
    size_t image_len;
    const char *prompt;          /* UTF-8; NULL or "" to caption; for questions
                                    "Question: {q} Answer:" */
    const blip2c_params *params; /* NULL: defaults */
} blip2c_request;

/* Zeroes *rq and sets image_fd to -1. */
void blip2c_request_init(blip2c_request *rq);

/* Opens path read-only (close-on-exec) and checks that it is a non-empty
 * regular file.  On success *fd is a descriptor the caller closes.  On
 * failure BLIP2C_EINVAL with "cannot open cat.png: No such file or
 * directory" and the like. */
int blip2c_open_image(const char *path, int *fd, blip2c_error *err);

/* ---- results ------------------------------------------------------------- */

typedef enum blip2c_finish {
    BLIP2C_FINISH_LENGTH = 0, /* hit max_new_tokens */
    BLIP2C_FINISH_EOS,        /* generated the end-of-sequence token */
    BLIP2C_FINISH_STOP,       /* matched a stop string */
    BLIP2C_FINISH_CANCELED    /* canceled (blip2c_cancel, a callback, a timeout) */
} blip2c_finish;
/* "length", "eos", "stop", "canceled"; NULL for other values. */
const char *blip2c_finish_name(blip2c_finish f);

/* One streamed token (only with a token callback). */
typedef struct blip2c_token {
    uint64_t id;        /* the request */
    uint32_t seq;       /* sequence index, 0 .. num_return_sequences-1 */
    uint32_t token;     /* token id */
    const char *text;   /* text piece, valid UTF-8, NUL-terminated, may be "";
                           never a broken character */
    size_t text_len;
} blip2c_token;

typedef struct blip2c_seq {
    const char *text;      /* the decoded text, UTF-8, NUL-terminated */
    size_t text_len;       /* bytes (the text may contain U+0000) */
    const uint32_t *ids;   /* token ids as Hugging Face generate() returns them */
    size_t n_ids;
    blip2c_finish finish;
} blip2c_seq;

typedef struct blip2c_timings { /* milliseconds */
    double queue_ms, preprocess_ms, vision_ms, prefill_ms, decode_ms, total_ms;
    double tokens_per_s;        /* new tokens / decode time */
} blip2c_timings;

typedef struct blip2c_result {
    uint64_t id;                /* the request */
    const char *text;           /* seqs[0].text (the best sequence) without its leading
                                   whitespace (OPT's first word starts with a space), as
                                   blip2c_caption and blip2ctl show it; seqs[i].text keep
                                   the text as decoded */
    const blip2c_seq *seqs;     /* n_seqs sequences, 1 .. 16 */
    size_t n_seqs;
    bool has_seed;              /* sampling: the seed used, to reproduce it */
    uint64_t seed;
    uint32_t prompt_tokens;     /* tokens of the prompt (with BOS) */
    bool cached;                /* image features came from the daemon's cache */
    blip2c_timings timings;
} blip2c_result;

/* A deep copy in one allocation; NULL if out of memory.  The caller frees
 * it with blip2c_result_free(). */
blip2c_result *blip2c_result_dup(const blip2c_result *r);
/* Frees a result returned by this library; NULL is fine. */
void blip2c_result_free(blip2c_result *r);

/* ---- blocking calls ------------------------------------------------------- */
/* These send one request and wait for its reply (at most the timeout of
 * blip2c_set_timeout).  While waiting they also run the callbacks of
 * non-blocking requests of the same connection.  Calling them from inside
 * a callback fails with BLIP2C_EINVAL. */

/* Captions the image file at path.  *text: a new NUL-terminated string with
 * surrounding whitespace removed, the caller frees it with free(). */
int blip2c_caption(blip2c_conn *c, const char *image_path, char **text,
                   blip2c_error *err);
/* Answers question about the image file at path, with the prompt
 * "Question: {question} Answer:".  *answer as for blip2c_caption. */
int blip2c_ask(blip2c_conn *c, const char *image_path, const char *question,
               char **answer, blip2c_error *err);

/* Called for each token as soon as the daemon sends it.  Return 0 to
 * continue, non-zero to cancel the request (its result then ends with
 * finish "canceled").  tok and its text are borrowed for the call only. */
typedef int (*blip2c_token_cb)(void *user, const blip2c_token *tok);

/* The general call: generates for rq and stores a new result in *res
 * (caller frees with blip2c_result_free; res may be NULL to discard it).
 * on_token: NULL for no streaming, else called for each token (greedy and
 * sampling; beam search sends none).  Returns 0 also for a result that was
 * canceled (check finish). */
int blip2c_generate(blip2c_conn *c, const blip2c_request *rq,
                    blip2c_token_cb on_token, void *user,
                    blip2c_result **res, blip2c_error *err);

/* The daemon's state (docs/protocol.md 7.5). */
typedef struct blip2c_status {
    const char *version;          /* daemon version, "0.1.0" */
    uint32_t protocol;            /* highest protocol version it speaks */
    uint64_t uptime_ms;
    const char *model_path, *model_name, *model_family, *model_dtype;
    uint32_t image_size, vision_layers, vision_hidden, qformer_layers,
        num_query_tokens, text_layers, text_hidden, vocab_size, max_positions;
    uint32_t queue_depth, active, max_queue, max_batch, connections, threads;
    uint64_t requests_total;
    uint64_t cache_hits, cache_misses, cache_entries, cache_bytes,
        cache_capacity_bytes;
    /* the memory budget (0 from a daemon that does not report it): its
     * size and the bytes charged, in total and by what (admitted requests,
     * image decodes in progress, partial input frames, unsent replies,
     * HTTP bodies) */
    uint64_t memory_max, memory_used, memory_jobs, memory_decode,
        memory_input, memory_output, memory_http;
    /* The paths the model runs ("" from a daemon that does not send
     * them): the math of the many-row products
     * ("f32", "bf16"), their backend ("oneDNN", "own"), and the decode
     * kernel per weight type with how it was chosen, e.g.
     * "q8_0 avx2 (measured)" (measured, cached or forced by BLIP2_KERNELS). */
    const char *model_precision, *model_backend, *model_kernels;
    /* How the GGUF file's weights are mapped, e.g. "weights: 3.4 GiB read
     * in at load: 100 % of 3.4 GiB in 2 MiB pages" ("" when no GGUF file
     * is mapped, a folder loaded without the weights cache, or from a
     * daemon that does not send it; docs/gguf.md). */
    const char *model_weights;
} blip2c_status;

/* Asks for the daemon's state; *st is new, free it with blip2c_status_free. */
int blip2c_status_get(blip2c_conn *c, blip2c_status **st, blip2c_error *err);
void blip2c_status_free(blip2c_status *st);

/* Round trip; *rtt_ms (may be NULL) gets the time it took. */
int blip2c_ping(blip2c_conn *c, double *rtt_ms, blip2c_error *err);

/* ---- features (Blip2Model get_image/qformer/text_features) ----------------
 *
 *     blip2c_features_request fr;
 *     blip2c_features_request_init(&fr);
 *     fr.image_path = "photo.jpg";
 *     const char *want[] = { "image_pooler_output", "language_model_inputs" };
 *     fr.outputs = want;  fr.n_outputs = 2;            // 0: the defaults
 *     blip2c_features *f;
 *     if (blip2c_features_get(c, &fr, &f, &err) == 0) {
 *         const blip2c_tensor *t = blip2c_features_find(f, "image_pooler_output");
 *         // t->shape = {1, 1408}, t->f32[0 .. t->numel)
 *         blip2c_features_free(f);
 *     }
 */

/* A features request (docs/protocol.md 5.6).  At most one image source,
 * and an image, a text or both. */
typedef struct blip2c_features_request {
    const char *image_path;     /* as in blip2c_request */
    int image_fd;               /* as in blip2c_request; -1: none */
    const void *image;          /* as in blip2c_request */
    size_t image_len;
    const char *text;           /* UTF-8, or NULL: the language model's logits on the
                                   text alone (OPT models only) */
    const char *const *outputs; /* n_outputs output names (borrowed): "image_last_hidden_state",
                                   "image_pooler_output", "qformer_last_hidden_state",
                                   "qformer_pooler_output", "language_model_inputs",
                                   "logits", "logits_last" */
    size_t n_outputs;           /* 0: every image output if there is an image,
                                   and "logits" if there is a text */
} blip2c_features_request;

/* Zeroes *rq and sets image_fd to -1. */
void blip2c_features_request_init(blip2c_features_request *rq);

/* One returned tensor: row-major, in host byte order. */
typedef struct blip2c_tensor {
    const char *name;      /* an output name, or "input_ids" (the text's tokens) */
    const char *dtype;     /* "float32" (then f32 is set) or "int32" (then i32) */
    int ndim;              /* 1 .. 8 */
    uint64_t shape[8];     /* e.g. {1, 257, 1408}; the leading 1 is the batch */
    size_t numel;          /* product of shape */
    const float *f32;      /* numel floats, or NULL */
    const int32_t *i32;    /* numel ints, or NULL */
} blip2c_tensor;

typedef struct blip2c_features {
    uint64_t id;                    /* the request */
    const blip2c_tensor *tensors;   /* in the order of the output list above,
                                       input_ids last */
    size_t n_tensors;
    bool cached;                    /* the image stages came from the daemon's cache */
    struct { double queue_ms, preprocess_ms, vision_ms, text_ms, total_ms; } timings;
} blip2c_features;

/* Blocking: asks the daemon for the features of rq and stores a new result
 * (one allocation) in *out, freed with blip2c_features_free.  Errors as for
 * blip2c_generate, plus BLIP2C_EUNSUPPORTED when the daemon speaks only
 * protocol version 1, or for text features of a non-OPT model, and
 * BLIP2C_ETOO_LARGE when the outputs would not fit the daemon's frame limit
 * (ask for "logits_last" instead of "logits", or fewer outputs).  A reply
 * larger than blip2c_options.max_frame (default 64 MiB) breaks the
 * connection with BLIP2C_EPROTO: raise it along with the daemon's
 * --max-frame. */
int blip2c_features_get(blip2c_conn *c, const blip2c_features_request *rq,
                        blip2c_features **out, blip2c_error *err);
/* The tensor called name, borrowed from f; NULL if absent. */
const blip2c_tensor *blip2c_features_find(const blip2c_features *f, const char *name);
/* A deep copy in one allocation (of a result passed to a features done
 * callback, say); NULL if out of memory or f is NULL.  Free it with
 * blip2c_features_free. */
blip2c_features *blip2c_features_dup(const blip2c_features *f);
/* Frees a result of blip2c_features_get or blip2c_features_dup; NULL is fine. */
void blip2c_features_free(blip2c_features *f);

/* ---- non-blocking interface ----------------------------------------------- */

/* A request's result; res is borrowed for the call only (keep it with
 * blip2c_result_dup).  Called once, after all its tokens. */
typedef void (*blip2c_done_cb)(void *user, const blip2c_result *res);
/* A request failed; err is borrowed for the call only.  Called once, instead
 * of done.  code BLIP2C_ECONNLOST or BLIP2C_EPROTO when the connection broke
 * (every pending request gets it), else a daemon code. */
typedef void (*blip2c_error_cb)(void *user, uint64_t id,
                                const blip2c_error *err);

typedef struct blip2c_callbacks {
    blip2c_token_cb token; /* NULL: no streaming (the request asks for none) */
    blip2c_done_cb done;   /* may be NULL */
    blip2c_error_cb error; /* may be NULL */
} blip2c_callbacks;

/* The socket to watch for readability (always) and writability (while
 * blip2c_want_write).  Borrowed: never close it; valid until blip2c_close. */
int blip2c_fd(const blip2c_conn *c);
/* true while requests are waiting to be written (watch for writability). */
bool blip2c_want_write(const blip2c_conn *c);
/* Number of submitted requests (blip2c_submit, blip2c_features_submit)
 * whose done/error callback has not run yet. */
size_t blip2c_pending(const blip2c_conn *c);

/* Queues a generate request and writes as much as the socket takes without
 * blocking; never waits for the daemon.  cb is copied; user is passed to
 * the callbacks.  *id (may be NULL) gets the request's id (for
 * blip2c_cancel; also in blip2c_token.id and blip2c_result.id).  Errors are
 * returned here (and then no callback runs): BLIP2C_EINVAL for a bad
 * request or image file, BLIP2C_ENOMEM, or the connection's error once it
 * broke (BLIP2C_ECONNLOST / BLIP2C_EPROTO).  May be called from callbacks. */
int blip2c_submit(blip2c_conn *c, const blip2c_request *rq,
                  const blip2c_callbacks *cb, void *user, uint64_t *id,
                  blip2c_error *err);

/* A features request's result (see blip2c_features_get); f is borrowed for
 * the call only (keep it with blip2c_features_dup).  Called once. */
typedef void (*blip2c_features_cb)(void *user, const blip2c_features *f);

typedef struct blip2c_features_callbacks {
    blip2c_features_cb done; /* may be NULL */
    blip2c_error_cb error;   /* may be NULL; as for generate requests */
} blip2c_features_callbacks;

/* Queues a features request, the non-blocking blip2c_features_get: returns
 * at once, and later exactly one of cb->done and cb->error runs from
 * blip2c_process (cb is copied; user is passed to them).  *id (may be NULL)
 * gets the request's id (also in blip2c_features.id).  Errors returned here
 * (then no callback runs): those of blip2c_submit, plus BLIP2C_EUNSUPPORTED
 * when the daemon speaks only protocol version 1.  The daemon's refusals
 * (bad_image, unsupported for text features of a non-OPT model, too_large,
 * busy) arrive through cb->error.  Counts in blip2c_pending.  May be called
 * from callbacks.  Generate and features requests can be in flight together
 * on one connection; the daemon batches them as it sees fit.
 *
 *     static void on_feat(void *user, const blip2c_features *f)
 *     {
 *         const blip2c_tensor *t = blip2c_features_find(f, "qformer_pooler_output");
 *         store_vector(user, t->f32, t->numel);   // copy what you keep
 *     }
 *     static const blip2c_features_callbacks fcb = { on_feat, on_error };
 *     blip2c_features_submit(c, &fr, &fcb, my_state, &id, &err);
 *     // ... poll blip2c_fd(c) and call blip2c_process(c) as above
 */
int blip2c_features_submit(blip2c_conn *c, const blip2c_features_request *rq,
                           const blip2c_features_callbacks *cb, void *user, uint64_t *id,
                           blip2c_error *err);

/* Asks the daemon to stop request id.  Returns at once; the request still
 * ends with its callback: normally done with finish "canceled" (or its
 * normal result, or an error, if it was already over).  A features request
 * is one encoder pass that is not interrupted: its done (or error) callback
 * still comes with the full result.  BLIP2C_EINVAL if id is not a generate
 * or features request in flight.  May be called from callbacks. */
int blip2c_cancel(blip2c_conn *c, uint64_t id, blip2c_error *err);

/* Reads what the socket has, runs the callbacks of the replies that are
 * complete, and writes what is queued; never blocks.  Call it when the fd
 * is readable or writable (calling it spuriously is harmless).  Returns 0,
 * or a negative code when the connection is now broken (BLIP2C_ECONNLOST,
 * BLIP2C_EPROTO): every pending request has got its error callback; stop
 * watching the fd and blip2c_close() the connection.  Later calls return
 * the same code.  BLIP2C_EINVAL from inside a callback. */
int blip2c_process(blip2c_conn *c, blip2c_error *err);

#ifdef __cplusplus
}
#endif
#endif
