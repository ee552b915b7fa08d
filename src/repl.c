/* repl: per-partition primary-backup replication as a pure state machine
 * (see repl.h for the interface and the Ready loop, docs/replication.md for
 * the protocol as the daemon glue sees it).
 *
 * Design note
 * -----------
 * The coordinator decides configurations: (epoch, replicas, states), the
 * first replica the primary. Within an epoch the primary alone creates log
 * entries: it numbers them (seq), stamps them with its epoch, stores them and
 * sends them to every other replica of the epoch in parallel (APPEND, which
 * carries the seq and epoch of the entry before the batch, like Raft's
 * AppendEntries). A replica accepts a batch only if its log holds that
 * previous entry (or it lies within its committed prefix), replaces any
 * conflicting suffix, stores the entries and ACKs the highest seq up to which
 * its log is known to equal the primary's. An entry is committed when the
 * primary and every replica that counts (IN_SYNC, or CATCHING_UP and seen
 * caught up in this epoch) hold it; the primary then applies it, answers the
 * client, and sends the commit point with the next APPEND (or a tick's empty
 * APPEND). Replicas apply up to min(commit point, verified match).
 *
 * At the start of each epoch the primary appends a NOOP stamped with the new
 * epoch: it conflicts with every entry of an older epoch beyond the primary's
 * log end, so replicas drop those (I3), and once it is committed every entry
 * before it is committed too: the primary is readable only from then on.
 *
 *   role transitions (repl_config only):
 *
 *     NONE ----config lists me first----> PRIMARY (NOOP appended, peers reset)
 *     NONE ----config lists me later----> BACKUP
 *     PRIMARY --config lists me later---> BACKUP (pending writes: EFAILOVER)
 *     any -----config omits me---------> NONE   (log kept for a return)
 *
 * Invariants (unit tests and tests/replsim check them):
 *   1. epoch only grows; a message of an older epoch is refused (answered
 *      STALE); one of a newer epoch is not acted on until repl_config.
 *   2. Log matching: two logs holding an entry with the same (seq, epoch) are
 *      equal up to it. Only the primary of an epoch creates entries of that
 *      epoch, and a replica appends only after the previous entry matched.
 *   3. commit only grows, commit <= stable on the primary (it counts its own
 *      durable log), and a committed entry is never truncated: replicas
 *      truncate only above their commit point.
 *   4. applied <= commit; the caller's store holds exactly entries <= applied;
 *      the client table reflects exactly entries <= applied.
 *   5. base <= applied: only applied entries are compacted; the primary keeps
 *      what each replica and each departed replica still needs (from its
 *      match / last ack) unless that exceeds retain_entries / retain_bytes.
 *   6. A client completion with REPL_OK is produced only in the Ready that
 *      applies the entry; a write is appended once per (client_id,
 *      client_seq): retries attach to it or are answered from the table.
 */
#include "repl.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* ---- types ---------------------------------------------------------------------- */

/* Side data of a log entry (same index as the entry). */
typedef struct slot {
    uint8_t *mem;  /* owned copy of key | value | result */
    uint64_t *ctx; /* primary: client contexts waiting for the entry */
    uint32_t nctx, capctx;
} slot;

/* Primary's view of one other replica. */
typedef struct peer {
    uint64_t id;
    uint8_t state;          /* enum repl_replica_state */
    uint64_t match;         /* highest seq known equal to my log (this epoch) */
    uint64_t next;          /* next seq to send */
    bool counts;            /* counts for commit */
    bool reported;          /* CAUGHT_UP reported in this epoch */
    bool copy;              /* needs a full copy; NEED_COPY emitted */
    uint64_t copy_floor;    /* applied seq when NEED_COPY was last emitted: the copy's
                               snapshot is at or after it, so the log after it is kept */
    bool want_probe;        /* send an empty APPEND at the next flush */
    uint64_t copy_tick;     /* tick of the last NEED_COPY */
    uint64_t sent_commit;   /* commit point last sent */
    uint64_t progress_tick; /* tick of the last send or ack progress */
    uint64_t report_tick;   /* tick of the last CAUGHT_UP */
} peer;

typedef struct departed {
    uint64_t id;
    uint64_t acked; /* last seq it acked (0: unknown) */
} departed;

/* Client table row; client_id 0 marks a free hash slot. */
typedef struct crow {
    uint64_t cid, cseq, seq;
    uint32_t rlen;
    uint8_t *result; /* owned */
} crow;

struct repl_part {
    repl_opts o;
    /* configuration */
    bool have_config;
    uint64_t epoch;       /* adopted (persisted) epoch */
    uint64_t newest_seen; /* >= epoch */
    uint64_t reported;    /* highest epoch reported with NEWER_EPOCH */
    uint32_t nrep;
    uint64_t rep[REPL_MAX_REPLICAS];
    uint8_t rst[REPL_MAX_REPLICAS];
    int role;
    /* log: entry seq s at log[off + (s - base - 1)] */
    uint64_t base, base_epoch;
    repl_entry *log;
    slot *sl;
    size_t off, n, cap;
    size_t applied_bytes; /* accounted bytes of entries base+1 .. applied */
    uint64_t stable;      /* last seq handed to storage */
    uint64_t commit, applied;
    uint64_t serve_from; /* primary: seq of the epoch-start NOOP */
    bool serving_reported;
    /* primary */
    peer peers[REPL_MAX_REPLICAS];
    uint32_t npeers;
    departed dep[REPL_MAX_DEPARTED];
    uint32_t ndep;
    /* exactly-once table (open addressing on client_id) */
    crow *ct;
    size_t ct_cap, ct_n;
    uint64_t ticks;
    /* outputs accumulated for the next Ready */
    uint64_t truncate_from;
    bool epoch_dirty;
    repl_msg *msgs;
    size_t nmsgs, capmsgs;
    repl_completion *done;
    uint8_t **done_mem; /* owned result copies (parallel to done) */
    size_t ndone, capdone;
    repl_event *ev;
    size_t nev, capev;
    /* the Ready in progress */
    bool in_ready;
    uint64_t rd_stable, rd_apply, rd_compact;
};

/* ---- small helpers --------------------------------------------------------------- */

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) abort(); /* OOM is fatal in keel */
    return p;
}

static void *xmalloc(size_t n)
{
    return xrealloc(NULL, n);
}

static size_t entry_cost(const repl_entry *e)
{
    return (size_t)e->klen + e->vlen + e->rlen + 64;
}

static uint64_t last_seq(const repl_part *p)
{
    return p->base + p->n;
}

static repl_entry *ent(const repl_part *p, uint64_t seq)
{
    assert(seq > p->base && seq <= last_seq(p));
    return &p->log[p->off + (size_t)(seq - p->base - 1)];
}

static slot *slt(const repl_part *p, uint64_t seq)
{
    assert(seq > p->base && seq <= last_seq(p));
    return &p->sl[p->off + (size_t)(seq - p->base - 1)];
}

/* Epoch of entry seq; seq must be base or in the log. */
static uint64_t epoch_at(const repl_part *p, uint64_t seq)
{
    if (seq == p->base) return p->base_epoch;
    return ent(p, seq)->epoch;
}

