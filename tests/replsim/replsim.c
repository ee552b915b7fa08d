/* replsim: deterministic simulator for per-partition replication (src/repl.h).
 *
 *   build/replsim [--seeds N] [--first-seed S] [--steps M] [--seed S]
 *                 [--verbose] [--break-commit-rule] [--break-send-order]
 *
 * Exit 0: no violation; 1: a violation (seed, step and a replay command are
 * printed); 2: usage error.
 *
 * One partition on D daemons (3..5) with f+1 replicas (f = 1 or 2), driven in
 * one process:
 *   - a coordinator model (the configuration manager of DESIGN sections 5/6):
 *     heartbeats give daemons leases of LEASE steps; a backup not heard from
 *     for DETECT steps is removed at once (epoch + 1); a primary is replaced
 *     only FAIL_AFTER (> LEASE) steps after it was last heard, by an IN_SYNC
 *     replica of the last epoch that is alive (I3); missing replicas are
 *     re-added as CATCHING_UP and flipped to IN_SYNC on a CAUGHT_UP report of
 *     the current epoch; NEED_COPY reports are served by copying the
 *     primary's durable applied state (a consistent snapshot) to the target;
 *   - a seeded network that loses, delays, reorders and duplicates messages
 *     (every message goes through repl_msg_encode/repl_msg_decode);
 *   - crashes that lose everything not handed to the simulated disk through a
 *     Ready (the daemon sends a Ready's messages only once its storage
 *     actions are durable, repl.h); pauses (SIGSTOP: the lease runs out while the daemon sleeps),
 *     isolation, and disk loss of daemons that hold no replica;
 *   - clients doing read-modify-write increments and deletes with
 *     (client_id, client_seq), retrying on errors and timeouts, sometimes
 *     sending a request twice.
 *
 * Checked after every step (first violation wins):
 *   one primary        at most one daemon serves (valid lease and
 *                      repl_readable) at any step; at most one daemon is
 *                      primary of any epoch;
 *   epochs grow        a daemon's adopted epoch never goes down;
 *   committed agree    every daemon applies the same entry at every seq
 *                      (chain hash over the applied prefix, snapshots too);
 *   no lost write (I2) every acknowledged write is the committed entry at its
 *                      seq and is held durably by the coordinator's current
 *                      primary (its disk log or applied state);
 *   exactly-once       no (client_id, client_seq) is committed at two seqs,
 *                      and every OK answer to a retry has the original seq
 *                      and result;
 *   liveness           in the fault-free last LIVE_WINDOW steps every client
 *                      write gets acknowledged.
 *
 * Negative tests (each must end in a violation; make replsim-smoke checks):
 *   --break-commit-rule  the primary commits on its own write alone;
 *   --break-send-order   a primary sends a Ready's APPENDs before its storage
 *                        actions are durable and may crash in between: a
 *                        primary that restarts within its epoch then reuses
 *                        seqs its backups already hold with other entries,
 *                        which is why repl.h forbids reordering (overlapping
 *                        the primary's disk write with its backups' needs a
 *                        new epoch after every primary restart first).
 *
 * Invariant: all randomness comes from the run's splitmix64 state, so a seed
 * replays exactly.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "repl.h"

#define MAXD 5
#define NKEYS 6
#define VMAX 24
#define RMAX 24
#define MAXC 4
#define LEASE 8
#define FAIL_AFTER 12
#define DETECT 5
#define LIVE_WINDOW 400
#define SPACE_ID 7
#define PART_ID 3

/* ---- state ------------------------------------------------------------------------ */

typedef struct dent {
    repl_entry e;
    uint8_t *mem;
} dent;

typedef struct crec {
    uint64_t cseq, seq;
    uint32_t rlen;
    uint8_t res[RMAX];
} crec;

/* What one daemon's storage holds (survives crashes). */
typedef struct disk {
    uint64_t epoch, applied, base, base_epoch, chain;
    dent *log; /* seqs base+1 .. base+n */
    size_t n, cap;
    char obj[NKEYS][VMAX];
    bool has[NKEYS];
    crec cl[MAXC];
} disk;

typedef struct daemon {
    uint64_t id;
    bool up, paused, cut;
    repl_part *r;
    disk d;
    uint64_t lease_until;
    uint64_t last_epoch; /* checker: highest epoch adopted */
} daemon;

typedef struct packet {
    uint64_t at, from, to;
    size_t len;
    uint8_t *bytes;
} packet;

typedef struct client {
    uint64_t cid, cseq;
    bool busy;          /* cseq outstanding */
    bool acked;         /* cseq acknowledged */
    uint64_t sent_at, retry_at;
    uint32_t attempt;
    int key;
    bool del;
    uint64_t ack_seq;
    uint8_t ack_res[RMAX];
    uint32_t ack_rlen;
} client;

typedef struct acked {
    uint64_t seq, hash;
    uint64_t cid, cseq;
} acked;

typedef struct task { /* a coordinator action due at `at` */
    uint64_t at;
    int type; /* REPL_EV_NEED_COPY or REPL_EV_CAUGHT_UP */
    uint64_t from, peer, epoch;
} task;

typedef struct sim {
    uint64_t seed, rng, step, steps;
    bool verbose, brk, violated, faults_on;
    uint64_t heal_at;
    int nd, R;
    daemon d[MAXD];
    /* coordinator */
    uint64_t epoch;
    uint32_t n;
    uint64_t ids[MAXD];
    uint8_t st[MAXD];
    uint64_t heard[MAXD + 1];
    task *tasks;
    size_t ntasks, captasks;
    /* knobs */
    uint32_t loss, dup, delay, crash_pm, restart_pct, pause_pm, resume_pct, cut_pm, uncut_pct, wipe_pct;
    uint32_t ready_pct, tick_pct, write_pct, hb_pct, push_pct, twice_pct, readd_pct;
    bool early_appends; /* send a Ready's APPENDs before its storage is durable */
    uint32_t retain, msg_entries, inflight;
    /* network */
    packet *net;
    size_t nnet, capnet;
    /* clients */
    client cl[MAXC];
    int nc;
    bool live_ok;
    /* checker records, indexed by seq */
    uint64_t *chain_at, *hash_at;
    size_t rec_cap;
    uint64_t *primary_of; /* per epoch */
    size_t pcap;
    uint64_t *committed_at[MAXC]; /* per client, per cseq: seq committed (0: none) */
    size_t ccap[MAXC];
    acked *acks;
    size_t nacks, capacks;
} sim;

