/* routes_jobs.c — fine-tuning jobs over HTTP, in OpenAI's shape: POST and
 * GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id}[/events |
 * /checkpoints], POST /v1/fine_tuning/jobs/{id}/cancel.
 *
 * POST checks the whole request here (types, ranges, the model, the
 * suffix, init_from) and stores it with every setting resolved ("auto" and
 * absent values replaced by the defaults; n_epochs "auto" is resolved by
 * the trainer from the data, see PD_TRAIN_AUTO_STEPS), so GET shows what
 * will run and a resumed job runs the same settings; the job store checks
 * the files. The job starts in validating_files and the worker (worker.c)
 * takes it from there.
 *
 * Method: `method: {"type": "supervised", "supervised": {"hyperparameters":
 * {...}}}` or no method: this server's supervised method is prefix tuning
 * (a task prefix trained on the completions, the base model frozen);
 * "prefix" is accepted as its other name. Any other type is a 400 naming
 * method, except "distill": context distillation of a long prompt into the
 * prefix (its teacher settings, DISTILL_KEYS, only in
 * method.distill.hyperparameters; resolve_distill checks them and stores
 * teacher_messages rendered as teacher_prompt; the training file then holds
 * the user inputs the teacher continues). Settings (hp_keys below), in the
 * top-level `hyperparameters` and/or the method's (given twice they must agree): OpenAI's n_epochs
 * ("auto" or a count), batch_size, learning_rate_multiplier (multiplies
 * learning_rate, given or default); and learning_rate (default 0.1 for a
 * direct prefix, 1e-2 with prefix_projection: PD_TRAIN_DEFAULT_LR*),
 * lr_scheduler_type (linear | cosine | constant, after warm-up),
 * warmup_ratio, weight_decay, max_grad_norm (0: no clipping), eval_every
 * (steps between validations; every epoch's end is validated too),
 * early_stopping_patience (validations without a lower validation loss
 * before the job stops; the result is then the best validated prefix),
 * num_virtual_tokens, prefix_projection, encoder_hidden_size, init_text,
 * init_from (a task of the registry or a file of purpose "prefix": the
 * job starts from that prefix, and its length). The task is `suffix`, or
 * the job's id when there is none; an existing task is replaced when the
 * job succeeds. `metadata` and `integrations` are accepted and ignored;
 * any other unknown parameter is a 400. Choices where OpenAI says nothing:
 * an unknown file is 400 (param training_file / validation_file), as
 * OpenAI answers; cancelling a finished job is 409. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "prefixd/chat.h"
#include "worker.h"
#include "prefixd/log.h"

#define MAX_EPOCHS 1000
#define MAX_BATCH 256
#define MAX_HIDDEN 16384
#define MAX_LR 10.0
#define MAX_LR_MULT 100.0
#define MAX_INIT_TEXT 16384
#define CANCEL_WAIT_MS 5000

/* A request error: where (param, "" for none) and what. */
typedef struct bad {
    char param[64];
    char msg[512];
} bad;

static int fail(bad *b, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(bad *b, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->msg, sizeof b->msg, fmt, ap);
    va_end(ap);
    snprintf(b->param, sizeof b->param, "%s", param ? param : "");
    return -1;
}

static int is_auto(const json_t *v)
{
    return !v || json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), "auto"));
}

/* The keys of obj must all be in allowed (NULL-terminated). The error's
 * param is where (the enclosing parameter), or the key itself at the top
 * level (where NULL). */
static int only_keys(const json_t *obj, const char *const *allowed, const char *where, bad *b)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++) ok |= !strcmp(*a, key);
        if (!ok)
            return fail(b, where ? where : key, "Unrecognized request argument supplied: '%s'%s%s.",
                        key, where ? " in " : "", where ? where : "");
    }
    return 0;
}

/* An integer setting: "auto"/absent leave *out; otherwise in [lo, hi]. */
static int int_setting(const json_t *o, const char *key, long lo, long hi, int *out, bad *b)
{
    const json_t *v = json_object_get(o, key);
    if (is_auto(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return fail(b, key, "%s must be \"auto\" or a whole number from %ld to %ld.", key, lo,
                    hi);
    *out = (int)json_integer_value(v);
    return 0;
}

static int real_setting(const json_t *o, const char *key, double hi, double *out, bad *b)
{
    const json_t *v = json_object_get(o, key);
    if (is_auto(v)) return 0;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x > 0 && x <= hi))
        return fail(b, key, "%s must be \"auto\" or a number in (0, %g].", key, hi);
    *out = x;
    return 0;
}

