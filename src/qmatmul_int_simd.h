/* qmatmul_int_simd.h — internal: the integer path (qmatmul_int.h) on 8-lane
 * vectors, included by qmatmul_avx2.c and qmatmul_avx512.c.
 *
 * Eight outputs at a time: for each weight block, the eight rows' exact
 * integer sums S (and M) are formed with byte multiply-adds (maddubs: u8 x s8
 * pairs into int16, never saturating for these codes: |q| <= 128 and
 * |qx| <= 127 give at most 32512), gathered into one vector (lane j = row j)
 * and applied with the float steps of qmatmul_int.h — one fused multiply-add
 * chain per lane, so each output is the portable kernel's bits. */
#include <immintrin.h>

#include "qmatmul_deq.h"
#include "qmatmul_int.h"

#define QI_INLINE static inline __attribute__((always_inline))

/* lane j = the sum of v[j]'s 8 lanes (exact int32 adds) */
QI_INLINE __m256i qi_gather8(const __m256i *v)
{
    __m256i a01 = _mm256_hadd_epi32(v[0], v[1]), a23 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i a45 = _mm256_hadd_epi32(v[4], v[5]), a67 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i b03 = _mm256_hadd_epi32(a01, a23), b47 = _mm256_hadd_epi32(a45, a67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(b03, b47, 0x20),
                            _mm256_permute2x128_si256(b03, b47, 0x31));
}

/* 16 int16 pair sums of u8 · s8 widened to 8 int32 lanes, times scale */
QI_INLINE __m256i qi_dot(__m256i u, __m256i s, __m256i scale16)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}

static const int16_t qi_ones16[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

/* Prefetches into L2 the bytes [p, p + n) up to end (exclusive): the
 * weights QI_PFB bytes ahead of 8 rows' block b (qmatmul_simd.h's overlap of
 * memory and arithmetic). p NULL: nothing. */
#define QI_PFB 24576
QI_INLINE void qi_prefetch(const char *p, size_t n, const char *end)
{
    if (!p) return;
    for (size_t o = 0; o < n && p + o < end; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

/* the 8 (scale, min) pairs of a Q4_K/Q5_K block as bytes: sc[0..7], mn[0..7]
 * (deq_k4_scale's values: sub-blocks 0-3 in the low 6 bits of bytes 0-3 /
 * 4-7; 4-7 from the nibbles of bytes 8-11 and the top 2 bits of 0-3 / 4-7) */
QI_INLINE void qi_k4_scales(const uint8_t *sc12, uint8_t *sc, uint8_t *mn)
{
    uint32_t a, b, c;
    memcpy(&a, sc12, 4);
    memcpy(&b, sc12 + 4, 4);
    memcpy(&c, sc12 + 8, 4);
    const uint32_t six = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, top2 = 0x03030303u;
    uint32_t s0 = a & six, m0 = b & six;
    uint32_t s1 = (c & low4) | (((a >> 6) & top2) << 4);
    uint32_t m1 = ((c >> 4) & low4) | (((b >> 6) & top2) << 4);
    memcpy(sc, &s0, 4);
    memcpy(sc + 4, &s1, 4);
    memcpy(mn, &m0, 4);
    memcpy(mn + 4, &m1, 4);
}

/* Q4_K/Q5_K codes of pair p (0..3) of a block: *a the 32 codes that multiply
 * x->qs[64 p ..], *c those of x->qs[64 p + 32 ..] (low / high nibbles, plus
 * Q5_K's high bits from hv, the block's qh) */
QI_INLINE void qi_q45_codes(const uint8_t *qs, int has_qh, __m256i hv, int p, __m256i *a,
                            __m256i *c)
{
    const __m256i lo = _mm256_set1_epi8(15);
    __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * p));
    *a = _mm256_and_si256(q, lo);
    *c = _mm256_and_si256(_mm256_srli_epi16(q, 4), lo);
    if (has_qh) {
        const __m256i one = _mm256_set1_epi8(1);
        __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hv, 2 * p), one);
        __m256i h2 = _mm256_and_si256(_mm256_srli_epi16(hv, 2 * p + 1), one);
        *a = _mm256_or_si256(*a, _mm256_slli_epi16(h1, 4));
        *c = _mm256_or_si256(*c, _mm256_slli_epi16(h2, 4));
    }
}

/* Q6_K codes (0..63) of the 32 elements 128 half + 32 quarter, and their
 * int16 scales in maddubs/madd pair order; sc16 the block's 16 scales */
