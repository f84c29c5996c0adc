/* dataset.c — JSONL training data into tokenized examples with loss masks,
 * the validation split, and the deterministic generator the trainer uses
 * (contracts in prefixd/dataset.h). */
#include "prefixd/dataset.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/chat.h"
#include "prefixd/fsutil.h"
#include "prefixd/log.h"

pd_dataset_params pd_dataset_default_params(void)
{
    return (pd_dataset_params){.max_tokens = 512, .first_target = 1, .skip_bad_lines = 0,
                               .chat_template = NULL, .now = -1};
}

/* ---- the generator ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void pd_rng_seed(pd_rng *r, uint64_t seed)
{
    PD_ASSERT(r);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t pd_rng_next(pd_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

uint64_t pd_rng_below(pd_rng *r, uint64_t n)
{
    PD_ASSERT(n >= 1);
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* accept [0, limit) */
    uint64_t x;
    do x = pd_rng_next(r);
    while (x >= limit);
    return x % n;
}

double pd_rng_uniform(pd_rng *r) { return (double)(pd_rng_next(r) >> 11) * 0x1.0p-53; }

double pd_rng_normal(pd_rng *r)
{
    double u1 = 1.0 - pd_rng_uniform(r); /* (0, 1]: log is finite */
    double u2 = pd_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void pd_rng_shuffle(pd_rng *r, int *idx, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)pd_rng_below(r, (uint64_t)i + 1);
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

/* ---- one example ---- */

/* The bytes token t[j] stands for in the text it was encoded from: its
 * decoding, or with special parsing a control token's written text (but
 * nothing for the BOS the encoder added). */
static const char *token_bytes(const pd_tokenizer *tok, const int32_t *t, int j, int special,
                               size_t *l)
{
    int added_bos = j == 0 && t[0] == pd_tokenizer_bos(tok) && pd_tokenizer_add_bos(tok);
    if (special && !added_bos && pd_tokenizer_type(tok, t[j]) == PD_TOKEN_CONTROL) {
        const char *s = pd_tokenizer_token_text(tok, t[j]);
        *l = s ? strlen(s) : 0;
        return s;
    }
    return pd_tokenizer_decode(tok, j ? t[j - 1] : -1, t[j], l);
}

/* Tokenizes text[0..len) (BOS first; special: control-token text parsed)
 * with the loss mask of the byte spans [spans[2i], spans[2i+1]): token j
 * (j >= first_target) is a target when the bytes it stands for are not
 * empty and start inside a span. */
static int encode_spans(const pd_tokenizer *tok, const char *text, size_t len, const size_t *spans,
                        int n_spans, int special, int first_target, int32_t **tokens,
                        uint8_t **mask, int *n, pd_err *err)
{
    *tokens = NULL;
    *mask = NULL;
    *n = 0;
    if (len > (size_t)INT32_MAX - 8) return pd_err_set(err, PD_EFORMAT, "the text is too long");
    int cap = (int)len + 3; /* BOS + dummy space + one token per byte at most */
    int32_t *t = malloc((size_t)cap * sizeof *t);
    uint8_t *mk = malloc((size_t)cap);
    int rc = PD_OK;
    if (!t || !mk) {
        rc = pd_err_set(err, PD_ENOMEM, "out of memory");
        goto fail;
    }

    int nt = special ? pd_tokenizer_encode_flags(tok, text, len,
                                                 PD_TOK_ADD_SPECIAL | PD_TOK_PARSE_SPECIAL, t, cap)
                     : pd_tokenizer_encode(tok, text, len, 1, 0, t, cap);
    if (nt < 0 || nt > cap) {
        rc = pd_err_set(err, PD_EFORMAT, "the text cannot be tokenized");
        goto fail;
    }
    /* Byte offsets of every token in the decoded stream, which is either the
     * text itself (the dummy-prefix space dropped after BOS) or one leading
     * space longer (when the space became a byte token, say). */
    size_t total = 0;
    for (int j = 0; j < nt; j++) {
        size_t l;
        token_bytes(tok, t, j, special, &l);
        total += l;
    }
    size_t shift = total - len;
    if (total < len || shift > 1) {
        rc = pd_err_set(err, PD_EFORMAT, "the text does not decode back to itself");
        goto fail;
    }
    size_t at = 0; /* offset in the decoded stream */
    int n_targets = 0;
    for (int j = 0; j < nt; j++) {
        size_t l;
        const char *s = token_bytes(tok, t, j, special, &l);
        size_t begin = at;
        for (size_t k = 0; k < l; k++, at++) {
            char want = at < shift ? ' ' : text[at - shift];
            if (s[k] != want) {
                rc = pd_err_set(err, PD_EFORMAT, "the text does not decode back to itself");
                goto fail;
            }
        }
        int in = 0;
        for (int k = 0; k < n_spans && !in && begin >= shift; k++)
            in = begin - shift >= spans[2 * k] && begin - shift < spans[2 * k + 1];
        mk[j] = j >= first_target && in && l > 0;
        n_targets += mk[j];
    }
    if (n_targets == 0) {
        rc = pd_err_set(err, PD_EFORMAT, "no token to learn: the completion merges into the "
                                         "prompt's last token");
        goto fail;
    }
    *tokens = t;
    *mask = mk;
    *n = nt;
    return PD_OK;
fail:
    free(t);
    free(mk);
    return rc;
}

int pd_dataset_encode(const pd_tokenizer *tok, const char *prompt, size_t prompt_len,
                      const char *completion, size_t completion_len, int first_target,
                      int32_t **tokens, uint8_t **mask, int *n, pd_err *err)
{
    PD_ASSERT(tok && (prompt || !prompt_len) && completion && tokens && mask && n);
    *tokens = NULL;
    *mask = NULL;
    *n = 0;
    size_t len = prompt_len + completion_len;
    if (len > (size_t)INT32_MAX - 8) return pd_err_set(err, PD_EFORMAT, "the text is too long");
    char *text = malloc(len + 1);
    if (!text) return pd_err_set(err, PD_ENOMEM, "out of memory");
    if (prompt_len) memcpy(text, prompt, prompt_len);
    memcpy(text + prompt_len, completion, completion_len);
    text[len] = 0;
    size_t span[2] = {prompt_len, len};
    int rc = encode_spans(tok, text, len, span, 1, 0, first_target, tokens, mask, n, err);
    free(text);
    return rc;
}

/* ---- files ---- */

/* A growing dataset under construction. */
typedef struct builder {
    pd_dataset *d;
    size_t tok_cap;
    int ex_cap;
    size_t *start; /* (ex_cap) offset of each example in d->tokens */
    int max_piece; /* longest piece of the vocabulary, in bytes */
    pd_jinja_template *chat; /* parsed at the first {"messages"} line */
    int lineno;              /* the line being parsed */
    pd_chat_params cp;       /* BOS/EOS text of the tokenizer */
} builder;

static int builder_add(builder *b, const int32_t *t, const uint8_t *mk, int n, int line)
{
    pd_dataset *d = b->d;
    if (d->n_tokens + (size_t)n > b->tok_cap) {
        size_t cap = b->tok_cap ? b->tok_cap : 4096;
        while (cap < d->n_tokens + (size_t)n) cap *= 2;
        int32_t *nt = realloc(d->tokens, cap * sizeof *nt);
        if (nt) d->tokens = nt;
        uint8_t *nm = realloc(d->mask, cap);
        if (nm) d->mask = nm;
        if (!nt || !nm) return PD_ENOMEM;
        b->tok_cap = cap;
    }
    if (d->n == b->ex_cap) {
        int cap = b->ex_cap ? 2 * b->ex_cap : 256;
        size_t *ns = realloc(b->start, (size_t)cap * sizeof *ns);
        if (ns) b->start = ns;
        int *nl = realloc(d->line, (size_t)cap * sizeof *nl);
        if (nl) d->line = nl;
        if (!ns || !nl) return PD_ENOMEM;
        b->ex_cap = cap;
    }
    memcpy(d->tokens + d->n_tokens, t, (size_t)n * sizeof *t);
    memcpy(d->mask + d->n_tokens, mk, (size_t)n);
    for (int j = 0; j < n; j++) d->n_targets += mk[j];
    b->start[d->n] = d->n_tokens;
    d->line[d->n] = line;
    d->n++;
    d->n_tokens += (size_t)n;
    if (n > d->max_len) d->max_len = n;
    return PD_OK;
}

/* Reads a string field: 1 with *s and *len when present, 0 when absent, -1 (why
 * filled) when present with another type. */
static int get_string(json_t *obj, const char *key, const char **s, size_t *len, char *why,
                      size_t cap)
{
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_string(v)) {
        snprintf(why, cap, "\"%s\" must be a string", key);
        return -1;
    }
    *s = json_string_value(v);
    *len = json_string_length(v);
    return 1;
}

