/* model.c — pd_model_load dispatch by file magic, validation of the
 * hyper-parameters, the fingerprint, and pd_model_free. The per-format
 * readers live in model_llama2c.c and model_gguf.c. */
#include "prefixd/model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefixd/fsutil.h"
#include "prefixd/matmul.h"

pd_model_params pd_model_default_params(void)
{
    pd_model_params p = {0};
    return p;
}

int pd_config_validate(const pd_config *c, const char *path, pd_err *err)
{
#define CHECK_RANGE(field, lo, hi)                                                       \
    if (c->field < (lo) || c->field > (hi))                                              \
        return pd_err_set(err, PD_EFORMAT, "%s: %s = %d is out of range [%d, %d]", path, \
                          #field, c->field, (int)(lo), (int)(hi));
    CHECK_RANGE(dim, 1, 1 << 16);
    CHECK_RANGE(hidden_dim, 1, 1 << 18);
    CHECK_RANGE(n_layers, 1, 1024);
    CHECK_RANGE(n_heads, 1, 1024);
    CHECK_RANGE(n_kv_heads, 1, 1024);
    CHECK_RANGE(vocab_size, 1, 1 << 22);
    CHECK_RANGE(seq_len, 1, 1 << 22);
#undef CHECK_RANGE
    if (c->q_dim == c->dim && c->dim % c->n_heads != 0)
        return pd_err_set(err, PD_EFORMAT, "%s: dim %d is not a multiple of n_heads %d", path,
                          c->dim, c->n_heads);
    if (c->n_heads % c->n_kv_heads != 0)
        return pd_err_set(err, PD_EFORMAT, "%s: n_heads %d is not a multiple of n_kv_heads %d",
                          path, c->n_heads, c->n_kv_heads);
    if (c->head_dim < 2 || c->head_dim > (1 << 12) || c->head_dim % 2 != 0)
        return pd_err_set(err, PD_EFORMAT, "%s: head_dim %d must be even and in [2, 4096]",
                          path, c->head_dim);
    if ((int64_t)c->q_dim != (int64_t)c->n_heads * c->head_dim || c->q_dim > (1 << 16))
        return pd_err_set(err, PD_EFORMAT,
                          "%s: q_dim %d must be n_heads * head_dim = %d * %d (at most 65536)",
                          path, c->q_dim, c->n_heads, c->head_dim);
    if (c->arch < PD_ARCH_LLAMA || c->arch > PD_ARCH_PHI3 || c->rope_type < PD_ROPE_NORM ||
        c->rope_type > PD_ROPE_NEOX || c->rope_scaling < PD_ROPE_SCALING_NONE ||
        c->rope_scaling > PD_ROPE_SCALING_LLAMA3)
        return pd_err_set(err, PD_EFORMAT, "%s: unknown architecture %d, rope type %d or scaling %d",
                          path, c->arch, c->rope_type, c->rope_scaling);
    if (!(c->rope_freq_scale > 0.0f) || !isfinite(c->rope_freq_scale))
        return pd_err_set(err, PD_EFORMAT, "%s: rope frequency scale %g must be positive", path,
                          (double)c->rope_freq_scale);
    if (c->kv_dim != c->n_kv_heads * c->head_dim)
        return pd_err_set(err, PD_EFORMAT, "%s: kv_dim %d != n_kv_heads * head_dim", path,
                          c->kv_dim);
    if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base))
        return pd_err_set(err, PD_EFORMAT, "%s: rope base %g must be positive", path,
                          (double)c->rope_base);
    if (!(c->norm_eps > 0.0f) || !(c->norm_eps < 1.0f))
        return pd_err_set(err, PD_EFORMAT, "%s: RMSNorm epsilon %g must be in (0, 1)", path,
                          (double)c->norm_eps);
    return PD_OK;
}

/* The fingerprint hash: four 64-bit lanes over 8-byte words, each lane a
 * multiply-rotate accumulator (xxh64-like), then a final avalanche. Fast
 * enough to hash gigabytes at load. */
typedef struct fp_state {
    uint64_t lane[4];
    uint64_t total;
} fp_state;

#define FP_P1 0x9E3779B185EBCA87ULL
#define FP_P2 0xC2B2AE3D27D4EB4FULL
#define FP_P3 0x165667B19E3779F9ULL

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t fp_round(uint64_t acc, uint64_t v)
{
    acc += v * FP_P2;
    acc = rotl(acc, 31);
    return acc * FP_P1;
}

