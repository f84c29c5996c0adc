/* worker.h — the training worker of `prefixd serve`: runs the fine-tuning
 * jobs of the job store one at a time, in the background, while the server
 * serves (ARCHITECTURE.md "Threads and ownership", "Training").
 *
 *     worker *w;
 *     worker_create(&params, &w, &err);        main thread, before the loop runs
 *     worker_watch(w, loop, &err);             the uv loop's thread, before uv_run
 *     worker_kick(w);                          any thread: look for work now
 *     worker_submitted(w, job_id);             any thread: a job was created
 *     worker_cancel(w, job_id);                any thread: stop it at its next step
 *     worker_stop(w);                          any thread: shutdown begins
 *     worker_unwatch(w);                       the loop's thread (the loop then ends
 *                                              once the job in flight has returned)
 *     worker_free(w);                          after the loop's thread has ended
 *
 * A job goes validating_files -> queued (its files pass
 * pd_train_validate_file with the job's prefix length) or failed, then
 * queued -> running -> succeeded | failed | cancelled. On success the
 * prefix is published with pd_registry_put_prefix (servable as model =
 * the task at once), fine_tuned_model and trained_tokens are recorded, and
 * the job's checkpoint is removed. A job found running at start was
 * interrupted by a crash or a shutdown: it runs again and the trainer
 * resumes it from its checkpoint. worker_stop() stops the job in flight at
 * its next step boundary and leaves it running in the store (the next start
 * resumes it); only a cancel the store recorded makes it cancelled. On a
 * shared store (PostgreSQL) several replicas run workers: each claims jobs
 * with a lease it renews while training; when a replica dies, another takes
 * the job over once the lease ends and resumes it from its checkpoint (on
 * the shared data directory). */
#ifndef PREFIXD_SERVER_WORKER_H
#define PREFIXD_SERVER_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "prefixd/jobstore.h"
#include "prefixd/model.h"
#include "prefixd/registry.h"
#include "prefixd/trainer.h"

typedef struct worker worker;

typedef struct worker_params {
    pd_jobstore *js;          /* borrowed; outlives the worker */
    const pd_model *model;    /* borrowed */
    pd_registry *reg;         /* borrowed */
    /* 1 while serving has requests waiting or running (training then
     * pauses); called on the training thread. NULL: never busy. */
    int (*serving_busy)(void *user_data);
    void *user_data;
    int train_threads;        /* pd_train_params.n_threads (<= 0: online CPUs) */
    int nice;                 /* nice increment of the training threads (0: none) */
    int checkpoint_every;     /* steps between checkpoints (0: none) */
    int eval_every;           /* steps between validation losses */
    int metrics_every;        /* steps between metrics events (>= 1) */
    int max_pause_ms;         /* longest pause at one step boundary while busy */
    int poll_ms;              /* look for work this often (jobs other replicas queued,
                                 or whose replica died); 0: 30 s */
    int lease_s;              /* the store's lease length (renewed every third of it) */
    int training_jobs;        /* 0: this replica validates but never trains; 1: one
                                 job at a time */
} worker_params;

/* A new, idle worker (params copied). PD_ENOMEM / PD_ESYS with err. */
int worker_create(const worker_params *p, worker **out, pd_err *err);

/* Adds the worker's handles (a wake-up async and a safety-net timer) to
 * uv_loop (a uv_loop_t *). Call on the loop's thread before or while it
 * runs. The first worker_kick() starts the work: jobs left validating,
 * queued or running by a previous run are taken up then. PD_ESYS with err. */
int worker_watch(worker *w, void *uv_loop, pd_err *err);

/* Closes the handles (on the loop's thread). A job in flight keeps the loop
 * alive until it returns: call worker_stop() first so that it returns at
 * its next step. */
void worker_unwatch(worker *w);

/* Wakes the worker to look for work. Any thread; a no-op when not watching. */
void worker_kick(worker *w);

/* Tells the worker that job_id (copied) was created in validating_files,
 * and wakes it. Any thread. */
void worker_submitted(worker *w, const char *job_id);

/* If job_id is the job training now, it stops at its next step boundary;
 * the worker then marks it cancelled (the store must hold the cancel
 * request: pd_jobstore_job_request_cancel first). Any thread. */
void worker_cancel(worker *w, const char *job_id);

/* Shutdown: no new work, and the job in flight stops at its next step
 * boundary without a status change. Any thread; idempotent. */
void worker_stop(worker *w);

/* Frees the worker once its loop thread has ended. NULL: no-op. */
void worker_free(worker *w);

typedef struct worker_stats {
    int active;               /* 1 while a job trains */
    int step, total_steps;    /* of the job training now (0 when none: reset when a
                                 job ends, whatever its outcome) */
    double tokens_per_second; /* of the job training now (0 when none) */
    uint64_t steps;           /* training steps run, all jobs */
    uint64_t tokens;          /* tokens trained on, all jobs */
    uint64_t succeeded, failed, cancelled;
    double paused_seconds;    /* time training waited for serving */
} worker_stats;

void worker_stats_get(worker *w, worker_stats *out);

/* ---- shared with the routes ---- */

/* Fills *tp from a job's stored request (pd_jobstore_job_params; borrowed)
 * on top of pd_train_default_params(): hyperparameters n_epochs,
 * batch_size, learning_rate_multiplier, and method.<type>.hyperparameters
 * (type "supervised" or "prefix"; routes_jobs.c lists them) with "auto" or
 * absent meaning the trainer's default. The learning rate is learning_rate
 * (default PD_TRAIN_DEFAULT_LR, or _PROJECTION with prefix_projection) times
 * learning_rate_multiplier. eval_every is -1 when the job does not say
 * (the caller applies its own). *init_from is the job's init_from (a task name
 * or a file id) or NULL. String fields point into params (borrowed: keep
 * params alive while *tp is used). task is the suffix, or the job id when
 * there is none (job_id borrowed too). PD_EINVAL with err naming the field. */
int worker_train_params(const json_t *params, const char *job_id, pd_train_params *tp,
                        const char **init_from, pd_err *err);
/* The distill settings of a stored job's method hyperparameters (mhp) into
 * tp->distill (strings borrowed from mhp); PD_OK without change when the
 * job is not a distill job (routes_jobs.c, which stores them). */
int jobs_distill_params(const json_t *mhp, pd_train_params *tp, pd_err *err);

/* Rewrites a data error of the trainer or the validator ("PATH:LINE: what")
 * for a user who never saw PATH: into out (cap bytes) as "NAME line LINE:
 * what" (NAME: the file's id or name; "line LINE: what" when name is "").
 * Messages that do not start with path are copied. */
void worker_data_message(const char *msg, const char *path, const char *name, char *out,
                         size_t cap);

#endif