/* Every setting a job takes, in hyperparameters or method.<type>.hyperparameters;
 * a distill job takes the teacher's settings too (DISTILL_KEYS, resolve_distill). */
#define HP_KEYS                                                                              \
    "n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate",                  \
        "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm", "eval_every", \
        "early_stopping_patience", "num_virtual_tokens", "prefix_projection",               \
        "encoder_hidden_size", "init_text", "init_from"
#define DISTILL_KEYS                                                                         \
    "teacher_prompt", "teacher_messages", "n_samples", "sample_length", "temperature",      \
        "ce_weight", "init"
static const char *const hp_keys[] = {HP_KEYS, NULL};
static const char *const hp_keys_distill[] = {HP_KEYS, DISTILL_KEYS, NULL};

/* Soft targets a distill job may hold, in bytes at most (prefixd/distill.h). */
#define MAX_SOFT_BYTES (2ull << 30)

/* A real setting in [lo, hi] ("auto"/absent leave *out); lo itself only
 * when lo_ok. */
static int range_setting(const json_t *o, const char *key, double lo, int lo_ok, double hi,
                         double *out, bad *b)
{
    const json_t *v = json_object_get(o, key);
    if (is_auto(v)) return 0;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x <= hi && (x > lo || (lo_ok && x == lo))))
        return fail(b, key, "%s must be \"auto\" or a number in %c%g, %g].", key,
                    lo_ok ? '[' : '(', lo, hi);
    *out = x;
    return 0;
}

/* The prefix length init_from names: a task of the registry, or an uploaded
 * prefix file (purpose "prefix"); -1 with *b filled. */
static int init_from_len(srv *s, const char *from, bad *b)
{
    if (!strncmp(from, "file-", 5)) {
        char path[4096];
        pd_err err;
        pd_prefix *pf;
        if (pd_jobstore_file_path(s->js, from, path, sizeof path, &err) < 0)
            return fail(b, "init_from", "init_from: no uploaded file '%s' (upload the prefix "
                        "with purpose \"prefix\").", from);
        if (pd_prefix_load(path, s->model, &pf, &err) < 0)
            return fail(b, "init_from", "init_from: file '%s' is not a prefix for this model: "
                        "%s", from, err.msg);
        int n = pf->n_tokens;
        pd_prefix_release(pf);
        return n;
    }
    pd_registry_entry e;
    if (!pd_task_name_valid(from) || pd_registry_get(s->reg, from, &e) != PD_OK)
        return fail(b, "init_from", "init_from: '%s' is neither a task in the registry nor an "
                    "uploaded prefix file id.", from);
    return e.n_tokens;
}

/* Checks the given settings (an object of hp_keys) and returns them all
 * resolved (new reference; "auto" stays only for n_epochs), or NULL with *b. */
