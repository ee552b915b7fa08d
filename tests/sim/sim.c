/* sim.c: the deterministic Raft simulator (see sim.h; properties in check.c).
 *
 *   build/sim [--seeds N] [--first-seed S] [--steps M] [--nodes K]
 *             [--seed S] [--verbose] [--break-commit-rule]
 *
 * Runs N seeds (S, S+1, ...) of M steps each with K initial nodes (default:
 * 3, 4 or 5, drawn from the seed); --seed S runs exactly one. Exit 0: no violation; 1: a violation (its seed, step and
 * replay command are printed); 2: usage error.
 *
 * One step: fault events (crash, restart, partition, heal, membership change,
 * leadership transfer), a tick for (almost) every node that is up, delivery of
 * the messages due (in random order; the network already decided loss, delay
 * and duplication at send time), a client proposal and a read to a leader,
 * then each node may run its Ready loop once (persist to the simulated disk,
 * send, apply, advance) -- or not, so crashes catch nodes with unpersisted
 * state -- and finally every property is checked.
 *
 * The last LIVE_WINDOW steps are fault-free: every node is restarted, the
 * network heals and loses nothing. Within that window a leader must be
 * elected and a proposal made in it must commit (liveness), else the run is a
 * violation too.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim.h"

#define LIVE_WINDOW 300
#define APP_SNAP_LEN 16

/* ---- randomness and hashing ---------------------------------------------------- */

uint64_t sim_rand(sim *s)
{
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t rnd(sim *s, uint32_t n)
{
    return n ? (uint32_t)(sim_rand(s) % n) : 0;
}

static bool chance_pct(sim *s, uint32_t pct)
{
    return rnd(s, 100) < pct;
}

static bool chance_pm(sim *s, uint32_t pm)
{
    return rnd(s, 1000) < pm;
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

uint64_t sim_entry_hash(const raft_entry *e)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, &e->type, 1);
    return fnv(h, e->data, e->len) | 1; /* never 0 */
}

uint64_t sim_chain(uint64_t chain, const raft_entry *e)
{
    uint64_t h = fnv(chain ^ 0x9e3779b97f4a7c15ull, &e->term, sizeof e->term);
    h = fnv(h, &e->index, sizeof e->index);
    return fnv(h, &(uint64_t){sim_entry_hash(e)}, 8) | 1;
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

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) abort();
    return p;
}

/* ---- simulated disk ------------------------------------------------------------- */

static void disk_free(sim_disk *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->ents[i].data);
    free(d->ents);
    free(d->snap.data);
    memset(d, 0, sizeof *d);
}

static void disk_drop_from(sim_disk *d, size_t k)
{
    while (d->n > k)
        free(d->ents[--d->n].data);
}

static void entry_dup(raft_entry *dst, const raft_entry *src)
{
    *dst = *src;
    dst->data = NULL;
    if (src->len) {
        dst->data = malloc(src->len);
        if (!dst->data) abort();
        memcpy(dst->data, src->data, src->len);
    }
}

/* Applies one Ready's storage part to the disk, in the order raft.h gives;
 * false if the Ready breaks the storage contract. */
static bool disk_persist(sim *s, sim_node *n, const raft_ready *rd)
{
    sim_disk *d = &n->disk;
    if (rd->snapshot) {
        free(d->snap.data);
        d->snap = *rd->snapshot;
        d->snap.data = NULL;
        if (d->snap.len) {
            d->snap.data = malloc(d->snap.len);
            if (!d->snap.data) abort();
            memcpy(d->snap.data, rd->snapshot->data, d->snap.len);
        }
        if (rd->snapshot_install) {
            disk_drop_from(d, 0);
        } else {
            size_t drop = 0;
            while (drop < d->n && d->ents[drop].index <= d->snap.index)
                drop++;
            for (size_t i = 0; i < drop; i++)
                free(d->ents[i].data);
            memmove(d->ents, d->ents + drop, (d->n - drop) * sizeof *d->ents);
            d->n -= drop;
        }
    }
    if (rd->n_entries) {
        uint64_t first = rd->entries[0].index;
        uint64_t disk_first = d->n ? d->ents[0].index : d->snap.index + 1;
        if (first < disk_first || first > disk_first + d->n) {
            sim_check_fail(s, "storage contract", "node %llu told to write from %llu, disk holds %llu..%llu",
                       (unsigned long long)n->id, (unsigned long long)first,
                       (unsigned long long)disk_first, (unsigned long long)(disk_first + d->n - 1));
            return false;
        }
        disk_drop_from(d, (size_t)(first - disk_first));
        if (d->n + rd->n_entries > d->cap) {
            d->cap = (d->n + rd->n_entries) * 2;
            d->ents = xrealloc(d->ents, d->cap * sizeof *d->ents);
        }
        for (size_t i = 0; i < rd->n_entries; i++)
            entry_dup(&d->ents[d->n++], &rd->entries[i]);
    }
    if (rd->hs_changed) d->hs = rd->hs;
    return true;
}

