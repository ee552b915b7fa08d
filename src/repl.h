/* repl: per-partition primary-backup replication (DESIGN section 5), as a pure
 * state machine with no I/O, no clock and no randomness of its own.
 *
 * One repl_part per (space, partition) on every daemon that holds a replica.
 * The coordinator is the configuration manager (PacificA / vertical Paxos):
 * it decides epochs and replica lists; repl only follows them. The caller (the
 * daemon glue) feeds the module
 *
 *     repl_config     the partition's (epoch, replicas, states) from the
 *                     cluster map, whenever the map changes
 *     repl_write      a client write on the primary: the resulting object (or
 *                     a delete) computed by kv, plus the client's id and
 *                     sequence number and the reply to give
 *     repl_recv       a message from a peer daemon (decode it first with
 *                     repl_msg_decode, which validates every byte)
 *     repl_tick       one logical clock tick (retransmission, commit point
 *                     propagation, retries of full-copy requests)
 *     repl_install_snapshot  a full copy has been installed by the caller
 *
 * and collects the consequences as a Ready batch:
 *
 *     while (repl_has_ready(p)) {
 *         repl_ready rd;
 *         repl_ready_get(p, &rd);
 *         In ONE storage transaction (store.c):
 *           1. if rd.truncate_from: delete stored log entries with seq >= it;
 *           2. store rd.entries in the partition log;
 *           3. if rd.epoch_changed: persist rd.epoch;
 *           4. if rd.compact_to: delete stored log entries with seq <=
 *              rd.compact_to and persist the log base (compact_to,
 *              compact_epoch);
 *           5. apply rd.apply in order: PUT writes the object, DEL deletes
 *              it, NOOP changes nothing; for an entry with client_id != 0
 *              store the client row (client_id -> client_seq, result, seq);
 *              persist applied = the last applied seq and the epoch;
 *         commit it (synced per the sync policy), then
 *         6. send rd.msgs (repl_msg_encode each);
 *         7. answer rd.done (client completions);
 *         8. act on rd.events (see enum repl_event_type);
 *         repl_advance(p, &rd);
 *     }
 *
 * Nothing may be reordered: an ACK in rd.msgs acknowledges entries of the same
 * batch, so it is sent only after they are durable, and a client is answered
 * only after the entry is applied. A primary's APPENDs wait too: a primary
 * that crashed after sending entries it had not stored, and came back in the
 * same epoch, would number new entries with seqs its backups already hold
 * (`replsim --break-send-order` shows the divergence). Between repl_ready_get and repl_advance no
 * other mutating call may be made on the same part (asserted). Everything a
 * Ready points to is owned by the part and valid until repl_advance.
 *
 * Reads: the caller serves a read from its object store only while
 * repl_readable() is true (and its lease is valid, DESIGN I1). The store holds
 * exactly the applied (committed) state.
 *
 * Errors: functions return REPL_OK (0) or a negative REPL_E* code
 * (repl_strerror names it). Bad peer input is refused with an error and
 * changes nothing; only programmer errors assert. The design note and the
 * numbered invariants are at the top of repl.c; docs/replication.md is the
 * protocol description for the daemon glue.
 */
#ifndef KEEL_REPL_H
#define KEEL_REPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* ---- limits and constants -------------------------------------------------- */

#define REPL_WIRE_VERSION 1             /* first byte of every encoding */
#define REPL_MAX_REPLICAS 16            /* replicas of one partition (>= CMAP_MAX_REPLICAS) */
#define REPL_MAX_MSG_ENTRIES 4096       /* decode limit per APPEND */
#define REPL_MAX_KEY (64u << 10)        /* one key */
#define REPL_MAX_VALUE (64u << 20)      /* one encoded object */
#define REPL_MAX_RESULT (64u << 10)     /* one stored client reply */
#define REPL_MAX_DEPARTED 32            /* departed replicas a primary keeps a tail for */

