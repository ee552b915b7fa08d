/* store: LMDB-backed objects, indexes, metadata, and the replication state
 * (partition logs, replication metadata, client tables); see store.h for the
 * layout and invariants. */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct store {
    MDB_env *env;
    MDB_dbi obj;
    MDB_dbi idx;
    MDB_dbi meta;
    MDB_dbi log;
    MDB_dbi repl;
    MDB_dbi client;
    int sync_policy;
};

#define OBJ_PREFIX 8  /* space, partition */
#define IDX_PREFIX 10 /* space, partition, attribute */
#define LOG_KEY 16    /* space, partition, seq */
#define CLIENT_KEY 16 /* space, partition, client id */
#define REPL_META_LEN 33
#define CLIENT_HDR 21 /* version, client_seq, seq, result length */
#define RECORD_VERSION 1

int store_sync_parse(const char *name)
{
    if (!strcmp(name, "always")) return STORE_SYNC_ALWAYS;
    if (!strcmp(name, "batch")) return STORE_SYNC_BATCH;
    if (!strcmp(name, "none")) return STORE_SYNC_NONE;
    return -1;
}

const char *store_sync_name(int policy)
{
    switch (policy) {
    case STORE_SYNC_ALWAYS:
        return "always";
    case STORE_SYNC_BATCH:
        return "batch";
    case STORE_SYNC_NONE:
        return "none";
    }
    return "?";
}

int store_open(store **out, const char *dir, int sync_policy, size_t map_size, char *err,
               size_t errlen)
{
    *out = NULL;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data directory %s: %s", dir, strerror(errno));
        return -1;
    }
    store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->sync_policy = sync_policy;
    int rc = mdb_env_create(&s->env);
    if (rc) goto err_after_alloc;
    if ((rc = mdb_env_set_maxdbs(s->env, 16)) || (rc = mdb_env_set_mapsize(s->env, map_size)))
        goto err_after_env;
    /* ALWAYS lets LMDB sync data pages then the meta page in every commit;
     * the other policies sync through store_sync. */
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    if (sync_policy != STORE_SYNC_ALWAYS) flags |= MDB_NOSYNC;
    if ((rc = mdb_env_open(s->env, dir, flags, 0644))) goto err_after_env;

    MDB_txn *txn;
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn))) goto err_after_env;
    if ((rc = mdb_dbi_open(txn, "obj", MDB_CREATE, &s->obj)) ||
        (rc = mdb_dbi_open(txn, "idx", MDB_CREATE, &s->idx)) ||
        (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta)) ||
        (rc = mdb_dbi_open(txn, "log", MDB_CREATE, &s->log)) ||
        (rc = mdb_dbi_open(txn, "repl", MDB_CREATE, &s->repl)) ||
        (rc = mdb_dbi_open(txn, "client", MDB_CREATE, &s->client))) {
        mdb_txn_abort(txn);
        goto err_after_env;
    }
    if ((rc = mdb_txn_commit(txn))) goto err_after_env;
    *out = s;
    return 0;

err_after_env:
    mdb_env_close(s->env);
err_after_alloc:
    snprintf(err, errlen, "cannot open storage in %s: %s", dir, mdb_strerror(rc));
    free(s);
    return -1;
}

void store_close(store *s)
{
    if (!s) return;
    mdb_env_sync(s->env, 1);
    mdb_env_close(s->env);
    free(s);
}

int store_sync(store *s)
{
    return mdb_env_sync(s->env, 1);
}

int store_sync_policy(const store *s)
{
    return s->sync_policy;
}

