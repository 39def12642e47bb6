/*
 * http_api.c - the HTTP front end's translation layer (http_api.h): OpenAI
 * chat requests and /v1/caption query parameters into protocol generate
 * requests, protocol replies into JSON.  Pure functions over jansson; the
 * request checks are libipc's (b2ipc_request_validate), so an HTTP request
 * is held to exactly the limits a socket request is.
 *
 *   body --json_loadb--> messages --chat_turns--> (image, turns, question)
 *     --build_prompt--> "Question: q1 Answer: a1. Question: q Answer:"
 *   parameters --chat_params--> b2ipc_gen_params --validate--> b2d_gen
 *   done reply --> chat.completion / chat.completion.chunk / caption JSON
 */
#include "http_api.h"

#include <ctype.h>
#include <errno.h>
#include <glib.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int b2d_http_fail(b2d_http_error *e, int status, const char *code, const char *param,
                  const char *fmt, ...)
{
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s",
             status == 401 ? "authentication_error"
             : status == 429 ? "rate_limit_error"
             : status >= 500 ? "server_error" : "invalid_request_error");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

void b2d_http_from_code(b2d_http_error *e, int code, const char *field, const char *message)
{
    int status;
    switch (code) {
    case B2IPC_EBUSY: status = 429; break;
    case B2IPC_ESHUTDOWN:
    case B2IPC_ENOMEM: status = 503; break;
    case B2IPC_EINTERNAL:
    case B2IPC_EUNKNOWN_CODE:
    case B2IPC_EINVAL: status = 500; break;
    case B2IPC_EFRAME_TOO_LARGE: status = 413; break;
    case B2IPC_ETOO_LARGE:
        /* the image is the body: 413; a prompt or context too long is a bad request */
        status = field && strncmp(field, "image", 5) == 0 ? 413 : 400;
        break;
    default: status = 400; break;
    }
    const char *name = b2ipc_code_name(code);
    b2d_http_fail(e, status, name ? name : "internal", field, "%s",
                  message && *message ? message : b2ipc_strerror(code));
}

char *b2d_http_error_json(const b2d_http_error *e)
{
    json_t *o = json_pack("{s:{s:s,s:s,s:o,s:s}}", "error", "message", e->message, "type", e->type,
                          "param", e->param[0] ? json_string(e->param) : json_null(), "code", e->code);
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

void b2d_gen_free(b2d_gen *g)
{
    if (!g) return;
    free(g->image);
    free(g->prompt);
    for (uint32_t i = 0; i < g->n_stop; i++) free(g->stop[i]);
    free(g->stop);
    memset(g, 0, sizeof *g);
}

/* ---- base64 and data: URLs ---- */

int b2d_base64_decode(const char *s, size_t len, size_t max, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    size_t pad = 0;
    while (pad < 2 && len > pad && s[len - 1 - pad] == '=') pad++;
    size_t body = len - pad;
    if (body == 0 || (pad && len % 4) || body % 4 == 1) return -1;
    for (size_t i = 0; i < body; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '+' || c == '/')) return -1;
    }
    size_t n = body / 4 * 3 + (body % 4 ? body % 4 - 1 : 0);
    if (n > max) return -1;
    /* GLib decodes; it wants the padding, so pad a copy when it is missing */
    char *padded = malloc(body + 4);
    if (!padded) return -1;
    memcpy(padded, s, body);
    size_t pl = body;
    while (pl % 4) padded[pl++] = '=';
    padded[pl] = '\0';
    gsize got = 0;
    guchar *d = g_base64_decode(padded, &got);
    free(padded);
    if (!d || got != n) {
        g_free(d);
        return -1;
    }
    *out = malloc(n ? n : 1);
    if (!*out) {
        g_free(d);
        return -1;
    }
    memcpy(*out, d, n);
    g_free(d);
    *out_len = n;
    return 0;
}

