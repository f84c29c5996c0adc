/* engine.c — the batched forward step (see prefixd/engine.h for the
 * contract) and the sequences' KV caches.
 *
 * Dimension letters: T tokens in the step, C = dim, KV = kv_dim,
 * H = hidden_dim, V = vocab_size, hd = head_dim, P = prefix slots.
 * Per layer: xb = rmsnorm(x); q,k,v = xb·W^T (one sgemm each, all T rows);
 * the architecture's biases and q/k head norms, then rotary on q,k at
 * position P + pos (pd__qkv_finish, ops.c); q and the attention output
 * are QD = q_dim wide; K/V rows stored in each token's cache;
 * attention over P prefix slots then cache 0..pos, in blocks of a
 * sequence's tokens x the heads of a kv group (attention.h);
 * x += att·wo^T; x += (silu(xb·w1^T) ⊙ xb·w3^T)·w2^T. Logits only for the
 * rows that asked for them. The float operations mirror llama2.c run.c so
 * greedy output matches it token for token. */
#include "prefixd/engine.h"

#include "prefixd/half.h"
#include "prefixd/kvpool.h"
#include "prefixd/matmul.h"
#include "prefixd/threadpool.h"
#include "attention.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Attention work: query rows per task (tokens x heads of one kv group) that
 * share the group's keys while they are in registers (attention.h). */
#define ATT_ROWS 16

/* Tokens [t0, t0 + n_tok) of the step (one sequence, consecutive
 * positions), query heads [h0, h0 + n_h) of kv group g. */
typedef struct attn_task {
    int t0, n_tok, g, h0, n_h;
} attn_task;

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
    float *att;     /* (n_threads, ATT_ROWS, att_cap) attention probabilities per thread */
    int att_cap;    /* prefix slots + cache entries one token may attend to */
    attn_task *tasks; /* (max_tokens * n_heads) this layer's attention work */
    int *blocks;    /* (max_tokens) first token of each attention block of the step */
    pd_pool *pool;
    int n_threads;
    float *xl;      /* (T, C) rows whose logits are wanted */
    float *logits;  /* (T, V) */
    pd_kv_dtype kv_dtype; /* of the sequences made for this engine (pd_engine_kv_dtype) */
    void *block;    /* the one allocation the slices above point into */
};

int pd_seq_create(const pd_model *m, int cap, pd_seq **out, pd_err *err)
{
    return pd_seq_create_as(m, cap, PD_KV_F32, out, err);
}

int pd_seq_create_as(const pd_model *m, int cap, pd_kv_dtype dtype, pd_seq **out, pd_err *err)
{
    *out = NULL;
    PD_ASSERT(dtype == PD_KV_F32 || dtype == PD_KV_F16);
    if (cap < 1 || cap > m->cfg.seq_len)
        return pd_err_set(err, PD_EINVAL, "sequence capacity %d outside [1, %d]", cap,
                          m->cfg.seq_len);
    pd_seq *s = calloc(1, sizeof *s);
    size_t n = (size_t)m->cfg.n_layers * (size_t)cap * (size_t)m->cfg.kv_dim;
    if (s) {
        s->k_cache = malloc(n * pd_kv_dtype_size(dtype));
        s->v_cache = malloc(n * pd_kv_dtype_size(dtype));
    }
    if (!s || !s->k_cache || !s->v_cache) {
        pd_seq_free(s);
        return pd_err_set(err, PD_ENOMEM, "out of memory for a KV cache of %d tokens", cap);
    }
    s->cap = cap;
    s->kv_dim = m->cfg.kv_dim;
    s->n_layers = m->cfg.n_layers;
    s->dtype = dtype;
    *out = s;
    return PD_OK;
}

