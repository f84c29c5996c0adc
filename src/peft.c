/* peft.c — import of HF PEFT prefix-tuning adapters.
 *
 * An adapter directory holds adapter_config.json (peft_type PREFIX_TUNING,
 * num_virtual_tokens, num_layers, token_dim, num_attention_heads) and
 * adapter_model.safetensors with one tensor "prompt_embeddings" of shape
 * [P, n_layers * 2 * kv_dim]. PEFT views each row as
 * [n_layers * 2, heads, token_dim / heads] and splits it into (key, value)
 * per layer, so for virtual token t the flat index is
 * ((layer * 2 + kv) * n_kv_heads + head) * head_dim + d, kv 0 for keys.
 *
 * Two config conventions describe the same layout. PEFT >= 0.12 (for models
 * whose config has num_key_value_heads, i.e. every Llama) rewrites token_dim
 * to kv_dim and num_attention_heads to the kv head count; older configs keep
 * token_dim = dim and num_attention_heads = n_heads (and may state
 * num_key_value_heads). Both are accepted when they describe this model; the
 * tensor width decides. A prefix_projection adapter saved in training mode
 * holds the computed prefix in prompt_embeddings and imports the same way.
 * PEFT's virtual tokens take positions 0..P-1 and its prefix holds no BOS:
 * has_bos = 0.
 *
 * Layout of a key head: PEFT's keys are in HF's layout, where rotary pairs
 * are (i, i + head_dim/2). Llama-architecture files (GGUF llama, llama2.c)
 * store q/k rows permuted so that pairs are adjacent (2i, 2i+1); the
 * imported keys get the same permutation, so each q·k equals HF's. qwen2 and
 * qwen3 keep HF's layout (NeoX rotary) and import unpermuted.
 *
 * Export writes the same layout back (gather is scatter's inverse, key
 * heads permuted back to HF's layout), in F32, with the config in
 * PEFT >= 0.12's convention (token_dim = kv_dim, num_attention_heads = the
 * kv head count), so an exported adapter imports to the same bits.
 */
#include "prefixd/prefix.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefix_internal.h"
#include "prefixd/fsutil.h"
#include "prefixd/safetensors.h"

#define CONFIG_MAX (1u << 20)
#define TENSOR_NAME "prompt_embeddings"

/* The adapter's description, as read from adapter_config.json. */
typedef struct peft_config {
    long n_tokens, n_layers, token_dim, n_heads, n_kv_heads; /* n_kv_heads -1: absent */
    int projection;
    const char *base_model; /* borrowed from the JSON tree, or NULL */
} peft_config;

/* Reads a positive integer field; -1 in *out when absent and !required. */
static int get_count(const char *file, json_t *root, const char *key, int required, long *out,
                     pd_err *err)
{
    json_t *v = json_object_get(root, key);
    *out = -1;
    if (!v || json_is_null(v)) {
        if (!required) return PD_OK;
        return pd_err_set(err, PD_EFORMAT, "%s: no \"%s\"", file, key);
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 24))
        return pd_err_set(err, PD_EFORMAT, "%s: \"%s\" is not a positive whole number", file, key);
    *out = (long)json_integer_value(v);
    return PD_OK;
}

