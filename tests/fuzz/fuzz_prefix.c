/* fuzz_prefix.c — the prefix file parser: pd_prefix_parse over the input
 * bytes against the shipped model (stories260K). A prefix that parses must
 * fit the model, hold finite values only, and survive a save and a parse
 * back unchanged. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/prefix.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const pd_model *m = fuzz_model();
    pd_prefix *p;
    pd_err err;
    if (pd_prefix_parse(data, size, "fuzz.safetensors", m, &p, &err) < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        return 0;
    }
    const pd_config *c = &m->cfg;
    FUZZ_CHECK(p->n_layers == c->n_layers && p->n_kv_heads == c->n_kv_heads &&
               p->head_dim == c->head_dim);
    FUZZ_CHECK(p->n_tokens >= 1 && p->n_tokens < c->seq_len);
    FUZZ_CHECK(pd_task_name_valid(p->task));
    size_t n = (size_t)p->n_layers * p->n_kv_heads * p->n_tokens * p->head_dim;
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(isfinite(p->keys[i]) && isfinite(p->values[i]));
    for (int i = 0; i < p->n_meta; i++)
        FUZZ_CHECK(pd_prefix_meta_get(p, p->meta[i].key) != NULL);

    void *buf;
    size_t len;
    if (pd_prefix_serialize(p, m, 0, &buf, &len, &err) < 0) fuzz_fail("serialize: %s", err.msg);
    pd_prefix *q;
    if (pd_prefix_parse(buf, len, "round trip", m, &q, &err) < 0)
        fuzz_fail("a saved prefix does not parse: %s", err.msg);
    FUZZ_CHECK(q->n_tokens == p->n_tokens && q->has_bos == p->has_bos);
    FUZZ_CHECK(!strcmp(q->task, p->task));
    FUZZ_CHECK(!memcmp(q->keys, p->keys, n * sizeof *p->keys));
    FUZZ_CHECK(!memcmp(q->values, p->values, n * sizeof *p->values));
    pd_prefix_release(q);
    free(buf);
    pd_prefix_release(p);
    return 0;
}
