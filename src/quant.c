/* quant.c — the weight types' static facts, the reference conversions of the
 * plain and 32-element block types (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, Q8_1), the dispatch of pd_quant_{de,}quantize_row, and pd_wmat.
 * The K-quants (256-element super-blocks) live in quant_k.c.
 *
 * Dequantisation is ggml's, value for value: every product of a half-precision
 * scale and an integer code is exact in float, so each output is the single
 * rounding of the exact d·q (+ m) and equals a double-precision evaluation
 * rounded to float. Quantisation follows ggml's reference (no importance
 * matrix) choices for these types: Q8_0/Q8_1 d = amax/127; Q4_0/Q5_0 d = the
 * signed extreme / -8 (/-16) so that it maps exactly to the lowest code;
 * Q4_1/Q5_1 d = (max - min)/15 (/31), m = min. Deterministic, no state. */
#include "prefixd/quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "prefixd/half.h"
#include "quant_internal.h"

typedef struct qtype_info {
    const char *name;
    int block;       /* elements per block; 0: not a type */
    size_t bytes;    /* bytes per block */
    int weight;      /* may appear in a model file */
} qtype_info;

static const qtype_info types[PD_Q_COUNT] = {
    [PD_Q_F32] = {"F32", 1, 4, 1},
    [PD_Q_F16] = {"F16", 1, 2, 1},
    [PD_Q_BF16] = {"BF16", 1, 2, 1},
    [PD_Q_Q4_0] = {"Q4_0", PD_QK4_0, sizeof(pd_block_q4_0), 1},
    [PD_Q_Q4_1] = {"Q4_1", PD_QK4_1, sizeof(pd_block_q4_1), 1},
    [PD_Q_Q5_0] = {"Q5_0", PD_QK5_0, sizeof(pd_block_q5_0), 1},
    [PD_Q_Q5_1] = {"Q5_1", PD_QK5_1, sizeof(pd_block_q5_1), 1},
    [PD_Q_Q8_0] = {"Q8_0", PD_QK8_0, sizeof(pd_block_q8_0), 1},
    [PD_Q_Q8_1] = {"Q8_1", PD_QK8_1, sizeof(pd_block_q8_1), 0},
    [PD_Q_Q2_K] = {"Q2_K", PD_QK_K, sizeof(pd_block_q2_K), 1},
    [PD_Q_Q3_K] = {"Q3_K", PD_QK_K, sizeof(pd_block_q3_K), 1},
    [PD_Q_Q4_K] = {"Q4_K", PD_QK_K, sizeof(pd_block_q4_K), 1},
    [PD_Q_Q5_K] = {"Q5_K", PD_QK_K, sizeof(pd_block_q5_K), 1},
    [PD_Q_Q6_K] = {"Q6_K", PD_QK_K, sizeof(pd_block_q6_K), 1},
    [PD_Q_Q8_K] = {"Q8_K", PD_QK_K, sizeof(pd_block_q8_K), 0},
};

static const qtype_info *info(int type)
{
    if (type < 0 || type >= PD_Q_COUNT || !types[type].block) return NULL;
    return &types[type];
}

const char *pd_qtype_name(int type)
{
    const qtype_info *t = info(type);
    return t ? t->name : NULL;
}

int pd_qtype_block_size(int type)
{
    const qtype_info *t = info(type);
    return t ? t->block : 0;
}

size_t pd_qtype_block_bytes(int type)
{
    const qtype_info *t = info(type);
    return t ? t->bytes : 0;
}

int pd_qtype_is_weight_type(int type)
{
    const qtype_info *t = info(type);
    return t ? t->weight : 0;
}

int pd_qtype_from_name(const char *name)
{
    if (!name) return -1;
    for (int i = 0; i < PD_Q_COUNT; i++) {
        const char *n = types[i].name;
        if (!n) continue;
        size_t k = 0;
        while (n[k] && name[k] &&
               (n[k] == name[k] || (name[k] >= 'a' && name[k] <= 'z' && n[k] == name[k] - 32)))
            k++;
        if (!n[k] && !name[k]) return i;
    }
    return -1;
}

size_t pd_qtype_row_bytes(int type, int64_t n)
{
    const qtype_info *t = info(type);
    if (!t || n <= 0 || n % t->block) return 0;
    return (size_t)(n / t->block) * t->bytes;
}

double pd_qtype_bits_per_weight(int type)
{
    const qtype_info *t = info(type);
    return t ? 8.0 * (double)t->bytes / t->block : 0.0;
}

/* ---- helpers shared with quant_k.c ---- */

int pd__nearest_int(float v)
{
    /* round half to even, as ggml's nearest_int (exact for |v| < 2^22, the
     * range of its magic-number trick); out-of-range and NaN inputs (absurd
     * weights) are clamped rather than undefined */
    if (v != v) return 0;
    if (v > 4194303.0f) return 4194303;
    if (v < -4194303.0f) return -4194303;
    return (int)lrintf(v);
}

