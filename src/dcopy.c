/* dcopy: full copies of a replicated partition (see dcopy.h for the format,
 * the invariants and the API; docs/replication.md "Full copy" for how the
 * daemon glue sequences a copy).
 *
 * Design note
 * -----------
 * Sender: one read transaction gives a consistent view (LMDB MVCC), so the
 * snapshot is the state exactly at the applied seq persisted in it, however
 * many writes commit meanwhile. The image is built in memory: header first
 * with the counts patched in afterwards, then objects (store_scan order is
 * the key order the reader demands), client rows, and the XXH64 trailer.
 *
 * Receiver: the reader appends every chunk to one contiguous buffer and
 * parses as far as the bytes go. `pos` is the end of the last complete,
 * validated record; a record that is not complete yet is re-examined when
 * more bytes arrive, and its length fields are checked against the limits
 * and the announced image size as soon as they are readable, so a lying
 * length is refused before its bytes are waited for. State machine (each
 * transition in parse()):
 *
 *   R_HEADER --50 valid bytes--> R_OBJECTS --n_objects records--> R_CLIENTS
 *   R_CLIENTS --n_clients records--> R_TRAILER --8 bytes, checksum ok--> R_DONE
 *   any state --invalid byte--> failed (sticky err)
 *
 * The buffer is allocated once at the announced size (at most max_bytes)
 * when the first byte after the header arrives; an allocation failure
 * refuses the copy (DCOPY_ETOOBIG) instead of aborting. Records hold
 * offsets, never pointers, until R_DONE. At R_DONE the client table is built as repl_client
 * rows pointing into the final buffer.
 *
 * Installing walks the validated records again with the same record parser
 * (an error there is a broken invariant: assert).
 */
#include "dcopy.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* ---- constants -------------------------------------------------------------------- */

#define OBJ_FIXED 9     /* u8 tag, u32 klen, u32 vlen */
#define CLIENT_FIXED 29 /* u8 tag, u64 id, u64 client_seq, u64 seq, u32 rlen */

enum { R_HEADER = 0, R_OBJECTS, R_CLIENTS, R_TRAILER, R_DONE };

struct dcopy_reader {
    kv_space *sp; /* referenced */
    uint32_t part;
    size_t max_bytes;
    buf img;    /* the bytes received, contiguous */
    size_t pos; /* end of the last validated record */
    int state;  /* R_* */
    int err;    /* sticky first error (0: none) */
    dcopy_header h;
    uint64_t left;        /* records left in R_OBJECTS / R_CLIENTS */
    size_t prev_key;      /* offset of the previous object's key */
    size_t prev_klen;     /* and its length */
    bool have_prev;       /* an object was parsed */
    uint64_t prev_client; /* previous client id (0: none yet) */
    size_t clients_off;   /* first client record */
    repl_client *clients; /* R_DONE: the table, pointing into img */
};

/* ---- little endian helpers ---------------------------------------------------------- */

static void put_u8(buf *b, uint8_t v)
{
    buf_putc(b, (char)v);
}

static void set_u64le(void *p, uint64_t v)
{
    uint8_t *q = p;
    for (int i = 0; i < 8; i++)
        q[i] = (uint8_t)(v >> (8 * i));
}

/* ---- errors ------------------------------------------------------------------------- */

const char *dcopy_strerror(int err)
{
    switch (err) {
    case DCOPY_OK:
        return "ok";
    case DCOPY_EDECODE:
        return "malformed copy image";
    case DCOPY_ECHECKSUM:
        return "copy image checksum mismatch";
    case DCOPY_EMISMATCH:
        return "copy image of another partition";
    case DCOPY_ETOOBIG:
        return "copy image larger than allowed";
    case DCOPY_EORDER:
        return "copy chunk out of order";
    case DCOPY_EINCOMPLETE:
        return "copy image incomplete";
    case DCOPY_EINVAL:
        return "invalid argument";
    default:
        /* LMDB codes (MDB_KEYEXIST .. MDB_LAST_ERRCODE) and errno values */
        if (err > 0 || (err >= MDB_KEYEXIST && err <= MDB_LAST_ERRCODE)) return mdb_strerror(err);
        return "unknown copy error";
    }
}

