/* matmul_avx512.c — pd_matmul's kernel for AVX-512 F/VL (built with those
 * flags, Makefile): the shared 8-lane kernel (matmul_simd.h), whose order of
 * operations is matmul.h's, with 32 vector registers: 8 outputs for a single
 * token, 8 tokens x 3 outputs per tile for up to 8 tokens (24 accumulators:
 * a decode step of 8 sequences loads each weight once) and 4 x 6 for more
 * (the shape measured fastest at 16 and 32 tokens). */
#define MM_FN pd__matmul_block_avx512
#define MM_NR1 8
#define MM_MR_S 8
#define MM_NR_S 3
#define MM_MR 4
#define MM_NRB 6
#include "matmul_simd.h"
