/*
 * log.c - leveled log lines on stderr.  Each line is formatted into one
 * buffer and written with a single write(2), so lines of different threads
 * never interleave.
 *
 * Two forms, chosen once (b2d_log_init):
 *   - under journald ($JOURNAL_STREAM names the device and inode of our
 *     stderr): "<N>message", the sd-daemon priority prefix, which journald
 *     turns into the entry's priority; it adds time, identifier and pid;
 *   - anywhere else (a terminal, nohup.out, docker logs, a pipe):
 *     "2026-12-06 03:01:41.123 blip2d[PID]: info: message", local time.
 *
 * Messages quote what clients send (hello.client, refused frames, image
 * errors), so every control byte of the message (newline, carriage
 * return, escape, DEL ...) is written as \xNN: a client cannot start a
 * line of its own, with a "<N>" priority it chooses, or drive a terminal.
 * The prefix is the only thing on a line not escaped.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int b2d_log_level = B2D_LOG_INFO;
static int log_journal = -1; /* -1: not decided yet */

int b2d_log_to_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(2, &st) < 0) return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void b2d_log_init(void)
{
    log_journal = b2d_log_to_journal();
}

void b2d_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"error", "warning", "info", "debug"};
    static const int prio[] = {3, 4, 6, 7};
    if (level > b2d_log_level) return;
    if (log_journal < 0) log_journal = b2d_log_to_journal();
    char buf[1200];
    int n;
    if (log_journal) {
        n = snprintf(buf, sizeof buf, "<%d>%s", prio[level],
                     level == B2D_LOG_INFO ? "" : level == B2D_LOG_DEBUG ? "debug: " :
                     level == B2D_LOG_WARN ? "warning: " : "error: ");
    } else {
        struct timeval tv;
        struct tm tm;
        gettimeofday(&tv, NULL);
        localtime_r(&tv.tv_sec, &tm);
        char ts[32];
        strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", &tm);
        n = snprintf(buf, sizeof buf, "%s.%03ld blip2d[%ld]: %s: ", ts, (long)(tv.tv_usec / 1000),
                     (long)getpid(), names[level]);
    }
    static const char hex[] = "0123456789abcdef";
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t mlen = m < 0 ? 0 : (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
    size_t len = n < 0 ? 0 : (size_t)n;
    for (size_t i = 0; i < mlen && len + 5 < sizeof buf; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c < 0x20 || c == 0x7f) { /* control bytes as \xNN */
            buf[len++] = '\\';
            buf[len++] = 'x';
            buf[len++] = hex[c >> 4];
            buf[len++] = hex[c & 15];
        } else {
            buf[len++] = (char)c;
        }
    }
    buf[len++] = '\n';
    ssize_t w = write(2, buf, len);
    (void)w;
}
