/* keel.h: libkeel, the C client library of the keel key-value store.
 *
 * libkeel speaks keel's wire protocol (RESP2, docs/protocol.md) over blocking
 * TCP connections. It offers typed calls for every data and space command
 * (keel_put, keel_get, keel_search, keel_space_add, ...) and for cluster
 * administration (keel_cluster_status, keel_coordinator_remove), a generic
 * keel_command for anything else (INFO, CLUSTER.MAP, a shell), and a pipeline
 * for many requests in flight.
 *
 * One handle serves any of keel's three server kinds; keel_client_connect
 * asks the address given (INFO server) which one it is:
 *
 *   - standalone (`keel standalone`, or a server that does not say): one
 *     connection, every call goes to it, nothing is ever re-sent.
 *   - coordinator or daemon: cluster mode (docs/libkeel.md). Data calls go
 *     straight to the primary daemon of the key's partition, from a routing
 *     table (CLUSTER.ROUTES) the client caches and refreshes; administration
 *     goes to the coordinators, the leader first; failed calls are retried
 *     within a time budget (keel_client_set_retry_timeout), and every write
 *     carries (client id, sequence number) so a retried write is applied
 *     exactly once. keel_ping, keel_command and the pipeline still talk to
 *     the address given (the pipeline: see its section).
 *
 * Conventions (every function below follows them):
 *
 *   - Functions return a keel_status: KEEL_OK (0) or a negative code.
 *     keel_strerror names a code; keel_client_errmsg gives the detail of the
 *     last failed call (for a server error, the server's full error line).
 *   - Output parameters are written only when the call returns KEEL_OK
 *     (exceptions are stated at the function). On error they are untouched.
 *   - Memory handed to the caller is owned by the caller and released with the
 *     free function named at the call. Input memory is only read during the
 *     call; libkeel keeps no pointer to it afterwards.
 *   - Names (spaces, attributes) are NUL-terminated strings. Keys and values
 *     are byte strings with an explicit length and may contain NUL bytes.
 *   - A keel_client is used by one thread at a time. Distinct clients are
 *     independent and may be used from different threads.
 *   - Standalone mode: a failed connection is sticky (like a failed LMDB
 *     transaction): after KEEL_ERR_IO or KEEL_ERR_PROTOCOL the position in
 *     the reply stream is lost, so every later call on that client returns
 *     KEEL_ERR_IO at once. Close it and connect again. Server errors (the
 *     codes named after the server's error words) leave the connection
 *     usable. Cluster mode: a failed connection is closed and the next call
 *     that needs it opens a new one; the client stays usable.
 *   - Out of memory while buffering bytes to or from the network aborts the
 *     process, as everywhere in keel; KEEL_ERR_NOMEM reports a failure to
 *     allocate a result handed to the caller.
 *
 * Values: requests always carry values as text; the server parses them by the
 * attribute's type in the space's schema ("42" for an int, "2.5" for a float).
 * Replies carry int attributes as integers (reported with is_int set) and
 * string and float attributes as text.
 */
#ifndef KEEL_H
#define KEEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the exported symbols; libkeel is built with -fvisibility=hidden. */
#define KEEL_API __attribute__((visibility("default")))

#define KEEL_VERSION_MAJOR 0
#define KEEL_VERSION_MINOR 1
#define KEEL_VERSION_PATCH 0

/* Default client port of a keel daemon or `keel standalone`. */
#define KEEL_DEFAULT_PORT 2012
/* Default client port of a keel coordinator. */
#define KEEL_DEFAULT_COORDINATOR_PORT 1982

/* ---------------------------------------------------------------------------
 * Status codes
 *
 * One closed set. Codes are never renumbered; new ones are added at the end.
 * Every code except CONNECT, IO, PROTOCOL, NOMEM and INVALID is a server
 * error code word (docs/protocol.md, "Errors"); an error word this version
 * does not know maps to KEEL_ERR_SERVER.
 * ------------------------------------------------------------------------- */
