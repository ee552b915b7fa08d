/* raft: keel's Raft consensus module (see raft.h for the API and the Ready
 * loop the caller runs).
 *
 * Design note
 * -----------
 * The module is a pure state machine: raft_tick, raft_step and the proposal
 * calls change in-memory state and queue outputs; raft_ready_get hands the
 * outputs over and raft_advance records that the caller made them durable /
 * sent them. No clock, no randomness except the caller-seeded PRNG, no I/O.
 *
 * The in-memory log holds the entries after the latest snapshot. Entries with
 * index <= `stable` are durable (the caller acknowledged them in
 * raft_advance); the rest are handed out by the next Ready. The hard state
 * (term, vote, commit) is compared with the last persisted copy to decide
 * whether the Ready carries it.
 *
 * Invariants (numbered; referred to in the code as [In]):
 *   1. term never decreases; vote is reset only when term grows; at most one
 *      vote is granted per term (election safety).
 *   2. A leader never overwrites or deletes entries of its own log (leader
 *      append-only); followers truncate only a conflicting suffix, always
 *      above their commit index (an append below commit is answered with the
 *      commit index, since everything up to it matches the leader).
 *   3. A leader advances commit by counting only entries of its own term
 *      (Raft paper section 5.4.2); earlier entries commit with them. Only the
 *      test flag unsafe_commit_any_term breaks this.
 *   4. The leader counts itself toward a quorum only for entries it has
 *      persisted (index <= stable); followers acknowledge only in messages
 *      that the caller sends after persisting the same Ready. So "committed"
 *      always means "durable on a majority".
 *   5. A vote is granted only to a candidate whose log is at least as
 *      up to date (last term, then last index) as ours (leader completeness).
 *   6. commit never decreases and never exceeds the last index; applied <=
 *      commit; snapshot index <= applied.
 *   7. Messages in the outbox own their entries and snapshot (deep copies),
 *      so later log changes within the same batch cannot alter them.
 *   8. At most one configuration change is uncommitted at a time, and a
 *      leader proposes one only after committing an entry of its own term;
 *      every node uses the latest configuration in its log, committed or not.
 *   9. Only voters of the current configuration are counted in quorums
 *      (votes, commit, check-quorum, read index); learners never campaign.
 *  10. A pre-vote never changes the receiver's term or vote; a node that heard
 *      from a leader within the election timeout ignores (pre-)vote requests
 *      unless they come from a leadership transfer.
 *
 * State diagram (function behind each transition):
 *
 *                    tick_election: timeout, pre_vote on
 *          +------------+ ----------------------------> +---------------+
 *          |  FOLLOWER  |          become_precandidate   | PRE-CANDIDATE |
 *          |            | <---------------------------- +---------------+
 *          +------------+   become_follower: pre-votes        |
 *           ^   ^   |  ^    denied, leader heard, higher term  | quorum of pre-votes
 *           |   |   |  |                                      v become_candidate
 *           |   |   |  |  become_follower: lost, leader  +-----------+
 *           |   |   |  +-------------------------------- | CANDIDATE | <-+ timeout:
 *           |   |   |     heard, higher term             +-----------+ --+ become_candidate
 *           |   |   | tick_election (pre_vote off) /          |
 *           |   |   | step TIMEOUT_NOW: become_candidate ---->+ quorum of votes
 *           |   |   |                                          v become_leader
 *           |   |   +------------------------------------+-----------+
 *           |   +--- become_follower: higher term,       |  LEADER   |
 *           |        check-quorum failed (tick_leader),  +-----------+
 *           |        own removal committed (maybe_commit)
 *           |
 *     +-----------+  set_config_from_log: a config entry in the log makes
 *     |  LEARNER  |  this node a voter (promotion) ---> FOLLOWER
 *     | (follower |  and back (removal/none): a learner or removed node
 *     | non-voter)|  is a follower that tick_election never promotes
 *     +-----------+
 */
#include "raft.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* ---- typedefs & constants ---------------------------------------------------- */

typedef struct progress {
    raft_id id;
    uint64_t match, next;
    int state;            /* enum raft_progress_state */
    bool paused;          /* PROBE: one APPEND outstanding */
    uint64_t last_heard;  /* r->ticks when last heard from */
    uint64_t read_ack;    /* highest heartbeat context echoed in this term */
    uint64_t pending_snap; /* SNAPSHOT: index of the snapshot sent */
    uint32_t snap_elapsed; /* SNAPSHOT: ticks since sent */
    uint64_t sent_commit;  /* highest commit index sent to it */
} progress;

typedef struct pending_read {
    uint64_t ctx, index, seq;
} pending_read;

typedef struct vote_rec {
    raft_id id;
    bool granted;
} vote_rec;

struct raft {
    raft_opts o;
    /* hard state */
    uint64_t term;
    raft_id vote;
    uint64_t commit;
    raft_hard_state persisted_hs;
    /* soft state */
    int role;
    raft_id leader;
    uint64_t applied;
    uint64_t ticks;
    uint32_t election_elapsed, heartbeat_elapsed, rand_timeout;
    uint64_t rng;
    /* log: entries snap.index+1 .. snap.index+log_n */
    raft_snapshot snap; /* latest snapshot (owns data); index 0: none */
    raft_entry *log;
    size_t log_n, log_cap;
    uint64_t stable;   /* entries <= stable are durable */
    bool snap_pending; /* snap not yet handed out for persistence */
    bool snap_install;
    /* configuration */
    raft_config cfg;
    uint64_t cfg_index;
    /* elections */
    vote_rec votes[RAFT_MAX_NODES];
    uint32_t n_votes;
    /* leader */
    progress prs[RAFT_MAX_NODES];
    uint32_t n_prs;
    uint64_t term_start; /* index of this leader's no-op */
    raft_id transfer_target;
    uint32_t transfer_elapsed;
    bool transfer_sent; /* TIMEOUT_NOW already sent */
    pending_read *reads;
    size_t n_reads, reads_cap;
    uint64_t read_seq;
    /* outbox */
    raft_msg *msgs;
    size_t n_msgs, msgs_cap;
    raft_read_state *ready_reads;
    size_t n_ready_reads, ready_reads_cap;
    bool in_ready; /* between raft_ready_get and raft_advance */
};

/* ---- forward declarations ---------------------------------------------------- */

static void become_follower(raft *r, uint64_t term, raft_id leader);
static void become_candidate(raft *r, bool transfer);
static void become_precandidate(raft *r);
static void become_leader(raft *r);
static void send_append(raft *r, progress *pr, bool allow_empty);
static bool maybe_commit(raft *r);
static void process_reads(raft *r);
static void set_config_from_log(raft *r);

/* ---- small helpers ------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort(); /* keel treats out-of-memory as fatal (buf.h) */
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) abort();
    return p;
}

