/* arch.h — per-architecture rules for GGUF models (src/arch.c): which
 * general.architecture values run, their hyper-parameter keys, the keys
 * that are refused because they change the math in a way prefixd does not
 * implement, and the extra per-layer vectors each architecture carries.
 * Internal to libprefixd (model_gguf.c is the caller). */
#ifndef PREFIXD_ARCH_H
#define PREFIXD_ARCH_H

#include <stddef.h>

#include "prefixd/common.h"
#include "prefixd/gguf.h"
#include "prefixd/model.h"

/* The key prefix of an architecture: "llama", "qwen2", "qwen3". */
const char *pd__arch_prefix(int arch);

/* Reads general.architecture and every "<arch>." hyper-parameter into c
 * (all but vocab_size). Refuses, naming the key and its value: an unknown
 * architecture; a key under "<arch>." that prefixd does not know (it might
 * change the math); rope.scaling.type other than none/linear/llama3;
 * rope.dimension_count != head size (partial rotary); key_length !=
 * value_length; mixture of experts; attention factors != 1. A sliding
 * window caps seq_len (ctx_train keeps the file's context). Returns PD_OK or
 * a negative status with err set. */
int pd__arch_read_config(const pd_gguf *g, const char *path, pd_config *c, pd_err *err);

/* One per-layer F32 vector the architecture reads: blk.N.<name>, n floats,
 * bound to the field at byte offset `field` of pd_layer_weights. */
typedef struct pd__arch_vec {
    const char *name; /* e.g. "attn_q.bias" */
    int n;            /* floats */
    int required;     /* 0: optional (absent leaves the field NULL) */
    size_t field;     /* offsetof(pd_layer_weights, ...) */
} pd__arch_vec;

#define PD__ARCH_MAX_VECS 5

/* Fills v with the architecture's per-layer vectors; returns how many. */
int pd__arch_layer_vecs(const pd_config *c, pd__arch_vec v[PD__ARCH_MAX_VECS]);

/* 1 when the architecture may carry rope_freqs.weight (Llama 3 scaling). */
int pd__arch_has_rope_freqs(int arch);

/* 1 when the architecture stores q/k/v as one matrix blk.N.attn_qkv.weight
 * (rows: q_dim, kv_dim, kv_dim) and gate/up as one blk.N.ffn_up.weight
 * (rows: hidden_dim of gate, then hidden_dim of up) (phi3). */
int pd__arch_fused(int arch);

#endif
