/* test_sampler.c — the sampler against independent computations in double:
 * its float exp over the whole range it is used on, log-sum-exp and the
 * returned log-probability, greedy ties, and every seeded draw (plain
 * temperature, top-k, top-p, both) equal to the token a double-precision
 * softmax + sort + cumulative sum picks for the same coin (a twin sampler
 * with the same seed gives the coin), except where the coin lies within
 * 1e-6 of a boundary (float rounding). Also: the same seed gives the same stream,
 * tokens at -inf are never drawn, and samplers borrowing one scratch draw
 * what owning ones draw. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "prefixd/sampler.h"

/* Deterministic logits: a few peaks over a noise floor, like a model's. */
static void make_logits(float *x, int n, uint64_t seed, float spread)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = spread * (float)((double)(seed >> 40) / (double)(1 << 24) - 0.5);
    }
    for (int k = 0; k < 5; k++) x[(seed >> (8 * k)) % (uint64_t)n] += 6.0f + (float)k;
}

static void test_exp_accuracy(void **state)
{
    (void)state;
    double worst = 0.0;
    for (int i = 0; i <= 1000000; i++) {
        float x = -87.0f * (float)i / 1000000.0f;
        double ref = exp((double)x);
        double got = pd__sampler_exp(x);
        double ulp = nextafterf((float)ref, INFINITY) - (float)ref;
        double e = fabs(got - ref) / ulp;
        if (e > worst) worst = e;
    }
    assert_true(worst <= 2.0);
    assert_true(pd__sampler_exp(0.0f) == 1.0f);
    assert_true(pd__sampler_exp(-87.5f) == 0.0f);
    assert_true(pd__sampler_exp(-INFINITY) == 0.0f);
    assert_true(pd__sampler_exp(-1e30f) == 0.0f);
}

static double ref_lse(const float *x, int n)
{
    double m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - m);
    return m + log(s);
}

static void test_log_sum_exp(void **state)
{
    (void)state;
    const int sizes[] = {1, 7, 64, 65, 1000, 32000, 151936};
    for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++) {
        int n = sizes[c];
        float *x = malloc((size_t)n * sizeof *x);
        assert_non_null(x);
        make_logits(x, n, 11 + c, 20.0f);
        double got = pd_sampler_log_sum_exp(x, n), ref = ref_lse(x, n);
        assert_true(fabs(got - ref) < 1e-6 * fmax(1.0, fabs(ref)));
        free(x);
    }
}

typedef struct cand {
    int id;
    double p;
} cand;

static int by_p_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p > y->p) return -1;
    if (x->p < y->p) return 1;
    return x->id - y->id;
}

/* The token for coin under params, in double: softmax at T, top-k, top-p
 * nucleus (the smallest head whose mass exceeds top_p), renormalised, then
 * the first whose cumulative mass exceeds coin. *margin receives the
 * distance from coin to the nearest cumulative boundary. */
