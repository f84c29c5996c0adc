/* qmatmul_avx2.c — pd_wmatmul's kernel for AVX2+FMA+F16C (built with those
 * flags, Makefile): the shared 8-lane kernel (qmatmul_simd.h) with 3 tokens
 * x 4 outputs per tile in a batch (12 accumulators of 16 registers), 8
 * outputs for a single token, and for F32/F16/BF16 rows 4 tokens x 3
 * outputs for batches of up to 4. */
#define QMM_FN pd__qmatmul_block_avx2
#define QMM_MR 3
#define QMM_NRB 4
#define QMM_NR1 8
#define QMM_NR1_ROW 8
#define QMM_MR_S 4
#define QMM_NR_S 3
#include "qmatmul_simd.h"
