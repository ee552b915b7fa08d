/* client: libkeel, the public C client (see include/keel.h for the API and
 * docs/libkeel.md for cluster mode).
 *
 * Design note
 * -----------
 * A connection (kconn) is one TCP socket in non-blocking mode, driven as if
 * it were blocking: every wait goes through poll() with the current
 * attempt's timeout, so EINTR, partial writes and timeouts are handled in one
 * place (wait_fd). Requests are encoded with resp_add_command into the
 * connection's `out`; replies are read into its `in` and decoded with
 * resp_reply_parse, then either turned into a public keel_reply tree
 * (keel_command, the pipeline) or checked and converted by a typed call
 * (keel_get, keel_search, ...).
 *
 * A client has the connection to the address given (`home`) and, in cluster
 * mode, a pool of connections to daemons and coordinators opened when first
 * needed. keel_client_connect learns the mode with INFO server. Then every
 * typed call goes through call(), which picks the route by the command's
 * kind: standalone sends everything home, once; cluster mode sends keyed
 * data commands to the primary's daemon from the cached routing table
 * (kroute.h), SEARCH/COUNT to any ONLINE daemon, administration to the
 * coordinators (leader first), and retries by the rules of docs/libkeel.md.
 *
 * Invariants:
 *   1. A kconn's fd >= 0 exactly while it is usable. An I/O or protocol
 *      failure closes it (kc_fail). In standalone mode a failure of `home`
 *      is sticky: it records why in `broken` and every later call fails with
 *      KEEL_ERR_IO naming that reason, because the position in the reply
 *      stream is lost. In cluster mode the next call reopens the connection.
 *   2. `pending` counts requests appended to the pipeline whose replies have
 *      not been read; they are all on `pipe`. One-shot calls require
 *      pending == 0, so a reply is always matched with the request that
 *      caused it. A failure of `pipe` sets pending to 0.
 *   3. in.data[in_pos, in.len) holds received bytes not yet parsed; bytes
 *      before in_pos belong to replies already returned.
 *   4. out.data[out_pos, out.len) holds encoded requests not yet written.
 *   5. `err` is always NUL-terminated; it is emptied at the start of every
 *      public call that takes the client, so it describes the last call only.
 *   6. Results handed to the caller never point into the client: objects,
 *      replies and strings are separate allocations the caller owns.
 *   7. Cluster mode: every attempt of one write call carries the same
 *      (client_id, client_seq); client_seq grows by one per write call; only
 *      one write of the client is in flight (a client serves one thread).
 *   8. Retries are bounded: no attempt starts and no backoff wait ends after
 *      the call's deadline (start + retry_ms), and every attempt after the
 *      first waits at most the time left (at least MIN_ATTEMPT_MS).
 *   9. The routing table only moves forward: a fetched table replaces the
 *      cached one only if its version is not lower. A -MOVED patches one
 *      partition's entry in place (the next refresh may correct it).
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
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "json.h"
#include "kroute.h"
#include "resp.h"

/* ---------------------------------------------------------------------------
 * Types and constants
 * ------------------------------------------------------------------------- */

#define READ_CHUNK 16384               /* minimum free room per recv */
#define COMPACT_THRESHOLD (64u * 1024) /* parsed bytes kept before memmove */
#define MIN_ATTEMPT_MS 100             /* a retry gets at least this long */
#define DISCOVERY_MS 2000              /* bound on learning the cluster at connect */
#define SUSPECT_MS 2000                /* a daemon that failed is avoided this long
                                          when any ONLINE daemon will do */
#define MAX_COORDS 32                  /* coordinator addresses kept */
#define MAX_POOL 256                   /* connections kept open at most */

/* One connection. */
typedef struct kconn {
    int fd;            /* socket; -1 when not connected (inv. 1) */
    int peer_closed;   /* recv returned 0: no more bytes will arrive */
    int redirect;      /* CLIENT.REDIRECT ON was answered on this socket */
    int64_t failed_at; /* monotonic ms of its last failure; 0 never */
    char host[KROUTE_HOST_MAX];
    int port;
    char addr[300]; /* "host:port" for messages */
    buf out;        /* encoded requests (inv. 4) */
    size_t out_pos;
    buf in; /* received bytes (inv. 3) */
    size_t in_pos;
} kconn;

typedef struct caddr {
    char host[KROUTE_HOST_MAX];
    int port;
} caddr;

struct keel_client {
    kconn home;      /* the address given */
    kconn pipec;     /* coordinator mode: the pipeline's daemon connection */
    kconn *pipe;     /* the pipeline's connection: &home or &pipec */
    int mode;        /* keel_mode */
    int timeout_ms;  /* 0: wait forever */
    int io_timeout;  /* the waits of the current attempt; 0: forever */
    size_t pending;  /* pipelined requests without a reply read (inv. 2) */
    buf err;         /* last call's error text, NUL-terminated (inv. 5) */
    buf broken;      /* why home was closed (standalone), NUL-terminated */
    kconn *last;     /* the connection of the last reply read; NULL if none */
    char last_addr[300];
    /* cluster mode */
    int retry_ms;
    uint64_t client_id;  /* inv. 7 */
    uint64_t client_seq; /* the last one used */
    kroute_table routes;
    int have_routes;
    kconn **pool; /* daemons and coordinators by host:port */
    size_t npool;
    caddr coords[MAX_COORDS]; /* coordinators, the leader first when known */
    size_t ncoords;
    size_t cidx; /* the coordinator to ask next */
    int coords_learnt;
    size_t rr; /* round robin over ONLINE daemons */
    keel_client_stats stats;
};

/* An argument vector under construction for a typed call. */
typedef struct args {
    const char **v;
    size_t *l;
    int n;
    int cap;
} args;

/* Where a typed call goes (call()). */
enum kind {
    K_HOME = 0, /* the address given, once (PING) */
    K_ADMIN,    /* coordinators, leader first, retried */
    K_READ,     /* keyed read (GET): the primary */
    K_WRITE,    /* keyed write: the primary, wrapped in SEQ */
    K_ANY       /* SEARCH, COUNT: any ONLINE daemon (it fans out) */
};

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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Closes k after an I/O or protocol failure (invariant 1). The current
 * errmsg becomes the recorded reason when the failure is sticky. Returns
 * status. */
