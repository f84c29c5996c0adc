/* model_check.c — checks on a loaded model shared by the loader targets
 * (contract in model_check.h). */
#include "model_check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/engine.h"
#include "prefixd/generate.h"
#include "util.h"

/* Reads the first and last of n floats at w: outside the weights, a
 * sanitizer (or the mapping's end) stops the run. */
static float ends(const float *w, size_t n)
{
    FUZZ_CHECK(w != NULL && n > 0);
    volatile float first = w[0], last = w[n - 1];
    return first + last;
}

/* The same for a matrix of rows x cols: its first and last bytes. */
static float wends(const pd_wmat *W, size_t rows, size_t cols)
{
    FUZZ_CHECK(W->data != NULL && (size_t)W->rows == rows && (size_t)W->cols == cols);
    FUZZ_CHECK(W->row_bytes > 0);
    const unsigned char *p = W->data;
    volatile unsigned char first = p[0], last = p[rows * W->row_bytes - 1];
    return (float)(first + last);
}

/* Runs BOS and two more tokens through the model (one thread, a 4-token
 * cache), when it is small enough to do so quickly: the engine must accept
 * every config the loaders accept. The logits are not checked (the weights
 * are arbitrary), only that the step completes inside its buffers. */
static void forward(const pd_model *m)
{
    const pd_config *c = &m->cfg;
    if (m->weight_bytes > (8u << 20) || (uint64_t)c->vocab_size * c->dim > (1u << 20) ||
        c->seq_len < 3)
        return;
    pd_engine_params ep = pd_engine_default_params();
    ep.max_tokens = 4;
    ep.n_threads = 1;
    pd_engine *e;
    pd_seq *s;
    pd_err err;
    if (pd_engine_create(m, &ep, &e, &err) < 0) fuzz_fail("engine: %s", err.msg);
    if (pd_seq_create(m, 4 < c->seq_len ? 4 : c->seq_len, &s, &err) < 0)
        fuzz_fail("sequence: %s", err.msg);
    const int32_t tokens[3] = {pd_tokenizer_bos(m->tok), 1 % c->vocab_size,
                               (c->vocab_size - 1) % c->vocab_size};
    const float *logits;
    if (pd_prefill(e, m, s, tokens, 3, &logits, &err) < 0) fuzz_fail("prefill: %s", err.msg);
    (void)*(volatile const float *)&logits[c->vocab_size - 1];
    pd_seq_free(s);
    pd_engine_free(e);
}

void fuzz_check_model(const pd_model *m)
{
    const pd_config *c = &m->cfg;
    pd_err err;
    if (pd_config_validate(c, "fuzz", &err) < 0) fuzz_fail("loaded with a bad config: %s", err.msg);
    const size_t dim = (size_t)c->dim, hid = (size_t)c->hidden_dim, kv = (size_t)c->kv_dim,
                 V = (size_t)c->vocab_size, qd = (size_t)c->q_dim, hd = (size_t)c->head_dim;
    float sum = wends(&m->w.token_embedding, V, dim);
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *L = &m->w.layers[l];
        sum += ends(L->rms_att, dim) + wends(&L->wq, qd, dim) + wends(&L->wk, kv, dim) +
               wends(&L->wv, kv, dim) + wends(&L->wo, dim, qd) + ends(L->rms_ffn, dim) +
               wends(&L->w1, hid, dim) + wends(&L->w2, dim, hid) + wends(&L->w3, hid, dim);
        /* the architecture's vectors, when it has them */
        if (L->bq) sum += ends(L->bq, qd);
        if (L->bk) sum += ends(L->bk, kv);
        if (L->bv) sum += ends(L->bv, kv);
        if (L->q_norm) sum += ends(L->q_norm, hd);
        if (L->k_norm) sum += ends(L->k_norm, hd);
    }
    sum += ends(m->w.rms_final, dim) + wends(&m->w.wcls, V, dim);
    if (m->w.rope_freqs) sum += ends(m->w.rope_freqs, hd / 2);
    (void)sum;
    FUZZ_CHECK(m->tied_classifier == (m->w.wcls.data == m->w.token_embedding.data));
    FUZZ_CHECK(m->n_tensors >= 0 && (m->n_tensors == 0 || m->tensors));
    FUZZ_CHECK(strlen(m->fingerprint_hex) == 16);

    const pd_tokenizer *tok = m->tok;
    FUZZ_CHECK(tok && pd_tokenizer_vocab_size(tok) == c->vocab_size);
    int bos = pd_tokenizer_bos(tok), eos = pd_tokenizer_eos(tok);
    FUZZ_CHECK(bos >= 0 && bos < c->vocab_size && eos >= 0 && eos < c->vocab_size);
    static const char text[] = "Once upon a time, \xC3\xA9t\xC3\xA9 \xF0\x9F\x99\x82 \xFF!";
    int32_t ids[2 * sizeof text + 4];
    int n = pd_tokenizer_encode(tok, text, sizeof text - 1, 1, 1, ids, (int)(sizeof ids / sizeof *ids));
    FUZZ_CHECK(n >= 2 && n <= (int)(sizeof ids / sizeof *ids));
    FUZZ_CHECK(ids[0] == bos && ids[n - 1] == eos);
    for (int i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < c->vocab_size);
        size_t len;
        const char *b = pd_tokenizer_decode(tok, i ? ids[i - 1] : bos, ids[i], &len);
        FUZZ_CHECK(len == 0 || b != NULL);
        if (len) (void)*(volatile const char *)(b + len - 1);
    }
    for (int id = 0; id < c->vocab_size && id < 4096; id++) {
        const char *piece = pd_tokenizer_piece(tok, id);
        FUZZ_CHECK(piece != NULL);
        (void)strlen(piece);
        (void)isfinite(pd_tokenizer_score(tok, id));
    }
    forward(m);
}
