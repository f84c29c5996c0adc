/* gguf_write.c — the GGUF v3 writer (API in gguf.h).
 *
 * Metadata pairs are encoded as they are added into one growing buffer;
 * tensors are recorded with borrowed data pointers and their data-section
 * offsets fixed at add time. Writing builds only the head (header, pairs,
 * tensor infos, padding) and hands pd_write_file_atomic_parts a list of
 * parts: head, tensor 0, padding, tensor 1, …, so a model of any size is
 * written straight from its buffers without a second copy. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"
#include "prefixd/gguf.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf_write.c copies host values as little-endian: a little-endian host is required"
#endif

#define MAX_WRITER_ALIGNMENT 65536u

typedef struct wtensor {
    char name[PD_GGUF_MAX_NAME + 1];
    int n_dims;
    int64_t ne[PD_GGUF_MAX_DIMS];
    int type;
    const void *data; /* borrowed */
    uint64_t nbytes;
    uint64_t offset;  /* in the data section */
} wtensor;

struct pd_gguf_writer {
    uint8_t *kv;       /* encoded pairs (owned) */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;       /* copies, to refuse repeats (owned) */
    size_t keys_cap;
    wtensor *tensors;  /* (owned) */
    size_t n_tensors, tensors_cap;
    uint64_t info_len; /* encoded bytes of the tensor infos */
    uint64_t data_end; /* end of the last tensor in the data section */
    uint32_t alignment;
};

int pd_gguf_writer_create(pd_gguf_writer **out, pd_err *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory");
    (*out)->alignment = PD_GGUF_DEFAULT_ALIGNMENT;
    return PD_OK;
}

void pd_gguf_writer_free(pd_gguf_writer *w)
{
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->tensors);
    free(w);
}

/* ---- the pair buffer ---- */

static int put(pd_gguf_writer *w, const void *p, size_t n)
{
    if (n > SIZE_MAX / 2 - w->kv_len) return PD_ENOMEM;
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 256;
        while (cap < w->kv_len + n) cap *= 2;
        uint8_t *b = realloc(w->kv, cap);
        if (!b) return PD_ENOMEM;
        w->kv = b;
        w->kv_cap = cap;
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return PD_OK;
}

static int put_u32(pd_gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(pd_gguf_writer *w, uint64_t v) { return put(w, &v, 8); }

static int put_str(pd_gguf_writer *w, const char *s, uint64_t n)
{
    int rc = put_u64(w, n);
    return rc < 0 ? rc : put(w, s, (size_t)n);
}

/* Checks key, encodes it and the value type, and records the key. On
 * success the caller appends the value, then calls end_kv (or undo_kv on
 * failure). */
static int begin_kv(pd_gguf_writer *w, const char *key, int type, pd_err *err)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > PD_GGUF_MAX_KEY)
        return pd_err_set(err, PD_EINVAL, "gguf writer: key must be 1..%d bytes",
                          PD_GGUF_MAX_KEY);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return pd_err_set(err, PD_EEXIST, "gguf writer: key %s added twice", key);
    if (w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? w->keys_cap * 2 : 32;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k) return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory");
        w->keys = k;
        w->keys_cap = cap;
    }
    size_t mark = w->kv_len;
    if (put_str(w, key, n) < 0 || put_u32(w, (uint32_t)type) < 0) {
        w->kv_len = mark;
        return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory");
    }
    return PD_OK;
}

static int end_kv(pd_gguf_writer *w, const char *key, size_t mark, pd_err *err)
{
    char *copy = strdup(key);
    if (!copy) {
        w->kv_len = mark;
        return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory");
    }
    w->keys[w->n_kv++] = copy;
    return PD_OK;
}

static int undo_kv(pd_gguf_writer *w, const char *key, size_t mark, pd_err *err)
{
    w->kv_len = mark;
    return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory for key %s", key);
}

int pd_gguf_add_scalar(pd_gguf_writer *w, const char *key, int type, const void *value,
                       pd_err *err)
{
    size_t sz = pd_gguf_type_size(type);
    if (!sz)
        return pd_err_set(err, PD_EINVAL, "gguf writer: key %s: type %s is not a fixed-size "
                          "scalar", key ? key : "(null)", pd_gguf_type_name(type));
    if (type == PD_GGUF_BOOL && *(const uint8_t *)value > 1)
        return pd_err_set(err, PD_EINVAL, "gguf writer: key %s: bool must be 0 or 1", key);
    size_t mark = w->kv_len;
    int rc = begin_kv(w, key, type, err);
    if (rc < 0) return rc;
    if (put(w, value, sz) < 0) return undo_kv(w, key, mark, err);
    return end_kv(w, key, mark, err);
}

