/* prefixd/gguf.h — the GGUF container (version 3, also 2): a validating
 * reader over a read-only mapping, and a writer.
 *
 * File layout (little-endian throughout):
 *
 *     "GGUF"  u32 version  u64 n_tensors  u64 n_kv
 *     n_kv key/value pairs:   string key, u32 value type, value
 *     n_tensors tensor infos: string name, u32 n_dims, u64 ne[n_dims],
 *                             u32 ggml type, u64 offset (from the start of
 *                             the data section, a multiple of the alignment)
 *     zero padding up to the alignment (`general.alignment`, u32, default 32)
 *     the data section: tensor bytes
 *
 * A string is a u64 byte length and the bytes (UTF-8, no NUL). An array is a
 * u32 element type, a u64 count and the elements; arrays may nest.
 *
 * Reading:
 *
 *     pd_gguf *g; pd_err err;
 *     if (pd_gguf_open("model.gguf", &g, &err) < 0)
 *         ... err.msg names the file, the byte offset, key or tensor ...
 *     uint32_t n_layers;
 *     if (pd_gguf_get_u32(g, "llama.block_count", &n_layers, &err) < 0) ...
 *     const pd_gguf_tensor *t = pd_gguf_find_tensor(g, "token_embd.weight");
 *     ... t->data, t->ne[0], t->ne[1], t->type ...
 *     pd_gguf_free(g);
 *
 * Parsing checks the whole file up front, so everything a pd_gguf hands out
 * is in bounds: every count, length and offset is compared with the bytes
 * left before it is used (a count is refused when count × the smallest
 * possible entry does not fit, before anything is allocated); value types,
 * bools (0 or 1), n_dims (1..4), dimensions (>= 1), ggml types and block
 * multiples are checked; tensor byte sizes are computed with overflow checks
 * and must lie inside the data section, aligned, without overlapping; keys
 * and tensor names must be unique and free of NUL bytes. Errors are negative
 * PD_E… statuses: PD_ETRUNC (a read would run past the end: a truncated
 * file, or an absurd count or length), PD_EFORMAT (malformed), PD_EVERSION
 * (not v2/v3), PD_EUNSUPPORTED (unknown ggml type), PD_ENOMEM.
 *
 * A pd_gguf is immutable once parsed and may be read by any number of
 * threads. Strings and tensor data point into the file bytes (not
 * NUL-terminated): they live as long as the pd_gguf, or for pd_gguf_parse as
 * long as the caller's buffer.
 *
 * Writing:
 *
 *     pd_gguf_writer *w;
 *     pd_gguf_writer_create(&w, &err);
 *     pd_gguf_add_str(w, "general.architecture", "llama", &err);
 *     pd_gguf_add_u32(w, "llama.block_count", 5, &err);
 *     int64_t ne[2] = {64, 512};                 // ne[0]: row length
 *     pd_gguf_add_tensor(w, "token_embd.weight", 2, ne, PD_GGML_F32, emb, &err);
 *     pd_gguf_writer_write(w, "out.gguf", &err); // atomic: temp, fsync, rename
 *     pd_gguf_writer_free(w);
 *
 * The writer copies keys and values but borrows tensor data (no copy, so
 * large models are written straight from their buffers): the data must stay
 * valid until pd_gguf_writer_write returns. Tensors are laid out in the order
 * added, each padded to the alignment; nothing follows the last one. A writer
 * belongs to one thread at a time.
 */
#ifndef PREFIXD_GGUF_H
#define PREFIXD_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PD_GGUF_DEFAULT_ALIGNMENT 32
#define PD_GGUF_MAX_ALIGNMENT (1u << 20) /* larger general.alignment is refused */
#define PD_GGUF_MAX_DIMS 4
#define PD_GGUF_MAX_NAME 64      /* tensor name bytes (GGML_MAX_NAME) */
#define PD_GGUF_MAX_KEY 65535    /* key bytes */
#define PD_GGUF_MAX_DEPTH 8      /* array nesting */

/* Metadata value types, as stored. */
typedef enum pd_gguf_type {
    PD_GGUF_UINT8 = 0,
    PD_GGUF_INT8 = 1,
    PD_GGUF_UINT16 = 2,
    PD_GGUF_INT16 = 3,
    PD_GGUF_UINT32 = 4,
    PD_GGUF_INT32 = 5,
    PD_GGUF_FLOAT32 = 6,
    PD_GGUF_BOOL = 7,
    PD_GGUF_STRING = 8,
    PD_GGUF_ARRAY = 9,
    PD_GGUF_UINT64 = 10,
    PD_GGUF_INT64 = 11,
    PD_GGUF_FLOAT64 = 12,
    PD_GGUF_N_TYPES = 13
} pd_gguf_type;

