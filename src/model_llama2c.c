/* model_llama2c.c — reader for llama2.c checkpoints (legacy version 0).
 *
 * Layout: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size — negative when the classifier is stored separately —,
 * seq_len), then F32 tensors in run.c's memory_map_weights order:
 * token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
 * two legacy RoPE tables of seq_len·head_dim/2 floats (unused), and wcls when
 * not shared. The file is mapped read-only; weights point into it. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"
#include "prefixd/model.h"

#define HEADER_BYTES 28

typedef struct cursor {
    const float *base; /* first float after the header */
    uint64_t avail;    /* floats available */
    uint64_t at;       /* floats consumed */
} cursor;

/* Takes n floats; NULL when the file is too short. */
static const float *take(cursor *c, uint64_t n)
{
    if (n > c->avail - c->at) return NULL;
    const float *p = c->base + c->at;
    c->at += n;
    return p;
}

static void add_info(pd_model *m, const char *name, uint64_t rows, uint64_t cols,
                     const float *p)
{
    pd_tensor_info *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = rows > 1 ? 2 : 1;
    t->shape[0] = (int64_t)cols;
    t->shape[1] = (int64_t)rows;
    t->dtype = PD_DTYPE_F32;
    t->type = PD_Q_F32;
    t->offset = (uint64_t)((const char *)p - (const char *)m->map);
    t->nbytes = rows * cols * 4;
}

/* Picks tokenizer.bin (or tok<V>.bin) beside the model; NULL if none. */
static char *find_tokenizer(const char *path, int vocab)
{
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path) + 1 : 0;
    char cand[2][64];
    snprintf(cand[0], sizeof cand[0], "tokenizer.bin");
    snprintf(cand[1], sizeof cand[1], "tok%d.bin", vocab);
    for (int i = 0; i < 2; i++) {
        size_t n = (size_t)dirlen + strlen(cand[i]) + 1;
        char *p = malloc(n);
        if (!p) return NULL;
        snprintf(p, n, "%.*s%s", dirlen, path, cand[i]);
        FILE *f = fopen(p, "rb");
        if (f) {
            fclose(f);
            return p;
        }
        free(p);
    }
    return NULL;
}

