/* routes_prefixes.c — the registry over HTTP: GET /v1/prefixes,
 * GET/PUT/DELETE /v1/prefixes/{task}.
 *
 * PUT takes either a prefix file (the body is the safetensors bytes;
 * Content-Type application/octet-stream or anything not JSON), validated
 * against the base model and published atomically by pd_registry_put (a bad
 * file changes nothing: the old version keeps serving), or JSON
 * {"from_prompt": "text", "dtype": "f32" | "f16"}: the prefix is the KV
 * cache of the text run from BOS, its file written as F32 (default) or F16
 * (as the command line's --f16). That run is model math, so the handler submits it to the scheduler as
 * a prefix-build request (its prompt is prefilled on the engine thread, in
 * the same steps as completions) and waits for the result.
 *
 * GET /v1/prefixes/{task}?format=peft answers the prefix as an HF PEFT
 * prefix-tuning adapter: a tar of adapter_config.json and
 * adapter_model.safetensors (409 for a prefix that holds BOS). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http.h"
#include "prefixd/log.h"
#include "tar.h"

json_t *prefix_entry_json(const pd_registry_entry *e)
{
    return json_pack("{s:s,s:s,s:s,s:i,s:b,s:s,s:s,s:s,s:I,s:I,s:o,s:b}", "id", e->task,
                     "object", "prefix", "task", e->task, "num_virtual_tokens", e->n_tokens,
                     "has_bos", e->has_bos, "source", e->source, "base_fingerprint",
                     e->base_fingerprint, "created_at", e->created_at, "bytes",
                     (json_int_t)e->file_bytes, "requests", (json_int_t)e->requests,
                     "last_used_at",
                     e->last_used ? json_integer((json_int_t)e->last_used) : json_null(),
                     "resident", e->resident);
}

enum MHD_Result route_prefixes_list(http_req *r)
{
    int cap = 64, n;
    pd_registry_entry *e;
    for (;;) {
        if (!(e = malloc((size_t)cap * sizeof *e)))
            return http_send_error(r, 503, NULL, "out_of_memory", "Out of memory.");
        n = pd_registry_list(r->s->reg, e, cap);
        if (n <= cap) break;
        free(e);
        cap = n + 16;
    }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(data, prefix_entry_json(&e[i]));
    free(e);
    return http_send_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

static enum MHD_Result not_found(http_req *r)
{
    return http_send_error(r, 404, NULL, "prefix_not_found",
                           "No task named '%s' in the registry (GET /v1/prefixes lists them).",
                           r->param);
}

static unsigned status_of(int rc);

/* The prefix as a PEFT adapter: a tar of adapter_config.json and
 * adapter_model.safetensors (pd_prefix_export_peft). */
static enum MHD_Result send_peft(http_req *r)
{
    pd_prefix *p;
    pd_err err;
    int rc = pd_registry_acquire(r->s->reg, r->param, &p, &err);
    if (rc == PD_ENOTFOUND) return not_found(r);
    if (rc < 0) return http_send_error(r, status_of(rc), NULL, "prefix_unavailable", "%s", err.msg);
    char *config = NULL;
    void *tensors = NULL;
    size_t nc = 0, nt = 0;
    rc = pd_prefix_export_peft(p, r->s->model, &config, &nc, &tensors, &nt, &err);
    pd_prefix_release(p);
    if (rc < 0)
        return http_send_error(r, rc == PD_EUNSUPPORTED ? 409 : status_of(rc), "format",
                               rc == PD_EUNSUPPORTED ? "unsupported_prefix" : "export_failed",
                               "%s", err.msg);
    hbuf b = {0};
    time_t now = time(NULL);
    tar_add(&b, "adapter_config.json", config, nc, now);
    tar_add(&b, "adapter_model.safetensors", tensors, nt, now);
    tar_end(&b);
    free(config);
    free(tensors);
    if (b.oom) {
        hbuf_free(&b);
        return http_send_error(r, 503, NULL, "out_of_memory", "Out of memory.");
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(b.len, b.p, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        hbuf_free(&b);
        return MHD_NO;
    }
    char disp[512];
    snprintf(disp, sizeof disp, "attachment; filename=\"%.64s-peft.tar\"", r->param);
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/x-tar") !=
            MHD_YES ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_DISPOSITION, disp) != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return http_send_response(r, 200, resp);
}

/* A distilled prefix's figures from its file metadata (trainer.c), as
 * "distillation": {prompt_tokens, compression, valid_kl, base_kl,
 * top1_agreement, base_top1_agreement} (numbers; KL in nats per token, base:
 * the model without the prompt). Loads the prefix when it is not resident
 * (and counts that as a request); nothing is added when it cannot. */
