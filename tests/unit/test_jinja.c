/* test_jinja.c — the Jinja interpreter: each construct, filter, test and
 * method against outputs of the reference (@huggingface/jinja 0.5.11, the
 * expected strings below were rendered by it), errors with their line and
 * column for bad syntax, unsupported features and runtime failures, and the
 * resource limits (output, memory, depth, iterations). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prefixd/jinja.h"

/* The reference's clock for strftime_now: 2024-07-26 13:20 UTC. */
#define NOW 1722000000LL

/* Renders src with ctx (JSON text); returns the status, *out the text. */
static int render(const char *src, const char *ctx_json, const pd_jinja_params *p, char **out,
                  pd_err *err)
{
    *out = NULL;
    pd_jinja_template *t;
    int rc = pd_jinja_parse(src, strlen(src), &t, err);
    if (rc < 0) return rc;
    json_error_t je;
    json_t *ctx = ctx_json ? json_loads(ctx_json, 0, &je) : NULL;
    if (ctx_json && !ctx) fail_msg("bad test context %s: %s", ctx_json, je.text);
    pd_jinja_params def = pd_jinja_default_params();
    def.now = NOW;
    rc = pd_jinja_render(t, ctx, p ? p : &def, out, NULL, err);
    json_decref(ctx);
    pd_jinja_free(t);
    return rc;
}

static void expect_output(const char *src, const char *ctx, const char *want)
{
    char *out;
    pd_err err;
    if (render(src, ctx, NULL, &out, &err) < 0) fail_msg("%s\n  template: %s", err.msg, src);
    if (strcmp(out, want)) fail_msg("template: %s\n  got:  [%s]\n  want: [%s]", src, out, want);
    free(out);
}

/* The status and a message that starts with prefix and contains what. */
static void expect_error(const char *src, const char *ctx, int code, const char *prefix,
                         const char *what)
{
    char *out;
    pd_err err;
    int rc = render(src, ctx, NULL, &out, &err);
    if (rc != code) fail_msg("template: %s\n  status %d (%s), want %d", src, rc, out ? out : err.msg, code);
    assert_null(out);
    if (strncmp(err.msg, prefix, strlen(prefix)) || !strstr(err.msg, what))
        fail_msg("template: %s\n  message \"%s\", want \"%s\" ... \"%s\"", src, err.msg, prefix, what);
}

/* ---- constructs, filters, tests, methods ---- */

