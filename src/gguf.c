/* gguf.c — the GGUF reader: parses and validates a whole file up front (the
 * checks are listed in gguf.h), then answers lookups by key and by tensor
 * name with binary searches over sorted indices. Also the value-type and
 * ggml-type tables that the writer shares.
 *
 * Design: one cursor walks the bytes; every read first compares its length
 * with the bytes left. Counts read from the file never size an allocation
 * before they are proven to fit: a count is refused when count × the
 * smallest encoding of one entry exceeds the bytes left, and the entry
 * arrays grow as entries are actually parsed. Multi-byte values are
 * assembled from little-endian bytes, so the reader works on any host and
 * never makes an unaligned load. */
#include "prefixd/gguf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"

/* ---- type tables ---- */

static const char *const value_type_names[PD_GGUF_N_TYPES] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

const char *pd_gguf_type_name(int type)
{
    return type >= 0 && type < PD_GGUF_N_TYPES ? value_type_names[type] : "?";
}

size_t pd_gguf_type_size(int type)
{
    switch (type) {
    case PD_GGUF_UINT8: case PD_GGUF_INT8: case PD_GGUF_BOOL: return 1;
    case PD_GGUF_UINT16: case PD_GGUF_INT16: return 2;
    case PD_GGUF_UINT32: case PD_GGUF_INT32: case PD_GGUF_FLOAT32: return 4;
    case PD_GGUF_UINT64: case PD_GGUF_INT64: case PD_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

typedef struct ggml_type_info {
    int type;
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} ggml_type_info;

/* Block geometry from ggml-common.h (QK_K = 256). */
static const ggml_type_info ggml_types[] = {
    {PD_GGML_F32, "F32", 1, 4},         {PD_GGML_F16, "F16", 1, 2},
    {PD_GGML_Q4_0, "Q4_0", 32, 18},     {PD_GGML_Q4_1, "Q4_1", 32, 20},
    {PD_GGML_Q5_0, "Q5_0", 32, 22},     {PD_GGML_Q5_1, "Q5_1", 32, 24},
    {PD_GGML_Q8_0, "Q8_0", 32, 34},     {PD_GGML_Q8_1, "Q8_1", 32, 36},
    {PD_GGML_Q2_K, "Q2_K", 256, 84},    {PD_GGML_Q3_K, "Q3_K", 256, 110},
    {PD_GGML_Q4_K, "Q4_K", 256, 144},   {PD_GGML_Q5_K, "Q5_K", 256, 176},
    {PD_GGML_Q6_K, "Q6_K", 256, 210},   {PD_GGML_Q8_K, "Q8_K", 256, 292},
    {PD_GGML_IQ2_XXS, "IQ2_XXS", 256, 66}, {PD_GGML_IQ2_XS, "IQ2_XS", 256, 74},
    {PD_GGML_IQ3_XXS, "IQ3_XXS", 256, 98}, {PD_GGML_IQ1_S, "IQ1_S", 256, 50},
    {PD_GGML_IQ4_NL, "IQ4_NL", 32, 18}, {PD_GGML_IQ3_S, "IQ3_S", 256, 110},
    {PD_GGML_IQ2_S, "IQ2_S", 256, 82},  {PD_GGML_IQ4_XS, "IQ4_XS", 256, 136},
    {PD_GGML_I8, "I8", 1, 1},           {PD_GGML_I16, "I16", 1, 2},
    {PD_GGML_I32, "I32", 1, 4},         {PD_GGML_I64, "I64", 1, 8},
    {PD_GGML_F64, "F64", 1, 8},         {PD_GGML_IQ1_M, "IQ1_M", 256, 56},
    {PD_GGML_BF16, "BF16", 1, 2},       {PD_GGML_TQ1_0, "TQ1_0", 256, 54},
    {PD_GGML_TQ2_0, "TQ2_0", 256, 66},  {PD_GGML_MXFP4, "MXFP4", 32, 17},
};

static const ggml_type_info *ggml_info(int type)
{
    for (size_t i = 0; i < sizeof ggml_types / sizeof ggml_types[0]; i++)
        if (ggml_types[i].type == type) return &ggml_types[i];
    return NULL;
}

const char *pd_ggml_type_name(int type)
{
    const ggml_type_info *t = ggml_info(type);
    return t ? t->name : NULL;
}

int pd_ggml_type_block(int type, uint32_t *block_elems, uint32_t *block_bytes)
{
    const ggml_type_info *t = ggml_info(type);
    if (!t) return PD_EUNSUPPORTED;
    if (block_elems) *block_elems = t->block_elems;
    if (block_bytes) *block_bytes = t->block_bytes;
    return PD_OK;
}

/* ---- the cursor ---- */

/* Smallest possible encodings, used to bound counts before anything else. */
#define MIN_KV_BYTES 14     /* key length 8 + 1 key byte + type 4 + 1 value byte */
#define MIN_TENSOR_BYTES 33 /* name length 8 + 1 + n_dims 4 + one ne 8 + type 4 + offset 8 */
#define MIN_STRING_BYTES 8  /* the length alone */
#define MIN_ARRAY_BYTES 12  /* element type 4 + count 8 */

typedef struct cursor {
    const uint8_t *p;
    size_t size;
    size_t at;
    const char *path;
    pd_err *err;
    /* what is being parsed, for messages */
    const char *what;   /* "key/value pair", "tensor info" or NULL (header) */
    uint64_t index;
    size_t start;
    pd_gguf_str name;   /* the key or tensor name once read */
} cursor;

static size_t left(const cursor *c) { return c->size - c->at; }

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* Copies s into buf (cap bytes) for a message: at most 80 bytes, control
 * bytes shown as '?'. */
static const char *show(pd_gguf_str s, char *buf, size_t cap)
{
    size_t n = s.len < 80 ? (size_t)s.len : 80;
    if (n > cap - 4) n = cap - 4;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (n < s.len) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = 0;
    return buf;
}

/* Sets err to "<path>: <entity>: <detail>" and returns code. */
static int fail(const cursor *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(const cursor *c, int code, const char *fmt, ...)
{
    char detail[256], where[160], name[96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (!c->what)
        snprintf(where, sizeof where, "header");
    else if (c->name.len)
        snprintf(where, sizeof where, "%s %llu '%s' (at byte %zu)", c->what,
                 (unsigned long long)c->index, show(c->name, name, sizeof name), c->start);
    else
        snprintf(where, sizeof where, "%s %llu (at byte %zu)", c->what,
                 (unsigned long long)c->index, c->start);
    return pd_err_set(c->err, code, "%s: %s: %s", c->path, where, detail);
}

static int need(const cursor *c, uint64_t n, const char *what)
{
    if (n <= left(c)) return PD_OK;
    return fail(c, PD_ETRUNC, "%s at byte %zu needs %llu bytes, only %zu left (truncated)", what,
                c->at, (unsigned long long)n, left(c));
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    int rc = need(c, 4, what);
    if (rc < 0) return rc;
    *v = le32(c->p + c->at);
    c->at += 4;
    return PD_OK;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    int rc = need(c, 8, what);
    if (rc < 0) return rc;
    *v = le64(c->p + c->at);
    c->at += 8;
    return PD_OK;
}

static int rd_str(cursor *c, pd_gguf_str *s, const char *what)
{
    size_t at = c->at;
    uint64_t n;
    int rc = rd_u64(c, &n, what);
    if (rc < 0) return rc;
    if (n > left(c))
        return fail(c, PD_ETRUNC,
                    "%s at byte %zu has length %llu, more than the %zu bytes left (truncated or "
                    "corrupt)",
                    what, at, (unsigned long long)n, left(c));
    s->ptr = (const char *)c->p + c->at;
    s->len = n;
    c->at += (size_t)n;
    return PD_OK;
}

/* ---- values ---- */

static void decode_scalar(const uint8_t *p, int type, pd_gguf_kv *kv)
{
    uint32_t b32;
    uint64_t b64;
    float f;
    switch (type) {
    case PD_GGUF_UINT8: case PD_GGUF_BOOL: kv->v.u = p[0]; break;
    case PD_GGUF_INT8: kv->v.i = (int8_t)p[0]; break;
    case PD_GGUF_UINT16: kv->v.u = le16(p); break;
    case PD_GGUF_INT16: kv->v.i = (int16_t)le16(p); break;
    case PD_GGUF_UINT32: kv->v.u = le32(p); break;
    case PD_GGUF_INT32: kv->v.i = (int32_t)le32(p); break;
    case PD_GGUF_UINT64: kv->v.u = le64(p); break;
    case PD_GGUF_INT64: kv->v.i = (int64_t)le64(p); break;
    case PD_GGUF_FLOAT32:
        b32 = le32(p);
        memcpy(&f, &b32, 4);
        kv->v.f = f;
        break;
    case PD_GGUF_FLOAT64:
        b64 = le64(p);
        memcpy(&kv->v.f, &b64, 8);
        break;
    default: PD_ASSERT(0 && "not a fixed-size type");
    }
}

/* Parses one array (element type, count, elements) at the cursor. With kv
 * (top level) it fills kv's arr_* fields and, for strings, allocates
 * kv->arr_strs; nested arrays are validated and skipped. */
static int parse_array(cursor *c, pd_gguf_kv *kv, int depth)
{
    size_t at = c->at;
    uint32_t et;
    uint64_t n;
    int rc;
    if ((rc = rd_u32(c, &et, "array element type")) < 0) return rc;
    if (et >= PD_GGUF_N_TYPES)
        return fail(c, PD_EFORMAT, "array at byte %zu has unknown element type %u", at, et);
    if ((rc = rd_u64(c, &n, "array length")) < 0) return rc;
    size_t start = c->at;
    size_t esize = pd_gguf_type_size((int)et);
    size_t emin = esize ? esize : et == PD_GGUF_STRING ? MIN_STRING_BYTES : MIN_ARRAY_BYTES;
    if (n > left(c) / emin)
        return fail(c, PD_ETRUNC,
                    "array at byte %zu claims %llu elements of type %s, which cannot fit in the "
                    "%zu bytes left (absurd length, or truncated)",
                    at, (unsigned long long)n, pd_gguf_type_name((int)et), left(c));
    if (esize) {
        if (et == PD_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (c->p[c->at + i] > 1)
                    return fail(c, PD_EFORMAT, "bool element %llu at byte %zu is %u, not 0 or 1",
                                (unsigned long long)i, c->at + (size_t)i, c->p[c->at + i]);
        c->at += (size_t)n * esize;
    } else if (et == PD_GGUF_STRING) {
        pd_gguf_str *strs = NULL;
        if (kv && n > 0) {
            strs = malloc((size_t)n * sizeof *strs);
            if (!strs)
                return fail(c, PD_ENOMEM, "out of memory for %llu strings",
                            (unsigned long long)n);
            kv->arr_strs = strs; /* freed with the pd_gguf, also on failure */
        }
        for (uint64_t i = 0; i < n; i++) {
            pd_gguf_str s;
            if ((rc = rd_str(c, &s, "array string")) < 0) return rc;
            if (strs) strs[i] = s;
        }
    } else {
        if (depth >= PD_GGUF_MAX_DEPTH)
            return fail(c, PD_EFORMAT, "array at byte %zu is nested deeper than %d levels", at,
                        PD_GGUF_MAX_DEPTH);
        for (uint64_t i = 0; i < n; i++)
            if ((rc = parse_array(c, NULL, depth + 1)) < 0) return rc;
    }
    if (kv) {
        kv->arr_type = (int)et;
        kv->arr_n = n;
        kv->arr_data = c->p + start;
        kv->arr_bytes = c->at - start;
    }
    return PD_OK;
}

static int parse_kv(cursor *c, pd_gguf_kv *kv)
{
    int rc;
    uint32_t type;
    kv->offset = c->at;
    if ((rc = rd_str(c, &kv->key, "key")) < 0) return rc;
    if (kv->key.len == 0) return fail(c, PD_EFORMAT, "empty key");
    if (kv->key.len > PD_GGUF_MAX_KEY)
        return fail(c, PD_EFORMAT, "key of %llu bytes is longer than %d",
                    (unsigned long long)kv->key.len, PD_GGUF_MAX_KEY);
    c->name = kv->key;
    if (memchr(kv->key.ptr, 0, (size_t)kv->key.len))
        return fail(c, PD_EFORMAT, "key contains a NUL byte");
    if ((rc = rd_u32(c, &type, "value type")) < 0) return rc;
    if (type >= PD_GGUF_N_TYPES) return fail(c, PD_EFORMAT, "unknown value type %u", type);
    kv->type = (int)type;
    if (type == PD_GGUF_STRING) return rd_str(c, &kv->v.s, "string value");
    if (type == PD_GGUF_ARRAY) return parse_array(c, kv, 1);
    size_t sz = pd_gguf_type_size((int)type);
    if ((rc = need(c, sz, "value")) < 0) return rc;
    if (type == PD_GGUF_BOOL && c->p[c->at] > 1)
        return fail(c, PD_EFORMAT, "bool value at byte %zu is %u, not 0 or 1", c->at,
                    c->p[c->at]);
    decode_scalar(c->p + c->at, (int)type, kv);
    c->at += sz;
    return PD_OK;
}

/* ---- tensors ---- */

static int parse_tensor(cursor *c, pd_gguf_tensor *t)
{
    int rc;
    uint32_t n_dims, type, block_elems, block_bytes;
    t->info_offset = c->at;
    if ((rc = rd_str(c, &t->name, "tensor name")) < 0) return rc;
    if (t->name.len == 0) return fail(c, PD_EFORMAT, "empty tensor name");
    if (t->name.len > PD_GGUF_MAX_NAME)
        return fail(c, PD_EFORMAT, "tensor name of %llu bytes is longer than %d",
                    (unsigned long long)t->name.len, PD_GGUF_MAX_NAME);
    c->name = t->name;
    if (memchr(t->name.ptr, 0, (size_t)t->name.len))
        return fail(c, PD_EFORMAT, "tensor name contains a NUL byte");
    if ((rc = rd_u32(c, &n_dims, "n_dims")) < 0) return rc;
    if (n_dims < 1 || n_dims > PD_GGUF_MAX_DIMS)
        return fail(c, PD_EFORMAT, "n_dims %u is not in 1..%d", n_dims, PD_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    uint64_t n_elems = 1;
    for (int d = 0; d < PD_GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        if ((uint32_t)d < n_dims) {
            if ((rc = rd_u64(c, &ne, "dimension")) < 0) return rc;
            if (ne == 0 || ne > (uint64_t)INT64_MAX)
                return fail(c, PD_EFORMAT, "dimension %d is %llu, not in 1..2^63-1", d,
                            (unsigned long long)ne);
            if (n_elems > (uint64_t)INT64_MAX / ne)
                return fail(c, PD_EFORMAT, "element count overflows (dimension %d is %llu)", d,
                            (unsigned long long)ne);
            n_elems *= ne;
        }
        t->ne[d] = (int64_t)ne;
    }
    if ((rc = rd_u32(c, &type, "tensor type")) < 0) return rc;
    if (pd_ggml_type_block((int)type, &block_elems, &block_bytes) < 0)
        return fail(c, PD_EUNSUPPORTED, "unknown ggml type %u", type);
    t->type = (int)type;
    if ((uint64_t)t->ne[0] % block_elems != 0)
        return fail(c, PD_EFORMAT, "row length %lld is not a multiple of the %s block of %u",
                    (long long)t->ne[0], pd_ggml_type_name((int)type), block_elems);
    uint64_t n_blocks = n_elems / block_elems;
    if (n_blocks > UINT64_MAX / block_bytes)
        return fail(c, PD_EFORMAT, "byte size overflows (%llu elements of %s)",
                    (unsigned long long)n_elems, pd_ggml_type_name((int)type));
    t->n_elems = n_elems;
    t->nbytes = n_blocks * block_bytes;
    if (t->nbytes > c->size)
        return fail(c, PD_ETRUNC, "%llu bytes of data cannot fit in a file of %zu bytes",
                    (unsigned long long)t->nbytes, c->size);
    return rd_u64(c, &t->offset, "tensor offset");
}

/* ---- sorting and lookup ---- */

static int str_cmp(pd_gguf_str a, pd_gguf_str b)
{
    size_t n = a.len < b.len ? (size_t)a.len : (size_t)b.len;
    int r = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (r) return r;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int kv_cmp(const void *a, const void *b, void *ctx)
{
    const pd_gguf_kv *kv = ctx;
    return str_cmp(kv[*(const size_t *)a].key, kv[*(const size_t *)b].key);
}

static int tensor_name_cmp(const void *a, const void *b, void *ctx)
{
    const pd_gguf_tensor *t = ctx;
    return str_cmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static int tensor_offset_cmp(const void *a, const void *b, void *ctx)
{
    const pd_gguf_tensor *t = ctx;
    uint64_t x = t[*(const size_t *)a].offset, y = t[*(const size_t *)b].offset;
    return x < y ? -1 : x > y;
}

int pd_gguf_str_eq(pd_gguf_str s, const char *z)
{
    size_t n = strlen(z);
    return s.len == n && (n == 0 || memcmp(s.ptr, z, n) == 0);
}

const pd_gguf_kv *pd_gguf_find_kv(const pd_gguf *g, const char *key)
{
    pd_gguf_str k = {key, strlen(key)};
    size_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const pd_gguf_kv *kv = &g->kv[g->kv_index[mid]];
        int r = str_cmp(kv->key, k);
        if (r == 0) return kv;
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const pd_gguf_tensor *pd_gguf_find_tensor(const pd_gguf *g, const char *name)
{
    pd_gguf_str k = {name, strlen(name)};
    size_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const pd_gguf_tensor *t = &g->tensors[g->tensor_index[mid]];
        int r = str_cmp(t->name, k);
        if (r == 0) return t;
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ---- parse ---- */

/* Makes room for entry number need_n (0-based) in a growing, zero-filled
 * array. Returns the (possibly moved) array, or NULL (arr unchanged). */
static void *grow(void *arr, size_t *cap, size_t need_n, size_t elem)
{
    if (need_n < *cap) return arr;
    size_t cap2 = *cap ? *cap * 2 : 64;
    char *p = realloc(arr, cap2 * elem);
    if (!p) return NULL;
    memset(p + *cap * elem, 0, (cap2 - *cap) * elem);
    *cap = cap2;
    return p;
}

static int parse_header(cursor *c, pd_gguf *g, uint64_t *n_tensors, uint64_t *n_kv)
{
    int rc;
    if (c->size < 4)
        return fail(c, PD_ETRUNC, "file is %zu bytes, too short for a GGUF header", c->size);
    if (memcmp(c->p, "GGUF", 4) != 0)
        return fail(c, PD_EFORMAT,
                    "not a GGUF file: magic is %02x %02x %02x %02x, expected \"GGUF\"", c->p[0],
                    c->p[1], c->p[2], c->p[3]);
    c->at = 4;
    if ((rc = rd_u32(c, &g->version, "version")) < 0) return rc;
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return fail(c, PD_EVERSION, "big-endian GGUF files are not supported");
    if (g->version == 1)
        return fail(c, PD_EVERSION,
                    "GGUF version 1 is not supported (only 2 and 3); re-convert the model");
    if (g->version != 2 && g->version != 3)
        return fail(c, PD_EVERSION, "GGUF version %u is not supported (only 2 and 3)",
                    g->version);
    if ((rc = rd_u64(c, n_tensors, "tensor count")) < 0) return rc;
    if ((rc = rd_u64(c, n_kv, "key/value count")) < 0) return rc;
    if (*n_kv > left(c) / MIN_KV_BYTES)
        return fail(c, PD_ETRUNC,
                    "%llu key/value pairs cannot fit in the %zu bytes left (absurd count, or "
                    "truncated)",
                    (unsigned long long)*n_kv, left(c));
    if (*n_tensors > left(c) / MIN_TENSOR_BYTES ||
        *n_kv * MIN_KV_BYTES + *n_tensors * MIN_TENSOR_BYTES > left(c))
        return fail(c, PD_ETRUNC,
                    "%llu tensors and %llu key/value pairs cannot fit in the %zu bytes left "
                    "(absurd count, or truncated)",
                    (unsigned long long)*n_tensors, (unsigned long long)*n_kv, left(c));
    return PD_OK;
}

static int parse_all(cursor *c, pd_gguf *g)
{
    uint64_t n_tensors, n_kv;
    size_t cap = 0;
    char name[96];
    int rc = parse_header(c, g, &n_tensors, &n_kv);
    if (rc < 0) return rc;

    /* metadata */
    for (uint64_t i = 0; i < n_kv; i++) {
        c->what = "key/value pair";
        c->index = i;
        c->start = c->at;
        c->name.len = 0;
        pd_gguf_kv *kv = grow(g->kv, &cap, (size_t)i, sizeof *g->kv);
        if (!kv) return fail(c, PD_ENOMEM, "out of memory");
        g->kv = kv;
        g->n_kv = (size_t)i + 1; /* so pd_gguf_free sees its allocations */
        if ((rc = parse_kv(c, &g->kv[i])) < 0) return rc;
    }
    c->what = NULL;
    if (g->n_kv) {
        g->kv_index = malloc(g->n_kv * sizeof *g->kv_index);
        if (!g->kv_index) return fail(c, PD_ENOMEM, "out of memory");
        for (size_t i = 0; i < g->n_kv; i++) g->kv_index[i] = i;
        qsort_r(g->kv_index, g->n_kv, sizeof *g->kv_index, kv_cmp, g->kv);
        for (size_t i = 1; i < g->n_kv; i++) {
            const pd_gguf_kv *a = &g->kv[g->kv_index[i - 1]], *b = &g->kv[g->kv_index[i]];
            if (str_cmp(a->key, b->key) == 0)
                return pd_err_set(c->err, PD_EFORMAT,
                                  "%s: duplicate key '%s' (pairs at bytes %llu and %llu)",
                                  c->path, show(a->key, name, sizeof name),
                                  (unsigned long long)a->offset, (unsigned long long)b->offset);
        }
    }

    g->alignment = PD_GGUF_DEFAULT_ALIGNMENT;
    if (pd_gguf_find_kv(g, "general.alignment")) {
        if ((rc = pd_gguf_get_u32(g, "general.alignment", &g->alignment, c->err)) < 0)
            return rc;
        if (g->alignment == 0 || (g->alignment & (g->alignment - 1)) ||
            g->alignment > PD_GGUF_MAX_ALIGNMENT)
            return pd_err_set(c->err, PD_EFORMAT,
                              "%s: general.alignment = %u is not a power of two in [1, %u]",
                              c->path, g->alignment, PD_GGUF_MAX_ALIGNMENT);
    }

    /* tensor infos */
    cap = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        c->what = "tensor info";
        c->index = i;
        c->start = c->at;
        c->name.len = 0;
        pd_gguf_tensor *ts = grow(g->tensors, &cap, (size_t)i, sizeof *g->tensors);
        if (!ts) return fail(c, PD_ENOMEM, "out of memory");
        g->tensors = ts;
        g->n_tensors = (size_t)i + 1;
        if ((rc = parse_tensor(c, &g->tensors[i])) < 0) return rc;
    }
    c->what = NULL;

    /* the data section */
    uint64_t a = g->alignment;
    g->data_offset = ((uint64_t)c->at + a - 1) / a * a;
    if (g->n_tensors == 0) return PD_OK;
    if (g->data_offset > c->size)
        return pd_err_set(c->err, PD_ETRUNC,
                          "%s: the data section would start at byte %llu, past the end of the "
                          "%zu-byte file (truncated)",
                          c->path, (unsigned long long)g->data_offset, c->size);
    uint64_t avail = c->size - g->data_offset;
    for (size_t i = 0; i < g->n_tensors; i++) {
        pd_gguf_tensor *t = &g->tensors[i];
        if (t->offset % a != 0)
            return pd_err_set(c->err, PD_EFORMAT,
                              "%s: tensor '%s': data offset %llu is not a multiple of the "
                              "alignment %u",
                              c->path, show(t->name, name, sizeof name),
                              (unsigned long long)t->offset, g->alignment);
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return pd_err_set(c->err, PD_ETRUNC,
                              "%s: tensor '%s' (%s): bytes [%llu, +%llu) of the data section "
                              "lie past the end of the file (the data section holds %llu bytes; "
                              "offset past EOF or truncated file)",
                              c->path, show(t->name, name, sizeof name),
                              pd_ggml_type_name(t->type), (unsigned long long)t->offset,
                              (unsigned long long)t->nbytes, (unsigned long long)avail);
        t->file_offset = g->data_offset + t->offset;
        t->data = c->p + t->file_offset;
    }

    g->tensor_index = malloc(g->n_tensors * sizeof *g->tensor_index);
    if (!g->tensor_index) return fail(c, PD_ENOMEM, "out of memory");
    size_t *ix = g->tensor_index;
    for (size_t i = 0; i < g->n_tensors; i++) ix[i] = i;
    qsort_r(ix, g->n_tensors, sizeof *ix, tensor_offset_cmp, g->tensors);
    for (size_t i = 1; i < g->n_tensors; i++) {
        const pd_gguf_tensor *p = &g->tensors[ix[i - 1]], *t = &g->tensors[ix[i]];
        if (p->offset + p->nbytes > t->offset) {
            char name2[96];
            return pd_err_set(c->err, PD_EFORMAT,
                              "%s: tensors '%s' (data bytes %llu..%llu) and '%s' (from %llu) "
                              "overlap",
                              c->path, show(p->name, name, sizeof name),
                              (unsigned long long)p->offset,
                              (unsigned long long)(p->offset + p->nbytes),
                              show(t->name, name2, sizeof name2),
                              (unsigned long long)t->offset);
        }
    }
    qsort_r(ix, g->n_tensors, sizeof *ix, tensor_name_cmp, g->tensors);
    for (size_t i = 1; i < g->n_tensors; i++) {
        const pd_gguf_tensor *p = &g->tensors[ix[i - 1]], *t = &g->tensors[ix[i]];
        if (str_cmp(p->name, t->name) == 0)
            return pd_err_set(c->err, PD_EFORMAT,
                              "%s: duplicate tensor name '%s' (infos at bytes %llu and %llu)",
                              c->path, show(p->name, name, sizeof name),
                              (unsigned long long)p->info_offset,
                              (unsigned long long)t->info_offset);
    }
    return PD_OK;
}

int pd_gguf_parse(const void *data, size_t size, const char *name, pd_gguf **out, pd_err *err)
{
    PD_ASSERT(out && name);
    PD_ASSERT(data || size == 0);
    *out = NULL;
    pd_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name))) {
        free(g);
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory", name);
    }
    static const uint8_t empty[1];
    g->base = size ? data : empty;
    g->size = size;
    cursor c = {g->base, size, 0, g->path, err, NULL, 0, 0, {NULL, 0}};
    int rc = parse_all(&c, g);
    if (rc < 0) {
        pd_gguf_free(g);
        return rc;
    }
    *out = g;
    return PD_OK;
}

int pd_gguf_open(const char *path, pd_gguf **out, pd_err *err)
{
    void *map;
    size_t size;
    *out = NULL;
    int rc = pd_map_file(path, &map, &size, err);
    if (rc < 0) return rc;
    rc = pd_gguf_parse(map, size, path, out, err);
    if (rc < 0) {
        pd_unmap(map, size);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_size = size;
    return PD_OK;
}

void pd_gguf_free(pd_gguf *g)
{
    if (!g) return;
    for (size_t i = 0; i < g->n_kv; i++) free((void *)g->kv[i].arr_strs);
    free(g->kv);
    free(g->tensors);
    free(g->kv_index);
    free(g->tensor_index);
    free(g->path);
    pd_unmap(g->map, g->map_size);
    free(g);
}

/* ---- typed getters ---- */

static int type_error(const pd_gguf *g, const pd_gguf_kv *kv, const char *expected,
                      pd_err *err)
{
    char name[96];
    if (kv->type == PD_GGUF_ARRAY)
        return pd_err_set(err, PD_EFORMAT, "%s: key %s has type array of %s, expected %s",
                          g->path, show(kv->key, name, sizeof name),
                          pd_gguf_type_name(kv->arr_type), expected);
    return pd_err_set(err, PD_EFORMAT, "%s: key %s has type %s, expected %s", g->path,
                      show(kv->key, name, sizeof name), pd_gguf_type_name(kv->type), expected);
}

static int lookup(const pd_gguf *g, const char *key, const pd_gguf_kv **kv, pd_err *err)
{
    *kv = pd_gguf_find_kv(g, key);
    if (!*kv) return pd_err_set(err, PD_ENOTFOUND, "%s: key %s not found", g->path, key);
    return PD_OK;
}

static int lookup_typed(const pd_gguf *g, const char *key, int type, const pd_gguf_kv **kv,
                        pd_err *err)
{
    int rc = lookup(g, key, kv, err);
    if (rc < 0) return rc;
    if ((*kv)->type != type) return type_error(g, *kv, pd_gguf_type_name(type), err);
    return PD_OK;
}

#define PD__GGUF_GETTER(fname, ctype, gtype, field)                                  \
    int fname(const pd_gguf *g, const char *key, ctype *out, pd_err *err)             \
    {                                                                                 \
        const pd_gguf_kv *kv;                                                         \
        int rc = lookup_typed(g, key, gtype, &kv, err);                               \
        if (rc < 0) return rc;                                                        \
        *out = (ctype)kv->v.field;                                                    \
        return PD_OK;                                                                 \
    }

PD__GGUF_GETTER(pd_gguf_get_u8, uint8_t, PD_GGUF_UINT8, u)
PD__GGUF_GETTER(pd_gguf_get_i8, int8_t, PD_GGUF_INT8, i)
PD__GGUF_GETTER(pd_gguf_get_u16, uint16_t, PD_GGUF_UINT16, u)
PD__GGUF_GETTER(pd_gguf_get_i16, int16_t, PD_GGUF_INT16, i)
PD__GGUF_GETTER(pd_gguf_get_u32, uint32_t, PD_GGUF_UINT32, u)
PD__GGUF_GETTER(pd_gguf_get_i32, int32_t, PD_GGUF_INT32, i)
PD__GGUF_GETTER(pd_gguf_get_u64, uint64_t, PD_GGUF_UINT64, u)
PD__GGUF_GETTER(pd_gguf_get_i64, int64_t, PD_GGUF_INT64, i)
PD__GGUF_GETTER(pd_gguf_get_f32, float, PD_GGUF_FLOAT32, f)
PD__GGUF_GETTER(pd_gguf_get_f64, double, PD_GGUF_FLOAT64, f)
PD__GGUF_GETTER(pd_gguf_get_bool, int, PD_GGUF_BOOL, u)
PD__GGUF_GETTER(pd_gguf_get_str, pd_gguf_str, PD_GGUF_STRING, s)
#undef PD__GGUF_GETTER

int pd_gguf_get_int(const pd_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out,
                    pd_err *err)
{
    const pd_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc < 0) return rc;
    int is_signed;
    switch (kv->type) {
    case PD_GGUF_UINT8: case PD_GGUF_UINT16: case PD_GGUF_UINT32: case PD_GGUF_UINT64:
        is_signed = 0;
        break;
    case PD_GGUF_INT8: case PD_GGUF_INT16: case PD_GGUF_INT32: case PD_GGUF_INT64:
        is_signed = 1;
        break;
    default: return type_error(g, kv, "an integer", err);
    }
    int ok = is_signed ? kv->v.i >= lo && kv->v.i <= hi
                       : kv->v.u <= (uint64_t)INT64_MAX && (int64_t)kv->v.u >= lo &&
                             (int64_t)kv->v.u <= hi;
    if (!ok) {
        char val[32];
        if (is_signed) snprintf(val, sizeof val, "%lld", (long long)kv->v.i);
        else snprintf(val, sizeof val, "%llu", (unsigned long long)kv->v.u);
        return pd_err_set(err, PD_ERANGE, "%s: key %s = %s is out of range [%lld, %lld]",
                          g->path, key, val, (long long)lo, (long long)hi);
    }
    *out = is_signed ? kv->v.i : (int64_t)kv->v.u;
    return PD_OK;
}

int pd_gguf_get_float(const pd_gguf *g, const char *key, double *out, pd_err *err)
{
    const pd_gguf_kv *kv;
    int rc = lookup(g, key, &kv, err);
    if (rc < 0) return rc;
    if (kv->type != PD_GGUF_FLOAT32 && kv->type != PD_GGUF_FLOAT64)
        return type_error(g, kv, "f32 or f64", err);
    *out = kv->v.f;
    return PD_OK;
}

static int lookup_array(const pd_gguf *g, const char *key, int elem_type,
                        const pd_gguf_kv **kv, pd_err *err)
{
    int rc = lookup(g, key, kv, err);
    if (rc < 0) return rc;
    if ((*kv)->type != PD_GGUF_ARRAY || (*kv)->arr_type != elem_type) {
        char expected[32];
        snprintf(expected, sizeof expected, "array of %s", pd_gguf_type_name(elem_type));
        return type_error(g, *kv, expected, err);
    }
    return PD_OK;
}

int pd_gguf_get_arr(const pd_gguf *g, const char *key, int elem_type, const void **data,
                    uint64_t *n, pd_err *err)
{
    PD_ASSERT(pd_gguf_type_size(elem_type) > 0);
    const pd_gguf_kv *kv;
    int rc = lookup_array(g, key, elem_type, &kv, err);
    if (rc < 0) return rc;
    *data = kv->arr_data;
    *n = kv->arr_n;
    return PD_OK;
}

int pd_gguf_get_str_arr(const pd_gguf *g, const char *key, const pd_gguf_str **strs,
                        uint64_t *n, pd_err *err)
{
    const pd_gguf_kv *kv;
    int rc = lookup_array(g, key, PD_GGUF_STRING, &kv, err);
    if (rc < 0) return rc;
    *strs = kv->arr_strs;
    *n = kv->arr_n;
    return PD_OK;
}