static uint64_t rng_next(raft *r)
{
    /* splitmix64 */
    uint64_t z = (r->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void reset_timeout(raft *r)
{
    r->election_elapsed = 0;
    r->heartbeat_elapsed = 0;
    r->rand_timeout = r->o.election_ticks + (uint32_t)(rng_next(r) % r->o.election_ticks);
}

static uint64_t last_index(const raft *r)
{
    return r->snap.index + r->log_n;
}

static const raft_entry *entry_at(const raft *r, uint64_t i)
{
    if (i <= r->snap.index || i > last_index(r)) return NULL;
    return &r->log[i - r->snap.index - 1];
}

bool raft_log_term(const raft *r, uint64_t index, uint64_t *term)
{
    if (index == r->snap.index) {
        *term = r->snap.term;
        return true;
    }
    const raft_entry *e = entry_at(r, index);
    if (!e) return false;
    *term = e->term;
    return true;
}

static uint64_t last_term(const raft *r)
{
    uint64_t t = 0;
    raft_log_term(r, last_index(r), &t);
    return t;
}

static uint64_t term_at(const raft *r, uint64_t i)
{
    uint64_t t = 0;
    raft_log_term(r, i, &t);
    return t;
}

static void entry_copy(raft_entry *dst, const raft_entry *src)
{
    *dst = *src;
    dst->data = NULL;
    if (src->len) {
        dst->data = xmalloc(src->len);
        memcpy(dst->data, src->data, src->len);
    }
}

static void log_append(raft *r, const raft_entry *e)
{
    assert(e->index == last_index(r) + 1);
    if (r->log_n == r->log_cap) {
        r->log_cap = r->log_cap ? r->log_cap * 2 : 64;
        r->log = xrealloc(r->log, r->log_cap * sizeof *r->log);
    }
    entry_copy(&r->log[r->log_n++], e);
}

/* Drops entries >= from (from > snapshot index). */
static void log_truncate(raft *r, uint64_t from)
{
    assert(from > r->snap.index);
    while (last_index(r) >= from) {
        r->log_n--;
        free(r->log[r->log_n].data);
    }
    if (r->stable >= from) r->stable = from - 1;
}

static void log_clear(raft *r)
{
    for (size_t i = 0; i < r->log_n; i++)
        free(r->log[i].data);
    r->log_n = 0;
}

int raft_config_find(const raft_config *c, raft_id id)
{
    for (uint32_t i = 0; i < c->n; i++)
        if (c->nodes[i].id == id) return (int)i;
    return -1;
}

uint32_t raft_config_voters(const raft_config *c)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->n; i++)
        n += c->nodes[i].voter;
    return n;
}

static bool is_voter(const raft *r, raft_id id)
{
    int k = raft_config_find(&r->cfg, id);
    return k >= 0 && r->cfg.nodes[k].voter;
}

static uint32_t quorum(const raft *r)
{
    return raft_config_voters(&r->cfg) / 2 + 1;
}

static progress *find_pr(raft *r, raft_id id)
{
    for (uint32_t i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id) return &r->prs[i];
    return NULL;
}

/* ---- outbox ------------------------------------------------------------------- */

static raft_msg *new_msg(raft *r, int type, raft_id to)
{
    if (r->n_msgs == r->msgs_cap) {
        r->msgs_cap = r->msgs_cap ? r->msgs_cap * 2 : 16;
        r->msgs = xrealloc(r->msgs, r->msgs_cap * sizeof *r->msgs);
    }
    raft_msg *m = &r->msgs[r->n_msgs++];
    memset(m, 0, sizeof *m);
    m->type = (uint8_t)type;
    m->from = r->o.id;
    m->to = to;
    m->term = r->term;
    return m;
}

/* Copies n entries starting at index `from` into one allocation owned by m [I7]. */
static void msg_attach_entries(raft *r, raft_msg *m, uint64_t from, uint32_t n)
{
    size_t bytes = 0;
    for (uint32_t i = 0; i < n; i++)
        bytes += entry_at(r, from + i)->len;
    m->entries = xmalloc(n * sizeof(raft_entry) + bytes);
    uint8_t *p = (uint8_t *)(m->entries + n);
    for (uint32_t i = 0; i < n; i++) {
        const raft_entry *e = entry_at(r, from + i);
        m->entries[i] = *e;
        m->entries[i].data = NULL;
        if (e->len) {
            memcpy(p, e->data, e->len);
            m->entries[i].data = p;
            p += e->len;
        }
    }
    m->n_entries = n;
}

static void free_outbox_msg(raft_msg *m)
{
    free(m->entries);
    if (m->snapshot) {
        free(m->snapshot->data);
        free(m->snapshot);
    }
}

static void push_ready_read(raft *r, uint64_t ctx, uint64_t index, int status)
{
    if (r->n_ready_reads == r->ready_reads_cap) {
        r->ready_reads_cap = r->ready_reads_cap ? r->ready_reads_cap * 2 : 8;
        r->ready_reads = xrealloc(r->ready_reads, r->ready_reads_cap * sizeof *r->ready_reads);
    }
    r->ready_reads[r->n_ready_reads++] = (raft_read_state){ctx, index, status};
}

/* ---- configuration ------------------------------------------------------------ */

/* Brings the leader's progress set in line with the configuration. */
static void sync_progress(raft *r)
{
    if (r->role != RAFT_LEADER) return;
    for (uint32_t i = 0; i < r->n_prs;) {
        if (raft_config_find(&r->cfg, r->prs[i].id) < 0)
            r->prs[i] = r->prs[--r->n_prs];
        else
            i++;
    }
    for (uint32_t i = 0; i < r->cfg.n; i++) {
        raft_id id = r->cfg.nodes[i].id;
        if (id == r->o.id || find_pr(r, id)) continue;
        progress *pr = &r->prs[r->n_prs++];
        memset(pr, 0, sizeof *pr);
        pr->id = id;
        pr->next = last_index(r) + 1;
        pr->state = RAFT_PR_PROBE;
        pr->last_heard = r->ticks;
    }
}

/* The configuration in effect after the entry at `upto`: the last config
 * entry at or below it, else the snapshot's. */
static void config_at(const raft *r, uint64_t upto, raft_config *out, uint64_t *at)
{
    for (uint64_t i = upto; i > r->snap.index; i--) {
        const raft_entry *e = entry_at(r, i);
        if (e->type == RAFT_ENTRY_CONFIG &&
            raft_config_decode(e->data, e->len, out) == RAFT_OK) {
            *at = i;
            return;
        }
    }
    *out = r->snap.config;
    *at = r->snap.index;
}

static void set_config_from_log(raft *r)
{
    config_at(r, last_index(r), &r->cfg, &r->cfg_index);
    sync_progress(r);
    if (r->transfer_target && !is_voter(r, r->transfer_target)) r->transfer_target = 0;
}

/* ---- elections ----------------------------------------------------------------- */

static void fail_pending_reads(raft *r)
{
    for (size_t i = 0; i < r->n_reads; i++)
        push_ready_read(r, r->reads[i].ctx, 0, RAFT_ENOTLEADER);
    r->n_reads = 0;
}

static void become_follower(raft *r, uint64_t term, raft_id leader)
{
    assert(term >= r->term); /* [I1] */
    if (term > r->term) {
        r->term = term;
        r->vote = 0;
    }
    if (r->role == RAFT_LEADER) fail_pending_reads(r);
    r->role = RAFT_FOLLOWER;
    r->leader = leader;
    r->n_prs = 0;
    r->transfer_target = 0;
    r->n_votes = 0;
    reset_timeout(r);
}

static void record_vote(raft *r, raft_id id, bool granted)
{
    for (uint32_t i = 0; i < r->n_votes; i++)
        if (r->votes[i].id == id) return; /* first answer counts */
    if (r->n_votes < RAFT_MAX_NODES) r->votes[r->n_votes++] = (vote_rec){id, granted};
}

/* Counts answers of current voters: 1 won, -1 lost, 0 pending [I9]. */
static int tally(const raft *r)
{
    uint32_t yes = 0, no = 0, q = quorum(r);
    for (uint32_t i = 0; i < r->n_votes; i++) {
        if (!is_voter(r, r->votes[i].id)) continue;
        if (r->votes[i].granted)
            yes++;
        else
            no++;
    }
    if (yes >= q) return 1;
    if (no > raft_config_voters(&r->cfg) - q) return -1;
    return 0;
}

static void send_vote_requests(raft *r, int type, uint64_t term, bool transfer)
{
    for (uint32_t i = 0; i < r->cfg.n; i++) {
        const raft_node_cfg *n = &r->cfg.nodes[i];
        if (!n->voter || n->id == r->o.id) continue;
        raft_msg *m = new_msg(r, type, n->id);
        m->term = term;
        m->index = last_index(r);
        m->log_term = last_term(r);
        m->transfer = transfer;
    }
}

static void become_precandidate(raft *r)
{
    if (r->role == RAFT_LEADER) fail_pending_reads(r);
    r->role = RAFT_PRECANDIDATE;
    r->leader = 0;
    r->n_votes = 0;
    r->n_prs = 0;
    reset_timeout(r);
    record_vote(r, r->o.id, true);
    if (tally(r) == 1) {
        become_candidate(r, false);
        return;
    }
    send_vote_requests(r, RAFT_MSG_PREVOTE, r->term + 1, false);
}

