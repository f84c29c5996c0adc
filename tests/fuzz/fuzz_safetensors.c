/* fuzz_safetensors.c — the safetensors reader: pd_st_parse over the input
 * bytes. On success every tensor and metadata entry is read through the
 * public API (floating tensors widened with pd_st_tensor_to_f32), the
 * lookups must find what the listing holds, and the file re-serialized by
 * the writer must parse back to the same tensors. */
#include <stdlib.h>
#include <string.h>

#include "prefixd/safetensors.h"
#include "util.h"

static unsigned touch(const void *p, size_t n)
{
    const unsigned char *b = p;
    unsigned h = 0;
    for (size_t i = 0; i < n; i++) h = h * 31 + b[i];
    return h;
}

/* Writes st's tensors and metadata again and parses the result. */
static void round_trip(const pd_st *st)
{
    pd_st_writer *w = pd_st_writer_new();
    FUZZ_CHECK(w);
    pd_err err;
    for (int i = 0; i < pd_st_n_meta(st); i++) {
        const pd_st_kv *kv = pd_st_meta_at(st, i);
        if (pd_st_writer_set_meta(w, kv->key, kv->value, &err) < 0) goto done; /* not UTF-8 */
    }
    for (int i = 0; i < pd_st_n_tensors(st); i++) {
        const pd_st_tensor *t = pd_st_tensor_at(st, i);
        if (pd_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, t->data, &err) < 0)
            goto done; /* a name that is not UTF-8 */
    }
    void *buf;
    size_t size;
    if (pd_st_writer_serialize(w, &buf, &size, &err) < 0) fuzz_fail("serialize: %s", err.msg);
    pd_st *back;
    if (pd_st_parse(buf, size, "round trip", &back, &err) < 0)
        fuzz_fail("the writer's output does not parse: %s", err.msg);
    FUZZ_CHECK(pd_st_n_tensors(back) == pd_st_n_tensors(st));
    FUZZ_CHECK(pd_st_n_meta(back) == pd_st_n_meta(st));
    for (int i = 0; i < pd_st_n_tensors(st); i++) {
        const pd_st_tensor *a = pd_st_tensor_at(st, i), *b = pd_st_find(back, a->name);
        FUZZ_CHECK(b && b->dtype == a->dtype && b->n_dims == a->n_dims && b->numel == a->numel);
        FUZZ_CHECK(b->nbytes == a->nbytes && !memcmp(b->data, a->data, a->nbytes));
    }
    pd_st_free(back);
    free(buf);
done:
    pd_st_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    pd_st *st;
    pd_err err;
    if (pd_st_parse(data, size, "fuzz.safetensors", &st, &err) < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        return 0;
    }
    FUZZ_CHECK(pd_st_file_size(st) == size && pd_st_header_size(st) <= size - 8);
    for (int i = 0; i < pd_st_n_tensors(st); i++) {
        const pd_st_tensor *t = pd_st_tensor_at(st, i);
        FUZZ_CHECK(t->dtype >= 0 && t->dtype < PD_ST_DTYPE_COUNT);
        FUZZ_CHECK(t->n_dims >= 0 && t->n_dims <= PD_ST_MAX_DIMS);
        FUZZ_CHECK(t->nbytes == t->numel * pd_st_dtype_size(t->dtype));
        FUZZ_CHECK(t->offset <= size && t->nbytes <= size - t->offset);
        FUZZ_CHECK(pd_st_find(st, t->name) == t);
        touch(t->data, t->nbytes);
        if ((t->dtype == PD_ST_F32 || t->dtype == PD_ST_F16 || t->dtype == PD_ST_BF16) &&
            t->numel <= (1u << 20)) {
            float *f = malloc((t->numel ? t->numel : 1) * sizeof *f);
            FUZZ_CHECK(f);
            if (pd_st_tensor_to_f32(t, f, t->numel, &err) < 0) fuzz_fail("widen: %s", err.msg);
            free(f);
        }
    }
    for (int i = 0; i < pd_st_n_meta(st); i++) {
        const pd_st_kv *kv = pd_st_meta_at(st, i);
        FUZZ_CHECK(pd_st_meta_get(st, kv->key) == kv->value);
    }
    round_trip(st);
    pd_st_free(st);
    return 0;
}
