/* net: RESP connections with in-order deferred replies (see net.h).
 *
 * Each connection has an input buffer parsed in place by resp.c, an output
 * buffer of replies ready to send, and a queue of reply slots used only while
 * some reply is deferred: slots are flushed into the output from the head as
 * soon as the head is done. Output is written at the end of each loop turn
 * (uv_prepare): uv_try_write first, uv_write for what the kernel did not take.
 */
#include "net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define READ_CHUNK (64 * 1024)

struct net_reply {
    net_reply *next;
    net_conn *c;
    buf data;
    bool done;
    bool close_after;
    size_t counted; /* bytes of data counted in c->slot_bytes */
};

struct net_conn {
    uv_tcp_t tcp;
    net_server *srv;
    net_conn *prev, *next; /* all open connections */
    net_conn *next_dirty;
    bool dirty;
    buf in;
    resp_parser parser;
    buf out;  /* replies ready to send */
    buf wbuf; /* bytes of the uv_write in progress */
    uv_write_t wreq;
    net_reply *head, *tail; /* reply slots, oldest first */
    unsigned outstanding;   /* slots not yet done */
    size_t slot_bytes;      /* reply bytes held in slots (counted when final) */
    net_reply *uncounted;   /* the newest net_reply_now slot: its bytes come after */
    void *data;
    unsigned flags;
    bool writing;
    bool reading;
    bool throttled; /* too much output waiting: neither reading nor dispatching */
    bool resuming;  /* on the server's resume list */
    net_conn *next_resume;
    bool close_after_flush;
    bool closing;
    bool handle_closed;
    char peer[64];
};

struct net_server {
    net_config cfg;
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_prepare_t prepare;
    uv_idle_t resume; /* runs buffered requests of unthrottled connections */
    net_conn *resumers;
    net_conn *conns;
    net_conn *dirty;
    net_stats stats;
    bool quiesced;
    int open_handles;
};

/* ---- connection lifetime ---------------------------------------------------- */

static void mark_dirty(net_conn *c)
{
    if (c->dirty || c->closing) return;
    c->dirty = true;
    c->next_dirty = c->srv->dirty;
    c->srv->dirty = c;
}

static void maybe_free(net_conn *c)
{
    if (!c->handle_closed || c->outstanding || c->dirty || c->writing || c->resuming) return;
    while (c->head) {
        net_reply *r = c->head;
        c->head = r->next;
        buf_free(&r->data);
        free(r);
    }
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->wbuf);
    resp_parser_free(&c->parser);
    free(c);
}

static void on_closed(uv_handle_t *h)
{
    net_conn *c = h->data;
    c->handle_closed = true;
    maybe_free(c);
}

static void conn_close(net_conn *c)
{
    if (c->closing) return;
    c->closing = true;
    net_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->stats.connected--;
    if (s->cfg.on_close) s->cfg.on_close(s->cfg.arg, c);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* ---- replies ------------------------------------------------------------------ */

static net_reply *slot_new(net_conn *c, bool done)
{
    net_reply *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->c = c;
    r->done = done;
    buf_init(&r->data);
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    if (!done) c->outstanding++;
    return r;
}

/* Counts the bytes of a slot whose data is final. */
static void count_slot(net_conn *c, net_reply *r)
{
    if (c->uncounted == r) c->uncounted = NULL;
    c->slot_bytes += r->data.len - r->counted;
    r->counted = r->data.len;
}

buf *net_reply_now(net_conn *c)
{
    if (!c->head) {
        mark_dirty(c);
        return &c->out;
    }
    /* the caller appends the reply after this returns: the slot's size is
     * counted at the next net_reply_now or when the request is done */
    if (c->uncounted) count_slot(c, c->uncounted);
    net_reply *r = slot_new(c, true);
    c->uncounted = r;
    return &r->data;
}

net_reply *net_reply_defer(net_conn *c)
{
    return slot_new(c, false);
}

buf *net_reply_buf(net_reply *r)
{
    return &r->data;
}

/* Moves every done slot at the head into the output. */
static void drain_slots(net_conn *c)
{
    while (c->head && c->head->done) {
        net_reply *r = c->head;
        c->head = r->next;
        if (!c->head) c->tail = NULL;
        if (c->uncounted == r) c->uncounted = NULL;
        c->slot_bytes -= r->counted;
        if (!c->closing) {
            buf_append(&c->out, r->data.data, r->data.len);
            if (r->close_after) c->close_after_flush = true;
        }
        buf_free(&r->data);
        free(r);
    }
    mark_dirty(c);
}

void net_reply_done(net_reply *r)
{
    net_conn *c = r->c;
    r->done = true;
    c->outstanding--;
    count_slot(c, r);
    drain_slots(c);
}

bool net_conn_busy(const net_conn *c)
{
    return c->outstanding > 0;
}

bool net_reply_is_next(const net_reply *r)
{
    /* done slots are drained from the head at once, so the head is the
     * oldest reply not yet done */
    return r->c->head == r;
}

void net_conn_close_after_replies(net_conn *c)
{
    if (c->tail)
        c->tail->close_after = true;
    else
        c->close_after_flush = true;
    mark_dirty(c);
}

void net_conn_set_data(net_conn *c, void *data)
{
    c->data = data;
}

void *net_conn_data(const net_conn *c)
{
    return c->data;
}

void net_conn_set_flags(net_conn *c, unsigned flags)
{
    c->flags = flags;
}

unsigned net_conn_flags(const net_conn *c)
{
    return c->flags;
}

const char *net_conn_peer(net_conn *c)
{
    if (!c->peer[0]) {
        struct sockaddr_storage ss;
        int len = sizeof ss;
        char host[48] = "?";
        int port = 0;
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
            if (ss.ss_family == AF_INET) {
                uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
                port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
                port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            }
        }
        snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
    }
    return c->peer;
}

