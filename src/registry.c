/* registry.c — task name -> prefix, backed by a directory of
 * <task>.safetensors files, with a byte budget on resident prefixes and a
 * libuv watcher (fs events plus a periodic rescan).
 *
 * DESIGN. One entry per task name in a chained hash map (O(1) lookup, about
 * 250 bytes per entry). An entry remembers the identity (st_dev, st_ino,
 * size, mtime and ctime in ns) of the file version it serves, a copy of that
 * version's metadata, its request counter and, while resident, the loaded
 * pd_prefix (one registry reference). Resident, evictable entries sit on a
 * doubly linked LRU list ordered by last acquire; going over the byte budget
 * drops the registry's reference of the least recently acquired ones (a
 * request holding one keeps it alive through its own reference). An entry
 * whose file was replaced by an invalid one remembers that file's identity
 * (so a rescan neither reloads nor re-logs it) and, if resident, leaves the
 * LRU list: it is pinned, because its previous version could not be
 * reloaded from disk. An entry known only from an invalid file is kept (not
 * servable, not listed) for the same reason.
 *
 * Files are meant to arrive by rename (prefixd's own writers do). A file
 * written in place (cp) raises fs events while half written: a load that
 * fails on a file modified less than SETTLE_MS ago is therefore not
 * reported from an fs event; the watcher looks again SETTLE_MS after the
 * last such event, and reports it then if it still fails.
 *
 * Threads. Two mutexes, always taken in this order:
 *   - write_lock serialises everything that follows the directory: scans,
 *     single-file refreshes (fs events), put and delete. File I/O (stat,
 *     load, save, unlink) happens under it, never under `lock`.
 *   - lock guards the map, every entry field, the LRU list and the counters.
 *     It is held only for lookups and pointer swaps.
 * pd_registry_acquire() takes only `lock` (lookup, retain, unlock). When
 * the entry is not resident it loads the file with no lock held and installs
 * the result only if the entry still is the version it saw; otherwise it
 * looks again. The watcher's handles and its scan state belong to the
 * loop's thread: an fs event refreshes the one file it names at once (the
 * hot-load path), and the periodic scan runs in steps of SCAN_STEP names
 * (write_lock per step), so an event never waits behind a whole scan.
 */
#include "prefixd/registry.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "prefixd/kvpool.h"
#include "prefixd/log.h"
#include "prefixd/safetensors.h"

#define SUFFIX ".safetensors"
#define SUFFIX_LEN (sizeof SUFFIX - 1)
#define LOAD_TRIES 3
#define SETTLE_MS 500
#define STALE_TEMP_S 600
/* Room for the directory name: <dir>/<task>.safetensors fits in PATH_MAX. */
#define DIR_MAX (PATH_MAX - PD_TASK_NAME_MAX - (int)SUFFIX_LEN - 2)

/* What names one version of a file: it changes when the file is replaced
 * (rename: new inode, new ctime), rewritten in place (size, mtime) or has
 * its mode changed (ctime: an unreadable file made readable is retried). */
typedef struct file_id {
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
} file_id;

typedef struct entry entry;
struct entry {
    entry *hnext;            /* hash chain */
    entry *prev, *next;      /* LRU list (more recent: prev), while in_lru */
    uint32_t hash;
    unsigned seen;           /* scan generation that last saw the file */
    uint8_t servable;        /* a valid version is known (id, metadata) */
    uint8_t has_bad;         /* bad: identity of a file that failed to load */
    uint8_t in_lru;          /* resident and evictable */
    file_id id;              /* the servable version */
    file_id bad;
    pd_prefix *prefix;       /* resident version (one reference), or NULL */
    uint64_t requests;
    int64_t last_used;       /* unix seconds of the last acquire; 0: never */
    int n_tokens, has_bos;
    char base_fingerprint[17];
    char source[16];
    char created_at[40];
    char task[PD_TASK_NAME_MAX + 1];
};

typedef struct watch watch;

struct pd_registry {
    pthread_mutex_t write_lock; /* see DESIGN: directory followers */
    pthread_mutex_t lock;       /* see DESIGN: map, entries, LRU, counters */
    char dir[DIR_MAX];
    const pd_model *model;      /* borrowed */
    size_t budget;              /* 0: unbounded */
    pd_kv_dtype kv_dtype;       /* resident prefixes' storage (F16: rounded once at load) */
    uint64_t max_file;          /* bytes a prefix file for the model can have */
    int rescan_ms;
    int quiet;                  /* initial scan: per-file logs at debug */
    unsigned gen;               /* scan generation (under write_lock) */
    entry **buckets;            /* n_buckets chains, n_buckets a power of 2 */
    size_t n_buckets, n_entries;
    entry *lru_head, *lru_tail; /* most / least recently acquired */
    int n_servable, n_resident;
    uint64_t resident_bytes, loads, load_failures, evictions, removals;
    watch *watch;               /* loop thread only */
};

pd_registry_params pd_registry_default_params(void)
{
    pd_registry_params p;
    p.dir = "registry";
    p.budget_bytes = (size_t)1 << 30;
    p.rescan_ms = 2000;
    p.kv_dtype = PD_KV_F32;
    return p;
}

/* ---- file names and identities ---- */

/* The task of a directory entry named <task>.safetensors, or 0 when the
 * name is anything else (temp files start with '.', which no task does). */
