/* cmd_quantize.c — `prefixd quantize IN OUT --type TYPE`: rewrites a model in
 * another weight type (pd_quantize_gguf, llama-quantize's file types and
 * mixes), atomically. IN is a GGUF file of any readable weight type, or a
 * llama2.c checkpoint (written as an F32 GGUF beside OUT first, then
 * converted, then removed). One summary line on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/gguf.h"
#include "prefixd/quant.h"
#include "prefixd/quantize.h"

static const char type_list[] =
    "F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S "
    "Q5_K_M Q6_K (Q3_K, Q4_K, Q5_K: the _M mixes)";

static int is_gguf(const char *path)
{
    unsigned char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    return got == 4 && memcmp(magic, "GGUF", 4) == 0;
}

int cli_quantize_model(const pd_model *m, const char *out, const pd_quantize_params *qp,
                       pd_quantize_stats *st)
{
    size_t n = strlen(out) + 16;
    char *tmp = malloc(n);
    if (!tmp) return cli_fail("out of memory");
    snprintf(tmp, n, "%s.f32-tmp", out);
    pd_err err;
    int rc = pd_gguf_write_model(m, tmp, PD_DTYPE_F32, qp->name, &err);
    if (rc >= 0) rc = pd_quantize_gguf(tmp, out, qp, st, &err);
    unlink(tmp);
    free(tmp);
    return rc < 0 ? cli_fail("%s", err.msg) : 0;
}

int cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *type = NULL, *tokenizer = NULL, *name = NULL;
    const char *threads = NULL;
    int pure = 0;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--type", &type))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--name", &name))) {
        } else if ((r = cli_opt(argc, argv, &i, "--threads", &threads))) {
        } else if (!strcmp(argv[i], "--pure")) {
            pure = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_fail("quantize: unknown option '%s'", argv[i]) + 1;
        } else if (!in) {
            in = argv[i];
        } else if (!out) {
            out = argv[i];
        } else {
            return cli_fail("quantize: one input and one output only ('%s')", argv[i]) + 1;
        }
        if (r < 0) return 2;
    }
    if (!in || !out || !type)
        return cli_fail("quantize: usage: prefixd quantize IN OUT.gguf --type TYPE [--pure] "
                        "[--tokenizer TOK] [--name NAME] [--threads N]") + 1;
    pd_quantize_params qp = pd_quantize_default_params();
    qp.ftype = pd_ftype_from_name(type);
    qp.pure = pure;
    qp.name = name;
    long n_threads = 0;
    if (threads && cli_int("--threads", threads, 1, 1024, &n_threads) < 0) return 2;
    qp.n_threads = (int)n_threads;
    if (qp.ftype < 0)
        return cli_fail("quantize: --type '%s' is not one of %s", type, type_list) + 1;

    pd_quantize_stats st;
    if (is_gguf(in)) {
        pd_err err;
        if (pd_quantize_gguf(in, out, &qp, &st, &err) < 0) return cli_fail("%s", err.msg);
    } else {
        pd_model *m = cli_load_model(in, tokenizer);
        if (!m) return 1;
        int rc = cli_quantize_model(m, out, &qp, &st);
        pd_model_free(m);
        if (rc) return rc;
    }
    fprintf(stderr,
            "prefixd: wrote %s (%s%s): %d tensors, %d converted (%d fell back to a 32-block "
            "type or F16), %.2f MiB -> %.2f MiB\n",
            out, pd_ftype_name(qp.ftype), pure ? ", pure" : "", st.n_tensors, st.n_converted,
            st.n_fallback, st.in_bytes / 1048576.0, st.out_bytes / 1048576.0);
    return 0;
}
