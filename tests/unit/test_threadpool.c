/* test_threadpool.c — the thread pool (prefixd/threadpool.h): every task
 * runs exactly once per run, each thread on one contiguous chunk in thread
 * order, over many short runs back to back and with pauses long enough for
 * the workers to fall asleep; pools created and freed in every state; an
 * idle pool costs no CPU. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prefixd/threadpool.h"

#define MAX_TASKS 97

typedef struct record {
    atomic_int runs[MAX_TASKS];  /* times each task ran in this run */
    int thread[MAX_TASKS];       /* the thread that ran it */
    unsigned spin;               /* busy work per task, in loop iterations */
} record;

static void task(void *ctx, int t, int thread)
{
    record *r = ctx;
    atomic_fetch_add(&r->runs[t], 1);
    r->thread[t] = thread;
    volatile unsigned x = 0;
    for (unsigned i = 0; i < r->spin; i++) x += i;
}

/* Runs n tasks on p and checks the contract. */
static void run_and_check(pd_pool *p, record *r, int n)
{
    for (int t = 0; t < MAX_TASKS; t++) atomic_store(&r->runs[t], 0);
    for (int t = 0; t < MAX_TASKS; t++) r->thread[t] = -1;
    pd_pool_run(p, task, r, n);
    const int threads = pd_pool_threads(p);
    for (int t = 0; t < n; t++) {
        assert_int_equal(atomic_load(&r->runs[t]), 1);
        /* the chunk of thread k is [n k / threads, n (k+1) / threads) */
        const int k = r->thread[t];
        assert_true(k >= 0 && k < threads);
        if (n > 1) {
            assert_true((long)n * k / threads <= t);
            assert_true(t < (long)n * (k + 1) / threads);
        }
    }
    for (int t = n; t < MAX_TASKS; t++) assert_int_equal(atomic_load(&r->runs[t]), 0);
}

static uint64_t rng = 88172645463325252ull;
static unsigned next(unsigned m)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % m);
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void test_many_short_runs(void **state)
{
    (void)state;
    static record r;
    const int sizes[] = {2, 3, 4, 7};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        pd_pool *p;
        pd_err err;
        assert_int_equal(pd_pool_create(sizes[s], &p, &err), PD_OK);
        assert_int_equal(pd_pool_threads(p), sizes[s]);
        for (int i = 0; i < 4000; i++) {
            r.spin = next(4) == 0 ? next(20000) : 0;
            run_and_check(p, &r, 1 + (int)next(MAX_TASKS));
        }
        pd_pool_free(p);
    }
}

/* Pauses longer than the workers' spin: they sleep and must be woken. */
static void test_runs_after_sleep(void **state)
{
    (void)state;
    static record r;
    pd_pool *p;
    pd_err err;
    assert_int_equal(pd_pool_create(3, &p, &err), PD_OK);
    for (int i = 0; i < 60; i++) {
        sleep_us(i % 3 == 0 ? 1000 : 150 + (long)next(200));
        r.spin = i % 2 ? 0 : 300000; /* long tasks: the caller sleeps on the workers too */
        run_and_check(p, &r, 2 + (int)next(MAX_TASKS - 2));
    }
    pd_pool_free(p);
}

static void test_inline_and_lifecycle(void **state)
{
    (void)state;
    static record r;
    r.spin = 0;
    run_and_check(NULL, &r, 5); /* no pool: inline on thread 0 */
    for (int t = 0; t < 5; t++) assert_int_equal(r.thread[t], 0);
    pd_pool *p;
    pd_err err;
    assert_int_equal(pd_pool_create(1, &p, &err), PD_OK);
    run_and_check(p, &r, 9);
    for (int t = 0; t < 9; t++) assert_int_equal(r.thread[t], 0);
    pd_pool_free(p);
    pd_pool_free(NULL);
    pd_pool_run(NULL, task, &r, 0);
    /* freed right away, while spinning, and after falling asleep */
    for (int i = 0; i < 30; i++) {
        assert_int_equal(pd_pool_create(2 + i % 3, &p, &err), PD_OK);
        if (i % 3 >= 1) run_and_check(p, &r, 1 + i);
        if (i % 3 == 2) sleep_us(500);
        pd_pool_free(p);
    }
}

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Once the workers stop spinning, an idle pool uses no CPU: over 300 ms of
 * idling after a run, less than 10% of one CPU (the spin lasts 0.1 ms). */
static void test_idle_costs_nothing(void **state)
{
    (void)state;
    static record r;
    pd_pool *p;
    pd_err err;
    assert_int_equal(pd_pool_create(4, &p, &err), PD_OK);
    r.spin = 0;
    run_and_check(p, &r, 8);
    sleep_us(20000);
    const double c0 = cpu_seconds();
    sleep_us(300000);
    const double used = cpu_seconds() - c0;
    assert_true(used < 0.03);
    run_and_check(p, &r, 8);
    pd_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_short_runs),
        cmocka_unit_test(test_runs_after_sleep),
        cmocka_unit_test(test_inline_and_lifecycle),
        cmocka_unit_test(test_idle_costs_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
