/* Unit tests for src/dcopy.c: full copies of a replicated partition.
 *
 * Fixture: two real stores (a primary "src" and a replica "dst") in fresh
 * temporary directories, a cluster map with the space phonebook (4
 * partitions; first and phone indexed) and a second space "other". The
 * source partition P holds objects, client rows, a compacted log (base 10,
 * entries 11..20) and applied = 15; its other partitions and the other
 * space hold data too, and so does the replica (stale data in P included).
 *
 * Covered: snapshot + install (every object, index entry, SEARCH/COUNT
 * answers and client row arrive; stale rows go; metadata and the kept epoch;
 * every other partition and space untouched; keep_log keeps exactly the
 * entries after seq; the result loads in repl_new), how the snapshot finds
 * the epoch of `applied` (inside the log, at the compacted base) and refuses
 * inconsistent stored state, the image format decoded by an independent
 * parser here, chunked round trips with every chunk size, every truncated
 * prefix, every single-byte corruption, random garbage, crafted images that
 * break each rule (with a valid checksum), checksum mismatch, out-of-order
 * chunks, the reader's size limit, a storage error during install (nothing
 * installed), snapshot consistency against a write transaction that commits
 * meanwhile (deterministic, and a writer thread racing many snapshots), and
 * the whole NEED_COPY sequence driven through two repl parts with writes
 * continuing during the copy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <pthread.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "cmap.h"
#include "dcopy.h"
#include "kv.h"
#include "obj.h"
#include "repl.h"
#include "store.h"

/* Under AddressSanitizer an impossible allocation must return NULL, as it
 * does without it (the reader's allocation-failure path is tested). */
__attribute__((visibility("default"), used)) const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* ---- fixture ------------------------------------------------------------------ */

#define MAP_SIZE (256u << 20)
#define P 2 /* the partition copied */
#define NOBJ 120

static const char *const PHONEBOOK = "space phonebook\n"
                                     "key username\n"
                                     "attributes first, last, int phone, float score\n"
                                     "subspace first, phone\n"
                                     "create 4 partitions\n"
                                     "tolerate 1 failures";
static const char *const OTHER = "space other\n"
                                 "key k\n"
                                 "attributes v\n"
                                 "subspace v\n"
                                 "create 2 partitions\n"
                                 "tolerate 1 failures";

