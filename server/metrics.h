/* metrics.h — the server's own counters (per task, mutex-protected) and the
 * Prometheus text exposition (format 0.0.4) of them together with the
 * scheduler's and the registry's statistics. Thread-safe: any handler thread
 * may record; /metrics renders. */
#ifndef PREFIXD_SERVER_METRICS_H
#define PREFIXD_SERVER_METRICS_H

#include <stdint.h>

#include "prefixd/registry.h"
#include "prefixd/scheduler.h"
#include "worker.h"

typedef struct metrics metrics;
struct hbuf;

/* New, empty metrics; NULL on oom. */
metrics *metrics_create(void);
void metrics_free(metrics *m); /* NULL: no-op */

/* One finished completion request. task: the label ("" is shown as
 * "_none"); status: the HTTP status sent, or 499 when the client went away;
 * latency/ttft in seconds (ttft < 0: no token was produced). Returns 0, or
 * -1 on oom (the sample is dropped). */
int metrics_request(metrics *m, const char *task, int status, uint64_t prompt_tokens,
                    uint64_t completion_tokens, double latency, double ttft);

/* One HTTP response (any route), counted by method, route pattern and
 * status. method and route must be static strings (labels of the routing
 * table, or "other"). */
void metrics_http(metrics *m, const char *method, const char *route, int status);

/* Records the loaded model's weight bytes (pd_model.resident_bytes and
 * weight_bytes) for the gauges; any thread. */
void metrics_set_model(metrics *m, uint64_t resident_bytes, uint64_t per_token_bytes);

/* Appends the whole exposition to out: the server counters, and the
 * scheduler / registry figures when the pointers are not NULL. */
void metrics_render(metrics *m, const pd_sched_stats *ss, const pd_registry_stats *rs,
                    int ready, struct hbuf *out);

/* Appends the training worker's figures (ws borrowed) to out. */
void metrics_render_training(const worker_stats *ws, struct hbuf *out);

#endif
