/*
 * main.c - blip2d: command line, model loading, the listening socket, and
 * handing over to the server loop (server.c).
 *
 *   parse flags -> load the model (mapped weights, checked) -> take the
 *   socket systemd passed (LISTEN_FDS), or create one (daemon/sockfile.c:
 *   stale file replaced, a live daemon refused, born 0660) ->
 *   b2d_server_run until SIGTERM/SIGINT or the idle exit -> remove the
 *   socket file, once (SIGTERM may have), and only if it is still ours ->
 *   exit 0.
 */
#include "b2q.h"
#include "daemon.h"
#include "http.h"
#include "log.h"
#include "sigbus.h"
#include "sockfile.h"

#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <fcntl.h>
#include <unistd.h>

extern void openblas_set_num_threads(int);

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: blip2d --model PATH [options]\n"
        "Serve BLIP-2 captioning and visual question answering on a Unix socket.\n\n"
        "  -m, --model PATH        BLIP-2 model to serve: a GGUF file (blip2ctl convert) or a\n"
        "                          Hugging Face folder, converted once into the weights cache\n"
        "      --weights-cache DIR where converted folders are kept (default: $CACHE_DIRECTORY,\n"
        "                          else $XDG_CACHE_HOME/blip2, else ~/.cache/blip2)\n"
        "      --weights-type T    type of that conversion: auto, f32, f16, bf16, q8_0, q4_0\n"
        "                          (default: $BLIP2_WEIGHTS_TYPE, else auto: the fastest on this\n"
        "                          CPU, q8_0 with AVX2; f32 keeps an f32 checkpoint exact; q4_0\n"
        "                          decodes faster still, with 4-bit language-model weights)\n"
        "      --no-weights-cache  load a folder directly (f16/bf16 widened to f32 in memory)\n"
        "      --mlock             lock the mapped weights in memory (needs RLIMIT_MEMLOCK)\n"
        "      --max-pixels N      refuse images above N pixels (default 67108864 = 64 Mpx;\n"
        "                          a 100 Mpx camera needs 100000000)\n"
        "      --precision P       math of the many-row products: f32, bf16, int8 or auto\n"
        "                          (default; env BLIP2_PRECISION): a GGUF of a reduced type\n"
        "                          computes in bf16 where the CPU has native bf16, all else in\n"
        "                          f32; int8: the vision MLP and projection in u8 x s8\n"
        "                          (VNNI; a private int8 copy of them, or the file's, shared,\n"
        "                          from blip2ctl convert --int8-vision, which auto then\n"
        "                          uses too), the rest as auto\n"
        "  -s, --socket PATH       socket to create (default: $XDG_RUNTIME_DIR/blip2.sock,\n"
        "                          or /run/blip2/blip2.sock for root)\n"
        "  -t, --threads N         compute threads (default: all cores)\n"
        "      --max-queue N       requests waiting before 'busy' (default 64)\n"
        "      --max-batch N       sequences decoded together (default 8)\n"
        "      --prefill-chunk N   while others decode, feed a new request's prompt N rows\n"
        "                          per step (default 16, 0 = all at once)\n"
        "      --max-frame BYTES   largest request frame (default 67108864)\n"
        "      --cache-mb N        image-feature cache size in MiB (default 64, 0 = off)\n"
        "      --max-connections N default 256\n"
        "      --shutdown-timeout S seconds running requests get on SIGTERM (default 10)\n"
        "      --max-inflight N    requests in flight per connection (default 64)\n"
        "      --max-output BYTES  output buffered per connection before its reads pause\n"
        "                          (default 4194304)\n"
        "      --stall-timeout S   close a connection whose output stays full this long\n"
        "                          (default 30)\n"
        "      --max-memory BYTES  memory budget for requests, buffered frames and unsent\n"
        "                          replies; beyond it requests get 'busy' (default: a quarter\n"
        "                          of the RAM, 256 MiB to 16 GiB)\n"
        "      --frame-timeout S   close a connection whose request frame is not complete\n"
        "                          S seconds after it started (default 30)\n"
        "      --idle-timeout S    close a connection with nothing in flight that sent\n"
        "                          nothing for S seconds (default 3600, 0 = never)\n"
        "      --max-connections-per-uid N  connections of one user; beyond it the user's\n"
        "                          oldest idle one is closed, else 'busy' (default 3/4 of\n"
        "                          --max-connections)\n"
        "      --max-inflight-per-uid N  requests in flight of one user, all its connections\n"
        "                          together (default 3/4 of --max-queue plus --max-batch)\n"
        "      --idle-exit S       exit after S seconds without clients or work (for socket\n"
        "                          activation: systemd starts blip2d again on demand)\n"
        "      --allow-uid LIST    only these uids may connect (comma-separated)\n"
        "      --allow-gid LIST    only members of these groups may connect (comma-separated\n"
        "                          numbers or names); with both lists, either admits\n"
        "      --queue URL         also work the jobs of a Redis Stream (docs/scale-out.md):\n"
        "                          redis://[user:password@]HOST[:PORT][/STREAM] or\n"
        "                          unix:PATH[/STREAM]; the password may come from\n"
        "                          $BLIP2_QUEUE_PASSWORD instead\n"
        "      --queue-group NAME  the consumer group (default blip2d)\n"
        "      --queue-consumer NAME  this worker's name (default HOST:PID)\n"
        "      --queue-window N    queue jobs in the scheduler at once (default: half of\n"
        "                          --max-batch, at least 1)\n"
        "      --queue-idle S      take over jobs pending this long from dead workers\n"
        "                          (default 60)\n"
        "      --queue-max-tries N deliveries before a job is a dead letter (default 3)\n"
        "      --queue-allow-paths DIR  accept jobs naming a file under DIR (default: none)\n"
        "      --http ADDR         also serve HTTP (OpenAI-compatible API, /v1/caption, /health,\n"
        "                          /metrics, a page at /): 127.0.0.1:PORT, [::1]:PORT, HOST:PORT\n"
        "                          or unix:PATH; off by default (docs/http.md)\n"
        "      --http-token-file F require 'Authorization: Bearer TOKEN' with the token in F;\n"
        "                          needed for addresses other machines can reach\n"
        "      --http-max-connections N  open HTTP connections at most (default 16)\n"
        "      --http-max-body BYTES     request body limit (default 16777216)\n"
        "      --http-timeout S    a request must arrive within S seconds; idle connections\n"
        "                          are closed after S (default 30)\n"
        "  -v, --verbose           more log output (repeat for debug)\n"
        "  -q, --quiet             only warnings and errors\n"
        "  -h, --help              this help\n"
        "  -V, --version           print the version\n");
}