static void become_candidate(raft *r, bool transfer)
{
    if (r->role == RAFT_LEADER) fail_pending_reads(r);
    r->term++;
    r->vote = r->o.id;
    r->role = RAFT_CANDIDATE;
    r->leader = 0;
    r->n_votes = 0;
    r->n_prs = 0;
    reset_timeout(r);
    record_vote(r, r->o.id, true);
    if (tally(r) == 1) {
        become_leader(r);
        return;
    }
    send_vote_requests(r, RAFT_MSG_VOTE, r->term, transfer);
}

static void campaign(raft *r)
{
    if (r->o.pre_vote)
        become_precandidate(r);
    else
        become_candidate(r, false);
}

static void become_leader(raft *r)
{
    r->role = RAFT_LEADER;
    r->leader = r->o.id;
    r->n_prs = 0;
    r->transfer_target = 0;
    r->n_reads = 0;
    r->read_seq = 0;
    reset_timeout(r);
    sync_progress(r);
    /* The votes are what the leader heard from: a majority, just now. */
    for (uint32_t i = 0; i < r->n_prs; i++) {
        progress *pr = &r->prs[i];
        pr->last_heard = 0;
        for (uint32_t k = 0; k < r->n_votes; k++)
            if (r->votes[k].id == pr->id && r->votes[k].granted) pr->last_heard = r->ticks;
    }
    raft_entry noop = {.term = r->term, .index = last_index(r) + 1, .type = RAFT_ENTRY_NOOP};
    log_append(r, &noop);
    r->term_start = noop.index;
    for (uint32_t i = 0; i < r->n_prs; i++)
        send_append(r, &r->prs[i], true);
    maybe_commit(r); /* a single voter commits once the no-op is durable */
}

/* ---- replication (leader) --------------------------------------------------- */

static void send_snapshot(raft *r, progress *pr)
{
    raft_msg *m = new_msg(r, RAFT_MSG_SNAPSHOT, pr->id);
    m->snapshot = xmalloc(sizeof *m->snapshot);
    *m->snapshot = r->snap;
    m->snapshot->data = NULL;
    if (r->snap.len) {
        m->snapshot->data = xmalloc(r->snap.len);
        memcpy(m->snapshot->data, r->snap.data, r->snap.len);
    }
    m->commit = r->commit;
    pr->state = RAFT_PR_SNAPSHOT;
    pr->pending_snap = r->snap.index;
    pr->snap_elapsed = 0;
}

static void send_append(raft *r, progress *pr, bool allow_empty)
{
    if (pr->state == RAFT_PR_SNAPSHOT) return;
    if (pr->state == RAFT_PR_PROBE && pr->paused) return;
    uint64_t prev = pr->next - 1, prev_term;
    if (!raft_log_term(r, prev, &prev_term)) {
        /* The entries it needs are compacted away (prev is below the
         * snapshot; prev beyond the log cannot happen since next <= last+1). */
        assert(prev < r->snap.index);
        send_snapshot(r, pr);
        return;
    }
    uint64_t last = last_index(r);
    uint32_t n = 0;
    size_t bytes = 0;
    while (prev + n < last && n < r->o.max_msg_entries) {
        size_t len = entry_at(r, prev + n + 1)->len;
        if (n > 0 && bytes + len > r->o.max_msg_bytes) break;
        bytes += len;
        n++;
    }
    if (pr->state == RAFT_PR_REPLICATE && n > 0 && prev - pr->match >= r->o.max_inflight)
        n = 0; /* pipeline full: wait for acks */
    if (n == 0 && !allow_empty) return;
    raft_msg *m = new_msg(r, RAFT_MSG_APPEND, pr->id);
    m->index = prev;
    m->log_term = prev_term;
    m->commit = r->commit;
    if (pr->sent_commit < r->commit) pr->sent_commit = r->commit;
    if (n) msg_attach_entries(r, m, prev + 1, n);
    if (pr->state == RAFT_PR_REPLICATE)
        pr->next += n;
    else
        pr->paused = true;
}

static void bcast_append(raft *r, bool allow_empty)
{
    for (uint32_t i = 0; i < r->n_prs; i++)
        send_append(r, &r->prs[i], allow_empty);
}

static void bcast_heartbeat(raft *r)
{
    for (uint32_t i = 0; i < r->n_prs; i++) {
        progress *pr = &r->prs[i];
        raft_msg *m = new_msg(r, RAFT_MSG_HEARTBEAT, pr->id);
        m->commit = pr->match < r->commit ? pr->match : r->commit;
        m->context = r->read_seq;
        if (pr->sent_commit < m->commit) pr->sent_commit = m->commit;
    }
}

static int cmp_u64_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Advances commit from the voters' match indexes [I3][I4]; returns true if it
 * moved. Steps down if a committed configuration removed this leader. */
static bool maybe_commit(raft *r)
{
    if (r->role != RAFT_LEADER) return false;
    uint64_t m[RAFT_MAX_NODES];
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->cfg.n; i++) {
        const raft_node_cfg *c = &r->cfg.nodes[i];
        if (!c->voter) continue;
        if (c->id == r->o.id) {
            m[n++] = r->stable;
        } else {
            progress *pr = find_pr(r, c->id);
            m[n++] = pr ? pr->match : 0;
        }
    }
    if (n == 0) return false;
    qsort(m, n, sizeof m[0], cmp_u64_desc);
    uint64_t cand = m[n / 2]; /* highest index held by a quorum (n/2+1 voters) */
    bool moved = false;
    if (cand > r->commit && (r->o.unsafe_commit_any_term || term_at(r, cand) == r->term)) {
        r->commit = cand;
        moved = true;
    }
    if (moved) {
        if (r->cfg_index <= r->commit && raft_config_find(&r->cfg, r->o.id) < 0) {
            /* Our own removal is committed: hand over by stepping down. */
            become_follower(r, r->term, 0);
            return true;
        }
        bcast_append(r, true);
        process_reads(r); /* a single voter confirms reads by committing */
    }
    return moved;
}

/* ---- read index ------------------------------------------------------------- */

static void process_reads(raft *r)
{
    uint32_t q = quorum(r);
    size_t done = 0;
    while (done < r->n_reads) {
        const pending_read *pr = &r->reads[done];
        uint32_t acks = is_voter(r, r->o.id) ? 1 : 0;
        for (uint32_t i = 0; i < r->n_prs; i++)
            if (is_voter(r, r->prs[i].id) && r->prs[i].read_ack >= pr->seq) acks++;
        if (acks < q) break;
        push_ready_read(r, pr->ctx, pr->index, RAFT_OK);
        done++;
    }
    if (done) {
        memmove(r->reads, r->reads + done, (r->n_reads - done) * sizeof *r->reads);
        r->n_reads -= done;
    }
}

int raft_read_index(raft *r, uint64_t ctx)
{
    assert(!r->in_ready);
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (r->commit < r->term_start) return RAFT_EAGAIN;
    if (r->n_reads == r->reads_cap) {
        r->reads_cap = r->reads_cap ? r->reads_cap * 2 : 8;
        r->reads = xrealloc(r->reads, r->reads_cap * sizeof *r->reads);
    }
    r->reads[r->n_reads++] = (pending_read){ctx, r->commit, ++r->read_seq};
    process_reads(r); /* a single voter needs nobody else */
    if (r->n_reads) bcast_heartbeat(r);
    return RAFT_OK;
}

bool raft_leader_has_quorum(const raft *r)
{
    if (r->role != RAFT_LEADER) return false;
    uint32_t n = is_voter(r, r->o.id) ? 1 : 0;
    for (uint32_t i = 0; i < r->n_prs; i++) {
        const progress *pr = &r->prs[i];
        if (is_voter(r, pr->id) && pr->last_heard && r->ticks - pr->last_heard <= r->o.election_ticks)
            n++;
    }
    return n >= quorum(r);
}

/* ---- message handlers -------------------------------------------------------- */