static int kc_fail(keel_client *c, kconn *k, int status)
{
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    k->failed_at = now_ms();
    k->redirect = 0;
    /* in and out keep their bytes (roundtrip may still report a reply the
     * server sent before closing); kc_open empties them. */
    if (k == c->pipe) c->pending = 0;
    if (k == &c->home && c->mode <= KEEL_MODE_STANDALONE) {
        buf_reset(&c->broken);
        buf_puts(&c->broken, c->err.len > 1 ? c->err.data : keel_strerror(status));
        buf_putc(&c->broken, '\0');
    }
    return status;
}

/* ---------------------------------------------------------------------------
 * Socket I/O
 * ------------------------------------------------------------------------- */

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

/* Reads every byte available now into k->in without blocking. Returns 0 (got
 * bytes, or none available, or end of stream noted in peer_closed) or
 * KEEL_ERR_IO after failing k. */
static int read_available(keel_client *c, kconn *k)
{
    for (;;) {
        if (k->in_pos == k->in.len) {
            buf_reset(&k->in);
            k->in_pos = 0;
        } else if (k->in_pos >= COMPACT_THRESHOLD && k->in_pos * 2 >= k->in.len) {
            buf_consume(&k->in, k->in_pos);
            k->in_pos = 0;
        }
        size_t room = k->in.len < READ_CHUNK ? READ_CHUNK : k->in.len;
        buf_reserve(&k->in, room);
        ssize_t n = recv(k->fd, k->in.data + k->in.len, k->in.cap - k->in.len, 0);
        if (n > 0) {
            k->in.len += (size_t)n;
            continue;
        }
        if (n == 0) {
            k->peer_closed = 1;
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        err_set(c, "receive from %s failed: %s", k->addr, ERRSTR(errno));
        return kc_fail(c, k, KEEL_ERR_IO);
    }
}

/* Reads whatever is still readable after a failed send, ignoring errors. */
static void drain_quietly(kconn *k)
{
    for (;;) {
        buf_reserve(&k->in, READ_CHUNK);
        ssize_t n = recv(k->fd, k->in.data + k->in.len, k->in.cap - k->in.len, 0);
        if (n > 0) {
            k->in.len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return;
    }
}

/* Writes all of k->out, reading replies that arrive meanwhile into k->in so a
 * server that stops reading until its replies are consumed cannot deadlock a
 * long pipeline. Returns KEEL_OK or KEEL_ERR_IO (k failed). */
static int flush_out(keel_client *c, kconn *k)
{
    while (k->out_pos < k->out.len) {
        ssize_t n = send(k->fd, k->out.data + k->out_pos, k->out.len - k->out_pos, MSG_NOSIGNAL);
        if (n > 0) {
            k->out_pos += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            int saved = errno;
            /* The server may have answered (say, a broken limit) and closed:
             * keep its reply so roundtrip can report it. */
            drain_quietly(k);
            err_set(c, "send to %s failed: %s", k->addr, ERRSTR(saved));
            return kc_fail(c, k, KEEL_ERR_IO);
        }
        short ev = 0;
        short want = (short)(POLLOUT | (k->peer_closed ? 0 : POLLIN));
        int r = wait_fd(k->fd, c->io_timeout, want, &ev);
        if (r == 0) {
            err_set(c, "timed out after %d ms sending to %s", c->io_timeout, k->addr);
            return kc_fail(c, k, KEEL_ERR_IO);
        }
        if (r < 0) {
            err_set(c, "poll on %s failed: %s", k->addr, ERRSTR(errno));
            return kc_fail(c, k, KEEL_ERR_IO);
        }
        if (ev & (POLLIN | POLLHUP | POLLERR)) {
            int rc = read_available(c, k);
            if (rc != KEEL_OK) return rc;
        }
    }
    buf_reset(&k->out);
    k->out_pos = 0;
    return KEEL_OK;
}

/* Reads one complete reply. Returns KEEL_OK with *r (caller frees with
 * resp_reply_free), or KEEL_ERR_IO / KEEL_ERR_PROTOCOL after failing k. */
static int read_reply(keel_client *c, kconn *k, resp_reply **r)
{
    for (;;) {
        if (k->in.len > k->in_pos) {
            size_t used = 0;
            int rc = resp_reply_parse(k->in.data + k->in_pos, k->in.len - k->in_pos, &used, r);
            if (rc == RESP_OK) {
                k->in_pos += used;
                c->last = k;
                snprintf(c->last_addr, sizeof c->last_addr, "%s", k->addr);
                return KEEL_OK;
            }
            if (rc == RESP_ERROR) {
                err_set(c, "protocol error: %s sent a malformed reply", k->addr);
                return kc_fail(c, k, KEEL_ERR_PROTOCOL);
            }
        }
        if (k->peer_closed) {
            err_set(c, "connection closed by %s%s", k->addr,
                    k->in.len > k->in_pos ? " in the middle of a reply" : "");
            return kc_fail(c, k, KEEL_ERR_IO);
        }
        short ev = 0;
        int w = wait_fd(k->fd, c->io_timeout, POLLIN, &ev);
        if (w == 0) {
            err_set(c, "timed out after %d ms waiting for a reply from %s", c->io_timeout, k->addr);
            return kc_fail(c, k, KEEL_ERR_IO);
        }
        if (w < 0) {
            err_set(c, "poll on %s failed: %s", k->addr, ERRSTR(errno));
            return kc_fail(c, k, KEEL_ERR_IO);
        }
        int rc = read_available(c, k);
        if (rc != KEEL_OK) return rc;
    }
}

/* ---------------------------------------------------------------------------
 * Connections
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

static void kc_init(kconn *k, const char *host, int port)
{
    memset(k, 0, sizeof *k);
    k->fd = -1;
    snprintf(k->host, sizeof k->host, "%s", host);
    k->port = port;
    if (strchr(host, ':'))
        snprintf(k->addr, sizeof k->addr, "[%.256s]:%d", host, port);
    else
        snprintf(k->addr, sizeof k->addr, "%.256s:%d", host, port);
    buf_init(&k->out);
    buf_init(&k->in);
}

static void kc_free(kconn *k)
{
    if (k->fd >= 0) close(k->fd);
    k->fd = -1;
    buf_free(&k->out);
    buf_free(&k->in);
}

/* Opens k (closed) with the current attempt's timeout. KEEL_OK, or
 * KEEL_ERR_CONNECT with errmsg set. */
static int kc_open(keel_client *c, kconn *k)
{
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%d", k->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(k->host, portstr, &hints, &res);
    if (gai != 0) {
        err_set(c, "cannot connect to %s: %s", k->addr,
                gai == EAI_SYSTEM ? ERRSTR(errno) : gai_strerror(gai));
        k->failed_at = now_ms();
        return KEEL_ERR_CONNECT;
    }
    int last_errno = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = connect_one(ai, c->io_timeout);
        if (fd >= 0) {
            k->fd = fd;
            break;
        }
        last_errno = errno;
    }
    freeaddrinfo(res);
    if (k->fd < 0) {
        if (last_errno == ETIMEDOUT)
            err_set(c, "cannot connect to %s: timed out after %d ms", k->addr, c->io_timeout);
        else
            err_set(c, "cannot connect to %s: %s", k->addr, ERRSTR(last_errno));
        k->failed_at = now_ms();
        return KEEL_ERR_CONNECT;
    }
    k->peer_closed = 0;
    k->redirect = 0;
    buf_reset(&k->out);
    k->out_pos = 0;
    buf_reset(&k->in);
    k->in_pos = 0;
    c->stats.connects++;
    return KEEL_OK;
}

/* Appends one command to k->out. */
static int encode(kconn *k, int argc, const char *const *argv, const size_t *argvlen)
{
    if (argvlen) {
        resp_add_command(&k->out, argc, argv, argvlen);
        return KEEL_OK;
    }
    size_t *lens = malloc((size_t)argc * sizeof *lens);
    if (!lens) return KEEL_ERR_NOMEM;
    for (int i = 0; i < argc; i++)
        lens[i] = argv[i] ? strlen(argv[i]) : 0;
    resp_add_command(&k->out, argc, argv, lens);
    free(lens);
    return KEEL_OK;
}

/* Sends one command on k (open) and reads its reply, whatever it is. */
static int roundtrip(keel_client *c, kconn *k, int argc, const char *const *argv,
                     const size_t *argvlen, resp_reply **r)
{
    int rc = encode(k, argc, argv, argvlen);
    if (rc != KEEL_OK) return rc;
    rc = flush_out(c, k);
    if (rc == KEEL_ERR_IO && k->in.len > k->in_pos) {
        /* The send failed but the server had answered first (an error before
         * closing, as for a request over its limits): that reply is the
         * better report. The connection stays failed. */
        size_t used = 0;
        if (resp_reply_parse(k->in.data + k->in_pos, k->in.len - k->in_pos, &used, r) ==
            RESP_OK) {
            k->in_pos += used;
            c->last = NULL;
            snprintf(c->last_addr, sizeof c->last_addr, "%s", k->addr);
            return KEEL_OK;
        }
    }
    if (rc != KEEL_OK) return rc;
    return read_reply(c, k, r);
}

/* The pooled connection to host:port (created closed if new), or NULL when
 * the pool is full. */
static kconn *pool_get(keel_client *c, const char *host, int port)
{
    for (size_t i = 0; i < c->npool; i++) {
        if (c->pool[i]->port == port && strcmp(c->pool[i]->host, host) == 0) return c->pool[i];
    }
    if (c->npool == MAX_POOL) {
        /* Drop a closed connection to make room; else refuse. */
        for (size_t i = 0; i < c->npool; i++) {
            if (c->pool[i]->fd < 0) {
                kc_free(c->pool[i]);
                kc_init(c->pool[i], host, port);
                return c->pool[i];
            }
        }
        return NULL;
    }
    kconn **np = realloc(c->pool, (c->npool + 1) * sizeof *np);
    if (!np) return NULL;
    c->pool = np;
    kconn *k = malloc(sizeof *k);
    if (!k) return NULL;
    kc_init(k, host, port);
    c->pool[c->npool++] = k;
    return k;
}

/* Opens k if it is closed and, with redirect, asks CLIENT.REDIRECT ON on it
 * once per socket. KEEL_OK or a failure (errmsg set; k closed). */
static int kc_ready(keel_client *c, kconn *k, int redirect)
{
    if (k->fd < 0) {
        int rc = kc_open(c, k);
        if (rc != KEEL_OK) return rc;
    }
    if (!redirect || k->redirect) return KEEL_OK;
    static const char *const av[] = {"CLIENT.REDIRECT", "ON"};
    resp_reply *r = NULL;
    int rc = roundtrip(c, k, 2, av, NULL, &r);
    if (rc != KEEL_OK) return rc;
    /* A daemon that does not know CLIENT.REDIRECT forwards instead: fine. */
    k->redirect = 1;
    resp_reply_free(r);
    return KEEL_OK;
}

/* ---------------------------------------------------------------------------
 * Cluster state: coordinators and the routing table
 * ------------------------------------------------------------------------- */

/* The timeout of an attempt that must end by deadline. */
static int attempt_timeout(const keel_client *c, int64_t deadline)
{
    int64_t left = deadline - now_ms();
    if (left < MIN_ATTEMPT_MS) left = MIN_ATTEMPT_MS;
    if (c->timeout_ms > 0 && left > c->timeout_ms) left = c->timeout_ms;
    return left > INT_MAX ? INT_MAX : (int)left;
}

/* Index of coordinator host:port, adding it if new; -1 when the list is full. */
static int coord_index(keel_client *c, const char *host, int port)
{
    for (size_t i = 0; i < c->ncoords; i++) {
        if (c->coords[i].port == port && strcmp(c->coords[i].host, host) == 0) return (int)i;
    }
    if (c->ncoords == MAX_COORDS) return -1;
    snprintf(c->coords[c->ncoords].host, sizeof c->coords[0].host, "%s", host);
    c->coords[c->ncoords].port = port;
    return (int)c->ncoords++;
}

/* One request to host:port, with the attempt's timeout bounded by deadline.
 * A reply (error replies included) is KEEL_OK with *r. */
static int ask(keel_client *c, const char *host, int port, int redirect, int64_t deadline,
               int argc, const char *const *argv, resp_reply **r)
{
    kconn *k = pool_get(c, host, port);
    if (!k) {
        err_set(c, "too many connections");
        return KEEL_ERR_NOMEM;
    }
    c->io_timeout = attempt_timeout(c, deadline);
    int rc = kc_ready(c, k, redirect);
    if (rc == KEEL_OK) rc = roundtrip(c, k, argc, argv, NULL, r);
    c->io_timeout = c->timeout_ms;
    return rc;
}

/* Reads the coordinators out of a CLUSTER.STATUS document, leader first. */
static int coords_from_status(keel_client *c, const char *text, size_t len)
{
    json_doc *doc = NULL;
    if (json_parse(text, len, NULL, &doc, NULL) != JSON_OK) return -1;
    const json_value *list = json_get(json_root(doc), "coordinators");
    caddr found[MAX_COORDS];
    size_t n = 0;
    int leader = -1;
    for (const json_value *e = list && list->type == JSON_ARRAY ? list->child : NULL;
         e && n < MAX_COORDS; e = e->next) {
        const json_value *a = json_get(e, "address"), *role = json_get(e, "role");
        if (!a || a->type != JSON_STRING) continue;
        if (kroute_parse_addr(a->str, a->len, found[n].host, sizeof found[n].host,
                              &found[n].port) != 0)
            continue;
        if (role && role->type == JSON_STRING && strcmp(role->str, "leader") == 0 && leader < 0)
            leader = (int)n;
        n++;
    }
    json_free(doc);
    if (!n) return -1;
    if (leader > 0) {
        caddr t = found[0];
        found[0] = found[leader];
        found[leader] = t;
    }
    memcpy(c->coords, found, n * sizeof found[0]);
    c->ncoords = n;
    c->cidx = 0;
    return 0;
}

/* Reads the coordinators out of a daemon's INFO lease text. */
static int coords_from_lease(keel_client *c, const char *text, size_t len)
{
    char one[300], list[4096];
    caddr found[MAX_COORDS];
    size_t n = 0;
    if (kroute_info_field(text, len, "coordinator", one, sizeof one) == 0 &&
        kroute_parse_addr(one, strlen(one), found[0].host, sizeof found[0].host,
                          &found[0].port) == 0)
        n = 1;
    if (kroute_info_field(text, len, "coordinators", list, sizeof list) == 0) {
        char *save = NULL;
        for (char *tok = strtok_r(list, ",", &save); tok && n < MAX_COORDS;
             tok = strtok_r(NULL, ",", &save)) {
            caddr a;
            if (kroute_parse_addr(tok, strlen(tok), a.host, sizeof a.host, &a.port) != 0) continue;
            int dup = 0;
            for (size_t i = 0; i < n; i++)
                dup |= found[i].port == a.port && strcmp(found[i].host, a.host) == 0;
            if (!dup) found[n++] = a;
        }
    }
    if (!n) return -1;
    memcpy(c->coords, found, n * sizeof found[0]);
    c->ncoords = n;
    c->cidx = 0;
    return 0;
}

/* Learns the coordinators' client addresses: from CLUSTER.STATUS STALE of a
 * known coordinator, else from INFO lease of a daemon (the address given
 * first). Best effort: keeps what it had on failure. 0 when learnt. */
static int learn_coords(keel_client *c, int64_t deadline)
{
    static const char *const st[] = {"CLUSTER.STATUS", "STALE"};
    static const char *const lease[] = {"INFO", "lease"};
    for (size_t i = 0; i < c->ncoords && now_ms() < deadline; i++) {
        resp_reply *r = NULL;
        caddr a = c->coords[(c->cidx + i) % c->ncoords];
        if (ask(c, a.host, a.port, 0, deadline, 2, st, &r) != KEEL_OK) continue;
        int ok = r->type == RESP_R_BULK && coords_from_status(c, r->str, r->len) == 0;
        resp_reply_free(r);
        if (ok) return c->coords_learnt = 1, 0;
    }
    /* Daemons: the address given (daemon mode), then those in the table. */
    size_t nd = c->have_routes ? c->routes.ndaemons : 0;
    for (size_t i = 0; i <= nd && now_ms() < deadline; i++) {
        const char *host;
        int port;
        if (i == 0) {
            if (c->mode != KEEL_MODE_DAEMON) continue;
            host = c->home.host;
            port = c->home.port;
        } else {
            const kroute_daemon *d = &c->routes.daemons[i - 1];
            if (d->state != KROUTE_ONLINE) continue;
            host = d->host;
            port = d->port;
        }
        resp_reply *r = NULL;
        if (ask(c, host, port, 0, deadline, 2, lease, &r) != KEEL_OK) continue;
        int ok = r->type == RESP_R_BULK && coords_from_lease(c, r->str, r->len) == 0;
        resp_reply_free(r);
        if (ok) return c->coords_learnt = 1, 0;
    }
    return -1;
}

/* Takes a CLUSTER.ROUTES reply. 0 if it decoded (and replaced the table
 * unless older than it, inv. 9), -1 if not. */
static int accept_routes(keel_client *c, const resp_reply *r)
{
    kroute_table t;
    if (kroute_parse(r, &t) != 0) return -1;
    c->stats.route_refreshes++;
    if (c->have_routes && t.version < c->routes.version) {
        kroute_free(&t);
        return 0;
    }
    kroute_free(&c->routes);
    c->routes = t;
    c->have_routes = 1;
    c->stats.map_version = t.version;
    return 0;
}

/* Fetches the routing table: from the coordinators (CLUSTER.ROUTES, the
 * leader first, each asked at most once, a "leader is" hint followed), then,
 * unless coord_only, from the daemons (their own maps). KEEL_OK once a table
 * was taken; otherwise the last failure, errmsg set. Leaves errmsg as it
 * found it on success. */
static int refresh_routes(keel_client *c, int64_t deadline, int coord_only)
{
    static const char *const rt[] = {"CLUSTER.ROUTES"};
    buf saved;
    buf_init(&saved);
    buf_append(&saved, c->err.data, c->err.len);
    int rc = KEEL_ERR_CONNECT;
    int done = 0;
    if (!c->ncoords || !c->coords_learnt) learn_coords(c, deadline);
    unsigned char tried[MAX_COORDS] = {0};
    size_t idx = c->cidx;
    for (size_t n = 0; n < c->ncoords + 2 && !done && c->ncoords && now_ms() < deadline; n++) {
        idx %= c->ncoords;
        if (tried[idx]) {
            size_t j = 0;
            while (j < c->ncoords && tried[(idx + j) % c->ncoords])
                j++;
            if (j == c->ncoords) break;
            idx = (idx + j) % c->ncoords;
        }
        tried[idx] = 1;
        resp_reply *r = NULL;
        rc = ask(c, c->coords[idx].host, c->coords[idx].port, 0, deadline, 1, rt, &r);
        if (rc != KEEL_OK) {
            idx++;
            continue;
        }
        if (r->type == RESP_R_ERROR) {
            char host[KROUTE_HOST_MAX];
            int port, li;
            err_set_server(c, r->str, r->len);
            rc = status_of_error(r->str, r->len);
            if (kroute_leader_hint(r->str, r->len, host, sizeof host, &port) == 0 &&
                (li = coord_index(c, host, port)) >= 0 && !tried[li])
                idx = (size_t)li;
            else
                idx++;
        } else if (accept_routes(c, r) == 0) {
            c->cidx = idx;
            done = 1;
        } else {
            err_set(c, "protocol error: unexpected CLUSTER.ROUTES reply from %s:%d",
                    c->coords[idx].host, c->coords[idx].port);
            rc = KEEL_ERR_PROTOCOL;
            idx++;
        }
        resp_reply_free(r);
    }
    if (!done && !coord_only) {
        /* The daemons' own maps: the address given first in daemon mode. */
        caddr list[64];
        size_t n = 0;
        if (c->mode == KEEL_MODE_DAEMON) {
            snprintf(list[n].host, sizeof list[n].host, "%s", c->home.host);
            list[n++].port = c->home.port;
        }
        for (size_t i = 0; c->have_routes && i < c->routes.ndaemons && n < 64; i++) {
            const kroute_daemon *d = &c->routes.daemons[i];
            if (d->state != KROUTE_ONLINE) continue;
            if (c->mode == KEEL_MODE_DAEMON && d->port == c->home.port &&
                strcmp(d->host, c->home.host) == 0)
                continue;
            snprintf(list[n].host, sizeof list[n].host, "%s", d->host);
            list[n++].port = d->port;
        }
        for (size_t i = 0; i < n && !done && now_ms() < deadline; i++) {
            resp_reply *r = NULL;
            rc = ask(c, list[i].host, list[i].port, 1, deadline, 1, rt, &r);
            if (rc != KEEL_OK) continue;
            if (r->type == RESP_R_ERROR) {
                err_set_server(c, r->str, r->len);
                rc = status_of_error(r->str, r->len);
            } else if (accept_routes(c, r) == 0) {
                done = 1;
            }
            resp_reply_free(r);
        }
    }
    if (done) {
        buf_reset(&c->err);
        buf_append(&c->err, saved.data, saved.len);
        rc = KEEL_OK;
    } else if (rc == KEEL_OK) {
        rc = KEEL_ERR_CONNECT;
    }
    buf_free(&saved);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Connecting
 * ------------------------------------------------------------------------- */

static uint64_t random_client_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
        id = (uint64_t)now_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() << 32;
    id &= (uint64_t)INT64_MAX;
    return id ? id : 1;
}

/* Asks home INFO server and sets the mode. KEEL_OK, or the connection's
 * failure (home failed). */
static int discover(keel_client *c)
{
    static const char *const av[] = {"INFO", "server"};
    resp_reply *r = NULL;
    int rc = roundtrip(c, &c->home, 2, av, NULL, &r);
    if (rc != KEEL_OK) return rc;
    char mode[32];
    c->mode = KEEL_MODE_STANDALONE;
    if (r->type == RESP_R_BULK && kroute_info_field(r->str, r->len, "mode", mode, sizeof mode) == 0) {
        if (strcmp(mode, "coordinator") == 0) c->mode = KEEL_MODE_COORDINATOR;
        if (strcmp(mode, "daemon") == 0) c->mode = KEEL_MODE_DAEMON;
    }
    resp_reply_free(r);
    if (c->mode == KEEL_MODE_STANDALONE) return KEEL_OK;
    c->client_id = random_client_id();
    if (c->mode == KEEL_MODE_COORDINATOR) {
        coord_index(c, c->home.host, c->home.port);
        c->pipe = &c->pipec; /* data commands need a daemon */
    }
    /* Learn the rest now, so the address given may fail later (best effort,
     * bounded: calls retry on their own). */
    int64_t deadline = now_ms() + (c->timeout_ms > 0 && c->timeout_ms < DISCOVERY_MS
                                       ? c->timeout_ms
                                       : DISCOVERY_MS);
    learn_coords(c, deadline);
    refresh_routes(c, deadline, 0);
    err_clear(c);
    return KEEL_OK;
}

KEEL_API int keel_client_connect(const char *host, int port, int timeout_ms, keel_client **out)
{
    if (out) *out = NULL;
    if (!host || !out || port < 1 || port > 65535 || timeout_ms < 0) return KEEL_ERR_INVALID;

    keel_client *c = calloc(1, sizeof *c);
    if (!c) return KEEL_ERR_NOMEM;
    c->timeout_ms = timeout_ms;
    c->io_timeout = timeout_ms;
    c->retry_ms = KEEL_DEFAULT_RETRY_TIMEOUT_MS;
    c->mode = KEEL_MODE_NONE;
    kc_init(&c->home, host, port);
    kc_init(&c->pipec, host, port);
    c->pipe = &c->home;
    buf_init(&c->err);
    buf_init(&c->broken);
    err_clear(c);
    *out = c;

    int rc = kc_open(c, &c->home);
    if (rc == KEEL_OK) {
        rc = discover(c);
        if (rc != KEEL_OK) {
            char why[400];
            snprintf(why, sizeof why, "%s", c->err.len > 1 ? c->err.data : keel_strerror(rc));
            err_set(c, "cannot connect to %s: no answer to INFO server (%s)", c->home.addr, why);
            rc = KEEL_ERR_CONNECT;
        }
    }
    if (rc != KEEL_OK) {
        c->mode = KEEL_MODE_NONE;
        kc_fail(c, &c->home, KEEL_ERR_CONNECT);
        return KEEL_ERR_CONNECT;
    }
    return KEEL_OK;
}

KEEL_API void keel_client_close(keel_client *c)
{
    if (!c) return;
    kc_free(&c->home);
    kc_free(&c->pipec);
    for (size_t i = 0; i < c->npool; i++) {
        kc_free(c->pool[i]);
        free(c->pool[i]);
    }
    free(c->pool);
    kroute_free(&c->routes);
    buf_free(&c->err);
    buf_free(&c->broken);
    free(c);
}

KEEL_API const char *keel_client_errmsg(const keel_client *c)
{
    if (!c || !c->err.len) return "";
    return c->err.data;
}

KEEL_API keel_mode keel_client_mode(const keel_client *c)
{
    return c ? (keel_mode)c->mode : KEEL_MODE_NONE;
}

KEEL_API int keel_client_set_retry_timeout(keel_client *c, int ms)
{
    if (!c || ms < 0) return KEEL_ERR_INVALID;
    c->retry_ms = ms;
    return KEEL_OK;
}

KEEL_API uint64_t keel_client_id(const keel_client *c)
{
    return c ? c->client_id : 0;
}

KEEL_API void keel_client_get_stats(const keel_client *c, keel_client_stats *out)
{
    if (!c || !out) return;
    *out = c->stats;
}

KEEL_API const char *keel_client_last_addr(const keel_client *c)
{
    return c ? c->last_addr : "";
}

static int is_cluster(const keel_client *c)
{
    return c->mode == KEEL_MODE_COORDINATOR || c->mode == KEEL_MODE_DAEMON;
}

/* Common entry check of every call that talks to the server: clears errmsg,
 * refuses a broken standalone client (invariant 1) and, for one-shot calls, a
 * pipeline with unread replies (invariant 2). */
static int enter(keel_client *c, int one_shot)
{
    err_clear(c);
    c->last_addr[0] = '\0';
    c->last = NULL;
    if (!is_cluster(c) && c->home.fd < 0) {
        err_set(c, "not connected: %s", c->broken.len > 1 ? c->broken.data : "no connection");
        return KEEL_ERR_IO;
    }
    if (one_shot && c->pending) {
        err_set(c, "%zu pipelined replies are unread; read them with keel_pipeline_read first",
                c->pending);
        return KEEL_ERR_INVALID;
    }
    return KEEL_OK;
}

/* Cluster mode: opens home again if a failure closed it (inv. 1). */
static int home_ready(keel_client *c)
{
    if (c->home.fd >= 0) return KEEL_OK;
    return kc_open(c, &c->home);
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

/* Retryable outcomes of one attempt (docs/libkeel.md, "Retries"). */
static int retryable(int rc)
{
    return rc == KEEL_ERR_IO || rc == KEEL_ERR_CONNECT || rc == KEEL_ERR_PROTOCOL ||
           rc == KEEL_ERR_TRYAGAIN || rc == KEEL_ERR_NOQUORUM;
}

/* An ONLINE daemon for a command any daemon serves, round robin, avoiding
 * one that failed in the last SUSPECT_MS when another will do. NULL if none
 * is known. */
static const kroute_daemon *any_daemon(keel_client *c)
{
    if (!c->have_routes) return NULL;
    const kroute_daemon *fallback = NULL;
    size_t n = c->routes.ndaemons;
    for (size_t i = 0; i < n; i++) {
        const kroute_daemon *d = &c->routes.daemons[(c->rr + i) % n];
        if (d->state != KROUTE_ONLINE) continue;
        kconn *k = pool_get(c, d->host, d->port);
        if (k && k->failed_at && now_ms() - k->failed_at < SUSPECT_MS) {
            if (!fallback) fallback = d;
            continue;
        }
        c->rr = (c->rr + i) % n;
        return d;
    }
    return fallback;
}

/* Sleeps before another attempt (never past deadline). Returns the next
 * delay. */
static int backoff(int delay, int64_t deadline)
{
    int64_t left = deadline - now_ms();
    sleep_ms(delay < left ? delay : left);
    return kroute_backoff_next(delay);
}

/* Administration in cluster mode: to the coordinators, leader first, retried
 * on connection errors, TRYAGAIN (to the leader it names, else the next
 * coordinator) and NOQUORUM within the budget. */
static int admin_call(keel_client *c, const args *a, resp_reply **r)
{
    int64_t deadline = now_ms() + c->retry_ms;
    if (!c->ncoords || !c->coords_learnt) learn_coords(c, deadline);
    if (!c->ncoords) {
        if (!c->err.len || c->err.data[0] == '\0')
            err_set(c, "no coordinator is known (the daemons' INFO lease named none)");
        return KEEL_ERR_CONNECT;
    }
    unsigned char tried[MAX_COORDS] = {0};
    int delay = KROUTE_BACKOFF_FIRST_MS;
    for (int first = 1;; first = 0) {
        size_t idx = c->cidx % c->ncoords;
        kconn *k = pool_get(c, c->coords[idx].host, c->coords[idx].port);
        if (!k) {
            err_set(c, "too many connections");
            return KEEL_ERR_NOMEM;
        }
        c->io_timeout = first ? c->timeout_ms : attempt_timeout(c, deadline);
        c->stats.attempts++;
        if (!first) c->stats.retries++;
        tried[idx] = 1;
        resp_reply *rep = NULL;
        int rc = kc_ready(c, k, 0);
        if (rc == KEEL_OK) rc = roundtrip(c, k, a->n, a->v, a->l, &rep);
        c->io_timeout = c->timeout_ms;
        if (rc == KEEL_OK && rep->type != RESP_R_ERROR) {
            *r = rep;
            return KEEL_OK;
        }
        int moved_to_leader = 0;
        if (rc == KEEL_OK) {
            err_set_server(c, rep->str, rep->len);
            rc = status_of_error(rep->str, rep->len);
            char host[KROUTE_HOST_MAX];
            int port, li;
            if (rc == KEEL_ERR_TRYAGAIN &&
                kroute_leader_hint(rep->str, rep->len, host, sizeof host, &port) == 0 &&
                (li = coord_index(c, host, port)) >= 0 && (size_t)li != idx) {
                kconn *lk = pool_get(c, host, port);
                int suspect = lk && lk->failed_at && now_ms() - lk->failed_at < SUSPECT_MS;
                if (!suspect) {
                    c->cidx = (size_t)li;
                    moved_to_leader = 1;
                }
            }
            resp_reply_free(rep);
        }
        if (!retryable(rc) || c->retry_ms == 0 || now_ms() >= deadline) return rc;
        if (!moved_to_leader) c->cidx = (idx + 1) % c->ncoords;
        if (tried[c->cidx % c->ncoords]) delay = backoff(delay, deadline);
        if (now_ms() >= deadline) return rc;
    }
}

/* Builds SEQ client_id client_seq <a> into s (which borrows a's strings). */
static int seq_wrap(const keel_client *c, const args *a, args *s, char *idbuf, char *seqbuf)
{
    snprintf(idbuf, 24, "%" PRIu64, c->client_id);
    snprintf(seqbuf, 24, "%" PRIu64, c->client_seq);
    int rc = args_push_str(s, "SEQ");
    if (rc == KEEL_OK) rc = args_push_str(s, idbuf);
    if (rc == KEEL_OK) rc = args_push_str(s, seqbuf);
    for (int i = 0; i < a->n && rc == KEEL_OK; i++)
        rc = args_push(s, a->v[i], a->l[i]);
    return rc;
}

/* True if space is in the routing table after asking a coordinator (so a
 * NOSPACE came from a daemon whose map is behind). */
static int space_known(keel_client *c, const char *space, int64_t deadline)
{
    if (refresh_routes(c, deadline, 1) != KEEL_OK) return 0;
    return kroute_space_find(&c->routes, space) != NULL;
}

/* A data command in cluster mode (docs/libkeel.md): keyed ones to the
 * partition's primary, SEARCH/COUNT to any ONLINE daemon; writes wrapped in
 * SEQ with one (client_id, client_seq) for every attempt (inv. 7); retried
 * within the budget (inv. 8). a->v[1] is the space, a->v[2] the key. */
static int data_call(keel_client *c, enum kind kind, const args *a, resp_reply **r)
{
    int64_t deadline = now_ms() + c->retry_ms;
    args s = {0};
    char idbuf[24], seqbuf[24];
    const args *send = a;
    if (kind == K_WRITE) {
        c->client_seq++;
        int brc = seq_wrap(c, a, &s, idbuf, seqbuf);
        if (brc != KEEL_OK) {
            args_free(&s);
            err_set(c, "out of memory building the request");
            return KEEL_ERR_NOMEM;
        }
        send = &s;
    }
    /* The space name as a C string, for the table (names have no NUL). */
    char space[256];
    snprintf(space, sizeof space, "%.*s", (int)(a->l[1] < 255 ? a->l[1] : 255), a->v[1]);
    int keyed = kind == K_READ || kind == K_WRITE;
    int need_refresh = !c->have_routes;
    int space_checked = 0, space_confirmed = 0, moved_free = 1;
    char to_host[KROUTE_HOST_MAX] = "";
    int to_port = 0;
    char tried[8][300];
    size_t ntried = 0;
    int delay = KROUTE_BACKOFF_FIRST_MS;
    int rc;
    for (int first = 1;; first = 0) {
        if (need_refresh) {
            refresh_routes(c, deadline, 0);
            need_refresh = 0;
        }
        /* Where to: a MOVED's address, the primary, else any daemon. */
        const char *host = NULL;
        int port = 0, redirect = 1, lagging = 0;
        uint32_t part = 0;
        if (to_port) {
            host = to_host;
            port = to_port;
        } else {
            const kroute_daemon *d = NULL;
            int lk = KROUTE_NO_SPACE;
            if (keyed && c->have_routes)
                lk = kroute_lookup(&c->routes, space, a->v[2], a->l[2], &part, &d);
            if (keyed && lk == KROUTE_NO_SPACE && c->have_routes && !space_checked) {
                /* A space added a moment ago: ask the coordinators once. */
                space_checked = 1;
                space_confirmed = space_known(c, space, deadline);
                if (space_confirmed)
                    lk = kroute_lookup(&c->routes, space, a->v[2], a->l[2], &part, &d);
            }
            if (lk != KROUTE_FOUND) d = any_daemon(c);
            if (d) {
                host = d->host;
                port = d->port;
            } else if (c->mode == KEEL_MODE_DAEMON) {
                host = c->home.host; /* no table: the daemon given forwards */
                port = c->home.port;
                redirect = 0;
            }
        }
        if (!host) {
            err_set(c, "no ONLINE daemon is known (no routing table from the coordinators or "
                       "daemons yet)");
            rc = KEEL_ERR_CONNECT;
            need_refresh = 1;
        } else {
            kconn *k = pool_get(c, host, port);
            if (!k) {
                args_free(&s);
                err_set(c, "too many connections");
                return KEEL_ERR_NOMEM;
            }
            c->io_timeout = first ? c->timeout_ms : attempt_timeout(c, deadline);
            c->stats.attempts++;
            if (!first) c->stats.retries++;
            if (ntried < 8) snprintf(tried[ntried++], sizeof tried[0], "%s", k->addr);
            resp_reply *rep = NULL;
            rc = kc_ready(c, k, redirect);
            if (rc == KEEL_OK) rc = roundtrip(c, k, send->n, send->v, send->l, &rep);
            c->io_timeout = c->timeout_ms;
            if (rc == KEEL_OK && rep->type != RESP_R_ERROR) {
                args_free(&s);
                *r = rep;
                return KEEL_OK;
            }
            to_port = 0;
            if (rc == KEEL_OK) {
                err_set_server(c, rep->str, rep->len);
                rc = status_of_error(rep->str, rep->len);
                kroute_moved m;
                if (rc == KEEL_ERR_MOVED &&
                    kroute_parse_moved(rep->str, rep->len, &m) == 0) {
                    c->stats.moved++;
                    snprintf(to_host, sizeof to_host, "%s", m.host);
                    to_port = m.port;
                    if (!c->have_routes || m.version > c->routes.version) need_refresh = 1;
                    if (c->have_routes) kroute_patch(&c->routes, space, m.partition, m.host, m.port);
                } else if (rc == KEEL_ERR_NOSPACE) {
                    /* A daemon whose map is behind (a space added a moment
                     * ago): retried once the coordinators confirm the space;
                     * nothing was applied. */
                    if (!space_confirmed && !space_checked) {
                        space_checked = 1;
                        space_confirmed = space_known(c, space, deadline);
                        err_set_server(c, rep->str, rep->len);
                    }
                    lagging = space_confirmed;
                }
                resp_reply_free(rep);
            }
            if (rc != KEEL_OK && rc != KEEL_ERR_MOVED && retryable(rc)) need_refresh = 1;
        }
        int follow = rc == KEEL_ERR_MOVED && to_port;
        if (!(retryable(rc) || follow || lagging)) break;
        if (c->retry_ms == 0 && !(follow && moved_free)) break;
        if (now_ms() >= deadline && !(follow && moved_free && c->retry_ms == 0)) break;
        if (follow) moved_free = 0;
        /* Straight on to an address not tried in this call; else wait. */
        int fresh = 0;
        if (follow) {
            char addr[300];
            if (strchr(to_host, ':'))
                snprintf(addr, sizeof addr, "[%s]:%d", to_host, to_port);
            else
                snprintf(addr, sizeof addr, "%s:%d", to_host, to_port);
            fresh = 1;
            for (size_t i = 0; i < ntried; i++)
                fresh &= strcmp(tried[i], addr) != 0;
        }
        if (!fresh) delay = backoff(delay, deadline);
        if (now_ms() >= deadline && c->retry_ms) break;
    }
    args_free(&s);
    return rc;
}

/* A typed call: sends a.v where its kind says and reads the reply. An error
 * reply becomes its status with errmsg set (and is freed); any other reply
 * is returned in *r. */
static int call(keel_client *c, enum kind kind, const args *a, resp_reply **r)
{
    resp_reply *rep = NULL;
    int rc;
    if (!is_cluster(c) || kind == K_HOME) {
        if (is_cluster(c) && (rc = home_ready(c)) != KEEL_OK) return rc;
        c->stats.attempts++;
        rc = roundtrip(c, &c->home, a->n, a->v, a->l, &rep);
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
    if (kind == K_ADMIN) return admin_call(c, a, r);
    return data_call(c, kind, a, r);
}

/* The server answered something this command never returns: replies may be
 * out of step, so the connection is failed. Frees r. */
static int bad_shape(keel_client *c, resp_reply *r, const char *cmd)
{
    static const char *const names[] = {"?", "status", "error", "integer", "bulk", "nil", "array"};
    int t = r->type >= RESP_R_STATUS && r->type <= RESP_R_ARRAY ? r->type : 0;
    kconn *k = c->last ? c->last : &c->home;
    err_set(c, "protocol error: unexpected %s reply to %s from %s", names[t], cmd, k->addr);
    resp_reply_free(r);
    return kc_fail(c, k, KEEL_ERR_PROTOCOL);
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
    rc = call(c, K_WRITE, &a, &r);
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
    rc = call(c, K_READ, &a, &r);
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
    rc = call(c, K_WRITE, &a, &r);
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
    rc = call(c, K_WRITE, &a, &r);
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
    rc = call(c, K_WRITE, &a, &r);
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
    rc = call(c, K_ANY, &a, &r);
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
    rc = call(c, K_ANY, &a, &r);
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
static int simple_status(keel_client *c, enum kind kind, const char *cmd, const char *arg,
                         const char *what)
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
    rc = call(c, kind, &a, &r);
    args_free(&a);
    if (rc != KEEL_OK) return rc;
    if (r->type != RESP_R_STATUS) return bad_shape(c, r, cmd);
    resp_reply_free(r);
    return KEEL_OK;
}

KEEL_API int keel_space_add(keel_client *c, const char *description)
{
    if (!c) return KEEL_ERR_INVALID;
    return simple_status(c, K_ADMIN, "SPACE.ADD", description, "description");
}

KEEL_API int keel_space_drop(keel_client *c, const char *name)
{
    if (!c) return KEEL_ERR_INVALID;
    return simple_status(c, K_ADMIN, "SPACE.DROP", name, "space name");
}

KEEL_API int keel_ping(keel_client *c)
{
    if (!c) return KEEL_ERR_INVALID;
    return simple_status(c, K_HOME, "PING", NULL, NULL);
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
    rc = call(c, K_ADMIN, &a, &r);
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
    int rc = call(c, K_ADMIN, a, &r);
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
    return simple_status(c, K_ADMIN, "COORD.REMOVE", num, "id");
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
    if (is_cluster(c) && (rc = home_ready(c)) != KEEL_OK) return rc;
    resp_reply *r = NULL;
    rc = roundtrip(c, &c->home, argc, argv, argvlen, &r);
    if (rc != KEEL_OK) return rc;
    return deliver(c, r, out);
}

/* ---------------------------------------------------------------------------
 * Pipeline
 * ------------------------------------------------------------------------- */

/* Cluster mode: opens the pipeline's connection if it is closed: the address
 * given (daemon mode) or an ONLINE daemon (coordinator mode). */
static int pipe_ready(keel_client *c)
{
    if (!is_cluster(c) || c->pipe->fd >= 0) return KEEL_OK;
    if (c->pipe == &c->home) return kc_open(c, &c->home);
    int64_t deadline = now_ms() + DISCOVERY_MS;
    if (!c->have_routes) refresh_routes(c, deadline, 0);
    const kroute_daemon *d = any_daemon(c);
    if (!d) {
        err_set(c, "no ONLINE daemon is known to run the pipeline on");
        return KEEL_ERR_CONNECT;
    }
    kc_free(&c->pipec);
    kc_init(&c->pipec, d->host, d->port);
    c->rr++;
    return kc_open(c, &c->pipec);
}

KEEL_API int keel_pipeline_append(keel_client *c, int argc, const char *const *argv,
                                  const size_t *argvlen)
{
    if (!c) return KEEL_ERR_INVALID;
    int rc = enter(c, 0);
    if (rc == KEEL_OK) rc = check_argv(c, argc, argv, argvlen);
    if (rc == KEEL_OK && !c->pending) rc = pipe_ready(c);
    if (rc == KEEL_OK) rc = encode(c->pipe, argc, argv, argvlen);
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
    if (c->pipe->fd < 0) return KEEL_OK; /* cluster mode, nothing queued */
    return flush_out(c, c->pipe);
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
    rc = flush_out(c, c->pipe);
    if (rc != KEEL_OK) return rc;
    resp_reply *r = NULL;
    rc = read_reply(c, c->pipe, &r);
    if (rc != KEEL_OK) return rc;
    c->pending--;
    return deliver(c, r, out);
}

KEEL_API size_t keel_pipeline_pending(const keel_client *c)
{
    return c ? c->pending : 0;
}