typedef struct fx {
    char src_dir[64], dst_dir[64];
    store *src, *dst;
    cmap *m;
    const cmap_space *cs, *cs_other;
    kv_space *sp, *sp_other;
    buf image; /* snapshot of src P */
    uint64_t seq, seq_epoch;
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

static store *open_store(char *dir, size_t map_size)
{
    strcpy(dir, "/tmp/keel-test-dcopy-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char err[256];
    store *st;
    if (store_open(&st, dir, STORE_SYNC_NONE, map_size, err, sizeof err))
        fail_msg("store_open: %s", err);
    return st;
}

static void close_store(store *st, const char *dir)
{
    store_close(st);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *const FIRST[] = {"ann", "bob", "cid", "dee", "eve", "fay", "gus"};

/* The encoding of a phonebook object. */
static void enc_phone(const kv_space *sp, const char *first, const char *last, int64_t phone,
                      double score, buf *out)
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
    obj_encode(sp->schema, v, out);
}

static void put_phone(store_txn *t, const kv_space *sp, uint32_t part, const char *key,
                      const char *first, const char *last, int64_t phone, double score)
{
    buf b;
    buf_init(&b);
    enc_phone(sp, first, last, phone, score, &b);
    assert_int_equal(kv_apply_put(t, sp, part, key, strlen(key), b.data, b.len), 0);
    buf_free(&b);
}

static void put_other(store_txn *t, const kv_space *sp, uint32_t part, const char *key,
                      const char *val)
{
    obj_value v = {.type = SPACE_STRING};
    v.u.s.p = val;
    v.u.s.len = strlen(val);
    buf b;
    buf_init(&b);
    obj_encode(sp->schema, &v, &b);
    assert_int_equal(kv_apply_put(t, sp, part, key, strlen(key), b.data, b.len), 0);
    buf_free(&b);
}

static void put_entry(store_txn *t, uint32_t space, uint32_t part, uint64_t seq, uint64_t epoch)
{
    char key[16];
    snprintf(key, sizeof key, "e%llu", (unsigned long long)seq);
    repl_entry e = {.seq = seq,
                    .epoch = epoch,
                    .type = REPL_E_PUT,
                    .klen = (uint32_t)strlen(key),
                    .key = (const uint8_t *)key,
                    .vlen = 1,
                    .value = (const uint8_t *)"v"};
    buf b;
    buf_init(&b);
    repl_entry_encode(&e, &b);
    assert_int_equal(store_log_put(t, space, part, seq, b.data, b.len), 0);
    buf_free(&b);
}

static void put_client(store_txn *t, uint32_t space, uint32_t part, uint64_t id, uint64_t cseq,
                       uint64_t seq, const char *result)
{
    store_client c = {.client_id = id,
                      .client_seq = cseq,
                      .seq = seq,
                      .rlen = (uint32_t)strlen(result),
                      .result = strlen(result) ? (const uint8_t *)result : NULL};
    assert_int_equal(store_client_put(t, space, part, &c), 0);
}

/* Epoch of entry seq in the source log: 2 for 11..13, 3 for 14..17, 4 after. */
static uint64_t src_epoch(uint64_t seq)
{
    return seq <= 13 ? 2 : seq <= 17 ? 3 : 4;
}

/* Objects of every phonebook partition (each key in its own partition), plus
 * the other space, client rows, logs and metadata. */
static void fill_src(fx *f)
{
    store_txn t;
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    char key[32], last[16];
    for (int i = 0; i < NOBJ; i++) {
        snprintf(key, sizeof key, "user%03d", i);
        snprintf(last, sizeof last, "L%d", i % 5);
        uint32_t part = cmap_partition_of(f->cs, key, strlen(key));
        put_phone(&t, f->sp, part, key, FIRST[i % 7], last, (i * 37) % 100, i / 4.0);
    }
    for (uint32_t part = 0; part < 4; part++) {
        put_client(&t, f->sp->id, part, 7, 3, 12, "+OK\r\n");
        put_client(&t, f->sp->id, part, 9, 1, 15, "");
        put_client(&t, f->sp->id, part, 0x1234567890ull, 44, 14, ":17\r\n");
        for (uint64_t s = 11; s <= 20; s++)
            put_entry(&t, f->sp->id, part, s, src_epoch(s));
        store_repl_meta m = {.epoch = 4, .applied = 15, .base_seq = 10, .base_epoch = 2};
        assert_int_equal(store_repl_meta_put(&t, f->sp->id, part, &m), 0);
    }
    put_other(&t, f->sp_other, 0, "o1", "x");
    put_other(&t, f->sp_other, 1, "o2", "y");
    assert_int_equal(store_txn_commit(&t), 0);
}

/* The replica: stale data in P, other partitions and the other space. */
static void fill_dst(fx *f)
{
    store_txn t;
    assert_int_equal(store_txn_begin(f->dst, true, &t), 0);
    put_phone(&t, f->sp, P, "stale1", "zed", "Z", 999, 1.0);
    put_phone(&t, f->sp, P, "stale2", "ann", "Z", 998, 2.0);
    put_phone(&t, f->sp, P == 0 ? 1 : 0, "keep0", "zed", "K", 5, 0.5);
    put_phone(&t, f->sp, 3, "keep3", "ann", "K", 6, 0.25);
    put_client(&t, f->sp->id, P, 5, 1, 3, "+OLD\r\n");
    put_client(&t, f->sp->id, 3, 5, 2, 4, "+KEEP\r\n");
    for (uint64_t s = 4; s <= 8; s++) {
        put_entry(&t, f->sp->id, P, s, 1);
        put_entry(&t, f->sp->id, 3, s, 1);
    }
    store_repl_meta m = {.epoch = 9, .applied = 6, .base_seq = 3, .base_epoch = 1};
    assert_int_equal(store_repl_meta_put(&t, f->sp->id, P, &m), 0);
    assert_int_equal(store_repl_meta_put(&t, f->sp->id, 3, &m), 0);
    store_part_meta pm = {.seq = 77, .epoch = 1};
    assert_int_equal(store_part_meta_put(&t, f->sp->id, 3, &pm), 0);
    put_other(&t, f->sp_other, 0, "q1", "z");
    assert_int_equal(store_txn_commit(&t), 0);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->src = open_store(f->src_dir, MAP_SIZE);
    f->dst = open_store(f->dst_dir, MAP_SIZE);
    f->m = cmap_new();
    buf cmd;
    buf_init(&cmd);
    cmap_cmd_bootstrap(&cmd, 0x1234, true);
    apply_ok(f->m, &cmd);
    cmap_cmd_add_daemon(&cmd, "127.0.0.1", 2012, 12012, 1000);
    apply_ok(f->m, &cmd);
    cmap_cmd_add_daemon(&cmd, "127.0.0.1", 2013, 12013, 1000);
    apply_ok(f->m, &cmd);
    cmap_cmd_add_space(&cmd, PHONEBOOK, strlen(PHONEBOOK));
    apply_ok(f->m, &cmd);
    cmap_cmd_add_space(&cmd, OTHER, strlen(OTHER));
    apply_ok(f->m, &cmd);
    buf_free(&cmd);
    f->cs = cmap_space_find(f->m, "phonebook", 9);
    f->cs_other = cmap_space_find(f->m, "other", 5);
    assert_non_null(f->cs);
    assert_non_null(f->cs_other);
    f->sp = kv_space_new(f->cs->id, f->cs->schema);
    f->sp_other = kv_space_new(f->cs_other->id, f->cs_other->schema);
    buf_init(&f->image);
    fill_src(f);
    fill_dst(f);
    assert_int_equal(dcopy_snapshot(f->src, f->sp, P, &f->seq, &f->seq_epoch, &f->image), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    close_store(f->src, f->src_dir);
    close_store(f->dst, f->dst_dir);
    kv_space_unref(f->sp);
    kv_space_unref(f->sp_other);
    cmap_free(f->m);
    buf_free(&f->image);
    free(f);
    return 0;
}

/* ---- dumps: everything a store holds for one partition, canonically ---------- */

enum { D_OBJ = 1, D_IDX = 2, D_CLIENT = 4, D_LOG = 8, D_META = 16, D_ALL = 31 };

static int dump_obj(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    buf *b = arg;
    buf_printf(b, "O%zu:", klen);
    buf_append(b, key, klen);
    buf_printf(b, "=%zu:", vlen);
    buf_append(b, val, vlen);
    return 0;
}

static int dump_key(void *arg, const void *key, size_t klen)
{
    buf *b = arg;
    buf_printf(b, "I%zu:", klen);
    buf_append(b, key, klen);
    return 0;
}

static int dump_client(void *arg, const store_client *c)
{
    buf *b = arg;
    buf_printf(b, "C%llu,%llu,%llu,%u:", (unsigned long long)c->client_id,
               (unsigned long long)c->client_seq, (unsigned long long)c->seq, c->rlen);
    buf_append(b, c->result, c->rlen);
    return 0;
}

static int dump_log(void *arg, uint64_t seq, const void *data, size_t len)
{
    buf *b = arg;
    buf_printf(b, "L%llu,%zu:", (unsigned long long)seq, len);
    buf_append(b, data, len);
    return 0;
}

static void dump_part(store_txn *t, const kv_space *sp, uint32_t part, int what, buf *b)
{
    if (what & D_OBJ) assert_int_equal(store_scan(t, sp->id, part, dump_obj, b), 0);
    if (what & D_IDX) {
        for (uint32_t a = 0; a < sp->schema->nattrs; a++) {
            if (!sp->schema->attrs[a].indexed) continue;
            buf_printf(b, "A%u", a);
            size_t w = obj_index_width(sp->schema->attrs[a].type);
            assert_int_equal(
                store_index_scan(t, sp->id, part, (uint16_t)a, w, NULL, NULL, dump_key, b), 0);
        }
    }
    if (what & D_CLIENT) assert_int_equal(store_client_scan(t, sp->id, part, dump_client, b), 0);
    if (what & D_LOG) assert_int_equal(store_log_scan(t, sp->id, part, 0, dump_log, b), 0);
    if (what & D_META) {
        store_repl_meta m;
        assert_int_equal(store_repl_meta_get(t, sp->id, part, &m), 0);
        store_part_meta pm;
        assert_int_equal(store_part_meta_get(t, sp->id, part, &pm), 0);
        buf_printf(b, "M%llu,%llu,%llu,%llu;P%llu,%llu", (unsigned long long)m.epoch,
                   (unsigned long long)m.applied, (unsigned long long)m.base_seq,
                   (unsigned long long)m.base_epoch, (unsigned long long)pm.seq,
                   (unsigned long long)pm.epoch);
    }
}

/* Every partition of both spaces except (sp, skip) (skip UINT32_MAX: none). */
static void dump_rest(fx *f, store_txn *t, uint32_t skip, buf *b)
{
    for (uint32_t part = 0; part < 4; part++) {
        buf_printf(b, "#%u", part);
        if (part != skip) dump_part(t, f->sp, part, D_ALL, b);
    }
    for (uint32_t part = 0; part < 2; part++) {
        buf_printf(b, "#o%u", part);
        dump_part(t, f->sp_other, part, D_ALL, b);
    }
}

static void dump_store(fx *f, store *st, uint32_t skip, buf *b)
{
    store_txn t;
    assert_int_equal(store_txn_begin(st, false, &t), 0);
    dump_rest(f, &t, skip, b);
    store_txn_abort(&t);
}

static bool buf_eq(const buf *a, const buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* ---- an independent parser of the documented format ---------------------------- */

typedef struct t_obj {
    const uint8_t *key, *val;
    uint32_t klen, vlen;
} t_obj;

typedef struct t_client {
    uint64_t id, cseq, seq;
    const uint8_t *res;
    uint32_t rlen;
} t_client;

typedef struct t_image {
    uint8_t version, flags;
    uint32_t space, part;
    uint64_t seq, seq_epoch, n_obj, n_client, bytes, sum;
    t_obj obj[256];
    t_client cl[16];
} t_image;

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* Decodes a well-formed image (asserting it is one). */
static void t_parse(const buf *img, t_image *x)
{
    const uint8_t *p = (const uint8_t *)img->data;
    assert_true(img->len >= 58);
    x->version = p[0];
    x->flags = p[1];
    x->space = le32(p + 2);
    x->part = le32(p + 6);
    x->seq = le64(p + 10);
    x->seq_epoch = le64(p + 18);
    x->n_obj = le64(p + 26);
    x->n_client = le64(p + 34);
    x->bytes = le64(p + 42);
    assert_true(x->n_obj <= 256 && x->n_client <= 16);
    size_t at = 50;
    for (uint64_t i = 0; i < x->n_obj; i++) {
        assert_int_equal(p[at], 1);
        x->obj[i].klen = le32(p + at + 1);
        x->obj[i].key = p + at + 5;
        at += 5 + x->obj[i].klen;
        x->obj[i].vlen = le32(p + at);
        x->obj[i].val = p + at + 4;
        at += 4 + x->obj[i].vlen;
    }
    for (uint64_t i = 0; i < x->n_client; i++) {
        assert_int_equal(p[at], 2);
        x->cl[i].id = le64(p + at + 1);
        x->cl[i].cseq = le64(p + at + 9);
        x->cl[i].seq = le64(p + at + 17);
        x->cl[i].rlen = le32(p + at + 25);
        x->cl[i].res = p + at + 29;
        at += 29 + x->cl[i].rlen;
    }
    assert_int_equal(at + 8, img->len);
    x->sum = le64(p + at);
}

/* ---- an independent builder (for crafted images) --------------------------------- */

static void w8(buf *b, uint8_t v)
{
    buf_putc(b, (char)v);
}

static void w32(buf *b, uint32_t v)
{
    buf_put_u32le(b, v);
}

static void w64(buf *b, uint64_t v)
{
    buf_put_u64le(b, v);
}

static void b_header(buf *b, uint32_t space, uint32_t part, uint64_t seq, uint64_t epoch,
                     uint64_t nobj, uint64_t ncl)
{
    buf_reset(b);
    w8(b, 1);
    w8(b, 0);
    w32(b, space);
    w32(b, part);
    w64(b, seq);
    w64(b, epoch);
    w64(b, nobj);
    w64(b, ncl);
    w64(b, 0); /* bytes: b_finish */
}

static void b_obj(buf *b, const void *key, uint32_t klen, const void *val, uint32_t vlen)
{
    w8(b, 1);
    w32(b, klen);
    buf_append(b, key, klen);
    w32(b, vlen);
    buf_append(b, val, vlen);
}

static void b_client(buf *b, uint64_t id, uint64_t cseq, uint64_t seq, const char *res)
{
    w8(b, 2);
    w64(b, id);
    w64(b, cseq);
    w64(b, seq);
    w32(b, (uint32_t)strlen(res));
    buf_append(b, res, strlen(res));
}

static void set64(buf *b, size_t at, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b->data[at + (size_t)i] = (char)(v >> (8 * i));
}

/* Patches the size (bytes + extra) and appends the checksum. */
static void b_finish_size(buf *b, int64_t extra)
{
    set64(b, 42, (uint64_t)((int64_t)b->len + 8 + extra));
    w64(b, XXH64(b->data, b->len, 0));
}

static void b_finish(buf *b)
{
    b_finish_size(b, 0);
}

/* Feeds img in chunks of `chunk` bytes to a fresh reader and finishes:
 * returns the first error (or DCOPY_OK). *out (may be NULL) keeps the
 * reader. */
static int read_image(kv_space *sp, uint32_t part, const void *img, size_t len, size_t chunk,
                      size_t max_bytes, dcopy_reader **out)
{
    dcopy_reader *r;
    assert_int_equal(dcopy_reader_new(&r, sp, part, max_bytes), DCOPY_OK);
    dcopy_writer w;
    dcopy_writer_init(&w, img, len, chunk);
    const void *p;
    size_t n;
    uint64_t off;
    int rc = DCOPY_OK;
    while (!rc && dcopy_writer_next(&w, &p, &n, &off))
        rc = dcopy_reader_feed(r, off, p, n);
    if (!rc) rc = dcopy_reader_finish(r, NULL);
    if (out)
        *out = r;
    else
        dcopy_reader_free(r);
    return rc;
}

static int read_buf(fx *f, const buf *b)
{
    return read_image(f->sp, P, b->data, b->len, 7, 1u << 30, NULL);
}

/* ---- snapshot and install ----------------------------------------------------------- */

typedef struct search_case {
    const char *const w[8];
} search_case;

static const search_case SEARCHES[] = {
    {{"SEARCH", "phonebook", "first", "=", "ann"}},
    {{"SEARCH", "phonebook", "first", "=", "zed"}},
    {{"SEARCH", "phonebook", "phone", ">=", "20", "phone", "<", "60"}},
    {{"SEARCH", "phonebook", "last", "=", "L3"}},
    {{"SEARCH", "phonebook", "score", ">", "10"}},
    {{"COUNT", "phonebook"}},
    {{"COUNT", "phonebook", "first", "=", "ann"}},
};

/* The reply of a SEARCH/COUNT over partition part only, NUL-terminated. */
static void search(fx *f, store *st, uint32_t part, const search_case *c, buf *out)
{
    char *argv[8];
    size_t lens[8];
    int argc = 0;
    while (argc < 8 && c->w[argc]) {
        argv[argc] = (char *)c->w[argc];
        lens[argc] = strlen(c->w[argc]);
        argc++;
    }
    kv_op *op;
    buf err;
    buf_init(&err);
    assert_int_equal(kv_parse(f->cs, f->sp, argc, argv, lens, STORE_MAX_KEY, &op, &err), 0);
    buf_free(&err);
    op->one_part = true;
    op->only_part = part;
    store_txn t;
    assert_int_equal(store_txn_begin(st, false, &t), 0);
    buf_reset(out);
    assert_int_equal(kv_exec(&t, op, out), 0);
    store_txn_abort(&t);
    kv_op_free(op);
    buf_putc(out, 0);
    out->len--;
}

/* Installs f->image into dst in one committed transaction. */
static void install_image(fx *f, bool keep_log, store_repl_meta *meta)
{
    dcopy_reader *r;
    assert_int_equal(read_image(f->sp, P, f->image.data, f->image.len, 4096, 1u << 30, &r),
                     DCOPY_OK);
    store_txn t;
    assert_int_equal(store_txn_begin(f->dst, true, &t), 0);
    assert_int_equal(dcopy_install(&t, r, keep_log, meta), 0);
    assert_int_equal(store_txn_commit(&t), 0);
    dcopy_reader_free(r);
}

static void test_snapshot_reflects_applied_state(void **state)
{
    fx *f = *state;
    assert_int_equal(f->seq, 15);
    assert_int_equal(f->seq_epoch, src_epoch(15));
    t_image x;
    t_parse(&f->image, &x);
    assert_int_equal(x.version, DCOPY_VERSION);
    assert_int_equal(x.flags, 0);
    assert_int_equal(x.space, f->sp->id);
    assert_int_equal(x.part, P);
    assert_int_equal(x.seq, 15);
    assert_int_equal(x.seq_epoch, 3);
    assert_int_equal(x.bytes, f->image.len);
    assert_int_equal(x.sum, XXH64(f->image.data, f->image.len - 8, 0));
    /* exactly the partition's objects, in key order, with their stored bytes */
    store_txn t;
    assert_int_equal(store_txn_begin(f->src, false, &t), 0);
    uint64_t n;
    assert_int_equal(store_count(&t, f->sp->id, P, &n), 0);
    assert_true(n >= 10);
    assert_int_equal(x.n_obj, n);
    for (uint64_t i = 0; i < x.n_obj; i++) {
        const void *v;
        size_t vlen;
        assert_int_equal(store_obj_get(&t, f->sp->id, P, x.obj[i].key, x.obj[i].klen, &v, &vlen),
                         0);
        assert_int_equal(vlen, x.obj[i].vlen);
        assert_memory_equal(v, x.obj[i].val, vlen);
        assert_int_equal(cmap_partition_of(f->cs, x.obj[i].key, x.obj[i].klen), P);
        if (i) {
            size_t a = x.obj[i - 1].klen, b = x.obj[i].klen;
            int c = memcmp(x.obj[i - 1].key, x.obj[i].key, a < b ? a : b);
            assert_true(c < 0 || (c == 0 && a < b));
        }
    }
    store_txn_abort(&t);
    assert_int_equal(x.n_client, 3);
    assert_int_equal(x.cl[0].id, 7);
    assert_int_equal(x.cl[0].cseq, 3);
    assert_int_equal(x.cl[0].seq, 12);
    assert_int_equal(x.cl[0].rlen, 5);
    assert_memory_equal(x.cl[0].res, "+OK\r\n", 5);
    assert_int_equal(x.cl[1].id, 9);
    assert_int_equal(x.cl[1].rlen, 0);
    assert_int_equal(x.cl[2].id, 0x1234567890ull);
    assert_int_equal(x.cl[2].cseq, 44);
    /* appended: what was in out stays */
    buf b;
    buf_init(&b);
    buf_puts(&b, "prefix");
    uint64_t s, e;
    assert_int_equal(dcopy_snapshot(f->src, f->sp, P, &s, &e, &b), 0);
    assert_int_equal(b.len, 6 + f->image.len);
    assert_memory_equal(b.data, "prefix", 6);
    assert_memory_equal(b.data + 6, f->image.data, f->image.len);
    buf_free(&b);
}

static void test_install_replaces_partition_and_nothing_else(void **state)
{
    fx *f = *state;
    buf before, after;
    buf_init(&before);
    buf_init(&after);
    dump_store(f, f->dst, P, &before);
    /* stale rows are visible before */
    buf reply;
    buf_init(&reply);
    search(f, f->dst, P, &SEARCHES[1], &reply);
    assert_string_not_equal(reply.data, "*0\r\n");

    store_repl_meta meta;
    install_image(f, false, &meta);
    assert_int_equal(meta.epoch, 9); /* the replica's own epoch is kept */
    assert_int_equal(meta.applied, 15);
    assert_int_equal(meta.base_seq, 15);
    assert_int_equal(meta.base_epoch, 3);

    dump_store(f, f->dst, P, &after);
    assert_true(buf_eq(&before, &after)); /* every other partition and space */

    /* objects, index entries and client rows equal the source's */
    buf a, b;
    buf_init(&a);
    buf_init(&b);
    store_txn ts, td;
    assert_int_equal(store_txn_begin(f->src, false, &ts), 0);
    assert_int_equal(store_txn_begin(f->dst, false, &td), 0);
    dump_part(&ts, f->sp, P, D_OBJ | D_IDX | D_CLIENT, &a);
    dump_part(&td, f->sp, P, D_OBJ | D_IDX | D_CLIENT, &b);
    assert_true(a.len > 100);
    assert_true(buf_eq(&a, &b));
    /* the log is gone (keep_log false), the metadata is the snapshot's */
    buf_reset(&b);
    dump_part(&td, f->sp, P, D_LOG | D_META, &b);
    buf_putc(&b, 0);
    assert_string_equal(b.data, "M9,15,15,3;P0,0");
    store_txn_abort(&ts);
    store_txn_abort(&td);

    /* SEARCH and COUNT answer the same on both */
    buf r2;
    buf_init(&r2);
    for (size_t i = 0; i < sizeof SEARCHES / sizeof SEARCHES[0]; i++) {
        search(f, f->src, P, &SEARCHES[i], &reply);
        search(f, f->dst, P, &SEARCHES[i], &r2);
        assert_string_equal(reply.data, r2.data);
    }
    search(f, f->dst, P, &SEARCHES[1], &reply); /* first = zed: only stale rows had it */
    assert_string_equal(reply.data, "*0\r\n");
    search(f, f->dst, P, &SEARCHES[0], &reply);
    assert_string_not_equal(reply.data, "*0\r\n");

    /* installing the same image again changes nothing */
    install_image(f, false, NULL);
    buf_reset(&a);
    dump_store(f, f->dst, UINT32_MAX, &a);
    buf_reset(&b);
    install_image(f, false, NULL);
    dump_store(f, f->dst, UINT32_MAX, &b);
    assert_true(buf_eq(&a, &b));

    buf_free(&before);
    buf_free(&after);
    buf_free(&a);
    buf_free(&b);
    buf_free(&reply);
    buf_free(&r2);
}

typedef struct load {
    repl_entry e[64];
    buf mem[64];
    size_t n;
    repl_client c[16];
    buf cmem[16];
    size_t nc;
} load;

static int load_entry(void *arg, uint64_t seq, const void *data, size_t len)
{
    load *x = arg;
    assert_true(x->n < 64);
    buf_init(&x->mem[x->n]);
    buf_append(&x->mem[x->n], data, len);
    assert_int_equal(repl_entry_decode(x->mem[x->n].data, len, &x->e[x->n]), 0);
    assert_int_equal(x->e[x->n].seq, seq);
    x->n++;
    return 0;
}

static int load_client(void *arg, const store_client *c)
{
    load *x = arg;
    assert_true(x->nc < 16);
    buf_init(&x->cmem[x->nc]);
    buf_append(&x->cmem[x->nc], c->result, c->rlen);
    x->c[x->nc] = (repl_client){c->client_id, c->client_seq, c->seq, c->rlen,
                                c->rlen ? (const uint8_t *)x->cmem[x->nc].data : NULL};
    x->nc++;
    return 0;
}

/* Loads a partition the way the daemon does at start-up and hands it to
 * repl_new: REPL_OK means the persisted state is consistent. */
static int restart(store *st, uint32_t space, uint32_t part, load *x, store_repl_meta *m)
{
    memset(x, 0, sizeof *x);
    store_txn t;
    assert_int_equal(store_txn_begin(st, false, &t), 0);
    assert_int_equal(store_repl_meta_get(&t, space, part, m), 0);
    assert_int_equal(store_log_scan(&t, space, part, m->base_seq + 1, load_entry, x), 0);
    assert_int_equal(store_client_scan(&t, space, part, load_client, x), 0);
    store_txn_abort(&t);
    repl_opts o;
    repl_opts_init(&o, 2, space, part);
    repl_persisted ps = {.epoch = m->epoch,
                         .applied = m->applied,
                         .base_seq = m->base_seq,
                         .base_epoch = m->base_epoch,
                         .entries = x->e,
                         .n_entries = x->n,
                         .clients = x->c,
                         .n_clients = x->nc};
    repl_part *rp;
    int rc = repl_new(&o, &ps, &rp);
    if (!rc) repl_free(rp);
    for (size_t i = 0; i < x->n; i++)
        buf_free(&x->mem[i]);
    for (size_t i = 0; i < x->nc; i++)
        buf_free(&x->cmem[i]);
    return rc;
}

static void test_install_keep_log_keeps_entries_after_seq(void **state)
{
    fx *f = *state;
    /* the replica holds entries 12..19 of the same history (epochs match) */
    store_txn t;
    assert_int_equal(store_txn_begin(f->dst, true, &t), 0);
    assert_int_equal(store_log_delete_from(&t, f->sp->id, P, 0), 0);
    for (uint64_t s = 12; s <= 19; s++)
        put_entry(&t, f->sp->id, P, s, src_epoch(s));
    store_repl_meta m0 = {.epoch = 4, .applied = 11, .base_seq = 11, .base_epoch = 2};
    assert_int_equal(store_repl_meta_put(&t, f->sp->id, P, &m0), 0);
    assert_int_equal(store_txn_commit(&t), 0);
    buf want;
    buf_init(&want);
    assert_int_equal(store_txn_begin(f->dst, false, &t), 0);
    assert_int_equal(store_log_scan(&t, f->sp->id, P, 16, dump_log, &want), 0);
    store_txn_abort(&t);
    assert_true(want.len > 0);

    store_repl_meta meta;
    install_image(f, true, &meta);
    assert_int_equal(meta.epoch, 4);
    assert_int_equal(meta.applied, 15);

    buf got;
    buf_init(&got);
    assert_int_equal(store_txn_begin(f->dst, false, &t), 0);
    assert_int_equal(store_log_scan(&t, f->sp->id, P, 0, dump_log, &got), 0);
    uint64_t first, last;
    assert_int_equal(store_log_bounds(&t, f->sp->id, P, &first, &last), 0);
    store_txn_abort(&t);
    assert_int_equal(first, 16);
    assert_int_equal(last, 19);
    assert_true(buf_eq(&want, &got));

    /* the persisted result is what repl_new accepts after a restart */
    load x;
    store_repl_meta m;
    assert_int_equal(restart(f->dst, f->sp->id, P, &x, &m), REPL_OK);
    assert_int_equal(x.n, 4);
    assert_int_equal(x.nc, 3);
    assert_int_equal(m.applied, 15);

    /* without keep_log the same install drops the whole log */
    install_image(f, false, NULL);
    assert_int_equal(store_txn_begin(f->dst, false, &t), 0);
    assert_int_equal(store_log_bounds(&t, f->sp->id, P, &first, &last), MDB_NOTFOUND);
    store_txn_abort(&t);
    assert_int_equal(restart(f->dst, f->sp->id, P, &x, &m), REPL_OK);
    assert_int_equal(x.n, 0);
    buf_free(&want);
    buf_free(&got);
}

/* The epoch of `applied` comes from the log base when the log is compacted
 * through it, and bad stored state is refused with out unchanged. */
static void test_snapshot_epoch_and_refusals(void **state)
{
    fx *f = *state;
    uint32_t sp = f->sp->id;
    struct {
        store_repl_meta m;
        int rc;
        uint64_t epoch;
    } cases[] = {
        {{4, 10, 10, 2}, 0, 2},             /* applied == base: base_epoch */
        {{4, 20, 10, 2}, 0, 4},             /* the last stored entry */
        {{4, 11, 10, 2}, 0, 2},             /* the first one */
        {{4, 0, 0, 0}, MDB_NOTFOUND, 0},    /* nothing applied */
        {{4, 9, 10, 2}, MDB_CORRUPTED, 0},  /* applied below the base */
        {{4, 21, 10, 2}, MDB_CORRUPTED, 0}, /* entry missing */
        {{4, 10, 10, 0}, MDB_CORRUPTED, 0}, /* base without its epoch */
    };
    buf out;
    buf_init(&out);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        store_txn t;
        assert_int_equal(store_txn_begin(f->src, true, &t), 0);
        assert_int_equal(store_client_delete_all(&t, sp, P), 0); /* rows name seqs up to 15 */
        assert_int_equal(store_repl_meta_put(&t, sp, P, &cases[i].m), 0);
        buf_reset(&out);
        buf_puts(&out, "x");
        uint64_t s = 77, e = 77;
        int rc = dcopy_snapshot_txn(&t, f->sp, P, &s, &e, &out);
        assert_int_equal(rc, cases[i].rc);
        if (rc == 0) {
            assert_int_equal(s, cases[i].m.applied);
            assert_int_equal(e, cases[i].epoch);
            assert_true(out.len > 1 + 58);
        } else {
            assert_int_equal(out.len, 1);
            assert_int_equal(s, 77);
            assert_int_equal(e, 77);
        }
        store_txn_abort(&t);
    }
    /* undecodable entry at applied; an entry stored under another seq */
    store_txn t;
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    assert_int_equal(store_log_put(&t, sp, P, 15, "junk", 4), 0);
    uint64_t s, e;
    buf_reset(&out);
    assert_int_equal(dcopy_snapshot_txn(&t, f->sp, P, &s, &e, &out), MDB_CORRUPTED);
    assert_int_equal(out.len, 0);
    store_txn_abort(&t);
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    put_entry(&t, sp, P, 99, 3);
    const void *d;
    size_t dl;
    assert_int_equal(store_log_get(&t, sp, P, 99, &d, &dl), 0);
    buf copy;
    buf_init(&copy);
    buf_append(&copy, d, dl);
    assert_int_equal(store_log_put(&t, sp, P, 15, copy.data, copy.len), 0);
    assert_int_equal(dcopy_snapshot_txn(&t, f->sp, P, &s, &e, &out), MDB_CORRUPTED);
    store_txn_abort(&t);
    buf_free(&copy);
    /* a stored object that does not decode against the schema */
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    obj_value v[4];
    obj_zero(f->sp->schema, v);
    assert_int_equal(store_obj_put(&t, f->sp->schema, sp, P, "bad", 3, NULL, v, "\x01\x00", 2), 0);
    assert_int_equal(dcopy_snapshot_txn(&t, f->sp, P, &s, &e, &out), MDB_CORRUPTED);
    assert_int_equal(out.len, 0);
    store_txn_abort(&t);
    /* a client row beyond applied */
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    put_client(&t, sp, P, 3, 1, 16, "");
    assert_int_equal(dcopy_snapshot_txn(&t, f->sp, P, &s, &e, &out), MDB_CORRUPTED);
    assert_int_equal(out.len, 0);
    store_txn_abort(&t);
    /* an empty partition with applied state: header and trailer only */
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    assert_int_equal(store_part_clear(&t, sp, 1), 0);
    store_repl_meta m = {.epoch = 1, .applied = 3, .base_seq = 3, .base_epoch = 1};
    assert_int_equal(store_repl_meta_put(&t, sp, 1, &m), 0);
    assert_int_equal(dcopy_snapshot_txn(&t, f->sp, 1, &s, &e, &out), 0);
    assert_int_equal(out.len, 58);
    store_txn_abort(&t);
    dcopy_reader *r;
    assert_int_equal(read_image(f->sp, 1, out.data, out.len, 1, 58, &r), DCOPY_OK);
    const repl_client *rows;
    size_t n;
    assert_int_equal(dcopy_reader_clients(r, &rows, &n), DCOPY_OK);
    assert_int_equal(n, 0);
    dcopy_reader_free(r);
    buf_free(&out);
}

/* ---- chunking, truncation, corruption ------------------------------------------------ */

static void check_reader_result(fx *f, dcopy_reader *r)
{
    dcopy_header h;
    assert_int_equal(dcopy_reader_finish(r, &h), DCOPY_OK);
    t_image x;
    t_parse(&f->image, &x);
    assert_int_equal(h.space, f->sp->id);
    assert_int_equal(h.part, P);
    assert_int_equal(h.seq, 15);
    assert_int_equal(h.seq_epoch, 3);
    assert_int_equal(h.n_objects, x.n_obj);
    assert_int_equal(h.n_clients, 3);
    assert_int_equal(h.bytes, f->image.len);
    const repl_client *rows;
    size_t n;
    assert_int_equal(dcopy_reader_clients(r, &rows, &n), DCOPY_OK);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rows[i].client_id, x.cl[i].id);
        assert_int_equal(rows[i].client_seq, x.cl[i].cseq);
        assert_int_equal(rows[i].seq, x.cl[i].seq);
        assert_int_equal(rows[i].rlen, x.cl[i].rlen);
        if (rows[i].rlen)
            assert_memory_equal(rows[i].result, x.cl[i].res, rows[i].rlen);
        else
            assert_null(rows[i].result);
    }
    uint64_t got, total;
    dcopy_reader_progress(r, &got, &total);
    assert_int_equal(got, f->image.len);
    assert_int_equal(total, f->image.len);
}

static void test_chunked_round_trip_every_chunk_size(void **state)
{
    fx *f = *state;
    size_t len = f->image.len;
    assert_true(len > 1000);
    for (size_t chunk = 1; chunk <= len + 1; chunk++) {
        dcopy_writer w;
        dcopy_writer_init(&w, f->image.data, len, chunk);
        dcopy_reader *r;
        assert_int_equal(dcopy_reader_new(&r, f->sp, P, len), DCOPY_OK);
        const void *p;
        size_t n;
        uint64_t off, expect = 0;
        while (dcopy_writer_next(&w, &p, &n, &off)) {
            assert_int_equal(off, expect);
            assert_true(n >= 1 && n <= chunk);
            assert_ptr_equal(p, f->image.data + off);
            expect += n;
            assert_int_equal(dcopy_writer_left(&w), len - expect);
            assert_int_equal(dcopy_reader_feed(r, off, p, n), DCOPY_OK);
            uint64_t got, total;
            dcopy_reader_progress(r, &got, &total);
            assert_int_equal(got, expect);
            assert_int_equal(total, expect >= 50 ? len : 0);
            if (expect < len) assert_int_equal(dcopy_reader_finish(r, NULL), DCOPY_EINCOMPLETE);
        }
        assert_int_equal(expect, len);
        assert_false(dcopy_writer_next(&w, &p, &n, &off));
        check_reader_result(f, r);
        if (chunk == 1 || chunk == 13 || chunk == len) {
            /* and it installs the same as a one-piece read */
            store_txn t;
            assert_int_equal(store_txn_begin(f->dst, true, &t), 0);
            assert_int_equal(dcopy_install(&t, r, false, NULL), 0);
            buf a, b;
            buf_init(&a);
            buf_init(&b);
            dump_part(&t, f->sp, P, D_OBJ | D_IDX | D_CLIENT, &a);
            store_txn ts;
            assert_int_equal(store_txn_begin(f->src, false, &ts), 0);
            dump_part(&ts, f->sp, P, D_OBJ | D_IDX | D_CLIENT, &b);
            store_txn_abort(&ts);
            assert_true(buf_eq(&a, &b));
            buf_free(&a);
            buf_free(&b);
            store_txn_abort(&t);
        }
        dcopy_reader_free(r);
    }
    /* zero-length feeds are harmless; an empty image yields no chunk */
    dcopy_reader *r;
    assert_int_equal(dcopy_reader_new(&r, f->sp, P, len), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 0, NULL, 0), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, len), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, len, NULL, 0), DCOPY_OK);
    check_reader_result(f, r);
    dcopy_reader_free(r);
    dcopy_writer w;
    dcopy_writer_init(&w, NULL, 0, 5);
    const void *p;
    size_t n;
    uint64_t off;
    assert_false(dcopy_writer_next(&w, &p, &n, &off));
    assert_int_equal(dcopy_writer_left(&w), 0);
}

