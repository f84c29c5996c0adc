/* prefixd/dataset.h — training data: JSONL files of {"prompt", "completion"}
 * or {"text"} lines, tokenized into examples with a loss mask
 * (ARCHITECTURE.md "Training").
 *
 *     pd_dataset_params dp = pd_dataset_default_params();
 *     dp.max_tokens = m->cfg.seq_len - P;
 *     pd_dataset *d; pd_err err;
 *     if (pd_dataset_load("train.jsonl", m->tok, &dp, &d, &err) < 0)
 *         ... err.msg is "train.jsonl:17: \"completion\" is missing" ...
 *     ... d->ex[0 .. d->n) are pd_example views for pd_backprop_run ...
 *     pd_dataset_free(d);
 *
 * Tokenization is the serving-time one: an example is BOS + encode(prompt +
 * completion), one encoding of the whole text (so a token may span the
 * boundary between the two). Token j (j >= 1) is a target when the bytes it
 * decodes to start at or after the end of the prompt; the dummy-prefix space
 * the tokenizer adds (and decoding drops after BOS) is accounted for. For
 * {"text"} lines every token after BOS is a target.
 *
 * A line is bad when it is not JSON, not an object, lacks a field or has one
 * of the wrong type, carries both forms, has an empty completion (or text),
 * has no target token, or encodes to more than max_tokens tokens. Unknown
 * extra fields are ignored, and so are blank lines. Bad lines fail the load
 * with PD_EFORMAT and "FILE:LINE: what is wrong", or are skipped (and logged
 * at warning level) with skip_bad_lines.
 *
 * A pd_dataset is immutable after loading and owns every buffer its
 * examples point into.
 */
#ifndef PREFIXD_DATASET_H
#define PREFIXD_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/backprop.h"
#include "prefixd/common.h"
#include "prefixd/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PD_DATASET_MAX_LINE (1u << 20)  /* bytes in one line, at most */
#define PD_DATASET_MAX_EXAMPLES 1000000 /* examples in one file, at most */

typedef struct pd_dataset_params {
    int max_tokens;     /* longest example accepted, BOS included (seq_len - P) */
    int first_target;   /* tokens before this index are never targets (default
                           1; 2 when the example will be served without BOS) */
    int skip_bad_lines; /* 1: skip and log bad lines; 0: fail on the first */
} pd_dataset_params;

pd_dataset_params pd_dataset_default_params(void);

typedef struct pd_dataset {
    int n;              /* examples */
    pd_example *ex;     /* (n) views into tokens/mask below */
    int *line;          /* (n) 1-based source line of each example */
    int32_t *tokens;    /* (n_tokens) every example's tokens, back to back */
    uint8_t *mask;      /* (n_tokens) loss masks, in step with tokens */
    size_t n_tokens;
    size_t n_targets;   /* set mask entries over all examples */
    int max_len;        /* longest example, in tokens */
    int n_skipped;      /* bad lines skipped */
} pd_dataset;

/* Tokenizes one example: BOS + encode(prompt + completion) into *tokens and
 * its loss mask into *mask (both new, malloc'd; free()) of *n entries. A
 * {"text"} example is prompt_len = 0. Returns PD_OK, PD_ENOMEM, or
 * PD_EFORMAT with err saying what is wrong (no target token, text that does
 * not decode back to itself); the caller adds the place. */
int pd_dataset_encode(const pd_tokenizer *tok, const char *prompt, size_t prompt_len,
                      const char *completion, size_t completion_len, int first_target,
                      int32_t **tokens, uint8_t **mask, int *n, pd_err *err);

/* Loads and tokenizes the JSONL file at path with tok (borrowed; only used
 * during the call). Returns PD_OK and a new dataset in *out (at least one
 * example), or PD_EIO, PD_ENOMEM, PD_ERANGE (too many examples) or
 * PD_EFORMAT with err as above; "FILE: no usable examples" when none is
 * left. */
int pd_dataset_load(const char *path, const pd_tokenizer *tok, const pd_dataset_params *p,
                    pd_dataset **out, pd_err *err);

/* The same over a buffer of size bytes; name stands for the file in
 * messages. */
int pd_dataset_parse(const char *data, size_t size, const char *name, const pd_tokenizer *tok,
                     const pd_dataset_params *p, pd_dataset **out, pd_err *err);

void pd_dataset_free(pd_dataset *d); /* NULL is a no-op */

/* Splits examples [0, n) into a validation set of round(fraction * n)
 * examples (at least 1 when fraction > 0, always leaving at least 1 for
 * training) chosen by a Fisher-Yates shuffle seeded with seed, and the rest
 * for training; both index lists keep file order. *train and *valid are new
 * arrays (free()); *n_valid may be 0 (then *valid is NULL). */
int pd_dataset_split(int n, double fraction, uint64_t seed, int **train, int *n_train,
                     int **valid, int *n_valid, pd_err *err);

/* A small deterministic generator (xoshiro256**, seeded through splitmix64)
 * shared by the data split, the shuffles and the initialisation. The state
 * is plain data: saving and restoring it resumes the same sequence. */
typedef struct pd_rng {
    uint64_t s[4];
} pd_rng;

void pd_rng_seed(pd_rng *r, uint64_t seed);
uint64_t pd_rng_next(pd_rng *r);
/* Uniform in [0, n), n >= 1, without modulo bias. */
uint64_t pd_rng_below(pd_rng *r, uint64_t n);
/* Uniform double in [0, 1). */
double pd_rng_uniform(pd_rng *r);
/* Standard normal (Box-Muller; uses two draws per call). */
double pd_rng_normal(pd_rng *r);
/* Shuffles idx[0..n) in place (Fisher-Yates). */
void pd_rng_shuffle(pd_rng *r, int *idx, int n);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_DATASET_H */
