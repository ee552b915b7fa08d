/* commit: the storage thread and its group commit (see commit.h). */
#include "commit.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "log.h"

struct commit {
    store *s;
    uv_async_t async; /* wakes the loop thread when items are done */
    commit_done_fn done;
    void *arg;

    pthread_mutex_t mu;
    pthread_cond_t cv;    /* storage thread waits for work */
    commit_item *in_head; /* submitted, not yet taken */
    commit_item *in_tail;
    commit_item *out_head; /* done, not yet delivered */
    commit_item *out_tail;
    bool stopping;
    unsigned long long groups;

    pthread_t worker;
    pthread_t syncer;
    bool has_syncer;
    pthread_cond_t sync_cv;
    atomic_bool dirty; /* committed since the last sync */
};

static void deliver(uv_async_t *h)
{
    commit *c = h->data;
    pthread_mutex_lock(&c->mu);
    commit_item *list = c->out_head;
    c->out_head = c->out_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    if (list) c->done(c->arg, list);
}

static int run_group(commit *c, commit_item *list)
{
    store_txn t;
    int rc = store_txn_begin(c->s, true, &t);
    for (commit_item *it = list; it && !rc; it = it->next)
        if (it->exec) rc = it->exec(&t, it);
    if (rc)
        store_txn_abort(&t);
    else
        rc = store_txn_commit(&t);
    if (rc) {
        log_error("event=storage_error group commit failed: %s", mdb_strerror(rc));
        for (commit_item *it = list; it; it = it->next)
            if (it->exec) it->status = rc;
    } else {
        atomic_store(&c->dirty, true);
    }
    return rc;
}

static void *worker_main(void *arg)
{
    commit *c = arg;
    pthread_setname_np(pthread_self(), "keel-commit");
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->in_head && !c->stopping)
            pthread_cond_wait(&c->cv, &c->mu);
        if (!c->in_head && c->stopping) break;
        commit_item *list = c->in_head, *tail = c->in_tail;
        c->in_head = c->in_tail = NULL;
        pthread_mutex_unlock(&c->mu);

        run_group(c, list);

        pthread_mutex_lock(&c->mu);
        c->groups++;
        if (c->out_tail)
            c->out_tail->next = list;
        else
            c->out_head = list;
        c->out_tail = tail;
        uv_async_send(&c->async);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void *syncer_main(void *arg)
{
    commit *c = arg;
    pthread_setname_np(pthread_self(), "keel-sync");
    pthread_mutex_lock(&c->mu);
    while (!c->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&c->sync_cv, &c->mu, &ts);
        if (c->stopping) break;
        if (!atomic_exchange(&c->dirty, false)) continue;
        pthread_mutex_unlock(&c->mu);
        int rc = store_sync(c->s);
        if (rc) log_error("event=storage_error sync failed: %s", mdb_strerror(rc));
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int commit_start(commit **out, store *s, uv_loop_t *loop, commit_done_fn done, void *arg)
{
    commit *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->s = s;
    c->done = done;
    c->arg = arg;
    atomic_init(&c->dirty, false);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_cond_init(&c->sync_cv, NULL);
    if (uv_async_init(loop, &c->async, deliver)) goto err_after_alloc;
    c->async.data = c;
    if (pthread_create(&c->worker, NULL, worker_main, c)) goto err_after_async;
    if (store_sync_policy(s) == STORE_SYNC_BATCH) {
        if (pthread_create(&c->syncer, NULL, syncer_main, c) == 0)
            c->has_syncer = true;
        else
            log_error("cannot start the sync thread; syncing at shutdown only");
    }
    *out = c;
    return 0;

err_after_async:
    uv_close((uv_handle_t *)&c->async, NULL);
err_after_alloc:
    free(c);
    return -1;
}

void commit_submit(commit *c, commit_item *head, commit_item *tail)
{
    if (!head) return;
    tail->next = NULL; /* before the walk: never touch items linked after tail */
    for (commit_item *it = head; it; it = it->next)
        it->status = 0;
    pthread_mutex_lock(&c->mu);
    if (c->in_tail)
        c->in_tail->next = head;
    else
        c->in_head = head;
    c->in_tail = tail;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

unsigned long long commit_groups(commit *c)
{
    pthread_mutex_lock(&c->mu);
    unsigned long long n = c->groups;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static void free_commit(uv_handle_t *h)
{
    free(h->data);
}

void commit_stop(commit *c)
{
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    pthread_cond_broadcast(&c->cv);
    pthread_cond_broadcast(&c->sync_cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->worker, NULL);
    if (c->has_syncer) pthread_join(c->syncer, NULL);
    deliver(&c->async);
    int rc = store_sync(c->s);
    if (rc) log_error("event=storage_error final sync failed: %s", mdb_strerror(rc));
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->sync_cv);
    uv_close((uv_handle_t *)&c->async, free_commit);
}
