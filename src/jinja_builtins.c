/* jinja_builtins.c — the filters, tests, string and mapping methods and
 * global functions of the Jinja interpreter, each as @huggingface/jinja
 * defines it (which filters apply to which types, their arguments and
 * errors). Strings are UTF-8; where the reference counts UTF-16 units
 * (length, indexing) so does this file; case changes touch ASCII only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_eval.h"

#define FAIL(...) pd__jv_fail(C, at, PD_EINVAL, __VA_ARGS__)

static const jv UNDEF = {.t = V_UNDEF};
static const jv NONE = {.t = V_NONE};

/* ---- strings ---- */

/* Bytes of a JavaScript white-space character at s, 0 if none. */
static size_t js_space(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    if (c == ' ' || (c >= '\t' && c <= '\r')) return 1;
    if (c < 0x80) return 0;
    unsigned cp;
    size_t len = pd__utf8_decode(s, n, &cp);
    if (cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
        cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF)
        return len;
    return 0;
}

static size_t trim_start(const char *s, size_t n)
{
    size_t i = 0, k;
    while (i < n && (k = js_space(s + i, n - i))) i += k;
    return i;
}

static size_t trim_end(const char *s, size_t n)
{
    while (n) {
        size_t st = n - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80 && n - st < 4) st--;
        if (js_space(s + st, n - st) == n - st) n = st;
        else if (js_space(s + n - 1, 1)) n--;
        else break;
    }
    return n;
}

static jv sub(jctx *C, const jv *s, size_t from, size_t to)
{
    return pd__jv_str(C, s->s.s + from, to - from);
}

