/* ops.h — the forward pass's elementwise operations, shared by
 * the engine (engine.c) and training (backprop.c) so both compute the same
 * float operations in the same order, and so the same logits. Internal to
 * libprefixd. */
#ifndef PREFIXD_OPS_H
#define PREFIXD_OPS_H

#include <stddef.h>

/* o = w ⊙ x·r row by row, r = 1/sqrt(mean(x²) + eps) (llama2.c's order of
 * operations); r of each row into rs when rs is not NULL. */
void pd__rmsnorm_rows(float *o, float *rs, const float *x, const float *w, int T, int C,
                      float eps);

/* cos/sin pairs of position pos into cs (hd floats: hd/2 pairs),
 * angle = pos · base^(-2j/hd). */
void pd__rope_table(float *cs, int pos, int hd, float base);

/* Rotates adjacent pairs of vec (n floats, heads of hd) by the table cs;
 * sign -1 rotates back (the transpose, for the backward pass). */
void pd__rope_apply(float *vec, int n, int hd, const float *cs, float sign);

/* pd__rope_table with the model's scaling: angle = pos · freq_scale ·
 * base^(-2j/hd) / factors[j] (factors NULL: 1). With freq_scale 1 and no
 * factors the same floats as pd__rope_table. */
void pd__rope_table_ext(float *cs, int pos, int hd, float base, float freq_scale,
                        const float *factors);

/* Rotates every row of x (R rows of n floats, heads of hd) by its own table
 * row (rope: (R, hd)): adjacent pairs (PD_ROPE_NORM, pd__rope_apply) or
 * NeoX halves (x[i], x[i + hd/2]) (PD_ROPE_NEOX); sign -1 rotates back. */
void pd__rope_rows(float *x, int R, int n, int hd, const float *rope, int rope_type, float sign);

/* What pd__qkv_finish saved for the backward pass of the q/k norms (NULL in
 * the engine): pre-norm rows and each head's 1/rms. */
typedef struct pd__qk_saved {
    float *q_pre; /* (T, q_dim) */
    float *k_pre; /* (T, kv_dim) */
    float *q_rs;  /* (T, n_heads) */
    float *k_rs;  /* (T, n_kv_heads) */
} pd__qk_saved;

struct pd_model;
/* Turns the projections of T rows into attention inputs, layer l: q += bq,
 * k += bk, v += bv (when the layer has biases); per-head RMSNorm of q and k
 * with q_norm/k_norm (when present); then rotary by each row's table.
 * q (T, q_dim), k/v (T, kv_dim), rope (T, hd). */
void pd__qkv_finish(const struct pd_model *m, int l, float *q, float *k, float *v, int T,
                    const float *rope, pd__qk_saved *save);

#endif
