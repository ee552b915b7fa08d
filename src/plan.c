/* plan: the failure-handling planner (interface, rounds and invariants in
 * plan.h; the rules and their reasons in docs/failover.md).
 *
 * Design note
 * -----------
 * A round works on a private copy of the map (cmap_clone) and applies each
 * command to it with cmap_apply as soon as it is chosen; a command the copy
 * refuses is simply not emitted. So the planner never has to predict what
 * REPLICA_FAILED does (which replica is kept, who becomes primary): it asks
 * the state machine, and later steps of the round see the result. Trying a
 * REPLICA_FAILED for every down daemon is therefore also how the planner
 * finds the ones that still have work (a refusal changes nothing).
 *
 * Target choice for new replicas is greedy and deterministic: partitions in
 * map order (spaces by creation, partitions by index); for each missing
 * replica the ONLINE daemon not already holding the partition with the
 * fewest replicas, then the fewest copies in progress, then the lowest id.
 * Counters are updated as commands are chosen, so one round spreads its new
 * replicas over the daemons instead of piling them on the first.
 *
 * Time: a daemon's absence starts at plan_input.down[].since_ms if given,
 * else at the map's since_ms for it; both are on the clock of now_ms. A
 * clock that went backwards counts as no time passed (the replica keeps
 * being waited for), never as the delay having run out.
 */
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

static void *xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (!q) {
        fprintf(stderr, "keel: out of memory (%zu bytes)\n", size);
        abort();
    }
    return q;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "keel: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}

/* One round's working state. */
typedef struct round {
    const plan_input *in;
    plan_out *out;
    cmap *s;          /* the private copy, with this round's commands applied */
    buf cmd;          /* scratch for one encoded command */
    uint32_t max_adds;
    uint32_t adds;    /* ADD_REPLICA commands chosen this round */
    uint32_t max_tgt, max_src;
    uint32_t *load;   /* per daemon index of s: replicas held, any state */
    uint32_t *copies_in;  /* per daemon index: CATCHING_UP replicas it holds */
    uint32_t *copies_out; /* per daemon index: CATCHING_UP replicas of partitions it leads */
} round;

/* Whether this round's ADD_REPLICA budget is spent. */
static bool full(const round *r)
{
    return r->adds >= r->max_adds;
}

/* Applies the command in r->cmd to the copy; if it applies, appends it to
 * the output. Returns whether it applied. */
static bool emit(round *r, uint8_t type, uint64_t daemon, uint32_t space, uint32_t part)
{
    plan_out *out = r->out;
    cmap_result res;
    bool ok = cmap_apply(r->s, r->cmd.data, r->cmd.len, &res) == 0;
    if (ok) {
        if (type == CMAP_CMD_ADD_REPLICA) r->adds++;
        if (out->ncmds == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 16;
            out->cmds = xrealloc(out->cmds, out->cap * sizeof *out->cmds);
        }
        out->cmds[out->ncmds++] = (plan_cmd){.type = type,
                                             .daemon = daemon,
                                             .space = space,
                                             .part = part,
                                             .off = out->bytes.len,
                                             .len = r->cmd.len};
        buf_append(&out->bytes, r->cmd.data, r->cmd.len);
    }
    buf_reset(&r->cmd);
    return ok;
}

static bool is_down(uint8_t state)
{
    return state == CMAP_D_OFFLINE || state == CMAP_D_SHUTDOWN || state == CMAP_D_RETIRED;
}

static bool listed(const cmap_partition *pt, uint64_t daemon)
{
    for (uint32_t i = 0; i < pt->nreplicas; i++)
        if (pt->replicas[i].daemon == daemon) return true;
    return false;
}

