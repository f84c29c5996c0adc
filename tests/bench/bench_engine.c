/* bench_engine.c — the engine's speed on one model, through pd_engine_step
 * as the scheduler drives it:
 *
 *   prefill   one sequence, prefill_tokens tokens in one step, logits of the
 *             last token only (as pd_prefill asks for them);
 *   decode 1  one sequence after a short prompt, one token per step, the
 *             next token the argmax of the logits (greedy);
 *   decode B  B sequences after a short prompt each (all prompts in one
 *             step), one token of each per step.
 *
 * Each decode figure starts from emptied caches, a fresh prompt and a few
 * warm-up steps; its timed runs then follow one another on the same
 * sequences (a later run attends over a slightly longer context). Prompt
 * tokens are drawn from a fixed seed among the non-special ids. */
#include "bench.h"

#include <stdlib.h>
#include <string.h>

#include "prefixd/engine.h"
#include "prefixd/matmul.h"
#include "prefixd/threadpool.h"

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* What one model's runs share: the engine, the sequences and the batch
 * arrays (sized for the largest step). */
typedef struct rig {
    const pd_model *m;
    pd_engine *e;
    pd_seq **seqs;    /* (batch) */
    int n_seqs;
    int32_t *tokens;  /* (max_tokens) */
    int32_t *pos;     /* (max_tokens) */
    pd_seq **bseq;    /* (max_tokens) the sequence of each token */
    uint8_t *want;    /* (max_tokens) */
    int32_t *next;    /* (batch) the next token of each sequence */
    uint64_t rng;
} rig;

static int step(rig *g, int n, const uint8_t *want, const float **logits, pd_err *err)
{
    pd_batch b = {n, g->tokens, g->bseq, g->pos, want};
    return pd_engine_step(g->e, &b, logits, err);
}

static int32_t random_token(rig *g)
{
    int V = g->m->cfg.vocab_size;
    int lo = V > 16 ? 3 : 0; /* skip <unk>, <s>, </s> */
    return (int32_t)(lo + (int)(bench_rand(&g->rng) % (uint64_t)(V - lo)));
}

/* Best seconds of one prefill step of n tokens. */
static int run_prefill(rig *g, int n, int reps, double budget, double *best, pd_err *err)
{
    pd_seq *s = g->seqs[0];
    for (int i = 0; i < n; i++) {
        g->tokens[i] = random_token(g);
        g->pos[i] = i;
        g->bseq[i] = s;
        g->want[i] = i == n - 1;
    }
    *best = 1e30;
    const double start = bench_now();
    for (int r = 0; r <= reps && !(r >= 2 && bench_now() - start > budget); r++) {
        pd_seq_reset(s);
        const float *logits;
        double t0 = bench_now();
        int rc = step(g, n, g->want, &logits, err);
        double dt = bench_now() - t0;
        if (rc < 0) return rc;
        if (r > 0 && dt < *best) *best = dt;
    }
    return PD_OK;
}

/* Empties the first nb sequences and runs a prompt of `prompt` tokens
 * through each, all in one step; leaves each sequence's next token (the
 * argmax after its prompt) in g->next. */
static int start_sequences(rig *g, int nb, int prompt, pd_err *err)
{
    const int V = g->m->cfg.vocab_size;
    int n = 0;
    for (int b = 0; b < nb; b++) {
        pd_seq_reset(g->seqs[b]);
        for (int i = 0; i < prompt; i++, n++) {
            g->tokens[n] = random_token(g);
            g->pos[n] = i;
            g->bseq[n] = g->seqs[b];
            g->want[n] = i == prompt - 1;
        }
    }
    const float *logits;
    int rc = step(g, n, g->want, &logits, err);
    if (rc < 0) return rc;
    PD_ASSERT(rc == nb);
    for (int b = 0; b < nb; b++) g->next[b] = argmax(logits + (size_t)b * V, V);
    return PD_OK;
}

