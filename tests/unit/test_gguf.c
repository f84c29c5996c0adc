/* test_gguf.c — the GGUF reader, writer and llama model loader/converter:
 * a writer→reader round trip of every value type (and nested arrays built by
 * hand), writer misuse, stories260K converted to GGUF F32/F16/BF16 and
 * compared with the llama2.c original (weights exact or within half an ulp,
 * tokenizer equal, F32 fingerprint equal, re-conversion byte-identical),
 * misaligned F32 data, the `prefixd convert`/`inspect` commands when the
 * binary is built, and bad input: every truncation of a small valid model, a
 * table of malformed files built byte by byte, a table of semantically wrong
 * models, and a deterministic mutation sweep. Each failure must be a
 * negative status whose message names the file and gives a clue; nothing may
 * crash (the suite also runs under ASan/UBSan). Runs from the repo root. */
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
#include <sys/wait.h>
#include <unistd.h>

#include "prefixd/common.h"
#include "prefixd/gguf.h"
#include "prefixd/model.h"
#include "prefixd/tokenizer.h"

#define STORIES_BIN "models/stories260K/stories260K.bin"
#define STORIES_TOK "models/stories260K/tok512.bin"

static char tmpdir[] = "/tmp/prefixd-test-gguf-XXXXXX";
static const char *argv0 = "build/tests/test_gguf";

/* ---- helpers ---- */

static char *tmp_path(const char *name)
{
    static char buf[4][256];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
    return p;
}

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (size) assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

static void *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return p;
}

static void fill(float *x, size_t n, float scale, float phase)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * sinf((float)i * 0.731f + phase) * (1.0f + (float)(i % 7));
}

/* Asserts a failure: rc < 0 (== code unless code is 0) and a message naming
 * `name` and containing `clue`. */
static void check_failure(const char *label, int rc, int code, const pd_err *err,
                          const char *name, const char *clue)
{
    if (rc >= 0) fail_msg("%s: accepted (rc %d), expected a failure with '%s'", label, rc, clue);
    if (code && rc != code)
        fail_msg("%s: status %d (%s), expected %d; message: %s", label, rc, pd_strerror(rc), code,
                 err->msg);
    if (!strstr(err->msg, name))
        fail_msg("%s: message does not name '%s': %s", label, name, err->msg);
    if (clue && !strstr(err->msg, clue))
        fail_msg("%s: message lacks '%s': %s", label, clue, err->msg);
}

/* Parses size bytes copied into an exact-size buffer (so ASan sees any
 * over-read). */
static int parse_exact(const void *data, size_t size, const char *name, pd_gguf **g,
                       pd_err *err)
{
    void *copy = malloc(size ? size : 1);
    assert_non_null(copy);
    if (size) memcpy(copy, data, size);
    int rc = pd_gguf_parse(copy, size, name, g, err);
    if (rc == PD_OK) {
        /* every tensor's data must lie inside the buffer */
        for (size_t i = 0; i < (*g)->n_tensors; i++) {
            const pd_gguf_tensor *t = &(*g)->tensors[i];
            assert_true(t->file_offset + t->nbytes <= size);
        }
        pd_gguf_free(*g);
        *g = NULL;
    }
    free(copy);
    return rc;
}

static int load_model(const char *path, const char *tok, pd_model **m, pd_err *err)
{
    pd_model_params mp = pd_model_default_params();
    mp.path = path;
    mp.tokenizer_path = tok;
    return pd_model_load(&mp, m, err);
}

/* ---- a raw byte builder for hand-made files ---- */

typedef struct rbuf {
    unsigned char *p;
    size_t n, cap;
} rbuf;

static void rb_bytes(rbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void rb_u8(rbuf *b, uint8_t v) { rb_bytes(b, &v, 1); }

static void rb_u32(rbuf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    rb_bytes(b, x, 4);
}

static void rb_u64(rbuf *b, uint64_t v)
{
    rb_u32(b, (uint32_t)v);
    rb_u32(b, (uint32_t)(v >> 32));
}

static void rb_str(rbuf *b, const char *s)
{
    rb_u64(b, strlen(s));
    rb_bytes(b, s, strlen(s));
}

static void rb_header(rbuf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    rb_bytes(b, "GGUF", 4);
    rb_u32(b, version);
    rb_u64(b, n_tensors);
    rb_u64(b, n_kv);
}

static void rb_kv_u32(rbuf *b, const char *key, uint32_t v)
{
    rb_str(b, key);
    rb_u32(b, PD_GGUF_UINT32);
    rb_u32(b, v);
}

static void rb_tensor(rbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                      uint32_t type, uint64_t offset)
{
    rb_str(b, name);
    rb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) rb_u64(b, ne[d]);
    rb_u32(b, type);
    rb_u64(b, offset);
}

/* Pads with zeros to a multiple of a, then appends n data bytes. */
static void rb_data(rbuf *b, size_t a, size_t n)
{
    while (b->n % a) rb_u8(b, 0);
    for (size_t i = 0; i < n; i++) rb_u8(b, (uint8_t)i);
}

/* ---- a tiny llama model built with the writer ---- */

enum { T_DIM = 8, T_HID = 16, T_LAYERS = 2, T_HEADS = 2, T_KV = 1, T_VOCAB = 8, T_CTX = 32 };
#define T_KVDIM (T_DIM / T_HEADS * T_KV)

typedef struct tiny_opts {
    const char *skip_key;    /* leave this key out */
    const char *skip_tensor; /* leave this tensor out */
    const char *bad_shape;   /* give this tensor one extra row */
    const char *arch;        /* general.architecture (default llama) */
    const char *tok_model;   /* tokenizer.ggml.model (default llama) */
    int block_count_string;  /* llama.block_count as a string */
    int scores_i32;          /* tokenizer.ggml.scores as an i32 array */
    int scores_short;        /* one score fewer than tokens */
    int bos;                 /* bos id (default 1) */
    int vocab_key;           /* llama.vocab_size value (0: key absent) */
    int rope_dims;           /* llama.rope.dimension_count (0: head_dim) */
    int head_count;          /* 0: T_HEADS */
    int matrix_type;         /* ggml type of the matrices (default F32) */
    int untied;              /* write output.weight */
    uint32_t alignment;      /* 0: default */
    const char *name;        /* general.name */
} tiny_opts;

static int omit(const tiny_opts *o, const char *key)
{
    return o->skip_key && !strcmp(o->skip_key, key);
}

/* Serialises the tiny model into a new buffer (free() it). */
static void *tiny_model(const tiny_opts *o, size_t *size)
{
    pd_err err;
    pd_gguf_writer *w;
    assert_int_equal(pd_gguf_writer_create(&w, &err), PD_OK);
    if (o->alignment) assert_int_equal(pd_gguf_writer_set_alignment(w, o->alignment, &err), PD_OK);
#define KV(call)                                                                     \
    do {                                                                             \
        if ((call) != PD_OK) fail_msg("writer: %s", err.msg);                        \
    } while (0)
    if (!omit(o, "general.architecture"))
        KV(pd_gguf_add_str(w, "general.architecture", o->arch ? o->arch : "llama", &err));
    KV(pd_gguf_add_str(w, "general.name", o->name ? o->name : "tiny", &err));
    static const struct { const char *key; uint32_t v; } dims[] = {
        {"llama.context_length", T_CTX},        {"llama.embedding_length", T_DIM},
        {"llama.feed_forward_length", T_HID},   {"llama.attention.head_count_kv", T_KV},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (!omit(o, dims[i].key)) KV(pd_gguf_add_u32(w, dims[i].key, dims[i].v, &err));
    if (!omit(o, "llama.attention.head_count"))
        KV(pd_gguf_add_u32(w, "llama.attention.head_count",
                           (uint32_t)(o->head_count ? o->head_count : T_HEADS), &err));
    if (o->block_count_string)
        KV(pd_gguf_add_str(w, "llama.block_count", "2", &err));
    else if (!omit(o, "llama.block_count"))
        KV(pd_gguf_add_u32(w, "llama.block_count", T_LAYERS, &err));
    KV(pd_gguf_add_f32(w, "llama.rope.freq_base", 10000.0f, &err));
    KV(pd_gguf_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &err));
    KV(pd_gguf_add_u32(w, "llama.rope.dimension_count",
                       (uint32_t)(o->rope_dims ? o->rope_dims : T_DIM / T_HEADS), &err));
    if (o->vocab_key) KV(pd_gguf_add_u32(w, "llama.vocab_size", (uint32_t)o->vocab_key, &err));

    static const char *const pieces[T_VOCAB] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a",
                                                "\xe2\x96\x81" "b", "b", "a", "<0x0A>"};
    static const float scores[T_VOCAB] = {0, 0, 0, -1, -2, -3, -4, 0};
    static const int32_t types[T_VOCAB] = {2, 3, 3, 1, 1, 1, 1, 6};
    if (!omit(o, "tokenizer.ggml.model"))
        KV(pd_gguf_add_str(w, "tokenizer.ggml.model", o->tok_model ? o->tok_model : "llama",
                           &err));
    if (!omit(o, "tokenizer.ggml.tokens"))
        KV(pd_gguf_add_arr_str(w, "tokenizer.ggml.tokens", pieces, NULL, T_VOCAB, &err));
    if (o->scores_i32)
        KV(pd_gguf_add_arr_i32(w, "tokenizer.ggml.scores", types, T_VOCAB, &err));
    else
        KV(pd_gguf_add_arr_f32(w, "tokenizer.ggml.scores", scores,
                               T_VOCAB - (o->scores_short ? 1 : 0), &err));
    KV(pd_gguf_add_arr_i32(w, "tokenizer.ggml.token_type", types, T_VOCAB, &err));
    KV(pd_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(o->bos ? o->bos : 1), &err));
    KV(pd_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 2, &err));

    /* weights: one buffer per tensor, values depending on the tensor index */
    enum { MAX_T = 3 + 9 * T_LAYERS };
    static float data[MAX_T][T_VOCAB * T_DIM + T_HID * T_DIM + T_DIM];
    static uint16_t half[MAX_T][T_HID * T_DIM + T_DIM];
    struct { char name[64]; int64_t ne0, ne1; } ts[MAX_T];
    int k = 0;
