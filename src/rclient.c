/* rclient: outgoing RESP connections (see rclient.h).
 *
 * States: IDLE (no socket) -> CONNECTING -> OPEN -> (failure) IDLE.
 * Requests wait in `pending` (sent, awaiting a reply) after `queue` (bytes not
 * yet written). Callbacks are delivered from a zero-delay timer so that
 * rclient_send never calls back into its caller.
 */
#include "rclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"

enum { IDLE, CONNECTING, OPEN };

typedef struct req {
    struct req *next;
    rclient_cb cb;
    void *arg;
    uint64_t sent_ms; /* loop time when queued */
    resp_reply *reply;
    int status;
} req;

struct rclient {
    uv_loop_t *loop;
    char host[64];
    int port;
    char bind_host[64];
    char addr[80];
    unsigned timeout_ms;
    int state;
    uv_tcp_t *tcp; /* allocated per connection; freed in its close callback */
    buf queue;     /* encoded requests not yet handed to uv_write */
    bool writing;  /* a write on the current connection is in progress */
    buf in;
    req *pending, *pending_tail; /* awaiting replies, in order */
    req *done, *done_tail;       /* completed, callbacks not yet run */
    uv_timer_t timer;            /* timeouts and deferred callbacks */
    uint64_t retry_at;
    bool closing;
    bool refused; /* the last connection attempt was refused */
    int handles;
};

static void on_timer(uv_timer_t *t);

rclient *rclient_new(uv_loop_t *loop, const char *host, int port, const char *bind_host,
                     unsigned timeout_ms)
{
    rclient *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->loop = loop;
    snprintf(c->host, sizeof c->host, "%s", host);
    c->port = port;
    if (bind_host) snprintf(c->bind_host, sizeof c->bind_host, "%s", bind_host);
    snprintf(c->addr, sizeof c->addr, "%s:%d", host, port);
    c->timeout_ms = timeout_ms ? timeout_ms : 5000;
    buf_init(&c->queue);
    buf_init(&c->in);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles = 1;
    return c;
}

const char *rclient_addr(const rclient *c)
{
    return c->addr;
}

bool rclient_connected(const rclient *c)
{
    return c->state == OPEN;
}

bool rclient_refused(const rclient *c)
{
    return c->refused;
}

