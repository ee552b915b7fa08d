/* Unit tests for src/kv.c: the data commands, parsed with kv_parse and run
 * with kv_exec inside a write transaction of a real store.
 *
 * The fixture bootstraps a single-node cluster map with the phonebook space
 * (first and phone indexed, last and score not) and a twin space "plain"
 * with the same attributes and no index at all, opens a store in a fresh
 * temporary directory and keeps one write transaction open per test.
 * Replies are checked byte for byte (RESP). Covered: PUT (create, partial
 * update, zero values), GET, DEL, CPUT, ADD and their failures (which must
 * leave the object and the partition write counter unchanged), SEARCH and
 * COUNT with every operator on indexed attributes, plain attributes and the
 * key, LIMIT, a seeded random comparison of indexed search, scanning search
 * and brute force over GETs, every kv_parse refusal with its exact reply,
 * kv_op_detach, and the space reference an op holds.
 *
 * kv_compute is tested on its own (every command and outcome: the write kind,
 * the exact reply, the exact resulting encoding; corrupt current objects;
 * purity) and against kv_exec on a seeded random command stream (same reply,
 * the stored object is the computed one, the write counter moves exactly for
 * writes). kv_apply_put/kv_apply_del replay a random primary history onto a
 * fresh space: every index entry matches its object (store.h invariant 1),
 * searches agree with the unindexed twin and brute force, replaying entries
 * twice changes nothing, and bad values, long keys and corrupt stored
 * objects are refused.
 */
#include <setjmp.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <unistd.h>

#include <cmocka.h>

#include "cmap.h"
#include "kv.h"
#include "resp.h"
#include "store.h"

/* ---- fixture ------------------------------------------------------------ */

#define MAP_SIZE (256u << 20)
#define MAX_ARGS 64

static const char *const PHONEBOOK = "space phonebook\n"
                                     "key username\n"
                                     "attributes first, last, int phone, float score\n"
                                     "subspace first, phone\n"
                                     "create 4 partitions\n"
                                     "tolerate 0 failures";
/* The same attributes without any index: every search scans. */
static const char *const PLAIN = "space plain\n"
                                 "key username\n"
                                 "attributes first, last, int phone, float score\n"
                                 "create 3 partitions\n"
                                 "tolerate 0 failures";

typedef struct fx {
    char dir[64];
    store *st;
    cmap *m;
    const cmap_space *cs, *cs_plain;
    kv_space *sp, *sp_plain;
    store_txn t; /* open write transaction */
    size_t max_key;
    buf reply; /* last reply, NUL-terminated */
} fx;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void apply_ok(cmap *m, buf *cmd)
{
    cmap_result res;
    if (cmap_apply(m, cmd->data, cmd->len, &res)) fail_msg("cmap_apply: %s", res.msg);
    buf_reset(cmd);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/keel-test-kv-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    char err[256];
    if (store_open(&f->st, f->dir, STORE_SYNC_NONE, MAP_SIZE, err, sizeof err))
        fail_msg("store_open: %s", err);

    f->m = cmap_new();
    buf cmd;
    buf_init(&cmd);
    cmap_cmd_bootstrap(&cmd, 0x1234, true);
    apply_ok(f->m, &cmd);
    cmap_cmd_add_daemon(&cmd, "127.0.0.1", 2012, 12012, 1000);
    apply_ok(f->m, &cmd);
    cmap_cmd_add_space(&cmd, PHONEBOOK, strlen(PHONEBOOK));
    apply_ok(f->m, &cmd);
    cmap_cmd_add_space(&cmd, PLAIN, strlen(PLAIN));
    apply_ok(f->m, &cmd);
    buf_free(&cmd);
    f->cs = cmap_space_find(f->m, "phonebook", 9);
    f->cs_plain = cmap_space_find(f->m, "plain", 5);
    assert_non_null(f->cs);
    assert_non_null(f->cs_plain);
    assert_int_not_equal(f->cs->id, f->cs_plain->id);
    f->sp = kv_space_new(f->cs->id, f->cs->schema);
    f->sp_plain = kv_space_new(f->cs_plain->id, f->cs_plain->schema);
    f->max_key = STORE_MAX_KEY;
    buf_init(&f->reply);
    assert_int_equal(store_txn_begin(f->st, true, &f->t), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    store_txn_abort(&f->t);
    store_close(f->st);
    kv_space_unref(f->sp);
    kv_space_unref(f->sp_plain);
    cmap_free(f->m);
    buf_free(&f->reply);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- running commands --------------------------------------------------- */

/* Parses and executes argv (argv[1] selects the space: "plain" or else
 * phonebook). Returns the reply (the parse error or the exec result) as a
 * NUL-terminated string valid until the next call. */
static const char *runv(fx *f, int argc, char **argv, const size_t *lens)
{
    bool plain = argc > 1 && lens[1] == 5 && memcmp(argv[1], "plain", 5) == 0;
    const cmap_space *cs = plain ? f->cs_plain : f->cs;
    kv_space *sp = plain ? f->sp_plain : f->sp;
    buf_reset(&f->reply);
    kv_op *op = (kv_op *)(uintptr_t)1;
    if (kv_parse(cs, sp, argc, argv, lens, f->max_key, &op, &f->reply)) {
        assert_null(op);
        assert_true(f->reply.len > 3 && f->reply.data[0] == '-');
    } else {
        assert_non_null(op);
        assert_int_equal(f->reply.len, 0);
        assert_int_equal(kv_exec(&f->t, op, &f->reply), 0);
        kv_op_free(op);
    }
    buf_putc(&f->reply, '\0');
    f->reply.len--;
    return f->reply.data;
}

/* Words of a command, NULL-terminated. */
static const char *run(fx *f, const char *w0, ...)
{
    char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    int argc = 0;
    va_list ap;
    va_start(ap, w0);
    for (const char *w = w0; w; w = va_arg(ap, const char *)) {
        assert_true(argc < MAX_ARGS);
        argv[argc] = (char *)w;
        lens[argc++] = strlen(w);
    }
    va_end(ap);
    return runv(f, argc, argv, lens);
}

#define RUN(f, ...) run((f), __VA_ARGS__, (const char *)NULL)
#define EXPECT(f, want, ...) assert_string_equal(RUN((f), __VA_ARGS__), (want))

/* Checks that kv_parse refuses the command with exactly `want`. */
static void refuse(fx *f, const char *want, const char *w0, ...)
{
    char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    int argc = 0;
    va_list ap;
    va_start(ap, w0);
    for (const char *w = w0; w; w = va_arg(ap, const char *)) {
        argv[argc] = (char *)w;
        lens[argc++] = strlen(w);
    }
    va_end(ap);
    buf err;
    buf_init(&err);
    kv_op *op = (kv_op *)(uintptr_t)1;
    int rc = kv_parse(f->cs, f->sp, argc, argv, lens, f->max_key, &op, &err);
    buf_putc(&err, '\0');
    if (rc != -1) fail_msg("accepted: %s ... (wanted %s)", w0, want);
    assert_null(op);
    assert_string_equal(err.data, want);
    buf_free(&err);
}

#define REFUSE(f, want, ...) refuse((f), (want), __VA_ARGS__, (const char *)NULL)

/* The partition write counter of key's partition in phonebook. */
static uint64_t seq_of(fx *f, const char *key)
{
    store_part_meta m;
    uint32_t part = cmap_partition_of(f->cs, key, strlen(key));
    assert_int_equal(store_part_meta_get(&f->t, f->cs->id, part, &m), 0);
    return m.seq;
}

/* The GET reply for an object with these values (phone as an int, score as
 * its canonical text). */
static const char *obj_reply(char *out, size_t n, const char *first, const char *last,
                             long long phone, const char *score)
{
    snprintf(out, n,
             "*8\r\n$5\r\nfirst\r\n$%zu\r\n%s\r\n$4\r\nlast\r\n$%zu\r\n%s\r\n"
             "$5\r\nphone\r\n:%lld\r\n$5\r\nscore\r\n$%zu\r\n%s\r\n",
             strlen(first), first, strlen(last), last, phone, strlen(score), score);
    return out;
}

static void expect_obj(fx *f, const char *key, const char *first, const char *last, long long phone,
                       const char *score)
{
    char want[512];
    EXPECT(f, obj_reply(want, sizeof want, first, last, phone, score), "GET", "phonebook", key);
}

/* ---- parsed replies ----------------------------------------------------- */

static resp_reply *parse_reply(const char *data, size_t len)
{
    size_t used = 0;
    resp_reply *r = NULL;
    assert_int_equal(resp_reply_parse(data, len, &used, &r), RESP_OK);
    assert_int_equal(used, len);
    return r;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorted keys of a SEARCH reply as "k1,k2,"; checks every element's shape
 * and that its attributes equal the object's GET reply. out has n bytes. */
static void search_keys(fx *f, const char *space, const char *data, size_t len, char *out, size_t n)
{
    resp_reply *r = parse_reply(data, len);
    if (r->type != RESP_R_ARRAY) fail_msg("SEARCH %s answered %s", space, data);
    char **keys = calloc(r->elements + 1, sizeof *keys);
    assert_non_null(keys);
    for (size_t i = 0; i < r->elements; i++) {
        resp_reply *e = r->element[i];
        assert_int_equal(e->type, RESP_R_ARRAY);
        assert_int_equal(e->elements, 10);
        assert_string_equal(e->element[0]->str, "username");
        keys[i] = strdup(e->element[1]->str);
        /* Same attributes as GET. */
        const char *got = RUN(f, "GET", space, keys[i]);
        resp_reply *g = parse_reply(got, f->reply.len);
        assert_int_equal(g->type, RESP_R_ARRAY);
        assert_int_equal(g->elements, 8);
        for (size_t a = 0; a < 8; a++) {
            resp_reply *x = e->element[2 + a], *y = g->element[a];
            assert_int_equal(x->type, y->type);
            if (x->type == RESP_R_INT)
                assert_int_equal(x->integer, y->integer);
            else
                assert_string_equal(x->str, y->str);
        }
        resp_reply_free(g);
    }
    qsort(keys, r->elements, sizeof *keys, cmp_str);
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < r->elements; i++) {
        if (i) assert_int_not_equal(strcmp(keys[i - 1], keys[i]), 0); /* no duplicates */
        int w = snprintf(out + o, n - o, "%s,", keys[i]);
        assert_true(w > 0 && (size_t)w < n - o);
        o += (size_t)w;
    }
    for (size_t i = 0; i < r->elements; i++)
        free(keys[i]);
    free(keys);
    resp_reply_free(r);
}

/* Runs a SEARCH and returns its sorted keys (static buffer). */
static const char *search(fx *f, const char *w0, ...)
{
    static char out[65536];
    char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    int argc = 0;
    va_list ap;
    va_start(ap, w0);
    for (const char *w = w0; w; w = va_arg(ap, const char *)) {
        argv[argc] = (char *)w;
        lens[argc++] = strlen(w);
    }
    va_end(ap);
    const char *rep = runv(f, argc, argv, lens);
    size_t len = f->reply.len;
    char *copy = malloc(len + 1);
    assert_non_null(copy);
    memcpy(copy, rep, len + 1);
    search_keys(f, argv[1], copy, len, out, sizeof out);
    free(copy);
    return out;
}

#define SEARCH(f, ...) search((f), "SEARCH", __VA_ARGS__, (const char *)NULL)

/* ---- PUT / GET / DEL ---------------------------------------------------- */

static void test_put_get(void **state)
{
    fx *f = *state;
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "jsmith");
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "jsmith", "first", "John", "last", "Smith", "phone",
           "5551234", "score", "2.5");
    EXPECT(f,
           "*8\r\n$5\r\nfirst\r\n$4\r\nJohn\r\n$4\r\nlast\r\n$5\r\nSmith\r\n"
           "$5\r\nphone\r\n:5551234\r\n$5\r\nscore\r\n$3\r\n2.5\r\n",
           "GET", "phonebook", "jsmith");

    /* Partial update: only phone changes. */
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "jsmith", "phone", "-42");
    expect_obj(f, "jsmith", "John", "Smith", -42, "2.5");
    EXPECT(f, "+OK\r\n", "put", "phonebook", "jsmith", "score", "0.1", "last", "");
    expect_obj(f, "jsmith", "John", "", -42, "0.1");

    /* Never-written attributes hold zero values. */
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "jdoe", "last", "Doe");
    expect_obj(f, "jdoe", "", "Doe", 0, "0");
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "nobody");
    EXPECT(f,
           "*8\r\n$5\r\nfirst\r\n$0\r\n\r\n$4\r\nlast\r\n$0\r\n\r\n"
           "$5\r\nphone\r\n:0\r\n$5\r\nscore\r\n$1\r\n0\r\n",
           "GET", "phonebook", "nobody");

    /* Extremes and float formatting. */
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "x", "phone", "-9223372036854775808", "score",
           "-1e300");
    expect_obj(f, "x", "", "", INT64_MIN, "-1e+300");
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "x", "phone", "9223372036854775807", "score", "100");
    expect_obj(f, "x", "", "", INT64_MAX, "100");

    /* Keys and strings are binary safe. */
    char *argv[5] = {"PUT", "phonebook", "b\0k", "first", "a\0b\r\n"};
    size_t lens[5] = {3, 9, 3, 5, 5};
    assert_string_equal(runv(f, 5, argv, lens), "+OK\r\n");
    char *gargv[3] = {"GET", "phonebook", "b\0k"};
    size_t glens[3] = {3, 9, 3};
    runv(f, 3, gargv, glens);
    static const char want[] = "*8\r\n$5\r\nfirst\r\n$5\r\na\0b\r\n\r\n$4\r\nlast\r\n$0\r\n\r\n"
                               "$5\r\nphone\r\n:0\r\n$5\r\nscore\r\n$1\r\n0\r\n";
    assert_int_equal(f->reply.len, sizeof want - 1);
    assert_memory_equal(f->reply.data, want, sizeof want - 1);
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "b");

    /* Objects are per space. */
    EXPECT(f, "$-1\r\n", "GET", "plain", "jsmith");
}

