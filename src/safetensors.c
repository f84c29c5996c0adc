/* safetensors.c — the safetensors reader (pd_st) and writer (pd_st_writer).
 *
 * Reader design: the header JSON is parsed with jansson, checked entry by
 * entry against the bytes present, then copied into plain arrays (tensors in
 * data order, a name index, metadata sorted by key) and one string pool, and
 * the JSON tree is dropped. A pd_st therefore holds no jansson object and is
 * read-only after parse; tensor data points into the caller's buffer or the
 * pd_st's own read-only mapping.
 *
 * Writer design: entries are built as JSON as they are added (so a duplicate
 * or non-UTF-8 name fails at the call that made it), and the data offsets
 * are fixed at that moment: tensors are laid out contiguously in the order
 * of addition.
 */
#include "prefixd/safetensors.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"
#include "prefixd/half.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* ---- dtypes ---- */

typedef struct dtype_info {
    const char *name;
    unsigned bits; /* element size in bits; < 8 or not a multiple of 8 are sub-byte */
} dtype_info;

/* Indexed by pd_st_dtype. */
static const dtype_info DTYPES[PD_ST_DTYPE_COUNT] = {
    [PD_ST_BOOL] = {"BOOL", 8},       [PD_ST_U8] = {"U8", 8},
    [PD_ST_I8] = {"I8", 8},           [PD_ST_F8_E5M2] = {"F8_E5M2", 8},
    [PD_ST_F8_E4M3] = {"F8_E4M3", 8}, [PD_ST_F8_E8M0] = {"F8_E8M0", 8},
    [PD_ST_I16] = {"I16", 16},        [PD_ST_U16] = {"U16", 16},
    [PD_ST_F16] = {"F16", 16},        [PD_ST_BF16] = {"BF16", 16},
    [PD_ST_I32] = {"I32", 32},        [PD_ST_U32] = {"U32", 32},
    [PD_ST_F32] = {"F32", 32},        [PD_ST_F64] = {"F64", 64},
    [PD_ST_I64] = {"I64", 64},        [PD_ST_U64] = {"U64", 64},
    [PD_ST_C64] = {"C64", 64},
};

/* Sub-byte types of the format that this reader does not lay out. */
static const char *const SUBBYTE_DTYPES[] = {"F4", "F6_E2M3", "F6_E3M2"};

const char *pd_st_dtype_name(int dtype)
{
    if (dtype < 0 || dtype >= PD_ST_DTYPE_COUNT) return "?";
    return DTYPES[dtype].name;
}

size_t pd_st_dtype_size(int dtype)
{
    if (dtype < 0 || dtype >= PD_ST_DTYPE_COUNT) return 0;
    return DTYPES[dtype].bits / 8;
}

int pd_st_dtype_parse(const char *name)
{
    for (int i = 0; i < PD_ST_DTYPE_COUNT; i++)
        if (strcmp(name, DTYPES[i].name) == 0) return i;
    return -1;
}

/* ---- helpers ---- */

/* Copies s into buf (cap bytes) for an error message: printable ASCII as is,
 * every other byte as \xNN, cut with "..." when too long; with quote set,
 * quotes and backslashes are escaped too (for text shown inside '...').
 * Returns buf. Names may hold any characters; the message must stay one
 * readable line. */
static const char *printable_text(char *buf, size_t cap, const char *s, int quote)
{
    PD_ASSERT(cap >= 8);
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[5];
        size_t k;
        if (quote && (*p == '\'' || *p == '"' || *p == '\\')) {
            tmp[0] = '\\';
            tmp[1] = (char)*p;
            k = 2;
        } else if (*p >= 0x20 && *p < 0x7f) {
            tmp[0] = (char)*p;
            k = 1;
        } else {
            static const char hex[] = "0123456789abcdef";
            tmp[0] = '\\';
            tmp[1] = 'x';
            tmp[2] = hex[*p >> 4];
            tmp[3] = hex[*p & 15];
            k = 4;
        }
        if (o + k + 4 > cap) { /* room for "..." and the NUL */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, tmp, k);
        o += k;
    }
    buf[o] = 0;
    return buf;
}

static const char *printable(char *buf, size_t cap, const char *s)
{
    return printable_text(buf, cap, s, 1);
}

#define NAME_BUF 72

static uint64_t read_u64le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void write_u64le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Element count of shape into *numel; 0 on success, -1 on overflow. A zero
 * dim makes the count 0 whatever the other dims are. */
