/* dpart: a daemon's replicated data plane (see dpart.h).
 *
 * Design note
 * -----------
 * Every partition this daemon holds has a repl_part (repl.c), the pure
 * replication state machine. This file carries out its Ready batches: the
 * storage part of a Ready (log entries, truncation, compaction, applying
 * committed entries to the objects and the client table, the partition's
 * replication metadata) becomes one commit item for the storage thread; when
 * it has committed, the Ready's messages go to the peers, its completions to
 * the clients, and the part advances. While a part's Ready is in flight the
 * part is busy: inputs for it (peer messages, client writes, a new
 * configuration) wait in its queue, because repl forbids mutating calls
 * between ready_get and advance.
 *
 * Client requests: any daemon accepts any data command. The partition's
 * primary (first replica in the map) serves it while its lease is valid and
 * repl says it is readable; any other daemon forwards it to the primary
 * (prefixed FWD so it is never forwarded twice).
 *
 * Invariants:
 *   1. A write is acknowledged only after repl reports it committed and the
 *      transaction applying it has committed on this daemon (and the
 *      replicas stored it before acking: DESIGN section 5).
 *   2. Reads are served only by a primary with a valid lease whose epoch-start
 *      entry is applied (repl_readable), from the applied state; a read on a
 *      connection with writes in flight waits until everything appended before
 *      it is applied, so a client reads its own writes.
 *   3. At most one Ready per part is in flight; nothing mutates a part then.
 */
#include "dpart.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "commit.h"
#include "dcopy.h"
#include "kv.h"
#include "log.h"
#include "rclient.h"
#include "repl.h"
#include "resp.h"
#include "store.h"

#define TICK_MS 50
#define FORWARD_TIMEOUT_MS 5000
#define PEER_TIMEOUT_MS 3000
/* --blocking rejoin: the longest a primary holds a partition's writes for a
 * full copy; past it the copy goes on live. Below FORWARD_TIMEOUT_MS, so a
 * write forwarded by another daemon waits rather than failing. */
#define PAUSE_MAX_MS 4500

enum { IN_MSG = 1, IN_WRITE, IN_INSTALL };

typedef struct dp_input {
    struct dp_input *next;
    int kind;
    buf bytes;                      /* IN_MSG: an encoded repl message */
    kv_op *op;                      /* IN_WRITE */
    net_reply *reply;               /* IN_WRITE */
    uint64_t client_id, client_seq; /* IN_WRITE: exactly-once identity, or 0 */
    dcopy_reader *copy;             /* IN_INSTALL: a finished full copy */
} dp_input;

typedef struct dp_wait {
    struct dp_wait *next;
    uint64_t seq; /* serve once applied >= seq */
    kv_op *op;    /* a read to run then, or NULL: */
    buf prepared; /* a reply computed from uncommitted state, sent once it committed */
    net_reply *reply;
} dp_wait;

typedef struct dp_part dp_part;

typedef struct dp_item {
    commit_item base; /* first */
    dpart *dp;
    dp_part *p;          /* a part's Ready (or its full-copy install), or NULL: */
    uint32_t drop_space; /* delete a dropped space's data (the item is heap-allocated) */
    dcopy_reader *copy;  /* an install: the finished copy */
    bool keep_log;
    store_repl_meta meta_out;
} dp_item;

struct dp_part {
    uint32_t space, part;
    kv_space *sp;
    repl_part *r;
    bool busy;
    repl_ready rd;        /* in flight while busy */
    store_repl_meta meta; /* as persisted (after the in-flight Ready: meta_next) */
    store_repl_meta meta_next;
    dp_item item;
    bool retry; /* the last group commit failed: submit again */
    dp_input *in_head, *in_tail;
    dp_wait *waits;
    dcopy_reader *incoming; /* a full copy being received (replica side) */
    uint64_t incoming_xfer;
    uint64_t paused_for;       /* --blocking: writes are held while this daemon receives a
                                  full copy and catches up (0: not paused) */
    uint64_t pause_until_ms;   /* ... at most until then (loop time) */
    dp_input *held_head, *held_tail; /* the writes held, in arrival order (IN_WRITE) */
    uint64_t cfg_epoch; /* configuration given to repl */
    bool cfg_pending;   /* a newer configuration waits for the part to be idle */
    dp_part *next;      /* all parts */
};

/* A SEARCH or COUNT across the cluster: one request per partition to its
 * primary, merged into one reply. */
typedef struct gather {
    struct gather *next; /* waiting list (until the client's earlier replies are done) */
    dpart *dp;
    net_reply *reply;
    int kind;       /* KV_SEARCH or KV_COUNT */
    uint64_t limit; /* SEARCH */
    int argc;       /* the request, copied: KIND space args... */
    char **argv;
    size_t *argvlen;
    uint32_t space;
    unsigned pending; /* partitions not answered yet */
    bool started;
    buf err;        /* the first error, if any */
    buf body;       /* SEARCH: merged objects */
    uint64_t found; /* SEARCH: objects in body; COUNT: the sum */
} gather;

typedef struct gather_part {
    gather *g;
    uint32_t part;
} gather_part;

typedef struct dp_peer {
    uint64_t id;
    rclient *repl;        /* to its peer port */
    rclient *fwd;         /* to its client port */
    uint64_t reported_ms; /* when DAEMON.UNREACHABLE was last sent for it */
} dp_peer;

struct dpart {
    dpart_opts o;
    uv_loop_t *loop;
    store *st;
    commit *cm;
    net_server *peer_net;
    uv_timer_t tick;
    uv_prepare_t prepare;
    store_txn rtxn;
    bool rtxn_active;
    cmap *map;
    dp_part *parts;
    dp_peer peers[CMAP_MAX_DAEMONS];
    size_t npeers;
    gather *waiting;    /* searches waiting for their turn on their connection */
    struct xfer *xfers; /* full copies being sent */
    uint64_t next_xfer;
    uv_mutex_t snap_mu; /* snaps_running: full-copy snapshots on the thread pool */
    uv_cond_t snap_cv;
    unsigned snaps_running;
    bool stopping;
};

static void part_pump(dpart *dp, dp_part *p);
static void start_copy(dpart *dp, dp_part *p, uint64_t peer_id);
static void install_copy(dpart *dp, dp_part *p, dcopy_reader *r);
static void hold_write(dp_part *p, dp_input *in);
static void pause_writes(dpart *dp, dp_part *p, uint64_t peer);
static void resume_writes(dpart *dp, dp_part *p, const char *why);
static void gather_poll(dpart *dp);

/* ---- helpers -------------------------------------------------------------------- */

static bool is(const char *w, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(w, name, len) == 0;
}

static dp_part *part_find(dpart *dp, uint32_t space, uint32_t part)
{
    for (dp_part *p = dp->parts; p; p = p->next)
        if (p->space == space && p->part == part) return p;
    return NULL;
}

static dp_peer *peer_get(dpart *dp, uint64_t id)
{
    for (size_t i = 0; i < dp->npeers; i++)
        if (dp->peers[i].id == id) return &dp->peers[i];
    const cmap_daemon *d = cmap_daemon_find(dp->map, id);
    if (!d || dp->npeers == CMAP_MAX_DAEMONS) return NULL;
    dp_peer *pe = &dp->peers[dp->npeers++];
    pe->id = id;
    pe->repl = rclient_new(dp->loop, d->host, d->peer_port, dp->o.host, PEER_TIMEOUT_MS);
    pe->fwd = rclient_new(dp->loop, d->host, d->port, dp->o.host, FORWARD_TIMEOUT_MS);
    return pe;
}

static int rtxn_get(dpart *dp, store_txn **t)
{
    if (!dp->rtxn_active) {
        int rc = store_txn_renew(&dp->rtxn);
        if (rc) return rc;
        dp->rtxn_active = true;
    }
    *t = &dp->rtxn;
    return 0;
}

static void rtxn_release(dpart *dp)
{
    if (dp->rtxn_active) {
        store_txn_reset(&dp->rtxn);
        dp->rtxn_active = false;
    }
}

/* ---- the storage half of a Ready (storage thread) ----------------------------- */

static int exec_ready(store_txn *t, commit_item *ci)
{
    dp_item *it = (dp_item *)ci;
    dp_part *p = it->p;
    const repl_ready *rd = &p->rd;
    int rc;
    if (rd->truncate_from && (rc = store_log_delete_from(t, p->space, p->part, rd->truncate_from)))
        return rc;
    buf b;
    buf_init(&b);
    for (size_t i = 0; i < rd->n_entries; i++) {
        buf_reset(&b);
        repl_entry_encode(&rd->entries[i], &b);
        if ((rc = store_log_put(t, p->space, p->part, rd->entries[i].seq, b.data, b.len))) {
            buf_free(&b);
            return rc;
        }
    }
    buf_free(&b);
    if (rd->compact_to && (rc = store_log_delete_through(t, p->space, p->part, rd->compact_to)))
        return rc;
    for (size_t i = 0; i < rd->n_apply; i++) {
        const repl_entry *e = &rd->apply[i];
        if (e->type == REPL_E_PUT)
            rc = kv_apply_put(t, p->sp, p->part, e->key, e->klen, e->value, e->vlen);
        else if (e->type == REPL_E_DEL)
            rc = kv_apply_del(t, p->sp, p->part, e->key, e->klen);
        else
            rc = 0;
        if (!rc && e->client_id) {
            store_client c = {.client_id = e->client_id,
                              .client_seq = e->client_seq,
                              .seq = e->seq,
                              .rlen = e->rlen,
                              .result = e->result};
            rc = store_client_put(t, p->space, p->part, &c);
        }
        if (rc) return rc;
    }
    return store_repl_meta_put(t, p->space, p->part, &p->meta_next);
}

