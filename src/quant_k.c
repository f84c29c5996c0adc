/* quant_k.c — reference conversions of ggml's K-quants (Q2_K … Q6_K) and of
 * the Q8_K activation format: 256-element super-blocks whose sub-blocks (16
 * or 32 elements) carry their own small integer scale (and min) that is in
 * turn scaled by the block's half-precision d (and dmin).
 *
 * Element e of a super-block belongs to sub-block e/16 (Q2_K, Q3_K, Q6_K) or
 * e/32 (Q4_K, Q5_K); where its code bits sit is spelled out per type below.
 *
 * Quantisation (deterministic, no importance matrix), as ggml's reference
 * quantisers choose:
 *   - Q2_K, Q4_K, Q5_K (codes 0..nmax with a min): per sub-block a search over
 *     candidate scales for the (scale, min) pair of least weighted error
 *     (least squares fit of x ≈ scale·q − min over the rounded codes of each
 *     candidate); weights |x| (Q2_K, absolute error) or rms(x) + |x| (Q4_K,
 *     Q5_K, squared error). The sub-block scales and mins are then coded on 4
 *     (Q2_K) or 6 bits relative to their maximum, and the codes recomputed
 *     with the coded scales.
 *   - Q3_K, Q6_K (signed codes): the scale that maximises the x²-weighted
 *     fit, (Σ w·x·q)² / Σ w·q², found by coordinate refinement of the codes
 *     (Q3_K) or by trying 19 scales around nmax/max (Q6_K); scales coded as
 *     signed 6-bit (Q3_K) or int8 (Q6_K) values. */
#include <math.h>
#include <string.h>

#include "prefixd/half.h"
#include "prefixd/quant.h"
#include "quant_internal.h"

#define SUB_EPS 1e-15f /* a sub-block with max |x| below this is all zero */

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ---- scale packing ---- */

/* The 6-bit scale and min of sub-block j (0..7) of Q4_K/Q5_K. */
static void k4_scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | (s[j - 4] >> 6) << 4;
        *mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

static void k4_pack(uint8_t *s, const uint8_t *ls, const uint8_t *lm)
{
    memset(s, 0, PD_K_SCALE_SIZE);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] |= ls[j];
            s[j + 4] |= lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | (lm[j] & 0xF) << 4);
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

