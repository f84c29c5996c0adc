/* model_gguf.c — the llama model in GGUF: loading (pd__model_load_gguf) and
 * writing a loaded model back out (pd_gguf_write_model, behind `prefixd
 * convert`).
 *
 * Conventions (llama.cpp's): general.architecture = "llama", "qwen2" or
 * "qwen3" (src/arch.c has each one's keys and extra tensors); hyper-parameters
 * under "<arch>.*"; tensors token_embd.weight, blk.N.{attn_norm, attn_q, attn_k,
 * attn_v, attn_output, ffn_norm, ffn_gate, ffn_down, ffn_up}.weight,
 * output_norm.weight and output.weight (absent: the classifier is tied to the
 * embedding); the tokenizer under tokenizer.ggml.* (SentencePiece or
 * byte-level BPE: src/tokenizer_gguf.c reads and writes it). ggml's ne[0] is the row length, so a row-major [out][in]
 * matrix has ne = {in, out}: the same bytes as llama2.c's, and the rotary
 * pairs are adjacent in both, so nothing is permuted.
 *
 * Storage: weight matrices are typed views (pd_wmat) straight into the
 * read-only mapping (m->map) in their stored type; F16/BF16 norm vectors and
 * misaligned F32 tensors are widened into one owned buffer (m->owned) sliced
 * per tensor. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"
#include "prefixd/gguf.h"
#include "prefixd/half.h"
#include "prefixd/model.h"
#include "arch.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "model_gguf.c copies little-endian file values as host values"
#endif

const char *pd_dtype_name(int dtype)
{
    switch (dtype) {
    case PD_DTYPE_F32: return "F32";
    case PD_DTYPE_F16: return "F16";
    case PD_DTYPE_BF16: return "BF16";
    default: return "?";
    }
}

static int dtype_of_ggml(int type)
{
    switch (type) {
    case PD_GGML_F32: return PD_DTYPE_F32;
    case PD_GGML_F16: return PD_DTYPE_F16;
    case PD_GGML_BF16: return PD_DTYPE_BF16;
    default: return -1;
    }
}

static int ggml_of_dtype(int dtype)
{
    switch (dtype) {
    case PD_DTYPE_F32: return PD_GGML_F32;
    case PD_DTYPE_F16: return PD_GGML_F16;
    case PD_DTYPE_BF16: return PD_GGML_BF16;
    default: return -1;
    }
}

/* ---- loading ---- */

/* One weight to bind: where it is in the file and which model pointer (a
 * vector) or view (a matrix) gets it. */
typedef struct binding {
    const pd_gguf_tensor *t;
    const float **dst; /* vector, or NULL */
    pd_wmat *mat;      /* matrix, or NULL */
    int widen;         /* 1: converted into m->owned */
} binding;

typedef struct loader {
    pd_model *m;
    const pd_gguf *g;
    const char *path;
    pd_err *err;
    binding *b; /* (n_bind) */
    int n_bind;
    pd_wmat *fused; /* (n_layers, 2) phi3's attn_qkv and ffn_up, split once bound (owned) */
} loader;

/* The hyper-parameters of the file's architecture (src/arch.c). */
static int read_config(loader *L) { return pd__arch_read_config(L->g, L->path, &L->m->cfg, L->err); }

static void format_shape(const int64_t *ne, int n_dims, char *buf, size_t cap)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < n_dims && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", d ? ", " : "", (long long)ne[d]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

/* Finds tensor name, checks its type and shape {ne0} (ne1 == 0) or {ne0, ne1},
 * and records a binding to the vector *dst or the matrix view *mat (one of
 * them). optional: a missing tensor returns PD_ENOTFOUND without setting err. */