int store_txn_begin(store *s, bool write, store_txn *t)
{
    t->s = s;
    t->txn = NULL;
    return mdb_txn_begin(s->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
}

int store_txn_commit(store_txn *t)
{
    int rc = mdb_txn_commit(t->txn);
    t->txn = NULL;
    return rc;
}

void store_txn_abort(store_txn *t)
{
    if (t->txn) mdb_txn_abort(t->txn);
    t->txn = NULL;
}

void store_txn_reset(store_txn *t)
{
    mdb_txn_reset(t->txn);
}

int store_txn_renew(store_txn *t)
{
    return mdb_txn_renew(t->txn);
}

/* Key builders write into caller stack buffers of STORE key size (511). */
static size_t obj_key(unsigned char *k, uint32_t space, uint32_t part, const void *key, size_t klen)
{
    k[0] = (unsigned char)(space >> 24);
    k[1] = (unsigned char)(space >> 16);
    k[2] = (unsigned char)(space >> 8);
    k[3] = (unsigned char)space;
    k[4] = (unsigned char)(part >> 24);
    k[5] = (unsigned char)(part >> 16);
    k[6] = (unsigned char)(part >> 8);
    k[7] = (unsigned char)part;
    memcpy(k + OBJ_PREFIX, key, klen);
    return OBJ_PREFIX + klen;
}

static size_t idx_key(unsigned char *k, uint32_t space, uint32_t part, uint16_t attr,
                      const obj_value *v, const void *key, size_t klen)
{
    obj_key(k, space, part, "", 0);
    k[8] = (unsigned char)(attr >> 8);
    k[9] = (unsigned char)attr;
    buf img;
    buf_init(&img);
    obj_index_key(v, &img);
    memcpy(k + IDX_PREFIX, img.data, img.len);
    size_t n = IDX_PREFIX + img.len;
    buf_free(&img);
    memcpy(k + n, key, klen);
    return n + klen;
}

int store_obj_get(store_txn *t, uint32_t space, uint32_t part, const void *key, size_t klen,
                  const void **val, size_t *vlen)
{
    if (klen > STORE_MAX_KEY) return MDB_BAD_VALSIZE;
    unsigned char k[512];
    MDB_val mk = {obj_key(k, space, part, key, klen), k}, mv;
    int rc = mdb_get(t->txn, t->s->obj, &mk, &mv);
    if (rc) return rc;
    *val = mv.mv_data;
    *vlen = mv.mv_size;
    return 0;
}

static int index_put(store_txn *t, uint32_t space, uint32_t part, uint16_t attr, const obj_value *v,
                     const void *key, size_t klen)
{
    unsigned char k[512];
    MDB_val mk = {idx_key(k, space, part, attr, v, key, klen), k}, mv = {0, ""};
    return mdb_put(t->txn, t->s->idx, &mk, &mv, 0);
}

static int index_del(store_txn *t, uint32_t space, uint32_t part, uint16_t attr, const obj_value *v,
                     const void *key, size_t klen)
{
    unsigned char k[512];
    MDB_val mk = {idx_key(k, space, part, attr, v, key, klen), k};
    int rc = mdb_del(t->txn, t->s->idx, &mk, NULL);
    /* A missing entry would break invariant 1; report it as corruption. */
    return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
}

static bool same_image(const obj_value *a, const obj_value *b)
{
    if (a->type != b->type) return false;
    if (a->type != SPACE_STRING) return obj_compare(a, b) == 0;
    size_t wa = a->u.s.len < OBJ_INDEX_STRING_PREFIX ? a->u.s.len : OBJ_INDEX_STRING_PREFIX;
    size_t wb = b->u.s.len < OBJ_INDEX_STRING_PREFIX ? b->u.s.len : OBJ_INDEX_STRING_PREFIX;
    return wa == wb && memcmp(a->u.s.p, b->u.s.p, wa) == 0;
}

int store_obj_put(store_txn *t, const space_schema *sc, uint32_t space, uint32_t part,
                  const void *key, size_t klen, const obj_value *oldv, const obj_value *newv,
                  const void *enc, size_t enclen)
{
    if (klen > STORE_MAX_KEY) return MDB_BAD_VALSIZE;
    int rc;
    for (uint32_t a = 0; a < sc->nattrs; a++) {
        if (!sc->attrs[a].indexed) continue;
        if (oldv && same_image(&oldv[a], &newv[a])) continue;
        if (oldv && (rc = index_del(t, space, part, (uint16_t)a, &oldv[a], key, klen))) return rc;
        if ((rc = index_put(t, space, part, (uint16_t)a, &newv[a], key, klen))) return rc;
    }
    unsigned char k[512];
    MDB_val mk = {obj_key(k, space, part, key, klen), k}, mv = {enclen, (void *)enc};
    return mdb_put(t->txn, t->s->obj, &mk, &mv, 0);
}

int store_obj_del(store_txn *t, const space_schema *sc, uint32_t space, uint32_t part,
                  const void *key, size_t klen, const obj_value *oldv)
{
    if (klen > STORE_MAX_KEY) return MDB_BAD_VALSIZE;
    int rc;
    for (uint32_t a = 0; a < sc->nattrs; a++) {
        if (!sc->attrs[a].indexed) continue;
        if ((rc = index_del(t, space, part, (uint16_t)a, &oldv[a], key, klen))) return rc;
    }
    unsigned char k[512];
    MDB_val mk = {obj_key(k, space, part, key, klen), k};
    return mdb_del(t->txn, t->s->obj, &mk, NULL);
}

/* Walks every key starting with prefix[0, plen), beginning at start[0, slen)
 * (which itself starts with the prefix). */
typedef int (*walk_cb)(void *arg, MDB_val *k, MDB_val *v);

static int walk(store_txn *t, MDB_dbi dbi, const unsigned char *prefix, size_t plen,
                const unsigned char *start, size_t slen, walk_cb cb, void *arg)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, dbi, &c);
    if (rc) return rc;
    MDB_val k = {slen, (void *)start}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0) {
        if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0) break;
        int r = cb(arg, &k, &v);
        if (r < 0) {
            rc = r;
            break;
        }
        if (r > 0) break;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

