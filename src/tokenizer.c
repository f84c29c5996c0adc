/* tokenizer.c — SentencePiece-style BPE tokenizer, bit-compatible with
 * llama2.c's run.c (encode/decode), loaded from a llama2.c tokenizer.bin or
 * built from GGUF metadata arrays.
 *
 * Design notes.
 *  - Storage: every piece lives NUL-terminated in one blob; piece[i] points
 *    into it and len[i] is its byte length (pieces may in principle hold NUL
 *    bytes, so lengths, never strlen, are authoritative).
 *  - Lookup: `sorted` is the vocabulary ordered by piece bytes (memcmp order,
 *    shorter prefix first, which is strcmp order for NUL-free pieces), ties by
 *    id, so a duplicated piece always resolves to its lowest id. run.c uses
 *    the same sorted-index + binary search.
 *  - Encode reproduces run.c exactly: " " dummy prefix when the text is not
 *    empty; code points grouped as run.c groups them (a byte plus following
 *    continuation bytes, at most 4); unknown groups fall back to their bytes'
 *    <0xXX> tokens; then the adjacent pair whose concatenated *pieces* form the
 *    highest-scoring vocabulary entry (score > -1e10, leftmost on ties) is
 *    merged until none is left. run.c rescans all pairs after every merge
 *    (O(n^2)); here a max-heap of candidate pairs keyed by (score desc, left
 *    position asc) with lazy invalidation selects the same pair at every step
 *    in O(n log n). One deliberate difference: BOS is not part of the merge
 *    sequence (run.c would try to merge it with the first text token; no real
 *    vocabulary holds such a piece, so results are identical).
 *  - Threads: a pd_tokenizer is immutable after creation; encode allocates its
 *    scratch per call, so any number of threads may share one tokenizer.
 */
#include "prefixd/tokenizer.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/fsutil.h"
#include "tokenizer_internal.h"

/* A piece longer than this is refused as malformed (real vocabularies stay
 * under a few hundred bytes). */
#define PIECE_MAX 65536
/* Largest tokenizer.bin accepted. */
#define FILE_MAX ((size_t)1 << 30)
/* run.c's initial best score: merges scoring at or below it never happen. */
#define MERGE_SCORE_FLOOR -1e10f

/* ---- construction helpers ---------------------------------------------- */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of a piece of the exact form "<0xXX>" (hex digits of either case),
 * or -1. */
static int parse_byte_piece(const char *s, uint32_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hexval((unsigned char)s[3]), lo = hexval((unsigned char)s[4]);
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
}

static int piece_is(const char *s, uint32_t len, const char *lit)
{
    size_t n = strlen(lit);
    return len == n && memcmp(s, lit, n) == 0;
}

/* Orders by bytes (unsigned), a proper prefix first. */
static int bytes_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen)
{
    uint32_t m = alen < blen ? alen : blen;
    int c = m ? memcmp(a, b, m) : 0;
    if (c != 0) return c;
    return (alen > blen) - (alen < blen);
}

static int piece_ref_cmp(const void *pa, const void *pb)
{
    const piece_ref *a = pa, *b = pb;
    int c = bytes_cmp(a->s, a->len, b->s, b->len);
    if (c != 0) return c;
    return (a->id > b->id) - (a->id < b->id);
}

