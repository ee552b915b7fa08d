/* client: libkeel, the public C client (see include/keel.h for the API).
 *
 * Design note
 * -----------
 * A keel_client is one TCP connection in non-blocking mode, driven as if it
 * were blocking: every wait goes through poll() with the client's timeout, so
 * EINTR, partial writes and timeouts are handled in one place (wait_fd).
 * Requests are encoded with resp_add_command into `out`; replies are read into
 * `in` and decoded with resp_reply_parse, then either turned into a public
 * keel_reply tree (keel_command, the pipeline) or checked and converted by a
 * typed call (keel_get, keel_search, ...).
 *
 * Invariants:
 *   1. fd >= 0 exactly while the client is usable. The first I/O or protocol
 *      failure closes fd and records why in `broken`; every later call fails
 *      with KEEL_ERR_IO naming that reason (sticky, like a failed LMDB txn),
 *      because the position in the reply stream is lost.
 *   2. `pending` counts requests appended to the pipeline whose replies have
 *      not been read. One-shot calls require pending == 0, so a reply is
 *      always matched with the request that caused it.
 *   3. in.data[in_pos, in.len) holds received bytes not yet parsed; bytes
 *      before in_pos belong to replies already returned.
 *   4. out.data[out_pos, out.len) holds encoded requests not yet written.
 *   5. `err` is always NUL-terminated; it is emptied at the start of every
 *      public call that takes the client, so it describes the last call only.
 *   6. Results handed to the caller never point into the client: objects,
 *      replies and strings are separate allocations the caller owns.
 */
#include "keel.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "resp.h"

/* ---------------------------------------------------------------------------
 * Types and constants
 * ------------------------------------------------------------------------- */

#define READ_CHUNK 16384               /* minimum free room per recv */
#define COMPACT_THRESHOLD (64u * 1024) /* parsed bytes kept before memmove */

struct keel_client {
    int fd;          /* socket; -1 when not connected or broken (inv. 1) */
    int timeout_ms;  /* 0: wait forever */
    int peer_closed; /* recv returned 0: no more bytes will arrive */
    char addr[300];  /* "host:port" for messages */
    buf out;         /* encoded requests (inv. 4) */
    size_t out_pos;
    buf in; /* received bytes (inv. 3) */
    size_t in_pos;
    size_t pending; /* pipelined requests without a reply read (inv. 2) */
    buf err;        /* last call's error text, NUL-terminated (inv. 5) */
    buf broken;     /* why fd was closed, NUL-terminated; empty if never */
};

/* An argument vector under construction for a typed call. */
typedef struct args {
    const char **v;
    size_t *l;
    int n;
    int cap;
} args;

/* ---------------------------------------------------------------------------
 * Status names
 * ------------------------------------------------------------------------- */

static const struct {
    const char *word; /* server error code word */
    int status;
} error_words[] = {
    {"ERR", KEEL_ERR_SERVER},        {"NOSPACE", KEEL_ERR_NOSPACE},
    {"NOATTR", KEEL_ERR_NOATTR},     {"WRONGTYPE", KEEL_ERR_WRONGTYPE},
    {"CMPFAIL", KEEL_ERR_CMPFAIL},   {"NOTFOUND", KEEL_ERR_NOTFOUND},
    {"OVERFLOW", KEEL_ERR_OVERFLOW}, {"IOERR", KEEL_ERR_IOERR},
    {"TRYAGAIN", KEEL_ERR_TRYAGAIN}, {"MOVED", KEEL_ERR_MOVED},
    {"NOQUORUM", KEEL_ERR_NOQUORUM}, {"UNAVAILABLE", KEEL_ERR_UNAVAILABLE},
};

KEEL_API const char *keel_strerror(int status)
{
    switch (status) {
    case KEEL_OK:
        return "success";
    case KEEL_ERR_CONNECT:
        return "cannot connect to the server";
    case KEEL_ERR_IO:
        return "connection failed";
    case KEEL_ERR_PROTOCOL:
        return "protocol error in the server's reply";
    case KEEL_ERR_SERVER:
        return "the server refused the request";
    case KEEL_ERR_NOSPACE:
        return "no such space";
    case KEEL_ERR_NOATTR:
        return "no such attribute";
    case KEEL_ERR_WRONGTYPE:
        return "value does not match the attribute's type";
    case KEEL_ERR_CMPFAIL:
        return "comparison failed";
    case KEEL_ERR_NOTFOUND:
        return "object not found";
    case KEEL_ERR_OVERFLOW:
        return "integer overflow";
    case KEEL_ERR_IOERR:
        return "the server's storage failed";
    case KEEL_ERR_NOMEM:
        return "out of memory";
    case KEEL_ERR_INVALID:
        return "invalid argument";
    case KEEL_ERR_TRYAGAIN:
        return "temporary failure, try again";
    case KEEL_ERR_MOVED:
        return "partition moved";
    case KEEL_ERR_NOQUORUM:
        return "no coordinator quorum";
    case KEEL_ERR_UNAVAILABLE:
        return "partition unavailable";
    default:
        return "unknown status";
    }
}

/* Maps an error line ("NOSPACE no such space 'x'") to its status by the code
 * word before the first space. */