static int want_any(loader *L, const char *name, int64_t ne0, int64_t ne1, const float **dst,
                    pd_wmat *mat, int optional)
{
    const pd_gguf_tensor *t = pd_gguf_find_tensor(L->g, name);
    if (!t) {
        if (optional) return PD_ENOTFOUND;
        return pd_err_set(L->err, PD_ENOTFOUND, "%s: tensor %s is missing", L->path, name);
    }
    if (mat ? !pd_qtype_is_weight_type(t->type) : dtype_of_ggml(t->type) < 0)
        return pd_err_set(L->err, PD_EUNSUPPORTED,
                          "%s: tensor %s has type %s, which prefixd cannot load (%s: %s)",
                          L->path, name, pd_ggml_type_name(t->type),
                          mat ? "matrices" : "vectors",
                          mat ? "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, "
                                "Q4_K, Q5_K, Q6_K"
                              : "F32, F16, BF16");
    int64_t want_ne[PD_GGUF_MAX_DIMS] = {ne0, ne1 ? ne1 : 1, 1, 1};
    for (int d = 0; d < PD_GGUF_MAX_DIMS; d++) {
        if (t->ne[d] != want_ne[d]) {
            char got[96], exp[64];
            format_shape(t->ne, t->n_dims, got, sizeof got);
            format_shape(want_ne, ne1 ? 2 : 1, exp, sizeof exp);
            const pd_config *c = &L->m->cfg;
            return pd_err_set(L->err, PD_EFORMAT,
                              "%s: tensor %s has shape %s, but the config (dim %d, hidden %d, "
                              "kv_dim %d, vocab %d) needs %s",
                              L->path, name, got, c->dim, c->hidden_dim, c->kv_dim,
                              c->vocab_size, exp);
        }
    }
    /* the reader checked the block multiple and the bounds; the view's rows
     * must cover exactly the tensor's bytes */
    if (mat && pd_qtype_row_bytes(t->type, t->ne[0]) * (uint64_t)t->ne[1] != t->nbytes)
        return pd_err_set(L->err, PD_EFORMAT,
                          "%s: tensor %s (%s): %llu bytes for %lld rows of %lld do not match "
                          "the type's %zu bytes per row",
                          L->path, name, pd_ggml_type_name(t->type),
                          (unsigned long long)t->nbytes, (long long)t->ne[1],
                          (long long)t->ne[0], pd_qtype_row_bytes(t->type, t->ne[0]));
    binding *b = &L->b[L->n_bind++];
    b->t = t;
    b->dst = dst;
    b->mat = mat;
    /* matrices of every weight type but misaligned F32 are used in place
     * (the kernels convert or dequantise them) */
    b->widen = mat && t->type != PD_GGML_F32
                   ? 0
                   : t->type != PD_GGML_F32 || ((uintptr_t)t->data % _Alignof(float)) != 0;
    return PD_OK;
}

static int want(loader *L, const char *name, int64_t ne0, const float **dst)
{
    return want_any(L, name, ne0, 0, dst, NULL, 0);
}

static int want_mat(loader *L, const char *name, int64_t ne0, int64_t ne1, pd_wmat *mat,
                    int optional)
{
    return want_any(L, name, ne0, ne1, NULL, mat, optional);
}

/* phi3: one attn_qkv (rows q_dim + 2 kv_dim) and one ffn_up (rows 2 hidden:
 * gate then up) per layer, into L->fused; split_fused makes the views. */
static int bind_fused(loader *L)
{
    const pd_config *c = &L->m->cfg;
    const int64_t D = c->dim, QKV = (int64_t)c->q_dim + 2 * (int64_t)c->kv_dim;
    const int64_t H2 = 2 * (int64_t)c->hidden_dim;
    int rc;
    L->fused = calloc((size_t)c->n_layers * 2, sizeof *L->fused);
    if (!L->fused) return pd_err_set(L->err, PD_ENOMEM, "%s: out of memory", L->path);
    for (int l = 0; l < c->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", l);
        if ((rc = want_mat(L, name, D, QKV, &L->fused[2 * l], 0)) < 0) return rc;
        snprintf(name, sizeof name, "blk.%d.ffn_up.weight", l);
        if ((rc = want_mat(L, name, D, H2, &L->fused[2 * l + 1], 0)) < 0) return rc;
    }
    return PD_OK;
}