/* ---- network -------------------------------------------------------------------- */

static bool connected(const sim *s, raft_id a, raft_id b)
{
    return s->group[a - 1] == s->group[b - 1];
}

static void net_push(sim *s, raft_id from, raft_id to, const buf *b, uint64_t at)
{
    if (s->n_net == s->net_cap) {
        s->net_cap = s->net_cap ? s->net_cap * 2 : 256;
        s->net = xrealloc(s->net, s->net_cap * sizeof *s->net);
    }
    sim_packet *p = &s->net[s->n_net++];
    p->deliver_at = at;
    p->from = from;
    p->to = to;
    p->len = b->len;
    p->bytes = malloc(b->len);
    if (!p->bytes) abort();
    memcpy(p->bytes, b->data, b->len);
}

static void send_msg(sim *s, const raft_msg *m)
{
    if (m->to < 1 || m->to > (raft_id)s->n_nodes) return; /* to a node never created */
    if (s->faults_on && chance_pct(s, s->loss_pct)) return;
    buf b;
    buf_init(&b);
    raft_msg_encode(m, &b);
    net_push(s, m->from, m->to, &b, s->step + rnd(s, s->max_delay + 1));
    if (s->faults_on && chance_pct(s, s->dup_pct))
        net_push(s, m->from, m->to, &b, s->step + rnd(s, s->max_delay + 3));
    buf_free(&b);
}

/* ---- nodes ---------------------------------------------------------------------- */

static void node_opts(sim *s, raft_id id, raft_opts *o)
{
    raft_opts_init(o, id, sim_rand(s));
    o->election_ticks = s->election_ticks;
    o->max_msg_entries = s->max_msg_entries;
    o->max_inflight = 4 + rnd(s, 32);
    o->catchup_margin = 2;
    o->auto_promote = (s->seed & 1) != 0;
    o->unsafe_commit_any_term = s->break_commit;
}

static void node_start(sim *s, sim_node *n)
{
    raft_opts o;
    node_opts(s, n->id, &o);
    sim_disk *d = &n->disk;
    raft_persisted p = {.hs = d->hs,
                        .snapshot = d->snap.index ? &d->snap : NULL,
                        .entries = d->ents,
                        .n_entries = d->n};
    int rc = raft_new(&o, &p, &n->r);
    if (rc != RAFT_OK) {
        sim_check_fail(s, "restart", "node %llu cannot restart from its disk: %s",
                   (unsigned long long)n->id, raft_strerror(rc));
        return;
    }
    n->up = true;
    n->exists = true;
    n->app_index = 0;
    n->app_chain = 0;
    if (d->snap.index) {
        n->app_index = get_u64le(d->snap.data);
        n->app_chain = get_u64le(d->snap.data + 8);
    }
    n->last_commit = 0;
    n->shadow_term = 0;
    n->last_role = RAFT_FOLLOWER;
}

static void node_crash(sim *s, sim_node *n)
{
    trace(s, "crash node %llu", (unsigned long long)n->id);
    raft_free(n->r);
    n->r = NULL;
    n->up = false;
    n->shadow_term = 0;
    n->last_commit = 0;
}