/* Nothing of a refused copy reaches the store: install refuses before
 * touching t, and the replica's partition keeps its old state. */
static void check_refused_install(dcopy_reader *r, int want, store_txn *t)
{
    assert_int_equal(dcopy_install(t, r, false, NULL), want);
    assert_int_equal(dcopy_install(t, r, true, NULL), want);
    const repl_client *rows = (const repl_client *)(uintptr_t)1;
    size_t n = 99;
    assert_int_equal(dcopy_reader_clients(r, &rows, &n), want);
    assert_null(rows);
    assert_int_equal(n, 0);
}

static void test_every_truncated_prefix_is_incomplete(void **state)
{
    fx *f = *state;
    buf before, after;
    buf_init(&before);
    buf_init(&after);
    dump_store(f, f->dst, UINT32_MAX, &before);
    store_txn t;
    assert_int_equal(store_txn_begin(f->dst, true, &t), 0);
    for (size_t k = 0; k < f->image.len; k++) {
        dcopy_reader *r;
        assert_int_equal(dcopy_reader_new(&r, f->sp, P, 1u << 20), DCOPY_OK);
        assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, k), DCOPY_OK);
        assert_int_equal(dcopy_reader_finish(r, NULL), DCOPY_EINCOMPLETE);
        dcopy_header h;
        assert_int_equal(dcopy_reader_header(r, &h), k >= 50 ? DCOPY_OK : DCOPY_EINCOMPLETE);
        if (k >= 50) assert_int_equal(h.seq, 15);
        check_refused_install(r, DCOPY_EINCOMPLETE, &t);
        dcopy_reader_free(r);
    }
    assert_int_equal(store_txn_commit(&t), 0);
    dump_store(f, f->dst, UINT32_MAX, &after);
    assert_true(buf_eq(&before, &after));
    buf_free(&before);
    buf_free(&after);
}

