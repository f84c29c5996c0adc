/* config.c — the configuration of `prefixd serve`: one declarative table of
 * keys (name, type, range, default, help), read from a JSON object and from
 * command-line flags. Every key `some_key` is also the flag `--some-key`;
 * `--config FILE` and the repeatable `--api-key [admin:]KEY` come on top.
 * Precedence: defaults < config file < flags. */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "prefixd/chat.h"
#include "prefixd/jinja.h"
#include "prefixd/jobstore.h"
#include "prefixd/log.h"

enum { K_STR, K_INT, K_KEYS };

typedef struct key_def {
    const char *name;  /* JSON key; the flag is "--" + name with '_' -> '-' */
    int type;
    size_t off;        /* offset in srv_config */
    long lo, hi;       /* K_INT range */
    const char *def_s; /* K_STR default (NULL: unset) */
    long def_i;        /* K_INT default */
} key_def;

#define OFF(f) offsetof(srv_config, f)
#define MIB (1024L * 1024L)

static const key_def keys[] = {
    {"listen", K_STR, OFF(listen), 0, 0, "127.0.0.1:8080", 0},
    {"model", K_STR, OFF(model), 0, 0, NULL, 0},
    {"tokenizer", K_STR, OFF(tokenizer), 0, 0, NULL, 0},
    {"registry", K_STR, OFF(registry), 0, 0, "registry", 0},
    {"data", K_STR, OFF(data), 0, 0, "data", 0},
    {"log_level", K_STR, OFF(log_level), 0, 0, "info", 0},
    {"chat_template", K_STR, OFF(chat_template), 0, 0, NULL, 0},
    {"threads", K_INT, OFF(threads), 0, 256, NULL, 0},
    {"max_seqs", K_INT, OFF(max_seqs), 1, 4096, NULL, 64},
    {"max_step_tokens", K_INT, OFF(max_step_tokens), 1, 65536, NULL, 256},
    {"queue_limit", K_INT, OFF(queue_limit), 1, 1L << 20, NULL, 1024},
    {"kv_budget_mb", K_INT, OFF(kv_budget_mb), 0, 1L << 24, NULL, 0},
    {"kv_dtype", K_STR, OFF(kv_dtype), 0, 0, "f32", 0},
    {"context", K_INT, OFF(context), 0, 1L << 24, NULL, 0},
    {"max_choices", K_INT, OFF(max_choices), 1, 1024, NULL, 16},
    {"max_body_bytes", K_INT, OFF(max_body_bytes), 1024, 1L << 30, NULL, 1 * MIB},
    {"max_prefix_bytes", K_INT, OFF(max_prefix_bytes), 1024, 1L << 34, NULL, 256 * MIB},
    {"registry_budget_mb", K_INT, OFF(registry_budget_mb), 0, 1L << 24, NULL, 512},
    {"registry_rescan_ms", K_INT, OFF(registry_rescan_ms), 10, 3600000, NULL, 2000},
    {"shutdown_grace_ms", K_INT, OFF(shutdown_grace_ms), 0, 3600000, NULL, 10000},
    {"max_connections", K_INT, OFF(max_connections), 1, 65536, NULL, 512},
    {"connection_timeout_s", K_INT, OFF(connection_timeout_s), 0, 86400, NULL, 60},
    {"max_connections_per_client", K_INT, OFF(max_connections_per_client), 1, 65536, NULL, 32},
    {"request_timeout_s", K_INT, OFF(request_timeout_s), 0, 86400, NULL, 30},
    {"max_url_bytes", K_INT, OFF(max_url_bytes), 256, 1L << 20, NULL, 8192},
    {"max_header_bytes", K_INT, OFF(max_header_bytes), 1024, 1L << 20, NULL, 16384},
    {"max_file_bytes", K_INT, OFF(max_file_bytes), 1024, 1L << 34, NULL, 64 * MIB},
    {"max_jobs", K_INT, OFF(max_jobs), 1, 1000000, NULL, 100},
    {"train_threads", K_INT, OFF(train_threads), 0, 256, NULL, 1},
    {"train_nice", K_INT, OFF(train_nice), 0, 19, NULL, 10},
    {"checkpoint_every", K_INT, OFF(checkpoint_every), 0, 1000000, NULL, 20},
    {"train_eval_every", K_INT, OFF(train_eval_every), 0, 1000000, NULL, 10},
    {"train_metrics_every", K_INT, OFF(train_metrics_every), 1, 1000000, NULL, 10},
    {"train_max_pause_ms", K_INT, OFF(train_max_pause_ms), 0, 60000, NULL, 200},
    {"job_store", K_STR, OFF(job_store), 0, 0, NULL, 0},
    {"job_lease_s", K_INT, OFF(job_lease_s), 2, 3600, NULL, 30},
    {"job_poll_ms", K_INT, OFF(job_poll_ms), 100, 3600000, NULL, 5000},
    {"training_jobs", K_INT, OFF(training_jobs), 0, 1, NULL, 1},
    {"api_keys", K_KEYS, 0, 0, 0, NULL, 0},
};
#define N_KEYS (sizeof keys / sizeof keys[0])

