/* check.c: the simulator's property checker (see sim.h).
 *
 * Properties (Raft paper, Figure 3), checked after every step over the nodes
 * that are up, plus two of our own:
 *   election safety      at most one leader per term (leader_of[term]);
 *   leader append-only   a leader never changes or drops an entry of its log
 *                        while it stays leader of the same term (compared with
 *                        a shadow copy taken at the previous step; entries
 *                        compacted into a snapshot are exempt);
 *   log matching         two logs holding an entry with the same index and term
 *                        hold the same entries up to it (pairwise, over the
 *                        range both hold in memory);
 *   leader completeness  a leader of term T holds every entry that some node
 *                        knew committed while its term was < T;
 *   state machine safety no two nodes apply different entries at one index
 *                        (compared as a chain hash over the whole applied
 *                        prefix, snapshots included);
 *   committed never lost an index known committed never changes its entry,
 *                        and a node's commit index never goes down while up;
 *   read index           a read is reported at an index >= every index known
 *                        committed when it was issued (checked in sim.c).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) abort();
    return p;
}

void sim_check_init(sim *s)
{
    s->rec_cap = 0;
    s->committed = NULL;
    s->commit_term = NULL;
    s->applied_chain = NULL;
    s->leader_of = NULL;
    s->leader_cap = 0;
    s->max_committed = 0;
}

void sim_check_free(sim *s)
{
    free(s->committed);
    free(s->commit_term);
    free(s->applied_chain);
    free(s->leader_of);
    sim_check_init(s);
}

static void grow_records(sim *s, uint64_t index)
{
    if (index < s->rec_cap) return;
    size_t cap = s->rec_cap ? s->rec_cap : 1024;
    while (cap <= index)
        cap *= 2;
    s->committed = xrealloc(s->committed, cap * sizeof *s->committed);
    s->commit_term = xrealloc(s->commit_term, cap * sizeof *s->commit_term);
    s->applied_chain = xrealloc(s->applied_chain, cap * sizeof *s->applied_chain);
    memset(s->committed + s->rec_cap, 0, (cap - s->rec_cap) * sizeof *s->committed);
    memset(s->commit_term + s->rec_cap, 0, (cap - s->rec_cap) * sizeof *s->commit_term);
    memset(s->applied_chain + s->rec_cap, 0, (cap - s->rec_cap) * sizeof *s->applied_chain);
    s->rec_cap = cap;
}

void sim_check_fail(sim *s, const char *property, const char *fmt, ...)
{
    if (s->violated) return;
    s->violated = true;
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("VIOLATION seed=%llu step=%llu: %s: %s\n", (unsigned long long)s->seed,
           (unsigned long long)s->step, property, detail);
    printf("replay: build/sim --seed %llu --steps %llu --nodes %d%s --verbose\n",
           (unsigned long long)s->seed, (unsigned long long)s->steps, s->n_initial,
           s->break_commit ? " --break-commit-rule" : "");
    fflush(stdout);
}

bool sim_check_apply(sim *s, sim_node *n, const raft_entry *e)
{
    if (e->index != n->app_index + 1) {
        sim_check_fail(s, "state machine safety", "node %llu applied index %llu after %llu",
                   (unsigned long long)n->id, (unsigned long long)e->index,
                   (unsigned long long)n->app_index);
        return false;
    }
    n->app_chain = sim_chain(n->app_chain, e);
    n->app_index = e->index;
    grow_records(s, e->index);
    if (s->applied_chain[e->index] == 0) {
        s->applied_chain[e->index] = n->app_chain;
    } else if (s->applied_chain[e->index] != n->app_chain) {
        sim_check_fail(s, "state machine safety",
                   "node %llu applied a different entry (or history) at index %llu (term %llu)",
                   (unsigned long long)n->id, (unsigned long long)e->index,
                   (unsigned long long)e->term);
        return false;
    }
    return true;
}

bool sim_check_install(sim *s, sim_node *n, uint64_t index, uint64_t chain)
{
    grow_records(s, index);
    if (s->applied_chain[index] == 0) {
        s->applied_chain[index] = chain;
    } else if (s->applied_chain[index] != chain) {
        sim_check_fail(s, "state machine safety", "node %llu installed a snapshot at %llu with another history",
                   (unsigned long long)n->id, (unsigned long long)index);
        return false;
    }
    n->app_index = index;
    n->app_chain = chain;
    return true;
}

static raft_id *leader_slot(sim *s, uint64_t term)
{
    if (term >= s->leader_cap) {
        size_t cap = s->leader_cap ? s->leader_cap : 256;
        while (cap <= term)
            cap *= 2;
        s->leader_of = xrealloc(s->leader_of, cap * sizeof *s->leader_of);
        memset(s->leader_of + s->leader_cap, 0, (cap - s->leader_cap) * sizeof *s->leader_of);
        s->leader_cap = cap;
    }
    return &s->leader_of[term];
}

typedef struct view {
    sim_node *n;
    raft_status st;
    const raft_entry *log;
    uint64_t first;
    size_t cnt;
} view;

static const raft_entry *at(const view *v, uint64_t i)
{
    if (i < v->first || i >= v->first + v->cnt) return NULL;
    return &v->log[i - v->first];
}

static bool check_node(sim *s, view *v)
{
    sim_node *n = v->n;
    const raft_status *st = &v->st;
    unsigned long long id = n->id;

    if (st->commit < n->last_commit) {
        sim_check_fail(s, "committed never lost", "node %llu commit went from %llu down to %llu", id,
                   (unsigned long long)n->last_commit, (unsigned long long)st->commit);
        return false;
    }
    /* record what this node knows committed */
    uint64_t from = n->last_commit + 1;
    if (from < v->first) from = v->first;
    if (st->commit > st->last_index) {
        sim_check_fail(s, "committed never lost", "node %llu commit %llu beyond its last index %llu", id,
                   (unsigned long long)st->commit, (unsigned long long)st->last_index);
        return false;
    }
    grow_records(s, st->commit);
    for (uint64_t i = from; i <= st->commit; i++) {
        const raft_entry *e = at(v, i);
        uint64_t h = sim_entry_hash(e);
        if (s->committed[i].term == 0) {
            s->committed[i] = (sim_ent){e->term, h};
            s->commit_term[i] = st->term;
        } else if (s->committed[i].term != e->term || s->committed[i].hash != h) {
            sim_check_fail(s, "committed never lost",
                       "index %llu was committed with term %llu, node %llu now commits term %llu there",
                       (unsigned long long)i, (unsigned long long)s->committed[i].term, id,
                       (unsigned long long)e->term);
            return false;
        } else if (st->term < s->commit_term[i]) {
            s->commit_term[i] = st->term;
        }
    }
    if (st->commit > s->max_committed) s->max_committed = st->commit;
    n->last_commit = st->commit;

    if (st->role != RAFT_LEADER) {
        n->shadow_term = 0;
        return true;
    }
    /* election safety */
    raft_id *slot = leader_slot(s, st->term);
    if (*slot == 0) {
        *slot = n->id;
    } else if (*slot != n->id) {
        sim_check_fail(s, "election safety", "nodes %llu and %llu are both leaders of term %llu",
                   (unsigned long long)*slot, id, (unsigned long long)st->term);
        return false;
    }
    /* leader append-only */
    if (n->shadow_term == st->term) {
        uint64_t lo = n->shadow_first > v->first ? n->shadow_first : v->first;
        for (uint64_t i = lo; i < n->shadow_first + n->shadow_n; i++) {
            const raft_entry *e = at(v, i);
            const sim_ent *old = &n->shadow[i - n->shadow_first];
            if (!e || e->term != old->term || sim_entry_hash(e) != old->hash) {
                sim_check_fail(s, "leader append-only",
                           "leader %llu (term %llu) changed or dropped its entry at index %llu", id,
                           (unsigned long long)st->term, (unsigned long long)i);
                return false;
            }
        }
    }
    if (n->shadow_cap < v->cnt) {
        n->shadow_cap = v->cnt * 2 + 16;
        n->shadow = xrealloc(n->shadow, n->shadow_cap * sizeof *n->shadow);
    }
    for (size_t i = 0; i < v->cnt; i++)
        n->shadow[i] = (sim_ent){v->log[i].term, sim_entry_hash(&v->log[i])};
    n->shadow_n = v->cnt;
    n->shadow_first = v->first;
    n->shadow_term = st->term;

    /* leader completeness */
    for (uint64_t i = v->first; i <= s->max_committed; i++) {
        if (s->committed[i].term == 0 || s->commit_term[i] >= st->term) continue;
        const raft_entry *e = at(v, i);
        if (!e || e->term != s->committed[i].term || sim_entry_hash(e) != s->committed[i].hash) {
            sim_check_fail(s, "leader completeness",
                       "leader %llu of term %llu lacks index %llu (term %llu), committed in term %llu",
                       id, (unsigned long long)st->term, (unsigned long long)i,
                       (unsigned long long)s->committed[i].term,
                       (unsigned long long)s->commit_term[i]);
            return false;
        }
    }
    return true;
}

