/*
 * ctl_batch.h - blip2ctl's collection runner (internal, not installed):
 * one request per image file over many files, a bounded number in flight
 * on one connection, one JSON Lines line per file, resumable.
 * docs/blip2ctl.md "Collections" describes what users see.
 *
 * A subcommand plugs in with an operation: how to send the request for one
 * open image file, and how its reply becomes the fields of the file's line.
 *
 *     static int my_submit(void *user, blip2c_conn *c, int fd, ctl_job *job,
 *                          uint64_t *id, blip2c_error *err)
 *     {
 *         ... blip2c_submit(c, &rq, &my_callbacks, job, id, err) ...
 *         // my_callbacks.done:  ctl_job_done(job, fields, NULL)
 *         // my_callbacks.error: ctl_job_fail(job, err)
 *     }
 *     static const ctl_batch_op op = { "captioned", my_submit, NULL, 1 };
 *     status = ctl_batch_run(conn, &opts, &op);
 *
 * ctl_batch_caption_op() is the operation of `blip2ctl caption`,
 * ctl_batch_features_op() that of `blip2ctl features`.
 */
#ifndef CTL_BATCH_H
#define CTL_BATCH_H

#include "blip2client.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit statuses, the same as blip2ctl's (docs/blip2ctl.md). */
enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAILED = 1,   /* some files failed (their lines carry "error") */
    CTL_EXIT_USAGE = 2,    /* bad command line, unreadable list/resume/output file */
    CTL_EXIT_CONNECT = 3,  /* cannot connect to the daemon */
    CTL_EXIT_LOST = 4,     /* connection lost mid-way */
    CTL_EXIT_INTERRUPTED = 130 /* SIGINT (128 + 2); SIGTERM gives 143 */
};

/* One file in flight (opaque). */
typedef struct ctl_job ctl_job;

/* The operation applied to each file. */
typedef struct ctl_batch_op {
    const char *verb;  /* past tense for the summary: "captioned" */
    /* Sends the request for one image: fd is the open image file (borrowed;
     * the runner closes it when submit returns, so pass it by descriptor
     * with image_fd, which the library duplicates).  On success store the
     * request id in *id (the runner cancels with blip2c_cancel on Ctrl-C and
     * --timeout) and arrange that exactly one of ctl_job_done() and
     * ctl_job_fail() is called for job later, from a callback of c.  On
     * failure return the negative BLIP2C_E* code with err filled; then
     * neither may be called. */
    int (*submit)(void *user, blip2c_conn *c, int fd, ctl_job *job,
                  uint64_t *id, blip2c_error *err);
    void *user;
    /* Sequences one request occupies in the daemon's batch (beams or
     * returned sequences), to size the default window; 0 counts as 1. */
    unsigned seqs_per_request;
} ctl_batch_op;

/* The file's request succeeded.  fields: a JSON object whose members follow
 * "path" on the file's line (the runner takes the reference).  raw: NULL,
 * or members appended verbatim as JSON text (e.g. "\"seed\":1844...",
 * numbers jansson cannot hold); without braces or a leading comma.
 * canceled: the result was cut short by a cancel (then no line is written
 * and the file counts as not done, so --resume retries it). */
void ctl_job_done(ctl_job *job, json_t *fields, const char *raw, bool canceled);

/* The file's request failed with err (borrowed).  `busy` is retried by the
 * runner; a lost connection ends the run; anything else becomes the file's
 * error line. */
void ctl_job_fail(ctl_job *job, const blip2c_error *err);

/* What to do; the command line of docs/blip2ctl.md "Collections". */
typedef struct ctl_batch_opts {
    char *const *paths;      /* file (and, with recursive, directory) arguments */
    size_t n_paths;
    bool recursive;          /* directories are walked */
    bool hidden;             /* walk also enters/takes names starting with '.' */
    const char *files_from;  /* NULL, "-" (stdin) or a file: more paths */
    bool null_sep;           /* files_from is NUL-separated, not newline */
    const char *resume;      /* NULL or an earlier output: its paths are skipped */
    const char *output;      /* NULL: stdout; else appended to */
    unsigned jobs;           /* requests in flight; 0: from the daemon's max_batch */
    int timeout_ms;          /* per request; 0: none */
    int progress;            /* 1 on, 0 off, -1: when stderr is a terminal */
    bool verbose;
    const char *const *include; /* n_include globs: only files matching one (fnmatch,
                                   case ignored; the last name, or the whole path
                                   for a glob with '/') */
    size_t n_include;
    const char *const *exclude; /* n_exclude globs: files matching one are left out */
    size_t n_exclude;
    const char *resume_cmd;  /* the command that continues an interrupted run
                                (printed after Ctrl-C), or NULL */
} ctl_batch_opts;

/* Runs op over every file of o on connection c (borrowed, already
 * connected).  Writes the lines, a progress bar, messages; returns the
 * exit status (CTL_EXIT_*).  Installs SIGINT/SIGTERM handlers for its
 * duration.  After an interruption or a lost connection requests may still
 * be pending on c: the caller must blip2c_close(c) next, without calling
 * blip2c_process (their callbacks' jobs are gone). */
int ctl_batch_run(blip2c_conn *c, const ctl_batch_opts *o, const ctl_batch_op *op);

/* The operation of `caption`: prompt (may be NULL) and params (borrowed,
 * must outlive the run).  Fields: "text", "ids", "finish", "ms",
 * "cached", and "texts" (several sequences) and "seed" (sampling). */
typedef struct ctl_caption_args {
    const char *prompt;
    const blip2c_params *params;
} ctl_caption_args;
ctl_batch_op ctl_batch_caption_op(ctl_caption_args *a);

/* The file of job (as given or found by the walk; borrowed, valid until
 * ctl_job_done/ctl_job_fail). */
const char *ctl_job_path(const ctl_job *job);
/* The user pointer of the run's operation (ctl_batch_op.user). */
void *ctl_job_user(const ctl_job *job);
/* path as the lines show it: valid UTF-8 unchanged, each byte of an invalid
 * sequence as U+FFFD.  A new string (caller frees), NULL if out of memory. */
char *ctl_path_key(const char *path);

/* The operation of `features` over a collection (ctl_features.c): outputs
 * (borrowed; n_outputs 0: the two pooled outputs, or with out_dir every
 * image output) and out_dir (NULL, or a directory for one .safetensors per
 * image named after the SHA-256 of its path).  Fields: each output of shape
 * (1, D) as an array of D numbers, the larger ones nested (only without
 * out_dir), "file" (with out_dir), "cached", "ms". */
typedef struct ctl_features_args {
    const char *const *outputs;
    size_t n_outputs;
    const char *out_dir;
} ctl_features_args;
ctl_batch_op ctl_batch_features_op(ctl_features_args *a);

/* Writes the tensors of f as a safetensors file (float32 as F32, input_ids
 * as I64 followed by an all-ones I64 attention_mask, the golden files'
 * layout) to path.tmp, then renames it to path.  0, or -1 with msg set. */
int ctl_write_safetensors(const char *path, const blip2c_features *f, char *msg, size_t msg_len);

/* The stable error code name of docs/blip2ctl.md for err ("bad_image",
 * "connection_lost", ...). */
const char *ctl_error_code(const blip2c_error *err);

#endif
