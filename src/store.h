/* store: a daemon's durable state in one LMDB environment (DESIGN section 7).
 *
 * Databases inside the environment:
 *   obj   (space u32be, partition u32be, key)              -> encoded object (obj.h)
 *   idx   (space u32be, partition u32be, attr u16be,
 *          index image (obj_index_key), key)               -> empty
 *   meta  name                                             -> value
 *         ("cmap": the encoded cluster map; "p/<space u32be><part u32be>":
 *          the standalone per-partition write counter, store_part_meta)
 *   log   (space u32be, partition u32be, seq u64be)        -> log entry bytes
 *         (opaque here; the replication module's versioned entry encoding)
 *   repl  (space u32be, partition u32be)                   -> replication
 *         metadata, version 1: u8 1, epoch u64be, applied u64be,
 *         base_seq u64be, base_epoch u64be (33 bytes)
 *   client (space u32be, partition u32be, client u64be)    -> a client's last
 *         applied write, version 1: u8 1, client_seq u64be, seq u64be,
 *         result length u32be, result bytes
 *
 * All integers in keys are big endian, so LMDB's memcmp order is the numeric
 * order: one partition's rows are one contiguous key range (8-byte prefix),
 * one space's rows too (4-byte prefix), and a partition's log is in seq
 * order. Metadata is written by the caller in the same transaction as the
 * data it describes.
 *
 * Invariants:
 *   1. For every object and every indexed attribute there is exactly one idx
 *      entry, holding the attribute's current image; store_obj_put and
 *      store_obj_del maintain this in the transaction that changes the object,
 *      so a crash never leaves an index disagreeing with the objects.
 *   2. One writer: write transactions are begun only on the storage thread.
 *      Read transactions may run on any thread, each thread its own.
 *   3. Durability follows the sync policy: ALWAYS syncs inside every commit
 *      (LMDB's own ordered data-then-meta sync); BATCH and NONE commit without
 *      syncing and rely on store_sync (BATCH: the caller calls it at least
 *      every second; both: on close). A process crash loses nothing committed
 *      in any mode (the page cache survives it).
 *   4. An error inside a write transaction poisons it: the caller must abort.
 *   5. Versioned records (part meta, repl meta, client rows) are checked on
 *      every read: a wrong size or version is MDB_CORRUPTED, never misread.
 *   6. Every per-partition delete (store_log_delete_*, store_client_delete_all,
 *      store_part_clear) touches exactly that partition's key range;
 *      store_drop_space touches exactly that space's, in every database.
 */
#ifndef KEEL_STORE_H
#define KEEL_STORE_H

#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "obj.h"
#include "space.h"

enum store_sync { STORE_SYNC_ALWAYS = 0, STORE_SYNC_BATCH, STORE_SYNC_NONE };

#define STORE_DEFAULT_MAP_SIZE (16ull << 30)
/* LMDB keys are at most 511 bytes: obj keys carry an 8-byte prefix, idx keys
 * 10 bytes plus an image of up to 32 bytes. */
#define STORE_MAX_KEY (511 - 10 - OBJ_INDEX_STRING_PREFIX)

typedef struct store store;

typedef struct store_txn {
    MDB_txn *txn; /* private */
    store *s;     /* private */
} store_txn;

/* Returns the policy for "always"/"batch"/"none", or -1. */
int store_sync_parse(const char *name);
const char *store_sync_name(int policy);

/* Opens (creating if needed) the environment in directory dir. On error
 * returns -1 with a message in err. */
int store_open(store **out, const char *dir, int sync_policy, size_t map_size, char *err,
               size_t errlen);
/* Syncs and closes. No transaction may be open. */
void store_close(store *s);
/* Forces committed data to disk. Safe from any thread. 0 or an LMDB error. */
int store_sync(store *s);
int store_sync_policy(const store *s);

/* Transactions. Functions return 0 or an LMDB error code (mdb_strerror). */
int store_txn_begin(store *s, bool write, store_txn *t);
int store_txn_commit(store_txn *t);
void store_txn_abort(store_txn *t);
/* A read transaction may be parked with reset and reused with renew. */
void store_txn_reset(store_txn *t);
int store_txn_renew(store_txn *t);

/* Objects. get returns 0 and points *val and *vlen at the stored bytes (valid
 * until the transaction ends or writes), MDB_NOTFOUND if absent. */
int store_obj_get(store_txn *t, uint32_t space, uint32_t part, const void *key, size_t klen,
                  const void **val, size_t *vlen);
/* Writes the object with encoding enc/enclen and values newv; oldv are the
 * previous values (NULL if the object did not exist) so changed index entries
 * can be replaced. */
int store_obj_put(store_txn *t, const space_schema *sc, uint32_t space, uint32_t part,
                  const void *key, size_t klen, const obj_value *oldv, const obj_value *newv,
                  const void *enc, size_t enclen);
/* Deletes the object whose current values are oldv. */
int store_obj_del(store_txn *t, const space_schema *sc, uint32_t space, uint32_t part,
                  const void *key, size_t klen, const obj_value *oldv);

/* Scans. The callback returns 0 to continue, 1 to stop (not an error). */
typedef int (*store_obj_cb)(void *arg, const void *key, size_t klen, const void *val, size_t vlen);
typedef int (*store_key_cb)(void *arg, const void *key, size_t klen);
/* Every object of one partition, in key order. */
int store_scan(store_txn *t, uint32_t space, uint32_t part, store_obj_cb cb, void *arg);
/* Keys whose index image for attribute attr lies in [lo, hi] (memcmp order;
 * lo or hi NULL: unbounded). Images are obj_index_width(type) bytes. */
int store_index_scan(store_txn *t, uint32_t space, uint32_t part, uint16_t attr, size_t width,
                     const void *lo, const void *hi, store_key_cb cb, void *arg);
