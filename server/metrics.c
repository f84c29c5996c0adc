/* metrics.c — per-task request counters and histograms behind one mutex,
 * per-route HTTP counters, and the Prometheus text exposition (format 0.0.4)
 * of them plus the scheduler's and the registry's statistics.
 *
 * Label cardinality stays bounded: task labels are only ever the base
 * model's id, a servable task's name, or "_none" (the request never got as far
 * as naming a valid model); route labels are the routing table's patterns. */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* Upper bounds (seconds) of the latency and time-to-first-token buckets. */
static const double le_s[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                              1,     2.5,  5,     10,   30,  60,  120};
#define N_LE ((int)(sizeof le_s / sizeof le_s[0]))
#define N_STATUS 16

typedef struct hist {
    uint64_t bucket[N_LE]; /* observations <= le_s[i] (not cumulative) */
    uint64_t count;
    double sum;
} hist;

typedef struct task_mx {
    char task[PD_TASK_NAME_MAX + 1];
    int status[N_STATUS];     /* HTTP statuses seen */
    uint64_t by_status[N_STATUS];
    int n_status;
    uint64_t prompt_tokens, completion_tokens;
    hist latency, ttft;
} task_mx;

typedef struct route_mx {
    const char *method, *route; /* static strings */
    int status;
    uint64_t n;
} route_mx;

struct metrics {
    pthread_mutex_t mu;
    task_mx *tasks; /* n_tasks entries, in order of first sight */
    int n_tasks, cap_tasks;
    route_mx *routes;
    int n_routes, cap_routes;
    _Atomic uint64_t weight_resident; /* set once the model is loaded */
    _Atomic uint64_t weight_per_token;
};

metrics *metrics_create(void)
{
    metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

void metrics_free(metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m->tasks);
    free(m->routes);
    free(m);
}

static void observe(hist *h, double v)
{
    for (int i = 0; i < N_LE; i++)
        if (v <= le_s[i]) {
            h->bucket[i]++;
            break;
        }
    h->count++;
    h->sum += v;
}

/* The entry of task, created when missing; NULL on oom. Under mu. */
static task_mx *task_entry(metrics *m, const char *task)
{
    for (int i = 0; i < m->n_tasks; i++)
        if (!strcmp(m->tasks[i].task, task)) return &m->tasks[i];
    if (m->n_tasks == m->cap_tasks) {
        int cap = m->cap_tasks ? 2 * m->cap_tasks : 16;
        task_mx *t = realloc(m->tasks, (size_t)cap * sizeof *t);
        if (!t) return NULL;
        m->tasks = t;
        m->cap_tasks = cap;
    }
    task_mx *t = &m->tasks[m->n_tasks++];
    memset(t, 0, sizeof *t);
    snprintf(t->task, sizeof t->task, "%s", task);
    return t;
}

int metrics_request(metrics *m, const char *task, int status, uint64_t prompt_tokens,
                    uint64_t completion_tokens, double latency, double ttft)
{
    if (!task || !*task) task = "_none";
    pthread_mutex_lock(&m->mu);
    task_mx *t = task_entry(m, task);
    if (!t) {
        pthread_mutex_unlock(&m->mu);
        return -1;
    }
    int i = 0;
    while (i < t->n_status && t->status[i] != status) i++;
    if (i == t->n_status && i < N_STATUS) t->status[t->n_status++] = status;
    if (i < N_STATUS) t->by_status[i]++;
    t->prompt_tokens += prompt_tokens;
    t->completion_tokens += completion_tokens;
    if (status == 200) {
        observe(&t->latency, latency);
        if (ttft >= 0) observe(&t->ttft, ttft);
    }
    pthread_mutex_unlock(&m->mu);
    return 0;
}

