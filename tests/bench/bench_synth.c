/* bench_synth.c — a synthetic Llama GGUF of a real model's shape, for speed
 * figures of a size that the shipped 260K model cannot give.
 *
 * Layout, keys and the synthetic tokenizer ("<unk>", "<s>", "</s>", the 256
 * byte pieces "<0xXX>", then "tok<i>"; BOS 1, EOS 2) are those of
 * tests/tools/synth_model.c for a llama with an untied output.weight.
 * Weights are uniform in ±scale from a fixed seed, norm weights 1, so every
 * run benchmarks the same model. */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "prefixd/gguf.h"
#include "prefixd/half.h"
#include "../tools/synth_model.h"

#define SPARE_DISK ((uint64_t)256 << 20) /* left free after writing */

bench_synth bench_synth_110m(void)
{
    bench_synth s = {0};
    s.dim = 768;
    s.hidden_dim = 2048;
    s.n_layers = 12;
    s.n_heads = 12;
    s.n_kv_heads = 12;
    s.vocab_size = 32000;
    s.seq_len = 1024;
    s.scale = 0.02f;
    s.seed = 110;
    return s;
}

bench_synth bench_synth_1b(void)
{
    bench_synth s = {.dim = 2048, .hidden_dim = 5632, .n_layers = 22, .n_heads = 32,
                     .n_kv_heads = 4, .vocab_size = 32000, .seq_len = 2048, .scale = 0.02f,
                     .seed = 1100};
    return s;
}

/* The file's layout and metadata are tests/tools/synth_model.c's (a llama
 * with an untied classifier); this file only adds the bench's own weights
 * (norms exactly 1), F16 and the reuse of an existing file. */
typedef synth_tensor tensor_spec;

static synth_spec spec_of(const bench_synth *s)
{
    synth_spec sp = {0};
    sp.arch = PD_ARCH_LLAMA;
    sp.dim = s->dim;
    sp.hidden_dim = s->hidden_dim;
    sp.n_layers = s->n_layers;
    sp.n_heads = s->n_heads;
    sp.n_kv_heads = s->n_kv_heads;
    sp.vocab_size = s->vocab_size;
    sp.seq_len = s->seq_len;
    sp.name = "prefixd-bench synthetic 134M";
    return sp;
}

static int list_tensors(const bench_synth *s, tensor_spec *t)
{
    synth_spec sp = spec_of(s);
    return synth_list_tensors(&sp, t);
}

static size_t n_elems(const tensor_spec *t) { return (size_t)t->ne0 * (size_t)(t->ne1 ? t->ne1 : 1); }

/* Fills s->f32 with every tensor, in file order. */
static int generate(bench_synth *s, const tensor_spec *t, int nt, pd_err *err)
{
    size_t total = 0;
    for (int i = 0; i < nt; i++) total += n_elems(&t[i]);
    s->f32 = malloc(total * sizeof(float));
    if (!s->f32)
        return pd_err_set(err, PD_ENOMEM, "out of memory for %zu MB of synthetic weights",
                          total * sizeof(float) >> 20);
    s->n_f32 = total;
    float *p = s->f32;
    for (int i = 0; i < nt; i++) {
        size_t n = n_elems(&t[i]);
        uint64_t rng = s->seed * 1000003u + (uint64_t)i;
        if (t[i].kind != SYNTH_MATRIX)
            for (size_t j = 0; j < n; j++) p[j] = 1.0f;
        else
            for (size_t j = 0; j < n; j++) p[j] = s->scale * bench_randf(&rng);
        p += n;
    }
    return PD_OK;
}

static int add_metadata(pd_gguf_writer *w, const bench_synth *s, int dtype, pd_err *err)
{
    synth_spec sp = spec_of(s);
    int rc = synth_add_hparams(w, &sp, dtype == PD_DTYPE_F16 ? 1 : 0, err);
    return rc < 0 ? rc : synth_add_vocab_synthetic(w, s->vocab_size, err);
}

/* A writer holding the whole file: metadata, then the tensors pointing at
 * f32 (F32 tensors, in file order) and f16 (the F16 matrices, in file
 * order). With f32 NULL every tensor points at a placeholder: the writer is
 * then only good for pd_gguf_writer_size. */
