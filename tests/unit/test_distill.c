/* test_distill.c — context distillation (issue 16) on the shipped model.
 *
 * - The KL loss and its prefix gradient: pd_backprop with soft targets
 *   against an independent double-precision computation (ref_model.h's
 *   forward, KL(p ‖ softmax(logits)) and the cross-entropy mix summed
 *   here), central finite differences for entries of the keys and values of
 *   every layer. Tolerance as test_backprop: |g - fd| <= 1e-3 · max(|fd|,
 *   0.05 · rms(fd)); the loss within 1e-4 relative.
 * - The teacher's soft targets are softmax of the logits of the model given
 *   BOS + prompt + input + continuation as a hard prompt (the double
 *   reference, 1e-4); they sum to 1; the student with the teacher's own
 *   prefix (the whole prompt) has KL ~ 0 on them.
 * - Sampling is reproducible: the same seed gives the same tokens and soft
 *   targets bit for bit, another seed other tokens.
 * - The prompt initialisation: slot 0 is the prompt's BOS position, slot i
 *   the prompt's position n - P + i with its keys rotated back to position
 *   i (checked by rotating forward again in double) and its values as they
 *   are.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/backprop.h"
#include "prefixd/distill.h"
#include "prefixd/engine.h"
#include "prefixd/prefix.h"
#include "prefixd/tokenizer.h"

#include "fdcheck.h"
#include "ref_model.h"
#include "testutil.h"

static pd_model *model;
static pd_engine *eng;

static const char prompt_text[] =
    "Once upon a time, there was a little dog named Max. Max lived in a big red house with a "
    "girl named Sue. Every day, Max and Sue went to the park to play.";

static int setup(void **state)
{
    (void)state;
    model = test_model_load();
    if (!model) return -1;
    pd_engine_params ep = pd_engine_default_params();
    ep.n_threads = 2;
    return pd_engine_create(model, &ep, &eng, NULL) == PD_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    pd_engine_free(eng);
    pd_model_free(model);
    return 0;
}

/* Σ over targets of (1 − w)·KL(p ‖ q) + w·CE, q = softmax of the double
 * reference's logits, for one example. */
static double ref_kl_loss(const double *keys, const double *values, int P, const pd_example *e)
{
    const int V = model->cfg.vocab_size;
    double *lg = malloc((size_t)e->n * V * sizeof *lg);
    assert_non_null(lg);
    double r = ref_forward(model, keys, values, P, e->tokens, NULL, e->n, lg);
    assert_false(isnan(r));
    double loss = 0;
    for (int j = 1; j < e->n; j++) {
        if (!e->loss_mask[j]) continue;
        const double *l = lg + (size_t)(j - 1) * V;
        double mx = l[0], sum = 0;
        for (int u = 1; u < V; u++) mx = fmax(mx, l[u]);
        for (int u = 0; u < V; u++) sum += exp(l[u] - mx);
        double lse = mx + log(sum), kl = 0;
        const float *p = e->soft + (size_t)j * V;
        for (int u = 0; u < V; u++)
            if (p[u] > 0) kl += p[u] * (log((double)p[u]) - (l[u] - lse));
        loss += (1 - e->ce_weight) * kl + e->ce_weight * (lse - l[e->tokens[j]]);
    }
    free(lg);
    return loss;
}

/* Random distributions over the vocabulary (some zeros) for rows 1..n-1. */
static float *random_soft(int n, uint64_t *s)
{
    const int V = model->cfg.vocab_size;
    float *p = calloc((size_t)n * V, sizeof *p);
    assert_non_null(p);
    for (int j = 1; j < n; j++) {
        double sum = 0;
        float *r = p + (size_t)j * V;
        for (int u = 0; u < V; u++) {
            r[u] = u % 7 == 3 ? 0.0f : expf(3.0f * test_urand(s));
            sum += r[u];
        }
        for (int u = 0; u < V; u++) r[u] = (float)(r[u] / sum);
    }
    return p;
}

#define P_SLOTS 3

/* The reference KL loss of the two examples at ctx (pd_example[2]). */
static double kl_loss2(const double *kd, const double *vd, void *ctx)
{
    const pd_example *ex = ctx;
    return ref_kl_loss(kd, vd, P_SLOTS, &ex[0]) + ref_kl_loss(kd, vd, P_SLOTS, &ex[1]);
}

