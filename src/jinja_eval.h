/* jinja_eval.h — runtime values and the evaluator's context, shared by
 * jinja_eval.c (expressions and statements) and jinja_builtins.c (filters,
 * tests, methods, globals). Internal to the Jinja interpreter. */
#ifndef PREFIXD_JINJA_EVAL_H
#define PREFIXD_JINJA_EVAL_H

#include <jansson.h>

#include "jinja_internal.h"
#include "prefixd/jinja.h"

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_ARRAY, V_OBJECT, V_NS, V_FUNC };

typedef struct jv jv;
/* tuple: made by a tuple literal, which the reference treats apart in a few
 * places (no JSON, no unpacking in for, not `iterable`). */
typedef struct jarr { jv *v; int n, cap, tuple; } jarr;
/* Insertion-ordered mapping (objects, namespaces, scopes); keys borrowed. */
typedef struct jobj { const char **k; size_t *kn; jv *v; int n, cap; } jobj;
typedef struct jfunc jfunc;

struct jv {
    int t;
    union {
        int b;
        int64_t i;
        double f;
        struct { const char *s; size_t n; } s; /* not NUL-terminated */
        jarr *a;                               /* array: shared, by reference */
        jobj *o;                               /* object or namespace */
        jfunc *fn;
    };
};

enum {
    F_MACRO, F_RANGE, F_NAMESPACE, F_RAISE, F_STRFTIME,
    F_S_UPPER, F_S_LOWER, F_S_STRIP, F_S_TITLE, F_S_CAPITALIZE, F_S_RSTRIP, F_S_LSTRIP,
    F_S_STARTSWITH, F_S_ENDSWITH, F_S_SPLIT, F_S_REPLACE,
    F_O_GET, F_O_ITEMS, F_O_KEYS, F_O_VALUES, F_O_DICTSORT
};

typedef struct jscope jscope;

struct jfunc {
    int id;
    jv self;            /* the string or object a method is bound to */
    const jnode *macro; /* F_MACRO: its definition */
    jscope *closure;    /* a call block's caller(): the scope it sees; NULL:
                           a macro sees the scope it is called from */
};

struct jscope {
    jscope *parent;
    jobj vars;
};

typedef struct jsbuf { char *s; size_t n, cap; } jsbuf;

typedef struct jctx {
    jarena a;
    pd_err *err;
    pd_jinja_params p;
    int depth;
    long iterations;
    const jnode *at; /* the node being evaluated, for error positions */
} jctx;

typedef struct jjson_opts {
    int indent, ensure_ascii, sort_keys, undefined_as_null;
    const char *item_sep, *key_sep; /* NULL: the defaults */
} jjson_opts;

_Noreturn void pd__jv_fail(jctx *C, const jnode *at, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const char *pd__jv_type(const jv *v);
jv pd__jv_str(jctx *C, const char *s, size_t n);
jv pd__jv_strdup(jctx *C, const char *s, size_t n);
jv pd__jv_int(int64_t i);
jv pd__jv_float(double f);
jv pd__jv_bool(int b);
jv pd__jv_array(jctx *C, int cap);
void pd__jv_push(jctx *C, jarr *a, jv x);
jv pd__jv_object(jctx *C, int type);
jv *pd__jv_get(const jobj *o, const char *k, size_t n);
void pd__jv_set(jctx *C, jobj *o, const char *k, size_t n, jv x);
jv pd__jv_func(jctx *C, int id, const jv *self, const jnode *macro);
int pd__jv_truthy(const jv *v);
int pd__jv_strict_eq(const jv *a, const jv *b);
void pd__sb_put(jctx *C, jsbuf *b, const char *s, size_t n);
void pd__sb_puts(jctx *C, jsbuf *b, const char *s);
jv pd__sb_value(jctx *C, jsbuf *b);
void pd__js_number(double f, char *out, size_t cap);
void pd__jv_json(jctx *C, jsbuf *b, const jv *v, const jjson_opts *o, int depth);
void pd__jv_print(jctx *C, jsbuf *b, const jv *v);
void pd__jv_concat_string(jctx *C, jsbuf *b, const jv *v);
size_t pd__utf8_decode(const char *s, size_t n, unsigned *cp);
void pd__jv_iterate(jctx *C, const jnode *at);
jv pd__jv_eval(jctx *C, const jnode *x, jscope *s);
void pd__jv_args(jctx *C, jnode *const *args, int n, jscope *s, jarr *pos, jobj *kw);
int pd__jv_slice(jctx *C, const jnode *at, int n, const jv *start, const jv *stop, const jv *step,
                 int **idx);
jv pd__jv_member(jctx *C, const jnode *x, const jv *obj, const jv *prop);
jv pd__jv_call_macro(jctx *C, const jnode *at, const jfunc *fn, jarr *pos, jobj *kw, jscope *caller);

/* jinja_builtins.c */
jv pd__jv_global(jctx *C, const char *name);
jv pd__jv_method(jctx *C, const jv *obj, const char *name, size_t n);
jv pd__jv_call_builtin(jctx *C, const jnode *at, const jfunc *fn, jarr *pos, jobj *kw);
jv pd__jv_filter(jctx *C, const jnode *at, const jv *v, const jnode *filter, jscope *s);
int pd__jv_test(jctx *C, const jnode *at, const char *name, const jv *a, const jv *b);
jv pd__jv_str_slice(jctx *C, const jnode *at, const jv *s, const jv *start, const jv *stop,
                    const jv *step);
jv pd__jv_str_at(jctx *C, const jv *s, int64_t i);

#endif /* PREFIXD_JINJA_EVAL_H */