struct scan_ctx {
    store_obj_cb cb;
    store_key_cb kcb;
    void *arg;
    size_t skip;    /* prefix bytes before the key */
    const void *hi; /* index upper bound, or NULL */
    size_t width;   /* image width */
};

static int scan_obj(void *arg, MDB_val *k, MDB_val *v)
{
    struct scan_ctx *x = arg;
    return x->cb(x->arg, (char *)k->mv_data + OBJ_PREFIX, k->mv_size - OBJ_PREFIX, v->mv_data,
                 v->mv_size);
}

int store_scan(store_txn *t, uint32_t space, uint32_t part, store_obj_cb cb, void *arg)
{
    unsigned char p[OBJ_PREFIX];
    obj_key(p, space, part, "", 0);
    struct scan_ctx x = {.cb = cb, .arg = arg};
    return walk(t, t->s->obj, p, OBJ_PREFIX, p, OBJ_PREFIX, scan_obj, &x);
}

static int scan_idx(void *arg, MDB_val *k, MDB_val *v)
{
    (void)v;
    struct scan_ctx *x = arg;
    if (k->mv_size < IDX_PREFIX + x->width) return MDB_CORRUPTED;
    const unsigned char *img = (const unsigned char *)k->mv_data + IDX_PREFIX;
    if (x->hi && memcmp(img, x->hi, x->width) > 0) return 1;
    return x->kcb(x->arg, img + x->width, k->mv_size - IDX_PREFIX - x->width);
}

int store_index_scan(store_txn *t, uint32_t space, uint32_t part, uint16_t attr, size_t width,
                     const void *lo, const void *hi, store_key_cb cb, void *arg)
{
    unsigned char p[IDX_PREFIX + 64];
    if (width > 64) return EINVAL;
    obj_key(p, space, part, "", 0);
    p[8] = (unsigned char)(attr >> 8);
    p[9] = (unsigned char)attr;
    size_t slen = IDX_PREFIX;
    if (lo) {
        memcpy(p + IDX_PREFIX, lo, width);
        slen += width;
    }
    struct scan_ctx x = {.kcb = cb, .arg = arg, .hi = hi, .width = width};
    return walk(t, t->s->idx, p, IDX_PREFIX, p, slen, scan_idx, &x);
}

/* Deletes every key with the given prefix. */
static int del_prefix(store_txn *t, MDB_dbi dbi, const unsigned char *prefix, size_t plen)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, dbi, &c);
    if (rc) return rc;
    MDB_val k = {plen, (void *)prefix}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= plen && memcmp(k.mv_data, prefix, plen) == 0) {
        if ((rc = mdb_cursor_del(c, 0))) break;
        /* After a delete LMDB leaves the cursor on the following item; NEXT
         * returns that item rather than skipping it. */
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_drop_space(store_txn *t, uint32_t space)
{
    unsigned char p[16];
    obj_key(p, space, 0, "", 0);
    int rc;
    if ((rc = del_prefix(t, t->s->obj, p, 4)) || (rc = del_prefix(t, t->s->idx, p, 4)) ||
        (rc = del_prefix(t, t->s->log, p, 4)) || (rc = del_prefix(t, t->s->repl, p, 4)) ||
        (rc = del_prefix(t, t->s->client, p, 4)))
        return rc;
    unsigned char m[6] = {'p', '/', p[0], p[1], p[2], p[3]};
    return del_prefix(t, t->s->meta, m, sizeof m);
}

int store_meta_get(store_txn *t, const char *name, const void **val, size_t *vlen)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(t->txn, t->s->meta, &k, &v);
    if (rc) return rc;
    *val = v.mv_data;
    *vlen = v.mv_size;
    return 0;
}