static void add_distill_figures(http_req *r, json_t *o)
{
    pd_prefix *p;
    pd_err err;
    if (pd_registry_acquire(r->s->reg, r->param, &p, &err) < 0) return;
    const char *method = pd_prefix_meta_get(p, "method");
    if (method && !strcmp(method, "distill")) {
        static const char *const keys[][2] = {
            {"prompt_tokens", "distill_prompt_tokens"}, {"compression", "distill_compression"},
            {"valid_kl", "distill_valid_kl"},           {"base_kl", "distill_base_kl"},
            {"top1_agreement", "distill_top1_agreement"},
            {"base_top1_agreement", "distill_base_top1_agreement"},
            {"samples", "distill_samples"}};
        json_t *d = json_object();
        for (size_t i = 0; d && i < sizeof keys / sizeof *keys; i++) {
            const char *v = pd_prefix_meta_get(p, keys[i][1]);
            char *end;
            double x = v ? strtod(v, &end) : 0.0;
            if (v && end != v && !*end) json_object_set_new(d, keys[i][0], json_real(x));
        }
        if (d) json_object_set_new(o, "distillation", d);
    }
    pd_prefix_release(p);
}

enum MHD_Result route_prefixes_get(http_req *r)
{
    pd_registry_entry e;
    if (!pd_task_name_valid(r->param) || pd_registry_get(r->s->reg, r->param, &e) != PD_OK)
        return not_found(r);
    const char *format = http_query(r, "format");
    if (format && strcmp(format, "peft") != 0)
        return http_send_error(r, 400, "format", "invalid_value",
                               "format must be \"peft\" (a tar of adapter_config.json and "
                               "adapter_model.safetensors), or absent for the JSON entry.");
    if (format) return send_peft(r);
    json_t *o = prefix_entry_json(&e);
    if (o && !strcmp(e.source, "trained")) add_distill_figures(r, o);
    return http_send_json(r, 200, o);
}

/* The HTTP status of a registry / prefix failure. */
static unsigned status_of(int rc)
{
    switch (rc) {
    case PD_ENOMEM: return 503;
    case PD_EIO:
    case PD_ESYS: return 500;
    case PD_EBUSY: return 429;
    case PD_ECANCELLED: return 503;
    case PD_ENOTFOUND: return 404;
    default: return 400;
    }
}

/* Builds the prefix of text on the scheduler's engine thread and publishes
 * it. PD_EBUSY when the queue is full, PD_ECANCELLED when shutting down. */
static int build_from_prompt(srv *s, const char *task, const char *text, int f16, pd_err *err)
{
    const int max = s->model->cfg.seq_len - 1;
    int32_t *toks = malloc((size_t)max * sizeof *toks);
    if (!toks) return pd_err_set(err, PD_ENOMEM, "out of memory");
    int n = pd_tokenizer_encode(s->model->tok, text, strlen(text), 1, 0, toks, max);
    if (n < 1 || n > max) {
        free(toks);
        return pd_err_set(err, PD_ERANGE,
                          "\"from_prompt\" encodes to %d tokens; a prefix holds 1 to %d", n, max);
    }
    pd_request *rq;
    int rc = pd_request_create(toks, n, 1, &rq, err);
    free(toks);
    if (rc < 0) return rc;
    rq->build_prefix = 1;
    size_t tl = strlen(task); /* valid names are at most PD_TASK_NAME_MAX */
    if (tl >= sizeof rq->build_task) tl = sizeof rq->build_task - 1;
    memcpy(rq->build_task, task, tl);
    rq->build_task[tl] = 0;
    pthread_rwlock_rdlock(&s->sched_lock);
    rc = s->sched ? pd_sched_submit(s->sched, rq, err)
                  : pd_err_set(err, PD_ECANCELLED, "the server is shutting down");
    pthread_rwlock_unlock(&s->sched_lock);
    if (rc == PD_OK) {
        while (pd_request_wait(rq, 1 << 30, 1000) >= 0) {
            pthread_mutex_lock(&rq->mu);
            int done = rq->state == PD_REQ_DONE;
            pthread_mutex_unlock(&rq->mu);
            if (done) break;
        }
        if (rq->built)
            rc = pd_registry_put_prefix_as(s->reg, rq->built, f16, err);
        else
            rc = pd_err_set(err, rq->finish == PD_FINISH_REASON_CANCELLED ? PD_ECANCELLED : PD_EIO,
                            "%s", rq->error[0] ? rq->error : "the prefix build did not finish");
    }
    pd_request_release(rq);
    return rc;
}

static int is_json(http_req *r)
{
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ct) return !strncasecmp(ct, "application/json", 16);
    return r->body.len > 0 && r->body.p[0] == '{'; /* a safetensors file starts with a length */
}

