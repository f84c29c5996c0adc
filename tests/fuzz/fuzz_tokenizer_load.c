/* fuzz_tokenizer_load.c — pd_tokenizer_load_llama2c on arbitrary files.
 *
 * Input: one byte choosing vocab_size (3 + byte: 3..258), then the file.
 * A tokenizer that loads must hand out every piece, encode a fixed text
 * with its own (arbitrary) pieces and scores into ids in range, and decode
 * them. */
#include <string.h>

#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 1) return 0;
    int vocab = 3 + data[0];
    pd_tokenizer *tok;
    pd_err err;
    if (pd_tokenizer_load_llama2c(fuzz_file(data + 1, size - 1), vocab, &tok, &err) < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0]);
        return 0;
    }
    FUZZ_CHECK(pd_tokenizer_vocab_size(tok) == vocab);
    for (int id = 0; id < vocab; id++) {
        const char *piece = pd_tokenizer_piece(tok, id);
        FUZZ_CHECK(piece != NULL);
        (void)strlen(piece);
    }
    static const char text[] = "Once upon a time \xE2\x96\x81 <0x41> \xC3\xA9\xFF\x00 end";
    int32_t ids[2 * sizeof text + 4];
    int cap = (int)(sizeof ids / sizeof *ids);
    int n = pd_tokenizer_encode(tok, text, sizeof text - 1, 1, 1, ids, cap);
    FUZZ_CHECK(n >= 2 && n <= cap);
    for (int i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab);
        size_t len;
        const char *b = pd_tokenizer_decode(tok, i ? ids[i - 1] : -1, ids[i], &len);
        if (len) (void)*(volatile const char *)(b + len - 1);
    }
    pd_tokenizer_free(tok);
    return 0;
}
