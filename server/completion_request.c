/* completion_request.c — parsing and checking the body of POST
 * /v1/completions (contract in completion_request.h). Messages follow
 * OpenAI's wording where it has one, and always name the parameter. */
#include "completion_request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hbuf.h"
#include "prefixd/scheduler.h"
#include "utf8.h"

int creq_reject(creq_error *e, int status, const char *param, const char *code,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    e->param = param;
    e->code = code;
    return -1;
}

/* ---- parameters --------------------------------------------------------------------------- */

static int get_int(creq_error *e, json_t *body, const char *name, long lo, long hi, long def,
                   long *out)
{
    json_t *v = json_object_get(body, name);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return creq_reject(e, 400, name, "invalid_type", "'%s' must be an integer (got %s).",
                           name,
                           json_is_string(v)    ? "a string"
                           : json_is_real(v)    ? "a number with a fraction"
                           : json_is_boolean(v) ? "a boolean"
                                                : "an object or array");
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return creq_reject(e, 400, name, "invalid_value", "'%s' must be in [%ld, %ld] (got %lld).",
                           name, lo, hi, (long long)x);
    *out = (long)x;
    return 0;
}

static int get_num(creq_error *e, json_t *body, const char *name, double lo, double hi,
                   int lo_open, double def, double *out)
{
    json_t *v = json_object_get(body, name);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return creq_reject(e, 400, name, "invalid_type", "'%s' must be a number.", name);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x <= lo))
        return creq_reject(e, 400, name, "invalid_value", "'%s' must be in %c%g, %g] (got %g).",
                           name, lo_open ? '(' : '[', lo, hi, x);
    *out = x;
    return 0;
}

static int get_bool(creq_error *e, json_t *body, const char *name, int *out)
{
    json_t *v = json_object_get(body, name);
    if (!v || json_is_null(v)) {
        *out = 0;
        return 0;
    }
    if (!json_is_boolean(v))
        return creq_reject(e, 400, name, "invalid_type", "'%s' must be a boolean.", name);
    *out = json_is_true(v);
    return 0;
}

static int parse_stop(creq *q, json_t *body, creq_error *e)
{
    json_t *v = json_object_get(body, "stop");
    if (!v || json_is_null(v)) return 0;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > CREQ_MAX_STOP)
            return creq_reject(e, 400, "stop", "invalid_value",
                               "'stop' may hold at most %d sequences (got %zu).", CREQ_MAX_STOP,
                               n);
    } else if (!json_is_string(v)) {
        return creq_reject(e, 400, "stop", "invalid_type",
                           "'stop' must be a string or an array of up to %d strings.",
                           CREQ_MAX_STOP);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(s))
            return creq_reject(e, 400, "stop", "invalid_type", "'stop'[%zu] must be a string.",
                               i);
        size_t len = json_string_length(s);
        if (len == 0 || len > CREQ_STOP_MAX_BYTES)
            return creq_reject(e, 400, "stop", "invalid_value",
                               "stop sequences must be 1 to %d bytes long ('stop'[%zu] is %zu).",
                               CREQ_STOP_MAX_BYTES, i, len);
        memcpy(q->stop[q->n_stop], json_string_value(s), len);
        q->stop[q->n_stop][len] = 0;
        q->stop_len[q->n_stop++] = len;
        if (len > q->max_stop) q->max_stop = len;
    }
    return 0;
}

