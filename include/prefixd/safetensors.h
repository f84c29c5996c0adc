/* prefixd/safetensors.h — a reader and a writer for the safetensors format.
 *
 * File layout (little-endian throughout):
 *
 *     u64 N                 length of the header in bytes
 *     N bytes of UTF-8 JSON {"__metadata__": {"key": "value", ...},
 *                            "<tensor name>": {"dtype": "F32",
 *                                              "shape": [2, 3],
 *                                              "data_offsets": [begin, end]},
 *                            ...}
 *     the byte buffer       tensor bytes; offsets are relative to its start
 *
 * Reading:
 *
 *     pd_st *st; pd_err err;
 *     if (pd_st_open("tasks/poem.safetensors", &st, &err) < 0)
 *         ... err.msg names the file and what is wrong ...
 *     const pd_st_tensor *k = pd_st_find(st, "keys");    // NULL if absent
 *     const char *fmt = pd_st_meta_get(st, "format");     // NULL if absent
 *     float *buf = malloc(k->numel * sizeof *buf);
 *     pd_st_tensor_to_f32(k, buf, k->numel, &err);
 *     pd_st_free(st);
 *
 * A pd_st is immutable once parsed and may be read from any number of
 * threads at once. Every size and offset in the header is checked against
 * the bytes present before anything is returned: the reader refuses truncated
 * files, absurd header lengths (over PD_ST_MAX_HEADER bytes), invalid JSON
 * (with jansson's line, column and text), duplicate keys, wrong JSON types,
 * unknown dtypes, negative or non-integer dims, element-count overflow,
 * offsets outside the buffer, a byte size that does not match shape × dtype,
 * and overlapping tensors. Gaps between tensors and trailing bytes are
 * allowed. Tensor names may hold any characters JSON can carry.
 *
 * Writing:
 *
 *     pd_st_writer *w = pd_st_writer_new();
 *     pd_st_writer_set_meta(w, "format", "prefixd.prefix/1", &err);
 *     pd_st_writer_add_f32(w, "keys", PD_ST_F16, 4, shape, keys_f32, &err);
 *     pd_st_writer_write(w, "tasks/poem.safetensors", &err);  // atomic
 *     pd_st_writer_free(w);
 *
 * The header is written with sorted keys and no whitespace (the same input
 * gives the same bytes), padded with spaces to a multiple of 8 bytes; the
 * tensors' bytes follow contiguously in the order they were added, with no
 * gaps, as the reference implementation requires. A writer belongs to one
 * thread at a time.
 *
 * The host must be little-endian (checked at compile time in the source).
 */
#ifndef PREFIXD_SAFETENSORS_H
#define PREFIXD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest header accepted or written, in bytes (the reference limit). */
#define PD_ST_MAX_HEADER 100000000u
/* Largest number of dimensions of one tensor. */
#define PD_ST_MAX_DIMS 8

/* The element types of the format. Sub-byte types (F4, F6_*) are recognised
 * by name but refused with PD_EUNSUPPORTED. */
typedef enum pd_st_dtype {
    PD_ST_BOOL = 0,
    PD_ST_U8,
    PD_ST_I8,
    PD_ST_F8_E5M2,
    PD_ST_F8_E4M3,
    PD_ST_F8_E8M0,
    PD_ST_I16,
    PD_ST_U16,
    PD_ST_F16,
    PD_ST_BF16,
    PD_ST_I32,
    PD_ST_U32,
    PD_ST_F32,
    PD_ST_F64,
    PD_ST_I64,
    PD_ST_U64,
    PD_ST_C64,
    PD_ST_DTYPE_COUNT
} pd_st_dtype;

/* "F32", "BF16", … for a pd_st_dtype; "?" for anything else. Static. */
const char *pd_st_dtype_name(int dtype);
/* Bytes per element, or 0 for an invalid dtype. */
size_t pd_st_dtype_size(int dtype);
/* Parses a dtype name; returns the pd_st_dtype or -1 if unknown. */
int pd_st_dtype_parse(const char *name);

/* One tensor of a parsed file. Every pointer is borrowed from the pd_st and
 * valid until pd_st_free. */
typedef struct pd_st_tensor {
    const char *name;               /* NUL-terminated */
    int dtype;                      /* pd_st_dtype */
    int n_dims;                     /* 0 for a scalar */
    int64_t shape[PD_ST_MAX_DIMS];  /* outermost first (row-major) */
    uint64_t numel;                 /* product of shape (1 for a scalar) */
    const void *data;               /* nbytes bytes, little-endian, possibly
                                       unaligned: read with memcpy or
                                       pd_st_tensor_to_f32 */
    size_t nbytes;                  /* numel * pd_st_dtype_size(dtype) */
    uint64_t offset;                /* of data from the start of the file */
} pd_st_tensor;

/* One metadata entry; both strings borrowed from the pd_st. */
typedef struct pd_st_kv {
    const char *key;
    const char *value;
} pd_st_kv;

