/*
 * bench_service.c - load generator for a running blip2d: N client threads,
 * each with its own connection, send R generate requests one after another
 * (same image, so after the first request the feature cache serves the
 * vision stage and the run measures the language model and the batching of
 * decode steps across clients).  Prints aggregate tokens/s (all new tokens
 * over the wall time, prefill included), the decode rate (each client's
 * mean decode tokens/s as the daemon reports it in done.timings, summed over
 * the clients, whose requests overlap) and per-request latency
 * percentiles.  A benchmark, never a test.
 *
 *   bench_service --socket PATH --image FILE [--clients N] [--requests R]
 *                 [--max-new-tokens T] [--prompt TEXT]
 */
#include "blip2ipc.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *sock_path, *prompt;
static uint8_t *img;
static size_t img_len;
static int n_req = 4, max_new = 20;

typedef struct worker {
    pthread_t th;
    double *lat;     /* (n_req) ms */
    long tokens;
    double decode_tps_sum;
    int errors;
} worker;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads until the terminal reply of id; returns 0 with *rp filled (caller frees). */
static int read_terminal(int fd, b2ipc_reader *rd, uint64_t id, b2ipc_reply *rp)
{
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return -1;
        size_t off = 0;
        while (off < (size_t)n) {
            size_t used;
            int rc = b2ipc_reader_feed(rd, buf + off, (size_t)n - off, &used);
            off += used;
            if (rc < 0) return -1;
            if (rc == 0) break;
            const uint8_t *p;
            size_t len;
            b2ipc_reader_frame(rd, &p, &len);
            if (b2ipc_decode_reply(p, len, rp, NULL) < 0) return -1;
            if (rp->id == id && (rp->type == B2IPC_REPLY_DONE || rp->type == B2IPC_REPLY_ERROR)) return 0;
            b2ipc_reply_free(rp);
        }
    }
}

static void *run(void *arg)
{
    worker *w = arg;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "bench_service: cannot connect to %s: %s\n", sock_path, strerror(errno));
        w->errors = n_req;
        return NULL;
    }
    b2ipc_reader rd;
    b2ipc_reader_init(&rd, 0);
    for (int i = 0; i < n_req; i++) {
        b2ipc_request rq;
        b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
        rq.id = (uint64_t)i + 1;
        rq.generate.image = img;
        rq.generate.image_len = img_len;
        rq.generate.prompt = prompt;
        rq.generate.params.max_new_tokens = (uint32_t)max_new;
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        b2ipc_error err;
        double t0 = now_ms();
        b2ipc_reply rp;
        int bad = b2ipc_encode_request(&sb, &rq, NULL, &err) < 0 || write_all(fd, sb.data, sb.size) < 0 ||
                  read_terminal(fd, &rd, rq.id, &rp) < 0;
        msgpack_sbuffer_destroy(&sb);
        w->lat[i] = now_ms() - t0;
        if (bad) { w->errors++; break; }
        if (rp.type == B2IPC_REPLY_DONE) {
            w->tokens += rp.done.seqs[0].n_ids > 0 ? (long)rp.done.seqs[0].n_ids - 1 : 0;
            w->decode_tps_sum += rp.done.timings.tokens_per_s;
        } else {
            fprintf(stderr, "bench_service: error %s: %s\n", rp.error.code_name ? rp.error.code_name : "?", rp.error.message);
            w->errors++;
        }
        b2ipc_reply_free(&rp);
    }
    b2ipc_reader_destroy(&rd);
    close(fd);
    return NULL;
}

/* The daemon's decoder counters (status.engine); 0 on success. */
static int engine_stats(b2ipc_status *out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), rc = -1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) goto out;
    b2ipc_request rq;
    b2ipc_request_init(&rq, B2IPC_OP_STATUS);
    rq.id = 1;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    b2ipc_reader rd;
    b2ipc_reader_init(&rd, 0);
    b2ipc_reply rp;
    if (b2ipc_encode_request(&sb, &rq, NULL, NULL) == 0 && write_all(fd, sb.data, sb.size) == 0) {
        uint8_t buf[65536];
        ssize_t n;
        while (rc < 0 && (n = recv(fd, buf, sizeof buf, 0)) > 0) {
            size_t used;
            if (b2ipc_reader_feed(&rd, buf, (size_t)n, &used) == 1) {
                const uint8_t *p;
                size_t len;
                b2ipc_reader_frame(&rd, &p, &len);
                if (b2ipc_decode_reply(p, len, &rp, NULL) == 0) {
                    if (rp.type == B2IPC_REPLY_STATUS) { *out = rp.status; rc = 0; }
                    b2ipc_reply_free(&rp);
                }
                break;
            }
        }
    }
    b2ipc_reader_destroy(&rd);
    msgpack_sbuffer_destroy(&sb);
