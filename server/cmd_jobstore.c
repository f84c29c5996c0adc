/* cmd_jobstore.c — `prefixd jobstore migrate`: moves a single machine's
 * SQLite job store into PostgreSQL for replicas (deploy/README.md). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "prefixd/jobstore.h"

static const char usage[] =
    "usage: prefixd jobstore migrate --from DATA_DIR --to postgres://...\n"
    "  copies the files, jobs, events and checkpoints of the SQLite job store in\n"
    "  DATA_DIR (stop the server first) into an empty PostgreSQL database; the\n"
    "  file contents and checkpoints stay in DATA_DIR/files and DATA_DIR/checkpoints:\n"
    "  make DATA_DIR (or a copy) the replicas' shared data directory.\n";

int cmd_jobstore(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "migrate") != 0) {
        fputs(usage, stderr);
        return 2;
    }
    const char *from = NULL, *to = NULL;
    for (int i = 2; i < argc; i++) {
        int r;
        if ((r = cli_opt(argc, argv, &i, "--from", &from))) {
        } else if ((r = cli_opt(argc, argv, &i, "--to", &to))) {
        } else {
            fprintf(stderr, "prefixd jobstore migrate: unknown option '%s'\n%s", argv[i], usage);
            return 2;
        }
        if (r < 0) return 2;
    }
    if (!from || !to) {
        fputs(usage, stderr);
        return 2;
    }
    pd_err err;
    int64_t rows = 0;
    if (pd_jobstore_migrate(from, to, &rows, &err) < 0)
        return cli_fail("jobstore migrate: %s", err.msg);
    printf("migrated %" PRId64 " rows from %s\n", rows, from);
    return 0;
}
