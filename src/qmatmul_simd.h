/* qmatmul_simd.h — internal: the typed-weight kernel on 8-lane vectors,
 * included by qmatmul_avx2.c and qmatmul_avx512.c, each compiled for its own
 * instruction set (Makefile) with its tile shape:
 *
 *   QMM_FN   the function to define (matmul.h's pd__qmatmul_block_*)
 *   QMM_MR   tokens per tile in a batch
 *   QMM_NRB  outputs per tile in a batch
 *   QMM_NR1  outputs per tile for a single token
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
#define QMM_NRMAX (QMM_NR1 > QMM_NRB ? QMM_NR1 : QMM_NRB)
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

void QMM_FN(float *out, const float *in, const void *xq, const pd_wmat *W, int t0, int t1,
            int n0, int n1)
{
    if (xq) {
        qi_block(out, xq, W, t0, t1, n0, n1);
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
