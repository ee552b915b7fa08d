/* daemon: `keel daemon` — membership of a storage daemon (see daemon.h and
 * docs/coordinator.md, "Daemons").
 *
 * Design note
 * -----------
 * One libuv loop runs everything: the client port (net.c), one outgoing
 * connection per coordinator address (rclient.c, made lazily), and the
 * timers. The daemon moves through these phases:
 *
 *     REGISTERING --on_register: ok--> RUNNING --on_heartbeat: OFFLINE--> REJOINING
 *       |    ^                            ^                                |
 *       |    +-- on_register: no answer,  +------- on_register: ok --------+
 *       |        TRYAGAIN (redirect at once, else next address after
 *       |        a backoff: register_retry, schedule_register)
 *       +-- on_register: refused (refuse) --> STOPPING --> DONE, exit 1
 *     any --signal (begin_shutdown)--> STOPPING --DAEMON.SHUTDOWN answered
 *                                      (on_shutdown), or 2 s (on_stop_timer)--> DONE
 *
 * REGISTERING sends DAEMON.REGISTER (with the stored id when DIR/identity
 * exists) until a coordinator answers; a new identity is written to disk
 * (synced) before the daemon goes on. RUNNING heartbeats every heartbeat_ms
 * (on_hb_timer); REJOINING registers again under the same id. The daemon
 * learns the coordinators' client addresses from the REGISTER reply and from
 * every newer map it fetches, and talks to the one it believes is the leader
 * (daemon_coords: redirects move it there, failures to the next address).
 *
 * Invariants:
 *   1. The lease is extended only by an answered DAEMON.HEARTBEAT, to the
 *      monotonic time the heartbeat was *sent* plus ping_timeout (DESIGN I1),
 *      and it is dropped at once when the coordinator says the daemon is
 *      OFFLINE.
 *   2. At most one heartbeat, one registration and one map fetch are in
 *      flight at a time. Once the settings are known, a request waits at most
 *      daemon_rpc_timeout_ms (half the ping timeout at most): connections made
 *      with another timeout are replaced as soon as they are idle.
 *   3. A coordinator slot's connection is replaced (for a new timeout) only
 *      when no request of ours is outstanding on it, so rclient_close never
 *      cancels a request we still count.
 *   4. After DONE no callback changes anything: replies still arriving
 *      (rclient_close delivers them at once) are dropped.
 *   5. The cached map only moves forward: a fetched map replaces it only if
 *      it decodes, belongs to this cluster and is newer.
 */
#include "daemon.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "dpart.h"
#include "route.h"
#include "kv.h"
#include "log.h"
#include "net.h"
#include "proc.h"
#include "rclient.h"
#include "version.h"

#define REGISTER_TIMEOUT_MS 2000u /* per attempt, before the settings are known */
#define BACKOFF_MIN_MS 100u       /* first retry after a failed registration */
#define BACKOFF_MAX_MS 2000u
#define SHUTDOWN_WAIT_MS 2000u /* how long DAEMON.SHUTDOWN may take */
#define HANDOFF_WAIT_MS 5000u  /* how long handing primaries over may take */
#define SHUTDOWN_RETRY_MS 150u /* > RCLIENT_RETRY_MS, so a retry really reconnects */
#define READY_WAIT_MS 10000u   /* a daemonised parent waits this long for registration */
#define MAX_CONNS 10000

/* ---- options ------------------------------------------------------------------ */

void daemon_usage(void)
{
    fprintf(stderr,
            "usage: keel daemon [-f] [-l HOST] [-p PORT] [-c HOST] [-P PORT] [-D DIR]\n"
            "         [--peer-port PORT] [--sync always|batch|none] [--blocking]\n"
            "  -f, --foreground             stay in the foreground, log to stderr\n"
            "  -l, --listen HOST            client address (default 127.0.0.1)\n"
            "  -p, --listen-port PORT       client port (default 2012)\n"
            "  --peer-port PORT             replication port (default client port + 10000)\n"
            "  -c, --coordinator HOST       a coordinator to register with (default 127.0.0.1)\n"
            "  -P, --coordinator-port PORT  its client port (default 1982)\n"
            "  -D, --data DIR               data directory (default keel-daemon-data)\n"
            "  --sync always|batch|none     fsync every write before acknowledging it /\n"
            "                               at least every second (default) / never; a\n"
            "                               cluster may require one (CLUSTER.CONFIG SET sync)\n"
            "  --blocking                   rejoin blocking: a primary sending this daemon a\n"
            "                               full copy pauses that partition's writes until it\n"
            "                               has caught up (clients wait; default: live)\n");
}

static bool is_ip_literal(const char *h)
{
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    return strlen(h) <= DAEMON_MAX_HOST &&
           (uv_ip4_addr(h, 0, &a4) == 0 || uv_ip6_addr(h, 0, &a6) == 0);
}

int daemon_parse_args(int argc, char **argv, daemon_opts *o)
{
    *o = (daemon_opts){.host = "127.0.0.1",
                       .port = 2012,
                       .peer_port = 0,
                       .coord_host = "127.0.0.1",
                       .coord_port = 1982,
                       .dir = "keel-daemon-data",
                       .sync_policy = STORE_SYNC_BATCH};
    enum { OPT_PEER = 1000, OPT_SYNC, OPT_BLOCKING, OPT_HELP };
    static const struct option lo[] = {{"foreground", no_argument, 0, 'f'},
                                       {"listen", required_argument, 0, 'l'},
                                       {"listen-port", required_argument, 0, 'p'},
                                       {"coordinator", required_argument, 0, 'c'},
                                       {"coordinator-port", required_argument, 0, 'P'},
                                       {"data", required_argument, 0, 'D'},
                                       {"peer-port", required_argument, 0, OPT_PEER},
                                       {"sync", required_argument, 0, OPT_SYNC},
                                       {"blocking", no_argument, 0, OPT_BLOCKING},
                                       {"help", no_argument, 0, OPT_HELP},
                                       {0, 0, 0, 0}};
    optind = 0; /* full re-initialisation: the parser may run more than once */
    int ch;
    while ((ch = getopt_long(argc, argv, "+fl:p:c:P:D:", lo, NULL)) != -1) {
        switch (ch) {
        case 'f':
            o->foreground = true;
            break;
        case 'l':
            o->host = optarg;
            break;
        case 'p':
            if (proc_parse_port("--listen-port", optarg, &o->port)) return 2;
            break;
        case 'c':
            o->coord_host = optarg;
            break;
        case 'P':
            if (proc_parse_port("--coordinator-port", optarg, &o->coord_port)) return 2;
            break;
        case 'D':
            o->dir = optarg;
            break;
        case OPT_PEER:
            if (proc_parse_port("--peer-port", optarg, &o->peer_port)) return 2;
            break;
        case OPT_SYNC:
            if ((o->sync_policy = store_sync_parse(optarg)) < 0) {
                fprintf(stderr, "keel: --sync must be always, batch or none, got '%s'\n", optarg);
                return 2;
            }
            break;
        case OPT_BLOCKING:
            o->blocking = true;
            break;
        case OPT_HELP:
            o->help = true;
            return 0;
        default:
            daemon_usage();
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "keel: unexpected argument '%s'\n", argv[optind]);
        daemon_usage();
        return 2;
    }
    if (!is_ip_literal(o->host)) {
        fprintf(stderr, "keel: --listen needs an IPv4 or IPv6 address, got '%s'\n", o->host);
        return 2;
    }
    if (!is_ip_literal(o->coord_host)) {
        fprintf(stderr, "keel: --coordinator needs an IPv4 or IPv6 address, got '%s'\n",
                o->coord_host);
        return 2;
    }
    if (!o->dir[0]) {
        fprintf(stderr, "keel: --data needs a directory\n");
        return 2;
    }
    if (o->peer_port == 0) {
        if (o->port + 10000 > 65535) {
            fprintf(stderr,
                    "keel: --listen-port %d + 10000 is not a port; give --peer-port explicitly\n",
                    o->port);
            return 2;
        }
        o->peer_port = o->port + 10000;
    }
    if (o->peer_port == o->port) {
        fprintf(stderr, "keel: --peer-port must differ from --listen-port (%d)\n", o->port);
        return 2;
    }
    return 0;
}

