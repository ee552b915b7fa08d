/* Unit tests for raft (src/raft.c): one test per rule of the Raft paper,
 * named after the rule, plus the encodings and every error path.
 *
 * Two harnesses: a lone node fed hand-made messages (ready_msgs collects what
 * it answers), and a small in-memory cluster (cluster_*) that passes every
 * message through raft_msg_encode/raft_msg_decode and can cut nodes off.
 * The deterministic multi-node fault simulation lives in tests/sim.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "raft.h"

/* ---- lone-node harness ------------------------------------------------------------ */

#define MAX_OUT 64

typedef struct out {
    raft_msg m[MAX_OUT]; /* scalar fields only; entries/snapshot pointers cleared */
    size_t n;
    bool hs_changed;
    raft_hard_state hs;
    size_t n_entries, n_committed;
    uint64_t first_entry, last_committed;
    bool snapshot, install;
    uint64_t snap_index;
    raft_read_state reads[16];
    size_t n_reads;
} out;

/* Runs one Ready/advance round, recording what it held. */
static void ready_round(raft *r, out *o)
{
    memset(o, 0, sizeof *o);
    if (!raft_has_ready(r)) return;
    raft_ready rd;
    raft_ready_get(r, &rd);
    o->hs_changed = rd.hs_changed;
    o->hs = rd.hs;
    o->n_entries = rd.n_entries;
    o->first_entry = rd.n_entries ? rd.entries[0].index : 0;
    o->n_committed = rd.n_committed;
    o->last_committed = rd.n_committed ? rd.committed[rd.n_committed - 1].index : 0;
    o->snapshot = rd.snapshot != NULL;
    o->install = rd.snapshot_install;
    o->snap_index = rd.snapshot ? rd.snapshot->index : 0;
    for (size_t i = 0; i < rd.n_msgs && i < MAX_OUT; i++) {
        o->m[i] = rd.msgs[i];
        o->m[i].entries = NULL;
        o->m[i].snapshot = NULL;
        o->n++;
    }
    for (size_t i = 0; i < rd.n_reads && i < 16; i++)
        o->reads[o->n_reads++] = rd.reads[i];
    raft_advance(r, &rd);
}

static const raft_msg *find_msg(const out *o, int type, raft_id to)
{
    for (size_t i = 0; i < o->n; i++)
        if (o->m[i].type == type && (to == 0 || o->m[i].to == to)) return &o->m[i];
    return NULL;
}

static raft_opts opts_for(raft_id id)
{
    raft_opts o;
    raft_opts_init(&o, id, 42);
    return o;
}

static raft_config voters(int n)
{
    raft_config c = {.n = (uint32_t)n};
    for (int i = 0; i < n; i++)
        c.nodes[i] = (raft_node_cfg){(raft_id)i + 1, true};
    return c;
}

static uint8_t cfg_buf[256];

/* A config entry's payload (static buffer). */
static raft_entry cfg_entry(uint64_t index, uint64_t term, const raft_config *c)
{
    buf b;
    buf_init(&b);
    raft_config_encode(c, &b);
    memcpy(cfg_buf, b.data, b.len);
    raft_entry e = {.term = term, .index = index, .type = RAFT_ENTRY_CONFIG, .len = (uint32_t)b.len,
                    .data = cfg_buf};
    buf_free(&b);
    return e;
}

static uint8_t payload[8] = "payload";

/* A node restarted from a log: entry 1 = config of n voters (term 1), then
 * entries 2.. with the given terms. */
static raft *node_with_log(raft_id id, int n, const uint64_t *terms, size_t nt, uint64_t term,
                           uint64_t commit, const raft_opts *ov)
{
    raft_config c = voters(n);
    raft_entry e[32];
    e[0] = cfg_entry(1, 1, &c);
    for (size_t i = 0; i < nt; i++)
        e[i + 1] = (raft_entry){.term = terms[i], .index = i + 2, .type = RAFT_ENTRY_NORMAL, .len = 8,
                                .data = payload};
    raft_persisted p = {.hs = {term, 0, commit}, .entries = e, .n_entries = nt + 1};
    raft_opts o = ov ? *ov : opts_for(id);
    raft *r;
    assert_int_equal(raft_new(&o, &p, &r), RAFT_OK);
    return r;
}

static raft_status status(const raft *r)
{
    raft_status s;
    raft_status_get(r, &s);
    return s;
}

static raft_msg msg(int type, raft_id from, raft_id to, uint64_t term)
{
    raft_msg m;
    memset(&m, 0, sizeof m);
    m.type = (uint8_t)type;
    m.from = from;
    m.to = to;
    m.term = term;
    return m;
}

static void step_ok(raft *r, const raft_msg *m)
{
    assert_int_equal(raft_step(r, m), RAFT_OK);
}

/* ---- cluster harness ------------------------------------------------------------- */

#define CN 6

typedef struct pkt {
    raft_id from, to;
    buf b;
} pkt;

typedef struct cluster {
    int n;
    raft *r[CN + 1];
    bool cut[CN + 1];
    pkt *q;
    size_t nq, capq;
    uint64_t applied[CN + 1];
    bool installed[CN + 1];
    raft_read_state reads[CN + 1][16];
    size_t n_reads[CN + 1];
} cluster;

static void drain(cluster *c, int i)
{
    raft *r = c->r[i];
    while (r && raft_has_ready(r)) {
        raft_ready rd;
        raft_ready_get(r, &rd);
        for (size_t k = 0; k < rd.n_msgs; k++) {
            if (c->nq == c->capq) {
                c->capq = c->capq ? c->capq * 2 : 64;
                c->q = realloc(c->q, c->capq * sizeof *c->q);
            }
            pkt *p = &c->q[c->nq++];
            p->from = rd.msgs[k].from;
            p->to = rd.msgs[k].to;
            buf_init(&p->b);
            raft_msg_encode(&rd.msgs[k], &p->b);
        }
        if (rd.snapshot && rd.snapshot_install) {
            c->installed[i] = true;
            c->applied[i] = rd.snapshot->index;
        }
        if (rd.n_committed) c->applied[i] = rd.committed[rd.n_committed - 1].index;
        for (size_t k = 0; k < rd.n_reads && c->n_reads[i] < 16; k++)
            c->reads[i][c->n_reads[i]++] = rd.reads[k];
        raft_advance(r, &rd);
    }
}

/* Delivers messages until the cluster is quiet (cut nodes send and receive nothing). */
static void settle(cluster *c)
{
    for (int round = 0; round < 200; round++) {
        for (int i = 1; i <= c->n; i++)
            drain(c, i);
        if (c->nq == 0) return;
        pkt *q = c->q;
        size_t nq = c->nq;
        c->q = NULL;
        c->nq = c->capq = 0;
        for (size_t k = 0; k < nq; k++) {
            pkt *p = &q[k];
            if (p->to <= (raft_id)c->n && c->r[p->to] && !c->cut[p->to] && !c->cut[p->from]) {
                raft_msg m;
                assert_int_equal(raft_msg_decode(p->b.data, p->b.len, &m), RAFT_OK);
                assert_int_equal(raft_step(c->r[p->to], &m), RAFT_OK);
                raft_msg_free(&m);
            }
            buf_free(&p->b);
        }
        free(q);
    }
    fail_msg("cluster did not settle");
}

static void cluster_init(cluster *c, int n, void (*tweak)(raft_opts *))
{
    memset(c, 0, sizeof *c);
    c->n = n;
    raft_config cfg = voters(n);
    for (int i = 1; i <= n; i++) {
        raft_opts o = opts_for((raft_id)i);
        if (tweak) tweak(&o);
        assert_int_equal(raft_new(&o, NULL, &c->r[i]), RAFT_OK);
        assert_int_equal(raft_bootstrap(c->r[i], &cfg), RAFT_OK);
        drain(c, i);
    }
}

static void cluster_free(cluster *c)
{
    for (int i = 1; i <= c->n; i++)
        raft_free(c->r[i]);
    for (size_t k = 0; k < c->nq; k++)
        buf_free(&c->q[k].b);
    free(c->q);
}

/* Adds an empty node (no configuration) as id n+1. */
static int cluster_add_empty(cluster *c)
{
    int i = ++c->n;
    raft_opts o = opts_for((raft_id)i);
    assert_int_equal(raft_new(&o, NULL, &c->r[i]), RAFT_OK);
    return i;
}

