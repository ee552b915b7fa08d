/* rstore: durable Raft state on LMDB (see rstore.h). */
#include "rstore.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct rstore {
    MDB_env *env;
    MDB_dbi log;
    MDB_dbi meta;
};

int rstore_open(rstore **out, const char *dir, char *err, size_t errlen)
{
    *out = NULL;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data directory %s: %s", dir, strerror(errno));
        return -1;
    }
    rstore *s = calloc(1, sizeof *s);
    if (!s) abort();
    int rc = mdb_env_create(&s->env);
    if (rc) goto err_after_alloc;
    if ((rc = mdb_env_set_maxdbs(s->env, 4)) ||
        (rc = mdb_env_set_mapsize(s->env, (size_t)4 << 30)) ||
        (rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0644)))
        goto err_after_env;
    MDB_txn *t;
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &t))) goto err_after_env;
    if ((rc = mdb_dbi_open(t, "rlog", MDB_CREATE, &s->log)) ||
        (rc = mdb_dbi_open(t, "rmeta", MDB_CREATE, &s->meta))) {
        mdb_txn_abort(t);
        goto err_after_env;
    }
    if ((rc = mdb_txn_commit(t))) goto err_after_env;
    *out = s;
    return 0;

err_after_env:
    mdb_env_close(s->env);
err_after_alloc:
    snprintf(err, errlen, "cannot open Raft storage in %s: %s", dir, mdb_strerror(rc));
    free(s);
    return -1;
}

void rstore_close(rstore *s)
{
    if (!s) return;
    mdb_env_close(s->env);
    free(s);
}

static int meta_get(MDB_txn *t, rstore *s, const char *name, MDB_val *v)
{
    MDB_val k = {strlen(name), (void *)name};
    return mdb_get(t, s->meta, &k, v);
}

static int meta_put(MDB_txn *t, rstore *s, const char *name, const void *p, size_t n)
{
    MDB_val k = {strlen(name), (void *)name}, v = {n, (void *)p};
    return mdb_put(t, s->meta, &k, &v, 0);
}

int rstore_identity_get(rstore *s, uint64_t *cluster_id, uint64_t *node_id)
{
    MDB_txn *t;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t)) return -1;
    MDB_val v;
    int rc = meta_get(t, s, "identity", &v);
    int out = -1;
    if (rc == MDB_NOTFOUND) {
        out = 1;
    } else if (rc == 0 && v.mv_size == 17 && ((unsigned char *)v.mv_data)[0] == 1) {
        *cluster_id = get_u64be((char *)v.mv_data + 1);
        *node_id = get_u64be((char *)v.mv_data + 9);
        out = 0;
    }
    mdb_txn_abort(t);
    return out;
}

int rstore_identity_put(rstore *s, uint64_t cluster_id, uint64_t node_id)
{
    buf b;
    buf_init(&b);
    buf_putc(&b, 1);
    buf_put_u64be(&b, cluster_id);
    buf_put_u64be(&b, node_id);
    MDB_txn *t;
    int rc = mdb_txn_begin(s->env, NULL, 0, &t);
    if (!rc) {
        rc = meta_put(t, s, "identity", b.data, b.len);
        if (rc)
            mdb_txn_abort(t);
        else
            rc = mdb_txn_commit(t);
    }
    buf_free(&b);
    return rc;
}

void rstore_state_free(rstore_state *st)
{
    if (st->has_snap) raft_snapshot_free(&st->snap);
    for (size_t i = 0; i < st->n_entries; i++)
        raft_entry_free(&st->entries[i]);
    free(st->entries);
    memset(st, 0, sizeof *st);
}