static int status_of_error(const char *msg, size_t len)
{
    size_t w = 0;
    while (w < len && msg[w] != ' ')
        w++;
    for (size_t i = 0; i < sizeof error_words / sizeof error_words[0]; i++) {
        if (strlen(error_words[i].word) == w && memcmp(error_words[i].word, msg, w) == 0)
            return error_words[i].status;
    }
    return KEEL_ERR_SERVER;
}

/* ---------------------------------------------------------------------------
 * Error text
 * ------------------------------------------------------------------------- */

static void err_clear(keel_client *c)
{
    buf_reset(&c->err);
    buf_putc(&c->err, '\0');
}

static void err_set(keel_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void err_set(keel_client *c, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    buf_reset(&c->err);
    buf_puts(&c->err, tmp);
    buf_putc(&c->err, '\0');
}

/* Records a server error line (any length, may hold any byte) as errmsg. */
static void err_set_server(keel_client *c, const char *msg, size_t len)
{
    buf_reset(&c->err);
    buf_append(&c->err, msg, len);
    buf_putc(&c->err, '\0');
}

/* Closes the connection after an I/O or protocol failure (invariant 1). The
 * current errmsg becomes the recorded reason. Returns status. */
static int fail(keel_client *c, int status)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->pending = 0;
    buf_reset(&c->broken);
    buf_puts(&c->broken, c->err.len ? c->err.data : keel_strerror(status));
    buf_putc(&c->broken, '\0');
    return status;
}

/* ---------------------------------------------------------------------------
 * Socket I/O
 * ------------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* strerror for a library: thread-safe (GNU strerror_r, as _GNU_SOURCE
 * selects). The text lives in tmp or in static storage. */
#define ERRSTR(e) strerror_r((e), (char[128]){0}, 128)

/* Waits until fd is ready for `events` or the timeout passes, retrying after
 * signals. Returns 1 ready (*revents set), 0 timed out, -1 error (errno). */
static int wait_fd(int fd, int timeout_ms, short events, short *revents)
{
    int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : -1;
    for (;;) {
        int t = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left < 0) left = 0;
            t = (int)left;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, t);
        if (r > 0) {
            *revents = p.revents;
            return 1;
        }
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* Reads every byte available now into c->in without blocking. Returns 0 (got
 * bytes, or none available, or end of stream noted in peer_closed) or
 * KEEL_ERR_IO after failing the client. */
static int read_available(keel_client *c)
{
    for (;;) {
        if (c->in_pos == c->in.len) {
            buf_reset(&c->in);
            c->in_pos = 0;
        } else if (c->in_pos >= COMPACT_THRESHOLD && c->in_pos * 2 >= c->in.len) {
            buf_consume(&c->in, c->in_pos);
            c->in_pos = 0;
        }
        size_t room = c->in.len < READ_CHUNK ? READ_CHUNK : c->in.len;
        buf_reserve(&c->in, room);
        ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
            continue;
        }
        if (n == 0) {
            c->peer_closed = 1;
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        err_set(c, "receive from %s failed: %s", c->addr, ERRSTR(errno));
        return fail(c, KEEL_ERR_IO);
    }
}

/* Reads whatever is still readable after a failed send, ignoring errors. */
static void drain_quietly(keel_client *c)
{
    for (;;) {
        buf_reserve(&c->in, READ_CHUNK);
        ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return;
    }
}

/* Writes all of c->out, reading replies that arrive meanwhile into c->in so a
 * server that stops reading until its replies are consumed cannot deadlock a
 * long pipeline. Returns KEEL_OK or KEEL_ERR_IO (client failed). */
static int flush_out(keel_client *c)
{
    while (c->out_pos < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_pos, c->out.len - c->out_pos, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_pos += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            int saved = errno;
            /* The server may have answered (say, a broken limit) and closed:
             * keep its reply so roundtrip can report it. */
            drain_quietly(c);
            err_set(c, "send to %s failed: %s", c->addr, ERRSTR(saved));
            return fail(c, KEEL_ERR_IO);
        }
        short ev = 0;
        short want = (short)(POLLOUT | (c->peer_closed ? 0 : POLLIN));
        int r = wait_fd(c->fd, c->timeout_ms, want, &ev);
        if (r == 0) {
            err_set(c, "timed out after %d ms sending to %s", c->timeout_ms, c->addr);
            return fail(c, KEEL_ERR_IO);
        }
        if (r < 0) {
            err_set(c, "poll on %s failed: %s", c->addr, ERRSTR(errno));
            return fail(c, KEEL_ERR_IO);
        }
        if (ev & (POLLIN | POLLHUP | POLLERR)) {
            int rc = read_available(c);
            if (rc != KEEL_OK) return rc;
        }
    }
    buf_reset(&c->out);
    c->out_pos = 0;
    return KEEL_OK;
}

/* Reads one complete reply. Returns KEEL_OK with *r (caller frees with
 * resp_reply_free), or KEEL_ERR_IO / KEEL_ERR_PROTOCOL after failing the
 * client. */
