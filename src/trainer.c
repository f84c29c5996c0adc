/* trainer.c — one training job from data to a trained prefix (contract in
 * prefixd/trainer.h).
 *
 * Design. A job runs on the calling thread: load and tokenize the data,
 * split off the validation set, initialise the parameters, then one AdamW
 * step per batch, with pd_backprop (its own thread pool) for the gradients.
 * Everything that decides the result is derived from the seed and the data,
 * in a fixed order, so a run is reproducible bit for bit; a checkpoint holds
 * the whole state between two steps (parameters, moments, step, generator,
 * the epoch's order and position), so a run resumed at step k ends with the
 * same bits as an uninterrupted one. (Bit for bit with the same thread
 * count: the products inside pd_backprop are split among the threads.)
 * The job's state (struct trainer) belongs to the calling thread.
 *
 * The parameters are one flat vector. Direct: keys then values, each
 * (n_layers, n_kv_heads, P, head_dim). With prefix_projection: the MLP's
 * (prefixd/prefix_mlp.h), and keys/values are computed from it every step.
 *
 * Initialisation. Random: small normal noise, scaled per layer to the RMS
 * of the model's own cached keys (values) over a short story opening
 * (INIT_STD below); with projection, PEFT's initialisation with its output
 * layer scaled down to the same size. init_text: the prompt's own cached keys/values
 * (BOS + text, P = its token count); such a prefix already holds BOS, so the
 * job trains and serves it with has_bos = 1 (examples without BOS, as the
 * server encodes requests after it) and starts out behaving exactly like the
 * prompt (ARCHITECTURE.md "Prompt equivalence"). init_text is refused with
 * prefix_projection (no MLP reproduces a given prefix).
 *
 * Distillation (p->distill.teacher_prompt): the examples are teacher
 * samples with soft targets (distill.c), BOS first like a dataset's, and
 * the prefix holds BOS (has_bos = 1) like an init_text one; it starts from
 * the prompt's compressed KV (pd_distill_init_kv) or at random. The loss is
 * then KL(teacher ‖ student) (+ ce_weight of cross-entropy in training;
 * validation is pure KL), valid_token_accuracy the top-1 agreement with the
 * teacher, and base_loss / base_accuracy the base model's without the prompt.
 *
 * Losses. train_loss is the mean over the targets of the last epoch;
 * valid_loss the mean over the validation targets with the final prefix;
 * base_valid_loss the same targets under the base model without a prefix
 * (BOS first, positions from 0).
 */
#include "prefixd/trainer.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prefix_internal.h"
#include "prefixd/adamw.h"
#include "prefixd/backprop.h"
#include "prefixd/checkpoint.h"
#include "prefixd/dataset.h"
#include "prefixd/distill.h"
#include "prefixd/engine.h"
#include "prefixd/log.h"
#include "prefixd/prefix_mlp.h"

/* Tokens in one batch at most (pd_backprop's limit on rows). */
#define PD_TRAIN_MAX_ROWS 65536

/* Separate generator streams derived from the job's seed. */
enum { STREAM_SPLIT = 1, STREAM_SHUFFLE = 2, STREAM_INIT = 3, STREAM_SAMPLE = 4,
       STREAM_SAMPLE_VALID = 5 };

/* Text whose cached keys/values set the scale of a random initialisation. */
static const char scale_text[] = "Once upon a time, there was a little girl named Lily. "
                                 "She loved to play outside in the park with her friends.";

pd_train_params pd_train_default_params(void)
{
    return (pd_train_params){
        .task = NULL,
        .job_id = "",
        .train_path = NULL,
        .valid_path = NULL,
        .valid_fraction = 0.1,
        .skip_bad_lines = 0,
        .num_virtual_tokens = 20,
        .prefix_projection = 0,
        .encoder_hidden_size = 128,
        .init_text = NULL,
        .init_prefix = NULL,
        .n_epochs = 0, /* auto */
        .batch_size = 4,
        .learning_rate = 0.0, /* auto: see pd_train_params */
        .weight_decay = 0.0,
        .beta1 = 0.9,
        .beta2 = 0.999,
        .eps = 1e-8,
        .warmup_fraction = 0.1,
        .schedule = PD_LR_LINEAR,
        .max_grad_norm = 1.0,
        .seed = 0,
        .eval_every = 10,
        .early_stopping_patience = 0,
        .checkpoint_every = 20,
        .checkpoint_path = NULL,
        .n_threads = 0,
        .distill = pd_distill_default_params(),
    };
}

int pd_train_epochs(const pd_train_params *p, int n_train)
{
    if (p->n_epochs > 0) return p->n_epochs;
    int b = p->batch_size > 0 ? p->batch_size : 1;
    long steps_per_epoch = n_train > 0 ? (n_train + b - 1) / b : 1;
    long e = (PD_TRAIN_AUTO_STEPS + steps_per_epoch - 1) / steps_per_epoch;
    return (int)(e < 1 ? 1 : e > PD_TRAIN_AUTO_MAX_EPOCHS ? PD_TRAIN_AUTO_MAX_EPOCHS : e);
}

/* ---- the job's state ---- */

typedef struct trainer {
    const pd_model *m;
    const pd_train_params *p;
    int P;                  /* virtual tokens */
    int has_bos;            /* 1: examples go without BOS (init_text) */
    pd_dataset *train_ds, *valid_ds; /* valid_ds NULL when split off train_ds */
    pd_example *train;      /* (n_train) examples as trained on */
    pd_example *valid;      /* (n_valid) examples as evaluated */
    pd_example *valid_base; /* (n_valid) the same, BOS first, for the base model */
    int n_train, n_valid;
    int max_len;            /* longest example (BOS included) */
    pd_backprop *bp;
    pd_engine *eng;         /* validation token accuracy */
    pd_seq *seq;            /* one validation example at a time */
    int32_t *acc_tok, *acc_pos; /* (eng max tokens) one engine step's batch */
    uint8_t *acc_want;      /* (eng max tokens) */
    pd_seq **acc_seqs;      /* (eng max tokens) */
    int proj;
    pd_prefix_mlp mlp;
    size_t n_kv;            /* floats in keys (and in values) */
    size_t n_params;
    float *params;          /* (n_params) */
    float *grad;            /* (n_params) */
    float *keys, *values;   /* (n_kv) each: views into params, or the MLP's output */
    float *kv_grad;         /* (2, n_kv) d(loss)/d(keys, values): grad, or the MLP's input */
    float *dkeys, *dvalues; /* (n_kv) each: views into kv_grad */
    float *kv_buf;          /* (4, n_kv) keys, values, dkeys, dvalues with projection */
    pd_adamw opt;
    pd_lr_schedule sched;
    int steps_per_epoch;
    uint64_t config_hash;
    /* the position in the run (what a checkpoint saves) */
    pd_rng rng;
    int *order;             /* (n_train) */
    int step, epoch, pos;
    uint64_t trained_tokens;
    double epoch_loss_sum, epoch_targets, train_loss, valid_loss;
    /* early stopping (best is NULL when it is off) */
    float *best;            /* (n_params) parameters of the best validation */
    double best_valid_loss; /* NaN: none yet */
    int best_step, bad_evals;
    int stopped_early;      /* 1: the run ended before its last step */
    double valid_accuracy, base_loss;
    /* distillation (p->distill.teacher_prompt set) */
    int32_t *prompt;        /* (n_prompt) the teacher prompt, BOS first */
    int n_prompt;
    pd_distill_data dtrain, dvalid;
    double base_accuracy;   /* top-1 agreement of the base model without the prompt */
} trainer;

