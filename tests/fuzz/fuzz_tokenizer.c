/* fuzz_tokenizer.c — the tokenizer on arbitrary bytes, with the shipped
 * tok512: pd_tokenizer_encode, then pd_tokenizer_decode of every token
 * after its predecessor. Every byte has a token (tok512 falls back to
 * <0xXX> byte pieces), so the decoded bytes must be the input exactly: the
 * dummy-prefix space is dropped after BOS. The same text encoded into a
 * too-small buffer must report the same count. */
#include <stdlib.h>
#include <string.h>

#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const pd_tokenizer *tok = fuzz_tokenizer();
    const char *text = (const char *)data;
    int cap = (int)size + 3; /* BOS, dummy space, one token per byte, EOS */
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    char *back = malloc(size + 1);
    FUZZ_CHECK(ids && back);
    int n = pd_tokenizer_encode(tok, text, size, 1, 1, ids, cap);
    FUZZ_CHECK(n >= 2 && n <= cap);
    FUZZ_CHECK(ids[0] == pd_tokenizer_bos(tok) && ids[n - 1] == pd_tokenizer_eos(tok));
    size_t at = 0;
    for (int i = 1; i < n - 1; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < pd_tokenizer_vocab_size(tok));
        size_t len;
        const char *b = pd_tokenizer_decode(tok, ids[i - 1], ids[i], &len);
        FUZZ_CHECK(at + len <= size);
        if (len) memcpy(back + at, b, len);
        at += len;
    }
    if (at != size || memcmp(back, text, size) != 0)
        fuzz_fail("decode(encode(x)) != x for %zu bytes (%zu decoded)", size, at);
    int32_t few[2];
    FUZZ_CHECK(pd_tokenizer_encode(tok, text, size, 1, 1, few, 2) == n);
    free(back);
    free(ids);
    return 0;
}
