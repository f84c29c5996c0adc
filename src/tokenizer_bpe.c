/* tokenizer_bpe.c — byte-level BPE (GGUF tokenizer.ggml.model = "gpt2"), as
 * GPT-2, Llama 3, Qwen 2/3, SmolLM, DeepSeek, StarCoder and friends use it.
 *
 * Encoding one run of raw text (special tokens are split out before, by
 * tokenizer.c):
 *  1. Pre-tokenizer: the regexes of tokenizer.ggml.pre, applied in order;
 *     each splits every piece the previous ones left into its matches and
 *     the gaps between them (HF's Split with "Isolated" behaviour, which is
 *     also how llama.cpp applies them). The regexes are the ones the models'
 *     tokenizer.json files hold, compiled once per tokenizer by PCRE2 with
 *     UTF + UCP (Unicode categories from PCRE2's tables, not hand-written
 *     ones) and JIT-compiled when available. A piece is matched as its own
 *     subject, so "$" and "(?!\S)" see the piece's end as the end of input.
 *     Where llama.cpp rewrote a regex for std::regex ("(?i:'s|...)" spelled
 *     "'[sS]|..."), the original is used: PCRE2 runs it as HF does.
 *  2. Byte-level mapping: every byte of a word becomes one character of
 *     GPT-2's bytes_to_unicode table (printable Latin-1 stays itself, the
 *     other 68 bytes go to U+0100...), so every byte sequence is spelled
 *     with vocabulary characters.
 *  3. Merges: the adjacent pair with the lowest rank in tokenizer.ggml.merges
 *     ("left right", rank = position) is merged, leftmost first on ties,
 *     until no pair has a rank; each remaining symbol is a token. With
 *     ignore_merges (llama3, tekken), a word that is a token is taken whole.
 *
 * Decoding maps each character of a piece back through the table, so
 * decode(encode(s)) == s for any bytes; the decoded bytes of every token are
 * computed once at load.
 *
 * Invalid UTF-8 in the input never matches a regex (PCRE2_MATCH_INVALID_UTF),
 * so it ends up in the gaps and is still byte-mapped and merged.
 *
 * Where llama.cpp differs from the HF regex semantics used here: llama.cpp
 * runs hand-written splitters for the GPT-2 and Llama 3 regexes and, for the
 * others, std::regex over text whose non-ASCII code points are collapsed to
 * one byte per category (its own Unicode tables: one category per code
 * point, every non-ASCII space a \v) and spells the Llama 3 / Qwen 2
 * contractions '[sS]... instead of (?i:'s|...). So the two can differ only
 * where those Unicode tables or category collapses disagree with PCRE2's. On
 * the 260-string corpus of tests/e2e/test_tokenize_hf.py, llama.cpp's
 * llama-tokenize and prefixd give the same ids for Llama 3, GPT-2 and
 * DeepSeek LLM (and "it'ſ" / "x'K" the same as the HF reference). Neither
 * applies a tokenizer.json normalizer (Qwen's NFC).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* ---- the pre-tokenizers ------------------------------------------------- */

/* GPT-2's ByteLevel regex (HF's), also the core of many others. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama 3's (tiktoken cl100k-style), as its tokenizer.json has it. */
#define RE_LLAMA3                                                                          \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "             \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen 2's: Llama 3's with single digits. */
#define RE_QWEN2                                                                           \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "                  \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Mistral's tekken and GPT-4o's (o200k): case-aware words. */
#define RE_WORD_CASED_HEAD                                                                 \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
#define RE_WORD_CASED_TAIL                                                                 \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
#define RE_CONTRACTION_OPT "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
#define RE_TEKKEN                                                                          \
    RE_WORD_CASED_HEAD "|" RE_WORD_CASED_TAIL "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"   \
                       "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_GPT4O                                                                           \
    RE_WORD_CASED_HEAD RE_CONTRACTION_OPT "|" RE_WORD_CASED_TAIL RE_CONTRACTION_OPT        \
                                          "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"  \
                                          "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_CJK "[\xe4\xb8\x80-\xe9\xbe\xa5\xe0\xa0\x80-\xe4\xb8\x80\xea\xb0\x80-\xed\x9f\xbf]+"