const char config_usage[] =
    "  serve     [--config FILE] [--listen HOST:PORT] [--model PATH] [--tokenizer PATH]\n"
    "            [--registry DIR] [--data DIR] [--threads N] [--max-seqs N]\n"
    "            [--max-step-tokens N] [--queue-limit N] [--kv-budget-mb N] [--context N]\n"
    "            [--max-choices N]\n"
    "            [--api-key [admin:]KEY]... [--max-body-bytes N] [--max-prefix-bytes N]\n"
    "            [--registry-budget-mb N] [--registry-rescan-ms N] [--shutdown-grace-ms N]\n"
    "            [--max-connections N] [--connection-timeout-s N] [--log-level LEVEL]\n"
    "            [--max-connections-per-client N] [--request-timeout-s N]\n"
    "            [--max-url-bytes N] [--max-header-bytes N]\n"
    "            [--max-file-bytes N] [--max-jobs N] [--train-threads N] [--train-nice N]\n"
    "            [--checkpoint-every N] [--train-eval-every N] [--train-metrics-every N]\n"
    "            [--train-max-pause-ms N] [--chat-template NAME|FILE]\n"
    "            [--job-store postgres://...] [--job-lease-s N] [--job-poll-ms N]\n"
    "            [--training-jobs 0|1]\n"
    "            the OpenAI-compatible HTTP server (config/README.md lists every key)\n";

static int fail(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static char **str_field(srv_config *c, const key_def *k) { return (char **)((char *)c + k->off); }
static long *int_field(srv_config *c, const key_def *k) { return (long *)((char *)c + k->off); }

static int set_str(srv_config *c, const key_def *k, const char *v)
{
    char *copy = NULL;
    if (v && !(copy = strdup(v))) return -1;
    char **f = str_field(c, k);
    free(*f);
    *f = copy;
    return 0;
}

static void clear_keys(srv_config *c)
{
    for (int i = 0; i < c->n_keys; i++) {
        /* scrub the secret before handing the memory back */
        volatile char *p = c->keys[i].key;
        while (*p) *p++ = 0;
        free(c->keys[i].key);
    }
    free(c->keys);
    c->keys = NULL;
    c->n_keys = 0;
}

int config_defaults(srv_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_def *k = &keys[i];
        if (k->type == K_STR) {
            if (set_str(c, k, k->def_s) < 0) return -1;
        } else if (k->type == K_INT) {
            *int_field(c, k) = k->def_i;
        }
    }
    return 0;
}

int config_add_key(srv_config *c, const char *spec, int admin)
{
    if (!strncmp(spec, "admin:", 6)) {
        spec += 6;
        admin = 1;
    }
    if (!*spec) return -1;
    srv_api_key *nk = realloc(c->keys, (size_t)(c->n_keys + 1) * sizeof *nk);
    if (!nk) return -1;
    c->keys = nk;
    if (!(nk[c->n_keys].key = strdup(spec))) return -1;
    nk[c->n_keys].admin = admin;
    c->n_keys++;
    return 0;
}

