/* fuzz_gguf.c — the GGUF reader: pd_gguf_parse over the input bytes. On
 * success every key, array and tensor it hands out is read through the
 * public API, so a pointer or length that escapes the input shows up under
 * the sanitizers, and the lookups must find what the listing holds. */
#include <string.h>

#include "prefixd/gguf.h"
#include "util.h"

/* Reads every byte of p[0..n): a sanitizer flags any that is not ours. */
static unsigned touch(const void *p, uint64_t n)
{
    const unsigned char *b = p;
    unsigned h = 0;
    for (uint64_t i = 0; i < n; i++) h = h * 31 + b[i];
    return h;
}

static void check_kv(const pd_gguf *g, const pd_gguf_kv *kv)
{
    char key[256];
    pd_err err;
    FUZZ_CHECK(kv->key.len >= 1 && kv->key.len <= PD_GGUF_MAX_KEY);
    FUZZ_CHECK(kv->type >= 0 && kv->type < PD_GGUF_N_TYPES);
    touch(kv->key.ptr, kv->key.len);
    if (kv->type == PD_GGUF_STRING) touch(kv->v.s.ptr, kv->v.s.len);
    if (kv->type == PD_GGUF_ARRAY) {
        touch(kv->arr_data, kv->arr_bytes);
        if (kv->arr_strs)
            for (uint64_t i = 0; i < kv->arr_n; i++) touch(kv->arr_strs[i].ptr, kv->arr_strs[i].len);
    }
    if (kv->key.len >= sizeof key || memchr(kv->key.ptr, 0, kv->key.len)) return;
    memcpy(key, kv->key.ptr, kv->key.len);
    key[kv->key.len] = 0;
    FUZZ_CHECK(pd_gguf_find_kv(g, key) == kv);
    int64_t i64;
    double f;
    pd_gguf_str s;
    const void *data;
    const pd_gguf_str *strs;
    uint64_t n;
    pd_gguf_get_int(g, key, INT64_MIN, INT64_MAX, &i64, &err);
    pd_gguf_get_float(g, key, &f, &err);
    if (pd_gguf_get_str(g, key, &s, &err) == PD_OK) touch(s.ptr, s.len);
    if (kv->type == PD_GGUF_ARRAY && pd_gguf_type_size(kv->arr_type) > 0 &&
        pd_gguf_get_arr(g, key, kv->arr_type, &data, &n, &err) == PD_OK)
        touch(data, n * pd_gguf_type_size(kv->arr_type));
    if (pd_gguf_get_str_arr(g, key, &strs, &n, &err) == PD_OK)
        for (uint64_t k = 0; k < n; k++) touch(strs[k].ptr, strs[k].len);
}

static void check_tensor(const pd_gguf *g, const pd_gguf_tensor *t)
{
    char name[PD_GGUF_MAX_NAME + 1];
    FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= PD_GGUF_MAX_DIMS);
    FUZZ_CHECK(t->name.len >= 1 && t->name.len <= PD_GGUF_MAX_NAME);
    FUZZ_CHECK(t->file_offset <= g->size && t->nbytes <= g->size - t->file_offset);
    FUZZ_CHECK(pd_ggml_type_name(t->type) != NULL);
    touch(t->data, t->nbytes);
    memcpy(name, t->name.ptr, t->name.len);
    name[t->name.len] = 0;
    FUZZ_CHECK(pd_gguf_find_tensor(g, name) == t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    pd_gguf *g;
    pd_err err;
    if (pd_gguf_parse(data, size, "fuzz.gguf", &g, &err) < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        return 0;
    }
    FUZZ_CHECK(g->version == 2 || g->version == 3);
    FUZZ_CHECK(g->n_tensors == 0 || g->data_offset <= size); /* no tensors: no padding needed */
    for (size_t i = 0; i < g->n_kv; i++) check_kv(g, &g->kv[i]);
    for (size_t i = 0; i < g->n_tensors; i++) check_tensor(g, &g->tensors[i]);
    pd_gguf_free(g);
    return 0;
}