/* ---- 32-element blocks ---- */

static void dequant_q4_0(const pd_block_q4_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += PD_QK4_0) {
        float d = pd_f16_to_f32(b[i].d);
        for (int j = 0; j < PD_QK4_0 / 2; j++) {
            y[j] = (float)((b[i].qs[j] & 0xF) - 8) * d;
            y[j + PD_QK4_0 / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const pd_block_q4_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += PD_QK4_1) {
        float d = pd_f16_to_f32(b[i].d), m = pd_f16_to_f32(b[i].m);
        for (int j = 0; j < PD_QK4_1 / 2; j++) {
            y[j] = (float)(b[i].qs[j] & 0xF) * d + m;
            y[j + PD_QK4_1 / 2] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

/* The 5-bit code of element j (0..31) of a Q5 block. */
static int q5_code(const uint8_t *qs, const uint8_t *qh, int j)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    int lo = j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4;
    return lo | (int)((h >> j) & 1) << 4;
}

static void dequant_q5_0(const pd_block_q5_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += PD_QK5_0) {
        float d = pd_f16_to_f32(b[i].d);
        for (int j = 0; j < PD_QK5_0; j++) y[j] = (float)(q5_code(b[i].qs, b[i].qh, j) - 16) * d;
    }
}

static void dequant_q5_1(const pd_block_q5_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += PD_QK5_1) {
        float d = pd_f16_to_f32(b[i].d), m = pd_f16_to_f32(b[i].m);
        for (int j = 0; j < PD_QK5_1; j++) y[j] = (float)q5_code(b[i].qs, b[i].qh, j) * d + m;
    }
}

static void dequant_q8_0(const pd_block_q8_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += PD_QK8_0) {
        float d = pd_f16_to_f32(b[i].d);
        for (int j = 0; j < PD_QK8_0; j++) y[j] = (float)b[i].qs[j] * d;
    }
}

static void dequant_q8_1(const pd_block_q8_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += PD_QK8_1) {
        float d = pd_f16_to_f32(b[i].d);
        for (int j = 0; j < PD_QK8_1; j++) y[j] = (float)b[i].qs[j] * d;
    }
}

float pd__signed_absmax(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}

static float absmax(const float *x, int n) { return fabsf(pd__signed_absmax(x, n)); }

/* Clamps v to [0, hi] and truncates (the codes of ggml's "+ 0.5" rounding). */
static uint8_t code_trunc(float v, int hi)
{
    if (!(v > 0.0f)) return 0;
    if (v >= (float)hi) return (uint8_t)hi;
    return (uint8_t)(int)v;
}