/* ---- identity ---------------------------------------------------------------- */

int daemon_identity_format(const daemon_identity *id, char *out, size_t outlen)
{
    if (id->cluster_id == 0 || id->daemon_id == 0) return -1;
    int n = snprintf(out, outlen, "cluster_id=%016llx\ndaemon_id=%llu\n",
                     (unsigned long long)id->cluster_id, (unsigned long long)id->daemon_id);
    if (n < 0 || (size_t)n >= outlen) return -1;
    return n;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Exactly 16 hex digits, not all zero. */
static bool parse_cluster_hex(const char *s, size_t len, uint64_t *out)
{
    if (len != 16) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        int h = hexval(s[i]);
        if (h < 0) return false;
        v = v << 4 | (uint64_t)h;
    }
    if (v == 0) return false;
    *out = v;
    return true;
}

/* 1..20 decimal digits, value in 1..UINT64_MAX. */
static bool parse_id(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    if (v == 0) return false;
    *out = v;
    return true;
}

int daemon_identity_parse(const char *text, size_t len, daemon_identity *id, char *err,
                          size_t errlen)
{
    bool have_cluster = false, have_daemon = false;
    size_t pos = 0;
    int line = 0;
    daemon_identity v = {0, 0};
    if (len == 0) {
        snprintf(err, errlen, "empty");
        return -1;
    }
    while (pos < len) {
        line++;
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        if (!nl) {
            snprintf(err, errlen, "line %d: not ended by a newline", line);
            return -1;
        }
        size_t n = (size_t)(nl - s);
        pos += n + 1;
        const char *eq = memchr(s, '=', n);
        if (!eq) {
            snprintf(err, errlen, "line %d: expected name=value", line);
            return -1;
        }
        size_t klen = (size_t)(eq - s);
        const char *val = eq + 1;
        size_t vlen = n - klen - 1;
        if (klen == 10 && !memcmp(s, "cluster_id", 10)) {
            if (have_cluster) {
                snprintf(err, errlen, "line %d: cluster_id given twice", line);
                return -1;
            }
            if (!parse_cluster_hex(val, vlen, &v.cluster_id)) {
                snprintf(err, errlen, "line %d: cluster_id must be 16 hex digits, not all zero",
                         line);
                return -1;
            }
            have_cluster = true;
        } else if (klen == 9 && !memcmp(s, "daemon_id", 9)) {
            if (have_daemon) {
                snprintf(err, errlen, "line %d: daemon_id given twice", line);
                return -1;
            }
            if (!parse_id(val, vlen, &v.daemon_id)) {
                snprintf(err, errlen, "line %d: daemon_id must be a positive decimal number", line);
                return -1;
            }
            have_daemon = true;
        } else {
            snprintf(err, errlen, "line %d: unknown name '%.*s'", line,
                     (int)(klen > 32 ? 32 : klen), s);
            return -1;
        }
    }
    if (!have_cluster || !have_daemon) {
        snprintf(err, errlen, "%s missing", have_cluster ? "daemon_id" : "cluster_id");
        return -1;
    }
    *id = v;
    return 0;
}

int daemon_identity_load(const char *dir, daemon_identity *id, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, DAEMON_IDENTITY_FILE);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        snprintf(err, errlen, "cannot open %.300s: %s", path, strerror(errno));
        return -1;
    }
    char text[DAEMON_IDENTITY_MAX + 1];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, text + len, sizeof text - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, errlen, "cannot read %.300s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (r == 0) break;
        len += (size_t)r;
        if (len == sizeof text) break;
    }
    close(fd);
    if (len > DAEMON_IDENTITY_MAX) {
        snprintf(err, errlen, "%.300s is corrupt: longer than %d bytes", path, DAEMON_IDENTITY_MAX);
        return -1;
    }
    char why[160];
    if (daemon_identity_parse(text, len, id, why, sizeof why)) {
        snprintf(err, errlen, "%.300s is corrupt: %s", path, why);
        return -1;
    }
    return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int daemon_identity_store(const char *dir, const daemon_identity *id, char *err, size_t errlen)
{
    char text[DAEMON_IDENTITY_MAX];
    int n = daemon_identity_format(id, text, sizeof text);
    if (n < 0) {
        snprintf(err, errlen, "invalid identity (an id is 0)");
        return -1;
    }
    char tmp[4096], path[4096];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, DAEMON_IDENTITY_FILE);
    snprintf(path, sizeof path, "%s/%s", dir, DAEMON_IDENTITY_FILE);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %.300s: %s", tmp, strerror(errno));
        return -1;
    }
    if (write_all(fd, text, (size_t)n) || fsync(fd)) {
        snprintf(err, errlen, "cannot write %.300s: %s", tmp, strerror(errno));
        close(fd);
        goto err_after_tmp;
    }
    if (close(fd)) {
        snprintf(err, errlen, "cannot write %.300s: %s", tmp, strerror(errno));
        goto err_after_tmp;
    }
    if (rename(tmp, path)) {
        snprintf(err, errlen, "cannot rename %.300s to %.300s: %s", tmp, path, strerror(errno));
        goto err_after_tmp;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd)) {
        snprintf(err, errlen, "cannot sync directory %.300s: %s", dir, strerror(errno));
        if (dfd >= 0) close(dfd);
        return -1;
    }
    close(dfd);
    return 0;

err_after_tmp:
    unlink(tmp);
    return -1;
}

/* ---- lease ---------------------------------------------------------------------- */

void daemon_lease_renew(daemon_lease *l, uint64_t t_send_ns, uint32_t ping_timeout_ms)
{
    uint64_t e = t_send_ns + (uint64_t)ping_timeout_ms * 1000000u;
    if (e > l->expiry_ns) l->expiry_ns = e;
}

bool daemon_lease_valid(const daemon_lease *l, uint64_t now_ns)
{
    return now_ns < l->expiry_ns;
}

uint64_t daemon_lease_ms_left(const daemon_lease *l, uint64_t now_ns)
{
    return daemon_lease_valid(l, now_ns) ? (l->expiry_ns - now_ns) / 1000000u : 0;
}

void daemon_lease_drop(daemon_lease *l)
{
    l->expiry_ns = 0;
}

unsigned daemon_rpc_timeout_ms(uint32_t heartbeat_ms, uint32_t ping_timeout_ms)
{
    uint64_t t = 2 * (uint64_t)heartbeat_ms;
    if (t > ping_timeout_ms / 2) t = ping_timeout_ms / 2;
    return t ? (unsigned)t : 1;
}

/* ---- coordinator addresses ---------------------------------------------------- */

int daemon_addr_parse(const char *s, size_t len, daemon_addr *out)
{
    const char *colon = NULL;
    for (size_t i = len; i > 0; i--)
        if (s[i - 1] == ':') {
            colon = s + i - 1;
            break;
        }
    if (!colon) return -1;
    const char *h = s;
    size_t hlen = (size_t)(colon - s);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen > DAEMON_MAX_HOST || memchr(h, 0, hlen)) return -1;
    const char *p = colon + 1;
    size_t plen = len - (size_t)(p - s);
    if (plen == 0 || plen > 5) return -1;
    int port = 0;
    for (size_t i = 0; i < plen; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        port = port * 10 + (p[i] - '0');
    }
    if (port < 1 || port > 65535) return -1;
    daemon_addr a;
    memcpy(a.host, h, hlen);
    a.host[hlen] = 0;
    a.port = port;
    if (!is_ip_literal(a.host)) return -1;
    *out = a;
    return 0;
}

static bool addr_eq(const daemon_addr *a, const daemon_addr *b)
{
    return a->port == b->port && !strcmp(a->host, b->host);
}

void daemon_coords_init(daemon_coords *c, const daemon_addr *configured)
{
    memset(c, 0, sizeof *c);
    c->addr[0] = *configured;
    c->listed[0] = true;
    c->n = 1;
    c->cur = 0;
}

static int coords_find(const daemon_coords *c, const daemon_addr *a)
{
    for (size_t i = 0; i < c->n; i++)
        if (addr_eq(&c->addr[i], a)) return (int)i;
    return -1;
}