static void reply_append(raft *r, raft_id to, uint64_t index, bool reject, uint64_t hint)
{
    raft_msg *m = new_msg(r, RAFT_MSG_APPEND_RESP, to);
    m->index = index;
    m->reject = reject;
    m->reject_hint = hint;
}

static int handle_append(raft *r, const raft_msg *m)
{
    r->leader = m->from;
    r->election_elapsed = 0;
    if (m->index < r->commit) {
        /* Everything up to commit matches the leader already. */
        reply_append(r, m->from, r->commit, false, 0);
        return RAFT_OK;
    }
    uint64_t t = 0;
    if (!raft_log_term(r, m->index, &t) || t != m->log_term) {
        /* Hint: the last index whose term is <= the leader's term at
         * m->index; everything above it cannot match. The leader does the
         * same search in its own log, so whole runs of terms are skipped in
         * one round trip. Never below commit (those entries match). */
        uint64_t hint = m->index < last_index(r) ? m->index : last_index(r);
        while (hint > r->commit && hint > r->snap.index && term_at(r, hint) > m->log_term)
            hint--;
        raft_msg *resp = new_msg(r, RAFT_MSG_APPEND_RESP, m->from);
        resp->index = m->index;
        resp->reject = true;
        resp->reject_hint = hint;
        resp->log_term = term_at(r, hint);
        return RAFT_OK;
    }
    /* Find the first new or conflicting entry, validating before mutating. */
    uint32_t k = 0;
    for (; k < m->n_entries; k++) {
        const raft_entry *e = &m->entries[k];
        uint64_t et;
        if (!raft_log_term(r, e->index, &et)) break;
        if (et != e->term) {
            /* [I2]: entries up to commit match the leader (m->index >= commit) */
            assert(e->index > r->commit);
            break;
        }
    }
    bool cfg_changed = false;
    if (k < m->n_entries) {
        uint64_t from = m->entries[k].index;
        if (from <= last_index(r)) {
            if (r->cfg_index >= from) cfg_changed = true;
            log_truncate(r, from);
        }
        for (uint32_t i = k; i < m->n_entries; i++) {
            log_append(r, &m->entries[i]);
            if (m->entries[i].type == RAFT_ENTRY_CONFIG) cfg_changed = true;
        }
    }
    if (cfg_changed) set_config_from_log(r);
    uint64_t new_last = m->index + m->n_entries;
    uint64_t c = m->commit < new_last ? m->commit : new_last;
    if (c > r->commit) r->commit = c;
    reply_append(r, m->from, new_last, false, 0);
    return RAFT_OK;
}

static void handle_heartbeat(raft *r, const raft_msg *m)
{
    r->leader = m->from;
    r->election_elapsed = 0;
    /* The leader sends min(match, commit): entries up to it match its log. */
    uint64_t c = m->commit < last_index(r) ? m->commit : last_index(r);
    if (c > r->commit) r->commit = c;
    raft_msg *resp = new_msg(r, RAFT_MSG_HEARTBEAT_RESP, m->from);
    resp->context = m->context;
}

static void handle_snapshot(raft *r, const raft_msg *m)
{
    r->leader = m->from;
    r->election_elapsed = 0;
    const raft_snapshot *s = m->snapshot;
    uint64_t t;
    if (s->index <= r->commit) {
        reply_append(r, m->from, r->commit, false, 0);
        return;
    }
    if (raft_log_term(r, s->index, &t) && t == s->term) {
        /* We hold the snapshot's last entry: the log up to it matches. */
        r->commit = s->index;
        reply_append(r, m->from, s->index, false, 0);
        return;
    }
    log_clear(r);
    free(r->snap.data);
    r->snap = *s;
    r->snap.data = NULL;
    if (s->len) {
        r->snap.data = xmalloc(s->len);
        memcpy(r->snap.data, s->data, s->len);
    }
    r->stable = s->index;
    r->commit = s->index;
    r->applied = s->index;
    r->snap_pending = true;
    r->snap_install = true;
    r->cfg = s->config;
    r->cfg_index = s->index;
    reply_append(r, m->from, s->index, false, 0);
}

static void handle_vote_request(raft *r, const raft_msg *m)
{
    bool pre = m->type == RAFT_MSG_PREVOTE;
    bool can = r->vote == m->from || (r->vote == 0 && r->leader == 0) || (pre && m->term > r->term);
    uint64_t lt = last_term(r);
    bool up_to_date = m->log_term > lt || (m->log_term == lt && m->index >= last_index(r)); /* [I5] */
    bool grant = can && up_to_date;
    raft_msg *resp = new_msg(r, pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP, m->from);
    resp->reject = !grant;
    resp->term = grant ? m->term : r->term;
    if (grant && !pre) {
        r->vote = m->from; /* [I1] */
        r->election_elapsed = 0;
    }
}

static void handle_append_resp(raft *r, const raft_msg *m)
{
    progress *pr = find_pr(r, m->from);
    if (!pr) return;
    pr->last_heard = r->ticks;
    if (m->reject) {
        if (pr->state == RAFT_PR_SNAPSHOT) return;
        if (pr->state == RAFT_PR_REPLICATE && m->index <= pr->match) return; /* stale */
        if (pr->state == RAFT_PR_PROBE && m->index != pr->next - 1) return;   /* stale */
        uint64_t j = m->reject_hint < last_index(r) ? m->reject_hint : last_index(r);
        if (m->log_term)
            while (j > r->snap.index && term_at(r, j) > m->log_term)
                j--;
        uint64_t next = m->index;
        if (j + 1 < next) next = j + 1;
        if (next < pr->match + 1) next = pr->match + 1;
        if (next < 1) next = 1;
        pr->next = next;
        pr->state = RAFT_PR_PROBE;
        pr->paused = false;
        send_append(r, pr, true);
        return;
    }
    if (m->index > last_index(r)) return; /* acks what we never sent: ignore */
    bool updated = false;
    if (m->index > pr->match) {
        pr->match = m->index;
        updated = true;
    }
    if (pr->next < pr->match + 1) pr->next = pr->match + 1;
    pr->paused = false;
    if (pr->state == RAFT_PR_SNAPSHOT) {
        if (pr->match < pr->pending_snap) return;
        pr->state = RAFT_PR_REPLICATE;
        pr->next = pr->match + 1;
    } else if (pr->state == RAFT_PR_PROBE) {
        pr->state = RAFT_PR_REPLICATE;
        pr->next = pr->match + 1;
    }
    if (updated && maybe_commit(r) && r->role != RAFT_LEADER) return;
    if (r->transfer_target == pr->id && !r->transfer_sent && pr->match == last_index(r)) {
        new_msg(r, RAFT_MSG_TIMEOUT_NOW, pr->id);
        r->transfer_sent = true;
    }
    /* Keep the pipeline going. */
    for (int i = 0; i < 8 && pr->next <= last_index(r) && pr->state == RAFT_PR_REPLICATE; i++) {
        uint64_t before = pr->next;
        send_append(r, pr, false);
        if (pr->next == before) break;
    }
    /* It acked after the commit that its entries made was broadcast. */
    if (pr->state == RAFT_PR_REPLICATE && pr->sent_commit < r->commit) send_append(r, pr, true);
}

static void handle_heartbeat_resp(raft *r, const raft_msg *m)
{
    progress *pr = find_pr(r, m->from);
    if (!pr) return;
    pr->last_heard = r->ticks;
    if (m->context > pr->read_ack && m->context <= r->read_seq) pr->read_ack = m->context;
    if (pr->match < last_index(r)) {
        if (pr->state == RAFT_PR_REPLICATE) {
            /* Acks may have been lost: restart from what we know it has. */
            pr->state = RAFT_PR_PROBE;
            pr->next = pr->match + 1;
        }
        pr->paused = false;
        send_append(r, pr, true);
    }
    process_reads(r);
}