static int read_config(const char *file, const pd_model *m, json_t **root_out, peft_config *pc,
                       pd_err *err)
{
    const pd_config *c = &m->cfg;
    char *text;
    size_t size;
    *root_out = NULL;
    int rc = pd_read_file(file, CONFIG_MAX, &text, &size, err);
    if (rc < 0) return rc;
    json_error_t je;
    json_t *root = json_loadb(text, size, 0, &je);
    free(text);
    if (!root)
        return pd_err_set(err, PD_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", file,
                          je.text, je.line, je.column);
    *root_out = root;
    if (!json_is_object(root)) return pd_err_set(err, PD_EFORMAT, "%s: not a JSON object", file);

    json_t *v = json_object_get(root, "peft_type");
    if (!json_is_string(v)) return pd_err_set(err, PD_EFORMAT, "%s: no \"peft_type\" string", file);
    if (strcmp(json_string_value(v), "PREFIX_TUNING")) {
        char buf[48];
        snprintf(buf, sizeof buf, "%s", json_string_value(v));
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: peft_type is \"%s\"; only PREFIX_TUNING adapters can be imported",
                          file, buf);
    }
    v = json_object_get(root, "prefix_projection");
    if (v && !json_is_boolean(v) && !json_is_null(v))
        return pd_err_set(err, PD_EFORMAT, "%s: \"prefix_projection\" is not true or false", file);
    pc->projection = json_is_true(v);
    long subs;
    if ((rc = get_count(file, root, "num_virtual_tokens", 1, &pc->n_tokens, err)) < 0 ||
        (rc = get_count(file, root, "num_layers", 1, &pc->n_layers, err)) < 0 ||
        (rc = get_count(file, root, "token_dim", 1, &pc->token_dim, err)) < 0 ||
        (rc = get_count(file, root, "num_attention_heads", 1, &pc->n_heads, err)) < 0 ||
        (rc = get_count(file, root, "num_key_value_heads", 0, &pc->n_kv_heads, err)) < 0 ||
        (rc = get_count(file, root, "num_transformer_submodules", 0, &subs, err)) < 0)
        return rc;
    v = json_object_get(root, "base_model_name_or_path");
    pc->base_model = json_is_string(v) ? json_string_value(v) : NULL;

    if (subs > 1)
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: num_transformer_submodules is %ld (an encoder-decoder adapter); "
                          "only decoder-only adapters can be imported",
                          file, subs);
    if (pc->n_layers != c->n_layers)
        return pd_err_set(err, PD_EMISMATCH, "%s: num_layers is %ld, this model has %d layers",
                          file, pc->n_layers, c->n_layers);
    if (pc->token_dim != c->dim && pc->token_dim != c->kv_dim)
        return pd_err_set(err, PD_EMISMATCH,
                          "%s: token_dim is %ld, neither this model's dim %d nor its kv_dim %d",
                          file, pc->token_dim, c->dim, c->kv_dim);
    /* token_dim = dim goes with the query heads, token_dim = kv_dim with the
     * kv heads (PEFT's GQA rewrite); either way head_dim must agree. */
    int full = pc->token_dim == c->dim && pc->n_heads == c->n_heads;
    int gqa = pc->token_dim == c->kv_dim && pc->n_heads == c->n_kv_heads;
    if (!full && !gqa)
        return pd_err_set(err, PD_EMISMATCH,
                          "%s: num_attention_heads %ld does not fit token_dim %ld on this model "
                          "(%d heads of %d over dim %d; %d kv heads over kv_dim %d)",
                          file, pc->n_heads, pc->token_dim, c->n_heads, c->head_dim, c->dim,
                          c->n_kv_heads, c->kv_dim);
    if (pc->n_kv_heads > 0 && pc->n_kv_heads != c->n_kv_heads)
        return pd_err_set(err, PD_EMISMATCH,
                          "%s: num_key_value_heads is %ld, this model has %d kv heads", file,
                          pc->n_kv_heads, c->n_kv_heads);
    if (pc->n_tokens > c->seq_len - 1)
        return pd_err_set(err, PD_ERANGE,
                          "%s: %ld virtual tokens leave no room in this model's context of %d "
                          "(at most %d)",
                          file, pc->n_tokens, c->seq_len, c->seq_len - 1);
    return PD_OK;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The tensor holding the prefix: prompt_embeddings, else the first whose
 * name ends in "embedding.weight" (the prompt encoder's state-dict name). */
static const pd_st_tensor *find_embeddings(const pd_st *st)
{
    const pd_st_tensor *t = pd_st_find(st, TENSOR_NAME);
    if (t) return t;
    t = pd_st_find(st, "base_model.prompt_encoder.default.embedding.weight");
    if (t) return t;
    for (int i = 0; i < pd_st_n_tensors(st); i++)
        if (ends_with(pd_st_tensor_at(st, i)->name, "embedding.weight"))
            return pd_st_tensor_at(st, i);
    return NULL;
}

/* Checks the tensor against the config and the model. */
static int check_embeddings(const char *file, const pd_st_tensor *t, const peft_config *pc,
                            const pd_model *m, pd_err *err)
{
    const pd_config *c = &m->cfg;
    const long long width = 2LL * c->n_layers * c->kv_dim;
    if (!t)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: no tensor \"%s\" (nor one named \"...embedding.weight\")", file,
                          TENSOR_NAME);
    if (t->dtype != PD_ST_F32 && t->dtype != PD_ST_F16 && t->dtype != PD_ST_BF16)
        return pd_err_set(err, PD_EFORMAT, "%s: tensor '%s' is %s; expected F32, F16 or BF16",
                          file, t->name, pd_st_dtype_name(t->dtype));
    if (t->n_dims != 2)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: tensor '%s' has %d dimensions; expected 2 [P, n_layers*2*kv_dim]",
                          file, t->name, t->n_dims);
    if (t->shape[0] != pc->n_tokens)
        return pd_err_set(err, PD_EFORMAT,
                          "%s: tensor '%s' has %lld rows but num_virtual_tokens is %ld", file,
                          t->name, (long long)t->shape[0], pc->n_tokens);
    if (t->shape[1] == width) return PD_OK;
    const char *hint = "";
    if (t->shape[1] == 2LL * c->n_layers * c->dim)
        hint = " (laid out for one key/value per query head; this model uses grouped-query "
               "attention)";
    else if (pc->projection && t->shape[1] == pc->token_dim)
        hint = " (the prefix-projection encoder's input; save the adapter with its computed "
               "prefix instead)";
    return pd_err_set(err, PD_EMISMATCH,
                      "%s: tensor '%s' rows hold %lld values; this model needs n_layers*2*kv_dim "
                      "= %d*2*%d = %lld%s",
                      file, t->name, (long long)t->shape[1], c->n_layers, c->kv_dim, width, hint);
}