/* An image_url's url: only base64 data: URLs of an image type. */
static int data_url(const char *url, const char *param, size_t max, b2d_gen *g, b2d_http_error *err)
{
    if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0)
        return b2d_http_fail(err, 400, "unsupported_url", param,
                             "%s: blip2d fetches no URLs; send the image inline as a data: URL "
                             "(data:image/jpeg;base64,...)", param);
    if (strncasecmp(url, "file:", 5) == 0)
        return b2d_http_fail(err, 400, "unsupported_url", param,
                             "%s: file: URLs are refused (the daemon never opens a path a client "
                             "names); send the image as a data: URL", param);
    if (strncasecmp(url, "data:", 5) != 0)
        return b2d_http_fail(err, 400, "unsupported_url", param,
                             "%s: only data: URLs are accepted (data:image/png;base64,...)", param);
    const char *comma = strchr(url, ',');
    if (!comma)
        return b2d_http_fail(err, 400, "bad_data_url", param, "%s: a data: URL without a comma", param);
    const char *meta = url + 5;
    size_t ml = (size_t)(comma - meta);
    if (ml < 7 || strncasecmp(meta + ml - 7, ";base64", 7) != 0)
        return b2d_http_fail(err, 400, "bad_data_url", param,
                             "%s: the data: URL must be base64 (data:image/...;base64,...)", param);
    if (ml > 7 && strncasecmp(meta, "image/", 6) != 0)
        return b2d_http_fail(err, 400, "bad_data_url", param,
                             "%s: the data: URL's media type is not image/*", param);
    const char *b64 = comma + 1;
    size_t bl = strlen(b64);
    if (bl / 4 * 3 > max + 3)
        return b2d_http_fail(err, 413, "too_large", param,
                             "%s: the image is larger than the daemon's limit of %zu bytes", param, max);
    if (b2d_base64_decode(b64, bl, max, &g->image, &g->image_len) < 0) {
        if (bl / 4 * 3 > max)
            return b2d_http_fail(err, 413, "too_large", param,
                                 "%s: the image is larger than the daemon's limit of %zu bytes", param, max);
        return b2d_http_fail(err, 400, "bad_base64", param, "%s: the data: URL is not valid base64", param);
    }
    return 0;
}

/* ---- messages -> prompt ---- */

typedef struct turn {
    const char *q;   /* borrowed from the JSON */
    const char *a;   /* NULL for the last question */
} turn;

/* text without surrounding ASCII whitespace, as a new string */
static char *trim_dup(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    return strndup(s, n);
}

/* The text of a message's content (a string, or the text parts joined by
 * spaces; NULL for none), and its image part (at most one). */
static int message_content(json_t *content, size_t mi, int user, size_t max_image, b2d_gen *g,
                           char **text, b2d_http_error *err)
{
    char param[64];
    *text = NULL;
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content)) {
        *text = trim_dup(json_string_value(content));
        return *text ? 0 : b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    }
    snprintf(param, sizeof param, "messages[%zu].content", mi);
    if (!json_is_array(content))
        return b2d_http_fail(err, 400, "bad_type", param, "%s: a string or an array of parts", param);
    GString *acc = g_string_new(NULL);
    size_t j;
    json_t *part;
    json_array_foreach(content, j, part) {
        snprintf(param, sizeof param, "messages[%zu].content[%zu]", mi, j);
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!json_is_object(part) || !type) {
            g_string_free(acc, TRUE);
            return b2d_http_fail(err, 400, "bad_type", param, "%s: a part is an object with a type", param);
        }
        if (strcmp(type, "text") == 0) {
            const char *t = json_string_value(json_object_get(part, "text"));
            if (!t) {
                g_string_free(acc, TRUE);
                return b2d_http_fail(err, 400, "missing_field", param, "%s: a text part without text", param);
            }
            char *tt = trim_dup(t);
            if (tt && *tt) {
                if (acc->len) g_string_append_c(acc, ' ');
                g_string_append(acc, tt);
            }
            free(tt);
        } else if (strcmp(type, "image_url") == 0) {
            json_t *iu = json_object_get(part, "image_url");
            const char *url = json_is_string(iu) ? json_string_value(iu)
                                                 : json_string_value(json_object_get(iu, "url"));
            char up[80];
            snprintf(up, sizeof up, "%s.image_url", param);
            if (!user) {
                g_string_free(acc, TRUE);
                return b2d_http_fail(err, 400, "out_of_range", up, "%s: images belong in user messages", up);
            }
            if (!url) {
                g_string_free(acc, TRUE);
                return b2d_http_fail(err, 400, "missing_field", up, "%s: an image_url part without url", up);
            }
            if (g->image) {
                g_string_free(acc, TRUE);
                return b2d_http_fail(err, 400, "out_of_range", up,
                                     "%s: BLIP-2 looks at one image per conversation; this is a second one", up);
            }
            if (data_url(url, up, max_image, g, err) < 0) {
                g_string_free(acc, TRUE);
                return -1;
            }
        } else {
            g_string_free(acc, TRUE);
            return b2d_http_fail(err, 400, "unsupported", param,
                                 "%s: part type '%.32s' is not supported (text, image_url)", param, type);
        }
    }
    *text = acc->len ? g_strdup(acc->str) : NULL;
    g_string_free(acc, TRUE);
    if (*text) {  /* g_strdup'ed: move into malloc'ed storage */
        char *m = strdup(*text);
        g_free(*text);
        *text = m;
        if (!m) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    }
    return 0;
}

