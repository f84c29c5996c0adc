/* test_qmatmul.c — pd_wmatmul on every weight type: against a double
 * product of the dequantised weights, portable == AVX2 == AVX-512 bit for
 * bit, batch- and thread-invariance, the fused pd_wmatmul_n, the transposed
 * product pd_wmatmul_t; and engine logits of a model of each type alone vs
 * in a mixed batch of sequences with different prefixes (bit-identical). */
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
#include "prefixd/matmul.h"
#include "prefixd/threadpool.h"

#include "testutil.h"

static const int types[] = {PD_Q_F32,  PD_Q_F16,  PD_Q_BF16, PD_Q_Q8_0, PD_Q_Q4_0,
                            PD_Q_Q4_1, PD_Q_Q5_0, PD_Q_Q5_1, PD_Q_Q2_K, PD_Q_Q3_K,
                            PD_Q_Q4_K, PD_Q_Q5_K, PD_Q_Q6_K};
#define N_TYPES ((int)(sizeof types / sizeof *types))

static const char *tname(int type)
{
    switch (type) {
    case PD_Q_F32: return "F32";
    case PD_Q_F16: return "F16";
    case PD_Q_BF16: return "BF16";
    case PD_Q_Q8_0: return "Q8_0";
    case PD_Q_Q4_0: return "Q4_0";
    case PD_Q_Q4_1: return "Q4_1";
    case PD_Q_Q5_0: return "Q5_0";
    case PD_Q_Q5_1: return "Q5_1";
    case PD_Q_Q2_K: return "Q2_K";
    case PD_Q_Q3_K: return "Q3_K";
    case PD_Q_Q4_K: return "Q4_K";
    case PD_Q_Q5_K: return "Q5_K";
    case PD_Q_Q6_K: return "Q6_K";
    default: return "?";
    }
}

/* A random matrix of type (rows x cols) in an owned buffer. */
static pd_wmat make_wmat(int type, int rows, int cols, uint64_t *seed, void **buf)
{
    *buf = malloc(test_row_bytes(type, cols) * (size_t)rows + 1);
    assert_non_null(*buf);
    return test_wmat_fill(*buf, type, rows, cols, 1.0f, seed);
}

static float *rand_floats(size_t n, uint64_t *seed)
{
    float *x = malloc(n * sizeof *x + 1);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = test_urand(seed);
    return x;
}

/* The dequantised weights of W (rows x cols floats). */
static float *dequant_all(const pd_wmat *W)
{
    float *w = malloc((size_t)W->rows * W->cols * sizeof *w);
    assert_non_null(w);
    for (int r = 0; r < W->rows; r++) pd_wmat_row_f32(W, r, w + (size_t)r * W->cols);
    return w;
}

/* Shapes: K a multiple of the type's block (F32/F16/BF16 also take a tail
 * of K % 8 != 0); N not a multiple of any tile. */
static int shape_k(int type, int i)
{
    int bs = test_block_size(type);
    if (bs == 1) return i == 0 ? 37 : 300;
    if (bs == 32) return i == 0 ? 96 : 544;
    return i == 0 ? 256 : 768;
}

/* x as the kernels see it: rounded to 8 bits per block (reference quantiser,
 * quant.h) for the types of the integer path, else unchanged. */
static void act_rounded(int type, const float *x, float *xr, int T, int K)
{
    const int act = pd_wmat_act_type(type);
    if (act < 0) {
        memcpy(xr, x, (size_t)T * K * sizeof *x);
        return;
    }
    unsigned char *q = malloc((size_t)K * 2 + 1024);
    assert_non_null(q);
    for (int t = 0; t < T; t++) {
        pd_quant_quantize_row(act, x + (size_t)t * K, q, K);
        pd_quant_dequantize_row(act, q, xr + (size_t)t * K, K);
    }
    free(q);
}

/* out vs Σ x·w in double over the dequantised weights (the reference
 * dequantiser, quant.h) and the input as rounded for the kernel: the float
 * error of 8 lane sums, or of one product per block, is at most about
 * (K/8 + 3) ulps of Σ|x·w|. Also: the 8-bit rounding of the input moves the
 * result by no more than its bound (half a step per input). */