int store_meta_put(store_txn *t, const char *name, const void *val, size_t vlen)
{
    MDB_val k = {strlen(name), (void *)name}, v = {vlen, (void *)val};
    return mdb_put(t->txn, t->s->meta, &k, &v, 0);
}

static size_t part_meta_key(unsigned char *k, uint32_t space, uint32_t part)
{
    k[0] = 'p';
    k[1] = '/';
    obj_key(k + 2, space, part, "", 0);
    return 10;
}

int store_part_meta_get(store_txn *t, uint32_t space, uint32_t part, store_part_meta *m)
{
    unsigned char kb[10];
    MDB_val k = {part_meta_key(kb, space, part), kb}, v;
    memset(m, 0, sizeof *m);
    int rc = mdb_get(t->txn, t->s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size != 17 || ((unsigned char *)v.mv_data)[0] != 1) return MDB_CORRUPTED;
    m->seq = get_u64be((char *)v.mv_data + 1);
    m->epoch = get_u64be((char *)v.mv_data + 9);
    return 0;
}

int store_part_meta_put(store_txn *t, uint32_t space, uint32_t part, const store_part_meta *m)
{
    unsigned char kb[10], vb[17];
    vb[0] = 1;
    for (int i = 0; i < 8; i++) {
        vb[1 + i] = (unsigned char)(m->seq >> (56 - 8 * i));
        vb[9 + i] = (unsigned char)(m->epoch >> (56 - 8 * i));
    }
    MDB_val k = {part_meta_key(kb, space, part), kb}, v = {sizeof vb, vb};
    return mdb_put(t->txn, t->s->meta, &k, &v, 0);
}

static int count_cb(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
    (void)k, (void)kl, (void)v, (void)vl;
    (*(uint64_t *)arg)++;
    return 0;
}

int store_count(store_txn *t, uint32_t space, uint32_t part, uint64_t *n)
{
    *n = 0;
    return store_scan(t, space, part, count_cb, n);
}

/* ---- replication: the partition log --------------------------------------- */

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (56 - 8 * i));
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (24 - 8 * i));
}

/* (space, part, u64) keys of the log and client databases. */
static size_t key16(unsigned char *k, uint32_t space, uint32_t part, uint64_t n)
{
    obj_key(k, space, part, "", 0);
    put_u64(k + OBJ_PREFIX, n);
    return 16;
}

int store_log_put(store_txn *t, uint32_t space, uint32_t part, uint64_t seq, const void *data,
                  size_t len)
{
    unsigned char k[LOG_KEY];
    MDB_val mk = {key16(k, space, part, seq), k}, mv = {len, (void *)data};
    return mdb_put(t->txn, t->s->log, &mk, &mv, 0);
}

int store_log_get(store_txn *t, uint32_t space, uint32_t part, uint64_t seq, const void **data,
                  size_t *len)
{
    unsigned char k[LOG_KEY];
    MDB_val mk = {key16(k, space, part, seq), k}, mv;
    int rc = mdb_get(t->txn, t->s->log, &mk, &mv);
    if (rc) return rc;
    *data = mv.mv_data;
    *len = mv.mv_size;
    return 0;
}

/* Deletes the keys of one partition's log with lo <= seq <= hi. */
static int log_delete_range(store_txn *t, uint32_t space, uint32_t part, uint64_t lo, uint64_t hi)
{
    unsigned char start[LOG_KEY], end[LOG_KEY];
    key16(start, space, part, lo);
    key16(end, space, part, hi);
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, t->s->log, &c);
    if (rc) return rc;
    MDB_val k = {sizeof start, start}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    /* Every key of this database is LOG_KEY bytes, so memcmp against the
     * full end key is the (space, part, seq) order. */
    while (rc == 0) {
        if (k.mv_size != LOG_KEY) {
            rc = MDB_CORRUPTED;
            break;
        }
        if (memcmp(k.mv_data, end, LOG_KEY) > 0) break;
        if ((rc = mdb_cursor_del(c, 0))) break;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_log_delete_from(store_txn *t, uint32_t space, uint32_t part, uint64_t from)
{
    return log_delete_range(t, space, part, from, UINT64_MAX);
}

int store_log_delete_through(store_txn *t, uint32_t space, uint32_t part, uint64_t through)
{
    return log_delete_range(t, space, part, 0, through);
}

int store_log_bounds(store_txn *t, uint32_t space, uint32_t part, uint64_t *first,
                     uint64_t *last)
{
    *first = *last = 0;
    unsigned char lo[LOG_KEY], hi[LOG_KEY];
    key16(lo, space, part, 0);
    key16(hi, space, part, UINT64_MAX);
    MDB_cursor *c;
    int rc = mdb_cursor_open(t->txn, t->s->log, &c);
    if (rc) return rc;
    MDB_val k = {sizeof lo, lo}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc) goto done;
    if (k.mv_size != LOG_KEY || memcmp(k.mv_data, lo, OBJ_PREFIX) != 0) {
        rc = MDB_NOTFOUND;
        goto done;
    }
    uint64_t f = get_u64be((const char *)k.mv_data + OBJ_PREFIX);
    /* The last entry: the first key past the partition's range, one back. */
    k.mv_size = sizeof hi;
    k.mv_data = hi;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && !(k.mv_size == LOG_KEY && memcmp(k.mv_data, hi, LOG_KEY) == 0))
        rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
    else if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    if (rc) goto done;
    if (k.mv_size != LOG_KEY || memcmp(k.mv_data, lo, OBJ_PREFIX) != 0) {
        rc = MDB_CORRUPTED; /* the first lookup saw an entry of this partition */
        goto done;
    }
    *first = f;
    *last = get_u64be((const char *)k.mv_data + OBJ_PREFIX);
