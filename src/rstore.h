/* rstore: a coordinator's durable Raft state in one LMDB environment.
 *
 *   rlog   index (u64be)  -> raft_entry_encode bytes
 *   rmeta  "hs"           -> raft_hard_state_encode bytes
 *          "snap"         -> raft_snapshot_encode bytes (the state machine is
 *                            its data: the encoded cluster map)
 *          "identity"     -> u8 version 1, cluster id u64be, node id u64be
 *
 * Invariants:
 *   1. rstore_save writes a whole Ready (snapshot, entries, hard state) in one
 *      transaction that LMDB syncs before returning (the environment is opened
 *      without MDB_NOSYNC), so nothing a Ready's messages depend on can be
 *      lost by a crash after they are sent.
 *   2. The stored log is contiguous: entries start right after the stored
 *      snapshot (or at 1) and have no gaps; rstore_load checks it.
 */
#ifndef KEEL_RSTORE_H
#define KEEL_RSTORE_H

#include <stdbool.h>
#include <stdint.h>

#include "raft.h"

typedef struct rstore rstore;

int rstore_open(rstore **out, const char *dir, char *err, size_t errlen);
void rstore_close(rstore *s);

/* 0 and the identity, 1 if none is stored, -1 on a storage error. */
int rstore_identity_get(rstore *s, uint64_t *cluster_id, uint64_t *node_id);
int rstore_identity_put(rstore *s, uint64_t cluster_id, uint64_t node_id);

/* Everything raft_new needs. On success the caller owns snap (free with
 * raft_snapshot_free when has_snap) and entries (each raft_entry_free, then
 * free the array). Returns 0, or -1 with a message in err. */
typedef struct rstore_state {
    raft_hard_state hs;
    bool has_snap;
    raft_snapshot snap;
    raft_entry *entries;
    size_t n_entries;
} rstore_state;
int rstore_load(rstore *s, rstore_state *st, char *err, size_t errlen);
void rstore_state_free(rstore_state *st);

/* Persists one Ready (steps 1-3 of the loop in raft.h). 0 or an LMDB error. */
int rstore_save(rstore *s, const raft_ready *rd);

#endif
