/* qmatmul.c — pd_wmatmul: products with typed weights (F32, F16, BF16 and
 * ggml's block formats), the portable kernel, the choice of instruction set,
 * the split of the work over the pool, and the transposed product of the
 * backward pass.
 *
 * Operation order (every kernel, matmul.h): the weights of a row are
 * dequantised (qmatmul_deq.h) in chunks of QMM_KC and multiplied in with the
 * same eight lane sums as pd_matmul — lane j sums k ≡ j (mod 8) with fused
 * multiply-adds in increasing k — then the same reduction tree. The chunks
 * only decide when the weights are converted, never the order of the sums. */
#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "prefixd/matmul.h"
#include "qmatmul_deq.h"

#define QMM_KC 256 /* chunk of a row dequantised at once: a multiple of every block */

const float *pd_wmat_f32_data(const pd_wmat *W)
{
    PD_ASSERT(W->type == PD_Q_F32);
    return W->data;
}

int pd_wmat_supported(const pd_wmat *W)
{
    int bs = pd__deq_block(W->type);
    return bs > 0 && W->cols > 0 && W->cols % bs == 0;
}

void pd__qmatmul_block_portable(float *out, const float *in, const pd_wmat *W, int t0, int t1,
                                int n0, int n1)
{
    const int K = W->cols, N = W->rows;
    if (W->type == PD_Q_F32) {
        pd__matmul_block_portable(out, in, W->data, K, N, t0, t1, n0, n1);
        return;
    }
    PD_ASSERT(t1 - t0 <= PD__QMM_TB);
    float wbuf[QMM_KC];
    float acc[PD__QMM_TB][8];
    for (int n = n0; n < n1; n++) {
        memset(acc, 0, sizeof acc);
        for (int kc = 0; kc < K; kc += QMM_KC) {
            const int kn = K - kc < QMM_KC ? K - kc : QMM_KC;
            pd__deq_span(W, n, kc, kn, wbuf);
            for (int t = t0; t < t1; t++)
                pd__lanes_fma(acc[t - t0], in + (size_t)t * K + kc, wbuf, kn);
        }
        for (int t = t0; t < t1; t++) out[(size_t)t * N + n] = pd__lanes_sum(acc[t - t0]);
    }
}

int pd_wmatmul_isa(void)
{
    static int cached = -1; /* benign race: every thread computes the same value */
    if (cached < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("f16c");
        int avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                     __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                     __builtin_cpu_supports("avx512dq");
        cached = avx512 ? PD_ISA_AVX512 : avx2 ? PD_ISA_AVX2 : PD_ISA_PORTABLE;
    }
    return cached;
}

static void run_block(int isa, float *out, const float *in, const pd_wmat *W, int t0, int t1,
                      int n0, int n1)
{
    if (W->type == PD_Q_F32) {
        /* pd_matmul's kernels: an F32 view keeps pd_matmul's bits */
        if (isa >= PD_ISA_AVX2)
            pd__matmul_block_avx2(out, in, W->data, W->cols, W->rows, t0, t1, n0, n1);
        else
            pd__matmul_block_portable(out, in, W->data, W->cols, W->rows, t0, t1, n0, n1);
        return;
    }
    switch (isa) {
    case PD_ISA_AVX512: pd__qmatmul_block_avx512(out, in, W, t0, t1, n0, n1); break;
    case PD_ISA_AVX2: pd__qmatmul_block_avx2(out, in, W, t0, t1, n0, n1); break;
    default: pd__qmatmul_block_portable(out, in, W, t0, t1, n0, n1); break;
    }
}

/* Every product of one parallel region: task ranges [first[i], first[i + 1])
 * belong to product i. */
#define QMM_MAX_N 4
typedef struct job {
    int n, T, isa;
    float *out[QMM_MAX_N];
    const float *in;
    const pd_wmat *W[QMM_MAX_N];
    int rows_per_task[QMM_MAX_N];
    int first[QMM_MAX_N + 1];
} job;

static void run_task(void *ctx, int task, int thread)
{
    (void)thread;
    const job *j = ctx;
    int i = 0;
    while (task >= j->first[i + 1]) i++;
    const pd_wmat *W = j->W[i];
    int n0 = (task - j->first[i]) * j->rows_per_task[i];
    int n1 = n0 + j->rows_per_task[i] < W->rows ? n0 + j->rows_per_task[i] : W->rows;
    /* token tiles inside the block keep the weight block hot in cache */
    for (int t0 = 0; t0 < j->T; t0 += PD__QMM_TB) {
        int t1 = t0 + PD__QMM_TB < j->T ? t0 + PD__QMM_TB : j->T;
        run_block(j->isa, j->out[i], j->in, W, t0, t1, n0, n1);
    }
}

