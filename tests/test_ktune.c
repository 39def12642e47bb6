/*
 * test_ktune.c - the decode kernel choice at load (model/ktune.c) and its
 * cache file "<model.gguf>.kernels", on a small random q8_0 model (bench/
 * gen_weights.c; its language model q8_0, the vision side bf16):
 *
 *   measured    the first load measures both types (b2__kernels_measured
 *               counts it), the choice is one of the implementations this
 *               CPU runs, and the cache file is written with the key
 *   cached      a second load measures nothing, says "cached", and leaves
 *               the file as it was; a file naming "portable" (the slowest,
 *               never what measuring picks here) with the right key is
 *               obeyed: proof that the file, not a measurement, decided
 *   stale       a line with another key (thread count) or an
 *               implementation this CPU lacks is measured again and
 *               rewritten; a file that does not parse is ignored and
 *               rewritten
 *   unwritable  a cache directory that cannot be written: measured, the
 *               load succeeds and says the choice was not cached;
 *               BLIP2_KERNELS_CACHE=off reads and writes nothing
 *   forced      BLIP2_KERNELS=portable (and avx2 where the CPU runs it),
 *               in a child process: every type "forced by BLIP2_KERNELS",
 *               nothing measured, no file written
 *   paths       blip2_model_precision / _backend say f32|bf16, oneDNN|own
 * (That the choice agrees with the portable product within the type's
 * bound, and that a wrong candidate is refused: tests/test_wkernels.c.)
 */
#include "blip2.h"
#include "gen_weights.h"
#include "model.h"
#include "wkernels.h"
#include "tap.h"
#include "tiny_opt_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 65536);
    if (buf) fread(buf, 1, 65535, f);
    fclose(f);
    return buf;
}

