/*
 * features.c - what transformers 4.37.2's Blip2Model exposes as features.
 *
 *   image:  pixel_values (n,3,H,W)
 *     -> vision tower -> last_hidden_state (n,T,Dv), pooler (n,Dv)
 *        (post_layernorm applied again to token 0: get_image_features)
 *     -> Q-Former -> last_hidden_state (n,Q,Dq), pooler = row 0 (n,Dq)
 *        (get_qformer_features: no dense layer, no activation)
 *     -> language_projection -> query embeddings (n,Q,Dt)
 *   Only the stages an output needs are run: vision outputs alone stop
 *   after the vision tower.
 *
 *   blip2_encode_image is the query embeddings of the image path, its
 *   stages as extra outputs.
 *
 *   text:   ids (L) with BOS -> OPT decoder on embed(ids) alone, positions
 *     0..L-1 (cumsum(mask)*mask-1 of an all-ones mask, + offset 2), no
 *     image and no query tokens -> logits (L,V) (get_text_features).
 */
#include "blip2.h"
#include "model.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

int blip2_image_features(const blip2_model *m, const float *px, int n,
                         const blip2_image_features_out *out, blip2_error *err)
{
    if (!m || !px || n <= 0 || !out)
        return b2__err(err, BLIP2_EINVAL, "image_features: bad arguments");
    const b2_config *c = &m->cfg;
    const size_t T = (size_t)blip2_vision_tokens(m), Dv = (size_t)c->v_hidden,
                 Q = (size_t)c->num_query, Dq = (size_t)c->q_hidden;
    const int need_q = out->qformer_last_hidden_state || out->qformer_pooler_output ||
                       out->query_embeds;
    const int need_v = need_q || out->vision_last_hidden_state || out->vision_pooler_output;
    if (!need_v) return 0;
    float *vis = out->vision_last_hidden_state ? out->vision_last_hidden_state
                                               : malloc(sizeof(float) * n * T * Dv);
    float *qf = NULL;
    int rc;
    if (!vis) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto done; }
    if ((rc = b2__vision_forward(m, px, n, vis, out->vision_pooler_output, err)) < 0) goto done;
    if (!need_q) goto done;
    qf = out->qformer_last_hidden_state ? out->qformer_last_hidden_state
                                        : malloc(sizeof(float) * n * Q * Dq);
    if (!qf) { rc = b2__err(err, BLIP2_ENOMEM, "out of memory"); goto done; }
    if ((rc = b2__qformer_forward(m, vis, n, qf, err)) < 0) goto done;
    if (out->qformer_pooler_output)
        for (int b = 0; b < n; b++)
            memcpy(out->qformer_pooler_output + (size_t)b * Dq, qf + (size_t)b * Q * Dq,
                   sizeof(float) * Dq);
    if (out->query_embeds) b2__linear(out->query_embeds, qf, n * (int)Q, &m->proj);
done:
    if (vis != out->vision_last_hidden_state) free(vis);
    if (qf != out->qformer_last_hidden_state) free(qf);
    return rc;
}

/* The query embeddings, with the stages as optional outputs. */
int blip2_encode_image(const blip2_model *m, const float *px, int n, float *out,
                       blip2_stages *stages, blip2_error *err)
{
    if (n <= 0 || !px || !out) return b2__err(err, BLIP2_EINVAL, "encode_image: bad arguments");
    const blip2_image_features_out f = {
        .vision_last_hidden_state = stages ? stages->vision_last_hidden_state : NULL,
        .vision_pooler_output = stages ? stages->vision_pooler_output : NULL,
        .qformer_last_hidden_state = stages ? stages->qformer_last_hidden_state : NULL,
        .query_embeds = out,
    };
    return blip2_image_features(m, px, n, &f, err);
}

int blip2_text_features(const blip2_model *m, const int32_t *ids, size_t n,
                        float *logits, float *last_logits, blip2_error *err)
{
    if (!m || !ids || n == 0 || (!logits && !last_logits))
        return b2__err(err, BLIP2_EINVAL, "text_features: bad arguments");
    const b2_config *c = &m->cfg;
    if (c->family != B2_FAMILY_OPT)
        return b2__err(err, BLIP2_EUNSUPPORTED,
                       "text features are unsupported for this model family (%s): "
                       "only OPT models have them", blip2_model_family(m));
    if (n > (size_t)c->t_max_pos)
        return b2__err(err, BLIP2_ETOOBIG, "the text has %zu tokens, the model %d positions",
                       n, c->t_max_pos);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->t_vocab)
            return b2__err(err, BLIP2_EINVAL, "token id %d at %zu is outside the vocabulary (%d)",
                           ids[i], i, c->t_vocab);
    const int L = (int)n, D = c->t_hidden;
    b2_kv kv = {0};
    b2_opt_ws ws = {0};
    b2_kv *kvp = &kv;
    float *emb = malloc(sizeof(float) * (size_t)L * D);
    float *hid = malloc(sizeof(float) * (size_t)L * D);
    int *seq = calloc((size_t)L, sizeof *seq), *pos = malloc(sizeof *pos * (size_t)L);
    int rc = 0;
    if (!emb || !hid || !seq || !pos || b2__kv_init(&kv, m, L) < 0 ||
        b2__opt_ws_init(&ws, m, L, L) < 0) {
        rc = b2__err(err, BLIP2_ENOMEM, "out of memory");
        goto done;
    }
    b2__opt_embed(m, ids, L, emb);
    for (int i = 0; i < L; i++) pos[i] = i;
    b2__opt_forward(m, &ws, emb, L, &kvp, seq, pos, hid);
    if (logits) b2__opt_logits(m, hid, L, logits);
    if (last_logits) {
        if (logits) memcpy(last_logits, logits + (size_t)(L - 1) * c->t_vocab, sizeof(float) * c->t_vocab);
        else b2__opt_logits(m, hid + (size_t)(L - 1) * D, 1, last_logits);
    }
done:
    b2__opt_ws_free(&ws);
    b2__kv_free(&kv);
    free(emb);
    free(hid);
    free(seq);
    free(pos);
    return rc;
}