/* A folder converted into the weights cache at start: the log says what,
 * where and as what type, then a line every 10 % with the time left;
 * systemd gets more time (EXTEND_TIMEOUT_USEC) and the same as its status
 * line (systemctl status blip2d). */
typedef struct convert_ui {
    int last;        /* the last decile logged */
    double t0;       /* when the conversion started (ms) */
} convert_ui;

static void convert_start_cb(void *ud, const char *path, const char *type)
{
    convert_ui *u = ud;
    u->t0 = b2d_now_ms();
    LOG_INFO("converting the folder into the weights cache, once: %s (%s weights; "
             "--weights-type chooses); later starts map that file at once", path, type);
}

static int convert_progress_cb(void *ud, int i, int n, const char *name, uint64_t bytes, uint64_t total)
{
    convert_ui *u = ud;
    (void)name;
    const int pct = total ? (int)(bytes * 100 / total) : 100;
    const double secs = (b2d_now_ms() - u->t0) / 1000.0;
    const double left = bytes && bytes < total ? secs * (double)(total - bytes) / (double)bytes : 0;
    sd_notifyf(0, "EXTEND_TIMEOUT_USEC=120000000\nSTATUS=converting the model into the weights cache: %d%%, "
               "%.0f s so far, about %.0f s left", pct, secs, left);
    if (pct / 10 != u->last || i == n) {
        u->last = pct / 10;
        if (i == n)
            LOG_INFO("converted into the weights cache in %.0f s (%.0f MiB, %d tensors)", secs,
                     total / 1048576.0, n);
        else
            LOG_INFO("converting into the weights cache: %d%% (%d of %d tensors, %.0f of %.0f MiB), "
                     "%.0f s so far, about %.0f s left", pct, i, n, bytes / 1048576.0, total / 1048576.0, secs, left);
    }
    return 0;
}

