/* prefixd/distill.h — context distillation, the data and teacher side:
 * compressing a long prompt into a short trained prefix (issue 16).
 *
 * The teacher is the frozen base model given the whole prompt (BOS +
 * encode(teacher_prompt)), run as a prompt-built prefix of it (prompt
 * equivalence: the same bits as the hard prompt). The student is the base
 * model with a P-slot prefix and no prompt. pd_distill_build() samples the
 * training data from the teacher: for sample i, the user input i mod
 * n_inputs (or none), then sample_length tokens drawn from the teacher at
 * the given temperature (stopping after an end-of-generation token), seeded
 * and reproducible. While sampling, it keeps the teacher's full next-token
 * distribution at temperature 1 for every continuation token: the soft
 * targets (pd_example.soft), computed once and cached.
 *
 * Memory: soft targets are stored as full distributions, one row of V
 * floats per token of every example (BOS, input and continuation; rows of
 * non-targets unused): 4·V·(1 + input + sample_length) bytes per sample,
 * e.g. 64 samples of 48 tokens: 6.3 MB for V = 512, 393 MB for V = 32000.
 *
 * Examples come BOS first, as pd_dataset's do, with targets at every
 * continuation token that has a row before it in the student's view (the
 * student's prefix stands for BOS + prompt, so it serves with has_bos = 1
 * and trains on the examples without their BOS).
 */
#ifndef PREFIXD_DISTILL_H
#define PREFIXD_DISTILL_H

#include <stdint.h>

#include "prefixd/backprop.h"
#include "prefixd/engine.h"
#include "prefixd/model.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { PD_DISTILL_INIT_PROMPT = 0, PD_DISTILL_INIT_RANDOM = 1 };

typedef struct pd_distill_params {
    const char *teacher_prompt; /* NULL: not a distillation job */
    int n_samples;              /* teacher continuations to train on (default 64) */
    int sample_length;          /* tokens per continuation at most (default 32) */
    double temperature;         /* sampling temperature, > 0 (default 1) */
    double ce_weight;           /* weight of the sampled token's cross-entropy in
                                   the training loss, [0, 1] (default 0: pure KL) */
    int init;                   /* PD_DISTILL_INIT_PROMPT (default): BOS + the
                                   prompt's last P - 1 positions, re-rotated;
                                   PD_DISTILL_INIT_RANDOM */
} pd_distill_params;

pd_distill_params pd_distill_default_params(void);

/* Sampled teacher data (owns every buffer its examples point into). */
typedef struct pd_distill_data {
    pd_example *ex;   /* (n) BOS first; soft set, ce_weight 0 */
    int n;
    int max_len;      /* longest example, BOS included */
    int32_t *tokens;  /* storage */
    uint8_t *mask;
    float *soft;
} pd_distill_data;

/* The teacher prompt's tokens (BOS first) into *toks (malloc'd, caller
 * frees) and their count into *n; PD_ERANGE when it does not fit in the
 * context with room for max_tail more tokens. */
int pd_distill_prompt_tokens(const pd_model *m, const char *prompt, int max_tail, int32_t **toks,
                             int *n, pd_err *err);

/* Samples p->n_samples examples from the teacher (prompt tokens BOS first,
 * n_prompt of them) after the inputs (each a token list without BOS;
 * n_inputs 0: unconditional continuations), with generator seed. e is
 * borrowed, used one step at a time. */
int pd_distill_build(pd_engine *e, const pd_model *m, const int32_t *prompt, int n_prompt,
                     const pd_example *inputs, int n_inputs, const pd_distill_params *p,
                     uint64_t seed, pd_distill_data *out, pd_err *err);
void pd_distill_free(pd_distill_data *d);

/* The prompt's KV compressed to P slots (PD_DISTILL_INIT_PROMPT): slot 0 the
 * BOS position, slots 1..P-1 the prompt's last P - 1 positions, their keys
 * rotated back by n_prompt - P positions so that slot i carries position i,
 * as the student's prefix is seen. keys/values: (n_layers, n_kv_heads, P,
 * head_dim). Needs 2 <= P < n_prompt. */
int pd_distill_init_kv(pd_engine *e, const pd_model *m, const int32_t *prompt, int n_prompt,
                       int P, float *keys, float *values, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_DISTILL_H */
