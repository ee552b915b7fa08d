/* Unit tests for plan: the failure-handling planner (src/plan.c).
 *
 * Each rule of plan.h is driven through a real cluster map: the test builds
 * a map with cmap commands, asks plan_decide for a round, applies the round's
 * commands in order (as the coordinator would after Raft commits them; every
 * one must apply) and checks the map. Timing of re-protection, even spreading
 * with copy limits, preference for a returning daemon, partial availability
 * with tolerate 0, progress counts, and a randomized property test
 * (failures, returns, catch-ups and planning rounds in any order never break
 * the map's invariants nor remove a partition's last live in-sync replica,
 * and once every daemon is back the cluster becomes fully protected).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cmap.h"
#include "plan.h"

/* ---- helpers ------------------------------------------------------------ */

#define SEC 1000ULL

static void apply_ok(cmap *m, buf *b)
{
    cmap_result res;
    int rc = cmap_apply(m, b->data, b->len, &res);
    if (rc != 0) fail_msg("refused: %s", res.msg);
    buf_reset(b);
}

/* A bootstrapped map with reprotect_delay_s = delay, daemons 1..n ONLINE
 * since time 0, and one space (id 1) described by text. */
static cmap *cluster(int n, const char *text)
{
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_cmd_bootstrap(&b, 1, false);
    apply_ok(m, &b);
    for (int i = 0; i < n; i++) {
        cmap_cmd_add_daemon(&b, "h", (uint16_t)(1 + i), (uint16_t)(10001 + i), 0);
        apply_ok(m, &b);
    }
    if (text) {
        cmap_cmd_add_space(&b, text, strlen(text));
        apply_ok(m, &b);
    }
    buf_free(&b);
    return m;
}

static void set_state(cmap *m, uint64_t d, int state, uint64_t now)
{
    buf b;
    buf_init(&b);
    cmap_cmd_set_daemon_state(&b, d, state, now);
    apply_ok(m, &b);
    buf_free(&b);
}

static const cmap_partition *part(const cmap *m, uint32_t sid, uint32_t p)
{
    const cmap_space *sp = cmap_space_by_id(m, sid);
    assert_non_null(sp);
    return &sp->parts[p];
}

/* "3 1c 2": daemons in order, 'c' marking CATCHING_UP. */
static const char *replicas_str(const cmap_partition *pt, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < pt->nreplicas; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%llu%s", i ? " " : "",
                              (unsigned long long)pt->replicas[i].daemon,
                              pt->replicas[i].state == CMAP_R_CATCHING_UP ? "c" : "");
    return out;
}

static void expect_replicas(const cmap *m, uint32_t sid, uint32_t p, const char *want, int health)
{
    char s[128];
    assert_string_equal(replicas_str(part(m, sid, p), s, sizeof s), want);
    assert_int_equal(part(m, sid, p)->health, health);
}

/* The map invariants of cmap.h (3, 4, 7), checked directly. */
static void check_map(const cmap *m)
{
    for (uint32_t s = 0; s < m->nspaces; s++) {
        const cmap_space *sp = &m->spaces[s];
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            uint32_t in_sync = 0, live = 0;
            assert_true(pt->nreplicas >= 1);
            for (uint32_t j = 0; j < pt->nreplicas; j++) {
                const cmap_daemon *d = cmap_daemon_find(m, pt->replicas[j].daemon);
                assert_non_null(d);
                for (uint32_t q = 0; q < j; q++)
                    assert_true(pt->replicas[q].daemon != pt->replicas[j].daemon);
                if (pt->replicas[j].state == CMAP_R_IN_SYNC) {
                    in_sync++;
                    live += d->state == CMAP_D_ONLINE;
                }
            }
            assert_true(in_sync >= 1);
            assert_int_equal(pt->replicas[0].state, CMAP_R_IN_SYNC);
            int want = live == 0                          ? CMAP_H_UNAVAILABLE
                       : live >= sp->schema->tolerate + 1 ? CMAP_H_PROTECTED
                                                          : CMAP_H_DEGRADED;
            assert_int_equal(pt->health, want);
            if (want == CMAP_H_PROTECTED) assert_int_equal(pt->ndeparted, 0);
            for (uint32_t j = 0; j < pt->ndeparted; j++)
                for (uint32_t q = 0; q < pt->nreplicas; q++)
                    assert_true(pt->replicas[q].daemon != pt->departed[j]);
        }
    }
}

/* A planning context: the input with its arrays, and the output. */
typedef struct ctx {
    plan_input in;
    uint64_t failed[16];
    plan_down down[16];
    plan_caught_up reports[64];
    plan_out out;
} ctx;

static void ctx_init(ctx *c, uint64_t now, uint32_t delay_s)
{
    memset(c, 0, sizeof *c);
    c->in.now_ms = now;
    c->in.reprotect_delay_s = delay_s;
    c->in.failed = c->failed;
    c->in.down = c->down;
    c->in.caught_up = c->reports;
    c->in.was_fully_protected = true;
    plan_out_init(&c->out);
}

static void ctx_free(ctx *c)
{
    plan_out_free(&c->out);
}

/* Runs one round on m, then applies every command in order (each must
 * apply: plan.h invariant 1) and checks the map. Returns the command count.
 * Clears the one-shot inputs (failed, reports). */