/* ---- reading -------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

static void stop_reading(net_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void start_reading(net_conn *c)
{
    if (c->reading || c->closing || c->close_after_flush || c->srv->quiesced) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
    else
        conn_close(c);
}

/* Reply bytes waiting for the client: O(1), so a long pipeline is linear. */
static size_t queued_output(net_conn *c)
{
    if (c->uncounted) count_slot(c, c->uncounted);
    return c->out.len + c->wbuf.len + c->slot_bytes;
}

static void process(net_conn *c)
{
    net_server *s = c->srv;
    while (!c->close_after_flush && !c->closing && !s->quiesced) {
        if (queued_output(c) > NET_OUT_HIGH_WATER) {
            /* The client is not reading: stop taking requests (invariant 4);
             * flush() resumes once the output drained. */
            c->throttled = true;
            stop_reading(c);
            mark_dirty(c);
            break;
        }
        resp_request req;
        int rc = resp_parse(&c->parser, c->in.data, c->in.len, &req);
        if (rc == RESP_MORE) break;
        if (rc == RESP_ERROR) {
            log_info("closing client %s: %s", net_conn_peer(c), c->parser.err);
            resp_add_error(net_reply_now(c), c->parser.err);
            net_conn_close_after_replies(c);
            break;
        }
        s->stats.commands++;
        s->cfg.dispatch(s->cfg.arg, c, (int)req.argc, req.argv, req.argvlen);
    }
    size_t n = resp_parser_consumed(&c->parser);
    if (n) {
        buf_consume(&c->in, n);
        resp_parser_shift(&c->parser, n);
    }
    if (c->in.len == 0 && c->in.cap > 4 * READ_CHUNK) buf_free(&c->in);
    if (c->close_after_flush || (c->tail && c->tail->close_after)) stop_reading(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    net_conn *c = h->data;
    buf_reserve(&c->in, READ_CHUNK);
    *b = uv_buf_init(c->in.data + c->in.len, (unsigned)(c->in.cap - c->in.len));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    net_conn *c = st->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->in.len += (size_t)nread;
    process(c);
}

/* ---- writing -------------------------------------------------------------------- */

static void on_written(uv_write_t *req, int status)
{
    net_conn *c = req->data;
    c->writing = false;
    buf_reset(&c->wbuf);
    if (status < 0)
        conn_close(c);
    else
        mark_dirty(c);
    maybe_free(c);
}

static void on_resume(uv_idle_t *h)
{
    net_server *s = h->data;
    uv_idle_stop(h);
    while (s->resumers) {
        net_conn *c = s->resumers;
        s->resumers = c->next_resume;
        c->resuming = false;
        if (!c->closing) process(c);
        maybe_free(c);
    }
}

static void flush(net_conn *c)
{
    if (c->closing) return;
    if (!c->writing && c->out.len) {
        uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == UV_EAGAIN) n = 0;
        if (n < 0) {
            conn_close(c);
            return;
        }
        buf_consume(&c->out, (size_t)n);
        if (c->out.len) {
            buf t = c->wbuf;
            c->wbuf = c->out;
            c->out = t;
            buf_reset(&c->out);
            b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
            c->wreq.data = c;
            if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written)) {
                conn_close(c);
                return;
            }
            c->writing = true;
        }
    }
    size_t queued = queued_output(c);
    if (!c->throttled && queued > NET_OUT_HIGH_WATER) {
        stop_reading(c);
        c->throttled = true;
    } else if (c->throttled && queued < NET_OUT_HIGH_WATER / 2) {
        c->throttled = false;
        start_reading(c);
        if (c->in.len && !c->resuming) {
            /* Requests already buffered run from the idle handle, before
             * this turn's prepare callbacks, so work they queue is submitted
             * before the loop blocks. */
            c->resuming = true;
            c->next_resume = c->srv->resumers;
            c->srv->resumers = c;
            uv_idle_start(&c->srv->resume, on_resume);
        }
    }
    if (c->close_after_flush && !c->writing && !c->out.len) conn_close(c);
}

