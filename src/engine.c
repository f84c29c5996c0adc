/* engine.c — the batched forward step (see prefixd/engine.h for the
 * contract) and the sequences' KV caches.
 *
 * Dimension letters: T tokens in the step, C = dim, KV = kv_dim,
 * H = hidden_dim, V = vocab_size, hd = head_dim, P = prefix slots.
 * Per layer: xb = rmsnorm(x); q,k,v = xb·W^T (one sgemm each, all T rows);
 * the architecture's biases and q/k head norms, then rotary on q,k at
 * position P + pos (pd__qkv_finish, ops.c); q and the attention output
 * are QD = q_dim wide; K/V rows stored in each token's cache;
 * attention per token and head over P prefix slots then cache 0..pos;
 * x += att·wo^T; x += (silu(xb·w1^T) ⊙ xb·w3^T)·w2^T. Logits only for the
 * rows that asked for them. The float operations mirror llama2.c run.c so
 * greedy output matches it token for token. */
#include "prefixd/engine.h"

#include "prefixd/matmul.h"
#include "prefixd/threadpool.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct pd_engine {
    const pd_model *m;
    int max_tokens;
    float *x;       /* (T, C) residual stream */
    float *xb;      /* (T, max(C, QD)) normed input / attention output */
    float *xb2;     /* (T, C) projection output */
    float *q;       /* (T, QD) QD = q_dim (== C unless the head size is explicit) */
    float *k;       /* (T, KV) */
    float *v;       /* (T, KV) */
    float *hb;      /* (T, H) */
    float *hb2;     /* (T, H) */
    float *rope;    /* (T, hd/2, 2) cos, sin per token */
    float *att;     /* (n_threads, att_cap) attention scores, one row per thread */
    int att_cap;    /* prefix slots + cache entries one token may attend to */
    pd_pool *pool;
    int n_threads;
    float *xl;      /* (T, C) rows whose logits are wanted */
    float *logits;  /* (T, V) */
    void *block;    /* the one allocation the slices above point into */
};

int pd_seq_create(const pd_model *m, int cap, pd_seq **out, pd_err *err)
{
    *out = NULL;
    if (cap < 1 || cap > m->cfg.seq_len)
        return pd_err_set(err, PD_EINVAL, "sequence capacity %d outside [1, %d]", cap,
                          m->cfg.seq_len);
    pd_seq *s = calloc(1, sizeof *s);
    size_t n = (size_t)m->cfg.n_layers * (size_t)cap * (size_t)m->cfg.kv_dim;
    if (s) {
        s->k_cache = malloc(n * sizeof(float));
        s->v_cache = malloc(n * sizeof(float));
    }
    if (!s || !s->k_cache || !s->v_cache) {
        pd_seq_free(s);
        return pd_err_set(err, PD_ENOMEM, "out of memory for a KV cache of %d tokens", cap);
    }
    s->cap = cap;
    *out = s;
    return PD_OK;
}

void pd_seq_free(pd_seq *s)
{
    if (!s) return;
    free(s->k_cache);
    free(s->v_cache);
    free(s);
}

void pd_seq_set_prefix(pd_seq *s, int n_prefix, const float *prefix_k, const float *prefix_v)
{
    PD_ASSERT(n_prefix >= 0 && (n_prefix == 0 || (prefix_k && prefix_v)));
    s->n_prefix = n_prefix;
    s->prefix_k = n_prefix ? prefix_k : NULL;
    s->prefix_v = n_prefix ? prefix_v : NULL;
    s->len = 0;
}

void pd_seq_reset(pd_seq *s) { s->len = 0; }

pd_engine_params pd_engine_default_params(void)
{
    pd_engine_params p = {256, 0};
    return p;
}