static int shape_numel(const int64_t *shape, int n_dims, uint64_t *numel)
{
    uint64_t n = 1;
    for (int i = 0; i < n_dims; i++)
        if (shape[i] == 0) {
            *numel = 0;
            return 0;
        }
    for (int i = 0; i < n_dims; i++) {
        PD_ASSERT(shape[i] > 0);
        if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n)) return -1;
    }
    *numel = n;
    return 0;
}

/* Strict UTF-8 check (RFC 3629: no overlongs, no surrogates, <= U+10FFFF),
 * the rule jansson applies to strings and keys. */
static int utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        int len;
        unsigned cp;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        for (int i = 1; i < len; i++) {
            if ((p[i] & 0xc0) != 0x80) return 0; /* also stops at the NUL */
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return 0;
        p += len;
    }
    return 1;
}

/* ---- reader ---- */

struct pd_st {
    const unsigned char *base; /* the whole file (borrowed, or map) */
    size_t size;
    size_t header_size;        /* N */
    void *map;                 /* owned mapping from pd_st_open, or NULL */
    size_t map_size;
    pd_st_tensor *tensors;     /* n_tensors, sorted by offset (owned) */
    int n_tensors;
    const pd_st_tensor **by_name; /* n_tensors, sorted by name (owned) */
    pd_st_kv *meta;            /* n_meta, sorted by key (owned) */
    int n_meta;
    char *strings;             /* pool holding every name, key and value */
};

static int cmp_offset(const void *a, const void *b)
{
    const pd_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b)
{
    const pd_st_tensor *x = *(const pd_st_tensor *const *)a;
    const pd_st_tensor *y = *(const pd_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const pd_st_kv *)a)->key, ((const pd_st_kv *)b)->key);
}

/* Reads the non-negative JSON integer v into *out, or fails naming what. */
static int get_uint(const char *file, const char *tname, const char *what, int idx,
                    const json_t *v, uint64_t *out, pd_err *err)
{
    char nb[NAME_BUF];
    if (!json_is_integer(v))
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s': %s[%d] is not an integer",
                          file, printable(nb, sizeof nb, tname), what, idx);
    json_int_t i = json_integer_value(v);
    if (i < 0)
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s': %s[%d] = %lld is negative",
                          file, printable(nb, sizeof nb, tname), what, idx, (long long)i);
    *out = (uint64_t)i;
    return PD_OK;
}

/* Checks one tensor entry v named tname against a data buffer of buf_size
 * bytes and fills t, with t->offset relative to the buffer and t->name
 * borrowed from the JSON (both fixed up by the caller). */
