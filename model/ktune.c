/*
 * ktune.c - the decode kernel of each weight type, chosen at load by
 * measurement and cached beside the weights.
 *
 *   b2__kernels_choose(m, gguf path or NULL)
 *     -> BLIP2_KERNELS names an implementation this CPU runs: that one
 *        for every type ("forced"), nothing measured or written
 *     -> else per typed weight type the model holds (f16, bf16, q8_0:
 *        the ones b2__wmatmul_rows takes), language model first:
 *          the cache file "<gguf>.kernels" has a line for the type with
 *          this key and an implementation this CPU runs -> that one
 *          ("cached"); else b2__wkernels_tune on the model's own
 *          matrices ("measured")
 *     -> anything measured: the cache file rewritten (temporary name,
 *        then rename); a read-only directory only loses the cache
 * The environment variable BLIP2_KERNELS_CACHE=DIR keeps the file in DIR
 * instead (as "<gguf file name>.kernels"); =off neither reads nor writes
 * one.
 * f32 weights are not tuned: their products are kernels.c's
 * (b2__matmul_rows: the skinny AVX2 path, or OpenBLAS sgemv), reported as
 * "f32 <b2__simd name>".
 *
 * The cache file, one line per type after a header (tab-separated):
 *   blip2-kernels 1
 *   q8_0 <tab> avx2 <tab> blip2 0.9.0; AMD EPYC; avx512-vnni avx512 avx2 portable; threads 2
 * A line whose key (library version, CPU brand and the implementations
 * this build runs on it, compute threads) differs from this process's is
 * stale; a file that does not parse is ignored whole; both are rewritten.
 */
#include "model.h"
#include "t5.h"
#include "pool.h"
#include "wkernels.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KT_MAGIC "blip2-kernels 1"
#define KT_MAXS 4096 /* samples per type */

/* The typed types the autotuner covers: one entry per type (a new type
 * of b2__wmatmul_rows is one more entry). */
static const b2_wtype kt_types[] = {B2_WT_F16, B2_WT_BF16, B2_WT_Q8_0, B2_WT_Q4_0};
enum { KT_NT = sizeof kt_types / sizeof kt_types[0] };

static int kt_measured_count;

int b2__kernels_measured(void) { return kt_measured_count; }

typedef struct kt_set {
    b2_wsample s[KT_NT][KT_MAXS];
    int n[KT_NT];
    int any_f32;
} kt_set;

static void add(kt_set *ks, const b2_linear *l)
{
    if (!l->w || l->out <= 0 || l->in <= 0) return;
    if (l->wt == B2_WT_F32) { ks->any_f32 = 1; return; }
    for (int i = 0; i < KT_NT; i++)
        if (kt_types[i] == l->wt && ks->n[i] < KT_MAXS) ks->s[i][ks->n[i]++] = (b2_wsample){l->w, l->out, l->in};
}

static void add_raw(kt_set *ks, const void *w, b2_wtype t, int m, int k)
{
    b2_linear l = {.w = w, .out = m, .in = k, .wt = t};
    add(ks, &l);
}

/* The decoder's matrices first (decode is what the choice is for), in
 * layer order, then lm_head, then the rest (types only they hold). */
