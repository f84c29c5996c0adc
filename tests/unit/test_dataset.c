/* test_dataset.c — JSONL training data on the shipped tokenizer: good lines,
 * loss masks (the target tokens decode to exactly the completion), every
 * kind of bad line with its line number, skipping, the validation split,
 * the generator, and chat lines: token-level assistant masks checked against
 * spans found by hand in the rendered text, and bad conversations. Run from the repository root. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "prefixd/chat.h"
#include "prefixd/dataset.h"
#include "prefixd/gguf.h"
#include "prefixd/model.h"
#include "prefixd/trainer.h"

#define MODEL "models/stories260K/stories260K.bin"
#define TOKENIZER "models/stories260K/tok512.bin"
#define BAD "tests/data/train/bad.jsonl"

static pd_model *model;

static int setup(void **state)
{
    (void)state;
    pd_model_params mp = pd_model_default_params();
    mp.path = MODEL;
    mp.tokenizer_path = TOKENIZER;
    pd_err err;
    if (pd_model_load(&mp, &model, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pd_model_free(model);
    return 0;
}

static pd_dataset_params params(int max_tokens, int skip)
{
    pd_dataset_params p = pd_dataset_default_params();
    p.max_tokens = max_tokens;
    p.skip_bad_lines = skip;
    return p;
}

static int parse(const char *text, const pd_dataset_params *p, pd_dataset **d, pd_err *err)
{
    return pd_dataset_parse(text, strlen(text), "data.jsonl", model->tok, p, d, err);
}

/* The bytes the targets of ex decode to, into buf (NUL-terminated). */
static void decode_targets(const pd_example *ex, char *buf, size_t cap)
{
    size_t at = 0;
    for (int j = 1; j < ex->n; j++) {
        if (!ex->loss_mask[j]) continue;
        size_t len;
        const char *s = pd_tokenizer_decode(model->tok, ex->tokens[j - 1], ex->tokens[j], &len);
        assert_true(at + len < cap);
        memcpy(buf + at, s, len);
        at += len;
    }
    buf[at] = 0;
}

/* ---- good data ---- */

static void test_good_lines(void **state)
{
    (void)state;
    const char *text =
        "\xEF\xBB\xBF{\"prompt\": \"Once upon a time\", \"completion\": \" there was a cat.\"}\n"
        "\n"
        "   \r\n"
        "{\"text\": \"Tom had a red ball.\", \"source\": \"extra fields are fine\"}\r\n"
        "{\"completion\": \" and a dog.\", \"prompt\": \"Lily had a cat\", \"n\": [1, 2]}";
    pd_dataset_params p = params(512, 0);
    pd_dataset *d;
    pd_err err;
    assert_int_equal(parse(text, &p, &d, &err), PD_OK);
    assert_int_equal(d->n, 3);
    assert_int_equal(d->line[0], 1);
    assert_int_equal(d->line[1], 4);
    assert_int_equal(d->line[2], 5);
    assert_int_equal(d->n_skipped, 0);
    size_t total = 0, targets = 0;
    for (int i = 0; i < d->n; i++) {
        assert_int_equal(d->ex[i].tokens[0], pd_tokenizer_bos(model->tok));
        assert_int_equal(d->ex[i].loss_mask[0], 0);
        total += (size_t)d->ex[i].n;
        for (int j = 0; j < d->ex[i].n; j++) targets += d->ex[i].loss_mask[j];
        if (d->ex[i].n > d->max_len) fail();
    }
    assert_int_equal(total, d->n_tokens);
    assert_int_equal(targets, d->n_targets);

    char buf[256];
    decode_targets(&d->ex[0], buf, sizeof buf);
    assert_string_equal(buf, " there was a cat.");
    decode_targets(&d->ex[1], buf, sizeof buf);
    assert_string_equal(buf, "Tom had a red ball."); /* text: every token after BOS */
    decode_targets(&d->ex[2], buf, sizeof buf);
    assert_string_equal(buf, " and a dog.");
    pd_dataset_free(d);
}

