/* matmul.c — pd_matmul: splits the outputs into blocks that fit in cache,
 * spreads the blocks over the pool, and runs the best kernel the CPU has
 * (the typed kernels' AVX-512 or AVX2 F32 tiles, qmatmul_simd.h, else the
 * portable one: the same bits, see matmul.h). */
#include "prefixd/matmul.h"

#include <math.h>
#include <stddef.h>

void pd__matmul_block_portable(float *out, const float *in, const float *W, int K, int N,
                               int t0, int t1, int n0, int n1)
{
    for (int t = t0; t < t1; t++) {
        const float *x = in + (size_t)t * K;
        for (int n = n0; n < n1; n++) {
            float l[8] = {0};
            pd__lanes_fma(l, x, W + (size_t)n * K, K);
            out[(size_t)t * N + n] = pd__lanes_sum(l);
        }
    }
}

int pd_matmul_uses_avx2(void)
{
    static int cached = -1; /* benign race: every thread computes the same value */
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}

typedef struct job {
    float *out;
    const float *in;
    pd_wmat W; /* an F32 view: the typed kernels keep pd_matmul's order */
    int T, K, N;
    int rows_per_task; /* outputs per task */
    int isa; /* pd_wmatmul_isa() */
} job;

/* Outputs per block: about 256 KB of weights, a multiple of 4. */
static int block_rows(int K, int N)
{
    int r = (int)((256 * 1024) / ((size_t)K * sizeof(float)));
    r &= ~3;
    if (r < 4) r = 4;
    return r < N ? r : N;
}

static void run_task(void *ctx, int task, int thread)
{
    (void)thread;
    const job *j = ctx;
    int n0 = task * j->rows_per_task;
    int n1 = n0 + j->rows_per_task < j->N ? n0 + j->rows_per_task : j->N;
    /* token tiles inside the block keep the weight block hot in cache */
    const int TB = 48;
    for (int t0 = 0; t0 < j->T; t0 += TB) {
        int t1 = t0 + TB < j->T ? t0 + TB : j->T;
        if (j->isa >= PD_ISA_AVX512)
            pd__qmatmul_block_avx512(j->out, j->in, NULL, &j->W, t0, t1, n0, n1);
        else if (j->isa >= PD_ISA_AVX2)
            pd__qmatmul_block_avx2(j->out, j->in, NULL, &j->W, t0, t1, n0, n1);
        else
            pd__matmul_block_portable(j->out, j->in, j->W.data, j->K, j->N, t0, t1, n0, n1);
    }
}

void pd_matmul(pd_pool *pool, float *out, const float *in, const float *W, int T, int K, int N)
{
    job j = {out, in, pd_wmat_f32(W, N, K), T, K, N, block_rows(K, N), pd_wmatmul_isa()};
    int n_tasks = (N + j.rows_per_task - 1) / j.rows_per_task;
    int threads = pd_pool_threads(pool);
    /* small products: not worth waking the workers */
    if ((double)T * K * N < 65536.0) pool = NULL;
    else if (n_tasks < 4 * threads) {
        /* more, smaller tasks so every thread gets a share */
        int r = (N + 4 * threads - 1) / (4 * threads);
        r = (r + 3) & ~3;
        j.rows_per_task = r > 4 ? r : 4;
        n_tasks = (N + j.rows_per_task - 1) / j.rows_per_task;
    }
    pd_pool_run(pool, run_task, &j, n_tasks);
}

void pd_matmul_portable(float *out, const float *in, const float *W, int T, int K, int N)
{
    pd__matmul_block_portable(out, in, W, K, N, 0, T, 0, N);
}
