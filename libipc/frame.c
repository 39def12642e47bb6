/*
 * frame.c - the frame reader: a byte stream in, complete frames out.
 *
 *   feed(chunk) --> [4-byte big-endian length] --> check against max_frame
 *                                                 (refuse before buffering)
 *               --> [payload bytes, buffer grown as they arrive] --> frame
 *
 * The reader holds at most one frame.  Its buffer grows geometrically but
 * never beyond the declared length, so a peer that announces 64 MiB and
 * sends 10 bytes costs a few KiB, not 64 MiB.  Between frames a buffer
 * above 64 KiB is released, so an idle connection holds little.  Errors
 * are sticky: after a refused length the stream cannot be resynchronised.
 */
#include "ipc-private.h"

#include <stdlib.h>
#include <string.h>

#define B2IPC__RETAIN (64u << 10)   /* buffer kept between frames */
#define B2IPC__MIN_GROW 4096u

void b2ipc_reader_init(b2ipc_reader *r, size_t max_frame)
{
    memset(r, 0, sizeof *r);
    if (max_frame == 0) max_frame = B2IPC_DEFAULT_MAX_FRAME;
    if (max_frame > UINT32_MAX) max_frame = UINT32_MAX;
    r->max_frame_ = max_frame;
}

void b2ipc_reader_destroy(b2ipc_reader *r)
{
    if (!r) return;
    free(r->buf_);
    r->buf_ = NULL;
    r->cap_ = r->len_ = r->want_ = r->hdr_len_ = 0;
}

/* Forget the complete frame; keep a small buffer for the next one. */
static void b2ipc__reader_next(b2ipc_reader *r)
{
    r->hdr_len_ = 0;
    r->len_ = r->want_ = 0;
    r->state_ = 0;
    if (r->cap_ > B2IPC__RETAIN) {
        free(r->buf_);
        r->buf_ = NULL;
        r->cap_ = 0;
    }
}

static int b2ipc__reader_reserve(b2ipc_reader *r, size_t need)
{
    if (need <= r->cap_ && r->buf_) return 0;
    size_t cap = r->cap_ * 2;
    if (cap < B2IPC__MIN_GROW) cap = B2IPC__MIN_GROW;
    if (cap > r->want_) cap = r->want_;  /* never beyond the frame */
    if (cap < need) cap = need;
    if (cap == 0) cap = 1;               /* a zero-length frame still gets a pointer */
    uint8_t *nb = realloc(r->buf_, cap);
    if (!nb) return B2IPC_ENOMEM;
    r->buf_ = nb;
    r->cap_ = cap;
    return 0;
}

int b2ipc_reader_feed(b2ipc_reader *r, const void *data, size_t len,
                      size_t *used)
{
    const uint8_t *p = data;
    size_t i = 0;
    if (used) *used = 0;
    if (r->state_ < 0) return r->state_;
    if (r->state_ == 1) b2ipc__reader_next(r);
    if (len && !p) return B2IPC_EINVAL;

    if (r->hdr_len_ < 4) {
        size_t take = 4 - r->hdr_len_;
        if (take > len) take = len;
        memcpy(r->hdr_ + r->hdr_len_, p, take);
        r->hdr_len_ += take;
        i += take;
        if (r->hdr_len_ < 4) goto out;
        r->want_ = (size_t)r->hdr_[0] << 24 | (size_t)r->hdr_[1] << 16 |
                   (size_t)r->hdr_[2] << 8 | r->hdr_[3];
        if (r->want_ > r->max_frame_) {
            r->state_ = B2IPC_EFRAME_TOO_LARGE;
            goto out;
        }
        r->len_ = 0;
    }
    size_t take = r->want_ - r->len_;
    if (take > len - i) take = len - i;
    if (take || r->want_ == 0) {
        if (b2ipc__reader_reserve(r, r->len_ + take) < 0) {
            r->state_ = B2IPC_ENOMEM;
            goto out;
        }
        memcpy(r->buf_ + r->len_, p + i, take);
        r->len_ += take;
        i += take;
    }
    if (r->len_ == r->want_) r->state_ = 1;
out:
    if (used) *used = i;
    return r->state_;
}

int b2ipc_reader_frame(const b2ipc_reader *r, const uint8_t **payload,
                       size_t *len)
{
    if (r->state_ != 1) return B2IPC_EINVAL;
    *payload = r->buf_;
    *len = r->len_;
    return 0;
}

int b2ipc_reader_take(b2ipc_reader *r, uint8_t **payload, size_t *len)
{
    if (r->state_ != 1) return B2IPC_EINVAL;
    *payload = r->buf_;
    *len = r->len_;
    r->buf_ = NULL;
    r->cap_ = 0;
    b2ipc__reader_next(r);
    return 0;
}

size_t b2ipc_reader_pending(const b2ipc_reader *r)
{
    if (r->state_ != 0) return 0;
    return r->hdr_len_ + r->len_;
}

size_t b2ipc_reader_memory(const b2ipc_reader *r)
{
    return r->cap_;
}
