/* Unit tests for cmap: the cluster-map state machine (src/cmap.c).
 *
 * Every command is tested for success and for each refusal with its exact
 * message; a refusal must leave the map byte-for-byte unchanged (compared via
 * cmap_encode, which includes the version). Placement, determinism, id
 * non-reuse, the whole-map encoding and its decoder (truncations, byte flips,
 * targeted corruptions) and malformed commands are covered too. Run under
 * ASan/UBSan to check that bad input never crashes or leaks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <xxhash.h>

#include "cmap.h"

/* ---- helpers ------------------------------------------------------------ */

static const char *const PHONEBOOK = "space phonebook\n"
                                     "key username\n"
                                     "attributes first, last, int phone\n"
                                     "subspace first, last, phone\n"
                                     "create 8 partitions\n"
                                     "tolerate 2 failures\n";

/* Applies the command in b (then empties b); returns the status. */
static int run(cmap *m, buf *b, cmap_result *res)
{
    int rc = cmap_apply(m, b->data, b->len, res);
    assert_int_equal(rc, res->status);
    buf_reset(b);
    return rc;
}

static void encode_map(const cmap *m, buf *out)
{
    buf_init(out);
    cmap_encode(m, out);
}

/* Checks that the command in b is refused with exactly `msg` and that the map
 * (every byte of its encoding, version included) is unchanged. */
static void expect_refused(cmap *m, buf *b, const char *msg)
{
    buf before, after;
    encode_map(m, &before);
    cmap_result res;
    memset(&res, 0x55, sizeof res);
    assert_int_equal(run(m, b, &res), -1);
    assert_string_equal(res.msg, msg);
    encode_map(m, &after);
    assert_int_equal(before.len, after.len);
    assert_memory_equal(before.data, after.data, before.len);
    buf_free(&before);
    buf_free(&after);
}

/* Applies a command that must succeed, bumping the version by exactly 1. */
static uint64_t expect_ok(cmap *m, buf *b)
{
    uint64_t v = m->version;
    cmap_result res;
    int rc = run(m, b, &res);
    if (rc != 0) fail_msg("refused: %s", res.msg);
    assert_int_equal(res.msg[0], '\0');
    assert_int_equal(m->version, v + 1);
    return res.id;
}

static void bootstrap(cmap *m, uint64_t id, bool single)
{
    buf b;
    buf_init(&b);
    cmap_cmd_bootstrap(&b, id, single);
    expect_ok(m, &b);
    buf_free(&b);
}

static uint64_t add_daemon(cmap *m, const char *host, uint16_t port, uint64_t now)
{
    buf b;
    buf_init(&b);
    cmap_cmd_add_daemon(&b, host, port, (uint16_t)(port + 1), now);
    uint64_t id = expect_ok(m, &b);
    buf_free(&b);
    return id;
}

static uint32_t add_space(cmap *m, const char *text)
{
    buf b;
    buf_init(&b);
    cmap_cmd_add_space(&b, text, strlen(text));
    uint64_t id = expect_ok(m, &b);
    buf_free(&b);
    return (uint32_t)id;
}

static void set_state(cmap *m, uint64_t id, int state, uint64_t now)
{
    buf b;
    buf_init(&b);
    cmap_cmd_set_daemon_state(&b, id, state, now);
    expect_ok(m, &b);
    buf_free(&b);
}

static void set_config(cmap *m, const char *name, const char *value)
{
    buf b;
    buf_init(&b);
    cmap_cmd_set_config(&b, name, value);
    expect_ok(m, &b);
    buf_free(&b);
}

static void drop_space(cmap *m, const char *name)
{
    buf b;
    buf_init(&b);
    cmap_cmd_drop_space(&b, name, strlen(name));
    expect_ok(m, &b);
    buf_free(&b);
}

static uint64_t config(const cmap *m, const char *name)
{
    buf b;
    buf_init(&b);
    assert_int_equal(cmap_config_get(m, name, &b), 0);
    buf_putc(&b, '\0');
    uint64_t v = strtoull(b.data, NULL, 10);
    buf_free(&b);
    return v;
}

/* Checks the invariants of cmap.h (3 and 4) and the id rules directly. */
static void check_invariants(const cmap *m)
{
    for (uint32_t i = 0; i < m->ndaemons; i++) {
        assert_true(m->daemons[i].id >= 1 && m->daemons[i].id < m->next_daemon_id);
        if (i) assert_true(m->daemons[i].id > m->daemons[i - 1].id);
    }
    for (uint32_t s = 0; s < m->nspaces; s++) {
        const cmap_space *sp = &m->spaces[s];
        assert_true(sp->id >= 1 && sp->id < m->next_space_id);
        if (s) assert_true(sp->id > m->spaces[s - 1].id);
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            assert_true(pt->epoch >= 1);
            uint32_t in_sync = 0, live = 0;
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
            /* the primary is in sync whenever any replica is */
            if (in_sync) assert_int_equal(pt->replicas[0].state, CMAP_R_IN_SYNC);
            /* health counts in-sync replicas on ONLINE daemons */
            int want = live == 0                          ? CMAP_H_UNAVAILABLE
                       : live >= sp->schema->tolerate + 1 ? CMAP_H_PROTECTED
                                                          : CMAP_H_DEGRADED;
            assert_int_equal(pt->health, want);
            /* departed: distinct known non-replicas, none while protected */
            assert_true(pt->ndeparted <= CMAP_MAX_REPLICAS);
            if (want == CMAP_H_PROTECTED) assert_int_equal(pt->ndeparted, 0);
            for (uint32_t j = 0; j < pt->ndeparted; j++) {
                assert_non_null(cmap_daemon_find(m, pt->departed[j]));
                for (uint32_t q = 0; q < pt->nreplicas; q++)
                    assert_true(pt->replicas[q].daemon != pt->departed[j]);
                for (uint32_t q = 0; q < j; q++)
                    assert_true(pt->departed[q] != pt->departed[j]);
            }
            for (uint32_t j = pt->ndeparted; j < CMAP_MAX_REPLICAS; j++)
                assert_int_equal(pt->departed[j], 0);
        }
    }
}

/* A map with a bit of everything: settings changed, daemons in every state,
 * a dropped space, spaces of different shapes. */
static cmap *rich_map(void)
{
    cmap *m = cmap_new();
    bootstrap(m, 0x1234567890abcdefULL, false);
    set_config(m, "ping_timeout_ms", "5000");
    set_config(m, "log_retention", "77");
    for (int i = 0; i < 5; i++)
        add_daemon(m, "10.0.0.1", (uint16_t)(2012 + 10 * i), 100 + i);
    add_daemon(m, "db-host.example", 2012, 500);
    add_space(m, PHONEBOOK);
    add_space(m, "space kv key k attributes v create 3 partitions tolerate 0 failures");
    drop_space(m, "kv");
    add_space(m, "space kv2 key k attributes float f, int i create 16 partitions");
    set_state(m, 2, CMAP_D_SUSPECT, 1000);
    set_state(m, 3, CMAP_D_OFFLINE, 1001);
    set_state(m, 4, CMAP_D_SHUTDOWN, 1002);
    set_state(m, 5, CMAP_D_RETIRED, 1003);
    check_invariants(m);
    return m;
}

/* Deterministic pseudo-random numbers for the mutation tests. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void roundtrip(const cmap *m);

/* ---- bootstrap ---------------------------------------------------------- */

static void test_new_map(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    assert_int_equal(m->cluster_id, 0);
    assert_int_equal(m->version, 0);
    assert_int_equal(m->nspaces, 0);
    assert_int_equal(m->ndaemons, 0);
    cmap_free(m);
    cmap_free(NULL);
}

static void test_bootstrap(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 77, false);
    assert_int_equal(m->cluster_id, 77);
    assert_int_equal(m->version, 1);
    assert_int_equal(m->settings.heartbeat_ms, 250);
    assert_int_equal(m->settings.ping_timeout_ms, 3000);
    assert_int_equal(m->settings.reprotect_delay_s, 60);
    assert_int_equal(m->settings.log_retention, 1000000);
    assert_false(m->settings.single_node);
    assert_int_equal(m->next_space_id, 1);
    assert_int_equal(m->next_daemon_id, 1);
    assert_int_equal(config(m, "heartbeat_ms"), 250);
    assert_int_equal(config(m, "ping_timeout_ms"), 3000);
    assert_int_equal(config(m, "reprotect_delay_s"), 60);
    assert_int_equal(config(m, "log_retention"), 1000000);
    cmap_free(m);

    m = cmap_new();
    bootstrap(m, UINT64_MAX, true);
    assert_true(m->settings.single_node);
    assert_int_equal(m->cluster_id, UINT64_MAX);
    cmap_free(m);
}

static void test_bootstrap_refused(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_cmd_bootstrap(&b, 0, false);
    expect_refused(m, &b, "ERR cluster id must not be 0");
    bootstrap(m, 5, false);
    cmap_cmd_bootstrap(&b, 6, true);
    expect_refused(m, &b, "ERR cluster already bootstrapped");
    assert_int_equal(m->cluster_id, 5);
    assert_false(m->settings.single_node);
    /* the single_node byte is 0 or 1; anything else is malformed */
    cmap_cmd_bootstrap(&b, 9, true);
    b.data[b.len - 1] = 2;
    cmap *fresh = cmap_new();
    expect_refused(fresh, &b, "ERR malformed command");
    cmap_free(fresh);
    buf_free(&b);
    cmap_free(m);
}

static void test_not_bootstrapped(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_cmd_set_config(&b, "heartbeat_ms", "100");
    expect_refused(m, &b, "ERR cluster not bootstrapped");
    cmap_cmd_add_space(&b, PHONEBOOK, strlen(PHONEBOOK));
    expect_refused(m, &b, "ERR cluster not bootstrapped");
    cmap_cmd_drop_space(&b, "phonebook", 9);
    expect_refused(m, &b, "ERR cluster not bootstrapped");
    cmap_cmd_add_daemon(&b, "127.0.0.1", 2012, 12012, 1);
    expect_refused(m, &b, "ERR cluster not bootstrapped");
    cmap_cmd_set_daemon_state(&b, 1, CMAP_D_OFFLINE, 1);
    expect_refused(m, &b, "ERR cluster not bootstrapped");
    assert_int_equal(m->version, 0);
    assert_int_equal(m->ndaemons, 0);
    buf_free(&b);
    cmap_free(m);
}

/* ---- settings ----------------------------------------------------------- */

static void test_set_config(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    set_config(m, "heartbeat_ms", "100");
    assert_int_equal(m->settings.heartbeat_ms, 100);
    set_config(m, "ping_timeout_ms", "201");
    assert_int_equal(m->settings.ping_timeout_ms, 201);
    set_config(m, "reprotect_delay_s", "0");
    assert_int_equal(m->settings.reprotect_delay_s, 0);
    set_config(m, "reprotect_delay_s", "604800");
    assert_int_equal(m->settings.reprotect_delay_s, 604800);
    set_config(m, "log_retention", "1000000000000");
    assert_int_equal(m->settings.log_retention, 1000000000000ULL);
    set_config(m, "log_retention", "0");
    assert_int_equal(m->settings.log_retention, 0);
    set_config(m, "ping_timeout_ms", "3600000");
    set_config(m, "heartbeat_ms", "60000");
    assert_int_equal(m->settings.heartbeat_ms, 60000);
    set_config(m, "heartbeat_ms", "10");
    set_config(m, "ping_timeout_ms", "100");
    assert_int_equal(config(m, "ping_timeout_ms"), 100);
    /* names are matched without regard to case, like Redis CONFIG */
    set_config(m, "HEARTBEAT_MS", "20");
    assert_int_equal(m->settings.heartbeat_ms, 20);
    assert_int_equal(config(m, "Heartbeat_Ms"), 20);
    /* leading zeros are still plain decimal; the same value is a change too */
    set_config(m, "reprotect_delay_s", "0042");
    assert_int_equal(m->settings.reprotect_delay_s, 42);
    set_config(m, "reprotect_delay_s", "42");
    assert_int_equal(m->version, 14);
    cmap_free(m);
}

static void test_set_config_refused(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    buf b;
    buf_init(&b);
    cmap_cmd_set_config(&b, "foo", "1");
    expect_refused(m, &b, "ERR unknown setting 'foo'");
    cmap_cmd_set_config(&b, "single_node", "1");
    expect_refused(m, &b, "ERR unknown setting 'single_node'");
    cmap_cmd_set_config(&b, "", "1");
    expect_refused(m, &b, "ERR unknown setting ''");
    cmap_cmd_set_config(&b, "bad\r\nname", "1");
    expect_refused(m, &b, "ERR unknown setting 'bad??name'");
    char longname[200];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cmap_cmd_set_config(&b, longname, "1");
    char want[160];
    snprintf(want, sizeof want, "ERR unknown setting '%.64s...'", longname);
    expect_refused(m, &b, want);

    static const char *const bad_ping[] = {"abc",
                                           "",
                                           "-1",
                                           "+5",
                                           " 500",
                                           "500 ",
                                           "1.5",
                                           "1e4",
                                           "0x100",
                                           "99",
                                           "3600001",
                                           "99999999999999999999",
                                           "999999999999999999999999",
                                           "18446744073709551616"};
    for (size_t i = 0; i < sizeof bad_ping / sizeof bad_ping[0]; i++) {
        cmap_cmd_set_config(&b, "ping_timeout_ms", bad_ping[i]);
        snprintf(want, sizeof want, "ERR invalid value '%s' for ping_timeout_ms (100..3600000)",
                 bad_ping[i]);
        expect_refused(m, &b, want);
    }
    cmap_cmd_set_config(&b, "heartbeat_ms", "9");
    expect_refused(m, &b, "ERR invalid value '9' for heartbeat_ms (10..60000)");
    cmap_cmd_set_config(&b, "heartbeat_ms", "60001");
    expect_refused(m, &b, "ERR invalid value '60001' for heartbeat_ms (10..60000)");
    cmap_cmd_set_config(&b, "reprotect_delay_s", "604801");
    expect_refused(m, &b, "ERR invalid value '604801' for reprotect_delay_s (0..604800)");
    cmap_cmd_set_config(&b, "log_retention", "1000000000001");
    expect_refused(m, &b, "ERR invalid value '1000000000001' for log_retention (0..1000000000000)");
    cmap_cmd_set_config(&b, "log_retention", "1\n");
    expect_refused(m, &b, "ERR invalid value '1?' for log_retention (0..1000000000000)");

    /* the cross rule, from both sides; exactly twice is not enough */
    cmap_cmd_set_config(&b, "ping_timeout_ms", "500");
    expect_refused(m, &b, "ERR ping_timeout_ms must exceed twice heartbeat_ms (250)");
    cmap_cmd_set_config(&b, "ping_timeout_ms", "100");
    expect_refused(m, &b, "ERR ping_timeout_ms must exceed twice heartbeat_ms (250)");
    set_config(m, "ping_timeout_ms", "501");
    cmap_cmd_set_config(&b, "heartbeat_ms", "251");
    expect_refused(m, &b, "ERR heartbeat_ms must be less than half of ping_timeout_ms (501)");
    cmap_cmd_set_config(&b, "heartbeat_ms", "60000");
    expect_refused(m, &b, "ERR heartbeat_ms must be less than half of ping_timeout_ms (501)");
    assert_int_equal(m->settings.heartbeat_ms, 250);
    assert_int_equal(m->settings.ping_timeout_ms, 501);
    buf_free(&b);
    cmap_free(m);
}