static void fp_init(fp_state *s)
{
    s->lane[0] = FP_P1 + FP_P2;
    s->lane[1] = FP_P2;
    s->lane[2] = 0;
    s->lane[3] = (uint64_t)0 - FP_P1;
    s->total = 0;
}

/* Hashes n floats; word boundaries restart per call so calls are canonical. */
static void fp_floats(fp_state *s, const float *x, size_t n)
{
    size_t i = 0;
    uint64_t w[4];
    for (; i + 8 <= n; i += 8) {
        memcpy(w, x + i, 32);
        s->lane[0] = fp_round(s->lane[0], w[0]);
        s->lane[1] = fp_round(s->lane[1], w[1]);
        s->lane[2] = fp_round(s->lane[2], w[2]);
        s->lane[3] = fp_round(s->lane[3], w[3]);
    }
    for (; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        s->lane[i & 3] = fp_round(s->lane[i & 3], u);
    }
    s->total += n;
}

static uint64_t fp_final(fp_state *s)
{
    uint64_t h = rotl(s->lane[0], 1) + rotl(s->lane[1], 7) + rotl(s->lane[2], 12) +
                 rotl(s->lane[3], 18);
    h ^= s->total * FP_P3;
    h ^= h >> 33;
    h *= FP_P2;
    h ^= h >> 29;
    h *= FP_P3;
    h ^= h >> 32;
    return h;
}

/* The F32 values of W, dequantised row by row, hashed exactly as fp_floats
 * hashes the whole array: whole groups of 8 through a carry, the last < 8
 * values one by one. */
static void fp_wmat(fp_state *s, const pd_wmat *W, float *row)
{
    size_t n = (size_t)W->rows * (size_t)W->cols;
    if (W->type == PD_Q_F32) {
        fp_floats(s, pd_wmat_f32_data(W), n);
        return;
    }
    float carry[8];
    int nc = 0;
    uint64_t w[4];
    for (int r = 0; r < W->rows; r++) {
        pd_wmat_row_f32(W, r, row);
        for (int j = 0; j < W->cols; j++) {
            carry[nc++] = row[j];
            if (nc < 8) continue;
            memcpy(w, carry, 32);
            for (int i = 0; i < 4; i++) s->lane[i] = fp_round(s->lane[i], w[i]);
            nc = 0;
        }
    }
    for (int i = 0; i < nc; i++) {
        uint32_t u;
        memcpy(&u, carry + i, 4);
        s->lane[i & 3] = fp_round(s->lane[i & 3], u);
    }
    s->total += n;
}

/* The architecture variant's hyper-parameters and vectors, hashed only when
 * they differ from plain llama so a plain llama model keeps the fingerprint
 * it always had. */
static void fp_variant(fp_state *s, const pd_model *m)
{
    const pd_config *c = &m->cfg;
    const size_t QD = (size_t)c->q_dim, KV = (size_t)c->kv_dim, hd = (size_t)c->head_dim;
    int plain = c->arch == PD_ARCH_LLAMA && c->q_dim == c->dim && c->rope_type == PD_ROPE_NORM &&
                c->rope_scaling == PD_ROPE_SCALING_NONE && c->rope_freq_scale == 1.0f &&
                c->sliding_window == 0 && !m->w.rope_freqs;
    for (int l = 0; l < c->n_layers; l++) plain = plain && !m->w.layers[l].bq;
    if (plain) return;
    float hp[7] = {(float)c->arch,      (float)c->q_dim,        (float)c->head_dim,
                   (float)c->rope_type, (float)c->rope_scaling, c->rope_freq_scale,
                   (float)c->sliding_window};
    fp_floats(s, hp, 7);
    if (m->w.rope_freqs) fp_floats(s, m->w.rope_freqs, hd / 2);
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *L = &m->w.layers[l];
        if (L->bq) fp_floats(s, L->bq, QD);
        if (L->bk) fp_floats(s, L->bk, KV);
        if (L->bv) fp_floats(s, L->bv, KV);
        if (L->q_norm) fp_floats(s, L->q_norm, hd);
        if (L->k_norm) fp_floats(s, L->k_norm, hd);
    }
}

