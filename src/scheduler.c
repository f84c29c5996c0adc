/* scheduler.c — continuous batching on one engine thread (see
 * prefixd/scheduler.h for the design and thread rules).
 *
 * The engine thread loops: drop cancelled sequences, admit queued requests
 * while fewer than max_seqs run, build a step (one decode token per
 * generating sequence first, then prefill chunks with the remaining budget),
 * run it, sample a token for every sequence whose logits came back, publish
 * it to the request, and retire finished sequences. With nothing to do it
 * sleeps on a condition variable that pd_sched_submit signals. A request that
 * scores its prompt (prompt_logprobs) asks for logits at every prompt token:
 * each such row gives the log-probability of the next prompt token (in
 * double, into prompt_out), and the last one is sampled as usual, or ends a
 * request of max_tokens 0. */
#include "prefixd/scheduler.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "prefixd/log.h"

double pd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- requests ----------------------------------------------------------- */

int pd_request_create(const int32_t *prompt, int n_prompt, int max_tokens, pd_request **out,
                      pd_err *err)
{
    *out = NULL;
    if (n_prompt < 1) return pd_err_set(err, PD_EINVAL, "the prompt has no tokens");
    if (max_tokens < 0) return pd_err_set(err, PD_EINVAL, "max_tokens must not be negative");
    pd_request *rq = calloc(1, sizeof *rq);
    if (!rq) return pd_err_set(err, PD_ENOMEM, "out of memory for a request");
    rq->prompt = malloc((size_t)n_prompt * sizeof *rq->prompt);
    rq->out = malloc((size_t)(max_tokens > 0 ? max_tokens : 1) * sizeof *rq->out);
    /* the scores of the prompt: small next to the KV cache, and allocated
     * here so that the engine thread never allocates */
    rq->prompt_out = calloc((size_t)n_prompt, sizeof *rq->prompt_out);
    if (!rq->prompt || !rq->out || !rq->prompt_out) {
        free(rq->prompt);
        free(rq->out);
        free(rq->prompt_out);
        free(rq);
        return pd_err_set(err, PD_ENOMEM, "out of memory for a request of %d tokens", max_tokens);
    }
    memcpy(rq->prompt, prompt, (size_t)n_prompt * sizeof *rq->prompt);
    rq->n_prompt = n_prompt;
    rq->max_tokens = max_tokens;
    rq->sampling = pd_sampler_default_params();
    if (pthread_mutex_init(&rq->mu, NULL) != 0) {
        free(rq->prompt);
        free(rq->out);
        free(rq->prompt_out);
        free(rq);
        return pd_err_set(err, PD_ESYS, "pthread_mutex_init failed");
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&rq->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        pthread_mutex_destroy(&rq->mu);
        free(rq->prompt);
        free(rq->out);
        free(rq->prompt_out);
        free(rq);
        return pd_err_set(err, PD_ESYS, "pthread_cond_init failed");
    }
    atomic_init(&rq->refs, 1);
    atomic_init(&rq->cancel, 0);
    *out = rq;
    return PD_OK;
}

pd_request *pd_request_retain(pd_request *rq)
{
    atomic_fetch_add(&rq->refs, 1);
    return rq;
}

void pd_request_release(pd_request *rq)
{
    if (!rq || atomic_fetch_sub(&rq->refs, 1) != 1) return;
    pd_prefix_release(rq->prefix);
    pd_prefix_release(rq->built);
    pthread_mutex_destroy(&rq->mu);
    pthread_cond_destroy(&rq->cv);
    free(rq->prompt);
    free(rq->out);
    free(rq->prompt_out);
    free(rq);
}

void pd_request_cancel(pd_request *rq) { atomic_store(&rq->cancel, 1); }

int pd_request_wait(pd_request *rq, int seen, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms >= 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&rq->mu);
    while (rq->n_out <= seen && rq->state != PD_REQ_DONE) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&rq->cv, &rq->mu);
        } else if (pthread_cond_timedwait(&rq->cv, &rq->mu, &until) == ETIMEDOUT) {
            break;
        }
    }
    int n = rq->n_out;
    pthread_mutex_unlock(&rq->mu);
    return n;
}

