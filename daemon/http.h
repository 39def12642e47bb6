/*
 * http.h - blip2d's HTTP front end (--http): an OpenAI-compatible API, a
 * native caption endpoint, health, Prometheus metrics and a browser page
 * (docs/http.md).  Served by libmicrohttpd on threads of its own; every
 * request goes to the daemon's one scheduler through frontend.h (the
 * adapter is http_backend.c), so HTTP and socket clients share its
 * admission, queue, limits, fairness and memory.
 *
 *   http.c          the server: listening, limits, auth, routes, SSE
 *   http_api.c      JSON <-> protocol requests and replies (pure)
 *   http_backend.c  frontend.h for a blocking thread: a request in, its replies out
 *   http_metrics.c  counters and histograms, the Prometheus text
 */
#ifndef B2D_HTTP_H
#define B2D_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "blip2ipc.h"
#include "frontend.h"
#include "http_api.h"

typedef struct b2d_http_config {
    const char *addr;          /* "127.0.0.1:PORT", "[::1]:PORT", "HOST:PORT" or "unix:PATH" */
    const char *token_file;    /* NULL: no authentication (refused for non-loopback addresses) */
    b2d_core *core;            /* the pipeline requests are submitted to */
    int max_connections;       /* open HTTP connections at most (each has a thread) */
    size_t max_body;           /* request body limit in bytes */
    size_t max_header;         /* request line + headers limit in bytes */
    int timeout;               /* seconds: idle connections, and a request must arrive within it */
} b2d_http_config;

typedef struct b2d_http b2d_http;

/* Checks the address and the token file, creates the listening socket and
 * starts the server threads.  Returns 0 and *out, or -1 with the reason in
 * msg (one line). */
int b2d_http_start(const b2d_http_config *cfg, b2d_http **out, char *msg, size_t msg_len);
/* From now on /health answers 503 "shutting_down" and new work is refused. */
void b2d_http_shutting_down(b2d_http *h);
/* Stops the server (running requests are cut off) and frees it; NULL is fine. */
void b2d_http_stop(b2d_http *h);

/* ---- the core, for a blocking thread (http_backend.c) ---- */

typedef struct b2d_backend b2d_backend;
typedef struct b2d_bjob b2d_bjob;

/* NULL if out of memory. */
b2d_backend *b2d_backend_new(b2d_core *core);
void b2d_backend_free(b2d_backend *b);
/* Submits a validated generate request (copied; its id is the job's) as
 * a new client with fairness key user.  0 and *out, or -1 with *err (the
 * core's refusal: 429 busy, 503 shutting_down, ...). */
int b2d_backend_submit(b2d_backend *b, uint64_t user, const b2ipc_request *rq, b2d_bjob **out,
                       b2d_http_error *err);
/* Waits for the job's next reply (token, done or error) while watching
 * watch_fd (the HTTP client's socket, or -1) for a hang-up.  Returns 1 with
 * *rp (free with b2ipc_reply_free), 0 when the client hung up (the request
 * is canceled), -1 with *err when the daemon connection failed. */
int b2d_backend_next(b2d_bjob *j, int watch_fd, b2ipc_reply *rp, b2d_http_error *err);
/* Ends the job, canceling it if it has not finished; NULL is fine. */
void b2d_backend_close(b2d_bjob *j);
/* The daemon's status as a status reply; its strings point into *txt.
 * Returns 0. */
int b2d_backend_status(b2d_backend *b, b2ipc_reply *rp, b2d_status_text *txt, b2d_http_error *err);
/* The limits requests are validated against (the socket's). */
const b2ipc_limits *b2d_backend_limits(b2d_backend *b);
/* The daemon's memory budget (b2d_core_memory): charges (n > 0) or
 * releases (n < 0) what the HTTP thread holds of a request body; 1 while
 * the budget is exceeded. */
int b2d_backend_memory(b2d_backend *b, long long n);
/* Takes n bytes of the budget for an image decoded from a data: URL (held
 * until the request's job has its own copy; b2d_backend_memory(-n) gives
 * them back): 0, -1 when they do not fit now (busy), -2 when n alone is
 * above the budget (too large). */
int b2d_backend_memory_take(b2d_backend *b, size_t n);

/* ---- metrics (http_metrics.c) ---- */

typedef struct b2d_metrics b2d_metrics;

enum { B2D_EP_CHAT, B2D_EP_CAPTION, B2D_EP_MODELS, B2D_EP_HEALTH, B2D_EP_METRICS, B2D_EP_PAGE,
       B2D_EP_OTHER, B2D_EP_COUNT };

b2d_metrics *b2d_metrics_new(void);
void b2d_metrics_free(b2d_metrics *m);
/* A finished HTTP request: its endpoint, status and, for failures, the
 * error code ("busy", "bad_json"). */
void b2d_metrics_request(b2d_metrics *m, int endpoint, int status, const char *code, double seconds);
void b2d_metrics_inflight(b2d_metrics *m, int delta);
void b2d_metrics_connections(b2d_metrics *m, int delta);
/* Time to the first token of a request, the gap between two tokens. */
void b2d_metrics_ttft(b2d_metrics *m, double seconds);
void b2d_metrics_token_gap(b2d_metrics *m, double seconds);
void b2d_metrics_tokens(b2d_metrics *m, uint64_t n);
/* The Prometheus text exposition (version 0.0.4) of the counters, plus the
 * daemon's status (st, a status reply, or NULL when it could not be had).
 * Caller frees; NULL if out of memory. */
char *b2d_metrics_render(b2d_metrics *m, const b2ipc_reply *st, size_t *len);

#endif