enum repl_err {
    REPL_OK = 0,
    REPL_ENOTPRIMARY = -1, /* this node is not the serving-capable primary of the current epoch */
    REPL_EINVAL = -2,      /* bad argument (config, sizes, seqs) */
    REPL_ESTALE = -3,      /* older epoch / older client sequence number */
    REPL_EPROTO = -4,      /* a peer's message breaks the protocol (dropped) */
    REPL_EDECODE = -5,     /* malformed encoding */
    REPL_ETOOBIG = -6,     /* key, value or result above its limit */
    REPL_EBUSY = -7,       /* too many uncommitted writes (back-pressure) */
    REPL_EFAILOVER = -8,   /* completion only: the primary lost its role before the
                              write committed; it may or may not be applied; retry
                              with the same client id and sequence number */
    REPL_ECORRUPT = -9     /* persisted state is inconsistent (repl_new) */
};
const char *repl_strerror(int err);

enum repl_role { REPL_ROLE_NONE = 0, REPL_ROLE_PRIMARY = 1, REPL_ROLE_BACKUP = 2 };
const char *repl_role_name(int role);

/* Replica states, same values as cmap's enum cmap_replica_state. */
enum repl_replica_state { REPL_IN_SYNC = 1, REPL_CATCHING_UP = 2 };

/* Log entry types (wire and disk values; never renumbered). */
enum repl_entry_type {
    REPL_E_PUT = 1,  /* value: the resulting object (obj_encode bytes) */
    REPL_E_DEL = 2,  /* the object is removed; value empty */
    REPL_E_NOOP = 3  /* appended by every primary at the start of its epoch */
};

/* One log entry. client_id 0 means "no client" (then client_seq is 0).
 * `result` is the reply the client got (or gets) for this write; it is kept
 * per client so a retried write is answered with the original result. */
typedef struct repl_entry {
    uint64_t seq;   /* position in the partition log (>= 1) */
    uint64_t epoch; /* epoch of the primary that created it (>= 1) */
    uint8_t type;   /* enum repl_entry_type */
    uint64_t client_id, client_seq;
    uint32_t klen, vlen, rlen;
    const uint8_t *key;    /* NULL iff klen == 0 */
    const uint8_t *value;  /* NULL iff vlen == 0 */
    const uint8_t *result; /* NULL iff rlen == 0 */
} repl_entry;

/* Message types (wire values; never renumbered). */
enum repl_msg_type {
    REPL_MSG_APPEND = 1, /* primary -> replica: entries after (seq, prev_epoch), commit point */
    REPL_MSG_ACK = 2,    /* replica -> primary: match seq, or reject with a hint */
    REPL_MSG_STALE = 3   /* answer to a message of an older epoch: "epoch is newer" */
};
#define REPL_MSG_TYPE_MAX REPL_MSG_STALE
const char *repl_msg_type_name(int type);

typedef struct repl_msg {
    uint8_t type;         /* enum repl_msg_type */
    bool reject;          /* ACK: the APPEND's (seq, prev_epoch) did not match */
    uint64_t from, to;    /* daemon ids, non-zero, distinct */
    uint32_t space, part; /* the partition */
    uint64_t epoch;       /* sender's epoch (>= 1) */
    uint64_t seq;         /* APPEND: seq of the entry before entries[0];
                             ACK: highest seq known to match the primary's log
                             (reject: the APPEND's seq that was refused) */
    uint64_t prev_epoch;  /* APPEND: epoch of entry `seq` (0 iff seq == 0) */
    uint64_t commit;      /* APPEND: primary's commit point */
    uint64_t hint;        /* ACK reject: resume after this seq (replica's commit point) */
    uint32_t n_entries;   /* APPEND only */
    const repl_entry *entries; /* seqs seq+1 .. seq+n_entries */
} repl_msg;

/* Wire encoding, version REPL_WIRE_VERSION, little endian. repl_msg_encode
 * appends to out. repl_msg_decode validates everything (version, type,
 * flags, ids, epochs, entry seqs consecutive after `seq`, entry epochs
 * between 1 and the message epoch and non-decreasing, entry types and their
 * fields, size limits, no trailing bytes). On success *m's entries point into
 * p (valid as long as p is) and the caller releases *m with repl_msg_free; on
 * failure it returns REPL_EDECODE and *m holds nothing to free. */