int pd_gguf_add_u32(pd_gguf_writer *w, const char *key, uint32_t v, pd_err *err)
{
    return pd_gguf_add_scalar(w, key, PD_GGUF_UINT32, &v, err);
}

int pd_gguf_add_i32(pd_gguf_writer *w, const char *key, int32_t v, pd_err *err)
{
    return pd_gguf_add_scalar(w, key, PD_GGUF_INT32, &v, err);
}

int pd_gguf_add_f32(pd_gguf_writer *w, const char *key, float v, pd_err *err)
{
    return pd_gguf_add_scalar(w, key, PD_GGUF_FLOAT32, &v, err);
}

int pd_gguf_add_bool(pd_gguf_writer *w, const char *key, int v, pd_err *err)
{
    uint8_t b = v ? 1 : 0;
    return pd_gguf_add_scalar(w, key, PD_GGUF_BOOL, &b, err);
}

int pd_gguf_add_str(pd_gguf_writer *w, const char *key, const char *s, pd_err *err)
{
    size_t mark = w->kv_len;
    int rc = begin_kv(w, key, PD_GGUF_STRING, err);
    if (rc < 0) return rc;
    if (put_str(w, s, strlen(s)) < 0) return undo_kv(w, key, mark, err);
    return end_kv(w, key, mark, err);
}

int pd_gguf_add_arr(pd_gguf_writer *w, const char *key, int elem_type, const void *elems,
                    uint64_t n, pd_err *err)
{
    size_t sz = pd_gguf_type_size(elem_type);
    if (!sz)
        return pd_err_set(err, PD_EINVAL, "gguf writer: key %s: element type %s is not "
                          "fixed-size", key ? key : "(null)", pd_gguf_type_name(elem_type));
    if (n > SIZE_MAX / 4 / sz)
        return pd_err_set(err, PD_EINVAL, "gguf writer: key %s: %llu elements is too many", key,
                          (unsigned long long)n);
    if (elem_type == PD_GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
            if (((const uint8_t *)elems)[i] > 1)
                return pd_err_set(err, PD_EINVAL, "gguf writer: key %s: bool must be 0 or 1",
                                  key);
    size_t mark = w->kv_len;
    int rc = begin_kv(w, key, PD_GGUF_ARRAY, err);
    if (rc < 0) return rc;
    if (put_u32(w, (uint32_t)elem_type) < 0 || put_u64(w, n) < 0 ||
        put(w, elems, (size_t)n * sz) < 0)
        return undo_kv(w, key, mark, err);
    return end_kv(w, key, mark, err);
}

int pd_gguf_add_arr_f32(pd_gguf_writer *w, const char *key, const float *v, uint64_t n,
                        pd_err *err)
{
    return pd_gguf_add_arr(w, key, PD_GGUF_FLOAT32, v, n, err);
}

int pd_gguf_add_arr_i32(pd_gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                        pd_err *err)
{
    return pd_gguf_add_arr(w, key, PD_GGUF_INT32, v, n, err);
}

int pd_gguf_add_arr_str(pd_gguf_writer *w, const char *key, const char *const *strs,
                        const uint64_t *lens, uint64_t n, pd_err *err)
{
    size_t mark = w->kv_len;
    int rc = begin_kv(w, key, PD_GGUF_ARRAY, err);
    if (rc < 0) return rc;
    if (put_u32(w, PD_GGUF_STRING) < 0 || put_u64(w, n) < 0) return undo_kv(w, key, mark, err);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = lens ? lens[i] : strlen(strs[i]);
        if (put_str(w, strs[i], len) < 0) return undo_kv(w, key, mark, err);
    }
    return end_kv(w, key, mark, err);
}