/* ---- completions (loop thread) -------------------------------------------------- */

static void send_msg(dpart *dp, const repl_msg *m)
{
    dp_peer *pe = peer_get(dp, m->to);
    if (!pe) return;
    buf b;
    buf_init(&b);
    repl_msg_encode(m, &b);
    const char *argv[2] = {"REPL", b.data};
    size_t argvlen[2] = {4, b.len};
    rclient_send(pe->repl, 2, argv, argvlen, NULL, NULL);
    buf_free(&b);
}

static void serve_read(dpart *dp, dp_part *p, kv_op *op, buf *out)
{
    (void)p;
    store_txn *t;
    int rc = rtxn_get(dp, &t);
    if (!rc) rc = kv_exec(t, op, out);
    if (rc) resp_add_errorf(out, "IOERR storage error: %s", mdb_strerror(rc));
}

static void serve_waits(dpart *dp, dp_part *p)
{
    repl_status st;
    repl_status_get(p->r, &st);
    dp_wait **pp = &p->waits;
    while (*pp) {
        dp_wait *w = *pp;
        /* A primary that stays primary into a new epoch keeps its log and
         * commits all of it (I3): its waits keep waiting while it reconciles.
         * One that lost the role answers them: nothing was applied. */
        bool lost = st.role != REPL_ROLE_PRIMARY;
        if (lost || (st.readable && w->seq <= st.applied)) {
            buf *out = net_reply_buf(w->reply);
            if (lost)
                resp_add_error(out, "TRYAGAIN the partition's primary changed; the request was "
                                    "not applied");
            else if (w->op)
                serve_read(dp, p, w->op, out);
            else
                buf_append(out, w->prepared.data, w->prepared.len);
            net_reply_done(w->reply);
            kv_op_free(w->op);
            buf_free(&w->prepared);
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
}

static void handle_events(dpart *dp, dp_part *p, const repl_ready *rd)
{
    for (size_t i = 0; i < rd->n_events; i++) {
        const repl_event *e = &rd->events[i];
        switch (e->type) {
        case REPL_EV_SERVING:
            log_notice("event=partition_serving space=%u partition=%u epoch=%" PRIu64, p->space,
                       p->part, e->epoch);
            break;
        case REPL_EV_NEWER_EPOCH:
            log_info("partition %u/%u saw epoch %" PRIu64 "; waiting for the map", p->space,
                     p->part, e->epoch);
            break;
        case REPL_EV_NEED_COPY:
            start_copy(dp, p, e->peer);
            break;
        case REPL_EV_CAUGHT_UP: {
            if (p->paused_for == e->peer) resume_writes(dp, p, "caught_up");
            log_notice("event=replica_caught_up space=%u partition=%u daemon=%" PRIu64
                       " epoch=%" PRIu64,
                       p->space, p->part, e->peer, e->epoch);
            char a[5][24];
            snprintf(a[0], sizeof a[0], "%" PRIu64, dp->o.self);
            snprintf(a[1], sizeof a[1], "%u", p->space);
            snprintf(a[2], sizeof a[2], "%u", p->part);
            snprintf(a[3], sizeof a[3], "%" PRIu64, e->peer);
            snprintf(a[4], sizeof a[4], "%" PRIu64, e->epoch);
            const char *argv[6] = {"DAEMON.CAUGHT_UP", a[0], a[1], a[2], a[3], a[4]};
            if (dp->o.report) dp->o.report(dp->o.report_arg, 6, argv);
            break;
        }
        }
    }
}

static void on_ready_done(void *arg, commit_item *list)
{
    dpart *dp = arg;
    rtxn_release(dp); /* the applied state changed */
    while (list) {
        dp_item *it = (dp_item *)list;
        list = list->next;
        dp_part *p = it->p;
        if (!p) {
            if (it->base.status)
                log_error("event=storage_error cannot delete the data of dropped space %u: %s",
                          it->drop_space, mdb_strerror(it->base.status));
            else
                log_notice("event=space_data_dropped space=%u", it->drop_space);
            buf_free(&it->base.reply);
            free(it);
            continue;
        }
        if (it->copy) {
            /* a full copy's install: repl already took its seq
             * (repl_install_snapshot); the store now matches */
            if (it->base.status) {
                /* repl already moved to the copy's seq: its state and the
                 * store disagree now, so stop (fail-stop); a restart reloads
                 * both from the store, and the primary copies again */
                log_error("event=storage_error partition %u/%u: installing a full copy failed: "
                          "%s; stopping so that a restart starts from the store",
                          p->space, p->part, mdb_strerror(it->base.status));
                exit(1);
            } else {
                p->meta = it->meta_out;
                log_notice("event=full_copy_installed space=%u partition=%u seq=%" PRIu64, p->space,
                           p->part, it->meta_out.applied);
            }
            dcopy_reader_free(it->copy);
            it->copy = NULL;
            p->busy = false;
            part_pump(dp, p);
            continue;
        }
        if (it->base.status) {
            log_error("event=storage_error partition %u/%u: %s; retrying", p->space, p->part,
                      mdb_strerror(it->base.status));
            p->retry = true;
            continue;
        }
        const repl_ready *rd = &p->rd;
        p->meta = p->meta_next;
        for (size_t i = 0; i < rd->n_msgs; i++)
            send_msg(dp, &rd->msgs[i]);
        for (size_t i = 0; i < rd->n_done; i++) {
            const repl_completion *c = &rd->done[i];
            net_reply *r = (net_reply *)(uintptr_t)c->ctx;
            buf *out = net_reply_buf(r);
            if (c->status == REPL_OK)
                buf_append(out, c->result, c->rlen);
            else
                resp_add_error(out, "TRYAGAIN the partition's primary changed; the write may or "
                                    "may not have been applied");
            net_reply_done(r);
        }
        handle_events(dp, p, rd);
        repl_advance(p->r, rd);
        p->busy = false;
        part_pump(dp, p);
    }
    gather_poll(dp);
}

/* ---- full copies (primary side) ------------------------------------------------------ */

/* A full copy being sent: the image is taken in one read transaction on a
 * thread-pool worker (a large partition must not stall this loop: heartbeats,
 * and so the lease, run on it), then sent in chunks over a connection of its
 * own (COPY.BEGIN, COPY.CHUNK..., COPY.END), so replication messages do not
 * wait behind it. While `snapping`, only the worker touches `image`, and
 * dpart_stop waits for the worker before it closes the store. */
typedef struct xfer {
    struct xfer *next;
    dpart *dp;
    uint64_t id, peer;
    uint32_t space, part;
    rclient *rc;
    buf image;
    uv_work_t work;
    kv_space *sp; /* a reference, held while snapping */
    bool snapping;
    int snap_rc;
    uint64_t seq, seq_epoch;
    uint64_t sent_ms; /* every request answered OK (loop time); a record now */
    uint64_t start_ms; /* loop time of COPY.BEGIN */
    unsigned answered; /* requests answered so far (BEGIN, each chunk, END) */
    unsigned pending; /* requests not answered yet */
    bool failed;
    bool closing; /* being freed: callbacks only count down */
} xfer;

static void xfer_free(dpart *dp, xfer *x)
{
    if (x->closing) return;
    x->closing = true;
    for (xfer **pp = &dp->xfers; *pp; pp = &(*pp)->next)
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    if (x->snapping) return; /* snap_done frees it */
    if (x->rc) rclient_close(x->rc); /* runs the outstanding callbacks, which only count down */
    buf_free(&x->image);
    free(x);
}

static void on_copy_reply(void *arg, const resp_reply *r, int status)
{
    xfer *x = arg;
    if (x->closing) {
        x->pending--;
        return;
    }
    x->answered++;
    if (status < 0 || !r || r->type == RESP_R_ERROR) {
        /* a pause for this copy ends with it (repl asks for another copy) */
        dp_part *p = part_find(x->dp, x->space, x->part);
        if (p && p->paused_for == x->peer) {
            resume_writes(x->dp, p, "copy_failed");
            if (!p->busy) part_pump(x->dp, p);
        }
        if (!x->failed)
            log_warn("full copy %" PRIu64 " of partition %u/%u to daemon %" PRIu64
                     " failed: %s; repl asks again",
                     x->id, x->space, x->part, x->peer,
                     r && r->type == RESP_R_ERROR ? r->str : uv_strerror(status));
        x->failed = true;
    }
    if (--x->pending == 0) {
        if (x->failed) {
            xfer_free(x->dp, x);
            return;
        }
        log_notice("event=full_copy_sent space=%u partition=%u daemon=%" PRIu64 " bytes=%zu",
                   x->space, x->part, x->peer, x->image.len);
        /* kept, without its image, as a record until the receiver has
         * acknowledged the copy (sweep_sent_copies): repl re-requests a copy
         * every copy_retry_ticks, and one that comes while the receiver is
         * still installing must not send the same partition again */
        rclient_close(x->rc);
        x->rc = NULL;
        buf_free(&x->image);
        x->sent_ms = uv_now(x->dp->loop);
    }
}

/* Frees the records of sent copies once the receiver acknowledged them (repl
 * no longer wants a copy for it), it stopped being a replica, this daemon
 * stopped leading the partition, or SENT_KEEP_MS passed (then repl's next
 * request sends a new copy). The bound is short because a receiver that
 * restarted before installing lost the copy and waits for another one; an
 * install that takes longer than it (gigabytes) costs one more copy. */
#define SENT_KEEP_MS 10000
static void sweep_sent_copies(dpart *dp)
{
    uint64_t now = uv_now(dp->loop);
    xfer *next;
    for (xfer *x = dp->xfers; x; x = next) {
        next = x->next;
        if (!x->sent_ms) continue;
        bool done = now - x->sent_ms > SENT_KEEP_MS;
        dp_part *p = part_find(dp, x->space, x->part);
        if (!p) {
            done = true;
        } else if (!done) {
            repl_status st;
            repl_status_get(p->r, &st);
            bool wants = false;
            for (uint32_t i = 0; st.role == REPL_ROLE_PRIMARY && i < st.n_peers; i++)
                if (st.peers[i].id == x->peer && st.peers[i].copy) wants = true;
            done = !wants;
        }
        if (done) xfer_free(dp, x);
    }
}

/* COPY.BEGIN's answer: "+BLOCKING" from a daemon started with --blocking
 * holds the partition's writes from now until it caught up (CAUGHT_UP), the
 * copy failed, this daemon stopped leading the partition, or PAUSE_MAX_MS
 * passed. The snapshot was taken a round trip earlier, so the tail it needs
 * is the few writes of that round trip. */
static void on_copy_begin_reply(void *arg, const resp_reply *r, int status)
{
    xfer *x = arg;
    if (!x->closing && status >= 0 && r && r->type == RESP_R_STATUS &&
        strcmp(r->str, "BLOCKING") == 0) {
        dp_part *p = part_find(x->dp, x->space, x->part);
        if (p) pause_writes(x->dp, p, x->peer);
    }
    on_copy_reply(arg, r, status);
}

static void snap_work(uv_work_t *w)
{
    xfer *x = w->data;
    x->snap_rc = dcopy_snapshot(x->dp->st, x->sp, x->part, &x->seq, &x->seq_epoch, &x->image);
    uv_mutex_lock(&x->dp->snap_mu);
    x->dp->snaps_running--;
    uv_cond_broadcast(&x->dp->snap_cv);
    uv_mutex_unlock(&x->dp->snap_mu);
}

static void send_copy(dpart *dp, xfer *x);

static void snap_done(uv_work_t *w, int status)
{
    xfer *x = w->data;
    x->snapping = false;
    kv_space_unref(x->sp);
    x->sp = NULL;
    if (x->closing) { /* unlinked while snapping (the daemon stops): dp may be gone */
        buf_free(&x->image);
        free(x);
        return;
    }
    dpart *dp = x->dp;
    const cmap_daemon *d = cmap_daemon_find(dp->map, x->peer);
    if (status || x->snap_rc || !d) {
        if (status || x->snap_rc)
            log_warn("partition %u/%u: cannot take a full copy for daemon %" PRIu64 ": %s",
                     x->space, x->part, x->peer,
                     status ? uv_strerror(status) : dcopy_strerror(x->snap_rc));
        xfer_free(dp, x); /* repl asks again */
        return;
    }
    x->rc = rclient_new(dp->loop, d->host, d->peer_port, dp->o.host, 30000);
    send_copy(dp, x);
}

static void start_copy(dpart *dp, dp_part *p, uint64_t peer_id)
{
    for (xfer *x = dp->xfers; x; x = x->next)
        if (x->space == p->space && x->part == p->part && x->peer == peer_id) return;
    if (!cmap_daemon_find(dp->map, peer_id)) return;
    xfer *x = calloc(1, sizeof *x);
    if (!x) abort();
    x->dp = dp;
    x->id = ++dp->next_xfer;
    x->peer = peer_id;
    x->space = p->space;
    x->part = p->part;
    buf_init(&x->image);
    x->sp = p->sp;
    kv_space_ref(x->sp);
    x->snapping = true;
    x->work.data = x;
    x->next = dp->xfers;
    dp->xfers = x;
    uv_mutex_lock(&dp->snap_mu);
    dp->snaps_running++;
    uv_mutex_unlock(&dp->snap_mu);
    int rc = uv_queue_work(dp->loop, &x->work, snap_work, snap_done);
    if (rc) { /* cannot happen with a valid loop; fail the copy, repl asks again */
        uv_mutex_lock(&dp->snap_mu);
        dp->snaps_running--;
        uv_mutex_unlock(&dp->snap_mu);
        x->snapping = false;
        kv_space_unref(x->sp);
        log_warn("partition %u/%u: cannot queue a full copy: %s", p->space, p->part,
                 uv_strerror(rc));
        xfer_free(dp, x);
    }
}

static void send_copy(dpart *dp, xfer *x)
{
    uint64_t peer_id = x->peer;
    x->start_ms = uv_now(dp->loop);
    log_notice("event=full_copy_started space=%u partition=%u daemon=%" PRIu64 " seq=%" PRIu64
               " bytes=%zu",
               x->space, x->part, peer_id, x->seq, x->image.len);
    char a[7][24];
    snprintf(a[0], sizeof a[0], "%" PRIu64, x->id);
    snprintf(a[1], sizeof a[1], "%" PRIu64, dp->o.self);
    snprintf(a[2], sizeof a[2], "%" PRIu64, peer_id);
    snprintf(a[3], sizeof a[3], "%u", x->space);
    snprintf(a[4], sizeof a[4], "%u", x->part);
    snprintf(a[5], sizeof a[5], "%" PRIu64, x->seq);
    snprintf(a[6], sizeof a[6], "%zu", x->image.len);
    const char *begin[8] = {"COPY.BEGIN", a[0], a[1], a[2], a[3], a[4], a[5], a[6]};
    x->pending++;
    rclient_send(x->rc, 8, begin, NULL, on_copy_begin_reply, x);
    dcopy_writer w;
    dcopy_writer_init(&w, x->image.data, x->image.len, DCOPY_DEFAULT_CHUNK);
    const void *chunk;
    size_t n;
    uint64_t off;
    while (dcopy_writer_next(&w, &chunk, &n, &off)) {
        char o[24];
        snprintf(o, sizeof o, "%" PRIu64, off);
        const char *av[4] = {"COPY.CHUNK", a[0], o, chunk};
        size_t al[4] = {10, strlen(a[0]), strlen(o), n};
        x->pending++;
        rclient_send(x->rc, 4, av, al, on_copy_reply, x);
    }
    const char *end[2] = {"COPY.END", a[0]};
    x->pending++;
    rclient_send(x->rc, 2, end, NULL, on_copy_reply, x);
}

void dpart_get_progress(dpart *dp, dpart_progress *pg)
{
    *pg = (dpart_progress){0};
    uint64_t now = uv_now(dp->loop);
    for (xfer *x = dp->xfers; x; x = x->next) {
        if (x->snapping || x->closing || x->failed || x->sent_ms) continue;
        /* chunks are answered in order: all but BEGIN's answer are chunks
         * (END's comes last, when everything was acknowledged) */
        uint64_t acked = x->answered > 1 ? (uint64_t)(x->answered - 1) * DCOPY_DEFAULT_CHUNK : 0;
        if (acked > x->image.len) acked = x->image.len;
        pg->copies++;
        pg->copy_bytes_left += x->image.len - acked;
        uint64_t ms = now > x->start_ms ? now - x->start_ms : 1;
        pg->copy_bytes_per_s += acked * 1000 / ms;
    }
    for (dp_part *p = dp->parts; p; p = p->next) {
        repl_status st;
        repl_status_get(p->r, &st);
        if (st.role != REPL_ROLE_PRIMARY) continue;
        for (uint32_t i = 0; i < st.n_peers; i++) {
            const repl_peer_status *ps = &st.peers[i];
            if (ps->id != st.self && ps->state == REPL_CATCHING_UP && !ps->copy &&
                st.last > ps->match)
                pg->tail_entries_left += st.last - ps->match;
        }
    }
}

/* ---- full copies (replica side) ----------------------------------------------------- */

static int exec_install(store_txn *t, commit_item *ci)
{
    dp_item *it = (dp_item *)ci;
    return dcopy_install(t, it->copy, it->keep_log, &it->meta_out);
}

/* Installs a finished copy: repl first (it decides which stored log to keep),
 * then one storage transaction; the part stays busy until it committed, so
 * the next Ready follows the install (docs/replication.md, Full copy). */
static void install_copy(dpart *dp, dp_part *p, dcopy_reader *r)
{
    dcopy_header h;
    const repl_client *rows;
    size_t n;
    bool keep_log = false;
    int rc = dcopy_reader_header(r, &h);
    if (!rc) rc = dcopy_reader_clients(r, &rows, &n);
    if (!rc) rc = repl_install_snapshot(p->r, h.seq, h.seq_epoch, rows, n, &keep_log);
    if (rc) {
        log_warn("partition %u/%u: full copy through seq %" PRIu64 " not installed: %d", p->space,
                 p->part, h.seq, rc);
        dcopy_reader_free(r);
        return;
    }
    p->busy = true;
    memset(&p->item, 0, sizeof p->item);
    p->item.base.exec = exec_install;
    p->item.dp = dp;
    p->item.p = p;
    p->item.copy = r;
    p->item.keep_log = keep_log;
    buf_init(&p->item.base.reply);
    commit_submit(dp->cm, &p->item.base, &p->item.base);
}

/* ---- driving a part --------------------------------------------------------------- */

static void write_now(dpart *dp, dp_part *p, kv_op *op, net_reply *reply, uint64_t client_id,
                      uint64_t client_seq);

/* Runs queued inputs and the next Ready while the part is idle. */
static void part_pump(dpart *dp, dp_part *p)
{
    while (!p->busy && p->in_head) {
        dp_input *in = p->in_head;
        p->in_head = in->next;
        if (!p->in_head) p->in_tail = NULL;
        if (in->kind == IN_MSG) {
            repl_msg m;
            if (repl_msg_decode(in->bytes.data, in->bytes.len, &m) == 0) {
                repl_recv(p->r, &m);
                repl_msg_free(&m);
            }
            buf_free(&in->bytes);
        } else if (in->kind == IN_INSTALL) {
            install_copy(dp, p, in->copy);
            free(in);
            continue;
        } else if (p->paused_for) {
            hold_write(p, in);
            continue;
        } else {
            write_now(dp, p, in->op, in->reply, in->client_id, in->client_seq);
        }
        free(in);
        if (repl_has_ready(p->r)) break;
    }
    if (!p->busy && p->cfg_pending) {
        p->cfg_pending = false;
        dpart_map(dp, dp->map); /* re-applies the newest configuration */
    }
    if (p->busy || !repl_has_ready(p->r)) {
        serve_waits(dp, p);
        return;
    }
    repl_ready_get(p->r, &p->rd);
    const repl_ready *rd = &p->rd;
    p->meta_next = p->meta;
    if (rd->epoch_changed) p->meta_next.epoch = rd->epoch;
    if (rd->n_apply) p->meta_next.applied = rd->apply[rd->n_apply - 1].seq;
    if (rd->compact_to) {
        p->meta_next.base_seq = rd->compact_to;
        p->meta_next.base_epoch = rd->compact_epoch;
    }
    p->busy = true;
    memset(&p->item, 0, sizeof p->item);
    p->item.base.exec = exec_ready;
    p->item.dp = dp;
    p->item.p = p;
    buf_init(&p->item.base.reply);
    commit_submit(dp->cm, &p->item.base, &p->item.base);
}

static void enqueue(dp_part *p, dp_input *in)
{
    in->next = NULL;
    if (p->in_tail)
        p->in_tail->next = in;
    else
        p->in_head = in;
    p->in_tail = in;
}

/* ---- --blocking rejoin: holding a partition's writes during a full copy ------------------ */

static void hold_write(dp_part *p, dp_input *in)
{
    in->next = NULL;
    if (p->held_tail)
        p->held_tail->next = in;
    else
        p->held_head = in;
    p->held_tail = in;
}

static void pause_writes(dpart *dp, dp_part *p, uint64_t peer)
{
    if (p->paused_for) return;
    p->paused_for = peer;
    p->pause_until_ms = uv_now(dp->loop) + PAUSE_MAX_MS;
    log_notice("event=writes_paused space=%u partition=%u daemon=%" PRIu64
               " reason=blocking_rejoin max_ms=%d",
               p->space, p->part, peer, PAUSE_MAX_MS);
}

/* Ends a pause: the held writes go first, in order, ahead of anything queued
 * since. The caller pumps the part. */
static void resume_writes(dpart *dp, dp_part *p, const char *why)
{
    if (!p->paused_for) return;
    uint64_t held_ms = uv_now(dp->loop) + PAUSE_MAX_MS - p->pause_until_ms;
    log_notice("event=writes_resumed space=%u partition=%u daemon=%" PRIu64
               " reason=%s paused_ms=%" PRIu64,
               p->space, p->part, p->paused_for, why, held_ms);
    p->paused_for = 0;
    if (p->held_head) {
        p->held_tail->next = p->in_head;
        if (!p->in_head) p->in_tail = p->held_tail;
        p->in_head = p->held_head;
        p->held_head = p->held_tail = NULL;
    }
}

/* A write on the primary: compute the resulting object from the newest state
 * (a pending entry, else the store) and hand it to repl. */
static void write_now(dpart *dp, dp_part *p, kv_op *op, net_reply *reply, uint64_t client_id,
                      uint64_t client_seq)
{
    buf *out = net_reply_buf(reply);
    if (!repl_readable(p->r)) {
        resp_add_error(out, "TRYAGAIN this partition is changing primary");
        net_reply_done(reply);
        kv_op_free(op);
        return;
    }
    if (client_id) {
        /* exactly-once: a retry of the client's latest write is answered
         * with the original result, or attaches to it while it commits */
        uint64_t seq;
        const uint8_t *result;
        uint32_t rlen;
        int dup = repl_client_check(p->r, client_id, client_seq, &seq, &result, &rlen);
        if (dup == REPL_DUP_DONE) {
            buf_append(out, result, rlen);
            net_reply_done(reply);
            kv_op_free(op);
            return;
        }
        if (dup == REPL_DUP_PENDING) {
            /* its first attempt is still committing: attach to it and answer
             * with its result (computing it again would see the attempt's
             * own effect: a retried CPUT would fail its own condition) */
            int wrc = repl_write(p->r, REPL_E_PUT, op->key, op->klen, NULL, 0, client_id,
                                 client_seq, NULL, 0, (uint64_t)(uintptr_t)reply, NULL);
            if (wrc) {
                resp_add_errorf(out, "ERR cannot replicate: %s", repl_strerror(wrc));
                net_reply_done(reply);
            }
            kv_op_free(op);
            return;
        }
        if (dup == REPL_ESTALE) {
            resp_add_errorf(out,
                            "ERR stale request: client %" PRIu64 " already wrote a later "
                            "sequence number than %" PRIu64,
                            client_id, client_seq);
            net_reply_done(reply);
            kv_op_free(op);
            return;
        }
    }
    const repl_entry *pend = repl_pending_get(p->r, op->key, op->klen);
    const void *cur = NULL;
    size_t curlen = 0;
    bool exists = false;
    int rc = 0;
    if (pend) {
        exists = pend->type == REPL_E_PUT;
        cur = pend->value;
        curlen = pend->vlen;
    } else {
        store_txn *t;
        rc = rtxn_get(dp, &t);
        if (!rc) {
            rc = store_obj_get(t, p->space, p->part, op->key, op->klen, &cur, &curlen);
            exists = rc == 0;
            if (rc == MDB_NOTFOUND) rc = 0;
        }
    }
    kv_result res;
    if (!rc) rc = kv_compute(op, cur, curlen, exists, &res);
    if (rc) {
        resp_add_errorf(out, "IOERR storage error: %s", mdb_strerror(rc));
        net_reply_done(reply);
        kv_op_free(op);
        return;
    }
    if (res.write == KV_W_NONE && pend) {
        /* The answer (CMPFAIL, NOTFOUND, DEL of nothing, a failed ADD) was
         * computed from a write not yet committed: it may only be given once
         * that write has committed, and if the write is lost instead (a
         * failover), the client is told to retry (linearizability; found by
         * the chaos runs). */
        dp_wait *w = calloc(1, sizeof *w);
        if (!w) abort();
        w->seq = pend->seq;
        w->reply = reply;
        buf_init(&w->prepared);
        buf_append(&w->prepared, res.reply.data, res.reply.len);
        w->next = p->waits;
        p->waits = w;
    } else if (res.write == KV_W_NONE) {
        buf_append(out, res.reply.data, res.reply.len);
        net_reply_done(reply);
    } else {
        int type = res.write == KV_W_PUT ? REPL_E_PUT : REPL_E_DEL;
        rc =
            repl_write(p->r, type, op->key, op->klen, res.value.data, res.value.len, client_id,
                       client_seq, res.reply.data, res.reply.len, (uint64_t)(uintptr_t)reply, NULL);
        if (rc) {
            if (rc == REPL_EBUSY)
                resp_add_error(out, "TRYAGAIN too many writes in flight for this partition");
            else if (rc == REPL_ENOTPRIMARY)
                resp_add_error(out, "TRYAGAIN this daemon is no longer the partition's primary");
            else
                resp_add_errorf(out, "ERR cannot replicate: %s", repl_strerror(rc));
            net_reply_done(reply);
        }
    }
    kv_result_free(&res);
    kv_op_free(op);
}

/* ---- loading and configuring parts -------------------------------------------------- */

typedef struct load_ctx {
    repl_entry *entries;
    buf *blobs; /* entries point into these */
    size_t n, cap;
    int err;
} load_ctx;

static int load_entry(void *arg, uint64_t seq, const void *data, size_t len)
{
    load_ctx *x = arg;
    if (x->n == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 64;
        x->entries = realloc(x->entries, x->cap * sizeof *x->entries);
        x->blobs = realloc(x->blobs, x->cap * sizeof *x->blobs);
        if (!x->entries || !x->blobs) abort();
    }
    buf_init(&x->blobs[x->n]);
    buf_append(&x->blobs[x->n], data, len);
    if (repl_entry_decode(x->blobs[x->n].data, len, &x->entries[x->n]) ||
        x->entries[x->n].seq != seq) {
        x->err = MDB_CORRUPTED;
        buf_free(&x->blobs[x->n]);
        return -1;
    }
    x->n++;
    return 0;
}

typedef struct client_ctx {
    repl_client *rows;
    buf *blobs;
    size_t n, cap;
} client_ctx;

static int load_client(void *arg, const store_client *c)
{
    client_ctx *x = arg;
    size_t rlen = c->rlen;
    if (x->n == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 64;
        x->rows = realloc(x->rows, x->cap * sizeof *x->rows);
        x->blobs = realloc(x->blobs, x->cap * sizeof *x->blobs);
        if (!x->rows || !x->blobs) abort();
    }
    buf_init(&x->blobs[x->n]);
    buf_append(&x->blobs[x->n], c->result, rlen);
    x->rows[x->n] = (repl_client){.client_id = c->client_id,
                                  .client_seq = c->client_seq,
                                  .seq = c->seq,
                                  .rlen = (uint32_t)rlen,
                                  .result = rlen ? (const uint8_t *)x->blobs[x->n].data : NULL};
    x->n++;
    return 0;
}

static dp_part *part_open(dpart *dp, const cmap_space *cs, uint32_t part)
{
    store_txn t;
    if (store_txn_begin(dp->st, false, &t)) return NULL;
    dp_part *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->space = cs->id;
    p->part = part;
    p->sp = kv_space_new(cs->id, cs->schema);
    load_ctx lx = {0};
    client_ctx cx = {0};
    int rc = store_repl_meta_get(&t, cs->id, part, &p->meta);
    if (!rc) rc = store_log_scan(&t, cs->id, part, p->meta.base_seq + 1, load_entry, &lx);
    if (!rc) rc = lx.err;
    if (!rc) rc = store_client_scan(&t, cs->id, part, load_client, &cx);
    store_txn_abort(&t);
    repl_opts ro;
    repl_opts_init(&ro, dp->o.self, cs->id, part);
    if (dp->map->settings.log_retention) ro.retain_entries = dp->map->settings.log_retention;
    repl_persisted ps = {.epoch = p->meta.epoch,
                         .applied = p->meta.applied,
                         .base_seq = p->meta.base_seq,
                         .base_epoch = p->meta.base_epoch,
                         .entries = lx.entries,
                         .n_entries = lx.n,
                         .clients = cx.rows,
                         .n_clients = cx.n};
    bool fresh = !p->meta.epoch && !p->meta.applied && !lx.n && !cx.n;
    if (!rc) rc = repl_new(&ro, fresh ? NULL : &ps, &p->r);
    for (size_t i = 0; i < lx.n; i++)
        buf_free(&lx.blobs[i]);
    for (size_t i = 0; i < cx.n; i++)
        buf_free(&cx.blobs[i]);
    free(lx.entries);
    free(lx.blobs);
    free(cx.rows);
    free(cx.blobs);
    if (rc) {
        log_error("event=storage_error cannot load partition %u/%u: error %d", cs->id, part, rc);
        kv_space_unref(p->sp);
        free(p);
        return NULL;
    }
    p->next = dp->parts;
    dp->parts = p;
    return p;
}

static void part_configure(dpart *dp, dp_part *p, const cmap_partition *pt)
{
    if (pt->epoch <= p->cfg_epoch) return;
    if (p->busy) {
        p->cfg_pending = true;
        return;
    }
    uint64_t ids[CMAP_MAX_REPLICAS];
    uint8_t states[CMAP_MAX_REPLICAS];
    for (uint32_t i = 0; i < pt->nreplicas; i++) {
        ids[i] = pt->replicas[i].daemon;
        states[i] = pt->replicas[i].state;
    }
    bool was_serving = repl_readable(p->r);
    int rc = repl_config(p->r, pt->epoch, ids, states, pt->nreplicas);
    if (was_serving && !repl_readable(p->r))
        log_notice("event=partition_stopped_serving space=%u partition=%u epoch=%" PRIu64, p->space,
                   p->part, pt->epoch);
    if (rc && rc != REPL_ESTALE)
        log_warn("partition %u/%u: configuration of epoch %" PRIu64 " refused: %s", p->space,
                 p->part, pt->epoch, repl_strerror(rc));
    p->cfg_epoch = pt->epoch;
    part_pump(dp, p);
}

static int exec_drop(store_txn *t, commit_item *ci)
{
    return store_drop_space(t, ((dp_item *)ci)->drop_space);
}

/* Parts of spaces the map no longer has: their clients are answered, their
 * state machines freed, and their data deleted by the storage thread. A busy
 * part is dropped on a later map (or tick) once its Ready is done. */
/* Frees a part taken off dp->parts (not busy): writes held or queued and
 * reads waiting for a commit are answered with err, an incoming copy is
 * dropped. why names the end of a --blocking pause in the log. */
static void part_free(dpart *dp, dp_part *p, const char *why, const char *err)
{
    resume_writes(dp, p, why);
    while (p->in_head) {
        dp_input *in = p->in_head;
        p->in_head = in->next;
        if (in->kind == IN_WRITE) {
            resp_add_error(net_reply_buf(in->reply), err);
            net_reply_done(in->reply);
            kv_op_free(in->op);
        }
        if (in->copy) dcopy_reader_free(in->copy);
        buf_free(&in->bytes);
        free(in);
    }
    while (p->waits) {
        dp_wait *w = p->waits;
        p->waits = w->next;
        resp_add_error(net_reply_buf(w->reply), err);
        net_reply_done(w->reply);
        kv_op_free(w->op);
        buf_free(&w->prepared);
        free(w);
    }
    if (p->incoming) dcopy_reader_free(p->incoming);
    repl_free(p->r);
    kv_space_unref(p->sp);
    free(p);
}

static void drop_gone_spaces(dpart *dp)
{
    dp_part **pp = &dp->parts;
    uint32_t dropped[16];
    size_t ndropped = 0;
    while (*pp) {
        dp_part *p = *pp;
        if (cmap_space_by_id(dp->map, p->space) || p->busy) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        bool seen = false;
        for (size_t i = 0; i < ndropped; i++)
            seen = seen || dropped[i] == p->space;
        if (!seen && ndropped < sizeof dropped / sizeof dropped[0]) {
            dropped[ndropped++] = p->space;
            dp_item *it = calloc(1, sizeof *it);
            if (!it) abort();
            it->dp = dp;
            it->drop_space = p->space;
            it->base.exec = exec_drop;
            buf_init(&it->base.reply);
            commit_submit(dp->cm, &it->base, &it->base);
        }
        part_free(dp, p, "space_dropped", "NOSPACE the space was dropped");
    }
}

void dpart_map(dpart *dp, const cmap *m)
{
    if (m != dp->map) {
        buf b;
        buf_init(&b);
        cmap_encode(m, &b);
        cmap *copy;
        if (cmap_decode(b.data, b.len, &copy) == 0) {
            cmap_free(dp->map);
            dp->map = copy;
        }
        buf_free(&b);
    }
    for (uint32_t i = 0; i < dp->map->nspaces; i++) {
        const cmap_space *cs = &dp->map->spaces[i];
        for (uint32_t part = 0; part < cs->schema->partitions; part++) {
            const cmap_partition *pt = &cs->parts[part];
            bool mine = false;
            for (uint32_t j = 0; j < pt->nreplicas; j++)
                if (pt->replicas[j].daemon == dp->o.self) mine = true;
            dp_part *p = part_find(dp, cs->id, part);
            if (!p && !mine) continue;
            if (!p && !(p = part_open(dp, cs, part))) continue;
            if (dp->map->settings.log_retention)
                repl_set_retention(p->r, dp->map->settings.log_retention);
            part_configure(dp, p, pt);
        }
    }
    drop_gone_spaces(dp);
}

/* ---- client commands ----------------------------------------------------------------- */

bool dpart_is_data_command(const char *name, size_t len)
{
    return kv_kind_of(name, len) != 0 || is(name, len, "SEARCH.PART") || is(name, len, "SEQ");
}

typedef struct fwd_ctx {
    net_reply *reply;
    char to[96];
} fwd_ctx;

static void on_forwarded(void *arg, const resp_reply *r, int status)
{
    fwd_ctx *f = arg;
    buf *out = net_reply_buf(f->reply);
    if (status == UV_ECONNREFUSED)
        resp_add_errorf(out, "TRYAGAIN the partition's primary at %s is unreachable from here",
                        f->to);
    else if (status < 0 || !r) /* it may have arrived before the connection failed */
        resp_add_errorf(out,
                        "TRYAGAIN the partition's primary at %s did not answer; the request "
                        "may or may not have been applied",
                        f->to);
    else
        resp_reply_encode(out, r);
    net_reply_done(f->reply);
    free(f);
}

static void forward(dpart *dp, net_conn *c, uint64_t primary, int argc, char **argv,
                    size_t *argvlen)
{
    dp_peer *pe = peer_get(dp, primary);
    if (!pe) {
        resp_add_error(net_reply_now(c), "TRYAGAIN the partition's primary is unknown here");
        return;
    }
    fwd_ctx *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->reply = net_reply_defer(c);
    snprintf(f->to, sizeof f->to, "%s", rclient_addr(pe->fwd));
    const char **av = malloc(sizeof(char *) * (size_t)(argc + 1));
    size_t *al = malloc(sizeof(size_t) * (size_t)(argc + 1));
    if (!av || !al) abort();
    av[0] = "FWD";
    al[0] = 3;
    for (int i = 0; i < argc; i++) {
        av[i + 1] = argv[i];
        al[i + 1] = argvlen[i];
    }
    rclient_send(pe->fwd, argc + 1, av, al, on_forwarded, f);
    free(av);
    free(al);
}

/* ---- searches across the cluster ------------------------------------------------------ */

static void gather_add(gather *g, const resp_reply *r)
{
    if (g->err.len) return;
    if (r->type == RESP_R_ERROR) {
        resp_add_error(&g->err, r->str);
        return;
    }
    if (g->kind == KV_COUNT) {
        if (r->type == RESP_R_INT)
            g->found += (uint64_t)r->integer;
        else
            resp_add_error(&g->err, "ERR malformed COUNT reply from a daemon");
        return;
    }
    if (r->type != RESP_R_ARRAY) {
        resp_add_error(&g->err, "ERR malformed SEARCH reply from a daemon");
        return;
    }
    for (size_t i = 0; i < r->elements && g->found < g->limit; i++) {
        resp_reply_encode(&g->body, r->element[i]);
        g->found++;
    }
}

static void gather_free(gather *g)
{
    buf_free(&g->err);
    buf_free(&g->body);
    free(g->argv);
    free(g);
}

static void gather_finish(gather *g)
{
    buf *out = net_reply_buf(g->reply);
    if (g->err.len) {
        buf_append(out, g->err.data, g->err.len);
    } else if (g->kind == KV_COUNT) {
        resp_add_int(out, (long long)g->found);
    } else {
        resp_add_array(out, (long long)g->found);
        buf_append(out, g->body.data, g->body.len);
    }
    net_reply_done(g->reply);
    gather_free(g);
}

static void gather_part_done(gather *g)
{
    if (--g->pending == 0) gather_finish(g);
}

static void on_part_reply(void *arg, const resp_reply *r, int status)
{
    gather_part *gp = arg;
    gather *g = gp->g;
    if (status < 0 || !r) {
        if (!g->err.len)
            resp_add_errorf(&g->err, "TRYAGAIN partition %u's primary is unreachable from here",
                            gp->part);
    } else {
        gather_add(g, r);
    }
    free(gp);
    gather_part_done(g);
}

/* Runs one partition's share of a search here (this daemon is its primary):
 * argv is KIND space args... */
static void search_local(dpart *dp, const cmap_space *cs, uint32_t part, int argc, char **argv,
                         size_t *argvlen, buf *out)
{
    dp_part *p = part_find(dp, cs->id, part);
    if (!dp->o.lease_ok(dp->o.lease_arg)) {
        resp_add_error(out, "NOQUORUM this daemon cannot reach the coordinator majority; it "
                            "serves nothing");
        return;
    }
    if (!p || !repl_readable(p->r)) {
        resp_add_errorf(out, "TRYAGAIN partition %u is not serving yet", part);
        return;
    }
    kv_op *op;
    buf err;
    buf_init(&err);
    if (kv_parse(cs, p->sp, argc, argv, argvlen, dp->o.max_key, &op, &err)) {
        buf_append(out, err.data, err.len);
        buf_free(&err);
        return;
    }
    buf_free(&err);
    op->one_part = true;
    op->only_part = part;
    serve_read(dp, p, op, out);
    kv_op_free(op);
}

/* Sends each partition's share to its primary (or runs it here). */
static void gather_start(gather *g)
{
    dpart *dp = g->dp;
    g->started = true;
    const cmap_space *cs = cmap_space_by_id(dp->map, g->space);
    if (!cs) {
        resp_add_error(&g->err, "NOSPACE the space was dropped");
        gather_finish(g);
        return;
    }
    g->pending = 1; /* held until every partition is sent */
    for (uint32_t part = 0; part < cs->schema->partitions && !g->err.len; part++) {
        const cmap_partition *pt = &cs->parts[part];
        uint64_t primary = pt->nreplicas ? pt->replicas[0].daemon : 0;
        if (pt->health == CMAP_H_UNAVAILABLE || !primary) {
            resp_add_errorf(&g->err, "UNAVAILABLE partition %u of %s has no live replica", part,
                            cs->schema->name);
            break;
        }
        if (primary == dp->o.self) {
            buf out;
            buf_init(&out);
            search_local(dp, cs, part, g->argc, g->argv, g->argvlen, &out);
            resp_reply *r;
            size_t used;
            if (resp_reply_parse(out.data, out.len, &used, &r) == RESP_OK) {
                gather_add(g, r);
                resp_reply_free(r);
            }
            buf_free(&out);
            continue;
        }
        dp_peer *pe = peer_get(dp, primary);
        if (!pe) {
            resp_add_errorf(&g->err, "TRYAGAIN partition %u's primary is unknown here", part);
            break;
        }
        char pbuf[16];
        snprintf(pbuf, sizeof pbuf, "%u", part);
        const char **av = malloc(sizeof(char *) * (size_t)(g->argc + 2));
        size_t *al = malloc(sizeof(size_t) * (size_t)(g->argc + 2));
        if (!av || !al) abort();
        av[0] = "SEARCH.PART";
        al[0] = 11;
        av[1] = pbuf;
        al[1] = strlen(pbuf);
        for (int i = 0; i < g->argc; i++) {
            av[i + 2] = g->argv[i];
            al[i + 2] = g->argvlen[i];
        }
        gather_part *gp = calloc(1, sizeof *gp);
        if (!gp) abort();
        gp->g = g;
        gp->part = part;
        g->pending++;
        rclient_send(pe->fwd, g->argc + 2, av, al, on_part_reply, gp);
        free(av);
        free(al);
    }
    gather_part_done(g);
}

/* Starts the searches whose turn has come: every earlier reply of their
 * connection is done, so they see the client's own earlier writes. */
static void gather_poll(dpart *dp)
{
    gather **pp = &dp->waiting;
    while (*pp) {
        gather *g = *pp;
        if (net_reply_is_next(g->reply)) {
            *pp = g->next;
            gather_start(g);
        } else {
            pp = &g->next;
        }
    }
}

static void search_cluster(dpart *dp, net_conn *c, const cmap_space *cs, int argc, char **argv,
                           size_t *argvlen)
{
    /* validate here so a bad request fails once, not once per partition */
    kv_space *sp = kv_space_new(cs->id, cs->schema);
    kv_op *op;
    buf err;
    buf_init(&err);
    int rc = kv_parse(cs, sp, argc, argv, argvlen, dp->o.max_key, &op, &err);
    kv_space_unref(sp);
    if (rc) {
        buf_append(net_reply_now(c), err.data, err.len);
        buf_free(&err);
        return;
    }
    buf_free(&err);
    gather *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->dp = dp;
    g->kind = op->kind;
    g->limit = op->limit;
    g->space = cs->id;
    kv_op_free(op);
    buf_init(&g->err);
    buf_init(&g->body);
    resp_argv_copy(argc, argv, argvlen, &g->argv, &g->argvlen);
    g->argc = argc;
    g->reply = net_reply_defer(c);
    g->next = dp->waiting;
    dp->waiting = g;
    gather_poll(dp);
}

/* SEARCH.PART part KIND space args... — one partition's share, on its primary. */
static void search_part(dpart *dp, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    buf *out = net_reply_now(c);
    char num[16];
    uint32_t part = 0;
    if (argc < 4 || argvlen[1] == 0 || argvlen[1] >= sizeof num) {
        resp_add_error(out, "ERR usage: SEARCH.PART part SEARCH|COUNT space [predicates]");
        return;
    }
    memcpy(num, argv[1], argvlen[1]);
    num[argvlen[1]] = 0;
    char *end;
    unsigned long v = strtoul(num, &end, 10);
    int kind = kv_kind_of(argv[2], argvlen[2]);
    const cmap_space *cs = cmap_space_find(dp->map, argv[3], argvlen[3]);
    if (*end || (kind != KV_SEARCH && kind != KV_COUNT)) {
        resp_add_error(out, "ERR usage: SEARCH.PART part SEARCH|COUNT space [predicates]");
        return;
    }
    if (!cs) {
        kv_reply_nospace(out, argv[3], argvlen[3]);
        return;
    }
    if (v >= cs->schema->partitions) {
        resp_add_errorf(out, "ERR space %s has no partition %lu", cs->schema->name, v);
        return;
    }
    part = (uint32_t)v;
    const cmap_partition *pt = &cs->parts[part];
    if (!pt->nreplicas || pt->replicas[0].daemon != dp->o.self) {
        resp_add_errorf(out, "TRYAGAIN this daemon is not partition %u's primary", part);
        return;
    }
    search_local(dp, cs, part, argc - 2, argv + 2, argvlen + 2, out);
}

void dpart_dispatch(dpart *dp, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    if (is(argv[0], argvlen[0], "SEARCH.PART")) {
        search_part(dp, c, argc, argv, argvlen);
        return;
    }
    bool forwarded = false;
    if (is(argv[0], argvlen[0], "FWD") && argc > 1) {
        forwarded = true;
        argc--, argv++, argvlen++;
    }
    /* SEQ client_id client_seq <write>: a write that may be retried and is
     * applied once (the client table is replicated state, DESIGN section 6). */
    int full_argc = argc;
    char **full_argv = argv;
    size_t *full_argvlen = argvlen;
    uint64_t client_id = 0, client_seq = 0;
    if (is(argv[0], argvlen[0], "SEQ")) {
        char tmp[2][24];
        char *end;
        bool ok = argc >= 4;
        for (int i = 0; ok && i < 2; i++) {
            ok = argvlen[1 + i] > 0 && argvlen[1 + i] < sizeof tmp[i];
            if (!ok) break;
            memcpy(tmp[i], argv[1 + i], argvlen[1 + i]);
            tmp[i][argvlen[1 + i]] = 0;
            unsigned long long v = strtoull(tmp[i], &end, 10);
            ok = *end == 0 && v > 0 && tmp[i][0] != '-';
            if (i == 0)
                client_id = v;
            else
                client_seq = v;
        }
        if (!ok || !kv_is_write(kv_kind_of(argv[3], argvlen[3]))) {
            resp_add_error(net_reply_now(c), "ERR usage: SEQ client_id client_seq "
                                             "PUT|DEL|CPUT|ADD ... (ids are positive integers)");
            return;
        }
        argc -= 3, argv += 3, argvlen += 3;
    }
    if (argc < 2) {
        resp_add_errorf(net_reply_now(c), "ERR wrong number of arguments for '%.*s'",
                        (int)argvlen[0], argv[0]);
        return;
    }
    const cmap_space *cs = cmap_space_find(dp->map, argv[1], argvlen[1]);
    if (!cs) {
        /* A space added a moment ago reaches daemons with the next map: ask
         * for it now, and say which map this answer comes from. */
        if (dp->o.want_map) dp->o.want_map(dp->o.report_arg);
        resp_add_errorf(net_reply_now(c),
                        "NOSPACE no such space '%.*s' (in map version %" PRIu64 " of this daemon)",
                        (int)(argvlen[1] > 64 ? 64 : argvlen[1]), argv[1], dp->map->version);
        return;
    }
    int kind = kv_kind_of(argv[0], argvlen[0]);
    if (kind == KV_SEARCH || kind == KV_COUNT) {
        search_cluster(dp, c, cs, argc, argv, argvlen);
        return;
    }
    if (argc < 3) {
        resp_add_errorf(net_reply_now(c), "ERR wrong number of arguments for '%.*s'",
                        (int)argvlen[0], argv[0]);
        return;
    }
    /* The key picks the partition; the primary validates the rest. */
    uint32_t part = cmap_partition_of(cs, argv[2], argvlen[2]);
    const cmap_partition *pt = &cs->parts[part];
    uint64_t primary = pt->nreplicas ? pt->replicas[0].daemon : 0;
    if (pt->health == CMAP_H_UNAVAILABLE || !primary) {
        resp_add_errorf(net_reply_now(c), "UNAVAILABLE partition %u of %s has no live replica",
                        part, cs->schema->name);
        return;
    }
    if (primary != dp->o.self) {
        const cmap_daemon *pd = cmap_daemon_find(dp->map, primary);
        if (forwarded)
            resp_add_error(net_reply_now(c), "TRYAGAIN this daemon is not the partition's primary");
        else if ((net_conn_flags(c) & DPART_CONN_REDIRECT) && pd)
            resp_add_errorf(net_reply_now(c), "MOVED %u %s:%u %" PRIu64, part, pd->host,
                            (unsigned)pd->port, dp->map->version);
        else
            forward(dp, c, primary, full_argc, full_argv, full_argvlen);
        return;
    }
    if (!dp->o.lease_ok(dp->o.lease_arg)) {
        resp_add_error(net_reply_now(c), "NOQUORUM this daemon cannot reach the coordinator "
                                         "majority; it serves nothing");
        return;
    }
    dp_part *p = part_find(dp, cs->id, part);
    if (!p || !repl_readable(p->r)) {
        resp_add_error(net_reply_now(c), "TRYAGAIN this partition is not serving yet");
        return;
    }
    kv_op *op;
    buf err;
    buf_init(&err);
    if (kv_parse(cs, p->sp, argc, argv, argvlen, dp->o.max_key, &op, &err)) {
        buf_append(net_reply_now(c), err.data, err.len);
        buf_free(&err);
        return;
    }
    buf_free(&err);
    kv_op_detach(op);
    if (!kv_is_write(op->kind)) {
        if (!net_conn_busy(c)) {
            serve_read(dp, p, op, net_reply_now(c));
            kv_op_free(op);
            return;
        }
        repl_status st;
        repl_status_get(p->r, &st);
        dp_wait *w = calloc(1, sizeof *w);
        if (!w) abort();
        w->seq = st.last;
        w->op = op;
        w->reply = net_reply_defer(c);
        w->next = p->waits;
        p->waits = w;
        serve_waits(dp, p);
        return;
    }
    net_reply *reply = net_reply_defer(c);
    if (p->busy || p->paused_for) {
        dp_input *in = calloc(1, sizeof *in);
        if (!in) abort();
        in->kind = IN_WRITE;
        in->op = op;
        in->reply = reply;
        in->client_id = client_id;
        in->client_seq = client_seq;
        if (p->paused_for)
            hold_write(p, in);
        else
            enqueue(p, in);
        return;
    }
    write_now(dp, p, op, reply, client_id, client_seq);
    part_pump(dp, p);
}

/* ---- peers ---------------------------------------------------------------------------- */

static bool arg_u64(const char *p, size_t n, uint64_t *out)
{
    char t[24];
    if (n == 0 || n >= sizeof t) return false;
    memcpy(t, p, n);
    t[n] = 0;
    char *end;
    unsigned long long v = strtoull(t, &end, 10);
    if (*end || t[0] == '-') return false;
    *out = v;
    return true;
}

/* The replica side of a full copy: COPY.BEGIN xfer from to space part seq
 * bytes, COPY.CHUNK xfer offset data..., COPY.END xfer. Nothing is stored
 * before COPY.END validated the whole image; then it is installed once the
 * part is idle. */
static void copy_command(dpart *dp, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    buf *out = net_reply_now(c);
    uint64_t v[7] = {0};
    int need = is(argv[0], argvlen[0], "COPY.BEGIN")   ? 8
               : is(argv[0], argvlen[0], "COPY.CHUNK") ? 4
                                                       : 2;
    bool ok = argc == need;
    for (int i = 1; ok && i < argc && i < 8; i++)
        if (!(need == 4 && i == 3)) ok = arg_u64(argv[i], argvlen[i], &v[i - 1]);
    if (!ok) {
        resp_add_error(out, "ERR usage: COPY.BEGIN xfer from to space part seq bytes | "
                            "COPY.CHUNK xfer offset data | COPY.END xfer");
        return;
    }
    if (need == 8) {
        uint64_t xid = v[0], to = v[2], space = v[3], part = v[4], bytes = v[6];
        dp_part *p = to == dp->o.self && space <= UINT32_MAX && part <= UINT32_MAX
                         ? part_find(dp, (uint32_t)space, (uint32_t)part)
                         : NULL;
        if (!p) {
            resp_add_error(out, "ERR this daemon holds no such partition");
            return;
        }
        if (p->incoming) dcopy_reader_free(p->incoming);
        p->incoming = NULL;
        int rc = dcopy_reader_new(&p->incoming, p->sp, p->part, (size_t)bytes + 1);
        if (rc) {
            resp_add_errorf(out, "ERR cannot receive the copy: %s", dcopy_strerror(rc));
            return;
        }
        p->incoming_xfer = xid;
        log_notice("event=full_copy_receiving space=%u partition=%u bytes=%" PRIu64
                   " blocking=%d",
                   p->space, p->part, bytes, dp->o.blocking);
        /* "+BLOCKING" asks the primary to hold the partition's writes until
         * this daemon has caught up (--blocking); older primaries read any
         * status reply as success */
        resp_add_simple(out, dp->o.blocking ? "BLOCKING" : "OK");
        return;
    }
    dp_part *p = NULL;
    for (dp_part *q = dp->parts; q; q = q->next)
        if (q->incoming && q->incoming_xfer == v[0]) p = q;
    if (!p) {
        resp_add_error(out, "ERR no such transfer");
        return;
    }
    int rc = need == 4 ? dcopy_reader_feed(p->incoming, v[1], argv[3], argvlen[3])
                       : dcopy_reader_finish(p->incoming, &(dcopy_header){0});
    if (rc) {
        resp_add_errorf(out, "ERR full copy refused: %s", dcopy_strerror(rc));
        dcopy_reader_free(p->incoming);
        p->incoming = NULL;
        return;
    }
    if (need == 2) { /* COPY.END: install when the part is idle */
        dcopy_reader *r = p->incoming;
        p->incoming = NULL;
        if (p->busy) {
            dp_input *in = calloc(1, sizeof *in);
            if (!in) abort();
            in->kind = IN_INSTALL;
            in->copy = r;
            enqueue(p, in);
        } else {
            install_copy(dp, p, r);
        }
    }
    resp_add_simple(out, "OK");
}

static void peer_dispatch(void *arg, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    dpart *dp = arg;
    if (argvlen[0] > 5 && !strncasecmp(argv[0], "COPY.", 5)) {
        copy_command(dp, c, argc, argv, argvlen);
        return;
    }
    if (is(argv[0], argvlen[0], "REPL") && argc == 2) {
        repl_msg m;
        if (repl_msg_decode(argv[1], argvlen[1], &m)) {
            log_warn("dropping an undecodable replication message from %s", net_conn_peer(c));
            return;
        }
        dp_part *p = m.to == dp->o.self ? part_find(dp, m.space, m.part) : NULL;
        if (p && p->busy) {
            dp_input *in = calloc(1, sizeof *in);
            if (!in) abort();
            in->kind = IN_MSG;
            buf_init(&in->bytes);
            buf_append(&in->bytes, argv[1], argvlen[1]);
            enqueue(p, in);
        } else if (p) {
            repl_recv(p->r, &m);
            part_pump(dp, p);
        }
        repl_msg_free(&m);
        return;
    }
    if (is(argv[0], argvlen[0], "PING")) {
        resp_add_simple(net_reply_now(c), "PONG");
        return;
    }
    resp_add_error(net_reply_now(c), "ERR the peer port takes only replication traffic");
}

static void drop_gone_spaces(dpart *dp);

/* A backup whose replication port refuses connections has no process behind
 * it: tell the coordinator, which takes it out of the partitions it backs up
 * at once so commits stop waiting for it (DESIGN section 6). Once a second
 * per daemon at most. */
static void report_unreachable_backups(dpart *dp)
{
    uint64_t now = uv_now(dp->loop);
    for (size_t i = 0; i < dp->npeers; i++) {
        dp_peer *pe = &dp->peers[i];
        if (!rclient_refused(pe->repl) || now - pe->reported_ms < 1000) continue;
        const cmap_daemon *d = cmap_daemon_find(dp->map, pe->id);
        if (!d || d->state != CMAP_D_ONLINE) continue;
        bool backs_up_mine = false;
        for (uint32_t s = 0; s < dp->map->nspaces && !backs_up_mine; s++) {
            const cmap_space *cs = &dp->map->spaces[s];
            for (uint32_t p = 0; p < cs->schema->partitions && !backs_up_mine; p++) {
                const cmap_partition *pt = &cs->parts[p];
                if (!pt->nreplicas || pt->replicas[0].daemon != dp->o.self) continue;
                for (uint32_t j = 1; j < pt->nreplicas; j++)
                    backs_up_mine = backs_up_mine || pt->replicas[j].daemon == pe->id;
            }
        }
        if (!backs_up_mine) continue;
        pe->reported_ms = now;
        char a[2][24];
        snprintf(a[0], sizeof a[0], "%" PRIu64, dp->o.self);
        snprintf(a[1], sizeof a[1], "%" PRIu64, pe->id);
        const char *argv[3] = {"DAEMON.UNREACHABLE", a[0], a[1]};
        log_warn("event=backup_unreachable daemon=%" PRIu64 ": its replication port %s refuses "
                 "connections",
                 pe->id, rclient_addr(pe->repl));
        if (dp->o.report) dp->o.report(dp->o.report_arg, 3, argv);
    }
}

static void on_tick(uv_timer_t *t)
{
    dpart *dp = t->data;
    gather_poll(dp);
    report_unreachable_backups(dp);
    sweep_sent_copies(dp);
    drop_gone_spaces(dp); /* parts that were busy when their space was dropped */
    for (dp_part *p = dp->parts; p; p = p->next) {
        if (p->retry && p->busy) {
            p->retry = false;
            memset(&p->item.base, 0, sizeof p->item.base);
            p->item.base.exec = exec_ready;
            commit_submit(dp->cm, &p->item.base, &p->item.base);
            continue;
        }
        if (p->busy) continue;
        if (p->paused_for) {
            repl_status st;
            repl_status_get(p->r, &st);
            if (st.role != REPL_ROLE_PRIMARY)
                resume_writes(dp, p, "not_primary");
            else if (uv_now(dp->loop) >= p->pause_until_ms)
                resume_writes(dp, p, "timeout");
        }
        repl_tick(p->r);
        part_pump(dp, p);
    }
}

static void on_prepare(uv_prepare_t *h)
{
    rtxn_release(h->data);
}

/* ---- life cycle ------------------------------------------------------------------------- */

int dpart_start(dpart **out, uv_loop_t *loop, const dpart_opts *o, char *err, size_t errlen)
{
    dpart *dp = calloc(1, sizeof *dp);
    if (!dp) abort();
    dp->o = *o;
    dp->loop = loop;
    dp->map = cmap_new();
    if (store_open(&dp->st, o->dir, o->sync_policy, STORE_DEFAULT_MAP_SIZE, err, errlen))
        goto err_after_alloc;
    if (store_txn_begin(dp->st, false, &dp->rtxn)) {
        snprintf(err, errlen, "cannot begin a read transaction");
        goto err_after_store;
    }
    store_txn_reset(&dp->rtxn);
    if (commit_start(&dp->cm, dp->st, loop, on_ready_done, dp)) {
        snprintf(err, errlen, "cannot start the storage thread");
        goto err_after_rtxn;
    }
    net_config pc = {
        .host = o->host,
        .port = o->peer_port,
        .limits = {REPL_MAX_VALUE * 2 + (1u << 20), 8, REPL_MAX_VALUE * 2 + (1u << 20)},
        .max_conns = 4096,
        .dispatch = peer_dispatch,
        .arg = dp};
    if (net_server_start(&dp->peer_net, loop, &pc, err, errlen)) goto err_after_commit;
    uv_timer_init(loop, &dp->tick);
    dp->tick.data = dp;
    uv_timer_start(&dp->tick, on_tick, TICK_MS, TICK_MS);
    uv_prepare_init(loop, &dp->prepare);
    dp->prepare.data = dp;
    uv_prepare_start(&dp->prepare, on_prepare);
    if (uv_mutex_init(&dp->snap_mu) || uv_cond_init(&dp->snap_cv)) abort();
    *out = dp;
    return 0;

err_after_commit:
    commit_stop(dp->cm);
err_after_rtxn:
    store_txn_abort(&dp->rtxn);
err_after_store:
    store_close(dp->st);
err_after_alloc:
    cmap_free(dp->map);
    free(dp);
    return -1;
}

uint32_t dpart_primaries(const dpart *dp)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < dp->map->nspaces; i++) {
        const cmap_space *cs = &dp->map->spaces[i];
        for (uint32_t p = 0; p < cs->schema->partitions; p++)
            n += cs->parts[p].nreplicas && cs->parts[p].replicas[0].daemon == dp->o.self;
    }
    return n;
}