static void test_against_double(void **state)
{
    (void)state;
    uint64_t seed = 1;
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = types[ti];
        for (int si = 0; si < 2; si++) {
            const int K = shape_k(type, si), N = 37, T = 11;
            void *buf;
            pd_wmat W = make_wmat(type, N, K, &seed, &buf);
            assert_true(pd_wmat_supported(&W));
            float *x = rand_floats((size_t)T * K, &seed), *out = malloc((size_t)T * N * 4);
            float *xr = malloc((size_t)T * K * 4);
            assert_true(out && xr);
            float *w = dequant_all(&W);
            act_rounded(type, x, xr, T, K);
            pd_wmatmul(NULL, out, x, &W, T);
            const int bs = pd_wmat_act_type(type) == PD_Q_Q8_K ? 256 : 32;
            /* the float path: no rounding of the input */
            float *outf = malloc((size_t)T * N * 4);
            assert_non_null(outf);
            pd_wmatmul_float(NULL, outf, x, &W, T);
            for (int t = 0; t < T; t++)
                for (int n = 0; n < N; n++) {
                    double s = 0, a = 0, s0 = 0, bound = 0;
                    for (int k = 0; k < K; k++) {
                        double p = (double)xr[(size_t)t * K + k] * w[(size_t)n * K + k];
                        s += p;
                        a += fabs(p);
                        s0 += (double)x[(size_t)t * K + k] * w[(size_t)n * K + k];
                    }
                    double tol = (K / 8.0 + 3) * ldexp(1.0, -24) * a + 1e-30;
                    double got = out[(size_t)t * N + n];
                    if (fabs(got - s) > tol)
                        fail_msg("%s K=%d: out[%d][%d] = %.9g, double %.9g (tol %.3g)",
                                 tname(type), K, t, n, got, s, tol);
                    /* rounding error: half a step (max|x| of the block / 127) per input */
                    for (int b = 0; pd_wmat_act_type(type) >= 0 && b < K / bs; b++) {
                        double mx = 0, wsum = 0;
                        for (int k = b * bs; k < (b + 1) * bs; k++) {
                            mx = fmax(mx, fabs(x[(size_t)t * K + k]));
                            wsum += fabs(w[(size_t)n * K + k]);
                        }
                        bound += 0.5 * 1.001 * mx / 127 * wsum;
                    }
                    if (fabs(s - s0) > bound + 1e-12)
                        fail_msg("%s: rounding moved out[%d][%d] by %g > %g", tname(type), t, n,
                                 fabs(s - s0), bound);
                    double gf = outf[(size_t)t * N + n];
                    if (fabs(gf - s0) > tol + (K / 8.0 + 3) * ldexp(1.0, -24) * fabs(s0))
                        fail_msg("%s K=%d float path: out[%d][%d] = %.9g, double %.9g",
                                 tname(type), K, t, n, gf, s0);
                }
            free(outf);
            free(buf);
            free(x);
            free(xr);
            free(out);
            free(w);
        }
    }
}

/* Every instruction set this CPU has gives the portable kernel's bits, for a
 * single token and for batches with partial tiles. */
static void test_isas_identical(void **state)
{
    (void)state;
    uint64_t seed = 2;
    const int best = pd_wmatmul_isa();
    print_message("kernels: portable%s%s\n", best >= PD_ISA_AVX2 ? ", AVX2" : "",
                  best >= PD_ISA_AVX512 ? ", AVX-512" : "");
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = types[ti];
        const int K = shape_k(type, 1), N = 53;
        void *buf;
        pd_wmat W = make_wmat(type, N, K, &seed, &buf);
        static const int Ts[] = {1, 2, 7, 50};
        for (int i = 0; i < 4; i++) {
            const int T = Ts[i];
            float *x = rand_floats((size_t)T * K, &seed);
            float *ref = malloc((size_t)T * N * 4), *got = malloc((size_t)T * N * 4);
            assert_true(ref && got);
            /* both paths of the integer types: rounded input and float */
            for (int fp = 0; fp < (pd_wmat_act_type(type) >= 0 ? 2 : 1); fp++) {
                pd_wmatmul_isa_run(PD_ISA_PORTABLE, fp, ref, x, &W, T);
                for (int isa = PD_ISA_AVX2; isa <= best; isa++) {
                    memset(got, 0xff, (size_t)T * N * 4);
                    pd_wmatmul_isa_run(isa, fp, got, x, &W, T);
                    if (memcmp(ref, got, (size_t)T * N * 4) != 0)
                        fail_msg("%s T=%d float path %d: ISA %d differs from the portable kernel",
                                 tname(type), T, fp, isa);
                }
            }
            free(x);
            free(ref);
            free(got);
        }
        free(buf);
    }
}

