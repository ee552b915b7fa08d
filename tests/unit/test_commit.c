/* Unit tests for src/commit.c: the storage thread and its group commit.
 *
 * Each test runs a real libuv loop, a store in a fresh temporary directory
 * and the commit thread. Work items write metadata keys (and bump a shared
 * counter, so the order the storage thread ran them in is visible in their
 * replies). The loop is driven with uv_run(UV_RUN_ONCE) for a bounded number
 * of iterations, with a watchdog timer so a lost completion fails the test
 * instead of hanging it. Covered: completion in submission order, exactly
 * once; execution in submission order across groups; a failing exec failing
 * its whole group (no write of the group survives, items without exec keep
 * status 0) while later groups work; commit_stop delivering everything still
 * pending; durability across close/reopen and across a process that dies
 * right after a completion; submit touching only head..tail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "commit.h"
#include "store.h"

/* ---- fixture ------------------------------------------------------------ */

#define MAP_SIZE (64u << 20)
#define MAX_ITEMS 256
#define MAX_TURNS 10000   /* loop iterations any wait may take */
#define WATCHDOG_MS 20000 /* a wait that takes longer has failed */
#define FAIL_RC MDB_MAP_FULL

typedef struct item {
    commit_item base; /* first: commit_item * <-> item * */
    int id;
    int seen;    /* deliveries */
    int fail_rc; /* exec writes, then returns this */
} item;

typedef struct fx {
    char dir[64];
    store *st;
    uv_loop_t loop;
    uv_timer_t watchdog;
    bool timed_out;
    commit *c;
    item items[MAX_ITEMS]; /* on the heap: the storage thread may hold them
                              past a failed assertion */
    int nitems;
    int order[MAX_ITEMS]; /* ids in delivery order */
    int ndone;
    int calls; /* done callback invocations */
} fx;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void on_watchdog(uv_timer_t *t)
{
    fx *f = t->data;
    f->timed_out = true;
}

static void on_done(void *arg, commit_item *list)
{
    fx *f = arg;
    f->calls++;
    for (commit_item *ci = list; ci; ci = ci->next) {
        item *it = (item *)ci;
        it->seen++;
        assert_true(f->ndone < MAX_ITEMS);
        f->order[f->ndone++] = it->id;
    }
}

static void open_store(fx *f, int policy)
{
    char err[256];
    if (store_open(&f->st, f->dir, policy, MAP_SIZE, err, sizeof err))
        fail_msg("store_open: %s", err);
}

static void start(fx *f)
{
    assert_int_equal(commit_start(&f->c, f->st, &f->loop, on_done, f), 0);
    assert_non_null(f->c);
}

/* commit_stop, then one loop turn so the commit frees itself. */
static void stop(fx *f)
{
    commit_stop(f->c);
    f->c = NULL;
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/keel-test-commit-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->watchdog), 0);
    f->watchdog.data = f;
    assert_int_equal(uv_timer_start(&f->watchdog, on_watchdog, WATCHDOG_MS, 0), 0);
    open_store(f, STORE_SYNC_NONE);
    start(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f->c) stop(f); /* after this no item is in flight */
    for (int i = 0; i < f->nitems; i++)
        buf_free(&f->items[i].base.reply);
    store_close(f->st);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- items -------------------------------------------------------------- */

/* Writes "k<id>" = "v<id>" and bumps "counter"; the reply is the counter's
 * new value, i.e. the position at which this item ran. */
