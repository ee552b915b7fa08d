/* raft: keel's own Raft consensus module, with no I/O of its own.
 *
 * The shape is etcd's raft package / TiKV's raft-rs (DESIGN section 4a): the
 * caller feeds the module
 *
 *     raft_tick       one logical clock tick (the coordinator ticks every 100 ms)
 *     raft_step       one message received from a peer (decode it first with
 *                     raft_msg_decode, which validates every byte)
 *     raft_propose    a command to replicate (leader only)
 *     raft_propose_conf, raft_transfer_leader, raft_read_index, raft_compact
 *
 * and collects the consequences as a "Ready" batch:
 *
 *     while (raft_has_ready(r)) {
 *         raft_ready rd;
 *         raft_ready_get(r, &rd);
 *         1. persist rd.snapshot (if any): store it; if rd.snapshot_install
 *            delete every stored entry, else delete stored entries with index
 *            <= rd.snapshot->index;
 *         2. persist rd.entries: delete stored entries with index >=
 *            rd.entries[0].index, then store rd.entries;
 *         3. persist rd.hs if rd.hs_changed;  -- 1..3 in one synced transaction
 *         4. send rd.msgs (raft_msg_encode each);
 *         5. if rd.snapshot_install, replace the state machine with
 *            rd.snapshot->data; apply rd.committed in order;
 *         6. answer rd.reads (ctx readable once applied >= index);
 *         raft_advance(r, &rd);
 *     }
 *
 * Nothing in a Ready may be acted on out of that order: a message may depend
 * on the entries and hard state of the same batch (a vote, an ack), so it is
 * sent only after they are durable. Between raft_ready_get and raft_advance
 * the caller must not call any other mutating function on the same raft
 * (asserted). Everything a Ready points to is owned by the raft and valid
 * until raft_advance.
 *
 * Roles: follower, pre-candidate, candidate, leader; a node whose current
 * configuration lists it as a non-voter is a learner (it replicates but never
 * campaigns and its vote is never counted). See the design note at the top of
 * raft.c for the invariants and the state diagram.
 *
 * Time is counted in ticks. Defaults: heartbeat 1 tick, election timeout 10
 * ticks randomised per election to [10, 20) from a PRNG seeded by the caller
 * (deterministic for the simulator).
 *
 * Errors: functions that can fail return 0 (RAFT_OK) or a negative RAFT_E*
 * code (raft_strerror names it). Anything a peer sends that is wrong is
 * refused with an error; only programmer errors (broken preconditions such as
 * a mutating call between ready and advance) assert.
 */
#ifndef KEEL_RAFT_H
#define KEEL_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* ---- limits and constants ------------------------------------------------ */

#define RAFT_MAX_NODES 16                 /* voters + learners in one configuration */
#define RAFT_MAX_MSG_ENTRIES 4096         /* decode limit per message */
#define RAFT_MAX_ENTRY_BYTES (64u << 20)  /* one entry's payload */
#define RAFT_MAX_SNAPSHOT_BYTES (1u << 30) /* one snapshot's data */
#define RAFT_WIRE_VERSION 1               /* first byte of every encoding */

typedef uint64_t raft_id; /* node id; 0 means "none" */

enum raft_err {
    RAFT_OK = 0,
    RAFT_ENOTLEADER = -1,  /* only the leader may do this */
    RAFT_EBUSY = -2,       /* a config change or leadership transfer is in flight */
    RAFT_EINVAL = -3,      /* bad argument (unknown node, index out of range, ...) */
    RAFT_ENOTCAUGHTUP = -4, /* promotion refused: the learner is behind */
    RAFT_EAGAIN = -5,      /* the leader has not yet committed an entry of its term */
    RAFT_EPROTO = -6,      /* a peer's message breaks the protocol (dropped) */
    RAFT_EDECODE = -7,     /* malformed encoding */
    RAFT_ECORRUPT = -8,    /* persisted state is inconsistent (raft_new) */
    RAFT_ETOOBIG = -9      /* payload above RAFT_MAX_ENTRY_BYTES / snapshot limit */
};
const char *raft_strerror(int err);

enum raft_role { RAFT_FOLLOWER = 1, RAFT_PRECANDIDATE, RAFT_CANDIDATE, RAFT_LEADER };
const char *raft_role_name(int role);

/* Entry types (wire and disk values; never renumbered). */
enum raft_entry_type {
    RAFT_ENTRY_NORMAL = 1, /* opaque application command */
    RAFT_ENTRY_CONFIG = 2, /* payload: an encoded raft_config (raft_config_encode) */
    RAFT_ENTRY_NOOP = 3    /* appended by every new leader; payload empty */
};

