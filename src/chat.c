/* chat.c — conversations into prompts with a chat template (contracts in
 * prefixd/chat.h): message checks and normalization, the context the
 * template sees, and the built-in templates. */
#include "prefixd/chat.h"

#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"
#include "prefixd/jinja.h"

/* ChatML, the default: what most instruct models without a template of
 * their own were tuned on. */
static const char CHATML[] =
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n";

/* Llama 3 without tools. */
static const char LLAMA3[] =
    "{{- bos_token -}}\n"
    "{%- for message in messages -%}\n"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] or '') | trim + '<|eot_id|>' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "{%- endif -%}\n";

/* Llama 2 chat: the system message folded into the first user turn. */
static const char LLAMA2[] =
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "{%- set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' -%}\n"
    "{%- set messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "{%- set system = '' -%}\n"
    "{%- endif -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['role'] == 'user' -%}\n"
    "{{- bos_token + '[INST] ' + (system if loop.first else '') + (message['content'] or '') | trim + ' [/INST]' -}}\n"
    "{%- elif message['role'] == 'assistant' -%}\n"
    "{{- ' ' + (message['content'] or '') | trim + ' ' + eos_token -}}\n"
    "{%- else -%}\n"
    "{{- raise_exception('llama2 template: role ' + message['role'] + ' is not supported') -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n";

/* Gemma: no system role; a system message is prepended to the first user
 * turn. */
static const char GEMMA[] =
    "{{- bos_token -}}\n"
    "{%- set ns = namespace(system='') -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if message['role'] == 'system' -%}\n"
    "{%- set ns.system = (message['content'] or '') + '\\n\\n' -%}\n"
    "{%- else -%}\n"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "{{- '<start_of_turn>' + role + '\\n' + ns.system + (message['content'] or '') | trim + '<end_of_turn>\\n' -}}\n"
    "{%- set ns.system = '' -%}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<start_of_turn>model\\n' -}}\n"
    "{%- endif -%}\n";

static const struct { const char *name, *src; } BUILTINS[] = {
    {"chatml", CHATML}, {"llama3", LLAMA3}, {"llama2", LLAMA2}, {"gemma", GEMMA}};

pd_chat_params pd_chat_default_params(void)
{
    return (pd_chat_params){.add_generation_prompt = 1, .now = -1};
}

const char *pd_chat_builtin(const char *name)
{
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof BUILTINS / sizeof *BUILTINS; i++)
        if (!strcmp(name, BUILTINS[i].name)) return BUILTINS[i].src;
    return NULL;
}

#define TEMPLATE_MAX_BYTES (1u << 20)

int pd_chat_template_load(const char *spec, char **src, pd_err *err)
{
    PD_ASSERT(spec && src);
    *src = NULL;
    const char *b = pd_chat_builtin(spec);
    if (b) {
        *src = strdup(b);
        return *src ? PD_OK : pd_err_set(err, PD_ENOMEM, "out of memory");
    }
    char *data;
    size_t size;
    int rc = pd_read_file(spec, TEMPLATE_MAX_BYTES, &data, &size, err);
    if (rc == PD_ENOTFOUND || rc == PD_EIO)
        return pd_err_set(err, rc, "chat template %s: not a built-in name (chatml, llama3, llama2, "
                                   "gemma) nor a readable file", spec);
    if (rc < 0) return rc;
    if (memchr(data, 0, size)) {
        free(data);
        return pd_err_set(err, PD_EFORMAT, "chat template %s: a NUL byte in the file", spec);
    }
    *src = data;
    return PD_OK;
}

const char *pd_chat_model_template(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return pd_tokenizer_chat_template(tok);
}

void pd_chat_model_tokens(const pd_tokenizer *tok, pd_chat_params *p)
{
    PD_ASSERT(tok && p);
    p->bos_token = pd_tokenizer_token_text(tok, pd_tokenizer_bos(tok));
    p->eos_token = pd_tokenizer_token_text(tok, pd_tokenizer_eos(tok));
}

/* The text of content parts: only {"type": "text", "text": ...}. */
static int join_parts(const json_t *parts, size_t mi, json_t **out, pd_err *err)
{
    size_t len = 0, i;
    json_t *p;
    json_array_foreach(parts, i, p) {
        json_t *type = json_object_get(p, "type"), *text = json_object_get(p, "text");
        if (!json_is_object(p) || !json_is_string(type))
            return pd_err_set(err, PD_EINVAL, "messages[%zu].content[%zu] must be an object with a "
                                              "string \"type\"", mi, i);
        if (strcmp(json_string_value(type), "text"))
            return pd_err_set(err, PD_EINVAL, "messages[%zu].content[%zu]: content part type \"%.64s\" "
                                              "is not supported (only \"text\")", mi, i,
                              json_string_value(type));
        if (!json_is_string(text))
            return pd_err_set(err, PD_EINVAL, "messages[%zu].content[%zu].text must be a string", mi, i);
        len += json_string_length(text);
    }
    char *buf = malloc(len + 1), *o = buf;
    if (!buf) return pd_err_set(err, PD_ENOMEM, "out of memory");
    json_array_foreach(parts, i, p) {
        json_t *text = json_object_get(p, "text");
        memcpy(o, json_string_value(text), json_string_length(text));
        o += json_string_length(text);
    }
    *out = json_stringn_nocheck(buf, len);
    free(buf);
    return *out ? PD_OK : pd_err_set(err, PD_ENOMEM, "out of memory");
}