static int is_word(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static jv str_case(jctx *C, const jv *s, int mode) /* 0 lower, 1 upper, 2 title, 3 capitalize */
{
    char *o = pd__ja_alloc(&C->a, s->s.n + 1);
    for (size_t i = 0; i < s->s.n; i++) {
        unsigned char c = (unsigned char)s->s.s[i];
        int up = mode == 1 || (mode == 2 && is_word(c) && (i == 0 || !is_word((unsigned char)s->s.s[i - 1]))) ||
                 (mode == 3 && i == 0);
        if (up && c >= 'a' && c <= 'z') c = (unsigned char)(c - 32);
        else if (mode == 0 && c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
        o[i] = (char)c;
    }
    return pd__jv_str(C, o, s->s.n);
}

static int64_t utf16_len(const jv *s)
{
    int64_t n = 0;
    for (size_t i = 0; i < s->s.n;) {
        unsigned cp;
        i += pd__utf8_decode(s->s.s + i, s->s.n - i, &cp);
        n += cp >= 0x10000 ? 2 : 1;
    }
    return n;
}

jv pd__jv_str_at(jctx *C, const jv *s, int64_t i)
{
    int64_t n = utf16_len(s);
    if (i < 0) i += n;
    if (i < 0 || i >= n) return UNDEF;
    int64_t u = 0;
    for (size_t b = 0; b < s->s.n;) {
        unsigned cp;
        size_t len = pd__utf8_decode(s->s.s + b, s->s.n - b, &cp);
        int w = cp >= 0x10000 ? 2 : 1;
        if (i < u + w) return sub(C, s, b, b + len); /* a whole character for a surrogate half */
        u += w;
        b += len;
    }
    return UNDEF;
}

jv pd__jv_str_slice(jctx *C, const jnode *at, const jv *s, const jv *start, const jv *stop, const jv *step)
{
    int n = 0;
    size_t *off = pd__ja_alloc(&C->a, (s->s.n + 1) * sizeof *off);
    for (size_t b = 0; b < s->s.n;) {
        unsigned cp;
        off[n++] = b;
        b += pd__utf8_decode(s->s.s + b, s->s.n - b, &cp);
    }
    off[n] = s->s.n;
    int *idx, k = pd__jv_slice(C, at, n, start, stop, step, &idx);
    jsbuf out = {0};
    for (int i = 0; i < k; i++) pd__sb_put(C, &out, s->s.s + off[idx[i]], off[idx[i] + 1] - off[idx[i]]);
    return pd__sb_value(C, &out);
}

static int starts(const jv *s, const jv *p) { return s->s.n >= p->s.n && !memcmp(s->s.s, p->s.s, p->s.n); }
static int ends(const jv *s, const jv *p)
{
    return s->s.n >= p->s.n && !memcmp(s->s.s + s->s.n - p->s.n, p->s.s, p->s.n);
}

static jv str_affix(jctx *C, const jnode *at, const jv *s, jarr *pos, int end)
{
    const char *name = end ? "endswith" : "startswith";
    if (!pos->n) FAIL("%s() requires at least one argument", name);
    const jv *p = &pos->v[0];
    if (p->t == V_STR) return pd__jv_bool(end ? ends(s, p) : starts(s, p));
    if (p->t == V_ARRAY) {
        for (int i = 0; i < p->a->n; i++) {
            if (p->a->v[i].t != V_STR) FAIL("%s() tuple elements must be strings", name);
            if (end ? ends(s, &p->a->v[i]) : starts(s, &p->a->v[i])) return pd__jv_bool(1);
        }
        return pd__jv_bool(0);
    }
    FAIL("%s() argument must be a string or tuple of strings", name);
}

static jv str_split(jctx *C, const jnode *at, const jv *s, jarr *pos)
{
    const jv *sep = pos->n > 0 ? &pos->v[0] : &NONE;
    if (sep->t != V_STR && sep->t != V_NONE) FAIL("sep argument must be a string or null");
    int64_t max = -1;
    if (pos->n > 1) {
        if (pos->v[1].t != V_INT) FAIL("maxsplit argument must be a number");
        max = pos->v[1].i;
    }
    jv out = pd__jv_array(C, 0);
    if (sep->t == V_NONE) {
        size_t i = trim_start(s->s.s, s->s.n), n = s->s.n;
        while (i < n) {
            size_t j = i;
            while (j < n && !js_space(s->s.s + j, n - j)) j++;
            if (max != -1 && out.a->n >= max) {
                pd__jv_push(C, out.a, sub(C, s, i, n));
                break;
            }
            pd__jv_push(C, out.a, sub(C, s, i, j));
            i = j;
            size_t k;
            while (i < n && (k = js_space(s->s.s + i, n - i))) i += k;
        }
        return out;
    }
    if (!sep->s.n) FAIL("empty separator");
    size_t i = 0;
    for (;;) {
        const char *f = max != -1 && out.a->n >= max ? NULL
                      : memmem(s->s.s + i, s->s.n - i, sep->s.s, sep->s.n);
        if (!f) {
            pd__jv_push(C, out.a, sub(C, s, i, s->s.n));
            break;
        }
        pd__jv_iterate(C, at);
        size_t j = (size_t)(f - s->s.s);
        pd__jv_push(C, out.a, sub(C, s, i, j));
        i = j + sep->s.n;
    }
    return out;
}

static jv str_replace(jctx *C, const jnode *at, const jv *s, jarr *pos, jobj *kw)
{
    if (pos->n < 2) FAIL("replace() requires at least two arguments");
    const jv *old = &pos->v[0], *rep = &pos->v[1];
    if (old->t != V_STR || rep->t != V_STR) FAIL("replace() arguments must be strings");
    const jv *cnt = pos->n > 2 ? &pos->v[2] : &NONE;
    jv *kc = kw ? pd__jv_get(kw, "count", 5) : NULL;
    if (pos->n <= 2 && kc) cnt = kc;
    if (cnt->t != V_INT && cnt->t != V_NONE) FAIL("replace() count argument must be a number or null");
    int64_t left = cnt->t == V_INT && cnt->i >= 0 ? cnt->i : INT64_MAX;
    if (cnt->t == V_INT && cnt->i == 0) return *s;
    jsbuf out = {0};
    size_t i = 0;
    if (!old->s.n) { /* before every character and at the end */
        for (;;) {
            if (left > 0) pd__sb_put(C, &out, rep->s.s, rep->s.n), left--;
            if (i >= s->s.n) break;
            unsigned cp;
            size_t len = pd__utf8_decode(s->s.s + i, s->s.n - i, &cp);
            pd__sb_put(C, &out, s->s.s + i, len);
            i += len;
        }
        return pd__sb_value(C, &out);
    }
    while (i < s->s.n) {
        const char *f = left > 0 ? memmem(s->s.s + i, s->s.n - i, old->s.s, old->s.n) : NULL;
        if (!f) break;
        size_t j = (size_t)(f - s->s.s);
        pd__sb_put(C, &out, s->s.s + i, j - i);
        pd__sb_put(C, &out, rep->s.s, rep->s.n);
        i = j + old->s.n;
        left--;
    }
    pd__sb_put(C, &out, s->s.s + i, s->s.n - i);
    return pd__sb_value(C, &out);
}

/* ---- methods and globals ---- */

static jv sorted(jctx *C, const jnode *at, const jv *arr, int reverse, int cs, const jv *attr);
static jv pairs(jctx *C, const jobj *o, int what);
static const jv *arg(const jarr *pos, const jobj *kw, int i, const char *name);

/* dictsort(case_sensitive=false, by='key', reverse=false): [key, value]
 * pairs in order. */
static jv dictsort(jctx *C, const jnode *at, const jv *o, jarr *pos, jobj *kw)
{
    const jv *cs = arg(pos, kw, 0, "case_sensitive"), *by = arg(pos, kw, 1, "by");
    const jv *rev = arg(pos, kw, 2, "reverse");
    if (cs && cs->t != V_BOOL) FAIL("case_sensitive must be a boolean");
    if (by && by->t != V_STR) FAIL("by must be a string");
    int value = by && by->s.n == 5 && !memcmp(by->s.s, "value", 5);
    if (by && !value && !(by->s.n == 3 && !memcmp(by->s.s, "key", 3)))
        FAIL("by must be either 'key' or 'value'");
    if (rev && rev->t != V_BOOL) FAIL("reverse must be a boolean");
    jv items = pairs(C, o->o, 0), index = pd__jv_int(value);
    return sorted(C, at, &items, rev && rev->b, cs && cs->b, &index);
}

static const struct { const char *name; int id; } STR_METHODS[] = {
    {"upper", F_S_UPPER}, {"lower", F_S_LOWER}, {"strip", F_S_STRIP}, {"title", F_S_TITLE},
    {"capitalize", F_S_CAPITALIZE}, {"rstrip", F_S_RSTRIP}, {"lstrip", F_S_LSTRIP},
    {"startswith", F_S_STARTSWITH}, {"endswith", F_S_ENDSWITH}, {"split", F_S_SPLIT},
    {"replace", F_S_REPLACE}};
static const struct { const char *name; int id; } OBJ_METHODS[] = {
    {"get", F_O_GET}, {"items", F_O_ITEMS}, {"keys", F_O_KEYS}, {"values", F_O_VALUES},
    {"dictsort", F_O_DICTSORT}};

static int name_is(const char *name, size_t n, const char *s) { return strlen(s) == n && !memcmp(name, s, n); }

jv pd__jv_method(jctx *C, const jv *obj, const char *name, size_t n)
{
    if (obj->t == V_STR) {
        if (name_is(name, n, "length")) return pd__jv_int(utf16_len(obj));
        for (size_t i = 0; i < sizeof STR_METHODS / sizeof *STR_METHODS; i++)
            if (name_is(name, n, STR_METHODS[i].name)) return pd__jv_func(C, STR_METHODS[i].id, obj, NULL);
    } else if (obj->t == V_ARRAY) {
        if (name_is(name, n, "length")) return pd__jv_int(obj->a->n);
    } else if (obj->t == V_OBJECT) {
        for (size_t i = 0; i < sizeof OBJ_METHODS / sizeof *OBJ_METHODS; i++)
            if (name_is(name, n, OBJ_METHODS[i].name)) return pd__jv_func(C, OBJ_METHODS[i].id, obj, NULL);
    }
    return UNDEF;
}

jv pd__jv_global(jctx *C, const char *name)
{
    if (!strcmp(name, "true") || !strcmp(name, "True")) return pd__jv_bool(1);
    if (!strcmp(name, "false") || !strcmp(name, "False")) return pd__jv_bool(0);
    if (!strcmp(name, "none") || !strcmp(name, "None")) return NONE;
    if (!strcmp(name, "range")) return pd__jv_func(C, F_RANGE, NULL, NULL);
    if (!strcmp(name, "namespace")) return pd__jv_func(C, F_NAMESPACE, NULL, NULL);
    if (!strcmp(name, "raise_exception")) return pd__jv_func(C, F_RAISE, NULL, NULL);
    if (!strcmp(name, "strftime_now")) return pd__jv_func(C, F_STRFTIME, NULL, NULL);
    return UNDEF;
}

static jv pairs(jctx *C, const jobj *o, int what) /* 0 items, 1 keys, 2 values */
{
    jv out = pd__jv_array(C, o->n);
    for (int i = 0; i < o->n; i++) {
        jv k = pd__jv_str(C, o->k[i], o->kn[i]);
        if (what == 1) pd__jv_push(C, out.a, k);
        else if (what == 2) pd__jv_push(C, out.a, o->v[i]);
        else {
            jv p = pd__jv_array(C, 2);
            pd__jv_push(C, p.a, k);
            pd__jv_push(C, p.a, o->v[i]);
            pd__jv_push(C, out.a, p);
        }
    }
    return out;
}

static jv strftime_now(jctx *C, const jnode *at, const jv *fmt)
{
    static const char *MON[] = {"January", "February", "March", "April", "May", "June", "July",
                                "August", "September", "October", "November", "December"};
    if (fmt->t != V_STR) FAIL("strftime_now() needs a format string");
    time_t now = C->p.now >= 0 ? (time_t)C->p.now : time(NULL);
    struct tm tm;
    if (!localtime_r(&now, &tm)) FAIL("strftime_now(): the clock is out of range");
    jsbuf out = {0};
    char b[32];
    for (size_t i = 0; i < fmt->s.n; i++) {
        char c = fmt->s.s[i], d = i + 1 < fmt->s.n ? fmt->s.s[i + 1] : 0;
        if (c != '%' || !strchr("YmdbBHM%", d) || !d) {
            pd__sb_put(C, &out, &c, 1);
            continue;
        }
        i++;
        switch (d) {
        case 'Y': snprintf(b, sizeof b, "%d", tm.tm_year + 1900); break;
        case 'm': snprintf(b, sizeof b, "%02d", tm.tm_mon + 1); break;
        case 'd': snprintf(b, sizeof b, "%02d", tm.tm_mday); break;
        case 'b': snprintf(b, sizeof b, "%.3s", MON[tm.tm_mon]); break;
        case 'B': snprintf(b, sizeof b, "%s", MON[tm.tm_mon]); break;
        case 'H': snprintf(b, sizeof b, "%02d", tm.tm_hour); break;
        case 'M': snprintf(b, sizeof b, "%02d", tm.tm_min); break;
        default: snprintf(b, sizeof b, "%%"); break;
        }
        pd__sb_puts(C, &out, b);
    }
    return pd__sb_value(C, &out);
}

static jv namespace_new(jctx *C, const jnode *at, jarr *pos, jobj *kw)
{
    if (pos->n > 1) FAIL("namespace expected at most 1 argument, got %d", pos->n);
    jv ns = pd__jv_object(C, V_NS);
    if (pos->n == 1) {
        const jv *src = &pos->v[0];
        if (src->t == V_OBJECT) {
            for (int i = 0; i < src->o->n; i++) pd__jv_set(C, ns.o, src->o->k[i], src->o->kn[i], src->o->v[i]);
        } else if (src->t == V_ARRAY) {
            for (int i = 0; i < src->a->n; i++) {
                const jv *p = &src->a->v[i];
                if (p->t != V_ARRAY || p->a->n != 2)
                    FAIL("namespace expected an object or an iterable of [key, value] pairs");
                if (p->a->v[0].t != V_STR) FAIL("namespace keys must be strings");
                pd__jv_set(C, ns.o, p->a->v[0].s.s, p->a->v[0].s.n, p->a->v[1]);
            }
        } else {
            FAIL("'%s' object is not iterable", pd__jv_type(src));
        }
    }
    for (int i = 0; i < kw->n; i++) pd__jv_set(C, ns.o, kw->k[i], kw->kn[i], kw->v[i]);
    return ns;
}

static jv range(jctx *C, const jnode *at, jarr *pos)
{
    for (int i = 0; i < pos->n; i++)
        if (pos->v[i].t != V_INT) FAIL("range() takes integers, got %s", pd__jv_type(&pos->v[i]));
    if (pos->n < 1 || pos->n > 3) FAIL("range() takes 1 to 3 arguments");
    int64_t a = 0, b, st = 1;
    if (pos->n == 1) b = pos->v[0].i;
    else a = pos->v[0].i, b = pos->v[1].i;
    if (pos->n == 3) st = pos->v[2].i;
    if (st == 0) FAIL("range() step must not be zero");
    jv out = pd__jv_array(C, 0);
    for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
        pd__jv_iterate(C, at);
        pd__jv_push(C, out.a, pd__jv_int(i));
        if (st > 0 ? i > INT64_MAX - st : i < INT64_MIN - st) break; /* the next is out of range */
    }
    return out;
}

jv pd__jv_call_builtin(jctx *C, const jnode *at, const jfunc *fn, jarr *pos, jobj *kw)
{
    const jv *self = &fn->self;
    switch (fn->id) {
    case F_RANGE: return range(C, at, pos);
    case F_NAMESPACE: return namespace_new(C, at, pos, kw);
    case F_RAISE: {
        jsbuf b = {0};
        if (pos->n) pd__jv_concat_string(C, &b, &pos->v[0]);
        pd__jv_fail(C, at, PD_EINVAL, "raise_exception: %.*s", (int)(b.n > 400 ? 400 : b.n), b.s ? b.s : "");
    }
    case F_STRFTIME: return strftime_now(C, at, pos->n ? &pos->v[0] : &UNDEF);
    case F_S_UPPER: return str_case(C, self, 1);
    case F_S_LOWER: return str_case(C, self, 0);
    case F_S_TITLE: return str_case(C, self, 2);
    case F_S_CAPITALIZE: return str_case(C, self, 3);
    case F_S_STRIP: {
        size_t a = trim_start(self->s.s, self->s.n);
        return sub(C, self, a, a + trim_end(self->s.s + a, self->s.n - a));
    }
    case F_S_LSTRIP: return sub(C, self, trim_start(self->s.s, self->s.n), self->s.n);
    case F_S_RSTRIP: return sub(C, self, 0, trim_end(self->s.s, self->s.n));
    case F_S_STARTSWITH: return str_affix(C, at, self, pos, 0);
    case F_S_ENDSWITH: return str_affix(C, at, self, pos, 1);
    case F_S_SPLIT: return str_split(C, at, self, pos);
    case F_S_REPLACE: return str_replace(C, at, self, pos, kw);
    case F_O_GET: {
        if (!pos->n || pos->v[0].t != V_STR)
            FAIL("Object key must be a string: got %s", pos->n ? pd__jv_type(&pos->v[0]) : "nothing");
        jv *v = pd__jv_get(self->o, pos->v[0].s.s, pos->v[0].s.n);
        return v ? *v : pos->n > 1 ? pos->v[1] : NONE;
    }
    case F_O_ITEMS: return pairs(C, self->o, 0);
    case F_O_KEYS: return pairs(C, self->o, 1);
    case F_O_VALUES: return pairs(C, self->o, 2);
    case F_O_DICTSORT: return dictsort(C, at, self, pos, kw);
    default: FAIL("unsupported function");
    }
}

/* ---- tests ---- */

int pd__jv_test(jctx *C, const jnode *at, const char *name, const jv *a, const jv *b)
{
    if (!strcmp(name, "boolean")) return a->t == V_BOOL;
    if (!strcmp(name, "callable")) return a->t == V_FUNC;
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (a->t != V_INT) FAIL("cannot %s on %s", name, pd__jv_type(a));
        return (a->i % 2 != 0) == (name[0] == 'o');
    }
    if (!strcmp(name, "false")) return a->t == V_BOOL && !a->b;
    if (!strcmp(name, "true")) return a->t == V_BOOL && a->b;
    if (!strcmp(name, "none")) return a->t == V_NONE;
    if (!strcmp(name, "string")) return a->t == V_STR;
    if (!strcmp(name, "number")) return a->t == V_INT || a->t == V_FLOAT;
    if (!strcmp(name, "integer")) return a->t == V_INT;
    if (!strcmp(name, "iterable")) return (a->t == V_ARRAY && !a->a->tuple) || a->t == V_STR;
    if (!strcmp(name, "mapping")) return a->t == V_OBJECT;
    if (!strcmp(name, "sequence")) return a->t == V_ARRAY || a->t == V_OBJECT || a->t == V_STR;
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (a->t != V_STR) return 0;
        jv c = str_case(C, a, name[0] == 'u');
        return !memcmp(c.s.s, a->s.s, a->s.n);
    }
    if (!strcmp(name, "defined")) return a->t != V_UNDEF;
    if (!strcmp(name, "undefined")) return a->t == V_UNDEF;
    if (!strcmp(name, "equalto") || !strcmp(name, "eq")) {
        if (!b) FAIL("the test '%s' needs a value to compare with", name);
        return pd__jv_strict_eq(a, b);
    }
    FAIL("Unknown test: %s", name);
}

