/* prefixd/model.h — the frozen base model: a Llama-family transformer loaded
 * from a llama2.c checkpoint (.bin + tokenizer.bin) or a GGUF v3 file
 * (general.architecture = llama, qwen2, qwen3 or phi3 — see pd_arch and
 * src/arch.c —, matrices of any weight type of quant.h, tokenizer in metadata).
 *
 *     pd_model_params mp = pd_model_default_params();
 *     mp.path = "models/stories260K/stories260K.bin";
 *     mp.tokenizer_path = "models/stories260K/tok512.bin";
 *     pd_model *m; pd_err err;
 *     if (pd_model_load(&mp, &m, &err) < 0) { ... err.msg ... }
 *     ...
 *     pd_model_free(m);
 *
 * A pd_model is read-only after load and shared by every thread. The weight
 * matrices point straight into a read-only mmap of the file in their stored
 * type (F32, F16, BF16, Q8_0, Q4_0 … Q6_K: used in place, converted or
 * dequantised in registers by the kernels; other types are refused naming
 * the tensor); F16/BF16 norm vectors and misaligned F32 tensors are widened
 * to F32 once at load (owned buffer). Every size and offset in the file is
 * checked against the file size before use.
 *
 * Weight layout (both formats): every matrix is row-major [out][in], so
 * y = W·x is cblas_sgemm with W transposed. Rotary: adjacent pairs
 * (x[2i], x[2i+1]) rotated by pos · rope_base^(-2i/head_dim) (llama), or
 * NeoX halves (x[i], x[i + head_dim/2]) for qwen2/qwen3; scaled as
 * pd_rope_scaling says. wq is (q_dim, dim) and wo (dim, q_dim).
 *
 * The fingerprint is a 64-bit hash over the hyper-parameters and the F32
 * weight values in canonical order (embedding, per layer rms_att wq wk wv wo
 * rms_ffn w1 w2 w3, rms_final, classifier if untied; then, only when the
 * model has them, the variant's hyper-parameters and vectors), typed matrices
 * dequantised to F32 row by row: the same weight values give the same
 * fingerprint whatever file format or type carried them (a quantised model
 * and its F32 rewrite agree; it differs from its F32 original).
 */
#ifndef PREFIXD_MODEL_H
#define PREFIXD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/quant.h"
#include "prefixd/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_config {
    int dim;        /* embedding width (C) */
    int hidden_dim; /* SwiGLU inner width */
    int n_layers;   /* L */
    int n_heads;    /* query heads */
    int n_kv_heads; /* key/value heads (grouped-query attention) */
    int head_dim;   /* dim / n_heads, or the file's attention.key_length */
    int kv_dim;     /* n_kv_heads * head_dim */
    int vocab_size; /* V */
    int seq_len;    /* context length */
    float rope_base; /* rotary base, default 10000 */
    float norm_eps;  /* RMSNorm epsilon, default 1e-5 */
    /* architecture variants (src/arch.c reads them from GGUF) */
    int arch;              /* pd_arch */
    int q_dim;             /* n_heads * head_dim: query and attention-output width;
                              == dim unless the file states attention.key_length */
    int rope_type;         /* pd_rope_type */
    int rope_scaling;      /* pd_rope_scaling */
    float rope_freq_scale; /* angles × this: 1/rope.scaling.factor (linear), else 1 */
    int sliding_window;    /* the file's attention.sliding_window, 0 when none;
                              seq_len is capped to it, so no token is ever outside it */
    int ctx_train;         /* the file's context_length before that cap */
} pd_config;

/* Architectures (GGUF general.architecture); llama2.c checkpoints are llama. */
typedef enum pd_arch {
    PD_ARCH_LLAMA = 0, /* may carry q/k/v biases (llama.cpp reads them if present) */
    PD_ARCH_QWEN2 = 1, /* q/k/v biases, NeoX rotary */
    PD_ARCH_QWEN3 = 2, /* per-head RMSNorm on q and k before rotary, NeoX rotary */
    PD_ARCH_PHI3 = 3   /* Phi-3/Phi-4: q/k/v in one matrix, gate/up in one, NeoX rotary */
} pd_arch;

/* Which dimensions of a head rotate together. */
typedef enum pd_rope_type {
    PD_ROPE_NORM = 0, /* adjacent pairs (x[2i], x[2i+1]): llama (the converter permuted q/k) */
    PD_ROPE_NEOX = 1  /* halves (x[i], x[i + hd/2]): qwen2, qwen3 */
} pd_rope_type;

/* Rotary scaling; the angle of pair i at position p is
 * p · rope_freq_scale · base^(-2i/head_dim) / rope_freqs[i] (rope_freqs 1
 * when absent), as ggml_rope_ext computes it without YaRN. */
typedef enum pd_rope_scaling {
    PD_ROPE_SCALING_NONE = 0,
    PD_ROPE_SCALING_LINEAR = 1, /* rope.scaling.type = linear, factor != 1 */
    PD_ROPE_SCALING_LLAMA3 = 2  /* Llama 3.1+: per-pair factors in rope_freqs.weight */
} pd_rope_scaling;

/* "llama", "qwen2", "qwen3", "phi3" ("?" when unknown). */
const char *pd_arch_name(int arch);
/* "norm", "neox"; "none", "linear", "llama3". */
const char *pd_rope_type_name(int rope_type);
const char *pd_rope_scaling_name(int rope_scaling);

