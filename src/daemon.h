/* daemon: `keel daemon` — a storage daemon's membership in the cluster:
 * registration with the coordinator, its identity on disk, heartbeats, the
 * lease (DESIGN I1), the cached cluster map, and clean shutdown.
 *
 * The process itself is daemon_main (daemon.c). Everything else declared here
 * is a pure helper with no I/O beyond what its comment says, so the unit tests
 * (tests/unit/test_daemon.c) can check the rules alone: argument parsing, the
 * identity file's format, lease arithmetic, the choice of coordinator, and the
 * parsing of the coordinator's replies (docs/coordinator.md, "Daemons").
 *
 * Serving data is not built yet: the daemon answers data commands with
 * -UNAVAILABLE (placement and replication are a later issue).
 */
#ifndef KEEL_DAEMON_H
#define KEEL_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cmap.h"
#include "resp.h"

/* ---- options -------------------------------------------------------------- */

typedef struct daemon_opts {
    const char *host;       /* --listen: client address (an IP literal); default 127.0.0.1 */
    int port;               /* --listen-port; default 2012 */
    int peer_port;          /* --peer-port; default port + 10000: the replication port */
    const char *coord_host; /* --coordinator (an IP literal); default 127.0.0.1 */
    int coord_port;         /* --coordinator-port; default 1982 */
    const char *dir;        /* --data; default keel-daemon-data */
    int sync_policy;        /* --sync always|batch|none (enum store_sync); default batch */
    bool foreground;        /* -f */
    bool blocking;          /* --blocking: full copies to this daemon pause writes */
    bool help;              /* --help was given: print daemon_usage and exit 0 */
} daemon_opts;

/* Parses `keel daemon` arguments (argv[0] is "daemon"). Returns 0, or 2 after
 * printing a usage error to stderr. The strings in *o point into argv. */
int daemon_parse_args(int argc, char **argv, daemon_opts *o);
void daemon_usage(void);
/* `keel daemon ...` (argv[0] is "daemon"): parses, runs until a shutdown
 * signal or a refusal, returns the exit status (0 clean, 1 refused or failed,
 * 2 usage). */
int daemon_main(int argc, char **argv);

/* ---- identity ---------------------------------------------------------------- */

/* DIR/identity holds exactly "cluster_id=<16 hex digits>\ndaemon_id=<decimal>\n"
 * (the two lines in either order); both ids are non-zero. */
#define DAEMON_IDENTITY_FILE "identity"
#define DAEMON_IDENTITY_MAX 256 /* bytes; a longer file is corrupt */

typedef struct daemon_identity {
    uint64_t cluster_id;
    uint64_t daemon_id;
} daemon_identity;

/* Writes the file's text to out (NUL-terminated); returns its length, or -1
 * if out is too small or an id is 0. */
int daemon_identity_format(const daemon_identity *id, char *out, size_t outlen);
/* Parses the file's text text[0, len). Returns 0, or -1 with a message in err
 * naming the line and what is wrong with it. */
int daemon_identity_parse(const char *text, size_t len, daemon_identity *id, char *err,
                          size_t errlen);
/* Reads DIR/identity. Returns 1 if loaded, 0 if there is none, -1 with a
 * message in err if it cannot be read or is corrupt. */
int daemon_identity_load(const char *dir, daemon_identity *id, char *err, size_t errlen);
/* Writes DIR/identity atomically and durably: DIR/identity.tmp is written and
 * fsynced, renamed over DIR/identity, and DIR is fsynced. Returns 0, or -1 with
 * a message in err (the old file, if any, is then unchanged). */
int daemon_identity_store(const char *dir, const daemon_identity *id, char *err, size_t errlen);

/* ---- lease (DESIGN I1) ------------------------------------------------------- */

/* A lease measured on the daemon's own monotonic clock (nanoseconds, as
 * uv_hrtime): valid while now < expiry_ns. A heartbeat sent at t_send and
 * answered by the leader extends it to t_send + ping_timeout. */
typedef struct daemon_lease {
    uint64_t expiry_ns; /* 0: never held (or dropped) */
} daemon_lease;

/* Extends the lease to t_send_ns + ping_timeout_ms; never shortens it. */
void daemon_lease_renew(daemon_lease *l, uint64_t t_send_ns, uint32_t ping_timeout_ms);
bool daemon_lease_valid(const daemon_lease *l, uint64_t now_ns);
/* Whole milliseconds left (rounded down), 0 if not valid. */
uint64_t daemon_lease_ms_left(const daemon_lease *l, uint64_t now_ns);
/* Gives the lease up at once (the coordinator declared this daemon failed). */
void daemon_lease_drop(daemon_lease *l);
/* Timeout for one request to a coordinator: about two heartbeat intervals but
 * never more than half of ping_timeout (so a hung coordinator is left in time
 * to renew the lease through another), at least 1 ms. */
