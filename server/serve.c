/* serve.c — `prefixd serve`: configuration, startup, and orderly shutdown of
 * the HTTP server.
 *
 * DESIGN. Threads of a running server:
 *   - main: starts everything, then waits for SIGINT/SIGTERM (a handler
 *     writes the signal to a pipe that main reads; during startup, when
 *     nothing can be in flight yet, the handler exits 0 at once);
 *   - libmicrohttpd: one listening thread plus one thread per connection,
 *     running the handlers (http.c, routes_*.c);
 *   - the scheduler's engine thread (and its step thread pool);
 *   - uv: a libuv loop running the registry watcher (fs events + rescan
 *     timer) and the training worker's wake-up handles (worker.c); stopped
 *     through a uv_async_t, the only bridge into it;
 *   - training: a libuv pool thread running the worker's jobs one at a time
 *     (plus the backprop threads of the job), at a lower priority.
 *
 * Startup: MHD starts first, so /health answers 503 {"status":"loading"}
 * while the model loads; then model, registry (+ watcher), scheduler; then
 * `ready`; then the worker looks for jobs (a job left running by a crash
 * resumes from its checkpoint). Shutdown: stop accepting (quiesce), tell
 * the worker to stop at its next step boundary (its job stays running in the
 * store and resumes at the next start), take the scheduler away from
 * the handlers and free it with a grace period (running requests finish,
 * the rest are cancelled and their handlers answer), let the handlers write
 * those answers (up to DRAIN_MS), stop MHD (closes the connections, joins
 * their threads), stop the uv loop (it ends once the training step in flight
 * has returned), close the job store, free everything, exit 0. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "cli.h"
#include "commands.h"
#include "config.h"
#include "http.h"
#include "prefixd/gguf.h"
#include "prefixd/log.h"

#define DEFAULT_CONFIG "config/prefixd.json"
#define DRAIN_MS 5000 /* at shutdown: time to write answers already made */

/* What the signal handler may use: the write end of the signal pipe, and
 * whether startup is over (before that there is nothing to finish, and
 * loading may block for long: the handler exits at once). */
static int signal_fd = -1;
static volatile sig_atomic_t signal_serving = 0;

static void on_signal(int sig)
{
    int saved = errno;
    if (!signal_serving) {
        static const char msg[] = "prefixd: signal during startup: exiting\n";
        if (write(2, msg, sizeof msg - 1) < 0) {}
        _exit(0);
    }
    unsigned char c = (unsigned char)sig;
    if (write(signal_fd, &c, 1) < 0) {} /* full pipe: a signal is pending already */
    errno = saved;
}

/* The libuv side: its loop, the stop signal, and the start handshake. */
typedef struct uv_side {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    pd_registry *reg;
    worker *wk;        /* NULL without a job store */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 starting, 1 running, -1 failed */
    pd_err err;
} uv_side;

static void on_uv_stop(uv_async_t *a)
{
    uv_side *u = a->data;
    pd_registry_unwatch(u->reg);
    worker_unwatch(u->wk);
    uv_close((uv_handle_t *)a, NULL);
}

static void uv_started(uv_side *u, int state)
{
    pthread_mutex_lock(&u->mu);
    u->state = state;
    pthread_cond_signal(&u->cv);
    pthread_mutex_unlock(&u->mu);
}

static void *uv_main(void *arg)
{
    uv_side *u = arg;
    int rc = uv_loop_init(&u->loop);
    if (rc != 0) {
        pd_err_set(&u->err, PD_ESYS, "uv_loop_init: %s", uv_strerror(rc));
        uv_started(u, -1);
        return NULL;
    }
    u->stop.data = u;
    if ((rc = uv_async_init(&u->loop, &u->stop, on_uv_stop)) != 0) {
        pd_err_set(&u->err, PD_ESYS, "uv_async_init: %s", uv_strerror(rc));
        uv_loop_close(&u->loop);
        uv_started(u, -1);
        return NULL;
    }
    if (pd_registry_watch(u->reg, &u->loop, &u->err) < 0) {
        uv_close((uv_handle_t *)&u->stop, NULL);
        uv_run(&u->loop, UV_RUN_DEFAULT);
        uv_loop_close(&u->loop);
        uv_started(u, -1);
        return NULL;
    }
    if (u->wk && worker_watch(u->wk, &u->loop, &u->err) < 0) {
        pd_registry_unwatch(u->reg);
        uv_close((uv_handle_t *)&u->stop, NULL);
        uv_run(&u->loop, UV_RUN_DEFAULT);
        uv_loop_close(&u->loop);
        uv_started(u, -1);
        return NULL;
    }
    uv_started(u, 1);
    uv_run(&u->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&u->loop) != 0) PD_LOGW("uv loop closed with handles still open");
    return NULL;
}