static void test_config_get_names(void **state)
{
    (void)state;
    const char *const *names = cmap_config_names();
    size_t n = 0;
    while (names[n])
        n++;
    assert_int_equal(n, 5);
    assert_string_equal(names[4], "sync");
    assert_string_equal(names[0], "heartbeat_ms");
    assert_string_equal(names[1], "ping_timeout_ms");
    assert_string_equal(names[2], "reprotect_delay_s");
    assert_string_equal(names[3], "log_retention");

    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    buf b;
    buf_init(&b);
    static const char *const want[] = {"250", "3000", "60", "1000000", "any"};
    for (size_t i = 0; i < n; i++) {
        buf_reset(&b);
        assert_int_equal(cmap_config_get(m, names[i], &b), 0);
        assert_int_equal(b.len, strlen(want[i]));
        assert_memory_equal(b.data, want[i], b.len);
    }
    /* appends, and leaves out alone for an unknown name */
    buf_reset(&b);
    buf_puts(&b, "x=");
    assert_int_equal(cmap_config_get(m, "reprotect_delay_s", &b), 0);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "x=60", 4);
    assert_int_equal(cmap_config_get(m, "nope", &b), -1);
    assert_int_equal(cmap_config_get(m, "", &b), -1);
    assert_int_equal(cmap_config_get(m, "heartbeat_msx", &b), -1);
    assert_int_equal(b.len, 4);
    buf_free(&b);
    cmap_free(m);
}

/* ---- spaces ------------------------------------------------------------- */

static void test_add_space(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < 3; i++)
        add_daemon(m, "127.0.0.1", (uint16_t)(2012 + i * 2), 0);
    uint32_t id = add_space(m, PHONEBOOK);
    assert_int_equal(id, 1);
    assert_int_equal(m->nspaces, 1);
    assert_int_equal(m->next_space_id, 2);
    const cmap_space *sp = cmap_space_find(m, "phonebook", 9);
    assert_non_null(sp);
    assert_ptr_equal(sp, cmap_space_by_id(m, 1));
    assert_int_equal(sp->id, 1);
    assert_string_equal(sp->schema->name, "phonebook");
    assert_int_equal(sp->schema->partitions, 8);
    assert_int_equal(sp->schema->tolerate, 2);
    for (uint32_t p = 0; p < 8; p++) {
        const cmap_partition *pt = &sp->parts[p];
        assert_int_equal(pt->epoch, 1);
        assert_int_equal(pt->nreplicas, 3);
        assert_int_equal(pt->health, CMAP_H_PROTECTED);
        for (uint32_t j = 0; j < 3; j++)
            assert_int_equal(pt->replicas[j].state, CMAP_R_IN_SYNC);
    }
    check_invariants(m);

    /* a one-line description, as redis-cli users type it */
    uint32_t id2 = add_space(m, "space kv key k attributes v");
    assert_int_equal(id2, 2);
    sp = cmap_space_find(m, "kv", 2);
    assert_non_null(sp);
    assert_int_equal(sp->schema->partitions, 8);
    assert_int_equal(sp->schema->tolerate, 1);
    assert_int_equal(sp->parts[0].nreplicas, 2);
    assert_int_equal(m->spaces[0].id, 1); /* creation order */
    assert_int_equal(m->spaces[1].id, 2);
    check_invariants(m);
    cmap_free(m);
}

static void test_add_space_refused(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    buf b;
    buf_init(&b);

    /* no daemon yet */
    cmap_cmd_add_space(&b, PHONEBOOK, strlen(PHONEBOOK));
    expect_refused(m, &b, "ERR space 'phonebook' needs 3 daemons (tolerate 2 failures), 0 online");
    uint64_t d1 = add_daemon(m, "h", 1, 0);
    cmap_cmd_add_space(&b, PHONEBOOK, strlen(PHONEBOOK));
    expect_refused(m, &b, "ERR space 'phonebook' needs 3 daemons (tolerate 2 failures), 1 online");
    const char *one = "space one key k tolerate 1 failures";
    cmap_cmd_add_space(&b, one, strlen(one));
    expect_refused(m, &b, "ERR space 'one' needs 2 daemons (tolerate 1 failure), 1 online");
    /* only ONLINE daemons count */
    uint64_t d2 = add_daemon(m, "h", 2, 0);
    add_daemon(m, "h", 3, 0);
    set_state(m, d2, CMAP_D_SUSPECT, 5);
    cmap_cmd_add_space(&b, PHONEBOOK, strlen(PHONEBOOK));
    expect_refused(m, &b, "ERR space 'phonebook' needs 3 daemons (tolerate 2 failures), 2 online");
    set_state(m, d1, CMAP_D_OFFLINE, 6);
    set_state(m, d2, CMAP_D_SHUTDOWN, 6);
    const char *zero = "space z key k tolerate 0 failures";
    add_space(m, zero);
    set_state(m, 3, CMAP_D_RETIRED, 7);
    const char *zero2 = "space z2 key k tolerate 0 failures";
    cmap_cmd_add_space(&b, zero2, strlen(zero2));
    expect_refused(m, &b, "ERR space 'z2' needs 1 daemon (tolerate 0 failures), 0 online");
    set_state(m, d1, CMAP_D_ONLINE, 8);
    set_state(m, d2, CMAP_D_ONLINE, 8);
    add_daemon(m, "h", 4, 0);

    /* the parser's message, whole */
    const char *bad = "space phonebook\nkey username\nattributes first, last, integer phone\n";
    cmap_cmd_add_space(&b, bad, strlen(bad));
    expect_refused(m, &b, "ERR line 3: unknown type 'integer' for attribute 'phone'");
    static const char *const bad_texts[] = {"",
                                            "spaec x",
                                            "space 9x key k",
                                            "space a key k create 0 partitions",
                                            "space a key k tolerate 99 failures",
                                            "space a key k attributes x, x"};
    for (size_t i = 0; i < sizeof bad_texts / sizeof bad_texts[0]; i++) {
        char err[256];
        space_schema *s = NULL;
        assert_int_equal(space_parse(bad_texts[i], strlen(bad_texts[i]), &s, err, sizeof err), -1);
        char want[300];
        snprintf(want, sizeof want, "ERR %s", err);
        cmap_cmd_add_space(&b, bad_texts[i], strlen(bad_texts[i]));
        expect_refused(m, &b, want);
    }

    /* names are unique; case matters */
    add_space(m, PHONEBOOK);
    cmap_cmd_add_space(&b, PHONEBOOK, strlen(PHONEBOOK));
    expect_refused(m, &b, "ERR space 'phonebook' already exists");
    cmap_cmd_add_space(&b, zero, strlen(zero));
    expect_refused(m, &b, "ERR space 'z' already exists");
    add_space(m, "space Phonebook key k");
    check_invariants(m);
    buf_free(&b);
    cmap_free(m);
}

static void test_too_many_spaces(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    add_daemon(m, "h", 1, 0);
    char text[128];
    for (int i = 0; i < CMAP_MAX_SPACES; i++) {
        snprintf(text, sizeof text, "space s%d key k create 1 partitions tolerate 0 failures", i);
        assert_int_equal(add_space(m, text), (uint32_t)i + 1);
    }
    assert_int_equal(m->nspaces, CMAP_MAX_SPACES);
    buf b;
    buf_init(&b);
    const char *more = "space more key k create 1 partitions tolerate 0 failures";
    cmap_cmd_add_space(&b, more, strlen(more));
    expect_refused(m, &b, "ERR too many spaces (at most 1024)");
    /* dropping one makes room again, under a fresh id */
    drop_space(m, "s7");
    assert_int_equal(add_space(m, more), CMAP_MAX_SPACES + 1);
    assert_null(cmap_space_by_id(m, 8));
    assert_ptr_equal(cmap_space_find(m, "more", 4), &m->spaces[CMAP_MAX_SPACES - 1]);
    buf_free(&b);
    cmap_free(m);
}

/* Id counters that reached their type's end refuse rather than wrap (the
 * counters are set directly: no test could apply 2^32 commands). */
static void test_ids_exhausted(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    add_daemon(m, "h", 1, 0);
    m->next_space_id = UINT32_MAX - 1;
    assert_int_equal(add_space(m, "space a key k tolerate 0 failures"), UINT32_MAX - 1);
    buf b;
    buf_init(&b);
    cmap_cmd_add_space(&b, "space b key k tolerate 0 failures", 33);
    expect_refused(m, &b, "ERR space ids exhausted");
    m->next_daemon_id = UINT64_MAX - 1;
    assert_int_equal(add_daemon(m, "h", 2, 0), UINT64_MAX - 1);
    cmap_cmd_add_daemon(&b, "h", 3, 4, 0);
    expect_refused(m, &b, "ERR daemon ids exhausted");
    assert_ptr_equal(cmap_daemon_find(m, UINT64_MAX - 1), &m->daemons[1]);
    roundtrip(m);
    buf_free(&b);
    cmap_free(m);
}

static void test_placement_formula(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    uint64_t ids[6];
    for (int i = 0; i < 6; i++)
        ids[i] = add_daemon(m, "h", (uint16_t)(100 + i), 0);
    set_state(m, ids[1], CMAP_D_OFFLINE, 1);
    set_state(m, ids[4], CMAP_D_SUSPECT, 1);
    uint64_t cand[4] = {ids[0], ids[2], ids[3], ids[5]}; /* ONLINE, in id order */
    add_space(m, "space a key k create 1 partitions tolerate 0 failures");
    uint32_t sid = add_space(m, "space b key k create 10 partitions tolerate 2 failures");
    assert_int_equal(sid, 2);
    const cmap_space *sp = cmap_space_by_id(m, sid);
    for (uint32_t p = 0; p < 10; p++) {
        assert_int_equal(sp->parts[p].nreplicas, 3);
        for (uint32_t j = 0; j < 3; j++)
            assert_int_equal(sp->parts[p].replicas[j].daemon, cand[(p + sid + j) % 4]);
    }
    check_invariants(m);
    cmap_free(m);
}

static void test_placement_spread(void **state)
{
    (void)state;
    /* the brief's example: 3 daemons, 8 partitions, tolerate 1 */
    for (uint32_t n = 1; n <= 9; n++) {
        for (uint32_t tol = 0; tol < n && tol <= SPACE_MAX_TOLERATE; tol++) {
            for (uint32_t parts = 1; parts <= 20; parts += 7) {
                cmap *m = cmap_new();
                bootstrap(m, 1, false);
                for (uint32_t i = 0; i < n; i++)
                    add_daemon(m, "h", (uint16_t)(1 + i), 0);
                char text[128];
                snprintf(text, sizeof text,
                         "space s key k create %u partitions tolerate %u failures", parts, tol);
                const cmap_space *sp = cmap_space_by_id(m, add_space(m, text));
                uint32_t primaries[10] = {0}, copies[10] = {0};
                for (uint32_t p = 0; p < parts; p++) {
                    const cmap_partition *pt = &sp->parts[p];
                    assert_int_equal(pt->nreplicas, tol + 1);
                    assert_int_equal(pt->health, CMAP_H_PROTECTED);
                    primaries[pt->replicas[0].daemon]++;
                    for (uint32_t j = 0; j < pt->nreplicas; j++)
                        copies[pt->replicas[j].daemon]++;
                }
                check_invariants(m); /* distinct replicas */
                uint32_t ceil_p = (parts + n - 1) / n, floor_p = parts / n;
                uint32_t total = parts * (tol + 1);
                uint32_t sum = 0;
                for (uint32_t d = 1; d <= n; d++) {
                    assert_true(primaries[d] <= ceil_p && primaries[d] >= floor_p);
                    assert_true(copies[d] <= (tol + 1) * ceil_p);
                    sum += copies[d];
                }
                assert_int_equal(sum, total);
                cmap_free(m);
            }
        }
    }
    /* and explicitly: 3 daemons, 8 partitions, tolerate 1 */
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < 3; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 0);
    const cmap_space *sp =
        cmap_space_by_id(m, add_space(m, "space s key k create 8 partitions tolerate 1 failures"));
    uint32_t primaries[4] = {0};
    for (uint32_t p = 0; p < 8; p++) {
        assert_int_equal(sp->parts[p].nreplicas, 2);
        assert_true(sp->parts[p].replicas[0].daemon != sp->parts[p].replicas[1].daemon);
        primaries[sp->parts[p].replicas[0].daemon]++;
    }
    for (int d = 1; d <= 3; d++)
        assert_true(primaries[d] <= 3 && primaries[d] >= 2);
    cmap_free(m);
}

static void test_single_node(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, true);
    buf b;
    buf_init(&b);
    cmap_cmd_add_space(&b, PHONEBOOK, strlen(PHONEBOOK));
    expect_refused(m, &b, "ERR space 'phonebook' needs 3 daemons (tolerate 2 failures), 0 online");
    uint64_t d = add_daemon(m, "127.0.0.1", 2012, 0);
    const cmap_space *sp = cmap_space_by_id(m, add_space(m, PHONEBOOK));
    for (uint32_t p = 0; p < 8; p++) {
        assert_int_equal(sp->parts[p].nreplicas, 1);
        assert_int_equal(sp->parts[p].replicas[0].daemon, d);
        assert_int_equal(sp->parts[p].replicas[0].state, CMAP_R_IN_SYNC);
        assert_int_equal(sp->parts[p].health, CMAP_H_DEGRADED);
    }
    sp = cmap_space_by_id(m, add_space(m, "space z key k tolerate 0 failures"));
    for (uint32_t p = 0; p < 8; p++)
        assert_int_equal(sp->parts[p].health, CMAP_H_PROTECTED);
    /* with two daemons and tolerate 2: two replicas, still degraded */
    add_daemon(m, "127.0.0.1", 2013, 0);
    sp = cmap_space_by_id(m, add_space(m, "space t key k tolerate 2 failures"));
    for (uint32_t p = 0; p < 8; p++) {
        assert_int_equal(sp->parts[p].nreplicas, 2);
        assert_int_equal(sp->parts[p].health, CMAP_H_DEGRADED);
    }
    check_invariants(m);
    buf_free(&b);
    cmap_free(m);
}

