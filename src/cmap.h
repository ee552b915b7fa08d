/* cmap: the cluster map, and the pure state machine that changes it.
 *
 * The cluster map is the coordinator's replicated state (DESIGN section 4):
 * cluster id, version, settings, daemons, spaces and their partitions with
 * replicas. It changes only through cmap_apply(map, command), a deterministic
 * function with no I/O and no clock: the same sequence of commands applied to
 * cmap_new() gives the same map, byte for byte (cmap_encode), on every node.
 * Anything that depends on time or chance (the current time, a random cluster
 * id, who failed) is decided by the caller and carried inside the command.
 *
 * Commands are byte strings built by the cmap_cmd_* encoders, so they can be
 * appended to a Raft log unchanged. Format: u8 command-format version (1),
 * u8 command type, then the command's fields (see cmap.c). cmap_apply
 * validates everything: a malformed command is an error, never a crash.
 *
 * Invariants (cmap_apply keeps them; unit tests check them):
 *   1. version grows by exactly 1 for every command that changes the map and
 *      stays put for a refused command (which changes nothing at all).
 *   2. Space ids and daemon ids are never reused (next_space_id/next_daemon_id
 *      only grow), so data of a dropped space can never be confused with a new
 *      space of the same name.
 *   3. Every partition's replicas are distinct daemons known to the map; the
 *      first replica is the primary, and it is IN_SYNC whenever any replica is
 *      (DESIGN I3); epochs only grow, and every command that changes a
 *      partition's replica list or a replica's state bumps its epoch (I4).
 *   4. Health counts only IN_SYNC replicas whose daemon is ONLINE ("live
 *      in-sync"): a partition is UNAVAILABLE iff it has none, PROTECTED iff it
 *      has at least tolerate+1, DEGRADED otherwise. Health is recomputed by
 *      every command that changes a replica or a daemon's state.
 *   5. Nothing is created before the map is bootstrapped (cluster_id != 0).
 *   6. REPLICA_FAILED never removes a partition's last live IN_SYNC replica:
 *      an IN_SYNC replica leaves the list only while another IN_SYNC replica
 *      of the partition is on an ONLINE daemon, so every acknowledged write
 *      stays on some listed IN_SYNC replica (I2), and a partition whose
 *      in-sync replicas are all down waits for them.
 *   7. A partition's `departed` daemons (removed by REPLICA_FAILED, candidates
 *      for a cheap tail replay when they return) are distinct, known to the
 *      map, not among its replicas, and the list is empty while the partition
 *      is PROTECTED.
 *
 * Replica life cycle (docs/failover.md has the reasons):
 *
 *     ADD_SPACE ----------------------------> IN_SYNC
 *     ADD_REPLICA -> CATCHING_UP --REPLICA_IN_SYNC(epoch)--^
 *     any replica --REPLICA_FAILED(daemon down)--> removed (kept if it is the
 *                   partition's last live IN_SYNC replica) and recorded in
 *                   `departed`; a returning departed daemon comes back only
 *                   through ADD_REPLICA (the planner, plan.h, does that first)
 *     IN_SYNC backup --HANDOFF--> primary (the old primary stays a backup)
 */
#ifndef KEEL_CMAP_H
#define KEEL_CMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "space.h"

#define CMAP_FORMAT_VERSION                                                                        \
    4 /* 2 added coordinators, 3 departed replicas and health                                      \
          that counts daemon states; 1 and 2 still decode */
#define CMAP_MAX_REPLICAS (SPACE_MAX_TOLERATE + 1)
#define CMAP_MAX_DAEMONS 1024
#define CMAP_MAX_SPACES 1024
#define CMAP_MAX_HOST 64

enum cmap_daemon_state {
    CMAP_D_ONLINE = 1,
    CMAP_D_SUSPECT,
    CMAP_D_OFFLINE,
    CMAP_D_SHUTDOWN,
    CMAP_D_RETIRED
};

enum cmap_replica_state { CMAP_R_IN_SYNC = 1, CMAP_R_CATCHING_UP };

enum cmap_health { CMAP_H_PROTECTED = 1, CMAP_H_DEGRADED, CMAP_H_UNAVAILABLE };

enum cmap_cmd_type {
    CMAP_CMD_BOOTSTRAP = 1,
    CMAP_CMD_SET_CONFIG = 2,
    CMAP_CMD_ADD_SPACE = 3,
    CMAP_CMD_DROP_SPACE = 4,
    CMAP_CMD_ADD_DAEMON = 5,
    CMAP_CMD_SET_DAEMON_STATE = 6,
    CMAP_CMD_ADD_COORDINATOR = 7,
    CMAP_CMD_REMOVE_COORDINATOR = 8,
    CMAP_CMD_REPLICA_FAILED = 9,
    CMAP_CMD_ADD_REPLICA = 10,
    CMAP_CMD_REPLICA_IN_SYNC = 11,
    CMAP_CMD_HANDOFF = 12,
    CMAP_CMD_REMOVE_BACKUPS = 13
    /* numbers are never reused; new commands take new numbers */
};

