/* prefixd/registry.h — task name -> prefix, backed by a directory of
 * <task>.safetensors files (ARCHITECTURE.md "Prefix files and the registry").
 *
 * DESIGN. The registry keeps an entry per servable file (name, file identity,
 * metadata: P, source, created, size, requests served) and, for recently used
 * entries, the loaded pd_prefix. Resident prefixes are bounded by a byte
 * budget: the least recently used are dropped and reloaded from disk on the
 * next acquire. Published prefixes are immutable and reference-counted, so a
 * replaced or deleted task never disturbs a request holding the old version.
 * Changes are found by libuv fs events on the directory plus a periodic
 * rescan (the safety net); pd_registry_rescan() does the same on demand. A
 * new or changed valid file is servable once scanned; a deleted file stops
 * being servable; an invalid file is logged and counted and the previous
 * version keeps serving. Temp files (names starting with '.') are ignored.
 * All functions are thread-safe (one mutex); the watcher runs on the libuv
 * loop passed to pd_registry_watch().
 */
#ifndef PREFIXD_REGISTRY_H
#define PREFIXD_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/kvpool.h"
#include "prefixd/model.h"
#include "prefixd/prefix.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_registry pd_registry;

typedef struct pd_registry_params {
    const char *dir;        /* the registry directory (created if missing) */
    size_t budget_bytes;    /* resident prefix bytes at most; 0: unbounded */
    int rescan_ms;          /* periodic rescan interval (default 2000) */
    pd_kv_dtype kv_dtype;   /* resident prefixes' storage: the serving KV cache's (default
                               F32). F16: every loaded prefix is rounded once to halves
                               (pd_prefix_to_f16), half the bytes against budget_bytes; the
                               files on disk are unchanged */
} pd_registry_params;

pd_registry_params pd_registry_default_params(void);

/* Opens the directory and loads every valid prefix file in it (invalid ones
 * are logged and counted). The model is borrowed. */
int pd_registry_create(const pd_registry_params *p, const pd_model *m, pd_registry **out,
                       pd_err *err);
void pd_registry_free(pd_registry *r);

/* Starts watching on loop (uv_loop_t *, passed as void * so this header does
 * not pull in uv.h): fs events on the directory and a rescan timer. Call from
 * the loop's thread before running it. pd_registry_unwatch() closes the
 * handles (from the loop's thread). */
int pd_registry_watch(pd_registry *r, void *uv_loop, pd_err *err);
void pd_registry_unwatch(pd_registry *r);

/* Scans the directory now: loads new/changed files, drops deleted ones. */
int pd_registry_rescan(pd_registry *r, pd_err *err);

/* The prefix of task, with a new reference for the caller (release with
 * pd_prefix_release), loading it from disk if it is not resident. Returns
 * PD_ENOTFOUND for an unknown or invalid name. Counts a request served. */
int pd_registry_acquire(pd_registry *r, const char *task, pd_prefix **out, pd_err *err);

/* Validates data as a prefix file for the model, sets its task metadata to
 * task, writes it atomically as <dir>/<task>.safetensors and makes it
 * servable at once (replacing any previous version). PD_EINVAL / PD_EFORMAT /
 * PD_EMISMATCH with err on a bad file: nothing on disk changes then. */
int pd_registry_put(pd_registry *r, const char *task, const void *data, size_t size,
                    pd_err *err);
/* Publishes an in-memory prefix the same way (p is borrowed). */
int pd_registry_put_prefix(pd_registry *r, const pd_prefix *p, pd_err *err);

/* The same, the file's tensors as F16 when f16 (as `prefix ... --f16`):
 * half the disk bytes; the served prefix is what the file holds (its
 * values rounded to F16; kept as halves under an F16 registry, else
 * widened to F32 in memory). */
int pd_registry_put_prefix_as(pd_registry *r, const pd_prefix *p, int f16, pd_err *err);

/* Removes <dir>/<task>.safetensors and the entry; PD_ENOTFOUND if none. */
int pd_registry_delete(pd_registry *r, const char *task, pd_err *err);

typedef struct pd_registry_entry {
    char task[PD_TASK_NAME_MAX + 1];
    int n_tokens;            /* P */
    int has_bos;
    char source[16];
    char created_at[40];
    uint64_t file_bytes;
    uint64_t requests;       /* acquires served */
    int64_t last_used;       /* unix seconds of the last acquire; 0: never */
    char base_fingerprint[17]; /* the file's base_fingerprint (16 hex digits) */
    int resident;            /* loaded in memory now */
} pd_registry_entry;

/* Copies up to cap entries, sorted by task name, into out; returns the total
 * number of entries (may exceed cap). */
int pd_registry_list(pd_registry *r, pd_registry_entry *out, int cap);

/* One entry by name: PD_OK or PD_ENOTFOUND. */
int pd_registry_get(pd_registry *r, const char *task, pd_registry_entry *out);

typedef struct pd_registry_stats {
    int n_tasks;
    int n_resident;
    uint64_t resident_bytes;
    uint64_t loads;          /* files loaded (hot-loads and reloads) */
    uint64_t load_failures;  /* invalid files seen */
    uint64_t evictions;
    uint64_t removals;
} pd_registry_stats;

void pd_registry_stats_get(pd_registry *r, pd_registry_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_REGISTRY_H */