/* The tokenization is the serving one: BOS + encode(prompt + completion). */
static void test_one_encoding(void **state)
{
    (void)state;
    const char *prompt = "One day, Lily went to the park.";
    const char *completion = " She saw a big dog. \"Hello!\" said Lily.\nThe end.";
    int32_t *t;
    uint8_t *mk;
    int n;
    pd_err err;
    assert_int_equal(pd_dataset_encode(model->tok, prompt, strlen(prompt), completion,
                                       strlen(completion), 1, &t, &mk, &n, &err),
                     PD_OK);
    char whole[256];
    snprintf(whole, sizeof whole, "%s%s", prompt, completion);
    int32_t ref[256];
    int nr = pd_tokenizer_encode(model->tok, whole, strlen(whole), 1, 0, ref, 256);
    assert_int_equal(n, nr);
    assert_memory_equal(t, ref, (size_t)n * sizeof *t);
    /* Targets start at the first token at or after the prompt's end and run
     * to the end; the prompt tokens decode to the prompt. */
    int first = -1;
    for (int j = 0; j < n; j++)
        if (mk[j] && first < 0) first = j;
    assert_true(first > 1);
    for (int j = first; j < n; j++) assert_int_equal(mk[j], 1);
    pd_example ex = {.tokens = t, .loss_mask = mk, .n = n};
    char buf[256];
    decode_targets(&ex, buf, sizeof buf);
    assert_string_equal(buf, completion);
    free(t);
    free(mk);

    /* first_target = 2 (served without BOS): token 1 is never a target. */
    const char *text = "Tom ran.";
    assert_int_equal(pd_dataset_encode(model->tok, "", 0, text, strlen(text), 2, &t, &mk, &n,
                                       &err),
                     PD_OK);
    assert_int_equal(mk[1], 0);
    assert_int_equal(mk[2], 1);
    free(t);
    free(mk);
}

/* A token that straddles the prompt's end belongs to the prompt: the
 * targets decode to a suffix of the completion. */
static void test_straddling_token(void **state)
{
    (void)state;
    int32_t *t;
    uint8_t *mk;
    int n;
    pd_err err;
    const char *prompt = "Once upon a time ";
    const char *completion = "there was a dog.";
    assert_int_equal(pd_dataset_encode(model->tok, prompt, strlen(prompt), completion,
                                       strlen(completion), 1, &t, &mk, &n, &err),
                     PD_OK);
    pd_example ex = {.tokens = t, .loss_mask = mk, .n = n};
    char buf[128];
    decode_targets(&ex, buf, sizeof buf);
    size_t bl = strlen(buf), cl = strlen(completion);
    assert_true(bl > 0 && bl <= cl);
    assert_string_equal(buf, completion + (cl - bl));
    free(t);
    free(mk);

    /* Nothing left to learn: the completion merges into the prompt's last
     * token (" time" is one piece). */
    assert_int_equal(pd_dataset_encode(model->tok, "Once upon a tim", 15, "e", 1, 1, &t, &mk, &n,
                                       &err),
                     PD_EFORMAT);
    assert_non_null(strstr(err.msg, "no token to learn"));
}

/* ---- bad data ---- */

static void expect_bad(const char *text, const char *where, const char *what)
{
    pd_dataset_params p = params(512, 0);
    pd_dataset *d = (pd_dataset *)1;
    pd_err err;
    assert_int_equal(parse(text, &p, &d, &err), PD_EFORMAT);
    assert_null(d);
    if (strncmp(err.msg, where, strlen(where)) != 0 || !strstr(err.msg, what)) {
        print_error("message \"%s\", want \"%s\" ... \"%s\"\n", err.msg, where, what);
        fail();
    }
}