static bool bytes_eq(const uint8_t *a, uint32_t alen, const void *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* Checks one entry's fields (not its seq). */
static bool entry_fields_ok(const repl_entry *e, uint64_t max_epoch)
{
    if (e->seq == 0 || e->epoch == 0 || e->epoch > max_epoch) return false;
    if (e->klen > REPL_MAX_KEY || e->vlen > REPL_MAX_VALUE || e->rlen > REPL_MAX_RESULT)
        return false;
    if ((e->klen && !e->key) || (e->vlen && !e->value) || (e->rlen && !e->result)) return false;
    if ((e->client_id == 0) != (e->client_seq == 0)) return false;
    switch (e->type) {
    case REPL_E_PUT:
        return e->klen > 0;
    case REPL_E_DEL:
        return e->klen > 0 && e->vlen == 0;
    case REPL_E_NOOP:
        return e->klen == 0 && e->vlen == 0 && e->rlen == 0 && e->client_id == 0;
    default:
        return false;
    }
}

/* ---- names ----------------------------------------------------------------------- */

const char *repl_strerror(int err)
{
    switch (err) {
    case REPL_OK:
        return "ok";
    case REPL_ENOTPRIMARY:
        return "not the primary";
    case REPL_EINVAL:
        return "invalid argument";
    case REPL_ESTALE:
        return "stale epoch or client sequence";
    case REPL_EPROTO:
        return "protocol violation";
    case REPL_EDECODE:
        return "malformed message";
    case REPL_ETOOBIG:
        return "too big";
    case REPL_EBUSY:
        return "too many pending writes";
    case REPL_EFAILOVER:
        return "primary changed before the write committed";
    case REPL_ECORRUPT:
        return "inconsistent persisted state";
    default:
        return "unknown error";
    }
}

const char *repl_role_name(int role)
{
    switch (role) {
    case REPL_ROLE_NONE:
        return "none";
    case REPL_ROLE_PRIMARY:
        return "primary";
    case REPL_ROLE_BACKUP:
        return "backup";
    default:
        return "?";
    }
}

const char *repl_msg_type_name(int type)
{
    switch (type) {
    case REPL_MSG_APPEND:
        return "APPEND";
    case REPL_MSG_ACK:
        return "ACK";
    case REPL_MSG_STALE:
        return "STALE";
    default:
        return "?";
    }
}

const char *repl_event_name(int type)
{
    switch (type) {
    case REPL_EV_NEWER_EPOCH:
        return "newer_epoch";
    case REPL_EV_NEED_COPY:
        return "need_copy";
    case REPL_EV_CAUGHT_UP:
        return "caught_up";
    case REPL_EV_SERVING:
        return "serving";
    default:
        return "?";
    }
}

/* ---- wire encoding ------------------------------------------------------------------ */

static void put_entry(buf *b, const repl_entry *e)
{
    buf_putc(b, (char)e->type);
    buf_put_u64le(b, e->seq);
    buf_put_u64le(b, e->epoch);
    buf_put_u64le(b, e->client_id);
    buf_put_u64le(b, e->client_seq);
    buf_put_u32le(b, e->klen);
    if (e->klen) buf_append(b, e->key, e->klen);
    buf_put_u32le(b, e->vlen);
    if (e->vlen) buf_append(b, e->value, e->vlen);
    buf_put_u32le(b, e->rlen);
    if (e->rlen) buf_append(b, e->result, e->rlen);
}

typedef struct cur {
    const uint8_t *p;
    size_t left;
    bool bad;
} cur;

static uint8_t get8(cur *c)
{
    if (c->left < 1) {
        c->bad = true;
        return 0;
    }
    c->left--;
    return *c->p++;
}

static uint32_t get32(cur *c)
{
    if (c->left < 4) {
        c->bad = true;
        c->left = 0;
        return 0;
    }
    uint32_t v = get_u32le(c->p);
    c->p += 4;
    c->left -= 4;
    return v;
}

static uint64_t get64(cur *c)
{
    if (c->left < 8) {
        c->bad = true;
        c->left = 0;
        return 0;
    }
    uint64_t v = get_u64le(c->p);
    c->p += 8;
    c->left -= 8;
    return v;
}

static const uint8_t *getbytes(cur *c, uint32_t n, uint32_t max)
{
    if (n > max || n > c->left) {
        c->bad = true;
        c->left = 0;
        return NULL;
    }
    if (n == 0) return NULL;
    const uint8_t *r = c->p;
    c->p += n;
    c->left -= n;
    return r;
}

static void get_entry(cur *c, repl_entry *e)
{
    memset(e, 0, sizeof *e);
    e->type = get8(c);
    e->seq = get64(c);
    e->epoch = get64(c);
    e->client_id = get64(c);
    e->client_seq = get64(c);
    e->klen = get32(c);
    e->key = getbytes(c, e->klen, REPL_MAX_KEY);
    e->vlen = get32(c);
    e->value = getbytes(c, e->vlen, REPL_MAX_VALUE);
    e->rlen = get32(c);
    e->result = getbytes(c, e->rlen, REPL_MAX_RESULT);
}

#define ENTRY_MIN_BYTES (1 + 8 * 4 + 4 * 3)

void repl_msg_encode(const repl_msg *m, buf *out)
{
    buf_putc(out, REPL_WIRE_VERSION);
    buf_putc(out, (char)m->type);
    buf_putc(out, (char)(m->reject ? 1 : 0));
    buf_put_u64le(out, m->from);
    buf_put_u64le(out, m->to);
    buf_put_u32le(out, m->space);
    buf_put_u32le(out, m->part);
    buf_put_u64le(out, m->epoch);
    buf_put_u64le(out, m->seq);
    buf_put_u64le(out, m->prev_epoch);
    buf_put_u64le(out, m->commit);
    buf_put_u64le(out, m->hint);
    buf_put_u32le(out, m->n_entries);
    for (uint32_t i = 0; i < m->n_entries; i++)
        put_entry(out, &m->entries[i]);
}

int repl_msg_decode(const void *p, size_t len, repl_msg *m)
{
    memset(m, 0, sizeof *m);
    cur c = {p, len, false};
    if (!p && len) return REPL_EDECODE;
    uint8_t ver = get8(&c);
    uint8_t type = get8(&c);
    uint8_t flags = get8(&c);
    m->from = get64(&c);
    m->to = get64(&c);
    m->space = get32(&c);
    m->part = get32(&c);
    m->epoch = get64(&c);
    m->seq = get64(&c);
    m->prev_epoch = get64(&c);
    m->commit = get64(&c);
    m->hint = get64(&c);
    uint32_t n = get32(&c);
    if (c.bad || ver != REPL_WIRE_VERSION || type < 1 || type > REPL_MSG_TYPE_MAX || flags > 1)
        goto bad;
    if (m->from == 0 || m->to == 0 || m->from == m->to || m->epoch == 0) goto bad;
    m->type = type;
    m->reject = flags != 0;
    if (type != REPL_MSG_ACK && m->reject) goto bad;
    if (type != REPL_MSG_APPEND) {
        if (n || m->prev_epoch || m->commit) goto bad;
        if (type == REPL_MSG_ACK && !m->reject && m->hint) goto bad;
        if (type == REPL_MSG_STALE && (m->seq || m->hint)) goto bad;
    } else {
        if (m->hint || n > REPL_MAX_MSG_ENTRIES) goto bad;
        if ((m->seq == 0) != (m->prev_epoch == 0) || m->prev_epoch > m->epoch) goto bad;
        if (m->seq > UINT64_MAX - n) goto bad;
        if ((size_t)n > c.left / ENTRY_MIN_BYTES) goto bad; /* before allocating */
    }
    if (n) {
        repl_entry *es = xmalloc((size_t)n * sizeof *es);
        uint64_t prev_epoch = m->prev_epoch;
        for (uint32_t i = 0; i < n; i++) {
            get_entry(&c, &es[i]);
            if (c.bad || es[i].seq != m->seq + 1 + i || !entry_fields_ok(&es[i], m->epoch) ||
                es[i].epoch < prev_epoch) {
                free(es);
                goto bad;
            }
            prev_epoch = es[i].epoch;
        }
        m->entries = es;
        m->n_entries = n;
    }
    if (c.left) {
        repl_msg_free(m);
        goto bad;
    }
    return REPL_OK;
bad:
    memset(m, 0, sizeof *m);
    return REPL_EDECODE;
}

void repl_msg_free(repl_msg *m)
{
    free((void *)m->entries);
    m->entries = NULL;
    m->n_entries = 0;
}

void repl_entry_encode(const repl_entry *e, buf *out)
{
    buf_putc(out, REPL_WIRE_VERSION);
    put_entry(out, e);
}

int repl_entry_decode(const void *p, size_t len, repl_entry *e)
{
    cur c = {p, len, false};
    if (!p && len) return REPL_EDECODE;
    uint8_t ver = get8(&c);
    get_entry(&c, e);
    if (c.bad || c.left || ver != REPL_WIRE_VERSION || !entry_fields_ok(e, UINT64_MAX)) {
        memset(e, 0, sizeof *e);
        return REPL_EDECODE;
    }
    return REPL_OK;
}

/* ---- client table ---------------------------------------------------------------------- */

static size_t ct_slot(uint64_t cid, size_t cap)
{
    uint64_t h = cid * 0x9e3779b97f4a7c15ull;
    return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

static crow *ct_find(const repl_part *p, uint64_t cid)
{
    if (!p->ct_cap) return NULL;
    for (size_t i = ct_slot(cid, p->ct_cap);; i = (i + 1) & (p->ct_cap - 1)) {
        if (p->ct[i].cid == cid) return &p->ct[i];
        if (p->ct[i].cid == 0) return NULL;
    }
}

static void ct_put(repl_part *p, uint64_t cid, uint64_t cseq, uint64_t seq, const uint8_t *res,
                   uint32_t rlen);

static void ct_grow(repl_part *p)
{
    crow *old = p->ct;
    size_t oldcap = p->ct_cap;
    p->ct_cap = oldcap ? oldcap * 2 : 64;
    p->ct = xmalloc(p->ct_cap * sizeof *p->ct);
    memset(p->ct, 0, p->ct_cap * sizeof *p->ct);
    p->ct_n = 0;
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].cid) continue;
        size_t j = ct_slot(old[i].cid, p->ct_cap);
        while (p->ct[j].cid)
            j = (j + 1) & (p->ct_cap - 1);
        p->ct[j] = old[i];
        p->ct_n++;
    }
    free(old);
}

