/*
 * ctl_batch.c - blip2ctl's collection runner: one request per image file
 * over a whole photo collection, resumable, one JSON line per file.
 *
 *   arguments, --recursive walks (fts, sorted, no symlinked directories),
 *   --files-from (a file read at once, or a pipe read as it comes)
 *       --> entries; a path already in --resume's file or seen before is
 *           skipped --> queue
 *   queue --open + fstat--> op->submit (descriptor, SCM_RIGHTS) while fewer
 *       than `jobs` are in flight (default: twice the daemon's max_batch)
 *   poll(connection, list pipe, signal pipe) --> blip2c_process
 *       --> op callbacks --> ctl_job_done / ctl_job_fail
 *       --> one whole line per file, written with write(2) in one piece
 *   progress bar on stderr (a terminal): done/total, images/s, ETA
 *
 * Lines are written in the order results arrive.  SIGINT/SIGTERM only set
 * a flag (and wake poll through a pipe): nothing new is sent, the requests
 * in flight are canceled, results that still complete are written, and the
 * run ends with every line whole, so --resume continues where it stopped.
 * A lost connection ends the run (exit 4) without lines for the requests
 * it took with it.
 */
#include "ctl_batch.h"
#include "b2json.h"
#include "b2strset.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <fts.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PROG "blip2ctl"
#define BUSY_RETRIES 20
#define MAX_ENTRY (64u << 10)     /* longest --files-from entry */
#define STOP_GRACE_MS 10000       /* after Ctrl-C: wait this long for cancels */
#define PROGRESS_MS 250

/* ---- small helpers ------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80) return 1;
    size_t len;
    uint32_t cp;
    if ((s[0] & 0xe0) == 0xc0) { len = 2; cp = s[0] & 0x1f; }
    else if ((s[0] & 0xf0) == 0xe0) { len = 3; cp = s[0] & 0x0f; }
    else if ((s[0] & 0xf8) == 0xf0) { len = 4; cp = s[0] & 0x07; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* The path as it appears in the output: valid UTF-8 unchanged, each byte
 * of an invalid sequence as U+FFFD.  New string (caller frees) or NULL. */
static char *path_key(const char *p)
{
    size_t n = strlen(p), bad = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq((const unsigned char *)p + i, n - i);
        if (!l) { bad++; l = 1; }
        i += l;
    }
    char *k = malloc(n + 2 * bad + 1), *w = k;
    if (!k) return NULL;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq((const unsigned char *)p + i, n - i);
        if (!l) {
            memcpy(w, "\xef\xbf\xbd", 3);
            w += 3;
            i++;
        } else {
            memcpy(w, p + i, l);
            w += l;
            i += l;
        }
    }
    *w = '\0';
    return k;
}

/* ---- the run's state ---------------------------------------------------------- */

enum { J_RUNNING, J_WAITING, J_ABANDONED };

struct ctl_job {
    struct batch *b;
    char *path;            /* as given / found (owned) */
    int state;
    uint64_t id;
    int busy_tries;
    int64_t not_before;    /* J_WAITING: resubmit after */
    int64_t deadline;      /* J_RUNNING with --timeout */
    ctl_job *prev, *next;  /* the batch's list of jobs with a callback to come */
};

typedef struct entry {
    char *path;  /* owned */
    int err;     /* errno from the walk (unreadable directory), or 0 */
} entry;

typedef struct batch {
    blip2c_conn *c;
    const ctl_batch_opts *o;
    const ctl_batch_op *op;
    unsigned jobs;

    entry *q;                 /* queue of files to do: q[qhead .. qn) */
    size_t qhead, qn, qcap;
    b2_strset seen;              /* path keys done (--resume) or queued this run */
    size_t resumed;           /* skipped: done in the --resume file */
    size_t skipped;           /* skipped: not images (by their first bytes) */
    struct stat own[2];       /* the -o and --resume files: never captioned */
    int n_own;

    int lfd;                  /* --files-from read as it comes, or -1 */
    char *lbuf;
    size_t llen, lcap;
    bool listing_done;        /* every source enumerated: total is known */

    ctl_job *live;            /* jobs whose callback is still to come */
    size_t n_active;          /* RUNNING + WAITING: the window in use */

    int out;                  /* output descriptor */
    bool out_failed, out_tty; /* out_tty: the lines go to a terminal too */

    size_t queued, ok, failed;  /* files queued this run, lines written */
    int broken;               /* the connection's error code once broken */
    blip2c_error broken_err;
    bool stopping;            /* a signal came: cancel and finish */
    int stop_sig;
    int64_t stop_deadline, t0;

    bool progress, progress_shown;
    int64_t progress_at;
} batch;

