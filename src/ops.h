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

#endif
