/* test_adamw.c — the optimiser against steps computed by hand (and by an
 * independent double-precision formula), gradient clipping, the
 * learning-rate schedule, and bit-for-bit reproducibility. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "prefixd/adamw.h"

/* Step 1 with bias correction is lr * sign(g) (for g != 0), after the
 * decoupled decay p * (1 - lr * wd): worked out by hand. */
static void test_first_step_by_hand(void **state)
{
    (void)state;
    pd_adamw o;
    pd_err err;
    assert_int_equal(pd_adamw_init(&o, 3, &(pd_adamw_params){0.9, 0.999, 1e-8, 0.01}, &err),
                     PD_OK);
    float p[3] = {1.0f, -2.0f, 0.5f};
    const float g[3] = {0.1f, -0.2f, 0.0f};
    pd_adamw_step(&o, p, g, 0.1);
    assert_float_equal(p[0], 1.0 * 0.999 - 0.1, 1e-6);
    assert_float_equal(p[1], -2.0 * 0.999 + 0.1, 1e-6);
    assert_float_equal(p[2], 0.5 * 0.999, 1e-7);
    assert_int_equal(o.t, 1);
    assert_float_equal(o.m[0], 0.01, 1e-8);          /* (1 - b1) g */
    assert_float_equal(o.v[1], 0.001 * 0.04, 1e-10); /* (1 - b2) g^2 */
    pd_adamw_free(&o);
}

/* Three steps against the textbook formula, in double. */
static void test_steps_against_formula(void **state)
{
    (void)state;
    const double b1 = 0.8, b2 = 0.99, eps = 1e-3, wd = 0.1;
    const double lrs[3] = {0.05, 0.02, 0.01};
    const float grads[3][2] = {{0.3f, -1.0f}, {-0.2f, 0.5f}, {0.7f, 0.25f}};
    pd_adamw o;
    assert_int_equal(pd_adamw_init(&o, 2, &(pd_adamw_params){b1, b2, eps, wd}, NULL), PD_OK);
    float p[2] = {0.5f, -0.25f};
    double rp[2] = {0.5, -0.25}, rm[2] = {0, 0}, rv[2] = {0, 0};
    for (int t = 1; t <= 3; t++) {
        pd_adamw_step(&o, p, grads[t - 1], lrs[t - 1]);
        for (int i = 0; i < 2; i++) {
            double g = grads[t - 1][i];
            rp[i] *= 1.0 - lrs[t - 1] * wd;
            rm[i] = b1 * rm[i] + (1 - b1) * g;
            rv[i] = b2 * rv[i] + (1 - b2) * g * g;
            double mh = rm[i] / (1 - pow(b1, t)), vh = rv[i] / (1 - pow(b2, t));
            rp[i] -= lrs[t - 1] * mh / (sqrt(vh) + eps);
            assert_float_equal(p[i], rp[i], 1e-6);
        }
    }
    pd_adamw_free(&o);
}

static void test_reproducible(void **state)
{
    (void)state;
    enum { N = 1000 };
    float p[2][N], g[N];
    pd_adamw o[2];
    for (int r = 0; r < 2; r++) {
        assert_int_equal(pd_adamw_init(&o[r], N, &(pd_adamw_params){0.9, 0.999, 1e-8, 0.01},
                                       NULL),
                         PD_OK);
        for (int i = 0; i < N; i++) p[r][i] = sinf((float)i);
        for (int s = 0; s < 20; s++) {
            for (int i = 0; i < N; i++) g[i] = cosf((float)(i * (s + 1)));
            pd_grad_clip(g, N, 1.0);
            pd_adamw_step(&o[r], p[r], g, 1e-2);
        }
    }
    assert_memory_equal(p[0], p[1], sizeof p[0]);
    assert_memory_equal(o[0].m, o[1].m, N * sizeof(float));
    assert_memory_equal(o[0].v, o[1].v, N * sizeof(float));
    pd_adamw_free(&o[0]);
    pd_adamw_free(&o[1]);
    pd_adamw_free(NULL);
}

static void test_clip(void **state)
{
    (void)state;
    float g[2] = {3.0f, 4.0f};
    assert_float_equal(pd_grad_clip(g, 2, 10.0), 5.0, 1e-12); /* under the limit: unchanged */
    assert_float_equal(g[0], 3.0, 0);
    assert_float_equal(pd_grad_clip(g, 2, 0.0), 5.0, 1e-12); /* 0: no clipping */
    assert_float_equal(g[1], 4.0, 0);
    assert_float_equal(pd_grad_clip(g, 2, 1.0), 5.0, 1e-12);
    assert_float_equal(g[0], 0.6, 1e-7);
    assert_float_equal(g[1], 0.8, 1e-7);
    assert_float_equal(pd_grad_clip(g, 0, 1.0), 0.0, 0);
}

static void test_schedule(void **state)
{
    (void)state;
    pd_lr_schedule s = {.base = 1.0, .total_steps = 10, .warmup_steps = 2, .kind = PD_LR_LINEAR};
    assert_float_equal(pd_lr_at(&s, 0), 0.5, 1e-12);
    assert_float_equal(pd_lr_at(&s, 1), 1.0, 1e-12);
    assert_float_equal(pd_lr_at(&s, 2), 1.0, 1e-12);
    assert_float_equal(pd_lr_at(&s, 6), 0.5, 1e-12);
    assert_float_equal(pd_lr_at(&s, 9), 0.125, 1e-12);
    assert_float_equal(pd_lr_at(&s, 10), 0.0, 0);
    s.kind = PD_LR_COSINE;
    assert_float_equal(pd_lr_at(&s, 2), 1.0, 1e-12);
    assert_float_equal(pd_lr_at(&s, 6), 0.5, 1e-12);
    assert_float_equal(pd_lr_at(&s, 9), 0.5 * (1 + cos(M_PI * 7 / 8)), 1e-12);
    s = (pd_lr_schedule){.base = 0.1, .total_steps = 1, .warmup_steps = 0, .kind = PD_LR_LINEAR};
    assert_float_equal(pd_lr_at(&s, 0), 0.1, 1e-12);
    /* Decreasing after warm-up, never negative. */
    s = (pd_lr_schedule){.base = 0.3, .total_steps = 100, .warmup_steps = 10, .kind = PD_LR_COSINE};
    for (int i = 11; i < 100; i++) {
        assert_true(pd_lr_at(&s, i) <= pd_lr_at(&s, i - 1));
        assert_true(pd_lr_at(&s, i) > 0);
    }
    /* Constant: the warm-up ramp, then the peak to the end. */
    s = (pd_lr_schedule){.base = 0.2, .total_steps = 10, .warmup_steps = 4, .kind = PD_LR_CONSTANT};
    for (int i = 0; i < 10; i++)
        assert_float_equal(pd_lr_at(&s, i), i < 4 ? 0.2 * (i + 1) / 4 : 0.2, 1e-15);
    assert_float_equal(pd_lr_at(&s, 10), 0.0, 0);
    for (int k = 0; k < PD_LR_KIND_COUNT; k++)
        assert_int_equal(pd_lr_kind_parse(pd_lr_kind_name((pd_lr_kind)k)), k);
    assert_int_equal(pd_lr_kind_parse("step"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_step_by_hand),
        cmocka_unit_test(test_steps_against_formula),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_schedule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
