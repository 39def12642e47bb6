/*
 * sockfile.c - the listening socket file of a blip2d not started by
 * systemd.
 *
 *   path -> open its directory (O_PATH) -> bind through
 *   /proc/self/fd/N/name when that fits sun_path (else the path itself),
 *   under umask 0117, so the file is born 0660 and no chmod by path
 *   follows -> its (st_dev, st_ino) recorded with fstatat on the directory
 *   -> listen ... -> b2d_sockfile_remove: unlinkat on the directory, once,
 *   only if the name still holds that inode.
 *
 * A stale file (nobody accepts on it) is removed the same way, through the
 * directory and only if it is a socket.  The directory is held open, so a
 * rename of one of its parents does not redirect the removal.
 */
#include "sockfile.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* sa = the address that reaches name in dirfd: through /proc when /proc is
 * there and the result fits, else path. */
static void address(struct sockaddr_un *sa, const b2d_sockfile *sf)
{
    char via[sizeof sa->sun_path + 1];
    struct stat st;
    int n = snprintf(via, sizeof via, "/proc/self/fd/%d", sf->dirfd);
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t k = strlen(sf->name);
    if (n > 0 && (size_t)n + 1 + k < sizeof sa->sun_path && stat(via, &st) == 0 && S_ISDIR(st.st_mode)) {
        memcpy(sa->sun_path, via, (size_t)n);
        sa->sun_path[n] = '/';
        memcpy(sa->sun_path + n + 1, sf->name, k + 1);
    } else {
        memcpy(sa->sun_path, sf->path, strlen(sf->path) + 1);
    }
}

int b2d_sockfile_listen(b2d_sockfile *sf, const char *path)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd = -1, rc;

    sf->dirfd = -1;
    if (strlen(path) >= sizeof sa.sun_path || !*path) {
        LOG_ERR("socket path too long or empty: %s", path);
        return -1;
    }
    strcpy(sf->path, path);
    const char *slash = strrchr(path, '/');
    char dir[sizeof sf->path];
    if (slash) {
        size_t n = (size_t)(slash - path);
        memcpy(dir, path, n ? n : 1);
        dir[n ? n : 1] = '\0';
        strcpy(sf->name, slash + 1);
    } else {
        strcpy(dir, ".");
        strcpy(sf->name, path);
    }
    if (!*sf->name) {
        LOG_ERR("socket path names a directory: %s", path);
        return -1;
    }
    sf->dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (sf->dirfd < 0 && errno == ENOENT) {
        LOG_ERR("cannot bind %s: the directory %s does not exist; create it (for the system service: "
                "systemd-tmpfiles --create blip2.conf, which makes /run/blip2 with mode 0750 and group "
                "blip2), or give --socket PATH", path, dir);
        return -1;
    }
    if (sf->dirfd < 0) {
        LOG_ERR("cannot bind %s: its directory %s: %s", path, dir, strerror(errno));
        return -1;
    }
    address(&sa, sf);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        LOG_ERR("socket: %s", strerror(errno));
        goto fail;
    }
    mode_t old = umask(0117); /* the file is born 0660 */
    rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc < 0 && errno == EADDRINUSE) {
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (probe >= 0) close(probe);
        if (live) {
            umask(old);
            LOG_ERR("another daemon is already listening on %s", path);
            goto fail;
        }
        if (fstatat(sf->dirfd, sf->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(st.st_mode)) {
            LOG_INFO("removing stale socket %s", path);
            unlinkat(sf->dirfd, sf->name, 0);
            rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
        } else {
            umask(old);
            LOG_ERR("cannot bind %s: the file exists and is not a socket (left alone); give --socket another "
                    "path", path);
            goto fail;
        }
    }
    umask(old);
    if (rc < 0) {
        LOG_ERR("cannot bind %s: %s", path, strerror(errno));
        goto fail;
    }
    if (fstatat(sf->dirfd, sf->name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode)) {
        LOG_ERR("cannot find the socket just bound at %s", path);
        goto fail;
    }
    sf->dev = st.st_dev;
    sf->ino = st.st_ino;
    if (listen(fd, 128) < 0) {
        LOG_ERR("listen: %s", strerror(errno));
        b2d_sockfile_remove(sf);
        close(fd);
        return -1;
    }
    return fd;

fail:
    if (fd >= 0) close(fd);
    if (sf->dirfd >= 0) close(sf->dirfd);
    sf->dirfd = -1;
    return -1;
}

void b2d_sockfile_remove(b2d_sockfile *sf)
{
    struct stat st;
    if (!sf || sf->dirfd < 0) return;
    if (fstatat(sf->dirfd, sf->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (st.st_dev == sf->dev && st.st_ino == sf->ino)
            unlinkat(sf->dirfd, sf->name, 0);
        else
            LOG_INFO("%s is no longer the socket this daemon created: left in place", sf->path);
    }
    close(sf->dirfd);
    sf->dirfd = -1;
}