#define RE_BLOOM " ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4\xdb\x94\xd8\x8c)]+"

/* DeepSeek LLM's letter and punctuation classes, as its tokenizer.json
 * writes them. */
#define RE_DSLLM_LETTERS "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
#define RE_DSLLM_PUNCT "\\s?[!-/:-~！-／：-～‘-‟　-。]+"

typedef struct pre_def {
    const char *names[8];             /* tokenizer.ggml.pre values, NULL-ended */
    const char *re[PD__TOK_MAX_REGEX]; /* NULL-ended */
    int ignore_merges;
} pre_def;

static const pre_def PRE[] = {
    {{"default", NULL},
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]", NULL}, 0},
    {{"llama-bpe", "llama3", "llama-v3", "falcon3", NULL}, {RE_LLAMA3, NULL}, 1},
    {{"dbrx", "smaug-bpe", NULL}, {RE_LLAMA3, NULL}, 0},
    {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", NULL}, {RE_QWEN2, NULL}, 0},
    {{"gpt-2", "gpt-neox", "mpt", "phi-2", "olmo", "jais", "roberta-bpe", NULL},
     {RE_GPT2, NULL}, 0},
    {{"starcoder", "refact", "smollm", "command-r", "codeshell", "exaone", "minerva-7b", NULL},
     {"\\p{N}", RE_GPT2, NULL}, 0},
    {{"falcon", NULL}, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]", NULL}, 0},
    {{"deepseek-llm", NULL},
     {"[\r\n]", RE_DSLLM_LETTERS, RE_DSLLM_PUNCT, "\\s+$", RE_CJK, "\\p{N}+"}, 0},
    {{"deepseek-coder", NULL}, {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK, "\\p{N}", NULL}, 0},
    {{"deepseek-v3", NULL},
     {"\\p{N}{1,3}",
      "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}"
      "\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
      NULL},
     0},
    {{"tekken", NULL}, {RE_TEKKEN, NULL}, 1},
    {{"gpt-4o", NULL}, {RE_GPT4O, NULL}, 0},
    {{"bloom", "poro-chat", "gpt3-finnish", NULL}, {RE_BLOOM, NULL}, 0},
    {{"viking", NULL}, {RE_BLOOM, "\\p{N}", NULL}, 0},
};

static const pre_def *find_pre(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof PRE / sizeof *PRE; i++)
        for (const char *const *n = PRE[i].names; *n; n++)
            if (strlen(*n) == len && memcmp(*n, name, len) == 0) return &PRE[i];
    return NULL;
}

/* ---- GPT-2's byte <-> unicode table ------------------------------------- */

