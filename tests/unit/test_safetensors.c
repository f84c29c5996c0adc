/* test_safetensors.c — the safetensors reader and writer: round trips (F32
 * exact, F16/BF16 within half a unit in the last place), a file built by
 * hand byte by byte, every truncation of a valid file, a table of malformed
 * headers (each with its status and a message substring), writer misuse, and
 * a deterministic mutation sweep that must never crash (run under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefixd/common.h"
#include "prefixd/half.h"
#include "prefixd/safetensors.h"

/* ---- helpers ---- */

/* Builds a file from a header string (not padded) and data_len data bytes
 * whose value is their index; returns a malloc'd buffer of *size bytes. */
static unsigned char *make_file(const char *header, size_t data_len, size_t *size)
{
    size_t n = strlen(header);
    *size = 8 + n + data_len;
    unsigned char *buf = malloc(*size);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    for (size_t i = 0; i < data_len; i++) buf[8 + n + i] = (unsigned char)i;
    return buf;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_f32(unsigned char *p, float f) { memcpy(p, &f, 4); }
static void put_u16(unsigned char *p, uint16_t h)
{
    p[0] = (unsigned char)h;
    p[1] = (unsigned char)(h >> 8);
}

static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * sinf((float)i * 0.731f + 0.2f) * (1.0f + (float)(i % 7));
}

/* Writer output for two tensors and two metadata keys, used by several tests. */
static void *small_file(size_t *size)
{
    pd_err err;
    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    float a[6];
    fill(a, 6, 1.0f);
    int64_t sa[2] = {2, 3}, sb[1] = {4};
    assert_int_equal(pd_st_writer_set_meta(w, "format", "prefixd.prefix/1", &err), PD_OK);
    assert_int_equal(pd_st_writer_set_meta(w, "task", "poem", &err), PD_OK);
    assert_int_equal(pd_st_writer_add_f32(w, "keys", PD_ST_F32, 2, sa, a, &err), PD_OK);
    assert_int_equal(pd_st_writer_add_f32(w, "values", PD_ST_F16, 1, sb, a, &err), PD_OK);
    void *buf;
    assert_int_equal(pd_st_writer_serialize(w, &buf, size, &err), PD_OK);
    pd_st_writer_free(w);
    return buf;
}

/* ---- round trips ---- */

