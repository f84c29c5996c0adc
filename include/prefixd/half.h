/* prefixd/half.h — IEEE half (F16) and bfloat16 (BF16) conversions. */
#ifndef PREFIXD_HALF_H
#define PREFIXD_HALF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

float pd_f16_to_f32(uint16_t h);
uint16_t pd_f32_to_f16(float f);   /* round to nearest even; overflow -> inf */
float pd_bf16_to_f32(uint16_t h);
uint16_t pd_f32_to_bf16(float f);  /* round to nearest even; NaN stays NaN */

/* Widens n values from src (little-endian, possibly unaligned) into dst. */
void pd_f16_to_f32_n(const void *src, float *dst, size_t n);
void pd_bf16_to_f32_n(const void *src, float *dst, size_t n);
/* Rounds n floats to halves (nearest even) into dst (little-endian, possibly
 * unaligned): the inverse of pd_f16_to_f32_n for every value halves hold. */
void pd_f32_to_f16_n(const float *src, void *dst, size_t n);

/* 1 when this x86-64 CPU converts halves in hardware (F16C, CPUID leaf 1),
 * for the kernels' run-time choice (clang's __builtin_cpu_supports has no
 * "f16c"); 0 elsewhere. */
int pd_cpu_has_f16c(void);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_HALF_H */