static void cache_note_cb(void *ud, const char *path, uint64_t bytes, int removed)
{
    (void)ud;
    if (removed)
        LOG_INFO("removed %s from the weights cache (%.0f MiB): left by an earlier version of this folder "
                 "or an interrupted conversion", path, bytes / 1048576.0);
    else
        LOG_INFO("also in the weights cache: %s (%.0f MiB, another --weights-type of this folder; delete it "
                 "if no daemon uses it)", path, bytes / 1048576.0);
}

static long num(const char *s, const char *opt, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "blip2d: %s: '%s' is not an integer in %ld..%ld\n", opt, s, lo, hi);
        exit(2);
    }
    return v;
}

/* A comma-separated list of numeric ids (or, for groups, names) appended
 * to *ids. */
static int parse_ids(const char *arg, int groups, uid_t **ids, int *n)
{
    char *copy = strdup(arg), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(t, &end, 10);
        if (errno || *end || end == t) {
            struct group *g = groups ? getgrnam(t) : NULL;
            if (!g) {
                fprintf(stderr, "blip2d: --allow-%s: '%s' is not a %s\n", groups ? "gid" : "uid", t,
                        groups ? "group number or name" : "uid number");
                free(copy);
                return -1;
            }
            v = g->gr_gid;
        }
        uid_t *nv = realloc(*ids, sizeof *nv * (size_t)(*n + 1));
        if (!nv) { free(copy); return -1; }
        *ids = nv;
        (*ids)[(*n)++] = (uid_t)v;
    }
    free(copy);
    return 0;
}

/* --http: the HTTP front end, started and stopped by the server (frontends_*). */
typedef struct http_fe {
    b2d_http_config *cfg;
    b2d_http *http;
} http_fe;

static int http_start_cb(b2d_core *core, void *ud)
{
    http_fe *fe = ud;
    char msg[512];
    fe->cfg->core = core;
    if (b2d_http_start(fe->cfg, &fe->http, msg, sizeof msg) < 0) {
        LOG_ERR("%s", msg);
        return -1;
    }
    LOG_INFO("serving HTTP on %s%s", fe->cfg->addr, fe->cfg->token_file ? " (bearer token required)" : "");
    return 0;
}

static void http_stop_cb(void *ud)
{
    http_fe *fe = ud;
    b2d_http_shutting_down(fe->http);
    b2d_http_stop(fe->http);
    fe->http = NULL;
}