static void process_ready(sim *s, sim_node *n)
{
    raft_ready rd;
    raft_ready_get(n->r, &rd);
    if (!disk_persist(s, n, &rd)) {
        raft_advance(n->r, &rd);
        return;
    }
    for (size_t i = 0; i < rd.n_msgs; i++) {
        const raft_msg *m = &rd.msgs[i];
        if (s->verbose && m->type != RAFT_MSG_HEARTBEAT && m->type != RAFT_MSG_HEARTBEAT_RESP)
            trace(s, "send %s %llu->%llu term=%llu idx=%llu lt=%llu n=%u commit=%llu%s",
                  raft_msg_type_name(m->type), (unsigned long long)m->from, (unsigned long long)m->to,
                  (unsigned long long)m->term, (unsigned long long)m->index,
                  (unsigned long long)m->log_term, m->n_entries, (unsigned long long)m->commit,
                  m->reject ? " reject" : "");
        send_msg(s, m);
    }
    if (rd.snapshot && rd.snapshot_install) {
        if (rd.snapshot->len != APP_SNAP_LEN || get_u64le(rd.snapshot->data) != rd.snapshot->index) {
            sim_check_fail(s, "snapshot", "node %llu got a snapshot with foreign data", (unsigned long long)n->id);
        } else {
            trace(s, "node %llu installs snapshot at %llu", (unsigned long long)n->id,
                  (unsigned long long)rd.snapshot->index);
            sim_check_install(s, n, rd.snapshot->index, get_u64le(rd.snapshot->data + 8));
        }
    }
    for (size_t i = 0; i < rd.n_committed && !s->violated; i++) {
        const raft_entry *e = &rd.committed[i];
        if (!sim_check_apply(s, n, e)) break;
        if (e->type == RAFT_ENTRY_CONFIG && s->verbose) {
            raft_config c;
            char desc[160];
            size_t off = 0;
            desc[0] = 0;
            if (raft_config_decode(e->data, e->len, &c) == RAFT_OK)
                for (uint32_t k = 0; k < c.n; k++)
                    off += (size_t)snprintf(desc + off, sizeof desc - off, " %llu%s",
                                            (unsigned long long)c.nodes[k].id, c.nodes[k].voter ? "" : "(learner)");
            trace(s, "node %llu applies config at %llu:%s", (unsigned long long)n->id,
                  (unsigned long long)e->index, desc);
        }
        if (e->type == RAFT_ENTRY_NORMAL && e->len == 8 && s->first_after_heal &&
            get_u64le(e->data) >= s->first_after_heal && !s->live_ok) {
            s->live_ok = true;
            trace(s, "liveness: entry %llu proposed after heal committed at index %llu",
                  (unsigned long long)get_u64le(e->data), (unsigned long long)e->index);
        }
    }
    for (size_t i = 0; i < rd.n_reads; i++) {
        const raft_read_state *rs = &rd.reads[i];
        for (size_t k = 0; k < s->n_reads; k++) {
            if (s->reads[k].ctx != rs->ctx) continue;
            if (rs->status == RAFT_OK && rs->index < s->reads[k].min_index)
                sim_check_fail(s, "read index",
                           "node %llu confirmed read %llu at index %llu, but %llu was committed before",
                           (unsigned long long)n->id, (unsigned long long)rs->ctx,
                           (unsigned long long)rs->index, (unsigned long long)s->reads[k].min_index);
            s->reads[k] = s->reads[--s->n_reads];
            break;
        }
    }
    raft_advance(n->r, &rd);
    /* compaction */
    raft_status st;
    raft_status_get(n->r, &st);
    if (n->app_index >= st.snapshot_index + s->compact_every && n->app_index > st.snapshot_index) {
        uint8_t data[APP_SNAP_LEN];
        put_u64le(data, n->app_index);
        put_u64le(data + 8, n->app_chain);
        int rc = raft_compact(n->r, n->app_index, data, sizeof data);
        if (rc != RAFT_OK)
            sim_check_fail(s, "compaction", "node %llu: raft_compact(%llu): %s", (unsigned long long)n->id,
                       (unsigned long long)n->app_index, raft_strerror(rc));
    }
}

/* ---- fault events --------------------------------------------------------------- */

static sim_node *random_leader(sim *s)
{
    sim_node *cand[SIM_MAX_NODES];
    int k = 0;
    for (int i = 0; i < s->n_nodes; i++) {
        sim_node *n = &s->nodes[i];
        if (!n->up) continue;
        raft_status st;
        raft_status_get(n->r, &st);
        if (st.role == RAFT_LEADER) cand[k++] = n;
    }
    return k ? cand[rnd(s, (uint32_t)k)] : NULL;
}

