/* test_client: libkeel (src/client.c) against an in-process fake server.
 *
 * The fake server is a thread with a listening socket on 127.0.0.1 (port 0,
 * so tests never collide). It accepts one connection and plays a script: for
 * each step it reads one whole request (with the server's own request parser,
 * resp_parse), records it as "ARG|ARG|...", then writes canned reply bytes,
 * optionally in several pieces with pauses between them, optionally closing
 * the connection afterwards. An echo mode answers N requests with their last
 * argument, for the pipeline stress test.
 *
 * Every test closes its client before joining the fake (which waits for EOF),
 * and checks the recorded requests only after the join.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "keel.h"
#include "resp.h"

/* ---------------------------------------------------------------------------
 * Fake server
 * ------------------------------------------------------------------------- */

#define MAX_PARTS 8
#define MAX_LOG 64

typedef struct step {
    const char *parts[MAX_PARTS]; /* reply pieces, written with a pause between */
    int close;                    /* close the connection after the reply */
    const char *bin;              /* if set: binlen bytes written after the parts */
    size_t binlen;
    int early; /* answer as soon as any bytes arrive, then close (a server
                  refusing an oversized request before reading it all) */
} step;

typedef struct fake {
    int lfd;
    int port;
    pthread_t th;
    const step *steps;
    size_t nsteps;
    size_t echo;            /* > 0: answer this many requests with their last argument */
    char log[MAX_LOG][512]; /* each request received, arguments joined with '|' */
    size_t nlog;
} fake;

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

static void pause_ms(int ms)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* Reads until one whole request is parsed. 0 on EOF or bad input. */
static int next_request(int fd, resp_parser *p, buf *in, resp_request *req)
{
    for (;;) {
        buf_reserve(in, 1);
        int rc = resp_parse(p, in->data, in->len, req);
        if (rc == RESP_OK) return 1;
        if (rc == RESP_ERROR) return 0;
        buf_reserve(in, 65536);
        ssize_t n = recv(fd, in->data + in->len, in->cap - in->len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        in->len += (size_t)n;
    }
}

#define INFO_STANDALONE "$49\r\n# Server\r\nkeel_version:0.1.0\r\nmode:standalone\r\n\r\n\r\n"

static void *fake_run(void *arg)
{
    fake *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    resp_limits lim = {RESP_DEFAULT_MAX_REQUEST, RESP_DEFAULT_MAX_ARGS, RESP_DEFAULT_MAX_BULK};
    resp_parser p;
    resp_parser_init(&p, &lim);
    buf in, out;
    buf_init(&in);
    buf_init(&out);
    size_t total = f->echo ? f->echo : f->nsteps;
    int closed = 0;
    /* keel_client_connect asks INFO server first: answer as keel standalone
     * does (the mode line is what matters), unlogged, outside the script. */
    {
        resp_request req;
        if (!next_request(fd, &p, &in, &req) || req.argc != 2 ||
            strncmp(req.argv[0], "INFO", 4) != 0)
            closed = 1;
        else
            write_all(fd, INFO_STANDALONE, strlen(INFO_STANDALONE));
        size_t used = resp_parser_consumed(&p);
        buf_consume(&in, used);
        resp_parser_shift(&p, used);
    }
    for (size_t i = 0; i < total && !closed; i++) {
        if (!f->echo && f->steps[i].early) {
            char tmp[1024];
            if (recv(fd, tmp, sizeof tmp, 0) > 0)
                write_all(fd, f->steps[i].parts[0], strlen(f->steps[i].parts[0]));
            closed = 1;
            break;
        }
        resp_request req;
        if (!next_request(fd, &p, &in, &req)) break;
        if (f->echo) {
            buf_reset(&out);
            resp_add_bulk(&out, req.argv[req.argc - 1], req.argvlen[req.argc - 1]);
            write_all(fd, out.data, out.len);
        } else {
            if (f->nlog < MAX_LOG) {
                char *l = f->log[f->nlog++];
                size_t at = 0;
                for (size_t a = 0; a < req.argc; a++) {
                    int n = snprintf(l + at, 512 - at, "%s%.*s", a ? "|" : "", (int)req.argvlen[a],
                                     req.argv[a]);
                    if (n < 0 || (size_t)n >= 512 - at) break;
                    at += (size_t)n;
                }
            }
            const step *s = &f->steps[i];
            for (int k = 0; k < MAX_PARTS && s->parts[k]; k++) {
                if (k) pause_ms(15);
                write_all(fd, s->parts[k], strlen(s->parts[k]));
            }
            if (s->bin) {
                pause_ms(15);
                write_all(fd, s->bin, s->binlen);
            }
            closed = s->close;
        }
        size_t used = resp_parser_consumed(&p);
        buf_consume(&in, used);
        resp_parser_shift(&p, used);
    }
    if (!closed) {
        char tmp[4096];
        while (recv(fd, tmp, sizeof tmp, 0) > 0) {
        }
    }
    close(fd);
    resp_parser_free(&p);
    buf_free(&in);
    buf_free(&out);
    return NULL;
}

/* Starts a fake that plays steps[0, nsteps), or, with echo > 0, answers echo
 * requests with their last argument. */
static void fake_start_mode(fake *f, const step *steps, size_t nsteps, size_t echo)
{
    memset(f, 0, sizeof *f);
    f->steps = steps;
    f->nsteps = nsteps;
    f->echo = echo;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(f->lfd, 4), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &sl), 0);
    f->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&f->th, NULL, fake_run, f), 0);
}

static void fake_start(fake *f, const step *steps, size_t nsteps)
{
    fake_start_mode(f, steps, nsteps, 0);
}

static void fake_stop(fake *f)
{
    pthread_join(f->th, NULL);
    close(f->lfd);
}

