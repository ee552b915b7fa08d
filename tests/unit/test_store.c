/* Unit tests for src/store.c: the LMDB environment holding objects, secondary
 * indexes and metadata.
 *
 * Every test opens a store in its own fresh directory (mkdtemp under /tmp)
 * and removes it afterwards. Covered: open/close/reopen durability, object
 * put/get/del, index maintenance (store.h invariant 1: exactly one entry per
 * object and indexed attribute, holding its current image), range scans over
 * int, float and string images (including strings that share a 32-byte
 * prefix), partition and space isolation of scans, store_drop_space, metadata
 * and per-partition metadata, key size limits, aborted transactions, the sync
 * policy names, opening a path that is not a directory, store_count, and the
 * corruption errors reported when callers pass stale old values.
 *
 * Replication state: the partition log (put/get/overwrite, scans in seq
 * order from every point, deletes from/through at seq 0, 1, between entries
 * and UINT64_MAX, bounds), replication metadata and its scan, the client
 * table (order by client id, replacement, empty and 64 KiB results),
 * store_part_clear and store_drop_space over every database, durability
 * across reopen and abort. Every delete and clear is checked against the
 * neighbouring partitions (adjacent ids, byte-reversed ids, both ends of the
 * key space), and every versioned record against garbage (MDB_CORRUPTED).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <cmocka.h>

#include "obj.h"
#include "store.h"

/* ---- fixture ------------------------------------------------------------ */

#define MAP_SIZE (64u << 20)

/* Schema used throughout: s, i, f are indexed; u is not.
 * Attribute numbers: s = 0, i = 1, f = 2, u = 3. */
static const char *const SCHEMA = "space t\n"
                                  "key k\n"
                                  "attributes s, int i, float f, u\n"
                                  "subspace s, i, f\n"
                                  "create 4 partitions\n";
enum { A_S = 0, A_I = 1, A_F = 2, A_U = 3 };

typedef struct fx {
    char dir[64];
    store *s;
    space_schema *sc;
} fx;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void open_store(fx *f, int policy)
{
    char err[256] = "";
    if (store_open(&f->s, f->dir, policy, MAP_SIZE, err, sizeof err))
        fail_msg("store_open: %s", err);
    assert_non_null(f->s);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/keel-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    open_store(f, STORE_SYNC_NONE);
    char err[256];
    if (space_parse(SCHEMA, strlen(SCHEMA), &f->sc, err, sizeof err)) fail_msg("%s", err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    store_close(f->s);
    space_free(f->sc);
    rm_tree(f->dir);
    free(f);
    return 0;
}

static void begin(fx *f, bool write, store_txn *t)
{
    assert_int_equal(store_txn_begin(f->s, write, t), 0);
}

static void commit(store_txn *t)
{
    assert_int_equal(store_txn_commit(t), 0);
}

/* ---- values and objects ------------------------------------------------- */

static obj_value sv(const char *p)
{
    obj_value v = {.type = SPACE_STRING};
    v.u.s.p = p;
    v.u.s.len = strlen(p);
    return v;
}

static obj_value iv(int64_t i)
{
    obj_value v = {.type = SPACE_INT};
    v.u.i = i;
    return v;
}

static obj_value fv(double d)
{
    obj_value v = {.type = SPACE_FLOAT};
    v.u.f = d;
    return v;
}

static void mkvals(obj_value *v, const char *s, int64_t i, double d, const char *u)
{
    v[A_S] = sv(s);
    v[A_I] = iv(i);
    v[A_F] = fv(d);
    v[A_U] = sv(u);
}

/* Encodes newv and stores it under key; returns store_obj_put's result. */
static int put_rc(fx *f, store_txn *t, uint32_t space, uint32_t part, const char *key, size_t klen,
                  const obj_value *oldv, const obj_value *newv)
{
    buf enc;
    buf_init(&enc);
    obj_encode(f->sc, newv, &enc);
    int rc = store_obj_put(t, f->sc, space, part, key, klen, oldv, newv, enc.data, enc.len);
    buf_free(&enc);
    return rc;
}

static void put(fx *f, store_txn *t, uint32_t space, uint32_t part, const char *key,
                const obj_value *oldv, const obj_value *newv)
{
    assert_int_equal(put_rc(f, t, space, part, key, strlen(key), oldv, newv), 0);
}

/* Reads key and checks it decodes to exactly want. */
static void expect_obj(fx *f, store_txn *t, uint32_t space, uint32_t part, const char *key,
                       const obj_value *want)
{
    const void *val;
    size_t vlen;
    assert_int_equal(store_obj_get(t, space, part, key, strlen(key), &val, &vlen), 0);
    buf enc;
    buf_init(&enc);
    obj_encode(f->sc, want, &enc);
    assert_int_equal(vlen, enc.len);
    assert_memory_equal(val, enc.data, enc.len);
    buf_free(&enc);
}

static void expect_absent(store_txn *t, uint32_t space, uint32_t part, const char *key)
{
    const void *val = NULL;
    size_t vlen = 0;
    assert_int_equal(store_obj_get(t, space, part, key, strlen(key), &val, &vlen), MDB_NOTFOUND);
}

/* ---- scan collectors ---------------------------------------------------- */

/* Collects keys as "k1,k2,...," (stop after `stop_after` keys if nonzero). */
typedef struct collect {
    buf out;
    int n;
    int stop_after;
} collect;

static int key_cb(void *arg, const void *key, size_t klen)
{
    collect *c = arg;
    buf_append(&c->out, key, klen);
    buf_putc(&c->out, ',');
    c->n++;
    return c->stop_after && c->n >= c->stop_after ? 1 : 0;
}

static int obj_cb(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    assert_non_null(val);
    assert_true(vlen > 0);
    return key_cb(arg, key, klen);
}

static void collect_done(collect *c)
{
    buf_putc(&c->out, '\0');
}

/* Index scan of attr with images of lo/hi (NULL: unbounded); checks the
 * collected keys equal want. */
static void expect_iscan(store_txn *t, uint32_t space, uint32_t part, uint16_t attr,
                         space_type type, const obj_value *lo, const obj_value *hi,
                         const char *want)
{
    buf blo, bhi;
    buf_init(&blo);
    buf_init(&bhi);
    if (lo) obj_index_key(lo, &blo);
    if (hi) obj_index_key(hi, &bhi);
    collect c = {0};
    buf_init(&c.out);
    size_t width = obj_index_width(type);
    assert_int_equal(store_index_scan(t, space, part, attr, width, lo ? blo.data : NULL,
                                      hi ? bhi.data : NULL, key_cb, &c),
                     0);
    collect_done(&c);
    assert_string_equal(c.out.data, want);
    buf_free(&c.out);
    buf_free(&blo);
    buf_free(&bhi);
}

static void expect_scan(store_txn *t, uint32_t space, uint32_t part, const char *want)
{
    collect c = {0};
    buf_init(&c.out);
    assert_int_equal(store_scan(t, space, part, obj_cb, &c), 0);
    collect_done(&c);
    assert_string_equal(c.out.data, want);
    buf_free(&c.out);
}

static uint64_t count(store_txn *t, uint32_t space, uint32_t part)
{
    uint64_t n = 12345;
    assert_int_equal(store_count(t, space, part, &n), 0);
    return n;
}

/* ---- open / close ------------------------------------------------------- */

static void test_reopen_keeps_data(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v[4];
    mkvals(v, "alice", -7, 2.5, "not indexed");
    begin(f, true, &t);
    put(f, &t, 1, 2, "k1", NULL, v);
    assert_int_equal(store_meta_put(&t, "cmap", "\x01\x00\x02", 3), 0);
    store_part_meta pm = {.seq = 41, .epoch = 3};
    assert_int_equal(store_part_meta_put(&t, 1, 2, &pm), 0);
    commit(&t);
    assert_int_equal(store_sync(f->s), 0);

    store_close(f->s);
    f->s = NULL;
    open_store(f, STORE_SYNC_ALWAYS);
    assert_int_equal(store_sync_policy(f->s), STORE_SYNC_ALWAYS);

    begin(f, false, &t);
    expect_obj(f, &t, 1, 2, "k1", v);
    const void *val;
    size_t vlen;
    assert_int_equal(store_meta_get(&t, "cmap", &val, &vlen), 0);
    assert_int_equal(vlen, 3);
    assert_memory_equal(val, "\x01\x00\x02", 3);
    store_part_meta got;
    assert_int_equal(store_part_meta_get(&t, 1, 2, &got), 0);
    assert_int_equal(got.seq, 41);
    assert_int_equal(got.epoch, 3);
    obj_value a = sv("alice");
    expect_iscan(&t, 1, 2, A_S, SPACE_STRING, &a, &a, "k1,");
    store_txn_abort(&t);
}

static void test_open_regular_file_fails(void **state)
{
    fx *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/plainfile", f->dir);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "x", 1), 1);
    close(fd);

    store *s = (store *)(uintptr_t)1; /* must be reset to NULL */
    char err[256] = "";
    assert_int_equal(store_open(&s, path, STORE_SYNC_BATCH, MAP_SIZE, err, sizeof err), -1);
    assert_null(s);
    assert_non_null(strstr(err, "cannot open storage in"));
    assert_non_null(strstr(err, path));

    /* A directory below a regular file cannot even be created. */
    char sub[160];
    snprintf(sub, sizeof sub, "%s/sub", path);
    err[0] = '\0';
    s = (store *)(uintptr_t)1;
    assert_int_equal(store_open(&s, sub, STORE_SYNC_BATCH, MAP_SIZE, err, sizeof err), -1);
    assert_null(s);
    assert_non_null(strstr(err, "cannot create data directory"));
    assert_non_null(strstr(err, sub));
    assert_non_null(strstr(err, strerror(ENOTDIR)));
}

static void test_sync_names(void **state)
{
    (void)state;
    assert_int_equal(store_sync_parse("always"), STORE_SYNC_ALWAYS);
    assert_int_equal(store_sync_parse("batch"), STORE_SYNC_BATCH);
    assert_int_equal(store_sync_parse("none"), STORE_SYNC_NONE);
    assert_int_equal(store_sync_parse(""), -1);
    assert_int_equal(store_sync_parse("Always"), -1);
    assert_int_equal(store_sync_parse("alwaysx"), -1);
    assert_int_equal(store_sync_parse("batc"), -1);
    assert_string_equal(store_sync_name(STORE_SYNC_ALWAYS), "always");
    assert_string_equal(store_sync_name(STORE_SYNC_BATCH), "batch");
    assert_string_equal(store_sync_name(STORE_SYNC_NONE), "none");
    assert_string_equal(store_sync_name(-1), "?");
    assert_string_equal(store_sync_name(3), "?");
    for (int p = STORE_SYNC_ALWAYS; p <= STORE_SYNC_NONE; p++)
        assert_int_equal(store_sync_parse(store_sync_name(p)), p);
}

static void test_sync_policy_and_sync(void **state)
{
    fx *f = *state;
    assert_int_equal(store_sync_policy(f->s), STORE_SYNC_NONE);
    assert_int_equal(store_sync(f->s), 0);
    store_close(f->s);
    f->s = NULL;
    open_store(f, STORE_SYNC_BATCH);
    assert_int_equal(store_sync_policy(f->s), STORE_SYNC_BATCH);
    store_close(NULL); /* no-op */
}

/* ---- objects ------------------------------------------------------------ */

static void test_obj_put_get_del(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v1[4], v2[4];
    mkvals(v1, "a", 1, 1.0, "x");
    mkvals(v2, "b", 2, 2.0, "y");
    begin(f, true, &t);
    expect_absent(&t, 1, 0, "k");
    put(f, &t, 1, 0, "k", NULL, v1);
    expect_obj(f, &t, 1, 0, "k", v1);
    /* Same key in another partition or space is another object. */
    expect_absent(&t, 1, 1, "k");
    expect_absent(&t, 2, 0, "k");
    put(f, &t, 1, 0, "k", v1, v2);
    expect_obj(f, &t, 1, 0, "k", v2);
    commit(&t);

    begin(f, true, &t);
    expect_obj(f, &t, 1, 0, "k", v2);
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, "k", 1, v2), 0);
    expect_absent(&t, 1, 0, "k");
    /* Deleting again: nothing there, no index entries either. */
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, "k", 1, v2), MDB_CORRUPTED);
    store_txn_abort(&t);

    /* The failed transaction was aborted: the object is still there. */
    begin(f, true, &t);
    expect_obj(f, &t, 1, 0, "k", v2);
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, "k", 1, v2), 0);
    commit(&t);
    begin(f, false, &t);
    expect_absent(&t, 1, 0, "k");
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, NULL, NULL, "");
    store_txn_abort(&t);

    /* An empty key and a key with zero bytes are ordinary keys. */
    begin(f, true, &t);
    assert_int_equal(put_rc(f, &t, 1, 0, "", 0, NULL, v1), 0);
    assert_int_equal(put_rc(f, &t, 1, 0, "a\0b", 3, NULL, v2), 0);
    const void *val;
    size_t vlen;
    assert_int_equal(store_obj_get(&t, 1, 0, "", 0, &val, &vlen), 0);
    assert_int_equal(store_obj_get(&t, 1, 0, "a\0b", 3, &val, &vlen), 0);
    assert_int_equal(store_obj_get(&t, 1, 0, "a", 1, &val, &vlen), MDB_NOTFOUND);
    assert_int_equal(count(&t, 1, 0), 2);
    commit(&t);
}

