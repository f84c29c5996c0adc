/* jinja_internal.h — what the lexer, parser and evaluator of the Jinja
 * interpreter share (prefixd/jinja.h): the arena, the tokens, the syntax tree
 * and the runtime values.
 *
 * Design: the parser builds the tree in an arena owned by the template; a
 * render allocates every value, string and scope from a second arena, freed
 * in one go when the render ends. Errors unwind with longjmp to the entry
 * point (pd_jinja_parse / pd_jinja_render), which owns everything that was
 * allocated, so no path has to free on the way out.
 */
#ifndef PREFIXD_JINJA_INTERNAL_H
#define PREFIXD_JINJA_INTERNAL_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "prefixd/common.h"

/* ---- arena ---- */

typedef struct jarena_chunk jarena_chunk;
typedef struct jarena {
    jarena_chunk *head;
    size_t used, limit;  /* bytes taken from malloc, their bound */
    jmp_buf *fail;       /* where to unwind when out of memory or over limit */
    pd_err *err;
} jarena;

void *pd__ja_alloc(jarena *a, size_t n); /* zeroed; unwinds on failure */
char *pd__ja_strndup(jarena *a, const char *s, size_t n);
void pd__ja_free(jarena *a);

/* ---- tokens ---- */

enum {
    TK_TEXT, TK_NUM, TK_STR, TK_IDENT, TK_EQUALS, TK_LPAREN, TK_RPAREN,
    TK_OPEN_STMT, TK_CLOSE_STMT, TK_OPEN_EXPR, TK_CLOSE_EXPR, TK_LBRACKET,
    TK_RBRACKET, TK_LBRACE, TK_RBRACE, TK_COMMA, TK_DOT, TK_COLON, TK_PIPE,
    TK_ADD, TK_MUL, TK_POW, TK_CMP, TK_UNARY, TK_COMMENT
};

typedef struct jtoken {
    int type;
    const char *s; /* value (arena), NUL-terminated */
    size_t n;
    int line, col; /* of the token in the original source */
} jtoken;

/* Tokenizes src as @huggingface/jinja does (lstrip_blocks, trim_blocks).
 * Returns 0, or a PD_E… status with err "line L, column C: what". */
int pd__jinja_lex(jarena *a, const char *src, size_t len, jtoken **toks, int *ntoks, pd_err *err);

/* ---- syntax tree ---- */

enum {
    N_BLOCK, N_TEXT, N_COMMENT, N_IF, N_FOR, N_SET, N_MACRO, N_CALLBLOCK, N_FILTERBLOCK,
    N_BREAK, N_CONTINUE,
    N_INT, N_FLOAT, N_STR, N_ARRAY, N_TUPLE, N_OBJECT, N_IDENT, N_MEMBER, N_SLICE,
    N_CALL, N_UNARY, N_BINARY, N_FILTER, N_TEST, N_SELECT, N_TERNARY, N_KWARG, N_SPREAD,
    N_KWSPREAD
};

typedef struct jnode jnode;
struct jnode {
    int kind;
    int line, col;
    const char *s; size_t n;  /* text, string, identifier, operator */
    int64_t i; double f;      /* numbers */
    int flag;                 /* member: computed; test: negated */
    jnode *a, *b, *c;         /* if: test; for: var, iterable; set: target, value;
                                 member: object, property; slice: start, stop, step;
                                 call: callee; binary/unary: operands; filter:
                                 operand, filter (ident or call); ternary: cond,
                                 true, false; select: lhs, test; kwarg: key, value */
    jnode **k1; int n1;       /* body / items / args / object keys */
    jnode **k2; int n2;       /* else body / object values / macro parameters */
};

/* Parses tokens into a block. Returns 0 or PD_EFORMAT (err as above). */
struct pd_jinja_template;
const jnode *pd__jinja_root(const struct pd_jinja_template *t);

int pd__jinja_parse_tokens(jarena *a, const jtoken *t, int n, int max_depth, jnode **root,
                           pd_err *err);

#endif /* PREFIXD_JINJA_INTERNAL_H */
