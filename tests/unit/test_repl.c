/* Unit tests for repl (src/repl.c): one test per replication rule of DESIGN
 * section 5/6, named after the rule, plus the encodings and every error path.
 *
 * Harness: up to four parts (daemon ids 1..4) in one process; ready() runs a
 * part's Ready loop like the daemon glue (recording stored entries, applied
 * entries, completions and events) and queues its messages encoded; pump()
 * delivers queued messages (decoded again) until nothing moves. A node marked
 * cut drops everything sent to it. The multi-daemon fault simulation is
 * tests/replsim.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "repl.h"

/* ---- harness ------------------------------------------------------------------------ */

#define MAXN 4
#define MAXREC 256

typedef struct tnode {
    repl_part *p;
    bool cut;
    /* records */
    uint64_t stored_last;     /* last seq stored */
    uint64_t truncated_at;    /* last truncate_from seen */
    uint64_t applied[MAXREC]; /* seqs applied in order */
    uint8_t applied_type[MAXREC];
    size_t napplied;
    repl_completion done[MAXREC];
    size_t ndone;
    repl_event ev[MAXREC];
    size_t nev;
    repl_msg sent[MAXREC]; /* scalar fields only */
    size_t nsent;
    uint64_t compacted_to;
} tnode;

typedef struct qmsg {
    uint8_t *b;
    size_t len;
    uint64_t to;
} qmsg;

static tnode N[MAXN + 1];
static qmsg Q[4096];
static size_t NQ;

static void opts_for(repl_opts *o, uint64_t id)
{
    repl_opts_init(o, id, 1, 0);
}

static void node_init(uint64_t id, const repl_opts *o)
{
    repl_opts def;
    if (!o) {
        opts_for(&def, id);
        o = &def;
    }
    memset(&N[id], 0, sizeof N[id]);
    assert_int_equal(repl_new(o, NULL, &N[id].p), REPL_OK);
}

static void teardown_all(void)
{
    for (int i = 1; i <= MAXN; i++) {
        repl_free(N[i].p);
        N[i].p = NULL;
    }
    for (size_t i = 0; i < NQ; i++)
        free(Q[i].b);
    NQ = 0;
}

static void ready(uint64_t id)
{
    tnode *t = &N[id];
    while (repl_has_ready(t->p)) {
        repl_ready rd;
        repl_ready_get(t->p, &rd);
        if (rd.truncate_from) t->truncated_at = rd.truncate_from;
        if (rd.n_entries) t->stored_last = rd.entries[rd.n_entries - 1].seq;
        if (rd.compact_to) t->compacted_to = rd.compact_to;
        for (size_t i = 0; i < rd.n_apply; i++) {
            assert_true(t->napplied < MAXREC);
            t->applied_type[t->napplied] = rd.apply[i].type;
            t->applied[t->napplied++] = rd.apply[i].seq;
        }
        for (size_t i = 0; i < rd.n_msgs; i++) {
            buf b;
            buf_init(&b);
            repl_msg_encode(&rd.msgs[i], &b);
            assert_true(NQ < 4096);
            Q[NQ++] = (qmsg){(uint8_t *)b.data, b.len, rd.msgs[i].to};
            if (t->nsent < MAXREC) {
                t->sent[t->nsent] = rd.msgs[i];
                t->sent[t->nsent++].entries = NULL;
            }
        }
        for (size_t i = 0; i < rd.n_done && t->ndone < MAXREC; i++) {
            t->done[t->ndone] = rd.done[i];
            t->done[t->ndone++].result = NULL;
        }
        for (size_t i = 0; i < rd.n_events && t->nev < MAXREC; i++)
            t->ev[t->nev++] = rd.events[i];
        repl_advance(t->p, &rd);
    }
}

/* Delivers one queued message (in FIFO order); returns the recv status. */
static int deliver_one(size_t i)
{
    qmsg q = Q[i];
    memmove(Q + i, Q + i + 1, (NQ - i - 1) * sizeof *Q);
    NQ--;
    int rc = REPL_OK;
    if (q.to >= 1 && q.to <= MAXN && N[q.to].p && !N[q.to].cut) {
        repl_msg m;
        assert_int_equal(repl_msg_decode(q.b, q.len, &m), REPL_OK);
        rc = repl_recv(N[q.to].p, &m);
        repl_msg_free(&m);
    }
    free(q.b);
    return rc;
}

static void pump(void)
{
    for (int round = 0; round < 1000; round++) {
        for (int i = 1; i <= MAXN; i++)
            if (N[i].p) ready((uint64_t)i);
        if (!NQ) return;
        while (NQ)
            deliver_one(0);
    }
    fail_msg("pump did not settle");
}

static void drop_queue(void)
{
    for (size_t i = 0; i < NQ; i++)
        free(Q[i].b);
    NQ = 0;
}

static void config(uint64_t id, uint64_t epoch, const uint64_t *ids, const uint8_t *st, uint32_t n)
{
    assert_int_equal(repl_config(N[id].p, epoch, ids, st, n), REPL_OK);
}

/* Three replicas 1 (primary), 2, 3 in epoch 1, all IN_SYNC, settled. */
static void cluster3(void)
{
    static const uint64_t ids[] = {1, 2, 3};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_IN_SYNC};
    for (uint64_t i = 1; i <= 3; i++)
        node_init(i, NULL);
    for (uint64_t i = 1; i <= 3; i++)
        config(i, 1, ids, st, 3);
    pump();
    assert_true(repl_readable(N[1].p));
}

static int put(uint64_t id, const char *key, const char *val, uint64_t cid, uint64_t cseq, uint64_t ctx)
{
    char res[64];
    snprintf(res, sizeof res, "+OK %s", val);
    return repl_write(N[id].p, REPL_E_PUT, key, strlen(key), val, strlen(val), cid, cseq, res, strlen(res), ctx,
                      NULL);
}

static const repl_completion *find_done(uint64_t id, uint64_t ctx)
{
    for (size_t i = 0; i < N[id].ndone; i++)
        if (N[id].done[i].ctx == ctx) return &N[id].done[i];
    return NULL;
}

static bool has_event(uint64_t id, int type, uint64_t peer)
{
    for (size_t i = 0; i < N[id].nev; i++)
        if (N[id].ev[i].type == type && (!peer || N[id].ev[i].peer == peer)) return true;
    return false;
}

static repl_status status(uint64_t id)
{
    repl_status s;
    repl_status_get(N[id].p, &s);
    return s;
}

static int teardown(void **state)
{
    (void)state;
    teardown_all();
    return 0;
}

/* ---- rules ---------------------------------------------------------------------------- */

/* 5.1: the primary assigns the next seq, stores the entry and sends it to every
 * replica of the epoch in the same batch. */
static void test_primary_assigns_seq_and_sends_to_all_in_parallel(void **state)
{
    (void)state;
    cluster3();
    uint64_t seq = 0;
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "v", 1, 0, 0, NULL, 0, 10, &seq), REPL_OK);
    assert_int_equal(seq, 2); /* 1 is epoch 1's NOOP */
    N[1].nsent = 0;
    repl_ready rd;
    assert_true(repl_has_ready(N[1].p));
    repl_ready_get(N[1].p, &rd);
    assert_int_equal(rd.n_entries, 1);
    assert_int_equal(rd.entries[0].seq, 2);
    assert_int_equal(rd.entries[0].epoch, 1);
    int to2 = 0, to3 = 0;
    for (size_t i = 0; i < rd.n_msgs; i++) {
        assert_int_equal(rd.msgs[i].type, REPL_MSG_APPEND);
        assert_int_equal(rd.msgs[i].n_entries, 1);
        assert_int_equal(rd.msgs[i].seq, 1);
        to2 += rd.msgs[i].to == 2;
        to3 += rd.msgs[i].to == 3;
    }
    assert_int_equal(to2, 1);
    assert_int_equal(to3, 1);
    assert_int_equal(rd.n_done, 0); /* not committed yet */
    repl_advance(N[1].p, &rd);
    teardown_all();
}

