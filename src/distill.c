/* distill.c — context distillation, the data and teacher side (contract in
 * prefixd/distill.h).
 *
 * The prompt is prefilled once into a sequence without a prefix; the logits
 * of its last token are the teacher's distribution for an unconditional
 * first continuation token, and its cache becomes the teacher prefix (BOS +
 * prompt) every sample then runs after. Sampling draws from
 * softmax(logits / temperature) with the job's generator; the soft target
 * is softmax(logits), computed in double precision. */
#include "prefixd/distill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "prefix_internal.h"
#include "prefixd/dataset.h"
#include "prefixd/generate.h"
#include "prefixd/prefix.h"
#include "prefixd/tokenizer.h"

pd_distill_params pd_distill_default_params(void)
{
    return (pd_distill_params){.teacher_prompt = NULL,
                               .n_samples = 64,
                               .sample_length = 32,
                               .temperature = 1.0,
                               .ce_weight = 0.0,
                               .init = PD_DISTILL_INIT_PROMPT};
}

int pd_distill_prompt_tokens(const pd_model *m, const char *prompt, int max_tail, int32_t **toks,
                             int *n, pd_err *err)
{
    *toks = NULL;
    *n = 0;
    const int cap = m->cfg.seq_len;
    int32_t *t = malloc((size_t)cap * sizeof *t);
    if (!t) return pd_err_set(err, PD_ENOMEM, "out of memory for the teacher prompt");
    int k = pd_tokenizer_encode(m->tok, prompt, strlen(prompt), 1, 0, t, cap);
    if (k < 0) {
        free(t);
        return pd_err_set(err, k, "teacher_prompt: cannot be tokenized");
    }
    if (k < 2 || k + max_tail > cap) {
        free(t);
        return pd_err_set(err, PD_ERANGE,
                          "teacher_prompt: %d tokens (BOS included); with %d tokens of input and "
                          "continuation after it, at most %d fit the context of %d",
                          k, max_tail, cap - max_tail, cap);
    }
    *toks = t;
    *n = k;
    return PD_OK;
}

void pd_distill_free(pd_distill_data *d)
{
    if (!d) return;
    free(d->ex);
    free(d->tokens);
    free(d->mask);
    free(d->soft);
    memset(d, 0, sizeof *d);
}

/* Softmax of logits (V) at temperature 1 into soft; returns a token drawn
 * from softmax(logits / temp) with u uniform in [0, 1). */
