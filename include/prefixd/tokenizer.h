/* prefixd/tokenizer.h — SentencePiece-style BPE tokenizer, as llama2.c runs it.
 *
 * Encoding: the text gets a dummy-prefix space (" " + text, when text is not
 * empty), is split into UTF-8 code points, each looked up in the vocabulary
 * (a code point with no piece falls back to its bytes as <0xXX> tokens), then
 * the adjacent pair whose merged piece has the highest score is merged, over
 * and over, until no pair merges. BOS/EOS are added on request.
 *
 * Decoding: <0xXX> pieces become their byte; after BOS a leading space of the
 * piece is dropped (the dummy prefix). Pieces are stored with plain spaces:
 * a source that writes U+2581 ("▁") for space (GGUF / SentencePiece) is mapped
 * to ' ' at load.
 *
 * A pd_tokenizer is immutable after creation and may be shared by threads.
 */
#ifndef PREFIXD_TOKENIZER_H
#define PREFIXD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_tokenizer pd_tokenizer;

/* SentencePiece token types, as GGUF's tokenizer.ggml.token_type stores them. */
typedef enum pd_token_type {
    PD_TOKEN_NORMAL = 1,
    PD_TOKEN_UNKNOWN = 2,
    PD_TOKEN_CONTROL = 3,
    PD_TOKEN_USER_DEFINED = 4,
    PD_TOKEN_UNUSED = 5,
    PD_TOKEN_BYTE = 6
} pd_token_type;

/* Loads a llama2.c tokenizer.bin (int32 max_token_length, then vocab_size
 * entries of float32 score, int32 length, bytes). vocab_size comes from the
 * model. BOS = 1, EOS = 2, token types inferred (<0xXX> pieces are bytes,
 * "<s>", "</s>", "<unk>" control). Every length is checked against the file.
 * Returns PD_OK and a new tokenizer in *out (free with pd_tokenizer_free), or
 * a negative status with err naming the file and the offset. */
int pd_tokenizer_load_llama2c(const char *path, int vocab_size,
                              pd_tokenizer **out, pd_err *err);

/* Builds a tokenizer from parallel arrays (GGUF metadata). pieces[i] points at
 * lens[i] bytes (not NUL-terminated; copied; "▁" is mapped to ' ');
 * scores and types may be NULL (scores 0, types inferred). bos/eos ids must be
 * < n. Returns PD_OK and a new tokenizer in *out, or a negative status. */
int pd_tokenizer_create(int n, const char *const *pieces, const uint32_t *lens,
                        const float *scores, const int32_t *types, int bos_id,
                        int eos_id, pd_tokenizer **out, pd_err *err);

void pd_tokenizer_free(pd_tokenizer *tok);

int pd_tokenizer_vocab_size(const pd_tokenizer *tok);
int pd_tokenizer_bos(const pd_tokenizer *tok);
int pd_tokenizer_eos(const pd_tokenizer *tok);

/* The stored piece of token id (borrowed, NUL-terminated, plain spaces), or
 * NULL if id is out of range. */
const char *pd_tokenizer_piece(const pd_tokenizer *tok, int id);
float pd_tokenizer_score(const pd_tokenizer *tok, int id);
int pd_tokenizer_type(const pd_tokenizer *tok, int id);

/* Encodes text (len bytes, need not be NUL-terminated; any bytes allowed) into
 * tokens[0..cap). Adds BOS first if bos, EOS last if eos. Returns the number
 * of tokens (which may exceed cap: then only the first cap were written and
 * the caller retries with a larger buffer), or a negative status. Thread-safe;
 * allocates its own scratch. */
int pd_tokenizer_encode(const pd_tokenizer *tok, const char *text, size_t len,
                        int bos, int eos, int32_t *tokens, int cap);

/* The bytes that token `id` produces after token `prev`: a borrowed pointer
 * into the tokenizer (valid while it lives) and their count in *len (not
 * NUL-terminated; may be 0). Applies the byte-token rule (<0xXX> -> that
 * byte) and the after-BOS leading-space rule; control and unknown-range ids
 * produce nothing. Thread-safe. */
const char *pd_tokenizer_decode(const pd_tokenizer *tok, int prev, int id,
                                size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_TOKENIZER_H */
