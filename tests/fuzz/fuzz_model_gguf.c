/* fuzz_model_gguf.c — the GGUF model loader: the input becomes a file and
 * pd_model_load reads it (the format is chosen by the magic, so inputs
 * without "GGUF" exercise the llama2.c path with no tokenizer beside it).
 * A model that loads must keep its contract (model_check.c). */
#include "model_check.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    pd_model_params mp = pd_model_default_params();
    mp.path = fuzz_file(data, size);
    pd_model *m;
    pd_err err;
    if (pd_model_load(&mp, &m, &err) < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        return 0;
    }
    fuzz_check_model(m);
    pd_model_free(m);
    return 0;
}
