/* routes_models.c — GET /v1/models and GET /v1/models/{id}: the base model
 * and every servable task, in OpenAI's model-object shape. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

/* created_at ("2024-05-01T12:00:00Z") as Unix seconds, or fallback. */
static long long parse_created(const char *iso, long long fallback)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end) return fallback;
    time_t t = timegm(&tm);
    return t == (time_t)-1 ? fallback : (long long)t;
}

static json_t *model_json(const char *id, long long created, const char *parent)
{
    json_t *o = json_pack("{s:s,s:s,s:I,s:s}", "id", id, "object", "model", "created",
                          (json_int_t)created, "owned_by", "prefixd");
    if (o && parent) json_object_set_new(o, "parent", json_string(parent));
    return o;
}

static json_t *task_json(srv *s, const pd_registry_entry *e)
{
    return model_json(e->task, parse_created(e->created_at, (long long)s->started),
                      s->model->id);
}

/* Every registry entry (new array in *out, count returned), or -1 on oom. */
static int list_entries(pd_registry *reg, pd_registry_entry **out)
{
    int cap = 64;
    for (;;) {
        pd_registry_entry *e = malloc((size_t)cap * sizeof *e);
        if (!e) return -1;
        int n = pd_registry_list(reg, e, cap);
        if (n <= cap) {
            *out = e;
            return n;
        }
        free(e);
        cap = n + 16; /* tasks appeared in between: try again with room */
    }
}

enum MHD_Result route_models_list(http_req *r)
{
    srv *s = r->s;
    pd_registry_entry *e;
    int n = list_entries(s->reg, &e);
    if (n < 0) return http_send_error(r, 503, NULL, "out_of_memory", "Out of memory.");
    json_t *data = json_array();
    json_array_append_new(data, model_json(s->model->id, (long long)s->started, NULL));
    for (int i = 0; i < n; i++)
        if (strcmp(e[i].task, s->model->id) != 0) /* the base model's id wins */
            json_array_append_new(data, task_json(s, &e[i]));
    free(e);
    return http_send_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

enum MHD_Result route_models_get(http_req *r)
{
    srv *s = r->s;
    if (!strcmp(r->param, s->model->id))
        return http_send_json(r, 200, model_json(s->model->id, (long long)s->started, NULL));
    pd_registry_entry e;
    if (!pd_task_name_valid(r->param) || pd_registry_get(s->reg, r->param, &e) != PD_OK)
        return http_send_error(r, 404, "model", "model_not_found",
                               "The model '%s' does not exist.", r->param);
    return http_send_json(r, 200, task_json(s, &e));
}
