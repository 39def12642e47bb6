/*
 * convert_main.c - blip2-convert: packs a Hugging Face BLIP-2 folder into
 * one GGUF file (blip2_convert), with a progress bar.
 *
 *     blip2-convert [--type f32|f16|bf16|q8_0|q4_0] [--int8-vision] SRC OUT.gguf
 *
 * The one program besides blip2-infer and blip2d that links the model
 * library.  `blip2ctl convert` runs it (the way git runs its subcommands),
 * so that blip2ctl itself links only libblip2client.  Messages start with
 * the name it was run under (argv[0]'s last component): "blip2-convert",
 * or "blip2ctl convert" when blip2ctl ran it.
 *
 * Exit status: 0 written, 1 failed while writing, 2 bad usage or input
 * (unreadable or malformed folder, unknown type), 130 interrupted.
 * Test hooks (tests/test_convert.sh): BLIP2_CONVERT_TEST_KILL_AFTER=N
 * raises BLIP2_CONVERT_TEST_KILL_SIGNAL (KILL, or INT) before tensor N.
 */
#include "blip2.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

static const char *prog = "blip2-convert";
static volatile sig_atomic_t stop_requested;

static void stop_cb(int sig)
{
    (void)sig;
    stop_requested = 1;
}

typedef struct progress {
    int tty, last_decile;
    long kill_after; /* test hook: raise kill_sig before tensor kill_after (-1: never) */
    int kill_sig;
} progress;

static int progress_cb(void *ud, int i, int n, const char *name, uint64_t bytes, uint64_t total)
{
    progress *p = ud;
    if (p->kill_after >= 0 && i == p->kill_after) raise(p->kill_sig);
    if (stop_requested) return 1;
    const int pct = total ? (int)(bytes * 100 / total) : 100;
    if (p->tty) {
        char bar[31];
        const int fill = pct * 30 / 100;
        for (int k = 0; k < 30; k++) bar[k] = k < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r[%s] %3d%% %d/%d tensors %.0f/%.0f MiB %-50.50s", bar, pct, i, n,
                bytes / 1048576.0, total / 1048576.0, name ? name : "");
        if (i == n) fputc('\n', stderr);
    } else if (pct / 10 != p->last_decile || i == n) {
        p->last_decile = pct / 10;
        fprintf(stderr, "%s: %3d%% (%d/%d tensors, %.0f MiB)\n", prog, pct, i, n, bytes / 1048576.0);
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: %s [--type TYPE] [--int8-vision] SRC OUT.gguf\n"
            "Pack the Hugging Face BLIP-2 folder SRC (OPT or Flan-T5) into one GGUF file.\n"
            "  -t, --type TYPE   the big matrices' type: f32, f16, bf16, q8_0 or q4_0 [f16]\n"
            "      --int8-vision also store the vision encoder's projection and MLP\n"
            "                    quantised for int8 math (s8, scales, row sums): used in\n"
            "                    place, shared by every process, instead of a private\n"
            "                    copy each (~720 MiB for blip2-opt-2.7b); loading such\n"
            "                    a file picks int8 math for them where the CPU has VNNI\n"
            "  -h, --help        this text\n"
            "  -V, --version     version\n",
            prog);
}

static int usage_error(const char *msg)
{
    fprintf(stderr, "%s: %s\nTry '%s --help' for more information.\n", prog, msg, prog);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    if (argc > 0 && argv[0][0]) {
        const char *slash = strrchr(argv[0], '/');
        prog = slash ? slash + 1 : argv[0];
    }
    static const struct option opts[] = {
        {"type", required_argument, NULL, 't'},
        {"int8-vision", no_argument, NULL, 'I'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *type = "f16";
    unsigned flags = 0;
    int c;
    while ((c = getopt_long(argc, argv, "t:hV", opts, NULL)) != -1) {
        switch (c) {
        case 't': type = optarg; break;
        case 'I': flags |= BLIP2_CONVERT_INT8_VISION; break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': printf("blip2-convert %s\n", PACKAGE_VERSION); return EXIT_OK;
        default: fprintf(stderr, "Try '%s --help' for more information.\n", prog); return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) return usage_error("give a SOURCE folder and an OUTPUT.gguf file");
    /* the type is checked by blip2_convert (BLIP2_EINVAL naming the known ones: exit 2) */
    const char *src = argv[optind], *out = argv[optind + 1];

    progress p = {isatty(STDERR_FILENO), -1, -1, SIGKILL};
    const char *k = getenv("BLIP2_CONVERT_TEST_KILL_AFTER");
    if (k && *k) p.kill_after = strtol(k, NULL, 10);
    k = getenv("BLIP2_CONVERT_TEST_KILL_SIGNAL");
    if (k && !strcmp(k, "INT")) p.kill_sig = SIGINT;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop_cb;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    blip2_convert_stats st;
    blip2_error err;
    if (blip2_convert_opt(src, out, type, flags, progress_cb, &p, &st, &err) < 0) {
        if (p.tty) fputc('\n', stderr);
        fprintf(stderr, "%s: %s\n", prog, err.text);
        if (err.code == BLIP2_ECANCELED) return EXIT_INTERRUPTED; /* as a shell reports SIGINT */
        return err.code == BLIP2_EIO || err.code == BLIP2_EFORMAT || err.code == BLIP2_EUNSUPPORTED ||
                       err.code == BLIP2_EINVAL ? EXIT_USAGE : EXIT_FAIL;
    }
    /* q4_0 counted only when there are any: scripts read the q8_0 form */
    char q4[32] = "";
    if (st.n_q4_0) snprintf(q4, sizeof q4, ", %d q4_0", st.n_q4_0);
    printf("%s: %d tensors (%d f32, %d f16, %d bf16, %d q8_0%s), %.1f MiB in %.2f s\n", out, st.tensors,
           st.n_f32, st.n_f16, st.n_bf16, st.n_q8_0, q4, st.bytes / 1048576.0, st.seconds);
    if (st.n_int8)
        printf("%s: int8 vision weights: %d matrices, each as s8 + f32 scales + i32 row sums (%d tensors "
               "of the %d)\n", out, st.n_int8, 3 * st.n_int8, st.tensors);
    fflush(stdout);
    const int nq = !strcmp(type, "q8_0") ? st.n_q8_0 : !strcmp(type, "q4_0") ? st.n_q4_0 : -1;
    if (nq >= 0 && st.n_f16 > 0)
        fprintf(stderr, "%s: warning: %d of %d matrices are f16, not %s: their rows are not a multiple "
                "of 32 values, which %s blocks need%s\n", prog, st.n_f16, st.n_f16 + nq, type, type,
                nq == 0 ? " (this file is in effect an f16 file)" : "");
    return EXIT_OK;
}
