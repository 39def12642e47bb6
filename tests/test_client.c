/*
 * test_client.c - libblip2client against a scripted fake daemon (TAP).
 *
 *   fork: fake_server.c listening on a socket in a temporary directory
 *   (one process per connection) <-- the library under test, through its
 *   public API only (the shared library exports nothing else)
 *
 * Covers connecting (explicit path, $BLIP2_SOCKET, $XDG_RUNTIME_DIR, a
 * failure's message, a daemon that never answers, an adopted socketpair),
 * the blocking calls, streaming order, the non-blocking API in a poll()
 * loop with out-of-order replies, descriptor passing, cancel, timeouts,
 * daemon errors, bad input, and broken daemons (dying mid-stream,
 * malformed replies) that must end every pending call instead of hanging.
 * An alarm() bounds the whole run.
 *
 * `test_client --serve PATH` runs only the fake daemon (for
 * tests/test_blip2ctl.sh).
 */
#include "blip2client.h"
#include "fake_server.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[64], sock[128];

static const char *file_with(const char *name, const char *content)
{
    static char paths[32][192];
    static int next;
    char *p = paths[next++ % 32];
    snprintf(p, 192, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) {
        perror(p);
        exit(2);
    }
    fputs(content, f);
    fclose(f);
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static blip2c_conn *conn(void)
{
    blip2c_conn *c = NULL;
    blip2c_error err;
    if (blip2c_connect(sock, &c, &err) < 0) {
        diag("connect: %s", err.message);
        return NULL;
    }
    return c;
}

/* ---- connecting ------------------------------------------------------------ */

static void test_connect(void)
{
    blip2c_conn *c = (blip2c_conn *)1;
    blip2c_error err;
    char missing[160];
    snprintf(missing, sizeof missing, "%s/nothing.sock", dir);
    int rc = blip2c_connect(missing, &c, &err);
    ok(rc == BLIP2C_ECONNECT && err.code == rc && c == NULL,
       "connect to a missing socket: ECONNECT (%d)", rc);
    ok(strstr(err.message, missing) && strstr(err.message, "blip2d --model"),
       "the message names the path and how to start blip2d: %s", err.message);
    ok(strcmp(blip2c_strerror(BLIP2C_ECONNECT), "cannot connect to blip2d") == 0,
       "strerror(ECONNECT)");

    /* default order */
    char empty[128];
    snprintf(empty, sizeof empty, "%s/empty", dir);
    mkdir(empty, 0700);
    unsetenv("BLIP2_SOCKET");
    setenv("XDG_RUNTIME_DIR", empty, 1);
    if (access("/run/blip2/blip2.sock", F_OK) != 0) {
        rc = blip2c_connect(NULL, &c, &err);
        ok(rc == BLIP2C_ECONNECT && strstr(err.message, empty) &&
               strstr(err.message, "/run/blip2/blip2.sock") &&
               strstr(err.message, "$XDG_RUNTIME_DIR"),
           "default order: both candidates tried and named: %s", err.message);
    } else {
        ok(1, "# SKIP a system blip2d socket exists");
    }

    setenv("XDG_RUNTIME_DIR", dir, 1);  /* the fake daemon is dir/blip2.sock */
    rc = blip2c_connect(NULL, &c, &err);
    ok(rc == 0 && strcmp(blip2c_info_get(c)->socket_origin, "$XDG_RUNTIME_DIR") == 0 &&
           strcmp(blip2c_info_get(c)->socket_path, sock) == 0,
       "default order: $XDG_RUNTIME_DIR/blip2.sock");
    blip2c_close(c);

    setenv("BLIP2_SOCKET", sock, 1);
    setenv("XDG_RUNTIME_DIR", empty, 1);
    rc = blip2c_connect(NULL, &c, &err);
    ok(rc == 0 && strcmp(blip2c_info_get(c)->socket_origin, "$BLIP2_SOCKET") == 0,
       "default order: $BLIP2_SOCKET first");
    blip2c_close(c);
    unsetenv("BLIP2_SOCKET");

    c = conn();
    const blip2c_info *in = blip2c_info_get(c);
    ok(c && strcmp(in->socket_origin, "explicit") == 0 && in->protocol == 1 &&
           strcmp(in->server, "fake-blip2d 0") == 0 && in->max_frame == 64u << 20 &&
           in->max_prompt_bytes == 16384,
       "hello: protocol 1, server name and limits");
    ok(blip2c_last_error(c)->code == 0 && blip2c_pending(c) == 0 && !blip2c_want_write(c),
       "a fresh connection: no error, nothing pending");
    blip2c_close(c);
    blip2c_close(NULL);

    /* a socket nobody accepts on: hello is never answered */
    char mute[160];
    snprintf(mute, sizeof mute, "%s/mute.sock", dir);
    int lfd = fake_listen(mute);
    blip2c_options o;
    blip2c_options_init(&o);
    o.socket_path = mute;
    o.connect_timeout_ms = 200;
    double t0 = now_s();
    rc = blip2c_connect_with(&o, &c, &err);
    double dt = now_s() - t0;
    ok(rc == BLIP2C_ECONNECT && c == NULL && dt < 2.0 && strstr(err.message, "did not answer"),
       "a daemon that never answers hello: ECONNECT after %.2f s: %s", dt, err.message);
    close(lfd);
    unlink(mute);

    /* a stale socket file */
    lfd = fake_listen(mute);
    close(lfd);
    rc = blip2c_connect(mute, &c, &err);
    ok(rc == BLIP2C_ECONNECT && strstr(err.message, "stale"),
       "a stale socket file: %s", err.message);
    unlink(mute);

    /* an adopted socketpair */
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        fake_serve_conn(sv[1]);
        _exit(0);
    }
    close(sv[1]);
    rc = blip2c_connect_fd(sv[0], NULL, &c, &err);
    double rtt = -1;
    if (rc == 0) rc = blip2c_ping(c, &rtt, &err);
    ok(rc == 0 && rtt >= 0 &&
           strcmp(blip2c_info_get(c)->socket_origin, "fd") == 0,
       "connect_fd on a socketpair, ping %.3f ms", rtt);
    blip2c_close(c);
    waitpid(pid, NULL, 0);
}