/* ---- filters ---- */

/* compareRuntimeValues: numbers (and booleans) with each other, strings
 * with strings (case-insensitively unless case_sensitive). */
static int compare(jctx *C, const jnode *at, const jv *a, const jv *b, int case_sensitive)
{
    if (a->t == V_NONE && b->t == V_NONE) return 0;
    if (a->t == V_NONE || b->t == V_NONE) FAIL("Cannot compare %s with %s", pd__jv_type(a), pd__jv_type(b));
    if (a->t == V_UNDEF && b->t == V_UNDEF) return 0;
    if (a->t == V_UNDEF || b->t == V_UNDEF) FAIL("Cannot compare %s with %s", pd__jv_type(a), pd__jv_type(b));
    int an = a->t == V_INT || a->t == V_FLOAT || a->t == V_BOOL;
    int bn = b->t == V_INT || b->t == V_FLOAT || b->t == V_BOOL;
    if (an && bn) {
        double x = a->t == V_INT ? (double)a->i : a->t == V_FLOAT ? a->f : a->b;
        double y = b->t == V_INT ? (double)b->i : b->t == V_FLOAT ? b->f : b->b;
        return x < y ? -1 : x > y;
    }
    if (a->t != b->t) FAIL("Cannot compare different types: %s and %s", pd__jv_type(a), pd__jv_type(b));
    if (a->t != V_STR) FAIL("Cannot compare type: %s", pd__jv_type(a));
    jv x = case_sensitive ? *a : str_case(C, a, 0), y = case_sensitive ? *b : str_case(C, b, 0);
    size_t n = x.s.n < y.s.n ? x.s.n : y.s.n;
    int c = memcmp(x.s.s, y.s.s, n);
    return c ? (c < 0 ? -1 : 1) : (x.s.n > y.s.n) - (x.s.n < y.s.n);
}

