/* rclient: an outgoing RESP connection on a libuv loop, for server-to-server
 * traffic (Raft messages between coordinators, forwarded requests, daemon
 * heartbeats).
 *
 * Requests are sent in order over one TCP connection, opened on demand. A
 * request either expects a reply (a callback, called exactly once: with the
 * reply, or with NULL and a negative libuv status when the connection failed,
 * timed out, or was closed) or is one-way (no reply will come; used for Raft
 * messages, which the receiver never answers).
 *
 * Invariants:
 *   1. Callbacks run in request order and exactly once each, never from
 *      inside rclient_send (always from the loop).
 *   2. A request that is not answered within timeout_ms fails, and with it
 *      the connection and everything queued on it (a hung peer never blocks
 *      its caller for longer than the timeout).
 *   3. After a failed connection attempt the next one waits at least
 *      RCLIENT_RETRY_MS; one-way messages sent meanwhile are dropped, requests
 *      with callbacks fail with UV_ECONNREFUSED-like statuses at once.
 *   4. Memory is bounded: one-way messages beyond RCLIENT_MAX_QUEUED bytes of
 *      unsent data are dropped.
 */
#ifndef KEEL_RCLIENT_H
#define KEEL_RCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "resp.h"

#define RCLIENT_RETRY_MS 100
#define RCLIENT_MAX_QUEUED (64u * 1024 * 1024)

typedef struct rclient rclient;
/* reply is NULL when status < 0; it is valid only during the call. */
typedef void (*rclient_cb)(void *arg, const resp_reply *reply, int status);

/* Creates a client for host:port (IPv4/IPv6 literal). Nothing is connected
 * until the first send. bind_host (may be NULL) is the local address to bind
 * outgoing connections to. */
rclient *rclient_new(uv_loop_t *loop, const char *host, int port, const char *bind_host,
                     unsigned timeout_ms);
/* Sends a request; cb NULL means one-way. */
void rclient_send(rclient *c, int argc, const char *const *argv, const size_t *argvlen,
                  rclient_cb cb, void *arg);
/* Sends already-encoded request bytes (one request). */
void rclient_send_raw(rclient *c, const void *data, size_t len, rclient_cb cb, void *arg);
bool rclient_connected(const rclient *c);
/* True if the last connection attempt was refused (nothing listened there)
 * and none has succeeded since. */
bool rclient_refused(const rclient *c);
/* Fails everything pending (their callbacks run with UV_ECANCELED before this
 * returns), closes, and frees c once its handles and requests are gone. */
void rclient_close(rclient *c);
const char *rclient_addr(const rclient *c);

#endif
