/*
 * daemon.h - blip2d internals shared by the pipeline's files: jobs
 * (job.c), their preparation on the worker pool (prepare.c, generate.c,
 * features.c), the scheduler thread (engine.c), the core every front end
 * submits to (core.c, its interface in frontend.h) and main.
 *
 *   front end (server.c: the socket; later HTTP, a queue worker)
 *     --b2d_submit (core.c: admission, one job per request)-->
 *     b2d_engine_submit: its user's queue in engine.c, in arrival order
 *     + the preparation queue --libuv pool, fair between users-->
 *     ops->prepare (prepare.c + the job kind) --b2d_engine_prepared-->
 *   engine.c: round robin over users, ops->start, one batched decoder
 *     step per model, ops->finish
 *   every reply --b2d_job_emit (job.c)--> the client's sink (frontend.h)
 *
 * A request becomes a b2d_job.  It is referenced by its client's in-flight
 * list (until its terminal reply) and by the pipeline stage that holds it
 * (the preparation queue, the pool, the engine); the job is freed when
 * all have let go (refcount).  Jobs point at their client (a refcounted
 * b2d_client, never at a connection); the client's sink is the only way
 * replies leave the pipeline.
 */
#ifndef B2D_DAEMON_H
#define B2D_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "blip2.h"
#include "blip2ipc.h"
#include "cache.h"
#include "frontend.h"
#include "queue.h"
#include "sockfile.h"

/* A loaded model shared by the jobs that use it: a SIGHUP reload swaps the
 * core's current model while running jobs finish on the one they began
 * with; the last reference frees it. */
typedef struct b2d_model {
    blip2_model *m;
    atomic_int refs;         /* > 0 while anything uses it */
    unsigned gen;            /* reload generation: part of the feature-cache key */
    blip2_ctx *ctx;          /* decode scratch, used by the engine thread only */
} b2d_model;

/* A new reference to bm (bm must be alive). */
b2d_model *b2d_model_ref(b2d_model *bm);
/* Drops one reference; the last frees the model.  NULL is fine. */
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
    int max_inflight;        /* per connection (per client of the core) */
    double shutdown_timeout; /* seconds to let running work finish */
    double stall_timeout;    /* seconds a full output buffer may stay full */
    size_t max_output;       /* per-connection output buffer before reads pause */
    size_t max_memory;       /* the daemon's memory budget (jobs, frames, output) */
    double frame_timeout;    /* seconds a started frame may take to complete */
    double idle_timeout;     /* > 0: seconds a connection may hold nothing and send nothing */
    int max_conns_per_uid;   /* connections of one uid */
    int max_inflight_per_uid;/* requests in flight of one uid (all its connections) */
    double idle_exit;        /* > 0: exit after this many idle seconds */
    int activated;           /* the listening socket came from systemd */
    b2d_sockfile *sockfile;  /* the socket file blip2d made (NULL: systemd's) */
    uid_t *allow_uid;        /* who may connect (both empty: anyone the socket lets in) */
    int n_allow_uid;
    gid_t *allow_gid;
    int n_allow_gid;
    blip2_load_opts load;    /* --mlock, the weights cache of converted folders */
    b2d_queue_opts queue;    /* --queue*: url NULL = no queue worker */
    /* Front ends beside the socket (main.c: --http): started once the core
     * exists (a failure ends the daemon), stopped after the loop ends and
     * before the core stops, so their clients are closed first. */
    int (*frontends_start)(b2d_core *core, void *ud);
    void (*frontends_stop)(void *ud);
    void *frontends_ud;
} b2d_config;

typedef struct b2d_job b2d_job;
typedef struct b2d_engine b2d_engine;

/* Why a job was canceled (b2d_job.canceled); a larger value wins. */
enum {
    B2D_CANCEL_NONE = 0,
    B2D_CANCEL_CLIENT = 1,   /* a cancel request */
    B2D_CANCEL_GONE = 2,     /* its client closed: nobody reads the result */
    B2D_CANCEL_SHUTDOWN = 3, /* the shutdown deadline */
};