/* Ticks node id until it campaigns, then lets the cluster settle. */
static void elect(cluster *c, int id)
{
    for (int t = 0; t < 100 && status(c->r[id]).role == RAFT_FOLLOWER; t++)
        raft_tick(c->r[id]);
    settle(c);
    assert_int_equal(status(c->r[id]).role, RAFT_LEADER);
}

/* One heartbeat interval for every node (leaders heartbeat), then settle. */
static void tick_all(cluster *c)
{
    for (int i = 1; i <= c->n; i++)
        if (c->r[i] && !c->cut[i]) raft_tick(c->r[i]);
    settle(c);
}

static uint64_t propose(cluster *c, int id)
{
    uint64_t idx = 0;
    assert_int_equal(raft_propose(c->r[id], payload, sizeof payload, &idx), RAFT_OK);
    return idx;
}

/* ---- election rules ---------------------------------------------------------------- */

static void test_election_grants_one_vote_per_term(void **state)
{
    (void)state;
    raft *r = node_with_log(1, 3, NULL, 0, 1, 1, NULL);
    raft_msg v = msg(RAFT_MSG_VOTE, 2, 1, 2);
    v.index = 1;
    v.log_term = 1;
    step_ok(r, &v);
    out o;
    ready_round(r, &o);
    const raft_msg *resp = find_msg(&o, RAFT_MSG_VOTE_RESP, 2);
    assert_non_null(resp);
    assert_false(resp->reject);
    /* the vote is part of the hard state persisted before the answer is sent */
    assert_true(o.hs_changed);
    assert_int_equal(o.hs.term, 2);
    assert_int_equal(o.hs.vote, 2);
    /* another candidate in the same term is refused */
    v.from = 3;
    step_ok(r, &v);
    ready_round(r, &o);
    resp = find_msg(&o, RAFT_MSG_VOTE_RESP, 3);
    assert_non_null(resp);
    assert_true(resp->reject);
    assert_int_equal(status(r).vote, 2);
    /* the same candidate asking again gets the same answer */
    v.from = 2;
    step_ok(r, &v);
    ready_round(r, &o);
    assert_false(find_msg(&o, RAFT_MSG_VOTE_RESP, 2)->reject);
    raft_free(r);
}

static void test_vote_denied_to_stale_log(void **state)
{
    (void)state;
    uint64_t terms[] = {2, 2, 3};
    raft *r = node_with_log(1, 3, terms, 3, 3, 1, NULL); /* last index 4, last term 3 */
    out o;
    /* lower last term, longer log: refused */
    raft_msg v = msg(RAFT_MSG_VOTE, 2, 1, 4);
    v.index = 10;
    v.log_term = 2;
    step_ok(r, &v);
    ready_round(r, &o);
    assert_true(find_msg(&o, RAFT_MSG_VOTE_RESP, 2)->reject);
    /* same last term, shorter log: refused */
    v = msg(RAFT_MSG_VOTE, 3, 1, 4);
    v.index = 3;
    v.log_term = 3;
    step_ok(r, &v);
    ready_round(r, &o);
    assert_true(find_msg(&o, RAFT_MSG_VOTE_RESP, 3)->reject);
    assert_int_equal(status(r).vote, 0);
    /* same last term, same length: granted */
    v.index = 4;
    step_ok(r, &v);
    ready_round(r, &o);
    assert_false(find_msg(&o, RAFT_MSG_VOTE_RESP, 3)->reject);
    assert_int_equal(status(r).vote, 3);
    raft_free(r);
}

static void no_prevote(raft_opts *o)
{
    o->pre_vote = false;
}

static void test_candidate_steps_down_on_higher_term(void **state)
{
    (void)state;
    raft_opts o = opts_for(1);
    o.pre_vote = false;
    raft *r = node_with_log(1, 3, NULL, 0, 1, 1, &o);
    out ob;
    for (int i = 0; i < 40 && status(r).role != RAFT_CANDIDATE; i++)
        raft_tick(r);
    assert_int_equal(status(r).role, RAFT_CANDIDATE);
    assert_int_equal(status(r).term, 2);
    ready_round(r, &ob);
    assert_non_null(find_msg(&ob, RAFT_MSG_VOTE, 2));
    assert_non_null(find_msg(&ob, RAFT_MSG_VOTE, 3));
    /* a heartbeat from a leader of a higher term */
    raft_msg hb = msg(RAFT_MSG_HEARTBEAT, 3, 1, 5);
    step_ok(r, &hb);
    raft_status s = status(r);
    assert_int_equal(s.role, RAFT_FOLLOWER);
    assert_int_equal(s.term, 5);
    assert_int_equal(s.leader, 3);
    assert_int_equal(s.vote, 0);
    raft_free(r);

    /* a candidate losing: a majority of refusals */
    r = node_with_log(1, 3, NULL, 0, 1, 1, &o);
    for (int i = 0; i < 40 && status(r).role != RAFT_CANDIDATE; i++)
        raft_tick(r);
    ready_round(r, &ob);
    raft_msg no = msg(RAFT_MSG_VOTE_RESP, 2, 1, 2);
    no.reject = true;
    step_ok(r, &no);
    assert_int_equal(status(r).role, RAFT_CANDIDATE);
    no.from = 3;
    step_ok(r, &no);
    assert_int_equal(status(r).role, RAFT_FOLLOWER);
    assert_int_equal(status(r).term, 2);
    raft_free(r);
}

static void test_candidate_with_majority_becomes_leader(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 5, no_prevote);
    elect(&c, 3);
    for (int i = 1; i <= 5; i++) {
        raft_status s = status(c.r[i]);
        assert_int_equal(s.term, 2);
        assert_int_equal(s.leader, 3);
        assert_int_equal(s.commit, 2); /* the leader's no-op */
        assert_int_equal(c.applied[i], 2);
    }
    cluster_free(&c);
}

static void test_prevote_does_not_bump_term(void **state)
{
    (void)state;
    raft *r = node_with_log(1, 3, NULL, 0, 1, 1, NULL);
    out o;
    for (int i = 0; i < 40 && status(r).role == RAFT_FOLLOWER; i++)
        raft_tick(r);
    assert_int_equal(status(r).role, RAFT_PRECANDIDATE);
    assert_int_equal(status(r).term, 1);
    ready_round(r, &o);
    const raft_msg *pv = find_msg(&o, RAFT_MSG_PREVOTE, 2);
    assert_non_null(pv);
    assert_int_equal(pv->term, 2);
    assert_false(o.hs_changed);
    /* an isolated pre-candidate keeps its term however often it times out */
    for (int i = 0; i < 200; i++)
        raft_tick(r);
    assert_int_equal(status(r).term, 1);
    /* the receiver of a pre-vote does not adopt its term or record a vote */
    raft *r2 = node_with_log(2, 3, NULL, 0, 1, 1, NULL);
    raft_msg m = msg(RAFT_MSG_PREVOTE, 1, 2, 2);
    m.index = 1;
    m.log_term = 1;
    step_ok(r2, &m);
    ready_round(r2, &o);
    assert_false(find_msg(&o, RAFT_MSG_PREVOTE_RESP, 1)->reject);
    assert_int_equal(status(r2).term, 1);
    assert_int_equal(status(r2).vote, 0);
    /* with a quorum of pre-votes the pre-candidate becomes a candidate */
    raft_msg yes = msg(RAFT_MSG_PREVOTE_RESP, 2, 1, 2);
    step_ok(r, &yes);
    assert_int_equal(status(r).role, RAFT_CANDIDATE);
    assert_int_equal(status(r).term, 2);
    raft_free(r);
    raft_free(r2);
}

static void test_prevote_ignored_while_leader_is_heard(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    /* node 3 heard from the leader just now: a (pre-)vote is ignored, term unchanged */
    raft_msg m = msg(RAFT_MSG_PREVOTE, 2, 3, 3);
    m.index = 100;
    m.log_term = 2;
    step_ok(c.r[3], &m);
    out o;
    ready_round(c.r[3], &o);
    assert_null(find_msg(&o, RAFT_MSG_PREVOTE_RESP, 2));
    m.type = RAFT_MSG_VOTE;
    step_ok(c.r[3], &m);
    assert_int_equal(status(c.r[3]).term, 2);
    /* ...unless it comes from a leadership transfer */
    m.transfer = true;
    step_ok(c.r[3], &m);
    assert_int_equal(status(c.r[3]).term, 3);
    assert_int_equal(status(c.r[3]).vote, 2);
    cluster_free(&c);
}

