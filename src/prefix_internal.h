/* prefix_internal.h — helpers shared by the files that build prefixes
 * (prefix.c, prefix_prompt.c, peft.c). Not part of the public API. */
#ifndef PREFIXD_PREFIX_INTERNAL_H
#define PREFIXD_PREFIX_INTERNAL_H

#include "prefixd/prefix.h"

/* Sets p's "source" metadata to source and "created_at" to the current
 * time, ISO 8601 UTC ("2024-05-01T12:00:00Z"). Returns PD_OK or PD_ENOMEM. */
int pd__prefix_stamp(pd_prefix *p, const char *source, pd_err *err);

/* Index of the first value of x[0..n) that is NaN or infinite, or -1. */
long pd__first_nonfinite(const float *x, size_t n);

/* Describes flat index i of a (n_layers, n_kv_heads, P, head_dim) tensor as
 * "layer L, kv head H, slot S, dim D" into buf. Returns buf. */
const char *pd__prefix_index_str(char *buf, size_t cap, const pd_prefix *p, size_t i);

#endif