static int parse_tensor(const char *file, const char *tname, const json_t *v,
                        uint64_t buf_size, pd_st_tensor *t, pd_err *err)
{
    char nb[NAME_BUF], db[NAME_BUF];
    const char *pn = printable(nb, sizeof nb, tname);
    memset(t, 0, sizeof *t);
    t->name = tname;
    if (!json_is_object(v))
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s': entry is not a JSON object",
                          file, pn);

    const json_t *jd = json_object_get(v, "dtype");
    const json_t *js = json_object_get(v, "shape");
    const json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo)
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s': missing \"%s\"", file, pn,
                          !jd ? "dtype" : !js ? "shape" : "data_offsets");

    /* dtype */
    if (!json_is_string(jd))
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s': \"dtype\" is not a string",
                          file, pn);
    const char *dname = json_string_value(jd);
    t->dtype = pd_st_dtype_parse(dname);
    if (t->dtype < 0) {
        for (size_t i = 0; i < sizeof SUBBYTE_DTYPES / sizeof *SUBBYTE_DTYPES; i++)
            if (strcmp(dname, SUBBYTE_DTYPES[i]) == 0)
                return pd_err_set(err, PD_EUNSUPPORTED,
                                  "%s: tensor '%s': sub-byte dtype %s is not supported",
                                  file, pn, dname);
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", file, pn,
                          printable(db, sizeof db, dname));
    }

    /* shape */
    if (!json_is_array(js))
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s': \"shape\" is not an array",
                          file, pn);
    size_t nd = json_array_size(js);
    if (nd > PD_ST_MAX_DIMS)
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: tensor '%s': shape has %zu dims, at most %d are supported",
                          file, pn, nd, PD_ST_MAX_DIMS);
    t->n_dims = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        int rc = get_uint(file, tname, "shape", (int)i, json_array_get(js, i), &d, err);
        if (rc < 0) return rc;
        t->shape[i] = (int64_t)d; /* d <= LLONG_MAX: came from a json_int_t */
    }
    size_t esize = pd_st_dtype_size(t->dtype);
    uint64_t need;
    if (shape_numel(t->shape, t->n_dims, &t->numel) < 0 ||
        __builtin_mul_overflow(t->numel, (uint64_t)esize, &need))
        return pd_err_set(err, PD_ERANGE, "%s: tensor '%s': element count of the shape overflows",
                          file, pn);

    /* data_offsets */
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: tensor '%s': \"data_offsets\" is not an array of two integers",
                          file, pn);
    uint64_t begin, end;
    int rc = get_uint(file, tname, "data_offsets", 0, json_array_get(jo, 0), &begin, err);
    if (rc < 0) return rc;
    rc = get_uint(file, tname, "data_offsets", 1, json_array_get(jo, 1), &end, err);
    if (rc < 0) return rc;
    if (begin > end)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: tensor '%s': data_offsets begin %llu is after end %llu", file, pn,
                          (unsigned long long)begin, (unsigned long long)end);
    if (end > buf_size)
        return pd_err_set(err, PD_ETRUNC,
                          "%s: tensor '%s': data_offsets end %llu is past the end of the data "
                          "buffer (%llu bytes)",
                          file, pn, (unsigned long long)end, (unsigned long long)buf_size);
    if (end - begin != need)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: tensor '%s': data_offsets span %llu bytes but %llu elements of "
                          "%s need %llu",
                          file, pn, (unsigned long long)(end - begin),
                          (unsigned long long)t->numel, pd_st_dtype_name(t->dtype),
                          (unsigned long long)need);
    t->offset = begin;
    t->nbytes = (size_t)need; /* need <= buf_size <= SIZE_MAX */
    return PD_OK;
}

/* Checks "__metadata__": an object whose values are all strings. Adds the
 * string bytes it needs (with NULs) to *pool. */
static int check_meta(const char *file, const json_t *m, size_t *pool, pd_err *err)
{
    if (!json_is_object(m))
        return pd_err_set(err, PD_EFORMAT, "%s: \"__metadata__\" is not a JSON object", file);
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)m, k, v) {
        if (!json_is_string(v)) {
            char kb[NAME_BUF];
            return pd_err_set(err, PD_EFORMAT,
                              "%s: \"__metadata__\" value of '%s' is not a string", file,
                              printable(kb, sizeof kb, k));
        }
        *pool += strlen(k) + 1 + json_string_length(v) + 1;
    }
    return PD_OK;
}

static char *pool_put(char **pool, const char *s)
{
    size_t n = strlen(s) + 1;
    char *dst = *pool;
    memcpy(dst, s, n);
    *pool += n;
    return dst;
}

void pd_st_free(pd_st *st)
{
    if (!st) return;
    free(st->tensors);
    free(st->by_name);
    free(st->meta);
    free(st->strings);
    pd_unmap(st->map, st->map_size);
    free(st);
}

