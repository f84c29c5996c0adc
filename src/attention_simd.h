/* attention_simd.h — the vector attention kernel, written once over 8-lane
 * (ymm) registers and compiled per instruction set by the file that
 * includes it (attention_avx2.c, attention_avx512.c), which defines
 *   SIMD_TARGET  the function attribute naming the instruction set,
 *   SIMD_MR      query rows per score tile (its registers allow),
 *   SIMD_AV_MR   rows per weighted-sum tile (2 or 3), over
 *   SIMD_SLAB    8-float chunks of hd at once,
 *   SIMD_CHUNK   rows scored, normalised and summed together,
 *   SIMD_ENTRY   the name of the kernel's entry point,
 *   SIMD_F16     1: the prefix and cache rows are halves (a->f16), each
 *                load of 8 widened with vcvtph2ps (F16C); 0: floats.
 * The float operations are those of the portable kernel (attention.c) in
 * the order attention.h states; only which of them run side by side
 * differs, so every variant returns the same bits.
 *
 * Per tile of MR rows (which share the kv group's keys): the scores of the
 * rows against 4 keys at a time (8 for a lone row) while the keys are in
 * registers, each score an 8-lane accumulator reduced with the others of
 * its row in one transposed tree; then per row the softmax (vector
 * exponential, 8-lane sum); then the weighted sum of values for tiles of
 * rows, each value chunk loaded once for the tile (a lone row: hd in
 * registers in slabs of 64 floats). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "attention.h"

#define INLINE __attribute__((always_inline)) inline

#if SIMD_F16
typedef uint16_t kv_t; /* a prefix or cache element */
#else
typedef float kv_t;
#endif

/* 8 elements of a prefix or cache row, as floats. */
SIMD_TARGET static INLINE __m256 load_kv(const kv_t *p)
{
#if SIMD_F16
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    return _mm256_loadu_ps(p);
#endif
}

/* The lanes of tail (the first hd % 8) of a row's last chunk; the others 0. */
SIMD_TARGET static INLINE __m256 load_kv_tail(const kv_t *p, __m256i tail)
{
#if SIMD_F16
    uint16_t h[8] = {0}; /* never reads past the row */
    const int n = __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(tail)));
    for (int i = 0; i < n; i++) h[i] = p[i];
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
#else
    return _mm256_maskload_ps(p, tail);
#endif
}

/* Lanes [0, n) set. */
SIMD_TARGET static INLINE __m256i lanes_below(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* pd__attn_exp on eight lanes. */
SIMD_TARGET static INLINE __m256 exp8(__m256 x)
{
    const __m256 shift = _mm256_set1_ps(PD__ATTN_SHIFT);
    x = _mm256_max_ps(x, _mm256_set1_ps(PD__ATTN_EXP_MIN));
    const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(PD__ATTN_LOG2E), shift);
    const __m256 n = _mm256_sub_ps(t, shift);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-PD__ATTN_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-PD__ATTN_LN2_LO), r);
    __m256 p = _mm256_set1_ps(PD__ATTN_C5);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PD__ATTN_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PD__ATTN_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PD__ATTN_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PD__ATTN_C1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PD__ATTN_C0));
    const __m256 z = _mm256_mul_ps(r, r);
    __m256 y = _mm256_fmadd_ps(p, z, r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    const __m256i k =
        _mm256_slli_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(shift)), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), k));
}

/* The 8-lane tree of one accumulator: (l0+l4, ..) -> (s0+s2, s1+s3) -> sum. */
SIMD_TARGET static INLINE float reduce1(__m256 v)
{
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 u = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)));
}

