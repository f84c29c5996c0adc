/* attention_avx512_f16.c — the AVX-512 F/VL attention kernel over an F16
 * KV cache and F16 prefixes: attention_avx512.c's tiles, every key and
 * value load widened with F16C's vcvtph2ps (attention_simd.h). */
#define SIMD_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl")))
#define SIMD_MR 4
#define SIMD_AV_MR 3
#define SIMD_SLAB 8
#define SIMD_CHUNK 12
#define SIMD_F16 1
#define SIMD_ENTRY pd__attend_avx512_f16
#include "attention_simd.h"