/* Row band [r0, r0 + rows) of W as a matrix of its own. */
static pd_wmat wmat_rows(const pd_wmat *W, int r0, int rows)
{
    pd_wmat v = *W;
    v.data = (const unsigned char *)W->data + (size_t)r0 * W->row_bytes;
    v.rows = rows;
    return v;
}

static void split_fused(loader *L)
{
    const pd_config *c = &L->m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        pd_layer_weights *lw = &L->m->w.layers[l];
        const pd_wmat *qkv = &L->fused[2 * l], *up = &L->fused[2 * l + 1];
        lw->wq = wmat_rows(qkv, 0, c->q_dim);
        lw->wk = wmat_rows(qkv, c->q_dim, c->kv_dim);
        lw->wv = wmat_rows(qkv, c->q_dim + c->kv_dim, c->kv_dim);
        lw->w1 = wmat_rows(up, 0, c->hidden_dim);
        lw->w3 = wmat_rows(up, c->hidden_dim, c->hidden_dim);
    }
}

/* The architecture's per-layer vectors and rope_freqs.weight (arch.c says
 * which); vectors must be F32 (or F16/BF16, widened). */
static int bind_arch(loader *L)
{
    pd_model *m = L->m;
    pd_config *c = &m->cfg;
    pd__arch_vec v[PD__ARCH_MAX_VECS];
    const int nv = pd__arch_layer_vecs(c, v);
    int rc;
    if (pd__arch_fused(c->arch) && (rc = bind_fused(L)) < 0) return rc;
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < nv; i++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s", l, v[i].name);
            const float **dst = (const float **)((char *)&m->w.layers[l] + v[i].field);
            rc = want_any(L, name, v[i].n, 0, dst, NULL, !v[i].required);
            if (rc < 0 && (v[i].required || rc != PD_ENOTFOUND)) return rc;
        }
    if (pd__arch_has_rope_freqs(c->arch)) {
        rc = want_any(L, "rope_freqs.weight", c->head_dim / 2, 0, &m->w.rope_freqs, NULL, 1);
        if (rc < 0 && rc != PD_ENOTFOUND) return rc;
        if (rc == PD_OK) c->rope_scaling = PD_ROPE_SCALING_LLAMA3;
        else if (c->rope_scaling == PD_ROPE_SCALING_LLAMA3)
            return pd_err_set(L->err, PD_ENOTFOUND,
                              "%s: rope.scaling.type is llama3 but tensor rope_freqs.weight "
                              "(its per-pair factors) is missing",
                              L->path);
    }
    return PD_OK;
}

/* Every tensor of the file must have been bound: an extra tensor (an output
 * bias, a layer norm bias, a tensor of another architecture) would change
 * the math, so it is refused by name rather than ignored. */
static int check_unused(loader *L)
{
    for (size_t i = 0; i < L->g->n_tensors; i++) {
        const pd_gguf_tensor *t = &L->g->tensors[i];
        int used = 0;
        for (int j = 0; j < L->n_bind && !used; j++) used = L->b[j].t == t;
        if (!used)
            return pd_err_set(L->err, PD_EUNSUPPORTED,
                              "%s: tensor %.*s is not used by prefixd's %s architecture and "
                              "would change the math; refusing the model rather than ignoring "
                              "it",
                              L->path, (int)(t->name.len < 80 ? t->name.len : 80), t->name.ptr,
                              pd_arch_name(L->m->cfg.arch));
    }
    return PD_OK;
}

