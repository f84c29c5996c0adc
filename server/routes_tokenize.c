/* routes_tokenize.c — POST /tokenize {"content", "add_special" (default
 * false), "parse_special" (default true), "with_pieces" (default false)}
 * answering {"tokens": [...]}, and POST /detokenize {"tokens": [...]}
 * answering {"content": "..."}, as llama.cpp's server has them; plus the
 * shared text <-> ids helpers of tokenize.h. */
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "tokenize.h"

/* 1 when s[0..n) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (k == 0 || i + k > n) return 0;
        unsigned v = c & (0x7F >> k);
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            v = v << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && v < 0x80) || (k == 3 && v < 0x800) || (k == 4 && v < 0x10000) ||
            v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

static int is_special(const pd_tokenizer *tok, int id)
{
    int t = pd_tokenizer_type(tok, id);
    return t == PD_TOKEN_CONTROL || t == PD_TOKEN_USER_DEFINED || t == PD_TOKEN_UNKNOWN;
}

/* The bytes token id shows on its own (special tokens as their text). */
static const char *piece_bytes(const pd_tokenizer *tok, int prev, int id, size_t *len)
{
    if (is_special(tok, id)) {
        const char *t = pd_tokenizer_token_text(tok, id);
        *len = strlen(t);
        return t;
    }
    const char *b = pd_tokenizer_decode(tok, prev, id, len);
    return b ? b : "";
}

static json_t *piece_json(const char *b, size_t len)
{
    if (valid_utf8((const unsigned char *)b, len)) return json_stringn(b, len);
    json_t *a = json_array();
    for (size_t i = 0; a && i < len; i++)
        if (json_array_append_new(a, json_integer((unsigned char)b[i])) < 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

json_t *tokenize_json(const pd_tokenizer *tok, const char *text, size_t len, unsigned flags,
                      int with_pieces, int *rc)
{
    int cap = (int)(len < (size_t)(1 << 28) ? len : (size_t)(1 << 28)) + 4;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    json_t *out = json_array();
    *rc = PD_ENOMEM;
    if (!ids || !out) goto fail;
    int n = pd_tokenizer_encode_flags(tok, text, len, flags, ids, cap);
    if (n < 0 || n > cap) {
        *rc = n < 0 ? n : PD_ERANGE;
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        json_t *item;
        if (with_pieces) {
            size_t bl;
            const char *b = piece_bytes(tok, -1, ids[i], &bl);
            json_t *p = piece_json(b, bl);
            item = p ? json_pack("{s:i,s:o}", "id", (int)ids[i], "piece", p) : NULL;
        } else {
            item = json_integer(ids[i]);
        }
        if (!item || json_array_append_new(out, item) < 0) goto fail;
    }
    free(ids);
    *rc = PD_OK;
    return out;
fail:
    free(ids);
    json_decref(out);
    return NULL;
}

char *detokenize_text(const pd_tokenizer *tok, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = 256, at = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t bl;
        /* at the start, as after BOS: SentencePiece's dummy-prefix space goes */
        int prev = i ? ids[i - 1] : pd_tokenizer_bos(tok);
        const char *b = piece_bytes(tok, prev, ids[i], &bl);
        if (at + bl + 1 > cap) {
            while (at + bl + 1 > cap) cap *= 2;
            char *grown = realloc(out, cap);
            if (!grown) {
                free(out);
                return NULL;
            }
            out = grown;
        }
        memcpy(out + at, b, bl);
        at += bl;
    }
    out[at] = 0;
    *len = at;
    return out;
}

/* A boolean field of body (default def), or -1 after queuing a 400. */
static int bool_field(http_req *r, json_t *body, const char *key, int def, enum MHD_Result *ret)
{
    json_t *v = json_object_get(body, key);
    if (!v) return def;
    if (!json_is_boolean(v)) {
        *ret = http_send_error(r, 400, key, "invalid_type", "'%s' must be a boolean.", key);
        return -1;
    }
    return json_is_true(v);
}

static int check_fields(http_req *r, json_t *body, const char *const *known, const char *route,
                        enum MHD_Result *ret)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        int ok = 0;
        for (const char *const *k = known; *k; k++) ok |= !strcmp(*k, key);
        if (!ok) {
            *ret = http_send_error(r, 400, key, "unknown_parameter",
                                   "Unknown field '%s' for %s.", key, route);
            return -1;
        }
    }
    return 0;
}

