/* prefixd/jobstore.h — the durable store behind the fine-tuning API: uploaded
 * files, fine-tuning jobs and their events (ARCHITECTURE.md "Training",
 * "HTTP API"), in OpenAI's shapes.
 *
 *     pd_jobstore *js; pd_err err;
 *     if (pd_jobstore_open("/var/lib/prefixd", &js, &err) < 0) ... err.msg ...
 *     pd_jobstore_file_info fi;
 *     pd_jobstore_file_create(js, "train.jsonl", "fine-tune", data, n, &fi, &err);
 *     json_t *params = json_pack("{s:s, s:s, s:s}", "model", "base",
 *                                "training_file", fi.id, "suffix", "pirate");
 *     char job[PD_JOBSTORE_ID_MAX];
 *     pd_jobstore_job_create(js, params, job, NULL, &err);
 *     json_decref(params);
 *     pd_jobstore_job_set_status(js, job, PD_JOB_QUEUED, NULL, &err);
 *     ... the worker: pd_jobstore_job_next_runnable(), _set_status(RUNNING),
 *         _event_add() per step, _job_set_result(), _set_status(SUCCEEDED) ...
 *     pd_jobstore_close(js);
 *
 * DESIGN. Rows live in SQLite at <data_dir>/prefixd.db (WAL journal,
 * synchronous=FULL, foreign keys on, a busy timeout): once a function that
 * writes has returned PD_OK, its change survives a crash of the process or
 * of the machine. The schema is versioned with PRAGMA user_version and
 * migrated forward at open; a database newer than this code is refused.
 * File contents live at <data_dir>/files/<file-id>.jsonl. An upload writes
 * its contents atomically (temp file, fsync, rename) before it inserts the
 * row, so a row never exists without its contents; a crash between the two
 * leaves an orphan file, which the next open deletes (with any temp files).
 * A delete removes the row first and the contents second, for the same
 * reason. Checkpoints are <data_dir>/checkpoints/<job-id>.ckpt; the store
 * only names them (and removes none).
 *
 * BACKENDS. The above is the SQLite backend, the default for one machine.
 * pd_jobstore_open_db() with a postgres:// URL keeps the rows in
 * PostgreSQL instead, for several processes ("replicas") sharing one
 * fine-tuning service: the same API and JSON, the data directory shared by
 * all of them (file contents and checkpoints stay files there: the rows are
 * their only index), jobs claimed with leases (see LEASES below). There a
 * crash between writing contents and inserting the row leaves an orphan
 * file that nothing removes (open cannot tell it from another replica's
 * upload in flight); it is never listed or served.
 *
 * One process at a time (SQLite): open takes an exclusive lock on
 * <data_dir>/prefixd.lock (PD_EBUSY if another process holds it), which is
 * what makes the orphan cleanup safe. Within the process every function is
 * thread-safe: one connection guarded by one mutex (HTTP threads and the
 * training worker share a handle). Writes of file contents happen outside
 * the mutex.
 *
 * Ids are generated from getrandom(): "file-" and "ftjob-" followed by 24
 * lowercase hex digits. Event ids are "ftevent-" and 16 hex digits of a
 * counter, so they increase with time (lexicographically too). An id only
 * becomes a path after the store has found it among its own rows.
 *
 * JSON. Objects returned through json_t ** are new references owned by the
 * caller (json_decref them); json_t * arguments are borrowed. Times are unix
 * seconds. Errors: PD_EINVAL for bad arguments (the message starts with the
 * offending parameter's name and ": " where there is one, so the HTTP layer
 * can fill OpenAI's "param"), PD_ENOTFOUND for unknown ids, PD_EBUSY for a
 * conflict (HTTP 409; on PostgreSQL also a status another replica changed
 * first), PD_EIO for database and file-system failures (message carries
 * the database's message or strerror), PD_EUNAVAIL when the PostgreSQL
 * server cannot be reached (HTTP 503), PD_EFORMAT for a file that is not a
 * database, PD_EVERSION for a schema newer than this code.
 */
#ifndef PREFIXD_JOBSTORE_H
#define PREFIXD_JOBSTORE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Room for any id the store makes ("ftevent-" + 16, "ftjob-" + 24) and NUL. */
#define PD_JOBSTORE_ID_MAX 40
/* The schema version this code writes (PRAGMA user_version). */
#define PD_JOBSTORE_SCHEMA_VERSION 2
/* Page sizes of the list functions: limit 0 means the default; a limit
 * outside [1, PD_JOBSTORE_LIST_MAX] is PD_EINVAL. */