/* ---- the scheduler ------------------------------------------------------ */

typedef struct slot {
    pd_request *rq;   /* the scheduler's reference */
    pd_seq *seq;
    pd_sampler sampler;
    int prefilled;    /* prompt tokens already in the cache */
    uint64_t owner;   /* prompt-cache owner (kvpool.h), 0: no prompt cache */
    int published;    /* blocks of the sequence published or found so far */
    int32_t next;     /* the token to feed next once prefilled */
} slot;

struct pd_sched {
    const pd_model *m;
    pd_sched_params p;
    pd_engine *e;
    pd_kvpool *pool;         /* every running sequence's KV blocks (engine thread) */
    pthread_t thread;
    pthread_mutex_t mu;      /* guards queue, stats, stopping */
    pthread_cond_t wake;     /* work arrived or stop */
    pd_request **queue;      /* ring of queue_limit */
    int q_head, q_len;
    int stopping;            /* 1: admit no more submissions */
    int stop_now;            /* 1: cancel everything and exit */
    pd_sched_stats stats;
    /* engine-thread state */
    slot *slots;             /* (max_seqs) */
    int n_running;
    int32_t *b_tokens, *b_pos;   /* (max_step_tokens) */
    pd_seq **b_seqs;
    uint8_t *b_want;
    int *b_slot;             /* slot index of each logits row */
    int *b_ppos;             /* (max_step_tokens) prompt position a logits row scores, or -1 */
    pd_sampler scratch;      /* the scratch every slot's sampler borrows (the engine
                                thread samples one sequence at a time) */
    int32_t *hit;            /* (max_hit) blocks of a prompt found in the prompt cache */
    int max_hit;             /* blocks of the model's context */
};

pd_sched_params pd_sched_default_params(void)
{
    pd_sched_params p = {64, 256, 1024, 0, 0, PD_KV_F32};
    return p;
}

static void publish_done(pd_request *rq, int finish, const char *error)
{
    pthread_mutex_lock(&rq->mu);
    rq->state = PD_REQ_DONE;
    rq->finish = finish;
    if (error && error != rq->error) snprintf(rq->error, sizeof rq->error, "%s", error);
    rq->t_done = pd_now();
    pthread_cond_broadcast(&rq->cv);
    pthread_mutex_unlock(&rq->mu);
}

/* Publishes the pool's counts in the stats. Called with s->mu held. */
static void pool_stats_locked(pd_sched *s)
{
    s->stats.kv_blocks_total = s->pool->n_blocks;
    s->stats.kv_blocks_used = pd_kvpool_used(s->pool);
    s->stats.kv_blocks_reserved = s->pool->n_reserved;
    s->stats.kv_blocks_cached = s->pool->n_lru;
    s->stats.cache_evictions = s->pool->evictions;
}

/* Frees the slot's sequence and drops the scheduler's request reference. */
static void retire(pd_sched *s, int i, int finish, const char *error)
{
    slot *sl = &s->slots[i];
    pd_request *rq = sl->rq;
    pd_seq_free(sl->seq);
    pd_sampler_release(&sl->sampler);
    s->slots[i] = s->slots[--s->n_running];
    /* stats first: whoever sees the request done also sees it counted */
    pthread_mutex_lock(&s->mu);
    s->stats.seqs_freed++;
    if (finish == PD_FINISH_REASON_CANCELLED) s->stats.cancelled++;
    s->stats.running = s->n_running;
    pool_stats_locked(s);
    pthread_mutex_unlock(&s->mu);
    publish_done(rq, finish, error);
    pd_request_release(rq);
}

/* Moves queued requests into free slots, in order, while the KV pool can
 * promise each one the blocks of its prompt + max_tokens; the first that
 * does not fit waits (and those behind it) until sequences finish. Called
 * with s->mu held. */