static void collect(kt_set *ks, const blip2_model *m)
{
    const b2_config *c = &m->cfg;
    if (c->family == B2_FAMILY_T5 && m->t5) {
        for (int i = 0; i < c->t_dec_layers; i++) {
            const b2_t5_layer *L = &m->t5->dec[i];
            const b2_linear *ls[] = {&L->sa.q, &L->sa.k, &L->sa.v, &L->sa.o, &L->ca.q, &L->ca.o, &L->wi0, &L->wi1, &L->wo};
            for (size_t j = 0; j < sizeof ls / sizeof ls[0]; j++) add(ks, ls[j]);
        }
        add_raw(ks, m->t5->lm_head, m->t5->lm_head_wt, c->t_vocab, c->t_hidden);
        for (int i = 0; i < c->t_layers; i++) {
            const b2_t5_layer *L = &m->t5->enc[i];
            const b2_linear *ls[] = {&L->sa.q, &L->sa.k, &L->sa.v, &L->sa.o, &L->wi0, &L->wi1, &L->wo};
            for (size_t j = 0; j < sizeof ls / sizeof ls[0]; j++) add(ks, ls[j]);
        }
    } else if (m->tl) {
        for (int i = 0; i < c->t_layers; i++) {
            const b2_opt_layer *L = &m->tl[i];
            const b2_linear *ls[] = {&L->q, &L->k, &L->v, &L->o, &L->fc1, &L->fc2};
            for (size_t j = 0; j < sizeof ls / sizeof ls[0]; j++) add(ks, ls[j]);
        }
        add_raw(ks, m->lm_head, m->lm_head_wt, c->t_vocab, c->t_hidden);
    }
    add(ks, &m->proj);
    for (int i = 0; m->ql && i < c->q_layers; i++) {
        const b2_qformer_layer *L = &m->ql[i];
        const b2_linear *ls[] = {&L->self.q, &L->self.k, &L->self.v, &L->self.o, &L->inter, &L->out};
        for (size_t j = 0; j < sizeof ls / sizeof ls[0]; j++) add(ks, ls[j]);
    }
    for (int i = 0; m->vl && i < c->v_layers; i++) {
        const b2_vision_layer *L = &m->vl[i];
        const b2_linear *ls[] = {&L->qkv, &L->proj, &L->fc1, &L->fc2};
        for (size_t j = 0; j < sizeof ls / sizeof ls[0]; j++) add(ks, ls[j]);
    }
}

typedef struct kt_line {
    char impl[32];
    int found;
} kt_line;

/* Reads path into lines[] (per kt_types); returns 1 read, 0 no file,
 * -1 does not parse. */
static int cache_read(const char *path, const char *key, kt_line *lines)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[1024];
    int rc = 1;
    if (!fgets(buf, sizeof buf, f) || strcmp(buf, KT_MAGIC "\n") != 0) rc = -1;
    while (rc > 0 && fgets(buf, sizeof buf, f)) {
        const size_t len = strlen(buf);
        if (!len || buf[len - 1] != '\n') { rc = -1; break; }
        buf[len - 1] = 0;
        char *t1 = strchr(buf, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t1 || !t2 || t2 - t1 - 1 <= 0 || t2 - t1 - 1 >= 32) { rc = -1; break; }
        *t1 = *t2 = 0;
        int ti = -1;
        for (int i = 0; i < KT_NT; i++)
            if (!strcmp(buf, b2__wt_name(kt_types[i]))) ti = i;
        if (ti < 0) { rc = -1; break; }
        if (strcmp(t2 + 1, key) != 0) continue; /* stale: another CPU, version or thread count */
        snprintf(lines[ti].impl, sizeof lines[ti].impl, "%s", t1 + 1);
        lines[ti].found = 1;
    }
    fclose(f);
    return rc;
}

static int cache_write(const char *path, const char *key, const char *const *impl, char *why, size_t whysz)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        snprintf(why, whysz, "the path is too long");
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) { snprintf(why, whysz, "%s", strerror(errno)); return -1; }
    fprintf(f, KT_MAGIC "\n");
    for (int i = 0; i < KT_NT; i++)
        if (impl[i]) fprintf(f, "%s\t%s\t%s\n", b2__wt_name(kt_types[i]), impl[i], key);
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        snprintf(why, whysz, "%s", strerror(errno ? errno : EIO));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void cat(char *dst, size_t size, const char *fmt, const char *a, const char *b)
{
    const size_t len = strlen(dst);
    if (len + 1 < size) snprintf(dst + len, size - len, fmt, a, b);
}

