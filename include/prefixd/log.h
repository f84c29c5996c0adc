/* prefixd/log.h — the one logging module of libprefixd.
 *
 * Library code never prints: it calls pd_log(), which hands the formatted line
 * to the callback installed with pd_log_set_callback(). With no callback
 * installed, nothing is written. The prefixd binary installs one that writes
 * to stderr. Messages below the configured level are dropped before
 * formatting. Thread-safe: the callback may be called from any thread.
 */
#ifndef PREFIXD_LOG_H
#define PREFIXD_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pd_log_level {
    PD_LOG_DEBUG = 0,
    PD_LOG_INFO = 1,
    PD_LOG_WARN = 2,
    PD_LOG_ERROR = 3,
    PD_LOG_OFF = 4
} pd_log_level;

/* Receives one formatted line (no trailing newline); user_data as installed. */
typedef void (*pd_log_fn)(pd_log_level level, const char *line, void *user_data);

/* Installs the callback (NULL: silence) and its user data. Call before other
 * threads start logging. */
void pd_log_set_callback(pd_log_fn fn, void *user_data);

/* Messages below level are dropped. Default PD_LOG_INFO. */
void pd_log_set_level(pd_log_level level);
pd_log_level pd_log_get_level(void);

/* Parses "debug", "info", "warn", "error", "off"; returns -1 if unknown. */
int pd_log_level_parse(const char *name);

/* A ready-made callback writing "LEVEL line\n" to stderr (user_data unused). */
void pd_log_stderr(pd_log_level level, const char *line, void *user_data);

void pd_log(pd_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define PD_LOGD(...) pd_log(PD_LOG_DEBUG, __VA_ARGS__)
#define PD_LOGI(...) pd_log(PD_LOG_INFO, __VA_ARGS__)
#define PD_LOGW(...) pd_log(PD_LOG_WARN, __VA_ARGS__)
#define PD_LOGE(...) pd_log(PD_LOG_ERROR, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif /* PREFIXD_LOG_H */