static void admit_locked(pd_sched *s)
{
    while (s->q_len > 0 && s->n_running < s->p.max_seqs) {
        pd_request *rq = s->queue[s->q_head];
        pd_err err;
        pd_seq *seq = NULL;
        /* the prompt cache: whole blocks, the last prompt token always prefilled */
        uint64_t owner = !rq->prefix ? PD_KV_OWNER_BASE : rq->prefix->content_id;
        int n_hit = 0;
        if (owner && !rq->prompt_logprobs)
            n_hit = pd_kvpool_match(s->pool, owner, rq->prompt, rq->n_prompt - 1, s->hit,
                                    s->max_hit);
        int rc = pd_seq_create_paged(s->m, s->pool, rq->n_prompt + rq->max_tokens, s->hit, n_hit,
                                     &seq, &err);
        if (rc == PD_EBUSY) break; /* waits for blocks */
        s->q_head = (s->q_head + 1) % s->p.queue_limit;
        s->q_len--;
        slot *sl = &s->slots[s->n_running];
        memset(sl, 0, sizeof *sl);
        sl->rq = rq;
        sl->seq = seq;
        sl->owner = owner;
        if (rc == PD_OK && (rc = pd_prefix_attach(sl->seq, rq->prefix, &err)) < 0)
            pd_seq_free(sl->seq);
        if (rc == PD_OK) {
            sl->prefilled = pd_seq_use_shared(sl->seq);
            sl->published = n_hit;
            rc = pd_sampler_init_borrowing(&sl->sampler, &s->scratch, &rq->sampling, &err);
            if (rc < 0) pd_seq_free(sl->seq);
        }
        if (rc < 0) {
            publish_done(rq, PD_FINISH_REASON_ERROR, err.msg);
            pd_request_release(rq);
            continue;
        }
        pthread_mutex_lock(&rq->mu);
        rq->state = PD_REQ_RUNNING;
        rq->cached_tokens = sl->prefilled;
        pthread_mutex_unlock(&rq->mu);
        s->n_running++;
        s->stats.prompt_tokens += (uint64_t)(rq->n_prompt - sl->prefilled);
        if (n_hit > 0) {
            s->stats.cache_hits++;
            s->stats.cache_tokens += (uint64_t)sl->prefilled;
        }
    }
    s->stats.queued = s->q_len;
    s->stats.running = s->n_running;
    pool_stats_locked(s);
}

/* Top-n log-probabilities of logits into o (n <= PD_TOP_LOGPROBS_MAX),
 * most likely first. */
static void top_logprobs(const float *logits, int V, int n, pd_token_out *o)
{
    double lse = pd_sampler_log_sum_exp(logits, V);
    int c = 0;
    for (int i = 0; i < V; i++) {
        int k;
        if (c < n) {
            k = c++;
        } else if (logits[i] > logits[o->top_ids[n - 1]]) {
            k = n - 1;
        } else {
            continue;
        }
        while (k > 0 && logits[i] > logits[o->top_ids[k - 1]]) {
            o->top_ids[k] = o->top_ids[k - 1];
            k--;
        }
        o->top_ids[k] = i;
    }
    o->n_top = c;
    for (int k = 0; k < c; k++) o->top_logprobs[k] = (float)((double)logits[o->top_ids[k]] - lse);
}

/* Publishes the sequence's blocks that its cache filled since the last
 * call (prompt tokens, then generated ones as they were fed). */
static void publish_blocks(pd_sched *s, slot *sl)
{
    if (!sl->owner) return;
    const pd_request *rq = sl->rq;
    const pd_seq *q = sl->seq;
    for (; (sl->published + 1) * PD_KV_BLOCK <= q->len; sl->published++) {
        const int b = sl->published, t0 = b * PD_KV_BLOCK;
        int32_t toks[PD_KV_BLOCK];
        for (int j = 0; j < PD_KV_BLOCK; j++) {
            const int t = t0 + j; /* entry t holds the prompt's token t, else generated t - n */
            toks[j] = t < rq->n_prompt ? rq->prompt[t] : rq->out[t - rq->n_prompt].id;
        }
        pd_kvpool_publish(s->pool, q->blocks[b], b ? q->blocks[b - 1] : -1, sl->owner, toks);
    }
}