int daemon_coords_add(daemon_coords *c, const daemon_addr *addr)
{
    int i = coords_find(c, addr);
    if (i >= 0) {
        c->listed[i] = true;
        return i;
    }
    if (c->n == DAEMON_MAX_COORDS) return -1;
    c->addr[c->n] = *addr;
    c->listed[c->n] = true;
    return (int)c->n++;
}

void daemon_coords_set_list(daemon_coords *c, const daemon_addr *addrs, size_t n)
{
    for (size_t i = 1; i < c->n; i++)
        c->listed[i] = false;
    int first = -1;
    for (size_t i = 0; i < n; i++) {
        int k = daemon_coords_add(c, &addrs[i]);
        if (first < 0) first = k;
    }
    if (!c->listed[c->cur] && first >= 0) c->cur = (size_t)first;
}

void daemon_coords_redirect(daemon_coords *c, const daemon_addr *leader)
{
    int i = daemon_coords_add(c, leader);
    if (i >= 0) c->cur = (size_t)i;
}

void daemon_coords_next(daemon_coords *c)
{
    for (size_t k = 1; k <= c->n; k++) {
        size_t i = (c->cur + k) % c->n;
        if (c->listed[i]) {
            c->cur = i;
            return;
        }
    }
}

size_t daemon_coords_from_map(const cmap *m, daemon_addr *out, size_t max)
{
    size_t n = 0;
    for (uint32_t i = 0; i < m->ncoords && n < max; i++) {
        const cmap_coordinator *c = &m->coords[i];
        size_t hl = strnlen(c->host, sizeof c->host);
        if (c->port == 0 || hl > DAEMON_MAX_HOST || !is_ip_literal(c->host)) continue;
        memcpy(out[n].host, c->host, hl + 1);
        out[n].port = c->port;
        n++;
    }
    return n;
}

/* ---- coordinator replies ------------------------------------------------------- */

static bool reply_uint(const resp_reply *r, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!r || r->type != RESP_R_INT || r->integer < 0) return false;
    uint64_t v = (uint64_t)r->integer;
    if (v < min || v > max) return false;
    *out = v;
    return true;
}

int daemon_parse_register_reply(const resp_reply *r, daemon_reg_reply *out, char *err,
                                size_t errlen)
{
    if (!r || r->type != RESP_R_ARRAY || r->elements != 5) {
        snprintf(err, errlen, "expected an array of 5 elements");
        return -1;
    }
    uint64_t hb, ping;
    if (!reply_uint(r->element[0], 1, UINT64_MAX >> 1, &out->id)) {
        snprintf(err, errlen, "element 1 (daemon id) is not a positive integer");
        return -1;
    }
    const resp_reply *cid = r->element[1];
    if (!cid || cid->type != RESP_R_BULK ||
        !parse_cluster_hex(cid->str, cid->len, &out->cluster_id)) {
        snprintf(err, errlen, "element 2 (cluster id) is not 16 hex digits");
        return -1;
    }
    if (!reply_uint(r->element[2], 1, DAEMON_MAX_HEARTBEAT_MS, &hb)) {
        snprintf(err, errlen, "element 3 (heartbeat_ms) is not in 1..%u", DAEMON_MAX_HEARTBEAT_MS);
        return -1;
    }
    if (!reply_uint(r->element[3], 1, DAEMON_MAX_PING_TIMEOUT_MS, &ping)) {
        snprintf(err, errlen, "element 4 (ping_timeout_ms) is not in 1..%u",
                 DAEMON_MAX_PING_TIMEOUT_MS);
        return -1;
    }
    const resp_reply *cl = r->element[4];
    if (!cl || cl->type != RESP_R_ARRAY || cl->elements == 0 || cl->elements > DAEMON_MAX_COORDS) {
        snprintf(err, errlen, "element 5 (coordinators) is not an array of 1..%d addresses",
                 DAEMON_MAX_COORDS);
        return -1;
    }
    for (size_t i = 0; i < cl->elements; i++) {
        const resp_reply *a = cl->element[i];
        if (!a || a->type != RESP_R_BULK || daemon_addr_parse(a->str, a->len, &out->coords[i])) {
            snprintf(err, errlen, "coordinator address %zu is not host:port", i + 1);
            return -1;
        }
    }
    out->ncoords = cl->elements;
    out->heartbeat_ms = (uint32_t)hb;
    out->ping_timeout_ms = (uint32_t)ping;
    return 0;
}

int daemon_parse_heartbeat_reply(const resp_reply *r, daemon_hb_reply *out, char *err,
                                 size_t errlen)
{
    uint64_t v, hb, ping;
    if (!r || r->type != RESP_R_ARRAY || r->elements != 3) {
        snprintf(err, errlen, "expected an array of 3 integers");
        return -1;
    }
    if (!reply_uint(r->element[0], 0, UINT64_MAX >> 1, &v) ||
        !reply_uint(r->element[1], 1, DAEMON_MAX_HEARTBEAT_MS, &hb) ||
        !reply_uint(r->element[2], 1, DAEMON_MAX_PING_TIMEOUT_MS, &ping)) {
        snprintf(err, errlen,
                 "expected [map_version >= 0, heartbeat_ms in 1..%u, "
                 "ping_timeout_ms in 1..%u]",
                 DAEMON_MAX_HEARTBEAT_MS, DAEMON_MAX_PING_TIMEOUT_MS);
        return -1;
    }
    out->map_version = v;
    out->heartbeat_ms = (uint32_t)hb;
    out->ping_timeout_ms = (uint32_t)ping;
    return 0;
}

static bool starts_with_word(const char *msg, const char *word)
{
    size_t n = strlen(word);
    return !strncmp(msg, word, n) && (msg[n] == ' ' || msg[n] == 0);
}

int daemon_classify_error(const char *msg, daemon_addr *leader)
{
    if (starts_with_word(msg, "TRYAGAIN")) {
        const char *p = strstr(msg, "leader is ");
        if (p) {
            p += strlen("leader is ");
            size_t n = strcspn(p, " \t");
            if (daemon_addr_parse(p, n, leader) == 0) return DAEMON_E_REDIRECT;
        }
        return DAEMON_E_RETRY;
    }
    if (!starts_with_word(msg, "ERR")) return DAEMON_E_RETRY;
    if (strstr(msg, "register again")) return DAEMON_E_OFFLINE;
    if (strstr(msg, "is already online")) return DAEMON_E_ONLINE;
    return DAEMON_E_REFUSED;
}

int daemon_map_accept(const cmap *cur, uint64_t cluster_id, const void *data, size_t len,
                      cmap **out, char *err, size_t errlen)
{
    *out = NULL;
    cmap *m;
    if (cmap_decode(data, len, &m)) {
        snprintf(err, errlen, "the map (%zu bytes) does not decode", len);
        return -1;
    }
    if (m->cluster_id != cluster_id) {
        snprintf(err, errlen, "the map is of cluster %016llx, this daemon is of cluster %016llx",
                 (unsigned long long)m->cluster_id, (unsigned long long)cluster_id);
        cmap_free(m);
        return -1;
    }
    if (cur && m->version <= cur->version) {
        cmap_free(m);
        return 0;
    }
    *out = m;
    return 1;
}

/* ---- the process ------------------------------------------------------------------ */

enum phase { PH_REGISTERING = 1, PH_RUNNING, PH_REJOINING, PH_STOPPING, PH_DONE };

enum rq_kind { RQ_REGISTER = 1, RQ_HEARTBEAT, RQ_MAP, RQ_SHUTDOWN, RQ_REPORT, RQ_HANDOFF };

typedef struct dstate dstate;

/* One request to a coordinator; freed by on_coord_reply. */
typedef struct rq {
    dstate *d;
    int kind;        /* enum rq_kind */
    size_t coord;    /* slot it went to */
    uint64_t t_send; /* uv_hrtime() when sent (heartbeats) */
} rq;

struct dstate {
    daemon_opts o;
    uv_loop_t loop;
    net_server *net;
    uv_signal_t sigs[3];
    uv_timer_t hb_timer;    /* heartbeats, repeating every heartbeat_ms */
    uv_timer_t lease_timer; /* fires when the lease runs out */
    uv_timer_t retry_timer; /* the next registration or shutdown attempt */
    uv_timer_t stop_timer;  /* the shutdown deadline; 0 ms: finish now */
    uv_timer_t ready_timer; /* a daemonised parent stops waiting */
    int phase;              /* enum phase */
    int exit_status;
    int ready_fd; /* to a daemonised parent, -1 once reported */
    int lock_fd;
    uint64_t start_ms;

