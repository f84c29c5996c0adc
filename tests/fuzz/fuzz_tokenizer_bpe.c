/* fuzz_tokenizer_bpe.c — the GGUF tokenizers on arbitrary text: byte-level
 * BPE (gpt-2, deepseek-llm, starcoder, falcon: one to four pre-tokenizer
 * regexes) and SentencePiece from GGUF (phi-3), from tests/data/vocab/.
 *
 * Input: byte 0 picks the vocabulary (mod 5), byte 1 the flags
 * (PD_TOK_ADD_SPECIAL | PD_TOK_PARSE_SPECIAL, mod 4), the rest is the text.
 * Every id must be in range; the same text into a too-small buffer must
 * report the same count; and for byte-level BPE the text must come back
 * exactly: each token's decoded bytes, or its text for control,
 * user-defined and unknown tokens, concatenated (BOS/EOS added by the flags
 * are left out) — when every byte of the text has a token: falcon,
 * starcoder and others lack a few bytes (0x03, 0xC0, ...) that their
 * training never saw, which are then dropped, as llama.cpp and HF drop
 * them. */
#include <stdlib.h>
#include <string.h>

#include "prefixd/gguf.h"
#include "util.h"

static const char *const VOCABS[] = {
    "tests/data/vocab/ggml-vocab-gpt-2.gguf",     "tests/data/vocab/ggml-vocab-deepseek-llm.gguf",
    "tests/data/vocab/ggml-vocab-starcoder.gguf", "tests/data/vocab/ggml-vocab-falcon.gguf",
    "tests/data/vocab/ggml-vocab-phi-3.gguf",
};
#define N_VOCABS ((int)(sizeof VOCABS / sizeof *VOCABS))

/* Loaded once and kept for the process, with which bytes have a token. */
static pd_tokenizer *loaded[N_VOCABS];
static unsigned char byte_ok[N_VOCABS][256];

static const pd_tokenizer *vocab(int i)
{
    if (!loaded[i]) {
        pd_gguf *g;
        pd_err err;
        if (pd_gguf_open(VOCABS[i], &g, &err) < 0 || pd_tokenizer_load_gguf(g, &loaded[i], &err) < 0)
            fuzz_fail("%s", err.msg);
        pd_gguf_free(g);
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            int32_t id[2];
            byte_ok[i][b] = pd_tokenizer_encode_flags(loaded[i], &c, 1, 0, id, 2) == 1;
        }
    }
    return loaded[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 2) return 0;
    int v = data[0] % N_VOCABS;
    const pd_tokenizer *tok = vocab(v);
    unsigned flags = data[1] % 4;
    const char *text = (const char *)data + 2;
    size_t len = size - 2;
    int cap = (int)len + 4;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    char *back = malloc(4 * len + 64);
    FUZZ_CHECK(ids && back);
    int n = pd_tokenizer_encode_flags(tok, text, len, flags, ids, cap);
    FUZZ_CHECK(n >= 0 && n <= cap);
    int V = pd_tokenizer_vocab_size(tok);
    for (int i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < V);
    int32_t few[2];
    FUZZ_CHECK(pd_tokenizer_encode_flags(tok, text, len, flags, few, 2) == n);

    int all_bytes = 1;
    for (size_t i = 0; i < len; i++) all_bytes &= byte_ok[v][(unsigned char)text[i]];
    if (pd_tokenizer_kind(tok) == PD_TOKENIZER_BPE && all_bytes) {
        int lo = 0, hi = n;
        if ((flags & PD_TOK_ADD_SPECIAL) && pd_tokenizer_add_bos(tok)) lo++;
        if ((flags & PD_TOK_ADD_SPECIAL) && pd_tokenizer_add_eos(tok)) hi--;
        size_t at = 0;
        for (int i = lo; i < hi; i++) {
            int t = pd_tokenizer_type(tok, ids[i]);
            size_t l;
            const char *b;
            if (t == PD_TOKEN_CONTROL || t == PD_TOKEN_USER_DEFINED || t == PD_TOKEN_UNKNOWN) {
                b = pd_tokenizer_token_text(tok, ids[i]);
                l = strlen(b);
            } else {
                b = pd_tokenizer_decode(tok, i ? ids[i - 1] : -1, ids[i], &l);
            }
            FUZZ_CHECK(at + l <= 4 * len + 64);
            if (l) memcpy(back + at, b, l);
            at += l;
        }
        if (at != len || memcmp(back, text, len) != 0)
            fuzz_fail("decode(encode(x)) != x for %zu bytes (%zu back), vocab %d flags %u", len,
                      at, v, flags);
    }
    free(back);
    free(ids);
    return 0;
}
