/* Unit tests for the pure parts of `keel daemon` (src/daemon.c): argument
 * parsing (defaults, long and short forms, every usage error), the identity
 * file (format/parse round trip, every kind of garbage, atomic store and
 * load from a temporary directory), lease arithmetic (validity boundary,
 * rounding, never shortening, dropping) and the request timeout rule,
 * coordinator addresses and the failover order, the parsing of the
 * coordinator's REGISTER and HEARTBEAT replies (built from RESP bytes), the
 * classification of its error replies, and the acceptance of a fetched map
 * (newer, same, older, other cluster, malformed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"

/* ---- helpers ------------------------------------------------------------ */

static int parse(daemon_opts *o, int argc, const char **argv)
{
    return daemon_parse_args(argc, (char **)argv, o);
}

/* Parses a RESP reply from text (must be complete). */
static resp_reply *reply_of(const char *text)
{
    resp_reply *r = NULL;
    size_t used = 0;
    assert_int_equal(resp_reply_parse(text, strlen(text), &used, &r), RESP_OK);
    assert_int_equal(used, strlen(text));
    return r;
}

static char tmpdir[256];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/keel-test-daemon-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

static int remove_tmpdir(void **state)
{
    (void)state;
    remove_file(tmpdir, DAEMON_IDENTITY_FILE);
    remove_file(tmpdir, DAEMON_IDENTITY_FILE ".tmp");
    return rmdir(tmpdir);
}

/* ---- arguments ---------------------------------------------------------- */

static void test_args_defaults(void **state)
{
    (void)state;
    daemon_opts o;
    const char *argv[] = {"daemon"};
    assert_int_equal(parse(&o, 1, argv), 0);
    assert_string_equal(o.host, "127.0.0.1");
    assert_int_equal(o.port, 2012);
    assert_int_equal(o.peer_port, 12012);
    assert_string_equal(o.coord_host, "127.0.0.1");
    assert_int_equal(o.coord_port, 1982);
    assert_string_equal(o.dir, "keel-daemon-data");
    assert_false(o.foreground);
    assert_false(o.help);
    assert_false(o.blocking); /* live rejoin unless asked */
}

static void test_args_long_forms(void **state)
{
    (void)state;
    daemon_opts o;
    const char *argv[] = {"daemon",
                          "-f",
                          "--listen=10.0.0.2",
                          "--listen-port=3000",
                          "--coordinator=10.0.0.1",
                          "--coordinator-port=1983",
                          "--data=/tmp/d1",
                          "--peer-port=4000",
                          "--blocking"};
    assert_int_equal(parse(&o, 9, argv), 0);
    assert_true(o.foreground);
    assert_true(o.blocking);
    assert_string_equal(o.host, "10.0.0.2");
    assert_int_equal(o.port, 3000);
    assert_int_equal(o.peer_port, 4000);
    assert_string_equal(o.coord_host, "10.0.0.1");
    assert_int_equal(o.coord_port, 1983);
    assert_string_equal(o.dir, "/tmp/d1");
}

static void test_args_short_forms(void **state)
{
    (void)state;
    daemon_opts o;
    const char *argv[] = {"daemon", "-l", "::1",  "-p", "3001", "-c",
                          "::1",    "-P", "1984", "-D", "dir2"};
    assert_int_equal(parse(&o, 11, argv), 0);
    assert_false(o.foreground);
    assert_string_equal(o.host, "::1");
    assert_int_equal(o.port, 3001);
    assert_int_equal(o.peer_port, 13001); /* default follows the client port */
    assert_string_equal(o.coord_host, "::1");
    assert_int_equal(o.coord_port, 1984);
    assert_string_equal(o.dir, "dir2");
    /* parsing twice works (getopt state is reset) */
    const char *argv2[] = {"daemon", "-f"};
    assert_int_equal(parse(&o, 2, argv2), 0);
    assert_true(o.foreground);
    assert_int_equal(o.port, 2012);
}

static void test_args_help(void **state)
{
    (void)state;
    daemon_opts o;
    const char *argv[] = {"daemon", "--help"};
    assert_int_equal(parse(&o, 2, argv), 0);
    assert_true(o.help);
}