int pd_chat_normalize(const json_t *messages, json_t **out, pd_err *err)
{
    PD_ASSERT(out);
    *out = NULL;
    if (!json_is_array(messages)) return pd_err_set(err, PD_EINVAL, "messages must be an array");
    json_t *arr = json_array();
    if (!arr) return pd_err_set(err, PD_ENOMEM, "out of memory");
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m)) {
            json_decref(arr);
            return pd_err_set(err, PD_EINVAL, "messages[%zu] must be an object", i);
        }
        if (!json_is_string(json_object_get(m, "role"))) {
            json_decref(arr);
            return pd_err_set(err, PD_EINVAL, "messages[%zu].role must be a string", i);
        }
        json_t *content = json_object_get(m, "content"), *text = NULL;
        if (json_is_array(content)) {
            int rc = join_parts(content, i, &text, err);
            if (rc < 0) {
                json_decref(arr);
                return rc;
            }
        } else if (content && !json_is_string(content) && !json_is_null(content)) {
            json_decref(arr);
            return pd_err_set(err, PD_EINVAL, "messages[%zu].content must be a string, an array of "
                                              "content parts or null", i);
        }
        json_t *copy = json_copy((json_t *)m);
        if (!copy || (text && json_object_set_new(copy, "content", text) < 0) ||
            json_array_append_new(arr, copy) < 0) {
            json_decref(arr);
            return pd_err_set(err, PD_ENOMEM, "out of memory");
        }
    }
    *out = arr;
    return PD_OK;
}

int pd_chat_render_parsed(const pd_jinja_template *t, const json_t *messages,
                          const pd_chat_params *p, char **out, size_t *out_len, pd_err *err)
{
    PD_ASSERT(t && out);
    *out = NULL;
    pd_chat_params def = pd_chat_default_params();
    if (!p) p = &def;
    if (p->tools && !json_is_array(p->tools) && !json_is_null(p->tools))
        return pd_err_set(err, PD_EINVAL, "tools must be an array");
    if (p->extra && !json_is_object(p->extra))
        return pd_err_set(err, PD_EINVAL, "extra template variables must be an object");
    json_t *msgs;
    int rc = pd_chat_normalize(messages, &msgs, err);
    if (rc < 0) return rc;
    json_t *ctx = json_object();
    if (!ctx) {
        json_decref(msgs);
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    }
    if (p->extra) json_object_update(ctx, (json_t *)p->extra);
    int bad = json_object_set_new(ctx, "messages", msgs) < 0;
    bad |= json_object_set_new(ctx, "add_generation_prompt", json_boolean(p->add_generation_prompt)) < 0;
    bad |= json_object_set_new(ctx, "bos_token", json_string(p->bos_token ? p->bos_token : "")) < 0;
    bad |= json_object_set_new(ctx, "eos_token", json_string(p->eos_token ? p->eos_token : "")) < 0;
    if (p->tools) bad |= json_object_set(ctx, "tools", (json_t *)p->tools) < 0;
    if (bad) {
        json_decref(ctx);
        return pd_err_set(err, PD_EINVAL, "bos_token/eos_token must be UTF-8");
    }
    pd_jinja_params jp = pd_jinja_default_params();
    jp.now = p->now;
    pd_err e;
    rc = pd_jinja_render(t, ctx, &jp, out, out_len, &e);
    json_decref(ctx);
    if (rc < 0) return pd_err_set(err, rc, "chat template: %s", e.msg);
    return PD_OK;
}

int pd_chat_render(const char *tmpl, const json_t *messages, const pd_chat_params *p, char **out,
                   pd_err *err)
{
    PD_ASSERT(tmpl && out);
    *out = NULL;
    pd_jinja_template *t;
    pd_err e;
    int rc = pd_jinja_parse(tmpl, strlen(tmpl), &t, &e);
    if (rc < 0) return pd_err_set(err, rc == PD_EFORMAT ? PD_EINVAL : rc, "chat template: %s", e.msg);
    rc = pd_chat_render_parsed(t, messages, p, out, NULL, err);
    pd_jinja_free(t);
    return rc;
}
