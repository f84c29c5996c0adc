/* prefixd/tokenizer.h — the tokenizers: SentencePiece-style BPE (llama2.c's
 * tokenizer.bin, GGUF tokenizer.ggml.model = "llama") and byte-level BPE
 * (GGUF "gpt2": GPT-2, Llama 3, Qwen 2/3, SmolLM, DeepSeek, ...; the
 * pre-tokenizer regexes of tokenizer.ggml.pre run by PCRE2; see
 * src/tokenizer_bpe.c).
 *
 * Special tokens. Token types follow GGUF (pd_token_type). Before the text
 * is tokenized, user-defined tokens are always cut out of it whole; control
 * (and unknown) tokens such as "<|im_start|>" or "<s>" only when the caller
 * passes PD_TOK_PARSE_SPECIAL, otherwise their text is ordinary text. BOS
 * and EOS are added as the vocabulary says (add_bos_token / add_eos_token).
 * The end-of-generation set holds eos, eot, eom and the control tokens
 * llama.cpp recognises by text (<|eot_id|>, <|im_end|>, <|end|>,
 * <end_of_turn>, <|endoftext|>, <|eom_id|>, <EOT>, Qwen's FIM pad/repo/sep).
 *
 * SentencePiece encoding: the text gets a dummy-prefix space (" " + text, when text is not
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
struct pd_gguf;
struct pd_gguf_writer;

#define PD_TOK_ADD_SPECIAL   1u  /* add BOS/EOS as the vocabulary says (add_bos_token/add_eos_token) */
#define PD_TOK_PARSE_SPECIAL 2u  /* recognise control-token text (<|im_start|>, <s>, ...) in the input */

typedef enum pd_tok_kind {
    PD_TOKENIZER_SPM = 1, /* SentencePiece-style, merge by score */
    PD_TOKENIZER_BPE = 2  /* byte-level BPE, merge by rank */
} pd_tok_kind;

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

/* Builds the tokenizer that GGUF file g describes (tokenizer.ggml.*:
 * model "llama" or "gpt2", tokens, scores, token_type, merges, pre, special
 * ids, add_bos_token/add_eos_token/add_space_prefix, and
 * tokenizer.chat_template). Returns PD_OK and a new tokenizer in *out, or a
 * negative status with err naming the file and the key: PD_ENOTFOUND (no
 * tokenizer, no tokens, no merges for "gpt2"), PD_EUNSUPPORTED (another
 * tokenizer model, e.g. "bert"; an unknown tokenizer.ggml.pre), PD_EFORMAT,
 * PD_ERANGE (a special id out of range), PD_ENOMEM. A BPE file without
 * tokenizer.ggml.pre gets llama.cpp's "default" pre-tokenizer (as
 * llama.cpp does; pd_tokenizer_pre then says "default"). g is borrowed. */
int pd_tokenizer_load_gguf(const struct pd_gguf *g, pd_tokenizer **out, pd_err *err);

/* Adds tok's tokenizer.ggml.* keys (and tokenizer.chat_template) to w, so
 * that pd_tokenizer_load_gguf gives the same tokenizer back: SPM pieces
 * with ' ' written as U+2581, BPE pieces and merges as loaded. Returns
 * PD_OK or the writer's status. */
int pd_tokenizer_write_gguf(const pd_tokenizer *tok, struct pd_gguf_writer *w, pd_err *err);

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
 * tokens[0..cap). Adds BOS first if bos and the vocabulary adds BOS
 * (pd_tokenizer_add_bos: always for llama2.c files, add_bos_token for GGUF),
 * EOS last if eos. Special-token text is not parsed (user-defined tokens
 * still match whole). Returns the number
 * of tokens (which may exceed cap: then only the first cap were written and
 * the caller retries with a larger buffer), or a negative status. Thread-safe;
 * allocates its own scratch. */
int pd_tokenizer_encode(const pd_tokenizer *tok, const char *text, size_t len,
                        int bos, int eos, int32_t *tokens, int cap);

/* As pd_tokenizer_encode, with flags PD_TOK_ADD_SPECIAL (BOS/EOS as the
 * vocabulary says) and PD_TOK_PARSE_SPECIAL (control-token text becomes the
 * control token). Same return rules as pd_tokenizer_encode. Thread-safe. */
int pd_tokenizer_encode_flags(const pd_tokenizer *tok, const char *text, size_t len,
                              unsigned flags, int32_t *tokens, int cap);

/* 1 for end-of-generation ids, else 0. */
int pd_tokenizer_is_eog(const pd_tokenizer *tok, int id);
/* Writes up to cap end-of-generation ids (ascending) to ids; returns how
 * many there are. */
int pd_tokenizer_eog_ids(const pd_tokenizer *tok, int32_t *ids, int cap);
/* The end-of-turn id (tokenizer.ggml.eot_token_id, or found by text), or -1. */
int pd_tokenizer_eot(const pd_tokenizer *tok);

/* The token's text as a template or a user sees it, NUL-terminated and
 * borrowed: control, user-defined and unknown tokens as written
 * ("<|begin_of_text|>", "<s>"); BPE tokens decoded to their bytes (" the";
 * may end inside a UTF-8 character); SentencePiece pieces with plain spaces.
 * NULL if id is out of range. */
const char *pd_tokenizer_token_text(const pd_tokenizer *tok, int id);
/* tokenizer.chat_template from the GGUF (borrowed), or NULL. */
const char *pd_tokenizer_chat_template(const pd_tokenizer *tok);
/* 1 when the vocabulary adds BOS (add_bos_token), else 0. */
int pd_tokenizer_add_bos(const pd_tokenizer *tok);
/* 1 when the vocabulary adds EOS (add_eos_token), else 0. */
int pd_tokenizer_add_eos(const pd_tokenizer *tok);
/* pd_tok_kind, and its name "spm" or "bpe" (static). */
int pd_tokenizer_kind(const pd_tokenizer *tok);
const char *pd_tokenizer_kind_name(const pd_tokenizer *tok);
/* The BPE pre-tokenizer's name (borrowed), or NULL for SentencePiece. */
const char *pd_tokenizer_pre(const pd_tokenizer *tok);

/* The bytes that token `id` produces after token `prev`: a borrowed pointer
 * into the tokenizer (valid while it lives) and their count in *len (not
 * NUL-terminated; may be 0). SentencePiece: applies the byte-token rule
 * (<0xXX> -> that byte) and the after-BOS leading-space rule (when the
 * vocabulary adds a space prefix). Byte-level BPE: the token's bytes
 * (decoding every token of encode(s) in turn gives s back). Control and
 * unused tokens and out-of-range ids produce nothing. Thread-safe. */
const char *pd_tokenizer_decode(const pd_tokenizer *tok, int prev, int id,
                                size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_TOKENIZER_H */
