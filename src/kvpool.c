/* kvpool.c — the pool of KV cache blocks and the prompt cache over it
 * (contract in prefixd/kvpool.h). */
#include "prefixd/kvpool.h"

#include <stdlib.h>
#include <string.h>

size_t pd_kvpool_block_bytes_as(const pd_model *m, pd_kv_dtype dtype)
{
    return 2 * (size_t)m->cfg.n_layers * PD_KV_BLOCK * (size_t)m->cfg.kv_dim *
           pd_kv_dtype_size(dtype);
}

size_t pd_kvpool_block_bytes(const pd_model *m) { return pd_kvpool_block_bytes_as(m, PD_KV_F32); }

uint64_t pd_kvpool_hash(uint64_t h, const void *data, size_t n)
{
    const unsigned char *b = data;
    const uint64_t prime = UINT64_C(0x100000001b3);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * prime;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ b[i]) * prime;
    h ^= h >> 32;
    h *= UINT64_C(0xd6e8feb86659fd93);
    return h ^ (h >> 32);
}

int pd_kvpool_create(const pd_model *m, size_t budget_bytes, pd_kvpool **out, pd_err *err)
{
    return pd_kvpool_create_as(m, PD_KV_F32, budget_bytes, out, err);
}

int pd_kvpool_create_as(const pd_model *m, pd_kv_dtype dtype, size_t budget_bytes,
                        pd_kvpool **out, pd_err *err)
{
    *out = NULL;
    PD_ASSERT(dtype == PD_KV_F32 || dtype == PD_KV_F16);
    const size_t bb = pd_kvpool_block_bytes_as(m, dtype);
    const size_t n = budget_bytes / bb;
    if (n < 1)
        return pd_err_set(err, PD_EINVAL,
                          "KV budget of %zu bytes holds no block (a block of %d tokens is %zu "
                          "bytes for this model in %s)",
                          budget_bytes, PD_KV_BLOCK, bb, pd_kv_dtype_name(dtype));
    if (n > (1u << 28))
        return pd_err_set(err, PD_EINVAL, "KV budget of %zu bytes is %zu blocks, too many",
                          budget_bytes, n);
    pd_kvpool *p = calloc(1, sizeof *p);
    if (!p) return pd_err_set(err, PD_ENOMEM, "out of memory for the KV pool");
    p->dtype = dtype;
    p->block_elems = bb / pd_kv_dtype_size(dtype);
    p->v_offset = p->block_elems / 2;
    p->n_blocks = (int)n;
    p->n_buckets = 1;
    while ((size_t)p->n_buckets < 2 * n) p->n_buckets *= 2;
    p->data = aligned_alloc(64, n * bb); /* bb is a multiple of 64 (PD_KV_BLOCK * 2 * 2) */
    p->free_list = malloc(n * sizeof *p->free_list);
    p->refs = calloc(n, sizeof *p->refs);
    p->cached = calloc(n, 1);
    p->key = calloc(n, sizeof *p->key);
    p->owner = calloc(n, sizeof *p->owner);
    p->parent = malloc(n * sizeof *p->parent);
    p->gen = calloc(n, sizeof *p->gen);
    p->parent_gen = calloc(n, sizeof *p->parent_gen);
    p->toks = malloc(n * PD_KV_BLOCK * sizeof *p->toks);
    p->chain = malloc(n * sizeof *p->chain);
    p->lru_prev = malloc(n * sizeof *p->lru_prev);
    p->lru_next = malloc(n * sizeof *p->lru_next);
    p->buckets = malloc((size_t)p->n_buckets * sizeof *p->buckets);
    if (!p->data || !p->free_list || !p->refs || !p->cached || !p->key || !p->owner ||
        !p->parent || !p->gen || !p->parent_gen || !p->toks || !p->chain || !p->lru_prev ||
        !p->lru_next || !p->buckets) {
        pd_kvpool_free(p);
        return pd_err_set(err, PD_ENOMEM, "out of memory for a KV pool of %zu MiB",
                          (n * bb) >> 20);
    }
    /* block 0 on top: the first sequences use the low blocks */
    for (int i = 0; i < p->n_blocks; i++) p->free_list[i] = p->n_blocks - 1 - i;
    p->n_free = p->n_blocks;
    for (int i = 0; i < p->n_buckets; i++) p->buckets[i] = -1;
    p->lru_head = p->lru_tail = -1;
    *out = p;
    return PD_OK;
}

void pd_kvpool_free(pd_kvpool *p)
{
    if (!p) return;
    free(p->data);
    free(p->free_list);
    free(p->refs);
    free(p->cached);
    free(p->key);
    free(p->owner);
    free(p->parent);
    free(p->gen);
    free(p->parent_gen);
    free(p->toks);
    free(p->chain);
    free(p->lru_prev);
    free(p->lru_next);
    free(p->buckets);
    free(p);
}

int pd_kvpool_reserve(pd_kvpool *p, int n)
{
    PD_ASSERT(n >= 0);
    if (n > pd_kvpool_available(p)) return PD_EBUSY;
    p->n_reserved += n;
    return PD_OK;
}