static int read_reply(keel_client *c, resp_reply **r)
{
    for (;;) {
        if (c->in.len > c->in_pos) {
            size_t used = 0;
            int rc = resp_reply_parse(c->in.data + c->in_pos, c->in.len - c->in_pos, &used, r);
            if (rc == RESP_OK) {
                c->in_pos += used;
                return KEEL_OK;
            }
            if (rc == RESP_ERROR) {
                err_set(c, "protocol error: %s sent a malformed reply", c->addr);
                return fail(c, KEEL_ERR_PROTOCOL);
            }
        }
        if (c->peer_closed) {
            err_set(c, "connection closed by %s%s", c->addr,
                    c->in.len > c->in_pos ? " in the middle of a reply" : "");
            return fail(c, KEEL_ERR_IO);
        }
        short ev = 0;
        int w = wait_fd(c->fd, c->timeout_ms, POLLIN, &ev);
        if (w == 0) {
            err_set(c, "timed out after %d ms waiting for a reply from %s", c->timeout_ms, c->addr);
            return fail(c, KEEL_ERR_IO);
        }
        if (w < 0) {
            err_set(c, "poll on %s failed: %s", c->addr, ERRSTR(errno));
            return fail(c, KEEL_ERR_IO);
        }
        int rc = read_available(c);
        if (rc != KEEL_OK) return rc;
    }
}

/* ---------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------- */

/* Connects one address with a timeout. Returns the fd, or -1 with errno. */
static int connect_one(const struct addrinfo *ai, int timeout_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS && errno != EINTR) goto err_after_socket;
        short ev = 0;
        int r = wait_fd(fd, timeout_ms, POLLOUT, &ev);
        if (r == 0) {
            errno = ETIMEDOUT;
            goto err_after_socket;
        }
        if (r < 0) goto err_after_socket;
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) goto err_after_socket;
        if (soerr != 0) {
            errno = soerr;
            goto err_after_socket;
        }
    }
    int one = 1;
    /* Best effort: a socket that refuses TCP_NODELAY still works. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;

err_after_socket:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

KEEL_API int keel_client_connect(const char *host, int port, int timeout_ms, keel_client **out)
{
    if (out) *out = NULL;
    if (!host || !out || port < 1 || port > 65535 || timeout_ms < 0) return KEEL_ERR_INVALID;

    keel_client *c = calloc(1, sizeof *c);
    if (!c) return KEEL_ERR_NOMEM;
    c->fd = -1;
    c->timeout_ms = timeout_ms;
    buf_init(&c->out);
    buf_init(&c->in);
    buf_init(&c->err);
    buf_init(&c->broken);
    err_clear(c);
    if (strchr(host, ':'))
        snprintf(c->addr, sizeof c->addr, "[%.256s]:%d", host, port);
    else
        snprintf(c->addr, sizeof c->addr, "%.256s:%d", host, port);
    *out = c;

    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0) {
        err_set(c, "cannot connect to %s: %s", c->addr,
                gai == EAI_SYSTEM ? ERRSTR(errno) : gai_strerror(gai));
        return fail(c, KEEL_ERR_CONNECT);
    }
    int last_errno = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = connect_one(ai, timeout_ms);
        if (fd >= 0) {
            c->fd = fd;
            break;
        }
        last_errno = errno;
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        if (last_errno == ETIMEDOUT)
            err_set(c, "cannot connect to %s: timed out after %d ms", c->addr, timeout_ms);
        else
            err_set(c, "cannot connect to %s: %s", c->addr, ERRSTR(last_errno));
        return fail(c, KEEL_ERR_CONNECT);
    }
    return KEEL_OK;
}

KEEL_API void keel_client_close(keel_client *c)
{
    if (!c) return;
    if (c->fd >= 0) close(c->fd);
    buf_free(&c->out);
    buf_free(&c->in);
    buf_free(&c->err);
    buf_free(&c->broken);
    free(c);
}

KEEL_API const char *keel_client_errmsg(const keel_client *c)
{
    if (!c || !c->err.len) return "";
    return c->err.data;
}

/* Common entry check of every call that talks to the server: clears errmsg,
 * refuses a broken client (invariant 1) and, for one-shot calls, a pipeline
 * with unread replies (invariant 2). */
static int enter(keel_client *c, int one_shot)
{
    err_clear(c);
    if (c->fd < 0) {
        err_set(c, "not connected: %s", c->broken.len ? c->broken.data : "no connection");
        return KEEL_ERR_IO;
    }
    if (one_shot && c->pending) {
        err_set(c, "%zu pipelined replies are unread; read them with keel_pipeline_read first",
                c->pending);
        return KEEL_ERR_INVALID;
    }
    return KEEL_OK;
}

/* ---------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------- */

static int args_push(args *a, const char *p, size_t n)
{
    if (a->n == a->cap) {
        if (a->cap > INT_MAX / 2) return KEEL_ERR_INVALID;
        int cap = a->cap ? a->cap * 2 : 16;
        const char **v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return KEEL_ERR_NOMEM;
        a->v = v;
        size_t *l = realloc(a->l, (size_t)cap * sizeof *l);
        if (!l) return KEEL_ERR_NOMEM;
        a->l = l;
        a->cap = cap;
    }
    a->v[a->n] = p;
    a->l[a->n] = n;
    a->n++;
    return KEEL_OK;
}

static int args_push_str(args *a, const char *s)
{
    return args_push(a, s, strlen(s));
}

static void args_free(args *a)
{
    free(a->v);
    free(a->l);
}

/* Checks a command's arguments. argvlen NULL: NUL-terminated strings. */
static int check_argv(keel_client *c, int argc, const char *const *argv, const size_t *argvlen)
{
    if (argc < 1 || !argv) {
        err_set(c, "a command needs at least one argument");
        return KEEL_ERR_INVALID;
    }
    for (int i = 0; i < argc; i++) {
        if (!argv[i] && (!argvlen || argvlen[i] > 0)) {
            err_set(c, "argument %d is NULL", i);
            return KEEL_ERR_INVALID;
        }
    }
    return KEEL_OK;
}

