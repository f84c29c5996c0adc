/* worker.c — the training worker of `prefixd serve` (contract in worker.h).
 *
 * DESIGN. The loop drives, libuv pool threads work:
 *   - the uv side thread (serve.c) owns the worker's handles: `wake` (a
 *     uv_async_t any thread may send: a job was submitted, start-up) and
 *     `timer` (a slow safety-net poll, and the back-off after a job-store
 *     failure). Their callbacks only dispatch work to two lanes, each at
 *     most one uv_queue_work() in flight:
 *   - the validation lane validates the files of every pending job
 *     (validating_files -> queued | failed), so a new job is checked at once
 *     even while another trains;
 *   - the training lane runs pd_jobstore_job_next_runnable() jobs one at a
 *     time until none is left, the worker is stopping, or the store fails.
 *   A lane's after-work callback (back on the loop) dispatches it again if a
 *   wake came meanwhile (the validation lane also wakes the training lane:
 *   it may have queued a job), or arms the back-off timer.
 * So at most one job trains at a time, and the loop stays free for the
 * registry watcher while a job trains for minutes.
 *
 * Replicas (a job store on PostgreSQL, pd_jobstore_shared): the timer polls
 * every poll_ms for jobs other replicas queued or let go, and rescans for
 * jobs left validating; next_runnable claims a job with a lease, and the
 * yield hook renews it (every third of the lease, at most every
 * CANCEL_POLL_S) together with reading the cancel flag, so a cancel sent to
 * any replica stops the job here. A renewal that finds the lease taken
 * stops the job without writing anything more to it (the replica that took
 * it over owns its outcome); a shutdown releases the lease so another
 * replica resumes the job at once. training_jobs 0 makes a replica that
 * validates but never trains.
 *
 * Serving has priority. The training thread (and the backprop and engine
 * threads it creates, which inherit it) runs at a higher nice value, and the
 * trainer's yield hook, called between steps, sleeps in 2 ms slices while
 * the scheduler has requests queued or running, for at most max_pause_ms at
 * one step boundary (training always moves on). The same hook polls the
 * store for a cancel request twice a second (the cancel route also flips
 * the flag at once through worker_cancel).
 *
 * The worker struct: params are read-only; `mu` guards the pending list,
 * the current job id, the stats and `watching`; `cancel` and `stopping` are
 * atomics read by the training thread between steps; the lanes' busy/again
 * and retry_ms belong to the loop thread. */
#include "worker.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "hbuf.h"
#include "prefixd/log.h"
#include "prefixd/scheduler.h"

#define POLL_MS 30000         /* safety-net look for work */
#define RETRY_MIN_MS 1000     /* back-off after a job-store failure */
#define RETRY_MAX_MS 30000
#define YIELD_SLICE_NS 2000000L
#define CANCEL_POLL_S 0.5     /* store cancel flag polled this often */
#define KEEP_CHECKPOINTS 3    /* servable checkpoints kept per job (as OpenAI) */
#define RESULTS_PURPOSE "fine-tune-results"

typedef char job_id[PD_JOBSTORE_ID_MAX];

/* One kind of work with at most one piece in flight (loop thread). */
typedef struct lane {
    worker *w;
    void (*run)(worker *w);  /* on a pool thread */
    uv_work_t work;
    int busy;                /* in flight */
    int again;               /* a wake came while busy */
} lane;

struct worker {
    worker_params p;

    /* loop thread only */
    uv_loop_t *loop;
    uv_async_t wake;
    uv_timer_t timer;
    lane validate, train;
    int retry_ms;      /* current back-off, 0: none */

    /* guarded by mu */
    pthread_mutex_t mu;
    int watching;      /* handles open: wake may be sent */
    job_id *pending;   /* jobs to validate, oldest first */
    int n_pending, cap_pending;
    int rescan;        /* 1: scan the store for validating jobs (start, or lost a submit) */
    job_id current;    /* the job training now, "" when none */
    worker_stats st;

    /* shared */
    atomic_int cancel;   /* the trainer's flag: stop at the next step */
    atomic_int stopping;
    atomic_int failed;   /* a lane met a job-store failure: back off */
};

/* What the trainer's hooks see of the job they run (training thread). */
typedef struct job_ctx {
    worker *w;
    const char *id;
    const char *task;
    double last_cancel_poll;
    int lost;            /* the lease went to another replica: write nothing more */
    int events;          /* progress calls so far */
    uint64_t last_tokens; /* trained_tokens at the previous progress call */
    double t_start;      /* when this run's first step began (pd_now) */
    int step_start;      /* the step this run started from */
} job_ctx;

/* ---- small helpers ---------------------------------------------------------- */