static void test_drop_space(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < 3; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 0);
    buf b;
    buf_init(&b);
    cmap_cmd_drop_space(&b, "phonebook", 9);
    expect_refused(m, &b, "NOSPACE no such space 'phonebook'");
    assert_int_equal(add_space(m, PHONEBOOK), 1);
    assert_int_equal(add_space(m, "space kv key k"), 2);
    assert_int_equal(add_space(m, "space other key k"), 3);
    /* exact byte match only */
    cmap_cmd_drop_space(&b, "phone", 5);
    expect_refused(m, &b, "NOSPACE no such space 'phone'");
    cmap_cmd_drop_space(&b, "PHONEBOOK", 9);
    expect_refused(m, &b, "NOSPACE no such space 'PHONEBOOK'");
    cmap_cmd_drop_space(&b, "phonebook\0", 10);
    expect_refused(m, &b, "NOSPACE no such space 'phonebook?'");
    cmap_cmd_drop_space(&b, "", 0);
    expect_refused(m, &b, "NOSPACE no such space ''");
    assert_null(cmap_space_find(m, "phone", 5));
    assert_null(cmap_space_find(m, "phonebook\0", 10));
    assert_null(cmap_space_find(m, "phonebookx", 10));

    drop_space(m, "kv");
    assert_null(cmap_space_find(m, "kv", 2));
    assert_null(cmap_space_by_id(m, 2));
    assert_int_equal(m->nspaces, 2);
    assert_int_equal(m->spaces[0].id, 1); /* order kept */
    assert_int_equal(m->spaces[1].id, 3);
    cmap_cmd_drop_space(&b, "kv", 2);
    expect_refused(m, &b, "NOSPACE no such space 'kv'");
    /* ids are never reused: same name again gets a new id */
    assert_int_equal(add_space(m, "space kv key k"), 4);
    assert_int_equal(cmap_space_find(m, "kv", 2)->id, 4);
    drop_space(m, "phonebook");
    drop_space(m, "other");
    drop_space(m, "kv");
    assert_int_equal(m->nspaces, 0);
    assert_int_equal(add_space(m, PHONEBOOK), 5);
    check_invariants(m);
    buf_free(&b);
    cmap_free(m);
}

/* ---- daemons ------------------------------------------------------------ */

static void test_add_daemon(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    uint64_t a = add_daemon(m, "127.0.0.1", 2012, 1000);
    uint64_t b2 = add_daemon(m, "127.0.0.1", 2013, 2000);
    uint64_t c = add_daemon(m, "::1", 2012, 3000);
    assert_int_equal(a, 1);
    assert_int_equal(b2, 2);
    assert_int_equal(c, 3);
    assert_int_equal(m->next_daemon_id, 4);
    const cmap_daemon *d = cmap_daemon_find(m, 2);
    assert_non_null(d);
    assert_string_equal(d->host, "127.0.0.1");
    assert_int_equal(d->port, 2013);
    assert_int_equal(d->peer_port, 2014);
    assert_int_equal(d->state, CMAP_D_ONLINE);
    assert_int_equal(d->since_ms, 2000);
    assert_null(cmap_daemon_find(m, 0));
    assert_null(cmap_daemon_find(m, 4));
    assert_ptr_equal(cmap_daemon_find(m, 1), &m->daemons[0]);
    assert_ptr_equal(cmap_daemon_find(m, 3), &m->daemons[2]);

    /* a host of exactly CMAP_MAX_HOST bytes is fine */
    char host[CMAP_MAX_HOST + 2];
    memset(host, 'a', CMAP_MAX_HOST);
    host[CMAP_MAX_HOST] = '\0';
    uint64_t e = add_daemon(m, host, 1, 0);
    assert_string_equal(cmap_daemon_find(m, e)->host, host);

    buf b;
    buf_init(&b);
    host[CMAP_MAX_HOST] = 'a';
    host[CMAP_MAX_HOST + 1] = '\0';
    cmap_cmd_add_daemon(&b, host, 1, 2, 0);
    expect_refused(m, &b, "ERR daemon host is longer than 64 bytes");
    cmap_cmd_add_daemon(&b, "", 1, 2, 0);
    expect_refused(m, &b, "ERR daemon host must not be empty");
    cmap_cmd_add_daemon(&b, "bad host", 1, 2, 0);
    expect_refused(m, &b, "ERR invalid daemon host 'bad host'");
    cmap_cmd_add_daemon(&b, "bad\x7fhost", 1, 2, 0);
    expect_refused(m, &b, "ERR invalid daemon host 'bad?host'");
    /* an embedded NUL (only a hand-made command can carry one) */
    buf_putc(&b, 1);
    buf_putc(&b, CMAP_CMD_ADD_DAEMON);
    buf_put_u32be(&b, 3);
    buf_append(&b, "a\0b", 3);
    buf_put_u16be(&b, 1);
    buf_put_u16be(&b, 2);
    buf_put_u64be(&b, 0);
    expect_refused(m, &b, "ERR invalid daemon host 'a?b'");
    cmap_cmd_add_daemon(&b, "h", 0, 2, 0);
    expect_refused(m, &b, "ERR daemon port must not be 0");
    cmap_cmd_add_daemon(&b, "h", 1, 0, 0);
    expect_refused(m, &b, "ERR daemon peer port must not be 0");
    cmap_cmd_add_daemon(&b, "127.0.0.1", 2012, 9999, 5);
    expect_refused(m, &b, "ERR daemon at 127.0.0.1:2012 is already online (id 1)");
    set_state(m, a, CMAP_D_SUSPECT, 10);
    cmap_cmd_add_daemon(&b, "127.0.0.1", 2012, 9999, 5);
    expect_refused(m, &b, "ERR daemon at 127.0.0.1:2012 is already online (id 1)");
    /* once the old one is offline, a new daemon may take the address */
    set_state(m, a, CMAP_D_OFFLINE, 11);
    uint64_t f = add_daemon(m, "127.0.0.1", 2012, 12);
    assert_int_equal(f, 5);
    check_invariants(m);
    buf_free(&b);
    cmap_free(m);
}

static void test_too_many_daemons(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < CMAP_MAX_DAEMONS; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 0);
    buf b;
    buf_init(&b);
    cmap_cmd_add_daemon(&b, "other", 1, 2, 0);
    expect_refused(m, &b, "ERR too many daemons (at most 1024)");
    assert_ptr_equal(cmap_daemon_find(m, 777), &m->daemons[776]);
    assert_null(cmap_daemon_find(m, CMAP_MAX_DAEMONS + 1));
    buf_free(&b);
    cmap_free(m);
}

static void test_set_daemon_state(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < 3; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 100);
    add_space(m, "space s key k create 4 partitions tolerate 2 failures");

    set_state(m, 2, CMAP_D_OFFLINE, 200);
    const cmap_daemon *d = cmap_daemon_find(m, 2);
    assert_int_equal(d->state, CMAP_D_OFFLINE);
    assert_int_equal(d->since_ms, 200);
    /* replicas and epochs are not touched (failover is a separate decision,
     * REPLICA_FAILED), but health counts the daemon's state */
    const cmap_space *sp = cmap_space_by_id(m, 1);
    for (uint32_t p = 0; p < 4; p++) {
        assert_int_equal(sp->parts[p].nreplicas, 3);
        assert_int_equal(sp->parts[p].epoch, 1);
        assert_int_equal(sp->parts[p].health, CMAP_H_DEGRADED);
    }
    check_invariants(m);
    /* the same state again applies (version moves) but is no state change */
    set_state(m, 2, CMAP_D_OFFLINE, 300);
    assert_int_equal(cmap_daemon_find(m, 2)->since_ms, 200);
    set_state(m, 2, CMAP_D_SUSPECT, 400);
    set_state(m, 2, CMAP_D_SHUTDOWN, 500);
    set_state(m, 2, CMAP_D_ONLINE, 600);
    d = cmap_daemon_find(m, 2);
    assert_int_equal(d->state, CMAP_D_ONLINE);
    assert_int_equal(d->since_ms, 600);
    for (uint32_t p = 0; p < 4; p++)
        assert_int_equal(sp->parts[p].health, CMAP_H_PROTECTED);
    assert_int_equal(m->version, 1 + 3 + 1 + 5);

    buf b;
    buf_init(&b);
    cmap_cmd_set_daemon_state(&b, 9, CMAP_D_OFFLINE, 1);
    expect_refused(m, &b, "ERR no such daemon 9");
    cmap_cmd_set_daemon_state(&b, 0, CMAP_D_OFFLINE, 1);
    expect_refused(m, &b, "ERR no such daemon 0");
    cmap_cmd_set_daemon_state(&b, UINT64_MAX, CMAP_D_OFFLINE, 1);
    expect_refused(m, &b, "ERR no such daemon 18446744073709551615");
    static const int bad_states[] = {0, CMAP_D_RETIRED + 1, -1, 256 + CMAP_D_ONLINE, 1 << 24};
    for (size_t i = 0; i < sizeof bad_states / sizeof bad_states[0]; i++) {
        cmap_cmd_set_daemon_state(&b, 1, bad_states[i], 1);
        expect_refused(m, &b, "ERR malformed command");
        cmap_cmd_set_daemon_state(&b, 99, bad_states[i], 1); /* malformed before unknown id */
        expect_refused(m, &b, "ERR malformed command");
    }

    set_state(m, 3, CMAP_D_RETIRED, 700);
    for (int s = CMAP_D_ONLINE; s <= CMAP_D_RETIRED; s++) {
        cmap_cmd_set_daemon_state(&b, 3, s, 800);
        expect_refused(m, &b, "ERR daemon 3 is retired");
    }
    assert_int_equal(cmap_daemon_find(m, 3)->since_ms, 700);

    /* a daemon cannot come back live where another live daemon now is */
    set_state(m, 1, CMAP_D_OFFLINE, 900);
    uint64_t n = add_daemon(m, "h", 1, 901);
    cmap_cmd_set_daemon_state(&b, 1, CMAP_D_ONLINE, 902);
    expect_refused(m, &b, "ERR daemon at h:1 is already online (id 4)");
    cmap_cmd_set_daemon_state(&b, 1, CMAP_D_SUSPECT, 902);
    expect_refused(m, &b, "ERR daemon at h:1 is already online (id 4)");
    set_state(m, 1, CMAP_D_SHUTDOWN, 903);
    set_state(m, n, CMAP_D_OFFLINE, 904);
    set_state(m, 1, CMAP_D_ONLINE, 905);
    /* a live daemon may move between live states at its own address */
    set_state(m, 1, CMAP_D_SUSPECT, 906);
    set_state(m, 1, CMAP_D_ONLINE, 907);
    check_invariants(m);
    buf_free(&b);
    cmap_free(m);
}

/* ---- replica commands (failure handling) -------------------------------- */

/* A bootstrapped map with daemons 1..n (all ONLINE at "h":1..n) and one space
 * (id 1) described by `text`. */
static cmap *cluster(int n, const char *text)
{
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < n; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 10);
    assert_int_equal(add_space(m, text), 1);
    return m;
}

static cmap_partition *part(cmap *m, uint32_t sid, uint32_t p)
{
    const cmap_space *sp = cmap_space_by_id(m, sid);
    assert_non_null(sp);
    assert_true(p < sp->schema->partitions);
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

static const char *departed_str(const cmap_partition *pt, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < pt->ndeparted; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%llu", i ? " " : "",
                              (unsigned long long)pt->departed[i]);
    return out;
}

/* Checks a partition's replicas, departed list, epoch and health. */
static void expect_part(cmap *m, uint32_t sid, uint32_t p, const char *replicas,
                        const char *departed, uint64_t epoch, int health)
{
    char s[128];
    const cmap_partition *pt = part(m, sid, p);
    assert_string_equal(replicas_str(pt, s, sizeof s), replicas);
    assert_string_equal(departed_str(pt, s, sizeof s), departed);
    assert_int_equal(pt->epoch, epoch);
    assert_int_equal(pt->health, health);
}

static void replica_failed(cmap *m, uint64_t d)
{
    buf b;
    buf_init(&b);
    cmap_cmd_replica_failed(&b, d);
    expect_ok(m, &b);
    buf_free(&b);
    check_invariants(m);
}

static void add_replica(cmap *m, uint32_t sid, uint32_t p, uint64_t d)
{
    buf b;
    buf_init(&b);
    cmap_cmd_add_replica(&b, sid, p, d);
    expect_ok(m, &b);
    buf_free(&b);
    check_invariants(m);
}

static void in_sync(cmap *m, uint32_t sid, uint32_t p, uint64_t d, uint64_t epoch)
{
    buf b;
    buf_init(&b);
    cmap_cmd_replica_in_sync(&b, sid, p, d, epoch);
    expect_ok(m, &b);
    buf_free(&b);
    check_invariants(m);
}

static void handoff(cmap *m, uint32_t sid, uint32_t p, uint64_t d)
{
    buf b;
    buf_init(&b);
    cmap_cmd_handoff(&b, sid, p, d);
    expect_ok(m, &b);
    buf_free(&b);
    check_invariants(m);
}

static const char *const ONE3 = "space s key k create 1 partitions tolerate 2 failures";

/* A failed backup leaves at once; the returning daemon comes back only
 * through ADD_REPLICA and counts once it is in sync. */
