/* test_backprop.c — the prefix gradient through the frozen shipped model.
 *
 * An independent double-precision forward pass written here (plain loops,
 * no library math) gives the loss; central finite differences of it are
 * compared with pd_backprop's gradient for entries of the keys and values of
 * every layer. Stated tolerance: |g - fd| <= 1e-3 * max(|fd|, 0.05 * rms(fd)).
 * The same on a random-weight model of each architecture variant (Llama 3
 * and linear rope scaling, biases, qwen2 NeoX rotary, qwen3 q/k norms).
 * The same through PEFT's projection MLP (its parameters' gradient).
 * Also: the forward loss equals the double reference and the engine's own
 * logits; packing examples into one batch equals running them one by one. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefixd/backprop.h"
#include "prefixd/dataset.h"
#include "prefixd/engine.h"
#include "prefixd/prefix_mlp.h"

#include "../tools/synth_model.h"
#include "fdcheck.h"
#include "ref_model.h"
#include "testutil.h"

TEST_GROUP_MODEL()

/* ---- the reference: one example, double precision (ref_model.h) -------- */

/* Sum of target cross-entropies of one example with prefix (keys, values). */
static double ref_loss_of(const pd_model *m, const double *keys, const double *values, int P,
                          const int32_t *tok, const uint8_t *mask, int n)
{
    double loss = ref_forward(m, keys, values, P, tok, mask, n, NULL);
    assert_false(isnan(loss));
    return loss;
}

static double ref_loss(const double *keys, const double *values, int P, const int32_t *tok,
                       const uint8_t *mask, int n)
{
    return ref_loss_of(model, keys, values, P, tok, mask, n);
}

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

#define P_SLOTS 3

/* pd_backprop's prefix gradient on model m for two examples against central
 * differences of the double reference, entries of every layer's keys and
 * values; the loss against the reference too. */
/* The reference loss of two examples (ref_model.h) as fd_loss_fn. */
typedef struct bp_loss_ctx {
    const pd_model *m;
    const int32_t *t1;
    const uint8_t *m1;
    int n1;
    const int32_t *t2;
    const uint8_t *m2;
    int n2;
} bp_loss_ctx;

static double bp_loss(const double *kd, const double *vd, void *ctx)
{
    const bp_loss_ctx *c = ctx;
    return ref_loss_of(c->m, kd, vd, P_SLOTS, c->t1, c->m1, c->n1) +
           ref_loss_of(c->m, kd, vd, P_SLOTS, c->t2, c->m2, c->n2);
}

static void check_gradient(const pd_model *m, const char *what, const int32_t *t1,
                           const uint8_t *m1, int n1, const int32_t *t2, const uint8_t *m2,
                           int n2)
{
    const pd_config *c = &m->cfg;
    const size_t np = (size_t)c->n_layers * c->n_kv_heads * P_SLOTS * c->head_dim;
    float *keys = malloc(np * 4), *values = malloc(np * 4), *dk = calloc(np, 4), *dv = calloc(np, 4);
    double *kd = malloc(np * 8), *vd = malloc(np * 8);
    assert_true(keys && values && dk && dv && kd && vd);
    uint64_t seed = 99;
    for (size_t i = 0; i < np; i++) {
        keys[i] = 2.0f * frand(&seed);
        values[i] = 2.0f * frand(&seed);
        kd[i] = keys[i];
        vd[i] = values[i];
    }
    pd_example ex[2] = {{.tokens = t1, .loss_mask = m1, .n = n1}, {.tokens = t2, .loss_mask = m2, .n = n2}};
    int want_targets = 0;
    for (int i = 1; i < n1; i++) want_targets += m1[i] != 0;
    for (int i = 1; i < n2; i++) want_targets += m2[i] != 0;
    pd_backprop *b;
    assert_int_equal(pd_backprop_create(m, 32, 8, 2, &b, NULL), PD_OK);
    double loss;
    int nt;
    assert_int_equal(pd_backprop_run(b, keys, values, P_SLOTS, ex, 2, dk, dv, &loss, &nt, NULL), PD_OK);
    assert_int_equal(nt, want_targets);
    bp_loss_ctx lc = {m, t1, m1, n1, t2, m2, n2};
    double ref = bp_loss(kd, vd, &lc);
    if (fabs(loss - ref) > 1e-4 * fabs(ref)) fail_msg("%s: loss %.9g vs reference %.9g", what, loss, ref);
    /* entries of keys and values in every layer */
    fd_check_prefix_gradient(c, P_SLOTS, kd, vd, dk, dv, bp_loss, &lc, what);
    pd_backprop_free(b);
    free(keys); free(values); free(dk); free(dv); free(kd); free(vd);
}

