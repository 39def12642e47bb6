/*
 * fuzz_server.c - libFuzzer target: the daemon's socket front end, driven
 * by a hostile peer.
 *
 * The real server (b2d_server_run with the opt-tiny golden model, every
 * daemon source but main.c) runs on its own thread, started once,
 * listening on a socket in a private directory.  Each input is a script
 * played by one client connection:
 *
 *   op byte % 10, then a byte n-1 (n = 1..256):
 *     0    send the next n bytes (a frame, part of one, garbage)
 *     1    send the next n bytes as a burst, repeated (next byte + 1) times
 *     2    a pick byte, then n bytes sent carrying pick % 4 + 1
 *          descriptors (SCM_RIGHTS), each chosen by two more bits of pick:
 *          a memfd holding a small PNG, /dev/null, a pipe, a directory
 *     3    read whatever replies are there
 *     4    sleep n x 20 us, leaving replies unread
 *     5    shutdown(SHUT_WR)
 *     6    reset: close at once, leaving replies unread (the peer's recvmsg
 *          then fails with ECONNRESET), and end the script
 *     7    a second connection sends the script's bytes so far
 *     8    a fault: the daemon's ((n-1) & 7)-th next recvmsg (0: the very
 *          next) fails, receiving nothing, with the errno chosen by
 *          (n-1) >> 3: ECONNRESET, ETIMEDOUT, ENOMEM or EINTR
 *     9    short reads: from now on each recvmsg of the daemon gets at most
 *          n bytes (256: no cap)
 *   at the end: close (unread replies left in place).
 *
 * Ops 8 and 9 act through this file's recvmsg, which the daemon's sources
 * (linked into this program) call instead of the C library's: the failure
 * points the security review's finding 1 needed (ECONNRESET inside the
 * daemon's read loop, right after a read that carried descriptors) are
 * chosen by the input instead of left to timing.  Faults and caps end with
 * the input.
 *
 * The client and the daemon share one process, so a descriptor number the
 * daemon closes by mistake (finding 1: a stale SCM_RIGHTS buffer parsed
 * after a failed recvmsg) is checked three ways after every step:
 *   - each descriptor the harness holds must still be open on the same
 *     file (fstat device and inode): the descriptors it passes, the
 *     client sockets, and a victim connection opened once, which never
 *     sends anything, so the daemon must never close it (seen as a hang-up
 *     on the harness's end);
 *   - this file's close() aborts when a thread of the daemon closes a
 *     number that is not open (EBADF: a descriptor closed twice);
 *   - libuv's abort on a watcher whose descriptor vanished is a crash.
 *
 * Frames are taken as they are: the seed corpus (corpus/server/) holds
 * valid hello, ping, status, generate (inline image, image_fd, stream)
 * and features frames, so mutations start from the protocol.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "daemon.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef B2_FUZZ_MODEL_DIR
#error "B2_FUZZ_MODEL_DIR: the golden opt-tiny model (tests/fuzz/run.sh sets it)"
#endif
#ifndef B2_FUZZ_IMAGE
#error "B2_FUZZ_IMAGE: a small PNG (tests/fuzz/run.sh sets it)"
#endif

static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static b2d_config cfg;

/* Descriptors the harness keeps across inputs, with their identity. */
enum { SRC_IMAGE, SRC_NULL, SRC_PIPE_R, SRC_PIPE_W, SRC_DIR, N_SRC };
static int src[N_SRC];
static struct stat src_st[N_SRC];

static int listen_fd = -1;
static pthread_t harness_thread;   /* the thread running the inputs */
static int victim = -1;            /* a connection that never sends */
static struct stat victim_st;

/* The faults an input arms (ops 8, 9), read by the daemon's threads. */
static atomic_int fault_skip = -1; /* recvmsg calls to let through first; -1: none */
static atomic_int fault_errno;
static atomic_int read_cap;        /* bytes per recvmsg; 0: no cap */

/* The daemon's recvmsg (its sources are linked into this program, so they
 * call this one): the real system call, unless a fault is armed (then it
 * fails as the kernel does, msghdr untouched) or reads are capped. */
ssize_t recvmsg(int fd, struct msghdr *mh, int flags)
{
    int skip = atomic_load(&fault_skip);
    if (skip >= 0) {
        /* the kernel resets only a connection with something to read (data
         * or its end): one that would block (the victim, which never
         * sends) gets no fault and does not use up the armed one */
        char b;
        if (syscall(SYS_recvfrom, fd, &b, 1, MSG_PEEK | MSG_DONTWAIT, NULL, NULL) < 0 &&
            (errno == EAGAIN || errno == EWOULDBLOCK))
            skip = -1;
    }
    while (skip >= 0) {
        if (atomic_compare_exchange_weak(&fault_skip, &skip, skip - 1)) {
            if (skip == 0) {
                errno = atomic_load(&fault_errno);
                return -1;
            }
            break;
        }
    }
    int cap = atomic_load(&read_cap);
    if (cap > 0 && mh->msg_iovlen == 1 && mh->msg_iov[0].iov_len > (size_t)cap) {
        struct iovec io = {mh->msg_iov[0].iov_base, (size_t)cap};
        struct msghdr m2 = *mh;
        m2.msg_iov = &io;
        ssize_t n = syscall(SYS_recvmsg, fd, &m2, flags);
        mh->msg_controllen = m2.msg_controllen;
        mh->msg_flags = m2.msg_flags;
        return n;
    }
    return syscall(SYS_recvmsg, fd, mh, flags);
}

