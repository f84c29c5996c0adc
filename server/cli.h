/* cli.h — small helpers shared by the subcommands: option values, numbers
 * with range checks, and the one-line error convention ("prefixd: …" on
 * stderr, exit status 1; usage errors exit 2). */
#ifndef PREFIXD_SERVER_CLI_H
#define PREFIXD_SERVER_CLI_H

#include <stdint.h>

#include "prefixd/model.h"

/* If argv[*i] is `name`, stores argv[*i + 1] in *value, advances *i and
 * returns 1; if the value is missing, prints an error and returns -1;
 * otherwise returns 0. Also accepts `name=value`. */
int cli_opt(int argc, char **argv, int *i, const char *name, const char **value);

/* Parse numbers; on error print "prefixd: <opt>: …" and return -1. */
int cli_int(const char *opt, const char *s, long lo, long hi, long *out);
int cli_float(const char *opt, const char *s, double lo, double hi, double *out);
int cli_u64(const char *opt, const char *s, uint64_t *out);

/* Parses a comma-separated list of token ids, each in [0, vocab), into a
 * new array *out (free() it). Returns the count (>= 1), or -1 after
 * printing "prefixd: <opt>: …". */
int cli_ids(const char *opt, const char *s, int vocab, int32_t **out);

/* Prints "prefixd: <formatted>" and a newline on stderr; returns 1. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Loads a model, printing the error line on failure. Returns NULL then. */
pd_model *cli_load_model(const char *path, const char *tokenizer);

/* Sets the BLAS thread count (0: leave the library's default). */
void cli_set_threads(int n);

#endif