QI_INLINE void qi_q6_codes(const pd_block_q6_K *w, __m256i sc16, int half, int quarter,
                           __m256i *q, __m256i *scale)
{
    const __m256i lo = _mm256_set1_epi8(15), three = _mm256_set1_epi8(3);
    const __m256i sch = half ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                             : _mm256_permute2x128_si256(sc16, sc16, 0x00);
    const uint8_t *ql = w->ql + 64 * half + 32 * (quarter & 1);
    __m256i l4 = _mm256_loadu_si256((const __m256i *)ql);
    __m256i h = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * half));
    __m256i a = quarter >> 1 ? _mm256_and_si256(_mm256_srli_epi16(l4, 4), lo)
                             : _mm256_and_si256(l4, lo);
    __m256i hb = _mm256_and_si256(_mm256_srli_epi16(h, 2 * quarter), three);
    *q = _mm256_or_si256(a, _mm256_slli_epi16(hb, 4));
    /* int16 scale 2q in the low lane, 2q + 1 in the high lane */
    const char a0 = (char)(4 * quarter), a1 = (char)(4 * quarter + 1);
    const char b0 = (char)(4 * quarter + 2), b1 = (char)(4 * quarter + 3);
    *scale = _mm256_shuffle_epi8(sch, _mm256_setr_epi8(a0, a1, a0, a1, a0, a1, a0, a1, a0, a1,
                                                       a0, a1, a0, a1, a0, a1, b0, b1, b0, b1,
                                                       b0, b1, b0, b1, b0, b1, b0, b1, b0, b1,
                                                       b0, b1));
}

/* Q4_K/Q5_K: S lanes of one block; *M the exact min sum */
QI_INLINE __m256i qi_s_q45_K(const uint8_t *qs, const uint8_t *qh, const uint8_t *sc12,
                             const pd_block_q8_K *x, int32_t *M)
{
    uint8_t sc[8], mn[8];
    qi_k4_scales(sc12, sc, mn);
    __m256i acc = _mm256_setzero_si256();
    const __m256i hv = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    int32_t m = 0;
    for (int p = 0; p < 4; p++) {
        __m256i a, c;
        qi_q45_codes(qs, qh != NULL, hv, p, &a, &c);
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(x->qs + 64 * p));
        __m256i x2 = _mm256_loadu_si256((const __m256i *)(x->qs + 64 * p + 32));
        acc = _mm256_add_epi32(acc, qi_dot(a, x1, _mm256_set1_epi16((int16_t)sc[2 * p])));
        acc = _mm256_add_epi32(acc, qi_dot(c, x2, _mm256_set1_epi16((int16_t)sc[2 * p + 1])));
        m += mn[2 * p] * (x->bsums[4 * p] + x->bsums[4 * p + 1]) +
             mn[2 * p + 1] * (x->bsums[4 * p + 2] + x->bsums[4 * p + 3]);
    }
    *M = m;
    return acc;
}

/* Q6_K: S lanes of one block */
QI_INLINE __m256i qi_s_q6_K(const pd_block_q6_K *w, const pd_block_q8_K *x)
{
    __m256i acc = _mm256_setzero_si256();
    int32_t corr = 0;
    for (int s = 0; s < 16; s++) corr += w->scales[s] * x->bsums[s];
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales));
    for (int i = 0; i < 8; i++) {
        __m256i q, scale;
        qi_q6_codes(w, sc16, i >> 2, i & 3, &q, &scale);
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * i));
        acc = _mm256_add_epi32(acc, qi_dot(q, xv, scale));
    }
    /* Σ sc·(q - 32)·x = Σ sc·q·x - 32·Σ sc·bsum */
    return _mm256_sub_epi32(acc, _mm256_setr_epi32(32 * corr, 0, 0, 0, 0, 0, 0, 0));
}