static int task_of_filename(const char *name, char task[PD_TASK_NAME_MAX + 1])
{
    size_t n = strlen(name);
    if (n <= SUFFIX_LEN || n - SUFFIX_LEN > PD_TASK_NAME_MAX) return 0;
    if (memcmp(name + n - SUFFIX_LEN, SUFFIX, SUFFIX_LEN) != 0) return 0;
    memcpy(task, name, n - SUFFIX_LEN);
    task[n - SUFFIX_LEN] = 0;
    return pd_task_name_valid(task);
}

static void task_path(const pd_registry *r, const char *task, char path[PATH_MAX])
{
    snprintf(path, PATH_MAX, "%s/%s" SUFFIX, r->dir, task);
}

static file_id id_of(const struct stat *st)
{
    file_id id = {0, 0, 0, 0, 0};
    id.dev = (uint64_t)st->st_dev;
    id.ino = (uint64_t)st->st_ino;
    id.size = (uint64_t)st->st_size;
    id.mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    id.ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
    return id;
}

static int same_id(const file_id *a, const file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

/* Stats <dir>/<task>.safetensors (relative to dfd, the open directory,
 * when dfd >= 0: no path walk per file in a scan): PD_OK with *id for a
 * regular file, PD_ENOTFOUND when there is none (or it is not a regular
 * file), PD_EIO otherwise. */
static int stat_task(const pd_registry *r, int dfd, const char *task, file_id *id, pd_err *err)
{
    char path[PATH_MAX];
    struct stat st;
    int rc;
    if (dfd >= 0) {
        snprintf(path, sizeof path, "%s" SUFFIX, task);
        rc = fstatat(dfd, path, &st, 0);
    } else {
        task_path(r, task, path);
        rc = stat(path, &st);
    }
    if (rc < 0) {
        int e = errno;
        task_path(r, task, path);
        if (e == ENOENT || e == ENOTDIR)
            return pd_err_set(err, PD_ENOTFOUND, "%s: no such file", path);
        return pd_err_set(err, PD_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        task_path(r, task, path);
        return pd_err_set(err, PD_ENOTFOUND, "%s: not a regular file", path);
    }
    *id = id_of(&st);
    return PD_OK;
}

/* Reads all of fd (size bytes) into a new buffer; 0 or -1 (errno set). */
static int read_all(int fd, size_t size, char **out)
{
    char *buf = malloc(size ? size : 1);
    if (!buf) return -1;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = EIO; /* shrank under us: the fstat check retries */
            free(buf);
            return -1;
        }
        got += (size_t)n;
    }
    *out = buf;
    return 0;
}

/* Loads the current version of task's file with no lock held. The file is
 * opened once and read whole (identity from fstat of that descriptor before
 * and after the read, so a rename or in-place write meanwhile is noticed
 * and retried). On PD_OK, *out is a new prefix whose metadata names task and
 * *id the identity of the bytes it came from. On a load error *id names the
 * invalid version. PD_ENOTFOUND: no regular file; PD_EBUSY: it kept
 * changing under the reader. */
/* The prompt cache's owner of p (kvpool.h): a hash of its shape, keys and
 * values, never 0 or PD_KV_OWNER_BASE. Equal content, equal KV: a file
 * replaced by another with the same tensors shares its cache entries,
 * any other replacement never does. */
static uint64_t content_id(const pd_prefix *p)
{
    const size_t n = (size_t)p->n_layers * p->n_kv_heads * p->n_tokens * p->head_dim;
    const int shape[4] = {p->n_layers, p->n_kv_heads, p->n_tokens, p->head_dim};
    uint64_t h = pd_kvpool_hash(UINT64_C(0x70726566697864), shape, sizeof shape);
    if (p->keys16) { /* resident as halves: the values the cache sees */
        h = pd_kvpool_hash(h, p->keys16, n * sizeof(uint16_t));
        h = pd_kvpool_hash(h, p->values16, n * sizeof(uint16_t));
        return h == 0 || h == PD_KV_OWNER_BASE ? h + 2 : h;
    }
    h = pd_kvpool_hash(h, p->keys, n * sizeof(float));
    h = pd_kvpool_hash(h, p->values, n * sizeof(float));
    return h == 0 || h == PD_KV_OWNER_BASE ? h + 2 : h;
}

