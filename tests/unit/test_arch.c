/* test_arch.c — every architecture prefixd runs, on random-weight models
 * written by tests/tools/synth_model.c (synthetic vocabulary):
 *
 *   llama3   llama, GQA 4/2, Llama 3.1 rope factors (rope_freqs.weight)
 *   linear   llama, GQA 4/2, linear rope scaling (factor 4), q/k/v biases
 *   qwen2    q/k/v biases, NeoX rotary, tied classifier, GQA 4/2
 *   qwen3    q/k head RMSNorm, NeoX rotary, key_length 16 with dim 32 and
 *            4 heads (q_dim 64 != dim), GQA 4/2
 *   phi3     q/k/v in one matrix and gate/up in one (split into views at
 *            load), NeoX rotary, GQA 4/2
 *
 * For each: the engine's logits with a random prefix equal the independent
 * double-precision forward pass of ref_model.h (tolerance below), and the
 * variant's features matter at this scale (the reference without them is
 * far off); prompt equivalence (a prefix built from a prompt's cache gives
 * the same bits as the prompt itself); batch invariance (a sequence's logits
 * are the same bits alone and in a mixed batch of other tasks, prefill and
 * decode). Then every refused key or tensor gives its clear message, and a
 * sliding window caps the context. */
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

#include "prefixd/engine.h"
#include "prefixd/generate.h"
#include "prefixd/gguf.h"
#include "prefixd/prefix.h"
#include "prefixd/safetensors.h"

#include "../tools/synth_model.h"
#include "ref_model.h"

/* |engine - reference| <= TOL · (1 + max |reference|) over all logits */
#define TOL 2e-5

enum { M_LLAMA3, M_LINEAR, M_QWEN2, M_QWEN3, M_PHI3, N_MODELS };
static const char *const names[N_MODELS] = {"llama3", "linear", "qwen2", "qwen3", "phi3"};
static pd_model *models[N_MODELS];
static char dir[64];

static synth_spec base_spec(int arch)
{
    synth_spec s = {0};
    s.arch = arch;
    s.dim = 32;
    s.hidden_dim = 48;
    s.n_layers = 2;
    s.n_heads = 4;
    s.n_kv_heads = 2;
    s.vocab_size = 300;
    s.seq_len = 64;
    s.scale = 0.3f;
    s.seed = 7;
    return s;
}

static synth_spec model_spec(int which)
{
    synth_spec s;
    switch (which) {
    case M_LLAMA3:
        s = base_spec(PD_ARCH_LLAMA);
        s.rope_scaling = PD_ROPE_SCALING_LLAMA3;
        s.rope_factor = 8;
        s.rope_orig_ctx = 64; /* pairs of every kind: factor 1, smoothed, 8 */
        break;
    case M_LINEAR:
        s = base_spec(PD_ARCH_LLAMA);
        s.rope_scaling = PD_ROPE_SCALING_LINEAR;
        s.rope_factor = 4;
        s.biases = 1;
        break;
    case M_QWEN2:
        s = base_spec(PD_ARCH_QWEN2);
        s.tied = 1;
        s.rope_base = 1000;
        break;
    case M_QWEN3:
        s = base_spec(PD_ARCH_QWEN3);
        s.head_dim = 16;
        break;
    default:
        s = base_spec(PD_ARCH_PHI3); /* fused q/k/v and gate/up, no window (Phi-4) */
        break;
    }
    s.seed += (uint64_t)which;
    return s;
}

/* Writes spec to dir/name.gguf and loads it: PD_OK and *out, or the
 * loader's status with err. */
static int write_load(const synth_spec *s, const char *name, pd_model **out, pd_err *err)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s.gguf", dir, name);
    pd_err werr;
    if (synth_write(s, NULL, path, &werr) < 0) fail_msg("writing %s: %s", path, werr.msg);
    pd_model_params mp = pd_model_default_params();
    mp.path = path;
    int rc = pd_model_load(&mp, out, err);
    unlink(path);
    return rc;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/prefixd-test-arch-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    for (int i = 0; i < N_MODELS; i++) {
        synth_spec s = model_spec(i);
        pd_err err;
        if (write_load(&s, names[i], &models[i], &err) < 0) {
            fprintf(stderr, "%s: %s\n", names[i], err.msg);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_MODELS; i++) pd_model_free(models[i]);
    rmdir(dir);
    return 0;
}

