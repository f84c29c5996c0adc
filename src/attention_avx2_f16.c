/* attention_avx2_f16.c — the AVX2 + FMA attention kernel over an F16 KV
 * cache and F16 prefixes: attention_avx2.c's tiles, every key and value
 * load widened with F16C's vcvtph2ps (attention_simd.h). */
#define SIMD_TARGET __attribute__((target("avx2,fma,f16c")))
#define SIMD_MR 2
#define SIMD_AV_MR 3
#define SIMD_SLAB 4
#define SIMD_CHUNK 6
#define SIMD_F16 1
#define SIMD_ENTRY pd__attend_avx2_f16
#include "attention_simd.h"