/* Short type name ("u8", "i32", "f32", "bool", "string", "array", ...), or
 * "?" when unknown. Static. */
const char *pd_gguf_type_name(int type);

/* Bytes of one value of a fixed-size type; 0 for STRING, ARRAY and unknown. */
size_t pd_gguf_type_size(int type);

/* The ggml tensor types prefixd names (the numbering is ggml's). Only F32,
 * F16 and BF16 can be loaded into a model; the others are recognised so
 * their sizes are checked and `prefixd inspect` can list them. */
typedef enum pd_ggml_type {
    PD_GGML_F32 = 0,
    PD_GGML_F16 = 1,
    PD_GGML_Q4_0 = 2,
    PD_GGML_Q4_1 = 3,
    PD_GGML_Q5_0 = 6,
    PD_GGML_Q5_1 = 7,
    PD_GGML_Q8_0 = 8,
    PD_GGML_Q8_1 = 9,
    PD_GGML_Q2_K = 10,
    PD_GGML_Q3_K = 11,
    PD_GGML_Q4_K = 12,
    PD_GGML_Q5_K = 13,
    PD_GGML_Q6_K = 14,
    PD_GGML_Q8_K = 15,
    PD_GGML_IQ2_XXS = 16,
    PD_GGML_IQ2_XS = 17,
    PD_GGML_IQ3_XXS = 18,
    PD_GGML_IQ1_S = 19,
    PD_GGML_IQ4_NL = 20,
    PD_GGML_IQ3_S = 21,
    PD_GGML_IQ2_S = 22,
    PD_GGML_IQ4_XS = 23,
    PD_GGML_I8 = 24,
    PD_GGML_I16 = 25,
    PD_GGML_I32 = 26,
    PD_GGML_I64 = 27,
    PD_GGML_F64 = 28,
    PD_GGML_IQ1_M = 29,
    PD_GGML_BF16 = 30,
    PD_GGML_TQ1_0 = 34,
    PD_GGML_TQ2_0 = 35,
    PD_GGML_MXFP4 = 39
} pd_ggml_type;

/* Name of a ggml type ("F32", "Q4_K", ...), or NULL when unknown. Static. */
const char *pd_ggml_type_name(int type);

/* Block geometry of a ggml type: elements per block and bytes per block.
 * Returns PD_OK, or PD_EUNSUPPORTED for an unknown type. */
int pd_ggml_type_block(int type, uint32_t *block_elems, uint32_t *block_bytes);

/* A string inside the file: borrowed, not NUL-terminated. */
typedef struct pd_gguf_str {
    const char *ptr;
    uint64_t len;
} pd_gguf_str;

/* One metadata pair. Scalars are decoded into v; arrays are described by
 * arr_*. */
typedef struct pd_gguf_kv {
    pd_gguf_str key;
    int type;           /* pd_gguf_type */
    uint64_t offset;    /* file offset of the pair (of its key length) */
    union {
        uint64_t u;     /* UINT8, UINT16, UINT32, UINT64, BOOL (0 or 1) */
        int64_t i;      /* INT8, INT16, INT32, INT64 */
        double f;       /* FLOAT32 (exactly widened), FLOAT64 */
        pd_gguf_str s;  /* STRING */
    } v;
    int arr_type;            /* ARRAY: element type */
    uint64_t arr_n;          /* ARRAY: element count */
    const void *arr_data;    /* ARRAY: first element in the file (little-endian,
                                possibly unaligned; for nested arrays the raw
                                encoded elements) */
    uint64_t arr_bytes;      /* ARRAY: encoded bytes of the elements */
    const pd_gguf_str *arr_strs; /* ARRAY of STRING: arr_n strings, else NULL
                                    (owned by the pd_gguf) */
} pd_gguf_kv;

/* One tensor. */
typedef struct pd_gguf_tensor {
    pd_gguf_str name;
    int n_dims;               /* 1..4 */
    int64_t ne[PD_GGUF_MAX_DIMS]; /* ne[0] innermost (row length); unused dims are 1 */
    int type;                 /* pd_ggml_type */
    uint64_t offset;          /* as stored: from the start of the data section */
    uint64_t file_offset;     /* from the start of the file */
    uint64_t info_offset;     /* file offset of the tensor info (for messages) */
    uint64_t n_elems;
    uint64_t nbytes;
    const void *data;         /* in the file bytes (borrowed) */
} pd_gguf_tensor;