int pd_engine_create(const pd_model *m, const pd_engine_params *params, pd_engine **out,
                     pd_err *err)
{
    *out = NULL;
    pd_engine_params dp = pd_engine_default_params();
    if (!params) params = &dp;
    const int max_tokens = params->max_tokens;
    if (max_tokens < 1 || max_tokens > (1 << 16))
        return pd_err_set(err, PD_EINVAL, "max tokens per step %d outside [1, 65536]", max_tokens);
    const pd_config *c = &m->cfg;
    pd_engine *e = calloc(1, sizeof *e);
    if (!e) return pd_err_set(err, PD_ENOMEM, "out of memory for the engine");
    int rc = pd_pool_create(params->n_threads, &e->pool, err);
    if (rc < 0) {
        free(e);
        return rc;
    }
    e->n_threads = pd_pool_threads(e->pool);
    size_t T = (size_t)max_tokens, C = (size_t)c->dim, KV = (size_t)c->kv_dim;
    size_t H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size, QD = (size_t)c->q_dim;
    const size_t CQ = QD > C ? QD : C;
    /* attention scores: prefix slots are bounded by the context as well */
    e->att_cap = 2 * c->seq_len;
    size_t sizes[] = {T * C, T * CQ, T * C, T * QD, T * KV, T * KV, T * H, T * H,
                      T * (size_t)c->head_dim, (size_t)e->n_threads * e->att_cap, T * C, T * V};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) total += (sizes[i] + 15) & ~(size_t)15;
    e->block = aligned_alloc(64, total * sizeof(float));
    if (!e->block) {
        pd_pool_free(e->pool);
        free(e);
        return pd_err_set(err, PD_ENOMEM, "out of memory for engine scratch (%zu MB)",
                          total * 4 >> 20);
    }
    float *p = e->block;
    float **slots[] = {&e->x, &e->xb, &e->xb2, &e->q, &e->k, &e->v, &e->hb, &e->hb2,
                       &e->rope, &e->att, &e->xl, &e->logits};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    e->m = m;
    e->max_tokens = max_tokens;
    *out = e;
    return PD_OK;
}

void pd_engine_free(pd_engine *e)
{
    if (!e) return;
    pd_pool_free(e->pool);
    free(e->block);
    free(e);
}

int pd_engine_max_tokens(const pd_engine *e) { return e->max_tokens; }

typedef struct attn_job {
    pd_engine *e;
    const pd_batch *b;
    int l;
} attn_job;

/* Attention of token `task` of the step, layer l, every head:
 * xb = softmax(q·K^T / sqrt(hd)) · V over the P prefix slots, then the
 * sequence's cache entries 0..pos. */
static void attend_token(void *ctx, int task, int thread)
{
    const attn_job *j = ctx;
    /* the pool hands each thread a contiguous run of tasks, and a token's
     * cost grows with its position: interleave so the runs cost the same
     * (tasks [0, half) are the even tokens, the rest the odd ones) */
    const int half = (j->b->n + 1) / 2;
    const int t = task < half ? 2 * task : 2 * (task - half) + 1;
    pd_engine *e = j->e;
    const pd_config *c = &e->m->cfg;
    const int l = j->l, QD = c->q_dim, KV = c->kv_dim, hd = c->head_dim;
    const int n_rep = c->n_heads / c->n_kv_heads;
    const pd_seq *s = j->b->seqs[t];
    const int P = s->n_prefix, n_ctx = j->b->pos[t] + 1;
    const float *kc = s->k_cache + (size_t)l * s->cap * KV;
    const float *vc = s->v_cache + (size_t)l * s->cap * KV;
    float *att = e->att + (size_t)thread * e->att_cap;
    for (int h = 0; h < c->n_heads; h++) {
        const int g = h / n_rep;
        const size_t pg = (((size_t)l * c->n_kv_heads + g) * P) * hd;
        pd__attend_head(e->q + (size_t)t * QD + (size_t)h * hd, P ? s->prefix_k + pg : NULL,
                        P ? s->prefix_v + pg : NULL, P, kc + (size_t)g * hd, vc + (size_t)g * hd,
                        (size_t)KV, n_ctx, hd, att, e->xb + (size_t)t * QD + (size_t)h * hd);
    }
}

static int check_batch(const pd_engine *e, const pd_batch *b, pd_err *err)
{
    const pd_config *c = &e->m->cfg;
    if (b->n < 1 || b->n > e->max_tokens)
        return pd_err_set(err, PD_EINVAL, "batch of %d tokens outside [1, %d]", b->n,
                          e->max_tokens);
    for (int i = 0; i < b->n; i++) {
        const pd_seq *s = b->seqs[i];
        int pos = b->pos[i];
        if (!s) return pd_err_set(err, PD_EINVAL, "token %d has no sequence", i);
        if (b->tokens[i] < 0 || b->tokens[i] >= c->vocab_size)
            return pd_err_set(err, PD_EINVAL, "token %d: id %d outside the vocabulary [0, %d)",
                              i, b->tokens[i], c->vocab_size);
        if (pos < 0 || pos >= s->cap)
            return pd_err_set(err, PD_EINVAL, "token %d: cache index %d outside [0, %d)", i, pos,
                              s->cap);
        if (s->n_prefix + s->cap > e->att_cap)
            return pd_err_set(err, PD_EINVAL, "token %d: prefix of %d slots is too long", i,
                              s->n_prefix);
        if (c->sliding_window > 0 && s->n_prefix + pos >= c->sliding_window)
            return pd_err_set(err, PD_ERANGE,
                              "token %d: position %d (prefix %d + index %d) is outside the "
                              "model's sliding window of %d tokens",
                              i, s->n_prefix + pos, s->n_prefix, pos, c->sliding_window);
        /* the previous token of the same sequence in this step must be pos-1;
         * the first must continue the cache */
        int j = i - 1;
        while (j >= 0 && b->seqs[j] != s) j--;
        int expect_max = j >= 0 ? b->pos[j] + 1 : s->len;
        if (j >= 0 ? pos != expect_max : pos > expect_max)
            return pd_err_set(err, PD_EINVAL,
                              "token %d: cache index %d does not follow its sequence (expected "
                              "%s%d)",
                              i, pos, j >= 0 ? "" : "at most ", expect_max);
    }
    return PD_OK;
}

