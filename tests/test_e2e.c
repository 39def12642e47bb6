/*
 * test_e2e.c - the real blip2d on the golden tiny model, driven through
 * libblip2client and blip2ctl: golden greedy / beam / repetition-penalty
 * ids over the socket, the batch case with two requests in flight, eight
 * in-flight requests == serial, streaming order, cancel from the token
 * callback, blip2ctl's output and exit codes, and a daemon killed with
 * SIGKILL mid-request (every pending call reports "connection lost", a
 * restarted daemon serves on the same path).
 *
 * Environment (for slow builds: valgrind, ThreadSanitizer; see
 * tests/SANITIZERS.md): BLIP2_TEST_TIMEOUT_SCALE multiplies every wait for
 * the daemon (start-up, hello, replies; default 1); BLIP2_TEST_CASES=N runs
 * only N of the 18 golden cases, the captions first, and N requests in
 * flight if below 8 (default: all, eight).
 */
#include "blip2client.h"
#include "tap.h"
#include "daemon_util.h"

#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *gdir, *blip2d, *blip2ctl;
static char tmpdir[] = "/tmp/b2e2e.XXXXXX", sock[256];
static double scale = 1; /* BLIP2_TEST_TIMEOUT_SCALE */

static pid_t start_daemon(void)
{
    char model[1024];
    snprintf(model, sizeof model, "%s/opt-tiny", gdir);
    return start_blip2d(blip2d, model, sock, (int)(500 * scale));
}

static int ids_match(const blip2c_seq *s, json_t *ref)
{
    if (json_array_size(ref) != s->n_ids) return 0;
    for (size_t i = 0; i < s->n_ids; i++)
        if ((uint32_t)json_integer_value(json_array_get(ref, i)) != s->ids[i]) return 0;
    return 1;
}

typedef struct stream_state {
    uint32_t toks[64];
    int n, cancel_after;
} stream_state;

static int on_token(void *user, const blip2c_token *t)
{
    stream_state *s = user;
    if (s->n < 64) s->toks[s->n++] = t->token;
    return s->cancel_after && s->n >= s->cancel_after;
}

typedef struct slot {
    blip2c_result *res;
    int err;
} slot;

static void done_cb(void *user, const blip2c_result *r) { ((slot *)user)->res = blip2c_result_dup(r); }
static void error_cb(void *user, uint64_t id, const blip2c_error *e) { (void)id; ((slot *)user)->err = e->code; }

static void pump(blip2c_conn *c, slot *s, int n)
{
    for (int guard = 0; guard < 3000 * scale; guard++) {
        int left = 0;
        for (int i = 0; i < n; i++) left += !s[i].res && !s[i].err;
        if (!left) return;
        struct pollfd pf = {blip2c_fd(c), POLLIN | (blip2c_want_write(c) ? POLLOUT : 0), 0};
        poll(&pf, 1, 10);
        if (blip2c_process(c, NULL) < 0) return;
    }
}