static json_t *resolve_hp(srv *s, const json_t *g, bad *b)
{
    pd_train_params d = pd_train_default_params();
    int epochs = 0, batch = d.batch_size, P = d.num_virtual_tokens,
        hidden = d.encoder_hidden_size, proj = 0, patience = 0,
        eval_every = (int)s->cfg->train_eval_every;
    double mult = 1.0, lr = 0, warmup = d.warmup_fraction, wd = d.weight_decay,
           clip = d.max_grad_norm;
    const int seq_len = s->model->cfg.seq_len;
    if (int_setting(g, "n_epochs", 1, MAX_EPOCHS, &epochs, b) < 0 ||
        int_setting(g, "batch_size", 1, MAX_BATCH, &batch, b) < 0 ||
        real_setting(g, "learning_rate_multiplier", MAX_LR_MULT, &mult, b) < 0 ||
        real_setting(g, "learning_rate", MAX_LR, &lr, b) < 0 ||
        range_setting(g, "warmup_ratio", 0, 1, 0.99, &warmup, b) < 0 ||
        range_setting(g, "weight_decay", 0, 1, 100, &wd, b) < 0 ||
        range_setting(g, "max_grad_norm", 0, 1, 1e9, &clip, b) < 0 ||
        int_setting(g, "eval_every", 0, 1000000, &eval_every, b) < 0 ||
        int_setting(g, "early_stopping_patience", 0, 100000, &patience, b) < 0 ||
        int_setting(g, "num_virtual_tokens", 1, seq_len - 2, &P, b) < 0 ||
        int_setting(g, "encoder_hidden_size", 1, MAX_HIDDEN, &hidden, b) < 0)
        return NULL;
    const char *sched = "linear";
    const json_t *v = json_object_get(g, "lr_scheduler_type");
    if (!is_auto(v)) {
        if (!json_is_string(v) || pd_lr_kind_parse(json_string_value(v)) < 0) {
            fail(b, "lr_scheduler_type", "lr_scheduler_type must be \"linear\", \"cosine\" or "
                 "\"constant\".");
            return NULL;
        }
        sched = json_string_value(v);
    }
    v = json_object_get(g, "prefix_projection");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            fail(b, "prefix_projection", "prefix_projection must be true or false.");
            return NULL;
        }
        proj = json_is_true(v);
    }
    const char *init_text = NULL, *init_from = NULL;
    v = json_object_get(g, "init_text");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || !json_string_length(v) ||
            strlen(json_string_value(v)) != json_string_length(v) ||
            json_string_length(v) > MAX_INIT_TEXT) {
            fail(b, "init_text", "init_text must be a non-empty string of at most %d bytes "
                 "(without NUL characters).", MAX_INIT_TEXT);
            return NULL;
        }
        init_text = json_string_value(v);
    }
    v = json_object_get(g, "init_from");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || !json_string_length(v)) {
            fail(b, "init_from", "init_from must be a task name or a prefix file id.");
            return NULL;
        }
        init_from = json_string_value(v);
    }
    if ((init_text || init_from) && proj) {
        fail(b, init_text ? "init_text" : "init_from", "%s cannot be combined with "
             "prefix_projection: train the prefix directly to start from a prompt or a prefix.",
             init_text ? "init_text" : "init_from");
        return NULL;
    }
    if (init_text && init_from) {
        fail(b, "init_from", "give init_text or init_from, not both.");
        return NULL;
    }
    if (init_text) { /* the prompt's token count is the prefix length */
        int32_t *tok = malloc((size_t)seq_len * sizeof *tok);
        int n = tok ? pd_tokenizer_encode(s->model->tok, init_text, strlen(init_text), 1, 0, tok,
                                          seq_len)
                    : -1;
        free(tok);
        if (n < 1 || n > seq_len - 3) {
            fail(b, "init_text", "init_text must encode to at most %d tokens.", seq_len - 3);
            return NULL;
        }
        P = n;
    }
    if (init_from && (P = init_from_len(s, init_from, b)) < 0) return NULL;
    if (lr == 0) lr = proj ? PD_TRAIN_DEFAULT_LR_PROJECTION : PD_TRAIN_DEFAULT_LR;
    json_t *out = json_pack("{s:o,s:i,s:f,s:f,s:s,s:f,s:f,s:f,s:i,s:i,s:i,s:b,s:i}",
                            "n_epochs", epochs ? json_integer(epochs) : json_string("auto"),
                            "batch_size", batch, "learning_rate_multiplier", mult,
                            "learning_rate", lr, "lr_scheduler_type", sched, "warmup_ratio",
                            warmup, "weight_decay", wd, "max_grad_norm", clip, "eval_every",
                            eval_every, "early_stopping_patience", patience,
                            "num_virtual_tokens", P, "prefix_projection", proj,
                            "encoder_hidden_size", hidden);
    if (out && init_text) json_object_set_new(out, "init_text", json_string(init_text));
    if (out && init_from) json_object_set_new(out, "init_from", json_string(init_from));
    if (!out) fail(b, NULL, "Out of memory.");
    return out;
}

/* The teacher prompt of teacher_messages: the conversation rendered with
 * the model's chat template (chatml when it has none), without a
 * generation prompt. New string (free()), or NULL with *b. */