typedef struct pd_st pd_st;

/* Parses size bytes at data. The buffer is borrowed: it must stay valid and
 * unchanged until pd_st_free, since tensor data points into it.
 * name_for_errors (borrowed for this call only; NULL reads "safetensors")
 * starts every error message. Returns PD_OK with a new pd_st in *out, or a
 * negative status (PD_ETRUNC, PD_EFORMAT, PD_ERANGE, PD_EUNSUPPORTED,
 * PD_ENOMEM) with *out = NULL and err naming what is wrong and where. */
int pd_st_parse(const void *data, size_t size, const char *name_for_errors,
                pd_st **out, pd_err *err);

/* Maps path read-only and parses it; the pd_st owns the mapping. Errors as
 * pd_st_parse, plus PD_EIO when the file cannot be opened or mapped. */
int pd_st_open(const char *path, pd_st **out, pd_err *err);

/* Releases the pd_st (and its mapping, if pd_st_open made one). NULL is a
 * no-op. No pointer obtained from it may be used afterwards. */
void pd_st_free(pd_st *st);

/* Tensors in the order of their data in the file (by begin offset). */
int pd_st_n_tensors(const pd_st *st);
/* Borrowed; i must be in [0, pd_st_n_tensors). */
const pd_st_tensor *pd_st_tensor_at(const pd_st *st, int i);
/* Borrowed tensor named name, or NULL. O(log n). */
const pd_st_tensor *pd_st_find(const pd_st *st, const char *name);

/* Metadata entries sorted by key (bytewise). */
int pd_st_n_meta(const pd_st *st);
/* Borrowed; i must be in [0, pd_st_n_meta). */
const pd_st_kv *pd_st_meta_at(const pd_st *st, int i);
/* Borrowed value of key, or NULL when absent. O(log n). */
const char *pd_st_meta_get(const pd_st *st, const char *key);

/* Size of the whole file / of the header JSON, in bytes. */
size_t pd_st_file_size(const pd_st *st);
size_t pd_st_header_size(const pd_st *st);

/* Widens t's numel elements into dst, which holds exactly n floats.
 * F32 is copied, F16 and BF16 widened exactly. Returns PD_OK, PD_EINVAL if
 * n != t->numel, or PD_EUNSUPPORTED for any other dtype; err names the
 * tensor. */
int pd_st_tensor_to_f32(const pd_st_tensor *t, float *dst, size_t n,
                        pd_err *err);

/* ---- writer ---- */

typedef struct pd_st_writer pd_st_writer;

/* A new, empty writer, or NULL when out of memory. Free with
 * pd_st_writer_free. */
pd_st_writer *pd_st_writer_new(void);

/* Releases the writer and the buffers it owns. NULL is a no-op. */
void pd_st_writer_free(pd_st_writer *w);

/* Sets metadata key to value, replacing an earlier value. Both strings are
 * copied. Returns PD_OK, PD_EINVAL (not valid UTF-8) or PD_ENOMEM. */
int pd_st_writer_set_meta(pd_st_writer *w, const char *key, const char *value,
                          pd_err *err);

/* Adds a tensor whose data is already in dtype's layout: numel(shape) *
 * pd_st_dtype_size(dtype) bytes, little-endian. data is BORROWED: it must
 * stay valid and unchanged until pd_st_writer_write/_serialize has run (or
 * the writer is freed). name and shape are copied. Returns PD_OK, PD_EEXIST
 * (name already added), PD_EINVAL (reserved name "__metadata__", name not
 * UTF-8, bad dtype, n_dims outside [0, PD_ST_MAX_DIMS], negative dim),
 * PD_ERANGE (sizes overflow) or PD_ENOMEM. */
int pd_st_writer_add(pd_st_writer *w, const char *name, int dtype, int n_dims,
                     const int64_t *shape, const void *data, pd_err *err);

/* Adds a tensor from F32 values, stored as dtype (PD_ST_F32, PD_ST_F16 or
 * PD_ST_BF16, rounding to nearest even). src is read during this call only:
 * the writer keeps its own copy. Errors as pd_st_writer_add, and
 * PD_EUNSUPPORTED for any other dtype. */
int pd_st_writer_add_f32(pd_st_writer *w, const char *name, int dtype,
                         int n_dims, const int64_t *shape, const float *src,
                         pd_err *err);

/* Writes the file to path atomically (temp file, fsync, rename): a reader
 * sees the old file or the whole new one. Returns PD_OK, PD_EIO,
 * PD_ERANGE (header over PD_ST_MAX_HEADER) or PD_ENOMEM. */
int pd_st_writer_write(const pd_st_writer *w, const char *path, pd_err *err);

/* Serializes the file into a new malloc'd buffer: *out (free() it) of
 * *out_size bytes. Errors as pd_st_writer_write, without PD_EIO. */
int pd_st_writer_serialize(const pd_st_writer *w, void **out, size_t *out_size,
                           pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_SAFETENSORS_H */