static void sleep_ns(long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

/* A JSON number, or null for NaN/inf (json_real refuses those). */
static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

void worker_data_message(const char *msg, const char *path, const char *name, char *out,
                         size_t cap)
{
    size_t pl = path ? strlen(path) : 0;
    if (pl && !strncmp(msg, path, pl)) {
        const char *rest = msg + pl;
        if (rest[0] == ':' && rest[1] >= '0' && rest[1] <= '9') {
            const char *p = rest + 1;
            while (*p >= '0' && *p <= '9') p++;
            if (*p == ':') {
                snprintf(out, cap, "%s%sline %.*s:%s", name, *name ? " " : "",
                         (int)(p - rest - 1), rest + 1, p + 1);
                return;
            }
        }
        snprintf(out, cap, "%s%s", *name ? name : "the file", rest);
        return;
    }
    snprintf(out, cap, "%s", msg);
}

/* Logs a job-store failure and makes the lanes back off. */
static void store_failed(worker *w, const char *what, const pd_err *err)
{
    PD_LOGE("training worker: %s: %s", what, err->msg);
    atomic_store(&w->failed, 1);
}

static void event(worker *w, const char *id, const char *level, const char *type,
                  json_t *data, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Adds an event (data stolen, may be NULL). Failures are logged only: a
 * missing event never stops a job. */
static void event(worker *w, const char *id, const char *level, const char *type,
                  json_t *data, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pd_err err;
    if (pd_jobstore_event_add(w->p.js, id, level, type, msg, data, NULL, &err) < 0)
        PD_LOGW("training worker: job %s: event not recorded: %s", id, err.msg);
    json_decref(data);
}

/* Moves a job to status; a refused transition (the job moved on, e.g. a
 * cancel) is logged and returns PD_EINVAL, a store failure backs off. */
static int set_status(worker *w, const char *id, pd_job_status status, const char *code,
                      const char *param, const char *message)
{
    pd_err err;
    pd_jobstore_job_error je = {code, message, param};
    int rc = pd_jobstore_job_set_status(w->p.js, id, status, message ? &je : NULL, &err);
    /* PD_EBUSY: another replica moved it first (a shared store) */
    if (rc == PD_EINVAL || rc == PD_ENOTFOUND || rc == PD_EBUSY)
        PD_LOGI("training worker: job %s: not %s: %s", id, pd_job_status_name(status), err.msg);
    else if (rc < 0)
        store_failed(w, "setting a job's status", &err);
    return rc;
}

static void count_outcome(worker *w, pd_job_status s)
{
    pthread_mutex_lock(&w->mu);
    if (s == PD_JOB_SUCCEEDED) w->st.succeeded++;
    else if (s == PD_JOB_FAILED) w->st.failed++;
    else if (s == PD_JOB_CANCELLED) w->st.cancelled++;
    pthread_mutex_unlock(&w->mu);
}

static void fail_job(worker *w, const char *id, const char *code, const char *param,
                     const char *message)
{
    event(w, id, "error", "message", NULL, "Fine-tuning job failed: %s", message);
    if (set_status(w, id, PD_JOB_FAILED, code, param, message) == PD_OK) {
        count_outcome(w, PD_JOB_FAILED);
        PD_LOGW("training worker: job %s failed: %s", id, message);
    }
}

static void remove_checkpoint(worker *w, const char *id)
{
    char path[4096];
    pd_err err;
    if (pd_jobstore_checkpoint_path(w->p.js, id, path, sizeof path, &err) < 0) return;
    if (unlink(path) < 0 && errno != ENOENT)
        PD_LOGW("training worker: cannot remove %s: %s", path, strerror(errno));
}

/* ---- a job's settings ---------------------------------------------------------- */

/* Reads an integer setting of obj: absent, null or "auto" leave *out. */
static int get_int(const json_t *obj, const char *key, int lo, int hi, int *out, pd_err *err)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), "auto")))
        return PD_OK;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return pd_err_set(err, PD_EINVAL, "%s: must be an integer in [%d, %d] or \"auto\"", key,
                          lo, hi);
    *out = (int)json_integer_value(v);
    return PD_OK;
}

static int get_real(const json_t *obj, const char *key, int zero_ok, double *out, pd_err *err)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), "auto")))
        return PD_OK;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!isfinite(x) || x < 0 || (x == 0 && !zero_ok))
        return pd_err_set(err, PD_EINVAL, "%s: must be a %s number or \"auto\"", key,
                          zero_ok ? "non-negative" : "positive");
    *out = x;
    return PD_OK;
}

int worker_train_params(const json_t *params, const char *job_id, pd_train_params *tp,
                        const char **init_from, pd_err *err)
{
    *tp = pd_train_default_params();
    tp->eval_every = -1; /* not stored (a job of an older version): the server's setting */
    *init_from = NULL;
    tp->job_id = job_id;
    const json_t *suffix = json_object_get(params, "suffix");
    tp->task = json_is_string(suffix) ? json_string_value(suffix) : job_id;
    const json_t *seed = json_object_get(params, "seed");
    if (json_is_integer(seed)) tp->seed = (uint64_t)json_integer_value(seed);

    const json_t *hp = json_object_get(params, "hyperparameters");
    const json_t *method = json_object_get(params, "method");
    const json_t *type = json_is_object(method) ? json_object_get(method, "type") : NULL;
    const json_t *inner = json_is_string(type) ? json_object_get(method, json_string_value(type))
                                                : NULL;
    const json_t *mhp = json_is_object(inner) ? json_object_get(inner, "hyperparameters") : NULL;
    double mult = 1.0, lr = 0.0;
    int rc;
    /* the method's settings win over the top-level ones (the routes made them agree) */
    for (int i = 0; i < 2; i++) {
        const json_t *o = i ? mhp : hp;
        if ((rc = get_int(o, "n_epochs", 1, 100000, &tp->n_epochs, err)) < 0 ||
            (rc = get_int(o, "batch_size", 1, 4096, &tp->batch_size, err)) < 0 ||
            (rc = get_real(o, "learning_rate_multiplier", 0, &mult, err)) < 0)
            return rc;
    }
    if ((rc = get_int(mhp, "num_virtual_tokens", 1, 1 << 20, &tp->num_virtual_tokens, err)) <
            0 ||
        (rc = get_int(mhp, "encoder_hidden_size", 1, 65536, &tp->encoder_hidden_size, err)) <
            0 ||
        (rc = get_int(mhp, "eval_every", 0, 1 << 30, &tp->eval_every, err)) < 0 ||
        (rc = get_int(mhp, "early_stopping_patience", 0, 1 << 20,
                      &tp->early_stopping_patience, err)) < 0 ||
        (rc = get_real(mhp, "learning_rate", 0, &lr, err)) < 0 ||
        (rc = get_real(mhp, "warmup_ratio", 1, &tp->warmup_fraction, err)) < 0 ||
        (rc = get_real(mhp, "weight_decay", 1, &tp->weight_decay, err)) < 0 ||
        (rc = get_real(mhp, "max_grad_norm", 1, &tp->max_grad_norm, err)) < 0)
        return rc;
    const json_t *v = json_is_object(mhp) ? json_object_get(mhp, "lr_scheduler_type") : NULL;
    if (v && !json_is_null(v)) {
        int k = json_is_string(v) ? pd_lr_kind_parse(json_string_value(v)) : -1;
        if (k < 0)
            return pd_err_set(err, PD_EINVAL, "lr_scheduler_type: must be linear, cosine or "
                              "constant");
        tp->schedule = k;
    }
    v = json_is_object(mhp) ? json_object_get(mhp, "prefix_projection") : NULL;
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v))
            return pd_err_set(err, PD_EINVAL, "prefix_projection: must be true or false");
        tp->prefix_projection = json_is_true(v);
    }
    v = json_is_object(mhp) ? json_object_get(mhp, "init_text") : NULL;
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            strlen(json_string_value(v)) != json_string_length(v))
            return pd_err_set(err, PD_EINVAL, "init_text: must be a non-empty string");
        tp->init_text = json_string_value(v);
    }
    v = json_is_object(mhp) ? json_object_get(mhp, "init_from") : NULL;
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) == 0)
            return pd_err_set(err, PD_EINVAL, "init_from: must be a task name or a file id");
        *init_from = json_string_value(v);
    }
    if (lr == 0.0)
        lr = tp->prefix_projection ? PD_TRAIN_DEFAULT_LR_PROJECTION : PD_TRAIN_DEFAULT_LR;
    tp->learning_rate = lr * mult;
    return jobs_distill_params(mhp, tp, err);
}