static void spit(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* Loads path; returns the model's kernels string in ks (and log in lg). */
static int load(const char *path, char *ks, char *lg, char *prec, char *backend)
{
    blip2_model *m = NULL;
    blip2_error err = {0};
    if (blip2_model_load(&m, path, NULL, &err) < 0) {
        diag("load %s: %s", path, err.text);
        return -1;
    }
    snprintf(ks, 256, "%s", blip2_model_kernels(m));
    snprintf(lg, 1024, "%s", blip2_model_kernels_log(m));
    if (prec) snprintf(prec, 16, "%s", blip2_model_precision(m));
    if (backend) snprintf(backend, 16, "%s", blip2_model_backend(m));
    diag("kernels: %s", ks);
    diag("log: %s", lg);
    blip2_model_free(m);
    return 0;
}

/* The key this process writes, from the file's q8_0 line. */
static int key_of(const char *file, char *key, size_t size)
{
    char *t = slurp(file);
    if (!t) return -1;
    char *l = strstr(t, "\nq8_0\t");
    char *k = l ? strchr(l + 6, '\t') : NULL;
    char *e = k ? strchr(k + 1, '\n') : NULL;
    if (!e) { free(t); return -1; }
    *e = 0;
    snprintf(key, size, "%s", k + 1);
    free(t);
    return 0;
}

static int forced_child(const char *path)
{
    char ks[256], lg[1024];
    if (load(path, ks, lg, NULL, NULL) < 0) return 1;
    printf("KERNELS %s\nMEASURED %d\n", ks, b2__kernels_measured());
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--forced")) return forced_child(argv[2]);
    unsetenv("BLIP2_KERNELS");
    unsetenv("BLIP2_KERNELS_CACHE");
    const char *t = getenv("TMPDIR");
    char dir[512], cfg[600], src[600], q8[600], kf[700], cmd[1400];
    snprintf(dir, sizeof dir, "%s/test_ktune.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) { ok(0, "mkdtemp"); return tap_done(); }
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(src, sizeof src, "%s/model", dir);
    snprintf(q8, sizeof q8, "%s/q8.gguf", dir);
    snprintf(kf, sizeof kf, "%s.kernels", q8);
    spit(cfg, tiny_opt_config);
    char *gargv[] = {"gen_weights", "-q", "--config", cfg, "--dtype", "f32", "--seed", "5", src, NULL};
    blip2_error err = {0};
    if (!ok(b2bench_gen_weights(9, gargv) == 0 && blip2_convert(src, q8, "q8_0", NULL, NULL, NULL, &err) == 0,
            "a small random model packed as q8_0"))
        return tap_done();

    char ks[256], lg[1024], prec[16], backend[16];
    const char *names[B2_WTUNE_MAX];
    const int nq = b2__wkernels_candidates(B2_WT_Q8_0, names, B2_WTUNE_MAX);

    /* measured, then written */
    int m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, prec, backend) == 0 && strstr(ks, "q8_0 ") && strstr(ks, "bf16 ") &&
       !strstr(ks, "cached") && strstr(ks, "(measured)"), "first load: q8_0 and bf16 measured: %s", ks);
    ok(b2__kernels_measured() - m0 == 2, "first load: 2 measurements (q8_0, bf16)");
    const char *q8impl = b2__wkernels_name_for(B2_WT_Q8_0);
    int known = 0;
    for (int i = 0; i < nq; i++) known |= !strcmp(q8impl, names[i]);
    ok(known, "the q8_0 choice (%s) is one of the %d this CPU runs", q8impl, nq);
    ok((!strcmp(prec, "f32") || !strcmp(prec, "bf16")) && (!strcmp(backend, "oneDNN") || !strcmp(backend, "own")) &&
       (strcmp(prec, "f32") || !strcmp(backend, "own")), "precision %s, backend %s", prec, backend);
    char *first = slurp(kf);
    char want[64];
    snprintf(want, sizeof want, "\nq8_0\t%s\t", q8impl);
    ok(first && !strncmp(first, "blip2-kernels 1\n", 16) && strstr(first, want) && strstr(first, "\nbf16\t"),
       "the cache file is written beside the GGUF file, with the choice");
    ok(strstr(lg, "cached in") != NULL, "the log says where it was cached");

    /* reused: nothing measured, file untouched */
    m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, NULL, NULL) == 0 && strstr(ks, "q8_0 ") && !strstr(ks, "measured") &&
       strstr(ks, "(cached)"), "second load: read from the cache: %s", ks);
    ok(b2__kernels_measured() == m0, "second load: nothing measured");
    char *second = slurp(kf);
    ok(first && second && !strcmp(first, second), "second load: the file is unchanged");
    free(second);

    /* a file naming portable with the right key decides */
    char key[512] = "";
    ok(key_of(kf, key, sizeof key) == 0 && strstr(key, "threads "), "the key: %s", key);
    char text[2048];
    snprintf(text, sizeof text, "blip2-kernels 1\nq8_0\tportable\t%s\nbf16\tportable\t%s\n", key, key);
    spit(kf, text);
    m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, NULL, NULL) == 0 && strstr(ks, "q8_0 portable (cached)") && strstr(ks, "bf16 portable (cached)") &&
       b2__kernels_measured() == m0 && !strcmp(b2__wkernels_name_for(B2_WT_Q8_0), "portable"),
       "a cache file naming portable is obeyed, nothing measured");

    /* another key: measured again, rewritten with this key */
    char other[600];
    snprintf(other, sizeof other, "%s", key);
    char *th = strstr(other, "threads ");
    if (th) snprintf(th, sizeof other - (size_t)(th - other), "threads 999");
    snprintf(text, sizeof text, "blip2-kernels 1\nq8_0\tportable\t%s\nbf16\tportable\t%s\n", other, key);
    spit(kf, text);
    m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, NULL, NULL) == 0 && strstr(ks, "(measured)") && strstr(ks, "bf16 portable (cached)") &&
       b2__kernels_measured() - m0 == 1, "a line with another key (threads 999) is measured again, the other kept: %s", ks);
    char *re = slurp(kf);
    ok(re && !strstr(re, "threads 999") && strstr(re, "\nbf16\tportable\t") && !strstr(re, "\nq8_0\tportable\t"),
       "... and rewritten with this process's key");
    free(re);

    /* an implementation this CPU lacks */
    snprintf(text, sizeof text, "blip2-kernels 1\nq8_0\tavx9000\t%s\nbf16\tportable\t%s\n", key, key);
    spit(kf, text);
    m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, NULL, NULL) == 0 && strstr(ks, "bf16 portable (cached)") && b2__kernels_measured() - m0 == 1 &&
       strcmp(b2__wkernels_name_for(B2_WT_Q8_0), "avx9000"), "an implementation this CPU lacks is measured again: %s", ks);

    /* corrupt */
    spit(kf, "blip2-kernels 1\nq8_0 avx2\n\x01\x02garbage");
    m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, NULL, NULL) == 0 && !strstr(ks, "cached") && b2__kernels_measured() - m0 == 2 &&
       strstr(lg, "does not parse"), "a corrupt cache file is ignored (both types measured)");
    re = slurp(kf);
    ok(re && !strncmp(re, "blip2-kernels 1\n", 16) && !strstr(re, "garbage"), "... and rewritten");
    free(re);
    spit(kf, "");
    m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, NULL, NULL) == 0 && b2__kernels_measured() - m0 == 2, "an empty cache file is ignored");

    /* a directory that cannot be written; off */
    char nodir[700];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir", dir);
    setenv("BLIP2_KERNELS_CACHE", nodir, 1);
    m0 = b2__kernels_measured();
    ok(load(q8, ks, lg, NULL, NULL) == 0 && strstr(ks, "(measured)") && b2__kernels_measured() - m0 == 2 &&
       strstr(lg, "not cached"), "an unwritable cache directory: measured, loaded, 'not cached'");
    setenv("BLIP2_KERNELS_CACHE", "off", 1);
    unlink(kf);
    ok(load(q8, ks, lg, NULL, NULL) == 0 && strstr(ks, "(measured)") && access(kf, F_OK) != 0,
       "BLIP2_KERNELS_CACHE=off: measured, no file written");
    unsetenv("BLIP2_KERNELS_CACHE");

    /* forced, in a child (BLIP2_KERNELS is read once per process) */
    const char *force[] = {"portable", "avx2"};
    for (int f = 0; f < 2; f++) {
        int runs = 0;
        for (int i = 0; i < nq; i++) runs |= !strcmp(names[i], force[f]);
        if (f && !runs) { diag("this CPU lacks %s: not forced", force[f]); continue; }
        unlink(kf);
        snprintf(cmd, sizeof cmd, "BLIP2_KERNELS=%s '%s' --forced '%s'", force[f], argv[0], q8);
        FILE *p = popen(cmd, "r");
        char out[2048] = "";
        if (p) {
            size_t n = fread(out, 1, sizeof out - 1, p);
            out[n] = 0;
            pclose(p);
        }
        char w1[64], w2[64];
        snprintf(w1, sizeof w1, "q8_0 %s (forced by BLIP2_KERNELS)", force[f]);
        snprintf(w2, sizeof w2, "bf16 %s (forced by BLIP2_KERNELS)", force[f]);
        ok(strstr(out, w1) && strstr(out, w2) && strstr(out, "MEASURED 0") && access(kf, F_OK) != 0,
           "BLIP2_KERNELS=%s forces every type, measures and writes nothing", force[f]);
    }

    free(first);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) diag("could not remove %s", dir);
    return tap_done();
}