/* ---- chat lines ---- */

static int is_role(const char *r)
{
    static const char *ROLES[] = {"system", "developer", "user", "assistant", "tool", "function"};
    for (size_t i = 0; i < sizeof ROLES / sizeof *ROLES; i++)
        if (!strcmp(r, ROLES[i])) return 1;
    return 0;
}

/* Renders messages[0..n) (a new array of the first n) into *out. */
static int render_first(builder *b, json_t *messages, size_t n, json_t *tools, int agp, char **out,
                        size_t *len, char *why, size_t cap)
{
    json_t *part = json_array();
    if (!part) return PD_ENOMEM;
    for (size_t i = 0; i < n; i++) json_array_append(part, json_array_get(messages, i));
    pd_chat_params cp = b->cp;
    cp.add_generation_prompt = agp;
    cp.tools = tools;
    pd_err e;
    int rc = pd_chat_render_parsed(b->chat, part, &cp, out, len, &e);
    json_decref(part);
    if (rc == PD_ENOMEM) return rc;
    if (rc < 0) {
        snprintf(why, cap, "%s", e.msg);
        return PD_EFORMAT;
    }
    return PD_OK;
}

/* A {"messages": [...], "tools"?} line: the conversation rendered with the
 * chat template; the targets are the tokens of the assistant messages of
 * weight 1 (the default), each located by rendering prefixes of the
 * conversation (see dataset.h). */
