/* qmatmul_int.h — internal: the integer dot products of the 8-bit-activation
 * types (ggml's approach), shared by the portable kernel (qmatmul.c) and
 * the vector kernels (qmatmul_int_simd.h).
 *
 * For Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights, pd_wmatmul first rounds each
 * input row to 8 bits per block with the reference quantiser (quant.h:
 * Q8_0 for the 32-blocks, Q8_K for the K-quants; a row's rounding depends only
 * on that row). Then per output and weight block b, in increasing b, from
 * acc = 0 (fl = one float rounding; (float) an exact int32 conversion,
 * rounded to nearest when above 2^24):
 *
 *   Q8_0, Q4_0:  acc = fmaf(fl(dw_b · dx_b), (float)S_b, acc)
 *                S_b = Σ_i qw_i · qx_i            (qw = q, resp. q - 8)
 *   Q6_K:        acc = fmaf(fl(dx_b · d_b), (float)S_b, acc)
 *                S_b = Σ_s sc_s · Σ_{i∈s} (q_i - 32) · qx_i   (16 subs of 16)
 *   Q4_K, Q5_K:  acc = fmaf(fl(dx_b · d_b), (float)S_b, acc)
 *                acc = fmaf(-fl(dx_b · dmin_b), (float)M_b, acc)
 *                S_b = Σ_s sc_s · Σ_{i∈s} q_i · qx_i,  M_b = Σ_s m_s · Σ_{i∈s} qx_i
 *
 * The sums S and M are exact integers, so every kernel computes the same
 * bits whatever order it adds them in; the float steps are the same
 * sequence everywhere. */
#ifndef PREFIXD_QMATMUL_INT_H
#define PREFIXD_QMATMUL_INT_H

#include "prefixd/quant.h"

/* The activation format of a weight type's integer path, or -1 for the
 * dequantise-and-FMA path. */
static inline int pd__qint_act(int type)
{
    switch (type) {
    case PD_Q_Q8_0: case PD_Q_Q4_0: return PD_Q_Q8_0;
    case PD_Q_Q4_K: case PD_Q_Q5_K: case PD_Q_Q6_K: return PD_Q_Q8_K;
    default: return -1;
    }
}

/* Bytes of one input row of K values in activation format act. */
static inline size_t pd__qint_row_bytes(int act, int K)
{
    return act == PD_Q_Q8_0 ? (size_t)(K / 32) * sizeof(pd_block_q8_0)
                            : (size_t)(K / 256) * sizeof(pd_block_q8_K);
}

#endif /* PREFIXD_QMATMUL_INT_H */