/* A token's outputs are the same bits alone, at any row of any batch size,
 * on any number of threads; pd_wmatmul_n gives each product's bits. */
static void test_batch_and_thread_invariance(void **state)
{
    (void)state;
    uint64_t seed = 3;
    pd_pool *pool;
    assert_int_equal(pd_pool_create(3, &pool, NULL), PD_OK);
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = types[ti];
        const int K = shape_k(type, 1), N = 301, TMAX = 67;
        void *buf, *buf2;
        pd_wmat W = make_wmat(type, N, K, &seed, &buf);
        pd_wmat W2 = make_wmat(type, 45, K, &seed, &buf2);
        float *x = rand_floats((size_t)TMAX * K, &seed);
        float *single = malloc((size_t)TMAX * N * 4), *out = malloc((size_t)TMAX * N * 4);
        float *o1 = malloc((size_t)TMAX * N * 4), *o2 = malloc((size_t)TMAX * 45 * 4);
        float *r2 = malloc((size_t)TMAX * 45 * 4);
        assert_true(single && out && o1 && o2 && r2);
        for (int t = 0; t < TMAX; t++)
            pd_wmatmul(NULL, single + (size_t)t * N, x + (size_t)t * K, &W, 1);
        static const int sizes[][2] = {{0, 67}, {5, 3}, {20, 47}, {66, 1}, {1, 49}};
        for (int i = 0; i < 5; i++) {
            int off = sizes[i][0], T = sizes[i][1];
            pd_wmatmul(pool, out, x + (size_t)off * K, &W, T);
            if (memcmp(out, single + (size_t)off * N, (size_t)T * N * 4) != 0)
                fail_msg("%s: batch of %d at %d differs from single tokens", tname(type), T, off);
        }
        /* fused: two products of one input in one parallel region */
        float *outs[2] = {o1, o2};
        const pd_wmat *Ws[2] = {&W, &W2};
        pd_wmatmul_n(pool, 2, outs, x, Ws, TMAX);
        pd_wmatmul(NULL, r2, x, &W2, TMAX);
        assert_memory_equal(o1, single, (size_t)TMAX * N * 4);
        assert_memory_equal(o2, r2, (size_t)TMAX * 45 * 4);
        free(buf);
        free(buf2);
        free(x);
        free(single);
        free(out);
        free(o1);
        free(o2);
        free(r2);
    }
    pd_pool_free(pool);
}

/* dX = dY·W + beta·dX against double, with quantised W staying quantised. */
static void test_transposed(void **state)
{
    (void)state;
    uint64_t seed = 4;
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = types[ti];
        const int K = shape_k(type, 1), N = 150, R = 9;
        void *buf;
        pd_wmat W = make_wmat(type, N, K, &seed, &buf);
        float *w = dequant_all(&W);
        float *dy = rand_floats((size_t)R * N, &seed), *dx = rand_floats((size_t)R * K, &seed);
        float *dx0 = malloc((size_t)R * K * 4);
        float *scratch = malloc(pd_wmatmul_t_scratch(&W) * 4 + 4);
        assert_true(dx0 && scratch);
        memcpy(dx0, dx, (size_t)R * K * 4);
        pd_wmatmul_t(dx, dy, &W, R, 0.5f, scratch);
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++) {
                double s = 0.5 * dx0[(size_t)r * K + k], a = fabs(s);
                for (int n = 0; n < N; n++) {
                    double p = (double)dy[(size_t)r * N + n] * w[(size_t)n * K + k];
                    s += p;
                    a += fabs(p);
                }
                double got = dx[(size_t)r * K + k];
                if (fabs(got - s) > 1e-5 * a + 1e-30)
                    fail_msg("%s: dX[%d][%d] = %.9g, double %.9g", tname(type), r, k, got, s);
            }
        free(buf);
        free(w);
        free(dy);
        free(dx);
        free(dx0);
        free(scratch);
    }
}