static int run_ctl(const char *args, char *out, size_t cap)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s --socket %s %s 2>/dev/null", blip2ctl, sock, args);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, cap - 1, p) : 0;
    out[n] = 0;
    int st = p ? pclose(p) : -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(void)
{
    gdir = getenv("GOLDEN_DIR");
    blip2d = getenv("BLIP2D");
    blip2ctl = getenv("BLIP2CTL");
    if (!gdir) gdir = "tests/golden";
    if (!blip2d) blip2d = "daemon/blip2d";
    if (!blip2ctl) blip2ctl = "ctl/blip2ctl";
    const char *env = getenv("BLIP2_TEST_TIMEOUT_SCALE");
    if (env && atof(env) > 1) scale = atof(env);
    env = getenv("BLIP2_TEST_CASES");
    int max_cases = env && atoi(env) > 0 ? atoi(env) : 1000;
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(sock, sizeof sock, "%s/blip2.sock", tmpdir);
    char path[1024];
    snprintf(path, sizeof path, "%s/manifest.json", gdir);
    json_t *man = json_load_file(path, 0, NULL);
    pid_t d = start_daemon();
    blip2c_conn *c = NULL;
    blip2c_error err = {0};
    blip2c_options co;
    blip2c_options_init(&co);
    co.socket_path = sock;
    co.connect_timeout_ms = (int)(10000 * scale);
    if (!ok(blip2c_connect_with(&co, &c, &err) == 0, "connect to blip2d")) { diag("%s", err.message); goto out; }

    /* golden ids for every case and call, images passed by descriptor
     * (BLIP2_TEST_CASES: rounds 0 and 1, the captions first; else round 2,
     * all of them in the manifest's order) */
    int calls = 0, good = 0, ncases = 0;
    size_t i;
    json_t *cs;
    for (int round = max_cases < 1000 ? 0 : 2; round < 3; round++)
    json_array_foreach(json_object_get(man, "cases"), i, cs) {
        if (strcmp(json_string_value(json_object_get(cs, "model")), "opt-tiny") || !json_object_get(cs, "image")) continue;
        int caption = !strcmp(json_string_value(json_object_get(cs, "prompt_key")), "caption");
        if ((round == 0 && !caption) || (round == 1 && caption)) continue;
        if (ncases >= max_cases) continue;
        ncases++;
        const char *gens[] = {"greedy", "beam3", "reppen"};
        for (int k = 0; k < 3; k++) {
            json_t *g = json_object_get(json_object_get(cs, "generate"), gens[k]);
            json_t *kw = json_object_get(g, "kwargs");
            blip2c_params p;
            blip2c_params_init(&p);
            p.max_new_tokens = (uint32_t)json_integer_value(json_object_get(kw, "max_new_tokens"));
            if (json_object_get(kw, "num_beams")) p.num_beams = (uint32_t)json_integer_value(json_object_get(kw, "num_beams"));
            if (json_object_get(kw, "min_new_tokens")) p.min_new_tokens = (uint32_t)json_integer_value(json_object_get(kw, "min_new_tokens"));
            if (json_object_get(kw, "repetition_penalty")) p.repetition_penalty = json_number_value(json_object_get(kw, "repetition_penalty"));
            snprintf(path, sizeof path, "%s/images/%s", gdir, json_string_value(json_object_get(cs, "image")));
            blip2c_request rq;
            blip2c_request_init(&rq);
            rq.image_path = path;
            rq.prompt = json_string_value(json_object_get(cs, "prompt"));
            rq.params = &p;
            blip2c_result *res = NULL;
            calls++;
            if (blip2c_generate(c, &rq, NULL, NULL, &res, &err) == 0 && ids_match(&res->seqs[0], json_object_get(g, "ids")) &&
                !strcmp(res->seqs[0].text, json_string_value(json_object_get(g, "text"))) &&
                /* res->text: the same without its leading space */
                !strcmp(res->text, json_string_value(json_object_get(g, "text")) +
                                   strspn(json_string_value(json_object_get(g, "text")), " ")))
                good++;
            else diag("%s %s: %s", json_string_value(json_object_get(cs, "id")), gens[k], err.message);
            blip2c_result_free(res);
        }
    }
    ok(calls == 3 * (max_cases < 18 ? max_cases : 18) && good == calls,
       "library: golden greedy, beam and repetition-penalty ids (%d/%d)", good, calls);

    /* the batch case: two requests in flight on one connection */
    cs = NULL;
    json_t *it;
    json_array_foreach(json_object_get(man, "cases"), i, it)
        if (!strcmp(json_string_value(json_object_get(it, "id")), "opt-tiny/batch")) cs = it;
    slot sl[8] = {{0}};
    blip2c_callbacks cb = {NULL, done_cb, error_cb};
    char imgs[2][1024];
    for (int b = 0; b < 2; b++) {
        snprintf(imgs[b], sizeof imgs[b], "%s/images/%s", gdir, json_string_value(json_array_get(json_object_get(cs, "images"), (size_t)b)));
        blip2c_request rq;
        blip2c_request_init(&rq);
        rq.image_path = imgs[b];
        rq.prompt = json_string_value(json_array_get(json_object_get(cs, "prompts"), (size_t)b));
        blip2c_submit(c, &rq, &cb, &sl[b], NULL, &err);
    }
    pump(c, sl, 2);
    json_t *bids = json_object_get(json_object_get(json_object_get(cs, "generate"), "greedy"), "ids");
    int bok = sl[0].res && sl[1].res && ids_match(&sl[0].res->seqs[0], json_array_get(bids, 0));
    if (bok) { /* row 1 of the reference is padded with pad id 1 after eos */
        json_t *r1 = json_array_get(bids, 1);
        for (size_t k = 0; k < json_array_size(r1) && bok; k++)
            bok = k < sl[1].res->seqs[0].n_ids ? sl[1].res->seqs[0].ids[k] == (uint32_t)json_integer_value(json_array_get(r1, k))
                                               : json_integer_value(json_array_get(r1, k)) == 1;
    }
    ok(bok, "non-blocking: the batch case's two rows reproduce the golden ids");
    for (int b = 0; b < 2; b++) { blip2c_result_free(sl[b].res); sl[b].res = NULL; }

    /* eight in flight == serial (BLIP2_TEST_CASES below 8: that many, >= 2) */
    int nfl = max_cases < 2 ? 2 : max_cases < 8 ? max_cases : 8;
    const char *names[8] = {"chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg", "camera.png", "coffee_rgba.png", "chelsea.png", "rocket.jpg"};
    blip2c_result *serial[8];
    char ip[8][1024];
    for (int k = 0; k < 8; k++) {
        snprintf(ip[k], sizeof ip[k], "%s/images/%s", gdir, names[k]);
        blip2c_request rq;
        blip2c_request_init(&rq);
        rq.image_path = ip[k];
        rq.prompt = k % 2 ? "Question: how many cats are there? Answer:" : NULL;
        serial[k] = NULL;
        if (k >= nfl) continue;
        blip2c_generate(c, &rq, NULL, NULL, &serial[k], &err);
        blip2c_submit(c, &rq, &cb, &sl[k], NULL, &err);
    }
    pump(c, sl, nfl);
    int same = 1;
    for (int k = 0; k < nfl; k++) {
        same &= sl[k].res && serial[k] && sl[k].res->seqs[0].n_ids == serial[k]->seqs[0].n_ids &&
                !memcmp(sl[k].res->seqs[0].ids, serial[k]->seqs[0].ids, sizeof(uint32_t) * serial[k]->seqs[0].n_ids);
        blip2c_result_free(sl[k].res);
        blip2c_result_free(serial[k]);
    }
    ok(same, "%d requests in flight give the serial results", nfl);

    /* streaming order and cancel from the callback */
    blip2c_request rq;
    blip2c_request_init(&rq);
    rq.image_path = ip[0];
    stream_state ss = {0};
    blip2c_result *res = NULL;
    if (ok(blip2c_generate(c, &rq, on_token, &ss, &res, &err) == 0, "streaming call")) {
        int inorder = ss.n == (int)res->seqs[0].n_ids - 1;
        for (int k = 0; inorder && k < ss.n; k++) inorder = ss.toks[k] == res->seqs[0].ids[k + 1];
        ok(inorder, "token callbacks arrive in order, one per generated token");
    }
    blip2c_result_free(res);
    blip2c_params lp;
    blip2c_params_init(&lp);
    lp.max_new_tokens = 2000;
    rq.params = &lp;
    stream_state cs3 = {.cancel_after = 3};
    res = NULL;
    int grc = blip2c_generate(c, &rq, on_token, &cs3, &res, &err);
    size_t got = res ? res->seqs[0].n_ids : 0;
    ok(grc == 0 && res && res->seqs[0].finish == BLIP2C_FINISH_CANCELED && got > 3 && got < 100,
       "a token callback returning non-zero cancels the request; the tokens so far are kept (%zu ids)", got);
    blip2c_result_free(res);
    char *text = NULL;
    ok(blip2c_caption(c, ip[0], &text, &err) == 0 && text && !strcmp(text, "TERProf feed incomplete hairigh Bishop Statistics SymbForeign Bildusky cervical antibodyien Laksh Spartan skipped claimingroid"),
       "blip2c_caption after a cancel: the golden caption, trimmed");
    free(text);

    /* blip2ctl against the real daemon */
    char out[8192], args[4096];
    snprintf(args, sizeof args, "caption %s %s", ip[0], ip[3]);
    int st = run_ctl(args, out, sizeof out);
    ok(st == 0 && strstr(out, "chelsea.png: TERProf feed incomplete") && strstr(out, "rocket.jpg: ") &&
       strstr(out, "chelsea.png") < strstr(out, "rocket.jpg"), "blip2ctl caption: one line per image, in order");
    snprintf(args, sizeof args, "ask %s 'how many cats are there?'", ip[0]);
    st = run_ctl(args, out, sizeof out);
    ok(st == 0 && strstr(out, "temperblogs Alice act parent"), "blip2ctl ask: the golden answer");
    snprintf(args, sizeof args, "--json --num-beams 3 --max-new-tokens 12 caption %s", ip[0]);
    st = run_ctl(args, out, sizeof out);
    ok(st == 0 && strstr(out, "[2,28107,35891,23945,39803,27992,28599,37914,45752,41105,37221,33068,35037]") != NULL, "blip2ctl --json: the golden beam ids");
    snprintf(args, sizeof args, "caption %s/nope.png", tmpdir);
    ok(run_ctl(args, out, sizeof out) == 2, "blip2ctl: a missing image is exit 2");
    snprintf(args, sizeof args, "caption %s/manifest.json", gdir);
    ok(run_ctl(args, out, sizeof out) == 2, "blip2ctl: a file that is no image is exit 2");

    /* the daemon dies mid-request: every pending call reports connection lost */
    slot dl[3] = {{0}};
    for (int k = 0; k < 3; k++) blip2c_submit(c, &rq, &cb, &dl[k], NULL, &err);
    for (int k = 0; k < 20; k++) { blip2c_process(c, NULL); usleep(2000); }
    kill(d, SIGKILL);
    waitpid(d, NULL, 0);
    pump(c, dl, 3);
    ok(dl[0].err == BLIP2C_ECONNLOST && dl[1].err == BLIP2C_ECONNLOST && dl[2].err == BLIP2C_ECONNLOST,
       "SIGKILL of the daemon: every pending request gets ECONNLOST");
    blip2c_close(c);
    c = NULL;
    ok(run_ctl("status", out, sizeof out) == 3, "blip2ctl with no daemon: exit 3");
    d = start_daemon();
    snprintf(args, sizeof args, "caption %s", ip[0]);
    ok(run_ctl(args, out, sizeof out) == 0 && strstr(out, "TERProf"), "a restarted daemon serves on the same path");
    kill(d, SIGTERM);
    int ws = 0;
    waitpid(d, &ws, 0);
    ok(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "SIGTERM: exit 0");
out:
    blip2c_close(c);
    json_decref(man);
    snprintf(path, sizeof path, "rm -rf %s", tmpdir);
    if (system(path) != 0) diag("cleanup failed");
    return tap_done();
}
