/* test_multipart.c — the multipart/form-data parser of POST /v1/files
 * (server/multipart.c): the boundary of a Content-Type header (token,
 * quoted, case, other parameters, every malformed form); good bodies as
 * OpenAI's clients, curl and browsers send them (several parts, preamble and
 * epilogue, transport padding, CRLF and near-delimiters inside data, quoted
 * boundaries and filenames with spaces and escapes, empty parts); malformed
 * ones (no delimiter, truncated, no closing delimiter, bare LF, header
 * lines too long or too many, missing or bad Content-Disposition, too many
 * parts) refused with the right status; and every truncation and every
 * single-byte change of a good body parsed from an exact-size heap copy, so
 * that AddressSanitizer sees any read past the end. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../server/multipart.h"

#define CAP 16

/* Parses body[0..len) from an exact-size heap copy. */
static int parse_n(const char *body, size_t len, const char *boundary, mp_part *parts, int cap,
                   pd_err *err)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, body, len);
    int n = mp_parse(copy, len, boundary, parts, cap, err);
    /* the parts point into the copy: check them before it goes */
    for (int i = 0; i < n; i++) {
        assert_true(parts[i].data >= copy);
        assert_true((size_t)(parts[i].data - copy) + parts[i].len <= len);
        /* rebase onto the caller's buffer so the tests can compare */
        parts[i].data = body + (parts[i].data - copy);
    }
    free(copy);
    return n;
}

static int parse(const char *body, const char *boundary, mp_part *parts, pd_err *err)
{
    return parse_n(body, strlen(body), boundary, parts, CAP, err);
}

static void assert_data(const mp_part *p, const char *want)
{
    assert_int_equal(p->len, strlen(want));
    assert_memory_equal(p->data, want, p->len);
}

/* ---- boundary ------------------------------------------------------------------ */

static void test_boundary_good(void **state)
{
    (void)state;
    char b[MP_BOUNDARY_MAX + 1];
    pd_err err;
    assert_int_equal(mp_boundary("multipart/form-data; boundary=abc123", b, &err), 6);
    assert_string_equal(b, "abc123");
    assert_int_equal(mp_boundary("Multipart/Form-Data;BOUNDARY=x", b, &err), 1);
    assert_string_equal(b, "x");
    assert_int_equal(mp_boundary("multipart/form-data; charset=utf-8; boundary=\"a b:c\"", b,
                                 &err), 5);
    assert_string_equal(b, "a b:c");
    assert_int_equal(mp_boundary("  multipart/form-data ; boundary = \"q\\\"x\" ; x=y", b, &err),
                     3);
    assert_string_equal(b, "q\"x");
    /* what the clients send */
    assert_true(mp_boundary("multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
                            b, &err) > 0);
    assert_true(mp_boundary("multipart/form-data; boundary=------------------------d74496d66958873e",
                            b, &err) > 0);
    char max[120] = "multipart/form-data; boundary=";
    memset(max + strlen(max), 'z', 70);
    assert_int_equal(mp_boundary(max, b, &err), 70);
}

static void test_boundary_bad(void **state)
{
    (void)state;
    char b[MP_BOUNDARY_MAX + 1];
    pd_err err;
    static const char *const bad[] = {
        "",
        "application/json",
        "multipart/mixed; boundary=x",
        "multipart/form-data",
        "multipart/form-data;",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=\"\"",
        "multipart/form-data; boundary=\"abc",
        "multipart/form-data; boundary=\"abc\\",
        "multipart/form-data; boundary=\"trailing \"",
        "multipart/form-data; boundary=\"tab\there\"",
        "multipart/form-data; =x",
        "multipart/form-data; boundary",
        "multipart/form-data; boundary=a b",
        "multipart/form-data; boundary=\"x\"junk",
        "multipart/form-data; boundary=\"\xc3\xa9\"",
        "multipart/form-datax; boundary=x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = 0;
        if (mp_boundary(bad[i], b, &err) != PD_EINVAL) fail_msg("accepted: '%s'", bad[i]);
        assert_true(err.msg[0] != 0);
    }
    assert_int_equal(mp_boundary(NULL, b, &err), PD_EINVAL);
    char longb[120] = "multipart/form-data; boundary=";
    memset(longb + strlen(longb), 'z', 71);
    assert_int_equal(mp_boundary(longb, b, &err), PD_EINVAL);
}