static size_t round_apply(cmap *m, ctx *c)
{
    size_t n = plan_decide(m, &c->in, &c->out);
    assert_int_equal(n, c->out.ncmds);
    for (size_t i = 0; i < n; i++) {
        const plan_cmd *pc = &c->out.cmds[i];
        assert_true(pc->off + pc->len <= c->out.bytes.len);
        const unsigned char *cmd = (const unsigned char *)c->out.bytes.data + pc->off;
        assert_int_equal(cmd[1], pc->type);
        if (pc->type == CMAP_CMD_ADD_REPLICA) {
            /* plan.h invariant 2, checked on the map the command meets */
            const cmap_partition *pt = part(m, pc->space, pc->part);
            assert_int_equal(pt->health, CMAP_H_DEGRADED);
            assert_int_equal(cmap_daemon_find(m, pc->daemon)->state, CMAP_D_ONLINE);
        }
        cmap_result res;
        if (cmap_apply(m, cmd, pc->len, &res) != 0) fail_msg("command %zu refused: %s", i, res.msg);
        check_map(m);
    }
    c->in.nfailed = 0;
    c->in.ncaught_up = 0;
    c->in.was_fully_protected = c->out.fully_protected;
    return n;
}

/* Number of commands of a type in the last round. */
static size_t count_type(const ctx *c, uint8_t type)
{
    size_t k = 0;
    for (size_t i = 0; i < c->out.ncmds; i++)
        k += c->out.cmds[i].type == type;
    return k;
}

/* Primaries report every CATCHING_UP replica on an ONLINE daemon as caught
 * up at the partition's current epoch. */
static void report_all(const cmap *m, ctx *c)
{
    c->in.ncaught_up = 0;
    for (uint32_t s = 0; s < m->nspaces; s++) {
        const cmap_space *sp = &m->spaces[s];
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            for (uint32_t j = 0; j < pt->nreplicas; j++) {
                const cmap_daemon *d = cmap_daemon_find(m, pt->replicas[j].daemon);
                if (pt->replicas[j].state != CMAP_R_CATCHING_UP || d->state != CMAP_D_ONLINE)
                    continue;
                if (c->in.ncaught_up == 64) return;
                c->reports[c->in.ncaught_up++] = (plan_caught_up){.from = pt->replicas[0].daemon,
                                                                  .space = sp->id,
                                                                  .part = p,
                                                                  .daemon = d->id,
                                                                  .epoch = pt->epoch};
            }
        }
    }
}

static bool all_protected(const cmap *m)
{
    for (uint32_t s = 0; s < m->nspaces; s++)
        for (uint32_t p = 0; p < m->spaces[s].schema->partitions; p++)
            if (m->spaces[s].parts[p].health != CMAP_H_PROTECTED) return false;
    return true;
}

static const char *const ONE2 = "space s key k create 1 partitions tolerate 1 failures";

/* ---- tests -------------------------------------------------------------- */

static void test_nothing_to_do(void **state)
{
    (void)state;
    ctx c;
    ctx_init(&c, 1000, 60);
    cmap *m = cmap_new(); /* not even bootstrapped */
    assert_int_equal(plan_decide(m, &c.in, &c.out), 0);
    assert_true(c.out.fully_protected);
    cmap_free(m);

    m = cluster(3, "space s key k create 8 partitions tolerate 1 failures");
    assert_int_equal(round_apply(m, &c), 0);
    assert_true(c.out.fully_protected);
    assert_false(c.out.restored);
    assert_int_equal(c.out.progress.partitions, 8);
    assert_int_equal(c.out.progress.protected_parts, 8);
    assert_int_equal(c.out.next_wake_ms, 0);
    /* unknown ids in the input are ignored */
    c.failed[0] = 99;
    c.in.nfailed = 1;
    c.reports[0] = (plan_caught_up){.space = 9, .part = 0, .daemon = 1, .epoch = 1};
    c.in.ncaught_up = 1;
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.stale_reports, 1);
    /* a previous round that was not fully protected: restored */
    c.in.was_fully_protected = false;
    assert_int_equal(round_apply(m, &c), 0);
    assert_true(c.out.restored);
    ctx_free(&c);
    cmap_free(m);
}

/* A daemon declared failed: marked OFFLINE, then REPLICA_FAILED, in one
 * round; a daemon the map already holds down is failed from the map alone. */
static void test_failed_daemons(void **state)
{
    (void)state;
    cmap *m = cluster(4, "space s key k create 1 partitions tolerate 2 failures");
    expect_replicas(m, 1, 0, "2 3 4", CMAP_H_PROTECTED);
    ctx c;
    ctx_init(&c, 5 * SEC, 60);
    c.failed[0] = 2;
    c.in.nfailed = 1;
    assert_int_equal(round_apply(m, &c), 2);
    assert_int_equal(c.out.cmds[0].type, CMAP_CMD_SET_DAEMON_STATE);
    assert_int_equal(c.out.cmds[0].daemon, 2);
    assert_int_equal(c.out.cmds[1].type, CMAP_CMD_REPLICA_FAILED);
    assert_int_equal(c.out.cmds[1].daemon, 2);
    assert_int_equal(cmap_daemon_find(m, 2)->state, CMAP_D_OFFLINE);
    assert_int_equal(cmap_daemon_find(m, 2)->since_ms, 5 * SEC);
    expect_replicas(m, 1, 0, "3 4", CMAP_H_DEGRADED);
    assert_true(c.out.fully_protected); /* of the map as given */
    assert_int_equal(c.out.progress.degraded, 0);
    round_apply(m, &c);
    assert_false(c.out.fully_protected);
    assert_int_equal(c.out.progress.degraded, 1);

    /* a clean shutdown of daemon 3: it hands its primary role to 4, the
     * coordinator marks it SHUTDOWN, and the next round fails its replicas
     * without being told */
    buf b;
    buf_init(&b);
    cmap_cmd_handoff(&b, 1, 0, 4);
    apply_ok(m, &b);
    buf_free(&b);
    set_state(m, 3, CMAP_D_SHUTDOWN, 6 * SEC);
    c.in.now_ms = 6 * SEC;
    assert_int_equal(round_apply(m, &c), 1);
    assert_int_equal(c.out.cmds[0].type, CMAP_CMD_REPLICA_FAILED);
    assert_int_equal(c.out.cmds[0].daemon, 3);
    expect_replicas(m, 1, 0, "4", CMAP_H_DEGRADED);
    /* nothing more until the delay runs out */
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.progress.waiting, 1);
    assert_int_equal(c.out.next_wake_ms, 65 * SEC);
    /* a daemon declared failed twice, or already down: no second OFFLINE */
    c.failed[0] = 2;
    c.failed[1] = 2;
    c.in.nfailed = 2;
    assert_int_equal(round_apply(m, &c), 0);
    ctx_free(&c);
    cmap_free(m);
}

