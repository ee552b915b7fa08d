/*
 * bench/redis_wait.c — a closed-loop RESP load generator for
 * bench/replication_compare.sh: N logical clients, one request outstanding on
 * each (pipeline 1), random keys, fixed-size values; prints throughput and
 * p50/p99 latency. Plain sockets and one epoll loop, like redis-benchmark,
 * so it needs no client library (only the xxhash header, for -R).
 *
 * Why it exists: redis-benchmark cannot send SET followed by `WAIT 1 0` as one
 * request, which is what a Redis client must do to know its write reached a
 * replica; keel's PUT on a replicated space is acknowledged only once every
 * replica has it. Modes:
 *
 *   setwait  SET key value, then WAIT 1 0, written together in one send; the
 *            request completes when the WAIT reply arrives, which must be an
 *            integer >= NREPLICAS (-w, default 1)
 *   set      SET key value
 *   put      PUT SPACE key v value (keel)
 *   get      GET key (Redis) — or, with -s SPACE, GET SPACE key (keel); a
 *            reply must not be nil (the keys are preloaded)
 *
 * Keys are key:%012d with the number uniform in [0, KEYSPACE) (the names
 * redis-benchmark's key:__rand_int__ gives with -r KEYSPACE); with -S the
 * numbers are 0, 1, ..., N-1 in order instead (for preloading). The value is
 * DATA bytes of 'x' (what redis-benchmark -d sends).
 *
 * Where requests go, one of:
 *   -p PORT[,PORT...]  each logical client has one connection, to HOST (-h)
 *            and port i mod nports for client i, so a keel run can address
 *            every daemon (a daemon forwards a key it does not lead to the
 *            partition's primary: one extra hop).
 *   -R HOST:PORT  routed, as a smart keel client does (put and get with -s
 *            only): CLUSTER.ROUTES is fetched once from HOST:PORT (a
 *            coordinator or a daemon) before the load starts; every logical
 *            client opens one connection to each daemon that is the primary
 *            of some partition of SPACE (the routes must name one, ONLINE,
 *            for every partition), sends CLIENT.REDIRECT ON on each and waits
 *            for +OK, and then sends each request to the connection of the
 *            primary of its key's partition, xxh64(key, seed 0) % partitions.
 *            A daemon that does not lead the partition answers -MOVED, which
 *            counts as an error like any other, so a run with errors=0 sent
 *            every request to the primary (in the daemons' maps).
 *   The set-up (routes, connects, CLIENT.REDIRECT) uses blocking sockets with
 *   a 10 s send and receive timeout each.
 *
 * Output, one line on stdout (the script parses it):
 *   requests=N errors=E seconds=S rps=R p50_ms=A p99_ms=B max_ms=C
 * with -R followed by
 *   routed=1 map_version=V per_daemon=ID:COUNT[,ID:COUNT...]
 * (the map version routed by and the requests sent to each daemon), and up
 * to 5 of the error replies on stderr.
 *
 * Invariants:
 *   1. At most one request is outstanding per logical client (whatever
 *      connection it went to); a request's latency runs from just before its
 *      first byte is written to the moment its last expected reply is fully
 *      parsed. Bytes on a connection with no request outstanding end the run
 *      with status 1.
 *   2. Every reply is parsed completely (nested arrays, bulk strings split
 *      over reads); bytes that are not RESP end the run with status 1.
 *   3. The run is bounded: after TIMEOUT seconds (-T) of load it stops with
 *      status 1; the set-up before it is bounded by the socket timeouts.
 *   4. Exit status 0 only if every request completed; an error reply
 *      (including -MOVED) counts in errors= and makes the status 3, so the
 *      script can refuse the run.
 *   5. With -R the routing table is the one fetched at start and is never
 *      refreshed: a change of primary during the run shows up as errors
 *      instead of being absorbed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

enum mode { M_SETWAIT, M_SET, M_PUT, M_GET };

typedef struct client client;

typedef struct {        /* one socket */
    int fd;
    client *cl;
    char *in;           /* unparsed reply bytes */
    size_t inlen, incap;
} conn;