int b2__kernels_choose(blip2_model *m, const char *gguf_path, blip2_error *err)
{
    m->kernels[0] = m->kernels_log[0] = 0;
    kt_set *ks = calloc(1, sizeof *ks);
    if (!ks) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    collect(ks, m);
    const char *forced = b2__wkernels_forced();
    char key[512], path[4200] = "";
    {
        char cpu[400];
        b2__wkernels_cpu_key(cpu, sizeof cpu);
        snprintf(key, sizeof key, "blip2 %s; %s; threads %d", PACKAGE_VERSION, cpu, b2__pool_size());
    }
    const char *cdir = getenv("BLIP2_KERNELS_CACHE");
    if (gguf_path && cdir && *cdir && strcmp(cdir, "off") != 0) {
        const char *base = strrchr(gguf_path, '/');
        snprintf(path, sizeof path, "%s/%s.kernels", cdir, base ? base + 1 : gguf_path);
    } else if (gguf_path && !(cdir && !strcmp(cdir, "off"))) {
        snprintf(path, sizeof path, "%s.kernels", gguf_path);
    }
    kt_line lines[KT_NT];
    memset(lines, 0, sizeof lines);
    if (!forced && *path) {
        if (cache_read(path, key, lines) < 0) {
            snprintf(m->kernels_log, sizeof m->kernels_log, "%.700s: does not parse, ignored; ", path);
            memset(lines, 0, sizeof lines);
        }
    }
    const char *impl[KT_NT] = {0};
    int measured = 0, have = 0;
    for (int i = 0; i < KT_NT; i++) {
        const b2_wtype t = kt_types[i];
        b2__wkernels_use(t, NULL);
        if (!ks->n[i]) continue;
        have++;
        const char *how;
        char note[256] = "";
        if (forced) {
            how = "forced by BLIP2_KERNELS";
        } else if (lines[i].found && b2__wkernels_use(t, lines[i].impl) == 0) {
            how = "cached";
            impl[i] = b2__wkernels_name_for(t);
        } else {
            b2_wtune r;
            kt_measured_count++;
            if (b2__wkernels_tune(t, ks->s[i], ks->n[i], &r) == 0 && b2__wkernels_use(t, r.chosen) == 0) {
                how = "measured";
                measured = 1;
                impl[i] = r.chosen;
                size_t len = 0;
                for (int c = 0; c < r.n; c++) {
                    if (r.c[c].refused)
                        len += (size_t)snprintf(note + len, len < sizeof note ? sizeof note - len : 0, "%s%s refused (%.3g of the bound)",
                                                c ? ", " : "", r.c[c].name, r.c[c].err);
                    else if (r.c[c].hot > 0) /* still close at the end: timed in cache too */
                        len += (size_t)snprintf(note + len, len < sizeof note ? sizeof note - len : 0,
                                                "%s%s %.1f GB/s (%.2f; %.0f GB/s in cache)", c ? ", " : "",
                                                r.c[c].name, r.c[c].gbs, r.c[c].score, r.c[c].hot);
                    else
                        len += (size_t)snprintf(note + len, len < sizeof note ? sizeof note - len : 0, "%s%s %.1f GB/s (%.2f)",
                                                c ? ", " : "", r.c[c].name, r.c[c].gbs, r.c[c].score);
                    if (len >= sizeof note) break;
                }
            } else {
                how = "default: measuring failed";
            }
        }
        char one[64];
        snprintf(one, sizeof one, "%s %s", b2__wt_name(t), b2__wkernels_name_for(t));
        cat(m->kernels, sizeof m->kernels, "%s%s", *m->kernels ? ", " : "", one);
        cat(m->kernels, sizeof m->kernels, " (%s)%s", how, "");
        cat(m->kernels_log, sizeof m->kernels_log, "%s%s", one, *note ? " [" : "");
        cat(m->kernels_log, sizeof m->kernels_log, "%s%s; ", note, *note ? "]" : "");
    }
    if (ks->any_f32) {
        char one[64];
        snprintf(one, sizeof one, "f32 %s", b2__simd()->name);
        cat(m->kernels, sizeof m->kernels, "%s%s (kernels.c, not tuned)", *m->kernels ? ", " : "", one);
    }
    if (!have && !ks->any_f32) snprintf(m->kernels, sizeof m->kernels, "none");
    if (measured && *path) {
        /* the types not measured now keep their cached lines */
        char why[128];
        if (cache_write(path, key, impl, why, sizeof why) == 0)
            cat(m->kernels_log, sizeof m->kernels_log, "choice cached in %s%s", path, "");
        else {
            cat(m->kernels_log, sizeof m->kernels_log, "choice not cached (%s: %s)", path, why);
        }
    } else if (forced) {
        cat(m->kernels_log, sizeof m->kernels_log, "BLIP2_KERNELS=%s%s", forced, "");
    } else if (*path && have) {
        cat(m->kernels_log, sizeof m->kernels_log, "choice read from %s%s", path, "");
    } else if (have) {
        cat(m->kernels_log, sizeof m->kernels_log, "%s%s", gguf_path ? "no cache file (BLIP2_KERNELS_CACHE=off)" : "no cache file (not a GGUF file)", "");
    }
    free(ks);
    return 0;
}
