/* prefixd/dataset.h — training data: JSONL files of {"prompt", "completion"},
 * {"text"} or chat {"messages"} lines, tokenized into examples with a loss mask
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
 * Chat lines are {"messages": [...], "tools"?: [...]} as OpenAI's
 * fine-tuning takes them: roles system, developer, user, assistant, tool;
 * content a string or an array of text parts (null only on an assistant
 * message with tool_calls); an optional "weight": 0 or 1 on assistant
 * messages (default 1). The conversation is rendered with the chat template
 * (p->chat_template, with the tokenizer's BOS/EOS text) and tokenized as
 * one text, BOS first. Targets are the tokens of the assistant messages of
 * weight 1, found by rendering prefixes of the conversation, as Hugging
 * Face's assistant masks and llama.cpp's chat diffs do: message i spans
 * from the end of render(messages[0..i), add_generation_prompt=true) to the
 * end of render(messages[0..i], add_generation_prompt=false) in the render
 * of the whole conversation. So a target span is the message's content plus
 * what the template closes the turn with (its end-of-turn token, e.g.
 * <|im_end|> and the newline after it in ChatML; " </s>" in Llama 2), which
 * teaches the model to stop. A template must render each such prefix as a
 * beginning of the whole conversation (templates that drop earlier
 * reasoning, like Qwen 3's, do not: such a line is refused). A chat line is
 * bad when a role is unknown, a content is not a string, a weight is not 0
 * or 1 or not on an assistant message, there is no assistant message of
 * weight 1, or the template raises ("FILE:LINE: chat template: line L,
 * column C: …").
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
    const char *chat_template; /* source of the template for {"messages"} lines
                                  (borrowed); NULL: the tokenizer's own (GGUF
                                  tokenizer.chat_template), else chatml */
    long long now;      /* strftime_now's clock for templates; -1: real */
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
