/* fuzz_llama2c.c — the llama2.c checkpoint reader: the input becomes a
 * .bin file that pd_model_load reads with the shipped tokenizer (tok512:
 * a header with vocab_size above 512 cannot find its tokens). A model that
 * loads must keep its contract (model_check.c). */
#include "model_check.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size >= 4 && data[0] == 'G' && data[1] == 'G' && data[2] == 'U' && data[3] == 'F')
        return 0; /* fuzz_model_gguf's business */
    pd_model_params mp = pd_model_default_params();
    mp.path = fuzz_file(data, size);
    mp.tokenizer_path = FUZZ_TOKENIZER;
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