static void test_bad_lines(void **state)
{
    (void)state;
    const char *good = "{\"prompt\": \"A\", \"completion\": \" cat sat.\"}\n";
    char buf[512];
#define BAD_AT_3(line, what)                                  \
    do {                                                      \
        snprintf(buf, sizeof buf, "%s\n%s%s", good, good, line); \
        expect_bad(buf, "data.jsonl:4: ", what);              \
    } while (0)
    BAD_AT_3("{\"prompt\": \"A\", \"completion\": \" b\"", "not valid JSON");
    BAD_AT_3("not json at all", "not valid JSON");
    BAD_AT_3("[1, 2, 3]", "not a JSON object");
    BAD_AT_3("\"just a string\"", "not a JSON object");
    BAD_AT_3("{\"prompt\": \"Lily went out.\"}", "\"completion\" is missing");
    BAD_AT_3("{\"completion\": \" b\"}", "\"prompt\" is missing");
    BAD_AT_3("{\"prompt\": \"A\", \"completion\": 7}", "\"completion\" must be a string");
    BAD_AT_3("{\"prompt\": null, \"completion\": \" b\"}", "\"prompt\" must be a string");
    BAD_AT_3("{\"text\": [\"a\"]}", "\"text\" must be a string");
    BAD_AT_3("{\"prompt\": \"A\", \"completion\": \"\"}", "\"completion\" is empty");
    BAD_AT_3("{\"text\": \"\"}", "\"text\" is empty");
    BAD_AT_3("{\"text\": \"a\", \"prompt\": \"b\"}", "both");
    BAD_AT_3("{\"other\": 1}", "needs \"prompt\" and \"completion\", or \"text\"");
    BAD_AT_3("{\"prompt\": \"A\", \"prompt\": \"B\", \"completion\": \" c\"}", "not valid JSON");
#undef BAD_AT_3
    expect_bad("", "data.jsonl: no usable examples", "");
    expect_bad("\n  \n", "data.jsonl: no usable examples", "");

    /* Too long for the context after the prefix. */
    pd_dataset_params p = params(8, 0);
    pd_dataset *d;
    pd_err err;
    const char *lng =
        "{\"prompt\": \"Once\", \"completion\": \" upon a time there was a little girl.\"}\n";
    assert_int_equal(parse(lng, &p, &d, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "data.jsonl:1: too long"));
    /* Far too long: refused before encoding. */
    char *huge = malloc(20000);
    assert_non_null(huge);
    strcpy(huge, "{\"text\": \"");
    size_t at = strlen(huge);
    memset(huge + at, 'a', 19000);
    strcpy(huge + at + 19000, "\"}\n");
    p = params(512, 0);
    assert_int_equal(parse(huge, &p, &d, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "data.jsonl:1: too long"));
    free(huge);
}

/* The shipped bad file: fails at line 2; with skipping, keeps lines 1, 8, 9. */
static void test_bad_file_and_skipping(void **state)
{
    (void)state;
    pd_dataset_params p = params(512, 0);
    pd_dataset *d;
    pd_err err;
    assert_int_equal(pd_dataset_load(BAD, model->tok, &p, &d, &err), PD_EFORMAT);
    assert_string_equal(err.msg, BAD ":2: not valid JSON: '}' expected near end of file "
                                     "(column 59)");
    p.skip_bad_lines = 1;
    assert_int_equal(pd_dataset_load(BAD, model->tok, &p, &d, &err), PD_OK);
    assert_int_equal(d->n, 3);
    assert_int_equal(d->n_skipped, 5);
    assert_int_equal(d->line[0], 1);
    assert_int_equal(d->line[1], 8);
    assert_int_equal(d->line[2], 9);
    pd_dataset_free(d);

    assert_int_equal(pd_dataset_load("tests/data/train/no-such-file.jsonl", model->tok, &p, &d,
                                     &err),
                     PD_EIO);

    int n;
    assert_int_equal(pd_train_validate_file(model, BAD, 10, &n, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, BAD ":2: "));
    assert_int_equal(pd_train_validate_file(model, "tests/data/train/dragon.train.jsonl", 10, &n,
                                            &err),
                     PD_OK);
    assert_int_equal(n, 100);
}

/* ---- split and generator ---- */

static void test_split(void **state)
{
    (void)state;
    int *tr, *va, ntr, nva;
    pd_err err;
    assert_int_equal(pd_dataset_split(100, 0.1, 7, &tr, &ntr, &va, &nva, &err), PD_OK);
    assert_int_equal(ntr, 90);
    assert_int_equal(nva, 10);
    int seen[100] = {0};
    for (int i = 0; i < ntr; i++) seen[tr[i]]++;
    for (int i = 0; i < nva; i++) seen[va[i]]++;
    for (int i = 0; i < 100; i++) assert_int_equal(seen[i], 1);
    for (int i = 1; i < nva; i++) assert_true(va[i - 1] < va[i]); /* file order */
    int *tr2, *va2, ntr2, nva2;
    assert_int_equal(pd_dataset_split(100, 0.1, 7, &tr2, &ntr2, &va2, &nva2, &err), PD_OK);
    assert_memory_equal(va, va2, (size_t)nva * sizeof *va); /* deterministic */
    free(tr2);
    free(va2);
    assert_int_equal(pd_dataset_split(100, 0.1, 8, &tr2, &ntr2, &va2, &nva2, &err), PD_OK);
    assert_true(memcmp(va, va2, (size_t)nva * sizeof *va) != 0); /* seeded */
    free(tr2);
    free(va2);
    free(tr);
    free(va);

    /* No split; at least one each way; never all of it. */
    assert_int_equal(pd_dataset_split(5, 0.0, 1, &tr, &ntr, &va, &nva, &err), PD_OK);
    assert_int_equal(ntr, 5);
    assert_int_equal(nva, 0);
    assert_null(va);
    free(tr);
    assert_int_equal(pd_dataset_split(5, 0.01, 1, &tr, &ntr, &va, &nva, &err), PD_OK);
    assert_int_equal(nva, 1);
    free(tr);
    free(va);
    assert_int_equal(pd_dataset_split(1, 0.5, 1, &tr, &ntr, &va, &nva, &err), PD_OK);
    assert_int_equal(ntr, 1);
    assert_int_equal(nva, 0);
    free(tr);
}

