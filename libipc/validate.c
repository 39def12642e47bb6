/*
 * validate.c - the value rules of docs/protocol.md, checked on C structs.
 *
 * Both directions go through here: the decoder calls it after it has
 * filled a struct from the wire (types and sizes were checked while
 * reading), the encoder before it writes anything.  First every field of the
 * op's schema in table order (ranges, sizes, UTF-8, required strings), then
 * the rules that involve several fields (image xor image_fd, min <= max new
 * tokens, how many sequences a search can return, the done arrays).
 */
#include "ipc-private.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define AT(root, off, type) ((type *)((const char *)(root) + (off)))

/* A number for a message: integers in full, others as %g. */
void b2ipc__fmt_num(char *buf, size_t cap, double v)
{
    if (v == floor(v) && fabs(v) < 1e17)
        snprintf(buf, cap, "%.0f", v);
    else
        snprintf(buf, cap, "%g", v);
}

/* "[1, 16]" or "(0, 100]"; hi < 0 means no upper bound. */
void b2ipc__fmt_range(char *buf, size_t cap, const b2ipc__field *f)
{
    char lo[32], hi[32];
    b2ipc__fmt_num(lo, sizeof lo, f->lo);
    b2ipc__fmt_num(hi, sizeof hi, f->hi);
    snprintf(buf, cap, "%s%s, %s", (f->flags & B2IPC__F_LO_OPEN) ? "(" : "[",
             lo, f->hi < 0 ? "inf)" : strcat(hi, "]"));
}

static bool b2ipc__in_range(const b2ipc__field *f, double v)
{
    if (f->flags & B2IPC__F_LO_OPEN ? v <= f->lo : v < f->lo) return false;
    if (f->hi >= 0 && v > f->hi) return false;
    return true;
}

static int b2ipc__check_text(const char *name, const char *s, size_t n,
                             bool allow_nul, b2ipc_error *err)
{
    size_t at = 0;
    int r = b2ipc__utf8_check(s, n, allow_nul, &at);
    if (r == -2)
        return b2ipc__err(err, B2IPC_EUTF8, name,
                          "%s: contains U+0000 at byte %zu", name, at);
    if (r < 0)
        return b2ipc__err(err, B2IPC_EUTF8, name,
                          "%s: invalid UTF-8 at byte %zu", name, at);
    return 0;
}

/* Size check of one string / bin against [lo, max]. */
static int b2ipc__check_size(const char *name, size_t n, double lo,
                             double max, b2ipc_error *err)
{
    if ((double)n < lo)
        return b2ipc__err(err, B2IPC_ERANGE, name,
                          "%s: must not be empty", name);
    if (max >= 0 && (double)n > max)
        return b2ipc__err(err, B2IPC_ETOO_LARGE, name,
                          "%s: %zu bytes, at most %.0f", name, n, max);
    return 0;
}

static int b2ipc__check_done(const b2ipc_reply *rp, b2ipc_error *err)
{
    char name[32];
    if (rp->done.n_seqs < 1 || rp->done.n_seqs > B2IPC_MAX_SEQS)
        return b2ipc__err(err, B2IPC_ERANGE, "texts",
                          "texts: %u sequences, expected 1 to %u",
                          rp->done.n_seqs, B2IPC_MAX_SEQS);
    if (!rp->done.seqs)
        return b2ipc__err(err, B2IPC_EINVAL, "texts", "done.seqs is NULL");
    for (uint32_t i = 0; i < rp->done.n_seqs; i++) {
        const b2ipc_seq *s = &rp->done.seqs[i];
        snprintf(name, sizeof name, "texts[%u]", i);
        if (!s->text && s->text_len)
            return b2ipc__err(err, B2IPC_EINVAL, name, "%s: NULL text", name);
        int rc = b2ipc__check_text(name, s->text, s->text_len, true, err);
        if (rc < 0) return rc;
        snprintf(name, sizeof name, "ids[%u]", i);
        if (s->n_ids > B2IPC_MAX_IDS_PER_SEQ)
            return b2ipc__err(err, B2IPC_ETOO_LARGE, name,
                              "%s: %zu ids, at most %u", name, s->n_ids,
                              B2IPC_MAX_IDS_PER_SEQ);
        if (!s->ids && s->n_ids)
            return b2ipc__err(err, B2IPC_EINVAL, name, "%s: NULL ids", name);
        snprintf(name, sizeof name, "finish[%u]", i);
        if (!b2ipc_finish_name(s->finish))
            return b2ipc__err(err, B2IPC_ERANGE, name,
                              "%s: %d is no finish reason", name, (int)s->finish);
    }
    return 0;
}

