/* threadpool.c — workers that wait on a generation counter; each run hands
 * every thread one contiguous chunk of the task range. */
#include "prefixd/threadpool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pd_pool {
    int n_threads;
    pthread_t *workers;      /* n_threads - 1 */
    pthread_mutex_t mu;
    pthread_cond_t start;    /* a new generation began, or stop */
    pthread_cond_t done;     /* pending reached 0 */
    unsigned long generation;
    int pending;             /* workers still in the current run */
    int stop;
    pd_pool_fn fn;
    void *ctx;
    int n_tasks;
};

typedef struct worker_arg {
    pd_pool *p;
    int index; /* 1..n_threads-1; the caller is 0 */
} worker_arg;

static void run_chunk(pd_pool *p, int index)
{
    int n = p->n_tasks, t = p->n_threads;
    int lo = (int)((long)n * index / t), hi = (int)((long)n * (index + 1) / t);
    for (int i = lo; i < hi; i++) p->fn(p->ctx, i, index);
}

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    pd_pool *p = wa->p;
    int index = wa->index;
    free(wa);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_chunk(p, index);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int pd_pool_create(int n_threads, pd_pool **out, pd_err *err)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256) n_threads = 256;
    pd_pool *p = calloc(1, sizeof *p);
    if (!p) return pd_err_set(err, PD_ENOMEM, "out of memory for the thread pool");
    p->n_threads = n_threads;
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) {
        free(p);
        return pd_err_set(err, PD_ENOMEM, "out of memory for the thread pool");
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        int rc = wa ? 0 : -1;
        if (wa) {
            wa->p = p;
            wa->index = i;
            rc = pthread_create(&p->workers[i - 1], NULL, worker_main, wa);
            if (rc != 0) free(wa);
        }
        if (rc != 0) {
            p->n_threads = i; /* only i - 1 workers exist: stop those */
            pd_pool_free(p);
            return pd_err_set(err, PD_ESYS, "cannot start worker thread %d of %d", i, n_threads);
        }
    }
    *out = p;
    return PD_OK;
}

void pd_pool_free(pd_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p);
}

int pd_pool_threads(const pd_pool *p) { return p ? p->n_threads : 1; }

void pd_pool_run(pd_pool *p, pd_pool_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    p->pending = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    run_chunk(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