/* ---- records (shared by the reader and the installer) ---------------------------------- */

typedef struct rec_obj {
    size_t key, klen; /* offsets into the image */
    size_t val, vlen;
} rec_obj;

typedef struct rec_client {
    uint64_t client_id, client_seq, seq;
    size_t result, rlen;
} rec_client;

/* Parses the object record at img[at .. avail), which must end by `limit`
 * (where the records end). 1: complete (*end set), 0: more bytes needed,
 * DCOPY_EDECODE: invalid. Only lengths and the tag are checked here. */
static int parse_obj(const uint8_t *img, size_t at, size_t avail, size_t limit, rec_obj *o,
                     size_t *end)
{
    if (avail - at < 1) return 0;
    if (img[at] != DCOPY_REC_OBJECT) return DCOPY_EDECODE;
    if (limit - at < OBJ_FIXED) return DCOPY_EDECODE;
    if (avail - at < 5) return 0;
    uint32_t klen = get_u32le(img + at + 1);
    if (klen > STORE_MAX_KEY || klen > limit - at - OBJ_FIXED) return DCOPY_EDECODE;
    size_t v = at + 5 + klen; /* the vlen field */
    if (avail < v + 4) return 0;
    uint32_t vlen = get_u32le(img + v);
    if (vlen > REPL_MAX_VALUE || vlen > limit - v - 4) return DCOPY_EDECODE;
    if (avail - v - 4 < vlen) return 0;
    o->key = at + 5;
    o->klen = klen;
    o->val = v + 4;
    o->vlen = vlen;
    *end = v + 4 + vlen;
    return 1;
}

/* As parse_obj for a client record; checks the fields repl needs too. */
static int parse_client(const uint8_t *img, size_t at, size_t avail, size_t limit, uint64_t max_seq,
                        rec_client *c, size_t *end)
{
    if (avail - at < 1) return 0;
    if (img[at] != DCOPY_REC_CLIENT) return DCOPY_EDECODE;
    if (limit - at < CLIENT_FIXED) return DCOPY_EDECODE;
    if (avail - at < CLIENT_FIXED) return 0;
    c->client_id = get_u64le(img + at + 1);
    c->client_seq = get_u64le(img + at + 9);
    c->seq = get_u64le(img + at + 17);
    uint32_t rlen = get_u32le(img + at + 25);
    if (!c->client_id || !c->client_seq || !c->seq || c->seq > max_seq) return DCOPY_EDECODE;
    if (rlen > REPL_MAX_RESULT || rlen > limit - at - CLIENT_FIXED) return DCOPY_EDECODE;
    if (avail - at - CLIENT_FIXED < rlen) return 0;
    c->result = at + CLIENT_FIXED;
    c->rlen = rlen;
    *end = at + CLIENT_FIXED + rlen;
    return 1;
}

/* The store's key order: memcmp, then the shorter first. */
static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : alen > blen;
}

/* ---- sender ------------------------------------------------------------------------------ */

typedef struct snap_ctx {
    const space_schema *schema;
    buf *out;
    uint64_t n;
    int err;
} snap_ctx;

static int snap_obj(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    snap_ctx *x = arg;
    obj_value vals[SPACE_MAX_ATTRS];
    if (klen > STORE_MAX_KEY || vlen > REPL_MAX_VALUE || obj_decode(x->schema, val, vlen, vals)) {
        x->err = MDB_CORRUPTED;
        return 1;
    }
    put_u8(x->out, DCOPY_REC_OBJECT);
    buf_put_u32le(x->out, (uint32_t)klen);
    buf_append(x->out, key, klen);
    buf_put_u32le(x->out, (uint32_t)vlen);
    buf_append(x->out, val, vlen);
    x->n++;
    return 0;
}

typedef struct snap_client_ctx {
    buf *out;
    uint64_t max_seq;
    uint64_t n;
    int err;
} snap_client_ctx;