static void trainer_free(trainer *t)
{
    pd_backprop_free(t->bp);
    pd_seq_free(t->seq);
    pd_engine_free(t->eng);
    free(t->acc_tok);
    free(t->acc_pos);
    free(t->acc_want);
    free(t->acc_seqs);
    free(t->best);
    pd_prefix_mlp_free(&t->mlp);
    pd_adamw_free(&t->opt);
    pd_dataset_free(t->train_ds);
    pd_dataset_free(t->valid_ds);
    free(t->train);
    free(t->valid);
    free(t->valid_base);
    free(t->params);
    free(t->grad);
    free(t->kv_buf);
    free(t->order);
    free(t->prompt);
    pd_distill_free(&t->dtrain);
    pd_distill_free(&t->dvalid);
}

static uint64_t mix_seed(uint64_t seed, uint64_t stream)
{
    return seed ^ (stream * 0xd1342543de82ef95ull + 0x2545f4914f6cdd1dull);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- parameters and data ---- */

static int check_params(const pd_model *m, const pd_train_params *p, pd_err *err)
{
    const pd_config *c = &m->cfg;
    if (!p->task || !pd_task_name_valid(p->task))
        return pd_err_set(err, PD_EINVAL, "task name '%s' is not valid ([A-Za-z0-9]"
                                          "[A-Za-z0-9._-]{0,63})", p->task ? p->task : "");
    const pd_distill_params *d = &p->distill;
    if (!p->train_path && !d->teacher_prompt)
        return pd_err_set(err, PD_EINVAL, "no training file");
    if (d->teacher_prompt) {
        if (!d->teacher_prompt[0])
            return pd_err_set(err, PD_EINVAL, "distill: teacher_prompt is empty");
        if (p->prefix_projection || (p->init_text && p->init_text[0]) || p->init_prefix)
            return pd_err_set(err, PD_EINVAL, "distill: prefix_projection, init_text and "
                              "init_from do not apply (the prefix starts from the teacher "
                              "prompt or at random: init)");
#define DRANGE(cond, ...) \
    if (!(cond)) return pd_err_set(err, PD_EINVAL, "distill: " __VA_ARGS__)
        DRANGE(d->n_samples >= 2 && d->n_samples <= 1000000, "n_samples %d outside [2, 1000000]",
               d->n_samples);
        DRANGE(d->sample_length >= 2 && d->sample_length <= c->seq_len - 2,
               "sample_length %d outside [2, %d]", d->sample_length, c->seq_len - 2);
        DRANGE(d->temperature > 0 && d->temperature <= 100, "temperature %g outside (0, 100]",
               d->temperature);
        DRANGE(d->ce_weight >= 0 && d->ce_weight <= 1, "ce_weight %g outside [0, 1]",
               d->ce_weight);
        DRANGE(d->init == PD_DISTILL_INIT_PROMPT || d->init == PD_DISTILL_INIT_RANDOM,
               "init %d is not a PD_DISTILL_INIT_ value", d->init);
#undef DRANGE
    }
#define RANGE(cond, ...) \
    if (!(cond)) return pd_err_set(err, PD_EINVAL, __VA_ARGS__)
    RANGE(p->num_virtual_tokens >= 1 && p->num_virtual_tokens <= c->seq_len - 2,
          "num_virtual_tokens %d outside [1, %d]", p->num_virtual_tokens, c->seq_len - 2);
    RANGE(!p->prefix_projection || (p->encoder_hidden_size >= 1 &&
                                    p->encoder_hidden_size <= 65536),
          "encoder_hidden_size %d outside [1, 65536]", p->encoder_hidden_size);
    RANGE(p->n_epochs >= 0 && p->n_epochs <= 100000, "n_epochs %d outside [0, 100000] (0: auto)",
          p->n_epochs);
    RANGE(p->schedule >= 0 && p->schedule < PD_LR_KIND_COUNT, "schedule %d is not a pd_lr_kind",
          p->schedule);
    RANGE(p->early_stopping_patience >= 0, "early_stopping_patience %d is negative",
          p->early_stopping_patience);
    RANGE(p->eval_every >= 0, "eval_every %d is negative", p->eval_every);
    RANGE(p->batch_size >= 1 && p->batch_size <= 4096, "batch_size %d outside [1, 4096]",
          p->batch_size);
    RANGE(isfinite(p->learning_rate) && p->learning_rate >= 0 && p->learning_rate <= 10,
          "learning_rate %g outside [0, 10] (0: automatic)", p->learning_rate);
    RANGE(isfinite(p->weight_decay) && p->weight_decay >= 0, "weight_decay %g is negative",
          p->weight_decay);
    RANGE(p->beta1 >= 0 && p->beta1 < 1 && p->beta2 >= 0 && p->beta2 < 1,
          "betas (%g, %g) outside [0, 1)", p->beta1, p->beta2);
    RANGE(isfinite(p->eps) && p->eps > 0, "eps %g is not positive", p->eps);
    RANGE(p->warmup_fraction >= 0 && p->warmup_fraction < 1,
          "warmup_fraction %g outside [0, 1)", p->warmup_fraction);
    RANGE(isfinite(p->max_grad_norm) && p->max_grad_norm >= 0,
          "max_grad_norm %g is negative", p->max_grad_norm);
    RANGE(p->valid_fraction >= 0 && p->valid_fraction < 1, "valid_fraction %g outside [0, 1)",
          p->valid_fraction);
#undef RANGE
    if (p->init_text && p->init_text[0] && p->prefix_projection)
        return pd_err_set(err, PD_EINVAL,
                          "init_text cannot be combined with prefix_projection: train the "
                          "prefix directly to start from a prompt");
    if (p->init_prefix) {
        const pd_prefix *ip = p->init_prefix;
        if (p->prefix_projection || (p->init_text && p->init_text[0]))
            return pd_err_set(err, PD_EINVAL, "init_from (prefix '%s') cannot be combined with "
                              "init_text or prefix_projection", ip->task);
        if (ip->n_layers != c->n_layers || ip->n_kv_heads != c->n_kv_heads ||
            ip->head_dim != c->head_dim)
            return pd_err_set(err, PD_EINVAL, "init_from: prefix '%s' has another shape than "
                              "the model", ip->task);
        if (ip->n_tokens < 1 + ip->has_bos || ip->n_tokens > c->seq_len - 2)
            return pd_err_set(err, PD_EINVAL, "init_from: prefix '%s' has %d virtual tokens; "
                              "between %d and %d fit", ip->task, ip->n_tokens, 1 + ip->has_bos,
                              c->seq_len - 2);
    }
    return PD_OK;
}

/* The example as trained: without its BOS when the prefix holds one. */
static pd_example view(const pd_example *e, int has_bos, int V)
{
    if (!has_bos) return *e;
    pd_example v = *e;
    v.tokens++;
    v.loss_mask++;
    if (v.soft) v.soft += V;
    v.n--;
    return v;
}

static int engine(trainer *t, pd_err *err);

/* t->train, t->valid, t->valid_base from the training examples src (n_src)
 * and the validation examples vsrc (n_vsrc), or a split of src when vsrc is
 * NULL. The examples stay owned by their source. */
static int assign_examples(trainer *t, const pd_example *src, int n_src, const pd_example *vsrc,
                           int n_vsrc, pd_err *err)
{
    const pd_train_params *p = t->p;
    const int V = t->m->cfg.vocab_size;
    int *tr = NULL, *va = NULL, ntr, nva;
    if (vsrc) {
        ntr = n_src;
        nva = n_vsrc;
    } else {
        int rc = pd_dataset_split(n_src, p->valid_fraction, mix_seed(p->seed, STREAM_SPLIT), &tr,
                                  &ntr, &va, &nva, err);
        if (rc < 0) return rc;
    }
    t->train = malloc((size_t)ntr * sizeof *t->train);
    t->valid = malloc(((size_t)nva + 1) * sizeof *t->valid);
    t->valid_base = malloc(((size_t)nva + 1) * sizeof *t->valid_base);
    if (!t->train || !t->valid || !t->valid_base) {
        free(tr);
        free(va);
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    }
    for (int i = 0; i < ntr; i++) {
        t->train[i] = view(&src[tr ? tr[i] : i], t->has_bos, V);
        t->train[i].ce_weight = (float)p->distill.ce_weight; /* with soft targets only */
    }
    const pd_example *vd = vsrc ? vsrc : src;
    for (int i = 0; i < nva; i++) {
        t->valid_base[i] = vd[va ? va[i] : i]; /* validation: pure KL with soft targets */
        t->valid[i] = view(&t->valid_base[i], t->has_bos, V);
    }
    free(tr);
    free(va);
    t->n_train = ntr;
    t->n_valid = nva;
    return PD_OK;
}

/* Distillation data: the user's inputs (optional files), continuations
 * sampled from the teacher (prefixd/distill.h); validation on samples held
 * out of training (valid_fraction) or sampled after the validation file's
 * inputs (one sample per input). */
static int load_distill(trainer *t, pd_err *err)
{
    const pd_train_params *p = t->p;
    const pd_distill_params *dp = &p->distill;
    pd_dataset_params lp = pd_dataset_default_params();
    lp.max_tokens = t->m->cfg.seq_len - t->P - dp->sample_length;
    lp.skip_bad_lines = p->skip_bad_lines;
    int rc;
    if (lp.max_tokens < 2)
        return pd_err_set(err, PD_EINVAL, "distill: sample_length %d leaves no room for inputs",
                          dp->sample_length);
    if (p->train_path && (rc = pd_dataset_load(p->train_path, t->m->tok, &lp, &t->train_ds,
                                               err)) < 0)
        return rc;
    if (p->valid_path && (rc = pd_dataset_load(p->valid_path, t->m->tok, &lp, &t->valid_ds,
                                               err)) < 0)
        return rc;
    int max_in = 0;
    for (int k = 0; k < 2; k++) {
        const pd_dataset *d = k ? t->valid_ds : t->train_ds;
        if (d && d->max_len - 1 > max_in) max_in = d->max_len - 1;
    }
    if ((rc = pd_distill_prompt_tokens(t->m, dp->teacher_prompt, max_in + dp->sample_length,
                                       &t->prompt, &t->n_prompt, err)) < 0)
        return rc;
    if (dp->init == PD_DISTILL_INIT_PROMPT && t->P >= t->n_prompt)
        return pd_err_set(err, PD_EINVAL, "distill: num_virtual_tokens %d does not compress a "
                          "teacher prompt of %d tokens", t->P, t->n_prompt);
    if ((rc = engine(t, err)) < 0) return rc;
    rc = pd_distill_build(t->eng, t->m, t->prompt, t->n_prompt,
                          t->train_ds ? t->train_ds->ex : NULL, t->train_ds ? t->train_ds->n : 0,
                          dp, mix_seed(p->seed, STREAM_SAMPLE), &t->dtrain, err);
    if (rc == PD_OK && t->valid_ds) {
        pd_distill_params vp = *dp;
        vp.n_samples = t->valid_ds->n;
        rc = pd_distill_build(t->eng, t->m, t->prompt, t->n_prompt, t->valid_ds->ex,
                              t->valid_ds->n, &vp, mix_seed(p->seed, STREAM_SAMPLE_VALID),
                              &t->dvalid, err);
    }
    if (rc == PD_OK)
        rc = assign_examples(t, t->dtrain.ex, t->dtrain.n, t->valid_ds ? t->dvalid.ex : NULL,
                             t->dvalid.n, err);
    if (rc < 0) return rc;
    t->max_len = t->dtrain.max_len > t->dvalid.max_len ? t->dtrain.max_len : t->dvalid.max_len;
    PD_LOGI("task %s: distilling a prompt of %d tokens into %d virtual tokens: %d teacher "
            "samples, %d held out", p->task, t->n_prompt, t->P, t->n_train + t->n_valid,
            t->n_valid);
    return PD_OK;
}

static int load_data(trainer *t, pd_err *err)
{
    const pd_train_params *p = t->p;
    if (p->distill.teacher_prompt) return load_distill(t, err);
    pd_dataset_params dp = pd_dataset_default_params();
    dp.max_tokens = t->m->cfg.seq_len - t->P + t->has_bos;
    dp.first_target = 1 + t->has_bos;
    dp.skip_bad_lines = p->skip_bad_lines;
    int rc = pd_dataset_load(p->train_path, t->m->tok, &dp, &t->train_ds, err);
    if (rc < 0) return rc;
    if (p->valid_path) {
        rc = pd_dataset_load(p->valid_path, t->m->tok, &dp, &t->valid_ds, err);
        if (rc < 0) return rc;
    }
    rc = assign_examples(t, t->train_ds->ex, t->train_ds->n, t->valid_ds ? t->valid_ds->ex : NULL,
                         t->valid_ds ? t->valid_ds->n : 0, err);
    if (rc < 0) return rc;
    t->max_len = t->train_ds->max_len;
    if (t->valid_ds && t->valid_ds->max_len > t->max_len) t->max_len = t->valid_ds->max_len;
    if (t->train_ds->n_skipped || (t->valid_ds && t->valid_ds->n_skipped))
        PD_LOGW("task %s: skipped %d bad training lines and %d bad validation lines", p->task,
                t->train_ds->n_skipped, t->valid_ds ? t->valid_ds->n_skipped : 0);
    return PD_OK;
}

/* FNV-1a over everything that decides the run's result. */
static uint64_t fnv(uint64_t h, const void *data, size_t n)
{
    const unsigned char *s = data;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t config_hash(const trainer *t)
{
    const pd_train_params *p = t->p;
    uint64_t h = 0xcbf29ce484222325ull;
#define H(x) h = fnv(h, &(x), sizeof(x))
    H(t->m->fingerprint);
    H(t->P);
    H(t->has_bos);
    H(t->proj);
    int hidden = t->proj ? p->encoder_hidden_size : 0;
    H(hidden);
    H(p->n_epochs);
    H(p->batch_size);
    H(p->learning_rate);
    H(p->weight_decay);
    H(p->beta1);
    H(p->beta2);
    H(p->eps);
    H(p->warmup_fraction);
    H(p->schedule);
    H(p->early_stopping_patience);
    H(p->eval_every);
    H(p->max_grad_norm);
    H(p->seed);
    H(t->n_train);
    H(t->n_valid);
#undef H
    if (p->init_prefix) {
        h = fnv(h, p->init_prefix->keys, t->n_kv * sizeof(float));
        h = fnv(h, p->init_prefix->values, t->n_kv * sizeof(float));
    } else if (p->distill.teacher_prompt) {
        const pd_distill_params *d = &p->distill;
        h = fnv(h, d->teacher_prompt, strlen(d->teacher_prompt) + 1);
        h = fnv(h, &d->n_samples, sizeof d->n_samples);
        h = fnv(h, &d->sample_length, sizeof d->sample_length);
        h = fnv(h, &d->temperature, sizeof d->temperature);
        h = fnv(h, &d->ce_weight, sizeof d->ce_weight);
        h = fnv(h, &d->init, sizeof d->init);
    } else if (t->has_bos) {
        h = fnv(h, p->init_text, strlen(p->init_text) + 1);
    }
    for (int pass = 0; pass < 2; pass++) {
        const pd_example *ex = pass ? t->valid : t->train;
        int n = pass ? t->n_valid : t->n_train;
        for (int i = 0; i < n; i++) {
            h = fnv(h, &ex[i].n, sizeof ex[i].n);
            h = fnv(h, ex[i].tokens, (size_t)ex[i].n * sizeof *ex[i].tokens);
            h = fnv(h, ex[i].loss_mask, (size_t)ex[i].n);
        }
    }
    return h;
}

/* ---- initialisation ---- */

/* The job's engine (teacher sampling, initialisation, validation token
 * accuracy), created on first use. */
static int engine(trainer *t, pd_err *err)
{
    if (t->eng) return PD_OK;
    pd_engine_params ep = pd_engine_default_params();
    ep.n_threads = t->p->n_threads;
    return pd_engine_create(t->m, &ep, &t->eng, err);
}

/* Standard deviation of a random initialisation, as a fraction of the
 * model's own RMS (see measure_scale): small, so that the untrained prefix
 * barely disturbs the model. (At half the RMS, the loss on stories260K
 * starts 2.5x above the base model's and stays above it for epochs.) */
#define INIT_STD 0.01

/* The scale of the model's keys and values: scale[kv * n_layers + l] is the
 * RMS of the keys (kv = 0) or values (1) of layer l cached over scale_text. */
static int measure_scale(const trainer *t, pd_engine *e, float *scale, pd_err *err)
{
    const pd_config *c = &t->m->cfg;
    pd_prefix *ref;
    int rc = pd_prefix_from_text(e, t->m, t->p->task, scale_text, &ref, err);
    if (rc < 0) return rc;
    const size_t per_layer = (size_t)c->n_kv_heads * ref->n_tokens * c->head_dim;
    for (int kv = 0; kv < 2; kv++) {
        const float *src = kv ? ref->values : ref->keys;
        for (int l = 0; l < c->n_layers; l++) {
            double ss = 0.0;
            for (size_t i = 0; i < per_layer; i++) {
                double x = src[(size_t)l * per_layer + i];
                ss += x * x;
            }
            double rms = sqrt(ss / (double)per_layer);
            scale[kv * c->n_layers + l] = rms > 1e-6 ? (float)rms : 1.0f;
        }
    }
    pd_prefix_release(ref);
    return PD_OK;
}

/* Random initialisation: direct, normal noise at INIT_STD of the model's
 * scale per layer for keys and values apart; projection, PEFT's
 * initialisation with the output layer scaled so that the prefix starts
 * just as small (PEFT's own outputs have an RMS of about 0.29). */
static int init_random(trainer *t, pd_engine *e, pd_err *err)
{
    const int L = t->m->cfg.n_layers;
    float *scale = malloc(2 * (size_t)L * sizeof *scale);
    if (!scale) return pd_err_set(err, PD_ENOMEM, "out of memory");
    int rc = measure_scale(t, e, scale, err);
    if (rc == PD_OK) {
        pd_rng r;
        pd_rng_seed(&r, mix_seed(t->p->seed, STREAM_INIT));
        if (t->proj) {
            double ss = 0.0;
            for (int i = 0; i < 2 * L; i++) ss += (double)scale[i] * scale[i];
            double rms = sqrt(ss / (2.0 * L));
            pd_prefix_mlp_init_params(&t->mlp, t->params, &r, INIT_STD * rms / 0.29);
        } else {
            const size_t per_layer = t->n_kv / (size_t)L;
            for (size_t i = 0; i < t->n_params; i++)
                t->params[i] = (float)(INIT_STD * scale[i / per_layer] * pd_rng_normal(&r));
        }
    }
    free(scale);
    return rc;
}

static int init_params(trainer *t, pd_err *err)
{
    int rc = engine(t, err);
    if (rc < 0) return rc;
    pd_engine *e = t->eng;
    if (t->p->distill.teacher_prompt) {
        if (t->p->distill.init == PD_DISTILL_INIT_PROMPT)
            rc = pd_distill_init_kv(e, t->m, t->prompt, t->n_prompt, t->P, t->keys, t->values,
                                    err);
        else
            rc = init_random(t, e, err);
    } else if (t->p->init_prefix) { /* an existing prefix, as it is */
        memcpy(t->keys, t->p->init_prefix->keys, t->n_kv * sizeof(float));
        memcpy(t->values, t->p->init_prefix->values, t->n_kv * sizeof(float));
    } else if (t->has_bos) { /* init_text: the prompt's own cache */
        pd_prefix *ref;
        rc = pd_prefix_from_text(e, t->m, t->p->task, t->p->init_text, &ref, err);
        if (rc == PD_OK) {
            PD_ASSERT(ref->n_tokens == t->P && !t->proj);
            memcpy(t->keys, ref->keys, t->n_kv * sizeof(float));
            memcpy(t->values, ref->values, t->n_kv * sizeof(float));
            pd_prefix_release(ref);
        }
    } else {
        rc = init_random(t, e, err);
    }
    if (rc < 0) return rc;
    const int n = pd_engine_max_tokens(e);
    t->acc_tok = malloc((size_t)n * sizeof *t->acc_tok);
    t->acc_pos = malloc((size_t)n * sizeof *t->acc_pos);
    t->acc_want = malloc((size_t)n);
    t->acc_seqs = malloc((size_t)n * sizeof *t->acc_seqs);
    if (!t->acc_tok || !t->acc_pos || !t->acc_want || !t->acc_seqs)
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    return pd_seq_create(t->m, t->m->cfg.seq_len - t->P, &t->seq, err);
}

/* Sets P and has_bos from the parameters (init_text decides P). */
static int choose_prefix(trainer *t, pd_err *err)
{
    const pd_train_params *p = t->p;
    t->P = p->num_virtual_tokens;
    t->has_bos = 0;
    if (p->distill.teacher_prompt) { /* the prefix stands for BOS + the prompt */
        t->has_bos = 1;
        return PD_OK;
    }
    if (p->init_prefix) {
        t->P = p->init_prefix->n_tokens;
        t->has_bos = p->init_prefix->has_bos;
        return PD_OK;
    }
    if (!p->init_text || !p->init_text[0]) return PD_OK;
    const pd_config *c = &t->m->cfg;
    size_t len = strlen(p->init_text);
    int cap = c->seq_len;
    int32_t *tok = malloc((size_t)cap * sizeof *tok);
    if (!tok) return pd_err_set(err, PD_ENOMEM, "out of memory");
    int n = pd_tokenizer_encode(t->m->tok, p->init_text, len, 1, 0, tok, cap);
    free(tok);
    if (n < 0) return pd_err_set(err, PD_EINVAL, "init_text cannot be tokenized");
    if (n > c->seq_len - 3)
        return pd_err_set(err, PD_EINVAL, "init_text is %d tokens long; at most %d fit", n,
                          c->seq_len - 3);
    t->P = n;
    t->has_bos = 1;
    return PD_OK;
}

static int alloc_params(trainer *t, pd_err *err)
{
    const pd_config *c = &t->m->cfg;
    t->n_kv = (size_t)c->n_layers * c->n_kv_heads * t->P * c->head_dim;
    if (t->proj) {
        int rc = pd_prefix_mlp_init(&t->mlp, c, t->P, t->p->encoder_hidden_size, err);
        if (rc < 0) return rc;
        t->n_params = t->mlp.n_params;
    } else {
        t->n_params = 2 * t->n_kv;
    }
    t->params = calloc(t->n_params, sizeof(float));
    t->grad = calloc(t->n_params, sizeof(float));
    t->kv_buf = t->proj ? malloc(4 * t->n_kv * sizeof(float)) : NULL;
    t->order = malloc((size_t)t->n_train * sizeof *t->order);
    if (t->p->early_stopping_patience > 0) t->best = malloc(t->n_params * sizeof(float));
    if (!t->params || !t->grad || (t->proj && !t->kv_buf) || !t->order ||
        (t->p->early_stopping_patience > 0 && !t->best))
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    float *kv = t->proj ? t->kv_buf : t->params;
    t->kv_grad = t->proj ? t->kv_buf + 2 * t->n_kv : t->grad;
    t->keys = kv;
    t->values = kv + t->n_kv;
    t->dkeys = t->kv_grad;
    t->dvalues = t->kv_grad + t->n_kv;
    pd_adamw_params ap = {t->p->beta1, t->p->beta2, t->p->eps, t->p->weight_decay};
    return pd_adamw_init(&t->opt, t->n_params, &ap, err);
}

/* ---- checkpoints ---- */

static int save_checkpoint(const trainer *t, pd_err *err)
{
    pd_train_ckpt c = {
        .config_hash = t->config_hash,
        .step = t->step,
        .epoch = t->epoch,
        .pos = t->pos,
        .adam_t = t->opt.t,
        .rng = t->rng,
        .trained_tokens = t->trained_tokens,
        .epoch_loss_sum = t->epoch_loss_sum,
        .epoch_targets = t->epoch_targets,
        .train_loss = t->train_loss,
        .valid_loss = t->valid_loss,
        .n_order = t->n_train,
        .order = t->order,
        .n_params = t->n_params,
        .params = t->params,
        .m = t->opt.m,
        .v = t->opt.v,
        .best = t->best && t->best_step >= 0 ? t->best : NULL,
        .best_valid_loss = t->best_valid_loss,
        .best_step = t->best_step,
        .bad_evals = t->bad_evals,
    };
    return pd_train_ckpt_save(t->p->checkpoint_path, &c, err);
}

/* Resumes from the job's checkpoint when there is one: returns 1 (resumed),
 * 0 (no checkpoint) or a negative status. */
static int resume(trainer *t, pd_err *err)
{
    const char *path = t->p->checkpoint_path;
    if (!path) return 0;
    pd_train_ckpt c;
    int rc = pd_train_ckpt_load(path, &c, err);
    if (rc == PD_ENOTFOUND) {
        pd_err_clear(err);
        return 0;
    }
    if (rc < 0) return rc;
    if (c.config_hash != t->config_hash || c.n_params != t->n_params ||
        c.n_order != t->n_train) {
        rc = pd_err_set(err, PD_EMISMATCH,
                        "%s: the checkpoint belongs to another job configuration or data "
                        "(hash %016" PRIx64 ", this job %016" PRIx64 "); remove it to start "
                        "over", path, c.config_hash, t->config_hash);
        goto done;
    }
    if (c.step > t->sched.total_steps || c.epoch > t->p->n_epochs || c.pos >= t->n_train ||
        c.adam_t != c.step) {
        rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint step %d / epoch %d / position %d do "
                        "not fit this job", path, c.step, c.epoch, c.pos);
        goto done;
    }
    uint8_t *seen = calloc((size_t)t->n_train, 1);
    if (!seen) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < c.n_order && rc == PD_OK; i++) {
        if (c.order[i] < 0 || c.order[i] >= t->n_train || seen[c.order[i]]++)
            rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint example order is not a "
                            "permutation", path);
    }
    free(seen);
    for (size_t i = 0; i < c.n_params && rc == PD_OK; i++)
        if (!isfinite(c.params[i]) || !isfinite(c.m[i]) || !isfinite(c.v[i]))
            rc = pd_err_set(err, PD_EFORMAT, "%s: checkpoint holds a non-finite value", path);
    if (rc < 0) goto done;
    memcpy(t->params, c.params, t->n_params * sizeof(float));
    memcpy(t->opt.m, c.m, t->n_params * sizeof(float));
    memcpy(t->opt.v, c.v, t->n_params * sizeof(float));
    memcpy(t->order, c.order, (size_t)t->n_train * sizeof *t->order);
    t->opt.t = c.adam_t;
    t->rng = c.rng;
    t->step = c.step;
    t->epoch = c.epoch;
    t->pos = c.pos;
    t->trained_tokens = c.trained_tokens;
    t->epoch_loss_sum = c.epoch_loss_sum;
    t->epoch_targets = c.epoch_targets;
    t->train_loss = c.train_loss;
    t->valid_loss = c.valid_loss;
    if (t->best && c.best) {
        memcpy(t->best, c.best, t->n_params * sizeof(float));
        t->best_valid_loss = c.best_valid_loss;
        t->best_step = c.best_step;
        t->bad_evals = c.bad_evals;
    }
    rc = 1;