/* Validates root (already a JSON object) and fills st's arrays. */
static int build(pd_st *st, const char *file, json_t *root, pd_err *err)
{
    uint64_t buf_size = st->size - 8 - st->header_size;
    size_t n_entries = json_object_size(root);
    size_t pool = 1;
    const json_t *meta = NULL;

    st->tensors = calloc(n_entries ? n_entries : 1, sizeof *st->tensors);
    if (!st->tensors) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", file);

    /* Entries in file order (jansson keeps insertion order), so the first
     * bad one is the one reported. */
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            int rc = check_meta(file, v, &pool, err);
            if (rc < 0) return rc;
            meta = v;
            continue;
        }
        pd_st_tensor *t = &st->tensors[st->n_tensors];
        int rc = parse_tensor(file, key, v, buf_size, t, err);
        if (rc < 0) return rc;
        t->offset += 8 + st->header_size;
        t->data = st->base + t->offset;
        pool += strlen(key) + 1;
        st->n_tensors++;
    }

    /* Overlaps: in begin order, every non-empty tensor must start at or
     * after the end of the last non-empty one. */
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, cmp_offset);
    const pd_st_tensor *last = NULL;
    for (int i = 0; i < st->n_tensors; i++) {
        const pd_st_tensor *t = &st->tensors[i];
        if (t->nbytes == 0) continue;
        if (last && t->offset < last->offset + last->nbytes) {
            char a[NAME_BUF], b[NAME_BUF];
            uint64_t d0 = 8 + st->header_size;
            return pd_err_set(err, PD_EFORMAT,
                              "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap",
                              file, printable(a, sizeof a, last->name),
                              (unsigned long long)(last->offset - d0),
                              (unsigned long long)(last->offset - d0 + last->nbytes),
                              printable(b, sizeof b, t->name),
                              (unsigned long long)(t->offset - d0),
                              (unsigned long long)(t->offset - d0 + t->nbytes));
        }
        last = t;
    }

    /* Copy every string out of the JSON tree into one pool. */
    st->n_meta = meta ? (int)json_object_size(meta) : 0;
    st->strings = malloc(pool);
    st->by_name = malloc((size_t)(st->n_tensors ? st->n_tensors : 1) * sizeof *st->by_name);
    st->meta = malloc((size_t)(st->n_meta ? st->n_meta : 1) * sizeof *st->meta);
    if (!st->strings || !st->by_name || !st->meta)
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory", file);
    char *p = st->strings;
    for (int i = 0; i < st->n_tensors; i++) {
        st->tensors[i].name = pool_put(&p, st->tensors[i].name);
        st->by_name[i] = &st->tensors[i];
    }
    if (meta) {
        int i = 0;
        json_object_foreach((json_t *)meta, key, v) {
            st->meta[i].key = pool_put(&p, key);
            st->meta[i].value = pool_put(&p, json_string_value(v));
            i++;
        }
    }
    PD_ASSERT((size_t)(p - st->strings) < pool);
    qsort(st->by_name, (size_t)st->n_tensors, sizeof *st->by_name, cmp_name);
    qsort(st->meta, (size_t)st->n_meta, sizeof *st->meta, cmp_key);
    return PD_OK;
}

int pd_st_parse(const void *data, size_t size, const char *name_for_errors, pd_st **out,
                pd_err *err)
{
    PD_ASSERT(out);
    PD_ASSERT(data || size == 0);
    *out = NULL;
    const char *file = name_for_errors ? name_for_errors : "safetensors";
    const unsigned char *p = data;

    if (size < 8)
        return pd_err_set(err, PD_ETRUNC,
                          "%s: %zu bytes, shorter than the 8-byte header length", file, size);
    uint64_t n = read_u64le(p);
    if (n > PD_ST_MAX_HEADER)
        return pd_err_set(err, PD_ERANGE, "%s: header length %llu is over the limit of %u bytes",
                          file, (unsigned long long)n, PD_ST_MAX_HEADER);
    if (n > size - 8)
        return pd_err_set(err, PD_ETRUNC,
                          "%s: header length %llu runs past the end of the file (%zu bytes)",
                          file, (unsigned long long)n, size);
    if (n == 0 || p[8] != '{')
        return pd_err_set(err, PD_EFORMAT, "%s: header does not start with '{'", file);

    json_error_t je;
    json_t *root = json_loadb((const char *)p + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char tb[sizeof je.text + 8];
        return pd_err_set(err, PD_EFORMAT,
                          "%s: header is not valid JSON: %s (line %d, column %d, byte %d)", file,
                          printable_text(tb, sizeof tb, je.text, 0), je.line, je.column, je.position);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return pd_err_set(err, PD_EFORMAT, "%s: header is not a JSON object", file);
    }

    pd_st *st = calloc(1, sizeof *st);
    if (!st) {
        json_decref(root);
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory", file);
    }
    st->base = p;
    st->size = size;
    st->header_size = (size_t)n;
    int rc = build(st, file, root, err);
    json_decref(root);
    if (rc < 0) {
        pd_st_free(st);
        return rc;
    }
    *out = st;
    return PD_OK;
}

