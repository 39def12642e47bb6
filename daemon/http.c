/*
 * http.c - blip2d's HTTP server (--http, docs/http.md), on libmicrohttpd.
 *
 *   listening socket (TCP or Unix, made here) --MHD, a thread per
 *   connection (at most max_connections)--> access handler:
 *     1st call: headers complete -> route, auth (Bearer token), body size
 *               from Content-Length (413 before reading it)
 *     body:     appended up to max_body (413 beyond)
 *     last:     GET /, /app.js, /app.css    the page (embedded, strict CSP)
 *               GET /health, /metrics, /v1/models
 *               POST /v1/caption            raw image body -> JSON
 *               POST /v1/chat/completions   JSON -> JSON, or SSE when stream
 *   generate endpoints: http_api.c builds the protocol request, checked
 *   against the core's limits; http_backend.c submits it to the core (the
 *   one admission and scheduler, frontend.h) as a client keyed by the
 *   peer's address; this connection's thread waits for the replies while
 *   watching the client's socket: a client that hangs up cancels.
 *   A watchdog thread closes connections that do not deliver a complete
 *   request within the timeout (slow headers or bodies) - MHD's own timeout
 *   only counts silence.
 *
 * Nothing here touches the socket loop: a busy or hostile HTTP client costs
 * HTTP threads (bounded by max_connections) and the requests it gets
 * admitted, like any socket client.
 */
#include "http.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* the page, embedded by daemon/http_page.S */
extern const char b2d_page_html[], b2d_page_html_end[];
extern const char b2d_page_js[], b2d_page_js_end[];
extern const char b2d_page_css[], b2d_page_css_end[];

#define PAGE_CSP "default-src 'none'; script-src 'self'; style-src 'self'; img-src blob: data:; " \
                 "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* One connection, for the watchdog (the MHD socket context). */
typedef struct hconn {
    int fd;
    int busy;              /* a complete request is being answered */
    int killed;
    double since;          /* when it became ready for a request */
    struct hconn *next, *prev;
} hconn;

struct b2d_http {
    struct MHD_Daemon *d;
    b2d_http_config cfg;
    char token[512];
    size_t token_len;
    char unix_path[108];
    int listen_fd;
    b2d_backend *backend;
    b2d_metrics *metrics;
    long long started;
    volatile int shutting_down;
    uint64_t next_id;
    pthread_mutex_t mu;    /* conns, next_id */
    hconn *conns;
    pthread_t watchdog;
    int watchdog_run;
    pthread_cond_t wake;
};

/* Per request (MHD's con_cls). */
typedef struct hreq {
    int endpoint;
    int post;
    int refused;           /* a response was queued at the first call */
    int too_big;           /* the body grew past max_body: discarded */
    int no_memory;         /* the daemon's memory budget was exceeded: discarded */
    GString *body;
    size_t charged;        /* bytes of body charged to the daemon's budget */
    double t0;             /* the complete request */
    int status;
    char code[40];
} hreq;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- responses ---- */

/* Queues rsp with status (kept in r for the access log) and drops our
 * reference to it. */
static enum MHD_Result queue_rsp(struct MHD_Connection *c, hreq *r, int status, struct MHD_Response *rsp)
{
    if (r) r->status = status;
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, rsp);
    MHD_destroy_response(rsp);
    return rc;
}