static int bind_weights(loader *L)
{
    pd_model *m = L->m;
    const pd_config *c = &m->cfg;
    int64_t D = c->dim, KV = c->kv_dim, H = c->hidden_dim, V = c->vocab_size, QD = c->q_dim;
    int rc;
    m->w.layers = calloc((size_t)c->n_layers, sizeof *m->w.layers);
    L->b = calloc((size_t)c->n_layers * (9 + PD__ARCH_MAX_VECS) + 4, sizeof *L->b);
    if (!m->w.layers || !L->b) return pd_err_set(L->err, PD_ENOMEM, "%s: out of memory", L->path);

    if ((rc = want_mat(L, "token_embd.weight", D, V, &m->w.token_embedding, 0)) < 0) return rc;
    for (int l = 0; l < c->n_layers; l++) {
        pd_layer_weights *lw = &m->w.layers[l];
        struct {
            const char *name;
            int64_t ne0, ne1;
            const float **dst; /* a vector, */
            pd_wmat *mat;      /* or a matrix */
        } lt[9] = {
            {"attn_norm", D, 0, &lw->rms_att, NULL}, {"attn_q", D, QD, NULL, &lw->wq},
            {"attn_k", D, KV, NULL, &lw->wk},        {"attn_v", D, KV, NULL, &lw->wv},
            {"attn_output", QD, D, NULL, &lw->wo},   {"ffn_norm", D, 0, &lw->rms_ffn, NULL},
            {"ffn_gate", D, H, NULL, &lw->w1},       {"ffn_down", H, D, NULL, &lw->w2},
            {"ffn_up", D, H, NULL, &lw->w3},
        };
        for (int i = 0; i < 9; i++) {
            char name[64];
            /* fused architectures store q/k/v and gate/up together (bind_arch) */
            if (pd__arch_fused(c->arch) && lt[i].mat && lt[i].mat != &lw->wo &&
                lt[i].mat != &lw->w2)
                continue;
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, lt[i].name);
            if ((rc = want_any(L, name, lt[i].ne0, lt[i].ne1, lt[i].dst, lt[i].mat, 0)) < 0)
                return rc;
        }
    }
    if ((rc = want(L, "output_norm.weight", D, &m->w.rms_final)) < 0) return rc;
    rc = want_mat(L, "output.weight", D, V, &m->w.wcls, 1);
    if (rc == PD_ENOTFOUND) m->tied_classifier = 1;
    else if (rc < 0) return rc;
    if ((rc = bind_arch(L)) < 0 || (rc = check_unused(L)) < 0) return rc;

    /* widened tensors share one buffer */
    uint64_t total = 0;
    for (int i = 0; i < L->n_bind; i++)
        if (L->b[i].widen) total += L->b[i].t->n_elems; /* each <= file size: no overflow */
    if (total > SIZE_MAX / sizeof(float))
        return pd_err_set(L->err, PD_ENOMEM, "%s: weights too large", L->path);
    if (total) {
        m->owned = malloc((size_t)total * sizeof(float));
        if (!m->owned)
            return pd_err_set(L->err, PD_ENOMEM, "%s: out of memory widening %llu weights to F32",
                              L->path, (unsigned long long)total);
    }
    float *next = m->owned;
    for (int i = 0; i < L->n_bind; i++) {
        const binding *b = &L->b[i];
        size_t n = (size_t)b->t->n_elems;
        if (b->mat && !b->widen) {
            *b->mat = (pd_wmat){.data = b->t->data,
                                .type = b->t->type, /* pd_qtype ids are ggml's */
                                .rows = (int)b->t->ne[1],
                                .cols = (int)b->t->ne[0],
                                .row_bytes = pd_qtype_row_bytes(b->t->type, b->t->ne[0])};
            continue;
        }
        if (!b->widen) {
            *b->dst = b->t->data;
            continue;
        }
        switch (b->t->type) {
        case PD_GGML_F32: memcpy(next, b->t->data, n * sizeof(float)); break;
        case PD_GGML_F16: pd_f16_to_f32_n(b->t->data, next, n); break;
        case PD_GGML_BF16: pd_bf16_to_f32_n(b->t->data, next, n); break;
        default: PD_ASSERT(0 && "type checked in want()");
        }
        if (b->mat)
            *b->mat = pd_wmat_f32(next, (int)b->t->ne[1], (int)b->t->ne[0]);
        else
            *b->dst = next;
        next += n;
    }
    if (m->tied_classifier) m->w.wcls = m->w.token_embedding;
    if (L->fused) split_fused(L);
    m->weight_type = m->w.layers[0].wq.type; /* pd_qtype ids are ggml's */
    m->dtype = dtype_of_ggml(m->weight_type);
    return PD_OK;
}