unsigned daemon_rpc_timeout_ms(uint32_t heartbeat_ms, uint32_t ping_timeout_ms);

/* ---- coordinator addresses --------------------------------------------------- */

#define DAEMON_MAX_COORDS 64
#define DAEMON_MAX_HOST 63

typedef struct daemon_addr {
    char host[DAEMON_MAX_HOST + 1]; /* an IPv4 or IPv6 literal, no brackets */
    int port;                       /* 1..65535 */
} daemon_addr;

/* Parses "host:port" or "[v6]:port" from s[0, len). The host must be an IP
 * literal. Returns 0 or -1. */
int daemon_addr_parse(const char *s, size_t len, daemon_addr *out);

/* Every coordinator address the daemon knows, and the one it talks to. Slots
 * are never removed or reused (callers keep per-slot state, such as a
 * connection, by index); a slot the coordinators no longer advertise is
 * unlisted and skipped when failing over. The configured address (slot 0)
 * stays listed. */
typedef struct daemon_coords {
    daemon_addr addr[DAEMON_MAX_COORDS];
    bool listed[DAEMON_MAX_COORDS];
    size_t n;   /* slots used */
    size_t cur; /* the address believed to be the leader's */
} daemon_coords;

void daemon_coords_init(daemon_coords *c, const daemon_addr *configured);
/* Index of addr, adding it (listed) if new; -1 if every slot is taken. */
int daemon_coords_add(daemon_coords *c, const daemon_addr *addr);
/* The coordinators advertised these addresses: exactly they (and the
 * configured one) are listed. cur stays if still listed, else moves to the
 * first advertised address. */
void daemon_coords_set_list(daemon_coords *c, const daemon_addr *addrs, size_t n);
/* `-TRYAGAIN leader is host:port`: cur becomes that address (added if new;
 * unchanged if no slot is free). */
void daemon_coords_redirect(daemon_coords *c, const daemon_addr *leader);
/* Round-robin: cur moves to the next listed slot. */
void daemon_coords_next(daemon_coords *c);
/* The client addresses of the coordinators in map m (at most max), for
 * daemon_coords_set_list; entries whose host is not an IP literal are
 * skipped. Returns the count (0 for a map without coordinators, such as a
 * format-1 map). */
size_t daemon_coords_from_map(const cmap *m, daemon_addr *out, size_t max);

/* ---- coordinator replies (docs/coordinator.md) ----------------------------- */

typedef struct daemon_reg_reply {
    uint64_t id;
    uint64_t cluster_id;
    uint32_t heartbeat_ms;
    uint32_t ping_timeout_ms;
    size_t ncoords;
    daemon_addr coords[DAEMON_MAX_COORDS];
} daemon_reg_reply;

typedef struct daemon_hb_reply {
    uint64_t map_version;
    uint32_t heartbeat_ms;
    uint32_t ping_timeout_ms;
} daemon_hb_reply;

/* Limits on the settings a coordinator may hand out (a reply outside them is
 * malformed). */
#define DAEMON_MAX_HEARTBEAT_MS 600000u
#define DAEMON_MAX_PING_TIMEOUT_MS 3600000u

/* `[:id, $cluster_id_hex, :heartbeat_ms, :ping_timeout_ms, [$"host:port"...]]`.
 * Returns 0, or -1 with a message in err (r may be any reply, even NULL). */
int daemon_parse_register_reply(const resp_reply *r, daemon_reg_reply *out, char *err,
                                size_t errlen);
/* `[:map_version, :heartbeat_ms, :ping_timeout_ms]`. Returns 0 or -1 as above. */
int daemon_parse_heartbeat_reply(const resp_reply *r, daemon_hb_reply *out, char *err,
                                 size_t errlen);

enum daemon_err_kind {
    DAEMON_E_REDIRECT = 1, /* -TRYAGAIN leader is host:port; *leader is set */
    DAEMON_E_RETRY,        /* -TRYAGAIN without a usable address, -NOQUORUM, or any
                              code other than ERR: ask another coordinator later */
    DAEMON_E_OFFLINE,      /* -ERR daemon N is OFFLINE: register again */
    DAEMON_E_ONLINE,       /* -ERR daemon N is already online */
    DAEMON_E_REFUSED       /* any other -ERR: a final answer */
};

/* Classifies an error reply's text (without the leading '-'). */
int daemon_classify_error(const char *msg, daemon_addr *leader);

/* A CLUSTER.MAP answer data[0, len) for a daemon of cluster cluster_id whose
 * cached map is cur (may be NULL). Returns 1 and *out (the caller frees) if it
 * is a valid map of that cluster newer than cur; 0 if valid but not newer
 * (*out NULL); -1 with a message in err if malformed or of another cluster. */
int daemon_map_accept(const cmap *cur, uint64_t cluster_id, const void *data, size_t len,
                      cmap **out, char *err, size_t errlen);

#endif