static int load_file(const pd_registry *r, const char *task, file_id *id, pd_prefix **out,
                     pd_err *err)
{
    char path[PATH_MAX];
    task_path(r, task, path);
    *out = NULL;
    for (int attempt = 0; attempt < LOAD_TRIES; attempt++) {
        /* O_NONBLOCK: a FIFO under a task's name must not hang the reader */
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                return pd_err_set(err, PD_ENOTFOUND, "%s: no such file", path);
            return pd_err_set(err, PD_EIO, "%s: cannot open: %s", path, strerror(errno));
        }
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return pd_err_set(err, PD_ENOTFOUND, "%s: not a regular file", path);
        }
        file_id before = id_of(&st);
        *id = before;
        if (before.size > r->max_file) {
            close(fd);
            return pd_err_set(err, PD_ERANGE,
                              "%s: %llu bytes, more than a prefix file for this model can "
                              "hold (%llu)",
                              path, (unsigned long long)before.size,
                              (unsigned long long)r->max_file);
        }
        char *buf = NULL;
        int rerr = read_all(fd, (size_t)st.st_size, &buf) < 0 ? errno : 0;
        file_id after = before;
        if (fstat(fd, &st) == 0) after = id_of(&st);
        close(fd);
        if (!same_id(&before, &after) || (rerr && attempt + 1 < LOAD_TRIES)) {
            free(buf);
            continue;
        }
        if (rerr)
            return pd_err_set(err, rerr == ENOMEM ? PD_ENOMEM : PD_EIO, "%s: read failed: %s",
                              path, strerror(rerr));
        pd_prefix *p = NULL;
        int rc = pd_prefix_parse(buf, (size_t)before.size, path, r->model, &p, err);
        free(buf);
        if (rc < 0) return rc;
        if (strcmp(p->task, task) != 0) {
            rc = pd_err_set(err, PD_EFORMAT,
                            "%s: metadata task \"%s\" does not match the file name", path,
                            p->task);
            pd_prefix_release(p);
            return rc;
        }
        if (r->kv_dtype == PD_KV_F16 && (rc = pd_prefix_to_f16(p, err)) < 0) {
            pd_prefix_release(p);
            return rc;
        }
        p->content_id = content_id(p);
        *out = p;
        return PD_OK;
    }
    return pd_err_set(err, PD_EBUSY, "%s: kept changing while being read", path);
}

/* ---- the map (caller holds r->lock) ---- */

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static entry *find(const pd_registry *r, const char *task)
{
    uint32_t h = hash_name(task);
    for (entry *e = r->buckets[h & (r->n_buckets - 1)]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->task, task) == 0) return e;
    return NULL;
}

