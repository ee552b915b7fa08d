/* server: `keel standalone` — the single-process server's loop thread.
 *
 * Design note
 * -----------
 * One libuv loop owns the connections (net.c), the cluster map and the data
 * path's read transaction; the storage thread (commit.c) owns every write
 * transaction. A request is parsed in place, validated against the schema
 * (kv_parse), and then:
 *
 *   - a read on a connection with no reply outstanding runs at once against
 *     the loop's LMDB read transaction (memory-mapped, no disk wait on a warm
 *     cache) and is answered at once;
 *   - a write, an admin change that persists the map, or a read on a
 *     connection that has writes in flight becomes a commit item with a
 *     deferred reply, collected for this loop turn and handed to the storage
 *     thread as one group (uv_prepare, once per turn).
 *
 * Invariants:
 *   1. Replies leave a connection in request order (net.h invariant 1), and a
 *      read that follows a write on the same connection sees that write (it
 *      runs after it in the same group or a later one).
 *   2. A write is acknowledged only after its group committed (and synced,
 *      with --sync always): items complete after their transaction
 *      (commit.h invariant 1).
 *   3. The read transaction is reset at the end of every loop turn and after
 *      every completion, so a read that starts after an acknowledgement sees
 *      the acknowledged write (linearizability of single-object operations).
 *   4. The cluster map changes only on the loop thread, through cmap_apply;
 *      the change and the map's new encoding are persisted in the same group
 *      commit FIFO as data writes, so a write to a new space can never reach
 *      the disk before the space does.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "cmap.h"
#include "commit.h"
#include "kv.h"
#include "log.h"
#include "net.h"
#include "proc.h"
#include "resp.h"
#include "store.h"
#include "version.h"

#define SHUTDOWN_GRACE_MS 5000

typedef struct server server;

/* A unit of work for the storage thread, answered through a deferred reply. */
typedef struct item {
    commit_item base; /* first: commit_item * <-> item * */
    net_reply *reply;
    kv_op *op;           /* data command, or NULL */
    buf blob;            /* an encoded cluster map to persist, if len > 0 */
    uint32_t drop_space; /* a space id whose data to delete, or 0 */
} item;

typedef struct space_ref {
    uint32_t id;
    kv_space *sp;
} space_ref;

