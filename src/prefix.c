/* prefix.c — the pd_prefix object (reference count, metadata) and its file
 * format: parse and validate against a model, serialize, save atomically.
 *
 * Format (see prefixd/prefix.h): a safetensors file with tensors "keys" and
 * "values", each [n_layers, n_kv_heads, P, head_dim], both F32 or both F16,
 * and string metadata. A file is accepted only when every check passes:
 * format string, task name, base fingerprint, both tensors present with the
 * same dtype and the model's shape, 1 <= P <= seq_len - 1,
 * num_virtual_tokens == P, has_bos "true"/"false", a known source, finite
 * values. The first failing check is reported, its message starting with the
 * file name. Keys and values live in one allocation, keys first (floats, or
 * halves after pd_prefix_to_f16).
 */
#include "prefixd/prefix.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "prefix_internal.h"
#include "prefixd/half.h"
#include "prefixd/safetensors.h"

/* The smallest magnitude that rounds to infinity in F16. */
#define F16_OVERFLOW 65520.0f

/* ---- names and messages ---- */

int pd_task_name_valid(const char *name)
{
    if (!name) return 0;
    size_t n = 0;
    for (; name[n]; n++) {
        char ch = name[n];
        int alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (n == 0 || (ch != '.' && ch != '_' && ch != '-'))) return 0;
        if (n >= PD_TASK_NAME_MAX) return 0;
    }
    return n >= 1;
}

/* Copies untrusted text s into buf (cap >= 8) for a one-line message:
 * printable ASCII as is, other bytes as \xNN, cut with "..." when long. */
static const char *show(char *buf, size_t cap, const char *s)
{
    size_t at = 0;
    if (!s) s = "(null)";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        size_t need = (ch >= 0x20 && ch < 0x7f) ? 1 : 4;
        if (at + need + 4 > cap) {
            memcpy(buf + at, "...", 4);
            return buf;
        }
        if (need == 1)
            buf[at++] = (char)ch;
        else
            at += (size_t)snprintf(buf + at, cap - at, "\\x%02x", ch);
    }
    buf[at] = 0;
    return buf;
}

/* Makes err's message start with "name: " unless it already does; returns rc. */
static int named(pd_err *err, int rc, const char *name)
{
    if (err && strncmp(err->msg, name, strlen(name)) != 0) {
        char tmp[PD_ERR_MSG_MAX];
        memcpy(tmp, err->msg, sizeof tmp);
        tmp[sizeof tmp - 1] = 0;
        pd_err_set(err, rc, "%s: %s", name, tmp);
    }
    return rc;
}

long pd__first_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long)i;
    return -1;
}

const char *pd__prefix_index_str(char *buf, size_t cap, const pd_prefix *p, size_t i)
{
    size_t hd = (size_t)p->head_dim, P = (size_t)p->n_tokens, H = (size_t)p->n_kv_heads;
    int n = snprintf(buf, cap, "layer %zu, kv head %zu, slot %zu, dim %zu", i / (hd * P * H),
                     i / (hd * P) % H, i / hd % P, i % hd);
    PD_ASSERT(n >= 0 && (size_t)n < cap); /* callers pass 96 bytes */
    return buf;
}