/* Messages on stderr, clearing the progress line first. */
__attribute__((format(printf, 2, 3)))
static void bmsg(batch *b, const char *fmt, ...)
{
    va_list ap;
    if (b && b->progress_shown) {
        fputs("\r\033[K", stderr);
        b->progress_shown = false;
    }
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

const char *ctl_error_code(const blip2c_error *e)
{
    if (e->code_name[0]) return e->code_name;
    switch (e->code) {
    case BLIP2C_EINVAL: return "bad_input";
    case BLIP2C_ENOMEM: return "out_of_memory";
    case BLIP2C_ECONNECT: return "cannot_connect";
    case BLIP2C_ECONNLOST: return "connection_lost";
    case BLIP2C_EPROTO: return "protocol_error";
    case BLIP2C_ETIMEDOUT: return "timeout";
    default: return "internal";
    }
}

/* ---- output -------------------------------------------------------------------- */

static bool write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        s += w;
        n -= (size_t)w;
    }
    return true;
}

/* Writes {"path": ..., <fields>, <raw>} and a newline in one write.  Takes
 * the reference to fields (may be NULL). */
static void write_line(batch *b, const char *path, json_t *fields, const char *raw)
{
    json_t *o = json_object();
    char *key = path_key(path);
    char *s = NULL;
    if (o && key && json_object_set_new(o, "path", json_string(key)) == 0 &&
        (!fields || json_object_update(o, fields) == 0))
        s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    json_decref(fields);
    free(key);
    if (!s) {
        bmsg(b, "%s: out of memory while formatting its line", path);
        b->out_failed = true;
        return;
    }
    size_t n = strlen(s), rn = raw ? strlen(raw) : 0;
    char *line = malloc(n + rn + 3);
    if (!line) {
        free(s);
        bmsg(b, "out of memory");
        b->out_failed = true;
        return;
    }
    memcpy(line, s, n);
    free(s);
    if (rn && n >= 2) {
        line[n - 1] = ',';        /* "...}" -> "...,raw}" */
        memcpy(line + n, raw, rn);
        n += rn;
        line[n++] = '}';
    }
    line[n++] = '\n';
    if (b->out_tty && b->progress_shown) {   /* the line, then the bar again */
        fputs("\r\033[K", stderr);
        fflush(stderr);
        b->progress_shown = false;
        b->progress_at = 0;
    }
    if (!b->out_failed && !write_all(b->out, line, n)) {
        bmsg(b, "cannot write the output%s%s: %s", b->o->output ? " " : "",
             b->o->output ? b->o->output : "", strerror(errno));
        b->out_failed = true;
    }
    free(line);
}

static void write_error(batch *b, const char *path, const char *code, const char *message)
{
    json_t *er = json_object(), *f = json_object();
    char *m = path_key(message);
    json_object_set_new(er, "code", json_string(code));
    json_object_set_new(er, "message", json_string(m ? m : ""));
    free(m);
    json_object_set_new(f, "error", er);
    write_line(b, path, f, NULL);
    b->failed++;
    bmsg(b, "%s", message);
}

/* ---- progress ------------------------------------------------------------------- */

static void fmt_duration(char *buf, size_t n, double s)
{
    if (!isfinite(s) || s < 0) s = 0;
    uint64_t t = (uint64_t)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%" PRIu64 ":%02" PRIu64 ":%02" PRIu64, t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, n, "%" PRIu64 ":%02" PRIu64, t / 60, t % 60);
}

static void show_progress(batch *b, bool force)
{
    if (!b->progress) return;
    int64_t now = now_ms();
    if (!force && now - b->progress_at < PROGRESS_MS) return;
    b->progress_at = now;
    size_t done = b->ok + b->failed + b->skipped;
    double secs = (double)(now - b->t0) / 1000.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    char line[256], eta[32] = "", fail[48] = "";
    if (b->failed) snprintf(fail, sizeof fail, ", %zu failed", b->failed);
    if (b->listing_done) {
        size_t total = b->queued;
        int width = 24;
        size_t fill = total ? done * (size_t)width / total : (size_t)width;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = (size_t)i < fill ? '#' : '.';
        bar[width] = '\0';
        if (rate > 0 && done < total) {
            strcpy(eta, "  ETA ");
            fmt_duration(eta + 6, sizeof eta - 6, (double)(total - done) / rate);
        }
        snprintf(line, sizeof line, "[%s] %zu/%zu  %.2f images/s%s%s", bar, done, total,
                 rate, eta, fail);
    } else {
        snprintf(line, sizeof line, "%zu done  %.2f images/s%s (listing...)", done, rate, fail);
    }
    struct winsize ws;
    size_t cols = ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col ? ws.ws_col : 80;
    if (cols > 1 && strlen(line) >= cols) line[cols - 1] = '\0';
    fprintf(stderr, "\r\033[K%s", line);
    fflush(stderr);
    b->progress_shown = true;
}

/* ---- sources: arguments, walks, --files-from ------------------------------------ */

/* --include / --exclude: true when path is left out.  A pattern with a
 * '/' is matched against the whole path, else against the last name;
 * case is ignored (IMG_0001.JPG). */
static bool glob_hit(const char *const *pats, size_t n, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    for (size_t i = 0; i < n; i++)
        if (fnmatch(pats[i], strchr(pats[i], '/') ? path : base, FNM_CASEFOLD) == 0) return true;
    return false;
}