static uint64_t rng = 12345;
static double urand(void) { return (double)(synth_rand(&rng) >> 11) / 9007199254740992.0 * 2 - 1; }

static pd_prefix *random_prefix(const pd_model *m, const char *task, int P)
{
    pd_prefix *p;
    pd_err err;
    if (pd_prefix_create(m, task, P, &p, &err) < 0) fail_msg("%s", err.msg);
    size_t n = (size_t)m->cfg.n_layers * m->cfg.n_kv_heads * P * m->cfg.head_dim;
    for (size_t i = 0; i < n; i++) {
        p->keys[i] = (float)urand();
        p->values[i] = (float)urand();
    }
    return p;
}

static void random_tokens(const pd_model *m, int32_t *t, int n)
{
    t[0] = 1; /* BOS */
    for (int i = 1; i < n; i++) t[i] = 3 + (int32_t)(synth_rand(&rng) % (uint64_t)(m->cfg.vocab_size - 3));
}

/* Runs a batch of n tokens (seqs[i], pos[i]); all logits into out (n, V). */
static void step(pd_engine *e, const pd_model *m, int n, const int32_t *tok, pd_seq *const *seqs,
                 const int32_t *pos, float *out)
{
    pd_batch b = {n, tok, seqs, pos, NULL};
    const float *lg;
    pd_err err;
    if (pd_engine_step(e, &b, &lg, &err) != n) fail_msg("step: %s", err.msg);
    memcpy(out, lg, (size_t)n * m->cfg.vocab_size * sizeof(float));
}

/* toks[0..n) through s from cache index 0 in one step. */
static void step_all(pd_engine *e, const pd_model *m, pd_seq *s, const int32_t *toks, int n,
                     float *out)
{
    pd_seq *ss[32];
    int32_t pos[32];
    assert_true(n <= 32);
    for (int i = 0; i < n; i++) {
        ss[i] = s;
        pos[i] = i;
    }
    step(e, m, n, toks, ss, pos, out);
}

/* max |a - b| over n, and max |b| */
static double max_diff(const float *a, const double *b, size_t n, double *bmax)
{
    double d = 0;
    *bmax = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        *bmax = fmax(*bmax, fabs(b[i]));
    }
    return d;
}

/* The model without its variant: llama rotary, no scaling, no biases or
 * head norms (a shallow copy; layers copied into *layers). */
static pd_model plain_of(const pd_model *m, pd_layer_weights **layers)
{
    pd_model p = *m;
    *layers = malloc((size_t)m->cfg.n_layers * sizeof **layers);
    assert_non_null(*layers);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        (*layers)[l] = m->w.layers[l];
        (*layers)[l].bq = (*layers)[l].bk = (*layers)[l].bv = NULL;
        (*layers)[l].q_norm = (*layers)[l].k_norm = NULL;
    }
    p.w.layers = *layers;
    p.w.rope_freqs = NULL;
    p.cfg.rope_type = PD_ROPE_NORM;
    p.cfg.rope_freq_scale = 1.0f;
    return p;
}

static void test_logits_match_reference(void **state)
{
    const int which = (int)(intptr_t)*state;
    const pd_model *m = models[which];
    const pd_config *c = &m->cfg;
    const int P = 3, n = 12, V = c->vocab_size;
    pd_prefix *p = random_prefix(m, "t", P);
    int32_t tok[12];
    random_tokens(m, tok, n);
    pd_engine_params ep = pd_engine_default_params();
    ep.n_threads = 2;
    pd_engine *e;
    pd_seq *s;
    assert_int_equal(pd_engine_create(m, &ep, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(m, n, &s, NULL), PD_OK);
    pd_seq_set_prefix(s, P, p->keys, p->values);
    float *got = malloc((size_t)n * V * sizeof *got);
    double *ref = malloc((size_t)n * V * sizeof *ref), *ref2 = malloc((size_t)n * V * sizeof *ref2);
    const size_t np = (size_t)c->n_layers * c->n_kv_heads * P * c->head_dim;
    double *kd = malloc(np * 8), *vd = malloc(np * 8);
    assert_true(got && ref && ref2 && kd && vd);
    for (size_t i = 0; i < np; i++) {
        kd[i] = p->keys[i];
        vd[i] = p->values[i];
    }
    step_all(e, m, s, tok, n, got);
    assert_false(isnan(ref_forward(m, kd, vd, P, tok, NULL, n, ref)));
    double rmax, d = max_diff(got, ref, (size_t)n * V, &rmax);
    if (!(d <= TOL * (1 + rmax)))
        fail_msg("%s: engine vs double reference: max abs diff %g > %g", names[which], d,
                 TOL * (1 + rmax));
    /* the variant is visible at this scale: without it the reference moves
     * by far more than the tolerance */
    pd_layer_weights *layers;
    pd_model plain = plain_of(m, &layers);
    assert_false(isnan(ref_forward(&plain, kd, vd, P, tok, NULL, n, ref2)));
    double far = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) far = fmax(far, fabs(ref[i] - ref2[i]));
    if (!(far > 100 * TOL * (1 + rmax)))
        fail_msg("%s: the architecture's features change the logits by only %g", names[which],
                 far);
    printf("  %s: max |engine - reference| %.3g (logits up to %.3g); without the variant %.3g\n",
           names[which], d, rmax, far);
    free(layers);
    free(got); free(ref); free(ref2); free(kd); free(vd);
    pd_seq_free(s);
    pd_engine_free(e);
    pd_prefix_release(p);
}