    daemon_identity id;    /* 0s until known */
    bool have_identity;    /* id came from disk or a registration */
    uint32_t heartbeat_ms; /* from the coordinator */
    uint32_t ping_timeout_ms;
    unsigned rpc_timeout_ms; /* for coordinator connections */

    daemon_coords coords;
    rclient *rc[DAEMON_MAX_COORDS];
    unsigned rc_timeout[DAEMON_MAX_COORDS];
    unsigned inflight[DAEMON_MAX_COORDS]; /* our requests awaiting callbacks */

    bool reg_inflight, hb_inflight, map_inflight, shutdown_inflight;
    unsigned backoff_ms;   /* next registration retry delay */
    unsigned redirects;    /* consecutive redirects followed at once */
    bool shutdown_waiting; /* DAEMON.SHUTDOWN sent, the deadline runs */
    bool shutdown_confirmed;
    unsigned shutdown_failures;

    daemon_lease lease;
    bool lease_held; /* lease_acquired logged, lease_lost not yet */
    unsigned long long hb_ok, hb_failed;
    unsigned fail_streak; /* consecutive heartbeat failures */

    cmap *map;        /* cached map, NULL until fetched */
    buf map_bytes;    /* its encoding as served by the coordinator */
    dpart *dp;        /* the data plane, once the daemon has an id */
    bool handing_off; /* SIGTERM: primaries are being handed to backups first */
    int stop_signal;
};

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* "host:port" of slot i, in one of four rotating buffers so that a log line
 * may name several slots. */
static const char *coord_name(const dstate *d, size_t i)
{
    static char bufs[4][DAEMON_MAX_HOST + 16];
    static unsigned next;
    char *s = bufs[next++ % 4];
    const daemon_addr *a = &d->coords.addr[i];
    snprintf(s, sizeof bufs[0], strchr(a->host, ':') ? "[%s]:%d" : "%s:%d", a->host, a->port);
    return s;
}

static void request_finish(dstate *d, int status);

/* Reports to a daemonised parent once: ok, or the reason for exiting. */
static void report_ready(dstate *d, bool ok, const char *msg)
{
    if (d->ready_fd < 0) return;
    if (ok)
        proc_ready(&d->ready_fd);
    else
        proc_failed(&d->ready_fd, msg);
    uv_timer_stop(&d->ready_timer);
}

static void on_ready_timer(uv_timer_t *t)
{
    dstate *d = t->data;
    log_warn("not registered yet (coordinator %s unreachable); the parent stops waiting, "
             "registration goes on",
             coord_name(d, d->coords.cur));
    report_ready(d, true, NULL);
}

/* ---- requests to coordinators --------------------------------------------------- */

static void on_coord_reply(void *arg, const resp_reply *reply, int status);

/* The connection for slot i, (re)made with the current timeout if idle. */
static rclient *coord_client(dstate *d, size_t i)
{
    if (d->rc[i] && d->rc_timeout[i] != d->rpc_timeout_ms && d->inflight[i] == 0) {
        rclient_close(d->rc[i]);
        d->rc[i] = NULL;
    }
    if (!d->rc[i]) {
        d->rc[i] = rclient_new(&d->loop, d->coords.addr[i].host, d->coords.addr[i].port, d->o.host,
                               d->rpc_timeout_ms);
        d->rc_timeout[i] = d->rpc_timeout_ms;
    }
    return d->rc[i];
}

/* Closes idle connections to coordinators that are no longer advertised. */
static void close_unlisted(dstate *d)
{
    for (size_t i = 0; i < d->coords.n; i++)
        if (!d->coords.listed[i] && i != d->coords.cur && d->rc[i] && d->inflight[i] == 0) {
            rclient_close(d->rc[i]);
            d->rc[i] = NULL;
        }
}

static void coord_send(dstate *d, int kind, size_t slot, int argc, const char *const *argv)
{
    size_t lens[8];
    assert(argc <= 8);
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    rq *q = calloc(1, sizeof *q);
    if (!q) abort();
    q->d = d;
    q->kind = kind;
    q->coord = slot;
    rclient *c = coord_client(d, slot); /* before counting this request: see invariant 3 */
    d->inflight[slot]++;
    close_unlisted(d);
    q->t_send = uv_hrtime();
    rclient_send(c, argc, argv, lens, on_coord_reply, q);
}

/* A request to slot failed in a way that says nothing about the leader
 * (dead connection, timeout, no leader known there): move on to the next
 * address, unless something already moved us. */
static void fail_over(dstate *d, size_t slot)
{
    if (d->coords.cur == slot) daemon_coords_next(&d->coords);
}

static const char *status_text(const resp_reply *r, int status)
{
    if (status < 0) return uv_strerror(status);
    if (r && (r->type == RESP_R_ERROR || r->type == RESP_R_STATUS)) return r->str;
    return "unexpected reply";
}

/* ---- lease ------------------------------------------------------------------------ */

static void lease_lost(dstate *d, const char *why)
{
    if (!d->lease_held) return;
    d->lease_held = false;
    log_error("event=lease_lost daemon=%llu: %s; serving nothing until a heartbeat is answered",
              (unsigned long long)d->id.daemon_id, why);
}

static void on_lease_timer(uv_timer_t *t)
{
    dstate *d = t->data;
    uint64_t now = uv_hrtime();
    if (daemon_lease_valid(&d->lease, now)) {
        /* the loop's clock runs a little behind the monotonic one: wait on */
        uv_timer_start(&d->lease_timer, on_lease_timer, daemon_lease_ms_left(&d->lease, now) + 1,
                       0);
        return;
    }
    char why[160];
    snprintf(why, sizeof why, "no heartbeat answered within ping_timeout (%u ms); last tried %s",
             d->ping_timeout_ms, coord_name(d, d->coords.cur));
    lease_lost(d, why);
}

/* ---- registration ------------------------------------------------------------------ */

static void send_register(dstate *d)
{
    if (d->reg_inflight) return;
    char port[8], peer[8], idbuf[24], cid[20];
    snprintf(port, sizeof port, "%d", d->o.port);
    snprintf(peer, sizeof peer, "%d", d->o.peer_port);
    const char *argv[8] = {"DAEMON.REGISTER", d->o.host, port, peer, idbuf, cid};
    int argc = 4;
    if (d->have_identity) {
        snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)d->id.daemon_id);
        snprintf(cid, sizeof cid, "%016llx", (unsigned long long)d->id.cluster_id);
        argc = 6;
    }
    /* the coordinator refuses a daemon whose policy contradicts the cluster's */
    argv[argc++] = "SYNC";
    argv[argc++] = store_sync_name(d->o.sync_policy);
    d->reg_inflight = true;
    coord_send(d, RQ_REGISTER, d->coords.cur, argc, argv);
}

static void on_retry_timer(uv_timer_t *t);

static void schedule_register(dstate *d, unsigned ms)
{
    uv_timer_start(&d->retry_timer, on_retry_timer, ms, 0);
}

static unsigned next_backoff(dstate *d)
{
    unsigned ms = d->backoff_ms;
    d->backoff_ms = d->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : d->backoff_ms * 2;
    return ms;
}

/* A registration attempt did not get an answer: try the next address later. */
static void register_retry(dstate *d, size_t slot, const char *why)
{
    unsigned ms = next_backoff(d);
    fail_over(d, slot);
    log_warn("event=register_failed coordinator=%s: %s; retrying with %s in %u ms",
             coord_name(d, slot), why, coord_name(d, d->coords.cur), ms);
    d->redirects = 0;
    schedule_register(d, ms);
}

static void refuse(dstate *d, const char *msg)
{
    log_error("event=register_refused by coordinator: %s", msg);
    char line[400];
    snprintf(line, sizeof line, "registration refused by the coordinator: %s", msg);
    report_ready(d, false, line);
    request_finish(d, 1);
}

static void start_heartbeats(dstate *d);
static void start_data_plane(dstate *d);
static void stop_now(dstate *d);

