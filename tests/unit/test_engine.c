/* test_engine.c — the forward step on the shipped model: the reference
 * greedy generation of llama2.c run.c, batched steps equal to single steps,
 * chunked prefill equal to token-by-token, paged equal to contiguous, and
 * bad batches refused. The exactness tests run with the KV cache in F32
 * and in F16 (the test's state names the dtype); the F16 cache's accuracy
 * against F32 is measured on the same model and prompt. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/engine.h"
#include "prefixd/generate.h"
#include "prefixd/half.h"
#include "prefixd/kvpool.h"

#include "testutil.h"

#define MODEL TEST_MODEL
#define TOKENIZER TEST_TOKENIZER

/* llama2.c run.c -t 0 -n 200 -i "Once upon a time" on stories260K */
static const int32_t ref_prompt[] = {1, 403, 407, 261, 378};
static const int32_t ref_out[196] = {
    432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408,
    419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352,
    266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267, 414, 270,
    333, 415, 426, 13,  438, 310, 439, 419, 357, 336, 432, 313, 438, 310, 432, 278, 316, 439,
    419, 298, 414, 267, 265, 282, 295, 433, 426, 436, 317, 286, 296, 418, 269, 279, 292, 416,
    439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 338, 336, 432, 313, 442, 391, 267,
    337, 335, 364, 420, 268, 388, 432, 398, 359, 280, 303, 439, 413, 272, 417, 264, 312, 426,
    436, 13,  438, 310, 286, 296, 418, 269, 279, 292, 416, 439, 413, 409, 416, 327, 263, 415,
    294, 267, 400, 426, 338, 336, 432, 313, 442, 439, 423, 262, 304, 420, 422, 432, 317, 426,
    359, 279, 292, 416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 436, 13,  438,
    310, 279, 292, 416, 439, 413, 391, 267, 281, 421, 427, 311, 357, 432, 384, 358};

TEST_GROUP_MODEL()

static pd_kv_dtype kv_f32 = PD_KV_F32, kv_f16 = PD_KV_F16;

/* The KV dtype a parametrised test runs with. */
static pd_kv_dtype dtype_of(void **state) { return *(const pd_kv_dtype *)*state; }

/* Test f with the KV cache in dtype d (f32, f16). */
#define DTYPE_TEST(f, d) {#f "_" #d, f, NULL, NULL, &kv_##d}

static float max_abs_diff(const float *a, const float *b, int n)
{
    float d = 0.0f;
    for (int i = 0; i < n; i++) {
        float x = fabsf(a[i] - b[i]);
        if (!(x <= d)) d = x; /* NaN propagates as a failure */
    }
    return d;
}