static void test_gradient_matches_finite_differences(void **state)
{
    (void)state;
    int32_t t1[12], t2[9];
    int n1 = pd_tokenizer_encode(model->tok, "Lily went to the park.", 22, 1, 0, t1, 12);
    int n2 = pd_tokenizer_encode(model->tok, "The cat sat", 11, 1, 0, t2, 9);
    assert_true(n1 > 3 && n1 <= 12 && n2 > 2 && n2 <= 9);
    uint8_t m1[12], m2[9];
    for (int i = 0; i < n1; i++) m1[i] = 1;
    for (int i = 0; i < n2; i++) m2[i] = i >= 2; /* the first token is context only */
    check_gradient(model, "stories260K", t1, m1, n1, t2, m2, n2);
}

/* The same check through every architecture's variant (random-weight
 * models of tests/tools/synth_model.c): Llama 3 and linear rope scaling,
 * qwen2 biases with NeoX rotary, qwen3 q/k head norms with q_dim != dim,
 * phi3's fused matrices; all with grouped-query attention. */
static void test_gradient_every_architecture(void **state)
{
    (void)state;
    char dir[] = "/tmp/prefixd-test-backprop-XXXXXX";
    assert_non_null(mkdtemp(dir));
    for (int which = 0; which < 5; which++) {
        synth_spec s = {0};
        static const int arch[5] = {PD_ARCH_LLAMA, PD_ARCH_LLAMA, PD_ARCH_QWEN2, PD_ARCH_QWEN3,
                                    PD_ARCH_PHI3};
        s.arch = arch[which];
        s.dim = 24;
        s.hidden_dim = 40;
        s.n_layers = 2;
        s.n_heads = 4;
        s.n_kv_heads = 2;
        s.vocab_size = 280;
        s.seq_len = 32;
        s.scale = 0.3f;
        s.seed = 40 + (uint64_t)which;
        s.rope_scaling = which == 0 ? PD_ROPE_SCALING_LLAMA3 : which == 1 ? PD_ROPE_SCALING_LINEAR : 0;
        s.rope_factor = which == 0 ? 8 : 4;
        s.rope_orig_ctx = 48;
        s.biases = which == 1;
        s.head_dim = which == 3 ? 8 : 0; /* q_dim 32 != dim 24 */
        static const char *const what[5] = {"llama3 rope", "linear rope + biases", "qwen2",
                                            "qwen3", "phi3"};
        char path[96];
        snprintf(path, sizeof path, "%s/m.gguf", dir);
        pd_err err;
        if (synth_write(&s, NULL, path, &err) < 0) fail_msg("%s", err.msg);
        pd_model_params mp = pd_model_default_params();
        mp.path = path;
        pd_model *m;
        if (pd_model_load(&mp, &m, &err) < 0) fail_msg("%s: %s", what[which], err.msg);
        unlink(path);
        int32_t t1[10], t2[7];
        uint8_t m1[10], m2[7];
        uint64_t r = 5 + (uint64_t)which;
        for (int i = 0; i < 10; i++) {
            t1[i] = i ? 3 + (int32_t)(synth_rand(&r) % 270) : 1;
            m1[i] = 1;
        }
        for (int i = 0; i < 7; i++) {
            t2[i] = i ? 3 + (int32_t)(synth_rand(&r) % 270) : 1;
            m2[i] = i >= 3;
        }
        check_gradient(m, what[which], t1, m1, 10, t2, m2, 7);
        pd_model_free(m);
    }
    rmdir(dir);
}

