/* log.c — the logging module: level filter and one callback. */
#include "prefixd/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static pd_log_fn log_fn;          /* set before threads start */
static void *log_user;
static atomic_int log_level = PD_LOG_INFO;

void pd_log_set_callback(pd_log_fn fn, void *user_data)
{
    log_fn = fn;
    log_user = user_data;
}

void pd_log_set_level(pd_log_level level) { atomic_store(&log_level, (int)level); }

pd_log_level pd_log_get_level(void) { return (pd_log_level)atomic_load(&log_level); }

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int pd_log_level_parse(const char *name)
{
    for (int i = 0; i <= PD_LOG_OFF; i++)
        if (strcmp(name, level_names[i]) == 0) return i;
    return -1;
}

void pd_log_stderr(pd_log_level level, const char *line, void *user_data)
{
    (void)user_data;
    struct timespec ts;
    struct tm tm;
    char when[32] = "";
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && gmtime_r(&ts.tv_sec, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr, "%s %-5s %s\n", when, level_names[level], line);
}

void pd_log(pd_log_level level, const char *fmt, ...)
{
    if (!log_fn || (int)level < atomic_load(&log_level)) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_fn(level, line, log_user);
}