struct server {
    server_opts o;
    uv_loop_t loop;
    net_server *net;
    uv_prepare_t prepare;
    uv_signal_t sigs[3];
    uv_timer_t grace;
    store *st;
    commit *cm;
    cmap *map;
    space_ref *spaces; /* data-path view of the map's spaces */
    size_t nspaces;
    store_txn rtxn;
    bool rtxn_active;
    item *batch_head, *batch_tail;
    bool stopping;
    bool grace_expired;
    int lock_fd;
    uint64_t start_ms;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the data-path view of spaces --------------------------------------- */

static kv_space *space_get(server *s, uint32_t id)
{
    for (size_t i = 0; i < s->nspaces; i++)
        if (s->spaces[i].id == id) return s->spaces[i].sp;
    return NULL;
}

static void space_add(server *s, uint32_t id, const space_schema *schema)
{
    s->spaces = realloc(s->spaces, (s->nspaces + 1) * sizeof *s->spaces);
    if (!s->spaces) abort();
    s->spaces[s->nspaces].id = id;
    s->spaces[s->nspaces].sp = kv_space_new(id, schema);
    s->nspaces++;
}

static void space_remove(server *s, uint32_t id)
{
    for (size_t i = 0; i < s->nspaces; i++)
        if (s->spaces[i].id == id) {
            kv_space_unref(s->spaces[i].sp);
            s->spaces[i] = s->spaces[--s->nspaces];
            return;
        }
}

/* ---- commit items ------------------------------------------------------------ */

static int exec_item_fn(store_txn *t, commit_item *ci);

/* Queues an item for this loop turn's group commit; its reply is deferred. */
static item *item_submit(server *s, net_conn *c)
{
    item *it = calloc(1, sizeof *it);
    if (!it) abort();
    it->reply = net_reply_defer(c);
    it->base.exec = exec_item_fn;
    buf_init(&it->base.reply);
    buf_init(&it->blob);
    if (s->batch_tail)
        s->batch_tail->base.next = &it->base;
    else
        s->batch_head = it;
    s->batch_tail = it;
    return it;
}

static void item_free(item *it)
{
    kv_op_free(it->op);
    buf_free(&it->base.reply);
    buf_free(&it->blob);
    free(it);
}

static void reply_ioerr(buf *out, int rc)
{
    resp_add_errorf(out, "IOERR storage error: %s", mdb_strerror(rc));
}

static int exec_item_fn(store_txn *t, commit_item *ci)
{
    item *it = (item *)ci;
    int rc = 0;
    if (it->drop_space && (rc = store_drop_space(t, it->drop_space))) return rc;
    if (it->blob.len && (rc = store_meta_put(t, "cmap", it->blob.data, it->blob.len))) return rc;
    if (it->op) rc = kv_exec(t, it->op, &it->base.reply);
    return rc;
}

static void rtxn_release(server *s);

static void on_items_done(void *arg, commit_item *list)
{
    server *s = arg;
    /* New commits are visible only to transactions begun after them. */
    rtxn_release(s);
    while (list) {
        item *it = (item *)list;
        list = list->next;
        buf *out = net_reply_buf(it->reply);
        if (it->base.status)
            reply_ioerr(out, it->base.status);
        else
            buf_append(out, it->base.reply.data, it->base.reply.len);
        net_reply_done(it->reply);
        item_free(it);
    }
}

/* Queues a persisted change: the map as it is now (and a space's data to
 * delete); the reply is sent once it committed. */
static void submit_map_change(server *s, net_conn *c, uint32_t drop_space)
{
    item *it = item_submit(s, c);
    it->drop_space = drop_space;
    cmap_encode(s->map, &it->blob);
    resp_add_simple(&it->base.reply, "OK");
}

/* ---- reads and the read transaction ---------------------------------------- */

static int rtxn_get(server *s, store_txn **t)
{
    if (!s->rtxn_active) {
        int rc = store_txn_renew(&s->rtxn);
        if (rc) return rc;
        s->rtxn_active = true;
    }
    *t = &s->rtxn;
    return 0;
}

static void rtxn_release(server *s)
{
    if (s->rtxn_active) {
        store_txn_reset(&s->rtxn);
        s->rtxn_active = false;
    }
}

/* ---- commands --------------------------------------------------------------- */

static bool is(const char *w, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(w, name, len) == 0;
}

static void cmd_data(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    int kind = kv_kind_of(argv[0], argvlen[0]);
    if (argc < 2) {
        resp_add_errorf(net_reply_now(c), "ERR wrong number of arguments for '%.*s'",
                        (int)argvlen[0], argv[0]);
        return;
    }
    const cmap_space *cs = cmap_space_find(s->map, argv[1], argvlen[1]);
    if (!cs) {
        kv_reply_nospace(net_reply_now(c), argv[1], argvlen[1]);
        return;
    }
    kv_op *op;
    buf err;
    buf_init(&err);
    if (kv_parse(cs, space_get(s, cs->id), argc, argv, argvlen, s->o.max_key, &op, &err)) {
        buf_append(net_reply_now(c), err.data, err.len);
        buf_free(&err);
        return;
    }
    buf_free(&err);
    /* A read on a connection with writes in flight goes through the storage
     * thread too, so it sees those writes (replies stay in order either way). */
    if (!kv_is_write(kind) && !net_conn_busy(c)) {
        store_txn *t;
        buf *out = net_reply_now(c);
        int rc = rtxn_get(s, &t);
        if (!rc) rc = kv_exec(t, op, out);
        if (rc) reply_ioerr(out, rc);
        kv_op_free(op);
        return;
    }
    kv_op_detach(op);
    item_submit(s, c)->op = op;
}

/* SPACE.ADD takes the description as one argument or as several words. */
static void cmd_space_add(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    buf text, cmd;
    buf_init(&text);
    buf_init(&cmd);
    for (int i = 1; i < argc; i++) {
        if (i > 1) buf_putc(&text, ' ');
        buf_append(&text, argv[i], argvlen[i]);
    }
    cmap_cmd_add_space(&cmd, text.data ? text.data : "", text.len);
    cmap_result res;
    if (cmap_apply(s->map, cmd.data, cmd.len, &res)) {
        resp_add_error(net_reply_now(c), res.msg);
    } else {
        const cmap_space *cs = cmap_space_by_id(s->map, (uint32_t)res.id);
        space_add(s, cs->id, cs->schema);
        log_notice("event=space_added space=%s id=%u partitions=%u tolerate=%u", cs->schema->name,
                   cs->id, cs->schema->partitions, cs->schema->tolerate);
        submit_map_change(s, c, 0);
    }
    buf_free(&text);
    buf_free(&cmd);
}

static void cmd_space_drop(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    (void)argc;
    const cmap_space *cs = cmap_space_find(s->map, argv[1], argvlen[1]);
    uint32_t id = cs ? cs->id : 0;
    buf cmd;
    buf_init(&cmd);
    cmap_cmd_drop_space(&cmd, argv[1], argvlen[1]);
    cmap_result res;
    if (cmap_apply(s->map, cmd.data, cmd.len, &res)) {
        resp_add_error(net_reply_now(c), res.msg);
    } else {
        space_remove(s, id);
        log_notice("event=space_dropped space=%.*s id=%u", (int)argvlen[1], argv[1], id);
        submit_map_change(s, c, id);
    }
    buf_free(&cmd);
}

static void cmd_space_list(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    (void)argc, (void)argv, (void)argvlen;
    buf *out = net_reply_now(c);
    resp_add_array(out, s->map->nspaces);
    for (uint32_t i = 0; i < s->map->nspaces; i++)
        resp_add_bulk_str(out, s->map->spaces[i].schema->name);
}

static void cmd_space_describe(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    (void)argc;
    const cmap_space *cs = cmap_space_find(s->map, argv[1], argvlen[1]);
    buf *out = net_reply_now(c);
    if (!cs) {
        kv_reply_nospace(out, argv[1], argvlen[1]);
        return;
    }
    buf text;
    buf_init(&text);
    space_describe(cs->schema, &text);
    resp_add_bulk(out, text.data, text.len);
    buf_free(&text);
}

static void cmd_config(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    char name[64];
    if (argvlen[2] >= sizeof name) {
        resp_add_errorf(net_reply_now(c), "ERR unknown setting '%.32s'", argv[2]);
        return;
    }
    memcpy(name, argv[2], argvlen[2]);
    name[argvlen[2]] = 0;
    if (is(argv[1], argvlen[1], "GET") && argc == 3) {
        buf v;
        buf_init(&v);
        buf *out = net_reply_now(c);
        if (cmap_config_get(s->map, name, &v))
            resp_add_errorf(out, "ERR unknown setting '%s'", name);
        else
            resp_add_bulk(out, v.data, v.len);
        buf_free(&v);
    } else if (is(argv[1], argvlen[1], "SET") && argc == 4) {
        char value[64];
        size_t n = argvlen[3] < sizeof value - 1 ? argvlen[3] : sizeof value - 1;
        memcpy(value, argv[3], n);
        value[n] = 0;
        buf cmd;
        buf_init(&cmd);
        cmap_cmd_set_config(&cmd, name, value);
        cmap_result res;
        if (cmap_apply(s->map, cmd.data, cmd.len, &res)) {
            resp_add_error(net_reply_now(c), res.msg);
        } else {
            log_notice("event=config_changed %s=%s", name, value);
            submit_map_change(s, c, 0);
        }
        buf_free(&cmd);
    } else {
        resp_add_error(net_reply_now(c), "ERR usage: CLUSTER.CONFIG GET name | SET name value");
    }
}

static void cmd_ping(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    (void)s;
    if (argc == 1)
        resp_add_simple(net_reply_now(c), "PONG");
    else
        resp_add_bulk(net_reply_now(c), argv[1], argvlen[1]);
}

static void cmd_echo(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    (void)s, (void)argc;
    resp_add_bulk(net_reply_now(c), argv[1], argvlen[1]);
}

static void cmd_quit(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    (void)s, (void)argc, (void)argv, (void)argvlen;
    resp_add_simple(net_reply_now(c), "OK");
    net_conn_close_after_replies(c);
}

static void cmd_info(server *s, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    const char *want = argc > 1 ? argv[1] : NULL;
    size_t wlen = argc > 1 ? argvlen[1] : 0;
    net_stats ns;
    net_server_stats_get(s->net, &ns);
    buf t;
    buf_init(&t);
#define SECTION(name) (!want || is(want, wlen, name) || is(want, wlen, "all"))
    if (SECTION("server")) {
        buf_printf(&t,
                   "# Server\r\nkeel_version:%s\r\nmode:standalone\r\nprocess_id:%d\r\n"
                   "tcp_host:%s\r\ntcp_port:%d\r\nuptime_in_seconds:%llu\r\n"
                   "cluster_id:%016llx\r\n\r\n",
                   KEEL_VERSION, (int)getpid(), s->o.host, s->o.port,
                   (unsigned long long)((now_ms() - s->start_ms) / 1000),
                   (unsigned long long)s->map->cluster_id);
    }
    if (SECTION("clients")) {
        buf_printf(&t,
                   "# Clients\r\nconnected_clients:%zu\r\nmax_connections:%zu\r\n"
                   "rejected_connections:%llu\r\n\r\n",
                   ns.connected, s->o.max_conns, ns.rejected);
    }
    if (SECTION("stats")) {
        buf_printf(&t,
                   "# Stats\r\ntotal_connections_received:%llu\r\n"
                   "total_commands_processed:%llu\r\ngroup_commits:%llu\r\n\r\n",
                   ns.accepted, ns.commands, commit_groups(s->cm));
    }
    if (SECTION("storage")) {
        buf_printf(
            &t, "# Storage\r\ndata_dir:%s\r\nsync:%s\r\nmap_size:%zu\r\nmap_version:%llu\r\n\r\n",
            s->o.dir, store_sync_name(s->o.sync_policy), s->o.map_size,
            (unsigned long long)s->map->version);
    }
    if (SECTION("limits")) {
        buf_printf(&t,
                   "# Limits\r\nmax_request_bytes:%zu\r\nmax_args:%zu\r\nmax_bulk_bytes:%zu\r\n"
                   "max_key_bytes:%zu\r\nmax_connections:%zu\r\n\r\n",
                   s->o.max_request, s->o.max_args, s->o.max_bulk, s->o.max_key, s->o.max_conns);
    }
    if (SECTION("keyspace")) {
        buf_printf(&t, "# Keyspace\r\nspaces:%u\r\n", s->map->nspaces);
        for (uint32_t i = 0; i < s->map->nspaces; i++) {
            const cmap_space *sp = &s->map->spaces[i];
            unsigned degraded = 0;
            for (uint32_t p = 0; p < sp->schema->partitions; p++)
                degraded += sp->parts[p].health != CMAP_H_PROTECTED;
            buf_printf(&t, "space_%s:id=%u,partitions=%u,tolerate=%u,degraded_partitions=%u\r\n",
                       sp->schema->name, sp->id, sp->schema->partitions, sp->schema->tolerate,
                       degraded);
        }
        buf_puts(&t, "\r\n");
    }
#undef SECTION
    resp_add_bulk(net_reply_now(c), t.data, t.len);
    buf_free(&t);
}

typedef void (*cmd_fn)(server *s, net_conn *c, int argc, char **argv, size_t *argvlen);
static const struct command {
    const char *name;
    int min_args, max_args; /* counting the name; max -1: any */
    cmd_fn fn;
} commands[] = {
    {"SPACE.ADD", 2, -1, cmd_space_add},
    {"SPACE.DROP", 2, 2, cmd_space_drop},
    {"SPACE.LIST", 1, 1, cmd_space_list},
    {"SPACE.DESCRIBE", 2, 2, cmd_space_describe},
    {"CLUSTER.CONFIG", 3, 4, cmd_config},
    {"PING", 1, 2, cmd_ping},
    {"ECHO", 2, 2, cmd_echo},
    {"INFO", 1, 2, cmd_info},
    {"QUIT", 1, 1, cmd_quit},
};

static void dispatch(void *arg, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    server *s = arg;
    if (kv_kind_of(argv[0], argvlen[0])) {
        cmd_data(s, c, argc, argv, argvlen);
        return;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct command *k = &commands[i];
        if (!is(argv[0], argvlen[0], k->name)) continue;
        if (argc < k->min_args || (k->max_args >= 0 && argc > k->max_args)) {
            resp_add_errorf(net_reply_now(c), "ERR wrong number of arguments for '%s'", k->name);
            return;
        }
        k->fn(s, c, argc, argv, argvlen);
        return;
    }
    resp_add_errorf(net_reply_now(c), "ERR unknown command '%.*s'",
                    (int)(argvlen[0] > 32 ? 32 : argvlen[0]), argv[0]);
}

/* ---- the loop turn ---------------------------------------------------------- */

static void finish_shutdown(server *s);

static void on_prepare(uv_prepare_t *h)
{
    server *s = h->data;
    if (s->batch_head) {
        commit_submit(s->cm, &s->batch_head->base, &s->batch_tail->base);
        s->batch_head = s->batch_tail = NULL;
    }
    /* Readers must not pin old pages across turns (and must see new commits). */
    rtxn_release(s);
    if (s->stopping && (s->grace_expired || net_server_idle(s->net))) finish_shutdown(s);
}

static void on_grace(uv_timer_t *t)
{
    server *s = t->data;
    log_warn("shutdown: clients did not take their replies within %d ms; closing them",
             SHUTDOWN_GRACE_MS);
    s->grace_expired = true;
}

static void begin_shutdown(server *s, int signum)
{
    if (s->stopping) return;
    s->stopping = true;
    log_notice("event=shutdown_requested signal=%s: finishing in-flight requests",
               strsignal(signum));
    net_server_quiesce(s->net);
    uv_timer_start(&s->grace, on_grace, SHUTDOWN_GRACE_MS, 0);
}

static void finish_shutdown(server *s)
{
    net_server_close(s->net);
    s->net = NULL;
    commit_stop(s->cm); /* delivers the last completions (dropped), syncs */
    s->cm = NULL;
    uv_prepare_stop(&s->prepare);
    uv_close((uv_handle_t *)&s->prepare, NULL);
    uv_close((uv_handle_t *)&s->grace, NULL);
    for (int i = 0; i < 3; i++)
        uv_close((uv_handle_t *)&s->sigs[i], NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum);
}

/* ---- start-up ----------------------------------------------------------------- */

/* Loads the persisted cluster map, or bootstraps a new one-node cluster. */
static int load_map(server *s, char *err, size_t errlen)
{
    store_txn t;
    const void *v;
    size_t vlen;
    int rc = store_txn_begin(s->st, false, &t);
    if (rc) goto err_storage;
    rc = store_meta_get(&t, "cmap", &v, &vlen);
    if (rc == 0) {
        int bad = cmap_decode(v, vlen, &s->map);
        store_txn_abort(&t);
        if (bad) {
            snprintf(err, errlen,
                     "the cluster map in %s is unreadable (corrupt or from a newer keel)",
                     s->o.dir);
            return -1;
        }
        for (uint32_t i = 0; i < s->map->nspaces; i++)
            space_add(s, s->map->spaces[i].id, s->map->spaces[i].schema);
        log_notice("loaded cluster %016llx: %u spaces, map version %llu",
                   (unsigned long long)s->map->cluster_id, s->map->nspaces,
                   (unsigned long long)s->map->version);
        return 0;
    }
    store_txn_abort(&t);
    if (rc != MDB_NOTFOUND) goto err_storage;

    uint64_t id = 0;
    while (id == 0)
        if (getrandom(&id, sizeof id, 0) != sizeof id) id = now_ms() ^ ((uint64_t)getpid() << 32);
    s->map = cmap_new();
    buf cmd;
    buf_init(&cmd);
    cmap_result res;
    cmap_cmd_bootstrap(&cmd, id, true);
    int bad = cmap_apply(s->map, cmd.data, cmd.len, &res);
    buf_reset(&cmd);
    cmap_cmd_add_daemon(&cmd, s->o.host, (uint16_t)s->o.port,
                        (uint16_t)(s->o.port + 10000 <= 65535 ? s->o.port + 10000 : s->o.port),
                        now_ms());
    bad = bad || cmap_apply(s->map, cmd.data, cmd.len, &res);
    buf_reset(&cmd);
    if (bad) {
        buf_free(&cmd);
        snprintf(err, errlen, "cannot bootstrap the cluster map: %s", res.msg);
        return -1;
    }
    cmap_encode(s->map, &cmd);
    if ((rc = store_txn_begin(s->st, true, &t)) == 0) {
        rc = store_meta_put(&t, "cmap", cmd.data, cmd.len);
        if (rc)
            store_txn_abort(&t);
        else
            rc = store_txn_commit(&t);
    }
    buf_free(&cmd);
    if (rc == 0) rc = store_sync(s->st);
    if (rc) goto err_storage;
    log_notice("event=cluster_created cluster=%016llx mode=standalone", (unsigned long long)id);
    return 0;

err_storage:
    snprintf(err, errlen, "storage error in %s: %s", s->o.dir, mdb_strerror(rc));
    return -1;
}

/* Runs the server; ready_fd (or -1) receives one status byte and, on error,
 * the message, for the parent of a daemonised server. */
static int server_run(const server_opts *o, int ready_fd)
{
    server *s = calloc(1, sizeof *s);
    if (!s) return 1;
    s->o = *o;
    s->lock_fd = -1;
    s->start_ms = now_ms();
    char err[512] = "";
    int status = 1;

    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&s->loop);
    /* Listen first: a taken port must not leave a fresh data directory behind. */
    net_config nc = {.host = o->host,
                     .port = o->port,
                     .limits = {o->max_request, o->max_args, o->max_bulk},
                     .max_conns = o->max_conns,
                     .dispatch = dispatch,
                     .arg = s};
    if (net_server_start(&s->net, &s->loop, &nc, err, sizeof err)) goto err_after_loop;
    if (mkdir(o->dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, sizeof err, "cannot create data directory %s: %s", o->dir, strerror(errno));
        goto err_after_loop;
    }
    if ((s->lock_fd = proc_lock_dir(o->dir, err, sizeof err)) < 0) goto err_after_loop;
    if (store_open(&s->st, o->dir, o->sync_policy, o->map_size, err, sizeof err))
        goto err_after_lock;
    if (load_map(s, err, sizeof err)) goto err_after_store;
    int rc = store_txn_begin(s->st, false, &s->rtxn);
    if (rc) {
        snprintf(err, sizeof err, "storage error: %s", mdb_strerror(rc));
        goto err_after_map;
    }
    store_txn_reset(&s->rtxn);
    if (commit_start(&s->cm, s->st, &s->loop, on_items_done, s)) {
        snprintf(err, sizeof err, "cannot start the storage thread");
        goto err_after_rtxn;
    }
    uv_prepare_init(&s->loop, &s->prepare);
    s->prepare.data = s;
    uv_prepare_start(&s->prepare, on_prepare);
    uv_timer_init(&s->loop, &s->grace);
    s->grace.data = s;
    int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&s->loop, &s->sigs[i]);
        s->sigs[i].data = s;
        uv_signal_start(&s->sigs[i], on_signal, signums[i]);
    }
    if (!o->foreground) proc_write_pid(o->dir);
    log_notice("event=server_started mode=standalone listen=%s:%d data=%s sync=%s pid=%d", o->host,
               o->port, o->dir, store_sync_name(o->sync_policy), (int)getpid());
    proc_ready(&ready_fd);

    uv_run(&s->loop, UV_RUN_DEFAULT);
    log_notice("event=server_stopped clean shutdown");
    status = 0;
    if (!o->foreground) proc_remove_pid(o->dir);

