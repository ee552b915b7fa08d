/* kv: the data commands (PUT GET DEL CPUT ADD SEARCH COUNT) — parsing and
 * validation against a space's schema, the pure semantics of each point
 * command, and execution inside a storage transaction.
 *
 * The split follows the threads and the data paths:
 *   - kv_parse runs on the network thread and refuses bad requests at once
 *     with the error reply (nothing reaches the storage thread);
 *   - kv_compute is the one implementation of what a point command means:
 *     given the current object's encoding (or its absence) it produces the
 *     write to make (none, the resulting object, or a delete) and the reply.
 *     It touches no storage, so the replicated daemon runs it against the
 *     newest state it knows (a pending log entry or its store) and ships the
 *     resulting object (DESIGN section 5);
 *   - kv_exec (standalone) loads the current object in a transaction, calls
 *     kv_compute, writes the result with its index entries and the
 *     partition's write counter, and appends the reply; SEARCH and COUNT
 *     run here only;
 *   - kv_apply_put / kv_apply_del write a final object state (a replicated
 *     entry being applied, or an object of a full copy) with its index
 *     entries.
 *
 * Invariants:
 *   1. A request that kv_parse accepts can fail in kv_compute/kv_exec only by
 *      the operation's own semantics (CMPFAIL, NOTFOUND, OVERFLOW) or a
 *      storage error; all of these leave the object unchanged (KV_W_NONE).
 *   2. Writes are states, not deltas: kv_compute's KV_W_PUT carries the whole
 *      resulting object, and kv_apply_put/kv_apply_del of the same state
 *      twice equals once (idempotent replay).
 *   3. A kv_op after kv_op_detach owns copies of every byte string it uses
 *      and a reference on its space, so it outlives the request buffer and a
 *      concurrent SPACE.DROP.
 *   4. Old values used for index maintenance are decoded from a private copy
 *      of the stored object, never from LMDB memory that a write in the same
 *      transaction may move.
 */
#ifndef KEEL_KV_H
#define KEEL_KV_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "cmap.h"
#include "obj.h"
#include "space.h"
#include "store.h"

/* A space as the data path sees it: an immutable, reference-counted schema. */
typedef struct kv_space {
    atomic_int refs;
    uint32_t id;
    space_schema *schema; /* owned */
} kv_space;

kv_space *kv_space_new(uint32_t id, const space_schema *schema);
void kv_space_ref(kv_space *sp);
void kv_space_unref(kv_space *sp);

enum kv_kind { KV_PUT = 1, KV_GET, KV_DEL, KV_CPUT, KV_ADD, KV_SEARCH, KV_COUNT };
enum kv_op_cmp { KV_EQ = 1, KV_LT, KV_LE, KV_GT, KV_GE };

typedef struct kv_assign {
    uint32_t attr;
    obj_value v;
} kv_assign;

typedef struct kv_pred {
    int attr; /* attribute index, or -1 for the key */
    int op;   /* enum kv_op_cmp */
    obj_value v;
} kv_pred;

typedef struct kv_op {
    int kind;      /* enum kv_kind */
    kv_space *sp;  /* referenced */
    uint32_t part; /* partition of key (point operations) */
    const char *key;
    size_t klen;
    uint32_t nset;
    kv_assign *set; /* PUT and CPUT SET */
    uint32_t ncond;
    kv_assign *cond; /* CPUT IF */
    uint32_t attr;   /* ADD */
    int64_t delta;   /* ADD */
    uint32_t npreds;
    kv_pred *preds; /* SEARCH, COUNT */
    uint64_t limit; /* SEARCH; UINT64_MAX = none */
    bool one_part;     /* SEARCH, COUNT: search only partition only_part (a daemon's
                          share of a search across the cluster) */
    uint32_t only_part;
    char *mem;      /* owned copies after kv_op_detach */
} kv_op;

/* Returns the kind for a command name (case-insensitive), or 0. */
int kv_kind_of(const char *name, size_t len);
bool kv_is_write(int kind);

