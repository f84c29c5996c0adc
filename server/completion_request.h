/* completion_request.h — the body of POST /v1/completions (or of POST
 * /v1/chat/completions) read into a creq: every parameter of OpenAI's
 * completions API type- and range-checked against the server's limits, every
 * prompt tokenized. No server state, no I/O, no locks: the route
 * (routes_completions.c) and the fuzz target (tests/fuzz/fuzz_completion.c)
 * run the same code. A chat request uses creq_parse_chat_params and, for its
 * one prompt (the rendered conversation), creq_chat_prompt in place of
 * creq_parse_prompts.
 *
 * The route runs three steps in this order and resolves the model between
 * the first two, since a prompt's tokens depend on whether the task's prefix
 * already holds BOS:
 *
 *     creq_limits lim = {model->id, vocab_size, max_choices, context};
 *     creq q;
 *     creq_error e;
 *     if (creq_parse_params(&q, body, &lim, &e) < 0) ... answer e ...
 *     ... q.model_name: the base model or a task; look up its prefix ...
 *     if (creq_parse_prompts(&q, body, tok, prefix_has_bos, &lim, &e) < 0) ...
 *     if (creq_check_context(&q, prefix_tokens, &lim, &e) < 0) ...
 *     ...
 *     creq_free(&q);
 *
 * Each step returns 0, or -1 with the rejection in e: the HTTP status (400,
 * or 503 when out of memory), the offending parameter (or NULL), OpenAI's
 * error code and a message for the client. A creq belongs to one thread.
 */
#ifndef PREFIXD_SERVER_COMPLETION_REQUEST_H
#define PREFIXD_SERVER_COMPLETION_REQUEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "prefixd/prefix.h"
#include "prefixd/sampler.h"
#include "prefixd/tokenizer.h"

#define CREQ_MAX_STOP 4         /* stop sequences per request */
#define CREQ_STOP_MAX_BYTES 256 /* bytes of one stop sequence */
#define CREQ_MAX_TOKENS (1L << 24) /* max_tokens accepted at most */

/* What the server allows; every pointer borrowed for the call. */
typedef struct creq_limits {
    const char *model_id; /* the base model's id (named when `model` is missing) */
    int vocab_size;       /* top_k and token ids stay below it */
    long max_choices;     /* prompts × n at most */
    int context;          /* tokens per request at most (P + prompt + completion) */
} creq_limits;

/* A rejection. param and code point at static strings (param may be NULL). */
typedef struct creq_error {
    int status;
    const char *param, *code;
    char msg[768];
} creq_error;

/* Fills e and returns -1, so callers can write `return creq_reject(...)`. */
int creq_reject(creq_error *e, int status, const char *param, const char *code,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* One prompt, tokenized. */
typedef struct creq_prompt {
    int32_t *tokens; /* (n) owned */
    int n;
    char *text;      /* the prompt as text, NUL-terminated (owned; decoded and
                        cleaned to valid UTF-8 for token prompts) */
    size_t text_len;
    int text_chars;  /* code points in text (text_offset base) */
} creq_prompt;

/* A parsed request. Owns prompts; everything else is plain data. */
typedef struct creq {
    char model_name[PD_TASK_NAME_MAX + 136]; /* as requested */
    int max_tokens;          /* 0..CREQ_MAX_TOKENS, default 16; 0 only with echo */
    int n_per_prompt;        /* `n`: choices per prompt, default 1 */
    pd_sampler_params sampling; /* temperature, top_p, top_k, seed (when given) */
    int seed_given;
    int logprobs;            /* -1: none; 0..PD_TOP_LOGPROBS_MAX */
    int echo, stream, include_usage; /* echo with logprobs: the prompt is scored too */
    /* NUL-terminated copies; one more than a client may give, for the
     * end-of-turn text of a chat template whose end of turn is no token */
    char stop[CREQ_MAX_STOP + 1][CREQ_STOP_MAX_BYTES + 1];
    size_t stop_len[CREQ_MAX_STOP + 1];
    int n_stop;
    size_t max_stop;         /* longest stop sequence, 0 when none */
    creq_prompt *prompts;    /* (n_prompts) owned; set by creq_parse_prompts */
    int n_prompts;
} creq;

/* Reads every parameter but the prompt from body (a JSON object, borrowed)
 * into q, which is overwritten (it must not hold prompts). Defaults follow
 * OpenAI: max_tokens 16, n 1, temperature 1, top_p 1. Returns 0 or -1 with
 * e filled. */
int creq_parse_params(creq *q, json_t *body, const creq_limits *lim, creq_error *e);

/* The chat flavour of creq_parse_params (POST /v1/chat/completions): reads
 * max_completion_tokens (or max_tokens), logprobs (a boolean) with
 * top_logprobs, response_format (only {"type": "text"}) and the parameters
 * both APIs share; refuses the completions-only ones (prompt, echo, suffix,
 * best_of). `messages` is left to the caller. Returns 0 or -1 with e. */
int creq_parse_chat_params(creq *q, json_t *body, const creq_limits *lim, creq_error *e);

/* Sets q's one prompt to text (a rendered conversation, borrowed), tokenized
 * with special-token text parsed (a chat template's markers become their
 * control tokens) and BOS first when bos. Returns 0 or -1 with e. */
int creq_chat_prompt(creq *q, const char *text, size_t len, const pd_tokenizer *tok, int bos,
                     const creq_limits *lim, creq_error *e);

/* Adds a stop string (NUL-terminated, at most CREQ_STOP_MAX_BYTES) unless q
 * has it already; one beyond the client's CREQ_MAX_STOP fits. */
void creq_add_stop(creq *q, const char *stop);

/* Reads and tokenizes `prompt` (a string, an array of strings, an array of
 * token ids, or an array of arrays of token ids) with tok (borrowed). Text
 * prompts get BOS unless the prefix already holds it (prefix_has_bos); an
 * empty text prompt is then refused. Needs the `n` of creq_parse_params.
 * The prompts are q's (freed by creq_free, even after a failure). Returns 0
 * or -1 with e filled. */
int creq_parse_prompts(creq *q, json_t *body, const pd_tokenizer *tok, int prefix_has_bos,
                       const creq_limits *lim, creq_error *e);

/* Checks that a prefix of prefix_tokens plus each prompt plus max_tokens
 * fits lim->context. Returns 0 or -1 with e filled. */
int creq_check_context(const creq *q, int prefix_tokens, const creq_limits *lim,
                       creq_error *e);

/* Frees what q owns (its prompts) and leaves it with none. A zeroed creq is
 * fine. */
void creq_free(creq *q);

#endif
