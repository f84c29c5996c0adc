/* test_prefix.c — prefixes on the shipped model: prompt equivalence (a
 * prefix built from a prompt's cache gives the logits and greedy output of
 * the prompt itself), mixed batches of sequences with different prefixes,
 * the prefix semantics against an independent forward pass written here, the
 * file format (round trips, every kind of bad file), task names, and the HF
 * PEFT import. Run from the repository root. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "prefixd/generate.h"
#include "prefixd/half.h"
#include "prefixd/matmul.h"
#include "prefixd/prefix.h"
#include "prefixd/safetensors.h"

#include "testutil.h"

#define MODEL TEST_MODEL
#define TOKENIZER TEST_TOKENIZER

static pd_model *model;
static pd_engine *engine;      /* the engine of the test's KV dtype (engines[kv]) */
static pd_engine *engines[2];  /* by pd_kv_dtype: F32, F16 */
static pd_kv_dtype kv;         /* the running test's KV dtype (F32 unless DTYPE_TEST) */
static pd_kv_dtype kv_f32 = PD_KV_F32, kv_f16 = PD_KV_F16;
static char tmpdir[64];

/* Per-test setup of DTYPE_TEST: the KV dtype its state names. */
static int use_dtype(void **state)
{
    kv = *(const pd_kv_dtype *)*state;
    engine = engines[kv];
    return 0;
}

static int back_to_f32(void **state)
{
    (void)state;
    kv = PD_KV_F32;
    engine = engines[PD_KV_F32];
    return 0;
}

/* Test f with the KV cache (and prefixes) in dtype d (f32, f16). */
#define DTYPE_TEST(f, d) {#f "_" #d, f, use_dtype, back_to_f32, &kv_##d}

static int setup(void **state)
{
    (void)state;
    model = test_model_load();
    if (!model) return -1;
    pd_err err;
    for (int d = 0; d < 2; d++)
        if (pd_engine_create(model, &(pd_engine_params){256, 0, (pd_kv_dtype)d}, &engines[d],
                             &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return -1;
        }
    engine = engines[PD_KV_F32];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_prefix.XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    pd_engine_free(engines[0]);
    pd_engine_free(engines[1]);
    pd_model_free(model);
    return 0;
}

/* ---- helpers ---- */

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float d = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float x = fabsf(a[i] - b[i]);
        if (!(x <= d)) d = x; /* NaN propagates as a failure */
    }
    return d;
}

static int encode(const char *text, int bos, int32_t *out, int cap)
{
    int n = pd_tokenizer_encode(model->tok, text, strlen(text), bos, 0, out, cap);
    assert_true(n > 0 && n <= cap);
    return n;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}