/* ---- replication rules ------------------------------------------------------------------ */

static void test_reject_append_when_prev_log_mismatch(void **state)
{
    (void)state;
    uint64_t terms[] = {1, 2};
    raft *r = node_with_log(1, 3, terms, 2, 2, 1, NULL); /* entries 1(t1) 2(t1) 3(t2) */
    out o;
    /* prev index beyond our log */
    raft_msg a = msg(RAFT_MSG_APPEND, 2, 1, 3);
    a.index = 7;
    a.log_term = 3;
    step_ok(r, &a);
    ready_round(r, &o);
    const raft_msg *resp = find_msg(&o, RAFT_MSG_APPEND_RESP, 2);
    assert_true(resp->reject);
    assert_int_equal(resp->index, 7);
    assert_int_equal(resp->reject_hint, 3);
    /* prev index present with another term: the hint is the last index
       whose term is <= the leader's term there, with that term */
    a.index = 3;
    a.log_term = 1;
    step_ok(r, &a);
    ready_round(r, &o);
    resp = find_msg(&o, RAFT_MSG_APPEND_RESP, 2);
    assert_true(resp->reject);
    assert_int_equal(resp->reject_hint, 2);
    assert_int_equal(resp->log_term, 1);
    assert_int_equal(status(r).last_index, 3);
    /* matching prev: accepted, commit follows the leader up to the new entries */
    raft_entry e = {.term = 3, .index = 4, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload};
    a.index = 3;
    a.log_term = 2;
    a.entries = &e;
    a.n_entries = 1;
    a.commit = 10;
    step_ok(r, &a);
    ready_round(r, &o);
    resp = find_msg(&o, RAFT_MSG_APPEND_RESP, 2);
    assert_false(resp->reject);
    assert_int_equal(resp->index, 4);
    assert_int_equal(status(r).commit, 4);
    assert_int_equal(o.n_entries, 1);
    assert_int_equal(o.last_committed, 4);
    raft_free(r);
}

static uint64_t next_of(const raft *r, raft_id id)
{
    raft_status s = status(r);
    for (uint32_t i = 0; i < s.n_progress; i++)
        if (s.progress[i].id == id) return s.progress[i].next;
    fail_msg("no progress for %llu", (unsigned long long)id);
    return 0;
}

static void test_backtracking_skips_whole_terms(void **state)
{
    (void)state;
    /* follower: indexes 2..7 of terms 3..8, all uncommitted; the leader has
       term 2 at index 7: one rejection points below all of them */
    uint64_t fterms[] = {3, 4, 5, 6, 7, 8};
    raft *f = node_with_log(2, 3, fterms, 6, 8, 1, NULL);
    raft_msg a = msg(RAFT_MSG_APPEND, 1, 2, 9);
    a.index = 7;
    a.log_term = 2;
    step_ok(f, &a);
    out o;
    ready_round(f, &o);
    const raft_msg *resp = find_msg(&o, RAFT_MSG_APPEND_RESP, 1);
    assert_true(resp->reject);
    assert_int_equal(resp->reject_hint, 1);
    assert_int_equal(resp->log_term, 1);
    raft_free(f);

    /* leader: indexes 2..7 of term 2, leader of term 3 (no-op at 8) */
    uint64_t lterms[] = {2, 2, 2, 2, 2, 2};
    raft_opts ol = opts_for(1);
    ol.pre_vote = false;
    raft *l = node_with_log(1, 3, lterms, 6, 2, 1, &ol);
    for (int i = 0; i < 40 && status(l).role != RAFT_CANDIDATE; i++)
        raft_tick(l);
    ready_round(l, &o);
    raft_msg g = msg(RAFT_MSG_VOTE_RESP, 2, 1, 3);
    step_ok(l, &g);
    assert_int_equal(status(l).role, RAFT_LEADER);
    ready_round(l, &o);
    assert_int_equal(next_of(l, 2), 8);
    /* follower's hint: index 5 holds term 2 there -> next 6 */
    raft_msg rej = msg(RAFT_MSG_APPEND_RESP, 2, 1, 3);
    rej.reject = true;
    rej.index = 7;
    rej.reject_hint = 5;
    rej.log_term = 2;
    step_ok(l, &rej);
    assert_int_equal(next_of(l, 2), 6);
    /* hint with term 1: the leader skips its own term-2 run too -> next 2 */
    ready_round(l, &o);
    rej.index = 5;
    rej.reject_hint = 5;
    rej.log_term = 1;
    step_ok(l, &rej);
    assert_int_equal(next_of(l, 2), 2);
    /* a stale rejection (not for the probe in flight) changes nothing */
    rej.index = 7;
    step_ok(l, &rej);
    assert_int_equal(next_of(l, 2), 2);
    raft_free(l);
}

static void test_follower_truncates_conflicting_suffix(void **state)
{
    (void)state;
    uint64_t terms[] = {1, 1, 1};
    raft *r = node_with_log(1, 3, terms, 3, 1, 1, NULL); /* 1..4 term 1, commit 1 */
    raft_entry e[2] = {{.term = 2, .index = 3, .type = RAFT_ENTRY_NOOP},
                       {.term = 2, .index = 4, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload}};
    raft_msg a = msg(RAFT_MSG_APPEND, 2, 1, 2);
    a.index = 2;
    a.log_term = 1;
    a.entries = e;
    a.n_entries = 1; /* only index 3: index 4 (term 1) must go too */
    step_ok(r, &a);
    raft_status s = status(r);
    assert_int_equal(s.last_index, 3);
    uint64_t t;
    assert_true(raft_log_term(r, 3, &t));
    assert_int_equal(t, 2);
    assert_false(raft_log_term(r, 4, &t));
    out o;
    ready_round(r, &o);
    assert_int_equal(o.first_entry, 3); /* storage rewrites from the conflict */
    assert_int_equal(o.n_entries, 1);
    /* a stale duplicate of an older append never truncates matching entries */
    a.n_entries = 2;
    step_ok(r, &a);
    a.n_entries = 1;
    step_ok(r, &a);
    assert_int_equal(status(r).last_index, 4);
    raft_free(r);
}

static void test_follower_never_truncates_committed_entries(void **state)
{
    (void)state;
    uint64_t terms[] = {1, 1};
    raft *r = node_with_log(1, 3, terms, 2, 1, 3, NULL); /* 1..3 term 1, commit 3 */
    raft_entry e = {.term = 2, .index = 3, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload};
    raft_msg a = msg(RAFT_MSG_APPEND, 2, 1, 2);
    a.index = 2;
    a.log_term = 1;
    a.entries = &e;
    a.n_entries = 1;
    a.commit = 3;
    step_ok(r, &a);
    uint64_t t;
    assert_true(raft_log_term(r, 3, &t));
    assert_int_equal(t, 1); /* the committed entry stays */
    out o;
    ready_round(r, &o);
    assert_int_equal(o.n_entries, 0);
    const raft_msg *resp = find_msg(&o, RAFT_MSG_APPEND_RESP, 2);
    assert_false(resp->reject);
    assert_int_equal(resp->index, 3); /* "I match you up to my commit" */
    raft_free(r);
}

static void test_leader_never_overwrites_own_log(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    propose(&c, 1);
    settle(&c);
    raft_status before = status(c.r[1]);
    /* an append claiming the same term from someone else is a protocol error */
    raft_entry e = {.term = 2, .index = 2, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload};
    raft_msg a = msg(RAFT_MSG_APPEND, 2, 1, 2);
    a.index = 1;
    a.log_term = 1;
    a.entries = &e;
    a.n_entries = 1;
    assert_int_equal(raft_step(c.r[1], &a), RAFT_EPROTO);
    /* rejections from followers only move next indexes, never the leader's log */
    raft_msg rej = msg(RAFT_MSG_APPEND_RESP, 2, 1, 2);
    rej.reject = true;
    rej.index = 3;
    rej.reject_hint = 0;
    step_ok(c.r[1], &rej);
    raft_status after = status(c.r[1]);
    assert_int_equal(after.role, RAFT_LEADER);
    assert_int_equal(after.last_index, before.last_index);
    uint64_t t;
    assert_true(raft_log_term(c.r[1], 3, &t));
    assert_int_equal(t, 2);
    settle(&c);
    assert_int_equal(status(c.r[2]).last_index, before.last_index);
    cluster_free(&c);
}

