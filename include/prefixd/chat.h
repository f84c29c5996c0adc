/* prefixd/chat.h — rendering an OpenAI-style conversation into a prompt
 * with a model's chat template (a Jinja template, prefixd/jinja.h).
 *
 *     pd_chat_params cp = pd_chat_default_params();
 *     cp.bos_token = "<s>"; cp.eos_token = "</s>";
 *     cp.add_generation_prompt = 1;
 *     char *prompt; pd_err err;
 *     const char *tmpl = pd_tokenizer_chat_template(tok);   // NULL: none in the file
 *     if (!tmpl) tmpl = pd_chat_builtin(PD_CHAT_DEFAULT);
 *     if (pd_chat_render(tmpl, messages, &cp, &prompt, &err) < 0)
 *         ... 400 with err.msg: "messages[1].content[0]: content part type
 *             \"image_url\" is not supported" or a template error ...
 *     ... tokenize prompt with special tokens parsed ...
 *     free(prompt);
 *
 * Messages are as OpenAI sends them: an array of objects with a string
 * "role" and a "content" that is a string, null (an assistant message with
 * tool_calls), or an array of content parts of which only {"type": "text",
 * "text": …} is accepted; the text parts are concatenated (no separator)
 * into one string before rendering. Every other field (tool_calls,
 * tool_call_id, name, …) is passed to the template unchanged, and so is
 * "tools". The template sees: messages, add_generation_prompt, bos_token,
 * eos_token, tools (only when given) and the members of extra.
 *
 * Built-in templates, selectable by name where a template is configured:
 * "chatml" (the default when a model has none: <|im_start|>ROLE\nCONTENT
 * <|im_end|>\n per message, "<|im_start|>assistant\n" as generation prompt),
 * "llama3", "llama2" (with [INST] and <<SYS>>) and "gemma".
 *
 * All functions are thread-safe; inputs are borrowed.
 */
#ifndef PREFIXD_CHAT_H
#define PREFIXD_CHAT_H

#include <jansson.h>

#include "prefixd/common.h"
#include "prefixd/jinja.h"
#include "prefixd/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PD_CHAT_DEFAULT "chatml" /* the built-in used when a model has no template */

typedef struct pd_chat_params {
    int add_generation_prompt; /* 1: end with the opening of an assistant turn */
    const char *bos_token;     /* text of BOS/EOS for the template; NULL: "" */
    const char *eos_token;
    const json_t *tools;       /* OpenAI "tools" array, NULL: not defined */
    const json_t *extra;       /* object of further variables, or NULL */
    long long now;             /* clock of strftime_now (seconds since the
                                  epoch), -1: the real clock */
} pd_chat_params;

pd_chat_params pd_chat_default_params(void);

/* The source of a built-in template by name ("chatml", "llama3", "llama2",
 * "gemma"), or NULL when name is not one (static storage). */
const char *pd_chat_builtin(const char *name);

/* Resolves a configured template: a built-in name, else the path of a file
 * holding the template. Returns PD_OK with *src a new string (free()), or
 * PD_ENOTFOUND / PD_EIO with err naming spec. */
int pd_chat_template_load(const char *spec, char **src, pd_err *err);

/* The model's own template (GGUF tokenizer.chat_template), or NULL when it
 * has none. Borrowed from tok. */
const char *pd_chat_model_template(const pd_tokenizer *tok);

/* Sets p->bos_token and p->eos_token to the text of tok's BOS and EOS
 * (borrowed from tok). */
void pd_chat_model_tokens(const pd_tokenizer *tok, pd_chat_params *p);

/* Checks and normalizes messages (borrowed) into *out, a new JSON array
 * (json_decref) where every content is a string or null. Returns PD_OK or
 * PD_EINVAL with err naming the field ("messages[2].role must be a
 * string"), PD_ENOMEM. */
int pd_chat_normalize(const json_t *messages, json_t **out, pd_err *err);

/* Renders messages with template source tmpl. Returns PD_OK with *out a new
 * NUL-terminated string (free()), or PD_EINVAL for bad messages or a
 * template that fails (err: "chat template: line L, column C: what"),
 * PD_ERANGE at a rendering limit, PD_ENOMEM. */
int pd_chat_render(const char *tmpl, const json_t *messages, const pd_chat_params *p,
                   char **out, pd_err *err);

/* pd_chat_render with a template parsed once (pd_jinja_parse), for callers
 * that render many conversations; *out_len (may be NULL) is its length. */
int pd_chat_render_parsed(const pd_jinja_template *t, const json_t *messages,
                          const pd_chat_params *p, char **out, size_t *out_len, pd_err *err);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_CHAT_H */