done:
    pd_train_ckpt_free(&c);
    return rc;
}

/* ---- steps ---- */

/* Mean loss over ex[0..n) with the prefix keys/values of P slots (P = 0: the
 * base model), forward only, in batches of batch_size examples. */
static int eval_loss(trainer *t, const float *keys, const float *values, int P,
                     const pd_example *ex, int n, double *out, pd_err *err)
{
    double sum = 0.0;
    long targets = 0;
    for (int i = 0; i < n; i += t->p->batch_size) {
        int k = n - i < t->p->batch_size ? n - i : t->p->batch_size;
        double ls;
        int nt;
        int rc = pd_backprop_run(t->bp, keys, values, P, ex + i, k, NULL, NULL, &ls, &nt, err);
        if (rc < 0) return rc;
        sum += ls;
        targets += nt;
    }
    *out = targets ? sum / (double)targets : NAN;
    return PD_OK;
}

/* Share of the validation targets that the greedy choice predicts with the
 * prefix keys/values of P slots: one engine pass per example (the engine
 * computes the same logits as the backprop forward), argmax at every row
 * whose next token is a target (the first maximum on ties). */
static int eval_accuracy(trainer *t, const float *keys, const float *values, int P,
                         const pd_example *ex, int n, double *out, pd_err *err)
{
    const int cap = pd_engine_max_tokens(t->eng), V = t->m->cfg.vocab_size;
    long hits = 0, targets = 0;
    for (int i = 0; i < n; i++) {
        const pd_example *e = &ex[i];
        pd_seq_set_prefix(t->seq, P, keys, values);
        for (int j0 = 0; j0 < e->n - 1; j0 += cap) {
            int k = e->n - 1 - j0 < cap ? e->n - 1 - j0 : cap;
            for (int j = 0; j < k; j++) {
                t->acc_tok[j] = e->tokens[j0 + j];
                t->acc_pos[j] = j0 + j;
                t->acc_want[j] = e->loss_mask[j0 + j + 1] != 0;
                t->acc_seqs[j] = t->seq;
            }
            pd_batch b = {k, t->acc_tok, t->acc_seqs, t->acc_pos, t->acc_want};
            const float *logits;
            int rc = pd_engine_step(t->eng, &b, &logits, err);
            if (rc < 0) return rc;
            int row = 0;
            for (int j = 0; j < k; j++) {
                if (!t->acc_want[j]) continue;
                const float *l = logits + (size_t)row++ * V;
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (l[v] > l[best]) best = v;
                int want = e->tokens[j0 + j + 1];
                if (e->soft) { /* distillation: the teacher's own top choice */
                    const float *p = e->soft + (size_t)(j0 + j + 1) * V;
                    want = 0;
                    for (int v = 1; v < V; v++)
                        if (p[v] > p[want]) want = v;
                }
                hits += best == want;
                targets++;
            }
        }
    }
    *out = targets ? (double)hits / (double)targets : NAN;
    return PD_OK;
}