/* A SHUTDOWN daemon that did not hand off a primary role is replaced only
 * once its lease must have run out (I1 does not rest on its word); its
 * backups wait with it, since REPLICA_FAILED is one command. */
static void test_shutdown_lease(void **state)
{
    (void)state;
    for (int st = CMAP_D_SHUTDOWN; st <= CMAP_D_RETIRED; st++) {
        cmap *m = cluster(3, "space s key k create 3 partitions tolerate 1 failures");
        /* p0 2 3, p1 3 1, p2 1 2: daemon 2 leads p0 */
        set_state(m, 2, st, 10 * SEC);
        ctx c;
        ctx_init(&c, 10 * SEC, 60);
        uint64_t safe = 10 * SEC + 3000 + 300; /* ping_timeout 3000 ms + 10% */
        /* a RETIRED daemon is never waited for: p2 (led by 1) is copied at
         * once; p0 cannot be copied while its primary is not ONLINE */
        bool retired = st == CMAP_D_RETIRED;
        round_apply(m, &c);
        assert_int_equal(count_type(&c, CMAP_CMD_REPLICA_FAILED), 0);
        assert_int_equal(count_type(&c, CMAP_CMD_ADD_REPLICA), retired ? 1 : 0);
        assert_int_equal(c.out.next_wake_ms, safe);
        c.in.now_ms = safe - 1;
        assert_int_equal(round_apply(m, &c), 0);
        expect_replicas(m, 1, 0, "2 3", CMAP_H_DEGRADED);
        c.in.now_ms = safe;
        assert_int_equal(round_apply(m, &c), retired ? 2 : 1);
        assert_int_equal(c.out.cmds[0].type, CMAP_CMD_REPLICA_FAILED);
        expect_replicas(m, 1, 0, retired ? "3 1c" : "3", CMAP_H_DEGRADED);
        expect_replicas(m, 1, 2, retired ? "1 3c" : "1", CMAP_H_DEGRADED);
        ctx_free(&c);
        cmap_free(m);
    }
    /* an OFFLINE daemon was declared so only after its lease: at once */
    cmap *m = cluster(3, "space s key k create 3 partitions tolerate 1 failures");
    set_state(m, 2, CMAP_D_OFFLINE, 10 * SEC);
    ctx c;
    ctx_init(&c, 10 * SEC, 60);
    assert_int_equal(round_apply(m, &c), 1);
    expect_replicas(m, 1, 0, "3", CMAP_H_DEGRADED);
    ctx_free(&c);
    cmap_free(m);
}

/* Caught-up reports flip replicas in their epoch only, before this round's
 * failures move the epoch; stale and misattributed reports are dropped. */
