/* commands.h — the subcommands of the prefixd binary. Each takes the
 * arguments after its name (argv[0] is the subcommand) and returns the
 * process exit status. */
#ifndef PREFIXD_SERVER_COMMANDS_H
#define PREFIXD_SERVER_COMMANDS_H

#include "prefixd/model.h"
#include "prefixd/quantize.h"

int cmd_generate(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_prefix(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_template(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_jobstore(int argc, char **argv);

/* Writes the loaded model m as a GGUF of file type qp->ftype at out
 * (cmd_quantize.c): an F32 GGUF beside out, converted, then removed. Prints
 * the error line and returns 1 on failure, 0 on success (st filled). */
int cli_quantize_model(const pd_model *m, const char *out, const pd_quantize_params *qp,
                       pd_quantize_stats *st);

#endif