/* Copies between PEFT rows (P, L*2*KV) and the prefix layout (L, KVH, P, hd)
 * of p's shape: rows -> p's keys/values when to_prefix, else back.
 * adjacent: the model rotates adjacent pairs (llama: its q/k rows were
 * permuted from HF's halves layout), so each key head is permuted the same
 * way, ours[2i + r] = hf[r·hd/2 + i], which keeps every q·k of HF; NeoX
 * models (qwen2/qwen3) use HF's layout as is. Values are never permuted. */
static void move_rows(const pd_prefix *p, float *rows, int to_prefix, int adjacent)
{
    const int P = p->n_tokens, L = p->n_layers, KVH = p->n_kv_heads, hd = p->head_dim;
    const size_t width = (size_t)L * 2 * KVH * hd;
    for (int t = 0; t < P; t++)
        for (int l = 0; l < L; l++)
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < KVH; h++) {
                    float *r = rows + (size_t)t * width + (((size_t)l * 2 + kv) * KVH + h) * hd;
                    float *x = (kv ? p->values : p->keys) + (((size_t)l * KVH + h) * P + t) * hd;
                    if (kv || !adjacent) {
                        memcpy(to_prefix ? x : r, to_prefix ? r : x, (size_t)hd * sizeof *x);
                        continue;
                    }
                    for (int i = 0; i < hd / 2; i++)
                        for (int k = 0; k < 2; k++) {
                            float *ours = &x[2 * i + k], *hf = &r[k * (hd / 2) + i];
                            if (to_prefix) *ours = *hf;
                            else *hf = *ours;
                        }
                }
}

/* Moves PEFT rows src (P, L*2*KV) into the prefix layout (L, KVH, P, hd). */
static void scatter(pd_prefix *p, float *src, int adjacent) { move_rows(p, src, 1, adjacent); }

/* Moves the prefix layout (L, KVH, P, hd) into PEFT rows dst (P, L*2*KV). */
static void gather(const pd_prefix *p, float *dst, int adjacent)
{
    move_rows(p, dst, 0, adjacent);
}

int pd_prefix_export_peft(const pd_prefix *p, const pd_model *m, char **config,
                          size_t *config_size, void **tensors, size_t *tensors_size, pd_err *err)
{
    PD_ASSERT(p && m && config && config_size && tensors && tensors_size);
    *config = NULL;
    *tensors = NULL;
    if (p->keys16) { /* a resident F16 prefix: exported from its exact widening */
        pd_prefix *wide;
        int rc = pd_prefix_widen(p, &wide, err);
        if (rc == PD_OK)
            rc = pd_prefix_export_peft(wide, m, config, config_size, tensors, tensors_size, err);
        pd_prefix_release(wide);
        return rc;
    }
    const pd_config *c = &m->cfg;
    if (p->n_layers != c->n_layers || p->n_kv_heads != c->n_kv_heads || p->head_dim != c->head_dim)
        return pd_err_set(err, PD_EMISMATCH, "prefix '%s' is not shaped for this model",
                          p->task);
    if (p->has_bos)
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "prefix '%s' holds BOS in its first slot (it was built from a prompt "
                          "or trained from init_text); a PEFT prefix has no BOS, so it would "
                          "not serve the same: export a prefix trained without init_text",
                          p->task);
    const char *base = pd_prefix_meta_get(p, "peft_base_model");
    json_t *cfg = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:b,s:b,s:i,s:s?}",
                            "peft_type", "PREFIX_TUNING", "task_type", "CAUSAL_LM",
                            "num_virtual_tokens", p->n_tokens, "num_layers", c->n_layers,
                            "token_dim", c->kv_dim, "num_attention_heads", c->n_kv_heads,
                            "num_key_value_heads", c->n_kv_heads, "num_transformer_submodules", 1,
                            "prefix_projection", 0, "inference_mode", 1, "encoder_hidden_size",
                            c->kv_dim, "base_model_name_or_path", base);
    char *text = cfg ? json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(cfg);
    if (!text) return pd_err_set(err, PD_ENOMEM, "prefix '%s': out of memory", p->task);
    const size_t width = (size_t)c->n_layers * 2 * c->kv_dim;
    float *rows = malloc((size_t)p->n_tokens * width * sizeof *rows);
    pd_st_writer *w = pd_st_writer_new();
    int rc = PD_OK;
    if (!rows || !w) rc = pd_err_set(err, PD_ENOMEM, "prefix '%s': out of memory", p->task);
    int64_t shape[2] = {p->n_tokens, (int64_t)width};
    if (rc == PD_OK) {
        gather(p, rows, c->rope_type == PD_ROPE_NORM);
        rc = pd_st_writer_set_meta(w, "format", "pt", err);
    }
    if (rc == PD_OK) rc = pd_st_writer_add(w, TENSOR_NAME, PD_ST_F32, 2, shape, rows, err);
    if (rc == PD_OK) rc = pd_st_writer_serialize(w, tensors, tensors_size, err);
    pd_st_writer_free(w);
    free(rows);
    if (rc < 0) {
        free(text);
        return rc;
    }
    *config = text;
    *config_size = strlen(text);
    return PD_OK;
}

