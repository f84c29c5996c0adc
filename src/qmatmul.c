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
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/half.h"
#include "prefixd/matmul.h"
#include "qmatmul_deq.h"
#include "qmatmul_int.h"

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

/* ---- the integer path (qmatmul_int.h), one output at a time ---- */

static float dot_q8_0(const pd_block_q8_0 *w, const pd_block_q8_0 *x, int nb)
{
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        int32_t S = 0;
        for (int i = 0; i < 32; i++) S += (int32_t)w[b].qs[i] * x[b].qs[i];
        acc = fmaf(deq_h(w[b].d) * deq_h(x[b].d), (float)S, acc);
    }
    return acc;
}

static float dot_q4_0(const pd_block_q4_0 *w, const pd_block_q8_0 *x, int nb)
{
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        int32_t S = 0;
        for (int i = 0; i < 16; i++) {
            S += ((w[b].qs[i] & 15) - 8) * (int32_t)x[b].qs[i];
            S += ((w[b].qs[i] >> 4) - 8) * (int32_t)x[b].qs[i + 16];
        }
        acc = fmaf(deq_h(w[b].d) * deq_h(x[b].d), (float)S, acc);
    }
    return acc;
}

/* Q4_K and Q5_K (qh NULL for Q4_K) */
static float dot_q45_K(const pd_block_q4_K *w4, const pd_block_q5_K *w5,
                       const pd_block_q8_K *x, int nb)
{
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        const uint8_t *scales = w4 ? w4[b].scales : w5[b].scales;
        const uint8_t *qs = w4 ? w4[b].qs : w5[b].qs, *qh = w4 ? NULL : w5[b].qh;
        const pd_half hd = w4 ? w4[b].d : w5[b].d, hm = w4 ? w4[b].dmin : w5[b].dmin;
        int32_t S = 0, M = 0;
        for (int s = 0; s < 8; s++) {
            int sc, mn, isum = 0;
            deq_k4_scale(scales, s, &sc, &mn);
            for (int l = 0; l < 32; l++) {
                int q = (qs[32 * (s / 2) + l] >> (4 * (s & 1))) & 15;
                if (qh) q |= ((qh[l] >> s) & 1) << 4;
                isum += q * x[b].qs[32 * s + l];
            }
            S += sc * isum;
            M += mn * (x[b].bsums[2 * s] + x[b].bsums[2 * s + 1]);
        }
        acc = fmaf(x[b].d * deq_h(hd), (float)S, acc);
        acc = fmaf(-(x[b].d * deq_h(hm)), (float)M, acc);
    }
    return acc;
}

static float dot_q6_K(const pd_block_q6_K *w, const pd_block_q8_K *x, int nb)
{
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        int32_t S = 0;
        for (int s = 0; s < 16; s++) {
            int isum = 0;
            for (int i = 0; i < 16; i++) {
                int e = 16 * s + i, half = e / 128, quarter = (e % 128) / 32, l = e % 32;
                int lo = (w[b].ql[64 * half + 32 * (quarter & 1) + l] >> (4 * (quarter >> 1))) & 15;
                int hi = (w[b].qh[32 * half + l] >> (2 * quarter)) & 3;
                isum += ((lo | (hi << 4)) - 32) * x[b].qs[e];
            }
            S += w[b].scales[s] * isum;
        }
        acc = fmaf(x[b].d * deq_h(w[b].d), (float)S, acc);
    }
    return acc;
}

static float dot_int_portable(const pd_wmat *W, int r, const void *x)
{
    const void *w = (const char *)W->data + (size_t)r * W->row_bytes;
    switch (W->type) {
    case PD_Q_Q8_0: return dot_q8_0(w, x, W->cols / 32);
    case PD_Q_Q4_0: return dot_q4_0(w, x, W->cols / 32);
    case PD_Q_Q4_K: return dot_q45_K(w, NULL, x, W->cols / 256);
    case PD_Q_Q5_K: return dot_q45_K(NULL, w, x, W->cols / 256);
    case PD_Q_Q6_K: return dot_q6_K(w, x, W->cols / 256);
    default: PD_ASSERT(0 && "not an integer-path type"); return 0.0f;
    }
}

