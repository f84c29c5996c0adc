/* prefixd/scheduler.h — continuous batching across tasks.
 *
 * DESIGN. One engine thread owns every running sequence, its KV cache and
 * the pd_engine. Each iteration it admits queued requests (up to max_seqs
 * running), builds one step from the next token of every decoding sequence
 * plus prefill chunks of new ones, up to max_step_tokens, runs
 * pd_engine_step, samples, and hands each new token to its request. Finished
 * and cancelled sequences leave at once and free their KV cache; new ones
 * join between steps. Requests of different tasks (prefixes) share a step.
 *
 * KV memory: every sequence's cache is paged from one pool of blocks
 * (kvpool.h) of kv_budget bytes. A request is admitted only when the pool
 * can promise it the blocks of prompt + max_tokens (reserve at admission:
 * a running sequence never runs out, nothing is preempted); until then it
 * waits in the queue, in order. A request needing more than the whole pool
 * is refused at submit (PD_EINVAL).
 *
 * Prompt cache: every full block a sequence fills (prompt or generated
 * tokens) is published in the pool under its owner (the prefix's
 * content_id, or the base model) and token ids (kvpool.h); a new request
 * starts from the longest published run of its prompt, leaving at least
 * the prompt's last token to prefill (its logits), and prefills only the
 * rest. Its logits are the same bits as without the hit. Requests that
 * score their prompt (prompt_logprobs) and prefixes without a content_id
 * do not take from the cache.
 *
 * Threads: any thread may submit, wait on and cancel requests; the engine
 * thread never blocks on the network (it only appends to a request's output
 * under the request's mutex and signals its condition variable).
 *
 *     pd_request *rq = pd_request_create(prompt, n, &err);
 *     rq->prefix = pd_prefix_retain(p);  (or NULL for the base model)
 *     rq->max_tokens = 64; rq->sampling = ...;
 *     if (pd_sched_submit(s, rq, &err) == PD_EBUSY) -> 429
 *     size_t seen = 0;
 *     while (pd_request_wait(rq, seen, timeout_ms) ...) { read rq->out ... }
 *     pd_request_release(rq);
 */
#ifndef PREFIXD_SCHEDULER_H
#define PREFIXD_SCHEDULER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "prefixd/engine.h"
#include "prefixd/kvpool.h"
#include "prefixd/prefix.h"
#include "prefixd/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PD_TOP_LOGPROBS_MAX 5

typedef enum pd_request_state {
    PD_REQ_QUEUED = 0,
    PD_REQ_RUNNING = 1,
    PD_REQ_DONE = 2
} pd_request_state;

typedef enum pd_finish_reason {
    PD_FINISH_REASON_NONE = 0,
    PD_FINISH_REASON_STOP = 1,      /* EOS/BOS, or cancelled by a stop string */
    PD_FINISH_REASON_LENGTH = 2,    /* max_tokens */
    PD_FINISH_REASON_CANCELLED = 3, /* client went away, or shutdown */
    PD_FINISH_REASON_ERROR = 4
} pd_finish_reason;

/* One generated token as the request sees it. */
typedef struct pd_token_out {
    int32_t id;
    float logprob;                        /* log p(id) at temperature 1 */
    int n_top;                            /* entries in top_ids/top_logprobs */
    int32_t top_ids[PD_TOP_LOGPROBS_MAX];
    float top_logprobs[PD_TOP_LOGPROBS_MAX];
} pd_token_out;

typedef struct pd_request {
    /* --- input: set by the submitter before pd_sched_submit, then read-only */
    int32_t *prompt;              /* (n_prompt) token ids (owned by the request) */
    int n_prompt;
    pd_prefix *prefix;            /* a reference owned by the request, or NULL */
    int max_tokens;               /* >= 1; 0 allowed with prompt_logprobs (scoring only) */
    pd_sampler_params sampling;
    int logprobs;                 /* 1: out[i].logprob is filled (one more pass over the
                                     vocabulary per token); 0: it is NAN unless
                                     top_logprobs > 0 */
    int top_logprobs;             /* 0..PD_TOP_LOGPROBS_MAX */
    int prompt_logprobs;          /* 1: score the prompt: prompt_out[i] (i >= 1) gets
                                     log p(prompt[i] | prompt[0..i)) and its top
                                     top_logprobs alternatives, at temperature 1 */
    char task[PD_TASK_NAME_MAX + 1]; /* for metrics; "" for the base model */
    int build_prefix;             /* 1: only prefill the prompt (no prefix) and
                                     return its KV cache as a prefix named
                                     build_task in `built` (prompt prefixes are
                                     built on the engine thread too) */
    char build_task[PD_TASK_NAME_MAX + 1];

    /* --- output: written by the engine thread under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pd_token_out *out;            /* (max_tokens) generated tokens */
    int n_out;
    pd_token_out *prompt_out;     /* (n_prompt) the prompt's scores with prompt_logprobs;
                                     entry 0 is unused; complete once n_out > 0 or DONE */
    int state;                    /* pd_request_state */
    int finish;                   /* pd_finish_reason once DONE */
    char error[PD_ERR_MSG_MAX];
    pd_prefix *built;             /* build_prefix result (owned by the request) */
    int cached_tokens;            /* prompt tokens found in the prompt cache (not prefilled);
                                     set when the request starts running */
    double t_submit, t_first, t_done; /* monotonic seconds */

    /* --- shared */
    atomic_int cancel;            /* set by the submitter: stop as soon as possible */
    atomic_int refs;
} pd_request;