QI_INLINE __m256 qi_rows_k(const pd_wmat *W, const int *rows, const pd_block_q8_K *x,
                           const char *pf, const char *pf_end, const int type)
{
    const int nb = W->cols / 256;
    const size_t bb = type == PD_Q_Q4_K   ? sizeof(pd_block_q4_K)
                      : type == PD_Q_Q5_K ? sizeof(pd_block_q5_K)
                                          : sizeof(pd_block_q6_K);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        qi_prefetch(pf ? pf + 8 * bb * (size_t)b : NULL, 8 * bb, pf_end);
        __m256i s[8];
        int32_t m[8];
        float dw[8], dm[8];
        for (int j = 0; j < 8; j++) {
            const char *row = (const char *)W->data + (size_t)rows[j] * W->row_bytes;
            if (type == PD_Q_Q4_K) {
                const pd_block_q4_K *w = (const pd_block_q4_K *)row + b;
                s[j] = qi_s_q45_K(w->qs, NULL, w->scales, x + b, &m[j]);
                dw[j] = _cvtsh_ss(w->d);
                dm[j] = _cvtsh_ss(w->dmin);
            } else if (type == PD_Q_Q5_K) {
                const pd_block_q5_K *w = (const pd_block_q5_K *)row + b;
                s[j] = qi_s_q45_K(w->qs, w->qh, w->scales, x + b, &m[j]);
                dw[j] = _cvtsh_ss(w->d);
                dm[j] = _cvtsh_ss(w->dmin);
            } else {
                const pd_block_q6_K *w = (const pd_block_q6_K *)row + b;
                s[j] = qi_s_q6_K(w, x + b);
                dw[j] = _cvtsh_ss(w->d);
            }
        }
        const __m256 dx = _mm256_set1_ps(x[b].d);
        acc = _mm256_fmadd_ps(_mm256_mul_ps(dx, _mm256_loadu_ps(dw)),
                              _mm256_cvtepi32_ps(qi_gather8(s)), acc);
        if (type != PD_Q_Q6_K) {
            __m256 nd = _mm256_xor_ps(_mm256_mul_ps(dx, _mm256_loadu_ps(dm)),
                                      _mm256_set1_ps(-0.0f)); /* exact negation */
            acc = _mm256_fmadd_ps(nd, _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)m)),
                                  acc);
        }
    }
    return acc;
}

/* ---- K types for several tokens: unpack once, dot with every token ----
 *
 * A row's K block unpacked: q[i] the 32 codes (u8, 0..63) that multiply
 * x->qs[32 i .. 32 i + 31], sc[i] their int16 scales in maddubs/madd pair
 * order, c16 the int16 weights of x's 16 bsums in the block's correction
 * (Q4_K/Q5_K: the mins, so M = Σ c16·bsums; Q6_K: the scales, S -= 32·Σ
 * c16·bsums), d / dmin the block's float scales. The sums are the same
 * exact integers qi_s_q45_K / qi_s_q6_K form, so the float chain, and every
 * output bit, is qi_rows_k's. */
typedef struct qi_kunp {
    __m256i q[8], sc[8], c16;
    float d, dmin;
} qi_kunp;

QI_INLINE void qi_unpack_k(const pd_wmat *W, int row, int b, qi_kunp *u, const int type)
{
    const char *r = (const char *)W->data + (size_t)row * W->row_bytes;
    if (type == PD_Q_Q6_K) {
        const pd_block_q6_K *w = (const pd_block_q6_K *)r + b;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales));
        u->c16 = sc16;
        for (int i = 0; i < 8; i++) qi_q6_codes(w, sc16, i >> 2, i & 3, &u->q[i], &u->sc[i]);
        u->d = _cvtsh_ss(w->d);
        u->dmin = 0.0f;
        return;
    }
    const uint8_t *qs, *qh = NULL, *sc12;
    if (type == PD_Q_Q4_K) {
        const pd_block_q4_K *w = (const pd_block_q4_K *)r + b;
        qs = w->qs;
        sc12 = w->scales;
        u->d = _cvtsh_ss(w->d);
        u->dmin = _cvtsh_ss(w->dmin);
    } else {
        const pd_block_q5_K *w = (const pd_block_q5_K *)r + b;
        qs = w->qs;
        qh = w->qh;
        sc12 = w->scales;
        u->d = _cvtsh_ss(w->d);
        u->dmin = _cvtsh_ss(w->dmin);
    }
    uint8_t sc[8], mn[8];
    qi_k4_scales(sc12, sc, mn);
    const __m256i hv = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    for (int p = 0; p < 4; p++) {
        qi_q45_codes(qs, qh != NULL, hv, p, &u->q[2 * p], &u->q[2 * p + 1]);
        u->sc[2 * p] = _mm256_set1_epi16((int16_t)sc[2 * p]);
        u->sc[2 * p + 1] = _mm256_set1_epi16((int16_t)sc[2 * p + 1]);
    }
    /* bsum i covers elements 16 i .. 16 i + 15: sub-block i / 2 */
    u->c16 = _mm256_setr_epi16(mn[0], mn[0], mn[1], mn[1], mn[2], mn[2], mn[3], mn[3], mn[4],
                               mn[4], mn[5], mn[5], mn[6], mn[6], mn[7], mn[7]);
}