#define PD_JOBSTORE_JOBS_DEFAULT_LIMIT 20
#define PD_JOBSTORE_EVENTS_DEFAULT_LIMIT 20
#define PD_JOBSTORE_FILES_DEFAULT_LIMIT 10000
#define PD_JOBSTORE_CHECKPOINTS_DEFAULT_LIMIT 10
#define PD_JOBSTORE_LIST_MAX 10000

typedef struct pd_jobstore pd_jobstore;

/* ---- lifecycle ---- */

/* Opens (creating them if missing) data_dir, its files/ and checkpoints/
 * subdirectories and <data_dir>/prefixd.db; migrates the schema; recovers
 * from a crash: deletes orphan and temp files in files/ and turns every
 * unfinished job with a cancel request into cancelled (no worker runs yet,
 * so nothing else would). Queued and running jobs are left for the worker (see
 * pd_jobstore_job_next_runnable). data_dir is copied. Returns PD_OK and a new
 * handle in *out, or PD_EBUSY (another process has it open), PD_EFORMAT,
 * PD_EVERSION, PD_EIO, PD_ENOMEM. */
int pd_jobstore_open(const char *data_dir, pd_jobstore **out, pd_err *err);

/* Opens the store with its rows in `database`: NULL or "" is SQLite under
 * data_dir (pd_jobstore_open); a "postgres://" or "postgresql://" URL (a
 * libpq connection URI) is PostgreSQL, shared by any number of processes
 * ("replicas"): then data_dir must be the same shared directory for all of
 * them (file contents in files/, checkpoints in checkpoints/; the rows are
 * their only index), no process lock is taken and no orphan is cleaned.
 * The PostgreSQL schema is created or migrated at open (table
 * schema_version; replicas starting together migrate once, under an
 * advisory lock); every write commits with synchronous_commit on.
 * PD_EUNAVAIL when the database cannot be reached (connect timeout 5 s);
 * PD_EINVAL for another kind of database string. Afterwards, a call that
 * finds the database gone reconnects first and fails with PD_EUNAVAIL if
 * it still cannot (the HTTP layer answers 503). */
int pd_jobstore_open_db(const char *data_dir, const char *database, pd_jobstore **out,
                        pd_err *err);

/* Copies every row of the SQLite store in from_dir (files, jobs, events,
 * checkpoints, with their ids, times and order) into the PostgreSQL
 * database to_url, in one transaction; *rows counts them. The database
 * must hold no files or jobs yet (PD_EEXIST); from_dir is locked meanwhile
 * (PD_EBUSY while a server uses it). File contents and checkpoints are not
 * copied: they stay in from_dir/files and from_dir/checkpoints, which
 * become (or are copied into) the replicas' shared data directory. */
int pd_jobstore_migrate(const char *from_dir, const char *to_url, int64_t *rows, pd_err *err);

/* 1 if s names a PostgreSQL database (postgres:// or postgresql://). */
int pd_jobstore_is_url(const char *s);

/* 1 when the store is shared by several processes (PostgreSQL). */
int pd_jobstore_shared(const pd_jobstore *js);

/* Closes the database and releases the lock (PostgreSQL: and every lease
 * this process holds, so another replica may resume its jobs at once). No call may be in flight on
 * another thread. pd_jobstore_close(NULL) is a no-op. */
void pd_jobstore_close(pd_jobstore *js);

/* The data directory (borrowed, valid until close). */
const char *pd_jobstore_data_dir(const pd_jobstore *js);

/* ---- files: POST/GET/DELETE /v1/files ---- */

typedef struct pd_jobstore_file_info {
    char id[PD_JOBSTORE_ID_MAX];
    int64_t bytes;
    int64_t created_at;
    int64_t n_lines;   /* lines holding something other than white space */
} pd_jobstore_file_info;

/* Stores an uploaded file the caller has already validated (its status is
 * "processed"). filename (1..255 bytes, metadata only, never a path) and
 * purpose (1..64 bytes, e.g. "fine-tune") are copied; data (size bytes, may
 * be NULL when size is 0) is borrowed. The contents reach the disk (fsync)
 * before the row is committed. Fills *info (may be NULL); when obj is not
 * NULL, *obj is a new reference to the file object as pd_jobstore_file_get
 * returns it. PD_EINVAL for a bad filename or purpose (nothing is stored);
 * PD_EIO when the contents cannot be written. */
