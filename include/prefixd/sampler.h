/* prefixd/sampler.h — turning logits into the next token.
 *
 * Greedy (temperature 0: the first index of the maximum, as llama2.c), or
 * temperature sampling restricted by top-k (k most likely) and top-p (the
 * smallest set whose probability reaches p). The random stream is
 * xorshift64* from a seed, so a seed makes a run reproducible. A sampler is
 * owned by one sequence; its scratch is allocated once at init, or borrowed
 * from a sampler whose thread samples one sequence at a time (the scheduler
 * lends one to every running sequence). A seeded draw depends only on the
 * sampler and the logits, never on the batch or the route (completions and
 * chat share it).
 */
#ifndef PREFIXD_SAMPLER_H
#define PREFIXD_SAMPLER_H

#include <stdint.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_sampler_params {
    float temperature; /* 0: greedy */
    float top_p;       /* in (0, 1]; 1: off */
    int top_k;         /* 0: off */
    uint64_t seed;
} pd_sampler_params;

pd_sampler_params pd_sampler_default_params(void); /* greedy, top_p 1, top_k 0, seed 42 */

typedef struct pd_sampler {
    pd_sampler_params p;
    uint64_t rng;
    int vocab_size;
    float *probs;      /* (vocab_size) scratch (owned unless borrowed) */
    int32_t *index;    /* (vocab_size) scratch (owned unless borrowed) */
    float *block_sums; /* (ceil(vocab_size / 64)) scratch (owned unless borrowed) */
    int borrowed;      /* 1: the three scratch arrays belong to another sampler */
} pd_sampler;

/* Validates params (temperature >= 0 and finite, top_p in (0,1], top_k >= 0)
 * and allocates scratch. Returns PD_OK, PD_EINVAL or PD_ENOMEM. */
int pd_sampler_init(pd_sampler *s, int vocab_size, const pd_sampler_params *p,
                    pd_err *err);
/* As pd_sampler_init, but borrows the scratch of `from` (initialised with
 * pd_sampler_init for the same vocab_size; it must outlive s): samplers
 * used by one thread one at a time need one scratch between them, and this
 * allocates nothing. Returns PD_OK or PD_EINVAL. */
int pd_sampler_init_borrowing(pd_sampler *s, const pd_sampler *from,
                              const pd_sampler_params *p, pd_err *err);
/* Frees the scratch if s owns it. */
void pd_sampler_release(pd_sampler *s);

/* Returns the next token id for logits (vocab_size floats, not modified).
 * If logprob is not NULL it receives log softmax(logits)[token] at
 * temperature 1. Reads only s and logits: a seeded sampler draws the same
 * tokens whatever else runs (alone or batched). */
int pd_sampler_sample(pd_sampler *s, const float *logits, float *logprob);

/* log sum_i exp(logits[i]) over n >= 1 entries, with the sampler's exp and
 * the sum in double: log softmax(logits)[k] = logits[k] - this. */
double pd_sampler_log_sum_exp(const float *logits, int n);

/* e^x in float for x <= 0 (0 below -87), within 2 ulp: the exp the sampler
 * uses (internal, exposed for its test). */
float pd__sampler_exp(float x);

/* Uniform float in [0, 1) from the sampler's stream. */
float pd_sampler_rand(pd_sampler *s);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_SAMPLER_H */