/* Rows n .. n + 7 (rows[]) x tokens [t0, t1) of a K type: acc[t - t0] holds
 * token t's 8 lanes (lane j = row j), the float chain of qi_rows_k. */
QI_INLINE void qi_rows_k_multi(const pd_wmat *W, const int *rows, const char *xq, size_t xb,
                               int t0, int t1, __m256 *acc, qi_kunp *u, const char *pf,
                               const char *pf_end, const int type)
{
    const int nb = W->cols / 256;
    const size_t bb = type == PD_Q_Q4_K   ? sizeof(pd_block_q4_K)
                      : type == PD_Q_Q5_K ? sizeof(pd_block_q5_K)
                                          : sizeof(pd_block_q6_K);
    for (int t = t0; t < t1; t++) acc[t - t0] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        qi_prefetch(pf ? pf + 8 * bb * (size_t)b : NULL, 8 * bb, pf_end);
        float dw[8], dm[8];
        for (int j = 0; j < 8; j++) {
            qi_unpack_k(W, rows[j], b, &u[j], type);
            dw[j] = u[j].d;
            dm[j] = u[j].dmin;
        }
        const __m256 dwv = _mm256_loadu_ps(dw), dmv = _mm256_loadu_ps(dm);
        for (int t = t0; t < t1; t++) {
            const pd_block_q8_K *x = (const pd_block_q8_K *)(xq + (size_t)t * xb) + b;
            __m256i xv[8];
            for (int i = 0; i < 8; i++) xv[i] = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * i));
            const __m256i bs = _mm256_loadu_si256((const __m256i *)x->bsums);
            __m256i s[8], c[8];
            for (int j = 0; j < 8; j++) {
                __m256i a = _mm256_setzero_si256();
                for (int i = 0; i < 8; i++) a = _mm256_add_epi32(a, qi_dot(u[j].q[i], xv[i], u[j].sc[i]));
                s[j] = a;
                c[j] = _mm256_madd_epi16(u[j].c16, bs);
            }
            __m256i S = qi_gather8(s), C = qi_gather8(c);
            const __m256 dx = _mm256_set1_ps(x->d);
            if (type == PD_Q_Q6_K) S = _mm256_sub_epi32(S, _mm256_slli_epi32(C, 5));
            __m256 a = acc[t - t0];
            a = _mm256_fmadd_ps(_mm256_mul_ps(dx, dwv), _mm256_cvtepi32_ps(S), a);
            if (type != PD_Q_Q6_K) {
                __m256 nd = _mm256_xor_ps(_mm256_mul_ps(dx, dmv), _mm256_set1_ps(-0.0f));
                a = _mm256_fmadd_ps(nd, _mm256_cvtepi32_ps(C), a);
            }
            acc[t - t0] = a;
        }
    }
}

/* Q8_0 / Q4_0 (weight codes q) against Q8_0 input blocks, rows n .. n + 7
 * x tokens [t0, t1): each block of the 8 rows is loaded (and Q4_0's nibbles
 * unpacked, q - 8) once; per token S = Σ |q|·(x·sign q) (maddubs: u8 x s8,
 * exact), then acc = fma(dw·dx, S, acc) over the blocks in order. */
