/* prefix_mlp.c — PEFT's prefix_projection MLP, forward and backward
 * (contracts in prefixd/prefix_mlp.h). Dimension letters: P virtual tokens,
 * K = kv_dim, H = hidden, O = out = n_layers * 2 * kv_dim. */
#include "prefixd/prefix_mlp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int pd_prefix_mlp_init(pd_prefix_mlp *mlp, const pd_config *c, int P, int hidden, pd_err *err)
{
    PD_ASSERT(mlp && c);
    memset(mlp, 0, sizeof *mlp);
    if (P < 1 || hidden < 1)
        return pd_err_set(err, PD_EINVAL,
                          "prefix projection: %d virtual tokens and a hidden width of %d "
                          "(both must be at least 1)", P, hidden);
    mlp->P = P;
    mlp->kv_dim = c->kv_dim;
    mlp->hidden = hidden;
    mlp->out = c->n_layers * 2 * c->kv_dim;
    mlp->n_layers = c->n_layers;
    mlp->n_kv_heads = c->n_kv_heads;
    mlp->head_dim = c->head_dim;
    size_t K = (size_t)c->kv_dim, H = (size_t)hidden, O = (size_t)mlp->out;
    mlp->off_e = 0;
    mlp->off_w1 = mlp->off_e + (size_t)P * K;
    mlp->off_b1 = mlp->off_w1 + H * K;
    mlp->off_w2 = mlp->off_b1 + H;
    mlp->off_b2 = mlp->off_w2 + O * H;
    mlp->n_params = mlp->off_b2 + O;
    mlp->hid = malloc((size_t)P * H * sizeof(float));
    mlp->dpre = malloc((size_t)P * H * sizeof(float));
    mlp->dflat = malloc((size_t)P * O * sizeof(float));
    if (!mlp->hid || !mlp->dpre || !mlp->dflat) {
        pd_prefix_mlp_free(mlp);
        return pd_err_set(err, PD_ENOMEM, "prefix projection: out of memory");
    }
    return PD_OK;
}

void pd_prefix_mlp_free(pd_prefix_mlp *mlp)
{
    if (!mlp) return;
    free(mlp->hid);
    free(mlp->dpre);
    free(mlp->dflat);
    mlp->hid = mlp->dpre = mlp->dflat = NULL;
}

static void uniform(float *x, size_t n, double bound, pd_rng *r)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)((2.0 * pd_rng_uniform(r) - 1.0) * bound);
}

void pd_prefix_mlp_init_params(const pd_prefix_mlp *mlp, float *params, pd_rng *r,
                               double out_scale)
{
    PD_ASSERT(mlp && params && r);
    const size_t P = (size_t)mlp->P, K = (size_t)mlp->kv_dim, H = (size_t)mlp->hidden,
                 O = (size_t)mlp->out;
    for (size_t i = 0; i < P * K; i++) params[mlp->off_e + i] = (float)pd_rng_normal(r);
    uniform(params + mlp->off_w1, H * K, 1.0 / sqrt((double)K), r);
    uniform(params + mlp->off_b1, H, 1.0 / sqrt((double)K), r);
    uniform(params + mlp->off_w2, O * H, 1.0 / sqrt((double)H), r);
    uniform(params + mlp->off_b2, O, 1.0 / sqrt((double)H), r);
    for (size_t i = 0; i < O * H + O; i++)
        params[mlp->off_w2 + i] = (float)(params[mlp->off_w2 + i] * out_scale);
}

/* Position of flat entry o of virtual token t in keys/values: sets *kv (0
 * keys, 1 values) and returns the index within that tensor. */
static size_t scatter_index(const pd_prefix_mlp *mlp, int t, int o, int *kv)
{
    const int hd = mlp->head_dim, KVH = mlp->n_kv_heads;
    int d = o % hd;
    int head = (o / hd) % KVH;
    int lk = o / (hd * KVH); /* layer * 2 + kv */
    *kv = lk & 1;
    int layer = lk >> 1;
    return (((size_t)layer * KVH + head) * mlp->P + t) * hd + d;
}