static void test_roundtrip_f32(void **state)
{
    (void)state;
    pd_err err;
    enum { L = 2, H = 3, P = 4, D = 5, N = L * H * P * D };
    float keys[N], values[N], got[N];
    fill(keys, N, 0.5f);
    fill(values, N, -3.0f);
    int64_t shape[4] = {L, H, P, D};

    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    assert_int_equal(pd_st_writer_set_meta(w, "task", "old", &err), PD_OK);
    assert_int_equal(pd_st_writer_set_meta(w, "task", "poem", &err), PD_OK); /* replaces */
    assert_int_equal(pd_st_writer_set_meta(w, "format", "prefixd.prefix/1", &err), PD_OK);
    assert_int_equal(pd_st_writer_set_meta(w, "note", "h\xc3\xa9llo \"q\"\n", &err), PD_OK);
    assert_int_equal(pd_st_writer_add(w, "values", PD_ST_F32, 4, shape, values, &err), PD_OK);
    assert_int_equal(pd_st_writer_add_f32(w, "keys", PD_ST_F32, 4, shape, keys, &err), PD_OK);
    assert_int_equal(pd_st_writer_add(w, "scalar", PD_ST_F32, 0, NULL, &keys[7], &err), PD_OK);
    void *buf;
    size_t size;
    assert_int_equal(pd_st_writer_serialize(w, &buf, &size, &err), PD_OK);

    /* Deterministic: the same writer serializes to the same bytes. */
    void *buf2;
    size_t size2;
    assert_int_equal(pd_st_writer_serialize(w, &buf2, &size2, &err), PD_OK);
    assert_int_equal(size, size2);
    assert_memory_equal(buf, buf2, size);
    free(buf2);
    pd_st_writer_free(w);

    pd_st *st;
    assert_int_equal(pd_st_parse(buf, size, "mem", &st, &err), PD_OK);
    assert_int_equal(pd_st_header_size(st) % 8, 0);
    assert_int_equal(pd_st_file_size(st), size);
    assert_int_equal(size, 8 + pd_st_header_size(st) + (2 * N + 1) * sizeof(float));

    /* Data order = order of addition. */
    assert_int_equal(pd_st_n_tensors(st), 3);
    assert_string_equal(pd_st_tensor_at(st, 0)->name, "values");
    assert_string_equal(pd_st_tensor_at(st, 1)->name, "keys");
    assert_string_equal(pd_st_tensor_at(st, 2)->name, "scalar");

    const pd_st_tensor *t = pd_st_find(st, "keys");
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_ST_F32);
    assert_int_equal(t->n_dims, 4);
    for (int i = 0; i < 4; i++) assert_int_equal(t->shape[i], shape[i]);
    assert_int_equal(t->numel, N);
    assert_int_equal(t->nbytes, N * sizeof(float));
    assert_int_equal(pd_st_tensor_to_f32(t, got, N, &err), PD_OK);
    assert_memory_equal(got, keys, sizeof keys);

    t = pd_st_find(st, "values");
    assert_non_null(t);
    assert_int_equal(pd_st_tensor_to_f32(t, got, N, &err), PD_OK);
    assert_memory_equal(got, values, sizeof values);

    t = pd_st_find(st, "scalar");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 0);
    assert_int_equal(t->numel, 1);
    float s;
    assert_int_equal(pd_st_tensor_to_f32(t, &s, 1, &err), PD_OK);
    assert_true(s == keys[7]);

    assert_null(pd_st_find(st, "nope"));
    assert_null(pd_st_find(st, ""));

    /* Metadata: lookup and iteration sorted by key. */
    assert_int_equal(pd_st_n_meta(st), 3);
    assert_string_equal(pd_st_meta_get(st, "task"), "poem");
    assert_string_equal(pd_st_meta_get(st, "format"), "prefixd.prefix/1");
    assert_string_equal(pd_st_meta_get(st, "note"), "h\xc3\xa9llo \"q\"\n");
    assert_null(pd_st_meta_get(st, "missing"));
    assert_string_equal(pd_st_meta_at(st, 0)->key, "format");
    assert_string_equal(pd_st_meta_at(st, 1)->key, "note");
    assert_string_equal(pd_st_meta_at(st, 2)->key, "task");
    assert_string_equal(pd_st_meta_at(st, 2)->value, "poem");

    /* Wrong element count for the destination. */
    t = pd_st_find(st, "keys");
    assert_int_equal(pd_st_tensor_to_f32(t, got, N - 1, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "keys"));

    pd_st_free(st);
    free(buf);
}

/* |got - want| within half an ulp of the narrow format (relative 2^-(m+1)),
 * with an absolute floor for F16 subnormals. */
static void check_close(const float *got, const float *want, size_t n, int mant_bits)
{
    float rel = ldexpf(1.0f, -(mant_bits + 1));
    for (size_t i = 0; i < n; i++) {
        float tol = fabsf(want[i]) * rel + 3e-8f;
        if (fabsf(got[i] - want[i]) > tol)
            fail_msg("element %zu: got %.9g want %.9g (tol %.3g)", i, got[i], want[i], tol);
    }
}

static void test_roundtrip_f16_bf16(void **state)
{
    (void)state;
    pd_err err;
    enum { N = 257 };
    float x[N], got[N];
    fill(x, N, 7.0f);
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 1e-6f;    /* F16 subnormal */
    x[3] = 65504.0f; /* F16 max */
    x[4] = 1.0f / 3.0f;
    int64_t shape[3] = {1, N, 1};

    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    assert_int_equal(pd_st_writer_set_meta(w, "source", "trained", &err), PD_OK);
    assert_int_equal(pd_st_writer_add_f32(w, "h", PD_ST_F16, 3, shape, x, &err), PD_OK);
    assert_int_equal(pd_st_writer_add_f32(w, "b", PD_ST_BF16, 3, shape, x, &err), PD_OK);
    void *buf;
    size_t size;
    assert_int_equal(pd_st_writer_serialize(w, &buf, &size, &err), PD_OK);
    pd_st_writer_free(w);

    pd_st *st;
    assert_int_equal(pd_st_parse(buf, size, "mem", &st, &err), PD_OK);
    assert_string_equal(pd_st_meta_get(st, "source"), "trained");

    const pd_st_tensor *t = pd_st_find(st, "h");
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_ST_F16);
    assert_int_equal(t->nbytes, 2 * N);
    assert_int_equal(pd_st_tensor_to_f32(t, got, N, &err), PD_OK);
    check_close(got, x, N, 10);
    for (int i = 0; i < N; i++) assert_true(got[i] == pd_f16_to_f32(pd_f32_to_f16(x[i])));
    assert_true(signbit(got[1]));

    t = pd_st_find(st, "b");
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_ST_BF16);
    assert_int_equal(pd_st_tensor_to_f32(t, got, N, &err), PD_OK);
    check_close(got, x, N, 7);
    for (int i = 0; i < N; i++) assert_true(got[i] == pd_bf16_to_f32(pd_f32_to_bf16(x[i])));

    pd_st_free(st);
    free(buf);
}