/* The prefix length the job will train with (init_text decides it then;
 * with init_from, the routes stored the prefix's own length). */
static int job_prefix_len(const pd_model *m, const pd_train_params *tp)
{
    if (!tp->init_text) return tp->num_virtual_tokens;
    int cap = m->cfg.seq_len;
    int32_t *tok = malloc((size_t)cap * sizeof *tok);
    if (!tok) return tp->num_virtual_tokens;
    int n = pd_tokenizer_encode(m->tok, tp->init_text, strlen(tp->init_text), 1, 0, tok, cap);
    free(tok);
    return n > 0 && n <= cap ? n : tp->num_virtual_tokens;
}

/* ---- validating_files ------------------------------------------------------------ */

/* Validates one of a job's files; 0 when good, -1 when the job failed
 * (recorded), -2 on a store failure. */
static int validate_file(worker *w, const char *id, const char *param, const char *file,
                         int P)
{
    char path[4096], msg[1200];
    pd_err err;
    event(w, id, "info", "message", NULL, "Validating %s: %s", param, file);
    int rc = pd_jobstore_file_path(w->p.js, file, path, sizeof path, &err);
    if (rc == PD_ENOTFOUND) {
        snprintf(msg, sizeof msg, "%s %s no longer exists", param, file);
        fail_job(w, id, !strcmp(param, "training_file") ? "invalid_training_file"
                                                         : "invalid_validation_file",
                 param, msg);
        return -1;
    }
    if (rc < 0) {
        store_failed(w, "finding a job's file", &err);
        return -2;
    }
    int n = 0;
    rc = pd_train_validate_file(w->p.model, path, P, &n, &err);
    if (rc == PD_ENOMEM || rc == PD_EIO) {
        store_failed(w, "reading a job's file", &err);
        return -2;
    }
    if (rc < 0) {
        worker_data_message(err.msg, path, file, msg, sizeof msg);
        fail_job(w, id, !strcmp(param, "training_file") ? "invalid_training_file"
                                                         : "invalid_validation_file",
                 param, msg);
        return -1;
    }
    PD_LOGI("training worker: job %s: %s %s has %d usable examples", id, param, file, n);
    return 0;
}

static void validate_job(worker *w, const char *id)
{
    pd_err err;
    pd_job_status status;
    int rc = pd_jobstore_job_status(w->p.js, id, &status, NULL, &err);
    if (rc == PD_ENOTFOUND) return;
    if (rc < 0) {
        store_failed(w, "reading a job", &err);
        return;
    }
    if (status != PD_JOB_VALIDATING_FILES) return; /* cancelled meanwhile */
    json_t *params;
    if ((rc = pd_jobstore_job_params(w->p.js, id, &params, &err)) < 0) {
        store_failed(w, "reading a job's request", &err);
        return;
    }
    pd_train_params tp;
    const char *init_from;
    if (worker_train_params(params, id, &tp, &init_from, &err) < 0) {
        fail_job(w, id, "invalid_hyperparameters", NULL, err.msg);
        json_decref(params);
        return;
    }
    int P = job_prefix_len(w->p.model, &tp);
    const json_t *train = json_object_get(params, "training_file");
    const json_t *valid = json_object_get(params, "validation_file");
    int r = validate_file(w, id, "training_file", json_string_value(train), P);
    if (r == 0 && json_is_string(valid))
        r = validate_file(w, id, "validation_file", json_string_value(valid), P);
    json_decref(params);
    if (r < 0) return;
    event(w, id, "info", "message", NULL, "Files validated, moving job to queued state");
    set_status(w, id, PD_JOB_QUEUED, NULL, NULL, NULL);
}

/* ---- running ------------------------------------------------------------------- */

static void on_yield(void *user_data)
{
    job_ctx *c = user_data;
    worker *w = c->w;
    if (atomic_load(&w->stopping)) atomic_store(&w->cancel, 1); /* stop raced the job's start */
    double t0 = pd_now();
    double every = w->p.lease_s / 3.0 < CANCEL_POLL_S ? w->p.lease_s / 3.0 : CANCEL_POLL_S;
    if (t0 - c->last_cancel_poll >= every) {
        /* renews the lease of a shared store and reads the cancel flag: a
         * cancel reaches the job whichever replica took the request */
        c->last_cancel_poll = t0;
        int requested = 0;
        pd_err err;
        int rc = pd_jobstore_job_renew_lease(w->p.js, c->id, &requested, &err);
        if (rc == PD_OK && requested) atomic_store(&w->cancel, 1);
        if (rc == PD_EBUSY) {
            PD_LOGW("training worker: job %s: %s: stopping", c->id, err.msg);
            c->lost = 1;
            atomic_store(&w->cancel, 1);
        }
    }
    if (!w->p.serving_busy || w->p.max_pause_ms <= 0) return;
    const double limit = w->p.max_pause_ms * 1e-3;
    double t1 = pd_now();
    int slept = 0;
    while (!atomic_load(&w->cancel) && w->p.serving_busy(w->p.user_data) &&
           pd_now() - t0 < limit) {
        sleep_ns(YIELD_SLICE_NS);
        slept = 1;
    }
    if (slept) {
        double paused = pd_now() - t1;
        pthread_mutex_lock(&w->mu);
        w->st.paused_seconds += paused;
        pthread_mutex_unlock(&w->mu);
    }
}

