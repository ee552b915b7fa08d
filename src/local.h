/* local: `keel local` — a whole keel cluster on loopback in one command, for
 * trying keel out (docs/local.md is the user's page).
 *
 * keel local starts N coordinators and M daemons as its own child processes
 * (each `keel coordinator -f` / `keel daemon -f` with a data directory and a
 * log file under DIR), waits until CLUSTER.STATUS shows every coordinator as
 * a voter and every daemon ONLINE, prints how to connect, and stays in the
 * foreground until Ctrl-C (SIGINT) or SIGTERM, when it stops the daemons and
 * then the coordinators. A child that dies meanwhile is reported and the rest
 * keep running. DIR/local.conf records the layout (counts and ports), so
 * running keel local again on the same DIR restarts the same cluster.
 */
#ifndef KEEL_LOCAL_H
#define KEEL_LOCAL_H

#include <stdbool.h>

#define LOCAL_MAX_COORDS 15
#define LOCAL_MAX_DAEMONS 64
#define LOCAL_PEER_OFFSET 10000 /* peer port = client port + this, for both roles */

/* Options of `keel local`. A *_set flag says the option was given on the
 * command line (a restart refuses flags that contradict DIR/local.conf, and
 * uses the recorded value for those not given). */
typedef struct local_opts {
    int coords;               /* -c, --coordinators; 1..LOCAL_MAX_COORDS, default 3 */
    int daemons;              /* -d, --daemons; 0..LOCAL_MAX_DAEMONS, default 3 */
    const char *dir;          /* -D, --data; default "keel-local" (points into argv or static) */
    int base_port;            /* --base-port: first coordinator's client port; default 1982 */
    int daemon_base_port;     /* --daemon-base-port: first daemon's port; default base_port + 30 */
    unsigned tick_ms;         /* --tick-ms: passed to every coordinator; 0 = theirs (100) */
    unsigned ready_timeout_s; /* --ready-timeout: give up starting after this; default 20 */
    unsigned stop_timeout_s;  /* --stop-timeout: SIGTERM -> SIGKILL after this; default 10 */
    bool coords_set, daemons_set, base_port_set, daemon_base_port_set;
    bool help; /* --help: print local_usage and exit 0 */
} local_opts;

/* Parses `keel local` arguments (argv[0] is "local"). Returns 0, or 2 after
 * printing a usage error to stderr. Port ranges are checked later, against
 * the layout actually used (local_main). */
int local_parse_args(int argc, char **argv, local_opts *o);
void local_usage(void);

/* `keel local ...` (argv[0] is "local"). Returns the exit status: 0 after a
 * clean shutdown on SIGINT/SIGTERM/SIGHUP; 1 if the cluster could not be
 * started (a port in use, a refused data directory, a child that failed or a
 * cluster not ready in time), or if stopping it needed SIGKILL or a child
 * exited non-zero when asked to stop, or if every child died on its own;
 * 2 on a usage error. */
int local_main(int argc, char **argv);

#endif