static int snap_client(void *arg, const store_client *c)
{
    snap_client_ctx *x = arg;
    if (!c->client_id || !c->client_seq || !c->seq || c->seq > x->max_seq ||
        c->rlen > REPL_MAX_RESULT) {
        x->err = MDB_CORRUPTED;
        return 1;
    }
    put_u8(x->out, DCOPY_REC_CLIENT);
    buf_put_u64le(x->out, c->client_id);
    buf_put_u64le(x->out, c->client_seq);
    buf_put_u64le(x->out, c->seq);
    buf_put_u32le(x->out, c->rlen);
    buf_append(x->out, c->result, c->rlen);
    x->n++;
    return 0;
}

/* The epoch of entry m->applied (m->applied >= 1). */
static int applied_epoch(store_txn *t, uint32_t space, uint32_t part, const store_repl_meta *m,
                         uint64_t *epoch)
{
    if (m->applied < m->base_seq) return MDB_CORRUPTED;
    if (m->applied == m->base_seq) {
        if (!m->base_epoch) return MDB_CORRUPTED;
        *epoch = m->base_epoch;
        return 0;
    }
    const void *data;
    size_t len;
    int rc = store_log_get(t, space, part, m->applied, &data, &len);
    if (rc == MDB_NOTFOUND) return MDB_CORRUPTED;
    if (rc) return rc;
    repl_entry e;
    if (repl_entry_decode(data, len, &e) || e.seq != m->applied) return MDB_CORRUPTED;
    *epoch = e.epoch;
    return 0;
}

int dcopy_snapshot_txn(store_txn *t, const kv_space *sp, uint32_t part, uint64_t *seq,
                       uint64_t *seq_epoch, buf *out)
{
    assert(t && sp && seq && seq_epoch && out);
    uint32_t space = sp->id;
    store_repl_meta m;
    int rc = store_repl_meta_get(t, space, part, &m);
    if (rc) return rc;
    if (m.applied == 0) return MDB_NOTFOUND;
    uint64_t epoch;
    if ((rc = applied_epoch(t, space, part, &m, &epoch))) return rc;

    size_t start = out->len;
    put_u8(out, DCOPY_VERSION);
    put_u8(out, 0);
    buf_put_u32le(out, space);
    buf_put_u32le(out, part);
    buf_put_u64le(out, m.applied);
    buf_put_u64le(out, epoch);
    buf_put_u64le(out, 0); /* n_objects, patched below */
    buf_put_u64le(out, 0); /* n_clients */
    buf_put_u64le(out, 0); /* bytes */
    assert(out->len - start == DCOPY_HEADER_SIZE);

    snap_ctx ox = {.schema = sp->schema, .out = out};
    rc = store_scan(t, space, part, snap_obj, &ox);
    if (!rc) rc = ox.err;
    snap_client_ctx cx = {.out = out, .max_seq = m.applied};
    if (!rc) rc = store_client_scan(t, space, part, snap_client, &cx);
    if (!rc) rc = cx.err;
    if (rc) {
        out->len = start;
        return rc;
    }
    uint8_t *h = (uint8_t *)out->data + start;
    set_u64le(h + 26, ox.n);
    set_u64le(h + 34, cx.n);
    set_u64le(h + 42, (uint64_t)(out->len - start) + DCOPY_TRAILER_SIZE);
    uint64_t sum = XXH64(out->data + start, out->len - start, 0);
    buf_put_u64le(out, sum);
    *seq = m.applied;
    *seq_epoch = epoch;
    return 0;
}

int dcopy_snapshot(store *st, const kv_space *sp, uint32_t part, uint64_t *seq, uint64_t *seq_epoch,
                   buf *out)
{
    store_txn t;
    int rc = store_txn_begin(st, false, &t);
    if (rc) return rc;
    rc = dcopy_snapshot_txn(&t, sp, part, seq, seq_epoch, out);
    store_txn_abort(&t);
    return rc;
}

void dcopy_writer_init(dcopy_writer *w, const void *image, size_t len, size_t chunk)
{
    assert(w && (image || !len) && chunk >= 1);
    w->data = image;
    w->len = len;
    w->off = 0;
    w->chunk = chunk;
}