static void test_rng(void **state)
{
    (void)state;
    pd_rng a, b;
    pd_rng_seed(&a, 42);
    pd_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) assert_true(pd_rng_next(&a) == pd_rng_next(&b));
    pd_rng saved = a; /* the state is plain data */
    uint64_t x = pd_rng_next(&a);
    assert_true(pd_rng_next(&saved) == x);
    double sum = 0.0, sq = 0.0;
    for (int i = 0; i < 20000; i++) {
        double u = pd_rng_uniform(&a);
        assert_true(u >= 0.0 && u < 1.0);
        double z = pd_rng_normal(&a);
        sum += z;
        sq += z * z;
    }
    assert_true(fabs(sum / 20000) < 0.05);
    assert_true(fabs(sq / 20000 - 1.0) < 0.05);
    int idx[50], seen[50] = {0};
    for (int i = 0; i < 50; i++) idx[i] = i;
    pd_rng_shuffle(&a, idx, 50);
    for (int i = 0; i < 50; i++) seen[idx[i]]++;
    for (int i = 0; i < 50; i++) assert_int_equal(seen[i], 1);
    for (int i = 0; i < 1000; i++) assert_true(pd_rng_below(&a, 3) < 3);
}

/* ---- chat data ---- */

static const char QA_TEMPLATE[] =
    "{% for m in messages %}{% if m.role == 'user' %}Q: {{ m.content }}\n"
    "{% else %}A: {{ m.content }} END\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}A:{% endif %}";

/* Byte offset in text of each token's first decoded byte (-1: decodes to
 * nothing), computed from the decoder alone. */
static void token_starts(const pd_example *ex, size_t text_len, long *start)
{
    size_t total = 0;
    for (int j = 1; j < ex->n; j++) {
        size_t l;
        pd_tokenizer_decode(model->tok, ex->tokens[j - 1], ex->tokens[j], &l);
        total += l;
    }
    assert_true(total >= text_len && total - text_len <= 1);
    size_t at = 0, shift = total - text_len; /* a leading dummy space, when decoded */
    for (int j = 1; j < ex->n; j++) {
        size_t l;
        pd_tokenizer_decode(model->tok, ex->tokens[j - 1], ex->tokens[j], &l);
        start[j] = l && at >= shift ? (long)(at - shift) : -1;
        at += l;
    }
}

