/* prefixd/engine.h — the batched forward step of the frozen base model.
 *
 * One call of pd_engine_step() runs one forward pass over a batch of tokens
 * taken from any number of sequences: prefill chunks of new sequences and the
 * next token of running ones, mixed. Every weight matmul is done once for all
 * tokens of the step (pd_matmul, [T, in] x [out, in]^T); attention is per
 * token over its own sequence's prefix slots and KV cache. The products are
 * batch-invariant (prefixd/matmul.h): a sequence's logits are the same bits
 * whatever else shares its step.
 *
 * KV storage: a sequence's cache entries and the prefix it attends to are
 * floats (PD_KV_F32) or IEEE halves (PD_KV_F16, kvpool.h): keys and values
 * are rounded to nearest even when the step writes them and widened
 * exactly when attention reads them; everything else stays F32. Every
 * exactness property (batch invariance, paged == contiguous, prompt-built
 * prefix == prompt, prompt cache hit == miss) holds within one dtype.
 *
 * Sequences (pd_seq) own their KV cache and are owned by one thread (the
 * scheduler's). A sequence may carry a prefix: per layer, P key and P value
 * vectors per kv head ([n_layers][n_kv_heads][P][head_dim], borrowed, shared
 * read-only between sequences). Prefix semantics (ARCHITECTURE.md):
 *   - prefix keys get no rotary embedding;
 *   - the token at cache index i sits at rotary position P + i;
 *   - every token attends to all P prefix slots, then causally to cache
 *     entries 0..i of its own sequence.
 *
 * All scratch is allocated once by pd_engine_create() for at most
 * max_tokens tokens per step: pd_engine_step() never allocates. An engine is
 * used by one thread at a time.
 */
#ifndef PREFIXD_ENGINE_H
#define PREFIXD_ENGINE_H

#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/kvpool.h"
#include "prefixd/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_seq {
    pd_kv_dtype dtype; /* of the cache entries and of prefix_k/prefix_v */
    /* contiguous storage (pd_seq_create), NULL when paged: */
    void *k_cache;   /* (n_layers, cap, kv_dim) elements of dtype, rotary applied (owned) */
    void *v_cache;   /* (n_layers, cap, kv_dim) (owned) */
    /* paged storage (pd_seq_create_paged), NULL when contiguous: */
    struct pd_kvpool *pool; /* borrowed; outlives the sequence */
    int32_t *blocks; /* (blocks_for(cap)) block ids, the first n_blocks taken (owned) */
    int n_blocks;    /* blocks held: the n_shared first are shared (read-only) */
    int n_shared;    /* blocks found in the prompt cache at creation */
    int n_reserved;  /* blocks still promised to this sequence by the pool */
    int cap;         /* capacity in tokens */
    int kv_dim;      /* the model's kv_dim (elements per cache entry and layer) */
    int n_layers;    /* the model's */
    int len;         /* tokens in the cache (real tokens, not prefix slots) */
    int n_prefix;    /* P, 0 when none */
    const void *prefix_k; /* (n_layers, n_kv_heads, P, head_dim) of dtype: borrowed or prefix_own */
    const void *prefix_v; /* (n_layers, n_kv_heads, P, head_dim) */
    void *prefix_own;      /* a prefix converted to dtype (owned), NULL */
} pd_seq;

/* Allocates a sequence whose cache holds cap tokens, F32 (pd_seq_create)
 * or dtype. Returns PD_OK, or PD_ENOMEM / PD_EINVAL (cap < 1 or cap + P
 * later exceeding the model's context is checked at pd_engine_step time).
 * Free with pd_seq_free. */
int pd_seq_create(const pd_model *m, int cap, pd_seq **out, pd_err *err);
int pd_seq_create_as(const pd_model *m, int cap, pd_kv_dtype dtype, pd_seq **out, pd_err *err);
void pd_seq_free(pd_seq *s);

/* Allocates a paged sequence of capacity cap whose cache lives in blocks of
 * pool (kvpool.h, borrowed: it must outlive the sequence). Its first
 * n_shared blocks are the published blocks shared[] (from
 * pd_kvpool_match; held, never written), so it starts with
 * n_shared * PD_KV_BLOCK cache entries (after pd_seq_set_prefix, set len
 * with pd_seq_use_shared); the rest of the capacity is reserved now and
 * taken as it grows (pd_seq_grow). Every block goes back to the pool at
 * pd_seq_free. PD_EBUSY when the pool cannot promise them (nothing
 * allocated or held), PD_EINVAL, PD_ENOMEM. The engine reads and writes a
 * paged sequence with the same float operations, in the same order, as a
 * contiguous one: the logits are the same bits. The cache's dtype is the
 * pool's. */