static int soft_and_sample(const float *logits, int V, double temp, double u, float *soft)
{
    float max = logits[0];
    for (int i = 1; i < V; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0.0, sum_t = 0.0;
    for (int i = 0; i < V; i++) {
        sum += exp((double)(logits[i] - max));
        sum_t += exp((double)(logits[i] - max) / temp);
    }
    for (int i = 0; i < V; i++) soft[i] = (float)(exp((double)(logits[i] - max)) / sum);
    double r = u * sum_t, acc = 0.0;
    int last = 0;
    for (int i = 0; i < V; i++) {
        double w = exp((double)(logits[i] - max) / temp);
        if (w <= 0.0) continue;
        last = i;
        acc += w;
        if (r < acc) return i;
    }
    return last; /* rounding at the very end */
}

int pd_distill_build(pd_engine *e, const pd_model *m, const int32_t *prompt, int n_prompt,
                     const pd_example *inputs, int n_inputs, const pd_distill_params *p,
                     uint64_t seed, pd_distill_data *out, pd_err *err)
{
    PD_ASSERT(e && m && prompt && p && out && (inputs || n_inputs == 0));
    memset(out, 0, sizeof *out);
    const int V = m->cfg.vocab_size, S = p->sample_length, N = p->n_samples;
    if (N < 1 || S < 2 || !(p->temperature > 0.0) || !isfinite(p->temperature))
        return pd_err_set(err, PD_EINVAL, "distill: n_samples %d (>= 1), sample_length %d "
                          "(>= 2), temperature %g (> 0) out of range", N, S, p->temperature);
    int max_in = 0;
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i].n - 1 > max_in) max_in = inputs[i].n - 1;
    if (n_prompt + max_in + S > m->cfg.seq_len)
        return pd_err_set(err, PD_ERANGE, "distill: a prompt of %d tokens, inputs of up to %d "
                          "and continuations of %d exceed the context of %d", n_prompt, max_in,
                          S, m->cfg.seq_len);
    const int row = 1 + max_in + S; /* tokens per example at most */
    size_t cap = (size_t)N * row;
    out->ex = calloc((size_t)N, sizeof *out->ex);
    out->tokens = malloc(cap * sizeof *out->tokens);
    out->mask = calloc(cap, 1);
    out->soft = calloc(cap * (size_t)V, sizeof *out->soft);
    float *first = malloc((size_t)V * sizeof *first);
    pd_seq *s = NULL;
    pd_prefix *teacher = NULL;
    int rc = PD_OK;
    if (!out->ex || !out->tokens || !out->mask || !out->soft || !first) {
        rc = pd_err_set(err, PD_ENOMEM, "distill: out of memory for %d samples of %d tokens "
                        "(%zu MB of soft targets)", N, row, (cap * (size_t)V * 4) >> 20);
        goto done;
    }
    /* the prompt once: its last logits and its cache as the teacher prefix */
    const float *lg;
    if ((rc = pd_seq_create(m, n_prompt, &s, err)) < 0) goto done;
    pd_seq_set_prefix(s, 0, NULL, NULL);
    if ((rc = pd_prefill(e, m, s, prompt, n_prompt, &lg, err)) < 0) goto done;
    memcpy(first, lg, (size_t)V * sizeof *first);
    if ((rc = pd_prefix_from_cache(m, "teacher", s, n_prompt, 1, &teacher, err)) < 0) goto done;
    pd_seq_free(s);
    s = NULL;
    if ((rc = pd_seq_create(m, max_in + S, &s, err)) < 0) goto done;

    pd_rng r;
    pd_rng_seed(&r, seed);
    const int bos = pd_tokenizer_bos(m->tok);
    for (int i = 0; i < N; i++) {
        const size_t base = (size_t)i * row;
        int32_t *tok = out->tokens + base;
        uint8_t *mask = out->mask + base;
        float *soft = out->soft + base * (size_t)V;
        int k = 0;
        tok[k++] = bos;
        pd_seq_set_prefix(s, teacher->n_tokens, teacher->keys, teacher->values);
        const float *logits = first;
        if (n_inputs) {
            const pd_example *in = &inputs[i % n_inputs];
            memcpy(tok + k, in->tokens + 1, (size_t)(in->n - 1) * sizeof *tok);
            k += in->n - 1;
            if ((rc = pd_prefill(e, m, s, in->tokens + 1, in->n - 1, &logits, err)) < 0)
                goto done;
        }
        /* the first continuation token is a target only when a row precedes
         * it in the student's view (the BOS is not part of it) */
        const int first_target = k >= 2 ? k : k + 1;
        for (int j = 0; j < S; j++) {
            int t = soft_and_sample(logits, V, p->temperature, pd_rng_uniform(&r),
                                    soft + (size_t)k * V);
            mask[k] = k >= first_target;
            tok[k++] = t;
            if (j == S - 1 || pd_tokenizer_is_eog(m->tok, t)) break;
            if ((rc = pd_prefill(e, m, s, &tok[k - 1], 1, &logits, err)) < 0) goto done;
        }
        out->ex[i] = (pd_example){.tokens = tok, .loss_mask = mask, .n = k, .soft = soft,
                                  .ce_weight = 0.0f};
        if (k > out->max_len) out->max_len = k;
    }
    out->n = N;
done:
    free(first);
    pd_seq_free(s);
    pd_prefix_release(teacher);
    if (rc < 0) pd_distill_free(out);
    return rc;
}

int pd_distill_init_kv(pd_engine *e, const pd_model *m, const int32_t *prompt, int n_prompt,
                       int P, float *keys, float *values, pd_err *err)
{
    const pd_config *c = &m->cfg;
    if (P < 2 || P >= n_prompt)
        return pd_err_set(err, PD_EINVAL, "distill: %d virtual tokens cannot compress a prompt "
                          "of %d tokens (want 2 <= P < %d)", P, n_prompt, n_prompt);
    pd_prefix *full;
    int rc = pd_prefix_from_tokens(e, m, "teacher", prompt, n_prompt, &full, err);
    if (rc < 0) return rc;
    const int L = c->n_layers, KVH = c->n_kv_heads, hd = c->head_dim, shift = n_prompt - P;
    float *rope = malloc((size_t)hd * sizeof *rope);
    if (!rope) {
        pd_prefix_release(full);
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    }
    pd__rope_table_ext(rope, shift, hd, c->rope_base, c->rope_freq_scale, m->w.rope_freqs);
    for (int l = 0; l < L; l++)
        for (int h = 0; h < KVH; h++) {
            const size_t src0 = ((size_t)l * KVH + h) * n_prompt, dst0 = ((size_t)l * KVH + h) * P;
            for (int i = 0; i < P; i++) {
                const int from = i == 0 ? 0 : shift + i;
                const float *ks = full->keys + (src0 + from) * hd;
                float *kd = keys + (dst0 + i) * hd;
                memcpy(kd, ks, (size_t)hd * sizeof(float));
                memcpy(values + (dst0 + i) * hd, full->values + (src0 + from) * hd,
                       (size_t)hd * sizeof(float));
                if (i > 0) pd__rope_rows(kd, 1, hd, hd, rope, c->rope_type, -1.0f);
            }
        }
    free(rope);
    pd_prefix_release(full);
    return PD_OK;
}