struct client {         /* one logical client: one request outstanding at most */
    uint64_t rng;
    conn *links;        /* g_nlinks connections: one per routed daemon, or one */
    conn *cur;          /* where the current request went */
    char *out;          /* the request being written */
    size_t outlen, outoff;
    int want;           /* replies still expected for the current request */
    bool busy;
    uint64_t t0;        /* ns, when the current request was started */
};

static enum mode g_mode;
static const char *g_space;
static char *g_value;
static size_t g_data = 100;
static long g_keyspace = 100000;
static long g_total;
static long g_issued, g_done, g_errors;
static bool g_seq;
static long g_replicas = 1;
static uint32_t *g_lat; /* microseconds, one per completed request */
static int g_shown;

/* Routing (-R): g_nlinks connections per client; link l goes to daemon
 * g_link_id[l] at g_link_host[l]:g_link_port[l]; partition p's requests go to
 * link g_part_link[p]. Without -R, g_nlinks is 1 and g_part_link is NULL. */
static int g_nlinks = 1;
static uint64_t *g_link_id;
static char **g_link_host;
static long *g_link_port;
static long *g_link_sent;
static uint32_t g_partitions;
static int *g_part_link;
static long g_map_version;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "redis_wait: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) die("malloc");
    return p;
}

/* Appends one bulk string to buf at *len (buf is large enough). */
static void bulk(char *buf, size_t *len, const char *s, size_t n)
{
    *len += (size_t)sprintf(buf + *len, "$%zu\r\n", n);
    memcpy(buf + *len, s, n);
    *len += n;
    memcpy(buf + *len, "\r\n", 2);
    *len += 2;
}

/* Builds the next request into c->out, picks the connection it goes to, and
 * sets how many replies it needs. */
static void build(client *c)
{
    char key[32];
    long k = g_seq ? g_issued : (long)(xorshift(&c->rng) % (uint64_t)g_keyspace);
    int kn = snprintf(key, sizeof key, "key:%012ld", k);
    size_t n = 0;
    switch (g_mode) {
    case M_SETWAIT:
    case M_SET:
        n += (size_t)sprintf(c->out, "*3\r\n");
        bulk(c->out, &n, "SET", 3);
        bulk(c->out, &n, key, (size_t)kn);
        bulk(c->out, &n, g_value, g_data);
        c->want = 1;
        if (g_mode == M_SETWAIT) {
            n += (size_t)sprintf(c->out + n, "*3\r\n");
            bulk(c->out, &n, "WAIT", 4);
            char r[24];
            int rn = snprintf(r, sizeof r, "%ld", g_replicas);
            bulk(c->out, &n, r, (size_t)rn);
            bulk(c->out, &n, "0", 1);
            c->want = 2;
        }
        break;
    case M_PUT:
        n += (size_t)sprintf(c->out, "*5\r\n");
        bulk(c->out, &n, "PUT", 3);
        bulk(c->out, &n, g_space, strlen(g_space));
        bulk(c->out, &n, key, (size_t)kn);
        bulk(c->out, &n, "v", 1);
        bulk(c->out, &n, g_value, g_data);
        c->want = 1;
        break;
    case M_GET:
        if (g_space) {
            n += (size_t)sprintf(c->out, "*3\r\n");
            bulk(c->out, &n, "GET", 3);
            bulk(c->out, &n, g_space, strlen(g_space));
        } else {
            n += (size_t)sprintf(c->out, "*2\r\n");
            bulk(c->out, &n, "GET", 3);
        }
        bulk(c->out, &n, key, (size_t)kn);
        c->want = 1;
        break;
    }
    int link = 0;
    if (g_part_link) link = g_part_link[XXH64(key, (size_t)kn, 0) % g_partitions];
    c->cur = &c->links[link];
    g_link_sent[link]++;
    c->outlen = n;
    c->outoff = 0;
    g_issued++;
}

