/* prefixd/common.h — status codes, error details and invariant checks shared by
 * every module of libprefixd.
 *
 * Two tiers of failure (STYLE.md §5):
 *   - a broken invariant is a bug: PD_ASSERT(expr) prints the expression and
 *     file:line to stderr and aborts;
 *   - anything input or the outside world can cause returns a negative PD_E…
 *     status, and fills an optional pd_err with a one-line message that names
 *     what is wrong and where (file, offset, line, field).
 *
 *     pd_err err;
 *     if (pd_model_load(&params, &model, &err) < 0)
 *         fprintf(stderr, "prefixd: %s\n", err.msg);
 */
#ifndef PREFIXD_COMMON_H
#define PREFIXD_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, text): the one table of status codes. */
#define PD_STATUS_MAP(X)                                   \
    X(OK, 0, "success")                                    \
    X(EIO, -1, "input/output error")                       \
    X(ENOMEM, -2, "out of memory")                         \
    X(EFORMAT, -3, "malformed file")                       \
    X(ETRUNC, -4, "file truncated")                        \
    X(EVERSION, -5, "unsupported format version")          \
    X(EUNSUPPORTED, -6, "unsupported feature")             \
    X(EINVAL, -7, "invalid argument")                      \
    X(EMISMATCH, -8, "does not match the base model")      \
    X(ENOTFOUND, -9, "not found")                          \
    X(ERANGE, -10, "value out of range")                   \
    X(EEXIST, -11, "already exists")                       \
    X(EBUSY, -12, "resource busy")                         \
    X(ECANCELLED, -13, "cancelled")                        \
    X(ESYS, -14, "system call failed")                     \
    X(EUNAVAIL, -15, "service unavailable")

typedef enum pd_status {
#define PD__STATUS_ENUM(name, value, text) PD_##name = value,
    PD_STATUS_MAP(PD__STATUS_ENUM)
#undef PD__STATUS_ENUM
} pd_status;

/* Returns a static, human-readable text for a status code (never NULL). */
const char *pd_strerror(int status);

/* Error details. Every function that takes a pd_err* accepts NULL. */
#define PD_ERR_MSG_MAX 512
typedef struct pd_err {
    int code;                 /* the status returned, PD_OK when none */
    char msg[PD_ERR_MSG_MAX]; /* one line: what is wrong and where */
} pd_err;

/* Fills err (if not NULL) with code and a printf-style message; returns code,
 * so callers can write `return pd_err_set(err, PD_EFORMAT, "...", ...);`. */
int pd_err_set(pd_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err to PD_OK and an empty message. */
void pd_err_clear(pd_err *err);

/* Broken invariant: prints expression and location, then aborts. */
#define PD_ASSERT(expr)                                                  \
    do {                                                                 \
        if (!(expr)) pd__assert_fail(#expr, __FILE__, __LINE__, __func__); \
    } while (0)

_Noreturn void pd__assert_fail(const char *expr, const char *file, int line,
                               const char *func);

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_COMMON_H */
