/* main: the `keel` binary — one executable, one subcommand per role.
 *
 *   keel standalone ...   the single-process server (server.c)
 *   keel put|get|...      client commands (cli.c)
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "coord.h"
#include "daemon.h"
#include "local.h"
#include "server.h"
#include "version.h"


static void usage(void)
{
    printf("usage: keel <command> [options]\n\n"
           "servers:\n"
           "  keel standalone [-f] [-p PORT] [-D DIR] ...   single-process server\n"
           "  keel coordinator [-f] [-p PORT] [-D DIR] [-c HOST -P PORT] ...   coordinator member\n"
           "  keel daemon [-f] [-p PORT] [-c HOST] [-P PORT] [-D DIR] ...   storage daemon\n"
           "  keel local [-c N] [-d M] [-D DIR] ...   a whole cluster on loopback (Ctrl-C stops)\n\n"
           "clients:\n");
    cli_usage();
    printf("\n  keel version | keel help\n"
           "Run 'keel <command> --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "standalone")) {
        server_opts o;
        int rc = server_parse_args(argc - 1, argv + 1, &o);
        if (rc) return rc;
        return server_main(&o);
    }
    if (!strcmp(cmd, "daemon")) return daemon_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "coordinator")) return coord_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "local")) return local_main(argc - 1, argv + 1);
    if (cli_is_command(cmd)) return cli_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("keel %s\n", KEEL_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage();
        return 0;
    }
    fprintf(stderr, "keel: unknown command '%s'\n", cmd);
    usage();
    return 2;
}