int pd_prefix_import_peft(const char *dir, const pd_model *m, const char *task,
                          pd_prefix **out, pd_err *err)
{
    PD_ASSERT(dir && m && out);
    *out = NULL;
    if (!pd_task_name_valid(task))
        return pd_err_set(err, PD_EINVAL,
                          "%s: invalid task name: want 1 to %d characters of [A-Za-z0-9._-], "
                          "starting with a letter or digit",
                          dir, PD_TASK_NAME_MAX);
    size_t dlen = strlen(dir);
    char *cfg_path = malloc(dlen + 64), *st_path = malloc(dlen + 64), *bin_path = malloc(dlen + 64);
    json_t *root = NULL;
    pd_st *st = NULL;
    float *rows = NULL;
    pd_prefix *p = NULL;
    int rc;
    if (!cfg_path || !st_path || !bin_path) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", dir);
        goto done;
    }
    const char *sep = dlen && dir[dlen - 1] == '/' ? "" : "/";
    snprintf(cfg_path, dlen + 64, "%s%sadapter_config.json", dir, sep);
    snprintf(st_path, dlen + 64, "%s%sadapter_model.safetensors", dir, sep);

    peft_config pc;
    if ((rc = read_config(cfg_path, m, &root, &pc, err)) < 0) goto done;
    if (access(st_path, F_OK) != 0) {
        snprintf(bin_path, dlen + 64, "%s%sadapter_model.bin", dir, sep);
        rc = pd_err_set(err, PD_ENOTFOUND, "%s: not found%s", st_path,
                        access(bin_path, F_OK) == 0
                            ? " (only the safetensors form is read: convert adapter_model.bin)"
                            : "");
        goto done;
    }
    if ((rc = pd_st_open(st_path, &st, err)) < 0) goto done;
    const pd_st_tensor *t = find_embeddings(st);
    if ((rc = check_embeddings(st_path, t, &pc, m, err)) < 0) goto done;

    if ((rc = pd_prefix_create(m, task, (int)pc.n_tokens, &p, err)) < 0) goto done;
    rows = malloc(t->numel * sizeof *rows);
    if (!rows) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", st_path);
        goto done;
    }
    if ((rc = pd_st_tensor_to_f32(t, rows, t->numel, err)) < 0) goto done;
    long bad = pd__first_nonfinite(rows, t->numel);
    if (bad >= 0) {
        long width = (long)(t->numel / (uint64_t)pc.n_tokens);
        rc = pd_err_set(err, PD_EFORMAT, "%s: tensor '%s' [%ld, %ld] is not a finite number",
                        st_path, t->name, bad / width, bad % width);
        goto done;
    }
    scatter(p, rows, m->cfg.rope_type == PD_ROPE_NORM);
    p->has_bos = 0;
    if ((rc = pd__prefix_stamp(p, "peft", err)) < 0) goto done;
    if (pc.base_model && (rc = pd_prefix_meta_set(p, "peft_base_model", pc.base_model, err)) < 0)
        goto done;
    *out = p;
    p = NULL;
    rc = PD_OK;
done:
    pd_prefix_release(p);
    free(rows);
    pd_st_free(st);
    json_decref(root);
    free(cfg_path);
    free(st_path);
    free(bin_path);
    return rc;
}
