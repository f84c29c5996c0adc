/* prefixd/backprop.h — the gradient of the loss with respect to a prefix,
 * through the frozen base model (training never computes or writes a weight
 * gradient).
 *
 * A batch is a list of examples packed into one matrix of rows (no padding):
 * example i's tokens occupy rows [start_i, start_i + n_i), sit at positions
 * P + j, attend to the P prefix slots and causally to their own example.
 * Token j of an example (j >= 1) is a target when loss_mask[j] is set: the
 * loss is the cross-entropy of predicting tokens[j] from row j - 1.
 *
 * Distillation: an example with soft targets (soft != NULL) is scored
 * against a teacher's distribution p_j = soft[j·V ..] (V = vocab_size, a
 * probability vector summing to 1) instead of the one-hot tokens[j]:
 *   loss_j = (1 − w)·KL(p_j ‖ q_j) + w·(−log q_j[tokens[j]]),  w = ce_weight,
 * q_j = softmax(student logits of row j − 1); its gradient with respect to
 * those logits is q_j − (1 − w)·p_j − w·onehot(tokens[j]). KL terms with
 * p = 0 are 0.
 *
 * pd_backprop_run() returns the SUM of the target cross-entropies and the
 * number of targets, and ADDS d(sum)/d(keys), d(sum)/d(values) into dkeys,
 * dvalues (the caller zeroes them and scales by 1/n_targets for a mean). The
 * forward part computes the same logits as pd_engine_step (same products). A
 * pd_backprop context owns every activation buffer, sized once for max_rows
 * rows and max_prefix slots: a run never allocates. One thread at a time.
 */
#ifndef PREFIXD_BACKPROP_H
#define PREFIXD_BACKPROP_H

#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_example {
    const int32_t *tokens;    /* (n) token ids, BOS first as served */
    const uint8_t *loss_mask; /* (n) 1: tokens[j] is a target; [0] is ignored */
    int n;                    /* >= 2 */
    const float *soft;        /* (n, V) teacher probabilities, row j for target j
                                 (rows of non-targets unused), or NULL: one-hot */
    float ce_weight;          /* with soft: w above, in [0, 1] (0: pure KL) */
} pd_example;

typedef struct pd_backprop pd_backprop;

/* m borrowed; n_threads <= 0: online CPUs. */
int pd_backprop_create(const pd_model *m, int max_rows, int max_prefix, int n_threads,
                       pd_backprop **out, pd_err *err);
void pd_backprop_free(pd_backprop *b);

/* keys/values: (n_layers, n_kv_heads, P, head_dim). dkeys/dvalues: same
 * shape, accumulated into; both NULL for a forward-only evaluation. Returns
 * PD_OK and *loss_sum, *n_targets, or PD_EINVAL (err says which example) when
 * the batch does not fit, a token is outside the vocabulary, or an example is
 * longer than the context after the prefix. */
int pd_backprop_run(pd_backprop *b, const float *keys, const float *values, int P,
                    const pd_example *ex, int n_ex, float *dkeys, float *dvalues,
                    double *loss_sum, int *n_targets, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_BACKPROP_H */