static void engine_iteration(pd_sched *s)
{
    const int V = s->m->cfg.vocab_size;
    const int bos = pd_tokenizer_bos(s->m->tok);
    /* cancelled sequences leave first */
    for (int i = 0; i < s->n_running;) {
        if (atomic_load(&s->slots[i].rq->cancel))
            retire(s, i, PD_FINISH_REASON_CANCELLED, NULL);
        else
            i++;
    }
    /* decode tokens first (latency), then prefill chunks */
    int n = 0, budget = s->p.max_step_tokens;
    for (int i = 0; i < s->n_running && n < budget; i++) {
        slot *sl = &s->slots[i];
        if (sl->prefilled < sl->rq->n_prompt) continue;
        pd_seq_grow(sl->seq, sl->seq->len + 1);
        s->b_tokens[n] = sl->next;
        s->b_pos[n] = sl->seq->len;
        s->b_seqs[n] = sl->seq;
        s->b_want[n] = 1;
        n++;
    }
    const int n_decode = n;
    for (int i = 0; i < s->n_running && n < budget; i++) {
        slot *sl = &s->slots[i];
        int left = sl->rq->n_prompt - sl->prefilled;
        if (left <= 0) continue;
        int chunk = left < budget - n ? left : budget - n;
        pd_seq_grow(sl->seq, sl->prefilled + chunk);
        for (int j = 0; j < chunk; j++) {
            s->b_tokens[n] = sl->rq->prompt[sl->prefilled + j];
            s->b_pos[n] = sl->prefilled + j;
            s->b_seqs[n] = sl->seq;
            s->b_want[n] = sl->rq->prompt_logprobs ||
                           (sl->prefilled + j == sl->rq->n_prompt - 1);
            n++;
        }
    }
    if (n == 0) return;
    pd_batch b = {n, s->b_tokens, s->b_seqs, s->b_pos, s->b_want};
    const float *logits;
    pd_err err;
    int n_out = pd_engine_step(s->e, &b, &logits, &err);
    if (n_out < 0) {
        /* a bad batch is a scheduler bug: fail every running request loudly */
        PD_LOGE("engine step failed: %s", err.msg);
        while (s->n_running > 0) retire(s, 0, PD_FINISH_REASON_ERROR, err.msg);
        return;
    }
    /* map logits rows back to slots, in batch order; a prefill row before
     * the prompt's last token scores the next prompt token */
    int row = 0;
    for (int t = 0; t < n; t++) {
        if (!s->b_want[t]) continue;
        for (int i = 0; i < s->n_running; i++)
            if (s->slots[i].seq == s->b_seqs[t]) {
                s->b_slot[row] = i;
                break;
            }
        int last = s->slots[s->b_slot[row]].rq->n_prompt - 1;
        s->b_ppos[row] = t >= n_decode && s->b_pos[t] < last ? s->b_pos[t] : -1;
        row++;
    }
    /* prefill progress */
    for (int i = 0; i < s->n_running; i++) {
        slot *sl = &s->slots[i];
        if (sl->prefilled < sl->rq->n_prompt) sl->prefilled = sl->seq->len;
        publish_blocks(s, sl);
    }
    uint64_t generated = 0;
    /* sample; collect finished slots (retire from the highest index down so
     * indices of pending rows stay valid) */
    int finished[256], n_fin = 0, fin_reason[256];
    for (int r = 0; r < n_out; r++) {
        slot *sl = &s->slots[s->b_slot[r]];
        pd_request *rq = sl->rq;
        const float *lg = logits + (size_t)r * V;
        if (rq->build_prefix) { /* the prompt is in the cache: that is the prefix */
            pd_prefix *built = NULL;
            int rc = pd_prefix_from_cache(s->m, rq->build_task, sl->seq, rq->n_prompt,
                                          rq->prompt[0] == bos, &built, &err);
            pthread_mutex_lock(&rq->mu);
            rq->built = built;
            if (rc < 0) snprintf(rq->error, sizeof rq->error, "%s", err.msg);
            pthread_mutex_unlock(&rq->mu);
            if (n_fin < 256) {
                finished[n_fin] = s->b_slot[r];
                fin_reason[n_fin++] = rc < 0 ? PD_FINISH_REASON_ERROR : PD_FINISH_REASON_STOP;
            }
            continue;
        }
        if (s->b_ppos[r] >= 0) { /* scoring: log p(next prompt token) */
            pd_token_out *po = &rq->prompt_out[s->b_ppos[r] + 1];
            po->id = rq->prompt[s->b_ppos[r] + 1];
            po->logprob = (float)((double)lg[po->id] - pd_sampler_log_sum_exp(lg, V));
            if (rq->top_logprobs > 0) top_logprobs(lg, V, rq->top_logprobs, po);
            continue;
        }
        if (rq->max_tokens == 0) { /* scored, nothing to generate */
            if (n_fin < 256) {
                finished[n_fin] = s->b_slot[r];
                fin_reason[n_fin++] = PD_FINISH_REASON_LENGTH;
            }
            continue;
        }
        pd_token_out o;
        memset(&o, 0, sizeof o);
        const int want_logprob = rq->logprobs || rq->top_logprobs > 0;
        o.id = pd_sampler_sample(&sl->sampler, lg, want_logprob ? &o.logprob : NULL);
        if (!want_logprob) o.logprob = NAN;
        if (rq->top_logprobs > 0) top_logprobs(lg, V, rq->top_logprobs, &o);
        int finish = PD_FINISH_REASON_NONE;
        if (pd_tokenizer_is_eog(s->m->tok, o.id) || o.id == bos) {
            finish = PD_FINISH_REASON_STOP;
        } else {
            pthread_mutex_lock(&rq->mu);
            if (rq->n_out == 0) rq->t_first = pd_now();
            rq->out[rq->n_out++] = o;
            pthread_cond_broadcast(&rq->cv);
            int count = rq->n_out;
            pthread_mutex_unlock(&rq->mu);
            generated++;
            sl->next = o.id;
            if (count >= rq->max_tokens || sl->seq->len >= sl->seq->cap)
                finish = PD_FINISH_REASON_LENGTH;
        }
        if (finish != PD_FINISH_REASON_NONE && n_fin < 256) {
            finished[n_fin] = s->b_slot[r];
            fin_reason[n_fin++] = finish;
        }
    }
    /* retire in descending slot order: retire() moves the last slot down */
    for (int a = 0; a < n_fin; a++)
        for (int c = a + 1; c < n_fin; c++)
            if (finished[c] > finished[a]) {
                int t = finished[a]; finished[a] = finished[c]; finished[c] = t;
                t = fin_reason[a]; fin_reason[a] = fin_reason[c]; fin_reason[c] = t;
            }
    for (int a = 0; a < n_fin; a++)
        retire(s, finished[a], fin_reason[a],
               fin_reason[a] == PD_FINISH_REASON_ERROR ? s->slots[finished[a]].rq->error : NULL);

    pthread_mutex_lock(&s->mu);
    s->stats.steps++;
    s->stats.step_tokens += (uint64_t)n;
    s->stats.tokens_generated += generated;
    int bin = 0;
    while (bin < 7 && n > (1 << bin)) bin++;
    s->stats.batch_hist[bin]++;
    pool_stats_locked(s);
    pthread_mutex_unlock(&s->mu);
}