int raft_step(raft *r, const raft_msg *m)
{
    assert(!r->in_ready);
    if (m->to != r->o.id || m->from == 0 || m->from == r->o.id) return RAFT_EINVAL;
    if (m->type < RAFT_MSG_APPEND || m->type > RAFT_MSG_TYPE_MAX || m->term == 0) return RAFT_EPROTO;
    if ((m->type == RAFT_MSG_SNAPSHOT) != (m->snapshot != NULL)) return RAFT_EPROTO;
    if (m->n_entries && (m->type != RAFT_MSG_APPEND || !m->entries)) return RAFT_EPROTO;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const raft_entry *e = &m->entries[i];
        if (e->index != m->index + 1 + i || e->term == 0 || e->term > m->term ||
            (i > 0 && e->term < m->entries[i - 1].term) || (i == 0 && e->term < m->log_term) ||
            e->type < RAFT_ENTRY_NORMAL || e->type > RAFT_ENTRY_NOOP || (e->len && !e->data))
            return RAFT_EPROTO;
        raft_config c;
        if (e->type == RAFT_ENTRY_CONFIG && raft_config_decode(e->data, e->len, &c) != RAFT_OK)
            return RAFT_EPROTO;
    }
    if (m->type == RAFT_MSG_APPEND && m->index > 0 && m->log_term == 0) return RAFT_EPROTO;
    if (m->snapshot && (m->snapshot->index == 0 || m->snapshot->term == 0 || m->snapshot->term > m->term))
        return RAFT_EPROTO;

    if (m->term > r->term) {
        if (m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE) {
            bool in_lease = r->o.check_quorum && r->leader != 0 &&
                            r->election_elapsed < r->o.election_ticks;
            if (in_lease && !m->transfer) return RAFT_OK; /* [I10] */
        }
        if (m->type == RAFT_MSG_PREVOTE) {
            /* never adopt a pre-vote's term [I10] */
        } else if (m->type == RAFT_MSG_PREVOTE_RESP && !m->reject) {
            /* a granted pre-vote carries the term we asked for */
        } else if (m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT ||
                   m->type == RAFT_MSG_SNAPSHOT) {
            become_follower(r, m->term, m->from);
        } else {
            become_follower(r, m->term, 0);
        }
    } else if (m->term < r->term) {
        if ((r->o.check_quorum || r->o.pre_vote) &&
            (m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT)) {
            /* A deposed leader learns our term (and steps down). */
            new_msg(r, RAFT_MSG_APPEND_RESP, m->from);
        } else if (m->type == RAFT_MSG_PREVOTE) {
            raft_msg *resp = new_msg(r, RAFT_MSG_PREVOTE_RESP, m->from);
            resp->reject = true;
        }
        return RAFT_OK;
    }

    switch (m->type) {
    case RAFT_MSG_APPEND:
    case RAFT_MSG_HEARTBEAT:
    case RAFT_MSG_SNAPSHOT:
        if (r->role == RAFT_LEADER) return RAFT_EPROTO; /* two leaders in one term */
        if (r->role != RAFT_FOLLOWER) become_follower(r, m->term, m->from);
        if (m->type == RAFT_MSG_APPEND) return handle_append(r, m);
        if (m->type == RAFT_MSG_HEARTBEAT)
            handle_heartbeat(r, m);
        else
            handle_snapshot(r, m);
        return RAFT_OK;
    case RAFT_MSG_VOTE:
    case RAFT_MSG_PREVOTE:
        handle_vote_request(r, m);
        return RAFT_OK;
    case RAFT_MSG_VOTE_RESP:
        if (r->role != RAFT_CANDIDATE || m->term != r->term) return RAFT_OK;
        record_vote(r, m->from, !m->reject);
        switch (tally(r)) {
        case 1: become_leader(r); break;
        case -1: become_follower(r, r->term, 0); break;
        }
        return RAFT_OK;
    case RAFT_MSG_PREVOTE_RESP:
        if (r->role != RAFT_PRECANDIDATE) return RAFT_OK;
        if (!m->reject && m->term != r->term + 1) return RAFT_OK; /* stale round */
        record_vote(r, m->from, !m->reject);
        switch (tally(r)) {
        case 1: become_candidate(r, false); break;
        case -1: become_follower(r, r->term, 0); break;
        }
        return RAFT_OK;
    case RAFT_MSG_APPEND_RESP:
        if (r->role == RAFT_LEADER) handle_append_resp(r, m);
        return RAFT_OK;
    case RAFT_MSG_HEARTBEAT_RESP:
        if (r->role == RAFT_LEADER) handle_heartbeat_resp(r, m);
        return RAFT_OK;
    case RAFT_MSG_TIMEOUT_NOW:
        if (r->role != RAFT_LEADER && is_voter(r, r->o.id)) become_candidate(r, true);
        return RAFT_OK;
    }
    return RAFT_EPROTO;
}

/* ---- ticks ------------------------------------------------------------------- */

static bool conf_change_allowed(const raft *r)
{
    return r->cfg_index <= r->commit && r->commit >= r->term_start;
}

static bool caught_up(const raft *r, const progress *pr)
{
    return pr->match + r->o.catchup_margin >= last_index(r) && pr->last_heard &&
           r->ticks - pr->last_heard <= r->o.election_ticks;
}

static void tick_leader(raft *r)
{
    r->heartbeat_elapsed++;
    r->election_elapsed++;
    if (r->election_elapsed >= r->o.election_ticks) {
        r->election_elapsed = 0;
        if (r->o.check_quorum && !raft_leader_has_quorum(r)) {
            become_follower(r, r->term, 0);
            return;
        }
    }
    if (r->transfer_target && ++r->transfer_elapsed >= r->o.election_ticks) r->transfer_target = 0;
    for (uint32_t i = 0; i < r->n_prs; i++) {
        progress *pr = &r->prs[i];
        if (pr->state == RAFT_PR_SNAPSHOT && ++pr->snap_elapsed >= r->o.election_ticks) {
            pr->state = RAFT_PR_PROBE; /* presumed lost: try again */
            pr->next = pr->match + 1;
            pr->paused = false;
        }
    }
    if (r->heartbeat_elapsed >= r->o.heartbeat_ticks) {
        r->heartbeat_elapsed = 0;
        bcast_heartbeat(r);
    }
    if (r->o.auto_promote && conf_change_allowed(r) && !r->transfer_target) {
        for (uint32_t i = 0; i < r->n_prs; i++) {
            progress *pr = &r->prs[i];
            if (!is_voter(r, pr->id) && caught_up(r, pr)) {
                raft_propose_conf(r, RAFT_CONF_PROMOTE, pr->id, NULL);
                break;
            }
        }
    }
}

static void tick_election(raft *r)
{
    r->election_elapsed++;
    if (r->election_elapsed >= r->rand_timeout) {
        r->election_elapsed = 0;
        if (is_voter(r, r->o.id)) campaign(r); /* learners never campaign [I9] */
    }
}

void raft_tick(raft *r)
{
    assert(!r->in_ready);
    r->ticks++;
    if (r->role == RAFT_LEADER)
        tick_leader(r);
    else
        tick_election(r);
}

/* ---- proposals -------------------------------------------------------------- */

static void leader_append(raft *r, uint8_t type, const void *data, size_t len, uint64_t *index)
{
    raft_entry e = {.term = r->term, .index = last_index(r) + 1, .type = type,
                    .len = (uint32_t)len, .data = (uint8_t *)data};
    log_append(r, &e);
    if (index) *index = e.index;
}

int raft_propose(raft *r, const void *data, size_t len, uint64_t *index)
{
    assert(!r->in_ready);
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (r->transfer_target) return RAFT_EBUSY;
    if (len > RAFT_MAX_ENTRY_BYTES) return RAFT_ETOOBIG;
    if (len && !data) return RAFT_EINVAL;
    leader_append(r, RAFT_ENTRY_NORMAL, data, len, index);
    bcast_append(r, false);
    return RAFT_OK;
}

