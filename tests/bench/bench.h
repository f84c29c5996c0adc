/* bench.h — the parts of prefixd-bench (every .c file in tests/bench, one binary that
 * `make bench` runs from the repository root).
 *
 * The benchmark prints figures, not assertions. Absolute times drift on a
 * shared machine, so every figure stands next to a reference measured in
 * the same run on the same machine, and their ratio:
 *
 *   bench_machine.c  the references: cblas_sgemm peak, read bandwidth of all
 *                    threads, one thread's memcpy; pd_matmul on the sgemm
 *                    product and on the weight shapes of the 134M model
 *   bench_synth.c    the synthetic 134M-parameter Llama GGUF (stories110M
 *                    shape, random weights), written once as F32 and F16
 *   bench_engine.c   prefill, decode batch 1 and decode batch B of a model
 *                    through pd_engine_step
 *   bench_main.c     the order of the run and the report
 *
 * Timing: CLOCK_MONOTONIC; every figure is the best of a few repetitions
 * after a warm-up (the machine's capability, not its noise). On a busy
 * machine a figure stops repeating once it has used its time budget (after
 * at least one timed run), so the whole bench stays within minutes.
 * Everything runs on the main thread except the threads the figure is
 * about.
 */
#ifndef PREFIXD_BENCH_H
#define PREFIXD_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"
#include "prefixd/model.h"

/* Seconds on CLOCK_MONOTONIC. */
double bench_now(void);

/* The next value of a splitmix64 stream (state advanced in place). */
uint64_t bench_rand(uint64_t *state);

/* A uniform float in [-1, 1) from the stream. */
float bench_randf(uint64_t *state);

/* ---- machine references (bench_machine.c) ---- */

/* How busy other processes kept the CPUs while a figure was measured: the
 * machine's non-idle time (/proc/stat, steal included) minus this
 * process's own CPU time. A shared machine's figures are only comparable
 * when this stays near 0. */
typedef struct bench_meter {
    double wall;  /* seconds at the start */
    double self;  /* this process's CPU seconds at the start */
    double busy;  /* all CPUs' non-idle seconds at the start, < 0 if unknown */
} bench_meter;

void bench_meter_start(bench_meter *m);

/* CPUs that other processes kept busy on average since the start (0 to the
 * CPU count), or -1 when /proc/stat cannot be read. */
double bench_meter_others(const bench_meter *m);

typedef struct bench_machine {
    int n_cpus;              /* online CPUs: threads of every all-thread figure */
    size_t l3_bytes;         /* getconf LEVEL3_CACHE_SIZE, 0 when unknown */
    char blas_core[64];      /* the kernel family OpenBLAS picked */
    int sgemm_n;             /* the square product's size */
    double sgemm_gflops;     /* cblas_sgemm n^3, all threads, best */
    double matmul_gflops;    /* pd_matmul on the same product, best */
    size_t read_bytes;       /* the read test's buffer */
    double read_gbs;         /* all threads summing the buffer, best (GB = 1e9 B) */
    double memcpy_gbs;       /* one thread, bytes copied per second, best */
    size_t memcpy_bytes;
    double others;           /* CPUs other processes used meanwhile (bench_meter) */
} bench_machine;

/* Measures the references into *mc (a few seconds). Returns PD_OK or
 * PD_ENOMEM / PD_ESYS with err saying what failed. */
int bench_machine_measure(bench_machine *mc, pd_err *err);

/* One weight product: out (T, N) = in (T, K) · W^T. */
typedef struct bench_shape {
    const char *what; /* which weights, e.g. "w1, w3" */
    int T, K, N;
    int per_layer;    /* times per layer (0: once per step) */
    double pd_s;      /* best seconds of pd_matmul */
    double blas_s;    /* best seconds of cblas_sgemm on the same operands */
} bench_shape;

/* Times pd_matmul (on a pool of all CPUs) and cblas_sgemm on each of the n
 * shapes, filling their pd_s and blas_s. Returns PD_OK or PD_ENOMEM /
 * PD_ESYS. */
int bench_shapes_measure(bench_shape *shapes, int n, pd_err *err);

/* ---- the synthetic model (bench_synth.c) ---- */