static void test_del(void **state)
{
    fx *f = *state;
    EXPECT(f, ":0\r\n", "DEL", "phonebook", "jsmith");
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "jsmith", "first", "John", "phone", "7");
    EXPECT(f, ":1\r\n", "COUNT", "phonebook", "first", "=", "John");
    EXPECT(f, ":1\r\n", "del", "phonebook", "jsmith");
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "jsmith");
    EXPECT(f, ":0\r\n", "DEL", "phonebook", "jsmith");
    /* The index entries went with it. */
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "first", "=", "John");
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "phone", "=", "7");
    EXPECT(f, ":0\r\n", "COUNT", "phonebook");
    /* Re-creating starts from zero values. */
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "jsmith", "last", "S");
    expect_obj(f, "jsmith", "", "S", 0, "0");
}

/* ---- CPUT --------------------------------------------------------------- */

static void test_cput(void **state)
{
    fx *f = *state;
    char before[512];
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "k", "first", "John", "last", "Smith", "phone", "42",
           "score", "2.5");
    EXPECT(f, "+OK\r\n", "CPUT", "phonebook", "k", "IF", "first", "John", "SET", "last", "Doe");
    expect_obj(f, "k", "John", "Doe", 42, "2.5");
    /* Values compare by type: 042 is 42, 2.50 is 2.5. */
    EXPECT(f, "+OK\r\n", "cput", "phonebook", "k", "if", "phone", "042", "score", "2.50", "set",
           "phone", "43", "first", "Jim");
    expect_obj(f, "k", "Jim", "Doe", 43, "2.5");
    /* No condition at all: applied to an existing object. */
    EXPECT(f, "+OK\r\n", "CPUT", "phonebook", "k", "IF", "SET", "score", "3");
    expect_obj(f, "k", "Jim", "Doe", 43, "3");

    obj_reply(before, sizeof before, "Jim", "Doe", 43, "3");
    uint64_t seq = seq_of(f, "k");
    EXPECT(f, "-CMPFAIL attribute 'first' does not match\r\n", "CPUT", "phonebook", "k", "IF",
           "first", "John", "SET", "last", "X");
    /* The first failing condition is named. */
    EXPECT(f, "-CMPFAIL attribute 'score' does not match\r\n", "CPUT", "phonebook", "k", "IF",
           "first", "Jim", "score", "3.5", "phone", "1", "SET", "last", "X");
    EXPECT(f, "-CMPFAIL attribute 'last' does not match\r\n", "CPUT", "phonebook", "k", "IF",
           "last", "Do", "SET", "last", "X");
    EXPECT(f, before, "GET", "phonebook", "k");
    assert_int_equal(seq_of(f, "k"), seq);

    /* Missing object: NOTFOUND, and it is not created. */
    seq = seq_of(f, "missing");
    EXPECT(f, "-NOTFOUND no object with that key in space 'phonebook'\r\n", "CPUT", "phonebook",
           "missing", "IF", "SET", "first", "a");
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "missing");
    assert_int_equal(seq_of(f, "missing"), seq);

    /* Zero values of never-written attributes compare as such. */
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "z");
    EXPECT(f, "+OK\r\n", "CPUT", "phonebook", "z", "IF", "first", "", "phone", "0", "score", "-0",
           "SET", "first", "set");
    expect_obj(f, "z", "set", "", 0, "0");
}

/* ---- ADD ---------------------------------------------------------------- */

static void test_add(void **state)
{
    fx *f = *state;
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "k", "first", "A", "last", "B", "phone", "42", "score",
           "1.5");
    EXPECT(f, ":47\r\n", "ADD", "phonebook", "k", "phone", "5");
    EXPECT(f, ":-53\r\n", "add", "phonebook", "k", "phone", "-100");
    EXPECT(f, ":-53\r\n", "ADD", "phonebook", "k", "phone", "0");
    expect_obj(f, "k", "A", "B", -53, "1.5");
    /* The index follows. */
    EXPECT(f, ":1\r\n", "COUNT", "phonebook", "phone", "=", "-53");
    EXPECT(f, ":0\r\n", "COUNT", "phonebook", "phone", "=", "42");

    uint64_t seq = seq_of(f, "missing");
    EXPECT(f, "-NOTFOUND no object with that key in space 'phonebook'\r\n", "ADD", "phonebook",
           "missing", "phone", "1");
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "missing");
    assert_int_equal(seq_of(f, "missing"), seq);

    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "k", "phone", "9223372036854775807");
    seq = seq_of(f, "k");
    EXPECT(f, "-OVERFLOW attribute 'phone' would overflow (9223372036854775807 + 1)\r\n", "ADD",
           "phonebook", "k", "phone", "1");
    expect_obj(f, "k", "A", "B", INT64_MAX, "1.5");
    EXPECT(f, ":9223372036854775806\r\n", "ADD", "phonebook", "k", "phone", "-1");
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "k", "phone", "-9223372036854775807");
    EXPECT(f, ":-9223372036854775808\r\n", "ADD", "phonebook", "k", "phone", "-1");
    EXPECT(f, "-OVERFLOW attribute 'phone' would overflow (-9223372036854775808 + -1)\r\n", "ADD",
           "phonebook", "k", "phone", "-1");
    expect_obj(f, "k", "A", "B", INT64_MIN, "1.5");
    assert_int_equal(seq_of(f, "k"), seq + 3);

    /* A never-written int starts at zero. */
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "fresh");
    EXPECT(f, ":-7\r\n", "ADD", "phonebook", "fresh", "phone", "-7");
}

/* ---- SEARCH / COUNT ----------------------------------------------------- */

/* A small fixed data set in both spaces. */
static void load_people(fx *f)
{
    static const char *const rows[][5] = {
        {"alice", "Alice", "Smith", "10", "1.5"},   {"bob", "Bob", "Jones", "20", "-2"},
        {"carol", "Carol", "Smith", "30", "0"},     {"dave", "Bob", "Brown", "-5", "2.5"},
        {"erin", "Erin", "Jones", "20", "1e10"},    {"frank", "", "", "0", "-0.5"},
        {"grace", "Grace", "Smith", "-100", "1.5"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const char *sp[2] = {"phonebook", "plain"};
        for (int s = 0; s < 2; s++)
            EXPECT(f, "+OK\r\n", "PUT", sp[s], rows[i][0], "first", rows[i][1], "last", rows[i][2],
                   "phone", rows[i][3], "score", rows[i][4]);
    }
}

/* SEARCH in both spaces must give want; COUNT must agree. */
static void expect_search(fx *f, const char *want, const char *attr, const char *op,
                          const char *val)
{
    assert_string_equal(SEARCH(f, "phonebook", attr, op, val), want);
    assert_string_equal(SEARCH(f, "plain", attr, op, val), want);
    int n = 0;
    for (const char *p = want; *p; p++)
        n += *p == ',';
    char cnt[32];
    snprintf(cnt, sizeof cnt, ":%d\r\n", n);
    EXPECT(f, cnt, "COUNT", "phonebook", attr, op, val);
    EXPECT(f, cnt, "COUNT", "plain", attr, op, val);
}

static void test_search_operators(void **state)
{
    fx *f = *state;
    load_people(f);
    /* Indexed string attribute. */
    expect_search(f, "bob,dave,", "first", "=", "Bob");
    expect_search(f, "alice,frank,", "first", "<", "Bob");
    expect_search(f, "alice,bob,dave,frank,", "first", "<=", "Bob");
    expect_search(f, "carol,erin,grace,", "first", ">", "Bob");
    expect_search(f, "bob,carol,dave,erin,grace,", "first", ">=", "Bob");
    expect_search(f, "frank,", "first", "=", "");
    expect_search(f, "", "first", "=", "Bo");
    /* Indexed int attribute (negative values included). */
    expect_search(f, "bob,erin,", "phone", "=", "20");
    expect_search(f, "dave,frank,grace,", "phone", "<", "10");
    expect_search(f, "alice,dave,frank,grace,", "phone", "<=", "10");
    expect_search(f, "bob,carol,erin,", "phone", ">", "10");
    expect_search(f, "alice,bob,carol,dave,erin,frank,", "phone", ">=", "-5");
    expect_search(f, "grace,", "phone", "<", "-5");
    /* Plain string attribute. */
    expect_search(f, "alice,carol,grace,", "last", "=", "Smith");
    expect_search(f, "dave,frank,", "last", "<", "Jones");
    expect_search(f, "bob,dave,erin,frank,", "last", "<=", "Jones");
    expect_search(f, "alice,carol,grace,", "last", ">", "Jones");
    expect_search(f, "alice,bob,carol,erin,grace,", "last", ">=", "Jones");
    /* Plain float attribute. */
    expect_search(f, "alice,grace,", "score", "=", "1.5");
    expect_search(f, "bob,carol,frank,", "score", "<", "1.5");
    expect_search(f, "alice,bob,carol,frank,grace,", "score", "<=", "1.50");
    expect_search(f, "dave,erin,", "score", ">", "1.5");
    expect_search(f, "carol,", "score", "=", "-0");
    expect_search(f, "alice,carol,dave,erin,grace,", "score", ">=", "0");
    /* The key. */
    expect_search(f, "carol,", "username", "=", "carol");
    expect_search(f, "", "username", "=", "zed");
    expect_search(f, "alice,bob,", "username", "<", "carol");
    expect_search(f, "alice,bob,carol,", "username", "<=", "carol");
    expect_search(f, "dave,erin,frank,grace,", "username", ">", "carol");
    expect_search(f, "frank,grace,", "username", ">=", "f");

    /* Several predicates (the index narrows, the rest filters). */
    assert_string_equal(SEARCH(f, "phonebook", "first", "=", "Bob", "phone", ">", "0"), "bob,");
    assert_string_equal(
        SEARCH(f, "phonebook", "phone", ">=", "10", "phone", "<", "30", "last", "=", "Jones"),
        "bob,erin,");
    assert_string_equal(SEARCH(f, "phonebook", "username", "=", "dave", "first", "=", "Bob"),
                        "dave,");
    assert_string_equal(SEARCH(f, "phonebook", "username", "=", "dave", "first", "=", "Alice"), "");
    assert_string_equal(SEARCH(f, "phonebook", "last", "=", "Smith", "score", "=", "1.5"),
                        "alice,grace,");
    EXPECT(f, ":2\r\n", "COUNT", "phonebook", "phone", ">=", "10", "phone", "<", "30", "last", "=",
           "Jones");

    /* No predicate: everything. */
    assert_string_equal(SEARCH(f, "phonebook"), "alice,bob,carol,dave,erin,frank,grace,");
    EXPECT(f, ":7\r\n", "COUNT", "phonebook");
    EXPECT(f, ":7\r\n", "count", "plain");

    /* Exact reply bytes for a single match. */
    EXPECT(f,
           "*1\r\n*10\r\n$8\r\nusername\r\n$5\r\ncarol\r\n$5\r\nfirst\r\n$5\r\nCarol\r\n"
           "$4\r\nlast\r\n$5\r\nSmith\r\n$5\r\nphone\r\n:30\r\n$5\r\nscore\r\n$1\r\n0\r\n",
           "SEARCH", "phonebook", "username", "=", "carol");
    EXPECT(f,
           "*1\r\n*10\r\n$8\r\nusername\r\n$5\r\ncarol\r\n$5\r\nfirst\r\n$5\r\nCarol\r\n"
           "$4\r\nlast\r\n$5\r\nSmith\r\n$5\r\nphone\r\n:30\r\n$5\r\nscore\r\n$1\r\n0\r\n",
           "search", "phonebook", "phone", "=", "30");
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "phone", ">", "1000");

    /* A key predicate longer than any storable key matches nothing. */
    char longkey[STORE_MAX_KEY + 20];
    memset(longkey, 'q', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "username", "=", longkey);
    EXPECT(f, ":0\r\n", "COUNT", "phonebook", "username", "=", longkey);
}