/* The cluster setting `sync`: which durability policy daemons must use. */
enum cmap_sync { CMAP_SYNC_ANY = 0, CMAP_SYNC_ALWAYS, CMAP_SYNC_BATCH, CMAP_SYNC_NONE };
const char *cmap_sync_name(int v); /* "any", "always", "batch", "none" */

typedef struct cmap_settings {
    uint32_t heartbeat_ms;      /* default 250 */
    uint32_t ping_timeout_ms;   /* default 3000 */
    uint32_t reprotect_delay_s; /* default 60 */
    uint64_t log_retention;     /* max log entries kept per partition; default 1000000 */
    uint8_t sync_required;      /* enum cmap_sync: the --sync policy every daemon must run
                                   with (CMAP_SYNC_ANY: no requirement); format >= 4 */
    bool single_node;           /* set at bootstrap by `keel standalone`: spaces are placed
                                   on fewer than tolerate+1 daemons (health DEGRADED)
                                   instead of being refused */
} cmap_settings;

typedef struct cmap_replica {
    uint64_t daemon; /* daemon id */
    uint8_t state;   /* enum cmap_replica_state */
} cmap_replica;

typedef struct cmap_partition {
    uint64_t epoch; /* starts at 1 */
    uint32_t nreplicas;
    cmap_replica replicas[CMAP_MAX_REPLICAS]; /* [0] is the primary */
    uint8_t health;                           /* enum cmap_health */
    uint32_t ndeparted;
    uint64_t departed[CMAP_MAX_REPLICAS]; /* daemons REPLICA_FAILED removed since the
                                             partition was last PROTECTED, oldest first
                                             (the oldest is dropped when full) */
} cmap_partition;

typedef struct cmap_space {
    uint32_t id;           /* unique for the life of the cluster, starts at 1 */
    space_schema *schema;  /* owned */
    cmap_partition *parts; /* schema->partitions entries, owned */
} cmap_space;

typedef struct cmap_daemon {
    uint64_t id; /* starts at 1 */
    char host[CMAP_MAX_HOST + 1];
    uint16_t port;      /* client port */
    uint16_t peer_port; /* replication port */
    uint8_t state;      /* enum cmap_daemon_state */
    uint64_t since_ms;  /* time of the last state change, from the command */
} cmap_daemon;

/* A coordinator: its id is also its Raft node id. */
typedef struct cmap_coordinator {
    uint64_t id; /* starts at 1 */
    char host[CMAP_MAX_HOST + 1];
    uint16_t port; /* client port */
    char peer_host[CMAP_MAX_HOST + 1];
    uint16_t peer_port; /* Raft port */
} cmap_coordinator;

#define CMAP_MAX_COORDINATORS 16

typedef struct cmap {
    uint64_t cluster_id; /* 0 until bootstrapped */
    uint64_t version;
    cmap_settings settings;
    uint32_t next_space_id;
    uint64_t next_daemon_id;
    uint32_t nspaces;
    cmap_space *spaces; /* in creation order */
    uint32_t ndaemons;
    cmap_daemon *daemons; /* in id order */
    uint64_t next_coord_id;
    uint32_t ncoords;
    cmap_coordinator *coords; /* in id order */
} cmap;

typedef struct cmap_result {
    int status;    /* 0 applied, -1 refused (map unchanged) */
    uint64_t id;   /* ADD_SPACE: the space id; ADD_DAEMON: the daemon id */
    char msg[320]; /* when refused: a whole error reply line with its code word,
                      e.g. "NOSPACE no such space 'x'",
                      "ERR space 'phonebook' already exists",
                      "ERR line 3: unknown type 'integer' for attribute 'phone'",
                      "ERR space 'p' needs 3 daemons (tolerate 2 failures), 1 online",
                      "ERR unknown setting 'foo'", "ERR malformed command" */
} cmap_result;

cmap *cmap_new(void);
void cmap_free(cmap *m);
/* A deep copy (the planner applies its own commands to one). The caller
 * frees it with cmap_free. */
cmap *cmap_clone(const cmap *m);

/* Applies one command. Never crashes on malformed input. */
int cmap_apply(cmap *m, const void *cmd, size_t len, cmap_result *res);

/* Command encoders: append one command to out. */
void cmap_cmd_bootstrap(buf *out, uint64_t cluster_id, bool single_node);
void cmap_cmd_set_config(buf *out, const char *name, const char *value);
void cmap_cmd_add_space(buf *out, const char *text, size_t len);
void cmap_cmd_drop_space(buf *out, const char *name, size_t len);
void cmap_cmd_add_daemon(buf *out, const char *host, uint16_t port, uint16_t peer_port,
                         uint64_t now_ms);