/* n_steps steps of one token for each of the first nb sequences. */
static int decode_steps(rig *g, int nb, int n_steps, pd_err *err)
{
    const int V = g->m->cfg.vocab_size;
    for (int s = 0; s < n_steps; s++) {
        for (int b = 0; b < nb; b++) {
            g->tokens[b] = g->next[b];
            g->pos[b] = g->seqs[b]->len;
            g->bseq[b] = g->seqs[b];
        }
        const float *logits;
        int rc = step(g, nb, NULL, &logits, err);
        if (rc < 0) return rc;
        for (int b = 0; b < nb; b++) g->next[b] = argmax(logits + (size_t)b * V, V);
    }
    return PD_OK;
}

/* Best tokens per second (summed over the nb sequences) of reps timed runs
 * of n_steps steps each, one after the other on the same sequences after
 * one prompt and the warm-up steps. */
static int run_decode(rig *g, const bench_plan *p, int nb, int n_steps, int reps, double *tps,
                      pd_err *err)
{
    double best = 1e30;
    int rc = start_sequences(g, nb, p->prompt, err);
    if (rc == PD_OK) rc = decode_steps(g, nb, p->warm_steps, err);
    if (rc < 0) return rc;
    const double start = bench_now();
    for (int r = 0; r < reps && !(r >= 1 && bench_now() - start > p->budget_s); r++) {
        double t0 = bench_now();
        rc = decode_steps(g, nb, n_steps, err);
        double dt = bench_now() - t0;
        if (rc < 0) return rc;
        if (dt < best) best = dt;
    }
    *tps = (double)nb * n_steps / best;
    return PD_OK;
}

static void rig_free(rig *g)
{
    for (int i = 0; i < g->n_seqs; i++) pd_seq_free(g->seqs[i]);
    free(g->seqs);
    free(g->tokens);
    free(g->pos);
    free(g->bseq);
    free(g->want);
    free(g->next);
    pd_engine_free(g->e);
}

int bench_engine_run(const pd_model *m, const bench_plan *p, bench_result *r, pd_err *err)
{
    const pd_config *c = &m->cfg;
    memset(r, 0, sizeof *r);
    rig g = {0};
    g.m = m;
    g.rng = 0x5eed;
    int max_tokens = p->prefill_tokens;
    if (p->batch * p->prompt > max_tokens) max_tokens = p->batch * p->prompt;
    /* sequence 0 runs the prefill and decode 1, all of them decode B */
    int cap_b = p->prompt + p->warm_steps + p->decodeb_steps * p->decodeb_reps;
    int cap_m = p->prompt + p->warm_steps + p->decodem_steps * p->decodem_reps;
    if (cap_b < cap_m) cap_b = cap_m;
    int cap0 = p->prompt + p->warm_steps + p->decode1_steps * p->decode1_reps;
    if (cap0 < p->prefill_tokens) cap0 = p->prefill_tokens;
    if (cap0 < cap_b) cap0 = cap_b;
    if (cap0 > c->seq_len)
        return pd_err_set(err, PD_EINVAL, "plan needs %d tokens of context, the model has %d",
                          cap0, c->seq_len);

    pd_engine_params ep = pd_engine_default_params();
    ep.max_tokens = max_tokens;
    ep.n_threads = 0;
    int rc = pd_engine_create(m, &ep, &g.e, err);
    if (rc < 0) return rc;
    g.seqs = calloc((size_t)p->batch, sizeof *g.seqs);
    g.tokens = malloc((size_t)max_tokens * sizeof *g.tokens);
    g.pos = malloc((size_t)max_tokens * sizeof *g.pos);
    g.bseq = malloc((size_t)max_tokens * sizeof *g.bseq);
    g.want = malloc((size_t)max_tokens * sizeof *g.want);
    g.next = malloc((size_t)p->batch * sizeof *g.next);
    if (!g.seqs || !g.tokens || !g.pos || !g.bseq || !g.want || !g.next) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the batch");
        goto done;
    }
    for (int b = 0; b < p->batch; b++) {
        if ((rc = pd_seq_create(m, b == 0 ? cap0 : cap_b, &g.seqs[b], err)) < 0) goto done;
        g.n_seqs++;
    }

    if ((rc = run_prefill(&g, p->prefill_tokens, p->prefill_reps, p->budget_s, &r->prefill_s,
                          err)) < 0)
        goto done;
    /* FLOPs of the step: 2 per weight per token through every layer, the
     * classifier for the one token with logits; attention 2·hd per head
     * for q·k and again for a·v, over positions 0..t of token t */
    double T = p->prefill_tokens, C = c->dim, KV = c->kv_dim, H = c->hidden_dim;
    double per_layer = 2 * C * C + 2 * KV * C + 3 * H * C;
    r->prefill_mm_flops = 2 * T * per_layer * c->n_layers + 2 * C * c->vocab_size;
    r->prefill_at_flops = (double)c->n_layers * 4 * C * T * (T + 1) / 2;

    if ((rc = run_decode(&g, p, 1, p->decode1_steps, p->decode1_reps, &r->decode1_tps, err)) < 0)
        goto done;
    if (p->batch_mid > 0 && p->batch_mid <= p->batch &&
        (rc = run_decode(&g, p, p->batch_mid, p->decodem_steps, p->decodem_reps,
                         &r->decodem_tps, err)) < 0)
        goto done;
    rc = run_decode(&g, p, p->batch, p->decodeb_steps, p->decodeb_reps, &r->decodeb_tps, err);