static enum MHD_Result send_buf(struct MHD_Connection *c, hreq *r, int status, const char *ctype, char *buf,
                                size_t len, int owned)
{
    struct MHD_Response *rsp = owned
        ? MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE)
        : MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_PERSISTENT);
    if (!rsp) {
        if (owned) free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(rsp, "Content-Type", ctype);
    MHD_add_response_header(rsp, "Cache-Control", "no-store");
    MHD_add_response_header(rsp, "X-Content-Type-Options", "nosniff");
    if (status == 429 || status == 503) MHD_add_response_header(rsp, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(rsp, "WWW-Authenticate", "Bearer realm=\"blip2d\"");
    return queue_rsp(c, r, status, rsp);
}

static enum MHD_Result send_json(struct MHD_Connection *c, hreq *r, int status, char *json)
{
    if (!json) return send_buf(c, r, 500, "text/plain", (char *)"out of memory\n", 14, 0);
    return send_buf(c, r, status, "application/json", json, strlen(json), 1);
}

/* Sends the object o (taken; NULL: out of memory) as compact JSON. */
static enum MHD_Result send_json_obj(struct MHD_Connection *c, hreq *r, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return send_json(c, r, status, s);
}

static enum MHD_Result send_error(struct MHD_Connection *c, hreq *r, const b2d_http_error *e)
{
    if (r) snprintf(r->code, sizeof r->code, "%s", e->code);
    return send_json(c, r, e->status, b2d_http_error_json(e));
}

static enum MHD_Result fail(struct MHD_Connection *c, hreq *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result fail(struct MHD_Connection *c, hreq *r, int status, const char *code, const char *fmt, ...)
{
    b2d_http_error e;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    b2d_http_fail(&e, status, code, NULL, "%s", msg);
    return send_error(c, r, &e);
}

/* ---- connections: the watchdog ---- */

static void notify_conn_cb(void *cls, struct MHD_Connection *c, void **socket_context,
                           enum MHD_ConnectionNotificationCode toe)
{
    b2d_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        hconn *k = calloc(1, sizeof *k);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!k) return;
        k->fd = ci ? ci->connect_fd : -1;
        k->since = now_s();
        pthread_mutex_lock(&h->mu);
        k->next = h->conns;
        if (h->conns) h->conns->prev = k;
        h->conns = k;
        pthread_mutex_unlock(&h->mu);
        *socket_context = k;
        b2d_metrics_connections(h->metrics, 1);
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        hconn *k = *socket_context;
        if (!k) return;
        pthread_mutex_lock(&h->mu);
        if (k->prev) k->prev->next = k->next; else h->conns = k->next;
        if (k->next) k->next->prev = k->prev;
        pthread_mutex_unlock(&h->mu);
        free(k);
        *socket_context = NULL;
        b2d_metrics_connections(h->metrics, -1);
    }
}

static hconn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void set_busy(b2d_http *h, struct MHD_Connection *c, int busy)
{
    hconn *k = conn_of(c);
    if (!k) return;
    pthread_mutex_lock(&h->mu);
    k->busy = busy;
    k->since = now_s();
    pthread_mutex_unlock(&h->mu);
}

/* Closes (shutdown) the connections that have not delivered a complete
 * request within the timeout: slow headers, slow bodies, idle keep-alives.
 * The fd stays MHD's: it is shut down, never closed, here, under the lock
 * that NOTIFY_CLOSED takes before MHD closes it. */