/* Figure 8: node 1 holds an entry of term 2 that never committed; as leader
 * of term 3, seeing it on a majority must not commit it; only when an entry
 * of term 3 reaches a majority do both commit. */
static void figure8(bool unsafe)
{
    uint64_t terms[] = {2};
    raft_opts o = opts_for(1);
    o.pre_vote = false;
    o.unsafe_commit_any_term = unsafe;
    raft *r = node_with_log(1, 5, terms, 1, 2, 1, &o); /* 1(t1, committed) 2(t2) */
    out ob;
    for (int i = 0; i < 40 && status(r).role != RAFT_CANDIDATE; i++)
        raft_tick(r);
    assert_int_equal(status(r).term, 3);
    ready_round(r, &ob);
    for (raft_id p = 2; p <= 3; p++) {
        raft_msg g = msg(RAFT_MSG_VOTE_RESP, p, 1, 3);
        step_ok(r, &g);
    }
    assert_int_equal(status(r).role, RAFT_LEADER);
    ready_round(r, &ob); /* persists the no-op (index 3, term 3) */
    assert_int_equal(status(r).last_index, 3);
    /* nodes 2 and 3 acknowledge index 2 (term 2): on 3 of 5 nodes */
    for (raft_id p = 2; p <= 3; p++) {
        raft_msg ack = msg(RAFT_MSG_APPEND_RESP, p, 1, 3);
        ack.index = 2;
        step_ok(r, &ack);
    }
    assert_int_equal(status(r).commit, unsafe ? 2 : 1);
    /* the term-3 no-op reaches a majority: everything up to it commits */
    for (raft_id p = 2; p <= 3; p++) {
        raft_msg ack = msg(RAFT_MSG_APPEND_RESP, p, 1, 3);
        ack.index = 3;
        step_ok(r, &ack);
    }
    assert_int_equal(status(r).commit, 3);
    raft_free(r);
}

static void test_commit_only_current_term_by_counting(void **state)
{
    (void)state;
    figure8(false);
}

static void test_unsafe_flag_commits_earlier_term_by_counting(void **state)
{
    (void)state;
    figure8(true);
}

static void test_leader_counts_itself_only_after_persisting(void **state)
{
    (void)state;
    raft_opts o = opts_for(1);
    raft *r;
    assert_int_equal(raft_new(&o, NULL, &r), RAFT_OK);
    raft_config c = voters(1);
    assert_int_equal(raft_bootstrap(r, &c), RAFT_OK);
    out ob;
    ready_round(r, &ob);
    for (int i = 0; i < 40 && status(r).role != RAFT_LEADER; i++)
        raft_tick(r);
    assert_int_equal(status(r).role, RAFT_LEADER);
    assert_int_equal(status(r).commit, 1); /* no-op not yet durable */
    ready_round(r, &ob);
    assert_int_equal(ob.n_entries, 1);
    assert_int_equal(status(r).commit, 2);
    uint64_t idx;
    assert_int_equal(raft_propose(r, payload, 8, &idx), RAFT_OK);
    assert_int_equal(idx, 3);
    assert_int_equal(status(r).commit, 2);
    ready_round(r, &ob); /* persists 3 and (now) the no-op's application */
    assert_int_equal(status(r).commit, 3);
    ready_round(r, &ob);
    assert_int_equal(ob.last_committed, 3);
    raft_free(r);
}

static void test_replication_commits_and_applies_everywhere(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 2);
    uint64_t last = 0;
    for (int i = 0; i < 150; i++) /* more than one message's worth of entries */
        last = propose(&c, 2);
    settle(&c);
    tick_all(&c);
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(status(c.r[i]).commit, last);
        assert_int_equal(c.applied[i], last);
    }
    cluster_free(&c);
}

static void test_lagging_follower_catches_up(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    c.cut[3] = true;
    uint64_t last = 0;
    for (int i = 0; i < 20; i++)
        last = propose(&c, 1);
    settle(&c);
    assert_int_equal(status(c.r[1]).commit, last); /* 1 and 2 are a majority */
    assert_true(status(c.r[3]).last_index < last);
    c.cut[3] = false;
    for (int i = 0; i < 5; i++)
        tick_all(&c);
    assert_int_equal(status(c.r[3]).last_index, last);
    assert_int_equal(c.applied[3], last);
    cluster_free(&c);
}

static void no_check_quorum(raft_opts *o)
{
    o->check_quorum = false;
}

static void test_stale_leader_steps_down_on_higher_term(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, no_check_quorum); /* else the cut-off leader steps down by itself */
    elect(&c, 1);
    c.cut[1] = true;
    elect(&c, 2);
    assert_int_equal(status(c.r[2]).term, 3);
    assert_int_equal(status(c.r[1]).role, RAFT_LEADER); /* has not heard yet */
    c.cut[1] = false;
    tick_all(&c); /* its heartbeat is answered with term 3 */
    assert_int_equal(status(c.r[1]).role, RAFT_FOLLOWER);
    assert_int_equal(status(c.r[1]).term, 3);
    assert_int_equal(status(c.r[1]).leader, 2);
    cluster_free(&c);
}

static void test_check_quorum_leader_steps_down(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    for (int i = 0; i < 30; i++) { /* connected: stays leader */
        tick_all(&c);
        assert_int_equal(status(c.r[1]).role, RAFT_LEADER);
        assert_true(raft_leader_has_quorum(c.r[1]));
    }
    c.cut[2] = c.cut[3] = true;
    int ticks = 0;
    for (; ticks < 25 && status(c.r[1]).role == RAFT_LEADER; ticks++) {
        raft_tick(c.r[1]);
        settle(&c);
    }
    /* within two election timeouts (checked once per timeout) */
    assert_int_equal(status(c.r[1]).role, RAFT_FOLLOWER);
    assert_true(ticks <= 20);
    assert_false(raft_leader_has_quorum(c.r[1]));
    cluster_free(&c);
}

static void test_leader_has_quorum_tracks_recent_contact(void **state)
{
    (void)state;
    raft_opts o = opts_for(1);
    o.check_quorum = false; /* so it stays leader and we can watch the predicate */
    o.pre_vote = false;
    raft *r = node_with_log(1, 3, NULL, 0, 1, 1, &o);
    assert_false(raft_leader_has_quorum(r)); /* not leader */
    out ob;
    for (int i = 0; i < 40 && status(r).role != RAFT_CANDIDATE; i++)
        raft_tick(r);
    ready_round(r, &ob);
    raft_msg g = msg(RAFT_MSG_VOTE_RESP, 2, 1, 2);
    step_ok(r, &g);
    assert_int_equal(status(r).role, RAFT_LEADER);
    assert_true(raft_leader_has_quorum(r)); /* the vote is contact */
    for (int i = 0; i < 10; i++)
        raft_tick(r);
    assert_true(raft_leader_has_quorum(r)); /* exactly one election timeout */
    raft_tick(r);
    assert_false(raft_leader_has_quorum(r));
    raft_msg hr = msg(RAFT_MSG_HEARTBEAT_RESP, 3, 1, 2);
    step_ok(r, &hr);
    assert_true(raft_leader_has_quorum(r));
    raft_free(r);
}

/* ---- membership ---------------------------------------------------------------------------- */