err_after_rtxn:
    store_txn_abort(&s->rtxn);
err_after_map:
    for (size_t i = 0; i < s->nspaces; i++)
        kv_space_unref(s->spaces[i].sp);
    free(s->spaces);
    cmap_free(s->map);
err_after_store:
    store_close(s->st);
err_after_lock:
    if (s->lock_fd >= 0) close(s->lock_fd);
err_after_loop:
    if (s->net && status) net_server_close(s->net);
    proc_loop_close(&s->loop);
    if (status) {
        log_error("cannot start: %s", err);
        proc_failed(&ready_fd, err);
    }
    free(s);
    return status;
}

int server_main(const server_opts *o)
{
    if (o->foreground) return server_run(o, -1);
    char what[128];
    snprintf(what, sizeof what, "serving on %s:%d", o->host, o->port);
    int is_child, ready_fd;
    int rc = proc_daemonize(o->dir, what, &is_child, &ready_fd);
    if (!is_child) return rc;
    _exit(server_run(o, ready_fd));
}

/* ---- arguments -------------------------------------------------------------- */

void server_usage(void)
{
    fprintf(stderr,
            "usage: keel standalone [-f] [-l HOST] [-p PORT] [-D DIR] [--sync always|batch|none]\n"
            "         [--map-size BYTES] [--max-request-bytes N] [--max-args N]\n"
            "         [--max-bulk-bytes N] [--max-key-bytes N] [--max-connections N]\n"
            "  -f, --foreground         stay in the foreground, log to stderr\n"
            "  -l, --listen HOST        bind address (default 127.0.0.1)\n"
            "  -p, --listen-port PORT   client port (default 2012)\n"
            "  -D, --data DIR           data directory (default keel-data)\n"
            "  --sync POLICY            always: fsync before every acknowledgement;\n"
            "                           batch (default): at least every second; none: never\n");
}