/* "Question: q1 Answer: a1. Question: q Answer:" from turns [first, n) and
 * the last question q (blip2ctl chat's template); NULL if out of memory. */
static char *build_prompt(char **qs, char **as, size_t first, size_t n, const char *q)
{
    GString *p = g_string_new(NULL);
    for (size_t i = first; i < n; i++) {
        size_t al = strlen(as[i]);
        int ends = al && strchr(".!?", as[i][al - 1]);
        g_string_append_printf(p, "Question: %s Answer: %s%s ", qs[i], as[i], ends ? "" : ".");
    }
    g_string_append_printf(p, "Question: %s Answer:", q);
    char *s = strdup(p->str);
    g_string_free(p, TRUE);
    return s;
}

static int chat_messages(json_t *msgs, const b2ipc_limits *lim, b2d_gen *g, b2d_http_error *err)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return b2d_http_fail(err, 400, "missing_field", "messages", "messages: a non-empty array is required");
    size_t n = json_array_size(msgs);
    char **qs = calloc(n, sizeof *qs), **as = calloc(n, sizeof *as);
    size_t nt = 0;       /* complete turns (question and answer) */
    char *q = NULL;      /* the open question */
    int have_q = 0, rc = -1;
    if (!qs || !as) {
        b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
        goto finish;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        char param[64];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!json_is_object(m) || !role) {
            b2d_http_fail(err, 400, "missing_field", param, "%s: every message needs a role", param);
            goto finish;
        }
        int user = strcmp(role, "user") == 0;
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) continue; /* BLIP-2 has none */
        if (!user && strcmp(role, "assistant") != 0) {
            b2d_http_fail(err, 400, "unsupported", param,
                          "%s: role '%.32s' is not supported (system, user, assistant)", param, role);
            goto finish;
        }
        char *text = NULL;
        if (message_content(json_object_get(m, "content"), i, user, lim->max_image_bytes, g, &text, err) < 0)
            goto finish;
        if (user) {
            /* a user message after an unanswered one: the texts join */
            if (q && text) {
                char *j = g_strdup_printf("%s %s", q, text);
                free(q);
                free(text);
                q = j ? strdup(j) : NULL;
                g_free(j);
                if (!q) {
                    b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
                    goto finish;
                }
            } else if (text) {
                q = text;
            }
            have_q = 1;
        } else {
            if (have_q && q && text) { /* a turn of the history */
                qs[nt] = q;
                as[nt++] = text;
            } else { /* an image-only (caption) turn asks nothing: left out */
                free(q);
                free(text);
            }
            q = NULL;
            have_q = 0;
        }
    }
    if (!have_q) {
        b2d_http_fail(err, 400, "out_of_range", "messages", "messages: the last message must be the user's");
        goto finish;
    }
    if (!g->image) {
        b2d_http_fail(err, 400, "missing_field", "messages",
                      "messages: no image; put one image_url part (a data: URL) in a user message");
        goto finish;
    }
    if (!q) { /* the image with no question: a caption, as blip2ctl caption */
        rc = 0;
        goto finish;
    }
    size_t max_prompt = lim->max_prompt_bytes ? lim->max_prompt_bytes : B2IPC_DEFAULT_MAX_PROMPT_BYTES;
    for (size_t first = 0;; first++) {
        char *p = build_prompt(qs, as, first, nt, q);
        if (!p) {
            b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
            goto finish;
        }
        if (strlen(p) <= max_prompt || first == nt) { /* oldest turns dropped to fit */
            g->prompt = p;
            break;
        }
        free(p);
    }
    rc = 0;