int pd_st_open(const char *path, pd_st **out, pd_err *err)
{
    PD_ASSERT(path && out);
    *out = NULL;
    void *map;
    size_t size;
    int rc = pd_map_file(path, &map, &size, err);
    if (rc < 0) return rc;
    rc = pd_st_parse(map, size, path, out, err);
    if (rc < 0) {
        pd_unmap(map, size);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_size = size;
    return PD_OK;
}

int pd_st_n_tensors(const pd_st *st) { return st->n_tensors; }

const pd_st_tensor *pd_st_tensor_at(const pd_st *st, int i)
{
    PD_ASSERT(i >= 0 && i < st->n_tensors);
    return &st->tensors[i];
}

const pd_st_tensor *pd_st_find(const pd_st *st, const char *name)
{
    pd_st_tensor key = {.name = name};
    const pd_st_tensor *kp = &key;
    const pd_st_tensor **hit =
        bsearch(&kp, st->by_name, (size_t)st->n_tensors, sizeof *st->by_name, cmp_name);
    return hit ? *hit : NULL;
}

int pd_st_n_meta(const pd_st *st) { return st->n_meta; }

const pd_st_kv *pd_st_meta_at(const pd_st *st, int i)
{
    PD_ASSERT(i >= 0 && i < st->n_meta);
    return &st->meta[i];
}

const char *pd_st_meta_get(const pd_st *st, const char *key)
{
    pd_st_kv k = {.key = key};
    const pd_st_kv *hit = bsearch(&k, st->meta, (size_t)st->n_meta, sizeof *st->meta, cmp_key);
    return hit ? hit->value : NULL;
}

size_t pd_st_file_size(const pd_st *st) { return st->size; }
size_t pd_st_header_size(const pd_st *st) { return st->header_size; }

int pd_st_tensor_to_f32(const pd_st_tensor *t, float *dst, size_t n, pd_err *err)
{
    PD_ASSERT(t && (dst || n == 0));
    char nb[NAME_BUF];
    if (n != t->numel)
        return pd_err_set(err, PD_EINVAL, "tensor '%s': has %llu elements, not %zu",
                          printable(nb, sizeof nb, t->name), (unsigned long long)t->numel, n);
    switch (t->dtype) {
    case PD_ST_F32:
        if (n) memcpy(dst, t->data, n * sizeof *dst);
        return PD_OK;
    case PD_ST_F16:
        pd_f16_to_f32_n(t->data, dst, n);
        return PD_OK;
    case PD_ST_BF16:
        pd_bf16_to_f32_n(t->data, dst, n);
        return PD_OK;
    default:
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "tensor '%s': dtype %s cannot be converted to F32 (only F32, F16, BF16)",
                          printable(nb, sizeof nb, t->name), pd_st_dtype_name(t->dtype));
    }
}

/* ---- writer ---- */

typedef struct wtensor {
    const void *data; /* nbytes (borrowed, or == owned) */
    size_t nbytes;
    void *owned;      /* converted copy owned by the writer, or NULL */
} wtensor;

/* Owned by one thread at a time. */
struct pd_st_writer {
    json_t *tensors;    /* name -> {"dtype", "shape", "data_offsets"} (owned) */
    json_t *meta;       /* key -> string (owned) */
    wtensor *t;         /* n, in data order (owned) */
    int n, cap;
    uint64_t data_size; /* bytes of tensor data so far */
};

pd_st_writer *pd_st_writer_new(void)
{
    pd_st_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->tensors = json_object();
    w->meta = json_object();
    if (!w->tensors || !w->meta) {
        pd_st_writer_free(w);
        return NULL;
    }
    return w;
}

void pd_st_writer_free(pd_st_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].owned);
    free(w->t);
    json_decref(w->tensors);
    json_decref(w->meta);
    free(w);
}

int pd_st_writer_set_meta(pd_st_writer *w, const char *key, const char *value, pd_err *err)
{
    PD_ASSERT(w && key && value);
    char kb[NAME_BUF];
    if (!utf8_valid(key) || !utf8_valid(value))
        return pd_err_set(err, PD_EINVAL, "safetensors writer: metadata '%s' is not valid UTF-8",
                          printable(kb, sizeof kb, key));
    if (json_object_set_new(w->meta, key, json_string(value)) < 0)
        return pd_err_set(err, PD_ENOMEM, "safetensors writer: out of memory");
    return PD_OK;
}

