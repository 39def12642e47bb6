/*
 * features.c - blip2c_features_get: the features op (protocol version 2).
 *
 *   request: image (path / descriptor -> SCM_RIGHTS, or inline bytes),
 *     text, output names --b2c__send--> waiter --b2c__wait--> features reply
 *   reply: tensors as little-endian float32/int32 bytes (decoded into the
 *     reply's arena) --b2c__features_copy (result.c)--> one allocation: the struct, the
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