static void grow(pd_registry *r)
{
    size_t n = r->n_buckets * 2;
    entry **b = calloc(n, sizeof *b);
    if (!b) return; /* chains just get longer */
    for (size_t i = 0; i < r->n_buckets; i++) {
        entry *e = r->buckets[i];
        while (e) {
            entry *next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(r->buckets);
    r->buckets = b;
    r->n_buckets = n;
}

/* A new, empty, not servable entry for task, or NULL when out of memory. */
static entry *insert(pd_registry *r, const char *task)
{
    entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    snprintf(e->task, sizeof e->task, "%s", task);
    e->hash = hash_name(task);
    if (r->n_entries >= r->n_buckets) grow(r);
    entry **head = &r->buckets[e->hash & (r->n_buckets - 1)];
    e->hnext = *head;
    *head = e;
    r->n_entries++;
    return e;
}

static void lru_unlink(pd_registry *r, entry *e)
{
    if (!e->in_lru) return;
    if (e->prev) e->prev->next = e->next;
    else r->lru_head = e->next;
    if (e->next) e->next->prev = e->prev;
    else r->lru_tail = e->prev;
    e->prev = e->next = NULL;
    e->in_lru = 0;
}

static void lru_push_front(pd_registry *r, entry *e)
{
    PD_ASSERT(!e->in_lru && e->prefix);
    e->prev = NULL;
    e->next = r->lru_head;
    if (r->lru_head) r->lru_head->prev = e;
    else r->lru_tail = e;
    r->lru_head = e;
    e->in_lru = 1;
}

/* Drops the registry's reference of e's prefix (holders keep theirs). */
static void drop_resident(pd_registry *r, entry *e)
{
    if (!e->prefix) return;
    lru_unlink(r, e);
    r->resident_bytes -= e->prefix->bytes;
    r->n_resident--;
    pd_prefix_release(e->prefix);
    e->prefix = NULL;
}

/* Evicts least recently acquired prefixes, never keep, while over budget. */
static void enforce_budget(pd_registry *r, const entry *keep)
{
    if (!r->budget) return;
    while (r->resident_bytes > r->budget && r->lru_tail && r->lru_tail != keep) {
        drop_resident(r, r->lru_tail);
        r->evictions++;
    }
}

static void remove_entry(pd_registry *r, entry *e)
{
    entry **pp = &r->buckets[e->hash & (r->n_buckets - 1)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    r->n_entries--;
    drop_resident(r, e);
    if (e->servable) r->n_servable--;
    free(e);
}

static void fill_entry(const entry *e, pd_registry_entry *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->task, sizeof out->task, "%s", e->task);
    out->n_tokens = e->n_tokens;
    out->has_bos = e->has_bos;
    snprintf(out->source, sizeof out->source, "%s", e->source);
    snprintf(out->created_at, sizeof out->created_at, "%s", e->created_at);
    out->file_bytes = e->id.size;
    out->requests = e->requests;
    out->last_used = e->last_used;
    snprintf(out->base_fingerprint, sizeof out->base_fingerprint, "%s", e->base_fingerprint);
    out->resident = e->prefix != NULL;
}

/* ---- state changes (no lock held on entry; they take r->lock) ---- */

enum install_mode {
    INSTALL_ALWAYS,   /* the caller holds write_lock and wrote the file */
    INSTALL_IF_SAME   /* only if the entry still is the version seen */
};

/* Makes p (taken over) the servable, resident version of task with file
 * identity id. With INSTALL_IF_SAME it is dropped unless the entry's
 * servable version still is *seen (or, seen NULL, there is none). gen != 0
 * marks the entry seen by that scan. With retained != NULL the caller gets
 * a reference and a request is counted. Returns 1 installed (*was_servable
 * tells a replacement from an addition), 0 dropped, PD_ENOMEM. */
static int install(pd_registry *r, const char *task, const file_id *id, pd_prefix *p,
                   enum install_mode mode, const file_id *seen, unsigned gen,
                   pd_prefix **retained, int *was_servable)
{
    pthread_mutex_lock(&r->lock);
    r->loads++;
    entry *e = find(r, task);
    if (mode == INSTALL_IF_SAME) {
        int same = seen ? e && e->servable && same_id(&e->id, seen) : !e || !e->servable;
        if (!same) {
            pthread_mutex_unlock(&r->lock);
            pd_prefix_release(p);
            return 0;
        }
    }
    if (!e && !(e = insert(r, task))) {
        pthread_mutex_unlock(&r->lock);
        pd_prefix_release(p);
        return PD_ENOMEM;
    }
    if (was_servable) *was_servable = e->servable;
    drop_resident(r, e);
    if (!e->servable) r->n_servable++;
    e->servable = 1;
    e->has_bad = 0;
    e->id = *id;
    if (gen) e->seen = gen;
    e->n_tokens = p->n_tokens;
    e->has_bos = p->has_bos;
    const char *s = pd_prefix_meta_get(p, "source");
    snprintf(e->source, sizeof e->source, "%s", s ? s : "");
    s = pd_prefix_meta_get(p, "created_at");
    snprintf(e->created_at, sizeof e->created_at, "%s", s ? s : "");
    s = pd_prefix_meta_get(p, "base_fingerprint");
    snprintf(e->base_fingerprint, sizeof e->base_fingerprint, "%s", s ? s : "");
    e->prefix = p;
    r->resident_bytes += p->bytes;
    r->n_resident++;
    lru_push_front(r, e);
    if (retained) {
        *retained = pd_prefix_retain(p);
        e->requests++;
        e->last_used = (int64_t)time(NULL);
    }
    enforce_budget(r, e);
    pthread_mutex_unlock(&r->lock);
    return 1;
}

/* Remembers that task's file version id is invalid: counted and logged once
 * per version; a resident previous version is pinned (it could not be
 * reloaded). */
static void record_failure(pd_registry *r, const char *task, const file_id *id, unsigned gen,
                           const pd_err *err)
{
    pthread_mutex_lock(&r->lock);
    entry *e = find(r, task);
    if (!e) e = insert(r, task);
    if (!e || (e->has_bad && same_id(&e->bad, id))) {
        pthread_mutex_unlock(&r->lock);
        return;
    }
    e->has_bad = 1;
    e->bad = *id;
    if (gen) e->seen = gen;
    lru_unlink(r, e);
    r->load_failures++;
    int servable = e->servable, resident = e->prefix != NULL;
    pthread_mutex_unlock(&r->lock);
    PD_LOGW("registry: invalid prefix file for task '%s': %s%s", task,
            err ? err->msg : "?",
            !servable ? "" : resident ? " (the previous version keeps serving)"
                                      : " (the previous version is not resident: "
                                        "the task fails until a valid file replaces it)");
}

/* Drops task's entry (its file is gone); counts a removal if it served. */
static void forget(pd_registry *r, const char *task)
{
    pthread_mutex_lock(&r->lock);
    entry *e = find(r, task);
    int servable = e && e->servable;
    if (e) remove_entry(r, e);
    if (servable) r->removals++;
    pthread_mutex_unlock(&r->lock);
    if (servable) PD_LOGI("registry: task '%s' removed (its file is gone)", task);
}

static void log_installed(const pd_registry *r, const char *task, int replaced)
{
    if (r->quiet) PD_LOGD("registry: task '%s' loaded", task);
    else PD_LOGI("registry: task '%s' %s", task, replaced ? "replaced" : "added");
}

/* 1 if the file version was modified less than SETTLE_MS ago. */
static int recently_modified(const file_id *id)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    int64_t age = now - id->mtime_ns;
    return age < (int64_t)SETTLE_MS * 1000000 && age > -(int64_t)SETTLE_MS * 1000000;
}

/* Brings task's entry in line with its file: loads a new or changed valid
 * file, records an invalid one, forgets a vanished one. gen != 0: marks
 * the entry seen by that scan; dfd: see stat_task. lenient: a failing file
 * modified very recently may still be being written, so it is not recorded
 * and 1 is returned (look again later); otherwise 0. Caller holds
 * write_lock. */
static int refresh(pd_registry *r, const char *task, unsigned gen, int dfd, int lenient)
{
    pd_err err;
    file_id now = {0, 0, 0, 0, 0};
    int rc = stat_task(r, dfd, task, &now, &err);
    if (rc == PD_ENOTFOUND) {
        forget(r, task);
        return 0;
    }
    if (rc < 0) {
        PD_LOGW("registry: %s", err.msg);
        return 0;
    }
    pthread_mutex_lock(&r->lock);
    entry *e = find(r, task);
    int have = e && e->servable;
    file_id seen = {0, 0, 0, 0, 0};
    if (e && gen) e->seen = gen;
    if (have) seen = e->id;
    if (have && same_id(&e->id, &now)) {
        if (e->has_bad) { /* the served version is back */
            e->has_bad = 0;
            if (e->prefix && !e->in_lru) lru_push_front(r, e);
        }
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    int known_bad = e && e->has_bad && same_id(&e->bad, &now);
    pthread_mutex_unlock(&r->lock);
    if (known_bad) return 0;

    pd_prefix *p;
    file_id id = {0, 0, 0, 0, 0};
    rc = load_file(r, task, &id, &p, &err);
    if (rc == PD_OK) {
        int replaced = 0;
        if (install(r, task, &id, p, INSTALL_IF_SAME, have ? &seen : NULL, gen, NULL,
                    &replaced) == 1)
            log_installed(r, task, replaced);
    } else if (rc == PD_ENOTFOUND) {
        forget(r, task);
    } else if (rc == PD_EBUSY || (lenient && recently_modified(&id))) {
        PD_LOGD("registry: %s (still being written? looking again later)", err.msg);
        return 1;
    } else {
        record_failure(r, task, &id, gen, &err);
    }
    return 0;
}

/* A full scan in progress: it refreshes every <task>.safetensors in the
 * directory, then forgets entries whose file is gone. It runs in steps so
 * the watcher can serve fs events between them. */
typedef struct scan_state {
    DIR *d;       /* NULL once the listing is done */
    unsigned gen; /* marks the entries this scan saw */
} scan_state;

/* Starts a scan. Caller holds write_lock. */
static int scan_begin(pd_registry *r, scan_state *s, pd_err *err)
{
    s->d = opendir(r->dir);
    if (!s->d)
        return pd_err_set(err, PD_EIO, "%s: cannot open directory: %s", r->dir, strerror(errno));
    s->gen = ++r->gen;
    if (!s->gen) s->gen = ++r->gen; /* 0 means "not a scan" */
    return PD_OK;
}

static void scan_abort(scan_state *s)
{
    if (s->d) closedir(s->d);
    s->d = NULL;
}

/* Removes name when it is a writer's temp file (".<task>.safetensors.tmp.
 * XXXXXX", pd_write_file_atomic) untouched for STALE_TEMP_S: its writer died
 * (kill -9, power loss) between creating and renaming it. A live writer
 * renames within seconds and its writes keep the mtime fresh; other processes
 * sharing the directory (replicas, `prefixd train`) write such files too,
 * hence the age rather than "every temp file". Caller holds write_lock. */
static void remove_stale_temp(const pd_registry *r, int dfd, const char *name)
{
    static const char tail[] = SUFFIX ".tmp.";
    const size_t n = strlen(name), tl = sizeof tail - 1, xl = 6; /* mkostemp's XXXXXX */
    if (name[0] != '.' || n < 2 + tl + xl) return;
    const size_t tn = n - 1 - tl - xl;
    char task[PD_TASK_NAME_MAX + 1];
    if (tn > PD_TASK_NAME_MAX || memcmp(name + 1 + tn, tail, tl) != 0) return;
    memcpy(task, name + 1, tn);
    task[tn] = 0;
    struct stat st;
    if (!pd_task_name_valid(task) || fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
        !S_ISREG(st.st_mode) || time(NULL) - st.st_mtime < STALE_TEMP_S)
        return;
    if (unlinkat(dfd, name, 0) == 0)
        PD_LOGW("registry: removed %s/%s, left by an interrupted write", r->dir, name);
}

/* Refreshes up to max_names directory entries; after the last one, the
 * entries the scan did not see (the sweep). Returns 1 while more remain,
 * 0 when the scan is done (and closed). Caller holds write_lock; other
 * writers may run between steps, which is why the sweep checks each file
 * before forgetting it (so does readdir, which may miss a name renamed over
 * during the listing). */
static int scan_step(pd_registry *r, scan_state *s, int max_names)
{
    int dfd = dirfd(s->d);
    char task[PD_TASK_NAME_MAX + 1];
    for (int k = 0; k < max_names; k++) {
        struct dirent *de = readdir(s->d);
        if (!de) goto sweep;
        if (de->d_type != DT_REG && de->d_type != DT_LNK && de->d_type != DT_UNKNOWN) continue;
        if (task_of_filename(de->d_name, task))
            refresh(r, task, s->gen, dfd, 0);
        else
            remove_stale_temp(r, dfd, de->d_name);
    }
    return 1;
sweep:
    for (;;) {
        char gone[64][PD_TASK_NAME_MAX + 1];
        int n = 0;
        pthread_mutex_lock(&r->lock);
        for (size_t i = 0; i < r->n_buckets && n < 64; i++)
            for (entry *e = r->buckets[i]; e && n < 64; e = e->hnext)
                if (e->seen != s->gen) {
                    e->seen = s->gen; /* looked at once */
                    memcpy(gone[n++], e->task, sizeof gone[0]);
                }
        pthread_mutex_unlock(&r->lock);
        for (int i = 0; i < n; i++) refresh(r, gone[i], s->gen, dfd, 0);
        if (n < 64) break;
    }
    scan_abort(s);
    return 0;
}

/* A whole scan at once. Caller holds write_lock. */
static int scan(pd_registry *r, pd_err *err)
{
    scan_state s;
    int rc = scan_begin(r, &s, err);
    if (rc < 0) return rc;
    while (scan_step(r, &s, INT_MAX)) {
    }
    return PD_OK;
}

/* ---- public API ---- */

static int mkdir_p(const char *dir, pd_err *err)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *s = buf + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return pd_err_set(err, PD_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
        *s = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return pd_err_set(err, PD_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))
        return pd_err_set(err, PD_EIO, "%s: not a directory", buf);
    return PD_OK;
}

int pd_registry_create(const pd_registry_params *p, const pd_model *m, pd_registry **out,
                       pd_err *err)
{
    *out = NULL;
    if (!p || !p->dir || !*p->dir || !m)
        return pd_err_set(err, PD_EINVAL, "registry: a directory and a model are needed");
    size_t len = strlen(p->dir);
    while (len > 1 && p->dir[len - 1] == '/') len--;
    if (len >= DIR_MAX)
        return pd_err_set(err, PD_EINVAL, "registry: directory name too long");
    pd_registry *r = calloc(1, sizeof *r);
    if (!r) return pd_err_set(err, PD_ENOMEM, "registry: out of memory");
    memcpy(r->dir, p->dir, len);
    r->dir[len] = 0;
    r->model = m;
    r->budget = p->budget_bytes;
    r->kv_dtype = p->kv_dtype;
    const pd_config *c = &m->cfg;
    r->max_file = 8 + (uint64_t)PD_ST_MAX_HEADER + 2 * sizeof(float) * (uint64_t)c->n_layers *
                  (uint64_t)c->n_kv_heads * (uint64_t)(c->seq_len - 1) * (uint64_t)c->head_dim;
    r->rescan_ms = p->rescan_ms;
    r->n_buckets = 64;
    r->buckets = calloc(r->n_buckets, sizeof *r->buckets);
    if (!r->buckets) {
        free(r);
        return pd_err_set(err, PD_ENOMEM, "registry: out of memory");
    }
    pthread_mutex_init(&r->write_lock, NULL);
    pthread_mutex_init(&r->lock, NULL);
    int rc = mkdir_p(r->dir, err);
    if (rc == PD_OK) {
        r->quiet = 1;
        pthread_mutex_lock(&r->write_lock);
        rc = scan(r, err);
        pthread_mutex_unlock(&r->write_lock);
        r->quiet = 0;
    }
    if (rc < 0) {
        pd_registry_free(r);
        return rc;
    }
    PD_LOGI("registry: %d tasks in %s (%d resident, %llu invalid files)", r->n_servable, r->dir,
            r->n_resident, (unsigned long long)r->load_failures);
    *out = r;
    return PD_OK;
}

void pd_registry_free(pd_registry *r)
{
    if (!r) return;
    PD_ASSERT(!r->watch); /* pd_registry_unwatch() first */
    for (size_t i = 0; i < r->n_buckets; i++) {
        entry *e = r->buckets[i];
        while (e) {
            entry *next = e->hnext;
            pd_prefix_release(e->prefix);
            free(e);
            e = next;
        }
    }
    free(r->buckets);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->write_lock);
    free(r);
}

