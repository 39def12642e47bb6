/*
 * http_metrics.c - what GET /metrics reports (docs/http.md): counters and
 * histograms the HTTP threads update under one mutex, and their Prometheus
 * text exposition (format 0.0.4) together with the daemon's status reply
 * (queue depth, active requests, cache, decoder work, memory).
 *
 *   HTTP threads --b2d_metrics_*--> counters (locked)
 *   GET /metrics --b2d_metrics_render(status reply)--> text
 */
#include "http.h"

#include <glib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_STATUS 12
#define N_CODES 48
#define N_BUCKETS 14

static const int statuses[N_STATUS] = { 200, 400, 401, 404, 405, 413, 429, 431, 500, 503, 408, 0 };
static const char *const endpoints[B2D_EP_COUNT] = {
    "/v1/chat/completions", "/v1/caption", "/v1/models", "/health", "/metrics", "/", "other" };
/* seconds; TTFT on a CPU ranges from a few ms (cached, tiny) to a minute */
static const double bounds[N_BUCKETS] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120 };

typedef struct hist {
    uint64_t n[N_BUCKETS + 1]; /* per bucket (not cumulative); the last is +Inf */
    uint64_t count;
    double sum;
} hist;

struct b2d_metrics {
    pthread_mutex_t mu;
    uint64_t requests[B2D_EP_COUNT][N_STATUS];
    struct { char code[40]; uint64_t n; } errors[N_CODES];
    int n_errors;
    int64_t inflight, connections;
    uint64_t tokens;
    hist ttft, gap, duration;
};

