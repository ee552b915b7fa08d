/* coord: `keel coordinator` — the libuv and LMDB glue around raft.c and cmap.c.
 *
 * Design note
 * -----------
 * Everything runs on one loop thread. Raft (raft.c) is a pure state machine;
 * this file feeds it ticks (a uv_timer every --tick-ms), peer messages (RAFT
 * requests on the peer port) and proposals (client writes), and carries out
 * each Ready exactly in the order raft.h prescribes: persist (rstore, synced),
 * send, apply committed entries to the cluster map (cmap_apply), answer reads.
 *
 * Clients talk to any coordinator. Writes are proposed by the leader and
 * answered when their entry is applied; a follower forwards them (and
 * linearizable reads) to the leader over its client port, prefixed with FWD
 * so that a forwarded request is never forwarded again. Reads on the leader
 * wait for a read-index confirmation and for the map to be applied that far.
 *
 * Invariants:
 *   1. Nothing of a Ready is sent before rstore_save returned (synced); a
 *      storage failure stops the coordinator (it cannot keep its promises).
 *   2. A write is acknowledged only after its entry was applied, and only if
 *      the entry applied at its index is the one this leader proposed (same
 *      term); otherwise the client gets -TRYAGAIN (outcome unknown).
 *   3. DAEMON.HEARTBEAT is answered only by a leader that heard from a
 *      majority within an election timeout (raft_leader_has_quorum): a deposed
 *      leader cannot extend a daemon's lease (DESIGN I1).
 *   4. A new leader declares no daemon failed during its first ping_timeout,
 *      and declares one failed only after ping_timeout + 10% without a
 *      heartbeat, by which time the daemon's own lease has expired.
 *   5. Every decision is a cmap command in the Raft log (DESIGN I4).
 */
#include "coord.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <uv.h>

#include "buf.h"
#include "cmap.h"
#include "log.h"
#include "net.h"
#include "plan.h"
#include "proc.h"
#include "raft.h"
#include "rclient.h"
#include "resp.h"
#include "route.h"
#include "rstore.h"
#include "version.h"

#define COMPACT_EVERY 10000 /* default: entries past the snapshot before compacting */
#define FORWARD_TIMEOUT_MS 5000

typedef struct coord_opts {
    const char *host;
    int port;
    const char *peer_host;
    int peer_port;
    const char *dir;
    const char *join_host;
    int join_port;
    unsigned tick_ms;
    unsigned snapshot_every;
    bool foreground;
    bool test_faults;
} coord_opts;

typedef struct peer {
    uint64_t id;
    char host[CMAP_MAX_HOST + 1];
    int port;
    char peer_host[CMAP_MAX_HOST + 1];
    int peer_port;
    rclient *raft; /* one-way RAFT messages to its peer port */
} peer;

enum prop_kind { P_REPLY = 1, P_JOIN, P_REGISTER, P_REMOVE, P_INTERNAL };

/* A proposed cmap command waiting for its entry to be applied. */
typedef struct proposal {
    struct proposal *next;
    uint64_t index, term;
    int kind;
    net_reply *reply; /* NULL for internal proposals */
    uint64_t arg;     /* P_REMOVE: coordinator id */
} proposal;

/* A linearizable read waiting for leadership confirmation and the apply. */
typedef struct rread {
    struct rread *next;
    uint64_t ctx;
    uint64_t index; /* 0 until confirmed */
    net_reply *reply;
    int argc;
    char **argv;
    size_t *argvlen;
} rread;

/* A join whose ADD_COORDINATOR applied: the Raft learner is added after the
 * Ready is done (raft forbids proposals between ready_get and advance). */
typedef struct join_done {
    struct join_done *next;
    uint64_t id;
    net_reply *reply;
} join_done;

typedef struct hb_entry {
    uint64_t daemon;
    uint64_t last_ms; /* monotonic, this leader's clock */
    /* re-protection progress from its last heartbeat (leader-local, soft):
     * full copies it sends, their bytes left and rate, log entries its
     * catching-up replicas still replay */
    uint64_t pg_copies, pg_bytes_left, pg_bytes_per_s, pg_entries_left;
} hb_entry;

typedef struct coord {
    coord_opts o;
    uv_loop_t loop;
    net_server *clients;
    net_server *peers_net;
    uv_timer_t tick;
    uv_signal_t sigs[3];
    rstore *rs;
    raft *r;
    cmap *map;
    uint64_t cluster_id, id;
    uint64_t applied;
    uint64_t snap_index;
    int role;
    uint64_t leader;
    uint64_t leader_since_ms;
    uint64_t quorum_since_ms; /* leader: start of the current stretch with a quorum, 0: none */
    uint64_t last_tick_ms;
    uv_prepare_t prepare;
    bool ready_due; /* inputs arrived this loop turn: run process_ready in on_prepare */
    peer peers[CMAP_MAX_COORDINATORS];
    size_t npeers;
    proposal *props, *props_tail;
    rread *reads;
    join_done *joins, *joins_tail;
    uint64_t next_ctx;
    rclient *fwd;
    uint64_t fwd_to;
    hb_entry hb[CMAP_MAX_DAEMONS];
    size_t nhb;
    plan_caught_up reports[64]; /* DAEMON.CAUGHT_UP since the last planning round */
    size_t nreports;
    plan_out plan;
    plan_progress progress; /* of the last round, for CLUSTER.STATUS */
    bool fully_protected;
    uint64_t blocked[RAFT_MAX_NODES];
    size_t nblocked;
    bool internal_pending; /* bootstrap proposals in flight */
    bool stopping;
    int lock_fd;
    uint64_t start_ms;
} coord;

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool is(const char *w, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(w, name, len) == 0;
}

static void process_ready(coord *co);

/* ---- peers -------------------------------------------------------------------- */

static peer *peer_find(coord *co, uint64_t id)
{
    for (size_t i = 0; i < co->npeers; i++)
        if (co->peers[i].id == id) return &co->peers[i];
    return NULL;
}

static void peer_set(coord *co, uint64_t id, const char *host, int port, const char *phost,
                     int pport)
{
    if (id == co->id) return;
    peer *p = peer_find(co, id);
    if (p && !strcmp(p->peer_host, phost) && p->peer_port == pport) {
        snprintf(p->host, sizeof p->host, "%s", host);
        p->port = port;
        return;
    }
    if (!p) {
        if (co->npeers == CMAP_MAX_COORDINATORS) return;
        p = &co->peers[co->npeers++];
        memset(p, 0, sizeof *p);
    } else if (p->raft) {
        rclient_close(p->raft);
    }
    p->id = id;
    snprintf(p->host, sizeof p->host, "%s", host);
    p->port = port;
    snprintf(p->peer_host, sizeof p->peer_host, "%s", phost);
    p->peer_port = pport;
    p->raft = rclient_new(&co->loop, phost, pport, co->o.peer_host, 2000);
}

/* Makes the peer table follow the map's coordinator list. */
static void peers_sync(coord *co)
{
    for (uint32_t i = 0; i < co->map->ncoords; i++) {
        const cmap_coordinator *c = &co->map->coords[i];
        peer_set(co, c->id, c->host, c->port, c->peer_host, c->peer_port);
    }
    if (!co->map->ncoords) return;
    for (size_t i = 0; i < co->npeers;) {
        if (!cmap_coordinator_find(co->map, co->peers[i].id)) {
            rclient_close(co->peers[i].raft);
            co->peers[i] = co->peers[--co->npeers];
        } else {
            i++;
        }
    }
}

static bool blocked(coord *co, uint64_t id)
{
    for (size_t i = 0; i < co->nblocked; i++)
        if (co->blocked[i] == id) return true;
    return false;
}

static void send_msg(coord *co, const raft_msg *m)
{
    if (blocked(co, m->to)) return;
    peer *p = peer_find(co, m->to);
    if (!p) return;
    buf b;
    buf_init(&b);
    raft_msg_encode(m, &b);
    const char *argv[2] = {"RAFT", b.data};
    size_t argvlen[2] = {4, b.len};
    rclient_send(p->raft, 2, argv, argvlen, NULL, NULL);
    buf_free(&b);
}

/* "host:port" of the leader's client address, or NULL. */
static const char *leader_addr(coord *co, char *tmp, size_t n)
{
    if (!co->leader) return NULL;
    if (co->leader == co->id) {
        snprintf(tmp, n, "%s:%d", co->o.host, co->o.port);
        return tmp;
    }
    const cmap_coordinator *c = cmap_coordinator_find(co->map, co->leader);
    if (c) {
        snprintf(tmp, n, "%s:%u", c->host, c->port);
        return tmp;
    }
    peer *p = peer_find(co, co->leader);
    if (p) {
        snprintf(tmp, n, "%s:%d", p->host, p->port);
        return tmp;
    }
    return NULL;
}

static void reply_tryagain(coord *co, buf *out)
{
    char tmp[96];
    const char *a = leader_addr(co, tmp, sizeof tmp);
    if (a && co->leader != co->id)
        resp_add_errorf(out, "TRYAGAIN leader is %s", a);
    else
        resp_add_error(out, "TRYAGAIN no leader yet (election in progress)");
}

/* ---- proposals -------------------------------------------------------------------- */

static proposal *propose(coord *co, const buf *cmd, int kind, net_reply *reply, buf *err)
{
    uint64_t index;
    int rc = raft_propose(co->r, cmd->data, cmd->len, &index);
    if (rc) {
        if (err) {
            if (rc == RAFT_ENOTLEADER || rc == RAFT_EBUSY)
                reply_tryagain(co, err);
            else
                resp_add_errorf(err, "ERR cannot propose: %s", raft_strerror(rc));
        }
        return NULL;
    }
    proposal *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->index = index;
    raft_status st;
    raft_status_get(co->r, &st);
    p->term = st.term;
    p->kind = kind;
    p->reply = reply;
    if (co->props_tail)
        co->props_tail->next = p;
    else
        co->props = p;
    co->props_tail = p;
    return p;
}