int pd_registry_rescan(pd_registry *r, pd_err *err)
{
    pthread_mutex_lock(&r->write_lock);
    int rc = scan(r, err);
    pthread_mutex_unlock(&r->write_lock);
    return rc;
}

int pd_registry_acquire(pd_registry *r, const char *task, pd_prefix **out, pd_err *err)
{
    *out = NULL;
    if (!task || !pd_task_name_valid(task))
        return pd_err_set(err, PD_ENOTFOUND, "task name not valid");
    for (int attempt = 0; attempt < LOAD_TRIES; attempt++) {
        pthread_mutex_lock(&r->lock);
        entry *e = find(r, task);
        if (!e || !e->servable) {
            pthread_mutex_unlock(&r->lock);
            return pd_err_set(err, PD_ENOTFOUND, "no task named '%s'", task);
        }
        if (e->prefix) {
            *out = pd_prefix_retain(e->prefix);
            e->requests++;
            e->last_used = (int64_t)time(NULL);
            if (e->in_lru && r->lru_head != e) {
                lru_unlink(r, e);
                lru_push_front(r, e);
            }
            pthread_mutex_unlock(&r->lock);
            return PD_OK;
        }
        file_id seen = e->id, bad = e->bad;
        int has_bad = e->has_bad;
        pthread_mutex_unlock(&r->lock);

        /* Not resident: reload with no lock held. */
        pd_prefix *p;
        file_id id = {0, 0, 0, 0, 0};
        pd_err lerr;
        if (has_bad && stat_task(r, -1, task, &id, NULL) == PD_OK && same_id(&id, &bad))
            return pd_err_set(err, PD_EIO,
                              "task '%s': its file was replaced by an invalid one and the "
                              "previous version is no longer in memory",
                              task);
        int rc = load_file(r, task, &id, &p, &lerr);
        if (rc == PD_OK) {
            if (install(r, task, &id, p, INSTALL_IF_SAME, &seen, 0, out, NULL) == 1) {
                PD_LOGD("registry: task '%s' reloaded", task);
                return PD_OK;
            }
            continue; /* the entry changed meanwhile: look again */
        }
        if (rc == PD_ENOTFOUND) {
            pthread_mutex_lock(&r->lock);
            e = find(r, task);
            int gone = e && e->servable && same_id(&e->id, &seen) && !e->prefix;
            if (gone) {
                remove_entry(r, e);
                r->removals++;
            }
            pthread_mutex_unlock(&r->lock);
            if (!gone) continue;
            PD_LOGI("registry: task '%s' removed (its file is gone)", task);
            return pd_err_set(err, PD_ENOTFOUND, "no task named '%s'", task);
        }
        if (rc == PD_EBUSY) continue;
        if (!(has_bad && same_id(&bad, &id)))
            record_failure(r, task, &id, 0, &lerr);
        return pd_err_set(err, PD_EIO, "task '%s' could not be reloaded: %s", task, lerr.msg);
    }
    return pd_err_set(err, PD_EBUSY, "task '%s' kept changing while being loaded", task);
}

