/*
 * test_http_api.c - daemon/http_api.c, the HTTP front end's translation
 * layer, without a server: OpenAI chat messages into the prompts blip2ctl
 * builds (caption, ask, chat history), the parameters (temperature 0 =
 * greedy, n as samples or beams, stop, max_tokens names in errors), data:
 * URLs (http(s)/file refused, bad base64, the image limit), /v1/caption
 * query parameters, the streamed-text trimmer, the error status mapping,
 * and the JSON of responses and chunks.  TAP output.
 */
#include "http_api.h"
#include "tap.h"

#include <glib.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const b2ipc_limits LIM = { 1000, 200 };

/* a chat request body with an image (base64 of "PNGDATA") and the given messages tail */
static int parse(const char *json, b2d_gen *g, b2d_http_error *e)
{
    return b2d_chat_parse(json, strlen(json), &LIM, g, e);
}

/* an image part with the URL u (a string literal), and the one below */
#define IMG_PART(u) "{\"type\":\"image_url\",\"image_url\":{\"url\":\"" u "\"}}"
#define IMG IMG_PART("data:image/png;base64,UE5HREFUQQ==")

static void prompts(void)
{
    b2d_gen g;
    b2d_http_error e;
    int rc = parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}]}", &g, &e);
    ok(rc == 0 && !g.prompt && g.image_len == 7 && memcmp(g.image, "PNGDATA", 7) == 0 &&
       strcmp(g.model, "m") == 0 && !g.rq.generate.params.do_sample,
       "an image alone is a caption: no prompt, the decoded data: URL, greedy (%s)", rc ? e.message : "");
    b2d_gen_free(&g);

    rc = parse("{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":["
               IMG ",{\"type\":\"text\",\"text\":\"  what is it? \"}]}]}", &g, &e);
    ok(rc == 0 && g.prompt && strcmp(g.prompt, "Question: what is it? Answer:") == 0,
       "image + text is blip2ctl ask's prompt, the system message ignored (%s)", g.prompt ? g.prompt : e.message);
    b2d_gen_free(&g);

    rc = parse("{\"messages\":[{\"role\":\"user\",\"content\":[" IMG ",{\"type\":\"text\",\"text\":\"q1\"}]},"
               "{\"role\":\"assistant\",\"content\":\" a1 \"},{\"role\":\"user\",\"content\":\"q2\"},"
               "{\"role\":\"assistant\",\"content\":\"a2!\"},{\"role\":\"user\",\"content\":\"q3\"}]}", &g, &e);
    ok(rc == 0 && g.prompt &&
       strcmp(g.prompt, "Question: q1 Answer: a1. Question: q2 Answer: a2! Question: q3 Answer:") == 0,
       "multi-turn: blip2ctl chat's history template (%s)", g.prompt ? g.prompt : e.message);
    b2d_gen_free(&g);

    rc = parse("{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]},{\"role\":\"assistant\",\"content\":\"a cat\"},"
               "{\"role\":\"user\",\"content\":\"what colour?\"}]}", &g, &e);
    ok(rc == 0 && g.prompt && strcmp(g.prompt, "Question: what colour? Answer:") == 0,
       "a caption turn (image only) is left out of the history (%s)", g.prompt ? g.prompt : e.message);
    b2d_gen_free(&g);

    /* the oldest turns are dropped to fit max_prompt_bytes (200 here) */
    GString *b = g_string_new("{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}");
    for (int i = 0; i < 10; i++)
        g_string_append_printf(b, ",{\"role\":\"user\",\"content\":\"question number %d\"},"
                                  "{\"role\":\"assistant\",\"content\":\"answer %d\"}", i, i);
    g_string_append(b, ",{\"role\":\"user\",\"content\":\"last\"}]}");
    rc = parse(b->str, &g, &e);
    ok(rc == 0 && g.prompt && strlen(g.prompt) <= 200 && strstr(g.prompt, "question number 9 Answer: answer 9.") &&
       !strstr(g.prompt, "number 0 ") && g_str_has_suffix(g.prompt, "Question: last Answer:"),
       "the oldest turns are dropped to fit the prompt limit (%zu bytes)", g.prompt ? strlen(g.prompt) : 0);
    b2d_gen_free(&g);
    g_string_free(b, TRUE);
}

/* a request whose one image has the URL u, refused with code */
#define URL_REFUSED(u, code, what) \
    { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG_PART(u) "]}]}", code, \
      "messages[0].content[0].image_url", 400, what }