/* ---- engine: one model per type, alone vs mixed batches ---- */

#define NSEQ 3
#define NTOK 10
#define P_SLOTS 4

static void run_alone(const pd_model *m, pd_seq *s, const int32_t *toks, float *out)
{
    const int V = m->cfg.vocab_size;
    pd_engine *e;
    assert_int_equal(pd_engine_create(m, &(pd_engine_params){1, 1, PD_KV_F32}, &e, NULL), PD_OK);
    for (int i = 0; i < NTOK; i++) {
        pd_seq *ss[1] = {s};
        int32_t pos[1] = {i};
        pd_batch b = {1, toks + i, ss, pos, NULL};
        const float *lg;
        assert_int_equal(pd_engine_step(e, &b, &lg, NULL), 1);
        memcpy(out + (size_t)i * V, lg, (size_t)V * 4);
    }
    pd_engine_free(e);
}

static void test_engine_batch_invariance(void **state)
{
    (void)state;
    for (int ti = 1; ti < N_TYPES; ti++) { /* F32 is test_engine's */
        const int type = types[ti];
        pd_model *m = test_model_synth(type, 100 + (uint64_t)ti);
        assert_non_null(m);
        const pd_config *c = &m->cfg;
        const int V = c->vocab_size;
        uint64_t seed = 7;
        /* a different prefix per sequence (the tasks), none for the last */
        const size_t np = (size_t)c->n_layers * c->n_kv_heads * P_SLOTS * c->head_dim;
        float *pk = rand_floats(np * NSEQ, &seed), *pv = rand_floats(np * NSEQ, &seed);
        int32_t toks[NSEQ][NTOK];
        for (int s = 0; s < NSEQ; s++)
            for (int i = 0; i < NTOK; i++) toks[s][i] = (int32_t)(test_rng(&seed) % V);
        float *alone = malloc((size_t)NSEQ * NTOK * V * 4), *mixed = malloc((size_t)NSEQ * NTOK * V * 4);
        assert_true(alone && mixed);
        pd_seq *seqs[NSEQ];
        for (int s = 0; s < NSEQ; s++) {
            assert_int_equal(pd_seq_create(m, NTOK, &seqs[s], NULL), PD_OK);
            if (s < NSEQ - 1) pd_seq_set_prefix(seqs[s], P_SLOTS, pk + np * s, pv + np * s);
            run_alone(m, seqs[s], toks[s], alone + (size_t)s * NTOK * V);
            pd_seq_reset(seqs[s]);
        }
        pd_engine *e;
        assert_int_equal(pd_engine_create(m, &(pd_engine_params){NSEQ * NTOK, 2, PD_KV_F32}, &e, NULL),
                         PD_OK);
        static const int chunk[NSEQ][3] = {{NTOK, 0, 0}, {1, 6, 3}, {4, 1, 5}};
        assert_int_equal(test_mixed_steps(e, NSEQ, seqs, &toks[0][0], NTOK, &chunk[0][0], 3, V,
                                          mixed),
                         0);
        for (int s = 0; s < NSEQ; s++) {
            const float *a = alone + (size_t)s * NTOK * V, *b = mixed + (size_t)s * NTOK * V;
            for (size_t i = 0; i < (size_t)NTOK * V; i++)
                assert_true(isfinite(a[i]));
            if (memcmp(a, b, (size_t)NTOK * V * 4) != 0)
                fail_msg("%s: sequence %d's logits differ alone and in a mixed batch",
                         tname(type), s);
            pd_seq_free(seqs[s]);
        }
        pd_engine_free(e);
        free(alone);
        free(mixed);
        free(pk);
        free(pv);
        pd_model_free(m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_double),
        cmocka_unit_test(test_isas_identical),
        cmocka_unit_test(test_batch_and_thread_invariance),
        cmocka_unit_test(test_transposed),
        cmocka_unit_test(test_engine_batch_invariance),
    };
    return cmocka_run_group_tests_name("qmatmul", tests, NULL, NULL);
}
