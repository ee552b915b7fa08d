/* dcopy: full copies of a replicated partition (DESIGN section 6, rejoin and
 * re-protection) — the consistent snapshot a primary sends when a replica's
 * log position is older than the primary's retained log (repl's
 * REPL_EV_NEED_COPY), its byte format, the chunking, the validating receiver
 * and the installation into the replica's store.
 *
 * No I/O and no threads of its own: the daemon glue (dpart.c) moves the
 * chunks over the replication port and runs the storage half on its storage
 * thread. docs/replication.md ("Full copy") gives the sequencing the glue must
 * follow and the wire messages that carry the chunks.
 *
 *   primary                                       replica
 *   -------                                       -------
 *   dcopy_snapshot(store, sp, part) -> image      dcopy_reader_new(sp, part)
 *   dcopy_writer over the image  --- chunks --->  dcopy_reader_feed (validates)
 *                                                 dcopy_reader_finish (checksum)
 *                                                 repl_install_snapshot(seq,
 *                                                     seq_epoch, clients)
 *                                                 dcopy_install (one write txn)
 *
 * Image format, version DCOPY_VERSION, little endian, never renumbered:
 *
 *   header (DCOPY_HEADER_SIZE = 50 bytes)
 *     u8  version (1)        u8  flags (0; every bit reserved)
 *     u32 space              u32 part
 *     u64 seq                the applied seq the snapshot reflects (>= 1)
 *     u64 seq_epoch          the epoch of log entry seq (>= 1)
 *     u64 n_objects          u64 n_clients
 *     u64 bytes              the whole image, header and checksum included
 *   n_objects times, keys in strictly increasing order (memcmp, then the
 *   shorter first: the store's order):
 *     u8 1   u32 klen   key (klen <= STORE_MAX_KEY)
 *            u32 vlen   value (the object's obj_encode bytes, <= REPL_MAX_VALUE)
 *   n_clients times, client ids strictly increasing:
 *     u8 2   u64 client_id (!= 0)   u64 client_seq (!= 0)
 *            u64 seq (1 .. the header's seq)   u32 rlen   result (<= REPL_MAX_RESULT)
 *   trailer
 *     u64 XXH64 (seed 0) of every byte before it
 *
 * The image is a plain byte string: any split into chunks, concatenated in
 * order, is the image, so the writer simply slices it.
 *
 * Invariants:
 *   1. A snapshot reflects exactly one committed state: its objects, client
 *      rows, seq and seq_epoch all come from one LMDB read transaction, and
 *      seq is the applied seq persisted in that transaction (repl invariant
 *      4: the store holds exactly the entries <= applied).
 *   2. The reader never trusts its input: every field is checked as soon as
 *      its bytes arrive (version, flags, partition, lengths against the
 *      limits and against the announced size, record tags, key and client
 *      order, every object decoded against the schema, client fields as
 *      repl_install_snapshot requires them), the checksum at the end; it
 *      never allocates more than the caller's max_bytes. Its first error is
 *      sticky.
 *   3. Nothing reaches a store or repl unless the whole image was received
 *      and validated: dcopy_reader_clients and dcopy_install refuse a reader
 *      that is not finished, without touching anything. A validated image
 *      installs without a schema error, so repl_install_snapshot (called
 *      first) and the store cannot disagree except through a storage error,
 *      which the caller retries.
 *   4. dcopy_install touches only the partition of the image: the same rows
 *      store_part_clear removes, plus, with keep_log, the log entries after
 *      seq written back unchanged.
 *
 * Errors: the reader returns DCOPY_OK (0) or a DCOPY_E* code (-1 .. -7);
 * dcopy_snapshot and dcopy_install return 0, a DCOPY_E* code, or a store
 * error: an LMDB code (MDB_*, -30799 .. -30780) or an errno value (> 0).
 * The ranges never overlap; dcopy_strerror names any of them.
 */
#ifndef KEEL_DCOPY_H
#define KEEL_DCOPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "kv.h"
#include "repl.h"
#include "store.h"

#define DCOPY_VERSION 1
#define DCOPY_HEADER_SIZE 50
#define DCOPY_TRAILER_SIZE 8
#define DCOPY_REC_OBJECT 1 /* record tags (never renumbered) */
#define DCOPY_REC_CLIENT 2
/* A suggested chunk size for the wire (well under the peer port's bulk limit). */
#define DCOPY_DEFAULT_CHUNK (1u << 20)

enum dcopy_err {
    DCOPY_OK = 0,
    DCOPY_EDECODE = -1,     /* malformed image (a field, a length, a tag, the order, an object) */
    DCOPY_ECHECKSUM = -2,   /* the checksum does not match the bytes */
    DCOPY_EMISMATCH = -3,   /* the image is of another space or partition */
    DCOPY_ETOOBIG = -4,     /* the image is larger than the reader's max_bytes, or
                               memory for it cannot be allocated */
    DCOPY_EORDER = -5,      /* a chunk's offset is not the next byte expected */
    DCOPY_EINCOMPLETE = -6, /* finish (or install) before the image was complete */
    DCOPY_EINVAL = -7       /* a bad argument */
};
/* Names a DCOPY_E* code, an LMDB code or an errno value. */
const char *dcopy_strerror(int err);

/* What the header of an image says (valid once the reader has parsed it). */
typedef struct dcopy_header {
    uint32_t space, part;
    uint64_t seq;       /* applied seq of the snapshot */
    uint64_t seq_epoch; /* epoch of entry seq */
    uint64_t n_objects, n_clients;
    uint64_t bytes; /* size of the whole image */
} dcopy_header;

/* ---- sender (the primary) ------------------------------------------------------ */