/* The projection MLP (PEFT's prefix_projection) computed in double inside
 * the test: E (P, KV) -> tanh(E W1^T + b1) -> W2 + b2 -> row t is virtual
 * token t, flat index ((layer*2 + kv)*n_kv_heads + head)*head_dim + d. */
static void ref_mlp(const double *prm, const pd_prefix_mlp *mlp, double *keys, double *values)
{
    const int P = mlp->P, K = mlp->kv_dim, H = mlp->hidden, O = mlp->out;
    const int G = mlp->n_kv_heads, hd = mlp->head_dim;
    const double *E = prm + mlp->off_e, *W1 = prm + mlp->off_w1, *b1 = prm + mlp->off_b1;
    const double *W2 = prm + mlp->off_w2, *b2 = prm + mlp->off_b2;
    double hid[64];
    assert_true(H <= 64);
    for (int t = 0; t < P; t++) {
        for (int j = 0; j < H; j++) {
            double a = b1[j];
            for (int k = 0; k < K; k++) a += W1[(size_t)j * K + k] * E[(size_t)t * K + k];
            hid[j] = tanh(a);
        }
        for (int o = 0; o < O; o++) {
            double a = b2[o];
            for (int j = 0; j < H; j++) a += W2[(size_t)o * H + j] * hid[j];
            int d = o % hd, head = (o / hd) % G, kv = (o / hd / G) % 2, l = o / hd / G / 2;
            double *dst = kv ? values : keys;
            dst[(((size_t)l * G + head) * P + t) * hd + d] = a;
        }
    }
}

/* The gradient with the projection MLP: d(loss)/d(MLP parameters) through
 * the model, against central differences of the double-precision MLP and
 * forward pass. Same tolerance as above. */
/* The same through models whose matrices stay quantised (Q8_0 and Q4_K, rows
 * of 256): the backward products read the quantised weights, the reference
 * their dequantised values. */
static void test_gradient_quantised(void **state)
{
    (void)state;
    static const int qtypes[2] = {PD_Q_Q8_0, PD_Q_Q4_K};
    static const char *const names[2] = {"Q8_0", "Q4_K"};
    for (int i = 0; i < 2; i++) {
        pd_model *m = test_model_synth(qtypes[i], 31 + (uint64_t)i);
        assert_non_null(m);
        const int32_t t1[10] = {1, 17, 200, 3, 99, 45, 128, 7, 250, 64};
        const int32_t t2[7] = {1, 5, 77, 140, 33, 201, 9};
        uint8_t m1[10], m2[7];
        for (int j = 0; j < 10; j++) m1[j] = 1;
        for (int j = 0; j < 7; j++) m2[j] = j >= 2; /* the first tokens are context only */
        check_gradient(m, names[i], t1, m1, 10, t2, m2, 7);
        pd_model_free(m);
    }
}