static void test_index_follows_updates(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v1[4], v2[4], v3[4];
    mkvals(v1, "alice", 10, 1.5, "u1");
    begin(f, true, &t);
    put(f, &t, 1, 0, "k", NULL, v1);
    obj_value s_alice = sv("alice"), s_bob = sv("bob"), i10 = iv(10), i20 = iv(20), f15 = fv(1.5),
              f25 = fv(-2.5);
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, &s_alice, &s_alice, "k,");
    expect_iscan(&t, 1, 0, A_I, SPACE_INT, &i10, &i10, "k,");
    expect_iscan(&t, 1, 0, A_F, SPACE_FLOAT, &f15, &f15, "k,");
    /* u is not indexed: no entries at all under attribute 3. */
    expect_iscan(&t, 1, 0, A_U, SPACE_STRING, NULL, NULL, "");

    /* Change s only. */
    mkvals(v2, "bob", 10, 1.5, "u1");
    put(f, &t, 1, 0, "k", v1, v2);
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, &s_alice, &s_alice, "");
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, &s_bob, &s_bob, "k,");
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, NULL, NULL, "k,");
    expect_iscan(&t, 1, 0, A_I, SPACE_INT, NULL, NULL, "k,");

    /* Change i and f and the non-indexed u. */
    mkvals(v3, "bob", 20, -2.5, "u2");
    put(f, &t, 1, 0, "k", v2, v3);
    commit(&t);

    begin(f, false, &t);
    expect_iscan(&t, 1, 0, A_I, SPACE_INT, &i10, &i10, "");
    expect_iscan(&t, 1, 0, A_I, SPACE_INT, &i20, &i20, "k,");
    expect_iscan(&t, 1, 0, A_F, SPACE_FLOAT, &f15, &f15, "");
    expect_iscan(&t, 1, 0, A_F, SPACE_FLOAT, &f25, &f25, "k,");
    /* Exactly one entry per indexed attribute. */
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, NULL, NULL, "k,");
    expect_iscan(&t, 1, 0, A_I, SPACE_INT, NULL, NULL, "k,");
    expect_iscan(&t, 1, 0, A_F, SPACE_FLOAT, NULL, NULL, "k,");
    expect_iscan(&t, 1, 0, A_U, SPACE_STRING, NULL, NULL, "");
    expect_obj(f, &t, 1, 0, "k", v3);
    store_txn_abort(&t);

    /* Long strings that share the 32-byte image: the entry stays valid. */
    static const char long1[] = "0123456789abcdef0123456789abcdef-one";
    static const char long2[] = "0123456789abcdef0123456789abcdef-two";
    obj_value v4[4], v5[4];
    mkvals(v4, long1, 20, -2.5, "u2");
    mkvals(v5, long2, 20, -2.5, "u2");
    begin(f, true, &t);
    put(f, &t, 1, 0, "k", v3, v4);
    put(f, &t, 1, 0, "k", v4, v5);
    obj_value l2 = sv(long2);
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, &l2, &l2, "k,");
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, NULL, NULL, "k,");
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, &s_bob, &s_bob, "");
    /* Delete removes every entry. */
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, "k", 1, v5), 0);
    commit(&t);
    begin(f, false, &t);
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, NULL, NULL, "");
    expect_iscan(&t, 1, 0, A_I, SPACE_INT, NULL, NULL, "");
    expect_iscan(&t, 1, 0, A_F, SPACE_FLOAT, NULL, NULL, "");
    expect_absent(&t, 1, 0, "k");
    store_txn_abort(&t);
}

/* Old values that do not match the stored index entries are corruption
 * (store.h invariant 1 would be broken), reported as MDB_CORRUPTED. */
static void test_stale_old_values_are_corruption(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v1[4], wrong[4], v2[4];
    mkvals(v1, "a", 1, 1.0, "");
    mkvals(wrong, "zzz", 1, 1.0, "");
    mkvals(v2, "b", 1, 1.0, "");
    begin(f, true, &t);
    put(f, &t, 1, 0, "k", NULL, v1);
    commit(&t);

    begin(f, true, &t);
    assert_int_equal(put_rc(f, &t, 1, 0, "k", 1, wrong, v2), MDB_CORRUPTED);
    store_txn_abort(&t);
    begin(f, true, &t);
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, "k", 1, wrong), MDB_CORRUPTED);
    store_txn_abort(&t);

    begin(f, false, &t);
    expect_obj(f, &t, 1, 0, "k", v1);
    obj_value a = sv("a");
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, &a, &a, "k,");
    store_txn_abort(&t);
}

/* ---- range scans -------------------------------------------------------- */

