/* test_registry.c — the prefix registry over real files in a temp directory:
 * the startup scan (valid, invalid and ignored names), hot-loads seen by the
 * libuv watcher running on its own thread, replacement while a request holds
 * the old version, invalid replacements (the old version keeps serving,
 * counted once), deletion, the byte budget (eviction and transparent
 * reload), uploads, a startup scan of many files, and concurrent acquirers
 * racing replacements (run under ASan/TSan for the thread-safety checks). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "prefixd/fsutil.h"
#include "prefixd/prefix.h"
#include "prefixd/half.h"
#include "prefixd/registry.h"

#include "testutil.h"

#define MODEL TEST_MODEL
#define TOKENIZER TEST_TOKENIZER
#define WAIT_MS 2000

TEST_GROUP_MODEL()

/* ---- helpers ---- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static size_t n_floats(const pd_prefix *p)
{
    return (size_t)p->n_layers * (size_t)p->n_kv_heads * (size_t)p->n_tokens *
           (size_t)p->head_dim;
}

/* A prefix for task with P slots whose values are drawn from seed. */
static pd_prefix *make_prefix(const char *task, int P, uint32_t seed)
{
    pd_prefix *p;
    assert_int_equal(pd_prefix_create(model, task, P, &p, NULL), PD_OK);
    uint32_t s = seed * 2654435761u + 12345u;
    size_t n = n_floats(p);
    for (size_t i = 0; i < 2 * n; i++) {
        s = s * 1664525u + 1013904223u;
        float v = (float)(s >> 8) / 16777216.0f - 0.5f;
        if (i < n) p->keys[i] = v;
        else p->values[i - n] = v;
    }
    assert_int_equal(pd_prefix_meta_set(p, "source", "trained", NULL), PD_OK);
    return p;
}

static int same_values(const pd_prefix *a, const pd_prefix *b)
{
    if (a->n_tokens != b->n_tokens || a->n_layers != b->n_layers) return 0;
    size_t n = n_floats(a);
    return memcmp(a->keys, b->keys, n * sizeof(float)) == 0 &&
           memcmp(a->values, b->values, n * sizeof(float)) == 0;
}

static void path_of(char *buf, const char *dir, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
}

/* Writes task's prefix (seed) as <dir>/<task>.safetensors (atomic save). */
static void write_task(const char *dir, const char *task, int P, uint32_t seed)
{
    char path[PATH_MAX], name[128];
    snprintf(name, sizeof name, "%s.safetensors", task);
    path_of(path, dir, name);
    pd_prefix *p = make_prefix(task, P, seed);
    pd_err err;
    assert_int_equal(pd_prefix_save(p, model, path, 0, &err), PD_OK);
    pd_prefix_release(p);
}

/* Writes task's prefix in stage, then renames it into dir: one event. */
static void publish_by_rename(const char *stage, const char *dir, const char *task, int P,
                              uint32_t seed)
{
    char from[PATH_MAX], to[PATH_MAX], name[128];
    write_task(stage, task, P, seed);
    snprintf(name, sizeof name, "%s.safetensors", task);
    path_of(from, stage, name);
    path_of(to, dir, name);
    assert_int_equal(rename(from, to), 0);
}

/* Writes raw bytes as <stage>/name, then renames it to <dir>/name. */
static void rename_bytes_in(const char *stage, const char *dir, const char *name,
                            const void *data, size_t size)
{
    char from[PATH_MAX], to[PATH_MAX];
    path_of(from, stage, name);
    path_of(to, dir, name);
    FILE *f = fopen(from, "wb");
    assert_non_null(f);
    if (size) assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(from, to), 0);
}

