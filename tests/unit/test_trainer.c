/* test_trainer.c — training jobs on the shipped model: a short run that
 * lowers the loss below the base model's, reproducibility bit for bit (same
 * seed, same bits; a run resumed from a mid-run checkpoint ends with the
 * same bits as an uninterrupted one, direct and with the projection MLP),
 * checkpoints of another configuration refused, cancel, init_text, and bad
 * parameters and data. Run from the repository root. */
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

#include "prefixd/checkpoint.h"
#include "prefixd/dataset.h"
#include "prefixd/engine.h"
#include "prefixd/generate.h"
#include "prefixd/trainer.h"

#define MODEL "models/stories260K/stories260K.bin"
#define TOKENIZER "models/stories260K/tok512.bin"

static pd_model *model;
static char tmpdir[64];
static char train_path[128], valid_path[128], ckpt_path[128];

/* Copies to dst the first n lines of src whose completion is only the
 * story's last sentences and its moral (the JSONL keys are sorted:
 * "completion" comes first, so its moral starts within 100 bytes): the
 * lines a short run learns from clearly. -1 when fewer than n. */
static int head(const char *src, const char *dst, int n)
{
    FILE *in = fopen(src, "r"), *out = fopen(dst, "w");
    if (!in || !out) {
        if (in) fclose(in);
        if (out) fclose(out);
        return -1;
    }
    char line[4096];
    int k = 0;
    while (k < n && fgets(line, sizeof line, in)) {
        const char *moral = strstr(line, "The moral of the story");
        if (moral && moral - line < 100) {
            fputs(line, out);
            k++;
        }
    }
    fclose(in);
    return fclose(out) == 0 && k == n ? 0 : -1;
}