static keel_client *connect_to(const fake *f, int timeout_ms)
{
    keel_client *c = NULL;
    int rc = keel_client_connect("127.0.0.1", f->port, timeout_ms, &c);
    if (rc != KEEL_OK) print_message("connect: %s\n", keel_client_errmsg(c));
    assert_int_equal(rc, KEEL_OK);
    assert_non_null(c);
    assert_string_equal(keel_client_errmsg(c), "");
    return c;
}

/* A port with nothing listening: bind, read the port, close. */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

#define ATTR(n, v)                                                                                 \
    {                                                                                              \
        (n), (v), sizeof(v) - 1                                                                    \
    }

/* ---------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------- */

static void test_connect_refused(void **state)
{
    (void)state;
    int port = dead_port();
    keel_client *c = NULL;
    assert_int_equal(keel_client_connect("127.0.0.1", port, 1000, &c), KEEL_ERR_CONNECT);
    assert_non_null(c);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    assert_non_null(strstr(keel_client_errmsg(c), want));
    assert_non_null(strstr(keel_client_errmsg(c), "refused"));
    /* Every later call fails at once and says why. */
    assert_int_equal(keel_ping(c), KEEL_ERR_IO);
    assert_non_null(strstr(keel_client_errmsg(c), "not connected"));
    assert_non_null(strstr(keel_client_errmsg(c), "refused"));
    keel_client_close(c);
}

static void test_connect_invalid(void **state)
{
    (void)state;
    keel_client *c = (keel_client *)(uintptr_t)1;
    assert_int_equal(keel_client_connect(NULL, 2012, 0, &c), KEEL_ERR_INVALID);
    assert_null(c);
    assert_int_equal(keel_client_connect("127.0.0.1", 0, 0, &c), KEEL_ERR_INVALID);
    assert_int_equal(keel_client_connect("127.0.0.1", 65536, 0, &c), KEEL_ERR_INVALID);
    assert_int_equal(keel_client_connect("127.0.0.1", 2012, -1, &c), KEEL_ERR_INVALID);
    assert_int_equal(keel_client_connect("127.0.0.1", 2012, 0, NULL), KEEL_ERR_INVALID);
    keel_client_close(NULL);
    assert_string_equal(keel_client_errmsg(NULL), "");
}

static void test_connect_hostname(void **state)
{
    (void)state;
    static const step steps[] = {{{"+PONG\r\n"}}};
    fake f;
    fake_start(&f, steps, 1);
    keel_client *c = NULL;
    assert_int_equal(keel_client_connect("localhost", f.port, 2000, &c), KEEL_OK);
    assert_int_equal(keel_ping(c), KEEL_OK);
    keel_client_close(c);
    fake_stop(&f);
    assert_string_equal(f.log[0], "PING");
}

static void test_strerror(void **state)
{
    (void)state;
    for (int s = KEEL_OK; s >= KEEL_ERR_UNAVAILABLE; s--) {
        const char *m = keel_strerror(s);
        assert_non_null(m);
        assert_string_not_equal(m, "unknown status");
        for (int t = s + 1; t <= KEEL_OK; t++)
            assert_string_not_equal(m, keel_strerror(t));
    }
    assert_string_equal(keel_strerror(KEEL_ERR_UNAVAILABLE - 1), "unknown status");
    assert_string_equal(keel_strerror(1), "unknown status");
}

/* ---------------------------------------------------------------------------
 * Data operations
 * ------------------------------------------------------------------------- */

