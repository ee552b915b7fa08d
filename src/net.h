/* net: a RESP server on a libuv loop — connections, request parsing, and
 * replies kept in request order even when some are answered later.
 *
 * Every keel server (standalone, coordinator, daemon) is a net_server with a
 * dispatch function. The dispatcher answers a request either at once
 * (net_reply_now) or later (net_reply_defer, then net_reply_done when the
 * answer is known: after a group commit, a Raft commit, a forwarded request).
 *
 * Invariants:
 *   1. Replies leave a connection in request order: a reply written with
 *      net_reply_now while deferred replies are ahead of it waits behind them.
 *   2. A net_reply stays valid until net_reply_done, even if its connection
 *      closes meanwhile (the reply is then dropped); the connection's memory
 *      is freed only once its handle closed and none of its replies is
 *      outstanding.
 *   3. Nothing a client sends can crash the server: a protocol error or a
 *      broken limit gets one "-ERR ..." naming it and closes only that
 *      connection.
 *   4. A client that does not read its replies stops being read from once
 *      NET_OUT_HIGH_WATER bytes wait for it (bounded memory per client).
 */
#ifndef KEEL_NET_H
#define KEEL_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "buf.h"
#include "resp.h"

#define NET_OUT_HIGH_WATER (32u * 1024 * 1024)

typedef struct net_server net_server;
typedef struct net_conn net_conn;
typedef struct net_reply net_reply;

/* Called for every complete request; argv point into the connection's input
 * buffer and are valid only during the call. */
typedef void (*net_dispatch_fn)(void *arg, net_conn *c, int argc, char **argv, size_t *argvlen);
/* Called once when a connection closes (may be NULL). */
typedef void (*net_close_fn)(void *arg, net_conn *c);

typedef struct net_config {
    const char *host;
    int port;
    resp_limits limits;
    size_t max_conns;
    net_dispatch_fn dispatch;
    net_close_fn on_close;
    void *arg;
} net_config;

typedef struct net_stats {
    size_t connected;
    unsigned long long accepted;
    unsigned long long rejected;
    unsigned long long commands;
} net_stats;

/* Binds and listens. On error returns -1 with a message in err. */
int net_server_start(net_server **out, uv_loop_t *loop, const net_config *cfg, char *err,
                     size_t errlen);
/* Stops accepting and stops reading requests; replies still go out. */
void net_server_quiesce(net_server *s);
/* True when no connection has replies outstanding or unsent. */
bool net_server_idle(const net_server *s);
/* Closes every connection and the server's handles; s is freed once they
 * closed (the loop must run). */
void net_server_close(net_server *s);
void net_server_stats_get(const net_server *s, net_stats *st);

/* The buffer for the next reply of c, in order (see invariant 1). */
buf *net_reply_now(net_conn *c);
/* Reserves c's next reply for later. */
net_reply *net_reply_defer(net_conn *c);
/* Where a deferred reply's bytes go before net_reply_done. */
buf *net_reply_buf(net_reply *r);
/* The deferred reply is complete; r is consumed. */
void net_reply_done(net_reply *r);
/* True if c has deferred replies not yet done. */
bool net_conn_busy(const net_conn *c);
/* True when every reply requested before r on its connection has been
 * done: r is the oldest reply its client still waits for. */
bool net_reply_is_next(const net_reply *r);
/* Closes c once every reply before this call has been sent. */
void net_conn_close_after_replies(net_conn *c);
/* Per-connection user data. */
void net_conn_set_data(net_conn *c, void *data);
void *net_conn_data(const net_conn *c);
/* Per-connection option bits, defined by the server that owns the
 * connection (0 when accepted). */
void net_conn_set_flags(net_conn *c, unsigned flags);
unsigned net_conn_flags(const net_conn *c);
/* "host:port" of the peer, for logs. */
const char *net_conn_peer(net_conn *c);

#endif
