/* test_attention.c — the attention kernels (src/attention.h): the
 * exponential against exp(), every kernel against a double-precision
 * softmax attention written here, every kernel bit for bit equal to the
 * portable one, a block of queries equal to one query at a time, and a
 * prefix made of the first keys equal to those keys in the cache. The
 * reference test also runs over an F16 cache and prefix (halves widened on
 * load): against the reference computed on the same widened values, every
 * kernel the portable one's bits. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/attention.h"
#include "prefixd/half.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float frand(void) /* in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static void fill(float *x, size_t n, float amp)
{
    for (size_t i = 0; i < n; i++) x[i] = amp * frand();
}

/* One attention problem: keys/values as P prefix slots + a cache of `cap`
 * entries of kv_dim floats (the group's slice at offset g * hd), queries for
 * n_tok tokens of n_heads heads. */
typedef struct problem {
    int hd, P, cap, kv_dim, g, n_tok, n_heads, n_keys0;
    float *pk, *pv, *k, *v, *q, *o, *probs;
    size_t p_stride;
    uint16_t *hpk, *hpv, *hk, *hv; /* problem_f16: pk, pv, k, v as halves (the kernel's input) */
} problem;

#define SENTINEL 12345.0f

static void problem_make(problem *pb, int hd, int P, int n_keys0, int n_tok, int n_heads,
                         float amp)
{
    memset(pb, 0, sizeof *pb);
    pb->hd = hd;
    pb->P = P;
    pb->n_tok = n_tok;
    pb->n_heads = n_heads;
    pb->n_keys0 = n_keys0;
    pb->cap = n_keys0 + n_tok - P + 1;
    pb->g = 1;
    pb->kv_dim = 3 * hd; /* three groups: the problem uses the middle one */
    pb->p_stride = (size_t)(n_keys0 + n_tok) + 3;
    size_t rows = (size_t)n_tok * n_heads;
    pb->pk = malloc((size_t)(P + 1) * hd * sizeof(float));
    pb->pv = malloc((size_t)(P + 1) * hd * sizeof(float));
    pb->k = malloc((size_t)pb->cap * pb->kv_dim * sizeof(float));
    pb->v = malloc((size_t)pb->cap * pb->kv_dim * sizeof(float));
    pb->q = malloc(rows * hd * sizeof(float));
    pb->o = malloc(rows * hd * sizeof(float));
    pb->probs = malloc(rows * pb->p_stride * sizeof(float));
    assert_non_null(pb->pk);
    assert_non_null(pb->pv);
    assert_non_null(pb->k);
    assert_non_null(pb->v);
    assert_non_null(pb->q);
    assert_non_null(pb->o);
    assert_non_null(pb->probs);
    fill(pb->pk, (size_t)(P + 1) * hd, 1.0f);
    fill(pb->pv, (size_t)(P + 1) * hd, 1.0f);
    fill(pb->k, (size_t)pb->cap * pb->kv_dim, 1.0f);
    fill(pb->v, (size_t)pb->cap * pb->kv_dim, 1.0f);
    fill(pb->q, rows * hd, amp);
}

/* Halves of n floats of x, and x rounded through them in place. */
static uint16_t *halves(float *x, size_t n)
{
    uint16_t *h = malloc(n * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) {
        h[i] = pd_f32_to_f16(x[i]);
        x[i] = pd_f16_to_f32(h[i]);
    }
    return h;
}

/* Makes the kernel read keys and values as halves (the floats become their
 * rounded values, so check_reference stays exact). */
static void problem_f16(problem *pb)
{
    pb->hpk = halves(pb->pk, (size_t)(pb->P + 1) * pb->hd);
    pb->hpv = halves(pb->pv, (size_t)(pb->P + 1) * pb->hd);
    pb->hk = halves(pb->k, (size_t)pb->cap * pb->kv_dim);
    pb->hv = halves(pb->v, (size_t)pb->cap * pb->kv_dim);
}