void pd_prefix_mlp_forward(pd_prefix_mlp *mlp, const float *params, float *keys, float *values)
{
    PD_ASSERT(mlp && mlp->hid && params && keys && values);
    const int P = mlp->P, K = mlp->kv_dim, H = mlp->hidden, O = mlp->out;
    const float *E = params + mlp->off_e;   /* (P, K) */
    const float *W1 = params + mlp->off_w1; /* (H, K) */
    const float *b1 = params + mlp->off_b1; /* (H) */
    const float *W2 = params + mlp->off_w2; /* (O, H) */
    const float *b2 = params + mlp->off_b2; /* (O) */
    for (int t = 0; t < P; t++) {
        const float *e = E + (size_t)t * K;
        float *h = mlp->hid + (size_t)t * H;
        for (int i = 0; i < H; i++) {
            const float *w = W1 + (size_t)i * K;
            double s = b1[i];
            for (int k = 0; k < K; k++) s += (double)w[k] * e[k];
            h[i] = (float)tanh(s);
        }
        for (int o = 0; o < O; o++) {
            const float *w = W2 + (size_t)o * H;
            double s = b2[o];
            for (int i = 0; i < H; i++) s += (double)w[i] * h[i];
            int kv;
            size_t at = scatter_index(mlp, t, o, &kv);
            (kv ? values : keys)[at] = (float)s;
        }
    }
}

void pd_prefix_mlp_backward(pd_prefix_mlp *mlp, const float *params, const float *dkeys,
                            const float *dvalues, float *dparams)
{
    PD_ASSERT(mlp && mlp->hid && params && dkeys && dvalues && dparams);
    const int P = mlp->P, K = mlp->kv_dim, H = mlp->hidden, O = mlp->out;
    const float *E = params + mlp->off_e;
    const float *W1 = params + mlp->off_w1;
    const float *W2 = params + mlp->off_w2;
    float *dE = dparams + mlp->off_e, *dW1 = dparams + mlp->off_w1;
    float *db1 = dparams + mlp->off_b1, *dW2 = dparams + mlp->off_w2;
    float *db2 = dparams + mlp->off_b2;
    float *dflat = mlp->dflat; /* (P, O) */
    float *dpre = mlp->dpre;   /* (P, H) */

    for (int t = 0; t < P; t++)
        for (int o = 0; o < O; o++) {
            int kv;
            size_t at = scatter_index(mlp, t, o, &kv);
            dflat[(size_t)t * O + o] = (kv ? dvalues : dkeys)[at];
        }
    /* Second layer: db2, dW2, and the gradient into the tanh outputs. */
    for (int o = 0; o < O; o++) {
        double sb = 0.0;
        for (int t = 0; t < P; t++) sb += dflat[(size_t)t * O + o];
        db2[o] = (float)sb;
        for (int i = 0; i < H; i++) {
            double s = 0.0;
            for (int t = 0; t < P; t++)
                s += (double)dflat[(size_t)t * O + o] * mlp->hid[(size_t)t * H + i];
            dW2[(size_t)o * H + i] = (float)s;
        }
    }
    for (int t = 0; t < P; t++)
        for (int i = 0; i < H; i++) {
            double s = 0.0;
            for (int o = 0; o < O; o++)
                s += (double)dflat[(size_t)t * O + o] * W2[(size_t)o * H + i];
            double h = mlp->hid[(size_t)t * H + i];
            dpre[(size_t)t * H + i] = (float)(s * (1.0 - h * h));
        }
    /* First layer: db1, dW1, dE. */
    for (int i = 0; i < H; i++) {
        double sb = 0.0;
        for (int t = 0; t < P; t++) sb += dpre[(size_t)t * H + i];
        db1[i] = (float)sb;
        for (int k = 0; k < K; k++) {
            double s = 0.0;
            for (int t = 0; t < P; t++) s += (double)dpre[(size_t)t * H + i] * E[(size_t)t * K + k];
            dW1[(size_t)i * K + k] = (float)s;
        }
    }
    for (int t = 0; t < P; t++)
        for (int k = 0; k < K; k++) {
            double s = 0.0;
            for (int i = 0; i < H; i++)
                s += (double)dpre[(size_t)t * H + i] * W1[(size_t)i * K + k];
            dE[(size_t)t * K + k] = (float)s;
        }
}