static void test_int_ranges(void **state)
{
    fx *f = *state;
    store_txn t;
    static const struct {
        const char *key;
        int64_t v;
    } rows[] = {{"min", INT64_MIN}, {"m100", -100}, {"m5", -5}, {"m1", -1},
                {"z0", 0},          {"p1", 1},      {"p5", 5},  {"p100", 100},
                {"max", INT64_MAX}, {"p5b", 5},     {"m5b", -5}};
    begin(f, true, &t);
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        obj_value v[4];
        mkvals(v, "", rows[r].v, 0.0, "");
        put(f, &t, 3, 1, rows[r].key, NULL, v);
    }
    commit(&t);

    begin(f, false, &t);
    obj_value m5 = iv(-5), p5 = iv(5), m1 = iv(-1), z = iv(0), lo = iv(INT64_MIN),
              hi = iv(INT64_MAX), m6 = iv(-6), p6 = iv(6), big = iv(1000);
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, NULL, NULL, "min,m100,m5,m5b,m1,z0,p1,p5,p5b,p100,max,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &m5, &p5, "m5,m5b,m1,z0,p1,p5,p5b,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &m6, &p6, "m5,m5b,m1,z0,p1,p5,p5b,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &m1, &m1, "m1,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, NULL, &m5, "min,m100,m5,m5b,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &z, NULL, "z0,p1,p5,p5b,p100,max,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &lo, &lo, "min,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &hi, &hi, "max,");
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &p6, &m6, ""); /* empty range */
    expect_iscan(&t, 3, 1, A_I, SPACE_INT, &big, &big, "");
    /* The callback can stop the scan. */
    collect c = {.stop_after = 2};
    buf_init(&c.out);
    assert_int_equal(store_index_scan(&t, 3, 1, A_I, 8, NULL, NULL, key_cb, &c), 0);
    collect_done(&c);
    assert_string_equal(c.out.data, "min,m100,");
    buf_free(&c.out);
    /* Other partitions and attributes see none of it. */
    expect_iscan(&t, 3, 0, A_I, SPACE_INT, NULL, NULL, "");
    expect_iscan(&t, 3, 2, A_I, SPACE_INT, NULL, NULL, "");
    expect_iscan(&t, 2, 1, A_I, SPACE_INT, NULL, NULL, "");
    expect_iscan(&t, 4, 1, A_I, SPACE_INT, NULL, NULL, "");
    /* An image wider than any index image is refused. */
    unsigned char wide[65] = {0};
    assert_int_equal(store_index_scan(&t, 3, 1, A_I, sizeof wide, wide, NULL, key_cb, &c), EINVAL);
    store_txn_abort(&t);
}

static void test_float_ranges(void **state)
{
    fx *f = *state;
    store_txn t;
    static const struct {
        const char *key;
        double v;
    } rows[] = {{"a", -1e300}, {"b", -2.5}, {"c", -5e-324}, {"d", 0.0},  {"e", -0.0},
                {"f", 5e-324}, {"g", 0.5},  {"h", 3.25},    {"i", 1e300}};
    begin(f, true, &t);
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        obj_value v[4];
        mkvals(v, "", 0, rows[r].v, "");
        put(f, &t, 1, 3, rows[r].key, NULL, v);
    }
    commit(&t);

    begin(f, false, &t);
    obj_value m25 = fv(-2.5), p05 = fv(0.5), z = fv(0.0), nz = fv(-0.0), m1 = fv(-1.0),
              p1 = fv(1.0), huge = fv(1e308);
    /* -0.0 and 0.0 share one image; within it keys are in key order. */
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, NULL, NULL, "a,b,c,d,e,f,g,h,i,");
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, &m25, &p05, "b,c,d,e,f,g,");
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, &z, &z, "d,e,");
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, &nz, &nz, "d,e,");
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, &m1, &p1, "c,d,e,f,g,");
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, NULL, &m1, "a,b,");
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, &p1, NULL, "h,i,");
    expect_iscan(&t, 1, 3, A_F, SPACE_FLOAT, &huge, NULL, "");
    store_txn_abort(&t);
}

static void test_string_ranges(void **state)
{
    fx *f = *state;
    store_txn t;
    /* Two strings longer than 32 bytes sharing their first 32 bytes, and one
     * that is exactly the 32-byte prefix. */
    static const char p32[] = "prefixprefixprefixprefixprefix32";
    static const char long1[] = "prefixprefixprefixprefixprefix32-alpha";
    static const char long2[] = "prefixprefixprefixprefixprefix32-beta";
    static const struct {
        const char *key;
        const char *v;
    } rows[] = {{"k1", "a"},   {"k2", "ab"},  {"k3", "abc"}, {"k4", "b"},      {"k5", ""},
                {"k6", long1}, {"k7", long2}, {"k8", p32},   {"k9", "prefix"}, {"ka", "zz"}};
    _Static_assert(sizeof p32 - 1 == OBJ_INDEX_STRING_PREFIX, "32-byte prefix");
    begin(f, true, &t);
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        obj_value v[4];
        mkvals(v, rows[r].v, 0, 0.0, "");
        put(f, &t, 2, 0, rows[r].key, NULL, v);
    }
    commit(&t);

    begin(f, false, &t);
    obj_value ab = sv("ab"), b = sv("b"), l1 = sv(long1), l2 = sv(long2), pre = sv(p32),
              empty = sv(""), a = sv("a"), y = sv("y");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, NULL, NULL, "k5,k1,k2,k3,k4,k9,k6,k7,k8,ka,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &ab, &b, "k2,k3,k4,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &a, &a, "k1,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &empty, &empty, "k5,");
    /* Both long strings (and the exact prefix) come back for either value:
     * the index is not injective past 32 bytes, the caller refilters. */
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &l1, &l1, "k6,k7,k8,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &l2, &l2, "k6,k7,k8,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &pre, &pre, "k6,k7,k8,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &l2, NULL, "k6,k7,k8,ka,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, NULL, &l1, "k5,k1,k2,k3,k4,k9,k6,k7,k8,");
    expect_iscan(&t, 2, 0, A_S, SPACE_STRING, &y, NULL, "ka,");
    store_txn_abort(&t);
}

/* ---- scans and isolation ------------------------------------------------ */

static void test_scan_one_partition(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v[4];
    mkvals(v, "s", 1, 1.0, "u");
    /* Keys inserted out of order, in several spaces and partitions, including
     * space and partition ids whose bytes differ only in the high byte. */
    static const char *const keys[] = {"m", "c", "x", "a", "cc", "b"};
    begin(f, true, &t);
    for (size_t i = 0; i < 6; i++)
        put(f, &t, 5, 1, keys[i], NULL, v);
    put(f, &t, 5, 0, "p0", NULL, v);
    put(f, &t, 5, 2, "p2", NULL, v);
    put(f, &t, 5, 0x01000001, "phigh", NULL, v);
    put(f, &t, 4, 1, "s4", NULL, v);
    put(f, &t, 6, 1, "s6", NULL, v);
    put(f, &t, 0x01000005, 1, "shigh", NULL, v);
    commit(&t);

    begin(f, false, &t);
    expect_scan(&t, 5, 1, "a,b,c,cc,m,x,");
    expect_scan(&t, 5, 0, "p0,");
    expect_scan(&t, 5, 2, "p2,");
    expect_scan(&t, 5, 3, "");
    expect_scan(&t, 5, 0x01000001, "phigh,");
    expect_scan(&t, 4, 1, "s4,");
    expect_scan(&t, 6, 1, "s6,");
    expect_scan(&t, 0x01000005, 1, "shigh,");
    expect_scan(&t, 7, 0, "");
    assert_int_equal(count(&t, 5, 1), 6);
    assert_int_equal(count(&t, 5, 0), 1);
    assert_int_equal(count(&t, 5, 3), 0);
    assert_int_equal(count(&t, 9, 9), 0);
    /* A callback that returns 1 stops the scan without an error. */
    collect c = {.stop_after = 3};
    buf_init(&c.out);
    assert_int_equal(store_scan(&t, 5, 1, obj_cb, &c), 0);
    collect_done(&c);
    assert_string_equal(c.out.data, "a,b,c,");
    buf_free(&c.out);
    obj_value s = sv("s");
    expect_iscan(&t, 5, 1, A_S, SPACE_STRING, &s, &s, "a,b,c,cc,m,x,");
    store_txn_abort(&t);
}

static void test_count(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v[4];
    mkvals(v, "", 0, 0.0, "");
    begin(f, true, &t);
    assert_int_equal(count(&t, 1, 0), 0);
    char key[16];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "key%03d", i);
        put(f, &t, 1, (uint32_t)(i % 3), key, NULL, v);
    }
    assert_int_equal(count(&t, 1, 0), 34);
    assert_int_equal(count(&t, 1, 1), 33);
    assert_int_equal(count(&t, 1, 2), 33);
    /* Overwriting does not change the count; deleting does. */
    put(f, &t, 1, 0, "key000", v, v);
    assert_int_equal(count(&t, 1, 0), 34);
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, "key000", 6, v), 0);
    assert_int_equal(count(&t, 1, 0), 33);
    commit(&t);
    begin(f, false, &t);
    assert_int_equal(count(&t, 1, 0), 33);
    assert_int_equal(count(&t, 2, 0), 0);
    store_txn_abort(&t);
}

