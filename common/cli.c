/*
 * cli.c - messages, number arguments and the generation options of the
 * command line programs (b2cli.h): one parser behind blip2ctl's and
 * blip2-queue's --max-new-tokens ... --stop, so the two cannot drift.
 */
#include "b2cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static const char *prog_name = "blip2ctl";
static const char *help_name = "blip2ctl";

void b2cli_set_prog(const char *prog, const char *help_prog)
{
    prog_name = prog;
    help_name = help_prog;
}

void b2cli_warn(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s: ", prog_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void b2cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", help_name);
    exit(B2CLI_EXIT_USAGE);
}

uint64_t b2cli_uint(const char *flag, const char *s, uint64_t max)
{
    char *end;
    errno = 0;
    while (*s == ' ') s++;
    if (*s == '-' || *s == '+' || *s == '\0')
        b2cli_usage_error("%s: '%s' is not a whole number >= 0", flag, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0') b2cli_usage_error("%s: '%s' is not a whole number", flag, s);
    if (errno == ERANGE || v > max)
        b2cli_usage_error("%s: %s is too large (at most %" PRIu64 ")", flag, s, max);
    return v;
}

double b2cli_real(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v))
        b2cli_usage_error("%s: '%s' is not a number", flag, s);
    return v;
}

bool b2cli_gen_option(b2cli_gen *g, int ch, const char *arg)
{
    switch (ch) {
    case B2CLI_O_MAX_NEW: g->max_new_tokens = (uint32_t)b2cli_uint("--max-new-tokens", arg, UINT32_MAX); break;
    case B2CLI_O_MIN_NEW: g->min_new_tokens = (uint32_t)b2cli_uint("--min-new-tokens", arg, UINT32_MAX); break;
    case B2CLI_O_BEAMS: g->num_beams = (uint32_t)b2cli_uint("--num-beams", arg, UINT32_MAX); break;
    case B2CLI_O_LENPEN: g->length_penalty = b2cli_real("--length-penalty", arg); break;
    case B2CLI_O_REPPEN: g->repetition_penalty = b2cli_real("--repetition-penalty", arg); break;
    case B2CLI_O_SAMPLE: break;
    case B2CLI_O_TEMP: g->temperature = b2cli_real("--temperature", arg); break;
    case B2CLI_O_TOPK: g->top_k = (uint32_t)b2cli_uint("--top-k", arg, UINT32_MAX); break;
    case B2CLI_O_TOPP: g->top_p = b2cli_real("--top-p", arg); break;
    case B2CLI_O_SEED: g->seed = b2cli_uint("--seed", arg, UINT64_MAX); break;
    case B2CLI_O_NRS:
        g->num_return_sequences = (uint32_t)b2cli_uint("--num-return-sequences", arg, UINT32_MAX);
        break;
    case B2CLI_O_STOP:
        if (g->n_stop == B2CLI_MAX_STOP) b2cli_usage_error("--stop: at most 8 stop strings");
        g->stop[g->n_stop++] = arg;
        break;
    default:
        return false;
    }
    g->given |= 1u << (ch - B2CLI_O_MAX_NEW);
    return true;
}
