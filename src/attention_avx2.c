/* attention_avx2.c — the attention kernel for AVX2 + FMA: 16 vector
 * registers, score tiles of 2 rows x 4 keys,
 * weighted sums of 3 rows x 32 floats (attention_simd.h). */
#define SIMD_TARGET __attribute__((target("avx2,fma")))
#define SIMD_MR 2
#define SIMD_AV_MR 3
#define SIMD_SLAB 4
#define SIMD_CHUNK 6
#define SIMD_F16 0
#define SIMD_ENTRY pd__attend_avx2
#include "attention_simd.h"