static float normal(void)
{
    return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

/* A prefix of P slots with values N(0,1) * scale. */
static pd_prefix *random_prefix(const char *task, int P, float scale)
{
    pd_prefix *p;
    pd_err err;
    assert_int_equal(pd_prefix_create(model, task, P, &p, &err), PD_OK);
    size_t n = (size_t)p->n_layers * p->n_kv_heads * P * p->head_dim;
    for (size_t i = 0; i < n; i++) {
        p->keys[i] = normal() * scale;
        p->values[i] = normal() * scale;
    }
    return p;
}

/* Runs toks[0..n) through s from cache index 0 in one step; every row's
 * logits into out (n, V). */
static void step_all(pd_seq *s, const int32_t *toks, int n, float *out)
{
    const int V = model->cfg.vocab_size;
    pd_seq **ss = malloc((size_t)n * sizeof *ss);
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    assert_non_null(ss);
    assert_non_null(pos);
    for (int i = 0; i < n; i++) {
        ss[i] = s;
        pos[i] = i;
    }
    pd_batch b = {n, toks, ss, pos, NULL};
    const float *lg;
    pd_err err;
    int rc = pd_engine_step(engine, &b, &lg, &err);
    if (rc != n) fail_msg("step: %s", err.msg);
    memcpy(out, lg, (size_t)n * V * sizeof(float));
    free(ss);
    free(pos);
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* 1 when part is NULL or occurs in s. */
static int contains(const char *s, const char *part) { return !part || strstr(s, part); }

/* Asserts rc is the status want and err names `name` first and holds `part`. */
#define assert_refused(rc, want, err, name, part)                                     \
    do {                                                                            \
        int rc_ = (rc);                                                             \
        if (rc_ != (want))                                                          \
            fail_msg("status %d (%s), expected %d; message: %s", rc_,                \
                     pd_strerror(rc_), (want), (err).msg);                           \
        if (!starts_with((err).msg, (name)))                                        \
            fail_msg("message does not start with '%s': %s", (name), (err).msg);    \
        if (!contains((err).msg, (part)))                                            \
            fail_msg("message lacks '%s': %s", (const char *)(part), (err).msg);    \
    } while (0)

/* ---- 1. prompt equivalence ---- */

#define GEN 40

static void check_equivalence(const int32_t *prompt, int np, const int32_t *req, int nr)
{
    const int V = model->cfg.vocab_size;
    pd_err err;
    pd_prefix *p;
    if (pd_prefix_from_tokens(engine, model, "eq", prompt, np, &p, &err) < 0)
        fail_msg("%s", err.msg);
    assert_int_equal(p->n_tokens, np);
    assert_int_equal(p->has_bos, 1);
    assert_string_equal(pd_prefix_meta_get(p, "source"), "prompt");
    assert_non_null(pd_prefix_meta_get(p, "created_at"));

    /* logits of every request position */
    int32_t *full = malloc((size_t)(np + nr) * sizeof *full);
    assert_non_null(full);
    memcpy(full, prompt, (size_t)np * sizeof *full);
    memcpy(full + np, req, (size_t)nr * sizeof *full);
    float *with = malloc((size_t)nr * V * sizeof(float));
    float *plain = malloc((size_t)(np + nr) * V * sizeof(float));
    assert_non_null(with);
    assert_non_null(plain);
    pd_seq *sp, *sf;
    assert_int_equal(pd_seq_create_as(model, nr + GEN, kv, &sp, NULL), PD_OK);
    assert_int_equal(pd_seq_create_as(model, np + nr + GEN, kv, &sf, NULL), PD_OK);
    /* under F16 the prefix is held as halves, as the registry holds it */
    if (kv == PD_KV_F16) assert_int_equal(pd_prefix_to_f16(p, &err), PD_OK);
    assert_int_equal(pd_prefix_attach(sp, p, &err), PD_OK);
    step_all(sp, req, nr, with);
    step_all(sf, full, np + nr, plain);
    float d = max_abs_diff(with, plain + (size_t)np * V, (size_t)nr * V);
    if (d != 0.0f)
        fail_msg("%s KV, prompt of %d + request of %d tokens: max abs diff %g, expected the "
                 "same bits",
                 pd_kv_dtype_name(kv), np, nr, (double)d);

    /* greedy generations, token for token */
    pd_gen_params gp = {0};
    gp.max_tokens = GEN;
    gp.sampling = pd_sampler_default_params();
    int32_t out_p[GEN], out_f[GEN];
    int n_p, n_f;
    int rc_p = pd_generate(engine, model, sp, req, nr, &gp, out_p, GEN, &n_p, &err);
    int rc_f = pd_generate(engine, model, sf, full, np + nr, &gp, out_f, GEN, &n_f, &err);
    assert_true(rc_p >= 0);
    assert_int_equal(rc_p, rc_f);
    assert_int_equal(n_p, n_f);
    assert_true(n_p > 0);
    assert_memory_equal(out_p, out_f, (size_t)n_p * sizeof *out_p);

    pd_seq_free(sp);
    pd_seq_free(sf);
    free(with);
    free(plain);
    free(full);
    pd_prefix_release(p);
}

static void test_prompt_equivalence(void **state)
{
    (void)state; /* the KV dtype: use_dtype */
    static const char *const prompts[] = {
        "Once upon a time, there was a little girl",
        "The cat sat",
        "Once upon a time, there was a little boy named Tim. Tim liked to play with his red "
        "ball in the park every day. One day, he saw a big dog",
    };
    static const char *const requests[] = {
        " named Lily. She liked to play outside.",
        " on the mat",
        " and",
    };
    int tested_long = 0;
    for (size_t i = 0; i < sizeof prompts / sizeof *prompts; i++) {
        int32_t pt[128], rt[64];
        int np = encode(prompts[i], 1, pt, 128);
        assert_int_equal(pt[0], pd_tokenizer_bos(model->tok));
        if (i == 2) {
            assert_true(np >= 40);
            np = 40; /* the 40-token prompt */
            tested_long = 1;
        }
        for (size_t j = 0; j < sizeof requests / sizeof *requests; j++) {
            int nr = encode(requests[j], 0, rt, 64);
            assert_int_not_equal(rt[0], pd_tokenizer_bos(model->tok));
            check_equivalence(pt, np, rt, nr);
        }
    }
    assert_true(tested_long);
}

/* from_text encodes with BOS: the same prefix as from_tokens of that encoding. */
static void test_from_text(void **state)
{
    (void)state;
    const char *text = "The cat sat";
    int32_t t[16];
    int n = encode(text, 1, t, 16);
    pd_prefix *a, *b;
    pd_err err;
    assert_int_equal(pd_prefix_from_text(engine, model, "txt", text, &a, &err), PD_OK);
    assert_int_equal(pd_prefix_from_tokens(engine, model, "txt", t, n, &b, &err), PD_OK);
    assert_int_equal(a->n_tokens, n);
    assert_int_equal(a->has_bos, 1);
    size_t nf = (size_t)a->n_layers * a->n_kv_heads * n * a->head_dim;
    assert_memory_equal(a->keys, b->keys, nf * sizeof(float));
    assert_memory_equal(a->values, b->values, nf * sizeof(float));
    pd_prefix_release(a);
    pd_prefix_release(b);

    /* no BOS first: has_bos 0 */
    int32_t nob[3] = {403, 407, 261};
    assert_int_equal(pd_prefix_from_tokens(engine, model, "nob", nob, 3, &a, &err), PD_OK);
    assert_int_equal(a->has_bos, 0);
    pd_prefix_release(a);

    /* refusals */
    assert_int_equal(pd_prefix_from_tokens(engine, model, "../x", t, n, &a, &err), PD_EINVAL);
    assert_null(a);
    assert_int_equal(pd_prefix_from_tokens(engine, model, "ok", t, 0, &a, &err), PD_ERANGE);
    int32_t badtok[2] = {1, 9999};
    assert_int_equal(pd_prefix_from_tokens(engine, model, "ok", badtok, 2, &a, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "vocabulary"));
    char *longtext = malloc(8192);
    assert_non_null(longtext);
    longtext[0] = 0;
    while (strlen(longtext) < 8000) strcat(longtext, "Once upon a time there was a cat. ");
    assert_int_equal(pd_prefix_from_text(engine, model, "ok", longtext, &a, &err), PD_ERANGE);
    assert_null(a);
    free(longtext);
}

/* ---- 2. batch mixing ---- */

#define NSEQ 4
#define NTOK 12

static void test_batch_mixing(void **state)
{
    (void)state; /* the KV dtype: use_dtype */
    const int V = model->cfg.vocab_size;
    pd_err err;
    pd_prefix *pre[NSEQ] = {0};
    pre[0] = random_prefix("r3", 3, 0.5f);
    int32_t pt[32];
    int np = encode("Once upon a time, there was a little girl", 1, pt, 32);
    assert_true(np >= 7);
    assert_int_equal(pd_prefix_from_tokens(engine, model, "p7", pt, 7, &pre[1], &err), PD_OK);
    pre[2] = random_prefix("r12", 12, 0.5f);
    pre[3] = NULL; /* no prefix */
    /* under F16: one prefix held as halves (borrowed by its sequence), the
     * others floats (rounded into each sequence's own copy) */
    if (kv == PD_KV_F16) assert_int_equal(pd_prefix_to_f16(pre[2], &err), PD_OK);

    /* BOS first except after the prompt prefix, which holds it already */
    int32_t toks[NSEQ][NTOK];
    for (int s = 0; s < NSEQ; s++)
        for (int i = 0; i < NTOK; i++)
            toks[s][i] = i == 0 && s != 1 ? 1 : (int32_t)(3 + uniform() * (V - 3));

    /* each sequence alone, token by token */
    float *alone = malloc((size_t)NSEQ * NTOK * V * sizeof(float));
    float *mixed = malloc((size_t)NSEQ * NTOK * V * sizeof(float));
    assert_non_null(alone);
    assert_non_null(mixed);
    pd_seq *seqs[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        assert_int_equal(pd_seq_create_as(model, NTOK, kv, &seqs[s], NULL), PD_OK);
        assert_int_equal(pd_prefix_attach(seqs[s], pre[s], &err), PD_OK);
        for (int i = 0; i < NTOK; i++) {
            pd_seq *ss[1] = {seqs[s]};
            int32_t pos[1] = {i};
            pd_batch b = {1, &toks[s][i], ss, pos, NULL};
            const float *lg;
            assert_int_equal(pd_engine_step(engine, &b, &lg, &err), 1);
            memcpy(alone + ((size_t)s * NTOK + i) * V, lg, (size_t)V * sizeof(float));
        }
        pd_seq_reset(seqs[s]);
    }

    /* together: prefill chunks next to single tokens, interleaved */
    static const int chunk[NSEQ][4] = {{5, 1, 6, 0}, {1, 5, 1, 5}, {3, 1, 8, 0}, {4, 4, 1, 3}};
    int done[NSEQ] = {0};
    for (int step = 0; step < 4; step++) {
        int32_t bt[NSEQ * NTOK], bp[NSEQ * NTOK];
        pd_seq *bs[NSEQ * NTOK];
        int owner[NSEQ * NTOK], n = 0, left[NSEQ];
        for (int s = 0; s < NSEQ; s++) left[s] = chunk[s][step];
        /* round robin: one token of each sequence in turn */
        for (int more = 1; more;) {
            more = 0;
            for (int k = 0; k < NSEQ; k++) {
                int s = step % 2 ? NSEQ - 1 - k : k;
                if (!left[s]) continue;
                int i = done[s] + chunk[s][step] - left[s];
                bt[n] = toks[s][i];
                bp[n] = i;
                bs[n] = seqs[s];
                owner[n] = s;
                n++;
                left[s]--;
                more = 1;
            }
        }
        pd_batch b = {n, bt, bs, bp, NULL};
        const float *lg;
        int rc = pd_engine_step(engine, &b, &lg, &err);
        if (rc != n) fail_msg("step %d: %s", step, err.msg);
        for (int i = 0; i < n; i++)
            memcpy(mixed + ((size_t)owner[i] * NTOK + (size_t)bp[i]) * V, lg + (size_t)i * V,
                   (size_t)V * sizeof(float));
        for (int s = 0; s < NSEQ; s++) done[s] += chunk[s][step];
    }
    for (int s = 0; s < NSEQ; s++) {
        assert_int_equal(done[s], NTOK);
        float d = max_abs_diff(alone + (size_t)s * NTOK * V, mixed + (size_t)s * NTOK * V,
                               (size_t)NTOK * V);
        if (d != 0.0f)
            fail_msg("%s KV, sequence %d: max abs diff %g, expected the same bits",
                     pd_kv_dtype_name(kv), s, (double)d);
        pd_seq_free(seqs[s]);
        pd_prefix_release(pre[s]);
    }
    free(alone);
    free(mixed);
}

/* ---- 3. the semantics against an independent forward pass ---- */

/* y (rows) = W (rows, cols) · x (cols), in double. */
static void ref_matvec(double *y, const float *w, const double *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double acc = 0.0;
        for (int c = 0; c < cols; c++) acc += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = acc;
    }
}

static void ref_rmsnorm(double *o, const double *x, const float *w, int n, double eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double scale = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) o[i] = (double)w[i] * x[i] * scale;
}