static void membership_event(sim *s)
{
    sim_node *l = random_leader(s);
    if (!l) return;
    raft_status st;
    raft_status_get(l->r, &st);
    uint32_t voters = raft_config_voters(&st.config);
    uint32_t op = rnd(s, 3);
    raft_id target = 0;
    int rc;
    if (op == 0) {
        if (s->n_nodes >= SIM_MAX_NODES || st.config.n - voters >= 2) return;
        target = (raft_id)s->n_nodes + 1;
        rc = raft_propose_conf(l->r, RAFT_CONF_ADD_LEARNER, target, NULL);
        if (rc == RAFT_OK) {
            sim_node *n = &s->nodes[s->n_nodes++];
            n->id = target;
            s->group[target - 1] = 0;
            node_start(s, n);
        }
    } else if (op == 1) {
        for (uint32_t i = 0; i < st.config.n; i++)
            if (!st.config.nodes[i].voter) target = st.config.nodes[i].id;
        if (!target) return;
        rc = raft_propose_conf(l->r, RAFT_CONF_PROMOTE, target, NULL);
    } else {
        const raft_node_cfg *c = &st.config.nodes[rnd(s, st.config.n)];
        if (c->voter && voters <= 3) return;
        target = c->id;
        rc = raft_propose_conf(l->r, RAFT_CONF_REMOVE, target, NULL);
    }
    trace(s, "leader %llu: %s node %llu: %s", (unsigned long long)l->id,
          op == 0 ? "add learner" : op == 1 ? "promote" : "remove", (unsigned long long)target,
          raft_strerror(rc));
}

static void fault_events(sim *s)
{
    if (chance_pm(s, s->crash_pm)) {
        /* half of the crashes hit a leader: that is where the hard cases are */
        sim_node *n = chance_pct(s, 50) ? random_leader(s) : NULL;
        if (!n) n = &s->nodes[rnd(s, (uint32_t)s->n_nodes)];
        if (n->up) node_crash(s, n);
    }
    for (int i = 0; i < s->n_nodes; i++) {
        sim_node *n = &s->nodes[i];
        if (!n->up && n->exists && chance_pct(s, s->restart_pct)) {
            trace(s, "restart node %llu", (unsigned long long)n->id);
            node_start(s, n);
        }
    }
    if (chance_pm(s, s->part_pm)) {
        uint32_t k = 2 + rnd(s, 2);
        char desc[128];
        size_t off = 0;
        sim_node *l = chance_pct(s, 50) ? random_leader(s) : NULL;
        for (int i = 0; i < s->n_nodes; i++)
            s->group[i] = l ? 0 : (int)rnd(s, k);
        if (l) s->group[l->id - 1] = 1; /* isolate a leader */
        for (int i = 0; i < s->n_nodes; i++)
            off += (size_t)snprintf(desc + off, sizeof desc - off, "%d", s->group[i]);
        trace(s, "partition (group per node): %s", desc);
    } else if (chance_pct(s, s->heal_pct)) {
        bool any = false;
        for (int i = 0; i < s->n_nodes; i++) {
            any |= s->group[i] != 0;
            s->group[i] = 0;
        }
        if (any) trace(s, "heal network");
    }
    if (chance_pm(s, s->member_pm)) membership_event(s);
    if (chance_pm(s, s->transfer_pm)) {
        sim_node *l = random_leader(s);
        if (l) {
            raft_id t = (raft_id)(1 + rnd(s, (uint32_t)s->n_nodes));
            int rc = raft_transfer_leader(l->r, t);
            trace(s, "leader %llu: transfer to %llu: %s", (unsigned long long)l->id,
                  (unsigned long long)t, raft_strerror(rc));
        }
    }
}

static void heal_all(sim *s)
{
    trace(s, "heal: network whole and lossless, every node up, no more faults");
    s->faults_on = false;
    for (int i = 0; i < s->n_nodes; i++) {
        s->group[i] = 0;
        sim_node *n = &s->nodes[i];
        if (!n->up && n->exists) node_start(s, n);
    }
}

static void deliver(sim *s)
{
    /* take the due packets out, then deliver them in random order */
    size_t n_due = 0, keep = 0;
    sim_packet *due = NULL;
    for (size_t i = 0; i < s->n_net; i++) {
        if (s->net[i].deliver_at <= s->step) {
            due = xrealloc(due, (n_due + 1) * sizeof *due);
            due[n_due++] = s->net[i];
        } else {
            s->net[keep++] = s->net[i];
        }
    }
    s->n_net = keep;
    for (size_t i = n_due; i > 1; i--) {
        size_t j = rnd(s, (uint32_t)i);
        sim_packet t = due[i - 1];
        due[i - 1] = due[j];
        due[j] = t;
    }
    for (size_t i = 0; i < n_due; i++) {
        sim_packet *p = &due[i];
        sim_node *n = &s->nodes[p->to - 1];
        if (!s->violated && n->up && connected(s, p->from, p->to)) {
            raft_msg m;
            int rc = raft_msg_decode(p->bytes, p->len, &m);
            if (rc != RAFT_OK) {
                sim_check_fail(s, "codec", "message %llu->%llu does not decode: %s",
                           (unsigned long long)p->from, (unsigned long long)p->to, raft_strerror(rc));
            } else {
                rc = raft_step(n->r, &m);
                if (rc != RAFT_OK)
                    sim_check_fail(s, "protocol", "node %llu refused %s from %llu: %s",
                               (unsigned long long)p->to, raft_msg_type_name(m.type),
                               (unsigned long long)p->from, raft_strerror(rc));
                raft_msg_free(&m);
            }
        }
        free(p->bytes);
    }
    free(due);
}

