/* Unit tests for route: the CLUSTER.ROUTES table (src/route.c).
 *
 * The table is built from real maps (cmap commands), parsed back with the
 * client-side reply parser, and checked field by field against the map: the
 * version, every daemon with its client address and state, every space with
 * its partition count and each partition's primary, 0 for a partition with
 * no live replica. Run under ASan/UBSan with the other unit tests.
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
#include "resp.h"
#include "route.h"

static void apply_ok(cmap *m, buf *b)
{
    cmap_result res;
    if (cmap_apply(m, b->data, b->len, &res) != 0) fail_msg("refused: %s", res.msg);
    buf_reset(b);
}

/* A map with n ONLINE daemons at 10.0.0.<i>:2012 and, if space_text, that
 * space placed on them. */
static cmap *make_map(int n, const char *space_text)
{
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_cmd_bootstrap(&b, 0x1234, false);
    apply_ok(m, &b);
    for (int i = 1; i <= n; i++) {
        char host[32];
        snprintf(host, sizeof host, "10.0.0.%d", i);
        cmap_cmd_add_daemon(&b, host, 2012, 12012, 1000);
        apply_ok(m, &b);
        cmap_cmd_set_daemon_state(&b, (uint64_t)i, CMAP_D_ONLINE, 1000);
        apply_ok(m, &b);
    }
    if (space_text) {
        cmap_cmd_add_space(&b, space_text, strlen(space_text));
        apply_ok(m, &b);
    }
    buf_free(&b);
    return m;
}

static resp_reply *encode_parse(const cmap *m)
{
    buf out;
    buf_init(&out);
    route_encode(m, &out);
    resp_reply *r = NULL;
    size_t used = 0;
    assert_int_equal(resp_reply_parse(out.data, out.len, &used, &r), RESP_OK);
    assert_int_equal(used, out.len); /* one reply, nothing after it */
    buf_free(&out);
    return r;
}

static void test_routes_match_the_map(void **state)
{
    (void)state;
    cmap *m = make_map(3, "space kv key k attributes v create 8 partitions tolerate 1 failures");
    resp_reply *r = encode_parse(m);
    assert_int_equal(r->type, RESP_R_ARRAY);
    assert_int_equal(r->elements, 3);
    assert_int_equal(r->element[0]->type, RESP_R_INT);
    assert_int_equal(r->element[0]->integer, (long long)m->version);

    const resp_reply *ds = r->element[1];
    assert_int_equal(ds->type, RESP_R_ARRAY);
    assert_int_equal(ds->elements, m->ndaemons);
    for (size_t i = 0; i < ds->elements; i++) {
        const resp_reply *d = ds->element[i];
        assert_int_equal(d->elements, 4);
        assert_int_equal(d->element[0]->integer, (long long)m->daemons[i].id);
        assert_string_equal(d->element[1]->str, m->daemons[i].host);
        assert_int_equal(d->element[2]->integer, 2012);
        assert_string_equal(d->element[3]->str, "ONLINE");
    }

    const resp_reply *ss = r->element[2];
    assert_int_equal(ss->elements, 1);
    const resp_reply *s = ss->element[0];
    assert_int_equal(s->elements, 3);
    assert_string_equal(s->element[0]->str, "kv");
    assert_int_equal(s->element[1]->integer, 8);
    assert_int_equal(s->element[2]->elements, 8);
    const cmap_space *cs = cmap_space_find(m, "kv", 2);
    assert_non_null(cs);
    int led[4] = {0};
    for (uint32_t p = 0; p < 8; p++) {
        long long primary = s->element[2]->element[p]->integer;
        assert_int_equal(primary, (long long)cs->parts[p].replicas[0].daemon);
        assert_true(primary >= 1 && primary <= 3);
        led[primary]++;
    }
    for (int i = 1; i <= 3; i++) /* placement spreads primaries */
        assert_true(led[i] >= 2);
    resp_reply_free(r);
    cmap_free(m);
}

static void test_partition_without_live_replica_routes_to_nobody(void **state)
{
    (void)state;
    /* tolerate 0: one copy each; daemon 1 failing makes its partitions
     * UNAVAILABLE (its replica is kept: the partition waits for it) */
    cmap *m = make_map(2, "space kv key k attributes v create 4 partitions tolerate 0 failures");
    const cmap_space *cs = cmap_space_find(m, "kv", 2);
    bool had[3] = {false};
    for (uint32_t p = 0; p < 4; p++)
        had[cs->parts[p].replicas[0].daemon] = true;
    assert_true(had[1] && had[2]);
    buf b;
    buf_init(&b);
    cmap_cmd_set_daemon_state(&b, 1, CMAP_D_OFFLINE, 2000);
    apply_ok(m, &b);
    cmap_cmd_replica_failed(&b, 1);
    cmap_result res;
    cmap_apply(m, b.data, b.len, &res); /* may be refused: nothing to remove */
    buf_free(&b);
    cs = cmap_space_find(m, "kv", 2);
    resp_reply *r = encode_parse(m);
    const resp_reply *prim = r->element[2]->element[0]->element[2];
    for (uint32_t p = 0; p < 4; p++) {
        bool unavailable = cs->parts[p].health == CMAP_H_UNAVAILABLE;
        assert_int_equal(unavailable, cs->parts[p].replicas[0].daemon == 1);
        assert_int_equal(prim->element[p]->integer,
                         unavailable ? 0 : (long long)cs->parts[p].replicas[0].daemon);
    }
    assert_string_equal(r->element[1]->element[0]->element[3]->str, "OFFLINE");
    resp_reply_free(r);
    cmap_free(m);
}

static void test_empty_map(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    resp_reply *r = encode_parse(m);
    assert_int_equal(r->elements, 3);
    assert_int_equal(r->element[0]->integer, 0);
    assert_int_equal(r->element[1]->elements, 0);
    assert_int_equal(r->element[2]->elements, 0);
    resp_reply_free(r);
    cmap_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_match_the_map),
        cmocka_unit_test(test_partition_without_live_replica_routes_to_nobody),
        cmocka_unit_test(test_empty_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