/* Proposes cmd for a client; the reply comes when it is applied. */
static void propose_for(coord *co, net_conn *c, const buf *cmd, int kind, uint64_t arg)
{
    buf err;
    buf_init(&err);
    net_reply *r = net_reply_defer(c);
    proposal *p = propose(co, cmd, kind, r, &err);
    if (!p) {
        buf_append(net_reply_buf(r), err.data, err.len);
        net_reply_done(r);
    } else {
        p->arg = arg;
    }
    buf_free(&err);
}

static void fail_proposals(coord *co)
{
    while (co->props) {
        proposal *p = co->props;
        co->props = p->next;
        if (p->reply) {
            resp_add_error(
                net_reply_buf(p->reply),
                "TRYAGAIN leadership changed; the change may or may not have been applied");
            net_reply_done(p->reply);
        }
        free(p);
    }
    co->props_tail = NULL;
    co->internal_pending = false;
}

static void add_coord_array(coord *co, buf *out)
{
    resp_add_array(out, co->map->ncoords);
    for (uint32_t i = 0; i < co->map->ncoords; i++) {
        const cmap_coordinator *c = &co->map->coords[i];
        resp_add_array(out, 5);
        resp_add_int(out, (long long)c->id);
        resp_add_bulk_str(out, c->host);
        resp_add_int(out, c->port);
        resp_add_bulk_str(out, c->peer_host);
        resp_add_int(out, c->peer_port);
    }
}

static void reply_join(coord *co, buf *out, uint64_t id)
{
    resp_add_array(out, 4);
    resp_add_int(out, (long long)id);
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, co->map->cluster_id);
    resp_add_bulk_str(out, hex);
    resp_add_int(out, (long long)co->leader);
    add_coord_array(co, out);
}

static void reply_register(coord *co, buf *out, uint64_t id)
{
    resp_add_array(out, 5);
    resp_add_int(out, (long long)id);
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, co->map->cluster_id);
    resp_add_bulk_str(out, hex);
    resp_add_int(out, co->map->settings.heartbeat_ms);
    resp_add_int(out, co->map->settings.ping_timeout_ms);
    resp_add_array(out, co->map->ncoords);
    for (uint32_t i = 0; i < co->map->ncoords; i++) {
        char a[96];
        snprintf(a, sizeof a, "%s:%u", co->map->coords[i].host, co->map->coords[i].port);
        resp_add_bulk_str(out, a);
    }
}

/* Adds coordinator id to the Raft configuration as a learner if it is not
 * there yet. 0, or a raft error. */
static int ensure_learner(coord *co, uint64_t id)
{
    raft_status st;
    raft_status_get(co->r, &st);
    if (raft_config_find(&st.config, id) >= 0) return 0;
    int rc = raft_propose_conf(co->r, RAFT_CONF_ADD_LEARNER, id, NULL);
    if (rc == 0) log_notice("event=coordinator_added coordinator=%" PRIu64 " as learner", id);
    return rc;
}

static void complete_proposal(coord *co, proposal *p, const cmap_result *res)
{
    buf *out = p->reply ? net_reply_buf(p->reply) : NULL;
    if (res->status) {
        if (out)
            resp_add_error(out, res->msg);
        else
            log_warn("internal proposal refused: %s", res->msg);
    } else if (out) {
        switch (p->kind) {
        case P_JOIN: {
            join_done *j = calloc(1, sizeof *j);
            if (!j) abort();
            j->id = res->id;
            j->reply = p->reply;
            if (co->joins_tail)
                co->joins_tail->next = j;
            else
                co->joins = j;
            co->joins_tail = j;
            return; /* answered by finish_joins */
        }
        case P_REGISTER: /* a new daemon's id comes from the command; a rejoin's is p->arg */
            reply_register(co, out, p->arg ? p->arg : res->id);
            break;
        default:
            resp_add_simple(out, "OK");
        }
    }
    if (p->reply) net_reply_done(p->reply);
}

/* ---- applying ----------------------------------------------------------------------- */

static void log_applied(coord *co, const uint8_t *cmd, size_t len, const cmap_result *res)
{
    if (res->status || len < 2) return;
    if (cmd[1] == CMAP_CMD_SET_DAEMON_STATE && len >= 2 + 8 + 4) {
        uint64_t id = get_u64be(cmd + 2);
        const cmap_daemon *d = cmap_daemon_find(co->map, id);
        if (d && d->state == CMAP_D_OFFLINE)
            log_error("event=daemon_failed daemon=%" PRIu64 " address=%s:%u", id, d->host, d->port);
        else if (d && d->state == CMAP_D_SHUTDOWN)
            log_notice("event=daemon_shutdown daemon=%" PRIu64, id);
        else if (d && d->state == CMAP_D_ONLINE)
            log_notice("event=daemon_rejoined daemon=%" PRIu64, id);
    } else if (cmd[1] == CMAP_CMD_ADD_DAEMON) {
        log_notice("event=daemon_added daemon=%" PRIu64, res->id);
    }
}

/* Every partition's health, in map order (the caller frees); *count is how
 * many. */
static uint8_t *health_snapshot(const cmap *m, size_t *count)
{
    size_t n = 0;
    for (uint32_t i = 0; i < m->nspaces; i++)
        n += m->spaces[i].schema->partitions;
    uint8_t *h = malloc(n ? n : 1);
    if (!h) abort();
    size_t k = 0;
    for (uint32_t i = 0; i < m->nspaces; i++)
        for (uint32_t p = 0; p < m->spaces[i].schema->partitions; p++)
            h[k++] = m->spaces[i].parts[p].health;
    *count = n;
    return h;
}

/* Logs partition_degraded / partition_unavailable (ERROR) and
 * partition_protected (NOTICE) for every partition whose health changed. Only
 * the leader logs, so each transition is logged once. */
static void log_health_changes(coord *co, const uint8_t *before, size_t nbefore)
{
    if (co->role != RAFT_LEADER) return;
    size_t k = 0, nnow = 0;
    const cmap *m = co->map;
    for (uint32_t i = 0; i < m->nspaces; i++)
        nnow += m->spaces[i].schema->partitions;
    if (nnow != nbefore) return; /* a space was added or dropped: no transitions */
    for (uint32_t i = 0; i < m->nspaces; i++) {
        const cmap_space *sp = &m->spaces[i];
        for (uint32_t p = 0; p < sp->schema->partitions; p++, k++) {
            uint8_t now = sp->parts[p].health;
            if (before[k] == now) continue;
            if (now == CMAP_H_PROTECTED)
                log_notice("event=partition_protected space=%s partition=%u epoch=%" PRIu64,
                           sp->schema->name, p, sp->parts[p].epoch);
            else
                log_error("event=partition_%s space=%s partition=%u epoch=%" PRIu64,
                          now == CMAP_H_DEGRADED ? "degraded" : "unavailable", sp->schema->name, p,
                          sp->parts[p].epoch);
        }
    }
}

static void apply_entry(coord *co, const raft_entry *e)
{
    cmap_result res;
    memset(&res, 0, sizeof res);
    if (e->type == RAFT_ENTRY_NORMAL) {
        size_t nbefore;
        uint8_t *before = health_snapshot(co->map, &nbefore);
        cmap_apply(co->map, e->data, e->len, &res);
        log_applied(co, e->data, e->len, &res);
        log_health_changes(co, before, nbefore);
        free(before);
        if (e->len >= 2 && (e->data[1] == CMAP_CMD_ADD_COORDINATOR ||
                            e->data[1] == CMAP_CMD_REMOVE_COORDINATOR || e->data[1] == 1))
            peers_sync(co);
    }
    co->applied = e->index;
    while (co->props && co->props->index <= e->index) {
        proposal *p = co->props;
        co->props = p->next;
        if (!co->props) co->props_tail = NULL;
        if (p->index == e->index && p->term == e->term && e->type == RAFT_ENTRY_NORMAL) {
            complete_proposal(co, p, &res);
        } else if (p->reply) {
            resp_add_error(net_reply_buf(p->reply),
                           "TRYAGAIN leadership changed; the change was not applied");
            net_reply_done(p->reply);
        }
        if (p->kind == P_INTERNAL) co->internal_pending = co->props != NULL;
        free(p);
    }
}

static void answer_read(coord *co, buf *out, int argc, char **argv, size_t *argvlen);

static void serve_reads(coord *co)
{
    rread **pp = &co->reads;
    while (*pp) {
        rread *q = *pp;
        if (q->index && q->index <= co->applied) {
            answer_read(co, net_reply_buf(q->reply), q->argc, q->argv, q->argvlen);
            net_reply_done(q->reply);
            *pp = q->next;
            free(q->argv);
            free(q);
        } else {
            pp = &q->next;
        }
    }
}

static void read_state(coord *co, const raft_read_state *rs)
{
    for (rread **pp = &co->reads; *pp; pp = &(*pp)->next) {
        rread *q = *pp;
        if (q->ctx != rs->ctx) continue;
        if (rs->status == RAFT_OK) {
            q->index = rs->index ? rs->index : 1;
        } else {
            reply_tryagain(co, net_reply_buf(q->reply));
            net_reply_done(q->reply);
            *pp = q->next;
            free(q->argv);
            free(q);
        }
        return;
    }
}

static void role_changed(coord *co, int role, uint64_t leader)
{
    if (role == RAFT_LEADER && co->role != RAFT_LEADER) {
        co->leader_since_ms = mono_ms();
        co->quorum_since_ms = 0;
        co->nhb = 0;
        log_notice("event=coordinator_leader coordinator=%" PRIu64 " became leader", co->id);
    }
    if (role != RAFT_LEADER && co->role == RAFT_LEADER) fail_proposals(co);
    if (leader != co->leader && leader) log_info("coordinator %" PRIu64 " is leader", leader);
    co->role = role;
    co->leader = leader;
}

