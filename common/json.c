/*
 * json.c - a generation result as a JSON object (b2json.h), shared by
 * blip2ctl's collections (ctl/ctl_batch.c) and blip2-queue's results.
 */
#include "b2json.h"

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

json_t *b2cli_json_trimmed(const char *s, size_t n)
{
    while (n && is_space(*s)) { s++; n--; }
    while (n && is_space(s[n - 1])) n--;
    json_t *j = json_stringn(s, n);
    return j ? j : json_string("");
}

double b2cli_ms3(double ms)
{
    return (double)(int64_t)(ms * 1000.0 + 0.5) / 1000.0;
}

void b2cli_json_generation(json_t *f, const b2cli_seq *seqs, size_t n, double total_ms, bool cached)
{
    const b2cli_seq *s0 = n ? &seqs[0] : NULL;
    json_object_set_new(f, "text", s0 ? b2cli_json_trimmed(s0->text, s0->text_len) : json_string(""));
    json_t *ids = json_array();
    for (size_t k = 0; s0 && k < s0->n_ids; k++) json_array_append_new(ids, json_integer(s0->ids[k]));
    json_object_set_new(f, "ids", ids);
    json_object_set_new(f, "finish", json_string(s0 && s0->finish ? s0->finish : "?"));
    json_object_set_new(f, "ms", json_real(b2cli_ms3(total_ms)));
    json_object_set_new(f, "cached", json_boolean(cached));
    if (n > 1) {
        json_t *texts = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(texts, b2cli_json_trimmed(seqs[i].text, seqs[i].text_len));
        json_object_set_new(f, "texts", texts);
    }
}
