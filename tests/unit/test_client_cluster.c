/* test_client_cluster: libkeel's cluster mode.
 *
 * The pure parts (src/kroute.c): decoding CLUSTER.ROUTES, the key's
 * partition against known XXH64 values, -MOVED and "leader is" lines, INFO
 * fields, hostile replies. Then the client against in-process fake daemons:
 * each fake is a thread serving any number of connections with poll(); it
 * says it is a daemon (INFO server), answers CLUSTER.ROUTES with a table that
 * makes it (or its peer) the primary, CLIENT.REDIRECT with +OK, and every
 * other request (a data command) from a script, logged as "ARG|ARG|...". A
 * script step may close the connection instead of answering (a daemon dying
 * with the request in flight).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "keel.h"
#include "kroute.h"
#include "resp.h"

/* Parses one RESP reply from text (must be complete). */
static resp_reply *reply_of(const char *text)
{
    resp_reply *r = NULL;
    size_t used = 0;
    assert_int_equal(resp_reply_parse(text, strlen(text), &used, &r), RESP_OK);
    assert_int_equal(used, strlen(text));
    return r;
}

/* ---------------------------------------------------------------------------
 * Pure parts
 * ------------------------------------------------------------------------- */

#define ROUTES_OK                                                                                  \
    "*3\r\n:42\r\n"                                                                                \
    "*3\r\n"                                                                                       \
    "*4\r\n:1\r\n$8\r\n10.0.0.1\r\n:2012\r\n$6\r\nONLINE\r\n"                                      \
    "*4\r\n:2\r\n$8\r\n10.0.0.2\r\n:2013\r\n$7\r\nOFFLINE\r\n"                                     \
    "*4\r\n:7\r\n$3\r\n::1\r\n:2014\r\n$5\r\nWEIRD\r\n"                                            \
    "*2\r\n"                                                                                       \
    "*3\r\n$9\r\nphonebook\r\n:8\r\n*8\r\n:1\r\n:2\r\n:7\r\n:1\r\n:2\r\n:0\r\n:1\r\n:9\r\n"         \
    "*3\r\n$2\r\nkv\r\n:1\r\n*1\r\n:7\r\n"