/* The lowest id whose piece is exactly key[0..klen), or -1. */
static int lookup(const pd_tokenizer *tok, const char *key, uint32_t klen)
{
    int lo = 0, hi = tok->n; /* first index whose piece >= key */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const piece_ref *r = &tok->sorted[mid];
        if (bytes_cmp(r->s, r->len, key, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < tok->n && bytes_cmp(tok->sorted[lo].s, tok->sorted[lo].len, key, klen) == 0)
        return tok->sorted[lo].id;
    return -1;
}

pd_tokenizer *pd__tokenizer_alloc(int n, size_t blob_size)
{
    pd_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return NULL;
    size_t un = (size_t)n;
    tok->kind = PD_TOKENIZER_SPM;
    tok->n = n;
    tok->eot = tok->eom = -1;
    tok->add_bos = 1;
    tok->add_space_prefix = 1;
    tok->blob = malloc(blob_size ? blob_size : 1);
    tok->piece = calloc(un, sizeof *tok->piece);
    tok->len = calloc(un, sizeof *tok->len);
    tok->score = calloc(un, sizeof *tok->score);
    tok->type = calloc(un, sizeof *tok->type);
    tok->byte_val = calloc(un, sizeof *tok->byte_val);
    tok->sorted = calloc(un, sizeof *tok->sorted);
    if (!tok->blob || !tok->piece || !tok->len || !tok->score || !tok->type ||
        !tok->byte_val || !tok->sorted) {
        pd_tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

void pd__tokenizer_finish(pd_tokenizer *tok, int have_types)
{
    tok->max_len = 0;
    for (int i = 0; i < tok->n; i++) {
        const char *s = tok->piece[i];
        uint32_t len = tok->len[i];
        if (len > tok->max_len) tok->max_len = len;
        tok->byte_val[i] = (int16_t)parse_byte_piece(s, len);
        if (!have_types) {
            if (tok->byte_val[i] >= 0)
                tok->type[i] = PD_TOKEN_BYTE;
            else if (i == tok->bos || i == tok->eos || piece_is(s, len, "<s>") ||
                     piece_is(s, len, "</s>"))
                tok->type[i] = PD_TOKEN_CONTROL;
            else if (piece_is(s, len, "<unk>"))
                tok->type[i] = PD_TOKEN_UNKNOWN;
            else
                tok->type[i] = PD_TOKEN_NORMAL;
        }
        tok->sorted[i] = (piece_ref){.s = s, .len = len, .id = i};
    }
    qsort(tok->sorted, (size_t)tok->n, sizeof *tok->sorted, piece_ref_cmp);

    tok->unk = 0;
    for (int i = 0; i < tok->n; i++) {
        if (tok->type[i] == PD_TOKEN_UNKNOWN) {
            tok->unk = i;
            break;
        }
    }
    for (int b = 0; b < 256; b++) tok->byte_id[b] = -1;
    for (int i = 0; i < tok->n; i++) {
        int b = tok->byte_val[i];
        if (b >= 0 && tok->byte_id[b] < 0) tok->byte_id[b] = i;
    }
    /* run.c's convention (byte b is token b + 3), trusted only where the
     * vocabulary types that token as a byte and its piece does not name
     * another byte; it then also decodes to b. */
    for (int b = 0; b < 256; b++) {
        int id = b + 3;
        if (tok->byte_id[b] < 0 && id < tok->n && tok->type[id] == PD_TOKEN_BYTE &&
            tok->byte_val[id] < 0) {
            tok->byte_id[b] = id;
            tok->byte_val[id] = (int16_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        tok->byte_str[b][0] = (char)b;
        tok->byte_str[b][1] = 0;
    }
    if (tok->n_eog == 0) tok->eog[tok->n_eog++] = tok->eos;
}

/* ---- loading ------------------------------------------------------------ */

static int32_t rd_i32(const unsigned char *p)
{
    uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    int32_t r;
    memcpy(&r, &v, sizeof r);
    return r;
}

static float rd_f32(const unsigned char *p)
{
    uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}

int pd_tokenizer_load_llama2c(const char *path, int vocab_size, pd_tokenizer **out,
                              pd_err *err)
{
    PD_ASSERT(path && out);
    *out = NULL;
    if (vocab_size < 3) /* <unk>, BOS = 1 and EOS = 2 at least */
        return pd_err_set(err, PD_EINVAL, "%s: vocab_size %d, need at least 3", path,
                          vocab_size);

    char *data = NULL;
    size_t size = 0;
    int rc = pd_read_file(path, FILE_MAX, &data, &size, err);
    if (rc < 0) return rc;
    const unsigned char *p = (const unsigned char *)data;

    /* First pass: check every field against the file and size the blob. */
    if (size < 4) {
        free(data);
        return pd_err_set(err, PD_ETRUNC,
                          "%s: offset 0: file has %zu bytes, too short for max_token_length",
                          path, size);
    }
    int32_t max_token_length = rd_i32(p);
    if (max_token_length < 0 || max_token_length > PIECE_MAX) {
        free(data);
        return pd_err_set(err, PD_EFORMAT, "%s: offset 0: max_token_length %d out of range",
                          path, (int)max_token_length);
    }
    size_t off = 4, blob_size = 0;
    for (int i = 0; i < vocab_size; i++) {
        if (size - off < 8) {
            free(data);
            return pd_err_set(err, PD_ETRUNC,
                              "%s: offset %zu: file ends inside the header of token %d "
                              "(%d expected)",
                              path, off, i, vocab_size);
        }
        int32_t len = rd_i32(p + off + 4);
        if (len < 0 || len > PIECE_MAX) {
            free(data);
            return pd_err_set(err, PD_EFORMAT, "%s: offset %zu: token %d has length %d",
                              path, off + 4, i, (int)len);
        }
        off += 8;
        if ((size_t)len > size - off) {
            free(data);
            return pd_err_set(err, PD_ETRUNC,
                              "%s: offset %zu: token %d has length %d but only %zu bytes remain",
                              path, off - 4, i, (int)len, size - off);
        }
        off += (size_t)len;
        blob_size += (size_t)len + 1;
    }

    pd_tokenizer *tok = pd__tokenizer_alloc(vocab_size, blob_size);
    if (!tok) {
        free(data);
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory for %d tokens", path,
                          vocab_size);
    }
    tok->bos = 1;
    tok->eos = 2;

    /* Second pass: copy; every bound was checked above. */
    off = 4;
    char *dst = tok->blob;
    for (int i = 0; i < vocab_size; i++) {
        tok->score[i] = rd_f32(p + off);
        uint32_t len = (uint32_t)rd_i32(p + off + 4);
        off += 8;
        memcpy(dst, p + off, len);
        dst[len] = 0;
        tok->piece[i] = dst;
        tok->len[i] = len;
        dst += len + 1;
        off += len;
    }
    free(data);
    pd__tokenizer_finish(tok, 0);
    if (pd__tokenizer_build_special(tok) < 0) {
        pd_tokenizer_free(tok);
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory for %d tokens", path, vocab_size);
    }
    *out = tok;
    return PD_OK;
}

/* Copies piece bytes src[0..len) to dst with every U+2581 (E2 96 81) turned
 * into one ' '. Returns the bytes written (<= len). */
static uint32_t copy_unescape(char *dst, const char *src, uint32_t len)
{
    uint32_t o = 0;
    for (uint32_t i = 0; i < len;) {
        if (len - i >= 3 && (unsigned char)src[i] == 0xE2 &&
            (unsigned char)src[i + 1] == 0x96 && (unsigned char)src[i + 2] == 0x81) {
            dst[o++] = ' ';
            i += 3;
        } else {
            dst[o++] = src[i++];
        }
    }
    return o;
}

int pd_tokenizer_create(int n, const char *const *pieces, const uint32_t *lens,
                        const float *scores, const int32_t *types, int bos_id, int eos_id,
                        pd_tokenizer **out, pd_err *err)
{
    PD_ASSERT(out);
    *out = NULL;
    if (n <= 0) return pd_err_set(err, PD_EINVAL, "tokenizer: vocabulary size %d", n);
    if (!pieces || !lens)
        return pd_err_set(err, PD_EINVAL, "tokenizer: pieces or lengths missing");
    if (bos_id < 0 || bos_id >= n)
        return pd_err_set(err, PD_ERANGE, "tokenizer: bos id %d not in [0, %d)", bos_id, n);
    if (eos_id < 0 || eos_id >= n)
        return pd_err_set(err, PD_ERANGE, "tokenizer: eos id %d not in [0, %d)", eos_id, n);
    size_t blob_size = 0;
    for (int i = 0; i < n; i++) {
        if (lens[i] > PIECE_MAX)
            return pd_err_set(err, PD_EFORMAT, "tokenizer: token %d has length %u (limit %d)",
                              i, lens[i], PIECE_MAX);
        if (lens[i] > 0 && !pieces[i])
            return pd_err_set(err, PD_EINVAL, "tokenizer: token %d has no bytes", i);
        blob_size += (size_t)lens[i] + 1;
    }

    pd_tokenizer *tok = pd__tokenizer_alloc(n, blob_size);
    if (!tok) return pd_err_set(err, PD_ENOMEM, "tokenizer: out of memory for %d tokens", n);
    tok->bos = bos_id;
    tok->eos = eos_id;
    char *dst = tok->blob;
    for (int i = 0; i < n; i++) {
        uint32_t len = lens[i] ? copy_unescape(dst, pieces[i], lens[i]) : 0;
        dst[len] = 0;
        tok->piece[i] = dst;
        tok->len[i] = len;
        tok->score[i] = scores ? scores[i] : 0.0f;
        if (types) tok->type[i] = types[i];
        dst += len + 1;
    }
    pd__tokenizer_finish(tok, types != NULL);
    if (pd__tokenizer_build_special(tok) < 0) {
        pd_tokenizer_free(tok);
        return pd_err_set(err, PD_ENOMEM, "tokenizer: out of memory for %d tokens", n);
    }
    *out = tok;
    return PD_OK;
}

void pd_tokenizer_free(pd_tokenizer *tok)
{
    if (!tok) return;
    pd__tokenizer_bpe_free(tok);
    free(tok->special);
    free(tok->chat_template);
    free(tok->blob);
    free(tok->piece);
    free(tok->len);
    free(tok->score);
    free(tok->type);
    free(tok->byte_val);
    free(tok->sorted);
    free(tok);
}

/* ---- accessors ---------------------------------------------------------- */

int pd_tokenizer_vocab_size(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->n;
}

int pd_tokenizer_bos(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->bos;
}

int pd_tokenizer_eos(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->eos;
}

const char *pd_tokenizer_piece(const pd_tokenizer *tok, int id)
{
    PD_ASSERT(tok);
    return id >= 0 && id < tok->n ? tok->piece[id] : NULL;
}

/* 0 for an out-of-range id. */
float pd_tokenizer_score(const pd_tokenizer *tok, int id)
{
    PD_ASSERT(tok);
    return id >= 0 && id < tok->n ? tok->score[id] : 0.0f;
}

/* 0 (no pd_token_type) for an out-of-range id. */
int pd_tokenizer_type(const pd_tokenizer *tok, int id)
{
    PD_ASSERT(tok);
    return id >= 0 && id < tok->n ? tok->type[id] : 0;
}

/* ---- encoding ----------------------------------------------------------- */

/* One token of the working sequence: a doubly linked list over the array,
 * in text order; a merge keeps the left symbol and unlinks the right one. */
typedef struct symbol {
    int32_t id;         /* current token, -1 once merged away */
    int32_t prev, next; /* neighbours, -1 at the ends */
} symbol;

/* A candidate merge of symbols left and left's successor (right), valid while
 * both still hold the ids they had when it was pushed. */
typedef struct candidate {
    float score;     /* score of the merged token */
    int32_t left;    /* symbol index: ties go to the smaller (leftmost) */
    int32_t right;
    int32_t left_id, right_id, merged_id;
} candidate;

typedef struct heap {
    candidate *v;
    size_t n, cap;
} heap;

/* Whether a must be popped before b: higher score, then leftmost. */
static int cand_before(const candidate *a, const candidate *b)
{
    if (a->score != b->score) return a->score > b->score;
    return a->left < b->left;
}

static void heap_push(heap *h, candidate c)
{
    PD_ASSERT(h->n < h->cap); /* capacity is sized for the worst case */
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_before(&c, &h->v[parent])) break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = c;
}

static candidate heap_pop(heap *h)
{
    PD_ASSERT(h->n > 0);
    candidate top = h->v[0];
    candidate last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && cand_before(&h->v[c + 1], &h->v[c])) c++;
        if (!cand_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

/* Pushes the merge of symbols l and r if their concatenated pieces are a
 * vocabulary entry scoring above run.c's floor. buf holds 2 * max_len bytes. */
static void try_pair(const pd_tokenizer *tok, const symbol *sym, int32_t l, int32_t r,
                     char *buf, heap *h)
{
    if (l < 0 || r < 0) return;
    int32_t a = sym[l].id, b = sym[r].id;
    uint32_t la = tok->len[a], lb = tok->len[b];
    if (la + lb > tok->max_len) return; /* longer than any piece */
    memcpy(buf, tok->piece[a], la);
    memcpy(buf + la, tok->piece[b], lb);
    int id = lookup(tok, buf, la + lb);
    if (id < 0 || !(tok->score[id] > MERGE_SCORE_FLOOR)) return;
    heap_push(h, (candidate){.score = tok->score[id], .left = l, .right = r,
                             .left_id = a, .right_id = b, .merged_id = id});
}

/* Appends the token(s) of text unit u[0..ulen): its piece, else one token per
 * byte (the <0xXX> token, else the unknown token). */
static void push_unit(const pd_tokenizer *tok, const char *u, uint32_t ulen, symbol *sym,
                      int32_t *n_sym)
{
    int id = lookup(tok, u, ulen);
    if (id >= 0) {
        sym[(*n_sym)++].id = id;
        return;
    }
    for (uint32_t k = 0; k < ulen; k++) {
        int b = tok->byte_id[(unsigned char)u[k]];
        sym[(*n_sym)++].id = b >= 0 ? b : tok->unk;
    }
}

/* SentencePiece: appends the ids of text[0..len) (len > 0), after the
 * dummy-prefix space when prefix. Returns PD_OK or PD_ENOMEM. */
static int spm_encode_run(const pd_tokenizer *tok, const char *text, size_t len, int prefix,
                          int32_t *tokens, int cap, int *count)
{
    size_t max_sym = len + 1;
    symbol *sym = malloc(max_sym * sizeof *sym);
    /* n - 1 initial pairs plus at most two per merge, n - 1 merges. */
    candidate *cands = malloc(3 * max_sym * sizeof *cands);
    char *buf = malloc(2 * (size_t)tok->max_len + 1);
    char *esc = tok->escape_input ? malloc(len) : NULL;
    if (!sym || !cands || !buf || (tok->escape_input && !esc)) {
        free(sym);
        free(cands);
        free(buf);
        free(esc);
        return PD_ENOMEM;
    }
    if (esc) { /* U+2581 in the input is SentencePiece's space */
        size_t o = 0;
        for (size_t i = 0; i < len;) {
            if (len - i >= 3 && memcmp(text + i, "\xe2\x96\x81", 3) == 0) {
                esc[o++] = ' ';
                i += 3;
            } else {
                esc[o++] = text[i++];
            }
        }
        text = esc;
        len = o;
    }

    /* Dummy prefix, then text units grouped as run.c does: a byte plus the
     * continuation bytes (10xxxxxx) that follow it, at most 4. */
    int32_t n_sym = 0;
    if (prefix) push_unit(tok, " ", 1, sym, &n_sym);
    for (size_t i = 0; i < len;) {
        size_t j = i + 1;
        while (j < len && j - i < 4 && ((unsigned char)text[j] & 0xC0) == 0x80) j++;
        push_unit(tok, text + i, (uint32_t)(j - i), sym, &n_sym);
        i = j;
    }
    PD_ASSERT((size_t)n_sym <= max_sym);
    for (int32_t i = 0; i < n_sym; i++) {
        sym[i].prev = i - 1;
        sym[i].next = i + 1 < n_sym ? i + 1 : -1;
    }

    heap h = {.v = cands, .n = 0, .cap = 3 * max_sym};
    for (int32_t i = 0; i + 1 < n_sym; i++) try_pair(tok, sym, i, i + 1, buf, &h);
    while (h.n > 0) {
        candidate c = heap_pop(&h);
        symbol *l = &sym[c.left], *r = &sym[c.right];
        if (l->id != c.left_id || r->id != c.right_id || l->next != c.right)
            continue; /* stale: a neighbour merged since it was pushed */
        l->id = c.merged_id;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = c.left;
        r->id = -1;
        r->prev = r->next = -1;
        try_pair(tok, sym, l->prev, c.left, buf, &h);
        try_pair(tok, sym, c.left, l->next, buf, &h);
    }
    for (int32_t i = n_sym > 0 ? 0 : -1; i >= 0; i = sym[i].next) {
        if (*count < cap) tokens[*count] = sym[i].id;
        (*count)++;
    }
    free(sym);
    free(cands);
    free(buf);
    free(esc);
    return PD_OK;
}

/* ---- special tokens ----------------------------------------------------- */

/* A piece of the input: raw text [off, off + len), or special token id. */
typedef struct frag {
    size_t off, len;
    int32_t id; /* -1: raw text */
} frag;

static int special_cmp(const void *pa, const void *pb)
{
    const piece_ref *a = pa, *b = pb;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

int pd__tokenizer_build_special(pd_tokenizer *tok)
{
    int n = 0;
    for (int i = 0; i < tok->n; i++) {
        int t = tok->type[i];
        if ((t == PD_TOKEN_CONTROL || t == PD_TOKEN_USER_DEFINED || t == PD_TOKEN_UNKNOWN) &&
            tok->len[i] > 0)
            n++;
    }
    free(tok->special);
    tok->special = NULL;
    tok->n_special = 0;
    if (n == 0) return PD_OK;
    piece_ref *r = malloc((size_t)n * sizeof *r);
    tok->special = malloc((size_t)n * sizeof *tok->special);
    if (!r || !tok->special) {
        free(r);
        return PD_ENOMEM;
    }
    int k = 0;
    for (int i = 0; i < tok->n; i++) {
        int t = tok->type[i];
        if ((t == PD_TOKEN_CONTROL || t == PD_TOKEN_USER_DEFINED || t == PD_TOKEN_UNKNOWN) &&
            tok->len[i] > 0)
            r[k++] = (piece_ref){.s = tok->piece[i], .len = tok->len[i], .id = i};
    }
    qsort(r, (size_t)n, sizeof *r, special_cmp);
    for (int i = 0; i < n; i++) tok->special[i] = r[i].id;
    tok->n_special = n;
    free(r);
    return PD_OK;
}

/* Splits text[0..len) at the special tokens (longest first, leftmost
 * occurrence first, as llama.cpp's tokenizer_st_partition does): user-defined
 * tokens always, control and unknown tokens only when parse_special. Writes
 * the pieces to a new array *out (free() it) and their count to *n. */
static int partition(const pd_tokenizer *tok, const char *text, size_t len, int parse_special,
                     frag **out, size_t *n)
{
    size_t cap = 2 * len + 2; /* each split adds at most two pieces and consumes >= 1 byte */
    frag *a = malloc(cap * sizeof *a), *b = malloc(cap * sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        return PD_ENOMEM;
    }
    size_t na = 1;
    a[0] = (frag){0, len, -1};
    for (int s = 0; s < tok->n_special; s++) {
        int32_t id = tok->special[s];
        int t = tok->type[id];
        if (!parse_special && t != PD_TOKEN_USER_DEFINED) continue;
        const char *pat = tok->piece[id];
        size_t plen = tok->len[id];
        size_t nb = 0;
        for (size_t i = 0; i < na; i++) {
            if (a[i].id >= 0 || a[i].len < plen) {
                b[nb++] = a[i];
                continue;
            }
            size_t at = a[i].off, end = a[i].off + a[i].len;
            for (;;) {
                const char *m = memmem(text + at, end - at, pat, plen);
                if (!m) break;
                size_t mo = (size_t)(m - text);
                if (mo > at) b[nb++] = (frag){at, mo - at, -1};
                b[nb++] = (frag){mo, plen, id};
                at = mo + plen;
            }
            if (at < end) b[nb++] = (frag){at, end - at, -1};
        }
        PD_ASSERT(nb <= cap);
        frag *t2 = a;
        a = b;
        b = t2;
        na = nb;
    }
    free(b);
    *out = a;
    *n = na;
    return PD_OK;
}

static int encode_impl(const pd_tokenizer *tok, const char *text, size_t len,
                       int parse_special, int bos, int eos, int32_t *tokens, int cap)
{
    PD_ASSERT(tok);
    if ((!text && len > 0) || cap < 0 || (!tokens && cap > 0)) return PD_EINVAL;
    /* Every byte yields at most one token, plus the dummy prefixes, BOS, EOS. */
    if (len > (size_t)INT_MAX / 4 - 4) return PD_ERANGE;

    int count = 0, rc = PD_OK;
    if (bos) {
        if (count < cap) tokens[count] = tok->bos;
        count++;
    }
    if (len > 0) {
        frag *f = NULL;
        size_t nf = 0;
        if ((rc = partition(tok, text, len, parse_special, &f, &nf)) < 0) return rc;
        int prev_special = 1; /* the text start counts as after a special token */
        for (size_t i = 0; i < nf && rc >= 0; i++) {
            if (f[i].id >= 0) {
                if (count < cap) tokens[count] = f[i].id;
                count++;
                prev_special = 1;
            } else if (tok->kind == PD_TOKENIZER_BPE) {
                rc = pd__tokenizer_bpe_encode(tok, text + f[i].off, f[i].len, tokens, cap, &count);
                prev_special = 0;
            } else {
                rc = spm_encode_run(tok, text + f[i].off, f[i].len,
                                    tok->add_space_prefix && prev_special, tokens, cap, &count);
                prev_special = 0;
            }
        }
        free(f);
        if (rc < 0) return rc;
    }
    if (eos) {
        if (count < cap) tokens[count] = tok->eos;
        count++;
    }
    return count;
}

int pd_tokenizer_encode(const pd_tokenizer *tok, const char *text, size_t len, int bos,
                        int eos, int32_t *tokens, int cap)
{
    PD_ASSERT(tok);
    return encode_impl(tok, text, len, 0, bos && tok->add_bos, eos, tokens, cap);
}

int pd_tokenizer_encode_flags(const pd_tokenizer *tok, const char *text, size_t len,
                              unsigned flags, int32_t *tokens, int cap)
{
    PD_ASSERT(tok);
    int special = (flags & PD_TOK_ADD_SPECIAL) != 0;
    return encode_impl(tok, text, len, (flags & PD_TOK_PARSE_SPECIAL) != 0,
                       special && tok->add_bos, special && tok->add_eos, tokens, cap);
}

/* ---- decoding ----------------------------------------------------------- */

const char *pd_tokenizer_decode(const pd_tokenizer *tok, int prev, int id, size_t *len)
{
    PD_ASSERT(tok && len);
    *len = 0;
    if (id < 0 || id >= tok->n) return NULL;
    if (tok->kind == PD_TOKENIZER_BPE) {
        *len = tok->dec_len[id];
        return tok->dec[id];
    }
    int t = tok->type[id];
    if (t == PD_TOKEN_CONTROL || t == PD_TOKEN_UNUSED)
        return tok->piece[id] + tok->len[id]; /* "" */
    int b = tok->byte_val[id];
    if (b >= 0) {
        *len = 1;
        return tok->byte_str[b];
    }
    const char *s = tok->piece[id];
    size_t n = tok->len[id];
    if (tok->add_space_prefix && prev == tok->bos && n > 0 && s[0] == ' ') {
        s++;
        n--;
    }
    *len = n;
    return s;
}

/* ---- vocabulary facts --------------------------------------------------- */

int pd_tokenizer_is_eog(const pd_tokenizer *tok, int id)
{
    PD_ASSERT(tok);
    for (int i = 0; i < tok->n_eog; i++)
        if (tok->eog[i] == id) return 1;
    return 0;
}

int pd_tokenizer_eog_ids(const pd_tokenizer *tok, int32_t *ids, int cap)
{
    PD_ASSERT(tok && (ids || cap == 0));
    for (int i = 0; i < tok->n_eog && i < cap; i++) ids[i] = tok->eog[i];
    return tok->n_eog;
}

const char *pd_tokenizer_token_text(const pd_tokenizer *tok, int id)
{
    PD_ASSERT(tok);
    if (id < 0 || id >= tok->n) return NULL;
    int t = tok->type[id];
    if (tok->kind == PD_TOKENIZER_BPE && t != PD_TOKEN_CONTROL && t != PD_TOKEN_USER_DEFINED &&
        t != PD_TOKEN_UNKNOWN)
        return tok->dec[id];
    return tok->piece[id];
}

const char *pd_tokenizer_chat_template(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->chat_template;
}

int pd_tokenizer_add_bos(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->add_bos;
}

int pd_tokenizer_add_eos(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->add_eos;
}

int pd_tokenizer_kind(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->kind;
}

const char *pd_tokenizer_kind_name(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->kind == PD_TOKENIZER_BPE ? "bpe" : "spm";
}

const char *pd_tokenizer_pre(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->kind == PD_TOKENIZER_BPE ? tok->pre : NULL;
}

int pd_tokenizer_eot(const pd_tokenizer *tok)
{
    PD_ASSERT(tok);
    return tok->eot;
}