/* The same tree for four accumulators at once: lane j = tree(aj). */
SIMD_TARGET static INLINE __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    /* [s(a0) | s(a2)], [s(a1) | s(a3)] with s = l_k + l_(k+4) */
    const __m256 t02 = _mm256_add_ps(_mm256_permute2f128_ps(a0, a2, 0x20),
                                     _mm256_permute2f128_ps(a0, a2, 0x31));
    const __m256 t13 = _mm256_add_ps(_mm256_permute2f128_ps(a1, a3, 0x20),
                                     _mm256_permute2f128_ps(a1, a3, 0x31));
    /* [a0 u0, a0 u1, a1 u0, a1 u1 | a2 .., a3 ..] with u0 = s0+s2, u1 = s1+s3 */
    const __m256 u = _mm256_add_ps(_mm256_shuffle_ps(t02, t13, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(t02, t13, _MM_SHUFFLE(3, 2, 3, 2)));
    /* [a0, a1, a0, a1 | a2, a3, a2, a3] */
    const __m256 w = _mm256_add_ps(_mm256_shuffle_ps(u, u, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(u, u, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm_shuffle_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1),
                          _MM_SHUFFLE(1, 0, 1, 0));
}

static INLINE const kv_t *key_at(const pd_attn *a, const void *prefix, const void *cache, int j)
{
    return j < a->P ? (const kv_t *)prefix + (size_t)j * a->hd
                    : (const kv_t *)cache + pd__attn_entry_at(a, j - a->P);
}

/* Scores of MR rows (queries q[m]) against the NR keys k[0..NR) (NR 4 or
 * 8) into s[m][0..NR), each dot8 * scale. */
SIMD_TARGET static INLINE void score_tile(const float *const *q, const kv_t *const *k, int hd,
                                          __m256i tail, float scale, float s[][8], const int MR,
                                          const int NR)
{
    __m256 acc[SIMD_MR][8];
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; m++)
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++) acc[m][j] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= hd; c += 8) {
        __m256 qv[SIMD_MR];
        _Pragma("GCC unroll 8")
        for (int m = 0; m < MR; m++) qv[m] = _mm256_loadu_ps(q[m] + c);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++) {
            const __m256 kv = load_kv(k[j] + c);
            _Pragma("GCC unroll 8")
            for (int m = 0; m < MR; m++) acc[m][j] = _mm256_fmadd_ps(qv[m], kv, acc[m][j]);
        }
    }
    if (c < hd) { /* missing lanes: fma(0, 0, acc), as the portable kernel */
        __m256 qv[SIMD_MR];
        _Pragma("GCC unroll 8")
        for (int m = 0; m < MR; m++) qv[m] = _mm256_maskload_ps(q[m] + c, tail);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++) {
            const __m256 kv = load_kv_tail(k[j] + c, tail);
            _Pragma("GCC unroll 8")
            for (int m = 0; m < MR; m++) acc[m][j] = _mm256_fmadd_ps(qv[m], kv, acc[m][j]);
        }
    }
    const __m128 sc = _mm_set1_ps(scale);
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; m++)
        _Pragma("GCC unroll 2")
        for (int j = 0; j < NR; j += 4)
            _mm_storeu_ps(s[m] + j, _mm_mul_ps(reduce4(acc[m][j], acc[m][j + 1], acc[m][j + 2],
                                                       acc[m][j + 3]),
                                               sc));
}

/* Scores of rows [r0, r0 + MR) into their probs rows: keys in tiles of NR,
 * the last tile's missing keys repeat the last key and are not stored. */
SIMD_TARGET static INLINE void score_rows(const pd_attn *a, int r0, float scale, __m256i tail,
                                          const int MR, const int NR)
{
    const float *q[SIMD_MR];
    float *pr[SIMD_MR];
    int n[SIMD_MR];
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; m++) {
        const int r = r0 + m, i = r / a->n_heads, h = r % a->n_heads;
        q[m] = a->q + (size_t)i * a->q_stride + (size_t)h * a->hd;
        pr[m] = a->probs + (size_t)r * a->p_stride;
        n[m] = a->n_keys0 + i;
    }
    const int n_max = n[MR - 1]; /* rows are in token order: the last sees the most */
    for (int j0 = 0; j0 < n_max; j0 += NR) {
        const kv_t *k[8];
        _Pragma("GCC unroll 8")
        for (int j = 0; j < NR; j++)
            k[j] = key_at(a, a->pk, a->k, j0 + j < n_max ? j0 + j : n_max - 1);
        float s[SIMD_MR][8];
        score_tile(q, k, a->hd, tail, scale, s, MR, NR);
        _Pragma("GCC unroll 8")
        for (int m = 0; m < MR; m++) {
            const int cnt = n[m] - j0 < NR ? n[m] - j0 : NR;
            if (cnt == NR) {
                _Pragma("GCC unroll 2")
                for (int j = 0; j < NR; j += 4) _mm_storeu_ps(pr[m] + j0 + j, _mm_loadu_ps(s[m] + j));
            } else {
                for (int j = 0; j < cnt; j++) pr[m][j0 + j] = s[m][j];
            }
        }
    }
}

/* p[0..n) scores -> probabilities (softmax_row of attention.c). */
SIMD_TARGET static void softmax_row(float *p, int n)
{
    int j = 0;
    __m256 mv = _mm256_set1_ps(p[0]);
    for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(p + j));
    float mx[8];
    _mm256_storeu_ps(mx, mv);
    float m = mx[0];
    for (int l = 1; l < 8; l++) m = mx[l] > m ? mx[l] : m;
    for (; j < n; j++) m = p[j] > m ? p[j] : m;

    const __m256 mb = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), mb));
        _mm256_storeu_ps(p + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    const __m256i tail = lanes_below(n - j);
    if (j < n) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(p + j, tail), mb));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(tail)); /* missing lanes add +0 */
        _mm256_maskstore_ps(p + j, tail, e);
        acc = _mm256_add_ps(acc, e);
    }
    const __m256 sum = _mm256_set1_ps(reduce1(acc));
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, _mm256_div_ps(_mm256_loadu_ps(p + j), sum));
    if (j < n) _mm256_maskstore_ps(p + j, tail, _mm256_div_ps(_mm256_maskload_ps(p + j, tail), sum));
}

