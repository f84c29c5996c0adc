/* jinja_eval.c — rendering: the runtime values, scopes and the evaluator of
 * the Jinja interpreter, with @huggingface/jinja's semantics (truthiness,
 * loose == and strict `in`, string conversion of numbers as JavaScript does,
 * tojson as JSON.stringify with Python's separators). Filters, tests and
 * methods are in jinja_builtins.c.
 *
 * Every allocation of a render comes from its arena; errors unwind with
 * longjmp to pd_jinja_render, which frees the arena. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_eval.h"

/* ---- errors ---- */

_Noreturn void pd__jv_fail(jctx *C, const jnode *at, int code, const char *fmt, ...)
{
    char msg[PD_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!at) at = C->at;
    if (at) pd_err_set(C->err, code, "line %d, column %d: %s", at->line, at->col, msg);
    else pd_err_set(C->err, code, "%s", msg);
    longjmp(*C->a.fail, 1);
}

/* ---- values ---- */

const char *pd__jv_type(const jv *v)
{
    static const char *N[] = {"UndefinedValue", "NullValue", "BooleanValue", "IntegerValue",
                              "FloatValue", "StringValue", "ArrayValue", "ObjectValue",
                              "NamespaceValue", "FunctionValue"};
    if (v->t == V_ARRAY && v->a->tuple) return "TupleValue";
    return N[v->t];
}

jv pd__jv_str(jctx *C, const char *s, size_t n)
{
    jv v = {.t = V_STR};
    v.s.s = s;
    v.s.n = n;
    (void)C;
    return v;
}

jv pd__jv_strdup(jctx *C, const char *s, size_t n)
{
    return pd__jv_str(C, pd__ja_strndup(&C->a, s, n), n);
}

jv pd__jv_int(int64_t i) { return (jv){.t = V_INT, .i = i}; }
jv pd__jv_float(double f) { return (jv){.t = V_FLOAT, .f = f}; }
jv pd__jv_bool(int b) { return (jv){.t = V_BOOL, .b = !!b}; }

jv pd__jv_array(jctx *C, int cap)
{
    jv v = {.t = V_ARRAY};
    v.a = pd__ja_alloc(&C->a, sizeof *v.a);
    if (cap > 0) {
        v.a->v = pd__ja_alloc(&C->a, (size_t)cap * sizeof(jv));
        v.a->cap = cap;
    }
    return v;
}

void pd__jv_push(jctx *C, jarr *a, jv x)
{
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 4;
        jv *nv = pd__ja_alloc(&C->a, (size_t)cap * sizeof(jv));
        if (a->n) memcpy(nv, a->v, (size_t)a->n * sizeof(jv));
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = x;
}

jv pd__jv_object(jctx *C, int type)
{
    jv v = {.t = type};
    v.o = pd__ja_alloc(&C->a, sizeof *v.o);
    return v;
}

jv *pd__jv_get(const jobj *o, const char *k, size_t n)
{
    for (int i = 0; i < o->n; i++)
        if (o->kn[i] == n && !memcmp(o->k[i], k, n)) return &o->v[i];
    return NULL;
}

void pd__jv_set(jctx *C, jobj *o, const char *k, size_t n, jv x)
{
    jv *p = pd__jv_get(o, k, n);
    if (p) {
        *p = x;
        return;
    }
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 4;
        const char **nk = pd__ja_alloc(&C->a, (size_t)cap * sizeof *nk);
        size_t *nn = pd__ja_alloc(&C->a, (size_t)cap * sizeof *nn);
        jv *nv = pd__ja_alloc(&C->a, (size_t)cap * sizeof *nv);
        if (o->n) {
            memcpy(nk, o->k, (size_t)o->n * sizeof *nk);
            memcpy(nn, o->kn, (size_t)o->n * sizeof *nn);
            memcpy(nv, o->v, (size_t)o->n * sizeof *nv);
        }
        o->k = nk, o->kn = nn, o->v = nv, o->cap = cap;
    }
    o->k[o->n] = k;
    o->kn[o->n] = n;
    o->v[o->n++] = x;
}

jv pd__jv_func(jctx *C, int id, const jv *self, const jnode *macro)
{
    jv v = {.t = V_FUNC};
    v.fn = pd__ja_alloc(&C->a, sizeof *v.fn);
    v.fn->id = id;
    if (self) v.fn->self = *self;
    v.fn->macro = macro;
    return v;
}

/* Python-like truthiness as the reference has it: empty arrays and objects
 * are false, a namespace and a function are true. */
int pd__jv_truthy(const jv *v)
{
    switch (v->t) {
    case V_BOOL: return v->b;
    case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0 && !isnan(v->f);
    case V_STR: return v->s.n > 0;
    case V_ARRAY: return v->a->n > 0;
    case V_OBJECT: return v->o->n > 0;
    case V_NS: case V_FUNC: return 1;
    default: return 0;
    }
}

static jv from_json(jctx *C, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jv o = pd__jv_object(C, V_OBJECT);
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)j, k, x) {
            size_t n = strlen(k);
            pd__jv_set(C, o.o, pd__ja_strndup(&C->a, k, n), n, from_json(C, x));
        }
        return o;
    }
    case JSON_ARRAY: {
        jv a = pd__jv_array(C, (int)json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            pd__jv_push(C, a.a, from_json(C, json_array_get(j, i)));
        return a;
    }
    case JSON_STRING:
        return pd__jv_strdup(C, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        return pd__jv_int(json_integer_value(j));
    case JSON_REAL: {
        double f = json_real_value(j);
        if (f == floor(f) && fabs(f) < 9.0e15) return pd__jv_int((int64_t)f); /* a JS integer */
        return pd__jv_float(f);
    }
    case JSON_TRUE: return pd__jv_bool(1);
    case JSON_FALSE: return pd__jv_bool(0);
    default: return (jv){.t = V_NONE};
    }
}

/* ---- strings ---- */

