/* synth.c — prefixd-synth: writes a random-weight GGUF of any architecture
 * prefixd runs, with a real vocabulary copied from a vocab-only GGUF (all
 * tokenizer.* keys verbatim), for tests and side-by-side comparisons.
 *
 *   prefixd-synth --arch qwen3 --vocab tests/data/vocab/ggml-vocab-llama-spm.gguf \
 *       --dim 64 --hidden 160 --layers 2 --heads 4 --kv-heads 2 [--head-dim 32] \
 *       [--ctx 256] [--rope-scaling llama3|linear] [--rope-factor F] \
 *       [--rope-orig-ctx N] [--rope-base B] [--biases] [--tied] \
 *       [--sliding-window N] [--seed N] --out X.gguf
 *
 * Without --vocab the vocabulary is synthetic (--vocab-size, default 512). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/model.h"
#include "synth_model.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: prefixd-synth --arch llama|qwen2|qwen3|phi3 [--vocab VOCAB.gguf | --vocab-size N]\n"
            "         --dim N --hidden N --layers N --heads N [--kv-heads N] [--head-dim N]\n"
            "         [--ctx N] [--rope-scaling none|linear|llama3] [--rope-factor F]\n"
            "         [--rope-orig-ctx N] [--rope-base B] [--biases] [--tied]\n"
            "         [--sliding-window N] [--scale S] [--seed N] --out FILE.gguf\n");
}

static int parse_int(const char *opt, const char *v, int lo, int *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || x < lo || x > (1L << 24)) {
        fprintf(stderr, "prefixd-synth: %s: '%s' is not a whole number >= %d\n", opt, v, lo);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_float(const char *opt, const char *v, float *out)
{
    char *end;
    double x = strtod(v, &end);
    if (*v == 0 || *end != 0 || !(x > 0) || x > 1e9) {
        fprintf(stderr, "prefixd-synth: %s: '%s' is not a positive number\n", opt, v);
        return -1;
    }
    *out = (float)x;
    return 0;
}

int main(int argc, char **argv)
{
    synth_spec s = {0};
    s.arch = -1;
    s.vocab_size = 512;
    s.seq_len = 256;
    s.n_kv_heads = 0;
    const char *vocab = NULL, *out = NULL;
    int seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--biases")) { s.biases = 1; continue; }
        if (!strcmp(a, "--tied")) { s.tied = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "prefixd-synth: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(a, "--arch")) {
            for (int k = PD_ARCH_LLAMA; k <= PD_ARCH_PHI3; k++)
                if (!strcmp(v, pd_arch_name(k))) s.arch = k;
            if (s.arch < 0) {
                fprintf(stderr, "prefixd-synth: --arch: '%s' is not llama, qwen2, qwen3 or phi3\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--rope-scaling")) {
            s.rope_scaling = -1;
            for (int k = PD_ROPE_SCALING_NONE; k <= PD_ROPE_SCALING_LLAMA3; k++)
                if (!strcmp(v, pd_rope_scaling_name(k))) s.rope_scaling = k;
            if (s.rope_scaling < 0) {
                fprintf(stderr, "prefixd-synth: --rope-scaling: '%s' is not none, linear or llama3\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--vocab")) vocab = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--vocab-size")) rc = parse_int(a, v, 260, &s.vocab_size);
        else if (!strcmp(a, "--dim")) rc = parse_int(a, v, 2, &s.dim);
        else if (!strcmp(a, "--hidden")) rc = parse_int(a, v, 1, &s.hidden_dim);
        else if (!strcmp(a, "--layers")) rc = parse_int(a, v, 1, &s.n_layers);
        else if (!strcmp(a, "--heads")) rc = parse_int(a, v, 1, &s.n_heads);
        else if (!strcmp(a, "--kv-heads")) rc = parse_int(a, v, 1, &s.n_kv_heads);
        else if (!strcmp(a, "--head-dim")) rc = parse_int(a, v, 2, &s.head_dim);
        else if (!strcmp(a, "--ctx")) rc = parse_int(a, v, 2, &s.seq_len);
        else if (!strcmp(a, "--rope-orig-ctx")) rc = parse_int(a, v, 1, &s.rope_orig_ctx);
        else if (!strcmp(a, "--sliding-window")) rc = parse_int(a, v, 1, &s.sliding_window);
        else if (!strcmp(a, "--seed")) rc = parse_int(a, v, 0, &seed);
        else if (!strcmp(a, "--rope-factor")) rc = parse_float(a, v, &s.rope_factor);
        else if (!strcmp(a, "--rope-base")) rc = parse_float(a, v, &s.rope_base);
        else if (!strcmp(a, "--scale")) rc = parse_float(a, v, &s.scale);
        else {
            fprintf(stderr, "prefixd-synth: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (rc < 0) return 2;
    }
    if (s.arch < 0 || !out || !s.dim || !s.hidden_dim || !s.n_layers || !s.n_heads) {
        fprintf(stderr, "prefixd-synth: --arch, --dim, --hidden, --layers, --heads and --out "
                        "are required\n");
        usage(stderr);
        return 2;
    }
    if (!s.n_kv_heads) s.n_kv_heads = s.n_heads;
    if (!s.head_dim && s.dim % s.n_heads) {
        fprintf(stderr, "prefixd-synth: --dim %d is not a multiple of --heads %d (give --head-dim)\n",
                s.dim, s.n_heads);
        return 2;
    }
    if (s.rope_scaling == PD_ROPE_SCALING_LINEAR && !(s.rope_factor > 0)) s.rope_factor = 4.0f;
    s.seed = (uint64_t)seed;
    pd_err err;
    pd_err_clear(&err);
    if (synth_write(&s, vocab, out, &err) < 0) {
        fprintf(stderr, "prefixd-synth: %s\n", err.msg);
        return 1;
    }
    return 0;
}