QI_INLINE void qi_rows_q8_0_multi(const pd_wmat *W, const int *rows, const char *xq, size_t xb,
                                  int t0, int t1, __m256 *acc, const char *pf,
                                  const char *pf_end, const int type)
{
    const int nb = W->cols / 32;
    const size_t bb = type == PD_Q_Q8_0 ? sizeof(pd_block_q8_0) : sizeof(pd_block_q4_0);
    const __m256i ones = _mm256_loadu_si256((const __m256i *)qi_ones16);
    for (int t = t0; t < t1; t++) acc[t - t0] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        qi_prefetch(pf ? pf + 8 * bb * (size_t)b : NULL, 8 * bb, pf_end);
        __m256i q[8], aq[8];
        float dw[8];
        for (int j = 0; j < 8; j++) {
            const char *row = (const char *)W->data + (size_t)rows[j] * W->row_bytes;
            if (type == PD_Q_Q8_0) {
                const pd_block_q8_0 *w = (const pd_block_q8_0 *)row + b;
                q[j] = _mm256_loadu_si256((const __m256i *)w->qs);
                dw[j] = _cvtsh_ss(w->d);
            } else {
                const pd_block_q4_0 *w = (const pd_block_q4_0 *)row + b;
                __m128i p = _mm_loadu_si128((const __m128i *)w->qs);
                q[j] = _mm256_sub_epi8(
                    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(p, 4), _mm_set1_epi8(15)),
                                     _mm_and_si128(p, _mm_set1_epi8(15))),
                    _mm256_set1_epi8(8));
                dw[j] = _cvtsh_ss(w->d);
            }
            aq[j] = _mm256_sign_epi8(q[j], q[j]);
        }
        const __m256 dwv = _mm256_loadu_ps(dw);
        for (int t = t0; t < t1; t++) {
            const pd_block_q8_0 *x = (const pd_block_q8_0 *)(xq + (size_t)t * xb) + b;
            const __m256i xv = _mm256_loadu_si256((const __m256i *)x->qs);
            __m256i sv[8];
            for (int j = 0; j < 8; j++) sv[j] = qi_dot(aq[j], _mm256_sign_epi8(xv, q[j]), ones);
            __m256 d = _mm256_mul_ps(dwv, _mm256_set1_ps(_cvtsh_ss(x->d)));
            acc[t - t0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(qi_gather8(sv)), acc[t - t0]);
        }
    }
}

/* The integer path for rows [t0, t1) x outputs [n0, n1), type a constant. */
QI_INLINE void qi_block_t(float *out, const void *xq, const pd_wmat *W, int t0, int t1, int n0,
                          int n1, const int type)
{
    const int N = W->rows, act = pd__qint_act(type);
    const size_t xb = pd__qint_row_bytes(act, W->cols);
    const char *pf_end = (const char *)W->data + (size_t)n1 * W->row_bytes;
    for (int n = n0; n < n1; n += 8) {
        int rows[8];
        for (int j = 0; j < 8; j++) rows[j] = n + j < n1 ? n + j : n1 - 1;
        const int nr = n1 - n < 8 ? n1 - n : 8;
        /* the first token prefetches the weights QI_PFB bytes ahead */
        const char *pf = (const char *)W->data + (size_t)n * W->row_bytes + QI_PFB;
        if (pf >= pf_end) pf = NULL;
        if (act == PD_Q_Q8_0 || t1 - t0 > 1) {
            /* each block unpacked once for all tokens (a single K-type token
             * takes the fused path below: measured faster) */
            __m256 acc[PD__QMM_TB];
            PD_ASSERT(t1 - t0 <= PD__QMM_TB);
            if (act == PD_Q_Q8_K) {
                qi_kunp u[8];
                qi_rows_k_multi(W, rows, xq, xb, t0, t1, acc, u, pf, pf_end, type);
            } else {
                qi_rows_q8_0_multi(W, rows, xq, xb, t0, t1, acc, pf, pf_end, type);
            }
            for (int t = t0; t < t1; t++) {
                float o[8];
                _mm256_storeu_ps(o, acc[t - t0]);
                memcpy(out + (size_t)t * N + n, o, (size_t)nr * sizeof(float));
            }
            continue;
        }
        for (int t = t0; t < t1; t++) {
            const void *x = (const char *)xq + (size_t)t * xb;
            const char *p = t == t0 ? pf : NULL;
            __m256 r = qi_rows_k(W, rows, x, p, pf_end, type);
            float o[8];
            _mm256_storeu_ps(o, r);
            memcpy(out + (size_t)t * N + n, o, (size_t)nr * sizeof(float));
        }
    }
}

static void qi_block(float *out, const void *xq, const pd_wmat *W, int t0, int t1, int n0, int n1)
{
    switch (W->type) {
    case PD_Q_Q8_0: qi_block_t(out, xq, W, t0, t1, n0, n1, PD_Q_Q8_0); break;
    case PD_Q_Q4_0: qi_block_t(out, xq, W, t0, t1, n0, n1, PD_Q_Q4_0); break;
    case PD_Q_Q4_K: qi_block_t(out, xq, W, t0, t1, n0, n1, PD_Q_Q4_K); break;
    case PD_Q_Q5_K: qi_block_t(out, xq, W, t0, t1, n0, n1, PD_Q_Q5_K); break;
    case PD_Q_Q6_K: qi_block_t(out, xq, W, t0, t1, n0, n1, PD_Q_Q6_K); break;
    default: PD_ASSERT(0 && "not an integer-path type");
    }
}