static void test_reference_greedy(void **state)
{
    (void)state;
    int32_t toks[16];
    int n = pd_tokenizer_encode(model->tok, "Once upon a time", 16, 1, 0, toks, 16);
    assert_int_equal(n, 5);
    assert_memory_equal(toks, ref_prompt, sizeof ref_prompt);
    pd_engine *e;
    pd_seq *s;
    assert_int_equal(pd_engine_create(model, &(pd_engine_params){64, 0, PD_KV_F32}, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(model, 5 + 196, &s, NULL), PD_OK);
    pd_gen_params gp = {0};
    gp.max_tokens = 196;
    gp.sampling = pd_sampler_default_params();
    int32_t out[196];
    int n_out;
    int rc = pd_generate(e, model, s, toks, n, &gp, out, 196, &n_out, NULL);
    assert_int_equal(rc, PD_FINISH_LENGTH);
    assert_int_equal(n_out, 196);
    assert_memory_equal(out, ref_out, sizeof ref_out);
    pd_seq_free(s);
    pd_engine_free(e);
}

/* Runs tokens one at a time through a fresh sequence with a cache of dt;
 * logits (n, V) out. */
static void run_single(const int32_t *toks, int n, pd_kv_dtype dt, float *logits)
{
    const int V = model->cfg.vocab_size;
    pd_engine *e;
    pd_seq *s;
    assert_int_equal(pd_engine_create(model, &(pd_engine_params){1, 0, dt}, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create_as(model, n, dt, &s, NULL), PD_OK);
    for (int i = 0; i < n; i++) {
        pd_seq *seqs[1] = {s};
        int32_t pos[1] = {i};
        pd_batch b = {1, toks + i, seqs, pos, NULL};
        const float *lg;
        assert_int_equal(pd_engine_step(e, &b, &lg, NULL), 1);
        memcpy(logits + (size_t)i * V, lg, (size_t)V * sizeof(float));
    }
    pd_seq_free(s);
    pd_engine_free(e);
}

#define NSEQ 4
#define NTOK 24

/* Several sequences advanced together in mixed steps: prefill chunks of
 * different lengths next to single decode tokens. Each token's logits must
 * equal the sequence run alone, token by token. */
static void test_batched_equals_single(void **state)
{
    const pd_kv_dtype dt = dtype_of(state);
    const int V = model->cfg.vocab_size;
    int32_t toks[NSEQ][NTOK];
    uint64_t r = 12345;
    for (int s = 0; s < NSEQ; s++)
        for (int i = 0; i < NTOK; i++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            toks[s][i] = i == 0 ? 1 : (int32_t)((r >> 33) % (uint64_t)V);
        }
    float *alone = malloc((size_t)NSEQ * NTOK * V * sizeof(float));
    float *mixed = malloc((size_t)NSEQ * NTOK * V * sizeof(float));
    assert_non_null(alone);
    assert_non_null(mixed);
    for (int s = 0; s < NSEQ; s++) run_single(toks[s], NTOK, dt, alone + (size_t)s * NTOK * V);

    pd_engine *e;
    pd_seq *seqs[NSEQ];
    assert_int_equal(pd_engine_create(model, &(pd_engine_params){NSEQ * NTOK, 0, dt}, &e, NULL),
                     PD_OK);
    for (int s = 0; s < NSEQ; s++)
        assert_int_equal(pd_seq_create_as(model, NTOK, dt, &seqs[s], NULL), PD_OK);
    /* sequence s advances by chunk[s][step] tokens per step */
    static const int chunk[NSEQ][4] = {{NTOK, 0, 0, 0}, {1, 7, 16, 0}, {10, 1, 1, 12}, {3, 3, 3, 15}};
    assert_int_equal(test_mixed_steps(e, NSEQ, seqs, &toks[0][0], NTOK, &chunk[0][0], 4, V, mixed),
                     0);
    for (int s = 0; s < NSEQ; s++) {
        assert_int_equal(seqs[s]->len, NTOK);
        float d = max_abs_diff(alone + (size_t)s * NTOK * V, mixed + (size_t)s * NTOK * V, NTOK * V);
        /* the contract is <= 1e-5; the batch-invariant products give 0 */
        if (d != 0.0f) fail_msg("sequence %d: max abs diff %g, expected bit-identical", s, (double)d);
        pd_seq_free(seqs[s]);
    }
    pd_engine_free(e);
    free(alone);
    free(mixed);
}

/* want_logits selects rows; the returned rows are those of the full run. */
static void test_want_logits_rows(void **state)
{
    (void)state;
    const int V = model->cfg.vocab_size;
    int32_t toks[6] = {1, 403, 407, 261, 378, 432};
    float *alone = malloc(6 * (size_t)V * sizeof(float));
    assert_non_null(alone);
    run_single(toks, 6, PD_KV_F32, alone);
    pd_engine *e;
    pd_seq *s;
    assert_int_equal(pd_engine_create(model, &(pd_engine_params){6, 0, PD_KV_F32}, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(model, 6, &s, NULL), PD_OK);
    pd_seq *ss[6] = {s, s, s, s, s, s};
    int32_t pos[6] = {0, 1, 2, 3, 4, 5};
    uint8_t want[6] = {0, 1, 0, 0, 0, 1};
    pd_batch b = {6, toks, ss, pos, want};
    const float *lg;
    assert_int_equal(pd_engine_step(e, &b, &lg, NULL), 2);
    assert_true(max_abs_diff(lg, alone + (size_t)1 * V, V) <= 1e-5f);
    assert_true(max_abs_diff(lg + V, alone + (size_t)5 * V, V) <= 1e-5f);
    pd_seq_free(s);
    pd_engine_free(e);
    free(alone);
}

static void test_bad_batches(void **state)
{
    (void)state;
    pd_engine *e;
    pd_seq *s;
    assert_int_equal(pd_engine_create(model, &(pd_engine_params){4, 0, PD_KV_F32}, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(model, 4, &s, NULL), PD_OK);
    pd_seq *ss[4] = {s, s, s, s};
    const float *lg;
    pd_err err;
    int32_t t_ok[4] = {1, 2, 3, 4}, t_bad[1] = {512}, t_neg[1] = {-1};
    int32_t p_gap[1] = {2}, p_cap[1] = {4}, p_jump[2] = {0, 2};
    pd_batch b_vocab = {1, t_bad, ss, (int32_t[]){0}, NULL};
    assert_int_equal(pd_engine_step(e, &b_vocab, &lg, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "vocabulary"));
    pd_batch b_neg = {1, t_neg, ss, (int32_t[]){0}, NULL};
    assert_int_equal(pd_engine_step(e, &b_neg, &lg, &err), PD_EINVAL);
    pd_batch b_gap = {1, t_ok, ss, p_gap, NULL};
    assert_int_equal(pd_engine_step(e, &b_gap, &lg, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "does not follow"));
    pd_batch b_cap = {1, t_ok, ss, p_cap, NULL};
    assert_int_equal(pd_engine_step(e, &b_cap, &lg, &err), PD_EINVAL);
    pd_batch b_jump = {2, t_ok, ss, p_jump, NULL};
    assert_int_equal(pd_engine_step(e, &b_jump, &lg, &err), PD_EINVAL);
    pd_batch b_big = {5, t_ok, ss, p_jump, NULL};
    assert_int_equal(pd_engine_step(e, &b_big, &lg, &err), PD_EINVAL);
    assert_int_equal(s->len, 0); /* nothing was touched */
    pd_seq *none[1] = {NULL};
    pd_batch b_null = {1, t_ok, none, (int32_t[]){0}, NULL};
    assert_int_equal(pd_engine_step(e, &b_null, &lg, &err), PD_EINVAL);
    pd_seq *tmp;
    assert_int_equal(pd_seq_create(model, 0, &tmp, &err), PD_EINVAL);
    assert_int_equal(pd_seq_create(model, model->cfg.seq_len + 1, &tmp, &err), PD_EINVAL);
    pd_seq_free(s);
    pd_engine_free(e);
}

#define PG_TOK 41 /* crosses two block boundaries (PD_KV_BLOCK 16) */
#define PG_PMAX 35

/* Paged cache == contiguous cache, bit for bit: for every prefix length
 * 0..PG_PMAX, three sequences share each step: a contiguous one and a
 * paged one with the same tokens (whose blocks are interleaved in the pool
 * with a third paged sequence's), advanced in chunks that start and end
 * inside and across blocks. Under F16 the contiguous sequence is given the
 * prefix as floats (rounded into its own copy) and the paged ones as
 * halves (borrowed): the same bits. */
static void test_paged_equals_contiguous(void **state)
{
    const pd_kv_dtype dt = dtype_of(state);
    const pd_config *c = &model->cfg;
    const int V = c->vocab_size;
    int32_t toks[3][PG_TOK];
    uint64_t r = 777;
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < PG_TOK; i++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            toks[s][i] = i == 0 ? 1 : (int32_t)((r >> 33) % (uint64_t)V);
        }
    memcpy(toks[1], toks[0], sizeof toks[0]);
    const size_t pn = (size_t)c->n_layers * c->n_kv_heads * PG_PMAX * c->head_dim;
    float *pk = malloc(pn * sizeof(float)), *pv = malloc(pn * sizeof(float));
    float *out = malloc((size_t)3 * PG_TOK * V * sizeof(float));
    uint16_t *hk = malloc(pn * sizeof *hk), *hv = malloc(pn * sizeof *hv);
    assert_non_null(hk);
    assert_non_null(hv);
    assert_non_null(pk);
    assert_non_null(pv);
    assert_non_null(out);
    pd_engine *e;
    pd_kvpool *pool;
    pd_err err;
    assert_int_equal(pd_engine_create(model, &(pd_engine_params){3 * PG_TOK, 0, dt}, &e, NULL),
                     PD_OK);
    /* room for the two paged sequences and nothing more */
    const int nb = pd_kvpool_blocks_for(PG_TOK);
    assert_int_equal(pd_kvpool_create_as(model, dt, 2 * (size_t)nb * pd_kvpool_block_bytes_as(model, dt),
                                         &pool, &err),
                     PD_OK);
    assert_int_equal(pool->n_blocks, 2 * nb);
    static const int chunk[3][4] = {{17, 1, 14, 9}, {17, 1, 14, 9}, {5, 27, 1, 8}};
    for (int P = 0; P <= PG_PMAX; P++) {
        /* a prefix of P slots (layout n_layers, n_kv_heads, P, head_dim) */
        const size_t n = (size_t)c->n_layers * c->n_kv_heads * P * c->head_dim;
        for (size_t i = 0; i < n; i++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            pk[i] = (float)((double)(r >> 40) / (double)(1 << 24) - 0.5);
            pv[i] = (float)((double)(r & 0xffffff) / (double)(1 << 24) - 0.5);
        }
        pd_seq *seqs[3];
        assert_int_equal(pd_seq_create_as(model, PG_TOK, dt, &seqs[0], NULL), PD_OK);
        assert_int_equal(pd_seq_create_paged(model, pool, PG_TOK, NULL, 0, &seqs[1], NULL), PD_OK);
        assert_int_equal(pd_seq_create_paged(model, pool, PG_TOK, NULL, 0, &seqs[2], NULL), PD_OK);
        pd_seq *extra;
        assert_int_equal(pd_seq_create_paged(model, pool, 1, NULL, 0, &extra, &err), PD_EBUSY);
        assert_int_equal(pd_kvpool_available(pool), 0);
        for (size_t i = 0; i < n; i++) {
            hk[i] = pd_f32_to_f16(pk[i]);
            hv[i] = pd_f32_to_f16(pv[i]);
        }
        for (int s = 0; s < 3; s++) {
            if (dt == PD_KV_F16 && s > 0)
                assert_int_equal(pd_seq_set_prefix_f16(seqs[s], P, P ? hk : NULL, P ? hv : NULL,
                                                       NULL),
                                 PD_OK);
            else
                assert_int_equal(pd_seq_set_prefix(seqs[s], P, P ? pk : NULL, P ? pv : NULL), PD_OK);
        }
        /* alternate the two paged sequences' blocks in the pool */
        for (int b = 1; b <= nb; b++) {
            int t = b * PD_KV_BLOCK < PG_TOK ? b * PD_KV_BLOCK : PG_TOK;
            pd_seq_grow(seqs[P % 2 ? 1 : 2], t);
            pd_seq_grow(seqs[P % 2 ? 2 : 1], t);
        }
        assert_int_equal(pool->n_free, 0);
        assert_int_equal(test_mixed_steps(e, 3, seqs, &toks[0][0], PG_TOK, &chunk[0][0], 4, V, out),
                         0);
        if (memcmp(out, out + (size_t)PG_TOK * V, (size_t)PG_TOK * V * sizeof(float)) != 0)
            fail_msg("prefix of %d slots: paged logits differ from contiguous ones", P);
        for (int s = 0; s < 3; s++) pd_seq_free(seqs[s]);
        assert_int_equal(pool->n_free, pool->n_blocks);
        assert_int_equal(pool->n_reserved, 0);
    }
    pd_kvpool_free(pool);
    pd_engine_free(e);
    free(pk);
    free(pv);
    free(hk);
    free(hv);
    free(out);
}

#define ACC_TOK 201 /* prompt + generated tokens compared (test_reference_greedy's) */
#define ACC_BOUND 0.005 /* max |F16 - F32| / (max - min of the F32 row), stated in config/README.md */

/* The F16 cache's accuracy: the logits of the same tokens with the KV in
 * F16 and in F32 (teacher-forced on the F32 greedy continuation of "Once
 * upon a time"), per row as a fraction of the F32 row's range, and the
 * greedy agreement of the two over ACC_TOK tokens, printed. The halves
 * keep 11 significant bits: every row stays within ACC_BOUND of its
 * range. */
static void test_f16_accuracy(void **state)
{
    (void)state;
    const int V = model->cfg.vocab_size;
    int32_t toks[ACC_TOK];
    memcpy(toks, ref_prompt, sizeof ref_prompt);
    memcpy(toks + 5, ref_out, (ACC_TOK - 5) * sizeof *toks);
    float *l32 = malloc((size_t)ACC_TOK * V * sizeof(float));
    float *l16 = malloc((size_t)ACC_TOK * V * sizeof(float));
    assert_non_null(l32);
    assert_non_null(l16);
    run_single(toks, ACC_TOK, PD_KV_F32, l32);
    run_single(toks, ACC_TOK, PD_KV_F16, l16);
    double worst = 0.0;
    int agree = 0, differ = 0;
    for (int i = 0; i < ACC_TOK; i++) {
        const float *a = l32 + (size_t)i * V, *b = l16 + (size_t)i * V;
        double lo = a[0], hi = a[0], d = 0.0;
        int am = 0, bm = 0;
        for (int j = 0; j < V; j++) {
            lo = a[j] < lo ? a[j] : lo;
            hi = a[j] > hi ? a[j] : hi;
            const double x = fabs((double)a[j] - (double)b[j]);
            d = x > d || x != x ? x : d;
            if (a[j] > a[am]) am = j;
            if (b[j] > b[bm]) bm = j;
            differ |= a[j] != b[j];
        }
        const double frac = d / (hi - lo);
        worst = frac > worst || frac != frac ? frac : worst;
        agree += am == bm;
    }
    /* greedy generation of ACC_TOK - 5 tokens with each cache */
    int32_t g[2][ACC_TOK - 5];
    for (int k = 0; k < 2; k++) {
        const pd_kv_dtype dt = k ? PD_KV_F16 : PD_KV_F32;
        pd_engine *e;
        pd_seq *s;
        assert_int_equal(pd_engine_create(model, &(pd_engine_params){64, 0, dt}, &e, NULL), PD_OK);
        assert_int_equal(pd_seq_create_as(model, ACC_TOK, dt, &s, NULL), PD_OK);
        pd_gen_params gp = {0};
        gp.max_tokens = ACC_TOK - 5;
        gp.sampling = pd_sampler_default_params();
        int n_out;
        assert_int_equal(pd_generate(e, model, s, ref_prompt, 5, &gp, g[k], ACC_TOK - 5, &n_out, NULL),
                         PD_FINISH_LENGTH);
        pd_seq_free(s);
        pd_engine_free(e);
    }
    int same = 0;
    while (same < ACC_TOK - 5 && g[0][same] == g[1][same]) same++;
    print_message("F16 KV vs F32 KV on stories260K: worst logit error %.5f of the row's range "
                  "(bound %.3f), argmax equal on %d/%d teacher-forced rows, greedy equal for "
                  "the first %d/%d tokens\n",
                  worst, ACC_BOUND, agree, ACC_TOK, same, ACC_TOK - 5);
    assert_true(differ); /* the cache really was F16 */
    assert_true(worst <= ACC_BOUND);
    assert_true(worst > 0.0);
    free(l32);
    free(l16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_greedy),
        DTYPE_TEST(test_batched_equals_single, f32),
        DTYPE_TEST(test_batched_equals_single, f16),
        cmocka_unit_test(test_want_logits_rows),
        cmocka_unit_test(test_bad_batches),
        DTYPE_TEST(test_paged_equals_contiguous, f32),
        DTYPE_TEST(test_paged_equals_contiguous, f16),
        cmocka_unit_test(test_f16_accuracy),
    };
    return cmocka_run_group_tests_name("engine", tests, setup, teardown);
}