static void make_dir(char *buf, size_t cap)
{
    snprintf(buf, cap, "/tmp/prefixd-reg-XXXXXX");
    assert_non_null(mkdtemp(buf));
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char path[PATH_MAX];
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        path_of(path, dir, de->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) remove_tree(path);
        else unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static pd_registry *open_registry(const char *dir, size_t budget, int rescan_ms)
{
    pd_registry_params rp = pd_registry_default_params();
    rp.dir = dir;
    rp.budget_bytes = budget;
    rp.rescan_ms = rescan_ms;
    pd_registry *r;
    pd_err err;
    int rc = pd_registry_create(&rp, model, &r, &err);
    if (rc < 0) fail_msg("pd_registry_create: %s", err.msg);
    return r;
}

static pd_registry_stats stats(pd_registry *r)
{
    pd_registry_stats s;
    pd_registry_stats_get(r, &s);
    return s;
}

/* Acquires task and checks its values against a fresh make_prefix(seed). */
static int serves(pd_registry *r, const char *task, int P, uint32_t seed)
{
    pd_prefix *got;
    if (pd_registry_acquire(r, task, &got, NULL) != PD_OK) return 0;
    pd_prefix *want = make_prefix(task, P, seed);
    int ok = same_values(got, want) && !strcmp(got->task, task);
    pd_prefix_release(want);
    pd_prefix_release(got);
    return ok;
}

/* Polls cond(r, task, P, seed) every millisecond for up to WAIT_MS. */
static int wait_serves(pd_registry *r, const char *task, int P, uint32_t seed)
{
    double t0 = now_ms();
    while (now_ms() - t0 < WAIT_MS) {
        if (serves(r, task, P, seed)) return 1;
        sleep_ms(1);
    }
    return 0;
}

static int wait_failures(pd_registry *r, uint64_t n)
{
    double t0 = now_ms();
    while (now_ms() - t0 < WAIT_MS) {
        if (stats(r).load_failures >= n) return 1;
        sleep_ms(1);
    }
    return 0;
}

static int wait_gone(pd_registry *r, const char *task)
{
    double t0 = now_ms();
    while (now_ms() - t0 < WAIT_MS) {
        pd_prefix *p;
        int rc = pd_registry_acquire(r, task, &p, NULL);
        if (rc == PD_ENOTFOUND) return 1;
        if (rc == PD_OK) pd_prefix_release(p);
        sleep_ms(1);
    }
    return 0;
}

/* A libuv loop running the registry watcher on its own thread. */
typedef struct watcher {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    pd_registry *r;
} watcher;

static void on_stop(uv_async_t *a)
{
    watcher *w = a->data;
    pd_registry_unwatch(w->r);
    uv_close((uv_handle_t *)a, NULL);
}

static void *run_loop(void *arg)
{
    watcher *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

static watcher *watch_start(pd_registry *r)
{
    watcher *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->r = r;
    assert_int_equal(uv_loop_init(&w->loop), 0);
    assert_int_equal(uv_async_init(&w->loop, &w->stop, on_stop), 0);
    w->stop.data = w;
    pd_err err;
    assert_int_equal(pd_registry_watch(r, &w->loop, &err), PD_OK);
    assert_int_equal(pthread_create(&w->thread, NULL, run_loop, w), 0);
    return w;
}

static void watch_stop(watcher *w)
{
    assert_int_equal(uv_async_send(&w->stop), 0);
    assert_int_equal(pthread_join(w->thread, NULL), 0);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    free(w);
}

/* ---- tests ---- */

static void test_startup_scan(void **state)
{
    (void)state;
    char dir[64], path[PATH_MAX];
    make_dir(dir, sizeof dir);
    write_task(dir, "beta", 3, 2);
    write_task(dir, "alpha", 5, 1);
    /* ignored: temp and hidden files, other suffixes, bad names, a directory */
    write_task(dir, "hidden", 2, 9);
    char from[PATH_MAX];
    path_of(from, dir, "hidden.safetensors");
    path_of(path, dir, ".hidden.safetensors");
    assert_int_equal(rename(from, path), 0);
    path_of(path, dir, "notes.txt");
    assert_int_equal(pd_write_file_atomic(path, "hello", 5, NULL), PD_OK);
    path_of(path, dir, "alpha.safetensors.tmp.123456");
    assert_int_equal(pd_write_file_atomic(path, "x", 1, NULL), PD_OK);
    path_of(path, dir, "bad name.safetensors");
    assert_int_equal(pd_write_file_atomic(path, "x", 1, NULL), PD_OK);
    path_of(path, dir, "sub.safetensors");
    assert_int_equal(mkdir(path, 0755), 0);
    /* counted as invalid: a valid file whose metadata names another task */
    write_task(dir, "gamma", 2, 3);
    path_of(from, dir, "gamma.safetensors");
    path_of(path, dir, "delta.safetensors");
    assert_int_equal(rename(from, path), 0);

    pd_registry *r = open_registry(dir, 0, 2000);
    pd_registry_stats s = stats(r);
    assert_int_equal(s.n_tasks, 2);
    assert_int_equal(s.n_resident, 2);
    assert_int_equal(s.load_failures, 1);
    assert_int_equal(s.loads, 2);
    assert_true(s.resident_bytes > 0);
    assert_true(serves(r, "alpha", 5, 1));
    assert_true(serves(r, "beta", 3, 2));
    assert_true(serves(r, "alpha", 5, 1));

    pd_registry_entry list[4];
    assert_int_equal(pd_registry_list(r, list, 4), 2);
    assert_string_equal(list[0].task, "alpha");
    assert_string_equal(list[1].task, "beta");
    assert_int_equal(list[0].n_tokens, 5);
    assert_int_equal(list[0].has_bos, 0);
    assert_string_equal(list[0].source, "trained");
    assert_true(strlen(list[0].created_at) >= 20);
    assert_int_equal(list[0].requests, 2);
    assert_int_equal(list[1].requests, 1);
    assert_int_equal(list[0].resident, 1);
    struct stat st;
    path_of(path, dir, "alpha.safetensors");
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(list[0].file_bytes, (uint64_t)st.st_size);
    assert_int_equal(pd_registry_list(r, list, 1), 2); /* total beyond cap */
    assert_string_equal(list[0].task, "alpha");
    pd_registry_entry one;
    assert_int_equal(pd_registry_get(r, "beta", &one), PD_OK);
    assert_int_equal(one.n_tokens, 3);

    /* unknown and invalid names */
    pd_prefix *p = (pd_prefix *)&p;
    pd_err err;
    assert_int_equal(pd_registry_acquire(r, "nope", &p, &err), PD_ENOTFOUND);
    assert_null(p);
    const char *bad[] = {"", ".hidden", "../alpha", "a/b", "delta", "gamma", "hidden",
                         "-x", "sub", "bad name",
                         "a123456789012345678901234567890123456789012345678901234567890123"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(pd_registry_acquire(r, bad[i], &p, NULL), PD_ENOTFOUND);
        assert_int_equal(pd_registry_get(r, bad[i], &one), PD_ENOTFOUND);
    }
    assert_int_equal(pd_registry_put(r, "../evil", "x", 1, &err), PD_EINVAL);
    assert_int_equal(pd_registry_delete(r, "../alpha", &err), PD_ENOTFOUND);
    assert_int_equal(pd_registry_delete(r, "delta", &err), PD_ENOTFOUND);

    /* a rescan with nothing changed loads nothing and re-counts nothing */
    assert_int_equal(pd_registry_rescan(r, &err), PD_OK);
    s = stats(r);
    assert_int_equal(s.loads, 2);
    assert_int_equal(s.load_failures, 1);
    assert_int_equal(s.n_tasks, 2);
    pd_registry_free(r);

    /* the directory is created when missing */
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/new/deeper", dir);
    r = open_registry(sub, 0, 2000);
    assert_int_equal(stats(r).n_tasks, 0);
    assert_int_equal(pd_registry_list(r, list, 4), 0);
    pd_registry_free(r);
    remove_tree(dir);
}

static void test_watch_hot_load(void **state)
{
    (void)state;
    char dir[64], stage[64];
    make_dir(dir, sizeof dir);
    make_dir(stage, sizeof stage);
    pd_registry *r = open_registry(dir, 0, 600000); /* the fs event, not the timer */
    watcher *w = watch_start(r);
    for (int i = 0; i < 10; i++) {
        char task[32];
        snprintf(task, sizeof task, "hot-%d", i);
        publish_by_rename(stage, dir, task, 4, 100 + (uint32_t)i);
        assert_true(wait_serves(r, task, 4, 100 + (uint32_t)i));
    }
    /* a file saved in place by the atomic writer (temp name in the same
     * directory, then rename) is seen once, complete */
    write_task(dir, "inplace", 2, 7);
    assert_true(wait_serves(r, "inplace", 2, 7));
    /* a file written in place, in pieces (cp): events while it is half
     * written are not reported as invalid; the whole file is served */
    pd_prefix *p = make_prefix("copied", 16, 8);
    void *data;
    size_t size;
    assert_int_equal(pd_prefix_serialize(p, model, 0, &data, &size, NULL), PD_OK);
    pd_prefix_release(p);
    char path[PATH_MAX];
    path_of(path, dir, "copied.safetensors");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    for (size_t off = 0; off < size; off += size / 4 + 1) {
        size_t n = size - off < size / 4 + 1 ? size - off : size / 4 + 1;
        assert_int_equal(write(fd, (char *)data + off, n), (ssize_t)n);
        sleep_ms(20);
    }
    assert_int_equal(close(fd), 0);
    free(data);
    assert_true(wait_serves(r, "copied", 16, 8));
    sleep_ms(600); /* past the settling rescan */
    pd_registry_stats s = stats(r);
    assert_int_equal(s.n_tasks, 12);
    assert_int_equal(s.load_failures, 0);
    watch_stop(w);
    pd_registry_free(r);
    remove_tree(dir);
    remove_tree(stage);
}

static void test_replace_in_use(void **state)
{
    (void)state;
    char dir[64], stage[64];
    make_dir(dir, sizeof dir);
    make_dir(stage, sizeof stage);
    write_task(dir, "story", 6, 1);
    pd_registry *r = open_registry(dir, 0, 600000);
    watcher *w = watch_start(r);

    pd_prefix *v1;
    assert_int_equal(pd_registry_acquire(r, "story", &v1, NULL), PD_OK);
    size_t n = n_floats(v1);
    float *copy = malloc(2 * n * sizeof *copy);
    assert_non_null(copy);
    memcpy(copy, v1->keys, n * sizeof *copy);
    memcpy(copy + n, v1->values, n * sizeof *copy);

    publish_by_rename(stage, dir, "story", 8, 2);
    assert_true(wait_serves(r, "story", 8, 2));
    pd_prefix *v2;
    assert_int_equal(pd_registry_acquire(r, "story", &v2, NULL), PD_OK);
    assert_ptr_not_equal(v1, v2);
    assert_int_equal(v2->n_tokens, 8);
    pd_registry_entry e;
    assert_int_equal(pd_registry_get(r, "story", &e), PD_OK);
    assert_int_equal(e.n_tokens, 8);

    /* the held version is untouched */
    assert_int_equal(v1->n_tokens, 6);
    assert_memory_equal(v1->keys, copy, n * sizeof *copy);
    assert_memory_equal(v1->values, copy + n, n * sizeof *copy);
    assert_int_equal(atomic_load(&v1->refs), 1); /* only ours is left */
    pd_prefix_release(v1);
    pd_prefix_release(v2);
    free(copy);
    pd_registry_stats s = stats(r);
    assert_int_equal(s.n_tasks, 1);
    assert_int_equal(s.n_resident, 1);
    watch_stop(w);
    pd_registry_free(r);
    remove_tree(dir);
    remove_tree(stage);
}

static void test_invalid_replacement(void **state)
{
    (void)state;
    char dir[64], stage[64], path[PATH_MAX];
    make_dir(dir, sizeof dir);
    make_dir(stage, sizeof stage);
    write_task(dir, "keep", 4, 5);
    path_of(path, dir, "keep.safetensors");
    char *good;
    size_t good_size;
    assert_int_equal(pd_read_file(path, 1 << 20, &good, &good_size, NULL), PD_OK);

    pd_registry *r = open_registry(dir, 0, 600000);
    watcher *w = watch_start(r);
    /* truncated */
    rename_bytes_in(stage, dir, "keep.safetensors", good, good_size / 2);
    assert_true(wait_failures(r, 1));
    assert_true(serves(r, "keep", 4, 5));
    /* garbage */
    char junk[300];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)(i * 37 + 11);
    rename_bytes_in(stage, dir, "keep.safetensors", junk, sizeof junk);
    assert_true(wait_failures(r, 2));
    assert_true(serves(r, "keep", 4, 5));
    /* empty */
    rename_bytes_in(stage, dir, "keep.safetensors", "", 0);
    assert_true(wait_failures(r, 3));
    assert_true(serves(r, "keep", 4, 5));
    /* made for another base: a changed fingerprint */
    char *other = malloc(good_size);
    assert_non_null(other);
    memcpy(other, good, good_size);
    char *fp = memmem(other, good_size, model->fingerprint_hex, 16);
    assert_non_null(fp);
    fp[0] = fp[0] == '0' ? '1' : '0';
    rename_bytes_in(stage, dir, "keep.safetensors", other, good_size);
    assert_true(wait_failures(r, 4));
    assert_true(serves(r, "keep", 4, 5));
    free(other);

    /* the same invalid file is not counted again */
    pd_err err;
    assert_int_equal(pd_registry_rescan(r, &err), PD_OK);
    assert_int_equal(pd_registry_rescan(r, &err), PD_OK);
    pd_registry_stats s = stats(r);
    assert_int_equal(s.load_failures, 4);
    assert_int_equal(s.n_tasks, 1);
    pd_registry_entry e;
    assert_int_equal(pd_registry_get(r, "keep", &e), PD_OK);
    assert_int_equal(e.file_bytes, good_size); /* metadata of the serving version */

    /* a valid file makes it servable again */
    publish_by_rename(stage, dir, "keep", 3, 6);
    assert_true(wait_serves(r, "keep", 3, 6));
    /* an invalid file for a new name is counted and not served */
    rename_bytes_in(stage, dir, "fresh.safetensors", junk, sizeof junk);
    assert_true(wait_failures(r, 5));
    pd_prefix *p;
    assert_int_equal(pd_registry_acquire(r, "fresh", &p, NULL), PD_ENOTFOUND);
    assert_int_equal(stats(r).n_tasks, 1);
    watch_stop(w);
    free(good);
    pd_registry_free(r);
    remove_tree(dir);
    remove_tree(stage);
}

static void test_delete(void **state)
{
    (void)state;
    char dir[64], path[PATH_MAX];
    make_dir(dir, sizeof dir);
    write_task(dir, "one", 2, 1);
    write_task(dir, "two", 2, 2);
    write_task(dir, "three", 2, 3);

    /* without a watcher: found by a rescan */
    pd_registry *r = open_registry(dir, 0, 600000);
    path_of(path, dir, "one.safetensors");
    assert_int_equal(unlink(path), 0);
    assert_true(serves(r, "one", 2, 1)); /* not noticed yet */
    pd_err err;
    assert_int_equal(pd_registry_rescan(r, &err), PD_OK);
    pd_prefix *p;
    assert_int_equal(pd_registry_acquire(r, "one", &p, NULL), PD_ENOTFOUND);
    assert_int_equal(stats(r).removals, 1);
    assert_int_equal(stats(r).n_tasks, 2);

    /* with the watcher */
    watcher *w = watch_start(r);
    path_of(path, dir, "two.safetensors");
    assert_int_equal(unlink(path), 0);
    assert_true(wait_gone(r, "two"));
    assert_int_equal(stats(r).removals, 2);

    /* through the API: the file goes too */
    pd_prefix *held;
    assert_int_equal(pd_registry_acquire(r, "three", &held, NULL), PD_OK);
    assert_int_equal(pd_registry_delete(r, "three", &err), PD_OK);
    path_of(path, dir, "three.safetensors");
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(pd_registry_acquire(r, "three", &p, NULL), PD_ENOTFOUND);
    assert_int_equal(pd_registry_delete(r, "three", &err), PD_ENOTFOUND);
    assert_int_equal(pd_registry_get(r, "three", &(pd_registry_entry){0}), PD_ENOTFOUND);
    /* the request in flight keeps its prefix */
    pd_prefix *want = make_prefix("three", 2, 3);
    assert_true(same_values(held, want));
    pd_prefix_release(want);
    pd_prefix_release(held);
    pd_registry_stats s = stats(r);
    assert_int_equal(s.removals, 3);
    assert_int_equal(s.n_tasks, 0);
    assert_int_equal(s.n_resident, 0);
    assert_int_equal(s.resident_bytes, 0);
    sleep_ms(50); /* the watcher sees the API's unlink: nothing more happens */
    assert_int_equal(stats(r).removals, 3);
    watch_stop(w);
    pd_registry_free(r);
    remove_tree(dir);
}

static void test_budget(void **state)
{
    (void)state;
    char dir[64], stage[64];
    make_dir(dir, sizeof dir);
    make_dir(stage, sizeof stage);
    const char *tasks[5] = {"t0", "t1", "t2", "t3", "t4"};
    for (int i = 0; i < 5; i++) write_task(dir, tasks[i], 8, 10 + (uint32_t)i);
    pd_prefix *probe;
    pd_err err;
    char path[PATH_MAX];
    path_of(path, dir, "t0.safetensors");
    assert_int_equal(pd_prefix_load(path, model, &probe, &err), PD_OK);
    size_t one = probe->bytes, budget = 2 * one + one / 2;
    pd_prefix_release(probe);

    pd_registry *r = open_registry(dir, budget, 600000);
    pd_registry_stats s = stats(r);
    assert_int_equal(s.n_tasks, 5);
    assert_true(s.n_resident <= 2);
    assert_true(s.resident_bytes <= budget);
    assert_int_equal(s.evictions, 3);
    assert_int_equal(s.loads, 5);

    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 5; i++) {
            assert_true(serves(r, tasks[i], 8, 10 + (uint32_t)i));
            s = stats(r);
            assert_true(s.n_resident <= 2);
            assert_true(s.resident_bytes <= budget);
        }
    }
    /* round robin over 5 with room for 2: every acquire after the first
     * round loads (the first may find the last two of the startup scan) */
    s = stats(r);
    assert_true(s.loads >= 5 + 13);
    assert_int_equal(s.evictions, s.loads - (uint64_t)s.n_resident);
    pd_registry_entry list[5];
    assert_int_equal(pd_registry_list(r, list, 5), 5);
    int resident = 0;
    for (int i = 0; i < 5; i++) {
        resident += list[i].resident;
        assert_int_equal(list[i].requests, 3);
        assert_int_equal(list[i].n_tokens, 8);
    }
    assert_int_equal(resident, 2);

    /* recently acquired ones stay: t3 and t4 are resident, no load needed */
    uint64_t loads = stats(r).loads;
    assert_true(serves(r, "t4", 8, 14));
    assert_true(serves(r, "t3", 8, 13));
    assert_int_equal(stats(r).loads, loads);

    /* an evicted task whose file changed reloads the new version */
    publish_by_rename(stage, dir, "t0", 8, 99);
    assert_true(serves(r, "t0", 8, 99));

    /* a request holding an evicted prefix keeps it */
    pd_prefix *held;
    assert_int_equal(pd_registry_acquire(r, "t1", &held, NULL), PD_OK);
    assert_true(serves(r, "t2", 8, 12));
    assert_true(serves(r, "t3", 8, 13));
    assert_int_equal(pd_registry_get(r, "t1", list), PD_OK);
    assert_int_equal(list[0].resident, 0);
    pd_prefix *want = make_prefix("t1", 8, 11);
    assert_true(same_values(held, want));
    pd_prefix_release(want);
    pd_prefix_release(held);

    /* a resident task whose file turns invalid stays pinned: its previous
     * version cannot be reloaded, so it is never evicted */
    assert_true(serves(r, "t4", 8, 14));
    rename_bytes_in(stage, dir, "t4.safetensors", "junk", 4);
    assert_int_equal(pd_registry_rescan(r, &err), PD_OK);
    assert_int_equal(stats(r).load_failures, 1);
    for (int i = 0; i < 4; i++) assert_true(serves(r, tasks[i], 8, i ? 10 + (uint32_t)i : 99));
    assert_true(serves(r, "t4", 8, 14));
    assert_int_equal(pd_registry_get(r, "t4", list), PD_OK);
    assert_int_equal(list[0].resident, 1);
    s = stats(r);
    assert_true(s.n_resident <= 3);
    pd_registry_free(r);
    remove_tree(dir);
    remove_tree(stage);
}

