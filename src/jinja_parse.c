/* jinja_parse.c — the parser of the Jinja interpreter: tokens into a syntax
 * tree, with the grammar and precedence of @huggingface/jinja (ternary, or,
 * and, not, comparisons and in, + - ~, * / // %, **, is-tests, filters, unary
 * signs, calls and member access). Nesting is bounded by max_depth so that no
 * input can exhaust the stack. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_internal.h"

typedef struct {
    jarena *a;
    pd_err *err;
    const jtoken *t;
    int n, cur;
    int depth, max_depth;
} parser;

static _Noreturn void fail(parser *P, const char *fmt, const char *arg)
{
    const jtoken *t = P->cur < P->n ? &P->t[P->cur] : P->n ? &P->t[P->n - 1] : NULL;
    char what[256];
    snprintf(what, sizeof what, fmt, arg ? arg : "");
    if (t) pd_err_set(P->err, PD_EFORMAT, "line %d, column %d: %s", t->line, t->col, what);
    else pd_err_set(P->err, PD_EFORMAT, "line 1, column 1: %s", what);
    longjmp(*P->a->fail, 1);
}

static const char *TNAME[] = {
    "text", "number", "string", "identifier", "'='", "'('", "')'", "'{%'", "'%}'", "'{{'",
    "'}}'", "'['", "']'", "'{'", "'}'", "','", "'.'", "':'", "'|'", "an additive operator",
    "a multiplicative operator", "'**'", "a comparison", "a unary operator", "a comment"};

static int is(parser *P, int type) { return P->cur < P->n && P->t[P->cur].type == type; }
static int is_ident(parser *P, int off, const char *name)
{
    int i = P->cur + off;
    return i < P->n && P->t[i].type == TK_IDENT && !strcmp(P->t[i].s, name);
}
static int is_stmt(parser *P, const char *name)
{
    return is(P, TK_OPEN_STMT) && is_ident(P, 1, name);
}

static const jtoken *expect(parser *P, int type, const char *what)
{
    if (P->cur >= P->n) fail(P, "Unexpected end of template: expected %s", what);
    if (P->t[P->cur].type != type) {
        char m[128];
        snprintf(m, sizeof m, "expected %s, got %s", what, TNAME[P->t[P->cur].type]);
        fail(P, "%s", m);
    }
    return &P->t[P->cur++];
}

static void expect_ident(parser *P, const char *name)
{
    if (!is_ident(P, 0, name)) fail(P, "Expected '%s'", name);
    P->cur++;
}

static jnode *node(parser *P, int kind, const jtoken *at)
{
    jnode *x = pd__ja_alloc(P->a, sizeof *x);
    x->kind = kind;
    if (!at) at = P->cur < P->n ? &P->t[P->cur] : &P->t[P->n - 1];
    x->line = at->line;
    x->col = at->col;
    return x;
}

/* A growing list of nodes. */
typedef struct { jnode **v; int n, cap; } nlist;
static void nl_push(parser *P, nlist *l, jnode *x)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        jnode **v = pd__ja_alloc(P->a, (size_t)cap * sizeof *v);
        if (l->n) memcpy(v, l->v, (size_t)l->n * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static void enter(parser *P)
{
    if (++P->depth > P->max_depth) fail(P, "nesting deeper than %s levels", "the limit of");
}

static jnode *parse_any(parser *P);
static jnode *parse_expr(parser *P);
static jnode *parse_primary(parser *P);
static jnode *parse_call(parser *P, jnode *callee);
static jnode *parse_member(parser *P, jnode *obj);

/* Statements until one of the names opens a statement (the last one named
 * closes the block). */
static void parse_body(parser *P, nlist *l, const char *n1, const char *n2, const char *n3)
{
    while (!(is_stmt(P, n1) || (n2 && is_stmt(P, n2)) || (n3 && is_stmt(P, n3)))) {
        if (P->cur >= P->n)
            fail(P, "Unexpected end of template: missing {%% %s %%}", n3 ? n3 : n2 ? n2 : n1);
        nl_push(P, l, parse_any(P));
    }
}

/* parseArgumentsList: positional, name=value, *spread, **spread. */
static nlist parse_args(parser *P, int params)
{
    nlist args = {0};
    expect(P, TK_LPAREN, "'(' opening the arguments");
    int saw_kw = 0, saw_spread = 0;
    while (!is(P, TK_RPAREN)) {
        if (P->cur >= P->n) fail(P, "Unexpected end of template in an argument list%s", NULL);
        int kwspread = is(P, TK_POW);
        int spread = is(P, TK_MUL) && !strcmp(P->t[P->cur].s, "*");
        if (params && (kwspread || spread))
            fail(P, "Argument unpacking is not allowed in parameter declarations%s", NULL);
        if (kwspread) {
            jnode *x = node(P, N_KWSPREAD, NULL);
            P->cur++;
            x->a = parse_expr(P);
            nl_push(P, &args, x);
            if (is(P, TK_COMMA)) P->cur++;
            if (!is(P, TK_RPAREN)) fail(P, "`**` must be applied to the final argument%s", NULL);
            break;
        }
        jnode *arg;
        if (spread) {
            if (saw_spread) fail(P, "Only one `*` argument unpacking is allowed%s", NULL);
            saw_spread = 1;
            arg = node(P, N_SPREAD, NULL);
            P->cur++;
            arg->a = parse_expr(P);
        } else {
            arg = parse_expr(P);
            if (is(P, TK_EQUALS)) {
                P->cur++;
                if (arg->kind != N_IDENT)
                    fail(P, "Expected identifier for %s", params ? "parameter declaration" : "keyword argument");
                jnode *kw = node(P, N_KWARG, NULL);
                kw->line = arg->line, kw->col = arg->col;
                kw->a = arg;
                kw->b = parse_expr(P);
                arg = kw;
            }
            if (params) {
                if (arg->kind != N_IDENT && arg->kind != N_KWARG)
                    fail(P, "Expected identifier for parameter declaration%s", NULL);
                const char *name = arg->kind == N_IDENT ? arg->s : arg->a->s;
                for (int i = 0; i < args.n; i++) {
                    const char *o = args.v[i]->kind == N_IDENT ? args.v[i]->s : args.v[i]->a->s;
                    if (!strcmp(o, name)) fail(P, "Duplicate parameter name: %s", name);
                }
            }
            if (arg->kind == N_KWARG) saw_kw = 1;
            else if (saw_kw)
                fail(P, "%s", params ? "Non-default argument follows default argument"
                                     : "Positional arguments must come before keyword arguments");
            else if (saw_spread)
                fail(P, "Positional arguments must not follow `*` argument unpacking%s", NULL);
        }
        nl_push(P, &args, arg);
        if (is(P, TK_COMMA)) P->cur++;
    }
    expect(P, TK_RPAREN, "')' closing the arguments");
    return args;
}

static jnode *parse_call(parser *P, jnode *callee)
{
    enter(P);
    jnode *x = node(P, N_CALL, NULL);
    x->line = callee->line, x->col = callee->col;
    x->a = callee;
    nlist args = parse_args(P, 0);
    x->k1 = args.v, x->n1 = args.n;
    x = parse_member(P, x);
    if (is(P, TK_LPAREN)) x = parse_call(P, x);
    P->depth--;
    return x;
}

static jnode *parse_member(parser *P, jnode *obj)
{
    while (is(P, TK_DOT) || is(P, TK_LBRACKET)) {
        const jtoken *op = &P->t[P->cur++];
        jnode *m = node(P, N_MEMBER, op);
        m->a = obj;
        if (op->type == TK_LBRACKET) {
            m->flag = 1;
            jnode *sl[3] = {0};
            int ns = 0, slice = 0;
            while (!is(P, TK_RBRACKET)) {
                if (P->cur >= P->n) fail(P, "Unexpected end of template in '[...]'%s", NULL);
                if (ns == 3) fail(P, "Expected 0-3 arguments for slice expression%s", NULL);
                if (is(P, TK_COLON)) {
                    sl[ns++] = NULL;
                    P->cur++;
                    slice = 1;
                } else {
                    sl[ns++] = parse_expr(P);
                    if (is(P, TK_COLON)) P->cur++, slice = 1;
                }
            }
            if (!ns) fail(P, "Expected at least one argument for member/slice expression%s", NULL);
            if (slice) {
                jnode *s = node(P, N_SLICE, op);
                s->a = sl[0], s->b = sl[1], s->c = sl[2];
                m->b = s;
            } else {
                m->b = sl[0];
            }
            expect(P, TK_RBRACKET, "']'");
        } else {
            m->b = parse_primary(P);
            if (m->b->kind != N_IDENT && m->b->kind != N_INT)
                fail(P, "Expected identifier or integer following dot operator%s", NULL);
        }
        obj = m;
    }
    return obj;
}

static jnode *parse_unary_sign(parser *P)
{
    if (P->cur < P->n && (P->t[P->cur].type == TK_UNARY || P->t[P->cur].type == TK_ADD) &&
        (!strcmp(P->t[P->cur].s, "-") || !strcmp(P->t[P->cur].s, "+"))) {
        enter(P);
        jnode *x = node(P, N_UNARY, NULL);
        x->s = P->t[P->cur++].s;
        x->a = parse_unary_sign(P);
        P->depth--;
        return x;
    }
    jnode *m = parse_member(P, parse_primary(P));
    if (is(P, TK_LPAREN)) m = parse_call(P, m);
    return m;
}

static jnode *parse_filter(parser *P)
{
    jnode *x = parse_unary_sign(P);
    while (is(P, TK_PIPE)) {
        const jtoken *op = &P->t[P->cur++];
        jnode *f = parse_primary(P);
        if (f->kind != N_IDENT) fail(P, "Expected identifier for the filter%s", NULL);
        if (is(P, TK_LPAREN)) f = parse_call(P, f);
        jnode *y = node(P, N_FILTER, op);
        y->a = x, y->b = f;
        x = y;
    }
    return x;
}

static jnode *parse_test(parser *P)
{
    jnode *x = parse_filter(P);
    while (is_ident(P, 0, "is")) {
        const jtoken *op = &P->t[P->cur++];
        int neg = is_ident(P, 0, "not");
        if (neg) P->cur++;
        jnode *t = parse_primary(P);
        if (t->kind != N_IDENT) fail(P, "Expected identifier for the test%s", NULL);
        jnode *y = node(P, N_TEST, op);
        y->a = x, y->b = t, y->flag = neg;
        x = y;
    }
    return x;
}

static jnode *binary(parser *P, const jtoken *op, const char *s, jnode *l, jnode *r)
{
    jnode *x = node(P, N_BINARY, op);
    x->s = s;
    x->a = l, x->b = r;
    return x;
}

static jnode *parse_power(parser *P)
{
    jnode *x = parse_test(P);
    while (is(P, TK_POW)) {
        const jtoken *op = &P->t[P->cur++];
        x = binary(P, op, op->s, x, parse_test(P));
    }
    return x;
}

static jnode *parse_mul(parser *P)
{
    jnode *x = parse_power(P);
    while (is(P, TK_MUL)) {
        const jtoken *op = &P->t[P->cur++];
        x = binary(P, op, op->s, x, parse_power(P));
    }
    return x;
}

static jnode *parse_add(parser *P)
{
    jnode *x = parse_mul(P);
    while (is(P, TK_ADD)) {
        const jtoken *op = &P->t[P->cur++];
        x = binary(P, op, op->s, x, parse_mul(P));
    }
    return x;
}

static jnode *parse_cmp(parser *P)
{
    jnode *x = parse_add(P);
    for (;;) {
        const jtoken *op = P->cur < P->n ? &P->t[P->cur] : NULL;
        const char *s;
        if (is_ident(P, 0, "not") && is_ident(P, 1, "in")) s = "not in", P->cur += 2;
        else if (is_ident(P, 0, "in")) s = "in", P->cur++;
        else if (is(P, TK_CMP)) s = op->s, P->cur++;
        else break;
        x = binary(P, op, s, x, parse_add(P));
    }
    return x;
}

static jnode *parse_not(parser *P)
{
    if (is_ident(P, 0, "not")) {
        enter(P);
        jnode *x = node(P, N_UNARY, NULL);
        x->s = "not";
        P->cur++;
        x->a = parse_not(P);
        P->depth--;
        return x;
    }
    return parse_cmp(P);
}

static jnode *parse_and(parser *P)
{
    jnode *x = parse_not(P);
    while (is_ident(P, 0, "and")) {
        const jtoken *op = &P->t[P->cur++];
        x = binary(P, op, "and", x, parse_not(P));
    }
    return x;
}

static jnode *parse_or(parser *P)
{
    jnode *x = parse_and(P);
    while (is_ident(P, 0, "or")) {
        const jtoken *op = &P->t[P->cur++];
        x = binary(P, op, "or", x, parse_and(P));
    }
    return x;
}

static jnode *parse_expr(parser *P)
{
    enter(P);
    jnode *a = parse_or(P);
    if (is_ident(P, 0, "if")) {
        const jtoken *op = &P->t[P->cur++];
        jnode *test = parse_or(P);
        if (is_ident(P, 0, "else")) {
            P->cur++;
            jnode *x = node(P, N_TERNARY, op);
            x->a = test, x->b = a, x->c = parse_expr(P);
            a = x;
        } else {
            jnode *x = node(P, N_SELECT, op);
            x->a = a, x->b = test;
            a = x;
        }
    }
    P->depth--;
    return a;
}

/* expr or expr, expr, ... (a tuple); primary-only for loop variables. */
static jnode *parse_sequence(parser *P, int primary)
{
    jnode *first = primary ? parse_primary(P) : parse_expr(P);
    if (!is(P, TK_COMMA)) return first;
    nlist l = {0};
    nl_push(P, &l, first);
    jnode *x = node(P, N_TUPLE, NULL);
    x->line = first->line, x->col = first->col;
    while (is(P, TK_COMMA)) {
        P->cur++;
        nl_push(P, &l, primary ? parse_primary(P) : parse_expr(P));
    }
    x->k1 = l.v, x->n1 = l.n;
    return x;
}

static jnode *parse_primary(parser *P)
{
    if (P->cur >= P->n) fail(P, "Unexpected end of template in an expression%s", NULL);
    enter(P);
    const jtoken *t = &P->t[P->cur++];
    jnode *x;
    switch (t->type) {
    case TK_NUM:
        if (memchr(t->s, '.', t->n)) {
            x = node(P, N_FLOAT, t);
            x->f = strtod(t->s, NULL);
        } else {
            x = node(P, N_INT, t);
            x->f = strtod(t->s, NULL); /* JavaScript's Number(): beyond 2^53 rounds */
            x->i = x->f >= 9.2e18 ? INT64_MAX : x->f <= -9.2e18 ? INT64_MIN : (int64_t)x->f;
        }
        break;
    case TK_STR: {
        size_t len = t->n;
        int k = P->cur;
        while (k < P->n && P->t[k].type == TK_STR) len += P->t[k++].n;
        char *s = pd__ja_alloc(P->a, len + 1), *o = s;
        memcpy(o, t->s, t->n), o += t->n;
        while (is(P, TK_STR)) memcpy(o, P->t[P->cur].s, P->t[P->cur].n), o += P->t[P->cur++].n;
        x = node(P, N_STR, t);
        x->s = s, x->n = len;
        break;
    }
    case TK_IDENT:
        x = node(P, N_IDENT, t);
        x->s = t->s, x->n = t->n;
        break;
    case TK_LPAREN:
        x = parse_sequence(P, 0);
        expect(P, TK_RPAREN, "')'");
        break;
    case TK_LBRACKET: {
        nlist l = {0};
        while (!is(P, TK_RBRACKET)) {
            if (P->cur >= P->n) fail(P, "Unexpected end of template in a list%s", NULL);
            nl_push(P, &l, parse_expr(P));
            if (is(P, TK_COMMA)) P->cur++;
        }
        P->cur++;
        x = node(P, N_ARRAY, t);
        x->k1 = l.v, x->n1 = l.n;
        break;
    }
    case TK_LBRACE: {
        nlist k = {0}, v = {0};
        while (!is(P, TK_RBRACE)) {
            if (P->cur >= P->n) fail(P, "Unexpected end of template in a dict%s", NULL);
            nl_push(P, &k, parse_expr(P));
            expect(P, TK_COLON, "':' between key and value in a dict");
            nl_push(P, &v, parse_expr(P));
            if (is(P, TK_COMMA)) P->cur++;
        }
        P->cur++;
        x = node(P, N_OBJECT, t);
        x->k1 = k.v, x->n1 = k.n, x->k2 = v.v, x->n2 = v.n;
        break;
    }
    default:
        P->cur--;
        fail(P, "Unexpected token: %s", TNAME[t->type]);
    }
    P->depth--;
    return x;
}

/* Whether a macro body reads kwargs (flag 1) or varargs (flag 2) that are
 * not its own parameters: those names are then bound at a call. */
static void scan_special(const jnode *x, int *flag)
{
    if (!x) return;
    if (x->kind == N_IDENT) {
        if (!strcmp(x->s, "kwargs")) *flag |= 1;
        if (!strcmp(x->s, "varargs")) *flag |= 2;
        return;
    }
    if (x->kind == N_MEMBER && !x->flag) { scan_special(x->a, flag); return; }
    if (x->kind == N_FILTER) {
        scan_special(x->a, flag);
        if (x->b->kind == N_CALL)
            for (int i = 0; i < x->b->n1; i++) scan_special(x->b->k1[i], flag);
        return;
    }
    if (x->kind == N_TEST) { scan_special(x->a, flag); return; }
    if (x->kind == N_KWARG) { scan_special(x->b, flag); return; }
    if (x->kind == N_MACRO) return; /* a nested macro binds its own */
    scan_special(x->a, flag);
    scan_special(x->b, flag);
    scan_special(x->c, flag);
    for (int i = 0; i < x->n1; i++) scan_special(x->k1[i], flag);
    for (int i = 0; i < x->n2; i++) scan_special(x->k2[i], flag);
}

static int macro_flags(const jnode *m)
{
    int flag = 0;
    for (int i = 0; i < m->n1; i++) scan_special(m->k1[i], &flag);
    for (int i = 0; i < m->n2; i++) {
        const jnode *p = m->k2[i]->kind == N_IDENT ? m->k2[i] : m->k2[i]->a;
        if (!strcmp(p->s, "kwargs")) flag &= ~1;
        if (!strcmp(p->s, "varargs")) flag &= ~2;
    }
    return flag;
}

static jnode *parse_if(parser *P, const jtoken *at)
{
    jnode *x = node(P, N_IF, at);
    x->a = parse_expr(P);
    expect(P, TK_CLOSE_STMT, "'%}'");
    nlist body = {0}, alt = {0};
    parse_body(P, &body, "elif", "else", "endif");
    if (is_stmt(P, "elif")) {
        const jtoken *e = &P->t[P->cur + 1];
        P->cur += 2;
        enter(P);
        nl_push(P, &alt, parse_if(P, e));
        P->depth--;
    } else if (is_stmt(P, "else")) {
        P->cur += 2;
        expect(P, TK_CLOSE_STMT, "'%}'");
        parse_body(P, &alt, "endif", NULL, NULL);
    }
    x->k1 = body.v, x->n1 = body.n, x->k2 = alt.v, x->n2 = alt.n;
    return x;
}

static void expect_end(parser *P, const char *name)
{
    expect(P, TK_OPEN_STMT, "'{%'");
    expect_ident(P, name);
    expect(P, TK_CLOSE_STMT, "'%}'");
}

static jnode *parse_statement(parser *P)
{
    expect(P, TK_OPEN_STMT, "'{%'");
    if (!is(P, TK_IDENT)) fail(P, "Unknown statement, got %s", P->cur < P->n ? TNAME[P->t[P->cur].type] : "the end");
    const jtoken *kw = &P->t[P->cur++];
    const char *name = kw->s;
    jnode *x;
    if (!strcmp(name, "set")) {
        x = node(P, N_SET, kw);
        x->a = parse_sequence(P, 0);
        if (is(P, TK_EQUALS)) {
            P->cur++;
            x->b = parse_sequence(P, 0);
        } else {
            expect(P, TK_CLOSE_STMT, "'%}'");
            nlist body = {0};
            parse_body(P, &body, "endset", NULL, NULL);
            x->k1 = body.v, x->n1 = body.n;
            expect(P, TK_OPEN_STMT, "'{%'");
            expect_ident(P, "endset");
        }
        expect(P, TK_CLOSE_STMT, "'%}'");
    } else if (!strcmp(name, "if")) {
        x = parse_if(P, kw);
        expect_end(P, "endif");
    } else if (!strcmp(name, "macro")) {
        x = node(P, N_MACRO, kw);
        x->a = parse_primary(P);
        if (x->a->kind != N_IDENT) fail(P, "Expected identifier following macro statement%s", NULL);
        nlist params = parse_args(P, 1);
        x->k2 = params.v, x->n2 = params.n;
        expect(P, TK_CLOSE_STMT, "'%}'");
        nlist body = {0};
        parse_body(P, &body, "endmacro", NULL, NULL);
        x->k1 = body.v, x->n1 = body.n;
        x->flag = macro_flags(x);
        expect_end(P, "endmacro");
    } else if (!strcmp(name, "for")) {
        x = node(P, N_FOR, kw);
        x->a = parse_sequence(P, 1);
        if (x->a->kind != N_IDENT && x->a->kind != N_TUPLE)
            fail(P, "Expected identifier/tuple for the loop variable%s", NULL);
        if (!is_ident(P, 0, "in")) fail(P, "Expected `in` keyword following loop variable%s", NULL);
        P->cur++;
        x->b = parse_expr(P);
        expect(P, TK_CLOSE_STMT, "'%}'");
        nlist body = {0}, alt = {0};
        parse_body(P, &body, "endfor", "else", NULL);
        if (is_stmt(P, "else")) {
            P->cur += 2;
            expect(P, TK_CLOSE_STMT, "'%}'");
            parse_body(P, &alt, "endfor", NULL, NULL);
        }
        x->k1 = body.v, x->n1 = body.n, x->k2 = alt.v, x->n2 = alt.n;
        expect_end(P, "endfor");
    } else if (!strcmp(name, "call")) {
        /* {% call(params) macro(args) %}body{% endcall %}: body is the
         * macro's caller(), an anonymous macro of params */
        x = node(P, N_CALLBLOCK, kw);
        jnode *caller = node(P, N_MACRO, kw);
        caller->a = node(P, N_IDENT, kw);
        caller->a->s = "caller", caller->a->n = 6;
        if (is(P, TK_LPAREN)) {
            nlist params = parse_args(P, 1);
            caller->k2 = params.v, caller->n2 = params.n;
        }
        jnode *callee = parse_primary(P);
        if (callee->kind != N_IDENT) fail(P, "Expected identifier following call statement%s", NULL);
        x->a = node(P, N_CALL, kw);
        x->a->a = callee;
        nlist args = parse_args(P, 0);
        x->a->k1 = args.v, x->a->n1 = args.n;
        expect(P, TK_CLOSE_STMT, "'%}'");
        nlist body = {0};
        parse_body(P, &body, "endcall", NULL, NULL);
        caller->k1 = body.v, caller->n1 = body.n;
        caller->flag = macro_flags(caller);
        x->b = caller;
        expect_end(P, "endcall");
    } else if (!strcmp(name, "break") || !strcmp(name, "continue")) {
        x = node(P, name[0] == 'b' ? N_BREAK : N_CONTINUE, kw);
        expect(P, TK_CLOSE_STMT, "'%}'");
    } else if (!strcmp(name, "filter")) {
        x = node(P, N_FILTERBLOCK, kw);
        x->a = parse_primary(P);
        if (x->a->kind == N_IDENT && is(P, TK_LPAREN)) x->a = parse_call(P, x->a);
        if (x->a->kind != N_IDENT && x->a->kind != N_CALL)
            fail(P, "Expected a filter name after 'filter'%s", NULL);
        expect(P, TK_CLOSE_STMT, "'%}'");
        nlist body = {0};
        parse_body(P, &body, "endfilter", NULL, NULL);
        x->k1 = body.v, x->n1 = body.n;
        expect_end(P, "endfilter");
    } else {
        P->cur--;
        fail(P, "unsupported statement: %s", name);
    }
    return x;
}

static jnode *parse_any(parser *P)
{
    const jtoken *t = &P->t[P->cur];
    jnode *x;
    enter(P);
    switch (t->type) {
    case TK_COMMENT:
        P->cur++;
        x = node(P, N_COMMENT, t);
        break;
    case TK_TEXT:
        P->cur++;
        x = node(P, N_TEXT, t);
        x->s = t->s, x->n = t->n;
        break;
    case TK_OPEN_STMT:
        x = parse_statement(P);
        break;
    case TK_OPEN_EXPR:
        P->cur++;
        x = parse_expr(P);
        expect(P, TK_CLOSE_EXPR, "'}}'");
        break;
    default:
        fail(P, "Unexpected %s", TNAME[t->type]);
    }
    P->depth--;
    return x;
}

int pd__jinja_parse_tokens(jarena *a, const jtoken *t, int n, int max_depth, jnode **root,
                           pd_err *err)
{
    parser P = {.a = a, .err = err, .t = t, .n = n, .max_depth = max_depth};
    nlist body = {0};
    while (P.cur < P.n) nl_push(&P, &body, parse_any(&P));
    jnode *r = pd__ja_alloc(a, sizeof *r);
    r->kind = N_BLOCK;
    r->line = r->col = 1;
    r->k1 = body.v, r->n1 = body.n;
    *root = r;
    return PD_OK;
}