/* Computes the prefix keys and values from the MLP (projection only; the
 * direct parameters are the keys and values). */
static void materialise(trainer *t)
{
    if (t->proj) pd_prefix_mlp_forward(&t->mlp, t->params, t->keys, t->values);
}

/* One optimiser step on the next batch. */
static int train_step(trainer *t, pd_example *batch, pd_err *err)
{
    const int B = t->p->batch_size;
    if (t->pos == 0) { /* a new epoch: a new order and fresh epoch figures */
        for (int i = 0; i < t->n_train; i++) t->order[i] = i;
        pd_rng_shuffle(&t->rng, t->order, t->n_train);
        t->epoch_loss_sum = 0.0;
        t->epoch_targets = 0.0;
    }
    int k = t->n_train - t->pos < B ? t->n_train - t->pos : B;
    uint64_t tokens = 0;
    for (int i = 0; i < k; i++) {
        batch[i] = t->train[t->order[t->pos + i]];
        tokens += (uint64_t)batch[i].n;
    }
    materialise(t);
    memset(t->dkeys, 0, t->n_kv * sizeof(float));
    memset(t->dvalues, 0, t->n_kv * sizeof(float));
    double loss_sum;
    int n_targets;
    int rc = pd_backprop_run(t->bp, t->keys, t->values, t->P, batch, k, t->dkeys, t->dvalues,
                             &loss_sum, &n_targets, err);
    if (rc < 0) return rc;
    PD_ASSERT(n_targets > 0); /* every example has a target */
    if (!isfinite(loss_sum))
        return pd_err_set(err, PD_ERANGE, "task %s: the loss is not finite at step %d "
                          "(diverged: lower the learning rate)", t->p->task, t->step + 1);
    const float scale = 1.0f / (float)n_targets; /* d(mean) from d(sum) */
    for (size_t i = 0; i < 2 * t->n_kv; i++) t->kv_grad[i] *= scale;
    if (t->proj) pd_prefix_mlp_backward(&t->mlp, t->params, t->dkeys, t->dvalues, t->grad);
    pd_grad_clip(t->grad, t->n_params, t->p->max_grad_norm);
    pd_adamw_step(&t->opt, t->params, t->grad, pd_lr_at(&t->sched, t->step));

    t->train_loss = loss_sum / n_targets;
    t->epoch_loss_sum += loss_sum;
    t->epoch_targets += n_targets;
    t->trained_tokens += tokens;
    t->step++;
    t->pos += k;
    if (t->pos == t->n_train) {
        t->pos = 0;
        t->epoch++;
    }
    return PD_OK;
}