int raft_propose_conf(raft *r, int op, raft_id node, uint64_t *index)
{
    assert(!r->in_ready);
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (r->transfer_target) return RAFT_EBUSY;
    if (r->cfg_index > r->commit) return RAFT_EBUSY; /* [I8] */
    if (r->commit < r->term_start) return RAFT_EAGAIN;
    if (node == 0) return RAFT_EINVAL;
    raft_config c = r->cfg;
    int k = raft_config_find(&c, node);
    switch (op) {
    case RAFT_CONF_ADD_LEARNER:
        if (k >= 0 || c.n >= RAFT_MAX_NODES) return RAFT_EINVAL;
        c.nodes[c.n++] = (raft_node_cfg){node, false};
        break;
    case RAFT_CONF_PROMOTE: {
        if (k < 0 || c.nodes[k].voter) return RAFT_EINVAL;
        progress *pr = find_pr(r, node);
        if (!pr || !caught_up(r, pr)) return RAFT_ENOTCAUGHTUP;
        c.nodes[k].voter = true;
        break;
    }
    case RAFT_CONF_REMOVE:
        if (k < 0) return RAFT_EINVAL;
        if (c.nodes[k].voter && raft_config_voters(&c) == 1) return RAFT_EINVAL;
        c.nodes[k] = c.nodes[--c.n];
        break;
    default:
        return RAFT_EINVAL;
    }
    buf b;
    buf_init(&b);
    raft_config_encode(&c, &b);
    leader_append(r, RAFT_ENTRY_CONFIG, b.data, b.len, index);
    buf_free(&b);
    r->cfg = c;
    r->cfg_index = last_index(r);
    sync_progress(r);
    bcast_append(r, false);
    maybe_commit(r); /* quorum may have shrunk */
    return RAFT_OK;
}

int raft_transfer_leader(raft *r, raft_id target)
{
    assert(!r->in_ready);
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (target == r->o.id) return RAFT_OK;
    if (!is_voter(r, target)) return RAFT_EINVAL;
    if (r->transfer_target == target) return RAFT_OK;
    progress *pr = find_pr(r, target);
    if (!pr) return RAFT_EINVAL;
    r->transfer_target = target;
    r->transfer_elapsed = 0;
    r->transfer_sent = false;
    if (pr->match == last_index(r)) {
        new_msg(r, RAFT_MSG_TIMEOUT_NOW, target);
        r->transfer_sent = true;
    } else
        send_append(r, pr, false);
    return RAFT_OK;
}

int raft_compact(raft *r, uint64_t index, const void *data, size_t len)
{
    assert(!r->in_ready);
    if (index <= r->snap.index || index > r->applied || index > r->stable) return RAFT_EINVAL;
    if (len > RAFT_MAX_SNAPSHOT_BYTES) return RAFT_ETOOBIG;
    if (len && !data) return RAFT_EINVAL;
    raft_config c;
    uint64_t at;
    config_at(r, index, &c, &at);
    uint64_t t = term_at(r, index);
    size_t drop = (size_t)(index - r->snap.index);
    for (size_t i = 0; i < drop; i++)
        free(r->log[i].data);
    memmove(r->log, r->log + drop, (r->log_n - drop) * sizeof *r->log);
    r->log_n -= drop;
    free(r->snap.data);
    r->snap.index = index;
    r->snap.term = t;
    r->snap.config = c;
    r->snap.len = len;
    r->snap.data = NULL;
    if (len) {
        r->snap.data = xmalloc(len);
        memcpy(r->snap.data, data, len);
    }
    r->snap_pending = true;
    r->snap_install = false;
    return RAFT_OK;
}

/* ---- ready / advance ---------------------------------------------------------- */

static uint64_t apply_upto(const raft *r)
{
    uint64_t c = r->commit < last_index(r) ? r->commit : last_index(r);
    return c;
}

static bool hs_differs(const raft *r)
{
    return r->term != r->persisted_hs.term || r->vote != r->persisted_hs.vote ||
           r->commit != r->persisted_hs.commit;
}

bool raft_has_ready(const raft *r)
{
    return hs_differs(r) || r->snap_pending || last_index(r) > r->stable || r->n_msgs ||
           r->n_ready_reads || apply_upto(r) > r->applied;
}

void raft_ready_get(raft *r, raft_ready *rd)
{
    assert(!r->in_ready);
    memset(rd, 0, sizeof *rd);
    rd->hs_changed = hs_differs(r);
    rd->hs = (raft_hard_state){r->term, r->vote, r->commit};
    if (r->snap_pending) {
        rd->snapshot = &r->snap;
        rd->snapshot_install = r->snap_install;
    }
    if (last_index(r) > r->stable) {
        rd->entries = entry_at(r, r->stable + 1);
        rd->n_entries = (size_t)(last_index(r) - r->stable);
    }
    if (apply_upto(r) > r->applied) {
        rd->committed = entry_at(r, r->applied + 1);
        rd->n_committed = (size_t)(apply_upto(r) - r->applied);
    }
    rd->msgs = r->msgs;
    rd->n_msgs = r->n_msgs;
    rd->reads = r->ready_reads;
    rd->n_reads = r->n_ready_reads;
    rd->role = r->role;
    rd->leader = r->leader;
    rd->term = r->term;
    r->in_ready = true;
}

void raft_advance(raft *r, const raft_ready *rd)
{
    assert(r->in_ready);
    r->in_ready = false;
    if (rd->hs_changed) r->persisted_hs = rd->hs;
    if (rd->snapshot) r->snap_pending = false;
    if (rd->n_entries) r->stable = rd->entries[rd->n_entries - 1].index;
    if (rd->n_committed) r->applied = rd->committed[rd->n_committed - 1].index;
    for (size_t i = 0; i < r->n_msgs; i++)
        free_outbox_msg(&r->msgs[i]);
    r->n_msgs = 0;
    r->n_ready_reads = 0;
    if (rd->n_entries && r->role == RAFT_LEADER) maybe_commit(r); /* [I4] */
}

/* ---- creation ------------------------------------------------------------------ */

void raft_opts_init(raft_opts *o, raft_id id, uint64_t seed)
{
    memset(o, 0, sizeof *o);
    o->id = id;
    o->seed = seed;
    o->heartbeat_ticks = 1;
    o->election_ticks = 10;
    o->pre_vote = true;
    o->check_quorum = true;
    o->catchup_margin = 8;
    o->max_msg_entries = 64;
    o->max_msg_bytes = 1u << 20;
    o->max_inflight = 256;
}

static bool entry_valid(const raft_entry *e)
{
    return e->term >= 1 && e->index >= 1 && e->type >= RAFT_ENTRY_NORMAL &&
           e->type <= RAFT_ENTRY_NOOP && e->len <= RAFT_MAX_ENTRY_BYTES && (!e->len || e->data);
}

int raft_new(const raft_opts *o, const raft_persisted *st, raft **out)
{
    *out = NULL;
    if (o->id == 0 || o->heartbeat_ticks == 0 || o->election_ticks <= o->heartbeat_ticks ||
        o->max_msg_entries == 0 || o->max_msg_entries > RAFT_MAX_MSG_ENTRIES || o->max_msg_bytes == 0 ||
        o->max_inflight == 0)
        return RAFT_EINVAL;
    raft *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->o = *o;
    r->rng = o->seed ^ (o->id * 0x9e3779b97f4a7c15ull);
    r->role = RAFT_FOLLOWER;
    r->ticks = 1; /* 0 in progress.last_heard means "never" */
    if (st) {
        const raft_snapshot *s = st->snapshot;
        if (s) {
            raft_config c;
            buf b;
            buf_init(&b);
            raft_config_encode(&s->config, &b);
            int rc = raft_config_decode(b.data, b.len, &c);
            buf_free(&b);
            if (s->index == 0 || s->term == 0 || s->len > RAFT_MAX_SNAPSHOT_BYTES ||
                (s->len && !s->data) || rc != RAFT_OK)
                goto corrupt;
            r->snap = *s;
            r->snap.data = NULL;
            if (s->len) {
                r->snap.data = xmalloc(s->len);
                memcpy(r->snap.data, s->data, s->len);
            }
        }
        uint64_t prev_term = r->snap.term;
        for (size_t i = 0; i < st->n_entries; i++) {
            const raft_entry *e = &st->entries[i];
            raft_config c;
            if (!entry_valid(e) || e->index != last_index(r) + 1 || e->term < prev_term ||
                e->term > st->hs.term ||
                (e->type == RAFT_ENTRY_CONFIG && raft_config_decode(e->data, e->len, &c) != RAFT_OK))
                goto corrupt;
            prev_term = e->term;
            log_append(r, e);
        }
        if (r->snap.term > st->hs.term || st->hs.commit > last_index(r)) goto corrupt;
        r->term = st->hs.term;
        r->vote = st->hs.vote;
        r->commit = st->hs.commit > r->snap.index ? st->hs.commit : r->snap.index;
        r->persisted_hs = st->hs;
        r->stable = last_index(r);
    }
    r->applied = o->applied > r->snap.index ? o->applied : r->snap.index;
    if (r->applied > r->commit) goto corrupt;
    set_config_from_log(r);
    reset_timeout(r);
    *out = r;
    return RAFT_OK;
corrupt:
    raft_free(r);
    return RAFT_ECORRUPT;
}