static void test_routes_parse(void **state)
{
    (void)state;
    resp_reply *r = reply_of(ROUTES_OK);
    kroute_table t;
    assert_int_equal(kroute_parse(r, &t), 0);
    resp_reply_free(r);
    assert_int_equal(t.version, 42);
    assert_int_equal(t.ndaemons, 3);
    assert_string_equal(t.daemons[0].host, "10.0.0.1");
    assert_int_equal(t.daemons[0].port, 2012);
    assert_int_equal(t.daemons[0].state, KROUTE_ONLINE);
    assert_int_equal(t.daemons[1].state, KROUTE_OFFLINE);
    assert_int_equal(t.daemons[2].state, KROUTE_UNKNOWN);
    assert_int_equal(t.nspaces, 2);
    const kroute_space *pb = kroute_space_find(&t, "phonebook");
    assert_non_null(pb);
    assert_int_equal(pb->partitions, 8);
    assert_null(kroute_space_find(&t, "phone"));

    /* XXH64("jsmith1", seed 0) = 16398673178337047444, so partition
     * 16398673178337047444 % 8 = 4 of phonebook, whose primary is daemon 2. */
    assert_int_equal(kroute_partition("jsmith1", 7, 8), 16398673178337047444ull % 8);
    assert_int_equal(kroute_partition("jsmith1", 7, 8), 4);
    assert_int_equal(kroute_partition("jsmith1", 7, 1000), 16398673178337047444ull % 1000);
    /* XXH64 of the empty input is the published 0xEF46DB3751D8E999. */
    assert_int_equal(kroute_partition("", 0, 1000003), 0xEF46DB3751D8E999ull % 1000003);
    assert_int_equal(kroute_partition("x", 1, 0), 0);

    uint32_t part = 99;
    const kroute_daemon *d = NULL;
    assert_int_equal(kroute_lookup(&t, "phonebook", "jsmith1", 7, &part, &d), KROUTE_FOUND);
    assert_int_equal(part, 4);
    assert_int_equal(d->id, 2);
    assert_int_equal(kroute_lookup(&t, "nope", "jsmith1", 7, &part, &d), KROUTE_NO_SPACE);
    assert_int_equal(kroute_lookup(&t, "kv", "anything", 8, &part, &d), KROUTE_FOUND);
    assert_int_equal(part, 0);
    assert_string_equal(d->host, "::1");
    /* find keys landing on partition 5 (primary 0) and 7 (daemon 9, not listed) */
    int saw_none = 0, saw_unknown = 0;
    for (int i = 0; i < 200; i++) {
        char k[16];
        int n = snprintf(k, sizeof k, "k%d", i);
        int lr = kroute_lookup(&t, "phonebook", k, (size_t)n, &part, &d);
        if (part == 5) saw_none += lr == KROUTE_NO_PRIMARY;
        if (part == 7) saw_unknown += lr == KROUTE_NO_DAEMON;
        assert_int_equal(part, kroute_partition(k, (size_t)n, 8));
    }
    assert_true(saw_none > 0 && saw_unknown > 0);

    /* A -MOVED patches one entry, only to a daemon in the table. */
    assert_int_equal(kroute_patch(&t, "phonebook", 4, "10.0.0.1", 2012), 1);
    assert_int_equal(kroute_lookup(&t, "phonebook", "jsmith1", 7, &part, &d), KROUTE_FOUND);
    assert_int_equal(d->id, 1);
    assert_int_equal(kroute_patch(&t, "phonebook", 4, "10.0.0.1", 2012), 0);
    assert_int_equal(kroute_patch(&t, "phonebook", 4, "10.9.9.9", 2012), 0);
    assert_int_equal(kroute_patch(&t, "phonebook", 8, "10.0.0.2", 2013), 0);
    assert_int_equal(kroute_patch(&t, "nope", 0, "10.0.0.2", 2013), 0);
    kroute_free(&t);
    kroute_free(&t); /* empty: a no-op */
}

static void test_routes_bad_shapes(void **state)
{
    (void)state;
    static const char *const bad[] = {
        ":1\r\n",
        "*2\r\n:1\r\n*0\r\n",
        "*3\r\n:-1\r\n*0\r\n*0\r\n",                                          /* version < 0 */
        "*3\r\n:1\r\n:5\r\n*0\r\n",                                           /* daemons not array */
        "*3\r\n:1\r\n*1\r\n*3\r\n:1\r\n$1\r\nh\r\n:1\r\n*0\r\n",              /* 3 fields */
        "*3\r\n:1\r\n*1\r\n*4\r\n:0\r\n$1\r\nh\r\n:1\r\n$6\r\nONLINE\r\n*0\r\n", /* id 0 */
        "*3\r\n:1\r\n*1\r\n*4\r\n:1\r\n$0\r\n\r\n:1\r\n$6\r\nONLINE\r\n*0\r\n",  /* empty host */
        "*3\r\n:1\r\n*1\r\n*4\r\n:1\r\n$1\r\nh\r\n:0\r\n$6\r\nONLINE\r\n*0\r\n",  /* port 0 */
        "*3\r\n:1\r\n*1\r\n*4\r\n:1\r\n$1\r\nh\r\n:70000\r\n$6\r\nONLINE\r\n*0\r\n",
        "*3\r\n:1\r\n*1\r\n*4\r\n:1\r\n$1\r\nh\r\n:1\r\n:6\r\n*0\r\n",         /* state int */
        "*3\r\n:1\r\n*0\r\n*1\r\n*3\r\n$2\r\nkv\r\n:2\r\n*1\r\n:1\r\n",         /* 2 != 1 */
        "*3\r\n:1\r\n*0\r\n*1\r\n*3\r\n$2\r\nkv\r\n:0\r\n*0\r\n",               /* 0 partitions */
        "*3\r\n:1\r\n*0\r\n*1\r\n*3\r\n$2\r\nkv\r\n:1\r\n*1\r\n:-3\r\n",        /* id < 0 */
        "*3\r\n:1\r\n*0\r\n*1\r\n*3\r\n$2\r\nkv\r\n:1\r\n*1\r\n$1\r\n1\r\n",    /* id bulk */
        "*3\r\n:1\r\n*0\r\n*1\r\n*3\r\n:2\r\n:1\r\n*1\r\n:1\r\n",               /* name int */
        "*3\r\n:1\r\n*0\r\n*2\r\n*3\r\n$2\r\nkv\r\n:1\r\n*1\r\n:1\r\n:9\r\n",   /* space int */
        "*3\r\n:1\r\n*0\r\n*1\r\n*3\r\n$2\r\nk\0\r\n:1\r\n*1\r\n:1\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        resp_reply *r = NULL;
        size_t used = 0;
        if (resp_reply_parse(bad[i], strlen(bad[i]), &used, &r) != RESP_OK) continue;
        kroute_table t;
        assert_int_equal(kroute_parse(r, &t), -1);
        assert_int_equal(t.nspaces, 0);
        assert_int_equal(t.ndaemons, 0);
        resp_reply_free(r);
    }
    /* An empty cluster is fine. */
    resp_reply *r = reply_of("*3\r\n:3\r\n*0\r\n*0\r\n");
    kroute_table t;
    assert_int_equal(kroute_parse(r, &t), 0);
    assert_int_equal(t.version, 3);
    kroute_free(&t);
    resp_reply_free(r);
}