/*
 * Parses one RESP2 reply at p[0..n). Returns its length, 0 if incomplete,
 * -1 if malformed. Sets *kind to the type byte, *ival for ':' replies, and
 * *nil for a nil bulk string or array.
 */
static long parse(const char *p, size_t n, char *kind, long *ival, bool *nil)
{
    const char *e = memchr(p, '\n', n);
    if (!e) return n > 4096 ? -1 : 0;
    if (e == p || e[-1] != '\r') return -1;
    size_t hl = (size_t)(e - p) + 1;
    char *end;
    *kind = p[0];
    *nil = false;
    switch (p[0]) {
    case '+':
    case '-':
        return (long)hl;
    case ':':
        *ival = strtol(p + 1, &end, 10);
        return end == e - 1 ? (long)hl : -1;
    case '$': {
        long len = strtol(p + 1, &end, 10);
        if (end != e - 1 || len < -1) return -1;
        if (len == -1) {
            *nil = true;
            return (long)hl;
        }
        if (n < hl + (size_t)len + 2) return 0;
        if (p[hl + (size_t)len] != '\r' || p[hl + (size_t)len + 1] != '\n') return -1;
        return (long)(hl + (size_t)len + 2);
    }
    case '*': {
        long cnt = strtol(p + 1, &end, 10);
        if (end != e - 1 || cnt < -1 || cnt > 1000000) return -1;
        if (cnt == -1) {
            *nil = true;
            return (long)hl;
        }
        size_t off = hl;
        for (long i = 0; i < cnt; i++) {
            char k2;
            long iv2;
            bool nil2;
            long r = parse(p + off, n - off, &k2, &iv2, &nil2);
            if (r <= 0) return r;
            off += (size_t)r;
        }
        return (long)off;
    }
    default:
        return -1;
    }
}

static void report_error(const char *p, long len, const char *why)
{
    g_errors++;
    if (g_shown < 5) {
        g_shown++;
        int show = len > 200 ? 200 : (int)len;
        while (show > 0 && (p[show - 1] == '\r' || p[show - 1] == '\n')) show--;
        fprintf(stderr, "redis_wait: %s: %.*s\n", why, show, p);
    }
}

/* Writes what is left of the request; false on a socket error. */
static bool flush_out(client *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = write(c->cur->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) return true;
            return false;
        }
        c->outoff += (size_t)w;
    }
    return true;
}

static void start(client *c)
{
    build(c);
    c->busy = true;
    c->t0 = now_ns();
    if (!flush_out(c)) die("write");
}

/* Consumes complete replies on k; finishes its client's request when all
 * have arrived (the next request may go to another connection). */
static void consume(conn *k)
{
    client *c = k->cl;
    size_t off = 0;
    while (c->busy && c->cur == k && off < k->inlen) {
        char kind;
        long iv = 0;
        bool nil;
        long r = parse(k->in + off, k->inlen - off, &kind, &iv, &nil);
        if (r == 0) break;
        if (r < 0) {
            fprintf(stderr, "redis_wait: malformed reply from the server\n");
            exit(1);
        }
        const char *p = k->in + off;
        off += (size_t)r;
        c->want--;
        if (kind == '-') report_error(p, r, "error reply");
        else if (g_mode == M_GET && nil) report_error(p, r, "nil reply to GET (key not preloaded?)");
        else if (g_mode == M_SETWAIT && c->want == 0 && (kind != ':' || iv < g_replicas))
            report_error(p, r, "WAIT did not report enough replicas");
        if (c->want == 0) {
            uint64_t us = (now_ns() - c->t0) / 1000;
            g_lat[g_done++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
            c->busy = false;
            if (g_issued < g_total) start(c);
        }
    }
    if (k->inlen > off && !(c->busy && c->cur == k)) {
        fprintf(stderr, "redis_wait: unexpected bytes from the server\n");
        exit(1);
    }
    memmove(k->in, k->in + off, k->inlen - off);
    k->inlen -= off;
}

/* ---- set-up: blocking sockets ---------------------------------------------- */

/* A connected, blocking TCP socket to host:port with TCP_NODELAY and 10 s
 * send and receive timeouts; exits on failure. */
static int dial(const char *host, long port)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%ld", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *a;
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc) {
        fprintf(stderr, "redis_wait: cannot resolve '%s': %s\n", host, gai_strerror(rc));
        exit(2);
    }
    int fd = -1;
    for (a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (!connect(fd, a->ai_addr, a->ai_addrlen)) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "redis_wait: connect to %s:%ld: %s\n", host, port, strerror(errno));
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Sends req on the blocking fd and reads one complete reply into k->in
 * (k->inlen is its length); exits on a socket error or malformed bytes. */
