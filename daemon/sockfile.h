/*
 * sockfile.h - the socket file blip2d creates when systemd does not pass
 * one: created through its directory's descriptor, removed once, and only
 * while the file at its name is still the one it bound.
 */
#ifndef B2D_SOCKFILE_H
#define B2D_SOCKFILE_H

#include <sys/types.h>

typedef struct b2d_sockfile {
    int dirfd;        /* the directory, O_PATH; -1 once removed */
    char name[108];   /* the file's name in it */
    char path[108];   /* for messages */
    dev_t dev;        /* identity of the file bind() made */
    ino_t ino;
} b2d_sockfile;

/* Binds and listens on path (a stale socket file there is replaced, a live
 * daemon on it is an error; the file is born 0660 under umask 0117).
 * Returns the listening fd (non-blocking, close-on-exec) with *sf filled,
 * or -1 (logged) with sf->dirfd = -1. */
int b2d_sockfile_listen(b2d_sockfile *sf, const char *path);

/* Removes the socket file if the file now at its name is still the one
 * bound (same device and inode): a daemon started on the same path since
 * keeps its socket.  Only the first call acts; NULL and a failed listen
 * are no-ops.  Loop thread or main only. */
void b2d_sockfile_remove(b2d_sockfile *sf);

#endif
