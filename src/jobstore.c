/* jobstore.c — the durable store of the fine-tuning API: files, jobs and
 * events in SQLite or PostgreSQL, file contents beside it (see
 * prefixd/jobstore.h).
 *
 * BACKENDS. Everything above "statement plumbing" is written once against
 * `qs`, a statement with ?N parameters that runs on either backend; the
 * same SQL serves both (PostgreSQL's copy has ?N spelt $N, made at open).
 * Only open/close, the schema (migrations vs pg_migrations), crash cleanup
 * (SQLite only: one process owns the directory) and the leases (PostgreSQL
 * only: JOB_CLAIM/RENEW/RELEASE) differ. On PostgreSQL each write is one
 * autocommitted statement with synchronous_commit on, so it is durable
 * when it returns, as on SQLite; a check that precedes a write (status
 * flow) is repeated in the write's WHERE clause, so a replica that lost a
 * race gets PD_EBUSY instead of a wrong transition.
 *
 * DESIGN. One SQLite connection per handle, opened without SQLite's own
 * mutex and guarded by `lock`; every prepared statement is cached in
 * js->stmt (prepared on first use, reset and unbound after each use) and
 * belongs to the connection, so it too is used only under `lock`. Every
 * write is one SQL statement in autocommit mode: with journal_mode=WAL and
 * synchronous=FULL it is in the WAL and fsync'ed when q_step()
 * returns, which is before the function that made it returns PD_OK. The
 * checks that precede a write (status flow, file existence, a file in use)
 * run under the same mutex, and the exclusive lock on <data_dir>/prefixd.lock
 * keeps any other process out, so check and write cannot interleave with
 * another writer. Only the schema migration needs a transaction.
 *
 * Ordering on disk: an upload fsyncs its contents (pd_write_file_atomic)
 * outside the mutex, then inserts the row; a delete removes the row, then
 * the contents. So every row has its contents, and a crash leaves at worst
 * a contents file without a row (or a temp file), which open deletes.
 *
 * Rows carry an INTEGER PRIMARY KEY AUTOINCREMENT `seq`: it orders lists
 * (created_at has one-second ties), serves as the cursor behind `after`, and
 * is the event id ("ftevent-%016llx"), which therefore only grows.
 */
#include "prefixd/jobstore.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "prefixd/fsutil.h"
#include "prefixd/log.h"
#include "prefixd/prefix.h"

#define DB_NAME "prefixd.db"
#define LOCK_NAME "prefixd.lock"
#define FILES_DIR "files"
#define CKPT_DIR "checkpoints"
#define FILE_EXT ".jsonl"
#define CKPT_EXT ".ckpt"
#define ID_HEX 24              /* random hex digits after "file-" / "ftjob-" */
#define EVENT_HEX 16           /* counter hex digits after "ftevent-" */
#define BUSY_TIMEOUT_MS 5000
#define FILENAME_MAX_BYTES 255
#define PURPOSE_MAX_BYTES 64
#define MODEL_MAX_BYTES 256
#define TEXT_MAX_BYTES 4096    /* event messages and error texts */

/* ---- schema ---- */

/* migrations[v] takes the schema from user_version v to v + 1. Append only. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE files ("
    "  seq        INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  id         TEXT NOT NULL UNIQUE,"
    "  filename   TEXT NOT NULL,"
    "  purpose    TEXT NOT NULL,"
    "  bytes      INTEGER NOT NULL,"
    "  n_lines    INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  status     TEXT NOT NULL"
    ");"
    "CREATE TABLE jobs ("
    "  seq              INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  id               TEXT NOT NULL UNIQUE,"
    "  created_at       INTEGER NOT NULL,"
    "  finished_at      INTEGER,"
    "  model            TEXT NOT NULL,"
    "  training_file    TEXT NOT NULL,"   /* no foreign key: a finished job */
    "  validation_file  TEXT,"            /* keeps the id of a deleted file */
    "  suffix           TEXT,"
    "  seed             INTEGER NOT NULL,"
    "  hyperparameters  TEXT NOT NULL,"   /* JSON */
    "  method           TEXT NOT NULL,"   /* JSON */
    "  status           TEXT NOT NULL CHECK (status IN ('validating_files', 'queued',"
    "                     'running', 'succeeded', 'failed', 'cancelled')),"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
    "  fine_tuned_model TEXT,"
    "  trained_tokens   INTEGER,"
    "  error_code       TEXT,"
    "  error_message    TEXT,"
    "  error_param      TEXT"
    ");"
    "CREATE INDEX jobs_by_status ON jobs (status, seq);"
    "CREATE INDEX jobs_by_training_file ON jobs (training_file);"
    "CREATE INDEX jobs_by_validation_file ON jobs (validation_file);"
    "CREATE TABLE events ("
    "  seq        INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  created_at INTEGER NOT NULL,"
    "  level      TEXT NOT NULL,"
    "  type       TEXT NOT NULL,"
    "  message    TEXT NOT NULL,"
    "  data       TEXT"                   /* JSON, NULL for null */
    ");"
    "CREATE INDEX events_by_job ON events (job_id, seq);",
    /* 1 -> 2: result files, the estimated finish, checkpoints */
    "ALTER TABLE jobs ADD COLUMN result_files TEXT;"     /* JSON array of file ids */
    "ALTER TABLE jobs ADD COLUMN estimated_finish INTEGER;"
    "CREATE TABLE checkpoints ("
    "  seq        INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  created_at INTEGER NOT NULL,"
    "  step       INTEGER NOT NULL,"
    "  model      TEXT NOT NULL,"
    "  metrics    TEXT NOT NULL"                /* JSON object */
    ");"
    "CREATE INDEX checkpoints_by_job ON checkpoints (job_id, seq);",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == PD_JOBSTORE_SCHEMA_VERSION,
               "one migration per schema version");

/* ---- statements ---- */

#define FILE_COLS "seq, id, filename, purpose, bytes, n_lines, created_at, status"
enum { F_SEQ, F_ID, F_FILENAME, F_PURPOSE, F_BYTES, F_LINES, F_CREATED, F_STATUS };

#define JOB_COLS                                                                    \
    "seq, id, created_at, finished_at, model, fine_tuned_model, status, "           \
    "training_file, validation_file, hyperparameters, method, seed, trained_tokens, " \
    "error_code, error_message, error_param, suffix, cancel_requested, result_files, " \
    "estimated_finish"
enum {
    J_SEQ, J_ID, J_CREATED, J_FINISHED, J_MODEL, J_FT_MODEL, J_STATUS, J_TRAIN,
    J_VALID, J_HYPER, J_METHOD, J_SEED, J_TOKENS, J_ERR_CODE, J_ERR_MSG, J_ERR_PARAM,
    J_SUFFIX, J_CANCEL, J_RESULTS, J_ETA
};

#define CKPT_COLS "seq, job_id, created_at, step, model, metrics"
enum { C_SEQ, C_JOB, C_CREATED, C_STEP, C_MODEL, C_METRICS };

#define EVENT_COLS "seq, created_at, level, type, message, data"
enum { E_SEQ, E_CREATED, E_LEVEL, E_TYPE, E_MESSAGE, E_DATA };

#define ACTIVE "('validating_files', 'queued', 'running')"
#define DB_NOW "extract(epoch FROM now())::bigint" /* PostgreSQL's clock, unix seconds */

/* X(name, sql): every statement the store runs after open. */
#define STATEMENTS(X)                                                                  \
    X(FILE_INSERT, "INSERT INTO files (id, filename, purpose, bytes, n_lines, created_at," \
                   " status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'processed')")            \
    X(FILE_GET, "SELECT " FILE_COLS " FROM files WHERE id = ?1")                       \
    X(FILE_LIST, "SELECT " FILE_COLS " FROM files WHERE seq < ?1"                      \
                 " AND (purpose = ?2 OR ?2 IS NULL) ORDER BY seq DESC LIMIT ?3")       \
    X(FILE_ALL, "SELECT id FROM files ORDER BY seq")                                   \
    X(FILE_USER, "SELECT id FROM jobs WHERE status IN " ACTIVE                         \
                 " AND (training_file = ?1 OR validation_file = ?1) ORDER BY seq LIMIT 1") \
    X(FILE_DELETE, "DELETE FROM files WHERE id = ?1")                                  \
    X(JOB_INSERT, "INSERT INTO jobs (id, created_at, model, training_file,"            \
                  " validation_file, suffix, seed, hyperparameters, method, status)"   \
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'validating_files')")  \
    X(JOB_GET, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1")                          \
    X(JOB_LIST, "SELECT " JOB_COLS " FROM jobs WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2") \
    X(JOB_SET_STATUS, "UPDATE jobs SET status = ?3,"                                   \
                      " finished_at = COALESCE(?4, finished_at),"                      \
                      " estimated_finish = CASE WHEN ?4 IS NULL THEN estimated_finish END," \
                      " error_code = CASE WHEN ?5 THEN ?6 ELSE error_code END,"        \
                      " error_message = CASE WHEN ?5 THEN ?7 ELSE error_message END,"  \
                      " error_param = CASE WHEN ?5 THEN ?8 ELSE error_param END"       \
                      " WHERE id = ?1 AND status = ?2")                                \
    X(JOB_SET_RESULT, "UPDATE jobs SET fine_tuned_model = COALESCE(?2, fine_tuned_model)," \
                      " trained_tokens = COALESCE(?3, trained_tokens) WHERE id = ?1")  \
    X(JOB_SET_ETA, "UPDATE jobs SET estimated_finish = ?2 WHERE id = ?1")             \
    X(JOB_SET_RESULTS, "UPDATE jobs SET result_files = ?2 WHERE id = ?1")              \
    X(JOB_CANCEL_FLAG, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")           \
    X(JOB_CANCEL_NOW, "UPDATE jobs SET status = 'cancelled', cancel_requested = 1,"    \
                      " finished_at = ?2, estimated_finish = NULL"                     \
                      " WHERE id = ?1 AND status = ?3")                                \
    X(JOB_NEXT, "SELECT id, status FROM jobs WHERE status IN ('queued', 'running')"    \
                " ORDER BY seq LIMIT 1")                                               \
    X(JOB_RECOVER, "UPDATE jobs SET status = 'cancelled', finished_at = ?1,"           \
                   " estimated_finish = NULL"                                     \
                   " WHERE cancel_requested = 1 AND status IN " ACTIVE)                \
    X(JOB_COUNT, "SELECT status, count(*) FROM jobs WHERE status IN ('queued', 'running')" \
                 " GROUP BY status")                                                   \
    X(EVENT_INSERT, "INSERT INTO events (job_id, created_at, level, type, message, data)" \
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6)")                                \
    X(EVENT_FIND, "SELECT 1 FROM events WHERE seq = ?1 AND job_id = ?2")               \
    X(EVENT_LIST, "SELECT " EVENT_COLS " FROM events WHERE job_id = ?1 AND seq < ?2"   \
                  " ORDER BY seq DESC LIMIT ?3")                                       \
    X(CKPT_INSERT, "INSERT INTO checkpoints (job_id, created_at, step, model, metrics)"  \
                   " VALUES (?1, ?2, ?3, ?4, ?5)")                                     \
    X(CKPT_FIND, "SELECT 1 FROM checkpoints WHERE seq = ?1 AND job_id = ?2")           \
    X(CKPT_DELETE, "DELETE FROM checkpoints WHERE seq = ?1 AND job_id = ?2")           \
    X(CKPT_LIST, "SELECT " CKPT_COLS " FROM checkpoints WHERE job_id = ?1 AND seq < ?2" \
                 " ORDER BY seq DESC LIMIT ?3")                                       \
    /* PostgreSQL only: the lease of a shared store (lease_until in unix seconds of \
     * the database's clock, so the replicas' clocks need not agree) */             \
    X(JOB_CLAIM, "UPDATE jobs SET lease_owner = ?1, lease_until = " DB_NOW " + ?2"     \
                 " WHERE id = (SELECT id FROM jobs WHERE status IN ('queued', 'running')" \
                 " AND (lease_owner IS NULL OR lease_owner = ?1 OR lease_until < " DB_NOW ")" \
                 " ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, status")  \
    X(JOB_RENEW, "UPDATE jobs SET lease_until = " DB_NOW " + ?3 WHERE id = ?1"          \
                 " AND lease_owner = ?2 AND status IN ('queued', 'running')"            \
                 " RETURNING cancel_requested")                                         \
    X(JOB_RELEASE, "UPDATE jobs SET lease_owner = NULL, lease_until = NULL"             \
                   " WHERE id = ?1 AND lease_owner = ?2")                               \
    X(JOB_RELEASE_ALL, "UPDATE jobs SET lease_owner = NULL, lease_until = NULL"         \
                       " WHERE lease_owner = ?1")