/* o[x0, x0 + 8 NC (+ the tail when TAIL)) = sum_j p_j v_j over the keys
 * [j0, j1) of one segment (rows at base + j * stride), continuing acc. */
SIMD_TARGET static INLINE void av_segment(__m256 *acc, const float *p, const kv_t *base,
                                          size_t stride, int j0, int j1, int x0, __m256i tail,
                                          const int NC, const int TAIL)
{
    for (int j = j0; j < j1; j++) {
        const kv_t *v = base + (size_t)(j - j0) * stride + x0;
        const __m256 pj = _mm256_broadcast_ss(p + j);
        _Pragma("GCC unroll 8")
        for (int c = 0; c < NC; c++) acc[c] = _mm256_fmadd_ps(pj, load_kv(v + 8 * c), acc[c]);
        if (TAIL) acc[NC] = _mm256_fmadd_ps(pj, load_kv_tail(v + 8 * NC, tail), acc[NC]);
    }
}

/* One row's o[x0, x0 + 8 NC (+ tail)) from its probabilities p[0..n). */
SIMD_TARGET static INLINE void av_slab(const pd_attn *a, const float *p, int n, float *o, int x0,
                                       __m256i tail, const int NC, const int TAIL)
{
    __m256 acc[9];
    _Pragma("GCC unroll 9")
    for (int c = 0; c < NC + TAIL; c++) acc[c] = _mm256_setzero_ps();
    const int np = n < a->P ? n : a->P;
    if (np > 0) av_segment(acc, p, (const kv_t *)a->pv, (size_t)a->hd, 0, np, x0, tail, NC, TAIL);
    if (n > a->P && !a->blk)
        av_segment(acc, p, (const kv_t *)a->v, a->kv_stride, a->P, n, x0, tail, NC, TAIL);
    if (n > a->P && a->blk) /* paged: one segment per block, in key order */
        for (int j0 = a->P; j0 < n; j0 += PD_KV_BLOCK) {
            const int j1 = n - j0 < PD_KV_BLOCK ? n : j0 + PD_KV_BLOCK;
            av_segment(acc, p, (const kv_t *)a->v + pd__attn_entry_at(a, j0 - a->P), a->kv_stride,
                       j0, j1, x0, tail, NC, TAIL);
        }
    _Pragma("GCC unroll 8")
    for (int c = 0; c < NC; c++) _mm256_storeu_ps(o + x0 + 8 * c, acc[c]);
    if (TAIL) _mm256_maskstore_ps(o + x0 + 8 * NC, tail, acc[NC]);
}

/* One row's o[x0, hd) in slabs of up to 64 floats, the last with the tail. */
SIMD_TARGET static void av_row(const pd_attn *a, const float *p, int n, float *o, int x0,
                               __m256i tail)
{
    const int has_tail = a->hd % 8 != 0;
    int c0 = x0 / 8;
    const int full = a->hd / 8;
    for (; full - c0 > 8 || (full - c0 == 8 && has_tail); c0 += 8)
        av_slab(a, p, n, o, 8 * c0, tail, 8, 0);
    const int nc = full - c0, xs = 8 * c0;
#define AV_CASE(NC)                                                                               \
    case NC:                                                                                      \
        if (has_tail) av_slab(a, p, n, o, xs, tail, NC, 1);                                       \
        else av_slab(a, p, n, o, xs, tail, NC, 0);                                                \
        break;
    switch (nc) {
    AV_CASE(0) AV_CASE(1) AV_CASE(2) AV_CASE(3) AV_CASE(4) AV_CASE(5) AV_CASE(6) AV_CASE(7)
    AV_CASE(8)
    }
#undef AV_CASE
}

/* acc[c] = fma(pj, v[8c..], acc[c]) for the SIMD_SLAB chunks of one row. */
SIMD_TARGET static INLINE void av_key(__m256 *acc, float pj, const kv_t *v)
{
    const __m256 pb = _mm256_set1_ps(pj);
    _Pragma("GCC unroll 8")
    for (int c = 0; c < SIMD_SLAB; c++) acc[c] = _mm256_fmadd_ps(pb, load_kv(v + 8 * c), acc[c]);
}