/* ---- blocking calls ------------------------------------------------------------ */

typedef struct tokens {
    int n;
    char text[512];
    uint32_t ids[64];
    uint64_t id;
    int stop_after;   /* > 0: return 1 after this many tokens */
} tokens;

static int collect_cb(void *user, const blip2c_token *t)
{
    tokens *tk = user;
    if (tk->n < 64) tk->ids[tk->n] = t->token;
    tk->n++;
    tk->id = t->id;
    strncat(tk->text, t->text, sizeof tk->text - strlen(tk->text) - 1);
    return tk->stop_after > 0 && tk->n >= tk->stop_after;
}

static void test_blocking(void)
{
    blip2c_conn *c = conn();
    blip2c_error err;
    char *text = NULL;
    const char *cat = file_with("cat.png", "cat on a mat\nrest of the file");
    int rc = blip2c_caption(c, cat, &text, &err);
    ok(rc == 0 && text && strcmp(text, "a picture of cat on a mat") == 0,
       "caption by path (descriptor passed, read by the daemon): '%s'", text ? text : "");
    free(text);
    rc = blip2c_ask(c, cat, "what is it?", &text, &err);
    ok(rc == 0 && text && strcmp(text, "answer 1 about cat on a mat") == 0,
       "ask: prompt \"Question: q Answer:\": '%s'", text ? text : "");
    free(text);

    /* inline bytes, full result */
    blip2c_params p;
    blip2c_params_init(&p);
    p.num_beams = 2;
    p.num_return_sequences = 2;
    blip2c_request rq;
    blip2c_request_init(&rq);
    rq.image = "dog";
    rq.image_len = 3;
    rq.params = &p;
    blip2c_result *res = NULL;
    rc = blip2c_generate(c, &rq, NULL, NULL, &res, &err);
    ok(rc == 0 && res && res->n_seqs == 2 && strcmp(res->text, "a picture of dog #0") == 0 &&
           strcmp(res->seqs[1].text, "a picture of dog #1") == 0,
       "generate with inline bytes, two sequences");
    ok(res && res->seqs[0].n_ids == 7 && res->seqs[0].ids[0] == 2 &&
           res->seqs[0].ids[1] == 100 && res->seqs[0].finish == BLIP2C_FINISH_EOS &&
           !res->has_seed && res->prompt_tokens == 7 && res->timings.total_ms == 12.5 &&
           res->timings.tokens_per_s == 20.0,
       "result: ids, finish, prompt tokens, timings");
    blip2c_result *copy = res ? blip2c_result_dup(res) : NULL;
    blip2c_result_free(res);
    ok(copy && strcmp(copy->seqs[1].text, "a picture of dog #1") == 0 &&
           copy->seqs[1].ids[6] == 2 && copy->text == copy->seqs[0].text,
       "blip2c_result_dup: a deep copy");
    blip2c_result_free(copy);

    /* seed */
    rq.image = "seed";
    rq.image_len = 4;
    rq.params = NULL;
    rc = blip2c_generate(c, &rq, NULL, NULL, &res, &err);
    ok(rc == 0 && res->has_seed && res->seed == UINT64_MAX, "seed reported (2^64-1)");
    blip2c_result_free(res);

    /* the caller's descriptor */
    const char *fox = file_with("fox.jpg", "fox");
    int fd = open(fox, O_RDONLY);
    blip2c_request_init(&rq);
    rq.image_fd = fd;
    rc = blip2c_generate(c, &rq, NULL, NULL, &res, &err);
    ok(rc == 0 && strcmp(res->text, "a picture of fox") == 0 && fcntl(fd, F_GETFD) >= 0 &&
           lseek(fd, 0, SEEK_CUR) == 0,
       "image_fd: passed, the caller's descriptor stays open and unmoved");
    blip2c_result_free(res);
    close(fd);

    /* streaming */
    tokens tk;
    memset(&tk, 0, sizeof tk);
    blip2c_request_init(&rq);
    rq.image_path = cat;
    rq.prompt = "Question: where is the cat? Answer:";
    rc = blip2c_generate(c, &rq, collect_cb, &tk, &res, &err);
    ok(rc == 0 && tk.n == 8 && strcmp(tk.text, " answer 1 about cat on a mat") == 0 &&
           tk.id == res->id,
       "streaming: %d tokens, in order: '%s'", tk.n, tk.text);
    ok(tk.ids[0] == 100 && tk.ids[6] == 106 && tk.ids[7] == 2, "token ids in order, then EOS");
    blip2c_result_free(res);

    /* a callback that stops the request */
    memset(&tk, 0, sizeof tk);
    tk.stop_after = 1;
    blip2c_request_init(&rq);
    rq.image_path = file_with("sh.png", "streamhold me");
    rc = blip2c_generate(c, &rq, collect_cb, &tk, &res, &err);
    ok(rc == 0 && res->seqs[0].finish == BLIP2C_FINISH_CANCELED && tk.n == 2,
       "token callback returning 1 cancels: finish canceled after %d tokens", tk.n);
    blip2c_result_free(res);

    /* status and ping */
    blip2c_status *st = NULL;
    rc = blip2c_status_get(c, &st, &err);
    ok(rc == 0 && strcmp(st->model_name, "blip2-fake") == 0 && st->num_query_tokens == 8 &&
           st->cache_capacity_bytes == 256u << 20 && st->requests_total == 42 &&
           strcmp(st->version, "0.0-fake") == 0 &&
           strcmp(st->model_weights, "weights in 2 MiB pages: 100 % of the 0.1 GiB cached") == 0,
       "status");
    blip2c_status_free(st);
    double rtt = -1;
    rc = blip2c_ping(c, &rtt, &err);
    ok(rc == 0 && rtt >= 0 && rtt < 1000, "ping: %.3f ms", rtt);

    /* a large inline image: written in pieces as the socket drains */
    size_t big = 3u << 20;
    char *img = malloc(big);
    memset(img, 'x', big);
    memcpy(img, "big\n", 4);
    blip2c_request_init(&rq);
    rq.image = img;
    rq.image_len = big;
    rc = blip2c_generate(c, &rq, NULL, NULL, &res, &err);
    ok(rc == 0 && strcmp(res->text, "a picture of big") == 0, "a 3 MiB inline image");
    blip2c_result_free(res);
    free(img);
    blip2c_close(c);
}