done:
    rig_free(&g);
    return rc;
}

int bench_weights_pass(const pd_model *m, int T, int reps, double budget_s, double *best,
                       pd_err *err)
{
    const pd_config *c = &m->cfg;
    const int C = c->dim, H = c->hidden_dim, V = c->vocab_size;
    size_t in_n = (size_t)T * (H > C ? H : C);
    size_t out_n = (size_t)T * (V > H ? V : H);
    float *in = malloc(in_n * sizeof(float)), *out = malloc(out_n * sizeof(float));
    pd_pool *pool = NULL;
    int rc = PD_OK;
    if (!in || !out) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the weights pass");
        goto done;
    }
    if ((rc = pd_pool_create(0, &pool, err)) < 0) goto done;
    uint64_t rng = 7;
    for (size_t i = 0; i < in_n; i++) in[i] = bench_randf(&rng);
    *best = 1e30;
    const double start = bench_now();
    for (int r = 0; r <= reps && !(r >= 2 && bench_now() - start > budget_s); r++) {
        double t0 = bench_now();
        for (int l = 0; l < c->n_layers; l++) {
            const pd_layer_weights *w = &m->w.layers[l];
            pd_wmatmul(pool, out, in, &w->wq, T);
            pd_wmatmul(pool, out, in, &w->wk, T);
            pd_wmatmul(pool, out, in, &w->wv, T);
            pd_wmatmul(pool, out, in, &w->wo, T);
            pd_wmatmul(pool, out, in, &w->w1, T);
            pd_wmatmul(pool, out, in, &w->w3, T);
            pd_wmatmul(pool, out, in, &w->w2, T);
        }
        pd_wmatmul(pool, out, in, &m->w.wcls, T);
        double dt = bench_now() - t0;
        if (r > 0 && dt < *best) *best = dt;
    }
done:
    free(in);
    free(out);
    pd_pool_free(pool);
    return rc;
}

int bench_prefill_shapes(const pd_config *c, int T, bench_shape *shapes)
{
    const int C = c->dim, KV = c->kv_dim, H = c->hidden_dim;
    int n = 0;
    if (KV == C) {
        shapes[n++] = (bench_shape){"wq wk wv wo", T, C, C, 4, 0, 0};
    } else {
        shapes[n++] = (bench_shape){"wq wo", T, C, C, 2, 0, 0};
        shapes[n++] = (bench_shape){"wk wv", T, C, KV, 2, 0, 0};
    }
    shapes[n++] = (bench_shape){"w1 w3", T, C, H, 2, 0, 0};
    shapes[n++] = (bench_shape){"w2", T, H, C, 1, 0, 0};
    shapes[n++] = (bench_shape){"classifier", 1, C, c->vocab_size, 0, 0, 0};
    return n;
}