/* ---- the result ---- */

static int meta_num(pd_prefix *pf, const char *key, const char *fmt, double v, pd_err *err)
{
    char buf[64];
    snprintf(buf, sizeof buf, fmt, v);
    return pd_prefix_meta_set(pf, key, buf, err);
}

/* A distilled prefix's figures: held-out KL(teacher ‖ student) in nats per
 * token and top-1 agreement with the teacher, the same for the base model
 * without the prompt, and the compression. */
static int build_distill_meta(const trainer *t, pd_prefix *pf, pd_err *err)
{
    const pd_distill_params *d = &t->p->distill;
    int rc = pd_prefix_meta_set(pf, "method", "distill", err);
    if (rc == PD_OK) rc = meta_num(pf, "distill_prompt_tokens", "%.0f", t->n_prompt, err);
    if (rc == PD_OK)
        rc = meta_num(pf, "distill_compression", "%.2f", (double)t->n_prompt / t->P, err);
    if (rc == PD_OK) rc = meta_num(pf, "distill_samples", "%.0f", d->n_samples, err);
    if (rc == PD_OK) rc = meta_num(pf, "distill_sample_length", "%.0f", d->sample_length, err);
    if (rc == PD_OK) rc = meta_num(pf, "distill_temperature", "%g", d->temperature, err);
    if (rc == PD_OK) rc = meta_num(pf, "distill_ce_weight", "%g", d->ce_weight, err);
    if (rc == PD_OK && t->n_valid) {
        rc = meta_num(pf, "distill_valid_kl", "%.6f", t->valid_loss, err);
        if (rc == PD_OK) rc = meta_num(pf, "distill_base_kl", "%.6f", t->base_loss, err);
        if (rc == PD_OK && isfinite(t->valid_accuracy))
            rc = meta_num(pf, "distill_top1_agreement", "%.6f", t->valid_accuracy, err);
        if (rc == PD_OK && isfinite(t->base_accuracy))
            rc = meta_num(pf, "distill_base_top1_agreement", "%.6f", t->base_accuracy, err);
    }
    return rc;
}