static void finish_joins(coord *co)
{
    while (co->joins) {
        join_done *j = co->joins;
        co->joins = j->next;
        buf *out = net_reply_buf(j->reply);
        if (ensure_learner(co, j->id))
            resp_add_error(out, "TRYAGAIN another membership change is in progress");
        else
            reply_join(co, out, j->id);
        net_reply_done(j->reply);
        free(j);
    }
    co->joins_tail = NULL;
}

static void process_ready(coord *co)
{
    while (co->r && raft_has_ready(co->r)) {
        raft_ready rd;
        raft_ready_get(co->r, &rd);
        int rc = rstore_save(co->rs, &rd);
        if (rc) {
            log_error("event=storage_error cannot persist Raft state: %s; stopping",
                      mdb_strerror(rc));
            exit(1);
        }
        for (size_t i = 0; i < rd.n_msgs; i++)
            send_msg(co, &rd.msgs[i]);
        if (rd.snapshot && rd.snapshot_install) {
            cmap *m;
            if (cmap_decode(rd.snapshot->data, rd.snapshot->len, &m)) {
                log_error("event=storage_error received an unreadable snapshot; stopping");
                exit(1);
            }
            cmap_free(co->map);
            co->map = m;
            co->applied = rd.snapshot->index;
            co->snap_index = rd.snapshot->index;
            peers_sync(co);
        } else if (rd.snapshot) {
            co->snap_index = rd.snapshot->index;
        }
        role_changed(co, rd.role, rd.leader);
        for (size_t i = 0; i < rd.n_committed; i++)
            apply_entry(co, &rd.committed[i]);
        for (size_t i = 0; i < rd.n_reads; i++)
            read_state(co, &rd.reads[i]);
        raft_advance(co->r, &rd);
        finish_joins(co);
    }
    serve_reads(co);
}

/* ---- the leader's duties (each tick) ------------------------------------------------ */

static hb_entry *hb_find(coord *co, uint64_t daemon, bool create)
{
    for (size_t i = 0; i < co->nhb; i++)
        if (co->hb[i].daemon == daemon) return &co->hb[i];
    if (!create || co->nhb == CMAP_MAX_DAEMONS) return NULL;
    hb_entry *h = &co->hb[co->nhb++];
    h->daemon = daemon;
    h->last_ms = mono_ms();
    return h;
}

static void leader_duties(coord *co)
{
    if (co->role != RAFT_LEADER) return;
    buf cmd;
    buf_init(&cmd);
    if (co->map->cluster_id == 0 && !co->internal_pending) {
        /* a new cluster: record it and this coordinator in the map */
        cmap_cmd_bootstrap(&cmd, co->cluster_id, false);
        if (propose(co, &cmd, P_INTERNAL, NULL, NULL)) {
            buf_reset(&cmd);
            cmap_cmd_add_coordinator(&cmd, co->o.host, (uint16_t)co->o.port, co->o.peer_host,
                                     (uint16_t)co->o.peer_port);
            propose(co, &cmd, P_INTERNAL, NULL, NULL);
            co->internal_pending = true;
        }
    }
    if (co->map->cluster_id == 0 || co->props) {
        /* plan only on a settled map: the planner's commands are valid in
         * order against the map as it is, not against proposals in flight */
        buf_free(&cmd);
        return;
    }
    /* failure detection (invariant 4). Heartbeats could reach this leader
     * only while it had a quorum (it answers NOQUORUM otherwise) and while
     * its loop ran, so silence is counted from the start of the current
     * stretch of leadership with a quorum and without a stall. */
    uint64_t now = mono_ms();
    uint64_t pt = co->map->settings.ping_timeout_ms;
    if (!raft_leader_has_quorum(co->r))
        co->quorum_since_ms = 0;
    else if (!co->quorum_since_ms)
        co->quorum_since_ms = now;
    uint64_t base =
        co->leader_since_ms > co->quorum_since_ms ? co->leader_since_ms : co->quorum_since_ms;
    uint64_t failed[CMAP_MAX_DAEMONS];
    size_t nfailed = 0;
    if (co->quorum_since_ms && now - base >= pt) {
        for (uint32_t i = 0; i < co->map->ndaemons; i++) {
            const cmap_daemon *d = &co->map->daemons[i];
            if (d->state != CMAP_D_ONLINE && d->state != CMAP_D_SUSPECT) continue;
            hb_entry *h = hb_find(co, d->id, true);
            if (!h) continue;
            uint64_t since = h->last_ms > base ? h->last_ms : base;
            if (now - since >= pt + pt / 10) failed[nfailed++] = d->id;
        }
    }
    if (!co->quorum_since_ms) {
        buf_free(&cmd);
        return; /* a leader without a quorum decides nothing */
    }
    /* the planner turns failures, caught-up reports and the map into the
     * next commands (plan.h); they are proposed in order */
    plan_input in = {.now_ms = wall_ms(),
                     .reprotect_delay_s = co->map->settings.reprotect_delay_s,
                     .failed = failed,
                     .nfailed = nfailed,
                     .caught_up = co->reports,
                     .ncaught_up = co->nreports,
                     .was_fully_protected = co->fully_protected};
    plan_decide(co->map, &in, &co->plan);
    co->nreports = 0;
    for (size_t i = 0; i < co->plan.ncmds; i++) {
        const plan_cmd *pc = &co->plan.cmds[i];
        buf_reset(&cmd);
        buf_append(&cmd, co->plan.bytes.data + pc->off, pc->len);
        if (!propose(co, &cmd, P_INTERNAL, NULL, NULL)) break;
    }
    if (co->plan.restored)
        log_notice("event=full_protection_restored every partition has tolerate+1 in-sync "
                   "replicas again");
    co->fully_protected = co->plan.fully_protected;
    co->progress = co->plan.progress;
    buf_free(&cmd);
}

static void maybe_compact(coord *co)
{
    if (co->applied < co->snap_index + co->o.snapshot_every) return;
    buf b;
    buf_init(&b);
    cmap_encode(co->map, &b);
    int rc = raft_compact(co->r, co->applied, b.data, b.len);
    if (rc) log_warn("log compaction at %" PRIu64 " failed: %s", co->applied, raft_strerror(rc));
    buf_free(&b);
}

/* Raft's Ready (and its synced LMDB commit) runs once per loop turn for
 * everything that arrived in it, so a burst of requests or messages costs one
 * fsync, and the loop keeps up with heartbeats under load. */
static void on_prepare(uv_prepare_t *h)
{
    coord *co = h->data;
    if (!co->ready_due) return;
    co->ready_due = false;
    process_ready(co);
}

static void on_tick(uv_timer_t *t)
{
    coord *co = t->data;
    if (!co->r) return;
    uint64_t now = mono_ms();
    if (co->last_tick_ms && co->map->cluster_id &&
        now - co->last_tick_ms > co->map->settings.ping_timeout_ms / 2) {
        /* The loop stalled (SIGSTOP, swapping): heartbeats sent meanwhile
         * were not read, so silence must be measured afresh. */
        log_warn("the coordinator loop stalled for %" PRIu64 " ms", now - co->last_tick_ms);
        co->quorum_since_ms = 0;
    }
    co->last_tick_ms = now;
    raft_tick(co->r);
    process_ready(co);
    leader_duties(co);
    maybe_compact(co);
    process_ready(co);
}

/* ---- forwarding to the leader --------------------------------------------------------- */

typedef struct fwd_ctx {
    coord *co;
    net_reply *reply;
    char leader[96];
} fwd_ctx;

static void on_forwarded(void *arg, const resp_reply *r, int status)
{
    fwd_ctx *f = arg;
    buf *out = net_reply_buf(f->reply);
    if (status < 0 || !r)
        resp_add_errorf(out, "TRYAGAIN leader is %s (unreachable from here)", f->leader);
    else
        resp_reply_encode(out, r);
    net_reply_done(f->reply);
    free(f);
}

static void forward(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    char tmp[96];
    const char *a = leader_addr(co, tmp, sizeof tmp);
    if (!a || co->leader == co->id) {
        reply_tryagain(co, net_reply_now(c));
        return;
    }
    if (!co->fwd || co->fwd_to != co->leader) {
        if (co->fwd) rclient_close(co->fwd);
        const cmap_coordinator *lc = cmap_coordinator_find(co->map, co->leader);
        peer *p = peer_find(co, co->leader);
        const char *h = lc ? lc->host : p->host;
        int port = lc ? lc->port : p->port;
        co->fwd = rclient_new(&co->loop, h, port, co->o.host, FORWARD_TIMEOUT_MS);
        co->fwd_to = co->leader;
    }
    fwd_ctx *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->co = co;
    f->reply = net_reply_defer(c);
    snprintf(f->leader, sizeof f->leader, "%s", a);
    const char **av = malloc(sizeof(char *) * (size_t)(argc + 1));
    size_t *al = malloc(sizeof(size_t) * (size_t)(argc + 1));
    if (!av || !al) abort();
    av[0] = "FWD";
    al[0] = 3;
    for (int i = 0; i < argc; i++) {
        av[i + 1] = argv[i];
        al[i + 1] = argvlen[i];
    }
    rclient_send(co->fwd, argc + 1, av, al, on_forwarded, f);
    free(av);
    free(al);
}

/* ---- reads -------------------------------------------------------------------------- */