/* Strings longer than the 32-byte index image: the index returns candidates
 * sharing the prefix and SEARCH refilters them. */
static void test_search_long_strings(void **state)
{
    fx *f = *state;
    static const char p32[] = "0123456789abcdef0123456789abcdef";
    char a[64], b[64], c[64];
    snprintf(a, sizeof a, "%s-a", p32);
    snprintf(b, sizeof b, "%s-b", p32);
    snprintf(c, sizeof c, "%s", p32);
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "ka", "first", a);
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "kb", "first", b);
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "kc", "first", c);
    assert_string_equal(SEARCH(f, "phonebook", "first", "=", a), "ka,");
    assert_string_equal(SEARCH(f, "phonebook", "first", "=", b), "kb,");
    assert_string_equal(SEARCH(f, "phonebook", "first", "=", c), "kc,");
    assert_string_equal(SEARCH(f, "phonebook", "first", "<", b), "ka,kc,");
    assert_string_equal(SEARCH(f, "phonebook", "first", ">", a), "kb,");
    assert_string_equal(SEARCH(f, "phonebook", "first", ">=", c), "ka,kb,kc,");
    assert_string_equal(SEARCH(f, "phonebook", "first", "<=", c), "kc,");
    /* Changing within the shared prefix keeps the index right. */
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "ka", "first", b);
    assert_string_equal(SEARCH(f, "phonebook", "first", "=", a), "");
    assert_string_equal(SEARCH(f, "phonebook", "first", "=", b), "ka,kb,");
}

static void test_search_limit(void **state)
{
    fx *f = *state;
    load_people(f);
    const char *all = "alice,bob,carol,dave,erin,frank,grace,";
    char got[256];
    strcpy(got, SEARCH(f, "phonebook", "LIMIT", "3"));
    int n = 0;
    for (char *p = got; *p; p++)
        n += *p == ',';
    assert_int_equal(n, 3);
    /* Each returned key is a real match. */
    for (char *k = strtok(got, ","); k; k = strtok(NULL, ",")) {
        char needle[32];
        snprintf(needle, sizeof needle, "%s,", k);
        assert_non_null(strstr(all, needle));
    }
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "LIMIT", "0");
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "first", "=", "Bob", "limit", "0");
    assert_string_equal(SEARCH(f, "phonebook", "LIMIT", "7"), all);
    assert_string_equal(SEARCH(f, "phonebook", "LIMIT", "1000"), all);
    assert_string_equal(SEARCH(f, "phonebook", "first", "=", "Bob", "LIMIT", "5"), "bob,dave,");
    strcpy(got, SEARCH(f, "phonebook", "first", "=", "Bob", "LIMIT", "1"));
    assert_true(!strcmp(got, "bob,") || !strcmp(got, "dave,"));
    strcpy(got, SEARCH(f, "plain", "last", "=", "Smith", "LIMIT", "2"));
    assert_true(!strcmp(got, "alice,carol,") || !strcmp(got, "alice,grace,") ||
                !strcmp(got, "carol,grace,"));
    assert_string_equal(SEARCH(f, "phonebook", "username", "=", "bob", "LIMIT", "1"), "bob,");
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "username", "=", "bob", "LIMIT", "0");
}

/* ---- random agreement --------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static const char *pick(const char *const *pool, size_t n)
{
    return pool[rnd() % n];
}

#define NKEYS 500
#define NPREDS 200

static const char *const STRS[] = {"",
                                   "a",
                                   "ab",
                                   "abc",
                                   "abd",
                                   "b",
                                   "bob",
                                   "alice",
                                   "zed",
                                   "Z",
                                   "\x7f",
                                   "prefix",
                                   "0123456789abcdef0123456789abcdef",
                                   "0123456789abcdef0123456789abcdef-x",
                                   "0123456789abcdef0123456789abcdef-y",
                                   "0123456789abcdef0123456789abcdeg",
                                   "0123456789abcdef0123456789abcde"};
static const char *const FLOATS[] = {"-1e300", "-2.5", "-1",   "-0",    "0",     "0.1",
                                     "0.5",    "1",    "3.25", "1e300", "2.5e-3"};
static const char *const OPS[] = {"=", "<", "<=", ">", ">="};
static const char *const ATTRS[] = {"first", "last", "phone", "score", "username"};

static void rand_int(char *out, size_t n)
{
    uint64_t r = rnd() % 20;
    if (r == 0)
        snprintf(out, n, "%lld", (long long)INT64_MIN);
    else if (r == 1)
        snprintf(out, n, "%lld", (long long)INT64_MAX);
    else
        snprintf(out, n, "%d", (int)(rnd() % 41) - 20);
}

static void rand_key(char *out, size_t n)
{
    snprintf(out, n, "u%03d", (int)(rnd() % NKEYS));
}

/* A random value for attribute a (as command text). */
static void rand_value(const char *a, char *out, size_t n)
{
    if (!strcmp(a, "phone"))
        rand_int(out, n);
    else if (!strcmp(a, "score"))
        snprintf(out, n, "%s", pick(FLOATS, 11));
    else if (!strcmp(a, "username")) {
        if (rnd() % 8 == 0)
            snprintf(out, n, "%s", pick(STRS, sizeof STRS / sizeof STRS[0]));
        else
            rand_key(out, n);
    } else
        snprintf(out, n, "%s", pick(STRS, sizeof STRS / sizeof STRS[0]));
}

/* What GET says about one key: present, and attribute values as text (or
 * the int). */
typedef struct shadow {
    bool present;
    char first[64], last[64], score[32];
    long long phone;
} shadow;

static void load_shadow(fx *f, shadow *sh)
{
    for (int i = 0; i < NKEYS; i++) {
        char key[16];
        snprintf(key, sizeof key, "u%03d", i);
        const char *rep = RUN(f, "GET", "phonebook", key);
        memset(&sh[i], 0, sizeof sh[i]);
        if (!strcmp(rep, "$-1\r\n")) continue;
        resp_reply *r = parse_reply(rep, f->reply.len);
        assert_int_equal(r->elements, 8);
        sh[i].present = true;
        snprintf(sh[i].first, sizeof sh[i].first, "%s", r->element[1]->str);
        snprintf(sh[i].last, sizeof sh[i].last, "%s", r->element[3]->str);
        sh[i].phone = r->element[5]->integer;
        snprintf(sh[i].score, sizeof sh[i].score, "%s", r->element[7]->str);
        resp_reply_free(r);
        /* The twin space holds the same object. */
        const char *rep2 = RUN(f, "GET", "plain", key);
        char want[512];
        obj_reply(want, sizeof want, sh[i].first, sh[i].last, sh[i].phone, sh[i].score);
        assert_string_equal(rep2, want);
    }
}

static int cmp3(int c)
{
    return (c > 0) - (c < 0);
}

static bool holds(const char *op, int c)
{
    if (!strcmp(op, "=")) return c == 0;
    if (!strcmp(op, "<")) return c < 0;
    if (!strcmp(op, "<=")) return c <= 0;
    if (!strcmp(op, ">")) return c > 0;
    return c >= 0;
}

/* Byte-wise comparison, shorter prefix first (independent of obj.c). */
static int bytes_cmp(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), n = la < lb ? la : lb;
    int c = memcmp(a, b, n);
    if (c) return cmp3(c);
    return (la > lb) - (la < lb);
}

static bool brute_match(const shadow *s, int i, const char *a, const char *op, const char *v)
{
    int c;
    if (!strcmp(a, "first"))
        c = bytes_cmp(s->first, v);
    else if (!strcmp(a, "last"))
        c = bytes_cmp(s->last, v);
    else if (!strcmp(a, "phone")) {
        long long x = strtoll(v, NULL, 10);
        c = (s->phone > x) - (s->phone < x);
    } else if (!strcmp(a, "score")) {
        double x = strtod(s->score, NULL), y = strtod(v, NULL);
        c = (x > y) - (x < y);
    } else {
        char key[16];
        snprintf(key, sizeof key, "u%03d", i);
        c = bytes_cmp(key, v);
    }
    return holds(op, c);
}

/* Runs NPREDS random searches with one or two predicates; the indexed space,
 * the scanning space and brute force over the GETs must agree. */