/* Rotates the adjacent pairs of each head of v (n = heads * hd) to pos. */
static void ref_rope(double *v, int n, int hd, int pos, double base)
{
    for (int h = 0; h < n / hd; h++)
        for (int i = 0; i < hd / 2; i++) {
            double angle = pos * pow(base, -2.0 * i / hd);
            double c = cos(angle), s = sin(angle);
            double *x = v + h * hd + 2 * i;
            double a = x[0], b = x[1];
            x[0] = a * c - b * s;
            x[1] = a * s + b * c;
        }
}

/* The whole model, deliberately plain: toks[0..n) at positions P + i after
 * the prefix p (NULL: none; its keys are used without rotary), logits of
 * every token into out (n, V). */
static void ref_forward(const pd_prefix *p, const int32_t *toks, int n, double *out)
{
    const pd_config *c = &model->cfg;
    const int C = c->dim, KV = c->kv_dim, H = c->hidden_dim, hd = c->head_dim;
    const int NH = c->n_heads, KVH = c->n_kv_heads, V = c->vocab_size;
    const int P = p ? p->n_tokens : 0;
    double *x = calloc((size_t)n * C, sizeof *x), *xb = calloc(C, sizeof *xb);
    double *q = calloc((size_t)n * C, sizeof *q), *k = calloc((size_t)n * KV, sizeof *k);
    double *v = calloc((size_t)n * KV, sizeof *v), *att = calloc((size_t)n * C, sizeof *att);
    double *tmp = calloc(C, sizeof *tmp), *h1 = calloc(H, sizeof *h1), *h3 = calloc(H, sizeof *h3);
    double *score = calloc((size_t)P + n, sizeof *score);
    assert_true(x && xb && q && k && v && att && tmp && h1 && h3 && score);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < C; i++)
            x[(size_t)t * C + i] =
                pd_wmat_f32_data(&model->w.token_embedding)[(size_t)toks[t] * C + i];
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *w = &model->w.layers[l];
        for (int t = 0; t < n; t++) {
            ref_rmsnorm(xb, x + (size_t)t * C, w->rms_att, C, c->norm_eps);
            ref_matvec(q + (size_t)t * C, pd_wmat_f32_data(&w->wq), xb, C, C);
            ref_matvec(k + (size_t)t * KV, pd_wmat_f32_data(&w->wk), xb, KV, C);
            ref_matvec(v + (size_t)t * KV, pd_wmat_f32_data(&w->wv), xb, KV, C);
            ref_rope(q + (size_t)t * C, C, hd, P + t, c->rope_base);
            ref_rope(k + (size_t)t * KV, KV, hd, P + t, c->rope_base);
        }
        for (int t = 0; t < n; t++)
            for (int h = 0; h < NH; h++) {
                const int g = h / (NH / KVH);
                const double *qh = q + (size_t)t * C + h * hd;
                int ns = 0;
                for (int s = 0; s < P; s++, ns++) {
                    const float *pk = p->keys + (((size_t)l * KVH + g) * P + s) * hd;
                    double dot = 0.0;
                    for (int i = 0; i < hd; i++) dot += qh[i] * pk[i];
                    score[ns] = dot / sqrt((double)hd);
                }
                for (int j = 0; j <= t; j++, ns++) {
                    const double *kj = k + (size_t)j * KV + g * hd;
                    double dot = 0.0;
                    for (int i = 0; i < hd; i++) dot += qh[i] * kj[i];
                    score[ns] = dot / sqrt((double)hd);
                }
                double mx = score[0], sum = 0.0;
                for (int s = 1; s < ns; s++) mx = score[s] > mx ? score[s] : mx;
                for (int s = 0; s < ns; s++) sum += (score[s] = exp(score[s] - mx));
                double *o = att + (size_t)t * C + h * hd;
                for (int i = 0; i < hd; i++) o[i] = 0.0;
                for (int s = 0; s < P; s++) {
                    const float *pv = p->values + (((size_t)l * KVH + g) * P + s) * hd;
                    for (int i = 0; i < hd; i++) o[i] += score[s] / sum * pv[i];
                }
                for (int j = 0; j <= t; j++) {
                    const double *vj = v + (size_t)j * KV + g * hd;
                    for (int i = 0; i < hd; i++) o[i] += score[P + j] / sum * vj[i];
                }
            }
        for (int t = 0; t < n; t++) {
            double *xt = x + (size_t)t * C;
            ref_matvec(tmp, pd_wmat_f32_data(&w->wo), att + (size_t)t * C, C, C);
            for (int i = 0; i < C; i++) xt[i] += tmp[i];
            ref_rmsnorm(xb, xt, w->rms_ffn, C, c->norm_eps);
            ref_matvec(h1, pd_wmat_f32_data(&w->w1), xb, H, C);
            ref_matvec(h3, pd_wmat_f32_data(&w->w3), xb, H, C);
            for (int i = 0; i < H; i++) h1[i] = h1[i] / (1.0 + exp(-h1[i])) * h3[i];
            ref_matvec(tmp, pd_wmat_f32_data(&w->w2), h1, C, H);
            for (int i = 0; i < C; i++) xt[i] += tmp[i];
        }
    }
    for (int t = 0; t < n; t++) {
        ref_rmsnorm(xb, x + (size_t)t * C, model->w.rms_final, C, c->norm_eps);
        ref_matvec(out + (size_t)t * V, pd_wmat_f32_data(&model->w.wcls), xb, V, C);
    }
    free(x), free(xb), free(q), free(k), free(v), free(att), free(tmp), free(h1), free(h3);
    free(score);
}