/* 5.2: a replica stores the entries and acks the highest contiguous seq in the
 * same batch (sent after storing); a gap is refused with a hint. */
static void test_replica_stores_then_acks_highest_contiguous(void **state)
{
    (void)state;
    cluster3();
    repl_entry e[2] = {{.seq = 2, .epoch = 1, .type = REPL_E_PUT, .klen = 1, .key = (const uint8_t *)"a"},
                       {.seq = 3, .epoch = 1, .type = REPL_E_DEL, .klen = 1, .key = (const uint8_t *)"a"}};
    repl_msg m = {.type = REPL_MSG_APPEND, .from = 1, .to = 2, .space = 1, .part = 0, .epoch = 1,
                  .seq = 1, .prev_epoch = 1, .commit = 1, .n_entries = 2, .entries = e};
    assert_int_equal(repl_recv(N[2].p, &m), REPL_OK);
    repl_ready rd;
    repl_ready_get(N[2].p, &rd);
    assert_int_equal(rd.n_entries, 2);
    assert_int_equal(rd.n_msgs, 1);
    assert_int_equal(rd.msgs[0].type, REPL_MSG_ACK);
    assert_false(rd.msgs[0].reject);
    assert_int_equal(rd.msgs[0].seq, 3);
    repl_advance(N[2].p, &rd);
    /* a gap: entries after seq 5, which replica 2 does not hold */
    repl_entry g = {.seq = 6, .epoch = 1, .type = REPL_E_PUT, .klen = 1, .key = (const uint8_t *)"b"};
    m.seq = 5;
    m.n_entries = 1;
    m.entries = &g;
    assert_int_equal(repl_recv(N[2].p, &m), REPL_OK);
    repl_ready_get(N[2].p, &rd);
    assert_int_equal(rd.n_entries, 0);
    assert_int_equal(rd.n_msgs, 1);
    assert_true(rd.msgs[0].reject);
    assert_int_equal(rd.msgs[0].hint, 3); /* resume after my last */
    repl_advance(N[2].p, &rd);
    drop_queue();
    teardown_all();
}

/* 5.3: an entry commits only when every replica of the epoch acked it; then the
 * primary applies it and answers the client. */
static void test_commit_needs_every_replica(void **state)
{
    (void)state;
    cluster3();
    N[3].cut = true;
    assert_int_equal(put(1, "k", "v1", 0, 0, 77), REPL_OK);
    pump();
    assert_null(find_done(1, 77));
    assert_int_equal(status(1).commit, 1);
    assert_int_equal(status(2).last, 2); /* replica 2 holds and acked it */
    N[3].cut = false;
    for (int i = 0; i < 3; i++) {
        repl_tick(N[1].p);
        pump();
    }
    const repl_completion *c = find_done(1, 77);
    assert_non_null(c);
    assert_int_equal(c->status, REPL_OK);
    assert_int_equal(c->seq, 2);
    assert_int_equal(status(1).commit, 2);
    assert_int_equal(N[1].applied[N[1].napplied - 1], 2);
    teardown_all();
}

/* 5.3: the commit point is piggybacked (or sent on a tick) and backups apply
 * up to it, never beyond. */
static void test_commit_point_piggybacked_backups_apply(void **state)
{
    (void)state;
    cluster3();
    assert_int_equal(put(1, "k", "v1", 0, 0, 1), REPL_OK);
    pump();
    assert_non_null(find_done(1, 1));
    size_t before = N[2].napplied;
    assert_int_equal(status(2).applied, 1); /* not told yet */
    assert_int_equal(put(1, "k", "v2", 0, 0, 2), REPL_OK);
    ready(1); /* the next APPEND carries commit = 2 */
    while (NQ)
        deliver_one(0);
    ready(2);
    assert_int_equal(N[2].napplied, before + 1);
    assert_int_equal(N[2].applied[N[2].napplied - 1], 2);
    assert_int_equal(status(2).applied, 2); /* seq 3 not applied: not committed */
    pump();
    repl_tick(N[1].p); /* a tick propagates the last commit point */
    pump();
    assert_int_equal(status(2).applied, 3);
    assert_int_equal(status(3).applied, 3);
    teardown_all();
}

/* 5.3: only committed state is readable: the primary is readable only once its
 * epoch-start NOOP is applied; uncommitted writes are only in the overlay. */
static void test_only_committed_state_is_readable(void **state)
{
    (void)state;
    static const uint64_t ids[] = {1, 2};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    node_init(1, NULL);
    node_init(2, NULL);
    config(1, 1, ids, st, 2);
    assert_false(repl_readable(N[1].p)); /* NOOP not committed */
    assert_int_equal(put(1, "k", "v1", 0, 0, 5), REPL_OK);
    const repl_entry *pe = repl_pending_get(N[1].p, "k", 1);
    assert_non_null(pe);
    assert_memory_equal(pe->value, "v1", 2);
    assert_null(repl_pending_get(N[1].p, "x", 1));
    ready(1);
    assert_int_equal(N[1].napplied, 0); /* nothing committed, nothing applied */
    assert_false(repl_readable(N[1].p));
    config(2, 1, ids, st, 2);
    pump();
    assert_true(repl_readable(N[1].p));
    assert_true(has_event(1, REPL_EV_SERVING, 0));
    assert_null(repl_pending_get(N[1].p, "k", 1)); /* applied: in the store now */
    assert_false(repl_readable(N[2].p));           /* backups never serve */
    teardown_all();
}

/* 5.4: a message of an older epoch is refused and answered STALE; the sender
 * learns of the newer epoch. */
static void test_older_epoch_refused(void **state)
{
    (void)state;
    cluster3();
    static const uint64_t ids[] = {1, 2, 3};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_IN_SYNC};
    config(2, 2, ids, st, 3);
    repl_msg m = {.type = REPL_MSG_APPEND, .from = 1, .to = 2, .space = 1, .epoch = 1, .seq = 1, .prev_epoch = 1};
    assert_int_equal(repl_recv(N[2].p, &m), REPL_ESTALE);
    N[2].nsent = 0;
    ready(2);
    assert_int_equal(N[2].nsent, 1);
    assert_int_equal(N[2].sent[0].type, REPL_MSG_STALE);
    assert_int_equal(N[2].sent[0].epoch, 2);
    while (NQ)
        deliver_one(0);
    ready(1);
    assert_true(has_event(1, REPL_EV_NEWER_EPOCH, 0));
    assert_int_equal(status(1).newest_seen, 2);
    teardown_all();
}

/* 5.4: a message of a newer epoch is not acted on; the node reports it once
 * and waits for the config; a primary that saw it stops serving. */