enum MHD_Result route_tokenize(http_req *r)
{
    static const char *const known[] = {"content", "add_special", "parse_special", "with_pieces",
                                        NULL};
    enum MHD_Result ret;
    json_t *body = http_body_json(r, &ret);
    if (!body) return ret;
    json_t *content = json_object_get(body, "content");
    int add = 0, parse = 0, pieces = 0;
    if (check_fields(r, body, known, "POST /tokenize", &ret) < 0 ||
        (add = bool_field(r, body, "add_special", 0, &ret)) < 0 ||
        (parse = bool_field(r, body, "parse_special", 1, &ret)) < 0 ||
        (pieces = bool_field(r, body, "with_pieces", 0, &ret)) < 0)
        goto done;
    if (!json_is_string(content)) {
        ret = http_send_error(r, 400, "content", content ? "invalid_type" : "missing_parameter",
                              "'content' must be a string.");
        goto done;
    }
    int rc;
    unsigned flags = (add ? PD_TOK_ADD_SPECIAL : 0) | (parse ? PD_TOK_PARSE_SPECIAL : 0);
    json_t *toks = tokenize_json(r->s->model->tok, json_string_value(content),
                                 json_string_length(content), flags, pieces, &rc);
    if (!toks)
        ret = rc == PD_ENOMEM
                  ? http_send_error(r, 503, NULL, "out_of_memory", "The server is out of memory.")
                  : http_send_error(r, 400, "content", "invalid_value",
                                    "'content' cannot be tokenized.");
    else
        ret = http_send_json(r, 200, json_pack("{s:o}", "tokens", toks));
done:
    json_decref(body);
    return ret;
}

enum MHD_Result route_detokenize(http_req *r)
{
    static const char *const known[] = {"tokens", NULL};
    enum MHD_Result ret;
    json_t *body = http_body_json(r, &ret);
    if (!body) return ret;
    const pd_tokenizer *tok = r->s->model->tok;
    json_t *arr = json_object_get(body, "tokens");
    int32_t *ids = NULL;
    char *text = NULL;
    if (check_fields(r, body, known, "POST /detokenize", &ret) < 0) goto done;
    if (!json_is_array(arr)) {
        ret = http_send_error(r, 400, "tokens", arr ? "invalid_type" : "missing_parameter",
                              "'tokens' must be an array of token ids.");
        goto done;
    }
    size_t n = json_array_size(arr);
    ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        ret = http_send_error(r, 503, NULL, "out_of_memory", "The server is out of memory.");
        goto done;
    }
    int V = pd_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= V) {
            ret = http_send_error(r, 400, "tokens", "invalid_value",
                                  "tokens[%zu] is not a token id in [0, %d).", i, V);
            goto done;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    size_t len;
    if (!(text = detokenize_text(tok, ids, n, &len))) {
        ret = http_send_error(r, 503, NULL, "out_of_memory", "The server is out of memory.");
        goto done;
    }
    /* invalid UTF-8 (a cut multi-byte character) cannot go into JSON text */
    json_t *s = json_stringn(text, len);
    if (!s) {
        ret = http_send_error(r, 400, "tokens", "invalid_value",
                              "The tokens do not decode to valid UTF-8 text.");
        goto done;
    }
    ret = http_send_json(r, 200, json_pack("{s:o}", "content", s));
done:
    free(ids);
    free(text);
    json_decref(body);
    return ret;
}
