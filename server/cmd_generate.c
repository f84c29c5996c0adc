/* cmd_generate.c — `prefixd generate`: one completion from the command line,
 * text streamed to stdout as it is generated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/generate.h"
#include "prefixd/prefix.h"
#include "prefixd/registry.h"

typedef struct out_state {
    int ids;   /* print ids instead of text */
    int count;
} out_state;

static int on_token(int token, const char *bytes, size_t len, void *user_data)
{
    out_state *o = user_data;
    if (o->ids)
        printf("%s%d", o->count ? "," : "", token);
    else
        fwrite(bytes, 1, len, stdout);
    o->count++;
    fflush(stdout);
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *tokenizer = NULL, *prompt = NULL, *prompt_ids = NULL, *v;
    const char *prefix_path = NULL, *registry_dir = NULL, *task = NULL;
    long max_tokens = 256, top_k = 0, threads = 0;
    double temperature = 1.0, top_p = 1.0;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    out_state o = {0, 0};
    pd_kv_dtype kv_dtype = PD_KV_F32;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--model", &model))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--prompt", &prompt))) {
        } else if ((r = cli_opt(argc, argv, &i, "--prompt-ids", &prompt_ids))) {
        } else if ((r = cli_opt(argc, argv, &i, "--max-tokens", &v))) {
            if (r > 0 && cli_int("--max-tokens", v, 0, 1 << 20, &max_tokens) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--temperature", &v))) {
            if (r > 0 && cli_float("--temperature", v, 0, 100, &temperature) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--top-k", &v))) {
            if (r > 0 && cli_int("--top-k", v, 0, 1 << 22, &top_k) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--top-p", &v))) {
            if (r > 0 && cli_float("--top-p", v, 1e-6, 1, &top_p) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--seed", &v))) {
            if (r > 0 && cli_u64("--seed", v, &seed) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--threads", &v))) {
            if (r > 0 && cli_int("--threads", v, 1, 256, &threads) < 0) return 2;
        } else if ((r = cli_opt(argc, argv, &i, "--prefix", &prefix_path))) {
        } else if ((r = cli_opt(argc, argv, &i, "--registry", &registry_dir))) {
        } else if ((r = cli_opt(argc, argv, &i, "--task", &task))) {
        } else if (!strcmp(argv[i], "--ids")) {
            o.ids = 1;
        } else if (!strcmp(argv[i], "--kv-f16")) {
            kv_dtype = PD_KV_F16;
        } else {
            return cli_fail("generate: unknown option '%s'", argv[i]) + 1;
        }
        if (r < 0) return 2;
    }
    if (prompt && prompt_ids) return cli_fail("give either --prompt or --prompt-ids") + 1;
    if (!prompt) prompt = "";
    if ((registry_dir != NULL) != (task != NULL))
        return cli_fail("--registry and --task go together") + 1;
    if (prefix_path && task) return cli_fail("give either --prefix or --registry/--task") + 1;
    cli_set_threads((int)threads);
    pd_model *m = cli_load_model(model, tokenizer);
    if (!m) return 1;

    int status = 1;
    pd_engine *e = NULL;
    pd_seq *seq = NULL;
    pd_prefix *prefix = NULL;
    pd_registry *reg = NULL;
    int32_t *toks = NULL, *out = NULL;
    pd_err err;
    if (prefix_path && pd_prefix_load(prefix_path, m, &prefix, &err) < 0) {
        cli_fail("%s", err.msg);
        goto done;
    }
    if (task) {
        pd_registry_params rp = pd_registry_default_params();
        rp.dir = registry_dir;
        rp.kv_dtype = kv_dtype;
        if (pd_registry_create(&rp, m, &reg, &err) < 0 ||
            pd_registry_acquire(reg, task, &prefix, &err) < 0) {
            cli_fail("%s", err.msg);
            goto done;
        }
    }
    /* a prompt-built prefix already holds BOS: the request continues it */
    int bos = !(prefix && prefix->has_bos);
    int P = prefix ? prefix->n_tokens : 0;
    size_t plen = strlen(prompt);
    int cap = (int)plen + 3;
    toks = malloc((size_t)cap * sizeof *toks);
    if (!toks) {
        cli_fail("out of memory");
        goto done;
    }
    int n;
    if (prompt_ids) { /* ids as given: no BOS added */
        free(toks);
        if ((n = cli_ids("--prompt-ids", prompt_ids, m->cfg.vocab_size, &toks)) < 0) goto done;
        cap = n;
    } else {
        n = pd_tokenizer_encode(m->tok, prompt, plen, bos, 0, toks, cap);
    }
    if (n < 0 || n > cap) {
        cli_fail("cannot encode the prompt");
        goto done;
    }
    if (n == 0) {
        cli_fail("the prompt is empty: a prompt-built prefix needs at least one request token");
        goto done;
    }
    if (P + n + max_tokens > m->cfg.seq_len) {
        cli_fail("prefix (%d) + prompt (%d tokens) + max tokens (%ld) exceed the context of %d "
                 "tokens",
                 P, n, max_tokens, m->cfg.seq_len);
        goto done;
    }
    out = malloc(((size_t)max_tokens + 1) * sizeof *out);
    pd_engine_params ep = pd_engine_default_params();
    ep.kv_dtype = kv_dtype;
    if (!out || pd_engine_create(m, &ep, &e, &err) < 0 ||
        pd_seq_create_as(m, n + (int)max_tokens, kv_dtype, &seq, &err) < 0 ||
        pd_prefix_attach(seq, prefix, &err) < 0) {
        cli_fail("%s", out ? err.msg : "out of memory");
        goto done;
    }
    pd_gen_params gp = {0};
    gp.max_tokens = (int)max_tokens;
    gp.sampling = pd_sampler_default_params();
    gp.sampling.temperature = (float)temperature;
    gp.sampling.top_p = (float)top_p;
    gp.sampling.top_k = (int)top_k;
    gp.sampling.seed = seed;
    gp.on_token = on_token;
    gp.user_data = &o;
    int n_out;
    int rc = max_tokens > 0 ? pd_generate(e, m, seq, toks, n, &gp, out, (int)max_tokens, &n_out, &err)
                            : PD_FINISH_LENGTH;
    if (rc < 0) {
        cli_fail("%s", err.msg);
        goto done;
    }
    if (o.ids || isatty(1)) putchar('\n');
    fflush(stdout);
    status = 0;
done:
    pd_seq_free(seq);
    pd_prefix_release(prefix);
    pd_registry_free(reg);
    pd_engine_free(e);
    free(out);
    free(toks);
    pd_model_free(m);
    return status;
}