static void on_prepare(uv_prepare_t *h)
{
    net_server *s = h->data;
    while (s->dirty) {
        net_conn *c = s->dirty;
        s->dirty = c->next_dirty;
        c->dirty = false;
        flush(c);
        maybe_free(c);
    }
}

/* ---- accepting ------------------------------------------------------------------- */

static void on_connection(uv_stream_t *l, int status)
{
    net_server *s = l->data;
    if (status < 0) {
        log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    net_conn *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    resp_parser_init(&c->parser, &s->cfg.limits);
    if (uv_accept(l, (uv_stream_t *)&c->tcp)) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->stats.connected++;
    s->stats.accepted++;
    if (s->stats.connected > s->cfg.max_conns || s->quiesced) {
        s->stats.rejected++;
        if (s->quiesced)
            resp_add_error(&c->out, "ERR server is shutting down");
        else
            resp_add_errorf(&c->out, "ERR max_connections (%zu) reached", s->cfg.max_conns);
        c->close_after_flush = true;
        mark_dirty(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    start_reading(c);
}

/* ---- the server -------------------------------------------------------------------- */

/* The server is freed when its last handle (listener, prepare) has closed. */
static void on_server_handle_closed(uv_handle_t *h)
{
    net_server *s = h->data;
    if (--s->open_handles == 0) free(s);
}

int net_server_start(net_server **out, uv_loop_t *loop, const net_config *cfg, char *err,
                     size_t errlen)
{
    struct sockaddr_storage addr;
    if (uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)&addr) &&
        uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)&addr)) {
        snprintf(err, errlen, "invalid listen address '%s' (give an IPv4 or IPv6 address)",
                 cfg->host);
        return -1;
    }
    net_server *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->cfg = *cfg;
    s->loop = loop;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    int rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&addr, 0);
    if (!rc) rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", cfg->host, cfg->port, uv_strerror(rc));
        s->open_handles = 1;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
        return -1;
    }
    s->open_handles = 3; /* listener, prepare, resume */
    uv_prepare_init(loop, &s->prepare);
    s->prepare.data = s;
    uv_prepare_start(&s->prepare, on_prepare);
    uv_idle_init(loop, &s->resume);
    s->resume.data = s;
    *out = s;
    return 0;
}

void net_server_quiesce(net_server *s)
{
    if (s->quiesced) return;
    s->quiesced = true;
    uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    for (net_conn *c = s->conns; c; c = c->next)
        stop_reading(c);
}

bool net_server_idle(const net_server *s)
{
    for (net_conn *c = s->conns; c; c = c->next)
        if (c->outstanding || c->writing || c->out.len || c->head) return false;
    return true;
}

void net_server_close(net_server *s)
{
    net_server_quiesce(s);
    while (s->dirty) {
        net_conn *c = s->dirty;
        s->dirty = c->next_dirty;
        c->dirty = false;
    }
    while (s->resumers) {
        net_conn *c = s->resumers;
        s->resumers = c->next_resume;
        c->resuming = false;
    }
    while (s->conns)
        conn_close(s->conns);
    uv_prepare_stop(&s->prepare);
    uv_close((uv_handle_t *)&s->prepare, on_server_handle_closed);
    uv_idle_stop(&s->resume);
    uv_close((uv_handle_t *)&s->resume, on_server_handle_closed);
}

void net_server_stats_get(const net_server *s, net_stats *st)
{
    *st = s->stats;
}