void dpart_stop(dpart *dp)
{
    if (!dp) return;
    dp->stopping = true;
    uv_timer_stop(&dp->tick);
    uv_close((uv_handle_t *)&dp->tick, NULL);
    uv_prepare_stop(&dp->prepare);
    uv_close((uv_handle_t *)&dp->prepare, NULL);
    net_server_close(dp->peer_net);
    commit_stop(dp->cm); /* runs the last completions */
    for (size_t i = 0; i < dp->npeers; i++) {
        rclient_close(dp->peers[i].repl);
        rclient_close(dp->peers[i].fwd);
    }
    while (dp->waiting) {
        gather *g = dp->waiting;
        dp->waiting = g->next;
        resp_add_error(net_reply_buf(g->reply), "TRYAGAIN the daemon is shutting down");
        net_reply_done(g->reply);
        gather_free(g);
    }
    while (dp->parts) {
        dp_part *p = dp->parts;
        dp->parts = p->next;
        part_free(dp, p, "shutdown", "TRYAGAIN the daemon is shutting down");
    }
    while (dp->xfers)
        xfer_free(dp, dp->xfers);
    /* a snapshot still reading the store finishes first (its xfer, unlinked
     * above, is freed by snap_done without touching dp) */
    uv_mutex_lock(&dp->snap_mu);
    while (dp->snaps_running)
        uv_cond_wait(&dp->snap_cv, &dp->snap_mu);
    uv_mutex_unlock(&dp->snap_mu);
    uv_mutex_destroy(&dp->snap_mu);
    uv_cond_destroy(&dp->snap_cv);
    rtxn_release(dp);
    store_txn_abort(&dp->rtxn);
    store_close(dp->st);
    cmap_free(dp->map);
    free(dp);
}
