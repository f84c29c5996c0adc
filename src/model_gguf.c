/* model_gguf.c — the llama model in GGUF: loading (pd__model_load_gguf) and
 * writing a loaded model back out (pd_gguf_write_model, behind `prefixd
 * convert`).
 *
 * Conventions (llama.cpp's): general.architecture = "llama"; hyper-parameters
 * under llama.*; tensors token_embd.weight, blk.N.{attn_norm, attn_q, attn_k,
 * attn_v, attn_output, ffn_norm, ffn_gate, ffn_down, ffn_up}.weight,
 * output_norm.weight and output.weight (absent: the classifier is tied to the
 * embedding); the tokenizer under tokenizer.ggml.* with SentencePiece's
 * U+2581 for space. ggml's ne[0] is the row length, so a row-major [out][in]
 * matrix has ne = {in, out}: the same bytes as llama2.c's, and the rotary
 * pairs are adjacent in both, so nothing is permuted.
 *
 * Storage: F32 tensors point straight into the read-only mapping (m->map)
 * when 4-byte aligned; F16/BF16 (and misaligned F32) tensors are widened into
 * one owned buffer (m->owned) sliced per tensor. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"
#include "prefixd/gguf.h"
#include "prefixd/half.h"
#include "prefixd/model.h"

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

/* One weight to bind: where it is in the file and which model pointer gets
 * it. */
typedef struct binding {
    const pd_gguf_tensor *t;
    const float **dst;
    int widen; /* 1: converted into m->owned */
} binding;

typedef struct loader {
    pd_model *m;
    const pd_gguf *g;
    const char *path;
    pd_err *err;
    binding *b; /* (n_bind) */
    int n_bind;
} loader;

/* Reads an integer key into an int in [1, INT_MAX]; def < 0 means required. */
static int get_dim(loader *L, const char *key, int def, int *out)
{
    int64_t v = 0;
    if (def >= 0 && !pd_gguf_find_kv(L->g, key)) {
        *out = def;
        return PD_OK;
    }
    int rc = pd_gguf_get_int(L->g, key, 1, INT_MAX, &v, L->err);
    if (rc == PD_ENOTFOUND)
        return pd_err_set(L->err, PD_ENOTFOUND, "%s: required key %s is missing", L->path, key);
    if (rc < 0) return rc;
    *out = (int)v;
    return PD_OK;
}

static int get_real(loader *L, const char *key, float def, float *out)
{
    double v = 0;
    if (!pd_gguf_find_kv(L->g, key)) {
        *out = def;
        return PD_OK;
    }
    int rc = pd_gguf_get_float(L->g, key, &v, L->err);
    if (rc < 0) return rc;
    *out = (float)v;
    return PD_OK;
}

static int read_config(loader *L)
{
    pd_config *c = &L->m->cfg;
    pd_gguf_str arch;
    char buf[64];
    int rc;
    if (!pd_gguf_find_kv(L->g, "general.architecture"))
        return pd_err_set(L->err, PD_EFORMAT,
                          "%s: general.architecture is missing (not a model file?)", L->path);
    if ((rc = pd_gguf_get_str(L->g, "general.architecture", &arch, L->err)) < 0) return rc;
    if (!pd_gguf_str_eq(arch, "llama")) {
        snprintf(buf, sizeof buf, "%.*s", (int)(arch.len < 40 ? arch.len : 40), arch.ptr);
        return pd_err_set(L->err, PD_EUNSUPPORTED,
                          "%s: general.architecture is '%s'; prefixd runs 'llama' models only",
                          L->path, buf);
    }
    if ((rc = get_dim(L, "llama.context_length", -1, &c->seq_len)) < 0 ||
        (rc = get_dim(L, "llama.embedding_length", -1, &c->dim)) < 0 ||
        (rc = get_dim(L, "llama.block_count", -1, &c->n_layers)) < 0 ||
        (rc = get_dim(L, "llama.feed_forward_length", -1, &c->hidden_dim)) < 0 ||
        (rc = get_dim(L, "llama.attention.head_count", -1, &c->n_heads)) < 0 ||
        (rc = get_dim(L, "llama.attention.head_count_kv", c->n_heads, &c->n_kv_heads)) < 0)
        return rc;
    if ((rc = get_real(L, "llama.rope.freq_base", 10000.0f, &c->rope_base)) < 0 ||
        (rc = get_real(L, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps)) < 0)
        return rc;
    c->head_dim = c->dim / c->n_heads;
    int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    c->kv_dim = kv_dim > INT_MAX ? -1 : (int)kv_dim; /* pd_config_validate refuses it */
    return PD_OK;
}