static void test_put(void **state)
{
    (void)state;
    static const step steps[] = {
        {{"+OK\r\n"}},
        {{"+O", "K\r", "\n"}}, /* split across three writes */
        {{"+OK\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 3);
    keel_client *c = connect_to(&f, 2000);
    keel_attr attrs[] = {ATTR("first", "John Q"), ATTR("phone", "5551234")};
    assert_int_equal(keel_put(c, "phonebook", "jsmith1", 7, attrs, 2), KEEL_OK);
    assert_string_equal(keel_client_errmsg(c), "");
    assert_int_equal(keel_put(c, "phonebook", "k2", 2, attrs, 1), KEEL_OK);
    assert_int_equal(keel_put(c, "phonebook", "k3", 2, NULL, 0), KEEL_OK);
    keel_client_close(c);
    fake_stop(&f);
    assert_int_equal(f.nlog, 3);
    assert_string_equal(f.log[0], "PUT|phonebook|jsmith1|first|John Q|phone|5551234");
    assert_string_equal(f.log[1], "PUT|phonebook|k2|first|John Q");
    assert_string_equal(f.log[2], "PUT|phonebook|k3");
}

static void test_get(void **state)
{
    (void)state;
    /* The third reply holds a value with a NUL byte, split inside the bulk. */
    static const char tail[] = "\0c\r\n";
    static const step steps[] = {
        {{"$-1\r\n"}},
        {{"*6\r\n$5\r\nfirst\r\n$4\r\nJohn\r\n$5\r\nphone\r\n:-42\r\n$1\r\nf\r\n$3\r\n2.5\r\n"}},
        {{"*2\r\n$1\r\nb\r\n$3\r\n", "a"}, 0, tail, sizeof tail - 1},
        {{"-NOSPACE no such space 'nope'\r\n"}},
        {{"*2\r\n$1\r\nv\r\n$1\r\nx\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 5);
    keel_client *c = connect_to(&f, 2000);
    keel_object *o = (keel_object *)(uintptr_t)1;

    assert_int_equal(keel_get(c, "kv", "absent", 6, &o), KEEL_OK);
    assert_null(o);

    assert_int_equal(keel_get(c, "kv", "k\0x", 3, &o), KEEL_OK);
    assert_non_null(o);
    assert_null(o->key_name);
    assert_int_equal(o->key_len, 3);
    assert_memory_equal(o->key, "k\0x", 4);
    assert_int_equal(o->nattrs, 3);
    assert_string_equal(o->attrs[0].name, "first");
    assert_string_equal(o->attrs[0].value, "John");
    assert_int_equal(o->attrs[0].value_len, 4);
    assert_false(o->attrs[0].is_int);
    assert_string_equal(o->attrs[1].name, "phone");
    assert_true(o->attrs[1].is_int);
    assert_int_equal(o->attrs[1].integer, -42);
    assert_string_equal(o->attrs[1].value, "-42");
    assert_int_equal(o->attrs[1].value_len, 3);
    assert_string_equal(o->attrs[2].value, "2.5");
    assert_false(o->attrs[2].is_int);
    assert_ptr_equal(keel_object_find(o, "phone"), &o->attrs[1]);
    assert_null(keel_object_find(o, "age"));
    keel_object_free(o);

    assert_int_equal(keel_get(c, "kv", "b", 1, &o), KEEL_OK);
    assert_int_equal(o->nattrs, 1);
    assert_int_equal(o->attrs[0].value_len, 3);
    assert_memory_equal(o->attrs[0].value, "a\0c", 4);
    keel_object_free(o);

    /* A server error leaves the output alone and the client usable. */
    o = NULL;
    assert_int_equal(keel_get(c, "nope", "k", 1, &o), KEEL_ERR_NOSPACE);
    assert_null(o);
    assert_string_equal(keel_client_errmsg(c), "NOSPACE no such space 'nope'");
    assert_int_equal(keel_get(c, "kv", "k", 1, &o), KEEL_OK);
    assert_string_equal(keel_client_errmsg(c), "");
    assert_string_equal(o->attrs[0].value, "x");
    keel_client_close(c);
    /* Results outlive their client. */
    assert_string_equal(o->key, "k");
    keel_object_free(o);
    keel_object_free(NULL);
    fake_stop(&f);
    assert_int_equal(f.nlog, 5);
    assert_string_equal(f.log[0], "GET|kv|absent");
    assert_string_equal(f.log[3], "GET|nope|k");
}

static void test_error_words(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        int status;
    } cases[] = {
        {"-ERR unknown command 'FOO'\r\n", KEEL_ERR_SERVER},
        {"-NOSPACE no such space 'x'\r\n", KEEL_ERR_NOSPACE},
        {"-NOATTR space 'kv' has no attribute 'age'\r\n", KEEL_ERR_NOATTR},
        {"-WRONGTYPE attribute 'phone' is int, got 'abc'\r\n", KEEL_ERR_WRONGTYPE},
        {"-CMPFAIL condition failed\r\n", KEEL_ERR_CMPFAIL},
        {"-NOTFOUND no such object\r\n", KEEL_ERR_NOTFOUND},
        {"-OVERFLOW result overflows\r\n", KEEL_ERR_OVERFLOW},
        {"-IOERR storage failed\r\n", KEEL_ERR_IOERR},
        {"-TRYAGAIN later\r\n", KEEL_ERR_TRYAGAIN},
        {"-MOVED 3 10.0.0.2:2012\r\n", KEEL_ERR_MOVED},
        {"-NOQUORUM no majority\r\n", KEEL_ERR_NOQUORUM},
        {"-UNAVAILABLE partition 3 has no live replica\r\n", KEEL_ERR_UNAVAILABLE},
        {"-WEIRD something new\r\n", KEEL_ERR_SERVER},
        {"-ERR\r\n", KEEL_ERR_SERVER},
        {"-NOSPACEX not a known word\r\n", KEEL_ERR_SERVER},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    static step steps[N];
    for (size_t i = 0; i < N; i++)
        steps[i] = (step){{cases[i].line}};
    fake f;
    fake_start(&f, steps, N);
    keel_client *c = connect_to(&f, 2000);
    keel_attr a = ATTR("v", "1");
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(keel_put(c, "kv", "k", 1, &a, 1), cases[i].status);
        size_t l = strlen(cases[i].line);
        /* errmsg is the whole line minus '-' and CRLF */
        assert_int_equal(strlen(keel_client_errmsg(c)), l - 3);
        assert_memory_equal(keel_client_errmsg(c), cases[i].line + 1, l - 3);
    }
    keel_client_close(c);
    fake_stop(&f);
    assert_int_equal(f.nlog, N);
}

static void test_del_cput_add(void **state)
{
    (void)state;
    static const step steps[] = {
        {{":1\r\n"}},
        {{":0\r\n"}},
        {{"+OK\r\n"}},
        {{"-CMPFAIL 'a' is 2, not 1\r\n"}},
        {{":15\r\n"}},
        {{"-OVERFLOW 'n' would overflow\r\n"}},
        {{":-9223372036854775808\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 7);
    keel_client *c = connect_to(&f, 2000);
    int existed = -1;
    assert_int_equal(keel_del(c, "kv", "k", 1, &existed), KEEL_OK);
    assert_int_equal(existed, 1);
    assert_int_equal(keel_del(c, "kv", "k", 1, &existed), KEEL_OK);
    assert_int_equal(existed, 0);

    keel_attr cond[] = {ATTR("a", "1")};
    keel_attr set[] = {ATTR("b", "x"), ATTR("c", "")};
    assert_int_equal(keel_cput(c, "kv", "k", 1, cond, 1, set, 2), KEEL_OK);
    assert_int_equal(keel_cput(c, "kv", "k", 1, cond, 1, NULL, 0), KEEL_ERR_CMPFAIL);
    assert_string_equal(keel_client_errmsg(c), "CMPFAIL 'a' is 2, not 1");

    int64_t v = 0;
    assert_int_equal(keel_add(c, "kv", "k", 1, "n", 5, &v), KEEL_OK);
    assert_int_equal(v, 15);
    v = 77;
    assert_int_equal(keel_add(c, "kv", "k", 1, "n", INT64_MAX, &v), KEEL_ERR_OVERFLOW);
    assert_int_equal(v, 77); /* untouched on error */
    assert_int_equal(keel_add(c, "kv", "k", 1, "n", INT64_MIN, &v), KEEL_OK);
    assert_true(v == INT64_MIN);
    keel_client_close(c);
    fake_stop(&f);
    assert_string_equal(f.log[0], "DEL|kv|k");
    assert_string_equal(f.log[2], "CPUT|kv|k|IF|a|1|SET|b|x|c|");
    assert_string_equal(f.log[3], "CPUT|kv|k|IF|a|1|SET");
    assert_string_equal(f.log[4], "ADD|kv|k|n|5");
    assert_string_equal(f.log[5], "ADD|kv|k|n|9223372036854775807");
    assert_string_equal(f.log[6], "ADD|kv|k|n|-9223372036854775808");
}

static void test_search_count(void **state)
{
    (void)state;
    static const step steps[] = {
        /* two objects, nested arrays, split inside the second object */
        {{"*2\r\n*6\r\n$8\r\nusername\r\n$2\r\nu1\r\n$5\r\nfirst\r\n$4\r\nJohn\r\n$5\r\nphone\r\n:"
          "1\r\n",
          "*6\r\n$8\r\nusername\r\n$2\r\nu2\r\n$5\r\nfir",
          "st\r\n$0\r\n\r\n$5\r\nphone\r\n:2\r\n"}},
        {{"*0\r\n"}},
        {{":7\r\n"}},
        {{"-NOATTR space 'kv' has no attribute 'zz'\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 4);
    keel_client *c = connect_to(&f, 2000);
    keel_pred preds[] = {{"first", KEEL_OP_GE, "A", 1}, {"phone", KEEL_OP_LT, "10", 2}};
    keel_object **objs = NULL;
    size_t n = 99;
    assert_int_equal(keel_search(c, "pb", preds, 2, 10, &objs, &n), KEEL_OK);
    assert_int_equal(n, 2);
    assert_string_equal(objs[0]->key_name, "username");
    assert_string_equal(objs[0]->key, "u1");
    assert_int_equal(objs[0]->nattrs, 2);
    assert_string_equal(objs[0]->attrs[0].value, "John");
    assert_int_equal(objs[0]->attrs[1].integer, 1);
    assert_string_equal(objs[1]->key, "u2");
    assert_int_equal(objs[1]->attrs[0].value_len, 0);
    assert_string_equal(objs[1]->attrs[0].value, "");
    assert_int_equal(objs[1]->attrs[1].integer, 2);
    keel_objects_free(objs, n);

    objs = (keel_object **)(uintptr_t)1;
    assert_int_equal(keel_search(c, "pb", NULL, 0, 0, &objs, &n), KEEL_OK);
    assert_int_equal(n, 0);
    assert_null(objs);

    uint64_t cnt = 0;
    assert_int_equal(keel_count(c, "pb", preds, 1, &cnt), KEEL_OK);
    assert_int_equal(cnt, 7);
    assert_int_equal(keel_count(c, "pb", preds, 1, &cnt), KEEL_ERR_NOATTR);
    keel_client_close(c);
    fake_stop(&f);
    assert_string_equal(f.log[0], "SEARCH|pb|first|>=|A|phone|<|10|LIMIT|10");
    assert_string_equal(f.log[1], "SEARCH|pb");
    assert_string_equal(f.log[2], "COUNT|pb|first|>=|A");
}

static void test_spaces(void **state)
{
    (void)state;
    static const step steps[] = {
        {{"+OK\r\n"}},
        {{"-ERR line 3: unknown type 'integer' for attribute 'phone'\r\n"}},
        {{"*2\r\n$2\r\nkv\r\n$9\r\nphonebook\r\n"}},
        {{"*0\r\n"}},
        {{"$28\r\nspace kv\nkey k\nattributes v\n\r\n"}},
        {{"+OK\r\n"}},
        {{"-NOSPACE no such space 'kv'\r\n"}},
        {{"+PONG\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 8);
    keel_client *c = connect_to(&f, 2000);
    assert_int_equal(keel_space_add(c, "space kv key k attributes v"), KEEL_OK);
    assert_int_equal(keel_space_add(c, "space x\nkey k\nattributes integer phone"),
                     KEEL_ERR_SERVER);
    assert_string_equal(keel_client_errmsg(c),
                        "ERR line 3: unknown type 'integer' for attribute 'phone'");
    char **names = NULL;
    size_t n = 0;
    assert_int_equal(keel_space_list(c, &names, &n), KEEL_OK);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "kv");
    assert_string_equal(names[1], "phonebook");
    keel_strings_free(names, n);
    assert_int_equal(keel_space_list(c, &names, &n), KEEL_OK);
    assert_int_equal(n, 0);
    assert_null(names);
    char *text = NULL;
    assert_int_equal(keel_space_describe(c, "kv", &text), KEEL_OK);
    assert_string_equal(text, "space kv\nkey k\nattributes v\n");
    keel_free(text);
    assert_int_equal(keel_space_drop(c, "kv"), KEEL_OK);
    assert_int_equal(keel_space_drop(c, "kv"), KEEL_ERR_NOSPACE);
    assert_int_equal(keel_ping(c), KEEL_OK);
    keel_client_close(c);
    fake_stop(&f);
    assert_string_equal(f.log[0], "SPACE.ADD|space kv key k attributes v");
    assert_string_equal(f.log[2], "SPACE.LIST");
    assert_string_equal(f.log[4], "SPACE.DESCRIBE|kv");
    assert_string_equal(f.log[5], "SPACE.DROP|kv");
    assert_string_equal(f.log[7], "PING");
}

/* ---------------------------------------------------------------------------
 * Cluster administration
 * ------------------------------------------------------------------------- */

static void test_cluster_status(void **state)
{
    (void)state;
    static const char doc[] = "{\"cluster_id\": \"9f2c\", \"leader\": 1}";
    static const step steps[] = {
        {{"$35\r\n", doc, "\r\n"}},
        {{"$35\r\n", doc, "\r\n"}},
        {{"-TRYAGAIN leader is 127.0.0.1:1983 (unreachable from here)\r\n"}},
        {{"-NOQUORUM no coordinator majority\r\n"}},
        {{"-ERR unknown command 'CLUSTER.STATUS'\r\n"}},
        {{"$0\r\n\r\n"}},
        {{"+PONG\r\n"}},
    };
    assert_int_equal(strlen(doc), 35);
    fake f;
    fake_start(&f, steps, 7);
    keel_client *c = connect_to(&f, 2000);
    char *json = NULL;
    assert_int_equal(keel_cluster_status(c, 0, &json), KEEL_OK);
    assert_string_equal(json, doc);
    keel_free(json);
    json = NULL;
    assert_int_equal(keel_cluster_status(c, 1, &json), KEEL_OK);
    assert_string_equal(json, doc);
    keel_free(json);
    /* Server errors leave the output alone and the connection usable. */
    json = NULL;
    assert_int_equal(keel_cluster_status(c, 0, &json), KEEL_ERR_TRYAGAIN);
    assert_string_equal(keel_client_errmsg(c),
                        "TRYAGAIN leader is 127.0.0.1:1983 (unreachable from here)");
    assert_null(json);
    assert_int_equal(keel_cluster_status(c, 0, &json), KEEL_ERR_NOQUORUM);
    assert_int_equal(keel_cluster_status(c, 0, &json), KEEL_ERR_SERVER);
    assert_string_equal(keel_client_errmsg(c), "ERR unknown command 'CLUSTER.STATUS'");
    assert_null(json);
    /* An empty document is still handed out (the caller judges it). */
    assert_int_equal(keel_cluster_status(c, 0, &json), KEEL_OK);
    assert_string_equal(json, "");
    keel_free(json);
    assert_int_equal(keel_cluster_status(c, 0, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_cluster_status(NULL, 0, &json), KEEL_ERR_INVALID);
    assert_int_equal(keel_ping(c), KEEL_OK);
    keel_client_close(c);
    fake_stop(&f);
    assert_int_equal(f.nlog, 7);
    assert_string_equal(f.log[0], "CLUSTER.STATUS");
    assert_string_equal(f.log[1], "CLUSTER.STATUS|STALE");
    assert_string_equal(f.log[2], "CLUSTER.STATUS");
    assert_string_equal(f.log[6], "PING");
}

static void test_coordinator_remove(void **state)
{
    (void)state;
    static const step steps[] = {
        {{"+OK\r\n"}},
        {{"-ERR removing coordinator 2 would leave 1 reachable voter of 3\r\n"}},
        {{"-TRYAGAIN no leader yet (election in progress)\r\n"}},
        {{"+OK\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 4);
    keel_client *c = connect_to(&f, 2000);
    assert_int_equal(keel_coordinator_remove(c, 3), KEEL_OK);
    assert_string_equal(keel_client_errmsg(c), "");
    assert_int_equal(keel_coordinator_remove(c, 2), KEEL_ERR_SERVER);
    assert_string_equal(keel_client_errmsg(c),
                        "ERR removing coordinator 2 would leave 1 reachable voter of 3");
    assert_int_equal(keel_coordinator_remove(c, 2), KEEL_ERR_TRYAGAIN);
    assert_int_equal(keel_coordinator_remove(c, UINT64_MAX), KEEL_OK);
    assert_int_equal(keel_coordinator_remove(NULL, 1), KEEL_ERR_INVALID);
    keel_client_close(c);
    fake_stop(&f);
    assert_int_equal(f.nlog, 4);
    assert_string_equal(f.log[0], "COORD.REMOVE|3");
    assert_string_equal(f.log[1], "COORD.REMOVE|2");
    assert_string_equal(f.log[3], "COORD.REMOVE|18446744073709551615");
}

/* ---------------------------------------------------------------------------
 * Generic commands
 * ------------------------------------------------------------------------- */

static void test_command_nested(void **state)
{
    (void)state;
    static const step steps[] = {
        {{"*5\r\n+OK\r\n:-3\r\n$-1\r\n*2\r\n$3\r\nabc\r\n*-1\r\n*0\r\n"}},
        {{"-NOQUORUM no coordinator majority\r\n"}},
        {{"$", "5\r", "\nhello\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 3);
    keel_client *c = connect_to(&f, 2000);
    const char *argv[] = {"CLUSTER.STATUS"};
    keel_reply *r = NULL;
    assert_int_equal(keel_command(c, 1, argv, NULL, &r), KEEL_OK);
    assert_int_equal(r->type, KEEL_REPLY_ARRAY);
    assert_int_equal(r->elements, 5);
    assert_int_equal(r->element[0]->type, KEEL_REPLY_STATUS);
    assert_string_equal(r->element[0]->str, "OK");
    assert_int_equal(r->element[1]->type, KEEL_REPLY_INT);
    assert_int_equal(r->element[1]->integer, -3);
    assert_int_equal(r->element[2]->type, KEEL_REPLY_NIL);
    assert_null(r->element[2]->str);
    keel_reply *in = r->element[3];
    assert_int_equal(in->type, KEEL_REPLY_ARRAY);
    assert_int_equal(in->elements, 2);
    assert_int_equal(in->element[0]->type, KEEL_REPLY_BULK);
    assert_int_equal(in->element[0]->len, 3);
    assert_string_equal(in->element[0]->str, "abc");
    assert_int_equal(in->element[1]->type, KEEL_REPLY_NIL);
    assert_int_equal(r->element[4]->type, KEEL_REPLY_ARRAY);
    assert_int_equal(r->element[4]->elements, 0);
    assert_int_equal(keel_reply_status(r), KEEL_OK);
    keel_reply_free(r);

    /* An error reply is a reply: KEEL_OK, type ERROR, errmsg and status set. */
    r = NULL;
    assert_int_equal(keel_command(c, 1, argv, NULL, &r), KEEL_OK);
    assert_int_equal(r->type, KEEL_REPLY_ERROR);
    assert_string_equal(r->str, "NOQUORUM no coordinator majority");
    assert_int_equal(keel_reply_status(r), KEEL_ERR_NOQUORUM);
    assert_string_equal(keel_client_errmsg(c), "NOQUORUM no coordinator majority");
    keel_reply_free(r);

    /* Explicit lengths: binary-safe arguments. */
    const char *argv2[] = {"ECHO", "a\0b"};
    size_t lens[] = {4, 3};
    assert_int_equal(keel_command(c, 2, argv2, lens, &r), KEEL_OK);
    assert_int_equal(r->type, KEEL_REPLY_BULK);
    assert_string_equal(r->str, "hello");
    assert_string_equal(keel_client_errmsg(c), "");
    keel_reply_free(r);
    keel_client_close(c);
    fake_stop(&f);
    assert_string_equal(f.log[0], "CLUSTER.STATUS");
    assert_int_equal(strlen(f.log[2]), strlen("ECHO|a")); /* logged up to the NUL */
    assert_int_equal(keel_reply_status(NULL), KEEL_ERR_INVALID);
}

/* ---------------------------------------------------------------------------
 * Pipeline
 * ------------------------------------------------------------------------- */

static void test_pipeline_order(void **state)
{
    (void)state;
    /* All three replies in one write, then a fourth after a pause. */
    static const step steps[] = {
        {{NULL}},
        {{NULL}},
        {{":1\r\n+two\r\n$5\r\nthree\r\n"}},
        {{"-ERR four\r\n"}},
    };
    fake f;
    fake_start(&f, steps, 4);
    keel_client *c = connect_to(&f, 2000);
    const char *a1[] = {"PING", "1"}, *a2[] = {"PING", "2"}, *a3[] = {"PING", "3"},
               *a4[] = {"PING", "4"};
    assert_int_equal(keel_pipeline_pending(c), 0);
    assert_int_equal(keel_pipeline_append(c, 2, a1, NULL), KEEL_OK);
    assert_int_equal(keel_pipeline_append(c, 2, a2, NULL), KEEL_OK);
    assert_int_equal(keel_pipeline_append(c, 2, a3, NULL), KEEL_OK);
    assert_int_equal(keel_pipeline_pending(c), 3);
    /* One-shot calls are refused while replies are unread. */
    assert_int_equal(keel_ping(c), KEEL_ERR_INVALID);
    assert_non_null(strstr(keel_client_errmsg(c), "3 pipelined"));
    assert_int_equal(keel_pipeline_flush(c), KEEL_OK);
    assert_int_equal(keel_pipeline_append(c, 2, a4, NULL), KEEL_OK);

    keel_reply *r = NULL;
    assert_int_equal(keel_pipeline_read(c, &r), KEEL_OK);
    assert_int_equal(r->type, KEEL_REPLY_INT);
    assert_int_equal(r->integer, 1);
    keel_reply_free(r);
    assert_int_equal(keel_pipeline_read(c, &r), KEEL_OK);
    assert_string_equal(r->str, "two");
    keel_reply_free(r);
    assert_int_equal(keel_pipeline_read(c, &r), KEEL_OK);
    assert_string_equal(r->str, "three");
    keel_reply_free(r);
    /* The fourth was appended after the flush: read flushes it. */
    assert_int_equal(keel_pipeline_read(c, &r), KEEL_OK);
    assert_int_equal(r->type, KEEL_REPLY_ERROR);
    assert_int_equal(keel_reply_status(r), KEEL_ERR_SERVER);
    keel_reply_free(r);
    assert_int_equal(keel_pipeline_pending(c), 0);
    r = NULL;
    assert_int_equal(keel_pipeline_read(c, &r), KEEL_ERR_INVALID);
    assert_null(r);
    keel_client_close(c);
    fake_stop(&f);
    assert_int_equal(f.nlog, 4);
    assert_string_equal(f.log[0], "PING|1");
    assert_string_equal(f.log[1], "PING|2");
    assert_string_equal(f.log[2], "PING|3");
    assert_string_equal(f.log[3], "PING|4");
}

/* Many large requests whose large replies fill the socket buffers: a client
 * that wrote everything before reading would deadlock against this server,
 * which blocks on its writes and stops reading. */
static void test_pipeline_no_deadlock(void **state)
{
    (void)state;
    enum { N = 1500, SZ = 16384 };
    fake f;
    fake_start_mode(&f, NULL, 0, N);
    keel_client *c = connect_to(&f, 5000);
    char *payload = malloc(SZ);
    assert_non_null(payload);
    for (int i = 0; i < N; i++) {
        memset(payload, 'a' + i % 26, SZ);
        const char *argv[] = {"ECHO", payload};
        size_t lens[] = {4, SZ};
        assert_int_equal(keel_pipeline_append(c, 2, argv, lens), KEEL_OK);
    }
    assert_int_equal(keel_pipeline_flush(c), KEEL_OK);
    for (int i = 0; i < N; i++) {
        keel_reply *r = NULL;
        assert_int_equal(keel_pipeline_read(c, &r), KEEL_OK);
        assert_int_equal(r->type, KEEL_REPLY_BULK);
        assert_int_equal(r->len, SZ);
        assert_int_equal(r->str[0], 'a' + i % 26);
        assert_int_equal(r->str[SZ - 1], 'a' + i % 26);
        keel_reply_free(r);
    }
    free(payload);
    keel_client_close(c);
    fake_stop(&f);
}

/* ---------------------------------------------------------------------------
 * Broken connections
 * ------------------------------------------------------------------------- */

static void test_close_mid_reply(void **state)
{
    (void)state;
    static const step steps[] = {{{"$10\r\nabc"}, 1}};
    fake f;
    fake_start(&f, steps, 1);
    keel_client *c = connect_to(&f, 2000);
    char *text = NULL;
    assert_int_equal(keel_space_describe(c, "kv", &text), KEEL_ERR_IO);
    assert_null(text);
    assert_non_null(strstr(keel_client_errmsg(c), "closed"));
    assert_non_null(strstr(keel_client_errmsg(c), "middle of a reply"));
    /* Sticky: later calls fail at once, naming the first failure. */
    assert_int_equal(keel_ping(c), KEEL_ERR_IO);
    assert_non_null(strstr(keel_client_errmsg(c), "closed"));
    const char *argv[] = {"PING"};
    assert_int_equal(keel_pipeline_append(c, 1, argv, NULL), KEEL_ERR_IO);
    keel_client_close(c);
    fake_stop(&f);
}

static void test_close_before_reply(void **state)
{
    (void)state;
    static const step steps[] = {{{NULL}, 1}};
    fake f;
    fake_start(&f, steps, 1);
    keel_client *c = connect_to(&f, 2000);
    assert_int_equal(keel_ping(c), KEEL_ERR_IO);
    assert_non_null(strstr(keel_client_errmsg(c), "connection closed by 127.0.0.1:"));
    assert_null(strstr(keel_client_errmsg(c), "middle"));
    keel_client_close(c);
    fake_stop(&f);
}

static void test_malformed_reply(void **state)
{
    (void)state;
    static const step steps[] = {{{"?garbage\r\n"}}};
    fake f;
    fake_start(&f, steps, 1);
    keel_client *c = connect_to(&f, 2000);
    assert_int_equal(keel_ping(c), KEEL_ERR_PROTOCOL);
    assert_non_null(strstr(keel_client_errmsg(c), "protocol error"));
    assert_int_equal(keel_ping(c), KEEL_ERR_IO);
    keel_client_close(c);
    fake_stop(&f);
}

static void test_wrong_shape(void **state)
{
    (void)state;
    /* Each typed call given a reply it never returns: PROTOCOL, client failed. */
    static const struct {
        const char *reply;
        int which;
    } cases[] = {
        {":1\r\n", 0},                                  /* PUT wants a status */
        {"+OK\r\n", 1},                                 /* GET wants nil or an array */
        {"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", 1}, /* odd pairs */
        {"*2\r\n:1\r\n$1\r\nb\r\n", 1},                 /* name not a bulk */
        {":2\r\n", 2},                                  /* DEL wants 0 or 1 */
        {"*1\r\n*1\r\n$1\r\nk\r\n", 3},                 /* SEARCH object without key */
        {":-1\r\n", 4},                                 /* COUNT negative */
        {"*1\r\n:5\r\n", 5},                            /* SPACE.LIST of integers */
        {"$-1\r\n", 6},                                 /* SPACE.DESCRIBE wants a bulk */
        {"$2\r\nOK\r\n", 7},                            /* ADD wants an integer */
        {"+OK\r\n", 8},                                 /* CLUSTER.STATUS wants a bulk */
        {"*0\r\n", 8},                                  /* ... nor an array */
        {"$2\r\nOK\r\n", 9},                            /* COORD.REMOVE wants a status */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        step steps[1] = {{{cases[i].reply}}};
        fake f;
        fake_start(&f, steps, 1);
        keel_client *c = connect_to(&f, 2000);
        keel_object *o = NULL, **objs = NULL;
        size_t n = 0;
        uint64_t cnt = 0;
        char **names = NULL, *text = NULL;
        int64_t v = 0;
        int rc = 0;
        switch (cases[i].which) {
        case 0:
            rc = keel_put(c, "kv", "k", 1, NULL, 0);
            break;
        case 1:
            rc = keel_get(c, "kv", "k", 1, &o);
            break;
        case 2:
            rc = keel_del(c, "kv", "k", 1, NULL);
            break;
        case 3:
            rc = keel_search(c, "kv", NULL, 0, 0, &objs, &n);
            break;
        case 4:
            rc = keel_count(c, "kv", NULL, 0, &cnt);
            break;
        case 5:
            rc = keel_space_list(c, &names, &n);
            break;
        case 6:
            rc = keel_space_describe(c, "kv", &text);
            break;
        case 7:
            rc = keel_add(c, "kv", "k", 1, "n", 1, &v);
            break;
        case 8:
            rc = keel_cluster_status(c, 0, &text);
            break;
        case 9:
            rc = keel_coordinator_remove(c, 1);
            break;
        }
        assert_int_equal(rc, KEEL_ERR_PROTOCOL);
        assert_non_null(strstr(keel_client_errmsg(c), "unexpected"));
        assert_null(o);
        assert_null(objs);
        assert_null(names);
        assert_null(text);
        assert_int_equal(keel_ping(c), KEEL_ERR_IO);
        keel_client_close(c);
        fake_stop(&f);
    }
}

/* The server answers an oversized request with an error and closes while
 * the client is still sending: the client reports the server's error (not a
 * bare "send failed") and is failed afterwards. */
static void test_error_then_close_while_sending(void **state)
{
    (void)state;
    static const step steps[] = {
        {{"-ERR request exceeds max_bulk_bytes (16777216)\r\n"}, 1, NULL, 0, 1}};
    fake f;
    fake_start(&f, steps, 1);
    keel_client *c = connect_to(&f, 5000);
    size_t big = 32u * 1024 * 1024;
    char *v = malloc(big);
    assert_non_null(v);
    memset(v, 'v', big);
    keel_attr a = {"v", v, big};
    assert_int_equal(keel_put(c, "kv", "k", 1, &a, 1), KEEL_ERR_SERVER);
    assert_string_equal(keel_client_errmsg(c), "ERR request exceeds max_bulk_bytes (16777216)");
    assert_int_equal(keel_ping(c), KEEL_ERR_IO);
    free(v);
    keel_client_close(c);
    fake_stop(&f);
}

static void test_timeout(void **state)
{
    (void)state;
    static const step steps[] = {{{NULL}}}; /* reads the request, never answers */
    fake f;
    fake_start(&f, steps, 1);
    keel_client *c = connect_to(&f, 150);
    assert_int_equal(keel_ping(c), KEEL_ERR_IO);
    assert_non_null(strstr(keel_client_errmsg(c), "timed out after 150 ms"));
    keel_client_close(c);
    fake_stop(&f);
}

/* ---------------------------------------------------------------------------
 * Caller mistakes
 * ------------------------------------------------------------------------- */

static void test_invalid_arguments(void **state)
{
    (void)state;
    static const step steps[] = {{{"+PONG\r\n"}}};
    fake f;
    fake_start(&f, steps, 1);
    keel_client *c = connect_to(&f, 2000);
    keel_object *o = NULL;
    keel_attr bad_attr = {NULL, "x", 1};
    keel_attr bad_val = {"a", NULL, 3};
    keel_pred bad_op = {"a", (keel_op)9, "1", 1};
    keel_object **objs = NULL;
    size_t n = 0;
    uint64_t cnt = 0;
    const char *argv[] = {"PING", NULL};

    assert_int_equal(keel_put(NULL, "kv", "k", 1, NULL, 0), KEEL_ERR_INVALID);
    assert_int_equal(keel_put(c, NULL, "k", 1, NULL, 0), KEEL_ERR_INVALID);
    assert_non_null(strstr(keel_client_errmsg(c), "space"));
    assert_int_equal(keel_put(c, "kv", NULL, 1, NULL, 0), KEEL_ERR_INVALID);
    assert_int_equal(keel_put(c, "kv", "k", 1, NULL, 2), KEEL_ERR_INVALID);
    assert_int_equal(keel_put(c, "kv", "k", 1, &bad_attr, 1), KEEL_ERR_INVALID);
    assert_int_equal(keel_put(c, "kv", "k", 1, &bad_val, 1), KEEL_ERR_INVALID);
    assert_int_equal(keel_get(c, "kv", "k", 1, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_cput(c, "kv", "k", 1, &bad_attr, 1, NULL, 0), KEEL_ERR_INVALID);
    assert_int_equal(keel_add(c, "kv", "k", 1, NULL, 1, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_search(c, "kv", &bad_op, 1, 0, &objs, &n), KEEL_ERR_INVALID);
    assert_int_equal(keel_search(c, "kv", NULL, 1, 0, &objs, &n), KEEL_ERR_INVALID);
    assert_int_equal(keel_search(c, "kv", NULL, 0, 0, NULL, &n), KEEL_ERR_INVALID);
    assert_int_equal(keel_count(c, NULL, NULL, 0, &cnt), KEEL_ERR_INVALID);
    assert_int_equal(keel_count(c, "kv", NULL, 0, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_space_add(c, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_space_drop(c, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_space_list(c, NULL, &n), KEEL_ERR_INVALID);
    assert_int_equal(keel_space_describe(c, "kv", NULL), KEEL_ERR_INVALID);
    keel_reply *r = NULL;
    assert_int_equal(keel_command(c, 0, argv, NULL, &r), KEEL_ERR_INVALID);
    assert_int_equal(keel_command(c, 2, argv, NULL, &r), KEEL_ERR_INVALID);
    assert_int_equal(keel_command(c, 1, argv, NULL, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_pipeline_append(c, 0, argv, NULL), KEEL_ERR_INVALID);
    assert_int_equal(keel_pipeline_pending(c), 0);
    assert_int_equal(keel_pipeline_read(c, NULL), KEEL_ERR_INVALID);
    assert_null(o);
    /* None of that reached the server or broke the client. */
    assert_int_equal(keel_ping(c), KEEL_OK);
    keel_client_close(c);
    fake_stop(&f);
    assert_int_equal(f.nlog, 1);
}

static void test_ops(void **state)
{
    (void)state;
    static const char *const texts[] = {"=", "<", "<=", ">", ">="};
    for (int i = 0; i < 5; i++) {
        keel_op op = (keel_op)99;
        assert_int_equal(keel_op_parse(texts[i], &op), KEEL_OK);
        assert_int_equal(op, i);
        assert_string_equal(keel_op_str(op), texts[i]);
    }
    keel_op op;
    assert_int_equal(keel_op_parse("==", &op), KEEL_ERR_INVALID);
    assert_int_equal(keel_op_parse("", &op), KEEL_ERR_INVALID);
    assert_int_equal(keel_op_parse(NULL, &op), KEEL_ERR_INVALID);
    assert_string_equal(keel_op_str((keel_op)7), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_invalid),
        cmocka_unit_test(test_connect_hostname),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_put),
        cmocka_unit_test(test_get),
        cmocka_unit_test(test_error_words),
        cmocka_unit_test(test_del_cput_add),
        cmocka_unit_test(test_search_count),
        cmocka_unit_test(test_spaces),
        cmocka_unit_test(test_cluster_status),
        cmocka_unit_test(test_coordinator_remove),
        cmocka_unit_test(test_command_nested),
        cmocka_unit_test(test_pipeline_order),
        cmocka_unit_test(test_pipeline_no_deadlock),
        cmocka_unit_test(test_close_mid_reply),
        cmocka_unit_test(test_close_before_reply),
        cmocka_unit_test(test_malformed_reply),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_error_then_close_while_sending),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
