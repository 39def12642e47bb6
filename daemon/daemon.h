/*
 * daemon.h - blip2d internals shared by the server (loop thread), the
 * scheduler/engine thread and main.
 *
 * A generate request becomes a b2d_job.  It is referenced by the loop
 * thread (while the request is in flight on its connection) and by the
 * pipeline (preparation on libuv's pool, then the engine thread); the job
 * is freed when both have let go (refcount).  The job never points at its
 * connection: results travel as encoded frames tagged with the connection
 * id, and the loop drops those whose connection is gone.
 */
#ifndef B2D_DAEMON_H
#define B2D_DAEMON_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "blip2.h"
#include "blip2ipc.h"
#include "cache.h"

/* A loaded model shared by the jobs that use it: a SIGHUP reload swaps the
 * server's current model while running jobs finish on the one they began
 * with; the last reference frees it. */
typedef struct b2d_model {
    blip2_model *m;
    atomic_int refs;
    unsigned gen;            /* reload generation: part of the feature-cache key */
    blip2_ctx *ctx;          /* decode scratch, used by the engine thread only */
} b2d_model;

b2d_model *b2d_model_ref(b2d_model *bm);
void b2d_model_unref(b2d_model *bm);

typedef struct b2d_config {
    const char *model_path;
    const char *socket_path;
    int threads;             /* compute threads (OpenBLAS) */
    int max_queue;           /* requests waiting (prep + queued) before busy */
    int max_batch;           /* sequences decoded together */
    int prefill_chunk;       /* prompt rows per step while others decode (0: whole) */
    size_t max_frame;
    size_t cache_bytes;
    int max_connections;
    int max_inflight;        /* per connection */
    double shutdown_timeout; /* seconds to let running work finish */
    double stall_timeout;    /* seconds a full output buffer may stay full */
    size_t max_output;       /* per-connection output buffer before reads pause */
    double idle_exit;        /* > 0: exit after this many idle seconds */
    int activated;           /* the listening socket came from systemd */
    uid_t *allow_uid;        /* who may connect (both empty: anyone the socket lets in) */
    int n_allow_uid;
    gid_t *allow_gid;
    int n_allow_gid;
    blip2_load_opts load;    /* --mlock, the weights cache of converted folders */
} b2d_config;

typedef struct b2d_job {
    atomic_int refs;
    atomic_int canceled;      /* 1: cancel requested (client, disconnect, shutdown) */
    uint64_t conn_id, req_id;
    uid_t uid;
    b2d_model *model;         /* a reference: the model this request runs on */
    /* input (owned) */
    uint8_t *image;
    size_t image_len;
    int image_fd;             /* -1 or a descriptor to read the image from */
    char *prompt;
    char **stop;
    int n_stop;
    int stream;
    int has_seed;
    blip2_gen_params params;
    /* prepared on the pool */
    float *px;                /* (3,H,W) or NULL when cached */
    float *query;             /* (Q,D) query embeddings */
    int cached;
    uint8_t key[32];
    int32_t *prompt_ids;
    size_t n_prompt_ids;
    int err;                  /* B2IPC_E* of a failed preparation */
    char errmsg[320];
    /* engine state */
    struct b2d_engine *engine;
    blip2_session *sess;
    blip2_stream *streams;    /* (nret) */
    int32_t **ids;            /* (nret) ids so far, for streaming */
    size_t *n_ids, *cap_ids;
    int nret, steps, started;
    int prefilling;          /* engine thread: the session was prefilling before this step */
    /* features requests (kind B2D_JOB_FEATURES): prompt holds the text */
    int kind;                 /* B2D_JOB_GENERATE or B2D_JOB_FEATURES */
    unsigned outputs;         /* bit (1u << B2IPC_FEAT_*) per requested output */
    size_t max_reply;         /* the frame limit the reply must fit */
    float *blob;              /* the image stages, as the feature cache keeps them:
                                 (T,Dv) (Dv) (Q,Dq) (Q,Dt) back to back */
    float *feat[B2IPC_FEAT_COUNT]; /* the outputs: views into blob for the image
                                 ones, owned buffers for logits, logits_last */
    /* times (ms, monotonic) */
    double t_recv, t_prep0, t_prep1, t_admit, vision_ms, prefill_ms, decode_ms, text_ms;
    struct b2d_job *next;     /* scheduler queue link */
} b2d_job;