static void test_write_open(void **state)
{
    (void)state;
    pd_err err;
    char dir[] = "/tmp/pd_st_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/poem.safetensors", dir);

    float x[12];
    fill(x, 12, 2.0f);
    int64_t shape[2] = {3, 4};
    for (int round = 0; round < 2; round++) { /* the second write replaces the first */
        pd_st_writer *w = pd_st_writer_new();
        assert_non_null(w);
        assert_int_equal(pd_st_writer_set_meta(w, "round", round ? "1" : "0", &err), PD_OK);
        assert_int_equal(pd_st_writer_add_f32(w, "keys", PD_ST_F32, 2, shape, x, &err), PD_OK);
        int64_t empty[2] = {0, 4};
        assert_int_equal(pd_st_writer_add_f32(w, "empty", PD_ST_F16, 2, empty, NULL, &err),
                         PD_OK);
        assert_int_equal(pd_st_writer_write(w, path, &err), PD_OK);
        pd_st_writer_free(w);
    }

    pd_st *st;
    assert_int_equal(pd_st_open(path, &st, &err), PD_OK);
    assert_string_equal(pd_st_meta_get(st, "round"), "1");
    const pd_st_tensor *t = pd_st_find(st, "keys");
    assert_non_null(t);
    float got[12];
    assert_int_equal(pd_st_tensor_to_f32(t, got, 12, &err), PD_OK);
    assert_memory_equal(got, x, sizeof x);
    t = pd_st_find(st, "empty");
    assert_non_null(t);
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(pd_st_tensor_to_f32(t, got, 0, &err), PD_OK);
    pd_st_free(st);

    /* No temp file is left behind. */
    DIR *d = opendir(dir);
    assert_non_null(d);
    int files = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' || strstr(e->d_name, ".tmp.")) files++;
    closedir(d);
    assert_int_equal(files, 1);

    /* Missing and empty files. */
    char other[300];
    snprintf(other, sizeof other, "%s/missing.safetensors", dir);
    st = (pd_st *)1;
    assert_int_equal(pd_st_open(other, &st, &err), PD_EIO);
    assert_null(st);
    assert_non_null(strstr(err.msg, "missing.safetensors"));
    snprintf(other, sizeof other, "%s/empty.safetensors", dir);
    FILE *f = fopen(other, "wb");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(pd_st_open(other, &st, &err), PD_ETRUNC);
    assert_non_null(strstr(err.msg, "empty.safetensors"));
    assert_non_null(strstr(err.msg, "shorter than"));

    /* A write into a missing directory fails cleanly. */
    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    snprintf(other, sizeof other, "%s/no/such/dir.safetensors", dir);
    assert_int_equal(pd_st_writer_write(w, other, &err), PD_EIO);
    pd_st_writer_free(w);

    unlink(other);
    snprintf(other, sizeof other, "%s/empty.safetensors", dir);
    unlink(other);
    unlink(path);
    rmdir(dir);
}

/* ---- a file written by hand, independent of the writer ---- */