static void test_newer_epoch_waits_for_config(void **state)
{
    (void)state;
    cluster3();
    repl_entry e = {.seq = 2, .epoch = 3, .type = REPL_E_NOOP};
    repl_msg m = {.type = REPL_MSG_APPEND, .from = 3, .to = 2, .space = 1, .epoch = 3, .seq = 1, .prev_epoch = 1,
                  .n_entries = 1, .entries = &e};
    N[2].nsent = 0;
    assert_int_equal(repl_recv(N[2].p, &m), REPL_OK);
    assert_int_equal(repl_recv(N[2].p, &m), REPL_OK);
    ready(2);
    assert_int_equal(N[2].nsent, 0); /* no ack */
    assert_int_equal(status(2).last, 1);
    size_t n = 0;
    for (size_t i = 0; i < N[2].nev; i++)
        n += N[2].ev[i].type == REPL_EV_NEWER_EPOCH && N[2].ev[i].epoch == 3;
    assert_int_equal(n, 1);
    /* the primary: a STALE of epoch 2 */
    repl_msg s = {.type = REPL_MSG_STALE, .from = 2, .to = 1, .space = 1, .epoch = 2};
    assert_int_equal(repl_recv(N[1].p, &s), REPL_OK);
    assert_false(repl_readable(N[1].p));
    assert_int_equal(put(1, "k", "v", 0, 0, 1), REPL_ENOTPRIMARY);
    teardown_all();
}

/* I3: a new primary commits its whole log (entries the old primary never
 * committed) and brings the other replicas to it. */
static void test_new_primary_commits_its_whole_log(void **state)
{
    (void)state;
    cluster3();
    N[3].cut = true;
    assert_int_equal(put(1, "a", "1", 0, 0, 1), REPL_OK);
    assert_int_equal(put(1, "b", "2", 0, 0, 2), REPL_OK);
    pump(); /* 2 holds seqs 2, 3; nothing committed past 1 */
    assert_int_equal(status(2).last, 3);
    assert_int_equal(status(1).commit, 1);
    N[3].cut = false;
    drop_queue();
    /* primary 1 fails: the coordinator picks 2 (IN_SYNC) */
    repl_free(N[1].p);
    N[1].p = NULL;
    static const uint64_t ids[] = {2, 3};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(2, 2, ids, st, 2);
    config(3, 2, ids, st, 2);
    pump();
    assert_int_equal(status(2).commit, 4); /* 2, 3 and its NOOP 4 */
    assert_true(repl_readable(N[2].p));
    assert_int_equal(status(3).last, 4);
    repl_tick(N[2].p);
    pump();
    assert_int_equal(status(3).applied, 4);
    teardown_all();
}

/* I3: replicas drop uncommitted entries beyond the new primary's log end. */
static void test_replicas_drop_uncommitted_beyond_new_primary(void **state)
{
    (void)state;
    cluster3();
    N[3].cut = true;
    assert_int_equal(put(1, "a", "1", 0, 0, 1), REPL_OK);
    assert_int_equal(put(1, "b", "2", 0, 0, 2), REPL_OK);
    pump(); /* 2 stored seqs 2, 3 (epoch 1), never committed */
    assert_int_equal(N[2].stored_last, 3);
    N[3].cut = false;
    drop_queue();
    repl_free(N[1].p);
    N[1].p = NULL;
    /* the coordinator picks 3, whose log ends at 1 */
    static const uint64_t ids[] = {3, 2};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(3, 2, ids, st, 2);
    config(2, 2, ids, st, 2);
    pump();
    assert_int_equal(N[2].truncated_at, 2);
    uint64_t base;
    size_t n;
    const repl_entry *log = repl_log_view(N[2].p, &base, &n);
    assert_int_equal(base + n, 2);
    assert_int_equal(log[n - 1].seq, 2);
    assert_int_equal(log[n - 1].type, REPL_E_NOOP);
    assert_int_equal(log[n - 1].epoch, 2);
    assert_int_equal(status(3).commit, 2);
    assert_true(repl_readable(N[3].p));
    teardown_all();
}

/* 6: a retried write with the same (client id, seq) is applied once and
 * answered with the original seq and result, before and after it commits;
 * an older seq is refused. */
static void test_retried_write_applied_once(void **state)
{
    (void)state;
    cluster3();
    uint64_t s1, s2;
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "5", 1, 9, 1, ":5", 2, 100, &s1), REPL_OK);
    /* retry while pending: attaches */
    assert_int_equal(repl_client_check(N[1].p, 9, 1, &s2, NULL, NULL), REPL_DUP_PENDING);
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "6", 1, 9, 1, ":6", 2, 101, &s2), REPL_OK);
    assert_int_equal(s1, s2);
    pump();
    const repl_completion *a = find_done(1, 100), *b = find_done(1, 101);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->seq, s1);
    assert_int_equal(b->seq, s1);
    assert_int_equal(status(1).last, s1); /* appended once */
    /* retry after commit: the original result */
    const uint8_t *res;
    uint32_t rlen;
    assert_int_equal(repl_client_check(N[1].p, 9, 1, &s2, &res, &rlen), REPL_DUP_DONE);
    assert_int_equal(rlen, 2);
    assert_memory_equal(res, ":5", 2);
    N[1].ndone = 0;
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "7", 1, 9, 1, ":7", 2, 102, &s2), REPL_OK);
    assert_int_equal(s2, s1);
    assert_int_equal(status(1).last, s1);
    repl_ready rd;
    repl_ready_get(N[1].p, &rd);
    assert_int_equal(rd.n_done, 1);
    assert_int_equal(rd.done[0].ctx, 102);
    assert_int_equal(rd.done[0].rlen, 2);
    assert_memory_equal(rd.done[0].result, ":5", 2);
    repl_advance(N[1].p, &rd);
    /* an older seq of the same client */
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "1", 1, 9, 2, ":1", 2, 103, NULL), REPL_OK);
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "1", 1, 9, 1, ":1", 2, 104, NULL), REPL_ESTALE);
    pump();
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "1", 1, 9, 1, ":1", 2, 105, NULL), REPL_ESTALE);
    /* a new primary knows the table: its replicas applied the same entries */
    repl_tick(N[1].p);
    pump();
    assert_int_equal(repl_client_check(N[2].p, 9, 2, &s2, &res, &rlen), REPL_DUP_DONE);
    assert_memory_equal(res, ":1", 2);
    teardown_all();
}

/* 6: the last applied client seq survives a failover even when the new
 * primary got the entry uncommitted (it commits it, then answers the retry). */
static void test_exactly_once_across_failover(void **state)
{
    (void)state;
    cluster3();
    N[3].cut = true;
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "1", 1, 4, 8, ":1", 2, 1, NULL), REPL_OK);
    pump();
    N[3].cut = false;
    drop_queue();
    repl_free(N[1].p);
    N[1].p = NULL;
    static const uint64_t ids[] = {2, 3};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(2, 2, ids, st, 2);
    config(3, 2, ids, st, 2);
    /* the retry arrives before reconciliation finished: it attaches */
    assert_int_equal(repl_client_check(N[2].p, 4, 8, NULL, NULL, NULL), REPL_DUP_PENDING);
    assert_int_equal(repl_write(N[2].p, REPL_E_PUT, "k", 1, "2", 1, 4, 8, ":2", 2, 2, NULL), REPL_OK);
    pump();
    const repl_completion *c = find_done(2, 2);
    assert_non_null(c);
    assert_int_equal(c->status, REPL_OK);
    assert_int_equal(c->seq, 2);
    assert_int_equal(status(2).last, 3); /* 2 = the write, 3 = the NOOP: no second copy */
    teardown_all();
}

/* A primary that loses its role fails uncommitted writes with EFAILOVER. */
static void test_demoted_primary_fails_pending_writes(void **state)
{
    (void)state;
    cluster3();
    N[2].cut = N[3].cut = true;
    assert_int_equal(put(1, "k", "v", 0, 0, 42), REPL_OK);
    pump();
    static const uint64_t ids[] = {2, 1};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(1, 2, ids, st, 2);
    ready(1);
    const repl_completion *c = find_done(1, 42);
    assert_non_null(c);
    assert_int_equal(c->status, REPL_EFAILOVER);
    assert_int_equal(put(1, "k", "v", 0, 0, 43), REPL_ENOTPRIMARY);
    drop_queue();
    teardown_all();
}