/* The signed scale (-32..31) of sub-block j (0..15) of Q3_K. */
static int k3_scale(const uint8_t *s, int j)
{
    int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

/* ---- dequantisation ---- */

static void dequant_q2_K(const pd_block_q2_K *b, float *y)
{
    float d = pd_f16_to_f32(b->d), dmin = pd_f16_to_f32(b->dmin);
    for (int sb = 0; sb < 16; sb++) {
        float dl = d * (float)(b->scales[sb] & 0xF), ml = dmin * (float)(b->scales[sb] >> 4);
        for (int e = 16 * sb; e < 16 * sb + 16; e++) {
            int q = (b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
            y[e] = dl * (float)q - ml;
        }
    }
}

static void dequant_q3_K(const pd_block_q3_K *b, float *y)
{
    float d = pd_f16_to_f32(b->d);
    for (int sb = 0; sb < 16; sb++) {
        float dl = d * (float)k3_scale(b->scales, sb);
        for (int e = 16 * sb; e < 16 * sb + 16; e++) {
            int q = (b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
            int high = (b->hmask[e % 32] >> (e / 32)) & 1;
            y[e] = dl * (float)(q - (high ? 0 : 4));
        }
    }
}

/* Q4_K and Q5_K: sub-block sb's scale and min applied to its 32 codes
 * (qh NULL for Q4_K). */
static void dequant_k4(const uint8_t *scales, pd_half dh, pd_half dminh, const uint8_t *qs,
                       const uint8_t *qh, float *y)
{
    float d = pd_f16_to_f32(dh), dmin = pd_f16_to_f32(dminh);
    for (int sb = 0; sb < 8; sb++) {
        int sc, mn;
        k4_scale_min(scales, sb, &sc, &mn);
        float dl = d * (float)sc, ml = dmin * (float)mn;
        for (int e = 32 * sb; e < 32 * sb + 32; e++) {
            uint8_t byte = qs[(e / 64) * 32 + e % 32];
            int q = (e % 64) < 32 ? byte & 0xF : byte >> 4;
            if (qh) q |= ((qh[e % 32] >> (e / 32)) & 1) << 4;
            y[e] = dl * (float)q - ml;
        }
    }
}

static void dequant_q4_K(const pd_block_q4_K *b, float *y)
{
    dequant_k4(b->scales, b->d, b->dmin, b->qs, NULL, y);
}

static void dequant_q5_K(const pd_block_q5_K *b, float *y)
{
    dequant_k4(b->scales, b->d, b->dmin, b->qs, b->qh, y);
}

/* The 6-bit code (0..63) of element e of a Q6_K block. */
static int q6_code(const pd_block_q6_K *b, int e)
{
    int n = e / 128, quarter = (e % 128) / 32, l = e % 32;
    uint8_t lo = b->ql[n * 64 + (quarter & 1) * 32 + l];
    int low = quarter < 2 ? lo & 0xF : lo >> 4;
    int high = (b->qh[n * 32 + l] >> (2 * quarter)) & 3;
    return low | high << 4;
}

static void dequant_q6_K(const pd_block_q6_K *b, float *y)
{
    float d = pd_f16_to_f32(b->d);
    for (int sb = 0; sb < 16; sb++) {
        float dl = d * (float)b->scales[sb];
        for (int e = 16 * sb; e < 16 * sb + 16; e++) y[e] = dl * (float)(q6_code(b, e) - 32);
    }
}

static void dequant_q8_K(const pd_block_q8_K *b, float *y)
{
    for (int e = 0; e < PD_QK_K; e++) y[e] = b->d * (float)b->qs[e];
}

void pd__dequantize_k(int type, const void *src, float *dst, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, dst += PD_QK_K) {
        switch (type) {
        case PD_Q_Q2_K: dequant_q2_K((const pd_block_q2_K *)src + i, dst); break;
        case PD_Q_Q3_K: dequant_q3_K((const pd_block_q3_K *)src + i, dst); break;
        case PD_Q_Q4_K: dequant_q4_K((const pd_block_q4_K *)src + i, dst); break;
        case PD_Q_Q5_K: dequant_q5_K((const pd_block_q5_K *)src + i, dst); break;
        case PD_Q_Q6_K: dequant_q6_K((const pd_block_q6_K *)src + i, dst); break;
        case PD_Q_Q8_K: dequant_q8_K((const pd_block_q8_K *)src + i, dst); break;
        default: PD_ASSERT(0 && "not a K-quant type");
        }
    }
}

/* ---- scale searches ---- */

/* Codes L[i] in 0..nmax and (scale, min) with x ≈ scale·L − min (min >= 0
 * returned in *the_min) minimising Σ w·err (err = |diff| when use_abs, else
 * diff²): starting from the min/max grid, nstep+1 candidate grids
 * (nmax + rmin + rdelta·k)/(max − min) are rounded and refitted by weighted
 * least squares; the best is kept. Returns the scale. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *the_min, float rmin, float rdelta, int nstep, int use_abs)
{
    uint8_t Lc[32];
    PD_ASSERT(n <= 32);
    float lo = x[0], hi = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *the_min = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo), scale = 1.0f / iscale, min = lo;
    float best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(pd__nearest_int(iscale * (x[i] - lo)), 0, nmax);
        float diff = scale * L[i] + lo - x[i];
        best += w[i] * (use_abs ? fabsf(diff) : diff * diff);
    }
    for (int k = 0; k <= nstep; k++) {
        /* the grid is anchored at the best min so far (as ggml does, so the
         * files match llama-quantize's byte for byte) */
        iscale = (rmin + rdelta * (float)k + (float)nmax) / (hi - min);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(pd__nearest_int(iscale * (x[i] - min)), 0, nmax);
            Lc[i] = (uint8_t)l;
            sl += w[i] * (float)l;
            sl2 += w[i] * (float)l * (float)l;
            sxl += w[i] * (float)l * x[i];
        }
        float det = sum_w * sl2 - sl * sl;
        if (!(det > 0)) continue;
        float s = (sum_w * sxl - sum_x * sl) / det;
        float m = (sl2 * sum_x - sl * sxl) / det;
        if (m > 0) {
            m = 0;
            s = sxl / sl2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float diff = s * Lc[i] + m - x[i];
            err += w[i] * (use_abs ? fabsf(diff) : diff * diff);
        }
        if (err < best) {
            memcpy(L, Lc, (size_t)n);
            best = err;
            scale = s;
            min = m;
        }
    }
    *the_min = -min;
    return scale;
}