static char *render_teacher(srv *s, const json_t *messages, bad *b)
{
    json_t *norm;
    pd_err err;
    if (!json_is_array(messages) || !json_array_size(messages)) {
        fail(b, "teacher_messages", "teacher_messages must be a non-empty array of messages.");
        return NULL;
    }
    if (pd_chat_normalize(messages, &norm, &err) < 0) {
        fail(b, "teacher_messages", "teacher_messages: %s", err.msg);
        return NULL;
    }
    const char *tmpl = pd_chat_model_template(s->model->tok);
    if (!tmpl) tmpl = pd_chat_builtin(PD_CHAT_DEFAULT);
    pd_chat_params cp = pd_chat_default_params();
    pd_chat_model_tokens(s->model->tok, &cp);
    cp.add_generation_prompt = 0;
    char *out = NULL;
    if (pd_chat_render(tmpl, norm, &cp, &out, &err) < 0)
        fail(b, "teacher_messages", "teacher_messages: %s", err.msg);
    json_decref(norm);
    return out;
}

/* A distill job's settings (method.distill.hyperparameters, in g) checked
 * and resolved into out (which resolve_hp filled); -1 with *b. The teacher
 * prompt is stored as text (teacher_messages rendered). */
static int resolve_distill(srv *s, const json_t *g, json_t *out, bad *b)
{
    pd_distill_params d = pd_distill_default_params();
    const pd_config *c = &s->model->cfg;
    int samples = d.n_samples, len = d.sample_length;
    double temp = d.temperature, ce = d.ce_weight;
    if (int_setting(g, "n_samples", 2, 1000000, &samples, b) < 0 ||
        int_setting(g, "sample_length", 2, c->seq_len - 3, &len, b) < 0 ||
        range_setting(g, "temperature", 0, 0, 100, &temp, b) < 0 ||
        range_setting(g, "ce_weight", 0, 1, 1, &ce, b) < 0)
        return -1;
    const char *init = "prompt";
    const json_t *v = json_object_get(g, "init");
    if (!is_auto(v)) {
        if (!json_is_string(v) || (strcmp(json_string_value(v), "prompt") &&
                                   strcmp(json_string_value(v), "random")))
            return fail(b, "init", "init must be \"prompt\" (the teacher prompt's BOS and last "
                        "positions) or \"random\".");
        init = json_string_value(v);
    }
    static const char *const excluded[] = {"init_text", "init_from", NULL};
    for (const char *const *k = excluded; *k; k++)
        if (json_object_get(g, *k) && !json_is_null(json_object_get(g, *k)))
            return fail(b, *k, "%s does not apply to a distill job (it starts from the teacher "
                        "prompt, or at random with init \"random\").", *k);
    if (json_is_true(json_object_get(g, "prefix_projection")))
        return fail(b, "prefix_projection", "a distill job trains the prefix directly: "
                    "prefix_projection must be false.");
    const json_t *tp = json_object_get(g, "teacher_prompt");
    const json_t *tm = json_object_get(g, "teacher_messages");
    if (json_is_null(tp)) tp = NULL;
    if (json_is_null(tm)) tm = NULL;
    if (!tp == !tm)
        return fail(b, tp ? "teacher_messages" : "teacher_prompt",
                    "a distill job takes the prompt to compress as teacher_prompt (text) or "
                    "teacher_messages (a conversation), exactly one of them.");
    char *text = NULL;
    if (tp) {
        if (!json_is_string(tp) || !json_string_length(tp) ||
            strlen(json_string_value(tp)) != json_string_length(tp))
            return fail(b, "teacher_prompt", "teacher_prompt must be a non-empty string "
                        "(without NUL characters).");
        text = strdup(json_string_value(tp));
        if (!text) return fail(b, NULL, "Out of memory.");
    } else if (!(text = render_teacher(s, tm, b))) {
        return -1;
    }
    const char *param = tp ? "teacher_prompt" : "teacher_messages";
    int32_t *tok = malloc((size_t)c->seq_len * sizeof *tok);
    int n = tok ? pd_tokenizer_encode(s->model->tok, text, strlen(text), 1, 0, tok, c->seq_len)
                : -1;
    free(tok);
    const int P = (int)json_integer_value(json_object_get(out, "num_virtual_tokens"));
    int rc = 0;
    if (n < 0 || n + len > c->seq_len - 1)
        rc = fail(b, param, "%s encodes to %d tokens: with sample_length %d and at least one "
                  "input token it must fit the context of %d tokens.", param, n, len,
                  c->seq_len);
    else if (!strcmp(init, "prompt") && P >= n)
        rc = fail(b, "num_virtual_tokens", "num_virtual_tokens %d does not compress a teacher "
                  "prompt of %d tokens: use fewer.", P, n);
    else if ((unsigned long long)samples * (unsigned long long)(1 + len) *
                 (unsigned long long)c->vocab_size * 4ull > MAX_SOFT_BYTES)
        rc = fail(b, "n_samples", "%d samples of %d tokens over a vocabulary of %d need more "
                  "than %llu MB of soft targets: use fewer samples or shorter ones.", samples,
                  len, c->vocab_size, MAX_SOFT_BYTES >> 20);
    if (rc == 0 &&
        (json_object_set_new(out, "teacher_prompt", json_string(text)) < 0 ||
         (tm && json_object_set(out, "teacher_messages", (json_t *)tm) < 0) ||
         json_object_set_new(out, "n_samples", json_integer(samples)) < 0 ||
         json_object_set_new(out, "sample_length", json_integer(len)) < 0 ||
         json_object_set_new(out, "temperature", json_real(temp)) < 0 ||
         json_object_set_new(out, "ce_weight", json_real(ce)) < 0 ||
         json_object_set_new(out, "init", json_string(init)) < 0))
        rc = fail(b, NULL, "Out of memory.");
    free(text);
    return rc;
}

