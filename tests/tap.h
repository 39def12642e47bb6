/*
 * tap.h - a tiny TAP producer for the test programs (automake's tap-driver).
 *
 *     ok(cond, "name %d", i);     one test point
 *     return tap_done();          prints the plan, exit status 0/1
 */
#ifndef BLIP2_TAP_H
#define BLIP2_TAP_H
#include <stdarg.h>
#include <stdio.h>

static int tap__n, tap__failed;

__attribute__((format(printf, 2, 3), unused))
static int ok(int cond, const char *fmt, ...)
{
    va_list ap;
    printf("%s %d - ", cond ? "ok" : "not ok", ++tap__n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (!cond) tap__failed++;
    return cond;
}

__attribute__((format(printf, 1, 2), unused))
static void diag(const char *fmt, ...)
{
    va_list ap;
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

__attribute__((unused))
static int tap_done(void)
{
    printf("1..%d\n", tap__n);
    return tap__failed ? 1 : 0;
}

#endif