static void test_projection_gradient_matches_finite_differences(void **state)
{
    (void)state;
    const pd_config *c = &model->cfg;
    const int P = 2, HID = 6;
    pd_prefix_mlp mlp;
    assert_int_equal(pd_prefix_mlp_init(&mlp, c, P, HID, NULL), PD_OK);
    const size_t np = (size_t)c->n_layers * c->n_kv_heads * P * c->head_dim;
    float *prm = malloc(mlp.n_params * 4), *dprm = malloc(mlp.n_params * 4);
    float *keys = malloc(np * 4), *values = malloc(np * 4), *dk = calloc(np, 4), *dv = calloc(np, 4);
    double *pd = malloc(mlp.n_params * 8), *kd = malloc(np * 8), *vd = malloc(np * 8);
    assert_true(prm && dprm && keys && values && dk && dv && pd && kd && vd);
    pd_rng r;
    pd_rng_seed(&r, 11);
    pd_prefix_mlp_init_params(&mlp, prm, &r, 1.0);
    for (size_t i = 0; i < mlp.n_params; i++) pd[i] = prm[i];
    int32_t t1[12];
    int n1 = pd_tokenizer_encode(model->tok, "Lily went to the park.", 22, 1, 0, t1, 12);
    uint8_t m1[12];
    memset(m1, 1, sizeof m1);
    pd_example ex = {.tokens = t1, .loss_mask = m1, .n = n1};
    pd_backprop *b;
    assert_int_equal(pd_backprop_create(model, 16, 4, 1, &b, NULL), PD_OK);
    pd_prefix_mlp_forward(&mlp, prm, keys, values);
    double loss;
    int nt;
    assert_int_equal(pd_backprop_run(b, keys, values, P, &ex, 1, dk, dv, &loss, &nt, NULL), PD_OK);
    pd_prefix_mlp_backward(&mlp, prm, dk, dv, dprm);

    size_t idx[] = {mlp.off_e, mlp.off_e + 7, mlp.off_e + (size_t)P * mlp.kv_dim - 1,
                    mlp.off_w1, mlp.off_w1 + 13, mlp.off_b1, mlp.off_b1 + HID - 1,
                    mlp.off_w2, mlp.off_w2 + 101, mlp.off_w2 + (size_t)mlp.out * HID - 1,
                    mlp.off_b2, mlp.off_b2 + 77, mlp.off_b2 + (size_t)mlp.out - 1};
    const int n_idx = (int)(sizeof idx / sizeof *idx);
    double num[16], rms = 0;
    for (int q = 0; q < n_idx; q++) {
        const double h = 1e-4, keep = pd[idx[q]];
        pd[idx[q]] = keep + h;
        ref_mlp(pd, &mlp, kd, vd);
        double up = ref_loss(kd, vd, P, t1, m1, n1);
        pd[idx[q]] = keep - h;
        ref_mlp(pd, &mlp, kd, vd);
        double dn = ref_loss(kd, vd, P, t1, m1, n1);
        pd[idx[q]] = keep;
        num[q] = (up - dn) / (2 * h);
        rms += num[q] * num[q];
    }
    rms = sqrt(rms / n_idx);
    assert_true(rms > 1e-6);
    for (int q = 0; q < n_idx; q++) {
        double tol = 1e-3 * fmax(fabs(num[q]), 0.05 * rms);
        if (fabs(dprm[idx[q]] - num[q]) > tol)
            fail_msg("MLP parameter %zu: gradient %.8g, finite difference %.8g", idx[q],
                     (double)dprm[idx[q]], num[q]);
    }
    pd_backprop_free(b);
    pd_prefix_mlp_free(&mlp);
    free(prm); free(dprm); free(keys); free(values); free(dk); free(dv); free(pd); free(kd);
    free(vd);
}

/* Packing: two examples in one run give the sums of two separate runs. And
 * the forward logits are the engine's: the loss equals one computed from
 * pd_engine_step logits. */