int jobs_distill_params(const json_t *mhp, pd_train_params *tp, pd_err *err)
{
    const json_t *v = json_is_object(mhp) ? json_object_get(mhp, "teacher_prompt") : NULL;
    if (!v) return PD_OK; /* not a distill job */
    pd_distill_params *d = &tp->distill;
    const json_t *ns = json_object_get(mhp, "n_samples"), *sl = json_object_get(mhp, "sample_length");
    const json_t *te = json_object_get(mhp, "temperature"), *ce = json_object_get(mhp, "ce_weight");
    const json_t *in = json_object_get(mhp, "init");
    if (!json_is_string(v) || !json_is_integer(ns) || !json_is_integer(sl) ||
        !json_is_number(te) || !json_is_number(ce) || !json_is_string(in))
        return pd_err_set(err, PD_EINVAL, "distill settings: teacher_prompt, n_samples, "
                          "sample_length, temperature, ce_weight or init is missing or of the "
                          "wrong type in the stored job");
    d->teacher_prompt = json_string_value(v);
    d->n_samples = (int)json_integer_value(ns);
    d->sample_length = (int)json_integer_value(sl);
    d->temperature = json_number_value(te);
    d->ce_weight = json_number_value(ce);
    d->init = strcmp(json_string_value(in), "random") ? PD_DISTILL_INIT_PROMPT
                                                       : PD_DISTILL_INIT_RANDOM;
    return PD_OK;
}

/* Checks the request body and builds the job's stored request (new
 * reference) with every setting resolved; NULL with *b filled. */
