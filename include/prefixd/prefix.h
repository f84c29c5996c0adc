/* prefixd/prefix.h — a task's prefix: per layer, P learned key and value
 * vectors per kv head, attended to before the request's tokens (prefix
 * tuning, Li & Liang 2021; semantics in ARCHITECTURE.md "Prefix semantics").
 *
 * A pd_prefix is immutable once published and reference-counted (atomics):
 * pd_prefix_retain() / pd_prefix_release(); the last release frees it. Any
 * thread may hold a reference; nobody writes keys/values after publication.
 *
 *     pd_prefix *p;
 *     if (pd_prefix_load("registry/poet.safetensors", model, &p, &err) < 0) ...
 *     pd_seq_set_prefix(seq, p->n_tokens, p->keys, p->values);
 *     ... generate ...
 *     pd_prefix_release(p);
 *
 * File format (<task>.safetensors): tensors "keys" and "values", each
 * [n_layers, n_kv_heads, P, head_dim], F32 or F16; __metadata__ with at least
 * format = "prefixd.prefix/1", task, base_fingerprint (16 hex digits),
 * num_virtual_tokens, created_at (ISO 8601 UTC), source (trained | prompt |
 * peft), has_bos ("true" | "false"), and for trained prefixes job_id and the
 * final losses. Writes are atomic (temp file, fsync, rename).
 */
#ifndef PREFIXD_PREFIX_H
#define PREFIXD_PREFIX_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/engine.h"
#include "prefixd/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PD_TASK_NAME_MAX 64
#define PD_PREFIX_FORMAT "prefixd.prefix/1"

/* 1 if name matches [A-Za-z0-9][A-Za-z0-9._-]{0,63}, else 0. A task name
 * never becomes a path by itself: callers still join it to a directory. */
int pd_task_name_valid(const char *name);

typedef struct pd_prefix_meta {
    char *key;   /* owned */
    char *value; /* owned */
} pd_prefix_meta;

typedef struct pd_prefix {
    atomic_int refs;
    char task[PD_TASK_NAME_MAX + 1];
    int n_layers, n_kv_heads, head_dim;
    int n_tokens;          /* P */
    int has_bos;           /* 1: slot 0 already holds BOS (prompt-built) */
    float *keys;           /* (n_layers, n_kv_heads, P, head_dim), owned; NULL when held as halves */
    float *values;         /* (n_layers, n_kv_heads, P, head_dim), owned; NULL when held as halves */
    uint16_t *keys16;      /* the same as IEEE halves (pd_prefix_to_f16: a registry under an F16
                              KV cache), owned; NULL when held as floats */
    uint16_t *values16;
    pd_prefix_meta *meta;  /* n_meta entries (owned), the file's __metadata__ */
    int n_meta;
    size_t bytes;          /* resident bytes (tensors + bookkeeping) */
    uint64_t content_id;   /* hash of P, keys and values (the prompt cache's owner, kvpool.h);
                              set by the registry when it loads the prefix; 0: unknown
                              (requests with it do not use the prompt cache) */
} pd_prefix;

/* Allocates a zero-filled prefix of P slots shaped for model m, with one
 * reference. task must be valid. Returns PD_OK, PD_EINVAL, PD_ENOMEM. */
int pd_prefix_create(const pd_model *m, const char *task, int n_tokens, pd_prefix **out,
                     pd_err *err);

pd_prefix *pd_prefix_retain(pd_prefix *p);  /* returns p */
void pd_prefix_release(pd_prefix *p);       /* NULL is a no-op */

/* Rounds p's keys and values to halves (nearest even, as the F16 KV cache
 * rounds its entries) and drops the floats: half the bytes (p->bytes
 * follows). Only before publication; a no-op when already halves. PD_ENOMEM. */
int pd_prefix_to_f16(pd_prefix *p, pd_err *err);

/* p as floats: a new reference to p when it holds floats, else a new
 * prefix (one reference, same metadata) of its halves widened exactly.
 * For the F32-only consumers (files, PEFT export, training). */
int pd_prefix_widen(const pd_prefix *p, pd_prefix **out, pd_err *err);

