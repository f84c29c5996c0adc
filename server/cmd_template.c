/* cmd_template.c — `prefixd template`: renders a conversation with a chat
 * template and prints the prompt exactly as the model would get it (no
 * newline added). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/chat.h"

static const char usage[] =
    "usage: prefixd template [--model M [--tokenizer T]] --messages FILE.json\n"
    "                        [--template FILE|NAME] [--no-generation-prompt] [--tools FILE.json]\n"
    "                        [--bos TEXT] [--eos TEXT] [--now SECONDS]\n"
    "  FILE.json holds an array of messages, or an object with \"messages\" and\n"
    "  optionally \"tools\" and \"add_generation_prompt\" (the body of POST /apply-template).\n"
    "  The template is --template (a built-in name: chatml, llama3, llama2, gemma; or a\n"
    "  file), else the model's own, else chatml.\n";

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, JSON_DECODE_ANY, &je);
    if (!j) cli_fail("%s:%d:%d: %s", path, je.line, je.column, je.text);
    return j;
}

int cmd_template(int argc, char **argv)
{
    const char *model = NULL, *tokenizer = NULL, *messages_path = NULL, *tmpl_spec = NULL;
    const char *tools_path = NULL, *bos = NULL, *eos = NULL, *v;
    long long now = -1;
    int agp = 1;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--model", &model))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--messages", &messages_path))) {
        } else if ((r = cli_opt(argc, argv, &i, "--template", &tmpl_spec))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tools", &tools_path))) {
        } else if ((r = cli_opt(argc, argv, &i, "--bos", &bos))) {
        } else if ((r = cli_opt(argc, argv, &i, "--eos", &eos))) {
        } else if ((r = cli_opt(argc, argv, &i, "--now", &v))) {
            uint64_t u;
            if (r > 0 && cli_u64("--now", v, &u) < 0) return 2;
            if (r > 0) now = (long long)u;
        } else if (!strcmp(argv[i], "--no-generation-prompt")) {
            agp = 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 0;
        } else {
            fprintf(stderr, "prefixd template: unknown option '%s'\n%s", argv[i], usage);
            return 2;
        }
        if (r < 0) return 2;
    }
    if (!messages_path) {
        fprintf(stderr, "prefixd template: --messages is required\n%s", usage);
        return 2;
    }
    json_t *doc = load_json(messages_path), *tools = NULL;
    if (!doc) return 1;
    json_t *messages = doc;
    if (json_is_object(doc)) {
        messages = json_object_get(doc, "messages");
        json_t *g = json_object_get(doc, "add_generation_prompt");
        if (json_is_boolean(g) && agp) agp = json_is_true(g);
        tools = json_incref(json_object_get(doc, "tools"));
    }
    if (tools_path) {
        json_decref(tools);
        if (!(tools = load_json(tools_path))) {
            json_decref(doc);
            return 1;
        }
    }
    int status = 1;
    char *src = NULL, *out = NULL;
    pd_model *m = NULL;
    pd_err err;
    if (model && !(m = cli_load_model(model, tokenizer))) goto done;
    if (tmpl_spec) {
        if (pd_chat_template_load(tmpl_spec, &src, &err) < 0) {
            cli_fail("%s", err.msg);
            goto done;
        }
    } else {
        const char *own = m ? pd_chat_model_template(m->tok) : NULL;
        src = strdup(own ? own : pd_chat_builtin(PD_CHAT_DEFAULT));
        if (!src) {
            cli_fail("out of memory");
            goto done;
        }
    }
    pd_chat_params cp = pd_chat_default_params();
    cp.add_generation_prompt = agp;
    cp.tools = json_is_null(tools) ? NULL : tools;
    cp.now = now;
    if (m) pd_chat_model_tokens(m->tok, &cp);
    if (bos) cp.bos_token = bos;
    if (eos) cp.eos_token = eos;
    if (pd_chat_render(src, messages, &cp, &out, &err) < 0) {
        cli_fail("%s", err.msg);
        goto done;
    }
    fputs(out, stdout);
    status = fflush(stdout) ? cli_fail("writing the prompt failed") : 0;
done:
    free(out);
    free(src);
    pd_model_free(m);
    json_decref(tools);
    json_decref(doc);
    return status;
}