static void test_learner_does_not_vote(void **state)
{
    (void)state;
    /* config {1, 2 voters; 3 learner} */
    raft_config c = voters(2);
    c.nodes[c.n++] = (raft_node_cfg){3, false};
    raft_entry e = cfg_entry(1, 1, &c);
    raft_persisted p = {.hs = {1, 0, 1}, .entries = &e, .n_entries = 1};
    raft_opts o3 = opts_for(3);
    raft *l;
    assert_int_equal(raft_new(&o3, &p, &l), RAFT_OK);
    assert_false(status(l).voter);
    for (int i = 0; i < 500; i++) /* a learner never campaigns */
        raft_tick(l);
    assert_int_equal(status(l).role, RAFT_FOLLOWER);
    assert_int_equal(status(l).term, 1);
    out ob;
    ready_round(l, &ob);
    assert_int_equal(ob.n, 0);
    raft_free(l);

    raft_opts o1 = opts_for(1);
    o1.pre_vote = false;
    raft *r;
    e = cfg_entry(1, 1, &c);
    assert_int_equal(raft_new(&o1, &p, &r), RAFT_OK);
    for (int i = 0; i < 40 && status(r).role != RAFT_CANDIDATE; i++)
        raft_tick(r);
    ready_round(r, &ob);
    assert_non_null(find_msg(&ob, RAFT_MSG_VOTE, 2));
    assert_null(find_msg(&ob, RAFT_MSG_VOTE, 3)); /* learners are not asked */
    raft_msg g = msg(RAFT_MSG_VOTE_RESP, 3, 1, 2);
    step_ok(r, &g);
    assert_int_equal(status(r).role, RAFT_CANDIDATE); /* a learner's grant is not counted */
    g.from = 2;
    step_ok(r, &g);
    assert_int_equal(status(r).role, RAFT_LEADER);
    raft_free(r);
}

static void test_learner_promoted_when_caught_up(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 1, NULL);
    elect(&c, 1);
    int n2 = cluster_add_empty(&c);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_ADD_LEARNER, (raft_id)n2, NULL), RAFT_OK);
    c.cut[n2] = true;
    settle(&c);
    for (int i = 0; i < 30; i++)
        propose(&c, 1);
    settle(&c);
    /* the learner has nothing yet: promotion refused */
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_PROMOTE, (raft_id)n2, NULL), RAFT_ENOTCAUGHTUP);
    c.cut[n2] = false;
    for (int i = 0; i < 5; i++)
        tick_all(&c);
    raft_status s2 = status(c.r[n2]);
    assert_false(s2.voter);
    assert_int_equal(s2.last_index, status(c.r[1]).last_index);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_PROMOTE, (raft_id)n2, NULL), RAFT_OK);
    tick_all(&c);
    assert_true(status(c.r[n2]).voter);
    raft_status s1 = status(c.r[1]);
    assert_int_equal(raft_config_voters(&s1.config), 2);
    /* now a quorum needs both: with 2 cut off the leader cannot commit */
    c.cut[n2] = true;
    uint64_t idx = propose(&c, 1);
    settle(&c);
    assert_true(status(c.r[1]).commit < idx);
    c.cut[n2] = false;
    tick_all(&c);
    assert_int_equal(status(c.r[1]).commit, idx);
    cluster_free(&c);
}

static void auto_promote(raft_opts *o)
{
    o->auto_promote = true;
}

static void test_learner_auto_promoted_by_leader(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, auto_promote);
    elect(&c, 1);
    int n4 = cluster_add_empty(&c);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_ADD_LEARNER, (raft_id)n4, NULL), RAFT_OK);
    for (int i = 0; i < 10; i++)
        tick_all(&c);
    assert_true(status(c.r[n4]).voter);
    raft_status s1 = status(c.r[1]);
    assert_int_equal(raft_config_voters(&s1.config), 4);
    cluster_free(&c);
}

static void test_one_config_change_at_a_time(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    /* a leader that has not committed its no-op yet may not change the config */
    for (int t = 0; t < 100 && status(c.r[1]).role == RAFT_FOLLOWER; t++)
        raft_tick(c.r[1]);
    settle(&c);
    int n4 = cluster_add_empty(&c);
    c.cut[2] = c.cut[3] = true;
    for (int i = 0; i < 3; i++) {
        raft_tick(c.r[1]);
        drain(&c, 1);
    }
    c.cut[2] = c.cut[3] = false;
    settle(&c);
    assert_int_equal(status(c.r[1]).role, RAFT_LEADER);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_ADD_LEARNER, (raft_id)n4, NULL), RAFT_OK);
    /* uncommitted change in flight: the next is refused */
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_ADD_LEARNER, 9, NULL), RAFT_EBUSY);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_REMOVE, 3, NULL), RAFT_EBUSY);
    settle(&c);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_REMOVE, 3, NULL), RAFT_OK);
    settle(&c);
    raft_status s = status(c.r[1]);
    assert_int_equal(s.config.n, 3);
    assert_int_equal(raft_config_find(&s.config, 3), -1);
    /* argument errors */
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_ADD_LEARNER, 2, NULL), RAFT_EINVAL);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_PROMOTE, 2, NULL), RAFT_EINVAL);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_REMOVE, 77, NULL), RAFT_EINVAL);
    assert_int_equal(raft_propose_conf(c.r[1], 99, 5, NULL), RAFT_EINVAL);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_ADD_LEARNER, 0, NULL), RAFT_EINVAL);
    assert_int_equal(raft_propose_conf(c.r[2], RAFT_CONF_ADD_LEARNER, 8, NULL), RAFT_ENOTLEADER);
    cluster_free(&c);
}

static void test_conf_change_waits_for_commit_in_current_term(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    c.cut[2] = c.cut[3] = true;
    /* node 1 cannot reach anyone, so make it leader by hand: no pre-vote */
    raft_free(c.r[1]);
    raft_opts o = opts_for(1);
    o.pre_vote = false;
    c.r[1] = node_with_log(1, 3, NULL, 0, 1, 1, &o);
    for (int i = 0; i < 40 && status(c.r[1]).role != RAFT_CANDIDATE; i++)
        raft_tick(c.r[1]);
    raft_msg g = msg(RAFT_MSG_VOTE_RESP, 2, 1, 2);
    drain(&c, 1);
    step_ok(c.r[1], &g);
    assert_int_equal(status(c.r[1]).role, RAFT_LEADER);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_REMOVE, 3, NULL), RAFT_EAGAIN);
    assert_int_equal(raft_read_index(c.r[1], 1), RAFT_EAGAIN);
    c.cut[2] = c.cut[3] = false;
    settle(&c);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_REMOVE, 3, NULL), RAFT_OK);
    cluster_free(&c);
}

static void test_removed_leader_steps_down(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    assert_int_equal(raft_propose_conf(c.r[1], RAFT_CONF_REMOVE, 1, NULL), RAFT_OK);
    settle(&c);
    assert_int_equal(status(c.r[1]).role, RAFT_FOLLOWER);
    assert_false(status(c.r[1]).voter);
    /* the rest elect a leader among themselves; the old leader never campaigns */
    for (int i = 0; i < 100; i++) {
        tick_all(&c);
        if (status(c.r[2]).role == RAFT_LEADER || status(c.r[3]).role == RAFT_LEADER) break;
    }
    assert_true(status(c.r[2]).role == RAFT_LEADER || status(c.r[3]).role == RAFT_LEADER);
    assert_int_equal(status(c.r[1]).role, RAFT_FOLLOWER);
    /* removing the last voter is refused */
    int l = status(c.r[2]).role == RAFT_LEADER ? 2 : 3;
    assert_int_equal(raft_propose_conf(c.r[l], RAFT_CONF_REMOVE, (raft_id)(5 - l), NULL), RAFT_OK);
    settle(&c);
    tick_all(&c);
    assert_int_equal(raft_propose_conf(c.r[l], RAFT_CONF_REMOVE, (raft_id)l, NULL), RAFT_EINVAL);
    cluster_free(&c);
}

/* ---- snapshots -------------------------------------------------------------------------------- */

static void test_snapshot_install_on_lagging_follower(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    c.cut[3] = true;
    uint64_t last = 0;
    for (int i = 0; i < 40; i++)
        last = propose(&c, 1);
    settle(&c);
    assert_int_equal(c.applied[1], last);
    const char snap[] = "state-machine";
    assert_int_equal(raft_compact(c.r[1], last - 5, snap, sizeof snap), RAFT_OK);
    out ob;
    ready_round(c.r[1], &ob);
    assert_true(ob.snapshot);
    assert_false(ob.install);
    assert_int_equal(ob.snap_index, last - 5);
    raft_status s = status(c.r[1]);
    assert_int_equal(s.first_index, last - 4);
    uint64_t t;
    assert_false(raft_log_term(c.r[1], last - 6, &t));
    c.cut[3] = false;
    for (int i = 0; i < 5; i++)
        tick_all(&c);
    assert_true(c.installed[3]);
    s = status(c.r[3]);
    assert_int_equal(s.snapshot_index, last - 5);
    assert_int_equal(s.last_index, last);
    assert_int_equal(c.applied[3], last);
    assert_int_equal(s.config.n, 3);
    /* compaction errors */
    assert_int_equal(raft_compact(c.r[1], last - 5, snap, sizeof snap), RAFT_EINVAL); /* not above */
    assert_int_equal(raft_compact(c.r[1], last + 1, snap, sizeof snap), RAFT_EINVAL); /* not applied */
    assert_int_equal(raft_compact(c.r[1], last, NULL, 3), RAFT_EINVAL);
    cluster_free(&c);
}