static void test_every_corrupted_byte_is_refused(void **state)
{
    fx *f = *state;
    buf before, after, bad;
    buf_init(&before);
    buf_init(&after);
    buf_init(&bad);
    dump_store(f, f->dst, UINT32_MAX, &before);
    store_txn t;
    assert_int_equal(store_txn_begin(f->dst, true, &t), 0);
    static const uint8_t flips[] = {0x01, 0x80, 0xff};
    size_t n_checksum = 0;
    for (size_t i = 0; i < f->image.len; i++) {
        for (size_t j = 0; j < sizeof flips; j++) {
            buf_reset(&bad);
            buf_append(&bad, f->image.data, f->image.len);
            bad.data[i] ^= (char)flips[j];
            dcopy_reader *r;
            size_t chunk = 1 + (i * 7 + j) % 300;
            int rc = read_image(f->sp, P, bad.data, bad.len, chunk, 1u << 20, &r);
            assert_true(rc < 0);
            if (rc == DCOPY_ECHECKSUM) n_checksum++;
            /* the first error is sticky, and nothing can be installed */
            assert_int_equal(dcopy_reader_finish(r, NULL), rc);
            check_refused_install(r, rc, &t);
            dcopy_reader_free(r);
        }
    }
    /* corruption inside keys, values and results is caught by the checksum */
    assert_true(n_checksum > f->image.len);
    /* a byte too many after a complete image */
    buf_reset(&bad);
    buf_append(&bad, f->image.data, f->image.len);
    buf_putc(&bad, 0);
    assert_int_equal(read_buf(f, &bad), DCOPY_EDECODE);
    dcopy_reader *r;
    assert_int_equal(dcopy_reader_new(&r, f->sp, P, 1u << 20), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, f->image.len), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, f->image.len, "x", 1), DCOPY_EDECODE);
    assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, 1), DCOPY_EDECODE);
    /* a complete image is immutable: the stray bytes are refused, it stays valid */
    check_reader_result(f, r);
    dcopy_reader_free(r);
    assert_int_equal(store_txn_commit(&t), 0);
    dump_store(f, f->dst, UINT32_MAX, &after);
    assert_true(buf_eq(&before, &after));
    buf_free(&before);
    buf_free(&after);
    buf_free(&bad);
}