/* features reply: count, names (distinct), dtypes, shapes against data. */
static int b2ipc__check_tensors(const b2ipc__field *f, const b2ipc_tensor *ts,
                                uint32_t n, b2ipc_error *err)
{
    char name[96];
    if ((double)n > f->hi)
        return b2ipc__err(err, B2IPC_ETOO_LARGE, "tensors",
                          "tensors: %u tensors, at most %.0f", n, f->hi);
    if (n && !ts) return b2ipc__err(err, B2IPC_EINVAL, "tensors", "tensors: NULL array");
    for (uint32_t i = 0; i < n; i++) {
        const b2ipc_tensor *t = &ts[i];
        if (!t->name) return b2ipc__err(err, B2IPC_EINVAL, "tensors", "tensors[%u]: NULL name", i);
        size_t nl = strlen(t->name);
        int rc;
        snprintf(name, sizeof name, "tensors.%.64s", t->name);
        if ((rc = b2ipc__check_size(name, nl, f->elo, f->ehi, err)) < 0 ||
            (rc = b2ipc__check_text(name, t->name, nl, false, err)) < 0)
            return rc;
        for (uint32_t k = 0; k < i; k++)
            if (!strcmp(ts[k].name, t->name))
                return b2ipc__err(err, B2IPC_ERANGE, name, "%s: the name appears twice", name);
        if (!t->dtype || (strcmp(t->dtype, "float32") && strcmp(t->dtype, "int32")))
            return b2ipc__err(err, B2IPC_ERANGE, name,
                              "%s: dtype must be \"float32\" or \"int32\"", name);
        if (t->ndim < 1 || t->ndim > B2IPC_MAX_TENSOR_DIMS)
            return b2ipc__err(err, B2IPC_ERANGE, name, "%s: %u dimensions, expected 1 to %u",
                              name, t->ndim, B2IPC_MAX_TENSOR_DIMS);
        uint64_t numel = 1;
        for (uint32_t k = 0; k < t->ndim; k++) {
            if (t->shape[k] && numel > (UINT64_MAX / 4) / t->shape[k])
                return b2ipc__err(err, B2IPC_ERANGE, name, "%s: the shape is too large", name);
            numel *= t->shape[k];
        }
        if ((uint64_t)t->data_len != numel * 4)
            return b2ipc__err(err, B2IPC_ERANGE, name,
                              "%s: %zu data bytes, the shape needs %llu", name,
                              t->data_len, (unsigned long long)(numel * 4));
        if (t->data_len && !t->data)
            return b2ipc__err(err, B2IPC_EINVAL, name, "%s: NULL data", name);
    }
    return 0;
}

/* features request: image sources, something to compute, known outputs
 * that fit the inputs. */
static int b2ipc__check_features(const b2ipc_features *q, b2ipc_error *err)
{
    char name[32];
    if (q->image && q->image_fd)
        return b2ipc__err(err, B2IPC_ERANGE, "image_fd",
                          "image_fd: true and image are exclusive");
    bool img = q->image || q->image_fd;
    if (!img && !q->text)
        return b2ipc__err(err, B2IPC_EMISSING, "image",
                          "image: required (or image_fd: true, or text)");
    for (uint32_t i = 0; i < q->n_outputs; i++) {
        const char *o = q->outputs[i];
        int k = b2ipc_feature_output_index(o, strlen(o));
        snprintf(name, sizeof name, "outputs[%u]", i);
        if (k < 0) {
            char qs[80];
            b2ipc__quote(qs, sizeof qs, o, strlen(o));
            return b2ipc__err(err, B2IPC_ERANGE, name,
                              "%s: \"%s\" is no output (image_last_hidden_state, "
                              "image_pooler_output, qformer_last_hidden_state, "
                              "qformer_pooler_output, language_model_inputs, logits, "
                              "logits_last)", name, qs);
        }
        for (uint32_t j = 0; j < i; j++)
            if (!strcmp(q->outputs[j], o))
                return b2ipc__err(err, B2IPC_ERANGE, name, "%s: \"%s\" is named twice", name, o);
        if (b2ipc_feature_output_is_image(k) && !img)
            return b2ipc__err(err, B2IPC_ERANGE, name, "%s: %s needs an image", name, o);
        if (!b2ipc_feature_output_is_image(k) && !q->text)
            return b2ipc__err(err, B2IPC_ERANGE, name, "%s: %s needs a text", name, o);
    }
    return 0;
}