static void *engine_main(void *arg)
{
    pd_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop_now && s->q_len == 0 && s->n_running == 0 && !s->stopping)
            pthread_cond_wait(&s->wake, &s->mu);
        if (s->stopping && s->q_len == 0 && s->n_running == 0) s->stop_now = 1;
        if (s->stop_now) {
            /* cancel whatever is left */
            while (s->q_len > 0) {
                pd_request *rq = s->queue[s->q_head];
                s->q_head = (s->q_head + 1) % s->p.queue_limit;
                s->q_len--;
                publish_done(rq, PD_FINISH_REASON_CANCELLED, "the server is shutting down");
                pd_request_release(rq);
            }
            pthread_mutex_unlock(&s->mu);
            while (s->n_running > 0)
                retire(s, 0, PD_FINISH_REASON_CANCELLED, "the server is shutting down");
            return NULL;
        }
        admit_locked(s);
        pthread_mutex_unlock(&s->mu);
        engine_iteration(s);
    }
}

/* Frees the engine, the buffers and s (the thread is not running). */
static void release_memory(pd_sched *s)
{
    pd_engine_free(s->e);
    pd_kvpool_free(s->pool);
    free(s->queue);
    free(s->slots);
    free(s->b_tokens);
    free(s->b_pos);
    free(s->b_seqs);
    free(s->b_want);
    free(s->b_slot);
    free(s->b_ppos);
    free(s->hit);
    pd_sampler_release(&s->scratch);
    free(s);
}