static void test_caught_up(void **state)
{
    (void)state;
    cmap *m = cluster(5, "space s key k create 1 partitions tolerate 2 failures");
    ctx c;
    ctx_init(&c, 0, 0);
    set_state(m, 3, CMAP_D_OFFLINE, 0);
    assert_int_equal(round_apply(m, &c), 2); /* REPLICA_FAILED, ADD_REPLICA (delay 0) */
    expect_replicas(m, 1, 0, "2 4 1c", CMAP_H_DEGRADED);
    uint64_t e = part(m, 1, 0)->epoch;

    /* not from the primary; from an older epoch; about a non-replica */
    c.reports[0] = (plan_caught_up){.from = 4, .space = 1, .part = 0, .daemon = 1, .epoch = e};
    c.reports[1] = (plan_caught_up){.from = 2, .space = 1, .part = 0, .daemon = 1, .epoch = e - 1};
    c.reports[2] = (plan_caught_up){.from = 2, .space = 1, .part = 0, .daemon = 5, .epoch = e};
    c.reports[3] = (plan_caught_up){.from = 2, .space = 1, .part = 7, .daemon = 1, .epoch = e};
    c.in.ncaught_up = 4;
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.stale_reports, 4);
    assert_int_equal(part(m, 1, 0)->epoch, e);

    /* valid, while daemon 4 fails in the same round: the flip comes first */
    c.reports[0] = (plan_caught_up){.from = 2, .space = 1, .part = 0, .daemon = 1, .epoch = e};
    c.in.ncaught_up = 1;
    c.failed[0] = 4;
    c.in.nfailed = 1;
    assert_int_equal(round_apply(m, &c), 4); /* OFFLINE, IN_SYNC, FAILED, ADD 5 */
    assert_int_equal(c.out.cmds[1].type, CMAP_CMD_REPLICA_IN_SYNC);
    assert_int_equal(c.out.stale_reports, 0);
    expect_replicas(m, 1, 0, "2 1 5c", CMAP_H_DEGRADED);

    /* a report about a daemon failed in this round is dropped */
    e = part(m, 1, 0)->epoch;
    c.reports[0] = (plan_caught_up){.from = 2, .space = 1, .part = 0, .daemon = 5, .epoch = e};
    c.in.ncaught_up = 1;
    c.failed[0] = 5;
    c.in.nfailed = 1;
    round_apply(m, &c);
    assert_int_equal(c.out.stale_reports, 1);
    assert_int_equal(count_type(&c, CMAP_CMD_REPLICA_IN_SYNC), 0);
    /* daemon 3 returns: re-added first; an unchecked sender (from 0) is
     * accepted */
    expect_replicas(m, 1, 0, "2 1", CMAP_H_DEGRADED);
    set_state(m, 3, CMAP_D_ONLINE, 0);
    assert_int_equal(round_apply(m, &c), 1);
    expect_replicas(m, 1, 0, "2 1 3c", CMAP_H_DEGRADED);
    report_all(m, &c);
    for (size_t i = 0; i < c.in.ncaught_up; i++)
        c.reports[i].from = 0;
    assert_true(c.in.ncaught_up > 0);
    round_apply(m, &c);
    assert_int_equal(c.out.stale_reports, 0);
    assert_int_equal(count_type(&c, CMAP_CMD_REPLICA_IN_SYNC), 1);
    expect_replicas(m, 1, 0, "2 1 3", CMAP_H_PROTECTED);
    cmap_free(m);

    /* two replicas caught up in the same epoch: the first flip moves the
     * epoch, so the second report is stale and the primary reports again */
    m = cluster(3, "space s key k create 1 partitions tolerate 2 failures"); /* 2 3 1 */
    set_state(m, 3, CMAP_D_OFFLINE, 0);
    set_state(m, 1, CMAP_D_OFFLINE, 0);
    round_apply(m, &c);
    expect_replicas(m, 1, 0, "2", CMAP_H_DEGRADED);
    set_state(m, 3, CMAP_D_ONLINE, 0);
    set_state(m, 1, CMAP_D_ONLINE, 0);
    assert_int_equal(round_apply(m, &c), 2);
    expect_replicas(m, 1, 0, "2 1c 3c", CMAP_H_DEGRADED); /* departed in id order */
    report_all(m, &c);
    assert_int_equal(c.in.ncaught_up, 2);
    assert_int_equal(round_apply(m, &c), 1);
    assert_int_equal(c.out.stale_reports, 1);
    expect_replicas(m, 1, 0, "2 1 3c", CMAP_H_DEGRADED);
    report_all(m, &c);
    assert_int_equal(round_apply(m, &c), 1);
    expect_replicas(m, 1, 0, "2 1 3", CMAP_H_PROTECTED);
    ctx_free(&c);
    cmap_free(m);
}

/* Re-protection waits reprotect_delay_s after the failure; 0 means at once. */
static void test_reprotect_timing(void **state)
{
    (void)state;
    for (uint32_t delay = 0; delay <= 60; delay += 60) {
        cmap *m = cluster(3, ONE2); /* on daemons 2 3 */
        ctx c;
        ctx_init(&c, 100 * SEC, delay);
        c.failed[0] = 3;
        c.in.nfailed = 1;
        round_apply(m, &c);
        if (delay == 0) {
            /* OFFLINE, REPLICA_FAILED, ADD_REPLICA in the same round */
            assert_int_equal(c.out.ncmds, 3);
            expect_replicas(m, 1, 0, "2 1c", CMAP_H_DEGRADED);
            assert_int_equal(c.out.next_wake_ms, 0);
        } else {
            assert_int_equal(c.out.ncmds, 2);
            expect_replicas(m, 1, 0, "2", CMAP_H_DEGRADED);
            assert_int_equal(c.out.next_wake_ms, 160 * SEC);
            c.in.now_ms = 160 * SEC - 1; /* a millisecond early */
            assert_int_equal(round_apply(m, &c), 0);
            assert_int_equal(c.out.progress.waiting, 1);
            assert_int_equal(c.out.next_wake_ms, 160 * SEC);
            c.in.now_ms = 160 * SEC;
            assert_int_equal(round_apply(m, &c), 1);
            assert_int_equal(c.out.cmds[0].type, CMAP_CMD_ADD_REPLICA);
            assert_int_equal(c.out.cmds[0].daemon, 1);
            assert_int_equal(c.out.progress.waiting, 0);
            expect_replicas(m, 1, 0, "2 1c", CMAP_H_DEGRADED);
        }
        /* copying, then caught up: protected again, and restored */
        assert_int_equal(round_apply(m, &c), 0);
        assert_int_equal(c.out.progress.copying, 1);
        report_all(m, &c);
        assert_int_equal(round_apply(m, &c), 1);
        expect_replicas(m, 1, 0, "2 1", CMAP_H_PROTECTED);
        assert_int_equal(round_apply(m, &c), 0);
        assert_true(c.out.fully_protected);
        assert_true(c.out.restored);
        assert_int_equal(round_apply(m, &c), 0);
        assert_false(c.out.restored); /* only once */
        ctx_free(&c);
        cmap_free(m);
    }
}

/* Absence is measured from plan_input.down when given; a clock that went
 * backwards never makes the delay run out. */