/* Engine logits vs the plain pass: |engine - ref| <= 1e-4 + 1e-4 * |ref|
 * for every logit (float engine, double reference). */
static void check_against_reference(const pd_prefix *p, const int32_t *toks, int n)
{
    const int V = model->cfg.vocab_size;
    float *eng = malloc((size_t)n * V * sizeof *eng);
    double *ref = malloc((size_t)n * V * sizeof *ref);
    assert_non_null(eng);
    assert_non_null(ref);
    pd_seq *s;
    assert_int_equal(pd_seq_create(model, n, &s, NULL), PD_OK);
    if (p) pd_seq_set_prefix(s, p->n_tokens, p->keys, p->values);
    step_all(s, toks, n, eng);
    ref_forward(p, toks, n, ref);
    double worst = 0.0;
    for (size_t i = 0; i < (size_t)n * V; i++) {
        double d = fabs((double)eng[i] - ref[i]);
        if (!(d <= 1e-4 + 1e-4 * fabs(ref[i])))
            fail_msg("P = %d, token %zu, logit %zu: engine %.7g, reference %.7g", p ? p->n_tokens : 0,
                     i / V, i % V, (double)eng[i], ref[i]);
        worst = d > worst ? d : worst;
    }
    pd_seq_free(s);
    free(eng);
    free(ref);
}

static void test_semantics_reference(void **state)
{
    (void)state;
    int32_t toks[6] = {1, 403, 407, 261, 378, 432};
    check_against_reference(NULL, toks, 6); /* the reference itself, no prefix */
    pd_prefix *p = random_prefix("rand", 5, 0.5f);
    check_against_reference(p, toks, 6);
    check_against_reference(p, toks + 1, 4);
    pd_prefix_release(p);
    p = random_prefix("one", 1, 0.5f);
    check_against_reference(p, toks, 3);
    pd_prefix_release(p);
}

/* ---- 4. files ---- */

static void test_task_names(void **state)
{
    (void)state;
    char n64[65], n65[66];
    memset(n64, 'a', 64);
    n64[64] = 0;
    memset(n65, 'b', 65);
    n65[65] = 0;
    const char *bad[] = {"../x", "", n65, "a/b", ".hidden", "-x", "_x", "a b", "a\\b",
                         "é", "x\n", "..", "a/../b", NULL};
    const char *good[] = {"a", "A.b-c_9", n64, "0", "poet", "a..b", "Z-9"};
    pd_prefix *p;
    pd_err err;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (pd_task_name_valid(bad[i])) fail_msg("'%s' accepted", bad[i] ? bad[i] : "(null)");
        assert_int_equal(pd_prefix_create(model, bad[i], 2, &p, &err), PD_EINVAL);
        assert_null(p);
        assert_non_null(strstr(err.msg, "task name"));
    }
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        if (!pd_task_name_valid(good[i])) fail_msg("'%s' refused", good[i]);
        assert_int_equal(pd_prefix_create(model, good[i], 2, &p, &err), PD_OK);
        assert_string_equal(p->task, good[i]);
        pd_prefix_release(p);
    }
    /* P outside [1, seq_len - 1] */
    assert_int_equal(pd_prefix_create(model, "a", 0, &p, &err), PD_EINVAL);
    assert_int_equal(pd_prefix_create(model, "a", model->cfg.seq_len, &p, &err), PD_EINVAL);
}

static void test_object(void **state)
{
    (void)state;
    pd_prefix *p = random_prefix("obj", 4, 1.0f);
    const pd_config *c = &model->cfg;
    size_t tensor_bytes = 2 * (size_t)c->n_layers * c->n_kv_heads * 4 * c->head_dim * sizeof(float);
    assert_int_equal(atomic_load(&p->refs), 1);
    assert_true(p->bytes >= tensor_bytes);
    size_t before = p->bytes;
    assert_int_equal(pd_prefix_meta_set(p, "job_id", "job-1", NULL), PD_OK);
    assert_int_equal(pd_prefix_meta_set(p, "job_id", "job-22", NULL), PD_OK);
    assert_string_equal(pd_prefix_meta_get(p, "job_id"), "job-22");
    assert_int_equal(p->n_meta, 1);
    assert_true(p->bytes > before);
    assert_null(pd_prefix_meta_get(p, "nope"));
    assert_ptr_equal(pd_prefix_retain(p), p);
    assert_int_equal(atomic_load(&p->refs), 2);
    pd_prefix_release(p);
    assert_int_equal(atomic_load(&p->refs), 1);
    pd_prefix_release(p);
    pd_prefix_release(NULL);
}