static jv attribute_of(jctx *C, const jv *item, const char *path, size_t n)
{
    jv v = *item;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && path[j] != '.') j++;
        if (v.t == V_OBJECT || v.t == V_NS) {
            jv *x = pd__jv_get(v.o, path + i, j - i);
            v = x ? *x : UNDEF;
        } else if (v.t == V_ARRAY) {
            char num[24];
            if (j - i == 0 || j - i >= sizeof num) return UNDEF;
            memcpy(num, path + i, j - i);
            num[j - i] = 0;
            char *end;
            long k = strtol(num, &end, 10);
            if (end == num || k < 0 || k >= v.a->n) return UNDEF;
            v = v.a->v[k];
        } else {
            return UNDEF;
        }
        if (j >= n) return v;
        i = j + 1;
    }
    (void)C;
}

typedef struct { jctx *C; const jnode *at; const char *attr; size_t attr_n; int reverse, cs; } sort_ctx;

/* Insertion-stable merge sort; compare() may unwind, which leaves only
 * arena memory behind. */
static void sort_values(sort_ctx *S, jv *v, int n, jv *tmp)
{
    if (n < 2) return;
    int h = n / 2;
    sort_values(S, v, h, tmp);
    sort_values(S, v + h, n - h, tmp);
    int i = 0, j = h, k = 0;
    while (i < h && j < n) {
        jv a = S->attr ? attribute_of(S->C, &v[i], S->attr, S->attr_n) : v[i];
        jv b = S->attr ? attribute_of(S->C, &v[j], S->attr, S->attr_n) : v[j];
        int c = compare(S->C, S->at, &a, &b, S->cs);
        if (S->reverse) c = -c;
        tmp[k++] = c <= 0 ? v[i++] : v[j++];
    }
    while (i < h) tmp[k++] = v[i++];
    while (j < n) tmp[k++] = v[j++];
    memcpy(v, tmp, (size_t)n * sizeof *v);
}