/* The prefix of the current keys/values named task, with the run's figures
 * in its metadata (the keys/values must be materialised). */
static int build_prefix(trainer *t, const char *task, pd_prefix **out, pd_err *err)
{
    pd_prefix *pf;
    const double base_loss = t->base_loss;
    int rc = pd_prefix_create(t->m, task, t->P, &pf, err);
    if (rc < 0) return rc;
    memcpy(pf->keys, t->keys, t->n_kv * sizeof(float));
    memcpy(pf->values, t->values, t->n_kv * sizeof(float));
    pf->has_bos = t->has_bos;
    const pd_train_params *p = t->p;
    double train_loss = t->epoch_targets > 0 ? t->epoch_loss_sum / t->epoch_targets : t->train_loss;
    char tokens[32];
    snprintf(tokens, sizeof tokens, "%" PRIu64, t->trained_tokens);
    if (rc == PD_OK) rc = pd__prefix_stamp(pf, "trained", err);
    if (rc == PD_OK) rc = pd_prefix_meta_set(pf, "job_id", p->job_id ? p->job_id : "", err);
    if (rc == PD_OK) rc = meta_num(pf, "train_loss", "%.6f", train_loss, err);
    if (rc == PD_OK && t->n_valid) rc = meta_num(pf, "valid_loss", "%.6f", t->valid_loss, err);
    if (rc == PD_OK && t->n_valid) rc = meta_num(pf, "base_valid_loss", "%.6f", base_loss, err);
    if (rc == PD_OK && t->n_valid && isfinite(t->valid_accuracy))
        rc = meta_num(pf, "valid_token_accuracy", "%.6f", t->valid_accuracy, err);
    if (rc == PD_OK && t->best && t->best_step >= 0)
        rc = meta_num(pf, "best_step", "%.0f", t->best_step, err);
    if (rc == PD_OK && t->best)
        rc = pd_prefix_meta_set(pf, "stopped_early", t->stopped_early ? "true" : "false", err);
    if (rc == PD_OK) rc = meta_num(pf, "steps", "%.0f", t->step, err);
    if (rc == PD_OK) rc = pd_prefix_meta_set(pf, "trained_tokens", tokens, err);
    if (rc == PD_OK) rc = meta_num(pf, "epochs", "%.0f", p->n_epochs, err);
    if (rc == PD_OK) rc = meta_num(pf, "batch_size", "%.0f", p->batch_size, err);
    if (rc == PD_OK) rc = meta_num(pf, "learning_rate", "%g", p->learning_rate, err);
    if (rc == PD_OK) rc = meta_num(pf, "seed", "%.0f", (double)p->seed, err);
    if (rc == PD_OK)
        rc = pd_prefix_meta_set(pf, "prefix_projection", t->proj ? "true" : "false", err);
    if (rc == PD_OK) rc = meta_num(pf, "schedule", "%.0f", p->schedule, err);
    const int distill = p->distill.teacher_prompt != NULL;
    if (rc == PD_OK)
        rc = pd_prefix_meta_set(pf, "init", distill ? (p->distill.init == PD_DISTILL_INIT_PROMPT
                                                           ? "prompt" : "random")
                                            : p->init_prefix ? "prefix"
                                            : t->has_bos  ? "text" : "random", err);
    if (rc == PD_OK && distill) rc = build_distill_meta(t, pf, err);
    if (rc < 0) {
        pd_prefix_release(pf);
        return rc;
    }
    *out = pf;
    return PD_OK;
}