static void test_drop_space(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v[4];
    mkvals(v, "name", 7, 0.25, "u");
    store_part_meta pm = {.seq = 5, .epoch = 2};
    begin(f, true, &t);
    for (uint32_t sp = 1; sp <= 3; sp++)
        for (uint32_t part = 0; part < 4; part++) {
            char key[16];
            snprintf(key, sizeof key, "k%u", part);
            put(f, &t, sp, part, key, NULL, v);
            assert_int_equal(store_part_meta_put(&t, sp, part, &pm), 0);
        }
    /* Space 2 with its bytes reversed: a byte-order slip would drop it. */
    put(f, &t, 0x02000000, 0, "k0", NULL, v);
    assert_int_equal(store_part_meta_put(&t, 0x02000000, 0, &pm), 0);
    assert_int_equal(store_meta_put(&t, "cmap", "map", 3), 0);
    commit(&t);

    begin(f, true, &t);
    assert_int_equal(store_drop_space(&t, 2), 0);
    commit(&t);

    begin(f, false, &t);
    obj_value name = sv("name");
    for (uint32_t part = 0; part < 4; part++) {
        store_part_meta got = {99, 99};
        expect_scan(&t, 2, part, "");
        expect_iscan(&t, 2, part, A_S, SPACE_STRING, NULL, NULL, "");
        expect_iscan(&t, 2, part, A_I, SPACE_INT, NULL, NULL, "");
        expect_iscan(&t, 2, part, A_F, SPACE_FLOAT, NULL, NULL, "");
        assert_int_equal(store_part_meta_get(&t, 2, part, &got), 0);
        assert_int_equal(got.seq, 0);
        assert_int_equal(got.epoch, 0);
        char key[16];
        snprintf(key, sizeof key, "k%u,", part);
        for (uint32_t sp = 1; sp <= 3; sp += 2) {
            expect_scan(&t, sp, part, key);
            expect_iscan(&t, sp, part, A_S, SPACE_STRING, &name, &name, key);
            expect_iscan(&t, sp, part, A_I, SPACE_INT, NULL, NULL, key);
            expect_iscan(&t, sp, part, A_F, SPACE_FLOAT, NULL, NULL, key);
            assert_int_equal(store_part_meta_get(&t, sp, part, &got), 0);
            assert_int_equal(got.seq, 5);
            assert_int_equal(got.epoch, 2);
        }
    }
    expect_scan(&t, 0x02000000, 0, "k0,");
    expect_iscan(&t, 0x02000000, 0, A_S, SPACE_STRING, NULL, NULL, "k0,");
    store_part_meta got;
    assert_int_equal(store_part_meta_get(&t, 0x02000000, 0, &got), 0);
    assert_int_equal(got.seq, 5);
    const void *val;
    size_t vlen;
    assert_int_equal(store_meta_get(&t, "cmap", &val, &vlen), 0);
    assert_int_equal(vlen, 3);
    assert_memory_equal(val, "map", 3);
    store_txn_abort(&t);

    /* Dropping a space with nothing in it is fine. */
    begin(f, true, &t);
    assert_int_equal(store_drop_space(&t, 77), 0);
    assert_int_equal(store_drop_space(&t, 2), 0);
    commit(&t);
}

/* ---- metadata ----------------------------------------------------------- */

static void test_meta(void **state)
{
    fx *f = *state;
    store_txn t;
    const void *val = NULL;
    size_t vlen = 0;
    begin(f, true, &t);
    assert_int_equal(store_meta_get(&t, "cmap", &val, &vlen), MDB_NOTFOUND);
    assert_int_equal(store_meta_put(&t, "cmap", "v1", 2), 0);
    assert_int_equal(store_meta_put(&t, "other", "\0\1\2\0", 4), 0);
    assert_int_equal(store_meta_put(&t, "empty", "", 0), 0);
    assert_int_equal(store_meta_get(&t, "cmap", &val, &vlen), 0);
    assert_int_equal(vlen, 2);
    assert_memory_equal(val, "v1", 2);
    assert_int_equal(store_meta_put(&t, "cmap", "version two", 11), 0);
    commit(&t);

    begin(f, false, &t);
    assert_int_equal(store_meta_get(&t, "cmap", &val, &vlen), 0);
    assert_int_equal(vlen, 11);
    assert_memory_equal(val, "version two", 11);
    assert_int_equal(store_meta_get(&t, "other", &val, &vlen), 0);
    assert_int_equal(vlen, 4);
    assert_memory_equal(val, "\0\1\2\0", 4);
    assert_int_equal(store_meta_get(&t, "empty", &val, &vlen), 0);
    assert_int_equal(vlen, 0);
    assert_int_equal(store_meta_get(&t, "cma", &val, &vlen), MDB_NOTFOUND);
    assert_int_equal(store_meta_get(&t, "cmapx", &val, &vlen), MDB_NOTFOUND);
    store_txn_abort(&t);
}

static void test_part_meta(void **state)
{
    fx *f = *state;
    store_txn t;
    store_part_meta m;
    begin(f, true, &t);
    memset(&m, 0xab, sizeof m);
    assert_int_equal(store_part_meta_get(&t, 1, 0, &m), 0);
    assert_int_equal(m.seq, 0);
    assert_int_equal(m.epoch, 0);

    store_part_meta a = {.seq = 1, .epoch = 2},
                    b = {.seq = UINT64_MAX, .epoch = 0x0102030405060708};
    assert_int_equal(store_part_meta_put(&t, 1, 0, &a), 0);
    assert_int_equal(store_part_meta_put(&t, 1, 1, &b), 0);
    commit(&t);

    begin(f, true, &t);
    assert_int_equal(store_part_meta_get(&t, 1, 0, &m), 0);
    assert_int_equal(m.seq, 1);
    assert_int_equal(m.epoch, 2);
    assert_int_equal(store_part_meta_get(&t, 1, 1, &m), 0);
    assert_int_equal(m.seq, UINT64_MAX);
    assert_int_equal(m.epoch, 0x0102030405060708);
    assert_int_equal(store_part_meta_get(&t, 1, 2, &m), 0);
    assert_int_equal(m.seq, 0);
    assert_int_equal(store_part_meta_get(&t, 2, 0, &m), 0);
    assert_int_equal(m.seq, 0);
    /* Overwrite. */
    a.seq = 1000;
    assert_int_equal(store_part_meta_put(&t, 1, 0, &a), 0);
    assert_int_equal(store_part_meta_get(&t, 1, 0, &m), 0);
    assert_int_equal(m.seq, 1000);
    assert_int_equal(m.epoch, 2);

    /* A malformed record is reported as corruption, not misread. The key is
     * "p/" + space u32be + part u32be; 0x01010101 gives a NUL-free name. */
    assert_int_equal(store_meta_put(&t, "p/\x01\x01\x01\x01\x01\x01\x01\x01", "short", 5), 0);
    memset(&m, 0xab, sizeof m);
    assert_int_equal(store_part_meta_get(&t, 0x01010101, 0x01010101, &m), MDB_CORRUPTED);
    /* A 17-byte record with the wrong version byte too. */
    assert_int_equal(store_meta_put(&t, "p/\x01\x01\x01\x01\x01\x01\x01\x01",
                                    "\x02"
                                    "0123456789abcdef",
                                    17),
                     0);
    assert_int_equal(store_part_meta_get(&t, 0x01010101, 0x01010101, &m), MDB_CORRUPTED);
    /* And the real layout is read back (u8 1, seq u64be, epoch u64be). */
    assert_int_equal(store_meta_put(&t, "p/\x01\x01\x01\x01\x01\x01\x01\x01",
                                    "\x01\x00\x00\x00\x00\x00\x00\x01\x02"
                                    "\x00\x00\x00\x00\x00\x00\x00\x03",
                                    17),
                     0);
    assert_int_equal(store_part_meta_get(&t, 0x01010101, 0x01010101, &m), 0);
    assert_int_equal(m.seq, 0x102);
    assert_int_equal(m.epoch, 3);
    commit(&t);
}

/* ---- limits and aborts -------------------------------------------------- */