/* ---- daemon errors and bad input -------------------------------------------------- */

static void test_errors(void)
{
    blip2c_conn *c = conn();
    blip2c_error err;
    char *text = (char *)1;
    int rc = blip2c_caption(c, file_with("busy.png", "busy"), &text, &err);
    ok(rc == BLIP2C_EBUSY && text == NULL && strcmp(err.code_name, "busy") == 0 &&
           strstr(err.message, "queue is full") && blip2c_is_server_error(rc),
       "daemon error busy -> BLIP2C_EBUSY with the daemon's message");
    ok(blip2c_last_error(c)->code == BLIP2C_EBUSY, "last error kept on the connection");
    rc = blip2c_caption(c, file_with("bad.png", "badimage"), &text, &err);
    ok(rc == BLIP2C_EBAD_IMAGE && strcmp(err.field, "image") == 0 &&
           strcmp(blip2c_code_name(rc), "bad_image") == 0,
       "bad_image with its field");
    ok(blip2c_ping(c, NULL, &err) == 0, "the connection survives daemon errors");

    /* bad input, refused before sending */
    blip2c_params p;
    blip2c_params_init(&p);
    p.num_beams = 0;
    rc = blip2c_params_validate(&p, &err);
    ok(rc == BLIP2C_EINVAL && strstr(err.message, "num_beams") &&
           strcmp(err.field, "num_beams") == 0,
       "params_validate: %s", err.message);
    blip2c_request rq;
    blip2c_request_init(&rq);
    rq.image_path = file_with("ok.png", "fine");
    rq.params = &p;
    rc = blip2c_generate(c, &rq, NULL, NULL, NULL, &err);
    ok(rc == BLIP2C_EINVAL && strstr(err.message, "num_beams"),
       "generate refuses num_beams 0 locally");
    blip2c_params_init(&p);
    p.temperature = 0;
    ok(blip2c_params_validate(&p, &err) == BLIP2C_EINVAL, "temperature 0 refused");
    blip2c_request_init(&rq);
    rc = blip2c_generate(c, &rq, NULL, NULL, NULL, &err);
    ok(rc == BLIP2C_EINVAL && strstr(err.message, "no image"), "no image: %s", err.message);
    rq.image_path = "x";
    rq.image = "y";
    rq.image_len = 1;
    ok(blip2c_generate(c, &rq, NULL, NULL, NULL, &err) == BLIP2C_EINVAL,
       "two image sources refused");
    char missing[160];
    snprintf(missing, sizeof missing, "%s/missing.png", dir);
    rc = blip2c_caption(c, missing, &text, &err);
    ok(rc == BLIP2C_EINVAL && strstr(err.message, "cannot open") &&
           strstr(err.message, "No such file"),
       "missing file: %s", err.message);
    rc = blip2c_caption(c, dir, &text, &err);
    ok(rc == BLIP2C_EINVAL && strstr(err.message, "directory"), "a directory: %s", err.message);
    rc = blip2c_caption(c, file_with("empty.png", ""), &text, &err);
    ok(rc == BLIP2C_EINVAL && strstr(err.message, "empty"), "an empty file: %s", err.message);
    ok(blip2c_cancel(c, 12345, &err) == BLIP2C_EINVAL, "cancel of an unknown id: EINVAL");
    ok(blip2c_ping(c, NULL, &err) == 0, "still usable");

    /* timeout: the request is canceled, its late replies swallowed */
    blip2c_set_timeout(c, 200);
    double t0 = now_s();
    rc = blip2c_caption(c, file_with("hold.png", "hold forever"), &text, &err);
    double dt = now_s() - t0;
    ok(rc == BLIP2C_ETIMEDOUT && dt >= 0.15 && dt < 2, "timeout after %.2f s: %s", dt,
       err.message);
    blip2c_set_timeout(c, 0);
    ok(blip2c_ping(c, NULL, &err) == 0 && blip2c_pending(c) == 0,
       "usable after the timeout (canceled reply swallowed)");
    blip2c_close(c);
}