void repl_msg_encode(const repl_msg *m, buf *out);
int repl_msg_decode(const void *p, size_t len, repl_msg *m);
void repl_msg_free(repl_msg *m);

/* One log entry as stored in the partition log (versioned, validated like
 * messages). Decoded fields point into p. */
void repl_entry_encode(const repl_entry *e, buf *out);
int repl_entry_decode(const void *p, size_t len, repl_entry *e);

/* ---- creating a part -------------------------------------------------------- */

typedef struct repl_opts {
    uint64_t self;              /* this daemon's id, non-zero */
    uint32_t space, part;       /* the partition (copied into every message) */
    uint32_t max_msg_entries;   /* entries per APPEND (default 64, <= REPL_MAX_MSG_ENTRIES) */
    size_t max_msg_bytes;       /* entry bytes per APPEND, at least one entry (default 1 MiB) */
    uint32_t max_inflight;      /* un-acked entries sent ahead to one replica (default 1024) */
    uint32_t max_pending;       /* uncommitted entries before repl_write says EBUSY (default 4096) */
    uint64_t retain_entries;    /* applied entries kept for returning replicas (default 100000) */
    size_t retain_bytes;        /* and at most this many bytes of them (default 64 MiB) */
    uint32_t resend_ticks;      /* retransmit to a replica without progress (default 2) */
    uint32_t copy_retry_ticks;  /* re-request a full copy after this long (default 50) */
    uint32_t report_retry_ticks; /* repeat CAUGHT_UP for a replica still CATCHING_UP in
                                    the configuration after this long (default 20): the
                                    coordinator may never have got the report */
    bool unsafe_commit_primary_only; /* TEST ONLY: commit on the primary's own write
                                        (breaks I2; the simulator's negative test) */
} repl_opts;

/* Fills o with the defaults above. */
void repl_opts_init(repl_opts *o, uint64_t self, uint32_t space, uint32_t part);

/* A client's row: the last write of that client applied to the partition. */
typedef struct repl_client {
    uint64_t client_id;  /* non-zero */
    uint64_t client_seq; /* non-zero */
    uint64_t seq;        /* the log seq it was applied at */
    uint32_t rlen;
    const uint8_t *result; /* the reply it got (NULL iff rlen == 0) */
} repl_client;

/* What the caller loaded from storage at start-up (all copied). The stored log
 * holds entries base_seq+1 .. (consecutive); the object store holds the state
 * through `applied` (base_seq <= applied <= last stored seq); clients is the
 * client table as of `applied`. A fresh partition is all zeros. */
typedef struct repl_persisted {
    uint64_t epoch;                 /* highest epoch adopted */
    uint64_t applied;
    uint64_t base_seq, base_epoch;  /* the log starts after base (epoch of entry base_seq) */
    const repl_entry *entries;
    size_t n_entries;
    const repl_client *clients;
    size_t n_clients;
} repl_persisted;

typedef struct repl_part repl_part; /* opaque */

/* Changes retain_entries of a running part (the cluster's log_retention
 * setting changed); takes effect at the next compaction. 0 is refused
 * (REPL_EINVAL). */
int repl_set_retention(repl_part *p, uint64_t retain_entries);

/* Creates a part (st NULL: fresh and empty). It has no configuration until
 * repl_config. REPL_EINVAL for bad options, REPL_ECORRUPT for an
 * inconsistent st. On success *out is freed with repl_free. */
int repl_new(const repl_opts *o, const repl_persisted *st, repl_part **out);
void repl_free(repl_part *p);

/* ---- inputs ------------------------------------------------------------------- */

/* The partition's configuration from the cluster map: epoch, replicas in
 * order (replicas[0] is the primary and must be IN_SYNC), their states.
 * An older epoch is refused (REPL_ESTALE), the same epoch must repeat the same
 * configuration (else REPL_EINVAL), a newer one is adopted: a node that
 * becomes (or stays) primary starts the epoch by appending a NOOP and
 * reconciling every replica to its log (I3); a node that loses the primary
 * role fails its pending writes with REPL_EFAILOVER. */