int raft_bootstrap(raft *r, const raft_config *cfg)
{
    assert(!r->in_ready);
    if (last_index(r) != 0 || r->term != 0 || r->snap.index != 0) return RAFT_EINVAL;
    buf b;
    buf_init(&b);
    raft_config_encode(cfg, &b);
    raft_config c;
    int k;
    if (raft_config_decode(b.data, b.len, &c) != RAFT_OK || (k = raft_config_find(&c, r->o.id)) < 0 ||
        !c.nodes[k].voter) {
        buf_free(&b);
        return RAFT_EINVAL;
    }
    raft_entry e = {.term = 1, .index = 1, .type = RAFT_ENTRY_CONFIG, .len = (uint32_t)b.len,
                    .data = (uint8_t *)b.data};
    log_append(r, &e);
    buf_free(&b);
    r->term = 1;
    r->commit = 1;
    set_config_from_log(r);
    return RAFT_OK;
}

void raft_free(raft *r)
{
    if (!r) return;
    log_clear(r);
    free(r->log);
    free(r->snap.data);
    for (size_t i = 0; i < r->n_msgs; i++)
        free_outbox_msg(&r->msgs[i]);
    free(r->msgs);
    free(r->reads);
    free(r->ready_reads);
    free(r);
}

/* ---- inspection ------------------------------------------------------------------ */

void raft_status_get(const raft *r, raft_status *s)
{
    memset(s, 0, sizeof *s);
    s->id = r->o.id;
    s->role = r->role;
    s->leader = r->leader;
    s->term = r->term;
    s->vote = r->vote;
    s->commit = r->commit;
    s->applied = r->applied;
    s->first_index = r->snap.index + 1;
    s->last_index = last_index(r);
    s->snapshot_index = r->snap.index;
    s->snapshot_term = r->snap.term;
    s->config_index = r->cfg_index;
    s->config = r->cfg;
    s->voter = is_voter(r, r->o.id);
    s->transfer_target = r->transfer_target;
    s->ticks = r->ticks;
    s->n_progress = r->n_prs;
    for (uint32_t i = 0; i < r->n_prs; i++)
        s->progress[i] = (raft_progress){r->prs[i].id, r->prs[i].match, r->prs[i].next,
                                         r->prs[i].state, r->prs[i].last_heard};
}

const raft_entry *raft_log_view(const raft *r, uint64_t *first_index, size_t *n)
{
    *first_index = r->snap.index + 1;
    *n = r->log_n;
    return r->log;
}

const char *raft_strerror(int err)
{
    switch (err) {
    case RAFT_OK: return "ok";
    case RAFT_ENOTLEADER: return "not the leader";
    case RAFT_EBUSY: return "a configuration change or leadership transfer is in progress";
    case RAFT_EINVAL: return "invalid argument";
    case RAFT_ENOTCAUGHTUP: return "learner has not caught up";
    case RAFT_EAGAIN: return "leader has not committed an entry of its term yet";
    case RAFT_EPROTO: return "message breaks the protocol";
    case RAFT_EDECODE: return "malformed encoding";
    case RAFT_ECORRUPT: return "persisted state is inconsistent";
    case RAFT_ETOOBIG: return "payload too large";
    }
    return "unknown error";
}

const char *raft_role_name(int role)
{
    switch (role) {
    case RAFT_FOLLOWER: return "follower";
    case RAFT_PRECANDIDATE: return "pre-candidate";
    case RAFT_CANDIDATE: return "candidate";
    case RAFT_LEADER: return "leader";
    }
    return "?";
}

const char *raft_msg_type_name(int type)
{
    static const char *const names[] = {"?",         "append",     "append-resp",    "vote",
                                        "vote-resp", "prevote",    "prevote-resp",   "heartbeat",
                                        "heartbeat-resp", "snapshot", "timeout-now"};
    return type >= 1 && type <= RAFT_MSG_TYPE_MAX ? names[type] : "?";
}

/* ---- encodings ------------------------------------------------------------------- */

/* A bounds-checked reader: every get fails (and stays failed) past the end. */
typedef struct rd {
    const uint8_t *p;
    size_t left;
    bool bad;
} rd;

static const uint8_t *rd_take(rd *d, size_t n)
{
    if (d->bad || d->left < n) {
        d->bad = true;
        return NULL;
    }
    const uint8_t *p = d->p;
    d->p += n;
    d->left -= n;
    return p;
}

static uint8_t rd_u8(rd *d)
{
    const uint8_t *p = rd_take(d, 1);
    return p ? p[0] : 0;
}

static uint32_t rd_u32(rd *d)
{
    const uint8_t *p = rd_take(d, 4);
    return p ? get_u32le(p) : 0;
}

static uint64_t rd_u64(rd *d)
{
    const uint8_t *p = rd_take(d, 8);
    return p ? get_u64le(p) : 0;
}

void raft_config_encode(const raft_config *c, buf *out)
{
    buf_putc(out, RAFT_WIRE_VERSION);
    buf_putc(out, (char)c->n);
    for (uint32_t i = 0; i < c->n; i++) {
        buf_put_u64le(out, c->nodes[i].id);
        buf_putc(out, c->nodes[i].voter ? 1 : 0);
    }
}

static int config_read(rd *d, raft_config *c)
{
    memset(c, 0, sizeof *c);
    if (rd_u8(d) != RAFT_WIRE_VERSION) return RAFT_EDECODE;
    uint8_t n = rd_u8(d);
    if (d->bad || n > RAFT_MAX_NODES) return RAFT_EDECODE;
    for (uint32_t i = 0; i < n; i++) {
        raft_id id = rd_u64(d);
        uint8_t v = rd_u8(d);
        if (d->bad || id == 0 || v > 1 || raft_config_find(c, id) >= 0) return RAFT_EDECODE;
        c->nodes[c->n++] = (raft_node_cfg){id, v == 1};
    }
    return RAFT_OK;
}

int raft_config_decode(const void *p, size_t len, raft_config *c)
{
    rd d = {p, len, false};
    int rc = config_read(&d, c);
    if (rc == RAFT_OK && d.left) rc = RAFT_EDECODE;
    if (rc != RAFT_OK) memset(c, 0, sizeof *c);
    return rc;
}

static void entry_write(const raft_entry *e, buf *out)
{
    buf_put_u64le(out, e->term);
    buf_put_u64le(out, e->index);
    buf_putc(out, (char)e->type);
    buf_put_u32le(out, e->len);
    buf_append(out, e->data, e->len);
}

/* Reads one entry; data points into the input (not copied). */
static int entry_read(rd *d, raft_entry *e)
{
    e->term = rd_u64(d);
    e->index = rd_u64(d);
    e->type = rd_u8(d);
    e->len = rd_u32(d);
    e->data = NULL;
    if (d->bad || e->len > RAFT_MAX_ENTRY_BYTES) return RAFT_EDECODE;
    const uint8_t *p = rd_take(d, e->len);
    if (!p) return RAFT_EDECODE;
    e->data = (uint8_t *)p;
    if (e->len == 0) e->data = NULL;
    if (!entry_valid(e)) return RAFT_EDECODE;
    if (e->type == RAFT_ENTRY_CONFIG) {
        raft_config c;
        if (raft_config_decode(e->data, e->len, &c) != RAFT_OK) return RAFT_EDECODE;
    }
    return RAFT_OK;
}

