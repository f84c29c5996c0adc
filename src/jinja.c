/* jinja.c — the entry points of the Jinja interpreter (prefixd/jinja.h) and
 * its arena: parse a template, free it. Rendering is in jinja_eval.c. */
#include "prefixd/jinja.h"

#include <stdlib.h>
#include <string.h>

#include "jinja_internal.h"

struct jarena_chunk {
    jarena_chunk *next;
    size_t size, used;
    max_align_t data[];
};

#define CHUNK_MIN (64u << 10)

void *pd__ja_alloc(jarena *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    if (!n) n = sizeof(max_align_t);
    jarena_chunk *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t size = n > CHUNK_MIN ? n : CHUNK_MIN;
        if (c && c->size * 2 > size && c->size < (16u << 20)) size = c->size * 2;
        if (size > a->limit || a->used > a->limit - size) {
            pd_err_set(a->err, PD_ERANGE, "template needs more than %zu bytes of memory", a->limit);
            longjmp(*a->fail, 1);
        }
        c = malloc(sizeof *c + size);
        if (!c) {
            pd_err_set(a->err, PD_ENOMEM, "out of memory in a template (%zu bytes)", size);
            longjmp(*a->fail, 1);
        }
        c->size = size;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->used += size;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

char *pd__ja_strndup(jarena *a, const char *s, size_t n)
{
    char *d = pd__ja_alloc(a, n + 1);
    if (n) memcpy(d, s, n);
    d[n] = 0;
    return d;
}

void pd__ja_free(jarena *a)
{
    jarena_chunk *c = a->head;
    while (c) {
        jarena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->used = 0;
}

pd_jinja_params pd_jinja_default_params(void)
{
    return (pd_jinja_params){.max_output = 16u << 20, .max_memory = 256u << 20, .max_depth = 64,
                             .max_iterations = 1000000, .now = -1};
}

/* Parsing: the tree lives in the template's own arena. */
struct pd_jinja_template {
    jarena arena;
    jnode *root;
};

/* Source nesting deeper than this is refused while parsing. */
#define PARSE_MAX_DEPTH 200

/* The part that may unwind: nothing it changes lives in a register across
 * setjmp. */
static int parse_into(pd_jinja_template *t, const char *src, size_t len, pd_err *err)
{
    jmp_buf jb;
    t->arena.fail = &jb;
    t->arena.err = err;
    if (setjmp(jb)) return err->code ? err->code : PD_EFORMAT;
    jtoken *toks;
    int n;
    pd__jinja_lex(&t->arena, src, len, &toks, &n, err);
    pd__jinja_parse_tokens(&t->arena, toks, n, PARSE_MAX_DEPTH, &t->root, err);
    t->arena.fail = NULL;
    t->arena.err = NULL;
    return PD_OK;
}

int pd_jinja_parse(const char *src, size_t len, pd_jinja_template **out, pd_err *err)
{
    PD_ASSERT(out && (src || !len));
    *out = NULL;
    pd_err local;
    if (!err) err = &local;
    pd_err_clear(err);
    if (len > ((size_t)1 << 24))
        return pd_err_set(err, PD_ERANGE, "template of %zu bytes (at most 16 MiB)", len);
    pd_jinja_template *t = calloc(1, sizeof *t);
    if (!t) return pd_err_set(err, PD_ENOMEM, "out of memory parsing a template");
    t->arena.limit = (size_t)64 << 20;
    int rc = parse_into(t, src ? src : "", len, err);
    if (rc < 0) {
        pd_jinja_free(t);
        return rc;
    }
    *out = t;
    return PD_OK;
}

void pd_jinja_free(pd_jinja_template *t)
{
    if (!t) return;
    pd__ja_free(&t->arena);
    free(t);
}

const jnode *pd__jinja_root(const pd_jinja_template *t) { return t->root; }