enum {
#define STMT_ENUM(name, sql) S_##name,
    STATEMENTS(STMT_ENUM)
#undef STMT_ENUM
    N_STMT
};

static const char *const stmt_sql[N_STMT] = {
#define STMT_SQL(name, sql) sql,
    STATEMENTS(STMT_SQL)
#undef STMT_SQL
};

#define Q_MAX_PARAMS 9

/* A statement of either backend (see "statement plumbing"). */
typedef struct qs {
    struct pd_jobstore *js;
    sqlite3_stmt *lite;                /* SQLite: prepared on first use */
    const char *pv[Q_MAX_PARAMS];      /* PostgreSQL: bound values, NULL: null */
    char num[Q_MAX_PARAMS][24];        /* PostgreSQL: numbers bound, as text */
    PGresult *res;                     /* PostgreSQL: the result being stepped */
    int row;                           /* PostgreSQL: the current row */
} qs;

/* Owned by whoever opened it; shared by all threads of the process. */
struct pd_jobstore {
    pthread_mutex_t lock;        /* guards db, pg and stmt */
    sqlite3 *db;                 /* the SQLite backend, or NULL */
    PGconn *pg;                  /* the PostgreSQL backend, or NULL */
    qs stmt[N_STMT];
    char *pg_sql[N_STMT];        /* PostgreSQL: stmt_sql with ?N turned into $N */
    int pg_nparams[N_STMT];
    int pg_changes;              /* rows the last PostgreSQL write changed */
    char pg_msg[256];            /* PostgreSQL's last error */
    char owner[96];              /* lease owner: host:pid:random */
    int lease_s;                 /* lease length, seconds */
    int lock_fd;                 /* holds flock(LOCK_EX) on <dir>/prefixd.lock */
    char *dir;                   /* the data directory */
    char *db_path;               /* <dir>/prefixd.db */
    char *files_dir;             /* <dir>/files */
    char *ckpt_dir;              /* <dir>/checkpoints */
};

/* ---- small helpers ---- */

/* Copies untrusted text s into buf for a one-line message: printable ASCII
 * as is, other bytes as \xNN, cut with "..." past 64 characters. */
static const char *show(char buf[96], const char *s)
{
    if (!s) return "(null)";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (o >= 64) {
            memcpy(buf + o, "...", 4);
            return buf;
        }
        if (*p >= 0x20 && *p < 0x7f) {
            buf[o++] = (char)*p;
        } else {
            snprintf(buf + o, 5, "\\x%02x", *p);
            o += 4;
        }
    }
    buf[o] = 0;
    return buf;
}

static char *join(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 2);
    if (!s) return NULL;
    memcpy(s, a, na);
    s[na] = '/';
    memcpy(s + na + 1, b, nb + 1);
    return s;
}

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

/* Fills buf with n random lowercase hex digits and a NUL. */
static int random_hex(char *buf, size_t n, pd_err *err)
{
    unsigned char bytes[32];
    size_t need = (n + 1) / 2, got = 0;
    PD_ASSERT(need <= sizeof bytes);
    while (got < need) {
        ssize_t r = getrandom(bytes + got, need - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return pd_err_set(err, PD_ESYS, "getrandom: %s", strerror(errno));
        }
        got += (size_t)r;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) buf[i] = hex[(bytes[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    buf[n] = 0;
    return PD_OK;
}

/* 1 if s is prefix followed by exactly n lowercase hex digits. */
static int id_ok(const char *s, const char *prefix, size_t n)
{
    if (!s) return 0;
    size_t np = strlen(prefix);
    if (strncmp(s, prefix, np) != 0 || strlen(s) != np + n) return 0;
    for (size_t i = np; i < np + n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int utf8_ok(const char *s)
{
    json_t *t = json_string(s); /* jansson refuses invalid UTF-8 */
    int ok = t != NULL;
    json_decref(t);
    return ok;
}

/* A text argument: non-empty (when required), at most max bytes, UTF-8. */
static int check_text(const char *name, const char *s, size_t max, int required, pd_err *err)
{
    if (!s) return required ? pd_err_set(err, PD_EINVAL, "%s: missing", name) : PD_OK;
    size_t n = strlen(s);
    if (required && n == 0) return pd_err_set(err, PD_EINVAL, "%s: empty", name);
    if (n > max) return pd_err_set(err, PD_EINVAL, "%s: %zu bytes, over %zu", name, n, max);
    if (!utf8_ok(s)) return pd_err_set(err, PD_EINVAL, "%s: not valid UTF-8", name);
    return PD_OK;
}

static int64_t count_lines(const unsigned char *p, size_t n)
{
    int64_t lines = 0;
    int content = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            lines += content;
            content = 0;
        } else if (!isspace(p[i])) {
            content = 1;
        }
    }
    return lines + content;
}

static int mkdir_p(const char *path, pd_err *err)
{
    char *copy = strdup(path);
    if (!copy) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
    for (char *p = copy + 1; ; p++) {
        if (*p != '/' && *p != 0) continue;
        char saved = *p;
        *p = 0;
        if (mkdir(copy, 0755) < 0 && errno != EEXIST) {
            int e = errno;
            pd_err_set(err, PD_EIO, "%s: cannot create directory: %s", copy, strerror(e));
            free(copy);
            return PD_EIO;
        }
        *p = saved;
        if (!saved) break;
    }
    free(copy);
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
        return pd_err_set(err, PD_EIO, "%s: not a directory", path);
    return PD_OK;
}

/* ---- statement plumbing (all under js->lock) ----
 *
 * The logic above the plumbing is written once for both backends against
 * `qs`, a statement that binds parameters ?1..?N, steps through its rows and
 * reads columns. On SQLite it wraps a cached sqlite3_stmt. On PostgreSQL
 * it keeps the bound values (borrowed text, or numbers formatted into
 * `num`) and runs the statement's $N form with PQexecParams on the first
 * step, then walks the result's rows; done() frees the result. Step codes
 * are SQLite's (SQLITE_ROW, SQLITE_DONE, or an error code) on both. */

static int db_status(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_NOMEM: return PD_ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return PD_EBUSY;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return PD_EFORMAT;
    default: return PD_EIO;
    }
}

/* Reports the connection's last error (read before any reset). On
 * PostgreSQL a connection that is down is PD_EUNAVAIL (HTTP 503): the
 * next call reconnects. */
static int db_fail(pd_jobstore *js, int rc, const char *what, pd_err *err)
{
    if (js->pg) {
        int down = PQstatus(js->pg) != CONNECTION_OK;
        return pd_err_set(err, down ? PD_EUNAVAIL : PD_EIO, "%s: %s: %s%s", js->db_path, what,
                          down ? "database unreachable: " : "", js->pg_msg);
    }
    return pd_err_set(err, db_status(rc), "%s: %s: %s", js->db_path, what,
                      sqlite3_errmsg(js->db));
}

/* The cached statement id in *out, prepared on first use (SQLite). */
static int prep(pd_jobstore *js, int id, qs **out, pd_err *err)
{
    qs *s = &js->stmt[id];
    *out = s;
    if (js->pg || s->lite) return PD_OK;
    int rc = sqlite3_prepare_v3(js->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &s->lite,
                                NULL);
    if (rc != SQLITE_OK) {
        s->lite = NULL;
        *out = NULL;
        return db_fail(js, rc, "prepare", err);
    }
    return PD_OK;
}

/* Readies a used statement for its next use. */
static void done(qs *s)
{
    if (s->lite) {
        sqlite3_reset(s->lite);
        sqlite3_clear_bindings(s->lite);
        return;
    }
    PQclear(s->res);
    s->res = NULL;
    s->row = -1;
    memset(s->pv, 0, sizeof s->pv);
}

/* Binds text (borrowed: it must live until done()), or NULL. */
static int bind_text(qs *s, int i, const char *v)
{
    PD_ASSERT(i >= 1 && i <= Q_MAX_PARAMS);
    if (!s->js->pg)
        return v ? sqlite3_bind_text(s->lite, i, v, -1, SQLITE_STATIC)
                 : sqlite3_bind_null(s->lite, i);
    s->pv[i - 1] = v;
    return 0;
}

static void q_bind_i64(qs *s, int i, int64_t v)
{
    PD_ASSERT(i >= 1 && i <= Q_MAX_PARAMS);
    if (!s->js->pg) {
        sqlite3_bind_int64(s->lite, i, v);
        return;
    }
    snprintf(s->num[i - 1], sizeof s->num[i - 1], "%" PRId64, v);
    s->pv[i - 1] = s->num[i - 1];
}

static void q_bind_int(qs *s, int i, int v) { q_bind_i64(s, i, v); }

/* Keeps PostgreSQL's message (one line) for db_fail. */
static void pg_keep_msg(pd_jobstore *js, const char *m)
{
    snprintf(js->pg_msg, sizeof js->pg_msg, "%s", m && *m ? m : "unknown error");
    char *nl;
    while ((nl = strchr(js->pg_msg, '\n')) != NULL) *nl = ' ';
}

/* The session's settings, at connect and after every reconnect: each write
 * durable when it returns whatever the server's default, no NOTICE chatter. */
#define PG_SESSION "SET synchronous_commit = on; SET client_min_messages = warning"

/* Reconnects a PostgreSQL connection that went down. 0 when it is up. */
static int pg_alive(pd_jobstore *js)
{
    if (PQstatus(js->pg) == CONNECTION_OK) return 0;
    PQreset(js->pg);
    if (PQstatus(js->pg) == CONNECTION_OK) {
        PGresult *r = PQexec(js->pg, PG_SESSION);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) pg_keep_msg(js, PQresultErrorMessage(r));
        PQclear(r);
        if (ok) PD_LOGI("job store: reconnected to the database");
        return ok ? 0 : -1;
    }
    pg_keep_msg(js, PQerrorMessage(js->pg));
    return -1;
}

static int q_step(qs *s)
{
    if (s->lite) return sqlite3_step(s->lite);
    pd_jobstore *js = s->js;
    if (!s->res) {
        if (pg_alive(js) < 0) return SQLITE_IOERR;
        s->res = PQexecParams(js->pg, js->pg_sql[s - js->stmt], js->pg_nparams[s - js->stmt],
                              NULL, s->pv, NULL, NULL, 0);
        ExecStatusType t = s->res ? PQresultStatus(s->res) : PGRES_FATAL_ERROR;
        if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) {
            pg_keep_msg(js, s->res ? PQresultErrorMessage(s->res) : PQerrorMessage(js->pg));
            const char *state = s->res ? PQresultErrorField(s->res, PG_DIAG_SQLSTATE) : NULL;
            PQclear(s->res);
            s->res = NULL;
            /* 40001/40P01: serialization failure or deadlock, worth a retry */
            return state && !strncmp(state, "40", 2) ? SQLITE_BUSY : SQLITE_IOERR;
        }
        js->pg_changes = atoi(PQcmdTuples(s->res));
        s->row = -1;
    }
    return ++s->row < PQntuples(s->res) ? SQLITE_ROW : SQLITE_DONE;
}