static const char *nonfinite_kind(float v) { return isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf"; }

/* The current time, ISO 8601 UTC ("2024-05-01T12:00:00Z"), into buf. */
static const char *now_iso(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(buf, cap, "1970-01-01T00:00:00Z");
    return buf;
}

static int source_valid(const char *s)
{
    return !strcmp(s, "trained") || !strcmp(s, "prompt") || !strcmp(s, "peft");
}

/* ---- the object ---- */

static size_t tensor_floats(const pd_prefix *p)
{
    return (size_t)p->n_layers * (size_t)p->n_kv_heads * (size_t)p->n_tokens *
           (size_t)p->head_dim;
}

int pd_prefix_create(const pd_model *m, const char *task, int n_tokens, pd_prefix **out,
                     pd_err *err)
{
    PD_ASSERT(m && out);
    *out = NULL;
    const pd_config *c = &m->cfg;
    char tb[96];
    if (!pd_task_name_valid(task))
        return pd_err_set(err, PD_EINVAL,
                          "invalid task name '%s': want 1 to %d characters of "
                          "[A-Za-z0-9._-], starting with a letter or digit",
                          show(tb, sizeof tb, task), PD_TASK_NAME_MAX);
    if (n_tokens < 1 || n_tokens > c->seq_len - 1)
        return pd_err_set(err, PD_EINVAL, "task '%s': %d virtual tokens outside [1, %d]", task,
                          n_tokens, c->seq_len - 1);
    pd_prefix *p = calloc(1, sizeof *p);
    if (!p) return pd_err_set(err, PD_ENOMEM, "task '%s': out of memory", task);
    p->n_layers = c->n_layers;
    p->n_kv_heads = c->n_kv_heads;
    p->head_dim = c->head_dim;
    p->n_tokens = n_tokens;
    size_t n = tensor_floats(p);
    float *kv = calloc(2 * n, sizeof *kv);
    if (!kv) {
        free(p);
        return pd_err_set(err, PD_ENOMEM, "task '%s': out of memory for %zu prefix values", task,
                          2 * n);
    }
    atomic_init(&p->refs, 1);
    strcpy(p->task, task);
    p->keys = kv;
    p->values = kv + n;
    p->bytes = sizeof *p + 2 * n * sizeof *kv;
    *out = p;
    return PD_OK;
}

pd_prefix *pd_prefix_retain(pd_prefix *p)
{
    PD_ASSERT(p);
    int before = atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    PD_ASSERT(before >= 1);
    return p;
}

void pd_prefix_release(pd_prefix *p)
{
    if (!p) return;
    int before = atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel);
    PD_ASSERT(before >= 1);
    if (before != 1) return;
    for (int i = 0; i < p->n_meta; i++) {
        free(p->meta[i].key);
        free(p->meta[i].value);
    }
    free(p->meta);
    free(p->keys); /* values share this block */
    free(p->keys16); /* values16 share this block */
    free(p);
}

int pd_prefix_to_f16(pd_prefix *p, pd_err *err)
{
    PD_ASSERT(p);
    if (p->keys16) return PD_OK;
    const size_t n = tensor_floats(p);
    uint16_t *h = malloc(2 * n * sizeof *h);
    if (!h)
        return pd_err_set(err, PD_ENOMEM, "task '%s': out of memory for %zu prefix halves", p->task,
                          2 * n);
    pd_f32_to_f16_n(p->keys, h, 2 * n); /* values follow keys */
    free(p->keys);
    p->keys = p->values = NULL;
    p->keys16 = h;
    p->values16 = h + n;
    p->bytes -= 2 * n * (sizeof(float) - sizeof *h);
    return PD_OK;
}

int pd_prefix_widen(const pd_prefix *p, pd_prefix **out, pd_err *err)
{
    PD_ASSERT(p && out);
    *out = NULL;
    if (p->keys) {
        *out = pd_prefix_retain((pd_prefix *)p);
        return PD_OK;
    }
    const size_t n = tensor_floats(p);
    pd_prefix *w = calloc(1, sizeof *w);
    float *kv = malloc(2 * n * sizeof *kv);
    if (!w || !kv) {
        free(w);
        free(kv);
        return pd_err_set(err, PD_ENOMEM, "task '%s': out of memory widening the prefix", p->task);
    }
    atomic_init(&w->refs, 1);
    memcpy(w->task, p->task, sizeof w->task);
    w->n_layers = p->n_layers;
    w->n_kv_heads = p->n_kv_heads;
    w->head_dim = p->head_dim;
    w->n_tokens = p->n_tokens;
    w->has_bos = p->has_bos;
    w->content_id = p->content_id;
    pd_f16_to_f32_n(p->keys16, kv, 2 * n); /* values16 follow keys16 */
    w->keys = kv;
    w->values = kv + n;
    w->bytes = sizeof *w + 2 * n * sizeof *kv;
    for (int i = 0; i < p->n_meta; i++) {
        int rc = pd_prefix_meta_set(w, p->meta[i].key, p->meta[i].value, err);
        if (rc < 0) {
            pd_prefix_release(w);
            return rc;
        }
    }
    *out = w;
    return PD_OK;
}

