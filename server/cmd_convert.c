/* cmd_convert.c — `prefixd convert`: loads a model in any supported format
 * and writes it as a GGUF v3 llama file, atomically: F32, F16 and BF16 by
 * pd_gguf_write_model, the quantised file types (--dtype q4_k_m, …) through
 * `prefixd quantize`'s path. Silent on success apart from one summary line on
 * stderr. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/gguf.h"
#include "prefixd/quantize.h"

static int parse_dtype(const char *s)
{
    if (!strcasecmp(s, "f32")) return PD_DTYPE_F32;
    if (!strcasecmp(s, "f16")) return PD_DTYPE_F16;
    if (!strcasecmp(s, "bf16")) return PD_DTYPE_BF16;
    return -1;
}

int cmd_convert(int argc, char **argv)
{
    const char *model = NULL, *tokenizer = NULL, *out = NULL, *dtype_s = "f32", *name = NULL;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--model", &model))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--out", &out))) {
        } else if ((r = cli_opt(argc, argv, &i, "--dtype", &dtype_s))) {
        } else if ((r = cli_opt(argc, argv, &i, "--name", &name))) {
        } else {
            return cli_fail("convert: unknown option '%s'", argv[i]) + 1;
        }
        if (r < 0) return 2;
    }
    if (!model || !out)
        return cli_fail("convert: --model IN and --out OUT.gguf are required") + 1;
    int dtype = parse_dtype(dtype_s);
    pd_quantize_params qp = pd_quantize_default_params();
    qp.ftype = pd_ftype_from_name(dtype_s);
    qp.name = name;
    if (dtype < 0 && qp.ftype < 0)
        return cli_fail("convert: --dtype '%s' is not f32, f16, bf16 or a quantize type (q8_0, "
                        "q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k)",
                        dtype_s) + 1;

    pd_model *m = cli_load_model(model, tokenizer);
    if (!m) return 1;
    if (dtype < 0) {
        pd_quantize_stats st;
        int rc = cli_quantize_model(m, out, &qp, &st);
        if (!rc)
            fprintf(stderr, "prefixd: wrote %s (GGUF v3, %s, %d layers, vocab %d)\n", out,
                    pd_ftype_name(qp.ftype), m->cfg.n_layers, m->cfg.vocab_size);
        pd_model_free(m);
        return rc;
    }
    pd_err err;
    int rc = pd_gguf_write_model(m, out, dtype, name, &err);
    if (rc < 0) {
        cli_fail("%s", err.msg);
        pd_model_free(m);
        return 1;
    }
    fprintf(stderr, "prefixd: wrote %s (GGUF v3, %s, %d layers, vocab %d)\n", out,
            pd_dtype_name(dtype), m->cfg.n_layers, m->cfg.vocab_size);
    pd_model_free(m);
    return 0;
}
