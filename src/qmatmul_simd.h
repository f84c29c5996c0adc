/* qmatmul_simd.h — internal: the typed-weight kernel on 8-lane vectors,
 * included by qmatmul_avx2.c and qmatmul_avx512.c, each compiled for its own
 * instruction set (Makefile) with its tile shape:
 *
 *   QMM_FN   the function to define (matmul.h's pd__qmatmul_block_*)
 *   QMM_MR, QMM_NRB     tokens x outputs per tile in a larger batch
 *   QMM_NR1  outputs per tile for a single token (buffered types)
 *   QMM_NR1_ROW         outputs per tile for a single token (rows read in
 *            place: F32, F16, BF16)
 *   QMM_MR_S, QMM_NR_S  tokens x outputs per tile of rows read in place for
 *            2 to QMM_MR_S tokens (one token tile: each weight loaded once)
 *
 * F32 (pd_matmul's kernel too, on an F32 view) and F16/BF16 rows are read
 * in place, every sum of a tile in a register, and prefetched into L2
 * QMM_PFB bytes ahead by the first token tile of each tile row, so reading
 * memory overlaps the arithmetic (one core, the 134M model's products: F32
 * 8 tokens 57 -> 24 ms a step; F16 a single token 22 -> 13 ms, 8 tokens
 * 41 -> 23 ms; into L1, or one tile row ahead, gains little).
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
#define QMM_NRMAX QMM_MAX2(QMM_MAX2(QMM_NR1, QMM_NR1_ROW), QMM_MAX2(QMM_NRB, QMM_NR_S))
#define QMM_MRMAX QMM_MAX2(QMM_MR, QMM_MR_S)
#define QMM_PFB 24576 /* prefetch distance in bytes: flat from 16 to 32 KB */
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

/* The types read in place, row by row (no buffer): F32, and F16/BF16
 * converted in registers. */
enum { QMM_ROW_F32, QMM_ROW_F16, QMM_ROW_BF16 };

/* 8 weights at element k of a row of type wt (k + 8 <= K) as floats, exactly */
QMM_INLINE __m256 qmm_row8(const unsigned char *row, int k, const int wt)
{
    if (wt == QMM_ROW_F32) return _mm256_loadu_ps((const float *)row + k);
    return qmm_half8(row + 2 * (size_t)k, wt == QMM_ROW_BF16);
}

/* The last K - k < 8 weights of a row, the missing lanes 0 */
QMM_INLINE __m256 qmm_row_tail(const unsigned char *row, int k, int K, __m256i tail_mask,
                               const int wt)
{
    if (wt == QMM_ROW_F32) return _mm256_maskload_ps((const float *)row + k, tail_mask);
    float tail[8] = {0};
    deq_half16(row + 2 * (size_t)k, K - k, tail, wt == QMM_ROW_BF16);
    return _mm256_loadu_ps(tail);
}

/* Rows read in place: out rows [t, t + MR) x columns [n, n + NR), clipped
 * to t1, n1 (a partial tile repeats the last token or row, not stored), the
 * whole of K at once, every sum in a register. pf: the weights to prefetch
 * into L2 while this tile streams its own, at the pace it consumes them (the
 * next NR·8 elements a step), up to pf_end; NULL: none. */
QMM_INLINE void qmm_row_tile(float *out, const float *in, const pd_wmat *W, int t, int t1, int n,
                             int n1, const char *pf, const char *pf_end, __m256i tail_mask,
                             const int MR, const int NR, const int wt)
{
    const int K = W->cols, N = W->rows;
    const size_t step = (size_t)NR * 8 * (wt == QMM_ROW_F32 ? 4 : 2); /* bytes a step */
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
        if (pf) {
            const char *p = pf + (size_t)(k / 8) * step;
            _Pragma("GCC unroll 16")
            for (size_t c = 0; c < (step + 63) / 64; c++)
                if (p + 64 * c < pf_end) _mm_prefetch(p + 64 * c, _MM_HINT_T1);
        }
        /* the NR weights loaded once, then token by token: MR·NR sums, NR
         * weights and one input in registers */
        __m256 wv[QMM_NRMAX];
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) wv[j] = qmm_row8(w[j], k, wt);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x[i] + k);
            _Pragma("GCC unroll 16")
            for (int j = 0; j < NR; j++) a[i][j] = _mm256_fmadd_ps(xv, wv[j], a[i][j]);
        }
    }
    if (k < K) {
        __m256 wv[QMM_NRMAX];
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) wv[j] = qmm_row_tail(w[j], k, K, tail_mask, wt);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_maskload_ps(x[i] + k, tail_mask);
            _Pragma("GCC unroll 16")
            for (int j = 0; j < NR; j++) a[i][j] = _mm256_fmadd_ps(xv, wv[j], a[i][j]);
        }
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++)
            if (t + i < t1 && n + j < n1) out[(size_t)(t + i) * N + n + j] = qmm_hsum(a[i][j]);
}