/* ---- utilities ----------------------------------------------------------------------- */

static uint64_t rnd64(sim *s)
{
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t rnd(sim *s, uint32_t n)
{
    return n ? (uint32_t)(rnd64(s) % n) : 0;
}

static bool pct(sim *s, uint32_t p)
{
    return rnd(s, 100) < p;
}

static bool pm(sim *s, uint32_t p)
{
    return rnd(s, 1000) < p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) abort();
    return p;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t entry_hash(const repl_entry *e)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv(h, &e->type, 1);
    h = fnv(h, &e->seq, 8);
    h = fnv(h, &e->epoch, 8);
    h = fnv(h, &e->client_id, 8);
    h = fnv(h, &e->client_seq, 8);
    h = fnv(h, &e->klen, 4);
    if (e->klen) h = fnv(h, e->key, e->klen);
    h = fnv(h, &e->vlen, 4);
    if (e->vlen) h = fnv(h, e->value, e->vlen);
    h = fnv(h, &e->rlen, 4);
    if (e->rlen) h = fnv(h, e->result, e->rlen);
    return h | 1;
}

static void trace(sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void trace(sim *s, const char *fmt, ...)
{
    if (!s->verbose) return;
    va_list ap;
    va_start(ap, fmt);
    printf("[%5llu] ", (unsigned long long)s->step);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static void fail(sim *s, const char *prop, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(sim *s, const char *prop, const char *fmt, ...)
{
    if (s->violated) return;
    s->violated = true;
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("VIOLATION seed=%llu step=%llu: %s: %s\n", (unsigned long long)s->seed, (unsigned long long)s->step,
           prop, detail);
    printf("replay: build/replsim --seed %llu --steps %llu%s%s --verbose\n", (unsigned long long)s->seed,
           (unsigned long long)s->steps, s->brk ? " --break-commit-rule" : "",
           s->early_appends ? " --break-send-order" : "");
    fflush(stdout);
}

#define U(x) ((unsigned long long)(x))

static void grow_rec(sim *s, uint64_t seq)
{
    if (seq < s->rec_cap) return;
    size_t cap = s->rec_cap ? s->rec_cap : 1024;
    while (cap <= seq)
        cap *= 2;
    s->chain_at = xrealloc(s->chain_at, cap * sizeof *s->chain_at);
    s->hash_at = xrealloc(s->hash_at, cap * sizeof *s->hash_at);
    memset(s->chain_at + s->rec_cap, 0, (cap - s->rec_cap) * sizeof *s->chain_at);
    memset(s->hash_at + s->rec_cap, 0, (cap - s->rec_cap) * sizeof *s->hash_at);
    s->rec_cap = cap;
}

static daemon *dm(sim *s, uint64_t id)
{
    return (id >= 1 && id <= (uint64_t)s->nd) ? &s->d[id - 1] : NULL;
}

static bool alive(const daemon *d)
{
    return d->up && !d->paused;
}

/* ---- disk ---------------------------------------------------------------------------- */

static void dent_set(dent *x, const repl_entry *e)
{
    x->e = *e;
    size_t tot = (size_t)e->klen + e->vlen + e->rlen;
    x->mem = tot ? xrealloc(NULL, tot) : NULL;
    uint8_t *w = x->mem;
    x->e.key = x->e.value = x->e.result = NULL;
    if (e->klen) memcpy(w, e->key, e->klen), x->e.key = w, w += e->klen;
    if (e->vlen) memcpy(w, e->value, e->vlen), x->e.value = w, w += e->vlen;
    if (e->rlen) memcpy(w, e->result, e->rlen), x->e.result = w;
}

static void disk_drop_log(disk *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->log[i].mem);
    d->n = 0;
}

static void disk_wipe(disk *d)
{
    disk_drop_log(d);
    free(d->log);
    memset(d, 0, sizeof *d);
}

static int key_index(const repl_entry *e)
{
    if (e->klen != 2 || e->key[0] != 'k' || e->key[1] < '0' || e->key[1] >= '0' + NKEYS) return -1;
    return e->key[1] - '0';
}

/* Applies one committed entry to a disk and records it for the checks. */
static void apply_entry(sim *s, daemon *dd, const repl_entry *e)
{
    disk *d = &dd->d;
    if (e->seq != d->applied + 1) {
        fail(s, "committed agree", "daemon %llu applies seq %llu after %llu", U(dd->id), U(e->seq), U(d->applied));
        return;
    }
    uint64_t h = entry_hash(e);
    uint64_t chain = fnv(d->chain ^ 0x9e37, &h, 8) | 1;
    grow_rec(s, e->seq);
    if (!s->chain_at[e->seq]) {
        s->chain_at[e->seq] = chain;
        s->hash_at[e->seq] = h;
        if (e->client_id) {
            int ci = (int)e->client_id - 1;
            if (ci < 0 || ci >= s->nc) {
                fail(s, "exactly-once", "unknown client %llu", U(e->client_id));
                return;
            }
            if (e->client_seq >= s->ccap[ci]) {
                size_t cap = s->ccap[ci] ? s->ccap[ci] : 256;
                while (cap <= e->client_seq)
                    cap *= 2;
                s->committed_at[ci] = xrealloc(s->committed_at[ci], cap * sizeof(uint64_t));
                memset(s->committed_at[ci] + s->ccap[ci], 0, (cap - s->ccap[ci]) * sizeof(uint64_t));
                s->ccap[ci] = cap;
            }
            uint64_t *at = &s->committed_at[ci][e->client_seq];
            if (*at && *at != e->seq) {
                fail(s, "exactly-once", "client %llu seq %llu committed at seq %llu and %llu", U(e->client_id),
                     U(e->client_seq), U(*at), U(e->seq));
                return;
            }
            *at = e->seq;
        }
    } else if (s->chain_at[e->seq] != chain) {
        fail(s, "committed agree", "daemon %llu applied another entry (or history) at seq %llu (epoch %llu)",
             U(dd->id), U(e->seq), U(e->epoch));
        return;
    }
    d->chain = chain;
    d->applied = e->seq;
    int k = key_index(e);
    if (e->type != REPL_E_NOOP && k < 0) {
        fail(s, "committed agree", "daemon %llu applies a foreign key", U(dd->id));
        return;
    }
    if (e->type == REPL_E_PUT) {
        size_t n = e->vlen < VMAX - 1 ? e->vlen : VMAX - 1;
        memcpy(d->obj[k], e->value, n);
        d->obj[k][n] = 0;
        d->has[k] = true;
    } else if (e->type == REPL_E_DEL) {
        d->has[k] = false;
    }
    if (e->client_id) {
        crec *c = &d->cl[e->client_id - 1];
        c->cseq = e->client_seq;
        c->seq = e->seq;
        c->rlen = e->rlen < RMAX ? e->rlen : RMAX;
        memcpy(c->res, e->result, c->rlen);
    }
}

/* ---- daemons ---------------------------------------------------------------------------- */

static void daemon_start(sim *s, daemon *dd)
{
    repl_opts o;
    repl_opts_init(&o, dd->id, SPACE_ID, PART_ID);
    o.retain_entries = s->retain;
    o.max_msg_entries = s->msg_entries;
    o.max_inflight = s->inflight;
    o.max_pending = 64;
    o.resend_ticks = 2;
    o.copy_retry_ticks = 10;
    o.unsafe_commit_primary_only = s->brk;
    disk *d = &dd->d;
    repl_entry *es = xrealloc(NULL, (d->n + 1) * sizeof *es);
    for (size_t i = 0; i < d->n; i++)
        es[i] = d->log[i].e;
    repl_client cls[MAXC];
    size_t ncl = 0;
    for (int i = 0; i < s->nc; i++)
        if (d->cl[i].cseq)
            cls[ncl++] = (repl_client){(uint64_t)i + 1, d->cl[i].cseq, d->cl[i].seq, d->cl[i].rlen,
                                       d->cl[i].rlen ? d->cl[i].res : NULL};
    repl_persisted p = {.epoch = d->epoch,
                        .applied = d->applied,
                        .base_seq = d->base,
                        .base_epoch = d->base_epoch,
                        .entries = es,
                        .n_entries = d->n,
                        .clients = cls,
                        .n_clients = ncl};
    int rc = repl_new(&o, &p, &dd->r);
    free(es);
    if (rc != REPL_OK) {
        fail(s, "restart", "daemon %llu cannot restart from its disk: %s", U(dd->id), repl_strerror(rc));
        return;
    }
    dd->up = true;
    dd->paused = false;
    dd->lease_until = 0;
    dd->last_epoch = d->epoch; /* an adopted epoch not yet persisted is forgotten by a crash */
}

static void daemon_crash(sim *s, daemon *dd)
{
    trace(s, "crash daemon %llu", U(dd->id));
    repl_free(dd->r);
    dd->r = NULL;
    dd->up = false;
    dd->paused = false;
    dd->lease_until = 0;
}

static void add_task(sim *s, int type, uint64_t from, uint64_t peer, uint64_t epoch, uint64_t at)
{
    if (s->ntasks == s->captasks) {
        s->captasks = s->captasks ? s->captasks * 2 : 16;
        s->tasks = xrealloc(s->tasks, s->captasks * sizeof *s->tasks);
    }
    s->tasks[s->ntasks++] = (task){at, type, from, peer, epoch};
}

static void net_send(sim *s, const repl_msg *m)
{
    if (s->faults_on && pct(s, s->loss)) return;
    buf b;
    buf_init(&b);
    repl_msg_encode(m, &b);
    int copies = (s->faults_on && pct(s, s->dup)) ? 2 : 1;
    for (int c = 0; c < copies; c++) {
        if (s->nnet == s->capnet) {
            s->capnet = s->capnet ? s->capnet * 2 : 256;
            s->net = xrealloc(s->net, s->capnet * sizeof *s->net);
        }
        packet *pk = &s->net[s->nnet++];
        pk->at = s->step + (s->faults_on ? rnd(s, s->delay + 1 + 2 * (uint32_t)c) : 0);
        pk->from = m->from;
        pk->to = m->to;
        pk->len = b.len;
        pk->bytes = xrealloc(NULL, b.len);
        memcpy(pk->bytes, b.data, b.len);
    }
    buf_free(&b);
}

static client *client_of_ctx(sim *s, uint64_t ctx)
{
    uint64_t ci = ctx >> 48;
    return ci < (uint64_t)s->nc ? &s->cl[ci] : NULL;
}

static void on_done(sim *s, daemon *dd, const repl_completion *c)
{
    client *cl = client_of_ctx(s, c->ctx);
    uint64_t cseq = (c->ctx >> 8) & 0xffffffffffull;
    if (!cl) {
        fail(s, "completion", "daemon %llu completed an unknown ctx %llx", U(dd->id), U(c->ctx));
        return;
    }
    if (c->status != REPL_OK) {
        if (cl->busy && cseq == cl->cseq && cl->retry_at > s->step + 2) cl->retry_at = s->step + 2;
        return;
    }
    if (cseq > cl->cseq) {
        fail(s, "completion", "completion for a write never sent");
        return;
    }
    if (cseq != cl->cseq) return; /* a late answer to an older write: already checked then */
    if (cl->acked) {
        if (c->seq != cl->ack_seq || c->rlen != cl->ack_rlen || memcmp(c->result, cl->ack_res, c->rlen)) {
            fail(s, "exactly-once", "client %llu seq %llu answered twice differently (seq %llu vs %llu)",
                 U(cl->cid), U(cseq), U(cl->ack_seq), U(c->seq));
        }
        return;
    }
    grow_rec(s, c->seq);
    if (!s->hash_at[c->seq]) {
        fail(s, "no lost write", "write acknowledged at seq %llu that nobody applied", U(c->seq));
        return;
    }
    cl->acked = true;
    cl->busy = false;
    cl->ack_seq = c->seq;
    cl->ack_rlen = c->rlen < RMAX ? c->rlen : RMAX;
    memcpy(cl->ack_res, c->result, cl->ack_rlen);
    if (s->step >= s->heal_at) s->live_ok = true;
    if (s->nacks == s->capacks) {
        s->capacks = s->capacks ? s->capacks * 2 : 256;
        s->acks = xrealloc(s->acks, s->capacks * sizeof *s->acks);
    }
    s->acks[s->nacks++] = (acked){c->seq, s->hash_at[c->seq], cl->cid, cseq};
    trace(s, "client %llu write %llu acked at seq %llu by daemon %llu", U(cl->cid), U(cseq), U(c->seq), U(dd->id));
}

/* One Ready round: the daemon glue's loop body. */
static void process_ready(sim *s, daemon *dd)
{
    repl_ready rd;
    repl_ready_get(dd->r, &rd);
    disk *d = &dd->d;
    if (s->early_appends) {
        /* APPENDs leave before this Ready is durable (repl.h allows it);
         * a crash now loses the Ready's storage actions */
        for (size_t i = 0; i < rd.n_msgs; i++)
            if (rd.msgs[i].type == REPL_MSG_APPEND) net_send(s, &rd.msgs[i]);
        if (rd.n_entries && pm(s, s->crash_pm * 4)) {
            daemon_crash(s, dd);
            return;
        }
    }
    if (rd.truncate_from) {
        if (rd.truncate_from <= d->base || rd.truncate_from <= d->applied) {
            fail(s, "storage contract", "daemon %llu told to truncate at %llu (applied %llu)", U(dd->id),
                 U(rd.truncate_from), U(d->applied));
            repl_advance(dd->r, &rd);
            return;
        }
        while (d->n && d->base + d->n >= rd.truncate_from)
            free(d->log[--d->n].mem);
    }
    if (rd.n_entries) {
        if (rd.entries[0].seq != d->base + d->n + 1) {
            fail(s, "storage contract", "daemon %llu told to store %llu after %llu", U(dd->id), U(rd.entries[0].seq),
                 U(d->base + d->n));
            repl_advance(dd->r, &rd);
            return;
        }
        if (d->n + rd.n_entries > d->cap) {
            d->cap = (d->n + rd.n_entries) * 2;
            d->log = xrealloc(d->log, d->cap * sizeof *d->log);
        }
        for (size_t i = 0; i < rd.n_entries; i++)
            dent_set(&d->log[d->n++], &rd.entries[i]);
    }
    if (rd.epoch_changed) {
        if (rd.epoch < d->epoch)
            fail(s, "epochs grow", "daemon %llu persists epoch %llu over %llu", U(dd->id), U(rd.epoch), U(d->epoch));
        d->epoch = rd.epoch;
    }
    for (size_t i = 0; i < rd.n_apply && !s->violated; i++)
        apply_entry(s, dd, &rd.apply[i]);
    if (rd.compact_to) {
        if (rd.compact_to > d->applied || rd.compact_to <= d->base) {
            fail(s, "storage contract", "daemon %llu told to compact to %llu (base %llu applied %llu)", U(dd->id),
                 U(rd.compact_to), U(d->base), U(d->applied));
        } else {
            size_t k = (size_t)(rd.compact_to - d->base);
            for (size_t i = 0; i < k; i++)
                free(d->log[i].mem);
            if (k) memmove(d->log, d->log + k, (d->n - k) * sizeof *d->log);
            d->n -= k;
            d->base = rd.compact_to;
            d->base_epoch = rd.compact_epoch;
        }
    }
    for (size_t i = 0; i < rd.n_msgs; i++) {
        const repl_msg *m = &rd.msgs[i];
        if (s->early_appends && m->type == REPL_MSG_APPEND) continue; /* sent above */
        trace(s, "send %s %llu->%llu e%llu seq=%llu n=%u commit=%llu%s hint=%llu", repl_msg_type_name(m->type),
              U(m->from), U(m->to), U(m->epoch), U(m->seq), m->n_entries, U(m->commit), m->reject ? " reject" : "",
              U(m->hint));
        net_send(s, m);
    }
    for (size_t i = 0; i < rd.n_done && !s->violated; i++)
        on_done(s, dd, &rd.done[i]);
    for (size_t i = 0; i < rd.n_events; i++) {
        const repl_event *e = &rd.events[i];
        trace(s, "daemon %llu event %s peer=%llu epoch=%llu seq=%llu", U(dd->id), repl_event_name(e->type),
              U(e->peer), U(e->epoch), U(e->seq));
        if (e->type == REPL_EV_NEED_COPY || e->type == REPL_EV_CAUGHT_UP)
            add_task(s, e->type, dd->id, e->peer, e->epoch, s->step + 1 + rnd(s, 4));
    }
    repl_advance(dd->r, &rd);
}

/* ---- coordinator model --------------------------------------------------------------------- */

static int member_index(const sim *s, uint64_t id)
{
    for (uint32_t i = 0; i < s->n; i++)
        if (s->ids[i] == id) return (int)i;
    return -1;
}

static void new_config(sim *s, const uint64_t *ids, const uint8_t *st, uint32_t n, const char *why)
{
    s->epoch++;
    s->n = n;
    memcpy(s->ids, ids, n * sizeof *ids);
    memcpy(s->st, st, n);
    if (s->verbose) {
        char desc[128];
        size_t off = 0;
        desc[0] = 0;
        for (uint32_t i = 0; i < n; i++)
            off += (size_t)snprintf(desc + off, sizeof desc - off, " %llu%s", U(ids[i]),
                                    st[i] == REPL_IN_SYNC ? "" : "(catching up)");
        trace(s, "coordinator: epoch %llu:%s (%s)", U(s->epoch), desc, why);
    }
}

static void deliver_config(sim *s, daemon *dd)
{
    int rc = repl_config(dd->r, s->epoch, s->ids, s->st, s->n);
    if (rc != REPL_OK) fail(s, "config", "daemon %llu refused epoch %llu: %s", U(dd->id), U(s->epoch), repl_strerror(rc));
}

static bool reachable(const daemon *dd)
{
    return alive(dd) && !dd->cut;
}

static void coordinator_step(sim *s)
{
    /* heartbeats: config first, then the lease (a renewed lease implies the current map) */
    for (int i = 0; i < s->nd; i++) {
        daemon *dd = &s->d[i];
        if (!reachable(dd)) continue;
        bool hb = !s->faults_on || pct(s, s->hb_pct);
        if (hb || pct(s, s->push_pct)) {
            repl_status st;
            repl_status_get(dd->r, &st);
            if (st.epoch < s->epoch || st.role == REPL_ROLE_NONE) deliver_config(s, dd);
        }
        if (hb) {
            s->heard[dd->id] = s->step;
            dd->lease_until = s->step + LEASE;
        }
    }
    /* failure handling (one change per step) */
    for (uint32_t i = 1; i < s->n; i++) {
        if (s->step - s->heard[s->ids[i]] < DETECT) continue;
        uint64_t ids[MAXD];
        uint8_t st[MAXD];
        uint32_t k = 0;
        for (uint32_t j = 0; j < s->n; j++)
            if (j != i) ids[k] = s->ids[j], st[k++] = s->st[j];
        trace(s, "coordinator: backup %llu failed", U(s->ids[i]));
        new_config(s, ids, st, k, "backup removed");
        return;
    }
    if (s->step - s->heard[s->ids[0]] >= FAIL_AFTER) {
        uint32_t cand[MAXD], nc = 0;
        for (uint32_t i = 1; i < s->n; i++)
            if (s->st[i] == REPL_IN_SYNC && s->step - s->heard[s->ids[i]] < DETECT) cand[nc++] = i;
        if (nc) {
            uint32_t pick = cand[rnd(s, nc)];
            uint64_t ids[MAXD];
            uint8_t st[MAXD];
            uint32_t k = 0;
            ids[k] = s->ids[pick], st[k++] = REPL_IN_SYNC;
            for (uint32_t j = 1; j < s->n; j++)
                if (j != pick) ids[k] = s->ids[j], st[k++] = s->st[j];
            trace(s, "coordinator: primary %llu failed", U(s->ids[0]));
            new_config(s, ids, st, k, "failover");
            return;
        }
    }
    /* re-protection: add a live non-member as CATCHING_UP */
    if ((int)s->n < s->R && pct(s, s->readd_pct)) {
        uint64_t cand[MAXD];
        uint32_t nc = 0;
        for (int i = 0; i < s->nd; i++)
            if (member_index(s, s->d[i].id) < 0 && s->step - s->heard[s->d[i].id] < DETECT && s->heard[s->d[i].id])
                cand[nc++] = s->d[i].id;
        if (nc) {
            uint64_t ids[MAXD];
            uint8_t st[MAXD];
            memcpy(ids, s->ids, s->n * sizeof *ids);
            memcpy(st, s->st, s->n);
            ids[s->n] = cand[rnd(s, nc)];
            st[s->n] = REPL_CATCHING_UP;
            new_config(s, ids, st, s->n + 1, "replica added");
            return;
        }
    }
    /* tasks due */
    for (size_t i = 0; i < s->ntasks;) {
        task t = s->tasks[i];
        if (t.at > s->step) {
            i++;
            continue;
        }
        s->tasks[i] = s->tasks[--s->ntasks];
        if (t.type == REPL_EV_CAUGHT_UP) {
            int k = member_index(s, t.peer);
            if (t.epoch != s->epoch || k < 0 || s->st[k] != REPL_CATCHING_UP || s->ids[0] != t.from) continue;
            uint8_t st[MAXD];
            memcpy(st, s->st, s->n);
            st[k] = REPL_IN_SYNC;
            new_config(s, s->ids, st, s->n, "caught up");
            return;
        }
        /* NEED_COPY: copy the source's durable applied state to the target */
        daemon *src = dm(s, t.from), *dst = dm(s, t.peer);
        if (!src || !dst || !alive(src) || !alive(dst) || src->cut || dst->cut) continue;
        disk *a = &src->d, *b = &dst->d;
        if (a->applied <= b->applied || a->applied == 0) continue;
        repl_status dst_st;
        repl_status_get(dst->r, &dst_st);
        if (dst_st.role == REPL_ROLE_PRIMARY) continue; /* roles changed meanwhile */
        uint64_t ep = a->applied == a->base ? a->base_epoch : a->log[a->applied - a->base - 1].e.epoch;
        repl_client cls[MAXC];
        size_t ncl = 0;
        for (int c = 0; c < s->nc; c++)
            if (a->cl[c].cseq)
                cls[ncl++] = (repl_client){(uint64_t)c + 1, a->cl[c].cseq, a->cl[c].seq, a->cl[c].rlen,
                                           a->cl[c].rlen ? a->cl[c].res : NULL};
        if (s->chain_at[a->applied] != a->chain) {
            fail(s, "committed agree", "daemon %llu's snapshot at %llu has another history", U(src->id), U(a->applied));
            return;
        }
        bool keep;
        int rc = repl_install_snapshot(dst->r, a->applied, ep, cls, ncl, &keep);
        if (rc != REPL_OK) {
            fail(s, "full copy", "daemon %llu refused a snapshot at %llu: %s", U(dst->id), U(a->applied),
                 repl_strerror(rc));
            return;
        }
        if (keep) { /* drop stored entries <= applied, keep the rest */
            size_t k = 0;
            while (k < b->n && b->log[k].e.seq <= a->applied)
                free(b->log[k++].mem);
            if (k) memmove(b->log, b->log + k, (b->n - k) * sizeof *b->log);
            b->n -= k;
        } else {
            disk_drop_log(b);
        }
        b->applied = b->base = a->applied;
        b->base_epoch = ep;
        b->chain = a->chain;
        memcpy(b->obj, a->obj, sizeof b->obj);
        memcpy(b->has, a->has, sizeof b->has);
        memcpy(b->cl, a->cl, sizeof b->cl);
        trace(s, "full copy %llu -> %llu through seq %llu", U(src->id), U(dst->id), U(a->applied));
    }
}

/* ---- clients -------------------------------------------------------------------------------- */

static void client_send(sim *s, client *c)
{
    daemon *dd = dm(s, s->ids[0]);
    c->sent_at = s->step;
    c->retry_at = s->step + 25 + rnd(s, 10);
    if (!dd || !alive(dd) || dd->lease_until <= s->step) return; /* lost or refused: retry later */
    c->attempt++;
    uint64_t ctx = ((uint64_t)(c - s->cl) << 48) | (c->cseq << 8) | (c->attempt & 0xff);
    uint64_t seq;
    const uint8_t *res;
    uint32_t rlen;
    int dup = repl_client_check(dd->r, c->cid, c->cseq, &seq, &res, &rlen);
    if (dup == REPL_ESTALE) {
        fail(s, "exactly-once", "daemon %llu says client %llu seq %llu is stale", U(dd->id), U(c->cid), U(c->cseq));
        return;
    }
    if (dup == REPL_DUP_DONE) {
        repl_completion done = {ctx, REPL_OK, seq, res, rlen};
        on_done(s, dd, &done);
        return;
    }
    char key[3] = {'k', (char)('0' + c->key), 0};
    char val[VMAX], rep[RMAX];
    int type = REPL_E_PUT;
    size_t vlen = 0;
    long cur = 0;
    bool exists = false;
    const repl_entry *pe = repl_pending_get(dd->r, key, 2);
    if (pe) {
        exists = pe->type == REPL_E_PUT;
        if (exists) cur = strtol((const char *)pe->value, NULL, 10); /* values are short digit strings */
    } else if (dd->d.has[c->key]) {
        exists = true;
        cur = strtol(dd->d.obj[c->key], NULL, 10);
    }
    if (c->del) {
        type = REPL_E_DEL;
        snprintf(rep, sizeof rep, ":%d", exists ? 1 : 0);
    } else {
        vlen = (size_t)snprintf(val, sizeof val, "%ld", cur + 1);
        snprintf(rep, sizeof rep, ":%ld", cur + 1);
    }
    int rc = repl_write(dd->r, type, key, 2, type == REPL_E_PUT ? val : NULL, vlen, c->cid, c->cseq, rep,
                        strlen(rep), ctx, &seq);
    trace(s, "client %llu write %llu (attempt %u) to %llu: %s seq %llu", U(c->cid), U(c->cseq), c->attempt,
          U(dd->id), repl_strerror(rc), U(seq));
    if (rc != REPL_OK && rc != REPL_ENOTPRIMARY && rc != REPL_EBUSY)
        fail(s, "write", "repl_write refused a valid write: %s", repl_strerror(rc));
}

static void clients_step(sim *s)
{
    for (int i = 0; i < s->nc; i++) {
        client *c = &s->cl[i];
        if (!c->busy) {
            if (s->step + 60 > s->steps || !pct(s, s->write_pct)) continue; /* the end drains */
            c->cseq++;
            c->busy = true;
            c->acked = false;
            c->attempt = 0;
            c->key = (int)rnd(s, NKEYS);
            c->del = rnd(s, 10) == 0;
            client_send(s, c);
            if (s->faults_on && pct(s, s->twice_pct)) client_send(s, c);
        } else if (s->step >= c->retry_at) {
            client_send(s, c);
        }
    }
}

/* ---- checks ------------------------------------------------------------------------------------ */

static bool disk_holds(const disk *d, uint64_t seq, uint64_t hash, uint64_t chain)
{
    (void)chain;
    if (seq <= d->applied) return true; /* applied prefixes are compared by chain at apply time */
    if (seq <= d->base || seq > d->base + d->n) return false;
    return entry_hash(&d->log[seq - d->base - 1].e) == hash;
}

static void check_step(sim *s)
{
    /* one primary serving; one primary per epoch; epochs grow */
    uint64_t serving = 0;
    for (int i = 0; i < s->nd && !s->violated; i++) {
        daemon *dd = &s->d[i];
        if (!dd->up) continue;
        repl_status st;
        repl_status_get(dd->r, &st);
        if (st.epoch < dd->last_epoch)
            fail(s, "epochs grow", "daemon %llu went from epoch %llu to %llu", U(dd->id), U(dd->last_epoch), U(st.epoch));
        dd->last_epoch = st.epoch;
        if (st.role == REPL_ROLE_PRIMARY) {
            if (st.epoch >= s->pcap) {
                size_t cap = s->pcap ? s->pcap : 64;
                while (cap <= st.epoch)
                    cap *= 2;
                s->primary_of = xrealloc(s->primary_of, cap * sizeof *s->primary_of);
                memset(s->primary_of + s->pcap, 0, (cap - s->pcap) * sizeof *s->primary_of);
                s->pcap = cap;
            }
            if (!s->primary_of[st.epoch]) s->primary_of[st.epoch] = dd->id;
            if (s->primary_of[st.epoch] != dd->id)
                fail(s, "one primary", "daemons %llu and %llu are both primary of epoch %llu",
                     U(s->primary_of[st.epoch]), U(dd->id), U(st.epoch));
        }
        if (!dd->paused && dd->lease_until > s->step && repl_readable(dd->r)) {
            if (serving)
                fail(s, "one primary", "daemons %llu and %llu both serve at once", U(serving), U(dd->id));
            serving = dd->id;
        }
    }
    /* I2: every acknowledged write is committed and held by the coordinator's primary */
    daemon *pd = dm(s, s->ids[0]);
    for (size_t i = 0; i < s->nacks && !s->violated; i++) {
        const acked *a = &s->acks[i];
        if (s->hash_at[a->seq] != a->hash) {
            fail(s, "no lost write", "acknowledged write (client %llu seq %llu) at seq %llu was replaced", U(a->cid),
                 U(a->cseq), U(a->seq));
            break;
        }
        if (!disk_holds(&pd->d, a->seq, a->hash, s->chain_at[a->seq]))
            fail(s, "no lost write",
                 "primary %llu of epoch %llu lacks acknowledged write (client %llu seq %llu) at seq %llu "
                 "(disk applied %llu, log %llu..%llu)",
                 U(pd->id), U(s->epoch), U(a->cid), U(a->cseq), U(a->seq), U(pd->d.applied), U(pd->d.base + 1),
                 U(pd->d.base + pd->d.n));
    }
}

/* ---- faults -------------------------------------------------------------------------------------- */

static void fault_step(sim *s)
{
    for (int i = 0; i < s->nd; i++) {
        daemon *dd = &s->d[i];
        if (dd->up && pm(s, s->crash_pm)) {
            daemon_crash(s, dd);
        } else if (!dd->up && pct(s, s->restart_pct)) {
            if (member_index(s, dd->id) < 0 && pct(s, s->wipe_pct)) {
                trace(s, "daemon %llu loses its disk", U(dd->id));
                disk_wipe(&dd->d);
                dd->last_epoch = 0;
            }
            trace(s, "restart daemon %llu", U(dd->id));
            daemon_start(s, dd);
        } else if (dd->up && !dd->paused && pm(s, s->pause_pm)) {
            trace(s, "pause daemon %llu", U(dd->id));
            dd->paused = true;
        } else if (dd->paused && pct(s, s->resume_pct)) {
            trace(s, "resume daemon %llu", U(dd->id));
            dd->paused = false;
        }
        if (!dd->cut && pm(s, s->cut_pm)) {
            trace(s, "isolate daemon %llu", U(dd->id));
            dd->cut = true;
        } else if (dd->cut && pct(s, s->uncut_pct)) {
            trace(s, "reconnect daemon %llu", U(dd->id));
            dd->cut = false;
        }
    }
}

static void heal_all(sim *s)
{
    trace(s, "heal: no more faults");
    s->faults_on = false;
    for (int i = 0; i < s->nd; i++) {
        daemon *dd = &s->d[i];
        dd->cut = false;
        dd->paused = false;
        if (!dd->up) daemon_start(s, dd);
    }
}

static void deliver(sim *s)
{
    /* shuffle what is due: reordering */
    for (size_t i = 0; i < s->nnet && !s->violated;) {
        size_t j = i + rnd(s, (uint32_t)(s->nnet - i));
        packet tmp = s->net[i];
        s->net[i] = s->net[j];
        s->net[j] = tmp;
        packet pk = s->net[i];
        if (pk.at > s->step) {
            i++;
            continue;
        }
        s->net[i] = s->net[--s->nnet];
        daemon *to = dm(s, pk.to), *from = dm(s, pk.from);
        if (to && from && alive(to) && !to->cut && !from->cut) {
            repl_msg m;
            if (repl_msg_decode(pk.bytes, pk.len, &m) != REPL_OK) {
                fail(s, "encoding", "a message from %llu does not decode", U(pk.from));
            } else {
                int rc = repl_recv(to->r, &m);
                if (rc == REPL_EPROTO || rc == REPL_EINVAL)
                    fail(s, "protocol", "daemon %llu refused %s from %llu epoch %llu: %s", U(to->id),
                         repl_msg_type_name(m.type), U(m.from), U(m.epoch), repl_strerror(rc));
                repl_msg_free(&m);
            }
        }
        free(pk.bytes);
    }
}

/* ---- one run ---------------------------------------------------------------------------------------- */

static bool g_break_send_order; /* --break-send-order */

static bool run_seed(uint64_t seed, uint64_t steps, bool verbose, bool brk)
{
    sim *s = xrealloc(NULL, sizeof *s);
    memset(s, 0, sizeof *s);
    s->seed = seed;
    s->rng = seed * 0x2545f4914f6cdd1dull + 1;
    s->steps = steps;
    s->verbose = verbose;
    s->brk = brk;
    s->nd = 3 + (int)rnd(s, 3);
    s->R = 2 + (int)rnd(s, 2);
    if (s->R > s->nd) s->R = s->nd;
    s->nc = 1 + (int)rnd(s, MAXC);
    s->loss = rnd(s, 20);
    s->dup = rnd(s, 10);
    s->delay = rnd(s, 4);
    s->crash_pm = 5 + rnd(s, 25);
    s->restart_pct = 5 + rnd(s, 20);
    s->pause_pm = rnd(s, 10);
    s->resume_pct = 3 + rnd(s, 10);
    s->cut_pm = rnd(s, 8);
    s->uncut_pct = 3 + rnd(s, 10);
    s->wipe_pct = rnd(s, 40);
    s->ready_pct = 40 + rnd(s, 61);
    s->early_appends = g_break_send_order;
    s->tick_pct = 70 + rnd(s, 31);
    s->write_pct = 20 + rnd(s, 80);
    s->hb_pct = 75 + rnd(s, 26);
    s->push_pct = 20 + rnd(s, 80);
    s->twice_pct = rnd(s, 15);
    s->readd_pct = 5 + rnd(s, 30);
    s->retain = 2 + rnd(s, 40);
    s->msg_entries = 1 + rnd(s, 8);
    s->inflight = 1 + rnd(s, 32);
    s->heal_at = steps >= 2 * LIVE_WINDOW ? steps - LIVE_WINDOW : steps + 1;
    s->faults_on = true;
    trace(s, "seed %llu: %d daemons, %d replicas, %d clients, loss %u%% dup %u%% delay<=%u crash %u/1000 "
             "pause %u/1000 isolate %u/1000 wipe %u%% ready %u%% retain %u, heal at %llu",
          U(seed), s->nd, s->R, s->nc, s->loss, s->dup, s->delay, s->crash_pm, s->pause_pm, s->cut_pm, s->wipe_pct,
          s->ready_pct, s->retain, U(s->heal_at));
    for (int i = 0; i < s->nc; i++)
        s->cl[i].cid = (uint64_t)i + 1;
    for (int i = 0; i < s->nd; i++) {
        s->d[i].id = (uint64_t)i + 1;
        daemon_start(s, &s->d[i]);
    }
    /* initial placement: the first R daemons, all IN_SYNC (an empty partition) */
    uint64_t ids[MAXD];
    uint8_t st[MAXD];
    for (int i = 0; i < s->R; i++)
        ids[i] = (uint64_t)i + 1, st[i] = REPL_IN_SYNC;
    new_config(s, ids, st, (uint32_t)s->R, "space added");
    for (int i = 0; i < s->nd; i++)
        s->heard[i + 1] = 0;
    grow_rec(s, 1);

    for (s->step = 1; s->step <= steps && !s->violated; s->step++) {
        if (s->step == s->heal_at) heal_all(s);
        if (s->faults_on) fault_step(s);
        coordinator_step(s);
        if (s->violated) break;
        for (int i = 0; i < s->nd; i++)
            if (alive(&s->d[i]) && (!s->faults_on || pct(s, s->tick_pct))) repl_tick(s->d[i].r);
        deliver(s);
        if (s->violated) break;
        clients_step(s);
        for (int i = 0; i < s->nd && !s->violated; i++) {
            daemon *dd = &s->d[i];
            if (alive(dd) && repl_has_ready(dd->r) && (!s->faults_on || pct(s, s->ready_pct))) process_ready(s, dd);
        }
        if (s->violated) break;
        check_step(s);
    }
    if (!s->violated && s->heal_at <= steps) {
        s->step = steps;
        for (int i = 0; i < s->nc; i++)
            if (s->cl[i].busy)
                fail(s, "liveness", "client %llu write %llu not acknowledged %d steps after the heal (epoch %llu)",
                     U(s->cl[i].cid), U(s->cl[i].cseq), LIVE_WINDOW, U(s->epoch));
        if (!s->violated && !s->live_ok)
            fail(s, "liveness", "no write acknowledged in the %d fault-free steps", LIVE_WINDOW);
    }
    bool ok = !s->violated;
    for (int i = 0; i < s->nd; i++) {
        repl_free(s->d[i].r);
        disk_wipe(&s->d[i].d);
    }
    for (size_t i = 0; i < s->nnet; i++)
        free(s->net[i].bytes);
    free(s->net);
    free(s->tasks);
    free(s->chain_at);
    free(s->hash_at);
    free(s->primary_of);
    for (int i = 0; i < MAXC; i++)
        free(s->committed_at[i]);
    free(s->acks);
    free(s);
    return ok;
}

/* ---- command line ------------------------------------------------------------------------------------ */

static int usage(void)
{
    fprintf(stderr, "usage: build/replsim [--seeds N] [--first-seed S] [--steps M] [--seed S]\n"
                    "                     [--verbose] [--break-commit-rule] [--break-send-order]\n");
    return 2;
}

static bool parse_u64(const char *str, uint64_t *v)
{
    if (!str || !*str || str[0] == '-') return false;
    char *end;
    unsigned long long x = strtoull(str, &end, 10);
    if (*end) return false;
    *v = x;
    return true;
}

int main(int argc, char **argv)
{
    uint64_t seeds = 100, first = 1, steps = 2000, one = 0;
    bool have_one = false, verbose = false, brk = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--verbose")) {
            verbose = true;
        } else if (!strcmp(a, "--break-commit-rule")) {
            brk = true;
        } else if (!strcmp(a, "--break-send-order")) {
            g_break_send_order = true;
        } else if (!strcmp(a, "--seeds") && parse_u64(v, &seeds) && seeds > 0) {
            i++;
        } else if (!strcmp(a, "--first-seed") && parse_u64(v, &first)) {
            i++;
        } else if (!strcmp(a, "--steps") && parse_u64(v, &steps) && steps > 0) {
            i++;
        } else if (!strcmp(a, "--seed") && parse_u64(v, &one)) {
            have_one = true;
            i++;
        } else {
            return usage();
        }
    }
    if (have_one) {
        first = one;
        seeds = 1;
    }
    clock_t t0 = clock();
    for (uint64_t k = 0; k < seeds; k++)
        if (!run_seed(first + k, steps, verbose, brk)) return 1;
    printf("replsim: %llu seeds x %llu steps: no violation (%.1f s)\n", U(seeds), U(steps),
           (double)(clock() - t0) / CLOCKS_PER_SEC);
    return 0;
}
