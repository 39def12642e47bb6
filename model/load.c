/*
 * load.c - blip2_model_load: what a model path is, and the cache of
 * converted folders.
 *
 *   path is a GGUF file ------------------------------> b2__load_gguf (mapped)
 *   path is a folder, opts->cache_dir set -> cache file exists? -> b2__load_gguf
 *                                            else blip2_convert, then map it
 *   path is a folder, no cache ----------------------> b2__load_folder
 *
 * The cache file's name carries the folder's identity and the type:
 * "<folder name>-<P><C>-<type>.gguf", P 8 hex digits of the resolved path,
 * C 8 of the contents (each weight file's size, mtime and inode, the side
 * files), so a changed checkpoint is converted again, and the files an
 * earlier version of the same folder left (same P, other C) are stale:
 * they are removed once the new one is in place (prune_stale), with their
 * decode kernel choices ("<file>.gguf.kernels", ktune.c).
 */
#include "blip2.h"
#include "error.h"
#include "model.h"
#include "packed.h"
#include "weights.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "wkernels.h"

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
    return h;
}

static int cache_path(char *out, size_t cap, const char *dir, const char *src, const char *type, blip2_error *err)
{
    char real[PATH_MAX];
    if (!realpath(src, real)) return b2__err(err, BLIP2_EIO, "%s: %s", src, strerror(errno));
    blip2_model *m = calloc(1, sizeof *m);
    if (!m) return b2__err(err, BLIP2_ENOMEM, "out of memory");
    int rc = b2__weights_open(m, real, err);
    uint64_t h = fnv(1469598103934665603ull, real, strlen(real) + 1);
    const char *tname = type;
    for (int i = 0; rc == 0 && i < m->n_files; i++) {
        struct stat st;
        const char *fp = b2__st_path(m->files[i]);
        if (stat(fp, &st) != 0) { rc = b2__err(err, BLIP2_EIO, "%s: %s", fp, strerror(errno)); break; }
        const uint64_t id[5] = {(uint64_t)st.st_size, (uint64_t)st.st_mtim.tv_sec, (uint64_t)st.st_mtim.tv_nsec,
                                (uint64_t)st.st_ino, (uint64_t)st.st_dev};
        h = fnv(fnv(h, fp, strlen(fp) + 1), id, sizeof id);
    }
    /* config and tokenizer files change the packed metadata too */
    static const char *const side[] = {"config.json", "preprocessor_config.json", "vocab.json", "merges.txt",
                                       "tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; rc == 0 && i < sizeof side / sizeof side[0]; i++) {
        char fp[PATH_MAX + 64];
        struct stat st;
        snprintf(fp, sizeof fp, "%s/%s", real, side[i]);
        uint64_t id[3] = {0, 0, 0};
        if (stat(fp, &st) == 0) {
            id[0] = (uint64_t)st.st_size;
            id[1] = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
            id[2] = (uint64_t)st.st_ino;
        }
        h = fnv(h, id, sizeof id);
    }
    /* Flan-T5's spiece.model, only when present (OPT keys stay as they were) */
    char sp[PATH_MAX + 64];
    struct stat sst;
    snprintf(sp, sizeof sp, "%s/spiece.model", real);
    if (rc == 0 && stat(sp, &sst) == 0) {
        const uint64_t id[3] = {(uint64_t)sst.st_size,
                                (uint64_t)sst.st_mtim.tv_sec * 1000000000ull + (uint64_t)sst.st_mtim.tv_nsec,
                                (uint64_t)sst.st_ino};
        h = fnv(h, id, sizeof id);
    }
    if (rc == 0 && !tname) {
        tname = b2__weights_dtype(m, "language_model.model.decoder.embed_tokens.weight");
        if (!strcmp(tname, "?")) tname = b2__weights_dtype(m, "language_model.shared.weight"); /* T5 */
        if (strcmp(tname, "f16") && strcmp(tname, "bf16")) tname = "f32";
    }
    blip2_model_free(m);
    if (rc < 0) return rc;
    /* the type is in the name's suffix; the key is the folder's alone, so
     * files of one version of a folder in several types share it */
    const uint64_t hp = fnv(1469598103934665603ull, real, strlen(real) + 1);
    const char *base = strrchr(real, '/');
    base = base && base[1] ? base + 1 : "model";
    if ((size_t)snprintf(out, cap, "%s/%.100s-%08x%08x-%s.gguf", dir, base, (unsigned)(hp >> 32),
                         (unsigned)(h ^ (h >> 32)), tname) >= cap)
        return b2__err(err, BLIP2_EINVAL, "%s: cache path too long", dir);
    return 0;
}

static int is_gguf(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char b[4] = {0};
    if (!f) return 0;
    size_t n = fread(b, 1, 4, f);
    fclose(f);
    return n == 4 && !memcmp(b, "GGUF", 4);
}

const char *blip2_best_weights_type(void)
{
    /* bench/RESULTS.md, 2026-11-27 04:30: with the AVX2 (or AVX-512) products, q8_0
     * decodes 1.65-1.84x faster than bf16 and the vision encoder runs at
     * the f32 sgemm's speed; the portable products are not measured, f16
     * at least halves what is read per token */
    return strcmp(b2__wkernels_name(), "portable") ? "q8_0" : "f16";
}

