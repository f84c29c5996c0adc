/* qmatmul_deq_simd.h — internal: the dequantisers of qmatmul_deq.h on 8-lane
 * vectors (AVX2 + F16C), for the kernels of qmatmul_avx2.c and
 * qmatmul_avx512.c (compiled for their own instruction set).
 *
 * Every weight is the same float as the scalar code gives: integer codes are
 * converted exactly, then the same multiplies and subtractions in the same
 * order (never fused). Types without a vector version here use the scalar
 * one. The vector ones serve the float path: F16, BF16, Q4_1, Q5_0, Q5_1. */
#ifndef PREFIXD_QMATMUL_DEQ_SIMD_H
#define PREFIXD_QMATMUL_DEQ_SIMD_H

#include <immintrin.h>

#include "qmatmul_deq.h"

/* 8 codes (int32 lanes) to floats: (float)q · d */
DEQ_INLINE void sd_mul(float *y, __m256i q, __m256 d)
{
    _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
}

/* (float)q · d - m */
DEQ_INLINE void sd_mul_sub(float *y, __m256i q, __m256 d, __m256 m)
{
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), d), m));
}

/* (float)q · d + m */
DEQ_INLINE void sd_mul_add(float *y, __m256i q, __m256 d, __m256 m)
{
    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), d), m));
}

/* 8 unsigned bytes at p widened to int32 lanes */
DEQ_INLINE __m256i sd_u8(const uint8_t *p)
{
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

DEQ_INLINE void sd_half16(const unsigned char *p, int n, float *y, int bf)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * i));
        __m256 v = bf ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                      : _mm256_cvtph_ps(h);
        _mm256_storeu_ps(y + i, v);
    }
    deq_half16(p + 2 * i, n - i, y + i, bf);
}



DEQ_INLINE void sd_q4_1(const pd_block_q4_1 *b, float *y)
{
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d)), m = _mm256_set1_ps(_cvtsh_ss(b->m));
    const __m256i lo = _mm256_set1_epi32(15);
    for (int g = 0; g < 2; g++) {
        __m256i q = sd_u8(b->qs + 8 * g);
        sd_mul_add(y + 8 * g, _mm256_and_si256(q, lo), d, m);
        sd_mul_add(y + 16 + 8 * g, _mm256_srli_epi32(q, 4), d, m);
    }
}

/* the 5th bits of elements j0..j0+7: bit j of qh, as 16 or 0 */
DEQ_INLINE __m256i sd_bit5(uint32_t qh, int j0)
{
    const __m256i sh = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)(qh >> j0)), sh);
    return _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(1)), 4);
}

/* Q5_0 (m == NULL: q - 16) and Q5_1 (q · d + m) */
DEQ_INLINE void sd_q5(pd_half hd, const pd_half *hm, const uint8_t *qh4, const uint8_t *qs,
                      float *y)
{
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(hd));
    const __m256 m = _mm256_set1_ps(hm ? _cvtsh_ss(*hm) : 0.0f);
    const __m256i lo = _mm256_set1_epi32(15), off = _mm256_set1_epi32(hm ? 0 : 16);
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int g = 0; g < 2; g++) {
        __m256i q = sd_u8(qs + 8 * g);
        __m256i a = _mm256_or_si256(_mm256_and_si256(q, lo), sd_bit5(qh, 8 * g));
        __m256i c = _mm256_or_si256(_mm256_srli_epi32(q, 4), sd_bit5(qh, 16 + 8 * g));
        if (hm) {
            sd_mul_add(y + 8 * g, a, d, m);
            sd_mul_add(y + 16 + 8 * g, c, d, m);
        } else {
            sd_mul(y + 8 * g, _mm256_sub_epi32(a, off), d);
            sd_mul(y + 16 + 8 * g, _mm256_sub_epi32(c, off), d);
        }
    }
}

DEQ_INLINE void sd_q5_0(const pd_block_q5_0 *b, float *y) { sd_q5(b->d, NULL, b->qh, b->qs, y); }
DEQ_INLINE void sd_q5_1(const pd_block_q5_1 *b, float *y) { sd_q5(b->d, &b->m, b->qh, b->qs, y); }




/* the types without a vector version: Q2_K, Q3_K; and those of the integer
 * path (qmatmul_int.h), which only the backward product dequantises */
#define SD_SCALAR(T, name) \
    DEQ_INLINE void sd_##name(const T *b, float *y) { deq_##name(b, y); }
SD_SCALAR(pd_block_q2_K, q2_K)
SD_SCALAR(pd_block_q3_K, q3_K)
SD_SCALAR(pd_block_q8_0, q8_0)
SD_SCALAR(pd_block_q4_0, q4_0)
SD_SCALAR(pd_block_q4_K, q4_K)
SD_SCALAR(pd_block_q5_K, q5_K)
SD_SCALAR(pd_block_q6_K, q6_K)
#undef SD_SCALAR

#define PD__DEQ_CASE_sd_(id, T, BS, name) PD__DEQ_CASE(sd_, id, T, BS, name)

/* pd__deq_span with the vector dequantisers */
static inline void pd__deq_span_simd(const pd_wmat *W, int r, int k0, int n, float *restrict y)
{
    PD__DEQ_SPAN(W, r, k0, n, y, sd_, sd_half16);
}

#endif /* PREFIXD_QMATMUL_DEQ_SIMD_H */