static void on_register(dstate *d, rq *q, const resp_reply *r, int status)
{
    d->reg_inflight = false;
    if (d->phase != PH_REGISTERING && d->phase != PH_REJOINING) return;
    if (status < 0 || !r) {
        register_retry(d, q->coord, status_text(r, status));
        return;
    }
    if (r->type == RESP_R_ERROR) {
        daemon_addr leader;
        switch (daemon_classify_error(r->str, &leader)) {
        case DAEMON_E_REDIRECT:
            daemon_coords_redirect(&d->coords, &leader);
            /* follow a redirect at once, but not round and round */
            if (++d->redirects <= 2 * d->coords.n + 1) {
                log_info("registration: %s says the leader is %s", coord_name(d, q->coord),
                         coord_name(d, d->coords.cur));
                schedule_register(d, 0);
            } else {
                unsigned ms = next_backoff(d);
                log_warn("event=register_failed coordinator=%s: %s; retrying in %u ms",
                         coord_name(d, q->coord), r->str, ms);
                d->redirects = 0;
                schedule_register(d, ms);
            }
            return;
        case DAEMON_E_RETRY:
            register_retry(d, q->coord, r->str);
            return;
        case DAEMON_E_ONLINE:
            if (d->phase == PH_REJOINING) {
                /* our own earlier rejoin went through (its answer was lost):
                 * the coordinator has us ONLINE, so heartbeats will work */
                log_notice("rejoin: coordinator %s already has daemon %llu online; heartbeating",
                           coord_name(d, q->coord), (unsigned long long)d->id.daemon_id);
                d->phase = PH_RUNNING;
                start_heartbeats(d);
                return;
            }
            refuse(d, r->str);
            return;
        default:
            refuse(d, r->str);
            return;
        }
    }
    daemon_reg_reply rep;
    char err[600];
    if (daemon_parse_register_reply(r, &rep, err, sizeof err)) {
        log_warn("malformed DAEMON.REGISTER reply from %s: %s", coord_name(d, q->coord), err);
        register_retry(d, q->coord, "malformed reply");
        return;
    }
    if (d->have_identity && (rep.id != d->id.daemon_id || rep.cluster_id != d->id.cluster_id)) {
        char msg[300];
        snprintf(msg, sizeof msg,
                 "asked to rejoin as daemon %llu of cluster %016llx, the coordinator answered "
                 "daemon %llu of cluster %016llx",
                 (unsigned long long)d->id.daemon_id, (unsigned long long)d->id.cluster_id,
                 (unsigned long long)rep.id, (unsigned long long)rep.cluster_id);
        refuse(d, msg);
        return;
    }
    bool fresh = !d->have_identity;
    if (fresh) {
        daemon_identity id = {rep.cluster_id, rep.id};
        if (daemon_identity_store(d->o.dir, &id, err, sizeof err)) {
            log_error("cannot record identity (daemon %llu of cluster %016llx): %s",
                      (unsigned long long)rep.id, (unsigned long long)rep.cluster_id, err);
            char line[700];
            snprintf(line, sizeof line, "cannot record identity: %s", err);
            report_ready(d, false, line);
            request_finish(d, 1);
            return;
        }
        d->id = id;
        d->have_identity = true;
    }
    d->heartbeat_ms = rep.heartbeat_ms;
    d->ping_timeout_ms = rep.ping_timeout_ms;
    d->rpc_timeout_ms = daemon_rpc_timeout_ms(rep.heartbeat_ms, rep.ping_timeout_ms);
    /* keep talking to the coordinator that answered if it is advertised */
    d->coords.cur = q->coord;
    daemon_coords_set_list(&d->coords, rep.coords, rep.ncoords);
    d->backoff_ms = BACKOFF_MIN_MS;
    d->redirects = 0;
    const char *ev = fresh ? "daemon_registered" : "daemon_rejoined";
    log_notice("event=%s daemon=%llu cluster=%016llx coordinator=%s coordinators=%zu "
               "heartbeat_ms=%u ping_timeout_ms=%u",
               ev, (unsigned long long)d->id.daemon_id, (unsigned long long)d->id.cluster_id,
               coord_name(d, q->coord), rep.ncoords, d->heartbeat_ms, d->ping_timeout_ms);
    char msg[120];
    snprintf(msg, sizeof msg, "%s as daemon %llu of cluster %016llx",
             fresh ? "registered" : "rejoined", (unsigned long long)d->id.daemon_id,
             (unsigned long long)d->id.cluster_id);
    report_ready(d, true, msg);
    d->phase = PH_RUNNING;
    start_data_plane(d);
    start_heartbeats(d);
}

/* ---- the data plane ------------------------------------------------------------------ */

/* dpart's reports to the coordinator (DAEMON.CAUGHT_UP ...), sent to the
 * coordinator believed to be leader. */
static void report(void *arg, int argc, const char *const *argv)
{
    dstate *d = arg;
    if (d->phase != PH_RUNNING || d->coords.n == 0) return;
    coord_send(d, RQ_REPORT, d->coords.cur, argc, argv);
}

static void fetch_map(dstate *d, size_t slot);

/* dpart saw a space it does not know: the map may be behind the coordinator. */
static void want_map(void *arg)
{
    dstate *d = arg;
    if (d->phase == PH_RUNNING && d->coords.n) fetch_map(d, d->coords.cur);
}

static bool lease_ok(void *arg)
{
    dstate *d = arg;
    return daemon_lease_valid(&d->lease, uv_hrtime());
}

/* Opens the store and the replication port once the daemon knows its id. */
static void start_data_plane(dstate *d)
{
    if (d->dp) return;
    dpart_opts o = {.dir = d->o.dir,
                    .host = d->o.host,
                    .peer_port = d->o.peer_port,
                    .sync_policy = d->o.sync_policy,
                    .blocking = d->o.blocking,
                    .max_key = 256,
                    .self = d->id.daemon_id,
                    .lease_ok = lease_ok,
                    .lease_arg = d,
                    .report = report,
                    .report_arg = d,
                    .want_map = want_map};
    char err[400];
    if (dpart_start(&d->dp, &d->loop, &o, err, sizeof err)) {
        log_error("event=storage_error cannot start the data plane: %s", err);
        request_finish(d, 1);
        return;
    }
    if (d->map) dpart_map(d->dp, d->map);
}

/* ---- heartbeats ---------------------------------------------------------------------- */

static void send_heartbeat(dstate *d)
{
    if (d->phase != PH_RUNNING || d->hb_inflight) return;
    char a[5][24];
    snprintf(a[0], sizeof a[0], "%llu", (unsigned long long)d->id.daemon_id);
    dpart_progress pg = {0};
    if (d->dp) dpart_get_progress(d->dp, &pg);
    snprintf(a[1], sizeof a[1], "%u", pg.copies);
    snprintf(a[2], sizeof a[2], "%llu", (unsigned long long)pg.copy_bytes_left);
    snprintf(a[3], sizeof a[3], "%llu", (unsigned long long)pg.copy_bytes_per_s);
    snprintf(a[4], sizeof a[4], "%llu", (unsigned long long)pg.tail_entries_left);
    const char *argv[7] = {"DAEMON.HEARTBEAT", a[0], "PROGRESS", a[1], a[2], a[3], a[4]};
    d->hb_inflight = true;
    coord_send(d, RQ_HEARTBEAT, d->coords.cur, 7, argv);
}

static void on_hb_timer(uv_timer_t *t)
{
    send_heartbeat(t->data);
}

static void start_heartbeats(dstate *d)
{
    uv_timer_start(&d->hb_timer, on_hb_timer, d->heartbeat_ms, d->heartbeat_ms);
    send_heartbeat(d);
}

static void heartbeat_failed(dstate *d, size_t slot, const char *why, bool move_on)
{
    d->hb_failed++;
    if (d->fail_streak++ % 20 == 0)
        log_error("event=coordinator_unreachable daemon=%llu coordinator=%s: heartbeat failed: "
                  "%s (%u in a row)",
                  (unsigned long long)d->id.daemon_id, coord_name(d, slot), why, d->fail_streak);
    if (move_on) fail_over(d, slot);
}

static void fetch_map(dstate *d, size_t slot)
{
    if (d->map_inflight) return;
    const char *argv[2] = {"CLUSTER.MAP", "STALE"};
    d->map_inflight = true;
    coord_send(d, RQ_MAP, slot, 2, argv);
}