/* Takes a consistent snapshot of partition part of space sp (sp->id) in ONE
 * read transaction of st: its persisted applied seq (store_repl_meta), the
 * epoch of that entry (the log base's epoch if applied == base_seq, else the
 * stored log entry's), every object and every client row; and appends the
 * image to out. *seq and *seq_epoch receive the header's seq and seq_epoch;
 * the image is out->len - (length before) bytes long.
 * Opens and closes its own read transaction, so it may run on any thread
 * (the environment uses MDB_NOTLS) while the storage thread keeps writing.
 * Returns 0, or (out unchanged):
 *   MDB_NOTFOUND   the partition has no applied state (applied == 0);
 *   MDB_CORRUPTED  the stored state is inconsistent (applied below the log
 *                  base, entry `applied` missing or undecodable, an object
 *                  that does not decode against sp's schema);
 *   another LMDB error. */
int dcopy_snapshot(store *st, const kv_space *sp, uint32_t part, uint64_t *seq, uint64_t *seq_epoch,
                   buf *out);
/* The same inside the caller's transaction t (read or write; not ended). */
int dcopy_snapshot_txn(store_txn *t, const kv_space *sp, uint32_t part, uint64_t *seq,
                       uint64_t *seq_epoch, buf *out);

/* Slices an image into chunks of at most `chunk` bytes (chunk >= 1). The
 * writer points into the image, which must stay unchanged while it is used. */
typedef struct dcopy_writer {
    const uint8_t *data; /* private */
    size_t len;          /* private */
    size_t off;          /* read-only: bytes handed out so far */
    size_t chunk;        /* private */
} dcopy_writer;
void dcopy_writer_init(dcopy_writer *w, const void *image, size_t len, size_t chunk);
/* The next chunk: true with *p, *n (1..chunk bytes, pointing into the image)
 * and *offset (its position in the image); false once everything was handed
 * out. */
bool dcopy_writer_next(dcopy_writer *w, const void **p, size_t *n, uint64_t *offset);
/* Bytes not yet handed out (progress: "bytes left"). */
uint64_t dcopy_writer_left(const dcopy_writer *w);

/* ---- receiver (the replica) ---------------------------------------------------- */

typedef struct dcopy_reader dcopy_reader; /* opaque */

/* A reader for an image of partition part of space sp (sp->id): it holds a
 * reference on sp (the schema every object is checked against) and accepts
 * at most max_bytes of image (>= DCOPY_HEADER_SIZE + DCOPY_TRAILER_SIZE).
 * Memory: the whole image is held, in one allocation of the size the
 * header announces, made when the first byte after the header arrives.
 * Free it with dcopy_reader_free. Returns DCOPY_OK or DCOPY_EINVAL. */
int dcopy_reader_new(dcopy_reader **out, kv_space *sp, uint32_t part, size_t max_bytes);
void dcopy_reader_free(dcopy_reader *r);

/* Accepts the chunk of n bytes at image position offset, which must be the
 * number of bytes accepted so far (else DCOPY_EORDER: chunks arrive in
 * order, once). Validates every record the bytes complete. Returns DCOPY_OK
 * or the error (sticky: every later call returns the first error). Bytes
 * beyond the image's announced size are DCOPY_EDECODE. Once the image is
 * complete the reader never changes again: a later feed with bytes returns
 * DCOPY_EDECODE and leaves the (valid) image as it is. */
int dcopy_reader_feed(dcopy_reader *r, uint64_t offset, const void *p, size_t n);
/* The image is complete: every byte arrived and the checksum matches.
 * Returns DCOPY_OK and fills *h (may be NULL), DCOPY_EINCOMPLETE if bytes
 * are missing, or the sticky error (DCOPY_ECHECKSUM, ...). After DCOPY_OK
 * the reader is immutable: dcopy_reader_clients and dcopy_install may run
 * on any one thread at a time. */
int dcopy_reader_finish(dcopy_reader *r, dcopy_header *h);
/* Bytes accepted so far and the announced size (0 until the header arrived). */
void dcopy_reader_progress(const dcopy_reader *r, uint64_t *received, uint64_t *total);
/* The parsed header: DCOPY_OK once the header bytes arrived and were valid,
 * else DCOPY_EINCOMPLETE or the sticky error. */
int dcopy_reader_header(const dcopy_reader *r, dcopy_header *h);

/* The snapshot's client table, in client_id order, for
 * repl_install_snapshot: *rows (pointing into the reader, valid until
 * dcopy_reader_free) and *n. DCOPY_EINCOMPLETE (or the sticky error) unless
 * dcopy_reader_finish succeeded. */
int dcopy_reader_clients(const dcopy_reader *r, const repl_client **rows, size_t *n);

/* Installs a finished image in write transaction t, replacing partition
 * (space, part) of the header:
 *   - with keep_log, the stored log entries after seq are read first;
 *   - store_part_clear (objects, index entries, log, client rows, metadata);
 *   - kv_apply_put of every object (with its index entries) and
 *     store_client_put of every client row;
 *   - with keep_log, the saved entries after seq are written back;
 *   - store_repl_meta_put {epoch: the epoch stored before (kept), applied:
 *     seq, base_seq: seq, base_epoch: seq_epoch}, also copied to *meta
 *     (may be NULL) so the caller's in-memory copy can follow.
 * keep_log is what repl_install_snapshot said. Returns 0; DCOPY_EINCOMPLETE
 * (or the reader's sticky error) if r is not finished, and then t was not
 * touched; otherwise an error from the store, after which t is poisoned and
 * the caller must abort it (nothing of the copy is then installed). */
int dcopy_install(store_txn *t, const dcopy_reader *r, bool keep_log, store_repl_meta *meta);

#endif