/* The big matrices are typed views (pd_wmat, quant.h: rows = out, cols = in)
 * of the weights as the file stores them; multiply with pd_wmatmul
 * (matmul.h), read a row with pd_wmat_row_f32. The norms are always F32. */
typedef struct pd_layer_weights {
    const float *rms_att; /* (dim) */
    pd_wmat wq;           /* (q_dim, dim)       [out][in] */
    pd_wmat wk;           /* (kv_dim, dim) */
    pd_wmat wv;           /* (kv_dim, dim) */
    pd_wmat wo;           /* (dim, q_dim) */
    const float *rms_ffn; /* (dim) */
    pd_wmat w1;           /* (hidden_dim, dim)  gate */
    pd_wmat w2;           /* (dim, hidden_dim)  down */
    pd_wmat w3;           /* (hidden_dim, dim)  up */
    /* F32 vectors of the variants, NULL when the architecture has none */
    const float *bq;      /* (q_dim) bias added to q (qwen2; llama when present) */
    const float *bk;      /* (kv_dim) */
    const float *bv;      /* (kv_dim) */
    const float *q_norm;  /* (head_dim) per-head RMSNorm of q before rotary (qwen3) */
    const float *k_norm;  /* (head_dim) the same for k */
} pd_layer_weights;

typedef struct pd_weights {
    pd_wmat token_embedding;  /* (vocab_size, dim) */
    pd_layer_weights *layers; /* n_layers entries (owned by the model) */
    const float *rms_final;   /* (dim) */
    pd_wmat wcls;             /* (vocab_size, dim); same data as token_embedding when tied */
    const float *rope_freqs;  /* (head_dim/2) Llama 3 rope factors, or NULL */
} pd_weights;

typedef enum pd_model_format {
    PD_FORMAT_LLAMA2C = 1,
    PD_FORMAT_GGUF = 2
} pd_model_format;

typedef enum pd_dtype {
    PD_DTYPE_F32 = 0,
    PD_DTYPE_F16 = 1,
    PD_DTYPE_BF16 = 2
} pd_dtype;

/* Returns "F32", "F16", "BF16" (or "?" when unknown). */
const char *pd_dtype_name(int dtype);

/* One tensor as the file stores it (for `prefixd inspect`). */
typedef struct pd_tensor_info {
    char name[96];
    int n_dims;
    int64_t shape[4]; /* GGUF order: shape[0] is the innermost (row) length */
    int dtype;        /* pd_dtype, or -1 for a quantised type */
    int type;         /* pd_qtype (ggml's id) as stored: any GGUF type */
    uint64_t offset;  /* byte offset in the file */
    uint64_t nbytes;
} pd_tensor_info;

typedef struct pd_model {
    pd_config cfg;
    pd_weights w;
    pd_tokenizer *tok;       /* owned */
    uint64_t fingerprint;
    char fingerprint_hex[17]; /* 16 lowercase hex digits + NUL */
    char id[128];            /* model id served as `model` (file base name) */
    int format;              /* pd_model_format */
    int dtype;               /* pd_dtype of the big matrices in the file, or -1 when
                                quantised (see weight_type) */
    int weight_type;         /* pd_qtype of the big matrices (blk.0.attn_q as stored) */
    int tied_classifier;     /* 1 when wcls == token_embedding */
    pd_tensor_info *tensors; /* n_tensors entries (owned) */
    int n_tensors;
    uint64_t weight_bytes;   /* bytes of all weights read per token, as stored */
    uint64_t resident_bytes; /* bytes of all weights held in memory (mapped or widened),
                                the embedding included */
    /* storage (private to the loaders) */
    void *map;               /* read-only mmap of the file */
    size_t map_size;
    float *owned;            /* widened weights (see above), or NULL */
} pd_model;

typedef struct pd_model_params {
    const char *path;           /* .bin (llama2.c) or .gguf */
    const char *tokenizer_path; /* llama2.c tokenizer.bin; NULL for GGUF, or to
                                   use "tokenizer.bin"/"tok<V>.bin" beside path */
} pd_model_params;

pd_model_params pd_model_default_params(void);

/* Loads the model named by params. The format is detected from the file's
 * magic ("GGUF"), otherwise llama2.c. Returns PD_OK and a new model in *out
 * (free with pd_model_free), or a negative status with err naming the file
 * and the problem (truncated, wrong magic/version, offsets past the end,
 * absurd counts, wrong metadata types, missing tokenizer). */
int pd_model_load(const pd_model_params *params, pd_model **out, pd_err *err);

/* Releases everything the model owns. NULL is a no-op. The model must no
 * longer be in use by any thread. */
void pd_model_free(pd_model *m);

/* Internal constructors used by pd_model_load (one per format), exposed for
 * tests. They fill a zeroed model; on failure the caller frees it. */
int pd__model_load_llama2c(pd_model *m, const char *path,
                           const char *tokenizer_path, pd_err *err);
int pd__model_load_gguf(pd_model *m, const char *path, pd_err *err);

/* Finishes a loaded model: checks the config, computes weight_bytes and the
 * fingerprint. Called by pd_model_load after a format loader succeeds. */
int pd__model_finish(pd_model *m, pd_err *err);

/* Checks a config for sane, mutually consistent values (positive sizes,
 * q_dim == n_heads * head_dim, n_heads % n_kv_heads == 0, even head_dim, bounded
 * sizes); err names the offending field. */
int pd_config_validate(const pd_config *c, const char *path, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_MODEL_H */