/* ---- good bodies ----------------------------------------------------------------- */

static void test_two_parts(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    const char *body = "--XyZ\r\n"
                       "Content-Disposition: form-data; name=\"purpose\"\r\n"
                       "\r\n"
                       "fine-tune\r\n"
                       "--XyZ\r\n"
                       "Content-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n"
                       "Content-Type: application/jsonl\r\n"
                       "\r\n"
                       "{\"text\": \"a\"}\r\n{\"text\": \"b\"}\n\r\n"
                       "--XyZ--\r\n";
    assert_int_equal(parse(body, "XyZ", p, &err), 2);
    assert_string_equal(p[0].name, "purpose");
    assert_false(p[0].has_filename);
    assert_string_equal(p[0].filename, "");
    assert_string_equal(p[0].content_type, "");
    assert_data(&p[0], "fine-tune");
    assert_string_equal(p[1].name, "file");
    assert_true(p[1].has_filename);
    assert_string_equal(p[1].filename, "train.jsonl");
    assert_string_equal(p[1].content_type, "application/jsonl");
    assert_data(&p[1], "{\"text\": \"a\"}\r\n{\"text\": \"b\"}\n");
    assert_ptr_equal(mp_find(p, 2, "file"), &p[1]);
    assert_ptr_equal(mp_find(p, 2, "purpose"), &p[0]);
    assert_null(mp_find(p, 2, "nope"));
}

static void test_preamble_epilogue_padding(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    const char *body = "This is the preamble. --b is not a delimiter here.\r\n"
                       "--b \t\r\n"
                       "content-disposition: FORM-DATA; NAME=a\r\n"
                       "X-Other: ignored\r\n"
                       "\r\n"
                       "one\r\n"
                       "--b--   and an epilogue\r\n--b\r\nignored too";
    assert_int_equal(parse(body, "b", p, &err), 1);
    assert_string_equal(p[0].name, "a");
    assert_data(&p[0], "one");
}

static void test_near_delimiters_in_data(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    /* CRLF, "\r\n--", "\r\n--bound" and "\r\n--boundaryX" inside the data
     * are data; a lone CR at its end too */
    const char *body = "--boundary\r\n"
                       "Content-Disposition: form-data; name=\"f\"\r\n\r\n"
                       "a\r\n--\r\n--bound\r\n--boundaryX\r\n\r\n--boundary-\r"
                       "\r\n--boundary--";
    assert_int_equal(parse(body, "boundary", p, &err), 1);
    assert_data(&p[0], "a\r\n--\r\n--bound\r\n--boundaryX\r\n\r\n--boundary-\r");
}

static void test_empty_parts_and_names(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    const char *body = "--q\r\n"
                       "Content-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n\r\n"
                       "\r\n--q\r\n"
                       "Content-Disposition: form-data; name=x\r\n\r\n"
                       "\r\n--q--";
    assert_int_equal(parse(body, "q", p, &err), 2);
    assert_string_equal(p[0].name, "empty");
    assert_true(p[0].has_filename);
    assert_string_equal(p[0].filename, "");
    assert_int_equal(p[0].len, 0);
    assert_int_equal(p[1].len, 0);
    /* no parts at all: just the close delimiter */
    assert_int_equal(parse("--q--\r\n", "q", p, &err), 0);
}

static void test_quoted_boundary_and_filename(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    char b[MP_BOUNDARY_MAX + 1];
    assert_int_equal(mp_boundary("multipart/form-data; boundary=\"my (odd) boundary\"", b, &err),
                     17);
    const char *body = "--my (odd) boundary\r\n"
                       "Content-Disposition: form-data; name=\"file\"; "
                       "filename=\"my training data \\\"v2\\\".jsonl\"; filename*=UTF-8''x\r\n"
                       "Content-Type:   text/plain; charset=utf-8  \r\n"
                       "\r\n"
                       "{\"text\": \"hi\"}\n"
                       "\r\n--my (odd) boundary--\r\n";
    assert_int_equal(parse(body, b, p, &err), 1);
    assert_string_equal(p[0].filename, "my training data \"v2\".jsonl");
    assert_string_equal(p[0].content_type, "text/plain; charset=utf-8");
    assert_data(&p[0], "{\"text\": \"hi\"}\n");
}

