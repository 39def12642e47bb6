/*
 * queue.c - the Redis side of the job queue: URLs, connections, and the
 * few steps that must be atomic, as Lua scripts run with EVAL.
 *
 *   b2q_url_parse --> b2q_connect (hiredis, TCP or Unix socket; AUTH
 *   [user] password) --> b2q_ensure_group (XGROUP CREATE ... MKSTREAM)
 *   enqueue:  ENQUEUE_LUA  HSETNX S:jobs id src; only if new: XADD S
 *   finish:   FINISH_LUA   HSETNX S:done id; only if new: XADD S:results
 *                          (and XADD S:dead); then HDEL S:fails, XACK, XDEL
 *
 * EVAL sends the script text each time (a few hundred bytes): after a
 * Redis restart there is no script cache to miss.  Scripts are atomic and
 * replicated/persisted as a whole, so a result is never written without
 * its acknowledgement or the other way round.
 */
#include "b2q.h"

#include <errno.h>
#include <glib.h>
#include <hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct b2q_conn {
    redisContext *c;
    char stream[256];
    char key[320];   /* the last b2q_key */
};

__attribute__((format(printf, 3, 4)))
static int b2q__msg(char *msg, size_t len, const char *fmt, ...)
{
    if (msg && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, len, fmt, ap);
        va_end(ap);
    }
    return 0;
}

/* ---- URLs ---------------------------------------------------------------------- */

static int b2q__hex(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* %XX-decodes s[0..n) into dst (cap bytes); -1 if bad or too long. */
static int b2q__unescape(char *dst, size_t cap, const char *s, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n) return -1;
            int h = b2q__hex((unsigned char)s[i + 1]), l = b2q__hex((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) return -1;
            ch = h * 16 + l;
            i += 2;
        }
        if (ch == 0 || w + 1 >= cap) return -1;
        dst[w++] = (char)ch;
    }
    dst[w] = '\0';
    return 0;
}

static bool b2q__stream_ok(const char *s)
{
    if (!*s || strlen(s) >= 200) return false;
    for (; *s; s++)
        if (*s <= ' ' || *s == '/' || *s == 0x7f) return false;
    return true;
}

