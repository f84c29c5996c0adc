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
 * another order than its main kernel.) The AVX2 kernel and the portable one
 * compute the same bits.
 */
#ifndef PREFIXD_MATMUL_H
#define PREFIXD_MATMUL_H

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

/* Internal: the kernels (matmul_avx2.c, matmul.c). They compute the rows
 * [t0, t1) x columns [n0, n1) of out. */
void pd__matmul_block_avx2(float *out, const float *in, const float *W, int K, int N, int t0,
                           int t1, int n0, int n1);
void pd__matmul_block_portable(float *out, const float *in, const float *W, int K, int N,
                               int t0, int t1, int n0, int n1);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_MATMUL_H */