/* Appends one command to c->out. */
static int encode(keel_client *c, int argc, const char *const *argv, const size_t *argvlen)
{
    if (argvlen) {
        resp_add_command(&c->out, argc, argv, argvlen);
        return KEEL_OK;
    }
    size_t *lens = malloc((size_t)argc * sizeof *lens);
    if (!lens) return KEEL_ERR_NOMEM;
    for (int i = 0; i < argc; i++)
        lens[i] = argv[i] ? strlen(argv[i]) : 0;
    resp_add_command(&c->out, argc, argv, lens);
    free(lens);
    return KEEL_OK;
}

/* Sends one command and reads its reply, whatever it is. The caller has
 * passed enter(c, 1). */
static int roundtrip(keel_client *c, int argc, const char *const *argv, const size_t *argvlen,
                     resp_reply **r)
{
    int rc = encode(c, argc, argv, argvlen);
    if (rc != KEEL_OK) return rc;
    rc = flush_out(c);
    if (rc == KEEL_ERR_IO && c->in.len > c->in_pos) {
        /* The send failed but the server had answered first (an error before
         * closing, as for a request over its limits): that reply is the
         * better report. The client stays failed. */
        size_t used = 0;
        if (resp_reply_parse(c->in.data + c->in_pos, c->in.len - c->in_pos, &used, r) == RESP_OK) {
            c->in_pos += used;
            return KEEL_OK;
        }
    }
    if (rc != KEEL_OK) return rc;
    return read_reply(c, r);
}

/* A typed call: sends a.v and reads the reply. An error reply becomes its
 * status with errmsg set (and is freed); any other reply is returned in *r. */
static int call(keel_client *c, const args *a, resp_reply **r)
{
    resp_reply *rep = NULL;
    int rc = roundtrip(c, a->n, a->v, a->l, &rep);
    if (rc != KEEL_OK) return rc;
    if (rep->type == RESP_R_ERROR) {
        err_set_server(c, rep->str, rep->len);
        rc = status_of_error(rep->str, rep->len);
        resp_reply_free(rep);
        return rc;
    }
    *r = rep;
    return KEEL_OK;
}

/* The server answered something this command never returns: replies may be
 * out of step, so the client is failed. Frees r. */
static int bad_shape(keel_client *c, resp_reply *r, const char *cmd)
{
    static const char *const names[] = {"?", "status", "error", "integer", "bulk", "nil", "array"};
    int t = r->type >= RESP_R_STATUS && r->type <= RESP_R_ARRAY ? r->type : 0;
    err_set(c, "protocol error: unexpected %s reply to %s from %s", names[t], cmd, c->addr);
    resp_reply_free(r);
    return fail(c, KEEL_ERR_PROTOCOL);
}

static int check_key(keel_client *c, const char *space, const char *key, size_t keylen)
{
    if (!space) {
        err_set(c, "space is NULL");
        return KEEL_ERR_INVALID;
    }
    if (!key && keylen) {
        err_set(c, "key is NULL");
        return KEEL_ERR_INVALID;
    }
    return KEEL_OK;
}

static int check_attrs(keel_client *c, const keel_attr *attrs, size_t n)
{
    if (n && !attrs) {
        err_set(c, "attribute array is NULL");
        return KEEL_ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        if (!attrs[i].name || (!attrs[i].value && attrs[i].value_len)) {
            err_set(c, "attribute %zu has a NULL name or value", i);
            return KEEL_ERR_INVALID;
        }
    }
    return KEEL_OK;
}

static int push_attrs(args *a, const keel_attr *attrs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = args_push_str(a, attrs[i].name);
        if (rc == KEEL_OK)
            rc = args_push(a, attrs[i].value ? attrs[i].value : "", attrs[i].value_len);
        if (rc != KEEL_OK) return rc;
    }
    return KEEL_OK;
}

/* Starts a typed call: CMD space key. */
static int start_keyed(args *a, const char *cmd, const char *space, const char *key, size_t keylen)
{
    int rc = args_push_str(a, cmd);
    if (rc == KEEL_OK) rc = args_push_str(a, space);
    if (rc == KEEL_OK) rc = args_push(a, key ? key : "", keylen);
    return rc;
}

/* Sets errmsg for a failure while building arguments. */
static int build_failed(keel_client *c, int rc)
{
    if (rc == KEEL_ERR_NOMEM)
        err_set(c, "out of memory building the request");
    else
        err_set(c, "too many arguments");
    return rc;
}

/* ---------------------------------------------------------------------------
 * Objects
 * ------------------------------------------------------------------------- */

static size_t align_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

/* True if r can be an attribute value (bulk text or integer). */
static int is_value(const resp_reply *r)
{
    return r->type == RESP_R_BULK || r->type == RESP_R_INT;
}

/* Builds one object from a flat reply array holding name/value pairs,
 * pairs[first..elements). key/key_name may be NULL. One allocation.
 * Returns NULL on out-of-memory. */