static void refusals(void)
{
    static const struct {
        const char *body, *code, *param;
        int status;
        const char *what;
    } cases[] = {
        URL_REFUSED("https://example.com/a.jpg", "unsupported_url", "an https:// image URL"),
        URL_REFUSED("http://127.0.0.1/a.jpg", "unsupported_url", "an http:// image URL"),
        URL_REFUSED("file:///etc/passwd", "unsupported_url", "a file: URL"),
        URL_REFUSED("data:image/png;base64,@@@@", "bad_base64", "bad base64"),
        URL_REFUSED("data:text/plain;base64,UE5H", "bad_data_url", "a data: URL that is not an image type"),
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"no image\"}]}", "missing_field", "messages", 400,
          "no image" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "," IMG "]}]}", "out_of_range",
          "messages[0].content[1].image_url", 400, "two images" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]},{\"role\":\"assistant\",\"content\":\"x\"}]}",
          "out_of_range", "messages", 400, "the last message is the assistant's" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"max_tokens\":0}", "out_of_range",
          "max_tokens", 400, "max_tokens 0" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"max_completion_tokens\":\"5\"}", "bad_type",
          "max_completion_tokens", 400, "max_completion_tokens as a string" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"temperature\":-1}", "out_of_range",
          "temperature", 400, "a negative temperature" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"temperature\":0.5,\"top_p\":0}",
          "out_of_range", "top_p", 400, "top_p 0 while sampling (the protocol's range)" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"tools\":[{\"type\":\"function\"}]}",
          "unsupported", "tools", 400, "tools" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"n\":17}", "out_of_range", "n", 400, "n 17" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\","
          "\"h\",\"i\"]}", "too_large", "stop", 400, "9 stop strings" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG ",{\"type\":\"input_audio\"}]}]}", "unsupported",
          "messages[0].content[1]", 400, "an audio part" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}", "bad_json", "", 400, "truncated JSON" },
        { "[1,2]", "bad_json", "", 400, "a JSON array" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"n\":1,\"n\":2}", "bad_json", "", 400,
          "a duplicate key" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":[" IMG ",{\"type\":\"text\",\"text\":\""
          "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
          "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
          "\"}]}]}", "too_large", "messages", 400, "a question above max_prompt_bytes" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        b2d_gen g;
        b2d_http_error e;
        memset(&e, 0, sizeof e);
        int rc = parse(cases[i].body, &g, &e);
        ok(rc < 0 && e.status == cases[i].status && strcmp(e.code, cases[i].code) == 0 &&
           strcmp(e.param, cases[i].param) == 0,
           "%s: %d %s (param '%s'): %s", cases[i].what, e.status, e.code, e.param, e.message);
        b2d_gen_free(&g);
    }
    /* an image above max_image_bytes (1000 here): 413 */
    GString *b = g_string_new("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
                              "{\"url\":\"data:image/png;base64,");
    for (int i = 0; i < 400; i++) g_string_append(b, "AAAA");
    g_string_append(b, "\"}}]}]}");
    b2d_gen g;
    b2d_http_error e;
    int rc = parse(b->str, &g, &e);
    ok(rc < 0 && e.status == 413 && strcmp(e.code, "too_large") == 0, "an image above the limit is 413 too_large");
    b2d_gen_free(&g);
    g_string_free(b, TRUE);
    char *j = b2d_http_error_json(&e);
    json_t *o = j ? json_loads(j, 0, NULL) : NULL;
    ok(o && json_is_string(json_object_get(json_object_get(o, "error"), "message")) &&
       strcmp(json_string_value(json_object_get(json_object_get(o, "error"), "type")), "invalid_request_error") == 0,
       "the error object has OpenAI's shape: %s", j ? j : "(null)");
    json_decref(o);
    free(j);
}