static void ct_put(repl_part *p, uint64_t cid, uint64_t cseq, uint64_t seq, const uint8_t *res,
                   uint32_t rlen)
{
    assert(cid);
    if ((p->ct_n + 1) * 10 > p->ct_cap * 7) ct_grow(p);
    size_t i = ct_slot(cid, p->ct_cap);
    while (p->ct[i].cid && p->ct[i].cid != cid)
        i = (i + 1) & (p->ct_cap - 1);
    crow *r = &p->ct[i];
    if (!r->cid) p->ct_n++;
    free(r->result);
    r->cid = cid;
    r->cseq = cseq;
    r->seq = seq;
    r->rlen = rlen;
    r->result = NULL;
    if (rlen) {
        r->result = xmalloc(rlen);
        memcpy(r->result, res, rlen);
    }
}

static void ct_clear(repl_part *p)
{
    for (size_t i = 0; i < p->ct_cap; i++)
        free(p->ct[i].result);
    free(p->ct);
    p->ct = NULL;
    p->ct_cap = p->ct_n = 0;
}

static bool clients_ok(const repl_client *cl, size_t n, uint64_t max_seq)
{
    if (n && !cl) return false;
    for (size_t i = 0; i < n; i++) {
        if (!cl[i].client_id || !cl[i].client_seq || cl[i].seq == 0 || cl[i].seq > max_seq)
            return false;
        if (cl[i].rlen > REPL_MAX_RESULT || (cl[i].rlen && !cl[i].result)) return false;
        for (size_t j = 0; j < i; j++)
            if (cl[j].client_id == cl[i].client_id) return false;
    }
    return true;
}

/* ---- output queues ------------------------------------------------------------------------ */

static repl_msg *push_msg(repl_part *p, int type, uint64_t to)
{
    if (p->nmsgs == p->capmsgs) {
        p->capmsgs = p->capmsgs ? p->capmsgs * 2 : 16;
        p->msgs = xrealloc(p->msgs, p->capmsgs * sizeof *p->msgs);
    }
    repl_msg *m = &p->msgs[p->nmsgs++];
    memset(m, 0, sizeof *m);
    m->type = (uint8_t)type;
    m->from = p->o.self;
    m->to = to;
    m->space = p->o.space;
    m->part = p->o.part;
    m->epoch = p->epoch;
    return m;
}

/* Queues a completion; own_result: copy the result bytes. */
static void push_done(repl_part *p, uint64_t ctx, int status, uint64_t seq, const uint8_t *res,
                      uint32_t rlen, bool own_result)
{
    if (p->ndone == p->capdone) {
        p->capdone = p->capdone ? p->capdone * 2 : 16;
        p->done = xrealloc(p->done, p->capdone * sizeof *p->done);
        p->done_mem = xrealloc(p->done_mem, p->capdone * sizeof *p->done_mem);
    }
    uint8_t *mem = NULL;
    if (own_result && rlen) {
        mem = xmalloc(rlen);
        memcpy(mem, res, rlen);
        res = mem;
    }
    if (status != REPL_OK) {
        res = NULL;
        rlen = 0;
        seq = 0;
    }
    p->done[p->ndone] = (repl_completion){ctx, status, seq, rlen ? res : NULL, rlen};
    p->done_mem[p->ndone] = mem;
    p->ndone++;
}

static void push_event(repl_part *p, int type, uint64_t peer_id, uint64_t epoch, uint64_t seq)
{
    if (p->nev == p->capev) {
        p->capev = p->capev ? p->capev * 2 : 8;
        p->ev = xrealloc(p->ev, p->capev * sizeof *p->ev);
    }
    p->ev[p->nev++] = (repl_event){type, peer_id, epoch, seq};
}

/* ---- the log ---------------------------------------------------------------------------- */