static void on_progress(const pd_train_progress *pr, void *user_data)
{
    job_ctx *c = user_data;
    worker *w = c->w;
    pthread_mutex_lock(&w->mu);
    w->st.steps++;
    w->st.step = pr->step;
    w->st.total_steps = pr->total_steps;
    w->st.tokens_per_second = pr->tokens_per_second;
    pthread_mutex_unlock(&w->mu);
    if (c->step_start < 0) { /* this run's first step: the clock of its estimate */
        c->step_start = pr->step - 1;
    }
    if (c->events++ == 0) {
        /* a resumed job's count starts at its checkpoint: its first step is not counted */
        c->last_tokens = pr->resumed_from >= 0 ? pr->trained_tokens : 0;
        if (pr->resumed_from >= 0)
            event(w, c->id, "info", "message", NULL,
                  "Resumed from the checkpoint at step %d of %d", pr->resumed_from,
                  pr->total_steps);
    }
    uint64_t delta =
        pr->trained_tokens >= c->last_tokens ? pr->trained_tokens - c->last_tokens : 0;
    c->last_tokens = pr->trained_tokens;
    pthread_mutex_lock(&w->mu);
    w->st.tokens += delta;
    pthread_mutex_unlock(&w->mu);

    int evaluated = !isnan(pr->valid_loss);
    if (!(pr->step == 1 || pr->step == pr->total_steps || evaluated || c->events == 1 ||
          pr->step % w->p.metrics_every == 0))
        return;
    json_t *data = json_object();
    if (data) {
        json_object_set_new(data, "step", json_integer(pr->step));
        json_object_set_new(data, "total_steps", json_integer(pr->total_steps));
        json_object_set_new(data, "epoch", json_integer(pr->epoch));
        json_object_set_new(data, "train_loss", num(pr->train_loss));
        json_object_set_new(data, "valid_loss", num(pr->valid_loss));
        json_object_set_new(data, "valid_token_accuracy", num(pr->valid_token_accuracy));
        if (pr->distill) { /* the same figures under their distillation names */
            json_object_set_new(data, "valid_kl", num(pr->valid_loss));
            json_object_set_new(data, "valid_top1_agreement", num(pr->valid_token_accuracy));
        }
        json_object_set_new(data, "learning_rate", num(pr->learning_rate));
        json_object_set_new(data, "trained_tokens", json_integer((json_int_t)pr->trained_tokens));
        json_object_set_new(data, "tokens_per_second", num(pr->tokens_per_second));
        json_object_set_new(data, "resumed_from", json_integer(pr->resumed_from));
    }
    char vbuf[48] = "";
    if (evaluated) snprintf(vbuf, sizeof vbuf, ", validation loss=%.4f", pr->valid_loss);
    event(w, c->id, "info", "metrics", data, "Step %d/%d: training loss=%.4f%s", pr->step,
          pr->total_steps, pr->train_loss, vbuf);
    pd_err err;
    if (pd_jobstore_job_set_result(w->p.js, c->id, NULL, (int64_t)pr->trained_tokens, &err) <
        0)
        PD_LOGW("training worker: job %s: trained_tokens not recorded: %s", c->id, err.msg);
    /* the finish, from this run's measured time per step */
    int done_here = pr->step - c->step_start;
    if (done_here > 0 && pr->step < pr->total_steps) {
        double per_step = (pd_now() - c->t_start) / done_here;
        int64_t eta = (int64_t)time(NULL) + (int64_t)ceil(per_step * (pr->total_steps - pr->step));
        if (pd_jobstore_job_set_estimated_finish(w->p.js, c->id, eta, &err) < 0)
            PD_LOGW("training worker: job %s: estimated finish not recorded: %s", c->id,
                    err.msg);
    }
}

/* ---- checkpoints and result files ------------------------------------------------ */

/* The servable name of a job's checkpoint at step: "<task>.ckpt-step-<step>"
 * (task names cannot hold OpenAI's ':'). 0 when it does not fit a task name. */
static int ckpt_task(const char *task, int step, char out[PD_TASK_NAME_MAX + 1])
{
    int n = snprintf(out, PD_TASK_NAME_MAX + 1, "%s.ckpt-step-%d", task, step);
    return n > 0 && n <= PD_TASK_NAME_MAX && pd_task_name_valid(out);
}

/* Keeps the job's last KEEP_CHECKPOINTS checkpoints: older ones leave the
 * registry and the list. */
static void prune_checkpoints(worker *w, const char *id)
{
    json_t *list;
    pd_err err;
    if (pd_jobstore_checkpoint_list(w->p.js, id, NULL, PD_JOBSTORE_LIST_MAX, &list, &err) < 0) {
        PD_LOGW("training worker: job %s: checkpoints not listed: %s", id, err.msg);
        return;
    }
    json_t *data = json_object_get(list, "data"), *c;
    size_t i;
    json_array_foreach(data, i, c) {
        if (i < KEEP_CHECKPOINTS) continue;
        const char *model = json_string_value(json_object_get(c, "fine_tuned_model_checkpoint"));
        const char *cid = json_string_value(json_object_get(c, "id"));
        if (model && pd_registry_delete(w->p.reg, model, &err) < 0 && err.code != PD_ENOTFOUND)
            PD_LOGW("training worker: job %s: %s not removed: %s", id, model, err.msg);
        if (cid && pd_jobstore_checkpoint_delete(w->p.js, id, cid, &err) < 0)
            PD_LOGW("training worker: job %s: checkpoint %s not forgotten: %s", id, cid,
                    err.msg);
    }
    json_decref(list);
}

/* The trainer validated: at an epoch's end the prefix becomes a servable
 * checkpoint, "<task>.ckpt-step-N", listed by .../checkpoints. */
static void on_eval(const pd_train_eval *ev, void *user_data)
{
    job_ctx *c = user_data;
    worker *w = c->w;
    char name[PD_TASK_NAME_MAX + 1];
    if (!ev->epoch_end || ev->step == ev->total_steps) return; /* the last is the result */
    if (!ckpt_task(c->task, ev->step, name)) return;
    pd_prefix *pf = NULL;
    pd_err err;
    int rc = pd_train_eval_prefix(ev, name, &pf, &err);
    if (rc == PD_OK) rc = pd_registry_put_prefix(w->p.reg, pf, &err);
    pd_prefix_release(pf);
    if (rc < 0) {
        PD_LOGW("training worker: job %s: checkpoint %s not published: %s", c->id, name,
                err.msg);
        return;
    }
    json_t *m = json_pack("{s:i,s:o,s:o,s:o,s:o,s:o,s:o}", "step", ev->step, "train_loss",
                          num(ev->train_loss), "valid_loss", num(ev->valid_loss),
                          "valid_mean_token_accuracy", num(ev->valid_token_accuracy),
                          "full_valid_loss", num(ev->valid_loss),
                          "full_valid_mean_token_accuracy", num(ev->valid_token_accuracy),
                          "learning_rate", num(ev->learning_rate));
    if (!m || pd_jobstore_checkpoint_add(w->p.js, c->id, ev->step, name, m, NULL, &err) < 0)
        PD_LOGW("training worker: job %s: checkpoint %s not recorded: %s", c->id, name,
                m ? err.msg : "out of memory");
    json_decref(m);
    event(w, c->id, "info", "message", NULL, "Checkpoint created at step %d: %s", ev->step, name);
    prune_checkpoints(w, c->id);
}