static void test_replica_failed_backup(void **state)
{
    (void)state;
    cmap *m = cluster(4, ONE3);
    expect_part(m, 1, 0, "2 3 4", "", 1, CMAP_H_PROTECTED);
    set_state(m, 3, CMAP_D_OFFLINE, 20);
    expect_part(m, 1, 0, "2 3 4", "", 1, CMAP_H_DEGRADED);
    replica_failed(m, 3);
    expect_part(m, 1, 0, "2 4", "3", 2, CMAP_H_DEGRADED);

    buf b;
    buf_init(&b);
    cmap_cmd_replica_failed(&b, 3); /* again: nothing left to remove */
    expect_refused(m, &b, "ERR daemon 3 holds no replica that can be removed");
    set_state(m, 1, CMAP_D_OFFLINE, 21); /* holds no replica at all */
    cmap_cmd_replica_failed(&b, 1);
    expect_refused(m, &b, "ERR daemon 1 holds no replica that can be removed");

    /* back ONLINE: not re-listed by itself (the planner re-adds it) */
    set_state(m, 3, CMAP_D_ONLINE, 30);
    expect_part(m, 1, 0, "2 4", "3", 2, CMAP_H_DEGRADED);
    add_replica(m, 1, 0, 3);
    expect_part(m, 1, 0, "2 4 3c", "", 3, CMAP_H_DEGRADED);
    in_sync(m, 1, 0, 3, 3);
    expect_part(m, 1, 0, "2 4 3", "", 4, CMAP_H_PROTECTED);
    buf_free(&b);
    cmap_free(m);
}

/* A failed primary is replaced by the first IN_SYNC replica on an ONLINE
 * daemon (I3), never by a catching-up one or one on a down daemon. */
static void test_replica_failed_primary(void **state)
{
    (void)state;
    cmap *m = cluster(4, ONE3);
    set_state(m, 2, CMAP_D_OFFLINE, 20);
    replica_failed(m, 2);
    expect_part(m, 1, 0, "3 4", "2", 2, CMAP_H_DEGRADED);
    cmap_free(m);

    /* the first backup is down too: the second one takes over */
    m = cluster(4, ONE3);
    set_state(m, 3, CMAP_D_OFFLINE, 20);
    set_state(m, 2, CMAP_D_SHUTDOWN, 21);
    replica_failed(m, 2);
    expect_part(m, 1, 0, "4 3", "2", 2, CMAP_H_DEGRADED);
    replica_failed(m, 3);
    expect_part(m, 1, 0, "4", "2 3", 3, CMAP_H_DEGRADED);
    cmap_free(m);

    /* a catching-up replica is never made primary: the last in-sync replica
     * is kept and the partition waits for it */
    m = cluster(4, ONE3);
    add_replica(m, 1, 0, 1);
    expect_part(m, 1, 0, "2 3 4 1c", "", 2, CMAP_H_PROTECTED);
    set_state(m, 3, CMAP_D_OFFLINE, 20);
    set_state(m, 4, CMAP_D_RETIRED, 21);
    replica_failed(m, 3);
    replica_failed(m, 4);
    expect_part(m, 1, 0, "2 1c", "3 4", 4, CMAP_H_DEGRADED);
    set_state(m, 2, CMAP_D_OFFLINE, 22);
    expect_part(m, 1, 0, "2 1c", "3 4", 4, CMAP_H_UNAVAILABLE);
    buf b;
    buf_init(&b);
    cmap_cmd_replica_failed(&b, 2);
    expect_refused(m, &b, "ERR daemon 2 holds no replica that can be removed");
    /* a down catching-up replica goes at once */
    set_state(m, 1, CMAP_D_OFFLINE, 23);
    replica_failed(m, 1);
    expect_part(m, 1, 0, "2", "3 4 1", 5, CMAP_H_UNAVAILABLE);
    /* the kept replica returns: the partition serves again */
    set_state(m, 2, CMAP_D_ONLINE, 30);
    expect_part(m, 1, 0, "2", "3 4 1", 5, CMAP_H_DEGRADED);
    buf_free(&b);
    cmap_free(m);
}

/* tolerate 0: losing the only replica makes the partition UNAVAILABLE (and
 * only that one) until its daemon returns. */
static void test_replica_failed_last_kept(void **state)
{
    (void)state;
    cmap *m = cluster(2, "space z key k create 2 partitions tolerate 0 failures");
    expect_part(m, 1, 0, "2", "", 1, CMAP_H_PROTECTED);
    expect_part(m, 1, 1, "1", "", 1, CMAP_H_PROTECTED);
    set_state(m, 2, CMAP_D_OFFLINE, 20);
    expect_part(m, 1, 0, "2", "", 1, CMAP_H_UNAVAILABLE);
    expect_part(m, 1, 1, "1", "", 1, CMAP_H_PROTECTED);
    buf b;
    buf_init(&b);
    cmap_cmd_replica_failed(&b, 2);
    expect_refused(m, &b, "ERR daemon 2 holds no replica that can be removed");
    set_state(m, 2, CMAP_D_ONLINE, 30); /* rejoin under its own identity */
    expect_part(m, 1, 0, "2", "", 1, CMAP_H_PROTECTED);
    check_invariants(m);
    buf_free(&b);
    cmap_free(m);
}

/* Every in-sync replica down: all are kept, and whichever returns first
 * takes over (the others are then failed normally). */
static void test_replica_failed_all_down(void **state)
{
    (void)state;
    cmap *m = cluster(3, "space s key k create 1 partitions tolerate 1 failures");
    expect_part(m, 1, 0, "2 3", "", 1, CMAP_H_PROTECTED);
    set_state(m, 2, CMAP_D_OFFLINE, 20);
    set_state(m, 3, CMAP_D_OFFLINE, 20);
    expect_part(m, 1, 0, "2 3", "", 1, CMAP_H_UNAVAILABLE);
    buf b;
    buf_init(&b);
    cmap_cmd_replica_failed(&b, 2);
    expect_refused(m, &b, "ERR daemon 2 holds no replica that can be removed");
    cmap_cmd_replica_failed(&b, 3);
    expect_refused(m, &b, "ERR daemon 3 holds no replica that can be removed");
    set_state(m, 3, CMAP_D_ONLINE, 30);
    expect_part(m, 1, 0, "2 3", "", 1, CMAP_H_DEGRADED);
    replica_failed(m, 2);
    expect_part(m, 1, 0, "3", "2", 2, CMAP_H_DEGRADED);
    buf_free(&b);
    cmap_free(m);
}

/* One daemon in many partitions: each is handled on its own, only the
 * changed ones move their epoch. */
static void test_replica_failed_many(void **state)
{
    (void)state;
    /* 3 daemons, 6 partitions: p holds daemons (p+1)%3+1, (p+2)%3+1 */
    cmap *m = cluster(3, "space s key k create 6 partitions tolerate 1 failures");
    uint32_t z = (uint32_t)add_space(m, "space z key k create 3 partitions tolerate 0 failures");
    assert_int_equal(z, 2);
    set_state(m, 1, CMAP_D_OFFLINE, 20);
    replica_failed(m, 1);
    for (uint32_t p = 0; p < 6; p++) {
        const cmap_partition *pt = part(m, 1, p);
        bool held = (p + 1) % 3 == 0 || (p + 2) % 3 == 0; /* daemon 1 was listed */
        assert_int_equal(pt->epoch, held ? 2 : 1);
        assert_int_equal(pt->nreplicas, held ? 1 : 2);
        assert_int_equal(pt->health, held ? CMAP_H_DEGRADED : CMAP_H_PROTECTED);
        assert_int_equal(pt->ndeparted, held ? 1 : 0);
        for (uint32_t j = 0; j < pt->nreplicas; j++)
            assert_true(pt->replicas[j].daemon != 1);
    }
    /* space z (id 2): one partition on daemon 1, kept */
    uint32_t kept = 0;
    for (uint32_t p = 0; p < 3; p++) {
        const cmap_partition *pt = part(m, 2, p);
        assert_int_equal(pt->epoch, 1);
        if (pt->replicas[0].daemon == 1) {
            kept++;
            assert_int_equal(pt->health, CMAP_H_UNAVAILABLE);
        } else {
            assert_int_equal(pt->health, CMAP_H_PROTECTED);
        }
    }
    assert_int_equal(kept, 1);
    cmap_free(m);
}

static void test_replica_failed_refused(void **state)
{
    (void)state;
    buf b;
    buf_init(&b);
    cmap *fresh = cmap_new();
    cmap_cmd_replica_failed(&b, 1);
    expect_refused(fresh, &b, "ERR cluster not bootstrapped");
    cmap_free(fresh);

    cmap *m = cluster(3, "space s key k create 3 partitions tolerate 1 failures");
    cmap_cmd_replica_failed(&b, 9);
    expect_refused(m, &b, "ERR no such daemon 9");
    cmap_cmd_replica_failed(&b, 2);
    expect_refused(m, &b, "ERR daemon 2 is ONLINE: only a daemon marked down can be failed");
    set_state(m, 2, CMAP_D_SUSPECT, 20);
    cmap_cmd_replica_failed(&b, 2);
    expect_refused(m, &b, "ERR daemon 2 is SUSPECT: only a daemon marked down can be failed");
    /* a partition whose epochs ran out refuses the whole command */
    set_state(m, 2, CMAP_D_OFFLINE, 21);
    cmap_partition *last = NULL;
    uint32_t last_p = 0;
    for (uint32_t p = 0; p < 3; p++)
        for (uint32_t j = 0; j < part(m, 1, p)->nreplicas; j++)
            if (part(m, 1, p)->replicas[j].daemon == 2) {
                last = part(m, 1, p);
                last_p = p;
            }
    assert_non_null(last);
    last->epoch = UINT64_MAX;
    char want[128];
    snprintf(want, sizeof want, "ERR partition %u of 's' has exhausted its epochs", last_p);
    cmap_cmd_replica_failed(&b, 2);
    expect_refused(m, &b, want);
    last->epoch = 1;
    replica_failed(m, 2);
    /* malformed: short, long */
    buf_putc(&b, 1);
    buf_putc(&b, CMAP_CMD_REPLICA_FAILED);
    buf_put_u32be(&b, 2);
    expect_refused(m, &b, "ERR malformed command");
    cmap_cmd_replica_failed(&b, 2);
    buf_putc(&b, 0);
    expect_refused(m, &b, "ERR malformed command");
    buf_free(&b);
    cmap_free(m);
}

/* SHUTDOWN and RETIRED daemons are down too; the departed list keeps the
 * last CMAP_MAX_REPLICAS daemons, oldest dropped first. */
static void test_replica_failed_departed(void **state)
{
    (void)state;
    cmap *m = cluster(12, "space s key k create 1 partitions tolerate 1 failures");
    expect_part(m, 1, 0, "2 3", "", 1, CMAP_H_PROTECTED);
    /* churn the backup through daemons 4..12: each added, then failed */
    uint64_t backup = 3;
    uint64_t epoch = 1;
    for (uint64_t d = 4; d <= 12; d++) {
        set_state(m, backup, d % 2 ? CMAP_D_SHUTDOWN : CMAP_D_RETIRED, 20 + d);
        replica_failed(m, backup);
        add_replica(m, 1, 0, d);
        in_sync(m, 1, 0, d, epoch + 2);
        epoch += 3;
        /* protected again: the list is emptied */
        assert_int_equal(part(m, 1, 0)->ndeparted, 0);
        backup = d;
    }
    expect_part(m, 1, 0, "2 12", "", epoch, CMAP_H_PROTECTED);
    cmap_free(m);

    /* without ever becoming protected, the list keeps the newest 8 */
    m = cluster(12, "space s key k create 1 partitions tolerate 1 failures");
    set_state(m, 3, CMAP_D_OFFLINE, 20);
    replica_failed(m, 3);
    for (uint64_t d = 4; d <= 12; d++) {
        add_replica(m, 1, 0, d);
        set_state(m, d, CMAP_D_OFFLINE, 20 + d);
        replica_failed(m, d);
    }
    expect_part(m, 1, 0, "2", "5 6 7 8 9 10 11 12", 1 + 2 * 10 - 1, CMAP_H_DEGRADED);
    /* a departed daemon re-added leaves the list */
    set_state(m, 8, CMAP_D_ONLINE, 50);
    add_replica(m, 1, 0, 8);
    expect_part(m, 1, 0, "2 8c", "5 6 7 9 10 11 12", 1 + 2 * 10, CMAP_H_DEGRADED);
    roundtrip(m);
    cmap_free(m);
}

static void test_add_replica(void **state)
{
    (void)state;
    cmap *m = cluster(10, ONE3); /* partition 0 on daemons 2 3 4 */
    add_replica(m, 1, 0, 5);
    expect_part(m, 1, 0, "2 3 4 5c", "", 2, CMAP_H_PROTECTED);

    buf b;
    buf_init(&b);
    cmap *fresh = cmap_new();
    cmap_cmd_add_replica(&b, 1, 0, 1);
    expect_refused(fresh, &b, "ERR cluster not bootstrapped");
    cmap_free(fresh);
    cmap_cmd_add_replica(&b, 9, 0, 1);
    expect_refused(m, &b, "NOSPACE no such space 9");
    cmap_cmd_add_replica(&b, 1, 1, 1);
    expect_refused(m, &b, "ERR space 's' has no partition 1 (it has 1)");
    cmap_cmd_add_replica(&b, 1, UINT32_MAX, 1);
    expect_refused(m, &b, "ERR space 's' has no partition 4294967295 (it has 1)");
    cmap_cmd_add_replica(&b, 1, 0, 11);
    expect_refused(m, &b, "ERR no such daemon 11");
    cmap_cmd_add_replica(&b, 1, 0, 2);
    expect_refused(m, &b, "ERR daemon 2 already holds partition 0 of 's'");
    cmap_cmd_add_replica(&b, 1, 0, 5);
    expect_refused(m, &b, "ERR daemon 5 already holds partition 0 of 's'");
    static const int down[] = {CMAP_D_SUSPECT, CMAP_D_OFFLINE, CMAP_D_SHUTDOWN, CMAP_D_RETIRED};
    static const char *const down_msg[] = {
        "ERR daemon 6 is SUSPECT: only an ONLINE daemon can take a replica",
        "ERR daemon 6 is OFFLINE: only an ONLINE daemon can take a replica",
        "ERR daemon 6 is SHUTDOWN: only an ONLINE daemon can take a replica",
        "ERR daemon 6 is RETIRED: only an ONLINE daemon can take a replica"};
    for (int i = 0; i < 4; i++) {
        set_state(m, 6, down[i], 20);
        cmap_cmd_add_replica(&b, 1, 0, 6);
        expect_refused(m, &b, down_msg[i]);
    }
    /* full at CMAP_MAX_REPLICAS */
    add_replica(m, 1, 0, 1);
    for (uint64_t d = 7; d <= 9; d++)
        add_replica(m, 1, 0, d);
    expect_part(m, 1, 0, "2 3 4 5c 1c 7c 8c 9c", "", 6, CMAP_H_PROTECTED);
    cmap_cmd_add_replica(&b, 1, 0, 10);
    expect_refused(m, &b, "ERR partition 0 of 's' already has 8 replicas");
    cmap_free(m);

    m = cluster(4, ONE3);
    part(m, 1, 0)->epoch = UINT64_MAX;
    cmap_cmd_add_replica(&b, 1, 0, 1);
    expect_refused(m, &b, "ERR partition 0 of 's' has exhausted its epochs");
    /* malformed */
    cmap_cmd_add_replica(&b, 1, 0, 1);
    b.len--;
    expect_refused(m, &b, "ERR malformed command");
    buf_free(&b);
    cmap_free(m);
}