/* 6: a CATCHING_UP replica receives entries but does not count for commit
 * until caught up; then the primary reports it (with the epoch) and counts it. */
static void test_catching_up_replica_counts_only_once_caught_up(void **state)
{
    (void)state;
    static const uint64_t ids[] = {1, 2, 3};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_CATCHING_UP};
    for (uint64_t i = 1; i <= 3; i++)
        node_init(i, NULL);
    for (uint64_t i = 1; i <= 3; i++)
        config(i, 1, ids, st, 3);
    N[3].cut = true;
    assert_int_equal(put(1, "k", "v", 0, 0, 1), REPL_OK);
    pump();
    assert_non_null(find_done(1, 1)); /* committed without 3 */
    assert_false(has_event(1, REPL_EV_CAUGHT_UP, 3));
    N[3].cut = false;
    repl_tick(N[1].p);
    repl_tick(N[1].p);
    pump();
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 3));
    for (size_t i = 0; i < N[1].nev; i++)
        if (N[1].ev[i].type == REPL_EV_CAUGHT_UP) assert_int_equal(N[1].ev[i].epoch, 1);
    repl_status s = status(1);
    assert_true(s.peers[1].counts);
    /* now 3 counts: without it nothing commits */
    N[3].cut = true;
    assert_int_equal(put(1, "k", "w", 0, 0, 2), REPL_OK);
    pump();
    assert_null(find_done(1, 2));
    teardown_all();
}

/* Regression (found by the tutorial test): two replicas caught up in one
 * epoch; the coordinator flips the first, which starts a new epoch and makes
 * the second report stale, so the primary must report the second again in
 * the new epoch, or the partition stays DEGRADED for ever. */
static void test_catching_up_replica_reported_again_in_new_epoch(void **state)
{
    (void)state;
    static const uint64_t ids[] = {1, 2, 3};
    static const uint8_t st1[] = {REPL_IN_SYNC, REPL_CATCHING_UP, REPL_CATCHING_UP};
    static const uint8_t st2[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_CATCHING_UP};
    for (uint64_t i = 1; i <= 3; i++)
        node_init(i, NULL);
    for (uint64_t i = 1; i <= 3; i++)
        config(i, 1, ids, st1, 3);
    assert_int_equal(put(1, "k", "v", 0, 0, 1), REPL_OK);
    pump();
    repl_tick(N[1].p);
    pump();
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 2));
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 3));
    N[1].nev = 0;
    for (uint64_t i = 1; i <= 3; i++)
        config(i, 2, ids, st2, 3); /* 2 flipped; 3's report of epoch 1 was stale */
    pump();
    repl_tick(N[1].p);
    pump();
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 3));
    assert_false(has_event(1, REPL_EV_CAUGHT_UP, 2));
    for (size_t i = 0; i < N[1].nev; i++)
        if (N[1].ev[i].type == REPL_EV_CAUGHT_UP) assert_int_equal(N[1].ev[i].epoch, 2);
    teardown_all();
}

/* Regression (chaos seed 18): the one CAUGHT_UP report of an epoch went to a
 * coordinator leader that was killed, and the partition stayed degraded. A
 * report the configuration has not acted on is repeated every
 * report_retry_ticks, in the same epoch, until the replica is IN_SYNC. */
static void test_lost_caught_up_report_is_repeated(void **state)
{
    (void)state;
    static const uint64_t ids[] = {1, 2};
    static const uint8_t st1[] = {REPL_IN_SYNC, REPL_CATCHING_UP};
    static const uint8_t st2[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    for (uint64_t i = 1; i <= 2; i++)
        node_init(i, NULL);
    for (uint64_t i = 1; i <= 2; i++)
        config(i, 1, ids, st1, 2);
    assert_int_equal(put(1, "k", "v", 0, 0, 1), REPL_OK);
    pump();
    repl_tick(N[1].p);
    pump();
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 2));
    N[1].nev = 0; /* the report is lost */
    repl_opts o;
    opts_for(&o, 1);
    for (uint32_t t = 2; t < o.report_retry_ticks; t++) { /* ticks 2 .. interval-1 */
        repl_tick(N[1].p);
        pump();
    }
    assert_false(has_event(1, REPL_EV_CAUGHT_UP, 2)); /* not before the interval */
    repl_tick(N[1].p);
    pump();
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 2));
    for (size_t i = 0; i < N[1].nev; i++)
        if (N[1].ev[i].type == REPL_EV_CAUGHT_UP) assert_int_equal(N[1].ev[i].epoch, 1);
    /* the coordinator flips it: no more reports */
    for (uint64_t i = 1; i <= 2; i++)
        config(i, 2, ids, st2, 2);
    pump();
    N[1].nev = 0;
    for (uint32_t t = 0; t < 3 * o.report_retry_ticks; t++) {
        repl_tick(N[1].p);
        pump();
    }
    assert_false(has_event(1, REPL_EV_CAUGHT_UP, 2));
    teardown_all();
}

/* A primary restarted within its epoch counts every replica (it forgot which
 * CATCHING_UP replicas it reported caught up). */
static void test_restarted_primary_counts_catching_up_replicas(void **state)
{
    (void)state;
    static const uint64_t ids[] = {1, 2};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_CATCHING_UP};
    repl_opts o;
    opts_for(&o, 1);
    repl_persisted ps = {.epoch = 1};
    memset(&N[1], 0, sizeof N[1]);
    assert_int_equal(repl_new(&o, &ps, &N[1].p), REPL_OK);
    node_init(2, NULL);
    config(1, 1, ids, st, 2); /* same epoch as persisted: a restart */
    config(2, 1, ids, st, 2);
    N[2].cut = true;
    assert_int_equal(put(1, "k", "v", 0, 0, 1), REPL_OK);
    pump();
    assert_null(find_done(1, 1));
    N[2].cut = false;
    repl_tick(N[1].p);
    repl_tick(N[1].p);
    pump();
    assert_non_null(find_done(1, 1));
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 2));
    teardown_all();
}

/* 6: the primary keeps the log tail a departed replica needs; when it returns
 * it replays only that tail (no full copy). */
static void test_departed_replica_replays_only_the_tail(void **state)
{
    (void)state;
    repl_opts o;
    for (uint64_t i = 1; i <= 3; i++) {
        opts_for(&o, i);
        o.retain_entries = 4; /* backups keep 4; the primary keeps what departed replicas need */
        node_init(i, &o);
    }
    static const uint64_t ids[] = {1, 2, 3};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_IN_SYNC};
    for (uint64_t i = 1; i <= 3; i++)
        config(i, 1, ids, st, 3);
    pump();
    assert_int_equal(put(1, "k", "0", 0, 0, 1), REPL_OK);
    pump();
    /* 3 departs: the coordinator removes it */
    N[3].cut = true;
    static const uint64_t ids2[] = {1, 2};
    config(1, 2, ids2, st, 2);
    config(2, 2, ids2, st, 2);
    pump();
    assert_int_equal(status(1).n_departed, 1);
    for (int i = 0; i < 3; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", i + 1);
        assert_int_equal(put(1, "k", v, 0, 0, 10 + (uint64_t)i), REPL_OK);
        pump();
    }
    repl_tick(N[1].p);
    pump();
    repl_status s = status(1);
    assert_true(s.base <= 2); /* 3 acked 2: everything after it is kept */
    /* 3 returns as CATCHING_UP */
    N[3].cut = false;
    static const uint64_t ids3[] = {1, 2, 3};
    static const uint8_t st3[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_CATCHING_UP};
    for (uint64_t i = 1; i <= 3; i++)
        config(i, 3, ids3, st3, 3);
    pump();
    repl_tick(N[1].p);
    repl_tick(N[1].p);
    pump();
    assert_false(has_event(1, REPL_EV_NEED_COPY, 3));
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 3));
    assert_int_equal(status(3).last, status(1).last);
    teardown_all();
}