done:
    mdb_cursor_close(c);
    return rc;
}

struct log_scan_ctx {
    store_log_cb cb;
    void *arg;
};

static int scan_log(void *arg, MDB_val *k, MDB_val *v)
{
    struct log_scan_ctx *x = arg;
    if (k->mv_size != LOG_KEY) return MDB_CORRUPTED;
    return x->cb(x->arg, get_u64be((const char *)k->mv_data + OBJ_PREFIX), v->mv_data, v->mv_size);
}

int store_log_scan(store_txn *t, uint32_t space, uint32_t part, uint64_t from, store_log_cb cb,
                   void *arg)
{
    unsigned char k[LOG_KEY];
    key16(k, space, part, from);
    struct log_scan_ctx x = {cb, arg};
    return walk(t, t->s->log, k, OBJ_PREFIX, k, sizeof k, scan_log, &x);
}

/* ---- replication: per-partition metadata ---------------------------------- */

static int repl_meta_decode(const MDB_val *v, store_repl_meta *m)
{
    const unsigned char *p = v->mv_data;
    if (v->mv_size != REPL_META_LEN || p[0] != RECORD_VERSION) return MDB_CORRUPTED;
    m->epoch = get_u64be(p + 1);
    m->applied = get_u64be(p + 9);
    m->base_seq = get_u64be(p + 17);
    m->base_epoch = get_u64be(p + 25);
    return 0;
}

