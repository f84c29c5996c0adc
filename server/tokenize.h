/* tokenize.h — text <-> token ids as the tokenize commands and routes show
 * them (routes_tokenize.c; used by cmd_tokenize.c too). */
#ifndef PREFIXD_SERVER_TOKENIZE_H
#define PREFIXD_SERVER_TOKENIZE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "prefixd/tokenizer.h"

/* Encodes text[0..len) with flags (PD_TOK_*) into a new JSON array: ids,
 * or with pieces {"id": id, "piece": p} where p is the token's text as a
 * string when it is valid UTF-8, else an array of its byte values (as
 * llama.cpp's server answers). NULL when out of memory or the text cannot
 * be encoded (*rc says which: PD_ENOMEM or the encoder's status). */
json_t *tokenize_json(const pd_tokenizer *tok, const char *text, size_t len, unsigned flags,
                      int with_pieces, int *rc);

/* The text of ids[0..n) (each in range) as a new NUL-terminated buffer
 * (free() it; its length in *len): control, user-defined and unknown tokens
 * as their text, others decoded (the dummy-prefix space of a SentencePiece
 * start dropped). NULL when out of memory. */
char *detokenize_text(const pd_tokenizer *tok, const int32_t *ids, size_t n, size_t *len);

#endif