static void test_round_trip(void **state)
{
    (void)state;
    pd_err err;
    pd_prefix *p = random_prefix("poet", 6, 0.7f);
    p->has_bos = 1;
    assert_int_equal(pd_prefix_meta_set(p, "source", "trained", &err), PD_OK);
    assert_int_equal(pd_prefix_meta_set(p, "job_id", "ftjob-42", &err), PD_OK);
    assert_int_equal(pd_prefix_meta_set(p, "final_train_loss", "1.2345", &err), PD_OK);
    const size_t n = (size_t)p->n_layers * p->n_kv_heads * p->n_tokens * p->head_dim;

    for (int f16 = 0; f16 < 2; f16++) {
        /* through a buffer and through a file */
        void *data;
        size_t size;
        assert_int_equal(pd_prefix_serialize(p, model, f16, &data, &size, &err), PD_OK);
        char path[128];
        snprintf(path, sizeof path, "%s/poet%d.safetensors", tmpdir, f16);
        assert_int_equal(pd_prefix_save(p, model, path, f16, &err), PD_OK);
        pd_prefix *q[2];
        if (pd_prefix_parse(data, size, "upload", model, &q[0], &err) < 0) fail_msg("%s", err.msg);
        if (pd_prefix_load(path, model, &q[1], &err) < 0) fail_msg("%s", err.msg);
        for (int j = 0; j < 2; j++) {
            pd_prefix *r = q[j];
            assert_string_equal(r->task, "poet");
            assert_int_equal(r->n_tokens, 6);
            assert_int_equal(r->has_bos, 1);
            assert_int_equal(r->n_layers, p->n_layers);
            assert_int_equal(r->n_kv_heads, p->n_kv_heads);
            assert_int_equal(r->head_dim, p->head_dim);
            assert_int_equal(atomic_load(&r->refs), 1);
            assert_string_equal(pd_prefix_meta_get(r, "format"), PD_PREFIX_FORMAT);
            assert_string_equal(pd_prefix_meta_get(r, "task"), "poet");
            assert_string_equal(pd_prefix_meta_get(r, "base_fingerprint"), model->fingerprint_hex);
            assert_string_equal(pd_prefix_meta_get(r, "num_virtual_tokens"), "6");
            assert_string_equal(pd_prefix_meta_get(r, "has_bos"), "true");
            assert_string_equal(pd_prefix_meta_get(r, "source"), "trained");
            assert_string_equal(pd_prefix_meta_get(r, "job_id"), "ftjob-42");
            assert_string_equal(pd_prefix_meta_get(r, "final_train_loss"), "1.2345");
            const char *created = pd_prefix_meta_get(r, "created_at");
            assert_non_null(created);
            assert_int_equal(strlen(created), 20); /* 2024-05-01T12:00:00Z */
            assert_int_equal(created[10], 'T');
            assert_int_equal(created[19], 'Z');
            if (!f16) {
                /* F32: exact */
                assert_memory_equal(r->keys, p->keys, n * sizeof(float));
                assert_memory_equal(r->values, p->values, n * sizeof(float));
            } else {
                /* F16: round to nearest half, relative error <= 2^-11 */
                for (size_t i = 0; i < n; i++) {
                    assert_true(r->keys[i] == pd_f16_to_f32(pd_f32_to_f16(p->keys[i])));
                    assert_true(r->values[i] == pd_f16_to_f32(pd_f32_to_f16(p->values[i])));
                    assert_true(fabsf(r->keys[i] - p->keys[i]) <=
                                fabsf(p->keys[i]) * 0x1p-11f + 0x1p-24f);
                }
            }
            pd_prefix_release(r);
        }
        /* the same input gives a file of the same size (created_at differs at most) */
        if (!f16) {
            size_t fsize;
            void *again;
            assert_int_equal(pd_prefix_serialize(p, model, 0, &again, &fsize, &err), PD_OK);
            assert_int_equal(fsize, size);
            free(again);
        }
        free(data);
    }
    /* has_bos false round trips too; created_at kept when present */
    p->has_bos = 0;
    assert_int_equal(pd_prefix_meta_set(p, "created_at", "2020-01-02T03:04:05Z", &err), PD_OK);
    void *data;
    size_t size;
    assert_int_equal(pd_prefix_serialize(p, model, 0, &data, &size, &err), PD_OK);
    pd_prefix *r;
    assert_int_equal(pd_prefix_parse(data, size, "x", model, &r, &err), PD_OK);
    assert_int_equal(r->has_bos, 0);
    assert_string_equal(pd_prefix_meta_get(r, "created_at"), "2020-01-02T03:04:05Z");
    pd_prefix_release(r);
    free(data);

    /* writing refuses what a reader would refuse */
    p->keys[17] = NAN;
    assert_refused(pd_prefix_serialize(p, model, 0, &data, &size, &err), PD_EINVAL, err,
                   "poet.safetensors", "keys[17]");
    p->keys[17] = 70000.0f;
    assert_int_equal(pd_prefix_serialize(p, model, 0, &data, &size, &err), PD_OK);
    free(data);
    char path[128];
    snprintf(path, sizeof path, "%s/big.safetensors", tmpdir);
    assert_refused(pd_prefix_save(p, model, path, 1, &err), PD_ERANGE, err, path, "F16");
    assert_int_equal(access(path, F_OK), -1); /* nothing written */
    assert_int_equal(pd_prefix_meta_set(p, "source", "magic", &err), PD_OK);
    p->keys[17] = 0.0f;
    assert_refused(pd_prefix_serialize(p, model, 0, &data, &size, &err), PD_EINVAL, err,
                   "poet.safetensors", "source");
    pd_prefix_release(p);

    /* a missing file */
    snprintf(path, sizeof path, "%s/none.safetensors", tmpdir);
    assert_refused(pd_prefix_load(path, model, &r, &err), PD_EIO, err, path, NULL);
    assert_null(r);
}

/* A prefix file built piece by piece, for the refusals. */
typedef struct fake {
    const char *format, *task, *fingerprint, *nvt, *has_bos, *source;
    int kdtype, vdtype;          /* PD_ST_* */
    int kdims;                   /* dimensions of keys (values keep 4) */
    int64_t kshape[4], vshape[4];
    int no_keys, no_values;
    long poison_at;              /* index into keys (>= 0) or values (< -1: -2 - i) */
    float poison;
} fake;

static fake fake_default(void)
{
    const pd_config *c = &model->cfg;
    fake f = {PD_PREFIX_FORMAT, "t", model->fingerprint_hex, "2", "false", "trained",
              PD_ST_F32, PD_ST_F32, 4,
              {c->n_layers, c->n_kv_heads, 2, c->head_dim},
              {c->n_layers, c->n_kv_heads, 2, c->head_dim},
              0, 0, -1, 0.0f};
    return f;
}

static void fake_build(const fake *f, void **data, size_t *size)
{
    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    const char *keys[] = {"format", "task", "base_fingerprint", "num_virtual_tokens", "has_bos",
                          "source"};
    const char *vals[] = {f->format, f->task, f->fingerprint, f->nvt, f->has_bos, f->source};
    for (int i = 0; i < 6; i++)
        if (vals[i]) assert_int_equal(pd_st_writer_set_meta(w, keys[i], vals[i], NULL), PD_OK);
    void *raw[2] = {NULL, NULL}; /* borrowed by the writer until it serializes */
    for (int which = 0; which < 2; which++) {
        if (which ? f->no_values : f->no_keys) continue;
        const int64_t *shape = which ? f->vshape : f->kshape;
        int dims = which ? 4 : f->kdims, dtype = which ? f->vdtype : f->kdtype;
        size_t n = 1;
        for (int d = 0; d < dims; d++) n *= (size_t)shape[d];
        const char *name = which ? "values" : "keys";
        if (dtype != PD_ST_F32 && dtype != PD_ST_F16 && dtype != PD_ST_BF16) {
            raw[which] = calloc(n ? n : 1, pd_st_dtype_size(dtype));
            assert_non_null(raw[which]);
            assert_int_equal(pd_st_writer_add(w, name, dtype, dims, shape, raw[which], NULL), PD_OK);
            continue;
        }
        float *x = malloc((n ? n : 1) * sizeof *x);
        assert_non_null(x);
        for (size_t i = 0; i < n; i++) x[i] = normal() * 0.5f;
        long at = which ? (f->poison_at < -1 ? -2 - f->poison_at : -1) : f->poison_at;
        if (at >= 0) x[at] = f->poison;
        assert_int_equal(pd_st_writer_add_f32(w, name, dtype, dims, shape, x, NULL), PD_OK);
        free(x);
    }
    assert_int_equal(pd_st_writer_serialize(w, data, size, NULL), PD_OK);
    pd_st_writer_free(w);
    free(raw[0]);
    free(raw[1]);
}