/* 6: when the retained tail no longer reaches back the primary asks for a
 * full copy; after repl_install_snapshot the replica continues from it. */
static void test_full_copy_when_tail_is_gone(void **state)
{
    (void)state;
    repl_opts o;
    for (uint64_t i = 1; i <= 3; i++) {
        opts_for(&o, i);
        o.retain_entries = 2;
        node_init(i, &o);
    }
    static const uint64_t ids[] = {1, 2};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(1, 1, ids, st, 2);
    config(2, 1, ids, st, 2);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "v", 1, 5, (uint64_t)i + 1, ":1", 2,
                                    (uint64_t)i, NULL),
                         REPL_OK);
        pump();
    }
    repl_tick(N[1].p);
    pump();
    repl_status s1 = status(1);
    assert_true(s1.base > 1);
    assert_true(N[1].compacted_to > 1);
    /* a brand-new replica 3 is added */
    static const uint64_t ids3[] = {1, 2, 3};
    static const uint8_t st3[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_CATCHING_UP};
    for (uint64_t i = 1; i <= 3; i++)
        config(i, 2, ids3, st3, 3);
    pump();
    assert_true(has_event(1, REPL_EV_NEED_COPY, 3));
    s1 = status(1);
    assert_true(s1.peers[1].copy);
    /* the daemon copies the primary's applied state (seq, client table) */
    repl_client cl = {5, 12, 13, 2, (const uint8_t *)":1"};
    bool keep = true;
    uint64_t snap = s1.applied;
    assert_int_equal(repl_install_snapshot(N[3].p, snap, 2, &cl, 1, &keep), REPL_OK);
    assert_false(keep);
    assert_int_equal(status(3).applied, snap);
    assert_int_equal(repl_client_check(N[3].p, 5, 12, NULL, NULL, NULL), REPL_DUP_DONE);
    for (int i = 0; i < 3; i++) {
        repl_tick(N[1].p);
        pump();
    }
    assert_true(has_event(1, REPL_EV_CAUGHT_UP, 3));
    assert_false(status(1).peers[1].copy);
    assert_int_equal(repl_write(N[1].p, REPL_E_PUT, "k", 1, "w", 1, 0, 0, NULL, 0, 99, NULL), REPL_OK);
    pump();
    assert_non_null(find_done(1, 99));
    assert_int_equal(status(3).last, status(1).last);
    teardown_all();
}

/* log_retention changed at runtime (repl_set_retention): the next
 * compaction keeps only the new number of applied entries; 0 is refused. */
static void test_set_retention_takes_effect_at_runtime(void **state)
{
    (void)state;
    repl_opts o;
    for (uint64_t i = 1; i <= 2; i++) {
        opts_for(&o, i);
        node_init(i, &o);
    }
    static const uint64_t ids[] = {1, 2};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(1, 1, ids, st, 2);
    config(2, 1, ids, st, 2);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(put(1, "k", "v", 0, 0, (uint64_t)i), REPL_OK);
        pump();
    }
    repl_tick(N[1].p);
    pump();
    assert_true(status(1).base <= 1); /* the default keeps all of them */
    assert_int_equal(repl_set_retention(N[1].p, 0), REPL_EINVAL);
    assert_int_equal(repl_set_retention(N[1].p, 2), REPL_OK);
    for (int i = 0; i < 3; i++) {
        repl_tick(N[1].p);
        pump();
    }
    repl_status s1 = status(1);
    assert_true(s1.base > 1);
    assert_true(s1.applied - s1.base <= 2 + 2 / 4 + 1);
    assert_true(N[1].compacted_to > 1);
    teardown_all();
}

/* A full copy that arrives after the replica already holds (and acked) later
 * entries keeps them when its log matches at the snapshot point. */
static void test_install_snapshot_keeps_matching_tail(void **state)
{
    (void)state;
    cluster3();
    N[2].cut = true; /* nothing more commits: 3 holds seqs 2..4 unapplied */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(put(1, "k", "v", 0, 0, (uint64_t)i), REPL_OK);
        pump();
    }
    repl_status s3 = status(3);
    assert_int_equal(s3.last, 4);
    assert_int_equal(s3.applied, 1); /* the NOOP */
    bool keep = false;
    assert_int_equal(repl_install_snapshot(N[3].p, 3, 1, NULL, 0, &keep), REPL_OK);
    assert_true(keep);
    s3 = status(3);
    assert_int_equal(s3.applied, 3);
    assert_int_equal(s3.last, 4);
    assert_int_equal(s3.base, 3);
    teardown_all();
}

/* TEST ONLY flag: committing on the primary's own write alone (what the
 * simulator's negative test uses). */
static void test_unsafe_commit_flag_commits_without_acks(void **state)
{
    (void)state;
    repl_opts o;
    opts_for(&o, 1);
    o.unsafe_commit_primary_only = true;
    node_init(1, &o);
    node_init(2, NULL);
    static const uint64_t ids[] = {1, 2};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(1, 1, ids, st, 2);
    N[2].cut = true;
    assert_int_equal(put(1, "k", "v", 0, 0, 1), REPL_OK);
    pump();
    assert_non_null(find_done(1, 1));
    teardown_all();
}

/* ---- persistence --------------------------------------------------------------------- */

static void test_restart_from_persisted_state(void **state)
{
    (void)state;
    repl_entry e[3] = {{.seq = 6, .epoch = 2, .type = REPL_E_NOOP},
                       {.seq = 7, .epoch = 2, .type = REPL_E_PUT, .client_id = 3, .client_seq = 4, .klen = 1,
                        .key = (const uint8_t *)"k", .vlen = 1, .value = (const uint8_t *)"v", .rlen = 2,
                        .result = (const uint8_t *)"+x"},
                       {.seq = 8, .epoch = 2, .type = REPL_E_DEL, .klen = 1, .key = (const uint8_t *)"k"}};
    repl_client cl = {3, 4, 7, 2, (const uint8_t *)"+x"};
    repl_persisted ps = {.epoch = 2, .applied = 7, .base_seq = 5, .base_epoch = 1, .entries = e, .n_entries = 3,
                         .clients = &cl, .n_clients = 1};
    repl_opts o;
    opts_for(&o, 1);
    memset(&N[1], 0, sizeof N[1]);
    assert_int_equal(repl_new(&o, &ps, &N[1].p), REPL_OK);
    repl_status s = status(1);
    assert_int_equal(s.epoch, 2);
    assert_int_equal(s.base, 5);
    assert_int_equal(s.last, 8);
    assert_int_equal(s.applied, 7);
    assert_int_equal(s.commit, 7);
    assert_int_equal(s.role, REPL_ROLE_NONE);
    const uint8_t *res;
    uint32_t rlen;
    uint64_t seq;
    assert_int_equal(repl_client_check(N[1].p, 3, 4, &seq, &res, &rlen), REPL_DUP_DONE);
    assert_int_equal(seq, 7);
    const repl_entry *pe = repl_pending_get(N[1].p, "k", 1);
    assert_non_null(pe);
    assert_int_equal(pe->type, REPL_E_DEL);
    /* a message of the persisted epoch before any config: fetch the map */
    repl_msg m = {.type = REPL_MSG_APPEND, .from = 2, .to = 1, .space = 1, .epoch = 2, .seq = 8, .prev_epoch = 2};
    assert_int_equal(repl_recv(N[1].p, &m), REPL_OK);
    ready(1);
    assert_true(has_event(1, REPL_EV_NEWER_EPOCH, 0));
    teardown_all();
}