/* One tile of mr (<= MR) tokens x NR outputs, constant shapes per case so
 * every case unrolls fully: NAME(…, mr, wt). */
#define QMM_ROW_CASE(R, MR, NR, WT)                                                           \
    case R:                                                                                   \
        qmm_row_tile(out, in, W, t, t1, n, n1, pf, pf_end, tail_mask, (R) <= (MR) ? (R) : 1,  \
                     NR, WT);                                                                 \
        break;
#define QMM_ROW_WT(MR, NR, WT)                                                                \
    switch (mr) {                                                                             \
        QMM_ROW_CASE(1, MR, NR, WT)                                                           \
        QMM_ROW_CASE(2, MR, NR, WT)                                                           \
        QMM_ROW_CASE(3, MR, NR, WT)                                                           \
        QMM_ROW_CASE(4, MR, NR, WT)                                                           \
        QMM_ROW_CASE(5, MR, NR, WT)                                                           \
        QMM_ROW_CASE(6, MR, NR, WT)                                                           \
        QMM_ROW_CASE(7, MR, NR, WT)                                                           \
        QMM_ROW_CASE(8, MR, NR, WT)                                                           \
    }
#define QMM_ROW_FN(NAME, MR, NR)                                                              \
    static void NAME(float *out, const float *in, const pd_wmat *W, int t, int t1, int n,    \
                     int n1, const char *pf, const char *pf_end, __m256i tail_mask, int mr,  \
                     int wt)                                                                  \
    {                                                                                         \
        if (wt == QMM_ROW_F32) QMM_ROW_WT(MR, NR, QMM_ROW_F32)                                \
        else if (wt == QMM_ROW_F16) QMM_ROW_WT(MR, NR, QMM_ROW_F16)                           \
        else QMM_ROW_WT(MR, NR, QMM_ROW_BF16)                                                 \
    }
_Static_assert(QMM_MR <= 8 && QMM_MR_S <= 8, "row tiles of at most 8 tokens");
/* one token; a small batch (2 to QMM_MR_S tokens in one tile: each weight
 * loaded once for all of them); larger batches */
QMM_ROW_FN(qmm_row_single, 1, QMM_NR1_ROW)
QMM_ROW_FN(qmm_row_small, QMM_MR_S, QMM_NR_S)
QMM_ROW_FN(qmm_row_batch, QMM_MR, QMM_NRB)

/* The rows read in place, [t0, t1) x [n0, n1): the first token tile of each
 * tile row prefetches the weights QMM_PFB bytes ahead into L2, so reading
 * memory overlaps the arithmetic */
static void qmm_row_block(float *out, const float *in, const pd_wmat *W, int t0, int t1, int n0,
                          int n1)
{
    const int wt = W->type == PD_Q_F32 ? QMM_ROW_F32
                   : W->type == PD_Q_F16 ? QMM_ROW_F16
                                         : QMM_ROW_BF16;
    const int TT = t1 - t0, single = TT == 1, small = !single && TT <= QMM_MR_S;
    const int NR = single ? QMM_NR1_ROW : small ? QMM_NR_S : QMM_NRB;
    const int MR = single ? 1 : small ? QMM_MR_S : QMM_MR;
    int32_t mk[8];
    for (int i = 0; i < 8; i++) mk[i] = i < W->cols % 8 ? -1 : 0;
    const __m256i tail_mask = _mm256_loadu_si256((const __m256i *)mk);
    const char *pf_end = (const char *)W->data + (size_t)n1 * W->row_bytes;
    for (int n = n0; n < n1; n += NR) {
        const char *pf = (const char *)W->data + (size_t)n * W->row_bytes + QMM_PFB;
        if (pf >= pf_end) pf = NULL;
        for (int t = t0; t < t1; t += MR) {
            const char *p = t == t0 ? pf : NULL;
            const int mr = t1 - t < MR ? t1 - t : MR;
            if (single) qmm_row_single(out, in, W, t, t1, n, n1, p, pf_end, tail_mask, mr, wt);
            else if (small) qmm_row_small(out, in, W, t, t1, n, n1, p, pf_end, tail_mask, mr, wt);
            else qmm_row_batch(out, in, W, t, t1, n, n1, p, pf_end, tail_mask, mr, wt);
        }
    }
}

void QMM_FN(float *out, const float *in, const void *xq, const pd_wmat *W, int t0, int t1,
            int n0, int n1)
{
    if (xq) {
        qi_block(out, xq, W, t0, t1, n0, n1);
        return;
    }
    if (W->type == PD_Q_F32 || W->type == PD_Q_F16 || W->type == PD_Q_BF16) {
        qmm_row_block(out, in, W, t0, t1, n0, n1);
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
