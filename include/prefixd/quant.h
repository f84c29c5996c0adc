/* prefixd/quant.h — the weight types of GGUF files (ggml's block formats) and
 * typed weight matrices.
 *
 * A quantised row of n weights is n / block_size blocks laid end to end; each
 * block carries its own scale(s) and packed integer codes. The layouts below
 * are ggml's, byte for byte (all fields little-endian, structs packed with no
 * padding: the static asserts check the sizes), so a tensor is used in place
 * from the file's read-only mmap. The reference conversions (src/quant.c) are
 * the definition of what each block means; the matrix kernels (src/qmatmul*.c)
 * must agree with them.
 *
 *     const pd_wmat *W = &m->w.layers[l].wq;       // rows = out, cols = in
 *     pd_wmat_row_f32(W, r, row);                    // dequantise one row
 *
 * Type ids are ggml's `enum ggml_type` values, as GGUF stores them.
 */
#ifndef PREFIXD_QUANT_H
#define PREFIXD_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pd_qtype {
    PD_Q_F32 = 0,
    PD_Q_F16 = 1,
    PD_Q_Q4_0 = 2,
    PD_Q_Q4_1 = 3,
    PD_Q_Q5_0 = 6,
    PD_Q_Q5_1 = 7,
    PD_Q_Q8_0 = 8,
    PD_Q_Q8_1 = 9,
    PD_Q_Q2_K = 10,
    PD_Q_Q3_K = 11,
    PD_Q_Q4_K = 12,
    PD_Q_Q5_K = 13,
    PD_Q_Q6_K = 14,
    PD_Q_Q8_K = 15,
    PD_Q_BF16 = 30,
    PD_Q_COUNT = 31 /* one past the largest id (not a type) */
} pd_qtype;

#define PD_QK4_0 32
#define PD_QK4_1 32
#define PD_QK5_0 32
#define PD_QK5_1 32
#define PD_QK8_0 32
#define PD_QK8_1 32
#define PD_QK_K 256
#define PD_K_SCALE_SIZE 12

/* F16 bits (IEEE binary16), as ggml_half. */
typedef uint16_t pd_half;

/* w = d * (q - 8), q 4 bits: qs[j] low nibble is element j, high nibble j+16. */
typedef struct { pd_half d; uint8_t qs[PD_QK4_0 / 2]; } pd_block_q4_0;
/* w = d * q + m. */
typedef struct { pd_half d, m; uint8_t qs[PD_QK4_1 / 2]; } pd_block_q4_1;
/* w = d * (q - 16), q 5 bits: low 4 as Q4_0, 5th bit of element j in bit j of qh. */
typedef struct { pd_half d; uint8_t qh[4]; uint8_t qs[PD_QK5_0 / 2]; } pd_block_q5_0;
/* w = d * q + m. */
typedef struct { pd_half d, m; uint8_t qh[4]; uint8_t qs[PD_QK5_1 / 2]; } pd_block_q5_1;
/* w = d * q. */
typedef struct { pd_half d; int8_t qs[PD_QK8_0]; } pd_block_q8_0;
/* w = d * q; s = d * sum(q) (an activation format). */
typedef struct { pd_half d, s; int8_t qs[PD_QK8_1]; } pd_block_q8_1;
/* 16 sub-blocks of 16: scales[i] low nibble scale, high nibble min (4 bits);
 * w = d * sc * q - dmin * m, q 2 bits. */
typedef struct {
    uint8_t scales[PD_QK_K / 16];
    uint8_t qs[PD_QK_K / 4];
    pd_half d, dmin;
} pd_block_q2_K;
/* 16 sub-blocks of 16, 6-bit signed scales packed in 12 bytes; q 3 bits
 * (2 low in qs, the high bit in hmask); w = d * (sc - 32) * (q - 4·!hbit). */
typedef struct {
    uint8_t hmask[PD_QK_K / 8];
    uint8_t qs[PD_QK_K / 4];
    uint8_t scales[12];
    pd_half d;
} pd_block_q3_K;
/* 8 sub-blocks of 32, 6-bit scales and mins packed in 12 bytes;
 * w = d * sc * q - dmin * m, q 4 bits. */