static int chat_line(builder *b, json_t *obj, const pd_tokenizer *tok, const pd_dataset_params *p,
                     char *why, size_t cap)
{
    json_t *messages = json_object_get(obj, "messages"), *tools = json_object_get(obj, "tools");
    if (json_object_get(obj, "prompt") || json_object_get(obj, "completion") ||
        json_object_get(obj, "text")) {
        snprintf(why, cap, "has both \"messages\" and \"prompt\"/\"completion\"/\"text\"");
        return PD_EFORMAT;
    }
    if (!json_is_array(messages) || !json_array_size(messages)) {
        snprintf(why, cap, "\"messages\" must be a non-empty array");
        return PD_EFORMAT;
    }
    if (tools && !json_is_array(tools) && !json_is_null(tools)) {
        snprintf(why, cap, "\"tools\" must be an array");
        return PD_EFORMAT;
    }
    if (!json_is_array(tools)) tools = NULL;
    size_t n = json_array_size(messages), i;
    int learned = 0;
    json_t *m;
    json_array_foreach(messages, i, m) {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        json_t *w = json_object_get(m, "weight");
        if (!json_is_object(m) || !json_is_string(role) || !is_role(json_string_value(role))) {
            snprintf(why, cap, "messages[%zu]: \"role\" must be one of system, developer, user, "
                               "assistant, tool", i);
            return PD_EFORMAT;
        }
        int assistant = !strcmp(json_string_value(role), "assistant");
        int calls = json_is_array(json_object_get(m, "tool_calls"));
        if (!json_is_string(content) && !json_is_array(content) &&
            !(assistant && calls && (!content || json_is_null(content)))) {
            snprintf(why, cap, "messages[%zu]: \"content\" must be a string (or an array of text "
                               "parts)", i);
            return PD_EFORMAT;
        }
        if (w && (!assistant || !json_is_integer(w) ||
                  (json_integer_value(w) != 0 && json_integer_value(w) != 1))) {
            snprintf(why, cap, "messages[%zu]: \"weight\" must be 0 or 1, on assistant messages", i);
            return PD_EFORMAT;
        }
        learned += assistant && (!w || json_integer_value(w) == 1);
    }
    if (!learned) {
        snprintf(why, cap, "no assistant message to learn (of weight 1)");
        return PD_EFORMAT;
    }
    if (!b->chat) {
        const char *src = p->chat_template ? p->chat_template : pd_chat_model_template(tok);
        if (!src) src = pd_chat_builtin(PD_CHAT_DEFAULT);
        pd_err e;
        int rc = pd_jinja_parse(src, strlen(src), &b->chat, &e);
        if (rc == PD_ENOMEM) return rc;
        if (rc < 0) {
            snprintf(why, cap, "chat template: %.400s", e.msg);
            return PD_EFORMAT;
        }
        b->cp = pd_chat_default_params();
        pd_chat_model_tokens(tok, &b->cp);
        b->cp.now = p->now;
    }
    char *full = NULL, *part = NULL;
    size_t flen, plen;
    size_t *spans = malloc(2 * (size_t)learned * sizeof *spans);
    int rc = spans ? render_first(b, messages, n, tools, 0, &full, &flen, why, cap) : PD_ENOMEM;
    int ns = 0;
    json_array_foreach(messages, i, m) {
        if (rc < 0) break;
        json_t *w = json_object_get(m, "weight");
        if (strcmp(json_string_value(json_object_get(m, "role")), "assistant") ||
            (w && json_integer_value(w) == 0))
            continue;
        for (int end = 0; end < 2 && rc == PD_OK; end++) { /* its start, then its end */
            rc = render_first(b, messages, i + (size_t)end, tools, !end, &part, &plen, why, cap);
            if (rc < 0) break;
            if (plen > flen || memcmp(part, full, plen)) {
                snprintf(why, cap, "messages[%zu]: the chat template does not render the "
                                   "conversation up to this message as a beginning of the whole "
                                   "one, so its tokens cannot be found", i);
                rc = PD_EFORMAT;
            }
            spans[2 * ns + end] = plen;
            free(part);
            part = NULL;
        }
        if (rc == PD_OK && spans[2 * ns + 1] <= spans[2 * ns]) {
            snprintf(why, cap, "messages[%zu]: the assistant message renders to no text", i);
            rc = PD_EFORMAT;
        }
        ns++;
    }
    int32_t *t = NULL;
    uint8_t *mk = NULL;
    int nt = 0;
    if (rc == PD_OK) {
        size_t min_tokens = 1 + (flen + (size_t)b->max_piece - 1) / (size_t)b->max_piece;
        if (min_tokens > (size_t)p->max_tokens) {
            snprintf(why, cap, "too long: more than %d tokens with BOS, the most that fit after "
                               "the prefix", p->max_tokens);
            rc = PD_EFORMAT;
        }
    }
    /* When the encoder adds BOS, a BOS text the template put first is
     * dropped (else it would be there twice). */
    size_t skip = b->cp.bos_token && pd_tokenizer_add_bos(tok) ? strlen(b->cp.bos_token) : 0;
    if (rc == PD_OK && (!skip || flen < skip || memcmp(full, b->cp.bos_token, skip))) skip = 0;
    for (int k = 0; rc == PD_OK && k < 2 * ns; k++) spans[k] = spans[k] > skip ? spans[k] - skip : 0;
    if (rc == PD_OK) {
        pd_err e;
        rc = encode_spans(tok, full + skip, flen - skip, spans, ns, 1, p->first_target, &t, &mk,
                          &nt, &e);
        if (rc < 0) snprintf(why, cap, "%s", e.msg);
    }
    if (rc == PD_OK && nt > p->max_tokens) {
        snprintf(why, cap, "too long: %d tokens with BOS, more than the %d that fit after the "
                           "prefix", nt, p->max_tokens);
        rc = PD_EFORMAT;
    }
    if (rc == PD_OK) {
        rc = builder_add(b, t, mk, nt, b->lineno);
        if (rc < 0) snprintf(why, cap, "out of memory");
    }
    free(t);
    free(mk);
    free(full);
    free(spans);
    return rc;
}

