/* arch.c — the architectures prefixd runs from GGUF, and how each one's
 * hyper-parameters and extra tensors are read (contract in arch.h).
 *
 *   llama  RMSNorm, adjacent-pair rotary (the converter permuted q/k),
 *          optional q/k/v biases, rope scaling: linear (rope.scaling.factor)
 *          or Llama 3 (per-pair factors in rope_freqs.weight).
 *   qwen2  llama + q/k/v biases (required), NeoX rotary (halves).
 *   qwen3  llama + per-head RMSNorm of q and k before rotary
 *          (attn_q_norm/attn_k_norm, head_dim each), NeoX rotary, and often
 *          attention.key_length != embedding_length / head_count.
 *   phi3   Phi-3 / Phi-4: q, k, v in one matrix (attn_qkv, rows q then k
 *          then v), gate and up in one (ffn_up, rows gate then up: SwiGLU
 *          on the halves), NeoX rotary, a sliding window (0 for Phi-4; the
 *          defaults llama.cpp assumes when older files lack the key);
 *          LongRoPE files (rope_factors_long/short) are refused.
 *
 * Every "<arch>." key is either read, known to be harmless for these
 * architectures, or refused by name: a key prefixd does not understand may
 * change the math, and silently ignoring it gives wrong output. */
#include "arch.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const arch_names[] = {"llama", "qwen2", "qwen3", "phi3"};

const char *pd_arch_name(int arch)
{
    return arch >= 0 && arch <= PD_ARCH_PHI3 ? arch_names[arch] : "?";
}

const char *pd__arch_prefix(int arch) { return pd_arch_name(arch); }

const char *pd_rope_type_name(int t)
{
    return t == PD_ROPE_NORM ? "norm" : t == PD_ROPE_NEOX ? "neox" : "?";
}

const char *pd_rope_scaling_name(int s)
{
    switch (s) {
    case PD_ROPE_SCALING_NONE: return "none";
    case PD_ROPE_SCALING_LINEAR: return "linear";
    case PD_ROPE_SCALING_LLAMA3: return "llama3";
    default: return "?";
    }
}

int pd__arch_has_rope_freqs(int arch) { return arch == PD_ARCH_LLAMA; }

int pd__arch_fused(int arch) { return arch == PD_ARCH_PHI3; }

int pd__arch_layer_vecs(const pd_config *c, pd__arch_vec v[PD__ARCH_MAX_VECS])
{
    int n = 0;
    const int bias_required = c->arch == PD_ARCH_QWEN2;
    if (c->arch == PD_ARCH_LLAMA || c->arch == PD_ARCH_QWEN2) {
        v[n++] = (pd__arch_vec){"attn_q.bias", c->q_dim, bias_required,
                                offsetof(pd_layer_weights, bq)};
        v[n++] = (pd__arch_vec){"attn_k.bias", c->kv_dim, bias_required,
                                offsetof(pd_layer_weights, bk)};
        v[n++] = (pd__arch_vec){"attn_v.bias", c->kv_dim, bias_required,
                                offsetof(pd_layer_weights, bv)};
    }
    if (c->arch == PD_ARCH_QWEN3) {
        v[n++] = (pd__arch_vec){"attn_q_norm.weight", c->head_dim, 1,
                                offsetof(pd_layer_weights, q_norm)};
        v[n++] = (pd__arch_vec){"attn_k_norm.weight", c->head_dim, 1,
                                offsetof(pd_layer_weights, k_norm)};
    }
    return n;
}

/* ---- keys ---- */

typedef struct keys {
    const pd_gguf *g;
    const char *path;
    const char *prefix; /* "llama" ... */
    pd_err *err;
} keys;

static const char *key(const keys *K, const char *suffix, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s.%s", K->prefix, suffix);
    return buf;
}

static int has(const keys *K, const char *suffix)
{
    char buf[128];
    return pd_gguf_find_kv(K->g, key(K, suffix, buf, sizeof buf)) != NULL;
}

/* An integer in [lo, INT_MAX]; def < 0 means required. */
static int get_int(const keys *K, const char *suffix, int lo, int def, int *out)
{
    char buf[128];
    int64_t v = 0;
    key(K, suffix, buf, sizeof buf);
    if (def >= 0 && !pd_gguf_find_kv(K->g, buf)) {
        *out = def;
        return PD_OK;
    }
    int rc = pd_gguf_get_int(K->g, buf, lo, INT_MAX, &v, K->err);
    if (rc == PD_ENOTFOUND)
        return pd_err_set(K->err, PD_ENOTFOUND, "%s: required key %s is missing", K->path, buf);
    if (rc < 0) return rc;
    *out = (int)v;
    return PD_OK;
}

