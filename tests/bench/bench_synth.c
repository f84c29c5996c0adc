/* bench_synth.c — a synthetic Llama GGUF of a real model's shape, for speed
 * figures of a size that the shipped 260K model cannot give.
 *
 * The file follows the keys and tensor names that model_gguf.c loads
 * (llama.cpp's): general.architecture = "llama", the llama.* hyper-parameters,
 * token_embd.weight, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
 * ffn_norm, ffn_gate, ffn_down, ffn_up}.weight, output_norm.weight and an
 * untied output.weight; matrices have ne = {in, out}. The tokenizer is
 * synthetic: "<unk>", "<s>", "</s>", the 256 byte pieces "<0xXX>", then
 * "tok<i>" pieces; BOS 1, EOS 2. Weights are uniform in ±scale from a fixed
 * seed, norm weights 1, so every run benchmarks the same model. */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "prefixd/gguf.h"
#include "prefixd/half.h"

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

/* One tensor of the file: a name, a row length and a row count (0 for a
 * vector), and whether it is a norm (ones, always F32). */
typedef struct tensor_spec {
    char name[64];
    int64_t ne0, ne1;
    int norm;
} tensor_spec;

/* Lists the tensors in file order into t (n_layers * 9 + 3 entries). */
static int list_tensors(const bench_synth *s, tensor_spec *t)
{
    const int64_t D = s->dim, KV = (int64_t)s->dim / s->n_heads * s->n_kv_heads;
    const int64_t H = s->hidden_dim, V = s->vocab_size;
    int n = 0;
    t[n++] = (tensor_spec){"token_embd.weight", D, V, 0};
    static const struct {
        const char *name;
        int ne0, ne1; /* 0: D, 1: KV, 2: H; ne1 -1: a vector */
    } layer[9] = {{"attn_norm", 0, -1}, {"attn_q", 0, 0},   {"attn_k", 0, 1},
                  {"attn_v", 0, 1},     {"attn_output", 0, 0}, {"ffn_norm", 0, -1},
                  {"ffn_gate", 0, 2},   {"ffn_down", 2, 0},  {"ffn_up", 0, 2}};
    const int64_t size[3] = {D, KV, H};
    for (int l = 0; l < s->n_layers; l++)
        for (int i = 0; i < 9; i++) {
            tensor_spec *ts = &t[n++];
            snprintf(ts->name, sizeof ts->name, "blk.%d.%s.weight", l, layer[i].name);
            ts->ne0 = size[layer[i].ne0];
            ts->ne1 = layer[i].ne1 < 0 ? 0 : size[layer[i].ne1];
            ts->norm = layer[i].ne1 < 0;
        }
    t[n++] = (tensor_spec){"output_norm.weight", D, 0, 1};
    t[n++] = (tensor_spec){"output.weight", D, V, 0};
    return n;
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
        if (t[i].norm)
            for (size_t j = 0; j < n; j++) p[j] = 1.0f;
        else
            for (size_t j = 0; j < n; j++) p[j] = s->scale * bench_randf(&rng);
        p += n;
    }
    return PD_OK;
}

/* The synthetic tokenizer's pieces, one NUL-terminated string each, sliced
 * from one buffer (*buf, owned by the caller). */
static int make_vocab(int V, char ***pieces, char **buf, float **scores, int32_t **types,
                      pd_err *err)
{
    *pieces = malloc((size_t)V * sizeof **pieces);
    *buf = malloc((size_t)V * 16);
    *scores = malloc((size_t)V * sizeof **scores);
    *types = malloc((size_t)V * sizeof **types);
    if (!*pieces || !*buf || !*scores || !*types)
        return pd_err_set(err, PD_ENOMEM, "out of memory for the synthetic vocabulary");
    for (int i = 0; i < V; i++) {
        char *p = *buf + (size_t)i * 16;
        if (i == 0) strcpy(p, "<unk>");
        else if (i == 1) strcpy(p, "<s>");
        else if (i == 2) strcpy(p, "</s>");
        else if (i < 3 + 256) snprintf(p, 16, "<0x%02X>", i - 3);
        else snprintf(p, 16, "tok%d", i);
        (*pieces)[i] = p;
        (*scores)[i] = i < 3 + 256 ? 0.0f : -(float)i;
        (*types)[i] = i == 0 ? 2 : i < 3 ? 3 : i < 3 + 256 ? 6 : 1;
    }
    return PD_OK;
}

static int add_metadata(pd_gguf_writer *w, const bench_synth *s, int dtype, pd_err *err)
{
    const int hd = s->dim / s->n_heads;
    char **pieces = NULL, *buf = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    int rc;
    if ((rc = pd_gguf_add_str(w, "general.architecture", "llama", err)) < 0 ||
        (rc = pd_gguf_add_str(w, "general.name", "prefixd-bench synthetic 134M", err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "general.file_type", dtype == PD_DTYPE_F16 ? 1 : 0, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.context_length", (uint32_t)s->seq_len, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.embedding_length", (uint32_t)s->dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.block_count", (uint32_t)s->n_layers, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.feed_forward_length", (uint32_t)s->hidden_dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.attention.head_count", (uint32_t)s->n_heads, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.attention.head_count_kv", (uint32_t)s->n_kv_heads,
                              err)) < 0 ||
        (rc = pd_gguf_add_f32(w, "llama.rope.freq_base", 10000.0f, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.rope.dimension_count", (uint32_t)hd, err)) < 0 ||
        (rc = pd_gguf_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.vocab_size", (uint32_t)s->vocab_size, err)) < 0)
        return rc;
    const uint64_t V = (uint64_t)s->vocab_size;
    rc = make_vocab(s->vocab_size, &pieces, &buf, &scores, &types, err);
    if (rc == PD_OK) rc = pd_gguf_add_str(w, "tokenizer.ggml.model", "llama", err);
    if (rc == PD_OK)
        rc = pd_gguf_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)pieces, NULL,
                                 V, err);
    if (rc == PD_OK) rc = pd_gguf_add_arr_f32(w, "tokenizer.ggml.scores", scores, V, err);
    if (rc == PD_OK) rc = pd_gguf_add_arr_i32(w, "tokenizer.ggml.token_type", types, V, err);
    if (rc == PD_OK) rc = pd_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", 1, err);
    if (rc == PD_OK) rc = pd_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 2, err);
    free(pieces);
    free(buf);
    free(scores);
    free(types);
    return rc;
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
        int half = dtype == PD_DTYPE_F16 && !t[i].norm;
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
    const int nt = s->n_layers * 9 + 3;
    tensor_spec *t = malloc((size_t)nt * sizeof *t);
    pd_gguf_writer *w = NULL;
    uint16_t *f16 = NULL;
    int rc;
    if (!t) return pd_err_set(err, PD_ENOMEM, "out of memory");
    list_tensors(s, t);
    size_t total = 0, n_mat = 0;
    for (int i = 0; i < nt; i++) {
        total += n_elems(&t[i]);
        if (!t[i].norm) n_mat += n_elems(&t[i]);
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
            if (!t[i].norm)
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