int pd_jobstore_file_create(pd_jobstore *js, const char *filename, const char *purpose,
                            const void *data, size_t size, pd_jobstore_file_info *info,
                            json_t **obj, pd_err *err);

/* The OpenAI file object {id, object: "file", bytes, created_at, filename,
 * purpose, status} as a new reference. PD_ENOTFOUND for an unknown id. */
int pd_jobstore_file_get(pd_jobstore *js, const char *id, json_t **out, pd_err *err);

/* Size, time and line count of a stored file. PD_ENOTFOUND if unknown. */
int pd_jobstore_file_stat(pd_jobstore *js, const char *id, pd_jobstore_file_info *info,
                          pd_err *err);

/* {object: "list", data: [file objects], has_more}, most recent first.
 * purpose (NULL: any) filters; after (NULL: from the start) is the id of
 * the last file of the previous page (PD_ENOTFOUND if unknown); limit 0 is
 * PD_JOBSTORE_FILES_DEFAULT_LIMIT. New reference in *out. */
int pd_jobstore_file_list(pd_jobstore *js, const char *purpose, const char *after, int limit,
                          json_t **out, pd_err *err);

/* Deletes the row, then the contents. Refused with PD_EBUSY while a job
 * that has not finished (validating_files, queued, running) names the file
 * as its training or validation file: the worker still needs it. (OpenAI
 * allows it; a finished job keeps the id in its object.) When obj is not
 * NULL, *obj is a new reference to {id, object: "file", deleted: true}.
 * PD_ENOTFOUND if unknown. */
int pd_jobstore_file_delete(pd_jobstore *js, const char *id, json_t **obj, pd_err *err);

/* Writes "<data_dir>/files/<id>.jsonl" into buf (cap bytes) for a file the
 * store knows. PD_ENOTFOUND if unknown, PD_ERANGE if cap is too small. */
int pd_jobstore_file_path(pd_jobstore *js, const char *id, char *buf, size_t cap,
                          pd_err *err);

/* ---- jobs: /v1/fine_tuning/jobs ---- */

/* Status flow, enforced by pd_jobstore_job_set_status:
 *   validating_files -> queued | failed | cancelled
 *   queued           -> running | failed | cancelled
 *   running          -> succeeded | failed | cancelled | queued (requeue)
 *   succeeded, failed, cancelled: final.
 * A job left running by a crash stays running; next_runnable returns it and
 * the worker resumes it from its checkpoint without a transition. */
typedef enum pd_job_status {
    PD_JOB_VALIDATING_FILES = 0,
    PD_JOB_QUEUED,
    PD_JOB_RUNNING,
    PD_JOB_SUCCEEDED,
    PD_JOB_FAILED,
    PD_JOB_CANCELLED,
    PD_JOB_STATUS_COUNT
} pd_job_status;

/* OpenAI's name ("validating_files", ...): static text. */
const char *pd_job_status_name(pd_job_status s);
/* The status named name, or -1. */
int pd_job_status_parse(const char *name);
/* 1 for succeeded, failed and cancelled. */
int pd_job_status_final(pd_job_status s);

/* A job's error, OpenAI's {code, message, param}; fields may be NULL. */
typedef struct pd_jobstore_job_error {
    const char *code;     /* e.g. "invalid_training_file" */
    const char *message;
    const char *param;    /* e.g. "training_file" */
} pd_jobstore_job_error;

/* Creates a job in status validating_files from the request body params
 * (borrowed; only the keys below are read, unknown ones are ignored — the
 * HTTP layer rejects what it does not accept):
 *   model            string, required
 *   training_file    string, required: a stored file of purpose "fine-tune"
 *   validation_file  string or null: the same
 *   suffix           string or null: a task name (pd_task_name_valid)
 *   seed             integer or null: null draws one, stored so that a resumed
 *                    run repeats the same sequence
 *   hyperparameters  object or null, stored as given ({} when null)
 *   method           object or null, stored as given; null stores
 *                    {"type": "prefix", "prefix": {"hyperparameters": {}}}
 * The id is written to id (PD_JOBSTORE_ID_MAX bytes, may be NULL); when obj
 * is not NULL, *obj is a new reference to the job object. PD_EINVAL for a
 * wrong type or value, PD_ENOTFOUND for an unknown file (message starts
 * with the parameter name). */
int pd_jobstore_job_create(pd_jobstore *js, const json_t *params, char *id, json_t **obj,
                           pd_err *err);

