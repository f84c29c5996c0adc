/* ops.c — forward operations shared by the engine and training (ops.h). */
#include "ops.h"

#include <math.h>
#include <string.h>

#include <immintrin.h>

#include "prefixd/matmul.h"
#include "prefixd/model.h"

void pd__rmsnorm_rows(float *o, float *rs, const float *x, const float *w, int T, int C,
                      float eps)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * C;
        float *orow = o + (size_t)t * C;
        float ss = 0.0f;
        for (int j = 0; j < C; j++) ss += xr[j] * xr[j];
        ss /= C;
        ss += eps;
        ss = 1.0f / sqrtf(ss);
        if (rs) rs[t] = ss;
        for (int j = 0; j < C; j++) orow[j] = w[j] * (ss * xr[j]);
    }
}

void pd__rope_table(float *cs, int pos, int hd, float base)
{
    pd__rope_table_ext(cs, pos, hd, base, 1.0f, NULL);
}

void pd__rope_table_ext(float *cs, int pos, int hd, float base, float freq_scale,
                        const float *factors)
{
    for (int j = 0; j < hd / 2; j++) {
        float freq = 1.0f / powf(base, (float)(2 * j) / (float)hd);
        if (factors) freq /= factors[j];
        float val = (float)pos * freq;
        if (freq_scale != 1.0f) val *= freq_scale;
        cs[2 * j] = cosf(val);
        cs[2 * j + 1] = sinf(val);
    }
}

/* NeoX: pair j of each head is (x[j], x[j + hd/2]). */
static void rope_apply_neox(float *vec, int n, int hd, const float *cs, float sign)
{
    const int half = hd / 2;
    for (int h = 0; h < n; h += hd)
        for (int j = 0; j < half; j++) {
            float fcr = cs[2 * j], fci = sign * cs[2 * j + 1];
            float v0 = vec[h + j], v1 = vec[h + j + half];
            vec[h + j] = v0 * fcr - v1 * fci;
            vec[h + j + half] = v0 * fci + v1 * fcr;
        }
}

void pd__rope_rows(float *x, int R, int n, int hd, const float *rope, int rope_type, float sign)
{
    for (int t = 0; t < R; t++) {
        if (rope_type == PD_ROPE_NEOX)
            rope_apply_neox(x + (size_t)t * n, n, hd, rope + (size_t)t * hd, sign);
        else
            pd__rope_apply(x + (size_t)t * n, n, hd, rope + (size_t)t * hd, sign);
    }
}

static void add_bias(float *x, const float *b, int T, int n)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++) x[(size_t)t * n + i] += b[i];
}

void pd__qkv_finish(const pd_model *m, int l, float *q, float *k, float *v, int T,
                    const float *rope, pd__qk_saved *save)
{
    const pd_config *c = &m->cfg;
    const pd_layer_weights *w = &m->w.layers[l];
    const int QD = c->q_dim, KV = c->kv_dim, hd = c->head_dim;
    if (w->bq) add_bias(q, w->bq, T, QD);
    if (w->bk) add_bias(k, w->bk, T, KV);
    if (w->bv) add_bias(v, w->bv, T, KV);
    if (w->q_norm) {
        /* each head is a row of hd floats; in place */
        if (save) memcpy(save->q_pre, q, (size_t)T * QD * sizeof(float));
        pd__rmsnorm_rows(q, save ? save->q_rs : NULL, q, w->q_norm, T * c->n_heads, hd,
                         c->norm_eps);
    }
    if (w->k_norm) {
        if (save) memcpy(save->k_pre, k, (size_t)T * KV * sizeof(float));
        pd__rmsnorm_rows(k, save ? save->k_rs : NULL, k, w->k_norm, T * c->n_kv_heads, hd,
                         c->norm_eps);
    }
    pd__rope_rows(q, T, QD, hd, rope, c->rope_type, 1.0f);
    pd__rope_rows(k, T, KV, hd, rope, c->rope_type, 1.0f);
}

void pd__rope_apply(float *vec, int n, int hd, const float *cs, float sign)
{
    for (int i = 0; i < n; i += 2) {
        int j = (i % hd) / 2;
        float fcr = cs[2 * j], fci = sign * cs[2 * j + 1];
        float v0 = vec[i], v1 = vec[i + 1];
        vec[i] = v0 * fcr - v1 * fci;
        vec[i + 1] = v0 * fci + v1 * fcr;
    }
}

/* q·k over n floats in one fixed order whatever the CPU: eight lane sums
 * over i ≡ j (mod 8) with fused multiply-adds, a tail into the first lanes,
 * then the reduction (l0+l4, l1+l5, l2+l6, l3+l7) -> (s0+s2, s1+s3) -> sum,
 * as pd_matmul (matmul.h). */
static float dot_portable(const float *q, const float *k, int n)
{
    float l[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) l[j] = fmaf(q[i + j], k[i + j], l[j]);
    for (int j = 0; i + j < n; j++) l[j] = fmaf(q[i + j], k[i + j], l[j]);
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *q, const float *k, int n)
{
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), acc);
    float l[8];
    _mm256_storeu_ps(l, acc);
    for (int j = 0; i + j < n; j++) l[j] = fmaf(q[i + j], k[i + j], l[j]);
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

static float dot(const float *q, const float *k, int n)
{
    return pd_matmul_uses_avx2() ? dot_avx2(q, k, n) : dot_portable(q, k, n);
}

void pd__attend_head(const float *q, const float *pk, const float *pv, int P, const float *k,
                     const float *v, size_t stride, int n_ctx, int hd, float *att, float *o)
{
    const float scale = 1.0f / sqrtf((float)hd);
    for (int p = 0; p < P; p++) {
        att[p] = dot(q, pk + (size_t)p * hd, hd) * scale;
    }
    for (int j = 0; j < n_ctx; j++) {
        const float *kk = k + (size_t)j * stride;
        att[P + j] = dot(q, kk, hd) * scale;
    }
    const int n = P + n_ctx;
    float max = att[0];
    for (int i = 1; i < n; i++)
        if (att[i] > max) max = att[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        att[i] = expf(att[i] - max);
        sum += att[i];
    }
    for (int i = 0; i < n; i++) att[i] /= sum;
    memset(o, 0, (size_t)hd * sizeof(float));
    for (int p = 0; p < P; p++) {
        const float *vv = pv + (size_t)p * hd;
        float a = att[p];
        for (int i = 0; i < hd; i++) o[i] += a * vv[i];
    }
    for (int j = 0; j < n_ctx; j++) {
        const float *vv = v + (size_t)j * stride;
        float a = att[P + j];
        for (int i = 0; i < hd; i++) o[i] += a * vv[i];
    }
}