static void json_status(coord *co, buf *o)
{
    raft_status st;
    raft_status_get(co->r, &st);
    const cmap *m = co->map;
    buf_printf(o,
               "{\"cluster_id\":\"%016" PRIx64 "\",\"map_version\":%" PRIu64 ",\"leader\":%" PRIu64
               ",\"term\":%" PRIu64 ",\"commit_index\":%" PRIu64 ",\"coordinators\":[",
               m->cluster_id, m->version, co->leader, st.term, st.commit);
    uint64_t now_tick = st.ticks;
    for (uint32_t i = 0; i < m->ncoords; i++) {
        const cmap_coordinator *c = &m->coords[i];
        int at = raft_config_find(&st.config, c->id);
        bool voter = at >= 0 && st.config.nodes[at].voter;
        const char *role = at < 0                ? "removed"
                           : !voter              ? "learner"
                           : c->id == co->leader ? "leader"
                                                 : "follower";
        uint64_t match = c->id == co->id ? st.last_index : 0;
        bool reachable = c->id == co->id;
        for (uint32_t j = 0; j < st.n_progress; j++)
            if (st.progress[j].id == c->id && c->id != co->id) {
                match = st.progress[j].match;
                /* heard from within an election timeout (10..20 ticks) */
                reachable = now_tick - st.progress[j].last_heard <= 20;
            }
        /* only the leader knows the others' progress: null elsewhere */
        char mbuf[24], rbuf[8];
        bool known = co->role == RAFT_LEADER || c->id == co->id;
        snprintf(mbuf, sizeof mbuf, "%" PRIu64, match);
        snprintf(rbuf, sizeof rbuf, "%s", reachable ? "true" : "false");
        buf_printf(o,
                   "%s{\"id\":%" PRIu64 ",\"address\":\"%s:%u\",\"peer_address\":\"%s:%u\","
                   "\"voter\":%s,\"role\":\"%s\",\"match_index\":%s,\"reachable\":%s}",
                   i ? "," : "", c->id, c->host, c->port, c->peer_host, c->peer_port,
                   voter ? "true" : "false", role, known ? mbuf : "null", known ? rbuf : "null");
    }
    buf_puts(o, "],\"daemons\":[");
    for (uint32_t i = 0; i < m->ndaemons; i++) {
        const cmap_daemon *d = &m->daemons[i];
        buf_printf(o,
                   "%s{\"id\":%" PRIu64 ",\"address\":\"%s:%u\",\"peer_address\":\"%s:%u\","
                   "\"state\":\"%s\",\"since_ms\":%" PRIu64 "}",
                   i ? "," : "", d->id, d->host, d->port, d->host, d->peer_port,
                   cmap_daemon_state_name(d->state), d->since_ms);
    }
    buf_puts(o, "],\"spaces\":[");
    for (uint32_t i = 0; i < m->nspaces; i++) {
        const cmap_space *sp = &m->spaces[i];
        unsigned h[4] = {0, 0, 0, 0};
        for (uint32_t p = 0; p < sp->schema->partitions; p++)
            if (sp->parts[p].health >= 1 && sp->parts[p].health <= 3) h[sp->parts[p].health]++;
        buf_printf(o,
                   "%s{\"name\":\"%s\",\"id\":%u,\"partitions\":%u,\"tolerate\":%u,"
                   "\"health\":{\"PROTECTED\":%u,\"DEGRADED\":%u,\"UNAVAILABLE\":%u}}",
                   i ? "," : "", sp->schema->name, sp->id, sp->schema->partitions,
                   sp->schema->tolerate, h[CMAP_H_PROTECTED], h[CMAP_H_DEGRADED],
                   h[CMAP_H_UNAVAILABLE]);
    }
    const plan_progress *pg = &co->progress;
    buf_printf(o,
               "],\"protection\":{\"fully_protected\":%s,\"degraded\":%u,"
               "\"unavailable\":%u,\"copying\":%u,\"waiting\":%u,\"unplaceable\":%u",
               co->fully_protected ? "true" : "false", pg->degraded, pg->unavailable, pg->copying,
               pg->waiting, pg->unplaceable);
    /* bytes and rate as the ONLINE daemons last reported them (the leader's
     * soft state: zero on a follower, and for a heartbeat after a leader
     * change) */
    uint64_t copies = 0, left = 0, rate = 0, entries = 0;
    if (co->role == RAFT_LEADER)
        for (size_t i = 0; i < co->nhb; i++) {
            const cmap_daemon *d = cmap_daemon_find(m, co->hb[i].daemon);
            if (!d || d->state != CMAP_D_ONLINE) continue;
            copies += co->hb[i].pg_copies;
            left += co->hb[i].pg_bytes_left;
            rate += co->hb[i].pg_bytes_per_s;
            entries += co->hb[i].pg_entries_left;
        }
    buf_printf(o,
               ",\"copies_running\":%" PRIu64 ",\"copy_bytes_left\":%" PRIu64
               ",\"copy_bytes_per_s\":%" PRIu64 ",\"tail_entries_left\":%" PRIu64,
               copies, left, rate, entries);
    if (left && rate)
        buf_printf(o, ",\"eta_s\":%" PRIu64 "}", (left + rate - 1) / rate);
    else
        buf_printf(o, ",\"eta_s\":%s}", left ? "null" : "0");
    buf_printf(o,
               ",\"settings\":{\"heartbeat_ms\":%u,\"ping_timeout_ms\":%u,"
               "\"reprotect_delay_s\":%u,\"log_retention\":%" PRIu64 ",\"sync\":\"%s\"}}",
               m->settings.heartbeat_ms, m->settings.ping_timeout_ms, m->settings.reprotect_delay_s,
               m->settings.log_retention, cmap_sync_name(m->settings.sync_required));
}

/* Answers a read from the local applied map (argv without STALE). */
static void answer_read(coord *co, buf *out, int argc, char **argv, size_t *argvlen)
{
    const cmap *m = co->map;
    if (is(argv[0], argvlen[0], "SPACE.LIST")) {
        resp_add_array(out, m->nspaces);
        for (uint32_t i = 0; i < m->nspaces; i++)
            resp_add_bulk_str(out, m->spaces[i].schema->name);
    } else if (is(argv[0], argvlen[0], "SPACE.DESCRIBE")) {
        const cmap_space *cs = cmap_space_find(m, argv[1], argvlen[1]);
        if (!cs) {
            resp_add_errorf(out, "NOSPACE no such space '%.*s'",
                            (int)(argvlen[1] > 64 ? 64 : argvlen[1]), argv[1]);
            return;
        }
        buf t;
        buf_init(&t);
        space_describe(cs->schema, &t);
        resp_add_bulk(out, t.data, t.len);
        buf_free(&t);
    } else if (is(argv[0], argvlen[0], "CLUSTER.CONFIG")) {
        char name[64];
        size_t n = argvlen[2] < sizeof name - 1 ? argvlen[2] : sizeof name - 1;
        memcpy(name, argv[2], n);
        name[n] = 0;
        buf v;
        buf_init(&v);
        if (cmap_config_get(m, name, &v))
            resp_add_errorf(out, "ERR unknown setting '%s'", name);
        else
            resp_add_bulk(out, v.data, v.len);
        buf_free(&v);
    } else if (is(argv[0], argvlen[0], "CLUSTER.MAP")) {
        buf t;
        buf_init(&t);
        cmap_encode(m, &t);
        resp_add_bulk(out, t.data, t.len);
        buf_free(&t);
    } else if (is(argv[0], argvlen[0], "CLUSTER.ROUTES")) {
        route_encode(m, out);
    } else if (is(argv[0], argvlen[0], "CLUSTER.STATUS")) {
        buf t;
        buf_init(&t);
        json_status(co, &t);
        resp_add_bulk(out, t.data, t.len);
        buf_free(&t);
    }
    (void)argc;
}

static void linearizable_read(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    uint64_t ctx = ++co->next_ctx;
    int rc = raft_read_index(co->r, ctx);
    if (rc) {
        reply_tryagain(co, net_reply_now(c));
        return;
    }
    rread *q = calloc(1, sizeof *q);
    if (!q) abort();
    resp_argv_copy(argc, argv, argvlen, &q->argv, &q->argvlen);
    q->argc = argc;
    q->ctx = ctx;
    q->reply = net_reply_defer(c);
    q->next = co->reads;
    co->reads = q;
}

/* ---- commands ------------------------------------------------------------------------ */

typedef enum { K_LOCAL, K_READ, K_WRITE, K_LEADER } cmd_class;

static const struct {
    const char *name;
    int min, max;
    cmd_class cls;
} commands[] = {
    {"PING", 1, 2, K_LOCAL},
    {"ECHO", 2, 2, K_LOCAL},
    {"INFO", 1, 2, K_LOCAL},
    {"QUIT", 1, 1, K_LOCAL},
    {"COORD.HELLO", 1, 1, K_LOCAL},
    {"DEBUG.FAULT", 2, 18, K_LOCAL},
    {"SPACE.LIST", 1, 2, K_READ},
    {"SPACE.DESCRIBE", 2, 3, K_READ},
    {"CLUSTER.MAP", 1, 2, K_READ},
    {"CLUSTER.ROUTES", 1, 2, K_READ},
    {"CLUSTER.STATUS", 1, 2, K_READ},
    {"CLUSTER.CONFIG", 3, 4, K_READ}, /* SET is reclassified as a write */
    {"SPACE.ADD", 2, -1, K_WRITE},
    {"SPACE.DROP", 2, 2, K_WRITE},
    {"COORD.JOIN", 4, 5, K_WRITE},
    {"COORD.REMOVE", 2, 2, K_WRITE},
    {"DAEMON.REGISTER", 4, 8, K_WRITE},
    {"DAEMON.SHUTDOWN", 2, 2, K_WRITE},
    {"DAEMON.HEARTBEAT", 2, 7, K_LEADER},
    {"DAEMON.CAUGHT_UP", 6, 6, K_WRITE},
    {"DAEMON.HANDOFF", 2, 2, K_WRITE},
    {"DAEMON.UNREACHABLE", 3, 3, K_WRITE},
};

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_port(const char *s, size_t len, uint16_t *out)
{
    uint64_t v;
    if (!parse_u64(s, len, &v) || v == 0 || v > 65535) return false;
    *out = (uint16_t)v;
    return true;
}

static void cstr(char *dst, size_t n, const char *s, size_t len)
{
    if (len >= n) len = n - 1;
    memcpy(dst, s, len);
    dst[len] = 0;
}