static int model_fingerprint(const pd_model *m, uint64_t *out)
{
    const pd_config *c = &m->cfg;
    fp_state s;
    fp_init(&s);
    float hp[9] = {(float)c->dim,        (float)c->hidden_dim, (float)c->n_layers,
                   (float)c->n_heads,    (float)c->n_kv_heads, (float)c->vocab_size,
                   c->rope_base,         c->norm_eps,          (float)m->tied_classifier};
    fp_floats(&s, hp, 9);
    size_t D = (size_t)c->dim;
    int row_max = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    if (c->q_dim > row_max) row_max = c->q_dim;
    float *row = malloc((size_t)row_max * sizeof *row);
    if (!row) return PD_ENOMEM;
    fp_wmat(&s, &m->w.token_embedding, row);
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *L = &m->w.layers[l];
        fp_floats(&s, L->rms_att, D);
        fp_wmat(&s, &L->wq, row);
        fp_wmat(&s, &L->wk, row);
        fp_wmat(&s, &L->wv, row);
        fp_wmat(&s, &L->wo, row);
        fp_floats(&s, L->rms_ffn, D);
        fp_wmat(&s, &L->w1, row);
        fp_wmat(&s, &L->w2, row);
        fp_wmat(&s, &L->w3, row);
    }
    fp_floats(&s, m->w.rms_final, D);
    if (!m->tied_classifier) fp_wmat(&s, &m->w.wcls, row);
    free(row);
    fp_variant(&s, m);
    *out = fp_final(&s);
    return PD_OK;
}

static uint64_t wmat_bytes(const pd_wmat *W)
{
    return (uint64_t)W->rows * W->row_bytes;
}

int pd__model_finish(pd_model *m, pd_err *err)
{
    const pd_config *c = &m->cfg;
    PD_ASSERT(m->w.layers && m->w.token_embedding.data && m->w.rms_final && m->w.wcls.data &&
              m->tok);
    if (pd_tokenizer_vocab_size(m->tok) != c->vocab_size)
        return pd_err_set(err, PD_EMISMATCH, "tokenizer has %d tokens but the model has %d",
                          pd_tokenizer_vocab_size(m->tok), c->vocab_size);
    /* bytes read per decoded token, as stored: every layer, final norm,
     * classifier (the embedding row read is negligible) */
    uint64_t D = (uint64_t)c->dim, bytes = 4 * D + wmat_bytes(&m->w.wcls);
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *L = &m->w.layers[l];
        bytes += 4 * 2 * D + wmat_bytes(&L->wq) + wmat_bytes(&L->wk) + wmat_bytes(&L->wv) +
                 wmat_bytes(&L->wo) + wmat_bytes(&L->w1) + wmat_bytes(&L->w2) +
                 wmat_bytes(&L->w3);
    }
    m->weight_bytes = bytes;
    /* held in memory: the above and the embedding when untied (widened
     * tensors at their F32 size) */
    m->resident_bytes = bytes + (m->tied_classifier ? 0 : wmat_bytes(&m->w.token_embedding));
    if (model_fingerprint(m, &m->fingerprint) < 0)
        return pd_err_set(err, PD_ENOMEM, "out of memory computing the model fingerprint");
    snprintf(m->fingerprint_hex, sizeof m->fingerprint_hex, "%016llx",
             (unsigned long long)m->fingerprint);
    return PD_OK;
}

static void set_id(pd_model *m, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    const char *dot = strrchr(base, '.');
    if (dot && dot != base) n = (size_t)(dot - base);
    if (n >= sizeof m->id) n = sizeof m->id - 1;
    memcpy(m->id, base, n);
    m->id[n] = 0;
}

int pd_model_load(const pd_model_params *params, pd_model **out, pd_err *err)
{
    *out = NULL;
    pd_err_clear(err);
    if (!params || !params->path) return pd_err_set(err, PD_EINVAL, "no model path given");
    const char *path = params->path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pd_err_set(err, PD_EIO, "%s: cannot open model: %s", path, strerror(errno));
    unsigned char magic[4] = {0};
    ssize_t got = read(fd, magic, 4);
    close(fd);
    if (got < 0) return pd_err_set(err, PD_EIO, "%s: cannot read: %s", path, strerror(errno));

    pd_model *m = calloc(1, sizeof *m);
    if (!m) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
    int rc;
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0)
        rc = pd__model_load_gguf(m, path, err);
    else
        rc = pd__model_load_llama2c(m, path, params->tokenizer_path, err);
    if (rc == PD_OK) rc = pd__model_finish(m, err);
    if (rc < 0) {
        pd_model_free(m);
        return rc;
    }
    set_id(m, path);
    *out = m;
    return PD_OK;
}

void pd_model_free(pd_model *m)
{
    if (!m) return;
    pd_tokenizer_free(m->tok);
    free(m->tensors);
    free(m->w.layers);
    free(m->owned);
    pd_unmap(m->map, m->map_size);
    free(m);
}