static void quant_q4_0(const float *x, pd_block_q4_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += PD_QK4_0) {
        float d = pd__signed_absmax(x, PD_QK4_0) / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = pd_f32_to_f16(d);
        for (int j = 0; j < PD_QK4_0 / 2; j++) {
            uint8_t lo = code_trunc(x[j] * id + 8.5f, 15);
            uint8_t hi = code_trunc(x[j + PD_QK4_0 / 2] * id + 8.5f, 15);
            b[i].qs[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

/* min and max of x[0..n). */
static void min_max(const float *x, int n, float *mn, float *mx)
{
    *mn = FLT_MAX;
    *mx = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < *mn) *mn = x[j];
        if (x[j] > *mx) *mx = x[j];
    }
}

static void quant_q4_1(const float *x, pd_block_q4_1 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += PD_QK4_1) {
        float mn, mx;
        min_max(x, PD_QK4_1, &mn, &mx);
        float d = (mx - mn) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = pd_f32_to_f16(d);
        b[i].m = pd_f32_to_f16(mn);
        for (int j = 0; j < PD_QK4_1 / 2; j++) {
            uint8_t lo = code_trunc((x[j] - mn) * id + 0.5f, 15);
            uint8_t hi = code_trunc((x[j + PD_QK4_1 / 2] - mn) * id + 0.5f, 15);
            b[i].qs[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

/* Packs 32 five-bit codes into qs (low nibbles) and qh (the fifth bits). */
static void pack_q5(const uint8_t *codes, uint8_t *qs, uint8_t *qh)
{
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((codes[j] & 0xF) | (codes[j + 16] & 0xF) << 4);
        h |= (uint32_t)(codes[j] >> 4) << j;
        h |= (uint32_t)(codes[j + 16] >> 4) << (j + 16);
    }
    memcpy(qh, &h, 4);
}

static void quant_q5_0(const float *x, pd_block_q5_0 *b, int64_t nb)
{
    uint8_t codes[PD_QK5_0];
    for (int64_t i = 0; i < nb; i++, x += PD_QK5_0) {
        float d = pd__signed_absmax(x, PD_QK5_0) / -16.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = pd_f32_to_f16(d);
        for (int j = 0; j < PD_QK5_0; j++) codes[j] = code_trunc(x[j] * id + 16.5f, 31);
        pack_q5(codes, b[i].qs, b[i].qh);
    }
}

static void quant_q5_1(const float *x, pd_block_q5_1 *b, int64_t nb)
{
    uint8_t codes[PD_QK5_1];
    for (int64_t i = 0; i < nb; i++, x += PD_QK5_1) {
        float mn, mx;
        min_max(x, PD_QK5_1, &mn, &mx);
        float d = (mx - mn) / 31.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = pd_f32_to_f16(d);
        b[i].m = pd_f32_to_f16(mn);
        for (int j = 0; j < PD_QK5_1; j++) codes[j] = code_trunc((x[j] - mn) * id + 0.5f, 31);
        pack_q5(codes, b[i].qs, b[i].qh);
    }
}

/* round(v) half away from zero, clamped to int8. */
static int8_t code_i8(float v)
{
    float r = roundf(v);
    if (!(r > -128.0f)) return r != r ? 0 : -128;
    if (r > 127.0f) return 127;
    return (int8_t)(int)r;
}

/* 32 int8 codes of x with d = amax/127 (returned, unrounded). */
static float q8_codes(const float *x, int8_t *qs)
{
    float d = absmax(x, 32) / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) qs[j] = code_i8(x[j] * id);
    return d;
}

static void quant_q8_0(const float *x, pd_block_q8_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += PD_QK8_0) b[i].d = pd_f32_to_f16(q8_codes(x, b[i].qs));
}

static void quant_q8_1(const float *x, pd_block_q8_1 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += PD_QK8_1) {
        float d = q8_codes(x, b[i].qs);
        int sum = 0;
        for (int j = 0; j < PD_QK8_1; j++) sum += b[i].qs[j];
        b[i].d = pd_f32_to_f16(d);
        b[i].s = pd_f32_to_f16((float)sum * d);
    }
}

/* ---- dispatch ---- */

void pd_quant_dequantize_row(int type, const void *src, float *dst, int64_t n)
{
    const qtype_info *t = info(type);
    PD_ASSERT(t && n >= 0 && n % t->block == 0);
    int64_t nb = n / t->block;
    switch (type) {
    case PD_Q_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case PD_Q_F16: pd_f16_to_f32_n(src, dst, (size_t)n); break;
    case PD_Q_BF16: pd_bf16_to_f32_n(src, dst, (size_t)n); break;
    case PD_Q_Q4_0: dequant_q4_0(src, dst, nb); break;
    case PD_Q_Q4_1: dequant_q4_1(src, dst, nb); break;
    case PD_Q_Q5_0: dequant_q5_0(src, dst, nb); break;
    case PD_Q_Q5_1: dequant_q5_1(src, dst, nb); break;
    case PD_Q_Q8_0: dequant_q8_0(src, dst, nb); break;
    case PD_Q_Q8_1: dequant_q8_1(src, dst, nb); break;
    default: pd__dequantize_k(type, src, dst, nb); break;
    }
}

void pd_quant_quantize_row(int type, const float *src, void *dst, int64_t n)
{
    const qtype_info *t = info(type);
    PD_ASSERT(t && n >= 0 && n % t->block == 0);
    int64_t nb = n / t->block;
    switch (type) {
    case PD_Q_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case PD_Q_F16: {
        unsigned char *p = dst;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = pd_f32_to_f16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    }
    case PD_Q_BF16: {
        unsigned char *p = dst;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = pd_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    }
    case PD_Q_Q4_0: quant_q4_0(src, dst, nb); break;
    case PD_Q_Q4_1: quant_q4_1(src, dst, nb); break;
    case PD_Q_Q5_0: quant_q5_0(src, dst, nb); break;
    case PD_Q_Q5_1: quant_q5_1(src, dst, nb); break;
    case PD_Q_Q8_0: quant_q8_0(src, dst, nb); break;
    case PD_Q_Q8_1: quant_q8_1(src, dst, nb); break;
    default: pd__quantize_k(type, src, dst, nb); break;
    }
}

/* ---- typed matrices ---- */

pd_wmat pd_wmat_f32(const float *data, int rows, int cols)
{
    pd_wmat w = {data, PD_Q_F32, rows, cols, (size_t)cols * sizeof(float)};
    return w;
}

void pd_wmat_row_f32(const pd_wmat *W, int r, float *out)
{
    PD_ASSERT(W && r >= 0 && r < W->rows);
    pd_quant_dequantize_row(W->type, (const char *)W->data + (size_t)r * W->row_bytes, out,
                            W->cols);
}
