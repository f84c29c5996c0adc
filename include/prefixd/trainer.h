/* prefixd/trainer.h — learning a new prefix: data, optimiser, schedule,
 * checkpoints (ARCHITECTURE.md "Training").
 *
 * A pd_trainer runs one job: it tokenizes the JSONL data, initialises the
 * prefix (small random, from a text prompt's KV, or from an existing
 * prefix), optionally through
 * PEFT's prefix_projection MLP, and runs AdamW steps with warm-up and decay
 * and gradient clipping, using pd_backprop for gradients. It evaluates the
 * validation set (loss and token accuracy) every eval_every steps and at the
 * end of every epoch, and can stop early when the validation loss stops
 * improving, returning the best evaluated prefix. It checkpoints
 * (parameters, optimiser state, step, RNG, data order) atomically every N
 * steps and resumes from a checkpoint. On success it returns a pd_prefix
 * (source "trained", job id and final losses in its metadata). With
 * distill.teacher_prompt set it distils that prompt into the prefix instead
 * (context distillation, below). It runs on the
 * calling thread, in steps; the caller may pause between steps (serving has
 * priority) through the yield callback, and cancel through the flag.
 */
#ifndef PREFIXD_TRAINER_H
#define PREFIXD_TRAINER_H

#include <stdatomic.h>
#include <stdint.h>

#include "prefixd/adamw.h"
#include "prefixd/distill.h"
#include "prefixd/model.h"
#include "prefixd/prefix.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_train_params {
    const char *task;             /* the new task's name */
    const char *job_id;           /* recorded in the prefix metadata ("" for offline) */
    const char *train_path;       /* JSONL: {"prompt","completion"} or {"text"} per line */
    const char *valid_path;       /* optional JSONL; NULL: split valid_fraction off train */
    double valid_fraction;        /* used when valid_path is NULL (default 0.1; 0: none) */
    int skip_bad_lines;           /* 1: skip (and report) bad lines; 0: fail on the first */
    int num_virtual_tokens;       /* P (default 20) */
    int prefix_projection;        /* 1: PEFT's Embedding -> Linear -> tanh -> Linear */
    int encoder_hidden_size;      /* h of the projection (default 128) */
    const char *init_text;        /* optional: initialise from this prompt's KV */
    const pd_prefix *init_prefix; /* optional, borrowed: start from this prefix (its
                                     P and has_bos; num_virtual_tokens is ignored);
                                     excludes init_text and prefix_projection */
    int n_epochs;                 /* 0 (default): auto, the fewest epochs that make
                                     PD_TRAIN_AUTO_STEPS optimiser steps, at most
                                     PD_TRAIN_AUTO_MAX_EPOCHS */
    int batch_size;               /* examples per step (default 4) */
    double learning_rate;         /* 0 (default): auto, 0.1 for direct prefixes, 1e-2
                                     with the projection MLP (prefix keys of small
                                     models have an RMS of several units: 1e-2
                                     barely moves them) */
    double weight_decay;          /* AdamW decoupled decay (default 0) */
    double beta1, beta2, eps;     /* default 0.9, 0.999, 1e-8 */
    double warmup_fraction;       /* of all steps (default 0.1) */
    int schedule;                 /* pd_lr_kind after warm-up (default PD_LR_LINEAR) */
    double max_grad_norm;         /* default 1.0; 0: no clipping */
    uint64_t seed;                /* makes a run reproducible bit for bit */
    int eval_every;               /* steps between validations (default 10; 0: none);
                                     every epoch's end is evaluated too */
    int early_stopping_patience;  /* 0 (default): off. N: stop once N validations in a
                                     row have not lowered the best validation loss; the
                                     result is then the best validated prefix */
    int checkpoint_every;         /* steps between checkpoints (default 20) */
    const char *checkpoint_path;  /* NULL: no checkpoints */
    int n_threads;                /* <= 0: online CPUs */
    pd_distill_params distill;    /* teacher_prompt set: context distillation (below) */
} pd_train_params;