static jv sorted(jctx *C, const jnode *at, const jv *arr, int reverse, int cs, const jv *attr)
{
    jv out = pd__jv_array(C, arr->a->n);
    for (int i = 0; i < arr->a->n; i++) pd__jv_push(C, out.a, arr->a->v[i]);
    sort_ctx S = {C, at, NULL, 0, reverse, cs};
    char num[24];
    if (attr && attr->t == V_STR) S.attr = attr->s.s, S.attr_n = attr->s.n;
    else if (attr && attr->t == V_INT) S.attr_n = (size_t)snprintf(num, sizeof num, "%lld", (long long)attr->i), S.attr = num;
    jv *tmp = pd__ja_alloc(&C->a, (size_t)(out.a->n + 1) * sizeof *tmp);
    sort_values(&S, out.a->v, out.a->n, tmp);
    return out;
}

static jv join(jctx *C, const jv *arr, const jv *sep)
{
    jsbuf b = {0};
    for (int i = 0; i < arr->a->n; i++) {
        if (i && sep) pd__sb_put(C, &b, sep->s.s, sep->s.n);
        const jv *x = &arr->a->v[i];
        if (x->t != V_NONE && x->t != V_UNDEF) pd__jv_concat_string(C, &b, x);
    }
    return pd__sb_value(C, &b);
}