static void problem_free(problem *pb)
{
    free(pb->hpk);
    free(pb->hpv);
    free(pb->hk);
    free(pb->hv);
    free(pb->pk);
    free(pb->pv);
    free(pb->k);
    free(pb->v);
    free(pb->q);
    free(pb->o);
    free(pb->probs);
}

/* The kernel's view of the problem (queries laid out token-major). */
static pd_attn problem_attn(const problem *pb)
{
    pd_attn a = {
        .hd = pb->hd,
        .P = pb->P,
        .pk = pb->P ? pb->pk : NULL,
        .pv = pb->P ? pb->pv : NULL,
        .k = pb->k + (size_t)pb->g * pb->hd,
        .v = pb->v + (size_t)pb->g * pb->hd,
        .kv_stride = (size_t)pb->kv_dim,
        .q = pb->q,
        .q_stride = (size_t)pb->n_heads * pb->hd,
        .f16 = pb->hk != NULL,
        .o = pb->o,
        .o_stride = (size_t)pb->n_heads * pb->hd,
        .probs = pb->probs,
        .p_stride = pb->p_stride,
        .n_tok = pb->n_tok,
        .n_heads = pb->n_heads,
        .n_keys0 = pb->n_keys0,
    };
    if (a.f16) {
        a.pk = pb->P ? pb->hpk : NULL;
        a.pv = pb->P ? pb->hpv : NULL;
        a.k = pb->hk + (size_t)pb->g * pb->hd;
        a.v = pb->hv + (size_t)pb->g * pb->hd;
    }
    return a;
}

static void run_isa(problem *pb, pd_attn_isa isa)
{
    size_t rows = (size_t)pb->n_tok * pb->n_heads;
    for (size_t i = 0; i < rows * pb->p_stride; i++) pb->probs[i] = SENTINEL;
    memset(pb->o, 0xff, rows * pb->hd * sizeof(float)); /* NaNs: every output must be written */
    pd_attn a = problem_attn(pb);
    pd__attend_isa(&a, isa);
}

static const float *key_of(const problem *pb, const float *prefix, const float *cache, int j)
{
    return j < pb->P ? prefix + (size_t)j * pb->hd
                     : cache + (size_t)(j - pb->P) * pb->kv_dim + (size_t)pb->g * pb->hd;
}

/* Double-precision softmax attention for every row; checks o and probs
 * within tol (relative to the largest magnitude) and the untouched
 * sentinels past each row's keys. */
static void check_reference(const problem *pb, double tol)
{
    const int hd = pb->hd;
    double *s = malloc((size_t)(pb->n_keys0 + pb->n_tok) * sizeof(double));
    assert_non_null(s);
    for (int i = 0; i < pb->n_tok; i++)
        for (int h = 0; h < pb->n_heads; h++) {
            const int r = i * pb->n_heads + h, n = pb->n_keys0 + i;
            const float *q = pb->q + (size_t)r * hd;
            double m = -INFINITY, sum = 0.0;
            for (int j = 0; j < n; j++) {
                const float *k = key_of(pb, pb->pk, pb->k, j);
                double d = 0.0;
                for (int x = 0; x < hd; x++) d += (double)q[x] * k[x];
                s[j] = d / sqrt((double)hd);
                if (s[j] > m) m = s[j];
            }
            for (int j = 0; j < n; j++) sum += (s[j] = exp(s[j] - m));
            const float *pr = pb->probs + (size_t)r * pb->p_stride;
            for (int j = 0; j < n; j++) {
                s[j] /= sum;
                assert_true(fabs(pr[j] - s[j]) <= tol);
            }
            for (size_t j = (size_t)n; j < pb->p_stride; j++) assert_true(pr[j] == SENTINEL);
            for (int x = 0; x < hd; x++) {
                double o = 0.0;
                for (int j = 0; j < n; j++) o += s[j] * key_of(pb, pb->pv, pb->v, j)[x];
                const float got = pb->o[(size_t)r * hd + x];
                if (!(fabs(got - o) <= tol)) fail_msg("row %d x %d: %.9g vs %.9g", r, x, got, o);
            }
        }
    free(s);
}