out:
    if (fd >= 0) close(fd);
    return rc;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, 0, 's'}, {"image", required_argument, 0, 'i'},
        {"clients", required_argument, 0, 'c'}, {"requests", required_argument, 0, 'r'},
        {"max-new-tokens", required_argument, 0, 'n'}, {"prompt", required_argument, 0, 'p'}, {0, 0, 0, 0},
    };
    const char *image = NULL;
    int clients = 1, c;
    while ((c = getopt_long(argc, argv, "s:i:c:r:n:p:", opts, NULL)) != -1) {
        switch (c) {
        case 's': sock_path = optarg; break;
        case 'i': image = optarg; break;
        case 'c': clients = atoi(optarg); break;
        case 'r': n_req = atoi(optarg); break;
        case 'n': max_new = atoi(optarg); break;
        case 'p': prompt = optarg; break;
        default: return 2;
        }
    }
    if (!sock_path || !image || clients < 1 || clients > 256 || n_req < 1) {
        fprintf(stderr, "usage: bench_service --socket PATH --image FILE [--clients N] [--requests R] "
                        "[--max-new-tokens T] [--prompt TEXT]\n");
        return 2;
    }
    FILE *f = fopen(image, "rb");
    if (!f) { perror(image); return 1; }
    fseek(f, 0, SEEK_END);
    img_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    img = malloc(img_len);
    if (!img || fread(img, 1, img_len, f) != img_len) { perror(image); return 1; }
    fclose(f);
    /* warm the feature cache so every client measures the language model */
    worker warm = {.lat = calloc((size_t)n_req, sizeof(double))};
    int keep = n_req;
    n_req = 1;
    run(&warm);
    n_req = keep;
    free(warm.lat);
    worker *w = calloc((size_t)clients, sizeof *w);
    b2ipc_status st0 = {0}, st1 = {0};
    int have_stats = engine_stats(&st0) == 0;
    double t0 = now_ms();
    for (int i = 0; i < clients; i++) {
        w[i].lat = calloc((size_t)n_req, sizeof(double));
        pthread_create(&w[i].th, NULL, run, &w[i]);
    }
    long tokens = 0;
    int errors = 0;
    double decode_tps = 0; /* the clients' decode rates add up while they overlap */
    double *all = calloc((size_t)clients * n_req, sizeof(double));
    for (int i = 0; i < clients; i++) {
        pthread_join(w[i].th, NULL);
        tokens += w[i].tokens;
        errors += w[i].errors;
        decode_tps += w[i].decode_tps_sum / n_req;
        memcpy(all + (size_t)i * n_req, w[i].lat, sizeof(double) * n_req);
    }
    double wall = now_ms() - t0;
    have_stats = have_stats && engine_stats(&st1) == 0;
    size_t n = (size_t)clients * n_req;
    qsort(all, n, sizeof(double), cmpd);
    /* nearest-rank percentiles */
    size_t i50 = (n + 1) / 2 - 1, i95 = (size_t)((95 * n + 99) / 100) - 1;
    double dsteps = (double)(st1.engine.decode_steps - st0.engine.decode_steps);
    double dtok = (double)(st1.engine.decode_tokens - st0.engine.decode_tokens);
    double dms = st1.engine.decode_ms - st0.engine.decode_ms;
    printf("clients %d  requests %zu  errors %d  tokens %ld  wall %.0f ms  aggregate %.2f tokens/s  "
           "per-request decode sum %.2f tokens/s  latency p50 %.0f ms  p95 %.0f ms\n",
           clients, n, errors, tokens, wall, tokens / (wall / 1e3), decode_tps, all[i50], all[i95]);
    if (have_stats && dms > 0)
        printf("  engine: decode-only steps %.0f, %.2f rows/step, %.0f ms/step, decode throughput %.2f tokens/s; "
               "prefill steps %llu, %.0f ms\n",
               dsteps, dtok / dsteps, dms / dsteps, dtok / (dms / 1e3),
               (unsigned long long)(st1.engine.prefill_steps - st0.engine.prefill_steps),
               st1.engine.prefill_ms - st0.engine.prefill_ms);
    for (int i = 0; i < clients; i++) free(w[i].lat);
    free(w);
    free(all);
    free(img);
    return errors ? 1 : 0;
}
