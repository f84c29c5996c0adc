/* ops.c — forward operations shared by the engine and training (ops.h). */
#include "ops.h"

#include <math.h>

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