void config_free(srv_config *c)
{
    if (!c) return;
    for (size_t i = 0; i < N_KEYS; i++)
        if (keys[i].type == K_STR) set_str(c, &keys[i], NULL);
    clear_keys(c);
}

static const key_def *find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].name, name)) return &keys[i];
    return NULL;
}

static int load_keys(srv_config *c, const char *path, json_t *v, char *err, size_t cap)
{
    if (!json_is_array(v))
        return fail(err, cap, "%s: \"api_keys\" must be an array of strings or "
                    "{\"key\": …, \"admin\": bool} objects", path);
    clear_keys(c);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        const char *key = NULL;
        int admin = 0;
        if (json_is_string(e)) {
            key = json_string_value(e);
        } else if (json_is_object(e)) {
            const char *name;
            json_t *f;
            json_object_foreach(e, name, f) {
                if (!strcmp(name, "key") && json_is_string(f)) {
                    key = json_string_value(f);
                } else if (!strcmp(name, "admin") && json_is_boolean(f)) {
                    admin = json_is_true(f);
                } else {
                    return fail(err, cap, "%s: api_keys[%zu]: unknown or mistyped field \"%s\" "
                                "(allowed: \"key\" string, \"admin\" boolean)", path, i, name);
                }
            }
        }
        if (!key || !*key)
            return fail(err, cap, "%s: api_keys[%zu] must be a non-empty string or an object "
                        "with a non-empty \"key\"", path, i);
        /* a string entry may carry the "admin:" form too */
        if (config_add_key(c, key, admin) < 0)
            return fail(err, cap, "%s: api_keys[%zu]: out of memory or empty key", path, i);
    }
    return 0;
}

int config_load(srv_config *c, const char *path, char *err, size_t cap)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line < 1) return fail(err, cap, "%s: %s", path, je.text);
        return fail(err, cap, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    }
    int rc = 0;
    if (!json_is_object(root)) {
        rc = fail(err, cap, "%s: the configuration must be a JSON object", path);
        goto done;
    }
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        const key_def *k = find_key(name);
        if (!k) {
            rc = fail(err, cap, "%s: unknown key \"%s\" (config/README.md lists the keys)", path,
                      name);
            goto done;
        }
        if (k->type == K_KEYS) {
            if ((rc = load_keys(c, path, v, err, cap)) < 0) goto done;
        } else if (k->type == K_STR) {
            if (!json_is_string(v) && !json_is_null(v)) {
                rc = fail(err, cap, "%s: \"%s\" must be a string", path, name);
                goto done;
            }
            if (set_str(c, k, json_is_null(v) ? NULL : json_string_value(v)) < 0) {
                rc = fail(err, cap, "out of memory");
                goto done;
            }
        } else {
            json_int_t x = json_integer_value(v);
            if (!json_is_integer(v) || x < k->lo || x > k->hi) {
                rc = fail(err, cap, "%s: \"%s\" must be a whole number in [%ld, %ld]", path,
                          name, k->lo, k->hi);
                goto done;
            }
            *int_field(c, k) = (long)x;
        }
    }
done:
    json_decref(root);
    return rc;
}

/* "--max-seqs" -> "max_seqs" into out; 0 if arg is not a "--" flag. */
static int flag_key(const char *arg, char *out, size_t cap)
{
    if (strncmp(arg, "--", 2) != 0) return 0;
    size_t n = 0;
    for (const char *p = arg + 2; *p && *p != '=' && n + 1 < cap; p++)
        out[n++] = *p == '-' ? '_' : *p;
    out[n] = 0;
    return 1;
}

