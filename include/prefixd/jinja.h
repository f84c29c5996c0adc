/* prefixd/jinja.h — a small Jinja interpreter for chat templates.
 *
 *     pd_jinja_template *t; pd_err err;
 *     if (pd_jinja_parse(src, strlen(src), &t, &err) < 0)
 *         ... err.msg is "line 3, column 12: Expected closing statement token" ...
 *     json_t *ctx = json_pack("{s:o, s:b}", "messages", msgs, "add_generation_prompt", 1);
 *     char *out; size_t n;
 *     pd_jinja_params p = pd_jinja_default_params();
 *     if (pd_jinja_render(t, ctx, &p, &out, &n, &err) < 0)
 *         ... err.msg is "line 7, column 5: raise_exception: Conversation roles must alternate ..." ...
 *     free(out); json_decref(ctx); pd_jinja_free(t);
 *
 * The language is the subset of Jinja that model chat templates use, with the
 * semantics of @huggingface/jinja (the engine of transformers.js), which is the
 * reference the tests compare against byte for byte: lstrip_blocks and
 * trim_blocks on, one trailing newline of the source dropped, `{%-`/`-%}`/
 * `{{-`/`-}}`/`{#-`/`-#}` whitespace control; statements if/elif/else, for
 * (loop.*, else, `for x in xs if cond`, tuple unpacking), set (names, tuples,
 * namespace attributes, block set), macro, call blocks, filter blocks,
 * break/continue;
 * expressions with literals, member/index access, slices, arithmetic, `~`,
 * comparisons, in/not in, and/or/not, ternaries, `x if c` selections, filters,
 * tests and the string/mapping methods templates call; globals range,
 * namespace, raise_exception and strftime_now. Values from the context are
 * JSON (a JSON number with an integral value is an integer, as in JavaScript).
 * Strings are UTF-8; length and indexing count UTF-16 units as the reference
 * does; upper/lower/title change ASCII letters only.
 *
 * Known differences from the reference, none of which the templates under
 * test reach: integers are 64-bit (JavaScript rounds beyond 2^53); mapping
 * keys keep the JSON order (JavaScript lists integer-like keys first);
 * tojson's sort_keys orders by bytes (the reference by locale); case changes
 * are ASCII-only; a context variable may shadow a global (the reference
 * refuses it); division and modulo by zero are errors (the reference prints
 * Infinity or NaN). One addition: the filter count (Jinja's alias of length).
 *
 * Anything else (an unknown statement, filter, test or method, a type
 * error) fails with PD_EFORMAT (parse) or PD_EINVAL (render) and
 * "line L, column C: what", never a crash. Rendering is bounded: output size,
 * memory, nesting/recursion depth and loop iterations (pd_jinja_params).
 *
 * A pd_jinja_template is immutable after parsing: any number of threads may
 * render it at once. Each render uses its own memory, freed before it
 * returns.
 */
#ifndef PREFIXD_JINJA_H
#define PREFIXD_JINJA_H

#include <jansson.h>
#include <stddef.h>

#include "prefixd/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_jinja_template pd_jinja_template;

typedef struct pd_jinja_params {
    size_t max_output;    /* bytes of rendered text, at most (default 16 MiB) */
    size_t max_memory;    /* bytes of working memory per render (default 256 MiB) */
    int max_depth;        /* nested macro calls and expression depth (default 64) */
    long max_iterations;  /* loop iterations over the whole render (default 1e6) */
    long long now;        /* strftime_now's clock, seconds since the epoch, shown
                             in local time; -1 (default): the real clock */
} pd_jinja_params;

pd_jinja_params pd_jinja_default_params(void);

/* Parses template source src[0..len) (need not be NUL-terminated). Returns
 * PD_OK and a new template in *out (pd_jinja_free), or PD_EFORMAT with
 * "line L, column C: what" in err, or PD_ENOMEM. The source is copied. */
int pd_jinja_parse(const char *src, size_t len, pd_jinja_template **out, pd_err *err);

/* Renders t with the variables of ctx (a JSON object, borrowed; NULL: none).
 * Returns PD_OK with *out a new NUL-terminated string (free()) of *out_len
 * bytes (out_len may be NULL), or PD_EINVAL with "line L, column C: what"
 * (raise_exception's message follows "raise_exception: "), PD_ERANGE when a
 * limit of p is reached (p NULL: the defaults), PD_ENOMEM. */
int pd_jinja_render(const pd_jinja_template *t, const json_t *ctx, const pd_jinja_params *p,
                    char **out, size_t *out_len, pd_err *err);

void pd_jinja_free(pd_jinja_template *t); /* NULL is a no-op */

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_JINJA_H */