static uint64_t down_since(const round *r, const cmap_daemon *d)
{
    for (size_t i = 0; i < r->in->ndown; i++)
        if (r->in->down[i].daemon == d->id) return r->in->down[i].since_ms;
    return d->since_ms;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static size_t didx(const cmap *s, const cmap_daemon *d)
{
    return (size_t)(d - s->daemons);
}

/* ---- steps 1-3: failures and caught-up reports -------------------------- */

static void mark_failed(round *r)
{
    for (size_t i = 0; i < r->in->nfailed; i++) {
        uint64_t id = r->in->failed[i];
        const cmap_daemon *d = cmap_daemon_find(r->s, id);
        if (!d || (d->state != CMAP_D_ONLINE && d->state != CMAP_D_SUSPECT)) continue;
        cmap_cmd_set_daemon_state(&r->cmd, id, CMAP_D_OFFLINE, r->in->now_ms);
        emit(r, CMAP_CMD_SET_DAEMON_STATE, id, 0, 0);
    }
}

static void caught_up(round *r)
{
    for (size_t i = 0; i < r->in->ncaught_up; i++) {
        const plan_caught_up *c = &r->in->caught_up[i];
        const cmap_space *sp = cmap_space_by_id(r->s, c->space);
        bool from_primary = c->from == 0 || (sp && c->part < sp->schema->partitions &&
                                             sp->parts[c->part].nreplicas &&
                                             sp->parts[c->part].replicas[0].daemon == c->from);
        if (from_primary) {
            cmap_cmd_replica_in_sync(&r->cmd, c->space, c->part, c->daemon, c->epoch);
            if (emit(r, CMAP_CMD_REPLICA_IN_SYNC, c->daemon, c->space, c->part)) continue;
        }
        r->out->stale_reports++;
    }
}

static void wake_at(plan_out *out, uint64_t t)
{
    if (!out->next_wake_ms || t < out->next_wake_ms) out->next_wake_ms = t;
}

/* Whether the daemon is the primary of a partition that REPLICA_FAILED
 * would give to another daemon (it has an IN_SYNC replica elsewhere on an
 * ONLINE daemon). */
static bool would_replace_primary(const cmap *s, uint64_t id)
{
    for (uint32_t i = 0; i < s->nspaces; i++) {
        const cmap_space *sp = &s->spaces[i];
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            if (!pt->nreplicas || pt->replicas[0].daemon != id) continue;
            for (uint32_t j = 1; j < pt->nreplicas; j++) {
                const cmap_daemon *d = cmap_daemon_find(s, pt->replicas[j].daemon);
                if (pt->replicas[j].state == CMAP_R_IN_SYNC && d->state == CMAP_D_ONLINE)
                    return true;
            }
        }
    }
    return false;
}

static void fail_down(round *r)
{
    uint64_t pt = r->s->settings.ping_timeout_ms;
    for (uint32_t i = 0; i < r->s->ndaemons; i++) {
        const cmap_daemon *d = &r->s->daemons[i];
        if (!is_down(d->state)) continue;
        uint64_t id = d->id;
        /* OFFLINE is declared only once the lease ran out. A SHUTDOWN (or
         * RETIRED) daemon said it left; if it still leads a partition that
         * would get a new primary (it did not hand it off), wait until its
         * lease must have run out anyway, so that I1 does not rest on its
         * word (the failure detector's ping_timeout + 10%). */
        if (d->state != CMAP_D_OFFLINE) {
            uint64_t safe = sat_add(down_since(r, d), pt + pt / 10);
            if (r->in->now_ms < safe && would_replace_primary(r->s, id)) {
                wake_at(r->out, safe);
                continue;
            }
        }
        cmap_cmd_replica_failed(&r->cmd, id);
        emit(r, CMAP_CMD_REPLICA_FAILED, id, 0, 0);
    }
}

/* ---- step 4: re-protection ---------------------------------------------- */

static void count_load(round *r)
{
    const cmap *s = r->s;
    r->load = xcalloc(s->ndaemons, sizeof *r->load);
    r->copies_in = xcalloc(s->ndaemons, sizeof *r->copies_in);
    r->copies_out = xcalloc(s->ndaemons, sizeof *r->copies_out);
    for (uint32_t i = 0; i < s->nspaces; i++) {
        const cmap_space *sp = &s->spaces[i];
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            const cmap_daemon *primary =
                pt->nreplicas ? cmap_daemon_find(s, pt->replicas[0].daemon) : NULL;
            for (uint32_t j = 0; j < pt->nreplicas; j++) {
                const cmap_daemon *d = cmap_daemon_find(s, pt->replicas[j].daemon);
                r->load[didx(s, d)]++;
                if (pt->replicas[j].state != CMAP_R_CATCHING_UP) continue;
                r->copies_in[didx(s, d)]++;
                if (primary) r->copies_out[didx(s, primary)]++;
            }
        }
    }
}

