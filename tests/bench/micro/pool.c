/* pool.c — micro_pool: the thread pool's hand-off latency (make bench).
 *
 *     build/bench/micro_pool [threads]
 *
 * Three figures, each the median over batches of runs of an empty task per
 * thread: back to back (the pure round trip: publish, every worker runs,
 * the caller sees them done); with ~5 us of the caller's own work between
 * runs (a decode step: norms, rotary, KV writes between the products); and
 * after 2 ms idle (the workers asleep in the kernel: a futex wake-up). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "prefixd/threadpool.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void nop(void *ctx, int task, int thread)
{
    (void)ctx;
    (void)task;
    (void)thread;
}

/* The caller's own work (short gaps) or idling (long ones). */
static void wait_for(double seconds)
{
    if (seconds >= 1e-3) {
        struct timespec ts = {0, (long)(seconds * 1e9)};
        nanosleep(&ts, NULL);
        return;
    }
    const double until = now() + seconds;
    while (now() < until) {
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median over `batches` of the mean time of one run (excluding `gap`). */
static double measure(pd_pool *p, int batches, int runs, double gap)
{
    double t[64];
    for (int b = 0; b < batches; b++) {
        double spent = 0.0;
        for (int r = 0; r < runs; r++) {
            if (gap > 0) wait_for(gap);
            const double t0 = now();
            pd_pool_run(p, nop, NULL, pd_pool_threads(p));
            spent += now() - t0;
        }
        t[b] = spent / runs;
    }
    qsort(t, (size_t)batches, sizeof *t, cmp);
    return t[batches / 2];
}

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    pd_pool *p;
    pd_err err;
    if (threads < 2 || pd_pool_create(threads, &p, &err) < 0) {
        fprintf(stderr, "usage: %s [threads >= 2]\n", argv[0]);
        return 2;
    }
    measure(p, 3, 1000, 0); /* warm-up */
    const double b2b = measure(p, 31, 2000, 0);
    const double gap = measure(p, 31, 500, 5e-6);
    const double cold = measure(p, 15, 20, 2e-3);
    printf("micro_pool: %d threads, one empty task each, median of batches\n", threads);
    printf("  back to back           %8.2f us per run\n", b2b * 1e6);
    printf("  after 5 us of work     %8.2f us per run\n", gap * 1e6);
    printf("  after 2 ms idle        %8.2f us per run (workers asleep)\n", cold * 1e6);
    pd_pool_free(p);
    return 0;
}