static void test_chat_masks(void **state)
{
    (void)state;
    const char *line =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Lily had a cat.\"},"
        " {\"role\": \"assistant\", \"content\": \"The cat was big.\"},"
        " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Where did \"},"
        "   {\"type\": \"text\", \"text\": \"it go?\"}]},"
        " {\"role\": \"assistant\", \"content\": \"It ran away.\", \"weight\": 0},"
        " {\"role\": \"user\", \"content\": \"And then?\"},"
        " {\"role\": \"assistant\", \"content\": \"It came home.\", \"weight\": 1}]}\n";
    /* the rendering, written out by hand, and the spans the loss must cover:
     * each learned answer with its end-of-turn text, from after "A:" */
    const char *text = "Q: Lily had a cat.\nA: The cat was big. END\nQ: Where did it go?\n"
                       "A: It ran away. END\nQ: And then?\nA: It came home. END\n";
    const char *learned[] = {" The cat was big. END\n", " It came home. END\n"};
    size_t span[2][2];
    for (int k = 0; k < 2; k++) {
        const char *at = strstr(text, learned[k]);
        assert_non_null(at);
        span[k][0] = (size_t)(at - text);
        span[k][1] = span[k][0] + strlen(learned[k]);
    }
    pd_dataset_params p = params(512, 0);
    p.chat_template = QA_TEMPLATE;
    pd_dataset *d;
    pd_err err;
    if (parse(line, &p, &d, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(d->n, 1);
    const pd_example *ex = &d->ex[0];
    /* the tokens are BOS + encode(text) */
    int32_t want[512];
    int nw = pd_tokenizer_encode(model->tok, text, strlen(text), 1, 0, want, 512);
    assert_int_equal(nw, ex->n);
    assert_memory_equal(want, ex->tokens, (size_t)nw * sizeof *want);
    long start[512];
    token_starts(ex, strlen(text), start);
    int targets = 0;
    for (int j = 1; j < ex->n; j++) {
        int in = 0;
        for (int k = 0; k < 2; k++)
            in |= start[j] >= (long)span[k][0] && start[j] < (long)span[k][1];
        if (ex->loss_mask[j] != in) fail_msg("token %d (byte %ld): mask %d, want %d", j, start[j], ex->loss_mask[j], in);
        targets += in;
    }
    assert_true(targets >= 8);
    assert_int_equal(d->n_targets, (size_t)targets);
    char buf[512];
    decode_targets(ex, buf, sizeof buf);
    assert_non_null(strstr(buf, "The cat was big. END\n"));
    assert_non_null(strstr(buf, "It came home. END\n"));
    assert_null(strstr(buf, "ran away"));
    assert_null(strstr(buf, "Lily"));
    pd_dataset_free(d);

    /* the default template (ChatML) and prompt/completion lines in one file */
    const char *mixed = "{\"prompt\": \"A\", \"completion\": \" cat sat.\"}\n"
                        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
                        " {\"role\": \"user\", \"content\": \"Hi\"},"
                        " {\"role\": \"assistant\", \"content\": \"Hello there\"}]}\n";
    p = params(512, 0);
    if (parse(mixed, &p, &d, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(d->n, 2);
    decode_targets(&d->ex[1], buf, sizeof buf);
    assert_string_equal(buf, "Hello there<|im_end|>\n");
    pd_dataset_free(d);
}

static void expect_bad_chat(const char *tmpl, const char *text, const char *where, const char *what)
{
    pd_dataset_params p = params(512, 0);
    p.chat_template = tmpl;
    pd_dataset *d = (pd_dataset *)1;
    pd_err err;
    assert_int_equal(parse(text, &p, &d, &err), PD_EFORMAT);
    assert_null(d);
    if (strncmp(err.msg, where, strlen(where)) != 0 || !strstr(err.msg, what))
        fail_msg("message \"%s\", want \"%s\" ... \"%s\"", err.msg, where, what);
}

static void test_chat_bad_lines(void **state)
{
    (void)state;
    const char *ok = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"},"
                     " {\"role\": \"assistant\", \"content\": \"Yes\"}]}\n";
    char buf[2048];
#define BAD_CHAT(tmpl, line, what)                                        \
    do {                                                                  \
        snprintf(buf, sizeof buf, "%s\n%s%s\n", ok, ok, line);           \
        expect_bad_chat(tmpl, buf, "data.jsonl:4:", what);                \
    } while (0)
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}",
             "no assistant message");
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"robot\", \"content\": \"Hi\"}, "
                   "{\"role\": \"assistant\", \"content\": \"x\"}]}", "messages[0]: \"role\"");
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"user\", \"content\": 5}, "
                   "{\"role\": \"assistant\", \"content\": \"x\"}]}", "messages[0]: \"content\"");
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                   "{\"role\": \"assistant\", \"content\": \"x\", \"weight\": 2}]}", "weight");
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\", \"weight\": 1}, "
                   "{\"role\": \"assistant\", \"content\": \"x\"}]}", "weight");
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                   "{\"role\": \"assistant\", \"content\": \"x\", \"weight\": 0}]}",
             "no assistant message");
    BAD_CHAT(NULL, "{\"messages\": []}", "non-empty array");
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}, "
                   "{\"role\": \"assistant\", \"content\": \"x\"}]}", "image_url");
    BAD_CHAT(NULL, "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}], \"prompt\": \"a\"}",
             "both");
    /* a template that raises on this line only */
    const char *strict = "{% for m in messages %}{% if m.role == 'system' %}"
                         "{{ raise_exception('no system role here') }}{% endif %}{{ m.content }}{% endfor %}";
    BAD_CHAT(strict, "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, "
                     "{\"role\": \"assistant\", \"content\": \"x\"}]}",
             "raise_exception: no system role here");
    /* a template whose earlier turns change when more follow (as Qwen 3
     * drops reasoning): the assistant tokens cannot be located */
    const char *unstable = "{% for m in messages %}{% if m.role == 'assistant' and not loop.last and "
                           "messages|length > 2 %}OLD {% endif %}{{ m.content }}{% endfor %}";
    BAD_CHAT(unstable, "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, "
                       "{\"role\": \"assistant\", \"content\": \"x\"}, "
                       "{\"role\": \"user\", \"content\": \"q2\"}, "
                       "{\"role\": \"assistant\", \"content\": \"y\"}]}", "messages[1]: the chat template");
    expect_bad_chat("{% if %}", ok, "data.jsonl:1:", "chat template: line 1, column");