/* Parses and tokenizes one non-blank line. Returns PD_OK (example added),
 * PD_EFORMAT with the reason in why, or PD_ENOMEM. */
static int parse_line(builder *b, const char *line, size_t len, int lineno,
                      const pd_tokenizer *tok, const pd_dataset_params *p, char *why,
                      size_t cap)
{
    if (len > PD_DATASET_MAX_LINE) {
        snprintf(why, cap, "the line is longer than %u bytes", PD_DATASET_MAX_LINE);
        return PD_EFORMAT;
    }
    json_error_t je;
    json_t *obj = json_loadb(line, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!obj) {
        snprintf(why, cap, "not valid JSON: %s (column %d)", je.text, je.column);
        return PD_EFORMAT;
    }
    int rc = PD_EFORMAT;
    const char *prompt = NULL, *completion = NULL, *text = NULL;
    size_t plen = 0, clen = 0, tlen = 0;
    int hp, hc, ht;
    if (!json_is_object(obj)) {
        snprintf(why, cap, "not a JSON object");
        goto done;
    }
    if (json_object_get(obj, "messages")) {
        b->lineno = lineno;
        rc = chat_line(b, obj, tok, p, why, cap);
        goto done;
    }
    if ((hp = get_string(obj, "prompt", &prompt, &plen, why, cap)) < 0 ||
        (hc = get_string(obj, "completion", &completion, &clen, why, cap)) < 0 ||
        (ht = get_string(obj, "text", &text, &tlen, why, cap)) < 0)
        goto done;
    if (ht && (hp || hc)) {
        snprintf(why, cap, "has both \"text\" and \"prompt\"/\"completion\"");
        goto done;
    }
    if (!ht && !hp && !hc) {
        snprintf(why, cap, "needs \"prompt\" and \"completion\", or \"text\"");
        goto done;
    }
    if (!ht && !hp) {
        snprintf(why, cap, "\"prompt\" is missing");
        goto done;
    }
    if (!ht && !hc) {
        snprintf(why, cap, "\"completion\" is missing");
        goto done;
    }
    if (ht) {
        completion = text;
        clen = tlen;
        prompt = "";
        plen = 0;
    }
    if (clen == 0) {
        snprintf(why, cap, "\"%s\" is empty", ht ? "text" : "completion");
        goto done;
    }
    /* A token holds at most max_piece bytes: skip the encoder on a text that
     * cannot fit anyway. */
    size_t min_tokens = 1 + (plen + clen + 1 + (size_t)b->max_piece - 1) / (size_t)b->max_piece;
    if (min_tokens > (size_t)p->max_tokens) {
        snprintf(why, cap, "too long: more than %d tokens with BOS, the most that fit after "
                           "the prefix", p->max_tokens);
        goto done;
    }
    int32_t *t;
    uint8_t *mk;
    int n;
    pd_err e;
    rc = pd_dataset_encode(tok, prompt, plen, completion, clen, p->first_target, &t, &mk, &n,
                           &e);
    if (rc < 0) {
        snprintf(why, cap, "%s", e.msg);
        goto done;
    }
    if (n > p->max_tokens) {
        snprintf(why, cap, "too long: %d tokens with BOS, more than the %d that fit after the "
                           "prefix", n, p->max_tokens);
        rc = PD_EFORMAT;
    } else {
        rc = builder_add(b, t, mk, n, lineno);
        if (rc < 0) snprintf(why, cap, "out of memory");
    }
    free(t);
    free(mk);
done:
    json_decref(obj);
    return rc;
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

void pd_dataset_free(pd_dataset *d)
{
    if (!d) return;
    free(d->ex);
    free(d->line);
    free(d->tokens);
    free(d->mask);
    free(d);
}

int pd_dataset_parse(const char *data, size_t size, const char *name, const pd_tokenizer *tok,
                     const pd_dataset_params *p, pd_dataset **out, pd_err *err)
{
    PD_ASSERT(tok && p && out && (data || !size));
    PD_ASSERT(p->max_tokens >= 2 && p->first_target >= 1);
    *out = NULL;
    if (!name) name = "data";
    builder b = {0};
    b.d = calloc(1, sizeof *b.d);
    if (!b.d) return pd_err_set(err, PD_ENOMEM, "%s: out of memory", name);
    b.max_piece = 1;
    for (int i = 0, nv = pd_tokenizer_vocab_size(tok); i < nv; i++) {
        const char *s = pd_tokenizer_piece(tok, i);
        int l = s ? (int)strlen(s) : 0;
        if (l > b.max_piece) b.max_piece = l;
    }
    int rc = PD_OK;
    size_t pos = 0;
    if (size >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) pos = 3; /* UTF-8 byte order mark */
    for (int lineno = 1; pos < size; lineno++) {
        const char *line = data + pos;
        const char *nl = memchr(line, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - line) : size - pos;
        pos += len + (nl ? 1 : 0);
        if (len && line[len - 1] == '\r') len--;
        if (is_blank(line, len)) continue;
        if (b.d->n == PD_DATASET_MAX_EXAMPLES) {
            rc = pd_err_set(err, PD_ERANGE, "%s:%d: more than %d examples", name, lineno,
                            PD_DATASET_MAX_EXAMPLES);
            goto fail;
        }
        char why[PD_ERR_MSG_MAX];
        rc = parse_line(&b, line, len, lineno, tok, p, why, sizeof why);
        if (rc == PD_EFORMAT && p->skip_bad_lines) {
            PD_LOGW("%s:%d: %s (line skipped)", name, lineno, why);
            b.d->n_skipped++;
            rc = PD_OK;
        } else if (rc < 0) {
            pd_err_set(err, rc, "%s:%d: %s", name, lineno, why);
            goto fail;
        }
    }
    if (b.d->n == 0) {
        rc = pd_err_set(err, PD_EFORMAT, "%s: no usable examples%s", name,
                        b.d->n_skipped ? " (every line was bad)" : "");
        goto fail;
    }
    b.d->ex = malloc((size_t)b.d->n * sizeof *b.d->ex);
    if (!b.d->ex) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", name);
        goto fail;
    }
    for (int i = 0; i < b.d->n; i++) {
        size_t end = i + 1 < b.d->n ? b.start[i + 1] : b.d->n_tokens;
        b.d->ex[i] = (pd_example){.tokens = b.d->tokens + b.start[i],
                                  .loss_mask = b.d->mask + b.start[i],
                                  .n = (int)(end - b.start[i])};
    }
    free(b.start);
    pd_jinja_free(b.chat);
    *out = b.d;
    return PD_OK;
fail:
    free(b.start);
    pd_jinja_free(b.chat);
    pd_dataset_free(b.d);
    return rc;
}