static void test_down_since(void **state)
{
    (void)state;
    cmap *m = cluster(3, ONE2);
    set_state(m, 3, CMAP_D_OFFLINE, 1000 * SEC);
    ctx c;
    ctx_init(&c, 10 * SEC, 60);
    round_apply(m, &c); /* REPLICA_FAILED; now is before since_ms */
    expect_replicas(m, 1, 0, "2", CMAP_H_DEGRADED);
    c.in.now_ms = 500 * SEC;
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.next_wake_ms, 1060 * SEC);
    /* the coordinator's own clock says it has been gone for 61 s */
    c.down[0] = (plan_down){.daemon = 3, .since_ms = 439 * SEC};
    c.in.ndown = 1;
    assert_int_equal(round_apply(m, &c), 1);
    expect_replicas(m, 1, 0, "2 1c", CMAP_H_DEGRADED);
    /* with a huge since, the due time saturates instead of wrapping */
    cmap_free(m);
    m = cluster(3, ONE2);
    set_state(m, 3, CMAP_D_OFFLINE, UINT64_MAX - 5);
    c.in.ndown = 0;
    c.in.now_ms = 10 * SEC;
    round_apply(m, &c);
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.next_wake_ms, UINT64_MAX);
    ctx_free(&c);
    cmap_free(m);
}

/* A daemon back within the delay is re-added to its partitions (a tail
 * replay), ahead of everyone else and regardless of the copy limits; after
 * the delay others have taken its place and it is not needed. */
static void test_returning_daemon(void **state)
{
    (void)state;
    /* 4 daemons, 12 partitions, tolerate 1 */
    cmap *m = cluster(4, "space s key k create 12 partitions tolerate 1 failures");
    ctx c;
    ctx_init(&c, 10 * SEC, 60);
    c.in.max_copies_per_target = 1;
    c.in.max_copies_per_source = 1;
    c.failed[0] = 1;
    c.in.nfailed = 1;
    round_apply(m, &c);
    uint32_t held = 0;
    for (uint32_t p = 0; p < 12; p++)
        held += part(m, 1, p)->ndeparted;
    assert_int_equal(held, 6); /* daemon 1 was in 6 partitions */
    c.in.now_ms = 40 * SEC;
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.progress.waiting, 6);
    set_state(m, 1, CMAP_D_ONLINE, 40 * SEC);
    assert_int_equal(round_apply(m, &c), 6);
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(c.out.cmds[i].type, CMAP_CMD_ADD_REPLICA);
        assert_int_equal(c.out.cmds[i].daemon, 1);
    }
    report_all(m, &c);
    assert_int_equal(round_apply(m, &c), 6);
    assert_true(all_protected(m));
    cmap_free(m);

    /* back only after the delay: others took its place */
    m = cluster(4, "space s key k create 12 partitions tolerate 1 failures");
    c.in.now_ms = 10 * SEC;
    c.in.max_copies_per_target = 0;
    c.in.max_copies_per_source = 0;
    c.failed[0] = 1;
    c.in.nfailed = 1;
    round_apply(m, &c);
    c.in.now_ms = 70 * SEC;
    assert_int_equal(round_apply(m, &c), 6);
    for (size_t i = 0; i < 6; i++)
        assert_true(c.out.cmds[i].daemon != 1);
    set_state(m, 1, CMAP_D_ONLINE, 71 * SEC);
    assert_int_equal(round_apply(m, &c), 0); /* copies in progress fill every slot */
    report_all(m, &c);
    assert_int_equal(round_apply(m, &c), 6);
    assert_true(all_protected(m));
    cmap_free(m);

    /* no other daemon could take the copies: the one that returns late is
     * still the first choice */
    m = cluster(2, ONE2); /* on 2 1 */
    c.in.now_ms = 10 * SEC;
    c.failed[0] = 1;
    c.in.nfailed = 1;
    round_apply(m, &c);
    c.in.now_ms = 500 * SEC;
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.progress.unplaceable, 1);
    set_state(m, 1, CMAP_D_ONLINE, 500 * SEC);
    assert_int_equal(round_apply(m, &c), 1);
    expect_replicas(m, 1, 0, "2 1c", CMAP_H_DEGRADED);
    ctx_free(&c);
    cmap_free(m);
}

/* Many-to-many: new replicas go to the daemons with the fewest replicas, no
 * target gets more than its share, and the copy limits hold per round. */
static void test_even_spread(void **state)
{
    (void)state;
    /* 10 daemons, 60 partitions, tolerate 2: 18 replicas per daemon */
    const char *text = "space s key k create 60 partitions tolerate 2 failures";
    for (int limited = 0; limited < 2; limited++) {
        cmap *m = cluster(10, text);
        ctx c;
        ctx_init(&c, 0, 0);
        c.in.max_copies_per_target = limited ? 2 : 1000;
        c.in.max_copies_per_source = limited ? 3 : 1000;
        c.failed[0] = 4;
        c.failed[1] = 7;
        c.in.nfailed = 2;
        size_t rounds = 0;
        uint32_t got[11] = {0}, total = 0;
        for (;;) {
            round_apply(m, &c);
            uint32_t round_in[11] = {0};
            uint32_t adds = 0;
            for (size_t i = 0; i < c.out.ncmds; i++) {
                const plan_cmd *pc = &c.out.cmds[i];
                if (pc->type != CMAP_CMD_ADD_REPLICA) continue;
                assert_true(pc->daemon != 4 && pc->daemon != 7);
                round_in[pc->daemon]++;
                got[pc->daemon]++;
                adds++;
            }
            total += adds;
            if (limited)
                for (int d = 1; d <= 10; d++)
                    assert_true(round_in[d] <= 2);
            if (all_protected(m)) break;
            report_all(m, &c);
            assert_true(++rounds < 100);
        }
        /* 2 daemons x 18 replicas were lost */
        assert_int_equal(total, 36);
        /* 8 targets: nobody takes more than its share, ceil(36 / 8) */
        for (int d = 1; d <= 10; d++)
            assert_true(got[d] <= 5);
        if (limited) assert_true(rounds >= 2); /* the limits spread it over rounds */
        /* the final load is even: 60 x 3 replicas over 8 daemons */
        uint32_t load[11] = {0};
        for (uint32_t p = 0; p < 60; p++)
            for (uint32_t j = 0; j < part(m, 1, p)->nreplicas; j++)
                load[part(m, 1, p)->replicas[j].daemon]++;
        for (int d = 1; d <= 10; d++) {
            if (d == 4 || d == 7)
                assert_int_equal(load[d], 0);
            else
                assert_true(load[d] >= 22 && load[d] <= 23);
        }
        ctx_free(&c);
        cmap_free(m);
    }
}

