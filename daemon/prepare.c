/*
 * prepare.c - what every job kind does on the worker pool before the
 * scheduler sees it, and the one mapping of model errors to protocol
 * errors.
 *
 *   image bytes: inline (copied at admission) or read from the client's
 *     descriptor (a regular file, at most max_image bytes, pread from 0)
 *   -> SHA-256 key of (bytes, preprocessing settings, model generation)
 *   -> feature-cache lookup (the entry the job kind asks for)
 *   -> on a miss: decode + PIL-exact resize into pixel values
 *
 * The job kinds (generate.c, features.c) call b2d_prepare_image from their
 * ops->prepare and add their own steps (tokenising, size checks).
 * Failures are recorded in the job (err, errmsg) and answered by the core
 * on the loop thread.
 */
#include "daemon.h"

#include <errno.h>
#include <glib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int b2d_ipc_code(int blip2_rc)
{
    switch (blip2_rc) {
    case BLIP2_ETOOBIG: return B2IPC_ETOO_LARGE;
    case BLIP2_ENOMEM: return B2IPC_ENOMEM;
    case BLIP2_EIMAGE: return B2IPC_EBAD_IMAGE;
    case BLIP2_EINVAL: return B2IPC_ERANGE;
    case BLIP2_EUNSUPPORTED: return B2IPC_EUNSUPPORTED;
    default: return B2IPC_EINTERNAL;
    }
}

int b2d_job_fail(b2d_job *j, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->errmsg, sizeof j->errmsg, fmt, ap);
    va_end(ap);
    j->err = code;
    return code;
}

int b2d_read_image_fd(b2d_job *j, size_t max_image)
{
    struct stat st;
    if (fstat(j->image_fd, &st) < 0 || !S_ISREG(st.st_mode))
        return b2d_job_fail(j, B2IPC_EBAD_FD, "image_fd: the descriptor is not a regular file");
    if ((uint64_t)st.st_size > max_image)
        return b2d_job_fail(j, B2IPC_ETOO_LARGE, "image_fd: the file has %lld bytes, more than the limit %zu",
                            (long long)st.st_size, max_image);
    if (st.st_size == 0) return b2d_job_fail(j, B2IPC_EBAD_IMAGE, "image_fd: the file is empty");
    if (b2d_budget_take(j->budget, B2D_MEM_JOBS, (size_t)st.st_size) < 0)
        return b2d_job_fail(j, B2IPC_EBUSY, "blip2d's memory budget (--max-memory) is taken by other requests; retry later");
    j->charged += (size_t)st.st_size;
    j->image = malloc((size_t)st.st_size);
    if (!j->image) return b2d_job_fail(j, B2IPC_ENOMEM, "out of memory for the image");
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = pread(j->image_fd, j->image + got, (size_t)st.st_size - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return b2d_job_fail(j, B2IPC_EBAD_FD, "image_fd: the descriptor cannot be read");
        if (r == 0) break; /* the file shrank: use what is there */
        got += (size_t)r;
    }
    j->image_len = got;
    close(j->image_fd);
    j->image_fd = -1;
    if (got == 0) return b2d_job_fail(j, B2IPC_EBAD_IMAGE, "image_fd: the file is empty");
    return 0;
}

/* The feature-cache key of j's image bytes and preprocessing settings. */
static void image_key(const b2d_job *j, uint8_t key[32])
{
    GChecksum *ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(ck, j->image, (gssize)j->image_len);
    char settings[64]; /* what else decides the features: preprocessing and model */
    int sl = snprintf(settings, sizeof settings, "blip2d v1 exif-rotate model-gen %u", j->model->gen);
    g_checksum_update(ck, (const guchar *)settings, sl);
    gsize klen = 32;
    g_checksum_get_digest(ck, key, &klen);
    g_checksum_free(ck);
}

void b2d_cache_key(const uint8_t key[32], const char *tag, uint8_t out[32])
{
    if (!tag) {
        memcpy(out, key, 32);
        return;
    }
    GChecksum *ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(ck, key, 32);
    g_checksum_update(ck, (const guchar *)tag, (gssize)strlen(tag));
    gsize klen = 32;
    g_checksum_get_digest(ck, out, &klen);
    g_checksum_free(ck);
}

size_t b2d_decode_cost(const blip2_image_info *info)
{
    size_t px = (size_t)info->width * (size_t)info->height;
    size_t w = (size_t)(info->width > info->height ? info->width : info->height);
    return info->decode_bytes + (info->orientation > 1 ? 3 * px : 0) + B2D_DECODE_SCRATCH +
           B2D_DECODE_ROWS * w * 3 * 4;
}

/* The decode of j's image stops once j is canceled for good: its client
 * has gone (or shutdown), or a cancel stops its kind (generate). */
static int image_stop_cb(void *ud)
{
    const b2d_job *j = ud;
    int why = atomic_load(&j->canceled);
    return why >= B2D_CANCEL_GONE || (why && j->ops->cancel_stops);
}

int b2d_prepare_image(b2d_job *j, const b2d_prep_env *env, const char *tag, float *out, size_t n)
{
    const blip2_model *m = j->model->m;
    if (j->image_fd >= 0 && b2d_read_image_fd(j, env->max_image) < 0) return j->err;
    image_key(j, j->key);
    uint8_t ck[32];
    b2d_cache_key(j->key, tag, ck);
    j->cached = b2d_cache_get(env->cache, ck, out, n);
    if (!j->cached) {
        if (!(j->px = malloc(sizeof(float) * blip2_pixel_values_len(m))))
            return b2d_job_fail(j, B2IPC_ENOMEM, "out of memory");
        blip2_error err = {0};
        blip2_image_opts io = {.stop = image_stop_cb, .stop_ud = j};
        /* what the decode will hold, from the header: beyond the reserve
         * charged at admission, taken from the budget before any pixel is
         * decoded; all of it is given back when the decode is over */
        blip2_image_info info;
        int rc = blip2_image_probe(j->image, j->image_len, &io, &info, &err);
        if (rc < 0) return b2d_job_fail(j, b2d_ipc_code(rc), "%s", err.text);
        size_t cost = b2d_decode_cost(&info), reserve = j->decode_reserve;
        size_t extra = cost > reserve ? cost - reserve : 0;
        if (extra && b2d_budget_take(env->budget, B2D_MEM_DECODE, extra) < 0)
            return (long long)cost > env->budget->max
                       ? b2d_job_fail(j, B2IPC_ETOO_LARGE, "image: decoding this %dx%d %s needs %zu MiB, more than "
                                      "blip2d's memory budget (--max-memory)", info.width, info.height, info.format,
                                      cost >> 20)
                       : b2d_job_fail(j, B2IPC_EBUSY, "blip2d's memory budget (--max-memory) is taken by other "
                                      "requests' images; retry later");
        b2d_budget_move(env->budget, B2D_MEM_JOBS, B2D_MEM_DECODE, (long long)reserve);
        rc = blip2_preprocess(m, j->image, j->image_len, &io, j->px, &err);
        b2d_budget_add(env->budget, B2D_MEM_DECODE, -(long long)(extra + reserve));
        j->charged -= reserve;
        j->decode_reserve = 0;
        if (rc < 0) return b2d_job_fail(j, b2d_ipc_code(rc), "%s", err.text);
    }
    if (j->decode_reserve) { /* a cache hit: no decode */
        b2d_budget_add(env->budget, B2D_MEM_JOBS, -(long long)j->decode_reserve);
        j->charged -= j->decode_reserve;
        j->decode_reserve = 0;
    }
    free(j->image);
    j->image = NULL;
    return j->cached;
}