/* The daemon's memory budget (--max-memory): what jobs, decodes in
 * progress, buffered input frames, unsent output and HTTP bodies hold, in
 * bytes, in total and by category (b2d_mem_cat, frontend.h: reported by
 * status).  Thread-safe. */
typedef struct b2d_budget {
    atomic_llong used;
    atomic_llong by[B2D_MEM_NCAT];
    long long max;
} b2d_budget;

/* Takes n bytes for category cat if they fit: 0, or -1 (nothing taken). */
static inline int b2d_budget_take(b2d_budget *b, b2d_mem_cat cat, size_t n)
{
    long long cur = atomic_load(&b->used);
    do
        if (cur + (long long)n > b->max) return -1;
    while (!atomic_compare_exchange_weak(&b->used, &cur, cur + (long long)n));
    atomic_fetch_add(&b->by[cat], (long long)n);
    return 0;
}
/* Moves n bytes already charged from category a to b. */
static inline void b2d_budget_move(b2d_budget *b, b2d_mem_cat a, b2d_mem_cat to, long long n)
{
    atomic_fetch_sub(&b->by[a], n);
    atomic_fetch_add(&b->by[to], n);
}
/* Charges (n > 0, even beyond the budget: memory already held) or
 * releases (n < 0) for category cat. */
static inline void b2d_budget_add(b2d_budget *b, b2d_mem_cat cat, long long n)
{
    atomic_fetch_add(&b->used, n);
    atomic_fetch_add(&b->by[cat], n);
}

/* What the preparation of a job may use (pool threads; all immutable or
 * thread-safe). */
typedef struct b2d_prep_env {
    b2d_cache *cache;
    size_t max_image;        /* bytes of an image read from a descriptor */
    b2d_budget *budget;      /* an image read from a descriptor is charged
                              * (jobs), a decode while it runs (decode) */
} b2d_prep_env;

/* What a job kind does at each stage of the pipeline: the scheduler calls
 * these and never looks at the kind itself. */
typedef struct b2d_job_ops {
    const char *name;        /* "generate", "features" */
    /* Pool thread, unless the job was canceled first: reads the image,
     * looks it up in the cache, decodes, tokenises.  Sets j->err (and
     * j->errmsg) on failure. */
    void (*prepare)(b2d_job *j, const b2d_prep_env *env);
    /* Batch slots the job takes while it runs (engine thread). */
    int (*width)(const b2d_job *j);
    /* Engine thread, once, when admitted: returns 1 when the job has a
     * session to step (j->sess), 0 when it already emitted its terminal
     * reply (it ran between two steps, or failed). */
    int (*start)(b2d_job *j, b2d_cache *cache, int prefill_chunk);
    /* Engine thread: its session is done (or was canceled); emits the
     * terminal reply. */
    void (*finish)(b2d_job *j);
    /* Any thread: the job stops before it started (canceled in the queue or
     * during preparation, or dropped at shutdown); emits its terminal
     * reply. */
    void (*abandon)(b2d_job *j);
    /* 1: a cancel request stops it while queued; 0: it runs to its end
     * unless its client has gone or the daemon shuts down. */
    int cancel_stops;
} b2d_job_ops;

extern const b2d_job_ops b2d_generate_ops; /* generate.c */
extern const b2d_job_ops b2d_features_ops; /* features.c */

