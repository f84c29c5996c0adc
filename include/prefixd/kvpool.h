/* prefixd/kvpool.h — one pool of fixed-size KV cache blocks under a byte
 * budget, from which paged sequences (engine.h) take their cache, and the
 * prompt cache that shares full blocks by content.
 *
 * A block holds PD_KV_BLOCK consecutive tokens of one sequence for every
 * layer: keys (n_layers, PD_KV_BLOCK, kv_dim) then values (same shape), so
 * a sequence's cache entry e of layer l lives in its block table entry
 * e / PD_KV_BLOCK at row l * PD_KV_BLOCK + e % PD_KV_BLOCK. The pool is one
 * allocation of n_blocks blocks (untouched blocks cost no resident memory;
 * the free list is last-in first-out, so the blocks in use stay few and
 * warm).
 *
 * Reservation: a paged sequence reserves, when it is created, the blocks of
 * its whole capacity (prompt + max_tokens) that it does not share, and
 * takes them one by one as it grows, so a running sequence never finds the
 * pool empty (no preemption); a sequence that cannot reserve waits (the
 * scheduler keeps it queued).
 *
 * Prompt cache: a full block can be published under its content: the
 * owner (the identity of the prefix the sequence attends to: a content
 * hash of the prefix's keys and values, or PD_KV_OWNER_BASE), the block
 * before it in the sequence (so the key covers every token id from the
 * start) and its own PD_KV_BLOCK token ids. A published block is shared
 * read-only by every sequence whose tokens match (pd_kvpool_match compares
 * owner, chain and token ids exactly; hashes only find candidates), and is
 * kept after its last holder ends, in an LRU inside the same pool: a block
 * is taken from the free list first, else the least recently released
 * cached block is evicted. The KV of a token depends only on the owner and
 * the token ids up to it (the engine's batch invariance), so a shared block
 * holds the very bits the sequence would have computed.
 *
 * Storage type: a pool holds floats (PD_KV_F32) or IEEE halves (PD_KV_F16,
 * as llama.cpp's default cache type): keys and values rounded to nearest
 * even as the engine writes them, widened exactly as attention reads them
 * (attention.h). Halves are half the bytes per block, so a budget holds
 * twice the tokens. Everything above is the same for both.
 *
 * Threads: a pool is used by one thread at a time (the scheduler's engine
 * thread). */
#ifndef PREFIXD_KVPOOL_H
#define PREFIXD_KVPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tokens per block (a power of two). */
#define PD_KV_BLOCK_SHIFT 4
#define PD_KV_BLOCK (1 << PD_KV_BLOCK_SHIFT)

/* The owner of sequences without a prefix (prefix owners are nonzero
 * content hashes, never this value). */
#define PD_KV_OWNER_BASE UINT64_C(0x62617365)

/* How KV cache entries (and resident prefixes, registry.h) are stored. */
typedef enum pd_kv_dtype {
    PD_KV_F32 = 0, /* floats */
    PD_KV_F16 = 1, /* IEEE halves (uint16_t), rounded to nearest even */
} pd_kv_dtype;

/* Bytes of one element of dtype. */
static inline size_t pd_kv_dtype_size(pd_kv_dtype dt) { return dt == PD_KV_F16 ? 2 : 4; }

/* "f32" or "f16". */
static inline const char *pd_kv_dtype_name(pd_kv_dtype dt) { return dt == PD_KV_F16 ? "f16" : "f32"; }

typedef struct pd_kvpool {
    void *data;          /* (n_blocks, 2, n_layers, PD_KV_BLOCK, kv_dim) elements of dtype (owned) */
    pd_kv_dtype dtype;
    size_t block_elems;  /* 2 * n_layers * PD_KV_BLOCK * kv_dim */
    size_t v_offset;     /* elements from a block's keys to its values */
    int n_blocks;        /* blocks in the pool */
    int32_t *free_list;  /* (n_blocks) blocks held by nobody and cached by nobody */
    int n_free;
    int n_reserved;      /* blocks promised to sequences and not yet taken */
    /* per block (all owned, n_blocks entries) */
    int32_t *refs;       /* sequences holding the block */
    uint8_t *cached;     /* 1: published (findable by content) */
    uint64_t *key;       /* chain hash of a published block */
    uint64_t *owner;     /* its owner */
    int32_t *parent;     /* the published block before it, -1 for a sequence's first */
    uint32_t *gen;       /* publications of this block id (a parent link names id + gen) */
    uint32_t *parent_gen;
    int32_t *toks;       /* (n_blocks, PD_KV_BLOCK) its token ids */
    int32_t *chain;      /* next block in the same hash bucket, -1 */
    int32_t *lru_prev, *lru_next; /* published blocks nobody holds, oldest first */
    int32_t *buckets;    /* (n_buckets) first block of each bucket, -1 */
    int n_buckets;       /* a power of two */
    int lru_head, lru_tail, n_lru;
    uint64_t evictions;  /* published blocks reused for other content */
} pd_kvpool;