static void log_reserve(repl_part *p)
{
    if (p->off + p->n < p->cap) return;
    if (p->off && p->off >= p->cap / 2) {
        memmove(p->log, p->log + p->off, p->n * sizeof *p->log);
        memmove(p->sl, p->sl + p->off, p->n * sizeof *p->sl);
        p->off = 0;
        return;
    }
    p->cap = p->cap ? p->cap * 2 : 64;
    p->log = xrealloc(p->log, p->cap * sizeof *p->log);
    p->sl = xrealloc(p->sl, p->cap * sizeof *p->sl);
}

/* Appends a copy of e (its seq must be last + 1). */
static void log_append(repl_part *p, const repl_entry *e)
{
    assert(e->seq == last_seq(p) + 1);
    log_reserve(p);
    size_t i = p->off + p->n;
    size_t total = (size_t)e->klen + e->vlen + e->rlen;
    uint8_t *mem = total ? xmalloc(total) : NULL;
    repl_entry *d = &p->log[i];
    *d = *e;
    uint8_t *w = mem;
    d->key = d->value = d->result = NULL;
    if (e->klen) {
        memcpy(w, e->key, e->klen);
        d->key = w;
        w += e->klen;
    }
    if (e->vlen) {
        memcpy(w, e->value, e->vlen);
        d->value = w;
        w += e->vlen;
    }
    if (e->rlen) {
        memcpy(w, e->result, e->rlen);
        d->result = w;
    }
    p->sl[i] = (slot){mem, NULL, 0, 0};
    p->n++;
}

static void slot_free(slot *s)
{
    free(s->mem);
    free(s->ctx);
    memset(s, 0, sizeof *s);
}

/* Drops entries >= seq (all above the commit point). */
static void log_truncate(repl_part *p, uint64_t seq)
{
    assert(seq > p->commit && seq > p->base);
    while (last_seq(p) >= seq) {
        slot *s = slt(p, last_seq(p));
        assert(s->nctx == 0);
        slot_free(s);
        p->n--;
    }
    if (seq <= p->stable) {
        p->stable = seq - 1;
        if (!p->truncate_from || seq < p->truncate_from) p->truncate_from = seq;
    }
}

/* Drops entries <= seq from memory (all applied). */
static void log_compact(repl_part *p, uint64_t seq)
{
    assert(seq <= p->applied);
    while (p->base < seq) {
        uint64_t s = p->base + 1;
        repl_entry *e = ent(p, s);
        p->applied_bytes -= entry_cost(e);
        p->base_epoch = e->epoch;
        slot_free(slt(p, s));
        p->base = s;
        p->off++;
        p->n--;
    }
    if (p->n == 0) p->off = 0;
}

static void attach_ctx(slot *s, uint64_t ctx)
{
    if (s->nctx == s->capctx) {
        s->capctx = s->capctx ? s->capctx * 2 : 2;
        s->ctx = xrealloc(s->ctx, s->capctx * sizeof *s->ctx);
    }
    s->ctx[s->nctx++] = ctx;
}

/* Fails every client waiting on an uncommitted entry (committed ones are
 * still answered when applied). */
static void fail_pending(repl_part *p)
{
    for (uint64_t s = p->commit + 1; s <= last_seq(p); s++) {
        slot *sl = slt(p, s);
        for (uint32_t i = 0; i < sl->nctx; i++)
            push_done(p, sl->ctx[i], REPL_EFAILOVER, 0, NULL, 0, false);
        free(sl->ctx);
        sl->ctx = NULL;
        sl->nctx = sl->capctx = 0;
    }
}

/* ---- creation ------------------------------------------------------------------------------ */

void repl_opts_init(repl_opts *o, uint64_t self, uint32_t space, uint32_t part)
{
    memset(o, 0, sizeof *o);
    o->self = self;
    o->space = space;
    o->part = part;
    o->max_msg_entries = 64;
    o->max_msg_bytes = 1u << 20;
    o->max_inflight = 1024;
    o->max_pending = 4096;
    o->retain_entries = 100000;
    o->retain_bytes = 64u << 20;
    o->resend_ticks = 2;
    o->copy_retry_ticks = 50;
    o->report_retry_ticks = 20;
}

int repl_set_retention(repl_part *p, uint64_t retain_entries)
{
    if (!retain_entries) return REPL_EINVAL;
    p->o.retain_entries = retain_entries;
    return REPL_OK;
}

int repl_new(const repl_opts *o, const repl_persisted *st, repl_part **out)
{
    *out = NULL;
    if (!o || !o->self || o->max_msg_entries < 1 || o->max_msg_entries > REPL_MAX_MSG_ENTRIES ||
        o->max_msg_bytes < 1 || o->max_inflight < 1 || o->max_pending < 1 || o->resend_ticks < 1 ||
        o->copy_retry_ticks < 1 || o->report_retry_ticks < 1)
        return REPL_EINVAL;
    repl_persisted empty = {0};
    if (!st) st = &empty;
    /* validate everything before building */
    if (st->applied < st->base_seq || st->applied > st->base_seq + st->n_entries)
        return REPL_ECORRUPT;
    if ((st->base_seq == 0) != (st->base_epoch == 0)) return REPL_ECORRUPT;
    if (st->n_entries && !st->entries) return REPL_ECORRUPT;
    uint64_t pe = 0; /* a full copy may leave base_epoch above the adopted epoch */
    for (size_t i = 0; i < st->n_entries; i++) {
        const repl_entry *e = &st->entries[i];
        if (e->seq != st->base_seq + 1 + i || !entry_fields_ok(e, st->epoch) || e->epoch < pe ||
            e->epoch < st->base_epoch)
            return REPL_ECORRUPT;
        pe = e->epoch;
    }
    if (!clients_ok(st->clients, st->n_clients, st->applied)) return REPL_ECORRUPT;

    repl_part *p = xmalloc(sizeof *p);
    memset(p, 0, sizeof *p);
    p->o = *o;
    p->epoch = p->newest_seen = st->epoch;
    p->base = st->base_seq;
    p->base_epoch = st->base_epoch;
    for (size_t i = 0; i < st->n_entries; i++) {
        log_append(p, &st->entries[i]);
        if (st->entries[i].seq <= st->applied) p->applied_bytes += entry_cost(&st->entries[i]);
    }
    p->stable = last_seq(p);
    p->commit = p->applied = st->applied;
    for (size_t i = 0; i < st->n_clients; i++)
        ct_put(p, st->clients[i].client_id, st->clients[i].client_seq, st->clients[i].seq,
               st->clients[i].result, st->clients[i].rlen);
    *out = p;
    return REPL_OK;
}

static void clear_outputs(repl_part *p)
{
    for (size_t i = 0; i < p->ndone; i++)
        free(p->done_mem[i]);
    p->ndone = 0;
    p->nmsgs = 0;
    p->nev = 0;
}

void repl_free(repl_part *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++)
        slot_free(&p->sl[p->off + i]);
    free(p->log);
    free(p->sl);
    ct_clear(p);
    clear_outputs(p);
    free(p->msgs);
    free(p->done);
    free(p->done_mem);
    free(p->ev);
    free(p);
}

/* ---- configuration --------------------------------------------------------------------------- */

/* A message showed epoch `epoch` (>= mine, or any while I have no config):
 * report each new highest epoch once so the caller fetches the map. */
