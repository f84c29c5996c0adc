/* test_jobstore.c — the durable store of the fine-tuning API over a real
 * SQLite database in a temp directory: files, jobs and events in OpenAI's
 * shapes; the status flow (every pair of statuses); cancel; list order and
 * pagination; next_runnable, including a job left running; durability
 * across close/reopen and across crashes (a child that _exit()s without
 * closing, and one killed with SIGKILL after acknowledging writes); orphan
 * cleanup at open; the schema version; one handle used from 4 threads. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "prefixd/fsutil.h"
#include "prefixd/jobstore.h"

/* ---- fixture: one temp data directory per test ---- */

typedef struct fixture {
    char root[512]; /* mkdtemp'd */
    char dir[600];  /* <root>/data: open creates it */
    char db[64];    /* PostgreSQL: this test's own schema ("" on SQLite) */
    char url[1024]; /* PostgreSQL: its URL */
} fixture;

/* PostgreSQL runs: PD_TEST_PG_HOST (a socket directory) and PD_TEST_PG_PORT
 * name a server where user prefixd may create schemas; each test gets a
 * fresh one in database postgres (tests/e2e/test_pg.py starts the server and runs this binary). */
static const char *pg_host, *pg_port;

static PGconn *pg_admin(void)
{
    char url[1024];
    snprintf(url, sizeof url, "postgresql://prefixd@/postgres?host=%s&port=%s", pg_host,
             pg_port);
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "admin connection: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

static int pg_run(const char *fmt, const char *db)
{
    PGconn *c = pg_admin();
    if (!c) return -1;
    char sql[256];
    snprintf(sql, sizeof sql, fmt, db);
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) fprintf(stderr, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}

static int open_at(const fixture *f, pd_jobstore **js, pd_err *err)
{
    return pd_jobstore_open_db(f->dir, f->url[0] ? f->url : NULL, js, err);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    const char *tmp = getenv("TMPDIR");
    int n = snprintf(f->root, sizeof f->root, "%s/pd-jobstore-XXXXXX",
                     tmp && *tmp ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= sizeof f->root || !mkdtemp(f->root)) {
        free(f);
        return -1;
    }
    snprintf(f->dir, sizeof f->dir, "%s/data", f->root);
    if (pg_host) {
        static int counter;
        snprintf(f->db, sizeof f->db, "pdtest_%ld_%d", (long)getpid(), counter++);
        /* a schema of its own (cheaper than a database), set as search_path */
        snprintf(f->url, sizeof f->url, "postgresql://prefixd@/postgres?host=%s&port=%s"
                 "&options=-csearch_path%%3D%s", pg_host, pg_port, f->db);
        if (pg_run("CREATE SCHEMA %s", f->db) < 0) {
            rmdir(f->root);
            free(f);
            return -1;
        }
    }
    *state = f;
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    if (f->db[0]) pg_run("SET client_min_messages = warning; DROP SCHEMA %s CASCADE", f->db);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static pd_jobstore *open_store(const fixture *f)
{
    pd_jobstore *js = NULL;
    pd_err err;
    int st = open_at(f, &js, &err);
    if (st != PD_OK) fail_msg("open: %s", err.msg);
    return js;
}

static const char DATA[] = "{\"prompt\": \"a\", \"completion\": \"b\"}\n"
                           "\n"
                           "   \n"
                           "{\"text\": \"c\"}\n"
                           "{\"text\": \"d\"}";

static void make_file(pd_jobstore *js, const char *purpose, char id[PD_JOBSTORE_ID_MAX])
{
    pd_jobstore_file_info fi;
    pd_err err;
    int st = pd_jobstore_file_create(js, "train.jsonl", purpose, DATA, sizeof DATA - 1, &fi,
                                     NULL, &err);
    if (st != PD_OK) fail_msg("file_create: %s", err.msg);
    strcpy(id, fi.id);
}

static void make_job(pd_jobstore *js, const char *file_id, char id[PD_JOBSTORE_ID_MAX])
{
    json_t *p = json_pack("{s:s, s:s, s:s, s:i}", "model", "stories260K", "training_file",
                          file_id, "suffix", "pirate", "seed", 42);
    pd_err err;
    int st = pd_jobstore_job_create(js, p, id, NULL, &err);
    json_decref(p);
    if (st != PD_OK) fail_msg("job_create: %s", err.msg);
}

static void set_status(pd_jobstore *js, const char *id, pd_job_status s)
{
    pd_err err;
    int st = pd_jobstore_job_set_status(js, id, s, NULL, &err);
    if (st != PD_OK) fail_msg("set_status %s: %s", pd_job_status_name(s), err.msg);
}

/* A new job walked along the flow to status s. */
static void job_in(pd_jobstore *js, const char *file_id, pd_job_status s,
                   char id[PD_JOBSTORE_ID_MAX])
{
    make_job(js, file_id, id);
    if (s == PD_JOB_VALIDATING_FILES) return;
    if (s == PD_JOB_FAILED || s == PD_JOB_CANCELLED) {
        set_status(js, id, s);
        return;
    }
    set_status(js, id, PD_JOB_QUEUED);
    if (s == PD_JOB_QUEUED) return;
    set_status(js, id, PD_JOB_RUNNING);
    if (s == PD_JOB_RUNNING) return;
    set_status(js, id, s);
}

static json_t *get_job(pd_jobstore *js, const char *id)
{
    json_t *o = NULL;
    pd_err err;
    if (pd_jobstore_job_get(js, id, &o, &err) != PD_OK) fail_msg("job_get: %s", err.msg);
    return o;
}

static const char *str_of(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int64_t user_version(const fixture *f)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/prefixd.db", f->dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

/* ---- tests ---- */

static void test_open_layout_and_lock(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/prefixd.db", f->dir);
    assert_true(file_exists(path));
    snprintf(path, sizeof path, "%s/prefixd.db-wal", f->dir);
    assert_true(file_exists(path)); /* WAL mode */
    snprintf(path, sizeof path, "%s/files", f->dir);
    assert_true(file_exists(path));
    snprintf(path, sizeof path, "%s/checkpoints", f->dir);
    assert_true(file_exists(path));
    assert_string_equal(pd_jobstore_data_dir(js), f->dir);

    /* a second opener is refused while the first holds the directory */
    pd_jobstore *other = NULL;
    pd_err err;
    assert_int_equal(pd_jobstore_open(f->dir, &other, &err), PD_EBUSY);
    assert_null(other);
    assert_non_null(strstr(err.msg, "in use"));
    pd_jobstore_close(js);
    pd_jobstore_close(NULL);

    assert_int_equal(user_version(f), PD_JOBSTORE_SCHEMA_VERSION);
    js = open_store(f); /* reopen: no migration, nothing lost */
    pd_jobstore_close(js);
    assert_int_equal(pd_jobstore_open("", &other, &err), PD_EINVAL);
}

static void test_schema_version_and_bad_db(void **state)
{
    fixture *f = *state;
    pd_jobstore_close(open_store(f));
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/prefixd.db", f->dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    pd_jobstore *js = NULL;
    pd_err err;
    assert_int_equal(pd_jobstore_open(f->dir, &js, &err), PD_EVERSION);
    assert_non_null(strstr(err.msg, "99"));

    /* not a database at all */
    static const char junk[] = "this is not an SQLite database, not at all, no.......";
    char wal[PATH_MAX + 8];
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(wal);
    snprintf(wal, sizeof wal, "%s-shm", path);
    unlink(wal);
    assert_int_equal(pd_write_file_atomic(path, junk, sizeof junk, NULL), PD_OK);
    assert_int_equal(pd_jobstore_open(f->dir, &js, &err), PD_EFORMAT);
    assert_null(js);
}

static void test_files_crud(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    pd_jobstore_file_info fi;
    json_t *obj = NULL;
    assert_int_equal(pd_jobstore_file_create(js, "train.jsonl", "fine-tune", DATA,
                                             sizeof DATA - 1, &fi, &obj, &err), PD_OK);
    assert_int_equal(strlen(fi.id), 5 + 24);
    assert_memory_equal(fi.id, "file-", 5);
    assert_int_equal(fi.bytes, sizeof DATA - 1);
    assert_int_equal(fi.n_lines, 3); /* blank and white-space lines do not count */
    assert_true(fi.created_at > 1600000000);

    /* the OpenAI file object */
    assert_string_equal(str_of(obj, "id"), fi.id);
    assert_string_equal(str_of(obj, "object"), "file");
    assert_int_equal(json_integer_value(json_object_get(obj, "bytes")), sizeof DATA - 1);
    assert_int_equal(json_integer_value(json_object_get(obj, "created_at")), fi.created_at);
    assert_string_equal(str_of(obj, "filename"), "train.jsonl");
    assert_string_equal(str_of(obj, "purpose"), "fine-tune");
    assert_string_equal(str_of(obj, "status"), "processed");
    json_t *got = NULL;
    assert_int_equal(pd_jobstore_file_get(js, fi.id, &got, &err), PD_OK);
    assert_true(json_equal(obj, got));
    json_decref(got);
    json_decref(obj);

    pd_jobstore_file_info fi2;
    assert_int_equal(pd_jobstore_file_stat(js, fi.id, &fi2, &err), PD_OK);
    assert_string_equal(fi2.id, fi.id);
    assert_int_equal(fi2.bytes, fi.bytes);
    assert_int_equal(fi2.created_at, fi.created_at);
    assert_int_equal(fi2.n_lines, fi.n_lines);

    /* the contents, where the trainer finds them */
    char path[PATH_MAX];
    assert_int_equal(pd_jobstore_file_path(js, fi.id, path, sizeof path, &err), PD_OK);
    char expect[PATH_MAX + 64];
    snprintf(expect, sizeof expect, "%s/files/%s.jsonl", f->dir, fi.id);
    assert_string_equal(path, expect);
    char *data;
    size_t n;
    assert_int_equal(pd_read_file(path, 1 << 20, &data, &n, &err), PD_OK);
    assert_int_equal(n, sizeof DATA - 1);
    assert_memory_equal(data, DATA, n);
    free(data);
    char small[16];
    assert_int_equal(pd_jobstore_file_path(js, fi.id, small, sizeof small, &err), PD_ERANGE);

    /* an empty file is fine */
    assert_int_equal(pd_jobstore_file_create(js, "empty.jsonl", "fine-tune", NULL, 0, &fi2,
                                             NULL, &err), PD_OK);
    assert_int_equal(fi2.bytes, 0);
    assert_int_equal(fi2.n_lines, 0);

    /* bad arguments store nothing */
    assert_int_equal(pd_jobstore_file_create(js, "", "fine-tune", "x", 1, NULL, NULL, &err),
                     PD_EINVAL);
    assert_memory_equal(err.msg, "filename:", 9);
    assert_int_equal(pd_jobstore_file_create(js, "a\xff.jsonl", "fine-tune", "x", 1, NULL,
                                             NULL, &err), PD_EINVAL);
    assert_int_equal(pd_jobstore_file_create(js, "a.jsonl", NULL, "x", 1, NULL, NULL, &err),
                     PD_EINVAL);
    assert_memory_equal(err.msg, "purpose:", 8);

    /* unknown ids, including hostile ones */
    assert_int_equal(pd_jobstore_file_get(js, "file-000000000000000000000000", &got, &err),
                     PD_ENOTFOUND);
    assert_null(got);
    assert_int_equal(pd_jobstore_file_get(js, "../../etc/passwd", &got, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_file_path(js, "../prefixd.db", path, sizeof path, &err),
                     PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_file_get(js, "' OR 1=1 --", &got, &err), PD_ENOTFOUND);

    /* delete: the row and the contents */
    json_t *del = NULL;
    assert_int_equal(pd_jobstore_file_delete(js, fi.id, &del, &err), PD_OK);
    assert_string_equal(str_of(del, "id"), fi.id);
    assert_string_equal(str_of(del, "object"), "file");
    assert_true(json_is_true(json_object_get(del, "deleted")));
    json_decref(del);
    assert_false(file_exists(expect));
    assert_int_equal(pd_jobstore_file_get(js, fi.id, &got, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_file_path(js, fi.id, path, sizeof path, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_file_delete(js, fi.id, NULL, &err), PD_ENOTFOUND);
    pd_jobstore_close(js);
}

static void test_files_list(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char ids[5][PD_JOBSTORE_ID_MAX];
    for (int i = 0; i < 5; i++) make_file(js, i == 2 ? "assistants" : "fine-tune", ids[i]);

    json_t *l = NULL;
    assert_int_equal(pd_jobstore_file_list(js, NULL, NULL, 0, &l, &err), PD_OK);
    assert_string_equal(str_of(l, "object"), "list");
    assert_false(json_is_true(json_object_get(l, "has_more")));
    json_t *data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 5);
    for (int i = 0; i < 5; i++) /* most recent first */
        assert_string_equal(str_of(json_array_get(data, (size_t)i), "id"), ids[4 - i]);
    json_decref(l);

    /* pages of two, by purpose */
    assert_int_equal(pd_jobstore_file_list(js, "fine-tune", NULL, 2, &l, &err), PD_OK);
    data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(str_of(json_array_get(data, 0), "id"), ids[4]);
    assert_string_equal(str_of(json_array_get(data, 1), "id"), ids[3]);
    assert_true(json_is_true(json_object_get(l, "has_more")));
    json_decref(l);
    assert_int_equal(pd_jobstore_file_list(js, "fine-tune", ids[3], 2, &l, &err), PD_OK);
    data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(str_of(json_array_get(data, 0), "id"), ids[1]);
    assert_string_equal(str_of(json_array_get(data, 1), "id"), ids[0]);
    assert_false(json_is_true(json_object_get(l, "has_more")));
    json_decref(l);

    assert_int_equal(pd_jobstore_file_list(js, NULL, "file-nope", 2, &l, &err), PD_ENOTFOUND);
    assert_memory_equal(err.msg, "after:", 6);
    assert_int_equal(pd_jobstore_file_list(js, NULL, NULL, -1, &l, &err), PD_EINVAL);
    assert_memory_equal(err.msg, "limit:", 6);
    assert_int_equal(pd_jobstore_file_list(js, NULL, NULL, PD_JOBSTORE_LIST_MAX + 1, &l, &err),
                     PD_EINVAL);
    assert_null(l);
    pd_jobstore_close(js);
}

static void test_job_create_get(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char train[PD_JOBSTORE_ID_MAX], valid[PD_JOBSTORE_ID_MAX], other[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", train);
    make_file(js, "fine-tune", valid);
    make_file(js, "assistants", other);

    json_t *p = json_pack(
        "{s:s, s:s, s:s, s:s, s:i, s:{s:i, s:i, s:f}, s:{s:s, s:{s:{s:i, s:b, s:i, s:f, s:s}}},"
        " s:s}",
        "model", "stories260K", "training_file", train, "validation_file", valid, "suffix",
        "pirate-v1", "seed", 7, "hyperparameters", "n_epochs", 3, "batch_size", 4,
        "learning_rate_multiplier", 1.5, "method", "type", "prefix", "prefix", "hyperparameters",
        "num_virtual_tokens", 10, "prefix_projection", 1, "encoder_hidden_size", 64,
        "learning_rate", 0.01, "init_text", "Arr, matey", "ignored", "x");
    char id[PD_JOBSTORE_ID_MAX];
    json_t *obj = NULL;
    assert_int_equal(pd_jobstore_job_create(js, p, id, &obj, &err), PD_OK);
    assert_int_equal(strlen(id), 6 + 24);
    assert_memory_equal(id, "ftjob-", 6);

    /* the OpenAI job object */
    assert_string_equal(str_of(obj, "id"), id);
    assert_string_equal(str_of(obj, "object"), "fine_tuning.job");
    assert_true(json_integer_value(json_object_get(obj, "created_at")) > 1600000000);
    assert_true(json_is_null(json_object_get(obj, "finished_at")));
    assert_string_equal(str_of(obj, "model"), "stories260K");
    assert_true(json_is_null(json_object_get(obj, "fine_tuned_model")));
    assert_string_equal(str_of(obj, "organization_id"), "prefixd");
    assert_string_equal(str_of(obj, "status"), "validating_files");
    assert_string_equal(str_of(obj, "training_file"), train);
    assert_string_equal(str_of(obj, "validation_file"), valid);
    assert_true(json_equal(json_object_get(obj, "hyperparameters"),
                           json_object_get(p, "hyperparameters")));
    assert_true(json_equal(json_object_get(obj, "method"), json_object_get(p, "method")));
    assert_int_equal(json_integer_value(json_object_get(obj, "seed")), 7);
    assert_true(json_is_null(json_object_get(obj, "trained_tokens")));
    assert_true(json_is_null(json_object_get(obj, "error")));
    assert_true(json_is_array(json_object_get(obj, "result_files")));
    assert_int_equal(json_array_size(json_object_get(obj, "result_files")), 0);
    assert_true(json_is_null(json_object_get(obj, "estimated_finish")));
    assert_string_equal(str_of(obj, "user_provided_suffix"), "pirate-v1");
    assert_null(json_object_get(obj, "ignored"));
    json_t *got = get_job(js, id);
    assert_true(json_equal(obj, got));
    json_decref(got);
    json_decref(obj);

    /* what the worker reads back */
    json_t *params = NULL;
    assert_int_equal(pd_jobstore_job_params(js, id, &params, &err), PD_OK);
    json_object_del(p, "ignored");
    assert_true(json_equal(params, p));
    json_decref(params);
    json_decref(p);

    /* the minimum: a seed is drawn and kept, method defaults to prefix */
    p = json_pack("{s:s, s:s}", "model", "m", "training_file", train);
    assert_int_equal(pd_jobstore_job_create(js, p, id, &obj, &err), PD_OK);
    assert_true(json_is_integer(json_object_get(obj, "seed")));
    assert_true(json_integer_value(json_object_get(obj, "seed")) >= 0);
    assert_true(json_is_null(json_object_get(obj, "validation_file")));
    assert_true(json_is_null(json_object_get(obj, "user_provided_suffix")));
    assert_string_equal(str_of(json_object_get(obj, "method"), "type"), "prefix");
    assert_int_equal(json_object_size(json_object_get(obj, "hyperparameters")), 0);
    got = get_job(js, id);
    assert_true(json_equal(json_object_get(obj, "seed"), json_object_get(got, "seed")));
    json_decref(got);
    json_decref(obj);
    json_decref(p);

    /* refusals name the parameter */
    static const struct {
        const char *json;
        int status;
        const char *param;
    } bad[] = {
        {"[]", PD_EINVAL, "body:"},
        {"{\"training_file\": \"%s\"}", PD_EINVAL, "model:"},
        {"{\"model\": 3, \"training_file\": \"%s\"}", PD_EINVAL, "model:"},
        {"{\"model\": \"m\"}", PD_EINVAL, "training_file:"},
        {"{\"model\": \"m\", \"training_file\": \"file-nope\"}", PD_ENOTFOUND, "training_file:"},
        {"{\"model\": \"m\", \"training_file\": \"%s\", \"validation_file\": \"file-x\"}",
         PD_ENOTFOUND, "validation_file:"},
        {"{\"model\": \"m\", \"training_file\": \"%s\", \"suffix\": \"../evil\"}", PD_EINVAL,
         "suffix:"},
        {"{\"model\": \"m\", \"training_file\": \"%s\", \"seed\": 1.5}", PD_EINVAL, "seed:"},
        {"{\"model\": \"m\", \"training_file\": \"%s\", \"hyperparameters\": 1}", PD_EINVAL,
         "hyperparameters:"},
        {"{\"model\": \"m\", \"training_file\": \"%s\", \"method\": \"prefix\"}", PD_EINVAL,
         "method:"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, bad[i].json, train);
        json_t *b = json_loads(text, JSON_DECODE_ANY, NULL);
        assert_non_null(b);
        assert_int_equal(pd_jobstore_job_create(js, b, id, NULL, &err), bad[i].status);
        assert_memory_equal(err.msg, bad[i].param, strlen(bad[i].param));
        json_decref(b);
    }
    /* a file uploaded for another purpose */
    p = json_pack("{s:s, s:s}", "model", "m", "training_file", other);
    assert_int_equal(pd_jobstore_job_create(js, p, id, NULL, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "purpose"));
    json_decref(p);

    assert_int_equal(pd_jobstore_job_get(js, "ftjob-nope", &got, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_job_params(js, "ftjob-nope", &got, &err), PD_ENOTFOUND);
    pd_jobstore_close(js);
}

static void test_status_flow(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", file);

    /* allowed[from][to], in enum order */
    static const int allowed[PD_JOB_STATUS_COUNT][PD_JOB_STATUS_COUNT] = {
        /*                 val que run suc fai can */
        /* validating */ {0, 1, 0, 0, 1, 1},
        /* queued     */ {0, 0, 1, 0, 1, 1},
        /* running    */ {0, 1, 0, 1, 1, 1},
        /* succeeded  */ {0, 0, 0, 0, 0, 0},
        /* failed     */ {0, 0, 0, 0, 0, 0},
        /* cancelled  */ {0, 0, 0, 0, 0, 0},
    };
    for (int from = 0; from < PD_JOB_STATUS_COUNT; from++) {
        for (int to = 0; to < PD_JOB_STATUS_COUNT; to++) {
            char id[PD_JOBSTORE_ID_MAX];
            job_in(js, file, (pd_job_status)from, id);
            int st = pd_jobstore_job_set_status(js, id, (pd_job_status)to, NULL, &err);
            pd_job_status now;
            assert_int_equal(pd_jobstore_job_status(js, id, &now, NULL, &err), PD_OK);
            if (allowed[from][to]) {
                assert_int_equal(st, PD_OK);
                assert_int_equal(now, to);
            } else {
                assert_int_equal(st, PD_EINVAL);
                assert_int_equal(now, from);
            }
            json_t *o = get_job(js, id);
            int finished = !json_is_null(json_object_get(o, "finished_at"));
            assert_int_equal(finished, pd_job_status_final(now));
            json_decref(o);
        }
    }
    assert_int_equal(pd_jobstore_job_set_status(js, "ftjob-nope", PD_JOB_QUEUED, NULL, &err),
                     PD_ENOTFOUND);

    /* names */
    for (int s = 0; s < PD_JOB_STATUS_COUNT; s++)
        assert_int_equal(pd_job_status_parse(pd_job_status_name((pd_job_status)s)), s);
    assert_int_equal(pd_job_status_parse("paused"), -1);

    /* failure with an error object */
    char id[PD_JOBSTORE_ID_MAX];
    job_in(js, file, PD_JOB_RUNNING, id);
    pd_jobstore_job_error e = {"invalid_training_file", "train.jsonl:17: \"completion\" is missing",
                               "training_file"};
    assert_int_equal(pd_jobstore_job_set_status(js, id, PD_JOB_FAILED, &e, &err), PD_OK);
    json_t *o = get_job(js, id);
    assert_string_equal(str_of(o, "status"), "failed");
    json_t *eo = json_object_get(o, "error");
    assert_string_equal(str_of(eo, "code"), e.code);
    assert_string_equal(str_of(eo, "message"), e.message);
    assert_string_equal(str_of(eo, "param"), e.param);
    json_decref(o);

    /* the result, recorded before the last transition */
    job_in(js, file, PD_JOB_RUNNING, id);
    assert_int_equal(pd_jobstore_job_set_result(js, id, NULL, 1000, &err), PD_OK);
    assert_int_equal(pd_jobstore_job_set_result(js, id, "pirate", -1, &err), PD_OK);
    assert_int_equal(pd_jobstore_job_set_result(js, id, "../x", -1, &err), PD_EINVAL);
    set_status(js, id, PD_JOB_SUCCEEDED);
    o = get_job(js, id);
    assert_string_equal(str_of(o, "fine_tuned_model"), "pirate");
    assert_int_equal(json_integer_value(json_object_get(o, "trained_tokens")), 1000);
    assert_true(json_is_null(json_object_get(o, "error")));
    assert_true(json_integer_value(json_object_get(o, "finished_at")) >=
                json_integer_value(json_object_get(o, "created_at")));
    json_decref(o);
    assert_int_equal(pd_jobstore_job_set_result(js, id, NULL, 5, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "already finished"));
    pd_jobstore_close(js);
}

static void test_cancel(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], a[PD_JOBSTORE_ID_MAX], b[PD_JOBSTORE_ID_MAX],
        c[PD_JOBSTORE_ID_MAX], d[PD_JOBSTORE_ID_MAX], e[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", file);
    job_in(js, file, PD_JOB_VALIDATING_FILES, a);
    job_in(js, file, PD_JOB_QUEUED, b);
    job_in(js, file, PD_JOB_RUNNING, c);
    job_in(js, file, PD_JOB_SUCCEEDED, d);
    job_in(js, file, PD_JOB_RUNNING, e);

    /* not started: cancelled at once */
    json_t *o = NULL;
    assert_int_equal(pd_jobstore_job_request_cancel(js, a, &o, &err), PD_OK);
    assert_string_equal(str_of(o, "status"), "cancelled");
    assert_false(json_is_null(json_object_get(o, "finished_at")));
    json_decref(o);
    assert_int_equal(pd_jobstore_job_request_cancel(js, b, NULL, &err), PD_OK);
    pd_job_status s;
    int requested;
    assert_int_equal(pd_jobstore_job_status(js, b, &s, &requested, &err), PD_OK);
    assert_int_equal(s, PD_JOB_CANCELLED);

    /* running: flagged for the worker, which then stops it */
    assert_int_equal(pd_jobstore_job_cancel_requested(js, c, &requested, &err), PD_OK);
    assert_int_equal(requested, 0);
    assert_int_equal(pd_jobstore_job_request_cancel(js, c, &o, &err), PD_OK);
    assert_string_equal(str_of(o, "status"), "running");
    json_decref(o);
    assert_int_equal(pd_jobstore_job_request_cancel(js, c, NULL, &err), PD_OK); /* again */
    assert_int_equal(pd_jobstore_job_cancel_requested(js, c, &requested, &err), PD_OK);
    assert_int_equal(requested, 1);
    set_status(js, c, PD_JOB_CANCELLED);

    /* finished: refused */
    assert_int_equal(pd_jobstore_job_request_cancel(js, d, NULL, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "already finished"));
    assert_int_equal(pd_jobstore_job_request_cancel(js, c, NULL, &err), PD_EINVAL);
    assert_int_equal(pd_jobstore_job_request_cancel(js, "ftjob-nope", NULL, &err),
                     PD_ENOTFOUND);

    /* a cancel requested before a crash is honoured at the next open; on a
     * shared store (another replica may be running the job) the job stays
     * runnable and the worker that claims it sees the request and cancels */
    assert_int_equal(pd_jobstore_job_request_cancel(js, e, NULL, &err), PD_OK);
    pd_jobstore_close(js);
    js = open_store(f);
    assert_int_equal(pd_jobstore_job_status(js, e, &s, &requested, &err), PD_OK);
    assert_int_equal(s, pg_host ? PD_JOB_RUNNING : PD_JOB_CANCELLED);
    assert_int_equal(requested, 1);
    char next[PD_JOBSTORE_ID_MAX];
    if (pg_host) {
        assert_int_equal(pd_jobstore_job_next_runnable(js, next, NULL, &err), PD_OK);
        assert_string_equal(next, e);
        set_status(js, e, PD_JOB_CANCELLED);
    }
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, NULL, &err), PD_ENOTFOUND);
    pd_jobstore_close(js);
}

static void test_jobs_list(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], ids[5][PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", file);
    for (int i = 0; i < 5; i++) make_job(js, file, ids[i]);

    json_t *l = NULL;
    assert_int_equal(pd_jobstore_job_list(js, NULL, 0, &l, &err), PD_OK);
    assert_string_equal(str_of(l, "object"), "list");
    json_t *data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 5);
    assert_false(json_is_true(json_object_get(l, "has_more")));
    assert_string_equal(str_of(json_array_get(data, 0), "object"), "fine_tuning.job");
    json_decref(l);

    /* walk it in pages of two, newest first */
    const char *after = NULL;
    char cursor[PD_JOBSTORE_ID_MAX];
    int seen = 0, pages = 0;
    for (;;) {
        assert_int_equal(pd_jobstore_job_list(js, after, 2, &l, &err), PD_OK);
        data = json_object_get(l, "data");
        for (size_t i = 0; i < json_array_size(data); i++, seen++)
            assert_string_equal(str_of(json_array_get(data, i), "id"), ids[4 - seen]);
        int more = json_is_true(json_object_get(l, "has_more"));
        pages++;
        if (more) {
            snprintf(cursor, sizeof cursor, "%s",
                     str_of(json_array_get(data, json_array_size(data) - 1), "id"));
            after = cursor;
        }
        json_decref(l);
        if (!more) break;
    }
    assert_int_equal(seen, 5);
    assert_int_equal(pages, 3);

    assert_int_equal(pd_jobstore_job_list(js, "ftjob-nope", 2, &l, &err), PD_ENOTFOUND);
    assert_memory_equal(err.msg, "after:", 6);
    assert_int_equal(pd_jobstore_job_list(js, NULL, -3, &l, &err), PD_EINVAL);
    pd_jobstore_close(js);
}

static void test_events(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], job[PD_JOBSTORE_ID_MAX], job2[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", file);
    make_job(js, file, job);
    make_job(js, file, job2);

    char ids[6][PD_JOBSTORE_ID_MAX], other[PD_JOBSTORE_ID_MAX];
    assert_int_equal(pd_jobstore_event_add(js, job, "info", "message", "Validating training file",
                                           NULL, ids[0], &err), PD_OK);
    assert_int_equal(pd_jobstore_event_add(js, job2, "info", "message", "other job", NULL, other,
                                           &err), PD_OK);
    for (int i = 1; i < 6; i++) {
        json_t *d = json_pack("{s:i, s:f, s:f}", "step", i, "train_loss", 3.0 / i, "valid_loss",
                              2.5 / i);
        char msg[64];
        snprintf(msg, sizeof msg, "Step %d/5: training loss=%.3f", i, 3.0 / i);
        assert_int_equal(pd_jobstore_event_add(js, job, "info", "metrics", msg, d, ids[i], &err),
                         PD_OK);
        json_decref(d);
        assert_true(strcmp(ids[i], ids[i - 1]) > 0); /* ids only grow */
        assert_memory_equal(ids[i], "ftevent-", 8);
    }

    json_t *l = NULL;
    assert_int_equal(pd_jobstore_event_list(js, job, NULL, 0, &l, &err), PD_OK);
    assert_string_equal(str_of(l, "object"), "list");
    json_t *data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 6);
    assert_false(json_is_true(json_object_get(l, "has_more")));
    json_t *newest = json_array_get(data, 0);
    assert_string_equal(str_of(newest, "object"), "fine_tuning.job.event");
    assert_string_equal(str_of(newest, "id"), ids[5]);
    assert_string_equal(str_of(newest, "level"), "info");
    assert_string_equal(str_of(newest, "type"), "metrics");
    assert_non_null(strstr(str_of(newest, "message"), "Step 5/5"));
    assert_true(json_integer_value(json_object_get(newest, "created_at")) > 1600000000);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(newest, "data"), "step")),
                     5);
    json_t *oldest = json_array_get(data, 5);
    assert_string_equal(str_of(oldest, "id"), ids[0]);
    assert_string_equal(str_of(oldest, "type"), "message");
    assert_true(json_is_null(json_object_get(oldest, "data")));
    json_decref(l);

    /* pages of 4: newest four, then the two before */
    assert_int_equal(pd_jobstore_event_list(js, job, NULL, 4, &l, &err), PD_OK);
    data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 4);
    assert_true(json_is_true(json_object_get(l, "has_more")));
    assert_string_equal(str_of(json_array_get(data, 3), "id"), ids[2]);
    json_decref(l);
    assert_int_equal(pd_jobstore_event_list(js, job, ids[2], 4, &l, &err), PD_OK);
    data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(str_of(json_array_get(data, 0), "id"), ids[1]);
    assert_string_equal(str_of(json_array_get(data, 1), "id"), ids[0]);
    assert_false(json_is_true(json_object_get(l, "has_more")));
    json_decref(l);

    /* refusals */
    assert_int_equal(pd_jobstore_event_list(js, job, other, 4, &l, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_event_list(js, job, "ftevent-zz", 4, &l, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_event_list(js, "ftjob-nope", NULL, 4, &l, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_event_add(js, "ftjob-nope", "info", "message", "x", NULL, NULL,
                                           &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_event_add(js, job, "debug", "message", "x", NULL, NULL, &err),
                     PD_EINVAL);
    assert_int_equal(pd_jobstore_event_add(js, job, "info", "loss", "x", NULL, NULL, &err),
                     PD_EINVAL);
    pd_jobstore_close(js);
}

static void test_checkpoints_results_estimate(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], job[PD_JOBSTORE_ID_MAX], job2[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", file);
    job_in(js, file, PD_JOB_RUNNING, job);
    make_job(js, file, job2);

    char ids[4][PD_JOBSTORE_ID_MAX], other[PD_JOBSTORE_ID_MAX];
    for (int i = 0; i < 4; i++) {
        char model[32];
        snprintf(model, sizeof model, "pirate.ckpt-step-%d", 10 * (i + 1));
        json_t *m = json_pack("{s:i, s:f}", "step", 10 * (i + 1), "valid_loss", 1.0 / (i + 1));
        assert_int_equal(pd_jobstore_checkpoint_add(js, job, 10 * (i + 1), model, m, ids[i], &err),
                         PD_OK);
        json_decref(m);
        assert_memory_equal(ids[i], "ftckpt-", 7);
        assert_true(i == 0 || strcmp(ids[i], ids[i - 1]) > 0);
    }
    json_t *m = json_object();
    assert_int_equal(pd_jobstore_checkpoint_add(js, job2, 5, "other", m, other, &err), PD_OK);
    assert_int_equal(pd_jobstore_checkpoint_add(js, job, 5, "bad name!", m, NULL, &err), PD_EINVAL);
    assert_int_equal(pd_jobstore_checkpoint_add(js, job, -1, "x", m, NULL, &err), PD_EINVAL);
    assert_int_equal(pd_jobstore_checkpoint_add(js, "ftjob-nope", 1, "x", m, NULL, &err),
                     PD_ENOTFOUND);
    json_decref(m);

    /* newest first, paged with after; the oldest forgotten */
    assert_int_equal(pd_jobstore_checkpoint_delete(js, job, ids[0], &err), PD_OK);
    assert_int_equal(pd_jobstore_checkpoint_delete(js, job, ids[0], &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_checkpoint_delete(js, job, other, &err), PD_ENOTFOUND);
    json_t *l = NULL;
    assert_int_equal(pd_jobstore_checkpoint_list(js, job, NULL, 2, &l, &err), PD_OK);
    json_t *data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_true(json_is_true(json_object_get(l, "has_more")));
    json_t *c = json_array_get(data, 0);
    assert_string_equal(str_of(c, "object"), "fine_tuning.job.checkpoint");
    assert_string_equal(str_of(c, "id"), ids[3]);
    assert_string_equal(str_of(c, "fine_tuned_model_checkpoint"), "pirate.ckpt-step-40");
    assert_string_equal(str_of(c, "fine_tuning_job_id"), job);
    assert_int_equal(json_integer_value(json_object_get(c, "step_number")), 40);
    assert_float_equal(json_real_value(json_object_get(json_object_get(c, "metrics"),
                                                       "valid_loss")), 0.25, 1e-12);
    json_decref(l);
    assert_int_equal(pd_jobstore_checkpoint_list(js, job, ids[2], 10, &l, &err), PD_OK);
    data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 1);
    assert_string_equal(str_of(json_array_get(data, 0), "id"), ids[1]);
    json_decref(l);
    assert_int_equal(pd_jobstore_checkpoint_list(js, job, other, 10, &l, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_checkpoint_list(js, job, "ftckpt-zz", 10, &l, &err),
                     PD_ENOTFOUND);

    /* the estimate while running; result files before the end; both survive a reopen */
    assert_int_equal(pd_jobstore_job_set_estimated_finish(js, job, 2000000000, &err), PD_OK);
    char res[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune-results", res);
    json_t *ids_json = json_pack("[s]", res);
    assert_int_equal(pd_jobstore_job_set_result_files(js, job, ids_json, &err), PD_OK);
    json_t *bad = json_pack("[s]", "nope");
    assert_int_equal(pd_jobstore_job_set_result_files(js, job, bad, &err), PD_EINVAL);
    json_decref(bad);
    pd_jobstore_close(js);
    js = open_store(f);
    json_t *o = get_job(js, job);
    assert_int_equal(json_integer_value(json_object_get(o, "estimated_finish")), 2000000000);
    assert_true(json_equal(json_object_get(o, "result_files"), ids_json));
    json_decref(o);
    set_status(js, job, PD_JOB_SUCCEEDED); /* a final status clears the estimate */
    o = get_job(js, job);
    assert_true(json_is_null(json_object_get(o, "estimated_finish")));
    assert_true(json_equal(json_object_get(o, "result_files"), ids_json));
    json_decref(o);
    assert_int_equal(pd_jobstore_job_set_estimated_finish(js, job, 1, &err), PD_EINVAL);
    assert_int_equal(pd_jobstore_job_set_result_files(js, job, ids_json, &err), PD_EINVAL);
    json_decref(ids_json);
    pd_jobstore_close(js);
}

static void test_next_runnable(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], a[PD_JOBSTORE_ID_MAX], b[PD_JOBSTORE_ID_MAX],
        c[PD_JOBSTORE_ID_MAX], next[PD_JOBSTORE_ID_MAX];
    pd_job_status s;
    make_file(js, "fine-tune", file);
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_ENOTFOUND);
    make_job(js, file, a);
    make_job(js, file, b);
    make_job(js, file, c);
    /* validating_files is not runnable */
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_ENOTFOUND);
    set_status(js, c, PD_JOB_QUEUED);
    set_status(js, b, PD_JOB_QUEUED);
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_OK);
    assert_string_equal(next, b); /* the oldest, not the first queued */
    assert_int_equal(s, PD_JOB_QUEUED);
    set_status(js, b, PD_JOB_RUNNING);
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_OK);
    assert_string_equal(next, b);
    assert_int_equal(s, PD_JOB_RUNNING);

    /* a crash while b runs: after reopen b is still there to resume */
    pd_jobstore_close(js);
    js = open_store(f);
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_OK);
    assert_string_equal(next, b);
    assert_int_equal(s, PD_JOB_RUNNING);
    set_status(js, b, PD_JOB_SUCCEEDED);
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_OK);
    assert_string_equal(next, c);
    set_status(js, a, PD_JOB_QUEUED); /* older than c: it goes first */
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_OK);
    assert_string_equal(next, a);
    /* a requeued job is runnable again */
    set_status(js, a, PD_JOB_RUNNING);
    set_status(js, a, PD_JOB_QUEUED);
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, &s, &err), PD_OK);
    assert_string_equal(next, a);
    assert_int_equal(s, PD_JOB_QUEUED);
    pd_jobstore_close(js);
}