/* Checks a tensor about to be added; *nbytes receives its data size. */
static int check_add(const pd_st_writer *w, const char *name, int dtype, int n_dims,
                     const int64_t *shape, size_t *nbytes, pd_err *err)
{
    char nb[NAME_BUF];
    const char *pn = printable(nb, sizeof nb, name);
    if (!utf8_valid(name))
        return pd_err_set(err, PD_EINVAL, "safetensors writer: tensor name '%s' is not valid UTF-8",
                          pn);
    if (strcmp(name, "__metadata__") == 0)
        return pd_err_set(err, PD_EINVAL, "safetensors writer: '__metadata__' is reserved");
    if (json_object_get(w->tensors, name))
        return pd_err_set(err, PD_EEXIST, "safetensors writer: tensor '%s' added twice", pn);
    if (pd_st_dtype_size(dtype) == 0)
        return pd_err_set(err, PD_EINVAL, "safetensors writer: tensor '%s': invalid dtype %d", pn,
                          dtype);
    if (n_dims < 0 || n_dims > PD_ST_MAX_DIMS)
        return pd_err_set(err, PD_EINVAL, "safetensors writer: tensor '%s': %d dims (0..%d)", pn,
                          n_dims, PD_ST_MAX_DIMS);
    PD_ASSERT(shape || n_dims == 0);
    for (int i = 0; i < n_dims; i++)
        if (shape[i] < 0)
            return pd_err_set(err, PD_EINVAL, "safetensors writer: tensor '%s': shape[%d] = %lld",
                              pn, i, (long long)shape[i]);
    if (w->n == INT32_MAX - 1)
        return pd_err_set(err, PD_ERANGE, "safetensors writer: too many tensors");
    uint64_t numel, bytes, end;
    if (shape_numel(shape, n_dims, &numel) < 0 ||
        __builtin_mul_overflow(numel, (uint64_t)pd_st_dtype_size(dtype), &bytes) ||
        __builtin_add_overflow(w->data_size, bytes, &end) || end > (uint64_t)INT64_MAX ||
        end > (uint64_t)SIZE_MAX)
        return pd_err_set(err, PD_ERANGE, "safetensors writer: tensor '%s': size overflows", pn);
    *nbytes = (size_t)bytes;
    return PD_OK;
}

/* Appends a checked tensor. Takes over owned (the converted copy, or NULL)
 * and frees it on failure. */
static int commit(pd_st_writer *w, const char *name, int dtype, int n_dims,
                  const int64_t *shape, const void *data, size_t nbytes, void *owned,
                  pd_err *err)
{
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 8;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) goto oom;
        w->t = t;
        w->cap = cap;
    }
    json_t *jshape = json_array();
    if (!jshape) goto oom;
    for (int i = 0; i < n_dims; i++)
        if (json_array_append_new(jshape, json_integer((json_int_t)shape[i])) < 0) {
            json_decref(jshape);
            goto oom;
        }
    json_int_t begin = (json_int_t)w->data_size, end = (json_int_t)(w->data_size + nbytes);
    json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", pd_st_dtype_name(dtype), "shape",
                              jshape, "data_offsets", begin, end);
    if (!entry) goto oom; /* json_pack consumed jshape */
    if (json_object_set_new(w->tensors, name, entry) < 0) goto oom;
    w->t[w->n++] = (wtensor){.data = data, .nbytes = nbytes, .owned = owned};
    w->data_size += nbytes;
    return PD_OK;
oom:
    free(owned);
    return pd_err_set(err, PD_ENOMEM, "safetensors writer: out of memory");
}

int pd_st_writer_add(pd_st_writer *w, const char *name, int dtype, int n_dims,
                     const int64_t *shape, const void *data, pd_err *err)
{
    PD_ASSERT(w && name);
    size_t nbytes;
    int rc = check_add(w, name, dtype, n_dims, shape, &nbytes, err);
    if (rc < 0) return rc;
    PD_ASSERT(data || nbytes == 0);
    return commit(w, name, dtype, n_dims, shape, data, nbytes, NULL, err);
}

int pd_st_writer_add_f32(pd_st_writer *w, const char *name, int dtype, int n_dims,
                         const int64_t *shape, const float *src, pd_err *err)
{
    PD_ASSERT(w && name);
    if (dtype != PD_ST_F32 && dtype != PD_ST_F16 && dtype != PD_ST_BF16) {
        char nb[NAME_BUF];
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "safetensors writer: tensor '%s': cannot store F32 data as %s",
                          printable(nb, sizeof nb, name), pd_st_dtype_name(dtype));
    }
    size_t nbytes;
    int rc = check_add(w, name, dtype, n_dims, shape, &nbytes, err);
    if (rc < 0) return rc;
    size_t n = nbytes / pd_st_dtype_size(dtype);
    PD_ASSERT(src || n == 0);
    unsigned char *buf = malloc(nbytes ? nbytes : 1);
    if (!buf) return pd_err_set(err, PD_ENOMEM, "safetensors writer: out of memory");
    if (dtype == PD_ST_F32) {
        if (n) memcpy(buf, src, nbytes);
    } else {
        uint16_t (*cvt)(float) = dtype == PD_ST_F16 ? pd_f32_to_f16 : pd_f32_to_bf16;
        for (size_t i = 0; i < n; i++) {
            uint16_t h = cvt(src[i]);
            buf[2 * i] = (unsigned char)(h & 0xff);
            buf[2 * i + 1] = (unsigned char)(h >> 8);
        }
    }
    return commit(w, name, dtype, n_dims, shape, buf, nbytes, buf, err);
}

