/* cmd_prefix.c — `prefixd prefix …`: make and examine prefix files.
 *
 *   prefix from-prompt --model M [--tokenizer T] --task NAME --text TEXT --out DIR [--f16]
 *   prefix import-peft ADAPTER_DIR --model M [--tokenizer T] --task NAME --out DIR [--f16]
 *   prefix export-peft FILE --model M [--tokenizer T] --out DIR
 *   prefix inspect FILE [--model M [--tokenizer T]]
 *
 * export-peft writes DIR/adapter_config.json and
 * DIR/adapter_model.safetensors (each atomically): the prefix as an HF PEFT
 * prefix-tuning adapter, which import-peft reads back to the same bits.
 * The first two write DIR/NAME.safetensors atomically (DIR is created when
 * missing). inspect prints the file's metadata, tensors and P, one
 * "key: value" per line; with a model it also validates the file against it
 * and exits 1 when the file is not servable. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/fsutil.h"
#include "prefixd/prefix.h"
#include "prefixd/safetensors.h"

static const char usage[] =
    "usage: prefixd prefix from-prompt --model M [--tokenizer T] --task NAME --text TEXT\n"
    "                                  --out DIR [--f16]\n"
    "       prefixd prefix import-peft ADAPTER_DIR --model M [--tokenizer T] --task NAME\n"
    "                                  --out DIR [--f16]\n"
    "       prefixd prefix export-peft FILE --model M [--tokenizer T] --out DIR\n"
    "       prefixd prefix inspect FILE [--model M [--tokenizer T]]\n";

typedef struct prefix_args {
    const char *model, *tokenizer, *task, *text, *out, *path;
    int f16;
} prefix_args;

/* Parses the options shared by the subcommands; at most one positional
 * argument goes to a->path. Returns 0, or the exit status of a usage error. */
static int parse_args(const char *sub, int argc, char **argv, prefix_args *a)
{
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--model", &a->model))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &a->tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--task", &a->task))) {
        } else if ((r = cli_opt(argc, argv, &i, "--text", &a->text))) {
        } else if ((r = cli_opt(argc, argv, &i, "--out", &a->out))) {
        } else if (!strcmp(argv[i], "--f16")) {
            a->f16 = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_fail("prefix %s: unknown option '%s'", sub, argv[i]) + 1;
        } else if (a->path) {
            return cli_fail("prefix %s: unexpected argument '%s'", sub, argv[i]) + 1;
        } else {
            a->path = argv[i];
        }
        if (r < 0) return 2;
    }
    return 0;
}

/* Checks the task name and output directory (created when missing) and
 * builds DIR/TASK.safetensors into a new string (free()), or returns NULL
 * with the exit status in *status. */
static char *out_path(const prefix_args *a, int *status)
{
    *status = 2;
    if (!a->task) {
        cli_fail("--task is required");
        return NULL;
    }
    if (!pd_task_name_valid(a->task)) {
        cli_fail("--task: '%s' is not a valid task name ([A-Za-z0-9][A-Za-z0-9._-]{0,63})",
                 a->task);
        return NULL;
    }
    if (!a->out) {
        cli_fail("--out is required");
        return NULL;
    }
    *status = 1;
    if (mkdir(a->out, 0755) < 0 && errno != EEXIST) {
        cli_fail("%s: cannot create directory: %s", a->out, strerror(errno));
        return NULL;
    }
    size_t n = strlen(a->out) + strlen(a->task) + 16;
    char *path = malloc(n);
    if (!path) {
        cli_fail("out of memory");
        return NULL;
    }
    snprintf(path, n, "%s/%s.safetensors", a->out, a->task);
    return path;
}

/* Saves p to path and prints a one-line summary. Returns the exit status. */
static int save(pd_prefix *p, const pd_model *m, const char *path, int f16)
{
    pd_err err;
    if (pd_prefix_save(p, m, path, f16, &err) < 0) return cli_fail("%s", err.msg);
    printf("wrote %s: task %s, %d virtual tokens, has_bos %s, %s, base %s\n", path, p->task,
           p->n_tokens, p->has_bos ? "true" : "false", f16 ? "F16" : "F32", m->fingerprint_hex);
    return 0;
}

static int from_prompt(int argc, char **argv)
{
    prefix_args a = {0};
    int rc = parse_args("from-prompt", argc, argv, &a);
    if (rc) return rc;
    if (a.path) return cli_fail("prefix from-prompt: unexpected argument '%s'", a.path) + 1;
    if (!a.text) return cli_fail("prefix from-prompt: --text is required") + 1;
    char *path = out_path(&a, &rc);
    if (!path) return rc;
    pd_model *m = cli_load_model(a.model, a.tokenizer);
    pd_engine *e = NULL;
    pd_prefix *p = NULL;
    pd_err err;
    int status = 1;
    if (!m) goto done;
    if (pd_engine_create(m, NULL, &e, &err) < 0 ||
        pd_prefix_from_text(e, m, a.task, a.text, &p, &err) < 0) {
        cli_fail("%s", err.msg);
        goto done;
    }
    status = save(p, m, path, a.f16);
done:
    pd_prefix_release(p);
    pd_engine_free(e);
    pd_model_free(m);
    free(path);
    return status;
}