int pd__model_load_llama2c(pd_model *m, const char *path, const char *tokenizer_path,
                           pd_err *err)
{
    int rc = pd_map_file(path, &m->map, &m->map_size, err);
    if (rc < 0) return rc;
    if (m->map_size < HEADER_BYTES)
        return pd_err_set(err, PD_ETRUNC,
                          "%s: %zu bytes is shorter than the 28-byte llama2.c header (not a "
                          "model file?)",
                          path, m->map_size);
    int32_t h[7];
    memcpy(h, m->map, sizeof h);
    if ((uint32_t)h[0] == 0x616b3432u)
        return pd_err_set(err, PD_EVERSION,
                          "%s: llama2.c export version 1/2 (magic ak42) is not supported; "
                          "export with the legacy format or convert to GGUF",
                          path);
    pd_config *c = &m->cfg;
    int shared = h[5] > 0;
    c->dim = h[0];
    c->hidden_dim = h[1];
    c->n_layers = h[2];
    c->n_heads = h[3];
    c->n_kv_heads = h[4];
    c->vocab_size = h[5] == INT32_MIN ? 0 : abs(h[5]);
    c->seq_len = h[6];
    c->head_dim = c->n_heads > 0 ? c->dim / c->n_heads : 0;
    /* 64-bit: the header is not validated yet; pd_config_validate refuses -1 */
    int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    c->kv_dim = kv_dim > INT_MAX || kv_dim < INT_MIN ? -1 : (int)kv_dim;
    c->rope_base = 10000.0f;
    c->norm_eps = 1e-5f;
    c->arch = PD_ARCH_LLAMA;
    c->q_dim = c->dim;
    c->rope_type = PD_ROPE_NORM;
    c->rope_scaling = PD_ROPE_SCALING_NONE;
    c->rope_freq_scale = 1.0f;
    c->ctx_train = c->seq_len;
    if ((rc = pd_config_validate(c, path, err)) < 0) {
        /* a wrong magic shows up as absurd header values: say so */
        if (strstr(err ? err->msg : "", "out of range"))
            pd_err_set(err, PD_EFORMAT, "%s: not a llama2.c checkpoint or GGUF file (header "
                       "values dim=%d layers=%d heads=%d are implausible)", path, h[0], h[2], h[3]);
        return PD_EFORMAT;
    }

    uint64_t D = (uint64_t)c->dim, KV = (uint64_t)c->kv_dim, H = (uint64_t)c->hidden_dim;
    uint64_t L = (uint64_t)c->n_layers, V = (uint64_t)c->vocab_size;
    m->w.layers = calloc((size_t)L, sizeof *m->w.layers);
    m->tensors = calloc(16, sizeof *m->tensors);
    if (!m->w.layers || !m->tensors) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);

    cursor cur = {(const float *)((const char *)m->map + HEADER_BYTES),
                  (m->map_size - HEADER_BYTES) / 4, 0};
    const float *emb = take(&cur, V * D), *rms_att = take(&cur, L * D),
                *wq = take(&cur, L * D * D), *wk = take(&cur, L * KV * D),
                *wv = take(&cur, L * KV * D), *wo = take(&cur, L * D * D),
                *rms_ffn = take(&cur, L * D), *w1 = take(&cur, L * H * D),
                *w2 = take(&cur, L * D * H), *w3 = take(&cur, L * H * D),
                *rms_final = take(&cur, D),
                *rope = take(&cur, (uint64_t)c->seq_len * (uint64_t)c->head_dim);
    const float *wcls = shared ? emb : (rope ? take(&cur, V * D) : NULL);
    if (!emb || !rms_att || !wq || !wk || !wv || !wo || !rms_ffn || !w1 || !w2 || !w3 ||
        !rms_final || !rope || !wcls)
        return pd_err_set(err, PD_ETRUNC,
                          "%s: file is truncated: %zu bytes, but the header (dim %d, layers %d, "
                          "vocab %d, %s classifier) needs more",
                          path, m->map_size, c->dim, c->n_layers, c->vocab_size,
                          shared ? "shared" : "separate");
    for (uint64_t l = 0; l < L; l++) {
        pd_layer_weights *lw = &m->w.layers[l];
        lw->rms_att = rms_att + l * D;
        lw->wq = pd_wmat_f32(wq + l * D * D, (int)D, (int)D);
        lw->wk = pd_wmat_f32(wk + l * KV * D, (int)KV, (int)D);
        lw->wv = pd_wmat_f32(wv + l * KV * D, (int)KV, (int)D);
        lw->wo = pd_wmat_f32(wo + l * D * D, (int)D, (int)D);
        lw->rms_ffn = rms_ffn + l * D;
        lw->w1 = pd_wmat_f32(w1 + l * H * D, (int)H, (int)D);
        lw->w2 = pd_wmat_f32(w2 + l * D * H, (int)D, (int)H);
        lw->w3 = pd_wmat_f32(w3 + l * H * D, (int)H, (int)D);
    }
    m->w.token_embedding = pd_wmat_f32(emb, (int)V, (int)D);
    m->w.rms_final = rms_final;
    m->w.wcls = pd_wmat_f32(wcls, (int)V, (int)D);
    m->tied_classifier = shared;
    m->format = PD_FORMAT_LLAMA2C;
    m->dtype = PD_DTYPE_F32;
    m->weight_type = PD_Q_F32;
    add_info(m, "token_embedding", V, D, emb);
    add_info(m, "rms_att", L, D, rms_att);
    add_info(m, "wq", L * D, D, wq);
    add_info(m, "wk", L * KV, D, wk);
    add_info(m, "wv", L * KV, D, wv);
    add_info(m, "wo", L * D, D, wo);
    add_info(m, "rms_ffn", L, D, rms_ffn);
    add_info(m, "w1", L * H, D, w1);
    add_info(m, "w2", L * D, H, w2);
    add_info(m, "w3", L * H, D, w3);
    add_info(m, "rms_final", 1, D, rms_final);
    if (!shared) add_info(m, "wcls", V, D, wcls);

    char *found = NULL;
    if (!tokenizer_path) {
        found = find_tokenizer(path, c->vocab_size);
        if (!found)
            return pd_err_set(err, PD_ENOTFOUND,
                              "%s: no tokenizer given and none found beside the model "
                              "(tokenizer.bin or tok%d.bin); pass --tokenizer",
                              path, c->vocab_size);
        tokenizer_path = found;
    }
    rc = pd_tokenizer_load_llama2c(tokenizer_path, c->vocab_size, &m->tok, err);
    free(found);
    return rc;
}