static void note_epoch(repl_part *p, uint64_t epoch)
{
    if (epoch > p->newest_seen) p->newest_seen = epoch;
    if (p->newest_seen > p->reported && (p->newest_seen > p->epoch || !p->have_config)) {
        p->reported = p->newest_seen;
        push_event(p, REPL_EV_NEWER_EPOCH, 0, p->newest_seen, 0);
    }
}

static peer *find_peer(repl_part *p, uint64_t id)
{
    for (uint32_t i = 0; i < p->npeers; i++)
        if (p->peers[i].id == id) return &p->peers[i];
    return NULL;
}

static void departed_add(repl_part *p, uint64_t id, uint64_t acked)
{
    for (uint32_t i = 0; i < p->ndep; i++)
        if (p->dep[i].id == id) {
            if (acked > p->dep[i].acked) p->dep[i].acked = acked;
            return;
        }
    if (p->ndep == REPL_MAX_DEPARTED) { /* forget the oldest */
        memmove(p->dep, p->dep + 1, (REPL_MAX_DEPARTED - 1) * sizeof *p->dep);
        p->ndep--;
    }
    p->dep[p->ndep++] = (departed){id, acked};
}

static bool departed_take(repl_part *p, uint64_t id, uint64_t *acked)
{
    for (uint32_t i = 0; i < p->ndep; i++)
        if (p->dep[i].id == id) {
            *acked = p->dep[i].acked;
            p->dep[i] = p->dep[--p->ndep];
            return true;
        }
    return false;
}

static bool in_list(const uint64_t *ids, uint32_t n, uint64_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

int repl_config(repl_part *p, uint64_t epoch, const uint64_t *replicas, const uint8_t *states,
                uint32_t n)
{
    assert(!p->in_ready);
    if (epoch == 0 || n == 0 || n > REPL_MAX_REPLICAS || !replicas || !states) return REPL_EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        if (!replicas[i] || (states[i] != REPL_IN_SYNC && states[i] != REPL_CATCHING_UP))
            return REPL_EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (replicas[j] == replicas[i]) return REPL_EINVAL;
    }
    if (states[0] != REPL_IN_SYNC) return REPL_EINVAL;
    if (epoch < p->epoch) return REPL_ESTALE;
    if (p->have_config && epoch == p->epoch) {
        if (n != p->nrep || memcmp(replicas, p->rep, n * sizeof *replicas) ||
            memcmp(states, p->rst, n))
            return REPL_EINVAL;
        return REPL_OK;
    }
    /* adopt */
    bool restart = !p->have_config && epoch == p->epoch; /* same epoch after a restart */
    bool was_primary = p->have_config && p->role == REPL_ROLE_PRIMARY;
    bool consecutive = was_primary && epoch == p->epoch + 1;
    uint64_t old_rep[REPL_MAX_REPLICAS];
    uint32_t old_n = p->have_config ? p->nrep : 0;
    memcpy(old_rep, p->rep, sizeof old_rep);
    peer old_peers[REPL_MAX_REPLICAS];
    uint32_t old_np = p->npeers;
    memcpy(old_peers, p->peers, sizeof old_peers);

    int role = REPL_ROLE_NONE;
    if (replicas[0] == p->o.self)
        role = REPL_ROLE_PRIMARY;
    else if (in_list(replicas, n, p->o.self))
        role = REPL_ROLE_BACKUP;

    if (was_primary && role != REPL_ROLE_PRIMARY) fail_pending(p);
    p->have_config = true;
    if (epoch != p->epoch) p->epoch_dirty = true;
    p->epoch = epoch;
    if (p->newest_seen < epoch) p->newest_seen = epoch;
    if (p->reported < epoch) p->reported = epoch;
    p->nrep = n;
    memset(p->rep, 0, sizeof p->rep);
    memcpy(p->rep, replicas, n * sizeof *replicas);
    memset(p->rst, 0, sizeof p->rst);
    memcpy(p->rst, states, n);
    p->role = role;
    p->npeers = 0;

    if (role != REPL_ROLE_PRIMARY) {
        p->ndep = 0;
        p->serve_from = 0;
        p->serving_reported = false;
        return REPL_OK;
    }
    /* primary: departed replicas keep a claim on the log tail */
    if (was_primary) {
        for (uint32_t i = 0; i < old_np; i++)
            if (!in_list(replicas, n, old_peers[i].id))
                departed_add(p, old_peers[i].id, consecutive ? old_peers[i].match : 0);
    } else {
        p->ndep = 0;
        for (uint32_t i = 0; i < old_n; i++)
            if (old_rep[i] != p->o.self && !in_list(replicas, n, old_rep[i]))
                departed_add(p, old_rep[i], 0);
    }
    uint64_t start = last_seq(p) + 1; /* seq of the NOOP (restart: the next write) */
    if (!restart) {
        repl_entry noop = {.seq = start, .epoch = epoch, .type = REPL_E_NOOP};
        log_append(p, &noop);
        p->serve_from = start;
    } else {
        p->serve_from = last_seq(p);
    }
    p->serving_reported = false;
    for (uint32_t i = 1; i < n; i++) {
        peer *pr = &p->peers[p->npeers++];
        memset(pr, 0, sizeof *pr);
        pr->id = replicas[i];
        pr->state = states[i];
        pr->next = start;
        /* After a restart within the same epoch I no longer know which
         * CATCHING_UP replicas I reported caught up (the coordinator may
         * flip them on that report): all of them count. */
        pr->counts = states[i] == REPL_IN_SYNC || restart;
        pr->progress_tick = p->ticks;
        uint64_t acked;
        if (departed_take(p, pr->id, &acked) && acked && acked + 1 < pr->next) pr->next = acked + 1;
        if (consecutive) {
            for (uint32_t k = 0; k < old_np; k++) {
                if (old_peers[k].id != pr->id) continue;
                pr->match = old_peers[k].match;
                pr->next = old_peers[k].next < start ? old_peers[k].next : start;
                if (pr->next <= pr->match) pr->next = pr->match + 1;
                pr->copy = old_peers[k].copy;
                pr->copy_tick = old_peers[k].copy_tick;
                pr->copy_floor = old_peers[k].copy_floor;
                if (old_peers[k].counts) pr->counts = true;
                /* a report belongs to its epoch: the coordinator flips at most
                 * one replica per epoch (each flip bumps the epoch and makes
                 * the other reports stale), so one still CATCHING_UP must be
                 * reported again in the new epoch */
                pr->reported = old_peers[k].reported && pr->state != REPL_CATCHING_UP;
            }
        }
        if (pr->next == 0) pr->next = 1;
    }
    return REPL_OK;
}

/* ---- the primary: commit ------------------------------------------------------------------------
 */

static void maybe_commit(repl_part *p)
{
    if (p->role != REPL_ROLE_PRIMARY) return;
    uint64_t c = p->stable;
    if (!p->o.unsafe_commit_primary_only)
        for (uint32_t i = 0; i < p->npeers; i++)
            if (p->peers[i].counts && p->peers[i].match < c) c = p->peers[i].match;
    if (c > p->commit) p->commit = c;
}

/* ---- client writes
 * --------------------------------------------------------------------------------- */

