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

TARGET static INLINE void tile(float *out, const float *in, const float *W, int K, int N, int t,
                               int n, const int MR, const int NR, __m256i tail_mask)
{
    __m256 acc[3][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    const float *x[3], *w[4];
    for (int i = 0; i < MR; i++) x[i] = in + (size_t)(t + i) * K;
    for (int j = 0; j < NR; j++) w[j] = W + (size_t)(n + j) * K;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[4];
        for (int j = 0; j < NR; j++) wv[j] = _mm256_loadu_ps(w[j] + k);
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x[i] + k);
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    if (k < K) {
        __m256 wv[4];
        for (int j = 0; j < NR; j++) wv[j] = _mm256_maskload_ps(w[j] + k, tail_mask);
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_maskload_ps(x[i] + k, tail_mask);
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) out[(size_t)(t + i) * N + n + j] = hsum(acc[i][j]);
}

#define MR_MAX 3
#define NR_MAX 4

TARGET void pd__matmul_block_avx2(float *out, const float *in, const float *W, int K, int N,
                                  int t0, int t1, int n0, int n1)
{
    int32_t m[8];
    for (int i = 0; i < 8; i++) m[i] = i < K % 8 ? -1 : 0;
    __m256i tail_mask = _mm256_loadu_si256((const __m256i *)m);
    for (int n = n0; n < n1; n += NR_MAX) {
        int nr = n1 - n < NR_MAX ? n1 - n : NR_MAX;
        for (int t = t0; t < t1; t += MR_MAX) {
            int mr = t1 - t < MR_MAX ? t1 - t : MR_MAX;
            /* constant MR/NR per call so each case unrolls fully */
            switch (mr * 4 + nr) {
#define CASE(a, b) \
    case a * 4 + b: tile(out, in, W, K, N, t, n, a, b, tail_mask); break;
                CASE(1, 1) CASE(1, 2) CASE(1, 3) CASE(1, 4)
                CASE(2, 1) CASE(2, 2) CASE(2, 3) CASE(2, 4)
                CASE(3, 1) CASE(3, 2) CASE(3, 3) CASE(3, 4)
#undef CASE
            }
        }
    }
}