/* Parameters OpenAI has that prefixd accepts only at their neutral value. */
static int check_unsupported(const creq *q, json_t *body, creq_error *e)
{
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(body, zero[i]);
        if (v && !json_is_null(v) && (!json_is_number(v) || json_number_value(v) != 0))
            return creq_reject(e, 400, zero[i], "unsupported_parameter",
                               "'%s' is not supported by prefixd: leave it out or set it to 0.",
                               zero[i]);
    }
    json_t *v = json_object_get(body, "logit_bias");
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return creq_reject(e, 400, "logit_bias", "unsupported_parameter",
                           "'logit_bias' is not supported by prefixd.");
    v = json_object_get(body, "suffix");
    if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
        return creq_reject(e, 400, "suffix", "unsupported_parameter",
                           "'suffix' (insertion) is not supported by prefixd.");
    v = json_object_get(body, "best_of");
    if (v && !json_is_null(v) &&
        !(json_is_integer(v) && json_integer_value(v) == q->n_per_prompt))
        return creq_reject(e, 400, "best_of", "unsupported_parameter",
                           "'best_of' is not supported by prefixd: leave it out or set it to n.");
    v = json_object_get(body, "user");
    if (v && !json_is_null(v) && !json_is_string(v))
        return creq_reject(e, 400, "user", "invalid_type", "'user' must be a string.");
    return 0;
}

int creq_parse_params(creq *q, json_t *body, const creq_limits *lim, creq_error *e)
{
    long v;
    double d;
    memset(q, 0, sizeof *q);
    q->sampling = pd_sampler_default_params();
    q->logprobs = -1; /* null or false: none; 0..5: chosen token plus that many top ones */
    json_t *m = json_object_get(body, "model");
    if (!m || json_is_null(m))
        return creq_reject(e, 400, "model", "missing_required_parameter",
                           "You must provide a model parameter: a task name or '%s'.",
                           lim->model_id);
    if (!json_is_string(m))
        return creq_reject(e, 400, "model", "invalid_type", "'model' must be a string.");
    if (json_string_length(m) >= sizeof q->model_name)
        return creq_reject(e, 400, "model", "invalid_value", "'model' is too long.");
    snprintf(q->model_name, sizeof q->model_name, "%s", json_string_value(m));

    if (get_int(e, body, "max_tokens", 0, CREQ_MAX_TOKENS, 16, &v) < 0) return -1;
    q->max_tokens = (int)v;
    if (get_int(e, body, "n", 1, lim->max_choices, 1, &v) < 0) return -1;
    q->n_per_prompt = (int)v;
    if (get_num(e, body, "temperature", 0, 2, 0, 1.0, &d) < 0) return -1;
    q->sampling.temperature = (float)d;
    if (get_num(e, body, "top_p", 0, 1, 1, 1.0, &d) < 0) return -1;
    q->sampling.top_p = (float)d;
    if (get_int(e, body, "top_k", 0, lim->vocab_size, 0, &v) < 0) return -1;
    q->sampling.top_k = (int)v;
    json_t *seed = json_object_get(body, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed))
            return creq_reject(e, 400, "seed", "invalid_type", "'seed' must be an integer.");
        q->sampling.seed = (uint64_t)json_integer_value(seed);
        q->seed_given = 1;
    }
    if (!json_is_false(json_object_get(body, "logprobs"))) {
        if (get_int(e, body, "logprobs", 0, PD_TOP_LOGPROBS_MAX, -1, &v) < 0) return -1;
        q->logprobs = (int)v;
    }
    if (get_bool(e, body, "echo", &q->echo) < 0) return -1;
    if (get_bool(e, body, "stream", &q->stream) < 0) return -1;
    json_t *so = json_object_get(body, "stream_options");
    if (so && !json_is_null(so)) {
        if (!q->stream)
            return creq_reject(e, 400, "stream_options", "invalid_value",
                               "'stream_options' is only allowed when 'stream' is true.");
        if (!json_is_object(so))
            return creq_reject(e, 400, "stream_options", "invalid_type",
                               "'stream_options' must be an object.");
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return creq_reject(e, 400, "stream_options", "invalid_type",
                               "'stream_options.include_usage' must be a boolean.");
        q->include_usage = iu && json_is_true(iu);
    }
    if (q->max_tokens == 0 && !q->echo)
        return creq_reject(e, 400, "max_tokens", "invalid_value",
                           "'max_tokens' may be 0 only with 'echo': true (prompt scoring); "
                           "otherwise it must be at least 1.");
    if (parse_stop(q, body, e) < 0) return -1;
    return check_unsupported(q, body, e);
}