static void test_binary_data(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    static const char body[] = "--k\r\nContent-Disposition: form-data; name=bin\r\n\r\n"
                               "\0\1\2\r\0\n\377\r\n--k--";
    assert_int_equal(parse_n(body, sizeof body - 1, "k", p, CAP, &err), 1);
    assert_int_equal(p[0].len, 7);
    assert_memory_equal(p[0].data, "\0\1\2\r\0\n\377", 7);
}

/* ---- malformed bodies ------------------------------------------------------------ */

typedef struct bad_case {
    const char *what;
    const char *body;
    int status;
} bad_case;

static void test_malformed(void **state)
{
    (void)state;
    static const bad_case cases[] = {
        {"empty", "", PD_EFORMAT},
        {"no delimiter", "hello world", PD_EFORMAT},
        {"other boundary", "--other\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n"
                           "--other--", PD_EFORMAT},
        {"delimiter only", "--b", PD_EFORMAT},
        {"delimiter line only", "--b\r\n", PD_EFORMAT},
        {"truncated in headers", "--b\r\nContent-Disposition: form-data; na", PD_EFORMAT},
        {"no empty line", "--b\r\nContent-Disposition: form-data; name=a\r\n", PD_EFORMAT},
        {"truncated in data", "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nxyz",
         PD_EFORMAT},
        {"no closing delimiter", "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n"
                                 "--b\r\nContent-Disposition: form-data; name=c\r\n\r\ny\r\n",
         PD_EFORMAT},
        {"close without CRLF before", "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx--b--",
         PD_EFORMAT},
        {"bare LF", "--b\nContent-Disposition: form-data; name=a\n\nx\n--b--\n", PD_EFORMAT},
        {"bare LF headers", "--b\r\nContent-Disposition: form-data; name=a\n\nx\r\n--b--",
         PD_EFORMAT},
        {"no disposition", "--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--", PD_EFORMAT},
        {"no headers", "--b\r\n\r\nx\r\n--b--", PD_EFORMAT},
        {"not form-data", "--b\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--b--",
         PD_EFORMAT},
        {"no name", "--b\r\nContent-Disposition: form-data; filename=a\r\n\r\nx\r\n--b--",
         PD_EFORMAT},
        {"empty name", "--b\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nx\r\n--b--",
         PD_EFORMAT},
        {"unterminated quote", "--b\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n"
                               "--b--", PD_EFORMAT},
        {"param without =", "--b\r\nContent-Disposition: form-data; name\r\n\r\nx\r\n--b--",
         PD_EFORMAT},
        {"two dispositions", "--b\r\nContent-Disposition: form-data; name=a\r\n"
                             "Content-Disposition: form-data; name=c\r\n\r\nx\r\n--b--",
         PD_EFORMAT},
        {"header without colon", "--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--",
         PD_EFORMAT},
        {"folded header", "--b\r\nContent-Disposition: form-data;\r\n name=a\r\n\r\nx\r\n--b--",
         PD_EFORMAT},
    };
    mp_part p[CAP];
    pd_err err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err.msg[0] = 0;
        int rc = parse(cases[i].body, "b", p, &err);
        if (rc != cases[i].status) fail_msg("%s: got %d (%s)", cases[i].what, rc, err.msg);
        assert_true(err.msg[0] != 0);
    }
}