/* Signed codes L[i] in -nmax..nmax-1 (stored + nmax) and the scale that
 * maximises the x²-weighted fit, trying 19 grids (nmax + 0.1·k)/max around
 * the one that maps the extreme value to -nmax. Returns the scale (0 for an
 * all-zero sub-block). */
static float fit_scale_signed(int n, int nmax, const float *x, int8_t *L)
{
    float max = pd__signed_absmax(x, n);
    if (fabsf(max) < SUB_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    /* candidate 0 (the extreme value's grid) is taken as is; then -9..-1,
     * 1..9 replace it when strictly better (ggml's order, for equal files) */
    float scale = 0, best = 0;
    for (int k = 0; k <= 18; k++) {
        int is = k == 0 ? 0 : k <= 9 ? k - 10 : k - 9;
        float iscale = -((float)nmax + 0.1f * (float)is) / max;
        float sxl = 0, sl2 = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(pd__nearest_int(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sxl += w * x[i] * (float)l;
            sl2 += w * (float)l * (float)l;
        }
        if (k == 0 || (sl2 > 0 && sxl * sxl > best * sl2)) {
            scale = sl2 > 0 ? sxl / sl2 : 0.0f;
            best = scale * sxl;
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + clampi(pd__nearest_int(iscale * x[i]), -nmax, nmax - 1));
        }
    }
    return scale;
}

/* Q3_K's sub-block fit: codes in -nmax..nmax-1 from the extreme value's grid,
 * then up to 5 passes moving single codes while the x²-weighted fit
 * (Σ w·x·l)² / Σ w·l² improves. Codes stored + nmax. */
static float fit_scale_refine(int n, int nmax, const float *x, int8_t *L)
{
    float max = pd__signed_absmax(x, n);
    if (fabsf(max) < SUB_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -(float)nmax / max, sxl = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clampi(pd__nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sxl += w * x[i] * (float)l;
        sl2 += w * (float)l * (float)l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float sx = sxl - w * x[i] * L[i];
            if (!(sx > 0)) continue;
            float s2 = sl2 - w * (float)L[i] * (float)L[i];
            int nl = clampi(pd__nearest_int(x[i] * s2 / sx), -nmax, nmax - 1);
            if (nl == L[i]) continue;
            sx += w * x[i] * (float)nl;
            s2 += w * (float)nl * (float)nl;
            if (s2 > 0 && sx * sx * sl2 > sxl * sxl * s2) {
                L[i] = (int8_t)nl;
                sxl = sx;
                sl2 = s2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return sl2 > 0 ? sxl / sl2 : 0.0f;
}

/* ---- quantisation ---- */

/* Packs 256 2-bit codes as Q2_K/Q3_K store them: element e at byte
 * (e/128)·32 + e%32, bits 2·((e%128)/32). */
static void pack_2bit(const uint8_t *L, uint8_t *qs)
{
    memset(qs, 0, PD_QK_K / 4);
    for (int e = 0; e < PD_QK_K; e++)
        qs[(e / 128) * 32 + e % 32] |= (uint8_t)((L[e] & 3) << (2 * ((e % 128) / 32)));
}

static void quant_q2_K(const float *x, pd_block_q2_K *b)
{
    uint8_t L[PD_QK_K];
    float w[16], scales[16], mins[16], max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        for (int i = 0; i < 16; i++) w[i] = fabsf(x[16 * j + i]);
        scales[j] = fit_scale_min(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    memset(b->scales, 0, sizeof b->scales);
    b->d = pd_f32_to_f16(max_scale > 0 ? max_scale / 15.0f : 0.0f);
    b->dmin = pd_f32_to_f16(max_min > 0 ? max_min / 15.0f : 0.0f);
    for (int j = 0; j < 16; j++) {
        int ls = max_scale > 0 ? clampi(pd__nearest_int(15.0f / max_scale * scales[j]), 0, 15) : 0;
        int lm = max_min > 0 ? clampi(pd__nearest_int(15.0f / max_min * mins[j]), 0, 15) : 0;
        b->scales[j] = (uint8_t)(ls | lm << 4);
    }
    float d = pd_f16_to_f32(b->d), dmin = pd_f16_to_f32(b->dmin);
    for (int j = 0; j < 16; j++) {
        float dl = d * (float)(b->scales[j] & 0xF);
        if (dl == 0.0f) continue;
        float ml = dmin * (float)(b->scales[j] >> 4);
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (uint8_t)clampi(pd__nearest_int((x[16 * j + i] + ml) / dl), 0, 3);
    }
    pack_2bit(L, b->qs);
}

static void quant_q3_K(const float *x, pd_block_q3_K *b)
{
    int8_t L[PD_QK_K];
    uint8_t codes[PD_QK_K];
    float scales[16], max_scale = 0, amax = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_scale_refine(16, 4, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) {
            amax = fabsf(scales[j]);
            max_scale = scales[j];
        }
    }
    memset(b->scales, 0, sizeof b->scales);
    if (max_scale != 0.0f) {
        float iscale = -32.0f / max_scale;
        for (int j = 0; j < 16; j++) {
            int l = clampi(pd__nearest_int(iscale * scales[j]), -32, 31) + 32;
            if (j < 8) b->scales[j] = (uint8_t)(l & 0xF);
            else b->scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
            b->scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        b->d = pd_f32_to_f16(1.0f / iscale);
    } else {
        b->d = pd_f32_to_f16(0.0f);
    }
    float d = pd_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        float dl = d * (float)k3_scale(b->scales, j);
        if (dl == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(clampi(pd__nearest_int(x[16 * j + i] / dl), -4, 3) + 4);
    }
    memset(b->hmask, 0, sizeof b->hmask);
    for (int e = 0; e < PD_QK_K; e++) {
        int l = L[e];
        if (l > 3) {
            b->hmask[e % 32] |= (uint8_t)(1 << (e / 32));
            l -= 4;
        }
        codes[e] = (uint8_t)l;
    }
    pack_2bit(codes, b->qs);
}

/* Q4_K and Q5_K: 8 sub-blocks of 32 codes 0..nmax; returns the codes in L
 * and fills d, dmin and the packed scales. */
static void quant_k4_scales(const float *x, int nmax, float rmin, int nstep, uint8_t *L,
                            pd_half *d_out, pd_half *dmin_out, uint8_t *packed)
{
    float w[32], scales[8], mins[8], max_scale = 0, max_min = 0;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int i = 0; i < 32; i++) sum_x2 += xs[i] * xs[i];
        float av = sqrtf(sum_x2 / 32);
        for (int i = 0; i < 32; i++) w[i] = av + fabsf(xs[i]);
        scales[j] = fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)clampi(pd__nearest_int(inv_scale * scales[j]), 0, 63);
        lm[j] = (uint8_t)clampi(pd__nearest_int(inv_min * mins[j]), 0, 63);
    }
    k4_pack(packed, ls, lm);
    *d_out = pd_f32_to_f16(max_scale / 63.0f);
    *dmin_out = pd_f32_to_f16(max_min / 63.0f);
    float d = pd_f16_to_f32(*d_out), dmin = pd_f16_to_f32(*dmin_out);
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        k4_scale_min(packed, j, &sc, &mn);
        float dl = d * (float)sc;
        if (dl == 0.0f) continue;
        float ml = dmin * (float)mn;
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)clampi(pd__nearest_int((x[32 * j + i] + ml) / dl), 0, nmax);
    }
}