finish:
    for (size_t i = 0; qs && i < nt; i++) {
        free(qs[i]);
        free(as[i]);
    }
    free(qs);
    free(as);
    free(q);
    return rc;
}

/* ---- parameters ---- */

/* The member name of the object o: absent or null 0 (*out untouched), an
 * integer in lo..hi 1, anything else -1 with err set. */
static int get_uint(json_t *o, const char *name, uint64_t lo, uint64_t hi, uint64_t *out,
                    b2d_http_error *err)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v))
        return b2d_http_fail(err, 400, "bad_type", name, "%s: an integer is required", name);
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < lo || (uint64_t)x > hi)
        return b2d_http_fail(err, 400, "out_of_range", name, "%s: %lld is out of range [%llu, %llu]", name,
                             (long long)x, (unsigned long long)lo, (unsigned long long)hi);
    *out = (uint64_t)x;
    return 1;
}

/* get_uint into a uint32_t (hi at most UINT32_MAX). */
static int get_u32(json_t *o, const char *name, uint32_t lo, uint32_t hi, uint32_t *out, b2d_http_error *err)
{
    uint64_t u;
    const int rc = get_uint(o, name, lo, hi, &u, err);
    if (rc > 0) *out = (uint32_t)u;
    return rc;
}

/* The same for a number. */
static int get_num(json_t *o, const char *name, double *out, b2d_http_error *err)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v))
        return b2d_http_fail(err, 400, "bad_type", name, "%s: a number is required", name);
    *out = json_number_value(v);
    return 1;
}

/* The protocol field a checked request failed on, named as the client
 * named it. */
static const char *openai_field(const char *field, const b2d_gen *g, int has_mct)
{
    if (!field) return NULL;
    if (strcmp(field, "max_new_tokens") == 0) return has_mct ? "max_completion_tokens" : "max_tokens";
    if (strcmp(field, "num_return_sequences") == 0) return "n";
    if (strcmp(field, "prompt") == 0) return "messages";
    if (strncmp(field, "image", 5) == 0) return "messages";
    (void)g;
    return field;
}

static int set_stop(json_t *v, b2d_gen *g, b2d_http_error *err)
{
    if (json_is_null(v)) return 0;
    size_t n = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
    if (!json_is_string(v) && !json_is_array(v))
        return b2d_http_fail(err, 400, "bad_type", "stop", "stop: a string or an array of strings");
    if (n > B2IPC_MAX_STOP)
        return b2d_http_fail(err, 400, "too_large", "stop", "stop: at most %u strings", B2IPC_MAX_STOP);
    g->stop = calloc(n ? n : 1, sizeof *g->stop);
    if (!g->stop) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(s))
            return b2d_http_fail(err, 400, "bad_type", "stop", "stop[%zu]: a string is required", i);
        g->stop[g->n_stop] = strndup(json_string_value(s), json_string_length(s));
        if (!g->stop[g->n_stop++]) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    }
    return 0;
}

/* Fields OpenAI defines that this server cannot honour unless they are at
 * their neutral value. */