b2d_metrics *b2d_metrics_new(void)
{
    b2d_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void b2d_metrics_free(b2d_metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void observe(hist *h, double v)
{
    int i = 0;
    while (i < N_BUCKETS && v > bounds[i]) i++;
    h->n[i]++;
    h->count++;
    h->sum += v;
}

void b2d_metrics_request(b2d_metrics *m, int endpoint, int status, const char *code, double seconds)
{
    if (endpoint < 0 || endpoint >= B2D_EP_COUNT) endpoint = B2D_EP_OTHER;
    int s = 0;
    while (s < N_STATUS - 1 && statuses[s] != status) s++;
    pthread_mutex_lock(&m->mu);
    m->requests[endpoint][s]++;
    if (endpoint == B2D_EP_CHAT || endpoint == B2D_EP_CAPTION) observe(&m->duration, seconds);
    if (code && *code && status >= 400) {
        int i = 0;
        while (i < m->n_errors && strcmp(m->errors[i].code, code) != 0) i++;
        if (i == m->n_errors && i < N_CODES) snprintf(m->errors[m->n_errors++].code, 40, "%s", code);
        if (i < N_CODES) m->errors[i].n++;
    }
    pthread_mutex_unlock(&m->mu);
}

#define ADD(field, d)                  \
    do {                               \
        pthread_mutex_lock(&m->mu);    \
        m->field += (d);               \
        pthread_mutex_unlock(&m->mu);  \
    } while (0)

void b2d_metrics_inflight(b2d_metrics *m, int delta) { ADD(inflight, delta); }
void b2d_metrics_connections(b2d_metrics *m, int delta) { ADD(connections, delta); }
void b2d_metrics_tokens(b2d_metrics *m, uint64_t n) { ADD(tokens, n); }

void b2d_metrics_ttft(b2d_metrics *m, double seconds)
{
    pthread_mutex_lock(&m->mu);
    observe(&m->ttft, seconds);
    pthread_mutex_unlock(&m->mu);
}

void b2d_metrics_token_gap(b2d_metrics *m, double seconds)
{
    pthread_mutex_lock(&m->mu);
    observe(&m->gap, seconds);
    pthread_mutex_unlock(&m->mu);
}

static void put_hist(GString *o, const char *name, const char *help, const hist *h)
{
    g_string_append_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < N_BUCKETS; i++) {
        cum += h->n[i];
        g_string_append_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += h->n[N_BUCKETS];
    g_string_append_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                           (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

static void put(GString *o, const char *name, const char *type, const char *help, double v)
{
    g_string_append_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

/* Resident memory of the process in bytes (from /proc/self/statm), or 0. */
static double rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size, res;
    double v = 0;
    if (f && fscanf(f, "%lu %lu", &size, &res) == 2) v = (double)res * (double)sysconf(_SC_PAGESIZE);
    if (f) fclose(f);
    return v;
}

char *b2d_metrics_render(b2d_metrics *m, const b2ipc_reply *st, size_t *len)
{
    b2d_metrics c;
    pthread_mutex_lock(&m->mu);
    memcpy(&c, m, sizeof c);
    pthread_mutex_unlock(&m->mu);
    GString *o = g_string_sized_new(8192);

    g_string_append(o, "# HELP blip2d_http_requests_total HTTP requests answered, by endpoint and status.\n"
                       "# TYPE blip2d_http_requests_total counter\n");
    for (int e = 0; e < B2D_EP_COUNT; e++)
        for (int s = 0; s < N_STATUS; s++)
            if (c.requests[e][s] || (s == 0 && e <= B2D_EP_CAPTION)) {
                char code[16];
                snprintf(code, sizeof code, statuses[s] ? "%d" : "other", statuses[s]);
                g_string_append_printf(o, "blip2d_http_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n",
                                       endpoints[e], code, (unsigned long long)c.requests[e][s]);
            }
    g_string_append(o, "# HELP blip2d_http_errors_total HTTP requests that failed, by error code.\n"
                       "# TYPE blip2d_http_errors_total counter\n");
    for (int i = 0; i < c.n_errors; i++)
        g_string_append_printf(o, "blip2d_http_errors_total{code=\"%s\"} %llu\n", c.errors[i].code,
                               (unsigned long long)c.errors[i].n);
    put(o, "blip2d_http_in_flight", "gauge", "HTTP generate requests being answered.", (double)c.inflight);
    put(o, "blip2d_http_connections", "gauge", "Open HTTP connections.", (double)c.connections);
    put(o, "blip2d_http_generated_tokens_total", "counter", "Tokens generated for HTTP requests.",
        (double)c.tokens);
    put_hist(o, "blip2d_http_time_to_first_token_seconds",
             "From the complete HTTP request to its first generated token.", &c.ttft);
    put_hist(o, "blip2d_http_token_latency_seconds", "Time between two generated tokens of an HTTP request.",
             &c.gap);
    put_hist(o, "blip2d_http_request_duration_seconds",
             "From the complete HTTP request to the end of its answer (generate endpoints).", &c.duration);
    put(o, "blip2d_resident_memory_bytes", "gauge", "Resident memory of blip2d (mapped weights included).",
        rss_bytes());
    if (st && st->type == B2IPC_REPLY_STATUS) {
        const b2ipc_status *s = &st->status;
        put(o, "blip2d_up", "gauge", "1 when the daemon's scheduler answers.", 1);
        put(o, "blip2d_queue_depth", "gauge", "Requests admitted and waiting (all front ends).", s->queue_depth);
        put(o, "blip2d_active_requests", "gauge", "Requests being worked on (all front ends).", s->active);
        put(o, "blip2d_max_queue", "gauge", "Queue limit; beyond it requests are refused as busy.", s->max_queue);
        put(o, "blip2d_socket_connections", "gauge", "Open protocol connections (HTTP requests hold one each).",
            s->connections);
        put(o, "blip2d_requests_total", "counter", "Generate requests finished (all front ends).",
            (double)s->requests_total);
        put(o, "blip2d_cache_hits_total", "counter", "Image-feature cache hits.", (double)s->cache.hits);
        put(o, "blip2d_cache_misses_total", "counter", "Image-feature cache misses.", (double)s->cache.misses);
        put(o, "blip2d_cache_entries", "gauge", "Images in the feature cache.", (double)s->cache.entries);
        put(o, "blip2d_cache_bytes", "gauge", "Bytes the feature cache holds (charged to the memory budget).",
            (double)s->cache.bytes);
        put(o, "blip2d_cache_capacity_bytes", "gauge", "The feature cache's share of the memory budget.",
            (double)s->cache.capacity_bytes);
        put(o, "blip2d_decode_tokens_total", "counter", "Tokens produced by decode-only steps (all front ends).",
            (double)s->engine.decode_tokens);
        put(o, "blip2d_decode_seconds_total", "counter", "Time of decode-only steps.", s->engine.decode_ms / 1000);
        put(o, "blip2d_prefill_seconds_total", "counter", "Time of steps with a prefill.", s->engine.prefill_ms / 1000);
        put(o, "blip2d_memory_budget_bytes", "gauge", "The memory budget (--max-memory).", (double)s->memory.max);
        g_string_append(o, "# HELP blip2d_memory_used_bytes Bytes charged to the memory budget now, by what holds them.\n"
                           "# TYPE blip2d_memory_used_bytes gauge\n");
        const char *cats[] = {"jobs", "decode", "input", "output", "http"};
        const uint64_t by[] = {s->memory.jobs, s->memory.decode, s->memory.input, s->memory.output, s->memory.http};
        for (int i = 0; i < 5; i++)
            g_string_append_printf(o, "blip2d_memory_used_bytes{kind=\"%s\"} %llu\n", cats[i],
                                   (unsigned long long)by[i]);
        put(o, "blip2d_uptime_seconds", "gauge", "Since the daemon started.", (double)s->uptime_ms / 1000);
    } else {
        put(o, "blip2d_up", "gauge", "1 when the daemon's scheduler answers.", 0);
    }
    *len = o->len;
    char *out = malloc(o->len + 1);
    if (out) memcpy(out, o->str, o->len + 1);
    g_string_free(o, TRUE);
    return out;
}