int pd_prefix_attach(pd_seq *s, const pd_prefix *p, pd_err *err)
{
    if (!p) return pd_seq_set_prefix_f16(s, 0, NULL, NULL, err);
    if (p->keys16) return pd_seq_set_prefix_f16(s, p->n_tokens, p->keys16, p->values16, err);
    int rc = pd_seq_set_prefix(s, p->n_tokens, p->keys, p->values);
    return rc < 0 ? pd_err_set(err, rc, "task '%s': out of memory converting the prefix to F16",
                               p->task)
                  : PD_OK;
}

const char *pd_prefix_meta_get(const pd_prefix *p, const char *key)
{
    PD_ASSERT(p && key);
    for (int i = 0; i < p->n_meta; i++)
        if (!strcmp(p->meta[i].key, key)) return p->meta[i].value;
    return NULL;
}

int pd_prefix_meta_set(pd_prefix *p, const char *key, const char *value, pd_err *err)
{
    PD_ASSERT(p && key && value);
    char *v = strdup(value);
    if (!v) return pd_err_set(err, PD_ENOMEM, "task '%s': out of memory for metadata", p->task);
    for (int i = 0; i < p->n_meta; i++) {
        if (strcmp(p->meta[i].key, key)) continue;
        p->bytes = p->bytes - strlen(p->meta[i].value) + strlen(v);
        free(p->meta[i].value);
        p->meta[i].value = v;
        return PD_OK;
    }
    char *k = strdup(key);
    pd_prefix_meta *grown = k ? realloc(p->meta, (size_t)(p->n_meta + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(k);
        free(v);
        return pd_err_set(err, PD_ENOMEM, "task '%s': out of memory for metadata", p->task);
    }
    p->meta = grown;
    p->meta[p->n_meta].key = k;
    p->meta[p->n_meta].value = v;
    p->n_meta++;
    p->bytes += sizeof *grown + strlen(k) + 1 + strlen(v) + 1;
    return PD_OK;
}

int pd__prefix_stamp(pd_prefix *p, const char *source, pd_err *err)
{
    char now[32];
    int rc = pd_prefix_meta_set(p, "source", source, err);
    if (rc == PD_OK) rc = pd_prefix_meta_set(p, "created_at", now_iso(now, sizeof now), err);
    return rc;
}

/* ---- reading ---- */

/* Parses a decimal count (digits only, at most 9) into *out; 0 on success. */
static int parse_count(const char *s, long *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

static int is_hex16(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
            return 0;
    }
    return n == 16;
}

static const char *shape_str(char *buf, size_t cap, const pd_st_tensor *t)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->n_dims && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
    return buf;
}

/* Checks one of the two tensors for presence, dtype and the model's shape
 * [n_layers, n_kv_heads, *, head_dim]. */
static int check_tensor(const char *file, const pd_st_tensor *t, const char *what,
                        const pd_config *c, pd_err *err)
{
    char sb[128];
    if (!t) return pd_err_set(err, PD_EFORMAT, "%s: no tensor '%s'", file, what);
    if (t->dtype != PD_ST_F32 && t->dtype != PD_ST_F16)
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s' is %s; prefix tensors are F32 or F16",
                          file, what, pd_st_dtype_name(t->dtype));
    if (t->n_dims != 4)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: tensor '%s' has shape %s; expected 4 dimensions [n_layers, "
                          "n_kv_heads, P, head_dim]",
                          file, what, shape_str(sb, sizeof sb, t));
    static const char *const dim_name[4] = {"layers", "kv heads", NULL, "head dim"};
    const int want[4] = {c->n_layers, c->n_kv_heads, 0, c->head_dim};
    for (int d = 0; d < 4; d++) {
        if (!dim_name[d] || t->shape[d] == want[d]) continue;
        return pd_err_set(err, PD_EMISMATCH,
                          "%s: tensor '%s' has shape %s: %lld %s, but this model has %d "
                          "(expected [%d, %d, P, %d])",
                          file, what, shape_str(sb, sizeof sb, t), (long long)t->shape[d],
                          dim_name[d], want[d], c->n_layers, c->n_kv_heads, c->head_dim);
    }
    return PD_OK;
}