void pd__qmatmul_block_portable(float *out, const float *in, const void *xq, const pd_wmat *W,
                                int t0, int t1, int n0, int n1)
{
    const int K = W->cols, N = W->rows;
    if (W->type == PD_Q_F32) {
        pd__matmul_block_portable(out, in, W->data, K, N, t0, t1, n0, n1);
        return;
    }
    if (xq) {
        const size_t xb = pd__qint_row_bytes(pd__qint_act(W->type), K);
        for (int t = t0; t < t1; t++)
            for (int n = n0; n < n1; n++)
                out[(size_t)t * N + n] = dot_int_portable(W, n, (const char *)xq + (size_t)t * xb);
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

int pd_wmat_act_type(int type)
{
    return pd__qint_act(type);
}

int pd_wmatmul_isa(void)
{
    static int cached = -1; /* benign race: every thread computes the same value */
    if (cached < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   pd_cpu_has_f16c();
        int avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                     __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                     __builtin_cpu_supports("avx512dq");
        cached = avx512 ? PD_ISA_AVX512 : avx2 ? PD_ISA_AVX2 : PD_ISA_PORTABLE;
    }
    return cached;
}

static void run_block(int isa, float *out, const float *in, const void *xq, const pd_wmat *W,
                      int t0, int t1, int n0, int n1)
{
    switch (isa) {
    case PD_ISA_AVX512: pd__qmatmul_block_avx512(out, in, xq, W, t0, t1, n0, n1); break;
    case PD_ISA_AVX2: pd__qmatmul_block_avx2(out, in, xq, W, t0, t1, n0, n1); break;
    default: pd__qmatmul_block_portable(out, in, xq, W, t0, t1, n0, n1); break;
    }
}

/* Every product of one parallel region: task ranges [first[i], first[i + 1])
 * belong to product i. */
#define QMM_MAX_N 4
typedef struct job {
    int n, T, isa;
    float *out[QMM_MAX_N];
    const float *in;
    const void *xq[QMM_MAX_N]; /* the input in each product's activation format, or NULL */
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
        run_block(j->isa, j->out[i], j->in, j->xq[i], W, t0, t1, n0, n1);
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

/* ---- the input rounded to 8 bits (integer path) ----
 *
 * Each calling thread keeps one buffer, grown when a larger input comes (so
 * steady serving allocates nothing) and freed when the thread ends. */

static pthread_key_t act_key;
static pthread_once_t act_once = PTHREAD_ONCE_INIT;
static int act_key_ok;

static void act_key_make(void)
{
    act_key_ok = pthread_key_create(&act_key, free) == 0;
}

typedef struct act_buf {
    size_t cap;
    unsigned char data[];
} act_buf;

/* A buffer of at least n bytes for this thread, or NULL. */
static unsigned char *act_scratch(size_t n)
{
    pthread_once(&act_once, act_key_make);
    if (!act_key_ok) return NULL;
    act_buf *b = pthread_getspecific(act_key);
    if (b && b->cap >= n) return b->data;
    act_buf *nb = malloc(sizeof *nb + n);
    if (!nb) return NULL;
    nb->cap = n;
    if (pthread_setspecific(act_key, nb) != 0) {
        free(nb);
        return NULL;
    }
    free(b);
    return nb->data;
}

/* Rounds the T input rows to the activation formats the products need;
 * xq[i] gets product i's rows (NULL for the float path). The integer types
 * have no other path: running out of memory for the few KB of rounded input
 * per token is fatal (asserted). */
static void quantize_inputs(const float *in, int T, int n, const pd_wmat *const *Ws,
                            const void **xq)
{
    const int K = Ws[0]->cols;
    int need8 = 0, needK = 0;
    for (int i = 0; i < n; i++) {
        int a = pd__qint_act(Ws[i]->type);
        need8 |= a == PD_Q_Q8_0;
        needK |= a == PD_Q_Q8_K;
    }
    for (int i = 0; i < n; i++) xq[i] = NULL;
    if (!need8 && !needK) return;
    const size_t b8 = need8 ? pd__qint_row_bytes(PD_Q_Q8_0, K) : 0;
    const size_t bK = needK ? pd__qint_row_bytes(PD_Q_Q8_K, K) : 0;
    unsigned char *buf = act_scratch((b8 + bK) * (size_t)T);
    PD_ASSERT(buf && "out of memory for the rounded input");
    unsigned char *x8 = buf, *xK = buf + b8 * (size_t)T;
    for (int t = 0; t < T; t++) {
        if (need8) pd_quant_quantize_row(PD_Q_Q8_0, in + (size_t)t * K, x8 + b8 * t, K);
        if (needK) pd_quant_quantize_row(PD_Q_Q8_K, in + (size_t)t * K, xK + bK * t, K);
    }
    for (int i = 0; i < n; i++) {
        int a = pd__qint_act(Ws[i]->type);
        xq[i] = a == PD_Q_Q8_0 ? (const void *)x8 : a == PD_Q_Q8_K ? (const void *)xK : NULL;
    }
}

static void wmatmul_n(pd_pool *pool, int n, float *const *outs, const float *in,
                      const pd_wmat *const *Ws, int T, int float_path)
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
    if (float_path)
        for (int i = 0; i < n; i++) j.xq[i] = NULL;
    else
        quantize_inputs(in, T, n, Ws, j.xq);
    for (int i = 0; i < n; i++) {
        j.out[i] = outs[i];
        j.W[i] = Ws[i];
        j.rows_per_task[i] = task_rows(Ws[i], threads, rows);
        j.first[i + 1] = j.first[i] + (Ws[i]->rows + j.rows_per_task[i] - 1) / j.rows_per_task[i];
    }
    pd_pool_run(pool, run_task, &j, j.first[n]);
}

void pd_wmatmul_n(pd_pool *pool, int n, float *const *outs, const float *in,
                  const pd_wmat *const *Ws, int T)
{
    wmatmul_n(pool, n, outs, in, Ws, T, 0);
}

void pd_wmatmul_float(pd_pool *pool, float *out, const float *in, const pd_wmat *W, int T)
{
    if (pd__qint_act(W->type) < 0) {
        pd_wmatmul(pool, out, in, W, T);
        return;
    }
    wmatmul_n(pool, 1, &out, in, &W, T, 1);
}

void pd_wmatmul(pd_pool *pool, float *out, const float *in, const pd_wmat *W, int T)
{
    if (W->type == PD_Q_F32) { /* exactly pd_matmul, tasks and all */
        pd_matmul(pool, out, in, W->data, T, W->cols, W->rows);
        return;
    }
    pd_wmatmul_n(pool, 1, &out, in, &W, T);
}

void pd_wmatmul_isa_run(int isa, int float_path, float *out, const float *in, const pd_wmat *W,
                        int T)
{
    PD_ASSERT(isa >= 0 && isa <= pd_wmatmul_isa() && pd_wmat_supported(W));
    const void *xq = NULL;
    if (!float_path) quantize_inputs(in, T, 1, &W, &xq);
    for (int t0 = 0; t0 < T; t0 += PD__QMM_TB) {
        int t1 = t0 + PD__QMM_TB < T ? t0 + PD__QMM_TB : T;
        run_block(isa, out, in, xq, W, t0, t1, 0, W->rows);
    }
}

void pd_wmatmul_portable(float *out, const float *in, const pd_wmat *W, int T)
{
    pd_wmatmul_isa_run(PD_ISA_PORTABLE, 0, out, in, W, T);
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
