/*
 * load.c - blip2_model_load: what a model path is, and the cache of
 * converted folders.
 *
 *   path is a GGUF file ------------------------------> b2__load_gguf (mapped)
 *   path is a folder, opts->cache_dir set -> cache file exists? -> b2__load_gguf
 *                                            else blip2_convert, then map it
 *   path is a folder, no cache ----------------------> b2__load_folder
 *
 * The cache file's name carries the folder's identity (resolved path, each
 * weight file's size, mtime and inode, the side files) and the type, so a
 * changed checkpoint is converted again.
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
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    h = fnv(h, tname, strlen(tname));
    const char *base = strrchr(real, '/');
    base = base && base[1] ? base + 1 : "model";
    if ((size_t)snprintf(out, cap, "%s/%.100s-%016llx-%s.gguf", dir, base, (unsigned long long)h, tname) >= cap)
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
    if ((rc = cache_path(cp, sizeof cp, opts->cache_dir, path, opts->cache_type, err)) < 0) return rc;
    if (access(cp, R_OK) == 0) {
        rc = b2__load_gguf(out, cp, opts, err);
        if (rc != BLIP2_EFORMAT) return rc;
        unlink(cp); /* damaged (by hand: we rename only complete files): convert again */
    }
    const char *type = strrchr(cp, '-') + 1; /* "<type>.gguf" */
    char t[8];
    snprintf(t, sizeof t, "%.*s", (int)(strlen(type) - 5), type);
    if ((rc = blip2_convert(path, cp, t, opts->convert_cb, opts->convert_ud, NULL, err)) < 0) return rc;
    return b2__load_gguf(out, cp, opts, err);
}

int blip2_model_load(blip2_model **out, const char *path, const blip2_load_opts *opts,
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
    /* both families pack; what the converter refuses, direct loading
     * refuses too, with the same error */
    if (opts && opts->cache_dir) return load_cached(out, path, opts, err);
    return b2__load_folder(out, path, err);
}