/* Chosen: one more replica on d, copied from the partition's primary. */
static void count_copy(round *r, uint64_t target, uint64_t source)
{
    const cmap_daemon *t = cmap_daemon_find(r->s, target);
    const cmap_daemon *src = cmap_daemon_find(r->s, source);
    r->load[didx(r->s, t)]++;
    r->copies_in[didx(r->s, t)]++;
    r->copies_out[didx(r->s, src)]++;
}

/* The best new target for pt: ONLINE, not a replica, under the copy limit;
 * fewest replicas, then fewest copies in progress, then lowest id. NULL if
 * none; *limited tells whether some daemon was passed over only for the
 * limit. */
static const cmap_daemon *best_target(const round *r, const cmap_partition *pt, bool *limited)
{
    const cmap *s = r->s;
    const cmap_daemon *best = NULL;
    *limited = false;
    for (uint32_t i = 0; i < s->ndaemons; i++) {
        const cmap_daemon *d = &s->daemons[i];
        if (d->state != CMAP_D_ONLINE || listed(pt, d->id)) continue;
        if (r->copies_in[i] >= r->max_tgt) {
            *limited = true;
            continue;
        }
        if (!best || r->load[i] < r->load[didx(s, best)] ||
            (r->load[i] == r->load[didx(s, best)] &&
             r->copies_in[i] < r->copies_in[didx(s, best)]))
            best = d;
    }
    return best;
}

static void reprotect_partition(round *r, uint32_t sid, uint32_t p)
{
    plan_out *out = r->out;
    const cmap_space *sp = cmap_space_by_id(r->s, sid);
    const cmap_partition *pt = &sp->parts[p];
    if (pt->health != CMAP_H_DEGRADED) return;
    uint32_t want = sp->schema->tolerate + 1, have = 0;
    for (uint32_t j = 0; j < pt->nreplicas; j++) {
        const cmap_daemon *d = cmap_daemon_find(r->s, pt->replicas[j].daemon);
        if (d->state == CMAP_D_ONLINE) have++;
    }
    if (have >= want) return; /* enough copies, in sync or on their way */
    uint32_t slots = want - have;
    uint64_t source = pt->replicas[0].daemon;

    /* (a) departed daemons that are back: a tail replay, not a full copy */
    uint64_t dep[CMAP_MAX_REPLICAS];
    uint32_t ndep = pt->ndeparted;
    memcpy(dep, pt->departed, sizeof dep);
    for (uint32_t j = 0; j < ndep && slots && !full(r); j++) {
        const cmap_daemon *d = cmap_daemon_find(r->s, dep[j]);
        if (!d || d->state != CMAP_D_ONLINE) continue;
        cmap_cmd_add_replica(&r->cmd, sid, p, dep[j]);
        if (emit(r, CMAP_CMD_ADD_REPLICA, dep[j], sid, p)) {
            count_copy(r, dep[j], source);
            slots--;
        }
    }
    sp = cmap_space_by_id(r->s, sid); /* the copy changed */
    pt = &sp->parts[p];

    /* (b) missing replicas still waited for: their daemon has been down for
     * less than the delay (RETIRED ones never come back) */
    uint64_t delay_ms = (uint64_t)r->in->reprotect_delay_s * 1000;
    uint32_t waiting = 0;
    for (uint32_t j = 0; slots && j < pt->ndeparted + pt->nreplicas; j++) {
        uint64_t id = j < pt->ndeparted ? pt->departed[j] : pt->replicas[j - pt->ndeparted].daemon;
        const cmap_daemon *d = cmap_daemon_find(r->s, id);
        if (!d || d->state == CMAP_D_ONLINE || d->state == CMAP_D_RETIRED) continue;
        uint64_t until = sat_add(down_since(r, d), delay_ms);
        if (r->in->now_ms >= until) continue;
        waiting++;
        wake_at(out, until);
    }
    uint32_t due = slots > waiting ? slots - waiting : 0;

    /* (c) new replicas elsewhere, within the copy limits; a SUSPECT primary
     * cannot be copied from until it is settled either way */
    const cmap_daemon *src = cmap_daemon_find(r->s, source);
    if (waiting || (due && src->state != CMAP_D_ONLINE)) out->progress.waiting++;
    if (src->state != CMAP_D_ONLINE) return;
    while (due && !full(r)) {
        if (r->copies_out[didx(r->s, src)] >= r->max_src) {
            out->progress.throttled += due;
            return;
        }
        bool limited;
        const cmap_daemon *t = best_target(r, pt, &limited);
        if (!t) {
            if (limited)
                out->progress.throttled += due;
            else
                out->progress.unplaceable += due;
            return;
        }
        uint64_t tid = t->id;
        cmap_cmd_add_replica(&r->cmd, sid, p, tid);
        if (!emit(r, CMAP_CMD_ADD_REPLICA, tid, sid, p)) return;
        count_copy(r, tid, source);
        sp = cmap_space_by_id(r->s, sid);
        pt = &sp->parts[p];
        due--;
    }
}