static void test_handwritten(void **state)
{
    (void)state;
    pd_err err;
    /* Keys out of data order, a gap of 2 bytes before "c", a name with
     * escapes and non-ASCII, a scalar, an I32 tensor, an empty tensor, and a
     * header length that is not a multiple of 8 (so data is unaligned). */
    const char *header =
        "{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
        "\"__metadata__\":{\"format\":\"pt\",\"k\\u00e9y\":\"v\\n\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]},"
        "\"we\\\"ird \\u00e9/\\n\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[14,16]},"
        "\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[16,20]},"
        "\"z\":{\"dtype\":\"U8\",\"shape\":[3,0],\"data_offsets\":[20,20], \"extra\": 1}}  ";
    size_t hn = strlen(header);
    assert_true(hn % 8 != 0);
    size_t size = 8 + hn + 20;
    unsigned char *buf = calloc(1, size);
    assert_non_null(buf);
    put_u64(buf, hn);
    memcpy(buf + 8, header, hn);
    unsigned char *d = buf + 8 + hn;
    put_f32(d + 0, 1.5f);
    put_f32(d + 4, -2.0f);
    put_u16(d + 8, 0x3c00);  /* F16 1.0 */
    put_u16(d + 10, 0xc100); /* F16 -2.5 */
    d[12] = d[13] = 0xee;    /* gap */
    put_u16(d + 14, 0x4049); /* BF16 3.140625 */
    d[16] = 7;               /* I32 7 */

    pd_st *st;
    assert_int_equal(pd_st_parse(buf, size, "hand", &st, &err), PD_OK);
    assert_int_equal(pd_st_header_size(st), hn);
    assert_int_equal(pd_st_n_tensors(st), 5);
    const char *weird = "we\"ird \xc3\xa9/\n";
    const char *order[5] = {"a", "b", weird, "i", "z"};
    for (int i = 0; i < 5; i++) assert_string_equal(pd_st_tensor_at(st, i)->name, order[i]);

    float v[2];
    const pd_st_tensor *t = pd_st_find(st, "a");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->shape[0], 1);
    assert_int_equal(t->shape[1], 2);
    assert_int_equal(t->offset, 8 + hn);
    assert_ptr_equal(t->data, buf + 8 + hn);
    assert_int_equal(pd_st_tensor_to_f32(t, v, 2, &err), PD_OK);
    assert_true(v[0] == 1.5f && v[1] == -2.0f);

    t = pd_st_find(st, "b");
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_ST_F16);
    assert_int_equal(pd_st_tensor_to_f32(t, v, 2, &err), PD_OK);
    assert_true(v[0] == 1.0f && v[1] == -2.5f);

    t = pd_st_find(st, weird);
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_ST_BF16);
    assert_int_equal(t->n_dims, 0);
    assert_int_equal(t->numel, 1);
    assert_int_equal(pd_st_tensor_to_f32(t, v, 1, &err), PD_OK);
    assert_true(v[0] == 3.140625f);

    t = pd_st_find(st, "i");
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_ST_I32);
    assert_int_equal(t->nbytes, 4);
    int32_t iv;
    memcpy(&iv, t->data, 4);
    assert_int_equal(iv, 7);
    assert_int_equal(pd_st_tensor_to_f32(t, v, 1, &err), PD_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "I32 cannot be converted"));

    t = pd_st_find(st, "z");
    assert_non_null(t);
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->shape[0], 3);

    assert_int_equal(pd_st_n_meta(st), 2);
    assert_string_equal(pd_st_meta_get(st, "format"), "pt");
    assert_string_equal(pd_st_meta_get(st, "k\xc3\xa9y"), "v\n");

    pd_st_free(st);
    free(buf);
}

static void test_dtype_names(void **state)
{
    (void)state;
    for (int i = 0; i < PD_ST_DTYPE_COUNT; i++) {
        assert_int_equal(pd_st_dtype_parse(pd_st_dtype_name(i)), i);
        assert_true(pd_st_dtype_size(i) >= 1 && pd_st_dtype_size(i) <= 8);
    }
    assert_int_equal(pd_st_dtype_size(PD_ST_BF16), 2);
    assert_int_equal(pd_st_dtype_size(PD_ST_C64), 8);
    assert_string_equal(pd_st_dtype_name(-1), "?");
    assert_string_equal(pd_st_dtype_name(PD_ST_DTYPE_COUNT), "?");
    assert_int_equal(pd_st_dtype_size(99), 0);
    assert_int_equal(pd_st_dtype_parse("f32"), -1);
}

/* ---- bad inputs ---- */