typedef struct bench_synth {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    float scale;  /* weights uniform in [-scale, scale); norm weights 1 */
    uint64_t seed;
    float *f32;   /* every tensor in file order (owned; NULL until filled) */
    size_t n_f32;
} bench_synth;

/* The stories110M shape: dim 768, hidden 2048, 12 layers, 12 heads (and kv
 * heads), vocab 32000, context 1024; weights ±0.02. */
bench_synth bench_synth_110m(void);

/* Writes the synthetic model as a GGUF v3 llama file at path with its big
 * matrices in dtype (PD_DTYPE_F32 or PD_DTYPE_F16; norms stay F32), unless
 * a file of exactly the expected size is already there (*written = 0).
 * Checks the free disk space first. Generates the weights into s->f32 on
 * first need (free them with bench_synth_release). Returns PD_OK, or
 * PD_ENOMEM / PD_EIO / PD_EINVAL with err naming the file. */
int bench_synth_write(bench_synth *s, const char *path, int dtype, int *written,
                      uint64_t *file_bytes, pd_err *err);

/* Frees the generated weights (the spec stays usable). */
void bench_synth_release(bench_synth *s);

/* ---- arithmetic peaks of our own (bench_peak.c) ---- */

typedef struct bench_peaks {
    double f32_avx2;   /* GFLOP/s, 256-bit FMA chains on every CPU (0: no AVX2) */
    double f32_avx512; /* GFLOP/s, 512-bit FMA chains (0: no AVX-512) */
    double int8_vnni;  /* GOP/s, vpdpbusd (a multiply-add = 2 ops; 0: no VNNI) */
} bench_peaks;

void bench_peaks_measure(bench_peaks *pk, int n_cpus);

/* The TinyLlama-1.1B shape: dim 2048, hidden 5632, 22 layers, 32 heads / 4
 * kv heads, vocab 32000, context 2048; weights ±0.02. */
bench_synth bench_synth_1b(void);

/* ---- the engine (bench_engine.c) ---- */

/* What to run on one model; steps and repetitions scale with its size. */
typedef struct bench_plan {
    int prefill_tokens; /* one sequence, one step (the engine's max_tokens) */
    int prefill_reps;   /* timed repetitions after one warm-up */
    int prompt;         /* prompt tokens of each decoding sequence */
    int warm_steps;     /* untimed decode steps before each timed run */
    int decode1_steps, decode1_reps;
    int batch;          /* sequences decoded together */
    int decodeb_steps, decodeb_reps;
    int batch_mid;      /* a second, smaller batch (0: none) */
    int decodem_steps, decodem_reps;
    double budget_s;    /* seconds per figure before repetitions stop early */
} bench_plan;

typedef struct bench_result {
    double prefill_s;        /* best time of one prefill step */
    double prefill_mm_flops; /* matmul FLOPs of that step */
    double prefill_at_flops; /* attention FLOPs (q·k and a·v) of that step */
    double decode1_tps;      /* tokens per second, batch 1, best run */
    double decodeb_tps;      /* tokens per second summed over the batch, best run */
    double decodem_tps;      /* the same for batch_mid sequences (0 when none) */
} bench_result;

/* Runs the plan on model m (borrowed) with an engine of all CPUs. Returns
 * PD_OK or the engine's status with err set. */
int bench_engine_run(const pd_model *m, const bench_plan *p, bench_result *r, pd_err *err);

/* Best seconds of reps passes (after one warm-up; fewer once budget_s
 * seconds have gone) of pd_matmul alone over
 * all of m's weight matrices in forward order (every layer's seven, then the
 * classifier) for T rows of random input, on a pool of all CPUs: the
 * engine's step minus everything but the weight products. Returns PD_OK or
 * PD_ENOMEM / PD_ESYS. */
int bench_weights_pass(const pd_model *m, int T, int reps, double budget_s, double *best,
                       pd_err *err);

/* The weight products of one prefill step of T tokens of a model of config
 * c, one entry per distinct shape, into shapes (at most 5); returns the
 * count. */
int bench_prefill_shapes(const pd_config *c, int T, bench_shape *shapes);

#endif /* PREFIXD_BENCH_H */