static void test_put(void **state)
{
    (void)state;
    char dir[64], path[PATH_MAX];
    make_dir(dir, sizeof dir);
    pd_registry *r = open_registry(dir, 0, 600000);
    watcher *w = watch_start(r);

    /* an upload made under another name takes the name it is put as */
    pd_prefix *src = make_prefix("elsewhere", 5, 21);
    void *data;
    size_t size;
    pd_err err;
    assert_int_equal(pd_prefix_serialize(src, model, 0, &data, &size, &err), PD_OK);
    assert_int_equal(pd_registry_put(r, "upload", data, size, &err), PD_OK);
    pd_prefix *got;
    assert_int_equal(pd_registry_acquire(r, "upload", &got, &err), PD_OK); /* at once */
    assert_true(same_values(got, src));
    assert_string_equal(got->task, "upload");
    assert_string_equal(pd_prefix_meta_get(got, "task"), "upload");
    pd_prefix_release(got);
    path_of(path, dir, "upload.safetensors");
    pd_prefix *disk;
    assert_int_equal(pd_prefix_load(path, model, &disk, &err), PD_OK);
    assert_string_equal(disk->task, "upload");
    assert_true(same_values(disk, src));
    pd_prefix_release(disk);
    free(data);
    pd_prefix_release(src);

    /* bad uploads: refused, the old version serves, the file is unchanged */
    char *before;
    size_t before_size;
    assert_int_equal(pd_read_file(path, 1 << 20, &before, &before_size, NULL), PD_OK);
    pd_prefix *v2 = make_prefix("upload", 7, 22);
    assert_int_equal(pd_prefix_serialize(v2, model, 0, &data, &size, &err), PD_OK);
    int rc = pd_registry_put(r, "upload", data, size - 3, &err);
    assert_true(rc < 0);
    assert_true(strlen(err.msg) > 0);
    assert_int_equal(pd_registry_put(r, "upload", "garbage!", 8, &err) < 0, 1);
    assert_int_equal(pd_registry_put(r, "upload", data, 0, &err) < 0, 1);
    char *fp = memmem(data, size, model->fingerprint_hex, 16);
    assert_non_null(fp);
    fp[0] = fp[0] == '0' ? '1' : '0';
    assert_int_equal(pd_registry_put(r, "upload", data, size, &err), PD_EMISMATCH);
    fp[0] = model->fingerprint_hex[0];
    assert_true(serves(r, "upload", 5, 21));
    char *after;
    size_t after_size;
    assert_int_equal(pd_read_file(path, 1 << 20, &after, &after_size, NULL), PD_OK);
    assert_int_equal(after_size, before_size);
    assert_memory_equal(after, before, before_size);
    free(after);
    free(before);
    assert_int_equal(stats(r).load_failures, 0); /* refused uploads are not files */

    /* a valid replacement is servable at once */
    assert_int_equal(pd_registry_put(r, "upload", data, size, &err), PD_OK);
    assert_true(serves(r, "upload", 7, 22));
    free(data);
    pd_prefix_release(v2);

    /* an in-memory prefix */
    pd_prefix *mem = make_prefix("memory", 3, 23);
    assert_int_equal(pd_registry_put_prefix(r, mem, &err), PD_OK);
    assert_true(serves(r, "memory", 3, 23));
    pd_prefix_release(mem);
    pd_registry_stats s = stats(r);
    assert_int_equal(s.n_tasks, 2);
    assert_int_equal(s.load_failures, 0);
    /* the watcher sees the registry's own writes and changes nothing */
    sleep_ms(50);
    assert_int_equal(stats(r).loads, s.loads);
    watch_stop(w);
    pd_registry_free(r);
    remove_tree(dir);
}