static void reprotect(round *r)
{
    count_load(r);
    /* ADD_REPLICA moves no array of the copy, but partitions are named by
     * space id and index anyway and looked up again after every command */
    for (uint32_t i = 0; i < r->s->nspaces && !full(r); i++) {
        uint32_t sid = r->s->spaces[i].id;
        uint32_t nparts = r->s->spaces[i].schema->partitions;
        for (uint32_t p = 0; p < nparts && !full(r); p++)
            reprotect_partition(r, sid, p);
    }
}

/* ---- progress ----------------------------------------------------------- */

static void summarize(const cmap *m, plan_out *out)
{
    plan_progress *g = &out->progress;
    for (uint32_t i = 0; i < m->nspaces; i++) {
        const cmap_space *sp = &m->spaces[i];
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            g->partitions++;
            if (pt->health == CMAP_H_PROTECTED)
                g->protected_parts++;
            else if (pt->health == CMAP_H_DEGRADED)
                g->degraded++;
            else
                g->unavailable++;
            for (uint32_t j = 0; j < pt->nreplicas; j++) {
                const cmap_daemon *d = cmap_daemon_find(m, pt->replicas[j].daemon);
                if (pt->replicas[j].state == CMAP_R_CATCHING_UP && d &&
                    d->state == CMAP_D_ONLINE) {
                    g->copying++;
                    break;
                }
            }
        }
    }
    out->fully_protected = g->protected_parts == g->partitions;
}

/* ---- public API --------------------------------------------------------- */

void plan_out_init(plan_out *out)
{
    memset(out, 0, sizeof *out);
    buf_init(&out->bytes);
}

void plan_out_free(plan_out *out)
{
    buf_free(&out->bytes);
    free(out->cmds);
    memset(out, 0, sizeof *out);
}

size_t plan_decide(const cmap *m, const plan_input *in, plan_out *out)
{
    buf bytes = out->bytes;
    plan_cmd *cmds = out->cmds;
    size_t cap = out->cap;
    memset(out, 0, sizeof *out);
    out->bytes = bytes;
    buf_reset(&out->bytes);
    out->cmds = cmds;
    out->cap = cap;

    summarize(m, out);
    out->restored = out->fully_protected && !in->was_fully_protected;
    if (!m->cluster_id) return 0;

    round r = {.in = in, .out = out, .s = cmap_clone(m)};
    buf_init(&r.cmd);
    r.max_adds = in->max_new_replicas ? in->max_new_replicas : PLAN_DEFAULT_MAX_NEW_REPLICAS;
    r.max_tgt = in->max_copies_per_target ? in->max_copies_per_target : PLAN_DEFAULT_MAX_COPIES;
    r.max_src = in->max_copies_per_source ? in->max_copies_per_source : PLAN_DEFAULT_MAX_COPIES;

    mark_failed(&r);
    caught_up(&r);
    fail_down(&r);
    reprotect(&r);
    out->truncated = full(&r);

    free(r.load);
    free(r.copies_in);
    free(r.copies_out);
    buf_free(&r.cmd);
    cmap_free(r.s);
    return out->ncmds;
}