int pd_dataset_load(const char *path, const pd_tokenizer *tok, const pd_dataset_params *p,
                    pd_dataset **out, pd_err *err)
{
    PD_ASSERT(path && out);
    *out = NULL;
    void *data;
    size_t size;
    int rc = pd_map_file(path, &data, &size, err);
    if (rc < 0) return rc;
    rc = pd_dataset_parse(data, size, path, tok, p, out, err);
    pd_unmap(data, size);
    return rc;
}

int pd_dataset_split(int n, double fraction, uint64_t seed, int **train, int *n_train,
                     int **valid, int *n_valid, pd_err *err)
{
    PD_ASSERT(n >= 1 && train && n_train && valid && n_valid);
    PD_ASSERT(fraction >= 0.0 && fraction < 1.0);
    *train = *valid = NULL;
    *n_train = *n_valid = 0;
    int nv = (int)floor(fraction * n + 0.5);
    if (fraction > 0.0 && nv < 1) nv = 1;
    if (nv > n - 1) nv = n - 1;
    int *order = malloc((size_t)n * sizeof *order);
    uint8_t *is_valid = calloc((size_t)n, 1);
    int *tr = malloc((size_t)n * sizeof *tr);
    int *va = nv ? malloc((size_t)nv * sizeof *va) : NULL;
    if (!order || !is_valid || !tr || (nv && !va)) {
        free(order);
        free(is_valid);
        free(tr);
        free(va);
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    }
    pd_rng r;
    pd_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) order[i] = i;
    pd_rng_shuffle(&r, order, n);
    for (int i = 0; i < nv; i++) is_valid[order[i]] = 1;
    int a = 0, c = 0;
    for (int i = 0; i < n; i++) {
        if (is_valid[i])
            va[c++] = i;
        else
            tr[a++] = i;
    }
    free(order);
    free(is_valid);
    *train = tr;
    *n_train = a;
    *valid = va;
    *n_valid = c;
    return PD_OK;
}