static const struct { const char *src, *ctx, *want; } CASES[] = {
    {"{{ x }}|{{ x.y }}|{{ x is defined }}|{{ x is undefined }}|{{ none is none }}",
     "{}",
     "||false|true|true"},
    {"{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}",
     "{\"messages\": [1, 2, 3]}",
     "1032truefalse32;2121falsefalse313;3210falsetrue32;"},
    {"{% for x in [] %}no{% else %}empty{% endfor %}{% for x in [1,2,3,4] if x is odd %}{{ x }}{% endfor %}",
     "{}",
     "empty13"},
    {"{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
     "{\"d\": {\"b\": 1, \"a\": [1, \"x\"]}}",
     "b=1,a=[1, \"x\"],ba"},
    {"{% set ns = namespace(n=0, s='') %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}",
     "{}",
     "10 01234"},
    {"{% set x = 1 %}{% for i in range(3) %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}",
     "{}",
     "2341"},
    {"{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set blk %}  hi {{ a }}  {% endset %}[{{ blk }}]",
     "{}",
     "12[  hi 1  ]"},
    {"{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bo', punct='?') }} {{ greet(name='Cy') }}",
     "{}",
     "Hello Ann! Hello Bo? Hello Cy!"},
    {"{% if a %}A{% elif b %}B{% else %}C{% endif %}{% if not a and b or c %}X{% endif %}",
     "{\"a\": 0, \"b\": [1], \"c\": false}",
     "BX"},
    {"  {%- if true -%}  x  {%- endif -%}  |{{- ' y ' -}}|  {# note #}  {#- note -#}  z",
     "{}",
     "x| y |  z"},
    {"line1\n    {% if true %}\n  indented\n    {% endif %}\nend\n",
     "{}",
     "line1\n  indented\nend"},
    {"{{ m['role'] }} {{ m.content }} {{ m.get('missing', 'dflt') }} {{ m.get('role') }} {{ m.nope is none }}",
     "{\"m\": {\"role\": \"user\", \"content\": \"hi\"}}",
     "user hi dflt user false"},
    {"{{ xs[1:] }} {{ xs[::-1] }} {{ xs[-1] }} {{ xs[:2] }} {{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ 'h\303\251llo'[1] }}",
     "{\"xs\": [1, 2, 3]}",
     "[2, 3] [3, 2, 1] 3 [1, 2] el olleh \303\251"},
    {"{{ ' a b '.strip() }}|{{ ' a '.lstrip() }}|{{ ' a '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a-b-c'.split('-', 1) }}",
     "{}",
     "a b|a | a|[\"a\", \"b\", \"\", \"c\"]|[\"a\", \"b\"]|[\"a\", \"b-c\"]"},
    {"{{ 'ab'.startswith('a') }}{{ 'ab'.endswith(('x', 'b')) }}{{ 'aXbX'.replace('X', '-') }}{{ 'aXbX'.replace('X', '-', 1) }}{{ 'hello world'.title() }}{{ 'hELLO'.capitalize() }}{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}",
     "{}",
     "truetruea-b-a-bXHello WorldHELLOABab"},
    {"{{ d | tojson }} {{ d | tojson(indent=2) }} {{ [] | tojson(indent=2) }} {{ '\303\251\"\\n' | tojson }} {{ '\303\251' | tojson(ensure_ascii=true) }} {{ d | tojson(separators=(',', ':')) }}",
     "{\"d\": {\"a\": [1, 2.5, null, true], \"b\": {\"c\": \"x\"}, \"e\": {}}}",
     "{\"a\": [1, 2.5, null, true], \"b\": {\"c\": \"x\"}, \"e\": {}} {\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": {\n    \"c\": \"x\"\n  },\n  \"e\": {}\n} [] \"\303\251\\\"\\n\" \"\\u00e9\" {\"a\":[1,2.5,null,true],\"b\":{\"c\":\"x\"},\"e\":{}}"},
    {"{{ xs | length }} {{ 'abc' | length }} {{ d | length }} {{ xs | first }} {{ xs | last }} {{ xs | join(', ') }} {{ xs | reverse | list }} {{ [3, 1, 2] | sort }} {{ ['b', 'A', 'a'] | unique | list }}",
     "{\"xs\": [1, 2, 3], \"d\": {\"a\": 1}}",
     "3 3 1 1 3 1, 2, 3 [3, 2, 1] [1, 2, 3] [\"b\", \"A\", \"a\"]"},
    {"{{ '  x  ' | trim }} {{ 'ab' | upper }} {{ 'AB' | lower }} {{ 'ab cd' | title }} {{ 'ab' | capitalize }} {{ 'aXb' | replace('X', 'Y') }} {{ '12' | int + 1 }} {{ 'x' | int }} {{ 3.7 | int }} {{ 5 | string }} {{ 'a\nb' | indent(2) }} {{ 'a\nb' | indent(2, first=true) }}",
     "{}",
     "x AB ab Ab Cd Ab aYb 13 0 3 5 a\n  b   a\n  b"},
    {"{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('/') }} {{ ms | rejectattr('role', 'equalto', 'user') | list | length }} {{ ms | selectattr('tool') | list | length }} {{ ms | map(attribute='x', default='-') | join }}",
     "{\"ms\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\", \"tool\": 1}, {\"role\": \"user\", \"content\": \"c\"}]}",
     "a/c 1 1 ---"},
    {"{{ x | default('d') }} {{ '' | default('e', true) }} {{ 0 | default('f') }} {{ d.items() | list }} {{ d | items | list }}",
     "{\"d\": {\"k\": \"v\"}}",
     "d e 0 [[\"k\", \"v\"]] [[\"k\", \"v\"]]"},
    {"{{ 1 is number }}{{ 'a' is string }}{{ d is mapping }}{{ xs is iterable }}{{ xs is sequence }}{{ true is boolean }}{{ true is true }}{{ false is false }}{{ 2 is even }}{{ 1 is integer }}{{ 'ab' is lower }}{{ xs is not none }}",
     "{\"d\": {}, \"xs\": []}",
     "truetruetruetruetruetruetruetruetruetruetruetrue"},
    {"{{ 'a' in 'cat' }}{{ 2 in [1, 2] }}{{ 'k' in d }}{{ 'z' not in d }}{{ 1 == 1.0 }}{{ 'a' != 'b' }}{{ 1 < 2 }}{{ 2 >= 3 }}{{ x == none }}",
     "{\"d\": {\"k\": 1}}",
     "truetruetruetruetruetruetruefalsetrue"},
    {"{{ 'yes' if a else 'no' }} {{ [1, 2] + [3] }} {{ 'x' + 'y' }} {{ -a }} {{ +1 }} {{ not none }}",
     "{\"a\": 0}",
     "no [1, 2, 3] xy 0 1 true"},
    {"{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}",
     "{}",
     "0134"},
    {"{% filter upper %}shout {{ 'it' }}{% endfilter %} {{ \"double \\\"q\\\" \\t tab\" }} {{ 'a' 'b' }} {{ '\\u00e9\\x41' }}",
     "{}",
     "SHOUT IT double \"q\" \t tab ab \303\251A"},
    {"{{ strftime_now('%Y-%m-%d %H:%M %b %B %%') }}",
     "{}",
     "2024-07-26 13:20 Jul July %"},
    {"{{ {'a': 1, 'b': [true, none]} }} {{ [1, 'x', 2.0] }} {{ xs }}",
     "{\"xs\": [{\"a\": null}]}",
     "{\"a\": 1, \"b\": [true, null]} [1, \"x\", 2] [{\"a\": null}]"},
    {"{% generation %}gen{% endgeneration %}|{%- generation -%}  x  {%- endgeneration %}",
     "{}",
     "gen|x"},
};

static void test_reference_outputs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++)
        expect_output(CASES[i].src, CASES[i].ctx, CASES[i].want);
}

