/* prefixd/checkpoint.h — a training job's checkpoint: everything the trainer
 * needs to continue a run exactly where it stopped (ARCHITECTURE.md
 * "Training"; issue 5 "Durable").
 *
 * File format: safetensors (written atomically: temp file, fsync, rename)
 * with tensors
 *     params  F32 (n_params)   the parameters being trained
 *     m, v    F32 (n_params)   AdamW's moments
 *     order   I32 (n_order)    the current epoch's example order
 * and __metadata__
 *     format = "prefixd.train-checkpoint/1", config_hash (16 hex digits:
 *     names the job's configuration and data), step, epoch, pos, adam_t,
 *     rng (64 hex digits: the generator's state), trained_tokens, and the
 *     running figures epoch_loss_sum, epoch_targets, train_loss,
 *     valid_loss (decimal, exact round trip).
 * Early stopping adds (optional: a checkpoint without them has no best yet)
 *     best    F32 (n_params)   the parameters of the best validation loss
 * and best_valid_loss, best_step, bad_evals.
 * A reader checks the format, every number and every tensor's dtype and
 * size; the caller compares config_hash and n_params with its own job and
 * refuses a checkpoint of another one.
 */
#ifndef PREFIXD_CHECKPOINT_H
#define PREFIXD_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/dataset.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PD_TRAIN_CKPT_FORMAT "prefixd.train-checkpoint/1"

typedef struct pd_train_ckpt {
    uint64_t config_hash;
    int step;                 /* steps completed */
    int epoch;                /* epoch the next step belongs to */
    int pos;                  /* next position in order */
    int64_t adam_t;           /* optimiser steps taken */
    pd_rng rng;               /* the shuffling generator */
    uint64_t trained_tokens;
    double epoch_loss_sum;    /* loss summed over the current epoch's targets */
    double epoch_targets;     /* targets of the current epoch so far */
    double train_loss;        /* last step's mean loss */
    double valid_loss;        /* last validation loss (NaN: none yet) */
    int n_order;
    int *order;               /* (n_order) */
    size_t n_params;
    float *params;            /* (n_params) */
    float *m, *v;             /* (n_params) each */
    float *best;              /* (n_params) or NULL: no best recorded */
    double best_valid_loss;   /* NaN when best is NULL */
    int best_step;            /* -1 when best is NULL */
    int bad_evals;            /* evaluations since the best without improvement */
} pd_train_ckpt;

/* Writes c to path atomically. The arrays are borrowed for the call.
 * Returns PD_OK, PD_EIO or PD_ENOMEM. */
int pd_train_ckpt_save(const char *path, const pd_train_ckpt *c, pd_err *err);

/* Reads path into *c; order, params, m, v (and best) are new buffers released by
 * pd_train_ckpt_free. Returns PD_OK, PD_ENOTFOUND (no file), PD_EIO, or
 * PD_EFORMAT / PD_EVERSION with err naming the file and what is wrong. */
int pd_train_ckpt_load(const char *path, pd_train_ckpt *c, pd_err *err);

/* Frees the buffers pd_train_ckpt_load allocated and zeroes them. */
void pd_train_ckpt_free(pd_train_ckpt *c);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_CHECKPOINT_H */
