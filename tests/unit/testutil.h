/* testutil.h — helpers shared by the unit tests (header-only; each test is
 * its own program). Tests run from the repository root. */
#ifndef PREFIXD_TESTUTIL_H
#define PREFIXD_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/engine.h"
#include "prefixd/half.h"
#include "prefixd/model.h"
#include "prefixd/quant.h"

#define TEST_MODEL "models/stories260K/stories260K.bin"
#define TEST_TOKENIZER "models/stories260K/tok512.bin"

/* The shipped model, or NULL after printing why (a test setup then fails). */
static inline pd_model *test_model_load(void)
{
    pd_model_params mp = pd_model_default_params();
    mp.path = TEST_MODEL;
    mp.tokenizer_path = TEST_TOKENIZER;
    pd_model *m;
    pd_err err;
    if (pd_model_load(&mp, &m, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    return m;
}

/* The shipped model for a whole group of tests: declares `model` and the
 * group's `setup` / `teardown` (for cmocka_run_group_tests) that load and
 * free it. */
#define TEST_GROUP_MODEL()                                                                      \
    static pd_model *model;                                                                     \
    static int setup(void **state)                                                              \
    {                                                                                           \
        (void)state;                                                                            \
        model = test_model_load();                                                              \
        return model ? 0 : -1;                                                                  \
    }                                                                                           \
    static int teardown(void **state)                                                           \
    {                                                                                           \
        (void)state;                                                                            \
        pd_model_free(model);                                                                   \
        return 0;                                                                               \
    }

/* Advances n_seq sequences together in n_steps mixed steps: sequence s
 * takes chunk[s * n_steps + step] tokens of toks + s * n_tok per step (in
 * reverse sequence order on odd steps), and the logits of each token land at
 * out[(s * n_tok + pos) * V]. Returns 0, or -1 when a step fails. */
static inline int test_mixed_steps(pd_engine *e, int n_seq, pd_seq *const *seqs,
                                   const int32_t *toks, int n_tok, const int *chunk, int n_steps,
                                   int V, float *out)
{
    int done[16] = {0}, n_all = n_seq * n_tok, rc = 0;
    int32_t *bt = malloc((size_t)n_all * sizeof *bt), *bp = malloc((size_t)n_all * sizeof *bp);
    pd_seq **bs = malloc((size_t)n_all * sizeof *bs);
    int *owner = malloc((size_t)n_all * sizeof *owner);
    if (n_seq > 16 || !bt || !bp || !bs || !owner) rc = -1;
    for (int step = 0; step < n_steps && rc == 0; step++) {
        int n = 0;
        for (int k = 0; k < n_seq; k++) {
            int s = step % 2 ? n_seq - 1 - k : k;
            for (int i = 0; i < chunk[s * n_steps + step]; i++) {
                bt[n] = toks[(size_t)s * n_tok + done[s] + i];
                bp[n] = done[s] + i;
                bs[n] = seqs[s];
                owner[n++] = s;
            }
        }
        if (n == 0) continue;
        pd_batch b = {n, bt, bs, bp, NULL};
        const float *lg;
        if (pd_engine_step(e, &b, &lg, NULL) != n) rc = -1;
        for (int i = 0; i < n && rc == 0; i++)
            memcpy(out + ((size_t)owner[i] * n_tok + (size_t)bp[i]) * V, lg + (size_t)i * V,
                   (size_t)V * sizeof(float));
        for (int s = 0; s < n_seq; s++) done[s] += chunk[s * n_steps + step];
    }
    free(bt);
    free(bp);
    free(bs);
    free(owner);
    return rc;
}

/* ---- synthetic typed weights ----
 *
 * A valid matrix of any weight type from random codes: every block gets
 * random bytes, then its scale fields are set so the weights spread over
 * about [-amp, amp] with mean near 0 (the format's meaning of the codes,
 * quant.h). F32/F16/BF16 are uniform in [-amp, amp]. */

static inline uint64_t test_rng(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 24;
}

/* uniform in [-1, 1) */
static inline float test_urand(uint64_t *s)
{
    return (float)(test_rng(s) & 0xffffff) / 8388608.0f - 1.0f;
}

/* Bytes of a row of n elements (n a multiple of the block), from the block
 * layouts of quant.h. */
static inline size_t test_row_bytes(int type, int n)
{
    switch (type) {
    case PD_Q_F32: return (size_t)n * 4;
    case PD_Q_F16: case PD_Q_BF16: return (size_t)n * 2;
    case PD_Q_Q4_0: return (size_t)n / 32 * sizeof(pd_block_q4_0);
    case PD_Q_Q4_1: return (size_t)n / 32 * sizeof(pd_block_q4_1);
    case PD_Q_Q5_0: return (size_t)n / 32 * sizeof(pd_block_q5_0);
    case PD_Q_Q5_1: return (size_t)n / 32 * sizeof(pd_block_q5_1);
    case PD_Q_Q8_0: return (size_t)n / 32 * sizeof(pd_block_q8_0);
    case PD_Q_Q2_K: return (size_t)n / 256 * sizeof(pd_block_q2_K);
    case PD_Q_Q3_K: return (size_t)n / 256 * sizeof(pd_block_q3_K);
    case PD_Q_Q4_K: return (size_t)n / 256 * sizeof(pd_block_q4_K);
    case PD_Q_Q5_K: return (size_t)n / 256 * sizeof(pd_block_q5_K);
    case PD_Q_Q6_K: return (size_t)n / 256 * sizeof(pd_block_q6_K);
    default: return 0;
    }
}

static inline int test_block_size(int type)
{
    if (type == PD_Q_F32 || type == PD_Q_F16 || type == PD_Q_BF16) return 1;
    return type >= PD_Q_Q2_K ? 256 : 32;
}

/* Fills a rows x cols matrix of type at data (test_row_bytes(type, cols) per
 * row) and returns its view. */
static inline pd_wmat test_wmat_fill(void *data, int type, int rows, int cols, float amp,
                                     uint64_t *seed)
{
    size_t rb = test_row_bytes(type, cols), total = rb * (size_t)rows;
    unsigned char *p = data;
    for (size_t i = 0; i < total; i++) p[i] = (unsigned char)test_rng(seed);
    const int bs = test_block_size(type);
    const size_t nblk = (size_t)rows * (size_t)(cols / bs);
#define H(x) pd_f32_to_f16(x)
    for (size_t i = 0; i < nblk; i++) {
        switch (type) {
        case PD_Q_F32: ((float *)data)[i] = amp * test_urand(seed); break;
        case PD_Q_F16: ((uint16_t *)data)[i] = H(amp * test_urand(seed)); break;
        case PD_Q_BF16: ((uint16_t *)data)[i] = pd_f32_to_bf16(amp * test_urand(seed)); break;
        case PD_Q_Q4_0: ((pd_block_q4_0 *)data)[i].d = H(amp / 8); break;
        case PD_Q_Q4_1:
            ((pd_block_q4_1 *)data)[i].d = H(amp / 7.5f);
            ((pd_block_q4_1 *)data)[i].m = H(-amp);
            break;
        case PD_Q_Q5_0: ((pd_block_q5_0 *)data)[i].d = H(amp / 16); break;
        case PD_Q_Q5_1:
            ((pd_block_q5_1 *)data)[i].d = H(amp / 15.5f);
            ((pd_block_q5_1 *)data)[i].m = H(-amp);
            break;
        case PD_Q_Q8_0: ((pd_block_q8_0 *)data)[i].d = H(amp / 127); break;
        case PD_Q_Q2_K:
            ((pd_block_q2_K *)data)[i].d = H(amp / 45);
            ((pd_block_q2_K *)data)[i].dmin = H(amp / 30);
            break;
        case PD_Q_Q3_K: ((pd_block_q3_K *)data)[i].d = H(amp / 128); break;
        case PD_Q_Q4_K:
            ((pd_block_q4_K *)data)[i].d = H(amp / 472);
            ((pd_block_q4_K *)data)[i].dmin = H(amp / 63);
            break;
        case PD_Q_Q5_K:
            ((pd_block_q5_K *)data)[i].d = H(amp / 976);
            ((pd_block_q5_K *)data)[i].dmin = H(amp / 63);
            break;
        case PD_Q_Q6_K: ((pd_block_q6_K *)data)[i].d = H(amp / 4096); break;
        default: break;
        }
    }
#undef H
    return (pd_wmat){data, type, rows, cols, rb};
}

/* A small Llama of random weights, every matrix (the tied embedding too) of
 * type: dim 256, hidden 512, 2 layers, 4 heads / 2 kv heads, vocab 256,
 * context 64 — rows of 256 so every type fits. No tokenizer (feed token ids).
 * Free with pd_model_free. NULL when out of memory. */
static inline pd_model *test_model_synth(int type, uint64_t seed)
{
    pd_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pd_config *c = &m->cfg;
    *c = (pd_config){.dim = 256, .hidden_dim = 512, .n_layers = 2, .n_heads = 4,
                     .n_kv_heads = 2, .head_dim = 64, .kv_dim = 128, .vocab_size = 256,
                     .seq_len = 64, .rope_base = 10000.0f, .norm_eps = 1e-5f,
                     .arch = PD_ARCH_LLAMA, .q_dim = 256, .rope_type = PD_ROPE_NORM,
                     .rope_freq_scale = 1.0f, .ctx_train = 64};
    const int D = c->dim, H = c->hidden_dim, KV = c->kv_dim, V = c->vocab_size;
    size_t bytes = test_row_bytes(type, D) * (size_t)V + sizeof(float) * (size_t)D;
    bytes += (size_t)c->n_layers * (test_row_bytes(type, D) * (size_t)(2 * D + 2 * KV + 2 * H) +
                                    test_row_bytes(type, H) * (size_t)D +
                                    2 * sizeof(float) * (size_t)D);
    m->w.layers = calloc((size_t)c->n_layers, sizeof *m->w.layers);
    m->owned = malloc(bytes + 64);
    if (!m->w.layers || !m->owned) {
        pd_model_free(m);
        return NULL;
    }
    unsigned char *next = (unsigned char *)m->owned;
#define TAKE(W, rows, cols, amp)                                          \
    do {                                                                  \
        W = test_wmat_fill(next, type, rows, cols, amp, &seed);           \
        next += W.row_bytes * (size_t)(rows);                             \
    } while (0)
#define NORM(ptr)                                                         \
    do {                                                                  \
        float *v_ = (float *)next;                                        \
        for (int i = 0; i < D; i++) v_[i] = 1.0f + 0.25f * test_urand(&seed); \
        ptr = v_;                                                         \
        next += sizeof(float) * (size_t)D;                                \
    } while (0)
    TAKE(m->w.token_embedding, V, D, 1.0f);
    for (int l = 0; l < c->n_layers; l++) {
        pd_layer_weights *L = &m->w.layers[l];
        NORM(L->rms_att);
        TAKE(L->wq, D, D, 2.0f / sqrtf((float)D));
        TAKE(L->wk, KV, D, 2.0f / sqrtf((float)D));
        TAKE(L->wv, KV, D, 2.0f / sqrtf((float)D));
        TAKE(L->wo, D, D, 1.0f / sqrtf((float)D));
        NORM(L->rms_ffn);
        TAKE(L->w1, H, D, 2.0f / sqrtf((float)D));
        TAKE(L->w2, D, H, 1.0f / sqrtf((float)H));
        TAKE(L->w3, H, D, 2.0f / sqrtf((float)D));
    }
    NORM(m->w.rms_final);
#undef TAKE
#undef NORM
    m->w.wcls = m->w.token_embedding;
    m->tied_classifier = 1;
    m->format = PD_FORMAT_GGUF;
    snprintf(m->id, sizeof m->id, "synth-%d", type);
    return m;
}

#endif