static void test_semantics(void **state)
{
    (void)state;
    /* JSON numbers with integral values are integers, as in JavaScript */
    expect_output("{{ a }} {{ b }} {{ a | tojson }} {{ b | tojson }}", "{\"a\": 2.0, \"b\": 0.1}",
                  "2 0.1 2 0.1");
    /* numbers as JavaScript prints them */
    expect_output("{{ a }} {{ b }} {{ c }} {{ d }} {{ b ~ '' }} {{ c ~ '' }} {{ e }} {{ [c, d] | tojson }} "
                  "{{ f / 8 }} {{ f / 4 }}",
                  "{\"a\": 1e21, \"b\": 0.000001, \"c\": 1.5e-7, \"d\": 123456789.125, \"e\": -0.5, "
                  "\"f\": 100}",
                  "1e+21 0.000001 1.5e-7 123456789.125 0.000001 1.5e-7 -0.5 [1.5e-7, 123456789.125] 12.5 25.0");
    /* loose == and strict `in` */
    expect_output("{{ 1 == '1' }} {{ 1 in ['1'] }} {{ none == x }} {{ true == 1 }}", NULL,
                  "true false true true");
    /* text of a broken iteration is dropped, as the reference's exceptions do */
    expect_output("{% for i in [1, 2, 3] %}<{{ i }}{% if i == 2 %}{% break %}{% endif %}>{% endfor %}",
                  NULL, "<1>");
    /* a macro sees the scope it is called from; kwargs when read */
    expect_output("{% macro m() %}{{ v }}{{ kwargs.k }}{% endmacro %}{% set v = 'V' %}{{ m(k=1) }}",
                  NULL, "V1");
    /* count: Jinja's alias of length, which the reference lacks */
    expect_output("{{ xs | count }} {{ 'abc' | count }} {{ d | count }}", "{\"xs\": [1, 2], \"d\": {}}",
                  "2 3 0");
    /* call blocks (outputs from the reference) */
    expect_output("{% macro wrap(t) %}<{{ t }}:{{ caller() }}>{% endmacro %}{% call wrap('a') %}"
                  "inner {{ 1 + 1 }}{% endcall %}", NULL, "<a:inner 2>");
    expect_output("{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}"
                  "{% set v = 'V' %}{% call(item) each([1,2]) %}[{{ item }}{{ v }}]{% endcall %}",
                  NULL, "[1V][2V]");
    expect_output("{% for k, v in d | dictsort %}{{ k }}={{ v }};{% endfor %}|"
                  "{{ d.dictsort(by='value', reverse=true) }}|{{ d.dictsort(true) }}",
                  "{\"d\": {\"b\": 2, \"a\": 3, \"C\": 1}}",
                  "a=3;b=2;C=1;|[[\"a\", 3], [\"b\", 2], [\"C\", 1]]|[[\"C\", 1], [\"a\", 3], [\"b\", 2]]");
    /* tuples cannot be unpacked in for, as in the reference */
    expect_error("{% for a, b in [(1, 2)] %}{{ a }}{% endfor %}", NULL, PD_EINVAL, "line 1, column 8",
                 "TupleValue");
}

