/* matmul_simd.h — internal: pd_matmul's F32 kernel on 8-lane vectors,
 * included by matmul_avx2.c and matmul_avx512.c, each compiled for its own
 * instruction set (Makefile) with its tile shape:
 *
 *   MM_FN    the function to define (matmul.h's pd__matmul_block_*)
 *   MM_NR1   outputs per tile for a single token
 *   MM_MR_S, MM_NR_S  tokens x outputs per tile for a small batch (2 to
 *            MM_MR_S tokens: one tile of tokens, so each weight is loaded
 *            once)
 *   MM_MR, MM_NRB     tokens x outputs per tile for larger batches
 *
 * Per output the operation order is matmul.h's: eight lane sums over
 * k ≡ j (mod 8) with fused multiply-adds in increasing k (a masked tail adds
 * fma(0, 0, ·) in the missing lanes), then the fixed reduction tree. A tile
 * of MR tokens x NR outputs keeps its MR·NR lane sums in registers for the
 * whole of K; shapes only change which sums are computed together, never a
 * sum's order. Partial tiles at the block's edges run the full shape on a
 * repeated token or output row whose results are not stored.
 *
 * Weights stream from memory once per block of outputs: a tile row of NR
 * outputs is used by every token tile of the block while it is in L1. The
 * first token tile of each tile row prefetches, into L2, the weights
 * MM_PFB bytes ahead (W's rows are contiguous) at the pace it consumes its
 * own, so the loads from memory overlap the arithmetic instead of
 * following it (measured on the 134M model's products, one core of an
 * AVX-512 EPYC: batch 8 from 57 to 24 ms a step; into L1 instead, or a
 * tile row ahead, gains little).
 */
#include <immintrin.h>
#include <stdint.h>

#include "prefixd/matmul.h"

#define MM_INLINE static inline __attribute__((always_inline))
#define MM_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define MM_NRMAX MM_MAX2(MM_NR1, MM_MAX2(MM_NRB, MM_NR_S))
#define MM_MRMAX MM_MAX2(MM_MR, MM_MR_S)
/* cases past a shape's MR are never taken; clipped so they compile */
#define MM_CLIP(R) ((R) <= MM_MRMAX ? (R) : 1)
#define MM_PFB 24576 /* bytes; flat from 16 to 32 KB */

/* the reduction of matmul.h: (l0+l4, l1+l5, l2+l6, l3+l7), (s0+s2, s1+s3), t0+t1 */
MM_INLINE float mm_hsum(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    __m128 u = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(u);
}

/* out rows [t, t + MR) x columns [n, n + NR), clipped to t1, n1. pf: the
 * weights to prefetch while this tile streams its own (NULL: none), up to
 * pf_end (exclusive). */
MM_INLINE void mm_tile(float *out, const float *in, const float *W, int K, int N, int t, int t1,
                       int n, int n1, const char *pf, const char *pf_end, __m256i tail_mask,
                       const int MR, const int NR)
{
    /* MR x NR accumulators, MR input rows and the weights: the loops over the
     * tile are unrolled fully so every sum stays in a register */
    __m256 acc[MM_MRMAX][MM_NRMAX];
    const float *x[MM_MRMAX], *w[MM_NRMAX];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++) x[i] = in + (size_t)(t + i < t1 ? t + i : t1 - 1) * K;
    _Pragma("GCC unroll 16")
    for (int j = 0; j < NR; j++) w[j] = W + (size_t)(n + j < n1 ? n + j : n1 - 1) * K;
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    /* the next rows are NR·K floats from pf; this tile consumes NR·8 floats
     * (NR/2 cache lines) a step */
    const size_t pf_step = (size_t)NR * 8 * sizeof(float);
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        if (pf) {
            const char *p = pf + (size_t)(k / 8) * pf_step;
            _Pragma("GCC unroll 16")
            for (int c = 0; c < (NR + 1) / 2; c++)
                if (p + 64 * c < pf_end) _mm_prefetch(p + 64 * c, _MM_HINT_T1);
        }
        __m256 wv[MM_NRMAX];
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) wv[j] = _mm256_loadu_ps(w[j] + k);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x[i] + k);
            _Pragma("GCC unroll 16")
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    if (k < K) {
        __m256 wv[MM_NRMAX];
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++) wv[j] = _mm256_maskload_ps(w[j] + k, tail_mask);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_maskload_ps(x[i] + k, tail_mask);
            _Pragma("GCC unroll 16")
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 16")
        for (int j = 0; j < NR; j++)
            if (t + i < t1 && n + j < n1) out[(size_t)(t + i) * N + n + j] = mm_hsum(acc[i][j]);
}

