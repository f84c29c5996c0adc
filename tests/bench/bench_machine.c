/* bench_machine.c — this machine's references, measured in the same run as
 * the engine figures: the sgemm peak of OpenBLAS on all threads, the read
 * bandwidth of all threads over a buffer far larger than the last-level
 * cache, one thread's memcpy, and pd_matmul on the same products.
 *
 * The read test starts one pthread per online CPU, each summing its own
 * contiguous slice (the first pass also writes it, so its pages are local to
 * it). A pass is timed from the opening of a gate that every started thread
 * waits at to the last join, so thread start-up is not counted. */
#include "bench.h"

#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "prefixd/matmul.h"
#include "prefixd/threadpool.h"

/* OpenBLAS extension (not in <cblas.h> of every version). */
char *openblas_get_corename(void);

#define SGEMM_N 2048
#define SGEMM_REPS 10
#define MATMUL_REPS 3
#define READ_REPS 10
#define MEMCPY_REPS 3
#define READ_MIN ((size_t)1 << 30) /* at least 1 GiB ... */
#define READ_MAX ((size_t)2 << 30) /* ... at most 2 GiB, else 4 x L3 */

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t bench_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

float bench_randf(uint64_t *state)
{
    return (float)(bench_rand(state) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

/* Where results go so that the work producing them is not dropped. */
static volatile float sink;

static void fill(float *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) x[i] = bench_randf(&seed);
}

/* ---- the load of other processes ---- */

/* Non-idle seconds of all CPUs so far, from the first line of /proc/stat
 * (user nice system idle iowait irq softirq steal ...), or -1. */
static double busy_seconds(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1.0;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 4) return -1.0;
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    long hz = sysconf(_SC_CLK_TCK);
    return (double)busy / (double)(hz > 0 ? hz : 100);
}

static double self_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

void bench_meter_start(bench_meter *m)
{
    m->wall = bench_now();
    m->self = self_seconds();
    m->busy = busy_seconds();
}

double bench_meter_others(const bench_meter *m)
{
    double busy = busy_seconds();
    double wall = bench_now() - m->wall;
    if (m->busy < 0 || busy < 0 || wall <= 0) return -1.0;
    double others = ((busy - m->busy) - (self_seconds() - m->self)) / wall;
    return others > 0 ? others : 0.0;
}

/* ---- sgemm and pd_matmul ---- */

/* out (T, N) = in (T, K) · W^T with OpenBLAS: the engine's layout. */
static void blas_product(float *out, const float *in, const float *W, int T, int K, int N)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, in, K, W, K, 0.0f, out,
                N);
}

/* Best seconds of reps runs (after one warm-up; fewer once budget seconds
 * have gone, but at least one) of the product with BLAS or pd_matmul. */
static double time_product(pd_pool *pool, int use_pd, float *out, const float *in,
                           const float *W, int T, int K, int N, int reps, double budget)
{
    double best = 1e30;
    const double start = bench_now();
    for (int r = 0; r <= reps && !(r >= 2 && bench_now() - start > budget); r++) {
        double t0 = bench_now();
        if (use_pd) pd_matmul(pool, out, in, W, T, K, N);
        else blas_product(out, in, W, T, K, N);
        double dt = bench_now() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    return best;
}

/* ---- read bandwidth ---- */

/* Sums n floats (n a multiple of 32) with independent vector sums, so the
 * loop is bounded by loads, not by add latency: 256-bit loads where the CPU
 * has AVX2 (as the engine's kernel reads its weights), else 128-bit. */
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));

__attribute__((target("avx2"))) static float sum_floats_avx2(const float *x, size_t n)
{
    v8f acc[4] = {{0}};
    for (size_t i = 0; i < n; i += 32) {
        for (int j = 0; j < 4; j++) {
            v8f v;
            memcpy(&v, x + i + 8 * j, sizeof v);
            acc[j] += v;
        }
    }
    acc[0] += acc[1] + acc[2] + acc[3];
    float s = 0.0f;
    for (int j = 0; j < 8; j++) s += acc[0][j];
    return s;
}