#define T(ne0_, ne1_, ...)                                     \
    do {                                                       \
        snprintf(ts[k].name, sizeof ts[k].name, __VA_ARGS__);  \
        ts[k].ne0 = (ne0_);                                    \
        ts[k].ne1 = (ne1_);                                    \
        k++;                                                   \
    } while (0)
    T(T_DIM, T_VOCAB, "token_embd.weight");
    T(T_DIM, 0, "output_norm.weight");
    if (o->untied) T(T_DIM, T_VOCAB, "output.weight");
    for (int l = 0; l < T_LAYERS; l++) {
        T(T_DIM, 0, "blk.%d.attn_norm.weight", l);
        T(T_DIM, T_DIM, "blk.%d.attn_q.weight", l);
        T(T_DIM, T_KVDIM, "blk.%d.attn_k.weight", l);
        T(T_DIM, T_KVDIM, "blk.%d.attn_v.weight", l);
        T(T_DIM, T_DIM, "blk.%d.attn_output.weight", l);
        T(T_DIM, 0, "blk.%d.ffn_norm.weight", l);
        T(T_DIM, T_HID, "blk.%d.ffn_gate.weight", l);
        T(T_HID, T_DIM, "blk.%d.ffn_down.weight", l);
        T(T_DIM, T_HID, "blk.%d.ffn_up.weight", l);
    }
#undef T
    for (int i = 0; i < k; i++) {
        if (o->skip_tensor && !strcmp(o->skip_tensor, ts[i].name)) continue;
        int64_t ne[2] = {ts[i].ne0, ts[i].ne1};
        if (o->bad_shape && !strcmp(o->bad_shape, ts[i].name)) ne[ts[i].ne1 ? 1 : 0] += 1;
        size_t n = (size_t)ne[0] * (size_t)(ne[1] ? ne[1] : 1);
        float *x = data[i];
        PD_ASSERT(n <= sizeof data[0] / sizeof(float));
        fill(x, n, 0.1f, (float)i);
        int type = ts[i].ne1 && o->matrix_type ? o->matrix_type : PD_GGML_F32;
        const void *src = x;
        if (type == PD_GGML_F16 || type == PD_GGML_BF16) {
            for (size_t j = 0; j < n; j++)
                half[i][j] = type == PD_GGML_F16 ? 0x3c00 : 0x3f80; /* 1.0 */
            src = half[i];
        }
        KV(pd_gguf_add_tensor(w, ts[i].name, ts[i].ne1 ? 2 : 1, ne, type, src, &err));
    }
#undef KV
    void *buf;
    assert_int_equal(pd_gguf_writer_to_mem(w, &buf, size, &err), PD_OK);
    assert_int_equal(*size, pd_gguf_writer_size(w));
    pd_gguf_writer_free(w);
    return buf;
}

static void write_tiny(const char *path, const tiny_opts *o)
{
    size_t size;
    void *buf = tiny_model(o, &size);
    write_file(path, buf, size);
    free(buf);
}

/* ---- round trips ---- */