static int ref_draw(const float *x, int n, const pd_sampler_params *p, float coin, cand *c,
                    double *margin)
{
    double m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    double s = 0.0;
    for (int i = 0; i < n; i++) {
        c[i].id = i;
        c[i].p = exp(((double)x[i] - m) / p->temperature);
        s += c[i].p;
    }
    for (int i = 0; i < n; i++) c[i].p /= s;
    qsort(c, (size_t)n, sizeof *c, by_p_desc);
    int keep = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    if (p->top_p < 1.0f) {
        double mass = 0.0;
        for (int i = 0; i < keep; i++) {
            mass += c[i].p;
            if (mass > p->top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    double kept = 0.0;
    for (int i = 0; i < keep; i++) kept += c[i].p;
    int tok = c[keep - 1].id;
    double cdf = 0.0;
    *margin = INFINITY;
    for (int i = 0; i < keep; i++) {
        cdf += c[i].p / kept;
        if (fabs(cdf - coin) < *margin) *margin = fabs(cdf - coin);
        if (coin < cdf) {
            tok = c[i].id;
            break;
        }
    }
    return tok;
}

/* For the plain multinomial the order of the cumulative sum is the
 * vocabulary's (no sort): the reference walks ids in order. */
static int ref_draw_plain(const float *x, int n, float T, float coin, double *margin)
{
    double m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp(((double)x[i] - m) / T);
    double cdf = 0.0;
    *margin = INFINITY;
    int tok = n - 1;
    for (int i = 0; i < n; i++) {
        cdf += exp(((double)x[i] - m) / T) / s;
        if (fabs(cdf - coin) < *margin) *margin = fabs(cdf - coin);
        if (coin < cdf) {
            tok = i;
            break;
        }
    }
    return tok;
}

static void check_draws(const pd_sampler_params *p, int n, int draws)
{
    float *x = malloc((size_t)n * sizeof *x);
    cand *c = malloc((size_t)n * sizeof *c);
    assert_true(x && c);
    pd_sampler s, twin;
    assert_int_equal(pd_sampler_init(&s, n, p, NULL), PD_OK);
    assert_int_equal(pd_sampler_init(&twin, n, p, NULL), PD_OK);
    int close = 0;
    for (int d = 0; d < draws; d++) {
        make_logits(x, n, 1000 + (uint64_t)d, 8.0f);
        float lp;
        int tok = pd_sampler_sample(&s, x, &lp);
        float coin = pd_sampler_rand(&twin);
        double margin;
        int ref = p->top_k == 0 && p->top_p >= 1.0f
                      ? ref_draw_plain(x, n, p->temperature, coin, &margin)
                      : ref_draw(x, n, p, coin, c, &margin);
        if (margin < 1e-6) {
            close++; /* float rounding may fall either side */
        } else {
            assert_int_equal(tok, ref);
        }
        assert_true(fabs((double)lp - ((double)x[tok] - ref_lse(x, n))) < 1e-5);
    }
    assert_true(close < draws / 20);
    pd_sampler_release(&s);
    pd_sampler_release(&twin);
    free(x);
    free(c);
}

static void test_draws_match_double_reference(void **state)
{
    (void)state;
    const struct { float t, top_p; int top_k; int n; } cases[] = {
        {1.0f, 1.0f, 0, 1000}, {0.8f, 1.0f, 0, 32000}, {1.7f, 1.0f, 0, 130},
        {0.8f, 1.0f, 40, 32000}, {1.0f, 0.9f, 0, 2000}, {0.7f, 0.5f, 0, 32000},
        {1.2f, 0.95f, 50, 5000}, {0.9f, 1.0f, 1, 300},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pd_sampler_params p = pd_sampler_default_params();
        p.temperature = cases[i].t;
        p.top_p = cases[i].top_p;
        p.top_k = cases[i].top_k;
        p.seed = 77 + i;
        check_draws(&p, cases[i].n, 300);
    }
}

static void test_greedy_first_maximum(void **state)
{
    (void)state;
    float x[300];
    make_logits(x, 300, 5, 4.0f);
    x[123] = 50.0f;
    x[250] = 50.0f;
    pd_sampler s;
    pd_sampler_params p = pd_sampler_default_params();
    assert_int_equal(pd_sampler_init(&s, 300, &p, NULL), PD_OK);
    float lp;
    assert_int_equal(pd_sampler_sample(&s, x, &lp), 123);
    assert_true(fabs((double)lp - (50.0 - ref_lse(x, 300))) < 1e-6);
    x[7] = 50.0f;
    assert_int_equal(pd_sampler_sample(&s, x, NULL), 7);
    pd_sampler_release(&s);
}

static void test_seeded_stream_and_masked_tokens(void **state)
{
    (void)state;
    enum { N = 777 };
    float x[N];
    make_logits(x, N, 9, 3.0f);
    for (int i = 0; i < N; i += 2) x[i] = -INFINITY; /* even ids are masked out */
    pd_sampler_params p = pd_sampler_default_params();
    p.temperature = 1.3f;
    p.seed = 1234;
    pd_sampler a, b;
    assert_int_equal(pd_sampler_init(&a, N, &p, NULL), PD_OK);
    assert_int_equal(pd_sampler_init(&b, N, &p, NULL), PD_OK);
    int seen_distinct = 0, first = -1;
    for (int d = 0; d < 2000; d++) {
        int ta = pd_sampler_sample(&a, x, NULL), tb = pd_sampler_sample(&b, x, NULL);
        assert_int_equal(ta, tb);
        assert_true(ta % 2 == 1);
        if (first < 0) first = ta;
        if (ta != first) seen_distinct = 1;
    }
    assert_true(seen_distinct);
    pd_sampler_release(&a);
    pd_sampler_release(&b);
}

/* Two samplers borrowing one scratch, used in turn, draw what owning ones
 * draw; releasing them leaves the lender's scratch alone. */
static void test_borrowed_scratch(void **state)
{
    (void)state;
    enum { N = 5000 };
    static float x[N], y[N];
    make_logits(x, N, 21, 6.0f);
    make_logits(y, N, 22, 6.0f);
    pd_sampler_params p = pd_sampler_default_params();
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    pd_sampler lender, a, b, ra, rb;
    assert_int_equal(pd_sampler_init(&lender, N, &p, NULL), PD_OK);
    p.seed = 5;
    assert_int_equal(pd_sampler_init_borrowing(&a, &lender, &p, NULL), PD_OK);
    assert_int_equal(pd_sampler_init(&ra, N, &p, NULL), PD_OK);
    p.seed = 6;
    assert_int_equal(pd_sampler_init_borrowing(&b, &lender, &p, NULL), PD_OK);
    assert_int_equal(pd_sampler_init(&rb, N, &p, NULL), PD_OK);
    for (int d = 0; d < 200; d++) {
        assert_int_equal(pd_sampler_sample(&a, x, NULL), pd_sampler_sample(&ra, x, NULL));
        assert_int_equal(pd_sampler_sample(&b, y, NULL), pd_sampler_sample(&rb, y, NULL));
    }
    pd_sampler_release(&a);
    pd_sampler_release(&b);
    assert_int_equal(pd_sampler_sample(&lender, x, NULL) >= 0, 1); /* still usable */
    pd_sampler_release(&ra);
    pd_sampler_release(&rb);
    pd_sampler_release(&lender);
}

static void test_bad_params(void **state)
{
    (void)state;
    pd_sampler s;
    pd_err err;
    pd_sampler_params p = pd_sampler_default_params();
    p.top_p = 0.0f;
    assert_int_equal(pd_sampler_init(&s, 10, &p, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "top_p"));
    p = pd_sampler_default_params();
    p.temperature = NAN;
    assert_int_equal(pd_sampler_init(&s, 10, &p, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "temperature"));
    p = pd_sampler_default_params();
    assert_int_equal(pd_sampler_init(&s, 0, &p, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "vocab_size"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_accuracy),
        cmocka_unit_test(test_log_sum_exp),
        cmocka_unit_test(test_draws_match_double_reference),
        cmocka_unit_test(test_greedy_first_maximum),
        cmocka_unit_test(test_seeded_stream_and_masked_tokens),
        cmocka_unit_test(test_borrowed_scratch),
        cmocka_unit_test(test_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
