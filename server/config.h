/* config.h — the configuration of `prefixd serve`: one table of keys with
 * their defaults (config.c), read from a JSON file (jansson) and overridden
 * by command-line flags. Every key is documented in config/README.md. */
#ifndef PREFIXD_SERVER_CONFIG_H
#define PREFIXD_SERVER_CONFIG_H

#include <stddef.h>

/* One API key. key is owned by the config. */
typedef struct srv_api_key {
    char *key;
    int admin; /* 1: may PUT/DELETE prefixes */
} srv_api_key;

/* Every string is owned by the config (malloc'd), NULL when unset. */
typedef struct srv_config {
    char *listen;             /* HOST:PORT */
    char *model;              /* model file (.bin or .gguf) */
    char *tokenizer;          /* llama2.c tokenizer, or NULL */
    char *registry;           /* registry directory */
    char *data;               /* data directory (job store, uploaded files) */
    char *log_level;          /* debug | info | warn | error | off */
    char *chat_template;      /* built-in name or template file; NULL: the model's */
    long threads;             /* engine threads, 0: online CPUs */
    long max_seqs;            /* running sequences at most */
    long max_step_tokens;     /* tokens per engine step at most */
    long queue_limit;         /* waiting requests at most */
    long kv_budget_mb;        /* KV cache pool, MiB; 0: derived from free memory */
    char *kv_dtype;           /* "f32" | "f16": KV cache and resident prefix storage */
    long context;             /* tokens per request at most, 0: the model's */
    long max_choices;         /* prompts × n per request at most */
    long max_body_bytes;      /* JSON request bodies */
    long max_prefix_bytes;    /* PUT /v1/prefixes bodies */
    long registry_budget_mb;  /* resident prefixes, MiB; 0: unbounded */
    long registry_rescan_ms;  /* periodic registry rescan */
    long shutdown_grace_ms;   /* time running requests get at shutdown */
    long max_connections;     /* concurrent HTTP connections */
    long connection_timeout_s;/* idle connection timeout */
    long max_connections_per_client; /* concurrent connections from one IP address */
    long request_timeout_s;   /* deadline for a request's headers and body, 0: none */
    long max_url_bytes;       /* request path and query at most (414 beyond) */
    long max_header_bytes;    /* request line and headers at most (431 beyond) */
    long max_file_bytes;      /* POST /v1/files bodies */
    long max_jobs;            /* unfinished fine-tuning jobs at most */
    long train_threads;       /* threads of a training job, 0: online CPUs */
    long train_nice;          /* nice increment of the training threads */
    long checkpoint_every;    /* training steps between checkpoints, 0: none */
    long train_eval_every;    /* training steps between validation losses */
    long train_metrics_every; /* training steps between metrics events */
    long train_max_pause_ms;  /* longest pause of training while serving is busy */
    char *job_store;          /* postgres://... job store; NULL: SQLite under data */
    long job_lease_s;         /* lease of a training job on a shared store, seconds */
    long job_poll_ms;         /* how often the worker looks for jobs of other replicas */
    long training_jobs;       /* training jobs this replica runs at once (0 or 1) */
    srv_api_key *keys;        /* n_keys entries (owned) */
    int n_keys;
} srv_config;

/* Fills c with the defaults (strings are copied, so config_free works). 0 or
 * -1 on oom. */
int config_defaults(srv_config *c);

/* Reads path (a JSON object) into c over its current values. Unknown keys,
 * wrong types and out-of-range values are errors: returns -1 with a message
 * naming the file, line and column or the key in err (cap bytes). */
int config_load(srv_config *c, const char *path, char *err, size_t cap);

/* Applies the command-line flags of `prefixd serve` (argv[0] is "serve").
 * Sets *config_path to the --config value when given (borrowed from argv).
 * Returns 0, or -1 with the message in err (a usage error). The flags are
 * parsed twice by cmd_serve: first for --config only (apply = 0), then on
 * top of the file (apply = 1). */
int config_flags(srv_config *c, int argc, char **argv, int apply, const char **config_path,
                 char *err, size_t cap);

/* Checks cross-key rules (listen parses, a model is set, …). 0 or -1. */
int config_check(const srv_config *c, char *err, size_t cap);

/* Adds a key: "KEY" or "admin:KEY". 0 or -1 (oom / empty). */
int config_add_key(srv_config *c, const char *spec, int admin);

/* Splits "HOST:PORT" ("[V6]:PORT" for IPv6; an empty host means every
 * interface) into host (cap bytes, brackets removed) and port 0..65535.
 * 0 or -1 when malformed. */
int config_split_listen(const char *listen, char *host, size_t cap, int *port);

void config_free(srv_config *c);

/* The flags' help text (for usage). */
extern const char config_usage[];

#endif