/* Keys that must agree with a validated config, or name unsupported
 * variants. */
static int check_variant(loader *L)
{
    const pd_config *c = &L->m->cfg;
    int rc;
    int64_t experts = 0;
    if (pd_gguf_find_kv(L->g, "llama.expert_count") &&
        (rc = pd_gguf_get_int(L->g, "llama.expert_count", 0, INT_MAX, &experts, L->err)) < 0)
        return rc;
    if (experts > 0)
        return pd_err_set(L->err, PD_EUNSUPPORTED,
                          "%s: llama.expert_count = %d: mixture-of-experts models are not "
                          "supported",
                          L->path, (int)experts);
    static const char *const per_head[] = {"llama.rope.dimension_count",
                                           "llama.attention.key_length",
                                           "llama.attention.value_length"};
    for (int i = 0; i < 3; i++) {
        int v = 0;
        if ((rc = get_dim(L, per_head[i], c->head_dim, &v)) < 0) return rc;
        if (v != c->head_dim)
            return pd_err_set(L->err, PD_EUNSUPPORTED,
                              "%s: %s = %d but head_dim (embedding_length / head_count) is %d; "
                              "only full rotary and standard head sizes are supported",
                              L->path, per_head[i], v, c->head_dim);
    }
    return PD_OK;
}

static void format_shape(const int64_t *ne, int n_dims, char *buf, size_t cap)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < n_dims && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", d ? ", " : "", (long long)ne[d]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

/* Finds tensor name, checks its type and shape {ne0} (ne1 == 0) or {ne0, ne1},
 * and records a binding to *dst. optional: a missing tensor returns
 * PD_ENOTFOUND without setting err. */
static int want(loader *L, const char *name, int64_t ne0, int64_t ne1, const float **dst,
                int optional)
{
    const pd_gguf_tensor *t = pd_gguf_find_tensor(L->g, name);
    if (!t) {
        if (optional) return PD_ENOTFOUND;
        return pd_err_set(L->err, PD_ENOTFOUND, "%s: tensor %s is missing", L->path, name);
    }
    if (dtype_of_ggml(t->type) < 0)
        return pd_err_set(L->err, PD_EUNSUPPORTED,
                          "%s: tensor %s has type %s; only F32, F16 and BF16 can be loaded "
                          "(quantised types are not supported yet)",
                          L->path, name, pd_ggml_type_name(t->type));
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
    binding *b = &L->b[L->n_bind++];
    b->t = t;
    b->dst = dst;
    b->widen = t->type != PD_GGML_F32 || ((uintptr_t)t->data % _Alignof(float)) != 0;
    return PD_OK;
}