static jv indent(jctx *C, const jv *s, int64_t width, int first, int blank)
{
    jsbuf b = {0};
    size_t i = 0;
    int line = 0;
    for (;;) {
        const char *nl = memchr(s->s.s + i, '\n', s->s.n - i);
        size_t j = nl ? (size_t)(nl - s->s.s) : s->s.n;
        if (line) pd__sb_put(C, &b, "\n", 1);
        if (!((!first && line == 0) || (!blank && j == i)))
            for (int64_t k = 0; k < width; k++) pd__sb_put(C, &b, " ", 1);
        pd__sb_put(C, &b, s->s.s + i, j - i);
        if (!nl) break;
        i = j + 1;
        line++;
    }
    return pd__sb_value(C, &b);
}

/* parseInt(s, 10) / parseFloat(s); 0 when there is no number. */
static int parse_number(const jv *s, int integer, double *out)
{
    char buf[128];
    size_t i = trim_start(s->s.s, s->s.n), n = s->s.n - i;
    if (n >= sizeof buf) n = sizeof buf - 1;
    memcpy(buf, s->s.s + i, n);
    buf[n] = 0;
    char *end;
    if (integer) {
        size_t k = 0;
        if (buf[k] == '+' || buf[k] == '-') k++;
        if (!(buf[k] >= '0' && buf[k] <= '9')) return 0;
        *out = trunc(strtod(buf, &end));
        for (k = (buf[0] == '+' || buf[0] == '-'); buf[k] >= '0' && buf[k] <= '9'; k++) {}
        buf[k] = 0;
        *out = strtod(buf, &end);
        return 1;
    }
    if (!strncmp(buf, "Infinity", 8) || !strncmp(buf, "+Infinity", 9)) { *out = INFINITY; return 1; }
    if (!strncmp(buf, "-Infinity", 9)) { *out = -INFINITY; return 1; }
    for (size_t k = 0; buf[k]; k++)
        if (!strchr("0123456789+-.eE", buf[k])) { buf[k] = 0; break; }
    *out = strtod(buf, &end);
    return end != buf;
}

static jv number_value(double f, int integer)
{
    if (integer) return pd__jv_int(f >= 9.0e18 ? INT64_MAX : f <= -9.0e18 ? INT64_MIN : (int64_t)f);
    return pd__jv_float(f);
}

static jv simple_filter(jctx *C, const jnode *at, const jv *v, const char *f)
{
    if (!strcmp(f, "safe")) return *v;
    if (!strcmp(f, "count") && (v->t == V_ARRAY || v->t == V_STR || v->t == V_OBJECT))
        f = "length"; /* Jinja's alias, which the reference lacks */
    if (!strcmp(f, "tojson")) {
        jjson_opts o = {.undefined_as_null = 1};
        jsbuf b = {0};
        pd__jv_json(C, &b, v, &o, 0);
        return pd__sb_value(C, &b);
    }
    switch (v->t) {
    case V_ARRAY: {
        jarr *a = v->a;
        if (!strcmp(f, "list")) return *v;
        if (!strcmp(f, "first")) return a->n ? a->v[0] : UNDEF;
        if (!strcmp(f, "last")) return a->n ? a->v[a->n - 1] : UNDEF;
        if (!strcmp(f, "length")) return pd__jv_int(a->n);
        if (!strcmp(f, "reverse")) {
            jv out = pd__jv_array(C, a->n);
            for (int i = a->n - 1; i >= 0; i--) pd__jv_push(C, out.a, a->v[i]);
            return out;
        }
        if (!strcmp(f, "sort")) return sorted(C, at, v, 0, 0, NULL);
        if (!strcmp(f, "join")) return join(C, v, NULL);
        if (!strcmp(f, "string")) {
            jjson_opts o = {0};
            jsbuf b = {0};
            pd__jv_json(C, &b, v, &o, 0);
            return pd__sb_value(C, &b);
        }
        if (!strcmp(f, "unique")) {
            jv out = pd__jv_array(C, 0);
            for (int i = 0; i < a->n; i++) {
                int seen = 0;
                for (int j = 0; j < out.a->n && !seen; j++) {
                    const jv *x = &out.a->v[j], *y = &a->v[i];
                    seen = (x->t == V_BOOL) == (y->t == V_BOOL) && pd__jv_strict_eq(x, y);
                }
                if (!seen) pd__jv_push(C, out.a, a->v[i]);
            }
            return out;
        }
        FAIL("Unknown ArrayValue filter: %s", f);
    }
    case V_STR:
        if (!strcmp(f, "length")) return pd__jv_int(utf16_len(v));
        if (!strcmp(f, "upper")) return str_case(C, v, 1);
        if (!strcmp(f, "lower")) return str_case(C, v, 0);
        if (!strcmp(f, "title")) return str_case(C, v, 2);
        if (!strcmp(f, "capitalize")) return str_case(C, v, 3);
        if (!strcmp(f, "trim")) {
            size_t a = trim_start(v->s.s, v->s.n);
            return sub(C, v, a, a + trim_end(v->s.s + a, v->s.n - a));
        }
        if (!strcmp(f, "indent")) return indent(C, v, 4, 0, 0);
        if (!strcmp(f, "join") || !strcmp(f, "string")) return *v;
        if (!strcmp(f, "int") || !strcmp(f, "float")) {
            double d;
            int integer = f[0] == 'i';
            if (!parse_number(v, integer, &d)) d = 0;
            return number_value(d, integer);
        }
        FAIL("Unknown StringValue filter: %s", f);
    case V_INT: case V_FLOAT:
        if (!strcmp(f, "abs"))
            return v->t == V_INT ? pd__jv_int(v->i == INT64_MIN ? INT64_MAX : v->i < 0 ? -v->i : v->i)
                                 : pd__jv_float(fabs(v->f));
        if (!strcmp(f, "int")) return v->t == V_INT ? *v : number_value(floor(v->f), 1);
        if (!strcmp(f, "float")) return pd__jv_float(v->t == V_INT ? (double)v->i : v->f);
        if (!strcmp(f, "string")) {
            jsbuf b = {0};
            pd__jv_print(C, &b, v);
            return pd__sb_value(C, &b);
        }
        FAIL("Unknown NumericValue filter: %s", f);
    case V_OBJECT:
        if (!strcmp(f, "items")) return pairs(C, v->o, 0);
        if (!strcmp(f, "length")) return pd__jv_int(v->o->n);
        if (!strcmp(f, "keys")) return pairs(C, v->o, 1);
        if (!strcmp(f, "values")) return pairs(C, v->o, 2);
        if (!strcmp(f, "get")) return NONE;
        if (!strcmp(f, "dictsort")) {
            jarr pos = {0};
            jobj kw = {0};
            return dictsort(C, at, v, &pos, &kw);
        }
        FAIL("Unknown ObjectValue filter: %s", f);
    case V_BOOL:
        if (!strcmp(f, "bool")) return *v;
        if (!strcmp(f, "int")) return pd__jv_int(v->b);
        if (!strcmp(f, "float")) return pd__jv_float(v->b);
        if (!strcmp(f, "string")) return pd__jv_str(C, v->b ? "true" : "false", v->b ? 4 : 5);
        FAIL("Unknown BooleanValue filter: %s", f);
    default:
        FAIL("Cannot apply filter \"%s\" to type: %s", f, pd__jv_type(v));
    }
}

