/* ops.c — forward operations shared by the engine and training (ops.h). */
#include "ops.h"

#include <math.h>
#include <string.h>

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
    for (int j = 0; j < hd / 2; j++) {
        float freq = 1.0f / powf(base, (float)(2 * j) / (float)hd);
        float val = (float)pos * freq;
        cs[2 * j] = cosf(val);
        cs[2 * j + 1] = sinf(val);
    }
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

void pd__attend_head(const float *q, const float *pk, const float *pv, int P, const float *k,
                     const float *v, size_t stride, int n_ctx, int hd, float *att, float *o)
{
    const float scale = 1.0f / sqrtf((float)hd);
    for (int p = 0; p < P; p++) {
        float score = 0.0f;
        for (int i = 0; i < hd; i++) score += q[i] * pk[(size_t)p * hd + i];
        att[p] = score * scale;
    }
    for (int j = 0; j < n_ctx; j++) {
        const float *kk = k + (size_t)j * stride;
        float score = 0.0f;
        for (int i = 0; i < hd; i++) score += q[i] * kk[i];
        att[P + j] = score * scale;
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