int pd_train_eval_prefix(const pd_train_eval *ev, const char *task, pd_prefix **out,
                         pd_err *err)
{
    PD_ASSERT(ev && ev->trainer && task && out);
    trainer *t = ev->trainer;
    return build_prefix(t, task, out, err); /* materialised by the validation */
}

/* Validates the current prefix: loss, token accuracy; records the best
 * (early stopping). */
static int validate(trainer *t, double *acc, pd_err *err)
{
    materialise(t);
    double loss;
    int rc = eval_loss(t, t->keys, t->values, t->P, t->valid, t->n_valid, &loss, err);
    if (rc == PD_OK) rc = eval_accuracy(t, t->keys, t->values, t->P, t->valid, t->n_valid, acc, err);
    if (rc < 0) return rc;
    t->valid_loss = loss;
    t->valid_accuracy = *acc;
    if (t->best) {
        if (t->best_step < 0 || loss < t->best_valid_loss) {
            memcpy(t->best, t->params, t->n_params * sizeof(float));
            t->best_valid_loss = loss;
            t->best_step = t->step;
            t->bad_evals = 0;
        } else {
            t->bad_evals++;
        }
    }
    return PD_OK;
}

/* ---- the job ---- */

int pd_train_run(const pd_model *m, const pd_train_params *p, const pd_train_hooks *hooks,
                 pd_prefix **out, pd_err *err)
{
    PD_ASSERT(m && p && out);
    *out = NULL;
    pd_train_hooks none = {0};
    if (!hooks) hooks = &none;
    pd_train_params resolved = *p; /* learning_rate and n_epochs 0: the automatic defaults */
    if (resolved.learning_rate == 0.0)
        resolved.learning_rate =
            p->prefix_projection ? PD_TRAIN_DEFAULT_LR_PROJECTION : PD_TRAIN_DEFAULT_LR;
    p = &resolved;
    int rc = check_params(m, p, err);
    if (rc < 0) return rc;
    pd_prefix *init_wide = NULL; /* training is F32: an F16-resident init_prefix widened */
    if (p->init_prefix && !p->init_prefix->keys) {
        if ((rc = pd_prefix_widen(p->init_prefix, &init_wide, err)) < 0) return rc;
        resolved.init_prefix = init_wide;
    }
    trainer t = {.m = m, .p = p, .proj = p->prefix_projection != 0, .valid_loss = NAN,
                 .best_valid_loss = NAN, .best_step = -1, .valid_accuracy = NAN,
                 .base_loss = NAN, .base_accuracy = NAN};
    pd_example *batch = NULL;
    if ((rc = choose_prefix(&t, err)) < 0 || (rc = load_data(&t, err)) < 0 ||
        (rc = alloc_params(&t, err)) < 0)
        goto done;
    resolved.n_epochs = pd_train_epochs(p, t.n_train);
    t.steps_per_epoch = (t.n_train + p->batch_size - 1) / p->batch_size;
    if ((int64_t)t.steps_per_epoch * p->n_epochs > INT32_MAX / 2) {
        rc = pd_err_set(err, PD_EINVAL, "%d epochs of %d steps are too many", p->n_epochs,
                        t.steps_per_epoch);
        goto done;
    }
    t.sched.base = p->learning_rate;
    t.sched.total_steps = t.steps_per_epoch * p->n_epochs;
    t.sched.warmup_steps = (int)(p->warmup_fraction * t.sched.total_steps);
    if (t.sched.warmup_steps >= t.sched.total_steps) t.sched.warmup_steps = t.sched.total_steps - 1;
    t.sched.kind = p->schedule;
    t.config_hash = config_hash(&t);
    pd_rng_seed(&t.rng, mix_seed(p->seed, STREAM_SHUFFLE));

    if ((int64_t)p->batch_size * t.max_len > PD_TRAIN_MAX_ROWS) {
        rc = pd_err_set(err, PD_EINVAL, "a batch of %d examples of up to %d tokens exceeds %d "
                        "tokens: lower batch_size", p->batch_size, t.max_len, PD_TRAIN_MAX_ROWS);
        goto done;
    }
    int max_rows = p->batch_size * t.max_len;
    batch = malloc((size_t)p->batch_size * sizeof *batch);
    if (!batch) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = pd_backprop_create(m, max_rows, t.P, p->n_threads, &t.bp, err)) < 0 ||
        (rc = init_params(&t, err)) < 0)
        goto done;
    int resumed_from = -1;
    if ((rc = resume(&t, err)) < 0) goto done;
    if (rc == 1) {
        resumed_from = t.step;
        PD_LOGI("task %s: resuming from %s at step %d of %d", p->task, p->checkpoint_path,
                t.step, t.sched.total_steps);
    }
    rc = PD_OK;

    double base_loss = NAN;
    if (t.n_valid && (rc = eval_loss(&t, NULL, NULL, 0, t.valid_base, t.n_valid, &base_loss,
                                     err)) < 0)
        goto done;
    t.base_loss = base_loss;
    if (t.n_valid && p->distill.teacher_prompt &&
        (rc = eval_accuracy(&t, NULL, NULL, 0, t.valid_base, t.n_valid, &t.base_accuracy,
                            err)) < 0)
        goto done;
    PD_LOGI("task %s: %d training and %d validation examples, %d virtual tokens, %d steps, "
            "%zu parameters; base model validation loss %.4f", p->task, t.n_train, t.n_valid,
            t.P, t.sched.total_steps, t.n_params, base_loss);

    const double t0 = now_seconds();
    const uint64_t tokens0 = t.trained_tokens;
    while (t.step < t.sched.total_steps) {
        if (hooks->cancel && atomic_load(hooks->cancel)) {
            /* a step boundary: keep the progress so a stop for shutdown
             * resumes here rather than at the last periodic checkpoint */
            if (p->checkpoint_path && t.step > 0 && (rc = save_checkpoint(&t, err)) < 0)
                goto done;
            rc = pd_err_set(err, PD_ECANCELLED, "task %s: cancelled at step %d", p->task,
                            t.step);
            goto done;
        }
        if (hooks->yield) hooks->yield(hooks->user_data);
        double lr = pd_lr_at(&t.sched, t.step);
        if ((rc = train_step(&t, batch, err)) < 0) goto done;
        double valid = NAN, acc = NAN;
        int last = t.step == t.sched.total_steps, epoch_end = t.pos == 0;
        int evaluated = 0;
        if (t.n_valid &&
            (last || epoch_end || (p->eval_every > 0 && t.step % p->eval_every == 0))) {
            if ((rc = validate(&t, &acc, err)) < 0) goto done;
            valid = t.valid_loss;
            evaluated = 1;
        }
        int stop_early = t.best && t.bad_evals >= p->early_stopping_patience;
        if (evaluated && hooks->on_eval) {
            pd_train_eval ev = {
                .step = t.step,
                .total_steps = t.sched.total_steps,
                .epoch = t.pos == 0 ? t.epoch : t.epoch + 1,
                .epoch_end = epoch_end,
                .train_loss = t.epoch_targets > 0 ? t.epoch_loss_sum / t.epoch_targets
                                                  : t.train_loss,
                .valid_loss = valid,
                .valid_token_accuracy = acc,
                .learning_rate = lr,
                .trained_tokens = t.trained_tokens,
                .best = t.best ? t.best_step == t.step : 0,
                .trainer = &t,
            };
            hooks->on_eval(&ev, hooks->user_data);
        }
        if (p->checkpoint_path && p->checkpoint_every > 0 && !last &&
            t.step % p->checkpoint_every == 0 && (rc = save_checkpoint(&t, err)) < 0)
            goto done;
        if (hooks->on_progress) {
            double dt = now_seconds() - t0;
            pd_train_progress pr = {
                .step = t.step,
                .total_steps = t.sched.total_steps,
                .epoch = t.pos == 0 ? t.epoch : t.epoch + 1,
                .train_loss = t.train_loss,
                .valid_loss = valid,
                .valid_token_accuracy = acc,
                .learning_rate = lr,
                .trained_tokens = t.trained_tokens,
                .tokens_per_second = dt > 0 ? (double)(t.trained_tokens - tokens0) / dt : 0.0,
                .resumed_from = resumed_from,
                .distill = p->distill.teacher_prompt != NULL,
            };
            hooks->on_progress(&pr, hooks->user_data);
        }
        if (stop_early) {
            PD_LOGI("task %s: stopping early at step %d: %d validations without a lower loss "
                    "than %.4f (step %d)", p->task, t.step, t.bad_evals, t.best_valid_loss,
                    t.best_step);
            t.stopped_early = 1;
            break;
        }
    }
    if (t.n_valid && isnan(t.valid_loss)) { /* resumed from a finished run's checkpoint */
        double acc;
        if ((rc = validate(&t, &acc, err)) < 0) goto done;
    }
    if (t.best && t.best_step >= 0) { /* early stopping: the best validated prefix */
        memcpy(t.params, t.best, t.n_params * sizeof(float));
        materialise(&t);
        double acc;
        if ((rc = eval_accuracy(&t, t.keys, t.values, t.P, t.valid, t.n_valid, &acc, err)) < 0)
            goto done;
        t.valid_loss = t.best_valid_loss;
        t.valid_accuracy = acc;
    }
    materialise(&t);
    rc = build_prefix(&t, p->task, out, err);
    if (rc == PD_OK)
        PD_LOGI("task %s: trained %d steps, %" PRIu64 " tokens; train loss %s, validation "
                "loss %s (base %s)", p->task, t.step, t.trained_tokens,
                pd_prefix_meta_get(*out, "train_loss"),
                t.n_valid ? pd_prefix_meta_get(*out, "valid_loss") : "-",
                t.n_valid ? pd_prefix_meta_get(*out, "base_valid_loss") : "-");
done:
    free(batch);
    trainer_free(&t);
    pd_prefix_release(init_wide);
    return rc;
}

int pd_train_validate_file(const pd_model *m, const char *path, int num_virtual_tokens,
                           int *n_examples, pd_err *err)
{
    PD_ASSERT(m && path);
    if (n_examples) *n_examples = 0;
    if (num_virtual_tokens < 0 || num_virtual_tokens > m->cfg.seq_len - 2)
        return pd_err_set(err, PD_EINVAL, "num_virtual_tokens %d outside [0, %d]",
                          num_virtual_tokens, m->cfg.seq_len - 2);
    pd_dataset_params dp = pd_dataset_default_params();
    dp.max_tokens = m->cfg.seq_len - num_virtual_tokens;
    pd_dataset *d;
    int rc = pd_dataset_load(path, m->tok, &dp, &d, err);
    if (rc < 0) return rc;
    if (n_examples) *n_examples = d->n;
    pd_dataset_free(d);
    return PD_OK;
}