void pd__sb_put(jctx *C, jsbuf *b, const char *s, size_t n)
{
    if (!n) return;
    if (n > C->p.max_output || b->n > C->p.max_output - n)
        pd__jv_fail(C, NULL, PD_ERANGE, "rendered text longer than %zu bytes", C->p.max_output);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *ns = pd__ja_alloc(&C->a, cap);
        if (b->n) memcpy(ns, b->s, b->n);
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

void pd__sb_puts(jctx *C, jsbuf *b, const char *s) { pd__sb_put(C, b, s, strlen(s)); }

jv pd__sb_value(jctx *C, jsbuf *b)
{
    return pd__jv_str(C, b->s ? b->s : "", b->n);
}

/* JavaScript's Number.prototype.toString (shortest round trip). */
void pd__js_number(double f, char *out, size_t cap)
{
    if (isnan(f)) { snprintf(out, cap, "NaN"); return; }
    if (isinf(f)) { snprintf(out, cap, f > 0 ? "Infinity" : "-Infinity"); return; }
    if (f == 0) { snprintf(out, cap, "0"); return; }
    char buf[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, f);
        if (strtod(buf, NULL) == f) break;
    }
    /* buf: [-]d[.ddd]e[+-]XX */
    char dig[24];
    int nd = 0, neg = buf[0] == '-';
    const char *q = buf + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') dig[nd++] = *q;
    int e = atoi(q + 1);
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    dig[nd] = 0;
    char *o = out;
    size_t left = cap;
#define EMIT(...) do { int w_ = snprintf(o, left, __VA_ARGS__); if (w_ < 0 || (size_t)w_ >= left) return; o += w_; left -= (size_t)w_; } while (0)
    if (neg) EMIT("-");
    if (e >= 21 || e <= -7) {
        EMIT("%c", dig[0]);
        if (nd > 1) EMIT(".%s", dig + 1);
        EMIT("e%c%d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    } else if (e >= 0) {
        for (int i = 0; i <= e || i < nd; i++) {
            if (i == e + 1) EMIT(".");
            EMIT("%c", i < nd ? dig[i] : '0');
        }
    } else {
        EMIT("0.");
        for (int i = 0; i < -e - 1; i++) EMIT("0");
        EMIT("%s", dig);
    }
#undef EMIT
}

/* FloatValue.toString: 1.0 for integral values, -0.0 for negative zero. */
static void float_string(double f, char *out, size_t cap)
{
    if (f == 0 && signbit(f)) snprintf(out, cap, "-0.0");
    else if (isfinite(f) && f == floor(f) && fabs(f) < 1e21) snprintf(out, cap, "%.1f", f);
    else pd__js_number(f, out, cap);
}

/* JSON.stringify of a string. */
static void json_str(jctx *C, jsbuf *b, const char *s, size_t n, int ascii)
{
    pd__sb_put(C, b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        char e[16];
        const char *r = NULL;
        switch (c) {
        case '"': r = "\\\""; break;
        case '\\': r = "\\\\"; break;
        case '\b': r = "\\b"; break;
        case '\f': r = "\\f"; break;
        case '\n': r = "\\n"; break;
        case '\r': r = "\\r"; break;
        case '\t': r = "\\t"; break;
        default: break;
        }
        if (r) { pd__sb_puts(C, b, r); i++; continue; }
        if (c < 0x20) { snprintf(e, sizeof e, "\\u%04x", c); pd__sb_puts(C, b, e); i++; continue; }
        if (c < 0x7f || (!ascii)) { pd__sb_put(C, b, s + i, 1); i++; continue; }
        /* ensure_ascii: escape 0x7f and above as UTF-16 units */
        unsigned cp;
        size_t len = pd__utf8_decode(s + i, n - i, &cp);
        if (cp >= 0x10000) {
            cp -= 0x10000;
            snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
            snprintf(e, sizeof e, "\\u%04x", cp);
        }
        pd__sb_puts(C, b, e);
        i += len;
    }
    pd__sb_put(C, b, "\"", 1);
}

static int key_cmp(const void *x, const void *y, void *arg)
{
    const jobj *o = arg;
    int i = *(const int *)x, j = *(const int *)y;
    size_t n = o->kn[i] < o->kn[j] ? o->kn[i] : o->kn[j];
    int c = memcmp(o->k[i], o->k[j], n);
    return c ? c : (o->kn[i] > o->kn[j]) - (o->kn[i] < o->kn[j]);
}

void pd__jv_json(jctx *C, jsbuf *b, const jv *v, const jjson_opts *o, int depth)
{
    if (depth > C->p.max_depth * 4)
        pd__jv_fail(C, NULL, PD_ERANGE, "tojson: value nested deeper than %d", C->p.max_depth * 4);
    const char *isep = o->item_sep ? o->item_sep : o->indent ? "," : ", ";
    const char *ksep = o->key_sep ? o->key_sep : ": ";
    char num[64];
    switch (v->t) {
    case V_NONE: pd__sb_puts(C, b, "null"); return;
    case V_UNDEF: pd__sb_puts(C, b, o->undefined_as_null ? "null" : "undefined"); return;
    case V_BOOL: pd__sb_puts(C, b, v->b ? "true" : "false"); return;
    case V_INT: snprintf(num, sizeof num, "%lld", (long long)v->i); pd__sb_puts(C, b, num); return;
    case V_FLOAT:
        if (!isfinite(v->f)) pd__sb_puts(C, b, "null");
        else pd__js_number(v->f, num, sizeof num), pd__sb_puts(C, b, num);
        return;
    case V_STR: json_str(C, b, v->s.s, v->s.n, o->ensure_ascii); return;
    case V_FUNC: pd__jv_fail(C, NULL, PD_EINVAL, "Cannot convert to JSON: FunctionValue");
    default: break;
    }
    if (v->t == V_ARRAY && v->a->tuple) pd__jv_fail(C, NULL, PD_EINVAL, "Cannot convert to JSON: TupleValue");
    int n = v->t == V_ARRAY ? v->a->n : v->o->n;
    int arr = v->t == V_ARRAY;
    pd__sb_put(C, b, arr ? "[" : "{", 1);
    int *order = NULL;
    if (!arr && o->sort_keys && n > 1) {
        order = pd__ja_alloc(&C->a, (size_t)n * sizeof *order);
        for (int i = 0; i < n; i++) order[i] = i;
        qsort_r(order, (size_t)n, sizeof *order, key_cmp, v->o);
    }
    for (int i = 0; i < n; i++) {
        if (i) pd__sb_puts(C, b, isep);
        if (o->indent) {
            pd__sb_put(C, b, "\n", 1);
            for (int k = 0; k < (depth + 1) * o->indent; k++) pd__sb_put(C, b, " ", 1);
        }
        if (arr) {
            pd__jv_json(C, b, &v->a->v[i], o, depth + 1);
        } else {
            int j = order ? order[i] : i;
            json_str(C, b, v->o->k[j], v->o->kn[j], o->ensure_ascii);
            pd__sb_puts(C, b, ksep);
            pd__jv_json(C, b, &v->o->v[j], o, depth + 1);
        }
    }
    if (o->indent && n) {
        pd__sb_put(C, b, "\n", 1);
        for (int k = 0; k < depth * o->indent; k++) pd__sb_put(C, b, " ", 1);
    }
    pd__sb_put(C, b, arr ? "]" : "}", 1);
}

/* RuntimeValue.toString: what {{ v }} prints and what joins arrays. */
void pd__jv_print(jctx *C, jsbuf *b, const jv *v)
{
    char num[64];
    switch (v->t) {
    case V_STR: pd__sb_put(C, b, v->s.s, v->s.n); return;
    case V_INT: snprintf(num, sizeof num, "%lld", (long long)v->i); pd__sb_puts(C, b, num); return;
    case V_FLOAT: float_string(v->f, num, sizeof num); pd__sb_puts(C, b, num); return;
    case V_BOOL: pd__sb_puts(C, b, v->b ? "true" : "false"); return;
    case V_NONE: pd__sb_puts(C, b, "null"); return;
    case V_UNDEF: pd__sb_puts(C, b, "undefined"); return;
    case V_FUNC: pd__jv_fail(C, NULL, PD_EINVAL, "unsupported: printing a function");
    default: {
        jjson_opts o = {0};
        pd__jv_json(C, b, v, &o, 0);
        return;
    }
    }
}

/* `value.toString()` of JavaScript, used by ~ and string +: numbers as
 * JavaScript prints them, arrays joined with commas, mappings as
 * "[object Map]". */
void pd__jv_concat_string(jctx *C, jsbuf *b, const jv *v)
{
    char num[64];
    switch (v->t) {
    case V_FLOAT: pd__js_number(v->f, num, sizeof num); pd__sb_puts(C, b, num); return;
    case V_ARRAY:
        for (int i = 0; i < v->a->n; i++) {
            if (i) pd__sb_put(C, b, ",", 1);
            if (v->a->v[i].t != V_NONE && v->a->v[i].t != V_UNDEF) pd__jv_print(C, b, &v->a->v[i]);
        }
        return;
    case V_OBJECT: case V_NS: pd__sb_puts(C, b, "[object Map]"); return;
    default: pd__jv_print(C, b, v); return;
    }
}

size_t pd__utf8_decode(const char *s, size_t n, unsigned *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) { *cp = u[0]; return 1; }
    if ((u[0] & 0xE0) == 0xC0 && (u[1] & 0xC0) == 0x80) {
        *cp = ((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu);
        return 2;
    }
    if ((u[0] & 0xF0) == 0xE0 && n >= 3 && (u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80) {
        *cp = ((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu);
        return 3;
    }
    if ((u[0] & 0xF8) == 0xF0 && n >= 4 && (u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80 &&
        (u[3] & 0xC0) == 0x80) {
        *cp = ((u[0] & 0x07u) << 18) | ((u[1] & 0x3Fu) << 12) | ((u[2] & 0x3Fu) << 6) | (u[3] & 0x3Fu);
        return 4;
    }
    *cp = u[0]; /* a stray byte stands for itself */
    return 1;
}

/* ---- equality ---- */

static int is_num(const jv *v) { return v->t == V_INT || v->t == V_FLOAT; }
static double num(const jv *v) { return v->t == V_INT ? (double)v->i : v->t == V_FLOAT ? v->f : v->b; }
static int is_ref(const jv *v) { return v->t >= V_ARRAY; }

static const void *ref_of(const jv *v)
{
    return v->t == V_ARRAY ? (const void *)v->a : v->t == V_FUNC ? (const void *)v->fn : (const void *)v->o;
}

/* === on the values' JavaScript representations. */
int pd__jv_strict_eq(const jv *a, const jv *b)
{
    if (is_num(a) && is_num(b)) return num(a) == num(b);
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_BOOL: return a->b == b->b;
    case V_STR: return a->s.n == b->s.n && !memcmp(a->s.s, b->s.s, a->s.n);
    default: return ref_of(a) == ref_of(b);
    }
}

/* JavaScript's Number(string). */
static double js_to_number(const char *s, size_t n)
{
    while (n && (*s == ' ' || (*s >= '\t' && *s <= '\r'))) s++, n--;
    while (n && (s[n - 1] == ' ' || (s[n - 1] >= '\t' && s[n - 1] <= '\r'))) n--;
    if (!n) return 0;
    char buf[64];
    if (n >= sizeof buf) return NAN;
    memcpy(buf, s, n);
    buf[n] = 0;
    if (!strcmp(buf, "Infinity") || !strcmp(buf, "+Infinity")) return INFINITY;
    if (!strcmp(buf, "-Infinity")) return -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789+-.eExXabcdefABCDEF", buf[i])) return NAN;
    char *end;
    double f = strtod(buf, &end);
    return *end ? NAN : f;
}

/* == on the values' JavaScript representations (abstract equality). */
static int loose_eq(jctx *C, const jv *a, const jv *b)
{
    int an = a->t == V_NONE || a->t == V_UNDEF, bn = b->t == V_NONE || b->t == V_UNDEF;
    if (an || bn) return an && bn;
    if (is_ref(a) && is_ref(b)) return ref_of(a) == ref_of(b);
    if (is_ref(a) || is_ref(b)) { /* ToPrimitive: the object's string */
        const jv *o = is_ref(a) ? a : b, *p = is_ref(a) ? b : a;
        jsbuf sb = {0};
        pd__jv_concat_string(C, &sb, o);
        jv s = pd__sb_value(C, &sb);
        return loose_eq(C, &s, p);
    }
    if (a->t == V_STR && b->t == V_STR) return pd__jv_strict_eq(a, b);
    double x = a->t == V_STR ? js_to_number(a->s.s, a->s.n) : num(a);
    double y = b->t == V_STR ? js_to_number(b->s.s, b->s.n) : num(b);
    return x == y;
}

/* ---- scopes ---- */

static jscope *scope_new(jctx *C, jscope *parent)
{
    jscope *s = pd__ja_alloc(&C->a, sizeof *s);
    s->parent = parent;
    return s;
}

static jv lookup(const jscope *s, const char *name, size_t n)
{
    for (; s; s = s->parent) {
        jv *v = pd__jv_get(&s->vars, name, n);
        if (v) return *v;
    }
    return (jv){.t = V_UNDEF};
}

static void set_var(jctx *C, jscope *s, const char *name, size_t n, jv v)
{
    pd__jv_set(C, &s->vars, name, n, v);
}

/* ---- evaluation ---- */

enum { FLOW_NORMAL, FLOW_BREAK, FLOW_CONTINUE };

static jv eval(jctx *C, const jnode *x, jscope *s);
static int exec_block(jctx *C, jnode *const *k, int n, jscope *s, jsbuf *out);

static void enter(jctx *C, const jnode *at)
{
    if (++C->depth > C->p.max_depth)
        pd__jv_fail(C, at, PD_ERANGE, "nesting deeper than %d (recursive macro?)", C->p.max_depth);
}

void pd__jv_iterate(jctx *C, const jnode *at)
{
    if (++C->iterations > C->p.max_iterations)
        pd__jv_fail(C, at, PD_ERANGE, "more than %ld loop iterations", C->p.max_iterations);
}

jv pd__jv_eval(jctx *C, const jnode *x, jscope *s) { return eval(C, x, s); }

/* Arguments: positional ones into *pos, keyword ones into *kw. */
void pd__jv_args(jctx *C, jnode *const *args, int n, jscope *s, jarr *pos, jobj *kw)
{
    for (int i = 0; i < n; i++) {
        const jnode *x = args[i];
        if (x->kind == N_SPREAD) {
            jv v = eval(C, x->a, s);
            if (v.t != V_ARRAY) pd__jv_fail(C, x, PD_EINVAL, "Cannot unpack non-iterable type: %s", pd__jv_type(&v));
            for (int j = 0; j < v.a->n; j++) pd__jv_push(C, pos, v.a->v[j]);
        } else if (x->kind != N_KWARG && x->kind != N_KWSPREAD) {
            pd__jv_push(C, pos, eval(C, x, s));
        }
    }
    for (int i = 0; i < n; i++) {
        const jnode *x = args[i];
        if (x->kind == N_KWARG) {
            if (pd__jv_get(kw, x->a->s, x->a->n))
                pd__jv_fail(C, x, PD_EINVAL, "Got multiple values for keyword argument '%s'", x->a->s);
            pd__jv_set(C, kw, x->a->s, x->a->n, eval(C, x->b, s));
        } else if (x->kind == N_KWSPREAD) {
            jv v = eval(C, x->a, s);
            if (v.t != V_OBJECT) pd__jv_fail(C, x, PD_EINVAL, "Argument after ** must be a mapping, not %s", pd__jv_type(&v));
            for (int j = 0; j < v.o->n; j++) {
                if (pd__jv_get(kw, v.o->k[j], v.o->kn[j]))
                    pd__jv_fail(C, x, PD_EINVAL, "Got multiple values for keyword argument '%s'", v.o->k[j]);
                pd__jv_set(C, kw, v.o->k[j], v.o->kn[j], v.o->v[j]);
            }
        }
    }
}

static int64_t to_int(jctx *C, const jnode *at, double f)
{
    if (!(f >= -9.0e18 && f <= 9.0e18)) pd__jv_fail(C, at, PD_ERANGE, "integer out of range");
    return (int64_t)f;
}

static jv binary(jctx *C, const jnode *x, jscope *s)
{
    const char *op = x->s;
    jv l = eval(C, x->a, s);
    if (!strcmp(op, "and")) return pd__jv_truthy(&l) ? eval(C, x->b, s) : l;
    if (!strcmp(op, "or")) return pd__jv_truthy(&l) ? l : eval(C, x->b, s);
    jv r = eval(C, x->b, s);
    if (!strcmp(op, "==")) return pd__jv_bool(loose_eq(C, &l, &r));
    if (!strcmp(op, "!=")) return pd__jv_bool(!loose_eq(C, &l, &r));
    int in = !strcmp(op, "in"), notin = !strcmp(op, "not in");
    if (l.t == V_UNDEF || r.t == V_UNDEF) {
        if (r.t == V_UNDEF && (in || notin)) return pd__jv_bool(notin);
        pd__jv_fail(C, x, PD_EINVAL, "Cannot perform operation %s on undefined values", op);
    }
    if (l.t == V_NONE || r.t == V_NONE) pd__jv_fail(C, x, PD_EINVAL, "Cannot perform operation %s on null values", op);
    if (!strcmp(op, "~")) {
        jsbuf b = {0};
        pd__jv_concat_string(C, &b, &l);
        pd__jv_concat_string(C, &b, &r);
        return pd__sb_value(C, &b);
    }
    if (!strcmp(op, "**") && (is_num(&l) || l.t == V_BOOL) && (is_num(&r) || r.t == V_BOOL)) {
        double a = num(&l), b = num(&r);
        if (a == 0 && b < 0) pd__jv_fail(C, x, PD_EINVAL, "0.0 cannot be raised to a negative power");
        double res = pow(a, b);
        if (!isfinite(res)) pd__jv_fail(C, x, PD_EINVAL, "Exponentiation result is not a finite real number");
        if (l.t == V_FLOAT || r.t == V_FLOAT || b < 0) return pd__jv_float(res);
        return pd__jv_int(to_int(C, x, res));
    }
    if (is_num(&l) && is_num(&r)) {
        int fl = l.t == V_FLOAT || r.t == V_FLOAT;
        double a = num(&l), b = num(&r);
        switch (op[0]) {
        case '+': case '-': case '*': {
            if (!fl) {
                int64_t res;
                int ovf = op[0] == '+' ? __builtin_add_overflow(l.i, r.i, &res)
                        : op[0] == '-' ? __builtin_sub_overflow(l.i, r.i, &res)
                                       : __builtin_mul_overflow(l.i, r.i, &res);
                if (ovf) pd__jv_fail(C, x, PD_ERANGE, "integer overflow in %s", op);
                return pd__jv_int(res);
            }
            return pd__jv_float(op[0] == '+' ? a + b : op[0] == '-' ? a - b : a * b);
        }
        case '/':
            if (op[1] == '/') {
                if (b == 0) pd__jv_fail(C, x, PD_EINVAL, "division by zero");
                double res = floor(a / b);
                return fl ? pd__jv_float(res) : pd__jv_int(to_int(C, x, res));
            }
            if (b == 0) pd__jv_fail(C, x, PD_EINVAL, "division by zero");
            return pd__jv_float(a / b);
        case '%':
            if (b == 0) pd__jv_fail(C, x, PD_EINVAL, "modulo by zero");
            return fl ? pd__jv_float(fmod(a, b)) : pd__jv_int(l.i == INT64_MIN && r.i == -1 ? 0 : l.i % r.i);
        case '<': return pd__jv_bool(op[1] == '=' ? a <= b : a < b);
        case '>': return pd__jv_bool(op[1] == '=' ? a >= b : a > b);
        default: break;
        }
    } else if (l.t == V_ARRAY && r.t == V_ARRAY) {
        if (!strcmp(op, "+")) {
            jv out = pd__jv_array(C, l.a->n + r.a->n);
            for (int i = 0; i < l.a->n; i++) pd__jv_push(C, out.a, l.a->v[i]);
            for (int i = 0; i < r.a->n; i++) pd__jv_push(C, out.a, r.a->v[i]);
            return out;
        }
    } else if (r.t == V_ARRAY && (in || notin)) {
        int found = 0;
        for (int i = 0; i < r.a->n && !found; i++) found = pd__jv_strict_eq(&r.a->v[i], &l);
        return pd__jv_bool(in ? found : !found);
    }
    if ((l.t == V_STR || r.t == V_STR) && !strcmp(op, "+")) {
        jsbuf b = {0};
        pd__jv_concat_string(C, &b, &l);
        pd__jv_concat_string(C, &b, &r);
        return pd__sb_value(C, &b);
    }
    if (l.t == V_STR && r.t == V_STR && (in || notin)) {
        int found = l.s.n == 0 || (r.s.n >= l.s.n && memmem(r.s.s, r.s.n, l.s.s, l.s.n));
        return pd__jv_bool(in ? found : !found);
    }
    if (l.t == V_STR && r.t == V_OBJECT && (in || notin)) {
        int found = pd__jv_get(r.o, l.s.s, l.s.n) != NULL;
        return pd__jv_bool(in ? found : !found);
    }
    pd__jv_fail(C, x, PD_EINVAL, "Unknown operator \"%s\" between %s and %s", op, pd__jv_type(&l), pd__jv_type(&r));
}

static jv unary(jctx *C, const jnode *x, jscope *s)
{
    jv v = eval(C, x->a, s);
    if (!strcmp(x->s, "not")) return pd__jv_bool(!pd__jv_truthy(&v));
    int neg = x->s[0] == '-';
    if (v.t == V_FLOAT) return pd__jv_float(neg ? -v.f : v.f);
    if (v.t == V_INT) return pd__jv_int(neg ? (v.i == INT64_MIN ? INT64_MAX : -v.i) : v.i);
    if (v.t == V_BOOL) return pd__jv_int(neg ? -v.b : v.b);
    pd__jv_fail(C, x, PD_EINVAL, "Unknown operator \"%s\" for %s", x->s, pd__jv_type(&v));
}

/* Python slicing of n items: the indices in *idx (arena), their count. */
int pd__jv_slice(jctx *C, const jnode *at, int n, const jv *start, const jv *stop, const jv *step, int **idx)
{
    int64_t st = step->t == V_INT ? step->i : 1;
    if (st == 0) pd__jv_fail(C, at, PD_EINVAL, "slice step cannot be zero");
    int64_t a, b;
    if (st > 0) {
        a = start->t == V_INT ? start->i : 0;
        a = a < 0 ? (n + a > 0 ? n + a : 0) : (a < n ? a : n);
        b = stop->t == V_INT ? stop->i : n;
        b = b < 0 ? (n + b > 0 ? n + b : 0) : (b < n ? b : n);
    } else {
        a = start->t == V_INT ? start->i : n - 1;
        a = a < 0 ? (n + a > -1 ? n + a : -1) : (a < n - 1 ? a : n - 1);
        b = stop->t == V_INT ? stop->i : -1;
        b = b < -1 ? (n + b > -1 ? n + b : -1) : (b < n - 1 ? b : n - 1);
    }
    int cnt = 0;
    *idx = pd__ja_alloc(&C->a, (size_t)(n > 0 ? n : 1) * sizeof **idx);
    for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
        (*idx)[cnt++] = (int)i;
        if (st > 0 ? i > INT64_MAX - st : i < INT64_MIN - st) break; /* the next is out of range */
    }
    return cnt;
}

static jv member(jctx *C, const jnode *x, jscope *s)
{
    jv obj = eval(C, x->a, s);
    jv prop;
    if (x->flag) {
        if (x->b->kind == N_SLICE) {
            if (obj.t != V_ARRAY && obj.t != V_STR)
                pd__jv_fail(C, x, PD_EINVAL, "Slice object must be an array or string");
            jv z[3];
            const jnode *p[3] = {x->b->a, x->b->b, x->b->c};
            for (int i = 0; i < 3; i++) {
                z[i] = p[i] ? eval(C, p[i], s) : (jv){.t = V_UNDEF};
                if (z[i].t != V_INT && z[i].t != V_UNDEF)
                    pd__jv_fail(C, x, PD_EINVAL, "Slice %s must be numeric or undefined",
                                i == 0 ? "start" : i == 1 ? "stop" : "step");
            }
            if (obj.t == V_ARRAY) {
                int *idx, n = pd__jv_slice(C, x, obj.a->n, &z[0], &z[1], &z[2], &idx);
                jv out = pd__jv_array(C, n);
                for (int i = 0; i < n; i++) pd__jv_push(C, out.a, obj.a->v[idx[i]]);
                return out;
            }
            return pd__jv_str_slice(C, x, &obj, &z[0], &z[1], &z[2]);
        }
        prop = eval(C, x->b, s);
    } else if (x->b->kind == N_INT) {
        prop = pd__jv_int(x->b->i);
    } else {
        prop = pd__jv_str(C, x->b->s, x->b->n);
    }
    return pd__jv_member(C, x, &obj, &prop);
}

jv pd__jv_member(jctx *C, const jnode *x, const jv *obj, const jv *prop)
{
    if (obj->t == V_OBJECT || obj->t == V_NS) {
        if (prop->t != V_STR)
            pd__jv_fail(C, x, PD_EINVAL, "Cannot access property with non-string: got %s", pd__jv_type(prop));
        jv *v = pd__jv_get(obj->o, prop->s.s, prop->s.n);
        if (v) return *v;
        if (obj->t == V_OBJECT) return pd__jv_method(C, obj, prop->s.s, prop->s.n);
        return (jv){.t = V_UNDEF};
    }
    if (obj->t == V_ARRAY || obj->t == V_STR) {
        if (prop->t == V_INT) {
            if (obj->t == V_STR) return pd__jv_str_at(C, obj, prop->i);
            int64_t i = prop->i < 0 ? obj->a->n + prop->i : prop->i;
            return i >= 0 && i < obj->a->n ? obj->a->v[i] : (jv){.t = V_UNDEF};
        }
        if (prop->t == V_STR) return pd__jv_method(C, obj, prop->s.s, prop->s.n);
        pd__jv_fail(C, x, PD_EINVAL, "Cannot access property with non-string/non-number: got %s", pd__jv_type(prop));
    }
    if (prop->t != V_STR)
        pd__jv_fail(C, x, PD_EINVAL, "Cannot access property with non-string: got %s", pd__jv_type(prop));
    return (jv){.t = V_UNDEF};
}

/* Binds a macro's parameters in scope ms (bindMacroArguments). */
static void bind_macro(jctx *C, const jnode *m, jarr *pos, jobj *kw, jscope *ms)
{
    int np = m->n2;
    int *pending = pd__ja_alloc(&C->a, (size_t)(np + 1) * sizeof *pending);
    int npend = 0;
    jobj rest = *kw;
    int *used = pd__ja_alloc(&C->a, (size_t)(kw->n + 1) * sizeof *used);
    for (int i = 0; i < np; i++) {
        const jnode *p = m->k2[i];
        const jnode *name = p->kind == N_IDENT ? p : p->a;
        jv v = {.t = V_UNDEF};
        int have = 0;
        if (i < pos->n) v = pos->v[i], have = 1;
        if (!have)
            for (int k = 0; k < kw->n; k++)
                if (!used[k] && kw->kn[k] == name->n && !memcmp(kw->k[k], name->s, name->n)) {
                    v = kw->v[k], used[k] = 1, have = 1;
                    break;
                }
        if (!have && p->kind == N_KWARG) pending[npend++] = i;
        set_var(C, ms, name->s, name->n, v);
    }
    (void)rest;
    for (int k = 0; k < kw->n; k++)
        if (!used[k]) {
            if (m->flag & 1) continue;
            pd__jv_fail(C, NULL, PD_EINVAL, "macro '%s' takes no keyword argument '%s'", m->a->s, kw->k[k]);
        }
    if (m->flag & 1) {
        jv kwo = pd__jv_object(C, V_OBJECT);
        for (int k = 0; k < kw->n; k++)
            if (!used[k]) pd__jv_set(C, kwo.o, kw->k[k], kw->kn[k], kw->v[k]);
        set_var(C, ms, "kwargs", 6, kwo);
    }
    if (m->flag & 2) {
        jv va = pd__jv_array(C, 0);
        for (int i = np; i < pos->n; i++) pd__jv_push(C, va.a, pos->v[i]);
        set_var(C, ms, "varargs", 7, va);
    } else if (pos->n > np) {
        pd__jv_fail(C, NULL, PD_EINVAL, "macro '%s' takes not more than %d argument(s)", m->a->s, np);
    }
    for (int i = 0; i < npend; i++) {
        const jnode *p = m->k2[pending[i]];
        jv v = eval(C, p->b, ms);
        set_var(C, ms, p->a->s, p->a->n, v);
    }
}

jv pd__jv_call_macro(jctx *C, const jnode *at, const jfunc *fn, jarr *pos, jobj *kw, jscope *caller)
{
    const jnode *m = fn->macro;
    enter(C, at);
    jscope *ms = scope_new(C, fn->closure ? fn->closure : caller);
    bind_macro(C, m, pos, kw, ms);
    jsbuf out = {0};
    if (exec_block(C, m->k1, m->n1, ms, &out) != FLOW_NORMAL)
        pd__jv_fail(C, at, PD_EINVAL, "break or continue outside of a loop");
    C->depth--;
    return pd__sb_value(C, &out);
}

static jv call(jctx *C, const jnode *x, jscope *s)
{
    jarr pos = {0};
    jobj kw = {0};
    pd__jv_args(C, x->k1, x->n1, s, &pos, &kw);
    jv fn = eval(C, x->a, s);
    if (fn.t != V_FUNC)
        pd__jv_fail(C, x, PD_EINVAL, "Cannot call something that is not a function: got %s", pd__jv_type(&fn));
    C->at = x;
    if (fn.fn->macro) return pd__jv_call_macro(C, x, fn.fn, &pos, &kw, s);
    return pd__jv_call_builtin(C, x, fn.fn, &pos, &kw);
}

static jv eval(jctx *C, const jnode *x, jscope *s)
{
    C->at = x;
    switch (x->kind) {
    case N_INT: return pd__jv_int(x->i);
    case N_FLOAT: return pd__jv_float(x->f);
    case N_STR: return pd__jv_str(C, x->s, x->n);
    case N_ARRAY: case N_TUPLE: {
        jv a = pd__jv_array(C, x->n1);
        a.a->tuple = x->kind == N_TUPLE;
        for (int i = 0; i < x->n1; i++) pd__jv_push(C, a.a, eval(C, x->k1[i], s));
        return a;
    }
    case N_OBJECT: {
        jv o = pd__jv_object(C, V_OBJECT);
        for (int i = 0; i < x->n1; i++) {
            jv k = eval(C, x->k1[i], s);
            if (k.t != V_STR) pd__jv_fail(C, x->k1[i], PD_EINVAL, "Object keys must be strings: got %s", pd__jv_type(&k));
            pd__jv_set(C, o.o, k.s.s, k.s.n, eval(C, x->k2[i], s));
        }
        return o;
    }
    case N_IDENT: {
        jv v = lookup(s, x->s, x->n);
        if (v.t == V_UNDEF) return pd__jv_global(C, x->s);
        return v;
    }
    case N_CALL: {
        enter(C, x);
        jv v = call(C, x, s);
        C->depth--;
        return v;
    }
    case N_MEMBER: return member(C, x, s);
    case N_UNARY: return unary(C, x, s);
    case N_BINARY: {
        enter(C, x);
        jv v = binary(C, x, s);
        C->depth--;
        return v;
    }
    case N_FILTER: {
        jv v = eval(C, x->a, s);
        return pd__jv_filter(C, x, &v, x->b, s);
    }
    case N_TEST: {
        jv v = eval(C, x->a, s);
        C->at = x;
        int r = pd__jv_test(C, x, x->b->s, &v, NULL);
        return pd__jv_bool(x->flag ? !r : r);
    }
    case N_SELECT: {
        jv t = eval(C, x->b, s);
        if (!pd__jv_truthy(&t)) return (jv){.t = V_UNDEF};
        return eval(C, x->a, s);
    }
    case N_TERNARY: {
        jv c = eval(C, x->a, s);
        return eval(C, pd__jv_truthy(&c) ? x->b : x->c, s);
    }
    case N_SLICE:
        pd__jv_fail(C, x, PD_EINVAL, "a slice outside of [ ]");
    default:
        pd__jv_fail(C, x, PD_EINVAL, "unsupported expression here");
    }
}

/* ---- statements ---- */


static void assign(jctx *C, const jnode *target, jv v, jscope *s)
{
    if (target->kind == N_IDENT) {
        set_var(C, s, target->s, target->n, v);
    } else if (target->kind == N_TUPLE) {
        if (v.t != V_ARRAY) pd__jv_fail(C, target, PD_EINVAL, "Cannot unpack non-iterable type in set: %s", pd__jv_type(&v));
        if (v.a->n != target->n1)
            pd__jv_fail(C, target, PD_EINVAL, "Too %s items to unpack in set", target->n1 > v.a->n ? "few" : "many");
        for (int i = 0; i < target->n1; i++) {
            if (target->k1[i]->kind != N_IDENT) pd__jv_fail(C, target, PD_EINVAL, "Cannot unpack to non-identifier in set");
            set_var(C, s, target->k1[i]->s, target->k1[i]->n, v.a->v[i]);
        }
    } else if (target->kind == N_MEMBER) {
        jv obj = eval(C, target->a, s);
        if (obj.t != V_NS) pd__jv_fail(C, target, PD_EINVAL, "cannot assign attribute on non-namespace object");
        if (target->flag || target->b->kind != N_IDENT)
            pd__jv_fail(C, target, PD_EINVAL, "Cannot assign to member with non-identifier property");
        pd__jv_set(C, obj.o, target->b->s, target->b->n, v);
    } else {
        pd__jv_fail(C, target, PD_EINVAL, "Invalid left-hand side of an assignment");
    }
}

static void bind_loop_var(jctx *C, const jnode *var, const jv *item, jscope *s)
{
    if (var->kind == N_IDENT) {
        set_var(C, s, var->s, var->n, *item);
        return;
    }
    if (item->t != V_ARRAY) pd__jv_fail(C, var, PD_EINVAL, "Cannot unpack non-iterable type: %s", pd__jv_type(item));
    if (item->a->n != var->n1)
        pd__jv_fail(C, var, PD_EINVAL, "Too %s items to unpack", var->n1 > item->a->n ? "few" : "many");
    for (int j = 0; j < var->n1; j++) {
        if (var->k1[j]->kind != N_IDENT) pd__jv_fail(C, var, PD_EINVAL, "Cannot unpack non-identifier type");
        set_var(C, s, var->k1[j]->s, var->k1[j]->n, item->a->v[j]);
    }
}

static void exec_for(jctx *C, const jnode *x, jscope *env, jsbuf *out)
{
    jscope *scope = scope_new(C, env);
    const jnode *test = NULL, *it = x->b;
    if (it->kind == N_SELECT) test = it->b, it = it->a;
    jv iter = eval(C, it, scope);
    if (iter.t == V_OBJECT) {
        jv keys = pd__jv_array(C, iter.o->n);
        for (int i = 0; i < iter.o->n; i++) pd__jv_push(C, keys.a, pd__jv_str(C, iter.o->k[i], iter.o->kn[i]));
        iter = keys;
    } else if (iter.t != V_ARRAY) {
        pd__jv_fail(C, x->b, PD_EINVAL, "Expected iterable or object type in for loop: got %s", pd__jv_type(&iter));
    }
    jarr items = {0};
    for (int i = 0; i < iter.a->n; i++) {
        pd__jv_iterate(C, x);
        jv cur = iter.a->v[i];
        if (x->a->kind == N_TUPLE) { /* checked up front, as the reference does */
            if (cur.t != V_ARRAY || cur.a->tuple) pd__jv_fail(C, x->a, PD_EINVAL, "Cannot unpack non-iterable type: %s", pd__jv_type(&cur));
            if (cur.a->n != x->a->n1)
                pd__jv_fail(C, x->a, PD_EINVAL, "Too %s items to unpack", x->a->n1 > cur.a->n ? "few" : "many");
        }
        if (test) {
            jscope *ls = scope_new(C, scope);
            bind_loop_var(C, x->a, &cur, ls);
            jv t = eval(C, test, ls);
            if (!pd__jv_truthy(&t)) continue;
        }
        pd__jv_push(C, &items, cur);
    }
    int none = 1;
    for (int i = 0; i < items.n; i++) {
        pd__jv_iterate(C, x);
        jv loop = pd__jv_object(C, V_OBJECT);
        jobj *o = loop.o;
        pd__jv_set(C, o, "index", 5, pd__jv_int(i + 1));
        pd__jv_set(C, o, "index0", 6, pd__jv_int(i));
        pd__jv_set(C, o, "revindex", 8, pd__jv_int(items.n - i));
        pd__jv_set(C, o, "revindex0", 9, pd__jv_int(items.n - i - 1));
        pd__jv_set(C, o, "first", 5, pd__jv_bool(i == 0));
        pd__jv_set(C, o, "last", 4, pd__jv_bool(i == items.n - 1));
        pd__jv_set(C, o, "length", 6, pd__jv_int(items.n));
        pd__jv_set(C, o, "previtem", 8, i > 0 ? items.v[i - 1] : (jv){.t = V_UNDEF});
        pd__jv_set(C, o, "nextitem", 8, i < items.n - 1 ? items.v[i + 1] : (jv){.t = V_UNDEF});
        set_var(C, scope, "loop", 4, loop);
        bind_loop_var(C, x->a, &items.v[i], scope);
        jsbuf body = {0};
        int flow = exec_block(C, x->k1, x->n1, scope, &body);
        if (flow == FLOW_CONTINUE) continue; /* the iteration's text is dropped, */
        if (flow == FLOW_BREAK) break;        /* as the reference's exceptions do */
        pd__sb_put(C, out, body.s, body.n);
        none = 0;
    }
    if (none && exec_block(C, x->k2, x->n2, scope, out) != FLOW_NORMAL)
        pd__jv_fail(C, x, PD_EINVAL, "break or continue outside of a loop");
}

/* Executes statements, appending their text to out. Returns a FLOW_*. */
static int exec_block(jctx *C, jnode *const *k, int n, jscope *s, jsbuf *out)
{
    for (int i = 0; i < n; i++) {
        const jnode *x = k[i];
        C->at = x;
        switch (x->kind) {
        case N_TEXT: pd__sb_put(C, out, x->s, x->n); break;
        case N_COMMENT: break;
        case N_BREAK: return FLOW_BREAK;
        case N_CONTINUE: return FLOW_CONTINUE;
        case N_IF: {
            jv t = eval(C, x->a, s);
            int flow = pd__jv_truthy(&t) ? exec_block(C, x->k1, x->n1, s, out)
                                          : exec_block(C, x->k2, x->n2, s, out);
            if (flow != FLOW_NORMAL) return flow;
            break;
        }
        case N_FOR:
            enter(C, x);
            exec_for(C, x, s, out);
            C->depth--;
            break;
        case N_SET: {
            jv v;
            if (x->b) {
                v = eval(C, x->b, s);
            } else {
                jsbuf b = {0};
                if (exec_block(C, x->k1, x->n1, s, &b) != FLOW_NORMAL)
                    pd__jv_fail(C, x, PD_EINVAL, "break or continue outside of a loop");
                v = pd__sb_value(C, &b);
            }
            assign(C, x->a, v, s);
            break;
        }
        case N_MACRO:
            set_var(C, s, x->a->s, x->a->n, pd__jv_func(C, F_MACRO, NULL, x));
            break;
        case N_FILTERBLOCK: {
            jsbuf b = {0};
            if (exec_block(C, x->k1, x->n1, s, &b) != FLOW_NORMAL)
                pd__jv_fail(C, x, PD_EINVAL, "break or continue outside of a loop");
            jv v = pd__sb_value(C, &b);
            v = pd__jv_filter(C, x, &v, x->a, s);
            if (v.t != V_NONE && v.t != V_UNDEF) pd__jv_print(C, out, &v);
            break;
        }
        case N_CALLBLOCK: { /* the macro called with caller() in its scope */
            jv caller = pd__jv_func(C, F_MACRO, NULL, x->b);
            caller.fn->closure = s;
            jarr pos = {0};
            jobj kw = {0};
            pd__jv_args(C, x->a->k1, x->a->n1, s, &pos, &kw);
            jv fn = eval(C, x->a->a, s);
            if (fn.t != V_FUNC)
                pd__jv_fail(C, x, PD_EINVAL, "Cannot call something that is not a function: got %s",
                            pd__jv_type(&fn));
            jscope *env = scope_new(C, s);
            set_var(C, env, "caller", 6, caller);
            enter(C, x);
            jv v = fn.fn->macro ? pd__jv_call_macro(C, x, fn.fn, &pos, &kw, env)
                                : pd__jv_call_builtin(C, x, fn.fn, &pos, &kw);
            C->depth--;
            if (v.t != V_NONE && v.t != V_UNDEF) pd__jv_print(C, out, &v);
            break;
        }
        default: {
            jv v = eval(C, x, s);
            if (v.t != V_NONE && v.t != V_UNDEF) pd__jv_print(C, out, &v);
            break;
        }
        }
    }
    return FLOW_NORMAL;
}

/* The part that may unwind (see parse_into in jinja.c). */
static int render_into(jctx *C, const pd_jinja_template *t, const json_t *ctx, jsbuf *b)
{
    jmp_buf jb;
    C->a.fail = &jb;
    if (setjmp(jb)) return C->err->code ? C->err->code : PD_EINVAL;
    jscope *global = scope_new(C, NULL);
    if (ctx) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)ctx, k, v) {
            size_t n = strlen(k);
            set_var(C, global, pd__ja_strndup(&C->a, k, n), n, from_json(C, v));
        }
    }
    const jnode *root = pd__jinja_root(t);
    if (exec_block(C, root->k1, root->n1, global, b) != FLOW_NORMAL)
        pd__jv_fail(C, NULL, PD_EINVAL, "break or continue outside of a loop");
    return PD_OK;
}