typedef struct raft_entry {
    uint64_t term;  /* term of the leader that created it (>= 1) */
    uint64_t index; /* position in the log (>= 1) */
    uint8_t type;   /* enum raft_entry_type */
    uint32_t len;   /* payload length, <= RAFT_MAX_ENTRY_BYTES */
    uint8_t *data;  /* payload; NULL iff len == 0; owner stated where handed out */
} raft_entry;

/* A cluster configuration: every member, voter or learner. Ids are distinct
 * and non-zero. */
typedef struct raft_node_cfg {
    raft_id id;
    bool voter; /* false: learner (replicates, does not vote, never campaigns) */
} raft_node_cfg;

typedef struct raft_config {
    uint32_t n;
    raft_node_cfg nodes[RAFT_MAX_NODES];
} raft_config;

/* The part of the state that must be durable before anything that depends on
 * it is sent. */
typedef struct raft_hard_state {
    uint64_t term;
    raft_id vote;    /* candidate voted for in `term`, 0 if none */
    uint64_t commit; /* highest index known committed */
} raft_hard_state;

/* A snapshot of the state machine through `index` (inclusive). */
typedef struct raft_snapshot {
    uint64_t index;     /* last entry covered */
    uint64_t term;      /* its term */
    raft_config config; /* configuration as of `index` */
    uint8_t *data;      /* application bytes (opaque to raft); NULL iff len == 0 */
    size_t len;         /* <= RAFT_MAX_SNAPSHOT_BYTES */
} raft_snapshot;

/* Message types (wire values; never renumbered). */
enum raft_msg_type {
    RAFT_MSG_APPEND = 1,     /* leader -> follower: entries after (index, log_term) + commit */
    RAFT_MSG_APPEND_RESP,    /* follower -> leader: ack (index = match) or reject */
    RAFT_MSG_VOTE,           /* candidate -> voter: last log (index, log_term) */
    RAFT_MSG_VOTE_RESP,
    RAFT_MSG_PREVOTE,        /* pre-candidate -> voter: term = its term + 1, not adopted */
    RAFT_MSG_PREVOTE_RESP,
    RAFT_MSG_HEARTBEAT,      /* leader -> all: commit, read-index round in `context` */
    RAFT_MSG_HEARTBEAT_RESP, /* echoes `context` */
    RAFT_MSG_SNAPSHOT,       /* leader -> lagging follower: whole snapshot */
    RAFT_MSG_TIMEOUT_NOW     /* leader -> transfer target: campaign now */
};
#define RAFT_MSG_TYPE_MAX RAFT_MSG_TIMEOUT_NOW
const char *raft_msg_type_name(int type);

typedef struct raft_msg {
    uint8_t type;          /* enum raft_msg_type */
    bool reject;           /* *_RESP: refused */
    bool transfer;         /* VOTE: campaign caused by leadership transfer (ignores leases) */
    raft_id from, to;      /* non-zero, distinct */
    uint64_t term;         /* sender's term (PREVOTE: the term it would campaign in) */
    uint64_t log_term;     /* APPEND: term of entry `index`; (PRE)VOTE: last log term */
    uint64_t index;        /* APPEND: previous index; (PRE)VOTE: last index;
                              APPEND_RESP: match index, or the rejected index */
    uint64_t commit;       /* APPEND, HEARTBEAT: leader's commit for this follower */
    uint64_t reject_hint;  /* APPEND_RESP reject: highest index that may match */
    uint64_t context;      /* HEARTBEAT(_RESP): read-index round */
    uint32_t n_entries;    /* APPEND only */
    raft_entry *entries;   /* indexes index+1 .. index+n_entries */
    raft_snapshot *snapshot; /* SNAPSHOT only (non-NULL there) */
} raft_msg;

/* Wire encoding, version RAFT_WIRE_VERSION, little endian. raft_msg_encode
 * appends to out. raft_msg_decode validates everything (version, type, ids,
 * lengths, entry indexes consecutive, entry terms within the message term,
 * configurations, no trailing bytes) and on success fills *m with memory the
 * caller releases with raft_msg_free; on failure returns RAFT_EDECODE and *m
 * holds nothing to free. */
void raft_msg_encode(const raft_msg *m, buf *out);
int raft_msg_decode(const void *p, size_t len, raft_msg *m);
void raft_msg_free(raft_msg *m);

/* Persisted forms (disk; versioned, validated on decode like messages).
 * Decoded entries/snapshots own their data: free with raft_entry_free /
 * raft_snapshot_free. */