static void test_replica_in_sync(void **state)
{
    (void)state;
    cmap *m = cluster(5, ONE3); /* 2 3 4 */
    add_replica(m, 1, 0, 5);    /* epoch 2 */
    add_replica(m, 1, 0, 1);    /* epoch 3 */
    expect_part(m, 1, 0, "2 3 4 5c 1c", "", 3, CMAP_H_PROTECTED);

    buf b;
    buf_init(&b);
    /* a report from before the last change is stale */
    cmap_cmd_replica_in_sync(&b, 1, 0, 5, 2);
    expect_refused(m, &b, "ERR stale report: partition 0 of 's' is at epoch 3, not 2");
    cmap_cmd_replica_in_sync(&b, 1, 0, 5, 4);
    expect_refused(m, &b, "ERR stale report: partition 0 of 's' is at epoch 3, not 4");
    in_sync(m, 1, 0, 5, 3);
    expect_part(m, 1, 0, "2 3 4 5 1c", "", 4, CMAP_H_PROTECTED);
    cmap_cmd_replica_in_sync(&b, 1, 0, 5, 4);
    expect_refused(m, &b, "ERR daemon 5 is already in sync for partition 0 of 's'");
    cmap_cmd_replica_in_sync(&b, 1, 0, 2, 4);
    expect_refused(m, &b, "ERR daemon 2 is already in sync for partition 0 of 's'");
    /* a failure elsewhere in the partition makes an older report stale */
    set_state(m, 3, CMAP_D_OFFLINE, 20);
    replica_failed(m, 3);
    cmap_cmd_replica_in_sync(&b, 1, 0, 1, 4);
    expect_refused(m, &b, "ERR stale report: partition 0 of 's' is at epoch 5, not 4");
    cmap_cmd_replica_in_sync(&b, 1, 0, 3, 5);
    expect_refused(m, &b, "ERR daemon 3 is not a replica of partition 0 of 's'");
    /* the daemon went down after catching up */
    set_state(m, 1, CMAP_D_OFFLINE, 21);
    cmap_cmd_replica_in_sync(&b, 1, 0, 1, 5);
    expect_refused(m, &b, "ERR daemon 1 is OFFLINE: only an ONLINE replica can be in sync");
    set_state(m, 1, CMAP_D_ONLINE, 22);
    in_sync(m, 1, 0, 1, 5);
    expect_part(m, 1, 0, "2 4 5 1", "", 6, CMAP_H_PROTECTED);

    cmap_cmd_replica_in_sync(&b, 7, 0, 1, 6);
    expect_refused(m, &b, "NOSPACE no such space 7");
    cmap_cmd_replica_in_sync(&b, 1, 3, 1, 6);
    expect_refused(m, &b, "ERR space 's' has no partition 3 (it has 1)");
    cmap_cmd_replica_in_sync(&b, 1, 0, 6, 6);
    expect_refused(m, &b, "ERR no such daemon 6");
    cmap_cmd_replica_in_sync(&b, 1, 0, 1, 6);
    b.len -= 8;
    expect_refused(m, &b, "ERR malformed command");
    cmap *fresh = cmap_new();
    cmap_cmd_replica_in_sync(&b, 1, 0, 1, 1);
    expect_refused(fresh, &b, "ERR cluster not bootstrapped");
    cmap_free(fresh);
    cmap_free(m);

    /* hand-made states only a decoded map can hold: no in-sync replica to
     * catch up from; epochs exhausted */
    m = cluster(3, "space s key k create 1 partitions tolerate 1 failures");
    add_replica(m, 1, 0, 1);
    cmap_partition *pt = part(m, 1, 0);
    pt->replicas[0].state = pt->replicas[1].state = CMAP_R_CATCHING_UP;
    pt->health = CMAP_H_UNAVAILABLE;
    cmap_cmd_replica_in_sync(&b, 1, 0, 1, 2);
    expect_refused(m, &b, "ERR partition 0 of 's' has no in-sync replica to catch up from");
    pt->replicas[0].state = pt->replicas[1].state = CMAP_R_IN_SYNC;
    pt->health = CMAP_H_PROTECTED;
    pt->epoch = UINT64_MAX;
    cmap_cmd_replica_in_sync(&b, 1, 0, 1, UINT64_MAX);
    expect_refused(m, &b, "ERR partition 0 of 's' has exhausted its epochs");
    buf_free(&b);
    cmap_free(m);
}

static void test_handoff(void **state)
{
    (void)state;
    cmap *m = cluster(5, ONE3); /* 2 3 4 */
    handoff(m, 1, 0, 4);
    expect_part(m, 1, 0, "4 2 3", "", 2, CMAP_H_PROTECTED);
    handoff(m, 1, 0, 3);
    expect_part(m, 1, 0, "3 4 2", "", 3, CMAP_H_PROTECTED);

    buf b;
    buf_init(&b);
    cmap_cmd_handoff(&b, 1, 0, 3);
    expect_refused(m, &b, "ERR daemon 3 is already the primary of partition 0 of 's'");
    cmap_cmd_handoff(&b, 1, 0, 1);
    expect_refused(m, &b, "ERR daemon 1 is not a replica of partition 0 of 's'");
    add_replica(m, 1, 0, 1);
    cmap_cmd_handoff(&b, 1, 0, 1);
    expect_refused(m, &b, "ERR daemon 1 is not in sync for partition 0 of 's'");
    set_state(m, 2, CMAP_D_SUSPECT, 20);
    cmap_cmd_handoff(&b, 1, 0, 2);
    expect_refused(m, &b, "ERR daemon 2 is SUSPECT: only an ONLINE replica can become primary");
    cmap_cmd_handoff(&b, 2, 0, 2);
    expect_refused(m, &b, "NOSPACE no such space 2");
    cmap_cmd_handoff(&b, 1, 1, 2);
    expect_refused(m, &b, "ERR space 's' has no partition 1 (it has 1)");
    cmap_cmd_handoff(&b, 1, 0, 0);
    expect_refused(m, &b, "ERR no such daemon 0");
    cmap_cmd_handoff(&b, 1, 0, 4);
    buf_putc(&b, 0);
    expect_refused(m, &b, "ERR malformed command");
    part(m, 1, 0)->epoch = UINT64_MAX;
    cmap_cmd_handoff(&b, 1, 0, 4);
    expect_refused(m, &b, "ERR partition 0 of 's' has exhausted its epochs");
    cmap *fresh = cmap_new();
    cmap_cmd_handoff(&b, 1, 0, 4);
    expect_refused(fresh, &b, "ERR cluster not bootstrapped");
    cmap_free(fresh);
    buf_free(&b);
    cmap_free(m);

    /* a clean shutdown as the daemon does it: hand off, leave, be failed */
    m = cluster(3, "space s key k create 3 partitions tolerate 1 failures");
    for (uint32_t p = 0; p < 3; p++) {
        const cmap_partition *pt = part(m, 1, p);
        if (pt->replicas[0].daemon == 2) handoff(m, 1, p, pt->replicas[1].daemon);
    }
    set_state(m, 2, CMAP_D_SHUTDOWN, 20);
    replica_failed(m, 2);
    for (uint32_t p = 0; p < 3; p++) {
        const cmap_partition *pt = part(m, 1, p);
        assert_int_equal(pt->nreplicas, pt->epoch == 1 ? 2 : 1);
        assert_true(pt->replicas[0].daemon != 2);
    }
    cmap_free(m);
}

/* Health under every combination of daemon states and replica states:
 * only IN_SYNC replicas on ONLINE daemons count. */
static void test_health_states(void **state)
{
    (void)state;
    static const int states[] = {CMAP_D_ONLINE, CMAP_D_SUSPECT, CMAP_D_OFFLINE, CMAP_D_SHUTDOWN,
                                 CMAP_D_RETIRED};
    for (uint32_t tol = 0; tol <= 2; tol++) {
        char text[96];
        snprintf(text, sizeof text, "space s key k create 1 partitions tolerate %u failures", tol);
        for (int combo = 0; combo < 5 * 5 * 5; combo++) {
            for (int cu = 0; cu < 2; cu++) { /* the last replica catching up or not */
                cmap *m = cluster(4, text);
                uint32_t n = tol + 1;
                if (cu) {
                    add_replica(m, 1, 0, 1);
                    n++;
                }
                const cmap_partition *pt = part(m, 1, 0);
                assert_int_equal(pt->nreplicas, n);
                int st[3] = {states[combo % 5], states[combo / 5 % 5], states[combo / 25]};
                uint32_t live = 0;
                for (uint32_t j = 0; j < n && j < 3; j++) {
                    uint64_t d = pt->replicas[j].daemon;
                    set_state(m, d, st[j], 100 + j);
                    if (pt->replicas[j].state == CMAP_R_IN_SYNC && st[j] == CMAP_D_ONLINE) live++;
                }
                /* (with tolerate 2 and a catching-up fourth replica, that one
                 * stays ONLINE: catching-up replicas never count anyway) */
                int want = live == 0         ? CMAP_H_UNAVAILABLE
                           : live >= tol + 1 ? CMAP_H_PROTECTED
                                             : CMAP_H_DEGRADED;
                assert_int_equal(pt->health, want);
                check_invariants(m);
                roundtrip(m);
                cmap_free(m);
            }
        }
    }
}

/* Random commands of every kind: a refusal changes nothing; an applied
 * command moves the version by one, never lowers an epoch, moves the epoch
 * of exactly the partitions whose replicas changed, and never leaves a
 * partition that lost an IN_SYNC replica without a live IN_SYNC one. */
static void test_replica_commands_random(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < 7; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 10);
    add_space(m, "space a key k create 4 partitions tolerate 1 failures");
    add_space(m, "space b key k create 3 partitions tolerate 2 failures");
    add_space(m, "space c key k create 2 partitions tolerate 0 failures");
    rng_state = 4242;
    static const int states[] = {CMAP_D_ONLINE, CMAP_D_ONLINE, CMAP_D_SUSPECT, CMAP_D_OFFLINE,
                                 CMAP_D_SHUTDOWN};
    enum { NPARTS = 9 };
    buf b;
    buf_init(&b);
    int applied[6] = {0};
    for (int iter = 0; iter < 30000; iter++) {
        cmap_partition before[NPARTS];
        uint32_t k = 0;
        for (uint32_t s = 0; s < m->nspaces; s++)
            for (uint32_t p = 0; p < m->spaces[s].schema->partitions; p++)
                before[k++] = m->spaces[s].parts[p];
        uint64_t d = 1 + rnd() % 8; /* 8: unknown */
        uint32_t sid = 1 + (uint32_t)(rnd() % 4), p = (uint32_t)(rnd() % 5);
        int kind = (int)(rnd() % 6);
        const cmap_space *tsp = cmap_space_by_id(m, sid);
        if ((kind == 3 || kind == 4) && tsp && p < tsp->schema->partitions && rnd() % 4) {
            const cmap_partition *tpt = &tsp->parts[p]; /* mostly one of its replicas */
            d = tpt->replicas[rnd() % tpt->nreplicas].daemon;
        }
        switch (kind) {
        case 0:
            cmap_cmd_set_daemon_state(&b, d, states[rnd() % 5], (uint64_t)iter);
            break;
        case 1:
            cmap_cmd_replica_failed(&b, d);
            break;
        case 2:
        case 3: {
            const cmap_space *sp = cmap_space_by_id(m, sid);
            uint64_t e = sp && p < sp->schema->partitions ? sp->parts[p].epoch : 1;
            if (kind == 2)
                cmap_cmd_add_replica(&b, sid, p, d);
            else
                cmap_cmd_replica_in_sync(&b, sid, p, d, e - (rnd() % 4 == 0));
            break;
        }
        case 4:
            cmap_cmd_handoff(&b, sid, p, d);
            break;
        default:
            cmap_cmd_set_daemon_state(&b, d, CMAP_D_ONLINE, (uint64_t)iter);
            break;
        }
        buf enc;
        encode_map(m, &enc);
        uint64_t v = m->version;
        cmap_result res;
        if (run(m, &b, &res) != 0) {
            buf after;
            encode_map(m, &after);
            assert_int_equal(enc.len, after.len);
            assert_memory_equal(enc.data, after.data, enc.len);
            buf_free(&after);
            buf_free(&enc);
            continue;
        }
        buf_free(&enc);
        applied[kind]++;
        assert_int_equal(m->version, v + 1);
        check_invariants(m);
        k = 0;
        for (uint32_t s = 0; s < m->nspaces; s++)
            for (uint32_t q = 0; q < m->spaces[s].schema->partitions; q++) {
                const cmap_partition *old = &before[k++], *now = &m->spaces[s].parts[q];
                bool same = old->nreplicas == now->nreplicas &&
                            !memcmp(old->replicas, now->replicas,
                                    old->nreplicas * sizeof old->replicas[0]);
                assert_true(now->epoch >= old->epoch);
                assert_int_equal(now->epoch != old->epoch, !same);
                if (!same) assert_int_equal(now->epoch, old->epoch + 1);
                /* an IN_SYNC replica left: a live IN_SYNC one remains */
                for (uint32_t j = 0; j < old->nreplicas; j++) {
                    if (old->replicas[j].state != CMAP_R_IN_SYNC) continue;
                    bool still = false;
                    for (uint32_t i = 0; i < now->nreplicas; i++)
                        still |= now->replicas[i].daemon == old->replicas[j].daemon;
                    if (!still) assert_int_not_equal(now->health, CMAP_H_UNAVAILABLE);
                }
                assert_true(now->nreplicas >= 1);
            }
    }
    /* every kind of command was exercised */
    for (int i = 0; i < 6; i++)
        assert_true(applied[i] > 100);
    roundtrip(m);
    buf_free(&b);
    cmap_free(m);
}