/* Latest not yet applied entry of client cid, or 0. */
static uint64_t pending_of_client(const repl_part *p, uint64_t cid)
{
    for (uint64_t s = last_seq(p); s > p->applied && s > p->base; s--)
        if (ent(p, s)->client_id == cid) return s;
    return 0;
}

int repl_client_check(const repl_part *p, uint64_t client_id, uint64_t client_seq, uint64_t *seq,
                      const uint8_t **result, uint32_t *rlen)
{
    if (seq) *seq = 0;
    if (result) *result = NULL;
    if (rlen) *rlen = 0;
    if (client_id == 0) return REPL_DUP_NONE;
    uint64_t s = pending_of_client(p, client_id);
    if (s) {
        const repl_entry *e = ent(p, s);
        if (client_seq == e->client_seq) {
            if (seq) *seq = s;
            return REPL_DUP_PENDING;
        }
        if (client_seq < e->client_seq) return REPL_ESTALE;
        return REPL_DUP_NONE;
    }
    const crow *r = ct_find(p, client_id);
    if (!r || client_seq > r->cseq) return REPL_DUP_NONE;
    if (client_seq < r->cseq) return REPL_ESTALE;
    if (seq) *seq = r->seq;
    if (result) *result = r->result;
    if (rlen) *rlen = r->rlen;
    return REPL_DUP_DONE;
}

const repl_entry *repl_pending_get(const repl_part *p, const void *key, size_t klen)
{
    for (uint64_t s = last_seq(p); s > p->applied && s > p->base; s--) {
        const repl_entry *e = ent(p, s);
        if (e->type != REPL_E_NOOP && bytes_eq(e->key, e->klen, key, klen)) return e;
    }
    return NULL;
}

static bool superseded(const repl_part *p)
{
    return p->newest_seen > p->epoch;
}

int repl_write(repl_part *p, int type, const void *key, size_t klen, const void *value, size_t vlen,
               uint64_t client_id, uint64_t client_seq, const void *result, size_t rlen,
               uint64_t ctx, uint64_t *seq)
{
    assert(!p->in_ready);
    if (seq) *seq = 0;
    if (!p->have_config || p->role != REPL_ROLE_PRIMARY || superseded(p)) return REPL_ENOTPRIMARY;
    if (type != REPL_E_PUT && type != REPL_E_DEL) return REPL_EINVAL;
    if (klen == 0 || !key || (vlen && !value) || (rlen && !result)) return REPL_EINVAL;
    if (type == REPL_E_DEL && vlen) return REPL_EINVAL;
    if ((client_id == 0) != (client_seq == 0)) return REPL_EINVAL;
    if (klen > REPL_MAX_KEY || vlen > REPL_MAX_VALUE || rlen > REPL_MAX_RESULT) return REPL_ETOOBIG;

    uint64_t dseq;
    const uint8_t *dres;
    uint32_t drlen;
    int dup = repl_client_check(p, client_id, client_seq, &dseq, &dres, &drlen);
    if (dup < 0) return dup;
    if (dup == REPL_DUP_DONE) {
        push_done(p, ctx, REPL_OK, dseq, dres, drlen, true);
        if (seq) *seq = dseq;
        return REPL_OK;
    }
    if (dup == REPL_DUP_PENDING) {
        attach_ctx(slt(p, dseq), ctx);
        if (seq) *seq = dseq;
        return REPL_OK;
    }
    if (last_seq(p) - p->commit >= p->o.max_pending) return REPL_EBUSY;
    repl_entry e = {.seq = last_seq(p) + 1,
                    .epoch = p->epoch,
                    .type = (uint8_t)type,
                    .client_id = client_id,
                    .client_seq = client_seq,
                    .klen = (uint32_t)klen,
                    .vlen = (uint32_t)vlen,
                    .rlen = (uint32_t)rlen,
                    .key = key,
                    .value = vlen ? value : NULL,
                    .result = rlen ? result : NULL};
    log_append(p, &e);
    attach_ctx(slt(p, e.seq), ctx);
    if (seq) *seq = e.seq;
    return REPL_OK;
}

/* ---- messages
 * ------------------------------------------------------------------------------------- */

static void send_ack(repl_part *p, uint64_t to, bool reject, uint64_t seq, uint64_t hint)
{
    repl_msg *a = push_msg(p, REPL_MSG_ACK, to);
    a->reject = reject;
    a->seq = seq;
    a->hint = reject ? hint : 0;
}

static int recv_append(repl_part *p, const repl_msg *m)
{
    if (p->role != REPL_ROLE_BACKUP || m->from != p->rep[0]) return REPL_EPROTO;
    /* validate entries before changing anything */
    if (m->n_entries && !m->entries) return REPL_EPROTO;
    if ((m->seq == 0) != (m->prev_epoch == 0) || m->prev_epoch > m->epoch) return REPL_EPROTO;
    uint64_t pe = m->prev_epoch;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const repl_entry *e = &m->entries[i];
        if (e->seq != m->seq + 1 + i || !entry_fields_ok(e, m->epoch) || e->epoch < pe)
            return REPL_EPROTO;
        pe = e->epoch;
    }
    uint64_t prev = m->seq;
    uint64_t last = last_seq(p);
    if (prev > last) {
        send_ack(p, m->from, true, prev, last);
        return REPL_OK;
    }
    if (prev > p->commit && epoch_at(p, prev) != m->prev_epoch) {
        send_ack(p, m->from, true, prev, p->commit);
        return REPL_OK;
    }
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const repl_entry *e = &m->entries[i];
        if (e->seq <= p->commit || e->seq <= p->base) continue; /* committed entries match */
        if (e->seq <= last_seq(p)) {
            if (ent(p, e->seq)->epoch == e->epoch) continue;
            log_truncate(p, e->seq);
        }
        log_append(p, e);
    }
    uint64_t verified = prev + m->n_entries;
    if (verified < p->commit) verified = p->commit;
    last = last_seq(p);
    if (last > verified && ent(p, last)->epoch == p->epoch)
        verified = last; /* all from this primary */
    uint64_t c = m->commit < verified ? m->commit : verified;
    if (c > p->commit) p->commit = c;
    send_ack(p, m->from, false, verified, 0);
    return REPL_OK;
}

static int recv_ack(repl_part *p, const repl_msg *m)
{
    if (p->role != REPL_ROLE_PRIMARY) return REPL_EPROTO;
    peer *pr = find_peer(p, m->from);
    if (!pr) return REPL_EPROTO;
    if (m->seq > last_seq(p)) return REPL_EPROTO; /* claims entries I never made */
    if (m->reject) {
        if (m->hint > last_seq(p)) return REPL_EPROTO;
        uint64_t nx = m->hint + 1;
        if (nx < pr->next) pr->next = nx;
        if (pr->next <= pr->match) pr->next = pr->match + 1;
        if (pr->copy) pr->want_probe = false;
        return REPL_OK;
    }
    if (m->seq > pr->match) {
        pr->match = m->seq;
        pr->progress_tick = p->ticks;
    }
    if (pr->next <= pr->match) pr->next = pr->match + 1;
    if (pr->copy && pr->match >= p->base) pr->copy = false;
    if (pr->state == REPL_CATCHING_UP && !pr->reported && pr->match >= p->commit &&
        pr->match >= p->serve_from) {
        pr->counts = true;
        pr->reported = true;
        pr->report_tick = p->ticks;
        push_event(p, REPL_EV_CAUGHT_UP, pr->id, p->epoch, pr->match);
    }
    maybe_commit(p);
    return REPL_OK;
}