static int setup(void **state)
{
    (void)state;
    pd_model_params mp = pd_model_default_params();
    mp.path = MODEL;
    mp.tokenizer_path = TOKENIZER;
    pd_err err;
    if (pd_model_load(&mp, &model, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_trainer.XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    snprintf(train_path, sizeof train_path, "%s/train.jsonl", tmpdir);
    snprintf(valid_path, sizeof valid_path, "%s/valid.jsonl", tmpdir);
    snprintf(ckpt_path, sizeof ckpt_path, "%s/job.ckpt", tmpdir);
    /* 13 examples: batches of 4 leave a last batch of 1 in every epoch. The
     * rows whose prompt is the whole story: a short run learns their morals. */
    if (head("tests/data/train/moral.train.jsonl", train_path, 13) < 0 ||
        head("tests/data/train/moral.valid.jsonl", valid_path, 6) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    pd_model_free(model);
    return 0;
}

static pd_train_params job(void)
{
    pd_train_params p = pd_train_default_params();
    p.task = "moral";
    p.job_id = "ftjob-test";
    p.train_path = train_path;
    p.valid_path = valid_path;
    p.num_virtual_tokens = 4;
    p.n_epochs = 3;
    p.batch_size = 4;
    p.learning_rate = 0.1;
    p.seed = 3;
    p.eval_every = 0;
    p.n_threads = 2;
    return p;
}

/* What the hooks saw, and when to cancel. */
typedef struct watch {
    int steps, yields, cancel_at, resumed_from, total;
    double first_loss, last_valid;
    atomic_int cancel;
} watch;

static void on_progress(const pd_train_progress *p, void *user_data)
{
    watch *w = user_data;
    if (w->steps++ == 0) w->first_loss = p->train_loss;
    w->resumed_from = p->resumed_from;
    w->total = p->total_steps;
    if (!isnan(p->valid_loss)) w->last_valid = p->valid_loss;
    if (p->step == w->cancel_at) atomic_store(&w->cancel, 1);
}

static void on_yield(void *user_data) { ((watch *)user_data)->yields++; }

static int run(const pd_train_params *p, watch *w, pd_prefix **out, pd_err *err)
{
    pd_train_hooks h = {on_progress, on_yield, w, &w->cancel, NULL};
    return pd_train_run(model, p, &h, out, err);
}

static int run_ok(const pd_train_params *p, watch *w, pd_prefix **out)
{
    pd_err err;
    int rc = run(p, w, out, &err);
    if (rc < 0) print_error("pd_train_run: %s\n", err.msg);
    return rc;
}

static void assert_same_bits(const pd_prefix *a, const pd_prefix *b)
{
    assert_int_equal(a->n_tokens, b->n_tokens);
    size_t n = (size_t)a->n_layers * a->n_kv_heads * a->n_tokens * a->head_dim;
    assert_memory_equal(a->keys, b->keys, n * sizeof(float));
    assert_memory_equal(a->values, b->values, n * sizeof(float));
}

/* ---- tests ---- */

static void test_short_run_learns(void **state)
{
    (void)state;
    pd_train_params p = job();
    p.n_epochs = 8;
    p.eval_every = 5;
    watch w = {.cancel_at = -1, .last_valid = NAN};
    pd_prefix *pf = NULL;
    assert_int_equal(run_ok(&p, &w, &pf), PD_OK);
    assert_int_equal(w.steps, 32); /* 8 epochs of ceil(13 / 4) steps */
    assert_int_equal(w.total, 32);
    assert_int_equal(w.yields, 32);
    assert_int_equal(w.resumed_from, -1);
    double train = atof(pd_prefix_meta_get(pf, "train_loss"));
    double valid = atof(pd_prefix_meta_get(pf, "valid_loss"));
    double base = atof(pd_prefix_meta_get(pf, "base_valid_loss"));
    /* the lesson sentence names the character: a floor no prefix removes */
    assert_true(train < 0.75 * w.first_loss);
    assert_true(valid < 0.7 * base); /* >= 30% below the base model */
    assert_float_equal(valid, w.last_valid, 1e-6);
    /* The prefix as the server expects it. */
    assert_string_equal(pf->task, "moral");
    assert_int_equal(pf->n_tokens, 4);
    assert_int_equal(pf->has_bos, 0);
    assert_string_equal(pd_prefix_meta_get(pf, "source"), "trained");
    assert_string_equal(pd_prefix_meta_get(pf, "job_id"), "ftjob-test");
    assert_string_equal(pd_prefix_meta_get(pf, "steps"), "32");
    assert_non_null(pd_prefix_meta_get(pf, "created_at"));
    assert_true(atol(pd_prefix_meta_get(pf, "trained_tokens")) > 13 * 8 * 20);
    char path[160];
    snprintf(path, sizeof path, "%s/moral.safetensors", tmpdir);
    pd_err err;
    assert_int_equal(pd_prefix_save(pf, model, path, 0, &err), PD_OK);
    pd_prefix *back;
    assert_int_equal(pd_prefix_load(path, model, &back, &err), PD_OK);
    assert_same_bits(pf, back);
    pd_prefix_release(back);
    pd_prefix_release(pf);
}

/* Same seed, same bits; another seed, other bits. */
static void test_reproducible(void **state)
{
    (void)state;
    pd_train_params p = job();
    p.n_epochs = 2;
    pd_prefix *a, *b, *c;
    watch w = {.cancel_at = -1};
    assert_int_equal(run_ok(&p, &w, &a), PD_OK);
    assert_int_equal(run_ok(&p, &w, &b), PD_OK);
    assert_same_bits(a, b);
    assert_string_equal(pd_prefix_meta_get(a, "valid_loss"), pd_prefix_meta_get(b, "valid_loss"));
    p.seed = 4;
    assert_int_equal(run_ok(&p, &w, &c), PD_OK);
    size_t n = (size_t)a->n_layers * a->n_kv_heads * a->n_tokens * a->head_dim;
    assert_true(memcmp(a->keys, c->keys, n * sizeof(float)) != 0);
    pd_prefix_release(a);
    pd_prefix_release(b);
    pd_prefix_release(c);
}

/* Interrupts a run after step stop_at (checkpoints every ckpt_every; a
 * cancel also saves one at the step it stops at), then resumes it; the
 * result must be the uninterrupted run's bits. (A crash resumes from the last
 * periodic checkpoint: tests/e2e/test_training.py kills the server.) */
static void interrupted_equals_uninterrupted(pd_train_params p, int ckpt_every, int stop_at)
{
    unlink(ckpt_path);
    pd_prefix *ref, *out = NULL;
    watch w = {.cancel_at = -1};
    assert_int_equal(run_ok(&p, &w, &ref), PD_OK);

    p.checkpoint_path = ckpt_path;
    p.checkpoint_every = ckpt_every;
    watch w1 = {.cancel_at = stop_at};
    pd_err err;
    assert_int_equal(run(&p, &w1, &out, &err), PD_ECANCELLED);
    assert_null(out);
    assert_int_equal(w1.steps, stop_at);
    assert_int_equal(access(ckpt_path, F_OK), 0);

    watch w2 = {.cancel_at = -1};
    assert_int_equal(run_ok(&p, &w2, &out), PD_OK);
    int resumed = stop_at;
    assert_int_equal(w2.resumed_from, resumed);
    assert_int_equal(w2.steps, w.steps - resumed);
    assert_same_bits(ref, out);
    assert_string_equal(pd_prefix_meta_get(ref, "train_loss"),
                        pd_prefix_meta_get(out, "train_loss"));
    assert_string_equal(pd_prefix_meta_get(ref, "trained_tokens"),
                        pd_prefix_meta_get(out, "trained_tokens"));
    pd_prefix_release(out);
    pd_prefix_release(ref);
}

static void test_resume_direct(void **state)
{
    (void)state;
    pd_train_params p = job();
    interrupted_equals_uninterrupted(p, 5, 7);  /* mid-epoch (4 steps an epoch) */
    interrupted_equals_uninterrupted(p, 4, 10); /* at an epoch boundary */

    /* A checkpoint of another configuration is refused. */
    p.checkpoint_path = ckpt_path;
    p.learning_rate = 0.05;
    watch w = {.cancel_at = -1};
    pd_prefix *out;
    pd_err err;
    assert_int_equal(run(&p, &w, &out, &err), PD_EMISMATCH);
    assert_non_null(strstr(err.msg, "another job configuration"));
    unlink(ckpt_path);
}

static void test_resume_projection(void **state)
{
    (void)state;
    pd_train_params p = job();
    p.prefix_projection = 1;
    p.encoder_hidden_size = 16;
    p.learning_rate = 1e-2;
    p.weight_decay = 0.01;
    p.schedule = PD_LR_COSINE;
    interrupted_equals_uninterrupted(p, 3, 5);
    unlink(ckpt_path);
}

static void test_checkpoint_file(void **state)
{
    (void)state;
    float params[3] = {1, 2, 3}, m[3] = {0.5f, 0, -1}, v[3] = {1e-8f, 0, 2};
    int order[4] = {2, 0, 3, 1};
    pd_train_ckpt c = {.config_hash = 0x0123456789abcdefull, .step = 7, .epoch = 1, .pos = 3,
                       .adam_t = 7, .rng = {{1, 2, 3, UINT64_MAX}}, .trained_tokens = 1234,
                       .epoch_loss_sum = 1.0 / 3.0, .epoch_targets = 17, .train_loss = 2.5,
                       .valid_loss = NAN, .n_order = 4, .order = order, .n_params = 3,
                       .params = params, .m = m, .v = v};
    pd_err err;
    assert_int_equal(pd_train_ckpt_save(ckpt_path, &c, &err), PD_OK);
    pd_train_ckpt d;
    assert_int_equal(pd_train_ckpt_load(ckpt_path, &d, &err), PD_OK);
    assert_true(d.config_hash == c.config_hash);
    assert_int_equal(d.step, 7);
    assert_int_equal(d.pos, 3);
    assert_memory_equal(&d.rng, &c.rng, sizeof c.rng);
    assert_true(d.epoch_loss_sum == c.epoch_loss_sum); /* exact round trip */
    assert_true(isnan(d.valid_loss));
    assert_memory_equal(d.order, order, sizeof order);
    assert_memory_equal(d.params, params, sizeof params);
    assert_memory_equal(d.v, v, sizeof v);
    pd_train_ckpt_free(&d);
    pd_train_ckpt_free(&d);
    unlink(ckpt_path);
    assert_int_equal(pd_train_ckpt_load(ckpt_path, &d, &err), PD_ENOTFOUND);
    /* A prefix file is not a checkpoint. */
    char path[160];
    snprintf(path, sizeof path, "%s/moral.safetensors", tmpdir);
    if (access(path, F_OK) == 0) {
        assert_int_equal(pd_train_ckpt_load(path, &d, &err), PD_EFORMAT);
        assert_non_null(strstr(err.msg, "not a training checkpoint"));
    }
}

static void test_cancel(void **state)
{
    (void)state;
    pd_train_params p = job();
    watch w = {.cancel_at = -1};
    atomic_store(&w.cancel, 1);
    pd_prefix *out = (pd_prefix *)1;
    pd_err err;
    assert_int_equal(run(&p, &w, &out, &err), PD_ECANCELLED);
    assert_null(out);
    assert_int_equal(w.steps, 0);
    assert_non_null(strstr(err.msg, "cancelled"));
}

/* init_text: P is the prompt's length with BOS, and the prefix holds BOS. */
static void test_init_text(void **state)
{
    (void)state;
    pd_train_params p = job();
    p.init_text = "Once upon a time, a wise owl told stories.";
    p.learning_rate = 1e-2;
    p.n_epochs = 1;
    int32_t toks[64];
    int n = pd_tokenizer_encode(model->tok, p.init_text, strlen(p.init_text), 1, 0, toks, 64);
    watch w = {.cancel_at = -1};
    pd_prefix *pf;
    assert_int_equal(run_ok(&p, &w, &pf), PD_OK);
    assert_int_equal(pf->n_tokens, n);
    assert_int_equal(pf->has_bos, 1);
    assert_string_equal(pd_prefix_meta_get(pf, "init"), "text");
    pd_prefix_release(pf);

    p.prefix_projection = 1;
    pd_err err;
    assert_int_equal(run(&p, &w, &pf, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "init_text"));
}

static void test_bad_jobs(void **state)
{
    (void)state;
    watch w = {.cancel_at = -1};
    pd_prefix *pf;
    pd_err err;
    pd_train_params p = job();
    p.task = "../escape";
    assert_int_equal(run(&p, &w, &pf, &err), PD_EINVAL);
    p = job();
    p.num_virtual_tokens = 0;
    assert_int_equal(run(&p, &w, &pf, &err), PD_EINVAL);
    p = job();
    p.learning_rate = NAN;
    assert_int_equal(run(&p, &w, &pf, &err), PD_EINVAL);
    p = job();
    p.train_path = "tests/data/train/bad.jsonl";
    assert_int_equal(run(&p, &w, &pf, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "bad.jsonl:2: not valid JSON"));
    /* Skipping bad lines; no validation file: a seeded split. */
    p.skip_bad_lines = 1;
    p.valid_path = NULL;
    p.valid_fraction = 0.34;
    p.n_epochs = 1;
    assert_int_equal(run_ok(&p, &w, &pf), PD_OK);
    assert_int_equal(w.total, 1); /* 2 of the 3 good lines train, in one batch */
    assert_non_null(pd_prefix_meta_get(pf, "valid_loss"));
    pd_prefix_release(pf);
    /* No validation at all. */
    p.valid_fraction = 0.0;
    assert_int_equal(run_ok(&p, &w, &pf), PD_OK);
    assert_null(pd_prefix_meta_get(pf, "valid_loss"));
    pd_prefix_release(pf);
}

/* What the validations reported, and the prefix of the best one. */
typedef struct evals {
    watch w;             /* first: the progress hooks see a watch */
    int n;
    double loss[64], acc[64];
    int step[64];
    pd_prefix *best;     /* the prefix at the lowest loss so far */
    double best_loss;
    int best_flagged;    /* evaluations the trainer called best */
} evals;

static void on_eval(const pd_train_eval *ev, void *user_data)
{
    evals *e = user_data;
    assert_true(e->n < 64);
    e->loss[e->n] = ev->valid_loss;
    e->acc[e->n] = ev->valid_token_accuracy;
    e->step[e->n] = ev->step;
    e->n++;
    if (!e->best || ev->valid_loss < e->best_loss) {
        assert_true(ev->best); /* the trainer agrees this one is the best so far */
        pd_prefix_release(e->best);
        pd_err err;
        assert_int_equal(pd_train_eval_prefix(ev, "best", &e->best, &err), PD_OK);
        e->best_loss = ev->valid_loss;
    } else {
        assert_false(ev->best);
    }
    e->best_flagged += ev->best;
}

/* The validation token accuracy of prefix pf, computed another way: for
 * every target, the prefix and the tokens before it are prefilled from an
 * empty sequence (pd_prefill) and the argmax of the last logits is compared
 * with the target. */
static double accuracy_by_prefill(const pd_prefix *pf)
{
    pd_dataset_params dp = pd_dataset_default_params();
    dp.max_tokens = model->cfg.seq_len - pf->n_tokens;
    pd_dataset *d;
    pd_engine *e;
    pd_seq *seq;
    pd_err err;
    assert_int_equal(pd_dataset_load(valid_path, model->tok, &dp, &d, &err), PD_OK);
    assert_int_equal(pd_engine_create(model, NULL, &e, &err), PD_OK);
    assert_int_equal(pd_seq_create(model, model->cfg.seq_len - pf->n_tokens, &seq, &err), PD_OK);
    long hits = 0, targets = 0;
    for (int i = 0; i < d->n; i++) {
        const pd_example *x = &d->ex[i];
        for (int j = 1; j < x->n; j++) {
            if (!x->loss_mask[j]) continue;
            pd_seq_set_prefix(seq, pf->n_tokens, pf->keys, pf->values);
            const float *logits;
            assert_int_equal(pd_prefill(e, model, seq, x->tokens, j, &logits, &err), PD_OK);
            int best = 0;
            for (int v = 1; v < model->cfg.vocab_size; v++)
                if (logits[v] > logits[best]) best = v;
            hits += best == x->tokens[j];
            targets++;
        }
    }
    pd_seq_free(seq);
    pd_engine_free(e);
    pd_dataset_free(d);
    return (double)hits / (double)targets;
}

/* Validation at every eval_every steps and every epoch's end, token accuracy
 * against a prefill computation, and with early stopping on (a patience it
 * never reaches) the result is the best validated prefix, bit for bit. */
static void test_validation_accuracy_and_best(void **state)
{
    (void)state;
    pd_train_params p = job();
    p.n_epochs = 3;     /* 4 steps per epoch */
    p.eval_every = 3;
    p.learning_rate = 0.5; /* large: the validation loss goes up and down */
    p.schedule = PD_LR_CONSTANT;
    p.early_stopping_patience = 1000;
    evals ev = {.w = {.cancel_at = -1}};
    atomic_init(&ev.w.cancel, 0);
    pd_train_hooks h = {on_progress, on_yield, &ev, &ev.w.cancel, on_eval};
    pd_prefix *pf = NULL;
    pd_err err;
    int rc = pd_train_run(model, &p, &h, &pf, &err);
    if (rc < 0) fail_msg("pd_train_run: %s", err.msg);
    /* steps 3, 4 (epoch end), 6, 8, 9, 12 */
    int want[] = {3, 4, 6, 8, 9, 12};
    assert_int_equal(ev.n, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(ev.step[i], want[i]);
        assert_true(ev.acc[i] >= 0 && ev.acc[i] <= 1);
    }
    /* the accuracy the trainer reported for its best prefix, recomputed */
    const char *acc = pd_prefix_meta_get(pf, "valid_token_accuracy");
    assert_non_null(acc);
    assert_float_equal(strtod(acc, NULL), accuracy_by_prefill(ev.best), 1e-6);
    /* the result is the best validation's prefix, and says so */
    assert_same_bits(pf, ev.best);
    assert_float_equal(strtod(pd_prefix_meta_get(pf, "valid_loss"), NULL), ev.best_loss, 1e-6);
    assert_string_equal(pd_prefix_meta_get(pf, "stopped_early"), "false");
    assert_true(ev.best_flagged >= 1);
    pd_prefix_release(ev.best);
    pd_prefix_release(pf);

    /* patience 1: it stops after the first validation without a lower loss */
    p.early_stopping_patience = 1;
    p.eval_every = 1;
    p.n_epochs = 10;
    evals ev2 = {.w = {.cancel_at = -1}};
    atomic_init(&ev2.w.cancel, 0);
    h = (pd_train_hooks){on_progress, on_yield, &ev2, &ev2.w.cancel, on_eval};
    rc = pd_train_run(model, &p, &h, &pf, &err);
    if (rc < 0) fail_msg("pd_train_run: %s", err.msg);
    int steps = atoi(pd_prefix_meta_get(pf, "steps"));
    int best = atoi(pd_prefix_meta_get(pf, "best_step"));
    assert_true(steps < 40);
    assert_string_equal(pd_prefix_meta_get(pf, "stopped_early"), "true");
    assert_int_equal(steps, best + 1);
    assert_int_equal(ev2.step[ev2.n - 1], steps);
    assert_float_equal(ev2.loss[ev2.n - 2], ev2.best_loss, 0); /* the step before: the best */
    assert_true(ev2.loss[ev2.n - 1] >= ev2.best_loss);
    assert_same_bits(pf, ev2.best);
    pd_prefix_release(pf);
    pd_prefix_release(ev2.best);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_run_learns),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_resume_direct),
        cmocka_unit_test(test_resume_projection),
        cmocka_unit_test(test_checkpoint_file),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_init_text),
        cmocka_unit_test(test_bad_jobs),
        cmocka_unit_test(test_validation_accuracy_and_best),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