static void client_events(sim *s)
{
    if (chance_pct(s, s->propose_pct)) {
        sim_node *l = random_leader(s);
        if (l) {
            uint64_t v = ++s->next_proposal;
            uint8_t data[8];
            put_u64le(data, v);
            uint64_t idx = 0;
            int rc = raft_propose(l->r, data, sizeof data, &idx);
            if (rc == RAFT_OK && !s->faults_on && !s->first_after_heal) s->first_after_heal = v;
            trace(s, "propose %llu at leader %llu: %s (index %llu)", (unsigned long long)v,
                  (unsigned long long)l->id, raft_strerror(rc), (unsigned long long)idx);
        }
    }
    if (chance_pct(s, s->read_pct)) {
        sim_node *l = random_leader(s);
        if (l) {
            uint64_t ctx = ++s->next_read;
            if (raft_read_index(l->r, ctx) == RAFT_OK) {
                if (s->n_reads == s->reads_cap) {
                    s->reads_cap = s->reads_cap ? s->reads_cap * 2 : 64;
                    s->reads = xrealloc(s->reads, s->reads_cap * sizeof *s->reads);
                }
                s->reads[s->n_reads++] = (sim_read){ctx, s->max_committed};
            }
        }
    }
}

static void trace_roles(sim *s)
{
    if (!s->verbose) return;
    for (int i = 0; i < s->n_nodes; i++) {
        sim_node *n = &s->nodes[i];
        if (!n->up) continue;
        raft_status st;
        raft_status_get(n->r, &st);
        if (st.role != n->last_role || st.term != n->last_term)
            trace(s, "node %llu is %s in term %llu (last %llu, commit %llu)", (unsigned long long)n->id,
                  raft_role_name(st.role), (unsigned long long)st.term,
                  (unsigned long long)st.last_index, (unsigned long long)st.commit);
        n->last_role = st.role;
        n->last_term = st.term;
    }
}

/* ---- one run ---------------------------------------------------------------------- */