static const char *q_text(qs *s, int col)
{
    if (s->lite) return (const char *)sqlite3_column_text(s->lite, col);
    return PQgetisnull(s->res, s->row, col) ? NULL : PQgetvalue(s->res, s->row, col);
}

static int64_t q_i64(qs *s, int col)
{
    if (s->lite) return sqlite3_column_int64(s->lite, col);
    const char *v = q_text(s, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

static int q_int(qs *s, int col) { return (int)q_i64(s, col); }

static int q_type(qs *s, int col)
{
    if (s->lite) return sqlite3_column_type(s->lite, col);
    return q_text(s, col) ? SQLITE_TEXT : SQLITE_NULL;
}

/* Rows changed by the last write. */
static int q_changes(pd_jobstore *js)
{
    return js->pg ? js->pg_changes : sqlite3_changes(js->db);
}

/* The seq of the row the last insert made (PostgreSQL: the session's
 * lastval(), which only this connection's inserts move). */
static int64_t q_last_id(pd_jobstore *js)
{
    if (!js->pg) return sqlite3_last_insert_rowid(js->db);
    PGresult *r = PQexec(js->pg, "SELECT lastval()");
    int64_t v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1
                    ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return v;
}

/* Runs a statement that returns no row to completion. */
static int run(pd_jobstore *js, qs *s, const char *what, pd_err *err)
{
    int rc = q_step(s);
    int st = rc == SQLITE_DONE ? PD_OK : db_fail(js, rc, what, err);
    done(s);
    return st;
}

static int exec(pd_jobstore *js, const char *sql, pd_err *err)
{
    int rc = sqlite3_exec(js->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? PD_OK : db_fail(js, rc, sql, err);
}

/* ---- row -> JSON ---- */

static json_t *col_string(qs *s, int col)
{
    const char *v = (const char *)q_text(s, col);
    return v ? json_string(v) : json_null();
}

static json_t *col_integer(qs *s, int col)
{
    return q_type(s, col) == SQLITE_NULL
               ? json_null()
               : json_integer((json_int_t)q_i64(s, col));
}

/* A JSON column: its value, or null (logged) if the stored text is bad. */
static json_t *col_json(qs *s, int col)
{
    const char *v = (const char *)q_text(s, col);
    if (!v) return json_null();
    json_error_t je;
    json_t *j = json_loads(v, JSON_DECODE_ANY, &je);
    if (!j) {
        PD_LOGE("job store: stored JSON unreadable (%s); returned as null", je.text);
        return json_null();
    }
    return j;
}

static json_t *file_json(qs *s)
{
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    bad |= json_object_set_new(o, "id", col_string(s, F_ID));
    bad |= json_object_set_new(o, "object", json_string("file"));
    bad |= json_object_set_new(o, "bytes", col_integer(s, F_BYTES));
    bad |= json_object_set_new(o, "created_at", col_integer(s, F_CREATED));
    bad |= json_object_set_new(o, "filename", col_string(s, F_FILENAME));
    bad |= json_object_set_new(o, "purpose", col_string(s, F_PURPOSE));
    bad |= json_object_set_new(o, "status", col_string(s, F_STATUS));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *job_json(qs *s)
{
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    json_t *error = json_null();
    if (q_type(s, J_ERR_CODE) != SQLITE_NULL ||
        q_type(s, J_ERR_MSG) != SQLITE_NULL) {
        json_decref(error);
        error = json_object();
        if (error) {
            bad |= json_object_set_new(error, "code", col_string(s, J_ERR_CODE));
            bad |= json_object_set_new(error, "message", col_string(s, J_ERR_MSG));
            bad |= json_object_set_new(error, "param", col_string(s, J_ERR_PARAM));
        }
    }
    bad |= json_object_set_new(o, "id", col_string(s, J_ID));
    bad |= json_object_set_new(o, "object", json_string("fine_tuning.job"));
    bad |= json_object_set_new(o, "created_at", col_integer(s, J_CREATED));
    bad |= json_object_set_new(o, "finished_at", col_integer(s, J_FINISHED));
    bad |= json_object_set_new(o, "model", col_string(s, J_MODEL));
    bad |= json_object_set_new(o, "fine_tuned_model", col_string(s, J_FT_MODEL));
    bad |= json_object_set_new(o, "organization_id", json_string("prefixd"));
    bad |= json_object_set_new(o, "status", col_string(s, J_STATUS));
    bad |= json_object_set_new(o, "training_file", col_string(s, J_TRAIN));
    bad |= json_object_set_new(o, "validation_file", col_string(s, J_VALID));
    bad |= json_object_set_new(o, "hyperparameters", col_json(s, J_HYPER));
    bad |= json_object_set_new(o, "method", col_json(s, J_METHOD));
    bad |= json_object_set_new(o, "seed", col_integer(s, J_SEED));
    bad |= json_object_set_new(o, "trained_tokens", col_integer(s, J_TOKENS));
    bad |= json_object_set_new(o, "error", error);
    json_t *results = col_json(s, J_RESULTS);
    if (!json_is_array(results)) {
        json_decref(results);
        results = json_array();
    }
    bad |= json_object_set_new(o, "result_files", results);
    bad |= json_object_set_new(o, "estimated_finish", col_integer(s, J_ETA));
    bad |= json_object_set_new(o, "user_provided_suffix", col_string(s, J_SUFFIX));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static void event_id(char out[PD_JOBSTORE_ID_MAX], int64_t seq)
{
    snprintf(out, PD_JOBSTORE_ID_MAX, "ftevent-%0*" PRIx64, EVENT_HEX, (uint64_t)seq);
}

static json_t *event_json(qs *s)
{
    char id[PD_JOBSTORE_ID_MAX];
    event_id(id, q_i64(s, E_SEQ));
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    bad |= json_object_set_new(o, "object", json_string("fine_tuning.job.event"));
    bad |= json_object_set_new(o, "id", json_string(id));
    bad |= json_object_set_new(o, "created_at", col_integer(s, E_CREATED));
    bad |= json_object_set_new(o, "level", col_string(s, E_LEVEL));
    bad |= json_object_set_new(o, "message", col_string(s, E_MESSAGE));
    bad |= json_object_set_new(o, "type", col_string(s, E_TYPE));
    bad |= json_object_set_new(o, "data", col_json(s, E_DATA));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static void ckpt_id(char out[PD_JOBSTORE_ID_MAX], int64_t seq)
{
    snprintf(out, PD_JOBSTORE_ID_MAX, "ftckpt-%0*" PRIx64, EVENT_HEX, (uint64_t)seq);
}

static json_t *ckpt_json(qs *s)
{
    char id[PD_JOBSTORE_ID_MAX];
    ckpt_id(id, q_i64(s, C_SEQ));
    json_t *metrics = col_json(s, C_METRICS);
    json_t *o = json_pack("{s:s,s:s,s:o,s:o,s:o,s:o,s:o}", "object",
                          "fine_tuning.job.checkpoint", "id", id, "created_at",
                          col_integer(s, C_CREATED), "fine_tuned_model_checkpoint",
                          col_string(s, C_MODEL), "step_number", col_integer(s, C_STEP),
                          "metrics", metrics, "fine_tuning_job_id", col_string(s, C_JOB));
    return o;
}

/* {object: "list", data, has_more}: takes data over. */
static json_t *list_json(json_t *data, int has_more)
{
    json_t *o = json_object();
    if (!o || !data) {
        json_decref(o);
        json_decref(data);
        return NULL;
    }
    int bad = 0;
    bad |= json_object_set_new(o, "object", json_string("list"));
    bad |= json_object_set_new(o, "data", data);
    bad |= json_object_set_new(o, "has_more", json_boolean(has_more));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int oom(pd_err *err)
{
    return pd_err_set(err, PD_ENOMEM, "job store: out of memory building JSON");
}

/* Steps a list statement (bound by the caller) for up to limit rows,
 * building each with row_json; has_more when a (limit+1)-th row exists. */
static int collect(pd_jobstore *js, qs *s, int limit, json_t *(*row_json)(qs *),
                   json_t **out, pd_err *err)
{
    json_t *data = json_array();
    int n = 0, has_more = 0, rc, st = PD_OK;
    while ((rc = q_step(s)) == SQLITE_ROW) {
        if (n == limit) {
            has_more = 1;
            break;
        }
        json_t *row = row_json(s);
        if (!row || !data || json_array_append_new(data, row) < 0) {
            st = oom(err);
            break;
        }
        n++;
    }
    if (st == PD_OK && rc != SQLITE_ROW && rc != SQLITE_DONE) st = db_fail(js, rc, "list", err);
    done(s);
    if (st < 0) {
        json_decref(data);
        return st;
    }
    *out = list_json(data, has_more);
    return *out ? PD_OK : oom(err);
}

static int check_limit(int *limit, int def, pd_err *err)
{
    if (*limit == 0) *limit = def;
    if (*limit < 1 || *limit > PD_JOBSTORE_LIST_MAX)
        return pd_err_set(err, PD_EINVAL, "limit: %d outside [1, %d]", *limit,
                          PD_JOBSTORE_LIST_MAX);
    return PD_OK;
}

/* ---- job status ---- */

static const char *const status_names[PD_JOB_STATUS_COUNT] = {
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled",
};

const char *pd_job_status_name(pd_job_status s)
{
    return (unsigned)s < PD_JOB_STATUS_COUNT ? status_names[s] : "unknown";
}

int pd_job_status_parse(const char *name)
{
    for (int i = 0; name && i < PD_JOB_STATUS_COUNT; i++)
        if (strcmp(name, status_names[i]) == 0) return i;
    return -1;
}

int pd_job_status_final(pd_job_status s)
{
    return s == PD_JOB_SUCCEEDED || s == PD_JOB_FAILED || s == PD_JOB_CANCELLED;
}

static int transition_ok(pd_job_status from, pd_job_status to)
{
    switch (from) {
    case PD_JOB_VALIDATING_FILES:
        return to == PD_JOB_QUEUED || to == PD_JOB_FAILED || to == PD_JOB_CANCELLED;
    case PD_JOB_QUEUED:
        return to == PD_JOB_RUNNING || to == PD_JOB_FAILED || to == PD_JOB_CANCELLED;
    case PD_JOB_RUNNING:
        return to == PD_JOB_SUCCEEDED || to == PD_JOB_FAILED || to == PD_JOB_CANCELLED ||
               to == PD_JOB_QUEUED;
    default:
        return 0;
    }
}

/* ---- lookups shared by the public functions (under js->lock) ---- */

/* Prepares statement `which`, binds id as ?1 and steps to its row. PD_OK
 * with the row current in *out (the caller calls done()), PD_ENOTFOUND
 * ("no <what> '<id>'"), or an error. */
static int find_row(pd_jobstore *js, int which, const char *what, const char *id,
                    qs **out, pd_err *err)
{
    qs *s;
    int st = prep(js, which, &s, err);
    if (st < 0) return st;
    bind_text(s, 1, id);
    int rc = q_step(s);
    if (rc == SQLITE_ROW) {
        *out = s;
        return PD_OK;
    }
    if (rc == SQLITE_DONE) {
        char b[96];
        st = pd_err_set(err, PD_ENOTFOUND, "no %s '%s'", what, show(b, id));
    } else {
        st = db_fail(js, rc, what, err);
    }
    done(s);
    return st;
}

/* Reads a job's status, cancel flag and seq (each pointer may be NULL). */
static int job_state(pd_jobstore *js, const char *id, pd_job_status *status, int *cancel,
                     int64_t *seq, pd_err *err)
{
    qs *s;
    int st = find_row(js, S_JOB_GET, "fine-tuning job", id, &s, err);
    if (st < 0) return st;
    int parsed = pd_job_status_parse((const char *)q_text(s, J_STATUS));
    if (status) *status = parsed < 0 ? PD_JOB_FAILED : (pd_job_status)parsed;
    if (cancel) *cancel = q_int(s, J_CANCEL);
    if (seq) *seq = q_i64(s, J_SEQ);
    done(s);
    if (parsed < 0)
        return pd_err_set(err, PD_EFORMAT, "%s: job %s has an unknown status", js->db_path, id);
    return PD_OK;
}

static int job_get_locked(pd_jobstore *js, const char *id, json_t **out, pd_err *err)
{
    qs *s;
    int st = find_row(js, S_JOB_GET, "fine-tuning job", id, &s, err);
    if (st < 0) return st;
    *out = job_json(s);
    done(s);
    return *out ? PD_OK : oom(err);
}

/* Looks a file up; fills whichever of obj (new reference), info, seq and
 * fine_tune (1 if its purpose is "fine-tune") are not NULL. */
static int file_get_locked(pd_jobstore *js, const char *id, json_t **obj,
                           pd_jobstore_file_info *info, int64_t *seq, int *fine_tune,
                           pd_err *err)
{
    qs *s;
    int st = find_row(js, S_FILE_GET, "file", id, &s, err);
    if (st < 0) return st;
    if (info) {
        snprintf(info->id, sizeof info->id, "%s", (const char *)q_text(s, F_ID));
        info->bytes = q_i64(s, F_BYTES);
        info->created_at = q_i64(s, F_CREATED);
        info->n_lines = q_i64(s, F_LINES);
    }
    if (seq) *seq = q_i64(s, F_SEQ);
    if (fine_tune) {
        const char *p = (const char *)q_text(s, F_PURPOSE);
        *fine_tune = p && strcmp(p, "fine-tune") == 0;
    }
    if (obj) {
        *obj = file_json(s);
        if (!*obj) st = oom(err);
    }
    done(s);
    return st;
}

/* ---- lifecycle ---- */

static int migrate(pd_jobstore *js, pd_err *err)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(js->db, "PRAGMA user_version", -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(js, rc, "reading the schema version", err);
    rc = sqlite3_step(s);
    int version = sqlite3_column_int(s, 0);
    int st = rc == SQLITE_ROW ? PD_OK : db_fail(js, rc, "reading the schema version", err);
    sqlite3_finalize(s);
    if (st < 0) return st;
    if (version > PD_JOBSTORE_SCHEMA_VERSION)
        return pd_err_set(err, PD_EVERSION,
                          "%s: schema version %d is newer than this prefixd's (%d): "
                          "run a newer prefixd on this data directory",
                          js->db_path, version, PD_JOBSTORE_SCHEMA_VERSION);
    for (int v = version; v < PD_JOBSTORE_SCHEMA_VERSION; v++) {
        char set_version[64];
        snprintf(set_version, sizeof set_version, "PRAGMA user_version = %d", v + 1);
        st = exec(js, "BEGIN IMMEDIATE", err);
        if (st == PD_OK) st = exec(js, migrations[v], err);
        if (st == PD_OK) st = exec(js, set_version, err);
        if (st == PD_OK) st = exec(js, "COMMIT", err);
        if (st < 0) {
            sqlite3_exec(js->db, "ROLLBACK", NULL, NULL, NULL);
            return st;
        }
        PD_LOGI("job store: %s migrated to schema version %d", js->db_path, v + 1);
    }
    return PD_OK;
}

static int configure(pd_jobstore *js, pd_err *err)
{
    int rc = sqlite3_busy_timeout(js->db, BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) return db_fail(js, rc, "busy_timeout", err);
    sqlite3_stmt *s;
    rc = sqlite3_prepare_v2(js->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(js, rc, "journal_mode", err);
    rc = sqlite3_step(s);
    int wal = rc == SQLITE_ROW &&
              strcmp((const char *)sqlite3_column_text(s, 0), "wal") == 0;
    int st = rc == SQLITE_ROW ? PD_OK : db_fail(js, rc, "journal_mode", err);
    sqlite3_finalize(s);
    if (st < 0) return st;
    if (!wal)
        return pd_err_set(err, PD_EIO, "%s: the file system does not support WAL mode",
                          js->db_path);
    st = exec(js, "PRAGMA synchronous = FULL", err);
    if (st == PD_OK) st = exec(js, "PRAGMA foreign_keys = ON", err);
    return st;
}

/* Deletes upload temp files and contents without a row from files/ (other
 * names are left alone); logs rows whose contents are missing (nothing the
 * store does leaves one). */
static int clean_files(pd_jobstore *js, pd_err *err)
{
    DIR *d = opendir(js->files_dir);
    if (!d) return pd_err_set(err, PD_EIO, "%s: cannot open: %s", js->files_dir, strerror(errno));
    int st = PD_OK;
    struct dirent *e;
    while (st == PD_OK && (e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        char id[PD_JOBSTORE_ID_MAX];
        size_t n = strlen(name), ext = sizeof FILE_EXT - 1;
        int ours = n > ext && n - ext < sizeof id && strcmp(name + n - ext, FILE_EXT) == 0;
        if (ours) {
            memcpy(id, name, n - ext);
            id[n - ext] = 0;
            ours = id_ok(id, "file-", ID_HEX);
        }
        /* pd_write_file_atomic's temp files are ".<name>.tmp.XXXXXX" */
        int temp = strncmp(name, ".file-", 6) == 0 && strstr(name, FILE_EXT ".tmp.") != NULL;
        if (!ours && !temp) continue; /* not the store's: left alone */
        if (ours) {
            st = file_get_locked(js, id, NULL, NULL, NULL, NULL, err);
            if (st == PD_OK) continue;
            if (st != PD_ENOTFOUND) break;
            st = PD_OK;
        }
        char *path = join(js->files_dir, name);
        if (!path) {
            st = pd_err_set(err, PD_ENOMEM, "%s: out of memory", js->files_dir);
            break;
        }
        if (unlink(path) == 0)
            PD_LOGW("job store: removed %s left by an interrupted upload", path);
        else
            PD_LOGW("job store: cannot remove %s: %s", path, strerror(errno));
        free(path);
    }
    closedir(d);
    if (st < 0) return st;

    qs *s;
    if ((st = prep(js, S_FILE_ALL, &s, err)) < 0) return st;
    int rc;
    while ((rc = q_step(s)) == SQLITE_ROW) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s" FILE_EXT, js->files_dir,
                 (const char *)q_text(s, 0));
        if (access(path, F_OK) < 0)
            PD_LOGE("job store: contents of %s are missing (%s)",
                    (const char *)q_text(s, 0), path);
    }
    st = rc == SQLITE_DONE ? PD_OK : db_fail(js, rc, "listing files", err);
    done(s);
    return st;
}

/* Removes the temp files of checkpoint writes that a crash interrupted
 * (pd_write_file_atomic's ".<job>.ckpt.tmp.XXXXXX"): the data directory's
 * lock keeps every other writer out, so none of them is being written. */
static void clean_checkpoint_temps(pd_jobstore *js)
{
    DIR *d = opendir(js->ckpt_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, ".ftjob-", 7) != 0 || !strstr(e->d_name, CKPT_EXT ".tmp."))
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            PD_LOGW("job store: removed %s/%s left by an interrupted checkpoint", js->ckpt_dir,
                    e->d_name);
    }
    closedir(d);
}

/* Cancels what was asked to be cancelled before the crash, and logs what
 * the worker will pick up. */
static int recover_jobs(pd_jobstore *js, pd_err *err)
{
    qs *s;
    int st = PD_OK, cancelled = 0;
    /* shared (PostgreSQL): another replica may be running such a job; its
     * worker, or whoever takes over its lease, cancels it */
    if (!js->pg) {
        if ((st = prep(js, S_JOB_RECOVER, &s, err)) < 0) return st;
        q_bind_i64(s, 1, now_s());
        if ((st = run(js, s, "recovering jobs", err)) < 0) return st;
        cancelled = q_changes(js);
    }
    if (cancelled) PD_LOGI("job store: %d job(s) with a cancel request marked cancelled", cancelled);
    if ((st = prep(js, S_JOB_COUNT, &s, err)) < 0) return st;
    int rc;
    while ((rc = q_step(s)) == SQLITE_ROW)
        PD_LOGI("job store: %d %s job(s) to run", q_int(s, 1),
                (const char *)q_text(s, 0));
    st = rc == SQLITE_DONE ? PD_OK : db_fail(js, rc, "counting jobs", err);
    done(s);
    return st;
}

/* ---- PostgreSQL ---- */

/* pg_migrations[v] takes a PostgreSQL schema from version v to v + 1 (the
 * one row of schema_version). Append only; the same tables as SQLite's,
 * plus the lease of a job (lease_owner, lease_until in unix seconds). */
static const char *const pg_migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE files ("
    "  seq        BIGSERIAL PRIMARY KEY,"
    "  id         TEXT NOT NULL UNIQUE,"
    "  filename   TEXT NOT NULL,"
    "  purpose    TEXT NOT NULL,"
    "  bytes      BIGINT NOT NULL,"
    "  n_lines    BIGINT NOT NULL,"
    "  created_at BIGINT NOT NULL,"
    "  status     TEXT NOT NULL"
    ");"
    "CREATE TABLE jobs ("
    "  seq              BIGSERIAL PRIMARY KEY,"
    "  id               TEXT NOT NULL UNIQUE,"
    "  created_at       BIGINT NOT NULL,"
    "  finished_at      BIGINT,"
    "  model            TEXT NOT NULL,"
    "  training_file    TEXT NOT NULL,"
    "  validation_file  TEXT,"
    "  suffix           TEXT,"
    "  seed             BIGINT NOT NULL,"
    "  hyperparameters  TEXT NOT NULL,"
    "  method           TEXT NOT NULL,"
    "  status           TEXT NOT NULL CHECK (status IN ('validating_files', 'queued',"
    "                     'running', 'succeeded', 'failed', 'cancelled')),"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
    "  fine_tuned_model TEXT,"
    "  trained_tokens   BIGINT,"
    "  error_code       TEXT,"
    "  error_message    TEXT,"
    "  error_param      TEXT,"
    "  result_files     TEXT,"
    "  estimated_finish BIGINT,"
    "  lease_owner      TEXT,"
    "  lease_until      BIGINT"
    ");"
    "CREATE INDEX jobs_by_status ON jobs (status, seq);"
    "CREATE INDEX jobs_by_training_file ON jobs (training_file);"
    "CREATE INDEX jobs_by_validation_file ON jobs (validation_file);"
    "CREATE TABLE events ("
    "  seq        BIGSERIAL PRIMARY KEY,"
    "  job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  created_at BIGINT NOT NULL,"
    "  level      TEXT NOT NULL,"
    "  type       TEXT NOT NULL,"
    "  message    TEXT NOT NULL,"
    "  data       TEXT"
    ");"
    "CREATE INDEX events_by_job ON events (job_id, seq);"
    "CREATE TABLE checkpoints ("
    "  seq        BIGSERIAL PRIMARY KEY,"
    "  job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  created_at BIGINT NOT NULL,"
    "  step       INTEGER NOT NULL,"
    "  model      TEXT NOT NULL,"
    "  metrics    TEXT NOT NULL"
    ");"
    "CREATE INDEX checkpoints_by_job ON checkpoints (job_id, seq);",
};
#define PG_SCHEMA_VERSION ((int)(sizeof pg_migrations / sizeof pg_migrations[0]))
/* Serialises migrations of replicas starting together (pg_advisory_xact_lock). */
#define PG_MIGRATE_LOCK "7201505"

/* Runs sql (no parameters); PD_OK, or the error with what. */
static int pg_exec(pd_jobstore *js, const char *sql, const char *what, pd_err *err)
{
    PGresult *r = PQexec(js->pg, sql);
    ExecStatusType t = PQresultStatus(r);
    int st = PD_OK;
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK) {
        pg_keep_msg(js, PQresultErrorMessage(r));
        st = db_fail(js, SQLITE_IOERR, what, err);
    }
    PQclear(r);
    return st;
}

/* Creates or migrates the schema in one transaction, under an advisory
 * lock so that replicas starting together migrate once. */
static int pg_migrate(pd_jobstore *js, pd_err *err)
{
    int st = pg_exec(js, "BEGIN", "migrate", err);
    if (st < 0) return st;
    if ((st = pg_exec(js, "SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK ")", "migrate lock",
                      err)) < 0 ||
        (st = pg_exec(js, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
                      "schema_version", err)) < 0)
        goto fail;
    PGresult *r = PQexec(js->pg, "SELECT version FROM schema_version");
    int version = 0, rows = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        rows = PQntuples(r);
        if (rows > 0) version = atoi(PQgetvalue(r, 0, 0));
    } else {
        pg_keep_msg(js, PQresultErrorMessage(r));
    }
    PQclear(r);
    if (rows < 0) {
        st = db_fail(js, SQLITE_IOERR, "reading the schema version", err);
        goto fail;
    }
    if (version > PG_SCHEMA_VERSION) {
        st = pd_err_set(err, PD_EVERSION, "%s: schema version %d is newer than this prefixd's "
                        "(%d): run a newer prefixd on this database", js->db_path, version,
                        PG_SCHEMA_VERSION);
        goto fail;
    }
    for (int v = version; v < PG_SCHEMA_VERSION; v++) {
        char set[96];
        snprintf(set, sizeof set, v == 0 ? "INSERT INTO schema_version VALUES (%d)"
                                         : "UPDATE schema_version SET version = %d", v + 1);
        if ((st = pg_exec(js, pg_migrations[v], "migrating the schema", err)) < 0 ||
            (st = pg_exec(js, set, "recording the schema version", err)) < 0)
            goto fail;
        PD_LOGI("job store: %s migrated to schema version %d", js->db_path, v + 1);
    }
    return pg_exec(js, "COMMIT", "migrate", err);
fail:
    PQclear(PQexec(js->pg, "ROLLBACK"));
    return st;
}

/* stmt_sql in PostgreSQL's spelling: ?N becomes $N; counts the parameters. */
static int pg_translate(pd_jobstore *js, pd_err *err)
{
    for (int i = 0; i < N_STMT; i++) {
        const char *q = stmt_sql[i];
        char *out = malloc(strlen(q) + 1);
        if (!out) return pd_err_set(err, PD_ENOMEM, "job store: out of memory");
        char *o = out;
        int maxp = 0;
        for (; *q; q++) {
            if (*q == '?' && isdigit((unsigned char)q[1])) {
                *o++ = '$';
                int n = atoi(q + 1);
                if (n > maxp) maxp = n;
            } else {
                *o++ = *q;
            }
        }
        *o = 0;
        PD_ASSERT(maxp <= Q_MAX_PARAMS);
        js->pg_sql[i] = out;
        js->pg_nparams[i] = maxp;
    }
    return PD_OK;
}

/* Connects to url (a libpq connection URI) and readies the schema. */
static int pg_open(pd_jobstore *js, const char *url, pd_err *err)
{
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {url, "5", "prefixd", NULL};
    js->pg = PQconnectdbParams(keys, vals, 1);
    if (!js->pg) return pd_err_set(err, PD_ENOMEM, "job store: out of memory");
    if (PQstatus(js->pg) != CONNECTION_OK) {
        pg_keep_msg(js, PQerrorMessage(js->pg));
        return pd_err_set(err, PD_EUNAVAIL, "%s: cannot connect: %s", js->db_path, js->pg_msg);
    }
    int st = pg_exec(js, PG_SESSION, "configure", err);
    if (st == PD_OK) st = pg_migrate(js, err);
    if (st == PD_OK) st = pg_translate(js, err);
    return st;
}

/* The database named in a URL without its password, for messages. */
static char *redact(const char *url)
{
    const char *at = strchr(url, '@'), *scheme = strstr(url, "://");
    if (!at || !scheme || at < scheme) return strdup(url);
    const char *colon = memchr(scheme + 3, ':', (size_t)(at - scheme - 3));
    if (!colon) return strdup(url);
    size_t n = (size_t)(colon - url);
    char *s = malloc(n + strlen(at) + 5);
    if (!s) return NULL;
    memcpy(s, url, n);
    strcpy(s + n, ":***");
    strcat(s, at);
    return s;
}

int pd_jobstore_is_url(const char *s)
{
    return s && (!strncmp(s, "postgres://", 11) || !strncmp(s, "postgresql://", 13));
}

int pd_jobstore_open(const char *data_dir, pd_jobstore **out, pd_err *err)
{
    return pd_jobstore_open_db(data_dir, NULL, out, err);
}

int pd_jobstore_open_db(const char *data_dir, const char *database, pd_jobstore **out,
                        pd_err *err)
{
    PD_ASSERT(out);
    *out = NULL;
    if (!data_dir || !*data_dir) return pd_err_set(err, PD_EINVAL, "data_dir: empty");
    if (database && *database && !pd_jobstore_is_url(database))
        return pd_err_set(err, PD_EINVAL, "job_store: want a postgres:// or postgresql:// URL");
    int use_pg = database && *database;
    if (strlen(data_dir) > PATH_MAX - 64)
        return pd_err_set(err, PD_EINVAL, "data_dir: path too long");
    pd_jobstore *js = calloc(1, sizeof *js);
    if (!js) return pd_err_set(err, PD_ENOMEM, "job store: out of memory");
    js->lock_fd = -1;
    js->lease_s = PD_JOBSTORE_LEASE_DEFAULT_S;
    for (int i = 0; i < N_STMT; i++) {
        js->stmt[i].js = js;
        js->stmt[i].row = -1;
    }
    pthread_mutex_init(&js->lock, NULL);
    int st = PD_OK;
    js->dir = strdup(data_dir);
    js->db_path = use_pg ? redact(database) : join(data_dir, DB_NAME);
    js->files_dir = join(data_dir, FILES_DIR);
    js->ckpt_dir = join(data_dir, CKPT_DIR);
    char *lock_path = join(data_dir, LOCK_NAME);
    if (!js->dir || !js->db_path || !js->files_dir || !js->ckpt_dir || !lock_path) {
        st = pd_err_set(err, PD_ENOMEM, "job store: out of memory");
        goto fail;
    }
    if ((st = mkdir_p(data_dir, err)) < 0 || (st = mkdir_p(js->files_dir, err)) < 0 ||
        (st = mkdir_p(js->ckpt_dir, err)) < 0)
        goto fail;
    {
        char host[64] = "host", hex[9];
        if (gethostname(host, sizeof host - 1) < 0) strcpy(host, "host"); /* a name only */
        host[sizeof host - 1] = 0;
        if ((st = random_hex(hex, 8, err)) < 0) goto fail;
        snprintf(js->owner, sizeof js->owner, "%s:%ld:%s", host, (long)getpid(), hex);
    }
    if (use_pg) {
        /* shared by every replica: no process lock, no cleanup of files
         * another replica may be writing at this moment */
        if ((st = pg_open(js, database, err)) < 0 || (st = recover_jobs(js, err)) < 0) goto fail;
        free(lock_path);
        *out = js;
        return PD_OK;
    }

    js->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (js->lock_fd < 0) {
        st = pd_err_set(err, PD_EIO, "%s: cannot open: %s", lock_path, strerror(errno));
        goto fail;
    }
    if (flock(js->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        st = errno == EWOULDBLOCK
                 ? pd_err_set(err, PD_EBUSY, "%s: the data directory is in use by another "
                                             "process", data_dir)
                 : pd_err_set(err, PD_EIO, "%s: cannot lock: %s", lock_path, strerror(errno));
        goto fail;
    }

    int rc = sqlite3_open_v2(js->db_path, &js->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        st = js->db ? db_fail(js, rc, "open", err)
                    : pd_err_set(err, PD_ENOMEM, "%s: out of memory", js->db_path);
        goto fail;
    }
    sqlite3_extended_result_codes(js->db, 1);
    if ((st = configure(js, err)) < 0 || (st = migrate(js, err)) < 0 ||
        (st = recover_jobs(js, err)) < 0 || (st = clean_files(js, err)) < 0)
        goto fail;
    clean_checkpoint_temps(js);
    free(lock_path);
    *out = js;
    return PD_OK;
fail:
    free(lock_path);
    pd_jobstore_close(js);
    return st;
}

void pd_jobstore_close(pd_jobstore *js)
{
    if (!js) return;
    if (js->pg && PQstatus(js->pg) == CONNECTION_OK && js->pg_sql[S_JOB_RELEASE_ALL]) {
        /* a clean close: the jobs this process held are free for others at once */
        const char *owner = js->owner;
        PQclear(PQexecParams(js->pg, js->pg_sql[S_JOB_RELEASE_ALL], 1, NULL, &owner, NULL, NULL,
                             0));
    }
    for (int i = 0; i < N_STMT; i++) {
        sqlite3_finalize(js->stmt[i].lite);
        PQclear(js->stmt[i].res);
        free(js->pg_sql[i]);
    }
    PQfinish(js->pg);
    if (js->db && sqlite3_close(js->db) != SQLITE_OK)
        PD_LOGE("job store: closing %s: %s", js->db_path, sqlite3_errmsg(js->db));
    if (js->lock_fd >= 0) close(js->lock_fd); /* releases the flock */
    pthread_mutex_destroy(&js->lock);
    free(js->dir);
    free(js->db_path);
    free(js->files_dir);
    free(js->ckpt_dir);
    free(js);
}

const char *pd_jobstore_data_dir(const pd_jobstore *js)
{
    return js->dir;
}

/* ---- files ---- */

int pd_jobstore_file_create(pd_jobstore *js, const char *filename, const char *purpose,
                            const void *data, size_t size, pd_jobstore_file_info *info,
                            json_t **obj, pd_err *err)
{
    PD_ASSERT(js);
    if (obj) *obj = NULL;
    int st;
    if ((st = check_text("filename", filename, FILENAME_MAX_BYTES, 1, err)) < 0 ||
        (st = check_text("purpose", purpose, PURPOSE_MAX_BYTES, 1, err)) < 0)
        return st;
    if (!data && size) return pd_err_set(err, PD_EINVAL, "file: no data");
    if (size > (size_t)INT64_MAX) return pd_err_set(err, PD_ERANGE, "file: too large");

    char id[PD_JOBSTORE_ID_MAX] = "file-";
    if ((st = random_hex(id + 5, ID_HEX, err)) < 0) return st;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s" FILE_EXT, js->files_dir, id);
    int64_t n_lines = count_lines(data, size);
    int64_t created = now_s();

    /* the contents reach the disk before the row exists (outside the lock) */
    if ((st = pd_write_file_atomic(path, data, size, err)) < 0) return st;

    pthread_mutex_lock(&js->lock);
    qs *s;
    int inserted = 0;
    if ((st = prep(js, S_FILE_INSERT, &s, err)) == PD_OK) {
        bind_text(s, 1, id);
        bind_text(s, 2, filename);
        bind_text(s, 3, purpose);
        q_bind_i64(s, 4, (int64_t)size);
        q_bind_i64(s, 5, n_lines);
        q_bind_i64(s, 6, created);
        st = run(js, s, "inserting a file", err);
        inserted = st == PD_OK;
    }
    if (st == PD_OK && obj) st = file_get_locked(js, id, obj, NULL, NULL, NULL, err);
    pthread_mutex_unlock(&js->lock);
    if (st < 0) {
        if (obj && *obj) {
            json_decref(*obj);
            *obj = NULL;
        }
        /* no row: the contents go (if this fails, the next open removes them) */
        if (!inserted) unlink(path);
        return st;
    }
    if (info) {
        snprintf(info->id, sizeof info->id, "%s", id);
        info->bytes = (int64_t)size;
        info->created_at = created;
        info->n_lines = n_lines;
    }
    return PD_OK;
}

int pd_jobstore_file_get(pd_jobstore *js, const char *id, json_t **out, pd_err *err)
{
    PD_ASSERT(js && out);
    *out = NULL;
    pthread_mutex_lock(&js->lock);
    int st = file_get_locked(js, id, out, NULL, NULL, NULL, err);
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_file_stat(pd_jobstore *js, const char *id, pd_jobstore_file_info *info,
                          pd_err *err)
{
    PD_ASSERT(js && info);
    pthread_mutex_lock(&js->lock);
    int st = file_get_locked(js, id, NULL, info, NULL, NULL, err);
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_file_list(pd_jobstore *js, const char *purpose, const char *after, int limit,
                          json_t **out, pd_err *err)
{
    PD_ASSERT(js && out);
    *out = NULL;
    int st = check_limit(&limit, PD_JOBSTORE_FILES_DEFAULT_LIMIT, err);
    if (st < 0) return st;
    pthread_mutex_lock(&js->lock);
    int64_t before = INT64_MAX;
    if (after) {
        st = file_get_locked(js, after, NULL, NULL, &before, NULL, err);
        if (st == PD_ENOTFOUND) {
            char b[96];
            st = pd_err_set(err, PD_ENOTFOUND, "after: no file '%s'", show(b, after));
        }
    }
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_FILE_LIST, &s, err);
    if (st == PD_OK) {
        q_bind_i64(s, 1, before);
        bind_text(s, 2, purpose);
        q_bind_int(s, 3, limit + 1);
        st = collect(js, s, limit, file_json, out, err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_file_delete(pd_jobstore *js, const char *id, json_t **obj, pd_err *err)
{
    PD_ASSERT(js);
    if (obj) *obj = NULL;
    char b[96];
    pthread_mutex_lock(&js->lock);
    int st = file_get_locked(js, id, NULL, NULL, NULL, NULL, err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_FILE_USER, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, id);
        int rc = q_step(s);
        if (rc == SQLITE_ROW)
            st = pd_err_set(err, PD_EBUSY, "file '%s' is in use by fine-tuning job %s, "
                            "which has not finished", show(b, id),
                            (const char *)q_text(s, 0));
        else if (rc != SQLITE_DONE)
            st = db_fail(js, rc, "checking file use", err);
        done(s);
    }
    if (st == PD_OK) st = prep(js, S_FILE_DELETE, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, id);
        st = run(js, s, "deleting a file", err);
    }
    pthread_mutex_unlock(&js->lock);
    if (st < 0) return st;

    /* the row is gone: the contents follow (a leftover is removed at open) */
    PD_ASSERT(id_ok(id, "file-", ID_HEX)); /* it matched a row: one of ours */
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s" FILE_EXT, js->files_dir, id);
    if (unlink(path) < 0 && errno != ENOENT)
        PD_LOGW("job store: cannot remove %s: %s", path, strerror(errno));
    if (obj) {
        json_t *o = json_pack("{s:s, s:s, s:b}", "id", id, "object", "file", "deleted", 1);
        if (!o) return oom(err);
        *obj = o;
    }
    return PD_OK;
}

int pd_jobstore_file_path(pd_jobstore *js, const char *id, char *buf, size_t cap,
                          pd_err *err)
{
    PD_ASSERT(js && buf);
    pthread_mutex_lock(&js->lock);
    int st = file_get_locked(js, id, NULL, NULL, NULL, NULL, err);
    pthread_mutex_unlock(&js->lock);
    if (st < 0) return st;
    PD_ASSERT(id_ok(id, "file-", ID_HEX)); /* the store only makes such ids */
    int n = snprintf(buf, cap, "%s/%s" FILE_EXT, js->files_dir, id);
    if (n < 0 || (size_t)n >= cap)
        return pd_err_set(err, PD_ERANGE, "file path: %d bytes do not fit in %zu", n, cap);
    return PD_OK;
}

/* ---- jobs ---- */

/* Reads an optional member of params: absent and null give NULL. */
static const json_t *member(const json_t *params, const char *key)
{
    const json_t *v = json_object_get(params, key);
    return v && !json_is_null(v) ? v : NULL;
}

/* A file a job names: stored, and of purpose fine-tune. */
static int check_job_file(pd_jobstore *js, const char *param, const char *id, pd_err *err)
{
    int fine_tune = 0;
    char b[96];
    int st = file_get_locked(js, id, NULL, NULL, NULL, &fine_tune, err);
    if (st == PD_ENOTFOUND)
        return pd_err_set(err, PD_ENOTFOUND, "%s: no file '%s'", param, show(b, id));
    if (st < 0) return st;
    if (!fine_tune)
        return pd_err_set(err, PD_EINVAL, "%s: file '%s' was not uploaded with purpose "
                                          "fine-tune", param, show(b, id));
    return PD_OK;
}

int pd_jobstore_job_create(pd_jobstore *js, const json_t *params, char *id_out, json_t **obj,
                           pd_err *err)
{
    PD_ASSERT(js);
    if (obj) *obj = NULL;
    if (!json_is_object(params)) return pd_err_set(err, PD_EINVAL, "body: not a JSON object");
    const json_t *model = member(params, "model");
    const json_t *train = member(params, "training_file");
    const json_t *valid = member(params, "validation_file");
    const json_t *suffix = member(params, "suffix");
    const json_t *seed = member(params, "seed");
    const json_t *hyper = member(params, "hyperparameters");
    const json_t *method = member(params, "method");
    int st;
    if (!json_is_string(model)) return pd_err_set(err, PD_EINVAL, "model: a string is required");
    if ((st = check_text("model", json_string_value(model), MODEL_MAX_BYTES, 1, err)) < 0)
        return st;
    if (!json_is_string(train))
        return pd_err_set(err, PD_EINVAL, "training_file: a file id is required");
    if (valid && !json_is_string(valid))
        return pd_err_set(err, PD_EINVAL, "validation_file: not a string");
    char b[96];
    if (suffix && !(json_is_string(suffix) && pd_task_name_valid(json_string_value(suffix))))
        return pd_err_set(err, PD_EINVAL,
                          "suffix: '%s' is not a task name: want 1 to %d characters of "
                          "[A-Za-z0-9._-], starting with a letter or digit",
                          json_is_string(suffix) ? show(b, json_string_value(suffix)) : "",
                          PD_TASK_NAME_MAX);
    if (seed && !json_is_integer(seed)) return pd_err_set(err, PD_EINVAL, "seed: not an integer");
    if (hyper && !json_is_object(hyper))
        return pd_err_set(err, PD_EINVAL, "hyperparameters: not an object");
    if (method && !json_is_object(method))
        return pd_err_set(err, PD_EINVAL, "method: not an object");

    int64_t seed_v;
    if (seed) {
        seed_v = (int64_t)json_integer_value(seed);
    } else {
        char hex[9];
        if ((st = random_hex(hex, 8, err)) < 0) return st;
        seed_v = (int64_t)(strtoul(hex, NULL, 16) & 0x7fffffffu); /* OpenAI-like 31 bits */
    }
    char *hyper_text = hyper ? json_dumps(hyper, JSON_COMPACT) : strdup("{}");
    char *method_text = method ? json_dumps(method, JSON_COMPACT)
                               : strdup("{\"type\":\"prefix\",\"prefix\":{\"hyperparameters\":{}}}");
    char id[PD_JOBSTORE_ID_MAX] = "ftjob-";
    if (!hyper_text || !method_text) {
        st = oom(err);
        goto out_free;
    }
    if ((st = random_hex(id + 6, ID_HEX, err)) < 0) goto out_free;

    pthread_mutex_lock(&js->lock);
    st = check_job_file(js, "training_file", json_string_value(train), err);
    if (st == PD_OK && valid)
        st = check_job_file(js, "validation_file", json_string_value(valid), err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_JOB_INSERT, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, id);
        q_bind_i64(s, 2, now_s());
        bind_text(s, 3, json_string_value(model));
        bind_text(s, 4, json_string_value(train));
        bind_text(s, 5, valid ? json_string_value(valid) : NULL);
        bind_text(s, 6, suffix ? json_string_value(suffix) : NULL);
        q_bind_i64(s, 7, seed_v);
        bind_text(s, 8, hyper_text);
        bind_text(s, 9, method_text);
        st = run(js, s, "inserting a job", err);
        if (st == PD_OK && id_out) memcpy(id_out, id, sizeof id); /* stored, whatever follows */
    }
    if (st == PD_OK && obj) st = job_get_locked(js, id, obj, err);
    pthread_mutex_unlock(&js->lock);
out_free:
    free(hyper_text);
    free(method_text);
    return st;
}

int pd_jobstore_job_get(pd_jobstore *js, const char *id, json_t **out, pd_err *err)
{
    PD_ASSERT(js && out);
    *out = NULL;
    pthread_mutex_lock(&js->lock);
    int st = job_get_locked(js, id, out, err);
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_params(pd_jobstore *js, const char *id, json_t **out, pd_err *err)
{
    PD_ASSERT(js && out);
    *out = NULL;
    pthread_mutex_lock(&js->lock);
    qs *s;
    int st = find_row(js, S_JOB_GET, "fine-tuning job", id, &s, err);
    if (st == PD_OK) {
        json_t *o = json_object();
        int bad = !o;
        if (o) {
            bad |= json_object_set_new(o, "model", col_string(s, J_MODEL));
            bad |= json_object_set_new(o, "training_file", col_string(s, J_TRAIN));
            bad |= json_object_set_new(o, "validation_file", col_string(s, J_VALID));
            bad |= json_object_set_new(o, "suffix", col_string(s, J_SUFFIX));
            bad |= json_object_set_new(o, "seed", col_integer(s, J_SEED));
            bad |= json_object_set_new(o, "hyperparameters", col_json(s, J_HYPER));
            bad |= json_object_set_new(o, "method", col_json(s, J_METHOD));
        }
        done(s);
        if (bad) {
            json_decref(o);
            st = oom(err);
        } else {
            *out = o;
        }
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_status(pd_jobstore *js, const char *id, pd_job_status *status,
                           int *cancel_requested, pd_err *err)
{
    PD_ASSERT(js);
    pthread_mutex_lock(&js->lock);
    int st = job_state(js, id, status, cancel_requested, NULL, err);
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_list(pd_jobstore *js, const char *after, int limit, json_t **out,
                         pd_err *err)
{
    PD_ASSERT(js && out);
    *out = NULL;
    int st = check_limit(&limit, PD_JOBSTORE_JOBS_DEFAULT_LIMIT, err);
    if (st < 0) return st;
    pthread_mutex_lock(&js->lock);
    int64_t before = INT64_MAX;
    if (after) {
        st = job_state(js, after, NULL, NULL, &before, err);
        if (st == PD_ENOTFOUND) {
            char b[96];
            st = pd_err_set(err, PD_ENOTFOUND, "after: no fine-tuning job '%s'", show(b, after));
        }
    }
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_JOB_LIST, &s, err);
    if (st == PD_OK) {
        q_bind_i64(s, 1, before);
        q_bind_int(s, 2, limit + 1);
        st = collect(js, s, limit, job_json, out, err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

/* Moves id from `from` to `to` (checked by the caller); finished_at when
 * `to` is final; error stored when given. */
static int update_status(pd_jobstore *js, const char *id, pd_job_status from, pd_job_status to,
                         const pd_jobstore_job_error *error, pd_err *err)
{
    qs *s;
    int st = prep(js, S_JOB_SET_STATUS, &s, err);
    if (st < 0) return st;
    bind_text(s, 1, id);
    bind_text(s, 2, pd_job_status_name(from));
    bind_text(s, 3, pd_job_status_name(to));
    if (pd_job_status_final(to)) q_bind_i64(s, 4, now_s());
    q_bind_int(s, 5, error != NULL);
    if (error) {
        bind_text(s, 6, error->code);
        bind_text(s, 7, error->message);
        bind_text(s, 8, error->param);
    }
    st = run(js, s, "updating a job's status", err);
    /* SQLite: the mutex and the process lock make the row's status the one
     * just read. PostgreSQL: another replica may have moved it meanwhile. */
    if (st == PD_OK && q_changes(js) != 1) {
        PD_ASSERT(js->pg);
        st = pd_err_set(err, PD_EBUSY, "status: job %s changed meanwhile (not %s any more)", id,
                        pd_job_status_name(from));
    }
    return st;
}

int pd_jobstore_job_set_status(pd_jobstore *js, const char *id, pd_job_status status,
                               const pd_jobstore_job_error *error, pd_err *err)
{
    PD_ASSERT(js);
    if ((unsigned)status >= PD_JOB_STATUS_COUNT)
        return pd_err_set(err, PD_EINVAL, "status: %d is not a job status", (int)status);
    int st;
    if (error && ((st = check_text("error.code", error->code, TEXT_MAX_BYTES, 0, err)) < 0 ||
                  (st = check_text("error.message", error->message, TEXT_MAX_BYTES, 0, err)) < 0 ||
                  (st = check_text("error.param", error->param, TEXT_MAX_BYTES, 0, err)) < 0))
        return st;
    pd_job_status from;
    pthread_mutex_lock(&js->lock);
    st = job_state(js, id, &from, NULL, NULL, err);
    if (st == PD_OK && !transition_ok(from, status))
        st = pd_err_set(err, PD_EINVAL, "status: job %s cannot go from %s to %s", id,
                        pd_job_status_name(from), pd_job_status_name(status));
    if (st == PD_OK) st = update_status(js, id, from, status, error, err);
    pthread_mutex_unlock(&js->lock);
    return st;
}

/* PD_OK when job id exists and has not finished (PD_EINVAL then); under the lock. */
static int unfinished_locked(pd_jobstore *js, const char *id, pd_err *err)
{
    pd_job_status status;
    int st = job_state(js, id, &status, NULL, NULL, err);
    if (st == PD_OK && pd_job_status_final(status))
        st = pd_err_set(err, PD_EINVAL, "job %s already finished (%s)", id,
                        pd_job_status_name(status));
    return st;
}

int pd_jobstore_job_set_result(pd_jobstore *js, const char *id, const char *fine_tuned_model,
                               int64_t trained_tokens, pd_err *err)
{
    PD_ASSERT(js);
    char b[96];
    if (fine_tuned_model && !pd_task_name_valid(fine_tuned_model))
        return pd_err_set(err, PD_EINVAL, "fine_tuned_model: '%s' is not a task name",
                          show(b, fine_tuned_model));
    pthread_mutex_lock(&js->lock);
    int st = unfinished_locked(js, id, err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_JOB_SET_RESULT, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, id);
        bind_text(s, 2, fine_tuned_model);
        if (trained_tokens >= 0) q_bind_i64(s, 3, trained_tokens);
        st = run(js, s, "recording a job's result", err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_next_runnable(pd_jobstore *js, char *id, pd_job_status *status,
                                  pd_err *err)
{
    PD_ASSERT(js && id);
    pthread_mutex_lock(&js->lock);
    qs *s;
    int st = prep(js, js->pg ? S_JOB_CLAIM : S_JOB_NEXT, &s, err);
    if (st == PD_OK && js->pg) {
        bind_text(s, 1, js->owner);
        q_bind_i64(s, 2, js->lease_s);
    }
    if (st == PD_OK) {
        int rc = q_step(s);
        if (rc == SQLITE_ROW) {
            snprintf(id, PD_JOBSTORE_ID_MAX, "%s", (const char *)q_text(s, 0));
            int parsed = pd_job_status_parse((const char *)q_text(s, 1));
            PD_ASSERT(parsed == PD_JOB_QUEUED || parsed == PD_JOB_RUNNING);
            if (status) *status = (pd_job_status)parsed;
        } else {
            st = rc == SQLITE_DONE ? PD_ENOTFOUND : db_fail(js, rc, "next job", err);
        }
        done(s);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_request_cancel(pd_jobstore *js, const char *id, json_t **obj,
                                   pd_err *err)
{
    PD_ASSERT(js);
    if (obj) *obj = NULL;
    pd_job_status status;
    pthread_mutex_lock(&js->lock);
    int st = job_state(js, id, &status, NULL, NULL, err);
    qs *s = NULL;
    if (st == PD_OK && pd_job_status_final(status)) {
        st = pd_err_set(err, PD_EINVAL, "job %s already finished (%s)", id,
                        pd_job_status_name(status));
    } else if (st == PD_OK && status == PD_JOB_RUNNING) {
        /* the worker stops at its next step and sets cancelled */
        st = prep(js, S_JOB_CANCEL_FLAG, &s, err);
        if (st == PD_OK) {
            bind_text(s, 1, id);
            st = run(js, s, "requesting a cancel", err);
        }
    } else if (st == PD_OK) {
        st = prep(js, S_JOB_CANCEL_NOW, &s, err);
        if (st == PD_OK) {
            bind_text(s, 1, id);
            q_bind_i64(s, 2, now_s());
            bind_text(s, 3, pd_job_status_name(status));
            st = run(js, s, "cancelling a job", err);
        }
    }
    if (st == PD_OK && obj) st = job_get_locked(js, id, obj, err);
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_cancel_requested(pd_jobstore *js, const char *id, int *requested,
                                     pd_err *err)
{
    PD_ASSERT(js && requested);
    return pd_jobstore_job_status(js, id, NULL, requested, err);
}

int pd_jobstore_checkpoint_path(pd_jobstore *js, const char *id, char *buf, size_t cap,
                                pd_err *err)
{
    PD_ASSERT(js && buf);
    int st = pd_jobstore_job_status(js, id, NULL, NULL, err);
    if (st < 0) return st;
    PD_ASSERT(id_ok(id, "ftjob-", ID_HEX)); /* the store only makes such ids */
    int n = snprintf(buf, cap, "%s/%s" CKPT_EXT, js->ckpt_dir, id);
    if (n < 0 || (size_t)n >= cap)
        return pd_err_set(err, PD_ERANGE, "checkpoint path: %d bytes do not fit in %zu", n, cap);
    return PD_OK;
}

/* ---- events ---- */

/* The seq of the row named id (prefix + EVENT_HEX hex digits) of job_id that
 * stmt (?1 seq, ?2 job id) finds; PD_ENOTFOUND ("<pre>no <what> ...")
 * otherwise. Under the lock. */
static int seq_find_locked(pd_jobstore *js, int stmt, const char *prefix, const char *pre,
                           const char *what, const char *job_id, const char *id, int64_t *seq,
                           pd_err *err)
{
    char b[96];
    if (!id_ok(id, prefix, EVENT_HEX))
        return pd_err_set(err, PD_ENOTFOUND, "%sno %s '%s'", pre, what, show(b, id));
    *seq = (int64_t)strtoull(id + strlen(prefix), NULL, 16);
    qs *s;
    int st = prep(js, stmt, &s, err);
    if (st < 0) return st;
    q_bind_i64(s, 1, *seq);
    bind_text(s, 2, job_id);
    int rc = q_step(s);
    if (rc == SQLITE_DONE)
        st = pd_err_set(err, PD_ENOTFOUND, "%sno %s '%s' in job %s", pre, what, show(b, id),
                        job_id);
    else if (rc != SQLITE_ROW)
        st = db_fail(js, rc, "finding a row", err);
    done(s);
    return st;
}

int pd_jobstore_event_add(pd_jobstore *js, const char *job_id, const char *level,
                          const char *type, const char *message, const json_t *data,
                          char *id, pd_err *err)
{
    PD_ASSERT(js);
    if (!level || (strcmp(level, "info") && strcmp(level, "warn") && strcmp(level, "error")))
        return pd_err_set(err, PD_EINVAL, "level: want info, warn or error");
    if (!type || (strcmp(type, "message") && strcmp(type, "metrics")))
        return pd_err_set(err, PD_EINVAL, "type: want message or metrics");
    int st = check_text("message", message ? message : "", TEXT_MAX_BYTES, 0, err);
    if (st < 0) return st;
    char *data_text = NULL;
    if (data && !json_is_null(data)) {
        data_text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!data_text) return pd_err_set(err, PD_EINVAL, "data: cannot be serialised");
    }
    pthread_mutex_lock(&js->lock);
    st = job_state(js, job_id, NULL, NULL, NULL, err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_EVENT_INSERT, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, job_id);
        q_bind_i64(s, 2, now_s());
        bind_text(s, 3, level);
        bind_text(s, 4, type);
        bind_text(s, 5, message ? message : "");
        bind_text(s, 6, data_text);
        st = run(js, s, "adding an event", err);
        if (st == PD_OK && id) event_id(id, q_last_id(js));
    }
    pthread_mutex_unlock(&js->lock);
    free(data_text);
    return st;
}

int pd_jobstore_event_list(pd_jobstore *js, const char *job_id, const char *after, int limit,
                           json_t **out, pd_err *err)
{
    PD_ASSERT(js && out);
    *out = NULL;
    int st = check_limit(&limit, PD_JOBSTORE_EVENTS_DEFAULT_LIMIT, err);
    if (st < 0) return st;
    int64_t before = INT64_MAX;
    pthread_mutex_lock(&js->lock);
    st = job_state(js, job_id, NULL, NULL, NULL, err);
    qs *s = NULL;
    if (st == PD_OK && after)
        st = seq_find_locked(js, S_EVENT_FIND, "ftevent-", "after: ", "event", job_id, after,
                             &before, err);
    if (st == PD_OK) st = prep(js, S_EVENT_LIST, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, job_id);
        q_bind_i64(s, 2, before);
        q_bind_int(s, 3, limit + 1);
        st = collect(js, s, limit, event_json, out, err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

/* ---- job progress and results ---- */

/* Runs a one-row update (id bound as ?1) of an unfinished job under the lock. */
static int update_unfinished(pd_jobstore *js, int stmt, const char *id, const char *text,
                             int64_t value, int use_text, const char *what, pd_err *err)
{
    pthread_mutex_lock(&js->lock);
    int st = unfinished_locked(js, id, err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, stmt, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, id);
        if (use_text) bind_text(s, 2, text);
        else if (value >= 0) q_bind_i64(s, 2, value);
        st = run(js, s, what, err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_set_estimated_finish(pd_jobstore *js, const char *id, int64_t when,
                                         pd_err *err)
{
    PD_ASSERT(js);
    return update_unfinished(js, S_JOB_SET_ETA, id, NULL, when, 0,
                             "recording a job's estimated finish", err);
}

int pd_jobstore_job_set_result_files(pd_jobstore *js, const char *id, const json_t *file_ids,
                                     pd_err *err)
{
    PD_ASSERT(js);
    size_t i;
    const json_t *v;
    if (!json_is_array(file_ids))
        return pd_err_set(err, PD_EINVAL, "result_files: not an array");
    json_array_foreach(file_ids, i, v) {
        if (!json_is_string(v) || !id_ok(json_string_value(v), "file-", ID_HEX))
            return pd_err_set(err, PD_EINVAL, "result_files: entry %zu is not a file id", i);
    }
    char *text = json_dumps(file_ids, JSON_COMPACT);
    if (!text) return oom(err);
    int st = update_unfinished(js, S_JOB_SET_RESULTS, id, text, 0, 1,
                               "recording a job's result files", err);
    free(text);
    return st;
}

/* ---- checkpoints ---- */

int pd_jobstore_checkpoint_add(pd_jobstore *js, const char *job_id, int step,
                               const char *model, const json_t *metrics, char *id,
                               pd_err *err)
{
    PD_ASSERT(js);
    char b[96];
    if (step < 0) return pd_err_set(err, PD_EINVAL, "step_number: %d is negative", step);
    if (!model || !pd_task_name_valid(model))
        return pd_err_set(err, PD_EINVAL, "fine_tuned_model_checkpoint: '%s' is not a task "
                          "name", show(b, model));
    if (!json_is_object(metrics)) return pd_err_set(err, PD_EINVAL, "metrics: not an object");
    char *text = json_dumps(metrics, JSON_COMPACT);
    if (!text) return oom(err);
    pthread_mutex_lock(&js->lock);
    int st = job_state(js, job_id, NULL, NULL, NULL, err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_CKPT_INSERT, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, job_id);
        q_bind_i64(s, 2, now_s());
        q_bind_int(s, 3, step);
        bind_text(s, 4, model);
        bind_text(s, 5, text);
        st = run(js, s, "adding a checkpoint", err);
        if (st == PD_OK && id) ckpt_id(id, q_last_id(js));
    }
    pthread_mutex_unlock(&js->lock);
    free(text);
    return st;
}

static int ckpt_find_locked(pd_jobstore *js, const char *job_id, const char *id, int64_t *seq,
                            pd_err *err)
{
    return seq_find_locked(js, S_CKPT_FIND, "ftckpt-", "", "checkpoint", job_id, id, seq, err);
}

int pd_jobstore_checkpoint_delete(pd_jobstore *js, const char *job_id, const char *id,
                                  pd_err *err)
{
    PD_ASSERT(js);
    int64_t seq = 0;
    pthread_mutex_lock(&js->lock);
    int st = ckpt_find_locked(js, job_id, id, &seq, err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_CKPT_DELETE, &s, err);
    if (st == PD_OK) {
        q_bind_i64(s, 1, seq);
        bind_text(s, 2, job_id);
        st = run(js, s, "deleting a checkpoint", err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_checkpoint_list(pd_jobstore *js, const char *job_id, const char *after,
                                int limit, json_t **out, pd_err *err)
{
    PD_ASSERT(js && out);
    *out = NULL;
    int st = check_limit(&limit, PD_JOBSTORE_CHECKPOINTS_DEFAULT_LIMIT, err);
    if (st < 0) return st;
    int64_t before = INT64_MAX;
    pthread_mutex_lock(&js->lock);
    st = job_state(js, job_id, NULL, NULL, NULL, err);
    if (st == PD_OK && after)
        st = seq_find_locked(js, S_CKPT_FIND, "ftckpt-", "after: ", "checkpoint", job_id, after,
                             &before, err);
    qs *s = NULL;
    if (st == PD_OK) st = prep(js, S_CKPT_LIST, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, job_id);
        q_bind_i64(s, 2, before);
        q_bind_int(s, 3, limit + 1);
        st = collect(js, s, limit, ckpt_json, out, err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

/* ---- leases (PostgreSQL; a single process needs none) ---- */

void pd_jobstore_set_lease_seconds(pd_jobstore *js, int seconds)
{
    PD_ASSERT(js && seconds >= 1);
    pthread_mutex_lock(&js->lock);
    js->lease_s = seconds;
    pthread_mutex_unlock(&js->lock);
}

int pd_jobstore_shared(const pd_jobstore *js)
{
    return js->pg != NULL;
}

int pd_jobstore_job_renew_lease(pd_jobstore *js, const char *id, int *cancel_requested,
                                pd_err *err)
{
    PD_ASSERT(js);
    if (!js->pg) return pd_jobstore_job_status(js, id, NULL, cancel_requested, err);
    pthread_mutex_lock(&js->lock);
    qs *s;
    int st = prep(js, S_JOB_RENEW, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, id);
        bind_text(s, 2, js->owner);
        q_bind_i64(s, 3, js->lease_s);
        int rc = q_step(s);
        if (rc == SQLITE_ROW) {
            if (cancel_requested) *cancel_requested = q_int(s, 0) != 0;
        } else {
            st = rc == SQLITE_DONE
                     ? pd_err_set(err, PD_EBUSY, "job %s: lease lost (taken over, or the job "
                                  "left queued/running)", id)
                     : db_fail(js, rc, "renewing a lease", err);
        }
        done(s);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

int pd_jobstore_job_release_lease(pd_jobstore *js, const char *id, pd_err *err)
{
    PD_ASSERT(js);
    if (!js->pg) return PD_OK;
    pthread_mutex_lock(&js->lock);
    qs *s;
    int st = prep(js, S_JOB_RELEASE, &s, err);
    if (st == PD_OK) {
        bind_text(s, 1, id);
        bind_text(s, 2, js->owner);
        st = run(js, s, "releasing a lease", err);
    }
    pthread_mutex_unlock(&js->lock);
    return st;
}

/* ---- migration: an SQLite store into PostgreSQL ---- */

/* The tables in copy order (parents first) and their columns, the same on
 * both backends (PostgreSQL's lease columns start empty). */
static const char *const copy_tables[][2] = {
    {"files", "seq, id, filename, purpose, bytes, n_lines, created_at, status"},
    {"jobs", "seq, id, created_at, finished_at, model, training_file, validation_file, "
             "suffix, seed, hyperparameters, method, status, cancel_requested, "
             "fine_tuned_model, trained_tokens, error_code, error_message, error_param, "
             "result_files, estimated_finish"},
    {"events", "seq, job_id, created_at, level, type, message, data"},
    {"checkpoints", "seq, job_id, created_at, step, model, metrics"},
};
#define COPY_MAX_COLS 20

/* Copies table t's rows from src (SQLite) into dst (PostgreSQL, inside the
 * caller's transaction); adds the count to *rows. */
static int copy_table(pd_jobstore *src, pd_jobstore *dst, int t, int64_t *rows, pd_err *err)
{
    const char *table = copy_tables[t][0], *cols = copy_tables[t][1];
    int ncols = 1;
    for (const char *c = cols; *c; c++) ncols += *c == ',';
    PD_ASSERT(ncols <= COPY_MAX_COLS);
    char sel[512], ins[1024];
    snprintf(sel, sizeof sel, "SELECT %s FROM %s ORDER BY seq", cols, table);
    int n = snprintf(ins, sizeof ins, "INSERT INTO %s (%s) VALUES (", table, cols);
    for (int i = 0; i < ncols; i++)
        n += snprintf(ins + n, sizeof ins - (size_t)n, "%s$%d", i ? ", " : "", i + 1);
    snprintf(ins + n, sizeof ins - (size_t)n, ")");
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(src->db, sel, -1, &s, NULL);
    if (rc != SQLITE_OK) return db_fail(src, rc, sel, err);
    int st = PD_OK;
    while (st == PD_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *v[COPY_MAX_COLS];
        for (int i = 0; i < ncols; i++) v[i] = (const char *)sqlite3_column_text(s, i);
        PGresult *r = PQexecParams(dst->pg, ins, ncols, NULL, v, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            pg_keep_msg(dst, PQresultErrorMessage(r));
            st = db_fail(dst, SQLITE_IOERR, table, err);
        }
        PQclear(r);
        (*rows)++;
    }
    if (st == PD_OK && rc != SQLITE_DONE) st = db_fail(src, rc, sel, err);
    sqlite3_finalize(s);
    if (st < 0) return st;
    /* the next seq continues after the copied ones (event and checkpoint ids) */
    char setval[256];
    snprintf(setval, sizeof setval, "SELECT setval(pg_get_serial_sequence('%s', 'seq'), "
             "COALESCE(max(seq), 0) + 1, false) FROM %s", table, table);
    return pg_exec(dst, setval, "continuing a sequence", err);
}

int pd_jobstore_migrate(const char *from_dir, const char *to_url, int64_t *rows, pd_err *err)
{
    PD_ASSERT(rows);
    *rows = 0;
    if (!pd_jobstore_is_url(to_url))
        return pd_err_set(err, PD_EINVAL, "to: want a postgres:// or postgresql:// URL");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/" DB_NAME, from_dir ? from_dir : "");
    if (!from_dir || access(path, F_OK) < 0)
        return pd_err_set(err, PD_ENOTFOUND, "from: %s: no job store there", path);
    pd_jobstore *src = NULL, *dst = NULL;
    int st = pd_jobstore_open(from_dir, &src, err); /* locks it: no server may run on it */
    if (st == PD_OK) st = pd_jobstore_open_db(from_dir, to_url, &dst, err);
    if (st < 0) goto out;
    PGresult *r = PQexec(dst->pg, "SELECT (SELECT count(*) FROM files) + (SELECT count(*) "
                                  "FROM jobs)");
    int used = PQresultStatus(r) != PGRES_TUPLES_OK || strcmp(PQgetvalue(r, 0, 0), "0") != 0;
    PQclear(r);
    if (used) {
        st = pd_err_set(err, PD_EEXIST, "to: %s already holds files or jobs: migrate into an "
                        "empty database", dst->db_path);
        goto out;
    }
    pthread_mutex_lock(&dst->lock);
    st = pg_exec(dst, "BEGIN", "migrate", err); /* all or nothing */
    for (int t = 0; st == PD_OK && t < (int)(sizeof copy_tables / sizeof copy_tables[0]); t++)
        st = copy_table(src, dst, t, rows, err);
    if (st == PD_OK) st = pg_exec(dst, "COMMIT", "migrate", err);
    else PQclear(PQexec(dst->pg, "ROLLBACK"));
    pthread_mutex_unlock(&dst->lock);
out:
    pd_jobstore_close(dst);
    pd_jobstore_close(src);
    return st;
}