int pd_gguf_add_kv(pd_gguf_writer *w, const pd_gguf_kv *kv, pd_err *err)
{
    if (kv->key.len == 0 || kv->key.len > PD_GGUF_MAX_KEY)
        return pd_err_set(err, PD_EINVAL, "gguf writer: key must be 1..%d bytes",
                          PD_GGUF_MAX_KEY);
    char *key = malloc((size_t)kv->key.len + 1);
    if (!key) return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory");
    memcpy(key, kv->key.ptr, (size_t)kv->key.len);
    key[kv->key.len] = 0;
    int rc;
    size_t sz = pd_gguf_type_size(kv->type);
    if (kv->type == PD_GGUF_UINT32 && !strcmp(key, "general.alignment")) {
        rc = pd_gguf_writer_set_alignment(w, (uint32_t)kv->v.u, err);
    } else if (kv->type == PD_GGUF_STRING) {
        size_t mark = w->kv_len;
        if ((rc = begin_kv(w, key, PD_GGUF_STRING, err)) >= 0)
            rc = put_str(w, kv->v.s.ptr, kv->v.s.len) < 0 ? undo_kv(w, key, mark, err)
                                                          : end_kv(w, key, mark, err);
    } else if (kv->type == PD_GGUF_ARRAY) {
        size_t mark = w->kv_len;
        if ((rc = begin_kv(w, key, PD_GGUF_ARRAY, err)) >= 0)
            rc = put_u32(w, (uint32_t)kv->arr_type) < 0 || put_u64(w, kv->arr_n) < 0 ||
                         put(w, kv->arr_data, (size_t)kv->arr_bytes) < 0
                     ? undo_kv(w, key, mark, err)
                     : end_kv(w, key, mark, err);
    } else if (sz) {
        /* scalars: the stored bytes, from the decoded value (little-endian) */
        uint8_t raw[8];
        if (kv->type == PD_GGUF_FLOAT32) {
            float f = (float)kv->v.f; /* exact: it was widened from this float */
            memcpy(raw, &f, 4);
        } else if (kv->type == PD_GGUF_FLOAT64) {
            memcpy(raw, &kv->v.f, 8);
        } else if (kv->type == PD_GGUF_INT8 || kv->type == PD_GGUF_INT16 ||
                   kv->type == PD_GGUF_INT32 || kv->type == PD_GGUF_INT64) {
            memcpy(raw, &kv->v.i, 8);
        } else {
            memcpy(raw, &kv->v.u, 8);
        }
        rc = pd_gguf_add_scalar(w, key, kv->type, raw, err);
    } else {
        rc = pd_err_set(err, PD_EINVAL, "gguf writer: key %s has unknown type %d", key, kv->type);
    }
    free(key);
    return rc;
}

int pd_gguf_writer_set_alignment(pd_gguf_writer *w, uint32_t alignment, pd_err *err)
{
    if (w->n_tensors > 0)
        return pd_err_set(err, PD_EINVAL, "gguf writer: set the alignment before adding tensors");
    if (alignment == 0 || (alignment & (alignment - 1)) || alignment > MAX_WRITER_ALIGNMENT)
        return pd_err_set(err, PD_EINVAL,
                          "gguf writer: alignment %u is not a power of two in [1, %u]",
                          alignment, MAX_WRITER_ALIGNMENT);
    int rc = pd_gguf_add_u32(w, "general.alignment", alignment, err);
    if (rc < 0) return rc;
    w->alignment = alignment;
    return PD_OK;
}

/* ---- tensors ---- */

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int pd_gguf_add_tensor(pd_gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                       int type, const void *data, pd_err *err)
{
    size_t len = name ? strlen(name) : 0;
    uint32_t block_elems, block_bytes;
    if (len == 0 || len > PD_GGUF_MAX_NAME)
        return pd_err_set(err, PD_EINVAL, "gguf writer: tensor name must be 1..%d bytes",
                          PD_GGUF_MAX_NAME);
    if (n_dims < 1 || n_dims > PD_GGUF_MAX_DIMS)
        return pd_err_set(err, PD_EINVAL, "gguf writer: tensor %s: n_dims %d not in 1..%d",
                          name, n_dims, PD_GGUF_MAX_DIMS);
    if (pd_ggml_type_block(type, &block_elems, &block_bytes) < 0)
        return pd_err_set(err, PD_EINVAL, "gguf writer: tensor %s: unknown ggml type %d", name,
                          type);
    if (!data) return pd_err_set(err, PD_EINVAL, "gguf writer: tensor %s: no data", name);
    if (w->n_tensors >= (size_t)(INT_MAX / 2 - 1))
        return pd_err_set(err, PD_EINVAL, "gguf writer: too many tensors");
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return pd_err_set(err, PD_EEXIST, "gguf writer: tensor %s added twice", name);
    wtensor t = {0};
    memcpy(t.name, name, len + 1);
    t.n_dims = n_dims;
    t.type = type;
    t.data = data;
    uint64_t n_elems = 1;
    for (int d = 0; d < PD_GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] < 1 || (uint64_t)t.ne[d] > (uint64_t)INT64_MAX / n_elems)
            return pd_err_set(err, PD_EINVAL, "gguf writer: tensor %s: bad dimension %d = %lld",
                              name, d, (long long)t.ne[d]);
        n_elems *= (uint64_t)t.ne[d];
    }
    if ((uint64_t)t.ne[0] % block_elems != 0)
        return pd_err_set(err, PD_EINVAL,
                          "gguf writer: tensor %s: row length %lld is not a multiple of the "
                          "block of %u",
                          name, (long long)t.ne[0], block_elems);
    uint64_t n_blocks = n_elems / block_elems;
    if (n_blocks > ((uint64_t)1 << 62) / block_bytes)
        return pd_err_set(err, PD_EINVAL, "gguf writer: tensor %s is too large", name);
    t.nbytes = n_blocks * block_bytes;
    t.offset = align_up(w->data_end, w->alignment);
    if (t.offset + t.nbytes > ((uint64_t)1 << 62))
        return pd_err_set(err, PD_EINVAL, "gguf writer: data section too large");
    if (w->n_tensors == w->tensors_cap) {
        size_t cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
        wtensor *p = realloc(w->tensors, cap * sizeof *p);
        if (!p) return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory");
        w->tensors = p;
        w->tensors_cap = cap;
    }
    w->tensors[w->n_tensors++] = t;
    w->info_len += 8 + len + 4 + 8 * (uint64_t)n_dims + 4 + 8;
    w->data_end = t.offset + t.nbytes;
    return PD_OK;
}