/* A parsed file. Fields are read-only for callers. */
typedef struct pd_gguf {
    char *path;               /* name used in messages (owned) */
    const uint8_t *base;      /* the file bytes */
    size_t size;
    uint32_t version;         /* 2 or 3 */
    uint32_t alignment;
    uint64_t data_offset;     /* start of the data section */
    size_t n_kv;
    pd_gguf_kv *kv;           /* in file order (owned) */
    size_t n_tensors;
    pd_gguf_tensor *tensors;  /* in file order (owned) */
    /* private */
    size_t *kv_index;         /* kv indices sorted by key */
    size_t *tensor_index;     /* tensor indices sorted by name */
    void *map;                /* the mapping when opened by path */
    size_t map_size;
} pd_gguf;

/* Maps path read-only and parses it. Returns PD_OK and a new pd_gguf in *out
 * (free with pd_gguf_free, which unmaps), or a negative status with err
 * naming the file and where it went wrong. */
int pd_gguf_open(const char *path, pd_gguf **out, pd_err *err);

/* Parses size bytes at data (borrowed: must outlive the result and not
 * change). name is used in messages (copied). Same checks and results as
 * pd_gguf_open. */
int pd_gguf_parse(const void *data, size_t size, const char *name, pd_gguf **out,
                  pd_err *err);

/* Frees g (and its mapping when opened by path). NULL is a no-op. */
void pd_gguf_free(pd_gguf *g);

/* The pair named key (NUL-terminated), or NULL. Borrowed from g. */
const pd_gguf_kv *pd_gguf_find_kv(const pd_gguf *g, const char *key);

/* The tensor named name, or NULL. Borrowed from g. */
const pd_gguf_tensor *pd_gguf_find_tensor(const pd_gguf *g, const char *name);

/* Typed getters. Return PD_OK with the value; PD_ENOTFOUND ("<file>: key X
 * not found"); PD_EFORMAT ("<file>: key X has type Y, expected Z"). Use
 * pd_gguf_find_kv first for optional keys. */
int pd_gguf_get_u8(const pd_gguf *g, const char *key, uint8_t *out, pd_err *err);
int pd_gguf_get_i8(const pd_gguf *g, const char *key, int8_t *out, pd_err *err);
int pd_gguf_get_u16(const pd_gguf *g, const char *key, uint16_t *out, pd_err *err);
int pd_gguf_get_i16(const pd_gguf *g, const char *key, int16_t *out, pd_err *err);
int pd_gguf_get_u32(const pd_gguf *g, const char *key, uint32_t *out, pd_err *err);
int pd_gguf_get_i32(const pd_gguf *g, const char *key, int32_t *out, pd_err *err);
int pd_gguf_get_u64(const pd_gguf *g, const char *key, uint64_t *out, pd_err *err);
int pd_gguf_get_i64(const pd_gguf *g, const char *key, int64_t *out, pd_err *err);
int pd_gguf_get_f32(const pd_gguf *g, const char *key, float *out, pd_err *err);
int pd_gguf_get_f64(const pd_gguf *g, const char *key, double *out, pd_err *err);
int pd_gguf_get_bool(const pd_gguf *g, const char *key, int *out, pd_err *err);
/* The string is borrowed from the file (not NUL-terminated). */
int pd_gguf_get_str(const pd_gguf *g, const char *key, pd_gguf_str *out, pd_err *err);

/* Any integer type (u8..u64, i8..i64), which must lie in [lo, hi]
 * (PD_ERANGE otherwise, naming the key and the value). */
int pd_gguf_get_int(const pd_gguf *g, const char *key, int64_t lo, int64_t hi,
                    int64_t *out, pd_err *err);
/* FLOAT32 or FLOAT64. */
int pd_gguf_get_float(const pd_gguf *g, const char *key, double *out, pd_err *err);

/* An array whose elements have the fixed-size type elem_type: *data points
 * at *n little-endian, possibly unaligned elements in the file (borrowed).
 * A wrong element type gives "has type array of Y, expected array of Z". */
int pd_gguf_get_arr(const pd_gguf *g, const char *key, int elem_type, const void **data,
                    uint64_t *n, pd_err *err);
/* An array of strings: *strs points at *n validated {ptr, len} (borrowed). */
int pd_gguf_get_str_arr(const pd_gguf *g, const char *key, const pd_gguf_str **strs,
                        uint64_t *n, pd_err *err);

/* 1 when s holds exactly the NUL-terminated text z. */
int pd_gguf_str_eq(pd_gguf_str s, const char *z);

/* ---- writer ---- */

typedef struct pd_gguf_writer pd_gguf_writer;

