/* prefixd/matmul.h — the engine's weight products, batch-invariant.
 *
 * out (T, N) = in (T, K) · W^T, W (N, K) row-major ([out][in], as both model
 * formats store weights). Every output element is computed by one fixed
 * sequence of operations that depends only on K: eight lane sums over
 * k ≡ j (mod 8) accumulated with fused multiply-adds in increasing k, then
 * one fixed reduction tree. So a token's result does not depend on how many
 * other tokens share the step, on its row in the batch, on the tiling or on
 * the thread count: a sequence gives the same logits alone or in any batch,
 * bit for bit. (BLAS sgemm does not promise this: its edge kernels sum in
 * another order than its main kernel.) The AVX-512, AVX2 and portable
 * kernels compute the same bits.
 *
 * Typed weights (pd_wmatmul, any GGUF weight type as stored) keep the same
 * property with one fixed order per type: the 8-lane order above over the
 * dequantised weights (F32, F16, BF16, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K), or,
 * for Q8_0, Q4_0, Q4_K, Q5_K and Q6_K, exact integer block sums over the
 * input rounded to 8 bits per block and one float chain over the blocks
 * (src/qmatmul_int.h). Portable, AVX2 and AVX-512 kernels, chosen at run
 * time, compute the same bits.
 */
#ifndef PREFIXD_MATMUL_H
#define PREFIXD_MATMUL_H

#include "prefixd/quant.h"
#include "prefixd/threadpool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out (T, N) = in (T, K) · W^T. pool may be NULL (single thread). */
void pd_matmul(pd_pool *pool, float *out, const float *in, const float *W, int T, int K,
               int N);

/* The same, forcing the portable kernel (for tests); runs on one thread. */
void pd_matmul_portable(float *out, const float *in, const float *W, int T, int K, int N);

/* 1 when the AVX2+FMA kernel is in use on this CPU. */
int pd_matmul_uses_avx2(void);

/* ---- typed weights (pd_wmat, any stored type) ----
 *
 * out (T, W->rows) = in (T, W->cols) · W^T with W as stored (F32, F16,
 * BF16, …): the weights are converted in registers, never widened in memory.
 * The same operation order as pd_matmul on the converted weights, so the
 * result of a token does not depend on the batch, the tiling, the thread
 * count or the instruction set (portable == AVX2 == AVX-512, bit for bit).
 * An F32 W gives exactly pd_matmul's bits. pool may be NULL. */
void pd_wmatmul(pd_pool *pool, float *out, const float *in, const pd_wmat *W, int T);

/* The same on the portable kernel, one thread (for tests). */
void pd_wmatmul_portable(float *out, const float *in, const pd_wmat *W, int T);

/* The product without rounding the input, for every type: the dequantised
 * weights times in with pd_matmul's order (the float path). For the types
 * whose pd_wmatmul rounds the input to 8 bits (pd_wmat_act_type) this is the
 * smooth function whose gradient pd_wmatmul_t gives; the training forward
 * uses it. For the other types it is pd_wmatmul. */
void pd_wmatmul_float(pd_pool *pool, float *out, const float *in, const pd_wmat *W, int T);

/* dX (R, W->cols) = dY (R, W->rows) · W + beta · dX: the transposed product of
 * the backward pass (not batch-invariant; BLAS). An F32 W is one sgemm;
 * other types are dequantised in bands of rows into scratch, which must hold
 * pd_wmatmul_t_scratch(W) floats (0 for F32: scratch may be NULL). */
void pd_wmatmul_t(float *dX, const float *dY, const pd_wmat *W, int R, float beta,
                  float *scratch);
size_t pd_wmatmul_t_scratch(const pd_wmat *W);

/* n products of the same input in one parallel region (one hand-off to the
 * pool instead of n): outs[i] (T, Ws[i]->rows) = in (T, K) · Ws[i]^T, every
 * Ws[i]->cols == K. Each output has exactly pd_wmatmul's bits. n <= 4. */
void pd_wmatmul_n(pd_pool *pool, int n, float *const *outs, const float *in,
                  const pd_wmat *const *Ws, int T);

/* The data of an F32 view (asserted): for code and tests that need floats. */
const float *pd_wmat_f32_data(const pd_wmat *W);

/* 1 when W's type has a kernel (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
 * Q2_K … Q6_K) and its cols are a multiple of the block size. */
int pd_wmat_supported(const pd_wmat *W);

/* The 8-bit format (PD_Q_Q8_0 or PD_Q_Q8_K) pd_wmatmul rounds each input row
 * to, block by block with the reference quantiser, for weights of type
 * (Q8_0, Q4_0: Q8_0; Q4_K, Q5_K, Q6_K: Q8_K; their products are integer dot
 * products, src/qmatmul_int.h); -1 when the input is used as it is. */
int pd_wmat_act_type(int type);

/* Kernel instruction sets of pd_wmatmul (tests force each in turn). */
enum { PD_ISA_PORTABLE = 0, PD_ISA_AVX2 = 1, PD_ISA_AVX512 = 2 };
/* The best this CPU runs. */
int pd_wmatmul_isa(void);
/* pd_wmatmul (float_path 0) or pd_wmatmul_float (1) on a given instruction
 * set (<= pd_wmatmul_isa()), one thread. */
void pd_wmatmul_isa_run(int isa, int float_path, float *out, const float *in, const pd_wmat *W,
                        int T);

/* Internal: the typed kernels (qmatmul*.c) compute rows [t0, t1) x outputs
 * [n0, n1) of out (T, W->rows) from in (T, W->cols), t1 - t0 <= PD__QMM_TB;
 * xq: the T input rows rounded to W's activation format (src/qmatmul_int.h),
 * NULL for the float path. They are pd_matmul's kernels too, on an F32 view
 * (the portable one hands F32 to pd__matmul_block_portable). */
#define PD__QMM_TB 48
void pd__qmatmul_block_portable(float *out, const float *in, const void *xq, const pd_wmat *W,
                                int t0, int t1, int n0, int n1);
void pd__qmatmul_block_avx2(float *out, const float *in, const void *xq, const pd_wmat *W,
                            int t0, int t1, int n0, int n1);
void pd__qmatmul_block_avx512(float *out, const float *in, const void *xq, const pd_wmat *W,
                              int t0, int t1, int n0, int n1);

/* Internal: the portable kernel (matmul.c; the SIMD ones are the typed
 * kernels' on an F32 view). It computes the rows [t0, t1) x columns
 * [n0, n1) of out. */
void pd__matmul_block_portable(float *out, const float *in, const float *W, int K, int N,
                               int t0, int t1, int n0, int n1);

/* Internal: the portable order itself. pd__lanes_fma adds x[k]·w[k] for
 * k < n into lane k mod 8 (fmaf, increasing k); pd__lanes_sum is the fixed
 * reduction of the 8 lanes. */
static inline void pd__lanes_fma(float *l, const float *x, const float *w, int n)
{
    int k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++) l[j] = __builtin_fmaf(x[k + j], w[k + j], l[j]);
    for (int j = 0; k + j < n; j++) l[j] = __builtin_fmaf(x[k + j], w[k + j], l[j]);
}

static inline float pd__lanes_sum(const float *l)
{
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    float u0 = s0 + s2, u1 = s1 + s3;
    return u0 + u1;
}

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_MATMUL_H */