static void check_random_searches(fx *f, const shadow *sh)
{
    static char want[NKEYS * 8], got_idx[NKEYS * 8];
    int used_index = 0;
    for (int q = 0; q < NPREDS; q++) {
        const char *a[2], *op[2];
        char v[2][64];
        int np = rnd() % 3 == 0 ? 2 : 1;
        for (int j = 0; j < np; j++) {
            a[j] = ATTRS[rnd() % 5];
            if (j == 0 && q % 2 == 0) a[j] = rnd() % 2 ? "first" : "phone"; /* indexed */
            op[j] = OPS[rnd() % 5];
            rand_value(a[j], v[j], sizeof v[j]);
        }
        if (!strcmp(a[0], "first") || !strcmp(a[0], "phone")) used_index++;
        size_t o = 0;
        int n = 0;
        want[0] = '\0';
        for (int i = 0; i < NKEYS; i++) {
            if (!sh[i].present) continue;
            bool m = true;
            for (int j = 0; j < np && m; j++)
                m = brute_match(&sh[i], i, a[j], op[j], v[j]);
            if (!m) continue;
            o += (size_t)snprintf(want + o, sizeof want - o, "u%03d,", i);
            n++;
        }
        char cnt[32];
        snprintf(cnt, sizeof cnt, ":%d\r\n", n);
        if (np == 1) {
            strcpy(got_idx, SEARCH(f, "phonebook", a[0], op[0], v[0]));
            if (strcmp(got_idx, want))
                fail_msg("SEARCH phonebook %s %s '%s': got %s want %s", a[0], op[0], v[0], got_idx,
                         want);
            assert_string_equal(SEARCH(f, "plain", a[0], op[0], v[0]), want);
            EXPECT(f, cnt, "COUNT", "phonebook", a[0], op[0], v[0]);
            EXPECT(f, cnt, "COUNT", "plain", a[0], op[0], v[0]);
        } else {
            strcpy(got_idx, SEARCH(f, "phonebook", a[0], op[0], v[0], a[1], op[1], v[1]));
            if (strcmp(got_idx, want))
                fail_msg("SEARCH phonebook %s %s '%s' %s %s '%s': got %s want %s", a[0], op[0],
                         v[0], a[1], op[1], v[1], got_idx, want);
            assert_string_equal(SEARCH(f, "plain", a[0], op[0], v[0], a[1], op[1], v[1]), want);
            EXPECT(f, cnt, "COUNT", "phonebook", a[0], op[0], v[0], a[1], op[1], v[1]);
        }
    }
    assert_true(used_index >= NPREDS / 2);
}

/* Applies one write to both spaces (same command). */
static void both(fx *f, const char *want_pb, int argc, const char **argv)
{
    char *args[MAX_ARGS];
    size_t lens[MAX_ARGS];
    for (int i = 0; i < argc; i++) {
        args[i] = (char *)argv[i];
        lens[i] = strlen(argv[i]);
    }
    const char *names[2] = {"phonebook", "plain"};
    char first[256] = "";
    for (int s = 0; s < 2; s++) {
        args[1] = (char *)names[s];
        lens[1] = strlen(names[s]);
        const char *rep = runv(f, argc, args, lens);
        if (s == 0) {
            snprintf(first, sizeof first, "%s", rep);
        } else if (rep[0] == '-') {
            /* Errors name the space; the code word must agree. */
            size_t n = strcspn(first, " ");
            assert_int_equal(strcspn(rep, " "), n);
            assert_memory_equal(rep, first, n);
        } else {
            assert_string_equal(rep, first); /* both spaces answer alike */
        }
    }
    if (want_pb) assert_string_equal(first, want_pb);
}

static void test_search_random_agrees(void **state)
{
    fx *f = *state;
    rng_state = 0x9e3779b97f4a7c15ULL;
    shadow *sh = calloc(NKEYS, sizeof *sh);
    assert_non_null(sh);
    char key[16], fv[64], lv[64], pv[32], sv[32];
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof key, "u%03d", i);
        rand_value("first", fv, sizeof fv);
        rand_value("last", lv, sizeof lv);
        rand_int(pv, sizeof pv);
        rand_value("score", sv, sizeof sv);
        const char *argv[] = {"PUT", "", key, "first", fv, "last", lv, "phone", pv, "score", sv};
        both(f, "+OK\r\n", 11, argv);
    }
    load_shadow(f, sh);
    check_random_searches(f, sh);

    /* Mutate: partial PUTs changing indexed attributes, DELs, ADDs, CPUTs. */
    for (int k = 0; k < 400; k++) {
        rand_key(key, sizeof key);
        uint64_t what = rnd() % 10;
        if (what < 5) {
            const char *argv[MAX_ARGS] = {"PUT", "", key};
            int argc = 3;
            char vals[4][64];
            for (int a = 0; a < 4; a++) {
                if (rnd() % 2) continue;
                argv[argc++] = ATTRS[a];
                rand_value(ATTRS[a], vals[a], sizeof vals[a]);
                argv[argc++] = vals[a];
            }
            both(f, "+OK\r\n", argc, argv);
        } else if (what < 7) {
            const char *argv[] = {"DEL", "", key};
            both(f, NULL, 3, argv);
        } else if (what < 9) {
            char d[32];
            snprintf(d, sizeof d, "%d", (int)(rnd() % 11) - 5);
            const char *argv[] = {"ADD", "", key, "phone", d};
            both(f, NULL, 5, argv);
        } else {
            rand_value("first", fv, sizeof fv);
            rand_value("first", lv, sizeof lv);
            const char *argv[] = {"CPUT", "", key, "IF", "first", fv, "SET", "first", lv};
            both(f, NULL, 9, argv);
        }
    }
    load_shadow(f, sh);
    int present = 0;
    for (int i = 0; i < NKEYS; i++)
        present += sh[i].present;
    assert_true(present > NKEYS / 2 && present < NKEYS);
    check_random_searches(f, sh);

    /* Everything still holds after commit, in a read transaction. */
    assert_int_equal(store_txn_commit(&f->t), 0);
    assert_int_equal(store_txn_begin(f->st, false, &f->t), 0);
    check_random_searches(f, sh);
    free(sh);
}

/* ---- refusals ----------------------------------------------------------- */

static void test_refuse_arg_counts(void **state)
{
    fx *f = *state;
    const char *w = "-ERR wrong number of arguments for 'GET'\r\n";
    REFUSE(f, w, "GET", "phonebook");
    REFUSE(f, w, "GET");
    REFUSE(f, w, "GET", "phonebook", "k", "x");
    REFUSE(f, "-ERR wrong number of arguments for 'get'\r\n", "get", "phonebook", "k", "x");
    w = "-ERR wrong number of arguments for 'DEL'\r\n";
    REFUSE(f, w, "DEL", "phonebook");
    REFUSE(f, w, "DEL", "phonebook", "k", "x");
    w = "-ERR wrong number of arguments for 'PUT'\r\n";
    REFUSE(f, w, "PUT", "phonebook");
    REFUSE(f, w, "PUT", "phonebook", "k", "first");
    REFUSE(f, w, "PUT", "phonebook", "k", "first", "a", "last");
    w = "-ERR wrong number of arguments for 'CPUT'\r\n";
    REFUSE(f, w, "CPUT", "phonebook");
    REFUSE(f, w, "CPUT", "phonebook", "k");
    REFUSE(f, w, "CPUT", "phonebook", "k", "first", "a", "SET", "last", "b");  /* no IF */
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "first", "a");                /* no SET */
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "first", "a", "SET");         /* empty SET */
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "first", "SET", "last", "b"); /* odd IF */
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "first", "a", "SET", "last"); /* odd SET */
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "SET", "last", "b", "first");
    w = "-ERR wrong number of arguments for 'ADD'\r\n";
    REFUSE(f, w, "ADD", "phonebook");
    REFUSE(f, w, "ADD", "phonebook", "k");
    REFUSE(f, w, "ADD", "phonebook", "k", "phone");
    REFUSE(f, w, "ADD", "phonebook", "k", "phone", "1", "2");
    w = "-ERR wrong number of arguments for 'SEARCH'\r\n";
    REFUSE(f, w, "SEARCH");
    REFUSE(f, w, "SEARCH", "phonebook", "first");
    REFUSE(f, w, "SEARCH", "phonebook", "first", "=");
    REFUSE(f, w, "SEARCH", "phonebook", "first", "=", "a", "last");
    REFUSE(f, w, "SEARCH", "phonebook", "first", "=", "a", "LIMIT");
    REFUSE(f, w, "SEARCH", "phonebook", "first", "=", "LIMIT", "5");
    w = "-ERR wrong number of arguments for 'COUNT'\r\n";
    REFUSE(f, w, "COUNT");
    REFUSE(f, w, "COUNT", "phonebook", "first", "=");
    REFUSE(f, w, "COUNT", "phonebook", "LIMIT", "1"); /* COUNT takes no LIMIT */
    REFUSE(f, w, "COUNT", "phonebook", "first", "=", "a", "LIMIT", "1");
    /* A long command name is cut in the message. */
    REFUSE(f, "-ERR wrong number of arguments for 'SEARCHSEARCHSEAR'\r\n",
           "SEARCHSEARCHSEARCHSEARCH");
}