/* Parses the fake and expects status want with `part` in the message. */
static void expect_fake(const fake *f, int want, const char *part)
{
    void *data;
    size_t size;
    fake_build(f, &data, &size);
    pd_prefix *p = (pd_prefix *)1;
    pd_err err;
    assert_refused(pd_prefix_parse(data, size, "bad.safetensors", model, &p, &err), want, err,
                   "bad.safetensors: ", part);
    assert_null(p);
    free(data);
}

static void test_bad_files(void **state)
{
    (void)state;
    const pd_config *c = &model->cfg;
    pd_err err;
    pd_prefix *p;

    /* the fake itself is valid */
    fake f = fake_default();
    void *data;
    size_t size;
    fake_build(&f, &data, &size);
    assert_int_equal(pd_prefix_parse(data, size, "good", model, &p, &err), PD_OK);
    pd_prefix_release(p);
    free(data);

    /* every truncation of a small file */
    pd_prefix *small = random_prefix("small", 1, 0.5f);
    assert_int_equal(pd_prefix_serialize(small, model, 0, &data, &size, &err), PD_OK);
    pd_prefix_release(small);
    for (size_t len = 0; len < size; len++) {
        void *cut = malloc(len ? len : 1);
        assert_non_null(cut);
        memcpy(cut, data, len);
        p = (pd_prefix *)1;
        int rc = pd_prefix_parse(cut, len, "cut.safetensors", model, &p, &err);
        if (rc >= 0) fail_msg("truncated to %zu of %zu bytes: accepted", len, size);
        assert_null(p);
        assert_true(starts_with(err.msg, "cut.safetensors: "));
        free(cut);
    }
    /* header length past the end */
    unsigned char *bad = malloc(size);
    assert_non_null(bad);
    memcpy(bad, data, size);
    uint64_t hl = size; /* one past what is there */
    memcpy(bad, &hl, 8);
    assert_refused(pd_prefix_parse(bad, size, "hl.safetensors", model, &p, &err), PD_ETRUNC, err,
                   "hl.safetensors: ", "header length");
    hl = UINT64_MAX;
    memcpy(bad, &hl, 8);
    assert_true(pd_prefix_parse(bad, size, "hl.safetensors", model, &p, &err) < 0);
    assert_true(starts_with(err.msg, "hl.safetensors: "));
    free(bad);

    /* offsets out of range and overlapping: rewrite the values' offsets in
     * the header text, keeping its length */
    uint64_t hsize;
    memcpy(&hsize, data, 8);
    const size_t tb = (size_t)c->n_layers * c->n_kv_heads * 1 * c->head_dim * sizeof(float);
    char from[64], to_range[64], to_overlap[64];
    snprintf(from, sizeof from, "[%zu,%zu]", tb, 2 * tb);
    snprintf(to_range, sizeof to_range, "[%zu,%zu]", tb + 8, 2 * tb + 8);
    snprintf(to_overlap, sizeof to_overlap, "[%zu,%zu]", tb - 8, 2 * tb - 8);
    const char *variants[2] = {to_range, to_overlap};
    const char *expect[2] = {"", "overlap"};
    for (int v = 0; v < 2; v++) {
        bad = malloc(size);
        assert_non_null(bad);
        memcpy(bad, data, size);
        char *hdr = (char *)bad + 8;
        char *at = memmem(hdr, hsize, from, strlen(from));
        if (!at) fail_msg("no %s in the header", from);
        assert_int_equal(strlen(variants[v]), strlen(from));
        memcpy(at, variants[v], strlen(from));
        assert_true(pd_prefix_parse(bad, size, "off.safetensors", model, &p, &err) < 0);
        assert_true(starts_with(err.msg, "off.safetensors: "));
        assert_non_null(strstr(err.msg, expect[v]));
        free(bad);
    }
    free(data);

    /* dtypes */
    f = fake_default();
    f.kdtype = PD_ST_I32;
    expect_fake(&f, PD_EFORMAT, "I32");
    f = fake_default();
    f.kdtype = PD_ST_BF16;
    f.vdtype = PD_ST_BF16;
    expect_fake(&f, PD_EFORMAT, "BF16");
    f = fake_default();
    f.vdtype = PD_ST_F16;
    expect_fake(&f, PD_EFORMAT, "both must match");
    f = fake_default();
    f.kdtype = PD_ST_F16;
    f.vdtype = PD_ST_F16;
    fake_build(&f, &data, &size);
    assert_int_equal(pd_prefix_parse(data, size, "f16", model, &p, &err), PD_OK);
    pd_prefix_release(p);
    free(data);

    /* shapes */
    f = fake_default();
    f.kshape[0] = c->n_layers + 1;
    expect_fake(&f, PD_EMISMATCH, "layers");
    f = fake_default();
    f.vshape[1] = c->n_kv_heads * 2;
    expect_fake(&f, PD_EMISMATCH, "kv heads");
    f = fake_default();
    f.kshape[3] = c->head_dim / 2;
    expect_fake(&f, PD_EMISMATCH, "head dim");
    f = fake_default();
    f.kdims = 3;
    expect_fake(&f, PD_EFORMAT, "4 dimensions");
    f = fake_default();
    f.vshape[2] = 3;
    expect_fake(&f, PD_EFORMAT, "slots");
    f = fake_default();
    f.kshape[2] = f.vshape[2] = 0;
    f.nvt = "0";
    expect_fake(&f, PD_EFORMAT, "no virtual tokens");
    f = fake_default();
    f.kshape[2] = f.vshape[2] = c->seq_len;
    char nvt[16];
    snprintf(nvt, sizeof nvt, "%d", c->seq_len);
    f.nvt = nvt;
    expect_fake(&f, PD_ERANGE, "context");

    /* values */
    f = fake_default();
    f.poison_at = 37;
    f.poison = NAN;
    expect_fake(&f, PD_EFORMAT, "keys[37]");
    expect_fake(&f, PD_EFORMAT, "NaN");
    f.poison_at = -2 - 5;
    f.poison = INFINITY;
    expect_fake(&f, PD_EFORMAT, "values[5] (layer 0, kv head 0, slot 0, dim 5) is +Inf");
    f.kdtype = f.vdtype = PD_ST_F16;
    f.poison = -INFINITY;
    expect_fake(&f, PD_EFORMAT, "values[5]");

    /* metadata */
    f = fake_default();
    f.fingerprint = "0123456789abcdef";
    char want[96];
    snprintf(want, sizeof want, "made for base 0123456789abcdef, this model is %s",
             model->fingerprint_hex);
    expect_fake(&f, PD_EMISMATCH, want);
    f.fingerprint = "not-hex";
    expect_fake(&f, PD_EFORMAT, "base_fingerprint");
    f.fingerprint = NULL;
    expect_fake(&f, PD_EFORMAT, "base_fingerprint");
    f = fake_default();
    f.no_keys = 1;
    expect_fake(&f, PD_EFORMAT, "no tensor 'keys'");
    f = fake_default();
    f.no_values = 1;
    expect_fake(&f, PD_EFORMAT, "no tensor 'values'");
    f = fake_default();
    f.format = "prefixd.prefix/2";
    expect_fake(&f, PD_EVERSION, "prefixd.prefix/2");
    f.format = "something/1";
    expect_fake(&f, PD_EFORMAT, "format");
    f.format = NULL;
    expect_fake(&f, PD_EFORMAT, "format");
    f = fake_default();
    f.task = "../etc";
    expect_fake(&f, PD_EFORMAT, "task name");
    f.task = NULL;
    expect_fake(&f, PD_EFORMAT, "task");
    f = fake_default();
    f.nvt = "3";
    expect_fake(&f, PD_EFORMAT, "num_virtual_tokens");
    f.nvt = "2x";
    expect_fake(&f, PD_EFORMAT, "num_virtual_tokens");
    f.nvt = NULL;
    expect_fake(&f, PD_EFORMAT, "num_virtual_tokens");
    f = fake_default();
    f.has_bos = "yes";
    expect_fake(&f, PD_EFORMAT, "has_bos");
    f.has_bos = NULL;
    expect_fake(&f, PD_EFORMAT, "has_bos");
    f = fake_default();
    f.source = "magic";
    expect_fake(&f, PD_EFORMAT, "source");

    /* not safetensors at all */
    const char junk[] = "hello, this is not a prefix file";
    assert_true(pd_prefix_parse(junk, sizeof junk, "junk", model, &p, &err) < 0);
    assert_true(starts_with(err.msg, "junk: "));
    assert_true(pd_prefix_parse(NULL, 0, "empty", model, &p, &err) < 0);
    assert_true(starts_with(err.msg, "empty: "));
}

