/* cli: the `keel` command-line client subcommands, built on libkeel.
 *
 * `keel put|get|del|search|count|add-space|rm-space|list-spaces|describe-space|
 *       shell|status|rm-coordinator [-h HOST] [-p PORT] ...`
 * — main.c hands every such subcommand here.
 */
#ifndef KEEL_CLI_H
#define KEEL_CLI_H

/* True if name is a subcommand cli_main handles. */
int cli_is_command(const char *name);
/* Runs subcommand argv[0] (argv[0] is the subcommand name, e.g. "put").
 * Returns the process exit status: 0 success, 1 the server answered an error
 * or the object was not found (get), 2 usage error, 3 connection failure. */
int cli_main(int argc, char **argv);
/* One usage line per subcommand, for `keel --help`. */
void cli_usage(void);

#endif
