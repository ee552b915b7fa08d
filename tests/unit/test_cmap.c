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
            uint32_t in_sync = 0;
            for (uint32_t j = 0; j < pt->nreplicas; j++) {
                assert_non_null(cmap_daemon_find(m, pt->replicas[j].daemon));
                for (uint32_t q = 0; q < j; q++)
                    assert_true(pt->replicas[q].daemon != pt->replicas[j].daemon);
                if (pt->replicas[j].state == CMAP_R_IN_SYNC) in_sync++;
            }
            int want = in_sync == 0                          ? CMAP_H_UNAVAILABLE
                       : in_sync >= sp->schema->tolerate + 1 ? CMAP_H_PROTECTED
                                                             : CMAP_H_DEGRADED;
            assert_int_equal(pt->health, want);
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
    assert_int_equal(n, 4);
    assert_string_equal(names[0], "heartbeat_ms");
    assert_string_equal(names[1], "ping_timeout_ms");
    assert_string_equal(names[2], "reprotect_delay_s");
    assert_string_equal(names[3], "log_retention");

    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    buf b;
    buf_init(&b);
    static const char *const want[] = {"250", "3000", "60", "1000000"};
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
    /* replicas are not touched: failover is a separate decision */
    const cmap_space *sp = cmap_space_by_id(m, 1);
    for (uint32_t p = 0; p < 4; p++) {
        assert_int_equal(sp->parts[p].nreplicas, 3);
        assert_int_equal(sp->parts[p].health, CMAP_H_PROTECTED);
    }
    /* the same state again applies (version moves) but is no state change */
    set_state(m, 2, CMAP_D_OFFLINE, 300);
    assert_int_equal(cmap_daemon_find(m, 2)->since_ms, 200);
    set_state(m, 2, CMAP_D_SUSPECT, 400);
    set_state(m, 2, CMAP_D_SHUTDOWN, 500);
    set_state(m, 2, CMAP_D_ONLINE, 600);
    d = cmap_daemon_find(m, 2);
    assert_int_equal(d->state, CMAP_D_ONLINE);
    assert_int_equal(d->since_ms, 600);
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
    v1.len -= 12;
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

/* More replicas than CMAP_MAX_REPLICAS can only be written by hand: a map
 * of 9 daemons and one 1-replica partition, its count patched to 9. */
static void test_decode_too_many_replicas(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    bootstrap(m, 1, false);
    for (int i = 0; i < CMAP_MAX_REPLICAS + 1; i++)
        add_daemon(m, "h", (uint16_t)(1 + i), 0);
    add_space(m, "space s key k create 1 partitions tolerate 0 failures");
    buf e;
    encode_map(m, &e);
    /* the spaces end with: u8 health, u32 nreplicas, u64 daemon, u8 state;
     * then come the coordinators (u64 next id, u32 count 0) */
    const size_t coords = 12;
    assert_int_equal(get_u32be(e.data + e.len - coords - 13), 1);
    uint64_t first = get_u64be(e.data + e.len - coords - 9);
    cmap *d = NULL;
    assert_int_equal(cmap_decode(e.data, e.len, &d), 0);
    cmap_free(d);
    unsigned char tail[12];
    memcpy(tail, e.data + e.len - coords, coords);
    e.len -= coords + 13;
    buf_put_u32be(&e, CMAP_MAX_REPLICAS + 1);
    for (uint64_t id = 1; id <= CMAP_MAX_REPLICAS + 1; id++) {
        buf_put_u64be(&e, id == 1 ? first : (id == first ? 1 : id));
        buf_putc(&e, CMAP_R_IN_SYNC);
    }
    buf_append(&e, tail, coords);
    d = (cmap *)&e;
    assert_int_equal(cmap_decode(e.data, e.len, &d), -1);
    assert_null(d);
    buf_free(&e);
    cmap_free(m);
}

static void test_decode_invalid(void **state)
{
    (void)state;
    cmap *m = rich_map();
    cmap_space *sp = &m->spaces[1]; /* kv2: 16 partitions, tolerate 1 */
    cmap_partition *pt = &sp->parts[3];
    cmap_partition saved = *pt;
    assert_int_equal(pt->nreplicas, 2);

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
        cmocka_unit_test(test_decode_too_many_replicas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
