/* prefixd/quantize.h — writing a GGUF model in another weight type, as
 * llama.cpp's llama-quantize does (behind `prefixd quantize` and `prefixd
 * convert --dtype`).
 *
 *     pd_quantize_params qp = pd_quantize_default_params();
 *     qp.ftype = pd_ftype_from_name("Q4_K_M");
 *     if (pd_quantize_gguf("in.gguf", "out.gguf", &qp, NULL, &err) < 0) ...
 *
 * A file type (general.file_type, llama.cpp's llama_ftype numbering) names a
 * base weight type and, for the quantised ones, a per-tensor mix. Which
 * tensors are converted: 2-D (and higher) tensors whose name ends in
 * "weight", except norms (…_norm.weight); everything else (norms, biases,
 * 1-D tensors) is copied unchanged. Every metadata pair is copied, with
 * general.file_type and general.quantization_version (2) set. Tensors are
 * written in llama.cpp's order (non-block tensors, then block by block, by
 * name within each), each dequantised from its input type (F32, F16, BF16 or
 * any quantised type of quant.h) and quantised with the reference
 * quantisers, so the bytes equal llama-quantize's (without an imatrix).
 *
 * The mixes (pd_quantize_tensor_type; llama.cpp's llama_tensor_get_type for
 * dense, non-Falcon models; layer i of n, "more bits" layers are
 * i < n/8, i >= 7n/8 and every third one between, (i - n/8) % 3 == 2):
 *
 *   every quantised file type: output.weight (token_embd.weight when the
 *       classifier is tied) Q6_K, or Q8_0 when its rows are not a multiple
 *       of 256 (kept Q8_0 in a Q8_0 file);
 *   Q2_K   attn_v Q4_K when n_head/n_head_kv >= 4 else Q3_K; ffn_down Q3_K;
 *          attn_output Q3_K; others Q2_K
 *   Q3_K_S all Q3_K
 *   Q3_K_M attn_v Q5_K in layers 0-1, then Q4_K; ffn_down Q5_K for i < n/16,
 *          then Q4_K; attn_output Q4_K; others Q3_K
 *   Q3_K_L attn_v, ffn_down, attn_output Q5_K; others Q3_K
 *   Q4_K_S attn_v Q5_K in layers 0-3; ffn_down Q5_K for i < n/8; others Q4_K
 *   Q4_K_M attn_v and ffn_down Q6_K in the more-bits layers; others Q4_K
 *   Q5_K_S all Q5_K
 *   Q5_K_M attn_v and ffn_down Q6_K in the more-bits layers; others Q5_K
 *   Q6_K   all Q6_K
 *   Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: all that type (output as above)
 *   F32, F16, BF16: all that type, output included (no mix)
 *   (80-layer models with grouped-query attention, llama.cpp's "70B": an
 *   attn_v chosen Q3_K or Q4_K becomes Q5_K; fused attn_qkv: Q4_K in
 *   Q3_K_M/L, Q5_K in Q4_K_M, Q6_K in Q5_K_M.)
 *
 * Rows not a multiple of the chosen type's block fall back as llama.cpp
 * does: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and Q2_K, Q3_K → Q4_0 (where
 * llama.cpp uses IQ4_NL, a type prefixd does not implement: same 4.5 bits
 * per weight); then F16 when the row is not a multiple of 32 either (for the
 * 32-block types too, where llama-quantize gives up). With `pure` every
 * converted tensor gets the base type (still with the fallbacks). */
#ifndef PREFIXD_QUANTIZE_H
#define PREFIXD_QUANTIZE_H

#include <stdint.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* general.file_type values (llama.cpp's llama_ftype). */
typedef enum pd_ftype {
    PD_FTYPE_F32 = 0,
    PD_FTYPE_F16 = 1,
    PD_FTYPE_Q4_0 = 2,
    PD_FTYPE_Q4_1 = 3,
    PD_FTYPE_Q8_0 = 7,
    PD_FTYPE_Q5_0 = 8,
    PD_FTYPE_Q5_1 = 9,
    PD_FTYPE_Q2_K = 10,
    PD_FTYPE_Q3_K_S = 11,
    PD_FTYPE_Q3_K_M = 12,
    PD_FTYPE_Q3_K_L = 13,
    PD_FTYPE_Q4_K_S = 14,
    PD_FTYPE_Q4_K_M = 15,
    PD_FTYPE_Q5_K_S = 16,
    PD_FTYPE_Q5_K_M = 17,
    PD_FTYPE_Q6_K = 18,
    PD_FTYPE_BF16 = 32
} pd_ftype;

/* The file type named name, case-insensitive ("Q4_K_M", "q8_0", "f16"; as
 * in llama-quantize "Q3_K", "Q4_K", "Q5_K" mean the _M mixes), or -1. */
int pd_ftype_from_name(const char *name);
/* "Q4_K_M", …, or NULL for an unknown value. Static. */
const char *pd_ftype_name(int ftype);
/* The base weight type (pd_qtype) of a file type, or -1. */
int pd_ftype_base_type(int ftype);

/* What the mix needs to know about the model. */
typedef struct pd_quantize_model_info {
    int n_layers;   /* blocks (block_count) */
    int n_heads;    /* attention.head_count */
    int n_kv_heads; /* attention.head_count_kv */
    int has_output; /* output.weight present (untied classifier) */
} pd_quantize_model_info;

/* The type a tensor gets in a file of type ftype (see the mixes above):
 * name, its row length ne0 and n_dims, its input type. Returns the input
 * type for tensors that are copied unchanged. */
int pd_quantize_tensor_type(int ftype, int pure, const pd_quantize_model_info *mi,
                            const char *name, int64_t ne0, int n_dims, int in_type);

typedef struct pd_quantize_params {
    int ftype;        /* pd_ftype (required) */
    int pure;         /* 1: no mix, every converted tensor the base type */
    const char *name; /* general.name to set, or NULL to keep the input's */
    int n_threads;    /* threads converting rows; <= 0: online CPUs (the bytes are the same) */
} pd_quantize_params;

pd_quantize_params pd_quantize_default_params(void);

/* Totals of one run (for the command's summary line). */
typedef struct pd_quantize_stats {
    int n_tensors;
    int n_converted;   /* tensors whose type changed */
    int n_fallback;    /* tensors that fell back (rows not a multiple of the block) */
    uint64_t in_bytes; /* tensor bytes read */
    uint64_t out_bytes;
} pd_quantize_stats;

/* Reads the GGUF file in_path and writes out_path (atomically: temp file,
 * fsync, rename) with the weights converted as params->ftype says. stats may
 * be NULL. Returns PD_OK, or a negative status with err naming the file and
 * the tensor: PD_EINVAL (unknown ftype), PD_EUNSUPPORTED (a tensor to convert
 * has a type prefixd cannot read, e.g. IQ4_XS), the reader's errors for a
 * malformed input, PD_ENOMEM, PD_ESYS (threads), PD_EIO. Memory: the input
 * is mapped; one buffer holds the converted tensors. Rows are converted on
 * params->n_threads threads; the result does not depend on their number. */
int pd_quantize_gguf(const char *in_path, const char *out_path, const pd_quantize_params *params,
                     pd_quantize_stats *stats, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_QUANTIZE_H */