static float sum_floats_sse(const float *x, size_t n)
{
    v4f acc[8] = {{0}};
    for (size_t i = 0; i < n; i += 32) {
        for (int j = 0; j < 8; j++) {
            v4f v;
            memcpy(&v, x + i + 4 * j, sizeof v);
            acc[j] += v;
        }
    }
    for (int j = 1; j < 8; j++) acc[0] += acc[j];
    return acc[0][0] + acc[0][1] + acc[0][2] + acc[0][3];
}

static float sum_floats(const float *x, size_t n)
{
    return pd_matmul_uses_avx2() ? sum_floats_avx2(x, n) : sum_floats_sse(x, n);
}

/* Holds the readers until every one has started, then lets them go at once. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready; /* readers waiting */
    int open;
} gate;

typedef struct reader {
    float *x;        /* this thread's slice (borrowed) */
    size_t n;        /* floats, a multiple of 32 */
    int write_first; /* 1: fill the slice before waiting at the gate */
    gate *g;
    float sum;       /* result, so the loads cannot be dropped */
} reader;

static void *reader_main(void *arg)
{
    reader *r = arg;
    if (r->write_first)
        for (size_t i = 0; i < r->n; i++) r->x[i] = (float)(i & 1023);
    pthread_mutex_lock(&r->g->mu);
    r->g->ready++;
    pthread_cond_broadcast(&r->g->cv);
    while (!r->g->open) pthread_cond_wait(&r->g->cv, &r->g->mu);
    pthread_mutex_unlock(&r->g->mu);
    r->sum = sum_floats(r->x, r->n);
    return NULL;
}

#define MAX_READERS 256

/* One parallel pass of nt threads over x (n floats); returns its seconds
 * from the opening of the gate to the last join, or -1 when a thread cannot
 * start (the ones that did are joined). */
static double read_pass(float *x, size_t n, int nt, int write_first, float *sum)
{
    pthread_t th[MAX_READERS];
    reader rd[MAX_READERS];
    gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    if (nt > MAX_READERS) nt = MAX_READERS;
    size_t per = n / (size_t)nt / 32 * 32;
    int started = 0;
    for (int i = 0; i < nt; i++) {
        rd[i] = (reader){x + (size_t)i * per, per, write_first, &g, 0.0f};
        if (pthread_create(&th[i], NULL, reader_main, &rd[i]) != 0) break;
        started++;
    }
    pthread_mutex_lock(&g.mu);
    while (g.ready < started) pthread_cond_wait(&g.cv, &g.mu);
    g.open = 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    double t0 = bench_now();
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    double dt = bench_now() - t0;
    for (int i = 0; i < started; i++) *sum += rd[i].sum;
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
    return started == nt ? dt : -1.0;
}

static size_t read_buffer_bytes(size_t l3)
{
    size_t want = 4 * l3;
    if (want < READ_MIN) want = READ_MIN;
    if (want > READ_MAX) want = READ_MAX;
    return want;
}