/* Writes p as task's file and installs it from disk. Caller holds no lock. */
static int publish(pd_registry *r, const pd_prefix *p, int f16, pd_err *err)
{
    char path[PATH_MAX];
    task_path(r, p->task, path);
    pthread_mutex_lock(&r->write_lock);
    int rc = pd_prefix_save(p, r->model, path, f16, err);
    pd_prefix *q = NULL;
    file_id id = {0, 0, 0, 0, 0};
    if (rc == PD_OK) rc = load_file(r, p->task, &id, &q, err);
    int replaced = 0;
    if (rc == PD_OK) rc = install(r, p->task, &id, q, INSTALL_ALWAYS, NULL, 0, NULL, &replaced);
    pthread_mutex_unlock(&r->write_lock);
    if (rc == PD_ENOMEM) return pd_err_set(err, rc, "registry: out of memory");
    if (rc < 0) return rc;
    PD_LOGI("registry: task '%s' %s (published)", p->task, replaced ? "replaced" : "added");
    return PD_OK;
}

int pd_registry_put(pd_registry *r, const char *task, const void *data, size_t size,
                    pd_err *err)
{
    if (!task || !pd_task_name_valid(task))
        return pd_err_set(err, PD_EINVAL, "task name not valid (want [A-Za-z0-9][A-Za-z0-9._-]{0,63})");
    pd_prefix *p;
    int rc = pd_prefix_parse(data, size, task, r->model, &p, err);
    if (rc < 0) return rc;
    snprintf(p->task, sizeof p->task, "%s", task);
    rc = pd_prefix_meta_set(p, "task", task, err);
    if (rc == PD_OK) rc = publish(r, p, 0, err);
    pd_prefix_release(p);
    return rc;
}