static void cmd_info(coord *co, buf *out)
{
    raft_status st;
    memset(&st, 0, sizeof st);
    if (co->r) raft_status_get(co->r, &st);
    uint32_t voters = raft_config_voters(&st.config);
    buf t;
    buf_init(&t);
    buf_printf(&t,
               "# Server\r\nkeel_version:%s\r\nmode:coordinator\r\nprocess_id:%d\r\ntcp_port:%d\r\n"
               "peer_port:%d\r\ncluster_id:%016" PRIx64 "\r\ncoordinator_id:%" PRIu64
               "\r\nuptime_in_seconds:%" PRIu64 "\r\n\r\n"
               "# Raft\r\nrole:%s\r\nterm:%" PRIu64 "\r\nleader:%" PRIu64 "\r\ncommit:%" PRIu64
               "\r\napplied:%" PRIu64 "\r\nlast_index:%" PRIu64 "\r\nsnapshot_index:%" PRIu64
               "\r\nvoters:%u\r\nlearners:%u\r\nvoter:%d\r\n\r\n"
               "# Map\r\nmap_version:%" PRIu64 "\r\nspaces:%u\r\ndaemons:%u\r\ncoordinators:%u\r\n",
               KEEL_VERSION, (int)getpid(), co->o.port, co->o.peer_port, co->cluster_id, co->id,
               (wall_ms() - co->start_ms) / 1000, co->r ? raft_role_name(st.role) : "joining",
               st.term, st.leader, st.commit, co->applied, st.last_index, st.snapshot_index, voters,
               st.config.n - voters, st.voter ? 1 : 0, co->map->version, co->map->nspaces,
               co->map->ndaemons, co->map->ncoords);
    resp_add_bulk(out, t.data, t.len);
    buf_free(&t);
}

static void cmd_fault(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    buf *out = net_reply_now(c);
    if (!co->o.test_faults) {
        resp_add_error(out, "ERR DEBUG.FAULT needs --test-faults");
        return;
    }
    if (is(argv[1], argvlen[1], "HEAL")) {
        co->nblocked = 0;
        log_notice("test fault healed");
        resp_add_simple(out, "OK");
        return;
    }
    if (!is(argv[1], argvlen[1], "DROP") || argc < 3) {
        resp_add_error(out, "ERR usage: DEBUG.FAULT DROP id... | HEAL");
        return;
    }
    for (int i = 2; i < argc && co->nblocked < RAFT_MAX_NODES; i++) {
        uint64_t id;
        if (!parse_u64(argv[i], argvlen[i], &id)) {
            resp_add_error(out, "ERR coordinator ids are numbers");
            return;
        }
        co->blocked[co->nblocked++] = id;
    }
    log_notice("test fault: dropping Raft traffic with %d coordinators", argc - 2);
    resp_add_simple(out, "OK");
}

static void cmd_local(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    if (is(argv[0], argvlen[0], "PING")) {
        if (argc == 1)
            resp_add_simple(net_reply_now(c), "PONG");
        else
            resp_add_bulk(net_reply_now(c), argv[1], argvlen[1]);
    } else if (is(argv[0], argvlen[0], "ECHO")) {
        resp_add_bulk(net_reply_now(c), argv[1], argvlen[1]);
    } else if (is(argv[0], argvlen[0], "QUIT")) {
        resp_add_simple(net_reply_now(c), "OK");
        net_conn_close_after_replies(c);
    } else if (is(argv[0], argvlen[0], "INFO")) {
        cmd_info(co, net_reply_now(c));
    } else if (is(argv[0], argvlen[0], "COORD.HELLO")) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, co->cluster_id);
        resp_add_bulk_str(net_reply_now(c), hex);
    } else {
        cmd_fault(co, c, argc, argv, argvlen);
    }
}

/* DAEMON.HEARTBEAT id [PROGRESS copies bytes_left bytes_per_s entries_left] —
 * leader only (invariant 3). */
static void cmd_heartbeat(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    buf *out = net_reply_now(c);
    if (co->role != RAFT_LEADER) {
        reply_tryagain(co, out);
        return;
    }
    if (!raft_leader_has_quorum(co->r)) {
        resp_add_error(out, "NOQUORUM the coordinator leader cannot reach a majority");
        return;
    }
    uint64_t id, pg[4] = {0};
    if (!parse_u64(argv[1], argvlen[1], &id)) {
        resp_add_error(out, "ERR daemon id must be a number");
        return;
    }
    bool ok = argc == 2 || (argc == 7 && is(argv[2], argvlen[2], "PROGRESS"));
    for (int i = 0; ok && argc == 7 && i < 4; i++)
        ok = parse_u64(argv[3 + i], argvlen[3 + i], &pg[i]);
    if (!ok) {
        resp_add_error(out, "ERR usage: DAEMON.HEARTBEAT id [PROGRESS copies bytes_left "
                            "bytes_per_s entries_left]");
        return;
    }
    const cmap_daemon *d = cmap_daemon_find(co->map, id);
    if (!d) {
        resp_add_errorf(out, "ERR no such daemon %" PRIu64, id);
        return;
    }
    if (d->state != CMAP_D_ONLINE) {
        resp_add_errorf(out, "ERR daemon %" PRIu64 " is %s: register again", id,
                        cmap_daemon_state_name(d->state));
        return;
    }
    hb_entry *h = hb_find(co, id, true);
    if (h) {
        h->last_ms = mono_ms();
        h->pg_copies = pg[0];
        h->pg_bytes_left = pg[1];
        h->pg_bytes_per_s = pg[2];
        h->pg_entries_left = pg[3];
    }
    resp_add_array(out, 3);
    resp_add_int(out, (long long)co->map->version);
    resp_add_int(out, co->map->settings.heartbeat_ms);
    resp_add_int(out, co->map->settings.ping_timeout_ms);
}

static void cmd_register(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    /* a trailing SYNC <policy>: refused if it contradicts the cluster's */
    if (argc >= 6 && is(argv[argc - 2], argvlen[argc - 2], "SYNC")) {
        int want = co->map->settings.sync_required;
        const char *have = argv[argc - 1];
        size_t hl = argvlen[argc - 1];
        if (want != CMAP_SYNC_ANY &&
            !(strlen(cmap_sync_name(want)) == hl && !memcmp(cmap_sync_name(want), have, hl))) {
            resp_add_errorf(net_reply_now(c),
                            "ERR this cluster requires sync=%s (CLUSTER.CONFIG GET sync); the "
                            "daemon runs with --sync %.*s",
                            cmap_sync_name(want), (int)(hl > 16 ? 16 : hl), have);
            return;
        }
        argc -= 2;
    }
    char host[CMAP_MAX_HOST + 1];
    uint16_t port, peer_port;
    cstr(host, sizeof host, argv[1], argvlen[1]);
    if (!parse_port(argv[2], argvlen[2], &port) || !parse_port(argv[3], argvlen[3], &peer_port)) {
        resp_add_error(net_reply_now(c), "ERR ports must be numbers in 1..65535");
        return;
    }
    buf cmd;
    buf_init(&cmd);
    if (argc == 4) {
        cmap_cmd_add_daemon(&cmd, host, port, peer_port, wall_ms());
        propose_for(co, c, &cmd, P_REGISTER, 0);
        buf_free(&cmd);
        return;
    }
    uint64_t id;
    char cid[32];
    cstr(cid, sizeof cid, argv[5], argvlen[5]);
    char mine[17];
    snprintf(mine, sizeof mine, "%016" PRIx64, co->map->cluster_id);
    buf *out = NULL;
    if (argc != 6 || !parse_u64(argv[4], argvlen[4], &id)) {
        out = net_reply_now(c);
        resp_add_error(out, "ERR usage: DAEMON.REGISTER host port peer_port [id cluster_id]");
    } else if (strcmp(cid, mine) != 0) {
        out = net_reply_now(c);
        resp_add_errorf(out, "ERR data directory belongs to cluster %s, this is cluster %s", cid,
                        mine);
    } else {
        const cmap_daemon *d = cmap_daemon_find(co->map, id);
        hb_entry *h = hb_find(co, id, false);
        bool same_addr = d && !strcmp(d->host, host) && d->port == port;
        bool lease_may_live = d && d->state == CMAP_D_ONLINE &&
                              (!h || mono_ms() - h->last_ms < co->map->settings.ping_timeout_ms);
        if (!d) {
            out = net_reply_now(c);
            resp_add_errorf(out, "ERR no such daemon %" PRIu64 " in cluster %s", id, mine);
        } else if (d->state == CMAP_D_RETIRED) {
            out = net_reply_now(c);
            resp_add_errorf(out, "ERR daemon %" PRIu64 " is retired", id);
        } else if (lease_may_live && !same_addr) {
            out = net_reply_now(c);
            resp_add_errorf(out, "ERR daemon %" PRIu64 " is already online at %s:%u", id, d->host,
                            d->port);
        } else if (d->state == CMAP_D_ONLINE) {
            /* the same daemon restarted at its address: its old process is gone */
            if (h) h->last_ms = mono_ms();
            reply_register(co, net_reply_now(c), id);
        } else {
            cmap_cmd_set_daemon_state(&cmd, id, CMAP_D_ONLINE, wall_ms());
            hb_entry *nh = hb_find(co, id, true);
            if (nh) {
                nh->last_ms = mono_ms();
            }
            net_reply *r = net_reply_defer(c);
            buf err;
            buf_init(&err);
            proposal *p = propose(co, &cmd, P_REGISTER, r, &err);
            if (!p) {
                buf_append(net_reply_buf(r), err.data, err.len);
                net_reply_done(r);
            } else {
                p->arg = id;
            }
            buf_free(&err);
        }
    }
    buf_free(&cmd);
}