static void test_limits(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    char *body = malloc(8192);
    assert_non_null(body);

    /* a header line just at the limit passes, one byte more does not */
    for (int extra = 0; extra < 2; extra++) {
        int n = snprintf(body, 8192, "--b\r\nContent-Disposition: form-data; name=a\r\nX-Pad: ");
        int line = MP_HEADER_LINE_MAX + extra - 7; /* "X-Pad: " is 7 bytes */
        memset(body + n, 'p', (size_t)line);
        n += line;
        n += snprintf(body + n, 8192 - (size_t)n, "\r\n\r\nx\r\n--b--");
        int rc = parse_n(body, (size_t)n, "b", p, CAP, &err);
        assert_int_equal(rc, extra ? PD_ERANGE : 1);
    }
    /* a header line too long without any CRLF at all (truncated body) */
    int n = snprintf(body, 8192, "--b\r\nX-Pad: ");
    memset(body + n, 'p', 4000);
    assert_int_equal(parse_n(body, (size_t)n + 4000, "b", p, CAP, &err), PD_ERANGE);

    /* too many header lines */
    n = snprintf(body, 8192, "--b\r\nContent-Disposition: form-data; name=a\r\n");
    for (int i = 0; i < MP_HEADERS_MAX; i++) n += snprintf(body + n, 8192 - (size_t)n, "X: y\r\n");
    n += snprintf(body + n, 8192 - (size_t)n, "\r\nx\r\n--b--");
    assert_int_equal(parse_n(body, (size_t)n, "b", p, CAP, &err), PD_ERANGE);

    /* a name and a filename of MP_NAME_MAX bytes fit; one more does not */
    for (int extra = 0; extra < 2; extra++) {
        for (int which = 0; which < 2; which++) {
            n = snprintf(body, 8192, "--b\r\nContent-Disposition: form-data; %s=\"",
                         which ? "name=a; filename" : "name");
            memset(body + n, 'n', MP_NAME_MAX + (size_t)extra);
            n += MP_NAME_MAX + extra;
            n += snprintf(body + n, 8192 - (size_t)n, "\"\r\n\r\nx\r\n--b--");
            assert_int_equal(parse_n(body, (size_t)n, "b", p, CAP, &err), extra ? PD_ERANGE : 1);
        }
    }
    /* a NUL byte in a name */
    static const char nul[] = "--b\r\nContent-Disposition: form-data; name=\"a\0\"\r\n\r\nx\r\n--b--";
    assert_int_equal(parse_n(nul, sizeof nul - 1, "b", p, CAP, &err), PD_ERANGE);
    /* a Content-Type too long */
    n = snprintf(body, 8192, "--b\r\nContent-Disposition: form-data; name=a\r\nContent-Type: ");
    memset(body + n, 't', MP_CTYPE_MAX + 1);
    n += MP_CTYPE_MAX + 1;
    n += snprintf(body + n, 8192 - (size_t)n, "\r\n\r\nx\r\n--b--");
    assert_int_equal(parse_n(body, (size_t)n, "b", p, CAP, &err), PD_ERANGE);
    free(body);

    /* a boundary that is not 1..70 characters */
    assert_int_equal(mp_parse("--\r\n", 4, "", p, CAP, &err), PD_EFORMAT);
    char longb[80];
    memset(longb, 'b', 71);
    longb[71] = 0;
    assert_int_equal(mp_parse("x", 1, longb, p, CAP, &err), PD_EFORMAT);
    /* NULL body of length 0 */
    assert_int_equal(mp_parse(NULL, 0, "b", p, CAP, &err), PD_EFORMAT);
}

static void test_huge_part_count(void **state)
{
    (void)state;
    const int N = 20000;
    static const char one[] = "--b\r\nContent-Disposition: form-data; name=p\r\n\r\nv\r\n";
    size_t len = (size_t)N * (sizeof one - 1) + 5;
    char *body = malloc(len + 1);
    assert_non_null(body);
    size_t n = 0;
    for (int i = 0; i < N; i++) {
        memcpy(body + n, one, sizeof one - 1);
        n += sizeof one - 1;
    }
    memcpy(body + n, "--b--", 5);
    n += 5;
    assert_int_equal(n, len);
    pd_err err;
    mp_part small[CAP];
    assert_int_equal(mp_parse(body, n, "b", small, CAP, &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "more than 16 parts"));
    mp_part *all = malloc((size_t)N * sizeof *all);
    assert_non_null(all);
    assert_int_equal(mp_parse(body, n, "b", all, N, &err), N);
    assert_data(&all[N - 1], "v");
    assert_int_equal(mp_parse(body, n, "b", all, 0, &err), PD_ERANGE);
    free(all);
    free(body);
}

/* ---- every truncation and every one-byte change ------------------------------------ */