static int build(const bench_synth *s, const tensor_spec *t, int nt, int dtype,
                 const float *f32, const uint16_t *f16, pd_gguf_writer **out, pd_err *err)
{
    static const float placeholder[1];
    pd_gguf_writer *w;
    int rc = pd_gguf_writer_create(&w, err);
    if (rc < 0) return rc;
    if ((rc = add_metadata(w, s, dtype, err)) < 0) goto fail;
    size_t at32 = 0, at16 = 0;
    for (int i = 0; i < nt; i++) {
        int64_t ne[2] = {t[i].ne0, t[i].ne1};
        int n_dims = t[i].ne1 ? 2 : 1;
        int half = dtype == PD_DTYPE_F16 && t[i].kind == SYNTH_MATRIX;
        const void *data = !f32 ? (const void *)placeholder
                           : half ? (const void *)(f16 + at16)
                                  : (const void *)(f32 + at32);
        rc = pd_gguf_add_tensor(w, t[i].name, n_dims, ne, half ? PD_GGML_F16 : PD_GGML_F32,
                                data, err);
        if (rc < 0) goto fail;
        at32 += n_elems(&t[i]);
        if (half) at16 += n_elems(&t[i]);
    }
    *out = w;
    return PD_OK;
fail:
    pd_gguf_writer_free(w);
    return rc;
}

static int check_disk(const char *path, uint64_t need, pd_err *err)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    struct statvfs vfs;
    if (statvfs(dir, &vfs) != 0) return pd_err_set(err, PD_EIO, "%s: cannot stat the disk", dir);
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (avail < need + SPARE_DISK)
        return pd_err_set(err, PD_EIO, "%s: %llu MB free, writing %s needs %llu MB (+%llu spare)",
                          dir, (unsigned long long)(avail >> 20), path,
                          (unsigned long long)(need >> 20),
                          (unsigned long long)(SPARE_DISK >> 20));
    return PD_OK;
}

int bench_synth_write(bench_synth *s, const char *path, int dtype, int *written,
                      uint64_t *file_bytes, pd_err *err)
{
    *written = 0;
    if (dtype != PD_DTYPE_F32 && dtype != PD_DTYPE_F16)
        return pd_err_set(err, PD_EINVAL, "%s: dtype %d: only F32 and F16", path, dtype);
    const int nt = list_tensors(s, NULL);
    tensor_spec *t = malloc((size_t)nt * sizeof *t);
    pd_gguf_writer *w = NULL;
    uint16_t *f16 = NULL;
    int rc;
    if (!t) return pd_err_set(err, PD_ENOMEM, "out of memory");
    list_tensors(s, t);
    size_t total = 0, n_mat = 0;
    for (int i = 0; i < nt; i++) {
        total += n_elems(&t[i]);
        if (t[i].kind == SYNTH_MATRIX) n_mat += n_elems(&t[i]);
    }

    /* the expected size, from a writer whose data is not there yet */
    if ((rc = build(s, t, nt, dtype, NULL, NULL, &w, err)) < 0) goto done;
    *file_bytes = pd_gguf_writer_size(w);
    pd_gguf_writer_free(w);
    w = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && (uint64_t)st.st_size == *file_bytes) goto done; /* reuse */
    if ((rc = check_disk(path, *file_bytes, err)) < 0) goto done;

    if (!s->f32 && (rc = generate(s, t, nt, err)) < 0) goto done;
    PD_ASSERT(s->n_f32 == total);
    if (dtype == PD_DTYPE_F16) {
        f16 = malloc(n_mat * sizeof *f16);
        if (!f16) {
            rc = pd_err_set(err, PD_ENOMEM, "out of memory narrowing to F16");
            goto done;
        }
        const float *src = s->f32;
        uint16_t *dst = f16;
        for (int i = 0; i < nt; i++) {
            size_t n = n_elems(&t[i]);
            if (t[i].kind == SYNTH_MATRIX)
                for (size_t j = 0; j < n; j++) *dst++ = pd_f32_to_f16(src[j]);
            src += n;
        }
    }
    if ((rc = build(s, t, nt, dtype, s->f32, f16, &w, err)) < 0) goto done;
    PD_ASSERT(pd_gguf_writer_size(w) == *file_bytes);
    if ((rc = pd_gguf_writer_write(w, path, err)) < 0) goto done;
    *written = 1;
done:
    pd_gguf_writer_free(w);
    free(f16);
    free(t);
    return rc;
}

void bench_synth_release(bench_synth *s)
{
    free(s->f32);
    s->f32 = NULL;
    s->n_f32 = 0;
}
