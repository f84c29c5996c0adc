/* error.c — status texts, error details and the invariant-failure handler. */
#include "prefixd/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *pd_strerror(int status)
{
    switch (status) {
#define PD__STATUS_TEXT(name, value, text) case value: return text;
        PD_STATUS_MAP(PD__STATUS_TEXT)
#undef PD__STATUS_TEXT
    }
    return "unknown status";
}

int pd_err_set(pd_err *err, int code, const char *fmt, ...)
{
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void pd_err_clear(pd_err *err)
{
    if (err) {
        err->code = PD_OK;
        err->msg[0] = 0;
    }
}

void pd__assert_fail(const char *expr, const char *file, int line, const char *func)
{
    fprintf(stderr, "prefixd: assertion failed: %s (%s:%d, %s)\n", expr, file, line, func);
    abort();
}