static void test_new_refuses_bad_options_and_state(void **state)
{
    (void)state;
    repl_part *p = NULL;
    repl_opts o;
    opts_for(&o, 0);
    assert_int_equal(repl_new(&o, NULL, &p), REPL_EINVAL);
    opts_for(&o, 1);
    o.max_msg_entries = 0;
    assert_int_equal(repl_new(&o, NULL, &p), REPL_EINVAL);
    opts_for(&o, 1);
    o.max_msg_entries = REPL_MAX_MSG_ENTRIES + 1;
    assert_int_equal(repl_new(&o, NULL, &p), REPL_EINVAL);
    opts_for(&o, 1);
    o.resend_ticks = 0;
    assert_int_equal(repl_new(&o, NULL, &p), REPL_EINVAL);
    assert_int_equal(repl_new(NULL, NULL, &p), REPL_EINVAL);
    opts_for(&o, 1);
    repl_entry e = {.seq = 2, .epoch = 1, .type = REPL_E_NOOP};
    repl_persisted bad = {.epoch = 1, .applied = 3, .entries = &e, .n_entries = 1, .base_seq = 1, .base_epoch = 1};
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT); /* applied beyond the log */
    bad.applied = 0;
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT); /* applied below the base */
    bad.applied = 1;
    bad.base_epoch = 0;
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT); /* base without epoch */
    bad.base_epoch = 1;
    e.seq = 3;
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT); /* not consecutive */
    e.seq = 2;
    e.epoch = 2;
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT); /* entry epoch above adopted */
    e.epoch = 1;
    e.klen = 1; /* a NOOP with a key */
    e.key = (const uint8_t *)"k";
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT);
    e.klen = 0;
    e.key = NULL;
    repl_client cl[2] = {{1, 1, 1, 0, NULL}, {1, 2, 1, 0, NULL}};
    bad.clients = cl;
    bad.n_clients = 2;
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT); /* duplicate client */
    bad.n_clients = 1;
    cl[0].seq = 9;
    assert_int_equal(repl_new(&o, &bad, &p), REPL_ECORRUPT); /* client row beyond applied */
    cl[0].seq = 1;
    assert_int_equal(repl_new(&o, &bad, &p), REPL_OK);
    repl_free(p);
}

/* ---- error paths ------------------------------------------------------------------------ */

static void test_config_errors(void **state)
{
    (void)state;
    node_init(1, NULL);
    uint64_t ids[] = {1, 2, 3};
    uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC, REPL_IN_SYNC};
    repl_part *p = N[1].p;
    assert_int_equal(repl_config(p, 0, ids, st, 3), REPL_EINVAL);
    assert_int_equal(repl_config(p, 1, ids, st, 0), REPL_EINVAL);
    assert_int_equal(repl_config(p, 1, ids, st, REPL_MAX_REPLICAS + 1), REPL_EINVAL);
    assert_int_equal(repl_config(p, 1, NULL, st, 3), REPL_EINVAL);
    uint64_t dup[] = {1, 2, 1};
    assert_int_equal(repl_config(p, 1, dup, st, 3), REPL_EINVAL);
    uint64_t zero[] = {1, 0, 3};
    assert_int_equal(repl_config(p, 1, zero, st, 3), REPL_EINVAL);
    uint8_t cu[] = {REPL_CATCHING_UP, REPL_IN_SYNC, REPL_IN_SYNC};
    assert_int_equal(repl_config(p, 1, ids, cu, 3), REPL_EINVAL); /* primary must be IN_SYNC */
    uint8_t bogus[] = {REPL_IN_SYNC, 9, REPL_IN_SYNC};
    assert_int_equal(repl_config(p, 1, ids, bogus, 3), REPL_EINVAL);
    assert_int_equal(repl_config(p, 2, ids, st, 3), REPL_OK);
    assert_int_equal(repl_config(p, 2, ids, st, 3), REPL_OK); /* same config again */
    assert_int_equal(repl_config(p, 2, ids, st, 2), REPL_EINVAL); /* same epoch, other config */
    assert_int_equal(repl_config(p, 1, ids, st, 3), REPL_ESTALE);
    uint64_t gone[] = {2, 3};
    assert_int_equal(repl_config(p, 3, gone, st, 2), REPL_OK);
    assert_int_equal(status(1).role, REPL_ROLE_NONE);
    teardown_all();
}

static void test_write_errors(void **state)
{
    (void)state;
    cluster3();
    repl_part *p = N[1].p;
    assert_int_equal(put(2, "k", "v", 0, 0, 1), REPL_ENOTPRIMARY);
    assert_int_equal(repl_write(p, 9, "k", 1, "v", 1, 0, 0, NULL, 0, 1, NULL), REPL_EINVAL);
    assert_int_equal(repl_write(p, REPL_E_NOOP, NULL, 0, NULL, 0, 0, 0, NULL, 0, 1, NULL), REPL_EINVAL);
    assert_int_equal(repl_write(p, REPL_E_PUT, "", 0, "v", 1, 0, 0, NULL, 0, 1, NULL), REPL_EINVAL);
    assert_int_equal(repl_write(p, REPL_E_DEL, "k", 1, "v", 1, 0, 0, NULL, 0, 1, NULL), REPL_EINVAL);
    assert_int_equal(repl_write(p, REPL_E_PUT, "k", 1, "v", 1, 5, 0, NULL, 0, 1, NULL), REPL_EINVAL);
    assert_int_equal(repl_write(p, REPL_E_PUT, "k", 1, NULL, 3, 0, 0, NULL, 0, 1, NULL), REPL_EINVAL);
    static char big[REPL_MAX_KEY + 1];
    assert_int_equal(repl_write(p, REPL_E_PUT, big, sizeof big, "v", 1, 0, 0, NULL, 0, 1, NULL), REPL_ETOOBIG);
    assert_int_equal(repl_write(p, REPL_E_PUT, "k", 1, "v", 1, 0, 0, big, REPL_MAX_RESULT + 1, 1, NULL),
                     REPL_ETOOBIG);
    assert_int_equal(status(1).last, 1); /* nothing appended */
    teardown_all();
    /* back-pressure */
    repl_opts o;
    opts_for(&o, 1);
    o.max_pending = 2;
    node_init(1, &o);
    node_init(2, NULL);
    static const uint64_t ids[] = {1, 2};
    static const uint8_t st[] = {REPL_IN_SYNC, REPL_IN_SYNC};
    config(1, 1, ids, st, 2);
    /* NOOP + one write pending */
    assert_int_equal(put(1, "k", "v", 0, 0, 1), REPL_OK);
    assert_int_equal(put(1, "k", "v", 0, 0, 2), REPL_EBUSY);
    teardown_all();
}

