/* test_quant.c — the weight types (src/quant.c, src/quant_k.c):
 *
 *   - dequantisation of random blocks (random codes, sane random scales)
 *     equals an independent double-precision dequantiser written here from
 *     the format description (byte offsets, not the library's structs), bit
 *     for bit, for every type including the activation formats Q8_1, Q8_K;
 *   - quantise→dequantise error within each format's bound (stated at
 *     `bounds` below);
 *   - quantise→dequantise→quantise is a fixed point (identical bytes) for the
 *     types where the format allows it, and never worse for the K-quants;
 *   - all-zero blocks, the activation formats' sums, type facts, row sizes,
 *     names, pd_wmat views.
 *
 * That prefixd's quantisers produce llama-quantize's bytes was checked by hand
 * against ggml (c392e50) and is not repeated here: nothing here depends on
 * llama.cpp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/quant.h"

/* ---- random numbers ---- */

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double uniform(void) { return (double)(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

static double gauss(void)
{
    double u = uniform() + 1e-300, v = uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* ---- the format description, independently ---- */

/* IEEE binary16 at p (little-endian) as a double. */
static double half_at(const uint8_t *p)
{
    unsigned h = (unsigned)p[0] | (unsigned)p[1] << 8;
    int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    double v;
    if (exp == 0) v = ldexp((double)man, -24);
    else if (exp == 31) v = man ? NAN : INFINITY;
    else v = ldexp((double)(man + 1024), exp - 25);
    return sign ? -v : v;
}

static double bf16_at(const uint8_t *p)
{
    uint32_t u = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A sane random half: random sign, magnitude 2^[-14, 2). */
static void put_half(uint8_t *p, double lo_exp, double hi_exp)
{
    double mag = ldexp(1.0 + uniform(), (int)floor(lo_exp + (hi_exp - lo_exp) * uniform()));
    int e = (int)floor(log2(mag));
    int man = (int)floor((mag / ldexp(1.0, e) - 1.0) * 1024.0);
    uint16_t h = (uint16_t)(((e + 15) << 10) | man);
    if (next_u64() & 1) h |= 0x8000;
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static int bit(const uint8_t *p, int i) { return (p[i / 8] >> (i % 8)) & 1; }

/* Element e of a block of type t, from the description. */
static double ref_value(int t, const uint8_t *b, int e)
{
    switch (t) {
    case PD_Q_F16: return half_at(b + 2 * e);
    case PD_Q_BF16: return bf16_at(b + 2 * e);
    case PD_Q_Q4_0: {
        int q = e < 16 ? b[2 + e] & 15 : b[2 + e - 16] >> 4;
        return half_at(b) * (q - 8);
    }
    case PD_Q_Q4_1: {
        int q = e < 16 ? b[4 + e] & 15 : b[4 + e - 16] >> 4;
        return half_at(b) * q + half_at(b + 2);
    }
    case PD_Q_Q5_0: {
        int q = (e < 16 ? b[6 + e] & 15 : b[6 + e - 16] >> 4) | bit(b + 2, e) << 4;
        return half_at(b) * (q - 16);
    }
    case PD_Q_Q5_1: {
        int q = (e < 16 ? b[8 + e] & 15 : b[8 + e - 16] >> 4) | bit(b + 4, e) << 4;
        return half_at(b) * q + half_at(b + 2);
    }
    case PD_Q_Q8_0: return half_at(b) * (int8_t)b[2 + e];
    case PD_Q_Q8_1: return half_at(b) * (int8_t)b[4 + e];
    case PD_Q_Q2_K: {
        /* scales@0 (16), qs@16 (64), d@80, dmin@82 */
        int sc = b[e / 16] & 15, mn = b[e / 16] >> 4;
        int q = (b[16 + 32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
        return half_at(b + 80) * sc * q - half_at(b + 82) * mn;
    }
    case PD_Q_Q3_K: {
        /* hmask@0 (32), qs@32 (64), scales@96 (12), d@108 */
        int j = e / 16;
        const uint8_t *s = b + 96;
        int low = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
        int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        int scale = (low | high << 4) - 32;
        int q = (b[32 + 32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
        int h = (b[e % 32] >> (e / 32)) & 1;
        return half_at(b + 108) * scale * (q - (h ? 0 : 4));
    }
    case PD_Q_Q4_K:
    case PD_Q_Q5_K: {
        /* d@0, dmin@2, scales@4 (12); Q4_K: qs@16; Q5_K: qh@16 (32), qs@48 */
        int j = e / 32, sc, mn;
        const uint8_t *s = b + 4;
        if (j < 4) {
            sc = s[j] & 63;
            mn = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
            mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
        }
        const uint8_t *qs = b + (t == PD_Q_Q4_K ? 16 : 48);
        uint8_t byte = qs[32 * (e / 64) + e % 32];
        int q = e % 64 < 32 ? byte & 15 : byte >> 4;
        if (t == PD_Q_Q5_K) q |= ((b[16 + e % 32] >> (e / 32)) & 1) << 4;
        return half_at(b) * sc * q - half_at(b + 2) * mn;
    }
    case PD_Q_Q6_K: {
        /* ql@0 (128), qh@128 (64), scales@192 (16 x int8), d@208 */
        int n = e / 128, g = (e % 128) / 32, l = e % 32;
        uint8_t lo = b[64 * n + 32 * (g & 1) + l];
        int q = (g < 2 ? lo & 15 : lo >> 4) | ((b[128 + 32 * n + l] >> (2 * g)) & 3) << 4;
        return half_at(b + 208) * (int8_t)b[192 + e / 16] * (q - 32);
    }
    case PD_Q_Q8_K: {
        float d;
        memcpy(&d, b, 4);
        return (double)d * (int8_t)b[4 + e];
    }
    }
    fail_msg("no reference for type %d", t);
    return 0;
}

/* Random bytes for a block of type t with its scale fields made sane. */
static void random_block(int t, uint8_t *b)
{
    size_t n = pd_qtype_block_bytes(t);
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)next_u64();
    switch (t) {
    case PD_Q_F16:
        for (size_t i = 0; i < n; i += 2) put_half(b + i, -14, 15);
        break;
    case PD_Q_BF16: break; /* every bf16 bit pattern is compared, NaN as NaN */
    case PD_Q_Q4_0: case PD_Q_Q5_0: case PD_Q_Q8_0: put_half(b, -14, 2); break;
    case PD_Q_Q4_1: case PD_Q_Q5_1: case PD_Q_Q8_1: case PD_Q_Q4_K: case PD_Q_Q5_K:
        put_half(b, -14, 2);
        put_half(b + 2, -14, 2);
        break;
    case PD_Q_Q2_K: put_half(b + 80, -14, 2); put_half(b + 82, -14, 2); break;
    case PD_Q_Q3_K: put_half(b + 108, -14, 2); break;
    case PD_Q_Q6_K: put_half(b + 208, -14, 2); break;
    case PD_Q_Q8_K: {
        float d = (float)ldexp(1.0 + uniform(), -(int)(next_u64() % 20));
        memcpy(b, &d, 4);
        break;
    }
    }
}

static const int all_types[] = {PD_Q_F32,  PD_Q_F16,  PD_Q_BF16, PD_Q_Q4_0, PD_Q_Q4_1,
                                PD_Q_Q5_0, PD_Q_Q5_1, PD_Q_Q8_0, PD_Q_Q8_1, PD_Q_Q2_K,
                                PD_Q_Q3_K, PD_Q_Q4_K, PD_Q_Q5_K, PD_Q_Q6_K, PD_Q_Q8_K};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

/* ---- tests ---- */

static void test_facts(void **state)
{
    (void)state;
    static const struct {
        int type;
        const char *name;
        int block;
        size_t bytes;
        int weight;
    } want[] = {
        {PD_Q_F32, "F32", 1, 4, 1},      {PD_Q_F16, "F16", 1, 2, 1},
        {PD_Q_BF16, "BF16", 1, 2, 1},    {PD_Q_Q4_0, "Q4_0", 32, 18, 1},
        {PD_Q_Q4_1, "Q4_1", 32, 20, 1},  {PD_Q_Q5_0, "Q5_0", 32, 22, 1},
        {PD_Q_Q5_1, "Q5_1", 32, 24, 1},  {PD_Q_Q8_0, "Q8_0", 32, 34, 1},
        {PD_Q_Q8_1, "Q8_1", 32, 36, 0},  {PD_Q_Q2_K, "Q2_K", 256, 84, 1},
        {PD_Q_Q3_K, "Q3_K", 256, 110, 1}, {PD_Q_Q4_K, "Q4_K", 256, 144, 1},
        {PD_Q_Q5_K, "Q5_K", 256, 176, 1}, {PD_Q_Q6_K, "Q6_K", 256, 210, 1},
        {PD_Q_Q8_K, "Q8_K", 256, 292, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_string_equal(pd_qtype_name(want[i].type), want[i].name);
        assert_int_equal(pd_qtype_block_size(want[i].type), want[i].block);
        assert_int_equal(pd_qtype_block_bytes(want[i].type), want[i].bytes);
        assert_int_equal(pd_qtype_is_weight_type(want[i].type), want[i].weight);
        assert_int_equal(pd_qtype_from_name(want[i].name), want[i].type);
        assert_int_equal(pd_qtype_row_bytes(want[i].type, 512), 512 / want[i].block * want[i].bytes);
        assert_true(fabs(pd_qtype_bits_per_weight(want[i].type) -
                         8.0 * (double)want[i].bytes / want[i].block) < 1e-12);
    }
    assert_int_equal(pd_qtype_from_name("q4_k"), PD_Q_Q4_K);
    assert_int_equal(pd_qtype_from_name("bf16"), PD_Q_BF16);
    assert_int_equal(pd_qtype_from_name("Q4_K_M"), -1);
    assert_int_equal(pd_qtype_from_name("IQ4_XS"), -1);
    assert_int_equal(pd_qtype_from_name(""), -1);
    /* ids that are not types: IQ*, TQ*, out of range */
    static const int not_types[] = {4, 5, 16, 20, 23, 29, 31, 34, 35, 39, -1, 1000};
    for (size_t i = 0; i < sizeof not_types / sizeof not_types[0]; i++) {
        assert_null(pd_qtype_name(not_types[i]));
        assert_int_equal(pd_qtype_block_size(not_types[i]), 0);
        assert_int_equal(pd_qtype_row_bytes(not_types[i], 256), 0);
        assert_false(pd_qtype_is_weight_type(not_types[i]));
    }
    /* rows that are not whole blocks */
    assert_int_equal(pd_qtype_row_bytes(PD_Q_Q4_0, 48), 0);
    assert_int_equal(pd_qtype_row_bytes(PD_Q_Q4_K, 64), 0);
    assert_int_equal(pd_qtype_row_bytes(PD_Q_Q8_0, 0), 0);
    assert_int_equal(pd_qtype_row_bytes(PD_Q_F16, 3), 6);
}

/* Library dequantisation == the description evaluated in double, rounded once
 * to float: every d·scale·code product is exact, so this is bit for bit. */
static void test_dequantize_matches_description(void **state)
{
    (void)state;
    enum { ROWS = 64 };
    for (int k = 0; k < N_TYPES; k++) {
        int t = all_types[k];
        if (t == PD_Q_F32) continue;
        int n = pd_qtype_block_size(t) == 1 ? 256 : 4 * pd_qtype_block_size(t);
        size_t bb = pd_qtype_block_bytes(t), rb = pd_qtype_row_bytes(t, n);
        uint8_t *row = malloc(rb);
        float *y = malloc((size_t)n * sizeof *y);
        assert_non_null(row);
        assert_non_null(y);
        for (int r = 0; r < ROWS; r++) {
            int per_block = pd_qtype_block_size(t) == 1 ? 1 : pd_qtype_block_size(t);
            for (size_t off = 0; off < rb; off += bb) random_block(t, row + off);
            pd_quant_dequantize_row(t, row, y, n);
            for (int e = 0; e < n; e++) {
                int blk = e / per_block;
                double want = ref_value(t, row + (size_t)blk * bb, e % per_block);
                float wf = (float)want;
                if (isnan(wf) && isnan(y[e])) continue;
                if (memcmp(&wf, &y[e], 4) != 0)
                    fail_msg("%s row %d element %d: got %.9g, description gives %.9g",
                             pd_qtype_name(t), r, e, (double)y[e], want);
            }
        }
        free(row);
        free(y);
    }
}

/* Test data: Gaussian rows with a varying spread per 256 and occasional
 * outliers, plus an all-zero block and a constant block. */
static void test_data(float *x, int n)
{
    for (int i = 0; i < n; i++) {
        x[i] = (float)(0.02 * gauss() * (1 + (i / 256) % 5));
        if (next_u64() % 61 == 0) x[i] *= 8;
    }
    for (int i = 0; i < 256 && i < n; i++) x[i] = 0.0f;
    for (int i = 256; i < 512 && i < n; i++) x[i] = 0.125f;
}

/* Stated bounds. Per element (32-blocks, with d the block's unrounded scale
 * and the 2^-11 relative rounding of the half-precision d and m):
 *   Q8_0 |err| <= 0.5·d + 127·d·2^-11,           d = amax/127
 *   Q4_0 |err| <= |d| + 8·|d|·2^-11, Q5_0 likewise with 16 (the code at the
 *        opposite extreme is clamped: +8·d is stored as 7·d), d = max/-8 (-16)
 *   Q4_1 |err| <= 0.5·d + 15·d·2^-11 + |m|·2^-11, d = (max-min)/15; Q5_1 /31
 *   F16  |err| <= |x|·2^-11 + 2^-25 (subnormals), BF16 |err| <= |x|·2^-8
 * K-quants (a searched scale per sub-block: no closed-form bound), measured
 * on this data and fixed here with a margin: the RMS error relative to the
 * data's RMS (measured 0.344, 0.190, 0.093, 0.047, 0.026 for Q2_K … Q6_K; the
 * bytes are llama-quantize's, so these are its figures too)
 *   Q2_K 0.36, Q3_K 0.20, Q4_K 0.10, Q5_K 0.05, Q6_K 0.028
 * and per element |err| <= the super-block's max |x| times (measured 0.312,
 * 0.139, 0.060, 0.029, 0.016)
 *   Q2_K 0.35, Q3_K 0.16, Q4_K 0.07, Q5_K 0.035, Q6_K 0.02. */
static void test_quantize_error_bounds(void **state)
{
    (void)state;
    enum { N = 256 * 32 };
    static float x[N], y[N];
    static uint8_t q[N * 4];
    test_data(x, N);
    static const struct {
        int type;
        double rel_rms, blockmax_frac;
    } kq[] = {{PD_Q_Q2_K, 0.36, 0.35}, {PD_Q_Q3_K, 0.20, 0.16}, {PD_Q_Q4_K, 0.10, 0.07},
              {PD_Q_Q5_K, 0.05, 0.035}, {PD_Q_Q6_K, 0.028, 0.02}};
    const double eps = ldexp(1.0, -11);
    for (int k = 0; k < N_TYPES; k++) {
        int t = all_types[k];
        if (t == PD_Q_Q8_1 || t == PD_Q_Q8_K) continue; /* activation formats: below */
        pd_quant_quantize_row(t, x, q, N);
        pd_quant_dequantize_row(t, q, y, N);
        int bs = pd_qtype_block_size(t);
        double se = 0, sx = 0;
        for (int b0 = 0; b0 < N; b0 += bs) {
            double amax = 0, smax = 0, mn = INFINITY, mx = -INFINITY;
            for (int i = b0; i < b0 + bs; i++) {
                if (fabs(x[i]) > amax) amax = fabs(x[i]), smax = x[i];
                mn = fmin(mn, x[i]);
                mx = fmax(mx, x[i]);
            }
            double bound;
            for (int i = b0; i < b0 + bs; i++) {
                double err = fabs((double)y[i] - x[i]);
                se += err * err;
                sx += (double)x[i] * x[i];
                switch (t) {
                case PD_Q_F32: bound = 0; break;
                case PD_Q_F16: bound = fabs(x[i]) * eps + ldexp(1.0, -25); break;
                case PD_Q_BF16: bound = fabs(x[i]) * ldexp(1.0, -8); break;
                case PD_Q_Q8_0: bound = amax / 127 * (0.5 + 127 * eps); break;
                case PD_Q_Q4_0: bound = fabs(smax / 8) * (1 + 8 * eps); break;
                case PD_Q_Q5_0: bound = fabs(smax / 16) * (1 + 16 * eps); break;
                case PD_Q_Q4_1: bound = (mx - mn) / 15 * (0.5 + 15 * eps) + fabs(mn) * eps; break;
                case PD_Q_Q5_1: bound = (mx - mn) / 31 * (0.5 + 31 * eps) + fabs(mn) * eps; break;
                default: {
                    size_t j = 0;
                    while (kq[j].type != t) j++;
                    bound = amax * kq[j].blockmax_frac;
                }
                }
                bound = bound * (1 + 1e-6) + 1e-12;
                if (err > bound)
                    fail_msg("%s element %d: x %.9g -> %.9g, error %.3g above the bound %.3g",
                             pd_qtype_name(t), i, (double)x[i], (double)y[i], err, bound);
            }
        }
        for (size_t j = 0; j < sizeof kq / sizeof kq[0]; j++)
            if (kq[j].type == t && sqrt(se / sx) > kq[j].rel_rms)
                fail_msg("%s: relative RMS error %.4f above %.3f", pd_qtype_name(t),
                         sqrt(se / sx), kq[j].rel_rms);
        /* the zero block stays exactly zero */
        for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f);
    }
}

/* quantise(dequantise(quantise(x))) == quantise(x) where the format allows
 * it: the plain and 32-block types (their scale is recomputed from the
 * extreme values, which dequantise exactly onto the same grid). The K-quants
 * search their sub-block scales again and may pick another grid; for them
 * the second pass must move the weights less than the first did. */
static void test_fixed_point(void **state)
{
    (void)state;
    enum { N = 256 * 32 };
    static float x[N], y[N], y2[N];
    static uint8_t q1[N * 4], q2[N * 4];
    test_data(x, N);
    for (int k = 0; k < N_TYPES; k++) {
        int t = all_types[k];
        if (t == PD_Q_Q8_1 || t == PD_Q_Q8_K) continue;
        size_t rb = pd_qtype_row_bytes(t, N);
        pd_quant_quantize_row(t, x, q1, N);
        pd_quant_dequantize_row(t, q1, y, N);
        pd_quant_quantize_row(t, y, q2, N);
        int stable = pd_qtype_block_size(t) < PD_QK_K;
        if (stable) {
            if (memcmp(q1, q2, rb) != 0) fail_msg("%s: requantising changed the bytes", pd_qtype_name(t));
            continue;
        }
        pd_quant_dequantize_row(t, q2, y2, N);
        double e1 = 0, e2 = 0;
        for (int i = 0; i < N; i++) {
            e1 += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            e2 += ((double)y2[i] - y[i]) * ((double)y2[i] - y[i]);
        }
        if (e2 > e1)
            fail_msg("%s: the second pass moved the weights by %.3g, more than the first (%.3g)",
                     pd_qtype_name(t), sqrt(e2), sqrt(e1));
    }
}

/* The activation formats: Q8_1's s = d·Σq, Q8_K's bsums = Σ of each 16 codes,
 * and their error bound (|err| <= d/2 + rounding of d). */
static void test_activation_formats(void **state)
{
    (void)state;
    enum { N = 512 };
    float x[N], y[N];
    pd_block_q8_1 b1[N / 32];
    pd_block_q8_K bk[N / 256];
    for (int i = 0; i < N; i++) x[i] = (float)gauss();
    pd_quant_quantize_row(PD_Q_Q8_1, x, b1, N);
    pd_quant_dequantize_row(PD_Q_Q8_1, b1, y, N);
    for (int b = 0; b < N / 32; b++) {
        double amax = 0;
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            amax = fmax(amax, fabs(x[32 * b + i]));
            sum += b1[b].qs[i];
        }
        double d = amax / 127;
        uint8_t dh[2], sh[2];
        memcpy(dh, &b1[b].d, 2);
        memcpy(sh, &b1[b].s, 2);
        assert_true(fabs(half_at(sh) - sum * d) <= fabs(sum * d) * ldexp(1.0, -10) + 1e-7);
        for (int i = 0; i < 32; i++)
            assert_true(fabs(y[32 * b + i] - x[32 * b + i]) <= d * (0.5 + 127 * ldexp(1.0, -11)) * 1.000001);
    }
    pd_quant_quantize_row(PD_Q_Q8_K, x, bk, N);
    pd_quant_dequantize_row(PD_Q_Q8_K, bk, y, N);
    for (int b = 0; b < N / 256; b++) {
        double amax = 0;
        for (int i = 0; i < 256; i++) amax = fmax(amax, fabs(x[256 * b + i]));
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += bk[b].qs[16 * g + i];
            assert_int_equal(bk[b].bsums[g], sum);
        }
        assert_true(fabs(fabs((double)bk[b].d) - amax / 127) <= amax / 127 * 1e-6);
        for (int i = 0; i < 256; i++)
            assert_true(fabs(y[256 * b + i] - x[256 * b + i]) <= amax / 127 * 0.5 * 1.0001);
    }
}

static void test_wmat(void **state)
{
    (void)state;
    enum { ROWS = 3, COLS = 256 };
    float x[ROWS * COLS], row[COLS], want[COLS];
    uint8_t q[ROWS * 210];
    for (int i = 0; i < ROWS * COLS; i++) x[i] = (float)gauss();
    pd_wmat f = pd_wmat_f32(x, ROWS, COLS);
    assert_int_equal(f.type, PD_Q_F32);
    assert_int_equal(f.row_bytes, COLS * 4);
    pd_wmat_row_f32(&f, 2, row);
    assert_memory_equal(row, x + 2 * COLS, sizeof row);
    for (int r = 0; r < ROWS; r++)
        pd_quant_quantize_row(PD_Q_Q6_K, x + r * COLS, q + r * 210, COLS);
    pd_wmat w = {q, PD_Q_Q6_K, ROWS, COLS, pd_qtype_row_bytes(PD_Q_Q6_K, COLS)};
    pd_wmat_row_f32(&w, 1, row);
    pd_quant_dequantize_row(PD_Q_Q6_K, q + 210, want, COLS);
    assert_memory_equal(row, want, sizeof row);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_facts),
        cmocka_unit_test(test_dequantize_matches_description),
        cmocka_unit_test(test_quantize_error_bounds),
        cmocka_unit_test(test_fixed_point),
        cmocka_unit_test(test_activation_formats),
        cmocka_unit_test(test_wmat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
