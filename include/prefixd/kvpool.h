/* prefixd/kvpool.h — one pool of fixed-size KV cache blocks under a byte
 * budget, from which paged sequences (engine.h) take their cache.
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
 * its whole capacity (prompt + max_tokens) and takes them one by one as it
 * grows, so a running sequence never finds the pool empty (no preemption);
 * a sequence that cannot reserve waits (the scheduler keeps it queued).
 *
 * Threads: a pool is used by one thread at a time (the scheduler's engine
 * thread); its counters are plain ints read by that thread. */
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

typedef struct pd_kvpool {
    float *data;        /* (n_blocks, 2, n_layers, PD_KV_BLOCK, kv_dim) (owned) */
    size_t block_floats; /* 2 * n_layers * PD_KV_BLOCK * kv_dim */
    size_t v_offset;     /* floats from a block's keys to its values */
    int n_blocks;       /* blocks in the pool */
    int32_t *free_list; /* (n_blocks) ids of free blocks, the top at n_free - 1 */
    int n_free;         /* blocks not held by any sequence */
    int n_reserved;     /* blocks promised to sequences and not yet taken */
} pd_kvpool;

/* Bytes of one block for model m. */
size_t pd_kvpool_block_bytes(const pd_model *m);

/* Creates a pool of floor(budget_bytes / block bytes) blocks for model m.
 * PD_EINVAL when that is fewer than one block (err names the budget and
 * the block size); PD_ENOMEM. Free with pd_kvpool_free. */
int pd_kvpool_create(const pd_model *m, size_t budget_bytes, pd_kvpool **out, pd_err *err);
void pd_kvpool_free(pd_kvpool *p);

/* Blocks that a sequence of n tokens needs. */
static inline int pd_kvpool_blocks_for(int n_tokens)
{
    return (n_tokens + PD_KV_BLOCK - 1) >> PD_KV_BLOCK_SHIFT;
}

/* Blocks neither held nor promised: what a new reservation may take. */
static inline int pd_kvpool_available(const pd_kvpool *p) { return p->n_free - p->n_reserved; }

/* Promises n blocks; 0 on success, PD_EBUSY when fewer are available. */
int pd_kvpool_reserve(pd_kvpool *p, int n);

/* Gives back n promised blocks that were never taken. */
void pd_kvpool_unreserve(pd_kvpool *p, int n);

/* Takes one promised block (a reservation of at least one must be
 * outstanding) and returns its id. */
int32_t pd_kvpool_take(pd_kvpool *p);

/* Returns block id to the free list. */
void pd_kvpool_put(pd_kvpool *p, int32_t id);

/* Keys of block id (layer 0, row 0); the values follow at + v_offset. */
static inline float *pd_kvpool_block(const pd_kvpool *p, int32_t id)
{
    return p->data + (size_t)id * p->block_floats;
}

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_KVPOOL_H */