static void test_truncated_everywhere(void **state)
{
    (void)state;
    size_t size;
    unsigned char *full = small_file(&size);
    pd_err err;
    pd_st *st;
    assert_int_equal(pd_st_parse(full, size, "cut", &st, &err), PD_OK);
    pd_st_free(st);
    for (size_t len = 0; len < size; len++) {
        /* An exact-size copy, so the sanitizers see any read past the end. */
        unsigned char *cut = malloc(len ? len : 1);
        assert_non_null(cut);
        memcpy(cut, full, len);
        st = (pd_st *)1;
        pd_err_clear(&err);
        int rc = pd_st_parse(cut, len, "cut", &st, &err);
        if (rc >= 0) fail_msg("length %zu of %zu parsed", len, size);
        assert_null(st);
        assert_int_equal(err.code, rc);
        assert_true(strncmp(err.msg, "cut: ", 5) == 0);
        assert_null(strchr(err.msg, '\n'));
        free(cut);
    }
    free(full);
}

typedef struct bad_case {
    const char *what;
    const char *header;  /* JSON header text */
    size_t data_len;     /* bytes of data after it */
    int status;          /* expected status */
    const char *substr;  /* expected in err.msg */
} bad_case;

#define T(dtype, shape, offs) \
    "{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":" offs "}"