static int refuse_unsupported(json_t *o, b2d_http_error *err)
{
    static const char *const never[] = { "tools", "tool_choice", "functions", "function_call", "audio",
                                         "modalities", "prediction" };
    for (size_t i = 0; i < sizeof never / sizeof *never; i++) {
        json_t *v = json_object_get(o, never[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
            return b2d_http_fail(err, 400, "unsupported", never[i], "%s: not supported by blip2d", never[i]);
    }
    const char *zero[] = { "frequency_penalty", "presence_penalty" };
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(o, zero[i]);
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0))
            return b2d_http_fail(err, 400, "unsupported", zero[i],
                                 "%s: not supported (use repetition_penalty, a blip2d extension)", zero[i]);
    }
    json_t *lp = json_object_get(o, "logprobs");
    if (json_is_true(lp))
        return b2d_http_fail(err, 400, "unsupported", "logprobs", "logprobs: not supported by blip2d");
    json_t *rf = json_object_get(o, "response_format");
    if (rf && !json_is_null(rf)) {
        const char *t = json_string_value(json_object_get(rf, "type"));
        if (!t || strcmp(t, "text") != 0)
            return b2d_http_fail(err, 400, "unsupported", "response_format",
                                 "response_format: only {\"type\": \"text\"}");
    }
    return 0;
}

static int finish_gen(b2d_gen *g, const b2ipc_limits *lim, b2d_http_error *err, int has_mct)
{
    b2ipc_generate *rg = &g->rq.generate;
    rg->image = g->image;
    rg->image_len = g->image_len;
    rg->prompt = g->prompt;
    rg->params.stop = (const char *const *)g->stop;
    rg->params.n_stop = g->n_stop;
    b2ipc_error e = {0};
    if (b2ipc_request_validate(&g->rq, lim, &e) < 0) {
        const char *f = openai_field(e.field[0] ? e.field : NULL, g, has_mct);
        b2d_http_from_code(err, e.code, f, e.message);
        return -1;
    }
    return 0;
}

int b2d_chat_parse(const char *body, size_t len, const b2ipc_limits *lim, b2d_gen *g,
                   b2d_http_error *err)
{
    memset(g, 0, sizeof *g);
    b2ipc_request_init(&g->rq, B2IPC_OP_GENERATE);
    g->n = 1;
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    int rc = -1;
    if (!o) {
        b2d_http_fail(err, 400, "bad_json", NULL, "the body is not valid JSON: %s (line %d, column %d)",
                      je.text, je.line, je.column);
        return -1;
    }
    if (!json_is_object(o)) {
        b2d_http_fail(err, 400, "bad_json", NULL, "the body must be a JSON object");
        goto finish;
    }
    b2ipc_gen_params *p = &g->rq.generate.params;
    json_t *v;
    if ((v = json_object_get(o, "model")) && !json_is_null(v)) {
        if (!json_is_string(v)) {
            b2d_http_fail(err, 400, "bad_type", "model", "model: a string is required");
            goto finish;
        }
        snprintf(g->model, sizeof g->model, "%s", json_string_value(v));
    }
    if (refuse_unsupported(o, err) < 0) goto finish;
    if ((v = json_object_get(o, "stream")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            b2d_http_fail(err, 400, "bad_type", "stream", "stream: true or false");
            goto finish;
        }
        g->stream = json_is_true(v);
    }
    if ((v = json_object_get(o, "stream_options")) && json_is_object(v))
        g->include_usage = json_is_true(json_object_get(v, "include_usage"));
    uint32_t n = 1;
    double t = 0;
    int has_mct = 0;
    if (get_u32(o, "max_tokens", 1, B2IPC_MAX_NEW_TOKENS, &p->max_new_tokens, err) < 0 ||
        (has_mct = get_u32(o, "max_completion_tokens", 1, B2IPC_MAX_NEW_TOKENS, &p->max_new_tokens, err)) < 0 ||
        get_num(o, "temperature", &t, err) < 0)
        goto finish;
    if (t < 0 || !isfinite(t)) {
        b2d_http_fail(err, 400, "out_of_range", "temperature", "temperature: %g is below 0", t);
        goto finish;
    }
    if (t > 0) { /* 0 or absent: greedy, as blip2ctl and the reference default */
        p->do_sample = true;
        p->temperature = t;
        if (get_num(o, "top_p", &p->top_p, err) < 0) goto finish;
    }
    const int seed = get_uint(o, "seed", 0, INT64_MAX, &p->seed, err);
    if (seed < 0 || get_u32(o, "n", 1, B2IPC_MAX_SEQS, &n, err) < 0) goto finish;
    if (seed > 0) p->has_seed = true;
    g->n = (int)n;
    /* blip2d extensions, named as in the protocol (llama-server takes top_k the same way) */
    if (get_u32(o, "top_k", 0, 1048576, &p->top_k, err) < 0 ||
        get_u32(o, "num_beams", 1, B2IPC_MAX_BEAMS, &p->num_beams, err) < 0 ||
        get_u32(o, "min_tokens", 0, B2IPC_MAX_NEW_TOKENS, &p->min_new_tokens, err) < 0 ||
        get_num(o, "repetition_penalty", &p->repetition_penalty, err) < 0 ||
        get_num(o, "length_penalty", &p->length_penalty, err) < 0)
        goto finish;
    /* n choices: samples when sampling, else the n best beams */
    if (g->n > 1) {
        p->num_return_sequences = (uint32_t)g->n;
        if (!p->do_sample && p->num_beams < (uint32_t)g->n) p->num_beams = (uint32_t)g->n;
    }
    if ((v = json_object_get(o, "stop")) && set_stop(v, g, err) < 0) goto finish;
    if (chat_messages(json_object_get(o, "messages"), lim, g, err) < 0) goto finish;
    g->rq.generate.stream = g->stream;
    rc = finish_gen(g, lim, err, has_mct);
finish:
    json_decref(o);
    return rc;
}