int pd_engine_step(pd_engine *e, const pd_batch *b, const float **logits, pd_err *err)
{
    int rc = check_batch(e, b, err);
    if (rc < 0) return rc;
    const pd_model *m = e->m;
    const pd_config *c = &m->cfg;
    const int T = b->n, C = c->dim, KV = c->kv_dim, H = c->hidden_dim, hd = c->head_dim;

    for (int t = 0; t < T; t++) {
        pd_wmat_row_f32(&m->w.token_embedding, b->tokens[t], e->x + (size_t)t * C);
        /* rotary table of this token's absolute position */
        pd__rope_table_ext(e->rope + (size_t)t * hd, b->seqs[t]->n_prefix + b->pos[t], hd,
                           c->rope_base, c->rope_freq_scale, m->w.rope_freqs);
    }

    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *w = &m->w.layers[l];
        pd__rmsnorm_rows(e->xb, NULL, e->x, w->rms_att, T, C, c->norm_eps);
        pd_wmatmul_n(e->pool, 3, (float *const[]){e->q, e->k, e->v}, e->xb,
                     (const pd_wmat *const[]){&w->wq, &w->wk, &w->wv}, T);
        pd__qkv_finish(m, l, e->q, e->k, e->v, T, e->rope, NULL);
        for (int t = 0; t < T; t++) {
            pd_seq *s = b->seqs[t];
            size_t at = ((size_t)l * s->cap + (size_t)b->pos[t]) * KV;
            memcpy(s->k_cache + at, e->k + (size_t)t * KV, (size_t)KV * sizeof(float));
            memcpy(s->v_cache + at, e->v + (size_t)t * KV, (size_t)KV * sizeof(float));
        }
        attn_job aj = {e, b, l};
        pd_pool_run(T * (double)C > 4096 ? e->pool : NULL, attend_token, &aj, T);
        pd_wmatmul(e->pool, e->xb2, e->xb, &w->wo, T);
        for (size_t i = 0; i < (size_t)T * C; i++) e->x[i] += e->xb2[i];

        pd__rmsnorm_rows(e->xb, NULL, e->x, w->rms_ffn, T, C, c->norm_eps);
        pd_wmatmul_n(e->pool, 2, (float *const[]){e->hb, e->hb2}, e->xb,
                     (const pd_wmat *const[]){&w->w1, &w->w3}, T);
        for (size_t i = 0; i < (size_t)T * H; i++) {
            float val = e->hb[i];
            val *= (1.0f / (1.0f + expf(-val)));
            e->hb[i] = val * e->hb2[i];
        }
        pd_wmatmul(e->pool, e->xb2, e->hb, &w->w2, T);
        for (size_t i = 0; i < (size_t)T * C; i++) e->x[i] += e->xb2[i];
    }

    for (int t = 0; t < T; t++) {
        pd_seq *s = b->seqs[t];
        s->len = b->pos[t] + 1; /* the last token of the sequence wins */
    }
    int n_out = 0;
    for (int t = 0; t < T; t++) {
        if (b->want_logits && !b->want_logits[t]) continue;
        pd__rmsnorm_rows(e->xl + (size_t)n_out * C, NULL, e->x + (size_t)t * C, m->w.rms_final, 1, C,
                     c->norm_eps);
        n_out++;
    }
    if (n_out > 0) pd_wmatmul(e->pool, e->logits, e->xl, &m->w.wcls, n_out);
    *logits = e->logits;
    return n_out;
}