bool dcopy_writer_next(dcopy_writer *w, const void **p, size_t *n, uint64_t *offset)
{
    if (w->off >= w->len) return false;
    size_t k = w->len - w->off;
    if (k > w->chunk) k = w->chunk;
    *p = w->data + w->off;
    *n = k;
    *offset = w->off;
    w->off += k;
    return true;
}

uint64_t dcopy_writer_left(const dcopy_writer *w)
{
    return w->len - w->off;
}

/* ---- receiver ------------------------------------------------------------------------------ */

int dcopy_reader_new(dcopy_reader **out, kv_space *sp, uint32_t part, size_t max_bytes)
{
    *out = NULL;
    if (!sp || max_bytes < DCOPY_HEADER_SIZE + DCOPY_TRAILER_SIZE) return DCOPY_EINVAL;
    dcopy_reader *r = calloc(1, sizeof *r);
    if (!r) abort();
    kv_space_ref(sp);
    r->sp = sp;
    r->part = part;
    r->max_bytes = max_bytes;
    buf_init(&r->img);
    *out = r;
    return DCOPY_OK;
}

void dcopy_reader_free(dcopy_reader *r)
{
    if (!r) return;
    kv_space_unref(r->sp);
    buf_free(&r->img);
    free(r->clients);
    free(r);
}

static int fail(dcopy_reader *r, int err)
{
    r->err = err;
    return err;
}

static int parse_header(dcopy_reader *r)
{
    const uint8_t *p = (const uint8_t *)r->img.data;
    dcopy_header *h = &r->h;
    if (p[0] != DCOPY_VERSION || p[1] != 0) return DCOPY_EDECODE;
    h->space = get_u32le(p + 2);
    h->part = get_u32le(p + 6);
    h->seq = get_u64le(p + 10);
    h->seq_epoch = get_u64le(p + 18);
    h->n_objects = get_u64le(p + 26);
    h->n_clients = get_u64le(p + 34);
    h->bytes = get_u64le(p + 42);
    if (h->space != r->sp->id || h->part != r->part) return DCOPY_EMISMATCH;
    if (!h->seq || !h->seq_epoch) return DCOPY_EDECODE;
    if (h->bytes > r->max_bytes) return DCOPY_ETOOBIG;
    if (h->bytes < DCOPY_HEADER_SIZE + DCOPY_TRAILER_SIZE) return DCOPY_EDECODE;
    /* every record takes at least its fixed part: the counts must fit */
    uint64_t room = h->bytes - DCOPY_HEADER_SIZE - DCOPY_TRAILER_SIZE;
    if (h->n_objects > room / OBJ_FIXED) return DCOPY_EDECODE;
    room -= h->n_objects * OBJ_FIXED;
    if (h->n_clients > room / CLIENT_FIXED) return DCOPY_EDECODE;
    return DCOPY_OK;
}

/* Builds the client table once the image is final. */
static void build_clients(dcopy_reader *r)
{
    if (!r->h.n_clients) return;
    r->clients = calloc((size_t)r->h.n_clients, sizeof *r->clients);
    if (!r->clients) abort();
    const uint8_t *img = (const uint8_t *)r->img.data;
    size_t at = r->clients_off, limit = r->img.len - DCOPY_TRAILER_SIZE;
    for (uint64_t i = 0; i < r->h.n_clients; i++) {
        rec_client c;
        size_t end;
        int rc = parse_client(img, at, limit, limit, r->h.seq, &c, &end);
        assert(rc == 1);
        (void)rc;
        r->clients[i] = (repl_client){.client_id = c.client_id,
                                      .client_seq = c.client_seq,
                                      .seq = c.seq,
                                      .rlen = (uint32_t)c.rlen,
                                      .result = c.rlen ? img + c.result : NULL};
        at = end;
    }
}