/* Many tasks: the startup scan, lookups and the sorted listing. */
static void test_many(void **state)
{
    (void)state;
    enum { N = 2000 };
    char dir[64], path[PATH_MAX], task[32];
    make_dir(dir, sizeof dir);
    for (int i = 0; i < N; i++) {
        snprintf(task, sizeof task, "task-%05d", (i * 7919) % N);
        pd_prefix *p = make_prefix(task, 1, (uint32_t)i);
        void *data;
        size_t size;
        assert_int_equal(pd_prefix_serialize(p, model, 0, &data, &size, NULL), PD_OK);
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, task);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, size, f), size);
        assert_int_equal(fclose(f), 0);
        free(data);
        pd_prefix_release(p);
    }
    pd_registry *r = open_registry(dir, 0, 600000);
    assert_int_equal(stats(r).n_tasks, N);
    pd_registry_entry *list = malloc(N * sizeof *list);
    assert_non_null(list);
    assert_int_equal(pd_registry_list(r, list, N), N);
    for (int i = 0; i < N; i++) {
        snprintf(task, sizeof task, "task-%05d", i);
        assert_string_equal(list[i].task, task);
    }
    for (int i = 0; i < N; i++) {
        pd_prefix *p;
        snprintf(task, sizeof task, "task-%05d", i);
        assert_int_equal(pd_registry_acquire(r, task, &p, NULL), PD_OK);
        pd_prefix_release(p);
    }
    pd_err err;
    assert_int_equal(pd_registry_rescan(r, &err), PD_OK);
    assert_int_equal(stats(r).loads, N);
    free(list);
    pd_registry_free(r);
    remove_tree(dir);
}