/* Whether GPT-2 spells byte b as itself (printable Latin-1). */
static int byte_is_printable(unsigned b)
{
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* The spelling of every byte: 1 or 2 bytes of UTF-8. Built
 * once; a constant afterwards. */
typedef struct byte_table {
    unsigned char enc[256][2];
    unsigned char enc_len[256];
    int16_t dec[324]; /* code point -> byte, -1 if none */
} byte_table;

static void build_byte_table(byte_table *t)
{
    for (int i = 0; i < 324; i++) t->dec[i] = -1;
    unsigned next = 256; /* the other bytes get U+0100.. in byte order */
    for (unsigned b = 0; b < 256; b++) {
        unsigned c = byte_is_printable(b) ? b : next++;
        if (c < 0x80) {
            t->enc[b][0] = (unsigned char)c;
            t->enc_len[b] = 1;
        } else {
            t->enc[b][0] = (unsigned char)(0xC0 | (c >> 6));
            t->enc[b][1] = (unsigned char)(0x80 | (c & 0x3F));
            t->enc_len[b] = 2;
        }
        t->dec[c] = (int16_t)b;
    }
}

/* Decodes one UTF-8 character of s[0..n) (n >= 1): its code point and byte
 * count; an invalid sequence yields (byte, 1) with *ok = 0. */
static unsigned utf8_next(const unsigned char *s, size_t n, size_t *used, int *ok)
{
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    *ok = 0;
    *used = 1;
    if (k == 0 || k > n) return c;
    if (k == 1) {
        *ok = 1;
        return c;
    }
    unsigned v = c & (0x7F >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return c;
        v = v << 6 | (s[i] & 0x3F);
    }
    *ok = 1;
    *used = k;
    return v;
}

/* ---- string map --------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, uint32_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (uint32_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

int pd__strmap_init(pd__strmap *m, size_t n)
{
    size_t size = 16;
    while (size < 2 * n + 1) size *= 2;
    m->slot = calloc(size, sizeof *m->slot);
    m->mask = size - 1;
    return m->slot ? PD_OK : PD_ENOMEM;
}

void pd__strmap_free(pd__strmap *m)
{
    free(m->slot);
    m->slot = NULL;
    m->mask = 0;
}

void pd__strmap_put(pd__strmap *m, const char *key, uint32_t len, int32_t val, int replace)
{
    PD_ASSERT(m->slot && key);
    for (size_t i = hash_bytes(key, len) & m->mask;; i = (i + 1) & m->mask) {
        pd__strmap_slot *s = &m->slot[i];
        if (!s->key) {
            *s = (pd__strmap_slot){.key = key, .len = len, .val = val};
            return;
        }
        if (s->len == len && memcmp(s->key, key, len) == 0) {
            if (replace) s->val = val;
            return;
        }
    }
}

int32_t pd__strmap_get(const pd__strmap *m, const char *key, uint32_t len)
{
    if (!m->slot) return -1;
    for (size_t i = hash_bytes(key, len) & m->mask;; i = (i + 1) & m->mask) {
        const pd__strmap_slot *s = &m->slot[i];
        if (!s->key) return -1;
        if (s->len == len && memcmp(s->key, key, len) == 0) return s->val;
    }
}

/* ---- set-up ------------------------------------------------------------- */

/* Decoded bytes of every token: normal tokens through the byte table
 * (a character outside it is kept as its UTF-8 bytes), user-defined tokens
 * as written, control/unknown/unused tokens as nothing. */
static int build_decoded(pd_tokenizer *tok, const byte_table *bt)
{
    size_t total = 0;
    for (int i = 0; i < tok->n; i++) total += tok->len[i] + 1;
    tok->dec_blob = malloc(total);
    tok->dec = malloc((size_t)tok->n * sizeof *tok->dec);
    tok->dec_len = malloc((size_t)tok->n * sizeof *tok->dec_len);
    if (!tok->dec_blob || !tok->dec || !tok->dec_len) return PD_ENOMEM;
    char *dst = tok->dec_blob;
    for (int i = 0; i < tok->n; i++) {
        const unsigned char *s = (const unsigned char *)tok->piece[i];
        size_t n = tok->len[i], o = 0;
        int t = tok->type[i];
        tok->dec[i] = dst;
        if (t == PD_TOKEN_USER_DEFINED) {
            memcpy(dst, s, n);
            o = n;
        } else if (t != PD_TOKEN_CONTROL && t != PD_TOKEN_UNKNOWN && t != PD_TOKEN_UNUSED) {
            for (size_t k = 0; k < n;) {
                size_t used;
                int ok;
                unsigned c = utf8_next(s + k, n - k, &used, &ok);
                if (ok && c < 324 && bt->dec[c] >= 0) {
                    dst[o++] = (char)bt->dec[c];
                } else {
                    memcpy(dst + o, s + k, used);
                    o += used;
                }
                k += used;
            }
        }
        dst[o] = 0;
        tok->dec_len[i] = (uint32_t)o;
        dst += o + 1;
    }
    return PD_OK;
}

static int compile_regexes(pd_tokenizer *tok, const pre_def *p, const char *where, pd_err *err)
{
    for (int i = 0; i < PD__TOK_MAX_REGEX && p->re[i]; i++) {
        int code;
        PCRE2_SIZE at;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)p->re[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code,
                                       &at, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof msg);
            return pd_err_set(err, PD_EINVAL,
                              "%s: pre-tokenizer '%s': regex %d does not compile at offset "
                              "%zu: %s",
                              where, tok->pre, i, (size_t)at, (const char *)msg);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter when no JIT */
        tok->re[tok->n_re++] = re;
    }
    return PD_OK;
}

