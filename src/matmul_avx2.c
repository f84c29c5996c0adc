/* matmul_avx2.c — the AVX2+FMA kernel of pd_matmul (see matmul.h for the
 * operation order every kernel must keep). Tiles of MR tokens x NR outputs,
 * one 8-lane accumulator each, over K in steps of 8 with a masked tail. */
#include <immintrin.h>
#include <stdint.h>

#include "prefixd/matmul.h"

#define TARGET __attribute__((target("avx2,fma")))
#define INLINE __attribute__((always_inline)) inline

/* The fixed reduction: (l0+l4, l1+l5, l2+l6, l3+l7), then (s0+s2, s1+s3),
 * then (t0+t1) — as the portable kernel. */
TARGET static INLINE float hsum(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    __m128 u = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(u);
}

/* Tiles: 3 tokens x 4 outputs for batches (12 accumulators); a single token
 * takes 8 outputs at once (8 independent chains hide the FMA latency while
 * the weights stream). The tile shape never changes the bits (matmul.h). */
#define MR_MAX 3
#define NR_MAX 8
#define NR_BATCH 4

TARGET static INLINE void tile(float *out, const float *in, const float *W, int K, int N, int t,
                               int n, const int MR, const int NR, __m256i tail_mask)
{
    /* MR x NR accumulators + MR input vectors + one weight vector: at most
     * 16 ymm registers. The loops over the tile must be unrolled fully (GCC
     * does not at -O2 on its own), or acc[][] lives on the stack and every
     * FMA comes with a load and a store: three times slower. */
    __m256 acc[MR_MAX][NR_MAX];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    const float *x[MR_MAX], *w[NR_MAX];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++) x[i] = in + (size_t)(t + i) * K;
    _Pragma("GCC unroll 8")
    for (int j = 0; j < NR; j++) w[j] = W + (size_t)(n + j) * K;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[MR_MAX];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x[i] + k);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++) {
            __m256 wv = _mm256_loadu_ps(w[j] + k);
            _Pragma("GCC unroll 8")
            for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    if (k < K) {
        __m256 xv[MR_MAX];
        _Pragma("GCC unroll 8")
        for (int i = 0; i < MR; i++) xv[i] = _mm256_maskload_ps(x[i] + k, tail_mask);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++) {
            __m256 wv = _mm256_maskload_ps(w[j] + k, tail_mask);
            _Pragma("GCC unroll 8")
            for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int i = 0; i < MR; i++)
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++) out[(size_t)(t + i) * N + n + j] = hsum(acc[i][j]);
}



TARGET void pd__matmul_block_avx2(float *out, const float *in, const float *W, int K, int N,
                                  int t0, int t1, int n0, int n1)
{
    int32_t m[8];
    for (int i = 0; i < 8; i++) m[i] = i < K % 8 ? -1 : 0;
    __m256i tail_mask = _mm256_loadu_si256((const __m256i *)m);
    const int nr_max = t1 - t0 == 1 ? NR_MAX : NR_BATCH;
    for (int n = n0; n < n1; n += nr_max) {
        int nr = n1 - n < nr_max ? n1 - n : nr_max;
        for (int t = t0; t < t1; t += MR_MAX) {
            int mr = t1 - t < MR_MAX ? t1 - t : MR_MAX;
            /* constant MR/NR per call so each case unrolls fully */
            switch (mr * 16 + nr) {
            case 17: tile(out, in, W, K, N, t, n, 1, 1, tail_mask); break;
            case 18: tile(out, in, W, K, N, t, n, 1, 2, tail_mask); break;
            case 19: tile(out, in, W, K, N, t, n, 1, 3, tail_mask); break;
            case 20: tile(out, in, W, K, N, t, n, 1, 4, tail_mask); break;
            case 21: tile(out, in, W, K, N, t, n, 1, 5, tail_mask); break;
            case 22: tile(out, in, W, K, N, t, n, 1, 6, tail_mask); break;
            case 23: tile(out, in, W, K, N, t, n, 1, 7, tail_mask); break;
            case 24: tile(out, in, W, K, N, t, n, 1, 8, tail_mask); break;
            case 33: tile(out, in, W, K, N, t, n, 2, 1, tail_mask); break;
            case 34: tile(out, in, W, K, N, t, n, 2, 2, tail_mask); break;
            case 35: tile(out, in, W, K, N, t, n, 2, 3, tail_mask); break;
            case 36: tile(out, in, W, K, N, t, n, 2, 4, tail_mask); break;
            case 49: tile(out, in, W, K, N, t, n, 3, 1, tail_mask); break;
            case 50: tile(out, in, W, K, N, t, n, 3, 2, tail_mask); break;
            case 51: tile(out, in, W, K, N, t, n, 3, 3, tail_mask); break;
            case 52: tile(out, in, W, K, N, t, n, 3, 4, tail_mask); break;
            }
        }
    }
}
