/* prefixd/generate.h — one sequence, start to end: prefill the prompt in
 * chunks, then sample token by token until a stop. Used by the CLI and the
 * tests; the server's scheduler batches many sequences instead. */
#ifndef PREFIXD_GENERATE_H
#define PREFIXD_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/engine.h"
#include "prefixd/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pd_finish {
    PD_FINISH_LENGTH = 0, /* max_tokens reached (or the sequence's capacity) */
    PD_FINISH_STOP = 1    /* EOS, or BOS (llama2.c models end a story with it) */
} pd_finish;

/* Called with each generated token and the bytes it decodes to (after the
 * previous token); return non-zero to stop (finish = STOP). */
typedef int (*pd_token_fn)(int token, const char *bytes, size_t len, void *user_data);

typedef struct pd_gen_params {
    int max_tokens;          /* tokens to generate at most */
    pd_sampler_params sampling;
    pd_token_fn on_token;    /* may be NULL */
    void *user_data;
} pd_gen_params;

/* Runs prompt[0..n_prompt) (n_prompt >= 1; already holds BOS if wanted)
 * through seq (emptied first; its prefix is kept), then generates. Generated
 * ids go to out[0..cap_out) and their count to *n_out (the stop token is not
 * included). Returns a pd_finish value, or a negative
 * status (err says why: prompt longer than the sequence, bad token). */
int pd_generate(pd_engine *e, const pd_model *m, pd_seq *seq, const int32_t *prompt,
                int n_prompt, const pd_gen_params *p, int32_t *out, int cap_out,
                int *n_out, pd_err *err);

/* Runs tokens[0..n) through seq from cache index seq->len on, in chunks of
 * the engine's step size; *last_logits (if not NULL) points at the logits of
 * the last token (engine-owned, valid until the next step). Returns PD_OK or
 * a negative status. */
int pd_prefill(pd_engine *e, const pd_model *m, pd_seq *seq, const int32_t *tokens, int n,
               const float **last_logits, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_GENERATE_H */