static void test_kv_roundtrip(void **state)
{
    (void)state;
    pd_err err;
    pd_gguf_writer *w;
    assert_int_equal(pd_gguf_writer_create(&w, &err), PD_OK);
    assert_int_equal(pd_gguf_writer_set_alignment(w, 64, &err), PD_OK);

    uint8_t u8 = 250, b1 = 1;
    int8_t i8 = -100;
    uint16_t u16 = 65000;
    int16_t i16 = -30000;
    uint64_t u64 = 0xfedcba9876543210ull;
    int64_t i64 = -1234567890123456789ll;
    double f64 = -2.718281828459045;
    assert_int_equal(pd_gguf_add_scalar(w, "t.u8", PD_GGUF_UINT8, &u8, &err), PD_OK);
    assert_int_equal(pd_gguf_add_scalar(w, "t.i8", PD_GGUF_INT8, &i8, &err), PD_OK);
    assert_int_equal(pd_gguf_add_scalar(w, "t.u16", PD_GGUF_UINT16, &u16, &err), PD_OK);
    assert_int_equal(pd_gguf_add_scalar(w, "t.i16", PD_GGUF_INT16, &i16, &err), PD_OK);
    assert_int_equal(pd_gguf_add_u32(w, "t.u32", 4000000000u, &err), PD_OK);
    assert_int_equal(pd_gguf_add_i32(w, "t.i32", -2000000000, &err), PD_OK);
    assert_int_equal(pd_gguf_add_f32(w, "t.f32", 0.1f, &err), PD_OK);
    assert_int_equal(pd_gguf_add_bool(w, "t.bool", 1, &err), PD_OK);
    assert_int_equal(pd_gguf_add_scalar(w, "t.bool0", PD_GGUF_BOOL, &b1, &err), PD_OK);
    assert_int_equal(pd_gguf_add_str(w, "t.str", "h\xc3\xa9llo \xe2\x96\x81world", &err), PD_OK);
    assert_int_equal(pd_gguf_add_str(w, "t.empty", "", &err), PD_OK);
    assert_int_equal(pd_gguf_add_scalar(w, "t.u64", PD_GGUF_UINT64, &u64, &err), PD_OK);
    assert_int_equal(pd_gguf_add_scalar(w, "t.i64", PD_GGUF_INT64, &i64, &err), PD_OK);
    assert_int_equal(pd_gguf_add_scalar(w, "t.f64", PD_GGUF_FLOAT64, &f64, &err), PD_OK);

    /* arrays of every fixed-size type, each with 5 distinct elements */
    unsigned char elems[PD_GGUF_N_TYPES][5 * 8];
    for (int t = 0; t < PD_GGUF_N_TYPES; t++) {
        size_t sz = pd_gguf_type_size(t);
        if (!sz) continue;
        for (size_t i = 0; i < 5 * sz; i++) elems[t][i] = (unsigned char)(i * 37 + (size_t)t);
        if (t == PD_GGUF_BOOL)
            for (int i = 0; i < 5; i++) elems[t][i] = (unsigned char)(i & 1);
        char key[32];
        snprintf(key, sizeof key, "arr.%s", pd_gguf_type_name(t));
        assert_int_equal(pd_gguf_add_arr(w, key, t, elems[t], 5, &err), PD_OK);
    }
    float fa[3] = {1.5f, -2.25f, 3e-20f};
    int32_t ia[3] = {-1, 0, INT32_MAX};
    assert_int_equal(pd_gguf_add_arr_f32(w, "arr.f32b", fa, 3, &err), PD_OK);
    assert_int_equal(pd_gguf_add_arr_i32(w, "arr.i32b", ia, 3, &err), PD_OK);
    assert_int_equal(pd_gguf_add_arr_f32(w, "arr.none", NULL, 0, &err), PD_OK);
    const char *strs[4] = {"", "\xe2\x96\x81the", "a\0b", "<0x0A>"};
    uint64_t lens[4] = {0, 6, 3, 6};
    assert_int_equal(pd_gguf_add_arr_str(w, "arr.str", strs, lens, 4, &err), PD_OK);

    /* tensors of each loadable type, 1 to 4 dims */
    float t32[2 * 3 * 4];
    fill(t32, 24, 1.0f, 0.3f);
    uint16_t t16[5], tb16[7 * 2];
    for (int i = 0; i < 5; i++) t16[i] = (uint16_t)(0x3c00 + i);
    for (int i = 0; i < 14; i++) tb16[i] = (uint16_t)(0x3f80 + i);
    int64_t ne3[3] = {2, 3, 4}, ne1[1] = {5}, ne2[2] = {7, 2}, ne4[4] = {1, 2, 1, 3};
    assert_int_equal(pd_gguf_add_tensor(w, "a3", 3, ne3, PD_GGML_F32, t32, &err), PD_OK);
    assert_int_equal(pd_gguf_add_tensor(w, "b1", 1, ne1, PD_GGML_F16, t16, &err), PD_OK);
    assert_int_equal(pd_gguf_add_tensor(w, "c2", 2, ne2, PD_GGML_BF16, tb16, &err), PD_OK);
    assert_int_equal(pd_gguf_add_tensor(w, "d4", 4, ne4, PD_GGML_F32, t32, &err), PD_OK);

    const char *path = tmp_path("kv.gguf");
    assert_int_equal(pd_gguf_writer_write(w, path, &err), PD_OK);
    void *mem;
    size_t mem_size;
    assert_int_equal(pd_gguf_writer_to_mem(w, &mem, &mem_size, &err), PD_OK);
    assert_int_equal(mem_size, pd_gguf_writer_size(w));
    size_t file_size;
    void *file = read_all(path, &file_size);
    assert_int_equal(file_size, mem_size);
    assert_memory_equal(file, mem, mem_size); /* the two outputs agree */
    free(file);
    free(mem);
    pd_gguf_writer_free(w);

    pd_gguf *g;
    assert_int_equal(pd_gguf_open(path, &g, &err), PD_OK);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(g->data_offset % 64, 0);
    assert_string_equal(g->path, path);
    /* file order kept */
    assert_true(pd_gguf_str_eq(g->kv[0].key, "general.alignment"));
    assert_true(pd_gguf_str_eq(g->kv[1].key, "t.u8"));

    uint8_t gu8;
    int8_t gi8;
    uint16_t gu16;
    int16_t gi16;
    uint32_t gu32;
    int32_t gi32;
    uint64_t gu64;
    int64_t gi64, iv;
    float gf32;
    double gf64, dv;
    int gb;
    pd_gguf_str s;
    assert_int_equal(pd_gguf_get_u8(g, "t.u8", &gu8, &err), PD_OK);
    assert_int_equal(gu8, 250);
    assert_int_equal(pd_gguf_get_i8(g, "t.i8", &gi8, &err), PD_OK);
    assert_int_equal(gi8, -100);
    assert_int_equal(pd_gguf_get_u16(g, "t.u16", &gu16, &err), PD_OK);
    assert_int_equal(gu16, 65000);
    assert_int_equal(pd_gguf_get_i16(g, "t.i16", &gi16, &err), PD_OK);
    assert_int_equal(gi16, -30000);
    assert_int_equal(pd_gguf_get_u32(g, "t.u32", &gu32, &err), PD_OK);
    assert_int_equal(gu32, 4000000000u);
    assert_int_equal(pd_gguf_get_i32(g, "t.i32", &gi32, &err), PD_OK);
    assert_int_equal(gi32, -2000000000);
    assert_int_equal(pd_gguf_get_f32(g, "t.f32", &gf32, &err), PD_OK);
    assert_true(gf32 == 0.1f);
    assert_int_equal(pd_gguf_get_bool(g, "t.bool", &gb, &err), PD_OK);
    assert_int_equal(gb, 1);
    assert_int_equal(pd_gguf_get_bool(g, "t.bool0", &gb, &err), PD_OK);
    assert_int_equal(gb, 1);
    assert_int_equal(pd_gguf_get_str(g, "t.str", &s, &err), PD_OK);
    assert_true(pd_gguf_str_eq(s, "h\xc3\xa9llo \xe2\x96\x81world"));
    assert_int_equal(pd_gguf_get_str(g, "t.empty", &s, &err), PD_OK);
    assert_int_equal(s.len, 0);
    assert_int_equal(pd_gguf_get_u64(g, "t.u64", &gu64, &err), PD_OK);
    assert_true(gu64 == u64);
    assert_int_equal(pd_gguf_get_i64(g, "t.i64", &gi64, &err), PD_OK);
    assert_true(gi64 == i64);
    assert_int_equal(pd_gguf_get_f64(g, "t.f64", &gf64, &err), PD_OK);
    assert_true(gf64 == f64);

    /* lenient getters */
    assert_int_equal(pd_gguf_get_int(g, "t.u8", 0, 1000, &iv, &err), PD_OK);
    assert_int_equal(iv, 250);
    assert_int_equal(pd_gguf_get_int(g, "t.i16", -40000, 0, &iv, &err), PD_OK);
    assert_int_equal(iv, -30000);
    assert_int_equal(pd_gguf_get_int(g, "t.u64", 0, INT64_MAX, &iv, &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "t.u64"));
    assert_int_equal(pd_gguf_get_int(g, "t.u32", 0, 100, &iv, &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "out of range"));
    assert_int_equal(pd_gguf_get_int(g, "t.f32", 0, 100, &iv, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "key t.f32 has type f32, expected an integer"));
    assert_int_equal(pd_gguf_get_float(g, "t.f32", &dv, &err), PD_OK);
    assert_true((float)dv == 0.1f);
    assert_int_equal(pd_gguf_get_float(g, "t.f64", &dv, &err), PD_OK);
    assert_true(dv == f64);

    /* type errors and missing keys name file, key and types */
    assert_int_equal(pd_gguf_get_u32(g, "t.str", &gu32, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "key t.str has type string, expected u32"));
    assert_int_equal(pd_gguf_get_str(g, "arr.u8", &s, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "has type array of u8, expected string"));
    assert_int_equal(pd_gguf_get_u32(g, "no.such.key", &gu32, &err), PD_ENOTFOUND);
    assert_non_null(strstr(err.msg, "no.such.key not found"));

    /* arrays */
    for (int t = 0; t < PD_GGUF_N_TYPES; t++) {
        size_t sz = pd_gguf_type_size(t);
        if (!sz) continue;
        char key[32];
        snprintf(key, sizeof key, "arr.%s", pd_gguf_type_name(t));
        const pd_gguf_kv *kv = pd_gguf_find_kv(g, key);
        assert_non_null(kv);
        assert_int_equal(kv->type, PD_GGUF_ARRAY);
        assert_int_equal(kv->arr_type, t);
        const void *data;
        uint64_t n;
        assert_int_equal(pd_gguf_get_arr(g, key, t, &data, &n, &err), PD_OK);
        assert_int_equal(n, 5);
        assert_memory_equal(data, elems[t], 5 * sz);
        int other = t == PD_GGUF_FLOAT32 ? PD_GGUF_INT32 : PD_GGUF_FLOAT32;
        assert_int_equal(pd_gguf_get_arr(g, key, other, &data, &n, &err), PD_EFORMAT);
        assert_non_null(strstr(err.msg, "expected array of"));
    }
    const void *data;
    uint64_t n;
    float fgot[3];
    int32_t igot[3];
    assert_int_equal(pd_gguf_get_arr(g, "arr.f32b", PD_GGUF_FLOAT32, &data, &n, &err), PD_OK);
    assert_int_equal(n, 3);
    memcpy(fgot, data, sizeof fgot);
    assert_memory_equal(fgot, fa, sizeof fa);
    assert_int_equal(pd_gguf_get_arr(g, "arr.i32b", PD_GGUF_INT32, &data, &n, &err), PD_OK);
    memcpy(igot, data, sizeof igot);
    assert_memory_equal(igot, ia, sizeof ia);
    assert_int_equal(pd_gguf_get_arr(g, "arr.i32b", PD_GGUF_FLOAT32, &data, &n, &err),
                     PD_EFORMAT);
    assert_non_null(strstr(err.msg, "key arr.i32b has type array of i32, expected array of f32"));
    assert_int_equal(pd_gguf_get_arr(g, "arr.none", PD_GGUF_FLOAT32, &data, &n, &err), PD_OK);
    assert_int_equal(n, 0);
    const pd_gguf_str *sa;
    assert_int_equal(pd_gguf_get_str_arr(g, "arr.str", &sa, &n, &err), PD_OK);
    assert_int_equal(n, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(sa[i].len, lens[i]);
        if (lens[i]) assert_memory_equal(sa[i].ptr, strs[i], lens[i]);
    }

    /* tensors */
    assert_int_equal(g->n_tensors, 4);
    const pd_gguf_tensor *t = pd_gguf_find_tensor(g, "a3");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->ne[0], 2);
    assert_int_equal(t->ne[1], 3);
    assert_int_equal(t->ne[2], 4);
    assert_int_equal(t->ne[3], 1);
    assert_int_equal(t->type, PD_GGML_F32);
    assert_int_equal(t->nbytes, sizeof t32);
    assert_memory_equal(t->data, t32, sizeof t32);
    t = pd_gguf_find_tensor(g, "b1");
    assert_non_null(t);
    assert_int_equal(t->type, PD_GGML_F16);
    assert_int_equal(t->n_elems, 5);
    assert_memory_equal(t->data, t16, sizeof t16);
    t = pd_gguf_find_tensor(g, "c2");
    assert_non_null(t);
    assert_int_equal(t->type, PD_GGML_BF16);
    assert_memory_equal(t->data, tb16, sizeof tb16);
    t = pd_gguf_find_tensor(g, "d4");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 4);
    assert_int_equal(t->n_elems, 6);
    assert_memory_equal(t->data, t32, 6 * sizeof(float));
    for (size_t i = 0; i < g->n_tensors; i++) {
        assert_int_equal(g->tensors[i].offset % 64, 0);
        assert_int_equal(g->tensors[i].file_offset % 64, 0);
    }
    assert_null(pd_gguf_find_tensor(g, "a"));
    assert_null(pd_gguf_find_tensor(g, "a33"));
    assert_null(pd_gguf_find_kv(g, ""));
    pd_gguf_free(g);
    pd_gguf_free(NULL);
    unlink(path);
}