/* ---- output ---- */

static uint64_t head_len(const pd_gguf_writer *w)
{
    uint64_t n = 24 + w->kv_len + w->info_len;
    return w->n_tensors ? align_up(n, w->alignment) : n;
}

uint64_t pd_gguf_writer_size(const pd_gguf_writer *w) { return head_len(w) + w->data_end; }

static void wr32(uint8_t **p, uint32_t v) { memcpy(*p, &v, 4); *p += 4; }
static void wr64(uint8_t **p, uint64_t v) { memcpy(*p, &v, 8); *p += 8; }

/* Encodes the head (header, pairs, tensor infos, zero padding) into buf,
 * which holds head_len(w) bytes. */
static void encode_head(const pd_gguf_writer *w, uint8_t *buf)
{
    uint8_t *p = buf;
    memcpy(p, "GGUF", 4);
    p += 4;
    wr32(&p, 3);
    wr64(&p, w->n_tensors);
    wr64(&p, w->n_kv);
    if (w->kv_len) memcpy(p, w->kv, w->kv_len);
    p += w->kv_len;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        size_t len = strlen(t->name);
        wr64(&p, len);
        memcpy(p, t->name, len);
        p += len;
        wr32(&p, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) wr64(&p, (uint64_t)t->ne[d]);
        wr32(&p, (uint32_t)t->type);
        wr64(&p, t->offset);
    }
    uint8_t *end = buf + head_len(w);
    PD_ASSERT(p <= end);
    memset(p, 0, (size_t)(end - p));
}

int pd_gguf_writer_write(const pd_gguf_writer *w, const char *path, pd_err *err)
{
    uint64_t hl = head_len(w);
    if (hl > SIZE_MAX / 2) return pd_err_set(err, PD_ENOMEM, "%s: header too large", path);
    int n_parts = 1 + 2 * (int)w->n_tensors;
    uint8_t *head = malloc((size_t)hl);
    uint8_t *zeros = calloc(1, w->alignment);
    const void **parts = malloc((size_t)n_parts * sizeof *parts);
    size_t *lens = malloc((size_t)n_parts * sizeof *lens);
    int rc;
    if (!head || !zeros || !parts || !lens) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory for the GGUF header", path);
        goto done;
    }
    encode_head(w, head);
    int k = 0;
    parts[k] = head;
    lens[k++] = (size_t)hl;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        parts[k] = t->data;
        lens[k++] = (size_t)t->nbytes;
        uint64_t end = t->offset + t->nbytes;
        uint64_t next = i + 1 < w->n_tensors ? w->tensors[i + 1].offset : end;
        PD_ASSERT(next >= end && next - end < w->alignment);
        parts[k] = zeros;
        lens[k++] = (size_t)(next - end);
    }
    rc = pd_write_file_atomic_parts(path, parts, lens, k, err);
done:
    free(head);
    free(zeros);
    free(parts);
    free(lens);
    return rc;
}

int pd_gguf_writer_to_mem(const pd_gguf_writer *w, void **data, size_t *size, pd_err *err)
{
    *data = NULL;
    *size = 0;
    uint64_t total = pd_gguf_writer_size(w);
    if (total > SIZE_MAX / 2) return pd_err_set(err, PD_ENOMEM, "gguf writer: file too large");
    uint8_t *buf = calloc(1, (size_t)total ? (size_t)total : 1);
    if (!buf)
        return pd_err_set(err, PD_ENOMEM, "gguf writer: out of memory for %llu bytes",
                          (unsigned long long)total);
    encode_head(w, buf);
    uint64_t hl = head_len(w);
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        memcpy(buf + hl + t->offset, t->data, (size_t)t->nbytes);
    }
    *data = buf;
    *size = (size_t)total;
    return PD_OK;
}