/* Acquirers on several threads while files are replaced, deleted, uploaded
 * and evicted: every acquired prefix is whole and one of the versions. */
typedef struct racer {
    pd_registry *r;
    atomic_int *stop;
    long ok;
    int bad;
} racer;

static void *race_acquire(void *arg)
{
    racer *c = arg;
    const char *tasks[3] = {"r0", "r1", "r2"};
    long i = 0;
    while (!atomic_load(c->stop)) {
        pd_prefix *p;
        int rc = pd_registry_acquire(c->r, tasks[i++ % 3], &p, NULL);
        if (rc == PD_OK) {
            /* every version is written with keys[0] == -values[0] - 1 */
            if (p->keys[0] != -p->values[0] - 1.0f || p->n_tokens < 1) c->bad++;
            c->ok++;
            pd_prefix_release(p);
        } else if (rc != PD_ENOTFOUND) {
            c->bad++;
        }
        if (i % 64 == 0) {
            pd_registry_entry list[4];
            pd_registry_list(c->r, list, 4);
            pd_registry_stats s;
            pd_registry_stats_get(c->r, &s);
        }
    }
    return NULL;
}

static void write_marked(const char *stage, const char *dir, const char *task, int P,
                         uint32_t seed)
{
    pd_prefix *p = make_prefix(task, P, seed);
    p->keys[0] = -p->values[0] - 1.0f;
    char from[PATH_MAX], to[PATH_MAX], name[64];
    snprintf(name, sizeof name, "%s.safetensors", task);
    path_of(from, stage, name);
    path_of(to, dir, name);
    assert_int_equal(pd_prefix_save(p, model, from, 0, NULL), PD_OK);
    assert_int_equal(rename(from, to), 0);
    pd_prefix_release(p);
}

