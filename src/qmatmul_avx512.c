/* qmatmul_avx512.c — pd_wmatmul's kernel for AVX-512 F/BW/VL/DQ (built with
 * those flags, Makefile): the shared 8-lane kernel (qmatmul_simd.h), whose
 * order of operations fixes 8-lane sums, with 32 vector registers for larger
 * tiles (4 tokens x 6 outputs in a batch; 16 outputs of a buffered type, 8
 * of F32/F16/BF16 rows, for a single token; 8 tokens x 3 outputs of those
 * rows for batches of up to 8: a decode step of 8 sequences loads each
 * weight once) and the dequantisation vectorised 16 wide. */
#define QMM_FN pd__qmatmul_block_avx512
#define QMM_MR 4
#define QMM_NRB 6
#define QMM_NR1 16
#define QMM_NR1_ROW 8
#define QMM_MR_S 8
#define QMM_NR_S 3
#include "qmatmul_simd.h"