static bool filtered_out(const batch *b, const char *path)
{
    const ctl_batch_opts *o = b->o;
    if (o->n_include && !glob_hit(o->include, o->n_include, path)) return true;
    return o->n_exclude && glob_hit(o->exclude, o->n_exclude, path);
}

static bool push_entry(batch *b, char *path, int err)
{
    if (!err && filtered_out(b, path)) {
        free(path);
        return true;
    }
    char *key = path_key(path);
    if (!key) { free(path); return false; }
    int r = b2_strset_add(&b->seen, key);
    if (r < 0) { free(path); return false; }
    if (r == 1) {               /* in the --resume file, or a duplicate */
        free(path);
        return true;
    }
    if (b->qn == b->qcap) {
        if (b->qhead > 0 && b->qhead * 2 >= b->qn) {   /* reuse the done front */
            memmove(b->q, b->q + b->qhead, (b->qn - b->qhead) * sizeof *b->q);
            b->qn -= b->qhead;
            b->qhead = 0;
        } else {
            size_t nc = b->qcap ? 2 * b->qcap : 256;
            entry *nq = realloc(b->q, nc * sizeof *nq);
            if (!nq) { free(path); return false; }
            b->q = nq;
            b->qcap = nc;
        }
    }
    b->q[b->qn].path = path;
    b->q[b->qn].err = err;
    b->qn++;
    b->queued++;
    return true;
}

static int by_name(const FTSENT **a, const FTSENT **b)
{
    return strcmp((*a)->fts_name, (*b)->fts_name);
}

/* Every regular file below dir (sorted by name at each level).  Hidden
 * names (".x") are skipped unless --hidden; symbolic links to directories
 * are not entered (so no loops); symbolic links to anything else are
 * taken (the open decides). */
static bool walk(batch *b, const char *dir)
{
    char *argv[2] = { (char *)dir, NULL };
    FTS *f = fts_open(argv, FTS_PHYSICAL | FTS_COMFOLLOW | FTS_NOCHDIR, by_name);
    if (!f) {
        int e = errno;
        char *p = strdup(dir);
        return p && push_entry(b, p, e);
    }
    FTSENT *e;
    bool ok = true;
    while (ok && (e = fts_read(f)) != NULL) {
        bool hidden = e->fts_level > 0 && e->fts_name[0] == '.' && !b->o->hidden;
        switch (e->fts_info) {
        case FTS_D:
            if (hidden) fts_set(f, e, FTS_SKIP);
            break;
        case FTS_F:
        case FTS_SLNONE:
            if (!hidden) {
                char *p = strdup(e->fts_path);
                ok = p && push_entry(b, p, 0);
            }
            break;
        case FTS_SL: {
            struct stat st;
            if (hidden || (stat(e->fts_accpath, &st) == 0 && S_ISDIR(st.st_mode))) break;
            char *p = strdup(e->fts_path);
            ok = p && push_entry(b, p, 0);
            break;
        }
        case FTS_DNR:
        case FTS_ERR:
        case FTS_NS:
            if (!hidden) {
                char *p = strdup(e->fts_path);
                ok = p && push_entry(b, p, e->fts_errno ? e->fts_errno : EIO);
            }
            break;
        default:   /* FTS_DP (after a directory), FTS_DC, FTS_DEFAULT (fifos, devices...) */
            break;
        }
    }
    fts_close(f);
    return ok;
}

/* One argument or list entry: a directory is walked with --recursive. */
static bool add_source(batch *b, const char *p)
{
    struct stat st;
    if (b->o->recursive && stat(p, &st) == 0 && S_ISDIR(st.st_mode)) return walk(b, p);
    char *c = strdup(p);
    return c && push_entry(b, c, 0);
}

/* Splits what was read of --files-from into entries; at eof the rest too. */
static bool take_entries(batch *b, bool eof)
{
    char sep = b->o->null_sep ? '\0' : '\n';
    size_t start = 0;
    for (size_t i = 0; i <= b->llen; i++) {
        bool end = i == b->llen;
        if (end && !eof) break;
        if (!end && b->lbuf[i] != sep) continue;
        size_t len = i - start;
        char *s = b->lbuf + start;
        if (!b->o->null_sep && len && s[len - 1] == '\r') len--;
        if (len) {
            char *p = strndup(s, len);
            if (!p) return false;
            bool ok = add_source(b, p);
            free(p);
            if (!ok) return false;
        }
        start = i + 1;
    }
    if (start > b->llen) start = b->llen;
    memmove(b->lbuf, b->lbuf + start, b->llen - start);
    b->llen -= start;
    return true;
}

/* Reads what the list descriptor has: to the end if it blocks (a file),
 * else until EAGAIN (a pipe).  Returns false on a fatal error
 * (reported); sets listing_done at end of input. */