static void test_paths_and_delete_in_use(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], valid[PD_JOBSTORE_ID_MAX], job[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", file);
    make_file(js, "fine-tune", valid);
    json_t *p = json_pack("{s:s, s:s, s:s}", "model", "m", "training_file", file,
                          "validation_file", valid);
    assert_int_equal(pd_jobstore_job_create(js, p, job, NULL, &err), PD_OK);
    json_decref(p);

    char path[PATH_MAX], expect[PATH_MAX + 64];
    assert_int_equal(pd_jobstore_checkpoint_path(js, job, path, sizeof path, &err), PD_OK);
    snprintf(expect, sizeof expect, "%s/checkpoints/%s.ckpt", f->dir, job);
    assert_string_equal(path, expect);
    assert_int_equal(pd_jobstore_checkpoint_path(js, "ftjob-nope", path, sizeof path, &err),
                     PD_ENOTFOUND);
    char small[8];
    assert_int_equal(pd_jobstore_checkpoint_path(js, job, small, sizeof small, &err), PD_ERANGE);

    /* the worker still needs both files: deleting them is a conflict */
    for (pd_job_status s = PD_JOB_VALIDATING_FILES; s <= PD_JOB_RUNNING; s++) {
        if (s != PD_JOB_VALIDATING_FILES) set_status(js, job, s);
        assert_int_equal(pd_jobstore_file_delete(js, file, NULL, &err), PD_EBUSY);
        assert_non_null(strstr(err.msg, job));
        assert_int_equal(pd_jobstore_file_delete(js, valid, NULL, &err), PD_EBUSY);
    }
    set_status(js, job, PD_JOB_SUCCEEDED);
    assert_int_equal(pd_jobstore_file_delete(js, file, NULL, &err), PD_OK);
    assert_int_equal(pd_jobstore_file_delete(js, valid, NULL, &err), PD_OK);
    json_t *o = get_job(js, job); /* the finished job keeps the ids */
    assert_string_equal(str_of(o, "training_file"), file);
    assert_string_equal(str_of(o, "validation_file"), valid);
    json_decref(o);
    pd_jobstore_close(js);
}