static void cmd_join(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    char host[CMAP_MAX_HOST + 1], phost[CMAP_MAX_HOST + 1];
    uint16_t port, pport;
    cstr(host, sizeof host, argv[1], argvlen[1]);
    if (!parse_port(argv[2], argvlen[2], &port) || !parse_port(argv[3], argvlen[3], &pport)) {
        resp_add_error(net_reply_now(c), "ERR ports must be numbers in 1..65535");
        return;
    }
    if (argc == 5)
        cstr(phost, sizeof phost, argv[4], argvlen[4]);
    else
        memcpy(phost, host, sizeof host);
    /* idempotent: a coordinator already in the map is (re)added to Raft */
    for (uint32_t i = 0; i < co->map->ncoords; i++) {
        const cmap_coordinator *k = &co->map->coords[i];
        if (!strcmp(k->host, host) && k->port == port && !strcmp(k->peer_host, phost) &&
            k->peer_port == pport) {
            buf *out = net_reply_now(c);
            if (ensure_learner(co, k->id))
                resp_add_error(out, "TRYAGAIN another membership change is in progress");
            else
                reply_join(co, out, k->id);
            return;
        }
    }
    buf cmd;
    buf_init(&cmd);
    cmap_cmd_add_coordinator(&cmd, host, port, phost, pport);
    propose_for(co, c, &cmd, P_JOIN, 0);
    buf_free(&cmd);
}

static void cmd_remove(coord *co, net_conn *c, char **argv, size_t *argvlen)
{
    uint64_t id;
    if (!parse_u64(argv[1], argvlen[1], &id)) {
        resp_add_error(net_reply_now(c), "ERR coordinator id must be a number");
        return;
    }
    raft_status st;
    raft_status_get(co->r, &st);
    int at = raft_config_find(&st.config, id);
    if (at < 0 && !cmap_coordinator_find(co->map, id)) {
        resp_add_errorf(net_reply_now(c), "ERR no such coordinator %" PRIu64, id);
        return;
    }
    if (at >= 0) {
        /* refuse if the remaining voters that answer could not form a majority */
        uint32_t remaining = 0, reachable = 0;
        for (uint32_t i = 0; i < st.config.n; i++) {
            const raft_node_cfg *n = &st.config.nodes[i];
            if (!n->voter || n->id == id) continue;
            remaining++;
            if (n->id == co->id) {
                reachable++;
                continue;
            }
            for (uint32_t j = 0; j < st.n_progress; j++)
                if (st.progress[j].id == n->id && st.ticks - st.progress[j].last_heard <= 20)
                    reachable++;
        }
        if (remaining == 0 || reachable < remaining / 2 + 1) {
            resp_add_errorf(net_reply_now(c),
                            "ERR removing coordinator %" PRIu64 " would lose the majority "
                            "(%u of %u remaining voters reachable)",
                            id, reachable, remaining);
            return;
        }
        int rc = raft_propose_conf(co->r, RAFT_CONF_REMOVE, id, NULL);
        if (rc) {
            buf *out = net_reply_now(c);
            if (rc == RAFT_EBUSY || rc == RAFT_EAGAIN)
                resp_add_error(out, "TRYAGAIN another membership change is in progress");
            else
                resp_add_errorf(out, "ERR cannot remove coordinator %" PRIu64 ": %s", id,
                                raft_strerror(rc));
            return;
        }
        log_notice("event=coordinator_removed coordinator=%" PRIu64, id);
    }
    buf cmd;
    buf_init(&cmd);
    cmap_cmd_remove_coordinator(&cmd, id);
    propose_for(co, c, &cmd, P_REMOVE, id);
    buf_free(&cmd);
}

static void cmd_write(coord *co, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    buf cmd;
    buf_init(&cmd);
    if (is(argv[0], argvlen[0], "SPACE.ADD")) {
        buf text;
        buf_init(&text);
        for (int i = 1; i < argc; i++) {
            if (i > 1) buf_putc(&text, ' ');
            buf_append(&text, argv[i], argvlen[i]);
        }
        cmap_cmd_add_space(&cmd, text.data ? text.data : "", text.len);
        buf_free(&text);
        propose_for(co, c, &cmd, P_REPLY, 0);
    } else if (is(argv[0], argvlen[0], "SPACE.DROP")) {
        cmap_cmd_drop_space(&cmd, argv[1], argvlen[1]);
        propose_for(co, c, &cmd, P_REPLY, 0);
    } else if (is(argv[0], argvlen[0], "CLUSTER.CONFIG")) {
        char name[64], value[64];
        cstr(name, sizeof name, argv[2], argvlen[2]);
        cstr(value, sizeof value, argv[3], argvlen[3]);
        cmap_cmd_set_config(&cmd, name, value);
        propose_for(co, c, &cmd, P_REPLY, 0);
    } else if (is(argv[0], argvlen[0], "COORD.JOIN")) {
        cmd_join(co, c, argc, argv, argvlen);
    } else if (is(argv[0], argvlen[0], "COORD.REMOVE")) {
        cmd_remove(co, c, argv, argvlen);
    } else if (is(argv[0], argvlen[0], "DAEMON.REGISTER")) {
        cmd_register(co, c, argc, argv, argvlen);
    } else if (is(argv[0], argvlen[0], "DAEMON.UNREACHABLE")) {
        /* DAEMON.UNREACHABLE reporter daemon: a primary found the daemon's
         * replication port refusing connections (nothing listens: the process
         * is gone). Backups serve nothing, so it leaves the partitions it
         * backs up at once (SUSPECT, then REMOVE_BACKUPS) and writes stop
         * waiting for it; the partitions it leads fail over only once its
         * lease must have run out (DESIGN I1), as for any silent daemon. */
        uint64_t from, id;
        if (!parse_u64(argv[1], argvlen[1], &from) || !parse_u64(argv[2], argvlen[2], &id)) {
            resp_add_error(net_reply_now(c), "ERR usage: DAEMON.UNREACHABLE reporter daemon");
        } else {
            const cmap_daemon *d = cmap_daemon_find(co->map, id);
            const cmap_daemon *r = cmap_daemon_find(co->map, from);
            int n = 0;
            if (d && r && d->state == CMAP_D_ONLINE && r->state == CMAP_D_ONLINE && from != id) {
                buf_reset(&cmd);
                cmap_cmd_set_daemon_state(&cmd, id, CMAP_D_SUSPECT, wall_ms());
                if (propose(co, &cmd, P_INTERNAL, NULL, NULL)) {
                    n = 1;
                    buf_reset(&cmd);
                    cmap_cmd_remove_backups(&cmd, id);
                    propose(co, &cmd, P_INTERNAL, NULL, NULL);
                    log_warn("event=daemon_suspect daemon=%" PRIu64 " reporter=%" PRIu64
                             ": its replication port refuses connections; removing it as a "
                             "backup",
                             id, from);
                }
            }
            resp_add_int(net_reply_now(c), n);
        }
    } else if (is(argv[0], argvlen[0], "DAEMON.HANDOFF")) {
        /* clean shutdown: every partition the daemon leads gets its first
         * in-sync backup on an ONLINE daemon as primary (cmap HANDOFF); the
         * daemon keeps serving until it sees the new epoch, and the new
         * primary serves only once the old one has acknowledged that epoch */
        uint64_t id;
        if (!parse_u64(argv[1], argvlen[1], &id)) {
            resp_add_error(net_reply_now(c), "ERR daemon id must be a number");
        } else {
            unsigned proposed = 0;
            for (uint32_t i = 0; i < co->map->nspaces; i++) {
                const cmap_space *sp = &co->map->spaces[i];
                for (uint32_t part = 0; part < sp->schema->partitions; part++) {
                    const cmap_partition *pt = &sp->parts[part];
                    if (!pt->nreplicas || pt->replicas[0].daemon != id) continue;
                    for (uint32_t j = 1; j < pt->nreplicas; j++) {
                        const cmap_daemon *d = cmap_daemon_find(co->map, pt->replicas[j].daemon);
                        if (pt->replicas[j].state != CMAP_R_IN_SYNC || !d ||
                            d->state != CMAP_D_ONLINE)
                            continue;
                        buf_reset(&cmd);
                        cmap_cmd_handoff(&cmd, sp->id, part, pt->replicas[j].daemon);
                        if (propose(co, &cmd, P_INTERNAL, NULL, NULL)) proposed++;
                        break;
                    }
                }
            }
            log_notice("event=handoff daemon=%" PRIu64 " partitions=%u", id, proposed);
            resp_add_int(net_reply_now(c), proposed);
        }
    } else if (is(argv[0], argvlen[0], "DAEMON.CAUGHT_UP")) {
        /* DAEMON.CAUGHT_UP from space part daemon epoch: a primary's report
         * for the next planning round (REPLICA_IN_SYNC if still valid) */
        uint64_t v[5];
        bool ok = true;
        for (int i = 0; i < 5; i++)
            ok = ok && parse_u64(argv[i + 1], argvlen[i + 1], &v[i]);
        if (!ok || v[1] > UINT32_MAX || v[2] > UINT32_MAX) {
            resp_add_error(net_reply_now(c),
                           "ERR usage: DAEMON.CAUGHT_UP from space part daemon epoch");
        } else {
            if (co->nreports < sizeof co->reports / sizeof co->reports[0])
                co->reports[co->nreports++] = (plan_caught_up){.from = v[0],
                                                               .space = (uint32_t)v[1],
                                                               .part = (uint32_t)v[2],
                                                               .daemon = v[3],
                                                               .epoch = v[4]};
            resp_add_simple(net_reply_now(c), "OK");
        }
    } else if (is(argv[0], argvlen[0], "DAEMON.SHUTDOWN")) {
        uint64_t id;
        if (!parse_u64(argv[1], argvlen[1], &id)) {
            resp_add_error(net_reply_now(c), "ERR daemon id must be a number");
        } else {
            cmap_cmd_set_daemon_state(&cmd, id, CMAP_D_SHUTDOWN, wall_ms());
            propose_for(co, c, &cmd, P_REPLY, 0);
        }
    }
    buf_free(&cmd);
}