/* Context distillation (distill.teacher_prompt set; prefixd/distill.h): the
 * prefix of num_virtual_tokens slots is trained so that the model with it
 * predicts what the model after BOS + teacher_prompt predicts. train_path
 * (optional) and valid_path hold the user inputs the teacher continues
 * (every line's whole text); without train_path the continuations are
 * unconditional. The loss is KL(teacher ‖ student) per continuation token
 * (mixed with ce_weight of cross-entropy in training); valid_loss is the
 * held-out KL in nats per token and valid_token_accuracy the top-1
 * agreement with the teacher; base_valid_loss the KL of the base model
 * without the prompt. The result serves with has_bos = 1 and carries
 * method "distill" and the distill_* figures in its metadata. Excludes
 * init_text, init_prefix and prefix_projection. */

/* The learning rate learning_rate 0 means: direct prefixes, and with the
 * projection MLP. Every interface (CLI, HTTP) uses these. */
#define PD_TRAIN_DEFAULT_LR 0.1
#define PD_TRAIN_DEFAULT_LR_PROJECTION 1e-2

/* n_epochs 0 ("auto"): enough epochs for this many steps, within [1, max]. */
#define PD_TRAIN_AUTO_STEPS 250
#define PD_TRAIN_AUTO_MAX_EPOCHS 25

pd_train_params pd_train_default_params(void);

/* The epochs n_epochs means for n_train examples (resolves 0, "auto"). */
int pd_train_epochs(const pd_train_params *p, int n_train);

/* Progress, called on the training thread after every step and evaluation.
 * valid_loss is NaN when not evaluated at this step. */
typedef struct pd_train_progress {
    int step, total_steps, epoch;
    double train_loss;            /* mean over the step's targets */
    double valid_loss;
    double valid_token_accuracy;  /* share of validation targets the greedy choice
                                     predicts; NaN when not evaluated at this step */
    double learning_rate;
    uint64_t trained_tokens;      /* tokens processed so far (all epochs) */
    double tokens_per_second;
    int resumed_from;             /* step a checkpoint resumed from, or -1 */
    int distill;                  /* 1: a distill job: valid_loss is the held-out KL
                                     (nats/token), valid_token_accuracy the top-1
                                     agreement with the teacher */
} pd_train_progress;

typedef void (*pd_train_progress_fn)(const pd_train_progress *p, void *user_data);

/* A validation, passed to on_eval right after it (training thread). */
typedef struct pd_train_eval {
    int step, total_steps, epoch;
    int epoch_end;                /* 1: the step that completed an epoch */
    double train_loss;            /* mean over the current epoch's targets so far */
    double valid_loss, valid_token_accuracy;
    double learning_rate;
    uint64_t trained_tokens;
    int best;                     /* 1: the lowest validation loss so far */
    void *trainer;                /* for pd_train_eval_prefix only */
} pd_train_eval;

typedef void (*pd_train_eval_fn)(const pd_train_eval *ev, void *user_data);

/* The prefix as evaluated in ev, named task, with the metadata of a result
 * (and "step"); only inside on_eval. One reference in *out. */
int pd_train_eval_prefix(const pd_train_eval *ev, const char *task, pd_prefix **out,
                         pd_err *err);
/* Called between steps; may sleep while serving is busy. */
typedef void (*pd_train_yield_fn)(void *user_data);

typedef struct pd_train_hooks {
    pd_train_progress_fn on_progress;
    pd_train_yield_fn yield;
    void *user_data;
    atomic_int *cancel;           /* set to 1 to stop at the next step boundary */
    pd_train_eval_fn on_eval;     /* may be NULL */
} pd_train_hooks;

/* Validates the data only (for upload / validating_files): returns PD_OK and
 * the number of usable examples in *n_examples, or PD_EFORMAT with err naming
 * the file and the line number and what is wrong. */
int pd_train_validate_file(const pd_model *m, const char *path, int num_virtual_tokens,
                           int *n_examples, pd_err *err);

/* Runs the whole job. Returns PD_OK and a new prefix (one reference), or
 * PD_ECANCELLED, or a negative status with err. */
int pd_train_run(const pd_model *m, const pd_train_params *p, const pd_train_hooks *hooks,
                 pd_prefix **out, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_TRAINER_H */