int pd_sched_create(const pd_model *m, const pd_sched_params *p, pd_sched **out, pd_err *err)
{
    *out = NULL;
    pd_sched_params dp = pd_sched_default_params();
    if (!p) p = &dp;
    if (p->max_seqs < 1 || p->max_seqs > 256 || p->max_step_tokens < 1 ||
        p->max_step_tokens > 65536 || p->queue_limit < 1 || p->queue_limit > 1000000)
        return pd_err_set(err, PD_EINVAL,
                          "scheduler limits out of range: max_seqs %d (1..256), max_step_tokens "
                          "%d (1..65536), queue_limit %d (1..1000000)",
                          p->max_seqs, p->max_step_tokens, p->queue_limit);
    pd_sched *s = calloc(1, sizeof *s);
    if (!s) return pd_err_set(err, PD_ENOMEM, "out of memory for the scheduler");
    s->m = m;
    s->p = *p;
    if (s->p.max_step_tokens < s->p.max_seqs) s->p.max_step_tokens = s->p.max_seqs;
    int T = s->p.max_step_tokens;
    s->queue = calloc((size_t)s->p.queue_limit, sizeof *s->queue);
    s->slots = calloc((size_t)s->p.max_seqs, sizeof *s->slots);
    s->b_tokens = malloc((size_t)T * sizeof *s->b_tokens);
    s->b_pos = malloc((size_t)T * sizeof *s->b_pos);
    s->b_seqs = malloc((size_t)T * sizeof *s->b_seqs);
    s->b_want = malloc((size_t)T);
    s->b_slot = malloc((size_t)T * sizeof *s->b_slot);
    s->b_ppos = malloc((size_t)T * sizeof *s->b_ppos);
    s->max_hit = pd_kvpool_blocks_for(m->cfg.seq_len);
    s->hit = malloc((size_t)s->max_hit * sizeof *s->hit);
    int rc = PD_OK;
    if (!s->queue || !s->slots || !s->b_tokens || !s->b_pos || !s->b_seqs || !s->b_want ||
        !s->b_slot || !s->b_ppos || !s->hit)
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the scheduler");
    const pd_sampler_params sdp = pd_sampler_default_params();
    if (rc == PD_OK) rc = pd_sampler_init(&s->scratch, m->cfg.vocab_size, &sdp, err);
    pd_engine_params ep = pd_engine_default_params();
    ep.max_tokens = T;
    ep.n_threads = p->n_threads;
    ep.kv_dtype = p->kv_dtype;
    if (rc == PD_OK) rc = pd_engine_create(m, &ep, &s->e, err);
    if (rc == PD_OK) {
        size_t budget = p->kv_budget;
        if (budget == 0) { /* derived: see pd_sched_params */
            const size_t one = (size_t)pd_kvpool_blocks_for(m->cfg.seq_len) *
                               pd_kvpool_block_bytes_as(m, p->kv_dtype);
            budget = (size_t)s->p.max_seqs * one;
            long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
            if (pages > 0 && psz > 0 && budget > (size_t)pages * (size_t)psz / 4)
                budget = (size_t)pages * (size_t)psz / 4;
            if (budget > ((size_t)1 << 30)) budget = (size_t)1 << 30;
            if (budget < one) budget = one;
        }
        rc = pd_kvpool_create_as(m, p->kv_dtype, budget, &s->pool, err);
    }
    if (rc == PD_OK) {
        s->stats.kv_blocks_total = s->pool->n_blocks;
        s->stats.kv_block_bytes = pd_kvpool_block_bytes_as(m, p->kv_dtype);
        s->stats.kv_dtype = p->kv_dtype;
    }
    if (rc == PD_OK) {
        pthread_mutex_init(&s->mu, NULL);
        pthread_cond_init(&s->wake, NULL);
        if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
            pthread_mutex_destroy(&s->mu);
            pthread_cond_destroy(&s->wake);
            rc = pd_err_set(err, PD_ESYS, "cannot start the engine thread");
        }
    }
    if (rc < 0) {
        release_memory(s);
        return rc;
    }
    *out = s;
    return PD_OK;
}