static int list_tensors(loader *L)
{
    pd_model *m = L->m;
    const pd_gguf *g = L->g;
    if (g->n_tensors > INT_MAX)
        return pd_err_set(L->err, PD_EFORMAT, "%s: too many tensors", L->path);
    m->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *m->tensors);
    if (!m->tensors) return pd_err_set(L->err, PD_ENOMEM, "%s: out of memory", L->path);
    for (size_t i = 0; i < g->n_tensors; i++) {
        const pd_gguf_tensor *t = &g->tensors[i];
        pd_tensor_info *ti = &m->tensors[i];
        snprintf(ti->name, sizeof ti->name, "%.*s", (int)t->name.len, t->name.ptr);
        ti->n_dims = t->n_dims;
        memcpy(ti->shape, t->ne, sizeof ti->shape);
        ti->dtype = dtype_of_ggml(t->type);
        ti->type = t->type;
        ti->offset = t->file_offset;
        ti->nbytes = t->nbytes;
    }
    m->n_tensors = (int)g->n_tensors;
    return PD_OK;
}

/* Checks that there is a tokenizer and returns its token strings (borrowed);
 * pd_tokenizer_load_gguf checks the rest. */
static int find_tokens(loader *L, const pd_gguf_str **tokens, uint64_t *n)
{
    if (!pd_gguf_find_kv(L->g, "tokenizer.ggml.model"))
        return pd_err_set(L->err, PD_ENOTFOUND,
                          "%s: no tokenizer in the file (tokenizer.ggml.model is missing)",
                          L->path);
    if (!pd_gguf_find_kv(L->g, "tokenizer.ggml.tokens"))
        return pd_err_set(L->err, PD_ENOTFOUND,
                          "%s: no tokenizer in the file (tokenizer.ggml.tokens is missing)",
                          L->path);
    return pd_gguf_get_str_arr(L->g, "tokenizer.ggml.tokens", tokens, n, L->err);
}

int pd__model_load_gguf(pd_model *m, const char *path, pd_err *err)
{
    pd_gguf *g = NULL;
    int rc = pd_map_file(path, &m->map, &m->map_size, err);
    if (rc < 0) return rc;
    if ((rc = pd_gguf_parse(m->map, m->map_size, path, &g, err)) < 0) return rc;
    loader L = {m, g, path, err, NULL, 0, NULL};
    const pd_gguf_str *tokens = NULL;
    uint64_t n_tokens = 0;
    int64_t vocab;
    m->format = PD_FORMAT_GGUF;
    if ((rc = read_config(&L)) < 0 || (rc = find_tokens(&L, &tokens, &n_tokens)) < 0) goto done;
    char vkey[48];
    snprintf(vkey, sizeof vkey, "%s.vocab_size", pd__arch_prefix(m->cfg.arch));
    if (pd_gguf_find_kv(g, vkey)) {
        if ((rc = pd_gguf_get_int(g, vkey, 1, INT_MAX, &vocab, err)) < 0)
            goto done;
    } else {
        vocab = (int64_t)n_tokens;
    }
    if ((uint64_t)vocab != n_tokens) {
        rc = pd_err_set(err, PD_EFORMAT,
                        "%s: the tokenizer has %llu tokens but %s is %lld", path,
                        (unsigned long long)n_tokens, vkey, (long long)vocab);
        goto done;
    }
    if (vocab > INT_MAX) {
        rc = pd_err_set(err, PD_EFORMAT, "%s: %lld tokens is too many", path, (long long)vocab);
        goto done;
    }
    m->cfg.vocab_size = (int)vocab;
    if ((rc = pd_config_validate(&m->cfg, path, err)) >= 0 &&
        (rc = bind_weights(&L)) >= 0 && (rc = list_tensors(&L)) >= 0)
        rc = pd_tokenizer_load_gguf(g, &m->tok, err);
done:
    free(L.b);
    free(L.fused);
    pd_gguf_free(g);
    return rc;
}

