/*
 * result.c - the public value types: parameters, results, status.
 *
 *   blip2c_params --b2c__params_to_ipc--> b2ipc_gen_params (encoded by libipc)
 *   decoded done reply --b2c__result_view--> blip2c_result pointing into the
 *       reply (what a done callback borrows) --blip2c_result_dup--> one
 *       malloc block the caller owns (what blocking calls return)
 *   decoded status reply --b2c__status_copy--> blip2c_status, one block
 *   decoded features reply --b2c__features_copy--> blip2c_features, one block
 *
 * One allocation per object, so blip2c_result_free / blip2c_status_free are
 * a single free() and a result never half-exists.
 */
#include "client-private.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

void blip2c_params_init(blip2c_params *p)
{
    if (!p) return;
    b2ipc_gen_params q;
    b2ipc_gen_params_default(&q);
    memset(p, 0, sizeof *p);
    p->max_new_tokens = q.max_new_tokens;
    p->min_new_tokens = q.min_new_tokens;
    p->num_beams = q.num_beams;
    p->length_penalty = q.length_penalty;
    p->repetition_penalty = q.repetition_penalty;
    p->do_sample = q.do_sample;
    p->temperature = q.temperature;
    p->top_k = q.top_k;
    p->top_p = q.top_p;
    p->has_seed = q.has_seed;
    p->seed = q.seed;
    p->num_return_sequences = q.num_return_sequences;
}

void b2c__params_to_ipc(const blip2c_params *p, b2ipc_gen_params *q)
{
    b2ipc_gen_params_default(q);
    if (!p) return;
    q->max_new_tokens = p->max_new_tokens;
    q->min_new_tokens = p->min_new_tokens;
    q->num_beams = p->num_beams;
    q->length_penalty = p->length_penalty;
    q->repetition_penalty = p->repetition_penalty;
    q->do_sample = p->do_sample;
    q->temperature = p->temperature;
    q->top_k = p->top_k;
    q->top_p = p->top_p;
    q->has_seed = p->has_seed;
    q->seed = p->seed;
    q->num_return_sequences = p->num_return_sequences;
    q->stop = p->stop;
    q->n_stop = p->n_stop;
}

int blip2c_params_validate(const blip2c_params *p, blip2c_error *err)
{
    if (!p) return b2c__err(err, BLIP2C_EINVAL, "no parameters given");
    static const uint8_t dummy = 0;
    b2ipc_request rq;
    b2ipc_request_init(&rq, B2IPC_OP_GENERATE);
    rq.generate.image = &dummy;   /* the image is not what we check here */
    rq.generate.image_len = 1;
    b2c__params_to_ipc(p, &rq.generate.params);
    b2ipc_error ie;
    int rc = b2ipc_request_validate(&rq, NULL, &ie);
    return rc < 0 ? b2c__from_ipc(err, rc, &ie) : 0;
}

void blip2c_request_init(blip2c_request *rq)
{
    if (!rq) return;
    memset(rq, 0, sizeof *rq);
    rq->image_fd = -1;
}

const char *blip2c_finish_name(blip2c_finish f)
{
    return b2ipc_finish_name((b2ipc_finish)f);
}

void b2c__result_view(const b2ipc_reply *rp, blip2c_result *r,
                      blip2c_seq seqs[B2IPC_MAX_SEQS])
{
    memset(r, 0, sizeof *r);
    uint32_t n = rp->done.n_seqs;
    if (n > B2IPC_MAX_SEQS) n = B2IPC_MAX_SEQS;  /* the decoder already refuses more */
    for (uint32_t i = 0; i < n; i++) {
        const b2ipc_seq *s = &rp->done.seqs[i];
        seqs[i].text = s->text ? s->text : "";
        seqs[i].text_len = s->text ? s->text_len : 0;
        seqs[i].ids = s->ids;
        seqs[i].n_ids = s->ids ? s->n_ids : 0;
        seqs[i].finish = (blip2c_finish)s->finish;
    }
    r->id = rp->id;
    r->seqs = seqs;
    r->n_seqs = n;
    r->text = n ? seqs[0].text + strspn(seqs[0].text, " \t\r\n") : "";
    r->has_seed = rp->done.has_seed;
    r->seed = rp->done.seed;
    r->prompt_tokens = rp->done.prompt_tokens;
    r->cached = rp->done.cached;
    const b2ipc_timings *t = &rp->done.timings;
    r->timings = (blip2c_timings){
        .queue_ms = t->queue_ms, .preprocess_ms = t->preprocess_ms,
        .vision_ms = t->vision_ms, .prefill_ms = t->prefill_ms,
        .decode_ms = t->decode_ms, .total_ms = t->total_ms,
        .tokens_per_s = t->tokens_per_s,
    };
}