static int import_peft(int argc, char **argv)
{
    prefix_args a = {0};
    int rc = parse_args("import-peft", argc, argv, &a);
    if (rc) return rc;
    if (!a.path) return cli_fail("prefix import-peft: the adapter directory is required") + 1;
    if (a.text) return cli_fail("prefix import-peft: --text does not apply") + 1;
    char *path = out_path(&a, &rc);
    if (!path) return rc;
    pd_model *m = cli_load_model(a.model, a.tokenizer);
    pd_prefix *p = NULL;
    pd_err err;
    int status = 1;
    if (!m) goto done;
    if (pd_prefix_import_peft(a.path, m, a.task, &p, &err) < 0) {
        cli_fail("%s", err.msg);
        goto done;
    }
    status = save(p, m, path, a.f16);
done:
    pd_prefix_release(p);
    pd_model_free(m);
    free(path);
    return status;
}

/* Writes DIR/name (atomically) or reports why not; 0 or -1. */
static int write_in(const char *dir, const char *name, const void *data, size_t n)
{
    size_t cap = strlen(dir) + strlen(name) + 2;
    char *path = malloc(cap);
    if (!path) return cli_fail("out of memory");
    snprintf(path, cap, "%s/%s", dir, name);
    pd_err err;
    int rc = pd_write_file_atomic(path, data, n, &err);
    free(path);
    return rc < 0 ? cli_fail("%s", err.msg) : 0;
}

static int export_peft(int argc, char **argv)
{
    prefix_args a = {0};
    int rc = parse_args("export-peft", argc, argv, &a);
    if (rc) return rc;
    if (!a.path) return cli_fail("prefix export-peft: the prefix file is required") + 1;
    if (!a.out) return cli_fail("prefix export-peft: --out DIR is required") + 1;
    if (a.task || a.text || a.f16)
        return cli_fail("prefix export-peft: only --model, --tokenizer and --out apply") + 1;
    if (mkdir(a.out, 0755) < 0 && errno != EEXIST)
        return cli_fail("%s: cannot create directory: %s", a.out, strerror(errno));
    pd_model *m = cli_load_model(a.model, a.tokenizer);
    if (!m) return 1;
    pd_prefix *p = NULL;
    char *config = NULL;
    void *tensors = NULL;
    size_t nc = 0, nt = 0;
    pd_err err;
    int status = 1;
    if (pd_prefix_load(a.path, m, &p, &err) < 0 ||
        pd_prefix_export_peft(p, m, &config, &nc, &tensors, &nt, &err) < 0) {
        cli_fail("%s", err.msg);
    } else if (write_in(a.out, "adapter_model.safetensors", tensors, nt) == 0 &&
               write_in(a.out, "adapter_config.json", config, nc) == 0) {
        printf("wrote %s/adapter_config.json and %s/adapter_model.safetensors: task %s, %d "
               "virtual tokens\n", a.out, a.out, p->task, p->n_tokens);
        status = 0;
    }
    free(config);
    free(tensors);
    pd_prefix_release(p);
    pd_model_free(m);
    return status;
}

static void print_shape(const pd_st_tensor *t)
{
    putchar('[');
    for (int d = 0; d < t->n_dims; d++) printf("%s%" PRId64, d ? ", " : "", t->shape[d]);
    putchar(']');
}

static int inspect(int argc, char **argv)
{
    prefix_args a = {0};
    int rc = parse_args("inspect", argc, argv, &a);
    if (rc) return rc;
    if (!a.path) return cli_fail("prefix inspect: the prefix file is required") + 1;
    if (a.task || a.text || a.out || a.f16)
        return cli_fail("prefix inspect: only --model and --tokenizer apply") + 1;
    if (a.tokenizer && !a.model) return cli_fail("prefix inspect: --tokenizer needs --model") + 1;
    pd_st *st;
    pd_err err;
    if (pd_st_open(a.path, &st, &err) < 0) return cli_fail("%s", err.msg);
    printf("path: %s\n", a.path);
    printf("file_bytes: %zu\n", pd_st_file_size(st));
    printf("metadata: %d\n", pd_st_n_meta(st));
    for (int i = 0; i < pd_st_n_meta(st); i++) {
        const pd_st_kv *kv = pd_st_meta_at(st, i);
        printf("  %s: %s\n", kv->key, kv->value);
    }
    printf("tensors: %d\n", pd_st_n_tensors(st));
    for (int i = 0; i < pd_st_n_tensors(st); i++) {
        const pd_st_tensor *t = pd_st_tensor_at(st, i);
        printf("  %s: ", t->name);
        print_shape(t);
        printf(" %s, %zu bytes\n", pd_st_dtype_name(t->dtype), t->nbytes);
    }
    const pd_st_tensor *k = pd_st_find(st, "keys");
    if (k && k->n_dims == 4) printf("virtual_tokens: %" PRId64 "\n", k->shape[2]);
    pd_st_free(st);
    if (!a.model) return 0;

    pd_model *m = cli_load_model(a.model, a.tokenizer);
    if (!m) return 1;
    pd_prefix *p;
    int status = 0;
    printf("model: %s (%s)\n", m->id, m->fingerprint_hex);
    if (pd_prefix_load(a.path, m, &p, &err) < 0) {
        printf("valid: no\n");
        status = cli_fail("%s", err.msg);
    } else {
        printf("valid: yes\n");
        printf("resident_bytes: %zu\n", p->bytes);
        pd_prefix_release(p);
    }
    pd_model_free(m);
    return status;
}

int cmd_prefix(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "from-prompt")) return from_prompt(argc - 1, argv + 1);
    if (!strcmp(sub, "import-peft")) return import_peft(argc - 1, argv + 1);
    if (!strcmp(sub, "inspect")) return inspect(argc - 1, argv + 1);
    if (!strcmp(sub, "export-peft")) return export_peft(argc - 1, argv + 1);
    if (!strcmp(sub, "help") || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        fputs(usage, stdout);
        return 0;
    }
    fprintf(stderr, "prefixd: prefix: unknown subcommand '%s'\n%s", sub, usage);
    return 2;
}