/* ---- writing ---- */

typedef struct out_tensor {
    char name[64];
    const float *src;   /* (ne0) a vector, or */
    const pd_wmat *mat; /* (ne1, ne0) a matrix */
    int64_t ne0, ne1;   /* ne1 == 0: 1-D */
} out_tensor;

/* "<arch>.suffix" into buf (the architecture's key prefix, arch.c). */
static const char *arch_key(char *buf, size_t cap, const pd_config *c, const char *suffix)
{
    snprintf(buf, cap, "%s.%s", pd__arch_prefix(c->arch), suffix);
    return buf;
}

/* The variant's keys: explicit head size, rope scaling, sliding window. */
static int add_arch_metadata(pd_gguf_writer *w, const pd_config *c, pd_err *err)
{
    char k[96];
    int rc;
#define KEY(suffix) arch_key(k, sizeof k, c, suffix)
    if (c->q_dim != c->dim &&
        ((rc = pd_gguf_add_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim, err)) < 0 ||
         (rc = pd_gguf_add_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim, err)) < 0))
        return rc;
    if (c->rope_scaling == PD_ROPE_SCALING_LINEAR &&
        ((rc = pd_gguf_add_str(w, KEY("rope.scaling.type"), "linear", err)) < 0 ||
         (rc = pd_gguf_add_f32(w, KEY("rope.scaling.factor"), 1.0f / c->rope_freq_scale, err)) <
             0))
        return rc;
    /* phi3 files always state it (0: none, as Phi-4's) */
    if ((c->sliding_window > 0 || c->arch == PD_ARCH_PHI3) &&
        (rc = pd_gguf_add_u32(w, KEY("attention.sliding_window"), (uint32_t)c->sliding_window,
                              err)) < 0)
        return rc;
#undef KEY
    return PD_OK;
}

static int add_metadata(pd_gguf_writer *w, const pd_model *m, int dtype, const char *name,
                        pd_err *err)
{
    const pd_config *c = &m->cfg;
    static const uint32_t file_type[] = {0, 1, 32}; /* llama.cpp: ALL_F32, MOSTLY_F16, MOSTLY_BF16 */
    const int ctx = c->ctx_train > 0 ? c->ctx_train : c->seq_len;
    char k[96];
    int rc;
#define KEY(suffix) arch_key(k, sizeof k, c, suffix)
    if ((rc = pd_gguf_add_str(w, "general.architecture", pd__arch_prefix(c->arch), err)) < 0 ||
        (rc = pd_gguf_add_str(w, "general.name", name, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "general.file_type", file_type[dtype], err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("context_length"), (uint32_t)ctx, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("embedding_length"), (uint32_t)c->dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("block_count"), (uint32_t)c->n_layers, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("feed_forward_length"), (uint32_t)c->hidden_dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("attention.head_count"), (uint32_t)c->n_heads, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_heads,
                              err)) < 0 ||
        (rc = pd_gguf_add_f32(w, KEY("rope.freq_base"), c->rope_base, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, KEY("rope.dimension_count"), (uint32_t)c->head_dim, err)) < 0 ||
        (rc = pd_gguf_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->norm_eps, err)) <
            0 ||
        (rc = pd_gguf_add_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size, err)) < 0)
        return rc;