static void test_key_size_limit(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v[4];
    /* A 32-byte string makes the longest idx key: 10 + 32 + STORE_MAX_KEY. */
    mkvals(v, "0123456789abcdef0123456789abcdefXX", 1, 1.0, "");
    char key[STORE_MAX_KEY + 2];
    memset(key, 'k', sizeof key);
    key[sizeof key - 1] = '\0';
    const void *val;
    size_t vlen;
    begin(f, true, &t);
    /* Exactly the maximum works for put, get, scans and del. */
    assert_int_equal(put_rc(f, &t, 1, 0, key, STORE_MAX_KEY, NULL, v), 0);
    assert_int_equal(store_obj_get(&t, 1, 0, key, STORE_MAX_KEY, &val, &vlen), 0);
    collect c = {0};
    buf_init(&c.out);
    assert_int_equal(store_index_scan(&t, 1, 0, A_S, 32, NULL, NULL, key_cb, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.out.len, STORE_MAX_KEY + 1);
    buf_free(&c.out);
    /* One more byte is refused everywhere. */
    assert_int_equal(put_rc(f, &t, 1, 0, key, STORE_MAX_KEY + 1, NULL, v), MDB_BAD_VALSIZE);
    assert_int_equal(store_obj_get(&t, 1, 0, key, STORE_MAX_KEY + 1, &val, &vlen), MDB_BAD_VALSIZE);
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, key, STORE_MAX_KEY + 1, v), MDB_BAD_VALSIZE);
    store_txn_abort(&t);

    begin(f, true, &t);
    assert_int_equal(put_rc(f, &t, 1, 0, key, STORE_MAX_KEY, NULL, v), 0);
    assert_int_equal(store_obj_del(&t, f->sc, 1, 0, key, STORE_MAX_KEY, v), 0);
    assert_int_equal(store_obj_get(&t, 1, 0, key, STORE_MAX_KEY, &val, &vlen), MDB_NOTFOUND);
    commit(&t);
}

static void test_abort_discards(void **state)
{
    fx *f = *state;
    store_txn t;
    obj_value v[4];
    mkvals(v, "gone", 3, 3.0, "");
    begin(f, true, &t);
    put(f, &t, 1, 0, "k", NULL, v);
    assert_int_equal(store_meta_put(&t, "cmap", "x", 1), 0);
    store_part_meta pm = {.seq = 9, .epoch = 9};
    assert_int_equal(store_part_meta_put(&t, 1, 0, &pm), 0);
    store_txn_abort(&t);
    assert_null(t.txn);
    store_txn_abort(&t); /* aborting twice is harmless */

    begin(f, false, &t);
    expect_absent(&t, 1, 0, "k");
    expect_scan(&t, 1, 0, "");
    expect_iscan(&t, 1, 0, A_S, SPACE_STRING, NULL, NULL, "");
    const void *val;
    size_t vlen;
    assert_int_equal(store_meta_get(&t, "cmap", &val, &vlen), MDB_NOTFOUND);
    assert_int_equal(store_part_meta_get(&t, 1, 0, &pm), 0);
    assert_int_equal(pm.seq, 0);
    store_txn_abort(&t);
}

/* A read transaction sees its snapshot; reset + renew moves it forward. */
static void test_read_snapshot_reset_renew(void **state)
{
    fx *f = *state;
    store_txn r, w;
    obj_value v[4];
    mkvals(v, "x", 1, 1.0, "");
    begin(f, false, &r);
    begin(f, true, &w);
    put(f, &w, 1, 0, "k", NULL, v);
    commit(&w);
    expect_absent(&r, 1, 0, "k");
    store_txn_reset(&r);
    assert_int_equal(store_txn_renew(&r), 0);
    expect_obj(f, &r, 1, 0, "k", v);
    store_txn_abort(&r);
}

/* ---- replication: the partition log ------------------------------------- */

/* Collects a log scan as "seq=data," (stop after `stop_after` entries if
 * nonzero; `fail_at` seq: return -7 there). */
typedef struct logcol {
    buf out;
    int n;
    int stop_after;
    uint64_t fail_at;
    bool fail;
} logcol;

static int log_cb(void *arg, uint64_t seq, const void *data, size_t len)
{
    logcol *c = arg;
    if (c->fail && seq == c->fail_at) return -7;
    buf_printf(&c->out, "%llu=", (unsigned long long)seq);
    buf_append(&c->out, data, len);
    buf_putc(&c->out, ',');
    c->n++;
    return c->stop_after && c->n >= c->stop_after ? 1 : 0;
}

static void expect_log(store_txn *t, uint32_t space, uint32_t part, uint64_t from,
                       const char *want)
{
    logcol c = {0};
    buf_init(&c.out);
    assert_int_equal(store_log_scan(t, space, part, from, log_cb, &c), 0);
    buf_putc(&c.out, '\0');
    assert_string_equal(c.out.data, want);
    buf_free(&c.out);
}

static void log_put(store_txn *t, uint32_t space, uint32_t part, uint64_t seq, const char *data)
{
    assert_int_equal(store_log_put(t, space, part, seq, data, strlen(data)), 0);
}

#define MAXSEQ "18446744073709551615"
#define MAXSEQ_1 "18446744073709551614"

/* The partitions around (1, 1) whose keys a byte-order or prefix slip would
 * reach: neighbours in part and space, and byte-reversed ids. */
static const uint32_t NEIGH[][2] = {{1, 0},          {1, 2},          {0, 1},
                                    {2, 1},          {1, 0x01000000}, {0x01000000, 1},
                                    {0, 0xffffffff}, {1, 0xffffffff}, {0xffffffff, 0xffffffff}};
#define NNEIGH (sizeof NEIGH / sizeof NEIGH[0])

/* Fills (1, 1) with seqs 0, 1, 2, 5, MAX-1, MAX and every neighbour with
 * seqs 0, 3, MAX. */
static void fill_logs(store_txn *t)
{
    log_put(t, 1, 1, 5, "e");
    log_put(t, 1, 1, 0, "a");
    log_put(t, 1, 1, UINT64_MAX, "z");
    log_put(t, 1, 1, 2, "c");
    log_put(t, 1, 1, UINT64_MAX - 1, "y");
    log_put(t, 1, 1, 1, "b");
    for (size_t i = 0; i < NNEIGH; i++) {
        log_put(t, NEIGH[i][0], NEIGH[i][1], 0, "n0");
        log_put(t, NEIGH[i][0], NEIGH[i][1], 3, "n3");
        log_put(t, NEIGH[i][0], NEIGH[i][1], UINT64_MAX, "nm");
    }
}

static void expect_neighbours_intact(store_txn *t)
{
    for (size_t i = 0; i < NNEIGH; i++)
        expect_log(t, NEIGH[i][0], NEIGH[i][1], 0, "0=n0,3=n3," MAXSEQ "=nm,");
}