/* The OpenAI job object as a new reference: {id, object: "fine_tuning.job",
 * created_at, finished_at, model, fine_tuned_model, organization_id:
 * "prefixd", status, training_file, validation_file, hyperparameters,
 * method, seed, trained_tokens, error, result_files (file ids, [] until
 * set), estimated_finish (unix seconds while running, else null),
 * user_provided_suffix}. Unset values are null (error too).
 * PD_ENOTFOUND for an unknown id. */
int pd_jobstore_job_get(pd_jobstore *js, const char *id, json_t **out, pd_err *err);

/* The stored request of a job, for the worker, as a new reference:
 * {model, training_file, validation_file, suffix, seed, hyperparameters,
 * method} with null for what was not given (seed always set). */
int pd_jobstore_job_params(pd_jobstore *js, const char *id, json_t **out, pd_err *err);

/* The status of a job and whether a cancel was requested (either pointer
 * may be NULL). PD_ENOTFOUND for an unknown id. */
int pd_jobstore_job_status(pd_jobstore *js, const char *id, pd_job_status *status,
                           int *cancel_requested, pd_err *err);

/* {object: "list", data: [job objects], has_more}, most recent first; after
 * (NULL: from the start) is the id of the last job of the previous page
 * (PD_ENOTFOUND if unknown); limit 0 is PD_JOBSTORE_JOBS_DEFAULT_LIMIT. */
int pd_jobstore_job_list(pd_jobstore *js, const char *after, int limit, json_t **out,
                         pd_err *err);

/* Moves a job to status, enforcing the flow above (PD_EINVAL "... cannot go
 * from X to Y" otherwise). Entering a final status sets finished_at. error
 * (borrowed, may be NULL) is stored with the transition (meant for failed).
 * A requeued job keeps its cancel request: the worker checks it when it
 * picks the job up again (and the next open cancels such a job). */
int pd_jobstore_job_set_status(pd_jobstore *js, const char *id, pd_job_status status,
                               const pd_jobstore_job_error *error, pd_err *err);

/* Records the trained task and token count: fine_tuned_model (NULL leaves it
 * unchanged; otherwise a task name) and trained_tokens (< 0 leaves it
 * unchanged). Allowed in any status but final ones (PD_EINVAL then), so
 * the worker records them before its last transition. */
int pd_jobstore_job_set_result(pd_jobstore *js, const char *id, const char *fine_tuned_model,
                               int64_t trained_tokens, pd_err *err);

/* The job the worker should run next: the oldest (by creation) in status
 * queued or running; running ones were interrupted by a crash or are the
 * worker's own current job. Writes its id into id (PD_JOBSTORE_ID_MAX
 * bytes) and its status into *status (may be NULL). PD_ENOTFOUND (err
 * untouched) when there is none. */
int pd_jobstore_job_next_runnable(pd_jobstore *js, char *id, pd_job_status *status,
                                  pd_err *err);

/* LEASES (PostgreSQL). On a shared store pd_jobstore_job_next_runnable
 * also claims the job it returns: in one statement (SELECT ... FOR UPDATE
 * SKIP LOCKED) it picks the oldest queued or running job whose lease is
 * free, expired or already this process's, and sets lease_owner (host:pid:
 * random, fixed at open) and lease_until (now + the lease length). The
 * worker renews the lease while it trains; a process that dies stops
 * renewing, and when lease_until passes another process claims the job and
 * resumes it from its checkpoint. So a job runs in one process at a time
 * as long as the renewals come more often than the lease length. On SQLite
 * (one process) there is no lease: the functions below only check. */
#define PD_JOBSTORE_LEASE_DEFAULT_S 30

/* The lease length of future claims and renewals (>= 1 second). */
void pd_jobstore_set_lease_seconds(pd_jobstore *js, int seconds);

/* Extends this process's lease of job id and reads its cancel flag into
 * *cancel_requested (may be NULL). PD_EBUSY when the lease is not ours any
 * more (another process took the job over, or it left queued/running): the
 * caller must stop working on the job and write nothing more to it.
 * SQLite: pd_jobstore_job_status(). */
int pd_jobstore_job_renew_lease(pd_jobstore *js, const char *id, int *cancel_requested,
                                pd_err *err);

/* Gives up this process's lease of job id at once (a shutdown: another
 * replica may resume it without waiting for the lease to expire). A no-op
 * when the lease is not ours, and on SQLite. */
int pd_jobstore_job_release_lease(pd_jobstore *js, const char *id, pd_err *err);