static void blocking_call(conn *k, const char *req, const char *what)
{
    size_t len = strlen(req), off = 0;
    while (off < len) {
        ssize_t w = write(k->fd, req + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) die(what);
        off += (size_t)w;
    }
    k->inlen = 0;
    for (;;) {
        char kind;
        long iv;
        bool nil;
        long r = k->inlen ? parse(k->in, k->inlen, &kind, &iv, &nil) : 0;
        if (r < 0) {
            fprintf(stderr, "redis_wait: %s: malformed reply\n", what);
            exit(1);
        }
        if (r > 0) {
            if ((size_t)r != k->inlen) {
                fprintf(stderr, "redis_wait: %s: unexpected bytes after the reply\n", what);
                exit(1);
            }
            return;
        }
        if (k->inlen == k->incap) {
            k->incap *= 2;
            k->in = realloc(k->in, k->incap);
            if (!k->in) die("realloc");
        }
        ssize_t n = read(k->fd, k->in + k->inlen, k->incap - k->inlen);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die(what);
        if (n == 0) {
            fprintf(stderr, "redis_wait: %s: the server closed the connection\n", what);
            exit(1);
        }
        k->inlen += (size_t)n;
    }
}

/* Reads one element of a reply that parse() accepted: its type byte; for
 * ':', '*' and '$' the number in *num; for '$' and '+' the string in *s and
 * *slen. Advances *p past the header (and a bulk string's payload), so an
 * array's elements follow. */
static char rd(const char **p, long *num, const char **s, size_t *slen)
{
    const char *q = *p, *e = strchr(q, '\n');
    char kind = q[0];
    *num = 0;
    *s = q + 1;
    *slen = (size_t)(e - 1 - (q + 1));
    if (kind == ':' || kind == '*' || kind == '$') *num = strtol(q + 1, NULL, 10);
    *p = e + 1;
    if (kind == '$' && *num >= 0) {
        *s = *p;
        *slen = (size_t)*num;
        *p += *num + 2;
    }
    return kind;
}

static _Noreturn void bad_routes(const char *why)
{
    fprintf(stderr, "redis_wait: CLUSTER.ROUTES: %s\n", why);
    exit(1);
}

/* Fetches CLUSTER.ROUTES from addr (HOST:PORT) and fills the g_link_* and
 * g_part_link tables for g_space. */