int store_repl_meta_get(store_txn *t, uint32_t space, uint32_t part, store_repl_meta *m)
{
    unsigned char kb[OBJ_PREFIX];
    MDB_val k = {obj_key(kb, space, part, "", 0), kb}, v;
    memset(m, 0, sizeof *m);
    int rc = mdb_get(t->txn, t->s->repl, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    rc = repl_meta_decode(&v, m);
    if (rc) memset(m, 0, sizeof *m);
    return rc;
}

int store_repl_meta_put(store_txn *t, uint32_t space, uint32_t part, const store_repl_meta *m)
{
    unsigned char kb[OBJ_PREFIX], vb[REPL_META_LEN];
    vb[0] = RECORD_VERSION;
    put_u64(vb + 1, m->epoch);
    put_u64(vb + 9, m->applied);
    put_u64(vb + 17, m->base_seq);
    put_u64(vb + 25, m->base_epoch);
    MDB_val k = {obj_key(kb, space, part, "", 0), kb}, v = {sizeof vb, vb};
    return mdb_put(t->txn, t->s->repl, &k, &v, 0);
}

struct repl_scan_ctx {
    store_repl_meta_cb cb;
    void *arg;
};

static int scan_repl(void *arg, MDB_val *k, MDB_val *v)
{
    struct repl_scan_ctx *x = arg;
    store_repl_meta m;
    if (k->mv_size != OBJ_PREFIX || repl_meta_decode(v, &m)) return MDB_CORRUPTED;
    return x->cb(x->arg, get_u32be(k->mv_data), get_u32be((const char *)k->mv_data + 4), &m);
}

int store_repl_meta_scan(store_txn *t, store_repl_meta_cb cb, void *arg)
{
    /* Every key is 8 bytes: starting at eight zero bytes is the first key
     * (LMDB refuses an empty key), and the empty prefix matches them all. */
    static const unsigned char zero[OBJ_PREFIX];
    struct repl_scan_ctx x = {cb, arg};
    return walk(t, t->s->repl, zero, 0, zero, sizeof zero, scan_repl, &x);
}

/* ---- replication: the client table ---------------------------------------- */

static int client_decode(const MDB_val *k, const MDB_val *v, store_client *c)
{
    const unsigned char *p = v->mv_data;
    if (k->mv_size != CLIENT_KEY || v->mv_size < CLIENT_HDR || p[0] != RECORD_VERSION)
        return MDB_CORRUPTED;
    uint32_t rlen = get_u32be(p + 17);
    if (v->mv_size - CLIENT_HDR != rlen) return MDB_CORRUPTED;
    c->client_id = get_u64be((const char *)k->mv_data + OBJ_PREFIX);
    c->client_seq = get_u64be(p + 1);
    c->seq = get_u64be(p + 9);
    c->rlen = rlen;
    c->result = rlen ? p + CLIENT_HDR : NULL;
    return 0;
}

int store_client_put(store_txn *t, uint32_t space, uint32_t part, const store_client *c)
{
    unsigned char kb[CLIENT_KEY];
    MDB_val k = {key16(kb, space, part, c->client_id), kb},
            v = {CLIENT_HDR + (size_t)c->rlen, NULL};
    /* Reserve the value in place and fill it: no temporary copy. */
    int rc = mdb_put(t->txn, t->s->client, &k, &v, MDB_RESERVE);
    if (rc) return rc;
    unsigned char *p = v.mv_data;
    p[0] = RECORD_VERSION;
    put_u64(p + 1, c->client_seq);
    put_u64(p + 9, c->seq);
    put_u32(p + 17, c->rlen);
    if (c->rlen) memcpy(p + CLIENT_HDR, c->result, c->rlen);
    return 0;
}

int store_client_get(store_txn *t, uint32_t space, uint32_t part, uint64_t client_id,
                     store_client *c)
{
    unsigned char kb[CLIENT_KEY];
    MDB_val k = {key16(kb, space, part, client_id), kb}, v;
    memset(c, 0, sizeof *c);
    int rc = mdb_get(t->txn, t->s->client, &k, &v);
    if (rc) return rc;
    rc = client_decode(&k, &v, c);
    if (rc) memset(c, 0, sizeof *c);
    return rc;
}

struct client_scan_ctx {
    store_client_cb cb;
    void *arg;
};

static int scan_client(void *arg, MDB_val *k, MDB_val *v)
{
    struct client_scan_ctx *x = arg;
    store_client c;
    if (client_decode(k, v, &c)) return MDB_CORRUPTED;
    return x->cb(x->arg, &c);
}

int store_client_scan(store_txn *t, uint32_t space, uint32_t part, store_client_cb cb,
                      void *arg)
{
    unsigned char p[OBJ_PREFIX];
    obj_key(p, space, part, "", 0);
    struct client_scan_ctx x = {cb, arg};
    return walk(t, t->s->client, p, OBJ_PREFIX, p, OBJ_PREFIX, scan_client, &x);
}

int store_client_delete_all(store_txn *t, uint32_t space, uint32_t part)
{
    unsigned char p[OBJ_PREFIX];
    obj_key(p, space, part, "", 0);
    return del_prefix(t, t->s->client, p, OBJ_PREFIX);
}

/* ---- replication: partition copies ---------------------------------------- */

static int del_key(store_txn *t, MDB_dbi dbi, const void *key, size_t klen)
{
    MDB_val k = {klen, (void *)key};
    int rc = mdb_del(t->txn, dbi, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_part_clear(store_txn *t, uint32_t space, uint32_t part)
{
    unsigned char p[OBJ_PREFIX], m[10];
    obj_key(p, space, part, "", 0);
    int rc;
    /* idx keys start with (space, part, attr): the 8-byte prefix covers
     * every attribute of this partition and nothing else. */
    if ((rc = del_prefix(t, t->s->obj, p, OBJ_PREFIX)) ||
        (rc = del_prefix(t, t->s->idx, p, OBJ_PREFIX)) ||
        (rc = del_prefix(t, t->s->log, p, OBJ_PREFIX)) ||
        (rc = del_prefix(t, t->s->client, p, OBJ_PREFIX)) ||
        (rc = del_key(t, t->s->repl, p, OBJ_PREFIX)))
        return rc;
    return del_key(t, t->s->meta, m, part_meta_key(m, space, part));
}
