/* test_kvpool.c — the KV block pool and its prompt cache on the shipped
 * model: reservation and availability, publication and exact matching
 * (owner, chain, token ids), the LRU and eviction, stale parents after an
 * eviction, and a sequence started from shared blocks giving the same
 * logits bits as one that prefilled everything. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "prefixd/engine.h"
#include "prefixd/kvpool.h"

#include "testutil.h"

TEST_GROUP_MODEL()

#define NTOK 40 /* two full blocks and a partial one */
#define OWNER_A UINT64_C(0x1111)
#define OWNER_B UINT64_C(0x2222)

static void make_tokens(int32_t *t, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        t[i] = i == 0 ? 1 : (int32_t)((seed >> 33) % (uint64_t)model->cfg.vocab_size);
    }
}

/* Prefills toks[from..n) into s in one step; the last token's logits into lg. */
static void prefill(pd_engine *e, pd_seq *s, const int32_t *toks, int from, int n, float *lg)
{
    const int V = model->cfg.vocab_size;
    pd_seq *seqs[NTOK];
    int32_t pos[NTOK];
    uint8_t want[NTOK];
    for (int i = from; i < n; i++) {
        seqs[i - from] = s;
        pos[i - from] = i;
        want[i - from] = i == n - 1;
    }
    pd_seq_grow(s, n);
    pd_batch b = {n - from, toks + from, seqs, pos, want};
    const float *out;
    assert_int_equal(pd_engine_step(e, &b, &out, NULL), 1);
    memcpy(lg, out, (size_t)V * sizeof(float));
}

/* Publishes the sequence's full blocks; returns how many were published. */
static int publish_all(pd_kvpool *p, const pd_seq *s, const int32_t *toks, uint64_t owner)
{
    int n = 0;
    for (int b = 0; (b + 1) * PD_KV_BLOCK <= s->len; b++)
        n += pd_kvpool_publish(p, s->blocks[b], b ? s->blocks[b - 1] : -1, owner,
                               toks + b * PD_KV_BLOCK);
    return n;
}

static void test_shared_blocks_give_the_same_bits(void **state)
{
    (void)state;
    const int V = model->cfg.vocab_size, nb = pd_kvpool_blocks_for(NTOK);
    int32_t toks[NTOK];
    make_tokens(toks, NTOK, 42);
    float *fresh = malloc((size_t)V * sizeof(float)), *hit = malloc((size_t)V * sizeof(float));
    assert_non_null(fresh);
    assert_non_null(hit);
    pd_engine *e;
    pd_kvpool *p;
    assert_int_equal(pd_engine_create(model, &(pd_engine_params){NTOK, 0, PD_KV_F32}, &e, NULL), PD_OK);
    assert_int_equal(pd_kvpool_create(model, 2 * (size_t)nb * pd_kvpool_block_bytes(model), &p,
                                      NULL),
                     PD_OK);
    pd_seq *a;
    assert_int_equal(pd_seq_create_paged(model, p, NTOK, NULL, 0, &a, NULL), PD_OK);
    prefill(e, a, toks, 0, NTOK, fresh);
    assert_int_equal(publish_all(p, a, toks, OWNER_A), 2);
    assert_int_equal(publish_all(p, a, toks, OWNER_A), 0); /* already there */
    pd_seq_free(a);
    /* the two published blocks wait in the LRU; the partial one is free */
    assert_int_equal(p->n_lru, 2);
    assert_int_equal(pd_kvpool_used(p), 0);
    assert_int_equal(pd_kvpool_available(p), 2 * nb);

    int32_t found[4];
    assert_int_equal(pd_kvpool_match(p, OWNER_B, toks, NTOK - 1, found, 4), 0);
    assert_int_equal(pd_kvpool_match(p, OWNER_A, toks, NTOK - 1, found, 1), 1);
    assert_int_equal(pd_kvpool_match(p, OWNER_A, toks, 31, found, 4), 1);
    int32_t other[NTOK];
    memcpy(other, toks, sizeof other);
    other[20] ^= 1; /* the second block differs */
    assert_int_equal(pd_kvpool_match(p, OWNER_A, other, NTOK - 1, found, 4), 1);
    other[3] ^= 1; /* so does the first */
    assert_int_equal(pd_kvpool_match(p, OWNER_A, other, NTOK - 1, found, 4), 0);
    const int n = pd_kvpool_match(p, OWNER_A, toks, NTOK - 1, found, 4);
    assert_int_equal(n, 2);

    pd_seq *b;
    assert_int_equal(pd_seq_create_paged(model, p, NTOK, found, n, &b, NULL), PD_OK);
    pd_seq_set_prefix(b, 0, NULL, NULL);
    assert_int_equal(pd_seq_use_shared(b), 32);
    assert_int_equal(p->n_lru, 0);
    assert_int_equal(pd_kvpool_used(p), 2);
    prefill(e, b, toks, 32, NTOK, hit);
    if (memcmp(fresh, hit, (size_t)V * sizeof(float)) != 0)
        fail_msg("logits after a prompt-cache hit differ from the full prefill");
    /* a shared block is never written */
    pd_seq *ss[1] = {b};
    int32_t pos[1] = {5};
    pd_batch bad = {1, toks + 5, ss, pos, NULL};
    const float *lg;
    pd_err err;
    assert_int_equal(pd_engine_step(e, &bad, &lg, &err), PD_EINVAL);
    pd_seq_free(b);
    assert_int_equal(pd_kvpool_used(p), 0);
    assert_int_equal(p->n_reserved, 0);

    /* a sequence needing the whole pool evicts the cached blocks */
    pd_seq *c;
    assert_int_equal(pd_seq_create_paged(model, p, 2 * nb * PD_KV_BLOCK, NULL, 0, &c, NULL),
                     PD_OK);
    pd_seq_grow(c, 2 * nb * PD_KV_BLOCK);
    assert_int_equal(p->evictions, 2);
    assert_int_equal(pd_kvpool_match(p, OWNER_A, toks, NTOK - 1, found, 4), 0);
    pd_seq_free(c);
    assert_int_equal(pd_kvpool_available(p), 2 * nb);
    pd_kvpool_free(p);
    pd_engine_free(e);
    free(fresh);
    free(hit);
}