typedef enum keel_status {
    KEEL_OK = 0,
    KEEL_ERR_CONNECT = -1,     /* could not resolve or connect to the server */
    KEEL_ERR_IO = -2,          /* send/receive failed, timed out, or the server
                                  closed the connection; the client is broken */
    KEEL_ERR_PROTOCOL = -3,    /* the server sent bytes that are not RESP, or a
                                  reply of the wrong shape for the command (so
                                  replies may be out of step); the client is
                                  broken */
    KEEL_ERR_SERVER = -4,      /* -ERR (bad request) or an unknown error word */
    KEEL_ERR_NOSPACE = -5,     /* -NOSPACE: no such space */
    KEEL_ERR_NOATTR = -6,      /* -NOATTR: no such attribute */
    KEEL_ERR_WRONGTYPE = -7,   /* -WRONGTYPE: a value does not parse as its type */
    KEEL_ERR_CMPFAIL = -8,     /* -CMPFAIL: a CPUT condition did not hold */
    KEEL_ERR_NOTFOUND = -9,    /* -NOTFOUND: CPUT/ADD on a missing object */
    KEEL_ERR_OVERFLOW = -10,   /* -OVERFLOW: ADD would overflow 64 bits */
    KEEL_ERR_IOERR = -11,      /* -IOERR: the server's storage failed */
    KEEL_ERR_NOMEM = -12,      /* libkeel could not allocate a result */
    KEEL_ERR_INVALID = -13,    /* bad arguments from the caller, or a call made
                                  in the wrong state (see the pipeline) */
    KEEL_ERR_TRYAGAIN = -14,   /* -TRYAGAIN: transient; retry the request */
    KEEL_ERR_MOVED = -15,      /* -MOVED: the partition lives elsewhere */
    KEEL_ERR_NOQUORUM = -16,   /* -NOQUORUM: the coordinators have no majority */
    KEEL_ERR_UNAVAILABLE = -17 /* -UNAVAILABLE: no live replica */
} keel_status;

/* A static English description of a status ("no such space", ...). Never
 * NULL; an unknown value gives "unknown status". Do not free. */
KEEL_API const char *keel_strerror(int status);

/* ---------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------- */

/* Opaque handle: the connection to the address given plus, in cluster mode,
 * connections to daemons and coordinators opened when first needed, the
 * cached routing table and the exactly-once write counter. */
typedef struct keel_client keel_client;

/* Connects to host:port. host is a name or a numeric IPv4/IPv6 address,
 * resolved with getaddrinfo; every address is tried in turn. timeout_ms
 * bounds the connect and, later, every wait for the server to accept or
 * deliver bytes (a call fails with KEEL_ERR_IO once the server has been
 * silent that long); 0 means wait forever.
 *
 * Then asks the server INFO server. A reply with "mode:coordinator" or
 * "mode:daemon" puts the client in cluster mode (keel_client_mode); anything
 * else (mode:standalone, an error reply, a server that is not keel) leaves it
 * in standalone mode. In cluster mode it also learns, best effort and for at
 * most about 2 seconds, the coordinators (CLUSTER.STATUS STALE from a
 * coordinator, INFO lease from a daemon) and the routing table
 * (CLUSTER.ROUTES); if that fails the first call tries again. The client id
 * for exactly-once writes is drawn here (getrandom, 63 bits, never 0).
 *
 * On KEEL_OK *out is a new connected client.
 *
 * On KEEL_ERR_CONNECT *out is still set, to a client that is not connected:
 * keel_client_errmsg(*out) says why ("cannot connect to 10.0.0.1:2012:
 * Connection refused") and every other call on it fails with KEEL_ERR_IO.
 * (This is the one exception to "outputs are untouched on error", as with
 * LMDB's mdb_env_open.) On KEEL_ERR_INVALID (NULL host or out, port outside
 * 1..65535, negative timeout) or KEEL_ERR_NOMEM, *out is set to NULL when out
 * is not NULL.
 *
 * So the caller always closes *out with keel_client_close, which accepts
 * NULL. */
KEEL_API int keel_client_connect(const char *host, int port, int timeout_ms, keel_client **out);

/* Closes the connection and frees the client and everything it owns. Every
 * pointer obtained from keel_client_errmsg becomes invalid. Results already
 * handed out (objects, replies, strings) stay valid: the caller owns them.
 * NULL is a no-op. */
KEEL_API void keel_client_close(keel_client *c);

/* What the address given turned out to be. */
typedef enum keel_mode {
    KEEL_MODE_NONE = 0,       /* not connected (a failed keel_client_connect) */
    KEEL_MODE_STANDALONE = 1, /* one server; no routing, no retries */
    KEEL_MODE_COORDINATOR = 2, /* a coordinator: cluster mode */
    KEEL_MODE_DAEMON = 3       /* a daemon: cluster mode */
} keel_mode;

/* c's mode (KEEL_MODE_NONE for NULL). */
KEEL_API keel_mode keel_client_mode(const keel_client *c);