static size_t b2c__align(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

blip2c_result *blip2c_result_dup(const blip2c_result *r)
{
    if (!r) return NULL;
    /* layout: result | seqs[n] | ids of each seq | texts */
    size_t size = b2c__align(sizeof(blip2c_result), alignof(blip2c_seq));
    size_t off_seqs = size;
    size += r->n_seqs * sizeof(blip2c_seq);
    size = b2c__align(size, alignof(uint32_t));
    size_t off_ids = size;
    for (size_t i = 0; i < r->n_seqs; i++) size += r->seqs[i].n_ids * sizeof(uint32_t);
    size_t off_text = size;
    for (size_t i = 0; i < r->n_seqs; i++) size += r->seqs[i].text_len + 1;

    char *block = malloc(size);
    if (!block) return NULL;
    blip2c_result *d = (blip2c_result *)block;
    *d = *r;
    blip2c_seq *seqs = (blip2c_seq *)(block + off_seqs);
    uint32_t *ids = (uint32_t *)(block + off_ids);
    char *text = block + off_text;
    for (size_t i = 0; i < r->n_seqs; i++) {
        const blip2c_seq *s = &r->seqs[i];
        seqs[i] = *s;
        if (s->n_ids) memcpy(ids, s->ids, s->n_ids * sizeof(uint32_t));
        seqs[i].ids = s->n_ids ? ids : NULL;
        ids += s->n_ids;
        if (s->text_len) memcpy(text, s->text, s->text_len);
        text[s->text_len] = '\0';
        seqs[i].text = text;
        text += s->text_len + 1;
    }
    d->seqs = r->n_seqs ? seqs : NULL;
    d->text = r->n_seqs ? seqs[0].text + strspn(seqs[0].text, " \t\r\n") : "";
    return d;
}

void blip2c_result_free(blip2c_result *r)
{
    free(r);
}

/* ---- status ---------------------------------------------------------------- */

static size_t b2c__slen(const char *s)
{
    return s ? strlen(s) + 1 : 1;
}

static const char *b2c__put(char **cur, const char *s)
{
    char *d = *cur;
    size_t n = s ? strlen(s) : 0;
    if (n) memcpy(d, s, n);
    d[n] = '\0';
    *cur += n + 1;
    return d;
}

blip2c_status *b2c__status_copy(const b2ipc_status *s)
{
    size_t size = sizeof(blip2c_status) + b2c__slen(s->version) +
                  b2c__slen(s->model.path) + b2c__slen(s->model.name) +
                  b2c__slen(s->model.family) + b2c__slen(s->model.dtype) +
                  b2c__slen(s->model.precision) + b2c__slen(s->model.backend) + b2c__slen(s->model.kernels) +
                  b2c__slen(s->model.weights);
    char *block = malloc(size);
    if (!block) return NULL;
    blip2c_status *d = (blip2c_status *)block;
    char *cur = block + sizeof *d;
    memset(d, 0, sizeof *d);
    d->version = b2c__put(&cur, s->version);
    d->model_path = b2c__put(&cur, s->model.path);
    d->model_name = b2c__put(&cur, s->model.name);
    d->model_family = b2c__put(&cur, s->model.family);
    d->model_dtype = b2c__put(&cur, s->model.dtype);
    d->model_precision = b2c__put(&cur, s->model.precision);
    d->model_backend = b2c__put(&cur, s->model.backend);
    d->model_kernels = b2c__put(&cur, s->model.kernels);
    d->model_weights = b2c__put(&cur, s->model.weights);
    d->protocol = s->protocol;
    d->uptime_ms = s->uptime_ms;
    d->image_size = s->config.image_size;
    d->vision_layers = s->config.vision_layers;
    d->vision_hidden = s->config.vision_hidden;
    d->qformer_layers = s->config.qformer_layers;
    d->num_query_tokens = s->config.num_query_tokens;
    d->text_layers = s->config.text_layers;
    d->text_hidden = s->config.text_hidden;
    d->vocab_size = s->config.vocab_size;
    d->max_positions = s->config.max_positions;
    d->queue_depth = s->queue_depth;
    d->active = s->active;
    d->max_queue = s->max_queue;
    d->max_batch = s->max_batch;
    d->connections = s->connections;
    d->threads = s->threads;
    d->requests_total = s->requests_total;
    d->cache_hits = s->cache.hits;
    d->cache_misses = s->cache.misses;
    d->cache_entries = s->cache.entries;
    d->cache_bytes = s->cache.bytes;
    d->cache_capacity_bytes = s->cache.capacity_bytes;
    d->memory_max = s->memory.max;
    d->memory_used = s->memory.used;
    d->memory_jobs = s->memory.jobs;
    d->memory_decode = s->memory.decode;
    d->memory_input = s->memory.input;
    d->memory_output = s->memory.output;
    d->memory_http = s->memory.http;
    return d;
}

void blip2c_status_free(blip2c_status *st)
{
    free(st);
}

/* ---- features values ---- */

void blip2c_features_request_init(blip2c_features_request *rq)
{
    memset(rq, 0, sizeof *rq);
    rq->image_fd = -1;
}

const blip2c_tensor *blip2c_features_find(const blip2c_features *f, const char *name)
{
    for (size_t i = 0; f && name && i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

void blip2c_features_free(blip2c_features *f)
{
    free(f);
}

#define B2C__ALIGN(x) (((x) + 15) & ~(size_t)15)

blip2c_features *b2c__features_copy(const b2ipc_reply *rp, bool from_wire)
{
    const uint32_t n = rp->features.n_tensors;
    size_t sz = B2C__ALIGN(sizeof(blip2c_features)) + B2C__ALIGN(n * sizeof(blip2c_tensor));
    for (uint32_t i = 0; i < n; i++) {
        const b2ipc_tensor *t = &rp->features.tensors[i];
        sz += B2C__ALIGN(t->data_len) + B2C__ALIGN(strlen(t->name) + 1) + B2C__ALIGN(strlen(t->dtype) + 1);
    }
    char *mem = calloc(1, sz);
    if (!mem) return NULL;
    blip2c_features *f = (blip2c_features *)mem;
    blip2c_tensor *ts = (blip2c_tensor *)(mem + B2C__ALIGN(sizeof *f));
    char *p = (char *)ts + B2C__ALIGN(n * sizeof *ts);
    for (uint32_t i = 0; i < n; i++) {
        const b2ipc_tensor *t = &rp->features.tensors[i];
        blip2c_tensor *d = &ts[i];
        void *data = p;
        if (t->data_len) memcpy(data, t->data, t->data_len);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (size_t k = 0; from_wire && k < t->data_len / 4; k++)
            ((uint32_t *)data)[k] = __builtin_bswap32(((uint32_t *)data)[k]);
#endif
        p += B2C__ALIGN(t->data_len);
        d->name = strcpy(p, t->name);
        p += B2C__ALIGN(strlen(t->name) + 1);
        d->dtype = strcpy(p, t->dtype);
        p += B2C__ALIGN(strlen(t->dtype) + 1);
        d->ndim = (int)t->ndim;
        d->numel = t->data_len / 4;
        for (uint32_t k = 0; k < t->ndim && k < 8; k++) d->shape[k] = t->shape[k];
        if (!strcmp(t->dtype, "int32")) d->i32 = data;
        else d->f32 = data;
    }
    f->id = rp->id;
    f->tensors = ts;
    f->n_tensors = n;
    f->cached = rp->features.cached;
    f->timings.queue_ms = rp->features.timings.queue_ms;
    f->timings.preprocess_ms = rp->features.timings.preprocess_ms;
    f->timings.vision_ms = rp->features.timings.vision_ms;
    f->timings.text_ms = rp->features.timings.text_ms;
    f->timings.total_ms = rp->features.timings.total_ms;
    return f;
}

blip2c_features *blip2c_features_dup(const blip2c_features *f)
{
    if (!f) return NULL;
    b2ipc_tensor ts[16];
    b2ipc_reply rp;
    if (f->n_tensors > sizeof ts / sizeof ts[0]) return NULL;
    memset(&rp, 0, sizeof rp);
    memset(ts, 0, sizeof ts);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const blip2c_tensor *t = &f->tensors[i];
        ts[i].name = t->name;
        ts[i].dtype = t->dtype;
        ts[i].ndim = (uint32_t)t->ndim;
        for (int k = 0; k < t->ndim && k < 8; k++) ts[i].shape[k] = t->shape[k];
        ts[i].data = t->f32 ? (const void *)t->f32 : (const void *)t->i32;
        ts[i].data_len = t->numel * 4;
    }
    rp.id = f->id;
    rp.features.tensors = ts;
    rp.features.n_tensors = (uint32_t)f->n_tensors;
    rp.features.cached = f->cached;
    rp.features.timings.queue_ms = f->timings.queue_ms;
    rp.features.timings.preprocess_ms = f->timings.preprocess_ms;
    rp.features.timings.vision_ms = f->timings.vision_ms;
    rp.features.timings.text_ms = f->timings.text_ms;
    rp.features.timings.total_ms = f->timings.total_ms;
    return b2c__features_copy(&rp, false);
}