void raft_entry_encode(const raft_entry *e, buf *out);
int raft_entry_decode(const void *p, size_t len, raft_entry *e);
void raft_entry_free(raft_entry *e);
void raft_hard_state_encode(const raft_hard_state *hs, buf *out);
int raft_hard_state_decode(const void *p, size_t len, raft_hard_state *hs);
void raft_snapshot_encode(const raft_snapshot *s, buf *out);
int raft_snapshot_decode(const void *p, size_t len, raft_snapshot *s);
void raft_snapshot_free(raft_snapshot *s);
/* A configuration, as carried in RAFT_ENTRY_CONFIG payloads. */
void raft_config_encode(const raft_config *c, buf *out);
int raft_config_decode(const void *p, size_t len, raft_config *c);
/* Position of id in c, or -1. */
int raft_config_find(const raft_config *c, raft_id id);
uint32_t raft_config_voters(const raft_config *c);

/* ---- creating a node ------------------------------------------------------ */

typedef struct raft_opts {
    raft_id id;                /* this node, non-zero */
    uint64_t seed;             /* PRNG seed for election timeouts */
    uint32_t heartbeat_ticks;  /* leader heartbeat interval (default 1) */
    uint32_t election_ticks;   /* base election timeout (default 10), > heartbeat_ticks;
                                  randomised to [election, 2*election) */
    bool pre_vote;             /* default true */
    bool check_quorum;         /* default true: leader steps down without a quorum */
    bool auto_promote;         /* leader promotes caught-up learners itself (default false) */
    uint32_t catchup_margin;   /* learner is caught up when match + margin >= last (default 8) */
    uint32_t max_msg_entries;  /* per APPEND (default 64, <= RAFT_MAX_MSG_ENTRIES) */
    size_t max_msg_bytes;      /* payload bytes per APPEND, at least one entry (default 1 MiB) */
    uint32_t max_inflight;     /* un-acked entries per follower while pipelining (default 256) */
    uint64_t applied;          /* restart: last index already applied by the caller's
                                  durable state machine (0: the snapshot's index) */
    bool unsafe_commit_any_term; /* TEST ONLY: commit entries of earlier terms by
                                    counting replicas (breaks Raft's safety; the
                                    simulator's negative test). Never set in keel. */
} raft_opts;

/* Fills o with the defaults above. */
void raft_opts_init(raft_opts *o, raft_id id, uint64_t seed);

/* What the caller loaded from its storage at start-up. All fields are copied;
 * entries must be consecutive, starting right after the snapshot (or at 1). */
typedef struct raft_persisted {
    raft_hard_state hs;
    const raft_snapshot *snapshot; /* NULL if none */
    const raft_entry *entries;
    size_t n_entries;
} raft_persisted;

typedef struct raft raft; /* opaque */

/* Creates a node from persisted state (st NULL: a fresh, empty node with no
 * configuration: it never campaigns and waits to be added by a leader).
 * Returns RAFT_EINVAL for bad options, RAFT_ECORRUPT if st is inconsistent.
 * On success *out is freed with raft_free. */
int raft_new(const raft_opts *o, const raft_persisted *st, raft **out);
void raft_free(raft *r);

/* Starts a new cluster on an empty node: appends the configuration as entry 1
 * (term 1), committed. Every initial member must bootstrap with the same
 * configuration, which must list this node as a voter. RAFT_EINVAL if the node
 * is not empty or cfg is invalid. */
int raft_bootstrap(raft *r, const raft_config *cfg);

/* ---- inputs ------------------------------------------------------------------ */

void raft_tick(raft *r);

/* Handles one message (copied; the caller keeps ownership of m). RAFT_EINVAL
 * for a message not addressed to this node, RAFT_EPROTO for one that breaks
 * the protocol; either way nothing changed. */
int raft_step(raft *r, const raft_msg *m);

/* Leader only. Appends a RAFT_ENTRY_NORMAL entry with a copy of data; *index
 * (may be NULL) receives its log index. The entry is not committed yet:
 * it is applied when it comes back in Ready.committed (or lost if leadership
 * changes first — the caller matches by index and term). RAFT_ENOTLEADER,
 * RAFT_EBUSY (leadership transfer in progress), RAFT_ETOOBIG. */
int raft_propose(raft *r, const void *data, size_t len, uint64_t *index);

enum raft_conf_op {
    RAFT_CONF_ADD_LEARNER = 1, /* add a new node as a non-voter */
    RAFT_CONF_PROMOTE = 2,     /* make a caught-up learner a voter */
    RAFT_CONF_REMOVE = 3       /* remove a voter or learner (may be the leader itself) */
};
/* Leader only: proposes a single-server configuration change as a
 * RAFT_ENTRY_CONFIG entry. It takes effect on each node as soon as it is in
 * that node's log. Refused with RAFT_EBUSY while another change is
 * uncommitted or a transfer is in progress, RAFT_EAGAIN before the leader has
 * committed an entry of its own term, RAFT_ENOTCAUGHTUP for a promotion of a
 * learner that is behind (or has not been heard from lately), RAFT_EINVAL for
 * an unknown/duplicate node, a full configuration, or removing the last voter. */