/* After its parent is evicted and the id reused, a child block is never
 * found, even when the new parent has the same tokens again. */
static void test_stale_parent(void **state)
{
    (void)state;
    pd_kvpool *p;
    assert_int_equal(pd_kvpool_create(model, 3 * pd_kvpool_block_bytes(model), &p, NULL), PD_OK);
    int32_t t[2 * PD_KV_BLOCK];
    make_tokens(t, 2 * PD_KV_BLOCK, 9);
    assert_int_equal(pd_kvpool_reserve(p, 2), PD_OK);
    int32_t b0 = pd_kvpool_take(p), b1 = pd_kvpool_take(p);
    assert_int_equal(pd_kvpool_publish(p, b1, b0, OWNER_A, t + PD_KV_BLOCK), 0); /* parent unpublished */
    assert_int_equal(pd_kvpool_publish(p, b0, -1, OWNER_A, t), 1);
    assert_int_equal(pd_kvpool_publish(p, b1, b0, OWNER_A, t + PD_KV_BLOCK), 1);
    pd_kvpool_release(p, b0); /* b0 becomes the oldest in the LRU, b1 is still held */
    int32_t f[2];
    assert_int_equal(pd_kvpool_match(p, OWNER_A, t, 2 * PD_KV_BLOCK, f, 2), 2);
    /* take two: the free block, then b0 evicted */
    assert_int_equal(pd_kvpool_reserve(p, 2), PD_OK);
    int32_t x = pd_kvpool_take(p), y = pd_kvpool_take(p);
    assert_int_equal(y, b0);
    assert_int_equal(p->evictions, 1);
    assert_int_equal(pd_kvpool_match(p, OWNER_A, t, 2 * PD_KV_BLOCK, f, 2), 0);
    /* the id comes back with the same first tokens: the child was of the old one */
    assert_int_equal(pd_kvpool_publish(p, y, -1, OWNER_A, t), 1);
    assert_int_equal(pd_kvpool_match(p, OWNER_A, t, 2 * PD_KV_BLOCK, f, 2), 1);
    pd_kvpool_release(p, x);
    pd_kvpool_release(p, y);
    pd_kvpool_release(p, b1);
    assert_int_equal(pd_kvpool_used(p), 0);
    assert_int_equal(pd_kvpool_available(p), 3);
    pd_kvpool_free(p);
}

static void test_budget_errors(void **state)
{
    (void)state;
    pd_kvpool *p;
    pd_err err;
    assert_int_equal(pd_kvpool_create(model, pd_kvpool_block_bytes(model) - 1, &p, &err),
                     PD_EINVAL);
    assert_non_null(strstr(err.msg, "holds no block"));
    assert_int_equal(pd_kvpool_create(model, pd_kvpool_block_bytes(model), &p, &err), PD_OK);
    pd_seq *s;
    assert_int_equal(pd_seq_create_paged(model, p, PD_KV_BLOCK + 1, NULL, 0, &s, &err),
                     PD_EINVAL);
    assert_non_null(strstr(err.msg, "KV budget holds 1"));
    assert_int_equal(pd_seq_create_paged(model, p, PD_KV_BLOCK, NULL, 0, &s, &err), PD_OK);
    pd_seq *t;
    assert_int_equal(pd_seq_create_paged(model, p, 1, NULL, 0, &t, &err), PD_EBUSY);
    pd_seq_free(s);
    assert_int_equal(pd_seq_create_paged(model, p, 1, NULL, 0, &t, &err), PD_OK);
    pd_seq_free(t);
    pd_kvpool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_blocks_give_the_same_bits),
        cmocka_unit_test(test_stale_parent),
        cmocka_unit_test(test_budget_errors),
    };
    return cmocka_run_group_tests_name("kvpool", tests, setup, teardown);
}