enum MHD_Result route_prefixes_put(http_req *r)
{
    srv *s = r->s;
    const char *task = r->param;
    if (!pd_task_name_valid(task))
        return http_send_error(r, 400, "task", "invalid_task_name",
                               "'%s' is not a valid task name: use 1 to 64 characters from "
                               "[A-Za-z0-9._-], starting with a letter or digit.",
                               task);
    if (!strcmp(task, s->model->id))
        return http_send_error(r, 409, "task", "name_conflict",
                               "'%s' is the base model's id; choose another task name.", task);
    if (r->body.len == 0)
        return http_send_error(r, 400, NULL, "empty_body",
                               "Send a prefix file (Content-Type: application/octet-stream) or "
                               "JSON {\"from_prompt\": \"text\"}.");
    pd_registry_entry old;
    int existed = pd_registry_get(s->reg, task, &old) == PD_OK;
    pd_err err;
    pd_err_clear(&err);
    int rc;
    if (is_json(r)) {
        enum MHD_Result ret;
        json_t *body = http_body_json(r, &ret);
        if (!body) return ret;
        const char *key;
        json_t *v, *fp = NULL, *dt = NULL;
        json_object_foreach(body, key, v) {
            if (!strcmp(key, "dtype")) {
                dt = v;
                continue;
            }
            if (strcmp(key, "from_prompt") != 0) {
                enum MHD_Result e = http_send_error(r, 400, key, "unknown_parameter",
                                                    "Unknown field '%s': the JSON form of PUT "
                                                    "/v1/prefixes/{task} takes only "
                                                    "\"from_prompt\" and \"dtype\".",
                                                    key);
                json_decref(body);
                return e;
            }
            fp = v;
        }
        int f16 = 0;
        if (dt && (!json_is_string(dt) || (strcmp(json_string_value(dt), "f16") != 0 &&
                                           strcmp(json_string_value(dt), "f32") != 0))) {
            json_decref(body);
            return http_send_error(r, 400, "dtype", "invalid_value",
                                   "\"dtype\" must be \"f32\" (the default) or \"f16\".");
        }
        if (dt) f16 = !strcmp(json_string_value(dt), "f16");
        if (!fp || !json_is_string(fp) || json_string_length(fp) == 0 ||
            strlen(json_string_value(fp)) != json_string_length(fp)) {
            json_decref(body);
            return http_send_error(r, 400, "from_prompt", "invalid_value",
                                   "\"from_prompt\" must be a non-empty string (without NUL "
                                   "characters).");
        }
        size_t len = json_string_length(fp);
        if (len > (size_t)s->context * 8) { /* far more text than the context can hold */
            json_decref(body);
            return http_send_error(r, 400, "from_prompt", "context_length_exceeded",
                                   "\"from_prompt\" is %zu bytes: far longer than the context "
                                   "of %d tokens.",
                                   len, s->context);
        }
        int32_t *toks = malloc((len + 3) * sizeof *toks);
        int n = toks ? pd_tokenizer_encode(s->model->tok, json_string_value(fp), len, 1, 0, toks,
                                           (int)len + 3)
                     : -1;
        free(toks);
        if (n >= s->context) {
            json_decref(body);
            return http_send_error(r, 400, "from_prompt", "context_length_exceeded",
                                   "\"from_prompt\" is %d tokens; a prefix must leave room in "
                                   "the context of %d tokens for the request (at most %d).",
                                   n, s->context, s->context - 2);
        }
        rc = build_from_prompt(s, task, json_string_value(fp), f16, &err);
        json_decref(body);
    } else {
        rc = pd_registry_put(s->reg, task, r->body.p, r->body.len, &err);
    }
    if (rc < 0) {
        PD_LOGW("PUT prefix '%s' refused: %s", task, err.msg);
        return http_send_error(r, status_of(rc), NULL, "invalid_prefix", "%s",
                               err.msg[0] ? err.msg : pd_strerror(rc));
    }
    pd_registry_entry e;
    if (pd_registry_get(s->reg, task, &e) != PD_OK) /* a DELETE (or rm) came right after */
        return http_send_error(r, 409, NULL, "concurrent_delete",
                               "The prefix '%s' was written, then removed by a concurrent "
                               "request before this one could answer.",
                               task);
    PD_LOGI("prefix '%s' %s over HTTP (P = %d, source %s)", task,
            existed ? "replaced" : "created", e.n_tokens, e.source);
    return http_send_json(r, existed ? 200 : 201, prefix_entry_json(&e));
}

enum MHD_Result route_prefixes_delete(http_req *r)
{
    pd_err err;
    if (!pd_task_name_valid(r->param)) return not_found(r);
    int rc = pd_registry_delete(r->s->reg, r->param, &err);
    if (rc == PD_ENOTFOUND) return not_found(r);
    if (rc < 0)
        return http_send_error(r, status_of(rc), NULL, "delete_failed", "%s", err.msg);
    PD_LOGI("prefix '%s' deleted over HTTP", r->param);
    return http_send_json(r, 200, json_pack("{s:s,s:s,s:b}", "id", r->param, "object", "prefix",
                                            "deleted", 1));
}
