/*
 * test_features_async.c - blip2c_features_submit, the non-blocking features
 * request, against the real blip2d on the golden opt-tiny model: results
 * equal blip2c_features_get's bit for bit with several features and
 * generate requests in flight together; exactly one callback per request
 * (done, or error for a non-image / a bad output name); text features;
 * blip2c_cancel of a features request still delivers the full result;
 * blip2c_features_dup; argument errors return without a callback; a
 * daemon killed with requests pending fails each one with "connection
 * lost".  (Golden values of the features: test_features_ctl.py and
 * test_features_collect.py.)
 */
#include "blip2client.h"
#include "tap.h"
#include "daemon_util.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *gdir, *blip2d;
static char tmpdir[] = "/tmp/b2fasync.XXXXXX", sock[256];

static pid_t start_daemon(void)
{
    char model[1024];
    snprintf(model, sizeof model, "%s/opt-tiny", gdir);
    return start_blip2d(blip2d, model, sock, 1000);
}

typedef struct slot {
    blip2c_features *f;   /* a dup of what done got */
    int done, errors, err;
    char code_name[32];
    uint64_t id, cb_id;
    blip2c_result *res;   /* generate requests */
} slot;

static void feat_done(void *user, const blip2c_features *f)
{
    slot *s = user;
    s->done++;
    s->cb_id = f->id;
    blip2c_features_free(s->f);
    s->f = blip2c_features_dup(f);
}

static void on_error(void *user, uint64_t id, const blip2c_error *e)
{
    slot *s = user;
    s->errors++;
    s->err = e->code;
    s->cb_id = id;
    snprintf(s->code_name, sizeof s->code_name, "%s", e->code_name);
}

static void gen_done(void *user, const blip2c_result *r)
{
    slot *s = user;
    s->done++;
    s->res = blip2c_result_dup(r);
}

static const blip2c_features_callbacks fcb = { feat_done, on_error };