/* Builds the 8-byte length and the space-padded header JSON into a new
 * malloc'd buffer *hdr of *hdr_size bytes (a multiple of 8). */
static int build_header(const pd_st_writer *w, unsigned char **hdr, size_t *hdr_size,
                        pd_err *err)
{
    *hdr = NULL;
    *hdr_size = 0;
    json_t *root = json_object();
    if (!root || json_object_update(root, w->tensors) < 0 ||
        (json_object_size(w->meta) > 0 && json_object_set(root, "__metadata__", w->meta) < 0)) {
        json_decref(root);
        return pd_err_set(err, PD_ENOMEM, "safetensors writer: out of memory");
    }
    const size_t flags = JSON_COMPACT | JSON_SORT_KEYS;
    size_t len = json_dumpb(root, NULL, 0, flags);
    if (len == 0) {
        json_decref(root);
        return pd_err_set(err, PD_ENOMEM, "safetensors writer: cannot encode the header");
    }
    size_t padded = (len + 7) & ~(size_t)7;
    if (padded > PD_ST_MAX_HEADER) {
        json_decref(root);
        return pd_err_set(err, PD_ERANGE,
                          "safetensors writer: header of %zu bytes is over the limit of %u",
                          padded, PD_ST_MAX_HEADER);
    }
    unsigned char *buf = malloc(8 + padded);
    if (!buf) {
        json_decref(root);
        return pd_err_set(err, PD_ENOMEM, "safetensors writer: out of memory");
    }
    size_t got = json_dumpb(root, (char *)buf + 8, len, flags);
    json_decref(root);
    PD_ASSERT(got == len);
    memset(buf + 8 + len, ' ', padded - len);
    write_u64le(buf, padded);
    *hdr = buf;
    *hdr_size = 8 + padded;
    return PD_OK;
}

int pd_st_writer_write(const pd_st_writer *w, const char *path, pd_err *err)
{
    PD_ASSERT(w && path);
    unsigned char *hdr;
    size_t hdr_size;
    int rc = build_header(w, &hdr, &hdr_size, err);
    if (rc < 0) return rc;
    const void **parts = malloc((size_t)(w->n + 1) * sizeof *parts);
    size_t *lens = malloc((size_t)(w->n + 1) * sizeof *lens);
    if (!parts || !lens) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
    } else {
        parts[0] = hdr;
        lens[0] = hdr_size;
        for (int i = 0; i < w->n; i++) {
            parts[i + 1] = w->t[i].data;
            lens[i + 1] = w->t[i].nbytes;
        }
        rc = pd_write_file_atomic_parts(path, parts, lens, w->n + 1, err);
    }
    free(parts);
    free(lens);
    free(hdr);
    return rc;
}

int pd_st_writer_serialize(const pd_st_writer *w, void **out, size_t *out_size, pd_err *err)
{
    PD_ASSERT(w && out && out_size);
    *out = NULL;
    *out_size = 0;
    unsigned char *hdr;
    size_t hdr_size;
    int rc = build_header(w, &hdr, &hdr_size, err);
    if (rc < 0) return rc;
    size_t total;
    if (__builtin_add_overflow(hdr_size, (size_t)w->data_size, &total)) {
        free(hdr);
        return pd_err_set(err, PD_ERANGE, "safetensors writer: file size overflows");
    }
    unsigned char *buf = realloc(hdr, total);
    if (!buf) {
        free(hdr);
        return pd_err_set(err, PD_ENOMEM, "safetensors writer: out of memory for %zu bytes",
                          total);
    }
    size_t o = hdr_size;
    for (int i = 0; i < w->n; i++) {
        if (w->t[i].nbytes) memcpy(buf + o, w->t[i].data, w->t[i].nbytes);
        o += w->t[i].nbytes;
    }
    PD_ASSERT(o == total);
    *out = buf;
    *out_size = total;
    return PD_OK;
}