struct b2d_job {
    atomic_int refs;          /* > 0: its client's list and each pipeline stage */
    atomic_int canceled;      /* B2D_CANCEL_* */
    atomic_int ended;         /* 1 once its terminal reply was emitted */
    const b2d_job_ops *ops;
    b2d_client *client;       /* a reference: where its replies go */
    uint64_t req_id;
    uint64_t user;            /* the client's fairness key */
    int cancel_pending;       /* under client->mu: send cancel{found} after the terminal */
    uint64_t cancel_id;
    b2d_model *model;         /* a reference: the model this request runs on */
    b2d_budget *budget;       /* charged `charged` bytes until the job is freed */
    size_t charged;
    atomic_int *user_jobs;    /* its user's job count in the core, or NULL:
                               * decremented when the job is freed */
    size_t decode_reserve;    /* of charged: what its image's decode may use
                               * without taking more (B2D_DECODE_RESERVE) */
    /* input (owned) */
    uint8_t *image;
    size_t image_len;
    int image_fd;             /* -1 or a descriptor to read the image from */
    char *prompt;             /* generate: the prompt; features: the text */
    char **stop;
    int n_stop;
    int stream;
    blip2_gen_params params;
    /* prepared on the pool */
    float *px;                /* (3,H,W) or NULL when cached */
    float *query;             /* (Q,Dt) query embeddings */
    int cached;
    uint8_t key[32];
    int32_t *prompt_ids;
    size_t n_prompt_ids;
    int err;                  /* B2IPC_E* of a failed preparation */
    char errmsg[320];
    /* engine state (generate) */
    blip2_session *sess;
    blip2_stream *streams;    /* (nret) */
    int32_t **ids;            /* (nret) ids so far, for streaming */
    size_t *n_ids, *cap_ids;
    int nret, steps;
    int prefilling;           /* engine thread: the session was prefilling before this step */
    /* features */
    unsigned outputs;         /* bit (1u << B2IPC_FEAT_*) per requested output */
    size_t max_reply;         /* the frame limit the reply must fit */
    float *blob;              /* the image stages, as the feature cache keeps them:
                                 (T,Dv) (Dv) (Q,Dq) (Q,Dt) back to back */
    float *feat[B2IPC_FEAT_COUNT]; /* the outputs: views into blob for the image
                                 ones, owned buffers for logits, logits_last */
    /* times (ms, monotonic) */
    double t_recv, t_prep0, t_prep1, t_admit, vision_ms, prefill_ms, decode_ms, text_ms;
    b2d_job *next;            /* the scheduler queue's link (engine mu) */
    int prepared;             /* engine mu: preparation is over, it may run */
    int counted;              /* engine mu: counted in the engine's queued */
    b2d_job *prep_next;       /* the preparation queue's link (core mu) */
};

/* A peer of a front end (frontend.h): the requests it has in flight and
 * where their replies go. */
struct b2d_client {
    b2d_core *core;
    atomic_int refs;          /* > 0: the front end's (until close) and one per job */
    pthread_mutex_t mu;       /* held for every sink call, and guards: */
    int closed;               /*   the front end closed it: replies are dropped */
    b2d_job **inf;            /*   the jobs in flight (a reference each) */
    int ninf, capinf;
    atomic_int held;          /* the front end takes no output now */
    atomic_llong unsent;      /* reply bytes the front end holds for its peer; signed:
                               * the front end may send (b2d_client_sent) a reply
                               * before its producer has counted it (job.c) */
    size_t out_cap;           /* above it, no more replies are produced */
    uint64_t user;            /* fairness key */
    b2d_sink sink;
    void *ctx;
    atomic_ullong *served;    /* the core's count of terminal replies */
    b2d_budget *budget;       /* unsent output is charged to it */
    b2d_client *prev, *next;  /* the core's list of open clients (core->mu) */
};

/* ---- jobs, clients and replies (job.c) ---- */

b2d_client *b2d_client_ref(b2d_client *c);
/* Drops one reference; the last frees c (its in-flight list is empty). */
void b2d_client_unref(b2d_client *c);
/* Under c->mu: takes j out of c's in-flight list; 1 if it was there (the
 * list's reference is then the caller's to drop). */
int b2d_client_unlist(b2d_client *c, b2d_job *j);
/* Does c take no more output now (held, or over its output cap)? */
static inline int b2d_client_blocked(b2d_client *c)
{
    return atomic_load(&c->held) || atomic_load(&c->unsent) > (long long)c->out_cap;
}