static void test_snapshot_ignored_when_already_committed(void **state)
{
    (void)state;
    uint64_t terms[] = {1, 1, 1};
    raft *r = node_with_log(1, 3, terms, 3, 1, 4, NULL);
    raft_snapshot s = {.index = 3, .term = 1, .config = voters(3)};
    raft_msg m = msg(RAFT_MSG_SNAPSHOT, 2, 1, 2);
    m.snapshot = &s;
    step_ok(r, &m);
    out o;
    ready_round(r, &o);
    assert_false(o.snapshot);
    const raft_msg *resp = find_msg(&o, RAFT_MSG_APPEND_RESP, 2);
    assert_int_equal(resp->index, 4);
    assert_int_equal(status(r).last_index, 4);
    /* a snapshot whose last entry we hold: commit fast-forwards, log kept */
    uint64_t terms2[] = {1, 1, 1, 1};
    raft *r2 = node_with_log(1, 3, terms2, 4, 1, 1, NULL);
    s.index = 4;
    step_ok(r2, &m);
    ready_round(r2, &o);
    assert_false(o.snapshot);
    assert_int_equal(status(r2).commit, 4);
    assert_int_equal(status(r2).last_index, 5);
    raft_free(r);
    raft_free(r2);
}

/* ---- leadership transfer and read index -------------------------------------------------------- */

static void test_leadership_transfer(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    c.cut[3] = true;
    propose(&c, 1);
    settle(&c);
    c.cut[3] = false;
    /* node 3 lags: it is brought up to date first, then told to campaign */
    assert_int_equal(raft_transfer_leader(c.r[1], 3), RAFT_OK);
    assert_int_equal(raft_propose(c.r[1], payload, 8, NULL), RAFT_EBUSY);
    for (int i = 0; i < 5 && status(c.r[3]).role != RAFT_LEADER; i++)
        tick_all(&c);
    assert_int_equal(status(c.r[3]).role, RAFT_LEADER);
    assert_int_equal(status(c.r[3]).term, 3);
    assert_int_equal(status(c.r[1]).role, RAFT_FOLLOWER);
    assert_int_equal(status(c.r[1]).leader, 3);
    /* errors */
    assert_int_equal(raft_transfer_leader(c.r[1], 2), RAFT_ENOTLEADER);
    assert_int_equal(raft_transfer_leader(c.r[3], 9), RAFT_EINVAL);
    assert_int_equal(raft_transfer_leader(c.r[3], 3), RAFT_OK);
    /* a transfer to an unreachable node is abandoned after an election timeout */
    c.cut[2] = true;
    assert_int_equal(raft_transfer_leader(c.r[3], 2), RAFT_OK);
    assert_int_equal(status(c.r[3]).transfer_target, 2);
    assert_int_equal(raft_propose(c.r[3], payload, 8, NULL), RAFT_EBUSY);
    for (int i = 0; i < 10; i++)
        tick_all(&c);
    assert_int_equal(status(c.r[3]).transfer_target, 0);
    assert_int_equal(status(c.r[3]).role, RAFT_LEADER);
    assert_int_equal(raft_propose(c.r[3], payload, 8, NULL), RAFT_OK);
    cluster_free(&c);
}

static void test_read_index_requires_heartbeat_quorum(void **state)
{
    (void)state;
    cluster c;
    cluster_init(&c, 3, NULL);
    elect(&c, 1);
    uint64_t idx = propose(&c, 1);
    settle(&c);
    c.cut[2] = c.cut[3] = true;
    assert_int_equal(raft_read_index(c.r[1], 77), RAFT_OK);
    settle(&c);
    raft_tick(c.r[1]);
    settle(&c);
    assert_int_equal(c.n_reads[1], 0); /* nobody confirmed leadership */
    c.cut[2] = false;
    tick_all(&c);
    assert_int_equal(c.n_reads[1], 1);
    assert_int_equal(c.reads[1][0].ctx, 77);
    assert_int_equal(c.reads[1][0].index, idx);
    assert_int_equal(c.reads[1][0].status, RAFT_OK);
    /* a read pending when leadership is lost is reported failed */
    c.cut[2] = true;
    assert_int_equal(raft_read_index(c.r[1], 78), RAFT_OK);
    for (int i = 0; i < 30 && status(c.r[1]).role == RAFT_LEADER; i++) {
        raft_tick(c.r[1]);
        settle(&c);
    }
    assert_int_equal(c.n_reads[1], 2);
    assert_int_equal(c.reads[1][1].ctx, 78);
    assert_int_equal(c.reads[1][1].status, RAFT_ENOTLEADER);
    assert_int_equal(raft_read_index(c.r[1], 79), RAFT_ENOTLEADER);
    cluster_free(&c);

    /* a single voter confirms at once */
    cluster_init(&c, 1, NULL);
    elect(&c, 1);
    assert_int_equal(raft_read_index(c.r[1], 5), RAFT_OK);
    drain(&c, 1);
    assert_int_equal(c.n_reads[1], 1);
    assert_int_equal(c.reads[1][0].index, 2);
    cluster_free(&c);
}

/* ---- inputs that must be refused -------------------------------------------------------------- */

static void test_step_rejects_misaddressed_and_malformed(void **state)
{
    (void)state;
    raft *r = node_with_log(1, 3, NULL, 0, 1, 1, NULL);
    raft_msg m = msg(RAFT_MSG_HEARTBEAT, 2, 3, 1);
    assert_int_equal(raft_step(r, &m), RAFT_EINVAL); /* not for us */
    m = msg(RAFT_MSG_HEARTBEAT, 1, 1, 1);
    assert_int_equal(raft_step(r, &m), RAFT_EINVAL); /* from ourselves */
    m = msg(RAFT_MSG_HEARTBEAT, 0, 1, 1);
    assert_int_equal(raft_step(r, &m), RAFT_EINVAL);
    m = msg(0, 2, 1, 1);
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO);
    m = msg(RAFT_MSG_HEARTBEAT, 2, 1, 0);
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO);
    m = msg(RAFT_MSG_SNAPSHOT, 2, 1, 1); /* no snapshot */
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO);
    raft_entry e = {.term = 5, .index = 2, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload};
    m = msg(RAFT_MSG_APPEND, 2, 1, 2);
    m.index = 1;
    m.log_term = 1;
    m.entries = &e;
    m.n_entries = 1;
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO); /* entry term above message term */
    e.term = 2;
    e.index = 3;
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO); /* not consecutive */
    e.index = 2;
    e.type = 9;
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO);
    e.type = RAFT_ENTRY_CONFIG; /* "payload" is not a configuration */
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO);
    m.type = RAFT_MSG_HEARTBEAT; /* entries on a non-append */
    assert_int_equal(raft_step(r, &m), RAFT_EPROTO);
    assert_int_equal(status(r).last_index, 1);
    assert_int_equal(status(r).term, 1);
    raft_free(r);
}

static void test_propose_errors(void **state)
{
    (void)state;
    raft *r = node_with_log(1, 3, NULL, 0, 1, 1, NULL);
    assert_int_equal(raft_propose(r, payload, 8, NULL), RAFT_ENOTLEADER);
    assert_int_equal(raft_read_index(r, 1), RAFT_ENOTLEADER);
    assert_int_equal(raft_transfer_leader(r, 2), RAFT_ENOTLEADER);
    raft_free(r);
    cluster c;
    cluster_init(&c, 1, NULL);
    elect(&c, 1);
    assert_int_equal(raft_propose(c.r[1], NULL, 4, NULL), RAFT_EINVAL);
    assert_int_equal(raft_propose(c.r[1], payload, (size_t)RAFT_MAX_ENTRY_BYTES + 1, NULL), RAFT_ETOOBIG);
    assert_int_equal(raft_propose(c.r[1], NULL, 0, NULL), RAFT_OK); /* empty payload is fine */
    cluster_free(&c);
}