static keel_object *object_build(const resp_reply *pairs, size_t first, const char *key_name,
                                 size_t key_name_len, const char *key, size_t keylen)
{
    size_t nattrs = (pairs->elements - first) / 2;
    size_t strings = keylen + 1 + (key_name ? key_name_len + 1 : 0);
    for (size_t i = first; i < pairs->elements; i += 2) {
        const resp_reply *name = pairs->element[i], *val = pairs->element[i + 1];
        strings += name->len + 1;
        strings += (val->type == RESP_R_INT ? 21 : val->len) + 1;
    }
    size_t attrs_off = align_up(sizeof(keel_object), _Alignof(keel_object_attr));
    size_t strings_off = attrs_off + nattrs * sizeof(keel_object_attr);
    keel_object *o = malloc(strings_off + strings);
    if (!o) return NULL;
    char *base = (char *)o;
    char *s = base + strings_off;

    o->attrs = nattrs ? (keel_object_attr *)(void *)(base + attrs_off) : NULL;
    o->nattrs = nattrs;
    if (key_name) {
        memcpy(s, key_name, key_name_len);
        s[key_name_len] = '\0';
        o->key_name = s;
        s += key_name_len + 1;
    } else {
        o->key_name = NULL;
    }
    if (keylen) memcpy(s, key, keylen);
    s[keylen] = '\0';
    o->key = s;
    o->key_len = keylen;
    s += keylen + 1;

    for (size_t i = 0; i < nattrs; i++) {
        const resp_reply *name = pairs->element[first + 2 * i];
        const resp_reply *val = pairs->element[first + 2 * i + 1];
        keel_object_attr *at = &o->attrs[i];
        memcpy(s, name->str, name->len);
        s[name->len] = '\0';
        at->name = s;
        s += name->len + 1;
        if (val->type == RESP_R_INT) {
            int n = snprintf(s, 22, "%lld", val->integer);
            at->value = s;
            at->value_len = (size_t)n;
            at->is_int = 1;
            at->integer = (int64_t)val->integer;
            s += n + 1;
        } else {
            memcpy(s, val->str, val->len);
            s[val->len] = '\0';
            at->value = s;
            at->value_len = val->len;
            at->is_int = 0;
            at->integer = 0;
            s += val->len + 1;
        }
    }
    return o;
}

/* True if r is an array of name/value pairs from index first on. */
static int is_pairs(const resp_reply *r, size_t first)
{
    if (r->type != RESP_R_ARRAY || r->elements < first || (r->elements - first) % 2) return 0;
    for (size_t i = first; i < r->elements; i += 2) {
        if (r->element[i]->type != RESP_R_BULK || !is_value(r->element[i + 1])) return 0;
    }
    return 1;
}

KEEL_API void keel_object_free(keel_object *o)
{
    free(o);
}

KEEL_API void keel_objects_free(keel_object **objs, size_t count)
{
    if (!objs) return;
    for (size_t i = 0; i < count; i++)
        free(objs[i]);
    free(objs);
}

KEEL_API const keel_object_attr *keel_object_find(const keel_object *o, const char *name)
{
    if (!o || !name) return NULL;
    for (size_t i = 0; i < o->nattrs; i++) {
        if (strcmp(o->attrs[i].name, name) == 0) return &o->attrs[i];
    }
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Data operations
 * ------------------------------------------------------------------------- */

KEEL_API int keel_put(keel_client *c, const char *space, const char *key, size_t keylen,
                      const keel_attr *attrs, size_t n)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK) rc = check_key(c, space, key, keylen);
    if (rc == KEEL_OK) rc = check_attrs(c, attrs, n);
    if (rc != KEEL_OK) return rc;
    args a = {0};
    rc = start_keyed(&a, "PUT", space, key, keylen);
    if (rc == KEEL_OK) rc = push_attrs(&a, attrs, n);
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_STATUS) return bad_shape(c, r, "PUT");
    resp_reply_free(r);
    return KEEL_OK;
}

KEEL_API int keel_get(keel_client *c, const char *space, const char *key, size_t keylen,
                      keel_object **out)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK) rc = check_key(c, space, key, keylen);
    if (rc == KEEL_OK && !out) {
        err_set(c, "out is NULL");
        rc = KEEL_ERR_INVALID;
    }
    if (rc != KEEL_OK) return rc;
    args a = {0};
    rc = start_keyed(&a, "GET", space, key, keylen);
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type == RESP_R_NIL) {
        resp_reply_free(r);
        *out = NULL;
        return KEEL_OK;
    }
    if (!is_pairs(r, 0)) return bad_shape(c, r, "GET");
    keel_object *o = object_build(r, 0, NULL, 0, key, keylen);
    resp_reply_free(r);
    if (!o) {
        err_set(c, "out of memory decoding the object");
        return KEEL_ERR_NOMEM;
    }
    *out = o;
    return KEEL_OK;
}

KEEL_API int keel_del(keel_client *c, const char *space, const char *key, size_t keylen,
                      int *existed)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK) rc = check_key(c, space, key, keylen);
    if (rc != KEEL_OK) return rc;
    args a = {0};
    rc = start_keyed(&a, "DEL", space, key, keylen);
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_INT || (r->integer != 0 && r->integer != 1))
        return bad_shape(c, r, "DEL");
    if (existed) *existed = (int)r->integer;
    resp_reply_free(r);
    return KEEL_OK;
}