static void *watchdog_main(void *arg)
{
    b2d_http *h = arg;
    pthread_mutex_lock(&h->mu);
    while (h->watchdog_run) {
        double t = now_s();
        for (hconn *k = h->conns; k; k = k->next)
            if (!k->busy && !k->killed && k->fd >= 0 && t - k->since > h->cfg.timeout) {
                shutdown(k->fd, SHUT_RDWR);
                k->killed = 1;
            }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&h->wake, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

static int client_fd(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* ---- generate endpoints ---- */

/* A streamed chat completion (SSE), read by MHD through sse_read. */
typedef struct sse {
    b2d_http *h;
    struct MHD_Connection *conn;
    b2d_bjob *job;
    b2d_gen g;
    GString *out;          /* bytes ready to send */
    size_t sent;           /* of out */
    int ended;             /* [DONE] written */
    int n;                 /* choices */
    b2d_trim trim[B2IPC_MAX_SEQS];
    size_t streamed[B2IPC_MAX_SEQS]; /* bytes of trimmed text sent per choice */
    char id[48];
    char model[160];
    long long created;
    double t0, t_last;
    int tokens;
} sse;

static void sse_event(sse *s, char *json)
{
    if (!json) return;
    g_string_append(s->out, "data: ");
    g_string_append(s->out, json);
    g_string_append(s->out, "\n\n");
    free(json);
}

static void sse_token(sse *s, const b2ipc_reply *rp)
{
    double t = now_s();
    if (s->tokens++ == 0) b2d_metrics_ttft(s->h->metrics, t - s->t0);
    else b2d_metrics_token_gap(s->h->metrics, t - s->t_last);
    s->t_last = t;
    uint32_t q = rp->token.seq;
    if (q >= (uint32_t)s->n || !rp->token.text_len) return;
    char out[4096 + sizeof s->trim[0].hold + 8];
    size_t n = b2d_trim_feed(&s->trim[q], rp->token.text, rp->token.text_len, out, sizeof out);
    if (!n) return;
    s->streamed[q] += n;
    sse_event(s, b2d_chat_chunk(s->id, s->created, s->model, (int)q, 0, out, n, NULL, NULL));
}

static size_t trimmed_span(const char *t, size_t n, const char **start)
{
    while (n && (*t == ' ' || *t == '\t' || *t == '\n' || *t == '\r')) { t++; n--; }
    while (n && (t[n - 1] == ' ' || t[n - 1] == '\t' || t[n - 1] == '\n' || t[n - 1] == '\r')) n--;
    *start = t;
    return n;
}

static void sse_done(sse *s, const b2ipc_reply *rp)
{
    uint64_t toks = 0;
    for (uint32_t i = 0; i < rp->done.n_seqs && i < (uint32_t)s->n; i++) {
        const b2ipc_seq *q = &rp->done.seqs[i];
        toks += q->n_ids ? q->n_ids - 1 : 0;
        const char *t;
        size_t n = trimmed_span(q->text, q->text_len, &t);
        /* what the stream held back (or, for beams, everything) */
        if (n > s->streamed[i])
            sse_event(s, b2d_chat_chunk(s->id, s->created, s->model, (int)i, 0, t + s->streamed[i],
                                        n - s->streamed[i], NULL, NULL));
        sse_event(s, b2d_chat_chunk(s->id, s->created, s->model, (int)i, 0, NULL, 0,
                                    b2d_openai_finish(q->finish), NULL));
    }
    b2d_metrics_tokens(s->h->metrics, toks);
    if (s->g.include_usage)
        sse_event(s, b2d_chat_chunk(s->id, s->created, s->model, -1, 0, NULL, 0, NULL, rp));
    g_string_append(s->out, "data: [DONE]\n\n");
    s->ended = 1;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    sse *s = cls;
    (void)pos;
    while (s->sent == s->out->len) {
        g_string_truncate(s->out, 0);
        s->sent = 0;
        if (s->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        b2ipc_reply rp;
        b2d_http_error e;
        int rc = b2d_backend_next(s->job, client_fd(s->conn), &rp, &e);
        if (rc == 0) return MHD_CONTENT_READER_END_WITH_ERROR; /* the client hung up: canceled */
        if (rc < 0) {
            sse_event(s, b2d_http_error_json(&e));
            g_string_append(s->out, "data: [DONE]\n\n");
            s->ended = 1;
            continue;
        }
        if (rp.type == B2IPC_REPLY_TOKEN) {
            sse_token(s, &rp);
        } else if (rp.type == B2IPC_REPLY_DONE) {
            sse_done(s, &rp);
        } else if (rp.type == B2IPC_REPLY_ERROR) {
            b2d_http_from_code(&e, rp.error.code, rp.error.field, rp.error.message);
            sse_event(s, b2d_http_error_json(&e));
            g_string_append(s->out, "data: [DONE]\n\n");
            s->ended = 1;
        }
        b2ipc_reply_free(&rp);
    }
    size_t n = s->out->len - s->sent;
    if (n > max) n = max;
    memcpy(buf, s->out->str + s->sent, n);
    s->sent += n;
    return (ssize_t)n;
}

static void sse_free(void *cls)
{
    sse *s = cls;
    b2d_backend_close(s->job);
    b2d_gen_free(&s->g);
    g_string_free(s->out, TRUE);
    b2d_metrics_inflight(s->h->metrics, -1);
    free(s);
}

static void new_id(b2d_http *h, char *id, size_t n)
{
    pthread_mutex_lock(&h->mu);
    uint64_t k = ++h->next_id;
    pthread_mutex_unlock(&h->mu);
    snprintf(id, n, "chatcmpl-%llx-%llu", (unsigned long long)h->started, (unsigned long long)k);
}

/* The fairness key of an HTTP peer: its address (port left out), kept
 * apart from the uids socket clients are keyed by (< 2^32). */
static uint64_t peer_key(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    uint64_t k = 1469598103934665603ull; /* FNV-1a */
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    const unsigned char *p = NULL;
    size_t n = 0;
    if (sa && sa->sa_family == AF_INET) {
        p = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
        n = 4;
    } else if (sa && sa->sa_family == AF_INET6) {
        p = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        n = 16;
    }
    for (size_t i = 0; i < n; i++) k = (k ^ p[i]) * 1099511628211ull;
    return k | (1ull << 63);
}

/* Runs g to its terminal reply (non-streamed answers), or to its first
 * reply (streams: an early error still gets its status).  Returns 1 with
 * *rp, 0 when the client hung up, -1 with *e. */
static int run_until(b2d_http *h, struct MHD_Connection *c, b2d_bjob *job, int first_only, double t0,
                     b2ipc_reply *rp, b2d_http_error *e)
{
    int tokens = 0;
    double t_last = t0;
    for (;;) {
        int rc = b2d_backend_next(job, client_fd(c), rp, e);
        if (rc <= 0) return rc;
        if (rp->type != B2IPC_REPLY_TOKEN || first_only) return 1;
        double t = now_s();
        if (tokens++ == 0) b2d_metrics_ttft(h->metrics, t - t0);
        else b2d_metrics_token_gap(h->metrics, t - t_last);
        t_last = t;
        b2ipc_reply_free(rp);
    }
}

static enum MHD_Result generate(b2d_http *h, struct MHD_Connection *c, hreq *r, b2d_gen *g, int chat)
{
    b2d_http_error e;
    b2d_bjob *job = NULL;
    if (h->shutting_down) {
        b2d_gen_free(g);
        return fail(c, r, 503, "shutting_down", "blip2d is stopping");
    }
    g->rq.generate.stream = true; /* token events time the answer (metrics) and feed SSE */
    /* the image bytes (decoded from a data: URL, or the caption body's
     * copy) are charged to the memory budget until the job holds its own
     * copy (charged by the core) */
    size_t held = g->image_len;
    int took = held ? b2d_backend_memory_take(h->backend, held) : 0;
    if (took < 0) {
        b2d_gen_free(g);
        return took == -2 ? fail(c, r, 413, "too_large", "the image alone needs more memory than the "
                                 "daemon's budget (--max-memory)")
                          : fail(c, r, 429, "busy", "the daemon's memory budget (--max-memory) is in use; try "
                                 "again shortly");
    }
    int sub_rc = b2d_backend_submit(h->backend, peer_key(c), &g->rq, &job, &e);
    free(g->image); /* the job has its copy */
    g->image = NULL;
    g->image_len = 0;
    g->rq.generate.image = NULL;
    g->rq.generate.image_len = 0;
    if (held) b2d_backend_memory(h->backend, -(long long)held);
    if (sub_rc < 0) {
        b2d_gen_free(g);
        return send_error(c, r, &e);
    }
    b2d_metrics_inflight(h->metrics, 1);
    b2ipc_reply rp;
    int rc = run_until(h, c, job, g->stream, r->t0, &rp, &e);
    if (rc == 0) { /* hung up: canceled by closing the job */
        b2d_backend_close(job);
        b2d_gen_free(g);
        b2d_metrics_inflight(h->metrics, -1);
        r->status = 499;
        snprintf(r->code, sizeof r->code, "client_closed");
        return MHD_NO;
    }
    if (rc < 0 || rp.type == B2IPC_REPLY_ERROR) {
        if (rc > 0) {
            b2d_http_from_code(&e, rp.error.code, rp.error.field, rp.error.message);
            if (chat) { /* name the field as the client did */
                if (strcmp(e.param, "max_new_tokens") == 0) snprintf(e.param, sizeof e.param, "max_tokens");
                if (!e.param[0] || strncmp(e.param, "image", 5) == 0 || strcmp(e.param, "prompt") == 0)
                    if (e.status < 500 && e.status != 429) snprintf(e.param, sizeof e.param, "messages");
            }
            b2ipc_reply_free(&rp);
        }
        b2d_backend_close(job);
        b2d_gen_free(g);
        b2d_metrics_inflight(h->metrics, -1);
        return send_error(c, r, &e);
    }
    if (!g->stream) {
        char id[48];
        new_id(h, id, sizeof id);
        char *json = NULL;
        if (rp.type == B2IPC_REPLY_DONE) {
            uint64_t toks = 0;
            for (uint32_t i = 0; i < rp.done.n_seqs; i++)
                toks += rp.done.seqs[i].n_ids ? rp.done.seqs[i].n_ids - 1 : 0;
            b2d_metrics_tokens(h->metrics, toks);
            json = chat ? b2d_chat_response(id, (long long)time(NULL), g->model[0] ? g->model : "blip2", &rp)
                        : b2d_caption_response(&rp);
        }
        b2ipc_reply_free(&rp);
        b2d_backend_close(job);
        b2d_gen_free(g);
        b2d_metrics_inflight(h->metrics, -1);
        return send_json(c, r, 200, json);
    }
    /* a stream: its first reply is in; the rest is read by sse_read */
    sse *s = calloc(1, sizeof *s);
    if (!s) {
        b2ipc_reply_free(&rp);
        b2d_backend_close(job);
        b2d_gen_free(g);
        b2d_metrics_inflight(h->metrics, -1);
        return fail(c, r, 503, "no_memory", "out of memory");
    }
    s->h = h;
    s->conn = c;
    s->job = job;
    s->g = *g;
    s->out = g_string_new(NULL);
    s->n = g->n;
    s->t0 = r->t0;
    s->created = (long long)time(NULL);
    snprintf(s->model, sizeof s->model, "%s", g->model[0] ? g->model : "blip2");
    new_id(h, s->id, sizeof s->id);
    for (int i = 0; i < s->n; i++) /* the first chunk of each choice: the role */
        sse_event(s, b2d_chat_chunk(s->id, s->created, s->model, i, 1, "", 0, NULL, NULL));
    if (rp.type == B2IPC_REPLY_TOKEN) sse_token(s, &rp);
    else if (rp.type == B2IPC_REPLY_DONE) sse_done(s, &rp);
    b2ipc_reply_free(&rp);
    struct MHD_Response *rsp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, s, sse_free);
    if (!rsp) {
        sse_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(rsp, "Content-Type", "text/event-stream");
    MHD_add_response_header(rsp, "Cache-Control", "no-store");
    MHD_add_response_header(rsp, "X-Content-Type-Options", "nosniff");
    return queue_rsp(c, r, 200, rsp);
}

/* ---- the other endpoints ---- */

typedef struct kvs {
    b2d_kv kv[64];
    size_t n;
    int overflow;
} kvs;

static enum MHD_Result collect_kv(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    kvs *k = cls;
    (void)kind;
    if (k->n == sizeof k->kv / sizeof *k->kv) {
        k->overflow = 1;
        return MHD_NO;
    }
    k->kv[k->n].key = key;
    k->kv[k->n++].value = value;
    return MHD_YES;
}

static enum MHD_Result caption(b2d_http *h, struct MHD_Connection *c, hreq *r)
{
    kvs q = {0};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, collect_kv, &q);
    if (q.overflow) return fail(c, r, 400, "too_large", "more than 64 query parameters");
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (ct && strncasecmp(ct, "image/", 6) != 0 && strncasecmp(ct, "application/octet-stream", 24) != 0)
        return fail(c, r, 400, "bad_content_type",
                    "Content-Type must be image/* (or application/octet-stream): the body is the image file");
    b2d_gen g;
    b2d_http_error e;
    if (b2d_caption_parse(q.kv, q.n, r->body->str, r->body->len, b2d_backend_limits(h->backend), &g, &e) < 0) {
        b2d_gen_free(&g);
        return send_error(c, r, &e);
    }
    return generate(h, c, r, &g, 0);
}

static enum MHD_Result chat(b2d_http *h, struct MHD_Connection *c, hreq *r)
{
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (ct && strncasecmp(ct, "application/json", 16) != 0)
        return fail(c, r, 400, "bad_content_type", "Content-Type must be application/json");
    b2d_gen g;
    b2d_http_error e;
    if (b2d_chat_parse(r->body->str, r->body->len, b2d_backend_limits(h->backend), &g, &e) < 0) {
        b2d_gen_free(&g);
        return send_error(c, r, &e);
    }
    return generate(h, c, r, &g, 1);
}

/* The daemon's status, as /health, /v1/models and /metrics read it: st's
 * strings point into txt; free st with b2ipc_reply_free. */
typedef struct status_snap {
    b2ipc_reply st;
    b2d_status_text txt;
    b2d_http_error e;
} status_snap;

static int status_get(b2d_http *h, status_snap *s)
{
    return b2d_backend_status(h->backend, &s->st, &s->txt, &s->e);
}

static enum MHD_Result health(b2d_http *h, struct MHD_Connection *c, hreq *r)
{
    status_snap s;
    if (h->shutting_down)
        return send_json(c, r, 503, strdup("{\"status\":\"shutting_down\"}"));
    if (status_get(h, &s) < 0)
        return send_json(c, r, 503, strdup("{\"status\":\"unavailable\"}"));
    const b2ipc_status *st = &s.st.status;
    json_t *o = json_pack("{s:s,s:s,s:I,s:I}", "status", "ok", "model", st->model.name ? st->model.name : "",
                          "queue_depth", (json_int_t)st->queue_depth, "active", (json_int_t)st->active);
    b2ipc_reply_free(&s.st);
    return send_json_obj(c, r, 200, o);
}

static enum MHD_Result models(b2d_http *h, struct MHD_Connection *c, hreq *r)
{
    status_snap s;
    if (status_get(h, &s) < 0) return send_error(c, r, &s.e);
    const b2ipc_status *st = &s.st.status;
    json_t *o = json_pack("{s:s,s:[{s:s,s:s,s:I,s:s,s:s,s:s}]}", "object", "list", "data", "id",
                          st->model.name ? st->model.name : "blip2", "object", "model", "created",
                          (json_int_t)h->started, "owned_by", "blip2d", "family",
                          st->model.family ? st->model.family : "", "dtype",
                          st->model.dtype ? st->model.dtype : "");
    b2ipc_reply_free(&s.st);
    return send_json_obj(c, r, 200, o);
}

static enum MHD_Result metrics(b2d_http *h, struct MHD_Connection *c, hreq *r)
{
    status_snap s;
    int have = status_get(h, &s) == 0;
    size_t len;
    char *text = b2d_metrics_render(h->metrics, have ? &s.st : NULL, &len);
    if (have) b2ipc_reply_free(&s.st);
    if (!text) return fail(c, r, 503, "no_memory", "out of memory");
    return send_buf(c, r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, 1);
}

static enum MHD_Result page(struct MHD_Connection *c, hreq *r, const char *url)
{
    const char *p, *end, *type;
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        p = b2d_page_html; end = b2d_page_html_end; type = "text/html; charset=utf-8";
    } else if (strcmp(url, "/app.js") == 0) {
        p = b2d_page_js; end = b2d_page_js_end; type = "text/javascript; charset=utf-8";
    } else {
        p = b2d_page_css; end = b2d_page_css_end; type = "text/css; charset=utf-8";
    }
    struct MHD_Response *rsp = MHD_create_response_from_buffer((size_t)(end - p), (void *)p, MHD_RESPMEM_PERSISTENT);
    if (!rsp) return MHD_NO;
    MHD_add_response_header(rsp, "Content-Type", type);
    MHD_add_response_header(rsp, "Content-Security-Policy", PAGE_CSP);
    MHD_add_response_header(rsp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(rsp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(rsp, "Cache-Control", "no-cache");
    return queue_rsp(c, r, 200, rsp);
}

/* ---- routing ---- */

static int route(const char *url, const char *method, int *post)
{
    *post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/v1/chat/completions") == 0) return B2D_EP_CHAT;
    if (strcmp(url, "/v1/caption") == 0) return B2D_EP_CAPTION;
    if (strcmp(url, "/v1/models") == 0) return B2D_EP_MODELS;
    if (strcmp(url, "/health") == 0) return B2D_EP_HEALTH;
    if (strcmp(url, "/metrics") == 0) return B2D_EP_METRICS;
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0 || strcmp(url, "/app.js") == 0 ||
        strcmp(url, "/app.css") == 0)
        return B2D_EP_PAGE;
    return B2D_EP_OTHER;
}

static int authorized(b2d_http *h, struct MHD_Connection *c)
{
    if (!h->token_len) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0) return 0;
    a += 7;
    size_t n = strlen(a);
    unsigned char diff = n != h->token_len;
    for (size_t i = 0; i < h->token_len; i++) /* constant time in the token */
        diff |= (unsigned char)(h->token[i] ^ (i < n ? a[i] : 0));
    return diff == 0;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    b2d_http *h = cls;
    hreq *r = *con_cls;
    (void)version;
    if (!r) { /* the headers are in */
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *con_cls = r;
        r->endpoint = route(url, method, &r->post);
        int want_post = r->endpoint == B2D_EP_CHAT || r->endpoint == B2D_EP_CAPTION;
        if (r->endpoint == B2D_EP_OTHER) {
            r->refused = 1;
            return fail(c, r, 404, "not_found", "no such endpoint: %.200s (docs/http.md lists them)", url);
        }
        if ((want_post && !r->post) || (!want_post && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)) {
            r->refused = 1;
            return fail(c, r, 405, "method_not_allowed", "%.200s takes %s", url, want_post ? "POST" : "GET");
        }
        if (r->endpoint != B2D_EP_HEALTH && r->endpoint != B2D_EP_PAGE && !authorized(h, c)) {
            r->refused = 1;
            return fail(c, r, 401, "invalid_api_key",
                        "a valid bearer token is required (Authorization: Bearer ...; --http-token-file)");
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > h->cfg.max_body) {
            r->refused = 1;
            return fail(c, r, 413, "body_too_large", "the body (%.20s bytes) is above the limit of %zu bytes", cl,
                        h->cfg.max_body);
        }
        r->body = g_string_new(NULL);
        return MHD_YES;
    }
    if (*upload_size) {
        /* MHD takes no response in the middle of a body: a body growing past
         * the limit (chunked) is discarded and answered 413 at its end; the
         * watchdog cuts off one that never ends */
        if (!r->too_big && r->body->len + *upload_size > h->cfg.max_body) {
            r->too_big = 1;
            g_string_truncate(r->body, 0);
        }
        if (!r->too_big && !r->no_memory && !r->refused) {
            /* the body is charged to the daemon's memory budget as it
             * arrives; beyond the budget it is discarded and answered 429 busy */
            if (b2d_backend_memory(h->backend, (long long)*upload_size)) {
                b2d_backend_memory(h->backend, -(long long)*upload_size);
                r->no_memory = 1;
                g_string_truncate(r->body, 0);
            } else {
                r->charged += *upload_size;
                g_string_append_len(r->body, upload, (gssize)*upload_size);
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->refused) return MHD_YES;
    if (r->too_big) {
        r->refused = 1;
        return fail(c, r, 413, "body_too_large", "the body is above the limit of %zu bytes", h->cfg.max_body);
    }
    if (r->no_memory) {
        r->refused = 1;
        return fail(c, r, 429, "busy", "the daemon's memory budget (--max-memory) is in use; try again shortly");
    }
    /* the whole request is in */
    r->t0 = now_s();
    set_busy(h, c, 1);
    switch (r->endpoint) {
    case B2D_EP_CHAT: return chat(h, c, r);
    case B2D_EP_CAPTION: return caption(h, c, r);
    case B2D_EP_MODELS: return models(h, c, r);
    case B2D_EP_HEALTH: return health(h, c, r);
    case B2D_EP_METRICS: return metrics(h, c, r);
    default: return page(c, r, url);
    }
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    b2d_http *h = cls;
    hreq *r = *con_cls;
    (void)toe;
    if (!r) return;
    b2d_metrics_request(h->metrics, r->endpoint, r->status, r->code, r->t0 ? now_s() - r->t0 : 0);
    if (r->status >= 400 || b2d_log_level >= B2D_LOG_DEBUG)
        LOG_DEBUG("http: %s -> %d %s", r->endpoint < B2D_EP_OTHER ? "request" : "unknown", r->status, r->code);
    if (r->body) g_string_free(r->body, TRUE);
    if (r->charged) b2d_backend_memory(h->backend, -(long long)r->charged);
    free(r);
    *con_cls = NULL;
    set_busy(h, c, 0);
}

static void mhd_log_cb(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    LOG_DEBUG("http: %s", line);
}

/* ---- start and stop ---- */

/* The listening socket for addr; -1 with msg.  *loopback: whether only
 * this machine can reach it. */
static int listen_on(b2d_http *h, const char *addr, int *loopback, char *msg, size_t ml)
{
    if (strncmp(addr, "unix:", 5) == 0) {
        const char *path = addr + 5;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (!*path || strlen(path) >= sizeof sa.sun_path) {
            snprintf(msg, ml, "--http %s: the socket path is empty or too long", addr);
            return -1;
        }
        strcpy(sa.sun_path, path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
            if (probe >= 0) close(probe);
            if (live) {
                snprintf(msg, ml, "--http %s: another server is listening there", addr);
                close(fd);
                return -1;
            }
            unlink(path);
        }
        mode_t old = umask(0117);
        int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sa, sizeof sa);
        umask(old);
        if (rc < 0 || listen(fd, 64) < 0) {
            snprintf(msg, ml, "--http %s: %s", addr, strerror(errno));
            if (fd >= 0) close(fd);
            return -1;
        }
        snprintf(h->unix_path, sizeof h->unix_path, "%s", path);
        *loopback = 1;
        return fd;
    }
    /* HOST:PORT or [V6]:PORT */
    char host[256];
    const char *port;
    if (addr[0] == '[') {
        const char *e = strchr(addr, ']');
        if (!e || e[1] != ':' || (size_t)(e - addr - 1) >= sizeof host) goto bad;
        memcpy(host, addr + 1, (size_t)(e - addr - 1));
        host[e - addr - 1] = '\0';
        port = e + 2;
    } else {
        const char *e = strrchr(addr, ':');
        if (!e || (size_t)(e - addr) >= sizeof host) goto bad;
        memcpy(host, addr, (size_t)(e - addr));
        host[e - addr] = '\0';
        port = e + 1;
    }
    char *pe;
    long pn = strtol(port, &pe, 10);
    if (!*port || *pe || pn < 1 || pn > 65535) goto bad;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE}, *ai;
    int gr = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (gr) {
        snprintf(msg, ml, "--http %s: %s (give a numeric address: 127.0.0.1:PORT, [::1]:PORT)", addr,
                 gai_strerror(gr));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd >= 0 && ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0) {
        snprintf(msg, ml, "--http %s: %s", addr, strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    if (ai->ai_family == AF_INET)
        *loopback = (ntohl(((struct sockaddr_in *)ai->ai_addr)->sin_addr.s_addr) >> 24) == 127;
    else
        *loopback = IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr);
    freeaddrinfo(ai);
    return fd;
bad:
    snprintf(msg, ml, "--http %s: not 127.0.0.1:PORT, [::1]:PORT, HOST:PORT or unix:PATH", addr);
    return -1;
}

static int read_token(b2d_http *h, const char *path, char *msg, size_t ml)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(msg, ml, "--http-token-file %s: %s", path, strerror(errno));
        return -1;
    }
    size_t n = fread(h->token, 1, sizeof h->token - 1, f);
    fclose(f);
    while (n && (h->token[n - 1] == '\n' || h->token[n - 1] == '\r' || h->token[n - 1] == ' ')) n--;
    h->token[n] = '\0';
    if (n < 16 || strlen(h->token) != n || strpbrk(h->token, " \t\r\n")) {
        snprintf(msg, ml, "--http-token-file %s: the token must be 16 to 511 printable bytes on one line", path);
        return -1;
    }
    h->token_len = n;
    return 0;
}

int b2d_http_start(const b2d_http_config *cfg, b2d_http **out, char *msg, size_t ml)
{
    *out = NULL;
    b2d_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(msg, ml, "out of memory");
        return -1;
    }
    h->cfg = *cfg;
    h->listen_fd = -1;
    h->started = (long long)time(NULL);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->wake, NULL);
    int loopback = 0;
    if (cfg->token_file && read_token(h, cfg->token_file, msg, ml) < 0) goto fail;
    if ((h->listen_fd = listen_on(h, cfg->addr, &loopback, msg, ml)) < 0) goto fail;
    if (!loopback && !h->token_len) {
        snprintf(msg, ml, "--http %s is reachable from other machines: give --http-token-file "
                          "(bearer-token authentication), or listen on 127.0.0.1, [::1] or unix:PATH", cfg->addr);
        goto fail;
    }
    h->backend = b2d_backend_new(cfg->core);
    h->metrics = b2d_metrics_new();
    if (!h->backend || !h->metrics) {
        snprintf(msg, ml, "out of memory");
        goto fail;
    }
    h->watchdog_run = 1;
    if (pthread_create(&h->watchdog, NULL, watchdog_main, h) != 0) {
        h->watchdog_run = 0;
        snprintf(msg, ml, "cannot start the HTTP watchdog thread");
        goto fail;
    }
    h->d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG,
        0, NULL, NULL, access_cb, h,
        MHD_OPTION_LISTEN_SOCKET, h->listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, cfg->max_header,
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512u << 10),
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, h,
        MHD_OPTION_NOTIFY_CONNECTION, notify_conn_cb, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log_cb, h,
        MHD_OPTION_END);
    if (!h->d) {
        snprintf(msg, ml, "--http %s: libmicrohttpd did not start", cfg->addr);
        goto fail;
    }
    *out = h;
    return 0;
