/* cmd_tokenize.c — `prefixd tokenize` and `prefixd detokenize`:
 *
 *   prefixd tokenize --model M [--tokenizer T] [--no-bos] [--special] [--pieces]
 *                    (--text TEXT | --file F) [--batch]
 *   prefixd detokenize --model M [--tokenizer T] --ids 1,2,3
 *
 * tokenize prints the ids as a JSON array on one line (with --pieces, objects
 * {"id", "piece"} as POST /tokenize answers). BOS/EOS are added as the
 * vocabulary says unless --no-bos; --special parses control-token text
 * ("<|im_start|>", "<s>") into control tokens. With --batch the file holds a
 * JSON array of strings and the output is a JSON array of their results
 * (one process for a whole test corpus). detokenize prints the text of
 * the ids. A GGUF model file is read for its tokenizer only (vocab-only files
 * work); a llama2.c model needs its --tokenizer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/fsutil.h"
#include "prefixd/gguf.h"
#include "tokenize.h"

/* Largest --file read. */
#define TEXT_MAX ((size_t)64 << 20)

typedef struct tok_src {
    pd_tokenizer *tok;  /* borrowed from m, or owned when m is NULL */
    pd_model *m;
} tok_src;

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int load_tok(const char *model, const char *tokenizer, tok_src *ts)
{
    memset(ts, 0, sizeof *ts);
    if (!model) return cli_fail("--model is required");
    if (ends_with(model, ".gguf") && !tokenizer) {
        pd_gguf *g;
        pd_err err;
        if (pd_gguf_open(model, &g, &err) < 0 || pd_tokenizer_load_gguf(g, &ts->tok, &err) < 0) {
            if (g) pd_gguf_free(g);
            return cli_fail("%s", err.msg);
        }
        pd_gguf_free(g);
        return 0;
    }
    if (!(ts->m = cli_load_model(model, tokenizer))) return 1;
    ts->tok = ts->m->tok;
    return 0;
}

static void free_tok(tok_src *ts)
{
    if (ts->m)
        pd_model_free(ts->m);
    else
        pd_tokenizer_free(ts->tok);
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *tokenizer = NULL, *text = NULL, *file = NULL;
    int add = 1, special = 0, pieces = 0, batch = 0;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--model", &model))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--text", &text))) {
        } else if ((r = cli_opt(argc, argv, &i, "--file", &file))) {
        } else if (!strcmp(argv[i], "--no-bos")) {
            add = 0;
        } else if (!strcmp(argv[i], "--special")) {
            special = 1;
        } else if (!strcmp(argv[i], "--pieces")) {
            pieces = 1;
        } else if (!strcmp(argv[i], "--batch")) {
            batch = 1;
        } else {
            return cli_fail("tokenize: unknown option '%s'", argv[i]) + 1;
        }
        if (r < 0) return 2;
    }
    if ((text != NULL) == (file != NULL))
        return cli_fail("tokenize: give exactly one of --text and --file") + 1;
    if (batch && !file) return cli_fail("tokenize: --batch reads --file") + 1;
    char *data = NULL;
    size_t len = text ? strlen(text) : 0;
    if (file) {
        pd_err err;
        if (pd_read_file(file, TEXT_MAX, &data, &len, &err) < 0) return cli_fail("%s", err.msg);
        text = data;
    }
    tok_src ts;
    int status = load_tok(model, tokenizer, &ts);
    if (status) {
        free(data);
        return status;
    }
    int rc = PD_OK;
    unsigned flags = (add ? PD_TOK_ADD_SPECIAL : 0) | (special ? PD_TOK_PARSE_SPECIAL : 0);
    json_t *arr = NULL;
    if (batch) {
        json_error_t jerr;
        json_t *in = json_loadb(text, len, 0, &jerr);
        size_t k;
        json_t *v;
        if (!json_is_array(in)) {
            json_decref(in);
            free_tok(&ts);
            free(data);
            return cli_fail("tokenize: %s: line %d: not a JSON array of strings%s%s", file,
                            jerr.line, in ? "" : ": ", in ? "" : jerr.text);
        }
        arr = json_array();
        json_array_foreach(in, k, v) {
            json_t *one = json_is_string(v) ? tokenize_json(ts.tok, json_string_value(v),
                                                             json_string_length(v), flags,
                                                             pieces, &rc)
                                            : NULL;
            if (!arr || !one || json_array_append_new(arr, one) < 0) {
                json_decref(arr);
                arr = NULL;
                if (!json_is_string(v)) rc = PD_EINVAL;
                break;
            }
        }
        json_decref(in);
    } else {
        arr = tokenize_json(ts.tok, text, len, flags, pieces, &rc);
    }
    char *s = arr ? json_dumps(arr, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    if (s) {
        printf("%s\n", s);
        status = 0;
    } else {
        status = cli_fail("tokenize: %s", rc == PD_EINVAL  ? "--batch: an item is not a string"
                                          : rc == PD_ENOMEM || arr ? "out of memory"
                                                                   : "the text cannot be encoded");
    }
    free(s);
    json_decref(arr);
    free_tok(&ts);
    free(data);
    return status;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *model = NULL, *tokenizer = NULL, *list = NULL;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--model", &model))) {
        } else if ((r = cli_opt(argc, argv, &i, "--tokenizer", &tokenizer))) {
        } else if ((r = cli_opt(argc, argv, &i, "--ids", &list))) {
        } else {
            return cli_fail("detokenize: unknown option '%s'", argv[i]) + 1;
        }
        if (r < 0) return 2;
    }
    if (!list) return cli_fail("detokenize: --ids 1,2,3 is required") + 1;
    tok_src ts;
    int status = load_tok(model, tokenizer, &ts);
    if (status) return status;
    int32_t *ids = NULL;
    int n = cli_ids("--ids", list, pd_tokenizer_vocab_size(ts.tok), &ids);
    if (n < 0) {
        free_tok(&ts);
        return 2;
    }
    size_t len;
    char *out = detokenize_text(ts.tok, ids, (size_t)n, &len);
    if (out) {
        fwrite(out, 1, len, stdout);
        printf("\n");
        status = 0;
    } else {
        status = cli_fail("detokenize: out of memory");
    }
    free(out);
    free(ids);
    free_tok(&ts);
    return status;
}