/* A zeroed job of kind ops for request id of client c, holding one
 * reference (the caller's) plus a reference to c; NULL when out of
 * memory. */
b2d_job *b2d_job_new(const b2d_job_ops *ops, b2d_client *c, uint64_t req_id);
/* A new reference to j. */
b2d_job *b2d_job_ref(b2d_job *j);
/* Drops one reference; the last frees the job and what it owns. */
void b2d_job_unref(b2d_job *j);
/* Marks j canceled for reason why (B2D_CANCEL_*; a larger reason wins). */
void b2d_job_cancel(b2d_job *j, int why);

/* Sends rp (borrowed) to j's client; terminal: the request's last reply,
 * sent at most once (later ones are dropped), which takes j out of its
 * client's in-flight list and is followed by cancel{found: true} when a
 * cancel is waiting for it.  Any thread. */
void b2d_job_emit(b2d_job *j, const b2ipc_reply *rp, int terminal);
/* The terminal error reply of j. */
void b2d_job_error(b2d_job *j, int code, const char *field, const char *msg);
/* The timings of j's reply at time now (ms): queue, preprocess, vision,
 * prefill, decode, total and tokens_per_s over new_tokens. */
void b2d_timings(const b2d_job *j, double now, size_t new_tokens, b2ipc_timings *t);
double b2d_now_ms(void);

/* ---- preparation (prepare.c, pool threads) ---- */