/* Bytes of one block for model m: F32 (pd_kvpool_block_bytes_as: dtype). */
size_t pd_kvpool_block_bytes(const pd_model *m);
size_t pd_kvpool_block_bytes_as(const pd_model *m, pd_kv_dtype dtype);

/* Creates a pool of floor(budget_bytes / block bytes) blocks of dtype for
 * model m (pd_kvpool_create: F32). PD_EINVAL when that is fewer than one
 * block (err names the budget and the block size); PD_ENOMEM. Free with
 * pd_kvpool_free. */
int pd_kvpool_create(const pd_model *m, size_t budget_bytes, pd_kvpool **out, pd_err *err);
int pd_kvpool_create_as(const pd_model *m, pd_kv_dtype dtype, size_t budget_bytes,
                        pd_kvpool **out, pd_err *err);
void pd_kvpool_free(pd_kvpool *p);

/* Blocks that a sequence of n tokens needs. */
static inline int pd_kvpool_blocks_for(int n_tokens)
{
    return (n_tokens + PD_KV_BLOCK - 1) >> PD_KV_BLOCK_SHIFT;
}

/* Blocks a new reservation may take: free ones and cached ones nobody
 * holds, less those already promised. */
static inline int pd_kvpool_available(const pd_kvpool *p)
{
    return p->n_free + p->n_lru - p->n_reserved;
}

/* Blocks held by at least one sequence. */
static inline int pd_kvpool_used(const pd_kvpool *p) { return p->n_blocks - p->n_free - p->n_lru; }

/* Promises n blocks; PD_OK, or PD_EBUSY when fewer are available. */
int pd_kvpool_reserve(pd_kvpool *p, int n);

/* Gives back n promised blocks that were never taken. */
void pd_kvpool_unreserve(pd_kvpool *p, int n);

/* Takes one promised block (a reservation must be outstanding): a free
 * one, else the least recently released cached one (evicted). The caller
 * holds it (refs 1). */
int32_t pd_kvpool_take(pd_kvpool *p);

/* Holds a published block found by pd_kvpool_match (refs + 1; out of the
 * LRU). Check pd_kvpool_pin_cost first: pinning an unheld block makes it
 * unavailable. */
void pd_kvpool_pin(pd_kvpool *p, int32_t id);

/* 1 when block id is held by nobody (pinning it takes one available block). */
static inline int pd_kvpool_pin_cost(const pd_kvpool *p, int32_t id) { return p->refs[id] == 0; }

/* Drops one hold of block id: at zero holders a published block joins the
 * LRU (most recent), any other goes back to the free list. */
void pd_kvpool_release(pd_kvpool *p, int32_t id);

/* The longest run of published blocks matching tokens[0..n_tokens) from
 * the start under owner, at most max blocks: their ids into out, returns
 * the count. Holds nothing. */
int pd_kvpool_match(const pd_kvpool *p, uint64_t owner, const int32_t *tokens, int n_tokens,
                    int32_t *out, int max);

/* Publishes full block id (held by the caller) whose PD_KV_BLOCK token ids
 * are toks and whose sequence's previous block is parent (a published
 * block, or -1 for the first). Returns 1 when published, 0 when it already
 * is, when an equal block is (this one stays private) or when parent is
 * not published. */
int pd_kvpool_publish(pd_kvpool *p, int32_t id, int32_t parent, uint64_t owner,
                      const int32_t *toks);

/* 64-bit FNV-1a-style hash of n bytes, continuing h (content identities). */
uint64_t pd_kvpool_hash(uint64_t h, const void *data, size_t n);

/* Keys of block id (layer 0, row 0), elements of p->dtype; the values
 * follow v_offset elements later. */
static inline void *pd_kvpool_block(const pd_kvpool *p, int32_t id)
{
    return (char *)p->data + (size_t)id * p->block_elems * pd_kv_dtype_size(p->dtype);
}

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_KVPOOL_H */