/* ---- errors ---- */

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_error("{% if x %}open", NULL, PD_EFORMAT, "line 1, column", "endif");
    expect_error("ok\n  {% frobnicate %}", NULL, PD_EFORMAT, "line 2, column 6",
                 "unsupported statement: frobnicate");
    expect_error("{{ 1 + }}", NULL, PD_EFORMAT, "line 1, column 8", "Unexpected token");
    expect_error("{{ 'abc }}", NULL, PD_EFORMAT, "line 1, column 4", "end of input in a string");
    expect_error("{{ '\\q' }}", NULL, PD_EFORMAT, "line 1, column 5", "Unexpected escaped character 'q'");
    expect_error("{{ a ; b }}", NULL, PD_EFORMAT, "line 1, column 6", "Unexpected character ';'");
    expect_error("{# never closed", NULL, PD_EFORMAT, "line 1, column 1", "Missing end of comment");
    expect_error("{% for 1 in x %}{% endfor %}", NULL, PD_EFORMAT, "line 1", "loop variable");
    expect_error("{% macro m(a=1, b) %}{% endmacro %}", NULL, PD_EFORMAT, "line 1",
                 "Non-default argument follows default argument");
    expect_error("{{ x[] }}", NULL, PD_EFORMAT, "line 1", "at least one argument");
    expect_error("{% call 'm'() %}{% endcall %}", NULL, PD_EFORMAT, "line 1",
                 "Expected identifier following call statement");
    expect_error("{% with x = 1 %}{% endwith %}", NULL, PD_EFORMAT, "line 1, column 4",
                 "unsupported statement: with");
    expect_error("{{ a.1.2 if }}", NULL, PD_EFORMAT, "line 1", "");
}

static void test_runtime_errors(void **state)
{
    (void)state;
    expect_error("\n\n  {{ raise_exception('Conversation roles must alternate') }}", NULL, PD_EINVAL,
                 "line 3, column 6", "raise_exception: Conversation roles must alternate");
    expect_error("{{ x | frobnicate }}", "{\"x\": \"s\"}", PD_EINVAL, "line 1, column 6",
                 "Unknown StringValue filter: frobnicate");
    expect_error("{{ x is frob }}", NULL, PD_EINVAL, "line 1", "Unknown test: frob");
    expect_error("{{ x + 1 }}", NULL, PD_EINVAL, "line 1", "on undefined values");
    expect_error("{{ none ~ 'a' }}", NULL, PD_EINVAL, "line 1", "null values");
    expect_error("{% for x in 5 %}{% endfor %}", NULL, PD_EINVAL, "line 1", "Expected iterable");
    expect_error("{{ 'a'.nope() }}", NULL, PD_EINVAL, "line 1", "not a function");
    expect_error("{{ 1 // 0 }}", NULL, PD_EINVAL, "line 1", "division by zero");
    expect_error("{{ xs | map('x') }}", "{\"xs\": []}", PD_EINVAL, "line 1", "attribute");
    expect_error("{% set x.y = 1 %}", "{\"x\": {}}", PD_EINVAL, "line 1", "non-namespace");
    expect_error("{{ f }}{% macro f() %}{% endmacro %}{{ f }}", NULL, PD_EINVAL, "line 1",
                 "printing a function");
    expect_error("{% break %}", NULL, PD_EINVAL, "", "outside of a loop");
}

/* ---- limits ---- */

static void test_limits(void **state)
{
    (void)state;
    pd_jinja_params p = pd_jinja_default_params();
    char *out;
    pd_err err;
    p.max_output = 1000;
    assert_int_equal(render("{% for i in range(200) %}abcdef{% endfor %}", NULL, &p, &out, &err),
                     PD_ERANGE);
    assert_non_null(strstr(err.msg, "longer than 1000 bytes"));
    p = pd_jinja_default_params();
    p.max_iterations = 100;
    assert_int_equal(render("{% for i in range(10) %}{% for j in range(20) %}{% endfor %}{% endfor %}",
                            NULL, &p, &out, &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "more than 100 loop iterations"));
    p = pd_jinja_default_params();
    assert_int_equal(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, &p, &out,
                            &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "recursive macro"));
    p.max_memory = 1u << 20; /* a string doubling itself */
    assert_int_equal(render("{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
                            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", NULL, &p, &out, &err),
                     PD_ERANGE);
    /* deep nesting in the source is refused while parsing, not on the stack */
    size_t n = 100000;
    char *deep = malloc(2 * n + 8);
    assert_non_null(deep);
    memcpy(deep, "{{ ", 3);
    memset(deep + 3, '(', n);
    strcpy(deep + 3 + n, "1");
    pd_jinja_template *t;
    assert_int_equal(pd_jinja_parse(deep, strlen(deep), &t, &err), PD_EFORMAT);
    assert_non_null(strstr(err.msg, "nesting deeper"));
    free(deep);
    /* a template renders the same from several threads' worth of calls: it is
     * not changed by rendering */
    const char *twice = "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1) }}{{ m(2) }}";
    assert_int_equal(pd_jinja_parse(twice, strlen(twice), &t, &err), PD_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pd_jinja_render(t, NULL, NULL, &out, NULL, &err), PD_OK);
        assert_string_equal(out, "12");
        free(out);
    }
    pd_jinja_free(t);
    pd_jinja_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_outputs),
        cmocka_unit_test(test_semantics),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