static int b2ipc__check_fields(const b2ipc__schema *s, const void *root,
                               const b2ipc_limits *lim, b2ipc_error *err)
{
    char name[64], range[64];
    for (size_t i = 0; i < s->n; i++) {
        const b2ipc__field *f = &s->fields[i];
        int rc = 0;
        snprintf(name, sizeof name, "%s%s", s->prefix, f->name);
        switch (f->kind) {
        case B2IPC__K_U32:
        case B2IPC__K_U64:
        case B2IPC__K_F64: {
            /* aux, if any, is the presence flag (seed) */
            if (f->aux != B2IPC__NOAUX && !*AT(root, f->aux, const bool)) break;
            double v;
            if (f->kind == B2IPC__K_U32) v = *AT(root, f->off, const uint32_t);
            else if (f->kind == B2IPC__K_U64) v = (double)*AT(root, f->off, const uint64_t);
            else v = *AT(root, f->off, const double);
            if (!isfinite(v))
                return b2ipc__err(err, B2IPC_ERANGE, name,
                                  "%s: not a finite number", name);
            if (!b2ipc__in_range(f, v)) {
                char val[32];
                b2ipc__fmt_num(val, sizeof val, v);
                b2ipc__fmt_range(range, sizeof range, f);
                return b2ipc__err(err, B2IPC_ERANGE, name,
                                  "%s: %s is out of range %s", name, val, range);
            }
            break;
        }
        case B2IPC__K_BOOL:
            break;
        case B2IPC__K_STR:
        case B2IPC__K_BIN: {
            /* a NUL-terminated string (text rules) or bytes (aux: their
             * length); NULL is absent */
            const bool is_str = f->kind == B2IPC__K_STR;
            const char *str = is_str ? *AT(root, f->off, const char *const) : NULL;
            const uint8_t *bin = is_str ? NULL : *AT(root, f->off, const uint8_t *const);
            if (!str && !bin) {
                if (f->flags & B2IPC__F_REQ)
                    return b2ipc__err(err, B2IPC_EMISSING, name,
                                      "%s: required", name);
                break;
            }
            size_t n = is_str ? strlen(str) : *AT(root, f->aux, const size_t);
            if ((rc = b2ipc__check_size(name, n, f->lo, b2ipc__size_limit(f, lim), err)) < 0 ||
                (is_str && (rc = b2ipc__check_text(name, str, n, true, err)) < 0))
                return rc;
            break;
        }
        case B2IPC__K_TEXT: {
            const char *str = *AT(root, f->off, const char *const);
            size_t n = *AT(root, f->aux, const size_t);
            if (!str && n)
                return b2ipc__err(err, B2IPC_EINVAL, name, "%s: NULL text", name);
            if ((rc = b2ipc__check_size(name, n, f->lo, b2ipc__size_limit(f, lim), err)) < 0 ||
                (rc = b2ipc__check_text(name, str, n, !(f->flags & B2IPC__F_NONUL), err)) < 0)
                return rc;
            break;
        }
        case B2IPC__K_STRARR: {
            const char *const *arr = *AT(root, f->off, const char *const *const);
            uint32_t n = *AT(root, f->aux, const uint32_t);
            if ((double)n > f->hi)
                return b2ipc__err(err, B2IPC_ETOO_LARGE, name,
                                  "%s: %u strings, at most %.0f", name, n, f->hi);
            if (n && !arr)
                return b2ipc__err(err, B2IPC_EINVAL, name, "%s: NULL array", name);
            for (uint32_t k = 0; k < n; k++) {
                char ename[80];
                snprintf(ename, sizeof ename, "%s[%u]", name, k);
                if (!arr[k])
                    return b2ipc__err(err, B2IPC_EINVAL, ename, "%s: NULL", ename);
                size_t len = strlen(arr[k]);
                if ((rc = b2ipc__check_size(ename, len, f->elo, f->ehi, err)) < 0 ||
                    (rc = b2ipc__check_text(ename, arr[k], len, true, err)) < 0)
                    return rc;
            }
            break;
        }
        case B2IPC__K_MAP:
            if ((rc = b2ipc__check_fields(f->sub, root, lim, err)) < 0) return rc;
            break;
        case B2IPC__K_CODE: {
            int code = *AT(root, f->off, const int);
            const char *cn = *AT(root, f->aux, const char *const);
            if (b2ipc_code_name(code)) break;
            if (code == B2IPC_EUNKNOWN_CODE && cn) {
                size_t n = strlen(cn);
                if ((rc = b2ipc__check_size(name, n, f->lo, f->hi, err)) < 0 ||
                    (rc = b2ipc__check_text(name, cn, n, true, err)) < 0)
                    return rc;
                break;
            }
            return b2ipc__err(err, B2IPC_ERANGE, name,
                              "%s: %d has no wire name", name, code);
        }
        case B2IPC__K_SEQ_TEXTS: /* the three arrays come from done.seqs */
            if ((rc = b2ipc__check_done(root, err)) < 0) return rc;
            break;
        case B2IPC__K_SEQ_IDS:
        case B2IPC__K_SEQ_FINISH:
            break;
        case B2IPC__K_TENSORS:
            if ((rc = b2ipc__check_tensors(f, *AT(root, f->off, const b2ipc_tensor *const),
                                           *AT(root, f->aux, const uint32_t), err)) < 0)
                return rc;
            break;
        }
    }
    return 0;
}