/* A new request holding a copy of prompt[0..n_prompt) and one reference.
 * Fill the input fields, then submit. max_tokens may be 0 only for a request
 * that then sets prompt_logprobs (pd_sched_submit checks). */
int pd_request_create(const int32_t *prompt, int n_prompt, int max_tokens, pd_request **out,
                      pd_err *err);
pd_request *pd_request_retain(pd_request *rq);
void pd_request_release(pd_request *rq); /* frees at zero; releases the prefix */

/* Asks the engine to stop the request (client went away, stop string); its
 * sequence is freed before the next step. */
void pd_request_cancel(pd_request *rq);

/* Waits until the request has more than `seen` tokens or is done, or
 * timeout_ms passes (< 0: no limit). Returns the current n_out. Read out[]
 * entries below the returned count, and state/finish, after it returns
 * (entries below n_out never change). */
int pd_request_wait(pd_request *rq, int seen, int timeout_ms);

typedef struct pd_sched_params {
    int max_seqs;         /* running sequences at most (default 64) */
    int max_step_tokens;  /* tokens per step at most (default 256) */
    int queue_limit;      /* waiting requests at most (default 1024) */
    int n_threads;        /* engine threads, <= 0: online CPUs */
    size_t kv_budget;     /* bytes of KV blocks; 0: max_seqs full-context sequences, at
                             most a quarter of the free memory and 1 GiB, at least one
                             full-context sequence */
    pd_kv_dtype kv_dtype; /* the KV cache's storage (kvpool.h; default F32): F16 halves
                             every block, so the budget holds twice the tokens */
} pd_sched_params;

pd_sched_params pd_sched_default_params(void);

typedef struct pd_sched pd_sched;

/* Creates the engine and starts the engine thread. model borrowed. */
int pd_sched_create(const pd_model *m, const pd_sched_params *p, pd_sched **out, pd_err *err);

/* Stops admitting, lets running and queued requests finish for up to
 * grace_ms, cancels the rest, joins the thread and frees. NULL: no-op. */
void pd_sched_free(pd_sched *s, int grace_ms);

/* Queues rq (the scheduler takes its own reference). PD_EBUSY when the queue
 * is full, PD_EINVAL when the prompt plus prefix plus max_tokens exceed the
 * context or the whole KV budget (err says by how much), PD_ECANCELLED when
 * shutting down. */
int pd_sched_submit(pd_sched *s, pd_request *rq, pd_err *err);

typedef struct pd_sched_stats {
    int queued;                 /* waiting now */
    int running;                /* sequences in the engine now */
    uint64_t steps;             /* engine steps run */
    uint64_t step_tokens;       /* tokens over all steps */
    uint64_t batch_hist[8];     /* steps with batch size <=1,<=2,<=4,...,<=64,>64 */
    uint64_t tokens_generated;
    uint64_t prompt_tokens;
    uint64_t cancelled;         /* sequences stopped by cancel */
    uint64_t seqs_freed;        /* sequences whose KV cache was freed */
    int kv_blocks_total;        /* blocks in the KV pool */
    int kv_blocks_used;         /* blocks held by sequences now */
    int kv_blocks_reserved;     /* blocks promised to running sequences, not yet taken */
    size_t kv_block_bytes;      /* bytes per block (PD_KV_BLOCK tokens, all layers) */
    pd_kv_dtype kv_dtype;       /* the blocks' storage */
    int kv_blocks_cached;       /* published blocks nobody holds (the prompt cache's LRU) */
    uint64_t cache_hits;        /* requests that started from cached blocks */
    uint64_t cache_tokens;      /* prompt tokens those requests did not prefill */
    uint64_t cache_evictions;   /* cached blocks reused for other content */
} pd_sched_stats;

void pd_sched_stats_get(pd_sched *s, pd_sched_stats *out);

/* Monotonic clock in seconds (for request timing). */
double pd_now(void);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_SCHEDULER_H */