static const char sample[] =
    "preamble\r\n--=_xx\r\n"
    "Content-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
    "--=_xx\r\n"
    "Content-Disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\".jsonl\"\r\n"
    "Content-Type: application/octet-stream\r\n\r\n"
    "{\"prompt\": \"x\", \"completion\": \" y\"}\r\n\r\n--=_x\r\n"
    "\r\n--=_xx--\r\n";

static void test_every_truncation(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    const size_t len = sizeof sample - 1;
    assert_int_equal(parse_n(sample, len, "=_xx", p, CAP, &err), 2);
    assert_string_equal(p[1].filename, "a \"b\".jsonl");
    assert_data(&p[1], "{\"prompt\": \"x\", \"completion\": \" y\"}\r\n\r\n--=_x\r\n");
    const size_t complete = len - 2; /* the body is whole once "--=_xx--" is there */
    for (size_t cut = 0; cut < len; cut++) {
        int rc = parse_n(sample, cut, "=_xx", p, CAP, &err);
        if (cut < complete) {
            if (rc >= 0) fail_msg("a body cut at %zu of %zu bytes was accepted", cut, len);
            assert_true(rc == PD_EFORMAT || rc == PD_ERANGE);
        } else {
            assert_int_equal(rc, 2);
        }
    }
}

static void test_every_byte_changed(void **state)
{
    (void)state;
    mp_part p[CAP];
    pd_err err;
    const size_t len = sizeof sample - 1;
    char *buf = malloc(len);
    assert_non_null(buf);
    static const unsigned char subst[] = {0, '\r', '\n', '-', '"', '\\', ';', '=', ' ', 0xff};
    for (size_t i = 0; i < len; i++) {
        for (size_t k = 0; k < sizeof subst; k++) {
            memcpy(buf, sample, len);
            buf[i] = (char)subst[k];
            int rc = parse_n(buf, len, "=_xx", p, CAP, &err);
            assert_true(rc >= 0 ? rc <= CAP : (rc == PD_EFORMAT || rc == PD_ERANGE));
            for (int j = 0; j < rc; j++) {
                assert_true(strlen(p[j].name) <= MP_NAME_MAX);
                assert_true(strlen(p[j].filename) <= MP_NAME_MAX);
            }
        }
        /* and the byte removed */
        memcpy(buf, sample, i);
        memcpy(buf + i, sample + i + 1, len - i - 1);
        int rc = parse_n(buf, len - 1, "=_xx", p, CAP, &err);
        assert_true(rc >= 0 ? rc <= CAP : (rc == PD_EFORMAT || rc == PD_ERANGE));
    }
    free(buf);
}

/* Pseudo-random bodies built from the pieces a parser cares about. */
static void test_random_pieces(void **state)
{
    (void)state;
    static const char *const pieces[] = {
        "--r", "--r--", "\r\n", "\r", "\n", "Content-Disposition: form-data; name=a",
        "Content-Disposition: form-data; name=\"", "filename=\"x\\\"", "; ", "Content-Type: t",
        "x", "\"", "\\", ":", "--", "\r\n--r\r\n", "\r\n--r--",
    };
    const size_t n_pieces = sizeof pieces / sizeof pieces[0];
    uint64_t x = 0x9E3779B97F4A7C15ull;
    char *body = malloc(4096);
    assert_non_null(body);
    mp_part p[4];
    pd_err err;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = 0;
        int count = 1 + (int)(x % 24);
        for (int k = 0; k < count; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            const char *piece = pieces[x % n_pieces];
            size_t pl = strlen(piece);
            if (len + pl > 4096) break;
            memcpy(body + len, piece, pl);
            len += pl;
        }
        int rc = parse_n(body, len, "r", p, 4, &err);
        assert_true(rc >= 0 ? rc <= 4 : (rc == PD_EFORMAT || rc == PD_ERANGE));
    }
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_boundary_good),
        cmocka_unit_test(test_boundary_bad),
        cmocka_unit_test(test_two_parts),
        cmocka_unit_test(test_preamble_epilogue_padding),
        cmocka_unit_test(test_near_delimiters_in_data),
        cmocka_unit_test(test_empty_parts_and_names),
        cmocka_unit_test(test_quoted_boundary_and_filename),
        cmocka_unit_test(test_binary_data),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_huge_part_count),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_every_byte_changed),
        cmocka_unit_test(test_random_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