static void quant_q4_K(const float *x, pd_block_q4_K *b)
{
    uint8_t L[PD_QK_K];
    quant_k4_scales(x, 15, -1.0f, 20, L, &b->d, &b->dmin, b->scales);
    for (int e = 0; e < PD_QK_K; e++) {
        uint8_t *byte = &b->qs[(e / 64) * 32 + e % 32];
        if ((e % 64) < 32) *byte = L[e];
        else *byte |= (uint8_t)(L[e] << 4);
    }
}

static void quant_q5_K(const float *x, pd_block_q5_K *b)
{
    uint8_t L[PD_QK_K];
    quant_k4_scales(x, 31, -0.5f, 15, L, &b->d, &b->dmin, b->scales);
    memset(b->qh, 0, sizeof b->qh);
    for (int e = 0; e < PD_QK_K; e++) {
        uint8_t *byte = &b->qs[(e / 64) * 32 + e % 32];
        if ((e % 64) < 32) *byte = L[e] & 0xF;
        else *byte |= (uint8_t)((L[e] & 0xF) << 4);
        b->qh[e % 32] |= (uint8_t)((L[e] >> 4) << (e / 32));
    }
}

static void quant_q6_K(const float *x, pd_block_q6_K *b)
{
    int8_t L[PD_QK_K];
    float scales[16], max_scale = 0, amax = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_scale_signed(16, 32, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) {
            amax = fabsf(scales[j]);
            max_scale = scales[j];
        }
    }
    memset(b, 0, sizeof *b);
    if (amax < SUB_EPS) return; /* all zero: d = 0 */
    float iscale = -128.0f / max_scale;
    b->d = pd_f32_to_f16(1.0f / iscale);
    for (int j = 0; j < 16; j++)
        b->scales[j] = (int8_t)clampi(pd__nearest_int(iscale * scales[j]), -128, 127);
    float d = pd_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        float dl = d * (float)b->scales[j];
        if (dl == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(clampi(pd__nearest_int(x[16 * j + i] / dl), -32, 31) + 32);
    }
    for (int e = 0; e < PD_QK_K; e++) {
        int n = e / 128, quarter = (e % 128) / 32, l = e % 32, q = L[e];
        uint8_t *lo = &b->ql[n * 64 + (quarter & 1) * 32 + l];
        *lo |= (uint8_t)(quarter < 2 ? q & 0xF : (q & 0xF) << 4);
        b->qh[n * 32 + l] |= (uint8_t)((q >> 4) << (2 * quarter));
    }
}