void pd_kvpool_unreserve(pd_kvpool *p, int n)
{
    PD_ASSERT(n >= 0 && n <= p->n_reserved);
    p->n_reserved -= n;
}

static void lru_unlink(pd_kvpool *p, int32_t id)
{
    const int32_t a = p->lru_prev[id], b = p->lru_next[id];
    if (a >= 0) p->lru_next[a] = b; else p->lru_head = b;
    if (b >= 0) p->lru_prev[b] = a; else p->lru_tail = a;
    p->n_lru--;
}

static void lru_push(pd_kvpool *p, int32_t id)
{
    p->lru_prev[id] = p->lru_tail;
    p->lru_next[id] = -1;
    if (p->lru_tail >= 0) p->lru_next[p->lru_tail] = id; else p->lru_head = id;
    p->lru_tail = id;
    p->n_lru++;
}

/* Removes published block id from its bucket. */
static void unpublish(pd_kvpool *p, int32_t id)
{
    int32_t *link = &p->buckets[p->key[id] & (uint64_t)(p->n_buckets - 1)];
    while (*link != id) {
        PD_ASSERT(*link >= 0);
        link = &p->chain[*link];
    }
    *link = p->chain[id];
    p->cached[id] = 0;
}

int32_t pd_kvpool_take(pd_kvpool *p)
{
    PD_ASSERT(p->n_reserved > 0 && p->n_free + p->n_lru > 0);
    p->n_reserved--;
    int32_t id;
    if (p->n_free > 0) {
        id = p->free_list[--p->n_free];
    } else {
        id = p->lru_head;
        lru_unlink(p, id);
        unpublish(p, id);
        p->evictions++;
    }
    p->refs[id] = 1;
    return id;
}

void pd_kvpool_pin(pd_kvpool *p, int32_t id)
{
    PD_ASSERT(id >= 0 && id < p->n_blocks && p->cached[id]);
    if (p->refs[id]++ == 0) lru_unlink(p, id);
}

void pd_kvpool_release(pd_kvpool *p, int32_t id)
{
    PD_ASSERT(id >= 0 && id < p->n_blocks && p->refs[id] > 0);
    if (--p->refs[id] > 0) return;
    if (p->cached[id])
        lru_push(p, id);
    else
        p->free_list[p->n_free++] = id;
}

/* The chain hash of a block of toks after the block parent (or first). */
static uint64_t chain_key(const pd_kvpool *p, int32_t parent, uint64_t owner, const int32_t *toks)
{
    const uint64_t h = parent >= 0 ? p->key[parent] : pd_kvpool_hash(UINT64_C(0xcbf29ce484222325),
                                                                      &owner, sizeof owner);
    return pd_kvpool_hash(h, toks, PD_KV_BLOCK * sizeof *toks);
}

/* The published block equal to (parent, owner, toks) under key k, or -1. */
static int32_t find(const pd_kvpool *p, uint64_t k, int32_t parent, uint64_t owner,
                    const int32_t *toks)
{
    for (int32_t id = p->buckets[k & (uint64_t)(p->n_buckets - 1)]; id >= 0; id = p->chain[id])
        if (p->key[id] == k && p->owner[id] == owner && p->parent[id] == parent &&
            (parent < 0 || p->parent_gen[id] == p->gen[parent]) &&
            !memcmp(p->toks + (size_t)id * PD_KV_BLOCK, toks, PD_KV_BLOCK * sizeof *toks))
            return id;
    return -1;
}

int pd_kvpool_match(const pd_kvpool *p, uint64_t owner, const int32_t *tokens, int n_tokens,
                    int32_t *out, int max)
{
    int n = 0;
    int32_t parent = -1;
    while (n < max && (n + 1) * PD_KV_BLOCK <= n_tokens) {
        const int32_t *t = tokens + (size_t)n * PD_KV_BLOCK;
        const int32_t id = find(p, chain_key(p, parent, owner, t), parent, owner, t);
        if (id < 0) break;
        out[n++] = parent = id;
    }
    return n;
}

int pd_kvpool_publish(pd_kvpool *p, int32_t id, int32_t parent, uint64_t owner,
                      const int32_t *toks)
{
    PD_ASSERT(id >= 0 && id < p->n_blocks && p->refs[id] > 0);
    if (p->cached[id] || (parent >= 0 && !p->cached[parent])) return 0;
    const uint64_t k = chain_key(p, parent, owner, toks);
    if (find(p, k, parent, owner, toks) >= 0) return 0;
    p->key[id] = k;
    p->owner[id] = owner;
    p->parent[id] = parent;
    p->parent_gen[id] = parent >= 0 ? p->gen[parent] : 0;
    p->gen[id]++;
    memcpy(p->toks + (size_t)id * PD_KV_BLOCK, toks, PD_KV_BLOCK * sizeof *toks);
    const size_t b = k & (uint64_t)(p->n_buckets - 1);
    p->chain[id] = p->buckets[b];
    p->buckets[b] = id;
    p->cached[id] = 1;
    return 1;
}