void pd_sched_free(pd_sched *s, int grace_ms)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->mu);
    double deadline = pd_now() + (grace_ms > 0 ? grace_ms / 1000.0 : 0.0);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int busy = s->q_len > 0 || s->stats.running > 0;
        if (!busy || pd_now() >= deadline) {
            s->stop_now = 1;
            pthread_cond_broadcast(&s->wake);
            pthread_mutex_unlock(&s->mu);
            break;
        }
        pthread_mutex_unlock(&s->mu);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    release_memory(s);
}

int pd_sched_submit(pd_sched *s, pd_request *rq, pd_err *err)
{
    const pd_config *c = &s->m->cfg;
    int P = rq->prefix ? rq->prefix->n_tokens : 0;
    long need = (long)P + rq->n_prompt + rq->max_tokens;
    if (need > c->seq_len)
        return pd_err_set(err, PD_EINVAL,
                          "this request needs %ld tokens of context (prefix %d + prompt %d + "
                          "max_tokens %d) but the model's context is %d; shorten the prompt or "
                          "lower max_tokens",
                          need, P, rq->n_prompt, rq->max_tokens, c->seq_len);
    for (int i = 0; i < rq->n_prompt; i++)
        if (rq->prompt[i] < 0 || rq->prompt[i] >= c->vocab_size)
            return pd_err_set(err, PD_EINVAL, "prompt token %d (id %d) is outside the vocabulary",
                              i, rq->prompt[i]);
    if (rq->build_prefix && (rq->prefix || !pd_task_name_valid(rq->build_task)))
        return pd_err_set(err, PD_EINVAL, "a prefix build needs a valid task name and no prefix");
    if (rq->max_tokens < (rq->prompt_logprobs || rq->build_prefix ? 0 : 1))
        return pd_err_set(err, PD_EINVAL, "max_tokens %d: at least 1 unless the prompt is only "
                          "scored (prompt_logprobs)", rq->max_tokens);
    /* n_blocks never changes: read without the engine thread */
    const int nb = pd_kvpool_blocks_for(rq->n_prompt + rq->max_tokens);
    if (nb > s->pool->n_blocks)
        return pd_err_set(err, PD_EINVAL,
                          "this request needs %d tokens of KV cache (prompt %d + max_tokens %d) "
                          "but the KV budget holds %d; shorten the prompt or lower max_tokens",
                          nb * PD_KV_BLOCK, rq->n_prompt, rq->max_tokens,
                          s->pool->n_blocks * PD_KV_BLOCK);
    if (rq->top_logprobs < 0 || rq->top_logprobs > PD_TOP_LOGPROBS_MAX)
        return pd_err_set(err, PD_EINVAL, "top logprobs %d outside [0, %d]", rq->top_logprobs,
                          PD_TOP_LOGPROBS_MAX);
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return pd_err_set(err, PD_ECANCELLED, "the server is shutting down");
    }
    if (s->q_len >= s->p.queue_limit) {
        pthread_mutex_unlock(&s->mu);
        return pd_err_set(err, PD_EBUSY, "the queue is full (%d waiting); retry later",
                          s->p.queue_limit);
    }
    rq->t_submit = pd_now();
    s->queue[(s->q_head + s->q_len) % s->p.queue_limit] = pd_request_retain(rq);
    s->q_len++;
    s->stats.queued = s->q_len;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    return PD_OK;
}

void pd_sched_stats_get(pd_sched *s, pd_sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->mu);
}