int config_flags(srv_config *c, int argc, char **argv, int apply, const char **config_path,
                 char *err, size_t cap)
{
    int keys_from_flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if ((r = cli_opt(argc, argv, &i, "--config", &v))) {
            if (r < 0) return fail(err, cap, "--config needs a value");
            *config_path = v;
            continue;
        }
        if ((r = cli_opt(argc, argv, &i, "--api-key", &v))) {
            if (r < 0) return fail(err, cap, "--api-key needs a value");
            if (!apply) continue;
            if (!keys_from_flags) clear_keys(c); /* flags replace the file's keys */
            keys_from_flags = 1;
            if (config_add_key(c, v, 0) < 0)
                return fail(err, cap, "--api-key: empty key (or out of memory)");
            continue;
        }
        char name[64];
        const key_def *k = flag_key(argv[i], name, sizeof name) ? find_key(name) : NULL;
        if (!k || k->type == K_KEYS) return fail(err, cap, "serve: unknown option '%s'", argv[i]);
        char flag[72];
        snprintf(flag, sizeof flag, "%.*s", (int)strcspn(argv[i], "="), argv[i]);
        if ((r = cli_opt(argc, argv, &i, flag, &v)) <= 0)
            return fail(err, cap, "%s needs a value", flag);
        if (!apply) continue;
        if (k->type == K_STR) {
            if (set_str(c, k, v) < 0) return fail(err, cap, "out of memory");
        } else {
            char *end;
            errno = 0;
            long x = strtol(v, &end, 10);
            if (errno || end == v || *end || x < k->lo || x > k->hi)
                return fail(err, cap, "%s: '%s' is not a whole number in [%ld, %ld]", flag, v,
                            k->lo, k->hi);
            *int_field(c, k) = x;
        }
    }
    return 0;
}

int config_split_listen(const char *listen, char *host, size_t cap, int *port)
{
    const char *colon;
    size_t hlen;
    const char *h = listen;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':') return -1;
        h = listen + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon) return -1;
        hlen = (size_t)(colon - listen);
        if (memchr(listen, ':', hlen)) return -1; /* bare IPv6 needs brackets */
    }
    if (hlen >= cap) return -1;
    memcpy(host, h, hlen);
    host[hlen] = 0;
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || p < 0 || p > 65535) return -1;
    *port = (int)p;
    return 0;
}

int config_check(const srv_config *c, char *err, size_t cap)
{
    char host[256];
    int port;
    if (!c->listen || config_split_listen(c->listen, host, sizeof host, &port) < 0)
        return fail(err, cap, "listen: '%s' is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080)",
                    c->listen ? c->listen : "");
    if (!c->model || !*c->model)
        return fail(err, cap, "no model: set \"model\" in the config file or pass --model PATH");
    if (!c->registry || !*c->registry)
        return fail(err, cap, "no registry: set \"registry\" or pass --registry DIR");
    if (c->job_store && *c->job_store && !pd_jobstore_is_url(c->job_store))
        return fail(err, cap, "job_store: '%.64s' is not a postgres:// or postgresql:// URL "
                    "(leave it unset for SQLite under the data directory)", c->job_store);
    if (c->max_url_bytes > c->max_header_bytes)
        return fail(err, cap, "max_url_bytes (%ld) must not exceed max_header_bytes (%ld)",
                    c->max_url_bytes, c->max_header_bytes);
    if (!c->kv_dtype || (strcmp(c->kv_dtype, "f32") && strcmp(c->kv_dtype, "f16")))
        return fail(err, cap, "kv_dtype: '%.64s' is not one of f32, f16",
                    c->kv_dtype ? c->kv_dtype : "");
    if (!c->log_level || pd_log_level_parse(c->log_level) < 0)
        return fail(err, cap, "log_level: '%s' is not one of debug, info, warn, error, off",
                    c->log_level ? c->log_level : "");
    if (c->chat_template) { /* refuse a template that cannot be read or parsed now */
        char *src;
        pd_err e;
        pd_jinja_template *t = NULL;
        if (pd_chat_template_load(c->chat_template, &src, &e) < 0)
            return fail(err, cap, "chat_template: %s", e.msg);
        int rc = pd_jinja_parse(src, strlen(src), &t, &e);
        free(src);
        pd_jinja_free(t);
        if (rc < 0) return fail(err, cap, "chat_template %s: %s", c->chat_template, e.msg);
    }
    return 0;
}
