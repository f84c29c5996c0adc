/* qmatmul_simd.h — internal: the typed-weight kernel on 8-lane vectors,
 * included by qmatmul_avx2.c and qmatmul_avx512.c, each compiled for its own
 * instruction set (Makefile) with its tile shape:
 *
 *   QMM_FN   the function to define (matmul.h's pd__qmatmul_block_*)
 *   QMM_MR   tokens per tile in a batch
 *   QMM_NRB  outputs per tile in a batch
 *   QMM_NR1  outputs per tile for a single token
 *   QMM_MR_S, QMM_NR_S  tokens x outputs per tile of F16/BF16 weights for
 *            2 to QMM_MR_S tokens (one token tile: each weight converted once)
 *
 * F16/BF16 rows are read in place and, as pd_matmul's F32 kernel
 * (matmul_simd.h), prefetched into L2 QMM_PFB bytes ahead by the first token
 * tile of each tile row (one core, the 134M model's products in F16: a
 * single token 22 -> 13 ms a step, 8 tokens 41 -> 23 ms, 32 tokens 90 -> 75).
 *
 * Per output the operation order is the portable kernel's (qmatmul.c): eight
 * lane sums over k ≡ j (mod 8) with fused multiply-adds in increasing k and
 * the fixed reduction tree; the weights of a tile's rows are dequantised a
 * chunk at a time into an L1 buffer shared by all tokens of the block, and
 * the lane sums live in a buffer between chunks. Tile shapes only change
 * which sums are in registers together, never a sum's order. Partial tiles
 * at the edges run the full shape on padding (zero weights, a repeated
 * token) whose results are dropped. */
#include <immintrin.h>
#include <string.h>

#include "prefixd/matmul.h"
#include "qmatmul_deq_simd.h"
#include "qmatmul_int_simd.h"

#define QMM_KC 256
#define QMM_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define QMM_NRMAX QMM_MAX2(QMM_NR1, QMM_MAX2(QMM_NRB, QMM_NR_S))
#define QMM_MRMAX QMM_MAX2(QMM_MR, QMM_MR_S)
#define QMM_PFB 24576 /* prefetch distance in bytes (matmul_simd.h) */
#define QMM_INLINE static inline __attribute__((always_inline))

/* the reduction of matmul.h: (l0+l4, l1+l5, l2+l6, l3+l7), (s0+s2, s1+s3), t0+t1 */
QMM_INLINE float qmm_hsum(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    __m128 u = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(u);
}

/* One chunk for MR tokens x NR outputs: acc[i][j] += x_i · w_j over kn
 * weights (wb rows zero-padded to a multiple of 8; x masked past kn). */
QMM_INLINE void qmm_tile(__m256 *acc, const float *const *x, const float *wb, int kn,
                         __m256i tail_mask, const int MR, const int NR)
{
    __m256 a[QMM_MR][QMM_NRMAX];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) a[i][j] = acc[i * QMM_NRMAX + j];
    int k = 0;
    for (; k + 8 <= kn; k += 8) {
        __m256 xv[QMM_MR];
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x[i] + k);
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) {
            __m256 wv = _mm256_load_ps(wb + j * QMM_KC + k);
            _Pragma("GCC unroll 16")
            for (int i = 0; i < MR; i++) a[i][j] = _mm256_fmadd_ps(xv[i], wv, a[i][j]);
        }
    }
    if (k < kn) {
        __m256 xv[QMM_MR];
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) xv[i] = _mm256_maskload_ps(x[i] + k, tail_mask);
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) {
            __m256 wv = _mm256_load_ps(wb + j * QMM_KC + k);
            _Pragma("GCC unroll 16")
            for (int i = 0; i < MR; i++) a[i][j] = _mm256_fmadd_ps(xv[i], wv, a[i][j]);
        }
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) acc[i * QMM_NRMAX + j] = a[i][j];
}

static void qmm_tile_batch(__m256 *acc, const float *const *x, const float *wb, int kn,
                           __m256i tail_mask)
{
    qmm_tile(acc, x, wb, kn, tail_mask, QMM_MR, QMM_NRB);
}

static void qmm_tile_single(__m256 *acc, const float *const *x, const float *wb, int kn,
                            __m256i tail_mask)
{
    qmm_tile(acc, x, wb, kn, tail_mask, 1, QMM_NR1);
}

/* 8 F16/BF16 weights at p (k + 8 <= K) as floats, exactly */
QMM_INLINE __m256 qmm_half8(const unsigned char *p, const int bf)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return bf ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
              : _mm256_cvtph_ps(h);
}