static void test_new_and_bootstrap_errors(void **state)
{
    (void)state;
    raft *r;
    raft_opts o = opts_for(0);
    assert_int_equal(raft_new(&o, NULL, &r), RAFT_EINVAL);
    o = opts_for(1);
    o.election_ticks = 1;
    assert_int_equal(raft_new(&o, NULL, &r), RAFT_EINVAL);
    o = opts_for(1);
    o.max_msg_entries = RAFT_MAX_MSG_ENTRIES + 1;
    assert_int_equal(raft_new(&o, NULL, &r), RAFT_EINVAL);
    /* persisted state that cannot be right */
    raft_config c3 = voters(3);
    raft_entry e[3];
    e[0] = cfg_entry(1, 1, &c3);
    e[1] = (raft_entry){.term = 1, .index = 3, .type = RAFT_ENTRY_NORMAL}; /* gap */
    raft_persisted p = {.hs = {1, 0, 1}, .entries = e, .n_entries = 2};
    o = opts_for(1);
    assert_int_equal(raft_new(&o, &p, &r), RAFT_ECORRUPT);
    e[1].index = 2;
    p.hs.commit = 5; /* commit beyond the log */
    assert_int_equal(raft_new(&o, &p, &r), RAFT_ECORRUPT);
    p.hs.commit = 2;
    p.hs.term = 0; /* entries from a term above the hard state's */
    assert_int_equal(raft_new(&o, &p, &r), RAFT_ECORRUPT);
    p.hs.term = 2;
    e[1].term = 3; /* entry term above term */
    assert_int_equal(raft_new(&o, &p, &r), RAFT_ECORRUPT);
    e[1].term = 1;
    e[1].type = RAFT_ENTRY_CONFIG; /* config entry that does not decode */
    assert_int_equal(raft_new(&o, &p, &r), RAFT_ECORRUPT);
    e[1].type = RAFT_ENTRY_NORMAL;
    o.applied = 7; /* applied beyond commit */
    assert_int_equal(raft_new(&o, &p, &r), RAFT_ECORRUPT);
    o.applied = 2;
    assert_int_equal(raft_new(&o, &p, &r), RAFT_OK);
    raft_status s = status(r);
    assert_int_equal(s.applied, 2);
    assert_int_equal(s.commit, 2);
    assert_int_equal(s.config.n, 3);
    assert_true(s.voter);
    assert_false(raft_has_ready(r)); /* nothing to persist or apply again */
    /* bootstrap only on an empty node */
    assert_int_equal(raft_bootstrap(r, &c3), RAFT_EINVAL);
    raft_free(r);
    assert_int_equal(raft_new(&o, NULL, &r), RAFT_ECORRUPT); /* applied 2 > commit 0 */
    o.applied = 0;
    assert_int_equal(raft_new(&o, NULL, &r), RAFT_OK);
    raft_config c2 = {.n = 1, .nodes = {{2, true}}}; /* does not list us */
    assert_int_equal(raft_bootstrap(r, &c2), RAFT_EINVAL);
    raft_config dup = {.n = 2, .nodes = {{1, true}, {1, true}}};
    assert_int_equal(raft_bootstrap(r, &dup), RAFT_EINVAL);
    /* an empty node never campaigns */
    for (int i = 0; i < 100; i++)
        raft_tick(r);
    assert_int_equal(status(r).role, RAFT_FOLLOWER);
    assert_int_equal(status(r).term, 0);
    raft_free(r);
}

/* ---- encodings ---------------------------------------------------------------------------------- */

static void encode(const raft_msg *m, buf *b)
{
    buf_init(b);
    raft_msg_encode(m, b);
}

static void expect_decode_fails(const void *p, size_t len)
{
    raft_msg m;
    assert_int_equal(raft_msg_decode(p, len, &m), RAFT_EDECODE);
}

static void test_msg_roundtrip(void **state)
{
    (void)state;
    raft_config c = voters(3);
    raft_entry e[2] = {{.term = 3, .index = 8, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload},
                       cfg_entry(9, 4, &c)};
    raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 4);
    m.index = 7;
    m.log_term = 3;
    m.commit = 6;
    m.entries = e;
    m.n_entries = 2;
    buf b;
    encode(&m, &b);
    raft_msg d;
    assert_int_equal(raft_msg_decode(b.data, b.len, &d), RAFT_OK);
    assert_int_equal(d.type, RAFT_MSG_APPEND);
    assert_int_equal(d.from, 1);
    assert_int_equal(d.to, 2);
    assert_int_equal(d.term, 4);
    assert_int_equal(d.index, 7);
    assert_int_equal(d.log_term, 3);
    assert_int_equal(d.commit, 6);
    assert_int_equal(d.n_entries, 2);
    assert_memory_equal(d.entries[0].data, payload, 8);
    assert_int_equal(d.entries[1].type, RAFT_ENTRY_CONFIG);
    raft_msg_free(&d);
    buf_free(&b);

    uint8_t data[5] = {1, 2, 3, 4, 5};
    raft_snapshot s = {.index = 50, .term = 3, .config = c, .data = data, .len = 5};
    m = msg(RAFT_MSG_SNAPSHOT, 1, 2, 4);
    m.snapshot = &s;
    encode(&m, &b);
    assert_int_equal(raft_msg_decode(b.data, b.len, &d), RAFT_OK);
    assert_int_equal(d.snapshot->index, 50);
    assert_int_equal(d.snapshot->len, 5);
    assert_memory_equal(d.snapshot->data, data, 5);
    assert_int_equal(d.snapshot->config.n, 3);
    raft_msg_free(&d);
    buf_free(&b);

    m = msg(RAFT_MSG_VOTE, 3, 1, 9);
    m.transfer = true;
    m.index = 4;
    m.log_term = 2;
    encode(&m, &b);
    assert_int_equal(raft_msg_decode(b.data, b.len, &d), RAFT_OK);
    assert_true(d.transfer);
    assert_false(d.reject);
    raft_msg_free(&d);
    buf_free(&b);
}

static void test_msg_decode_rejects_garbage(void **state)
{
    (void)state;
    raft_config c = voters(3);
    raft_entry e[2] = {{.term = 3, .index = 8, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload},
                       cfg_entry(9, 4, &c)};
    raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 4);
    m.index = 7;
    m.log_term = 3;
    m.entries = e;
    m.n_entries = 2;
    buf b;
    encode(&m, &b);
    /* every truncation and one extra byte */
    for (size_t len = 0; len < b.len; len++)
        expect_decode_fails(b.data, len);
    buf_putc(&b, 0);
    expect_decode_fails(b.data, b.len);
    b.len--;
    /* every single-byte corruption: decodes to something valid or fails cleanly */
    uint32_t seed = 1;
    for (size_t i = 0; i < b.len; i++) {
        for (int k = 0; k < 8; k++) {
            char saved = b.data[i];
            seed = seed * 1103515245u + 12345u;
            b.data[i] = (char)(seed >> 16);
            raft_msg d;
            if (raft_msg_decode(b.data, b.len, &d) == RAFT_OK) raft_msg_free(&d);
            b.data[i] = saved;
        }
    }
    /* targeted corruptions; offsets: version 0, type 1, flags 2, from 3, to 11,
       term 19, log_term 27, index 35, commit 43, hint 51, context 59, n 67, entries 71 */
    struct {
        size_t off;
        uint8_t val;
    } bad[] = {{0, 2},  {1, 0},  {1, 11}, {2, 4},        {3, 0},   /* from 1 -> 0 */
               {11, 1},                                         /* to == from */
               {19, 0},                                         /* term 0 */
               {27, 9},                                         /* log_term > term */
               {67, 200},                                       /* entry count beyond the data */
               {71 + 8, 9},                                     /* first entry index 9 != 8 */
               {71 + 16, 7},                                    /* entry type 7 */
               {71 + 17, 255},                                  /* entry length huge */
               {71 + 29 + 22, 0x55}};                           /* config payload: bad version */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char saved = b.data[bad[i].off];
        b.data[bad[i].off] = (char)bad[i].val;
        expect_decode_fails(b.data, b.len);
        b.data[bad[i].off] = saved;
    }
    raft_msg ok;
    assert_int_equal(raft_msg_decode(b.data, b.len, &ok), RAFT_OK); /* restored */
    raft_msg_free(&ok);
    buf_free(&b);

    /* entries on a non-append; transfer flag on a non-vote; snapshot truncated */
    m = msg(RAFT_MSG_HEARTBEAT, 1, 2, 4);
    m.entries = e;
    m.n_entries = 1;
    encode(&m, &b);
    expect_decode_fails(b.data, b.len);
    buf_free(&b);
    m = msg(RAFT_MSG_HEARTBEAT, 1, 2, 4);
    m.transfer = true;
    encode(&m, &b);
    expect_decode_fails(b.data, b.len);
    buf_free(&b);
    uint8_t data[5] = {1, 2, 3, 4, 5};
    raft_snapshot s = {.index = 50, .term = 3, .config = c, .data = data, .len = 5};
    m = msg(RAFT_MSG_SNAPSHOT, 1, 2, 4);
    m.snapshot = &s;
    encode(&m, &b);
    for (size_t len = 0; len < b.len; len++)
        expect_decode_fails(b.data, len);
    buf_free(&b);
    s.term = 5; /* snapshot from a later term than the message */
    encode(&m, &b);
    expect_decode_fails(b.data, b.len);
    buf_free(&b);
    /* pure noise never crashes */
    uint8_t noise[512];
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)(seed % sizeof noise);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            noise[i] = (uint8_t)(seed >> 16);
        }
        if (n > 0) noise[0] = RAFT_WIRE_VERSION;
        raft_msg d;
        if (raft_msg_decode(noise, n, &d) == RAFT_OK) raft_msg_free(&d);
    }
}