int pd_seq_create_paged(const pd_model *m, struct pd_kvpool *pool, int cap,
                        const int32_t *shared, int n_shared, pd_seq **out, pd_err *err);

/* Sets len to the entries of the shared blocks (after pd_seq_set_prefix,
 * which empties the cache); returns it. */
int pd_seq_use_shared(pd_seq *s);

/* Makes room for cache entries [0, n_tokens) (n_tokens <= cap): takes
 * reserved blocks from the pool as needed. Contiguous sequences always
 * have room. Never fails (the blocks were reserved). */
void pd_seq_grow(pd_seq *s, int n_tokens);

/* Cache entry pos (< the room made) of layer l as kv_dim floats into out:
 * the keys (values = 0, rotary applied) or the values; halves widened. */
void pd_seq_read(const pd_seq *s, int l, int pos, int values, float *out);

/* Points the sequence at a prefix of floats (pd_seq_set_prefix) or halves
 * (pd_seq_set_prefix_f16) and empties the cache; NULL keys/values with
 * P = 0 clears it. A prefix of the cache's dtype is borrowed (the caller
 * keeps it alive while the sequence uses it); another is converted once
 * into the sequence's own copy (floats rounded to halves as the cache
 * rounds its entries, or halves widened), which can fail with PD_ENOMEM
 * (the sequence is then left without a prefix). */
int pd_seq_set_prefix(pd_seq *s, int n_prefix, const float *prefix_k,
                      const float *prefix_v);
int pd_seq_set_prefix_f16(pd_seq *s, int n_prefix, const uint16_t *prefix_k,
                          const uint16_t *prefix_v, pd_err *err);

/* Empties the cache (keeps the prefix and any blocks taken). */
void pd_seq_reset(pd_seq *s);

typedef struct pd_engine pd_engine;

typedef struct pd_engine_params {
    int max_tokens; /* tokens per step at most (default 256) */
    int n_threads;  /* threads for the step's loops; <= 0: online CPUs (default) */
    pd_kv_dtype kv_dtype; /* of the sequences built for it (pd_engine_kv_dtype; default F32) */
} pd_engine_params;

pd_engine_params pd_engine_default_params(void);

/* Creates an engine for model m (borrowed: must outlive the engine) that runs
 * at most params->max_tokens tokens per step (params NULL: defaults), with
 * its own thread pool. */
int pd_engine_create(const pd_model *m, const pd_engine_params *params,
                     pd_engine **out, pd_err *err);
void pd_engine_free(pd_engine *e);
int pd_engine_max_tokens(const pd_engine *e);

/* The KV dtype of its params: the one pd_prefix_from_tokens and the
 * scheduler give the sequences they make for it. The step itself runs
 * sequences of either dtype. */
pd_kv_dtype pd_engine_kv_dtype(const pd_engine *e);

typedef struct pd_batch {
    int n;                 /* tokens in this step, 1..max_tokens */
    const int32_t *tokens; /* (n) token ids */
    pd_seq *const *seqs;   /* (n) the sequence of each token */
    const int32_t *pos;    /* (n) cache index of each token in its sequence */
    const uint8_t *want_logits; /* (n) 1: return logits for this token; NULL: all */
} pd_batch;

/* Runs one forward step. Within one sequence the tokens of a step must have
 * consecutive cache indices, in order, starting at or before seq->len (an
 * index below len overwrites and truncates); each pos + 1 <= cap (a paged
 * sequence: within the room pd_seq_grow made). Writes
 * each token's K/V into its cache and sets seq->len to its last pos + 1.
 * On success *logits points at (n_out, vocab_size) floats, one row per token
 * with want_logits set, in batch order (engine-owned, valid until the next
 * step); returns n_out. Returns PD_EINVAL (err says which token) on a bad
 * batch, without touching any cache. */
int pd_engine_step(pd_engine *e, const pd_batch *b, const float **logits,
                   pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_ENGINE_H */