/* close(): a thread of the daemon closing a number that is not open has
 * closed a descriptor twice (or one it never owned). */
int close(int fd)
{
    int rc = (int)syscall(SYS_close, fd);
    if (rc < 0 && errno == EBADF && fd >= 0 && !pthread_equal(pthread_self(), harness_thread)) {
        fprintf(stderr, "fuzz_server: the daemon closed descriptor %d, which was not open "
                "(closed twice?)\n", fd);
        abort();
    }
    return rc;
}

static void *server_thread(void *arg)
{
    b2d_server_run(&cfg, arg, listen_fd);
    return NULL;
}

static int same_file(int fd, const struct stat *want)
{
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == want->st_dev &&
           st.st_ino == want->st_ino;
}

/* Every descriptor the harness holds is still its own. */
static void check_fds(int c, const struct stat *cst, int c2,
                      const struct stat *c2st, const char *when)
{
    for (int i = 0; i < N_SRC; i++)
        if (!same_file(src[i], &src_st[i])) {
            fprintf(stderr, "fuzz_server: harness descriptor %d (source %d) closed "
                    "or replaced by the daemon %s\n", src[i], i, when);
            abort();
        }
    if ((c >= 0 && !same_file(c, cst)) || (c2 >= 0 && !same_file(c2, c2st)) ||
        (victim >= 0 && !same_file(victim, &victim_st))) {
        fprintf(stderr, "fuzz_server: a client's socket was closed or "
                "replaced by the daemon %s\n", when);
        abort();
    }
    /* the victim never sent a byte: nothing may have ended its connection */
    struct pollfd pf = {victim, POLLIN, 0};
    char b;
    if (victim >= 0 && poll(&pf, 1, 0) > 0 &&
        ((pf.revents & (POLLHUP | POLLERR)) || recv(victim, &b, 1, MSG_DONTWAIT | MSG_PEEK) == 0)) {
        fprintf(stderr, "fuzz_server: the daemon closed another connection "
                "(the victim's, which never sent anything) %s\n", when);
        abort();
    }
}

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    long n;
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    *out = malloc(n > 0 ? (size_t)n : 1);
    *len = (size_t)n;
    if (!*out || fread(*out, 1, *len, f) != *len) {
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

static char sock_dir[] = "/tmp/fuzz_server.XXXXXX";

/* at exit (libFuzzer's end of run): the socket and its directory go */
static void remove_socket(void)
{
    unlink(sock_path);
    rmdir(sock_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    blip2_model *m = NULL;
    blip2_error err;
    blip2_load_opts lo;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    uint8_t *png;
    size_t png_len;
    int pfd[2];

    b2d_log_level = B2D_LOG_ERROR - 1; /* quiet: errors are expected here */
    memset(&lo, 0, sizeof lo);         /* no weights cache: the folder as is */
    if (blip2_model_load(&m, B2_FUZZ_MODEL_DIR, &lo, &err) < 0) {
        fprintf(stderr, "fuzz_server: %s: %s\n", B2_FUZZ_MODEL_DIR, err.text);
        exit(1);
    }
    harness_thread = pthread_self();
    cfg = (b2d_config){
        .model_path = B2_FUZZ_MODEL_DIR, .threads = 1, .max_queue = 16,
        .max_batch = 4, .prefill_chunk = 16, .max_frame = 1 << 20,
        .cache_bytes = 0, .max_connections = 256, .max_inflight = 8,
        .shutdown_timeout = 1, .stall_timeout = 2, .max_output = 4 << 20,
        .max_memory = 256 << 20, .frame_timeout = 2,
        /* one uid here: as many connections as the daemon takes, requests
         * as queued.  The harness holds at most three open (the victim and
         * the script's one or two); the daemon may count hundreds more
         * whose peers have gone (a backlog accepted in one batch when its
         * loop fell behind), but it closes those at the cap before any
         * open idle one, so the victim is never closed to make room */
        .max_conns_per_uid = 256, .max_inflight_per_uid = 16,
    };
    if (!mkdtemp(sock_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(sock_path, sizeof sock_path, "%s/s", sock_dir);
    atexit(remove_socket);
    cfg.socket_path = sock_path;
    strcpy(sa.sun_path, sock_path);
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        listen(listen_fd, 128) < 0) {
        perror("fuzz_server: listen");
        exit(1);
    }

    if (read_file(B2_FUZZ_IMAGE, &png, &png_len) < 0) {
        fprintf(stderr, "fuzz_server: cannot read %s\n", B2_FUZZ_IMAGE);
        exit(1);
    }
    src[SRC_IMAGE] = memfd_create("image", MFD_CLOEXEC);
    if (src[SRC_IMAGE] < 0 || write(src[SRC_IMAGE], png, png_len) != (ssize_t)png_len)
        exit(1);
    free(png);
    src[SRC_NULL] = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (pipe2(pfd, O_CLOEXEC) < 0)
        exit(1);
    src[SRC_PIPE_R] = pfd[0];
    src[SRC_PIPE_W] = pfd[1];
    src[SRC_DIR] = open(sock_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (int i = 0; i < N_SRC; i++)
        if (src[i] < 0 || fstat(src[i], &src_st[i]) < 0)
            exit(1);

    pthread_t t;
    if (pthread_create(&t, NULL, server_thread, m) != 0)
        exit(1);
    pthread_detach(t);
    return 0;
}

static int connect_client(struct stat *st);

/* The victim connection, once the daemon accepts connections. */
static void open_victim(void)
{
    for (int i = 0; i < 500 && victim < 0; i++)
        if ((victim = connect_client(&victim_st)) < 0)
            usleep(10000);
    if (victim < 0) {
        fprintf(stderr, "fuzz_server: cannot connect to the daemon\n");
        exit(1);
    }
}

static int connect_client(struct stat *st)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, sock_path);
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0)
        return -1;
    if (connect(c, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(c);
        return -1;
    }
    fcntl(c, F_SETFL, O_NONBLOCK);
    fstat(c, st);
    return c;
}

static void drain(int c)
{
    char buf[65536];
    while (recv(c, buf, sizeof buf, MSG_DONTWAIT) > 0)
        ;
}

/* p[0..n) with pick % 4 + 1 descriptors, each chosen by two more bits of
 * pick: the image memfd, /dev/null, the pipe, the directory. */
static void send_fds(int c, const uint8_t *p, size_t n, uint8_t pick)
{
    int fds[4], k = pick % 4 + 1;
    union { char b[CMSG_SPACE(sizeof fds)]; struct cmsghdr align; } ctl;
    struct iovec iov = {(void *)p, n};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)k)};
    static const int kinds[4] = {SRC_IMAGE, SRC_NULL, SRC_PIPE_R, SRC_DIR};
    memset(&ctl, 0, sizeof ctl);
    for (int i = 0; i < k; i++)
        fds[i] = src[kinds[(pick >> (2 + 2 * i)) & 3]];
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)k);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)k);
    (void)sendmsg(c, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct stat cst, c2st;
    int c = connect_client(&cst), c2 = -1;
    size_t i = 0;
    int reset = 0;

    if (victim < 0)
        open_victim();
    if (c < 0)
        return 0; /* the backlog is full for a moment */
    while (i < size && !reset) {
        uint8_t op = data[i++] % 10;
        size_t n = i < size ? (size_t)data[i++] + 1 : 1, arg = n;
        if (n > size - i)
            n = size - i;
        switch (op) {
        case 0:
            if (n)
                (void)send(c, data + i, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            i += n;
            break;
        case 1: { /* a burst: the bytes, repeated */
            int r = i + n < size ? data[i + n] + 1 : 1;
            for (int k = 0; k < r && n; k++)
                if (send(c, data + i, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
                    break;
            i += n + (i + n < size);
            break;
        }
        case 2: { /* a pick byte, then n bytes carrying its descriptors */
            if (i >= size)
                break;
            uint8_t pick = data[i++];
            if (n > size - i)
                n = size - i;
            if (n)
                send_fds(c, data + i, n, pick);
            i += n;
            break;
        }
        case 3:
            drain(c);
            break;
        case 4: /* replies arrive and stay unread */
            usleep((useconds_t)(n * 20));
            break;
        case 5:
            shutdown(c, SHUT_WR);
            break;
        case 6:
            reset = 1;
            break;
        case 7: /* the script so far, on a second connection */
            if (c2 < 0)
                c2 = connect_client(&c2st);
            if (c2 >= 0)
                (void)send(c2, data, i, MSG_NOSIGNAL | MSG_DONTWAIT);
            break;
        case 8: { /* a failing recvmsg, (n-1) & 7 calls from now */
            static const int errs[4] = {ECONNRESET, ETIMEDOUT, ENOMEM, EINTR};
            atomic_store(&fault_errno, errs[((arg - 1) >> 3) & 3]);
            atomic_store(&fault_skip, (int)((arg - 1) & 7));
            break;
        }
        case 9: /* short reads */
            atomic_store(&read_cap, arg < 256 ? (int)arg : 0);
            break;
        }
        check_fds(c, &cst, c2, &c2st, "during the script");
    }
    if (!reset) { /* give the daemon a moment to answer what it read */
        struct pollfd pf = {c, POLLIN, 0};
        poll(&pf, 1, 1);
    }
    close(c);
    if (c2 >= 0)
        close(c2);
    atomic_store(&fault_skip, -1);
    atomic_store(&read_cap, 0);
    check_fds(-1, NULL, -1, NULL, "after the connection closed");
    return 0;
}