/* ---- non-blocking ------------------------------------------------------------------ */

typedef struct rec {
    int order[16];
    int n_done, n_err, n_tok;
    int err_code[16];
    char texts[16][128];
    blip2c_conn *c;
    bool try_blocking;
    int blocking_rc;
    bool submit_more;
} rec;

typedef struct slot {
    rec *r;
    int idx;
    uint64_t id;
    int finish;
} slot;

static int nb_token(void *user, const blip2c_token *t)
{
    slot *s = user;
    s->r->n_tok++;
    return 0;
}

static void nb_done(void *user, const blip2c_result *res)
{
    slot *s = user;
    rec *r = s->r;
    r->order[r->n_done + r->n_err] = s->idx;
    snprintf(r->texts[s->idx], sizeof r->texts[s->idx], "%s", res->text);
    s->finish = res->n_seqs ? (int)res->seqs[0].finish : -1;
    if (res->id != s->id) s->finish = -2;
    r->n_done++;
    if (r->try_blocking) r->blocking_rc = blip2c_ping(r->c, NULL, NULL);
}

static void nb_error(void *user, uint64_t id, const blip2c_error *err)
{
    slot *s = user;
    rec *r = s->r;
    r->order[r->n_done + r->n_err] = s->idx;
    r->err_code[s->idx] = err->code;
    r->n_err++;
}