static void test_random_garbage_is_refused(void **state)
{
    fx *f = *state;
    srand(12345);
    buf g;
    buf_init(&g);
    for (int round = 0; round < 3000; round++) {
        buf_reset(&g);
        size_t len = (size_t)(rand() % 400);
        /* half the rounds start with a plausible header */
        if (round % 2 && len >= 10) {
            b_header(&g, f->sp->id, P, 1 + (uint64_t)(rand() % 100), 1, (uint64_t)(rand() % 4),
                     (uint64_t)(rand() % 3));
            set64(&g, 42, 50 + (uint64_t)(rand() % 400));
            if (len > g.len) len -= g.len;
        }
        for (size_t i = 0; i < len; i++)
            buf_putc(&g, (char)rand());
        int rc = read_image(f->sp, P, g.data, g.len, 1 + (size_t)(rand() % 64), 1u << 20, NULL);
        assert_true(rc < 0);
    }
    buf_free(&g);
}

/* Crafted images with a valid checksum, each breaking one rule. */
static void test_crafted_images_are_refused(void **state)
{
    fx *f = *state;
    uint32_t sp = f->sp->id;
    buf val, b;
    buf_init(&val);
    buf_init(&b);
    enc_phone(f->sp, "ann", "L", 1, 0.5, &val);
    const uint32_t vl = (uint32_t)val.len;

    /* a valid baseline */
    b_header(&b, sp, P, 5, 2, 2, 2);
    b_obj(&b, "a", 1, val.data, vl);
    b_obj(&b, "ab", 2, val.data, vl);
    b_client(&b, 1, 1, 5, "+OK\r\n");
    b_client(&b, 2, 3, 1, "");
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_OK);
    /* max_bytes exactly the size is enough, one less is not */
    assert_int_equal(read_image(f->sp, P, b.data, b.len, 3, b.len, NULL), DCOPY_OK);
    assert_int_equal(read_image(f->sp, P, b.data, b.len, 3, b.len - 1, NULL), DCOPY_ETOOBIG);

    /* header fields */
    b_header(&b, sp, P, 5, 2, 0, 0);
    b.data[0] = 2;
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 0);
    b.data[1] = 1;
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp + 1, P, 5, 2, 0, 0);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EMISMATCH);
    b_header(&b, sp, P + 1, 5, 2, 0, 0);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EMISMATCH);
    b_header(&b, sp, P, 0, 2, 0, 0);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 0, 0, 0);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 0);
    b_finish_size(&b, -1); /* size below header + trailer */
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 0);
    b_finish_size(&b, 2000); /* size above max_bytes */
    assert_int_equal(read_image(f->sp, P, b.data, b.len, 3, 1000, NULL), DCOPY_ETOOBIG);
    b_header(&b, sp, P, 5, 2, 1, 0); /* a size no memory can hold */
    set64(&b, 42, 1ull << 62);
    w8(&b, 1);
    assert_int_equal(read_image(f->sp, P, b.data, b.len, 64, SIZE_MAX, NULL), DCOPY_ETOOBIG);
    b_header(&b, sp, P, 5, 2, 100, 0); /* counts that cannot fit the size */
    b_finish_size(&b, 100 * 9 - 1);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 10);
    b_finish_size(&b, 10 * 29 - 1);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, UINT64_MAX, UINT64_MAX);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);

    /* object records */
    b_header(&b, sp, P, 5, 2, 1, 0);
    b_client(&b, 1, 1, 1, ""); /* a client where an object belongs */
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 1, 0);
    w8(&b, 1);
    w32(&b, STORE_MAX_KEY + 1);
    for (int i = 0; i < STORE_MAX_KEY + 1; i++)
        w8(&b, 'k');
    w32(&b, vl);
    buf_append(&b, val.data, vl);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 1, 0);
    w8(&b, 1);
    w32(&b, 1000); /* key running past the records */
    w8(&b, 'k');
    w32(&b, 0);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 1, 0);
    w8(&b, 1);
    w32(&b, 1);
    w8(&b, 'k');
    w32(&b, REPL_MAX_VALUE + 1);
    buf_append(&b, val.data, vl);
    b_finish_size(&b, REPL_MAX_VALUE);
    assert_int_equal(read_image(f->sp, P, b.data, b.len, 64, 1u << 30, NULL), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 1, 0);
    b_obj(&b, "k", 1, val.data, vl - 1); /* does not decode against the schema */
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 1, 0);
    b_obj(&b, "k", 1, "\x01\x00\x01\x01", 4); /* one value for four attributes */
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    static const char *const order[][2] = {{"b", "a"}, {"a", "a"}, {"ab", "a"}, {"b", "ab"}};
    for (size_t i = 0; i < 4; i++) {
        b_header(&b, sp, P, 5, 2, 2, 0);
        b_obj(&b, order[i][0], (uint32_t)strlen(order[i][0]), val.data, vl);
        b_obj(&b, order[i][1], (uint32_t)strlen(order[i][1]), val.data, vl);
        b_finish(&b);
        assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    }
    b_header(&b, sp, P, 5, 2, 2, 0); /* an empty key sorts first and is fine */
    b_obj(&b, "", 0, val.data, vl);
    b_obj(&b, "\x00", 1, val.data, vl);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_OK);

    /* client records */
    struct {
        uint64_t id, cseq, seq;
    } bad_clients[] = {{0, 1, 1}, {1, 0, 1}, {1, 1, 0}, {1, 1, 6}};
    for (size_t i = 0; i < 4; i++) {
        b_header(&b, sp, P, 5, 2, 0, 1);
        b_client(&b, bad_clients[i].id, bad_clients[i].cseq, bad_clients[i].seq, "");
        b_finish(&b);
        assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    }
    b_header(&b, sp, P, 5, 2, 0, 1);
    b_obj(&b, "k", 1, val.data, vl); /* an object where a client belongs */
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 2);
    b_client(&b, 4, 1, 1, "");
    b_client(&b, 4, 2, 2, ""); /* the same client twice */
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 2);
    b_client(&b, 4, 1, 1, "");
    b_client(&b, 3, 2, 2, ""); /* out of order */
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 1);
    w8(&b, 2);
    w64(&b, 1);
    w64(&b, 1);
    w64(&b, 1);
    w32(&b, REPL_MAX_RESULT + 1);
    for (uint32_t i = 0; i < REPL_MAX_RESULT + 1; i++)
        w8(&b, 'r');
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 0, 1);
    w8(&b, 2);
    w64(&b, 1);
    w64(&b, 1);
    w64(&b, 1);
    w32(&b, 50); /* result running past the records */
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);

    /* sizes: bytes no record claims; fewer bytes than announced */
    b_header(&b, sp, P, 5, 2, 1, 0);
    b_obj(&b, "k", 1, val.data, vl);
    w8(&b, 0);
    b_finish(&b);
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 1, 0);
    b_obj(&b, "k", 1, val.data, vl);
    b_finish_size(&b, 5); /* announces 5 bytes that no record claims */
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);
    b_header(&b, sp, P, 5, 2, 1, 0);
    b_obj(&b, "k", 1, val.data, vl);
    b_finish_size(&b, -3); /* announces fewer: the last bytes are too many */
    assert_int_equal(read_buf(f, &b), DCOPY_EDECODE);

    /* checksum */
    b_header(&b, sp, P, 5, 2, 1, 0);
    b_obj(&b, "k", 1, val.data, vl);
    b_finish(&b);
    b.data[b.len - 1] ^= 1;
    assert_int_equal(read_buf(f, &b), DCOPY_ECHECKSUM);
    b.data[b.len - 1] ^= 1;
    b.data[55] ^= 0x20; /* inside the key: decodes fine, the sum catches it */
    assert_int_equal(read_buf(f, &b), DCOPY_ECHECKSUM);
    buf_free(&val);
    buf_free(&b);
}

