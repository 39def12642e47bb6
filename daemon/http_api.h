/*
 * http_api.h - the HTTP front end's translation layer (http_api.c): what
 * an HTTP request means as a protocol generate request, and how the
 * protocol's replies are written as JSON.  Pure: no I/O, no threads, no
 * logging, so the tests (tests/test_http_api.c) drive it directly.
 *
 *   POST /v1/chat/completions body --b2d_chat_parse--> b2d_gen (a
 *     b2ipc_request, checked by b2ipc_request_validate like a socket
 *     request, plus stream/n/usage flags)
 *   POST /v1/caption query --b2d_caption_parse--> b2d_gen
 *   token replies --b2d_trim_feed--> text deltas --b2d_chat_chunk--> SSE data
 *   done reply --b2d_chat_response / b2d_caption_response--> JSON
 *   any failure --b2d_http_error--> status + OpenAI error object
 *
 * Prompts are built as blip2ctl builds them (docs/http.md): an image with
 * no text is a caption (no prompt); a question q is "Question: q Answer:";
 * earlier turns are "Question: q Answer: a." before it (the period left out
 * when a already ends a sentence), the oldest dropped first when the
 * prompt does not fit max_prompt_bytes.
 */
#ifndef B2D_HTTP_API_H
#define B2D_HTTP_API_H

#include <stddef.h>
#include <stdint.h>

#include "blip2ipc.h"

/* An HTTP-level failure: the status, and the OpenAI error object's fields
 * ({"error": {"message", "type", "param", "code"}}). */
typedef struct b2d_http_error {
    int status;          /* 400, 401, 404, 405, 413, 429, 500, 503 */
    char type[32];       /* "invalid_request_error", "authentication_error",
                            "rate_limit_error", "server_error" */
    char code[40];       /* the protocol's code ("out_of_range", "busy") or an
                            HTTP one ("bad_json", "bad_base64", "not_found") */
    char param[64];      /* the field concerned, or "" */
    char message[512];   /* one line of English */
} b2d_http_error;

/* Fills *e; returns -1 (so callers can `return b2d_http_fail(...)`). */
int b2d_http_fail(b2d_http_error *e, int status, const char *code, const char *param,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* *e for a protocol error code (B2IPC_E*) with its field and message: the
 * status it maps to (docs/http.md: 400 bad input, 413 too large an image,
 * 429 busy, 503 shutting down or out of memory, 500 internal). */
void b2d_http_from_code(b2d_http_error *e, int code, const char *field, const char *message);
/* The error object as JSON text (caller frees), NULL if out of memory. */
char *b2d_http_error_json(const b2d_http_error *e);

/* A generate request built from an HTTP request.  Owns everything
 * rq.generate points at. */
typedef struct b2d_gen {
    b2ipc_request rq;     /* op generate, image inline */
    uint8_t *image;       /* the decoded image bytes (owned) */
    size_t image_len;
    char *prompt;         /* owned, or NULL (a caption) */
    char **stop;          /* owned, n_stop strings */
    uint32_t n_stop;
    int stream;           /* chat: "stream": true */
    int include_usage;    /* chat: stream_options.include_usage */
    int n;                /* chat: choices asked for (1 .. 16) */
    char model[128];      /* chat: the "model" field as sent ("" if none) */
} b2d_gen;

void b2d_gen_free(b2d_gen *g);

/* Parses an OpenAI chat completion request (JSON body of len bytes) into
 * *g (freed with b2d_gen_free, also after a failure).  lim: the daemon's
 * limits (max_image_bytes applies to the decoded image, max_prompt_bytes
 * to the built prompt).  The result has passed b2ipc_request_validate.
 * Returns 0, or -1 with *err filled (400/413). */
int b2d_chat_parse(const char *body, size_t len, const b2ipc_limits *lim, b2d_gen *g,
                   b2d_http_error *err);

/* One query parameter of POST /v1/caption (URL-decoded by the server). */
typedef struct b2d_kv {
    const char *key, *value;
} b2d_kv;

/* Builds the generate request of POST /v1/caption (answered with JSON,
 * never streamed) from its query parameters (prompt, question, and the
 * protocol's generation parameters by name; stop may repeat) and the raw image body (copied).  Unknown
 * parameters are refused (400), as the socket refuses unknown fields. */
int b2d_caption_parse(const b2d_kv *kv, size_t n_kv, const void *image, size_t image_len,
                      const b2ipc_limits *lim, b2d_gen *g, b2d_http_error *err);

/* Streams a text with its surrounding whitespace removed, as blip2ctl
 * prints it: leading whitespace is dropped, trailing whitespace is held
 * back until more text follows it, so the concatenated output is the
 * trimmed text. */
typedef struct b2d_trim {
    int started;
    size_t held;          /* bytes of whitespace held back */
    char hold[256];
} b2d_trim;

/* Feeds a piece; writes what may be sent now to out (capacity cap, which
 * must be at least len + sizeof t->hold) and returns its length.  Whitespace
 * beyond the hold buffer is sent anyway (a run of 256 spaces inside a text). */
size_t b2d_trim_feed(b2d_trim *t, const char *piece, size_t len, char *out, size_t cap);

/* "stop" (eos, stop) or "length" (length, canceled). */
const char *b2d_openai_finish(b2ipc_finish f);

/* The chat.completion object for a done reply (choices from its
 * sequences, texts trimmed; usage); caller frees.  NULL if out of memory. */
char *b2d_chat_response(const char *id, long long created, const char *model,
                        const b2ipc_reply *done);
/* One chat.completion.chunk: choice `index` with delta content (len bytes,
 * may be NULL for none), role "assistant" if `role`, finish_reason if
 * finish is not NULL.  With usage (a done reply) and index < 0: the usage
 * chunk (choices []).  Caller frees. */
char *b2d_chat_chunk(const char *id, long long created, const char *model, int index,
                     int role, const char *content, size_t len, const char *finish,
                     const b2ipc_reply *usage);
/* The JSON answer of POST /v1/caption (the fields of blip2ctl --json:
 * text trimmed, texts, ids, finish, prompt_tokens, cached, seed, timings). */
char *b2d_caption_response(const b2ipc_reply *done);

/* Validates and decodes base64 (RFC 4648, '=' padding optional, no
 * whitespace): 0 with *out (caller frees) and *out_len, or -1 when the
 * text is not base64 or decodes to more than max bytes. */
int b2d_base64_decode(const char *s, size_t len, size_t max, uint8_t **out, size_t *out_len);

#endif