static const blip2c_callbacks nb_cbs = { nb_token, nb_done, nb_error };
static const blip2c_callbacks nb_cbs_nostream = { NULL, nb_done, nb_error };

/* Runs the loop until nothing is pending; returns the last process code. */
static int run_loop(blip2c_conn *c, int max_ms)
{
    double end = now_s() + max_ms / 1e3;
    int rc = 0;
    while (blip2c_pending(c) > 0 && now_s() < end) {
        struct pollfd pfd = { blip2c_fd(c), POLLIN, 0 };
        if (blip2c_want_write(c)) pfd.events |= POLLOUT;
        poll(&pfd, 1, 100);
        rc = blip2c_process(c, NULL);
        if (rc < 0) break;
    }
    return rc;
}

static uint64_t submit(blip2c_conn *c, slot *s, rec *r, int idx, const char *content,
                       const blip2c_callbacks *cbs)
{
    char name[32];
    snprintf(name, sizeof name, "nb%d.png", idx);
    blip2c_request rq;
    blip2c_request_init(&rq);
    rq.image_path = file_with(name, content);
    s->r = r;
    s->idx = idx;
    s->id = 0;
    blip2c_error err;
    if (blip2c_submit(c, &rq, cbs, s, &s->id, &err) < 0) diag("submit: %s", err.message);
    return s->id;
}