/* ---- /v1/caption ---- */

static int kv_uint(const b2d_kv *kv, uint64_t hi, uint64_t *out, b2d_http_error *err)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)kv->value[0]))
        return b2d_http_fail(err, 400, "bad_type", kv->key, "%s: '%.40s' is not a non-negative integer",
                             kv->key, kv->value);
    unsigned long long x = strtoull(kv->value, &end, 10);
    if (errno || *end)
        return b2d_http_fail(err, 400, "bad_type", kv->key, "%s: '%.40s' is not a non-negative integer",
                             kv->key, kv->value);
    if (x > hi)
        return b2d_http_fail(err, 400, "out_of_range", kv->key, "%s: %llu is out of range [0, %llu]", kv->key,
                             x, (unsigned long long)hi);
    *out = x;
    return 0;
}

static int kv_num(const b2d_kv *kv, double *out, b2d_http_error *err)
{
    char *end;
    errno = 0;
    double x = strtod(kv->value, &end);
    if (errno || *end || end == kv->value || !isfinite(x))
        return b2d_http_fail(err, 400, "bad_type", kv->key, "%s: '%.40s' is not a number", kv->key, kv->value);
    *out = x;
    return 0;
}

static int kv_bool(const b2d_kv *kv, bool *out, b2d_http_error *err)
{
    if (strcmp(kv->value, "true") == 0 || strcmp(kv->value, "1") == 0) *out = true;
    else if (strcmp(kv->value, "false") == 0 || strcmp(kv->value, "0") == 0) *out = false;
    else return b2d_http_fail(err, 400, "bad_type", kv->key, "%s: true or false", kv->key);
    return 0;
}

/* The generation parameters that are a uint32_t count or a double, by
 * name: where each sits in b2ipc_gen_params. */
typedef struct gen_field {
    const char *key;
    size_t off;
    bool is_num; /* double (kv_num), else uint32_t (kv_uint) */
} gen_field;

static const gen_field *gen_field_find(const char *key)
{
#define U32(name) { #name, offsetof(b2ipc_gen_params, name), false }
#define NUM(name) { #name, offsetof(b2ipc_gen_params, name), true }
    static const gen_field fields[] = {
        U32(max_new_tokens), U32(min_new_tokens), U32(num_beams), U32(top_k), U32(num_return_sequences),
        NUM(length_penalty), NUM(repetition_penalty), NUM(temperature), NUM(top_p),
    };
#undef U32
#undef NUM
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strcmp(key, fields[i].key) == 0) return &fields[i];
    return NULL;
}