/* The copy limits: per target, per source, and the per-round budget. */
static void test_copy_limits(void **state)
{
    (void)state;
    /* per target: 3 daemons, 6 partitions, tolerate 1; daemon 1 fails and
     * its 4 replicas can only go to daemons 2 and 3, one copy each at a time */
    cmap *m = cluster(3, "space s key k create 6 partitions tolerate 1 failures");
    ctx c;
    ctx_init(&c, 0, 0);
    c.in.max_copies_per_target = 1;
    c.in.max_copies_per_source = 100;
    c.failed[0] = 1;
    c.in.nfailed = 1;
    round_apply(m, &c);
    assert_int_equal(count_type(&c, CMAP_CMD_ADD_REPLICA), 2);
    assert_int_equal(c.out.progress.throttled, 2);
    assert_int_equal(c.out.cmds[2].daemon + c.out.cmds[3].daemon, 2 + 3);
    assert_int_equal(round_apply(m, &c), 0); /* both targets still copying */
    assert_int_equal(c.out.progress.throttled, 2);
    report_all(m, &c);
    assert_int_equal(round_apply(m, &c), 4); /* 2 flips, the 2 other copies */
    report_all(m, &c);
    assert_int_equal(round_apply(m, &c), 2);
    assert_true(all_protected(m));
    cmap_free(m);

    /* per source: 4 daemons, 4 partitions, tolerate 1: p0 2 3, p1 3 4,
     * p2 4 1, p3 1 2; daemon 2 takes over p3, then 1 and 3 fail: 2 leads
     * p0 and p3, 4 leads p1 and p2, one copy out of each at a time */
    m = cluster(4, "space s key k create 4 partitions tolerate 1 failures");
    buf b;
    buf_init(&b);
    cmap_cmd_handoff(&b, 1, 3, 2);
    apply_ok(m, &b);
    expect_replicas(m, 1, 3, "2 1", CMAP_H_PROTECTED);
    ctx_free(&c);
    ctx_init(&c, 0, 0);
    c.in.max_copies_per_source = 1;
    c.in.max_copies_per_target = 100;
    c.failed[0] = 1;
    c.failed[1] = 3;
    c.in.nfailed = 2;
    round_apply(m, &c);
    assert_int_equal(count_type(&c, CMAP_CMD_ADD_REPLICA), 2);
    assert_int_equal(c.out.progress.throttled, 2);
    expect_replicas(m, 1, 0, "2 4c", CMAP_H_DEGRADED);
    expect_replicas(m, 1, 1, "4 2c", CMAP_H_DEGRADED);
    expect_replicas(m, 1, 2, "4", CMAP_H_DEGRADED);
    expect_replicas(m, 1, 3, "2", CMAP_H_DEGRADED);
    buf_free(&b);
    cmap_free(m);

    /* the per-round budget of new replicas (failures are never cut short) */
    m = cluster(8, "space s key k create 64 partitions tolerate 1 failures");
    ctx_free(&c);
    ctx_init(&c, 0, 0);
    c.in.max_new_replicas = 5;
    c.in.max_copies_per_target = 1000;
    c.in.max_copies_per_source = 1000;
    c.failed[0] = 3;
    c.in.nfailed = 1;
    round_apply(m, &c);
    assert_int_equal(count_type(&c, CMAP_CMD_REPLICA_FAILED), 1);
    assert_int_equal(count_type(&c, CMAP_CMD_ADD_REPLICA), 5);
    assert_true(c.out.truncated);
    round_apply(m, &c);
    assert_int_equal(count_type(&c, CMAP_CMD_ADD_REPLICA), 5);
    c.in.max_new_replicas = 0; /* the default budget covers the rest */
    round_apply(m, &c);
    assert_int_equal(count_type(&c, CMAP_CMD_ADD_REPLICA), 16 - 10);
    assert_false(c.out.truncated);
    ctx_free(&c);
    cmap_free(m);
}

/* tolerate 0: losing a daemon makes exactly its partitions UNAVAILABLE;
 * nothing is copied (there is no source) and they stay so until it returns. */