/* POST .../cancel. validating_files or queued: cancelled at once (finished_at
 * set). running: cancel_requested is set and the status stays running; the
 * worker sees pd_jobstore_job_cancel_requested(), stops and sets cancelled.
 * Asking again while running is not an error. A finished job: PD_EINVAL
 * "already finished". When obj is not NULL, *obj is a new reference to the
 * job object after the change. */
int pd_jobstore_job_request_cancel(pd_jobstore *js, const char *id, json_t **obj,
                                   pd_err *err);

/* *requested = 1 if a cancel was requested for the job, else 0. */
int pd_jobstore_job_cancel_requested(pd_jobstore *js, const char *id, int *requested,
                                     pd_err *err);

/* Writes "<data_dir>/checkpoints/<id>.ckpt" into buf (cap bytes) for a job
 * the store knows. PD_ENOTFOUND if unknown, PD_ERANGE if cap is too small. */
int pd_jobstore_checkpoint_path(pd_jobstore *js, const char *id, char *buf, size_t cap,
                                pd_err *err);

/* Records when the running job is expected to finish (unix seconds; < 0:
 * unknown, null). Entering a final status clears it. PD_EINVAL once the job
 * is final, PD_ENOTFOUND for an unknown job. */
int pd_jobstore_job_set_estimated_finish(pd_jobstore *js, const char *id, int64_t when,
                                         pd_err *err);

/* Sets the job's result_files to file_ids (borrowed; an array of "file-..."
 * ids the caller stored first). Like set_result: before the final
 * transition (PD_EINVAL after it). */
int pd_jobstore_job_set_result_files(pd_jobstore *js, const char *id, const json_t *file_ids,
                                     pd_err *err);

/* ---- checkpoints: /v1/fine_tuning/jobs/{id}/checkpoints ---- */

/* Records a checkpoint of job_id: step (>= 0), model (the task name it is
 * servable as, pd_task_name_valid) and metrics (borrowed object, stored as
 * given). Ids are "ftckpt-" and 16 hex digits of a counter. Writes the id
 * into id (PD_JOBSTORE_ID_MAX bytes, may be NULL). Allowed in any status
 * (the worker records the last ones before the job's final transition). */
int pd_jobstore_checkpoint_add(pd_jobstore *js, const char *job_id, int step,
                               const char *model, const json_t *metrics, char *id,
                               pd_err *err);

/* Forgets checkpoint id of job_id (the worker keeps only the last few).
 * PD_ENOTFOUND if the job has no such checkpoint. */
int pd_jobstore_checkpoint_delete(pd_jobstore *js, const char *job_id, const char *id,
                                  pd_err *err);

/* {object: "list", data: [{object: "fine_tuning.job.checkpoint", id,
 * created_at, fine_tuned_model_checkpoint, step_number, metrics,
 * fine_tuning_job_id}], has_more}, most recent first; after/limit page as
 * in pd_jobstore_event_list (limit 0: PD_JOBSTORE_CHECKPOINTS_DEFAULT_LIMIT).
 * PD_ENOTFOUND for an unknown job or after ("after: ..."). */
int pd_jobstore_checkpoint_list(pd_jobstore *js, const char *job_id, const char *after,
                                int limit, json_t **out, pd_err *err);

/* ---- events: /v1/fine_tuning/jobs/{id}/events ---- */

/* Appends an event to a job: level "info" | "warn" | "error", type
 * "message" | "metrics", message (copied; NULL is ""), data (borrowed, may be NULL for
 * null; serialised as JSON). Writes the new id into id (PD_JOBSTORE_ID_MAX
 * bytes, may be NULL). Every call commits (one fsync): the worker should
 * add metrics events every few steps, not every microsecond. PD_ENOTFOUND
 * for an unknown job. */
int pd_jobstore_event_add(pd_jobstore *js, const char *job_id, const char *level,
                          const char *type, const char *message, const json_t *data,
                          char *id, pd_err *err);

/* {object: "list", data: [{object: "fine_tuning.job.event", id, created_at,
 * level, message, type, data}], has_more}, most recent first (as OpenAI).
 * after (NULL: from the newest) is the id of the last event of the previous
 * page: the page holds the events older than it. limit 0 is
 * PD_JOBSTORE_EVENTS_DEFAULT_LIMIT. PD_ENOTFOUND for an unknown job or an
 * after that is not one of its events. */
int pd_jobstore_event_list(pd_jobstore *js, const char *job_id, const char *after, int limit,
                           json_t **out, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_JOBSTORE_H */