/* Outputs per task: about 256 KB of weights, a multiple of 16, and at least
 * 4 tasks per thread over the whole region. */
static int task_rows(const pd_wmat *W, int threads, size_t region_rows)
{
    size_t r = (256 * 1024) / (W->row_bytes ? W->row_bytes : 1);
    size_t share = (region_rows + 4 * (size_t)threads - 1) / (4 * (size_t)threads);
    if (r > share) r = share;
    r = (r + 15) & ~(size_t)15;
    if (r < 16) r = 16;
    return r < (size_t)W->rows ? (int)r : W->rows;
}

void pd_wmatmul_n(pd_pool *pool, int n, float *const *outs, const float *in,
                  const pd_wmat *const *Ws, int T)
{
    PD_ASSERT(n >= 1 && n <= QMM_MAX_N);
    job j = {.n = n, .T = T, .isa = pd_wmatmul_isa(), .in = in};
    double work = 0;
    size_t rows = 0;
    for (int i = 0; i < n; i++) {
        PD_ASSERT(pd_wmat_supported(Ws[i]) && Ws[i]->cols == Ws[0]->cols);
        work += (double)T * Ws[i]->cols * Ws[i]->rows;
        rows += (size_t)Ws[i]->rows;
    }
    int threads = pd_pool_threads(pool);
    if (work < 65536.0) pool = NULL; /* small products: not worth waking the workers */
    for (int i = 0; i < n; i++) {
        j.out[i] = outs[i];
        j.W[i] = Ws[i];
        j.rows_per_task[i] = task_rows(Ws[i], threads, rows);
        j.first[i + 1] = j.first[i] + (Ws[i]->rows + j.rows_per_task[i] - 1) / j.rows_per_task[i];
    }
    pd_pool_run(pool, run_task, &j, j.first[n]);
}

void pd_wmatmul(pd_pool *pool, float *out, const float *in, const pd_wmat *W, int T)
{
    if (W->type == PD_Q_F32) { /* exactly pd_matmul, tasks and all */
        pd_matmul(pool, out, in, W->data, T, W->cols, W->rows);
        return;
    }
    pd_wmatmul_n(pool, 1, &out, in, &W, T);
}

void pd_wmatmul_isa_run(int isa, float *out, const float *in, const pd_wmat *W, int T)
{
    PD_ASSERT(isa >= 0 && isa <= pd_wmatmul_isa() && pd_wmat_supported(W));
    for (int t0 = 0; t0 < T; t0 += PD__QMM_TB) {
        int t1 = t0 + PD__QMM_TB < T ? t0 + PD__QMM_TB : T;
        run_block(isa, out, in, W, t0, t1, 0, W->rows);
    }
}

void pd_wmatmul_portable(float *out, const float *in, const pd_wmat *W, int T)
{
    pd_wmatmul_isa_run(PD_ISA_PORTABLE, out, in, W, T);
}

/* ---- the transposed product (backward pass) ---- */

#define QMM_T_BAND 64 /* rows of W dequantised per sgemm */

size_t pd_wmatmul_t_scratch(const pd_wmat *W)
{
    return W->type == PD_Q_F32 ? 0 : (size_t)QMM_T_BAND * (size_t)W->cols;
}

void pd_wmatmul_t(float *dX, const float *dY, const pd_wmat *W, int R, float beta,
                  float *scratch)
{
    const int N = W->rows, K = W->cols;
    if (W->type == PD_Q_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, K, N, 1.0f, dY, N, W->data,
                    K, beta, dX, K);
        return;
    }
    PD_ASSERT(scratch);
    /* dX = beta·dX + Σ_bands dY[:, band] · W[band, :] */
    for (int r0 = 0; r0 < N; r0 += QMM_T_BAND) {
        int nb = N - r0 < QMM_T_BAND ? N - r0 : QMM_T_BAND;
        for (int r = 0; r < nb; r++) pd__deq_span(W, r0 + r, 0, K, scratch + (size_t)r * K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, K, nb, 1.0f, dY + r0, N,
                    scratch, K, r0 == 0 ? beta : 1.0f, dX, K);
    }
}