/* One CSV cell: a number, or empty for null. */
static void csv_cell(hbuf *b, const json_t *v, int last)
{
    if (json_is_integer(v))
        hbuf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_number(v))
        hbuf_printf(b, "%.6g", json_number_value(v));
    hbuf_printf(b, last ? "\n" : ",");
}

/* The job's metrics events as CSV, one row per step (the latest of a step a
 * resumed run repeated), in step order; stored as a file of purpose
 * fine-tune-results and named in the job's result_files. Logged on failure
 * only: a job's outcome never depends on it. */
static void write_results(worker *w, const char *id)
{
    static const char *const cols[] = {"step", "epoch", "train_loss", "valid_loss",
                                       "valid_token_accuracy", "learning_rate",
                                       "trained_tokens", "tokens_per_second"};
    const int n_cols = (int)(sizeof cols / sizeof cols[0]);
    json_t *rows = json_object(); /* step -> event data (newest wins) */
    char after[PD_JOBSTORE_ID_MAX] = "";
    pd_err err;
    int max_step = -1, ok = rows != NULL;
    while (ok) {
        json_t *page;
        if (pd_jobstore_event_list(w->p.js, id, after[0] ? after : NULL, PD_JOBSTORE_LIST_MAX,
                                   &page, &err) < 0) {
            PD_LOGW("training worker: job %s: events not read for the results: %s", id, err.msg);
            ok = 0;
            break;
        }
        json_t *data = json_object_get(page, "data"), *e;
        size_t i;
        json_array_foreach(data, i, e) {
            snprintf(after, sizeof after, "%s", json_string_value(json_object_get(e, "id")));
            const json_t *d = json_object_get(e, "data");
            const json_t *st = json_object_get(d, "step");
            if (!json_is_integer(st) || json_is_true(json_object_get(d, "final"))) continue;
            char key[24];
            snprintf(key, sizeof key, "%" JSON_INTEGER_FORMAT, json_integer_value(st));
            if (json_object_get(rows, key)) continue; /* newest first: keep the latest */
            json_object_set(rows, key, (json_t *)d);
            if (json_integer_value(st) > max_step) max_step = (int)json_integer_value(st);
        }
        int more = json_is_true(json_object_get(page, "has_more")) && json_array_size(data);
        json_decref(page);
        if (!more) break;
    }
    hbuf b = {0};
    for (int k = 0; ok && k < n_cols; k++) hbuf_printf(&b, "%s%s", cols[k], k + 1 < n_cols ? "," : "\n");
    for (int step = 0; ok && step <= max_step; step++) {
        char key[24];
        snprintf(key, sizeof key, "%d", step);
        const json_t *d = json_object_get(rows, key);
        if (!d) continue;
        for (int k = 0; k < n_cols; k++) csv_cell(&b, json_object_get(d, cols[k]), k + 1 == n_cols);
    }
    json_decref(rows);
    if (ok && b.oom) {
        PD_LOGW("training worker: job %s: results: out of memory", id);
        ok = 0;
    }
    pd_jobstore_file_info fi;
    if (ok && pd_jobstore_file_create(w->p.js, "step_metrics.csv", RESULTS_PURPOSE, b.p ? b.p : "",
                                      b.len, &fi, NULL, &err) < 0) {
        PD_LOGW("training worker: job %s: result file not stored: %s", id, err.msg);
        ok = 0;
    }
    hbuf_free(&b);
    if (!ok) return;
    json_t *ids = json_pack("[s]", fi.id);
    if (!ids || pd_jobstore_job_set_result_files(w->p.js, id, ids, &err) < 0)
        PD_LOGW("training worker: job %s: result file %s not recorded: %s", id, fi.id,
                ids ? err.msg : "out of memory");
    json_decref(ids);
}

/* Lowers the calling thread's priority by inc; returns the old nice value
 * (or INT32_MIN when unchanged). Threads created afterwards inherit it. */
static int nice_down(int inc)
{
    if (inc <= 0) return INT32_MIN;
    pid_t tid = gettid();
    errno = 0;
    int old = getpriority(PRIO_PROCESS, (id_t)tid);
    if (old == -1 && errno) return INT32_MIN;
    if (setpriority(PRIO_PROCESS, (id_t)tid, old + inc) < 0) {
        PD_LOGD("training worker: setpriority: %s", strerror(errno));
        return INT32_MIN;
    }
    return old;
}

static void nice_restore(int old)
{
    if (old == INT32_MIN) return;
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), old) < 0)
        PD_LOGD("training worker: cannot restore the pool thread's priority: %s",
                strerror(errno));
}

static double meta_num(const pd_prefix *pf, const char *key)
{
    const char *v = pd_prefix_meta_get(pf, key);
    if (!v) return NAN;
    char *end;
    double x = strtod(v, &end);
    return end != v ? x : NAN;
}