static void test_refuse_attributes_and_types(void **state)
{
    fx *f = *state;
    const char *w = "-NOATTR space 'phonebook' has no attribute 'nick'\r\n";
    REFUSE(f, w, "PUT", "phonebook", "k", "nick", "x");
    REFUSE(f, w, "PUT", "phonebook", "k", "first", "a", "nick", "x");
    REFUSE(f, "-NOATTR space 'phonebook' has no attribute 'First'\r\n", "PUT", "phonebook", "k",
           "First", "a"); /* names are case sensitive */
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "nick", "x", "SET", "first", "a");
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "SET", "nick", "a");
    REFUSE(f, w, "ADD", "phonebook", "k", "nick", "1");
    REFUSE(f, w, "SEARCH", "phonebook", "nick", "=", "x");
    REFUSE(f, w, "COUNT", "phonebook", "first", "=", "a", "nick", "<", "x");
    /* Long names are cut at 64 bytes. */
    char longname[100];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    char want[160];
    snprintf(want, sizeof want, "-NOATTR space 'phonebook' has no attribute '%.64s'\r\n", longname);
    REFUSE(f, want, "PUT", "phonebook", "k", longname, "x");

    REFUSE(f, "-WRONGTYPE attribute 'phone' is int, got 'abc'\r\n", "PUT", "phonebook", "k",
           "phone", "abc");
    REFUSE(f, "-WRONGTYPE attribute 'phone' is int, got '1.5'\r\n", "PUT", "phonebook", "k",
           "phone", "1.5");
    REFUSE(f, "-WRONGTYPE attribute 'phone' is int, got ''\r\n", "PUT", "phonebook", "k", "phone",
           "");
    REFUSE(f, "-WRONGTYPE attribute 'phone' is int, got '9223372036854775808'\r\n", "PUT",
           "phonebook", "k", "phone", "9223372036854775808");
    REFUSE(f, "-WRONGTYPE attribute 'score' is float, got 'nan'\r\n", "PUT", "phonebook", "k",
           "score", "nan");
    REFUSE(f, "-WRONGTYPE attribute 'score' is float, got 'inf'\r\n", "PUT", "phonebook", "k",
           "score", "inf");
    REFUSE(f, "-WRONGTYPE attribute 'score' is float, got '1.5x'\r\n", "PUT", "phonebook", "k",
           "first", "ok", "score", "1.5x");
    REFUSE(f, "-WRONGTYPE attribute 'phone' is int, got 'abc'\r\n", "CPUT", "phonebook", "k", "IF",
           "phone", "abc", "SET", "first", "a");
    REFUSE(f, "-WRONGTYPE attribute 'score' is float, got 'nan'\r\n", "CPUT", "phonebook", "k",
           "IF", "SET", "score", "nan");
    REFUSE(f, "-WRONGTYPE attribute 'phone' is int, got 'abc'\r\n", "SEARCH", "phonebook", "phone",
           ">", "abc");
    REFUSE(f, "-WRONGTYPE attribute 'score' is float, got 'nan'\r\n", "COUNT", "phonebook", "score",
           "=", "nan");
    REFUSE(f, "-WRONGTYPE attribute 'first' is string; ADD needs an int attribute\r\n", "ADD",
           "phonebook", "k", "first", "1");
    REFUSE(f, "-WRONGTYPE attribute 'score' is float; ADD needs an int attribute\r\n", "ADD",
           "phonebook", "k", "score", "1");
    REFUSE(f, "-WRONGTYPE delta 'abc' is not an int\r\n", "ADD", "phonebook", "k", "phone", "abc");
    REFUSE(f, "-WRONGTYPE delta '99999999999999999999' is not an int\r\n", "ADD", "phonebook", "k",
           "phone", "99999999999999999999");

    /* The key attribute cannot be assigned (but can be searched). */
    w = "-ERR the key attribute 'username' cannot be assigned\r\n";
    REFUSE(f, w, "PUT", "phonebook", "k", "username", "x");
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "SET", "username", "x");
    REFUSE(f, w, "CPUT", "phonebook", "k", "IF", "username", "k", "SET", "first", "x");
    REFUSE(f, w, "ADD", "phonebook", "k", "username", "1");

    /* Operators. */
    w = "-ERR unknown operator '!=' (use = < <= > >=)\r\n";
    REFUSE(f, w, "SEARCH", "phonebook", "first", "!=", "a");
    REFUSE(f, w, "COUNT", "phonebook", "phone", "!=", "1");
    REFUSE(f, "-ERR unknown operator '=<' (use = < <= > >=)\r\n", "SEARCH", "phonebook", "first",
           "=<", "a");
    REFUSE(f, "-ERR unknown operator '==' (use = < <= > >=)\r\n", "SEARCH", "phonebook", "first",
           "==", "a");
    REFUSE(f, "-ERR unknown operator '=>' (use = < <= > >=)\r\n", "SEARCH", "phonebook", "username",
           "=>", "a");
    REFUSE(f, "-ERR unknown operator '' (use = < <= > >=)\r\n", "SEARCH", "phonebook", "first", "",
           "a");
    REFUSE(f, "-ERR unknown operator '<>' (use = < <= > >=)\r\n", "SEARCH", "phonebook", "first",
           "=", "a", "last", "<>", "b");

    /* LIMIT. */
    REFUSE(f, "-ERR LIMIT needs a non-negative integer, got 'abc'\r\n", "SEARCH", "phonebook",
           "LIMIT", "abc");
    REFUSE(f, "-ERR LIMIT needs a non-negative integer, got '-1'\r\n", "SEARCH", "phonebook",
           "first", "=", "a", "LIMIT", "-1");
    REFUSE(f, "-ERR LIMIT needs a non-negative integer, got '1.5'\r\n", "SEARCH", "phonebook",
           "limit", "1.5");
    REFUSE(f, "-ERR LIMIT needs a non-negative integer, got ''\r\n", "SEARCH", "phonebook", "LIMIT",
           "");
}

static void test_refuse_long_key(void **state)
{
    fx *f = *state;
    f->max_key = 16;
    const char *k16 = "0123456789abcdef", *k17 = "0123456789abcdefg";
    const char *w = "-ERR key exceeds max_key_bytes (16)\r\n";
    REFUSE(f, w, "GET", "phonebook", k17);
    REFUSE(f, w, "PUT", "phonebook", k17, "first", "a");
    REFUSE(f, w, "DEL", "phonebook", k17);
    REFUSE(f, w, "CPUT", "phonebook", k17, "IF", "SET", "first", "a");
    REFUSE(f, w, "ADD", "phonebook", k17, "phone", "1");
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", k16, "first", "a");
    EXPECT(f, ":1\r\n", "ADD", "phonebook", k16, "phone", "1");
    EXPECT(f, ":1\r\n", "DEL", "phonebook", k16);
    /* Searching for a long key is not a key argument: no match, no error. */
    EXPECT(f, "*0\r\n", "SEARCH", "phonebook", "username", "=", k17);

    /* The storage limit itself. */
    f->max_key = STORE_MAX_KEY;
    char big[STORE_MAX_KEY + 2];
    memset(big, 'b', sizeof big);
    big[STORE_MAX_KEY] = '\0';
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", big, "first", "x");
    EXPECT(f, ":1\r\n", "COUNT", "phonebook", "first", "=", "x");
    big[STORE_MAX_KEY] = 'b';
    big[STORE_MAX_KEY + 1] = '\0';
    char want[64];
    snprintf(want, sizeof want, "-ERR key exceeds max_key_bytes (%d)\r\n", (int)STORE_MAX_KEY);
    REFUSE(f, want, "PUT", "phonebook", big, "first", "x");
}

static void test_kind_of(void **state)
{
    (void)state;
    assert_int_equal(kv_kind_of("PUT", 3), KV_PUT);
    assert_int_equal(kv_kind_of("put", 3), KV_PUT);
    assert_int_equal(kv_kind_of("Get", 3), KV_GET);
    assert_int_equal(kv_kind_of("DEL", 3), KV_DEL);
    assert_int_equal(kv_kind_of("cput", 4), KV_CPUT);
    assert_int_equal(kv_kind_of("ADD", 3), KV_ADD);
    assert_int_equal(kv_kind_of("search", 6), KV_SEARCH);
    assert_int_equal(kv_kind_of("COUNT", 5), KV_COUNT);
    assert_int_equal(kv_kind_of("PUTX", 4), 0);
    assert_int_equal(kv_kind_of("PU", 2), 0);
    assert_int_equal(kv_kind_of("PUTS", 3), KV_PUT); /* length-bounded */
    assert_int_equal(kv_kind_of("", 0), 0);
    assert_int_equal(kv_kind_of("PING", 4), 0);
    assert_true(kv_is_write(KV_PUT));
    assert_true(kv_is_write(KV_DEL));
    assert_true(kv_is_write(KV_CPUT));
    assert_true(kv_is_write(KV_ADD));
    assert_false(kv_is_write(KV_GET));
    assert_false(kv_is_write(KV_SEARCH));
    assert_false(kv_is_write(KV_COUNT));
    assert_false(kv_is_write(0));

    buf b;
    buf_init(&b);
    kv_reply_nospace(&b, "nope", 4);
    buf_putc(&b, '\0');
    assert_string_equal(b.data, "-NOSPACE no such space 'nope'\r\n");
    buf_reset(&b);
    char longname[100];
    memset(longname, 's', sizeof longname);
    kv_reply_nospace(&b, longname, sizeof longname);
    buf_putc(&b, '\0');
    char want[128];
    snprintf(want, sizeof want, "-NOSPACE no such space '%.64s'\r\n", longname);
    assert_string_equal(b.data, want);
    buf_free(&b);
}

/* ---- detach and references ---------------------------------------------- */

/* Parses words copied into private buffers; returns the op. */
static kv_op *parse_owned(fx *f, char bufs[][64], size_t *lens, char **argv, int argc,
                          const char *const *words)
{
    for (int i = 0; i < argc; i++) {
        snprintf(bufs[i], 64, "%s", words[i]);
        argv[i] = bufs[i];
        lens[i] = strlen(words[i]);
    }
    kv_op *op = NULL;
    buf err;
    buf_init(&err);
    if (kv_parse(f->cs, f->sp, argc, argv, lens, f->max_key, &op, &err))
        fail_msg("refused: %.*s", (int)err.len, err.data);
    buf_free(&err);
    return op;
}

/* Detaches op, overwrites every argv byte, and checks no op string points
 * into the old buffers. */
static void detach_and_clobber(kv_op *op, char bufs[][64], int argc)
{
    kv_op_detach(op);
    char *mem = op->mem;
    assert_non_null(mem);
    kv_op_detach(op); /* idempotent */
    assert_ptr_equal(op->mem, mem);
    const char *lo = bufs[0], *hi = bufs[argc];
    assert_false(op->key && op->key >= lo && op->key < hi);
    for (uint32_t i = 0; i < op->nset; i++)
        if (op->set[i].v.type == SPACE_STRING)
            assert_false(op->set[i].v.u.s.p >= lo && op->set[i].v.u.s.p < hi);
    for (uint32_t i = 0; i < op->ncond; i++)
        if (op->cond[i].v.type == SPACE_STRING)
            assert_false(op->cond[i].v.u.s.p >= lo && op->cond[i].v.u.s.p < hi);
    for (uint32_t i = 0; i < op->npreds; i++)
        if (op->preds[i].v.type == SPACE_STRING)
            assert_false(op->preds[i].v.u.s.p >= lo && op->preds[i].v.u.s.p < hi);
    memset(bufs, 'Z', (size_t)argc * 64);
}

static void exec_expect(fx *f, kv_op *op, const char *want)
{
    buf r;
    buf_init(&r);
    assert_int_equal(kv_exec(&f->t, op, &r), 0);
    buf_putc(&r, '\0');
    assert_string_equal(r.data, want);
    buf_free(&r);
    kv_op_free(op);
}

static void test_detach(void **state)
{
    fx *f = *state;
    char bufs[12][64];
    size_t lens[12];
    char *argv[12];

    static const char *const put[] = {"PUT", "phonebook", "jdoe", "first", "Jane", "last",
                                      "Roe", "phone",     "77",   "score", "0.5"};
    kv_op *op = parse_owned(f, bufs, lens, argv, 11, put);
    detach_and_clobber(op, bufs, 11);
    exec_expect(f, op, "+OK\r\n");
    expect_obj(f, "jdoe", "Jane", "Roe", 77, "0.5");

    static const char *const cput[] = {"CPUT", "phonebook", "jdoe", "IF",   "first", "Jane",
                                       "last", "Roe",       "SET",  "last", "Doe"};
    op = parse_owned(f, bufs, lens, argv, 11, cput);
    detach_and_clobber(op, bufs, 11);
    exec_expect(f, op, "+OK\r\n");
    expect_obj(f, "jdoe", "Jane", "Doe", 77, "0.5");

    static const char *const add[] = {"ADD", "phonebook", "jdoe", "phone", "3"};
    op = parse_owned(f, bufs, lens, argv, 5, add);
    detach_and_clobber(op, bufs, 5);
    exec_expect(f, op, ":80\r\n");

    static const char *const search[] = {"SEARCH", "phonebook", "first", "=",
                                         "Jane",   "username",  "=",     "jdoe"};
    op = parse_owned(f, bufs, lens, argv, 8, search);
    detach_and_clobber(op, bufs, 8);
    char obj[256], want[512];
    obj_reply(obj, sizeof obj, "Jane", "Doe", 80, "0.5");
    snprintf(want, sizeof want, "*1\r\n*10\r\n$8\r\nusername\r\n$4\r\njdoe\r\n%s",
             obj + 4); /* the attributes without GET's "*8" header */
    exec_expect(f, op, want);

    static const char *const count[] = {"COUNT", "phonebook", "last", ">=", "Doe"};
    op = parse_owned(f, bufs, lens, argv, 5, count);
    detach_and_clobber(op, bufs, 5);
    exec_expect(f, op, ":1\r\n");

    static const char *const del[] = {"DEL", "phonebook", "jdoe"};
    op = parse_owned(f, bufs, lens, argv, 3, del);
    detach_and_clobber(op, bufs, 3);
    exec_expect(f, op, ":1\r\n");
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "jdoe");

    /* An op freed without detaching, and one detached but never run. */
    op = parse_owned(f, bufs, lens, argv, 11, put);
    kv_op_free(op);
    op = parse_owned(f, bufs, lens, argv, 11, put);
    kv_op_detach(op);
    kv_op_free(op);
    kv_op_free(NULL);
}

