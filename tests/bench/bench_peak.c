/* bench_peak.c — the machine's arithmetic peak per instruction set, with
 * loops of our own (OpenBLAS may run kernels older than the CPU: its sgemm
 * understates it): independent chains of F32 fused multiply-adds on 256-bit
 * (AVX2) and 512-bit (AVX-512) registers, and int8 dot products
 * (AVX-512 VNNI vpdpbusd: 64 multiply-adds per instruction), on every CPU
 * at once. Enough chains to cover the latency; the results feed a sum so
 * the compiler keeps them. */
#include <pthread.h>
#include <stdlib.h>

#include <immintrin.h>

#include "bench.h"

#define PEAK_ITERS 20000000L /* x 12 instructions per thread */

__attribute__((target("avx2,fma"))) static double loop_f32_avx2(long iters)
{
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long k = 0; k < iters; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) static double loop_f32_avx512(long iters)
{
    __m512 a[12], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < iters; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512vnni"))) static double loop_vnni(long iters)
{
    __m512i a[12], u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
    for (long k = 0; k < iters; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], u, v);
    __m512i s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_epi32(s, a[i]);
    return (double)_mm512_reduce_add_epi32(s);
}

typedef struct peak_arg {
    double (*fn)(long);
    long iters;
    double sink;
} peak_arg;

static void *peak_thread(void *p)
{
    peak_arg *a = p;
    a->sink = a->fn(a->iters);
    return NULL;
}

/* operations per second of fn on n threads; ops_per_iter counts a
 * multiply-add as 2 */
static double run_peak(double (*fn)(long), double ops_per_iter, int n)
{
    pthread_t th[64];
    peak_arg args[64];
    if (n > 64) n = 64;
    double best = 0;
    for (int rep = 0; rep < 2; rep++) {
        long iters = rep == 0 ? PEAK_ITERS / 20 : PEAK_ITERS / 4;
        double t0 = bench_now();
        int started = 0;
        for (int i = 0; i < n; i++) {
            args[i] = (peak_arg){fn, iters, 0};
            if (pthread_create(&th[i], NULL, peak_thread, &args[i]) != 0) break;
            started++;
        }
        for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
        double dt = bench_now() - t0;
        double r = ops_per_iter * (double)iters * started / dt;
        if (r > best) best = r;
    }
    return best;
}

void bench_peaks_measure(bench_peaks *pk, int n_cpus)
{
    __builtin_cpu_init();
    pk->f32_avx2 = pk->f32_avx512 = pk->int8_vnni = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        pk->f32_avx2 = run_peak(loop_f32_avx2, 12 * 8 * 2, n_cpus) * 1e-9;
    if (__builtin_cpu_supports("avx512f"))
        pk->f32_avx512 = run_peak(loop_f32_avx512, 12 * 16 * 2, n_cpus) * 1e-9;
    if (__builtin_cpu_supports("avx512vnni"))
        pk->int8_vnni = run_peak(loop_vnni, 12 * 64 * 2, n_cpus) * 1e-9;
}