static void test_recv_errors(void **state)
{
    (void)state;
    cluster3();
    repl_msg m = {.type = REPL_MSG_APPEND, .from = 1, .to = 3, .space = 1, .epoch = 1, .seq = 1, .prev_epoch = 1};
    assert_int_equal(repl_recv(N[2].p, &m), REPL_EINVAL); /* not mine */
    m.to = 2;
    m.space = 9;
    assert_int_equal(repl_recv(N[2].p, &m), REPL_EINVAL); /* other partition */
    m.space = 1;
    m.from = 3;
    assert_int_equal(repl_recv(N[2].p, &m), REPL_EPROTO); /* APPEND not from the primary */
    m.from = 2;
    m.to = 1;
    assert_int_equal(repl_recv(N[1].p, &m), REPL_EPROTO); /* APPEND to the primary */
    repl_msg a = {.type = REPL_MSG_ACK, .from = 3, .to = 2, .space = 1, .epoch = 1, .seq = 1};
    assert_int_equal(repl_recv(N[2].p, &a), REPL_EPROTO); /* ACK to a backup */
    a.to = 1;
    a.seq = 99;
    assert_int_equal(repl_recv(N[1].p, &a), REPL_EPROTO); /* acks entries never made */
    a.from = 4;
    a.seq = 1;
    assert_int_equal(repl_recv(N[1].p, &a), REPL_EPROTO); /* not a replica */
    a.from = 3;
    a.reject = true;
    a.hint = 50;
    assert_int_equal(repl_recv(N[1].p, &a), REPL_EPROTO); /* hint beyond the log */
    repl_entry e = {.seq = 5, .epoch = 1, .type = REPL_E_NOOP};
    repl_msg g = {.type = REPL_MSG_APPEND, .from = 1, .to = 2, .space = 1, .epoch = 1, .seq = 1, .prev_epoch = 1,
                  .n_entries = 1, .entries = &e};
    assert_int_equal(repl_recv(N[2].p, &g), REPL_EPROTO); /* entry seqs not consecutive */
    e.seq = 2;
    e.epoch = 2;
    assert_int_equal(repl_recv(N[2].p, &g), REPL_EPROTO); /* entry from a later epoch */
    g.entries = NULL;
    assert_int_equal(repl_recv(N[2].p, &g), REPL_EPROTO);
    m.type = 9;
    assert_int_equal(repl_recv(N[1].p, &m), REPL_EINVAL);
    assert_int_equal(status(2).last, 1);
    drop_queue();
    teardown_all();
}

static void test_install_snapshot_errors(void **state)
{
    (void)state;
    cluster3();
    repl_tick(N[1].p); /* backups learn commit point 1 */
    pump();
    assert_int_equal(status(2).applied, 1);
    bool keep;
    assert_int_equal(repl_install_snapshot(N[1].p, 9, 1, NULL, 0, &keep), REPL_EINVAL); /* primary */
    assert_int_equal(repl_install_snapshot(N[2].p, 1, 1, NULL, 0, &keep), REPL_EINVAL); /* not above applied */
    assert_int_equal(repl_install_snapshot(N[2].p, 9, 0, NULL, 0, &keep), REPL_EINVAL);
    assert_int_equal(repl_install_snapshot(N[2].p, 9, 1, NULL, 0, NULL), REPL_EINVAL);
    repl_client bad = {0, 1, 1, 0, NULL};
    assert_int_equal(repl_install_snapshot(N[2].p, 9, 1, &bad, 1, &keep), REPL_EINVAL);
    repl_client late = {3, 1, 10, 0, NULL};
    assert_int_equal(repl_install_snapshot(N[2].p, 9, 1, &late, 1, &keep), REPL_EINVAL);
    assert_int_equal(status(2).applied, 1);
    teardown_all();
}

/* ---- encodings ------------------------------------------------------------------------------ */

static void test_msg_roundtrip(void **state)
{
    (void)state;
    repl_entry e[2] = {{.seq = 8, .epoch = 3, .type = REPL_E_PUT, .client_id = 5, .client_seq = 6, .klen = 3,
                        .key = (const uint8_t *)"abc", .vlen = 2, .value = (const uint8_t *)"xy", .rlen = 3,
                        .result = (const uint8_t *)"+OK"},
                       {.seq = 9, .epoch = 4, .type = REPL_E_DEL, .klen = 1, .key = (const uint8_t *)"z"}};
    repl_msg m = {.type = REPL_MSG_APPEND, .from = 1, .to = 2, .space = 7, .part = 3, .epoch = 4, .seq = 7,
                  .prev_epoch = 3, .commit = 6, .n_entries = 2, .entries = e};
    buf b;
    buf_init(&b);
    repl_msg_encode(&m, &b);
    repl_msg d;
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_OK);
    assert_int_equal(d.type, REPL_MSG_APPEND);
    assert_int_equal(d.from, 1);
    assert_int_equal(d.to, 2);
    assert_int_equal(d.space, 7);
    assert_int_equal(d.part, 3);
    assert_int_equal(d.epoch, 4);
    assert_int_equal(d.seq, 7);
    assert_int_equal(d.prev_epoch, 3);
    assert_int_equal(d.commit, 6);
    assert_int_equal(d.n_entries, 2);
    assert_int_equal(d.entries[0].client_id, 5);
    assert_int_equal(d.entries[0].client_seq, 6);
    assert_memory_equal(d.entries[0].key, "abc", 3);
    assert_memory_equal(d.entries[0].value, "xy", 2);
    assert_memory_equal(d.entries[0].result, "+OK", 3);
    assert_int_equal(d.entries[1].type, REPL_E_DEL);
    repl_msg_free(&d);
    /* ACK reject and STALE */
    buf_reset(&b);
    repl_msg a = {.type = REPL_MSG_ACK, .reject = true, .from = 2, .to = 1, .epoch = 4, .seq = 7, .hint = 3};
    repl_msg_encode(&a, &b);
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_OK);
    assert_true(d.reject);
    assert_int_equal(d.hint, 3);
    repl_msg_free(&d);
    buf_reset(&b);
    repl_msg s = {.type = REPL_MSG_STALE, .from = 2, .to = 1, .epoch = 9};
    repl_msg_encode(&s, &b);
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_OK);
    assert_int_equal(d.type, REPL_MSG_STALE);
    assert_int_equal(d.epoch, 9);
    repl_msg_free(&d);
    /* entries alone */
    buf_reset(&b);
    repl_entry_encode(&e[0], &b);
    repl_entry x;
    assert_int_equal(repl_entry_decode(b.data, b.len, &x), REPL_OK);
    assert_int_equal(x.seq, 8);
    assert_memory_equal(x.value, "xy", 2);
    assert_int_equal(repl_entry_decode(b.data, b.len - 1, &x), REPL_EDECODE);
    b.data[0] = 2;
    assert_int_equal(repl_entry_decode(b.data, b.len, &x), REPL_EDECODE);
    buf_free(&b);
}

static void encode_then_patch(const repl_msg *m, size_t off, uint8_t val, buf *b)
{
    buf_reset(b);
    repl_msg_encode(m, b);
    if (off < b->len) b->data[off] = (char)val;
}