static void on_heartbeat(dstate *d, rq *q, const resp_reply *r, int status)
{
    d->hb_inflight = false;
    if (d->phase != PH_RUNNING) return;
    if (status < 0 || !r) {
        heartbeat_failed(d, q->coord, status_text(r, status), true);
        return;
    }
    if (r->type == RESP_R_ERROR) {
        daemon_addr leader;
        switch (daemon_classify_error(r->str, &leader)) {
        case DAEMON_E_REDIRECT:
            daemon_coords_redirect(&d->coords, &leader);
            if (++d->redirects <= 2 * d->coords.n + 1)
                send_heartbeat(d);
            else
                heartbeat_failed(d, q->coord, r->str, false); /* next tick tries again */
            return;
        case DAEMON_E_OFFLINE:
            d->hb_failed++;
            daemon_lease_drop(&d->lease);
            lease_lost(d, "the coordinator declared this daemon OFFLINE");
            log_warn("event=daemon_offline daemon=%llu: coordinator %s says '%s'; registering "
                     "again",
                     (unsigned long long)d->id.daemon_id, coord_name(d, q->coord), r->str);
            d->phase = PH_REJOINING;
            uv_timer_stop(&d->hb_timer);
            d->backoff_ms = BACKOFF_MIN_MS;
            send_register(d);
            return;
        case DAEMON_E_RETRY:
            heartbeat_failed(d, q->coord, r->str, true);
            return;
        default:
            heartbeat_failed(d, q->coord, r->str, false);
            return;
        }
    }
    daemon_hb_reply hb;
    char err[200];
    if (daemon_parse_heartbeat_reply(r, &hb, err, sizeof err)) {
        heartbeat_failed(d, q->coord, err, true);
        return;
    }
    uint64_t now = uv_hrtime();
    d->redirects = 0;
    d->hb_ok++;
    if (d->fail_streak) {
        log_info("heartbeats answered again by %s after %u failures", coord_name(d, q->coord),
                 d->fail_streak);
        d->fail_streak = 0;
    }
    daemon_lease_renew(&d->lease, q->t_send, hb.ping_timeout_ms);
    if (daemon_lease_valid(&d->lease, now)) {
        if (!d->lease_held) {
            d->lease_held = true;
            log_notice("event=lease_acquired daemon=%llu coordinator=%s lease_ms=%llu",
                       (unsigned long long)d->id.daemon_id, coord_name(d, q->coord),
                       (unsigned long long)daemon_lease_ms_left(&d->lease, now));
        }
        uv_timer_start(&d->lease_timer, on_lease_timer, daemon_lease_ms_left(&d->lease, now) + 1,
                       0);
    }
    if (hb.heartbeat_ms != d->heartbeat_ms || hb.ping_timeout_ms != d->ping_timeout_ms) {
        log_notice("coordinator settings: heartbeat_ms %u -> %u, ping_timeout_ms %u -> %u",
                   d->heartbeat_ms, hb.heartbeat_ms, d->ping_timeout_ms, hb.ping_timeout_ms);
        if (hb.heartbeat_ms != d->heartbeat_ms)
            uv_timer_start(&d->hb_timer, on_hb_timer, hb.heartbeat_ms, hb.heartbeat_ms);
        d->heartbeat_ms = hb.heartbeat_ms;
        d->ping_timeout_ms = hb.ping_timeout_ms;
        d->rpc_timeout_ms = daemon_rpc_timeout_ms(hb.heartbeat_ms, hb.ping_timeout_ms);
    }
    if (hb.map_version > (d->map ? d->map->version : 0)) fetch_map(d, q->coord);
}

/* ---- the map ------------------------------------------------------------------------- */

static void on_map(dstate *d, rq *q, const resp_reply *r, int status)
{
    d->map_inflight = false;
    if (d->phase != PH_RUNNING) return;
    if (status < 0 || !r || r->type != RESP_R_BULK) {
        log_warn("CLUSTER.MAP from %s failed: %s", coord_name(d, q->coord), status_text(r, status));
        return;
    }
    cmap *m;
    char err[200];
    int rc = daemon_map_accept(d->map, d->id.cluster_id, r->str, r->len, &m, err, sizeof err);
    if (rc < 0) {
        log_warn("ignoring the map from %s: %s; keeping version %llu", coord_name(d, q->coord), err,
                 (unsigned long long)(d->map ? d->map->version : 0));
        return;
    }
    if (rc == 0) return;
    log_info("cluster map version %llu -> %llu (%u spaces, %u daemons)",
             (unsigned long long)(d->map ? d->map->version : 0), (unsigned long long)m->version,
             m->nspaces, m->ndaemons);
    cmap_free(d->map);
    d->map = m;
    buf_reset(&d->map_bytes);
    buf_append(&d->map_bytes, r->str, r->len);
    if (d->dp) dpart_map(d->dp, m);
    if (d->handing_off && dpart_primaries(d->dp) == 0) {
        log_notice("event=handoff_done daemon=%llu: leads no partition",
                   (unsigned long long)d->id.daemon_id);
        stop_now(d);
    }
    /* the map is newer than the REGISTER reply: it knows coordinators that
     * joined (or left) since */
    daemon_addr addrs[DAEMON_MAX_COORDS];
    size_t n = daemon_coords_from_map(m, addrs, DAEMON_MAX_COORDS);
    if (n) daemon_coords_set_list(&d->coords, addrs, n);
}

/* ---- shutdown ---------------------------------------------------------------------- */

static void finish(dstate *d);

static void on_stop_timer(uv_timer_t *t)
{
    dstate *d = t->data;
    if (d->phase == PH_STOPPING && d->shutdown_waiting && !d->shutdown_confirmed)
        log_warn("event=shutdown_unconfirmed daemon=%llu: no coordinator confirmed "
                 "DAEMON.SHUTDOWN within %u ms; exiting anyway",
                 (unsigned long long)d->id.daemon_id, SHUTDOWN_WAIT_MS);
    finish(d);
}

/* Ends the process from inside a callback: the loop closes everything on
 * its next turn. */
static void request_finish(dstate *d, int status)
{
    d->exit_status = status;
    if (d->phase == PH_DONE) return;
    d->phase = PH_STOPPING;
    uv_timer_stop(&d->hb_timer);
    uv_timer_stop(&d->retry_timer);
    uv_timer_start(&d->stop_timer, on_stop_timer, 0, 0);
}

static void send_shutdown(dstate *d)
{
    if (d->shutdown_inflight) return;
    char idbuf[24];
    snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)d->id.daemon_id);
    const char *argv[2] = {"DAEMON.SHUTDOWN", idbuf};
    d->shutdown_inflight = true;
    coord_send(d, RQ_SHUTDOWN, d->coords.cur, 2, argv);
}

static void on_shutdown(dstate *d, rq *q, const resp_reply *r, int status)
{
    d->shutdown_inflight = false;
    if (d->phase != PH_STOPPING) return;
    if (status == 0 && r && r->type == RESP_R_STATUS) {
        d->shutdown_confirmed = true;
        log_notice("event=daemon_shutdown daemon=%llu recorded SHUTDOWN by %s",
                   (unsigned long long)d->id.daemon_id, coord_name(d, q->coord));
        finish(d);
        return;
    }
    daemon_addr leader;
    int kind = status < 0 || !r || r->type != RESP_R_ERROR ? DAEMON_E_RETRY
                                                           : daemon_classify_error(r->str, &leader);
    if (kind == DAEMON_E_REDIRECT) {
        daemon_coords_redirect(&d->coords, &leader);
        if (++d->redirects <= 2 * d->coords.n + 1) {
            send_shutdown(d);
            return;
        }
    } else if (kind == DAEMON_E_RETRY) {
        /* one warning; the retries every SHUTDOWN_RETRY_MS are debug noise */
        log_msg(d->shutdown_failures++ ? LOG_DEBUG : LOG_WARN, "DAEMON.SHUTDOWN to %s failed: %s",
                coord_name(d, q->coord), status_text(r, status));
        fail_over(d, q->coord);
    } else {
        log_warn("coordinator %s answered DAEMON.SHUTDOWN with: %s", coord_name(d, q->coord),
                 r->str);
        d->shutdown_confirmed = true; /* a final answer */
        finish(d);
        return;
    }
    d->redirects = 0;
    uv_timer_start(&d->retry_timer, on_retry_timer, SHUTDOWN_RETRY_MS, 0);
}