/* An op keeps its space alive after everyone else let go of it. */
static void test_op_holds_space(void **state)
{
    fx *f = *state;
    kv_space *sp = kv_space_new(f->cs->id, f->cs->schema);
    assert_int_equal(atomic_load(&sp->refs), 1);
    assert_ptr_not_equal(sp->schema, f->cs->schema); /* its own copy */
    char *argv[] = {"PUT", "phonebook", "k", "first", "kept"};
    size_t lens[] = {3, 9, 1, 5, 4};
    kv_op *op = NULL;
    buf err;
    buf_init(&err);
    assert_int_equal(kv_parse(f->cs, sp, 5, argv, lens, f->max_key, &op, &err), 0);
    assert_int_equal(atomic_load(&sp->refs), 2);
    kv_op_detach(op);
    kv_space_unref(sp);
    assert_int_equal(atomic_load(&op->sp->refs), 1);
    exec_expect(f, op, "+OK\r\n"); /* frees op and with it the space */
    expect_obj(f, "k", "kept", "", 0, "0");
    /* A refused parse drops the reference it took. */
    sp = kv_space_new(f->cs->id, f->cs->schema);
    char *bad[] = {"PUT", "phonebook", "k", "phone", "x"};
    size_t blens[] = {3, 9, 1, 5, 1};
    assert_int_equal(kv_parse(f->cs, sp, 5, bad, blens, f->max_key, &op, &err), -1);
    assert_int_equal(atomic_load(&sp->refs), 1);
    kv_space_unref(sp);
    buf_free(&err);
}

/* ---- the partition write counter ---------------------------------------- */

static void test_write_counter(void **state)
{
    fx *f = *state;
    uint64_t s = seq_of(f, "k");
    assert_int_equal(s, 0);
#define STEP(delta, want, ...)                                                                     \
    do {                                                                                           \
        EXPECT(f, want, __VA_ARGS__);                                                              \
        s += (delta);                                                                              \
        assert_int_equal(seq_of(f, "k"), s);                                                       \
    } while (0)
    STEP(0, "$-1\r\n", "GET", "phonebook", "k");
    STEP(0, ":0\r\n", "DEL", "phonebook", "k");
    STEP(0, "-NOTFOUND no object with that key in space 'phonebook'\r\n", "CPUT", "phonebook", "k",
         "IF", "SET", "first", "a");
    STEP(0, "-NOTFOUND no object with that key in space 'phonebook'\r\n", "ADD", "phonebook", "k",
         "phone", "1");
    STEP(1, "+OK\r\n", "PUT", "phonebook", "k", "first", "a");
    STEP(1, "+OK\r\n", "PUT", "phonebook", "k", "phone", "9223372036854775806");
    STEP(1, "+OK\r\n", "PUT", "phonebook", "k");
    STEP(0, "-CMPFAIL attribute 'first' does not match\r\n", "CPUT", "phonebook", "k", "IF",
         "first", "b", "SET", "first", "c");
    STEP(1, "+OK\r\n", "CPUT", "phonebook", "k", "IF", "first", "a", "SET", "first", "c");
    STEP(1, ":9223372036854775807\r\n", "ADD", "phonebook", "k", "phone", "1");
    STEP(0, "-OVERFLOW attribute 'phone' would overflow (9223372036854775807 + 1)\r\n", "ADD",
         "phonebook", "k", "phone", "1");
    STEP(0, ":1\r\n", "COUNT", "phonebook", "first", "=", "c");
    STEP(0, "$-1\r\n", "GET", "phonebook", "other-key-that-is-absent");
    STEP(1, ":1\r\n", "DEL", "phonebook", "k");
    STEP(0, ":0\r\n", "DEL", "phonebook", "k");
#undef STEP
    assert_int_equal(s, 6);

    /* Writes count in their own partition only. */
    const char *k2 = NULL;
    static const char *const cands[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
    uint32_t pk = cmap_partition_of(f->cs, "k", 1);
    for (size_t i = 0; i < 10 && !k2; i++)
        if (cmap_partition_of(f->cs, cands[i], 1) != pk) k2 = cands[i];
    assert_non_null(k2);
    uint64_t s2 = seq_of(f, k2);
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", k2, "first", "x");
    assert_int_equal(seq_of(f, k2), s2 + 1);
    assert_int_equal(seq_of(f, "k"), s);

    /* The counter is committed with the data. */
    assert_int_equal(store_txn_commit(&f->t), 0);
    assert_int_equal(store_txn_begin(f->st, false, &f->t), 0);
    assert_int_equal(seq_of(f, "k"), 6);
    assert_int_equal(seq_of(f, k2), s2 + 1);
}

/* ---- kv_compute: the pure semantics ------------------------------------- */

/* Parses words (argv[1] selects the space as in runv); the op points at the
 * caller's strings. */
static kv_op *parse_words(fx *f, int argc, const char **words)
{
    char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    for (int i = 0; i < argc; i++) {
        argv[i] = (char *)words[i];
        lens[i] = strlen(words[i]);
    }
    bool plain = argc > 1 && !strcmp(words[1], "plain");
    kv_op *op = NULL;
    buf err;
    buf_init(&err);
    if (kv_parse(plain ? f->cs_plain : f->cs, plain ? f->sp_plain : f->sp, argc, argv, lens,
                 f->max_key, &op, &err))
        fail_msg("refused: %.*s", (int)err.len, err.data);
    buf_free(&err);
    return op;
}

#define OP(f, ...)                                                                                 \
    parse_words((f), (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)),         \
                (const char *[]){__VA_ARGS__})

/* The encoding of a phonebook object with these values. */
static void enc_of(fx *f, buf *out, const char *first, const char *last, int64_t phone,
                   double score)
{
    obj_value v[4];
    v[0].type = SPACE_STRING;
    v[0].u.s.p = first;
    v[0].u.s.len = strlen(first);
    v[1].type = SPACE_STRING;
    v[1].u.s.p = last;
    v[1].u.s.len = strlen(last);
    v[2].type = SPACE_INT;
    v[2].u.i = phone;
    v[3].type = SPACE_FLOAT;
    v[3].u.f = score;
    buf_reset(out);
    obj_encode(f->sp->schema, v, out);
}

/* Runs kv_compute and checks write kind, reply and (KV_W_PUT) the value
 * against want_value; frees op. */
static void compute_expect(kv_op *op, const buf *cur, int want_write, const char *want_reply,
                           const buf *want_value)
{
    kv_result r;
    memset(&r, 0x5a, sizeof r); /* kv_compute must initialise everything */
    assert_int_equal(kv_compute(op, cur ? cur->data : NULL, cur ? cur->len : 0, cur != NULL, &r),
                     0);
    assert_int_equal(r.write, want_write);
    assert_int_equal(r.reply.len, strlen(want_reply));
    assert_memory_equal(r.reply.data, want_reply, r.reply.len);
    if (want_write == KV_W_PUT) {
        assert_non_null(want_value);
        assert_int_equal(r.value.len, want_value->len);
        assert_memory_equal(r.value.data, want_value->data, want_value->len);
    } else {
        assert_int_equal(r.value.len, 0);
    }
    kv_result_free(&r);
    kv_result_free(&r); /* twice is harmless */
    kv_op_free(op);
}

static void test_compute_put_get_del(void **state)
{
    fx *f = *state;
    buf cur, want;
    buf_init(&cur);
    buf_init(&want);

    /* PUT on nothing: zero values plus the assignments. */
    enc_of(f, &want, "John", "", 0, 2.5);
    compute_expect(OP(f, "PUT", "phonebook", "k", "first", "John", "score", "2.5"), NULL, KV_W_PUT,
                   "+OK\r\n", &want);
    enc_of(f, &want, "", "", 0, 0);
    compute_expect(OP(f, "PUT", "phonebook", "k"), NULL, KV_W_PUT, "+OK\r\n", &want);
    /* PUT on an object: a partial update keeps the other attributes. */
    enc_of(f, &cur, "John", "Smith", 7, 1.5);
    enc_of(f, &want, "John", "Doe", -1, 1.5);
    compute_expect(OP(f, "PUT", "phonebook", "k", "last", "Doe", "phone", "-1"), &cur, KV_W_PUT,
                   "+OK\r\n", &want);
    /* The last assignment of an attribute wins. */
    enc_of(f, &want, "B", "Smith", 7, 1.5);
    compute_expect(OP(f, "PUT", "phonebook", "k", "first", "A", "first", "B"), &cur, KV_W_PUT,
                   "+OK\r\n", &want);
    /* PUT without assignments rewrites the same object. */
    compute_expect(OP(f, "PUT", "phonebook", "k"), &cur, KV_W_PUT, "+OK\r\n", &cur);

    /* GET. */
    compute_expect(OP(f, "GET", "phonebook", "k"), NULL, KV_W_NONE, "$-1\r\n", NULL);
    char rep[512];
    compute_expect(OP(f, "GET", "phonebook", "k"), &cur, KV_W_NONE,
                   obj_reply(rep, sizeof rep, "John", "Smith", 7, "1.5"), NULL);

    /* DEL. */
    compute_expect(OP(f, "DEL", "phonebook", "k"), NULL, KV_W_NONE, ":0\r\n", NULL);
    compute_expect(OP(f, "DEL", "phonebook", "k"), &cur, KV_W_DEL, ":1\r\n", NULL);
    buf_free(&cur);
    buf_free(&want);
}

static void test_compute_cput_add(void **state)
{
    fx *f = *state;
    buf cur, want;
    buf_init(&cur);
    buf_init(&want);
    enc_of(f, &cur, "Jim", "Doe", 43, 3);

    /* CPUT: applied, compared by type, failing conditions, no object. */
    enc_of(f, &want, "Jim", "Roe", 43, 3);
    compute_expect(OP(f, "CPUT", "phonebook", "k", "IF", "first", "Jim", "phone", "043", "SET",
                      "last", "Roe"),
                   &cur, KV_W_PUT, "+OK\r\n", &want);
    enc_of(f, &want, "Jim", "Doe", 43, -0.5);
    compute_expect(OP(f, "CPUT", "phonebook", "k", "IF", "SET", "score", "-0.5"), &cur, KV_W_PUT,
                   "+OK\r\n", &want);
    compute_expect(OP(f, "CPUT", "phonebook", "k", "IF", "first", "Jim", "score", "3.5", "SET",
                      "last", "X"),
                   &cur, KV_W_NONE, "-CMPFAIL attribute 'score' does not match\r\n", NULL);
    compute_expect(OP(f, "CPUT", "phonebook", "k", "IF", "last", "Do", "SET", "last", "X"), &cur,
                   KV_W_NONE, "-CMPFAIL attribute 'last' does not match\r\n", NULL);
    compute_expect(OP(f, "CPUT", "phonebook", "k", "IF", "SET", "last", "X"), NULL, KV_W_NONE,
                   "-NOTFOUND no object with that key in space 'phonebook'\r\n", NULL);

    /* ADD: the new value, NOTFOUND, OVERFLOW both ways. */
    enc_of(f, &want, "Jim", "Doe", 40, 3);
    compute_expect(OP(f, "ADD", "phonebook", "k", "phone", "-3"), &cur, KV_W_PUT, ":40\r\n",
                   &want);
    enc_of(f, &want, "Jim", "Doe", 43, 3);
    compute_expect(OP(f, "ADD", "phonebook", "k", "phone", "0"), &cur, KV_W_PUT, ":43\r\n", &want);
    compute_expect(OP(f, "ADD", "phonebook", "k", "phone", "1"), NULL, KV_W_NONE,
                   "-NOTFOUND no object with that key in space 'phonebook'\r\n", NULL);
    enc_of(f, &cur, "", "", INT64_MAX, 0);
    compute_expect(OP(f, "ADD", "phonebook", "k", "phone", "1"), &cur, KV_W_NONE,
                   "-OVERFLOW attribute 'phone' would overflow (9223372036854775807 + 1)\r\n",
                   NULL);
    enc_of(f, &want, "", "", -1, 0);
    compute_expect(OP(f, "ADD", "phonebook", "k", "phone", "-9223372036854775808"), &cur, KV_W_PUT,
                   ":-1\r\n", &want);
    enc_of(f, &cur, "", "", INT64_MIN, 0);
    compute_expect(OP(f, "ADD", "phonebook", "k", "phone", "-1"), &cur, KV_W_NONE,
                   "-OVERFLOW attribute 'phone' would overflow (-9223372036854775808 + -1)\r\n",
                   NULL);
    buf_free(&cur);
    buf_free(&want);
}