static json_t *job_request(srv *s, const json_t *body, bad *b)
{
    static const char *const top[] = {"model", "training_file", "validation_file", "suffix",
                                      "seed", "hyperparameters", "method", "metadata",
                                      "integrations", NULL};
    if (only_keys(body, top, NULL, b) < 0) return NULL;
    const json_t *model = json_object_get(body, "model");
    if (model && !json_is_null(model) &&
        !(json_is_string(model) && !strcmp(json_string_value(model), s->model->id))) {
        fail(b, "model", "Model %s%s%s is not available for fine-tuning: prefixes are trained "
             "on the base model '%s' (or leave model out).",
             json_is_string(model) ? "'" : "", json_is_string(model) ? json_string_value(model)
                                                                     : "(not a string)",
             json_is_string(model) ? "'" : "", s->model->id);
        return NULL;
    }
    const json_t *train = json_object_get(body, "training_file");
    if (!json_is_string(train) || !json_string_length(train)) {
        fail(b, "training_file", "Missing required parameter: 'training_file' (a file id from "
             "POST /v1/files).");
        return NULL;
    }
    const json_t *valid = json_object_get(body, "validation_file");
    if (valid && !json_is_null(valid) && !json_is_string(valid)) {
        fail(b, "validation_file", "validation_file must be a file id or null.");
        return NULL;
    }
    const json_t *suffix = json_object_get(body, "suffix");
    if (suffix && !json_is_null(suffix)) {
        if (!json_is_string(suffix) || !pd_task_name_valid(json_string_value(suffix))) {
            fail(b, "suffix", "suffix names the new task: use 1 to %d characters from "
                 "[A-Za-z0-9._-], starting with a letter or digit.", PD_TASK_NAME_MAX);
            return NULL;
        }
        if (!strcmp(json_string_value(suffix), s->model->id)) {
            fail(b, "suffix", "suffix '%s' is the base model's id; choose another task name.",
                 json_string_value(suffix));
            return NULL;
        }
    }
    const json_t *seed = json_object_get(body, "seed");
    if (seed && !json_is_null(seed) &&
        !(json_is_integer(seed) && json_integer_value(seed) >= 0 &&
          json_integer_value(seed) <= 2147483647)) {
        fail(b, "seed", "seed must be a whole number from 0 to 2147483647.");
        return NULL;
    }

    /* hyper-parameters: the top-level object and the method's, merged */
    const json_t *hp = json_object_get(body, "hyperparameters");
    if (hp && !json_is_null(hp) && !json_is_object(hp)) {
        fail(b, "hyperparameters", "hyperparameters must be an object.");
        return NULL;
    }
    const json_t *method = json_object_get(body, "method"), *mhp = NULL;
    const char *type = "supervised";
    if (method && !json_is_null(method)) {
        if (!json_is_object(method)) {
            fail(b, "method", "method must be an object.");
            return NULL;
        }
        const json_t *t = json_object_get(method, "type");
        if (!json_is_string(t) ||
            (strcmp(json_string_value(t), "supervised") && strcmp(json_string_value(t), "prefix") &&
             strcmp(json_string_value(t), "distill"))) {
            fail(b, "method", "method.type %s%s%s is not supported: this server's methods are "
                 "\"supervised\" (prefix tuning: a task prefix trained on the completions with "
                 "the base model frozen; \"prefix\" is accepted as its other name) and "
                 "\"distill\" (a long prompt compressed into a short prefix).",
                 json_is_string(t) ? "\"" : "", json_is_string(t) ? json_string_value(t)
                                                                   : "(missing)",
                 json_is_string(t) ? "\"" : "");
            return NULL;
        }
        type = json_string_value(t);
        const char *m_keys[] = {"type", type, NULL};
        if (only_keys(method, m_keys, "method", b) < 0) return NULL;
        const json_t *inner = json_object_get(method, type);
        if (inner && !json_is_null(inner)) {
            static const char *const i_keys[] = {"hyperparameters", NULL};
            char where[32];
            snprintf(where, sizeof where, "method.%s", type);
            if (!json_is_object(inner)) {
                fail(b, "method", "%s must be an object.", where);
                return NULL;
            }
            if (only_keys(inner, i_keys, where, b) < 0) return NULL;
            mhp = json_object_get(inner, "hyperparameters");
            if (mhp && json_is_null(mhp)) mhp = NULL;
            if (mhp && !json_is_object(mhp)) {
                fail(b, "method", "%s.hyperparameters must be an object.", where);
                return NULL;
            }
        }
    }
    json_t *given = json_object(); /* every setting given, once */
    if (!given) {
        fail(b, NULL, "Out of memory.");
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        const json_t *o = i ? mhp : (json_is_object(hp) ? hp : NULL);
        const char *key;
        json_t *v;
        if (!o) continue;
        const int distill = i && !strcmp(type, "distill");
        if (only_keys(o, distill ? hp_keys_distill : hp_keys,
                      i ? "method.hyperparameters" : "hyperparameters", b) < 0) {
            json_decref(given);
            return NULL;
        }
        json_object_foreach((json_t *)o, key, v) {
            const json_t *had = json_object_get(given, key);
            if (had && !json_equal(had, v)) {
                json_decref(given);
                fail(b, "hyperparameters", "hyperparameters and method.%s.hyperparameters "
                     "disagree on %s: give each setting once.", type, key);
                return NULL;
            }
            json_object_set(given, key, v);
        }
    }
    json_t *resolved = resolve_hp(s, given, b);
    if (resolved && !strcmp(type, "distill") && resolve_distill(s, given, resolved, b) < 0) {
        json_decref(resolved);
        resolved = NULL;
    }
    json_decref(given);
    if (!resolved) return NULL;
    json_t *common = json_pack("{s:O,s:O,s:O}", "n_epochs", json_object_get(resolved, "n_epochs"),
                               "batch_size", json_object_get(resolved, "batch_size"),
                               "learning_rate_multiplier",
                               json_object_get(resolved, "learning_rate_multiplier"));
    json_t *out = json_pack("{s:s,s:O,s:O?,s:O?,s:O?,s:o,s:{s:s,s:{s:o}}}", "model", s->model->id,
                            "training_file", train, "validation_file", valid, "suffix", suffix,
                            "seed", seed, "hyperparameters", common, "method", "type", type,
                            type, "hyperparameters", resolved);
    if (!out) fail(b, NULL, "Out of memory.");
    return out;
}