static bool read_list(batch *b)
{
    for (;;) {
        if (b->lcap - b->llen < 4096) {
            if (b->lcap >= MAX_ENTRY * 2) {
                bmsg(b, "--files-from: an entry is longer than %u bytes", MAX_ENTRY);
                return false;
            }
            size_t nc = b->lcap ? 2 * b->lcap : 16384;
            char *nb = realloc(b->lbuf, nc);
            if (!nb) { bmsg(b, "out of memory"); return false; }
            b->lbuf = nb;
            b->lcap = nc;
        }
        ssize_t n = read(b->lfd, b->lbuf + b->llen, b->lcap - b->llen);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            bmsg(b, "--files-from: cannot read %s: %s",
                 strcmp(b->o->files_from, "-") ? b->o->files_from : "standard input",
                 strerror(errno));
            return false;
        }
        b->llen += (size_t)n;
        if (!take_entries(b, n == 0)) { bmsg(b, "out of memory"); return false; }
        if (n == 0) {
            if (b->lfd != 0) close(b->lfd);
            b->lfd = -1;
            b->listing_done = true;
            return true;
        }
    }
}

/* ---- --resume and -o ---------------------------------------------------------- */

/* Error codes of failures that were not the file's fault: such lines do not
 * count as done, so --resume tries their files again. */
static bool transient_code(const char *code)
{
    static const char *const t[] = { "busy", "shutting_down", "no_memory", "timeout", "cannot_write",
                                      "connection_lost", "protocol_error", "out_of_memory",
                                      "cannot_connect", "internal", NULL };
    for (int i = 0; t[i]; i++)
        if (strcmp(code, t[i]) == 0) return true;
    return false;
}

/* Reads the paths done by an earlier run.  A missing file is an empty one.
 * Lines that are not complete JSON objects (the last one of an
 * interrupted run, cut short) are ignored. */
static int read_resume(batch *b, const char *file)
{
    FILE *f = fopen(file, "re");
    if (!f) {
        if (errno == ENOENT) return 0;
        bmsg(NULL, "--resume: cannot open %s: %s", file, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0, bad = 0, cut = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[n - 1] != '\n') { cut++; break; }   /* cut short: not done */
        json_t *o = json_loadb(line, (size_t)n, JSON_DISABLE_EOF_CHECK, NULL);
        json_t *p = json_object_get(o, "path");
        if (!json_is_object(o) || !json_is_string(p)) {
            if (n > 1) bad++;
            json_decref(o);
            continue;
        }
        json_t *er = json_object_get(o, "error");
        const char *code = json_string_value(json_object_get(er, "code"));
        if (!er || (code && !transient_code(code))) {
            char *k = strdup(json_string_value(p));
            int r = k ? b2_strset_add(&b->seen, k) : -1;
            if (r < 0) {
                json_decref(o);
                free(line);
                fclose(f);
                bmsg(NULL, "out of memory");
                return -1;
            }
            if (r == 0) b->resumed++;
        }
        json_decref(o);
    }
    bool rerr = ferror(f);
    free(line);
    fclose(f);
    if (rerr) {
        bmsg(NULL, "--resume: cannot read %s", file);
        return -1;
    }
    if (bad) bmsg(NULL, "--resume: %s: %zu line%s not understood (ignored)", file, bad,
                  bad == 1 ? "" : "s");
    if (cut && b->o->verbose)
        bmsg(NULL, "--resume: %s: the last line was cut short (ignored)", file);
    return 0;
}

/* Opens -o FILE for appending.  If it ends in a line cut short: when it is
 * also the --resume file, that line is removed (its file is done again);
 * otherwise a newline ends it, so the next line starts whole. */
