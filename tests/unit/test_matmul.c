/* test_matmul.c — pd_matmul against a double-precision reference, and its
 * batch invariance: a row's bits do not depend on the batch size, the row's
 * place in the batch, the thread count or the kernel (AVX2 vs portable). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/matmul.h"

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

static void fill(float *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) x[i] = frand(&seed);
}

static const int shapes[][3] = {{1, 64, 64},  {7, 172, 64}, {5, 64, 172}, {33, 100, 37},
                                {3, 5, 9},    {64, 768, 96}, {2, 1, 1},   {49, 13, 200}};

static void test_against_double_reference(void **state)
{
    (void)state;
    pd_pool *pool;
    assert_int_equal(pd_pool_create(2, &pool, NULL), PD_OK);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int T = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *in = malloc((size_t)T * K * 4), *W = malloc((size_t)N * K * 4);
        float *out = malloc((size_t)T * N * 4);
        assert_true(in && W && out);
        fill(in, (size_t)T * K, 1 + s);
        fill(W, (size_t)N * K, 100 + s);
        pd_matmul(pool, out, in, W, T, K, N);
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                double ref = 0, mag = 0;
                for (int k = 0; k < K; k++) {
                    ref += (double)in[(size_t)t * K + k] * W[(size_t)n * K + k];
                    mag += fabs((double)in[(size_t)t * K + k] * W[(size_t)n * K + k]);
                }
                /* float accumulation error bound, with margin */
                double tol = 4.0 * K * 6e-8 * mag + 1e-30;
                if (fabs(out[(size_t)t * N + n] - ref) > tol)
                    fail_msg("T=%d K=%d N=%d: out[%d][%d] = %.9g, reference %.9g", T, K, N, t, n,
                             (double)out[(size_t)t * N + n], ref);
            }
        free(in);
        free(W);
        free(out);
    }
    pd_pool_free(pool);
}

static void test_batch_invariance(void **state)
{
    (void)state;
    const int TMAX = 70, K = 172, N = 91;
    float *in = malloc((size_t)TMAX * K * 4), *W = malloc((size_t)N * K * 4);
    float *single = malloc((size_t)TMAX * N * 4), *out = malloc((size_t)TMAX * N * 4);
    float *port = malloc((size_t)TMAX * N * 4);
    assert_true(in && W && single && out && port);
    fill(in, (size_t)TMAX * K, 7);
    fill(W, (size_t)N * K, 8);
    for (int t = 0; t < TMAX; t++) pd_matmul(NULL, single + (size_t)t * N, in + (size_t)t * K, W, 1, K, N);
    pd_matmul_portable(port, in, W, TMAX, K, N);
    assert_memory_equal(port, single, (size_t)TMAX * N * 4);
    for (int threads = 1; threads <= 3; threads++) {
        pd_pool *pool;
        assert_int_equal(pd_pool_create(threads, &pool, NULL), PD_OK);
        for (int T = 1; T <= TMAX; T += 3) {
            /* rows [off, off + T) in one call: each equals its single-row result */
            int off = (T * 7) % (TMAX - T + 1);
            pd_matmul(pool, out, in + (size_t)off * K, W, T, K, N);
            if (memcmp(out, single + (size_t)off * N, (size_t)T * N * 4) != 0)
                fail_msg("threads %d, T %d at offset %d: rows differ from single-row runs",
                         threads, T, off);
        }
        pd_pool_free(pool);
    }
    free(in);
    free(W);
    free(single);
    free(out);
    free(port);
}

static void count_task(void *ctx, int task, int thread)
{
    int *hits = ctx;
    (void)thread;
    __atomic_fetch_add(&hits[task], 1, __ATOMIC_RELAXED);
}

static void test_pool_runs_every_task_once(void **state)
{
    (void)state;
    pd_pool *pool;
    assert_int_equal(pd_pool_create(3, &pool, NULL), PD_OK);
    assert_int_equal(pd_pool_threads(pool), 3);
    for (int n = 1; n < 50; n += 7) {
        int hits[64] = {0};
        for (int rep = 0; rep < 20; rep++) pd_pool_run(pool, count_task, hits, n);
        for (int i = 0; i < n; i++) assert_int_equal(hits[i], 20);
        for (int i = n; i < 64; i++) assert_int_equal(hits[i], 0);
    }
    pd_pool_free(pool);
    pd_pool_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_double_reference),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_pool_runs_every_task_once),
    };
    return cmocka_run_group_tests_name("matmul", tests, NULL, NULL);
}
