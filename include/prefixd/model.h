/* prefixd/model.h — the frozen base model: a Llama-family transformer loaded
 * from a llama2.c checkpoint (.bin + tokenizer.bin) or a GGUF v3 file
 * (general.architecture = llama, tensors F32/F16/BF16, tokenizer in metadata).
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
 * type (F32, F16, BF16: used in place, converted in registers by the
 * kernels); F16/BF16 norm vectors and misaligned F32 tensors are widened to
 * F32 once at load (owned buffer). Every size and offset in the file is
 * checked against the file size before use.
 *
 * Weight layout (both formats): every matrix is row-major [out][in], so
 * y = W·x is cblas_sgemm with W transposed. Rotary: adjacent pairs
 * (x[2i], x[2i+1]) rotated by pos · rope_base^(-2i/head_dim).
 *
 * The fingerprint is a 64-bit hash over the hyper-parameters and the F32
 * weight values in canonical order (embedding, per layer rms_att wq wk wv wo
 * rms_ffn w1 w2 w3, rms_final, classifier if untied): the same weights give
 * the same fingerprint whatever file format carried them.
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
    int head_dim;   /* dim / n_heads */
    int kv_dim;     /* n_kv_heads * head_dim */
    int vocab_size; /* V */
    int seq_len;    /* context length */
    float rope_base; /* rotary base, default 10000 */
    float norm_eps;  /* RMSNorm epsilon, default 1e-5 */
} pd_config;

/* The big matrices are typed views (pd_wmat, quant.h: rows = out, cols = in)
 * of the weights as the file stores them; multiply with pd_wmatmul
 * (matmul.h), read a row with pd_wmat_row_f32. The norms are always F32. */
typedef struct pd_layer_weights {
    const float *rms_att; /* (dim) */
    pd_wmat wq;           /* (dim, dim)         [out][in] */
    pd_wmat wk;           /* (kv_dim, dim) */
    pd_wmat wv;           /* (kv_dim, dim) */
    pd_wmat wo;           /* (dim, dim) */
    const float *rms_ffn; /* (dim) */
    pd_wmat w1;           /* (hidden_dim, dim)  gate */
    pd_wmat w2;           /* (dim, hidden_dim)  down */
    pd_wmat w3;           /* (hidden_dim, dim)  up */
} pd_layer_weights;

typedef struct pd_weights {
    pd_wmat token_embedding;  /* (vocab_size, dim) */
    pd_layer_weights *layers; /* n_layers entries (owned by the model) */
    const float *rms_final;   /* (dim) */
    pd_wmat wcls;             /* (vocab_size, dim); same data as token_embedding when tied */
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
    int dtype;        /* pd_dtype */
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
    int dtype;               /* dtype of the big matrices in the file */
    int tied_classifier;     /* 1 when wcls == token_embedding */
    pd_tensor_info *tensors; /* n_tensors entries (owned) */
    int n_tensors;
    uint64_t weight_bytes;   /* bytes of all weights read per token, as stored */
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
 * dim % n_heads == 0, n_heads % n_kv_heads == 0, even head_dim, bounded
 * sizes); err names the offending field. */
int pd_config_validate(const pd_config *c, const char *path, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_MODEL_H */
