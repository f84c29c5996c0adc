/* qmatmul_deq.h — internal: block dequantisers shared by the matrix kernels
 * of every instruction set (qmatmul.c, qmatmul_avx2.c, qmatmul_avx512.c).
 *
 * Each file includes this header and so compiles the same C for its own
 * instruction set (the vectoriser may use wider registers), but the value of
 * every weight is the same few IEEE operations in the same order: products
 * and differences of exactly representable numbers, never contracted into a
 * fused multiply-add (the kernel files build with -ffp-contract=off). So every
 * kernel sees the same floats, and those are the floats of the block format
 * (quant.h; ggml's definition of each block).
 *
 * pd__deq_span dequantises elements [k0, k0 + n) of a row, k0 and n multiples
 * of the type's block size (n may stop at the row's end for F16/BF16/F32). */
#ifndef PREFIXD_QMATMUL_DEQ_H
#define PREFIXD_QMATMUL_DEQ_H

#include <stdint.h>
#include <string.h>

#include "prefixd/common.h"
#include "prefixd/quant.h"

#define DEQ_INLINE static inline __attribute__((always_inline))

/* IEEE half to float, exact (the same value as pd_f16_to_f32). */
DEQ_INLINE float deq_h(pd_half h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (!man) {
        u = sign;
    } else { /* subnormal: man · 2^-24, exact in float */
        float f = (float)man * 0x1p-24f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

DEQ_INLINE float deq_bf(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

DEQ_INLINE void deq_q4_0(const pd_block_q4_0 *b, float *y)
{
    const float d = deq_h(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((b->qs[j] & 15) - 8) * d;
        y[j + 16] = (float)((b->qs[j] >> 4) - 8) * d;
    }
}

DEQ_INLINE void deq_q4_1(const pd_block_q4_1 *b, float *y)
{
    const float d = deq_h(b->d), m = deq_h(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(b->qs[j] & 15) * d + m;
        y[j + 16] = (float)(b->qs[j] >> 4) * d + m;
    }
}

/* the 5th bits: bit j of qh belongs to element j */
DEQ_INLINE void deq_q5_0(const pd_block_q5_0 *b, float *y)
{
    const float d = deq_h(b->d);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < 16; j++) {
        int lo = (int)((b->qs[j] & 15) | (((qh >> j) & 1) << 4));
        int hi = (int)((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
        y[j] = (float)(lo - 16) * d;
        y[j + 16] = (float)(hi - 16) * d;
    }
}

DEQ_INLINE void deq_q5_1(const pd_block_q5_1 *b, float *y)
{
    const float d = deq_h(b->d), m = deq_h(b->m);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < 16; j++) {
        int lo = (int)((b->qs[j] & 15) | (((qh >> j) & 1) << 4));
        int hi = (int)((b->qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
        y[j] = (float)lo * d + m;
        y[j + 16] = (float)hi * d + m;
    }
}

DEQ_INLINE void deq_q8_0(const pd_block_q8_0 *b, float *y)
{
    const float d = deq_h(b->d);
    for (int j = 0; j < 32; j++) y[j] = (float)b->qs[j] * d;
}

/* 256 weights in two halves of 128; each half's 32 bytes of qs hold four
 * 2-bit planes (shift 0, 2, 4, 6), each plane two sub-blocks of 16. */
DEQ_INLINE void deq_q2_K(const pd_block_q2_K *b, float *y)
{
    const float d = deq_h(b->d), dmin = deq_h(b->dmin);
    for (int half = 0; half < 2; half++) {
        const uint8_t *q = b->qs + 32 * half;
        for (int plane = 0; plane < 4; plane++) {
            for (int s = 0; s < 2; s++) {
                uint8_t sc = b->scales[8 * half + 2 * plane + s];
                const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
                float *o = y + 128 * half + 32 * plane + 16 * s;
                for (int l = 0; l < 16; l++)
                    o[l] = dl * (float)((q[16 * s + l] >> (2 * plane)) & 3) - ml;
            }
        }
    }
}

/* The 16 6-bit scales of Q3_K: low 4 bits in bytes 0-7 (low nibbles for
 * scales 0-7, high nibbles for 8-15), high 2 bits in bytes 8-11. */
DEQ_INLINE int deq_q3_K_scale(const uint8_t *s, int i)
{
    int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

DEQ_INLINE void deq_q3_K(const pd_block_q3_K *b, float *y)
{
    const float d = deq_h(b->d);
    for (int half = 0; half < 2; half++) {
        const uint8_t *q = b->qs + 32 * half;
        for (int plane = 0; plane < 4; plane++) {
            const uint8_t hbit = (uint8_t)(1u << (4 * half + plane));
            for (int s = 0; s < 2; s++) {
                const int is = 8 * half + 2 * plane + s;
                const float dl = d * (float)deq_q3_K_scale(b->scales, is);
                float *o = y + 128 * half + 32 * plane + 16 * s;
                for (int l = 0; l < 16; l++) {
                    int v = (q[16 * s + l] >> (2 * plane)) & 3;
                    if (!(b->hmask[16 * s + l] & hbit)) v -= 4;
                    o[l] = dl * (float)v;
                }
            }
        }
    }
}

/* The 8 6-bit scale/min pairs of Q4_K/Q5_K packed in 12 bytes. */
DEQ_INLINE void deq_k4_scale(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Scales and mins of the two sub-blocks of 32 in 64-weight part p. */
DEQ_INLINE void deq_k4_pair(const uint8_t *s, float d, float dmin, int p, float *d1, float *m1,
                            float *d2, float *m2)
{
    int sc, mn;
    deq_k4_scale(s, 2 * p, &sc, &mn);
    *d1 = d * (float)sc;
    *m1 = dmin * (float)mn;
    deq_k4_scale(s, 2 * p + 1, &sc, &mn);
    *d2 = d * (float)sc;
    *m2 = dmin * (float)mn;
}

DEQ_INLINE void deq_q4_K(const pd_block_q4_K *b, float *y)
{
    const float d = deq_h(b->d), dmin = deq_h(b->dmin);
    for (int p = 0; p < 4; p++) { /* 64 weights: 32 low nibbles, 32 high */
        const uint8_t *q = b->qs + 32 * p;
        float d1, m1, d2, m2;
        deq_k4_pair(b->scales, d, dmin, p, &d1, &m1, &d2, &m2);
        for (int l = 0; l < 32; l++) y[64 * p + l] = d1 * (float)(q[l] & 15) - m1;
        for (int l = 0; l < 32; l++) y[64 * p + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
    }
}

DEQ_INLINE void deq_q5_K(const pd_block_q5_K *b, float *y)
{
    const float d = deq_h(b->d), dmin = deq_h(b->dmin);
    for (int p = 0; p < 4; p++) {
        const uint8_t *q = b->qs + 32 * p;
        float d1, m1, d2, m2;
        deq_k4_pair(b->scales, d, dmin, p, &d1, &m1, &d2, &m2);
        for (int l = 0; l < 32; l++)
            y[64 * p + l] = d1 * (float)((q[l] & 15) | (((b->qh[l] >> (2 * p)) & 1) << 4)) - m1;
        for (int l = 0; l < 32; l++)
            y[64 * p + 32 + l] =
                d2 * (float)((q[l] >> 4) | (((b->qh[l] >> (2 * p + 1)) & 1) << 4)) - m2;
    }
}

DEQ_INLINE void deq_q6_K(const pd_block_q6_K *b, float *y)
{
    const float d = deq_h(b->d);
    for (int half = 0; half < 2; half++) {
        const uint8_t *ql = b->ql + 64 * half, *qh = b->qh + 32 * half;
        const int8_t *sc = b->scales + 8 * half;
        float *o = y + 128 * half;
        for (int quarter = 0; quarter < 4; quarter++) {
            /* quarter 0: ql[0..31] low, 1: ql[32..63] low, 2: [0..31] high, 3: [32..63] high */
            const uint8_t *l4 = ql + 32 * (quarter & 1);
            const int shift4 = 4 * (quarter >> 1), shift2 = 2 * quarter;
            for (int l = 0; l < 32; l++) {
                int v = (int)(((l4[l] >> shift4) & 15) | (((qh[l] >> shift2) & 3) << 4)) - 32;
                o[32 * quarter + l] = d * (float)sc[2 * quarter + l / 16] * (float)v;
            }
        }
    }
}

/* The block types: X(type id, block struct, elements, dequantiser suffix).
 * A kernel file defines one dequantiser per suffix and expands PD__DEQ_SPAN
 * with its prefix (deq_ here, sd_ in qmatmul_deq_simd.h). */
#define PD__DEQ_TYPES(X)                          \
    X(PD_Q_Q4_0, pd_block_q4_0, 32, q4_0)         \
    X(PD_Q_Q4_1, pd_block_q4_1, 32, q4_1)         \
    X(PD_Q_Q5_0, pd_block_q5_0, 32, q5_0)         \
    X(PD_Q_Q5_1, pd_block_q5_1, 32, q5_1)         \
    X(PD_Q_Q8_0, pd_block_q8_0, 32, q8_0)         \
    X(PD_Q_Q2_K, pd_block_q2_K, 256, q2_K)        \
    X(PD_Q_Q3_K, pd_block_q3_K, 256, q3_K)        \
    X(PD_Q_Q4_K, pd_block_q4_K, 256, q4_K)        \
    X(PD_Q_Q5_K, pd_block_q5_K, 256, q5_K)        \
    X(PD_Q_Q6_K, pd_block_q6_K, 256, q6_K)

#define PD__DEQ_CASE(prefix, id, T, BS, name)                                        \
    case id: {                                                                       \
        const T *b_ = (const T *)row + k0 / (BS);                                    \
        for (int i_ = 0; i_ < n / (BS); i_++) prefix##name(b_ + i_, y + (size_t)i_ * (BS)); \
        break;                                                                       \
    }

/* Elements [k0, k0 + n) of row r of W into y, the blocks by
 * prefix##suffix, F16/BF16 by half16(p, n, y, bf). */
#define PD__DEQ_SPAN(W, r, k0, n, y, prefix, half16)                                  \
    do {                                                                              \
        const unsigned char *row = (const unsigned char *)(W)->data + (size_t)(r) * (W)->row_bytes; \
        switch ((W)->type) {                                                          \
        case PD_Q_F32: memcpy(y, (const float *)row + k0, (size_t)(n) * sizeof(float)); break; \
        case PD_Q_F16: half16(row + 2 * (size_t)(k0), n, y, 0); break;                \
        case PD_Q_BF16: half16(row + 2 * (size_t)(k0), n, y, 1); break;               \
        PD__DEQ_TYPES(PD__DEQ_CASE_##prefix)                                          \
        default: PD_ASSERT(0 && "weight type checked at load");                      \
        }                                                                             \
    } while (0)

DEQ_INLINE void deq_half16(const unsigned char *p, int n, float *y, int bf)
{
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * (size_t)i, 2);
        y[i] = bf ? deq_bf(h) : deq_h(h);
    }
}

#define PD__DEQ_CASE_deq_(id, T, BS, name) PD__DEQ_CASE(deq_, id, T, BS, name)

/* Elements [k0, k0 + n) of row r of W into y. */
static inline void pd__deq_span(const pd_wmat *W, int r, int k0, int n, float *restrict y)
{
    PD__DEQ_SPAN(W, r, k0, n, y, deq_, deq_half16);
}

/* Elements per block of a weight type the kernels take (1 for F32/F16/BF16),
 * 0 for any other type. */
static inline int pd__deq_block(int type)
{
    switch (type) {
    case PD_Q_F32: case PD_Q_F16: case PD_Q_BF16: return 1;
    case PD_Q_Q4_0: case PD_Q_Q4_1: case PD_Q_Q5_0: case PD_Q_Q5_1: case PD_Q_Q8_0: return 32;
    case PD_Q_Q2_K: case PD_Q_Q3_K: case PD_Q_Q4_K: case PD_Q_Q5_K: case PD_Q_Q6_K: return 256;
    default: return 0;
    }
}

#endif /* PREFIXD_QMATMUL_DEQ_H */