static int parse_size(const char *flag, const char *v, size_t min, size_t max, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || n < min || n > max) {
        fprintf(stderr, "keel: %s needs a number in %zu..%zu, got '%s'\n", flag, min, max, v);
        return -1;
    }
    *out = (size_t)n;
    return 0;
}

int server_parse_args(int argc, char **argv, server_opts *o)
{
    *o = (server_opts){.host = "127.0.0.1",
                       .port = 2012,
                       .dir = "keel-data",
                       .sync_policy = STORE_SYNC_BATCH,
                       .map_size = STORE_DEFAULT_MAP_SIZE,
                       .max_request = RESP_DEFAULT_MAX_REQUEST,
                       .max_args = RESP_DEFAULT_MAX_ARGS,
                       .max_bulk = RESP_DEFAULT_MAX_BULK,
                       .max_key = 256,
                       .max_conns = 10000};
    enum {
        OPT_SYNC = 1000,
        OPT_MAP,
        OPT_MREQ,
        OPT_MARGS,
        OPT_MBULK,
        OPT_MKEY,
        OPT_MCONN,
        OPT_HELP
    };
    static const struct option lo[] = {{"foreground", no_argument, 0, 'f'},
                                       {"listen", required_argument, 0, 'l'},
                                       {"listen-port", required_argument, 0, 'p'},
                                       {"port", required_argument, 0, 'p'},
                                       {"data", required_argument, 0, 'D'},
                                       {"sync", required_argument, 0, OPT_SYNC},
                                       {"map-size", required_argument, 0, OPT_MAP},
                                       {"max-request-bytes", required_argument, 0, OPT_MREQ},
                                       {"max-args", required_argument, 0, OPT_MARGS},
                                       {"max-bulk-bytes", required_argument, 0, OPT_MBULK},
                                       {"max-key-bytes", required_argument, 0, OPT_MKEY},
                                       {"max-connections", required_argument, 0, OPT_MCONN},
                                       {"help", no_argument, 0, OPT_HELP},
                                       {0, 0, 0, 0}};
    optind = 1;
    int ch;
    size_t port = 0;
    while ((ch = getopt_long(argc, argv, "fl:p:D:", lo, NULL)) != -1) {
        switch (ch) {
        case 'f':
            o->foreground = true;
            break;
        case 'l':
            o->host = optarg;
            break;
        case 'p':
            if (parse_size("--listen-port", optarg, 1, 65535, &port)) return 2;
            o->port = (int)port;
            break;
        case 'D':
            o->dir = optarg;
            break;
        case OPT_SYNC:
            if ((o->sync_policy = store_sync_parse(optarg)) < 0) {
                fprintf(stderr, "keel: --sync must be always, batch or none, got '%s'\n", optarg);
                return 2;
            }
            break;
        case OPT_MAP:
            if (parse_size("--map-size", optarg, 1u << 20, (size_t)1 << 44, &o->map_size)) return 2;
            break;
        case OPT_MREQ:
            if (parse_size("--max-request-bytes", optarg, 64, (size_t)1 << 31, &o->max_request))
                return 2;
            break;
        case OPT_MARGS:
            if (parse_size("--max-args", optarg, 3, 1u << 20, &o->max_args)) return 2;
            break;
        case OPT_MBULK:
            if (parse_size("--max-bulk-bytes", optarg, 16, (size_t)1 << 31, &o->max_bulk)) return 2;
            break;
        case OPT_MKEY:
            if (parse_size("--max-key-bytes", optarg, 1, STORE_MAX_KEY, &o->max_key)) return 2;
            break;
        case OPT_MCONN:
            if (parse_size("--max-connections", optarg, 1, 1000000, &o->max_conns)) return 2;
            break;
        case OPT_HELP:
            server_usage();
            exit(0);
        default:
            server_usage();
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "keel: unexpected argument '%s'\n", argv[optind]);
        server_usage();
        return 2;
    }
    return 0;
}