/* An encoder for the older map formats (1: no coordinators; 2: no departed
 * lists), writing health by the rule those formats had. */
static void encode_old(const cmap *m, int format, buf *out)
{
    buf_init(out);
    buf_putc(out, (char)format);
    buf_put_u64be(out, m->cluster_id);
    buf_put_u64be(out, m->version);
    buf_put_u32be(out, m->settings.heartbeat_ms);
    buf_put_u32be(out, m->settings.ping_timeout_ms);
    buf_put_u32be(out, m->settings.reprotect_delay_s);
    buf_put_u64be(out, m->settings.log_retention);
    buf_putc(out, m->settings.single_node ? 1 : 0);
    buf_put_u32be(out, m->next_space_id);
    buf_put_u64be(out, m->next_daemon_id);
    buf_put_u32be(out, m->ndaemons);
    for (uint32_t i = 0; i < m->ndaemons; i++) {
        const cmap_daemon *d = &m->daemons[i];
        buf_put_u64be(out, d->id);
        buf_put_u32be(out, (uint32_t)strlen(d->host));
        buf_puts(out, d->host);
        buf_put_u16be(out, d->port);
        buf_put_u16be(out, d->peer_port);
        buf_putc(out, (char)d->state);
        buf_put_u64be(out, d->since_ms);
    }
    buf_put_u32be(out, m->nspaces);
    for (uint32_t i = 0; i < m->nspaces; i++) {
        const cmap_space *sp = &m->spaces[i];
        buf_put_u32be(out, sp->id);
        buf sch;
        buf_init(&sch);
        space_encode(sp->schema, &sch);
        buf_put_u32be(out, (uint32_t)sch.len);
        buf_append(out, sch.data, sch.len);
        buf_free(&sch);
        buf_put_u32be(out, sp->schema->partitions);
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            uint32_t in_sync = 0;
            for (uint32_t j = 0; j < pt->nreplicas; j++)
                in_sync += pt->replicas[j].state == CMAP_R_IN_SYNC;
            buf_put_u64be(out, pt->epoch);
            buf_putc(out, (char)(in_sync == 0                          ? CMAP_H_UNAVAILABLE
                                 : in_sync >= sp->schema->tolerate + 1 ? CMAP_H_PROTECTED
                                                                       : CMAP_H_DEGRADED));
            buf_put_u32be(out, pt->nreplicas);
            for (uint32_t j = 0; j < pt->nreplicas; j++) {
                buf_put_u64be(out, pt->replicas[j].daemon);
                buf_putc(out, (char)pt->replicas[j].state);
            }
        }
    }
    if (format == 1) return;
    buf_put_u64be(out, m->next_coord_id);
    buf_put_u32be(out, m->ncoords);
    for (uint32_t i = 0; i < m->ncoords; i++) {
        const cmap_coordinator *c = &m->coords[i];
        buf_put_u64be(out, c->id);
        buf_put_u32be(out, (uint32_t)strlen(c->host));
        buf_puts(out, c->host);
        buf_put_u16be(out, c->port);
        buf_put_u32be(out, (uint32_t)strlen(c->peer_host));
        buf_puts(out, c->peer_host);
        buf_put_u16be(out, c->peer_port);
    }
}

/* Format 3 round-trips departed lists and down replicas; formats 1 and 2
 * still decode, their health checked by their own rule and recomputed.
 * (Format 4 only appends the sync byte: see test_sync_setting.) */
static void test_encode_formats(void **state)
{
    (void)state;
    assert_int_equal(CMAP_FORMAT_VERSION, 4);
    cmap *m = rich_map(); /* daemons 2..5 SUSPECT, OFFLINE, SHUTDOWN, RETIRED */
    buf b;
    buf_init(&b);
    cmap_cmd_add_coordinator(&b, "c1", 1982, "c1", 11982);
    expect_ok(m, &b);
    buf_free(&b);
    /* old health differs from new health somewhere */
    bool differs = false;
    for (uint32_t s = 0; s < m->nspaces; s++)
        for (uint32_t p = 0; p < m->spaces[s].schema->partitions; p++)
            differs |= m->spaces[s].parts[p].health != CMAP_H_PROTECTED;
    assert_true(differs);

    buf now;
    encode_map(m, &now);
    for (int format = 1; format <= 2; format++) {
        buf old;
        encode_old(m, format, &old);
        cmap *d = NULL;
        assert_int_equal(cmap_decode(old.data, old.len, &d), 0);
        check_invariants(d);
        if (format == 1) {
            assert_int_equal(d->ncoords, 0);
        } else {
            buf again;
            encode_map(d, &again); /* the same map, in format 3 */
            assert_int_equal(again.len, now.len);
            assert_memory_equal(again.data, now.data, now.len);
            buf_free(&again);
        }
        for (uint32_t s = 0; s < m->nspaces; s++)
            for (uint32_t p = 0; p < m->spaces[s].schema->partitions; p++)
                assert_int_equal(d->spaces[s].parts[p].health, m->spaces[s].parts[p].health);
        cmap_free(d);
        /* an old format with health written by the new rule is refused */
        if (format == 2) {
            /* format 2 wrote PROTECTED where in-sync replicas sat on down
             * daemons; a DEGRADED there (the new rule) is refused */
            const cmap_partition *pt = &m->spaces[1].parts[3]; /* daemons 1, 2 (SUSPECT) */
            assert_int_equal(pt->health, CMAP_H_DEGRADED);
            buf bad;
            encode_old(m, 2, &bad);
            /* find that partition's health byte: after its epoch */
            buf pat;
            buf_init(&pat);
            buf_put_u64be(&pat, pt->epoch);
            buf_putc(&pat, CMAP_H_PROTECTED);
            buf_put_u32be(&pat, 2);
            buf_put_u64be(&pat, 1);
            buf_putc(&pat, CMAP_R_IN_SYNC);
            buf_put_u64be(&pat, 2);
            char *at = memmem(bad.data, bad.len, pat.data, pat.len);
            assert_non_null(at);
            at[8] = CMAP_H_DEGRADED;
            d = (cmap *)&bad;
            assert_int_equal(cmap_decode(bad.data, bad.len, &d), -1);
            assert_null(d);
            at[8] = CMAP_H_PROTECTED;
            assert_int_equal(cmap_decode(bad.data, bad.len, &d), 0);
            cmap_free(d);
            buf_free(&pat);
            buf_free(&bad);
        }
        buf_free(&old);
    }
    buf_free(&now);

    /* format 3: departed lists, kept replicas on down daemons, catching-up
     * replicas, all round-trip; a clone encodes identically */
    cmap *c = cluster(5, ONE3);
    set_state(c, 3, CMAP_D_OFFLINE, 20);
    replica_failed(c, 3);
    add_replica(c, 1, 0, 1);
    set_state(c, 2, CMAP_D_OFFLINE, 21);
    set_state(c, 4, CMAP_D_OFFLINE, 21);
    expect_part(c, 1, 0, "2 4 1c", "3", 3, CMAP_H_UNAVAILABLE);
    roundtrip(c);
    cmap *cl = cmap_clone(c);
    buf e1, e2;
    encode_map(c, &e1);
    encode_map(cl, &e2);
    assert_int_equal(e1.len, e2.len);
    assert_memory_equal(e1.data, e2.data, e1.len);
    /* the clone is independent */
    set_state(cl, 4, CMAP_D_ONLINE, 30);
    replica_failed(cl, 2);
    expect_part(cl, 1, 0, "4 1c", "3 2", 4, CMAP_H_DEGRADED);
    expect_part(c, 1, 0, "2 4 1c", "3", 3, CMAP_H_UNAVAILABLE);
    buf_free(&e1);
    buf_free(&e2);
    cmap_free(cl);
    cmap_free(c);
    cmap *e = cmap_clone(m);
    roundtrip(e);
    cmap_free(e);
    cmap *fresh = cmap_new();
    e = cmap_clone(fresh);
    roundtrip(e);
    cmap_free(e);
    cmap_free(fresh);
    cmap_free(m);
}

/* ---- lookups and names -------------------------------------------------- */

static void test_partition_of(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    add_daemon(m, "h", 1, 0);
    add_daemon(m, "h", 2, 0);
    const cmap_space *sp = cmap_space_by_id(m, add_space(m, "space s key k create 7 partitions"));
    uint32_t hits[7] = {0};
    for (int i = 0; i < 1000; i++) {
        char key[32];
        int n = snprintf(key, sizeof key, "user%d", i);
        uint32_t p = cmap_partition_of(sp, key, (size_t)n);
        assert_int_equal(p, XXH64(key, (size_t)n, 0) % 7);
        hits[p]++;
    }
    for (int p = 0; p < 7; p++)
        assert_true(hits[p] > 50); /* every partition is used */
    assert_int_equal(cmap_partition_of(sp, "", 0), XXH64("", 0, 0) % 7);
    sp = cmap_space_by_id(m, add_space(m, "space one key k create 1 partitions"));
    assert_int_equal(cmap_partition_of(sp, "anything", 8), 0);
    cmap_free(m);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(cmap_daemon_state_name(CMAP_D_ONLINE), "ONLINE");
    assert_string_equal(cmap_daemon_state_name(CMAP_D_SUSPECT), "SUSPECT");
    assert_string_equal(cmap_daemon_state_name(CMAP_D_OFFLINE), "OFFLINE");
    assert_string_equal(cmap_daemon_state_name(CMAP_D_SHUTDOWN), "SHUTDOWN");
    assert_string_equal(cmap_daemon_state_name(CMAP_D_RETIRED), "RETIRED");
    assert_string_equal(cmap_daemon_state_name(0), "UNKNOWN");
    assert_string_equal(cmap_daemon_state_name(99), "UNKNOWN");
    assert_string_equal(cmap_replica_state_name(CMAP_R_IN_SYNC), "IN_SYNC");
    assert_string_equal(cmap_replica_state_name(CMAP_R_CATCHING_UP), "CATCHING_UP");
    assert_string_equal(cmap_replica_state_name(0), "UNKNOWN");
    assert_string_equal(cmap_health_name(CMAP_H_PROTECTED), "PROTECTED");
    assert_string_equal(cmap_health_name(CMAP_H_DEGRADED), "DEGRADED");
    assert_string_equal(cmap_health_name(CMAP_H_UNAVAILABLE), "UNAVAILABLE");
    assert_string_equal(cmap_health_name(-1), "UNKNOWN");
}

/* ---- determinism and version -------------------------------------------- */

/* Builds a log of commands, successes and refusals mixed. */
/* Coordinators: ids from 1 in order, never reused, addresses distinct; they
 * survive encode/decode; a format-1 map (no coordinators) still decodes. */
static void test_coordinators(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_cmd_add_coordinator(&b, "127.0.0.1", 1982, "127.0.0.1", 11982);
    expect_refused(m, &b, "ERR cluster not bootstrapped");
    bootstrap(m, 7, false);

    /* a format-1 encoding of this map: format byte 1, no coordinator section */
    buf v1;
    encode_map(m, &v1);
    v1.data[0] = 1;
    v1.len -= 13; /* the coordinator section and the format-4 sync byte */
    cmap *old = NULL;
    assert_int_equal(cmap_decode(v1.data, v1.len, &old), 0);
    assert_int_equal(old->ncoords, 0);
    assert_int_equal(old->next_coord_id, 1);
    cmap_free(old);
    buf_free(&v1);

    cmap_cmd_add_coordinator(&b, "127.0.0.1", 1982, "127.0.0.1", 11982);
    assert_int_equal(expect_ok(m, &b), 1);
    cmap_cmd_add_coordinator(&b, "127.0.0.1", 1983, "127.0.0.1", 11983);
    assert_int_equal(expect_ok(m, &b), 2);
    cmap_cmd_add_coordinator(&b, "127.0.0.1", 1982, "127.0.0.2", 1);
    expect_refused(m, &b, "ERR coordinator 1 already uses that address");
    cmap_cmd_add_coordinator(&b, "127.0.0.9", 1, "127.0.0.1", 11983);
    expect_refused(m, &b, "ERR coordinator 2 already uses that address");
    cmap_cmd_add_coordinator(&b, "", 1, "h", 2);
    expect_refused(m, &b, "ERR invalid coordinator address");
    cmap_cmd_add_coordinator(&b, "h", 0, "h", 2);
    expect_refused(m, &b, "ERR coordinator port must not be 0");
    roundtrip(m);

    cmap_cmd_remove_coordinator(&b, 1);
    expect_ok(m, &b);
    assert_null(cmap_coordinator_find(m, 1));
    assert_non_null(cmap_coordinator_find(m, 2));
    cmap_cmd_remove_coordinator(&b, 1);
    expect_refused(m, &b, "ERR no such coordinator 1");
    cmap_cmd_add_coordinator(&b, "127.0.0.1", 1982, "127.0.0.1", 11982);
    assert_int_equal(expect_ok(m, &b), 3); /* never reused */
    roundtrip(m);

    /* every truncated command is refused without a change */
    buf full;
    buf_init(&full);
    cmap_cmd_add_coordinator(&full, "127.0.0.4", 4, "127.0.0.4", 5);
    for (size_t n = 0; n < full.len; n++) {
        buf_append(&b, full.data, n);
        expect_refused(m, &b, "ERR malformed command");
    }
    buf_free(&full);
    buf_free(&b);
    cmap_free(m);
}

/* REMOVE_BACKUPS takes a SUSPECT daemon out of the partitions it backs up,
 * never out of those it leads, and never removes a last in-sync replica. */
static void test_remove_backups(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 9, false);
    for (int i = 0; i < 3; i++) add_daemon(m, "h", (uint16_t)(10 + i), 0);
    add_space(m, "space s key k create 6 partitions tolerate 1 failures");
    buf b;
    buf_init(&b);
    cmap_cmd_remove_backups(&b, 2);
    expect_refused(m, &b, "ERR daemon 2 is ONLINE: mark it SUSPECT first");
    set_state(m, 2, CMAP_D_SUSPECT, 5);
    const cmap_space *sp = &m->spaces[0];
    uint64_t epochs[6];
    int led = 0, backed = 0;
    for (int p = 0; p < 6; p++) {
        epochs[p] = sp->parts[p].epoch;
        led += sp->parts[p].replicas[0].daemon == 2;
        backed += sp->parts[p].nreplicas > 1 && sp->parts[p].replicas[1].daemon == 2;
    }
    assert_true(led > 0 && backed > 0);
    cmap_cmd_remove_backups(&b, 2);
    expect_ok(m, &b);
    sp = &m->spaces[0];
    for (int p = 0; p < 6; p++) {
        const cmap_partition *pt = &sp->parts[p];
        if (pt->replicas[0].daemon == 2) {
            assert_int_equal(pt->epoch, epochs[p]); /* led: untouched */
            assert_int_equal(pt->nreplicas, 2);
        } else {
            for (uint32_t j = 0; j < pt->nreplicas; j++) assert_int_not_equal(pt->replicas[j].daemon, 2);
        }
    }
    check_invariants(m);
    roundtrip(m);
    cmap_cmd_remove_backups(&b, 2);
    expect_refused(m, &b, "ERR daemon 2 backs up no partition it can leave");
    buf_free(&b);
    cmap_free(m);
}

