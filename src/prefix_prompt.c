/* prefix_prompt.c — prefixes built from a prompt's own key/value cache.
 *
 * The prompt runs through a fresh sequence with no prefix, at positions
 * 0..n-1, so its cached keys already carry their rotary embedding. Those
 * keys and values, moved from the cache layout (layer, pos, kv_dim) into the
 * prefix layout (layer, kv_head, pos, head_dim), are a prefix whose request
 * tokens sit at positions n, n+1, ... and see exactly what they would see
 * after the prompt itself (ARCHITECTURE.md "Prompt equivalence").
 */
#include "prefixd/prefix.h"

#include <stdlib.h>
#include <string.h>

#include "prefix_internal.h"
#include "prefixd/generate.h"
#include "prefixd/tokenizer.h"

int pd_prefix_from_tokens(pd_engine *e, const pd_model *m, const char *task,
                          const int32_t *tokens, int n, pd_prefix **out, pd_err *err)
{
    PD_ASSERT(e && m && out && (tokens || n <= 0));
    *out = NULL;
    const pd_config *c = &m->cfg;
    if (!pd_task_name_valid(task))
        return pd_err_set(err, PD_EINVAL,
                          "invalid task name: want 1 to %d characters of [A-Za-z0-9._-], "
                          "starting with a letter or digit",
                          PD_TASK_NAME_MAX);
    if (n < 1 || n > c->seq_len - 1)
        return pd_err_set(err, PD_ERANGE,
                          "task '%s': a prompt of %d tokens cannot be a prefix (1 to %d tokens)",
                          task, n, c->seq_len - 1);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return pd_err_set(err, PD_EINVAL,
                              "task '%s': prompt token %d is %d, outside the vocabulary [0, %d)",
                              task, i, tokens[i], c->vocab_size);

    pd_seq *s;
    /* the engine's KV dtype: the prefix is the prompt's cache as a request
     * on this engine would hold it (rounded to halves under F16) */
    int rc = pd_seq_create_as(m, n, pd_engine_kv_dtype(e), &s, err);
    if (rc < 0) return rc;
    pd_seq_set_prefix(s, 0, NULL, NULL);
    rc = pd_prefill(e, m, s, tokens, n, NULL, err);
    if (rc == PD_OK)
        rc = pd_prefix_from_cache(m, task, s, n, tokens[0] == pd_tokenizer_bos(m->tok), out, err);
    pd_seq_free(s);
    return rc;
}

int pd_prefix_from_cache(const pd_model *m, const char *task, const pd_seq *s, int n,
                         int has_bos, pd_prefix **out, pd_err *err)
{
    *out = NULL;
    const pd_config *c = &m->cfg;
    if (s->n_prefix != 0 || n < 1 || n > s->len)
        return pd_err_set(err, PD_EINVAL,
                          "task '%s': a prefix needs %d cached tokens of a sequence without a "
                          "prefix (it holds %d)",
                          task, n, s->len);
    pd_prefix *p = NULL;
    int rc = pd_prefix_create(m, task, n, &p, err);
    if (rc == PD_OK) {
        const int L = c->n_layers, KVH = c->n_kv_heads, hd = c->head_dim;
        float *row = malloc(2 * (size_t)c->kv_dim * sizeof *row);
        if (!row) rc = pd_err_set(err, PD_ENOMEM, "task '%s': out of memory", task);
        for (int l = 0; row && l < L; l++)
            for (int pos = 0; pos < n; pos++) { /* contiguous or paged, F32 or F16 (widened) */
                pd_seq_read(s, l, pos, 0, row);
                pd_seq_read(s, l, pos, 1, row + c->kv_dim);
                for (int h = 0; h < KVH; h++) {
                    const size_t src = (size_t)h * hd;
                    size_t dst = (((size_t)l * KVH + h) * n + pos) * hd;
                    memcpy(p->keys + dst, row + src, (size_t)hd * sizeof(float));
                    memcpy(p->values + dst, row + c->kv_dim + src, (size_t)hd * sizeof(float));
                }
            }
        free(row);
        p->has_bos = has_bos;
        if (rc == PD_OK) rc = pd__prefix_stamp(p, "prompt", err);
    }
    if (rc < 0) {
        pd_prefix_release(p);
        return rc;
    }
    *out = p;
    return PD_OK;
}

int pd_prefix_from_text(pd_engine *e, const pd_model *m, const char *task, const char *text,
                        pd_prefix **out, pd_err *err)
{
    PD_ASSERT(e && m && text && out);
    *out = NULL;
    const int max = m->cfg.seq_len - 1;
    int32_t *toks = malloc((size_t)max * sizeof *toks);
    if (!toks) return pd_err_set(err, PD_ENOMEM, "task '%s': out of memory", task ? task : "");
    int n = pd_tokenizer_encode(m->tok, text, strlen(text), 1, 0, toks, max);
    int rc;
    if (n < 0)
        rc = pd_err_set(err, n, "task '%s': cannot encode the prompt text", task ? task : "");
    else if (n > max)
        rc = pd_err_set(err, PD_ERANGE,
                        "task '%s': the prompt text encodes to %d tokens; a prefix holds at most "
                        "%d",
                        task ? task : "", n, max);
    else
        rc = pd_prefix_from_tokens(e, m, task, toks, n, out, err);
    free(toks);
    return rc;
}