static void test_reader_arguments_and_order(void **state)
{
    fx *f = *state;
    dcopy_reader *r = (dcopy_reader *)(uintptr_t)1;
    assert_int_equal(dcopy_reader_new(&r, f->sp, P, 57), DCOPY_EINVAL);
    assert_null(r);
    assert_int_equal(dcopy_reader_new(&r, NULL, P, 1000), DCOPY_EINVAL);
    assert_int_equal(dcopy_reader_new(&r, f->sp, P, 1u << 20), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, 10), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 11, f->image.data + 10, 10), DCOPY_EORDER);
    /* sticky: the right offset is refused too now */
    assert_int_equal(dcopy_reader_feed(r, 10, f->image.data + 10, 10), DCOPY_EORDER);
    assert_int_equal(dcopy_reader_finish(r, NULL), DCOPY_EORDER);
    assert_int_equal(dcopy_reader_header(r, NULL), DCOPY_EORDER);
    dcopy_reader_free(r);
    /* a repeated chunk (offset behind) */
    assert_int_equal(dcopy_reader_new(&r, f->sp, P, 1u << 20), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, 100), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, 100), DCOPY_EORDER);
    dcopy_reader_free(r);
    assert_int_equal(dcopy_reader_new(&r, f->sp, P, 1u << 20), DCOPY_OK);
    assert_int_equal(dcopy_reader_feed(r, 0, NULL, 3), DCOPY_EINVAL);
    assert_int_equal(dcopy_reader_finish(r, NULL), DCOPY_EINVAL);
    dcopy_reader_free(r);
    dcopy_reader_free(NULL);
    /* the reader holds its own reference on the space */
    kv_space *sp = kv_space_new(f->sp->id, f->sp->schema);
    assert_int_equal(dcopy_reader_new(&r, sp, P, 1u << 20), DCOPY_OK);
    kv_space_unref(sp);
    assert_int_equal(dcopy_reader_feed(r, 0, f->image.data, f->image.len), DCOPY_OK);
    check_reader_result(f, r);
    dcopy_reader_free(r);
}

static void test_strerror_names_every_code(void **state)
{
    (void)state;
    assert_string_equal(dcopy_strerror(DCOPY_OK), "ok");
    assert_string_equal(dcopy_strerror(DCOPY_EDECODE), "malformed copy image");
    assert_string_equal(dcopy_strerror(DCOPY_ECHECKSUM), "copy image checksum mismatch");
    assert_string_equal(dcopy_strerror(DCOPY_EMISMATCH), "copy image of another partition");
    assert_string_equal(dcopy_strerror(DCOPY_ETOOBIG), "copy image larger than allowed");
    assert_string_equal(dcopy_strerror(DCOPY_EORDER), "copy chunk out of order");
    assert_string_equal(dcopy_strerror(DCOPY_EINCOMPLETE), "copy image incomplete");
    assert_string_equal(dcopy_strerror(DCOPY_EINVAL), "invalid argument");
    assert_string_equal(dcopy_strerror(-99), "unknown copy error");
    assert_string_equal(dcopy_strerror(MDB_MAP_FULL), mdb_strerror(MDB_MAP_FULL));
}

/* A storage error in the middle of an install: the caller aborts and the
 * replica is exactly as before. */