/* Default bound on the retries of one call in cluster mode, milliseconds. */
#define KEEL_DEFAULT_RETRY_TIMEOUT_MS 15000

/* Cluster mode: a call that fails with a retryable error is tried again until
 * ms milliseconds have passed since it started (no attempt starts later, no
 * wait ends later; an attempt gets the time left, at least 100 ms, as its
 * timeout, bounded by the connect timeout). 0 disables retries: each call
 * makes one attempt (a -MOVED is still followed once, as it is a routing
 * answer, not a failure). Default KEEL_DEFAULT_RETRY_TIMEOUT_MS. No effect in
 * standalone mode. KEEL_ERR_INVALID for NULL c or ms < 0. */
KEEL_API int keel_client_set_retry_timeout(keel_client *c, int ms);

/* The random client id of c's exactly-once writes (cluster mode; 0 for NULL
 * c). Writes are sent as SEQ client_id client_seq <write>; client_seq starts
 * at 1 and grows by one per write call (keel_put, keel_del, keel_cput,
 * keel_add), and every retry of a call carries the same pair. */
KEEL_API uint64_t keel_client_id(const keel_client *c);

/* Counters of what c did, for tests, benchmarks and debugging. They only
 * grow; new fields are added at the end. */
typedef struct keel_client_stats {
    uint64_t attempts;        /* requests sent by typed calls, retries included
                                 (route refreshes and discovery not counted) */
    uint64_t retries;         /* attempts after the first of a call */
    uint64_t moved;           /* -MOVED replies followed */
    uint64_t route_refreshes; /* routing tables received (CLUSTER.ROUTES) */
    uint64_t connects;        /* connections opened, the first included */
    uint64_t map_version;     /* version of the cached routing table; 0: none */
} keel_client_stats;

/* Copies c's counters into *out. Both must not be NULL. */
KEEL_API void keel_client_get_stats(const keel_client *c, keel_client_stats *out);

/* "host:port" of the server that answered c's last typed call or
 * keel_command (after retries: the one that gave the final answer); "" if
 * none did. Owned by c, valid until the next call on c. Lets a caller see
 * where a call was routed. */
KEEL_API const char *keel_client_last_addr(const keel_client *c);

/* The detail of the last failed call on c: for a server error, the server's
 * whole error line without the leading '-' (e.g. "NOSPACE no such space 'x'");
 * for a local failure, a sentence naming it. "" after a call that
 * succeeded, and "" for a NULL c. Owned by c; valid until the next call on c
 * or keel_client_close (so read it after the call, not in the same
 * expression). */
KEEL_API const char *keel_client_errmsg(const keel_client *c);

/* ---------------------------------------------------------------------------
 * Objects
 * ------------------------------------------------------------------------- */

/* One attribute to write (or to compare, for keel_cput's conditions). The
 * caller owns the memory; libkeel only reads it during the call. */
typedef struct keel_attr {
    const char *name;  /* NUL-terminated attribute name */
    const char *value; /* value as text, value_len bytes (NUL not needed) */
    size_t value_len;
} keel_attr;

/* One attribute of an object read from the server. */
typedef struct keel_object_attr {
    const char *name;  /* NUL-terminated */
    const char *value; /* value_len bytes plus a terminating NUL (values may
                          contain NUL bytes; trust value_len). For an int
                          attribute, its decimal text. */
    size_t value_len;
    int is_int;      /* 1 if the server sent an integer (an int attribute) */
    int64_t integer; /* the value, when is_int */
} keel_object_attr;

/* An object read by keel_get or keel_search. The object, its attribute array
 * and every string it points to are one allocation owned by the caller, freed
 * with keel_object_free (or keel_objects_free for a search result). Nothing in
 * it depends on the client: it outlives keel_client_close. */
typedef struct keel_object {
    const char *key_name; /* the space's key attribute name (keel_search);
                             NULL for keel_get, whose reply omits it */
    const char *key;      /* key_len bytes plus a terminating NUL */
    size_t key_len;
    size_t nattrs;
    keel_object_attr *attrs; /* nattrs entries in schema order, key excluded */
} keel_object;

/* Frees an object from keel_get. NULL is a no-op. */
KEEL_API void keel_object_free(keel_object *o);
/* Frees a keel_search result: each of the count objects, then the array.
 * NULL is a no-op. */
KEEL_API void keel_objects_free(keel_object **objs, size_t count);
/* Finds attribute name in o; NULL if absent. The pointer lives as long as o. */
KEEL_API const keel_object_attr *keel_object_find(const keel_object *o, const char *name);