/* ---- 5. PEFT import ---- */

/* Writes dir/adapter_config.json (config, or none when NULL) and
 * dir/adapter_model.safetensors with one tensor (none when name is NULL). */
static void write_peft(const char *dir, const char *config, const char *name, int dtype,
                       int64_t rows, int64_t width, const float *data)
{
    char path[256];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    unlink(path);
    if (config) {
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        fputs(config, fp);
        fclose(fp);
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    unlink(path);
    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    if (name) {
        int64_t shape[2] = {rows, width};
        assert_int_equal(pd_st_writer_add_f32(w, name, dtype, 2, shape, data, NULL), PD_OK);
        assert_int_equal(pd_st_writer_write(w, path, NULL), PD_OK);
    }
    pd_st_writer_free(w);
}

/* PEFT's rows for prefix p: flat index f of row t decomposed as
 * f = ((layer * 2 + kv) * n_kv_heads + head) * head_dim + d; keys in HF's
 * halves layout: HF's d = r * hd/2 + i is the model's (adjacent-pair) 2i + r. */
static float *peft_rows(const pd_prefix *p)
{
    const int P = p->n_tokens, L = p->n_layers, KVH = p->n_kv_heads, hd = p->head_dim;
    const size_t width = (size_t)L * 2 * KVH * hd;
    float *rows = malloc((size_t)P * width * sizeof *rows);
    assert_non_null(rows);
    for (int t = 0; t < P; t++)
        for (size_t f = 0; f < width; f++) {
            size_t d = f % hd, head = f / hd % KVH, kv = f / hd / KVH % 2, layer = f / hd / KVH / 2;
            const float *src = kv ? p->values : p->keys;
            size_t dm = kv ? d : 2 * (d % (hd / 2)) + d / (hd / 2);
            rows[(size_t)t * width + f] = src[((layer * KVH + head) * P + t) * hd + dm];
        }
    return rows;
}

static void test_peft_import(void **state)
{
    (void)state;
    const pd_config *c = &model->cfg;
    const int P = 5;
    const int64_t width = 2LL * c->n_layers * c->kv_dim;
    pd_prefix *src = random_prefix("src", P, 0.5f);
    float *rows = peft_rows(src);
    const size_t n = (size_t)c->n_layers * c->n_kv_heads * P * c->head_dim;
    char dir[128], cfg[512], cfgpath[160], stpath[160];
    snprintf(dir, sizeof dir, "%s/adapter", tmpdir);
    snprintf(cfgpath, sizeof cfgpath, "%s/adapter_config.json", dir);
    snprintf(stpath, sizeof stpath, "%s/adapter_model.safetensors", dir);
#define CFG(nvt, layers, tdim, heads, extra)                                                 \
    snprintf(cfg, sizeof cfg,                                                                \
             "{\"peft_type\": \"PREFIX_TUNING\", \"task_type\": \"CAUSAL_LM\", "             \
             "\"base_model_name_or_path\": \"stories260K\", \"num_virtual_tokens\": %d, "    \
             "\"num_layers\": %d, \"token_dim\": %d, \"num_attention_heads\": %d, "          \
             "\"num_transformer_submodules\": 1, \"encoder_hidden_size\": %d, "              \
             "\"inference_mode\": true%s}",                                                  \
             (int)(nvt), (int)(layers), (int)(tdim), (int)(heads), (int)(tdim), extra)

    pd_prefix *p;
    pd_err err;
    /* the classic layout (token_dim = dim, query heads, num_key_value_heads),
     * PEFT's GQA rewrite (token_dim = kv_dim, kv heads), a projection
     * adapter's computed prefix, the prompt encoder's state-dict name */
    struct {
        int tdim, heads;
        const char *extra, *tensor;
    } ok[] = {
        {c->dim, c->n_heads, ", \"num_key_value_heads\": 4, \"prefix_projection\": false",
         "prompt_embeddings"},
        {c->kv_dim, c->n_kv_heads, "", "prompt_embeddings"},
        {c->kv_dim, c->n_kv_heads, ", \"prefix_projection\": true", "prompt_embeddings"},
        {c->dim, c->n_heads, "", "base_model.prompt_encoder.default.embedding.weight"},
    };
    assert_int_equal(c->n_kv_heads, 4);
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        CFG(P, c->n_layers, ok[i].tdim, ok[i].heads, ok[i].extra);
        write_peft(dir, cfg, ok[i].tensor, PD_ST_F32, P, width, rows);
        if (pd_prefix_import_peft(dir, model, "imported", &p, &err) < 0)
            fail_msg("case %zu: %s", i, err.msg);
        assert_string_equal(p->task, "imported");
        assert_int_equal(p->n_tokens, P);
        assert_int_equal(p->has_bos, 0);
        assert_string_equal(pd_prefix_meta_get(p, "source"), "peft");
        assert_non_null(pd_prefix_meta_get(p, "created_at"));
        assert_memory_equal(p->keys, src->keys, n * sizeof(float));
        assert_memory_equal(p->values, src->values, n * sizeof(float));
        pd_prefix_release(p);
    }
    /* F16 and BF16 tensors widen exactly */
    CFG(P, c->n_layers, c->dim, c->n_heads, "");
    for (int dt = 0; dt < 2; dt++) {
        int dtype = dt ? PD_ST_BF16 : PD_ST_F16;
        write_peft(dir, cfg, "prompt_embeddings", dtype, P, width, rows);
        assert_int_equal(pd_prefix_import_peft(dir, model, "h", &p, &err), PD_OK);
        for (size_t i = 0; i < n; i++) {
            float k = src->keys[i];
            float want = dt ? pd_bf16_to_f32(pd_f32_to_bf16(k)) : pd_f16_to_f32(pd_f32_to_f16(k));
            assert_true(p->keys[i] == want);
        }
        pd_prefix_release(p);
    }
    /* an imported prefix saves and loads like any other */
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_int_equal(pd_prefix_import_peft(dir, model, "imported", &p, &err), PD_OK);
    char path[160];
    snprintf(path, sizeof path, "%s/imported.safetensors", tmpdir);
    assert_int_equal(pd_prefix_save(p, model, path, 0, &err), PD_OK);
    pd_prefix *q;
    assert_int_equal(pd_prefix_load(path, model, &q, &err), PD_OK);
    assert_int_equal(q->has_bos, 0);
    assert_string_equal(pd_prefix_meta_get(q, "source"), "peft");
    assert_memory_equal(q->keys, src->keys, n * sizeof(float));
    pd_prefix_release(q);
    pd_prefix_release(p);

    /* refusals: config */
    CFG(P, c->n_layers + 1, c->dim, c->n_heads, "");
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EMISMATCH, err, cfgpath,
                   "num_layers");
    assert_null(p);
    CFG(P, c->n_layers, 48, c->n_heads, "");
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EMISMATCH, err, cfgpath,
                   "token_dim");
    CFG(P, c->n_layers, c->dim, c->n_kv_heads, ""); /* dim split over the kv heads */
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EMISMATCH, err, cfgpath,
                   "num_attention_heads");
    CFG(P, c->n_layers, c->kv_dim, c->n_heads, "");
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EMISMATCH, err, cfgpath,
                   "num_attention_heads");
    CFG(P, c->n_layers, c->dim, c->n_heads, ", \"num_key_value_heads\": 8");
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EMISMATCH, err, cfgpath,
                   "num_key_value_heads");
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"LORA\", \"num_virtual_tokens\": %d, \"num_layers\": %d, "
             "\"token_dim\": %d, \"num_attention_heads\": %d}",
             P, c->n_layers, c->dim, c->n_heads);
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EUNSUPPORTED, err,
                   cfgpath, "PREFIX_TUNING");
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"PREFIX_TUNING\", \"num_layers\": 5,");
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EFORMAT, err, cfgpath,
                   "JSON");
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"PREFIX_TUNING\", \"num_layers\": 5}");
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EFORMAT, err, cfgpath,
                   "num_virtual_tokens");
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": %d, \"num_layers\": "
             "\"%d\", \"token_dim\": %d, \"num_attention_heads\": %d}",
             P, c->n_layers, c->dim, c->n_heads);
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EFORMAT, err, cfgpath,
                   "num_layers");
    write_peft(dir, NULL, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EIO, err, cfgpath, NULL);

    /* refusals: tensor */
    CFG(P, c->n_layers, c->dim, c->n_heads, "");
    write_peft(dir, cfg, NULL, PD_ST_F32, 0, 0, NULL);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_ENOTFOUND, err, stpath,
                   NULL);
    write_peft(dir, cfg, "something_else", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EFORMAT, err, stpath,
                   "prompt_embeddings");
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P - 1, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EFORMAT, err, stpath,
                   "num_virtual_tokens");
    float *wide = calloc((size_t)P * 2 * c->n_layers * c->dim, sizeof *wide);
    assert_non_null(wide);
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, 2LL * c->n_layers * c->dim, wide);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EMISMATCH, err, stpath,
                   "grouped-query");
    free(wide);
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width - 1, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EMISMATCH, err, stpath,
                   "n_layers*2*kv_dim");
    rows[7] = NAN;
    write_peft(dir, cfg, "prompt_embeddings", PD_ST_F32, P, width, rows);
    assert_refused(pd_prefix_import_peft(dir, model, "x", &p, &err), PD_EFORMAT, err, stpath,
                   "[0, 7]");
    /* bad task name, missing directory */
    assert_int_equal(pd_prefix_import_peft(dir, model, "a/b", &p, &err), PD_EINVAL);
    char nodir[160];
    snprintf(nodir, sizeof nodir, "%s/nowhere", tmpdir);
    assert_refused(pd_prefix_import_peft(nodir, model, "x", &p, &err), PD_EIO, err, nodir, NULL);
#undef CFG
    free(rows);
    pd_prefix_release(src);
}

/* A PEFT-style prefix (no BOS) with a request encoded BOS first, at
 * positions P, P+1, ...: the engine agrees with the reference pass. */
static void test_peft_semantics(void **state)
{
    (void)state;
    pd_prefix *p = random_prefix("peftsem", 4, 0.5f);
    int32_t req[8];
    int n = encode("Once upon a time", 1, req, 8);
    check_against_reference(p, req, n);
    pd_prefix_release(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        DTYPE_TEST(test_prompt_equivalence, f32),
        DTYPE_TEST(test_prompt_equivalence, f16),
        cmocka_unit_test(test_from_text),
        DTYPE_TEST(test_batch_mixing, f32),
        DTYPE_TEST(test_batch_mixing, f16),
        cmocka_unit_test(test_semantics_reference),
        cmocka_unit_test(test_task_names),
        cmocka_unit_test(test_object),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_peft_import),
        cmocka_unit_test(test_peft_semantics),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