int pd_seq_create_paged(const pd_model *m, pd_kvpool *pool, int cap, const int32_t *shared,
                        int n_shared, pd_seq **out, pd_err *err)
{
    *out = NULL;
    if (cap < 1 || cap > m->cfg.seq_len)
        return pd_err_set(err, PD_EINVAL, "sequence capacity %d outside [1, %d]", cap,
                          m->cfg.seq_len);
    PD_ASSERT(pool->block_elems * pd_kv_dtype_size(pool->dtype) ==
              pd_kvpool_block_bytes_as(m, pool->dtype));
    const int nb = pd_kvpool_blocks_for(cap);
    if (nb > pool->n_blocks)
        return pd_err_set(err, PD_EINVAL,
                          "a sequence of %d tokens needs %d KV blocks; the KV budget holds %d",
                          cap, nb, pool->n_blocks);
    PD_ASSERT(n_shared >= 0 && n_shared * PD_KV_BLOCK < cap + PD_KV_BLOCK && n_shared <= nb);
    /* pinning an unheld shared block takes it from what is available */
    int pins = 0;
    for (int i = 0; i < n_shared; i++) pins += pd_kvpool_pin_cost(pool, shared[i]);
    if (nb - n_shared + pins > pd_kvpool_available(pool))
        return pd_err_set(err, PD_EBUSY, "%d KV blocks wanted, %d available",
                          nb - n_shared + pins, pd_kvpool_available(pool));
    pd_seq *s = calloc(1, sizeof *s);
    if (s) s->blocks = malloc((size_t)nb * sizeof *s->blocks);
    if (!s || !s->blocks) {
        if (s) free(s);
        return pd_err_set(err, PD_ENOMEM, "out of memory for a block table of %d blocks", nb);
    }
    for (int i = 0; i < n_shared; i++) {
        pd_kvpool_pin(pool, shared[i]);
        s->blocks[i] = shared[i];
    }
    int rc = pd_kvpool_reserve(pool, nb - n_shared);
    PD_ASSERT(rc == PD_OK);
    s->pool = pool;
    s->n_blocks = s->n_shared = n_shared;
    s->n_reserved = nb - n_shared;
    s->cap = cap;
    s->kv_dim = m->cfg.kv_dim;
    s->n_layers = m->cfg.n_layers;
    s->dtype = pool->dtype;
    *out = s;
    return PD_OK;
}

int pd_seq_use_shared(pd_seq *s)
{
    s->len = s->n_shared << PD_KV_BLOCK_SHIFT;
    if (s->len > s->cap) s->len = s->cap;
    return s->len;
}

void pd_seq_grow(pd_seq *s, int n_tokens)
{
    PD_ASSERT(n_tokens <= s->cap);
    if (!s->pool) return;
    const int nb = pd_kvpool_blocks_for(n_tokens);
    while (s->n_blocks < nb) {
        PD_ASSERT(s->n_reserved > 0);
        s->blocks[s->n_blocks++] = pd_kvpool_take(s->pool);
        s->n_reserved--;
    }
}

/* Tokens the sequence's storage holds now. */
static int seq_room(const pd_seq *s)
{
    if (!s->pool) return s->cap;
    const int r = s->n_blocks << PD_KV_BLOCK_SHIFT;
    return r < s->cap ? r : s->cap;
}

/* Offset in elements of cache entry pos of layer l: from k_cache/v_cache,
 * or from the pool's data (keys; values at + v_offset). */
static size_t seq_at(const pd_seq *s, int l, int pos, int kv_dim)
{
    if (!s->pool) return ((size_t)l * s->cap + (size_t)pos) * (size_t)kv_dim;
    return (size_t)s->blocks[pos >> PD_KV_BLOCK_SHIFT] * s->pool->block_elems +
           ((size_t)l * PD_KV_BLOCK + (size_t)(pos & (PD_KV_BLOCK - 1))) * (size_t)kv_dim;
}

/* Writable key (values: 1) row of cache entry pos of layer l: kv_dim
 * elements of s->dtype. */
static void *seq_row(const pd_seq *s, int l, int pos, int values)
{
    PD_ASSERT(pos >= 0 && pos < seq_room(s));
    size_t at = seq_at(s, l, pos, s->kv_dim);
    const void *base = values ? s->v_cache : s->k_cache;
    if (s->pool) {
        base = s->pool->data;
        at += values ? s->pool->v_offset : 0;
    }
    return (char *)base + at * pd_kv_dtype_size(s->dtype);
}