/* n_initial 0: drawn from the seed (3, 4 or 5 nodes). */
static bool run_seed(uint64_t seed, uint64_t steps, int n_initial, bool verbose, bool break_commit)
{
    sim *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->seed = seed;
    s->rng = seed * 0x2545f4914f6cdd1dull + 1;
    s->steps = steps;
    s->verbose = verbose;
    s->break_commit = break_commit;
    sim_check_init(s);
    /* knobs for this seed (always drawn in this order, so --nodes K replays) */
    uint32_t pick = rnd(s, 10);
    if (!n_initial) n_initial = pick < 5 ? 3 : pick < 7 ? 4 : 5;
    s->n_initial = n_initial;
    s->loss_pct = rnd(s, 20);
    s->dup_pct = rnd(s, 10);
    s->max_delay = rnd(s, 4);
    s->crash_pm = 20 + rnd(s, 100);
    s->restart_pct = 5 + rnd(s, 20);
    s->part_pm = 20 + rnd(s, 60);
    s->heal_pct = 5 + rnd(s, 15);
    s->ready_pct = 40 + rnd(s, 61);
    s->tick_pct = 85 + rnd(s, 16);
    s->propose_pct = 30 + rnd(s, 70);
    s->compact_every = 5 + rnd(s, 60);
    s->member_pm = 5 + rnd(s, 25);
    s->transfer_pm = rnd(s, 10);
    s->read_pct = rnd(s, 20);
    s->election_ticks = 2 * s->max_delay + 3 + rnd(s, 4);
    s->max_msg_entries = chance_pct(s, 50) ? 1 : 1 + rnd(s, 8);
    s->heal_at = steps >= 2 * LIVE_WINDOW ? steps - LIVE_WINDOW : steps + 1;
    s->faults_on = true;
    trace(s, "seed %llu: loss %u%% dup %u%% delay<=%u crash %u/1000 restart %u%% partition %u/1000 "
             "heal %u%% ready %u%% election %u ticks, %u entries/msg, heal at %llu",
          (unsigned long long)seed, s->loss_pct, s->dup_pct, s->max_delay, s->crash_pm, s->restart_pct,
          s->part_pm, s->heal_pct, s->ready_pct, s->election_ticks, s->max_msg_entries,
          (unsigned long long)s->heal_at);

    raft_config cfg = {.n = (uint32_t)n_initial};
    for (int i = 0; i < n_initial; i++)
        cfg.nodes[i] = (raft_node_cfg){(raft_id)i + 1, true};
    s->n_nodes = n_initial;
    for (int i = 0; i < n_initial && !s->violated; i++) {
        sim_node *n = &s->nodes[i];
        n->id = (raft_id)i + 1;
        node_start(s, n);
        if (s->violated) break;
        if (raft_bootstrap(n->r, &cfg) != RAFT_OK) {
            sim_check_fail(s, "bootstrap", "node %d refused to bootstrap", i + 1);
            break;
        }
        process_ready(s, n);
    }

    for (s->step = 1; s->step <= steps && !s->violated; s->step++) {
        if (s->step == s->heal_at) heal_all(s);
        if (s->faults_on) fault_events(s);
        for (int i = 0; i < s->n_nodes; i++) {
            sim_node *n = &s->nodes[i];
            if (n->up && (!s->faults_on || chance_pct(s, s->tick_pct))) raft_tick(n->r);
        }
        deliver(s);
        if (s->violated) break;
        client_events(s);
        for (int i = 0; i < s->n_nodes && !s->violated; i++) {
            sim_node *n = &s->nodes[i];
            if (n->up && raft_has_ready(n->r) && (!s->faults_on || chance_pct(s, s->ready_pct)))
                process_ready(s, n);
        }
        if (s->violated) break;
        trace_roles(s);
        sim_check_step(s);
    }
    if (!s->violated && s->heal_at <= steps && !s->live_ok) {
        s->step = steps;
        sim_check_fail(s, "liveness", "no proposal made after the heal at step %llu committed within %d steps",
                   (unsigned long long)s->heal_at, LIVE_WINDOW);
    }
    bool ok = !s->violated;
    for (int i = 0; i < s->n_nodes; i++) {
        raft_free(s->nodes[i].r);
        disk_free(&s->nodes[i].disk);
        free(s->nodes[i].shadow);
    }
    for (size_t i = 0; i < s->n_net; i++)
        free(s->net[i].bytes);
    free(s->net);
    free(s->reads);
    sim_check_free(s);
    free(s);
    return ok;
}

/* ---- command line ------------------------------------------------------------------ */

static int usage(void)
{
    fprintf(stderr, "usage: build/sim [--seeds N] [--first-seed S] [--steps M] [--nodes K]\n"
                    "                 [--seed S] [--verbose] [--break-commit-rule]\n");
    return 2;
}

static bool parse_u64(const char *s, uint64_t *v)
{
    if (!s || !*s) return false;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (*end || s[0] == '-') return false;
    *v = x;
    return true;
}

int main(int argc, char **argv)
{
    uint64_t seeds = 100, first = 1, steps = 2000, nodes = 0, one = 0;
    bool have_one = false, verbose = false, brk = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--verbose")) {
            verbose = true;
        } else if (!strcmp(a, "--break-commit-rule")) {
            brk = true;
        } else if (!strcmp(a, "--seeds") && parse_u64(v, &seeds) && seeds > 0) {
            i++;
        } else if (!strcmp(a, "--first-seed") && parse_u64(v, &first)) {
            i++;
        } else if (!strcmp(a, "--steps") && parse_u64(v, &steps) && steps > 0) {
            i++;
        } else if (!strcmp(a, "--nodes") && parse_u64(v, &nodes) && nodes >= 1 && nodes <= 9) {
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
    uint64_t failed = 0;
    for (uint64_t k = 0; k < seeds; k++) {
        if (!run_seed(first + k, steps, (int)nodes, verbose, brk)) {
            failed++;
            break; /* the first violation is the one to replay */
        }
    }
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    if (failed) return 1;
    char nn[32];
    snprintf(nn, sizeof nn, "%llu", (unsigned long long)nodes);
    printf("sim: %llu seeds x %llu steps, %s nodes: no violation (%.1f s)\n", (unsigned long long)seeds,
           (unsigned long long)steps, nodes ? nn : "3-5", secs);
    return 0;
}