/* Copies text into p->text (allocated len + 1 bytes) and counts its code
 * points. */
static void keep_text(creq_prompt *p, const char *text, size_t len)
{
    memcpy(p->text, text, len);
    p->text[len] = 0;
    p->text_len = len;
    p->text_chars = utf8_chars(text, len);
}

int creq_parse_chat_params(creq *q, json_t *body, const creq_limits *lim, creq_error *e)
{
    static const char *const not_chat[] = {"prompt", "echo", "suffix", "best_of"};
    for (size_t i = 0; i < sizeof not_chat / sizeof *not_chat; i++)
        if (json_object_get(body, not_chat[i]))
            return creq_reject(e, 400, not_chat[i], "unsupported_parameter",
                               "'%s' is a parameter of /v1/completions, not of "
                               "/v1/chat/completions.",
                               not_chat[i]);
    json_t *rf = json_object_get(body, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(t))
            return creq_reject(e, 400, "response_format", "invalid_type",
                               "'response_format' must be an object with a string 'type'.");
        if (strcmp(json_string_value(t), "text") != 0)
            return creq_reject(e, 400, "response_format", "unsupported_parameter",
                               "response_format type '%s' is not supported by prefixd: only "
                               "{\"type\": \"text\"} (no constrained JSON output).",
                               json_string_value(t));
    }
    json_t *lp = json_object_get(body, "logprobs");
    if (lp && !json_is_null(lp) && !json_is_boolean(lp))
        return creq_reject(e, 400, "logprobs", "invalid_type",
                           "'logprobs' must be a boolean in chat completions.");
    long top = 0;
    if (get_int(e, body, "top_logprobs", 0, 20, 0, &top) < 0) return -1;
    json_t *tl = json_object_get(body, "top_logprobs");
    if (tl && !json_is_null(tl) && !json_is_true(lp))
        return creq_reject(e, 400, "top_logprobs", "invalid_value",
                           "'top_logprobs' needs 'logprobs': true.");
    if (top > PD_TOP_LOGPROBS_MAX)
        return creq_reject(e, 400, "top_logprobs", "invalid_value",
                           "'top_logprobs' may be at most %d in prefixd (got %ld).",
                           PD_TOP_LOGPROBS_MAX, top);
    /* the rest is the completions API's: read it from a translated copy */
    json_t *copy = json_copy(body);
    if (!copy) return creq_reject(e, 503, NULL, "out_of_memory", "The server is out of memory.");
    json_t *mct = json_object_get(body, "max_completion_tokens");
    if (mct && !json_is_null(mct)) json_object_set(copy, "max_tokens", mct);
    json_object_del(copy, "max_completion_tokens");
    json_object_del(copy, "top_logprobs");
    json_object_del(copy, "response_format");
    json_object_del(copy, "messages");
    if (json_is_true(lp))
        json_object_set_new(copy, "logprobs", json_integer(top));
    else
        json_object_del(copy, "logprobs");
    int rc = creq_parse_params(q, copy, lim, e);
    json_decref(copy);
    if (rc < 0 && mct && !json_is_null(mct) && e->param && !strcmp(e->param, "max_tokens"))
        e->param = "max_completion_tokens"; /* name what the client sent */
    return rc;
}

int creq_chat_prompt(creq *q, const char *text, size_t len, const pd_tokenizer *tok, int bos,
                     const creq_limits *lim, creq_error *e)
{
    if (!(q->prompts = calloc(1, sizeof *q->prompts)))
        return creq_reject(e, 503, NULL, "out_of_memory", "The server is out of memory.");
    q->n_prompts = 1;
    creq_prompt *p = &q->prompts[0];
    unsigned flags = PD_TOK_PARSE_SPECIAL | (bos ? PD_TOK_ADD_SPECIAL : 0u);
    int cap = (int)(len < (size_t)lim->context ? len : (size_t)lim->context) + 3;
    if (!(p->tokens = malloc((size_t)cap * sizeof *p->tokens)) || !(p->text = malloc(len + 1)))
        return creq_reject(e, 503, NULL, "out_of_memory", "The server is out of memory.");
    int n = pd_tokenizer_encode_flags(tok, text, len, flags, p->tokens, cap);
    if (n < 0)
        return creq_reject(e, 400, "messages", "invalid_value",
                           "The rendered conversation cannot be tokenized.");
    if (n > cap || n >= lim->context)
        return creq_reject(e, 400, "messages", "context_length_exceeded",
                           "The rendered conversation has more tokens than the context "
                           "holds (%d).",
                           lim->context);
    if (n == 0)
        return creq_reject(e, 400, "messages", "invalid_value",
                           "The rendered conversation is empty.");
    p->n = n;
    keep_text(p, text, len);
    return 0;
}