/* the two shapes, each instantiated once (constant MR, NR: full unrolling) */
static void mm_tile_single(float *out, const float *in, const float *W, int K, int N, int t,
                           int t1, int n, int n1, const char *pf, const char *pf_end,
                           __m256i tail_mask)
{
    mm_tile(out, in, W, K, N, t, t1, n, n1, pf, pf_end, tail_mask, 1, MM_NR1);
}

/* A batch tile of mr <= MR tokens x NR outputs (the last tile of a block
 * may have fewer tokens), as a function per shape: NAME(…). */
#define MM_CASE(R, NR)                                                                      \
    case R: mm_tile(out, in, W, K, N, t, t1, n, n1, pf, pf_end, tail_mask, MM_CLIP(R), NR); break;
#define MM_BATCH_FN(NAME, MR, NR)                                                           \
    static void NAME(float *out, const float *in, const float *W, int K, int N, int t,     \
                     int t1, int n, int n1, const char *pf, const char *pf_end,            \
                     __m256i tail_mask)                                                    \
    {                                                                                      \
        switch (t1 - t < MR ? t1 - t : MR) {                                               \
            MM_CASE(1, NR)                                                                 \
            MM_CASE(2, NR)                                                                 \
            MM_CASE(3, NR)                                                                 \
            MM_CASE(4, NR)                                                                 \
            MM_CASE(5, NR)                                                                 \
            MM_CASE(6, NR)                                                                 \
            MM_CASE(7, NR)                                                                 \
            MM_CASE(8, NR)                                                                 \
        }                                                                                  \
    }
_Static_assert(MM_MR <= 8 && MM_MR_S <= 8, "batch tiles of at most 8 tokens");
MM_BATCH_FN(mm_tile_batch, MM_MR, MM_NRB)
MM_BATCH_FN(mm_tile_small, MM_MR_S, MM_NR_S)

void MM_FN(float *out, const float *in, const float *W, int K, int N, int t0, int t1, int n0,
           int n1)
{
    int32_t m[8];
    for (int i = 0; i < 8; i++) m[i] = i < K % 8 ? -1 : 0;
    const __m256i tail_mask = _mm256_loadu_si256((const __m256i *)m);
    /* a single token; a small batch (every token in one tile: each weight
     * read once); a larger batch */
    const int TT = t1 - t0, single = TT == 1, small = !single && TT <= MM_MR_S;
    const int NR = single ? MM_NR1 : small ? MM_NR_S : MM_NRB;
    const int MR = single ? 1 : small ? MM_MR_S : MM_MR;
    const char *pf_end = (const char *)(W + (size_t)n1 * K);
    for (int n = n0; n < n1; n += NR) {
        const char *pf = (const char *)(W + (size_t)n * K) + MM_PFB;
        if (pf >= pf_end) pf = NULL;
        for (int t = t0; t < t1; t += MR) {
            /* the first token tile of a tile row prefetches ahead */
            const char *p = t == t0 ? pf : NULL;
            if (single) mm_tile_single(out, in, W, K, N, t, t1, n, n1, p, pf_end, tail_mask);
            else if (small) mm_tile_small(out, in, W, K, N, t, t1, n, n1, p, pf_end, tail_mask);
            else mm_tile_batch(out, in, W, K, N, t, t1, n, n1, p, pf_end, tail_mask);
        }
    }
}