/* Returns PD_OK and a new, empty writer (alignment 32), or PD_ENOMEM. */
int pd_gguf_writer_create(pd_gguf_writer **out, pd_err *err);
void pd_gguf_writer_free(pd_gguf_writer *w);

/* Copies a pair of a parsed file (kv borrowed; its bytes are copied): any
 * type, arrays (nested too) as encoded. A u32 general.alignment sets the
 * writer's alignment (pd_gguf_writer_set_alignment: before any tensor). Same
 * errors as the adders below. */
int pd_gguf_add_kv(pd_gguf_writer *w, const pd_gguf_kv *kv, pd_err *err);

/* Sets the alignment (a power of two up to 65536) and stores it as
 * general.alignment (u32). Call before adding tensors. PD_EINVAL otherwise. */
int pd_gguf_writer_set_alignment(pd_gguf_writer *w, uint32_t alignment, pd_err *err);

/* Metadata. Keys (NUL-terminated, 1..65535 bytes) must be unique: a repeated
 * key gives PD_EEXIST. Values are copied. Return PD_OK, PD_EINVAL,
 * PD_EEXIST or PD_ENOMEM. */

/* A scalar of any fixed-size type; value points at the matching C type
 * (uint8_t for BOOL, holding 0 or 1; float for FLOAT32; double for FLOAT64). */
int pd_gguf_add_scalar(pd_gguf_writer *w, const char *key, int type, const void *value,
                       pd_err *err);
int pd_gguf_add_u32(pd_gguf_writer *w, const char *key, uint32_t v, pd_err *err);
int pd_gguf_add_i32(pd_gguf_writer *w, const char *key, int32_t v, pd_err *err);
int pd_gguf_add_f32(pd_gguf_writer *w, const char *key, float v, pd_err *err);
int pd_gguf_add_bool(pd_gguf_writer *w, const char *key, int v, pd_err *err);
/* A NUL-terminated string. */
int pd_gguf_add_str(pd_gguf_writer *w, const char *key, const char *s, pd_err *err);
/* n elements of the fixed-size type elem_type, in host (little-endian) order. */
int pd_gguf_add_arr(pd_gguf_writer *w, const char *key, int elem_type, const void *elems,
                    uint64_t n, pd_err *err);
int pd_gguf_add_arr_f32(pd_gguf_writer *w, const char *key, const float *v, uint64_t n,
                        pd_err *err);
int pd_gguf_add_arr_i32(pd_gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                        pd_err *err);
/* n strings: strs[i] of lens[i] bytes (lens NULL: NUL-terminated strings). */
int pd_gguf_add_arr_str(pd_gguf_writer *w, const char *key, const char *const *strs,
                        const uint64_t *lens, uint64_t n, pd_err *err);

/* Adds a tensor of n_dims (1..4) dimensions ne (ne[0] innermost, each >= 1,
 * ne[0] a multiple of the type's block) of a known ggml type. data is
 * borrowed and must hold the tensor's bytes until the write returns. Names
 * (1..64 bytes) must be unique. */
int pd_gguf_add_tensor(pd_gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                       int type, const void *data, pd_err *err);

/* Total bytes the file will have. */
uint64_t pd_gguf_writer_size(const pd_gguf_writer *w);

/* Writes the file atomically (pd_write_file_atomic_parts). The writer is
 * unchanged and may be written again. Returns PD_OK, PD_EIO or PD_ENOMEM. */
int pd_gguf_writer_write(const pd_gguf_writer *w, const char *path, pd_err *err);

/* Serialises into a new malloc'd buffer (*data, *size; free() it). For tests
 * and small files. */
int pd_gguf_writer_to_mem(const pd_gguf_writer *w, void **data, size_t *size, pd_err *err);

/* ---- the llama model in GGUF (model_gguf.c) ---- */

/* Writes model m (borrowed) as a GGUF v3 llama file at path, atomically:
 * general.* and llama.* hyper-parameters, the tokenizer (pieces with ' '
 * written as U+2581, scores, token types, BOS/EOS), and the weights under
 * llama.cpp's tensor names. dtype (pd_dtype) applies to the 2-D matrices;
 * 1-D norm weights stay F32, as llama.cpp stores them. A tied classifier
 * writes no output.weight. name becomes general.name (NULL: m->id).
 * Returns PD_OK, PD_EINVAL (unknown dtype), PD_ENOMEM or PD_EIO. Memory: F32
 * is written straight from the model; F16/BF16 need one buffer of the
 * narrowed matrices. */
int pd_gguf_write_model(const pd_model *m, const char *path, int dtype, const char *name,
                        pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_GGUF_H */