/* Everything a store holds, as JSON, for before/after comparisons. */
static json_t *snapshot(pd_jobstore *js)
{
    json_t *all = json_object(), *files = NULL, *jobs = NULL;
    pd_err err;
    assert_int_equal(pd_jobstore_file_list(js, NULL, NULL, 0, &files, &err), PD_OK);
    assert_int_equal(pd_jobstore_job_list(js, NULL, PD_JOBSTORE_LIST_MAX, &jobs, &err), PD_OK);
    json_t *events = json_object();
    json_t *data = json_object_get(jobs, "data");
    for (size_t i = 0; i < json_array_size(data); i++) {
        const char *id = str_of(json_array_get(data, i), "id");
        json_t *ev = NULL;
        assert_int_equal(pd_jobstore_event_list(js, id, NULL, PD_JOBSTORE_LIST_MAX, &ev, &err),
                         PD_OK);
        json_object_set_new(events, id, ev);
    }
    json_object_set_new(all, "files", files);
    json_object_set_new(all, "jobs", jobs);
    json_object_set_new(all, "events", events);
    return all;
}

static void test_reopen_keeps_everything(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], a[PD_JOBSTORE_ID_MAX], b[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", file);
    job_in(js, file, PD_JOB_SUCCEEDED, a);
    job_in(js, file, PD_JOB_RUNNING, b);
    assert_int_equal(pd_jobstore_job_set_result(js, b, "pirate", 77, &err), PD_OK);
    json_t *d = json_pack("{s:i, s:f}", "step", 1, "train_loss", 2.5);
    assert_int_equal(pd_jobstore_event_add(js, b, "info", "metrics", "step 1", d, NULL, &err),
                     PD_OK);
    json_decref(d);
    assert_int_equal(pd_jobstore_event_add(js, a, "warn", "message", "skipped line 3", NULL, NULL,
                                           &err), PD_OK);
    json_t *before = snapshot(js);
    pd_jobstore_close(js);

    js = open_store(f);
    json_t *after = snapshot(js);
    assert_true(json_equal(before, after));
    assert_int_equal(json_array_size(json_object_get(json_object_get(after, "jobs"), "data")), 2);
    json_decref(before);
    json_decref(after);
    /* the contents are still where the trainer looks */
    char path[PATH_MAX];
    assert_int_equal(pd_jobstore_file_path(js, file, path, sizeof path, &err), PD_OK);
    assert_true(file_exists(path));
    pd_jobstore_close(js);
}