static void test_nonblocking(void)
{
    blip2c_conn *c = conn();
    rec r;
    memset(&r, 0, sizeof r);
    r.c = c;
    slot s[16];
    submit(c, &s[0], &r, 0, "hold one", &nb_cbs);
    submit(c, &s[1], &r, 1, "hold two", &nb_cbs_nostream);
    submit(c, &s[2], &r, 2, "release three", &nb_cbs);
    ok(blip2c_pending(c) == 3 && s[0].id && s[1].id > s[0].id && s[2].id > s[1].id,
       "three requests submitted, ids %llu %llu %llu", (unsigned long long)s[0].id,
       (unsigned long long)s[1].id, (unsigned long long)s[2].id);
    int rc = run_loop(c, 3000);
    ok(rc == 0 && r.n_done == 3 && blip2c_pending(c) == 0, "poll loop: all three done");
    ok(r.order[0] == 2 && r.order[1] == 1 && r.order[2] == 0,
       "replies out of order (release first, then held newest first): %d %d %d",
       r.order[0], r.order[1], r.order[2]);
    ok(strcmp(r.texts[0], "a picture of hold one") == 0 &&
           strcmp(r.texts[1], "a picture of hold two") == 0 &&
           strcmp(r.texts[2], "a picture of release three") == 0 &&
           s[0].finish == BLIP2C_FINISH_EOS && s[1].finish == BLIP2C_FINISH_EOS,
       "each result reached its own request");
    ok(r.n_tok == 6 + 6, "tokens only for the requests that asked (%d)", r.n_tok);

    /* many in flight */
    memset(&r, 0, sizeof r);
    r.c = c;
    for (int i = 0; i < 16; i++) {
        char content[16];
        snprintf(content, sizeof content, "img%d", i);
        submit(c, &s[i], &r, i, content, &nb_cbs_nostream);
    }
    rc = run_loop(c, 3000);
    bool all = rc == 0 && r.n_done == 16;
    for (int i = 0; i < 16 && all; i++) {
        char want[32];
        snprintf(want, sizeof want, "a picture of img%d", i);
        all = strcmp(r.texts[i], want) == 0;
    }
    ok(all, "16 requests in flight on one connection, each with its result");

    /* cancel */
    memset(&r, 0, sizeof r);
    r.c = c;
    uint64_t id = submit(c, &s[0], &r, 0, "hold on", &nb_cbs);
    blip2c_error err;
    ok(blip2c_cancel(c, id, &err) == 0, "cancel by id queued");
    rc = run_loop(c, 3000);
    ok(rc == 0 && r.n_done == 1 && s[0].finish == BLIP2C_FINISH_CANCELED,
       "the canceled request ends with done, finish canceled");
    ok(blip2c_cancel(c, id, &err) == BLIP2C_EINVAL, "cancel after the end: EINVAL");

    /* callbacks may not block */
    memset(&r, 0, sizeof r);
    r.c = c;
    r.try_blocking = true;
    submit(c, &s[0], &r, 0, "quick", &nb_cbs_nostream);
    run_loop(c, 3000);
    ok(r.n_done == 1 && r.blocking_rc == BLIP2C_EINVAL,
       "a blocking call inside a callback is refused (EINVAL)");

    /* async error */
    memset(&r, 0, sizeof r);
    submit(c, &s[0], &r, 0, "internal", &nb_cbs);
    rc = run_loop(c, 3000);
    ok(rc == 0 && r.n_err == 1 && r.err_code[0] == BLIP2C_EINTERNAL,
       "error callback with the daemon's code");

    /* a blocking call while async requests are pending runs their callbacks */
    memset(&r, 0, sizeof r);
    submit(c, &s[0], &r, 0, "quick one", &nb_cbs);
    rc = blip2c_ping(c, NULL, &err);  /* the daemon answers in order: done, then pong */
    ok(rc == 0 && r.n_done == 1 && strcmp(r.texts[0], "a picture of quick one") == 0,
       "a blocking call runs the callbacks of pending requests");
    blip2c_close(c);

    /* close with requests pending: no callbacks, no leak */
    c = conn();
    memset(&r, 0, sizeof r);
    submit(c, &s[0], &r, 0, "hold", &nb_cbs);
    submit(c, &s[1], &r, 1, "hold", &nb_cbs);
    blip2c_close(c);
    ok(r.n_done == 0 && r.n_err == 0, "close with pending requests runs no callback");
}

/* ---- broken daemons ---------------------------------------------------------------- */