static void arm_timer(rclient *c, uint64_t ms)
{
    if (c->closing && c->handles == 0) return;
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void complete(rclient *c, req *r)
{
    r->next = NULL;
    if (c->done_tail)
        c->done_tail->next = r;
    else
        c->done = r;
    c->done_tail = r;
    arm_timer(c, 0);
}

static void free_tcp(uv_handle_t *h)
{
    rclient *c = h->data;
    free(h);
    if (--c->handles == 0 && c->closing) free(c);
}

/* Drops the connection: every pending request fails with status. */
static void fail(rclient *c, int status)
{
    if (c->tcp) {
        uv_close((uv_handle_t *)c->tcp, free_tcp);
        c->tcp = NULL;
    }
    c->state = IDLE;
    c->writing = false;
    buf_reset(&c->queue);
    buf_reset(&c->in);
    while (c->pending) {
        req *r = c->pending;
        c->pending = r->next;
        r->status = status;
        complete(c, r);
    }
    c->pending_tail = NULL;
    c->retry_at = uv_now(c->loop) + RCLIENT_RETRY_MS;
}

/* A write or connect request owns its bytes and remembers its connection,
 * so callbacks of a dropped connection are recognised and ignored. */
typedef struct wreq {
    uv_write_t w;
    rclient *c;
    uv_tcp_t *tcp;
    buf data;
} wreq;

typedef struct creq {
    uv_connect_t cr;
    rclient *c;
} creq;

static void on_written(uv_write_t *w, int status);

static void start_write(rclient *c)
{
    if (c->state != OPEN || c->writing || c->queue.len == 0) return;
    wreq *q = calloc(1, sizeof *q);
    if (!q) abort();
    q->c = c;
    q->tcp = c->tcp;
    q->data = c->queue;
    buf_init(&c->queue);
    q->w.data = q;
    uv_buf_t b = uv_buf_init(q->data.data, (unsigned)q->data.len);
    c->handles++; /* keeps c alive until the callback */
    if (uv_write(&q->w, (uv_stream_t *)c->tcp, &b, 1, on_written)) {
        c->handles--;
        buf_free(&q->data);
        free(q);
        fail(c, UV_EPIPE);
        return;
    }
    c->writing = true;
}

static void on_written(uv_write_t *w, int status)
{
    wreq *q = w->data;
    rclient *c = q->c;
    bool current = q->tcp == c->tcp;
    buf_free(&q->data);
    free(q);
    c->handles--;
    if (!current) {
        if (c->handles == 0 && c->closing) free(c);
        return; /* the connection was already dropped */
    }
    c->writing = false;
    if (status < 0) {
        fail(c, status);
        return;
    }
    start_write(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    rclient *c = h->data;
    buf_reserve(&c->in, 64 * 1024);
    *b = uv_buf_init(c->in.data + c->in.len, (unsigned)(c->in.cap - c->in.len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    rclient *c = s->data;
    if (n < 0) {
        fail(c, (int)n);
        return;
    }
    c->in.len += (size_t)n;
    size_t off = 0;
    while (off < c->in.len) {
        size_t used;
        resp_reply *rep;
        int rc = resp_reply_parse(c->in.data + off, c->in.len - off, &used, &rep);
        if (rc == RESP_MORE) break;
        if (rc == RESP_ERROR || !c->pending) {
            /* garbage, or a reply nobody asked for: the peer is broken */
            if (rc == RESP_OK) resp_reply_free(rep);
            log_warn("dropping connection to %s: unexpected reply bytes", c->addr);
            fail(c, UV_EPROTO);
            return;
        }
        off += used;
        req *r = c->pending;
        c->pending = r->next;
        if (!c->pending) c->pending_tail = NULL;
        r->reply = rep;
        r->status = 0;
        complete(c, r);
    }
    buf_consume(&c->in, off);
}

static void on_connect(uv_connect_t *cr, int status)
{
    creq *q = cr->data;
    rclient *c = q->c;
    bool current = cr->handle == (uv_stream_t *)c->tcp && c->state == CONNECTING;
    free(q);
    c->handles--;
    if (!current) {
        if (c->handles == 0 && c->closing) free(c);
        return;
    }
    if (status < 0) {
        c->refused = status == UV_ECONNREFUSED;
        fail(c, status);
        return;
    }
    c->refused = false;
    c->state = OPEN;
    uv_tcp_nodelay(c->tcp, 1);
    if (uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read)) {
        fail(c, UV_EIO);
        return;
    }
    start_write(c);
}

static int start_connect(rclient *c)
{
    struct sockaddr_storage sa;
    if (uv_ip4_addr(c->host, c->port, (struct sockaddr_in *)&sa) &&
        uv_ip6_addr(c->host, c->port, (struct sockaddr_in6 *)&sa))
        return UV_EINVAL;
    c->tcp = malloc(sizeof *c->tcp);
    if (!c->tcp) abort();
    uv_tcp_init(c->loop, c->tcp);
    c->tcp->data = c;
    c->handles++;
    if (c->bind_host[0]) {
        struct sockaddr_storage la;
        if (uv_ip4_addr(c->bind_host, 0, (struct sockaddr_in *)&la) == 0 ||
            uv_ip6_addr(c->bind_host, 0, (struct sockaddr_in6 *)&la) == 0)
            uv_tcp_bind(c->tcp, (struct sockaddr *)&la, 0);
    }
    creq *q = calloc(1, sizeof *q);
    if (!q) abort();
    q->c = c;
    q->cr.data = q;
    int rc = uv_tcp_connect(&q->cr, c->tcp, (struct sockaddr *)&sa, on_connect);
    if (rc) {
        free(q);
        uv_close((uv_handle_t *)c->tcp, free_tcp);
        c->tcp = NULL;
        return rc;
    }
    c->handles++; /* the connect request */
    c->state = CONNECTING;
    return 0;
}

void rclient_send_raw(rclient *c, const void *data, size_t len, rclient_cb cb, void *arg)
{
    req *r = NULL;
    if (cb) {
        r = calloc(1, sizeof *r);
        if (!r) abort();
        r->cb = cb;
        r->arg = arg;
        r->sent_ms = uv_now(c->loop);
    }
    if (c->closing) {
        if (r) {
            r->status = UV_ECANCELED;
            complete(c, r);
        }
        return;
    }
    if (c->state == IDLE) {
        int rc = UV_ECONNREFUSED; /* still backing off after a failure (invariant 3) */
        if (uv_now(c->loop) >= c->retry_at && (rc = start_connect(c)) != 0)
            c->retry_at = uv_now(c->loop) + RCLIENT_RETRY_MS;
        if (rc) {
            if (r) {
                r->status = rc;
                complete(c, r);
            }
            return;
        }
    }
    if (!cb && c->queue.len + len > RCLIENT_MAX_QUEUED) return; /* one-way: drop */
    buf_append(&c->queue, data, len);
    if (r) {
        if (c->pending_tail)
            c->pending_tail->next = r;
        else
            c->pending = r;
        c->pending_tail = r;
        arm_timer(c, c->timeout_ms);
    }
    start_write(c);
}

void rclient_send(rclient *c, int argc, const char *const *argv, const size_t *argvlen,
                  rclient_cb cb, void *arg)
{
    buf b;
    buf_init(&b);
    resp_add_command(&b, argc, argv, argvlen);
    rclient_send_raw(c, b.data, b.len, cb, arg);
    buf_free(&b);
}

static void on_timer(uv_timer_t *t)
{
    rclient *c = t->data;
    /* Timeouts first: the oldest pending request decides. */
    if (c->pending && uv_now(c->loop) - c->pending->sent_ms >= c->timeout_ms) {
        log_warn("request to %s timed out after %u ms; dropping the connection", c->addr,
                 c->timeout_ms);
        fail(c, UV_ETIMEDOUT);
    }
    while (c->done) {
        req *r = c->done;
        c->done = r->next;
        if (!c->done) c->done_tail = NULL;
        r->cb(r->arg, r->reply, r->status);
        if (r->reply) resp_reply_free(r->reply);
        free(r);
    }
    if (c->pending && !c->closing) {
        uint64_t age = uv_now(c->loop) - c->pending->sent_ms;
        arm_timer(c, age >= c->timeout_ms ? 1 : c->timeout_ms - age);
    }
}

static void free_timer(uv_handle_t *h)
{
    rclient *c = h->data;
    if (--c->handles == 0) free(c);
}

void rclient_close(rclient *c)
{
    c->closing = true;
    fail(c, UV_ECANCELED);
    /* deliver every callback now, then close the timer */
    uv_timer_stop(&c->timer);
    while (c->done) {
        req *r = c->done;
        c->done = r->next;
        r->cb(r->arg, r->reply, r->status);
        if (r->reply) resp_reply_free(r->reply);
        free(r);
    }
    c->done_tail = NULL;
    buf_free(&c->queue);
    buf_free(&c->in);
    uv_close((uv_handle_t *)&c->timer, free_timer);
}
