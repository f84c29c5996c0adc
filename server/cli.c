/* cli.c — option parsing helpers for the subcommands. */
#include "cli.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("prefixd: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_opt(int argc, char **argv, int *i, const char *name, const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != 0) return 0;
    if (*i + 1 >= argc) {
        cli_fail("%s needs a value", name);
        return -1;
    }
    *value = argv[++*i];
    return 1;
}

int cli_int(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        cli_fail("%s: '%s' is not a whole number in [%ld, %ld]", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
        cli_fail("%s: '%s' is not a number in [%g, %g]", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_u64(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        cli_fail("%s: '%s' is not a non-negative whole number", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_ids(const char *opt, const char *s, int vocab, int32_t **out)
{
    *out = NULL;
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        cli_fail("%s: out of memory", opt);
        return -1;
    }
    int n = 0;
    for (const char *p = s;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v >= vocab || (*end && *end != ',')) {
            cli_fail("%s: '%s': item %d is not a token id in [0, %d)", opt, s, n + 1, vocab);
            free(ids);
            return -1;
        }
        ids[n++] = (int32_t)v;
        if (!*end) break;
        p = end + 1;
    }
    *out = ids;
    return n;
}

pd_model *cli_load_model(const char *path, const char *tokenizer)
{
    if (!path) {
        cli_fail("--model is required");
        return NULL;
    }
    pd_model_params mp = pd_model_default_params();
    mp.path = path;
    mp.tokenizer_path = tokenizer;
    pd_model *m;
    pd_err err;
    if (pd_model_load(&mp, &m, &err) < 0) {
        cli_fail("%s", err.msg);
        return NULL;
    }
    return m;
}

void cli_set_threads(int n)
{
    if (n > 0) openblas_set_num_threads(n);
}