/* Parses as far as the received bytes go (see the state machine above). */
static int parse(dcopy_reader *r)
{
    for (;;) {
        const uint8_t *img = (const uint8_t *)r->img.data;
        size_t avail = r->img.len;
        if (r->state == R_HEADER) {
            if (avail < DCOPY_HEADER_SIZE) return DCOPY_OK;
            int rc = parse_header(r);
            if (rc) return rc;
            r->pos = DCOPY_HEADER_SIZE;
            r->left = r->h.n_objects;
            r->state = R_OBJECTS;
            continue;
        }
        size_t limit = (size_t)r->h.bytes - DCOPY_TRAILER_SIZE; /* where records end */
        if (r->state == R_OBJECTS) {
            if (!r->left) {
                r->state = R_CLIENTS;
                r->left = r->h.n_clients;
                r->clients_off = r->pos;
                continue;
            }
            rec_obj o;
            size_t end;
            int rc = parse_obj(img, r->pos, avail, limit, &o, &end);
            if (rc <= 0) return rc;
            if (r->have_prev && key_cmp(img + r->prev_key, r->prev_klen, img + o.key, o.klen) >= 0)
                return DCOPY_EDECODE;
            obj_value vals[SPACE_MAX_ATTRS];
            if (obj_decode(r->sp->schema, img + o.val, o.vlen, vals)) return DCOPY_EDECODE;
            r->have_prev = true;
            r->prev_key = o.key;
            r->prev_klen = o.klen;
            r->pos = end;
            r->left--;
            continue;
        }
        if (r->state == R_CLIENTS) {
            if (!r->left) {
                if (r->pos != limit) return DCOPY_EDECODE; /* bytes no record claims */
                r->state = R_TRAILER;
                continue;
            }
            rec_client c;
            size_t end;
            int rc = parse_client(img, r->pos, avail, limit, r->h.seq, &c, &end);
            if (rc <= 0) return rc;
            if (c.client_id <= r->prev_client) return DCOPY_EDECODE;
            r->prev_client = c.client_id;
            r->pos = end;
            r->left--;
            continue;
        }
        if (r->state == R_TRAILER) {
            if (avail < r->h.bytes) return DCOPY_OK;
            uint64_t sum = XXH64(img, limit, 0);
            if (get_u64le(img + limit) != sum) return DCOPY_ECHECKSUM;
            r->pos = avail;
            r->state = R_DONE;
            build_clients(r);
            return DCOPY_OK;
        }
        return DCOPY_OK; /* R_DONE */
    }
}

/* Makes room for the whole announced image at once (one allocation, no
 * copying as it grows; untouched pages cost nothing until bytes arrive).
 * False if the memory is not there: the copy is refused, the daemon lives. */
static bool reserve_image(dcopy_reader *r)
{
    if (r->img.cap >= r->h.bytes) return true;
    char *q = realloc(r->img.data, (size_t)r->h.bytes);
    if (!q) return false;
    r->img.data = q;
    r->img.cap = (size_t)r->h.bytes;
    return true;
}

int dcopy_reader_feed(dcopy_reader *r, uint64_t offset, const void *p, size_t n)
{
    if (r->err) return r->err;
    if (r->state == R_DONE) /* complete and immutable: refuse, change nothing */
        return n == 0 && offset == r->img.len ? DCOPY_OK : DCOPY_EDECODE;
    if (offset != r->img.len) return fail(r, DCOPY_EORDER);
    if (n == 0) return DCOPY_OK;
    if (!p) return fail(r, DCOPY_EINVAL);
    const uint8_t *q = p;
    if (r->state == R_HEADER) {
        /* the header alone first: its announced size (checked against
         * max_bytes) bounds everything kept after it */
        size_t take = DCOPY_HEADER_SIZE - r->img.len;
        if (take > n) take = n;
        buf_append(&r->img, q, take);
        int rc = parse(r);
        if (rc) return fail(r, rc);
        q += take;
        n -= take;
        if (n == 0) return DCOPY_OK;
    }
    if (n > r->h.bytes - r->img.len) return fail(r, DCOPY_EDECODE); /* beyond the image */
    if (!reserve_image(r)) return fail(r, DCOPY_ETOOBIG);
    buf_append(&r->img, q, n);
    int rc = parse(r);
    if (rc) return fail(r, rc);
    return DCOPY_OK;
}

int dcopy_reader_finish(dcopy_reader *r, dcopy_header *h)
{
    if (r->err) return r->err;
    if (r->state != R_DONE) return DCOPY_EINCOMPLETE;
    if (h) *h = r->h;
    return DCOPY_OK;
}