static void params(void)
{
    b2d_gen g;
    b2d_http_error e;
    int rc = parse("{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"temperature\":0,\"top_p\":0.5,"
                   "\"max_tokens\":7,\"seed\":3,\"stop\":\"x\"}", &g, &e);
    const b2ipc_gen_params *p = &g.rq.generate.params;
    ok(rc == 0 && !p->do_sample && p->max_new_tokens == 7 && p->top_p == 1.0 && p->has_seed && p->seed == 3 &&
       g.n_stop == 1 && strcmp(g.stop[0], "x") == 0,
       "temperature 0 is greedy (top_p ignored), max_tokens, seed, a stop string");
    b2d_gen_free(&g);
    rc = parse("{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"temperature\":0.7,\"top_p\":0.9,\"n\":3,"
               "\"max_tokens\":9,\"max_completion_tokens\":5,\"stream\":true,"
               "\"stream_options\":{\"include_usage\":true}}", &g, &e);
    ok(rc == 0 && p->do_sample && p->temperature == 0.7 && p->top_p == 0.9 && p->num_return_sequences == 3 &&
       p->num_beams == 1 && p->max_new_tokens == 5 && g.stream && g.include_usage && g.n == 3,
       "temperature > 0 samples; n is the samples; max_completion_tokens wins; stream, include_usage");
    b2d_gen_free(&g);
    rc = parse("{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"n\":4}", &g, &e);
    ok(rc == 0 && !p->do_sample && p->num_beams == 4 && p->num_return_sequences == 4,
       "greedy with n 4: the 4 best of a 4-beam search");
    b2d_gen_free(&g);
    rc = parse("{\"messages\":[{\"role\":\"user\",\"content\":[" IMG "]}],\"user\":\"u\",\"metadata\":{},"
               "\"frequency_penalty\":0,\"logprobs\":false,\"response_format\":{\"type\":\"text\"}}", &g, &e);
    ok(rc == 0, "fields OpenAI clients send at their neutral values are accepted (%s)", rc ? e.message : "");
    b2d_gen_free(&g);
}

static void caption_params(void)
{
    b2d_kv kv[] = { { "question", "what is it?" }, { "max_new_tokens", "9" }, { "num_beams", "2" },
                    { "stop", "a" }, { "stop", "b" } };
    b2d_gen g;
    b2d_http_error e;
    int rc = b2d_caption_parse(kv, 5, "IMG", 3, &LIM, &g, &e);
    ok(rc == 0 && strcmp(g.prompt, "Question: what is it? Answer:") == 0 &&
       g.rq.generate.params.max_new_tokens == 9 && g.rq.generate.params.num_beams == 2 && g.n_stop == 2 &&
       g.image_len == 3, "/v1/caption: question -> ask's prompt, parameters, repeated stop");
    b2d_gen_free(&g);
    b2d_kv bad[] = { { "temprature", "1" } };
    rc = b2d_caption_parse(bad, 1, "IMG", 3, &LIM, &g, &e);
    ok(rc < 0 && e.status == 400 && strcmp(e.code, "unknown_field") == 0, "/v1/caption: an unknown parameter is 400 unknown_field");
    b2d_gen_free(&g);
    b2d_kv r[] = { { "num_beams", "0" } };
    rc = b2d_caption_parse(r, 1, "IMG", 3, &LIM, &g, &e);
    ok(rc < 0 && e.status == 400 && strcmp(e.code, "out_of_range") == 0 && strcmp(e.param, "num_beams") == 0,
       "/v1/caption: num_beams 0 is the protocol's out_of_range (%s)", e.message);
    b2d_gen_free(&g);
    rc = b2d_caption_parse(NULL, 0, "", 0, &LIM, &g, &e);
    ok(rc < 0 && e.status == 400, "/v1/caption: an empty body is 400");
    b2d_gen_free(&g);
    char big[1001] = {0};
    rc = b2d_caption_parse(NULL, 0, big, sizeof big, &LIM, &g, &e);
    ok(rc < 0 && e.status == 413, "/v1/caption: a body above max_image_bytes is 413");
    b2d_gen_free(&g);
}

static void base64(void)
{
    uint8_t *d;
    size_t n;
    ok(b2d_base64_decode("aGVsbG8=", 8, 100, &d, &n) == 0 && n == 5 && memcmp(d, "hello", 5) == 0, "base64 with padding");
    free(d);
    ok(b2d_base64_decode("aGVsbG8", 7, 100, &d, &n) == 0 && n == 5 && memcmp(d, "hello", 5) == 0, "base64 without padding");
    free(d);
    ok(b2d_base64_decode("aGVs bG8=", 9, 100, &d, &n) < 0, "a space in base64 is refused");
    ok(b2d_base64_decode("a", 1, 100, &d, &n) < 0, "one stray character is refused");
    ok(b2d_base64_decode("aGVsbG8=", 8, 4, &d, &n) < 0, "more than max decoded bytes is refused");
    ok(b2d_base64_decode("aGV=bG8=", 8, 100, &d, &n) < 0, "padding in the middle is refused");
}

static void trim_stream(void)
{
    const char *pieces[] = { " ", " TER", "Prof", " ", " feed", "  ", "" };
    b2d_trim t = {0};
    char out[600];
    GString *s = g_string_new(NULL);
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
        size_t n = b2d_trim_feed(&t, pieces[i], strlen(pieces[i]), out, sizeof out);
        g_string_append_len(s, out, (gssize)n);
    }
    ok(strcmp(s->str, "TERProf  feed") == 0, "the streamed pieces, trimmed, are the trimmed text ('%s')", s->str);
    g_string_free(s, TRUE);
}