/* ---------------------------------------------------------------------------
 * Data operations
 *
 * space is the space name. key/keylen is the object's key. All of them fail
 * with KEEL_ERR_INVALID while pipelined replies are still unread (see the
 * pipeline section).
 *
 * Standalone mode: one round trip each, never re-sent.
 *
 * Cluster mode (docs/libkeel.md):
 *   - keel_put, keel_get, keel_del, keel_cput and keel_add go straight to the
 *     daemon leading the key's partition (XXH64(key) % partitions, primary
 *     from the cached CLUSTER.ROUTES table), on a connection that asked
 *     CLIENT.REDIRECT ON, so a daemon that is not the primary answers -MOVED
 *     instead of forwarding; keel_search and keel_count go to any ONLINE
 *     daemon, which fans out.
 *   - Writes are sent as SEQ client_id client_seq <write>: one new client_seq
 *     per call, the same pair on every retry, so the daemons apply a write
 *     once however often it is retried (across a failover too) and answer a
 *     retry with the first result (an ADD's one sum, a DEL's "existed").
 *   - A call is retried until the retry budget runs out
 *     (keel_client_set_retry_timeout, default 15 s) after: a connection
 *     error (before or after sending, timeouts included), -TRYAGAIN,
 *     -NOQUORUM (all three refresh the table first, and wait 50 ms doubling
 *     up to 500 ms between attempts), -MOVED (to the daemon it names, at once
 *     when the call has not tried it yet), and -NOSPACE while the coordinators know the space (a
 *     daemon whose map is behind). -UNAVAILABLE and every other error are
 *     returned at once. When the budget runs out the last failure is
 *     returned; a write may then have been applied or not, and calling again
 *     is a new write. -ERR stale request (a later write of this client id was
 *     accepted) is returned as KEEL_ERR_SERVER.
 * ------------------------------------------------------------------------- */

/* PUT: creates the object or updates the n named attributes (n may be 0). */
KEEL_API int keel_put(keel_client *c, const char *space, const char *key, size_t keylen,
                      const keel_attr *attrs, size_t n);

/* GET: on KEEL_OK *out is the object, or NULL if the object does not exist.
 * The caller frees a non-NULL *out with keel_object_free. */
KEEL_API int keel_get(keel_client *c, const char *space, const char *key, size_t keylen,
                      keel_object **out);

/* DEL: removes the object. If existed is not NULL it is set to 1 if the object
 * existed, 0 if not (both are KEEL_OK). */
KEEL_API int keel_del(keel_client *c, const char *space, const char *key, size_t keylen,
                      int *existed);

/* CPUT: writes the nset attributes of set only if every one of the ncond
 * attributes of cond equals the object's value. Returns KEEL_ERR_CMPFAIL if a
 * condition failed, KEEL_ERR_NOTFOUND if the object does not exist. ncond and
 * nset may be 0. */
KEEL_API int keel_cput(keel_client *c, const char *space, const char *key, size_t keylen,
                       const keel_attr *cond, size_t ncond, const keel_attr *set, size_t nset);

/* ADD: atomically adds delta to int attribute attr. If newval is not NULL it
 * receives the value after the addition. KEEL_ERR_NOTFOUND if the object does
 * not exist, KEEL_ERR_OVERFLOW if the result does not fit 64 bits,
 * KEEL_ERR_WRONGTYPE if attr is not an int. */
KEEL_API int keel_add(keel_client *c, const char *space, const char *key, size_t keylen,
                      const char *attr, int64_t delta, int64_t *newval);

/* Comparison operators for search predicates. */
typedef enum keel_op {
    KEEL_OP_EQ = 0, /* =  */
    KEEL_OP_LT,     /* <  */
    KEEL_OP_LE,     /* <= */
    KEEL_OP_GT,     /* >  */
    KEEL_OP_GE      /* >= */
} keel_op;

/* One search predicate: attribute `name` `op` value. The key name may be used
 * as name (compared as a string). */
typedef struct keel_pred {
    const char *name; /* NUL-terminated attribute name */
    keel_op op;
    const char *value; /* value as text, value_len bytes */
    size_t value_len;
} keel_pred;

/* Parses "=", "<", "<=", ">", ">=" into *op. Returns KEEL_OK or
 * KEEL_ERR_INVALID. */
