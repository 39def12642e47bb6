/*
 * log.c - leveled log lines on stderr.  Each line is formatted into one
 * buffer and written with a single write(2), so lines of different threads
 * never interleave.  Under systemd the journal adds the time stamp; the
 * "<N>" prefix is the sd-daemon priority, understood by journald and
 * harmless on a terminal.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int b2d_log_level = B2D_LOG_INFO;

void b2d_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"error", "warning", "info", "debug"};
    static const int prio[] = {3, 4, 6, 7};
    if (level > b2d_log_level) return;
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "<%d>blip2d[%ld]: %s: ", prio[level], (long)getpid(), names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m < sizeof buf - (size_t)n - 1 ? (size_t)m : sizeof buf - (size_t)n - 2);
    buf[len++] = '\n';
    ssize_t w = write(2, buf, len);
    (void)w;
}