/* ---- crashes: a child process writes and dies without closing ---- */

/* In the child: cmocka's asserts must not run there, so failures exit 2. */
#define CHILD_CHECK(expr) \
    do {                  \
        if (!(expr)) _exit(2); \
    } while (0)

static void test_crash_without_close(void **state)
{
    fixture *f = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        pd_jobstore *js = NULL;
        CHILD_CHECK(open_at(f, &js, NULL) == PD_OK);
        pd_jobstore_file_info fi;
        CHILD_CHECK(pd_jobstore_file_create(js, "t.jsonl", "fine-tune", DATA, sizeof DATA - 1,
                                            &fi, NULL, NULL) == PD_OK);
        json_t *p = json_pack("{s:s, s:s, s:s}", "model", "m", "training_file", fi.id, "suffix",
                              "crash");
        char job[PD_JOBSTORE_ID_MAX];
        CHILD_CHECK(pd_jobstore_job_create(js, p, job, NULL, NULL) == PD_OK);
        CHILD_CHECK(pd_jobstore_job_set_status(js, job, PD_JOB_QUEUED, NULL, NULL) == PD_OK);
        CHILD_CHECK(pd_jobstore_job_set_status(js, job, PD_JOB_RUNNING, NULL, NULL) == PD_OK);
        for (int i = 0; i < 3; i++)
            CHILD_CHECK(pd_jobstore_event_add(js, job, "info", "metrics", "step", NULL, NULL,
                                              NULL) == PD_OK);
        _exit(0); /* no close, no checkpoint of the WAL, no atexit */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    pd_jobstore *js = open_store(f);
    pd_err err;
    json_t *l = NULL;
    assert_int_equal(pd_jobstore_job_list(js, NULL, 0, &l, &err), PD_OK);
    json_t *data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 1);
    json_t *job = json_array_get(data, 0);
    assert_string_equal(str_of(job, "status"), "running");
    assert_string_equal(str_of(job, "user_provided_suffix"), "crash");
    char id[PD_JOBSTORE_ID_MAX], next[PD_JOBSTORE_ID_MAX];
    snprintf(id, sizeof id, "%s", str_of(job, "id"));
    char file[PD_JOBSTORE_ID_MAX];
    snprintf(file, sizeof file, "%s", str_of(job, "training_file"));
    json_decref(l);
    assert_int_equal(pd_jobstore_job_next_runnable(js, next, NULL, &err), PD_OK);
    assert_string_equal(next, id); /* the worker resumes it */
    assert_int_equal(pd_jobstore_event_list(js, id, NULL, 0, &l, &err), PD_OK);
    assert_int_equal(json_array_size(json_object_get(l, "data")), 3);
    json_decref(l);
    pd_jobstore_file_info fi;
    assert_int_equal(pd_jobstore_file_stat(js, file, &fi, &err), PD_OK);
    assert_int_equal(fi.bytes, sizeof DATA - 1);
    char path[PATH_MAX];
    assert_int_equal(pd_jobstore_file_path(js, file, path, sizeof path, &err), PD_OK);
    assert_true(file_exists(path));
    pd_jobstore_close(js);
}