static void on_retry_timer(uv_timer_t *t)
{
    dstate *d = t->data;
    if (d->phase == PH_STOPPING)
        send_shutdown(d);
    else if (d->phase == PH_REGISTERING || d->phase == PH_REJOINING)
        send_register(d);
}

static void on_handoff_timer(uv_timer_t *t)
{
    dstate *d = t->data;
    if (!d->handing_off) return;
    log_warn("event=handoff_incomplete daemon=%llu: still primary of %u partitions after %u ms; "
             "stopping anyway (they fail over after ping_timeout)",
             (unsigned long long)d->id.daemon_id, dpart_primaries(d->dp), HANDOFF_WAIT_MS);
    stop_now(d);
}

/* Clean shutdown, step 1 (DESIGN section 6): while still serving, ask the
 * coordinator to make an in-sync backup the primary of every partition this
 * daemon leads; the rest of the shutdown waits until the map shows it leads
 * nothing (on_map) or HANDOFF_WAIT_MS passed. */
static bool begin_handoff(dstate *d)
{
    if (d->phase != PH_RUNNING || !d->dp || d->handing_off) return false;
    uint32_t n = dpart_primaries(d->dp);
    if (n == 0) return false;
    d->handing_off = true;
    log_notice("event=handoff_started daemon=%llu partitions=%u",
               (unsigned long long)d->id.daemon_id, n);
    char idbuf[24];
    snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)d->id.daemon_id);
    const char *argv[2] = {"DAEMON.HANDOFF", idbuf};
    coord_send(d, RQ_HANDOFF, d->coords.cur, 2, argv);
    uv_timer_start(&d->stop_timer, on_handoff_timer, HANDOFF_WAIT_MS, 0);
    return true;
}

static void begin_shutdown(dstate *d, int signum)
{
    if (d->phase == PH_STOPPING || (d->handing_off && d->phase != PH_DONE)) {
        log_notice("second signal (%s): exiting without waiting", strsignal(signum));
        finish(d);
        return;
    }
    if (d->phase == PH_DONE) return;
    d->stop_signal = signum;
    log_notice("event=shutdown_requested signal=%s daemon=%llu", strsignal(signum),
               (unsigned long long)d->id.daemon_id);
    if (begin_handoff(d)) return;
    stop_now(d);
}

/* Clean shutdown, step 2: stop serving, record SHUTDOWN, exit. */
static void stop_now(dstate *d)
{
    if (d->phase == PH_STOPPING || d->phase == PH_DONE) return;
    d->handing_off = false;
    uv_timer_stop(&d->stop_timer);
    bool registered = d->phase == PH_RUNNING || d->phase == PH_REJOINING;
    d->phase = PH_STOPPING;
    net_server_quiesce(d->net);
    uv_timer_stop(&d->hb_timer);
    uv_timer_stop(&d->retry_timer);
    if (!registered) {
        uv_timer_start(&d->stop_timer, on_stop_timer, 0, 0);
        return;
    }
    d->redirects = 0;
    d->shutdown_waiting = true;
    uv_timer_start(&d->stop_timer, on_stop_timer, SHUTDOWN_WAIT_MS, 0);
    send_shutdown(d);
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum);
}