static void test_moved_and_hints(void **state)
{
    (void)state;
    kroute_moved m;
    const char *s = "MOVED 3 10.0.0.2:2013 17";
    assert_int_equal(kroute_parse_moved(s, strlen(s), &m), 0);
    assert_int_equal(m.partition, 3);
    assert_string_equal(m.host, "10.0.0.2");
    assert_int_equal(m.port, 2013);
    assert_int_equal(m.version, 17);
    s = "MOVED 0 [::1]:2013 18446744073709551615";
    assert_int_equal(kroute_parse_moved(s, strlen(s), &m), 0);
    assert_string_equal(m.host, "::1");
    assert_int_equal(m.version, UINT64_MAX);
    s = "MOVED 1 fe80::1:2013 2"; /* the server prints IPv6 hosts bare */
    assert_int_equal(kroute_parse_moved(s, strlen(s), &m), 0);
    assert_string_equal(m.host, "fe80::1");
    static const char *const bad[] = {
        "MOVED",         "MOVED 3",           "MOVED 3 h:1",        "MOVED x h:1 2",
        "MOVED 3 h 2",   "MOVED 3 h:0 2",     "MOVED 3 h:65536 2",  "MOVED 3 :1 2",
        "MOVE 3 h:1 2",  "MOVED 3 h:1 -2",    "MOVED 99999999999 h:1 2",
        "MOVED 3 h:1 18446744073709551616",   "TRYAGAIN leader is h:1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(kroute_parse_moved(bad[i], strlen(bad[i]), &m), -1);

    char host[KROUTE_HOST_MAX];
    int port = 0;
    s = "TRYAGAIN leader is 10.0.0.2:1982 (unreachable from here)";
    assert_int_equal(kroute_leader_hint(s, strlen(s), host, sizeof host, &port), 0);
    assert_string_equal(host, "10.0.0.2");
    assert_int_equal(port, 1982);
    s = "TRYAGAIN leader is [::1]:1983";
    assert_int_equal(kroute_leader_hint(s, strlen(s), host, sizeof host, &port), 0);
    assert_string_equal(host, "::1");
    s = "TRYAGAIN no leader yet (election in progress)";
    assert_int_equal(kroute_leader_hint(s, strlen(s), host, sizeof host, &port), -1);
    s = "TRYAGAIN leader is";
    assert_int_equal(kroute_leader_hint(s, strlen(s), host, sizeof host, &port), -1);
    assert_int_equal(kroute_parse_addr("h:12", 4, host, 2, &port), 0);
    assert_int_equal(kroute_parse_addr("hh:12", 5, host, 2, &port), -1); /* too long */
    assert_int_equal(kroute_parse_addr("[]:12", 5, host, sizeof host, &port), -1);
    assert_int_equal(kroute_parse_addr("h:1a", 4, host, sizeof host, &port), -1);

    const char *info = "# Lease\r\nlease_valid:1\r\ncoordinator:10.0.0.1:1982\r\n"
                       "coordinators:10.0.0.1:1982,10.0.0.2:1982\r\nmode: daemon \r\nempty:\r\n";
    char v[64];
    assert_int_equal(kroute_info_field(info, strlen(info), "coordinator", v, sizeof v), 0);
    assert_string_equal(v, "10.0.0.1:1982");
    assert_int_equal(kroute_info_field(info, strlen(info), "coordinators", v, sizeof v), 0);
    assert_string_equal(v, "10.0.0.1:1982,10.0.0.2:1982");
    assert_int_equal(kroute_info_field(info, strlen(info), "mode", v, sizeof v), 0);
    assert_string_equal(v, "daemon");
    assert_int_equal(kroute_info_field(info, strlen(info), "empty", v, sizeof v), 0);
    assert_string_equal(v, "");
    assert_int_equal(kroute_info_field(info, strlen(info), "lease", v, sizeof v), -1);
    assert_int_equal(kroute_info_field(info, strlen(info), "coordinators", v, 8), -1);

    int d = KROUTE_BACKOFF_FIRST_MS;
    int seen[8];
    for (int i = 0; i < 8; i++) {
        seen[i] = d;
        d = kroute_backoff_next(d);
    }
    assert_int_equal(seen[0], 50);
    assert_int_equal(seen[1], 100);
    assert_int_equal(seen[3], 400);
    assert_int_equal(seen[4], 500);
    assert_int_equal(seen[7], 500);
}

/* ---------------------------------------------------------------------------
 * Fake daemons
 * ------------------------------------------------------------------------- */

#define CLOSE_CONN "<close>" /* a script step: close instead of answering */
#define MAX_FCONN 8
#define MAX_LOG 32

typedef struct fd_fake {
    int lfd;
    int port;
    int stop_pipe[2];
    pthread_t th;
    pthread_mutex_t mu;
    const char *routes; /* CLUSTER.ROUTES reply */
    const char *script[16];
    size_t nscript; /* the last step repeats */
    size_t next;
    char log[MAX_LOG][256]; /* data requests */
    size_t nlog;
    int accepted;
} fd_fake;

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

typedef struct fconn {
    int fd;
    resp_parser p;
    buf in;
} fconn;

static int is_word(const resp_request *q, size_t i, const char *w)
{
    return i < q->argc && q->argvlen[i] == strlen(w) && strncasecmp(q->argv[i], w, q->argvlen[i]) == 0;
}

/* Serves one request; returns 0 to close the connection. */
static int fake_serve(fd_fake *f, int fd, const resp_request *q)
{
    static const char info[] = "# Server\r\nmode:daemon\r\n";
    static const char lease[] = "# Lease\r\ncoordinator:\r\ncoordinators:\r\n";
    buf out;
    buf_init(&out);
    int keep = 1;
    if (is_word(q, 0, "INFO") && is_word(q, 1, "server")) {
        resp_add_bulk(&out, info, strlen(info));
    } else if (is_word(q, 0, "INFO")) {
        resp_add_bulk(&out, lease, strlen(lease));
    } else if (is_word(q, 0, "CLUSTER.ROUTES")) {
        buf_puts(&out, f->routes);
    } else if (is_word(q, 0, "CLIENT.REDIRECT")) {
        buf_puts(&out, "+OK\r\n");
    } else {
        pthread_mutex_lock(&f->mu);
        if (f->nlog < MAX_LOG) {
            char *l = f->log[f->nlog++];
            size_t at = 0;
            for (size_t a = 0; a < q->argc; a++) {
                int n = snprintf(l + at, 256 - at, "%s%.*s", a ? "|" : "", (int)q->argvlen[a],
                                 q->argv[a]);
                if (n < 0 || (size_t)n >= 256 - at) break;
                at += (size_t)n;
            }
        }
        const char *step = f->script[f->next < f->nscript ? f->next : f->nscript - 1];
        f->next++;
        pthread_mutex_unlock(&f->mu);
        if (strcmp(step, CLOSE_CONN) == 0)
            keep = 0;
        else
            buf_puts(&out, step);
    }
    if (out.len) write_all(fd, out.data, out.len);
    buf_free(&out);
    return keep;
}

static void *fake_thread(void *arg)
{
    fd_fake *f = arg;
    fconn conns[MAX_FCONN];
    size_t n = 0;
    resp_limits lim = {RESP_DEFAULT_MAX_REQUEST, RESP_DEFAULT_MAX_ARGS, RESP_DEFAULT_MAX_BULK};
    for (;;) {
        struct pollfd pf[MAX_FCONN + 2];
        pf[0] = (struct pollfd){.fd = f->stop_pipe[0], .events = POLLIN};
        pf[1] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
        for (size_t i = 0; i < n; i++)
            pf[2 + i] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
        if (poll(pf, 2 + n, 5000) <= 0) continue;
        if (pf[0].revents) break;
        if ((pf[1].revents & POLLIN) && n < MAX_FCONN) {
            int fd = accept(f->lfd, NULL, NULL);
            if (fd >= 0) {
                conns[n].fd = fd;
                resp_parser_init(&conns[n].p, &lim);
                buf_init(&conns[n].in);
                n++;
                pthread_mutex_lock(&f->mu);
                f->accepted++;
                pthread_mutex_unlock(&f->mu);
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (!(pf[2 + i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            fconn *c = &conns[i];
            buf_reserve(&c->in, 65536);
            ssize_t got = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
            int keep = got > 0;
            if (got > 0) c->in.len += (size_t)got;
            while (keep) {
                resp_request q;
                int rc = resp_parse(&c->p, c->in.data, c->in.len, &q);
                if (rc != RESP_OK) {
                    keep = rc != RESP_ERROR;
                    break;
                }
                keep = fake_serve(f, c->fd, &q);
                size_t used = resp_parser_consumed(&c->p);
                buf_consume(&c->in, used);
                resp_parser_shift(&c->p, used);
            }
            if (!keep) {
                close(c->fd);
                resp_parser_free(&c->p);
                buf_free(&c->in);
                conns[i] = conns[--n];
                pf[2 + i] = pf[2 + n];
                i--;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        close(conns[i].fd);
        resp_parser_free(&conns[i].p);
        buf_free(&conns[i].in);
    }
    return NULL;
}

static void fake_listen(fd_fake *f)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(f->lfd, 8), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &sl), 0);
    f->port = ntohs(sa.sin_port);
    assert_int_equal(pipe(f->stop_pipe), 0);
}

static void fake_run(fd_fake *f, const char *routes)
{
    f->routes = routes;
    assert_int_equal(pthread_create(&f->th, NULL, fake_thread, f), 0);
}

static void fake_stop(fd_fake *f)
{
    assert_int_equal(write(f->stop_pipe[1], "x", 1), 1);
    pthread_join(f->th, NULL);
    close(f->lfd);
    close(f->stop_pipe[0]);
    close(f->stop_pipe[1]);
    pthread_mutex_destroy(&f->mu);
}

/* Routes: daemon 1 at port a, daemon 2 at port b; space kv with one
 * partition led by daemon `primary`. */
static void routes_for(char *out, size_t cap, int a, int b, int primary)
{
    snprintf(out, cap,
             "*3\r\n:7\r\n*2\r\n"
             "*4\r\n:1\r\n$9\r\n127.0.0.1\r\n:%d\r\n$6\r\nONLINE\r\n"
             "*4\r\n:2\r\n$9\r\n127.0.0.1\r\n:%d\r\n$6\r\nONLINE\r\n"
             "*1\r\n*3\r\n$2\r\nkv\r\n:1\r\n*1\r\n:%d\r\n",
             a, b, primary);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A write whose connection breaks with the request in flight is retried with
 * the same (client_id, client_seq); the next write gets client_seq + 1. */
static void test_seq_reused_across_connection_error(void **state)
{
    (void)state;
    fd_fake a, b;
    fake_listen(&a);
    fake_listen(&b);
    char routes[512];
    routes_for(routes, sizeof routes, a.port, b.port, 1);
    a.script[0] = CLOSE_CONN;
    a.script[1] = ":5\r\n";
    a.script[2] = "-TRYAGAIN partition not serving yet\r\n";
    a.script[3] = ":6\r\n";
    a.script[4] = "-TRYAGAIN again\r\n";
    a.nscript = 5;
    fake_run(&a, routes);
    fake_run(&b, routes);

    keel_client *c = NULL;
    assert_int_equal(keel_client_connect("127.0.0.1", a.port, 2000, &c), KEEL_OK);
    assert_int_equal(keel_client_mode(c), KEEL_MODE_DAEMON);
    uint64_t id = keel_client_id(c);
    assert_true(id > 0 && id <= (uint64_t)INT64_MAX);
    keel_client_stats st;
    keel_client_get_stats(c, &st);
    assert_int_equal(st.map_version, 7);

    int64_t v = 0;
    assert_int_equal(keel_add(c, "kv", "ctr", 3, "n", 1, &v), KEEL_OK);
    assert_int_equal(v, 5);
    char want[128];
    snprintf(want, sizeof want, "127.0.0.1:%d", a.port);
    assert_string_equal(keel_client_last_addr(c), want);
    assert_int_equal(keel_add(c, "kv", "ctr", 3, "n", 1, &v), KEEL_OK); /* TRYAGAIN, then 6 */
    assert_int_equal(v, 6);
    keel_client_get_stats(c, &st);
    assert_int_equal(st.attempts, 4);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.moved, 0);

    /* No retries: the TRYAGAIN comes back at once, with the server's line. */
    assert_int_equal(keel_client_set_retry_timeout(c, 0), KEEL_OK);
    assert_int_equal(keel_client_set_retry_timeout(c, -1), KEEL_ERR_INVALID);
    int64_t t0 = mono_ms();
    assert_int_equal(keel_add(c, "kv", "ctr", 3, "n", 1, &v), KEEL_ERR_TRYAGAIN);
    assert_true(mono_ms() - t0 < 500);
    assert_string_equal(keel_client_errmsg(c), "TRYAGAIN again");
    keel_client_close(c);
    fake_stop(&a);
    fake_stop(&b);

    char seq1[128], seq2[128], seq3[128];
    snprintf(seq1, sizeof seq1, "SEQ|%llu|1|ADD|kv|ctr|n|1", (unsigned long long)id);
    snprintf(seq2, sizeof seq2, "SEQ|%llu|2|ADD|kv|ctr|n|1", (unsigned long long)id);
    snprintf(seq3, sizeof seq3, "SEQ|%llu|3|ADD|kv|ctr|n|1", (unsigned long long)id);
    assert_int_equal(a.nlog, 5);
    assert_string_equal(a.log[0], seq1); /* the connection closed on it */
    assert_string_equal(a.log[1], seq1); /* the retry: the same pair */
    assert_string_equal(a.log[2], seq2);
    assert_string_equal(a.log[3], seq2);
    assert_string_equal(a.log[4], seq3);
    assert_int_equal(b.nlog, 0);
}

/* -MOVED is followed to the named daemon at once and patches the table, so
 * the next request for the partition goes straight there. */
static void test_moved_followed_and_remembered(void **state)
{
    (void)state;
    fd_fake a, b;
    fake_listen(&a);
    fake_listen(&b);
    char routes[512], moved[128];
    routes_for(routes, sizeof routes, a.port, b.port, 1);
    snprintf(moved, sizeof moved, "-MOVED 0 127.0.0.1:%d 7\r\n", b.port);
    a.script[0] = moved;
    a.nscript = 1;
    b.script[0] = "+OK\r\n";
    b.script[1] = "*2\r\n$1\r\nv\r\n$1\r\nx\r\n";
    b.script[2] = "-UNAVAILABLE partition 0 of kv has no live replica\r\n";
    b.nscript = 3;
    fake_run(&a, routes);
    fake_run(&b, routes);

    keel_client *c = NULL;
    assert_int_equal(keel_client_connect("127.0.0.1", a.port, 2000, &c), KEEL_OK);
    keel_attr at = {"v", "x", 1};
    assert_int_equal(keel_put(c, "kv", "k", 1, &at, 1), KEEL_OK);
    char want[128];
    snprintf(want, sizeof want, "127.0.0.1:%d", b.port);
    assert_string_equal(keel_client_last_addr(c), want);
    keel_object *o = NULL;
    assert_int_equal(keel_get(c, "kv", "k", 1, &o), KEEL_OK);
    assert_non_null(o);
    assert_string_equal(keel_object_find(o, "v")->value, "x");
    keel_object_free(o);
    keel_client_stats st;
    keel_client_get_stats(c, &st);
    assert_int_equal(st.moved, 1);
    assert_int_equal(st.attempts, 3);

    /* UNAVAILABLE is returned at once, not retried. */
    int64_t t0 = mono_ms();
    assert_int_equal(keel_get(c, "kv", "k", 1, &o), KEEL_ERR_UNAVAILABLE);
    assert_true(mono_ms() - t0 < 500);
    keel_client_get_stats(c, &st);
    assert_int_equal(st.attempts, 4);
    assert_int_equal(st.retries, 1); /* the -MOVED follow only */
    keel_client_close(c);
    fake_stop(&a);
    fake_stop(&b);
    assert_int_equal(a.nlog, 1);
    assert_non_null(strstr(a.log[0], "|PUT|kv|k|v|x"));
    assert_int_equal(b.nlog, 3);
    assert_string_equal(a.log[0], b.log[0]); /* the same SEQ pair */
    assert_string_equal(b.log[1], "GET|kv|k");
}

/* Retries stop at the budget: a daemon that keeps answering TRYAGAIN. */
static void test_retry_budget_bounds_a_call(void **state)
{
    (void)state;
    fd_fake a;
    fake_listen(&a);
    char routes[512];
    routes_for(routes, sizeof routes, a.port, a.port, 1);
    a.script[0] = "-TRYAGAIN not yet\r\n";
    a.nscript = 1;
    fake_run(&a, routes);
    keel_client *c = NULL;
    assert_int_equal(keel_client_connect("127.0.0.1", a.port, 2000, &c), KEEL_OK);
    assert_int_equal(keel_client_set_retry_timeout(c, 600), KEEL_OK);
    int64_t t0 = mono_ms();
    keel_object *o = NULL;
    assert_int_equal(keel_get(c, "kv", "k", 1, &o), KEEL_ERR_TRYAGAIN);
    int64_t took = mono_ms() - t0;
    assert_true(took >= 550 && took < 1500);
    keel_client_stats st;
    keel_client_get_stats(c, &st);
    /* 50, 100, 200, 250 (the rest): about 5 attempts, with refreshes */
    assert_true(st.attempts >= 4 && st.attempts <= 7);
    assert_true(st.route_refreshes >= 4);
    keel_client_close(c);
    fake_stop(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_parse),
        cmocka_unit_test(test_routes_bad_shapes),
        cmocka_unit_test(test_moved_and_hints),
        cmocka_unit_test(test_seq_reused_across_connection_error),
        cmocka_unit_test(test_moved_followed_and_remembered),
        cmocka_unit_test(test_retry_budget_bounds_a_call),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