static void test_handmade_nested_and_v2(void **state)
{
    (void)state;
    pd_err err;
    pd_gguf *g;
    rbuf b = {0};
    rb_header(&b, 2, 0, 3);
    rb_str(&b, "a.nested"); /* [["x", "yz"], [], ["w"]] */
    rb_u32(&b, PD_GGUF_ARRAY);
    rb_u32(&b, PD_GGUF_ARRAY);
    rb_u64(&b, 3);
    rb_u32(&b, PD_GGUF_STRING);
    rb_u64(&b, 2);
    rb_str(&b, "x");
    rb_str(&b, "yz");
    rb_u32(&b, PD_GGUF_STRING);
    rb_u64(&b, 0);
    rb_u32(&b, PD_GGUF_STRING);
    rb_u64(&b, 1);
    rb_str(&b, "w");
    rb_kv_u32(&b, "b.after", 7);
    rb_str(&b, "c.ints"); /* [[1, 2], [3]] as u16 */
    rb_u32(&b, PD_GGUF_ARRAY);
    rb_u32(&b, PD_GGUF_ARRAY);
    rb_u64(&b, 2);
    rb_u32(&b, PD_GGUF_UINT16);
    rb_u64(&b, 2);
    rb_u32(&b, 0x00020001);
    rb_u32(&b, PD_GGUF_UINT16);
    rb_u64(&b, 1);
    rb_bytes(&b, "\x03\x00", 2);
    assert_int_equal(pd_gguf_parse(b.p, b.n, "nested", &g, &err), PD_OK);
    assert_int_equal(g->version, 2);
    const pd_gguf_kv *kv = pd_gguf_find_kv(g, "a.nested");
    assert_non_null(kv);
    assert_int_equal(kv->type, PD_GGUF_ARRAY);
    assert_int_equal(kv->arr_type, PD_GGUF_ARRAY);
    assert_int_equal(kv->arr_n, 3);
    assert_null(kv->arr_strs);
    uint32_t v;
    assert_int_equal(pd_gguf_get_u32(g, "b.after", &v, &err), PD_OK); /* skipped correctly */
    assert_int_equal(v, 7);
    kv = pd_gguf_find_kv(g, "c.ints");
    assert_non_null(kv);
    assert_int_equal(kv->arr_n, 2);
    assert_int_equal(kv->arr_bytes, (4 + 8 + 4) + (4 + 8 + 2));
    const pd_gguf_str *sa;
    uint64_t n;
    assert_int_equal(pd_gguf_get_str_arr(g, "a.nested", &sa, &n, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "has type array of array, expected array of string"));
    pd_gguf_free(g);
    free(b.p);

    /* nesting deeper than the limit */
    memset(&b, 0, sizeof b);
    rb_header(&b, 3, 0, 1);
    rb_str(&b, "deep");
    rb_u32(&b, PD_GGUF_ARRAY);
    for (int d = 0; d < PD_GGUF_MAX_DEPTH + 1; d++) {
        rb_u32(&b, PD_GGUF_ARRAY);
        rb_u64(&b, 1);
    }
    rb_u32(&b, PD_GGUF_UINT8);
    rb_u64(&b, 0);
    int rc = parse_exact(b.p, b.n, "deep.gguf", &g, &err);
    check_failure("deep nesting", rc, PD_EFORMAT, &err, "deep.gguf", "nested deeper");
    free(b.p);

    /* a model file with no tensors and no trailing padding is valid */
    memset(&b, 0, sizeof b);
    rb_header(&b, 3, 0, 1);
    rb_kv_u32(&b, "x", 1);
    assert_int_equal(parse_exact(b.p, b.n, "empty-ok", &g, &err), PD_OK);
    free(b.p);
}

static void test_type_tables(void **state)
{
    (void)state;
    uint32_t be, bb;
    assert_string_equal(pd_gguf_type_name(PD_GGUF_STRING), "string");
    assert_string_equal(pd_gguf_type_name(PD_GGUF_FLOAT64), "f64");
    assert_string_equal(pd_gguf_type_name(13), "?");
    assert_string_equal(pd_gguf_type_name(-1), "?");
    assert_int_equal(pd_gguf_type_size(PD_GGUF_ARRAY), 0);
    assert_int_equal(pd_gguf_type_size(PD_GGUF_INT64), 8);
    assert_string_equal(pd_ggml_type_name(PD_GGML_BF16), "BF16");
    assert_string_equal(pd_ggml_type_name(PD_GGML_Q4_K), "Q4_K");
    assert_null(pd_ggml_type_name(4));
    assert_int_equal(pd_ggml_type_block(PD_GGML_Q6_K, &be, &bb), PD_OK);
    assert_int_equal(be, 256);
    assert_int_equal(bb, 210);
    assert_int_equal(pd_ggml_type_block(PD_GGML_Q8_0, &be, &bb), PD_OK);
    assert_int_equal(bb, 34);
    assert_int_equal(pd_ggml_type_block(99, &be, &bb), PD_EUNSUPPORTED);
    assert_string_equal(pd_dtype_name(PD_DTYPE_F32), "F32");
    assert_string_equal(pd_dtype_name(PD_DTYPE_F16), "F16");
    assert_string_equal(pd_dtype_name(PD_DTYPE_BF16), "BF16");
    assert_string_equal(pd_dtype_name(7), "?");
}