static void test_install_storage_error_installs_nothing(void **state)
{
    fx *f = *state;
    char dir[64];
    store *small = open_store(dir, 1u << 20);
    store_txn t;
    assert_int_equal(store_txn_begin(small, true, &t), 0);
    put_phone(&t, f->sp, P, "old", "ann", "O", 1, 1.0);
    store_repl_meta m = {.epoch = 2, .applied = 3, .base_seq = 3, .base_epoch = 1};
    assert_int_equal(store_repl_meta_put(&t, f->sp->id, P, &m), 0);
    assert_int_equal(store_txn_commit(&t), 0);
    buf before, after;
    buf_init(&before);
    buf_init(&after);
    dump_store(f, small, UINT32_MAX, &before);

    /* an image bigger than the whole map */
    buf big, val;
    buf_init(&big);
    buf_init(&val);
    char *s = malloc(100000);
    assert_non_null(s);
    memset(s, 'x', 99999);
    s[99999] = 0;
    enc_phone(f->sp, s, "L", 1, 0.5, &val);
    b_header(&big, f->sp->id, P, 9, 3, 20, 0);
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%02d", i);
        b_obj(&big, key, 3, val.data, (uint32_t)val.len);
    }
    b_finish(&big);
    dcopy_reader *r;
    assert_int_equal(read_image(f->sp, P, big.data, big.len, 65536, 1u << 30, &r), DCOPY_OK);
    assert_int_equal(store_txn_begin(small, true, &t), 0);
    store_repl_meta out = {0};
    assert_int_equal(dcopy_install(&t, r, false, &out), MDB_MAP_FULL);
    assert_int_equal(out.applied, 0); /* not filled on error */
    store_txn_abort(&t);
    dump_store(f, small, UINT32_MAX, &after);
    assert_true(buf_eq(&before, &after));
    dcopy_reader_free(r);
    free(s);
    buf_free(&big);
    buf_free(&val);
    buf_free(&before);
    buf_free(&after);
    close_store(small, dir);
}

/* ---- consistency while writes continue ------------------------------------------------ */

/* One more applied write in P: an object changed, one added, one deleted, a
 * client row, the log entry and the metadata. */
static void write_next(fx *f, store_txn *t, uint64_t seq)
{
    char key[32];
    snprintf(key, sizeof key, "new%llu", (unsigned long long)seq);
    put_phone(t, f->sp, P, key, "new", "N", (int64_t)seq, 0.0);
    t_image x;
    t_parse(&f->image, &x);
    assert_int_equal(kv_apply_del(t, f->sp, P, x.obj[0].key, x.obj[0].klen), 0);
    char k1[64];
    memcpy(k1, x.obj[1].key, x.obj[1].klen);
    k1[x.obj[1].klen] = 0;
    put_phone(t, f->sp, P, k1, "changed", "C", 1, 1.0);
    put_client(t, f->sp->id, P, 7, 4, seq, "+NEW\r\n");
    put_entry(t, f->sp->id, P, seq, 5);
    store_repl_meta m = {.epoch = 5, .applied = seq, .base_seq = 10, .base_epoch = 2};
    assert_int_equal(store_repl_meta_put(t, f->sp->id, P, &m), 0);
}

static void test_snapshot_ignores_a_concurrent_commit(void **state)
{
    fx *f = *state;
    store_txn rt, wt;
    assert_int_equal(store_txn_begin(f->src, false, &rt), 0);
    assert_int_equal(store_txn_begin(f->src, true, &wt), 0);
    write_next(f, &wt, 21);
    assert_int_equal(store_txn_commit(&wt), 0);
    /* the older read transaction still sees exactly applied = 15 */
    buf img;
    buf_init(&img);
    uint64_t s, e;
    assert_int_equal(dcopy_snapshot_txn(&rt, f->sp, P, &s, &e, &img), 0);
    store_txn_abort(&rt);
    assert_int_equal(s, 15);
    assert_int_equal(e, 3);
    assert_true(buf_eq(&img, &f->image));
    /* a new snapshot sees the write */
    buf_reset(&img);
    assert_int_equal(dcopy_snapshot(f->src, f->sp, P, &s, &e, &img), 0);
    assert_int_equal(s, 21);
    assert_int_equal(e, 5);
    assert_false(buf_eq(&img, &f->image));
    t_image x, y;
    t_parse(&img, &y);
    t_parse(&f->image, &x);
    assert_int_equal(y.n_obj, x.n_obj); /* one added, one deleted */
    assert_int_equal(y.cl[0].cseq, 4);
    buf_free(&img);
}

typedef struct racer {
    fx *f;
    uint64_t from, to; /* applied seqs written */
} racer;

/* Every object of P holds phone = applied, and client 1's row says applied. */
static void race_write(fx *f, uint64_t seq)
{
    store_txn t;
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    for (int i = 0; i < 12; i++) {
        char key[16];
        snprintf(key, sizeof key, "r%02d", i);
        /* a key leaves and comes back, so the count changes too */
        if (i == (int)(seq % 12))
            assert_int_equal(kv_apply_del(&t, f->sp, P, key, strlen(key)), 0);
        else
            put_phone(&t, f->sp, P, key, "r", "R", (int64_t)seq, 0.0);
    }
    put_client(&t, f->sp->id, P, 1, seq, seq, "");
    put_entry(&t, f->sp->id, P, seq, 1 + seq / 10);
    store_repl_meta m = {.epoch = 1 + seq / 10, .applied = seq, .base_seq = 0, .base_epoch = 0};
    assert_int_equal(store_repl_meta_put(&t, f->sp->id, P, &m), 0);
    assert_int_equal(store_txn_commit(&t), 0);
}

static void *racer_main(void *arg)
{
    racer *x = arg;
    for (uint64_t s = x->from; s <= x->to; s++)
        race_write(x->f, s);
    return NULL;
}

static void test_snapshots_race_a_writer_thread(void **state)
{
    fx *f = *state;
    store_txn t;
    assert_int_equal(store_txn_begin(f->src, true, &t), 0);
    assert_int_equal(store_part_clear(&t, f->sp->id, P), 0);
    assert_int_equal(store_txn_commit(&t), 0);
    race_write(f, 1);
    racer x = {f, 2, 1500};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, racer_main, &x), 0);
    buf img;
    buf_init(&img);
    uint64_t last = 0, distinct = 0;
    for (int i = 0; i < 400 || last < 1500; i++) {
        buf_reset(&img);
        uint64_t s, e;
        assert_int_equal(dcopy_snapshot(f->src, f->sp, P, &s, &e, &img), 0);
        assert_true(s >= last);
        if (s != last) distinct++;
        last = s;
        assert_int_equal(e, 1 + s / 10);
        t_image y;
        t_parse(&img, &y);
        assert_int_equal(y.seq, s);
        assert_int_equal(y.n_obj, 11);
        for (uint64_t k = 0; k < y.n_obj; k++) {
            obj_value v[4];
            assert_int_equal(obj_decode(f->sp->schema, y.obj[k].val, y.obj[k].vlen, v), 0);
            assert_int_equal(v[2].u.i, (int64_t)s);
            char want[16];
            snprintf(want, sizeof want, "r%02d", (int)(s % 12));
            assert_false(y.obj[k].klen == strlen(want) &&
                         memcmp(y.obj[k].key, want, y.obj[k].klen) == 0);
        }
        assert_int_equal(y.n_client, 1);
        assert_int_equal(y.cl[0].seq, s);
        assert_int_equal(y.cl[0].cseq, s);
        /* and the receiver accepts it */
        assert_int_equal(read_image(f->sp, P, img.data, img.len, 333, 1u << 20, NULL), DCOPY_OK);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_true(distinct > 2);
    buf_free(&img);
}

/* ---- the whole sequence with two repl parts ------------------------------------------- */

typedef struct node {
    uint64_t id;
    store *st;
    char dir[64];
    repl_part *r;
    store_repl_meta meta;
    bool need_copy; /* NEED_COPY seen (primary) */
    uint64_t need_copy_seq;
    bool caught_up;
} node;

typedef struct wire {
    buf msgs[256];
    size_t n;
} wire;

/* Carries out every Ready of n like the daemon glue does (repl.h). */
static void drive(fx *f, node *n, wire *w)
{
    buf b;
    buf_init(&b);
    while (repl_has_ready(n->r)) {
        repl_ready rd;
        repl_ready_get(n->r, &rd);
        store_repl_meta next = n->meta;
        store_txn t;
        assert_int_equal(store_txn_begin(n->st, true, &t), 0);
        if (rd.truncate_from)
            assert_int_equal(store_log_delete_from(&t, f->sp->id, P, rd.truncate_from), 0);
        for (size_t i = 0; i < rd.n_entries; i++) {
            buf_reset(&b);
            repl_entry_encode(&rd.entries[i], &b);
            assert_int_equal(store_log_put(&t, f->sp->id, P, rd.entries[i].seq, b.data, b.len), 0);
        }
        if (rd.epoch_changed) next.epoch = rd.epoch;
        if (rd.compact_to) {
            assert_int_equal(store_log_delete_through(&t, f->sp->id, P, rd.compact_to), 0);
            next.base_seq = rd.compact_to;
            next.base_epoch = rd.compact_epoch;
        }
        for (size_t i = 0; i < rd.n_apply; i++) {
            const repl_entry *e = &rd.apply[i];
            if (e->type == REPL_E_PUT)
                assert_int_equal(kv_apply_put(&t, f->sp, P, e->key, e->klen, e->value, e->vlen), 0);
            else if (e->type == REPL_E_DEL)
                assert_int_equal(kv_apply_del(&t, f->sp, P, e->key, e->klen), 0);
            if (e->client_id) put_client(&t, f->sp->id, P, e->client_id, e->client_seq, e->seq, "");
            next.applied = e->seq;
        }
        assert_int_equal(store_repl_meta_put(&t, f->sp->id, P, &next), 0);
        assert_int_equal(store_txn_commit(&t), 0);
        n->meta = next;
        for (size_t i = 0; i < rd.n_msgs; i++) {
            assert_true(w->n < 256);
            buf_init(&w->msgs[w->n]);
            repl_msg_encode(&rd.msgs[i], &w->msgs[w->n++]);
        }
        for (size_t i = 0; i < rd.n_events; i++) {
            if (rd.events[i].type == REPL_EV_NEED_COPY && rd.events[i].peer == 2) {
                n->need_copy = true;
                n->need_copy_seq = rd.events[i].seq;
            }
            if (rd.events[i].type == REPL_EV_CAUGHT_UP && rd.events[i].peer == 2)
                n->caught_up = true;
        }
        repl_advance(n->r, &rd);
    }
    buf_free(&b);
}

