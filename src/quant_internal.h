/* quant_internal.h — shared between quant.c and quant_k.c (not public). */
#ifndef PREFIXD_QUANT_INTERNAL_H
#define PREFIXD_QUANT_INTERNAL_H

#include <stdint.h>

/* Nearest integer, halves to even (ggml's nearest_int); NaN gives 0. */
int pd__nearest_int(float v);

/* The value of largest magnitude in x[0..n) (the first one on ties), with
 * its sign; 0 for an all-zero x. */
float pd__signed_absmax(const float *x, int n);

/* The K-quant (and Q8_K) conversions of nb 256-element blocks. */
void pd__dequantize_k(int type, const void *src, float *dst, int64_t nb);
void pd__quantize_k(int type, const float *src, void *dst, int64_t nb);

#endif
