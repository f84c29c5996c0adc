/* matmul_avx2.c — pd_matmul's kernel for AVX2+FMA (built with those flags,
 * Makefile): the shared 8-lane kernel (matmul_simd.h), whose order of
 * operations is matmul.h's, with 16 vector registers: 8 outputs for a single
 * token (8 independent chains hide the FMA latency while the weights
 * stream), 4 tokens x 3 outputs per tile for up to 4 tokens and 3 x 4 for
 * more (12 accumulators). */
#define MM_FN pd__matmul_block_avx2
#define MM_NR1 8
#define MM_MR_S 4
#define MM_NR_S 3
#define MM_MR 3
#define MM_NRB 4
#include "matmul_simd.h"