static void test_tolerate_zero(void **state)
{
    (void)state;
    cmap *m = cluster(3, "space z key k create 6 partitions tolerate 0 failures");
    ctx c;
    ctx_init(&c, 0, 0);
    c.failed[0] = 2;
    c.in.nfailed = 1;
    assert_int_equal(round_apply(m, &c), 1); /* only OFFLINE: nothing can be removed */
    for (int r = 0; r < 3; r++) {
        c.in.now_ms += 3600 * SEC;
        assert_int_equal(round_apply(m, &c), 0);
        assert_int_equal(c.out.progress.unavailable, 2);
        assert_int_equal(c.out.progress.protected_parts, 4);
        assert_false(c.out.fully_protected);
    }
    for (uint32_t p = 0; p < 6; p++) {
        const cmap_partition *pt = part(m, 1, p);
        assert_int_equal(pt->nreplicas, 1);
        assert_int_equal(pt->health,
                         pt->replicas[0].daemon == 2 ? CMAP_H_UNAVAILABLE : CMAP_H_PROTECTED);
    }
    set_state(m, 2, CMAP_D_ONLINE, c.in.now_ms);
    assert_int_equal(round_apply(m, &c), 0);
    assert_true(c.out.fully_protected);
    assert_true(c.out.restored);
    ctx_free(&c);
    cmap_free(m);
}

/* Every in-sync replica down: the partition waits; whichever returns first
 * takes over, the other is failed and re-added once back. */
static void test_unavailable_waits(void **state)
{
    (void)state;
    cmap *m = cluster(3, ONE2); /* 2 3 */
    ctx c;
    ctx_init(&c, 0, 0);
    c.failed[0] = 2;
    c.failed[1] = 3;
    c.in.nfailed = 2;
    assert_int_equal(round_apply(m, &c), 2); /* two OFFLINE; both kept */
    expect_replicas(m, 1, 0, "2 3", CMAP_H_UNAVAILABLE);
    assert_int_equal(round_apply(m, &c), 0); /* daemon 1 is free, but no source */
    set_state(m, 3, CMAP_D_ONLINE, SEC);
    /* 3 is back: 2 is failed (3 takes over), then a new copy on 1 */
    assert_int_equal(round_apply(m, &c), 2);
    expect_replicas(m, 1, 0, "3 1c", CMAP_H_DEGRADED);
    report_all(m, &c);
    round_apply(m, &c);
    expect_replicas(m, 1, 0, "3 1", CMAP_H_PROTECTED);
    ctx_free(&c);
    cmap_free(m);
}

/* SUSPECT daemons are not failed by the planner; a SUSPECT replica is
 * waited for like a down one; a SUSPECT primary blocks copies. */
static void test_suspect(void **state)
{
    (void)state;
    cmap *m = cluster(4, "space s key k create 1 partitions tolerate 2 failures"); /* 2 3 4 */
    set_state(m, 4, CMAP_D_SUSPECT, 0);
    ctx c;
    ctx_init(&c, 10 * SEC, 60);
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.progress.waiting, 1);
    assert_int_equal(c.out.next_wake_ms, 60 * SEC);
    c.in.now_ms = 61 * SEC; /* suspect for longer than the delay: copy */
    assert_int_equal(round_apply(m, &c), 1);
    expect_replicas(m, 1, 0, "2 3 4 1c", CMAP_H_DEGRADED);
    cmap_free(m);

    m = cluster(4, "space s key k create 1 partitions tolerate 2 failures");
    set_state(m, 2, CMAP_D_SUSPECT, 0);
    set_state(m, 3, CMAP_D_OFFLINE, 0);
    c.in.now_ms = 100 * SEC;
    assert_int_equal(round_apply(m, &c), 1); /* REPLICA_FAILED 3 only */
    expect_replicas(m, 1, 0, "2 4", CMAP_H_DEGRADED);
    assert_int_equal(c.out.progress.waiting, 1);
    set_state(m, 2, CMAP_D_ONLINE, 101 * SEC);
    assert_int_equal(round_apply(m, &c), 1);
    expect_replicas(m, 1, 0, "2 4 1c", CMAP_H_DEGRADED);
    ctx_free(&c);
    cmap_free(m);
}

/* Replicas no departed daemon accounts for (a single-node space that gets
 * daemons) are placed at once. */
static void test_unattributed(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_cmd_bootstrap(&b, 1, true);
    apply_ok(m, &b);
    cmap_cmd_add_daemon(&b, "h", 1, 2, 0);
    apply_ok(m, &b);
    const char *text = "space s key k create 2 partitions tolerate 2 failures";
    cmap_cmd_add_space(&b, text, strlen(text));
    apply_ok(m, &b);
    ctx c;
    ctx_init(&c, 0, 3600);
    assert_int_equal(round_apply(m, &c), 0);
    assert_int_equal(c.out.progress.unplaceable, 4);
    cmap_cmd_add_daemon(&b, "h", 2, 3, 0);
    apply_ok(m, &b);
    cmap_cmd_add_daemon(&b, "h", 3, 4, 0);
    apply_ok(m, &b);
    assert_int_equal(round_apply(m, &c), 4);
    expect_replicas(m, 1, 0, "1 2c 3c", CMAP_H_DEGRADED);
    for (int i = 0; i < 2; i++) { /* one flip per partition and epoch */
        report_all(m, &c);
        assert_int_equal(round_apply(m, &c), 2);
    }
    assert_true(all_protected(m));
    buf_free(&b);
    ctx_free(&c);
    cmap_free(m);
}