int rstore_load(rstore *s, rstore_state *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    MDB_txn *t;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t);
    if (rc) {
        snprintf(err, errlen, "storage error: %s", mdb_strerror(rc));
        return -1;
    }
    MDB_val v;
    if ((rc = meta_get(t, s, "hs", &v)) == 0) {
        if (raft_hard_state_decode(v.mv_data, v.mv_size, &st->hs)) goto err_corrupt;
    } else if (rc != MDB_NOTFOUND) {
        goto err_storage;
    }
    if ((rc = meta_get(t, s, "snap", &v)) == 0) {
        if (raft_snapshot_decode(v.mv_data, v.mv_size, &st->snap)) goto err_corrupt;
        st->has_snap = true;
    } else if (rc != MDB_NOTFOUND) {
        goto err_storage;
    }
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(t, s->log, &c))) goto err_storage;
    size_t cap = 0;
    uint64_t expect = st->has_snap ? st->snap.index + 1 : 1;
    MDB_val k;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) break;
        uint64_t idx = get_u64be(k.mv_data);
        if (idx < expect) continue; /* covered by the snapshot: left over from compaction */
        if (st->n_entries == cap) {
            cap = cap ? cap * 2 : 256;
            st->entries = realloc(st->entries, cap * sizeof *st->entries);
            if (!st->entries) abort();
        }
        raft_entry *e = &st->entries[st->n_entries];
        if (raft_entry_decode(v.mv_data, v.mv_size, e) || e->index != idx || idx != expect) {
            mdb_cursor_close(c);
            goto err_corrupt;
        }
        st->n_entries++;
        expect++;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND && rc != 0) goto err_storage;
    mdb_txn_abort(t);
    return 0;

err_corrupt:
    mdb_txn_abort(t);
    rstore_state_free(st);
    snprintf(err, errlen, "the Raft state is corrupt (a gap or an unreadable record)");
    return -1;
err_storage:
    mdb_txn_abort(t);
    rstore_state_free(st);
    snprintf(err, errlen, "storage error: %s", mdb_strerror(rc));
    return -1;
}

/* Deletes log entries with index in [from, to] (to = UINT64_MAX: all after). */
static int del_range(MDB_txn *t, rstore *s, uint64_t from, uint64_t to)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(t, s->log, &c);
    if (rc) return rc;
    unsigned char kb[8];
    for (int i = 0; i < 8; i++)
        kb[i] = (unsigned char)(from >> (56 - 8 * i));
    MDB_val k = {8, kb}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == 8 && get_u64be(k.mv_data) <= to) {
        if ((rc = mdb_cursor_del(c, 0))) break;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int rstore_save(rstore *s, const raft_ready *rd)
{
    if (!rd->snapshot && !rd->n_entries && !rd->hs_changed) return 0;
    MDB_txn *t;
    int rc = mdb_txn_begin(s->env, NULL, 0, &t);
    if (rc) return rc;
    buf b;
    buf_init(&b);
    if (rd->snapshot) {
        raft_snapshot_encode(rd->snapshot, &b);
        if ((rc = meta_put(t, s, "snap", b.data, b.len))) goto out;
        rc = rd->snapshot_install ? del_range(t, s, 0, UINT64_MAX)
                                  : del_range(t, s, 0, rd->snapshot->index);
        if (rc) goto out;
    }
    if (rd->n_entries) {
        if ((rc = del_range(t, s, rd->entries[0].index, UINT64_MAX))) goto out;
        for (size_t i = 0; i < rd->n_entries; i++) {
            buf_reset(&b);
            raft_entry_encode(&rd->entries[i], &b);
            unsigned char kb[8];
            for (int j = 0; j < 8; j++)
                kb[j] = (unsigned char)(rd->entries[i].index >> (56 - 8 * j));
            MDB_val k = {8, kb}, v = {b.len, b.data};
            if ((rc = mdb_put(t, s->log, &k, &v, MDB_APPEND))) goto out;
        }
    }
    if (rd->hs_changed) {
        buf_reset(&b);
        raft_hard_state_encode(&rd->hs, &b);
        if ((rc = meta_put(t, s, "hs", b.data, b.len))) goto out;
    }
out:
    buf_free(&b);
    if (rc) {
        mdb_txn_abort(t);
        return rc;
    }
    return mdb_txn_commit(t);
}