int pd_jinja_render(const pd_jinja_template *t, const json_t *ctx, const pd_jinja_params *p,
                    char **out, size_t *out_len, pd_err *err)
{
    PD_ASSERT(t && out);
    *out = NULL;
    if (out_len) *out_len = 0;
    pd_err local;
    if (!err) err = &local;
    pd_err_clear(err);
    if (ctx && !json_is_object(ctx)) return pd_err_set(err, PD_EINVAL, "template context must be a JSON object");
    jctx *C = calloc(1, sizeof *C);
    if (!C) return pd_err_set(err, PD_ENOMEM, "out of memory rendering a template");
    C->p = p ? *p : pd_jinja_default_params();
    if (C->p.max_depth < 1) C->p.max_depth = 1;
    C->a.err = err;
    C->a.limit = C->p.max_memory;
    C->err = err;
    jsbuf b = {0};
    int rc = render_into(C, t, ctx, &b);
    if (rc == PD_OK) {
        char *res = malloc(b.n + 1);
        if (!res) {
            rc = pd_err_set(err, PD_ENOMEM, "out of memory (%zu bytes of output)", b.n);
        } else {
            if (b.n) memcpy(res, b.s, b.n);
            res[b.n] = 0;
            *out = res;
            if (out_len) *out_len = b.n;
        }
    }
    pd__ja_free(&C->a);
    free(C);
    return rc;
}
