/* attention_avx512.c — the attention kernel for AVX-512 F/VL: the same
 * 8-lane operations as the AVX2 kernel (the order attention.h fixes is
 * 8 lanes wide), with the 32 vector registers AVX-512 brings, which hold
 * score tiles of 4 rows x 4
 * keys and weighted sums of 3 rows x 64 floats (attention_simd.h). */
#define SIMD_TARGET __attribute__((target("avx2,fma,avx512f,avx512vl")))
#define SIMD_MR 4
#define SIMD_AV_MR 3
#define SIMD_SLAB 8
#define SIMD_CHUNK 12
#define SIMD_F16 0
#define SIMD_ENTRY pd__attend_avx512
#include "attention_simd.h"