static void quant_q8_K(const float *x, pd_block_q8_K *b)
{
    float max = pd__signed_absmax(x, PD_QK_K);
    memset(b, 0, sizeof *b);
    if (max == 0.0f) return;
    float iscale = -127.0f / max;
    for (int e = 0; e < PD_QK_K; e++)
        b->qs[e] = (int8_t)clampi(pd__nearest_int(iscale * x[e]), -128, 127);
    for (int j = 0; j < PD_QK_K / 16; j++) {
        int sum = 0;
        for (int i = 0; i < 16; i++) sum += b->qs[16 * j + i];
        b->bsums[j] = (int16_t)sum;
    }
    b->d = 1.0f / iscale;
}

void pd__quantize_k(int type, const float *src, void *dst, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += PD_QK_K) {
        switch (type) {
        case PD_Q_Q2_K: quant_q2_K(src, (pd_block_q2_K *)dst + i); break;
        case PD_Q_Q3_K: quant_q3_K(src, (pd_block_q3_K *)dst + i); break;
        case PD_Q_Q4_K: quant_q4_K(src, (pd_block_q4_K *)dst + i); break;
        case PD_Q_Q5_K: quant_q5_K(src, (pd_block_q5_K *)dst + i); break;
        case PD_Q_Q6_K: quant_q6_K(src, (pd_block_q6_K *)dst + i); break;
        case PD_Q_Q8_K: quant_q8_K(src, (pd_block_q8_K *)dst + i); break;
        default: PD_ASSERT(0 && "not a K-quant type");
        }
    }
}