/* MR rows at once over o[x0, x0 + 8 SIMD_SLAB): every value row loaded from
 * memory once for all of them (in prefill the values stream from L2 once
 * per tile rather than once per row). Rows are in token order, so row 0
 * sees the fewest keys; the keys only the later rows see follow row by
 * row, each accumulator still in key order. */
SIMD_TARGET static INLINE void av_tile(const pd_attn *a, float *const *p, const int *n,
                                       float *const *o, int x0, const int MR)
{
    __m256 acc[SIMD_AV_MR][SIMD_SLAB];
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; m++)
        _Pragma("GCC unroll 8")
        for (int c = 0; c < SIMD_SLAB; c++) acc[m][c] = _mm256_setzero_ps();
    const int n_min = n[0];
    for (int j = 0; j < n_min; j++) {
        const kv_t *v = key_at(a, a->pv, a->v, j) + x0;
        _Pragma("GCC unroll 8")
        for (int m = 0; m < MR; m++) av_key(acc[m], p[m][j], v);
    }
    _Pragma("GCC unroll 8")
    for (int m = 1; m < MR; m++)
        for (int j = n_min; j < n[m]; j++) av_key(acc[m], p[m][j], key_at(a, a->pv, a->v, j) + x0);
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; m++)
        _Pragma("GCC unroll 8")
        for (int c = 0; c < SIMD_SLAB; c++) _mm256_storeu_ps(o[m] + x0 + 8 * c, acc[m][c]);
}

/* Outputs of rows [r0, r0 + mr): full slabs by tiles of rows, the rest of
 * hd (and a lone row) by av_row. */
SIMD_TARGET static void av_rows(const pd_attn *a, int r0, int mr, __m256i tail)
{
    float *p[SIMD_CHUNK], *o[SIMD_CHUNK];
    int n[SIMD_CHUNK];
    for (int m = 0; m < mr; m++) {
        const int r = r0 + m, i = r / a->n_heads, h = r % a->n_heads;
        p[m] = a->probs + (size_t)r * a->p_stride;
        o[m] = a->o + (size_t)i * a->o_stride + (size_t)h * a->hd;
        n[m] = a->n_keys0 + i;
    }
    int x0 = 0;
    if (mr > 1)
        for (; x0 + 8 * SIMD_SLAB <= a->hd; x0 += 8 * SIMD_SLAB)
            for (int m = 0; m < mr; m += SIMD_AV_MR) {
                const int k = mr - m < SIMD_AV_MR ? mr - m : SIMD_AV_MR;
                switch (k) {
                case 1: av_tile(a, p + m, n + m, o + m, x0, 1); break;
                case 2: av_tile(a, p + m, n + m, o + m, x0, 2); break;
#if SIMD_AV_MR >= 3
                case 3: av_tile(a, p + m, n + m, o + m, x0, 3); break;
#endif
                }
            }
    if (x0 < a->hd)
        for (int m = 0; m < mr; m++) av_row(a, p[m], n[m], o[m], x0, tail);
}

SIMD_TARGET static void score_rows_any(const pd_attn *a, int r0, int mr, float scale,
                                       __m256i tail)
{
    switch (mr) {
    case 1: score_rows(a, r0, scale, tail, 1, 8); break;
#if SIMD_MR >= 2
    case 2: score_rows(a, r0, scale, tail, 2, 4); break;
#endif
#if SIMD_MR >= 3
    case 3: score_rows(a, r0, scale, tail, 3, 4); break;
#endif
#if SIMD_MR >= 4
    case 4: score_rows(a, r0, scale, tail, 4, 4); break;
#endif
    }
}

SIMD_TARGET void SIMD_ENTRY(const pd_attn *a)
{
    const int rows = a->n_tok * a->n_heads;
    const float scale = 1.0f / sqrtf((float)a->hd);
    const __m256i tail = lanes_below(a->hd % 8);
    /* chunks of rows: scores by tiles of SIMD_MR, softmax, values by tiles
     * of SIMD_AV_MR while the chunk's probabilities are in L1 */
    for (int c0 = 0; c0 < rows; c0 += SIMD_CHUNK) {
        const int nc = rows - c0 < SIMD_CHUNK ? rows - c0 : SIMD_CHUNK;
        for (int r0 = c0; r0 < c0 + nc; r0 += SIMD_MR)
            score_rows_any(a, r0, c0 + nc - r0 < SIMD_MR ? c0 + nc - r0 : SIMD_MR, scale, tail);
        for (int r = c0; r < c0 + nc; r++)
            softmax_row(a->probs + (size_t)r * a->p_stride, a->n_keys0 + r / a->n_heads);
        av_rows(a, c0, nc, tail);
    }
}