/* Starts the uv thread and waits until the watcher (and the worker's
 * handles, when wk is not NULL) run. 0 or -1 (logged). */
static int uv_side_start(uv_side *u, pd_registry *reg, worker *wk)
{
    memset(u, 0, sizeof *u);
    u->reg = reg;
    u->wk = wk;
    if (pthread_mutex_init(&u->mu, NULL) != 0) return -1;
    if (pthread_cond_init(&u->cv, NULL) != 0) {
        pthread_mutex_destroy(&u->mu);
        return -1;
    }
    int rc = pthread_create(&u->thread, NULL, uv_main, u);
    if (rc != 0) {
        PD_LOGE("cannot start the registry watcher thread: %s", strerror(rc));
        return -1;
    }
    pthread_mutex_lock(&u->mu);
    while (u->state == 0) pthread_cond_wait(&u->cv, &u->mu);
    int state = u->state;
    pthread_mutex_unlock(&u->mu);
    if (state < 0) {
        pthread_join(u->thread, NULL);
        PD_LOGE("uv side (registry watcher, training worker): %s", u->err.msg);
        return -1;
    }
    return 0;
}

static void uv_side_stop(uv_side *u)
{
    uv_async_send(&u->stop);
    pthread_join(u->thread, NULL);
    pthread_cond_destroy(&u->cv);
    pthread_mutex_destroy(&u->mu);
}

/* The worker's yield test: 1 while completions wait or run. */
static int serving_busy(void *user_data)
{
    srv *s = user_data;
    pd_sched_stats ss;
    int busy = 0;
    pthread_rwlock_rdlock(&s->sched_lock);
    if (s->sched) {
        pd_sched_stats_get(s->sched, &ss);
        busy = ss.queued > 0 || ss.running > 0;
    }
    pthread_rwlock_unlock(&s->sched_lock);
    return busy;
}

/* mkdir -p path (0755). 0 or -1 with errno. */
static int make_dirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) < 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static int usage_error(const char *msg)
{
    fprintf(stderr, "prefixd: %s\nusage:\n%s", msg, config_usage);
    return 2;
}