KEEL_API int keel_cput(keel_client *c, const char *space, const char *key, size_t keylen,
                       const keel_attr *cond, size_t ncond, const keel_attr *set, size_t nset)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK) rc = check_key(c, space, key, keylen);
    if (rc == KEEL_OK) rc = check_attrs(c, cond, ncond);
    if (rc == KEEL_OK) rc = check_attrs(c, set, nset);
    if (rc != KEEL_OK) return rc;
    args a = {0};
    rc = start_keyed(&a, "CPUT", space, key, keylen);
    if (rc == KEEL_OK) rc = args_push_str(&a, "IF");
    if (rc == KEEL_OK) rc = push_attrs(&a, cond, ncond);
    if (rc == KEEL_OK) rc = args_push_str(&a, "SET");
    if (rc == KEEL_OK) rc = push_attrs(&a, set, nset);
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_STATUS) return bad_shape(c, r, "CPUT");
    resp_reply_free(r);
    return KEEL_OK;
}

KEEL_API int keel_add(keel_client *c, const char *space, const char *key, size_t keylen,
                      const char *attr, int64_t delta, int64_t *newval)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK) rc = check_key(c, space, key, keylen);
    if (rc == KEEL_OK && !attr) {
        err_set(c, "attribute name is NULL");
        rc = KEEL_ERR_INVALID;
    }
    if (rc != KEEL_OK) return rc;
    char num[24];
    snprintf(num, sizeof num, "%" PRId64, delta);
    args a = {0};
    rc = start_keyed(&a, "ADD", space, key, keylen);
    if (rc == KEEL_OK) rc = args_push_str(&a, attr);
    if (rc == KEEL_OK) rc = args_push_str(&a, num);
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_INT) return bad_shape(c, r, "ADD");
    if (newval) *newval = (int64_t)r->integer;
    resp_reply_free(r);
    return KEEL_OK;
}

static const char *const op_names[] = {"=", "<", "<=", ">", ">="};

KEEL_API int keel_op_parse(const char *text, keel_op *op)
{
    if (!text || !op) return KEEL_ERR_INVALID;
    for (int i = 0; i < 5; i++) {
        if (strcmp(text, op_names[i]) == 0) {
            *op = (keel_op)i;
            return KEEL_OK;
        }
    }
    return KEEL_ERR_INVALID;
}

KEEL_API const char *keel_op_str(keel_op op)
{
    unsigned i = (unsigned)op;
    return i < 5 ? op_names[i] : "?";
}

/* Builds CMD space [name op value]... into a. */
static int build_preds(keel_client *c, args *a, const char *cmd, const char *space,
                       const keel_pred *preds, size_t n)
{
    if (!space) {
        err_set(c, "space is NULL");
        return KEEL_ERR_INVALID;
    }
    if (n && !preds) {
        err_set(c, "predicate array is NULL");
        return KEEL_ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        if (!preds[i].name || (!preds[i].value && preds[i].value_len) ||
            (unsigned)preds[i].op > KEEL_OP_GE) {
            err_set(c, "predicate %zu has a NULL name or value or an unknown operator", i);
            return KEEL_ERR_INVALID;
        }
    }
    int rc = args_push_str(a, cmd);
    if (rc == KEEL_OK) rc = args_push_str(a, space);
    for (size_t i = 0; i < n && rc == KEEL_OK; i++) {
        rc = args_push_str(a, preds[i].name);
        if (rc == KEEL_OK) rc = args_push_str(a, keel_op_str(preds[i].op));
        if (rc == KEEL_OK)
            rc = args_push(a, preds[i].value ? preds[i].value : "", preds[i].value_len);
    }
    if (rc != KEEL_OK) return build_failed(c, rc);
    return KEEL_OK;
}

KEEL_API int keel_search(keel_client *c, const char *space, const keel_pred *preds, size_t n,
                         uint64_t limit, keel_object ***objs, size_t *count)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK && (!objs || !count)) {
        err_set(c, "objs or count is NULL");
        rc = KEEL_ERR_INVALID;
    }
    if (rc != KEEL_OK) return rc;
    args a = {0};
    char num[24];
    rc = build_preds(c, &a, "SEARCH", space, preds, n);
    if (rc == KEEL_OK && limit) {
        snprintf(num, sizeof num, "%" PRIu64, limit);
        rc = args_push_str(&a, "LIMIT");
        if (rc == KEEL_OK) rc = args_push_str(&a, num);
        if (rc != KEEL_OK) rc = build_failed(c, rc);
    }
    if (rc != KEEL_OK) {
        args_free(&a);
        return rc;
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_ARRAY) return bad_shape(c, r, "SEARCH");
    for (size_t i = 0; i < r->elements; i++) {
        if (!is_pairs(r->element[i], 0) || r->element[i]->elements < 2 ||
            r->element[i]->element[1]->type != RESP_R_BULK)
            return bad_shape(c, r, "SEARCH");
    }
    keel_object **list = NULL;
    if (r->elements) {
        list = calloc(r->elements, sizeof *list);
        if (!list) goto err_nomem;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const resp_reply *e = r->element[i];
        list[i] = object_build(e, 2, e->element[0]->str, e->element[0]->len, e->element[1]->str,
                               e->element[1]->len);
        if (!list[i]) {
            keel_objects_free(list, i);
            goto err_nomem;
        }
    }
    *objs = list;
    *count = r->elements;
    resp_reply_free(r);
    return KEEL_OK;