static void test_kill9_after_acknowledge(void **state)
{
    fixture *f = *state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        pd_jobstore *js = NULL;
        CHILD_CHECK(open_at(f, &js, NULL) == PD_OK);
        pd_jobstore_file_info fi;
        CHILD_CHECK(pd_jobstore_file_create(js, "t.jsonl", "fine-tune", DATA, sizeof DATA - 1,
                                            &fi, NULL, NULL) == PD_OK);
        json_t *p = json_pack("{s:s, s:s}", "model", "m", "training_file", fi.id);
        char job[PD_JOBSTORE_ID_MAX];
        CHILD_CHECK(pd_jobstore_job_create(js, p, job, NULL, NULL) == PD_OK);
        CHILD_CHECK(pd_jobstore_job_set_status(js, job, PD_JOB_QUEUED, NULL, NULL) == PD_OK);
        /* acknowledge: file id, job id, then every event id, as soon as
         * each call returns; keep writing until killed */
        char line[128];
        int n = snprintf(line, sizeof line, "%s %s\n", fi.id, job);
        CHILD_CHECK(write(fds[1], line, (size_t)n) == n);
        for (;;) {
            char ev[PD_JOBSTORE_ID_MAX];
            CHILD_CHECK(pd_jobstore_event_add(js, job, "info", "metrics", "step", NULL, ev,
                                              NULL) == PD_OK);
            n = snprintf(line, sizeof line, "%s\n", ev);
            if (write(fds[1], line, (size_t)n) != n) _exit(3);
        }
    }
    close(fds[1]);
    FILE *acks = fdopen(fds[0], "r");
    assert_non_null(acks);
    char file[PD_JOBSTORE_ID_MAX], job[PD_JOBSTORE_ID_MAX], last[PD_JOBSTORE_ID_MAX] = "";
    assert_int_equal(fscanf(acks, "%39s %39s", file, job), 2);
    for (int i = 0; i < 5; i++) assert_int_equal(fscanf(acks, "%39s", last), 1);
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    int acked = 5;
    while (fscanf(acks, "%39s", last) == 1) acked++; /* acks in the pipe at the kill */
    fclose(acks);

    pd_jobstore *js = open_store(f);
    pd_err err;
    pd_job_status s;
    assert_int_equal(pd_jobstore_job_status(js, job, &s, NULL, &err), PD_OK);
    assert_int_equal(s, PD_JOB_QUEUED);
    pd_jobstore_file_info fi;
    assert_int_equal(pd_jobstore_file_stat(js, file, &fi, &err), PD_OK);
    json_t *l = NULL;
    assert_int_equal(pd_jobstore_event_list(js, job, NULL, PD_JOBSTORE_LIST_MAX, &l, &err), PD_OK);
    json_t *data = json_object_get(l, "data");
    /* every acknowledged event is there (one more may have been committed
     * and not yet acknowledged) */
    assert_true(json_array_size(data) >= (size_t)acked);
    assert_true(json_array_size(data) <= (size_t)acked + 1);
    int found = 0;
    for (size_t i = 0; i < json_array_size(data); i++)
        found |= strcmp(str_of(json_array_get(data, i), "id"), last) == 0;
    assert_true(found);
    json_decref(l);
    pd_jobstore_close(js);
}