/* Deletes every row of a space: objects, index entries, partition metadata
 * (store_part_meta and store_repl_meta), log entries and client rows. */
int store_drop_space(store_txn *t, uint32_t space);

/* Metadata. get: 0 and the value (valid as for store_obj_get), or MDB_NOTFOUND. */
int store_meta_get(store_txn *t, const char *name, const void **val, size_t *vlen);
int store_meta_put(store_txn *t, const char *name, const void *val, size_t vlen);

/* Per-partition metadata, versioned (u8 version 1, seq u64be, epoch u64be).
 * seq counts the writes applied to the partition; it is written in the same
 * transaction as each write. get fills zeros for a partition never written. */
typedef struct store_part_meta {
    uint64_t seq;
    uint64_t epoch;
} store_part_meta;
int store_part_meta_get(store_txn *t, uint32_t space, uint32_t part, store_part_meta *m);
int store_part_meta_put(store_txn *t, uint32_t space, uint32_t part, const store_part_meta *m);

/* Number of objects in one partition (for INFO). */
int store_count(store_txn *t, uint32_t space, uint32_t part, uint64_t *n);

/* ---- replication: the partition log -------------------------------------
 * Entries are opaque byte strings keyed by seq (any u64, 0 and UINT64_MAX
 * included). put overwrites an entry at the same seq. */
int store_log_put(store_txn *t, uint32_t space, uint32_t part, uint64_t seq, const void *data,
                  size_t len);
/* 0 and *data, *len (valid as for store_obj_get), or MDB_NOTFOUND. */
int store_log_get(store_txn *t, uint32_t space, uint32_t part, uint64_t seq, const void **data,
                  size_t *len);
/* Deletes the partition's entries with seq >= from (a truncated tail). */
int store_log_delete_from(store_txn *t, uint32_t space, uint32_t part, uint64_t from);
/* Deletes the partition's entries with seq <= through (compaction). */
int store_log_delete_through(store_txn *t, uint32_t space, uint32_t part, uint64_t through);
/* The lowest and highest stored seq: 0, or MDB_NOTFOUND if the partition's
 * log is empty (then *first and *last are 0). */
int store_log_bounds(store_txn *t, uint32_t space, uint32_t part, uint64_t *first,
                     uint64_t *last);
/* Calls cb for every entry with seq >= from, in increasing seq order. cb
 * returns 0 to continue, 1 to stop (scan returns 0), or a negative value to
 * stop with that value as the scan's result. data is valid during the call. */
typedef int (*store_log_cb)(void *arg, uint64_t seq, const void *data, size_t len);
int store_log_scan(store_txn *t, uint32_t space, uint32_t part, uint64_t from, store_log_cb cb,
                   void *arg);

/* ---- replication: per-partition metadata --------------------------------
 * What repl_persisted needs besides the log and the client table, written in
 * the same transaction as the log entries / applied objects it describes.
 * get fills zeros for a partition that has none (never written, or cleared). */
typedef struct store_repl_meta {
    uint64_t epoch;      /* highest epoch adopted */
    uint64_t applied;    /* last log seq applied to the objects */
    uint64_t base_seq;   /* the stored log starts after base_seq */
    uint64_t base_epoch; /* epoch of entry base_seq (0 iff base_seq == 0) */
} store_repl_meta;
int store_repl_meta_get(store_txn *t, uint32_t space, uint32_t part, store_repl_meta *m);
int store_repl_meta_put(store_txn *t, uint32_t space, uint32_t part, const store_repl_meta *m);
/* Every partition that has replication metadata, in (space, part) order.
 * cb as for store_log_cb; a malformed record stops the scan with
 * MDB_CORRUPTED. */
typedef int (*store_repl_meta_cb)(void *arg, uint32_t space, uint32_t part,
                                  const store_repl_meta *m);
int store_repl_meta_scan(store_txn *t, store_repl_meta_cb cb, void *arg);

/* ---- replication: the client table --------------------------------------
 * One row per client of a partition: the last write of that client applied
 * there (exactly-once retries, DESIGN section 6). */
typedef struct store_client {
    uint64_t client_id;    /* the row's key */
    uint64_t client_seq;   /* the client's sequence number of that write */
    uint64_t seq;          /* the log seq it was applied at */
    uint32_t rlen;
    const uint8_t *result; /* the reply it got; get/scan: points into the
                              store (valid as for store_obj_get); NULL iff
                              rlen == 0 */
} store_client;
/* Inserts or replaces the row c->client_id. */
int store_client_put(store_txn *t, uint32_t space, uint32_t part, const store_client *c);
/* 0 and *c, MDB_NOTFOUND if the client has no row, MDB_CORRUPTED if the row
 * is malformed. */
int store_client_get(store_txn *t, uint32_t space, uint32_t part, uint64_t client_id,
                     store_client *c);
/* Every row of the partition in client_id order; cb as for store_log_cb, c
 * valid during the call. A malformed row stops the scan with MDB_CORRUPTED. */
typedef int (*store_client_cb)(void *arg, const store_client *c);
int store_client_scan(store_txn *t, uint32_t space, uint32_t part, store_client_cb cb,
                      void *arg);
int store_client_delete_all(store_txn *t, uint32_t space, uint32_t part);

/* ---- replication: partition copies --------------------------------------
 * A full copy is sent with store_scan (objects) + store_client_scan inside
 * one read transaction (a consistent snapshot) and installed on the receiver
 * after store_part_clear, with kv_apply_put per object. */
/* Removes everything of one partition: objects, index entries, log entries,
 * client rows, replication metadata and the standalone write counter. Other
 * partitions (and spaces) are untouched. */
int store_part_clear(store_txn *t, uint32_t space, uint32_t part);

#endif
