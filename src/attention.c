/* attention.c — the portable attention kernel, the exponential every kernel
 * shares, and the choice of kernel at run time (contract in attention.h).
 * The portable kernel is the definition: it spells out, one float
 * operation at a time, the order the vector kernels (attention_simd.h)
 * reproduce with wider instructions. */
#include "attention.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "prefixd/common.h"
#include "prefixd/half.h"

float pd__attn_exp(float x)
{
    x = x > PD__ATTN_EXP_MIN ? x : PD__ATTN_EXP_MIN; /* as maxps(x, min): NaN -> min */
    const float t = fmaf(x, PD__ATTN_LOG2E, PD__ATTN_SHIFT);
    const float n = t - PD__ATTN_SHIFT;
    float r = fmaf(n, -PD__ATTN_LN2_HI, x);
    r = fmaf(n, -PD__ATTN_LN2_LO, r);
    float p = PD__ATTN_C5;
    p = fmaf(p, r, PD__ATTN_C4);
    p = fmaf(p, r, PD__ATTN_C3);
    p = fmaf(p, r, PD__ATTN_C2);
    p = fmaf(p, r, PD__ATTN_C1);
    p = fmaf(p, r, PD__ATTN_C0);
    const float z = r * r;
    float y = fmaf(p, z, r);
    y = y + 1.0f;
    /* y * 2^n: n (in [-126, 0]) sits in t's low mantissa bits */
    uint32_t tb, sb, yb;
    const float shift = PD__ATTN_SHIFT;
    memcpy(&tb, &t, 4);
    memcpy(&sb, &shift, 4);
    memcpy(&yb, &y, 4);
    yb += (tb - sb) << 23;
    memcpy(&y, &yb, 4);
    return y;
}

/* Logical key j's row in the prefix slots or the cache (prefix, cache:
 * the keys' or the values'), floats or halves as a->f16 says. */
static const void *key_row(const pd_attn *a, const void *prefix, const void *cache, int j)
{
    const size_t es = a->f16 ? sizeof(uint16_t) : sizeof(float);
    if (j < a->P) return (const char *)prefix + (size_t)j * a->hd * es;
    return (const char *)cache + pd__attn_entry_at(a, j - a->P) * es;
}

/* Element i of a row: a float, or a half widened. */
static inline float elem(const void *row, int i, int f16)
{
    return f16 ? pd_f16_to_f32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

/* q·k in the 8-lane order of attention.h. */
static float dot8(const float *q, const void *k, int hd, int f16)
{
    float l[8] = {0};
    int i = 0;
    for (; i + 8 <= hd; i += 8)
        for (int j = 0; j < 8; j++) l[j] = fmaf(q[i + j], elem(k, i + j, f16), l[j]);
    if (i < hd)
        for (int j = 0; j < 8; j++)
            l[j] = i + j < hd ? fmaf(q[i + j], elem(k, i + j, f16), l[j]) : fmaf(0.0f, 0.0f, l[j]);
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

/* p[0..n) scores -> probabilities. */
static void softmax_row(float *p, int n)
{
    float m = p[0];
    for (int j = 1; j < n; j++) m = p[j] > m ? p[j] : m;
    float l[8] = {0};
    for (int j0 = 0; j0 < n; j0 += 8)
        for (int j = 0; j < 8; j++) {
            float e = 0.0f;
            if (j0 + j < n) e = p[j0 + j] = pd__attn_exp(p[j0 + j] - m);
            l[j] += e;
        }
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    const float sum = (s0 + s2) + (s1 + s3);
    for (int j = 0; j < n; j++) p[j] /= sum;
}

void pd__attend_portable(const pd_attn *a)
{
    const int hd = a->hd;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int r = 0; r < a->n_tok * a->n_heads; r++) {
        const int i = r / a->n_heads, h = r % a->n_heads, n = a->n_keys0 + i;
        const float *q = a->q + (size_t)i * a->q_stride + (size_t)h * hd;
        float *o = a->o + (size_t)i * a->o_stride + (size_t)h * hd;
        float *p = a->probs + (size_t)r * a->p_stride;
        for (int j = 0; j < n; j++)
            p[j] = dot8(q, key_row(a, a->pk, a->k, j), hd, a->f16) * scale;
        softmax_row(p, n);
        for (int x = 0; x < hd; x++) o[x] = 0.0f;
        for (int j = 0; j < n; j++) {
            const void *v = key_row(a, a->pv, a->v, j);
            for (int x = 0; x < hd; x++) o[x] = fmaf(p[j], elem(v, x, a->f16), o[x]);
        }
    }
}

int pd__attn_isa_available(pd_attn_isa isa)
{
    __builtin_cpu_init();
    switch (isa) {
    case PD_ATTN_PORTABLE: return 1;
    case PD_ATTN_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               pd_cpu_has_f16c();
    case PD_ATTN_AVX512:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               pd_cpu_has_f16c() &&
               __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    }
    return 0;
}

pd_attn_isa pd__attn_best(void)
{
    static int cached = -1; /* benign race: every thread computes the same value */
    if (cached < 0)
        cached = pd__attn_isa_available(PD_ATTN_AVX512) ? PD_ATTN_AVX512
                 : pd__attn_isa_available(PD_ATTN_AVX2) ? PD_ATTN_AVX2
                                                        : PD_ATTN_PORTABLE;
    return (pd_attn_isa)cached;
}

static void run(const pd_attn *a, pd_attn_isa isa)
{
    PD_ASSERT(a->hd > 0 && a->n_keys0 >= 1 && a->n_tok >= 0 && a->n_heads >= 1);
    PD_ASSERT(a->p_stride >= (size_t)(a->n_keys0 + a->n_tok - 1));
    switch (isa) {
    case PD_ATTN_AVX512: (a->f16 ? pd__attend_avx512_f16 : pd__attend_avx512)(a); break;
    case PD_ATTN_AVX2: (a->f16 ? pd__attend_avx2_f16 : pd__attend_avx2)(a); break;
    default: pd__attend_portable(a); break;
    }
}

void pd__attend_isa(const pd_attn *a, pd_attn_isa isa)
{
    PD_ASSERT(pd__attn_isa_available(isa));
    run(a, isa);
}

void pd__attend(const pd_attn *a) { run(a, pd__attn_best()); }