/* Stores n floats of src as row dst of dtype (halves: rounded to nearest even). */
static void store_row(void *dst, const float *src, int n, pd_kv_dtype dtype)
{
    if (dtype == PD_KV_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    pd_f32_to_f16_n(src, dst, (size_t)n);
}

void pd_seq_read(const pd_seq *s, int l, int pos, int values, float *out)
{
    const void *row = seq_row(s, l, pos, values);
    if (s->dtype == PD_KV_F32) memcpy(out, row, (size_t)s->kv_dim * sizeof(float));
    else pd_f16_to_f32_n(row, out, (size_t)s->kv_dim);
}

void pd_seq_free(pd_seq *s)
{
    if (!s) return;
    if (s->pool) {
        /* the last first: in the LRU a block's successors go before it */
        for (int i = s->n_blocks - 1; i >= 0; i--) pd_kvpool_release(s->pool, s->blocks[i]);
        pd_kvpool_unreserve(s->pool, s->n_reserved);
        free(s->blocks);
    }
    free(s->k_cache);
    free(s->v_cache);
    free(s->prefix_own);
    free(s);
}

/* Points s at a prefix of n elements per tensor stored as src_dtype:
 * borrowed when that is the cache's dtype, else converted into the
 * sequence's own copy (rounded to halves, or widened). */
static int seq_prefix(pd_seq *s, int n_prefix, const void *k, const void *v,
                      pd_kv_dtype src_dtype, size_t n, pd_err *err)
{
    PD_ASSERT(n_prefix >= 0 && (n_prefix == 0 || (k && v)));
    free(s->prefix_own);
    s->prefix_own = NULL;
    s->n_prefix = 0;
    s->prefix_k = s->prefix_v = NULL;
    s->len = 0;
    if (n_prefix && src_dtype != s->dtype) {
        void *own = malloc(2 * n * pd_kv_dtype_size(s->dtype));
        if (!own)
            return pd_err_set(err, PD_ENOMEM, "out of memory converting a prefix of %d slots to %s",
                              n_prefix, pd_kv_dtype_name(s->dtype));
        if (s->dtype == PD_KV_F16) {
            uint16_t *h = own;
            pd_f32_to_f16_n(k, h, n);
            pd_f32_to_f16_n(v, h + n, n);
            k = h;
            v = h + n;
        } else {
            float *f = own;
            pd_f16_to_f32_n(k, f, n);
            pd_f16_to_f32_n(v, f + n, n);
            k = f;
            v = f + n;
        }
        s->prefix_own = own;
    }
    s->n_prefix = n_prefix;
    s->prefix_k = n_prefix ? k : NULL;
    s->prefix_v = n_prefix ? v : NULL;
    return PD_OK;
}

/* Elements per prefix tensor of P slots. */
static size_t prefix_elems(const pd_seq *s, int P) { return (size_t)s->n_layers * P * s->kv_dim; }

int pd_seq_set_prefix(pd_seq *s, int n_prefix, const float *prefix_k, const float *prefix_v)
{
    return seq_prefix(s, n_prefix, prefix_k, prefix_v, PD_KV_F32, prefix_elems(s, n_prefix), NULL);
}

int pd_seq_set_prefix_f16(pd_seq *s, int n_prefix, const uint16_t *prefix_k,
                          const uint16_t *prefix_v, pd_err *err)
{
    return seq_prefix(s, n_prefix, prefix_k, prefix_v, PD_KV_F16, prefix_elems(s, n_prefix), err);
}

void pd_seq_reset(pd_seq *s) { s->len = 0; }

pd_engine_params pd_engine_default_params(void)
{
    pd_engine_params p = {256, 0, PD_KV_F32};
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
    /* a hand-made config must be complete (every buffer is sized from it) */
    int vrc = pd_config_validate(c, "engine", err);
    if (vrc < 0) return vrc;
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
                      T * (size_t)c->head_dim, (size_t)e->n_threads * ATT_ROWS * e->att_cap,
                      T * C, T * V};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) total += (sizes[i] + 15) & ~(size_t)15;
    e->block = aligned_alloc(64, total * sizeof(float));
    e->tasks = malloc(T * (size_t)c->n_heads * sizeof *e->tasks);
    e->blocks = malloc(T * sizeof *e->blocks);
    if (!e->block || !e->tasks || !e->blocks) {
        pd_pool_free(e->pool);
        free(e->block);
        free(e->tasks);
        free(e->blocks);
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
    e->kv_dtype = params->kv_dtype;
    *out = e;
    return PD_OK;
}

void pd_engine_free(pd_engine *e)
{
    if (!e) return;
    pd_pool_free(e->pool);
    free(e->block);
    free(e->tasks);
    free(e->blocks);
    free(e);
}

int pd_engine_max_tokens(const pd_engine *e) { return e->max_tokens; }

pd_kv_dtype pd_engine_kv_dtype(const pd_engine *e) { return e->kv_dtype; }

typedef struct attn_job {
    pd_engine *e;
    const pd_batch *b;
    int l;
} attn_job;

/* One task of layer l: softmax(q·K^T / sqrt(hd)) · V of its rows over the P
 * prefix slots then the sequence's cache entries 0..pos (attention.h). */
