/* ops.c — forward operations shared by the engine and training (ops.h). */
#include "ops.h"

#include <math.h>
#include <string.h>

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