/* F16/BF16 straight from the rows, converted in registers (no buffer):
 * MR tokens x NR rows, the whole of K at once; the last K % 8 weights
 * through a zero-padded copy, as the buffer path. Rows/tokens past the
 * block's edge repeat the last one and are not stored. */
QMM_INLINE void qmm_half_tile(float *out, const float *in, const pd_wmat *W, int t, int t1,
                              int n, int n1, const char *pf, const char *pf_end, const int MR,
                              const int NR, const int bf, __m256i tail_mask)
{
    const int K = W->cols, N = W->rows;
    const unsigned char *w[QMM_NRMAX];
    const float *x[QMM_MRMAX];
    _Pragma("GCC unroll 16")
    for (int j = 0; j < NR; j++)
        w[j] = (const unsigned char *)W->data + (size_t)(n + j < n1 ? n + j : n1 - 1) * W->row_bytes;
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++) x[i] = in + (size_t)(t + i < t1 ? t + i : t1 - 1) * K;
    __m256 a[QMM_MRMAX][QMM_NRMAX];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) a[i][j] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        if (pf) { /* NR rows of 16 bytes a step: the next NR·16 bytes ahead */
            const char *p = pf + (size_t)(k / 8) * NR * 16;
            _Pragma("GCC unroll 16")
            for (int c = 0; c < (NR + 3) / 4; c++)
                if (p + 64 * c < pf_end) _mm_prefetch(p + 64 * c, _MM_HINT_T1);
        }
        /* the NR weights converted once, then token by token: MR·NR sums,
         * NR weights and one input in registers */
        __m256 wv[QMM_NRMAX];
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) wv[j] = qmm_half8(w[j] + 2 * (size_t)k, bf);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x[i] + k);
            _Pragma("GCC unroll 16")
            for (int j = 0; j < NR; j++) a[i][j] = _mm256_fmadd_ps(xv, wv[j], a[i][j]);
        }
    }
    if (k < K) {
        __m256 xv[QMM_MRMAX];
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) xv[i] = _mm256_maskload_ps(x[i] + k, tail_mask);
        for (int j = 0; j < NR; j++) {
            float tail[8] = {0};
            deq_half16(w[j] + 2 * (size_t)k, K - k, tail, bf);
            __m256 wv = _mm256_loadu_ps(tail);
            for (int i = 0; i < MR; i++) a[i][j] = _mm256_fmadd_ps(xv[i], wv, a[i][j]);
        }
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++)
            if (t + i < t1 && n + j < n1) out[(size_t)(t + i) * N + n + j] = qmm_hsum(a[i][j]);
}

/* the three shapes of half tiles: one token, a small batch in one token
 * tile (each weight converted once), a larger batch */
#define QMM_HALF_FN(NAME, MR, NR)                                                             \
    static void NAME(float *out, const float *in, const pd_wmat *W, int t, int t1, int n,    \
                     int n1, const char *pf, const char *pf_end, int bf, __m256i tail_mask) \
    {                                                                                        \
        if (bf) qmm_half_tile(out, in, W, t, t1, n, n1, pf, pf_end, MR, NR, 1, tail_mask);   \
        else qmm_half_tile(out, in, W, t, t1, n, n1, pf, pf_end, MR, NR, 0, tail_mask);      \
    }
QMM_HALF_FN(qmm_half_single, 1, QMM_NR1)
QMM_HALF_FN(qmm_half_batch, QMM_MR, QMM_NRB)
/* a small batch: one tile of exactly its t1 - t tokens (no padding rows) */
#define QMM_HALF_MR(R) QMM_HALF_FN(qmm_half_small_##R, (R) <= QMM_MR_S ? (R) : 1, QMM_NR_S)
QMM_HALF_MR(2)
QMM_HALF_MR(3)
QMM_HALF_MR(4)
QMM_HALF_MR(5)
QMM_HALF_MR(6)
QMM_HALF_MR(7)
QMM_HALF_MR(8)
_Static_assert(QMM_MR_S <= 8, "small batches of at most 8 tokens");

static void qmm_half_small(float *out, const float *in, const pd_wmat *W, int t, int t1, int n,
                           int n1, const char *pf, const char *pf_end, int bf, __m256i tail_mask)
{
    switch (t1 - t) {
#define QMM_HALF_CASE(R)                                                                      \
    case R: qmm_half_small_##R(out, in, W, t, t1, n, n1, pf, pf_end, bf, tail_mask); break;
        QMM_HALF_CASE(2)
        QMM_HALF_CASE(3)
        QMM_HALF_CASE(4)
        QMM_HALF_CASE(5)
        QMM_HALF_CASE(6)
        QMM_HALF_CASE(7)
        QMM_HALF_CASE(8)
#undef QMM_HALF_CASE
    default: PD_ASSERT(0 && "a small batch has 2 to QMM_MR_S tokens");
    }
}