static int bind_weights(loader *L)
{
    pd_model *m = L->m;
    const pd_config *c = &m->cfg;
    int64_t D = c->dim, KV = c->kv_dim, H = c->hidden_dim, V = c->vocab_size;
    int rc;
    m->w.layers = calloc((size_t)c->n_layers, sizeof *m->w.layers);
    L->b = calloc((size_t)c->n_layers * 9 + 3, sizeof *L->b);
    if (!m->w.layers || !L->b) return pd_err_set(L->err, PD_ENOMEM, "%s: out of memory", L->path);

    if ((rc = want(L, "token_embd.weight", D, V, &m->w.token_embedding, 0)) < 0) return rc;
    for (int l = 0; l < c->n_layers; l++) {
        pd_layer_weights *lw = &m->w.layers[l];
        struct {
            const char *name;
            int64_t ne0, ne1;
            const float **dst;
        } lt[9] = {
            {"attn_norm", D, 0, &lw->rms_att}, {"attn_q", D, D, &lw->wq},
            {"attn_k", D, KV, &lw->wk},        {"attn_v", D, KV, &lw->wv},
            {"attn_output", D, D, &lw->wo},    {"ffn_norm", D, 0, &lw->rms_ffn},
            {"ffn_gate", D, H, &lw->w1},       {"ffn_down", H, D, &lw->w2},
            {"ffn_up", D, H, &lw->w3},
        };
        for (int i = 0; i < 9; i++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, lt[i].name);
            if ((rc = want(L, name, lt[i].ne0, lt[i].ne1, lt[i].dst, 0)) < 0) return rc;
        }
    }
    if ((rc = want(L, "output_norm.weight", D, 0, &m->w.rms_final, 0)) < 0) return rc;
    rc = want(L, "output.weight", D, V, &m->w.wcls, 1);
    if (rc == PD_ENOTFOUND) m->tied_classifier = 1;
    else if (rc < 0) return rc;

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
        *b->dst = next;
        next += n;
    }
    if (m->tied_classifier) m->w.wcls = m->w.token_embedding;
    m->dtype = dtype_of_ggml(pd_gguf_find_tensor(L->g, "blk.0.attn_q.weight")->type);
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
    loader L = {m, g, path, err, NULL, 0};
    const pd_gguf_str *tokens = NULL;
    uint64_t n_tokens = 0;
    int64_t vocab;
    m->format = PD_FORMAT_GGUF;
    if ((rc = read_config(&L)) < 0 || (rc = find_tokens(&L, &tokens, &n_tokens)) < 0) goto done;
    if (pd_gguf_find_kv(g, "llama.vocab_size")) {
        if ((rc = pd_gguf_get_int(g, "llama.vocab_size", 1, INT_MAX, &vocab, err)) < 0)
            goto done;
    } else {
        vocab = (int64_t)n_tokens;
    }
    if ((uint64_t)vocab != n_tokens) {
        rc = pd_err_set(err, PD_EFORMAT,
                        "%s: the tokenizer has %llu tokens but llama.vocab_size is %lld", path,
                        (unsigned long long)n_tokens, (long long)vocab);
        goto done;
    }
    if (vocab > INT_MAX) {
        rc = pd_err_set(err, PD_EFORMAT, "%s: %lld tokens is too many", path, (long long)vocab);
        goto done;
    }
    m->cfg.vocab_size = (int)vocab;
    if ((rc = pd_config_validate(&m->cfg, path, err)) >= 0 && (rc = check_variant(&L)) >= 0 &&
        (rc = bind_weights(&L)) >= 0 && (rc = list_tensors(&L)) >= 0)
        rc = pd_tokenizer_load_gguf(g, &m->tok, err);
done:
    free(L.b);
    pd_gguf_free(g);
    return rc;
}

/* ---- writing ---- */

typedef struct out_tensor {
    char name[64];
    const float *src; /* (ne1, ne0) */
    int64_t ne0, ne1; /* ne1 == 0: 1-D */
} out_tensor;

static int add_metadata(pd_gguf_writer *w, const pd_model *m, int dtype, const char *name,
                        pd_err *err)
{
    const pd_config *c = &m->cfg;
    static const uint32_t file_type[] = {0, 1, 32}; /* llama.cpp: ALL_F32, MOSTLY_F16, MOSTLY_BF16 */
    int rc;
    if ((rc = pd_gguf_add_str(w, "general.architecture", "llama", err)) < 0 ||
        (rc = pd_gguf_add_str(w, "general.name", name, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "general.file_type", file_type[dtype], err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.context_length", (uint32_t)c->seq_len, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.embedding_length", (uint32_t)c->dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.block_count", (uint32_t)c->n_layers, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads,
                              err)) < 0 ||
        (rc = pd_gguf_add_f32(w, "llama.rope.freq_base", c->rope_base, err)) < 0 ||
        (rc = pd_gguf_add_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_dim, err)) < 0 ||
        (rc = pd_gguf_add_f32(w, "llama.attention.layer_norm_rms_epsilon", c->norm_eps, err)) <
            0 ||
        (rc = pd_gguf_add_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size, err)) < 0)
        return rc;
    return PD_OK;
}