typedef struct {
    pd_half d, dmin;
    uint8_t scales[PD_K_SCALE_SIZE];
    uint8_t qs[PD_QK_K / 2];
} pd_block_q4_K;
/* As Q4_K with a 5th bit per weight in qh. */
typedef struct {
    pd_half d, dmin;
    uint8_t scales[PD_K_SCALE_SIZE];
    uint8_t qh[PD_QK_K / 8];
    uint8_t qs[PD_QK_K / 2];
} pd_block_q5_K;
/* 16 sub-blocks of 16, int8 scales; q 6 bits (4 in ql, 2 in qh);
 * w = d * sc * (q - 32). */
typedef struct {
    uint8_t ql[PD_QK_K / 2];
    uint8_t qh[PD_QK_K / 4];
    int8_t scales[PD_QK_K / 16];
    pd_half d;
} pd_block_q6_K;
/* Activation format of the K-quant dot products: float scale, int8 codes, and
 * the sums of each group of 16 codes. */
typedef struct {
    float d;
    int8_t qs[PD_QK_K];
    int16_t bsums[PD_QK_K / 16];
} pd_block_q8_K;

_Static_assert(sizeof(pd_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(pd_block_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(pd_block_q5_0) == 22, "q5_0 block");
_Static_assert(sizeof(pd_block_q5_1) == 24, "q5_1 block");
_Static_assert(sizeof(pd_block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(pd_block_q8_1) == 36, "q8_1 block");
_Static_assert(sizeof(pd_block_q2_K) == 84, "q2_K block");
_Static_assert(sizeof(pd_block_q3_K) == 110, "q3_K block");
_Static_assert(sizeof(pd_block_q4_K) == 144, "q4_K block");
_Static_assert(sizeof(pd_block_q5_K) == 176, "q5_K block");
_Static_assert(sizeof(pd_block_q6_K) == 210, "q6_K block");
_Static_assert(sizeof(pd_block_q8_K) == 292, "q8_K block");

/* Static facts about a type: name ("Q4_K"), elements per block and bytes per
 * block; NULL / 0 for ids that are not a known type. Weight types are those a
 * model file may hold (all of the above except the activation formats Q8_1 and
 * Q8_K). */
const char *pd_qtype_name(int type);
int pd_qtype_block_size(int type);
size_t pd_qtype_block_bytes(int type);
int pd_qtype_is_weight_type(int type);
/* The type named `name` (case-insensitive: "q4_k", "F16"), or -1. */
int pd_qtype_from_name(const char *name);

/* Bits per weight of a type (e.g. 4.5 for Q4_0, 4.5 for Q4_K); 0 when unknown. */
double pd_qtype_bits_per_weight(int type);

/* Bytes of a row of n elements of type; 0 when n is not a multiple of the
 * block size (the caller reports that as an error). */
size_t pd_qtype_row_bytes(int type, int64_t n);

/* Reference conversions (src/quant.c), one row of n elements, n a multiple of
 * the block size (asserted). dequantize writes n floats; quantize reads n
 * floats and writes pd_qtype_row_bytes(type, n) bytes (for F32/F16/BF16 a plain
 * conversion). Both are deterministic and thread-safe. */
void pd_quant_dequantize_row(int type, const void *src, float *dst, int64_t n);
void pd_quant_quantize_row(int type, const float *src, void *dst, int64_t n);

/* A weight matrix as stored: rows (out) of cols (in) elements each, row r at
 * data + r * row_bytes, of one type. Borrowed view: data usually points into the
 * model's read-only mmap. */
typedef struct pd_wmat {
    const void *data;
    int type;         /* pd_qtype */
    int rows;         /* N: outputs */
    int cols;         /* K: inputs (a multiple of the type's block size) */
    size_t row_bytes; /* pd_qtype_row_bytes(type, cols) */
} pd_wmat;

/* A view of an F32 matrix (rows, cols) at data. */
pd_wmat pd_wmat_f32(const float *data, int rows, int cols);

/* Dequantises row r of W into out (W->cols floats). */
void pd_wmat_row_f32(const pd_wmat *W, int r, float *out);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_QUANT_H */