/* The cluster's sync requirement: a word setting, persisted (format 4),
 * refused for anything but any/always/batch/none. */
static void test_sync_setting(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 3, false);
    buf b, v;
    buf_init(&b);
    buf_init(&v);
    assert_int_equal(m->settings.sync_required, CMAP_SYNC_ANY);
    cmap_cmd_set_config(&b, "sync", "always");
    expect_ok(m, &b);
    assert_int_equal(m->settings.sync_required, CMAP_SYNC_ALWAYS);
    assert_int_equal(cmap_config_get(m, "sync", &v), 0);
    assert_memory_equal(v.data, "always", 6);
    cmap_cmd_set_config(&b, "sync", "2");
    expect_refused(m, &b, "ERR invalid value '2' for sync (any, always, batch, none)");
    cmap_cmd_set_config(&b, "sync", "sometimes");
    expect_refused(m, &b, "ERR invalid value 'sometimes' for sync (any, always, batch, none)");
    roundtrip(m);
    /* a corrupt sync byte is refused */
    buf e;
    encode_map(m, &e);
    e.data[e.len - 1] = 9;
    cmap *d = NULL;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    buf_free(&e);
    assert_string_equal(cmap_sync_name(CMAP_SYNC_NONE), "none");
    buf_free(&b);
    buf_free(&v);
    cmap_free(m);
}

static void build_log(buf *cmds, size_t *offs, size_t *n)
{
    buf_init(cmds);
    *n = 0;
#define MARK() (offs[(*n)++] = cmds->len)
    MARK();
    cmap_cmd_add_daemon(cmds, "h", 1, 2, 10); /* refused: not bootstrapped */
    MARK();
    cmap_cmd_bootstrap(cmds, 99, false);
    MARK();
    cmap_cmd_add_space(cmds, PHONEBOOK, strlen(PHONEBOOK)); /* refused */
    for (uint16_t i = 0; i < 4; i++) {
        MARK();
        cmap_cmd_add_daemon(cmds, "10.1.1.1", (uint16_t)(2000 + i), 3000, 20 + i);
    }
    MARK();
    cmap_cmd_add_space(cmds, PHONEBOOK, strlen(PHONEBOOK));
    MARK();
    cmap_cmd_set_daemon_state(cmds, 2, CMAP_D_OFFLINE, 50);
    MARK();
    cmap_cmd_add_space(cmds, "space kv key k", 14);
    MARK();
    cmap_cmd_set_config(cmds, "reprotect_delay_s", "5");
    MARK();
    cmap_cmd_drop_space(cmds, "phonebook", 9);
    MARK();
    cmap_cmd_drop_space(cmds, "phonebook", 9); /* refused */
    MARK();
    cmap_cmd_add_space(cmds, PHONEBOOK, strlen(PHONEBOOK));
    MARK();
    cmap_cmd_set_daemon_state(cmds, 3, CMAP_D_RETIRED, 60);
    MARK();
    cmap_cmd_add_daemon(cmds, "10.1.1.1", 2001, 3000, 70);
    MARK();
    buf_append(cmds, "\x01\x63", 2); /* refused: unknown type */
#undef MARK
    offs[*n] = cmds->len;
}

static void test_determinism(void **state)
{
    (void)state;
    buf cmds;
    size_t offs[64], n;
    build_log(&cmds, offs, &n);
    cmap *a = cmap_new(), *b = cmap_new();
    uint64_t applied = 0;
    for (size_t i = 0; i < n; i++) {
        cmap_result ra, rb;
        int x = cmap_apply(a, cmds.data + offs[i], offs[i + 1] - offs[i], &ra);
        int y = cmap_apply(b, cmds.data + offs[i], offs[i + 1] - offs[i], &rb);
        assert_int_equal(x, y);
        assert_int_equal(ra.id, rb.id);
        assert_string_equal(ra.msg, rb.msg);
        if (x == 0) applied++;
        assert_int_equal(a->version, applied);
    }
    assert_int_equal(applied, n - 4);
    buf ea, eb;
    encode_map(a, &ea);
    encode_map(b, &eb);
    assert_int_equal(ea.len, eb.len);
    assert_memory_equal(ea.data, eb.data, ea.len);
    check_invariants(a);
    /* phonebook is space 3 now; kv is 2 */
    assert_int_equal(cmap_space_find(a, "phonebook", 9)->id, 3);
    assert_int_equal(cmap_space_find(a, "kv", 2)->id, 2);
    /* a NULL result is allowed */
    assert_int_equal(cmap_apply(a, cmds.data + offs[n - 1], offs[n] - offs[n - 1], NULL), -1);
    assert_int_equal(cmap_apply(a, cmds.data + offs[0], offs[1] - offs[0], NULL), 0);
    assert_int_equal(a->version, applied + 1);
    cmap_free(a);
    cmap_free(b);
    buf_free(&ea);
    buf_free(&eb);
    buf_free(&cmds);
}

/* ---- malformed commands ------------------------------------------------- */

static void test_malformed_commands(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    add_daemon(m, "h", 1, 0);
    add_daemon(m, "h", 2, 0);
    add_space(m, "space s key k");
    cmap *fresh = cmap_new();

    buf cmds;
    size_t offs[16], n = 0;
    buf_init(&cmds);
    offs[n++] = cmds.len;
    cmap_cmd_bootstrap(&cmds, 5, false);
    offs[n++] = cmds.len;
    cmap_cmd_set_config(&cmds, "heartbeat_ms", "100");
    offs[n++] = cmds.len;
    cmap_cmd_add_space(&cmds, "space t key k", 13);
    offs[n++] = cmds.len;
    cmap_cmd_drop_space(&cmds, "s", 1);
    offs[n++] = cmds.len;
    cmap_cmd_add_daemon(&cmds, "h", 3, 4, 5);
    offs[n++] = cmds.len;
    cmap_cmd_set_daemon_state(&cmds, 1, CMAP_D_OFFLINE, 5);
    offs[n++] = cmds.len;
    cmap_cmd_replica_failed(&cmds, 1);
    offs[n++] = cmds.len;
    cmap_cmd_add_replica(&cmds, 1, 0, 1);
    offs[n++] = cmds.len;
    cmap_cmd_replica_in_sync(&cmds, 1, 0, 1, 1);
    offs[n++] = cmds.len;
    cmap_cmd_handoff(&cmds, 1, 0, 2);
    offs[n] = cmds.len;

    buf b;
    buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        const char *c = cmds.data + offs[i];
        size_t len = offs[i + 1] - offs[i];
        /* every strict prefix, including the empty one */
        for (size_t k = 0; k < len; k++) {
            buf_append(&b, c, k);
            expect_refused(m, &b, "ERR malformed command");
            buf_append(&b, c, k);
            expect_refused(fresh, &b, "ERR malformed command");
        }
        /* one byte too many */
        buf_append(&b, c, len);
        buf_putc(&b, 0);
        expect_refused(m, &b, "ERR malformed command");
        /* wrong command-format version */
        for (int v = 0; v < 256; v += 1) {
            if (v == 1) continue;
            buf_append(&b, c, len);
            b.data[0] = (char)v;
            expect_refused(m, &b, "ERR malformed command");
        }
    }
    /* unknown types */
    static const unsigned char types[] = {0, 7, 8, 100, 255};
    for (size_t i = 0; i < sizeof types; i++) {
        buf_putc(&b, 1);
        buf_putc(&b, (char)types[i]);
        expect_refused(m, &b, "ERR malformed command");
        buf_putc(&b, 1);
        buf_putc(&b, (char)types[i]);
        buf_append(&b, "\0\0\0\0\0\0\0\0\0", 9);
        expect_refused(m, &b, "ERR malformed command");
    }
    /* a string length running past the end */
    buf_putc(&b, 1);
    buf_putc(&b, CMAP_CMD_DROP_SPACE);
    buf_put_u32be(&b, 0xffffffffu);
    buf_putc(&b, 's');
    expect_refused(m, &b, "ERR malformed command");
    buf_putc(&b, 1);
    buf_putc(&b, CMAP_CMD_SET_CONFIG);
    buf_put_u32be(&b, 2);
    buf_append(&b, "ab", 2);
    buf_put_u32be(&b, 5);
    buf_append(&b, "1234", 4);
    expect_refused(m, &b, "ERR malformed command");
    /* no bytes at all */
    cmap_result res;
    assert_int_equal(cmap_apply(m, NULL, 0, &res), -1);
    assert_string_equal(res.msg, "ERR malformed command");
    assert_int_equal(cmap_apply(m, "", 0, &res), -1);
    assert_string_equal(res.msg, "ERR malformed command");

    /* random corruption of valid commands never crashes; a refusal changes
     * nothing, an acceptance keeps the invariants */
    rng_state = 12345;
    for (int iter = 0; iter < 20000; iter++) {
        size_t i = rnd() % n;
        buf_append(&b, cmds.data + offs[i], offs[i + 1] - offs[i]);
        int flips = 1 + (int)(rnd() % 3);
        for (int f = 0; f < flips; f++)
            b.data[rnd() % b.len] ^= (char)(1u << (rnd() % 8));
        buf before, after;
        encode_map(m, &before);
        cmap_result r2;
        uint64_t v = m->version;
        if (run(m, &b, &r2) != 0) {
            encode_map(m, &after);
            assert_int_equal(before.len, after.len);
            assert_memory_equal(before.data, after.data, before.len);
            buf_free(&after);
        } else {
            assert_int_equal(m->version, v + 1);
            check_invariants(m);
        }
        buf_free(&before);
    }
    buf_free(&b);
    buf_free(&cmds);
    cmap_free(fresh);
    cmap_free(m);
}

/* ---- encoding ----------------------------------------------------------- */

static void roundtrip(const cmap *m)
{
    buf e1, e2;
    encode_map(m, &e1);
    cmap *d = NULL;
    assert_int_equal(cmap_decode(e1.data, e1.len, &d), 0);
    assert_non_null(d);
    encode_map(d, &e2);
    assert_int_equal(e1.len, e2.len);
    assert_memory_equal(e1.data, e2.data, e1.len);
    assert_int_equal(d->version, m->version);
    assert_int_equal(d->nspaces, m->nspaces);
    assert_int_equal(d->ndaemons, m->ndaemons);
    check_invariants(d);
    cmap_free(d);
    buf_free(&e1);
    buf_free(&e2);
}

static void test_encode_decode(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    roundtrip(m); /* unbootstrapped */
    cmap_free(m);

    m = cmap_new();
    bootstrap(m, 3, true);
    roundtrip(m);
    add_daemon(m, "h", 1, 0);
    add_space(m, PHONEBOOK);
    roundtrip(m);
    cmap_free(m);

    m = rich_map();
    roundtrip(m);
    buf e;
    encode_map(m, &e);
    cmap *d = NULL;
    assert_int_equal(cmap_decode(e.data, e.len, &d), 0);
    /* the decoded map works like the original */
    assert_int_equal(d->cluster_id, 0x1234567890abcdefULL);
    assert_int_equal(config(d, "ping_timeout_ms"), 5000);
    assert_int_equal(config(d, "log_retention"), 77);
    assert_int_equal(cmap_daemon_find(d, 3)->state, CMAP_D_OFFLINE);
    assert_int_equal(cmap_daemon_find(d, 3)->since_ms, 1001);
    assert_string_equal(cmap_daemon_find(d, 6)->host, "db-host.example");
    assert_null(cmap_space_find(d, "kv", 2));
    const cmap_space *sp = cmap_space_find(d, "kv2", 3);
    assert_int_equal(sp->id, 3);
    assert_int_equal(sp->schema->partitions, 16);
    assert_int_equal(cmap_partition_of(sp, "key", 3), XXH64("key", 3, 0) % 16);
    buf b;
    buf_init(&b);
    cmap_cmd_add_space(&b, "space kv key k", 14);
    assert_int_equal(expect_ok(d, &b), 4);           /* next_space_id survived */
    cmap_cmd_add_daemon(&b, "10.0.0.1", 2032, 1, 0); /* daemon 3's address, now offline */
    assert_int_equal(expect_ok(d, &b), 7);
    cmap_cmd_add_daemon(&b, "10.0.0.1", 2012, 1, 0);
    expect_refused(d, &b, "ERR daemon at 10.0.0.1:2012 is already online (id 1)");
    cmap_cmd_set_daemon_state(&b, 5, CMAP_D_ONLINE, 0);
    expect_refused(d, &b, "ERR daemon 5 is retired");
    buf_free(&b);
    cmap_free(d);
    /* a NULL input is refused */
    d = (cmap *)&e;
    assert_int_equal(cmap_decode(NULL, 0, &d), -1);
    assert_null(d);
    buf_free(&e);
    cmap_free(m);
}

static void test_decode_truncated(void **state)
{
    (void)state;
    cmap *m = rich_map();
    buf e;
    encode_map(m, &e);
    for (size_t k = 0; k < e.len; k++) {
        cmap *d = (cmap *)&e;
        assert_int_equal(cmap_decode(e.data, k, &d), -1);
        assert_null(d);
    }
    /* and one trailing byte too many */
    buf_putc(&e, 0);
    cmap *d = NULL;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    assert_null(d);
    buf_free(&e);
    cmap_free(m);
}