#undef KEY
    return add_arch_metadata(w, c, err);
}

/* The matrix a, b (and c) were cut from (split_fused): they must be
 * consecutive row bands of one matrix. */
static pd_wmat fused_of(const pd_wmat *a, const pd_wmat *b, const pd_wmat *c)
{
    pd_wmat f = *a;
    const unsigned char *end = (const unsigned char *)a->data + (size_t)a->rows * a->row_bytes;
    PD_ASSERT(b->data == end && b->type == a->type && b->cols == a->cols);
    f.rows += b->rows;
    if (c) {
        PD_ASSERT(c->data == end + (size_t)b->rows * b->row_bytes && c->type == a->type);
        f.rows += c->rows;
    }
    return f;
}

int pd_gguf_write_model(const pd_model *m, const char *path, int dtype, const char *name,
                        pd_err *err)
{
    const pd_config *c = &m->cfg;
    int gtype = ggml_of_dtype(dtype);
    if (gtype < 0) return pd_err_set(err, PD_EINVAL, "%s: unknown dtype %d", path, dtype);
    PD_ASSERT(m->tok && m->w.layers);
    int64_t D = c->dim, KV = c->kv_dim, H = c->hidden_dim, V = c->vocab_size;
    const int64_t QD = c->q_dim;
    pd__arch_vec vecs[PD__ARCH_MAX_VECS];
    const int n_vecs = pd__arch_layer_vecs(c, vecs);
    int n_out = 4 + (9 + n_vecs) * c->n_layers;
    out_tensor *ts = calloc((size_t)n_out, sizeof *ts);
    pd_wmat *fused = NULL; /* (n_layers, 2) phi3's attn_qkv and ffn_up */
    if (pd__arch_fused(c->arch) && !(fused = calloc((size_t)c->n_layers * 2, sizeof *fused))) {
        free(ts);
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
    }
    unsigned char *conv = NULL; /* converted matrices */
    float *row = NULL;          /* one dequantised row */
    pd_gguf_writer *w = NULL;
    int rc;
    if (!ts) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
        goto done;
    }

    /* the tensor list, in llama.cpp's order */
    int k = 0;
#define OUT(src_, mat_, ne0_, ne1_, ...)                                \
    do {                                                                \
        snprintf(ts[k].name, sizeof ts[k].name, __VA_ARGS__);           \
        ts[k].src = (src_);                                             \
        ts[k].mat = (mat_);                                             \
        ts[k].ne0 = (ne0_);                                             \
        ts[k].ne1 = (ne1_);                                             \
        k++;                                                            \
    } while (0)
    OUT(NULL, &m->w.token_embedding, D, V, "token_embd.weight");
    OUT(m->w.rms_final, NULL, D, 0, "output_norm.weight");
    if (!m->tied_classifier) OUT(NULL, &m->w.wcls, D, V, "output.weight");
    if (m->w.rope_freqs) OUT(m->w.rope_freqs, NULL, c->head_dim / 2, 0, "rope_freqs.weight");
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *lw = &m->w.layers[l];
        OUT(lw->rms_att, NULL, D, 0, "blk.%d.attn_norm.weight", l);
        if (fused) {
            /* the views of one loaded attn_qkv / ffn_up are contiguous bands */
            fused[2 * l] = fused_of(&lw->wq, &lw->wk, &lw->wv);
            fused[2 * l + 1] = fused_of(&lw->w1, &lw->w3, NULL);
            OUT(NULL, &fused[2 * l], D, QD + 2 * KV, "blk.%d.attn_qkv.weight", l);
            OUT(NULL, &lw->wo, QD, D, "blk.%d.attn_output.weight", l);
            OUT(lw->rms_ffn, NULL, D, 0, "blk.%d.ffn_norm.weight", l);
            OUT(NULL, &lw->w2, H, D, "blk.%d.ffn_down.weight", l);
            OUT(NULL, &fused[2 * l + 1], D, 2 * H, "blk.%d.ffn_up.weight", l);
            continue;
        }
        OUT(NULL, &lw->wq, D, QD, "blk.%d.attn_q.weight", l);
        OUT(NULL, &lw->wk, D, KV, "blk.%d.attn_k.weight", l);
        OUT(NULL, &lw->wv, D, KV, "blk.%d.attn_v.weight", l);
        OUT(NULL, &lw->wo, QD, D, "blk.%d.attn_output.weight", l);
        for (int i = 0; i < n_vecs; i++) {
            const float *v = *(const float *const *)((const char *)lw + vecs[i].field);
            if (v) OUT(v, NULL, vecs[i].n, 0, "blk.%d.%s", l, vecs[i].name);
        }
        OUT(lw->rms_ffn, NULL, D, 0, "blk.%d.ffn_norm.weight", l);
        OUT(NULL, &lw->w1, D, H, "blk.%d.ffn_gate.weight", l);
        OUT(NULL, &lw->w2, H, D, "blk.%d.ffn_down.weight", l);
        OUT(NULL, &lw->w3, D, H, "blk.%d.ffn_up.weight", l);
    }
