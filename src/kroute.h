/* kroute: the pure parts of libkeel's cluster mode (src/client.c).
 *
 * No I/O here: decoding the CLUSTER.ROUTES table (src/route.h has its
 * shape), choosing a key's partition and primary, and reading the few
 * server texts a smart client acts on (-MOVED, "-TRYAGAIN leader is
 * host:port", INFO name:value lines, "host:port" addresses). Everything
 * takes untrusted server bytes and either decodes them or says no; nothing
 * here can crash on a bad reply.
 *
 * The hash is XXH64 (seed 0) compiled inline (XXH_INLINE_ALL), so libkeel
 * needs no libxxhash at run time; it is the same function the servers use
 * (cmap_partition_of).
 */
#ifndef KEEL_KROUTE_H
#define KEEL_KROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "resp.h"

#define KROUTE_HOST_MAX 256 /* host names, NUL included */

/* A daemon's state, as CLUSTER.ROUTES names it. */
enum kroute_state {
    KROUTE_UNKNOWN = 0, /* a state word this version does not know */
    KROUTE_ONLINE,
    KROUTE_SUSPECT,
    KROUTE_OFFLINE,
    KROUTE_SHUTDOWN,
    KROUTE_RETIRED
};

typedef struct kroute_daemon {
    uint64_t id;
    char host[KROUTE_HOST_MAX];
    int port;
    int state; /* enum kroute_state */
} kroute_daemon;

typedef struct kroute_space {
    char *name; /* NUL-terminated (names never hold NUL: the server's are words) */
    uint32_t partitions;
    uint64_t *primary; /* partitions entries: daemon id, 0 = no live replica */
} kroute_space;

typedef struct kroute_table {
    uint64_t version;
    size_t ndaemons;
    kroute_daemon *daemons;
    size_t nspaces;
    kroute_space *spaces;
} kroute_table;

/* Decodes a CLUSTER.ROUTES reply into *t (which must not hold a table: free
 * it first). Returns 0, -1 if r does not have the documented shape (a port
 * outside 1..65535, a host too long, partitions 0 or not matching its list,
 * a negative id, ...), -2 out of memory. On error *t is left empty. */
int kroute_parse(const resp_reply *r, kroute_table *t);

/* Frees a table's contents and leaves it empty. */
void kroute_free(kroute_table *t);

/* XXH64(key, seed 0) % partitions; 0 when partitions is 0. */
uint32_t kroute_partition(const void *key, size_t len, uint32_t partitions);

const kroute_space *kroute_space_find(const kroute_table *t, const char *name);
const kroute_daemon *kroute_daemon_find(const kroute_table *t, uint64_t id);
const kroute_daemon *kroute_daemon_at(const kroute_table *t, const char *host, int port);

/* The outcome of looking a key up. */
enum kroute_lookup_result {
    KROUTE_FOUND = 0,     /* *d is the primary's daemon */
    KROUTE_NO_SPACE,      /* the space is not in the table */
    KROUTE_NO_PRIMARY,    /* the partition has no live replica (primary 0) */
    KROUTE_NO_DAEMON      /* the primary's id is not in the daemon list */
};

/* Finds the daemon leading key's partition of space. *part is set whenever
 * the space is found. */
int kroute_lookup(const kroute_table *t, const char *space, const void *key, size_t keylen,
                  uint32_t *part, const kroute_daemon **d);

/* Applies what a -MOVED said: partition part of space is led by the daemon
 * at host:port, if that daemon is in the table. Returns 1 if the table
 * changed, else 0. */
int kroute_patch(kroute_table *t, const char *space, uint32_t part, const char *host, int port);

/* "host:port" or "[v6]:port" (text[0, len), need not be NUL-terminated)
 * into host (without brackets) and port. 0, or -1 if malformed. */
int kroute_parse_addr(const char *text, size_t len, char *host, size_t hostcap, int *port);

typedef struct kroute_moved {
    uint32_t partition;
    char host[KROUTE_HOST_MAX];
    int port;
    uint64_t version;
} kroute_moved;

/* Reads an error line "MOVED <partition> <host>:<port> <map_version>"
 * (without the '-'). 0, or -1 if it is not one. */
int kroute_parse_moved(const char *msg, size_t len, kroute_moved *m);

/* Reads the coordinator's "TRYAGAIN leader is <host>:<port> ..." hint. 0 with
 * host and port set, or -1 if the line names no usable address. */
int kroute_leader_hint(const char *msg, size_t len, char *host, size_t hostcap, int *port);

/* Finds line "name:value" in an INFO text and copies value (trimmed of
 * spaces and CR) into out. 0, or -1 if absent or longer than outcap - 1. */
int kroute_info_field(const char *text, size_t len, const char *name, char *out, size_t outcap);

/* The doubling backoff: next wait after a wait of ms (50 -> 100 -> ... 500). */
int kroute_backoff_next(int ms);

#define KROUTE_BACKOFF_FIRST_MS 50
#define KROUTE_BACKOFF_MAX_MS 500

#endif