static void test_exp(void **state)
{
    (void)state;
    assert_true(pd__attn_exp(0.0f) == 1.0f);
    assert_true(pd__attn_exp(-0.0f) == 1.0f);
    double worst = 0.0;
    for (int i = 0; i <= 200000; i++) {
        const float x = -87.0f * (float)i / 200000.0f;
        const double want = exp((double)x), got = pd__attn_exp(x);
        const double rel = fabs(got - want) / want;
        if (rel > worst) worst = rel;
    }
    assert_true(worst < 4e-7); /* ~3 ulp */
    /* below the clamp: the value at -87 (tiny next to the row maximum's 1) */
    assert_true(pd__attn_exp(-1000.0f) == pd__attn_exp(-87.0f));
    assert_true(pd__attn_exp(-INFINITY) == pd__attn_exp(-87.0f));
}

static int kv_f32 = 0, kv_f16 = 1;

static const int head_dims[] = {8, 12, 64, 72, 128, 136};

/* Every kernel against the double reference, and the same bits as
 * portable; the state says whether keys and values are halves. */
static void test_reference_and_kernels(void **state)
{
    const int f16 = *(const int *)*state;
    for (size_t d = 0; d < sizeof head_dims / sizeof *head_dims; d++)
        for (int P = 0; P <= 9; P += 3)
            for (int n_tok = 1; n_tok <= 7; n_tok += 2)
                for (int n_heads = 1; n_heads <= 5; n_heads += 2) {
                    const int hd = head_dims[d];
                    problem pb;
                    problem_make(&pb, hd, P, P + 1 + (n_tok * 5 + n_heads) % 13, n_tok, n_heads,
                                 3.0f);
                    if (f16) problem_f16(&pb);
                    const size_t rows = (size_t)n_tok * n_heads;
                    run_isa(&pb, PD_ATTN_PORTABLE);
                    check_reference(&pb, 2e-6);
                    float *o0 = malloc(rows * hd * sizeof(float));
                    float *p0 = malloc(rows * pb.p_stride * sizeof(float));
                    assert_non_null(o0);
                    assert_non_null(p0);
                    memcpy(o0, pb.o, rows * hd * sizeof(float));
                    memcpy(p0, pb.probs, rows * pb.p_stride * sizeof(float));
                    for (int isa = PD_ATTN_AVX2; isa <= PD_ATTN_AVX512; isa++) {
                        if (!pd__attn_isa_available((pd_attn_isa)isa)) continue;
                        run_isa(&pb, (pd_attn_isa)isa);
                        assert_memory_equal(o0, pb.o, rows * hd * sizeof(float));
                        assert_memory_equal(p0, pb.probs, rows * pb.p_stride * sizeof(float));
                    }
                    free(o0);
                    free(p0);
                    problem_free(&pb);
                }
}

/* Long rows (many keys, peaked softmax) still match the reference. */
static void test_long_rows(void **state)
{
    (void)state;
    problem pb;
    problem_make(&pb, 64, 20, 700, 5, 2, 8.0f);
    run_isa(&pb, pd__attn_best());
    check_reference(&pb, 2e-6);
    problem_free(&pb);
}

/* A block of n_tok tokens equals n_tok calls of one token each, and one
 * call per head, bit for bit, on every kernel. */
