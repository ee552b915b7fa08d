/* kv: the data commands (PUT GET DEL CPUT ADD SEARCH COUNT) — parsing and
 * validation against a space's schema, and execution inside a storage
 * transaction.
 *
 * The split follows the threads: kv_parse runs on the network thread and
 * refuses bad requests at once with the error reply (nothing reaches the
 * storage thread); kv_exec runs wherever the transaction lives (reads: the
 * network thread's read transaction; writes: the storage thread's group
 * commit), reads the current object, computes the resulting object, writes it
 * with its index entries and the partition's write counter, and appends the
 * reply.
 *
 * Invariants:
 *   1. A request that kv_parse accepts can fail in kv_exec only by the
 *      operation's own semantics (CMPFAIL, NOTFOUND, OVERFLOW) or a storage
 *      error; all of these leave the object unchanged.
 *   2. Writes store the resulting object (state, not delta), so replaying a
 *      write is idempotent (what replication will ship, DESIGN section 5).
 *   3. A kv_op after kv_op_detach owns copies of every byte string it uses
 *      and a reference on its space, so it outlives the request buffer and a
 *      concurrent SPACE.DROP.
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

/* Executes op in transaction t and appends the reply (a result or a
 * CMPFAIL/NOTFOUND/OVERFLOW error) to reply. Returns 0, or a storage error
 * code; then nothing was appended and, for writes, the transaction is
 * poisoned. t must be a write transaction for write kinds. */
int kv_exec(store_txn *t, const kv_op *op, buf *reply);

/* Appends "-WRONGTYPE ..." / "-NOATTR ..." style replies; shared with admin. */
void kv_reply_nospace(buf *out, const char *name, size_t len);

#endif