/* A real number (FLOAT32/64, or an integer), def when absent. */
static int get_real(const keys *K, const char *suffix, double def, double *out)
{
    char buf[128];
    int64_t i;
    key(K, suffix, buf, sizeof buf);
    const pd_gguf_kv *kv = pd_gguf_find_kv(K->g, buf);
    *out = def;
    if (!kv) return PD_OK;
    if (kv->type == PD_GGUF_FLOAT32 || kv->type == PD_GGUF_FLOAT64)
        return pd_gguf_get_float(K->g, buf, out, K->err);
    int rc = pd_gguf_get_int(K->g, buf, INT64_MIN, INT64_MAX, &i, K->err);
    if (rc < 0) return rc;
    *out = (double)i;
    return PD_OK;
}

static int refuse(const keys *K, const char *suffix, const char *what, double v)
{
    return pd_err_set(K->err, PD_EUNSUPPORTED, "%s: %s.%s = %g: %s is not supported", K->path,
                      K->prefix, suffix, v, what);
}

/* Keys under "<arch>." that this file reads or that cannot change the math
 * of these architectures (YaRN's original context is only used by YaRN,
 * which is refused). Anything else under the prefix is refused. */
static const char *const known_keys[] = {
    "context_length", "embedding_length", "block_count", "feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
    "attention.key_length", "attention.value_length", "attention.sliding_window",
    "rope.freq_base", "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor",
    "rope.scale_linear", "rope.scaling.attn_factor", "rope.scaling.original_context_length",
    "rope.scaling.finetuned", "vocab_size", "expert_count", "expert_used_count",
    "tensor_data_layout"};

static int check_unknown_keys(const keys *K)
{
    const size_t plen = strlen(K->prefix);
    for (size_t i = 0; i < K->g->n_kv; i++) {
        pd_gguf_str k = K->g->kv[i].key;
        if (k.len <= plen + 1 || memcmp(k.ptr, K->prefix, plen) != 0 || k.ptr[plen] != '.')
            continue;
        int known = 0;
        for (size_t j = 0; j < sizeof known_keys / sizeof *known_keys && !known; j++)
            known = k.len - plen - 1 == strlen(known_keys[j]) &&
                    memcmp(k.ptr + plen + 1, known_keys[j], k.len - plen - 1) == 0;
        if (!known)
            return pd_err_set(K->err, PD_EUNSUPPORTED,
                              "%s: key %.*s is not implemented by prefixd and may change the "
                              "model's math (e.g. logit soft-capping, attention or residual "
                              "scales); refusing the model rather than ignoring it",
                              K->path, (int)(k.len < 80 ? k.len : 80), k.ptr);
    }
    return PD_OK;
}

static int read_rope(const keys *K, pd_config *c)
{
    char buf[128];
    int rc;
    double factor = 0, attn = 1;
    int dims = 0;
    if ((rc = get_int(K, "rope.dimension_count", 1, c->head_dim, &dims)) < 0) return rc;
    if (dims != c->head_dim)
        return pd_err_set(K->err, PD_EUNSUPPORTED,
                          "%s: %s.rope.dimension_count = %d but the head size is %d: partial "
                          "rotary is not supported",
                          K->path, K->prefix, dims, c->head_dim);
    c->rope_type = c->arch == PD_ARCH_LLAMA ? PD_ROPE_NORM : PD_ROPE_NEOX;
    c->rope_scaling = PD_ROPE_SCALING_NONE;
    c->rope_freq_scale = 1.0f;
    /* llama.cpp's default type is linear; a factor of 0 or 1 is no scaling */
    char type[32] = "linear";
    if (has(K, "rope.scaling.type")) {
        pd_gguf_str s;
        if ((rc = pd_gguf_get_str(K->g, key(K, "rope.scaling.type", buf, sizeof buf), &s,
                                  K->err)) < 0)
            return rc;
        snprintf(type, sizeof type, "%.*s", (int)(s.len < 24 ? s.len : 24), s.ptr);
        if (strcmp(type, "none") != 0 && strcmp(type, "linear") != 0 &&
            strcmp(type, "llama3") != 0)
            return pd_err_set(K->err, PD_EUNSUPPORTED,
                              "%s: %s.rope.scaling.type = '%s' is not supported (prefixd "
                              "implements none, linear and llama3 rope scaling)",
                              K->path, K->prefix, type);
    }
    if ((rc = get_real(K, "rope.scaling.factor", 0, &factor)) < 0) return rc;
    if (factor == 0 && (rc = get_real(K, "rope.scale_linear", 0, &factor)) < 0) return rc;
    if (!isfinite(factor) || factor < 0)
        return refuse(K, "rope.scaling.factor", "a negative or infinite rope factor", factor);
    if (strcmp(type, "llama3") == 0) {
        /* the factors are in rope_freqs.weight (checked when binding) */
        c->rope_scaling = PD_ROPE_SCALING_LLAMA3;
    } else if (factor != 0 && factor != 1) {
        if (strcmp(type, "none") == 0)
            return refuse(K, "rope.scaling.factor", "a rope factor with scaling type none",
                          factor);
        c->rope_scaling = PD_ROPE_SCALING_LINEAR;
        c->rope_freq_scale = (float)(1.0 / factor);
    }
    if ((rc = get_real(K, "rope.scaling.attn_factor", 1, &attn)) < 0) return rc;
    if (attn != 1) return refuse(K, "rope.scaling.attn_factor", "an attention factor != 1", attn);
    return PD_OK;
}