/* Points sequence s at prefix p (NULL: none) whatever either dtype
 * (pd_seq_set_prefix / pd_seq_set_prefix_f16); p must outlive s's use. */
int pd_prefix_attach(pd_seq *s, const pd_prefix *p, pd_err *err);

/* Metadata value of key (borrowed) or NULL. */
const char *pd_prefix_meta_get(const pd_prefix *p, const char *key);
/* Sets (copies) a metadata entry, replacing any previous value. Only before
 * publication. */
int pd_prefix_meta_set(pd_prefix *p, const char *key, const char *value, pd_err *err);

/* Reads and validates a prefix file against model m: format, layer count, kv
 * heads, head dim, base fingerprint, P >= 1, finite values, dtype F32/F16,
 * metadata types. Errors name the file and what is wrong. The task name is
 * taken from the metadata (must be valid). New prefix with one reference. */
int pd_prefix_load(const char *path, const pd_model *m, pd_prefix **out, pd_err *err);

/* The same over a buffer (an HTTP upload); name is used in messages. */
int pd_prefix_parse(const void *data, size_t size, const char *name, const pd_model *m,
                    pd_prefix **out, pd_err *err);

/* Writes p atomically to path, tensors as F32 (f16 = 0) or F16. Fills
 * format, task, base_fingerprint, num_virtual_tokens, has_bos and (when
 * missing) created_at in the file's metadata. */
int pd_prefix_save(const pd_prefix *p, const pd_model *m, const char *path, int f16,
                   pd_err *err);

/* Serializes like pd_prefix_save into a new malloc'd buffer (free()). */
int pd_prefix_serialize(const pd_prefix *p, const pd_model *m, int f16, void **data,
                        size_t *size, pd_err *err);

/* Builds a prefix from a prompt's own KV cache: tokens[0..n) (BOS first if
 * wanted) run at positions 0..n-1 through engine e; P = n; has_bos = 1 when
 * tokens[0] is BOS; source = "prompt". */
int pd_prefix_from_tokens(pd_engine *e, const pd_model *m, const char *task,
                          const int32_t *tokens, int n, pd_prefix **out, pd_err *err);

/* The prefix held by a sequence's cache: its first n entries (run with no
 * prefix at positions 0..n-1) moved into the prefix layout. has_bos: whether
 * the first of those tokens was BOS. source = "prompt". Used by
 * pd_prefix_from_tokens and by the scheduler (which builds prompt prefixes on
 * its engine thread). */
int pd_prefix_from_cache(const pd_model *m, const char *task, const pd_seq *s, int n,
                         int has_bos, pd_prefix **out, pd_err *err);

/* The same from text: encodes with BOS, then pd_prefix_from_tokens. */
int pd_prefix_from_text(pd_engine *e, const pd_model *m, const char *task, const char *text,
                        pd_prefix **out, pd_err *err);

/* Imports an HF PEFT prefix-tuning adapter directory (adapter_config.json
 * with peft_type PREFIX_TUNING, num_virtual_tokens, num_layers, token_dim,
 * num_attention_heads; adapter_model.safetensors with prompt_embeddings
 * [P, n_layers*2*kv_dim], flat index ((layer*2 + kv)*n_kv_heads + head)*
 * head_dim + d). Checked against model m; source = "peft", has_bos = 0. */
int pd_prefix_import_peft(const char *dir, const pd_model *m, const char *task,
                          pd_prefix **out, pd_err *err);

/* Exports p as a PEFT prefix-tuning adapter: *config (new NUL-terminated
 * text, *config_size bytes) is adapter_config.json and *tensors (new,
 * *tensors_size bytes) adapter_model.safetensors with prompt_embeddings F32
 * in the layout above; pd_prefix_import_peft of the two gives the same bits.
 * The caller frees both. PD_EUNSUPPORTED for a prefix that holds BOS
 * (has_bos: PEFT prefixes have none), PD_EMISMATCH when p is not shaped
 * for m, PD_ENOMEM. */
int pd_prefix_export_peft(const pd_prefix *p, const pd_model *m, char **config,
                          size_t *config_size, void **tensors, size_t *tensors_size, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_PREFIX_H */
