/* server: `keel standalone` — one process that serves spaces over RESP.
 *
 * The single-process server is a one-node cluster: an in-process cluster map
 * (cmap) with one daemon, every partition on that daemon, and the data path
 * (kv + store + commit) behind a libuv network thread. See server.c for the
 * threading and ordering rules.
 */
#ifndef KEEL_SERVER_H
#define KEEL_SERVER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct server_opts {
    const char *host;   /* bind address; default 127.0.0.1 */
    int port;           /* default 2012 */
    const char *dir;    /* data directory; default keel-data */
    int sync_policy;    /* enum store_sync; default batch */
    bool foreground;    /* -f */
    size_t map_size;    /* LMDB map size in bytes */
    size_t max_request; /* limits, see docs/protocol.md */
    size_t max_args;
    size_t max_bulk;
    size_t max_key;
    size_t max_conns;
} server_opts;

/* Parses `keel standalone` arguments (argv[0] is "standalone"). Returns 0, or
 * 2 after printing a usage error. */
int server_parse_args(int argc, char **argv, server_opts *o);
/* Runs the server until a shutdown signal. Returns the exit status. */
int server_main(const server_opts *o);
void server_usage(void);

#endif