int pd__arch_read_config(const pd_gguf *g, const char *path, pd_config *c, pd_err *err)
{
    pd_gguf_str arch;
    char buf[64];
    int rc;
    if (!pd_gguf_find_kv(g, "general.architecture"))
        return pd_err_set(err, PD_EFORMAT,
                          "%s: general.architecture is missing (not a model file?)", path);
    if ((rc = pd_gguf_get_str(g, "general.architecture", &arch, err)) < 0) return rc;
    c->arch = -1;
    for (int a = 0; a <= PD_ARCH_PHI3; a++)
        if (pd_gguf_str_eq(arch, arch_names[a])) c->arch = a;
    if (c->arch < 0) {
        snprintf(buf, sizeof buf, "%.*s", (int)(arch.len < 40 ? arch.len : 40), arch.ptr);
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: general.architecture is '%s'; prefixd runs llama, qwen2, qwen3 "
                          "and phi3 models",
                          path, buf);
    }
    keys K = {g, path, arch_names[c->arch], err};
    if ((rc = check_unknown_keys(&K)) < 0) return rc;
    if ((rc = get_int(&K, "context_length", 1, -1, &c->seq_len)) < 0 ||
        (rc = get_int(&K, "embedding_length", 1, -1, &c->dim)) < 0 ||
        (rc = get_int(&K, "block_count", 1, -1, &c->n_layers)) < 0 ||
        (rc = get_int(&K, "feed_forward_length", 1, -1, &c->hidden_dim)) < 0 ||
        (rc = get_int(&K, "attention.head_count", 1, -1, &c->n_heads)) < 0 ||
        (rc = get_int(&K, "attention.head_count_kv", 1, c->n_heads, &c->n_kv_heads)) < 0)
        return rc;
    double base, eps;
    if ((rc = get_real(&K, "rope.freq_base", 10000.0, &base)) < 0 ||
        (rc = get_real(&K, "attention.layer_norm_rms_epsilon", 1e-5, &eps)) < 0)
        return rc;
    c->rope_base = (float)base;
    c->norm_eps = (float)eps;
    /* head size: embedding_length / head_count unless key_length says otherwise */
    int kl = 0, vl = 0;
    const int def_hd = c->dim / c->n_heads;
    if (!has(&K, "attention.key_length") && c->dim % c->n_heads != 0)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: dim %d (embedding_length) is not a multiple of n_heads %d and no "
                          "attention.key_length gives the head size",
                          path, c->dim, c->n_heads);
    if ((rc = get_int(&K, "attention.key_length", 1, def_hd, &kl)) < 0 ||
        (rc = get_int(&K, "attention.value_length", 1, def_hd, &vl)) < 0)
        return rc;
    if (kl != vl)
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: %s.attention.key_length = %d but value_length = %d: different "
                          "key and value head sizes are not supported",
                          path, K.prefix, kl, vl);
    if (kl > (1 << 12))
        return pd_err_set(err, PD_EFORMAT, "%s: %s.attention.key_length = %d is too large", path,
                          K.prefix, kl);
    c->head_dim = kl;
    int64_t qd = (int64_t)c->n_heads * kl, kvd = (int64_t)c->n_kv_heads * kl;
    c->q_dim = qd > INT_MAX ? -1 : (int)qd; /* pd_config_validate refuses -1 */
    c->kv_dim = kvd > INT_MAX ? -1 : (int)kvd;
    if ((rc = read_rope(&K, c)) < 0) return rc;
    int experts = 0;
    if ((rc = get_int(&K, "expert_count", 0, 0, &experts)) < 0) return rc;
    if (experts > 0)
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: %s.expert_count = %d: mixture-of-experts models are not supported",
                          path, K.prefix, experts);
    /* sliding window: no token may see further back than the window, so the
     * context is capped to it (exact: then no key is ever outside it) */
    c->ctx_train = c->seq_len;
    if (c->arch == PD_ARCH_PHI3 && !has(&K, "attention.sliding_window")) {
        /* older Phi-3 files: the window llama.cpp assumes for their shapes */
        if ((c->n_layers == 32 || c->n_layers == 40) && c->ctx_train == 4096)
            c->sliding_window = 2047;
        else if (c->n_layers == 32 && c->n_kv_heads == 32 && c->ctx_train == 131072)
            c->sliding_window = 262144;
        else if (c->n_layers == 40 && c->ctx_train == 131072)
            c->sliding_window = 131072;
        else
            return pd_err_set(err, PD_EFORMAT,
                              "%s: phi3.attention.sliding_window is missing and this shape has "
                              "no known default",
                              path);
    } else if ((rc = get_int(&K, "attention.sliding_window", 0, 0, &c->sliding_window)) < 0) {
        return rc;
    }
    if (c->sliding_window > 0 && c->sliding_window < c->seq_len) c->seq_len = c->sliding_window;
    return PD_OK;
}
