/* test_tokenizer.c — unit tests of the BPE tokenizer (src/tokenizer.c).
 *
 * Covers: the llama2.c reference encoding with models/stories260K/tok512.bin,
 * agreement with a straightforward run.c-style O(n^2) encoder written here
 * (on fixed and pseudo-random texts), decode(encode(s)) == s for many kinds
 * of text, a GGUF-style ("▁") tokenizer built from the same pieces, greedy
 * merge order on a synthetic vocabulary, byte fallback, the cap contract,
 * and malformed tokenizer files (every truncation, bad lengths, missing
 * file). Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefixd/tokenizer.h"

#define TOK512 "models/stories260K/tok512.bin"

/* ---- helpers ------------------------------------------------------------ */

static pd_tokenizer *load512(void)
{
    pd_tokenizer *tok = NULL;
    pd_err err;
    pd_err_clear(&err);
    int rc = pd_tokenizer_load_llama2c(TOK512, 512, &tok, &err);
    if (rc != PD_OK) fail_msg("loading %s: %s", TOK512, err.msg);
    assert_non_null(tok);
    return tok;
}

/* Encodes into a new array (free it); *n gets the count. */
static int32_t *encode_new(const pd_tokenizer *tok, const char *s, size_t len, int bos,
                           int eos, int *n)
{
    int count = pd_tokenizer_encode(tok, s, len, bos, eos, NULL, 0);
    assert_true(count >= 0);
    int32_t *ids = malloc(((size_t)count + 1) * sizeof *ids);
    assert_non_null(ids);
    int again = pd_tokenizer_encode(tok, s, len, bos, eos, ids, count);
    assert_int_equal(again, count);
    *n = count;
    return ids;
}

/* Decodes ids[from..n) with prev starting at ids[from - 1] (or BOS when from
 * is 0) into a new buffer (free it); *out_len gets its length. */
static char *decode_new(const pd_tokenizer *tok, const int32_t *ids, int n, int from,
                        size_t *out_len)
{
    size_t cap = 16, used = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    int prev = from > 0 ? ids[from - 1] : pd_tokenizer_bos(tok);
    for (int i = from; i < n; i++) {
        size_t len = 0;
        const char *p = pd_tokenizer_decode(tok, prev, ids[i], &len);
        assert_non_null(p);
        if (used + len > cap) {
            while (used + len > cap) cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        memcpy(buf + used, p, len);
        used += len;
        prev = ids[i];
    }
    *out_len = used;
    return buf;
}

/* A straightforward transcription of llama2.c run.c's encode (linear piece
 * search, full rescan after every merge, BOS inside the merge loop, byte
 * fallback to id byte + 3), written against the public accessors only. */
static int ref_lookup(const pd_tokenizer *tok, const char *s, size_t len)
{
    for (int i = 0; i < pd_tokenizer_vocab_size(tok); i++) {
        const char *p = pd_tokenizer_piece(tok, i);
        if (len > 0 && p[0] != s[0]) continue;
        if (strlen(p) == len && memcmp(p, s, len) == 0) return i;
    }
    return -1;
}

static int ref_encode(const pd_tokenizer *tok, const char *text, size_t len, int bos,
                      int32_t *out)
{
    int n = 0;
    if (bos) out[n++] = 1;
    if (len > 0) out[n++] = ref_lookup(tok, " ", 1);
    char unit[8];
    size_t ulen = 0;
    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)text[i] & 0xC0) != 0x80) ulen = 0;
        unit[ulen++] = text[i];
        if (i + 1 < len && ((unsigned char)text[i + 1] & 0xC0) == 0x80 && ulen < 4) continue;
        int id = ref_lookup(tok, unit, ulen);
        if (id != -1) {
            out[n++] = id;
        } else {
            for (size_t k = 0; k < ulen; k++) out[n++] = (unsigned char)unit[k] + 3;
        }
        ulen = 0;
    }
    char buf[256];
    for (;;) {
        float best_score = -1e10f;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i < n - 1; i++) {
            int m = snprintf(buf, sizeof buf, "%s%s", pd_tokenizer_piece(tok, out[i]),
                             pd_tokenizer_piece(tok, out[i + 1]));
            assert_true(m >= 0 && (size_t)m < sizeof buf);
            int id = ref_lookup(tok, buf, (size_t)m);
            if (id != -1 && pd_tokenizer_score(tok, id) > best_score) {
                best_score = pd_tokenizer_score(tok, id);
                best_id = id;
                best_idx = i;
            }
        }
        if (best_idx == -1) break;
        out[best_idx] = best_id;
        for (int i = best_idx + 1; i < n - 1; i++) out[i] = out[i + 1];
        n--;
    }
    return n;
}

