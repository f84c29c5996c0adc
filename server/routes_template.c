/* routes_template.c — POST /apply-template {"messages", "add_generation_prompt"
 * (default true), "tools", "chat_template"} -> {"prompt": "…"}: the prompt a
 * chat request would give the model, as llama.cpp's server has it; and the
 * choice of template that every chat route shares (srv_chat_template). */
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "prefixd/chat.h"

int srv_chat_template(const srv *s, const char *override, char **src, pd_err *err)
{
    *src = NULL;
    if (override) { /* a request names a built-in or sends the source itself */
        const char *b = pd_chat_builtin(override);
        *src = strdup(b ? b : override);
        return *src ? PD_OK : pd_err_set(err, PD_ENOMEM, "out of memory");
    }
    if (s->cfg->chat_template) return pd_chat_template_load(s->cfg->chat_template, src, err);
    const char *own = s->model ? pd_chat_model_template(s->model->tok) : NULL;
    *src = strdup(own ? own : pd_chat_builtin(PD_CHAT_DEFAULT));
    return *src ? PD_OK : pd_err_set(err, PD_ENOMEM, "out of memory");
}

int srv_chat_render(const srv *s, const json_t *body, int add_generation_prompt, char **prompt,
                    const char **param, pd_err *err)
{
    *prompt = NULL;
    *param = NULL;
    json_t *messages = json_object_get(body, "messages"), *tools = json_object_get(body, "tools");
    json_t *ct = json_object_get(body, "chat_template");
    if (!messages || json_is_null(messages)) {
        *param = "messages";
        return pd_err_set(err, PD_ENOTFOUND,
                          "You must provide 'messages': an array of {role, content} objects.");
    }
    if (!json_is_array(messages) || !json_array_size(messages)) {
        *param = "messages";
        return pd_err_set(err, PD_EINVAL, "'messages' must be a non-empty array");
    }
    if (tools && !json_is_array(tools) && !json_is_null(tools)) {
        *param = "tools";
        return pd_err_set(err, PD_EINVAL, "'tools' must be an array");
    }
    if (ct && !json_is_string(ct) && !json_is_null(ct)) {
        *param = "chat_template";
        return pd_err_set(err, PD_EINVAL, "'chat_template' must be a string");
    }
    char *src;
    int rc = srv_chat_template(s, json_is_string(ct) ? json_string_value(ct) : NULL, &src, err);
    if (rc < 0) return rc;
    pd_chat_params cp = pd_chat_default_params();
    cp.add_generation_prompt = add_generation_prompt;
    cp.tools = json_is_array(tools) ? tools : NULL;
    pd_chat_model_tokens(s->model->tok, &cp);
    rc = pd_chat_render(src, messages, &cp, prompt, err);
    free(src);
    if (rc < 0) *param = "messages";
    return rc;
}

enum MHD_Result route_apply_template(http_req *r)
{
    enum MHD_Result ret;
    json_t *body = http_body_json(r, &ret);
    if (!body) return ret;
    json_t *agp = json_object_get(body, "add_generation_prompt");
    if (agp && !json_is_boolean(agp)) {
        json_decref(body);
        return http_send_error(r, 400, "add_generation_prompt", "invalid_type",
                               "'add_generation_prompt' must be a boolean");
    }
    char *prompt;
    const char *param;
    pd_err err;
    int rc = srv_chat_render(r->s, body, agp ? json_is_true(agp) : 1, &prompt, &param, &err);
    json_decref(body);
    if (rc == PD_ENOMEM) return http_send_error(r, 503, NULL, "out_of_memory", "The server is out of memory.");
    if (rc < 0) {
        int missing = param && !strcmp(param, "messages") && rc == PD_ENOTFOUND;
        return http_send_error(r, 400, param, missing ? "missing_required_parameter" : "invalid_value",
                               "%s", err.msg);
    }
    json_t *res = json_object();
    if (!res || json_object_set_new(res, "prompt", json_string(prompt)) < 0) {
        free(prompt);
        json_decref(res);
        return http_send_error(r, 400, "messages", "invalid_value",
                               "the rendered prompt is not valid UTF-8");
    }
    free(prompt);
    return http_send_json(r, 200, res);
}
