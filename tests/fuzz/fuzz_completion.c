/* fuzz_completion.c — the completion request parser: the input is a POST
 * /v1/completions body, or a POST /v1/chat/completions body when it has
 * "messages". It is read as the route reads it (jansson, json_loadb without
 * flags, an object required), then run through the steps of
 * completion_request.h with the shipped model's tokenizer and the default
 * limits (max_choices 16, a 512-token context); a chat body is rendered with
 * the ChatML built-in (the shipped model has no template) as the route does.
 *
 * The model lookup between the steps is faked: the base model's id has no
 * prefix; any other name is a task whose prefix holds 4 tokens and, when
 * the name's length is odd, already BOS (a prompt-built prefix). A request
 * that passes must respect every limit the route relies on. */
#include <jansson.h>
#include <string.h>

#include <stdlib.h>

#include "completion_request.h"
#include "prefixd/chat.h"
#include "prefixd/scheduler.h"
#include "util.h"

/* 1 if p[0..n) is valid UTF-8 (what jansson needs for json_stringn). */
static int valid_utf8(const char *p, size_t n)
{
    json_t *j = json_stringn(p, n);
    json_decref(j);
    return j != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const pd_model *m = fuzz_model();
    const pd_tokenizer *tok = m->tok;
    const creq_limits lim = {m->id, m->cfg.vocab_size, 16, m->cfg.seq_len};
    json_error_t je;
    json_t *body = json_loadb((const char *)data, size, 0, &je);
    if (!body) return 0;
    if (!json_is_object(body)) {
        json_decref(body);
        return 0;
    }
    creq q;
    creq_error e;
    json_t *msgs = json_object_get(body, "messages");
    int rc = msgs ? creq_parse_chat_params(&q, body, &lim, &e)
                  : creq_parse_params(&q, body, &lim, &e);
    int is_base = rc == 0 && !strcmp(q.model_name, m->id);
    int prefix_tokens = is_base ? 0 : 4;
    int has_bos = !is_base && strlen(q.model_name) % 2 == 1;
    if (rc == 0 && msgs) {
        json_t *norm;
        char *text = NULL;
        pd_chat_params cp = pd_chat_default_params();
        cp.add_generation_prompt = 1;
        if (pd_chat_normalize(msgs, &norm, NULL) == PD_OK) {
            if (pd_chat_render(pd_chat_builtin(PD_CHAT_DEFAULT), norm, &cp, &text, NULL) ==
                PD_OK)
                rc = creq_chat_prompt(&q, text, strlen(text), tok, !has_bos, &lim, &e);
            else
                rc = creq_reject(&e, 400, "messages", "invalid_value", "render");
            json_decref(norm);
            free(text);
        } else {
            rc = creq_reject(&e, 400, "messages", "invalid_value", "normalize");
        }
    } else if (rc == 0) {
        rc = creq_parse_prompts(&q, body, tok, has_bos, &lim, &e);
    }
    if (rc == 0) rc = creq_check_context(&q, prefix_tokens, &lim, &e);
    json_decref(body);
    if (rc < 0) {
        FUZZ_CHECK(e.status == 400 || e.status == 503);
        FUZZ_CHECK(e.code && e.msg[0]);
        creq_free(&q);
        return 0;
    }
    FUZZ_CHECK(q.max_tokens >= (q.echo ? 0 : 1) && q.max_tokens <= CREQ_MAX_TOKENS);
    FUZZ_CHECK(!(msgs && q.echo));
    FUZZ_CHECK(q.n_per_prompt >= 1 && q.n_prompts >= 1);
    FUZZ_CHECK((long)q.n_prompts * q.n_per_prompt <= lim.max_choices);
    FUZZ_CHECK(q.logprobs >= -1 && q.logprobs <= PD_TOP_LOGPROBS_MAX);
    FUZZ_CHECK(q.sampling.temperature >= 0 && q.sampling.temperature <= 2);
    FUZZ_CHECK(q.sampling.top_p > 0 && q.sampling.top_p <= 1);
    FUZZ_CHECK(q.sampling.top_k >= 0 && q.sampling.top_k <= lim.vocab_size);
    FUZZ_CHECK(q.n_stop >= 0 && q.n_stop <= CREQ_MAX_STOP);
    for (int i = 0; i < q.n_stop; i++)
        FUZZ_CHECK(q.stop_len[i] >= 1 && q.stop_len[i] <= q.max_stop &&
                   q.stop_len[i] == strlen(q.stop[i]));
    for (int i = 0; i < q.n_prompts; i++) {
        const creq_prompt *p = &q.prompts[i];
        FUZZ_CHECK(p->n >= 1 && prefix_tokens + p->n + q.max_tokens <= lim.context);
        for (int k = 0; k < p->n; k++)
            FUZZ_CHECK(p->tokens[k] >= 0 && p->tokens[k] < lim.vocab_size);
        FUZZ_CHECK(p->text && p->text[p->text_len] == 0);
        FUZZ_CHECK(valid_utf8(p->text, p->text_len)); /* echoed into JSON */
    }
    creq_free(&q);
    return 0;
}