/* A result kv_compute refused: nothing in it, and it can still be freed. */
static void compute_fails(kv_op *op, const void *cur, size_t len, bool exists, int want_rc)
{
    kv_result r;
    memset(&r, 0x5a, sizeof r);
    assert_int_equal(kv_compute(op, cur, len, exists, &r), want_rc);
    assert_int_equal(r.write, KV_W_NONE);
    assert_int_equal(r.value.len, 0);
    assert_int_equal(r.reply.len, 0);
    kv_result_free(&r);
    kv_op_free(op);
}

static void test_compute_errors(void **state)
{
    fx *f = *state;
    buf good;
    buf_init(&good);
    enc_of(f, &good, "a", "b", 1, 1);
    /* A corrupt current object, for every point command. */
    static const char *const kinds[][6] = {
        {"GET", "phonebook", "k"}, {"DEL", "phonebook", "k"}, {"PUT", "phonebook", "k"},
        {"ADD", "phonebook", "k", "phone", "1"}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        int argc = kinds[i][3] ? 5 : 3;
        compute_fails(parse_words(f, argc, (const char **)kinds[i]), good.data, good.len - 1, true,
                      MDB_CORRUPTED); /* truncated */
        compute_fails(parse_words(f, argc, (const char **)kinds[i]), "", 0, true, MDB_CORRUPTED);
    }
    compute_fails(OP(f, "CPUT", "phonebook", "k", "IF", "SET", "first", "x"), "\x02\x00\x04", 3,
                  true, MDB_CORRUPTED);
    /* An object of another shape (three attributes) is corrupt here. */
    buf other;
    buf_init(&other);
    buf_putc(&other, 1);
    buf_put_u16be(&other, 3);
    for (int i = 0; i < 3; i++) {
        buf_putc(&other, 1);
        buf_put_u64be(&other, 5);
    }
    compute_fails(OP(f, "GET", "phonebook", "k"), other.data, other.len, true, MDB_CORRUPTED);
    /* Trailing bytes. */
    buf_putc(&good, 0);
    compute_fails(OP(f, "GET", "phonebook", "k"), good.data, good.len, true, MDB_CORRUPTED);
    /* Garbage is ignored when there is no object. */
    compute_expect(OP(f, "GET", "phonebook", "k"), NULL, KV_W_NONE, "$-1\r\n", NULL);
    /* SEARCH and COUNT are not point operations. */
    compute_fails(OP(f, "SEARCH", "phonebook", "first", "=", "a"), NULL, 0, false, MDB_INVALID);
    compute_fails(OP(f, "COUNT", "phonebook"), NULL, 0, false, MDB_INVALID);
    buf_free(&good);
    buf_free(&other);
}

/* kv_compute reads only its arguments: the store is neither read nor
 * written, and the result does not point into cur. */
static void test_compute_is_pure(void **state)
{
    fx *f = *state;
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "k", "first", "stored", "phone", "5");
    uint64_t seq = seq_of(f, "k");
    buf cur, want;
    buf_init(&cur);
    buf_init(&want);
    enc_of(f, &cur, "given", "x", 100, 0);
    kv_op *op = OP(f, "ADD", "phonebook", "k", "phone", "1");
    kv_result r1, r2;
    assert_int_equal(kv_compute(op, cur.data, cur.len, true, &r1), 0);
    assert_int_equal(kv_compute(op, cur.data, cur.len, true, &r2), 0);
    memset(cur.data, 0xee, cur.len); /* not retained */
    enc_of(f, &want, "given", "x", 101, 0);
    assert_int_equal(r1.write, KV_W_PUT);
    assert_int_equal(r1.value.len, want.len);
    assert_memory_equal(r1.value.data, want.data, want.len);
    assert_int_equal(r2.value.len, want.len);
    assert_memory_equal(r2.value.data, want.data, want.len);
    assert_int_equal(r1.reply.len, 6);
    assert_memory_equal(r1.reply.data, ":101\r\n", 6);
    kv_result_free(&r1);
    kv_result_free(&r2);
    kv_op_free(op);
    /* Not computed from the store, and the store did not change. */
    expect_obj(f, "k", "stored", "", 5, "0");
    assert_int_equal(seq_of(f, "k"), seq);
    /* An absent object even though the store has one. */
    compute_expect(OP(f, "DEL", "phonebook", "k"), NULL, KV_W_NONE, ":0\r\n", NULL);
    expect_obj(f, "k", "stored", "", 5, "0");
    buf_free(&cur);
    buf_free(&want);
}

/* A random point command on key in space (as words into vals). */
static int rand_point(const char **argv, char vals[][64], const char *space, const char *key)
{
    int argc = 3;
    argv[1] = space;
    argv[2] = key;
    uint64_t what = rnd() % 12;
    if (what < 5) {
        argv[0] = "PUT";
        for (int a = 0; a < 4; a++) {
            if (rnd() % 2) continue;
            argv[argc++] = ATTRS[a];
            rand_value(ATTRS[a], vals[a], 64);
            argv[argc++] = vals[a];
        }
    } else if (what < 7) {
        argv[0] = "DEL";
    } else if (what < 9) {
        argv[0] = "ADD";
        argv[argc++] = "phone";
        if (rnd() % 8 == 0)
            rand_int(vals[0], 64);
        else
            snprintf(vals[0], 64, "%d", (int)(rnd() % 11) - 5);
        argv[argc++] = vals[0];
    } else if (what < 11) {
        argv[0] = "CPUT";
        argv[argc++] = "IF";
        argv[argc++] = "first";
        rand_value("first", vals[0], 64);
        argv[argc++] = vals[0];
        argv[argc++] = "SET";
        argv[argc++] = "first";
        rand_value("first", vals[1], 64);
        argv[argc++] = vals[1];
    } else {
        argv[0] = "GET";
    }
    return argc;
}

/* Copies the stored encoding of key in op's partition into cur; false if
 * absent. */
static bool stored(fx *f, const kv_space *sp, uint32_t part, const char *key, buf *cur)
{
    const void *data;
    size_t len;
    buf_reset(cur);
    int rc = store_obj_get(&f->t, sp->id, part, key, strlen(key), &data, &len);
    if (rc == MDB_NOTFOUND) return false;
    assert_int_equal(rc, 0);
    buf_append(cur, data, len);
    return true;
}

/* kv_exec is kv_compute plus the write: same reply, the stored object is the
 * computed one, and the write counter moves exactly for writes. */
static void test_compute_matches_exec(void **state)
{
    fx *f = *state;
    rng_state = 0x243f6a8885a308d3ULL;
    buf cur, after;
    buf_init(&cur);
    buf_init(&after);
    int seen[3] = {0};
    for (int k = 0; k < 2000; k++) {
        const char *argv[MAX_ARGS];
        char vals[4][64], key[16];
        snprintf(key, sizeof key, "u%03d", (int)(rnd() % 40));
        int argc = rand_point(argv, vals, "phonebook", key);
        kv_op *op = parse_words(f, argc, argv);
        bool exists = stored(f, f->sp, op->part, key, &cur);
        uint64_t seq = seq_of(f, key);
        kv_result r;
        assert_int_equal(kv_compute(op, cur.data, cur.len, exists, &r), 0);
        seen[r.write]++;
        buf rep;
        buf_init(&rep);
        assert_int_equal(kv_exec(&f->t, op, &rep), 0);
        assert_int_equal(rep.len, r.reply.len);
        assert_memory_equal(rep.data, r.reply.data, rep.len);
        bool now = stored(f, f->sp, op->part, key, &after);
        if (r.write == KV_W_PUT) {
            assert_true(now);
            assert_int_equal(after.len, r.value.len);
            assert_memory_equal(after.data, r.value.data, after.len);
        } else if (r.write == KV_W_DEL) {
            assert_false(now);
        } else {
            assert_int_equal(now, exists);
            assert_int_equal(after.len, cur.len);
            if (now) assert_memory_equal(after.data, cur.data, cur.len);
        }
        assert_int_equal(seq_of(f, key), seq + (r.write != KV_W_NONE));
        buf_free(&rep);
        kv_result_free(&r);
        kv_op_free(op);
    }
    /* Every outcome happened many times. */
    for (int w = 0; w < 3; w++)
        assert_true(seen[w] > 100);
    buf_free(&cur);
    buf_free(&after);
}

/* ---- kv_apply_put / kv_apply_del ---------------------------------------- */

struct idx_check {
    fx *f;
    const kv_space *sp;
    uint32_t part;
    uint64_t objects;
    uint64_t entries;
    const void *want_key;
    size_t want_klen;
    int found;
};

static int count_key_cb(void *arg, const void *key, size_t klen)
{
    struct idx_check *x = arg;
    x->entries++;
    if (x->want_key && klen == x->want_klen && !memcmp(key, x->want_key, klen)) x->found++;
    return 0;
}

/* For one object: each indexed attribute has an entry at its image. */
static int check_obj_cb(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct idx_check *x = arg;
    const space_schema *s = x->sp->schema;
    obj_value v[SPACE_MAX_ATTRS];
    assert_int_equal(obj_decode(s, val, vlen, v), 0);
    x->objects++;
    for (uint32_t a = 0; a < s->nattrs; a++) {
        if (!s->attrs[a].indexed) continue;
        buf img;
        buf_init(&img);
        obj_index_key(&v[a], &img);
        struct idx_check y = {.want_key = key, .want_klen = klen};
        assert_int_equal(store_index_scan(&x->f->t, x->sp->id, x->part, (uint16_t)a, img.len,
                                          img.data, img.data, count_key_cb, &y),
                         0);
        assert_int_equal(y.found, 1);
        buf_free(&img);
    }
    return 0;
}

/* store.h invariant 1 for every partition of sp: every object has exactly
 * its entries and there are no others. Returns the number of objects. */
static uint64_t check_indexes(fx *f, const kv_space *sp)
{
    const space_schema *s = sp->schema;
    uint64_t total = 0;
    for (uint32_t part = 0; part < s->partitions; part++) {
        struct idx_check x = {.f = f, .sp = sp, .part = part};
        assert_int_equal(store_scan(&f->t, sp->id, part, check_obj_cb, &x), 0);
        for (uint32_t a = 0; a < s->nattrs; a++) {
            if (!s->attrs[a].indexed) continue;
            struct idx_check y = {0};
            assert_int_equal(store_index_scan(&f->t, sp->id, part, (uint16_t)a,
                                              obj_index_width(s->attrs[a].type), NULL, NULL,
                                              count_key_cb, &y),
                             0);
            assert_int_equal(y.entries, x.objects);
        }
        total += x.objects;
    }
    return total;
}