void QMM_FN(float *out, const float *in, const void *xq, const pd_wmat *W, int t0, int t1,
            int n0, int n1)
{
    if (xq) {
        qi_block(out, xq, W, t0, t1, n0, n1);
        return;
    }
    if (W->type == PD_Q_F16 || W->type == PD_Q_BF16) {
        const int bf = W->type == PD_Q_BF16, TT = t1 - t0;
        const int single = TT == 1, small = !single && TT <= QMM_MR_S;
        const int NR = single ? QMM_NR1 : small ? QMM_NR_S : QMM_NRB;
        const int MR = single ? 1 : small ? QMM_MR_S : QMM_MR;
        int32_t mk[8];
        for (int i = 0; i < 8; i++) mk[i] = i < W->cols % 8 ? -1 : 0;
        const __m256i tail_mask = _mm256_loadu_si256((const __m256i *)mk);
        /* the first token tile of a tile row prefetches the weights
         * QMM_PFB bytes ahead into L2 (matmul_simd.h) */
        const char *pf_end = (const char *)W->data + (size_t)n1 * W->row_bytes;
        for (int n = n0; n < n1; n += NR) {
            const char *pf = (const char *)W->data + (size_t)n * W->row_bytes + QMM_PFB;
            if (pf >= pf_end) pf = NULL;
            for (int t = t0; t < t1; t += MR) {
                const char *p = t == t0 ? pf : NULL;
                if (single) qmm_half_single(out, in, W, t, t1, n, n1, p, pf_end, bf, tail_mask);
                else if (small) qmm_half_small(out, in, W, t, t1, n, n1, p, pf_end, bf, tail_mask);
                else qmm_half_batch(out, in, W, t, t1, n, n1, p, pf_end, bf, tail_mask);
            }
        }
        return;
    }
    const int K = W->cols, N = W->rows, TT = t1 - t0;
    PD_ASSERT(W->type != PD_Q_F32 && TT >= 1 && TT <= PD__QMM_TB);
    const int MR = TT == 1 ? 1 : QMM_MR, NR = TT == 1 ? QMM_NR1 : QMM_NRB;
    /* lane sums of every (token, output) of the tile row; MR spare token rows
     * take the padding */
    __m256 acc[(PD__QMM_TB + QMM_MR) * QMM_NRMAX]; /* 40 KB at most: stack */
    float wb[QMM_NRMAX * QMM_KC] __attribute__((aligned(64)));
    int32_t m[8];
    for (int i = 0; i < 8; i++) m[i] = i < K % 8 ? -1 : 0;
    const __m256i tail_mask = _mm256_loadu_si256((const __m256i *)m);

    for (int n = n0; n < n1; n += NR) {
        const int nr = n1 - n < NR ? n1 - n : NR;
        for (int i = 0; i < (TT + MR) * QMM_NRMAX; i++) acc[i] = _mm256_setzero_ps();
        for (int kc = 0; kc < K; kc += QMM_KC) {
            const int kn = K - kc < QMM_KC ? K - kc : QMM_KC, kn8 = (kn + 7) & ~7;
            for (int j = 0; j < NR; j++) {
                float *w = wb + j * QMM_KC;
                if (j < nr) pd__deq_span_simd(W, n + j, kc, kn, w);
                else memset(w, 0, (size_t)kn8 * sizeof(float));
                for (int k = kn; k < kn8; k++) w[k] = 0.0f;
            }
            for (int t = t0; t < t1; t += MR) {
                const float *x[QMM_MR];
                for (int i = 0; i < MR; i++)
                    x[i] = in + (size_t)(t + i < t1 ? t + i : t1 - 1) * K + kc;
                __m256 *a = acc + (size_t)(t - t0) * QMM_NRMAX;
                if (MR == 1) qmm_tile_single(a, x, wb, kn, tail_mask);
                else qmm_tile_batch(a, x, wb, kn, tail_mask);
            }
        }
        for (int t = t0; t < t1; t++)
            for (int j = 0; j < nr; j++)
                out[(size_t)t * N + n + j] = qmm_hsum(acc[(size_t)(t - t0) * QMM_NRMAX + j]);
    }
}