/* Unfinished jobs (validating_files, queued, running) in the store, or -1. */
static long count_unfinished(pd_jobstore *js, pd_err *err)
{
    long n = 0;
    char after[PD_JOBSTORE_ID_MAX] = "";
    for (;;) {
        json_t *page;
        if (pd_jobstore_job_list(js, after[0] ? after : NULL, PD_JOBSTORE_LIST_MAX, &page, err) <
            0)
            return -1;
        json_t *data = json_object_get(page, "data"), *job;
        size_t i;
        json_array_foreach(data, i, job) {
            const char *st = json_string_value(json_object_get(job, "status"));
            int parsed = st ? pd_job_status_parse(st) : -1;
            if (parsed >= 0 && !pd_job_status_final((pd_job_status)parsed)) n++;
            const char *id = json_string_value(json_object_get(job, "id"));
            if (id) snprintf(after, sizeof after, "%s", id);
        }
        int more = json_is_true(json_object_get(page, "has_more")) && json_array_size(data);
        json_decref(page);
        if (!more) return n;
    }
}

enum MHD_Result route_jobs_create(http_req *r)
{
    enum MHD_Result ret;
    if (http_need_jobstore(r, &ret) < 0) return ret;
    srv *s = r->s;
    json_t *body = http_body_json(r, &ret);
    if (!body) return ret;
    bad b = {{0}, {0}};
    json_t *req = job_request(s, body, &b);
    json_decref(body);
    if (!req)
        return http_send_error(r, b.param[0] ? 400 : 503, b.param[0] ? b.param : NULL,
                               b.param[0] ? "invalid_value" : "out_of_memory", "%s", b.msg);
    pd_err err;
    long unfinished = count_unfinished(s->js, &err);
    if (unfinished < 0) {
        json_decref(req);
        return http_send_store_error(r, err.code, &err, NULL);
    }
    if (unfinished >= s->cfg->max_jobs) {
        json_decref(req);
        return http_send_error_hdr(r, 429, MHD_HTTP_HEADER_RETRY_AFTER, "60", NULL,
                                   "too_many_jobs",
                                   "%ld fine-tuning jobs are waiting or running (max_jobs is "
                                   "%ld); retry when one has finished.",
                                   unfinished, s->cfg->max_jobs);
    }
    char id[PD_JOBSTORE_ID_MAX];
    json_t *obj;
    int rc = pd_jobstore_job_create(s->js, req, id, &obj, &err);
    json_decref(req);
    if (rc == PD_ENOTFOUND) { /* an unknown file: OpenAI answers 400 naming the parameter */
        const char *param = !strncmp(err.msg, "validation_file", 15) ? "validation_file"
                                                                      : "training_file";
        return http_send_error(r, 400, param, "file_not_found", "%s (upload it with POST "
                               "/v1/files first).", err.msg);
    }
    if (rc < 0) return http_send_store_error(r, rc, &err, NULL);
    PD_LOGI("fine-tuning job %s created", id);
    worker_submitted(s->wk, id);
    return http_send_json(r, 200, obj);
}

