/* prefixd/threadpool.h — a fixed pool of worker threads for the engine's
 * parallel loops. pd_pool_run() splits n_tasks among the workers and the
 * calling thread and returns when all are done. A pool is driven by one
 * thread at a time (the engine's owner). Between runs the workers spin for
 * about 0.1 ms (a decode step hands out work every few microseconds, and a
 * spinning worker starts within a microsecond), yielding the CPU to any
 * other runnable thread meanwhile, then sleep in the kernel: an idle pool
 * uses no CPU. On a machine with more runnable threads than CPUs (seen as
 * a spin that lost its CPU) a waiter sleeps at once for a while, as
 * spinning then only delays the thread that has the work. A run allocates
 * nothing. */
#ifndef PREFIXD_THREADPOOL_H
#define PREFIXD_THREADPOOL_H

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_pool pd_pool;

/* fn(ctx, task, thread) is called once for every task in [0, n_tasks);
 * thread in [0, n_threads) names the calling thread (for per-thread scratch). */
typedef void (*pd_pool_fn)(void *ctx, int task, int thread);

/* Creates a pool running on n_threads threads in all (the caller counts as
 * one: n_threads - 1 workers are started). n_threads <= 0 picks the number
 * of online CPUs. Returns PD_OK or PD_ENOMEM / PD_ESYS. */
int pd_pool_create(int n_threads, pd_pool **out, pd_err *err);
void pd_pool_free(pd_pool *p);
int pd_pool_threads(const pd_pool *p);

/* Runs fn over [0, n_tasks); tasks are handed out in contiguous chunks, one
 * per thread: thread k runs [n_tasks k / n, n_tasks (k + 1) / n) in
 * increasing order (the caller is thread 0). With p == NULL, one thread or
 * one task it runs inline. Returns after every task, whose writes are then
 * visible to the caller. */
void pd_pool_run(pd_pool *p, pd_pool_fn fn, void *ctx, int n_tasks);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_THREADPOOL_H */