void dcopy_reader_progress(const dcopy_reader *r, uint64_t *received, uint64_t *total)
{
    if (received) *received = r->img.len;
    if (total) *total = r->state == R_HEADER ? 0 : r->h.bytes;
}

int dcopy_reader_header(const dcopy_reader *r, dcopy_header *h)
{
    if (r->err) return r->err;
    if (r->state == R_HEADER) return DCOPY_EINCOMPLETE;
    if (h) *h = r->h;
    return DCOPY_OK;
}

int dcopy_reader_clients(const dcopy_reader *r, const repl_client **rows, size_t *n)
{
    *rows = NULL;
    *n = 0;
    if (r->err) return r->err;
    if (r->state != R_DONE) return DCOPY_EINCOMPLETE;
    *rows = r->clients;
    *n = (size_t)r->h.n_clients;
    return DCOPY_OK;
}

/* ---- installing ------------------------------------------------------------------------------ */

typedef struct tail_ctx {
    buf data;       /* the entries' bytes, back to back */
    uint64_t *seqs; /* seq of each entry */
    size_t *lens;
    size_t n, cap;
} tail_ctx;

static int save_entry(void *arg, uint64_t seq, const void *data, size_t len)
{
    tail_ctx *x = arg;
    if (x->n == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 64;
        x->seqs = realloc(x->seqs, x->cap * sizeof *x->seqs);
        x->lens = realloc(x->lens, x->cap * sizeof *x->lens);
        if (!x->seqs || !x->lens) abort();
    }
    x->seqs[x->n] = seq;
    x->lens[x->n] = len;
    x->n++;
    buf_append(&x->data, data, len);
    return 0;
}

static void tail_free(tail_ctx *x)
{
    buf_free(&x->data);
    free(x->seqs);
    free(x->lens);
}

int dcopy_install(store_txn *t, const dcopy_reader *r, bool keep_log, store_repl_meta *meta)
{
    if (r->err) return r->err;
    if (r->state != R_DONE) return DCOPY_EINCOMPLETE;
    const dcopy_header *h = &r->h;
    uint32_t space = h->space, part = h->part;
    store_repl_meta old;
    int rc = store_repl_meta_get(t, space, part, &old);
    if (rc) return rc;
    tail_ctx tail = {0};
    buf_init(&tail.data);
    if (keep_log && h->seq < UINT64_MAX &&
        (rc = store_log_scan(t, space, part, h->seq + 1, save_entry, &tail)))
        goto done;
    if ((rc = store_part_clear(t, space, part))) goto done;

    const uint8_t *img = (const uint8_t *)r->img.data;
    size_t at = DCOPY_HEADER_SIZE, limit = r->img.len - DCOPY_TRAILER_SIZE;
    for (uint64_t i = 0; i < h->n_objects; i++) {
        rec_obj o;
        size_t end;
        int pr = parse_obj(img, at, limit, limit, &o, &end);
        assert(pr == 1);
        (void)pr;
        if ((rc = kv_apply_put(t, r->sp, part, img + o.key, o.klen, img + o.val, o.vlen)))
            goto done;
        at = end;
    }
    for (uint64_t i = 0; i < h->n_clients; i++) {
        const repl_client *c = &r->clients[i];
        store_client sc = {.client_id = c->client_id,
                           .client_seq = c->client_seq,
                           .seq = c->seq,
                           .rlen = c->rlen,
                           .result = c->result};
        if ((rc = store_client_put(t, space, part, &sc))) goto done;
    }
    size_t off = 0;
    for (size_t i = 0; i < tail.n; i++) {
        if ((rc = store_log_put(t, space, part, tail.seqs[i], tail.data.data + off, tail.lens[i])))
            goto done;
        off += tail.lens[i];
    }
    store_repl_meta m = {
        .epoch = old.epoch, .applied = h->seq, .base_seq = h->seq, .base_epoch = h->seq_epoch};
    if ((rc = store_repl_meta_put(t, space, part, &m))) goto done;
    if (meta) *meta = m;
done:
    tail_free(&tail);
    return rc;
}