/* Config file + flags into cfg. Returns 0, or the exit status. */
static int configure(srv_config *cfg, int argc, char **argv)
{
    char err[1024];
    const char *path = NULL;
    if (config_defaults(cfg) < 0) return cli_fail("out of memory");
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage:\n%s", config_usage);
            return -1;
        }
    if (config_flags(cfg, argc, argv, 0, &path, err, sizeof err) < 0) return usage_error(err);
    if (!path && access(DEFAULT_CONFIG, R_OK) == 0) path = DEFAULT_CONFIG;
    if (path && config_load(cfg, path, err, sizeof err) < 0) return cli_fail("%s", err);
    if (config_flags(cfg, argc, argv, 1, &path, err, sizeof err) < 0) return usage_error(err);
    const char *env_store = getenv("PREFIXD_JOB_STORE"); /* the config file's wins */
    if (!cfg->job_store && env_store && *env_store && !(cfg->job_store = strdup(env_store)))
        return cli_fail("out of memory");
    if (config_check(cfg, err, sizeof err) < 0) return cli_fail("%s", err);
    if (path) PD_LOGI("configuration: %s", path);
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    srv_config cfg;
    int rc = configure(&cfg, argc, argv);
    if (rc != 0) {
        config_free(&cfg);
        return rc < 0 ? 0 : rc;
    }
    pd_log_set_level((pd_log_level)pd_log_level_parse(cfg.log_level));
    cli_set_threads((int)cfg.threads);

    /* SIGINT/SIGTERM: a handler that only writes the signal number to a
     * pipe (a process-wide handler, so whichever thread the kernel picks --
     * BLAS starts its threads before main -- the signal never kills us);
     * main reads the pipe once the server is up. Writes to a closed socket
     * must fail with EPIPE, not kill the process. */
    int sig_pipe[2];
    if (pipe2(sig_pipe, O_CLOEXEC) < 0) {
        config_free(&cfg);
        return cli_fail("pipe: %s", strerror(errno));
    }
    if (fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK) < 0) {
        close(sig_pipe[0]);
        close(sig_pipe[1]);
        config_free(&cfg);
        return cli_fail("fcntl: %s", strerror(errno));
    }
    signal_fd = sig_pipe[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    struct sigaction ign = sa;
    ign.sa_handler = SIG_IGN;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0 ||
        sigaction(SIGPIPE, &ign, NULL) < 0) {
        close(sig_pipe[0]);
        close(sig_pipe[1]);
        config_free(&cfg);
        return cli_fail("sigaction: %s", strerror(errno));
    }
    json_object_seed(0); /* before any thread makes JSON objects */

    int status = 1;
    int have_rwlock = 0, have_uv = 0;
    uv_side uv;
    srv *s = calloc(1, sizeof *s);
    if (!s) {
        config_free(&cfg);
        return cli_fail("out of memory");
    }
    s->cfg = &cfg;
    s->started = time(NULL);
    atomic_init(&s->ready, 0);
    atomic_init(&s->stopping, 0);
    atomic_init(&s->counter, (uint_fast64_t)s->started);
    atomic_init(&s->active, 0);
    if (!(s->mx = metrics_create())) {
        cli_fail("out of memory");
        goto done;
    }
    if (pthread_rwlock_init(&s->sched_lock, NULL) != 0) {
        cli_fail("pthread_rwlock_init failed");
        goto done;
    }
    have_rwlock = 1;

    if (http_start(s) < 0) goto done;
    PD_LOGI("listening on %s (port %u); loading the model", cfg.listen, (unsigned)s->port);

    pd_err err;
    pd_model_params mp = pd_model_default_params();
    mp.path = cfg.model;
    mp.tokenizer_path = cfg.tokenizer;
    if (pd_model_load(&mp, &s->model, &err) < 0) {
        PD_LOGE("%s", err.msg);
        goto done;
    }
    PD_LOGI("model %s: %s weights, %.1f MiB resident, %.1f MiB read per token",
            s->model->id, pd_ggml_type_name(s->model->weight_type),
            s->model->resident_bytes / 1048576.0, s->model->weight_bytes / 1048576.0);
    metrics_set_model(s->mx, s->model->resident_bytes, s->model->weight_bytes);
    int seq_len = s->model->cfg.seq_len;
    if (cfg.context > seq_len) {
        PD_LOGE("context: %ld tokens is more than the model's context length of %d", cfg.context,
                seq_len);
        goto done;
    }
    s->context = cfg.context > 0 ? (int)cfg.context : seq_len;
    if (cfg.data && make_dirs(cfg.data) < 0) {
        PD_LOGE("data directory '%s': %s", cfg.data, strerror(errno));
        goto done;
    }
    pd_registry_params rp = pd_registry_default_params();
    rp.dir = cfg.registry;
    rp.budget_bytes = (size_t)cfg.registry_budget_mb << 20;
    rp.rescan_ms = (int)cfg.registry_rescan_ms;
    const pd_kv_dtype kv_dtype = strcmp(cfg.kv_dtype, "f16") ? PD_KV_F32 : PD_KV_F16;
    rp.kv_dtype = kv_dtype;
    if (pd_registry_create(&rp, s->model, &s->reg, &err) < 0) {
        PD_LOGE("registry: %s", err.msg);
        goto done;
    }
    if (cfg.data) {
        if (pd_jobstore_open_db(cfg.data, cfg.job_store, &s->js, &err) < 0) {
            PD_LOGE("job store: %s", err.msg);
            goto done;
        }
        pd_jobstore_set_lease_seconds(s->js, (int)cfg.job_lease_s);
        worker_params wp = {
            .js = s->js,
            .model = s->model,
            .reg = s->reg,
            .serving_busy = serving_busy,
            .user_data = s,
            .train_threads = (int)cfg.train_threads,
            .nice = (int)cfg.train_nice,
            .checkpoint_every = (int)cfg.checkpoint_every,
            .eval_every = (int)cfg.train_eval_every,
            .metrics_every = (int)cfg.train_metrics_every,
            .max_pause_ms = (int)cfg.train_max_pause_ms,
            .poll_ms = (int)cfg.job_poll_ms,
            .lease_s = (int)cfg.job_lease_s,
            .training_jobs = (int)cfg.training_jobs,
        };
        if (worker_create(&wp, &s->wk, &err) < 0) {
            PD_LOGE("training worker: %s", err.msg);
            goto done;
        }
    } else {
        PD_LOGW("no data directory: the fine-tuning API is disabled");
    }
    if (uv_side_start(&uv, s->reg, s->wk) < 0) goto done;
    have_uv = 1;
    pd_sched_params sp = pd_sched_default_params();
    sp.max_seqs = (int)cfg.max_seqs;
    sp.max_step_tokens = (int)cfg.max_step_tokens;
    sp.queue_limit = (int)cfg.queue_limit;
    sp.n_threads = (int)cfg.threads;
    sp.kv_budget = (size_t)cfg.kv_budget_mb << 20;
    sp.kv_dtype = kv_dtype;
    if (pd_sched_create(s->model, &sp, &s->sched, &err) < 0) {
        PD_LOGE("scheduler: %s", err.msg);
        goto done;
    }
    pd_registry_stats rs;
    pd_registry_stats_get(s->reg, &rs);
    signal_serving = 1;
    atomic_store(&s->ready, 1);
    pd_sched_stats kvs;
    pd_sched_stats_get(s->sched, &kvs);
    PD_LOGI("ready: model %s (fingerprint %s), %d task(s) in %s, context %d tokens, "
            "KV cache %s: %d blocks of %zu bytes, %d API key(s)",
            s->model->id, s->model->fingerprint_hex, rs.n_tasks, cfg.registry, s->context,
            pd_kv_dtype_name(kv_dtype), kvs.kv_blocks_total, kvs.kv_block_bytes, cfg.n_keys);
    worker_kick(s->wk);

    unsigned char sig = 0;
    ssize_t got;
    while ((got = read(sig_pipe[0], &sig, 1)) < 0 && errno == EINTR) {}
    if (got != 1) PD_LOGE("signal pipe: %s", got < 0 ? strerror(errno) : "closed");
    PD_LOGI("%s: shutting down (grace %ld ms)", sig == SIGINT ? "SIGINT" : "SIGTERM",
            cfg.shutdown_grace_ms);
    status = 0;

done:
    atomic_store(&s->stopping, 1);
    worker_stop(s->wk); /* training stops at its next step; serving finishes first */
    http_quiesce(s);
    if (have_rwlock) {
        pthread_rwlock_wrlock(&s->sched_lock);
        pd_sched *sched = s->sched;
        s->sched = NULL;
        pthread_rwlock_unlock(&s->sched_lock);
        pd_sched_free(sched, (int)cfg.shutdown_grace_ms);
    }
    /* every request has its answer now (finished or cancelled): let the
     * handlers write them before the connections are closed */
    int left = http_drain(s, DRAIN_MS);
    if (left > 0) PD_LOGW("%d request(s) still being answered at shutdown: closing them", left);
    http_stop(s);
    if (have_uv) uv_side_stop(&uv);
    worker_free(s->wk);
    pd_jobstore_close(s->js);
    pd_registry_free(s->reg);
    pd_model_free(s->model);
    metrics_free(s->mx);
    if (have_rwlock) pthread_rwlock_destroy(&s->sched_lock);
    free(s);
    config_free(&cfg);
    /* later signals stay harmless until exit: the handler keeps its pipe */
    close(sig_pipe[0]);
    if (status == 0) PD_LOGI("stopped");
    return status;
}