static void test_concurrent(void **state)
{
    (void)state;
    char dir[64], stage[64], path[PATH_MAX];
    make_dir(dir, sizeof dir);
    make_dir(stage, sizeof stage);
    for (int i = 0; i < 3; i++) {
        char task[16];
        snprintf(task, sizeof task, "r%d", i);
        write_marked(stage, dir, task, 4, (uint32_t)i);
    }
    pd_prefix *probe;
    path_of(path, dir, "r0.safetensors");
    assert_int_equal(pd_prefix_load(path, model, &probe, NULL), PD_OK);
    size_t budget = probe->bytes + probe->bytes / 2; /* room for about one */
    pd_prefix_release(probe);
    pd_registry *r = open_registry(dir, budget, 20);
    watcher *w = watch_start(r);
    atomic_int stop = 0;
    enum { T = 4 };
    racer c[T];
    pthread_t th[T];
    for (int t = 0; t < T; t++) {
        c[t] = (racer){r, &stop, 0, 0};
        assert_int_equal(pthread_create(&th[t], NULL, race_acquire, &c[t]), 0);
    }
    pd_err err;
    for (int k = 0; k < 60; k++) {
        char task[16];
        snprintf(task, sizeof task, "r%d", k % 3);
        switch (k % 5) {
        case 0:
        case 1: write_marked(stage, dir, task, 2 + k % 4, (uint32_t)k); break;
        case 2: pd_registry_delete(r, task, &err); break;
        case 3: {
            pd_prefix *p = make_prefix(task, 3, (uint32_t)k);
            p->keys[0] = -p->values[0] - 1.0f;
            assert_int_equal(pd_registry_put_prefix(r, p, &err), PD_OK);
            pd_prefix_release(p);
            break;
        }
        default: assert_int_equal(pd_registry_rescan(r, &err), PD_OK); break;
        }
        sleep_ms(2);
    }
    atomic_store(&stop, 1);
    long ok = 0;
    for (int t = 0; t < T; t++) {
        assert_int_equal(pthread_join(th[t], NULL), 0);
        assert_int_equal(c[t].bad, 0);
        ok += c[t].ok;
    }
    assert_true(ok > 0);
    watch_stop(w);
    pd_registry_stats s = stats(r);
    assert_true(s.resident_bytes <= budget || s.n_resident <= 1);
    assert_int_equal(s.load_failures, 0);
    pd_registry_free(r);
    remove_tree(dir);
    remove_tree(stage);
}