#undef BAD_CHAT
}

/* On Qwen 3's real vocabulary (control tokens <|im_start|>, <|im_end|>)
 * with ChatML: the targets, in order, are exactly the tokens of each learned
 * answer followed by <|im_end|> and the newline, each encoded on its own. */
static void test_chat_masks_qwen3(void **state)
{
    (void)state;
    char path[256];
    const char *dir = getenv("PD_VOCAB_DIR");
    snprintf(path, sizeof path, "%s/qwen3.gguf", dir && *dir ? dir : "build/vocab");
    if (access(path, R_OK) != 0) fail_msg("%s is missing: `make vocabs` builds it", path);
    pd_gguf *g;
    pd_tokenizer *tok;
    pd_err err;
    if (pd_gguf_open(path, &g, &err) < 0 || pd_tokenizer_load_gguf(g, &tok, &err) < 0)
        fail_msg("%s", err.msg);
    pd_gguf_free(g);
    assert_non_null(pd_chat_model_template(tok)); /* the GGUF carries Qwen 3's */
    const char *line =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"You are terse.\"},"
        " {\"role\": \"user\", \"content\": \"Name a colour.\"},"
        " {\"role\": \"assistant\", \"content\": \"Blue.\"},"
        " {\"role\": \"user\", \"content\": \"Another?\"},"
        " {\"role\": \"assistant\", \"content\": \"Green, of course.\", \"weight\": 0},"
        " {\"role\": \"user\", \"content\": \"One more.\"},"
        " {\"role\": \"assistant\", \"content\": \"Red — like a tomato 🍅.\"}]}";
    pd_dataset_params p = params(512, 0);
    p.chat_template = pd_chat_builtin("chatml");
    pd_dataset *d;
    if (pd_dataset_parse(line, strlen(line), "chat.jsonl", tok, &p, &d, &err) < 0)
        fail_msg("%s", err.msg);
    const pd_example *ex = &d->ex[0];
    /* the whole conversation, tokenized with the control tokens parsed */
    const char *text =
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\nBlue.<|im_end|>\n<|im_start|>user\nAnother?<|im_end|>\n"
        "<|im_start|>assistant\nGreen, of course.<|im_end|>\n<|im_start|>user\nOne more.<|im_end|>\n"
        "<|im_start|>assistant\nRed — like a tomato 🍅.<|im_end|>\n";
    int32_t want[512], part[128];
    int nw = pd_tokenizer_encode_flags(tok, text, strlen(text), PD_TOK_ADD_SPECIAL | PD_TOK_PARSE_SPECIAL,
                                       want, 512);
    assert_int_equal(ex->n, nw);
    assert_memory_equal(ex->tokens, want, (size_t)nw * sizeof *want);
    /* the expected targets: each learned answer + <|im_end|> + newline */
    const char *learned[] = {"Blue.<|im_end|>\n", "Red — like a tomato 🍅.<|im_end|>\n"};
    int32_t expect[256];
    int ne = 0;
    for (int k = 0; k < 2; k++) {
        int n = pd_tokenizer_encode_flags(tok, learned[k], strlen(learned[k]), PD_TOK_PARSE_SPECIAL,
                                          part, 128);
        assert_true(n > 2 && n < 128);
        memcpy(expect + ne, part, (size_t)n * sizeof *part);
        ne += n;
    }
    int32_t got[256];
    int ng = 0;
    for (int j = 0; j < ex->n; j++)
        if (ex->loss_mask[j]) got[ng++] = ex->tokens[j];
    assert_int_equal(ng, ne);
    assert_memory_equal(got, expect, (size_t)ne * sizeof *got);
    int eot = 0;
    for (int j = 0; j < ng; j++) eot += pd_tokenizer_type(tok, got[j]) == PD_TOKEN_CONTROL;
    assert_int_equal(eot, 2); /* each <|im_end|> is one control token, learned */
    pd_dataset_free(d);

    /* Qwen 3's own template renders a single turn with an empty thinking
     * block before the answer: that block is part of what is learned */
    const char *single = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"},"
                         " {\"role\": \"assistant\", \"content\": \"Hello!\"}]}";
    p.chat_template = NULL;
    if (pd_dataset_parse(single, strlen(single), "chat.jsonl", tok, &p, &d, &err) < 0)
        fail_msg("%s", err.msg);
    ng = 0;
    for (int j = 0; j < d->ex[0].n; j++)
        if (d->ex[0].loss_mask[j]) got[ng++] = d->ex[0].tokens[j];
    const char *tail = "<think>\n\n</think>\n\nHello!<|im_end|>\n";
    ne = pd_tokenizer_encode_flags(tok, tail, strlen(tail), PD_TOK_PARSE_SPECIAL, expect, 256);
    assert_int_equal(ng, ne);
    assert_memory_equal(got, expect, (size_t)ne * sizeof *got);
    pd_dataset_free(d);
    pd_tokenizer_free(tok);
}