int pd_registry_put_prefix_as(pd_registry *r, const pd_prefix *p, int f16, pd_err *err)
{
    if (!p || !pd_task_name_valid(p->task))
        return pd_err_set(err, PD_EINVAL, "prefix task name not valid");
    return publish(r, p, f16, err);
}

int pd_registry_put_prefix(pd_registry *r, const pd_prefix *p, pd_err *err)
{
    return pd_registry_put_prefix_as(r, p, 0, err);
}

int pd_registry_delete(pd_registry *r, const char *task, pd_err *err)
{
    if (!task || !pd_task_name_valid(task))
        return pd_err_set(err, PD_ENOTFOUND, "task name not valid");
    char path[PATH_MAX];
    task_path(r, task, path);
    pthread_mutex_lock(&r->write_lock);
    pthread_mutex_lock(&r->lock);
    entry *e = find(r, task);
    int servable = e && e->servable;
    pthread_mutex_unlock(&r->lock);
    int rc = PD_OK;
    if (!servable) {
        rc = pd_err_set(err, PD_ENOTFOUND, "no task named '%s'", task);
    } else if (unlink(path) < 0 && errno != ENOENT) {
        rc = pd_err_set(err, PD_EIO, "%s: cannot remove: %s", path, strerror(errno));
    } else {
        pthread_mutex_lock(&r->lock);
        if ((e = find(r, task)) != NULL) remove_entry(r, e);
        r->removals++;
        pthread_mutex_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->write_lock);
    if (rc == PD_OK) PD_LOGI("registry: task '%s' deleted", task);
    return rc;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const pd_registry_entry *)a)->task, ((const pd_registry_entry *)b)->task);
}

int pd_registry_list(pd_registry *r, pd_registry_entry *out, int cap)
{
    pthread_mutex_lock(&r->lock);
    int n = r->n_servable;
    if (cap <= 0 || n == 0) {
        pthread_mutex_unlock(&r->lock);
        return n;
    }
    pd_registry_entry *all = malloc((size_t)n * sizeof *all);
    if (!all) {
        pthread_mutex_unlock(&r->lock);
        return PD_ENOMEM;
    }
    int k = 0;
    for (size_t i = 0; i < r->n_buckets; i++)
        for (entry *e = r->buckets[i]; e; e = e->hnext)
            if (e->servable) fill_entry(e, &all[k++]);
    pthread_mutex_unlock(&r->lock);
    PD_ASSERT(k == n);
    qsort(all, (size_t)n, sizeof *all, cmp_entry);
    memcpy(out, all, (size_t)(n < cap ? n : cap) * sizeof *all);
    free(all);
    return n;
}

