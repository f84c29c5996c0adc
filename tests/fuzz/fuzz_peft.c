/* fuzz_peft.c — PEFT prefix-tuning import: pd_prefix_import_peft on a
 * directory holding adapter_config.json and adapter_model.safetensors,
 * against the shipped model.
 *
 * Input: the config's bytes, then SEP and the safetensors file's bytes.
 * Without SEP the whole input is the config and the tensors are a valid
 * adapter of 2 virtual tokens for stories260K, so mutations of the config
 * alone reach past the tensor checks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/prefix.h"
#include "prefixd/safetensors.h"
#include "util.h"

#define SEP "\n--adapter_model.safetensors--\n"

/* The fallback tensors: prompt_embeddings [2, n_layers * 2 * kv_dim], F32,
 * in a new malloc'd buffer (never freed: made once). */
static void default_tensors(const pd_model *m, void **data, size_t *size)
{
    static void *buf;
    static size_t len;
    if (!buf) {
        const int64_t shape[2] = {2, 2LL * m->cfg.n_layers * m->cfg.kv_dim};
        size_t n = (size_t)(shape[0] * shape[1]);
        float *v = malloc(n * sizeof *v);
        FUZZ_CHECK(v);
        for (size_t i = 0; i < n; i++) v[i] = (float)((int)(i % 17) - 8) / 16.0f;
        pd_st_writer *w = pd_st_writer_new();
        pd_err err;
        FUZZ_CHECK(w && pd_st_writer_add_f32(w, "prompt_embeddings", PD_ST_F32, 2, shape, v,
                                             &err) == PD_OK);
        FUZZ_CHECK(pd_st_writer_serialize(w, &buf, &len, &err) == PD_OK);
        pd_st_writer_free(w);
        free(v);
    }
    *data = buf;
    *size = len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const pd_model *m = fuzz_model();
    const char *dir = fuzz_tmpdir();
    char cfg_path[128], st_path[128];
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", dir);
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", dir);

    const uint8_t *sep = memmem(data, size, SEP, sizeof SEP - 1);
    size_t cfg_len = sep ? (size_t)(sep - data) : size;
    void *st;
    size_t st_len;
    if (sep) {
        st = (void *)(sep + sizeof SEP - 1);
        st_len = size - cfg_len - (sizeof SEP - 1);
    } else {
        default_tensors(m, &st, &st_len);
    }
    fuzz_write(cfg_path, data, cfg_len);
    fuzz_write(st_path, st, st_len);

    pd_prefix *p;
    pd_err err;
    if (pd_prefix_import_peft(dir, m, "fuzz", &p, &err) < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        return 0;
    }
    const pd_config *c = &m->cfg;
    FUZZ_CHECK(p->n_layers == c->n_layers && p->n_kv_heads == c->n_kv_heads &&
               p->head_dim == c->head_dim && p->has_bos == 0);
    FUZZ_CHECK(p->n_tokens >= 1 && p->n_tokens < c->seq_len);
    size_t n = (size_t)p->n_layers * p->n_kv_heads * p->n_tokens * p->head_dim;
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(isfinite(p->keys[i]) && isfinite(p->values[i]));
    const char *source = pd_prefix_meta_get(p, "source");
    FUZZ_CHECK(source && !strcmp(source, "peft"));
    pd_prefix_release(p);
    return 0;
}