err_nomem:
    resp_reply_free(r);
    err_set(c, "out of memory decoding the search result");
    return KEEL_ERR_NOMEM;
}

KEEL_API int keel_count(keel_client *c, const char *space, const keel_pred *preds, size_t n,
                        uint64_t *count)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK && !count) {
        err_set(c, "count is NULL");
        rc = KEEL_ERR_INVALID;
    }
    if (rc != KEEL_OK) return rc;
    args a = {0};
    rc = build_preds(c, &a, "COUNT", space, preds, n);
    if (rc != KEEL_OK) {
        args_free(&a);
        return rc;
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_INT || r->integer < 0) return bad_shape(c, r, "COUNT");
    *count = (uint64_t)r->integer;
    resp_reply_free(r);
    return KEEL_OK;
}

/* ---------------------------------------------------------------------------
 * Spaces
 * ------------------------------------------------------------------------- */

/* Sends CMD arg (arg may be NULL: CMD alone) and expects a status reply. */
static int simple_status(keel_client *c, const char *cmd, const char *arg, const char *what)
{
    int rc = enter(c, 1);
    if (rc != KEEL_OK) return rc;
    if (what && !arg) {
        err_set(c, "%s is NULL", what);
        return KEEL_ERR_INVALID;
    }
    args a = {0};
    rc = args_push_str(&a, cmd);
    if (rc == KEEL_OK && arg) rc = args_push_str(&a, arg);
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_STATUS) return bad_shape(c, r, cmd);
    resp_reply_free(r);
    return KEEL_OK;
}

KEEL_API int keel_space_add(keel_client *c, const char *description)
{
    if (!c) return KEEL_ERR_INVALID;
    return simple_status(c, "SPACE.ADD", description, "description");
}

KEEL_API int keel_space_drop(keel_client *c, const char *name)
{
    if (!c) return KEEL_ERR_INVALID;
    return simple_status(c, "SPACE.DROP", name, "space name");
}

KEEL_API int keel_ping(keel_client *c)
{
    if (!c) return KEEL_ERR_INVALID;
    return simple_status(c, "PING", NULL, NULL);
}

static char *dup_bytes(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (n) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

KEEL_API void keel_strings_free(char **strings, size_t n)
{
    if (!strings) return;
    for (size_t i = 0; i < n; i++)
        free(strings[i]);
    free(strings);
}

KEEL_API void keel_free(void *p)
{
    free(p);
}

KEEL_API int keel_space_list(keel_client *c, char ***names, size_t *n)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc != KEEL_OK) return rc;
    if (!names || !n) {
        err_set(c, "names or n is NULL");
        return KEEL_ERR_INVALID;
    }
    args a = {0};
    rc = args_push_str(&a, "SPACE.LIST");
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    resp_reply *r = NULL;
    rc = call(c, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_ARRAY) return bad_shape(c, r, "SPACE.LIST");
    for (size_t i = 0; i < r->elements; i++) {
        int t = r->element[i]->type;
        if (t != RESP_R_BULK && t != RESP_R_STATUS) return bad_shape(c, r, "SPACE.LIST");
    }
    char **list = NULL;
    if (r->elements) {
        list = calloc(r->elements, sizeof *list);
        if (!list) goto err_nomem;
    }
    for (size_t i = 0; i < r->elements; i++) {
        list[i] = dup_bytes(r->element[i]->str, r->element[i]->len);
        if (!list[i]) {
            keel_strings_free(list, i);
            goto err_nomem;
        }
    }
    *names = list;
    *n = r->elements;
    resp_reply_free(r);
    return KEEL_OK;

err_nomem:
    resp_reply_free(r);
    err_set(c, "out of memory decoding the space list");
    return KEEL_ERR_NOMEM;
}

/* Sends a.v, expects a bulk reply and hands it out as a NUL-terminated copy
 * in *text (the caller frees it with keel_free). Frees a. */
static int call_text(keel_client *c, args *a, const char *cmd, const char *what, char **text)
{
    resp_reply *r = NULL;
    int rc = call(c, a, &r);
    args_free(a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_BULK) return bad_shape(c, r, cmd);
    char *s = dup_bytes(r->str, r->len);
    resp_reply_free(r);
    if (!s) {
        err_set(c, "out of memory copying the %s", what);
        return KEEL_ERR_NOMEM;
    }
    *text = s;
    return KEEL_OK;
}

KEEL_API int keel_space_describe(keel_client *c, const char *name, char **text)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc != KEEL_OK) return rc;
    if (!name || !text) {
        err_set(c, "name or text is NULL");
        return KEEL_ERR_INVALID;
    }
    args a = {0};
    rc = args_push_str(&a, "SPACE.DESCRIBE");
    if (rc == KEEL_OK) rc = args_push_str(&a, name);
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    return call_text(c, &a, "SPACE.DESCRIBE", "description", text);
}

/* ---------------------------------------------------------------------------
 * Cluster administration
 * ------------------------------------------------------------------------- */

KEEL_API int keel_cluster_status(keel_client *c, int stale, char **json)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc != KEEL_OK) return rc;
    if (!json) {
        err_set(c, "json is NULL");
        return KEEL_ERR_INVALID;
    }
    args a = {0};
    rc = args_push_str(&a, "CLUSTER.STATUS");
    if (rc == KEEL_OK && stale) rc = args_push_str(&a, "STALE");
    if (rc != KEEL_OK) {
        args_free(&a);
        return build_failed(c, rc);
    }
    return call_text(c, &a, "CLUSTER.STATUS", "cluster status", json);
}