int pd__tokenizer_bpe_init(pd_tokenizer *tok, const char *pre, size_t pre_len,
                           const char *const *merges, const uint64_t *merge_lens,
                           uint64_t n_merges, const char *where, pd_err *err)
{
    static const char def[] = "default";
    if (!pre) {
        pre = def;
        pre_len = sizeof def - 1;
    }
    const pre_def *p = find_pre(pre, pre_len);
    if (!p) {
        int shown = pre_len < 40 ? (int)pre_len : 40;
        return pd_err_set(err, PD_EUNSUPPORTED,
                          "%s: tokenizer.ggml.pre is '%.*s', a pre-tokenizer prefixd does not "
                          "know (supported: llama-bpe, qwen2, gpt-2, smollm, starcoder, refact, "
                          "mpt, gpt-neox, falcon, deepseek-llm, deepseek-coder, deepseek-v3, "
                          "dbrx, tekken, gpt-4o, bloom, default, and their aliases)",
                          where, shown, pre);
    }
    if (n_merges > (uint64_t)INT32_MAX)
        return pd_err_set(err, PD_EFORMAT, "%s: %llu merges is too many", where,
                          (unsigned long long)n_merges);
    snprintf(tok->pre, sizeof tok->pre, "%.*s", (int)(pre_len < 31 ? pre_len : 31), pre);
    tok->ignore_merges = p->ignore_merges;
    int rc = compile_regexes(tok, p, where, err);
    if (rc < 0) return rc;

    /* the merges, copied: "left right" with both sides non-empty */
    size_t total = 0;
    for (uint64_t i = 0; i < n_merges; i++) {
        if (merge_lens[i] > 65536)
            return pd_err_set(err, PD_EFORMAT, "%s: tokenizer.ggml.merges[%llu] is %llu bytes long",
                              where, (unsigned long long)i, (unsigned long long)merge_lens[i]);
        const char *sp = merge_lens[i] > 1 ? memchr(merges[i] + 1, ' ', merge_lens[i] - 1) : NULL;
        if (!sp || (uint64_t)(sp - merges[i]) + 1 >= merge_lens[i]) {
            int shown = merge_lens[i] < 40 ? (int)merge_lens[i] : 40;
            return pd_err_set(err, PD_EFORMAT,
                              "%s: tokenizer.ggml.merges[%llu] is '%.*s', not \"left right\"",
                              where, (unsigned long long)i, shown, merges[i]);
        }
        total += merge_lens[i] + 1;
    }
    tok->n_merges = (int)n_merges;
    tok->merge_blob = malloc(total ? total : 1);
    tok->merge = malloc((n_merges ? n_merges : 1) * sizeof *tok->merge);
    tok->merge_len = malloc((n_merges ? n_merges : 1) * sizeof *tok->merge_len);
    if (!tok->merge_blob || !tok->merge || !tok->merge_len ||
        pd__strmap_init(&tok->merge_map, n_merges) < 0 ||
        pd__strmap_init(&tok->tok_map, (size_t)tok->n) < 0)
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory for %llu merges", where,
                          (unsigned long long)n_merges);
    char *dst = tok->merge_blob;
    for (uint64_t i = 0; i < n_merges; i++) {
        uint32_t len = (uint32_t)merge_lens[i];
        memcpy(dst, merges[i], len);
        dst[len] = 0;
        tok->merge[i] = dst;
        tok->merge_len[i] = len;
        pd__strmap_put(&tok->merge_map, dst, len, (int32_t)i, 0); /* first rank wins */
        dst += len + 1;
    }
    /* The model's own tokens only: control and user-defined tokens are cut
     * out of the text before (tokenizer.c), and an added token that repeats
     * a model piece (deepseek-llm's "ÿ" at 100005) must not replace it, as
     * it does not in HF. Among repeats, the last id wins (llama.cpp). */
    for (int i = 0; i < tok->n; i++) {
        int t = tok->type[i];
        if (t != PD_TOKEN_CONTROL && t != PD_TOKEN_USER_DEFINED)
            pd__strmap_put(&tok->tok_map, tok->piece[i], tok->len[i], i, 1);
    }

    byte_table bt;
    build_byte_table(&bt);
    if (build_decoded(tok, &bt) < 0)
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory for the decoded pieces", where);
    return PD_OK;
}