void creq_add_stop(creq *q, const char *stop)
{
    size_t len = strlen(stop);
    if (len == 0 || len > CREQ_STOP_MAX_BYTES || q->n_stop > CREQ_MAX_STOP) return;
    for (int i = 0; i < q->n_stop; i++)
        if (q->stop_len[i] == len && !memcmp(q->stop[i], stop, len)) return;
    memcpy(q->stop[q->n_stop], stop, len + 1);
    q->stop_len[q->n_stop++] = len;
    if (len > q->max_stop) q->max_stop = len;
}

/* ---- prompts ------------------------------------------------------------------------------ */

static int add_text_prompt(creq *q, creq_prompt *p, const char *text, size_t len, int idx,
                           const pd_tokenizer *tok, int bos, creq_error *e)
{
    int cap = (int)(len < (size_t)(1 << 28) ? len : (size_t)(1 << 28)) + 3;
    if (!(p->tokens = malloc((size_t)cap * sizeof *p->tokens)) || !(p->text = malloc(len + 1)))
        return creq_reject(e, 503, NULL, "out_of_memory", "The server is out of memory.");
    int n = pd_tokenizer_encode_flags(tok, text, len,
                                      PD_TOK_PARSE_SPECIAL | (bos ? PD_TOK_ADD_SPECIAL : 0),
                                      p->tokens, cap);
    if (n < 0 || n > cap)
        return creq_reject(e, 400, "prompt", "invalid_value", "prompt[%d] cannot be tokenized.",
                           idx);
    if (n == 0)
        return creq_reject(e, 400, "prompt", "invalid_value",
                           "The prompt must not be empty for '%s': its prefix already holds the "
                           "beginning of the text (built from a prompt), so the request needs "
                           "at least one token of its own.",
                           q->model_name);
    p->n = n;
    keep_text(p, text, len);
    return 0;
}

static int add_token_prompt(creq_prompt *p, json_t *arr, int idx, const pd_tokenizer *tok,
                            int prefix_has_bos, const creq_limits *lim, creq_error *e)
{
    size_t n = json_array_size(arr);
    if (n == 0)
        return creq_reject(e, 400, "prompt", "invalid_value",
                           "prompt[%d] is an empty token list.", idx);
    if (n > (size_t)lim->context)
        return creq_reject(e, 400, "prompt", "context_length_exceeded",
                           "prompt[%d] has %zu tokens; the context holds %d.", idx, n,
                           lim->context);
    if (!(p->tokens = malloc(n * sizeof *p->tokens)))
        return creq_reject(e, 503, NULL, "out_of_memory", "The server is out of memory.");
    hbuf text = {0};
    int prev = prefix_has_bos ? pd_tokenizer_bos(tok) : -1;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(arr, i);
        json_int_t id = json_is_integer(t) ? json_integer_value(t) : -1;
        if (id < 0 || id >= pd_tokenizer_vocab_size(tok)) {
            hbuf_free(&text);
            return creq_reject(e, 400, "prompt", "invalid_value",
                               "prompt[%d][%zu] must be a token id in [0, %d).", idx, i,
                               pd_tokenizer_vocab_size(tok));
        }
        p->tokens[i] = (int32_t)id;
        size_t len;
        const char *b = pd_tokenizer_decode(tok, prev, (int)id, &len);
        hbuf_add(&text, b, len);
        prev = (int)id;
    }
    p->n = (int)n;
    hbuf cleaned = {0};
    utf8_clean(&cleaned, (const unsigned char *)(text.p ? text.p : ""), text.len, 0);
    hbuf_free(&text);
    if (cleaned.oom || !(p->text = cleaned.p ? cleaned.p : strdup(""))) {
        hbuf_free(&cleaned);
        return creq_reject(e, 503, NULL, "out_of_memory", "The server is out of memory.");
    }
    p->text_len = cleaned.len;
    p->text_chars = utf8_chars(p->text, p->text_len);
    return 0;
}