static void test_packing_and_engine_agreement(void **state)
{
    (void)state;
    const pd_config *c = &model->cfg;
    const int P = 4;
    const size_t np = (size_t)c->n_layers * c->n_kv_heads * P * c->head_dim;
    float *keys = malloc(np * 4), *values = malloc(np * 4);
    float *g1k = calloc(np, 4), *g1v = calloc(np, 4), *g2k = calloc(np, 4), *g2v = calloc(np, 4);
    assert_true(keys && values && g1k && g1v && g2k && g2v);
    uint64_t seed = 5;
    for (size_t i = 0; i < np; i++) {
        keys[i] = frand(&seed);
        values[i] = frand(&seed);
    }
    int32_t a[16], bb[16];
    int na = pd_tokenizer_encode(model->tok, "Once upon a time there was", 26, 1, 0, a, 16);
    int nb = pd_tokenizer_encode(model->tok, "Tom had a red ball", 18, 1, 0, bb, 16);
    uint8_t ma[16], mb[16];
    memset(ma, 1, sizeof ma);
    memset(mb, 1, sizeof mb);
    pd_example ex[2] = {{.tokens = a, .loss_mask = ma, .n = na}, {.tokens = bb, .loss_mask = mb, .n = nb}};
    pd_backprop *b;
    assert_int_equal(pd_backprop_create(model, 64, 8, 0, &b, NULL), PD_OK);
    double l_both, l_a, l_b;
    int n_both, n_a, n_b;
    assert_int_equal(pd_backprop_run(b, keys, values, P, ex, 2, g1k, g1v, &l_both, &n_both, NULL), 0);
    assert_int_equal(pd_backprop_run(b, keys, values, P, ex, 1, g2k, g2v, &l_a, &n_a, NULL), 0);
    assert_int_equal(pd_backprop_run(b, keys, values, P, ex + 1, 1, g2k, g2v, &l_b, &n_b, NULL), 0);
    assert_int_equal(n_both, n_a + n_b);
    assert_true(fabs(l_both - (l_a + l_b)) <= 1e-9 * fabs(l_both));
    for (size_t i = 0; i < np; i++) {
        assert_true(fabsf(g1k[i] - g2k[i]) <= 1e-5f * (1.0f + fabsf(g1k[i])));
        assert_true(fabsf(g1v[i] - g2v[i]) <= 1e-5f * (1.0f + fabsf(g1v[i])));
    }
    /* engine logits of example a with the same prefix */
    pd_engine *e;
    pd_seq *s;
    assert_int_equal(pd_engine_create(model, NULL, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(model, na, &s, NULL), PD_OK);
    pd_seq_set_prefix(s, P, keys, values);
    pd_seq *ss[16];
    int32_t pos[16];
    for (int i = 0; i < na; i++) {
        ss[i] = s;
        pos[i] = i;
    }
    pd_batch batch = {na, a, ss, pos, NULL};
    const float *lg;
    assert_int_equal(pd_engine_step(e, &batch, &lg, NULL), na);
    double l_engine = 0;
    for (int t = 0; t + 1 < na; t++) {
        const float *row = lg + (size_t)t * c->vocab_size;
        double mx = row[0], sum = 0;
        for (int u = 1; u < c->vocab_size; u++) if (row[u] > mx) mx = row[u];
        for (int u = 0; u < c->vocab_size; u++) sum += exp(row[u] - mx);
        l_engine += log(sum) + mx - row[a[t + 1]];
    }
    if (fabs(l_engine - l_a) > 1e-6 * fabs(l_a)) fail_msg("engine loss %.12g vs backprop %.12g", l_engine, l_a);
    /* forward-only evaluation gives the same loss and touches no gradient */
    double l_eval;
    int n_eval;
    assert_int_equal(pd_backprop_run(b, keys, values, P, ex, 1, NULL, NULL, &l_eval, &n_eval, NULL), 0);
    assert_true(l_eval == l_a && n_eval == n_a);
    pd_seq_free(s);
    pd_engine_free(e);
    pd_backprop_free(b);
    free(keys); free(values); free(g1k); free(g1v); free(g2k); free(g2v);
}

static void test_bad_batches(void **state)
{
    (void)state;
    pd_backprop *b;
    assert_int_equal(pd_backprop_create(model, 8, 2, 1, &b, NULL), PD_OK);
    int32_t t[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, bad[2] = {1, 600};
    uint8_t m[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    float k[5 * 4 * 2 * 8] = {0}, v[5 * 4 * 2 * 8] = {0};
    double loss;
    int nt;
    pd_err err;
    pd_example big = {.tokens = t, .loss_mask = m, .n = 10}, one = {.tokens = t, .loss_mask = m, .n = 1}, oov = {.tokens = bad, .loss_mask = m, .n = 2};
    assert_int_equal(pd_backprop_run(b, k, v, 2, &big, 1, NULL, NULL, &loss, &nt, &err), PD_EINVAL);
    assert_int_equal(pd_backprop_run(b, k, v, 2, &one, 1, NULL, NULL, &loss, &nt, &err), PD_EINVAL);
    assert_int_equal(pd_backprop_run(b, k, v, 2, &oov, 1, NULL, NULL, &loss, &nt, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "600"));
    assert_int_equal(pd_backprop_run(b, k, v, 3, &one, 1, NULL, NULL, &loss, &nt, &err), PD_EINVAL);
    pd_backprop_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradient_matches_finite_differences),
        cmocka_unit_test(test_gradient_every_architecture),
        cmocka_unit_test(test_gradient_quantised),
        cmocka_unit_test(test_projection_gradient_matches_finite_differences),
        cmocka_unit_test(test_packing_and_engine_agreement),
        cmocka_unit_test(test_bad_batches),
    };
    return cmocka_run_group_tests_name("backprop", tests, setup, teardown);
}
