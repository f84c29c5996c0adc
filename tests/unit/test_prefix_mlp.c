/* test_prefix_mlp.c — PEFT's prefix_projection MLP: the forward pass and its
 * scatter into keys/values against an independent double-precision
 * implementation with PEFT's flat layout, and every parameter's gradient
 * against central finite differences of that implementation. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/prefix_mlp.h"

/* A small model shape: 3 layers, 2 kv heads of 4 dims (kv_dim 8). */
static const pd_config cfg = {.dim = 16, .hidden_dim = 32, .n_layers = 3, .n_heads = 4,
                              .n_kv_heads = 2, .head_dim = 4, .kv_dim = 8, .vocab_size = 32,
                              .seq_len = 64, .rope_base = 10000.0f, .norm_eps = 1e-5f};
enum { P = 3, HID = 5 };

/* Independent forward in double: flat[t][o] = W2 tanh(W1 E[t] + b1) + b2,
 * then PEFT's index ((layer*2 + kv)*n_kv_heads + head)*head_dim + d. */
static void ref_forward(const double *w, double *keys, double *values)
{
    const int K = cfg.kv_dim, O = cfg.n_layers * 2 * K;
    const double *E = w, *W1 = E + P * K, *b1 = W1 + HID * K, *W2 = b1 + HID, *b2 = W2 + O * HID;
    for (int t = 0; t < P; t++) {
        double h[HID];
        for (int i = 0; i < HID; i++) {
            double s = b1[i];
            for (int k = 0; k < K; k++) s += W1[i * K + k] * E[t * K + k];
            h[i] = tanh(s);
        }
        for (int layer = 0; layer < cfg.n_layers; layer++)
            for (int kv = 0; kv < 2; kv++)
                for (int head = 0; head < cfg.n_kv_heads; head++)
                    for (int d = 0; d < cfg.head_dim; d++) {
                        int o = ((layer * 2 + kv) * cfg.n_kv_heads + head) * cfg.head_dim + d;
                        double s = b2[o];
                        for (int i = 0; i < HID; i++) s += W2[o * HID + i] * h[i];
                        size_t at = (((size_t)layer * cfg.n_kv_heads + head) * P + t) *
                                        cfg.head_dim + d;
                        (kv ? values : keys)[at] = s;
                    }
    }
}

/* A nonlinear loss of the prefix: sum of a_i * x_i + 0.5 * x_i^2. */
static double ref_loss(const double *w, size_t n_kv, const double *a)
{
    double *kv = malloc(2 * n_kv * sizeof *kv);
    ref_forward(w, kv, kv + n_kv);
    double l = 0.0;
    for (size_t i = 0; i < 2 * n_kv; i++) l += a[i] * kv[i] + 0.5 * kv[i] * kv[i];
    free(kv);
    return l;
}

static void test_forward_and_gradient(void **state)
{
    (void)state;
    pd_prefix_mlp mlp;
    pd_err err;
    assert_int_equal(pd_prefix_mlp_init(&mlp, &cfg, P, HID, &err), PD_OK);
    const size_t n_kv = (size_t)cfg.n_layers * cfg.n_kv_heads * P * cfg.head_dim;
    assert_int_equal(mlp.out, cfg.n_layers * 2 * cfg.kv_dim);
    assert_int_equal(mlp.n_params, (size_t)P * 8 + HID * 8 + HID + (size_t)mlp.out * HID +
                                       (size_t)mlp.out);
    float *w = malloc(mlp.n_params * sizeof *w), *dw = malloc(mlp.n_params * sizeof *dw);
    double *wd = malloc(mlp.n_params * sizeof *wd);
    float *kv = malloc(4 * n_kv * sizeof *kv);
    double *ref = malloc(2 * n_kv * sizeof *ref), *a = malloc(2 * n_kv * sizeof *a);
    pd_rng r;
    pd_rng_seed(&r, 5);
    pd_prefix_mlp_init_params(&mlp, w, &r, 3.0); /* larger outputs: a sharper check */
    for (size_t i = 0; i < mlp.n_params; i++) wd[i] = w[i];
    for (size_t i = 0; i < 2 * n_kv; i++) a[i] = pd_rng_normal(&r);

    /* Forward, including the layout of keys and values. */
    pd_prefix_mlp_forward(&mlp, w, kv, kv + n_kv);
    ref_forward(wd, ref, ref + n_kv);
    for (size_t i = 0; i < 2 * n_kv; i++) assert_float_equal(kv[i], ref[i], 1e-5);

    /* Backward: dL/dkv = a + kv. */
    float *dkv = kv + 2 * n_kv;
    for (size_t i = 0; i < 2 * n_kv; i++) dkv[i] = (float)(a[i] + kv[i]);
    memset(dw, 0xff, mlp.n_params * sizeof *dw); /* written, not accumulated */
    pd_prefix_mlp_backward(&mlp, w, dkv, dkv + n_kv, dw);

    /* Central differences in double; relative tolerance 1e-3 (the
     * analytic gradient is computed in float). */
    const double h = 1e-5;
    double worst = 0.0;
    for (size_t i = 0; i < mlp.n_params; i++) {
        double keep = wd[i];
        wd[i] = keep + h;
        double lp = ref_loss(wd, n_kv, a);
        wd[i] = keep - h;
        double lm = ref_loss(wd, n_kv, a);
        wd[i] = keep;
        double fd = (lp - lm) / (2 * h);
        double rel = fabs(fd - dw[i]) / fmax(1e-2, fabs(fd));
        if (rel > worst) worst = rel;
        if (rel > 1e-3) {
            print_error("parameter %zu: analytic %.8g, finite differences %.8g\n", i, dw[i], fd);
            fail();
        }
    }
    assert_true(worst < 1e-3);
    free(w);
    free(dw);
    free(wd);
    free(kv);
    free(ref);
    free(a);
    pd_prefix_mlp_free(&mlp);
}

static void test_init(void **state)
{
    (void)state;
    pd_prefix_mlp mlp;
    pd_err err;
    assert_int_equal(pd_prefix_mlp_init(&mlp, &cfg, 0, HID, &err), PD_EINVAL);
    assert_int_equal(pd_prefix_mlp_init(&mlp, &cfg, P, 64, &err), PD_OK);
    float *w = malloc(mlp.n_params * sizeof *w), *w2 = malloc(mlp.n_params * sizeof *w2);
    pd_rng r;
    pd_rng_seed(&r, 1);
    pd_prefix_mlp_init_params(&mlp, w, &r, 1.0);
    pd_rng_seed(&r, 1);
    pd_prefix_mlp_init_params(&mlp, w2, &r, 1.0);
    assert_memory_equal(w, w2, mlp.n_params * sizeof *w); /* seeded */
    /* Linear layers within PyTorch's bounds 1/sqrt(fan_in). */
    for (size_t i = mlp.off_w1; i < mlp.off_w2; i++) assert_true(fabsf(w[i]) <= 1 / sqrtf(8));
    for (size_t i = mlp.off_w2; i < mlp.n_params; i++) assert_true(fabsf(w[i]) <= 1 / 8.0f);
    free(w);
    free(w2);
    pd_prefix_mlp_free(&mlp);
    pd_prefix_mlp_free(&mlp); /* twice is harmless */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_and_gradient),
        cmocka_unit_test(test_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