/* The i-th positional argument, else keyword name, else NULL. */
static const jv *arg(const jarr *pos, const jobj *kw, int i, const char *name)
{
    if (i >= 0 && i < pos->n) return &pos->v[i];
    return name ? pd__jv_get(kw, name, strlen(name)) : NULL;
}

static int flag_arg(jctx *C, const jnode *at, const jarr *pos, const jobj *kw, int i, const char *name)
{
    const jv *b = arg(pos, kw, i, name);
    if (!b) return 0;
    if (b->t != V_BOOL) FAIL("%s must be a boolean", name);
    return b->b;
}

static jv tojson_filter(jctx *C, const jnode *at, const jv *v, jobj *kw)
{
    jjson_opts o = {.undefined_as_null = 1};
    const jv *ind = pd__jv_get(kw, "indent", 6);
    if (ind && ind->t != V_INT && ind->t != V_NONE) FAIL("If set, indent must be a number");
    if (ind && ind->t == V_INT) {
        if (ind->i > 64) FAIL("tojson: indent of %lld is too large", (long long)ind->i);
        o.indent = ind->i > 0 ? (int)ind->i : 0;
    }
    const jv *ea = pd__jv_get(kw, "ensure_ascii", 12);
    if (ea && ea->t != V_BOOL) FAIL("If set, ensure_ascii must be a boolean");
    o.ensure_ascii = ea && ea->b;
    const jv *sk = pd__jv_get(kw, "sort_keys", 9);
    if (sk && sk->t != V_BOOL) FAIL("If set, sort_keys must be a boolean");
    o.sort_keys = sk && sk->b;
    const jv *sep = pd__jv_get(kw, "separators", 10);
    if (sep && sep->t == V_ARRAY) {
        if (sep->a->n != 2 || sep->a->v[0].t != V_STR || sep->a->v[1].t != V_STR)
            FAIL("separators must be a tuple of two strings");
        o.item_sep = pd__ja_strndup(&C->a, sep->a->v[0].s.s, sep->a->v[0].s.n);
        o.key_sep = pd__ja_strndup(&C->a, sep->a->v[1].s.s, sep->a->v[1].s.n);
    } else if (sep && sep->t != V_NONE) {
        FAIL("If set, separators must be a tuple of two strings");
    }
    jsbuf b = {0};
    pd__jv_json(C, &b, v, &o, 0);
    return pd__sb_value(C, &b);
}

static jv select_attr(jctx *C, const jnode *at, const jv *v, const jnode *call, jscope *s, int select)
{
    const char *name = select ? "selectattr" : "rejectattr";
    for (int i = 0; i < v->a->n; i++)
        if (v->a->v[i].t != V_OBJECT && v->a->v[i].t != V_NS) FAIL("`%s` can only be applied to array of objects", name);
    for (int i = 0; i < call->n1; i++)
        if (call->k1[i]->kind != N_STR) FAIL("arguments of `%s` must be strings", name);
    if (!call->n1) FAIL("`%s` needs an attribute name", name);
    jv attr = pd__jv_eval(C, call->k1[0], s);
    jv test = call->n1 > 1 ? pd__jv_eval(C, call->k1[1], s) : UNDEF;
    jv value = call->n1 > 2 ? pd__jv_eval(C, call->k1[2], s) : UNDEF;
    jv out = pd__jv_array(C, 0);
    for (int i = 0; i < v->a->n; i++) {
        jv *a = pd__jv_get(v->a->v[i].o, attr.s.s, attr.s.n);
        int r = 0;
        if (a) {
            if (test.t == V_STR) {
                char *tn = pd__ja_strndup(&C->a, test.s.s, test.s.n);
                r = pd__jv_test(C, at, tn, a, call->n1 > 2 ? &value : &UNDEF);
            } else {
                r = pd__jv_truthy(a);
            }
        }
        if (r == select) pd__jv_push(C, out.a, v->a->v[i]);
    }
    return out;
}