static void dispatch(void *arg, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    coord *co = arg;
    bool forwarded = false;
    if (is(argv[0], argvlen[0], "FWD")) {
        if (argc < 2) {
            resp_add_error(net_reply_now(c), "ERR wrong number of arguments for 'FWD'");
            return;
        }
        forwarded = true;
        argc--, argv++, argvlen++;
    }
    size_t i;
    for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (is(argv[0], argvlen[0], commands[i].name)) break;
    if (i == sizeof commands / sizeof commands[0]) {
        resp_add_errorf(net_reply_now(c), "ERR unknown command '%.*s'",
                        (int)(argvlen[0] > 32 ? 32 : argvlen[0]), argv[0]);
        return;
    }
    if (argc < commands[i].min || (commands[i].max >= 0 && argc > commands[i].max)) {
        resp_add_errorf(net_reply_now(c), "ERR wrong number of arguments for '%s'",
                        commands[i].name);
        return;
    }
    cmd_class cls = commands[i].cls;
    if (cls == K_LOCAL) {
        cmd_local(co, c, argc, argv, argvlen);
        return;
    }
    if (!co->r) {
        resp_add_error(net_reply_now(c), "TRYAGAIN this coordinator is still joining the cluster");
        return;
    }
    if (is(argv[0], argvlen[0], "CLUSTER.CONFIG")) {
        if (is(argv[1], argvlen[1], "SET") && argc == 4)
            cls = K_WRITE;
        else if (!is(argv[1], argvlen[1], "GET") || argc > 4 ||
                 (argc == 4 && !is(argv[3], argvlen[3], "STALE"))) {
            resp_add_error(net_reply_now(c),
                           "ERR usage: CLUSTER.CONFIG GET name [STALE] | SET name value");
            return;
        }
    }
    if (cls == K_READ) {
        bool stale = argc >= 2 && is(argv[argc - 1], argvlen[argc - 1], "STALE") &&
                     !(is(argv[0], argvlen[0], "SPACE.DESCRIBE") && argc == 2);
        if (stale) {
            answer_read(co, net_reply_now(c), argc - 1, argv, argvlen);
            return;
        }
        if ((is(argv[0], argvlen[0], "SPACE.LIST") || is(argv[0], argvlen[0], "CLUSTER.MAP") ||
             is(argv[0], argvlen[0], "CLUSTER.ROUTES") ||
             is(argv[0], argvlen[0], "CLUSTER.STATUS")) &&
            argc != 1) {
            resp_add_errorf(net_reply_now(c), "ERR wrong number of arguments for '%s'",
                            commands[i].name);
            return;
        }
        if (is(argv[0], argvlen[0], "SPACE.DESCRIBE") && argc != 2) {
            resp_add_error(net_reply_now(c), "ERR wrong number of arguments for 'SPACE.DESCRIBE'");
            return;
        }
    }
    if (cls == K_LEADER) {
        cmd_heartbeat(co, c, argc, argv, argvlen);
        return;
    }
    if (co->role != RAFT_LEADER) {
        if (forwarded)
            reply_tryagain(co, net_reply_now(c));
        else
            forward(co, c, argc, argv, argvlen);
        return;
    }
    if (cls == K_READ)
        linearizable_read(co, c, argc, argv, argvlen);
    else
        cmd_write(co, c, argc, argv, argvlen);
    co->ready_due = true; /* once per loop turn (on_prepare), not once per request */
}

/* ---- the peer port --------------------------------------------------------------------- */

static void peer_dispatch(void *arg, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    coord *co = arg;
    if (is(argv[0], argvlen[0], "RAFT") && argc == 2) {
        raft_msg m;
        if (raft_msg_decode(argv[1], argvlen[1], &m)) {
            log_warn("dropping an undecodable Raft message from %s", net_conn_peer(c));
            return;
        }
        if (co->r && m.to == co->id && !blocked(co, m.from)) {
            int rc = raft_step(co->r, &m);
            if (rc && rc != RAFT_EPROTO) log_debug("raft_step: %s", raft_strerror(rc));
            co->ready_due = true;
        }
        raft_msg_free(&m);
        return;
    }
    if (is(argv[0], argvlen[0], "PING")) {
        resp_add_simple(net_reply_now(c), "PONG");
        return;
    }
    resp_add_error(net_reply_now(c), "ERR the peer port takes only Raft traffic");
}

/* ---- start-up ----------------------------------------------------------------------------- */

typedef struct join_wait {
    coord *co;
    bool done;
    int status; /* 0 ok, 1 refused (fatal), -1 retry */
    char err[320];
    uint64_t id, cluster_id;
} join_wait;

static bool parse_hex64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 16) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

static void on_join_reply(void *arg, const resp_reply *r, int status)
{
    join_wait *w = arg;
    w->done = true;
    w->status = -1;
    if (status < 0 || !r) {
        snprintf(w->err, sizeof w->err, "cannot reach the coordinator: %s", uv_strerror(status));
        return;
    }
    if (r->type == RESP_R_ERROR) {
        snprintf(w->err, sizeof w->err, "%s", r->str);
        if (strncmp(r->str, "TRYAGAIN", 8) != 0) w->status = 1;
        return;
    }
    if (r->type == RESP_R_BULK) { /* COORD.HELLO */
        if (parse_hex64(r->str, r->len, &w->cluster_id)) w->status = 0;
        return;
    }
    if (r->type != RESP_R_ARRAY || r->elements != 4 || r->element[0]->type != RESP_R_INT ||
        r->element[1]->type != RESP_R_BULK || r->element[3]->type != RESP_R_ARRAY ||
        !parse_hex64(r->element[1]->str, r->element[1]->len, &w->cluster_id)) {
        snprintf(w->err, sizeof w->err, "unexpected reply to COORD.JOIN");
        w->status = 1;
        return;
    }
    w->id = (uint64_t)r->element[0]->integer;
    const resp_reply *cs = r->element[3];
    for (size_t i = 0; i < cs->elements; i++) {
        const resp_reply *e = cs->element[i];
        if (e->type != RESP_R_ARRAY || e->elements != 5) continue;
        peer_set(w->co, (uint64_t)e->element[0]->integer,
                 e->element[1]->str ? e->element[1]->str : "", (int)e->element[2]->integer,
                 e->element[3]->str ? e->element[3]->str : "", (int)e->element[4]->integer);
    }
    w->status = 0;
}

/* Sends one request to the --connect coordinator and runs the loop until the
 * answer (bounded by the rclient timeout), retrying TRYAGAIN for up to 30 s. */
static int ask_connect(coord *co, int argc, const char **argv, join_wait *w, char *err,
                       size_t errlen)
{
    rclient *rc = rclient_new(&co->loop, co->o.join_host, co->o.join_port, co->o.host, 3000);
    uint64_t deadline = mono_ms() + 30000;
    int result = -1;
    while (!co->stopping) {
        w->done = false;
        rclient_send(rc, argc, argv, NULL, on_join_reply, w);
        while (!w->done)
            uv_run(&co->loop, UV_RUN_ONCE);
        if (w->status >= 0 || mono_ms() > deadline) break;
        log_info("%s: %s; retrying", argv[0], w->err);
        uv_sleep(200);
    }
    if (w->status == 0)
        result = 0;
    else
        snprintf(err, errlen, "%s via %s:%d: %s", argv[0], co->o.join_host, co->o.join_port,
                 w->err);
    rclient_close(rc);
    return result;
}

static int start_raft(coord *co, bool fresh_cluster, char *err, size_t errlen)
{
    raft_opts ro;
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed) seed = wall_ms() ^ (uint64_t)getpid();
    raft_opts_init(&ro, co->id, seed);
    ro.auto_promote = true;
    rstore_state st;
    if (rstore_load(co->rs, &st, err, errlen)) return -1;
    bool empty = !st.has_snap && st.n_entries == 0 && st.hs.term == 0;
    raft_persisted ps = {.hs = st.hs,
                         .snapshot = st.has_snap ? &st.snap : NULL,
                         .entries = st.entries,
                         .n_entries = st.n_entries};
    int rc = raft_new(&ro, empty ? NULL : &ps, &co->r);
    if (!rc && st.has_snap) {
        cmap *m;
        if (cmap_decode(st.snap.data, st.snap.len, &m) == 0) {
            cmap_free(co->map);
            co->map = m;
            co->applied = co->snap_index = st.snap.index;
            peers_sync(co);
        } else {
            rc = RAFT_ECORRUPT;
        }
    }
    rstore_state_free(&st);
    if (rc) {
        snprintf(err, errlen, "cannot start Raft: %s", raft_strerror(rc));
        return -1;
    }
    if (fresh_cluster) {
        raft_config cfg = {.n = 1};
        cfg.nodes[0].id = co->id;
        cfg.nodes[0].voter = true;
        if ((rc = raft_bootstrap(co->r, &cfg))) {
            snprintf(err, errlen, "cannot bootstrap Raft: %s", raft_strerror(rc));
            return -1;
        }
    }
    process_ready(co);
    return 0;
}