static void test_persisted_encodings_validate(void **state)
{
    (void)state;
    buf b;
    /* hard state */
    raft_hard_state hs = {7, 3, 40}, hs2;
    buf_init(&b);
    raft_hard_state_encode(&hs, &b);
    assert_int_equal(raft_hard_state_decode(b.data, b.len, &hs2), RAFT_OK);
    assert_int_equal(hs2.term, 7);
    assert_int_equal(hs2.vote, 3);
    assert_int_equal(hs2.commit, 40);
    for (size_t len = 0; len < b.len; len++)
        assert_int_equal(raft_hard_state_decode(b.data, len, &hs2), RAFT_EDECODE);
    b.data[0] = 9;
    assert_int_equal(raft_hard_state_decode(b.data, b.len, &hs2), RAFT_EDECODE);
    buf_free(&b);
    hs = (raft_hard_state){0, 3, 0}; /* a vote without a term */
    buf_init(&b);
    raft_hard_state_encode(&hs, &b);
    assert_int_equal(raft_hard_state_decode(b.data, b.len, &hs2), RAFT_EDECODE);
    buf_free(&b);
    /* entry */
    raft_entry e = {.term = 2, .index = 5, .type = RAFT_ENTRY_NORMAL, .len = 8, .data = payload}, e2;
    buf_init(&b);
    raft_entry_encode(&e, &b);
    assert_int_equal(raft_entry_decode(b.data, b.len, &e2), RAFT_OK);
    assert_int_equal(e2.index, 5);
    assert_memory_equal(e2.data, payload, 8);
    raft_entry_free(&e2);
    for (size_t len = 0; len < b.len; len++)
        assert_int_equal(raft_entry_decode(b.data, len, &e2), RAFT_EDECODE);
    buf_putc(&b, 0);
    assert_int_equal(raft_entry_decode(b.data, b.len, &e2), RAFT_EDECODE);
    buf_free(&b);
    e.index = 0;
    buf_init(&b);
    raft_entry_encode(&e, &b);
    assert_int_equal(raft_entry_decode(b.data, b.len, &e2), RAFT_EDECODE);
    buf_free(&b);
    /* snapshot */
    uint8_t data[3] = {7, 8, 9};
    raft_snapshot s = {.index = 10, .term = 2, .config = voters(2), .data = data, .len = 3}, s2;
    buf_init(&b);
    raft_snapshot_encode(&s, &b);
    assert_int_equal(raft_snapshot_decode(b.data, b.len, &s2), RAFT_OK);
    assert_int_equal(s2.index, 10);
    assert_int_equal(s2.config.n, 2);
    assert_memory_equal(s2.data, data, 3);
    raft_snapshot_free(&s2);
    for (size_t len = 0; len < b.len; len++)
        assert_int_equal(raft_snapshot_decode(b.data, len, &s2), RAFT_EDECODE);
    buf_putc(&b, 1);
    assert_int_equal(raft_snapshot_decode(b.data, b.len, &s2), RAFT_EDECODE);
    buf_free(&b);
    /* configuration */
    raft_config c = voters(3), c2;
    buf_init(&b);
    raft_config_encode(&c, &b);
    assert_int_equal(raft_config_decode(b.data, b.len, &c2), RAFT_OK);
    assert_int_equal(c2.n, 3);
    assert_int_equal(raft_config_voters(&c2), 3);
    b.data[2 + 9] = 1; /* second id becomes 1: duplicate of the first */
    for (int i = 1; i < 8; i++)
        b.data[2 + 9 + i] = 0;
    assert_int_equal(raft_config_decode(b.data, b.len, &c2), RAFT_EDECODE);
    b.data[1] = RAFT_MAX_NODES + 1;
    assert_int_equal(raft_config_decode(b.data, b.len, &c2), RAFT_EDECODE);
    buf_free(&b);
    assert_int_equal(raft_config_find(&c, 2), 1);
    assert_int_equal(raft_config_find(&c, 9), -1);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(raft_strerror(RAFT_EBUSY),
                        "a configuration change or leadership transfer is in progress");
    assert_string_equal(raft_strerror(12345), "unknown error");
    assert_string_equal(raft_role_name(RAFT_PRECANDIDATE), "pre-candidate");
    assert_string_equal(raft_role_name(0), "?");
    assert_string_equal(raft_msg_type_name(RAFT_MSG_TIMEOUT_NOW), "timeout-now");
    assert_string_equal(raft_msg_type_name(0), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_election_grants_one_vote_per_term),
        cmocka_unit_test(test_vote_denied_to_stale_log),
        cmocka_unit_test(test_candidate_steps_down_on_higher_term),
        cmocka_unit_test(test_candidate_with_majority_becomes_leader),
        cmocka_unit_test(test_prevote_does_not_bump_term),
        cmocka_unit_test(test_prevote_ignored_while_leader_is_heard),
        cmocka_unit_test(test_reject_append_when_prev_log_mismatch),
        cmocka_unit_test(test_backtracking_skips_whole_terms),
        cmocka_unit_test(test_follower_truncates_conflicting_suffix),
        cmocka_unit_test(test_follower_never_truncates_committed_entries),
        cmocka_unit_test(test_leader_never_overwrites_own_log),
        cmocka_unit_test(test_commit_only_current_term_by_counting),
        cmocka_unit_test(test_unsafe_flag_commits_earlier_term_by_counting),
        cmocka_unit_test(test_leader_counts_itself_only_after_persisting),
        cmocka_unit_test(test_replication_commits_and_applies_everywhere),
        cmocka_unit_test(test_lagging_follower_catches_up),
        cmocka_unit_test(test_stale_leader_steps_down_on_higher_term),
        cmocka_unit_test(test_check_quorum_leader_steps_down),
        cmocka_unit_test(test_leader_has_quorum_tracks_recent_contact),
        cmocka_unit_test(test_learner_does_not_vote),
        cmocka_unit_test(test_learner_promoted_when_caught_up),
        cmocka_unit_test(test_learner_auto_promoted_by_leader),
        cmocka_unit_test(test_one_config_change_at_a_time),
        cmocka_unit_test(test_conf_change_waits_for_commit_in_current_term),
        cmocka_unit_test(test_removed_leader_steps_down),
        cmocka_unit_test(test_snapshot_install_on_lagging_follower),
        cmocka_unit_test(test_snapshot_ignored_when_already_committed),
        cmocka_unit_test(test_leadership_transfer),
        cmocka_unit_test(test_read_index_requires_heartbeat_quorum),
        cmocka_unit_test(test_step_rejects_misaddressed_and_malformed),
        cmocka_unit_test(test_propose_errors),
        cmocka_unit_test(test_new_and_bootstrap_errors),
        cmocka_unit_test(test_msg_roundtrip),
        cmocka_unit_test(test_msg_decode_rejects_garbage),
        cmocka_unit_test(test_persisted_encodings_validate),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