/* On the SentencePiece Llama vocabulary (tests/data/vocab) with the
 * built-in llama2 template: <s> and </s> in the rendered text are control
 * tokens; the targets are exactly each answer and its </s>. */
static void test_chat_masks_llama_spm(void **state)
{
    (void)state;
    pd_gguf *g;
    pd_tokenizer *tok;
    pd_err err;
    if (pd_gguf_open("tests/data/vocab/ggml-vocab-llama-spm.gguf", &g, &err) < 0 ||
        pd_tokenizer_load_gguf(g, &tok, &err) < 0)
        fail_msg("%s", err.msg);
    pd_gguf_free(g);
    const char *line =
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be kind.\"},"
        " {\"role\": \"user\", \"content\": \"Hi there\"},"
        " {\"role\": \"assistant\", \"content\": \"Hello friend.\"},"
        " {\"role\": \"user\", \"content\": \"Bye\"},"
        " {\"role\": \"assistant\", \"content\": \"Goodbye!\"}]}";
    pd_dataset_params p = params(512, 0);
    p.chat_template = pd_chat_builtin("llama2");
    pd_dataset *d;
    if (pd_dataset_parse(line, strlen(line), "chat.jsonl", tok, &p, &d, &err) < 0)
        fail_msg("%s", err.msg);
    const pd_example *ex = &d->ex[0];
    /* the rendering: <s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi there [/INST] Hello
     * friend. </s><s>[INST] Bye [/INST] Goodbye! </s>, BOS once (the encoder's) */
    const char *text = "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi there [/INST] Hello friend. </s>"
                       "<s>[INST] Bye [/INST] Goodbye! </s>";
    int32_t want[256];
    int nw = pd_tokenizer_encode_flags(tok, text, strlen(text), PD_TOK_ADD_SPECIAL | PD_TOK_PARSE_SPECIAL,
                                       want, 256);
    assert_int_equal(ex->n, nw);
    assert_memory_equal(ex->tokens, want, (size_t)nw * sizeof *want);
    assert_int_equal(ex->tokens[0], pd_tokenizer_bos(tok));
    /* the target runs, as text: each answer with its end of turn */
    char runs[256] = "";
    for (int j = 1; j < ex->n; j++) {
        if (!ex->loss_mask[j]) {
            if (ex->loss_mask[j - 1]) strcat(runs, "|");
            continue;
        }
        strcat(runs, pd_tokenizer_token_text(tok, ex->tokens[j]));
    }
    assert_string_equal(runs, " Hello friend. </s>| Goodbye! </s>");
    pd_dataset_free(d);
    pd_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_lines),
        cmocka_unit_test(test_one_encoding),
        cmocka_unit_test(test_straddling_token),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_bad_file_and_skipping),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_chat_masks),
        cmocka_unit_test(test_chat_bad_lines),
        cmocka_unit_test(test_chat_masks_qwen3),
        cmocka_unit_test(test_chat_masks_llama_spm),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