/* Checks the metadata that names the file's kind and owner. */
static int check_meta(const pd_st *st, const char *file, const pd_model *m, pd_err *err)
{
    char b1[96], b2[96];
    const char *v = pd_st_meta_get(st, "format");
    if (!v)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: no \"format\" in __metadata__: not a prefixd prefix file "
                          "(expected \"%s\")",
                          file, PD_PREFIX_FORMAT);
    if (strcmp(v, PD_PREFIX_FORMAT)) {
        if (!strncmp(v, "prefixd.prefix/", strlen("prefixd.prefix/")))
            return pd_err_set(err, PD_EVERSION,
                              "%s: format \"%s\" is not supported; this build reads \"%s\"",
                              file, show(b1, sizeof b1, v), PD_PREFIX_FORMAT);
        return pd_err_set(err, PD_EFORMAT, "%s: format is \"%s\", not \"%s\"", file,
                          show(b1, sizeof b1, v), PD_PREFIX_FORMAT);
    }
    v = pd_st_meta_get(st, "task");
    if (!v) return pd_err_set(err, PD_EFORMAT, "%s: no \"task\" in __metadata__", file);
    if (!pd_task_name_valid(v))
        return pd_err_set(err, PD_EFORMAT,
                          "%s: task name \"%s\" in __metadata__ is invalid (want "
                          "[A-Za-z0-9][A-Za-z0-9._-]{0,63})",
                          file, show(b1, sizeof b1, v));
    v = pd_st_meta_get(st, "base_fingerprint");
    if (!v) return pd_err_set(err, PD_EFORMAT, "%s: no \"base_fingerprint\" in __metadata__", file);
    if (!is_hex16(v))
        return pd_err_set(err, PD_EFORMAT,
                          "%s: base_fingerprint \"%s\" is not 16 hexadecimal digits", file,
                          show(b1, sizeof b1, v));
    if (strcasecmp(v, m->fingerprint_hex))
        return pd_err_set(err, PD_EMISMATCH, "%s: made for base %s, this model is %s (%s)", file,
                          show(b1, sizeof b1, v), m->fingerprint_hex, show(b2, sizeof b2, m->id));
    v = pd_st_meta_get(st, "has_bos");
    if (!v) return pd_err_set(err, PD_EFORMAT, "%s: no \"has_bos\" in __metadata__", file);
    if (strcmp(v, "true") && strcmp(v, "false"))
        return pd_err_set(err, PD_EFORMAT, "%s: has_bos is \"%s\", not \"true\" or \"false\"",
                          file, show(b1, sizeof b1, v));
    v = pd_st_meta_get(st, "source");
    if (v && !source_valid(v))
        return pd_err_set(err, PD_EFORMAT,
                          "%s: source is \"%s\", not one of trained, prompt, peft", file,
                          show(b1, sizeof b1, v));
    return PD_OK;
}