/* The job trained: publish, record, finish. */
static void job_succeeded(worker *w, const char *id, const char *task, pd_prefix *pf)
{
    pd_err err;
    if (pd_registry_put_prefix(w->p.reg, pf, &err) < 0) {
        char msg[700];
        snprintf(msg, sizeof msg, "the trained prefix could not be published: %s", err.msg);
        fail_job(w, id, "publish_failed", NULL, msg);
        remove_checkpoint(w, id);
        return;
    }
    double tl = meta_num(pf, "train_loss"), vl = meta_num(pf, "valid_loss"),
           bl = meta_num(pf, "base_valid_loss"), steps = meta_num(pf, "steps"),
           tokens = meta_num(pf, "trained_tokens");
    int64_t n_tokens = isfinite(tokens) && tokens >= 0 ? (int64_t)tokens : -1;
    if (pd_jobstore_job_set_result(w->p.js, id, task, n_tokens, &err) < 0) {
        store_failed(w, "recording a job's result", &err);
        return;
    }
    json_t *data = json_object();
    if (data) {
        json_object_set_new(data, "step", isfinite(steps) ? json_integer((json_int_t)steps)
                                                          : json_null());
        json_object_set_new(data, "train_loss", num(tl));
        json_object_set_new(data, "valid_loss", num(vl));
        json_object_set_new(data, "base_valid_loss", num(bl));
        json_object_set_new(data, "trained_tokens", n_tokens >= 0 ? json_integer(n_tokens)
                                                                  : json_null());
        double best = meta_num(pf, "best_step");
        if (isfinite(best)) json_object_set_new(data, "best_step", json_integer((json_int_t)best));
        json_object_set_new(data, "final", json_true());
    }
    const char *early = pd_prefix_meta_get(pf, "stopped_early");
    if (early && !strcmp(early, "true"))
        event(w, id, "info", "message", NULL,
              "Stopped early at step %.0f: the validation loss had not improved for "
              "early_stopping_patience validations; the result is the best validated prefix "
              "(step %.0f, validation loss %.4f)", steps, meta_num(pf, "best_step"), vl);
    char vbuf[96] = "";
    if (isfinite(vl))
        snprintf(vbuf, sizeof vbuf, ", validation loss=%.4f (base model %.4f)", vl, bl);
    event(w, id, "info", "metrics", data, "Final: training loss=%.4f%s", tl, vbuf);
    event(w, id, "info", "message", NULL, "New fine-tuned model created: %s", task);
    write_results(w, id);
    /* the checkpoint goes first: a job seen succeeded has none left, and a
     * crash in between only reruns the job (same seed: the same prefix) */
    remove_checkpoint(w, id);
    if (set_status(w, id, PD_JOB_SUCCEEDED, NULL, NULL, NULL) == PD_OK) {
        event(w, id, "info", "message", NULL, "The job has successfully completed");
        count_outcome(w, PD_JOB_SUCCEEDED);
        PD_LOGI("training worker: job %s succeeded: task '%s' is servable", id, task);
    }
}

static void run_job(worker *w, const char *id, pd_job_status status)
{
    pd_err err;
    json_t *params;
    int rc = pd_jobstore_job_params(w->p.js, id, &params, &err);
    if (rc == PD_ENOTFOUND) return;
    if (rc < 0) {
        store_failed(w, "reading a job's request", &err);
        return;
    }
    pd_train_params tp;
    char train_path[4096], valid_path[4096], ckpt[4096];
    const char *init_from;
    pd_prefix *init = NULL;
    if (worker_train_params(params, id, &tp, &init_from, &err) < 0) {
        fail_job(w, id, "invalid_hyperparameters", NULL, err.msg);
        goto out;
    }
    const json_t *train = json_object_get(params, "training_file");
    const json_t *valid = json_object_get(params, "validation_file");
    if ((rc = pd_jobstore_file_path(w->p.js, json_string_value(train), train_path,
                                    sizeof train_path, &err)) < 0 ||
        (json_is_string(valid) &&
         (rc = pd_jobstore_file_path(w->p.js, json_string_value(valid), valid_path,
                                     sizeof valid_path, &err)) < 0)) {
        if (rc == PD_ENOTFOUND)
            fail_job(w, id, "invalid_training_file", NULL, err.msg);
        else
            store_failed(w, "finding a job's files", &err);
        goto out;
    }
    if ((rc = pd_jobstore_checkpoint_path(w->p.js, id, ckpt, sizeof ckpt, &err)) < 0) {
        store_failed(w, "naming a checkpoint", &err);
        goto out;
    }
    tp.train_path = train_path;
    tp.valid_path = json_is_string(valid) ? valid_path : NULL;
    tp.checkpoint_path = ckpt;
    tp.checkpoint_every = w->p.checkpoint_every;
    if (tp.eval_every < 0) tp.eval_every = w->p.eval_every;
    tp.n_threads = w->p.train_threads;
    if (init_from) { /* a file of purpose "prefix", or a task of the registry */
        char path[4096];
        rc = strncmp(init_from, "file-", 5)
                 ? pd_registry_acquire(w->p.reg, init_from, &init, &err)
                 : pd_jobstore_file_path(w->p.js, init_from, path, sizeof path, &err);
        if (rc == PD_OK && !init) rc = pd_prefix_load(path, w->p.model, &init, &err);
        if (rc < 0) {
            char msg[700];
            snprintf(msg, sizeof msg, "init_from %s cannot be loaded: %s", init_from, err.msg);
            fail_job(w, id, "invalid_init_from", "init_from", msg);
            goto out;
        }
        tp.init_prefix = init;
    }

    int requested = 0;
    if ((rc = pd_jobstore_job_cancel_requested(w->p.js, id, &requested, &err)) < 0) {
        store_failed(w, "reading a job", &err);
        goto out;
    }
    if (requested) { /* asked while it was not training (e.g. before a crash) */
        if (set_status(w, id, PD_JOB_CANCELLED, NULL, NULL, NULL) == PD_OK) {
            event(w, id, "info", "message", NULL, "Fine-tuning job cancelled");
            count_outcome(w, PD_JOB_CANCELLED);
            remove_checkpoint(w, id);
        }
        goto out;
    }
    if (status == PD_JOB_QUEUED) {
        if (set_status(w, id, PD_JOB_RUNNING, NULL, NULL, NULL) < 0) goto out;
        event(w, id, "info", "message", NULL, "Fine-tuning job started: task '%s'", tp.task);
    } else {
        event(w, id, "info", "message", NULL,
              "Fine-tuning job restarted after an interruption: task '%s'", tp.task);
    }
    PD_LOGI("training worker: job %s: training task '%s'", id, tp.task);

    pthread_mutex_lock(&w->mu);
    snprintf(w->current, sizeof w->current, "%s", id);
    w->st.active = 1;
    w->st.step = 0;
    w->st.total_steps = 0;
    pthread_mutex_unlock(&w->mu);
    if (!atomic_load(&w->stopping)) atomic_store(&w->cancel, 0);

    job_ctx ctx = {.w = w, .id = id, .task = tp.task, .last_cancel_poll = pd_now(),
                   .t_start = pd_now(), .step_start = -1};
    pd_train_hooks hooks = {.on_progress = on_progress, .yield = on_yield, .on_eval = on_eval,
                            .user_data = &ctx, .cancel = &w->cancel};
    pd_prefix *pf = NULL;
    int old_nice = nice_down(w->p.nice);
    rc = pd_train_run(w->p.model, &tp, &hooks, &pf, &err);
    nice_restore(old_nice);

    pthread_mutex_lock(&w->mu);
    w->current[0] = 0;
    w->st.active = 0; /* the job's gauges end with it, whatever its outcome */
    w->st.step = 0;
    w->st.total_steps = 0;
    w->st.tokens_per_second = 0.0;
    pthread_mutex_unlock(&w->mu);

    if (ctx.lost) { /* another replica runs it now: its outcome is theirs */
        pd_prefix_release(pf);
        PD_LOGW("training worker: job %s left to the replica that took it over", id);
    } else if (rc == PD_OK) {
        job_succeeded(w, id, tp.task, pf);
        pd_prefix_release(pf);
    } else if (rc == PD_ECANCELLED) {
        requested = 0;
        if (pd_jobstore_job_cancel_requested(w->p.js, id, &requested, &err) < 0) {
            store_failed(w, "reading a job", &err);
        } else if (requested) {
            write_results(w, id);
            if (set_status(w, id, PD_JOB_CANCELLED, NULL, NULL, NULL) == PD_OK) {
                event(w, id, "info", "message", NULL, "Fine-tuning job cancelled");
                count_outcome(w, PD_JOB_CANCELLED);
                remove_checkpoint(w, id);
                PD_LOGI("training worker: job %s cancelled", id);
            }
        } else { /* shutdown: stays running, resumes at the next start */
            event(w, id, "info", "message", NULL,
                  "Training paused by a server shutdown; it resumes from its last "
                  "checkpoint when the server starts again");
            PD_LOGI("training worker: job %s paused by the shutdown", id);
            if (pd_jobstore_job_release_lease(w->p.js, id, &err) < 0) /* resumable at once */
                PD_LOGW("training worker: job %s: %s", id, err.msg);
        }
    } else {
        char msg[1400], tmp[1400];
        worker_data_message(err.msg, train_path, json_string_value(train), tmp, sizeof tmp);
        if (json_is_string(valid))
            worker_data_message(tmp, valid_path, json_string_value(valid), msg, sizeof msg);
        else
            snprintf(msg, sizeof msg, "%s", tmp);
        int data_error = rc == PD_EFORMAT || rc == PD_ERANGE;
        write_results(w, id);
        fail_job(w, id, data_error ? "invalid_training_file" : "training_failed", NULL, msg);
        remove_checkpoint(w, id);
    }
out:
    pd_prefix_release(init);
    json_decref(params);
}

