/*
 * features.c - blip2c_features_get: the features op (protocol version 2).
 *
 *   request: image (path / descriptor -> SCM_RIGHTS, or inline bytes),
 *     text, output names --b2c__send--> waiter --b2c__wait--> features reply
 *   reply: tensors as little-endian float32/int32 bytes (decoded into the
 *     reply's arena) --b2c__features_copy--> one allocation: the struct, the
 *     tensor array, names and data in host byte order
 *
 *   blip2c_features_submit: the same request with callbacks instead of a
 *     waiter; client.c's dispatch makes the copy, passes it to the done
 *     callback and frees it after (blip2c_features_dup keeps one)
 */
#include "client-private.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void blip2c_features_request_init(blip2c_features_request *rq)
{
    memset(rq, 0, sizeof *rq);
    rq->image_fd = -1;
}

const blip2c_tensor *blip2c_features_find(const blip2c_features *f, const char *name)
{
    for (size_t i = 0; f && name && i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

void blip2c_features_free(blip2c_features *f)
{
    free(f);
}

#define B2C__ALIGN(x) (((x) + 15) & ~(size_t)15)

blip2c_features *b2c__features_copy(const b2ipc_reply *rp, bool from_wire)
{
    const uint32_t n = rp->features.n_tensors;
    size_t sz = B2C__ALIGN(sizeof(blip2c_features)) + B2C__ALIGN(n * sizeof(blip2c_tensor));
    for (uint32_t i = 0; i < n; i++) {
        const b2ipc_tensor *t = &rp->features.tensors[i];
        sz += B2C__ALIGN(t->data_len) + B2C__ALIGN(strlen(t->name) + 1) + B2C__ALIGN(strlen(t->dtype) + 1);
    }
    char *mem = calloc(1, sz);
    if (!mem) return NULL;
    blip2c_features *f = (blip2c_features *)mem;
    blip2c_tensor *ts = (blip2c_tensor *)(mem + B2C__ALIGN(sizeof *f));
    char *p = (char *)ts + B2C__ALIGN(n * sizeof *ts);
    for (uint32_t i = 0; i < n; i++) {
        const b2ipc_tensor *t = &rp->features.tensors[i];
        blip2c_tensor *d = &ts[i];
        void *data = p;
        if (t->data_len) memcpy(data, t->data, t->data_len);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (size_t k = 0; from_wire && k < t->data_len / 4; k++)
            ((uint32_t *)data)[k] = __builtin_bswap32(((uint32_t *)data)[k]);
#endif
        p += B2C__ALIGN(t->data_len);
        d->name = strcpy(p, t->name);
        p += B2C__ALIGN(strlen(t->name) + 1);
        d->dtype = strcpy(p, t->dtype);
        p += B2C__ALIGN(strlen(t->dtype) + 1);
        d->ndim = (int)t->ndim;
        d->numel = t->data_len / 4;
        for (uint32_t k = 0; k < t->ndim && k < 8; k++) d->shape[k] = t->shape[k];
        if (!strcmp(t->dtype, "int32")) d->i32 = data;
        else d->f32 = data;
    }
    f->id = rp->id;
    f->tensors = ts;
    f->n_tensors = n;
    f->cached = rp->features.cached;
    f->timings.queue_ms = rp->features.timings.queue_ms;
    f->timings.preprocess_ms = rp->features.timings.preprocess_ms;
    f->timings.vision_ms = rp->features.timings.vision_ms;
    f->timings.text_ms = rp->features.timings.text_ms;
    f->timings.total_ms = rp->features.timings.total_ms;
    return f;
}

/* The descriptor to send for rq (-1: none or inline); 0 or an error. */
static int b2c__features_fd(blip2c_conn *c, const blip2c_features_request *rq, int *fd,
                            blip2c_error *err)
{
    *fd = -1;
    int sources = (rq->image_path != NULL) + (rq->image_fd >= 0) + (rq->image != NULL);
    if (sources > 1)
        return b2c__cerr(c, err, BLIP2C_EINVAL,
                         "give only one image source (image_path, image_fd or image bytes)");
    if (!sources && !rq->text)
        return b2c__cerr(c, err, BLIP2C_EINVAL, "no image and no text given");
    if (rq->image && rq->image_len == 0)
        return b2c__cerr(c, err, BLIP2C_EINVAL, "the image is empty (0 bytes)");
    if (rq->image_path) {
        blip2c_error e;
        if (blip2c_open_image(rq->image_path, fd, &e) < 0) return b2c__report(c, err, &e);
    } else if (rq->image_fd >= 0) {
        struct stat st;
        if (fstat(rq->image_fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
            return b2c__cerr(c, err, BLIP2C_EINVAL,
                             "image_fd %d is not an open, non-empty regular file", rq->image_fd);
        if ((*fd = fcntl(rq->image_fd, F_DUPFD_CLOEXEC, 3)) < 0) {
            int e = errno;
            return b2c__cerr(c, err, BLIP2C_EINVAL, "cannot duplicate image_fd %d: %s",
                             rq->image_fd, strerror(e));
        }
    }
    return 0;
}

/* Checks rq and queues it (with waiter w, or callbacks cb for user). */
static int b2c__features_send(blip2c_conn *c, const blip2c_features_request *rq,
                              const blip2c_callbacks *cb, blip2c_features_cb fdone, void *user,
                              b2c__waiter *w, b2c__req **out_req, blip2c_error *err)
{
    if (c->broken) return b2c__report(c, err, &c->broken_err);
    if (!rq) return b2c__cerr(c, err, BLIP2C_EINVAL, "no features request given");
    if (c->info.protocol < 2)
        return b2c__cerr(c, err, BLIP2C_EUNSUPPORTED,
                         "features: blip2d speaks protocol version %u, features needs version 2 "
                         "(a newer blip2d)", c->info.protocol);
    if (rq->n_outputs > B2IPC_FEAT_COUNT)
        return b2c__cerr(c, err, BLIP2C_EINVAL, "features: %zu outputs, at most %d",
                         rq->n_outputs, B2IPC_FEAT_COUNT);
    if (rq->n_outputs && !rq->outputs)
        return b2c__cerr(c, err, BLIP2C_EINVAL, "features: n_outputs is %zu but outputs is NULL",
                         rq->n_outputs);
    int fd;
    int rc = b2c__features_fd(c, rq, &fd, err);
    if (rc < 0) return rc;
    b2ipc_request q;
    b2ipc_request_init(&q, B2IPC_OP_FEATURES);
    q.features.image_fd = fd >= 0;
    q.features.image = rq->image;
    q.features.image_len = rq->image ? rq->image_len : 0;
    q.features.text = rq->text;
    q.features.outputs = rq->outputs;
    q.features.n_outputs = (uint32_t)rq->n_outputs;
    rc = b2c__send(c, &q, B2C__FEATURES, fd, cb, user, w, out_req, err);
    if (rc == 0 && !w) (*out_req)->fdone = fdone;
    return rc;
}

int blip2c_features_get(blip2c_conn *c, const blip2c_features_request *rq,
                        blip2c_features **out, blip2c_error *err)
{
    if (out) *out = NULL;
    if (!c) return b2c__err(err, BLIP2C_EINVAL, "no connection");
    if (c->depth > 0)
        return b2c__cerr(c, err, BLIP2C_EINVAL,
                         "blip2c_features_get is a blocking call and cannot be used inside a callback");
    if (c->broken) return b2c__report(c, err, &c->broken_err);
    if (!rq || !out) return b2c__cerr(c, err, BLIP2C_EINVAL, "no request or no output pointer");
    b2c__waiter w;
    memset(&w, 0, sizeof w);
    b2c__req *r;
    int rc = b2c__features_send(c, rq, NULL, NULL, NULL, &w, &r, err);
    if (rc < 0) return rc;
    rc = b2c__wait(c, &w, c->timeout_ms);
    if (rc == BLIP2C_ETIMEDOUT) {
        b2c__abandon(c, r);
        return b2c__cerr(c, err, BLIP2C_ETIMEDOUT, "features: no reply from blip2d within %d ms",
                         c->timeout_ms);
    }
    if (w.rc < 0) {
        blip2c_features_free(w.features);
        return b2c__report(c, err, &w.err);
    }
    *out = w.features;
    return 0;
}

int blip2c_features_submit(blip2c_conn *c, const blip2c_features_request *rq,
                           const blip2c_features_callbacks *cb, void *user, uint64_t *id,
                           blip2c_error *err)
{
    if (!c) return b2c__err(err, BLIP2C_EINVAL, "no connection");
    blip2c_callbacks gcb = { NULL, NULL, cb ? cb->error : NULL };
    b2c__req *r;
    int rc = b2c__features_send(c, rq, &gcb, cb ? cb->done : NULL, user, NULL, &r, err);
    if (rc < 0) return rc;
    if (id) *id = r->id;
    return 0;
}

blip2c_features *blip2c_features_dup(const blip2c_features *f)
{
    if (!f) return NULL;
    b2ipc_tensor ts[16];
    b2ipc_reply rp;
    if (f->n_tensors > sizeof ts / sizeof ts[0]) return NULL;
    memset(&rp, 0, sizeof rp);
    memset(ts, 0, sizeof ts);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const blip2c_tensor *t = &f->tensors[i];
        ts[i].name = t->name;
        ts[i].dtype = t->dtype;
        ts[i].ndim = (uint32_t)t->ndim;
        for (int k = 0; k < t->ndim && k < 8; k++) ts[i].shape[k] = t->shape[k];
        ts[i].data = t->f32 ? (const void *)t->f32 : (const void *)t->i32;
        ts[i].data_len = t->numel * 4;
    }
    rp.id = f->id;
    rp.features.tensors = ts;
    rp.features.n_tensors = (uint32_t)f->n_tensors;
    rp.features.cached = f->cached;
    rp.features.timings.queue_ms = f->timings.queue_ms;
    rp.features.timings.preprocess_ms = f->timings.preprocess_ms;
    rp.features.timings.vision_ms = f->timings.vision_ms;
    rp.features.timings.text_ms = f->timings.text_ms;
    rp.features.timings.total_ms = f->timings.total_ms;
    return b2c__features_copy(&rp, false);
}