KEEL_API int keel_coordinator_remove(keel_client *c, uint64_t id)
{
    if (!c) return KEEL_ERR_INVALID;
    char num[24];
    snprintf(num, sizeof num, "%" PRIu64, id);
    return simple_status(c, "COORD.REMOVE", num, "id");
}

/* ---------------------------------------------------------------------------
 * Generic replies
 * ------------------------------------------------------------------------- */

KEEL_API void keel_reply_free(keel_reply *r)
{
    if (!r) return;
    if (r->element) {
        for (size_t i = 0; i < r->elements; i++)
            keel_reply_free(r->element[i]);
        free(r->element);
    }
    free(r->str);
    free(r);
}

KEEL_API int keel_reply_status(const keel_reply *r)
{
    if (!r) return KEEL_ERR_INVALID;
    if (r->type != KEEL_REPLY_ERROR) return KEEL_OK;
    return status_of_error(r->str, r->len);
}

/* Deep-copies a codec reply into the public type. NULL on out-of-memory
 * (nothing leaked). Depth is bounded by RESP_REPLY_MAX_DEPTH. */
static keel_reply *reply_convert(const resp_reply *r)
{
    keel_reply *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    switch (r->type) {
    case RESP_R_STATUS:
        k->type = KEEL_REPLY_STATUS;
        break;
    case RESP_R_ERROR:
        k->type = KEEL_REPLY_ERROR;
        break;
    case RESP_R_INT:
        k->type = KEEL_REPLY_INT;
        break;
    case RESP_R_BULK:
        k->type = KEEL_REPLY_BULK;
        break;
    case RESP_R_ARRAY:
        k->type = KEEL_REPLY_ARRAY;
        break;
    default:
        k->type = KEEL_REPLY_NIL;
        break;
    }
    if (r->type == RESP_R_INT) k->integer = (int64_t)r->integer;
    if (r->type == RESP_R_STATUS || r->type == RESP_R_ERROR || r->type == RESP_R_BULK) {
        k->str = dup_bytes(r->str ? r->str : "", r->len);
        if (!k->str) goto err_after_node;
        k->len = r->len;
    }
    if (r->type == RESP_R_ARRAY && r->elements) {
        k->element = calloc(r->elements, sizeof *k->element);
        if (!k->element) goto err_after_node;
        k->elements = r->elements;
        for (size_t i = 0; i < r->elements; i++) {
            k->element[i] = reply_convert(r->element[i]);
            if (!k->element[i]) goto err_after_node;
        }
    }
    return k;

err_after_node:
    keel_reply_free(k);
    return NULL;
}

/* Hands a codec reply to the caller as a keel_reply (consumes r). */
static int deliver(keel_client *c, resp_reply *r, keel_reply **out)
{
    keel_reply *k = reply_convert(r);
    if (r->type == RESP_R_ERROR) err_set_server(c, r->str, r->len);
    resp_reply_free(r);
    if (!k) {
        err_set(c, "out of memory copying the reply");
        return KEEL_ERR_NOMEM;
    }
    *out = k;
    return KEEL_OK;
}

KEEL_API int keel_command(keel_client *c, int argc, const char *const *argv, const size_t *argvlen,
                          keel_reply **out)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 1);
    if (rc == KEEL_OK) rc = check_argv(c, argc, argv, argvlen);
    if (rc == KEEL_OK && !out) {
        err_set(c, "out is NULL");
        rc = KEEL_ERR_INVALID;
    }
    if (rc != KEEL_OK) return rc;
    resp_reply *r = NULL;
    rc = roundtrip(c, argc, argv, argvlen, &r);
    if (rc != KEEL_OK) return rc;
    return deliver(c, r, out);
}

/* ---------------------------------------------------------------------------
 * Pipeline
 * ------------------------------------------------------------------------- */

KEEL_API int keel_pipeline_append(keel_client *c, int argc, const char *const *argv,
                                  const size_t *argvlen)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 0);
    if (rc == KEEL_OK) rc = check_argv(c, argc, argv, argvlen);
    if (rc == KEEL_OK) rc = encode(c, argc, argv, argvlen);
    if (rc == KEEL_ERR_NOMEM) err_set(c, "out of memory encoding the request");
    if (rc != KEEL_OK) return rc;
    c->pending++;
    return KEEL_OK;
}

KEEL_API int keel_pipeline_flush(keel_client *c)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 0);
    if (rc != KEEL_OK) return rc;
    return flush_out(c);
}

KEEL_API int keel_pipeline_read(keel_client *c, keel_reply **out)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 0);
    if (rc != KEEL_OK) return rc;
    if (!out) {
        err_set(c, "out is NULL");
        return KEEL_ERR_INVALID;
    }
    if (!c->pending) {
        err_set(c, "no pipelined request is waiting for its reply");
        return KEEL_ERR_INVALID;
    }
    rc = flush_out(c);
    if (rc != KEEL_OK) return rc;
    resp_reply *r = NULL;
    rc = read_reply(c, &r);
    if (rc != KEEL_OK) return rc;
    c->pending--;
    return deliver(c, r, out);
}

KEEL_API size_t keel_pipeline_pending(const keel_client *c)
{
    return c ? c->pending : 0;
}