/* ---- the lanes' work (libuv pool threads) ----------------------------------------- */

/* Queues the ids of every job in validating_files, oldest first. */
static void scan_validating(worker *w)
{
    pd_err err;
    char after[PD_JOBSTORE_ID_MAX] = "";
    json_t *found = json_array();
    if (!found) {
        PD_LOGE("training worker: scanning jobs: out of memory");
        atomic_store(&w->failed, 1);
        return;
    }
    for (;;) {
        json_t *page;
        if (pd_jobstore_job_list(w->p.js, after[0] ? after : NULL, PD_JOBSTORE_LIST_MAX, &page,
                                 &err) < 0) {
            json_decref(found);
            store_failed(w, "scanning jobs", &err);
            return;
        }
        json_t *data = json_object_get(page, "data"), *job;
        size_t i;
        json_array_foreach(data, i, job) {
            const char *st = json_string_value(json_object_get(job, "status"));
            const char *id = json_string_value(json_object_get(job, "id"));
            if (id) snprintf(after, sizeof after, "%s", id);
            if (st && id && !strcmp(st, "validating_files"))
                json_array_insert_new(found, 0, json_string(id)); /* oldest first */
        }
        int more = json_is_true(json_object_get(page, "has_more")) && json_array_size(data) > 0;
        json_decref(page);
        if (!more) break;
    }
    pthread_mutex_lock(&w->mu);
    size_t i;
    json_t *id;
    json_array_foreach(found, i, id) {
        int dup = 0;
        for (int k = 0; k < w->n_pending; k++)
            dup |= !strcmp(w->pending[k], json_string_value(id));
        if (dup) continue;
        if (w->n_pending == w->cap_pending) {
            int cap = w->cap_pending ? 2 * w->cap_pending : 16;
            job_id *p = realloc(w->pending, (size_t)cap * sizeof *p);
            if (!p) break; /* the rest waits for the next scan */
            w->pending = p;
            w->cap_pending = cap;
        }
        snprintf(w->pending[w->n_pending++], sizeof(job_id), "%s", json_string_value(id));
    }
    w->rescan = 0;
    pthread_mutex_unlock(&w->mu);
    json_decref(found);
}

/* Pops the oldest pending validation into id; 0 when there is none. */
static int pop_pending(worker *w, job_id id)
{
    pthread_mutex_lock(&w->mu);
    int n = w->n_pending;
    if (n) {
        memcpy(id, w->pending[0], sizeof(job_id));
        memmove(w->pending, w->pending + 1, (size_t)(n - 1) * sizeof *w->pending);
        w->n_pending--;
    }
    pthread_mutex_unlock(&w->mu);
    return n > 0;
}

/* The validation lane: every pending job's files. */
static void validate_all(worker *w)
{
    while (!atomic_load(&w->stopping) && !atomic_load(&w->failed)) {
        pthread_mutex_lock(&w->mu);
        int rescan = w->rescan;
        pthread_mutex_unlock(&w->mu);
        if (rescan) {
            scan_validating(w);
            continue;
        }
        job_id id;
        if (!pop_pending(w, id)) break;
        validate_job(w, id);
    }
}

/* The training lane: runnable jobs, oldest first, one at a time. */
static void train_all(worker *w)
{
    job_id prev = "";
    if (w->p.training_jobs <= 0) return; /* a replica that only serves */
    while (!atomic_load(&w->stopping) && !atomic_load(&w->failed)) {
        job_id id;
        pd_err err;
        pd_job_status status;
        int rc = pd_jobstore_job_next_runnable(w->p.js, id, &status, &err);
        if (rc == PD_ENOTFOUND) break;
        if (rc < 0) {
            store_failed(w, "looking for the next job", &err);
            break;
        }
        if (!strcmp(id, prev)) { /* it did not move on: never spin on one job */
            PD_LOGE("training worker: job %s is still %s after a run", id,
                    pd_job_status_name(status));
            atomic_store(&w->failed, 1);
            break;
        }
        memcpy(prev, id, sizeof prev);
        run_job(w, id, status);
    }
}

static void lane_work(uv_work_t *req)
{
    lane *l = req->data;
    l->run(l->w);
}

/* ---- the loop side ---------------------------------------------------------------- */

static void lane_done(uv_work_t *req, int status);

/* Hands the lane's work to the pool unless it is in flight (then lane_done
 * dispatches it again). */