static void attend_task(void *ctx, int task, int thread)
{
    const attn_job *j = ctx;
    pd_engine *e = j->e;
    const attn_task *tk = &e->tasks[task];
    const pd_config *c = &e->m->cfg;
    const int l = j->l, QD = c->q_dim, KV = c->kv_dim, hd = c->head_dim;
    const int h = tk->g * (c->n_heads / c->n_kv_heads) + tk->h0;
    const pd_seq *s = j->b->seqs[tk->t0];
    const int P = s->n_prefix;
    const size_t es = pd_kv_dtype_size(s->dtype); /* prefix and cache: elements of s->dtype */
    const size_t pg = (((size_t)l * c->n_kv_heads + tk->g) * P) * hd * es;
    /* contiguous: entry e at cache + at + e * KV; paged: at block
     * blocks[e / B] + at + (e % B) * KV (attention.h); in elements */
    const size_t at = (s->pool ? (size_t)l * PD_KV_BLOCK : (size_t)l * s->cap) * KV +
                      (size_t)tk->g * hd;
    const char *kbase = s->pool ? s->pool->data : s->k_cache;
    const char *vbase = s->pool ? (const char *)s->pool->data + s->pool->v_offset * es
                                : (const char *)s->v_cache;
    const size_t row = (size_t)tk->t0 * QD + (size_t)h * hd;
    const pd_attn a = {
        .hd = hd,
        .P = P,
        .f16 = s->dtype == PD_KV_F16,
        .pk = P ? (const char *)s->prefix_k + pg : NULL,
        .pv = P ? (const char *)s->prefix_v + pg : NULL,
        .k = kbase + at * es,
        .v = vbase + at * es,
        .kv_stride = (size_t)KV,
        .blk = s->pool ? s->blocks : NULL,
        .blk_stride = s->pool ? s->pool->block_elems : 0,
        .q = e->q + row,
        .q_stride = (size_t)QD,
        .o = e->xb + row,
        .o_stride = (size_t)QD,
        .probs = e->att + (size_t)thread * ATT_ROWS * e->att_cap,
        .p_stride = (size_t)e->att_cap,
        .n_tok = tk->n_tok,
        .n_heads = tk->n_h,
        .n_keys0 = P + j->b->pos[tk->t0] + 1,
    };
    pd__attend(&a);
}

/* Attention of layer l for every token of the step. Tasks are blocks of a
 * sequence's consecutive tokens x heads of one kv group, listed group by
 * group; the pool hands each thread a contiguous run of tasks, and a
 * block's cost grows with its position, so within a group the blocks are
 * interleaved (even ones, then odd ones) to make the runs cost alike. */
static void attend_layer(pd_engine *e, const pd_batch *b, int l)
{
    const pd_config *c = &e->m->cfg;
    const int n_rep = c->n_heads / c->n_kv_heads;
    const int n_h = n_rep < ATT_ROWS ? n_rep : ATT_ROWS, per_block = ATT_ROWS / n_h;
    int n_blocks = 0;
    double work = 0.0; /* multiply-adds, to decide whether waking the workers pays */
    for (int t = 0; t < b->n; t++) {
        const int t0 = n_blocks ? e->blocks[n_blocks - 1] : -1;
        if (t0 < 0 || b->seqs[t] != b->seqs[t0] || b->pos[t] != b->pos[t0] + (t - t0) ||
            t - t0 == per_block)
            e->blocks[n_blocks++] = t;
        work += (double)(b->seqs[t]->n_prefix + b->pos[t] + 1) * 2.0 * c->q_dim;
    }
    int n_tasks = 0;
    const int half = (n_blocks + 1) / 2;
    for (int g = 0; g < c->n_kv_heads; g++)
        for (int h0 = 0; h0 < n_rep; h0 += n_h)
            for (int k = 0; k < n_blocks; k++) {
                const int bi = k < half ? 2 * k : 2 * (k - half) + 1;
                const int t0 = e->blocks[bi], t1 = bi + 1 < n_blocks ? e->blocks[bi + 1] : b->n;
                attn_task *tk = &e->tasks[n_tasks++];
                tk->t0 = t0;
                tk->n_tok = t1 - t0;
                tk->g = g;
                tk->h0 = h0;
                tk->n_h = n_rep - h0 < n_h ? n_rep - h0 : n_h;
            }
    attn_job aj = {e, b, l};
    pd_pool_run(work > 65536.0 ? e->pool : NULL, attend_task, &aj, n_tasks);
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
        if (pos < (s->n_shared << PD_KV_BLOCK_SHIFT))
            return pd_err_set(err, PD_EINVAL, "token %d: cache index %d is in a shared block", i,
                              pos);
        if (pos < 0 || pos >= seq_room(s))
            return pd_err_set(err, PD_EINVAL, "token %d: cache index %d outside [0, %d)", i, pos,
                              seq_room(s));
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
            store_row(seq_row(s, l, b->pos[t], 0), e->k + (size_t)t * KV, KV, s->dtype);
            store_row(seq_row(s, l, b->pos[t], 1), e->v + (size_t)t * KV, KV, s->dtype);
        }
        attend_layer(e, b, l);
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