int raft_propose_conf(raft *r, int op, raft_id node, uint64_t *index);

/* Leader only: hand leadership to `target` (a voter): bring it up to date,
 * then send it TimeoutNow so it campaigns at once. Proposals are refused
 * (RAFT_EBUSY) until the transfer finishes or is abandoned after one
 * election timeout. */
int raft_transfer_leader(raft *r, raft_id target);

/* Leader only: starts leadership confirmation for a read (or a batch of
 * reads, or a batch of lease heartbeats) identified by ctx. A later Ready
 * reports {ctx, index, RAFT_OK} once a quorum answered a heartbeat sent after
 * this call: the caller may then answer once its applied index >= index. If
 * leadership is lost first, {ctx, 0, RAFT_ENOTLEADER} is reported.
 * RAFT_EAGAIN before the leader has committed an entry of its own term. */
int raft_read_index(raft *r, uint64_t ctx);

/* Log compaction: the caller's state machine through `index` (<= the last
 * applied index, > the current snapshot index) is `data`; raft keeps a copy
 * (to send to lagging followers), drops its entries through index, and
 * returns the snapshot in the next Ready (snapshot_install false: persist it,
 * then delete stored entries <= index). */
int raft_compact(raft *r, uint64_t index, const void *data, size_t len);

/* Leader only (false otherwise): this node heard from a majority of voters
 * (itself included) within the last election timeout, counted in ticks.
 * DESIGN I1: the coordinator answers lease heartbeats only while this holds
 * (or after a read-index confirmation). */
bool raft_leader_has_quorum(const raft *r);

/* ---- outputs ----------------------------------------------------------------- */

typedef struct raft_read_state {
    uint64_t ctx;   /* as given to raft_read_index */
    uint64_t index; /* readable once applied >= index (0 when status != RAFT_OK) */
    int status;     /* RAFT_OK or RAFT_ENOTLEADER */
} raft_read_state;

typedef struct raft_ready {
    bool hs_changed;
    raft_hard_state hs;
    const raft_snapshot *snapshot; /* to persist, or NULL */
    bool snapshot_install;         /* snapshot came from the leader: install it */
    const raft_entry *entries;     /* to persist, consecutive; may rewrite a stored suffix */
    size_t n_entries;
    const raft_entry *committed;   /* to apply, in order */
    size_t n_committed;
    const raft_msg *msgs;          /* to send, after persisting */
    size_t n_msgs;
    const raft_read_state *reads;
    size_t n_reads;
    /* soft state, informational */
    int role;
    raft_id leader;
    uint64_t term;
} raft_ready;

bool raft_has_ready(const raft *r);
/* Fills rd (see the loop at the top). Everything rd points to is owned by r
 * and valid until raft_advance(r, rd). */
void raft_ready_get(raft *r, raft_ready *rd);
/* Tells r that rd was fully handled (persisted, sent, applied). */
void raft_advance(raft *r, const raft_ready *rd);

/* ---- inspection -------------------------------------------------------------- */

enum raft_progress_state { RAFT_PR_PROBE = 1, RAFT_PR_REPLICATE, RAFT_PR_SNAPSHOT };

typedef struct raft_progress {
    raft_id id;
    uint64_t match, next;
    int state;            /* enum raft_progress_state */
    uint64_t last_heard;  /* tick count of the last message from it */
} raft_progress;

typedef struct raft_status {
    raft_id id;
    int role;
    raft_id leader;
    uint64_t term;
    raft_id vote;
    uint64_t commit;
    uint64_t applied;
    uint64_t first_index; /* first entry held in memory (snapshot index + 1) */
    uint64_t last_index;
    uint64_t snapshot_index, snapshot_term;
    uint64_t config_index; /* entry that defined `config` (0: bootstrap/none) */
    raft_config config;    /* latest configuration in the log (may be uncommitted) */
    bool voter;            /* this node is a voter in `config` */
    raft_id transfer_target;
    uint64_t ticks;        /* logical clock: 1 + raft_tick calls since raft_new */
    uint32_t n_progress;   /* leader only */
    raft_progress progress[RAFT_MAX_NODES];
} raft_status;

void raft_status_get(const raft *r, raft_status *s);

/* The entries held in memory (indexes first_index ..), for inspection by tests
 * and the simulator. Valid until the next mutating call. */
const raft_entry *raft_log_view(const raft *r, uint64_t *first_index, size_t *n);

/* Term of the entry at index (the snapshot's term for the snapshot index);
 * false if index is compacted away or beyond the log. */
bool raft_log_term(const raft *r, uint64_t index, uint64_t *term);

#endif