static void test_orphan_cleanup(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    char kept[PD_JOBSTORE_ID_MAX];
    make_file(js, "fine-tune", kept);
    pd_jobstore_close(js);

    /* what a crash between the contents and the row leaves behind, and
     * what a crash inside pd_write_file_atomic leaves */
    char orphan[PATH_MAX + 64], temp[PATH_MAX + 64], foreign[PATH_MAX + 64],
        kept_path[PATH_MAX + 64];
    snprintf(orphan, sizeof orphan, "%s/files/file-0123456789abcdef01234567.jsonl", f->dir);
    snprintf(temp, sizeof temp, "%s/files/.file-89abcdef0123456789abcdef.jsonl.tmp.Ab12Cd",
             f->dir);
    snprintf(foreign, sizeof foreign, "%s/files/README", f->dir);
    snprintf(kept_path, sizeof kept_path, "%s/files/%s.jsonl", f->dir, kept);
    assert_int_equal(pd_write_file_atomic(orphan, "x\n", 2, NULL), PD_OK);
    assert_int_equal(pd_write_file_atomic(temp, "half", 4, NULL), PD_OK);
    assert_int_equal(pd_write_file_atomic(foreign, "not ours", 8, NULL), PD_OK);

    js = open_store(f);
    assert_false(file_exists(orphan));
    assert_false(file_exists(temp));
    assert_true(file_exists(foreign)); /* names the store does not make are left alone */
    assert_true(file_exists(kept_path));
    json_t *o = NULL;
    pd_err err;
    assert_int_equal(pd_jobstore_file_get(js, kept, &o, &err), PD_OK);
    json_decref(o);
    pd_jobstore_close(js);
}