/* One replicated entry: a key and its final state. */
typedef struct entry {
    char key[16];
    bool del;
    buf value;
} entry;

static void apply_entry(fx *f, const kv_space *sp, const cmap_space *cs, const entry *e)
{
    uint32_t part = cmap_partition_of(cs, e->key, strlen(e->key));
    if (e->del)
        assert_int_equal(kv_apply_del(&f->t, sp, part, e->key, strlen(e->key)), 0);
    else
        assert_int_equal(
            kv_apply_put(&f->t, sp, part, e->key, strlen(e->key), e->value.data, e->value.len),
            0);
}

/* A primary's history: random commands computed with kv_compute against the
 * newest state (the store of the phonebook space, which the primary applies
 * to as it goes), recorded as final states. */
static entry *make_history(fx *f, int n, int nkeys)
{
    entry *h = calloc((size_t)n, sizeof *h);
    assert_non_null(h);
    buf cur;
    buf_init(&cur);
    for (int i = 0; i < n;) {
        const char *argv[MAX_ARGS];
        char vals[4][64], key[16];
        snprintf(key, sizeof key, "u%03d", (int)(rnd() % (uint64_t)nkeys));
        int argc = rand_point(argv, vals, "phonebook", key);
        kv_op *op = parse_words(f, argc, argv);
        bool exists = stored(f, f->sp, op->part, key, &cur);
        kv_result r;
        assert_int_equal(kv_compute(op, cur.data, cur.len, exists, &r), 0);
        if (r.write != KV_W_NONE) {
            entry *e = &h[i++];
            snprintf(e->key, sizeof e->key, "%s", key);
            e->del = r.write == KV_W_DEL;
            buf_init(&e->value);
            buf_append(&e->value, r.value.data, r.value.len);
            apply_entry(f, f->sp, f->cs, e);
        }
        kv_result_free(&r);
        kv_op_free(op);
    }
    buf_free(&cur);
    return h;
}

static void free_history(entry *h, int n)
{
    for (int i = 0; i < n; i++)
        buf_free(&h[i].value);
    free(h);
}

/* A backup applying the primary's entries to the twin space keeps every
 * index consistent, and searches over it agree with the scanning space. */
static void test_apply_index_consistency(void **state)
{
    fx *f = *state;
    rng_state = 0x13198a2e03707344ULL;
    int n = 1500;
    entry *h = make_history(f, n, NKEYS);
    /* The primary (phonebook) applied as it went; the backup is a fresh
     * store of the same space: drop and re-apply in order, then apply the
     * same entries to the unindexed twin. */
    assert_int_equal(store_drop_space(&f->t, f->sp->id), 0);
    assert_int_equal(check_indexes(f, f->sp), 0);
    for (int i = 0; i < n; i++) {
        apply_entry(f, f->sp, f->cs, &h[i]);
        apply_entry(f, f->sp_plain, f->cs_plain, &h[i]);
        if (i % 250 == 0) check_indexes(f, f->sp);
    }
    uint64_t nobj = check_indexes(f, f->sp);
    assert_true(nobj > NKEYS / 2 && nobj < NKEYS);
    shadow *sh = calloc(NKEYS, sizeof *sh);
    assert_non_null(sh);
    load_shadow(f, sh); /* also checks the twin holds the same objects */
    check_random_searches(f, sh);
    /* Applying never moved the standalone write counters. */
    for (uint32_t part = 0; part < f->sp->schema->partitions; part++) {
        store_part_meta m;
        assert_int_equal(store_part_meta_get(&f->t, f->sp_plain->id, part, &m), 0);
        assert_int_equal(m.seq, 0);
    }
    assert_int_equal(store_txn_commit(&f->t), 0);
    assert_int_equal(store_txn_begin(f->st, false, &f->t), 0);
    assert_int_equal(check_indexes(f, f->sp), nobj);
    check_random_searches(f, sh);
    free(sh);
    free_history(h, n);
}

/* Replaying entries (a retransmission, a restart that re-applies the log
 * after its applied point) changes nothing. */
static void test_apply_idempotent(void **state)
{
    fx *f = *state;
    rng_state = 0xa4093822299f31d0ULL;
    int n = 600;
    entry *h = make_history(f, n, 60);
    for (int i = 0; i < n; i++) /* the twin space mirrors the primary */
        apply_entry(f, f->sp_plain, f->cs_plain, &h[i]);
    shadow *before = calloc(NKEYS, sizeof *before), *after = calloc(NKEYS, sizeof *after);
    assert_non_null(before);
    assert_non_null(after);
    uint64_t nobj = check_indexes(f, f->sp);
    load_shadow(f, before);

    /* Each entry twice in a row, on a fresh copy: same final state. */
    assert_int_equal(store_drop_space(&f->t, f->sp->id), 0);
    assert_int_equal(store_drop_space(&f->t, f->sp_plain->id), 0);
    for (int i = 0; i < n; i++)
        for (int twice = 0; twice < 2; twice++) {
            apply_entry(f, f->sp, f->cs, &h[i]);
            apply_entry(f, f->sp_plain, f->cs_plain, &h[i]);
        }
    assert_int_equal(check_indexes(f, f->sp), nobj);
    load_shadow(f, after);
    assert_memory_equal(before, after, NKEYS * sizeof *before);

    /* The last third again, after everything was applied. */
    for (int i = 2 * n / 3; i < n; i++) {
        apply_entry(f, f->sp, f->cs, &h[i]);
        apply_entry(f, f->sp_plain, f->cs_plain, &h[i]);
    }
    assert_int_equal(check_indexes(f, f->sp), nobj);
    load_shadow(f, after);
    assert_memory_equal(before, after, NKEYS * sizeof *before);
    check_random_searches(f, after);

    /* Explicitly: a put of the current state and a del of nothing. */
    buf enc;
    buf_init(&enc);
    enc_of(f, &enc, "same", "", 3, 0);
    uint32_t part = cmap_partition_of(f->cs, "solo", 4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(kv_apply_put(&f->t, f->sp, part, "solo", 4, enc.data, enc.len), 0);
    expect_obj(f, "solo", "same", "", 3, "0");
    EXPECT(f, ":1\r\n", "COUNT", "phonebook", "first", "=", "same");
    for (int i = 0; i < 3; i++)
        assert_int_equal(kv_apply_del(&f->t, f->sp, part, "solo", 4), 0);
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "solo");
    EXPECT(f, ":0\r\n", "COUNT", "phonebook", "first", "=", "same");
    assert_int_equal(check_indexes(f, f->sp), nobj);
    buf_free(&enc);
    free(before);
    free(after);
    free_history(h, n);
}

static void test_apply_errors(void **state)
{
    fx *f = *state;
    buf enc;
    buf_init(&enc);
    enc_of(f, &enc, "ok", "", 1, 0);
    uint32_t part = cmap_partition_of(f->cs, "k", 1);
    EXPECT(f, "+OK\r\n", "PUT", "phonebook", "k", "first", "before");

    /* A value that is not an object of this space: EINVAL, nothing written,
     * the transaction still works. */
    assert_int_equal(kv_apply_put(&f->t, f->sp, part, "k", 1, enc.data, enc.len - 1), EINVAL);
    assert_int_equal(kv_apply_put(&f->t, f->sp, part, "k", 1, "", 0), EINVAL);
    assert_int_equal(kv_apply_put(&f->t, f->sp, part, "new", 3, "\x01\x00\x01\x01", 4), EINVAL);
    expect_obj(f, "k", "before", "", 0, "0");
    EXPECT(f, "$-1\r\n", "GET", "phonebook", "new");
    assert_int_equal(check_indexes(f, f->sp), 1);
    assert_int_equal(kv_apply_put(&f->t, f->sp, part, "k", 1, enc.data, enc.len), 0);
    expect_obj(f, "k", "ok", "", 1, "0");

    /* A key beyond the store's limit. */
    char big[STORE_MAX_KEY + 1];
    memset(big, 'x', sizeof big);
    assert_int_equal(kv_apply_put(&f->t, f->sp, 0, big, sizeof big, enc.data, enc.len),
                     MDB_BAD_VALSIZE);
    assert_int_equal(kv_apply_del(&f->t, f->sp, 0, big, sizeof big), MDB_BAD_VALSIZE);
    assert_int_equal(kv_apply_put(&f->t, f->sp, 0, big, STORE_MAX_KEY, enc.data, enc.len), 0);
    assert_int_equal(kv_apply_del(&f->t, f->sp, 0, big, STORE_MAX_KEY), 0);
    assert_int_equal(store_txn_commit(&f->t), 0);

    /* A stored object that does not decode (written raw into the unindexed
     * space): both refuse with MDB_CORRUPTED and change nothing. */
    assert_int_equal(store_txn_begin(f->st, true, &f->t), 0);
    obj_value zero[4];
    obj_zero(f->sp_plain->schema, zero);
    uint32_t pp = cmap_partition_of(f->cs_plain, "bad", 3);
    assert_int_equal(store_obj_put(&f->t, f->sp_plain->schema, f->sp_plain->id, pp, "bad", 3, NULL,
                                   zero, "junk", 4),
                     0);
    assert_int_equal(kv_apply_put(&f->t, f->sp_plain, pp, "bad", 3, enc.data, enc.len),
                     MDB_CORRUPTED);
    assert_int_equal(kv_apply_del(&f->t, f->sp_plain, pp, "bad", 3), MDB_CORRUPTED);
    const void *val;
    size_t vlen;
    assert_int_equal(store_obj_get(&f->t, f->sp_plain->id, pp, "bad", 3, &val, &vlen), 0);
    assert_int_equal(vlen, 4);
    assert_memory_equal(val, "junk", 4);
    /* kv_exec reports the same. */
    kv_op *op = OP(f, "GET", "plain", "bad");
    buf rep;
    buf_init(&rep);
    assert_int_equal(kv_exec(&f->t, op, &rep), MDB_CORRUPTED);
    assert_int_equal(rep.len, 0);
    kv_op_free(op);
    op = OP(f, "PUT", "plain", "bad", "first", "x");
    assert_int_equal(kv_exec(&f->t, op, &rep), MDB_CORRUPTED);
    assert_int_equal(rep.len, 0);
    kv_op_free(op);
    buf_free(&rep);
    store_txn_abort(&f->t);

    /* An object whose index entries are missing (written into the indexed
     * space through the unindexed schema): deleting it is corruption. */
    assert_int_equal(store_txn_begin(f->st, true, &f->t), 0);
    assert_int_equal(store_obj_put(&f->t, f->sp_plain->schema, f->sp->id, part, "noidx", 5, NULL,
                                   zero, enc.data, enc.len),
                     0);
    assert_int_equal(kv_apply_del(&f->t, f->sp, part, "noidx", 5), MDB_CORRUPTED);
    store_txn_abort(&f->t);
    assert_int_equal(store_txn_begin(f->st, true, &f->t), 0);
    buf_free(&enc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cput, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_operators, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_long_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_random_agrees, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuse_arg_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuse_attributes_and_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuse_long_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kind_of, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_op_holds_space, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compute_put_get_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compute_cput_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compute_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compute_is_pure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compute_matches_exec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_index_consistency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
