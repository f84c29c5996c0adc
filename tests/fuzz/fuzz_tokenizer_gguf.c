/* fuzz_tokenizer_gguf.c — pd_tokenizer_load_gguf on arbitrary GGUF files
 * (SentencePiece and byte-level BPE metadata: tokens, types, scores, merges,
 * pre, special ids, flags, chat template).
 *
 * Input: a GGUF file. A tokenizer that loads must hand out every token's
 * text, a sorted set of end-of-generation ids in range, and encode a fixed
 * text (special parsing and BOS/EOS on and off) into ids in range whose
 * decoded bytes can be read; one that does not must say why. */
#include <string.h>

#include "prefixd/gguf.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    pd_gguf *g;
    pd_err err;
    if (pd_gguf_parse(data, size, "fuzz.gguf", &g, &err) < 0) return 0;
    pd_tokenizer *tok = NULL;
    int rc = pd_tokenizer_load_gguf(g, &tok, &err);
    pd_gguf_free(g); /* the tokenizer keeps copies of everything it needs */
    if (rc < 0) {
        FUZZ_CHECK(err.code < 0 && err.msg[0] && !tok);
        return 0;
    }
    int V = pd_tokenizer_vocab_size(tok);
    FUZZ_CHECK(V > 0);
    for (int id = 0; id < V; id++) (void)strlen(pd_tokenizer_token_text(tok, id));
    FUZZ_CHECK(pd_tokenizer_token_text(tok, V) == NULL);
    int32_t eog[32];
    int n_eog = pd_tokenizer_eog_ids(tok, eog, 32);
    FUZZ_CHECK(n_eog >= 1 && n_eog <= 32);
    for (int i = 0; i < n_eog; i++) {
        FUZZ_CHECK(eog[i] >= 0 && eog[i] < V && pd_tokenizer_is_eog(tok, eog[i]));
        FUZZ_CHECK(i == 0 || eog[i - 1] < eog[i]);
    }
    static const char text[] = "Hello <|im_end|> w\xc3\xb6rld's 12345\n\n  \xf0\x9f\xa6\x99 <s>"
                               "\xe2\x96\x81x \xff\xfe <think>";
    int32_t ids[4 * sizeof text];
    int cap = (int)(sizeof ids / sizeof *ids);
    for (unsigned flags = 0; flags < 4; flags++) {
        int n = pd_tokenizer_encode_flags(tok, text, sizeof text - 1, flags, ids, cap);
        FUZZ_CHECK(n >= 0 && n <= cap);
        for (int i = 0; i < n; i++) {
            FUZZ_CHECK(ids[i] >= 0 && ids[i] < V);
            size_t len;
            const char *b = pd_tokenizer_decode(tok, i ? ids[i - 1] : -1, ids[i], &len);
            if (len) (void)*(volatile const char *)(b + len - 1);
        }
    }
    const char *t = pd_tokenizer_chat_template(tok);
    if (t) (void)strlen(t);
    pd_tokenizer_free(tok);
    return 0;
}