/* Identity: resume, bootstrap a new cluster, or join the one at -c/-P. */
static int establish_identity(coord *co, char *err, size_t errlen)
{
    uint64_t cid, nid;
    int have = rstore_identity_get(co->rs, &cid, &nid);
    if (have < 0) {
        snprintf(err, errlen, "cannot read the identity in %s", co->o.dir);
        return -1;
    }
    if (have == 0) {
        co->cluster_id = cid;
        co->id = nid;
        if (co->o.join_host) {
            join_wait w = {.co = co};
            const char *argv[] = {"COORD.HELLO"};
            if (ask_connect(co, 1, argv, &w, err, errlen) == 0 && w.cluster_id != cid) {
                snprintf(err, errlen,
                         "data directory %s belongs to cluster %016" PRIx64
                         "; the coordinator at %s:%d is in cluster %016" PRIx64,
                         co->o.dir, cid, co->o.join_host, co->o.join_port, w.cluster_id);
                return -1;
            }
            log_notice("resuming as coordinator %" PRIu64 " of cluster %016" PRIx64
                       " (-c/-P ignored: this data directory already belongs to it)",
                       nid, cid);
        }
        return start_raft(co, false, err, errlen);
    }
    if (!co->o.join_host) {
        cid = 0;
        while (cid == 0)
            if (getrandom(&cid, sizeof cid, 0) != sizeof cid) cid = wall_ms() * 2654435761u;
        co->cluster_id = cid;
        co->id = 1;
        if (rstore_identity_put(co->rs, cid, 1)) {
            snprintf(err, errlen, "cannot write the identity in %s", co->o.dir);
            return -1;
        }
        log_notice("event=cluster_created cluster=%016" PRIx64 " coordinator=1", cid);
        return start_raft(co, true, err, errlen);
    }
    char port[16], pport[16];
    snprintf(port, sizeof port, "%d", co->o.port);
    snprintf(pport, sizeof pport, "%d", co->o.peer_port);
    const char *argv[] = {"COORD.JOIN", co->o.host, port, pport, co->o.peer_host};
    join_wait w = {.co = co};
    if (ask_connect(co, 5, argv, &w, err, errlen)) return -1;
    co->cluster_id = w.cluster_id;
    co->id = w.id;
    if (rstore_identity_put(co->rs, co->cluster_id, co->id)) {
        snprintf(err, errlen, "cannot write the identity in %s", co->o.dir);
        return -1;
    }
    log_notice("event=coordinator_joined cluster=%016" PRIx64 " coordinator=%" PRIu64,
               co->cluster_id, co->id);
    return start_raft(co, false, err, errlen);
}

static void on_signal(uv_signal_t *h, int signum)
{
    coord *co = h->data;
    if (co->stopping) return;
    co->stopping = true;
    log_notice("event=shutdown_requested signal=%s", strsignal(signum));
    uv_stop(&co->loop);
}

static int coord_run(coord_opts *o, int ready_fd)
{
    coord *co = calloc(1, sizeof *co);
    if (!co) abort();
    co->o = *o;
    co->lock_fd = -1;
    co->start_ms = wall_ms();
    co->map = cmap_new();
    plan_out_init(&co->plan);
    co->fully_protected = true;
    char err[512] = "";
    int status = 1;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&co->loop);
    int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&co->loop, &co->sigs[i]);
        co->sigs[i].data = co;
        uv_signal_start(&co->sigs[i], on_signal, signums[i]);
    }
    net_config nc = {
        .host = o->host,
        .port = o->port,
        .limits = {RESP_DEFAULT_MAX_REQUEST, RESP_DEFAULT_MAX_ARGS, RESP_DEFAULT_MAX_BULK},
        .max_conns = 10000,
        .dispatch = dispatch,
        .arg = co};
    net_config pc = {.host = o->peer_host,
                     .port = o->peer_port,
                     .limits = {RAFT_MAX_SNAPSHOT_BYTES + 4096, 8, RAFT_MAX_SNAPSHOT_BYTES + 1024},
                     .max_conns = 256,
                     .dispatch = peer_dispatch,
                     .arg = co};
    if (net_server_start(&co->clients, &co->loop, &nc, err, sizeof err)) goto err_out;
    if (net_server_start(&co->peers_net, &co->loop, &pc, err, sizeof err)) goto err_out;
    if ((co->lock_fd = proc_lock_dir(o->dir, err, sizeof err)) < 0) {
        if (mkdir(o->dir, 0755) == 0 || errno == EEXIST)
            co->lock_fd = proc_lock_dir(o->dir, err, sizeof err);
        if (co->lock_fd < 0) goto err_out;
    }
    if (rstore_open(&co->rs, o->dir, err, sizeof err)) goto err_out;
    if (establish_identity(co, err, sizeof err)) goto err_out;
    uv_prepare_init(&co->loop, &co->prepare);
    co->prepare.data = co;
    uv_prepare_start(&co->prepare, on_prepare);
    uv_timer_init(&co->loop, &co->tick);
    co->tick.data = co;
    uv_timer_start(&co->tick, on_tick, o->tick_ms, o->tick_ms);
    if (!o->foreground) proc_write_pid(o->dir);
    log_notice("event=coordinator_started coordinator=%" PRIu64 " cluster=%016" PRIx64
               " listen=%s:%d peer=%s:%d data=%s pid=%d",
               co->id, co->cluster_id, o->host, o->port, o->peer_host, o->peer_port, o->dir,
               (int)getpid());
    proc_ready(&ready_fd);
    if (!co->stopping) uv_run(&co->loop, UV_RUN_DEFAULT);
    status = 0;
    log_notice("event=coordinator_stopped clean shutdown");
    if (!o->foreground) proc_remove_pid(o->dir);

err_out:
    if (status) {
        log_error("cannot start: %s", err);
        proc_failed(&ready_fd, err);
    }
    fail_proposals(co);
    while (co->reads) {
        rread *q = co->reads;
        co->reads = q->next;
        reply_tryagain(co, net_reply_buf(q->reply));
        net_reply_done(q->reply);
        free(q->argv);
        free(q);
    }
    if (co->clients) net_server_close(co->clients);
    if (co->peers_net) net_server_close(co->peers_net);
    for (size_t i = 0; i < co->npeers; i++)
        rclient_close(co->peers[i].raft);
    if (co->fwd) rclient_close(co->fwd);
    proc_loop_close(&co->loop);
    if (co->r) raft_free(co->r);
    rstore_close(co->rs);
    cmap_free(co->map);
    plan_out_free(&co->plan);
    if (co->lock_fd >= 0) close(co->lock_fd);
    free(co);
    return status;
}

/* ---- arguments ------------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: keel coordinator [-f] [-l HOST] [-p PORT] [-D DIR] [-c HOST -P PORT]\n"
            "         [--peer-listen HOST] [--peer-port PORT] [--tick-ms N] [--test-faults]\n"
            "  -f, --foreground          stay in the foreground, log to stderr\n"
            "  -l, --listen HOST         client address (default 127.0.0.1)\n"
            "  -p, --listen-port PORT    client port (default 1982)\n"
            "  -D, --data DIR            data directory (default keel-coordinator-data)\n"
            "  -c, --connect HOST        join the cluster of the coordinator at HOST\n"
            "  -P, --connect-port PORT   ... and PORT (default 1982)\n"
            "  --peer-listen HOST        Raft address (default: the --listen address)\n"
            "  --peer-port PORT          Raft port (default: client port + 10000)\n"
            "  --tick-ms N               Raft tick (default 100; election after 10-20 ticks)\n"
            "  --snapshot-every N        compact the Raft log every N applied entries (10000)\n");
}

int coord_main(int argc, char **argv)
{
    coord_opts o = {.host = "127.0.0.1",
                    .port = 1982,
                    .dir = "keel-coordinator-data",
                    .join_port = 1982,
                    .tick_ms = 100,
                    .snapshot_every = COMPACT_EVERY};
    enum { OPT_PEER_LISTEN = 1000, OPT_PEER_PORT, OPT_TICK, OPT_FAULTS, OPT_SNAP, OPT_HELP };
    static const struct option lo[] = {{"foreground", no_argument, 0, 'f'},
                                       {"listen", required_argument, 0, 'l'},
                                       {"listen-port", required_argument, 0, 'p'},
                                       {"data", required_argument, 0, 'D'},
                                       {"connect", required_argument, 0, 'c'},
                                       {"connect-port", required_argument, 0, 'P'},
                                       {"peer-listen", required_argument, 0, OPT_PEER_LISTEN},
                                       {"peer-port", required_argument, 0, OPT_PEER_PORT},
                                       {"tick-ms", required_argument, 0, OPT_TICK},
                                       {"test-faults", no_argument, 0, OPT_FAULTS},
                                       {"snapshot-every", required_argument, 0, OPT_SNAP},
                                       {"help", no_argument, 0, OPT_HELP},
                                       {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "fl:p:D:c:P:", lo, NULL)) != -1) {
        switch (ch) {
        case 'f':
            o.foreground = true;
            break;
        case 'l':
            o.host = optarg;
            break;
        case 'p':
            if (proc_parse_port("--listen-port", optarg, &o.port)) return 2;
            break;
        case 'D':
            o.dir = optarg;
            break;
        case 'c':
            o.join_host = optarg;
            break;
        case 'P':
            if (proc_parse_port("--connect-port", optarg, &o.join_port)) return 2;
            break;
        case OPT_PEER_LISTEN:
            o.peer_host = optarg;
            break;
        case OPT_PEER_PORT:
            if (proc_parse_port("--peer-port", optarg, &o.peer_port)) return 2;
            break;
        case OPT_TICK: {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 10000) {
                fprintf(stderr, "keel: --tick-ms needs 1..10000, got '%s'\n", optarg);
                return 2;
            }
            o.tick_ms = (unsigned)n;
            break;
        }
        case OPT_FAULTS:
            o.test_faults = true;
            break;
        case OPT_SNAP: {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 2 || n > 100000000) {
                fprintf(stderr, "keel: --snapshot-every needs 2..100000000, got '%s'\n", optarg);
                return 2;
            }
            o.snapshot_every = (unsigned)n;
            break;
        }
        case OPT_HELP:
            usage();
            return 0;
        default:
            usage();
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "keel: unexpected argument '%s'\n", argv[optind]);
        usage();
        return 2;
    }
    if (!o.peer_host) o.peer_host = o.host;
    if (!o.peer_port) {
        if (o.port + 10000 > 65535) {
            fprintf(stderr, "keel: give --peer-port (client port + 10000 is above 65535)\n");
            return 2;
        }
        o.peer_port = o.port + 10000;
    }
    if (o.foreground) return coord_run(&o, -1);
    char what[128];
    snprintf(what, sizeof what, "coordinator serving on %s:%d", o.host, o.port);
    int is_child, ready_fd;
    int rc = proc_daemonize(o.dir, what, &is_child, &ready_fd);
    if (!is_child) return rc;
    _exit(coord_run(&o, ready_fd));
}