int creq_parse_prompts(creq *q, json_t *body, const pd_tokenizer *tok, int prefix_has_bos,
                       const creq_limits *lim, creq_error *e)
{
    json_t *v = json_object_get(body, "prompt");
    if (!v || json_is_null(v))
        return creq_reject(e, 400, "prompt", "missing_required_parameter",
                           "You must provide a prompt (a string or an array of strings).");
    int n;
    int token_list = 0;
    if (json_is_string(v)) {
        n = 1;
    } else if (json_is_array(v)) {
        if (json_array_size(v) == 0)
            return creq_reject(e, 400, "prompt", "invalid_value", "'prompt' must not be empty.");
        token_list = json_is_integer(json_array_get(v, 0));
        n = token_list ? 1 : (int)(json_array_size(v) < 1u << 20 ? json_array_size(v) : 1u << 20);
    } else {
        return creq_reject(e, 400, "prompt", "invalid_type",
                           "'prompt' must be a string, an array of strings, or token ids.");
    }
    if ((long)n * q->n_per_prompt > lim->max_choices)
        return creq_reject(e, 400, "n", "invalid_value",
                           "%d prompts × n = %d asks for %ld choices; at most %ld are allowed.",
                           n, q->n_per_prompt, (long)n * q->n_per_prompt, lim->max_choices);
    if (!(q->prompts = calloc((size_t)n, sizeof *q->prompts)))
        return creq_reject(e, 503, NULL, "out_of_memory", "The server is out of memory.");
    q->n_prompts = n;
    for (int i = 0; i < n; i++) {
        json_t *p = json_is_string(v) ? v : token_list ? v : json_array_get(v, (size_t)i);
        int rc;
        if (json_is_string(p))
            rc = add_text_prompt(q, &q->prompts[i], json_string_value(p), json_string_length(p),
                                 i, tok, !prefix_has_bos, e);
        else if (json_is_array(p) && (token_list || json_array_size(p) == 0 ||
                                      json_is_integer(json_array_get(p, 0))))
            rc = add_token_prompt(&q->prompts[i], p, i, tok, prefix_has_bos, lim, e);
        else
            rc = creq_reject(e, 400, "prompt", "invalid_type",
                             "prompt[%d] must be a string (or an array of token ids).", i);
        if (rc < 0) return -1;
    }
    return 0;
}

int creq_check_context(const creq *q, int prefix_tokens, const creq_limits *lim, creq_error *e)
{
    const int P = prefix_tokens;
    for (int i = 0; i < q->n_prompts; i++) {
        long need = (long)P + q->prompts[i].n + q->max_tokens;
        if (need > lim->context)
            return creq_reject(e, 400,
                               (long)P + q->prompts[i].n >= lim->context ? "prompt" : "max_tokens",
                               "context_length_exceeded",
                               "This model's maximum context length is %d tokens, however you "
                               "requested %ld tokens (%d of the task's prefix, %d in prompt[%d], "
                               "%d for the completion). Please reduce the prompt or max_tokens.",
                               lim->context, need, P, q->prompts[i].n, i, q->max_tokens);
    }
    return 0;
}

void creq_free(creq *q)
{
    for (int i = 0; i < q->n_prompts; i++) {
        free(q->prompts[i].tokens);
        free(q->prompts[i].text);
    }
    free(q->prompts);
    q->prompts = NULL;
    q->n_prompts = 0;
}
