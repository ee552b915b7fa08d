/* dpart: a daemon's data plane — the partitions it holds, replicated with
 * repl.c, stored with store.c through the group-commit thread (commit.c), and
 * the data commands clients send to the daemon.
 *
 * daemon.c owns registration, heartbeats and the lease; it hands dpart the
 * cluster map whenever a newer one arrives, tells it whether the lease is
 * valid, and passes it every data command.
 */
#ifndef KEEL_DPART_H
#define KEEL_DPART_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cmap.h"
#include "net.h"

typedef struct dpart dpart;

typedef struct dpart_opts {
    const char *dir;  /* data directory (the LMDB environment lives here) */
    const char *host; /* this daemon's address (outgoing connections bind to it) */
    int peer_port;    /* replication port */
    int sync_policy;  /* enum store_sync */
    bool blocking;    /* --blocking: ask primaries to pause a partition's writes while
                         they send this daemon a full copy of it */
    size_t max_key;
    uint64_t self;               /* daemon id */
    bool (*lease_ok)(void *arg); /* is the daemon's lease valid now (DESIGN I1) */
    void *lease_arg;
    /* sends a command to the coordinator leader, best effort (a report repl
     * repeats, like DAEMON.CAUGHT_UP) */
    void (*report)(void *arg, int argc, const char *const *argv);
    void *report_arg;
    /* asks for a fresh cluster map (same arg as report) */
    void (*want_map)(void *arg);
} dpart_opts;

/* Opens the store and listens on the peer port. -1 with a message on error. */
int dpart_start(dpart **out, uv_loop_t *loop, const dpart_opts *o, char *err, size_t errlen);
/* A newer cluster map (not retained: dpart copies what it needs). */
void dpart_map(dpart *dp, const cmap *m);
/* True if argv[0] is a data command dpart handles. */
bool dpart_is_data_command(const char *name, size_t len);
/* A client connection with DPART_CONN_REDIRECT set (CLIENT.REDIRECT ON) gets
 * "-MOVED part host:port version" instead of a forward when its request's
 * partition is led by another daemon (smart clients: docs/protocol.md). */
#define DPART_CONN_REDIRECT 1u
void dpart_dispatch(dpart *dp, net_conn *c, int argc, char **argv, size_t *argvlen);
/* Re-protection work this daemon is doing as a primary, for `keel status`
 * (sent with every heartbeat; docs/status.md). */
typedef struct dpart_progress {
    uint32_t copies;             /* full copies being sent */
    uint64_t copy_bytes_left;    /* of those copies, not yet acknowledged by the receivers */
    uint64_t copy_bytes_per_s;   /* their combined rate so far */
    uint64_t tail_entries_left;  /* log entries catching-up replicas still have to replay */
} dpart_progress;
void dpart_get_progress(dpart *dp, dpart_progress *pg);
/* How many partitions this daemon leads in its current map. */
uint32_t dpart_primaries(const dpart *dp);
/* Stops: pending writes fail, the store is synced and closed. */
void dpart_stop(dpart *dp);

#endif