static void test_msg_decode_rejects_garbage(void **state)
{
    (void)state;
    repl_entry e = {.seq = 8, .epoch = 3, .type = REPL_E_PUT, .klen = 1, .key = (const uint8_t *)"k"};
    repl_msg m = {.type = REPL_MSG_APPEND, .from = 1, .to = 2, .epoch = 4, .seq = 7, .prev_epoch = 3,
                  .n_entries = 1, .entries = &e};
    buf b;
    buf_init(&b);
    repl_msg_encode(&m, &b);
    repl_msg d;
    /* every truncation */
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(repl_msg_decode(b.data, n, &d), REPL_EDECODE);
    /* trailing byte */
    buf_putc(&b, 0);
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE);
    assert_int_equal(repl_msg_decode(NULL, 5, &d), REPL_EDECODE);
    /* field by field (offsets: 0 version, 1 type, 2 flags, 3 from, 11 to, 19 space,
     * 23 part, 27 epoch, 35 seq, 43 prev_epoch, 51 commit, 59 hint, 67 count) */
    struct {
        size_t off;
        uint8_t v;
    } bad[] = {{0, 2}, {1, 0}, {1, 4}, {2, 1}, {2, 2}, {3, 0}, {11, 1}, {27, 0}, {43, 0}, {43, 9},
               {59, 1}, {67, 2}, {67 + 4, 9}, {67 + 4 + 1, 9}, {67 + 4 + 9, 0}, {67 + 4 + 9, 5}, {67 + 4 + 17, 1}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        repl_msg mm = m;
        if (bad[i].off == 43 && bad[i].v == 0) mm.seq = 7; /* prev_epoch 0 with seq 7 */
        encode_then_patch(&mm, bad[i].off, bad[i].v, &b);
        assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE);
    }
    /* a huge entry count with few bytes must not allocate */
    encode_then_patch(&m, 67 + 3, 0x00, &b);
    b.data[67] = (char)0xff;
    b.data[68] = (char)0xff;
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE);
    /* a NOOP carrying a client, a DEL carrying a value, an empty-key PUT */
    repl_entry bad_e[] = {{.seq = 8, .epoch = 3, .type = REPL_E_NOOP, .client_id = 1, .client_seq = 1},
                          {.seq = 8, .epoch = 3, .type = REPL_E_DEL, .klen = 1, .key = (const uint8_t *)"k", .vlen = 1,
                           .value = (const uint8_t *)"v"},
                          {.seq = 8, .epoch = 3, .type = REPL_E_PUT}};
    for (size_t i = 0; i < 3; i++) {
        repl_msg mm = m;
        mm.entries = &bad_e[i];
        buf_reset(&b);
        repl_msg_encode(&mm, &b);
        assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE);
    }
    /* entries with decreasing epochs */
    repl_entry two[2] = {{.seq = 8, .epoch = 4, .type = REPL_E_NOOP}, {.seq = 9, .epoch = 3, .type = REPL_E_NOOP}};
    repl_msg mm = m;
    mm.entries = two;
    mm.n_entries = 2;
    buf_reset(&b);
    repl_msg_encode(&mm, &b);
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE);
    /* ACK/STALE carrying entries or stray fields */
    repl_msg a = {.type = REPL_MSG_ACK, .from = 2, .to = 1, .epoch = 4, .seq = 7, .hint = 3};
    buf_reset(&b);
    repl_msg_encode(&a, &b);
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE); /* hint without reject */
    repl_msg st = {.type = REPL_MSG_STALE, .from = 2, .to = 1, .epoch = 4, .seq = 1};
    buf_reset(&b);
    repl_msg_encode(&st, &b);
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE);
    repl_msg sa = {.type = REPL_MSG_STALE, .reject = true, .from = 2, .to = 1, .epoch = 4};
    buf_reset(&b);
    repl_msg_encode(&sa, &b);
    assert_int_equal(repl_msg_decode(b.data, b.len, &d), REPL_EDECODE);
    /* random garbage never crashes */
    uint64_t x = 88172645463325252ull;
    for (int round = 0; round < 20000; round++) {
        buf_reset(&b);
        repl_msg_encode(&m, &b);
        int flips = 1 + (int)(x % 4);
        for (int k = 0; k < flips; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.data[x % b.len] = (char)(x >> 32);
        }
        if (repl_msg_decode(b.data, b.len - (x >> 60) % 3, &d) == REPL_OK) repl_msg_free(&d);
    }
    buf_free(&b);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(repl_strerror(REPL_OK), "ok");
    for (int e = REPL_ECORRUPT; e < 0; e++)
        assert_string_not_equal(repl_strerror(e), "unknown error");
    assert_string_equal(repl_strerror(-100), "unknown error");
    assert_string_equal(repl_role_name(REPL_ROLE_PRIMARY), "primary");
    assert_string_equal(repl_role_name(REPL_ROLE_BACKUP), "backup");
    assert_string_equal(repl_role_name(REPL_ROLE_NONE), "none");
    assert_string_equal(repl_role_name(7), "?");
    assert_string_equal(repl_msg_type_name(REPL_MSG_APPEND), "APPEND");
    assert_string_equal(repl_msg_type_name(REPL_MSG_ACK), "ACK");
    assert_string_equal(repl_msg_type_name(REPL_MSG_STALE), "STALE");
    assert_string_equal(repl_msg_type_name(0), "?");
    assert_string_equal(repl_event_name(REPL_EV_NEED_COPY), "need_copy");
    assert_string_equal(repl_event_name(REPL_EV_CAUGHT_UP), "caught_up");
    assert_string_equal(repl_event_name(REPL_EV_NEWER_EPOCH), "newer_epoch");
    assert_string_equal(repl_event_name(REPL_EV_SERVING), "serving");
    assert_string_equal(repl_event_name(0), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_primary_assigns_seq_and_sends_to_all_in_parallel, teardown),
        cmocka_unit_test_teardown(test_replica_stores_then_acks_highest_contiguous, teardown),
        cmocka_unit_test_teardown(test_commit_needs_every_replica, teardown),
        cmocka_unit_test_teardown(test_commit_point_piggybacked_backups_apply, teardown),
        cmocka_unit_test_teardown(test_only_committed_state_is_readable, teardown),
        cmocka_unit_test_teardown(test_older_epoch_refused, teardown),
        cmocka_unit_test_teardown(test_newer_epoch_waits_for_config, teardown),
        cmocka_unit_test_teardown(test_new_primary_commits_its_whole_log, teardown),
        cmocka_unit_test_teardown(test_replicas_drop_uncommitted_beyond_new_primary, teardown),
        cmocka_unit_test_teardown(test_retried_write_applied_once, teardown),
        cmocka_unit_test_teardown(test_exactly_once_across_failover, teardown),
        cmocka_unit_test_teardown(test_demoted_primary_fails_pending_writes, teardown),
        cmocka_unit_test_teardown(test_catching_up_replica_counts_only_once_caught_up, teardown),
        cmocka_unit_test_teardown(test_catching_up_replica_reported_again_in_new_epoch, teardown),
        cmocka_unit_test_teardown(test_lost_caught_up_report_is_repeated, teardown),
        cmocka_unit_test_teardown(test_restarted_primary_counts_catching_up_replicas, teardown),
        cmocka_unit_test_teardown(test_departed_replica_replays_only_the_tail, teardown),
        cmocka_unit_test_teardown(test_full_copy_when_tail_is_gone, teardown),
        cmocka_unit_test_teardown(test_set_retention_takes_effect_at_runtime, teardown),
        cmocka_unit_test_teardown(test_install_snapshot_keeps_matching_tail, teardown),
        cmocka_unit_test_teardown(test_unsafe_commit_flag_commits_without_acks, teardown),
        cmocka_unit_test_teardown(test_restart_from_persisted_state, teardown),
        cmocka_unit_test(test_new_refuses_bad_options_and_state),
        cmocka_unit_test_teardown(test_config_errors, teardown),
        cmocka_unit_test_teardown(test_write_errors, teardown),
        cmocka_unit_test_teardown(test_recv_errors, teardown),
        cmocka_unit_test_teardown(test_install_snapshot_errors, teardown),
        cmocka_unit_test(test_msg_roundtrip),
        cmocka_unit_test(test_msg_decode_rejects_garbage),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
