/* synth_model.h — random-weight GGUF models of every architecture prefixd
 * runs, for tests (tests/unit/test_arch.c, `prefixd-synth`) and the bench
 * (tests/bench/bench_synth.c). Test code, not part of libprefixd.
 *
 * The file follows llama.cpp's conventions for general.architecture =
 * llama / qwen2 / qwen3 / phi3 (phi3: blk.N.attn_qkv and a gate|up
 * blk.N.ffn_up instead of the separate matrices, and always
 * attention.sliding_window): "<arch>.*" hyper-parameters, token_embd.weight,
 * blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
 * ffn_gate, ffn_down, ffn_up}.weight, qwen2 (and llama with biases)
 * blk.N.attn_{q,k,v}.bias, qwen3 blk.N.attn_{q,k}_norm.weight,
 * output_norm.weight, output.weight unless tied, and rope_freqs.weight for
 * Llama 3 scaling (computed as llama.cpp's converter does from factor,
 * low/high frequency factors and the original context). Matrices have
 * ne = {in, out}. The vocabulary is either synthetic (SentencePiece-style:
 * <unk> <s> </s>, 256 byte pieces, "tok<i>") or every tokenizer.* key of a
 * vocab-only GGUF copied verbatim. */
#ifndef PREFIXD_SYNTH_MODEL_H
#define PREFIXD_SYNTH_MODEL_H

#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/gguf.h"

typedef struct synth_spec {
    int arch;           /* pd_arch */
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads;
    int head_dim;       /* 0: dim / n_heads; else written as attention.key_length */
    int vocab_size;     /* synthetic vocabulary only (a copied one sets it) */
    int seq_len;
    float rope_base;    /* 0: 10000 */
    int rope_scaling;   /* pd_rope_scaling */
    float rope_factor;  /* linear: the factor; llama3: `factor` (8 in Llama 3.1) */
    int rope_orig_ctx;  /* llama3: original_max_position_embeddings (0: 8192) */
    int biases;         /* llama: also write q/k/v biases (qwen2 always has them) */
    int tied;           /* no output.weight */
    int sliding_window; /* > 0: written as attention.sliding_window */
    float scale;        /* matrices uniform in ±scale (0: 1/sqrt(dim)) */
    uint64_t seed;
    const char *name;   /* general.name (NULL: "prefixd synthetic") */
    /* deliberate defects, for the loader's refusal tests (0/NULL: none) */
    int rope_dims;             /* rope.dimension_count instead of the head size */
    int value_length;          /* attention.value_length instead of key_length */
    const char *rope_type_str; /* rope.scaling.type written as this string */
    const char *extra_key;     /* one more key (full name), FLOAT32 extra_value */
    float extra_value;
    const char *extra_tensor;  /* one more F32 vector of dim floats */
    const char *skip_tensor;   /* a tensor left out */
} synth_spec;

enum { SYNTH_MATRIX = 0, SYNTH_NORM = 1, SYNTH_BIAS = 2, SYNTH_ROPE_FREQS = 3 };

typedef struct synth_tensor {
    char name[64];
    int64_t ne0, ne1; /* ne1 0: a vector */
    int kind;         /* SYNTH_* */
} synth_tensor;

/* Tensors of the spec in file order into t; returns the count. With t
 * NULL only counts (an upper bound: skip_tensor is not subtracted). */
int synth_list_tensors(const synth_spec *s, synth_tensor *t);

/* The values of tensor i of the list (n = ne0 * max(ne1, 1) floats):
 * matrices uniform in ±scale, norms 1 + 0.2·u, biases 0.5·scale·u, rope
 * factors per llama.cpp's converter; deterministic in (seed, i). */
void synth_fill(const synth_spec *s, const synth_tensor *t, int i, float *out);

/* "<arch>.*" hyper-parameters and general.* keys. */
int synth_add_hparams(pd_gguf_writer *w, const synth_spec *s, uint32_t file_type, pd_err *err);

/* The synthetic SentencePiece-style vocabulary of V tokens (BOS 1, EOS 2). */
int synth_add_vocab_synthetic(pd_gguf_writer *w, int V, pd_err *err);

/* Copies every tokenizer.* key of src verbatim; *n_tokens gets the length
 * of tokenizer.ggml.tokens. */
int synth_copy_vocab(pd_gguf_writer *w, const pd_gguf *src, int *n_tokens, pd_err *err);

/* Writes the whole model, every tensor F32, to out. vocab_path: a GGUF
 * whose tokenizer.* keys are copied (its vocabulary size wins over
 * s->vocab_size), or NULL for the synthetic vocabulary. */
int synth_write(const synth_spec *s, const char *vocab_path, const char *out, pd_err *err);

/* splitmix64 step, and a uniform float in [-1, 1). */
uint64_t synth_rand(uint64_t *state);
float synth_randf(uint64_t *state);

#endif