static void test_kl_gradient_matches_finite_differences(void **state)
{
    (void)state;
    const pd_config *c = &model->cfg;
    const size_t np = (size_t)c->n_layers * c->n_kv_heads * P_SLOTS * c->head_dim;
    float *keys = malloc(np * 4), *values = malloc(np * 4), *dk = calloc(np, 4);
    float *dv = calloc(np, 4);
    double *kd = malloc(np * 8), *vd = malloc(np * 8);
    assert_true(keys && values && dk && dv && kd && vd);
    uint64_t seed = 5;
    for (size_t i = 0; i < np; i++) {
        keys[i] = test_urand(&seed);
        values[i] = test_urand(&seed);
        kd[i] = keys[i];
        vd[i] = values[i];
    }
    const int32_t t1[] = {1, 403, 407, 261, 378, 46, 500, 270}, t2[] = {1, 300, 89, 60, 411, 2};
    const uint8_t m1[] = {0, 0, 1, 1, 1, 1, 0, 1}, m2[] = {0, 1, 1, 1, 1, 1};
    float *s1 = random_soft(8, &seed), *s2 = random_soft(6, &seed);
    /* pure KL on the first, a 0.3 cross-entropy mix on the second */
    pd_example ex[2] = {{.tokens = t1, .loss_mask = m1, .n = 8, .soft = s1, .ce_weight = 0.0f},
                        {.tokens = t2, .loss_mask = m2, .n = 6, .soft = s2, .ce_weight = 0.3f}};
    pd_backprop *b;
    assert_int_equal(pd_backprop_create(model, 32, 8, 2, &b, NULL), PD_OK);
    double loss;
    int nt;
    assert_int_equal(pd_backprop_run(b, keys, values, P_SLOTS, ex, 2, dk, dv, &loss, &nt, NULL),
                     PD_OK);
    assert_int_equal(nt, 10);
    const double ref = kl_loss2(kd, vd, ex);
    if (fabs(loss - ref) > 1e-4 * fabs(ref)) fail_msg("KL loss %.9g vs reference %.9g", loss, ref);
    fd_check_prefix_gradient(c, P_SLOTS, kd, vd, dk, dv, kl_loss2, ex, "KL");
    pd_backprop_free(b);
    free(keys); free(values); free(dk); free(dv); free(kd); free(vd); free(s1); free(s2);
}

/* Inputs "Max" and "Sue said" as pd_dataset gives them (BOS first). */
static int inputs(pd_example *in, int32_t (*tok)[16])
{
    const char *text[] = {"Max", "Sue said"};
    for (int i = 0; i < 2; i++) {
        int n = pd_tokenizer_encode(model->tok, text[i], strlen(text[i]), 1, 0, tok[i], 16);
        assert_true(n >= 2 && n <= 16);
        in[i] = (pd_example){.tokens = tok[i], .n = n};
    }
    return 2;
}

static void build(uint64_t seed, const int32_t *prompt, int n_prompt, pd_distill_data *d)
{
    pd_example in[2];
    static int32_t tok[2][16];
    int n_in = inputs(in, tok);
    pd_distill_params p = pd_distill_default_params();
    p.n_samples = 6;
    p.sample_length = 12;
    pd_err err;
    int rc = pd_distill_build(eng, model, prompt, n_prompt, in, n_in, &p, seed, d, &err);
    if (rc < 0) fail_msg("%s", err.msg);
}

