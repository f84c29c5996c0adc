/* commands.h — the subcommands of the prefixd binary. Each takes the
 * arguments after its name (argv[0] is the subcommand) and returns the
 * process exit status. */
#ifndef PREFIXD_SERVER_COMMANDS_H
#define PREFIXD_SERVER_COMMANDS_H

int cmd_generate(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_prefix(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_template(int argc, char **argv);

#endif
