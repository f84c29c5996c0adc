/* jinja_lex.c — the tokenizer of the Jinja interpreter: the source is first
 * preprocessed as @huggingface/jinja does with lstrip_blocks and trim_blocks
 * (a trailing newline dropped, spaces before a block tag at the start of a
 * line dropped, the newline after a block tag dropped, transformers'
 * {% generation %} tags removed), then cut into tokens. Every token keeps the
 * line and column of its first byte in the original source. */
#include <string.h>

#include "jinja_internal.h"

typedef struct {
    char *s;       /* preprocessed text */
    uint32_t *map; /* (n + 1) original offset of each byte (sources < 4 GiB) */
    size_t n;
} ptext;

static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static int is_word(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static ptext pt_new(jarena *a, size_t cap)
{
    ptext p = {pd__ja_alloc(a, cap + 1), pd__ja_alloc(a, (cap + 1) * sizeof(uint32_t)), 0};
    return p;
}

/* The passes below only delete: each rewrites its input in place (the
 * write position never passes the read position). */
static ptext pt_same(ptext in)
{
    ptext p = {in.s, in.map, 0};
    return p;
}

static void pt_put(ptext *p, char c, size_t orig)
{
    p->map[p->n] = (uint32_t)orig;
    p->s[p->n++] = c;
}

/* ^[ \t]*({[#%-]) with the m flag: drop the blanks. */
static ptext lstrip_blocks(ptext in)
{
    ptext out = pt_same(in);
    size_t i = 0;
    while (i < in.n) {
        if (i == 0 || in.s[i - 1] == '\n' || in.s[i - 1] == '\r') {
            size_t j = i;
            while (j < in.n && (in.s[j] == ' ' || in.s[j] == '\t')) j++;
            if (j + 1 < in.n && in.s[j] == '{' &&
                (in.s[j + 1] == '#' || in.s[j + 1] == '%' || in.s[j + 1] == '-'))
                i = j;
        }
        pt_put(&out, in.s[i], in.map[i]);
        i++;
    }
    out.map[out.n] = in.map[in.n];
    return out;
}

/* ([#%-]})\n: drop the newline. */
static ptext trim_blocks(ptext in)
{
    ptext out = pt_same(in);
    for (size_t i = 0; i < in.n; i++) {
        pt_put(&out, in.s[i], in.map[i]);
        if (i + 2 < in.n && (in.s[i] == '#' || in.s[i] == '%' || in.s[i] == '-') &&
            in.s[i + 1] == '}' && in.s[i + 2] == '\n') {
            pt_put(&out, '}', in.map[i + 1]);
            i += 2;
        }
    }
    out.map[out.n] = in.map[in.n];
    return out;
}

/* Length of a {%-? generation|endgeneration -?%} tag at s[i], 0 if none;
  * ls and rs: its hyphens. */
static size_t generation_tag(const ptext *p, size_t i, int *ls, int *rs)
{
    const char *s = p->s;
    size_t n = p->n, j = i;
    if (j + 1 >= n || s[j] != '{' || s[j + 1] != '%') return 0;
    j += 2;
    *ls = j < n && s[j] == '-';
    if (*ls) j++;
    while (j < n && is_space((unsigned char)s[j])) j++;
    if (n - j >= 3 && !memcmp(s + j, "end", 3)) j += 3;
    if (n - j < 10 || memcmp(s + j, "generation", 10)) return 0;
    j += 10;
    while (j < n && is_space((unsigned char)s[j])) j++;
    *rs = j < n && s[j] == '-';
    if (*rs) j++;
    if (j + 1 >= n || s[j] != '%' || s[j + 1] != '}') return 0;
    return j + 2 - i;
}

/* (\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*) -> before unless {%-,
 * after unless -%}. */
static ptext generation_tags(ptext in)
{
    if (!memmem(in.s, in.n, "generation", 10)) return in;
    ptext out = pt_same(in);
    size_t i = 0, kept = 0; /* out holds in[0..kept) minus removed parts */
    while (i < in.n) {
        int ls, rs;
        size_t len = generation_tag(&in, i, &ls, &rs);
        if (!len) {
            pt_put(&out, in.s[i], in.map[i]);
            i++;
            continue;
        }
        if (ls) /* drop the blanks already copied, back to the last match */
            while (out.n > kept && is_space((unsigned char)out.s[out.n - 1])) out.n--;
        i += len;
        size_t j = i;
        while (j < in.n && is_space((unsigned char)in.s[j])) j++;
        if (!rs)
            for (; i < j; i++) pt_put(&out, in.s[i], in.map[i]);
        i = j;
        kept = out.n;
    }
    out.map[out.n] = in.map[in.n];
    return out;
}

typedef struct {
    jarena *a;
    pd_err *err;
    const char *orig;
    ptext p;
    size_t pos;
    jtoken *t;
    int n, cap;
    size_t lc_off; /* line/column cursor in the original */
    int lc_line, lc_col;
} lexer;

static void where(lexer *L, size_t ppos, int *line, int *col)
{
    size_t off = L->p.map[ppos > L->p.n ? L->p.n : ppos];
    if (off < L->lc_off) L->lc_off = 0, L->lc_line = 1, L->lc_col = 1;
    for (; L->lc_off < off; L->lc_off++) {
        if (L->orig[L->lc_off] == '\n') L->lc_line++, L->lc_col = 1;
        else if (((unsigned char)L->orig[L->lc_off] & 0xC0) != 0x80) L->lc_col++;
    }
    *line = L->lc_line;
    *col = L->lc_col;
}

static _Noreturn void lex_fail(lexer *L, size_t ppos, const char *what, char c)
{
    int line, col;
    where(L, ppos, &line, &col);
    if (c) pd_err_set(L->err, PD_EFORMAT, "line %d, column %d: %s '%c'", line, col, what, c);
    else pd_err_set(L->err, PD_EFORMAT, "line %d, column %d: %s", line, col, what);
    longjmp(*L->a->fail, 1);
}

static void push(lexer *L, int type, const char *s, size_t n, size_t ppos)
{
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 64;
        jtoken *t = pd__ja_alloc(L->a, (size_t)cap * sizeof *t);
        if (L->n) memcpy(t, L->t, (size_t)L->n * sizeof *t);
        L->t = t;
        L->cap = cap;
    }
    jtoken *t = &L->t[L->n++];
    t->type = type;
    t->s = pd__ja_strndup(L->a, s, n);
    t->n = n;
    where(L, ppos, &t->line, &t->col);
}