static void test_log_put_get_scan(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    expect_log(&t, 1, 1, 0, "");
    fill_logs(&t);
    /* Scans in seq order from any point, including both ends. */
    expect_log(&t, 1, 1, 0, "0=a,1=b,2=c,5=e," MAXSEQ_1 "=y," MAXSEQ "=z,");
    expect_log(&t, 1, 1, 1, "1=b,2=c,5=e," MAXSEQ_1 "=y," MAXSEQ "=z,");
    expect_log(&t, 1, 1, 3, "5=e," MAXSEQ_1 "=y," MAXSEQ "=z,");
    expect_log(&t, 1, 1, 6, MAXSEQ_1 "=y," MAXSEQ "=z,");
    expect_log(&t, 1, 1, UINT64_MAX, MAXSEQ "=z,");
    expect_log(&t, 3, 3, 0, "");
    expect_neighbours_intact(&t);
    /* Stop (1) and errors (negative) from the callback. */
    logcol c = {.stop_after = 2};
    buf_init(&c.out);
    assert_int_equal(store_log_scan(&t, 1, 1, 1, log_cb, &c), 0);
    buf_putc(&c.out, '\0');
    assert_string_equal(c.out.data, "1=b,2=c,");
    buf_reset(&c.out);
    c = (logcol){.out = c.out, .fail = true, .fail_at = 5};
    assert_int_equal(store_log_scan(&t, 1, 1, 0, log_cb, &c), -7);
    assert_int_equal(c.n, 3);
    buf_free(&c.out);
    commit(&t);

    begin(f, true, &t);
    const void *data = NULL;
    size_t len = 0;
    assert_int_equal(store_log_get(&t, 1, 1, 0, &data, &len), 0);
    assert_int_equal(len, 1);
    assert_memory_equal(data, "a", 1);
    assert_int_equal(store_log_get(&t, 1, 1, UINT64_MAX, &data, &len), 0);
    assert_memory_equal(data, "z", 1);
    assert_int_equal(store_log_get(&t, 1, 1, 3, &data, &len), MDB_NOTFOUND);
    assert_int_equal(store_log_get(&t, 2, 2, 0, &data, &len), MDB_NOTFOUND);
    /* Overwrite, an empty entry, binary and large entries. */
    log_put(&t, 1, 1, 5, "replaced");
    assert_int_equal(store_log_put(&t, 1, 1, 6, "", 0), 0);
    assert_int_equal(store_log_put(&t, 1, 1, 7, "\0\r\n\0", 4), 0);
    size_t blen = 1u << 20;
    char *big = malloc(blen);
    assert_non_null(big);
    for (size_t i = 0; i < blen; i++)
        big[i] = (char)(i * 7);
    assert_int_equal(store_log_put(&t, 1, 1, 8, big, blen), 0);
    assert_int_equal(store_log_get(&t, 1, 1, 5, &data, &len), 0);
    assert_int_equal(len, 8);
    assert_memory_equal(data, "replaced", 8);
    assert_int_equal(store_log_get(&t, 1, 1, 6, &data, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(store_log_get(&t, 1, 1, 7, &data, &len), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(data, "\0\r\n\0", 4);
    commit(&t);
    begin(f, false, &t);
    assert_int_equal(store_log_get(&t, 1, 1, 8, &data, &len), 0);
    assert_int_equal(len, blen);
    assert_memory_equal(data, big, blen);
    store_txn_abort(&t);
    free(big);
}

static void test_log_delete_from(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    fill_logs(&t);
    /* A seq above everything, and an empty partition: nothing happens. */
    assert_int_equal(store_log_delete_from(&t, 3, 3, 0), 0);
    assert_int_equal(store_log_delete_from(&t, 1, 1, UINT64_MAX), 0);
    expect_log(&t, 1, 1, 0, "0=a,1=b,2=c,5=e," MAXSEQ_1 "=y,");
    assert_int_equal(store_log_delete_from(&t, 1, 1, UINT64_MAX), 0);
    expect_log(&t, 1, 1, 0, "0=a,1=b,2=c,5=e," MAXSEQ_1 "=y,");
    /* Between entries, at an entry, at 1, at 0. */
    assert_int_equal(store_log_delete_from(&t, 1, 1, 3), 0);
    expect_log(&t, 1, 1, 0, "0=a,1=b,2=c,");
    assert_int_equal(store_log_delete_from(&t, 1, 1, 2), 0);
    expect_log(&t, 1, 1, 0, "0=a,1=b,");
    assert_int_equal(store_log_delete_from(&t, 1, 1, 1), 0);
    expect_log(&t, 1, 1, 0, "0=a,");
    expect_neighbours_intact(&t);
    commit(&t);
    begin(f, true, &t);
    assert_int_equal(store_log_delete_from(&t, 1, 1, 0), 0);
    expect_log(&t, 1, 1, 0, "");
    expect_neighbours_intact(&t);
    commit(&t);
    begin(f, false, &t);
    expect_log(&t, 1, 1, 0, "");
    expect_neighbours_intact(&t);
    store_txn_abort(&t);

    /* The last partition of the last space (its range ends the database). */
    begin(f, true, &t);
    assert_int_equal(store_log_delete_from(&t, 0xffffffff, 0xffffffff, 1), 0);
    expect_log(&t, 0xffffffff, 0xffffffff, 0, "0=n0,");
    expect_log(&t, 1, 0xffffffff, 0, "0=n0,3=n3," MAXSEQ "=nm,");
    commit(&t);
}

static void test_log_delete_through(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    fill_logs(&t);
    assert_int_equal(store_log_delete_through(&t, 3, 3, UINT64_MAX), 0);
    assert_int_equal(store_log_delete_through(&t, 1, 1, 0), 0);
    expect_log(&t, 1, 1, 0, "1=b,2=c,5=e," MAXSEQ_1 "=y," MAXSEQ "=z,");
    assert_int_equal(store_log_delete_through(&t, 1, 1, 0), 0);
    assert_int_equal(store_log_delete_through(&t, 1, 1, 1), 0);
    expect_log(&t, 1, 1, 0, "2=c,5=e," MAXSEQ_1 "=y," MAXSEQ "=z,");
    assert_int_equal(store_log_delete_through(&t, 1, 1, 4), 0);
    expect_log(&t, 1, 1, 0, "5=e," MAXSEQ_1 "=y," MAXSEQ "=z,");
    assert_int_equal(store_log_delete_through(&t, 1, 1, 5), 0);
    expect_log(&t, 1, 1, 0, MAXSEQ_1 "=y," MAXSEQ "=z,");
    assert_int_equal(store_log_delete_through(&t, 1, 1, UINT64_MAX - 1), 0);
    expect_log(&t, 1, 1, 0, MAXSEQ "=z,");
    expect_neighbours_intact(&t);
    assert_int_equal(store_log_delete_through(&t, 1, 1, UINT64_MAX), 0);
    expect_log(&t, 1, 1, 0, "");
    expect_neighbours_intact(&t);
    /* The first partition of the first space (its range starts the
     * database). */
    log_put(&t, 0, 0, 9, "x");
    assert_int_equal(store_log_delete_through(&t, 0, 0, 8), 0);
    expect_log(&t, 0, 0, 0, "9=x,");
    assert_int_equal(store_log_delete_through(&t, 0, 0, 9), 0);
    expect_log(&t, 0, 0, 0, "");
    expect_neighbours_intact(&t);
    commit(&t);
}

static void expect_bounds(store_txn *t, uint32_t space, uint32_t part, int rc, uint64_t first,
                          uint64_t last)
{
    uint64_t a = 99, b = 99;
    assert_int_equal(store_log_bounds(t, space, part, &a, &b), rc);
    assert_int_equal(a, first);
    assert_int_equal(b, last);
}

static void test_log_bounds(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    expect_bounds(&t, 1, 1, MDB_NOTFOUND, 0, 0); /* empty database */
    log_put(&t, 1, 1, 7, "x");
    expect_bounds(&t, 1, 1, 0, 7, 7); /* alone: the database ends after it */
    expect_bounds(&t, 1, 0, MDB_NOTFOUND, 0, 0);
    expect_bounds(&t, 1, 2, MDB_NOTFOUND, 0, 0);
    log_put(&t, 1, 1, 3, "x");
    log_put(&t, 1, 1, 1000, "x");
    expect_bounds(&t, 1, 1, 0, 3, 1000);
    fill_logs(&t); /* neighbours after it */
    expect_bounds(&t, 1, 1, 0, 0, UINT64_MAX);
    assert_int_equal(store_log_delete_from(&t, 1, 1, UINT64_MAX), 0);
    expect_bounds(&t, 1, 1, 0, 0, UINT64_MAX - 1);
    assert_int_equal(store_log_delete_through(&t, 1, 1, 4), 0);
    expect_bounds(&t, 1, 1, 0, 5, UINT64_MAX - 1);
    assert_int_equal(store_log_delete_from(&t, 1, 1, 6), 0);
    expect_bounds(&t, 1, 1, 0, 5, 5);
    assert_int_equal(store_log_delete_from(&t, 1, 1, 0), 0);
    expect_bounds(&t, 1, 1, MDB_NOTFOUND, 0, 0);
    /* The very last partition holds the database's last key. */
    expect_bounds(&t, 0xffffffff, 0xffffffff, 0, 0, UINT64_MAX);
    assert_int_equal(store_log_delete_from(&t, 0xffffffff, 0xffffffff, 1), 0);
    expect_bounds(&t, 0xffffffff, 0xffffffff, 0, 0, 0);
    expect_bounds(&t, 0, 0xffffffff, 0, 0, UINT64_MAX);
    expect_bounds(&t, 0xfffffffe, 0xffffffff, MDB_NOTFOUND, 0, 0);
    commit(&t);
}

/* ---- replication: metadata ---------------------------------------------- */

/* Writes raw bytes into one of the store's databases (corruption tests). */
static void raw_put(store_txn *t, const char *db, const void *key, size_t klen, const void *val,
                    size_t vlen)
{
    MDB_dbi dbi;
    assert_int_equal(mdb_dbi_open(t->txn, db, 0, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    assert_int_equal(mdb_put(t->txn, dbi, &k, &v, 0), 0);
}

static void expect_repl_meta(store_txn *t, uint32_t space, uint32_t part, uint64_t epoch,
                             uint64_t applied, uint64_t base_seq, uint64_t base_epoch)
{
    store_repl_meta m;
    memset(&m, 0xab, sizeof m);
    assert_int_equal(store_repl_meta_get(t, space, part, &m), 0);
    assert_int_equal(m.epoch, epoch);
    assert_int_equal(m.applied, applied);
    assert_int_equal(m.base_seq, base_seq);
    assert_int_equal(m.base_epoch, base_epoch);
}

/* Collects a repl meta scan as "space/part:epoch,". */
static int repl_meta_cb(void *arg, uint32_t space, uint32_t part, const store_repl_meta *m)
{
    collect *c = arg;
    if (c->stop_after < 0 && c->n == -c->stop_after) return -9;
    buf_printf(&c->out, "%x/%x:%llu,", space, part, (unsigned long long)m->epoch);
    c->n++;
    return c->stop_after > 0 && c->n >= c->stop_after ? 1 : 0;
}

static void expect_repl_scan(store_txn *t, int stop_after, int rc, const char *want)
{
    collect c = {.stop_after = stop_after};
    buf_init(&c.out);
    assert_int_equal(store_repl_meta_scan(t, repl_meta_cb, &c), rc);
    collect_done(&c);
    assert_string_equal(c.out.data, want);
    buf_free(&c.out);
}

static void test_repl_meta(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    expect_repl_meta(&t, 1, 1, 0, 0, 0, 0);
    expect_repl_scan(&t, 0, 0, "");
    store_repl_meta a = {.epoch = 3, .applied = 17, .base_seq = 10, .base_epoch = 2};
    store_repl_meta b = {.epoch = UINT64_MAX, .applied = UINT64_MAX - 1, .base_seq = 1,
                         .base_epoch = 0x0102030405060708};
    assert_int_equal(store_repl_meta_put(&t, 1, 1, &a), 0);
    assert_int_equal(store_repl_meta_put(&t, 0x01000000, 0, &b), 0);
    assert_int_equal(store_repl_meta_put(&t, 0, 0x01000000, &b), 0);
    store_repl_meta e = {.epoch = 5};
    assert_int_equal(store_repl_meta_put(&t, 0xffffffff, 0xffffffff, &e), 0);
    /* The standalone counter is a different record. */
    store_part_meta pm = {.seq = 99, .epoch = 98};
    assert_int_equal(store_part_meta_put(&t, 1, 2, &pm), 0);
    commit(&t);

    begin(f, true, &t);
    expect_repl_meta(&t, 1, 1, 3, 17, 10, 2);
    expect_repl_meta(&t, 0x01000000, 0, UINT64_MAX, UINT64_MAX - 1, 1, 0x0102030405060708);
    expect_repl_meta(&t, 0, 0x01000000, UINT64_MAX, UINT64_MAX - 1, 1, 0x0102030405060708);
    expect_repl_meta(&t, 0xffffffff, 0xffffffff, 5, 0, 0, 0);
    expect_repl_meta(&t, 1, 0, 0, 0, 0, 0);
    expect_repl_meta(&t, 1, 2, 0, 0, 0, 0);
    expect_repl_meta(&t, 0, 1, 0, 0, 0, 0);
    store_part_meta got;
    assert_int_equal(store_part_meta_get(&t, 1, 1, &got), 0);
    assert_int_equal(got.seq, 0);
    a.applied = 18;
    assert_int_equal(store_repl_meta_put(&t, 1, 1, &a), 0);
    expect_repl_meta(&t, 1, 1, 3, 18, 10, 2);
    /* The scan: (space, part) order, stop, errors. */
    expect_repl_scan(&t, 0, 0,
                     "0/1000000:18446744073709551615,1/1:3,1000000/0:18446744073709551615,"
                     "ffffffff/ffffffff:5,");
    expect_repl_scan(&t, 2, 0, "0/1000000:18446744073709551615,1/1:3,");
    expect_repl_scan(&t, -1, -9, "0/1000000:18446744073709551615,");

    /* Garbage is MDB_CORRUPTED (and zeros), never misread: too short, too
     * long, the wrong version. */
    unsigned char key[8] = {0, 0, 0, 9, 0, 0, 0, 9};
    unsigned char rec[34];
    memset(rec, 0, sizeof rec);
    rec[0] = 1;
    rec[8] = 4; /* epoch 4 */
    raw_put(&t, "repl", key, 8, rec, 33);
    expect_repl_meta(&t, 9, 9, 4, 0, 0, 0); /* the real layout */
    static const size_t lens[] = {0, 1, 32, 34};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        raw_put(&t, "repl", key, 8, rec, lens[i]);
        store_repl_meta m;
        memset(&m, 0xab, sizeof m);
        assert_int_equal(store_repl_meta_get(&t, 9, 9, &m), MDB_CORRUPTED);
        assert_int_equal(m.epoch, 0);
        assert_int_equal(m.applied, 0);
    }
    rec[0] = 2;
    raw_put(&t, "repl", key, 8, rec, 33);
    store_repl_meta m;
    assert_int_equal(store_repl_meta_get(&t, 9, 9, &m), MDB_CORRUPTED);
    expect_repl_scan(&t, 0, MDB_CORRUPTED, "0/1000000:18446744073709551615,1/1:3,");
    store_txn_abort(&t);
}

/* ---- replication: the client table -------------------------------------- */

static void client_put(store_txn *t, uint32_t space, uint32_t part, uint64_t id, uint64_t cseq,
                       uint64_t seq, const char *result)
{
    store_client c = {.client_id = id, .client_seq = cseq, .seq = seq,
                      .rlen = (uint32_t)strlen(result), .result = (const uint8_t *)result};
    assert_int_equal(store_client_put(t, space, part, &c), 0);
}

static void expect_client(store_txn *t, uint32_t space, uint32_t part, uint64_t id, uint64_t cseq,
                          uint64_t seq, const char *result)
{
    store_client c;
    memset(&c, 0xab, sizeof c);
    assert_int_equal(store_client_get(t, space, part, id, &c), 0);
    assert_int_equal(c.client_id, id);
    assert_int_equal(c.client_seq, cseq);
    assert_int_equal(c.seq, seq);
    assert_int_equal(c.rlen, strlen(result));
    if (c.rlen)
        assert_memory_equal(c.result, result, c.rlen);
    else
        assert_null(c.result);
}

static int client_cb(void *arg, const store_client *c)
{
    collect *x = arg;
    if (x->stop_after < 0 && x->n == -x->stop_after) return -3;
    buf_printf(&x->out, "%llu:%llu:%llu:", (unsigned long long)c->client_id,
               (unsigned long long)c->client_seq, (unsigned long long)c->seq);
    buf_append(&x->out, c->result, c->rlen);
    buf_putc(&x->out, ',');
    x->n++;
    return x->stop_after > 0 && x->n >= x->stop_after ? 1 : 0;
}

static void expect_clients(store_txn *t, uint32_t space, uint32_t part, int stop_after, int rc,
                           const char *want)
{
    collect c = {.stop_after = stop_after};
    buf_init(&c.out);
    assert_int_equal(store_client_scan(t, space, part, client_cb, &c), rc);
    collect_done(&c);
    assert_string_equal(c.out.data, want);
    buf_free(&c.out);
}

static void fill_clients(store_txn *t)
{
    client_put(t, 1, 1, UINT64_MAX, 3, 30, ":1\r\n");
    client_put(t, 1, 1, 1, 1, 10, "+OK\r\n");
    client_put(t, 1, 1, 0x100, 7, 12, "");
    client_put(t, 1, 1, 0, 2, 2, "-CMPFAIL x\r\n");
    for (size_t i = 0; i < NNEIGH; i++)
        client_put(t, NEIGH[i][0], NEIGH[i][1], 5, 5, 5, "n");
}

static void expect_client_neighbours(store_txn *t)
{
    for (size_t i = 0; i < NNEIGH; i++)
        expect_clients(t, NEIGH[i][0], NEIGH[i][1], 0, 0, "5:5:5:n,");
}

static void test_client_table(void **state)
{
    fx *f = *state;
    store_txn t;
    store_client c;
    begin(f, true, &t);
    assert_int_equal(store_client_get(&t, 1, 1, 1, &c), MDB_NOTFOUND);
    expect_clients(&t, 1, 1, 0, 0, "");
    fill_clients(&t);
    commit(&t);

    begin(f, true, &t);
    expect_client(&t, 1, 1, 1, 1, 10, "+OK\r\n");
    expect_client(&t, 1, 1, UINT64_MAX, 3, 30, ":1\r\n");
    expect_client(&t, 1, 1, 0x100, 7, 12, "");
    expect_client(&t, 1, 1, 0, 2, 2, "-CMPFAIL x\r\n");
    assert_int_equal(store_client_get(&t, 1, 1, 2, &c), MDB_NOTFOUND);
    assert_int_equal(store_client_get(&t, 1, 2, 1, &c), MDB_NOTFOUND);
    /* client_id order, stop, errors. */
    expect_clients(&t, 1, 1, 0, 0,
                   "0:2:2:-CMPFAIL x\r\n,1:1:10:+OK\r\n,256:7:12:,18446744073709551615:3:30::1\r\n,");
    expect_clients(&t, 1, 1, 2, 0, "0:2:2:-CMPFAIL x\r\n,1:1:10:+OK\r\n,");
    expect_clients(&t, 1, 1, -1, -3, "0:2:2:-CMPFAIL x\r\n,");
    expect_client_neighbours(&t);
    /* Replacing a row: longer, then shorter, then empty result. */
    client_put(&t, 1, 1, 1, 2, 11, "a much longer result than before");
    expect_client(&t, 1, 1, 1, 2, 11, "a much longer result than before");
    client_put(&t, 1, 1, 1, 3, 12, "s");
    expect_client(&t, 1, 1, 1, 3, 12, "s");
    client_put(&t, 1, 1, 1, 4, 13, "");
    expect_client(&t, 1, 1, 1, 4, 13, "");
    /* A 64 KiB result with binary bytes. */
    size_t rlen = 64u << 10;
    uint8_t *big = malloc(rlen);
    assert_non_null(big);
    for (size_t i = 0; i < rlen; i++)
        big[i] = (uint8_t)(i * 13);
    store_client bc = {.client_id = 77, .client_seq = 1, .seq = 99, .rlen = (uint32_t)rlen,
                       .result = big};
    assert_int_equal(store_client_put(&t, 1, 1, &bc), 0);
    commit(&t);
    begin(f, true, &t);
    assert_int_equal(store_client_get(&t, 1, 1, 77, &c), 0);
    assert_int_equal(c.rlen, rlen);
    assert_memory_equal(c.result, big, rlen);
    free(big);

    /* delete_all: that partition only. */
    assert_int_equal(store_client_delete_all(&t, 1, 1), 0);
    expect_clients(&t, 1, 1, 0, 0, "");
    assert_int_equal(store_client_get(&t, 1, 1, 0, &c), MDB_NOTFOUND);
    expect_client_neighbours(&t);
    assert_int_equal(store_client_delete_all(&t, 1, 1), 0);
    assert_int_equal(store_client_delete_all(&t, 0xffffffff, 0xffffffff), 0);
    expect_clients(&t, 0xffffffff, 0xffffffff, 0, 0, "");
    expect_clients(&t, 1, 0xffffffff, 0, 0, "5:5:5:n,");
    commit(&t);
}

static void test_client_corrupt(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    client_put(&t, 9, 9, 1, 1, 1, "ok");
    /* Key (9, 9, client 2); a well-formed record first. */
    unsigned char key[16] = {0, 0, 0, 9, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2};
    unsigned char rec[32];
    memset(rec, 0, sizeof rec);
    rec[0] = 1;
    rec[8] = 6;   /* client_seq 6 */
    rec[16] = 8;  /* seq 8 */
    rec[20] = 3;  /* result length 3 */
    memcpy(rec + 21, "abc", 3);
    raw_put(&t, "client", key, 16, rec, 24);
    expect_client(&t, 9, 9, 2, 6, 8, "abc");
    struct {
        size_t len;
        unsigned char version, rlen;
    } bad[] = {
        {0, 1, 3},  /* empty */
        {20, 1, 3}, /* shorter than the header */
        {23, 1, 3}, /* result cut short */
        {25, 1, 3}, /* trailing byte */
        {21, 1, 3}, /* header only, length says 3 */
        {24, 0, 3}, /* version 0 */
        {24, 2, 3}, /* version 2 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rec[0] = bad[i].version;
        rec[20] = bad[i].rlen;
        raw_put(&t, "client", key, 16, rec, bad[i].len);
        store_client c;
        memset(&c, 0xab, sizeof c);
        assert_int_equal(store_client_get(&t, 9, 9, 2, &c), MDB_CORRUPTED);
        assert_int_equal(c.client_id, 0);
        assert_int_equal(c.rlen, 0);
        assert_null(c.result);
        expect_clients(&t, 9, 9, 0, MDB_CORRUPTED, "1:1:1:ok,");
    }
    /* A key of the wrong size inside the partition's range. */
    rec[0] = 1;
    raw_put(&t, "client", key, 16, rec, 24);
    expect_clients(&t, 9, 9, 0, 0, "1:1:1:ok,2:6:8:abc,");
    raw_put(&t, "client", key, 12, rec, 24);
    expect_clients(&t, 9, 9, 0, MDB_CORRUPTED, "");
    store_txn_abort(&t);
}

/* ---- replication: clearing a partition, dropping a space ----------------- */

/* Fills partition (space, part) with two objects (indexed), log entries,
 * client rows, replication metadata and the standalone counter. */
static void fill_part(fx *f, store_txn *t, uint32_t space, uint32_t part)
{
    obj_value v[4];
    mkvals(v, "name", 7, 0.25, "u");
    put(f, t, space, part, "ka", NULL, v);
    put(f, t, space, part, "kb", NULL, v);
    log_put(t, space, part, 1, "l1");
    log_put(t, space, part, 2, "l2");
    client_put(t, space, part, 4, 1, 2, "r");
    store_repl_meta rm = {.epoch = 3, .applied = 2, .base_seq = 0, .base_epoch = 0};
    assert_int_equal(store_repl_meta_put(t, space, part, &rm), 0);
    store_part_meta pm = {.seq = 5, .epoch = 1};
    assert_int_equal(store_part_meta_put(t, space, part, &pm), 0);
}

static void expect_part_full(fx *f, store_txn *t, uint32_t space, uint32_t part)
{
    (void)f;
    obj_value name = sv("name");
    expect_scan(t, space, part, "ka,kb,");
    expect_iscan(t, space, part, A_S, SPACE_STRING, &name, &name, "ka,kb,");
    expect_iscan(t, space, part, A_I, SPACE_INT, NULL, NULL, "ka,kb,");
    expect_iscan(t, space, part, A_F, SPACE_FLOAT, NULL, NULL, "ka,kb,");
    expect_log(t, space, part, 0, "1=l1,2=l2,");
    expect_clients(t, space, part, 0, 0, "4:1:2:r,");
    expect_repl_meta(t, space, part, 3, 2, 0, 0);
    store_part_meta pm;
    assert_int_equal(store_part_meta_get(t, space, part, &pm), 0);
    assert_int_equal(pm.seq, 5);
}

static void expect_part_empty(store_txn *t, uint32_t space, uint32_t part)
{
    expect_scan(t, space, part, "");
    expect_iscan(t, space, part, A_S, SPACE_STRING, NULL, NULL, "");
    expect_iscan(t, space, part, A_I, SPACE_INT, NULL, NULL, "");
    expect_iscan(t, space, part, A_F, SPACE_FLOAT, NULL, NULL, "");
    expect_log(t, space, part, 0, "");
    expect_clients(t, space, part, 0, 0, "");
    expect_repl_meta(t, space, part, 0, 0, 0, 0);
    store_part_meta pm;
    assert_int_equal(store_part_meta_get(t, space, part, &pm), 0);
    assert_int_equal(pm.seq, 0);
    assert_int_equal(pm.epoch, 0);
}

static void test_part_clear(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    fill_part(f, &t, 1, 1);
    for (size_t i = 0; i < NNEIGH; i++)
        fill_part(f, &t, NEIGH[i][0], NEIGH[i][1]);
    assert_int_equal(store_meta_put(&t, "cmap", "map", 3), 0);
    commit(&t);

    begin(f, true, &t);
    assert_int_equal(store_part_clear(&t, 1, 1), 0);
    expect_part_empty(&t, 1, 1);
    for (size_t i = 0; i < NNEIGH; i++)
        expect_part_full(f, &t, NEIGH[i][0], NEIGH[i][1]);
    commit(&t);

    begin(f, true, &t);
    expect_part_empty(&t, 1, 1);
    const void *val;
    size_t vlen;
    assert_int_equal(store_meta_get(&t, "cmap", &val, &vlen), 0);
    assert_int_equal(vlen, 3);
    /* Clearing an empty partition, and the partitions at both ends of the
     * key space. */
    assert_int_equal(store_part_clear(&t, 1, 1), 0);
    assert_int_equal(store_part_clear(&t, 0xffffffff, 0xffffffff), 0);
    expect_part_empty(&t, 0xffffffff, 0xffffffff);
    fill_part(f, &t, 0, 0);
    assert_int_equal(store_part_clear(&t, 0, 0), 0);
    expect_part_empty(&t, 0, 0);
    for (size_t i = 0; i + 1 < NNEIGH; i++)
        expect_part_full(f, &t, NEIGH[i][0], NEIGH[i][1]);
    /* A cleared partition is usable again (a full copy being installed). */
    fill_part(f, &t, 1, 1);
    expect_part_full(f, &t, 1, 1);
    commit(&t);
}

static void test_drop_space_repl(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    for (uint32_t sp = 1; sp <= 3; sp++)
        for (uint32_t part = 0; part < 3; part++)
            fill_part(f, &t, sp, part);
    fill_part(f, &t, 0x02000000, 0); /* space 2 byte-reversed */
    fill_part(f, &t, 0x00000002, 0xffffffff);
    commit(&t);

    begin(f, true, &t);
    assert_int_equal(store_drop_space(&t, 2), 0);
    commit(&t);
    begin(f, false, &t);
    for (uint32_t part = 0; part < 3; part++) {
        expect_part_empty(&t, 2, part);
        expect_part_full(f, &t, 1, part);
        expect_part_full(f, &t, 3, part);
    }
    expect_part_empty(&t, 2, 0xffffffff);
    expect_part_full(f, &t, 0x02000000, 0);
    expect_repl_scan(&t, 0, 0, "1/0:3,1/1:3,1/2:3,3/0:3,3/1:3,3/2:3,2000000/0:3,");
    store_txn_abort(&t);
}

static void test_repl_state_durable(void **state)
{
    fx *f = *state;
    store_txn t;
    begin(f, true, &t);
    fill_part(f, &t, 4, 2);
    commit(&t);
    /* An aborted transaction leaves nothing of the new databases. */
    begin(f, true, &t);
    fill_part(f, &t, 5, 0);
    store_txn_abort(&t);
    store_close(f->s);
    f->s = NULL;
    open_store(f, STORE_SYNC_BATCH);
    begin(f, false, &t);
    expect_part_full(f, &t, 4, 2);
    expect_part_empty(&t, 5, 0);
    expect_repl_scan(&t, 0, 0, "4/2:3,");
    store_txn_abort(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_regular_file_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_policy_and_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_obj_put_get_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_follows_updates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_old_values_are_corruption, setup, teardown),
        cmocka_unit_test_setup_teardown(test_int_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_float_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_string_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_one_partition, setup, teardown),
        cmocka_unit_test_setup_teardown(test_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_space, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_part_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_size_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_discards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_snapshot_reset_renew, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_put_get_scan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_delete_from, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_delete_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repl_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_part_clear, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_space_repl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_repl_state_durable, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