/* The protocol error code for a model library error code. */
int b2d_ipc_code(int blip2_rc);
/* Records a failed preparation in j (code, printf message); returns code. */
int b2d_job_fail(b2d_job *j, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Reads the image of j from its descriptor (j->image_fd) into j->image;
 * on failure sets j->err and returns it. */
int b2d_read_image_fd(b2d_job *j, size_t max_image);
/* The image path every job kind shares: the bytes (inline or read from the
 * descriptor), their feature-cache key (j->key), the cache lookup of n
 * floats under the key tagged by tag (NULL: the key itself) into out, and
 * on a miss the decoded, resized pixels (j->px).  Returns 1 on a cache
 * hit, 0 on a miss (j->px set), or a negative code (j->err set).  Frees
 * the image bytes. */
int b2d_prepare_image(b2d_job *j, const b2d_prep_env *env, const char *tag, float *out, size_t n);
/* libvips' own memory during one decode besides what scales with the
 * image: its worker threads' state and the loader's fixed buffers (charged
 * with room to spare); B2D_DECODE_ROWS rows of the image's width, 4 bytes
 * a sample, are added for the regions of libvips' threads and the
 * resize's rows. */
#define B2D_DECODE_SCRATCH ((size_t)2 << 20)
#define B2D_DECODE_ROWS 64
/* What every request with an image is charged at admission for its decode
 * (B2D_DECODE_SCRATCH and about a 640x480 image): a larger image takes the
 * rest from the budget when its header has been read, before decoding,
 * and gets busy (or too_large) if it does not fit; all of it is given
 * back when the decode is over. */
#define B2D_DECODE_RESERVE (B2D_DECODE_SCRATCH + ((size_t)1 << 20))
/* The memory a decode of the image info describes holds at its peak, as
 * charged to the budget (B2D_MEM_DECODE) while it runs: the loader's
 * estimate from the header (blip2_image_probe: the decoded RGB and what
 * the decoder keeps of the whole image), the rotated copy for an EXIF
 * orientation, B2D_DECODE_SCRATCH and B2D_DECODE_ROWS rows. */
size_t b2d_decode_cost(const blip2_image_info *info);
/* The key of the cache entry `tag` of an image key (tag NULL: key). */
void b2d_cache_key(const uint8_t key[32], const char *tag, uint8_t out[32]);

/* ---- the scheduler thread (engine.c) ---- */

/* Starts the scheduler thread. */
int b2d_engine_start(b2d_engine **out, const b2d_config *cfg, b2d_cache *cache);
/* Queues an admitted job in arrival order (takes the caller's
 * reference); it waits for b2d_engine_prepared.  -1: out of memory (the
 * reference stays the caller's). */
int b2d_engine_submit(b2d_engine *e, b2d_job *j);
/* The preparation of j is over (a failed one has emitted its terminal
 * reply): it may run, or leave the queue. */
void b2d_engine_prepared(b2d_engine *e, b2d_job *j);
/* Decoder work since start: steps that only decoded (and the tokens they
 * produced) and steps that included a prefill. */
typedef struct b2d_engine_stats {
    uint64_t decode_steps, decode_tokens, prefill_steps;
    double decode_ms, prefill_ms;
} b2d_engine_stats;
void b2d_engine_stats_get(b2d_engine *e, b2d_engine_stats *st);
/* Requests currently queued and active. */
void b2d_engine_counts(b2d_engine *e, int *queued, int *active);
/* Wakes the engine (after a cancel flag was set); NULL is fine. */
void b2d_engine_poke(b2d_engine *e);
/* From now on the engine cancels everything it has, at once. */
void b2d_engine_cancel_all(b2d_engine *e);
/* Stops and joins the thread (call when it has nothing left but jobs
 * still in preparation, as after the hard stop past the shutdown
 * deadline: their engine references are dropped, the core answers them). */
void b2d_engine_stop(b2d_engine *e);

/* ---- the core (core.c) beyond frontend.h: for the daemon's own use ---- */

/* The core of cfg serving model m (taken; freed at the end), preparing on
 * loop's worker pool (the core queues that work from loop's thread). */
int b2d_core_new(b2d_core **out, const b2d_config *cfg, blip2_model *m, uv_loop_t *loop);
/* A reloaded model: new requests use it, running ones finish on theirs. */
void b2d_core_set_model(b2d_core *core, blip2_model *m);
/* Refuses new requests from now on (shutting_down). */
void b2d_core_shutdown(b2d_core *core);
/* Cancels every request at once (the shutdown deadline). */
void b2d_core_cancel_all(b2d_core *core);
/* The hard stop (past the shutdown deadline the loop does not wait for
 * preparation): every request still being prepared, or waiting for it,
 * gets its terminal reply now, shutting_down, so its client reads that
 * and not just the end of the connection.  The end of the preparation
 * then finds it answered. */
void b2d_core_end_preparing(b2d_core *core);
/* Stops the scheduler thread (when nothing is left but preparation),
 * before the loop ends; the jobs waiting for the preparation pool end as
 * canceled, those on it as the loop's last run gets them back. */
void b2d_core_stop(b2d_core *core);
/* Frees the core (after b2d_core_stop and the loop's last run). */
void b2d_core_free(b2d_core *core);
typedef struct b2d_core_counts {
    int in_prep, queued, active, inflight, clients;
} b2d_core_counts;
void b2d_core_counts_get(b2d_core *core, b2d_core_counts *n);

/* ---- the socket front end (server.c) ---- */

/* Runs until shutdown; takes the model (freed at the end). */
int b2d_server_run(const b2d_config *cfg, blip2_model *m, int listen_fd);

/* ---- the queue front end (queue_front.c) ---- */
typedef struct b2d_queue_front b2d_queue_front;
/* Starts the worker of cfg->queue as a client of core.  0, or -1 (logged). */
int b2d_queue_front_start(b2d_queue_front **out, b2d_core *core, const b2d_config *cfg);
/* Shutdown begins: no new jobs; NULL is fine. */
void b2d_queue_front_drain(b2d_queue_front *qf);
/* After b2d_core_stop: writes what finished, stops the thread, frees qf;
 * NULL is fine. */
void b2d_queue_front_stop(b2d_queue_front *qf);

#endif