static void test_prompt_equivalence(void **state)
{
    const int which = (int)(intptr_t)*state;
    const pd_model *m = models[which];
    const int V = m->cfg.vocab_size, np = 7, nr = 5;
    int32_t all[12];
    random_tokens(m, all, np + nr);
    pd_engine *e;
    pd_seq *plain, *pre;
    pd_prefix *p;
    pd_err err;
    assert_int_equal(pd_engine_create(m, NULL, &e, NULL), PD_OK);
    if (pd_prefix_from_tokens(e, m, "prompt", all, np, &p, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(pd_seq_create(m, np + nr, &plain, NULL), PD_OK);
    assert_int_equal(pd_seq_create(m, nr, &pre, NULL), PD_OK);
    pd_seq_set_prefix(pre, np, p->keys, p->values);
    float *a = malloc((size_t)(np + nr) * V * sizeof *a), *b = malloc((size_t)nr * V * sizeof *b);
    assert_true(a && b);
    step_all(e, m, plain, all, np + nr, a);
    step_all(e, m, pre, all + np, nr, b);
    if (memcmp(a + (size_t)np * V, b, (size_t)nr * V * sizeof *b) != 0)
        fail_msg("%s: prompt-built prefix + request differs from prompt + request", names[which]);
    free(a); free(b);
    pd_seq_free(plain);
    pd_seq_free(pre);
    pd_prefix_release(p);
    pd_engine_free(e);
}

static void test_batch_invariance(void **state)
{
    const int which = (int)(intptr_t)*state;
    const pd_model *m = models[which];
    const int V = m->cfg.vocab_size, na = 6, nb = 9;
    pd_prefix *pa = random_prefix(m, "a", 2), *pb = random_prefix(m, "b", 5);
    int32_t ta[7], tb[9];
    random_tokens(m, ta, na + 1);
    random_tokens(m, tb, nb);
    pd_engine *e;
    pd_seq *sa, *sb;
    assert_int_equal(pd_engine_create(m, NULL, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(m, na + 1, &sa, NULL), PD_OK);
    assert_int_equal(pd_seq_create(m, nb + 1, &sb, NULL), PD_OK);
    float *alone = malloc((size_t)(na + 1) * V * 4), *mixed = malloc((size_t)(na + nb + 2) * V * 4);
    assert_true(alone && mixed);
    /* alone: prefill then one decode token */
    pd_seq_set_prefix(sa, 2, pa->keys, pa->values);
    step_all(e, m, sa, ta, na, alone);
    pd_seq *one[2] = {sa, sb};
    int32_t pos1[2] = {na, nb};
    step(e, m, 1, ta + na, one, pos1, alone + (size_t)na * V);
    /* mixed: a's tokens interleaved with b's (another task) in one step,
     * then both decode together */
    pd_seq_set_prefix(sa, 2, pa->keys, pa->values);
    pd_seq_set_prefix(sb, 5, pb->keys, pb->values);
    pd_seq *ss[15];
    int32_t tok[15], pos[15];
    int n = 0, ia = 0, ib = 0, slot_a[6];
    while (ia < na || ib < nb) {
        if (ib < nb) { ss[n] = sb; tok[n] = tb[ib]; pos[n] = ib++; n++; }
        if (ia < na) { slot_a[ia] = n; ss[n] = sa; tok[n] = ta[ia]; pos[n] = ia++; n++; }
    }
    step(e, m, n, tok, ss, pos, mixed);
    for (int i = 0; i < na; i++)
        if (memcmp(mixed + (size_t)slot_a[i] * V, alone + (size_t)i * V, (size_t)V * 4) != 0)
            fail_msg("%s: token %d of a differs alone and in a mixed prefill", names[which], i);
    int32_t dt[2] = {tb[0], ta[na]};
    pd_seq *ds[2] = {sb, sa};
    int32_t dp[2] = {nb, na};
    step(e, m, 2, dt, ds, dp, mixed);
    if (memcmp(mixed + (size_t)V, alone + (size_t)na * V, (size_t)V * 4) != 0)
        fail_msg("%s: a's decode token differs alone and in a batch", names[which]);
    free(alone); free(mixed);
    pd_seq_free(sa); pd_seq_free(sb);
    pd_prefix_release(pa); pd_prefix_release(pb);
    pd_engine_free(e);
}

/* `prefixd convert` writes each architecture back out: the reloaded model
 * has the same configuration and fingerprint (hyper-parameters, weights and
 * the variant's vectors). */
static void test_convert_round_trip(void **state)
{
    const int which = (int)(intptr_t)*state;
    const pd_model *m = models[which];
    char path[128];
    snprintf(path, sizeof path, "%s/convert.gguf", dir);
    pd_err err;
    if (pd_gguf_write_model(m, path, PD_DTYPE_F32, "round trip", &err) < 0) fail_msg("%s", err.msg);
    pd_model_params mp = pd_model_default_params();
    mp.path = path;
    pd_model *r;
    if (pd_model_load(&mp, &r, &err) < 0) fail_msg("%s: reloading: %s", names[which], err.msg);
    unlink(path);
    assert_memory_equal(&r->cfg, &m->cfg, sizeof m->cfg);
    assert_string_equal(r->fingerprint_hex, m->fingerprint_hex);
    assert_int_equal(r->tied_classifier, m->tied_classifier);
    pd_model_free(r);
}

/* ---- PEFT import ---- */

/* Writes an HF PEFT prefix-tuning adapter (PEFT >= 0.12's GQA config:
 * token_dim = kv_dim, num_attention_heads = kv heads) holding rows
 * (P, L*2*kv_dim) into dir/adapter. */
static void write_adapter(const pd_model *m, int P, const float *rows, char *adir, size_t cap)
{
    const pd_config *c = &m->cfg;
    snprintf(adir, cap, "%s/adapter", dir);
    mkdir(adir, 0755);
    char path[256], cfg[512];
    snprintf(path, sizeof path, "%s/adapter_config.json", adir);
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"PREFIX_TUNING\", \"task_type\": \"CAUSAL_LM\", "
             "\"num_virtual_tokens\": %d, \"num_layers\": %d, \"token_dim\": %d, "
             "\"num_attention_heads\": %d, \"num_transformer_submodules\": 1}",
             P, c->n_layers, c->kv_dim, c->n_kv_heads);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(cfg, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adir);
    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    int64_t shape[2] = {P, 2LL * c->n_layers * c->kv_dim};
    assert_int_equal(pd_st_writer_add_f32(w, "prompt_embeddings", PD_ST_F32, 2, shape, rows, NULL),
                     PD_OK);
    assert_int_equal(pd_st_writer_write(w, path, NULL), PD_OK);
    pd_st_writer_free(w);
}

/* The HF checkpoint a llama GGUF came from: llama.cpp's converter permuted
 * each head's q/k rows from HF's halves (i, i + hd/2) to adjacent pairs
 * (2i, 2i + 1); undo that (HF row r·hd/2 + i = our row 2i + r) and rotate
 * NeoX-style, as HF's rotate_half does. Matrices are owned by *bufs. */
static pd_model hf_of(const pd_model *m, pd_layer_weights **layers, float **bufs)
{
    const pd_config *c = &m->cfg;
    const int C = c->dim, hd = c->head_dim, L = c->n_layers;
    pd_model h = *m;
    *layers = malloc((size_t)L * sizeof **layers);
    *bufs = malloc((size_t)L * (c->q_dim + c->kv_dim) * (C + 1) * sizeof **bufs);
    assert_true(*layers && *bufs);
    float *next = *bufs;
    for (int l = 0; l < L; l++) {
        pd_layer_weights *w = &(*layers)[l];
        *w = m->w.layers[l];
        for (int which = 0; which < 2; which++) {
            const int rows = which ? c->kv_dim : c->q_dim;
            pd_wmat *W = which ? &w->wk : &w->wq;
            const float **bias = which ? &w->bk : &w->bq;
            float *dst = next, *bdst = next + (size_t)rows * C;
            next += (size_t)rows * (C + 1);
            for (int r = 0; r < rows; r++) {
                int head = r / hd, d = r % hd, ours = head * hd + 2 * (d % (hd / 2)) + d / (hd / 2);
                pd_wmat_row_f32(W, ours, dst + (size_t)r * C);
                if (*bias) bdst[r] = (*bias)[ours];
            }
            *W = pd_wmat_f32(dst, rows, C);
            if (*bias) *bias = bdst;
        }
    }
    h.w.layers = *layers;
    h.cfg.rope_type = PD_ROPE_NEOX;
    return h;
}

/* A PEFT adapter imported into each architecture gives the logits HF would
 * compute with it: on llama (adjacent rotary) the reference runs the HF
 * form of the model (q/k un-permuted, NeoX rotary) with the adapter's keys
 * as they are, against prefixd's model with the imported keys; on qwen
 * (NeoX, HF's own layout) the keys import unchanged. GQA shapes, and on
 * qwen3 head_dim != dim / heads. */
static void test_peft_import(void **state)
{
    const int which = (int)(intptr_t)*state;
    const pd_model *m = models[which];
    const pd_config *c = &m->cfg;
    const int P = 3, n = 6, V = c->vocab_size, hd = c->head_dim, G = c->n_kv_heads;
    const size_t width = 2ULL * c->n_layers * c->kv_dim;
    const size_t np = (size_t)c->n_layers * G * P * hd;
    float *rows = malloc((size_t)P * width * sizeof *rows);
    double *kh = malloc(np * 8), *vh = malloc(np * 8), *ki = malloc(np * 8), *vi = malloc(np * 8);
    double *a = malloc((size_t)n * V * 8), *b = malloc((size_t)n * V * 8);
    assert_true(rows && kh && vh && ki && vi && a && b);
    for (size_t i = 0; i < (size_t)P * width; i++) rows[i] = (float)urand();
    /* the adapter's keys/values in prefix order, HF layout (PEFT's flat index) */
    for (int t = 0; t < P; t++)
        for (size_t f = 0; f < width; f++) {
            size_t d = f % hd, g = f / hd % G, kv = f / hd / G % 2, l = f / hd / G / 2;
            (kv ? vh : kh)[((l * G + g) * P + t) * hd + d] = rows[(size_t)t * width + f];
        }
    char adir[128];
    write_adapter(m, P, rows, adir, sizeof adir);
    pd_prefix *p;
    pd_err err;
    if (pd_prefix_import_peft(adir, m, "peft", &p, &err) < 0) fail_msg("%s", err.msg);
    for (size_t i = 0; i < np; i++) {
        ki[i] = p->keys[i];
        vi[i] = p->values[i];
    }
    int32_t tok[6];
    random_tokens(m, tok, n);
    pd_layer_weights *layers = NULL;
    float *bufs = NULL;
    pd_model hf = c->rope_type == PD_ROPE_NORM ? hf_of(m, &layers, &bufs) : *m;
    assert_false(isnan(ref_forward(&hf, kh, vh, P, tok, NULL, n, a)));
    assert_false(isnan(ref_forward(m, ki, vi, P, tok, NULL, n, b)));
    double d = 0, amax = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) {
        d = fmax(d, fabs(a[i] - b[i]));
        amax = fmax(amax, fabs(a[i]));
    }
    if (!(d <= 1e-9 * (1 + amax)))
        fail_msg("%s: imported PEFT prefix vs HF form: max abs diff %g", names[which], d);
    /* and on the engine too */
    pd_engine *e;
    pd_seq *s;
    assert_int_equal(pd_engine_create(m, NULL, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(m, n, &s, NULL), PD_OK);
    pd_seq_set_prefix(s, P, p->keys, p->values);
    float *got = malloc((size_t)n * V * sizeof *got);
    assert_non_null(got);
    step_all(e, m, s, tok, n, got);
    double gmax, gd = max_diff(got, a, (size_t)n * V, &gmax);
    if (!(gd <= TOL * (1 + gmax)))
        fail_msg("%s: engine with the imported prefix vs HF form: %g", names[which], gd);
    free(got);
    pd_seq_free(s);
    pd_engine_free(e);
    free(layers); free(bufs);
    pd_prefix_release(p);
    char path[256];
    snprintf(path, sizeof path, "%s/adapter_config.json", adir);
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adir);
    unlink(path);
    rmdir(adir);
    free(rows); free(kh); free(vh); free(ki); free(vi); free(a); free(b);
}

/* ---- refusals ---- */

typedef struct refusal {
    const char *what;
    synth_spec spec;
    int code;
    const char *msg;
} refusal;

static void test_refusals(void **state)
{
    (void)state;
    refusal cases[20];
    int n = 0;
#define CASE(what_, code_, msg_, ...)                         \
    do {                                                      \
        cases[n].what = what_;                                \
        cases[n].spec = base_spec(PD_ARCH_LLAMA);             \
        synth_spec *s = &cases[n].spec;                       \
        __VA_ARGS__;                                          \
        cases[n].code = code_;                                \
        cases[n].msg = msg_;                                  \
        n++;                                                  \
    } while (0)
    CASE("yarn", PD_EUNSUPPORTED, "llama.rope.scaling.type = 'yarn' is not supported",
         s->rope_type_str = "yarn");
    CASE("longrope", PD_EUNSUPPORTED, "rope.scaling.type = 'longrope'",
         s->arch = PD_ARCH_QWEN2; s->rope_type_str = "longrope");
    CASE("logit softcapping", PD_EUNSUPPORTED, "key llama.attn_logit_softcapping is not implemented",
         s->extra_key = "llama.attn_logit_softcapping"; s->extra_value = 50);
    CASE("final softcapping", PD_EUNSUPPORTED, "key qwen3.final_logit_softcapping",
         s->arch = PD_ARCH_QWEN3; s->extra_key = "qwen3.final_logit_softcapping";
         s->extra_value = 30);
    CASE("attention factor", PD_EUNSUPPORTED, "llama.rope.scaling.attn_factor = 2",
         s->extra_key = "llama.rope.scaling.attn_factor"; s->extra_value = 2);
    CASE("clamp", PD_EUNSUPPORTED, "key llama.attention.clamp_kqv is not implemented",
         s->extra_key = "llama.attention.clamp_kqv"; s->extra_value = 8);
    CASE("extra tensor", PD_EUNSUPPORTED, "tensor blk.0.attn_output.bias is not used",
         s->extra_tensor = "blk.0.attn_output.bias");
    CASE("rope_freqs on qwen2", PD_EUNSUPPORTED, "tensor rope_freqs.weight is not used by prefixd's qwen2",
         s->arch = PD_ARCH_QWEN2; s->rope_scaling = PD_ROPE_SCALING_LLAMA3);
    CASE("qwen2 bias missing", PD_ENOTFOUND, "tensor blk.1.attn_k.bias is missing",
         s->arch = PD_ARCH_QWEN2; s->skip_tensor = "blk.1.attn_k.bias");
    CASE("qwen3 norm missing", PD_ENOTFOUND, "tensor blk.0.attn_q_norm.weight is missing",
         s->arch = PD_ARCH_QWEN3; s->skip_tensor = "blk.0.attn_q_norm.weight");
    CASE("llama3 without factors", PD_ENOTFOUND, "rope_freqs.weight",
         s->rope_type_str = "llama3");
    CASE("key != value length", PD_EUNSUPPORTED, "value_length = 4",
         s->arch = PD_ARCH_QWEN3; s->head_dim = 16; s->value_length = 4);
    CASE("partial rotary", PD_EUNSUPPORTED, "partial rotary", s->rope_dims = 4);
    CASE("factor with type none", PD_EUNSUPPORTED, "scaling type none",
         s->rope_type_str = "none"; s->extra_key = "llama.rope.scaling.factor";
         s->extra_value = 4);
    CASE("phi3 LongRoPE", PD_EUNSUPPORTED, "tensor rope_factors_long.weight is not used",
         s->arch = PD_ARCH_PHI3; s->extra_tensor = "rope_factors_long.weight");
    CASE("phi3 unfused", PD_ENOTFOUND, "tensor blk.0.attn_qkv.weight is missing",
         s->arch = PD_ARCH_PHI3; s->skip_tensor = "blk.0.attn_qkv.weight");
    CASE("unknown architecture", PD_EUNSUPPORTED, "general.architecture is 'gemma'",
         s->arch = 99);
#undef CASE
    for (int i = 0; i < n; i++) {
        pd_model *m = NULL;
        pd_err err;
        pd_err_clear(&err);
        int rc;
        if (cases[i].spec.arch == 99) {
            /* synth writes only the three it knows: patch the name in */
            cases[i].spec.arch = PD_ARCH_LLAMA;
            char path[128];
            snprintf(path, sizeof path, "%s/gemma.gguf", dir);
            pd_err werr;
            assert_int_equal(synth_write(&cases[i].spec, NULL, path, &werr), PD_OK);
            FILE *f = fopen(path, "r+b");
            assert_non_null(f);
            char buf[4096];
            size_t got = fread(buf, 1, sizeof buf, f);
            char *at = memmem(buf, got, "llama", 5);
            assert_non_null(at);
            fseek(f, at - buf, SEEK_SET);
            fwrite("gemma", 1, 5, f);
            fclose(f);
            pd_model_params mp = pd_model_default_params();
            mp.path = path;
            rc = pd_model_load(&mp, &m, &err);
            unlink(path);
        } else {
            rc = write_load(&cases[i].spec, "bad", &m, &err);
        }
        pd_model_free(m);
        if (rc != cases[i].code || !strstr(err.msg, cases[i].msg))
            fail_msg("%s: status %d (expected %d), message: %s (expected to contain '%s')",
                     cases[i].what, rc, cases[i].code, err.msg, cases[i].msg);
    }
}

static void test_sliding_window_caps_context(void **state)
{
    (void)state;
    synth_spec s = base_spec(PD_ARCH_LLAMA);
    s.sliding_window = 16;
    pd_model *m;
    pd_err err;
    if (write_load(&s, "swa", &m, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(m->cfg.sliding_window, 16);
    assert_int_equal(m->cfg.seq_len, 16);
    assert_int_equal(m->cfg.ctx_train, 64);
    /* a prefix and tokens together beyond the window are refused */
    pd_engine *e;
    pd_seq *sq;
    assert_int_equal(pd_engine_create(m, NULL, &e, NULL), PD_OK);
    assert_int_equal(pd_seq_create(m, 16, &sq, NULL), PD_OK);
    pd_prefix *p = random_prefix(m, "w", 8);
    pd_seq_set_prefix(sq, 8, p->keys, p->values);
    int32_t tok[10];
    random_tokens(m, tok, 10);
    pd_seq *ss[10];
    int32_t pos[10];
    for (int i = 0; i < 10; i++) {
        ss[i] = sq;
        pos[i] = i;
    }
    pd_batch b = {10, tok, ss, pos, NULL};
    const float *lg;
    assert_int_equal(pd_engine_step(e, &b, &lg, &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "sliding window of 16"));
    b.n = 8; /* positions 8..15: inside */
    assert_int_equal(pd_engine_step(e, &b, &lg, &err), 8);
    pd_prefix_release(p);
    pd_seq_free(sq);
    pd_engine_free(e);
    pd_model_free(m);
}

#define PER_MODEL(fn)                                                                    \
    cmocka_unit_test_prestate(fn, (void *)(intptr_t)M_LLAMA3),                           \
        cmocka_unit_test_prestate(fn, (void *)(intptr_t)M_LINEAR),                       \
        cmocka_unit_test_prestate(fn, (void *)(intptr_t)M_QWEN2),                        \
        cmocka_unit_test_prestate(fn, (void *)(intptr_t)M_QWEN3),                        \
        cmocka_unit_test_prestate(fn, (void *)(intptr_t)M_PHI3)

int main(void)
{
    const struct CMUnitTest tests[] = {
        PER_MODEL(test_logits_match_reference),
        PER_MODEL(test_prompt_equivalence),
        PER_MODEL(test_batch_invariance),
        PER_MODEL(test_peft_import),
        PER_MODEL(test_convert_round_trip),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_sliding_window_caps_context),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