jv pd__jv_filter(jctx *C, const jnode *at, const jv *v, const jnode *filter, jscope *s)
{
    if (filter->kind == N_IDENT) return simple_filter(C, at, v, filter->s);
    if (filter->kind != N_CALL || filter->a->kind != N_IDENT) FAIL("Unknown filter");
    const char *f = filter->a->s;
    jarr pos = {0};
    jobj kw = {0};
    if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr")) {
        if (v->t != V_ARRAY) FAIL("Cannot apply filter \"%s\" to type: %s", f, pd__jv_type(v));
        return select_attr(C, at, v, filter, s, f[0] == 's');
    }
    pd__jv_args(C, filter->k1, filter->n1, s, &pos, &kw);
    C->at = at;
    if (!strcmp(f, "tojson")) return tojson_filter(C, at, v, &kw);
    if (!strcmp(f, "join")) {
        jv arr = *v;
        if (v->t == V_STR) {
            arr = pd__jv_array(C, 0);
            for (size_t i = 0; i < v->s.n;) {
                unsigned cp;
                size_t len = pd__utf8_decode(v->s.s + i, v->s.n - i, &cp);
                pd__jv_push(C, arr.a, sub(C, v, i, i + len));
                i += len;
            }
        } else if (v->t != V_ARRAY) {
            FAIL("Cannot apply filter \"%s\" to type: %s", f, pd__jv_type(v));
        }
        const jv *sep = arg(&pos, &kw, 0, "separator");
        if (sep && sep->t != V_STR) FAIL("separator must be a string");
        jv empty = pd__jv_str(C, "", 0);
        return join(C, &arr, sep ? sep : &empty);
    }
    if (!strcmp(f, "int") || !strcmp(f, "float")) {
        int integer = f[0] == 'i';
        const jv *def = arg(&pos, &kw, 0, "default");
        if (v->t == V_STR) {
            double d;
            if (!parse_number(v, integer, &d) || isnan(d)) return def ? *def : number_value(0, integer);
            return number_value(d, integer);
        }
        if (v->t == V_INT || v->t == V_FLOAT) return *v;
        if (v->t == V_BOOL) return number_value(v->b, integer);
        FAIL("Cannot apply filter \"%s\" to type: %s", f, pd__jv_type(v));
    }
    if (!strcmp(f, "default")) {
        jv empty = pd__jv_str(C, "", 0);
        const jv *def = pos.n > 0 ? &pos.v[0] : &empty;
        const jv *b = pos.n > 1 ? &pos.v[1] : pd__jv_get(&kw, "boolean", 7);
        if (b && b->t != V_BOOL) FAIL("`default` filter flag must be a boolean");
        if (v->t == V_UNDEF || (b && b->b && !pd__jv_truthy(v))) return *def;
        return *v;
    }
    if (v->t == V_ARRAY) {
        if (!strcmp(f, "sort")) {
            int rev = flag_arg(C, at, &pos, &kw, 0, "reverse");
            int cs = flag_arg(C, at, &pos, &kw, 1, "case_sensitive");
            const jv *attr = arg(&pos, &kw, 2, "attribute");
            if (attr && attr->t != V_STR && attr->t != V_INT && attr->t != V_NONE)
                FAIL("attribute must be a string, integer, or null");
            return sorted(C, at, v, rev, cs, attr && attr->t != V_NONE ? attr : NULL);
        }
        if (!strcmp(f, "map")) {
            const jv *attr = pd__jv_get(&kw, "attribute", 9);
            if (!attr) FAIL("`map` expressions without `attribute` set are not currently supported.");
            if (attr->t != V_STR) FAIL("attribute must be a string");
            const jv *def = pd__jv_get(&kw, "default", 7);
            jv out = pd__jv_array(C, v->a->n);
            for (int i = 0; i < v->a->n; i++) {
                if (v->a->v[i].t != V_OBJECT && v->a->v[i].t != V_NS) FAIL("items in map must be an object");
                jv x = attribute_of(C, &v->a->v[i], attr->s.s, attr->s.n);
                pd__jv_push(C, out.a, x.t == V_UNDEF && def ? *def : x);
            }
            return out;
        }
        FAIL("Unknown ArrayValue filter: %s", f);
    }
    if (v->t == V_STR) {
        if (!strcmp(f, "indent")) {
            const jv *w = arg(&pos, &kw, 0, "width");
            if (w && w->t != V_INT) FAIL("width must be a number");
            int64_t width = w ? w->i : 4;
            if (width > 1024) FAIL("indent width %lld is too large", (long long)width);
            const jv *first = arg(&pos, &kw, 1, "first"), *blank = arg(&pos, &kw, 2, "blank");
            return indent(C, v, width, first && pd__jv_truthy(first), blank && pd__jv_truthy(blank));
        }
        if (!strcmp(f, "replace")) return str_replace(C, at, v, &pos, &kw);
        FAIL("Unknown StringValue filter: %s", f);
    }
    if (v->t == V_OBJECT) {
        jv m = pd__jv_method(C, v, f, strlen(f));
        if (m.t == V_FUNC) return pd__jv_call_builtin(C, at, m.fn, &pos, &kw);
        FAIL("Unknown ObjectValue filter: %s", f);
    }
    FAIL("Cannot apply filter \"%s\" to type: %s", f, pd__jv_type(v));
}