int pd_registry_get(pd_registry *r, const char *task, pd_registry_entry *out)
{
    if (!task || !pd_task_name_valid(task)) return PD_ENOTFOUND;
    pthread_mutex_lock(&r->lock);
    entry *e = find(r, task);
    int rc = e && e->servable ? PD_OK : PD_ENOTFOUND;
    if (rc == PD_OK) fill_entry(e, out);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void pd_registry_stats_get(pd_registry *r, pd_registry_stats *out)
{
    pthread_mutex_lock(&r->lock);
    out->n_tasks = r->n_servable;
    out->n_resident = r->n_resident;
    out->resident_bytes = r->resident_bytes;
    out->loads = r->loads;
    out->load_failures = r->load_failures;
    out->evictions = r->evictions;
    out->removals = r->removals;
    pthread_mutex_unlock(&r->lock);
}

/* ---- the watcher (runs on the libuv loop's thread) ---- */

/* Owns the handles; freed by the last close callback, so the registry may
 * be freed as soon as pd_registry_unwatch() returns. */
struct watch {
    uv_fs_event_t ev;
    uv_timer_t timer;   /* the periodic rescan */
    uv_timer_t settle;  /* one shot: a file that may have been half written */
    uv_idle_t step;     /* runs the steps of a scan in progress */
    scan_state scan;    /* valid while scanning */
    int scanning;
    pd_registry *r;
    int open;           /* handles not closed yet */
};

/* Names per scan step: a step costs about a millisecond of stats, so fs
 * events (hot-loads) never wait behind a whole scan of a big directory. */
#define SCAN_STEP 256

static void on_step(uv_idle_t *h)
{
    watch *w = h->data;
    pthread_mutex_lock(&w->r->write_lock);
    int more = scan_step(w->r, &w->scan, SCAN_STEP);
    pthread_mutex_unlock(&w->r->write_lock);
    if (!more) {
        w->scanning = 0;
        uv_idle_stop(&w->step);
    }
}

/* Starts a full scan in steps, unless one is running. */
static void start_scan(watch *w)
{
    if (w->scanning) return;
    pd_err err;
    pthread_mutex_lock(&w->r->write_lock);
    int rc = scan_begin(w->r, &w->scan, &err);
    pthread_mutex_unlock(&w->r->write_lock);
    if (rc < 0) {
        PD_LOGW("registry: rescan failed: %s", err.msg);
        return;
    }
    w->scanning = 1;
    uv_idle_start(&w->step, on_step);
}

static void on_timer(uv_timer_t *t)
{
    start_scan(t->data);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)events;
    watch *w = h->data;
    pd_registry *r = w->r;
    if (status < 0) {
        PD_LOGW("registry: watching %s: %s; rescanning", r->dir, uv_strerror(status));
        start_scan(w);
        return;
    }
    if (!filename) {
        start_scan(w);
        return;
    }
    char task[PD_TASK_NAME_MAX + 1];
    if (!task_of_filename(filename, task)) return;
    pthread_mutex_lock(&r->write_lock);
    int again = refresh(r, task, 0, -1, 1);
    pthread_mutex_unlock(&r->write_lock);
    if (again) uv_timer_start(&w->settle, on_timer, SETTLE_MS, 0);
}

static void on_close(uv_handle_t *h)
{
    watch *w = h->data;
    if (--w->open == 0) free(w);
}

int pd_registry_watch(pd_registry *r, void *uv_loop, pd_err *err)
{
    PD_ASSERT(r && uv_loop);
    if (r->watch) return pd_err_set(err, PD_EBUSY, "registry: already watching %s", r->dir);
    uv_loop_t *loop = uv_loop;
    watch *w = calloc(1, sizeof *w);
    if (!w) return pd_err_set(err, PD_ENOMEM, "registry: out of memory");
    w->r = r;
    int rc = uv_timer_init(loop, &w->timer);
    if (rc < 0) {
        free(w);
        return pd_err_set(err, PD_ESYS, "registry: uv_timer_init: %s", uv_strerror(rc));
    }
    w->timer.data = w;
    w->open = 1;
    rc = uv_timer_init(loop, &w->settle);
    if (rc == 0) {
        w->settle.data = w;
        w->open = 2;
        rc = uv_idle_init(loop, &w->step);
    }
    if (rc == 0) {
        w->step.data = w;
        w->open = 3;
        rc = uv_fs_event_init(loop, &w->ev);
    }
    if (rc == 0) {
        w->ev.data = w;
        w->open = 4;
        rc = uv_fs_event_start(&w->ev, on_fs_event, r->dir, 0);
    }
    if (rc == 0 && r->rescan_ms > 0)
        rc = uv_timer_start(&w->timer, on_timer, (uint64_t)r->rescan_ms, (uint64_t)r->rescan_ms);
    if (rc < 0) {
        int open = w->open; /* the close callbacks run later, on the loop */
        uv_close((uv_handle_t *)&w->timer, on_close);
        if (open >= 2) uv_close((uv_handle_t *)&w->settle, on_close);
        if (open >= 3) uv_close((uv_handle_t *)&w->step, on_close);
        if (open >= 4) uv_close((uv_handle_t *)&w->ev, on_close);
        return pd_err_set(err, PD_ESYS, "registry: cannot watch %s: %s", r->dir, uv_strerror(rc));
    }
    r->watch = w;
    return PD_OK;
}

void pd_registry_unwatch(pd_registry *r)
{
    if (!r || !r->watch) return;
    watch *w = r->watch;
    r->watch = NULL;
    if (w->scanning) {
        pthread_mutex_lock(&r->write_lock);
        scan_abort(&w->scan);
        pthread_mutex_unlock(&r->write_lock);
        w->scanning = 0;
    }
    uv_close((uv_handle_t *)&w->timer, on_close);
    uv_close((uv_handle_t *)&w->settle, on_close);
    uv_close((uv_handle_t *)&w->step, on_close);
    uv_close((uv_handle_t *)&w->ev, on_close);
}
