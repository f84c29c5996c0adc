/* ops.h — the forward pass's elementwise and attention operations, shared by
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

/* One query head's attention over P prefix slots then n_ctx real tokens:
 * att[0..P+n_ctx) receives the softmax probabilities, o[0..hd) the output.
 * pk/pv: (P, hd) of the head's kv group; k/v: the first real token's key and
 * value of the group, the next one `stride` floats further. */
void pd__attend_head(const float *q, const float *pk, const float *pv, int P, const float *k,
                     const float *v, size_t stride, int n_ctx, int hd, float *att, float *o);

#endif