int repl_recv(repl_part *p, const repl_msg *m)
{
    assert(!p->in_ready);
    if (m->to != p->o.self || m->space != p->o.space || m->part != p->o.part || m->from == 0 ||
        m->from == m->to || m->epoch == 0 || m->type < 1 || m->type > REPL_MSG_TYPE_MAX)
        return REPL_EINVAL;
    if (m->type == REPL_MSG_STALE) {
        if (m->epoch > p->epoch || (!p->have_config && m->epoch == p->epoch))
            note_epoch(p, m->epoch);
        return REPL_OK;
    }
    if (m->epoch < p->epoch) {
        push_msg(p, REPL_MSG_STALE, m->from);
        return REPL_ESTALE;
    }
    if (!p->have_config || m->epoch > p->epoch) {
        note_epoch(p, m->epoch);
        return REPL_OK;
    }
    if (m->type == REPL_MSG_APPEND) return recv_append(p, m);
    return recv_ack(p, m);
}

/* ---- the primary: sending
 * --------------------------------------------------------------------------- */

static void send_append(repl_part *p, peer *pr, uint64_t prev, uint32_t n)
{
    repl_msg *m = push_msg(p, REPL_MSG_APPEND, pr->id);
    m->seq = prev;
    m->prev_epoch = epoch_at(p, prev);
    m->commit = p->commit;
    m->n_entries = n;
    m->entries = NULL; /* filled in repl_ready_get, once the log is final */
    pr->sent_commit = p->commit;
}

static bool flush_peer(repl_part *p, peer *pr, bool dry)
{
    uint64_t last = last_seq(p);
    if (pr->copy) {
        if (pr->want_probe) {
            if (dry) return true;
            send_append(p, pr, p->base, 0); /* answered once the copy is installed */
            pr->want_probe = false;
        }
        if (p->ticks - pr->copy_tick >= p->o.copy_retry_ticks) {
            if (dry) return true;
            pr->copy_tick = p->ticks;
            pr->copy_floor = p->applied;
            push_event(p, REPL_EV_NEED_COPY, pr->id, p->epoch, p->base);
        }
        return false;
    }
    if (pr->next - 1 < p->base) {
        if (dry) return true;
        pr->copy = true;
        pr->copy_tick = p->ticks;
        pr->copy_floor = p->applied;
        push_event(p, REPL_EV_NEED_COPY, pr->id, p->epoch, p->base);
        return false;
    }
    bool any = false;
    while (pr->next <= last && pr->next - 1 - pr->match < p->o.max_inflight) {
        if (dry) return true;
        uint32_t n = 0;
        size_t bytes = 0;
        while (pr->next + n <= last && n < p->o.max_msg_entries) {
            size_t c = entry_cost(ent(p, pr->next + n));
            if (n && bytes + c > p->o.max_msg_bytes) break;
            bytes += c;
            n++;
        }
        send_append(p, pr, pr->next - 1, n);
        pr->next += n;
        pr->want_probe = false;
        any = true;
    }
    if (pr->want_probe) {
        if (dry) return true;
        uint64_t prev = pr->match > p->base ? pr->match : p->base;
        send_append(p, pr, prev, 0);
        pr->want_probe = false;
        any = true;
    }
    return any;
}

/* Builds the APPENDs due; dry: only say whether any would be built. */
static bool flush(repl_part *p, bool dry)
{
    if (p->role != REPL_ROLE_PRIMARY || superseded(p)) return false;
    bool any = false;
    for (uint32_t i = 0; i < p->npeers; i++) {
        if (flush_peer(p, &p->peers[i], dry)) {
            if (dry) return true;
            any = true;
        }
    }
    return any;
}

void repl_tick(repl_part *p)
{
    assert(!p->in_ready);
    p->ticks++;
    if (p->role != REPL_ROLE_PRIMARY || superseded(p)) return;
    for (uint32_t i = 0; i < p->npeers; i++) {
        peer *pr = &p->peers[i];
        /* a CAUGHT_UP the configuration has not acted on is repeated: the
         * report may have been lost with a coordinator leader (chaos seed
         * 18), and without it the partition stays degraded for the epoch */
        if (pr->state == REPL_CATCHING_UP && pr->reported && !pr->copy &&
            pr->match >= p->commit && pr->match >= p->serve_from &&
            p->ticks - pr->report_tick >= p->o.report_retry_ticks) {
            pr->report_tick = p->ticks;
            push_event(p, REPL_EV_CAUGHT_UP, pr->id, p->epoch, pr->match);
        }
        if (pr->copy) {
            if (p->ticks - pr->progress_tick >= p->o.resend_ticks) {
                pr->want_probe = true;
                pr->progress_tick = p->ticks;
            }
            continue;
        }
        bool behind = pr->match < last_seq(p) || pr->sent_commit < p->commit;
        if (behind && p->ticks - pr->progress_tick >= p->o.resend_ticks) {
            /* no progress: resend everything unacknowledged (and the commit point) */
            pr->next = pr->match + 1;
            pr->want_probe = true;
            pr->progress_tick = p->ticks;
        } else if (pr->sent_commit < p->commit) {
            pr->want_probe = true;
        }
    }
}

/* ---- snapshot install
 * ---------------------------------------------------------------------------------- */

int repl_install_snapshot(repl_part *p, uint64_t seq, uint64_t seq_epoch,
                          const repl_client *clients, size_t n_clients, bool *keep_log)
{
    assert(!p->in_ready);
    if (keep_log) *keep_log = false;
    if (seq == 0 || seq_epoch == 0 || seq <= p->applied || p->role == REPL_ROLE_PRIMARY ||
        !keep_log)
        return REPL_EINVAL;
    if (!clients_ok(clients, n_clients, seq)) return REPL_EINVAL;
    if (seq <= last_seq(p) && ent(p, seq)->epoch == seq_epoch) {
        /* my log equals the snapshot's history through seq (log matching):
         * keep what follows, which I may already have acknowledged */
        if (p->stable < seq) p->stable = seq;
        /* the caller deletes stored entries <= seq; a pending truncation of
         * stale stored entries still applies above it */
        if (p->truncate_from && p->truncate_from <= seq) p->truncate_from = seq + 1;
        for (uint64_t s = p->applied + 1; s <= seq; s++)
            p->applied_bytes += entry_cost(ent(p, s));
        p->applied = seq;
        if (p->commit < seq) p->commit = seq;
        log_compact(p, seq);
        *keep_log = true;
    } else {
        /* nothing after seq can be trusted: everything above my commit point
         * is uncommitted, and seq > my commit point here */
        for (size_t i = 0; i < p->n; i++)
            slot_free(&p->sl[p->off + i]);
        p->off = p->n = 0;
        p->base = seq;
        p->base_epoch = seq_epoch;
        p->stable = p->commit = p->applied = seq;
        p->applied_bytes = 0;
        p->truncate_from = 0;
    }
    ct_clear(p);
    for (size_t i = 0; i < n_clients; i++)
        ct_put(p, clients[i].client_id, clients[i].client_seq, clients[i].seq, clients[i].result,
               clients[i].rlen);
    if (p->have_config && p->role == REPL_ROLE_BACKUP && !superseded(p))
        send_ack(p, p->rep[0], false, seq, 0);
    return REPL_OK;
}