enum { B2D_JOB_GENERATE = 0, B2D_JOB_FEATURES = 1 };

void b2d_job_unref(b2d_job *j);

/* A frame produced off the loop thread for one connection. */
typedef struct b2d_event {
    uint64_t conn_id, req_id;
    int terminal;             /* the request's last frame */
    size_t len;
    struct b2d_event *next;
    uint8_t data[];           /* one complete frame */
} b2d_event;

typedef struct b2d_server b2d_server;

/* ---- engine (engine.c) ---- */
typedef struct b2d_engine b2d_engine;

/* Starts the engine thread.  Events are handed to `deliver` (thread-safe,
 * called from the engine thread and pool threads). */
int b2d_engine_start(b2d_engine **out, const b2d_config *cfg, b2d_cache *cache,
                     void (*deliver)(void *, b2d_event *), void *user);
/* Queues a prepared job (takes the caller's reference). */
void b2d_engine_submit(b2d_engine *e, b2d_job *j);
/* Decoder work since start: steps that only decoded (and the tokens they
 * produced) and steps that included a prefill. */
typedef struct b2d_engine_stats {
    uint64_t decode_steps, decode_tokens, prefill_steps;
    double decode_ms, prefill_ms;
} b2d_engine_stats;
void b2d_engine_stats_get(b2d_engine *e, b2d_engine_stats *st);

/* Requests currently queued and active. */
void b2d_engine_counts(b2d_engine *e, int *queued, int *active);
/* Wakes the engine (after a cancel flag was set). */
void b2d_engine_poke(b2d_engine *e);
/* From now on the engine cancels everything it has, at once. */
void b2d_engine_cancel_all(b2d_engine *e);
/* Stops and joins the thread (call when it has nothing left). */
void b2d_engine_stop(b2d_engine *e);

/* The feature-cache key of j's image bytes and preprocessing settings. */
void b2d_image_key(const b2d_job *j, uint8_t key[32]);

/* Preparation (pool thread): reads the image (descriptor or bytes), looks
 * up the cache, decodes and preprocesses, tokenises the prompt.  Sets
 * j->err on failure. */
void b2d_prepare(b2d_job *j, b2d_cache *cache, size_t max_image);
/* Reads the image of j from its descriptor (j->image_fd) into j->image;
 * on failure sets j->err and returns it. */
int b2d_read_image_fd(b2d_job *j, size_t max_image);

/* Frames (encoded with libipc); NULL on allocation failure. */
b2d_event *b2d_event_error(uint64_t conn_id, uint64_t req_id, int has_id, int code,
                           const char *field, const char *msg);
b2d_event *b2d_event_reply(uint64_t conn_id, const b2ipc_reply *rp, int terminal);
/* The done reply of a finished (or canceled) job. */
b2d_event *b2d_event_done(b2d_job *j, double now_ms);

/* ---- features requests (features.c) ---- */
/* Preparation on the pool: image (cache lookup, decode), text (tokenise),
 * the reply's size against j->max_reply.  Sets j->err on failure. */
void b2d_prepare_features(b2d_job *j, b2d_cache *cache, size_t max_image);
/* Runs on the engine thread, between decode steps: the stages the request
 * needs (none of the image's when cached), then its features reply. */
b2d_event *b2d_run_features(b2d_job *j, b2d_cache *cache);

double b2d_now_ms(void);

/* ---- server (server.c) ---- */
/* Runs until shutdown; takes the model (freed at the end). */
int b2d_server_run(const b2d_config *cfg, blip2_model *m, int listen_fd);

#endif