fail:
    b2d_http_stop(h);
    return -1;
}

void b2d_http_shutting_down(b2d_http *h)
{
    if (h) h->shutting_down = 1;
}

/* Up to 2 s for the answers still on their way out (the hard stop
 * answers requests still being prepared right before it stops the front
 * ends): MHD_stop_daemon would cut them off. */
static void wait_answers(b2d_http *h)
{
    const double end = now_s() + 2;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        int busy = 0;
        for (hconn *k = h->conns; k; k = k->next) busy |= k->busy && !k->killed && k->fd >= 0;
        if (!busy || now_s() >= end) break;
        pthread_mutex_unlock(&h->mu);
        nanosleep(&(struct timespec){0, 10 * 1000000L}, NULL);
        pthread_mutex_lock(&h->mu);
    }
    pthread_mutex_unlock(&h->mu);
}

void b2d_http_stop(b2d_http *h)
{
    if (!h) return;
    if (h->d) {
        wait_answers(h);
        MHD_stop_daemon(h->d); /* joins the connection threads */
    }
    if (h->watchdog_run) {
        pthread_mutex_lock(&h->mu);
        h->watchdog_run = 0;
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->watchdog, NULL);
    }
    if (h->listen_fd >= 0) close(h->listen_fd);
    if (h->unix_path[0]) unlink(h->unix_path);
    b2d_backend_free(h->backend);
    b2d_metrics_free(h->metrics);
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