static int exec_write(store_txn *t, commit_item *ci)
{
    item *it = (item *)ci;
    char key[32], val[32];
    snprintf(key, sizeof key, "k%d", it->id);
    snprintf(val, sizeof val, "v%d", it->id);
    int rc = store_meta_put(t, key, val, strlen(val));
    if (rc) return rc;
    const void *cur;
    size_t len;
    unsigned long long n = 0;
    rc = store_meta_get(t, "counter", &cur, &len);
    if (rc == 0) {
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%.*s", (int)len, (const char *)cur);
        n = strtoull(tmp, NULL, 10);
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%llu", n + 1);
    if ((rc = store_meta_put(t, "counter", tmp, strlen(tmp)))) return rc;
    buf_puts(&ci->reply, tmp);
    return it->fail_rc;
}

/* A new item (exec NULL keeps only its place in line). */
static item *new_item(fx *f, bool with_exec)
{
    assert_true(f->nitems < MAX_ITEMS);
    item *it = &f->items[f->nitems];
    memset(it, 0, sizeof *it);
    it->id = f->nitems++;
    it->base.exec = with_exec ? exec_write : NULL;
    it->base.status = -12345; /* commit_submit must reset it */
    buf_init(&it->base.reply);
    return it;
}

/* Links n new items and submits them as one batch; returns the first. */
static item *submit_batch(fx *f, int n)
{
    item *head = NULL, *prev = NULL;
    for (int i = 0; i < n; i++) {
        item *it = new_item(f, true);
        if (prev)
            prev->base.next = &it->base;
        else
            head = it;
        prev = it;
    }
    commit_submit(f->c, &head->base, &prev->base);
    return head;
}

/* Runs the loop until `want` items were delivered in total. */
static void pump(fx *f, int want)
{
    for (int turn = 0; turn < MAX_TURNS && f->ndone < want && !f->timed_out; turn++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_false(f->timed_out);
    assert_int_equal(f->ndone, want);
}

/* Checks meta key name: absent if want is NULL, else equal to want. */
static void expect_meta(store *st, const char *name, const char *want)
{
    store_txn t;
    assert_int_equal(store_txn_begin(st, false, &t), 0);
    const void *val;
    size_t len;
    int rc = store_meta_get(&t, name, &val, &len);
    if (!want) {
        assert_int_equal(rc, MDB_NOTFOUND);
    } else {
        assert_int_equal(rc, 0);
        assert_int_equal(len, strlen(want));
        assert_memory_equal(val, want, len);
    }
    store_txn_abort(&t);
}

static void expect_written(fx *f, int id, bool yes)
{
    char key[32], val[32];
    snprintf(key, sizeof key, "k%d", id);
    snprintf(val, sizeof val, "v%d", id);
    expect_meta(f->st, key, yes ? val : NULL);
}

static void expect_reply(const item *it, const char *want)
{
    assert_int_equal(it->base.reply.len, strlen(want));
    assert_memory_equal(it->base.reply.data, want, strlen(want));
}

/* ---- tests -------------------------------------------------------------- */

static void test_order_and_once(void **state)
{
    fx *f = *state;
    /* Several batches queued before the loop runs: the storage thread may
     * merge them into fewer groups, but order and counts must hold. */
    static const int sizes[] = {1, 3, 7, 2, 10};
    int total = 0;
    for (int b = 0; b < 5; b++) {
        submit_batch(f, sizes[b]);
        total += sizes[b];
    }
    pump(f, total);
    assert_true(f->calls >= 1 && f->calls <= 5);
    unsigned long long groups = commit_groups(f->c);
    assert_true(groups >= 1 && groups <= 5);

    /* Then batches one at a time: one group each. */
    for (int b = 0; b < 4; b++) {
        submit_batch(f, b + 1);
        total += b + 1;
        pump(f, total);
        assert_int_equal(commit_groups(f->c), groups + (unsigned long long)b + 1);
    }

    for (int i = 0; i < total; i++) {
        item *it = &f->items[i];
        assert_int_equal(f->order[i], i);
        assert_int_equal(it->seen, 1);
        assert_int_equal(it->base.status, 0);
        char want[16];
        snprintf(want, sizeof want, "%d", i + 1); /* ran in submission order */
        expect_reply(it, want);
        expect_written(f, i, true);
    }
    char want[16];
    snprintf(want, sizeof want, "%d", total);
    expect_meta(f->st, "counter", want);
    /* Nothing else arrives later. */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->ndone, total);
}

static void test_failed_exec_fails_group(void **state)
{
    fx *f = *state;
    submit_batch(f, 2); /* ids 0, 1 */
    pump(f, 2);
    expect_meta(f->st, "counter", "2");

    /* One batch: write, no-exec, failing write, write, no-exec. */
    item *a = new_item(f, true), *b = new_item(f, false), *c = new_item(f, true),
         *d = new_item(f, true), *e = new_item(f, false);
    c->fail_rc = FAIL_RC;
    a->base.next = &b->base;
    b->base.next = &c->base;
    c->base.next = &d->base;
    d->base.next = &e->base;
    commit_submit(f->c, &a->base, &e->base);
    pump(f, 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(f->order[i], i);
    for (int i = 2; i < 7; i++)
        assert_int_equal(f->items[i].seen, 1);
    assert_int_equal(a->base.status, FAIL_RC);
    assert_int_equal(b->base.status, 0);
    assert_int_equal(c->base.status, FAIL_RC);
    assert_int_equal(d->base.status, FAIL_RC);
    assert_int_equal(e->base.status, 0);
    /* None of the group's writes happened, earlier groups' did. */
    expect_written(f, a->id, false);
    expect_written(f, c->id, false);
    expect_written(f, d->id, false);
    expect_written(f, 0, true);
    expect_written(f, 1, true);
    expect_meta(f->st, "counter", "2");

    /* The storage thread carries on: the next group commits. */
    item *g = submit_batch(f, 3);
    pump(f, 10);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(g[i].base.status, 0);
        expect_written(f, g[i].id, true);
    }
    expect_reply(&g[2], "5");
    expect_meta(f->st, "counter", "5");

    /* Reused items get a fresh status at submit. */
    a->base.status = 99;
    c->fail_rc = 0;
    a->base.next = &c->base;
    buf_reset(&a->base.reply);
    buf_reset(&c->base.reply);
    commit_submit(f->c, &a->base, &c->base);
    pump(f, 12);
    assert_int_equal(a->base.status, 0);
    assert_int_equal(c->base.status, 0);
    assert_int_equal(a->seen, 2);
    assert_int_equal(c->seen, 2);
    expect_written(f, a->id, true);
    expect_written(f, c->id, true);
    expect_reply(c, "7");
}

/* Items without exec only keep their place in line. */
static void test_items_without_exec(void **state)
{
    fx *f = *state;
    item *x = new_item(f, false), *y = new_item(f, true), *z = new_item(f, false);
    x->base.next = &y->base;
    y->base.next = &z->base;
    commit_submit(f->c, &x->base, &z->base);
    item *w = new_item(f, false);
    commit_submit(f->c, &w->base, &w->base);
    pump(f, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(f->order[i], i);
        assert_int_equal(f->items[i].base.status, 0);
        assert_int_equal(f->items[i].seen, 1);
    }
    assert_int_equal(x->base.reply.len, 0);
    expect_reply(y, "1");
    /* An empty submit is a no-op. */
    unsigned long long groups = commit_groups(f->c);
    commit_submit(f->c, NULL, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(commit_groups(f->c), groups);
    assert_int_equal(f->ndone, 4);
}

static void test_stop_delivers_pending(void **state)
{
    fx *f = *state;
    submit_batch(f, 4);
    submit_batch(f, 1);
    submit_batch(f, 6);
    /* No loop turn at all: commit_stop must finish and deliver everything. */
    commit_stop(f->c);
    f->c = NULL;
    assert_int_equal(f->ndone, 11);
    for (int i = 0; i < 11; i++) {
        assert_int_equal(f->order[i], i);
        assert_int_equal(f->items[i].seen, 1);
        assert_int_equal(f->items[i].base.status, 0);
        expect_written(f, i, true);
    }
    expect_meta(f->st, "counter", "11");
    /* The loop frees the commit and nothing is delivered twice. */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->ndone, 11);

    /* A stopped-and-restarted commit works on the same store. */
    start(f);
    submit_batch(f, 2);
    pump(f, 13);
    expect_meta(f->st, "counter", "13");
}

/* Data committed by the storage thread survives close and reopen. */
static void reopen_keeps(fx *f, int policy)
{
    stop(f);
    store_close(f->st);
    open_store(f, policy);
    assert_int_equal(store_sync_policy(f->st), policy);
    start(f);
    submit_batch(f, 5);
    submit_batch(f, 5);
    pump(f, 10);
    stop(f);
    store_close(f->st);
    f->st = NULL;
    open_store(f, policy);
    for (int i = 0; i < 10; i++)
        expect_written(f, i, true);
    expect_meta(f->st, "counter", "10");
}

static void test_reopen_always(void **state)
{
    reopen_keeps(*state, STORE_SYNC_ALWAYS);
}

static void test_reopen_batch(void **state)
{
    reopen_keeps(*state, STORE_SYNC_BATCH);
}

/* A completion is sent only after the commit: a process that dies right
 * after its done callback, without stopping or closing anything, leaves the
 * data behind for the next process. */
static void test_completed_survives_process_death(void **state)
{
    fx *f = *state;
    stop(f);
    store_close(f->st);
    f->st = NULL;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Child: a fresh loop, store and commit; no cmocka from here on. */
        static fx child;
        memcpy(child.dir, f->dir, sizeof child.dir);
        char err[256];
        if (uv_loop_init(&child.loop) ||
            store_open(&child.st, child.dir, STORE_SYNC_ALWAYS, MAP_SIZE, err, sizeof err) ||
            commit_start(&child.c, child.st, &child.loop, on_done, &child))
            _exit(2);
        item *head = NULL, *prev = NULL;
        for (int i = 0; i < 8; i++) {
            item *it = &child.items[child.nitems];
            it->id = child.nitems++;
            it->base.exec = exec_write;
            buf_init(&it->base.reply);
            if (prev)
                prev->base.next = &it->base;
            else
                head = it;
            prev = it;
        }
        commit_submit(child.c, &head->base, &prev->base);
        for (int turn = 0; turn < MAX_TURNS && child.ndone < 8; turn++)
            uv_run(&child.loop, UV_RUN_ONCE);
        _exit(child.ndone == 8 && child.items[7].base.status == 0 ? 0 : 3);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    open_store(f, STORE_SYNC_ALWAYS);
    for (int i = 0; i < 8; i++)
        expect_written(f, i, true);
    expect_meta(f->st, "counter", "8");
}

/* commit_submit queues head..tail and must not touch items after tail: a
 * caller may hand over part of a longer list, or a tail whose next pointer is
 * stale from an earlier delivery. (Regression: commit_submit once reset the
 * status of every item reachable from head before cutting the list at tail.) */
static void test_submit_touches_only_head_to_tail(void **state)
{
    fx *f = *state;
    item *a = new_item(f, true), *b = new_item(f, true), *c = new_item(f, true);
    a->base.next = &b->base;
    b->base.next = &c->base;
    c->base.status = 42;
    commit_submit(f->c, &a->base, &b->base);
    assert_int_equal(c->base.status, 42);
    pump(f, 2);
    assert_int_equal(f->order[0], a->id);
    assert_int_equal(f->order[1], b->id);
    assert_null(b->base.next);
    assert_int_equal(c->seen, 0);
    expect_written(f, c->id, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_and_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_exec_fails_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_items_without_exec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_delivers_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_always, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_completed_survives_process_death, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_touches_only_head_to_tail, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