static void dispatch(lane *l)
{
    if (atomic_load(&l->w->stopping)) return;
    if (l->busy) {
        l->again = 1;
        return;
    }
    l->again = 0;
    l->work.data = l;
    int rc = uv_queue_work(l->w->loop, &l->work, lane_work, lane_done);
    if (rc != 0) {
        PD_LOGE("training worker: uv_queue_work: %s", uv_strerror(rc));
        return; /* the timer tries again */
    }
    l->busy = 1;
}

static void dispatch_all(worker *w)
{
    dispatch(&w->validate);
    dispatch(&w->train);
}

static void on_wake(uv_async_t *a) { dispatch_all(a->data); }
static void on_timer(uv_timer_t *t)
{
    worker *w = t->data;
    if (pd_jobstore_shared(w->p.js)) { /* jobs other replicas took and did not validate */
        pthread_mutex_lock(&w->mu);
        w->rescan = 1;
        pthread_mutex_unlock(&w->mu);
    }
    dispatch_all(w);
}

static void lane_done(uv_work_t *req, int status)
{
    lane *l = req->data;
    worker *w = l->w;
    l->busy = 0;
    if (status != 0) PD_LOGW("training worker: work did not run: %s", uv_strerror(status));
    pthread_mutex_lock(&w->mu);
    int watching = w->watching;
    pthread_mutex_unlock(&w->mu);
    if (!watching || atomic_load(&w->stopping)) return;
    if (atomic_exchange(&w->failed, 0)) {
        w->retry_ms = w->retry_ms ? w->retry_ms * 2 : RETRY_MIN_MS;
        if (w->retry_ms > RETRY_MAX_MS) w->retry_ms = RETRY_MAX_MS;
        PD_LOGW("training worker: job store failure: retrying in %d ms", w->retry_ms);
        uv_timer_start(&w->timer, on_timer, (uint64_t)w->retry_ms, (uint64_t)w->p.poll_ms);
        return;
    }
    w->retry_ms = 0;
    if (l->again) dispatch(l);
    if (l == &w->validate) dispatch(&w->train); /* it may have queued a job */
}

/* ---- public ------------------------------------------------------------------------- */

int worker_create(const worker_params *p, worker **out, pd_err *err)
{
    PD_ASSERT(p && p->js && p->model && p->reg && out);
    *out = NULL;
    worker *w = calloc(1, sizeof *w);
    if (!w) return pd_err_set(err, PD_ENOMEM, "out of memory");
    w->p = *p;
    if (w->p.metrics_every < 1) w->p.metrics_every = 1;
    if (w->p.poll_ms <= 0) w->p.poll_ms = POLL_MS;
    if (w->p.lease_s <= 0) w->p.lease_s = PD_JOBSTORE_LEASE_DEFAULT_S;
    int rc = pthread_mutex_init(&w->mu, NULL);
    if (rc != 0) {
        free(w);
        return pd_err_set(err, PD_ESYS, "pthread_mutex_init: %s", strerror(rc));
    }
    w->rescan = 1; /* jobs left validating by a previous run */
    w->validate = (lane){.w = w, .run = validate_all};
    w->train = (lane){.w = w, .run = train_all};
    atomic_init(&w->cancel, 0);
    atomic_init(&w->stopping, 0);
    atomic_init(&w->failed, 0);
    *out = w;
    return PD_OK;
}

int worker_watch(worker *w, void *uv_loop, pd_err *err)
{
    w->loop = uv_loop;
    w->wake.data = w;
    w->timer.data = w;
    int rc = uv_async_init(w->loop, &w->wake, on_wake);
    if (rc != 0) return pd_err_set(err, PD_ESYS, "uv_async_init: %s", uv_strerror(rc));
    if ((rc = uv_timer_init(w->loop, &w->timer)) != 0) {
        uv_close((uv_handle_t *)&w->wake, NULL);
        return pd_err_set(err, PD_ESYS, "uv_timer_init: %s", uv_strerror(rc));
    }
    /* the safety-net poll; the first look comes with worker_kick() */
    if ((rc = uv_timer_start(&w->timer, on_timer, (uint64_t)w->p.poll_ms,
                             (uint64_t)w->p.poll_ms)) != 0) {
        uv_close((uv_handle_t *)&w->wake, NULL);
        uv_close((uv_handle_t *)&w->timer, NULL);
        return pd_err_set(err, PD_ESYS, "uv_timer_start: %s", uv_strerror(rc));
    }
    pthread_mutex_lock(&w->mu);
    w->watching = 1;
    pthread_mutex_unlock(&w->mu);
    return PD_OK;
}

void worker_unwatch(worker *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    int watching = w->watching;
    w->watching = 0;
    pthread_mutex_unlock(&w->mu);
    if (!watching) return;
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, NULL);
    uv_close((uv_handle_t *)&w->wake, NULL);
}

void worker_kick(worker *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    if (w->watching) uv_async_send(&w->wake);
    pthread_mutex_unlock(&w->mu);
}

void worker_submitted(worker *w, const char *id)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    if (w->n_pending == w->cap_pending) {
        int cap = w->cap_pending ? 2 * w->cap_pending : 16;
        job_id *p = realloc(w->pending, (size_t)cap * sizeof *p);
        if (p) {
            w->pending = p;
            w->cap_pending = cap;
        }
    }
    if (w->n_pending < w->cap_pending)
        snprintf(w->pending[w->n_pending++], sizeof(job_id), "%s", id);
    else
        w->rescan = 1; /* out of memory: the next scan finds it in the store */
    if (w->watching) uv_async_send(&w->wake);
    pthread_mutex_unlock(&w->mu);
}

void worker_cancel(worker *w, const char *id)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    if (w->current[0] && !strcmp(w->current, id)) atomic_store(&w->cancel, 1);
    pthread_mutex_unlock(&w->mu);
}

void worker_stop(worker *w)
{
    if (!w) return;
    atomic_store(&w->stopping, 1);
    atomic_store(&w->cancel, 1);
}

void worker_free(worker *w)
{
    if (!w) return;
    PD_ASSERT(!w->watching && !w->validate.busy && !w->train.busy);
    pthread_mutex_destroy(&w->mu);
    free(w->pending);
    free(w);
}

void worker_stats_get(worker *w, worker_stats *out)
{
    pthread_mutex_lock(&w->mu);
    *out = w->st;
    pthread_mutex_unlock(&w->mu);
}