static void assert_same_as_ref(const pd_tokenizer *tok, const char *s, size_t len)
{
    int32_t *want = malloc((len + 2) * sizeof *want);
    assert_non_null(want);
    int nwant = ref_encode(tok, s, len, 1, want);
    int n = 0;
    int32_t *got = encode_new(tok, s, len, 1, 0, &n);
    if (n != nwant) fail_msg("count %d, run.c-style reference %d (text len %zu)", n, nwant, len);
    for (int i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("token %d: %d, reference %d (text len %zu)", i, got[i], want[i], len);
    free(got);
    free(want);
}

static void assert_roundtrip(const pd_tokenizer *tok, const char *s, size_t len)
{
    int n = 0;
    int32_t *ids = encode_new(tok, s, len, 1, 0, &n);
    assert_true(n >= 1);
    assert_int_equal(ids[0], pd_tokenizer_bos(tok));
    size_t out_len = 0;
    char *out = decode_new(tok, ids, n, 1, &out_len);
    if (out_len != len || (len && memcmp(out, s, len) != 0))
        fail_msg("round trip of %zu bytes gave %zu bytes", len, out_len);
    free(out);
    free(ids);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_u32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

/* ---- tok512: loading and the reference encoding ------------------------- */

static void test_load_tok512(void **state)
{
    (void)state;
    pd_tokenizer *tok = load512();
    assert_int_equal(pd_tokenizer_vocab_size(tok), 512);
    assert_int_equal(pd_tokenizer_bos(tok), 1);
    assert_int_equal(pd_tokenizer_eos(tok), 2);
    assert_string_equal(pd_tokenizer_piece(tok, 0), "<unk>");
    assert_int_equal(pd_tokenizer_type(tok, 0), PD_TOKEN_UNKNOWN);
    assert_int_equal(pd_tokenizer_type(tok, 1), PD_TOKEN_CONTROL);
    assert_int_equal(pd_tokenizer_type(tok, 2), PD_TOKEN_CONTROL);
    for (int i = 3; i < 259; i++) assert_int_equal(pd_tokenizer_type(tok, i), PD_TOKEN_BYTE);
    assert_string_equal(pd_tokenizer_piece(tok, 3 + 0x41), "<0x41>");
    assert_int_equal(pd_tokenizer_type(tok, 403), PD_TOKEN_NORMAL);
    assert_string_equal(pd_tokenizer_piece(tok, 403), " Once");
    assert_float_equal(pd_tokenizer_score(tok, 261), -2.0f, 0.0f);
    assert_null(pd_tokenizer_piece(tok, 512));
    assert_null(pd_tokenizer_piece(tok, -1));
    assert_int_equal(pd_tokenizer_type(tok, 512), 0);
    pd_tokenizer_free(tok);
    pd_tokenizer_free(NULL);
}

static void test_once_upon_a_time(void **state)
{
    (void)state;
    pd_tokenizer *tok = load512();
    const char *s = "Once upon a time";
    int32_t ids[16];
    int n = pd_tokenizer_encode(tok, s, strlen(s), 1, 0, ids, 16);
    assert_int_equal(n, 5);
    const int32_t want[5] = {1, 403, 407, 261, 378};
    for (int i = 0; i < 5; i++) assert_int_equal(ids[i], want[i]);

    /* Same text, with EOS, without BOS. */
    n = pd_tokenizer_encode(tok, s, strlen(s), 0, 1, ids, 16);
    assert_int_equal(n, 5);
    const int32_t want2[5] = {403, 407, 261, 378, 2};
    for (int i = 0; i < 5; i++) assert_int_equal(ids[i], want2[i]);
    pd_tokenizer_free(tok);
}

static void test_matches_runc_reference(void **state)
{
    (void)state;
    pd_tokenizer *tok = load512();
    static const char *const texts[] = {
        "Once upon a time",
        "Once upon a time, there was a little girl named Lily. She loved to play outside.",
        "The cat sat on the mat. \"Hello!\" said Tom, and they laughed and laughed.",
        "café, naïve, Zürich",
        "🙂 ok",
        "日本語のテキスト",
        "  leading spaces\tand\ttabs\n\nnewlines  ",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "the the the the the the the the the",
        "\x80\x80\x80\x80\x80\xC3(\xE2\x96\xF0\x9F\x99",
        "",
        " ",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        assert_same_as_ref(tok, texts[i], strlen(texts[i]));

    /* Pseudo-random texts: words from a small alphabet, then raw bytes. */
    static const char alphabet[] = "abcdehilnorstuwy  ,.TOS\n";
    char buf[160];
    for (int t = 0; t < 60; t++) {
        size_t len = rng_u32() % sizeof buf;
        for (size_t k = 0; k < len; k++)
            buf[k] = t < 40 ? alphabet[rng_u32() % (sizeof alphabet - 1)] : (char)rng_u32();
        assert_same_as_ref(tok, buf, len);
    }
    pd_tokenizer_free(tok);
}

/* ---- round trips -------------------------------------------------------- */

static void test_roundtrip(void **state)
{
    (void)state;
    pd_tokenizer *tok = load512();
    static const char *const texts[] = {
        "Once upon a time",
        "Once upon a time, there was a little girl named Lily.",
        "The quick brown fox jumps over the lazy dog 0123456789!?",
        "café, naïve, Zürich",
        "🙂 ok",
        "中文字符和日本語",
        " \t leading and trailing whitespace\r\n\n\t ",
        "   ",
        " x",
        "<0x41> <s> </s> <unk>",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        assert_roundtrip(tok, texts[i], strlen(texts[i]));

    assert_roundtrip(tok, "", 0);
    static const char with_nul[] = "a\0b\0\0 c\0";
    assert_roundtrip(tok, with_nul, sizeof with_nul); /* includes the final NUL */
    assert_roundtrip(tok, "\0", 1);

    /* Arbitrary binary, invalid UTF-8 included. */
    char buf[300];
    for (int t = 0; t < 50; t++) {
        size_t len = rng_u32() % sizeof buf;
        for (size_t k = 0; k < len; k++) buf[k] = (char)rng_u32();
        assert_roundtrip(tok, buf, len);
    }
    pd_tokenizer_free(tok);
}

static void test_decode_rules(void **state)
{
    (void)state;
    pd_tokenizer *tok = load512();
    size_t len = 99;
    assert_null(pd_tokenizer_decode(tok, 1, 512, &len));
    assert_int_equal(len, 0);
    len = 99;
    assert_null(pd_tokenizer_decode(tok, 1, -1, &len));
    assert_int_equal(len, 0);

    /* Control tokens produce nothing. */
    len = 99;
    assert_non_null(pd_tokenizer_decode(tok, 5, 1, &len));
    assert_int_equal(len, 0);
    assert_non_null(pd_tokenizer_decode(tok, 5, 2, &len));
    assert_int_equal(len, 0);

    /* Byte tokens produce their byte. */
    const char *p = pd_tokenizer_decode(tok, 1, 3 + 0x0A, &len);
    assert_int_equal(len, 1);
    assert_int_equal(p[0], '\n');
    p = pd_tokenizer_decode(tok, 1, 3 + 0x00, &len);
    assert_int_equal(len, 1);
    assert_int_equal(p[0], 0);
    p = pd_tokenizer_decode(tok, 1, 3 + 0xFF, &len);
    assert_int_equal(len, 1);
    assert_int_equal((unsigned char)p[0], 0xFF);

    /* The leading space is dropped after BOS only. */
    p = pd_tokenizer_decode(tok, 1, 403, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(p, "Once", 4);
    p = pd_tokenizer_decode(tok, 378, 403, &len);
    assert_int_equal(len, 5);
    assert_memory_equal(p, " Once", 5);
    pd_tokenizer_free(tok);
}

static void test_cap_contract(void **state)
{
    (void)state;
    pd_tokenizer *tok = load512();
    const char *s = "Once upon a time";
    int32_t ids[8] = {-7, -7, -7, -7, -7, -7, -7, -7};
    assert_int_equal(pd_tokenizer_encode(tok, s, strlen(s), 1, 1, NULL, 0), 6);
    assert_int_equal(pd_tokenizer_encode(tok, s, strlen(s), 1, 1, ids, 3), 6);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 403);
    assert_int_equal(ids[2], 407);
    assert_int_equal(ids[3], -7); /* nothing written past cap */

    /* Empty text: BOS/EOS only, no dummy prefix. */
    assert_int_equal(pd_tokenizer_encode(tok, "", 0, 0, 0, ids, 8), 0);
    assert_int_equal(pd_tokenizer_encode(tok, NULL, 0, 1, 1, ids, 8), 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);

    /* Bad arguments. */
    assert_true(pd_tokenizer_encode(tok, NULL, 3, 1, 0, ids, 8) < 0);
    assert_true(pd_tokenizer_encode(tok, s, strlen(s), 1, 0, ids, -1) < 0);
    assert_true(pd_tokenizer_encode(tok, s, strlen(s), 1, 0, NULL, 4) < 0);
    pd_tokenizer_free(tok);
}

static void test_long_text(void **state)
{
    (void)state;
    pd_tokenizer *tok = load512();
    static const char *const words[] = {"Once", "upon", "a", "time", "there", "was",
                                        "little", "girl", "named", "Lily.", "She",
                                        "loved", "play", "café", "🙂", "\n"};
    size_t cap = 100 * 1024, len = 0;
    char *text = malloc(cap + 32);
    assert_non_null(text);
    while (len < cap) {
        const char *w = words[rng_u32() % (sizeof words / sizeof words[0])];
        size_t wl = strlen(w);
        memcpy(text + len, w, wl);
        len += wl;
        text[len++] = ' ';
    }
    assert_roundtrip(tok, text, len);
    /* A slice small enough for the O(n^2) reference. */
    assert_same_as_ref(tok, text, 400);
    free(text);
    pd_tokenizer_free(tok);
}

/* ---- GGUF-style construction -------------------------------------------- */

/* Copies s with every ' ' written as U+2581 into a new buffer. */
static char *to_sentencepiece(const char *s, uint32_t *len)
{
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1);
    assert_non_null(out);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(out + o, "\xE2\x96\x81", 3);
            o += 3;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = 0;
    *len = (uint32_t)o;
    return out;
}

static void test_create_matches_llama2c(void **state)
{
    (void)state;
    pd_tokenizer *ref = load512();
    int n = pd_tokenizer_vocab_size(ref);
    char **pieces = calloc((size_t)n, sizeof *pieces);
    uint32_t *lens = calloc((size_t)n, sizeof *lens);
    float *scores = calloc((size_t)n, sizeof *scores);
    int32_t *types = calloc((size_t)n, sizeof *types);
    assert_true(pieces && lens && scores && types);
    for (int i = 0; i < n; i++) {
        pieces[i] = to_sentencepiece(pd_tokenizer_piece(ref, i), &lens[i]);
        scores[i] = pd_tokenizer_score(ref, i);
        types[i] = pd_tokenizer_type(ref, i);
    }
    /* GGUF's own spelling of the control pieces. */
    free(pieces[1]);
    pieces[1] = strdup("<s>");
    lens[1] = 3;
    free(pieces[2]);
    pieces[2] = strdup("</s>");
    lens[2] = 4;

    for (int with_types = 0; with_types < 2; with_types++) {
        pd_tokenizer *tok = NULL;
        pd_err err;
        int rc = pd_tokenizer_create(n, (const char *const *)pieces, lens, scores,
                                     with_types ? types : NULL, 1, 2, &tok, &err);
        if (rc != PD_OK) fail_msg("create: %s", err.msg);
        assert_string_equal(pd_tokenizer_piece(tok, 403), " Once");
        assert_int_equal(pd_tokenizer_type(tok, 1), PD_TOKEN_CONTROL);
        assert_int_equal(pd_tokenizer_type(tok, 2), PD_TOKEN_CONTROL);
        assert_int_equal(pd_tokenizer_type(tok, 0), PD_TOKEN_UNKNOWN);
        assert_int_equal(pd_tokenizer_type(tok, 100), PD_TOKEN_BYTE);
        static const char *const texts[] = {
            "Once upon a time", "café, naïve, Zürich", "🙂 ok", "日本語",
            " \t mixed  whitespace\n", "",
        };
        for (size_t t = 0; t < sizeof texts / sizeof texts[0]; t++) {
            size_t len = strlen(texts[t]);
            int na = 0, nb = 0;
            int32_t *a = encode_new(ref, texts[t], len, 1, 1, &na);
            int32_t *b = encode_new(tok, texts[t], len, 1, 1, &nb);
            assert_int_equal(na, nb);
            assert_memory_equal(a, b, (size_t)na * sizeof *a);
            free(a);
            free(b);
        }
        pd_tokenizer_free(tok);
    }
    for (int i = 0; i < n; i++) free(pieces[i]);
    free(pieces);
    free(lens);
    free(scores);
    free(types);
    pd_tokenizer_free(ref);
}

/* Builds a tokenizer from NUL-terminated pieces and scores. */
static pd_tokenizer *make_vocab(int n, const char *const *pieces, const float *scores)
{
    uint32_t lens[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++) lens[i] = (uint32_t)strlen(pieces[i]);
    pd_tokenizer *tok = NULL;
    pd_err err;
    int rc = pd_tokenizer_create(n, pieces, lens, scores, NULL, 1, 2, &tok, &err);
    if (rc != PD_OK) fail_msg("create: %s", err.msg);
    return tok;
}

static void expect_ids(const pd_tokenizer *tok, const char *s, const int32_t *want, int nwant)
{
    int32_t ids[64];
    int n = pd_tokenizer_encode(tok, s, strlen(s), 0, 0, ids, 64);
    if (n != nwant) fail_msg("\"%s\": %d tokens, want %d", s, n, nwant);
    for (int i = 0; i < n; i++)
        if (ids[i] != want[i]) fail_msg("\"%s\": token %d is %d, want %d", s, i, ids[i], want[i]);
}

static void test_greedy_merge_order(void **state)
{
    (void)state;
    static const char *const pieces[] = {"<unk>", "<s>", "</s>", " ", "a", "b",
                                         "c", "ab", "bc", " a", " ab", "abc"};
    enum { SP = 3, A = 4, B = 5, C = 6, AB = 7, BC = 8, SA = 9, SAB = 10, ABC = 11 };

    /* " abc" -> " " a b c; pairs " a" (-9), "ab" (-5), "bc" (-1). Highest
     * first: "bc", then " a": [" a", "bc"]. Merging the lower-scoring "ab"
     * first (or left to right) would give [" ab", "c"] instead. */
    float greedy[] = {0, 0, 0, 0, 0, 0, 0, -5.0f, -1.0f, -9.0f, -3.0f, -1e10f};
    pd_tokenizer *tok = make_vocab(12, pieces, greedy);
    const int32_t want[] = {SA, BC};
    expect_ids(tok, "abc", want, 2);
    pd_tokenizer_free(tok);

    /* Equal scores: the leftmost pair wins (run.c's strict >): "ab", then
     * " ab". Taking "bc" would give [" a", "bc"]. */
    float tie[] = {0, 0, 0, 0, 0, 0, 0, -1.0f, -1.0f, -9.0f, -20.0f, -1e10f};
    tok = make_vocab(12, pieces, tie);
    const int32_t want_tie[] = {SAB, C};
    expect_ids(tok, "abc", want_tie, 2);
    pd_tokenizer_free(tok);

    /* A merge enables a better one: "bc" (-1), then "a" + "bc" = "abc"
     * (-0.5) beats " a" (-90). */
    float chain[] = {0, 0, 0, 0, 0, 0, 0, -5.0f, -1.0f, -90.0f, -30.0f, -0.5f};
    tok = make_vocab(12, pieces, chain);
    const int32_t want_chain[] = {SP, ABC};
    expect_ids(tok, "abc", want_chain, 2);
    pd_tokenizer_free(tok);

    /* Scores at or below run.c's floor (-1e10) never merge. */
    float floor_[] = {0, 0, 0, 0, 0, 0, 0, -1e10f, -2e10f, -1e11f, -1e12f, -1e10f};
    tok = make_vocab(12, pieces, floor_);
    const int32_t want_floor[] = {SP, A, B, C};
    expect_ids(tok, "abc", want_floor, 4);
    pd_tokenizer_free(tok);
}

static void test_byte_fallback(void **state)
{
    (void)state;
    /* Byte tokens at unusual ids, and only some of them. */
    static const char *const pieces[] = {"<s>", "</s>", "x", " ", "<0x41>", "<unk>",
                                         "<0xC3>", "<0xa9>", "<0x00>"};
    pd_tokenizer *tok = NULL;
    uint32_t lens[9];
    for (int i = 0; i < 9; i++) lens[i] = (uint32_t)strlen(pieces[i]);
    pd_err err;
    assert_int_equal(pd_tokenizer_create(9, pieces, lens, NULL, NULL, 0, 1, &tok, &err),
                     PD_OK);
    assert_int_equal(pd_tokenizer_type(tok, 4), PD_TOKEN_BYTE);
    assert_int_equal(pd_tokenizer_type(tok, 7), PD_TOKEN_BYTE);
    assert_int_equal(pd_tokenizer_type(tok, 5), PD_TOKEN_UNKNOWN);
    assert_int_equal(pd_tokenizer_type(tok, 0), PD_TOKEN_CONTROL);

    /* "A" -> <0x41>; "é" (C3 A9) -> two byte tokens; "B" has no byte token
     * -> <unk>; NUL -> <0x00>. */
    static const char text[] = "A\xC3\xA9xB";
    int32_t ids[16];
    int n = pd_tokenizer_encode(tok, text, sizeof text, 1, 0, ids, 16); /* with the NUL */
    const int32_t want[] = {0, 3, 4, 6, 7, 2, 5, 8};
    assert_int_equal(n, 8);
    assert_memory_equal(ids, want, sizeof want);

    size_t len;
    const char *p = pd_tokenizer_decode(tok, 0, 7, &len);
    assert_int_equal(len, 1);
    assert_int_equal((unsigned char)p[0], 0xA9);
    pd_tokenizer_free(tok);
}

static void test_code_point_units(void **state)
{
    (void)state;
    /* Units are grouped as run.c groups them: a byte plus the continuation
     * bytes after it, at most 4 bytes in all; a run of stray continuation
     * bytes is grouped the same way. */
    static const char *const pieces[] = {"<unk>", "<s>", "</s>", " ", "\xF0\x9F\x99\x82",
                                         "\xC3\xA9", "\xE6\x97\xA5", "\x80\x80\x80\x80",
                                         "<0x80>"};
    pd_tokenizer *tok = make_vocab(9, pieces, NULL);
    const int32_t want[] = {3, 4, 5, 6};
    expect_ids(tok, "\xF0\x9F\x99\x82\xC3\xA9\xE6\x97\xA5", want, 4);
    /* A fifth continuation byte starts a new unit. */
    const int32_t want_long[] = {3, 4, 8};
    expect_ids(tok, "\xF0\x9F\x99\x82\x80", want_long, 3);
    const int32_t want_stray[] = {3, 7, 8};
    expect_ids(tok, "\x80\x80\x80\x80\x80", want_stray, 3);
    /* A lead byte cut short by ASCII is its own unit; here neither it nor
     * its byte token exists, so it becomes <unk>. */
    const int32_t want_cut[] = {3, 0, 3};
    expect_ids(tok, "\xC3 ", want_cut, 3);
    pd_tokenizer_free(tok);
}

static void test_create_rejects(void **state)
{
    (void)state;
    static const char *const pieces[] = {"<unk>", "<s>", "</s>", "a"};
    uint32_t lens[] = {5, 3, 4, 1};
    pd_tokenizer *tok = (pd_tokenizer *)&tok; /* must be reset to NULL */
    pd_err err;
    assert_int_equal(pd_tokenizer_create(0, pieces, lens, NULL, NULL, 1, 2, &tok, &err),
                     PD_EINVAL);
    assert_null(tok);
    assert_true(pd_tokenizer_create(4, pieces, lens, NULL, NULL, 4, 2, &tok, &err) < 0);
    assert_true(pd_tokenizer_create(4, pieces, lens, NULL, NULL, 1, -1, &tok, &err) < 0);
    assert_true(pd_tokenizer_create(4, NULL, lens, NULL, NULL, 1, 2, &tok, NULL) < 0);
    uint32_t huge[] = {5, 3, 4, 0x80000000u};
    assert_int_equal(pd_tokenizer_create(4, pieces, huge, NULL, NULL, 1, 2, &tok, &err),
                     PD_EFORMAT);
    const char *const holes[] = {"<unk>", NULL, "</s>", "a"};
    assert_true(pd_tokenizer_create(4, holes, lens, NULL, NULL, 1, 2, &tok, &err) < 0);
    assert_null(tok);
}

/* ---- malformed files ---------------------------------------------------- */

static char tmpdir[64];

static int setup_tmpdir(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/pd_test_tokenizer_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmpdir(void **state)
{
    (void)state;
    return rmdir(tmpdir);
}

static void put_i32(unsigned char *p, int32_t v)
{
    uint32_t u = (uint32_t)v;
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(u >> (8 * i));
}

/* A valid 5-token file image: <unk>, <s>, </s>, " ", "a". Returns its size. */
static size_t small_file(unsigned char *buf)
{
    static const char *const pieces[] = {"<unk>", "\n<s>\n", "\n</s>\n", " ", "a"};
    size_t o = 0;
    put_i32(buf, 6);
    o += 4;
    for (int i = 0; i < 5; i++) {
        float score = -(float)i;
        memcpy(buf + o, &score, 4);
        int32_t len = (int32_t)strlen(pieces[i]);
        put_i32(buf + o + 4, len);
        memcpy(buf + o + 8, pieces[i], (size_t)len);
        o += 8 + (size_t)len;
    }
    return o;
}

static void write_bytes(const char *path, const unsigned char *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void expect_load_fails(const char *path, int vocab, int want_code)
{
    pd_tokenizer *tok = (pd_tokenizer *)&tok;
    pd_err err;
    pd_err_clear(&err);
    int rc = pd_tokenizer_load_llama2c(path, vocab, &tok, &err);
    if (rc >= 0) fail_msg("%s: loaded, expected failure", path);
    if (want_code && rc != want_code)
        fail_msg("%s: status %d (%s), want %d; msg: %s", path, rc, pd_strerror(rc), want_code,
                 err.msg);
    assert_int_equal(err.code, rc);
    assert_null(tok);
    if (!strstr(err.msg, path)) fail_msg("error message lacks the path: %s", err.msg);
}

static void test_bad_files(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/tok.bin", tmpdir);
    unsigned char buf[128];
    size_t size = small_file(buf);

    /* The intact file loads. */
    write_bytes(path, buf, size);
    pd_tokenizer *tok = NULL;
    pd_err err;
    assert_int_equal(pd_tokenizer_load_llama2c(path, 5, &tok, &err), PD_OK);
    assert_string_equal(pd_tokenizer_piece(tok, 4), "a");
    int32_t ids[4];
    assert_int_equal(pd_tokenizer_encode(tok, "a", 1, 1, 0, ids, 4), 3);
    pd_tokenizer_free(tok);

    /* Every truncation fails cleanly. */
    for (size_t cut = 0; cut < size; cut++) {
        write_bytes(path, buf, cut);
        expect_load_fails(path, 5, PD_ETRUNC);
    }

    /* More tokens asked for than the file holds. */
    write_bytes(path, buf, size);
    expect_load_fails(path, 6, PD_ETRUNC);
    expect_load_fails(path, 0, PD_EINVAL);
    expect_load_fails(path, -5, PD_EINVAL);

    /* Negative, past-the-end and absurd lengths of token 3, whose length
     * field is at offset 4 + (8+5) + (8+5) + (8+6) + 4 = 48. */
    const size_t len3 = 48;
    unsigned char bad[128];
    memcpy(bad, buf, size);
    put_i32(bad + len3, -1);
    write_bytes(path, bad, size);
    expect_load_fails(path, 5, PD_EFORMAT);
    put_i32(bad + len3, 1000);
    write_bytes(path, bad, size);
    expect_load_fails(path, 5, PD_ETRUNC);
    put_i32(bad + len3, INT32_MAX);
    write_bytes(path, bad, size);
    expect_load_fails(path, 5, PD_EFORMAT);
    put_i32(bad + len3, INT32_MIN);
    write_bytes(path, bad, size);
    expect_load_fails(path, 5, PD_EFORMAT);

    /* The offset is named. */
    put_i32(bad + len3, -1);
    write_bytes(path, bad, size);
    pd_err_clear(&err);
    tok = NULL;
    assert_true(pd_tokenizer_load_llama2c(path, 5, &tok, &err) < 0);
    if (!strstr(err.msg, "offset 48")) fail_msg("offset not named: %s", err.msg);

    /* Bad max_token_length. */
    memcpy(bad, buf, size);
    put_i32(bad, -3);
    write_bytes(path, bad, size);
    expect_load_fails(path, 5, PD_EFORMAT);
    assert_int_equal(unlink(path), 0);

    /* A missing file. */
    snprintf(path, sizeof path, "%s/does-not-exist.bin", tmpdir);
    expect_load_fails(path, 5, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_tok512),
        cmocka_unit_test(test_once_upon_a_time),
        cmocka_unit_test(test_matches_runc_reference),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_decode_rules),
        cmocka_unit_test(test_cap_contract),
        cmocka_unit_test(test_long_text),
        cmocka_unit_test(test_create_matches_llama2c),
        cmocka_unit_test(test_greedy_merge_order),
        cmocka_unit_test(test_byte_fallback),
        cmocka_unit_test(test_code_point_units),
        cmocka_unit_test(test_create_rejects),
        cmocka_unit_test_setup_teardown(test_bad_files, setup_tmpdir, teardown_tmpdir),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, NULL, NULL);
}