int main(int argc, char **argv)
{
    enum { O_QUEUE = 256, O_BATCH, O_FRAME, O_CACHE, O_CONNS, O_SHUT, O_OUTPUT, O_STALL, O_INFLIGHT, O_IDLE, O_AUID, O_AGID, O_VERSION,
           O_WCACHE, O_WTYPE, O_NOWCACHE, O_MLOCK, O_CHUNK, O_MEM, O_FTIME, O_UCONNS, O_UINFL,
           O_Q_URL, O_Q_GROUP, O_Q_CONSUMER, O_Q_WINDOW, O_Q_IDLE, O_Q_TRIES, O_Q_PATHS, O_MAXPX,
           O_HTTP, O_HTOKEN, O_HCONNS, O_HBODY, O_HTIMEOUT, O_PREC, O_ITIME };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"socket", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'}, {"max-queue", required_argument, 0, O_QUEUE},
        {"max-batch", required_argument, 0, O_BATCH}, {"max-frame", required_argument, 0, O_FRAME},
        {"prefill-chunk", required_argument, 0, O_CHUNK},
        {"max-memory", required_argument, 0, O_MEM}, {"frame-timeout", required_argument, 0, O_FTIME},
        {"idle-timeout", required_argument, 0, O_ITIME},
        {"max-connections-per-uid", required_argument, 0, O_UCONNS},
        {"max-inflight-per-uid", required_argument, 0, O_UINFL},
        {"cache-mb", required_argument, 0, O_CACHE}, {"max-connections", required_argument, 0, O_CONNS},
        {"shutdown-timeout", required_argument, 0, O_SHUT}, {"max-output", required_argument, 0, O_OUTPUT},
        {"stall-timeout", required_argument, 0, O_STALL}, {"max-inflight", required_argument, 0, O_INFLIGHT},
        {"idle-exit", required_argument, 0, O_IDLE}, {"allow-uid", required_argument, 0, O_AUID},
        {"allow-gid", required_argument, 0, O_AGID},
        {"weights-cache", required_argument, 0, O_WCACHE}, {"weights-type", required_argument, 0, O_WTYPE},
        {"no-weights-cache", no_argument, 0, O_NOWCACHE}, {"mlock", no_argument, 0, O_MLOCK},
        {"queue", required_argument, 0, O_Q_URL}, {"queue-group", required_argument, 0, O_Q_GROUP},
        {"queue-consumer", required_argument, 0, O_Q_CONSUMER}, {"queue-window", required_argument, 0, O_Q_WINDOW},
        {"queue-idle", required_argument, 0, O_Q_IDLE}, {"queue-max-tries", required_argument, 0, O_Q_TRIES},
        {"queue-allow-paths", required_argument, 0, O_Q_PATHS},
        {"http", required_argument, 0, O_HTTP}, {"http-token-file", required_argument, 0, O_HTOKEN},
        {"http-max-connections", required_argument, 0, O_HCONNS},
        {"http-max-body", required_argument, 0, O_HBODY}, {"http-timeout", required_argument, 0, O_HTIMEOUT},
        {"precision", required_argument, 0, O_PREC},
        {"verbose", no_argument, 0, 'v'},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'},
        {"max-pixels", required_argument, 0, O_MAXPX},
        {0, 0, 0, 0},
    };
    b2d_config cfg = {
        .threads = (int)sysconf(_SC_NPROCESSORS_ONLN), .max_queue = 64, .max_batch = 8, .prefill_chunk = 16,
        .max_frame = B2IPC_DEFAULT_MAX_FRAME, .cache_bytes = 64u << 20, .max_connections = 256,
        .max_inflight = 64, .shutdown_timeout = 10, .stall_timeout = 30, .max_output = 4u << 20,
        .frame_timeout = 30, .idle_timeout = 3600, .max_conns_per_uid = -1, .max_inflight_per_uid = -1,
        .queue = {.idle_s = 60, .max_tries = 3},
    };
    b2d_http_config hcfg = { .max_connections = 16, .max_body = 16u << 20, .max_header = 32u << 10,
                             .timeout = 30 };
    char defsock[4096], defcache[4096];
    int c, no_wcache = 0;
    blip2_process_prepare(argv);
    b2d_log_init();
    cfg.load.cache_type = getenv("BLIP2_WEIGHTS_TYPE");
    if (!cfg.load.cache_type || !*cfg.load.cache_type) cfg.load.cache_type = "auto";
    while ((c = getopt_long(argc, argv, "m:s:t:vqhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': cfg.model_path = optarg; break;
        case 's': cfg.socket_path = optarg; break;
        case 't': cfg.threads = (int)num(optarg, "--threads", 1, 1024); break;
        case O_QUEUE: cfg.max_queue = (int)num(optarg, "--max-queue", 0, 1 << 20); break;
        case O_BATCH: cfg.max_batch = (int)num(optarg, "--max-batch", 1, 256); break;
        case O_CHUNK: cfg.prefill_chunk = (int)num(optarg, "--prefill-chunk", 0, 1 << 20); break;
        case O_MEM: cfg.max_memory = (size_t)num(optarg, "--max-memory", 1l << 20, 1l << 46); break;
        case O_FTIME: cfg.frame_timeout = (double)num(optarg, "--frame-timeout", 1, 86400); break;
        case O_ITIME: cfg.idle_timeout = (double)num(optarg, "--idle-timeout", 0, 86400 * 365); break;
        case O_UCONNS: cfg.max_conns_per_uid = (int)num(optarg, "--max-connections-per-uid", 1, 1 << 16); break;
        case O_UINFL: cfg.max_inflight_per_uid = (int)num(optarg, "--max-inflight-per-uid", 1, 1 << 20); break;
        case O_FRAME: cfg.max_frame = (size_t)num(optarg, "--max-frame", 1024, 1l << 31); break;
        case O_CACHE: cfg.cache_bytes = (size_t)num(optarg, "--cache-mb", 0, 1 << 20) << 20; break;
        case O_CONNS: cfg.max_connections = (int)num(optarg, "--max-connections", 1, 1 << 16); break;
        case O_SHUT: cfg.shutdown_timeout = (double)num(optarg, "--shutdown-timeout", 0, 86400); break;
        case O_OUTPUT: cfg.max_output = (size_t)num(optarg, "--max-output", 1024, 1l << 30); break;
        case O_STALL: cfg.stall_timeout = (double)num(optarg, "--stall-timeout", 1, 86400); break;
        case O_INFLIGHT: cfg.max_inflight = (int)num(optarg, "--max-inflight", 1, 4096); break;
        case O_IDLE: cfg.idle_exit = (double)num(optarg, "--idle-exit", 0, 86400 * 365); break;
        case O_AUID: if (parse_ids(optarg, 0, &cfg.allow_uid, &cfg.n_allow_uid) < 0) return 2; break;
        case O_AGID: if (parse_ids(optarg, 1, (uid_t **)&cfg.allow_gid, &cfg.n_allow_gid) < 0) return 2; break;
        case O_WCACHE: cfg.load.cache_dir = optarg; break;
        case O_WTYPE: cfg.load.cache_type = optarg; break;
        case O_MAXPX: cfg.load.max_pixels = (uint64_t)num(optarg, "--max-pixels", 1, 1l << 34); break;
        case O_NOWCACHE: no_wcache = 1; break;
        case O_MLOCK: cfg.load.mlock = 1; break;
        case O_Q_URL: cfg.queue.url = optarg; break;
        case O_Q_GROUP: cfg.queue.group = optarg; break;
        case O_Q_CONSUMER: cfg.queue.consumer = optarg; break;
        case O_Q_WINDOW: cfg.queue.window = (int)num(optarg, "--queue-window", 1, 4096); break;
        case O_Q_IDLE: cfg.queue.idle_s = (double)num(optarg, "--queue-idle", 1, 86400); break;
        case O_Q_TRIES: cfg.queue.max_tries = (unsigned)num(optarg, "--queue-max-tries", 1, 1000); break;
        case O_Q_PATHS: cfg.queue.allow_paths = optarg; break;
        case O_HTTP: hcfg.addr = optarg; break;
        case O_HTOKEN: hcfg.token_file = optarg; break;
        case O_HCONNS: hcfg.max_connections = (int)num(optarg, "--http-max-connections", 1, 4096); break;
        case O_HBODY: hcfg.max_body = (size_t)num(optarg, "--http-max-body", 1024, 1l << 31); break;
        case O_HTIMEOUT: hcfg.timeout = (int)num(optarg, "--http-timeout", 1, 86400); break;
        case O_PREC:
            if (strcmp(optarg, "f32") && strcmp(optarg, "bf16") && strcmp(optarg, "int8") &&
                strcmp(optarg, "auto")) {
                fprintf(stderr, "blip2d: --precision: '%s' is not f32, bf16, int8 or auto\n", optarg);
                return 2;
            }
            cfg.load.precision = optarg;
            break;
        case 'v': b2d_log_level = b2d_log_level < B2D_LOG_DEBUG ? b2d_log_level + 1 : B2D_LOG_DEBUG; break;
        case 'q': b2d_log_level = B2D_LOG_WARN; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("blip2d %s\n", PACKAGE_VERSION); return 0;
        default: fprintf(stderr, "Try 'blip2d --help'.\n"); return 2;
        }
    }
    if (optind < argc) { fprintf(stderr, "blip2d: unexpected argument '%s'\n", argv[optind]); return 2; }
    const char *wt = cfg.load.cache_type;
    if (strcmp(wt, "auto") && strcmp(wt, "f32") && strcmp(wt, "f16") && strcmp(wt, "bf16") && strcmp(wt, "q8_0") &&
        strcmp(wt, "q4_0")) {
        fprintf(stderr, "blip2d: --weights-type%s: '%s' is not auto, f32, f16, bf16, q8_0 or q4_0\n",
                wt == getenv("BLIP2_WEIGHTS_TYPE") ? " ($BLIP2_WEIGHTS_TYPE)" : "", wt);
        return 2;
    }
    if (!cfg.model_path) { fprintf(stderr, "blip2d: --model PATH is required (try --help)\n"); return 2; }
    if (!cfg.max_memory) { /* a quarter of the RAM, within 256 MiB .. 16 GiB */
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        uint64_t ram = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 4ull << 30;
        uint64_t mem = ram / 4;
        cfg.max_memory = (size_t)(mem < (256ull << 20) ? 256ull << 20 : mem > (16ull << 30) ? 16ull << 30 : mem);
    }
    if (cfg.max_conns_per_uid < 0) cfg.max_conns_per_uid = cfg.max_connections * 3 / 4 > 0 ? cfg.max_connections * 3 / 4 : 1;
    if (cfg.max_inflight_per_uid < 0) cfg.max_inflight_per_uid = cfg.max_queue * 3 / 4 + cfg.max_batch;
    if (cfg.queue.url) { /* a bad URL stops the start, not the worker thread later */
        b2q_url u;
        char msg[512];
        if (b2q_url_parse(cfg.queue.url, &u, msg, sizeof msg) < 0) {
            fprintf(stderr, "blip2d: --queue: %s\n", msg);
            return 2;
        }
        if (!cfg.queue.window) cfg.queue.window = cfg.max_batch / 2 > 1 ? cfg.max_batch / 2 : 1;
    } else if (cfg.queue.group || cfg.queue.consumer || cfg.queue.window || cfg.queue.allow_paths) {
        fprintf(stderr, "blip2d: the --queue-* options need --queue URL\n");
        return 2;
    }
    if (!cfg.socket_path) {
        const char *rt = getenv("XDG_RUNTIME_DIR");
        if (geteuid() == 0) snprintf(defsock, sizeof defsock, "/run/blip2/blip2.sock");
        else if (rt && *rt) snprintf(defsock, sizeof defsock, "%s/blip2.sock", rt);
        else { fprintf(stderr, "blip2d: XDG_RUNTIME_DIR is not set: give --socket PATH\n"); return 2; }
        cfg.socket_path = defsock;
    }
    if (no_wcache) {
        cfg.load.cache_dir = NULL;
    } else if (!cfg.load.cache_dir) { /* systemd's CacheDirectory=, then XDG */
        const char *cd = getenv("CACHE_DIRECTORY"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (cd && *cd) snprintf(defcache, sizeof defcache, "%.*s", (int)strcspn(cd, ":"), cd);
        else if (xdg && *xdg == '/') snprintf(defcache, sizeof defcache, "%s/blip2", xdg);
        else if (home && *home == '/') snprintf(defcache, sizeof defcache, "%s/.cache/blip2", home);
        else defcache[0] = 0;
        cfg.load.cache_dir = defcache[0] ? defcache : NULL;
    }
    signal(SIGPIPE, SIG_IGN);
    b2d_sigbus_setup();
    openblas_set_num_threads(cfg.threads);

    double t0 = b2d_now_ms();
    blip2_model *m = NULL;
    blip2_error err = {0};
    LOG_INFO("loading %s", cfg.model_path);
    sd_notifyf(0, "STATUS=loading %s", cfg.model_path);
    struct stat mst;
    convert_ui cui = {-1, 0};
    cfg.load.convert_cb = convert_progress_cb;
    cfg.load.convert_start_cb = convert_start_cb;
    cfg.load.cache_note_cb = cache_note_cb;
    cfg.load.convert_ud = &cui;
    if (cfg.load.cache_dir && stat(cfg.model_path, &mst) == 0 && S_ISDIR(mst.st_mode))
        LOG_INFO("weights cache: %s (a folder is converted there once, as %s%s%s)", cfg.load.cache_dir,
                 strcmp(wt, "auto") ? wt : blip2_best_weights_type(), strcmp(wt, "auto") ? "" : ": the best type for this CPU",
                 strcmp(wt, "auto") ? "" : "; --weights-type f32 keeps an f32 checkpoint exact");
    if (blip2_model_load(&m, cfg.model_path, &cfg.load, &err) < 0) {
        LOG_ERR("cannot load the model: %s", err.text);
        return 1;
    }
    LOG_INFO("model loaded in %.0f ms (%s weights, %d+%d+%d layers)", b2d_now_ms() - t0, blip2_model_dtype(m),
             blip2_vision_layers(m), blip2_qformer_layers(m), blip2_text_layers(m));
    LOG_INFO("math: %s", blip2_model_math(m));
    LOG_INFO("paths: precision %s, matrix backend %s, decode kernels %s", blip2_model_precision(m),
             blip2_model_backend(m), blip2_model_kernels(m));
    if (*blip2_model_kernels_log(m)) LOG_INFO("decode kernels: %s", blip2_model_kernels_log(m));
    const char *mpath = NULL;
    size_t msize = 0;
    if (blip2_model_mapping(m, &mpath, NULL, &msize))
        LOG_INFO("weights mapped from %s (%.1f MiB%s)", mpath, msize / 1048576.0, cfg.load.mlock ? ", locked" : "");
    else if (cfg.load.mlock)
        LOG_WARN("--mlock locks mapped GGUF weights only; this folder was loaded without the weights cache");
    b2d_sockfile sockfile = {.dirfd = -1};
    int fd, n = sd_listen_fds(1);
    if (n < 0) {
        LOG_ERR("LISTEN_FDS is set but the passed socket is unusable: %s", strerror(-n));
        blip2_model_free(m);
        return 1;
    }
    if (n > 1) {
        LOG_ERR("systemd passed %d sockets; blip2d takes exactly one", n);
        blip2_model_free(m);
        return 1;
    }
    if (n == 1) {
        fd = SD_LISTEN_FDS_START;
        if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
            LOG_ERR("the socket systemd passed is not a listening Unix stream socket");
            blip2_model_free(m);
            return 1;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        cfg.activated = 1;
    } else if ((fd = b2d_sockfile_listen(&sockfile, cfg.socket_path)) < 0) {
        blip2_model_free(m);
        return 1;
    } else {
        cfg.sockfile = &sockfile;
    }
    http_fe fe = { &hcfg, NULL };
    if (hcfg.addr) { /* the HTTP front end starts once the core exists (http_start_cb) */
        cfg.frontends_start = http_start_cb;
        cfg.frontends_stop = http_stop_cb;
        cfg.frontends_ud = &fe;
    }
    int rc = b2d_server_run(&cfg, m, fd); /* takes the model */
    b2d_sockfile_remove(cfg.sockfile); /* unless SIGTERM did */
    free(cfg.allow_uid);
    free(cfg.allow_gid);
    return rc < 0 ? 1 : 0;
}
