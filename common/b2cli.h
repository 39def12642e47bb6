/*
 * b2cli.h - what the command line programs blip2ctl and blip2-queue share:
 * messages and the usage-error exit, whole and real number arguments, and
 * the generation options (--max-new-tokens ... --stop), parsed once.
 *
 *   argv --getopt_long (B2CLI_GEN_LONG_OPTIONS in the program's table)-->
 *        b2cli_gen_option() for each option it knows --> a b2cli_gen
 *        --B2CLI_GEN_APPLY--> the program's parameter struct (blip2c_params
 *        in blip2ctl, b2ipc_gen_params in blip2-queue: the same field names)
 *
 * A leaf: it includes no header of ours, so every program folder may use it
 * (tests/test_layers.py).  Messages go to stderr as "PROG: text"; bad usage
 * exits with B2CLI_EXIT_USAGE, as both programs document.
 */
#ifndef B2CLI_H
#define B2CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#define B2CLI_EXIT_USAGE 2

/* The program name in messages and the one named in "Try 'HELP --help'".
 * Both strings are borrowed and must outlive every message. */
void b2cli_set_prog(const char *prog, const char *help_prog);

/* "PROG: text\n" on stderr, stdout flushed first. */
__attribute__((format(printf, 1, 2)))
void b2cli_warn(const char *fmt, ...);

/* "PROG: text" and the --help hint on stderr, then exit(B2CLI_EXIT_USAGE). */
__attribute__((format(printf, 1, 2), noreturn))
void b2cli_usage_error(const char *fmt, ...);

/* The argument s of option flag as a whole number in [0, max], or a usage
 * error naming flag ("--top-k: 'x' is not a whole number"). */
uint64_t b2cli_uint(const char *flag, const char *s, uint64_t max);
/* The argument s of flag as a finite real number, or a usage error. */
double b2cli_real(const char *flag, const char *s);

/* ---- the generation options ------------------------------------------------ */

/* getopt_long values of the generation options; a program numbers its own
 * long options from B2CLI_O_NEXT. */
enum {
    B2CLI_O_MAX_NEW = 256, B2CLI_O_MIN_NEW, B2CLI_O_BEAMS, B2CLI_O_LENPEN, B2CLI_O_REPPEN,
    B2CLI_O_SAMPLE, B2CLI_O_TEMP, B2CLI_O_TOPK, B2CLI_O_TOPP, B2CLI_O_SEED, B2CLI_O_NRS,
    B2CLI_O_STOP, B2CLI_O_NEXT
};

/* The entries of the generation options, for a program's struct option table. */
#define B2CLI_GEN_LONG_OPTIONS \
    { "max-new-tokens", required_argument, NULL, B2CLI_O_MAX_NEW }, \
    { "min-new-tokens", required_argument, NULL, B2CLI_O_MIN_NEW }, \
    { "num-beams", required_argument, NULL, B2CLI_O_BEAMS }, \
    { "length-penalty", required_argument, NULL, B2CLI_O_LENPEN }, \
    { "repetition-penalty", required_argument, NULL, B2CLI_O_REPPEN }, \
    { "do-sample", no_argument, NULL, B2CLI_O_SAMPLE }, \
    { "temperature", required_argument, NULL, B2CLI_O_TEMP }, \
    { "top-k", required_argument, NULL, B2CLI_O_TOPK }, \
    { "top-p", required_argument, NULL, B2CLI_O_TOPP }, \
    { "seed", required_argument, NULL, B2CLI_O_SEED }, \
    { "num-return-sequences", required_argument, NULL, B2CLI_O_NRS }, \
    { "stop", required_argument, NULL, B2CLI_O_STOP }

#define B2CLI_MAX_STOP 8

/* The generation options given on the command line: only those named in
 * `given` (a bit per option, 1u << (B2CLI_O_x - B2CLI_O_MAX_NEW)) replace the
 * program's defaults.  Zero-initialise it before parsing. */
typedef struct b2cli_gen {
    unsigned given;
    uint32_t max_new_tokens, min_new_tokens, num_beams, top_k, num_return_sequences;
    double length_penalty, repetition_penalty, temperature, top_p;
    uint64_t seed;
    const char *stop[B2CLI_MAX_STOP]; /* borrowed from argv */
    uint32_t n_stop;
} b2cli_gen;

#define B2CLI_GIVEN(g, o) (((g)->given >> ((o) - B2CLI_O_MAX_NEW)) & 1u)

/* Takes option ch with argument arg into g when ch is a generation option
 * (true), else leaves g alone (false).  A bad value is a usage error. */
bool b2cli_gen_option(b2cli_gen *g, int ch, const char *arg);

/* Writes the given options of g into *p, a struct with the fields of
 * blip2c_params / b2ipc_gen_params.  --temperature 0 means greedy decoding
 * (as in llama.cpp and Ollama), whatever --do-sample says.  p->stop then
 * points into g, which must outlive p's use. */
#define B2CLI_GEN_APPLY(p, g) do { \
    const b2cli_gen *g_ = (g); \
    if (B2CLI_GIVEN(g_, B2CLI_O_MAX_NEW)) (p)->max_new_tokens = g_->max_new_tokens; \
    if (B2CLI_GIVEN(g_, B2CLI_O_MIN_NEW)) (p)->min_new_tokens = g_->min_new_tokens; \
    if (B2CLI_GIVEN(g_, B2CLI_O_BEAMS)) (p)->num_beams = g_->num_beams; \
    if (B2CLI_GIVEN(g_, B2CLI_O_LENPEN)) (p)->length_penalty = g_->length_penalty; \
    if (B2CLI_GIVEN(g_, B2CLI_O_REPPEN)) (p)->repetition_penalty = g_->repetition_penalty; \
    if (B2CLI_GIVEN(g_, B2CLI_O_SAMPLE)) (p)->do_sample = true; \
    if (B2CLI_GIVEN(g_, B2CLI_O_TEMP)) (p)->temperature = g_->temperature; \
    if (B2CLI_GIVEN(g_, B2CLI_O_TEMP) && g_->temperature == 0) { \
        (p)->do_sample = false; \
        (p)->temperature = 1.0; \
    } \
    if (B2CLI_GIVEN(g_, B2CLI_O_TOPK)) (p)->top_k = g_->top_k; \
    if (B2CLI_GIVEN(g_, B2CLI_O_TOPP)) (p)->top_p = g_->top_p; \
    if (B2CLI_GIVEN(g_, B2CLI_O_SEED)) { (p)->seed = g_->seed; (p)->has_seed = true; } \
    if (B2CLI_GIVEN(g_, B2CLI_O_NRS)) (p)->num_return_sequences = g_->num_return_sequences; \
    (p)->stop = g_->stop; \
    (p)->n_stop = g_->n_stop; \
} while (0)

#endif