int repl_config(repl_part *p, uint64_t epoch, const uint64_t *replicas, const uint8_t *states,
                uint32_t n);

/* Primary only. Replicates one write: type REPL_E_PUT (value = the resulting
 * object) or REPL_E_DEL (value NULL/0), from client (client_id, client_seq)
 * (both 0 for a write without exactly-once), whose reply will be `result`.
 * All bytes are copied. On REPL_OK the write is queued and a completion with
 * ctx follows in a later Ready: REPL_OK once committed and applied, or
 * REPL_EFAILOVER. A retry of the client's latest write is not appended
 * again: it completes with the original seq and result (at once if already
 * applied, else together with the original). *seq (may be NULL) receives the
 * entry's seq. Errors (nothing queued, no completion): REPL_ENOTPRIMARY,
 * REPL_ESTALE (client_seq is older than the client's latest write here),
 * REPL_EINVAL, REPL_ETOOBIG, REPL_EBUSY. */
int repl_write(repl_part *p, int type, const void *key, size_t klen, const void *value, size_t vlen,
               uint64_t client_id, uint64_t client_seq, const void *result, size_t rlen, uint64_t ctx,
               uint64_t *seq);

/* Handles one decoded message (not retained). REPL_EINVAL if it is not
 * addressed to this part; REPL_ESTALE for an older epoch (a STALE answer is
 * queued); REPL_EPROTO if it breaks the protocol. Nothing changes on error.
 * A message of a newer epoch is not acted on: the part reports
 * REPL_EV_NEWER_EPOCH once and waits for repl_config (returns REPL_OK). */
int repl_recv(repl_part *p, const repl_msg *m);

void repl_tick(repl_part *p);

/* Backup side of a full copy. The caller received the primary's consistent
 * snapshot of the partition through `seq` (objects and client table; seq_epoch
 * is the epoch of entry seq) and calls this BEFORE storing it; then, in one
 * transaction and before the next repl_ready_get, it replaces its objects and
 * client table with the snapshot, persists applied = seq and the log base
 * (seq, seq_epoch), and deletes stored log entries: those <= seq if
 * *keep_log, else all of them. (*keep_log is set when the part's own entry
 * at seq has seq_epoch: by log matching its log equals the snapshot's history,
 * and entries after seq, perhaps already acknowledged, must stay.) The part
 * then acks seq to the primary. REPL_EINVAL (nothing changed) if seq is not
 * above the applied seq, the part is a primary, or an argument is invalid. */
int repl_install_snapshot(repl_part *p, uint64_t seq, uint64_t seq_epoch, const repl_client *clients,
                          size_t n_clients, bool *keep_log);

/* ---- queries (no state change) ------------------------------------------------- */

/* Before computing a write, the caller asks the exactly-once table:
 *   REPL_DUP_NONE     a new write: compute it (against repl_pending_get + store);
 *   REPL_DUP_DONE     already applied: *seq, *result and *rlen (valid until the
 *                     next mutating call) are the original ones;
 *   REPL_DUP_PENDING  in the log, not yet applied: call repl_write (it attaches);
 *   REPL_ESTALE       older than the client's latest write.
 * client_id 0 is always REPL_DUP_NONE. */
enum repl_dup { REPL_DUP_NONE = 0, REPL_DUP_DONE = 1, REPL_DUP_PENDING = 2 };
int repl_client_check(const repl_part *p, uint64_t client_id, uint64_t client_seq, uint64_t *seq,
                      const uint8_t **result, uint32_t *rlen);

/* The latest not-yet-applied entry for key (PUT or DEL), or NULL: the caller
 * computes a new write from it when present, else from its object store
 * (which holds everything applied). Valid until the next mutating call. */
const repl_entry *repl_pending_get(const repl_part *p, const void *key, size_t klen);

/* True while this node may serve reads and writes of the partition: it is the
 * primary of its epoch, has seen no newer epoch, and its epoch-start NOOP is
 * committed and applied (so the store holds everything ever acknowledged). */