int pd_gguf_write_model(const pd_model *m, const char *path, int dtype, const char *name,
                        pd_err *err)
{
    const pd_config *c = &m->cfg;
    int gtype = ggml_of_dtype(dtype);
    if (gtype < 0) return pd_err_set(err, PD_EINVAL, "%s: unknown dtype %d", path, dtype);
    PD_ASSERT(m->tok && m->w.layers);
    int64_t D = c->dim, KV = c->kv_dim, H = c->hidden_dim, V = c->vocab_size;
    int n_out = 3 + 9 * c->n_layers;
    out_tensor *ts = calloc((size_t)n_out, sizeof *ts);
    uint16_t *narrow = NULL;
    pd_gguf_writer *w = NULL;
    int rc;
    if (!ts) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
        goto done;
    }

    /* the tensor list, in llama.cpp's order */
    int k = 0;
#define OUT(src_, ne0_, ne1_, ...)                                      \
    do {                                                                \
        snprintf(ts[k].name, sizeof ts[k].name, __VA_ARGS__);           \
        ts[k].src = (src_);                                             \
        ts[k].ne0 = (ne0_);                                             \
        ts[k].ne1 = (ne1_);                                             \
        k++;                                                            \
    } while (0)
    OUT(m->w.token_embedding, D, V, "token_embd.weight");
    OUT(m->w.rms_final, D, 0, "output_norm.weight");
    if (!m->tied_classifier) OUT(m->w.wcls, D, V, "output.weight");
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *lw = &m->w.layers[l];
        OUT(lw->rms_att, D, 0, "blk.%d.attn_norm.weight", l);
        OUT(lw->wq, D, D, "blk.%d.attn_q.weight", l);
        OUT(lw->wk, D, KV, "blk.%d.attn_k.weight", l);
        OUT(lw->wv, D, KV, "blk.%d.attn_v.weight", l);
        OUT(lw->wo, D, D, "blk.%d.attn_output.weight", l);
        OUT(lw->rms_ffn, D, 0, "blk.%d.ffn_norm.weight", l);
        OUT(lw->w1, D, H, "blk.%d.ffn_gate.weight", l);
        OUT(lw->w2, H, D, "blk.%d.ffn_down.weight", l);
        OUT(lw->w3, D, H, "blk.%d.ffn_up.weight", l);
    }
#undef OUT
    PD_ASSERT(k <= n_out);

    /* F16/BF16: the matrices narrowed into one buffer */
    if (gtype != PD_GGML_F32) {
        uint64_t total = 0;
        for (int i = 0; i < k; i++)
            if (ts[i].ne1) total += (uint64_t)ts[i].ne0 * (uint64_t)ts[i].ne1;
        narrow = malloc((size_t)total * sizeof *narrow);
        if (!narrow) {
            rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory for %llu %s weights", path,
                            (unsigned long long)total, pd_dtype_name(dtype));
            goto done;
        }
    }

    if ((rc = pd_gguf_writer_create(&w, err)) < 0 ||
        (rc = add_metadata(w, m, dtype, name ? name : m->id, err)) < 0 ||
        (rc = pd_tokenizer_write_gguf(m->tok, w, err)) < 0)
        goto done;
    uint16_t *next = narrow;
    for (int i = 0; i < k; i++) {
        const out_tensor *t = &ts[i];
        int64_t ne[2] = {t->ne0, t->ne1};
        int n_dims = t->ne1 ? 2 : 1;
        if (gtype == PD_GGML_F32 || !t->ne1) {
            rc = pd_gguf_add_tensor(w, t->name, n_dims, ne, PD_GGML_F32, t->src, err);
        } else {
            size_t n = (size_t)t->ne0 * (size_t)t->ne1;
            for (size_t j = 0; j < n; j++)
                next[j] = gtype == PD_GGML_F16 ? pd_f32_to_f16(t->src[j])
                                               : pd_f32_to_bf16(t->src[j]);
            rc = pd_gguf_add_tensor(w, t->name, n_dims, ne, gtype, next, err);
            next += n;
        }
        if (rc < 0) goto done;
    }
    rc = pd_gguf_writer_write(w, path, err);
done:
    pd_gguf_writer_free(w);
    free(narrow);
    free(ts);
    return rc;
}
