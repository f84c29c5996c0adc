/* cmd_inspect.c — `prefixd inspect PATH`: loads a model (any format) and
 * prints its format, GGUF file type, hyper-parameters, tokenizer ids, tensor list (each
 * tensor's type and bits per weight), total weight bytes and fingerprint,
 * one "key: value" per line. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/gguf.h"
#include "prefixd/model.h"
#include "prefixd/quantize.h"
#include "prefixd/tokenizer.h"

/* The architecture and how its rotary embedding is computed. */
static void print_arch(const pd_model *m)
{
    const pd_config *c = &m->cfg;
    int biases = 0;
    for (int l = 0; l < c->n_layers; l++) biases |= m->w.layers[l].bq != NULL;
    printf("architecture: %s\n", pd_arch_name(c->arch));
    printf("rope_type: %s\n", pd_rope_type_name(c->rope_type));
    printf("rope_scaling: %s", pd_rope_scaling_name(c->rope_scaling));
    if (c->rope_scaling == PD_ROPE_SCALING_LINEAR)
        printf(" (factor %g)", 1.0 / (double)c->rope_freq_scale);
    if (c->rope_scaling == PD_ROPE_SCALING_LLAMA3 && m->w.rope_freqs)
        printf(" (rope_freqs.weight: factors %g .. %g)", (double)m->w.rope_freqs[0],
               (double)m->w.rope_freqs[c->head_dim / 2 - 1]);
    printf("\n");
    printf("q_dim: %d\n", c->q_dim);
    printf("qkv_bias: %s\n", biases ? "yes" : "no");
    printf("qk_norm: %s\n", m->w.layers[0].q_norm ? "yes" : "no");
}

static void print_shape(const pd_tensor_info *t)
{
    char buf[96];
    size_t at = 0;
    buf[at++] = '[';
    for (int d = 0; d < t->n_dims && d < 4 && at < sizeof buf; d++)
        at += (size_t)snprintf(buf + at, sizeof buf - at, "%s%" PRId64, d ? ", " : "",
                               t->shape[d]);
    if (at < sizeof buf) snprintf(buf + at, sizeof buf - at, "]");
    printf("%-20s", buf);
}

/* general.file_type of a GGUF file (llama.cpp's numbering), when present. */
static void print_file_type(const pd_model *m, const char *path)
{
    pd_gguf *g;
    pd_err err;
    int64_t ft;
    if (m->format != PD_FORMAT_GGUF || pd_gguf_open(path, &g, &err) < 0) return;
    if (pd_gguf_find_kv(g, "general.file_type") &&
        pd_gguf_get_int(g, "general.file_type", 0, 1 << 20, &ft, &err) == PD_OK) {
        const char *name = pd_ftype_name((int)ft);
        printf("file_type: %s (%lld)\n", name ? name : "?", (long long)ft);
    }
    pd_gguf_free(g);
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL, *tokenizer = NULL;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
            if (r < 0) return 2;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_fail("inspect: unknown option '%s'", argv[i]) + 1;
        } else if (path) {
            return cli_fail("inspect: one model path only ('%s' and '%s')", path, argv[i]) + 1;
        } else {
            path = argv[i];
        }
    }
    if (!path) return cli_fail("inspect: usage: prefixd inspect PATH [--tokenizer TOK]") + 1;
    pd_model *m = cli_load_model(path, tokenizer);
    if (!m) return 1;

    const pd_config *c = &m->cfg;
    printf("path: %s\n", path);
    printf("id: %s\n", m->id);
    printf("format: %s\n", m->format == PD_FORMAT_GGUF ? "gguf" : "llama2c");
    printf("dtype: %s\n", pd_ggml_type_name(m->weight_type));
    print_file_type(m, path);
    print_arch(m);
    printf("dim: %d\n", c->dim);
    printf("hidden_dim: %d\n", c->hidden_dim);
    printf("n_layers: %d\n", c->n_layers);
    printf("n_heads: %d\n", c->n_heads);
    printf("n_kv_heads: %d\n", c->n_kv_heads);
    printf("head_dim: %d\n", c->head_dim);
    printf("kv_dim: %d\n", c->kv_dim);
    printf("vocab_size: %d\n", c->vocab_size);
    printf("seq_len: %d\n", c->seq_len);
    if (c->sliding_window > 0)
        printf("sliding_window: %d (context capped from %d to %d so no token is outside it)\n",
               c->sliding_window, c->ctx_train, c->seq_len);
    printf("rope_base: %g\n", (double)c->rope_base);
    printf("norm_eps: %g\n", (double)c->norm_eps);
    printf("tied_classifier: %s\n", m->tied_classifier ? "yes" : "no");
    printf("tokenizer_vocab: %d\n", pd_tokenizer_vocab_size(m->tok));
    printf("bos: %d\n", pd_tokenizer_bos(m->tok));
    printf("eos: %d\n", pd_tokenizer_eos(m->tok));
    const char *pre = pd_tokenizer_pre(m->tok);
    printf("tokenizer: %s%s%s\n", pd_tokenizer_kind_name(m->tok), pre ? " pre " : "", pre ? pre : "");
    int32_t eog[16];
    int n_eog = pd_tokenizer_eog_ids(m->tok, eog, 16);
    printf("eog:");
    for (int i = 0; i < n_eog && i < 16; i++) printf(" %d", (int)eog[i]);
    printf("\n");
    printf("tensors: %d\n", m->n_tensors);
    uint64_t file_bytes = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const pd_tensor_info *t = &m->tensors[i];
        printf("  %-28s ", t->name);
        print_shape(t);
        uint64_t n = 1;
        for (int d = 0; d < t->n_dims && d < 4; d++) n *= (uint64_t)t->shape[d];
        const char *type = pd_ggml_type_name(t->type);
        printf(" %-6s %6.3f bpw  offset %-12" PRIu64 " bytes %" PRIu64 "\n", type ? type : "?",
               n ? 8.0 * (double)t->nbytes / (double)n : 0.0, t->offset, t->nbytes);
        file_bytes += t->nbytes;
    }
    printf("tensor_bytes: %" PRIu64 "\n", file_bytes);
    printf("weight_bytes: %" PRIu64 "\n", m->weight_bytes);
    printf("resident_weight_bytes: %" PRIu64 "\n", m->resident_bytes);
    printf("fingerprint: %s\n", m->fingerprint_hex);
    pd_model_free(m);
    return 0;
}