/* ---- one handle, four threads ---- */

#define N_THREADS 4
#define JOBS_PER_THREAD 3
#define EVENTS_PER_JOB 4

typedef struct worker_arg {
    pd_jobstore *js;
    int failures;
    char jobs[JOBS_PER_THREAD][PD_JOBSTORE_ID_MAX];
} worker_arg;

static void *worker(void *p)
{
    worker_arg *w = p;
    pd_jobstore *js = w->js;
    for (int j = 0; j < JOBS_PER_THREAD; j++) {
        pd_jobstore_file_info fi;
        w->failures += pd_jobstore_file_create(js, "t.jsonl", "fine-tune", DATA, sizeof DATA - 1,
                                               &fi, NULL, NULL) != PD_OK;
        json_t *params = json_pack("{s:s, s:s}", "model", "m", "training_file", fi.id);
        w->failures += pd_jobstore_job_create(js, params, w->jobs[j], NULL, NULL) != PD_OK;
        json_decref(params);
        w->failures += pd_jobstore_job_set_status(js, w->jobs[j], PD_JOB_QUEUED, NULL, NULL) != 0;
        w->failures += pd_jobstore_job_set_status(js, w->jobs[j], PD_JOB_RUNNING, NULL, NULL) != 0;
        for (int e = 0; e < EVENTS_PER_JOB; e++) {
            json_t *d = json_pack("{s:i}", "step", e);
            w->failures += pd_jobstore_event_add(js, w->jobs[j], "info", "metrics", "step", d,
                                                 NULL, NULL) != PD_OK;
            json_decref(d);
            json_t *l = NULL;
            w->failures += pd_jobstore_job_list(js, NULL, 5, &l, NULL) != PD_OK;
            json_decref(l);
            char next[PD_JOBSTORE_ID_MAX];
            w->failures += pd_jobstore_job_next_runnable(js, next, NULL, NULL) != PD_OK;
        }
        w->failures += pd_jobstore_job_set_result(js, w->jobs[j], "t", 10, NULL) != PD_OK;
        w->failures += pd_jobstore_job_set_status(js, w->jobs[j], PD_JOB_SUCCEEDED, NULL,
                                                  NULL) != PD_OK;
    }
    return NULL;
}

