/* threadpool.c — workers that wait on one generation counter; each run
 * hands every thread one contiguous chunk of the task range.
 *
 * Design. A run publishes (fn, ctx, n_tasks) and bumps `generation`; each
 * worker runs its chunk and decrements `pending`; the caller runs chunk 0,
 * then waits for `pending` to reach 0. Waiting is a bounded spin
 * (_mm_pause, SPIN_NS) and then a futex sleep, on both sides: a decode step
 * hands work out ~100 times, microseconds apart, and a worker still spinning
 * picks the next run up in well under a microsecond, while an idle pool
 * (server without requests) sleeps in the kernel and costs no CPU.
 * Spinning only pays while every thread has a CPU. The spin yields now and
 * then; when the yield (or anything else) takes the CPU away for longer than
 * STOLEN_NS, other threads want this CPU, and that waiter sleeps at once for
 * its next NO_SPIN_WAITS waits (a sleeper that is woken gets the CPU back
 * sooner than a spinner that used up its share).
 * Lost wake-ups are excluded by the futex word itself (the kernel sleeps
 * only while the word still holds the value the waiter saw) and by
 * announcing sleepers before the last check (sequentially consistent
 * atomics on both sides: either the waker sees the sleeper count or the
 * sleeper sees the new value). No allocation after pd_pool_create. */
#include "prefixd/threadpool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* How long a waiter spins before it sleeps. */
#define SPIN_NS 100000L
/* A gap this long between two looks at the clock while spinning: the CPU
 * went to another thread. */
#define STOLEN_NS 20000L
/* Waits that sleep without spinning after such a gap. */
#define NO_SPIN_WAITS 1000

typedef struct worker {
    pd_pool *p;
    int index;   /* 1..n_threads-1; the caller is 0 */
    int no_spin; /* waits left that skip the spin (owned by the worker) */
    pthread_t thread;
} worker;

struct pd_pool {
    int n_threads;
    worker *workers;               /* n_threads - 1 */
    _Atomic uint32_t generation;   /* bumped by every run and by pd_pool_free (futex word) */
    _Atomic uint32_t pending;      /* workers still in the current run (futex word) */
    atomic_int sleepers;           /* workers asleep on generation, or about to be */
    atomic_int caller_sleeps;      /* 1 while the caller sleeps on pending, or is about to */
    atomic_int stop;
    int caller_no_spin;            /* waits of the caller left that skip the spin */
    /* the current run: written before generation is bumped, read after */
    pd_pool_fn fn;
    void *ctx;
    int n_tasks;
};

static void futex_wait(_Atomic uint32_t *word, uint32_t seen)
{
    /* EINTR, EAGAIN (the word changed already): the caller re-checks */
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until *word != seen or SPIN_NS pass, unless this waiter's CPU is
 * contended (*no_spin, see the design note); returns the last value read. */
static uint32_t spin_while_equal(_Atomic uint32_t *word, uint32_t seen, int *no_spin)
{
    uint32_t v = atomic_load_explicit(word, memory_order_acquire);
    if (v != seen) return v;
    if (*no_spin > 0) {
        (*no_spin)--;
        return v;
    }
    int64_t last = now_ns();
    const int64_t until = last + SPIN_NS;
    for (unsigned i = 1;; i++) {
        cpu_relax();
        v = atomic_load_explicit(word, memory_order_acquire);
        if (v != seen) return v;
        if (i % 64 == 0) {
            sched_yield(); /* another thread on this CPU (an oversubscribed machine) runs */
            const int64_t t = now_ns();
            if (t - last > STOLEN_NS) {
                *no_spin = NO_SPIN_WAITS;
                return v;
            }
            if (t >= until) return v;
            last = t;
        }
    }
}

static void run_chunk(pd_pool *p, int index)
{
    int n = p->n_tasks, t = p->n_threads;
    int lo = (int)((long)n * index / t), hi = (int)((long)n * (index + 1) / t);
    for (int i = lo; i < hi; i++) p->fn(p->ctx, i, index);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pd_pool *p = w->p;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g = spin_while_equal(&p->generation, seen, &w->no_spin);
        if (g == seen) {
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->generation)) == seen) futex_wait(&p->generation, seen);
            atomic_fetch_sub(&p->sleepers, 1);
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        run_chunk(p, w->index);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeps))
            futex_wake_all(&p->pending);
    }
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
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_sleeps, 0);
    atomic_init(&p->stop, 0);
    for (int i = 1; i < n_threads; i++) {
        worker *w = &p->workers[i - 1];
        w->p = p;
        w->index = i;
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            p->n_threads = i; /* only i - 1 workers exist: stop those */
            pd_pool_free(p);
            return pd_err_set(err, PD_ESYS, "cannot start worker thread %d of %d: %s", i,
                              n_threads, strerror(rc));
        }
    }
    *out = p;
    return PD_OK;
}

void pd_pool_free(pd_pool *p)
{
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->generation, 1);
    futex_wake_all(&p->generation);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i - 1].thread, NULL);
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
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->pending, (uint32_t)(p->n_threads - 1), memory_order_relaxed);
    atomic_fetch_add(&p->generation, 1); /* publishes the run (seq_cst, a release) */
    if (atomic_load(&p->sleepers) > 0) futex_wake_all(&p->generation);
    run_chunk(p, 0);
    uint32_t left;
    while ((left = atomic_load_explicit(&p->pending, memory_order_acquire)) != 0) {
        if (spin_while_equal(&p->pending, left, &p->caller_no_spin) != left)
            continue; /* progress: spin again */
        atomic_store(&p->caller_sleeps, 1);
        while ((left = atomic_load(&p->pending)) != 0) futex_wait(&p->pending, left);
        atomic_store(&p->caller_sleeps, 0);
    }
}