static void test_broken(void)
{
    blip2c_error err;
    blip2c_conn *c = conn();
    tokens tk;
    memset(&tk, 0, sizeof tk);
    blip2c_request rq;
    blip2c_request_init(&rq);
    rq.image_path = file_with("die.png", "die now please");
    blip2c_result *res = (blip2c_result *)1;
    double t0 = now_s();
    int rc = blip2c_generate(c, &rq, collect_cb, &tk, &res, &err);
    ok(rc == BLIP2C_ECONNLOST && res == NULL && tk.n == 2 && now_s() - t0 < 2,
       "daemon dies mid-stream: ECONNLOST after %d tokens: %s", tk.n, err.message);
    ok(strstr(err.message, "connection lost") != NULL, "message says connection lost");
    ok(blip2c_ping(c, NULL, &err) == BLIP2C_ECONNLOST, "later calls: ECONNLOST at once");
    blip2c_close(c);

    /* every pending async request gets ECONNLOST */
    c = conn();
    rec r;
    memset(&r, 0, sizeof r);
    slot s[4];
    submit(c, &s[0], &r, 0, "hold a", &nb_cbs);
    submit(c, &s[1], &r, 1, "hold b", &nb_cbs_nostream);
    submit(c, &s[2], &r, 2, "die", &nb_cbs);
    rc = run_loop(c, 3000);
    ok(rc == BLIP2C_ECONNLOST && r.n_err == 3 && r.err_code[0] == BLIP2C_ECONNLOST &&
           r.err_code[1] == BLIP2C_ECONNLOST && r.err_code[2] == BLIP2C_ECONNLOST &&
           blip2c_pending(c) == 0,
       "daemon dies with three requests pending: three ECONNLOST callbacks");
    rq.image_path = file_with("x.png", "x");
    ok(blip2c_submit(c, &rq, &nb_cbs, &s[3], NULL, &err) == BLIP2C_ECONNLOST &&
           blip2c_process(c, NULL) == BLIP2C_ECONNLOST,
       "submit and process after the loss: ECONNLOST");
    blip2c_close(c);

    /* writing after the daemon closed: EPIPE, never SIGPIPE (the default
     * disposition would kill this test) */
    c = conn();
    memset(&r, 0, sizeof r);
    submit(c, &s[0], &r, 0, "die", &nb_cbs_nostream);
    struct timespec pause = { 0, 200 * 1000000 };
    nanosleep(&pause, NULL);  /* the daemon is gone; we have not read the EOF */
    char *junk = malloc(1u << 20);
    memset(junk, 'j', 1u << 20);
    blip2c_request_init(&rq);
    rq.image = junk;
    rq.image_len = 1u << 20;
    /* the first write meets EPIPE: that request is accepted and fails
     * through its callback; later submits fail at once, without callback */
    int accepted = 1;
    for (int i = 1; i < 4; i++) {
        s[i].r = &r;
        s[i].idx = i;
        if (blip2c_submit(c, &rq, &nb_cbs_nostream, &s[i], NULL, &err) == 0) accepted++;
        else if (err.code != BLIP2C_ECONNLOST) accepted = -100;
    }
    int rc2 = run_loop(c, 3000);
    ok(accepted >= 1 && rc2 == BLIP2C_ECONNLOST && blip2c_pending(c) == 0 &&
           r.n_err == accepted && r.n_done == 0,
       "writes after the daemon closed: no SIGPIPE; %d accepted requests each get "
       "ECONNLOST, the rest are refused at submit", accepted);
    free(junk);
    blip2c_close(c);

    /* an error without id, then close: the loss explains itself */
    c = conn();
    char *text;
    rc = blip2c_caption(c, file_with("fatal.png", "fatal"), &text, &err);
    ok(rc == BLIP2C_ECONNLOST && strstr(err.message, "above the limit"),
       "id-less error then close: %s", err.message);
    blip2c_close(c);

    static const char *const bad[] = { "garbage", "badreply", "unknownid", "tokenfirst" };
    for (int i = 0; i < 4; i++) {
        c = conn();
        char name[32];
        snprintf(name, sizeof name, "%s.png", bad[i]);
        rc = blip2c_caption(c, file_with(name, bad[i]), &text, &err);
        ok(rc == BLIP2C_EPROTO && strstr(err.message, "protocol error"),
           "%s -> EPROTO: %s", bad[i], err.message);
        blip2c_close(c);
    }

    /* a reply larger than our frame limit */
    blip2c_options o;
    blip2c_options_init(&o);
    o.socket_path = sock;
    o.max_frame = 150;
    rc = blip2c_connect_with(&o, &c, &err);
    if (rc == 0) {
        blip2c_status *st;
        rc = blip2c_status_get(c, &st, &err);
        ok(rc == BLIP2C_EPROTO, "a reply above max_frame: EPROTO: %s", err.message);
    } else {
        ok(0, "connect with max_frame 150: %s", err.message);
    }
    blip2c_close(c);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--serve") == 0) {
        int lfd = fake_listen(argv[2]);
        if (lfd < 0) {
            perror(argv[2]);
            return 1;
        }
        fake_serve(lfd);
    }
    alarm(30);  /* a hang is a failure, not a stuck `make check` */
    snprintf(dir, sizeof dir, "/tmp/b2client.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(sock, sizeof sock, "%s/blip2.sock", dir);
    pid_t server = fake_start(sock);
    if (server < 0) {
        perror("fake server");
        return 1;
    }

    test_connect();
    test_blocking();
    test_errors();
    test_nonblocking();
    test_broken();

    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) diag("could not remove %s", dir);
    return tap_done();
}