static int open_output(const char *file, const char *resume)
{
    int fd = open(file, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd < 0 && (errno == EACCES || errno == EISDIR || errno == EINVAL))  /* a pipe, say */
        fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd < 0) {
        bmsg(NULL, "-o: cannot open %s: %s", file, strerror(errno));
        return -1;
    }
    struct stat st, rs;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return fd;
    char last;
    if (pread(fd, &last, 1, st.st_size - 1) != 1 || last == '\n') return fd;
    if (resume && stat(resume, &rs) == 0 && rs.st_dev == st.st_dev && rs.st_ino == st.st_ino) {
        off_t end = st.st_size;          /* cut after the last newline */
        char buf[4096];
        while (end > 0) {
            off_t from = end > (off_t)sizeof buf ? end - (off_t)sizeof buf : 0;
            ssize_t n = pread(fd, buf, (size_t)(end - from), from);
            if (n <= 0) break;
            ssize_t i = n - 1;
            while (i >= 0 && buf[i] != '\n') i--;
            if (i >= 0) { end = from + i + 1; break; }
            end = from;
        }
        if (ftruncate(fd, end) == 0) return fd;
    }
    if (!write_all(fd, "\n", 1)) {
        bmsg(NULL, "-o: cannot write %s: %s", file, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- jobs ----------------------------------------------------------------------- */

static void job_unlink_free(ctl_job *j)
{
    batch *b = j->b;
    if (j->prev) j->prev->next = j->next;
    else b->live = j->next;
    if (j->next) j->next->prev = j->prev;
    free(j->path);
    free(j);
}

static bool is_conn_error(int code)
{
    return code == BLIP2C_ECONNLOST || code == BLIP2C_EPROTO;
}

static void set_broken(batch *b, const blip2c_error *err)
{
    if (b->broken) return;
    b->broken = err->code;
    b->broken_err = *err;
}

/* Whether the first bytes of a file are those of an image format: the
 * ones the daemon decodes (PNG, JPEG, GIF, WebP, TIFF) and the photo
 * formats it refuses by name (HEIC/HEIF, AVIF, BMP, ICO, JPEG XL), which
 * then get an error line.  Anything else (text, XMP sidecars, videos,
 * PDF, SVG, .AAE edit files) is no photo and is skipped. */
static bool looks_like_image(const unsigned char *p, size_t n)
{
    static const char *const brands[] = { "heic", "heix", "hevc", "hevx", "heim", "heis",
                                          "mif1", "msf1", "avif", "avis", NULL };
    if (n >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) return true;
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) return true;        /* JPEG */
    if (n >= 6 && (memcmp(p, "GIF87a", 6) == 0 || memcmp(p, "GIF89a", 6) == 0)) return true;
    if (n >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0) return true;
    if (n >= 4 && (memcmp(p, "II*\0", 4) == 0 || memcmp(p, "MM\0*", 4) == 0)) return true;
    if (n >= 12 && memcmp(p + 4, "ftyp", 4) == 0)                                   /* ISO BMFF */
        for (int i = 0; brands[i]; i++)
            if (memcmp(p + 8, brands[i], 4) == 0) return true;
    if (n >= 2 && p[0] == 'B' && p[1] == 'M') return true;                           /* BMP */
    if (n >= 4 && memcmp(p, "\0\0\1\0", 4) == 0) return true;                        /* ICO */
    if (n >= 2 && p[0] == 0xff && p[1] == 0x0a) return true;                          /* JPEG XL */
    if (n >= 12 && memcmp(p, "\0\0\0\x0cJXL \r\n\x87\n", 12) == 0) return true;
    return false;
}

/* Opens path as the image: regular, non-empty; the error line otherwise
 * (-1).  -2: skipped without a line (not an image, or the run's own
 * output or --resume file). */
static int open_image(batch *b, const char *path, int walk_err)
{
    char msg[PATH_MAX + 256];
    if (walk_err) {
        snprintf(msg, sizeof msg, "cannot read %s: %s", path, strerror(walk_err));
        write_error(b, path, "unreadable", msg);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        snprintf(msg, sizeof msg, "cannot open %s: %s", path, strerror(errno));
        write_error(b, path, "unreadable", msg);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(msg, sizeof msg, "cannot read %s: %s", path, strerror(errno));
        close(fd);
        write_error(b, path, "unreadable", msg);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(msg, sizeof msg, "%s is not a regular file%s", path,
                 S_ISDIR(st.st_mode) ? (b->o->recursive ? " (it is a directory)"
                                                        : " (it is a directory: use --recursive)")
                                     : "");
        close(fd);
        write_error(b, path, "not_a_file", msg);
        return -1;
    }
    for (int i = 0; i < b->n_own; i++)
        if (st.st_dev == b->own[i].st_dev && st.st_ino == b->own[i].st_ino) {
            close(fd);
            b->queued--;     /* not a file of the collection at all */
            if (b->o->verbose) bmsg(b, "%s: skipped (the run's own -o or --resume file)", path);
            return -2;
        }
    if (st.st_size == 0) {
        snprintf(msg, sizeof msg, "%s is empty", path);
        close(fd);
        write_error(b, path, "bad_image", msg);
        return -1;
    }
    unsigned char head[16];
    ssize_t hn = pread(fd, head, sizeof head, 0);
    if (hn >= 0 && !looks_like_image(head, (size_t)hn)) {
        close(fd);
        b->skipped++;
        if (b->o->verbose) bmsg(b, "%s: skipped (not an image)", path);
        return -2;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

/* Sends j's request (first time or after busy).  false: j is gone. */
static bool job_submit(batch *b, ctl_job *j, int walk_err)
{
    int fd = open_image(b, j->path, walk_err);
    if (fd < 0) {
        if (j->state == J_WAITING) b->n_active--;
        job_unlink_free(j);
        return false;
    }
    blip2c_error err;
    int rc = b->op->submit(b->op->user, b->c, fd, j, &j->id, &err);
    close(fd);
    if (rc < 0) {
        if (j->state == J_WAITING) b->n_active--;
        if (is_conn_error(rc)) set_broken(b, &err);
        else write_error(b, j->path, ctl_error_code(&err), err.message);
        job_unlink_free(j);
        return false;
    }
    if (j->state != J_WAITING) b->n_active++;
    j->state = J_RUNNING;
    j->deadline = b->o->timeout_ms ? now_ms() + b->o->timeout_ms : 0;
    return true;
}

static void start_next(batch *b)
{
    entry e = b->q[b->qhead++];
    ctl_job *j = calloc(1, sizeof *j);
    if (!j) {
        bmsg(b, "out of memory");
        free(e.path);
        b->out_failed = true;
        return;
    }
    j->b = b;
    j->path = e.path;
    j->state = -1;    /* not counted yet */
    j->next = b->live;
    if (b->live) b->live->prev = j;
    b->live = j;
    job_submit(b, j, e.err);
}

const char *ctl_job_path(const ctl_job *j)
{
    return j->path;
}

void *ctl_job_user(const ctl_job *j)
{
    return j->b->op->user;
}

char *ctl_path_key(const char *path)
{
    return path_key(path);
}

void ctl_job_done(ctl_job *j, json_t *fields, const char *raw, bool canceled)
{
    batch *b = j->b;
    if (j->state == J_ABANDONED) {
        json_decref(fields);
        job_unlink_free(j);
        return;
    }
    b->n_active--;
    if (canceled) {
        json_decref(fields);   /* no line: --resume does it again */
    } else {
        write_line(b, j->path, fields, raw);
        b->ok++;
    }
    job_unlink_free(j);
    show_progress(b, false);
}

void ctl_job_fail(ctl_job *j, const blip2c_error *err)
{
    batch *b = j->b;
    if (j->state == J_ABANDONED) {
        job_unlink_free(j);
        return;
    }
    if (err->code == BLIP2C_EBUSY && j->busy_tries < BUSY_RETRIES && !b->stopping) {
        int64_t wait = 250ll << (j->busy_tries < 3 ? j->busy_tries : 3);  /* up to 2 s */
        j->busy_tries++;
        j->state = J_WAITING;      /* keeps its place in the window */
        j->not_before = now_ms() + wait;
        return;
    }
    b->n_active--;
    if (is_conn_error(err->code)) set_broken(b, err);
    else {
        char msg[sizeof err->message + PATH_MAX + 8];
        snprintf(msg, sizeof msg, "%s: %s", j->path, err->message);
        write_error(b, j->path, ctl_error_code(err), msg);
    }
    job_unlink_free(j);
    show_progress(b, false);
}

/* ---- signals -------------------------------------------------------------------- */

static int sig_pipe[2] = { -1, -1 };
static volatile sig_atomic_t sig_last;

static void on_signal(int sig)
{
    int e = errno;
    sig_last = sig;
    if (sig_pipe[1] >= 0) {
        char c = (char)sig;
        ssize_t r = write(sig_pipe[1], &c, 1);
        (void)r;
    }
    errno = e;
}

/* ---- the run -------------------------------------------------------------------- */

static unsigned default_jobs(batch *b)
{
    blip2c_status *st;
    blip2c_error err;
    unsigned per = b->op->seqs_per_request ? b->op->seqs_per_request : 1;
    unsigned jobs = 8;
    if (blip2c_status_get(b->c, &st, &err) < 0) {
        if (is_conn_error(err.code)) set_broken(b, &err);
        else if (b->o->verbose) bmsg(b, "status: %s (using --jobs %u)", err.message, jobs);
        return jobs;
    }
    unsigned batchn = st->max_batch ? (st->max_batch + per - 1) / per : 4;
    jobs = 2 * batchn;   /* one batch decoding, one being prepared */
    if (st->max_queue && jobs > st->max_queue) jobs = st->max_queue;
    if (jobs > 64) jobs = 64;   /* the daemon's default --max-inflight */
    if (jobs < 1) jobs = 1;
    if (b->o->verbose)
        bmsg(b, "%u requests in flight (the daemon decodes up to %u sequences together)", jobs,
             st->max_batch);
    blip2c_status_free(st);
    return jobs;
}

static void begin_stop(batch *b, int sig)
{
    b->stopping = true;
    b->stop_sig = sig;
    b->stop_deadline = now_ms() + STOP_GRACE_MS;
    for (ctl_job *j = b->live, *next; j; j = next) {
        next = j->next;
        if (j->state == J_RUNNING) {
            blip2c_cancel(b->c, j->id, NULL);
        } else if (j->state == J_WAITING) {
            b->n_active--;
            job_unlink_free(j);
        }
    }
}

static void summary(batch *b)
{
    double secs = (double)(now_ms() - b->t0) / 1000.0;
    char dur[32];
    fmt_duration(dur, sizeof dur, secs);
    size_t done = b->ok + b->failed;
    char skipped[128] = "";
    int k = 0;
    if (b->skipped)
        k = snprintf(skipped, sizeof skipped, "; %zu skipped (not images)", b->skipped);
    if (b->resumed)
        snprintf(skipped + k, sizeof skipped - (size_t)k, "; %zu done before (--resume)", b->resumed);
    bmsg(b, "%s %zu of %zu file%s in %s (%.2f images/s); %zu failed%s", b->op->verb, b->ok,
         b->queued, b->queued == 1 ? "" : "s", dur, secs > 0 ? (double)done / secs : 0.0,
         b->failed, skipped);
}

int ctl_batch_run(blip2c_conn *c, const ctl_batch_opts *o, const ctl_batch_op *op)
{
    batch bb, *b = &bb;
    memset(b, 0, sizeof *b);
    b->c = c;
    b->o = o;
    b->op = op;
    b->lfd = -1;
    b->out = 1;
    int status = CTL_EXIT_OK;
    struct sigaction sa, old_int, old_term;
    bool handlers = false;

    if (o->resume && read_resume(b, o->resume) < 0) { status = CTL_EXIT_USAGE; goto finish; }
    if (o->output) {
        b->out = open_output(o->output, o->resume);
        if (b->out < 0) { b->out = -1; status = CTL_EXIT_USAGE; goto finish; }
        if (fstat(b->out, &b->own[b->n_own]) == 0) b->n_own++;
    }
    if (o->resume && stat(o->resume, &b->own[b->n_own]) == 0) b->n_own++;

    /* sources: the arguments, then --files-from */
    for (size_t i = 0; i < o->n_paths; i++)
        if (!add_source(b, o->paths[i])) { bmsg(b, "out of memory"); status = CTL_EXIT_FAILED; goto finish; }
    if (o->files_from) {
        if (strcmp(o->files_from, "-") == 0) {
            b->lfd = 0;
        } else {
            b->lfd = open(o->files_from, O_RDONLY | O_CLOEXEC | O_NOCTTY);
            if (b->lfd < 0) {
                bmsg(b, "--files-from: cannot open %s: %s", o->files_from, strerror(errno));
                status = CTL_EXIT_USAGE;
                goto finish;
            }
        }
        struct stat st;
        if (fstat(b->lfd, &st) == 0 && S_ISREG(st.st_mode)) {
            if (!read_list(b)) { status = CTL_EXIT_USAGE; goto finish; }   /* all at once */
        } else {
            int fl = fcntl(b->lfd, F_GETFL);
            if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(b->lfd, F_SETFL, fl | O_NONBLOCK);
        }
    } else {
        b->listing_done = true;
    }
    if (b->resumed && o->verbose)
        bmsg(b, "--resume: %zu file%s already done", b->resumed, b->resumed == 1 ? "" : "s");

    b->jobs = o->jobs ? o->jobs : default_jobs(b);
    b->progress = o->progress > 0 || (o->progress < 0 && isatty(2));
    b->out_tty = isatty(b->out);

    if (pipe(sig_pipe) == 0) {
        fcntl(sig_pipe[0], F_SETFD, FD_CLOEXEC);
        fcntl(sig_pipe[1], F_SETFD, FD_CLOEXEC);
        fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK);
        fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sig_last = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    handlers = true;

    b->t0 = now_ms();
    show_progress(b, true);
    bool forced = false;
    while (!forced && !b->broken && !b->out_failed) {
        int64_t now = now_ms(), wake = -1;
        if (!b->stopping) {
            /* busy ones whose wait is over, then new files, as the window allows */
            for (ctl_job *j = b->live, *next; j && !b->broken; j = next) {
                next = j->next;
                if (j->state != J_WAITING) continue;
                if (j->not_before <= now) job_submit(b, j, 0);
                else if (wake < 0 || j->not_before < wake) wake = j->not_before;
            }
            while (b->n_active < b->jobs && b->qhead < b->qn && !b->broken && !b->out_failed)
                start_next(b);
            if (b->broken || b->out_failed) break;
            if (b->n_active == 0 && b->qhead == b->qn && b->listing_done) break;  /* all done */
        } else {
            if (b->n_active == 0) break;
            if (now >= b->stop_deadline) break;
            wake = b->stop_deadline;
        }
        /* --timeout: cancel what ran too long; its file gets an error line */
        bool expired = false;
        for (ctl_job *j = b->live; j && o->timeout_ms; j = j->next) {
            if (j->state != J_RUNNING || !j->deadline) continue;
            if (j->deadline <= now) {
                blip2c_cancel(b->c, j->id, NULL);
                j->state = J_ABANDONED;
                b->n_active--;
                char msg[PATH_MAX + 64];
                snprintf(msg, sizeof msg, "%s: no result within the --timeout; the request "
                         "was canceled", j->path);
                write_error(b, j->path, "timeout", msg);
                expired = true;
            } else if (wake < 0 || j->deadline < wake) {
                wake = j->deadline;
            }
        }
        if (expired) continue;
        show_progress(b, false);

        struct pollfd pfd[3];
        int np = 0, ci = np++, si = -1, li = -1;
        pfd[ci] = (struct pollfd){ blip2c_fd(b->c), POLLIN, 0 };
        if (blip2c_want_write(b->c)) pfd[ci].events |= POLLOUT;
        if (sig_pipe[0] >= 0) { si = np++; pfd[si] = (struct pollfd){ sig_pipe[0], POLLIN, 0 }; }
        if (b->lfd >= 0 && !b->stopping) {   /* read ahead: the total becomes known */
            li = np++;
            pfd[li] = (struct pollfd){ b->lfd, POLLIN, 0 };
        }
        if (b->progress && (wake < 0 || wake > now + PROGRESS_MS)) wake = now + PROGRESS_MS;
        int t = -1;
        if (wake >= 0) {
            int64_t left = wake - now_ms();
            t = left < 0 ? 0 : left > 60000 ? 60000 : (int)left;
        }
        if (sig_last && !b->stopping) t = 0;
        if (poll(pfd, (nfds_t)np, t) < 0 && errno != EINTR) {
            bmsg(b, "poll: %s", strerror(errno));
            status = CTL_EXIT_FAILED;
            break;
        }
        if (si >= 0 && (pfd[si].revents & POLLIN)) {
            char buf[16];
            while (read(sig_pipe[0], buf, sizeof buf) > 0) {}
        }
        if (sig_last) {
            int sig = sig_last;
            sig_last = 0;
            if (b->stopping) {
                forced = true;   /* a second Ctrl-C: stop waiting for the cancels */
            } else {
                begin_stop(b, sig);
                bmsg(b, "interrupted: canceling %zu request%s in flight (Ctrl-C again to "
                     "stop at once)", b->n_active, b->n_active == 1 ? "" : "s");
            }
        }
        if (li >= 0 && (pfd[li].revents & (POLLIN | POLLHUP | POLLERR)) && !read_list(b)) {
            status = CTL_EXIT_USAGE;
            break;
        }
        blip2c_error err;
        if (blip2c_process(b->c, &err) < 0) set_broken(b, &err);
    }

    if (b->progress_shown) {
        show_progress(b, true);
        fputc('\n', stderr);
        b->progress_shown = false;
    }
    if (b->broken) {
        bmsg(b, "%s", b->broken_err.message);
        status = CTL_EXIT_LOST;
    } else if (b->out_failed) {
        status = CTL_EXIT_FAILED;
    } else if (b->stopping) {
        status = 128 + b->stop_sig;
    } else if (status == CTL_EXIT_OK && b->failed) {
        status = CTL_EXIT_FAILED;
    }
    if (b->progress || o->verbose) summary(b);
    if (b->stopping || b->broken) {
        size_t left = b->queued - b->ok - b->failed - b->skipped;
        if (o->resume_cmd)
            bmsg(b, "%zu file%s not done; to continue, run:\n  %s", left, left == 1 ? "" : "s",
                 o->resume_cmd);
        else
            bmsg(b, "%zu file%s not done; save the output to a file and give it to --resume "
                 "FILE -o FILE to continue", left, left == 1 ? "" : "s");
    }

finish:
    if (handlers) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    if (sig_pipe[0] >= 0) { close(sig_pipe[0]); close(sig_pipe[1]); sig_pipe[0] = sig_pipe[1] = -1; }
    /* jobs still live get no callback after blip2c_close: free them here,
     * but their requests stay registered with the connection until it is
     * closed by the caller, so only the bookkeeping goes */
    while (b->live) {
        ctl_job *j = b->live;
        j->state = J_ABANDONED;
        b->live = j->next;
        free(j->path);
        free(j);
    }
    for (size_t i = b->qhead; i < b->qn; i++) free(b->q[i].path);
    free(b->q);
    b2_strset_free(&b->seen);
    free(b->lbuf);
    if (b->lfd > 0) close(b->lfd);
    if (o->output && b->out >= 0) {
        if (close(b->out) < 0 && status == CTL_EXIT_OK) {
            bmsg(NULL, "cannot write the output %s: %s", o->output, strerror(errno));
            status = CTL_EXIT_FAILED;
        }
    }
    return status;
}

/* ---- the caption operation ------------------------------------------------------ */

static void caption_done_cb(void *user, const blip2c_result *r)
{
    ctl_job *job = user;
    json_t *f = json_object();
    b2cli_seq seqs[B2CLI_MAX_SEQS];
    const size_t n = r->n_seqs < B2CLI_MAX_SEQS ? r->n_seqs : B2CLI_MAX_SEQS;
    for (size_t i = 0; i < n; i++)
        seqs[i] = (b2cli_seq){r->seqs[i].text, r->seqs[i].text_len, r->seqs[i].ids, r->seqs[i].n_ids,
                              blip2c_finish_name(r->seqs[i].finish)};
    b2cli_json_generation(f, seqs, n, r->timings.total_ms, r->cached);
    const blip2c_seq *s0 = r->n_seqs ? &r->seqs[0] : NULL;
    char raw[48];
    if (r->has_seed) snprintf(raw, sizeof raw, "\"seed\":%" PRIu64, r->seed);
    ctl_job_done(job, f, r->has_seed ? raw : NULL, s0 && s0->finish == BLIP2C_FINISH_CANCELED);
}

static void caption_error_cb(void *user, uint64_t id, const blip2c_error *err)
{
    (void)id;
    ctl_job_fail(user, err);
}

static int caption_submit(void *user, blip2c_conn *c, int fd, ctl_job *job, uint64_t *id,
                          blip2c_error *err)
{
    const ctl_caption_args *a = user;
    static const blip2c_callbacks cbs = { NULL, caption_done_cb, caption_error_cb };
    blip2c_request rq;
    blip2c_request_init(&rq);
    rq.image_fd = fd;
    rq.prompt = a->prompt;
    rq.params = a->params;
    return blip2c_submit(c, &rq, &cbs, job, id, err);
}

ctl_batch_op ctl_batch_caption_op(ctl_caption_args *a)
{
    unsigned per = 1;
    if (a->params) {
        per = a->params->num_beams > per ? a->params->num_beams : per;
        per = a->params->num_return_sequences > per ? a->params->num_return_sequences : per;
    }
    ctl_batch_op op = { "captioned", caption_submit, a, per };
    return op;
}