bool repl_readable(const repl_part *p);

/* ---- outputs --------------------------------------------------------------------- */

typedef struct repl_completion {
    uint64_t ctx;
    int status;            /* REPL_OK or REPL_EFAILOVER */
    uint64_t seq;          /* REPL_OK: the entry's seq */
    const uint8_t *result; /* REPL_OK: the reply (NULL iff rlen == 0) */
    uint32_t rlen;
} repl_completion;

enum repl_event_type {
    /* A message of a newer epoch arrived: fetch the cluster map and call
     * repl_config. Until then a primary neither serves nor accepts writes. */
    REPL_EV_NEWER_EPOCH = 1,
    /* Primary: replica `peer` needs entries from before the retained log
     * (base `seq`): send it a full copy (consistent snapshot through some
     * applied seq >= `seq`, plus the client table); the replica's daemon
     * then calls repl_install_snapshot. Repeated every copy_retry_ticks
     * while still needed. */
    REPL_EV_NEED_COPY = 2,
    /* Primary: CATCHING_UP replica `peer` holds everything committed (as of
     * `seq`) and counts for commit from now on in `epoch`: tell the
     * coordinator, which flips it to IN_SYNC only if `epoch` is still the
     * partition's epoch. */
    REPL_EV_CAUGHT_UP = 3,
    /* Primary: reconciliation of `epoch` finished (the NOOP at `seq` is
     * applied); repl_readable() is now true. */
    REPL_EV_SERVING = 4
};
const char *repl_event_name(int type);

typedef struct repl_event {
    int type;       /* enum repl_event_type */
    uint64_t peer;  /* NEED_COPY, CAUGHT_UP */
    uint64_t epoch; /* the epoch it concerns (NEWER_EPOCH: the newer one) */
    uint64_t seq;
} repl_event;

typedef struct repl_ready {
    uint64_t truncate_from;     /* 0: none; else delete stored log entries >= it first */
    const repl_entry *entries;  /* to store in the log, consecutive */
    size_t n_entries;
    bool epoch_changed;
    uint64_t epoch;             /* persist when epoch_changed */
    uint64_t compact_to;        /* 0: none; else delete stored entries <= it: new log base */
    uint64_t compact_epoch;     /* epoch of entry compact_to */
    const repl_entry *apply;    /* committed, to apply in order (after storing entries) */
    size_t n_apply;
    const repl_msg *msgs;       /* to send after the transaction is durable */
    size_t n_msgs;
    const repl_completion *done; /* to answer after the transaction is durable */
    size_t n_done;
    const repl_event *events;
    size_t n_events;
} repl_ready;

bool repl_has_ready(const repl_part *p);
void repl_ready_get(repl_part *p, repl_ready *rd);
void repl_advance(repl_part *p, const repl_ready *rd);

/* ---- inspection ---------------------------------------------------------------------- */

typedef struct repl_peer_status {
    uint64_t id;
    uint8_t state;  /* enum repl_replica_state */
    uint64_t match; /* highest seq acked in this epoch */
    uint64_t next;  /* next seq to send */
    bool counts;    /* counts for commit */
    bool copy;      /* a full copy was requested */
} repl_peer_status;

typedef struct repl_status {
    uint64_t self;
    uint64_t epoch;       /* adopted epoch (0: none yet) */
    uint64_t newest_seen; /* highest epoch seen in any message or config */
    int role;             /* enum repl_role */
    uint64_t primary;     /* replicas[0] of the adopted config (0: none) */
    uint64_t base, base_epoch, last, stable, commit, applied;
    uint64_t serve_from;  /* primary: seq of its epoch-start NOOP */
    bool readable;
    uint32_t n_peers;     /* primary only */
    repl_peer_status peers[REPL_MAX_REPLICAS];
    uint32_t n_departed;
    size_t n_clients;
} repl_status;

void repl_status_get(const repl_part *p, repl_status *s);

/* The entries held in memory (seqs base+1 ..). Valid until the next mutating
 * call. */
const repl_entry *repl_log_view(const repl_part *p, uint64_t *base, size_t *n);

#endif
