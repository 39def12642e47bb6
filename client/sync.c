/*
 * sync.c - the blocking calls, built on the non-blocking core.
 *
 *   blip2c_generate/caption/ask, blip2c_status_get, blip2c_ping:
 *     waiter on the stack --> b2c__submit / b2c__send (request queued with
 *     the waiter attached) --> b2c__wait: poll + read + dispatch until the
 *     request's terminal reply finishes the waiter (other requests' callbacks
 *     run meanwhile) --> copy out the result / error
 *
 * On a timeout the request is abandoned (its later replies are swallowed)
 * and, for generate, canceled, so the connection stays usable.
 */
#include "client-private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int b2c__check(blip2c_conn *c, blip2c_error *err, const char *what)
{
    if (!c) return b2c__err(err, BLIP2C_EINVAL, "no connection");
    if (c->depth > 0)
        return b2c__cerr(c, err, BLIP2C_EINVAL,
                         "%s is a blocking call and cannot be used inside a callback",
                         what);
    if (c->broken) return b2c__report(c, err, &c->broken_err);
    return 0;
}

/* Waits for r (carrying w) and turns a timeout into an abandoned request. */
static int b2c__finish(blip2c_conn *c, b2c__waiter *w, b2c__req *r,
                       const char *what, blip2c_error *err)
{
    int rc = b2c__wait(c, w, c->timeout_ms);
    if (rc == BLIP2C_ETIMEDOUT) {
        b2c__abandon(c, r);
        return b2c__cerr(c, err, BLIP2C_ETIMEDOUT,
                         "%s: no reply from blip2d within %d ms%s", what, c->timeout_ms,
                         r->kind == B2C__GENERATE ? "; the request was canceled" : "");
    }
    if (w->rc < 0) return b2c__report(c, err, &w->err);
    return 0;
}

/* A request without arguments (status, ping): sent, then waited for into
 * *w (what the reply carries, e.g. w->status, even on failure). */
static int b2c__call(blip2c_conn *c, b2ipc_op op, int kind, const char *what, b2c__waiter *w,
                     blip2c_error *err)
{
    b2ipc_request q;
    b2ipc_request_init(&q, op);
    memset(w, 0, sizeof *w);
    b2c__req *r;
    int rc = b2c__send(c, &q, kind, -1, NULL, NULL, w, &r, err);
    if (rc < 0) return rc;
    return b2c__finish(c, w, r, what, err);
}

int blip2c_generate(blip2c_conn *c, const blip2c_request *rq,
                    blip2c_token_cb on_token, void *user,
                    blip2c_result **res, blip2c_error *err)
{
    if (res) *res = NULL;
    int rc = b2c__check(c, err, "blip2c_generate");
    if (rc < 0) return rc;
    b2c__waiter w;
    memset(&w, 0, sizeof w);
    w.on_token = on_token;
    w.user = user;
    b2c__req *r;
    rc = b2c__submit(c, rq, NULL, NULL, &w, on_token != NULL, &r, err);
    if (rc < 0) return rc;
    rc = b2c__finish(c, &w, r, "generate", err);
    if (rc < 0) {
        blip2c_result_free(w.res);
        return rc;
    }
    if (res) *res = w.res;
    else blip2c_result_free(w.res);
    return 0;
}

/* A new copy of s without surrounding ASCII whitespace. */
static char *b2c__trimmed(const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) {
        s++;
        n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' ||
                 s[n - 1] == '\r'))
        n--;
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static int b2c__text_call(blip2c_conn *c, const char *path, const char *prompt,
                          char **text, blip2c_error *err)
{
    blip2c_request rq;
    blip2c_request_init(&rq);
    rq.image_path = path;
    rq.prompt = prompt;
    blip2c_result *res;
    int rc = blip2c_generate(c, &rq, NULL, NULL, &res, err);
    if (rc < 0) return rc;
    *text = b2c__trimmed(res->n_seqs ? res->seqs[0].text : "", res->n_seqs ? res->seqs[0].text_len : 0);
    blip2c_result_free(res);
    if (!*text) return b2c__cerr(c, err, BLIP2C_ENOMEM, "out of memory");
    return 0;
}

int blip2c_caption(blip2c_conn *c, const char *image_path, char **text,
                   blip2c_error *err)
{
    if (text) *text = NULL;
    if (!text || !image_path)
        return b2c__cerr(c, err, BLIP2C_EINVAL, "no image path or no output pointer");
    return b2c__text_call(c, image_path, NULL, text, err);
}

int blip2c_ask(blip2c_conn *c, const char *image_path, const char *question,
               char **answer, blip2c_error *err)
{
    if (answer) *answer = NULL;
    if (!answer || !image_path || !question)
        return b2c__cerr(c, err, BLIP2C_EINVAL,
                         "no image path, question or output pointer");
    size_t n = strlen(question) + sizeof "Question:  Answer:";
    char *prompt = malloc(n);
    if (!prompt) return b2c__cerr(c, err, BLIP2C_ENOMEM, "out of memory");
    snprintf(prompt, n, "Question: %s Answer:", question);
    int rc = b2c__text_call(c, image_path, prompt, answer, err);
    free(prompt);
    return rc;
}

int blip2c_status_get(blip2c_conn *c, blip2c_status **st, blip2c_error *err)
{
    if (st) *st = NULL;
    int rc = b2c__check(c, err, "blip2c_status_get");
    if (rc < 0) return rc;
    if (!st) return b2c__cerr(c, err, BLIP2C_EINVAL, "no output pointer");
    b2c__waiter w;
    rc = b2c__call(c, B2IPC_OP_STATUS, B2C__STATUS, "status", &w, err);
    if (rc < 0) {
        blip2c_status_free(w.status);
        return rc;
    }
    *st = w.status;
    return 0;
}

int blip2c_ping(blip2c_conn *c, double *rtt_ms, blip2c_error *err)
{
    int rc = b2c__check(c, err, "blip2c_ping");
    if (rc < 0) return rc;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    b2c__waiter w;
    rc = b2c__call(c, B2IPC_OP_PING, B2C__PING, "ping", &w, err);
    if (rc < 0) return rc;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rtt_ms)
        *rtt_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
                  (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    return 0;
}
