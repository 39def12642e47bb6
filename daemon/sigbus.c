/*
 * sigbus.c - fail loudly when a mapped weight file changes underneath us.
 *
 * The weights are mapped MAP_SHARED and f32 tensors are used in place
 * (model/formats/safetensors.c).  If the admin truncates or rewrites the file while
 * the daemon runs, a read of a page past the new end of file raises SIGBUS
 * in whichever thread touched it (usually the engine).  Returning garbage
 * captions would be worse than dying, and resuming is impossible, so the
 * handler writes one log line with write(2) (async-signal-safe) and calls
 * _exit(70) (EX_SOFTWARE); under systemd Restart=on-failure starts a fresh
 * daemon that maps the file as it is now (or refuses it at load).
 *
 *   main -> b2d_sigbus_setup() -> sigaction(SIGBUS, SA_SIGINFO)
 *   fault -> b2d__sigbus_cb: "<3>blip2d[pid]: error: model file changed
 *            underneath the daemon (SIGBUS at 0x...): exiting so systemd
 *            restarts it" -> _exit(70)
 */
#include "sigbus.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

/* Appends s to buf at *n (bounded by cap). */
static void b2d__put(char *buf, size_t *n, size_t cap, const char *s)
{
    while (*s && *n < cap) buf[(*n)++] = *s++;
}

/* Appends v in decimal (hex when base 16). */
static void b2d__putnum(char *buf, size_t *n, size_t cap, unsigned long v, unsigned base)
{
    char tmp[24];
    int k = 0;
    do { tmp[k++] = "0123456789abcdef"[v % base]; v /= base; } while (v && k < (int)sizeof tmp);
    while (k > 0 && *n < cap) buf[(*n)++] = tmp[--k];
}

static void b2d__sigbus_cb(int sig, siginfo_t *si, void *uctx)
{
    (void)sig; (void)uctx;
    char buf[256];
    size_t n = 0, cap = sizeof buf - 1;
    b2d__put(buf, &n, cap, "<3>blip2d[");
    b2d__putnum(buf, &n, cap, (unsigned long)getpid(), 10);
    b2d__put(buf, &n, cap, "]: error: model file changed underneath the daemon (SIGBUS at 0x");
    b2d__putnum(buf, &n, cap, (unsigned long)(si ? si->si_addr : NULL), 16);
    b2d__put(buf, &n, cap, "): exiting so systemd restarts it\n");
    ssize_t w = write(2, buf, n);
    (void)w;
    _exit(B2D_EXIT_SIGBUS);
}

int b2d_sigbus_setup(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = b2d__sigbus_cb;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, NULL) < 0 ? -1 : 0;
}
