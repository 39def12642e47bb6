/*
 * daemon_util.h - a real blip2d for the C tests that talk to one through
 * libblip2client (tests/test_e2e.c, tests/test_features_async.c).  After
 * blip2client.h.
 *
 *   start_blip2d   fork + exec blip2d --model MODEL --socket SOCK -q, then
 *                  wait until a client can connect (the model is loaded)
 */
#ifndef BLIP2_DAEMON_UTIL_H
#define BLIP2_DAEMON_UTIL_H
#include "blip2client.h"

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* The daemon's pid (127 exit status if blip2d cannot run); waits up to
 * tries x 10 ms for it to accept a connection, then returns anyway (the
 * test's first call then fails and says so). */
static pid_t start_blip2d(const char *blip2d, const char *model, const char *sock, int tries)
{
    pid_t p = fork();
    if (p == 0) {
        execl(blip2d, "blip2d", "--model", model, "--socket", sock, "-q", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < tries; i++) {
        struct stat st;
        if (stat(sock, &st) == 0) {
            blip2c_conn *c;
            if (blip2c_connect(sock, &c, NULL) == 0) { blip2c_close(c); return p; }
        }
        usleep(10000);
    }
    return p;
}

#endif