KEEL_API int keel_op_parse(const char *text, keel_op *op);
/* The operator's text ("<="); "?" for a value outside the enum. Static. */
KEEL_API const char *keel_op_str(keel_op op);

/* SEARCH: the objects matching all n predicates (n = 0: every object), at most
 * limit of them (0: no limit), in unspecified order. On KEEL_OK *objs is an
 * array of *count objects (NULL when *count is 0), each with key_name set; the
 * caller frees it with keel_objects_free(*objs, *count). */
KEEL_API int keel_search(keel_client *c, const char *space, const keel_pred *preds, size_t n,
                         uint64_t limit, keel_object ***objs, size_t *count);

/* COUNT: the number of objects matching all n predicates, in *count. */
KEEL_API int keel_count(keel_client *c, const char *space, const keel_pred *preds, size_t n,
                        uint64_t *count);

/* ---------------------------------------------------------------------------
 * Spaces
 * ------------------------------------------------------------------------- */

/* SPACE.ADD: creates a space from its description in the space language
 * (docs/protocol.md); a bad description is KEEL_ERR_SERVER with the line and
 * word in keel_client_errmsg. */
KEEL_API int keel_space_add(keel_client *c, const char *description);

/* SPACE.DROP: removes space name and all its objects; KEEL_ERR_NOSPACE if it
 * does not exist. */
KEEL_API int keel_space_drop(keel_client *c, const char *name);

/* SPACE.LIST: on KEEL_OK *names is an array of *n NUL-terminated names in
 * creation order (NULL when *n is 0). The caller frees it with
 * keel_strings_free(*names, *n). */
KEEL_API int keel_space_list(keel_client *c, char ***names, size_t *n);

/* Frees an array of n strings from keel_space_list, and the strings. NULL is
 * a no-op. */
KEEL_API void keel_strings_free(char **strings, size_t n);

/* SPACE.DESCRIBE: on KEEL_OK *text is the canonical description, one clause
 * per line, NUL-terminated. The caller frees it with keel_free. */
KEEL_API int keel_space_describe(keel_client *c, const char *name, char **text);

/* Frees a single string handed out by libkeel (keel_space_describe,
 * keel_cluster_status). NULL is a no-op. */
KEEL_API void keel_free(void *p);

/* PING: KEEL_OK if the server answered with a status reply (+PONG). Always
 * the address given, once (cluster mode reopens its connection if needed). */
KEEL_API int keel_ping(keel_client *c);

/* ---------------------------------------------------------------------------
 * Cluster administration (sent to a coordinator, docs/coordinator.md)
 *
 * Standalone mode: sent to the server given, once. While coordinators elect a
 * leader these calls fail with KEEL_ERR_TRYAGAIN; keel_client_errmsg then
 * holds the coordinator's line, which names the leader's client address when
 * it is known ("TRYAGAIN leader is 10.0.0.2:1982 (unreachable from here)").
 *
 * Cluster mode: keel_space_add, keel_space_drop, keel_space_list,
 * keel_space_describe, keel_cluster_status and keel_coordinator_remove go to
 * the coordinators (learnt at connect: CLUSTER.STATUS from a coordinator,
 * INFO lease from a daemon), the leader first, and are retried within the
 * retry budget after connection errors, -TRYAGAIN (to the leader the line
 * names, else the next coordinator) and -NOQUORUM. So a space added through a
 * daemon's address works. A keel_space_add or keel_space_drop whose first
 * attempt was applied but whose answer was lost answers its retry with
 * KEEL_ERR_SERVER (the space exists) or KEEL_ERR_NOSPACE.
 * ------------------------------------------------------------------------- */

/* CLUSTER.STATUS: on KEEL_OK *json is the cluster's status, a JSON document
 * (its fields are listed in docs/coordinator.md), NUL-terminated; the caller
 * frees it with keel_free. stale = 0 asks for a linearizable answer (the
 * leader confirms it still leads before answering); stale != 0 sends the
 * STALE argument, so any coordinator answers from its own, possibly stale,
 * copy of the map. A server that does not serve CLUSTER.STATUS (a standalone
 * server) answers KEEL_ERR_SERVER. */
KEEL_API int keel_cluster_status(keel_client *c, int stale, char **json);

/* COORD.REMOVE: removes coordinator id from the coordinator cluster; KEEL_OK
 * once the removal is committed. KEEL_ERR_SERVER if id is unknown or if
 * removing it would leave fewer reachable voters than a majority of the
 * remaining ones (the coordinator's reason is in keel_client_errmsg). */