static void load_routes(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1]) {
        fprintf(stderr, "redis_wait: -R wants HOST:PORT, got '%s'\n", addr);
        exit(2);
    }
    char *host = strndup(addr, (size_t)(colon - addr));
    if (!host) die("strndup");
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535) {
        fprintf(stderr, "redis_wait: bad port in -R '%s'\n", addr);
        exit(2);
    }
    conn k = {.fd = dial(host, port), .incap = 65536};
    k.in = xmalloc(k.incap);
    blocking_call(&k, "*1\r\n$14\r\nCLUSTER.ROUTES\r\n", "CLUSTER.ROUTES");
    close(k.fd);
    free(host);
    if (k.in[0] == '-') {
        report_error(k.in, (long)k.inlen, "CLUSTER.ROUTES answered");
        exit(1);
    }
    if (k.inlen == k.incap) {
        k.in = realloc(k.in, k.inlen + 1);
        if (!k.in) die("realloc");
    }
    k.in[k.inlen] = '\0'; /* every header line ends in '\n' before it: rd()'s strchr */

    const char *p = k.in, *s;
    size_t sl;
    long v, nd;
    if (rd(&p, &v, &s, &sl) != '*' || v != 3) bad_routes("not a 3-element array");
    if (rd(&p, &g_map_version, &s, &sl) != ':') bad_routes("no version");
    if (rd(&p, &nd, &s, &sl) != '*' || nd < 1) bad_routes("no daemons");
    uint64_t *ids = xmalloc(sizeof *ids * (size_t)nd);
    char **hosts = xmalloc(sizeof *hosts * (size_t)nd);
    long *ports = xmalloc(sizeof *ports * (size_t)nd);
    bool *online = xmalloc(sizeof *online * (size_t)nd);
    for (long i = 0; i < nd; i++) {
        long id = 0;
        char t;
        if (rd(&p, &v, &s, &sl) != '*' || v != 4 || rd(&p, &id, &s, &sl) != ':' || id < 1)
            bad_routes("a daemon entry is not *4 with :id first");
        ids[i] = (uint64_t)id;
        if (rd(&p, &v, &s, &sl) != '$' || v < 1) bad_routes("a daemon has no host");
        hosts[i] = strndup(s, sl);
        if (!hosts[i]) die("strndup");
        if (rd(&p, &ports[i], &s, &sl) != ':' || ports[i] < 1 || ports[i] > 65535)
            bad_routes("a daemon has no port");
        t = rd(&p, &v, &s, &sl);
        if (t != '$' && t != '+') bad_routes("a daemon has no state");
        online[i] = sl == 6 && !memcmp(s, "ONLINE", 6);
    }
    long ns;
    bool found = false;
    if (rd(&p, &ns, &s, &sl) != '*') bad_routes("no spaces");
    for (long i = 0; i < ns; i++) {
        long np = 0, nprim = 0;
        if (rd(&p, &v, &s, &sl) != '*' || v != 3 || rd(&p, &v, &s, &sl) != '$')
            bad_routes("a space entry is not *3 with $name first");
        bool mine = strlen(g_space) == sl && !memcmp(s, g_space, sl);
        if (rd(&p, &np, &s, &sl) != ':' || np < 1 || np > UINT32_MAX ||
            rd(&p, &nprim, &s, &sl) != '*' || nprim != np)
            bad_routes("a space has no partition count or primaries");
        if (mine) {
            found = true;
            g_partitions = (uint32_t)np;
            g_part_link = xmalloc(sizeof *g_part_link * (size_t)np);
            g_link_id = xmalloc(sizeof *g_link_id * (size_t)nd);
            g_link_host = xmalloc(sizeof *g_link_host * (size_t)nd);
            g_link_port = xmalloc(sizeof *g_link_port * (size_t)nd);
            g_nlinks = 0;
        }
        for (long j = 0; j < np; j++) {
            long prim = 0;
            if (rd(&p, &prim, &s, &sl) != ':' || prim < 0) bad_routes("a primary is not an id");
            if (!mine) continue;
            if (prim == 0) {
                fprintf(stderr, "redis_wait: partition %ld of %s has no live replica\n", j,
                        g_space);
                exit(1);
            }
            long d = 0;
            while (d < nd && ids[d] != (uint64_t)prim) d++;
            if (d == nd || !online[d]) {
                fprintf(stderr, "redis_wait: partition %ld of %s: primary %ld is %s\n", j, g_space,
                        prim, d == nd ? "not in the daemon list" : "not ONLINE");
                exit(1);
            }
            int l = 0;
            while (l < g_nlinks && g_link_id[l] != (uint64_t)prim) l++;
            if (l == g_nlinks) {
                g_link_id[l] = (uint64_t)prim;
                g_link_host[l] = hosts[d];
                g_link_port[l] = ports[d];
                g_nlinks++;
            }
            g_part_link[j] = l;
        }
    }
    if (!found) {
        fprintf(stderr, "redis_wait: CLUSTER.ROUTES has no space '%s'\n", g_space);
        exit(1);
    }
    /* hosts[] the links use stay allocated for the whole run */
    free(ids);
    free(ports);
    free(online);
    free(hosts);
    free(k.in);
}