static void test_threads(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pthread_t t[N_THREADS];
    worker_arg args[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        memset(&args[i], 0, sizeof args[i]);
        args[i].js = js;
        assert_int_equal(pthread_create(&t[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    pd_err err;
    json_t *l = NULL;
    assert_int_equal(pd_jobstore_job_list(js, NULL, 100, &l, &err), PD_OK);
    assert_int_equal(json_array_size(json_object_get(l, "data")), N_THREADS * JOBS_PER_THREAD);
    json_decref(l);
    for (int i = 0; i < N_THREADS; i++) {
        for (int j = 0; j < JOBS_PER_THREAD; j++) {
            pd_job_status s;
            assert_int_equal(pd_jobstore_job_status(js, args[i].jobs[j], &s, NULL, &err), PD_OK);
            assert_int_equal(s, PD_JOB_SUCCEEDED);
            assert_int_equal(pd_jobstore_event_list(js, args[i].jobs[j], NULL, 0, &l, &err),
                             PD_OK);
            json_t *data = json_object_get(l, "data");
            assert_int_equal(json_array_size(data), EVENTS_PER_JOB);
            for (int e = 0; e < EVENTS_PER_JOB; e++) /* each job's own, newest first */
                assert_int_equal(json_integer_value(json_object_get(
                                     json_object_get(json_array_get(data, (size_t)e), "data"),
                                     "step")),
                                 EVENTS_PER_JOB - 1 - e);
            json_decref(l);
        }
    }
    pd_jobstore_close(js);
}

/* ---- PostgreSQL only: leases, schema version, connection failures ---- */

static void test_pg_leases(void **state)
{
    fixture *f = *state;
    pd_jobstore *a = open_store(f), *b = open_store(f); /* two "replicas" */
    pd_err err;
    char file[PD_JOBSTORE_ID_MAX], j1[PD_JOBSTORE_ID_MAX], j2[PD_JOBSTORE_ID_MAX],
        next[PD_JOBSTORE_ID_MAX];
    pd_job_status s;
    assert_true(pd_jobstore_shared(a));
    make_file(a, "fine-tune", file);
    job_in(a, file, PD_JOB_QUEUED, j1);
    job_in(b, file, PD_JOB_QUEUED, j2);
    /* each claims a different job: j1 is a's, so b gets j2, then nothing */
    assert_int_equal(pd_jobstore_job_next_runnable(a, next, &s, &err), PD_OK);
    assert_string_equal(next, j1);
    assert_int_equal(pd_jobstore_job_next_runnable(b, next, &s, &err), PD_OK);
    assert_string_equal(next, j2);
    assert_int_equal(pd_jobstore_job_next_runnable(a, next, &s, &err), PD_OK);
    assert_string_equal(next, j1); /* its own lease again */
    set_status(b, j2, PD_JOB_RUNNING);
    set_status(b, j2, PD_JOB_SUCCEEDED);
    assert_int_equal(pd_jobstore_job_next_runnable(b, next, &s, &err), PD_ENOTFOUND);

    /* a renews and sees a cancel requested through b */
    set_status(a, j1, PD_JOB_RUNNING);
    int cancel = -1;
    assert_int_equal(pd_jobstore_job_renew_lease(a, j1, &cancel, &err), PD_OK);
    assert_int_equal(cancel, 0);
    /* a stops renewing ("dies"): after its lease ends b takes the job over */
    pd_jobstore_set_lease_seconds(a, 1);
    assert_int_equal(pd_jobstore_job_renew_lease(a, j1, NULL, &err), PD_OK);
    assert_int_equal(pd_jobstore_job_next_runnable(b, next, &s, &err), PD_ENOTFOUND);
    sleep(3); /* lease_until is in whole seconds: past it for sure */
    assert_int_equal(pd_jobstore_job_next_runnable(b, next, &s, &err), PD_OK);
    assert_string_equal(next, j1);
    assert_int_equal(s, PD_JOB_RUNNING);
    assert_int_equal(pd_jobstore_job_renew_lease(a, j1, NULL, &err), PD_EBUSY);
    assert_non_null(strstr(err.msg, "lease lost"));
    assert_int_equal(pd_jobstore_job_next_runnable(a, next, &s, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_job_request_cancel(a, j1, NULL, &err), PD_OK);
    assert_int_equal(pd_jobstore_job_renew_lease(b, j1, &cancel, &err), PD_OK);
    assert_int_equal(cancel, 1);
    /* released (a shutdown): a may claim it at once; a's release is a no-op */
    assert_int_equal(pd_jobstore_job_release_lease(a, j1, &err), PD_OK);
    assert_int_equal(pd_jobstore_job_next_runnable(a, next, &s, &err), PD_ENOTFOUND);
    assert_int_equal(pd_jobstore_job_release_lease(b, j1, &err), PD_OK);
    assert_int_equal(pd_jobstore_job_next_runnable(a, next, &s, &err), PD_OK);
    assert_string_equal(next, j1);
    /* closing a frees what it held */
    pd_jobstore_close(a);
    assert_int_equal(pd_jobstore_job_next_runnable(b, next, &s, &err), PD_OK);
    assert_string_equal(next, j1);
    /* a final job leaves the lease alone: it is never claimed again */
    set_status(b, j1, PD_JOB_CANCELLED);
    assert_int_equal(pd_jobstore_job_renew_lease(b, j1, NULL, &err), PD_EBUSY);
    /* the other replica sees the same rows, events included */
    a = open_store(f);
    assert_int_equal(pd_jobstore_event_add(b, j1, "info", "message", "hello", NULL, NULL, &err),
                     PD_OK);
    json_t *sa = snapshot(a), *sb = snapshot(b);
    assert_true(json_equal(sa, sb));
    json_decref(sa);
    json_decref(sb);
    pd_jobstore_close(a);
    pd_jobstore_close(b);
}

static void test_pg_schema_and_connect(void **state)
{
    fixture *f = *state;
    pd_jobstore *js = open_store(f);
    pd_jobstore_close(js);
    js = open_store(f); /* a second open migrates nothing */
    pd_jobstore_close(js);
    PGconn *c = PQconnectdb(f->url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, "SELECT version FROM schema_version");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    PQclear(PQexec(c, "UPDATE schema_version SET version = 99"));
    PQfinish(c);
    pd_err err;
    assert_int_equal(open_at(f, &js, &err), PD_EVERSION);
    assert_non_null(strstr(err.msg, "newer"));
    assert_null(strstr(err.msg, "secret"));

    /* nobody listening: a clear error naming the database, password hidden */
    char url[1024];
    snprintf(url, sizeof url, "postgresql://prefixd:secret@/postgres?host=%s&port=1", pg_host);
    assert_int_equal(pd_jobstore_open_db(f->dir, url, &js, &err), PD_EUNAVAIL);
    assert_non_null(strstr(err.msg, "cannot connect"));
    assert_null(strstr(err.msg, "secret"));
    assert_int_equal(pd_jobstore_open_db(f->dir, "mysql://x/y", &js, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "job_store"));
}

#define BOTH(X)                                                                    \
    X(test_files_crud), X(test_files_list), X(test_job_create_get), X(test_status_flow), \
    X(test_cancel), X(test_jobs_list), X(test_events), X(test_checkpoints_results_estimate), \
    X(test_next_runnable), X(test_paths_and_delete_in_use), X(test_reopen_keeps_everything), \
    X(test_crash_without_close), X(test_kill9_after_acknowledge), X(test_threads)
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    pg_host = getenv("PD_TEST_PG_HOST");
    pg_port = getenv("PD_TEST_PG_PORT");
    if (pg_host && *pg_host) {
        if (!pg_port) pg_port = "5432";
        const struct CMUnitTest pg[] = {BOTH(T), T(test_pg_leases),
                                        T(test_pg_schema_and_connect)};
        return cmocka_run_group_tests_name("jobstore on PostgreSQL", pg, NULL, NULL);
    }
    pg_host = NULL;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_layout_and_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schema_version_and_bad_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_files_crud, setup, teardown),
        cmocka_unit_test_setup_teardown(test_files_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_create_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_flow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jobs_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoints_results_estimate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_next_runnable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_paths_and_delete_in_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_without_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_after_acknowledge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_orphan_cleanup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