/* Parses data command argv[0..argc) (argv[0] the command name, argv[1] the
 * space name) for space cs/sp. On success returns 0 and *out (free with
 * kv_op_free); string fields point into argv until kv_op_detach. On a bad
 * request returns -1 and appends the error reply to err. max_key is the key
 * length limit. */
int kv_parse(const cmap_space *cs, kv_space *sp, int argc, char **argv, const size_t *argvlen,
             size_t max_key, kv_op **out, buf *err);
/* Copies every byte string the op points at into op-owned memory. */
void kv_op_detach(kv_op *op);
void kv_op_free(kv_op *op);

/* What a point command does to its object. */
enum kv_write {
    KV_W_NONE = 0, /* nothing changes (GET, DEL of nothing, CMPFAIL, NOTFOUND, OVERFLOW) */
    KV_W_PUT = 1,  /* the object becomes `value` (created or replaced) */
    KV_W_DEL = 2   /* the object is removed */
};

/* The outcome of kv_compute. Both buffers are owned by the result and freed
 * with kv_result_free. */
typedef struct kv_result {
    int write;  /* enum kv_write */
    buf value;  /* KV_W_PUT: the resulting object's encoding (obj_encode,
                   op->sp->schema); empty otherwise */
    buf reply;  /* the complete RESP reply for the client (a result, or a
                   -CMPFAIL/-NOTFOUND/-OVERFLOW error) */
} kv_result;

/* Computes point operation op (KV_PUT, KV_GET, KV_DEL, KV_CPUT, KV_ADD)
 * against the object's current state: exists false means there is no object
 * (cur/curlen are then ignored and may be NULL/0); otherwise cur/curlen is
 * its encoding (not retained). No storage is touched.
 * Always initialises *out first; free it with kv_result_free whatever the
 * return. Returns 0 (out filled), MDB_CORRUPTED if cur does not decode
 * against op's schema, MDB_INVALID if op is SEARCH/COUNT (out then holds
 * KV_W_NONE and an empty reply). */
int kv_compute(const kv_op *op, const void *cur, size_t curlen, bool exists, kv_result *out);
/* Releases both buffers (safe on a result kv_compute failed on, and twice). */
void kv_result_free(kv_result *r);

/* Executes op in transaction t and appends the reply (a result or a
 * CMPFAIL/NOTFOUND/OVERFLOW error) to reply. Point operations go through
 * kv_compute; a write also maintains the index entries and bumps the
 * partition's write counter (store_part_meta.seq). Returns 0, or a storage
 * error code; then nothing was appended and, for writes, the transaction is
 * poisoned. t must be a write transaction for write kinds. */
int kv_exec(store_txn *t, const kv_op *op, buf *reply);

/* Apply a final object state in write transaction t: the object at key in
 * partition part of space sp becomes enc/enclen (kv_apply_put) or is absent
 * (kv_apply_del). The current object, if any, is loaded and decoded so the
 * index entries are replaced (store.h invariant 1). Applying the same state
 * again is harmless: a put of the same encoding rewrites nothing in the
 * indexes, a del of an absent object does nothing. Neither touches any
 * metadata (the caller persists its applied seq, store_repl_meta).
 * Returns 0, or:
 *   EINVAL          enc does not decode against sp's schema (a bad entry from
 *                   a peer; nothing was written, t stays usable);
 *   MDB_BAD_VALSIZE the key is longer than STORE_MAX_KEY (nothing written);
 *   MDB_CORRUPTED   the stored object does not decode or an index entry is
 *                   missing;
 *   another LMDB error; after these two the caller must abort t. */
int kv_apply_put(store_txn *t, const kv_space *sp, uint32_t part, const void *key, size_t klen,
                 const void *enc, size_t enclen);
int kv_apply_del(store_txn *t, const kv_space *sp, uint32_t part, const void *key, size_t klen);

/* Appends "-WRONGTYPE ..." / "-NOATTR ..." style replies; shared with admin. */
void kv_reply_nospace(buf *out, const char *name, size_t len);

#endif