/* Delivers messages until none is left. */
static void deliver(fx *f, node *nodes, wire *w)
{
    while (w->n) {
        buf m = w->msgs[0];
        memmove(&w->msgs[0], &w->msgs[1], (w->n - 1) * sizeof(buf));
        w->n--;
        repl_msg msg;
        assert_int_equal(repl_msg_decode(m.data, m.len, &msg), 0);
        node *to = &nodes[msg.to - 1];
        repl_recv(to->r, &msg);
        repl_msg_free(&msg);
        buf_free(&m);
        drive(f, to, w);
    }
}

static void tick(fx *f, node *nodes, wire *w, int times)
{
    for (int i = 0; i < times; i++) {
        for (int j = 0; j < 2; j++) {
            repl_tick(nodes[j].r);
            drive(f, &nodes[j], w);
        }
        deliver(f, nodes, w);
    }
}

static void primary_put(fx *f, node *a, wire *w, int i)
{
    char key[16];
    snprintf(key, sizeof key, "w%03d", i);
    buf v;
    buf_init(&v);
    enc_phone(f->sp, FIRST[i % 7], "W", i, 0.0, &v);
    int type = i % 9 == 8 ? REPL_E_DEL : REPL_E_PUT;
    if (type == REPL_E_DEL) snprintf(key, sizeof key, "w%03d", i - 3);
    uint64_t cid = 1 + (uint64_t)(i % 4);
    assert_int_equal(repl_write(a->r, type, key, strlen(key), type == REPL_E_PUT ? v.data : NULL,
                                type == REPL_E_PUT ? v.len : 0, cid, 1 + (uint64_t)i, NULL, 0,
                                (uint64_t)i, NULL),
                     REPL_OK);
    buf_free(&v);
    drive(f, a, w);
}

/* Serves one NEED_COPY as the glue does: the primary snapshots (and, for a
 * live copy, keeps taking writes after it), the chunks travel, the replica
 * validates them, calls repl_install_snapshot, installs in one transaction,
 * and only then runs its next Ready (the ack of seq). */
static void serve_copy(fx *f, node *nodes, wire *w, int writes_after, int *next_write)
{
    node *a = &nodes[0], *b = &nodes[1];
    buf img;
    buf_init(&img);
    uint64_t seq, seq_epoch;
    assert_int_equal(dcopy_snapshot(a->st, f->sp, P, &seq, &seq_epoch, &img), 0);
    assert_true(seq >= a->need_copy_seq);
    for (int i = 0; i < writes_after; i++)
        primary_put(f, a, w, (*next_write)++);
    deliver(f, nodes, w);

    dcopy_reader *r;
    assert_int_equal(read_image(f->sp, P, img.data, img.len, 100, 1u << 20, &r), DCOPY_OK);
    dcopy_header h;
    assert_int_equal(dcopy_reader_finish(r, &h), DCOPY_OK);
    assert_int_equal(h.seq, seq);
    assert_int_equal(h.seq_epoch, seq_epoch);
    const repl_client *rows;
    size_t nrows;
    assert_int_equal(dcopy_reader_clients(r, &rows, &nrows), DCOPY_OK);
    assert_int_equal(nrows, 4);
    bool keep_log;
    assert_int_equal(repl_install_snapshot(b->r, h.seq, h.seq_epoch, rows, nrows, &keep_log),
                     REPL_OK);
    store_txn t;
    assert_int_equal(store_txn_begin(b->st, true, &t), 0);
    assert_int_equal(dcopy_install(&t, r, keep_log, &b->meta), 0);
    assert_int_equal(store_txn_commit(&t), 0);
    dcopy_reader_free(r);
    assert_int_equal(b->meta.applied, seq);
    assert_int_equal(b->meta.epoch, 2);
    assert_int_equal(b->meta.base_seq, seq);
    drive(f, b, w);
    deliver(f, nodes, w);
    buf_free(&img);
}

/* Primary 1 writes alone until its log is compacted; replica 2 joins
 * CATCHING_UP; every NEED_COPY is served until 2 is caught up; then both
 * stores hold the same partition. Returns the number of copies. */
static int copy_scenario(fx *f, int writes_during_copy)
{
    node nodes[2];
    memset(nodes, 0, sizeof nodes);
    wire *w = calloc(1, sizeof *w);
    assert_non_null(w);
    for (int i = 0; i < 2; i++) {
        node *n = &nodes[i];
        n->id = (uint64_t)i + 1;
        n->st = open_store(n->dir, MAP_SIZE);
        repl_opts o;
        repl_opts_init(&o, n->id, f->sp->id, P);
        o.retain_entries = 8;
        o.copy_retry_ticks = 3;
        assert_int_equal(repl_new(&o, NULL, &n->r), REPL_OK);
    }
    node *a = &nodes[0], *b = &nodes[1];
    static const uint64_t ids1[] = {1};
    static const uint8_t st1[] = {REPL_IN_SYNC};
    assert_int_equal(repl_config(a->r, 1, ids1, st1, 1), REPL_OK);
    drive(f, a, w);
    int next_write = 0;
    while (next_write < 40)
        primary_put(f, a, w, next_write++);
    tick(f, nodes, w, 2);
    repl_status s;
    repl_status_get(a->r, &s);
    assert_true(s.base > 1); /* the log no longer reaches back */

    static const uint64_t ids2[] = {1, 2};
    static const uint8_t st2[] = {REPL_IN_SYNC, REPL_CATCHING_UP};
    assert_int_equal(repl_config(a->r, 2, ids2, st2, 2), REPL_OK);
    assert_int_equal(repl_config(b->r, 2, ids2, st2, 2), REPL_OK);
    drive(f, a, w);
    drive(f, b, w);
    deliver(f, nodes, w);
    int copies = 0;
    for (int round = 0; round < 40 && !a->caught_up; round++) {
        if (a->need_copy) {
            a->need_copy = false;
            serve_copy(f, nodes, w, copies == 0 ? writes_during_copy : 0, &next_write);
            copies++;
        }
        tick(f, nodes, w, 1);
    }
    assert_true(a->caught_up);
    assert_true(copies >= 1);
    for (int i = 0; i < 5; i++)
        primary_put(f, a, w, next_write++);
    deliver(f, nodes, w);
    tick(f, nodes, w, 3);

    repl_status sa, sb;
    repl_status_get(a->r, &sa);
    repl_status_get(b->r, &sb);
    assert_int_equal(sb.applied, sa.applied);
    buf da, db;
    buf_init(&da);
    buf_init(&db);
    store_txn ta, tb;
    assert_int_equal(store_txn_begin(a->st, false, &ta), 0);
    assert_int_equal(store_txn_begin(b->st, false, &tb), 0);
    dump_part(&ta, f->sp, P, D_OBJ | D_IDX | D_CLIENT, &da);
    dump_part(&tb, f->sp, P, D_OBJ | D_IDX | D_CLIENT, &db);
    store_txn_abort(&ta);
    store_txn_abort(&tb);
    assert_true(da.len > 100);
    assert_true(buf_eq(&da, &db));
    /* the replica restarts from what it persisted */
    for (int i = 0; i < 2; i++)
        repl_free(nodes[i].r);
    load x;
    store_repl_meta m;
    assert_int_equal(restart(b->st, f->sp->id, P, &x, &m), REPL_OK);
    assert_int_equal(m.applied, sb.applied);
    for (int i = 0; i < 2; i++)
        close_store(nodes[i].st, nodes[i].dir);
    while (w->n)
        buf_free(&w->msgs[--w->n]);
    free(w);
    buf_free(&da);
    buf_free(&db);
    return copies;
}

/* Blocking rejoin: no write between the snapshot and the install, one copy. */
static void test_need_copy_sequence_blocking(void **state)
{
    fx *f = *state;
    assert_int_equal(copy_scenario(f, 0), 1);
}

/* Live rejoin: writes go on between the snapshot and the install; the
 * primary keeps the log after the copy's snapshot (repl's copy_floor), so
 * the tail is replayed and one copy is enough. */
static void test_need_copy_sequence_live(void **state)
{
    fx *f = *state;
    int copies = copy_scenario(f, 5);
    assert_int_equal(copies, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot_reflects_applied_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_install_replaces_partition_and_nothing_else, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_install_keep_log_keeps_entries_after_seq, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_epoch_and_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_round_trip_every_chunk_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_truncated_prefix_is_incomplete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_corrupted_byte_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_garbage_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crafted_images_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reader_arguments_and_order, setup, teardown),
        cmocka_unit_test(test_strerror_names_every_code),
        cmocka_unit_test_setup_teardown(test_install_storage_error_installs_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_ignores_a_concurrent_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshots_race_a_writer_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_need_copy_sequence_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_need_copy_sequence_live, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
