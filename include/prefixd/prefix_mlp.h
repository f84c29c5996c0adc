/* prefixd/prefix_mlp.h — PEFT's prefix_projection: the reparameterisation
 * of a prefix through a small MLP (Li & Liang 2021, laid out as HF PEFT's
 * PrefixEncoder with prefix_projection = True).
 *
 *     E    (P, kv_dim)             embedding of the P virtual tokens
 *     W1   (hidden, kv_dim), b1 (hidden)
 *     W2   (out, hidden),    b2 (out)      out = n_layers * 2 * kv_dim
 *     flat[t] = W2 · tanh(W1 · E[t] + b1) + b2
 *
 * Row t of flat is virtual token t's keys and values, flat index
 * ((layer * 2 + kv) * n_kv_heads + head) * head_dim + d with kv = 0 for keys,
 * 1 for values (PEFT's prompt_embeddings layout), scattered into keys and
 * values (n_layers, n_kv_heads, P, head_dim). The parameters are one flat
 * float vector laid out E, W1, b1, W2, b2 (offsets below), so the optimiser
 * sees a single vector. Sums are accumulated in double.
 *
 * A pd_prefix_mlp holds the shapes and the scratch of one forward/backward
 * pair (allocated once); one thread at a time.
 */
#ifndef PREFIXD_PREFIX_MLP_H
#define PREFIXD_PREFIX_MLP_H

#include <stddef.h>

#include "prefixd/common.h"
#include "prefixd/dataset.h"
#include "prefixd/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_prefix_mlp {
    int P, kv_dim, hidden, out;     /* out = n_layers * 2 * kv_dim */
    int n_layers, n_kv_heads, head_dim;
    size_t n_params;                /* P*kv_dim + hidden*kv_dim + hidden + out*hidden + out */
    size_t off_e, off_w1, off_b1, off_w2, off_b2; /* offsets in the parameter vector */
    float *hid;                     /* (P, hidden) tanh activations of the last forward */
    float *dflat;                   /* (P, out) scratch of the backward pass */
    float *dpre;                    /* (P, hidden) scratch of the backward pass */
} pd_prefix_mlp;

/* Sets the shapes for model config c, P virtual tokens and hidden width,
 * and allocates the scratch. Returns PD_OK, PD_EINVAL (P or hidden < 1) or
 * PD_ENOMEM. */
int pd_prefix_mlp_init(pd_prefix_mlp *mlp, const pd_config *c, int P, int hidden,
                       pd_err *err);
void pd_prefix_mlp_free(pd_prefix_mlp *mlp); /* frees the scratch */

/* PyTorch's default initialisation, as PEFT gets it: E ~ N(0, 1); W and b
 * of each Linear ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); drawn from r in the
 * order E, W1, b1, W2, b2. Then W2 and b2 are multiplied by out_scale (1:
 * PEFT's own). */
void pd_prefix_mlp_init_params(const pd_prefix_mlp *mlp, float *params, pd_rng *r,
                               double out_scale);

/* Computes keys and values (n_layers, n_kv_heads, P, head_dim) from params
 * and keeps the activations for pd_prefix_mlp_backward. */
void pd_prefix_mlp_forward(pd_prefix_mlp *mlp, const float *params, float *keys,
                           float *values);

/* From d(loss)/d(keys), d(loss)/d(values) to d(loss)/d(params), WRITTEN
 * (not accumulated) into dparams[0 .. n_params). Uses the activations of the
 * last pd_prefix_mlp_forward, which must have run on the same params. */
void pd_prefix_mlp_backward(pd_prefix_mlp *mlp, const float *params, const float *dkeys,
                            const float *dvalues, float *dparams);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_PREFIX_MLP_H */
