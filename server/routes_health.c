/* routes_health.c — GET /health (503 {"status":"loading"} until the model,
 * registry and scheduler are up, 503 {"status":"stopping"} once shutdown has
 * begun, else 200 {"status":"ok"}) and GET /metrics (Prometheus text format
 * 0.0.4). Both are open: no API key needed. */
#include "http.h"

enum MHD_Result route_health(http_req *r)
{
    srv *s = r->s;
    if (atomic_load(&s->stopping))
        return http_send_json(r, 503, json_pack("{s:s}", "status", "stopping"));
    if (!atomic_load(&s->ready))
        return http_send_json_hdr(r, 503, json_pack("{s:s}", "status", "loading"),
                                  MHD_HTTP_HEADER_RETRY_AFTER, "1");
    return http_send_json(r, 200, json_pack("{s:s,s:s}", "status", "ok", "model", s->model->id));
}

enum MHD_Result route_metrics(http_req *r)
{
    srv *s = r->s;
    int ready = atomic_load(&s->ready);
    pd_sched_stats ss;
    pd_registry_stats rs;
    int have_ss = 0;
    if (ready) {
        pthread_rwlock_rdlock(&s->sched_lock);
        if (s->sched) {
            pd_sched_stats_get(s->sched, &ss);
            have_ss = 1;
        }
        pthread_rwlock_unlock(&s->sched_lock);
        pd_registry_stats_get(s->reg, &rs);
    }
    hbuf out = {0};
    metrics_render(s->mx, have_ss ? &ss : NULL, ready ? &rs : NULL, ready, &out);
    if (ready && s->wk) {
        worker_stats ws;
        worker_stats_get(s->wk, &ws);
        metrics_render_training(&ws, &out);
    }
    if (out.oom) {
        hbuf_free(&out);
        return http_send_error(r, 503, NULL, "out_of_memory", "Out of memory.");
    }
    enum MHD_Result ret = http_send_text(r, 200, "text/plain; version=0.0.4; charset=utf-8",
                                         out.p ? out.p : "", out.len);
    hbuf_free(&out);
    return ret;
}
