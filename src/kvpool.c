/* kvpool.c — the pool of KV cache blocks (contract in prefixd/kvpool.h). */
#include "prefixd/kvpool.h"

#include <stdlib.h>

size_t pd_kvpool_block_bytes(const pd_model *m)
{
    return 2 * (size_t)m->cfg.n_layers * PD_KV_BLOCK * (size_t)m->cfg.kv_dim * sizeof(float);
}

int pd_kvpool_create(const pd_model *m, size_t budget_bytes, pd_kvpool **out, pd_err *err)
{
    *out = NULL;
    const size_t bb = pd_kvpool_block_bytes(m);
    const size_t n = budget_bytes / bb;
    if (n < 1)
        return pd_err_set(err, PD_EINVAL,
                          "KV budget of %zu bytes holds no block (a block of %d tokens is %zu "
                          "bytes for this model)",
                          budget_bytes, PD_KV_BLOCK, bb);
    if (n > INT32_MAX / 2)
        return pd_err_set(err, PD_EINVAL, "KV budget of %zu bytes is %zu blocks, too many",
                          budget_bytes, n);
    pd_kvpool *p = calloc(1, sizeof *p);
    if (!p) return pd_err_set(err, PD_ENOMEM, "out of memory for the KV pool");
    p->block_floats = bb / sizeof(float);
    p->v_offset = p->block_floats / 2;
    p->n_blocks = (int)n;
    p->data = aligned_alloc(64, n * bb); /* bb is a multiple of 64 (PD_KV_BLOCK * 4 * 2) */
    p->free_list = malloc(n * sizeof *p->free_list);
    if (!p->data || !p->free_list) {
        pd_kvpool_free(p);
        return pd_err_set(err, PD_ENOMEM, "out of memory for a KV pool of %zu MiB",
                          (n * bb) >> 20);
    }
    /* block 0 on top: the first sequences use the low blocks */
    for (int i = 0; i < p->n_blocks; i++) p->free_list[i] = p->n_blocks - 1 - i;
    p->n_free = p->n_blocks;
    *out = p;
    return PD_OK;
}

void pd_kvpool_free(pd_kvpool *p)
{
    if (!p) return;
    free(p->data);
    free(p->free_list);
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

int32_t pd_kvpool_take(pd_kvpool *p)
{
    PD_ASSERT(p->n_reserved > 0 && p->n_free > 0);
    p->n_reserved--;
    return p->free_list[--p->n_free];
}

void pd_kvpool_put(pd_kvpool *p, int32_t id)
{
    PD_ASSERT(id >= 0 && id < p->n_blocks && p->n_free < p->n_blocks);
    p->free_list[p->n_free++] = id;
}