static void test_decode_flips(void **state)
{
    (void)state;
    cmap *m = rich_map();
    buf e;
    encode_map(m, &e);
    rng_state = 987654321;
    int accepted = 0;
    for (int iter = 0; iter < 30000; iter++) {
        char *copy = malloc(e.len);
        assert_non_null(copy);
        memcpy(copy, e.data, e.len);
        int flips = 1 + (int)(rnd() % 4);
        for (int f = 0; f < flips; f++)
            copy[rnd() % e.len] ^= (char)(1u << (rnd() % 8));
        cmap *d = NULL;
        if (cmap_decode(copy, e.len, &d) == 0) {
            /* whatever is accepted is a valid map that round-trips */
            accepted++;
            check_invariants(d);
            roundtrip(d);
            cmap_free(d);
        } else {
            assert_null(d);
        }
        free(copy);
    }
    /* flips in free-form fields (times, cluster id) are accepted */
    assert_true(accepted > 0);
    buf_free(&e);
    cmap_free(m);
}

/* Encodes a map whose fields a test broke by hand and checks that the
 * decoder refuses it. */
static void expect_decode_fails(const cmap *m)
{
    buf e;
    encode_map(m, &e);
    cmap *d = NULL;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    assert_null(d);
    buf_free(&e);
}

/* More replicas (or departed daemons) than CMAP_MAX_REPLICAS can only be
 * written by hand: a map of 9 daemons and one 1-replica partition, its
 * counts patched. */
static void test_decode_too_many_replicas(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < CMAP_MAX_REPLICAS + 2; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 0);
    add_space(m, "space s key k create 1 partitions tolerate 0 failures");
    buf e;
    encode_map(m, &e);
    /* the spaces end with: u8 health, u32 nreplicas, u64 daemon, u8 state,
     * u32 ndeparted (0); then come the coordinators (u64 next id, u32 count 0) */
    const size_t coords = 12 + 1 /* format 4: sync byte */, after = 4 + coords;
    assert_int_equal(get_u32be(e.data + e.len - after - 13), 1);
    assert_int_equal(get_u32be(e.data + e.len - after), 0);
    uint64_t first = get_u64be(e.data + e.len - after - 9);
    cmap *d = NULL;
    assert_int_equal(cmap_decode(e.data, e.len, &d), 0);
    cmap_free(d);
    unsigned char tail[16];
    memcpy(tail, e.data + e.len - coords, coords);
    e.len -= after + 13;
    size_t base = e.len;
    for (uint32_t n = CMAP_MAX_REPLICAS; n <= CMAP_MAX_REPLICAS + 1; n++) {
        e.len = base;
        buf_put_u32be(&e, n);
        for (uint64_t id = 1; id <= n; id++) {
            buf_put_u64be(&e, id == 1 ? first : (id == first ? 1 : id));
            buf_putc(&e, CMAP_R_IN_SYNC);
        }
        buf_put_u32be(&e, 0);
        buf_append(&e, tail, coords);
        d = (cmap *)&e;
        if (n == CMAP_MAX_REPLICAS) { /* the limit itself is fine */
            assert_int_equal(cmap_decode(e.data, e.len, &d), 0);
            assert_int_equal(d->spaces[0].parts[0].nreplicas, CMAP_MAX_REPLICAS);
            cmap_free(d);
        } else {
            assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
            assert_null(d);
        }
    }
    buf_free(&e);

    /* departed lists: the replica's daemon down (so the partition is not
     * PROTECTED and may have departed daemons), 8 departed are fine, 9 not */
    set_state(m, first, CMAP_D_OFFLINE, 1);
    encode_map(m, &e);
    memcpy(tail, e.data + e.len - coords, coords);
    e.len -= after;
    base = e.len;
    for (uint32_t n = CMAP_MAX_REPLICAS; n <= CMAP_MAX_REPLICAS + 1; n++) {
        e.len = base;
        buf_put_u32be(&e, n);
        uint32_t put = 0;
        for (uint64_t id = 1; put < n; id++)
            if (id != first) {
                buf_put_u64be(&e, id);
                put++;
            }
        buf_append(&e, tail, coords);
        d = (cmap *)&e;
        if (n == CMAP_MAX_REPLICAS) {
            assert_int_equal(cmap_decode(e.data, e.len, &d), 0);
            assert_int_equal(d->spaces[0].parts[0].ndeparted, CMAP_MAX_REPLICAS);
            assert_int_equal(d->spaces[0].parts[0].health, CMAP_H_UNAVAILABLE);
            roundtrip(d);
            cmap_free(d);
        } else {
            assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
            assert_null(d);
        }
    }
    buf_free(&e);
    cmap_free(m);
}

static void test_decode_invalid(void **state)
{
    (void)state;
    cmap *m = rich_map();
    cmap_space *sp = &m->spaces[1]; /* kv2: 16 partitions, tolerate 1 */
    cmap_partition *pt = &sp->parts[2]; /* on daemons 6 and 1, both ONLINE */
    cmap_partition saved = *pt;
    assert_int_equal(pt->nreplicas, 2);
    assert_int_equal(pt->health, CMAP_H_PROTECTED);

    pt->replicas[1].daemon = pt->replicas[0].daemon; /* duplicate replica */
    expect_decode_fails(m);
    *pt = saved;
    pt->replicas[1].daemon = 99; /* unknown daemon */
    expect_decode_fails(m);
    *pt = saved;
    pt->replicas[0].state = 7; /* bad replica state */
    expect_decode_fails(m);
    *pt = saved;
    pt->health = CMAP_H_DEGRADED; /* wrong health */
    expect_decode_fails(m);
    pt->health = 0;
    expect_decode_fails(m);
    *pt = saved;
    pt->epoch = 0;
    expect_decode_fails(m);
    *pt = saved;
    pt->nreplicas = CMAP_MAX_REPLICAS;
    for (uint32_t j = 0; j < CMAP_MAX_REPLICAS; j++)
        pt->replicas[j] = saved.replicas[0];
    expect_decode_fails(m); /* eight copies of one daemon */
    *pt = saved;
    /* a partition with a catching-up replica is valid, with the right health */
    pt->replicas[1].state = CMAP_R_CATCHING_UP;
    pt->health = CMAP_H_DEGRADED;
    roundtrip(m);
    pt->replicas[0].state = CMAP_R_CATCHING_UP;
    pt->health = CMAP_H_UNAVAILABLE;
    roundtrip(m);
    pt->nreplicas = 0;
    roundtrip(m);
    *pt = saved;
    roundtrip(m);
    /* a catching-up primary with an in-sync backup breaks I3 */
    pt->replicas[0].state = CMAP_R_CATCHING_UP;
    pt->health = CMAP_H_DEGRADED;
    expect_decode_fails(m);
    *pt = saved;

    /* health counts only in-sync replicas on ONLINE daemons: partition 3 is
     * on daemons 1 (ONLINE) and 2 (SUSPECT) */
    cmap_partition *p3 = &sp->parts[3];
    assert_int_equal(p3->replicas[1].daemon, 2);
    assert_int_equal(p3->health, CMAP_H_DEGRADED);
    p3->health = CMAP_H_PROTECTED;
    expect_decode_fails(m);
    p3->health = CMAP_H_DEGRADED;

    /* departed lists: distinct, known, not replicas, none while PROTECTED */
    p3->ndeparted = 2;
    p3->departed[0] = 5;
    p3->departed[1] = 3;
    roundtrip(m);
    p3->departed[1] = 5; /* duplicate */
    expect_decode_fails(m);
    p3->departed[1] = 99; /* unknown */
    expect_decode_fails(m);
    p3->departed[1] = 2; /* a replica */
    expect_decode_fails(m);
    p3->departed[1] = 3;
    pt->ndeparted = 1; /* on a PROTECTED partition */
    pt->departed[0] = 3;
    expect_decode_fails(m);
    pt->ndeparted = 0;
    pt->departed[0] = 0;
    roundtrip(m);
    p3->ndeparted = 0;
    p3->departed[0] = p3->departed[1] = 0;

    /* spaces: id order, id bound */
    uint32_t sid = sp->id;
    sp->id = m->spaces[0].id;
    expect_decode_fails(m);
    sp->id = m->next_space_id;
    expect_decode_fails(m);
    sp->id = sid;
    /* duplicate names */
    char saved_name[SPACE_MAX_NAME + 1];
    memcpy(saved_name, sp->schema->name, sizeof saved_name);
    strcpy(sp->schema->name, m->spaces[0].schema->name);
    expect_decode_fails(m);
    memcpy(sp->schema->name, saved_name, sizeof saved_name);
    roundtrip(m);

    /* daemons: order, id bound, fields, two live at one address */
    cmap_daemon dsaved = m->daemons[2];
    m->daemons[2].id = m->daemons[1].id;
    expect_decode_fails(m);
    m->daemons[2] = dsaved;
    m->daemons[5].id = m->next_daemon_id;
    expect_decode_fails(m);
    m->daemons[5].id = 6;
    m->daemons[2].state = 0;
    expect_decode_fails(m);
    m->daemons[2].state = CMAP_D_RETIRED + 1;
    expect_decode_fails(m);
    m->daemons[2] = dsaved;
    m->daemons[2].port = 0;
    expect_decode_fails(m);
    m->daemons[2] = dsaved;
    m->daemons[2].peer_port = 0;
    expect_decode_fails(m);
    m->daemons[2] = dsaved;
    m->daemons[2].host[0] = '\0';
    expect_decode_fails(m);
    m->daemons[2] = dsaved;
    m->daemons[2].host[3] = ' ';
    expect_decode_fails(m);
    m->daemons[2] = dsaved;
    m->daemons[2].port = m->daemons[0].port; /* offline: allowed */
    roundtrip(m);
    m->daemons[2].state = CMAP_D_SUSPECT; /* live: not allowed */
    expect_decode_fails(m);
    m->daemons[2] = dsaved;
    roundtrip(m);

    /* header: settings, counters */
    cmap_settings ssaved = m->settings;
    m->settings.heartbeat_ms = 9;
    expect_decode_fails(m);
    m->settings = ssaved;
    m->settings.heartbeat_ms = 2500; /* ping 5000 is not more than twice */
    expect_decode_fails(m);
    m->settings = ssaved;
    m->settings.ping_timeout_ms = 3600001;
    expect_decode_fails(m);
    m->settings = ssaved;
    m->settings.reprotect_delay_s = 604801;
    expect_decode_fails(m);
    m->settings = ssaved;
    m->settings.log_retention = 1000000000001ULL;
    expect_decode_fails(m);
    m->settings = ssaved;
    uint64_t v = m->version;
    m->version = 0;
    expect_decode_fails(m);
    m->version = v;
    m->next_space_id = 0;
    expect_decode_fails(m);
    m->next_space_id = 4;
    m->next_daemon_id = 0;
    expect_decode_fails(m);
    m->next_daemon_id = 7;
    roundtrip(m);

    /* an unbootstrapped map must be empty */
    cmap *f = cmap_new();
    f->version = 1;
    expect_decode_fails(f);
    f->version = 0;
    f->settings.heartbeat_ms = 250;
    expect_decode_fails(f);
    f->settings.heartbeat_ms = 0;
    f->next_daemon_id = 1;
    expect_decode_fails(f);
    f->next_daemon_id = 0;
    f->next_space_id = 1;
    expect_decode_fails(f);
    f->next_space_id = 0;
    roundtrip(f);
    cmap_free(f);
    uint64_t cid = m->cluster_id;
    m->cluster_id = 0; /* with daemons and spaces */
    expect_decode_fails(m);
    m->cluster_id = cid;

    /* byte-level: format version, single_node byte, partition count */
    buf e;
    encode_map(m, &e);
    cmap *d = NULL;
    e.data[0] = CMAP_FORMAT_VERSION + 1;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    e.data[0] = 0;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    e.data[0] = 1; /* a format-2 map read as format 1 has trailing bytes */
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    e.data[0] = CMAP_FORMAT_VERSION;
    size_t single_at = 1 + 8 + 8 + 4 + 4 + 4 + 8;
    e.data[single_at] = 2;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    e.data[single_at] = 0;
    assert_int_equal(cmap_decode(e.data, e.len, &d), 0);
    cmap_free(d);
    /* the u32 partition count follows the schema bytes */
    buf sch;
    buf_init(&sch);
    space_encode(sp->schema, &sch);
    char *at = memmem(e.data, e.len, sch.data, sch.len);
    assert_non_null(at);
    unsigned char *cnt = (unsigned char *)at + sch.len;
    assert_int_equal(get_u32be(cnt), 16);
    cnt[3] = 15;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    cnt[3] = 17;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    cnt[0] = 0xff;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    cnt[0] = 0;
    cnt[3] = 16;
    /* the schema bytes themselves */
    at[0] = 9;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    assert_null(d);
    buf_free(&sch);
    buf_free(&e);
    cmap_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_map),
        cmocka_unit_test(test_bootstrap),
        cmocka_unit_test(test_bootstrap_refused),
        cmocka_unit_test(test_not_bootstrapped),
        cmocka_unit_test(test_set_config),
        cmocka_unit_test(test_set_config_refused),
        cmocka_unit_test(test_config_get_names),
        cmocka_unit_test(test_add_space),
        cmocka_unit_test(test_add_space_refused),
        cmocka_unit_test(test_too_many_spaces),
        cmocka_unit_test(test_ids_exhausted),
        cmocka_unit_test(test_placement_formula),
        cmocka_unit_test(test_placement_spread),
        cmocka_unit_test(test_single_node),
        cmocka_unit_test(test_drop_space),
        cmocka_unit_test(test_add_daemon),
        cmocka_unit_test(test_too_many_daemons),
        cmocka_unit_test(test_set_daemon_state),
        cmocka_unit_test(test_partition_of),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_malformed_commands),
        cmocka_unit_test(test_encode_decode),
        cmocka_unit_test(test_decode_truncated),
        cmocka_unit_test(test_decode_flips),
        cmocka_unit_test(test_decode_invalid),
        cmocka_unit_test(test_coordinators),
        cmocka_unit_test(test_sync_setting),
        cmocka_unit_test(test_remove_backups),
        cmocka_unit_test(test_decode_too_many_replicas),
        cmocka_unit_test(test_replica_failed_backup),
        cmocka_unit_test(test_replica_failed_primary),
        cmocka_unit_test(test_replica_failed_last_kept),
        cmocka_unit_test(test_replica_failed_all_down),
        cmocka_unit_test(test_replica_failed_many),
        cmocka_unit_test(test_replica_failed_refused),
        cmocka_unit_test(test_replica_failed_departed),
        cmocka_unit_test(test_add_replica),
        cmocka_unit_test(test_replica_in_sync),
        cmocka_unit_test(test_handoff),
        cmocka_unit_test(test_health_states),
        cmocka_unit_test(test_replica_commands_random),
        cmocka_unit_test(test_encode_formats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