/* ---- compaction
 * ------------------------------------------------------------------------------------------ */

/* The seq up to which applied entries may be dropped now (0: not now). */
static uint64_t trim_target(const repl_part *p)
{
    if (p->applied <= p->base) return 0;
    uint64_t t = 0;
    if (p->role == REPL_ROLE_PRIMARY) {
        t = p->applied;
        for (uint32_t i = 0; i < p->npeers; i++)
            if (!p->peers[i].copy && p->peers[i].match < t) t = p->peers[i].match;
            /* a replica being copied needs the log after its snapshot, which
             * is taken at or after copy_floor (within the caps below) */
            else if (p->peers[i].copy && p->peers[i].copy_floor < t)
                t = p->peers[i].copy_floor;
        for (uint32_t i = 0; i < p->ndep; i++)
            if (p->dep[i].acked < t) t = p->dep[i].acked;
    }
    if (p->applied > p->o.retain_entries && t < p->applied - p->o.retain_entries)
        t = p->applied - p->o.retain_entries;
    bool over_bytes = p->applied_bytes > p->o.retain_bytes;
    if (over_bytes) {
        size_t bytes = p->applied_bytes;
        uint64_t s = p->base;
        while (s < p->applied && bytes > p->o.retain_bytes) {
            s++;
            bytes -= entry_cost(ent(p, s));
        }
        if (s > t) t = s;
    }
    if (t <= p->base) return 0;
    if (over_bytes) return t;
    /* compact in chunks, not one storage delete per write */
    uint64_t chunk = p->o.retain_entries / 4;
    if (chunk < 1) chunk = 1;
    if (chunk > 1024) chunk = 1024;
    return t - p->base >= chunk ? t : 0;
}

/* ---- Ready
 * ----------------------------------------------------------------------------------------------------
 */

static bool serving_due(const repl_part *p, uint64_t applied_after)
{
    return p->role == REPL_ROLE_PRIMARY && !p->serving_reported && !superseded(p) &&
           applied_after >= p->serve_from;
}

bool repl_has_ready(const repl_part *p)
{
    if (p->in_ready) return false;
    if (p->truncate_from || p->stable < last_seq(p) || p->epoch_dirty || p->applied < p->commit)
        return true;
    if (p->nmsgs || p->ndone || p->nev) return true;
    if (serving_due(p, p->applied)) return true;
    if (trim_target(p)) return true;
    return flush((repl_part *)p, true);
}

void repl_ready_get(repl_part *p, repl_ready *rd)
{
    assert(!p->in_ready);
    memset(rd, 0, sizeof *rd);
    flush(p, false);
    uint64_t last = last_seq(p);
    rd->truncate_from = p->truncate_from;
    if (p->stable < last) {
        rd->entries = ent(p, p->stable + 1);
        rd->n_entries = (size_t)(last - p->stable);
    }
    p->rd_stable = last;
    rd->epoch_changed = p->epoch_dirty;
    rd->epoch = p->epoch;
    p->rd_compact = trim_target(p);
    if (p->rd_compact) {
        rd->compact_to = p->rd_compact;
        rd->compact_epoch = epoch_at(p, p->rd_compact);
    }
    p->rd_apply = p->applied;
    if (p->commit > p->applied) {
        rd->apply = ent(p, p->applied + 1);
        rd->n_apply = (size_t)(p->commit - p->applied);
        for (uint64_t s = p->applied + 1; s <= p->commit; s++) {
            slot *sl = slt(p, s);
            const repl_entry *e = ent(p, s);
            for (uint32_t i = 0; i < sl->nctx; i++)
                push_done(p, sl->ctx[i], REPL_OK, s, e->result, e->rlen, false);
        }
        p->rd_apply = p->commit;
    }
    if (serving_due(p, p->rd_apply)) {
        p->serving_reported = true;
        push_event(p, REPL_EV_SERVING, 0, p->epoch, p->serve_from);
    }
    /* materialise the APPENDs' entries now that the log is final */
    for (size_t i = 0; i < p->nmsgs; i++) {
        repl_msg *m = &p->msgs[i];
        if (m->type == REPL_MSG_APPEND && m->n_entries) m->entries = ent(p, m->seq + 1);
    }
    rd->msgs = p->msgs;
    rd->n_msgs = p->nmsgs;
    rd->done = p->done;
    rd->n_done = p->ndone;
    rd->events = p->ev;
    rd->n_events = p->nev;
    p->in_ready = true;
}

void repl_advance(repl_part *p, const repl_ready *rd)
{
    assert(p->in_ready);
    (void)rd;
    p->in_ready = false;
    p->stable = p->rd_stable;
    p->truncate_from = 0;
    p->epoch_dirty = false;
    for (uint64_t s = p->applied + 1; s <= p->rd_apply; s++) {
        const repl_entry *e = ent(p, s);
        slot *sl = slt(p, s);
        if (e->client_id) ct_put(p, e->client_id, e->client_seq, s, e->result, e->rlen);
        free(sl->ctx);
        sl->ctx = NULL;
        sl->nctx = sl->capctx = 0;
        p->applied_bytes += entry_cost(e);
    }
    p->applied = p->rd_apply;
    if (p->rd_compact) {
        log_compact(p, p->rd_compact);
        /* departed replicas whose tail is gone will need a full copy anyway */
        for (uint32_t i = 0; i < p->ndep;)
            if (p->dep[i].acked < p->base)
                p->dep[i] = p->dep[--p->ndep];
            else
                i++;
    }
    clear_outputs(p);
    maybe_commit(p);
}

/* ---- inspection
 * ---------------------------------------------------------------------------------------------- */

bool repl_readable(const repl_part *p)
{
    return p->have_config && p->role == REPL_ROLE_PRIMARY && !superseded(p) &&
           p->applied >= p->serve_from;
}

void repl_status_get(const repl_part *p, repl_status *s)
{
    memset(s, 0, sizeof *s);
    s->self = p->o.self;
    s->epoch = p->epoch;
    s->newest_seen = p->newest_seen;
    s->role = p->have_config ? p->role : REPL_ROLE_NONE;
    s->primary = p->have_config ? p->rep[0] : 0;
    s->base = p->base;
    s->base_epoch = p->base_epoch;
    s->last = last_seq(p);
    s->stable = p->stable;
    s->commit = p->commit;
    s->applied = p->applied;
    s->serve_from = p->serve_from;
    s->readable = repl_readable(p);
    s->n_peers = p->npeers;
    for (uint32_t i = 0; i < p->npeers; i++) {
        const peer *pr = &p->peers[i];
        s->peers[i] =
            (repl_peer_status){pr->id, pr->state, pr->match, pr->next, pr->counts, pr->copy};
    }
    s->n_departed = p->ndep;
    s->n_clients = p->ct_n;
}

const repl_entry *repl_log_view(const repl_part *p, uint64_t *base, size_t *n)
{
    *base = p->base;
    *n = p->n;
    return p->n ? &p->log[p->off] : NULL;
}