static const bad_case BAD[] = {
    {"empty header", "", 0, PD_EFORMAT, "does not start with '{'"},
    {"array root", "[1,2]", 0, PD_EFORMAT, "does not start with '{'"},
    {"leading space", " {}", 0, PD_EFORMAT, "does not start with '{'"},
    {"invalid JSON", "{\"a\":", 0, PD_EFORMAT, "not valid JSON"},
    {"invalid JSON line/column", "{\n\"a\": tru}", 0, PD_EFORMAT, "line 2, column"},
    {"trailing garbage", "{} x", 0, PD_EFORMAT, "not valid JSON"},
    {"invalid UTF-8", "{\"\xff\":1}", 0, PD_EFORMAT, "not valid JSON"},
    {"NUL in string", "{\"a\\u0000b\":1}", 0, PD_EFORMAT, "not valid JSON"},
    {"integer too big", "{\"a\":" T("\"F32\"", "[100000000000000000000]", "[0,4]") "}", 4,
     PD_EFORMAT, "not valid JSON"},
    {"duplicate tensor", "{\"a\":" T("\"U8\"", "[1]", "[0,1]") ",\"a\":" T("\"U8\"", "[1]",
     "[1,2]") "}", 2, PD_EFORMAT, "duplicate"},
    {"duplicate metadata key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, PD_EFORMAT,
     "duplicate"},
    {"metadata not object", "{\"__metadata__\":[\"a\"]}", 0, PD_EFORMAT,
     "\"__metadata__\" is not a JSON object"},
    {"metadata number", "{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", 0, PD_EFORMAT,
     "value of 'n' is not a string"},
    {"metadata null", "{\"__metadata__\":{\"n\":null}}", 0, PD_EFORMAT, "is not a string"},
    {"entry not object", "{\"a\":[1]}", 0, PD_EFORMAT, "tensor 'a': entry is not a JSON object"},
    {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, PD_EFORMAT,
     "missing \"dtype\""},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, PD_EFORMAT,
     "missing \"shape\""},
    {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, PD_EFORMAT,
     "missing \"data_offsets\""},
    {"dtype not string", "{\"a\":" T("32", "[1]", "[0,4]") "}", 4, PD_EFORMAT,
     "\"dtype\" is not a string"},
    {"unknown dtype", "{\"a\":" T("\"F33\"", "[1]", "[0,4]") "}", 4, PD_EFORMAT,
     "unknown dtype 'F33'"},
    {"lowercase dtype", "{\"a\":" T("\"f32\"", "[1]", "[0,4]") "}", 4, PD_EFORMAT,
     "unknown dtype"},
    {"sub-byte dtype", "{\"a\":" T("\"F4\"", "[2]", "[0,1]") "}", 1, PD_EUNSUPPORTED,
     "sub-byte dtype F4"},
    {"shape not array", "{\"a\":" T("\"F32\"", "1", "[0,4]") "}", 4, PD_EFORMAT,
     "\"shape\" is not an array"},
    {"negative dim", "{\"a\":" T("\"F32\"", "[2,-1]", "[0,4]") "}", 4, PD_EFORMAT,
     "shape[1] = -1 is negative"},
    {"real dim", "{\"a\":" T("\"F32\"", "[1.0]", "[0,4]") "}", 4, PD_EFORMAT,
     "shape[0] is not an integer"},
    {"string dim", "{\"a\":" T("\"F32\"", "[\"1\"]", "[0,4]") "}", 4, PD_EFORMAT,
     "shape[0] is not an integer"},
    {"too many dims", "{\"a\":" T("\"U8\"", "[1,1,1,1,1,1,1,1,1]", "[0,1]") "}", 1,
     PD_EUNSUPPORTED, "9 dims"},
    {"numel overflow", "{\"a\":" T("\"U8\"", "[4294967296,4294967296,4294967296]", "[0,1]")
     "}", 1, PD_ERANGE, "overflows"},
    {"bytes overflow", "{\"a\":" T("\"F64\"", "[4611686018427387904]", "[0,8]") "}", 8,
     PD_ERANGE, "overflows"},
    {"offsets not array", "{\"a\":" T("\"F32\"", "[1]", "4") "}", 4, PD_EFORMAT,
     "not an array of two integers"},
    {"offsets three", "{\"a\":" T("\"F32\"", "[1]", "[0,4,8]") "}", 8, PD_EFORMAT,
     "not an array of two integers"},
    {"offsets one", "{\"a\":" T("\"F32\"", "[1]", "[4]") "}", 4, PD_EFORMAT,
     "not an array of two integers"},
    {"offset negative", "{\"a\":" T("\"F32\"", "[1]", "[-4,0]") "}", 4, PD_EFORMAT,
     "data_offsets[0] = -4 is negative"},
    {"offset real", "{\"a\":" T("\"F32\"", "[1]", "[0,4.0]") "}", 4, PD_EFORMAT,
     "data_offsets[1] is not an integer"},
    {"begin after end", "{\"a\":" T("\"F32\"", "[0]", "[4,0]") "}", 4, PD_EFORMAT,
     "begin 4 is after end 0"},
    {"end past buffer", "{\"a\":" T("\"F32\"", "[2]", "[0,8]") "}", 7, PD_ETRUNC,
     "end 8 is past the end of the data buffer (7 bytes)"},
    {"huge offsets", "{\"a\":" T("\"F32\"", "[1]",
     "[9223372036854775800,9223372036854775804]") "}", 4, PD_ETRUNC, "past the end"},
    {"size mismatch", "{\"a\":" T("\"F32\"", "[3]", "[0,8]") "}", 8, PD_EFORMAT,
     "span 8 bytes but 3 elements of F32 need 12"},
    {"dtype size mismatch", "{\"a\":" T("\"F16\"", "[2]", "[0,8]") "}", 8, PD_EFORMAT,
     "need 4"},
    {"overlap", "{\"a\":" T("\"F32\"", "[2]", "[0,8]") ",\"b\":" T("\"F32\"", "[2]", "[4,12]")
     "}", 12, PD_EFORMAT, "'a' [0, 8) and 'b' [4, 12) overlap"},
    {"identical ranges", "{\"a\":" T("\"U8\"", "[4]", "[0,4]") ",\"b\":" T("\"I8\"", "[4]",
     "[0,4]") "}", 4, PD_EFORMAT, "overlap"},
    {"contained range", "{\"big\":" T("\"U8\"", "[8]", "[0,8]") ",\"e\":" T("\"U8\"", "[0]",
     "[3,3]") ",\"s\":" T("\"U8\"", "[2]", "[6,8]") "}", 8, PD_EFORMAT,
     "'big' [0, 8) and 's' [6, 8) overlap"},
    {"bad name is escaped", "{\"x\\n\\u0001'\":1}", 0, PD_EFORMAT, "tensor 'x\\x0a\\x01\\''"},
};

static void test_bad_inputs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        const bad_case *c = &BAD[i];
        size_t size;
        unsigned char *buf = make_file(c->header, c->data_len, &size);
        pd_st *st = (pd_st *)1;
        pd_err err;
        pd_err_clear(&err);
        int rc = pd_st_parse(buf, size, "bad.st", &st, &err);
        if (rc != c->status || !strstr(err.msg, c->substr) || strncmp(err.msg, "bad.st: ", 8))
            fail_msg("case '%s': status %d (want %d), message \"%s\" (want \"%s\")", c->what,
                     rc, c->status, err.msg, c->substr);
        assert_null(st);
        assert_int_equal(err.code, rc);
        assert_null(strchr(err.msg, '\n'));
        free(buf);
    }
}