static void test_blocked_equals_single(void **state)
{
    (void)state;
    for (int isa = PD_ATTN_PORTABLE; isa <= PD_ATTN_AVX512; isa++) {
        if (!pd__attn_isa_available((pd_attn_isa)isa)) continue;
        for (size_t d = 0; d < sizeof head_dims / sizeof *head_dims; d++) {
            problem pb;
            const int hd = head_dims[d], n_tok = 11, n_heads = 3;
            problem_make(&pb, hd, 4, 9, n_tok, n_heads, 2.0f);
            run_isa(&pb, (pd_attn_isa)isa);
            const size_t rows = (size_t)n_tok * n_heads;
            float *o = malloc(rows * hd * sizeof(float));
            float *pr = malloc(pb.p_stride * sizeof(float));
            assert_non_null(o);
            assert_non_null(pr);
            pd_attn all = problem_attn(&pb);
            for (int i = 0; i < n_tok; i++)
                for (int h = 0; h < n_heads; h++) {
                    pd_attn one = all;
                    one.q = all.q + (size_t)i * all.q_stride + (size_t)h * hd;
                    one.o = o + (size_t)(i * n_heads + h) * hd;
                    one.probs = pr;
                    one.n_tok = 1;
                    one.n_heads = 1;
                    one.n_keys0 = all.n_keys0 + i;
                    pd__attend_isa(&one, (pd_attn_isa)isa);
                    const float *blk = pb.probs + (size_t)(i * n_heads + h) * pb.p_stride;
                    assert_memory_equal(pr, blk, (size_t)one.n_keys0 * sizeof(float));
                }
            assert_memory_equal(o, pb.o, rows * hd * sizeof(float));
            free(o);
            free(pr);
            problem_free(&pb);
        }
    }
}

/* P prefix slots that hold the first P cache entries give the bits of those
 * entries read from the cache (prompt equivalence at the kernel). */
static void test_prefix_boundary(void **state)
{
    (void)state;
    for (int isa = PD_ATTN_PORTABLE; isa <= PD_ATTN_AVX512; isa++) {
        if (!pd__attn_isa_available((pd_attn_isa)isa)) continue;
        for (int P = 1; P <= 13; P += 4) {
            problem all, pre;
            const int hd = 64, n_tok = 6, n_heads = 2;
            problem_make(&all, hd, 0, P + 3, n_tok, n_heads, 3.0f);
            problem_make(&pre, hd, P, P + 3, n_tok, n_heads, 3.0f);
            /* pre: the prefix slots are all's first P cache entries; its
             * cache holds all's entries from P on */
            for (int j = 0; j < P; j++)
                memcpy(pre.pk + (size_t)j * hd, key_of(&all, all.pk, all.k, j),
                       (size_t)hd * sizeof(float));
            for (int j = 0; j < P; j++)
                memcpy(pre.pv + (size_t)j * hd, key_of(&all, all.pv, all.v, j),
                       (size_t)hd * sizeof(float));
            for (int j = P; j < all.cap; j++) {
                memcpy(pre.k + (size_t)(j - P) * pre.kv_dim, all.k + (size_t)j * all.kv_dim,
                       (size_t)all.kv_dim * sizeof(float));
                memcpy(pre.v + (size_t)(j - P) * pre.kv_dim, all.v + (size_t)j * all.kv_dim,
                       (size_t)all.kv_dim * sizeof(float));
            }
            memcpy(pre.q, all.q, (size_t)n_tok * n_heads * hd * sizeof(float));
            run_isa(&all, (pd_attn_isa)isa);
            run_isa(&pre, (pd_attn_isa)isa);
            assert_memory_equal(all.o, pre.o, (size_t)n_tok * n_heads * hd * sizeof(float));
            problem_free(&all);
            problem_free(&pre);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),
        {"test_reference_and_kernels_f32", test_reference_and_kernels, NULL, NULL, &kv_f32},
        {"test_reference_and_kernels_f16", test_reference_and_kernels, NULL, NULL, &kv_f16},
        cmocka_unit_test(test_long_rows),
        cmocka_unit_test(test_blocked_equals_single),
        cmocka_unit_test(test_prefix_boundary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