enum MHD_Result route_jobs_list(http_req *r)
{
    enum MHD_Result ret;
    const char *after;
    int limit;
    if (http_need_jobstore(r, &ret) < 0 || http_list_args(r, &after, &limit, &ret) < 0)
        return ret;
    json_t *out;
    pd_err err;
    int rc = pd_jobstore_job_list(r->s->js, after, limit, &out, &err);
    if (rc == PD_ENOTFOUND)
        return http_send_error(r, 400, "after", "invalid_value", "%s", err.msg);
    if (rc < 0) return http_send_store_error(r, rc, &err, NULL);
    return http_send_json(r, 200, out);
}

enum MHD_Result route_jobs_get(http_req *r)
{
    enum MHD_Result ret;
    if (http_need_jobstore(r, &ret) < 0) return ret;
    json_t *out;
    pd_err err;
    int rc = pd_jobstore_job_get(r->s->js, r->param, &out, &err);
    if (rc < 0) return http_send_store_error(r, rc, &err, "job_not_found");
    return http_send_json(r, 200, out);
}

/* A page of one job's events or checkpoints (list: a pd_jobstore_*_list). */
static enum MHD_Result job_page(http_req *r,
                                int (*list)(pd_jobstore *, const char *, const char *, int,
                                            json_t **, pd_err *))
{
    enum MHD_Result ret;
    const char *after;
    int limit;
    if (http_need_jobstore(r, &ret) < 0 || http_list_args(r, &after, &limit, &ret) < 0)
        return ret;
    pd_err err;
    if (pd_jobstore_job_status(r->s->js, r->param, NULL, NULL, &err) < 0)
        return http_send_store_error(r, err.code, &err, "job_not_found");
    json_t *out;
    int rc = list(r->s->js, r->param, after, limit, &out, &err);
    if (rc == PD_ENOTFOUND)
        return http_send_error(r, 400, "after", "invalid_value", "%s", err.msg);
    if (rc < 0) return http_send_store_error(r, rc, &err, NULL);
    return http_send_json(r, 200, out);
}

enum MHD_Result route_jobs_events(http_req *r) { return job_page(r, pd_jobstore_event_list); }

enum MHD_Result route_jobs_checkpoints(http_req *r)
{
    return job_page(r, pd_jobstore_checkpoint_list);
}

enum MHD_Result route_jobs_cancel(http_req *r)
{
    enum MHD_Result ret;
    if (http_need_jobstore(r, &ret) < 0) return ret;
    srv *s = r->s;
    pd_err err;
    json_t *obj;
    int rc = pd_jobstore_job_request_cancel(s->js, r->param, &obj, &err);
    if (rc == PD_EINVAL) /* already finished */
        return http_send_error(r, 409, NULL, "job_finished", "%s", err.msg);
    if (rc < 0) return http_send_store_error(r, rc, &err, "job_not_found");
    const char *status = json_string_value(json_object_get(obj, "status"));
    if (status && !strcmp(status, "cancelled") &&
        pd_jobstore_event_add(s->js, r->param, "info", "message", "Fine-tuning job cancelled",
                              NULL, NULL, &err) < 0)
        PD_LOGW("fine-tuning job %s: event not recorded: %s", r->param, err.msg);
    if (status && !strcmp(status, "running")) {
        /* the worker stops at its next step; answer with the final state if
         * it comes soon (it does: steps are short) */
        worker_cancel(s->wk, r->param);
        struct timespec tick = {0, 10 * 1000 * 1000};
        pd_job_status st = PD_JOB_RUNNING;
        for (int waited = 0; waited < CANCEL_WAIT_MS && st == PD_JOB_RUNNING; waited += 10) {
            nanosleep(&tick, NULL);
            if (pd_jobstore_job_status(s->js, r->param, &st, NULL, &err) < 0) break;
        }
        json_t *now;
        if (pd_jobstore_job_get(s->js, r->param, &now, &err) == PD_OK) {
            json_decref(obj);
            obj = now;
        }
    }
    PD_LOGI("fine-tuning job %s: cancel requested (%s)", r->param,
            json_string_value(json_object_get(obj, "status")));
    return http_send_json(r, 200, obj);
}