#undef OUT
    PD_ASSERT(k <= n_out);

    /* matrices not stored as gtype are converted into one buffer, row by row */
    const size_t esize = gtype == PD_GGML_F32 ? sizeof(float) : sizeof(uint16_t);
    uint64_t total = 0;
    for (int i = 0; i < k; i++)
        if (ts[i].mat && ts[i].mat->type != gtype)
            total += (uint64_t)ts[i].ne0 * (uint64_t)ts[i].ne1 * esize;
    conv = malloc(total ? (size_t)total : 1);
    row = malloc((size_t)(D > H ? (D > QD ? D : QD) : (H > QD ? H : QD)) * sizeof *row);
    if (!conv || !row) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory for %llu bytes of %s weights", path,
                        (unsigned long long)total, pd_dtype_name(dtype));
        goto done;
    }

    if ((rc = pd_gguf_writer_create(&w, err)) < 0 ||
        (rc = add_metadata(w, m, dtype, name ? name : m->id, err)) < 0 ||
        (rc = pd_tokenizer_write_gguf(m->tok, w, err)) < 0)
        goto done;
    unsigned char *next = conv;
    for (int i = 0; i < k; i++) {
        const out_tensor *t = &ts[i];
        int64_t ne[2] = {t->ne0, t->ne1};
        int n_dims = t->ne1 ? 2 : 1;
        if (!t->mat) {
            rc = pd_gguf_add_tensor(w, t->name, n_dims, ne, PD_GGML_F32, t->src, err);
        } else if (t->mat->type == gtype) {
            rc = pd_gguf_add_tensor(w, t->name, n_dims, ne, gtype, t->mat->data, err);
        } else {
            const unsigned char *start = next;
            for (int r = 0; r < t->mat->rows; r++) {
                pd_wmat_row_f32(t->mat, r, row);
                for (int64_t j = 0; j < t->ne0; j++, next += esize) {
                    uint16_t h = gtype == PD_GGML_F16 ? pd_f32_to_f16(row[j])
                                                      : pd_f32_to_bf16(row[j]);
                    if (gtype == PD_GGML_F32) memcpy(next, &row[j], esize);
                    else memcpy(next, &h, esize);
                }
            }
            rc = pd_gguf_add_tensor(w, t->name, n_dims, ne, gtype, start, err);
        }
        if (rc < 0) goto done;
    }
    rc = pd_gguf_writer_write(w, path, err);
done:
    pd_gguf_writer_free(w);
    free(fused);
    free(conv);
    free(row);
    free(ts);
    return rc;
}