static void test_bad_lengths(void **state)
{
    (void)state;
    pd_err err;
    pd_st *st;
    unsigned char buf[64];
    memset(buf, ' ', sizeof buf);
    buf[8] = '{';
    buf[9] = '}';

    /* Shorter than the length field. */
    assert_int_equal(pd_st_parse(buf, 7, "f", &st, &err), PD_ETRUNC);
    assert_non_null(strstr(err.msg, "f: 7 bytes, shorter than the 8-byte header length"));
    assert_int_equal(pd_st_parse(NULL, 0, NULL, &st, &err), PD_ETRUNC);
    assert_non_null(strstr(err.msg, "safetensors: 0 bytes"));

    /* Header length past the end of the file. */
    put_u64(buf, 57);
    assert_int_equal(pd_st_parse(buf, sizeof buf, "f", &st, &err), PD_ETRUNC);
    assert_non_null(strstr(err.msg, "header length 57 runs past the end of the file (64 bytes)"));
    put_u64(buf, 56); /* exactly to the end: "{}" and spaces, valid */
    assert_int_equal(pd_st_parse(buf, sizeof buf, "f", &st, &err), PD_OK);
    assert_int_equal(pd_st_n_tensors(st), 0);
    assert_int_equal(pd_st_n_meta(st), 0);
    assert_null(pd_st_find(st, "a"));
    assert_null(pd_st_meta_get(st, "a"));
    pd_st_free(st);

    /* Absurd lengths. */
    put_u64(buf, (uint64_t)PD_ST_MAX_HEADER + 1);
    assert_int_equal(pd_st_parse(buf, sizeof buf, "f", &st, &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "over the limit"));
    put_u64(buf, UINT64_MAX);
    assert_int_equal(pd_st_parse(buf, sizeof buf, "f", &st, &err), PD_ERANGE);
    put_u64(buf, UINT64_MAX - 7);
    assert_int_equal(pd_st_parse(buf, sizeof buf, "f", &st, &err), PD_ERANGE);
    put_u64(buf, 0);
    assert_int_equal(pd_st_parse(buf, sizeof buf, "f", &st, &err), PD_EFORMAT);

    /* Errors tolerate err == NULL. */
    assert_int_equal(pd_st_parse(buf, 3, "f", &st, NULL), PD_ETRUNC);
}

/* ---- writer misuse ---- */