static void test_writer_errors(void **state)
{
    (void)state;
    pd_err err;
    pd_gguf_writer *w;
    float x[64] = {0};
    uint8_t two = 2;
    int64_t ne[4] = {4, 2, 1, 1}, zero[1] = {0}, q[1] = {16};
    assert_int_equal(pd_gguf_writer_create(&w, &err), PD_OK);
    assert_int_equal(pd_gguf_add_u32(w, "k", 1, &err), PD_OK);
    assert_int_equal(pd_gguf_add_str(w, "k", "x", &err), PD_EEXIST);
    assert_non_null(strstr(err.msg, "k added twice"));
    assert_int_equal(pd_gguf_add_u32(w, "", 1, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_scalar(w, "b", PD_GGUF_BOOL, &two, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_scalar(w, "s", PD_GGUF_STRING, x, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_arr(w, "a", PD_GGUF_STRING, x, 1, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_set_alignment(w, 24, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_set_alignment(w, 0, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_tensor(w, "t", 2, ne, PD_GGML_F32, x, &err), PD_OK);
    assert_int_equal(pd_gguf_add_tensor(w, "t", 2, ne, PD_GGML_F32, x, &err), PD_EEXIST);
    assert_int_equal(pd_gguf_add_tensor(w, "u", 5, ne, PD_GGML_F32, x, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_tensor(w, "u", 0, ne, PD_GGML_F32, x, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_tensor(w, "u", 1, zero, PD_GGML_F32, x, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_tensor(w, "u", 2, ne, 4, x, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_add_tensor(w, "u", 1, q, PD_GGML_Q4_0, x, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "multiple"));
    assert_int_equal(pd_gguf_add_tensor(w, "u", 2, ne, PD_GGML_F32, NULL, &err), PD_EINVAL);
    char longname[80];
    memset(longname, 'n', 79);
    longname[79] = 0;
    assert_int_equal(pd_gguf_add_tensor(w, longname, 2, ne, PD_GGML_F32, x, &err), PD_EINVAL);
    assert_int_equal(pd_gguf_writer_set_alignment(w, 64, &err), PD_EINVAL); /* after tensors */
    /* failed adds leave a valid file behind */
    void *buf;
    size_t size;
    pd_gguf *g;
    assert_int_equal(pd_gguf_writer_to_mem(w, &buf, &size, &err), PD_OK);
    assert_int_equal(pd_gguf_parse(buf, size, "w", &g, &err), PD_OK);
    assert_int_equal(g->n_kv, 1);
    assert_int_equal(g->n_tensors, 1);
    pd_gguf_free(g);
    free(buf);
    /* writing into a missing directory fails cleanly */
    assert_int_equal(pd_gguf_writer_write(w, "/nonexistent-dir/x.gguf", &err), PD_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent-dir/x.gguf"));
    pd_gguf_writer_free(w);
    pd_gguf_writer_free(NULL);
}

/* ---- stories260K through GGUF ---- */

/* Every value of W as F32 (rows dequantised); the caller frees. */
static float *wmat_floats(const pd_wmat *W)
{
    float *f = malloc((size_t)W->rows * (size_t)W->cols * sizeof *f);
    assert_non_null(f);
    for (int r = 0; r < W->rows; r++) pd_wmat_row_f32(W, r, f + (size_t)r * W->cols);
    return f;
}

/* The model's weights in canonical order: F32 values and float count; the
 * matrices are copies that free_weights releases. */
static int model_weights(const pd_model *m, const float **p, size_t *n)
{
    const pd_config *c = &m->cfg;
    size_t D = (size_t)c->dim, KV = (size_t)c->kv_dim, H = (size_t)c->hidden_dim,
           V = (size_t)c->vocab_size;
    int k = 0;
    p[k] = wmat_floats(&m->w.token_embedding), n[k++] = V * D;
    for (int l = 0; l < c->n_layers; l++) {
        const pd_layer_weights *L = &m->w.layers[l];
        p[k] = L->rms_att, n[k++] = D;
        p[k] = wmat_floats(&L->wq), n[k++] = D * D;
        p[k] = wmat_floats(&L->wk), n[k++] = KV * D;
        p[k] = wmat_floats(&L->wv), n[k++] = KV * D;
        p[k] = wmat_floats(&L->wo), n[k++] = D * D;
        p[k] = L->rms_ffn, n[k++] = D;
        p[k] = wmat_floats(&L->w1), n[k++] = H * D;
        p[k] = wmat_floats(&L->w2), n[k++] = D * H;
        p[k] = wmat_floats(&L->w3), n[k++] = H * D;
    }
    p[k] = m->w.rms_final, n[k++] = D;
    p[k] = wmat_floats(&m->w.wcls), n[k++] = V * D;
    return k;
}

/* Frees model_weights' copies (every group but the norms). */
static void free_weights(const pd_model *m, const float **p, int k)
{
    for (int i = 0; i < k; i++) {
        int norm = p[i] == m->w.rms_final;
        for (int l = 0; l < m->cfg.n_layers; l++)
            norm |= p[i] == m->w.layers[l].rms_att || p[i] == m->w.layers[l].rms_ffn;
        if (!norm) free((void *)p[i]);
    }
}

/* mant_bits < 0: exact; else within half an ulp of that many mantissa bits. */
static void compare_models(const pd_model *a, const pd_model *b, int mant_bits)
{
    assert_memory_equal(&a->cfg, &b->cfg, sizeof a->cfg);
    assert_int_equal(a->tied_classifier, b->tied_classifier);
    const float *pa[64], *pb[64];
    size_t na[64], nb[64];
    int ka = model_weights(a, pa, na), kb = model_weights(b, pb, nb);
    assert_int_equal(ka, kb);
    for (int i = 0; i < ka; i++) {
        assert_int_equal(na[i], nb[i]);
        if (mant_bits < 0) {
            assert_memory_equal(pa[i], pb[i], na[i] * sizeof(float));
            continue;
        }
        float rel = ldexpf(1.0f, -(mant_bits + 1));
        for (size_t j = 0; j < na[i]; j++) {
            float tol = fabsf(pa[i][j]) * rel + 3e-8f;
            if (fabsf(pa[i][j] - pb[i][j]) > tol)
                fail_msg("weight group %d element %zu: %.9g vs %.9g", i, j, pa[i][j], pb[i][j]);
        }
    }
    free_weights(a, pa, ka);
    free_weights(b, pb, kb);
    const pd_tokenizer *ta = a->tok, *tb = b->tok;
    assert_int_equal(pd_tokenizer_vocab_size(ta), pd_tokenizer_vocab_size(tb));
    assert_int_equal(pd_tokenizer_bos(ta), pd_tokenizer_bos(tb));
    assert_int_equal(pd_tokenizer_eos(ta), pd_tokenizer_eos(tb));
    for (int i = 0; i < pd_tokenizer_vocab_size(ta); i++) {
        assert_string_equal(pd_tokenizer_piece(ta, i), pd_tokenizer_piece(tb, i));
        assert_true(pd_tokenizer_score(ta, i) == pd_tokenizer_score(tb, i));
        assert_int_equal(pd_tokenizer_type(ta, i), pd_tokenizer_type(tb, i));
    }
}

static int points_into(const pd_model *m, const void *p)
{
    const char *base = m->map;
    return (const char *)p >= base && (const char *)p < base + m->map_size;
}

static void test_convert_stories(void **state)
{
    (void)state;
    pd_err err;
    pd_model *bin;
    if (load_model(STORIES_BIN, STORIES_TOK, &bin, &err) < 0) fail_msg("%s", err.msg);

    static const struct { int dtype; int mant_bits; const char *file; } cases[] = {
        {PD_DTYPE_F32, -1, "s_f32.gguf"},
        {PD_DTYPE_F16, 10, "s_f16.gguf"},
        {PD_DTYPE_BF16, 7, "s_bf16.gguf"},
    };
    for (int c = 0; c < 3; c++) {
        const char *path = tmp_path(cases[c].file);
        if (pd_gguf_write_model(bin, path, cases[c].dtype, "stories260K", &err) < 0)
            fail_msg("%s", err.msg);
        pd_model *g;
        if (load_model(path, NULL, &g, &err) < 0) fail_msg("%s", err.msg);
        assert_int_equal(g->format, PD_FORMAT_GGUF);
        assert_int_equal(g->dtype, cases[c].dtype);
        assert_int_equal(g->tied_classifier, 1);
        assert_true(g->w.wcls.data == g->w.token_embedding.data);
        assert_int_equal(g->n_tensors, 2 + 9 * g->cfg.n_layers);
        compare_models(bin, g, cases[c].mant_bits);
        if (cases[c].dtype == PD_DTYPE_F32) {
            /* weights straight from the mapping, same fingerprint as the .bin */
            assert_null(g->owned);
            assert_true(points_into(g, g->w.token_embedding.data));
            assert_true(points_into(g, g->w.layers[4].w2.data));
            assert_string_equal(g->fingerprint_hex, bin->fingerprint_hex);
            assert_true(g->fingerprint == bin->fingerprint);
            assert_true(g->weight_bytes == bin->weight_bytes);
        } else {
            /* matrices used in place in their type; norms stay F32 */
            assert_true(points_into(g, g->w.layers[0].wq.data));
            assert_int_equal(g->w.layers[0].wq.type, cases[c].dtype == PD_DTYPE_F16 ? PD_Q_F16
                                                                                     : PD_Q_BF16);
            assert_true(points_into(g, g->w.layers[0].rms_att));
            assert_true(g->fingerprint != bin->fingerprint);
            assert_true(g->weight_bytes < bin->weight_bytes);
        }
        /* the inspect table */
        const pd_tensor_info *t0 = &g->tensors[0];
        assert_string_equal(t0->name, "token_embd.weight");
        assert_int_equal(t0->n_dims, 2);
        assert_int_equal(t0->shape[0], 64);
        assert_int_equal(t0->shape[1], 512);
        assert_int_equal(t0->dtype, cases[c].dtype);
        assert_int_equal(t0->nbytes, 64 * 512 * (cases[c].dtype == PD_DTYPE_F32 ? 4 : 2));
        assert_int_equal(t0->offset % 32, 0);

        /* re-converting the GGUF gives the same bytes */
        const char *again = tmp_path("again.gguf");
        if (pd_gguf_write_model(g, again, cases[c].dtype, "stories260K", &err) < 0)
            fail_msg("%s", err.msg);
        size_t s1, s2;
        void *b1 = read_all(path, &s1), *b2 = read_all(again, &s2);
        assert_int_equal(s1, s2);
        assert_memory_equal(b1, b2, s1);
        free(b1);
        free(b2);
        unlink(again);

        /* metadata as llama.cpp expects it */
        pd_gguf *gg;
        assert_int_equal(pd_gguf_open(path, &gg, &err), PD_OK);
        const pd_gguf_str *toks;
        uint64_t n;
        assert_int_equal(pd_gguf_get_str_arr(gg, "tokenizer.ggml.tokens", &toks, &n, &err),
                         PD_OK);
        assert_int_equal(n, 512);
        int spaces = 0;
        for (uint64_t i = 0; i < n; i++) {
            assert_null(memchr(toks[i].ptr, ' ', (size_t)toks[i].len)); /* written as U+2581 */
            if (toks[i].len >= 3 && !memcmp(toks[i].ptr, "\xe2\x96\x81", 3)) spaces++;
        }
        assert_int_equal(spaces, 91); /* tok512 has 91 pieces starting with a space */
        pd_gguf_str name;
        assert_int_equal(pd_gguf_get_str(gg, "general.name", &name, &err), PD_OK);
        assert_true(pd_gguf_str_eq(name, "stories260K"));
        assert_null(pd_gguf_find_tensor(gg, "output.weight"));
        pd_gguf_free(gg);
        pd_model_free(g);
    }
    assert_int_equal(pd_gguf_write_model(bin, tmp_path("x.gguf"), 9, NULL, &err), PD_EINVAL);
    pd_model_free(bin);
}

static void test_tiny_untied_and_types(void **state)
{
    (void)state;
    pd_err err;
    pd_model *m;
    /* untied F32 */
    tiny_opts o = {0};
    o.untied = 1;
    o.vocab_key = T_VOCAB;
    const char *path = tmp_path("tiny_untied.gguf");
    write_tiny(path, &o);
    if (load_model(path, NULL, &m, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(m->tied_classifier, 0);
    assert_true(m->w.wcls.data != m->w.token_embedding.data);
    assert_int_equal(m->cfg.dim, T_DIM);
    assert_int_equal(m->cfg.n_kv_heads, T_KV);
    assert_int_equal(m->cfg.kv_dim, T_KVDIM);
    assert_int_equal(m->cfg.vocab_size, T_VOCAB);
    assert_int_equal(m->cfg.seq_len, T_CTX);
    assert_string_equal(pd_tokenizer_piece(m->tok, 3), " a"); /* U+2581 mapped to ' ' */
    assert_true(pd_tokenizer_score(m->tok, 6) == -4.0f);
    assert_int_equal(pd_tokenizer_type(m->tok, 7), PD_TOKEN_BYTE);

    /* written back: output.weight present, loads to the same model */
    const char *back = tmp_path("tiny_back.gguf");
    if (pd_gguf_write_model(m, back, PD_DTYPE_F32, NULL, &err) < 0) fail_msg("%s", err.msg);
    pd_model *m2;
    if (load_model(back, NULL, &m2, &err) < 0) fail_msg("%s", err.msg);
    compare_models(m, m2, -1);
    assert_true(m->fingerprint == m2->fingerprint);
    pd_model_free(m2);
    pd_model_free(m);

    /* F16 and BF16 matrices (all 1.0), widened exactly */
    int types[2] = {PD_GGML_F16, PD_GGML_BF16};
    for (int i = 0; i < 2; i++) {
        tiny_opts oh = {0};
        oh.matrix_type = types[i];
        write_tiny(path, &oh);
        if (load_model(path, NULL, &m, &err) < 0) fail_msg("%s", err.msg);
        assert_int_equal(m->dtype, i == 0 ? PD_DTYPE_F16 : PD_DTYPE_BF16);
        float *wq = wmat_floats(&m->w.layers[1].wq), *w2 = wmat_floats(&m->w.layers[0].w2);
        for (int j = 0; j < T_DIM * T_DIM; j++) assert_true(wq[j] == 1.0f);
        for (int j = 0; j < T_DIM * T_HID; j++) assert_true(w2[j] == 1.0f);
        free(wq);
        free(w2);
        pd_model_free(m);
    }
}

/* With alignment 1, F32 data lands at offsets that are not multiples of 4:
 * those tensors are copied, and the weights are the same. */
static void test_misaligned_f32(void **state)
{
    (void)state;
    pd_err err;
    pd_model *ref, *m;
    const char *path = tmp_path("tiny_ref.gguf");
    tiny_opts o = {0};
    write_tiny(path, &o);
    if (load_model(path, NULL, &ref, &err) < 0) fail_msg("%s", err.msg);
    assert_null(ref->owned);
    int copied = 0;
    static const char *const names[4] = {"t", "ti", "tin", "tiny"};
    for (int k = 0; k < 4; k++) {
        tiny_opts oa = {0};
        oa.alignment = 1;
        oa.name = names[k];
        const char *p = tmp_path("tiny_a1.gguf");
        write_tiny(p, &oa);
        if (load_model(p, NULL, &m, &err) < 0) fail_msg("%s", err.msg);
        if (m->owned) {
            copied++;
            assert_int_equal((uintptr_t)m->w.token_embedding.data % 4, 0);
        }
        compare_models(ref, m, -1);
        assert_true(ref->fingerprint == m->fingerprint);
        pd_model_free(m);
    }
    assert_int_equal(copied, 3);
    pd_model_free(ref);
}

/* ---- the commands (when the binary is built next to this test) ---- */

static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void **state)
{
    (void)state;
    char bin[512], cmd[2048];
    /* BUILD/tests/test_gguf -> BUILD/prefixd */
    snprintf(bin, sizeof bin, "%s", argv0);
    char *slash = strrchr(bin, '/');
    if (slash) *slash = 0;
    slash = strrchr(bin, '/');
    if (slash) *slash = 0;
    else snprintf(bin, sizeof bin, ".");
    strncat(bin, "/prefixd", sizeof bin - strlen(bin) - 1);
    if (access(bin, X_OK) != 0) {
        print_message("skipping: %s not built\n", bin);
        skip();
    }
    const char *out = tmp_path("cli.gguf"), *log = tmp_path("cli.log");
    snprintf(cmd, sizeof cmd, "%s convert --model %s --tokenizer %s --out %s --dtype bf16 2>%s",
             bin, STORIES_BIN, STORIES_TOK, out, log);
    assert_int_equal(run(cmd), 0);
    pd_model *m, *ref;
    pd_err err;
    if (load_model(out, NULL, &m, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(m->dtype, PD_DTYPE_BF16);
    if (load_model(STORIES_BIN, STORIES_TOK, &ref, &err) < 0) fail_msg("%s", err.msg);
    compare_models(ref, m, 7);
    pd_model_free(ref);

    const char *txt = tmp_path("inspect.txt");
    snprintf(cmd, sizeof cmd, "%s inspect %s >%s 2>%s", bin, out, txt, log);
    assert_int_equal(run(cmd), 0);
    size_t n;
    char *s = read_all(txt, &n);
    s[n] = 0;
    char want[64];
    snprintf(want, sizeof want, "fingerprint: %s\n", m->fingerprint_hex);
    assert_non_null(strstr(s, want));
    assert_non_null(strstr(s, "format: gguf"));
    assert_non_null(strstr(s, "dtype: BF16"));
    assert_non_null(strstr(s, "n_kv_heads: 4"));
    assert_non_null(strstr(s, "tied_classifier: yes"));
    assert_non_null(strstr(s, "blk.4.ffn_down.weight"));
    free(s);
    pd_model_free(m);

    /* errors: one line on stderr, non-zero exit */
    size_t size;
    void *buf = read_all(out, &size);
    const char *bad = tmp_path("cli_bad.gguf");
    write_file(bad, buf, size / 2);
    free(buf);
    snprintf(cmd, sizeof cmd, "%s inspect %s >%s 2>%s", bin, bad, txt, log);
    assert_int_not_equal(run(cmd), 0);
    s = read_all(log, &n);
    s[n] = 0;
    assert_true(strncmp(s, "prefixd: ", 9) == 0);
    assert_non_null(strstr(s, bad));
    assert_non_null(strchr(s, '\n'));
    assert_true(strchr(s, '\n') == s + n - 1); /* exactly one line */
    free(s);
    snprintf(cmd, sizeof cmd, "%s convert --model %s --out %s --dtype f8 2>%s", bin, bad, out, log);
    assert_int_not_equal(run(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s convert --model %s --out %s 2>%s", bin, bad, tmp_path("o.gguf"),
             log);
    assert_int_not_equal(run(cmd), 0);
    assert_int_not_equal(access(tmp_path("o.gguf"), F_OK), 0); /* nothing written */
}

/* ---- bad input ---- */

static void test_truncated_everywhere(void **state)
{
    (void)state;
    pd_err err;
    pd_gguf *g;
    tiny_opts o = {0};
    size_t size;
    unsigned char *buf = tiny_model(&o, &size);
    assert_int_equal(parse_exact(buf, size, "tiny", &g, &err), PD_OK);
    const char *path = tmp_path("trunc.gguf");
    for (size_t cut = 0; cut < size; cut++) {
        char label[64];
        snprintf(label, sizeof label, "cut at %zu of %zu", cut, size);
        int rc = parse_exact(buf, cut, "tiny-cut", &g, &err);
        check_failure(label, rc, 0, &err, "tiny-cut", NULL);
        /* and through the model loader, from a file */
        write_file(path, buf, cut);
        pd_model *m;
        rc = load_model(path, NULL, &m, &err);
        check_failure(label, rc, 0, &err, path, NULL);
    }
    free(buf);
    unlink(path);
}

typedef void (*build_fn)(rbuf *b);

static void bad_magic(rbuf *b)
{
    rb_bytes(b, "GGUX\3\0\0\0", 8);
    rb_u64(b, 0);
    rb_u64(b, 0);
}
static void bad_version1(rbuf *b) { rb_header(b, 1, 0, 0); }
static void bad_version4(rbuf *b) { rb_header(b, 4, 0, 0); }
static void bad_big_endian(rbuf *b) { rb_header(b, 0x03000000u, 0, 0); }
static void bad_kv_count(rbuf *b)
{
    rb_header(b, 3, 0, (uint64_t)1 << 60);
    rb_kv_u32(b, "a", 1);
}
static void bad_tensor_count(rbuf *b)
{
    rb_header(b, 3, (uint64_t)1 << 60, 0);
    rb_u64(b, 0);
}
static void bad_key_len(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_u64(b, (uint64_t)1 << 62);
    rb_bytes(b, "abcdefghijklmnop", 16);
}
static void bad_str_len(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "general.name");
    rb_u32(b, PD_GGUF_STRING);
    rb_u64(b, UINT64_MAX);
    rb_bytes(b, "xyz", 3);
}
static void bad_arr_len(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "tokenizer.ggml.scores");
    rb_u32(b, PD_GGUF_ARRAY);
    rb_u32(b, PD_GGUF_FLOAT32);
    rb_u64(b, (uint64_t)1 << 61);
    rb_u32(b, 0);
}
static void bad_str_arr_len(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "tokenizer.ggml.tokens");
    rb_u32(b, PD_GGUF_ARRAY);
    rb_u32(b, PD_GGUF_STRING);
    rb_u64(b, (uint64_t)1 << 59);
    rb_str(b, "a");
}
static void bad_str_in_arr(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "tokenizer.ggml.tokens");
    rb_u32(b, PD_GGUF_ARRAY);
    rb_u32(b, PD_GGUF_STRING);
    rb_u64(b, 2);
    rb_str(b, "a");
    rb_u64(b, 1000);
    rb_bytes(b, "bcdefgh", 7);
}
static void bad_value_type(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "k");
    rb_u32(b, 13);
    rb_u64(b, 0);
}
static void bad_elem_type(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "k");
    rb_u32(b, PD_GGUF_ARRAY);
    rb_u32(b, 77);
    rb_u64(b, 0);
}
static void bad_bool(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "k");
    rb_u32(b, PD_GGUF_BOOL);
    rb_u8(b, 2);
    rb_u64(b, 0);
}
static void bad_empty_key(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "");
    rb_u32(b, PD_GGUF_UINT32);
    rb_u32(b, 1);
    rb_u64(b, 0);
}
static void bad_dup_key(rbuf *b)
{
    rb_header(b, 3, 0, 2);
    rb_kv_u32(b, "k.x", 1);
    rb_kv_u32(b, "k.x", 2);
}
static void bad_alignment(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_kv_u32(b, "general.alignment", 24);
}
static void bad_alignment_type(rbuf *b)
{
    rb_header(b, 3, 0, 1);
    rb_str(b, "general.alignment");
    rb_u32(b, PD_GGUF_STRING);
    rb_str(b, "32");
}
static void one_tensor(rbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset, size_t data)
{
    rb_header(b, 3, 1, 0);
    rb_tensor(b, name, n_dims, ne, type, offset);
    rb_data(b, 32, data);
}
static const uint64_t ne44[4] = {4, 4, 1, 1};
static void bad_n_dims(rbuf *b) { one_tensor(b, "t", 5, (const uint64_t[5]){1, 1, 1, 1, 1}, 0, 0, 64); }
static void bad_dim0(rbuf *b) { one_tensor(b, "t", 2, (const uint64_t[2]){4, 0}, 0, 0, 64); }
static void bad_ne_overflow(rbuf *b)
{
    one_tensor(b, "t", 2, (const uint64_t[2]){(uint64_t)1 << 40, (uint64_t)1 << 40}, 0, 0, 64);
}
static void bad_huge_tensor(rbuf *b)
{
    one_tensor(b, "t", 2, (const uint64_t[2]){(uint64_t)1 << 30, (uint64_t)1 << 30}, 0, 0, 64);
}
static void bad_ggml_type(rbuf *b) { one_tensor(b, "t", 2, ne44, 99, 0, 64); }
static void bad_block(rbuf *b) { one_tensor(b, "t", 1, (const uint64_t[1]){16}, PD_GGML_Q4_0, 0, 64); }
static void bad_offset_eof(rbuf *b) { one_tensor(b, "token_embd.weight", 2, ne44, 0, 4096, 64); }
static void bad_size_eof(rbuf *b) { one_tensor(b, "t", 2, ne44, 0, 32, 64); }
static void bad_offset_align(rbuf *b) { one_tensor(b, "t", 1, (const uint64_t[1]){4}, 0, 4, 64); }
static void bad_name_len(rbuf *b)
{
    one_tensor(b, "a-tensor-name-that-is-much-longer-than-the-sixty-four-byte-limit-of-ggml", 2,
               ne44, 0, 0, 64);
}
static void two_tensors(rbuf *b, const char *n1, uint64_t o1, const char *n2, uint64_t o2)
{
    rb_header(b, 3, 2, 0);
    rb_tensor(b, n1, 2, ne44, 0, o1);
    rb_tensor(b, n2, 2, ne44, 0, o2);
    rb_data(b, 32, 160);
}
static void bad_overlap(rbuf *b) { two_tensors(b, "first", 0, "second", 32); }
static void bad_same_offset(rbuf *b) { two_tensors(b, "first", 64, "second", 64); }
static void bad_dup_tensor(rbuf *b) { two_tensors(b, "same", 0, "same", 64); }
static void bad_empty(rbuf *b) { (void)b; }
static void bad_short(rbuf *b) { rb_bytes(b, "GG", 2); }

static void test_bad_files(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        build_fn build;
        int code;
        const char *clue;
    } cases[] = {
        {"wrong magic", bad_magic, PD_EFORMAT, "magic"},
        {"version 1", bad_version1, PD_EVERSION, "version 1"},
        {"version 4", bad_version4, PD_EVERSION, "version 4"},
        {"big-endian", bad_big_endian, PD_EVERSION, "big-endian"},
        {"absurd kv count", bad_kv_count, PD_ETRUNC, "1152921504606846976 key/value pairs"},
        {"absurd tensor count", bad_tensor_count, PD_ETRUNC, "1152921504606846976 tensors"},
        {"absurd key length", bad_key_len, PD_ETRUNC, "key at byte 24 has length"},
        {"absurd string length", bad_str_len, PD_ETRUNC, "general.name"},
        {"absurd array length", bad_arr_len, PD_ETRUNC, "claims 2305843009213693952 elements"},
        {"absurd string array length", bad_str_arr_len, PD_ETRUNC, "tokenizer.ggml.tokens"},
        {"string in array past EOF", bad_str_in_arr, PD_ETRUNC, "array string"},
        {"unknown value type", bad_value_type, PD_EFORMAT, "unknown value type 13"},
        {"unknown element type", bad_elem_type, PD_EFORMAT, "unknown element type 77"},
        {"bool not 0/1", bad_bool, PD_EFORMAT, "not 0 or 1"},
        {"empty key", bad_empty_key, PD_EFORMAT, "empty key"},
        {"duplicate key", bad_dup_key, PD_EFORMAT, "duplicate key 'k.x'"},
        {"alignment 24", bad_alignment, PD_EFORMAT, "power of two"},
        {"alignment as string", bad_alignment_type, PD_EFORMAT,
         "general.alignment has type string, expected u32"},
        {"n_dims 5", bad_n_dims, PD_EFORMAT, "n_dims 5"},
        {"dimension 0", bad_dim0, PD_EFORMAT, "dimension 1 is 0"},
        {"element count overflow", bad_ne_overflow, PD_EFORMAT, "overflow"},
        {"tensor larger than file", bad_huge_tensor, PD_ETRUNC, "cannot fit"},
        {"unknown ggml type", bad_ggml_type, PD_EUNSUPPORTED, "unknown ggml type 99"},
        {"row not a block multiple", bad_block, PD_EFORMAT, "Q4_0 block"},
        {"tensor offset past EOF", bad_offset_eof, PD_ETRUNC, "token_embd.weight"},
        {"tensor end past EOF", bad_size_eof, PD_ETRUNC, "past the end"},
        {"misaligned offset", bad_offset_align, PD_EFORMAT, "alignment"},
        {"tensor name too long", bad_name_len, PD_EFORMAT, "longer than 64"},
        {"overlapping tensors", bad_overlap, PD_EFORMAT, "overlap"},
        {"tensors at one offset", bad_same_offset, PD_EFORMAT, "overlap"},
        {"duplicate tensor", bad_dup_tensor, PD_EFORMAT, "duplicate tensor name 'same'"},
        {"empty file", bad_empty, PD_ETRUNC, "too short"},
        {"2-byte file", bad_short, PD_ETRUNC, "too short"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rbuf b = {0};
        cases[i].build(&b);
        pd_err err;
        pd_gguf *g = NULL;
        int rc = parse_exact(b.p, b.n, "bad.gguf", &g, &err);
        check_failure(cases[i].label, rc, cases[i].code, &err, "bad.gguf", cases[i].clue);
        /* from a file too; and through the model loader when it dispatches to GGUF */
        const char *path = tmp_path("bad.gguf");
        write_file(path, b.p, b.n);
        rc = pd_gguf_open(path, &g, &err);
        check_failure(cases[i].label, rc, cases[i].code, &err, path, cases[i].clue);
        if (b.n >= 4 && !memcmp(b.p, "GGUF", 4)) {
            pd_model *m;
            rc = load_model(path, NULL, &m, &err);
            check_failure(cases[i].label, rc, cases[i].code, &err, path, cases[i].clue);
        }
        free(b.p);
    }
    pd_err err;
    pd_gguf *g;
    int rc = pd_gguf_open(tmp_path("does-not-exist.gguf"), &g, &err);
    check_failure("missing file", rc, PD_EIO, &err, "does-not-exist.gguf", "cannot open");
}

static void test_bad_models(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        tiny_opts o;
        int code;
        const char *clue;
    } cases[] = {
        {"block_count as string", {.block_count_string = 1}, PD_EFORMAT,
         "key llama.block_count has type string, expected an integer"},
        {"missing embedding_length", {.skip_key = "llama.embedding_length"}, PD_ENOTFOUND,
         "llama.embedding_length"},
        {"missing head_count", {.skip_key = "llama.attention.head_count"}, PD_ENOTFOUND,
         "llama.attention.head_count"},
        {"missing architecture", {.skip_key = "general.architecture"}, PD_EFORMAT,
         "general.architecture"},
        {"architecture gpt2", {.arch = "gpt2"}, PD_EUNSUPPORTED, "'gpt2'"},
        {"missing tokenizer", {.skip_key = "tokenizer.ggml.model"}, PD_ENOTFOUND,
         "no tokenizer"},
        {"missing tokens", {.skip_key = "tokenizer.ggml.tokens"}, PD_ENOTFOUND,
         "tokenizer.ggml.tokens"},
        {"tokenizer bert", {.tok_model = "bert"}, PD_EUNSUPPORTED, "'bert'"},
        {"tokenizer gpt2 without merges", {.tok_model = "gpt2"}, PD_ENOTFOUND,
         "tokenizer.ggml.merges is missing"},
        {"scores as i32", {.scores_i32 = 1}, PD_EFORMAT,
         "tokenizer.ggml.scores has type array of i32, expected array of f32"},
        {"scores too short", {.scores_short = 1}, PD_EFORMAT, "tokenizer.ggml.scores has 7"},
        {"bos out of range", {.bos = 8}, PD_ERANGE, "bos_token_id"},
        {"vocab_size mismatch", {.vocab_key = 9}, PD_EFORMAT, "llama.vocab_size is 9"},
        {"rope dims", {.rope_dims = 2}, PD_EUNSUPPORTED, "rope.dimension_count = 2"},
        {"heads do not divide dim", {.head_count = 3}, PD_EFORMAT, "n_heads"},
        {"missing tensor", {.skip_tensor = "blk.1.ffn_up.weight"}, PD_ENOTFOUND,
         "tensor blk.1.ffn_up.weight is missing"},
        {"missing embedding", {.skip_tensor = "token_embd.weight"}, PD_ENOTFOUND,
         "token_embd.weight"},
        {"missing final norm", {.skip_tensor = "output_norm.weight"}, PD_ENOTFOUND,
         "output_norm.weight"},
        {"shape mismatch wk", {.bad_shape = "blk.0.attn_k.weight"}, PD_EFORMAT,
         "blk.0.attn_k.weight has shape [8, 5]"},
        {"shape mismatch norm", {.bad_shape = "blk.1.ffn_norm.weight"}, PD_EFORMAT,
         "blk.1.ffn_norm.weight has shape [9]"},
        {"shape mismatch output", {.untied = 1, .bad_shape = "output.weight"}, PD_EFORMAT,
         "output.weight has shape [8, 9]"},
        {"quantised-family type", {.matrix_type = PD_GGML_I32}, PD_EUNSUPPORTED,
         "has type I32"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = tmp_path("badmodel.gguf");
        write_tiny(path, &cases[i].o);
        pd_model *m = NULL;
        pd_err err;
        int rc = load_model(path, NULL, &m, &err);
        check_failure(cases[i].label, rc, cases[i].code, &err, path, cases[i].clue);
        assert_null(m);
        unlink(path);
    }
}

static uint64_t xorshift(uint64_t x)
{
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

/* Deterministic byte mutations of the head of a valid model: whatever
 * happens, no crash, and a failure names the file. */
static void test_mutations(void **state)
{
    (void)state;
    tiny_opts o = {0};
    size_t size;
    unsigned char *orig = tiny_model(&o, &size);
    pd_gguf *g;
    pd_err err;
    assert_int_equal(pd_gguf_parse(orig, size, "m", &g, &err), PD_OK);
    size_t head = (size_t)g->data_offset;
    pd_gguf_free(g);
    unsigned char *buf = malloc(size);
    assert_non_null(buf);
    const char *path = tmp_path("mut.gguf");
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int accepted = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, orig, size);
        int flips = 1 + (int)(rng % 3);
        for (int f = 0; f < flips; f++) {
            rng = xorshift(rng);
            size_t at = (size_t)(rng % head);
            rng = xorshift(rng);
            static const unsigned char vals[] = {0x00, 0xff, 0x80, 0x7f, 0x01, 0x40};
            buf[at] = (rng & 1) ? vals[(rng >> 1) % 6] : (unsigned char)(buf[at] ^ (1u << ((rng >> 1) % 8)));
        }
        int rc = parse_exact(buf, size, "mutant", &g, &err);
        if (rc < 0) {
            check_failure("mutant", rc, 0, &err, "mutant", NULL);
            continue;
        }
        write_file(path, buf, size);
        pd_model *m;
        rc = load_model(path, NULL, &m, &err);
        if (rc < 0) check_failure("mutant model", rc, 0, &err, path, NULL);
        else {
            pd_model_free(m);
            accepted++;
        }
    }
    /* some flips hit only values (weights' names aside), so some load */
    assert_true(accepted > 0);
    free(buf);
    free(orig);
    unlink(path);
}

/* ---- setup ---- */

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    return rmdir(tmpdir);
}

int main(int argc, char **argv)
{
    (void)argc;
    argv0 = argv[0];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_tables),
        cmocka_unit_test(test_kv_roundtrip),
        cmocka_unit_test(test_handmade_nested_and_v2),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_convert_stories),
        cmocka_unit_test(test_tiny_untied_and_types),
        cmocka_unit_test(test_misaligned_f32),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_bad_models),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests_name("gguf", tests, setup, teardown);
}