void pd__tokenizer_bpe_free(pd_tokenizer *tok)
{
    for (int i = 0; i < tok->n_re; i++) pcre2_code_free(tok->re[i]);
    tok->n_re = 0;
    pd__strmap_free(&tok->tok_map);
    pd__strmap_free(&tok->merge_map);
    free(tok->merge_blob);
    free(tok->merge);
    free(tok->merge_len);
    free(tok->dec_blob);
    free(tok->dec);
    free(tok->dec_len);
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct span {
    size_t off, len;
} span;

/* A symbol of the word being merged: bytes [off, off + n) of the spelled
 * word, linked to its neighbours; n == 0 once merged away. */
typedef struct bsym {
    uint32_t off, n;
    int32_t prev, next;
} bsym;

typedef struct bpair {
    int32_t rank, left, right;
    uint32_t size; /* left.n + right.n when pushed: stale otherwise */
} bpair;

static int pair_before(const bpair *a, const bpair *b)
{
    if (a->rank != b->rank) return a->rank < b->rank;
    return a->left < b->left;
}

static void pair_push(bpair *h, size_t *n, bpair p)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_before(&p, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = p;
}

static bpair pair_pop(bpair *h, size_t *n)
{
    bpair top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && pair_before(&h[c + 1], &h[c])) c++;
        if (!pair_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

/* Per-call scratch, sized for a text of len bytes. */
typedef struct scratch {
    span *a, *b;        /* (len + 1) pieces, ping-pong between regexes */
    char *word;         /* (2 * len + 1) the spelled word */
    bsym *sym;          /* (len + 1) */
    bpair *heap;        /* (3 * len + 3) */
    char *pairbuf;      /* (4 * len + 2) "left right" */
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
} scratch;

static void scratch_free(scratch *s)
{
    free(s->a);
    free(s->b);
    free(s->word);
    free(s->sym);
    free(s->heap);
    free(s->pairbuf);
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mc);
    pcre2_jit_stack_free(s->js);
}

static int scratch_init(scratch *s, size_t len)
{
    memset(s, 0, sizeof *s);
    size_t n = len + 1;
    s->a = malloc(n * sizeof *s->a);
    s->b = malloc(n * sizeof *s->b);
    s->word = malloc(2 * n);
    s->sym = malloc(n * sizeof *s->sym);
    s->heap = malloc(3 * n * sizeof *s->heap);
    s->pairbuf = malloc(4 * n + 2);
    s->md = pcre2_match_data_create(4, NULL);
    s->mc = pcre2_match_context_create(NULL);
    s->js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (!s->a || !s->b || !s->word || !s->sym || !s->heap || !s->pairbuf || !s->md || !s->mc ||
        !s->js) {
        scratch_free(s);
        return PD_ENOMEM;
    }
    pcre2_jit_stack_assign(s->mc, NULL, s->js);
    return PD_OK;
}

static uint32_t utf8_len_lead(unsigned char c)
{
    return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

/* Splits every piece of in[0..n_in) by regex re into matches and gaps,
 * written to out; returns the new count, or a negative status. */
static int split_by(const pcre2_code *re, const char *text, const span *in, size_t n_in,
                    span *out, size_t *n_out, scratch *s)
{
    size_t k = 0;
    for (size_t i = 0; i < n_in; i++) {
        PCRE2_SPTR subj = (PCRE2_SPTR)(text + in[i].off);
        size_t slen = in[i].len, start = 0, emitted = 0;
        while (start < slen) {
            int rc = pcre2_match(re, subj, slen, start, 0, s->md, s->mc);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) return PD_EINVAL; /* resource limits: never silently wrong */
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
            size_t m0 = ov[0], m1 = ov[1];
            if (m1 == m0) { /* empty match: step one character, keep it in the gap */
                start = m0 + utf8_len_lead(subj[m0]);
                continue;
            }
            if (m0 > emitted) out[k++] = (span){in[i].off + emitted, m0 - emitted};
            out[k++] = (span){in[i].off + m0, m1 - m0};
            emitted = start = m1;
        }
        if (emitted < slen) out[k++] = (span){in[i].off + emitted, slen - emitted};
    }
    *n_out = k;
    return PD_OK;
}

static void emit(int32_t id, int32_t *out, int cap, int *count)
{
    if (*count < cap) out[*count] = id;
    (*count)++;
}

static void add_pair(const pd_tokenizer *tok, scratch *s, size_t *hn, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    const bsym *L = &s->sym[l], *R = &s->sym[r];
    char *p = s->pairbuf;
    memcpy(p, s->word + L->off, L->n);
    p[L->n] = ' ';
    memcpy(p + L->n + 1, s->word + R->off, R->n);
    int32_t rank = pd__strmap_get(&tok->merge_map, p, L->n + 1 + R->n);
    if (rank < 0) return;
    pair_push(s->heap, hn, (bpair){.rank = rank, .left = l, .right = r, .size = L->n + R->n});
}

/* Merges one pre-tokenized word text[0..len) and appends its ids. */
static void encode_word(const pd_tokenizer *tok, const byte_table *bt, const char *text,
                        size_t len, scratch *s, int32_t *out, int cap, int *count)
{
    uint32_t wl = 0;
    int32_t ns = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)text[i];
        s->sym[ns] = (bsym){.off = wl, .n = bt->enc_len[b], .prev = ns - 1, .next = ns + 1};
        memcpy(s->word + wl, bt->enc[b], bt->enc_len[b]);
        wl += bt->enc_len[b];
        ns++;
    }
    if (ns == 0) return;
    s->sym[ns - 1].next = -1;
    if (tok->ignore_merges) {
        int32_t id = pd__strmap_get(&tok->tok_map, s->word, wl);
        if (id >= 0) {
            emit(id, out, cap, count);
            return;
        }
    }
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++) add_pair(tok, s, &hn, i, i + 1);
    while (hn > 0) {
        bpair p = pair_pop(s->heap, &hn);
        bsym *L = &s->sym[p.left], *R = &s->sym[p.right];
        if (L->n == 0 || R->n == 0 || L->n + R->n != p.size || L->next != p.right) continue;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) s->sym[R->next].prev = p.left;
        add_pair(tok, s, &hn, L->prev, p.left);
        add_pair(tok, s, &hn, p.left, L->next);
    }
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const bsym *S = &s->sym[i];
        int32_t id = pd__strmap_get(&tok->tok_map, s->word + S->off, S->n);
        if (id >= 0) {
            emit(id, out, cap, count);
            continue;
        }
        /* not a token (an incomplete vocabulary): its one-byte characters */
        for (uint32_t k = 0; k < S->n; k++) {
            int32_t b = pd__strmap_get(&tok->tok_map, s->word + S->off + k, 1);
            if (b >= 0) emit(b, out, cap, count);
        }
    }
}

int pd__tokenizer_bpe_encode(const pd_tokenizer *tok, const char *text, size_t len,
                             int32_t *out, int cap, int *count)
{
    PD_ASSERT(tok->kind == PD_TOKENIZER_BPE);
    if (len == 0) return PD_OK;
    scratch s;
    if (scratch_init(&s, len) < 0) return PD_ENOMEM;
    byte_table bt;
    build_byte_table(&bt);
    size_t n = 1;
    s.a[0] = (span){0, len};
    for (int r = 0; r < tok->n_re; r++) {
        size_t m;
        int rc = split_by(tok->re[r], text, s.a, n, s.b, &m, &s);
        if (rc < 0) {
            scratch_free(&s);
            return rc;
        }
        span *t = s.a;
        s.a = s.b;
        s.b = t;
        n = m;
    }
    for (size_t i = 0; i < n; i++) encode_word(tok, &bt, text + s.a[i].off, s.a[i].len, &s, out, cap, count);
    scratch_free(&s);
    return PD_OK;
}