static int last_type(const lexer *L) { return L->n ? L->t[L->n - 1].type : -1; }

/* JavaScript's String.prototype.trimEnd over the ASCII and the common
 * Unicode blanks. */
static size_t js_trim_end(const char *s, size_t n)
{
    for (;;) {
        if (n && is_space((unsigned char)s[n - 1])) { n--; continue; }
        if (n >= 2 && (unsigned char)s[n - 2] == 0xC2 && (unsigned char)s[n - 1] == 0xA0) { n -= 2; continue; }
        if (n >= 3) {
            const unsigned char *u = (const unsigned char *)s + n - 3;
            unsigned cp = ((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu);
            if ((u[0] & 0xF0) == 0xE0 && (u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80 &&
                (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
                 cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF)) { n -= 3; continue; }
        }
        return n;
    }
}

static void strip_trailing(lexer *L)
{
    if (last_type(L) != TK_TEXT) return;
    jtoken *t = &L->t[L->n - 1];
    t->n = js_trim_end(t->s, t->n);
    ((char *)t->s)[t->n] = 0;
    if (!t->n) L->n--;
}

static void skip_leading(lexer *L)
{
    while (L->pos < L->p.n && is_space((unsigned char)L->p.s[L->pos])) L->pos++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    o[0] = (char)(0xE0 | cp >> 12);
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* A string literal's body up to the closing quote q, escapes decoded. */
static void lex_string(lexer *L, char q, size_t start)
{
    const char *s = L->p.s;
    size_t n = L->p.n;
    size_t end = L->pos; /* the body is at most as long as the source up to the quote */
    while (end < n && s[end] != q) end += s[end] == '\\' ? 2 : 1;
    if (end > n) end = n;
    char *buf = pd__ja_alloc(L->a, end - L->pos + 4);
    size_t o = 0;
    while (L->pos < n && s[L->pos] != q) {
        if (s[L->pos] == '\\') {
            if (++L->pos >= n) lex_fail(L, start, "Unexpected end of input in a string", 0);
            char e = s[L->pos++];
            if (e == 'x' || e == 'u') {
                size_t len = e == 'x' ? 2 : 4;
                unsigned cp = 0;
                for (size_t k = 0; k < len; k++) {
                    int h = L->pos + k < n ? hexval(s[L->pos + k]) : -1;
                    if (h < 0) lex_fail(L, L->pos - 2, "Invalid hexadecimal escape sequence", 0);
                    cp = cp * 16 + (unsigned)h;
                }
                if (cp >= 0xD800 && cp <= 0xDFFF)
                    lex_fail(L, L->pos - 2, "unsupported: a surrogate in a \\u escape", 0);
                o += put_utf8(buf + o, cp);
                L->pos += len;
                continue;
            }
            char c;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'v': c = '\v'; break;
            case '\'': case '"': case '\\': c = e; break;
            default: lex_fail(L, L->pos - 2, "Unexpected escaped character", e);
            }
            buf[o++] = c;
            continue;
        }
        buf[o++] = s[L->pos++];
        if (L->pos >= n) lex_fail(L, start, "Unexpected end of input in a string", 0);
    }
    if (L->pos >= n) lex_fail(L, start, "Unexpected end of input in a string", 0);
    L->pos++; /* the closing quote */
    push(L, TK_STR, buf, o, start);
}

static size_t digits(const lexer *L, size_t i)
{
    while (i < L->p.n && is_digit((unsigned char)L->p.s[i])) i++;
    return i;
}

static const struct { const char *seq; int type; } TABLE[] = {
    {"{%", TK_OPEN_STMT}, {"%}", TK_CLOSE_STMT}, {"{{", TK_OPEN_EXPR}, {"}}", TK_CLOSE_EXPR},
    {"(", TK_LPAREN}, {")", TK_RPAREN}, {"{", TK_LBRACE}, {"}", TK_RBRACE},
    {"[", TK_LBRACKET}, {"]", TK_RBRACKET}, {",", TK_COMMA}, {".", TK_DOT}, {":", TK_COLON},
    {"|", TK_PIPE}, {"<=", TK_CMP}, {">=", TK_CMP}, {"==", TK_CMP}, {"!=", TK_CMP},
    {"<", TK_CMP}, {">", TK_CMP}, {"+", TK_ADD}, {"-", TK_ADD}, {"~", TK_ADD},
    {"**", TK_POW}, {"*", TK_MUL}, {"//", TK_MUL}, {"/", TK_MUL}, {"%", TK_MUL},
    {"=", TK_EQUALS},
};

static int at(const lexer *L, const char *seq)
{
    if (L->pos >= L->p.n || L->p.s[L->pos] != seq[0]) return 0; /* most calls end here */
    size_t k = strlen(seq);
    return L->p.n - L->pos >= k && !memcmp(L->p.s + L->pos, seq, k);
}

int pd__jinja_lex(jarena *a, const char *src, size_t len, jtoken **toks, int *ntoks, pd_err *err)
{
    lexer L = {.a = a, .err = err, .orig = src, .lc_line = 1, .lc_col = 1};
    ptext p = pt_new(a, len);
    for (size_t i = 0; i < len; i++) pt_put(&p, src[i], i);
    p.map[p.n] = len;
    if (p.n && p.s[p.n - 1] == '\n') p.n--, p.map[p.n] = len;
    p = generation_tags(trim_blocks(lstrip_blocks(p)));
    L.p = p;
    const char *s = p.s;
    size_t n = p.n;
    int depth = 0; /* curly brackets open inside an expression */

    while (L.pos < n) {
        int lt = last_type(&L);
        if (lt < 0 || lt == TK_CLOSE_STMT || lt == TK_CLOSE_EXPR || lt == TK_COMMENT) {
            size_t st = L.pos;
            while (L.pos < n && !(s[L.pos] == '{' && L.pos + 1 < n &&
                                  (s[L.pos + 1] == '%' || s[L.pos + 1] == '{' || s[L.pos + 1] == '#')))
                L.pos++;
            if (L.pos > st) {
                push(&L, TK_TEXT, s + st, L.pos - st, st);
                continue;
            }
        }
        if (at(&L, "{#")) {
            size_t st = L.pos;
            L.pos += 2;
            int before = L.pos < n && s[L.pos] == '-';
            if (before) L.pos++;
            size_t cs = L.pos;
            while (!(L.pos + 1 < n && s[L.pos] == '#' && s[L.pos + 1] == '}')) {
                if (L.pos + 2 >= n) lex_fail(&L, st, "Missing end of comment tag", 0);
                L.pos++;
            }
            size_t ce = L.pos;
            int after = ce > cs && s[ce - 1] == '-';
            if (before) strip_trailing(&L);
            push(&L, TK_COMMENT, s + cs, ce - cs - (size_t)after, st);
            L.pos += 2;
            if (after) skip_leading(&L);
            continue;
        }
        if (at(&L, "{%-")) {
            strip_trailing(&L);
            push(&L, TK_OPEN_STMT, "{%", 2, L.pos);
            L.pos += 3;
            continue;
        }
        if (at(&L, "{{-")) {
            strip_trailing(&L);
            push(&L, TK_OPEN_EXPR, "{{", 2, L.pos);
            depth = 0;
            L.pos += 3;
            continue;
        }
        skip_leading(&L);
        if (at(&L, "-%}")) {
            push(&L, TK_CLOSE_STMT, "%}", 2, L.pos);
            L.pos += 3;
            skip_leading(&L);
            continue;
        }
        if (at(&L, "-}}")) {
            push(&L, TK_CLOSE_EXPR, "}}", 2, L.pos);
            L.pos += 3;
            skip_leading(&L);
            continue;
        }
        if (L.pos >= n) break; /* blanks at the end of an unclosed tag */
        char c = s[L.pos];
        if (c == '-' || c == '+') {
            lt = last_type(&L);
            if (lt < 0 || lt == TK_TEXT) lex_fail(&L, L.pos, "Unexpected character", c);
            if (lt != TK_IDENT && lt != TK_NUM && lt != TK_STR && lt != TK_RPAREN &&
                lt != TK_RBRACKET) {
                size_t st = L.pos++;
                size_t e = digits(&L, L.pos);
                if (e > L.pos && e + 1 < n && s[e] == '.' && is_digit((unsigned char)s[e + 1]))
                    e = digits(&L, e + 1);
                push(&L, e > L.pos ? TK_NUM : TK_UNARY, s + st, e - st, st);
                L.pos = e;
                continue;
            }
        }
        int matched = 0;
        for (size_t k = 0; k < sizeof TABLE / sizeof TABLE[0]; k++) {
            if (TABLE[k].type == TK_CLOSE_EXPR && depth > 0) continue;
            if (!at(&L, TABLE[k].seq)) continue;
            size_t sl = strlen(TABLE[k].seq);
            push(&L, TABLE[k].type, s + L.pos, sl, L.pos);
            if (TABLE[k].type == TK_OPEN_EXPR) depth = 0;
            else if (TABLE[k].type == TK_LBRACE) depth++;
            else if (TABLE[k].type == TK_RBRACE) depth--;
            L.pos += sl;
            matched = 1;
            break;
        }
        if (matched) continue;
        if (c == '\'' || c == '"') {
            size_t st = L.pos++;
            lex_string(&L, c, st);
            continue;
        }
        if (is_digit((unsigned char)c)) {
            size_t st = L.pos, e = digits(&L, L.pos);
            if (last_type(&L) != TK_DOT && e + 1 < n && s[e] == '.' &&
                is_digit((unsigned char)s[e + 1]))
                e = digits(&L, e + 1);
            push(&L, TK_NUM, s + st, e - st, st);
            L.pos = e;
            continue;
        }
        if (is_word((unsigned char)c)) {
            size_t st = L.pos;
            while (L.pos < n && is_word((unsigned char)s[L.pos])) L.pos++;
            push(&L, TK_IDENT, s + st, L.pos - st, st);
            continue;
        }
        lex_fail(&L, L.pos, "Unexpected character", c);
    }
    *toks = L.t;
    *ntoks = L.n;
    return PD_OK;
}