static bool check_pair(sim *s, const view *a, const view *b)
{
    uint64_t lo = a->first > b->first ? a->first : b->first;
    uint64_t la = a->first + a->cnt, lb = b->first + b->cnt; /* one past the end */
    uint64_t hi = la < lb ? la : lb;
    if (hi <= lo) return true;
    uint64_t j = hi;
    while (j > lo && at(a, j - 1)->term != at(b, j - 1)->term)
        j--;
    for (uint64_t i = lo; i < j; i++) {
        const raft_entry *x = at(a, i), *y = at(b, i);
        if (x->term != y->term || x->type != y->type || x->len != y->len ||
            (x->len && memcmp(x->data, y->data, x->len) != 0)) {
            sim_check_fail(s, "log matching",
                       "nodes %llu and %llu agree at index %llu but differ at %llu (terms %llu/%llu)",
                       (unsigned long long)a->n->id, (unsigned long long)b->n->id,
                       (unsigned long long)(j - 1), (unsigned long long)i,
                       (unsigned long long)x->term, (unsigned long long)y->term);
            return false;
        }
    }
    return true;
}

bool sim_check_step(sim *s)
{
    view v[SIM_MAX_NODES];
    int nv = 0;
    for (int i = 0; i < s->n_nodes; i++) {
        sim_node *n = &s->nodes[i];
        if (!n->up) continue;
        view *w = &v[nv++];
        w->n = n;
        raft_status_get(n->r, &w->st);
        w->log = raft_log_view(n->r, &w->first, &w->cnt);
        if (!check_node(s, w)) return false;
    }
    for (int i = 0; i < nv; i++)
        for (int k = i + 1; k < nv; k++)
            if (!check_pair(s, &v[i], &v[k])) return false;
    return true;
}