static bool b2q__is_socket(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* user:password@ at the start of *p (up to the first '@' before end);
 * advances *p past it. */
static int b2q__userinfo(const char **p, const char *end, b2q_url *u, char *msg, size_t ml)
{
    const char *at = memchr(*p, '@', (size_t)(end - *p));
    if (!at) return 0;
    const char *colon = memchr(*p, ':', (size_t)(at - *p));
    const char *ue = colon ? colon : at;
    if (b2q__unescape(u->user, sizeof u->user, *p, (size_t)(ue - *p)) < 0 ||
        (colon && b2q__unescape(u->password, sizeof u->password, colon + 1, (size_t)(at - colon - 1)) < 0)) {
        b2q__msg(msg, ml, "bad user or password in the URL (use %%XX for special characters)");
        return B2Q_EINVAL;
    }
    *p = at + 1;
    return 0;
}

int b2q_url_parse(const char *s, b2q_url *u, char *msg, size_t ml)
{
    memset(u, 0, sizeof *u);
    u->port = B2Q_DEFAULT_PORT;
    snprintf(u->stream, sizeof u->stream, "%s", B2Q_DEFAULT_STREAM);
    if (!s) return B2Q_EINVAL;
    const char *end = s + strlen(s);
    if (strncmp(s, "redis://", 8) == 0) {
        const char *p = s + 8;
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *hend = slash ? slash : end;
        if (b2q__userinfo(&p, hend, u, msg, ml) < 0) return B2Q_EINVAL;
        const char *portp = NULL;
        if (*p == '[') {
            const char *rb = memchr(p, ']', (size_t)(hend - p));
            if (!rb) { b2q__msg(msg, ml, "%s: unclosed [ in the host", s); return B2Q_EINVAL; }
            if ((size_t)(rb - p - 1) >= sizeof u->host || rb == p + 1) goto badhost;
            memcpy(u->host, p + 1, (size_t)(rb - p - 1));
            if (rb + 1 < hend) {
                if (rb[1] != ':') goto badhost;
                portp = rb + 2;
            }
        } else {
            const char *colon = memchr(p, ':', (size_t)(hend - p));
            const char *he = colon ? colon : hend;
            if (he == p || (size_t)(he - p) >= sizeof u->host) goto badhost;
            memcpy(u->host, p, (size_t)(he - p));
            if (colon) portp = colon + 1;
        }
        if (portp) {
            long v = 0;
            const char *q = portp;
            if (q == hend) goto badport;
            for (; q < hend; q++) {
                if (*q < '0' || *q > '9') goto badport;
                v = v * 10 + (*q - '0');
                if (v > 65535) goto badport;
            }
            if (v == 0) goto badport;
            u->port = (int)v;
        }
        if (slash && slash[1]) {
            if (b2q__unescape(u->stream, sizeof u->stream, slash + 1, (size_t)(end - slash - 1)) < 0 ||
                !b2q__stream_ok(u->stream)) {
                b2q__msg(msg, ml, "%s: the stream name must be 1 to 199 bytes without '/', spaces or control characters", s);
                return B2Q_EINVAL;
            }
        }
    } else if (strncmp(s, "unix:", 5) == 0) {
        const char *p = s + 5;
        if (strncmp(p, "//", 2) == 0) p += 2;
        if (b2q__userinfo(&p, end, u, msg, ml) < 0) return B2Q_EINVAL;
        if (*p != '/' || (size_t)(end - p) >= sizeof u->unix_path) {
            b2q__msg(msg, ml, "%s: unix: needs an absolute socket path", s);
            return B2Q_EINVAL;
        }
        memcpy(u->unix_path, p, (size_t)(end - p));
        if (!b2q__is_socket(u->unix_path)) {
            char *last = strrchr(u->unix_path, '/');
            if (last && last != u->unix_path && last[1]) {
                *last = '\0';
                if (b2q__is_socket(u->unix_path) && b2q__stream_ok(last + 1))
                    snprintf(u->stream, sizeof u->stream, "%s", last + 1);
                else
                    *last = '/'; /* no socket (yet): all of it is the path */
            }
        }
    } else {
        b2q__msg(msg, ml, "%s: not a queue URL (redis://[user:password@]HOST:PORT/STREAM or unix:PATH[/STREAM])", s);
        return B2Q_EINVAL;
    }
    if (!u->password[0]) {
        const char *pw = getenv("BLIP2_QUEUE_PASSWORD"), *cd = getenv("CREDENTIALS_DIRECTORY");
        if (pw && strlen(pw) < sizeof u->password) {
            snprintf(u->password, sizeof u->password, "%s", pw);
        } else if (cd && *cd) { /* systemd LoadCredential=queue-password:FILE */
            char path[4200];
            snprintf(path, sizeof path, "%s/queue-password", cd);
            FILE *f = fopen(path, "re");
            if (f) {
                size_t n = fread(u->password, 1, sizeof u->password - 1, f);
                u->password[n] = '\0';
                while (n && (u->password[n - 1] == '\n' || u->password[n - 1] == '\r')) u->password[--n] = '\0';
                fclose(f);
            }
        }
    }
    return 0;
badhost:
    b2q__msg(msg, ml, "%s: bad host", s);
    return B2Q_EINVAL;
badport:
    b2q__msg(msg, ml, "%s: the port must be 1 to 65535", s);
    return B2Q_EINVAL;
}

void b2q_url_display(const b2q_url *u, char *buf, size_t len)
{
    char cred[200] = "";
    if (u->user[0] || u->password[0])
        snprintf(cred, sizeof cred, "%s%s@", u->user, u->password[0] ? ":***" : "");
    if (u->unix_path[0])
        snprintf(buf, len, "unix:%s%s (stream %s)", cred, u->unix_path, u->stream);
    else
        snprintf(buf, len, "redis://%s%s%s%s:%d/%s", cred, strchr(u->host, ':') ? "[" : "", u->host,
                 strchr(u->host, ':') ? "]" : "", u->port, u->stream);
}

/* ---- connections --------------------------------------------------------------- */

static struct timeval b2q__tv(int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

/* A reply that is an error becomes B2Q_EREDIS with its text. */
static int b2q__check(b2q_conn *q, redisReply *r, const char *what, char *msg, size_t ml)
{
    if (!r) {
        b2q__msg(msg, ml, "%s: %s", what, q->c->errstr[0] ? q->c->errstr : "connection lost");
        return B2Q_EIO;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        b2q__msg(msg, ml, "%s: %s", what, r->str);
        freeReplyObject(r);
        return B2Q_EREDIS;
    }
    return 0;
}

int b2q_connect(const b2q_url *u, int timeout_ms, b2q_conn **out, char *msg, size_t ml)
{
    *out = NULL;
    b2q_conn *q = calloc(1, sizeof *q);
    if (!q) return B2Q_ENOMEM;
    snprintf(q->stream, sizeof q->stream, "%s", u->stream);
    struct timeval tv = b2q__tv(timeout_ms);
    if (u->unix_path[0])
        q->c = timeout_ms > 0 ? redisConnectUnixWithTimeout(u->unix_path, tv) : redisConnectUnix(u->unix_path);
    else
        q->c = timeout_ms > 0 ? redisConnectWithTimeout(u->host, u->port, tv) : redisConnect(u->host, u->port);
    char where[512];
    b2q_url_display(u, where, sizeof where);
    if (!q->c || q->c->err) {
        b2q__msg(msg, ml, "cannot connect to %s: %s", where, q->c ? q->c->errstr : "out of memory");
        b2q_close(q);
        return B2Q_EIO;
    }
    if (timeout_ms > 0) redisSetTimeout(q->c, tv);
    if (!u->unix_path[0]) redisEnableKeepAlive(q->c);
    if (u->password[0]) {
        redisReply *r = u->user[0] ? redisCommand(q->c, "AUTH %s %s", u->user, u->password)
                                   : redisCommand(q->c, "AUTH %s", u->password);
        int rc = b2q__check(q, r, "AUTH", msg, ml);
        if (rc < 0) { b2q_close(q); return rc; }
        freeReplyObject(r);
    }
    *out = q;
    return 0;
}

void b2q_close(b2q_conn *q)
{
    if (!q) return;
    if (q->c) redisFree(q->c);
    free(q);
}

int b2q_set_timeout(b2q_conn *q, int timeout_ms)
{
    struct timeval tv = b2q__tv(timeout_ms);
    return redisSetTimeout(q->c, tv) == REDIS_OK ? 0 : B2Q_EIO;
}

void *b2q_redis(b2q_conn *q)
{
    return q->c;
}

const char *b2q_stream(const b2q_conn *q)
{
    return q->stream;
}

const char *b2q_key(const b2q_conn *q, const char *suffix)
{
    b2q_conn *m = (b2q_conn *)q;
    snprintf(m->key, sizeof m->key, "%s%s", q->stream, suffix);
    return m->key;
}

int b2q_ensure_group(b2q_conn *q, const char *group, char *msg, size_t ml)
{
    redisReply *r = redisCommand(q->c, "XGROUP CREATE %s %s 0 MKSTREAM", q->stream, group);
    if (!r) return b2q__check(q, r, "XGROUP CREATE", msg, ml);
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        b2q__msg(msg, ml, "XGROUP CREATE %s %s: %s", q->stream, group, r->str);
        rc = B2Q_EREDIS;
    }
    freeReplyObject(r);
    return rc;
}

/* ---- the atomic steps ------------------------------------------------------------ */

static const char ENQUEUE_LUA[] =
    "if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
    "if ARGV[5] == '' then\n"
    "  redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'src', ARGV[2], 'op', ARGV[3], 'req', ARGV[4])\n"
    "else\n"
    "  redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'src', ARGV[2], 'op', ARGV[3], 'req', ARGV[4], 'path', ARGV[5])\n"
    "end\n"
    "return 1\n";

/* KEYS: S, S:done, S:results, S:dead, S:fails
 * ARGV: group, entry, id, src, res, by, dead, code, message, field, tries, op, req, path */
static const char FINISH_LUA[] =
    "local first = redis.call('HSETNX', KEYS[2], ARGV[3], '-') == 1\n"
    "if first then\n"
    "  local rid = redis.call('XADD', KEYS[3], '*', 'id', ARGV[3], 'src', ARGV[4], 'by', ARGV[6], 'res', ARGV[5])\n"
    "  local v = 'r ' .. rid\n"
    "  if ARGV[7] == '1' then\n"
    "    local did = redis.call('XADD', KEYS[4], '*', 'id', ARGV[3], 'src', ARGV[4], 'code', ARGV[8],\n"
    "      'message', ARGV[9], 'field', ARGV[10], 'tries', ARGV[11], 'by', ARGV[6], 'op', ARGV[12],\n"
    "      'req', ARGV[13], 'path', ARGV[14])\n"
    "    v = 'd ' .. did\n"
    "  end\n"
    "  redis.call('HSET', KEYS[2], ARGV[3], v)\n"
    "end\n"
    "redis.call('HDEL', KEYS[5], ARGV[3])\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "if first then return 1 end\n"
    "return 0\n";

int b2q_enqueue(b2q_conn *q, const b2q_job *job, char *msg, size_t ml)
{
    char jobs[320];
    snprintf(jobs, sizeof jobs, "%s:jobs", q->stream);
    const char *path = job->path ? job->path : "";
    const char *argv[] = { "EVAL", ENQUEUE_LUA, "2", q->stream, jobs, job->id, job->src, job->op,
                           (const char *)job->req, path };
    size_t len[] = { 4, sizeof ENQUEUE_LUA - 1, 1, strlen(q->stream), strlen(jobs), strlen(job->id),
                     strlen(job->src), strlen(job->op), job->req_len, strlen(path) };
    redisReply *r = redisCommandArgv(q->c, 10, argv, len);
    int rc = b2q__check(q, r, "enqueue", msg, ml);
    if (rc < 0) return rc;
    rc = r->type == REDIS_REPLY_INTEGER ? (int)r->integer : B2Q_EPROTO;
    freeReplyObject(r);
    return rc;
}

int b2q_finish(b2q_conn *q, const char *group, const b2q_outcome *o, char *msg, size_t ml)
{
    char k[4][320], tries[16];
    static const char *const sfx[4] = { ":done", ":results", ":dead", ":fails" };
    for (int i = 0; i < 4; i++) snprintf(k[i], sizeof k[i], "%s%s", q->stream, sfx[i]);
    snprintf(tries, sizeof tries, "%u", o->tries);
#define S_(x) ((x) ? (x) : "")
    const char *argv[] = { "EVAL", FINISH_LUA, "5", q->stream, k[0], k[1], k[2], k[3],
                           group, o->entry, o->id, S_(o->src), (const char *)o->res, S_(o->by),
                           o->dead ? "1" : "0", S_(o->code), S_(o->message), S_(o->field), tries,
                           S_(o->op), o->req ? (const char *)o->req : "", S_(o->path) };
    size_t len[sizeof argv / sizeof argv[0]];
    for (size_t i = 0; i < sizeof argv / sizeof argv[0]; i++) /* 12 and 20 are binary */
        len[i] = i == 12 ? o->res_len : i == 20 ? (o->req ? o->req_len : 0) : strlen(argv[i]);
#undef S_
    redisReply *r = redisCommandArgv(q->c, (int)(sizeof argv / sizeof argv[0]), argv, len);
    int rc = b2q__check(q, r, "writing a result", msg, ml);
    if (rc < 0) return rc;
    rc = r->type == REDIS_REPLY_INTEGER ? (int)r->integer : B2Q_EPROTO;
    freeReplyObject(r);
    return rc;
}

int b2q_note_failure(b2q_conn *q, const char *id, const char *code, const char *message,
                     char *msg, size_t ml)
{
    char key[320];
    snprintf(key, sizeof key, "%s:fails", q->stream);
    char val[1400];
    snprintf(val, sizeof val, "%s %s", code, message);
    redisReply *r = redisCommand(q->c, "HSET %s %s %s", key, id, val);
    int rc = b2q__check(q, r, "HSET fails", msg, ml);
    if (rc == 0) freeReplyObject(r);
    return rc;
}

void b2q_content_id(const uint8_t *image, size_t image_len, const char *op,
                    const uint8_t *req, size_t req_len, char out[65])
{
    GChecksum *ck = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(ck, (const guchar *)"blip2q 1", 9);
    g_checksum_update(ck, image, (gssize)image_len);
    g_checksum_update(ck, (const guchar *)op, (gssize)strlen(op) + 1);
    if (req_len) g_checksum_update(ck, req, (gssize)req_len);
    snprintf(out, 65, "%s", g_checksum_get_string(ck));
    g_checksum_free(ck);
}