/* Runs the connection until nothing is pending (or it broke). */
static int pump(blip2c_conn *c)
{
    for (int guard = 0; guard < 200000 && blip2c_pending(c) > 0; guard++) {
        struct pollfd pf = { blip2c_fd(c), POLLIN | (blip2c_want_write(c) ? POLLOUT : 0), 0 };
        poll(&pf, 1, 100);
        int rc = blip2c_process(c, NULL);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Same tensors (names, dtypes, shapes, bytes). */
static int same(const blip2c_features *a, const blip2c_features *b)
{
    if (!a || !b || a->n_tensors != b->n_tensors) return 0;
    for (size_t i = 0; i < a->n_tensors; i++) {
        const blip2c_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        if (strcmp(x->name, y->name) || strcmp(x->dtype, y->dtype) || x->ndim != y->ndim ||
            x->numel != y->numel || memcmp(x->shape, y->shape, sizeof x->shape))
            return 0;
        const void *px = x->f32 ? (const void *)x->f32 : (const void *)x->i32;
        const void *py = y->f32 ? (const void *)y->f32 : (const void *)y->i32;
        if (!px || !py || memcmp(px, py, x->numel * 4)) return 0;
    }
    return 1;
}

int main(void)
{
    gdir = getenv("GOLDEN_DIR");
    blip2d = getenv("BLIP2D");
    if (!gdir) gdir = "tests/golden";
    if (!blip2d) blip2d = "daemon/blip2d";
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(sock, sizeof sock, "%s/blip2.sock", tmpdir);
    char img[2][1024], bad[1024];
    snprintf(img[0], sizeof img[0], "%s/images/chelsea.png", gdir);
    snprintf(img[1], sizeof img[1], "%s/images/rocket.jpg", gdir);
    snprintf(bad, sizeof bad, "%s/not-an-image.png", tmpdir);
    FILE *bf = fopen(bad, "w");
    if (bf) { fputs("this is text, not a PNG\n", bf); fclose(bf); }

    pid_t d = start_daemon();
    blip2c_conn *c = NULL;
    blip2c_error err = { 0 };
    blip2c_features *ref[2] = { NULL, NULL };
    if (!ok(blip2c_connect(sock, &c, &err) == 0, "connect to blip2d")) {
        diag("%s", err.message);
        goto out;
    }

    /* references: the blocking call */
    for (int k = 0; k < 2; k++) {
        blip2c_features_request fr;
        blip2c_features_request_init(&fr);
        fr.image_path = img[k];
        ok(blip2c_features_get(c, &fr, &ref[k], &err) == 0 && ref[k]->n_tensors == 5,
           "blocking features of %s: 5 image outputs", k ? "rocket" : "chelsea");
    }
    if (!ref[0] || !ref[1]) goto out;

    /* 6 features + 2 generate requests in flight together */
    {
        slot fs[6], gs[2];
        memset(fs, 0, sizeof fs);
        memset(gs, 0, sizeof gs);
        int sub = 0;
        for (int i = 0; i < 6; i++) {
            blip2c_features_request fr;
            blip2c_features_request_init(&fr);
            fr.image_path = img[i % 2];
            sub += blip2c_features_submit(c, &fr, &fcb, &fs[i], &fs[i].id, &err) == 0;
            if (i == 2 || i == 4) {
                blip2c_request rq;
                blip2c_request_init(&rq);
                rq.image_path = img[i / 4];
                static const blip2c_callbacks gcb = { NULL, gen_done, on_error };
                sub += blip2c_submit(c, &rq, &gcb, &gs[i / 4], &gs[i / 4].id, &err) == 0;
            }
        }
        ok(sub == 8, "8 requests submitted (6 features, 2 generate)");
        ok(blip2c_pending(c) == 8, "blip2c_pending counts features requests (%zu)", blip2c_pending(c));
        ok(pump(c) == 0 && blip2c_pending(c) == 0, "all answered");
        int once = 1, eq = 1, ids = 1;
        for (int i = 0; i < 6; i++) {
            once &= fs[i].done == 1 && fs[i].errors == 0;
            eq &= same(fs[i].f, ref[i % 2]);
            ids &= fs[i].cb_id == fs[i].id && fs[i].f && fs[i].f->id == fs[i].id;
        }
        ok(once, "each features request: exactly one done callback, no error");
        ok(eq, "async features == blocking features, bit for bit (dup'ed in the callback)");
        ok(ids, "blip2c_features.id is the submitted id");
        ok(gs[0].done == 1 && gs[1].done == 1 && gs[0].res && gs[1].res && gs[0].res->n_seqs == 1,
           "the generate requests in between completed");
        for (int i = 0; i < 6; i++) blip2c_features_free(fs[i].f);
        for (int i = 0; i < 2; i++) blip2c_result_free(gs[i].res);
    }

    /* errors: the daemon's through the error callback, exactly once; what
     * the library can see at once is returned without a callback */
    {
        slot s[3];
        memset(s, 0, sizeof s);
        blip2c_features_request fr;
        blip2c_features_request_init(&fr);
        fr.image_path = bad;
        int r0 = blip2c_features_submit(c, &fr, &fcb, &s[0], &s[0].id, &err);
        blip2c_features_request_init(&fr);
        static char longtext[4001];   /* 1000 tokens: above opt-tiny's positions */
        for (int i = 0; i < 1000; i++) memcpy(longtext + 4 * i, "cat ", 4);
        fr.text = longtext;
        int r1 = blip2c_features_submit(c, &fr, &fcb, &s[1], &s[1].id, &err);
        int pr = pump(c);
        if (r0 || r1 || pr) diag("submit %d %d, pump %d: %s", r0, r1, pr, err.message);
        ok(r0 == 0 && r1 == 0 && pr == 0, "a non-image, and a text longer than the model's positions");
        ok(s[0].errors == 1 && s[0].done == 0 && s[0].err == BLIP2C_EBAD_IMAGE &&
           s[0].cb_id == s[0].id, "non-image: one error callback, bad_image (%s)", s[0].code_name);
        ok(s[1].errors == 1 && s[1].done == 0 && s[1].err == BLIP2C_ETOO_LARGE,
           "too long a text: one error callback, too_large (%s)", s[1].code_name);
        blip2c_features_request_init(&fr);
        fr.image_path = img[0];
        const char *wrong[] = { "image_pooler_output", "no_such_output" };
        fr.outputs = wrong;
        fr.n_outputs = 2;
        int r2 = blip2c_features_submit(c, &fr, &fcb, &s[2], &s[2].id, &err);
        pump(c);
        ok(r2 == BLIP2C_EINVAL && s[2].errors == 0 && s[2].done == 0,
           "unknown output name: EINVAL at once, no callback (%s)", err.message);
    }

    /* text features, and a chosen output */
    {
        slot s;
        memset(&s, 0, sizeof s);
        blip2c_features_request fr;
        blip2c_features_request_init(&fr);
        fr.text = "a photo of";
        const char *want[] = { "logits_last" };
        fr.outputs = want;
        fr.n_outputs = 1;
        int r = blip2c_features_submit(c, &fr, &fcb, &s, NULL, &err);
        ok(r == 0 && pump(c) == 0 && s.done == 1, "text features (logits_last) answered");
        const blip2c_tensor *ids = blip2c_features_find(s.f, "input_ids");
        const blip2c_tensor *ll = blip2c_features_find(s.f, "logits_last");
        ok(ids && ids->i32 && ids->numel >= 2 && ids->i32[0] == 2 && ll && ll->ndim == 2 &&
           ll->shape[0] == 1 && ll->f32, "input_ids (BOS 2 first) and logits_last (1, V)");
        blip2c_features_free(s.f);
    }

    /* cancel of a features request: the full result still comes */
    {
        slot s;
        memset(&s, 0, sizeof s);
        blip2c_features_request fr;
        blip2c_features_request_init(&fr);
        fr.image_path = img[1];
        int r = blip2c_features_submit(c, &fr, &fcb, &s, &s.id, &err);
        int rc = r == 0 ? blip2c_cancel(c, s.id, &err) : -1;
        ok(rc == 0, "blip2c_cancel accepts a features request in flight");
        ok(pump(c) == 0 && s.done == 1 && s.errors == 0 && same(s.f, ref[1]),
           "canceled features request: one done with the full result");
        ok(blip2c_cancel(c, s.id, &err) == BLIP2C_EINVAL, "cancel after it ended: EINVAL");
        blip2c_features_free(s.f);
    }

    /* argument errors: returned, no callback, nothing pending */
    {
        slot s;
        memset(&s, 0, sizeof s);
        blip2c_features_request fr;
        blip2c_features_request_init(&fr);
        ok(blip2c_features_submit(c, NULL, &fcb, &s, NULL, &err) == BLIP2C_EINVAL,
           "NULL request: EINVAL");
        ok(blip2c_features_submit(c, &fr, &fcb, &s, NULL, &err) == BLIP2C_EINVAL,
           "no image and no text: EINVAL (%s)", err.message);
        fr.image_path = "/nonexistent/x.png";
        ok(blip2c_features_submit(c, &fr, &fcb, &s, NULL, &err) == BLIP2C_EINVAL &&
           strstr(err.message, "/nonexistent/x.png"), "missing file: EINVAL naming it");
        fr.image_path = img[0];
        fr.n_outputs = 1;
        ok(blip2c_features_submit(c, &fr, &fcb, &s, NULL, &err) == BLIP2C_EINVAL,
           "n_outputs without outputs: EINVAL");
        ok(blip2c_features_submit(NULL, &fr, &fcb, &s, NULL, &err) == BLIP2C_EINVAL,
           "no connection: EINVAL");
        pump(c);
        ok(s.done == 0 && s.errors == 0 && blip2c_pending(c) == 0, "no callback ran");
        ok(blip2c_features_dup(NULL) == NULL, "blip2c_features_dup(NULL) is NULL");
    }

    /* the daemon dies with requests pending: each gets connection lost */
    {
        slot s[3];
        memset(s, 0, sizeof s);
        kill(d, SIGSTOP);
        int sub = 0;
        for (int i = 0; i < 3; i++) {
            blip2c_features_request fr;
            blip2c_features_request_init(&fr);
            fr.image_path = img[i % 2];
            sub += blip2c_features_submit(c, &fr, &fcb, &s[i], NULL, &err) == 0;
        }
        kill(d, SIGKILL);
        waitpid(d, NULL, 0);
        d = -1;
        int rc = pump(c);
        ok(sub == 3 && rc == BLIP2C_ECONNLOST, "daemon killed: blip2c_process says connection lost");
        int lost = 1;
        for (int i = 0; i < 3; i++) lost &= s[i].errors == 1 && s[i].done == 0 && s[i].err == BLIP2C_ECONNLOST;
        ok(lost && blip2c_pending(c) == 0, "each pending features request: one ECONNLOST error callback");
        blip2c_features_request fr;
        blip2c_features_request_init(&fr);
        fr.image_path = img[0];
        ok(blip2c_features_submit(c, &fr, &fcb, &s[0], NULL, &err) == BLIP2C_ECONNLOST,
           "submit on the broken connection: ECONNLOST");
    }

out:
    blip2c_features_free(ref[0]);
    blip2c_features_free(ref[1]);
    blip2c_close(c);
    if (d > 0) {
        kill(d, SIGTERM);
        waitpid(d, NULL, 0);
    }
    unlink(bad);
    unlink(sock);
    rmdir(tmpdir);
    return tap_done();
}