static void test_teacher_targets_and_determinism(void **state)
{
    (void)state;
    const int V = model->cfg.vocab_size;
    int32_t *prompt;
    int n_prompt;
    assert_int_equal(pd_distill_prompt_tokens(model, prompt_text, 40, &prompt, &n_prompt, NULL),
                     PD_OK);
    assert_true(n_prompt > 20 && prompt[0] == pd_tokenizer_bos(model->tok));
    pd_distill_data a, b, c;
    build(7, prompt, n_prompt, &a);
    build(7, prompt, n_prompt, &b);
    build(8, prompt, n_prompt, &c);
    assert_int_equal(a.n, 6);
    int differ = 0;
    for (int i = 0; i < a.n; i++) {
        assert_int_equal(a.ex[i].n, b.ex[i].n);
        assert_memory_equal(a.ex[i].tokens, b.ex[i].tokens, (size_t)a.ex[i].n * 4);
        assert_memory_equal(a.ex[i].soft, b.ex[i].soft, (size_t)a.ex[i].n * V * 4);
        differ |= a.ex[i].n != c.ex[i].n ||
                  memcmp(a.ex[i].tokens, c.ex[i].tokens, (size_t)a.ex[i].n * 4) != 0;
    }
    assert_true(differ);

    /* soft targets = softmax of the hard prompt's logits (double reference) */
    double *lg = malloc((size_t)(n_prompt + 32) * V * sizeof *lg);
    int32_t *full = malloc((size_t)(n_prompt + 32) * sizeof *full);
    assert_true(lg && full);
    for (int i = 0; i < 2; i++) {
        const pd_example *e = &a.ex[i];
        memcpy(full, prompt, (size_t)n_prompt * 4);
        memcpy(full + n_prompt, e->tokens + 1, (size_t)(e->n - 1) * 4); /* without the BOS */
        const int n = n_prompt + e->n - 1;
        assert_false(isnan(ref_forward(model, NULL, NULL, 0, full, NULL, n, lg)));
        int targets = 0;
        for (int j = 1; j < e->n; j++) {
            if (!e->loss_mask[j]) continue;
            targets++;
            const double *l = lg + (size_t)(n_prompt + j - 2) * V; /* the row before token j */
            double mx = l[0], sum = 0, ssum = 0;
            for (int u = 1; u < V; u++) mx = fmax(mx, l[u]);
            for (int u = 0; u < V; u++) sum += exp(l[u] - mx);
            for (int u = 0; u < V; u++) {
                double want = exp(l[u] - mx) / sum, got = e->soft[(size_t)j * V + u];
                ssum += got;
                if (fabs(got - want) > 1e-4)
                    fail_msg("sample %d token %d: soft[%d] %.7g, reference %.7g", i, j, u, got,
                             want);
            }
            assert_true(fabs(ssum - 1.0) < 1e-4);
        }
        assert_true(targets >= 11); /* every continuation token: an input precedes it */
    }
    free(lg);
    free(full);

    /* the teacher's own prefix as the student: KL ~ 0 (prompt equivalence) */
    pd_prefix *teacher;
    assert_int_equal(pd_prefix_from_tokens(eng, model, "t", prompt, n_prompt, &teacher, NULL),
                     PD_OK);
    pd_backprop *bp;
    assert_int_equal(pd_backprop_create(model, 256, n_prompt, 2, &bp, NULL), PD_OK);
    pd_example view[6];
    for (int i = 0; i < a.n; i++) {
        view[i] = a.ex[i];
        view[i].tokens++;
        view[i].loss_mask++;
        view[i].soft += V;
        view[i].n--;
    }
    double loss;
    int nt;
    assert_int_equal(pd_backprop_run(bp, teacher->keys, teacher->values, n_prompt, view, a.n,
                                     NULL, NULL, &loss, &nt, NULL), PD_OK);
    assert_true(nt >= 60);
    if (!(loss / nt < 1e-5)) fail_msg("KL of the teacher against itself: %.3g per token", loss / nt);
    pd_backprop_free(bp);
    pd_prefix_release(teacher);
    pd_distill_free(&a);
    pd_distill_free(&b);
    pd_distill_free(&c);
    free(prompt);
}

static void test_prompt_initialisation(void **state)
{
    (void)state;
    const pd_config *c = &model->cfg;
    int32_t *prompt;
    int n;
    assert_int_equal(pd_distill_prompt_tokens(model, prompt_text, 0, &prompt, &n, NULL), PD_OK);
    const int P = 6, hd = c->head_dim, G = c->n_kv_heads, shift = n - P;
    const size_t np = (size_t)c->n_layers * G * P * hd;
    float *k = malloc(np * 4), *v = malloc(np * 4);
    assert_true(k && v);
    assert_int_equal(pd_distill_init_kv(eng, model, prompt, n, P, k, v, NULL), PD_OK);
    pd_prefix *full;
    assert_int_equal(pd_prefix_from_tokens(eng, model, "t", prompt, n, &full, NULL), PD_OK);
    double kd[256];
    assert_true(hd <= 256);
    for (int l = 0; l < c->n_layers; l++)
        for (int g = 0; g < G; g++)
            for (int i = 0; i < P; i++) {
                const int from = i ? shift + i : 0;
                const float *want_k = full->keys + (((size_t)l * G + g) * n + from) * hd;
                const float *want_v = full->values + (((size_t)l * G + g) * n + from) * hd;
                const float *got_k = k + (((size_t)l * G + g) * P + i) * hd;
                const float *got_v = v + (((size_t)l * G + g) * P + i) * hd;
                assert_memory_equal(got_v, want_v, (size_t)hd * 4);
                for (int j = 0; j < hd; j++) kd[j] = got_k[j];
                if (i) ref_rope_cfg(model, kd, hd, shift); /* forward again by the shift */
                for (int j = 0; j < hd; j++)
                    if (fabs(kd[j] - want_k[j]) > 1e-4 * fmax(1.0, fabs(want_k[j])))
                        fail_msg("layer %d head %d slot %d [%d]: %.7g vs %.7g", l, g, i, j,
                                 kd[j], want_k[j]);
            }
    /* P must compress */
    pd_err err;
    assert_int_equal(pd_distill_init_kv(eng, model, prompt, n, n, k, v, &err), PD_EINVAL);
    pd_prefix_release(full);
    free(k);
    free(v);
    free(prompt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kl_gradient_matches_finite_differences),
        cmocka_unit_test(test_teacher_targets_and_determinism),
        cmocka_unit_test(test_prompt_initialisation),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