int b2d_caption_parse(const b2d_kv *kv, size_t n_kv, const void *image, size_t image_len,
                      const b2ipc_limits *lim, b2d_gen *g, b2d_http_error *err)
{
    memset(g, 0, sizeof *g);
    b2ipc_request_init(&g->rq, B2IPC_OP_GENERATE);
    g->n = 1;
    b2ipc_gen_params *p = &g->rq.generate.params;
    const char *prompt = NULL, *question = NULL;
    size_t n_stop = 0;
    for (size_t i = 0; i < n_kv; i++)
        if (strcmp(kv[i].key, "stop") == 0) n_stop++;
    if (n_stop > B2IPC_MAX_STOP)
        return b2d_http_fail(err, 400, "too_large", "stop", "stop: at most %u strings", B2IPC_MAX_STOP);
    if (n_stop && !(g->stop = calloc(n_stop, sizeof *g->stop)))
        return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    for (size_t i = 0; i < n_kv; i++) {
        const b2d_kv *x = &kv[i];
        uint64_t u;
        const char *k = x->key;
        const gen_field *f;
        if (!x->value) return b2d_http_fail(err, 400, "bad_type", k, "%s: a value is required", k);
        if (strcmp(k, "prompt") == 0) prompt = x->value;
        else if (strcmp(k, "question") == 0) question = x->value;
        else if ((f = gen_field_find(k))) {
            if (f->is_num) {
                if (kv_num(x, (double *)((char *)p + f->off), err) < 0) return -1;
            } else {
                if (kv_uint(x, UINT32_MAX, &u, err) < 0) return -1;
                *(uint32_t *)((char *)p + f->off) = (uint32_t)u;
            }
        } else if (strcmp(k, "seed") == 0) {
            if (kv_uint(x, UINT64_MAX, &u, err) < 0) return -1;
            p->has_seed = true;
            p->seed = u;
        } else if (strcmp(k, "do_sample") == 0) {
            if (kv_bool(x, &p->do_sample, err) < 0) return -1;
        } else if (strcmp(k, "stop") == 0) {
            if (!(g->stop[g->n_stop++] = strdup(x->value)))
                return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
        } else {
            return b2d_http_fail(err, 400, "unknown_field", k,
                                 "%.60s: not a parameter of /v1/caption (prompt, question, and the "
                                 "generation parameters of docs/protocol.md 5.2)", k);
        }
    }
    if (prompt && question)
        return b2d_http_fail(err, 400, "out_of_range", "question", "question: give a prompt or a question, not both");
    if (question) {
        char *q = trim_dup(question);
        if (!q) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
        if (!*q) {
            free(q);
            return b2d_http_fail(err, 400, "out_of_range", "question", "question: empty");
        }
        g->prompt = build_prompt(NULL, NULL, 0, 0, q);
        free(q);
    } else if (prompt) {
        g->prompt = strdup(prompt);
    }
    if ((question || prompt) && !g->prompt) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    if (image_len == 0)
        return b2d_http_fail(err, 400, "missing_field", "image", "image: the request body must be the image file");
    size_t max = lim->max_image_bytes ? lim->max_image_bytes : B2IPC_DEFAULT_MAX_IMAGE_BYTES;
    if (image_len > max)
        return b2d_http_fail(err, 413, "too_large", "image", "image: %zu bytes, above the limit of %zu", image_len, max);
    if (!(g->image = malloc(image_len))) return b2d_http_fail(err, 503, "no_memory", NULL, "out of memory");
    memcpy(g->image, image, image_len);
    g->image_len = image_len;
    return finish_gen(g, lim, err, 0);
}

/* ---- output ---- */

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t b2d_trim_feed(b2d_trim *t, const char *piece, size_t len, char *out, size_t cap)
{
    size_t w = 0;
    for (size_t i = 0; i < len && w < cap; i++) {
        char c = piece[i];
        if (!t->started) {
            if (is_ws(c)) continue;
            t->started = 1;
        }
        if (is_ws(c)) {
            if (t->held < sizeof t->hold) {
                t->hold[t->held++] = c;
                continue;
            }
            /* a long run: send what is held */
        }
        if (t->held) {
            memcpy(out + w, t->hold, t->held);
            w += t->held;
            t->held = 0;
        }
        out[w++] = c;
    }
    return w;
}

const char *b2d_openai_finish(b2ipc_finish f)
{
    return f == B2IPC_FINISH_EOS || f == B2IPC_FINISH_STOP ? "stop" : "length";
}

