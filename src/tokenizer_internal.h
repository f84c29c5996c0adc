/* tokenizer_internal.h — the pd_tokenizer struct and the functions the
 * tokenizer's files share (tokenizer.c: storage, SentencePiece, special
 * tokens, decoding; tokenizer_bpe.c: byte-level BPE and its pre-tokenizers;
 * tokenizer_gguf.c: GGUF metadata in and out). Not part of the public API.
 *
 * A pd_tokenizer is immutable once built; every encode call allocates its
 * own scratch, so any number of threads may share one. */
#ifndef PREFIXD_TOKENIZER_INTERNAL_H
#define PREFIXD_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "prefixd/tokenizer.h"

/* Most regexes a pre-tokenizer applies in sequence. */
#define PD__TOK_MAX_REGEX 6
/* Most end-of-generation ids kept. */
#define PD__TOK_MAX_EOG 16

/* A hash map from byte strings (borrowed: they must outlive the map) to
 * int32 values; open addressing, linear probing, power-of-two size. */
typedef struct pd__strmap_slot {
    const char *key; /* NULL: empty slot */
    uint32_t len;
    int32_t val;
} pd__strmap_slot;

typedef struct pd__strmap {
    pd__strmap_slot *slot; /* (mask + 1) (owned) */
    size_t mask;
} pd__strmap;

/* Sizes m for up to n keys. PD_OK or PD_ENOMEM. */
int pd__strmap_init(pd__strmap *m, size_t n);
void pd__strmap_free(pd__strmap *m);
/* Inserts key -> val; an existing key keeps its value unless replace. The
 * map must have been sized for every key inserted. */
void pd__strmap_put(pd__strmap *m, const char *key, uint32_t len, int32_t val, int replace);
/* The value of key, or -1. */
int32_t pd__strmap_get(const pd__strmap *m, const char *key, uint32_t len);

typedef struct piece_ref {
    const char *s; /* borrowed from the tokenizer's blob */
    uint32_t len;
    int32_t id;
} piece_ref;

struct pd_tokenizer {
    int kind;    /* pd_tok_kind */
    int n;       /* vocabulary size */
    int bos, eos;
    int eot, eom;          /* -1 when the vocabulary has none */
    int unk;     /* id used when a byte has no <0xXX> token */
    int add_bos, add_eos;  /* what PD_TOK_ADD_SPECIAL adds */
    int add_space_prefix;  /* SPM: " " before text at the start / after a special token */
    int escape_input;      /* SPM from GGUF: U+2581 in the input means ' ' (llama.cpp, HF) */
    uint32_t max_len;      /* longest piece, bytes */
    char *blob;            /* all pieces, each NUL-terminated (owned) */
    const char **piece;    /* (n) pointers into blob */
    uint32_t *len;         /* (n) piece lengths in bytes */
    float *score;          /* (n) merge scores */
    int32_t *type;         /* (n) pd_token_type values */
    int16_t *byte_val;     /* (n) byte of an exact "<0xXX>" piece, else -1 */
    piece_ref *sorted;     /* (n) pieces in byte order, ties by id */
    int32_t byte_id[256];  /* token for each raw byte, -1 if none */
    char byte_str[256][2]; /* one-byte strings returned by decode */

    int32_t eog[PD__TOK_MAX_EOG]; /* end-of-generation ids, ascending */
    int n_eog;
    int32_t *special;      /* (n_special) control, user-defined and unknown ids,
                              longest text first (owned) */
    int n_special;
    char *chat_template;   /* tokenizer.chat_template, or NULL (owned) */

    /* byte-level BPE (kind == PD_TOKENIZER_BPE) */
    char pre[32];          /* tokenizer.ggml.pre ("default" when absent) */
    int ignore_merges;     /* a pre-tokenized word that is a token is taken whole */
    pcre2_code *re[PD__TOK_MAX_REGEX]; /* applied in order (owned) */
    int n_re;
    pd__strmap tok_map;    /* piece -> id of the model's tokens (not control or
                              user-defined; the last id of a repeated piece) */
    pd__strmap merge_map;  /* "left right" -> rank */
    char *merge_blob;      /* every merge, NUL-terminated (owned) */
    const char **merge;    /* (n_merges) into merge_blob */
    uint32_t *merge_len;   /* (n_merges) */
    int n_merges;
    char *dec_blob;        /* decoded bytes of every token, NUL-terminated (owned) */
    const char **dec;      /* (n) into dec_blob */
    uint32_t *dec_len;     /* (n) */
};

/* Allocates a tokenizer of n tokens with room for blob_size piece bytes
 * (NULs included); every other field zero / -1. NULL when out of memory. */
pd_tokenizer *pd__tokenizer_alloc(int n, size_t blob_size);

/* Completes the SentencePiece tables (types inferred when !have_types,
 * sorted index, byte tables, unknown id) and the special-token list. */
void pd__tokenizer_finish(pd_tokenizer *tok, int have_types);

/* (Re)builds tok->special from the token types: control, user-defined and
 * unknown tokens with non-empty text, longest first. PD_OK or PD_ENOMEM. */
int pd__tokenizer_build_special(pd_tokenizer *tok);

/* Sets up the byte-level BPE part of tok (its pieces, types and special
 * ids are filled): the pre-tokenizer named pre (NULL: "default"), the
 * merges (n_merges strings "left right"), the token map and decoded
 * pieces. Returns PD_OK, or a negative status with err naming the problem
 * (an unknown pre-tokenizer, a malformed merge, a regex that PCRE2
 * refuses) prefixed by where. */
int pd__tokenizer_bpe_init(pd_tokenizer *tok, const char *pre, size_t pre_len,
                           const char *const *merges, const uint64_t *merge_lens,
                           uint64_t n_merges, const char *where, pd_err *err);

/* Appends the ids of raw text text[0..len) (no special tokens in it) to
 * out[0..cap) starting at *count, incrementing *count for every id even
 * past cap. Returns PD_OK or a negative status (PD_ENOMEM). */
int pd__tokenizer_bpe_encode(const pd_tokenizer *tok, const char *text, size_t len,
                             int32_t *out, int cap, int *count);

/* Releases the BPE part of tok. */
void pd__tokenizer_bpe_free(pd_tokenizer *tok);

#endif /* PREFIXD_TOKENIZER_INTERNAL_H */