int b2ipc_request_validate(const b2ipc_request *rq, const b2ipc_limits *lim,
                           b2ipc_error *err)
{
    if (!rq) return b2ipc__err(err, B2IPC_EINVAL, NULL, "request is NULL");
    const b2ipc__schema *s = b2ipc__request_schema(rq->op);
    if (!s)
        return b2ipc__err(err, B2IPC_EINVAL, "op", "op %d is no operation",
                          (int)rq->op);
    int rc = b2ipc__check_fields(s, rq, lim, err);
    if (rc == 0 && rq->op == B2IPC_OP_FEATURES) return b2ipc__check_features(&rq->features, err);
    if (rc < 0 || rq->op != B2IPC_OP_GENERATE) return rc;

    const b2ipc_generate *g = &rq->generate;
    const b2ipc_gen_params *p = &g->params;
    if (!g->image && !g->image_fd)
        return b2ipc__err(err, B2IPC_EMISSING, "image",
                          "image: required (or image_fd: true)");
    if (g->image && g->image_fd)
        return b2ipc__err(err, B2IPC_ERANGE, "image_fd",
                          "image_fd: true and image are exclusive");
    if (p->min_new_tokens > p->max_new_tokens)
        return b2ipc__err(err, B2IPC_ERANGE, "min_new_tokens",
                          "min_new_tokens: %u is above max_new_tokens %u",
                          p->min_new_tokens, p->max_new_tokens);
    if (p->num_beams == 1 && !p->do_sample && p->num_return_sequences != 1)
        return b2ipc__err(err, B2IPC_ERANGE, "num_return_sequences",
                          "num_return_sequences: %u, but greedy search returns "
                          "one sequence (use do_sample or num_beams)",
                          p->num_return_sequences);
    if (p->num_beams > 1 && p->num_return_sequences > p->num_beams)
        return b2ipc__err(err, B2IPC_ERANGE, "num_return_sequences",
                          "num_return_sequences: %u is above num_beams %u",
                          p->num_return_sequences, p->num_beams);
    return 0;
}

int b2ipc_reply_validate(const b2ipc_reply *rp, b2ipc_error *err)
{
    if (!rp) return b2ipc__err(err, B2IPC_EINVAL, NULL, "reply is NULL");
    const b2ipc__schema *s = b2ipc__reply_schema(rp->type);
    if (!s)
        return b2ipc__err(err, B2IPC_EINVAL, "type", "type %d is no reply type",
                          (int)rp->type);
    if (!rp->has_id && rp->type != B2IPC_REPLY_ERROR)
        return b2ipc__err(err, B2IPC_EMISSING, "id",
                          "id: required in a %s reply",
                          b2ipc_reply_type_name(rp->type));
    return b2ipc__check_fields(s, rp, NULL, err);
}