void raft_entry_encode(const raft_entry *e, buf *out)
{
    buf_putc(out, RAFT_WIRE_VERSION);
    entry_write(e, out);
}

int raft_entry_decode(const void *p, size_t len, raft_entry *e)
{
    rd d = {p, len, false};
    raft_entry tmp;
    memset(e, 0, sizeof *e);
    if (rd_u8(&d) != RAFT_WIRE_VERSION || entry_read(&d, &tmp) != RAFT_OK || d.left) return RAFT_EDECODE;
    entry_copy(e, &tmp);
    return RAFT_OK;
}

void raft_entry_free(raft_entry *e)
{
    free(e->data);
    e->data = NULL;
    e->len = 0;
}

void raft_hard_state_encode(const raft_hard_state *hs, buf *out)
{
    buf_putc(out, RAFT_WIRE_VERSION);
    buf_put_u64le(out, hs->term);
    buf_put_u64le(out, hs->vote);
    buf_put_u64le(out, hs->commit);
}

int raft_hard_state_decode(const void *p, size_t len, raft_hard_state *hs)
{
    rd d = {p, len, false};
    memset(hs, 0, sizeof *hs);
    if (rd_u8(&d) != RAFT_WIRE_VERSION) return RAFT_EDECODE;
    raft_hard_state t;
    t.term = rd_u64(&d);
    t.vote = rd_u64(&d);
    t.commit = rd_u64(&d);
    if (d.bad || d.left || (t.vote && !t.term)) return RAFT_EDECODE;
    *hs = t;
    return RAFT_OK;
}

static void snapshot_write(const raft_snapshot *s, buf *out)
{
    buf_put_u64le(out, s->index);
    buf_put_u64le(out, s->term);
    raft_config_encode(&s->config, out);
    buf_put_u64le(out, s->len);
    buf_append(out, s->data, s->len);
}

/* Reads a snapshot, copying its data (owned by s) on success. */
static int snapshot_read(rd *d, raft_snapshot *s)
{
    memset(s, 0, sizeof *s);
    s->index = rd_u64(d);
    s->term = rd_u64(d);
    if (config_read(d, &s->config) != RAFT_OK) return RAFT_EDECODE;
    uint64_t len = rd_u64(d);
    if (d->bad || s->index == 0 || s->term == 0 || len > RAFT_MAX_SNAPSHOT_BYTES) return RAFT_EDECODE;
    const uint8_t *p = rd_take(d, (size_t)len);
    if (!p) return RAFT_EDECODE;
    s->len = (size_t)len;
    if (len) {
        s->data = xmalloc(s->len);
        memcpy(s->data, p, s->len);
    }
    return RAFT_OK;
}

void raft_snapshot_encode(const raft_snapshot *s, buf *out)
{
    buf_putc(out, RAFT_WIRE_VERSION);
    snapshot_write(s, out);
}

int raft_snapshot_decode(const void *p, size_t len, raft_snapshot *s)
{
    rd d = {p, len, false};
    memset(s, 0, sizeof *s);
    if (rd_u8(&d) != RAFT_WIRE_VERSION) return RAFT_EDECODE;
    if (snapshot_read(&d, s) != RAFT_OK) return RAFT_EDECODE;
    if (d.left) {
        raft_snapshot_free(s);
        return RAFT_EDECODE;
    }
    return RAFT_OK;
}

void raft_snapshot_free(raft_snapshot *s)
{
    free(s->data);
    memset(s, 0, sizeof *s);
}

#define MSG_F_REJECT 1u
#define MSG_F_TRANSFER 2u

void raft_msg_encode(const raft_msg *m, buf *out)
{
    buf_putc(out, RAFT_WIRE_VERSION);
    buf_putc(out, (char)m->type);
    buf_putc(out, (char)((m->reject ? MSG_F_REJECT : 0) | (m->transfer ? MSG_F_TRANSFER : 0)));
    buf_put_u64le(out, m->from);
    buf_put_u64le(out, m->to);
    buf_put_u64le(out, m->term);
    buf_put_u64le(out, m->log_term);
    buf_put_u64le(out, m->index);
    buf_put_u64le(out, m->commit);
    buf_put_u64le(out, m->reject_hint);
    buf_put_u64le(out, m->context);
    buf_put_u32le(out, m->n_entries);
    for (uint32_t i = 0; i < m->n_entries; i++)
        entry_write(&m->entries[i], out);
    if (m->type == RAFT_MSG_SNAPSHOT) snapshot_write(m->snapshot, out);
}

int raft_msg_decode(const void *p, size_t len, raft_msg *m)
{
    rd d = {p, len, false};
    memset(m, 0, sizeof *m);
    if (rd_u8(&d) != RAFT_WIRE_VERSION) return RAFT_EDECODE;
    uint8_t type = rd_u8(&d), flags = rd_u8(&d);
    raft_msg t = {.type = type};
    t.reject = flags & MSG_F_REJECT;
    t.transfer = flags & MSG_F_TRANSFER;
    t.from = rd_u64(&d);
    t.to = rd_u64(&d);
    t.term = rd_u64(&d);
    t.log_term = rd_u64(&d);
    t.index = rd_u64(&d);
    t.commit = rd_u64(&d);
    t.reject_hint = rd_u64(&d);
    t.context = rd_u64(&d);
    uint32_t n = rd_u32(&d);
    if (d.bad || type < RAFT_MSG_APPEND || type > RAFT_MSG_TYPE_MAX || (flags & ~3u) || t.from == 0 ||
        t.to == 0 || t.from == t.to || t.term == 0 || n > RAFT_MAX_MSG_ENTRIES ||
        (n && type != RAFT_MSG_APPEND) || (t.transfer && type != RAFT_MSG_VOTE) ||
        (type == RAFT_MSG_APPEND && t.index > 0 && t.log_term == 0) ||
        t.log_term > t.term || t.index > UINT64_MAX - RAFT_MAX_MSG_ENTRIES - 1)
        return RAFT_EDECODE;
    /* Entries: read once to validate and size, then copy into one block. */
    rd scan = d;
    size_t bytes = 0;
    uint64_t prev_term = t.log_term;
    for (uint32_t i = 0; i < n; i++) {
        raft_entry e;
        if (entry_read(&scan, &e) != RAFT_OK || e.index != t.index + 1 + i || e.term < prev_term ||
            e.term > t.term)
            return RAFT_EDECODE;
        prev_term = e.term;
        bytes += e.len;
    }
    if (n) {
        t.entries = xmalloc(n * sizeof(raft_entry) + bytes);
        uint8_t *dst = (uint8_t *)(t.entries + n);
        for (uint32_t i = 0; i < n; i++) {
            raft_entry e;
            entry_read(&d, &e); /* validated above */
            t.entries[i] = e;
            if (e.len) {
                memcpy(dst, e.data, e.len);
                t.entries[i].data = dst;
                dst += e.len;
            }
        }
        t.n_entries = n;
    }
    if (type == RAFT_MSG_SNAPSHOT) {
        t.snapshot = xmalloc(sizeof *t.snapshot);
        if (snapshot_read(&d, t.snapshot) != RAFT_OK || t.snapshot->term > t.term) {
            raft_snapshot_free(t.snapshot);
            free(t.snapshot);
            t.snapshot = NULL;
            raft_msg_free(&t);
            return RAFT_EDECODE;
        }
    }
    if (d.left) {
        raft_msg_free(&t);
        return RAFT_EDECODE;
    }
    *m = t;
    return RAFT_OK;
}

void raft_msg_free(raft_msg *m)
{
    free(m->entries);
    if (m->snapshot) {
        raft_snapshot_free(m->snapshot);
        free(m->snapshot);
    }
    memset(m, 0, sizeof *m);
}
