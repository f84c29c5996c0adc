/* qmatmul_deq_simd.h — internal: the dequantisers of qmatmul_deq.h on 8-lane
 * vectors (AVX2 + F16C), for the kernels of qmatmul_avx2.c and
 * qmatmul_avx512.c (compiled for their own instruction set).
 *
 * Every weight is the same float as the scalar code gives: integer codes are
 * converted exactly, then the same multiplies and subtractions in the same
 * order (never fused). Types without a vector version here use the scalar
 * one. */
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




DEQ_INLINE void sd_q8_0(const pd_block_q8_0 *b, float *y)
{
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
    for (int g = 0; g < 4; g++)
        sd_mul(y + 8 * g,
               _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8 * g))), d);
}

DEQ_INLINE void sd_q4_0(const pd_block_q4_0 *b, float *y)
{
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
    const __m256i eight = _mm256_set1_epi32(8), lo = _mm256_set1_epi32(15);
    for (int g = 0; g < 2; g++) {
        __m256i q = sd_u8(b->qs + 8 * g);
        sd_mul(y + 8 * g, _mm256_sub_epi32(_mm256_and_si256(q, lo), eight), d);
        sd_mul(y + 16 + 8 * g, _mm256_sub_epi32(_mm256_srli_epi32(q, 4), eight), d);
    }
}

/* Q4_K (qh NULL) and Q5_K */
DEQ_INLINE void sd_q45_K(pd_half hd, pd_half hm, const uint8_t *scales, const uint8_t *qs,
                         const uint8_t *qh, float *y)
{
    const float d = _cvtsh_ss(hd), dmin = _cvtsh_ss(hm);
    const __m256i lo = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1);
    for (int p = 0; p < 4; p++) {
        float d1, m1, d2, m2;
        deq_k4_pair(scales, d, dmin, p, &d1, &m1, &d2, &m2);
        const __m256 vd1 = _mm256_set1_ps(d1), vm1 = _mm256_set1_ps(m1);
        const __m256 vd2 = _mm256_set1_ps(d2), vm2 = _mm256_set1_ps(m2);
        for (int g = 0; g < 4; g++) {
            __m256i v = sd_u8(qs + 32 * p + 8 * g);
            __m256i a = _mm256_and_si256(v, lo), c = _mm256_srli_epi32(v, 4);
            if (qh) {
                __m256i h = sd_u8(qh + 8 * g);
                a = _mm256_or_si256(
                    a, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 2 * p), one), 4));
                c = _mm256_or_si256(
                    c,
                    _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 2 * p + 1), one), 4));
            }
            sd_mul_sub(y + 64 * p + 8 * g, a, vd1, vm1);
            sd_mul_sub(y + 64 * p + 32 + 8 * g, c, vd2, vm2);
        }
    }
}

DEQ_INLINE void sd_q4_K(const pd_block_q4_K *b, float *y)
{
    sd_q45_K(b->d, b->dmin, b->scales, b->qs, NULL, y);
}

DEQ_INLINE void sd_q5_K(const pd_block_q5_K *b, float *y)
{
    sd_q45_K(b->d, b->dmin, b->scales, b->qs, b->qh, y);
}

/* 8 weights g of 32-weight quarter q of 128-weight half h */
DEQ_INLINE void sd_q6_K(const pd_block_q6_K *b, float *y)
{
    const float d = _cvtsh_ss(b->d);
    const __m256i lo = _mm256_set1_epi32(15), three = _mm256_set1_epi32(3);
    const __m256i t32 = _mm256_set1_epi32(32);
    for (int e = 0; e < 256; e += 8) {
        const int h = e / 128, q = (e % 128) / 32, g = (e % 32) / 8;
        const uint8_t *l4 = b->ql + 64 * h + 32 * (q & 1) + 8 * g;
        const __m256 ds = _mm256_set1_ps(d * (float)b->scales[e / 16]);
        __m256i a = _mm256_and_si256(_mm256_srli_epi32(sd_u8(l4), 4 * (q >> 1)), lo);
        __m256i hb =
            _mm256_and_si256(_mm256_srli_epi32(sd_u8(b->qh + 32 * h + 8 * g), 2 * q), three);
        sd_mul(y + e, _mm256_sub_epi32(_mm256_or_si256(a, _mm256_slli_epi32(hb, 4)), t32), ds);
    }
}

/* the types without a vector version */
#define SD_SCALAR(T, name) \
    DEQ_INLINE void sd_##name(const T *b, float *y) { deq_##name(b, y); }
SD_SCALAR(pd_block_q2_K, q2_K)
SD_SCALAR(pd_block_q3_K, q3_K)
#undef SD_SCALAR

#define PD__DEQ_CASE_sd_(id, T, BS, name) PD__DEQ_CASE(sd_, id, T, BS, name)

/* pd__deq_span with the vector dequantisers */
static inline void pd__deq_span_simd(const pd_wmat *W, int r, int k0, int n, float *restrict y)
{
    PD__DEQ_SPAN(W, r, k0, n, y, sd_, sd_half16);
}

#endif /* PREFIXD_QMATMUL_DEQ_SIMD_H */