/* After the cache file cp is in place: removes the files of the same
 * folder (same path key) whose contents key differs (left by an earlier
 * version of the folder), and conversions that died half-way (.tmp-
 * files of the folder, untouched for an hour); reports the files of the
 * same folder in other types (kept: another daemon may use them). */
static void prune_stale(const char *cp, const blip2_load_opts *opts)
{
    char dir[4096];
    const char *slash = strrchr(cp, '/');
    if (!slash) return;
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - cp), cp);
    const char *name = slash + 1;
    const char *type = strrchr(name, '-');    /* "-<type>.gguf" */
    if (!type || type - name < 18) return;
    const size_t plen = (size_t)(type - name) - 8;  /* "<base>-<P>" */
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    const time_t now = time(NULL);
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        int tmp = n[0] == '.' && strstr(n, ".gguf.tmp-") != NULL;
        if (tmp) n++;
        if (strcmp(n, name) == 0 || strncmp(n, name, plen) != 0) continue;
        const char *t = strrchr(n, '-');
        const char *ext = t ? t + strcspn(t, ".") : "";
        const int kern = !tmp && !strcmp(ext, ".gguf.kernels"); /* ktune.c's cache of a file */
        if (!tmp && !kern && strcmp(ext, ".gguf") != 0) continue;
        char p[4096 + 256];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        const int same_contents = strncmp(n, name, plen + 8) == 0;
        if (kern) { /* a stale file's kernel choice goes with it; the others stay, unreported */
            if (!same_contents) unlink(p);
            continue;
        }
        if (tmp ? now - st.st_mtime > 3600 : !same_contents) {
            if (unlink(p) == 0 && opts->cache_note_cb) opts->cache_note_cb(opts->convert_ud, p, (uint64_t)st.st_size, 1);
        } else if (!tmp && opts->cache_note_cb) {
            opts->cache_note_cb(opts->convert_ud, p, (uint64_t)st.st_size, 0);
        }
    }
    closedir(d);
}

/* A folder through the cache: convert once, then map the file. */
static int load_cached(blip2_model **out, const char *path, const blip2_load_opts *opts, blip2_error *err)
{
    char cp[4096];
    int rc;
    snprintf(cp, sizeof cp, "%s", opts->cache_dir); /* mkdir -p */
    for (char *s = cp + 1;; s++) {
        if (*s == '/' || !*s) {
            const char c = *s;
            *s = 0;
            if (mkdir(cp, 0755) != 0 && errno != EEXIST)
                return b2__err(err, BLIP2_EIO, "%s: cannot create the weights cache directory: %s", cp,
                               strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
    const char *ct = opts->cache_type && !strcmp(opts->cache_type, "auto") ? blip2_best_weights_type()
                                                                             : opts->cache_type;
    if ((rc = cache_path(cp, sizeof cp, opts->cache_dir, path, ct, err)) < 0) return rc;
    if (access(cp, R_OK) == 0) {
        rc = b2__load_gguf(out, cp, opts, err);
        if (rc != BLIP2_EFORMAT) {
            if (rc == 0) prune_stale(cp, opts);
            return rc;
        }
        unlink(cp); /* damaged (by hand: we rename only complete files): convert again */
    }
    const char *type = strrchr(cp, '-') + 1; /* "<type>.gguf" */
    char t[8];
    snprintf(t, sizeof t, "%.*s", (int)(strlen(type) - 5), type);
    if (opts->convert_start_cb) opts->convert_start_cb(opts->convert_ud, cp, t);
    if ((rc = blip2_convert(path, cp, t, opts->convert_cb, opts->convert_ud, NULL, err)) < 0) return rc;
    if ((rc = b2__load_gguf(out, cp, opts, err)) == 0) prune_stale(cp, opts);
    return rc;
}

static int model_load(blip2_model **out, const char *path, const blip2_load_opts *opts,
                      blip2_error *err);

int blip2_model_load(blip2_model **out, const char *path, const blip2_load_opts *opts,
                     blip2_error *err)
{
    int rc = model_load(out, path, opts, err);
    if (rc == 0 && opts) (*out)->max_pixels = opts->max_pixels;
    return rc;
}

static int model_load(blip2_model **out, const char *path, const blip2_load_opts *opts,
                      blip2_error *err)
{
    struct stat st;
    *out = NULL;
    if (!path) return b2__err(err, BLIP2_EINVAL, "no model path given");
    if (stat(path, &st) != 0) return b2__err(err, BLIP2_EIO, "%s: no such model file or folder", path);
    if (S_ISREG(st.st_mode)) {
        if (!is_gguf(path))
            return b2__err(err, BLIP2_EUNSUPPORTED, "%s: not a GGUF file (expected a .gguf file or a Hugging Face "
                           "model folder)", path);
        return b2__load_gguf(out, path, opts, err);
    }
    if (!S_ISDIR(st.st_mode))
        return b2__err(err, BLIP2_EUNSUPPORTED, "%s: not a folder (expected a Hugging Face model folder)", path);
    char cfg[PATH_MAX + 16];
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    if (access(cfg, F_OK) != 0)
        return b2__err(err, BLIP2_EUNSUPPORTED, "%s: not a BLIP-2 model folder (no config.json; expected a "
                       "Hugging Face checkpoint folder such as blip2-opt-2.7b, or a .gguf file)", path);
    /* both families pack; what the converter refuses, direct loading
     * refuses too, with the same error */
    if (opts && opts->cache_dir) return load_cached(out, path, opts, err);
    return b2__load_folder(out, path, opts, err);
}