/* Closes everything; uv_run returns once the handles are gone. */
static void finish(dstate *d)
{
    if (d->phase == PH_DONE) return;
    d->phase = PH_DONE;
    report_ready(d, false, "stopped by a signal before it registered");
    if (d->net) {
        net_server_close(d->net);
        d->net = NULL;
    }
    if (d->dp) {
        dpart_stop(d->dp); /* fails what is in flight, syncs the store */
        d->dp = NULL;
    }
    uv_timer_t *timers[] = {&d->hb_timer, &d->lease_timer, &d->retry_timer, &d->stop_timer,
                            &d->ready_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        uv_close((uv_handle_t *)timers[i], NULL);
    for (int i = 0; i < 3; i++)
        uv_close((uv_handle_t *)&d->sigs[i], NULL);
    for (size_t i = 0; i < d->coords.n; i++)
        if (d->rc[i]) {
            rclient *c = d->rc[i];
            d->rc[i] = NULL;
            rclient_close(c); /* runs outstanding callbacks now; they see PH_DONE */
        }
}

static void on_coord_reply(void *arg, const resp_reply *reply, int status)
{
    rq *q = arg;
    dstate *d = q->d;
    d->inflight[q->coord]--;
    if (d->phase != PH_DONE) {
        switch (q->kind) {
        case RQ_REGISTER:
            on_register(d, q, reply, status);
            break;
        case RQ_HEARTBEAT:
            on_heartbeat(d, q, reply, status);
            break;
        case RQ_MAP:
            on_map(d, q, reply, status);
            break;
        case RQ_SHUTDOWN:
            on_shutdown(d, q, reply, status);
            break;
        case RQ_HANDOFF:
            if (status < 0 || !reply || reply->type == RESP_R_ERROR)
                log_warn("DAEMON.HANDOFF via %s failed: %s; shutting down without it",
                         coord_name(d, q->coord), status_text(reply, status));
            break;
        case RQ_REPORT: /* a lost report is repeated by repl (CAUGHT_UP) */
            if (status < 0 || !reply || reply->type == RESP_R_ERROR)
                log_info("a report to coordinator %s failed: %s", coord_name(d, q->coord),
                         status_text(reply, status));
            break;
        }
    }
    free(q);
}

/* ---- the client port ------------------------------------------------------------------ */

static bool is(const char *w, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(w, name, len) == 0;
}

static void cmd_info(dstate *d, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    const char *want = argc > 1 ? argv[1] : NULL;
    size_t wlen = argc > 1 ? argvlen[1] : 0;
    uint64_t now = uv_hrtime();
    buf t;
    buf_init(&t);
#define SECTION(name) (!want || is(want, wlen, name) || is(want, wlen, "all"))
    if (SECTION("server")) {
        static const char *const phases[] = {"",          "registering", "running",
                                             "rejoining", "stopping",    "stopping"};
        buf_printf(&t,
                   "# Server\r\nkeel_version:%s\r\nmode:daemon\r\nprocess_id:%d\r\n"
                   "tcp_host:%s\r\ntcp_port:%d\r\npeer_port:%d\r\nuptime_in_seconds:%llu\r\n"
                   "data_dir:%s\r\nstate:%s\r\ndaemon_id:%llu\r\ncluster_id:%016llx\r\n\r\n",
                   KEEL_VERSION, (int)getpid(), d->o.host, d->o.port, d->o.peer_port,
                   (unsigned long long)((wall_ms() - d->start_ms) / 1000), d->o.dir,
                   phases[d->phase], (unsigned long long)d->id.daemon_id,
                   (unsigned long long)d->id.cluster_id);
    }
    if (SECTION("lease")) {
        buf_printf(&t,
                   "# Lease\r\nlease_valid:%d\r\nlease_ms_left:%llu\r\ncoordinator:%s\r\n"
                   "coordinators:",
                   daemon_lease_valid(&d->lease, now) ? 1 : 0,
                   (unsigned long long)daemon_lease_ms_left(&d->lease, now),
                   coord_name(d, d->coords.cur));
        const char *sep = "";
        for (size_t i = 0; i < d->coords.n; i++)
            if (d->coords.listed[i]) {
                buf_printf(&t, "%s%s", sep, coord_name(d, i));
                sep = ",";
            }
        buf_printf(&t,
                   "\r\nheartbeat_ms:%u\r\nping_timeout_ms:%u\r\nheartbeats_ok:%llu\r\n"
                   "heartbeats_failed:%llu\r\n\r\n",
                   d->heartbeat_ms, d->ping_timeout_ms, d->hb_ok, d->hb_failed);
    }
    if (SECTION("map")) {
        buf_printf(&t, "# Map\r\nmap_version:%llu\r\nspaces:%u\r\ndaemons:%u\r\n\r\n",
                   (unsigned long long)(d->map ? d->map->version : 0), d->map ? d->map->nspaces : 0,
                   d->map ? d->map->ndaemons : 0);
    }
#undef SECTION
    resp_add_bulk(net_reply_now(c), t.data, t.len);
    buf_free(&t);
}

static void dispatch(void *arg, net_conn *c, int argc, char **argv, size_t *argvlen)
{
    dstate *d = arg;
    bool fwd = is(argv[0], argvlen[0], "FWD") && argc > 1;
    if (dpart_is_data_command(argv[0], argvlen[0]) ||
        (fwd && dpart_is_data_command(argv[1], argvlen[1]))) {
        if (d->dp)
            dpart_dispatch(d->dp, c, argc, argv, argvlen);
        else
            resp_add_error(net_reply_now(c), "TRYAGAIN this daemon has not registered yet");
        return;
    }
    buf *out = net_reply_now(c);
    if (is(argv[0], argvlen[0], "PING") && argc <= 2) {
        if (argc == 1)
            resp_add_simple(out, "PONG");
        else
            resp_add_bulk(out, argv[1], argvlen[1]);
    } else if (is(argv[0], argvlen[0], "ECHO") && argc == 2) {
        resp_add_bulk(out, argv[1], argvlen[1]);
    } else if (is(argv[0], argvlen[0], "INFO") && argc <= 2) {
        cmd_info(d, c, argc, argv, argvlen);
    } else if (is(argv[0], argvlen[0], "QUIT") && argc == 1) {
        resp_add_simple(out, "OK");
        net_conn_close_after_replies(c);
    } else if (is(argv[0], argvlen[0], "CLUSTER.MAP") &&
               (argc == 1 || (argc == 2 && is(argv[1], argvlen[1], "STALE")))) {
        if (d->map)
            resp_add_bulk(out, d->map_bytes.data, d->map_bytes.len);
        else
            resp_add_error(out, "TRYAGAIN this daemon has no cluster map yet");
    } else if (is(argv[0], argvlen[0], "CLUSTER.ROUTES") &&
               (argc == 1 || (argc == 2 && is(argv[1], argvlen[1], "STALE")))) {
        if (d->map)
            route_encode(d->map, out);
        else
            resp_add_error(out, "TRYAGAIN this daemon has no cluster map yet");
    } else if (is(argv[0], argvlen[0], "CLIENT.REDIRECT") && argc == 2 &&
               (is(argv[1], argvlen[1], "ON") || is(argv[1], argvlen[1], "OFF"))) {
        unsigned f = net_conn_flags(c) & ~DPART_CONN_REDIRECT;
        net_conn_set_flags(c, is(argv[1], argvlen[1], "ON") ? f | DPART_CONN_REDIRECT : f);
        resp_add_simple(out, "OK");
    } else if (is(argv[0], argvlen[0], "CLIENT.REDIRECT")) {
        resp_add_error(out, "ERR usage: CLIENT.REDIRECT ON|OFF");
    } else if (is(argv[0], argvlen[0], "PING") || is(argv[0], argvlen[0], "ECHO") ||
               is(argv[0], argvlen[0], "INFO") || is(argv[0], argvlen[0], "QUIT") ||
               is(argv[0], argvlen[0], "CLUSTER.MAP") || is(argv[0], argvlen[0], "CLUSTER.ROUTES")) {
        resp_add_errorf(out, "ERR wrong number of arguments for '%.*s'", (int)argvlen[0], argv[0]);
    } else if ((argvlen[0] > 6 && !strncasecmp(argv[0], "SPACE.", 6)) ||
               (argvlen[0] > 8 && !strncasecmp(argv[0], "CLUSTER.", 8))) {
        resp_add_errorf(out, "ERR '%.*s' is for a coordinator; this is a daemon (coordinator %s)",
                        (int)(argvlen[0] > 32 ? 32 : argvlen[0]), argv[0],
                        coord_name(d, d->coords.cur));
    } else {
        resp_add_errorf(out, "ERR unknown command '%.*s'", (int)(argvlen[0] > 32 ? 32 : argvlen[0]),
                        argv[0]);
    }
}

/* ---- start-up --------------------------------------------------------------------------- */

static int daemon_run(const daemon_opts *o, int ready_fd)
{
    dstate *d = calloc(1, sizeof *d);
    if (!d) return 1;
    d->o = *o;
    d->ready_fd = ready_fd;
    d->lock_fd = -1;
    d->start_ms = wall_ms();
    d->rpc_timeout_ms = REGISTER_TIMEOUT_MS;
    d->backoff_ms = BACKOFF_MIN_MS;
    d->phase = PH_REGISTERING;
    buf_init(&d->map_bytes);
    daemon_addr first;
    snprintf(first.host, sizeof first.host, "%s", o->coord_host);
    first.port = o->coord_port;
    daemon_coords_init(&d->coords, &first);
    char err[512] = "";
    int status = 1;

    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&d->loop);
    /* Listen first: a taken port must not leave a fresh data directory behind. */
    net_config nc = {
        .host = o->host,
        .port = o->port,
        .limits = {RESP_DEFAULT_MAX_REQUEST, RESP_DEFAULT_MAX_ARGS, RESP_DEFAULT_MAX_BULK},
        .max_conns = MAX_CONNS,
        .dispatch = dispatch,
        .arg = d};
    if (net_server_start(&d->net, &d->loop, &nc, err, sizeof err)) goto err_after_loop;
    if (mkdir(o->dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, sizeof err, "cannot create data directory %s: %s", o->dir, strerror(errno));
        goto err_after_loop;
    }
    if ((d->lock_fd = proc_lock_dir(o->dir, err, sizeof err)) < 0) goto err_after_loop;
    int rc = daemon_identity_load(o->dir, &d->id, err, sizeof err);
    if (rc < 0) goto err_after_lock;
    d->have_identity = rc == 1;

    uv_timer_t *timers[] = {&d->hb_timer, &d->lease_timer, &d->retry_timer, &d->stop_timer,
                            &d->ready_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        uv_timer_init(&d->loop, timers[i]);
        timers[i]->data = d;
    }
    int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&d->loop, &d->sigs[i]);
        d->sigs[i].data = d;
        uv_signal_start(&d->sigs[i], on_signal, signums[i]);
    }
    if (!o->foreground) proc_write_pid(o->dir);
    if (d->have_identity)
        log_notice("event=daemon_started listen=%s:%d peer_port=%d data=%s pid=%d: rejoining as "
                   "daemon %llu of cluster %016llx via %s",
                   o->host, o->port, o->peer_port, o->dir, (int)getpid(),
                   (unsigned long long)d->id.daemon_id, (unsigned long long)d->id.cluster_id,
                   coord_name(d, 0));
    else
        log_notice("event=daemon_started listen=%s:%d peer_port=%d data=%s pid=%d: registering "
                   "a new daemon via %s",
                   o->host, o->port, o->peer_port, o->dir, (int)getpid(), coord_name(d, 0));
    if (d->ready_fd >= 0) uv_timer_start(&d->ready_timer, on_ready_timer, READY_WAIT_MS, 0);
    send_register(d);

    uv_run(&d->loop, UV_RUN_DEFAULT);
    status = d->exit_status;
    log_notice("event=daemon_stopped daemon=%llu status=%d", (unsigned long long)d->id.daemon_id,
               status);
    if (!o->foreground) proc_remove_pid(o->dir);
    err[0] = 0;

err_after_lock:
    if (d->lock_fd >= 0) close(d->lock_fd);
err_after_loop:
    if (d->net) net_server_close(d->net);
    proc_loop_close(&d->loop);
    if (err[0]) {
        log_error("cannot start: %s", err);
        report_ready(d, false, err);
    }
    cmap_free(d->map);
    buf_free(&d->map_bytes);
    free(d);
    return status;
}

int daemon_main(int argc, char **argv)
{
    daemon_opts o;
    int rc = daemon_parse_args(argc, argv, &o);
    if (rc) return rc;
    if (o.help) {
        daemon_usage();
        return 0;
    }
    if (o.foreground) return daemon_run(&o, -1);
    /* The parent waits until the child registered, was refused, failed, or
     * has tried for READY_WAIT_MS, so a mistake fails loudly. */
    char what[128];
    snprintf(what, sizeof what, "daemon on %s:%d", o.host, o.port);
    int is_child, ready_fd;
    rc = proc_daemonize(o.dir, what, &is_child, &ready_fd);
    if (!is_child) return rc;
    _exit(daemon_run(&o, ready_fd));
}