int bench_machine_measure(bench_machine *mc, pd_err *err)
{
    memset(mc, 0, sizeof *mc);
    bench_meter meter;
    bench_meter_start(&meter);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    mc->n_cpus = ncpu > 0 ? (int)ncpu : 1;
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    mc->l3_bytes = l3 > 0 ? (size_t)l3 : 0;
    const char *core = openblas_get_corename();
    snprintf(mc->blas_core, sizeof mc->blas_core, "%s", core ? core : "?");

    /* sgemm peak and pd_matmul on the same operands */
    const int n = SGEMM_N;
    size_t nn = (size_t)n * n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float));
    float *c = malloc(nn * sizeof(float));
    pd_pool *pool = NULL;
    int rc = PD_OK;
    if (!a || !b || !c) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the %d^3 sgemm", n);
        goto done;
    }
    if ((rc = pd_pool_create(0, &pool, err)) < 0) goto done;
    fill(a, nn, 1);
    fill(b, nn, 2);
    double flops = 2.0 * n * n * n;
    mc->sgemm_n = n;
    mc->sgemm_gflops = flops / time_product(NULL, 0, c, a, b, n, n, n, SGEMM_REPS, 5.0) * 1e-9;
    mc->matmul_gflops = flops / time_product(pool, 1, c, a, b, n, n, n, MATMUL_REPS, 5.0) * 1e-9;
    free(a);
    free(b);
    free(c);
    a = b = c = NULL;

    /* read bandwidth of all threads, then one thread's memcpy */
    mc->read_bytes = read_buffer_bytes(mc->l3_bytes);
    size_t nf = mc->read_bytes / sizeof(float);
    float *x = aligned_alloc(4096, mc->read_bytes);
    if (!x) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the %zu MiB bandwidth buffer",
                        mc->read_bytes >> 20);
        goto done;
    }
    float sum = 0.0f;
    double best = 1e30;
    for (int r = 0; r <= READ_REPS; r++) {
        /* the first pass writes the pages (each thread its own slice) */
        double dt = read_pass(x, nf, mc->n_cpus, r == 0, &sum);
        if (dt < 0) {
            free(x);
            rc = pd_err_set(err, PD_ESYS, "cannot start %d bandwidth threads", mc->n_cpus);
            goto done;
        }
        if (r > 0 && dt < best) best = dt;
    }
    size_t per = nf / (size_t)mc->n_cpus / 32 * 32;
    mc->read_gbs = (double)(per * (size_t)mc->n_cpus * sizeof(float)) / best * 1e-9;

    mc->memcpy_bytes = mc->read_bytes / 4;
    char *src = (char *)x, *dst = (char *)x + mc->read_bytes / 2;
    best = 1e30;
    for (int r = 0; r <= MEMCPY_REPS; r++) {
        double t0 = bench_now();
        memcpy(dst, src, mc->memcpy_bytes);
        double dt = bench_now() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    mc->memcpy_gbs = (double)mc->memcpy_bytes / best * 1e-9;
    sink = sum;
    free(x);
done:
    free(a);
    free(b);
    free(c);
    pd_pool_free(pool);
    mc->others = bench_meter_others(&meter);
    return rc;
}

int bench_shapes_measure(bench_shape *shapes, int n, pd_err *err)
{
    size_t max_in = 0, max_w = 0, max_out = 0;
    for (int i = 0; i < n; i++) {
        const bench_shape *s = &shapes[i];
        size_t in = (size_t)s->T * s->K, w = (size_t)s->N * s->K, out = (size_t)s->T * s->N;
        if (in > max_in) max_in = in;
        if (w > max_w) max_w = w;
        if (out > max_out) max_out = out;
    }
    float *in = malloc(max_in * sizeof(float)), *w = malloc(max_w * sizeof(float));
    float *out = malloc(max_out * sizeof(float));
    pd_pool *pool = NULL;
    int rc = PD_OK;
    if (!in || !w || !out) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory for the matmul shapes");
        goto done;
    }
    if ((rc = pd_pool_create(0, &pool, err)) < 0) goto done;
    fill(in, max_in, 3);
    fill(w, max_w, 4);
    for (int i = 0; i < n; i++) {
        bench_shape *s = &shapes[i];
        /* about 0.2 s per shape and library, at least 3 runs */
        double flops = 2.0 * s->T * s->K * s->N;
        int reps = (int)(0.2 / (flops / 5e10));
        if (reps < 3) reps = 3;
        if (reps > 200) reps = 200;
        s->pd_s = time_product(pool, 1, out, in, w, s->T, s->K, s->N, reps, 1.0);
        s->blas_s = time_product(NULL, 0, out, in, w, s->T, s->K, s->N, reps, 1.0);
    }
done:
    free(in);
    free(w);
    free(out);
    pd_pool_free(pool);
    return rc;
}