static void test_writer_errors(void **state)
{
    (void)state;
    pd_err err;
    pd_st_writer *w = pd_st_writer_new();
    assert_non_null(w);
    float x[4] = {1, 2, 3, 4};
    int64_t s[1] = {4};

    assert_int_equal(pd_st_writer_add_f32(w, "a", PD_ST_F32, 1, s, x, &err), PD_OK);
    assert_int_equal(pd_st_writer_add_f32(w, "a", PD_ST_F16, 1, s, x, &err), PD_EEXIST);
    assert_non_null(strstr(err.msg, "'a' added twice"));
    assert_int_equal(pd_st_writer_add(w, "__metadata__", PD_ST_F32, 1, s, x, &err), PD_EINVAL);
    assert_int_equal(pd_st_writer_add(w, "bad\xff", PD_ST_F32, 1, s, x, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "UTF-8"));
    assert_int_equal(pd_st_writer_add(w, "surrogate\xed\xa0\x80", PD_ST_F32, 1, s, x, &err),
                     PD_EINVAL);
    assert_int_equal(pd_st_writer_add(w, "c", 99, 1, s, x, &err), PD_EINVAL);
    assert_int_equal(pd_st_writer_add(w, "c", PD_ST_F32, 9, s, x, &err), PD_EINVAL);
    assert_int_equal(pd_st_writer_add(w, "c", PD_ST_F32, -1, s, x, &err), PD_EINVAL);
    int64_t neg[2] = {2, -2};
    assert_int_equal(pd_st_writer_add(w, "c", PD_ST_F32, 2, neg, x, &err), PD_EINVAL);
    int64_t huge[2] = {INT64_MAX, 4};
    assert_int_equal(pd_st_writer_add(w, "c", PD_ST_F32, 2, huge, x, &err), PD_ERANGE);
    assert_int_equal(pd_st_writer_add_f32(w, "c", PD_ST_I32, 1, s, x, &err), PD_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "as I32"));
    assert_int_equal(pd_st_writer_set_meta(w, "k", "\xc0\x80", &err), PD_EINVAL);

    /* Failed adds left nothing behind; names of any characters round-trip. */
    const char *odd = "layer.0/\"k\"\\ \xe2\x82\xac\t\n";
    int32_t iv[2] = {-5, 9};
    int64_t s2[1] = {2};
    assert_int_equal(pd_st_writer_add(w, odd, PD_ST_I32, 1, s2, iv, &err), PD_OK);
    assert_int_equal(pd_st_writer_add(w, "", PD_ST_U8, 0, NULL, "z", &err), PD_OK);
    void *buf;
    size_t size;
    assert_int_equal(pd_st_writer_serialize(w, &buf, &size, &err), PD_OK);
    pd_st_writer_free(w);
    pd_st *st;
    assert_int_equal(pd_st_parse(buf, size, "w", &st, &err), PD_OK);
    assert_int_equal(pd_st_n_tensors(st), 3);
    assert_int_equal(pd_st_n_meta(st), 0);
    const pd_st_tensor *t = pd_st_find(st, odd);
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_ST_I32);
    assert_memory_equal(t->data, iv, sizeof iv);
    t = pd_st_find(st, "");
    assert_non_null(t);
    assert_int_equal(*(const char *)t->data, 'z');
    pd_st_free(st);
    free(buf);

    /* An empty writer makes a valid empty file. */
    w = pd_st_writer_new();
    assert_non_null(w);
    assert_int_equal(pd_st_writer_serialize(w, &buf, &size, &err), PD_OK);
    assert_int_equal(size, 16);
    assert_memory_equal((char *)buf + 8, "{}      ", 8);
    assert_int_equal(pd_st_parse(buf, size, "w", &st, &err), PD_OK);
    pd_st_free(st);
    free(buf);
    pd_st_writer_free(w);
    pd_st_writer_free(NULL);
    pd_st_free(NULL);
}

/* ---- mutation sweep: arbitrary bytes never crash the reader ---- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_mutations(void **state)
{
    (void)state;
    size_t size;
    unsigned char *orig = small_file(&size);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    static const char tokens[] = "{}[],:\"0123456789-.eE \\x";
    int ok = 0;
    for (int iter = 0; iter < 20000; iter++) {
        unsigned char *buf = malloc(size);
        assert_non_null(buf);
        memcpy(buf, orig, size);
        int edits = 1 + (int)(rng_next(&seed) % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = rng_next(&seed) % size;
            uint64_t r = rng_next(&seed);
            buf[at] = (r & 1) ? (unsigned char)(r >> 8)
                              : (unsigned char)tokens[(r >> 8) % (sizeof tokens - 1)];
        }
        size_t len = (rng_next(&seed) % 8 == 0) ? rng_next(&seed) % (size + 1) : size;
        pd_st *st;
        pd_err err;
        if (pd_st_parse(buf, len, "m", &st, &err) == PD_OK) {
            ok++;
            /* Every accepted tensor lies inside the buffer. */
            for (int i = 0; i < pd_st_n_tensors(st); i++) {
                const pd_st_tensor *t = pd_st_tensor_at(st, i);
                assert_true(t->offset >= 8 + pd_st_header_size(st));
                assert_true(t->offset + t->nbytes <= len);
                assert_ptr_equal(pd_st_find(st, t->name), t);
            }
            for (int i = 0; i < pd_st_n_meta(st); i++)
                assert_non_null(pd_st_meta_get(st, pd_st_meta_at(st, i)->key));
            pd_st_free(st);
        } else {
            assert_null(st);
            assert_true(err.code < 0 && err.msg[0] != 0);
        }
        free(buf);
    }
    assert_true(ok > 0); /* edits in the data bytes leave valid files */
    free(orig);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_f32),
        cmocka_unit_test(test_roundtrip_f16_bf16),
        cmocka_unit_test(test_write_open),
        cmocka_unit_test(test_handwritten),
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