static void statuses(void)
{
    static const struct { int code; const char *field; int status; } m[] = {
        { B2IPC_EBUSY, NULL, 429 }, { B2IPC_ESHUTDOWN, NULL, 503 }, { B2IPC_ENOMEM, NULL, 503 },
        { B2IPC_EINTERNAL, NULL, 500 }, { B2IPC_EBAD_IMAGE, "image", 400 }, { B2IPC_ETOO_LARGE, "image", 413 },
        { B2IPC_ETOO_LARGE, "prompt", 400 }, { B2IPC_ERANGE, "num_beams", 400 }, { B2IPC_EUNSUPPORTED, NULL, 400 },
    };
    int good = 1;
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) {
        b2d_http_error e;
        b2d_http_from_code(&e, m[i].code, m[i].field, "x");
        if (e.status != m[i].status || strcmp(e.code, b2ipc_code_name(m[i].code)) != 0) {
            diag("%s -> %d", b2ipc_code_name(m[i].code), e.status);
            good = 0;
        }
    }
    ok(good, "protocol codes map to 429 busy, 503 shutting_down/no_memory, 500 internal, 413 image too large, 400 else");
}

static void responses(void)
{
    uint32_t ids0[] = { 2, 10, 20, 2 }, ids1[] = { 2, 11 };
    b2ipc_seq seqs[2] = { { " a cat ", 7, ids0, 4, B2IPC_FINISH_EOS }, { "a dog", 5, ids1, 2, B2IPC_FINISH_LENGTH } };
    b2ipc_reply d;
    b2ipc_reply_init(&d, B2IPC_REPLY_DONE);
    d.done.seqs = seqs;
    d.done.n_seqs = 2;
    d.done.prompt_tokens = 5;
    char *s = b2d_chat_response("chatcmpl-1", 123, "m", &d);
    json_t *o = s ? json_loads(s, 0, NULL) : NULL;
    json_t *c = json_array_get(json_object_get(o, "choices"), 0), *u = json_object_get(o, "usage");
    ok(o && strcmp(json_string_value(json_object_get(o, "object")), "chat.completion") == 0 &&
       strcmp(json_string_value(json_object_get(json_object_get(c, "message"), "content")), "a cat") == 0 &&
       strcmp(json_string_value(json_object_get(c, "finish_reason")), "stop") == 0 &&
       json_array_size(json_object_get(o, "choices")) == 2 &&
       json_integer_value(json_object_get(u, "completion_tokens")) == 4 &&
       json_integer_value(json_object_get(u, "total_tokens")) == 9,
       "chat.completion: trimmed content, finish eos -> stop, usage without the start tokens");
    json_decref(o);
    free(s);
    s = b2d_chat_chunk("chatcmpl-1", 123, "m", 1, 0, "xy", 2, NULL, NULL);
    o = s ? json_loads(s, 0, NULL) : NULL;
    c = json_array_get(json_object_get(o, "choices"), 0);
    ok(o && strcmp(json_string_value(json_object_get(o, "object")), "chat.completion.chunk") == 0 &&
       json_integer_value(json_object_get(c, "index")) == 1 &&
       strcmp(json_string_value(json_object_get(json_object_get(c, "delta"), "content")), "xy") == 0 &&
       json_is_null(json_object_get(c, "finish_reason")), "chat.completion.chunk with a delta");
    json_decref(o);
    free(s);
    s = b2d_chat_chunk("chatcmpl-1", 123, "m", -1, 0, NULL, 0, NULL, &d);
    o = s ? json_loads(s, 0, NULL) : NULL;
    ok(o && json_array_size(json_object_get(o, "choices")) == 0 &&
       json_integer_value(json_object_get(json_object_get(o, "usage"), "prompt_tokens")) == 5,
       "the usage chunk: no choices, usage");
    json_decref(o);
    free(s);
    s = b2d_caption_response(&d);
    o = s ? json_loads(s, 0, NULL) : NULL;
    ok(o && strcmp(json_string_value(json_object_get(o, "text")), "a cat") == 0 &&
       json_array_size(json_array_get(json_object_get(o, "ids"), 0)) == 4 &&
       strcmp(json_string_value(json_array_get(json_object_get(o, "finish"), 1)), "length") == 0,
       "/v1/caption's answer: text trimmed, ids, finish as blip2ctl --json");
    json_decref(o);
    free(s);
}

int main(void)
{
    prompts();
    refusals();
    params();
    caption_params();
    base64();
    trim_stream();
    statuses();
    responses();
    return tap_done();
}
