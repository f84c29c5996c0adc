/* fdcheck.h — the prefix-gradient check shared by the training tests
 * (test_backprop, test_distill): central finite differences of a
 * double-precision loss written in the test against the analytic gradient.
 * Include after cmocka.h. */
#ifndef PREFIXD_FDCHECK_H
#define PREFIXD_FDCHECK_H

#include <math.h>
#include <stddef.h>

#include "prefixd/model.h"

/* The loss at prefix keys kd and values vd (double, the layout of the
 * trained prefix: n_layers x n_kv_heads x P x head_dim). */
typedef double (*fd_loss_fn)(const double *kd, const double *vd, void *ctx);

/* Compares dk, dv with central differences (step 1e-4) of loss at 4 entries
 * of the keys and of the values in every layer: each within 1e-3 of
 * max(|difference|, 0.05 · their RMS), and the RMS not vacuous (> 1e-6). kd
 * and vd are perturbed and restored. what names the check in failures. */
static inline void fd_check_prefix_gradient(const pd_config *c, int P, double *kd, double *vd,
                                            const float *dk, const float *dv, fd_loss_fn loss,
                                            void *ctx, const char *what)
{
    const int per_layer = c->n_kv_heads * P * c->head_dim;
    double num[2][64], ana[2][64];
    int cnt = 0;
    assert_true(c->n_layers * 4 <= 64);
    for (int l = 0; l < c->n_layers; l++)
        for (int r = 0; r < 4; r++) {
            size_t i = (size_t)l * per_layer + (size_t)((r * 37 + l * 11) % per_layer);
            for (int kv = 0; kv < 2; kv++) {
                double *pd = kv ? vd : kd;
                const double h = 1e-4, keep = pd[i];
                pd[i] = keep + h;
                double up = loss(kd, vd, ctx);
                pd[i] = keep - h;
                double dn = loss(kd, vd, ctx);
                pd[i] = keep;
                num[kv][cnt] = (up - dn) / (2 * h);
                ana[kv][cnt] = kv ? dv[i] : dk[i];
            }
            cnt++;
        }
    double rms = 0;
    for (int kv = 0; kv < 2; kv++)
        for (int i = 0; i < cnt; i++) rms += num[kv][i] * num[kv][i];
    rms = sqrt(rms / (2 * cnt));
    assert_true(rms > 1e-6); /* the check is not vacuous */
    for (int kv = 0; kv < 2; kv++)
        for (int i = 0; i < cnt; i++) {
            double tol = 1e-3 * fmax(fabs(num[kv][i]), 0.05 * rms);
            if (fabs(ana[kv][i] - num[kv][i]) > tol)
                fail_msg("%s: %s entry %d (layer %d): gradient %.8g, finite difference %.8g",
                         what, kv ? "values" : "keys", i, i / 4, ana[kv][i], num[kv][i]);
        }
}

#endif /* PREFIXD_FDCHECK_H */