KEEL_API int keel_coordinator_remove(keel_client *c, uint64_t id);

/* ---------------------------------------------------------------------------
 * Generic commands and replies
 * ------------------------------------------------------------------------- */

typedef enum keel_reply_type {
    KEEL_REPLY_STATUS = 1, /* +text: str */
    KEEL_REPLY_ERROR,      /* -text: str (e.g. "NOSPACE no such space 'x'") */
    KEEL_REPLY_INT,        /* :n: integer */
    KEEL_REPLY_BULK,       /* $n: str, len */
    KEEL_REPLY_NIL,        /* $-1 or *-1 */
    KEEL_REPLY_ARRAY       /* *n: elements, element */
} keel_reply_type;

/* One reply value, a tree for arrays. The whole tree is owned by the caller
 * and freed with keel_reply_free on its root; never free a child alone. */
typedef struct keel_reply {
    keel_reply_type type;
    int64_t integer; /* KEEL_REPLY_INT */
    char *str;       /* STATUS, ERROR, BULK: len bytes plus a NUL;
                        NULL for the other types */
    size_t len;
    size_t elements;             /* KEEL_REPLY_ARRAY: number of children */
    struct keel_reply **element; /* KEEL_REPLY_ARRAY: the children */
} keel_reply;

/* Frees a reply tree. NULL is a no-op. */
KEEL_API void keel_reply_free(keel_reply *r);

/* KEEL_OK for a reply that is not an error; for an error reply, the status
 * its code word maps to (KEEL_ERR_SERVER for -ERR or an unknown word). */
KEEL_API int keel_reply_status(const keel_reply *r);

/* Sends one command of argc arguments and reads its reply. argv[i] has
 * argvlen[i] bytes; argvlen NULL means every argv[i] is NUL-terminated.
 * argc must be at least 1.
 *
 * Returns KEEL_OK whenever a complete reply arrived, including an error
 * reply: *out is then the reply (the caller frees it with keel_reply_free) and,
 * for an error reply, keel_client_errmsg holds its text and keel_reply_status
 * tells its code. Any other status means no reply (*out untouched).
 *
 * The command goes to the address given, as it is, once, in every mode: no
 * routing, no SEQ, no retries (a daemon forwards a data command itself). In
 * cluster mode a failed connection is reopened by the next call. */
KEEL_API int keel_command(keel_client *c, int argc, const char *const *argv, const size_t *argvlen,
                          keel_reply **out);

/* ---------------------------------------------------------------------------
 * Pipeline
 *
 * Queue requests with keel_pipeline_append (nothing is sent), send them all
 * with keel_pipeline_flush, then read exactly one reply per request, in order,
 * with keel_pipeline_read. While any appended request has not had its reply
 * read, the one-shot calls above (keel_put, keel_command, ...) return
 * KEEL_ERR_INVALID. Flushing reads replies that are already arriving into the
 * client's buffer while it writes, so a long pipeline cannot deadlock against
 * a server that stops reading until its replies are consumed.
 *
 * Cluster mode: a pipeline runs on one daemon connection without
 * CLIENT.REDIRECT, so that daemon forwards each request to its partition's
 * primary: the address given when it is a daemon, else an ONLINE daemon from
 * the routing table (chosen when the first request of a pipeline is
 * appended). Requests go as they are (no SEQ) and nothing is retried or
 * re-routed: a connection failure returns KEEL_ERR_IO and drops every reply
 * still unread (keel_pipeline_pending becomes 0; which of those requests were
 * applied is unknown), and the next append opens a new connection. Use the
 * typed calls when writes must be retried safely.
 * ------------------------------------------------------------------------- */

/* Queues one request (arguments as for keel_command). The arguments are
 * copied: the caller may reuse them at once. */
KEEL_API int keel_pipeline_append(keel_client *c, int argc, const char *const *argv,
                                  const size_t *argvlen);

/* Sends every queued request. KEEL_OK with nothing queued. */
KEEL_API int keel_pipeline_flush(keel_client *c);

/* Reads the next reply of the pipeline (flushing first if requests are still
 * queued). Like keel_command, returns KEEL_OK with *out set for any reply,
 * error replies included. KEEL_ERR_INVALID if every appended request has had
 * its reply read. */
KEEL_API int keel_pipeline_read(keel_client *c, keel_reply **out);

/* Number of appended requests whose replies have not been read yet. */
KEEL_API size_t keel_pipeline_pending(const keel_client *c);

#ifdef __cplusplus
}
#endif

#endif