/* ---- main ------------------------------------------------------------------ */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(long n, double p)
{
    long k = (long)((double)n * p / 100.0 + 0.999999);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return g_lat[k - 1] / 1000.0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: redis_wait -m setwait|set|put|get (-p PORT[,PORT...] [-h HOST] | -R HOST:PORT)\n"
            "                  [-c CLIENTS] [-n REQUESTS] [-r KEYSPACE] [-d DATA] [-s SPACE]\n"
            "                  [-w REPLICAS] [-S] [-T TIMEOUT_S]\n"
            "  put needs -s SPACE; get with -s sends GET SPACE key (keel)\n"
            "  -p  client i connects to HOST (default 127.0.0.1) at port i mod nports\n"
            "  -R  routed (put, get -s): CLUSTER.ROUTES from HOST:PORT (coordinator or\n"
            "      daemon), each request to its partition's primary with CLIENT.REDIRECT ON\n"
            "  -S  sequential keys 0..REQUESTS-1 (preload) instead of random ones\n");
}

static long num(const char *s, const char *what, long lo)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo) {
        fprintf(stderr, "redis_wait: bad %s '%s'\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    const char *host = NULL, *ports = NULL, *mode = NULL, *routes = NULL;
    long conns = 50, timeout_s = 600;
    g_total = 100000;
    int opt;
    while ((opt = getopt(argc, argv, "h:p:R:c:n:r:d:s:m:w:ST:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': ports = optarg; break;
        case 'R': routes = optarg; break;
        case 'c': conns = num(optarg, "-c", 1); break;
        case 'n': g_total = num(optarg, "-n", 1); break;
        case 'r': g_keyspace = num(optarg, "-r", 1); break;
        case 'd': g_data = (size_t)num(optarg, "-d", 1); break;
        case 's': g_space = optarg; break;
        case 'm': mode = optarg; break;
        case 'w': g_replicas = num(optarg, "-w", 0); break;
        case 'S': g_seq = true; break;
        case 'T': timeout_s = num(optarg, "-T", 1); break;
        default: usage(stderr); return 2;
        }
    }
    if (!ports == !routes || (routes && host) || !mode || optind != argc || g_data > 1 << 20) {
        usage(stderr);
        return 2;
    }
    if (!host) host = "127.0.0.1";
    if (!strcmp(mode, "setwait")) g_mode = M_SETWAIT;
    else if (!strcmp(mode, "set")) g_mode = M_SET;
    else if (!strcmp(mode, "put")) g_mode = M_PUT;
    else if (!strcmp(mode, "get")) g_mode = M_GET;
    else {
        usage(stderr);
        return 2;
    }
    if (g_mode == M_PUT && !g_space) {
        fprintf(stderr, "redis_wait: put needs -s SPACE\n");
        return 2;
    }
    if (routes && !((g_mode == M_PUT || g_mode == M_GET) && g_space)) {
        fprintf(stderr, "redis_wait: -R is for put and get with -s SPACE (keel)\n");
        return 2;
    }
    if (g_space && strlen(g_space) > 200) {
        fprintf(stderr, "redis_wait: space name too long\n");
        return 2;
    }
    if (conns > g_total) conns = g_total;

    long port_list[64];
    int nports = 0;
    if (ports) {
        char *pcopy = strdup(ports), *save = NULL;
        if (!pcopy) die("strdup");
        for (char *t = strtok_r(pcopy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (nports == 64) {
                fprintf(stderr, "redis_wait: at most 64 ports\n");
                return 2;
            }
            port_list[nports++] = num(t, "port", 1);
        }
        free(pcopy);
        if (!nports) {
            usage(stderr);
            return 2;
        }
    } else {
        load_routes(routes);
    }
    g_link_sent = calloc((size_t)g_nlinks, sizeof *g_link_sent);
    if (!g_link_sent) die("calloc");

    g_value = xmalloc(g_data);
    memset(g_value, 'x', g_data);
    g_lat = xmalloc(sizeof *g_lat * (size_t)g_total);

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    client *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs) die("calloc");
    size_t outcap = g_data + 512;
    for (long i = 0; i < conns; i++) {
        client *c = &cs[i];
        c->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) ^ now_ns();
        if (!c->rng) c->rng = 1;
        c->out = xmalloc(outcap);
        c->links = calloc((size_t)g_nlinks, sizeof *c->links);
        if (!c->links) die("calloc");
        for (int l = 0; l < g_nlinks; l++) {
            conn *k = &c->links[l];
            k->cl = c;
            k->incap = 65536;
            k->in = xmalloc(k->incap);
            if (routes) {
                k->fd = dial(g_link_host[l], g_link_port[l]);
                blocking_call(k, "*2\r\n$15\r\nCLIENT.REDIRECT\r\n$2\r\nON\r\n",
                              "CLIENT.REDIRECT ON");
                if (k->inlen != 5 || memcmp(k->in, "+OK\r\n", 5)) {
                    report_error(k->in, (long)k->inlen, "CLIENT.REDIRECT ON answered");
                    return 1;
                }
                k->inlen = 0;
            } else {
                k->fd = dial(host, port_list[i % nports]);
            }
            fcntl(k->fd, F_SETFL, fcntl(k->fd, F_GETFL) | O_NONBLOCK);
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = k};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, k->fd, &ev)) die("epoll_ctl");
        }
    }

    uint64_t t_start = now_ns(), deadline = t_start + (uint64_t)timeout_s * 1000000000u;
    for (long i = 0; i < conns; i++) start(&cs[i]);

    struct epoll_event evs[64];
    while (g_done < g_total) {
        if (now_ns() > deadline) {
            fprintf(stderr, "redis_wait: timed out after %ld s with %ld of %ld requests done\n",
                    timeout_s, g_done, g_total);
            return 1;
        }
        int n = epoll_wait(ep, evs, 64, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn *k = evs[i].data.ptr;
            client *c = k->cl;
            if (evs[i].events & EPOLLOUT && c->busy && c->cur == k && !flush_out(c)) die("write");
            if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            for (;;) {
                if (k->inlen == k->incap) {
                    k->incap *= 2;
                    k->in = realloc(k->in, k->incap);
                    if (!k->in) die("realloc");
                }
                ssize_t r = read(k->fd, k->in + k->inlen, k->incap - k->inlen);
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    if (errno == EINTR) continue;
                    die("read");
                }
                if (r == 0) {
                    fprintf(stderr, "redis_wait: the server closed a connection\n");
                    return 1;
                }
                k->inlen += (size_t)r;
                consume(k);
            }
        }
    }
    double secs = (double)(now_ns() - t_start) / 1e9;
    qsort(g_lat, (size_t)g_done, sizeof *g_lat, cmp_u32);
    printf("requests=%ld errors=%ld seconds=%.3f rps=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f",
           g_done, g_errors, secs, (double)g_done / secs, pct(g_done, 50), pct(g_done, 99),
           g_lat[g_done - 1] / 1000.0);
    if (routes) {
        printf(" routed=1 map_version=%ld per_daemon=", g_map_version);
        for (int l = 0; l < g_nlinks; l++)
            printf("%s%llu:%ld", l ? "," : "", (unsigned long long)g_link_id[l], g_link_sent[l]);
    }
    printf("\n");
    for (long i = 0; i < conns; i++) {
        for (int l = 0; l < g_nlinks; l++) {
            close(cs[i].links[l].fd);
            free(cs[i].links[l].in);
        }
        free(cs[i].links);
        free(cs[i].out);
    }
    free(cs);
    free(g_lat);
    free(g_value);
    close(ep);
    return g_errors ? 3 : 0;
}