/* An F16 registry (the serving KV cache in F16) holds each prefix as
 * halves: the file's floats rounded once at load, about half the resident
 * bytes, so the same budget keeps twice the prefixes; files, PEFT-free
 * serialization and widening give back the rounded values exactly. */
static void test_f16_residency(void **state)
{
    (void)state;
    char dir[64];
    make_dir(dir, sizeof dir);
    const char *tasks[4] = {"h0", "h1", "h2", "h3"};
    for (int i = 0; i < 4; i++) write_task(dir, tasks[i], 8, 40 + (uint32_t)i);
    pd_prefix *probe;
    pd_err err;
    char path[PATH_MAX];
    path_of(path, dir, "h0.safetensors");
    assert_int_equal(pd_prefix_load(path, model, &probe, &err), PD_OK);
    const size_t one32 = probe->bytes, n = n_floats(probe);
    pd_prefix_release(probe);

    pd_registry_params rp = pd_registry_default_params();
    rp.dir = dir;
    rp.budget_bytes = 2 * one32 + one32 / 2; /* two F32 prefixes, four F16 ones */
    rp.kv_dtype = PD_KV_F16;
    pd_registry *r;
    assert_int_equal(pd_registry_create(&rp, model, &r, &err), PD_OK);
    for (int i = 0; i < 4; i++) {
        pd_prefix *got;
        assert_int_equal(pd_registry_acquire(r, tasks[i], &got, &err), PD_OK);
        assert_null(got->keys);
        assert_non_null(got->keys16);
        assert_true(got->bytes < one32 / 2 + 4096);
        pd_prefix *want = make_prefix(tasks[i], 8, 40 + (uint32_t)i);
        for (size_t j = 0; j < n; j++) {
            assert_int_equal(got->keys16[j], pd_f32_to_f16(want->keys[j]));
            assert_int_equal(got->values16[j], pd_f32_to_f16(want->values[j]));
        }
        pd_prefix *wide;
        assert_int_equal(pd_prefix_widen(got, &wide, &err), PD_OK);
        for (size_t j = 0; j < n; j++) assert_true(wide->keys[j] == pd_f16_to_f32(got->keys16[j]));
        assert_string_equal(pd_prefix_meta_get(wide, "source"), "trained");
        void *data;
        size_t size;
        pd_prefix *back;
        assert_int_equal(pd_prefix_serialize(got, model, 0, &data, &size, &err), PD_OK);
        assert_int_equal(pd_prefix_parse(data, size, "back", model, &back, &err), PD_OK);
        assert_memory_equal(back->keys, wide->keys, n * sizeof(float));
        assert_memory_equal(back->values, wide->values, n * sizeof(float));
        free(data);
        pd_prefix_release(back);
        pd_prefix_release(wide);
        pd_prefix_release(want);
        pd_prefix_release(got);
    }
    pd_registry_stats st = stats(r);
    assert_int_equal(st.n_resident, 4); /* an F32 registry keeps 2 under this budget */
    assert_int_equal(st.evictions, 0);
    pd_registry_free(r);
    remove_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_startup_scan),
        cmocka_unit_test(test_watch_hot_load),
        cmocka_unit_test(test_replace_in_use),
        cmocka_unit_test(test_invalid_replacement),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_put),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_f16_residency),
    };
    return cmocka_run_group_tests_name("registry", tests, setup, teardown);
}