/* Validates a parsed file and builds the prefix from it. */
static int from_st(const pd_st *st, const char *file, const pd_model *m, pd_prefix **out,
                   pd_err *err)
{
    const pd_config *c = &m->cfg;
    char b1[96];
    int rc = check_meta(st, file, m, err);
    if (rc < 0) return rc;

    const pd_st_tensor *k = pd_st_find(st, "keys"), *v = pd_st_find(st, "values");
    if ((rc = check_tensor(file, k, "keys", c, err)) < 0) return rc;
    if ((rc = check_tensor(file, v, "values", c, err)) < 0) return rc;
    if (k->dtype != v->dtype)
        return pd_err_set(err, PD_EFORMAT, "%s: keys are %s but values are %s; both must match",
                          file, pd_st_dtype_name(k->dtype), pd_st_dtype_name(v->dtype));
    const long long P = k->shape[2];
    if (v->shape[2] != P)
        return pd_err_set(err, PD_EFORMAT, "%s: keys hold %lld slots but values hold %lld", file,
                          P, (long long)v->shape[2]);
    if (P < 1) return pd_err_set(err, PD_EFORMAT, "%s: the tensors hold no virtual tokens", file);
    if (P > c->seq_len - 1)
        return pd_err_set(err, PD_ERANGE,
                          "%s: %lld virtual tokens leave no room in this model's context of %d "
                          "(at most %d)",
                          file, P, c->seq_len, c->seq_len - 1);
    const char *nvt = pd_st_meta_get(st, "num_virtual_tokens");
    long nv;
    if (!nvt)
        return pd_err_set(err, PD_EFORMAT, "%s: no \"num_virtual_tokens\" in __metadata__", file);
    if (parse_count(nvt, &nv) < 0)
        return pd_err_set(err, PD_EFORMAT, "%s: num_virtual_tokens \"%s\" is not a count", file,
                          show(b1, sizeof b1, nvt));
    if (nv != P)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: num_virtual_tokens is %ld but the tensors hold %lld slots", file,
                          nv, P);

    pd_prefix *p;
    rc = pd_prefix_create(m, pd_st_meta_get(st, "task"), (int)P, &p, err);
    if (rc < 0) return named(err, rc, file);
    p->has_bos = !strcmp(pd_st_meta_get(st, "has_bos"), "true");
    size_t n = tensor_floats(p);
    if ((rc = pd_st_tensor_to_f32(k, p->keys, n, err)) < 0 ||
        (rc = pd_st_tensor_to_f32(v, p->values, n, err)) < 0) {
        pd_prefix_release(p);
        return named(err, rc, file);
    }
    for (int which = 0; which < 2; which++) {
        const float *x = which ? p->values : p->keys;
        long bad = pd__first_nonfinite(x, n);
        if (bad < 0) continue;
        char ib[96];
        rc = pd_err_set(err, PD_EFORMAT, "%s: %s[%ld] (%s) is %s", file,
                        which ? "values" : "keys", bad,
                        pd__prefix_index_str(ib, sizeof ib, p, (size_t)bad),
                        nonfinite_kind(x[bad]));
        pd_prefix_release(p);
        return rc;
    }
    for (int i = 0; i < pd_st_n_meta(st); i++) {
        const pd_st_kv *kv = pd_st_meta_at(st, i);
        if ((rc = pd_prefix_meta_set(p, kv->key, kv->value, err)) < 0) {
            pd_prefix_release(p);
            return named(err, rc, file);
        }
    }
    *out = p;
    return PD_OK;
}

int pd_prefix_parse(const void *data, size_t size, const char *name, const pd_model *m,
                    pd_prefix **out, pd_err *err)
{
    PD_ASSERT(m && out);
    *out = NULL;
    if (!name) name = "prefix";
    pd_st *st;
    int rc = pd_st_parse(data, size, name, &st, err);
    if (rc < 0) return named(err, rc, name);
    rc = from_st(st, name, m, out, err);
    pd_st_free(st);
    return rc;
}

int pd_prefix_load(const char *path, const pd_model *m, pd_prefix **out, pd_err *err)
{
    PD_ASSERT(path && m && out);
    *out = NULL;
    pd_st *st;
    int rc = pd_st_open(path, &st, err);
    if (rc < 0) return named(err, rc, path);
    rc = from_st(st, path, m, out, err);
    pd_st_free(st);
    return rc;
}

/* ---- writing ---- */