static json_t *trimmed_json(const char *s, size_t n)
{
    while (n && is_ws(*s)) { s++; n--; }
    while (n && is_ws(s[n - 1])) n--;
    json_t *j = json_stringn(s, n);
    return j ? j : json_string("");
}

static json_t *usage_json(const b2ipc_reply *d)
{
    uint64_t completion = 0;
    for (uint32_t i = 0; i < d->done.n_seqs; i++)
        completion += d->done.seqs[i].n_ids ? d->done.seqs[i].n_ids - 1 : 0; /* minus BOS/start */
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)d->done.prompt_tokens,
                     "completion_tokens", (json_int_t)completion,
                     "total_tokens", (json_int_t)(d->done.prompt_tokens + completion));
}

static char *dump(json_t *o)
{
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

char *b2d_chat_response(const char *id, long long created, const char *model, const b2ipc_reply *done)
{
    json_t *choices = json_array();
    for (uint32_t i = 0; choices && i < done->done.n_seqs; i++) {
        const b2ipc_seq *s = &done->done.seqs[i];
        json_array_append_new(choices,
            json_pack("{s:i,s:{s:s,s:o},s:n,s:s}", "index", (int)i, "message", "role", "assistant", "content",
                      trimmed_json(s->text, s->text_len), "logprobs", "finish_reason",
                      b2d_openai_finish(s->finish)));
    }
    return dump(json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:s}", "id", id, "object", "chat.completion", "created",
                          (json_int_t)created, "model", model, "choices", choices, "usage", usage_json(done),
                          "system_fingerprint", "blip2d-" PACKAGE_VERSION));
}

char *b2d_chat_chunk(const char *id, long long created, const char *model, int index, int role,
                     const char *content, size_t len, const char *finish, const b2ipc_reply *usage)
{
    json_t *choices = json_array();
    if (index >= 0) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (content) {
            json_t *c = json_stringn(content, len);
            json_object_set_new(delta, "content", c ? c : json_string(""));
        }
        json_array_append_new(choices, json_pack("{s:i,s:o,s:n,s:o}", "index", index, "delta", delta,
                                                 "logprobs", "finish_reason",
                                                 finish ? json_string(finish) : json_null()));
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:s,s:o}", "id", id, "object", "chat.completion.chunk", "created",
                          (json_int_t)created, "model", model, "system_fingerprint", "blip2d-" PACKAGE_VERSION,
                          "choices", choices);
    if (o && usage && index < 0) json_object_set_new(o, "usage", usage_json(usage));
    return dump(o);
}

char *b2d_caption_response(const b2ipc_reply *d)
{
    json_t *texts = json_array(), *ids = json_array(), *fin = json_array();
    for (uint32_t i = 0; i < d->done.n_seqs; i++) {
        const b2ipc_seq *s = &d->done.seqs[i];
        json_t *t = json_stringn(s->text, s->text_len);
        json_array_append_new(texts, t ? t : json_string(""));
        json_t *a = json_array();
        for (size_t k = 0; k < s->n_ids; k++) json_array_append_new(a, json_integer(s->ids[k]));
        json_array_append_new(ids, a);
        json_array_append_new(fin, json_string(b2ipc_finish_name(s->finish)));
    }
    const b2ipc_timings *t = &d->done.timings;
    json_t *o = json_pack("{s:o,s:o,s:o,s:o,s:I,s:b,s:{s:f,s:f,s:f,s:f,s:f,s:f,s:f}}", "text",
                          d->done.n_seqs ? trimmed_json(d->done.seqs[0].text, d->done.seqs[0].text_len)
                                         : json_string(""),
                          "texts", texts, "ids", ids, "finish", fin, "prompt_tokens",
                          (json_int_t)d->done.prompt_tokens, "cached", (int)d->done.cached, "timings",
                          "queue_ms", t->queue_ms, "preprocess_ms", t->preprocess_ms, "vision_ms", t->vision_ms,
                          "prefill_ms", t->prefill_ms, "decode_ms", t->decode_ms, "total_ms", t->total_ms,
                          "tokens_per_s", t->tokens_per_s);
    if (o && d->done.has_seed) json_object_set_new(o, "seed", json_integer((json_int_t)d->done.seed));
    return dump(o);
}