/* The progress summary counts the map it is given. */
static void test_progress(void **state)
{
    (void)state;
    cmap *m = cluster(4, "space s key k create 8 partitions tolerate 1 failures");
    buf b;
    buf_init(&b);
    const char *z = "space z key k create 4 partitions tolerate 0 failures";
    cmap_cmd_add_space(&b, z, strlen(z));
    apply_ok(m, &b);
    ctx c;
    ctx_init(&c, 0, 60);
    c.failed[0] = 1;
    c.in.nfailed = 1;
    round_apply(m, &c);
    assert_int_equal(c.out.progress.partitions, 12);
    assert_int_equal(c.out.progress.protected_parts, 12);
    round_apply(m, &c);
    /* s: daemon 1 was in 4 of 8; z: in 1 of 4 */
    assert_int_equal(c.out.progress.partitions, 12);
    assert_int_equal(c.out.progress.degraded, 4);
    assert_int_equal(c.out.progress.unavailable, 1);
    assert_int_equal(c.out.progress.protected_parts, 7);
    assert_int_equal(c.out.progress.waiting, 4);
    assert_int_equal(c.out.progress.copying, 0);
    c.in.now_ms = 60 * SEC;
    assert_int_equal(round_apply(m, &c), 4);
    round_apply(m, &c);
    assert_int_equal(c.out.progress.copying, 4);
    assert_int_equal(c.out.progress.waiting, 0);
    buf_free(&b);
    ctx_free(&c);
    cmap_free(m);
}

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Property: random failures, returns, clean shutdowns, delays, catch-ups
 * and planning rounds never break the map's invariants (check_map after
 * every command), every planned command applies in order, an IN_SYNC
 * replica is removed only while a live one remains, and once every daemon
 * is back the cluster becomes fully protected within a few rounds. */
static void test_random_rounds(void **state)
{
    (void)state;
#define RND() xorshift(&rng)
    uint64_t rng = 0x2545f4914f6cdd1dULL;
    for (int trial = 0; trial < 60; trial++) {
        int nd = 3 + (int)(RND() % 6);
        cmap *m = cluster(nd, NULL);
        buf b;
        buf_init(&b);
        char text[96];
        int nspaces = 1 + (int)(RND() % 3);
        for (int s = 0; s < nspaces; s++) {
            int nparts = 1 + (int)(RND() % 12), tol = (int)(RND() % 3);
            snprintf(text, sizeof text, "space s%d key k create %d partitions tolerate %d failures",
                     s, nparts, tol);
            cmap_cmd_add_space(&b, text, strlen(text));
            apply_ok(m, &b);
        }
        ctx c;
        ctx_init(&c, 0, (uint32_t)(RND() % 3) * 30);
        c.in.max_copies_per_target = (uint32_t)(RND() % 4);
        c.in.max_copies_per_source = (uint32_t)(RND() % 4);
        for (int step = 0; step < 300; step++) {
            c.in.now_ms += (RND() % 20) * SEC;
            uint64_t d = 1 + RND() % (uint64_t)nd;
            const cmap_daemon *dm = cmap_daemon_find(m, d);
            switch (RND() % 6) {
            case 0: /* failure detected */
                if (c.in.nfailed < 16) c.failed[c.in.nfailed++] = d;
                break;
            case 1: /* a clean shutdown (handoff is the daemon's business) */
                if (dm->state == CMAP_D_ONLINE) set_state(m, d, CMAP_D_SHUTDOWN, c.in.now_ms);
                break;
            case 2: /* a return */
                if (dm->state != CMAP_D_ONLINE) set_state(m, d, CMAP_D_ONLINE, c.in.now_ms);
                break;
            case 3: /* catch-ups, some of them stale */
                report_all(m, &c);
                for (size_t i = 0; i < c.in.ncaught_up; i++)
                    if (RND() % 4 == 0) c.reports[i].epoch--;
                break;
            default:
                break;
            }
            /* remember the live in-sync replicas to check removals */
            cmap *before = cmap_clone(m);
            round_apply(m, &c);
            for (uint32_t s = 0; s < m->nspaces; s++)
                for (uint32_t p = 0; p < m->spaces[s].schema->partitions; p++) {
                    const cmap_partition *o = &before->spaces[s].parts[p];
                    const cmap_partition *n = &m->spaces[s].parts[p];
                    assert_true(n->epoch >= o->epoch);
                    for (uint32_t j = 0; j < o->nreplicas; j++) {
                        if (o->replicas[j].state != CMAP_R_IN_SYNC) continue;
                        bool kept = false;
                        for (uint32_t q = 0; q < n->nreplicas; q++)
                            kept |= n->replicas[q].daemon == o->replicas[j].daemon;
                        if (!kept) assert_int_not_equal(n->health, CMAP_H_UNAVAILABLE);
                    }
                }
            cmap_free(before);
        }
        /* everyone back: protection is restored */
        for (int i = 1; i <= nd; i++)
            if (cmap_daemon_find(m, (uint64_t)i)->state != CMAP_D_ONLINE)
                set_state(m, (uint64_t)i, CMAP_D_ONLINE, c.in.now_ms);
        c.in.now_ms += 3600 * SEC;
        int rounds = 0;
        while (!all_protected(m)) {
            report_all(m, &c);
            round_apply(m, &c);
            assert_true(++rounds < 50);
        }
        round_apply(m, &c);
        assert_true(c.out.fully_protected);
        buf_free(&b);
        ctx_free(&c);
        cmap_free(m);
    }
#undef RND
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_to_do),    cmocka_unit_test(test_failed_daemons),
        cmocka_unit_test(test_caught_up),        cmocka_unit_test(test_reprotect_timing),
        cmocka_unit_test(test_down_since),       cmocka_unit_test(test_returning_daemon),
        cmocka_unit_test(test_even_spread),      cmocka_unit_test(test_copy_limits),
        cmocka_unit_test(test_tolerate_zero),    cmocka_unit_test(test_unavailable_waits),
        cmocka_unit_test(test_suspect),          cmocka_unit_test(test_unattributed),
        cmocka_unit_test(test_progress),         cmocka_unit_test(test_random_rounds),
        cmocka_unit_test(test_shutdown_lease),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