/* Checks p against m and fills a new writer with its metadata and tensors. */
static int build_writer(const pd_prefix *p, const pd_model *m, int f16, const char *name,
                        pd_st_writer **out, pd_err *err)
{
    const pd_config *c = &m->cfg;
    *out = NULL;
    if (p->n_layers != c->n_layers || p->n_kv_heads != c->n_kv_heads ||
        p->head_dim != c->head_dim)
        return pd_err_set(err, PD_EMISMATCH,
                          "%s: prefix shaped for %d layers, %d kv heads, head dim %d; this model "
                          "has %d, %d, %d",
                          name, p->n_layers, p->n_kv_heads, p->head_dim, c->n_layers,
                          c->n_kv_heads, c->head_dim);
    if (p->n_tokens < 1 || p->n_tokens > c->seq_len - 1)
        return pd_err_set(err, PD_ERANGE, "%s: %d virtual tokens outside [1, %d]", name,
                          p->n_tokens, c->seq_len - 1);
    if (!pd_task_name_valid(p->task))
        return pd_err_set(err, PD_EINVAL, "%s: invalid task name", name);
    const char *src = pd_prefix_meta_get(p, "source");
    if (src && !source_valid(src))
        return pd_err_set(err, PD_EINVAL, "%s: source \"%s\" is not one of trained, prompt, peft",
                          name, src);
    size_t n = tensor_floats(p);
    for (int which = 0; which < 2; which++) {
        const float *x = which ? p->values : p->keys;
        for (size_t i = 0; i < n; i++) {
            if (isfinite(x[i]) && !(f16 && fabsf(x[i]) >= F16_OVERFLOW)) continue;
            char ib[96];
            return pd_err_set(err, isfinite(x[i]) ? PD_ERANGE : PD_EINVAL,
                              "%s: %s[%zu] (%s) is %g%s", name, which ? "values" : "keys", i,
                              pd__prefix_index_str(ib, sizeof ib, p, i), (double)x[i],
                              isfinite(x[i]) ? ", too large for F16" : "");
        }
    }

    pd_st_writer *w = pd_st_writer_new();
    if (!w) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", name);
    char nvt[16];
    snprintf(nvt, sizeof nvt, "%d", p->n_tokens);
    int rc = PD_OK;
    for (int i = 0; i < p->n_meta && rc == PD_OK; i++)
        rc = pd_st_writer_set_meta(w, p->meta[i].key, p->meta[i].value, err);
    if (rc == PD_OK) rc = pd_st_writer_set_meta(w, "format", PD_PREFIX_FORMAT, err);
    if (rc == PD_OK) rc = pd_st_writer_set_meta(w, "task", p->task, err);
    if (rc == PD_OK) rc = pd_st_writer_set_meta(w, "base_fingerprint", m->fingerprint_hex, err);
    if (rc == PD_OK) rc = pd_st_writer_set_meta(w, "num_virtual_tokens", nvt, err);
    if (rc == PD_OK) rc = pd_st_writer_set_meta(w, "has_bos", p->has_bos ? "true" : "false", err);
    if (rc == PD_OK && !pd_prefix_meta_get(p, "created_at")) {
        char now[32];
        rc = pd_st_writer_set_meta(w, "created_at", now_iso(now, sizeof now), err);
    }
    const int64_t shape[4] = {p->n_layers, p->n_kv_heads, p->n_tokens, p->head_dim};
    const int dtype = f16 ? PD_ST_F16 : PD_ST_F32;
    if (rc == PD_OK) rc = pd_st_writer_add_f32(w, "keys", dtype, 4, shape, p->keys, err);
    if (rc == PD_OK) rc = pd_st_writer_add_f32(w, "values", dtype, 4, shape, p->values, err);
    if (rc < 0) {
        pd_st_writer_free(w);
        return named(err, rc, name);
    }
    *out = w;
    return PD_OK;
}

int pd_prefix_save(const pd_prefix *p, const pd_model *m, const char *path, int f16,
                   pd_err *err)
{
    PD_ASSERT(p && m && path);
    if (p->keys16) { /* held as halves: written from their exact widening */
        pd_prefix *wide;
        int rc = pd_prefix_widen(p, &wide, err);
        if (rc == PD_OK) rc = pd_prefix_save(wide, m, path, f16, err);
        pd_prefix_release(wide);
        return rc;
    }
    pd_st_writer *w;
    int rc = build_writer(p, m, f16, path, &w, err);
    if (rc < 0) return rc;
    rc = pd_st_writer_write(w, path, err);
    pd_st_writer_free(w);
    return rc < 0 ? named(err, rc, path) : PD_OK;
}

int pd_prefix_serialize(const pd_prefix *p, const pd_model *m, int f16, void **data,
                        size_t *size, pd_err *err)
{
    PD_ASSERT(p && m && data && size);
    *data = NULL;
    *size = 0;
    if (p->keys16) { /* held as halves: written from their exact widening */
        pd_prefix *wide;
        int rc = pd_prefix_widen(p, &wide, err);
        if (rc == PD_OK) rc = pd_prefix_serialize(wide, m, f16, data, size, err);
        pd_prefix_release(wide);
        return rc;
    }
    char name[PD_TASK_NAME_MAX + 16];
    snprintf(name, sizeof name, "%s.safetensors", p->task);
    pd_st_writer *w;
    int rc = build_writer(p, m, f16, name, &w, err);
    if (rc < 0) return rc;
    rc = pd_st_writer_serialize(w, data, size, err);
    pd_st_writer_free(w);
    return rc < 0 ? named(err, rc, name) : PD_OK;
}