void cmap_cmd_set_daemon_state(buf *out, uint64_t daemon_id, int state, uint64_t now_ms);
/* ADD_COORDINATOR: res->id is the new coordinator's id (its Raft id); refused
 * for a client or peer address already used by a coordinator. */
void cmap_cmd_add_coordinator(buf *out, const char *host, uint16_t port, const char *peer_host,
                              uint16_t peer_port);
void cmap_cmd_remove_coordinator(buf *out, uint64_t id);

/* Replica commands. Spaces are named by id (never reused), partitions by
 * index. Each bumps the epoch of every partition it changes. Refused (map
 * unchanged) with a message when it does not apply; the refusals are listed
 * with each.
 *
 * REPLICA_FAILED: the daemon is down (OFFLINE, SHUTDOWN or RETIRED: the
 * caller decided that its lease has run out, DESIGN I1). In every partition
 * holding it: a CATCHING_UP replica is removed; an IN_SYNC one is removed if
 * another IN_SYNC replica of the partition is on an ONLINE daemon, and when
 * it was the primary the first such replica becomes primary (I3); otherwise
 * it is kept (the partition waits for it). Removed daemons are recorded in
 * the partition's `departed` list. Refused: unknown daemon, daemon ONLINE or
 * SUSPECT, nothing to remove.
 *
 * ADD_REPLICA: appends the daemon as CATCHING_UP (counts for no health until
 * IN_SYNC) and takes it off `departed`. Refused: unknown space, partition or
 * daemon; daemon not ONLINE; already a replica; CMAP_MAX_REPLICAS reached.
 *
 * REPLICA_IN_SYNC: a primary reported that the CATCHING_UP daemon caught up
 * while the partition was at `epoch`. Refused: unknown space, partition or
 * daemon; not a replica; already IN_SYNC; daemon not ONLINE; no IN_SYNC
 * replica in the partition; `epoch` is not the partition's epoch (stale).
 *
 * HANDOFF: moves an IN_SYNC backup on an ONLINE daemon to the front (clean
 * shutdown: the old primary asks, and has stopped serving the partition).
 * Refused: unknown space, partition or daemon; not a replica; already the
 * primary; not IN_SYNC; daemon not ONLINE. */
void cmap_cmd_replica_failed(buf *out, uint64_t daemon_id);
void cmap_cmd_add_replica(buf *out, uint32_t space_id, uint32_t part, uint64_t daemon_id);
void cmap_cmd_replica_in_sync(buf *out, uint32_t space_id, uint32_t part, uint64_t daemon_id,
                              uint64_t epoch);
void cmap_cmd_handoff(buf *out, uint32_t space_id, uint32_t part, uint64_t new_primary);
/* REMOVE_BACKUPS: the daemon is SUSPECT (a primary found its replication port
 * refusing connections: nothing listens there) or down. It is removed from
 * every partition where it is a backup, as REPLICA_FAILED would (the last
 * IN_SYNC replica is kept, removed ones are departed); partitions it leads are
 * untouched: a primary is replaced only once its lease must have run out.
 * Safe at once because backups serve nothing. Refused: unknown daemon, daemon
 * ONLINE, nothing to remove. */
void cmap_cmd_remove_backups(buf *out, uint64_t daemon_id);

/* Lookups (NULL if absent). Pointers are valid until the next cmap_apply. */
const cmap_space *cmap_space_find(const cmap *m, const char *name, size_t len);
const cmap_space *cmap_space_by_id(const cmap *m, uint32_t id);
const cmap_daemon *cmap_daemon_find(const cmap *m, uint64_t id);
const cmap_coordinator *cmap_coordinator_find(const cmap *m, uint64_t id);

/* Partition of a key: xxh64(key, seed 0) % partitions. */
uint32_t cmap_partition_of(const cmap_space *sp, const void *key, size_t len);

/* Settings by name: heartbeat_ms, ping_timeout_ms, reprotect_delay_s,
 * log_retention. cmap_config_get appends the value as decimal text; returns
 * -1 for an unknown name. cmap_config_names lists the names, NULL-terminated. */
int cmap_config_get(const cmap *m, const char *name, buf *out);
const char *const *cmap_config_names(void);

const char *cmap_daemon_state_name(int state);  /* "ONLINE", ... */
const char *cmap_replica_state_name(int state); /* "IN_SYNC", "CATCHING_UP" */
const char *cmap_health_name(int health);       /* "PROTECTED", ... */

/* Whole-map encoding (snapshots, persistence), format CMAP_FORMAT_VERSION.
 * cmap_decode validates everything (every invariant above) and returns -1 on
 * malformed input; it also reads formats 1 and 2, whose health was stored by
 * the older rule (IN_SYNC replicas, whatever their daemon's state): that is
 * checked, then health is recomputed by invariant 4. */
void cmap_encode(const cmap *m, buf *out);
int cmap_decode(const void *data, size_t len, cmap **out);

#endif