void metrics_http(metrics *m, const char *method, const char *route, int status)
{
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < m->n_routes; i++)
        if (m->routes[i].status == status && !strcmp(m->routes[i].route, route) &&
            !strcmp(m->routes[i].method, method)) {
            m->routes[i].n++;
            pthread_mutex_unlock(&m->mu);
            return;
        }
    if (m->n_routes == m->cap_routes) {
        int cap = m->cap_routes ? 2 * m->cap_routes : 32;
        route_mx *r = realloc(m->routes, (size_t)cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&m->mu);
            return;
        }
        m->routes = r;
        m->cap_routes = cap;
    }
    m->routes[m->n_routes++] = (route_mx){method, route, status, 1};
    pthread_mutex_unlock(&m->mu);
}

/* Appends s as a Prometheus label value: \, " and newline escaped. */
static void label(hbuf *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\') hbuf_str(out, "\\\\");
        else if (*s == '"') hbuf_str(out, "\\\"");
        else if (*s == '\n') hbuf_str(out, "\\n");
        else hbuf_add(out, s, 1);
    }
}

static void head(hbuf *out, const char *name, const char *type, const char *help)
{
    hbuf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void task_hist(hbuf *out, const char *name, const task_mx *t, const hist *h)
{
    uint64_t cum = 0;
    for (int i = 0; i < N_LE; i++) {
        cum += h->bucket[i];
        hbuf_printf(out, "%s_bucket{task=\"", name);
        label(out, t->task);
        hbuf_printf(out, "\",le=\"%g\"} %llu\n", le_s[i], (unsigned long long)cum);
    }
    hbuf_printf(out, "%s_bucket{task=\"", name);
    label(out, t->task);
    hbuf_printf(out, "\",le=\"+Inf\"} %llu\n", (unsigned long long)h->count);
    hbuf_printf(out, "%s_sum{task=\"", name);
    label(out, t->task);
    hbuf_printf(out, "\"} %.6f\n", h->sum);
    hbuf_printf(out, "%s_count{task=\"", name);
    label(out, t->task);
    hbuf_printf(out, "\"} %llu\n", (unsigned long long)h->count);
}

static void task_counter(hbuf *out, const char *name, const task_mx *t, uint64_t v)
{
    hbuf_printf(out, "%s{task=\"", name);
    label(out, t->task);
    hbuf_printf(out, "\"} %llu\n", (unsigned long long)v);
}

static void scalar(hbuf *out, const char *name, const char *type, const char *help, uint64_t v)
{
    head(out, name, type, help);
    hbuf_printf(out, "%s %llu\n", name, (unsigned long long)v);
}

void metrics_set_model(metrics *m, uint64_t resident_bytes, uint64_t per_token_bytes)
{
    atomic_store(&m->weight_resident, resident_bytes);
    atomic_store(&m->weight_per_token, per_token_bytes);
}

void metrics_render(metrics *m, const pd_sched_stats *ss, const pd_registry_stats *rs,
                    int ready, hbuf *out)
{
    scalar(out, "prefixd_ready", "gauge", "1 once the model, registry and scheduler are up.",
           (uint64_t)(ready != 0));
    scalar(out, "prefixd_model_weight_resident_bytes", "gauge",
           "Bytes of model weights held in memory, as stored (0 before the model is loaded).",
           atomic_load(&m->weight_resident));
    scalar(out, "prefixd_model_weight_read_bytes_per_token", "gauge",
           "Bytes of model weights read per decoded token.", atomic_load(&m->weight_per_token));

    pthread_mutex_lock(&m->mu);
    head(out, "prefixd_requests_total", "counter",
         "Completion requests by task and HTTP status (499: the client went away).");
    for (int i = 0; i < m->n_tasks; i++)
        for (int j = 0; j < m->tasks[i].n_status; j++) {
            hbuf_str(out, "prefixd_requests_total{task=\"");
            label(out, m->tasks[i].task);
            hbuf_printf(out, "\",status=\"%d\"} %llu\n", m->tasks[i].status[j],
                        (unsigned long long)m->tasks[i].by_status[j]);
        }
    head(out, "prefixd_tokens_generated_total", "counter",
         "Completion tokens generated, by task.");
    for (int i = 0; i < m->n_tasks; i++)
        task_counter(out, "prefixd_tokens_generated_total", &m->tasks[i],
                     m->tasks[i].completion_tokens);
    head(out, "prefixd_prompt_tokens_total", "counter", "Prompt tokens processed, by task.");
    for (int i = 0; i < m->n_tasks; i++)
        task_counter(out, "prefixd_prompt_tokens_total", &m->tasks[i],
                     m->tasks[i].prompt_tokens);
    head(out, "prefixd_request_duration_seconds", "histogram",
         "Latency of successful completion requests, arrival to last byte.");
    for (int i = 0; i < m->n_tasks; i++)
        task_hist(out, "prefixd_request_duration_seconds", &m->tasks[i], &m->tasks[i].latency);
    head(out, "prefixd_time_to_first_token_seconds", "histogram",
         "Time from arrival to the first generated token of successful requests.");
    for (int i = 0; i < m->n_tasks; i++)
        task_hist(out, "prefixd_time_to_first_token_seconds", &m->tasks[i], &m->tasks[i].ttft);
    head(out, "prefixd_http_requests_total", "counter",
         "HTTP responses by method, route and status.");
    for (int i = 0; i < m->n_routes; i++) {
        hbuf_str(out, "prefixd_http_requests_total{method=\"");
        label(out, m->routes[i].method);
        hbuf_str(out, "\",route=\"");
        label(out, m->routes[i].route);
        hbuf_printf(out, "\",status=\"%d\"} %llu\n", m->routes[i].status,
                    (unsigned long long)m->routes[i].n);
    }
    pthread_mutex_unlock(&m->mu);

    if (ss) {
        scalar(out, "prefixd_queue_depth", "gauge", "Requests waiting for the engine.",
               (uint64_t)(ss->queued > 0 ? ss->queued : 0));
        scalar(out, "prefixd_running_sequences", "gauge", "Sequences in the engine.",
               (uint64_t)(ss->running > 0 ? ss->running : 0));
        head(out, "prefixd_batch_size", "histogram", "Tokens per engine step.");
        uint64_t cum = 0;
        for (int i = 0; i < 7; i++) {
            cum += ss->batch_hist[i];
            hbuf_printf(out, "prefixd_batch_size_bucket{le=\"%d\"} %llu\n", 1 << i,
                        (unsigned long long)cum);
        }
        hbuf_printf(out, "prefixd_batch_size_bucket{le=\"+Inf\"} %llu\n",
                    (unsigned long long)(cum + ss->batch_hist[7]));
        hbuf_printf(out, "prefixd_batch_size_sum %llu\nprefixd_batch_size_count %llu\n",
                    (unsigned long long)ss->step_tokens, (unsigned long long)ss->steps);
        scalar(out, "prefixd_engine_steps_total", "counter", "Engine steps run.", ss->steps);
        scalar(out, "prefixd_engine_tokens_generated_total", "counter",
               "Tokens sampled by the engine (all tasks).", ss->tokens_generated);
        scalar(out, "prefixd_engine_prompt_tokens_total", "counter",
               "Prompt tokens prefilled by the engine (all tasks).", ss->prompt_tokens);
        scalar(out, "prefixd_sequences_freed_total", "counter",
               "Sequences whose KV cache was freed.", ss->seqs_freed);
        scalar(out, "prefixd_cancelled_total", "counter",
               "Sequences stopped by a cancel (client gone, stop string, shutdown).",
               ss->cancelled);
        scalar(out, "prefixd_kv_blocks_total", "gauge", "Blocks in the KV cache pool.",
               (uint64_t)ss->kv_blocks_total);
        scalar(out, "prefixd_kv_blocks_used", "gauge", "KV blocks held by sequences now.",
               (uint64_t)ss->kv_blocks_used);
        scalar(out, "prefixd_kv_blocks_free", "gauge", "KV blocks held by no sequence.",
               (uint64_t)(ss->kv_blocks_total - ss->kv_blocks_used));
        scalar(out, "prefixd_kv_blocks_reserved", "gauge",
               "KV blocks promised to running sequences and not yet taken.",
               (uint64_t)ss->kv_blocks_reserved);
        scalar(out, "prefixd_kv_block_bytes", "gauge",
               "Bytes per KV block (16 tokens of every layer).", (uint64_t)ss->kv_block_bytes);
        hbuf_printf(out,
                    "# HELP prefixd_kv_dtype KV cache (and resident prefix) storage type.\n"
                    "# TYPE prefixd_kv_dtype gauge\nprefixd_kv_dtype{dtype=\"%s\"} 1\n",
                    pd_kv_dtype_name(ss->kv_dtype));
        scalar(out, "prefixd_kv_blocks_cached", "gauge",
               "Free KV blocks that still hold prompt-cache content (reused on a hit, evicted "
               "when needed).",
               (uint64_t)ss->kv_blocks_cached);
        scalar(out, "prefixd_prompt_cache_hits_total", "counter",
               "Requests that started from blocks of the prompt cache.", ss->cache_hits);
        scalar(out, "prefixd_prompt_cache_tokens_total", "counter",
               "Prompt tokens taken from the prompt cache instead of prefilled.",
               ss->cache_tokens);
        scalar(out, "prefixd_prompt_cache_evictions_total", "counter",
               "Prompt-cache blocks reused for other content.", ss->cache_evictions);
    }
    if (rs) {
        scalar(out, "prefixd_registry_tasks", "gauge", "Servable tasks in the registry.",
               (uint64_t)(rs->n_tasks > 0 ? rs->n_tasks : 0));
        scalar(out, "prefixd_registry_resident_prefixes", "gauge", "Prefixes loaded in memory.",
               (uint64_t)(rs->n_resident > 0 ? rs->n_resident : 0));
        scalar(out, "prefixd_registry_resident_bytes", "gauge",
               "Bytes of prefixes loaded in memory.", rs->resident_bytes);
        scalar(out, "prefixd_registry_loads_total", "counter",
               "Prefix files loaded (hot-loads and reloads).", rs->loads);
        scalar(out, "prefixd_registry_load_failures_total", "counter",
               "Invalid prefix files seen.", rs->load_failures);
        scalar(out, "prefixd_registry_evictions_total", "counter",
               "Prefixes dropped from memory by the budget.", rs->evictions);
        scalar(out, "prefixd_registry_removals_total", "counter",
               "Tasks removed from the registry.", rs->removals);
    }
}

void metrics_render_training(const worker_stats *ws, hbuf *out)
{
    scalar(out, "prefixd_training_active", "gauge", "1 while a fine-tuning job trains.",
           (uint64_t)(ws->active != 0));
    scalar(out, "prefixd_training_step", "gauge",
           "Step of the job training now (0 when none trains).", (uint64_t)(ws->step > 0 ? ws->step : 0));
    scalar(out, "prefixd_training_total_steps", "gauge",
           "Steps of the job training now (0 when none trains).",
           (uint64_t)(ws->total_steps > 0 ? ws->total_steps : 0));
    head(out, "prefixd_training_tokens_per_second", "gauge",
         "Training throughput of the job training now (0 when none trains), forward + backward.");
    hbuf_printf(out, "prefixd_training_tokens_per_second %.1f\n", ws->tokens_per_second);
    scalar(out, "prefixd_training_steps_total", "counter", "Training steps run (all jobs).",
           ws->steps);
    scalar(out, "prefixd_training_tokens_total", "counter",
           "Tokens trained on (all jobs, forward + backward).", ws->tokens);
    head(out, "prefixd_training_paused_seconds_total", "counter",
         "Time training waited at step boundaries while serving was busy.");
    hbuf_printf(out, "prefixd_training_paused_seconds_total %.3f\n", ws->paused_seconds);
    head(out, "prefixd_fine_tuning_jobs_total", "counter",
         "Fine-tuning jobs finished by this process, by outcome.");
    hbuf_printf(out, "prefixd_fine_tuning_jobs_total{status=\"succeeded\"} %llu\n",
                (unsigned long long)ws->succeeded);
    hbuf_printf(out, "prefixd_fine_tuning_jobs_total{status=\"failed\"} %llu\n",
                (unsigned long long)ws->failed);
    hbuf_printf(out, "prefixd_fine_tuning_jobs_total{status=\"cancelled\"} %llu\n",
                (unsigned long long)ws->cancelled);
}