static void test_args_errors(void **state)
{
    (void)state;
    static const char *const bad[][3] = {
        {"-p", "0", NULL},
        {"-p", "65536", NULL},
        {"-p", "abc", NULL},
        {"-p", "-5", NULL},
        {"-p", "+5", NULL},
        {"-p", "12x", NULL},
        {"-p", "", NULL},
        {"-P", "70000", NULL},
        {"--peer-port", "0", NULL},
        {"-l", "localhost", NULL},
        {"-c", "coord.example", NULL},
        {"-l", "", NULL},
        {"-D", "", NULL},
        {"--bogus", NULL, NULL},
        {"extra", NULL, NULL},
        {"-p", "60000", NULL}, /* + 10000 is not a port, and no --peer-port */
        {"-x", NULL, NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[4] = {"daemon", bad[i][0], bad[i][1], NULL};
        int argc = bad[i][1] ? 3 : 2;
        daemon_opts o;
        if (parse(&o, argc, argv) != 2) fail_msg("accepted: %s %s", bad[i][0], bad[i][1]);
    }
    daemon_opts o;
    const char *same[] = {"daemon", "-p", "3000", "--peer-port", "3000"};
    assert_int_equal(parse(&o, 5, same), 2);
    const char *high[] = {"daemon", "-p", "60000", "--peer-port", "60001"};
    assert_int_equal(parse(&o, 5, high), 0);
    assert_int_equal(o.peer_port, 60001);
    const char *missing[] = {"daemon", "-p"};
    assert_int_equal(parse(&o, 2, missing), 2);
}

/* ---- identity ----------------------------------------------------------- */

static void test_identity_round_trip(void **state)
{
    (void)state;
    daemon_identity id = {0x9f2c00000000abcdull, 42}, back;
    char text[DAEMON_IDENTITY_MAX], err[160];
    int n = daemon_identity_format(&id, text, sizeof text);
    assert_string_equal(text, "cluster_id=9f2c00000000abcd\ndaemon_id=42\n");
    assert_int_equal(n, (int)strlen(text));
    assert_int_equal(daemon_identity_parse(text, (size_t)n, &back, err, sizeof err), 0);
    assert_true(back.cluster_id == id.cluster_id && back.daemon_id == id.daemon_id);

    daemon_identity big = {UINT64_MAX, UINT64_MAX};
    n = daemon_identity_format(&big, text, sizeof text);
    assert_true(n > 0);
    assert_int_equal(daemon_identity_parse(text, (size_t)n, &back, err, sizeof err), 0);
    assert_true(back.cluster_id == UINT64_MAX && back.daemon_id == UINT64_MAX);

    /* order of the lines and hex case do not matter */
    const char *swapped = "daemon_id=7\ncluster_id=00000000000000FF\n";
    assert_int_equal(daemon_identity_parse(swapped, strlen(swapped), &back, err, sizeof err), 0);
    assert_true(back.cluster_id == 0xff && back.daemon_id == 7);
}

static void test_identity_format_refuses(void **state)
{
    (void)state;
    char text[DAEMON_IDENTITY_MAX];
    daemon_identity zero_c = {0, 1}, zero_d = {1, 0}, ok = {1, 1};
    assert_int_equal(daemon_identity_format(&zero_c, text, sizeof text), -1);
    assert_int_equal(daemon_identity_format(&zero_d, text, sizeof text), -1);
    assert_int_equal(daemon_identity_format(&ok, text, 10), -1); /* too small */
}

static void test_identity_garbage(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *err;
    } cases[] = {
        {"", "empty"},
        {"cluster_id=0000000000000001\ndaemon_id=1", "line 2: not ended by a newline"},
        {"cluster_id=0000000000000001\n", "daemon_id missing"},
        {"daemon_id=3\n", "cluster_id missing"},
        {"cluster_id=000000000000001\ndaemon_id=1\n",
         "line 1: cluster_id must be 16 hex digits, not all zero"},
        {"cluster_id=00000000000000001\ndaemon_id=1\n",
         "line 1: cluster_id must be 16 hex digits, not all zero"},
        {"cluster_id=000000000000000g\ndaemon_id=1\n",
         "line 1: cluster_id must be 16 hex digits, not all zero"},
        {"cluster_id=0000000000000000\ndaemon_id=1\n",
         "line 1: cluster_id must be 16 hex digits, not all zero"},
        {"cluster_id=0000000000000001\ndaemon_id=0\n",
         "line 2: daemon_id must be a positive decimal number"},
        {"cluster_id=0000000000000001\ndaemon_id=-1\n",
         "line 2: daemon_id must be a positive decimal number"},
        {"cluster_id=0000000000000001\ndaemon_id= 1\n",
         "line 2: daemon_id must be a positive decimal number"},
        {"cluster_id=0000000000000001\ndaemon_id=18446744073709551616\n",
         "line 2: daemon_id must be a positive decimal number"},
        {"cluster_id=0000000000000001\ndaemon_id=\n",
         "line 2: daemon_id must be a positive decimal number"},
        {"cluster_id=0000000000000001\r\ndaemon_id=1\n",
         "line 1: cluster_id must be 16 hex digits, not all zero"},
        {"cluster_id=0000000000000001\ncluster_id=0000000000000002\ndaemon_id=1\n",
         "line 2: cluster_id given twice"},
        {"daemon_id=1\ndaemon_id=1\ncluster_id=0000000000000001\n",
         "line 2: daemon_id given twice"},
        {"cluster_id=0000000000000001\ndaemon_id=1\nextra=1\n", "line 3: unknown name 'extra'"},
        {"cluster_id=0000000000000001\ndaemon_id=1\n\n", "line 3: expected name=value"},
        {"hello\n", "line 1: expected name=value"},
        {"CLUSTER_ID=0000000000000001\ndaemon_id=1\n", "line 1: unknown name 'CLUSTER_ID'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        daemon_identity id = {123, 456};
        char err[160] = "";
        if (daemon_identity_parse(cases[i].text, strlen(cases[i].text), &id, err, sizeof err) != -1)
            fail_msg("accepted case %zu", i);
        assert_string_equal(err, cases[i].err);
        assert_true(id.cluster_id == 123 && id.daemon_id == 456); /* untouched */
    }
    /* a NUL inside the value */
    const char nul[] = "cluster_id=0000000000000001\ndaemon_id=1\0\n";
    daemon_identity id;
    char err[160];
    assert_int_equal(daemon_identity_parse(nul, sizeof nul - 1, &id, err, sizeof err), -1);
}

static void test_identity_files(void **state)
{
    (void)state;
    daemon_identity id = {0x1122334455667788ull, 9}, back = {0, 0};
    char err[600] = "";
    /* absent */
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), 0);
    /* store, load */
    assert_int_equal(daemon_identity_store(tmpdir, &id, err, sizeof err), 0);
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), 1);
    assert_true(back.cluster_id == id.cluster_id && back.daemon_id == id.daemon_id);
    char path[512];
    snprintf(path, sizeof path, "%s/%s.tmp", tmpdir, DAEMON_IDENTITY_FILE);
    assert_int_equal(access(path, F_OK), -1); /* the temporary file is gone */
    /* the file holds exactly the format */
    snprintf(path, sizeof path, "%s/%s", tmpdir, DAEMON_IDENTITY_FILE);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char text[128] = "";
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    assert_string_equal(text, "cluster_id=1122334455667788\ndaemon_id=9\n");
    /* store replaces */
    daemon_identity id2 = {5, 6};
    assert_int_equal(daemon_identity_store(tmpdir, &id2, err, sizeof err), 0);
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), 1);
    assert_true(back.cluster_id == 5 && back.daemon_id == 6);
    /* an invalid identity is not stored, and the old one survives */
    daemon_identity zero = {0, 6};
    assert_int_equal(daemon_identity_store(tmpdir, &zero, err, sizeof err), -1);
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), 1);
    assert_true(back.cluster_id == 5 && back.daemon_id == 6);
    /* corrupt: the message names the file and the problem */
    write_file(tmpdir, DAEMON_IDENTITY_FILE, "garbage", 7);
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "is corrupt: line 1: not ended by a newline"));
    /* too long */
    char big[DAEMON_IDENTITY_MAX + 10];
    memset(big, 'a', sizeof big);
    write_file(tmpdir, DAEMON_IDENTITY_FILE, big, sizeof big);
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), -1);
    assert_non_null(strstr(err, "longer than"));
    /* empty (a torn write of an older, non-atomic writer) */
    write_file(tmpdir, DAEMON_IDENTITY_FILE, "", 0);
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), -1);
    assert_non_null(strstr(err, "is corrupt: empty"));
    /* unreadable: a directory in its place */
    remove_file(tmpdir, DAEMON_IDENTITY_FILE);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(daemon_identity_load(tmpdir, &back, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot read"));
    /* and it cannot be replaced by rename: store fails, leaving no temp file */
    assert_int_equal(daemon_identity_store(tmpdir, &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot rename"));
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", tmpdir, DAEMON_IDENTITY_FILE);
    assert_int_equal(access(tmp, F_OK), -1);
    assert_int_equal(rmdir(path), 0);
    /* a directory that does not exist */
    assert_int_equal(daemon_identity_store("/nonexistent/keel/dir", &id, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    assert_int_equal(daemon_identity_load("/nonexistent/keel/dir", &back, err, sizeof err), 0);
}

/* ---- lease -------------------------------------------------------------- */

#define MS 1000000ull

static void test_lease(void **state)
{
    (void)state;
    daemon_lease l = {0};
    assert_false(daemon_lease_valid(&l, 0));
    assert_false(daemon_lease_valid(&l, 5 * MS));
    assert_int_equal(daemon_lease_ms_left(&l, 5 * MS), 0);

    /* heartbeat sent at t=1000 ms, answered later: valid until 1000 + 3000 */
    daemon_lease_renew(&l, 1000 * MS, 3000);
    assert_true(daemon_lease_valid(&l, 1000 * MS));
    assert_true(daemon_lease_valid(&l, 4000 * MS - 1));
    assert_false(daemon_lease_valid(&l, 4000 * MS)); /* the boundary is excluded */
    assert_int_equal(daemon_lease_ms_left(&l, 1500 * MS), 2500);
    assert_int_equal(daemon_lease_ms_left(&l, 4000 * MS - 1), 0); /* rounded down */
    assert_int_equal(daemon_lease_ms_left(&l, 3999 * MS - 1), 1);
    assert_int_equal(daemon_lease_ms_left(&l, 9000 * MS), 0);

    /* an answer to an older heartbeat never shortens the lease */
    daemon_lease_renew(&l, 500 * MS, 3000);
    assert_true(daemon_lease_valid(&l, 3999 * MS));
    /* a shorter ping_timeout from a later heartbeat does not shorten it either */
    daemon_lease_renew(&l, 1100 * MS, 1000);
    assert_true(daemon_lease_valid(&l, 3999 * MS));
    /* a later heartbeat extends it */
    daemon_lease_renew(&l, 2000 * MS, 3000);
    assert_true(daemon_lease_valid(&l, 4999 * MS));
    assert_false(daemon_lease_valid(&l, 5000 * MS));

    daemon_lease_drop(&l);
    assert_false(daemon_lease_valid(&l, 2001 * MS));
    assert_int_equal(daemon_lease_ms_left(&l, 2001 * MS), 0);
    /* after a drop an answered heartbeat grants it again */
    daemon_lease_renew(&l, 3000 * MS, 500);
    assert_true(daemon_lease_valid(&l, 3499 * MS));
    assert_false(daemon_lease_valid(&l, 3500 * MS));
}

static void test_rpc_timeout(void **state)
{
    (void)state;
    assert_int_equal(daemon_rpc_timeout_ms(250, 3000), 500); /* 2 heartbeats */
    assert_int_equal(daemon_rpc_timeout_ms(50, 500), 100);
    assert_int_equal(daemon_rpc_timeout_ms(1000, 1500), 750); /* capped at ping/2 */
    assert_int_equal(daemon_rpc_timeout_ms(100, 201), 100);
    assert_int_equal(daemon_rpc_timeout_ms(1, 1), 1); /* never 0 */
    assert_int_equal(daemon_rpc_timeout_ms(DAEMON_MAX_HEARTBEAT_MS, DAEMON_MAX_PING_TIMEOUT_MS),
                     2 * DAEMON_MAX_HEARTBEAT_MS);
}

/* ---- addresses and failover ------------------------------------------------ */

static daemon_addr A(const char *s)
{
    daemon_addr a;
    assert_int_equal(daemon_addr_parse(s, strlen(s), &a), 0);
    return a;
}

static void test_addr_parse(void **state)
{
    (void)state;
    daemon_addr a = A("127.0.0.1:1982");
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 1982);
    a = A("[::1]:65535");
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 65535);
    a = A("::1:7"); /* an unbracketed v6 literal splits at the last colon */
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 7);
    /* length-limited: trailing bytes beyond len are ignored */
    assert_int_equal(daemon_addr_parse("10.1.2.3:80 trailing", 11, &a), 0);
    assert_int_equal(a.port, 80);
    static const char *const bad[] = {"",
                                      "127.0.0.1",
                                      ":1982",
                                      "127.0.0.1:",
                                      "127.0.0.1:0",
                                      "127.0.0.1:65536",
                                      "127.0.0.1:1a",
                                      "127.0.0.1:-1",
                                      "localhost:1982",
                                      "[::1]",
                                      "[]:1",
                                      "127.0.0.1:123456",
                                      "1.2.3.4.5:1",
                                      "[127.0.0.1:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (daemon_addr_parse(bad[i], strlen(bad[i]), &a) == 0) fail_msg("accepted '%s'", bad[i]);
    char longhost[200];
    memset(longhost, '1', sizeof longhost);
    memcpy(longhost + 150, ":1", 3);
    assert_int_equal(daemon_addr_parse(longhost, strlen(longhost), &a), -1);
    const char nul[] = "127.0\0.0.1:5";
    assert_int_equal(daemon_addr_parse(nul, sizeof nul - 1, &a), -1);
}

static void test_coords(void **state)
{
    (void)state;
    daemon_coords c;
    daemon_addr cfg = A("127.0.0.1:1982");
    daemon_coords_init(&c, &cfg);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.cur, 0);
    daemon_coords_next(&c); /* alone: stays */
    assert_int_equal(c.cur, 0);

    /* the coordinators advertise three addresses, ours among them */
    daemon_addr list[3] = {A("127.0.0.1:1983"), A("127.0.0.1:1982"), A("127.0.0.1:1984")};
    daemon_coords_set_list(&c, list, 3);
    assert_int_equal(c.n, 3);   /* 1982 is not added twice */
    assert_int_equal(c.cur, 0); /* still listed: kept */
    assert_int_equal(c.addr[1].port, 1983);
    assert_int_equal(c.addr[2].port, 1984);
    /* round-robin over every listed slot */
    daemon_coords_next(&c);
    assert_int_equal(c.cur, 1);
    daemon_coords_next(&c);
    assert_int_equal(c.cur, 2);
    daemon_coords_next(&c);
    assert_int_equal(c.cur, 0);

    /* a redirect to a known address */
    daemon_addr l = A("127.0.0.1:1984");
    daemon_coords_redirect(&c, &l);
    assert_int_equal(c.cur, 2);
    /* a redirect to a new address adds it */
    l = A("127.0.0.1:1985");
    daemon_coords_redirect(&c, &l);
    assert_int_equal(c.n, 4);
    assert_int_equal(c.cur, 3);
    assert_true(c.listed[3]);

    /* a new list without 1983 and 1985: they are unlisted and skipped; cur
     * (1985) is no longer advertised, so it moves to the first advertised */
    daemon_addr list2[2] = {A("127.0.0.1:1984"), A("127.0.0.1:1986")};
    daemon_coords_set_list(&c, list2, 2);
    assert_int_equal(c.n, 5);
    assert_int_equal(c.cur, 2);
    assert_true(c.listed[0]); /* the configured address stays */
    assert_false(c.listed[1]);
    assert_true(c.listed[2]);
    assert_false(c.listed[3]);
    assert_true(c.listed[4]);
    daemon_coords_next(&c);
    assert_int_equal(c.cur, 4);
    daemon_coords_next(&c);
    assert_int_equal(c.cur, 0); /* 1983 (slot 1) skipped */
    daemon_coords_next(&c);
    assert_int_equal(c.cur, 2);
    /* re-advertised slots come back in their old place */
    daemon_coords_set_list(&c, list, 3);
    assert_true(c.listed[1]);
    assert_false(c.listed[4]);
    assert_int_equal(c.n, 5);

    /* a full table: adding fails, a redirect to a new address leaves cur */
    daemon_coords_init(&c, &cfg);
    for (int i = 1; i < DAEMON_MAX_COORDS; i++) {
        daemon_addr x = {"10.0.0.1", 1000 + i};
        assert_int_equal(daemon_coords_add(&c, &x), i);
    }
    daemon_addr extra = {"10.0.0.2", 5};
    assert_int_equal(daemon_coords_add(&c, &extra), -1);
    c.cur = 7;
    daemon_coords_redirect(&c, &extra);
    assert_int_equal(c.cur, 7);
    assert_int_equal(c.n, DAEMON_MAX_COORDS);
}

static void test_coords_from_map(void **state)
{
    (void)state;
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_result res;
    daemon_addr out[4];
    assert_int_equal(daemon_coords_from_map(m, out, 4), 0);
    cmap_cmd_bootstrap(&b, 0x77, false);
    assert_int_equal(cmap_apply(m, b.data, b.len, &res), 0);
    static const char *const hosts[] = {"127.0.0.1", "localhost", "::1", "10.0.0.3"};
    for (int i = 0; i < 4; i++) {
        buf_reset(&b);
        cmap_cmd_add_coordinator(&b, hosts[i], (uint16_t)(1982 + i), hosts[i],
                                 (uint16_t)(11982 + i));
        if (cmap_apply(m, b.data, b.len, &res)) fail_msg("%s", res.msg);
    }
    /* the hostname is skipped; order is the map's (id order) */
    assert_int_equal(daemon_coords_from_map(m, out, 4), 3);
    assert_string_equal(out[0].host, "127.0.0.1");
    assert_int_equal(out[0].port, 1982);
    assert_string_equal(out[1].host, "::1");
    assert_int_equal(out[1].port, 1984);
    assert_string_equal(out[2].host, "10.0.0.3");
    assert_int_equal(out[2].port, 1985);
    /* bounded by max */
    assert_int_equal(daemon_coords_from_map(m, out, 2), 2);
    assert_int_equal(out[1].port, 1984);
    buf_free(&b);
    cmap_free(m);
}

/* ---- coordinator replies ------------------------------------------------------ */

#define REG_OK                                                                                     \
    "*5\r\n:3\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n"                                     \
    "*2\r\n$14\r\n127.0.0.1:1982\r\n$10\r\n[::1]:1983\r\n"

static void test_register_reply(void **state)
{
    (void)state;
    daemon_reg_reply rep;
    char err[200];
    resp_reply *r = reply_of(REG_OK);
    assert_int_equal(daemon_parse_register_reply(r, &rep, err, sizeof err), 0);
    resp_reply_free(r);
    assert_int_equal(rep.id, 3);
    assert_true(rep.cluster_id == 0x9f2c0000000000aaull);
    assert_int_equal(rep.heartbeat_ms, 250);
    assert_int_equal(rep.ping_timeout_ms, 3000);
    assert_int_equal(rep.ncoords, 2);
    assert_string_equal(rep.coords[0].host, "127.0.0.1");
    assert_int_equal(rep.coords[0].port, 1982);
    assert_string_equal(rep.coords[1].host, "::1");
    assert_int_equal(rep.coords[1].port, 1983);

    static const struct {
        const char *resp;
        const char *err;
    } bad[] = {
        {"+OK\r\n", "expected an array of 5 elements"},
        {"*4\r\n:1\r\n:1\r\n:1\r\n:1\r\n", "expected an array of 5 elements"},
        {"*5\r\n:0\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n*1\r\n$6\r\n1.2.3:\r\n",
         "element 1 (daemon id) is not a positive integer"},
        {"*5\r\n:-4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n*0\r\n",
         "element 1 (daemon id) is not a positive integer"},
        {"*5\r\n$1\r\n4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n*0\r\n",
         "element 1 (daemon id) is not a positive integer"},
        {"*5\r\n:4\r\n$15\r\n9f2c0000000000a\r\n:250\r\n:3000\r\n*0\r\n",
         "element 2 (cluster id) is not 16 hex digits"},
        {"*5\r\n:4\r\n:5\r\n:250\r\n:3000\r\n*0\r\n",
         "element 2 (cluster id) is not 16 hex digits"},
        {"*5\r\n:4\r\n$16\r\n0000000000000000\r\n:250\r\n:3000\r\n*0\r\n",
         "element 2 (cluster id) is not 16 hex digits"},
        {"*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:0\r\n:3000\r\n*0\r\n",
         "element 3 (heartbeat_ms) is not in 1..600000"},
        {"*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3600001\r\n*0\r\n",
         "element 4 (ping_timeout_ms) is not in 1..3600000"},
        {"*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n*0\r\n",
         "element 5 (coordinators) is not an array of 1..64 addresses"},
        {"*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n$-1\r\n",
         "element 5 (coordinators) is not an array of 1..64 addresses"},
        {"*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n*1\r\n:1982\r\n",
         "coordinator address 1 is not host:port"},
        {"*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n"
         "*2\r\n$6\r\n[::1]:\r\n$10\r\nlocal:1982\r\n",
         "coordinator address 1 is not host:port"},
        {"*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n"
         "*2\r\n$14\r\n127.0.0.1:1982\r\n$10\r\nlocal:1982\r\n",
         "coordinator address 2 is not host:port"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = reply_of(bad[i].resp);
        err[0] = 0;
        if (daemon_parse_register_reply(r, &rep, err, sizeof err) != -1)
            fail_msg("accepted case %zu", i);
        assert_string_equal(err, bad[i].err);
        resp_reply_free(r);
    }
    assert_int_equal(daemon_parse_register_reply(NULL, &rep, err, sizeof err), -1);

    /* 65 coordinators is more than a daemon keeps */
    buf b;
    buf_init(&b);
    buf_puts(&b, "*5\r\n:4\r\n$16\r\n9f2c0000000000aa\r\n:250\r\n:3000\r\n*65\r\n");
    for (int i = 0; i < 65; i++)
        buf_puts(&b, "$14\r\n127.0.0.1:1982\r\n");
    buf_putc(&b, 0);
    r = reply_of(b.data);
    assert_int_equal(daemon_parse_register_reply(r, &rep, err, sizeof err), -1);
    resp_reply_free(r);
    buf_free(&b);
}

static void test_heartbeat_reply(void **state)
{
    (void)state;
    daemon_hb_reply hb;
    char err[200];
    resp_reply *r = reply_of("*3\r\n:17\r\n:50\r\n:500\r\n");
    assert_int_equal(daemon_parse_heartbeat_reply(r, &hb, err, sizeof err), 0);
    resp_reply_free(r);
    assert_int_equal(hb.map_version, 17);
    assert_int_equal(hb.heartbeat_ms, 50);
    assert_int_equal(hb.ping_timeout_ms, 500);
    r = reply_of("*3\r\n:0\r\n:1\r\n:1\r\n"); /* version 0 is fine */
    assert_int_equal(daemon_parse_heartbeat_reply(r, &hb, err, sizeof err), 0);
    resp_reply_free(r);
    assert_int_equal(hb.map_version, 0);

    static const char *const bad[] = {
        "+OK\r\n",
        "*2\r\n:1\r\n:1\r\n",
        "*4\r\n:1\r\n:1\r\n:1\r\n:1\r\n",
        "*3\r\n:-1\r\n:50\r\n:500\r\n",
        "*3\r\n:1\r\n:0\r\n:500\r\n",
        "*3\r\n:1\r\n:50\r\n:0\r\n",
        "*3\r\n:1\r\n:600001\r\n:700000\r\n",
        "*3\r\n$1\r\n1\r\n:50\r\n:500\r\n",
        "*3\r\n:1\r\n:50\r\n*0\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = reply_of(bad[i]);
        err[0] = 0;
        if (daemon_parse_heartbeat_reply(r, &hb, err, sizeof err) != -1)
            fail_msg("accepted '%s'", bad[i]);
        assert_true(err[0] != 0);
        resp_reply_free(r);
    }
    assert_int_equal(daemon_parse_heartbeat_reply(NULL, &hb, err, sizeof err), -1);
}

static void test_classify_error(void **state)
{
    (void)state;
    daemon_addr l;
    memset(&l, 0, sizeof l);
    assert_int_equal(daemon_classify_error("TRYAGAIN leader is 127.0.0.1:1983", &l),
                     DAEMON_E_REDIRECT);
    assert_string_equal(l.host, "127.0.0.1");
    assert_int_equal(l.port, 1983);
    assert_int_equal(
        daemon_classify_error("TRYAGAIN leader is 10.0.0.9:2000 (unreachable from here)", &l),
        DAEMON_E_REDIRECT);
    assert_string_equal(l.host, "10.0.0.9");
    assert_int_equal(l.port, 2000);
    assert_int_equal(daemon_classify_error("TRYAGAIN leader is [::1]:1990", &l), DAEMON_E_REDIRECT);
    assert_string_equal(l.host, "::1");
    assert_int_equal(daemon_classify_error("TRYAGAIN no leader yet (election in progress)", &l),
                     DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("TRYAGAIN leader is nowhere", &l), DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("TRYAGAIN leader is ", &l), DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("TRYAGAIN", &l), DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("NOQUORUM leader lost its majority", &l),
                     DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("IOERR storage error: disk full", &l), DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("", &l), DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("ERRX daemon 3 is OFFLINE: register again", &l),
                     DAEMON_E_RETRY);
    assert_int_equal(daemon_classify_error("ERR daemon 3 is OFFLINE: register again", &l),
                     DAEMON_E_OFFLINE);
    assert_int_equal(daemon_classify_error("ERR daemon 3 is already online", &l), DAEMON_E_ONLINE);
    assert_int_equal(daemon_classify_error("ERR data directory belongs to cluster "
                                           "00000000000000aa, this is cluster 00000000000000bb",
                                           &l),
                     DAEMON_E_REFUSED);
    assert_int_equal(daemon_classify_error("ERR daemon 3 is RETIRED", &l), DAEMON_E_REFUSED);
    assert_int_equal(daemon_classify_error("ERR unknown command 'DAEMON.REGISTER'", &l),
                     DAEMON_E_REFUSED);
    assert_int_equal(daemon_classify_error("ERR", &l), DAEMON_E_REFUSED);
}

/* ---- fetched maps ------------------------------------------------------------- */

static cmap *make_map(uint64_t cluster_id, int extra_commands)
{
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_result res;
    cmap_cmd_bootstrap(&b, cluster_id, false);
    assert_int_equal(cmap_apply(m, b.data, b.len, &res), 0);
    for (int i = 0; i < extra_commands; i++) {
        buf_reset(&b);
        cmap_cmd_add_daemon(&b, "127.0.0.1", (uint16_t)(3000 + i), (uint16_t)(13000 + i), 1);
        assert_int_equal(cmap_apply(m, b.data, b.len, &res), 0);
    }
    buf_free(&b);
    return m;
}

static void test_map_accept(void **state)
{
    (void)state;
    char err[200];
    cmap *v1 = make_map(0xabcull, 0), *v3 = make_map(0xabcull, 2), *other = make_map(0xdefull, 2);
    buf e1, e3, eo;
    buf_init(&e1);
    buf_init(&e3);
    buf_init(&eo);
    cmap_encode(v1, &e1);
    cmap_encode(v3, &e3);
    cmap_encode(other, &eo);
    cmap *out = (cmap *)1;

    /* no map yet: any valid map of the cluster */
    assert_int_equal(daemon_map_accept(NULL, 0xabc, e1.data, e1.len, &out, err, sizeof err), 1);
    assert_non_null(out);
    assert_int_equal(out->version, v1->version);
    cmap_free(out);
    /* newer */
    assert_int_equal(daemon_map_accept(v1, 0xabc, e3.data, e3.len, &out, err, sizeof err), 1);
    assert_int_equal(out->version, v3->version);
    assert_int_equal(out->ndaemons, 2);
    cmap_free(out);
    /* same and older: ignored */
    assert_int_equal(daemon_map_accept(v3, 0xabc, e3.data, e3.len, &out, err, sizeof err), 0);
    assert_null(out);
    assert_int_equal(daemon_map_accept(v3, 0xabc, e1.data, e1.len, &out, err, sizeof err), 0);
    assert_null(out);
    /* another cluster's map */
    assert_int_equal(daemon_map_accept(v1, 0xabc, eo.data, eo.len, &out, err, sizeof err), -1);
    assert_null(out);
    assert_string_equal(err, "the map is of cluster 0000000000000def, this daemon is of cluster "
                             "0000000000000abc");
    /* malformed: garbage, every truncation, empty */
    assert_int_equal(daemon_map_accept(v1, 0xabc, "garbage", 7, &out, err, sizeof err), -1);
    assert_string_equal(err, "the map (7 bytes) does not decode");
    for (size_t n = 0; n < e3.len; n++)
        if (daemon_map_accept(v1, 0xabc, e3.data, n, &out, err, sizeof err) != -1)
            fail_msg("accepted a map truncated to %zu bytes", n);
    assert_null(out);

    cmap_free(v1);
    cmap_free(v3);
    cmap_free(other);
    buf_free(&e1);
    buf_free(&e3);
    buf_free(&eo);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args_defaults),
        cmocka_unit_test(test_args_long_forms),
        cmocka_unit_test(test_args_short_forms),
        cmocka_unit_test(test_args_help),
        cmocka_unit_test(test_args_errors),
        cmocka_unit_test(test_identity_round_trip),
        cmocka_unit_test(test_identity_format_refuses),
        cmocka_unit_test(test_identity_garbage),
        cmocka_unit_test_setup_teardown(test_identity_files, make_tmpdir, remove_tmpdir),
        cmocka_unit_test(test_lease),
        cmocka_unit_test(test_rpc_timeout),
        cmocka_unit_test(test_addr_parse),
        cmocka_unit_test(test_coords),
        cmocka_unit_test(test_coords_from_map),
        cmocka_unit_test(test_register_reply),
        cmocka_unit_test(test_heartbeat_reply),
        cmocka_unit_test(test_classify_error),
        cmocka_unit_test(test_map_accept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
