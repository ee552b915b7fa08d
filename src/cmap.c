/* cmap: the cluster map state machine (interface and model in cmap.h).
 *
 * Design note
 * -----------
 * cmap_apply decodes one command completely, checks every precondition, and
 * only then mutates the map; so a refused command (malformed, or refused for a
 * reason) leaves every byte of the map as it was. Nothing here reads a clock,
 * a random source or the environment: times and ids come inside commands, and
 * placement is a pure function of the map (ONLINE daemons in id order and the
 * new space's id). Out of memory aborts the process, as in buf.c.
 *
 * Invariants, in addition to the seven of cmap.h:
 *   8. At most one daemon per host:port is ONLINE or SUSPECT (ADD_DAEMON and
 *      SET_DAEMON_STATE refuse to create a second one).
 *   9. spaces[] is in creation order, which is also strictly increasing id
 *      order; daemons[] is in strictly increasing id order.
 *  10. An unbootstrapped map (cluster_id 0) is exactly cmap_new(): version 0,
 *      zero settings and counters, no daemons, no spaces.
 *  11. A daemon's since_ms changes only when its state changes.
 *  12. departed[] slots past ndeparted are zero (so cmap_clone copies and
 *      struct comparisons see no stale ids).
 *
 * Health (cmap.h invariant 4) depends on daemon states, so it is recomputed
 * (part_refresh) for every partition a command touches and, on
 * SET_DAEMON_STATE, for every partition that lists the daemon.
 *
 * Daemon states (every transition is SET_DAEMON_STATE, decided by the caller;
 * the state machine only forbids leaving RETIRED):
 *
 *      ADD_DAEMON -> ONLINE <-> SUSPECT <-> OFFLINE <-> SHUTDOWN
 *                    (any state except RETIRED may move to any state)
 *                    any -> RETIRED (final)
 *
 * Command format (all integers big endian; str = u32 length + bytes):
 *
 *     u8 format version (CMAP_CMD_VERSION = 1), u8 type, then
 *     BOOTSTRAP         u64 cluster_id, u8 single_node (0 or 1)
 *     SET_CONFIG        str name, str value (decimal text)
 *     ADD_SPACE         str description (space language)
 *     DROP_SPACE        str name
 *     ADD_DAEMON        str host, u16 port, u16 peer_port, u64 now_ms
 *     SET_DAEMON_STATE  u64 daemon id, u32 state, u64 now_ms
 *     ADD_COORDINATOR   str host, u16 port, str peer host, u16 peer port
 *     REMOVE_COORDINATOR u64 id
 *     REPLICA_FAILED    u64 daemon id
 *     ADD_REPLICA       u32 space id, u32 partition, u64 daemon id
 *     REPLICA_IN_SYNC   u32 space id, u32 partition, u64 daemon id, u64 epoch
 *     HANDOFF           u32 space id, u32 partition, u64 daemon id
 *
 * A command with trailing bytes is malformed.
 *
 * Map encoding, format version CMAP_FORMAT_VERSION (4), big endian:
 *
 *     u8  format version
 *     u64 cluster_id, u64 version
 *     u32 heartbeat_ms, u32 ping_timeout_ms, u32 reprotect_delay_s,
 *     u64 log_retention, u8 single_node
 *     u32 next_space_id, u64 next_daemon_id
 *     u32 ndaemons, then per daemon:
 *         u64 id, str host, u16 port, u16 peer_port, u8 state, u64 since_ms
 *     u32 nspaces, then per space:
 *         u32 id, str schema (space_encode bytes), u32 npartitions, then per
 *         partition: u64 epoch, u8 health, u32 nreplicas, then per replica:
 *             u64 daemon id, u8 state;
 *             format >= 3: u32 ndeparted, then u64 daemon id each
 *     format >= 2: u64 next_coord_id, u32 ncoords, then per coordinator:
 *         u64 id, str host, u16 port, str peer host, u16 peer port
 *     format >= 4: u8 sync requirement (enum cmap_sync)
 *
 * Daemons come before spaces so that the decoder can check replicas against
 * known daemons in one pass. Health is stored and checked against invariant 4
 * (formats 1 and 2: against the rule they were written with, IN_SYNC replicas
 * whatever their daemon's state; then recomputed).
 */
#include "cmap.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

/* ---- constants ---------------------------------------------------------- */

#define CMAP_CMD_VERSION 1
#define SHOW_MAX 64              /* bytes of client text quoted in a message */
#define SHOW_CAP (SHOW_MAX + 4)  /* plus "..." and NUL */
#define DAEMON_MIN_ENCODED 26    /* 8 + 4 + 2 + 2 + 1 + 8 + 1-byte host */
#define SPACE_MIN_ENCODED 12     /* 4 + 4 + 4 */
#define PARTITION_MIN_ENCODED 13 /* 8 + 1 + 4 */
#define REPLICA_ENCODED 9        /* 8 + 1 */
#define FORMAT_DEPARTED 3        /* the first map format with departed lists */

enum setting_id { S_HEARTBEAT, S_PING, S_REPROTECT, S_RETENTION, S_SYNC, S_COUNT };

static const char *const setting_names[S_COUNT + 1] = {
    "heartbeat_ms", "ping_timeout_ms", "reprotect_delay_s", "log_retention", "sync", NULL};
static const uint64_t setting_min[S_COUNT] = {10, 100, 0, 0, 0};
static const uint64_t setting_max[S_COUNT] = {60000, 3600000, 604800, 1000000000000ULL, 3};
static const char *const sync_names[] = {"any", "always", "batch", "none"};

const char *cmap_sync_name(int v)
{
    return v >= 0 && v <= CMAP_SYNC_NONE ? sync_names[v] : "UNKNOWN";
}

#define DEFAULT_HEARTBEAT_MS 250
#define DEFAULT_PING_TIMEOUT_MS 3000
#define DEFAULT_REPROTECT_DELAY_S 60
#define DEFAULT_LOG_RETENTION 1000000

/* ---- a bounds-checked reader -------------------------------------------- */

/* Reads fields from untrusted bytes. Once a read runs past the end, `bad` is
 * set and every later read returns zero/NULL, so callers check once. */
typedef struct rd {
    const unsigned char *p;
    size_t left;
    bool bad;
} rd;

static const unsigned char *rd_bytes(rd *r, size_t n)
{
    if (r->bad || r->left < n) {
        r->bad = true;
        return NULL;
    }
    const unsigned char *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static uint8_t rd_u8(rd *r)
{
    const unsigned char *p = rd_bytes(r, 1);
    return p ? p[0] : 0;
}

static uint16_t rd_u16(rd *r)
{
    const unsigned char *p = rd_bytes(r, 2);
    return p ? get_u16be(p) : 0;
}

static uint32_t rd_u32(rd *r)
{
    const unsigned char *p = rd_bytes(r, 4);
    return p ? get_u32be(p) : 0;
}

static uint64_t rd_u64(rd *r)
{
    const unsigned char *p = rd_bytes(r, 8);
    return p ? get_u64be(p) : 0;
}

/* A u32-length-prefixed string; *len is 0 when the read fails. */
static const char *rd_str(rd *r, size_t *len)
{
    uint32_t n = rd_u32(r);
    const char *s = (const char *)rd_bytes(r, n);
    *len = s ? n : 0;
    return s;
}

static bool rd_done(const rd *r)
{
    return !r->bad && r->left == 0;
}

/* ---- small helpers ------------------------------------------------------ */

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "keel: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}

static void *xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (!q) {
        fprintf(stderr, "keel: out of memory (%zu bytes)\n", size);
        abort();
    }
    return q;
}

static void put_str(buf *out, const void *s, size_t len)
{
    assert(len <= UINT32_MAX);
    buf_put_u32be(out, (uint32_t)len);
    buf_append(out, s, len);
}

static void cmd_head(buf *out, enum cmap_cmd_type type)
{
    buf_putc(out, (char)CMAP_CMD_VERSION);
    buf_putc(out, (char)type);
}

/* Copies client-supplied bytes into dst for quoting in an error line:
 * printable ASCII is kept, anything else becomes '?', and text longer than
 * SHOW_MAX is cut and marked with "...". dst holds SHOW_CAP bytes. */
static const char *show(char *dst, const void *s, size_t n)
{
    const unsigned char *p = s;
    size_t k = n < SHOW_MAX ? n : SHOW_MAX;
    for (size_t i = 0; i < k; i++)
        dst[i] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    dst[k] = '\0';
    if (n > SHOW_MAX) memcpy(dst + k, "...", 4);
    return dst;
}

static int refuse(cmap_result *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse(cmap_result *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->msg, sizeof res->msg, fmt, ap);
    va_end(ap);
    res->status = -1;
    return -1;
}

static int malformed(cmap_result *res)
{
    return refuse(res, "ERR malformed command");
}

static int not_bootstrapped(cmap_result *res)
{
    return refuse(res, "ERR cluster not bootstrapped");
}

/* Case-insensitive (ASCII) match of a NUL-terminated setting name. */
static int setting_find(const char *name, size_t len)
{
    for (int i = 0; i < S_COUNT; i++) {
        const char *s = setting_names[i];
        if (strlen(s) != len) continue;
        size_t j = 0;
        for (; j < len; j++) {
            unsigned char a = (unsigned char)name[j], b = (unsigned char)s[j];
            if (a >= 'A' && a <= 'Z') a = (unsigned char)(a - 'A' + 'a');
            if (a != b) break;
        }
        if (j == len) return i;
    }
    return -1;
}

static uint64_t setting_get(const cmap_settings *s, int i)
{
    switch (i) {
    case S_HEARTBEAT:
        return s->heartbeat_ms;
    case S_PING:
        return s->ping_timeout_ms;
    case S_REPROTECT:
        return s->reprotect_delay_s;
    case S_SYNC:
        return s->sync_required;
    default:
        return s->log_retention;
    }
}

/* v is within setting_min/max[i] (so it fits the field). */
static void setting_set(cmap_settings *s, int i, uint64_t v)
{
    switch (i) {
    case S_HEARTBEAT:
        s->heartbeat_ms = (uint32_t)v;
        break;
    case S_PING:
        s->ping_timeout_ms = (uint32_t)v;
        break;
    case S_REPROTECT:
        s->reprotect_delay_s = (uint32_t)v;
        break;
    case S_SYNC:
        s->sync_required = (uint8_t)v;
        break;
    default:
        s->log_retention = v;
        break;
    }
}

static bool settings_valid(const cmap_settings *s)
{
    for (int i = 0; i < S_COUNT; i++) {
        uint64_t v = setting_get(s, i);
        if (v < setting_min[i] || v > setting_max[i]) return false;
    }
    return (uint64_t)s->ping_timeout_ms > 2 * (uint64_t)s->heartbeat_ms;
}

/* Plain decimal: 1..20 digits, nothing else. Returns false if not decimal or
 * above `max` (so no overflow is possible). */
static bool parse_decimal(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    if (len == 0 || len > 20) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (max - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* Hosts are printable ASCII without spaces: names, IPv4 and IPv6 literals. */
static bool host_chars_valid(const char *h, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)h[i];
        if (c <= 0x20 || c >= 0x7f) return false;
    }
    return true;
}

static bool daemon_live(uint8_t state)
{
    return state == CMAP_D_ONLINE || state == CMAP_D_SUSPECT;
}

/* The ONLINE/SUSPECT daemon at host:port other than `except`, or NULL. */
static const cmap_daemon *live_at(const cmap *m, const char *host, size_t hlen, uint16_t port,
                                  uint64_t except)
{
    for (uint32_t i = 0; i < m->ndaemons; i++) {
        const cmap_daemon *d = &m->daemons[i];
        if (d->id == except || !daemon_live(d->state) || d->port != port) continue;
        if (strlen(d->host) == hlen && memcmp(d->host, host, hlen) == 0) return d;
    }
    return NULL;
}

static bool daemon_online(const cmap *m, uint64_t id)
{
    const cmap_daemon *d = cmap_daemon_find(m, id);
    return d && d->state == CMAP_D_ONLINE;
}

static uint8_t health_from(uint32_t live_in_sync, uint32_t tolerate)
{
    if (live_in_sync == 0) return CMAP_H_UNAVAILABLE;
    return live_in_sync >= tolerate + 1 ? CMAP_H_PROTECTED : CMAP_H_DEGRADED;
}

/* cmap.h invariant 4: only IN_SYNC replicas on ONLINE daemons count. */
static uint8_t health_of(const cmap *m, const cmap_partition *p, uint32_t tolerate)
{
    uint32_t live = 0;
    for (uint32_t i = 0; i < p->nreplicas; i++)
        if (p->replicas[i].state == CMAP_R_IN_SYNC && daemon_online(m, p->replicas[i].daemon))
            live++;
    return health_from(live, tolerate);
}

/* The rule map formats 1 and 2 were written with: IN_SYNC replicas count
 * whatever their daemon's state. */
static uint8_t health_v2(const cmap_partition *p, uint32_t tolerate)
{
    uint32_t in_sync = 0;
    for (uint32_t i = 0; i < p->nreplicas; i++)
        if (p->replicas[i].state == CMAP_R_IN_SYNC) in_sync++;
    return health_from(in_sync, tolerate);
}

/* Recomputes health and drops the departed list of a partition that is
 * PROTECTED again (cmap.h invariants 4 and 7). */
static void part_refresh(const cmap *m, cmap_partition *pt, uint32_t tolerate)
{
    pt->health = health_of(m, pt, tolerate);
    if (pt->health == CMAP_H_PROTECTED) {
        pt->ndeparted = 0;
        memset(pt->departed, 0, sizeof pt->departed);
    }
}

static int replica_index(const cmap_partition *pt, uint64_t daemon)
{
    for (uint32_t i = 0; i < pt->nreplicas; i++)
        if (pt->replicas[i].daemon == daemon) return (int)i;
    return -1;
}

static bool has_in_sync(const cmap_partition *pt)
{
    for (uint32_t i = 0; i < pt->nreplicas; i++)
        if (pt->replicas[i].state == CMAP_R_IN_SYNC) return true;
    return false;
}

/* Index of the first IN_SYNC replica other than `except` on an ONLINE
 * daemon, or -1. */
static int live_in_sync_other(const cmap *m, const cmap_partition *pt, uint32_t except)
{
    for (uint32_t i = 0; i < pt->nreplicas; i++)
        if (i != except && pt->replicas[i].state == CMAP_R_IN_SYNC &&
            daemon_online(m, pt->replicas[i].daemon))
            return (int)i;
    return -1;
}

/* Moves replica i to the front, keeping the others in order. */
static void move_to_front(cmap_partition *pt, uint32_t i)
{
    cmap_replica r = pt->replicas[i];
    memmove(&pt->replicas[1], &pt->replicas[0], i * sizeof pt->replicas[0]);
    pt->replicas[0] = r;
}

static void departed_remove(cmap_partition *pt, uint64_t daemon)
{
    for (uint32_t i = 0; i < pt->ndeparted; i++)
        if (pt->departed[i] == daemon) {
            memmove(&pt->departed[i], &pt->departed[i + 1],
                    (pt->ndeparted - i - 1) * sizeof pt->departed[0]);
            pt->departed[--pt->ndeparted] = 0;
            return;
        }
}

/* Records a removed daemon; when the list is full the oldest is dropped. */
static void departed_add(cmap_partition *pt, uint64_t daemon)
{
    departed_remove(pt, daemon);
    if (pt->ndeparted == CMAP_MAX_REPLICAS) {
        memmove(&pt->departed[0], &pt->departed[1],
                (CMAP_MAX_REPLICAS - 1) * sizeof pt->departed[0]);
        pt->ndeparted--;
    }
    pt->departed[pt->ndeparted++] = daemon;
}

static uint32_t space_index(const cmap *m, const char *name, size_t len)
{
    for (uint32_t i = 0; i < m->nspaces; i++) {
        const char *n = m->spaces[i].schema->name;
        if (strlen(n) == len && memcmp(n, name, len) == 0) return i;
    }
    return UINT32_MAX;
}

static const char *plural(uint64_t n)
{
    return n == 1 ? "" : "s";
}

/* ---- commands ----------------------------------------------------------- */

static int apply_bootstrap(cmap *m, rd *r, cmap_result *res)
{
    uint64_t cluster_id = rd_u64(r);
    uint8_t single = rd_u8(r);
    if (!rd_done(r) || single > 1) return malformed(res);
    if (m->cluster_id != 0) return refuse(res, "ERR cluster already bootstrapped");
    if (cluster_id == 0) return refuse(res, "ERR cluster id must not be 0");

    m->cluster_id = cluster_id;
    m->settings.heartbeat_ms = DEFAULT_HEARTBEAT_MS;
    m->settings.ping_timeout_ms = DEFAULT_PING_TIMEOUT_MS;
    m->settings.reprotect_delay_s = DEFAULT_REPROTECT_DELAY_S;
    m->settings.log_retention = DEFAULT_LOG_RETENTION;
    m->settings.single_node = single == 1;
    m->next_space_id = 1;
    m->next_daemon_id = 1;
    m->next_coord_id = 1;
    return 0;
}

static int apply_set_config(cmap *m, rd *r, cmap_result *res)
{
    size_t nlen, vlen;
    const char *name = rd_str(r, &nlen);
    const char *value = rd_str(r, &vlen);
    if (!rd_done(r)) return malformed(res);
    if (m->cluster_id == 0) return not_bootstrapped(res);

    char shown[SHOW_CAP];
    int i = setting_find(name, nlen);
    if (i < 0) return refuse(res, "ERR unknown setting '%s'", show(shown, name, nlen));
    uint64_t v = 0;
    if (i == S_SYNC) {
        bool known = false;
        for (uint64_t k = 0; k <= CMAP_SYNC_NONE; k++)
            if (strlen(sync_names[k]) == vlen && !memcmp(sync_names[k], value, vlen)) {
                v = k;
                known = true;
            }
        if (!known)
            return refuse(res, "ERR invalid value '%s' for sync (any, always, batch, none)",
                          show(shown, value, vlen));
    } else if (!parse_decimal(value, vlen, setting_max[i], &v) || v < setting_min[i]) {
        return refuse(res, "ERR invalid value '%s' for %s (%" PRIu64 "..%" PRIu64 ")",
                      show(shown, value, vlen), setting_names[i], setting_min[i], setting_max[i]);
    }

    cmap_settings next = m->settings;
    setting_set(&next, i, v);
    if ((uint64_t)next.ping_timeout_ms <= 2 * (uint64_t)next.heartbeat_ms) {
        if (i == S_PING)
            return refuse(res, "ERR ping_timeout_ms must exceed twice heartbeat_ms (%" PRIu32 ")",
                          next.heartbeat_ms);
        return refuse(res,
                      "ERR heartbeat_ms must be less than half of ping_timeout_ms (%" PRIu32 ")",
                      next.ping_timeout_ms);
    }
    m->settings = next;
    return 0;
}

static int apply_add_space(cmap *m, rd *r, cmap_result *res)
{
    size_t len;
    const char *text = rd_str(r, &len);
    if (!rd_done(r)) return malformed(res);
    if (m->cluster_id == 0) return not_bootstrapped(res);

    char err[256] = "";
    space_schema *schema = NULL;
    if (space_parse(text, len, &schema, err, sizeof err) != 0 || !schema) {
        char shown[256];
        size_t n = strnlen(err, sizeof err);
        /* the parser's message is shown whole, but sanitised to one line */
        for (size_t i = 0; i < n; i++)
            shown[i] =
                ((unsigned char)err[i] >= 0x20 && (unsigned char)err[i] < 0x7f) ? err[i] : '?';
        shown[n < sizeof shown ? n : sizeof shown - 1] = '\0';
        if (!shown[0]) return refuse(res, "ERR invalid space description");
        return refuse(res, "ERR %s", shown);
    }
    assert(schema->partitions >= 1 && schema->partitions <= SPACE_MAX_PARTITIONS);
    assert(schema->tolerate <= SPACE_MAX_TOLERATE);

    int rc = 0;
    uint64_t *cand = NULL;
    if (space_index(m, schema->name, strlen(schema->name)) != UINT32_MAX) {
        rc = refuse(res, "ERR space '%s' already exists", schema->name);
        goto out_free_schema;
    }
    if (m->nspaces >= CMAP_MAX_SPACES) {
        rc = refuse(res, "ERR too many spaces (at most %d)", CMAP_MAX_SPACES);
        goto out_free_schema;
    }
    if (m->next_space_id == UINT32_MAX) {
        rc = refuse(res, "ERR space ids exhausted");
        goto out_free_schema;
    }

    /* Placement: ONLINE daemons in id order; partition p starts at
     * candidate (p + id) % n so that primaries rotate evenly. */
    uint32_t want = schema->tolerate + 1;
    uint32_t n = 0;
    cand = xcalloc(m->ndaemons, sizeof *cand);
    for (uint32_t i = 0; i < m->ndaemons; i++)
        if (m->daemons[i].state == CMAP_D_ONLINE) cand[n++] = m->daemons[i].id;
    if (n == 0 || (n < want && !m->settings.single_node)) {
        rc =
            refuse(res,
                   "ERR space '%s' needs %" PRIu32 " daemon%s (tolerate %" PRIu32
                   " failure%s), %" PRIu32 " online",
                   schema->name, want, plural(want), schema->tolerate, plural(schema->tolerate), n);
        goto out_free_cand;
    }
    uint32_t k = want < n ? want : n;
    uint32_t id = m->next_space_id;
    cmap_partition *parts = xcalloc(schema->partitions, sizeof *parts);
    for (uint32_t p = 0; p < schema->partitions; p++) {
        cmap_partition *pt = &parts[p];
        pt->epoch = 1;
        pt->nreplicas = k;
        for (uint32_t j = 0; j < k; j++) {
            pt->replicas[j].daemon = cand[((uint64_t)p + id + j) % n];
            pt->replicas[j].state = CMAP_R_IN_SYNC;
        }
        pt->health = health_of(m, pt, schema->tolerate);
    }

    m->spaces = xrealloc(m->spaces, (m->nspaces + 1) * sizeof *m->spaces);
    m->spaces[m->nspaces++] = (cmap_space){.id = id, .schema = schema, .parts = parts};
    m->next_space_id++;
    res->id = id;
    free(cand);
    return 0;

out_free_cand:
    free(cand);
out_free_schema:
    space_free(schema);
    return rc;
}

static int apply_drop_space(cmap *m, rd *r, cmap_result *res)
{
    size_t len;
    const char *name = rd_str(r, &len);
    if (!rd_done(r)) return malformed(res);
    if (m->cluster_id == 0) return not_bootstrapped(res);

    uint32_t i = space_index(m, name, len);
    if (i == UINT32_MAX) {
        char shown[SHOW_CAP];
        return refuse(res, "NOSPACE no such space '%s'", show(shown, name, len));
    }
    space_free(m->spaces[i].schema);
    free(m->spaces[i].parts);
    memmove(&m->spaces[i], &m->spaces[i + 1], (m->nspaces - i - 1) * sizeof *m->spaces);
    m->nspaces--;
    return 0;
}

static int apply_add_daemon(cmap *m, rd *r, cmap_result *res)
{
    size_t hlen;
    const char *host = rd_str(r, &hlen);
    uint16_t port = rd_u16(r);
    uint16_t peer_port = rd_u16(r);
    uint64_t now_ms = rd_u64(r);
    if (!rd_done(r)) return malformed(res);
    if (m->cluster_id == 0) return not_bootstrapped(res);

    if (hlen == 0) return refuse(res, "ERR daemon host must not be empty");
    if (hlen > CMAP_MAX_HOST)
        return refuse(res, "ERR daemon host is longer than %d bytes", CMAP_MAX_HOST);
    if (!host_chars_valid(host, hlen)) {
        char shown[SHOW_CAP];
        return refuse(res, "ERR invalid daemon host '%s'", show(shown, host, hlen));
    }
    if (port == 0) return refuse(res, "ERR daemon port must not be 0");
    if (peer_port == 0) return refuse(res, "ERR daemon peer port must not be 0");
    const cmap_daemon *other = live_at(m, host, hlen, port, 0);
    if (other)
        return refuse(res, "ERR daemon at %s:%u is already online (id %" PRIu64 ")", other->host,
                      (unsigned)port, other->id);
    if (m->ndaemons >= CMAP_MAX_DAEMONS)
        return refuse(res, "ERR too many daemons (at most %d)", CMAP_MAX_DAEMONS);
    if (m->next_daemon_id == UINT64_MAX) return refuse(res, "ERR daemon ids exhausted");

    m->daemons = xrealloc(m->daemons, (m->ndaemons + 1) * sizeof *m->daemons);
    cmap_daemon *d = &m->daemons[m->ndaemons++];
    memset(d, 0, sizeof *d);
    d->id = m->next_daemon_id++;
    memcpy(d->host, host, hlen);
    d->host[hlen] = '\0';
    d->port = port;
    d->peer_port = peer_port;
    d->state = CMAP_D_ONLINE;
    d->since_ms = now_ms;
    res->id = d->id;
    return 0;
}

static int apply_set_daemon_state(cmap *m, rd *r, cmap_result *res)
{
    uint64_t id = rd_u64(r);
    uint32_t state = rd_u32(r);
    uint64_t now_ms = rd_u64(r);
    if (!rd_done(r) || state < CMAP_D_ONLINE || state > CMAP_D_RETIRED) return malformed(res);
    if (m->cluster_id == 0) return not_bootstrapped(res);

    cmap_daemon *d = (cmap_daemon *)cmap_daemon_find(m, id);
    if (!d) return refuse(res, "ERR no such daemon %" PRIu64, id);
    if (d->state == CMAP_D_RETIRED) return refuse(res, "ERR daemon %" PRIu64 " is retired", id);
    if (daemon_live((uint8_t)state)) {
        const cmap_daemon *other = live_at(m, d->host, strlen(d->host), d->port, d->id);
        if (other)
            return refuse(res, "ERR daemon at %s:%u is already online (id %" PRIu64 ")",
                          other->host, (unsigned)other->port, other->id);
    }
    if (d->state != state) {
        d->state = (uint8_t)state;
        d->since_ms = now_ms;
        /* health counts daemon states (cmap.h invariant 4) */
        for (uint32_t s = 0; s < m->nspaces; s++) {
            cmap_space *sp = &m->spaces[s];
            for (uint32_t p = 0; p < sp->schema->partitions; p++)
                if (replica_index(&sp->parts[p], id) >= 0)
                    part_refresh(m, &sp->parts[p], sp->schema->tolerate);
        }
    }
    return 0;
}

static int apply_add_coordinator(cmap *m, rd *r, cmap_result *res)
{
    size_t hlen, plen;
    const char *host = rd_str(r, &hlen);
    uint16_t port = rd_u16(r);
    const char *peer = rd_str(r, &plen);
    uint16_t peer_port = rd_u16(r);
    if (!rd_done(r)) return malformed(res);
    if (!m->cluster_id) return not_bootstrapped(res);
    if (hlen == 0 || hlen > CMAP_MAX_HOST || !host_chars_valid(host, hlen) || plen == 0 ||
        plen > CMAP_MAX_HOST || !host_chars_valid(peer, plen))
        return refuse(res, "ERR invalid coordinator address");
    if (port == 0 || peer_port == 0) return refuse(res, "ERR coordinator port must not be 0");
    if (m->ncoords >= CMAP_MAX_COORDINATORS)
        return refuse(res, "ERR too many coordinators (at most %d)", CMAP_MAX_COORDINATORS);
    for (uint32_t i = 0; i < m->ncoords; i++) {
        const cmap_coordinator *c = &m->coords[i];
        if ((strlen(c->host) == hlen && !memcmp(c->host, host, hlen) && c->port == port) ||
            (strlen(c->peer_host) == plen && !memcmp(c->peer_host, peer, plen) &&
             c->peer_port == peer_port))
            return refuse(res, "ERR coordinator %llu already uses that address",
                          (unsigned long long)c->id);
    }
    m->coords = xrealloc(m->coords, (m->ncoords + 1) * sizeof *m->coords);
    cmap_coordinator *c = &m->coords[m->ncoords++];
    memset(c, 0, sizeof *c);
    c->id = m->next_coord_id++;
    memcpy(c->host, host, hlen);
    c->port = port;
    memcpy(c->peer_host, peer, plen);
    c->peer_port = peer_port;
    res->id = c->id;
    return 0;
}

static int apply_remove_coordinator(cmap *m, rd *r, cmap_result *res)
{
    uint64_t id = rd_u64(r);
    if (!rd_done(r)) return malformed(res);
    if (!m->cluster_id) return not_bootstrapped(res);
    for (uint32_t i = 0; i < m->ncoords; i++)
        if (m->coords[i].id == id) {
            memmove(&m->coords[i], &m->coords[i + 1], (m->ncoords - i - 1) * sizeof *m->coords);
            m->ncoords--;
            return 0;
        }
    return refuse(res, "ERR no such coordinator %llu", (unsigned long long)id);
}

/* ---- replica commands (failure handling) -------------------------------- */

/* Finds the partition a replica command names, or refuses. */
static int find_part(cmap *m, uint32_t sid, uint32_t part, cmap_space **spp, cmap_partition **ptp,
                     cmap_result *res)
{
    cmap_space *sp = (cmap_space *)cmap_space_by_id(m, sid);
    if (!sp) return refuse(res, "NOSPACE no such space %" PRIu32, sid);
    if (part >= sp->schema->partitions)
        return refuse(res, "ERR space '%s' has no partition %" PRIu32 " (it has %" PRIu32 ")",
                      sp->schema->name, part, sp->schema->partitions);
    *spp = sp;
    *ptp = &sp->parts[part];
    return 0;
}

static int epochs_exhausted(cmap_result *res, const cmap_space *sp, uint32_t part)
{
    return refuse(res, "ERR partition %" PRIu32 " of '%s' has exhausted its epochs", part,
                  sp->schema->name);
}

/* Whether REPLICA_FAILED removes replica k (its daemon is down): a
 * CATCHING_UP replica always (it counts for nothing), an IN_SYNC one only
 * while another IN_SYNC replica is on an ONLINE daemon (cmap.h invariant 6). */
static bool failed_removes(const cmap *m, const cmap_partition *pt, uint32_t k)
{
    if (pt->replicas[k].state != CMAP_R_IN_SYNC) return true;
    return live_in_sync_other(m, pt, k) >= 0;
}

/* Removes daemon id from every partition where failed_removes allows it
 * (from_position 0: anywhere, promoting the first live in-sync replica when
 * the primary goes (I3); 1: only where it is a backup). Decides everything
 * first, so a refusal changes nothing. */
static int remove_daemon(cmap *m, uint64_t id, int from_position, cmap_result *res,
                         const char *nothing)
{
    uint32_t changes = 0;
    for (uint32_t s = 0; s < m->nspaces; s++) {
        const cmap_space *sp = &m->spaces[s];
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            int k = replica_index(pt, id);
            if (k < from_position || !failed_removes(m, pt, (uint32_t)k)) continue;
            if (pt->epoch == UINT64_MAX) return epochs_exhausted(res, sp, p);
            changes++;
        }
    }
    if (!changes) return refuse(res, "ERR daemon %" PRIu64 " %s", id, nothing);

    for (uint32_t s = 0; s < m->nspaces; s++) {
        cmap_space *sp = &m->spaces[s];
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            cmap_partition *pt = &sp->parts[p];
            int k = replica_index(pt, id);
            if (k < from_position || !failed_removes(m, pt, (uint32_t)k)) continue;
            /* I3: the new primary is an IN_SYNC replica of this epoch, on a
             * daemon that can serve; failed_removes checked there is one
             * whenever the removed replica was IN_SYNC */
            int next = k == 0 ? live_in_sync_other(m, pt, 0) : -1;
            if (next > 0) move_to_front(pt, (uint32_t)next);
            uint32_t at = (uint32_t)replica_index(pt, id);
            memmove(&pt->replicas[at], &pt->replicas[at + 1],
                    (pt->nreplicas - at - 1) * sizeof pt->replicas[0]);
            pt->nreplicas--;
            memset(&pt->replicas[pt->nreplicas], 0, sizeof pt->replicas[0]);
            departed_add(pt, id);
            pt->epoch++;
            part_refresh(m, pt, sp->schema->tolerate);
        }
    }
    return 0;
}

static int apply_replica_failed(cmap *m, rd *r, cmap_result *res)
{
    uint64_t id = rd_u64(r);
    if (!rd_done(r)) return malformed(res);
    if (!m->cluster_id) return not_bootstrapped(res);
    const cmap_daemon *d = cmap_daemon_find(m, id);
    if (!d) return refuse(res, "ERR no such daemon %" PRIu64, id);
    /* Only a daemon the map already holds down: the coordinator marks one
     * OFFLINE after its lease must have run out, and a SHUTDOWN daemon has
     * stopped serving (DESIGN I1). */
    if (daemon_live(d->state))
        return refuse(res, "ERR daemon %" PRIu64 " is %s: only a daemon marked down can be failed",
                      id, cmap_daemon_state_name(d->state));
    return remove_daemon(m, id, 0, res, "holds no replica that can be removed");
}

static int apply_remove_backups(cmap *m, rd *r, cmap_result *res)
{
    uint64_t id = rd_u64(r);
    if (!rd_done(r)) return malformed(res);
    if (!m->cluster_id) return not_bootstrapped(res);
    const cmap_daemon *d = cmap_daemon_find(m, id);
    if (!d) return refuse(res, "ERR no such daemon %" PRIu64, id);
    if (d->state == CMAP_D_ONLINE)
        return refuse(res, "ERR daemon %" PRIu64 " is ONLINE: mark it SUSPECT first", id);
    return remove_daemon(m, id, 1, res, "backs up no partition it can leave");
}

static int apply_add_replica(cmap *m, rd *r, cmap_result *res)
{
    uint32_t sid = rd_u32(r);
    uint32_t part = rd_u32(r);
    uint64_t id = rd_u64(r);
    if (!rd_done(r)) return malformed(res);
    if (!m->cluster_id) return not_bootstrapped(res);
    cmap_space *sp;
    cmap_partition *pt;
    if (find_part(m, sid, part, &sp, &pt, res)) return -1;
    const cmap_daemon *d = cmap_daemon_find(m, id);
    if (!d) return refuse(res, "ERR no such daemon %" PRIu64, id);
    if (replica_index(pt, id) >= 0)
        return refuse(res, "ERR daemon %" PRIu64 " already holds partition %" PRIu32 " of '%s'", id,
                      part, sp->schema->name);
    if (d->state != CMAP_D_ONLINE)
        return refuse(res, "ERR daemon %" PRIu64 " is %s: only an ONLINE daemon can take a replica",
                      id, cmap_daemon_state_name(d->state));
    if (pt->nreplicas >= CMAP_MAX_REPLICAS)
        return refuse(res, "ERR partition %" PRIu32 " of '%s' already has %d replicas", part,
                      sp->schema->name, CMAP_MAX_REPLICAS);
    if (pt->epoch == UINT64_MAX) return epochs_exhausted(res, sp, part);

    pt->replicas[pt->nreplicas++] = (cmap_replica){.daemon = id, .state = CMAP_R_CATCHING_UP};
    departed_remove(pt, id);
    pt->epoch++;
    part_refresh(m, pt, sp->schema->tolerate);
    return 0;
}

static int apply_replica_in_sync(cmap *m, rd *r, cmap_result *res)
{
    uint32_t sid = rd_u32(r);
    uint32_t part = rd_u32(r);
    uint64_t id = rd_u64(r);
    uint64_t epoch = rd_u64(r);
    if (!rd_done(r)) return malformed(res);
    if (!m->cluster_id) return not_bootstrapped(res);
    cmap_space *sp;
    cmap_partition *pt;
    if (find_part(m, sid, part, &sp, &pt, res)) return -1;
    const cmap_daemon *d = cmap_daemon_find(m, id);
    if (!d) return refuse(res, "ERR no such daemon %" PRIu64, id);
    int k = replica_index(pt, id);
    if (k < 0)
        return refuse(res,
                      "ERR daemon %" PRIu64 " is not a replica of partition %" PRIu32 " of '%s'",
                      id, part, sp->schema->name);
    if (pt->replicas[k].state == CMAP_R_IN_SYNC)
        return refuse(res,
                      "ERR daemon %" PRIu64 " is already in sync for partition %" PRIu32 " of '%s'",
                      id, part, sp->schema->name);
    /* A report from an older epoch proves nothing about commits made since
     * (docs/replication.md, catching up). */
    if (epoch != pt->epoch)
        return refuse(res,
                      "ERR stale report: partition %" PRIu32 " of '%s' is at epoch %" PRIu64
                      ", not %" PRIu64,
                      part, sp->schema->name, pt->epoch, epoch);
    if (d->state != CMAP_D_ONLINE)
        return refuse(res, "ERR daemon %" PRIu64 " is %s: only an ONLINE replica can be in sync",
                      id, cmap_daemon_state_name(d->state));
    if (!has_in_sync(pt))
        return refuse(res,
                      "ERR partition %" PRIu32 " of '%s' has no in-sync replica to catch up from",
                      part, sp->schema->name);
    if (pt->epoch == UINT64_MAX) return epochs_exhausted(res, sp, part);

    pt->replicas[k].state = CMAP_R_IN_SYNC;
    pt->epoch++;
    part_refresh(m, pt, sp->schema->tolerate);
    return 0;
}

static int apply_handoff(cmap *m, rd *r, cmap_result *res)
{
    uint32_t sid = rd_u32(r);
    uint32_t part = rd_u32(r);
    uint64_t id = rd_u64(r);
    if (!rd_done(r)) return malformed(res);
    if (!m->cluster_id) return not_bootstrapped(res);
    cmap_space *sp;
    cmap_partition *pt;
    if (find_part(m, sid, part, &sp, &pt, res)) return -1;
    const cmap_daemon *d = cmap_daemon_find(m, id);
    if (!d) return refuse(res, "ERR no such daemon %" PRIu64, id);
    int k = replica_index(pt, id);
    if (k < 0)
        return refuse(res,
                      "ERR daemon %" PRIu64 " is not a replica of partition %" PRIu32 " of '%s'",
                      id, part, sp->schema->name);
    if (k == 0)
        return refuse(
            res, "ERR daemon %" PRIu64 " is already the primary of partition %" PRIu32 " of '%s'",
            id, part, sp->schema->name);
    if (pt->replicas[k].state != CMAP_R_IN_SYNC)
        return refuse(res,
                      "ERR daemon %" PRIu64 " is not in sync for partition %" PRIu32 " of '%s'", id,
                      part, sp->schema->name);
    if (d->state != CMAP_D_ONLINE)
        return refuse(res,
                      "ERR daemon %" PRIu64 " is %s: only an ONLINE replica can become primary", id,
                      cmap_daemon_state_name(d->state));
    if (pt->epoch == UINT64_MAX) return epochs_exhausted(res, sp, part);

    move_to_front(pt, (uint32_t)k);
    pt->epoch++;
    part_refresh(m, pt, sp->schema->tolerate);
    return 0;
}

/* ---- public API --------------------------------------------------------- */

cmap *cmap_new(void)
{
    return xcalloc(1, sizeof(cmap));
}

cmap *cmap_clone(const cmap *m)
{
    cmap *c = xcalloc(1, sizeof *c);
    *c = *m;
    c->daemons = NULL;
    c->coords = NULL;
    c->spaces = NULL;
    if (m->ndaemons) {
        c->daemons = xcalloc(m->ndaemons, sizeof *c->daemons);
        memcpy(c->daemons, m->daemons, m->ndaemons * sizeof *c->daemons);
    }
    if (m->ncoords) {
        c->coords = xcalloc(m->ncoords, sizeof *c->coords);
        memcpy(c->coords, m->coords, m->ncoords * sizeof *c->coords);
    }
    if (m->nspaces) {
        c->spaces = xcalloc(m->nspaces, sizeof *c->spaces);
        for (uint32_t i = 0; i < m->nspaces; i++) {
            const cmap_space *from = &m->spaces[i];
            cmap_space *to = &c->spaces[i];
            to->id = from->id;
            to->schema = space_dup(from->schema);
            to->parts = xcalloc(from->schema->partitions, sizeof *to->parts);
            memcpy(to->parts, from->parts, from->schema->partitions * sizeof *to->parts);
        }
    }
    return c;
}

void cmap_free(cmap *m)
{
    if (!m) return;
    for (uint32_t i = 0; i < m->nspaces; i++) {
        if (m->spaces[i].schema) space_free(m->spaces[i].schema);
        free(m->spaces[i].parts);
    }
    free(m->spaces);
    free(m->daemons);
    free(m->coords);
    free(m);
}

int cmap_apply(cmap *m, const void *cmd, size_t len, cmap_result *res)
{
    cmap_result scratch;
    if (!res) res = &scratch;
    memset(res, 0, sizeof *res);
    if (!cmd) return malformed(res);

    rd r = {cmd, len, false};
    uint8_t version = rd_u8(&r);
    uint8_t type = rd_u8(&r);
    if (r.bad || version != CMAP_CMD_VERSION) return malformed(res);

    int rc;
    switch (type) {
    case CMAP_CMD_BOOTSTRAP:
        rc = apply_bootstrap(m, &r, res);
        break;
    case CMAP_CMD_SET_CONFIG:
        rc = apply_set_config(m, &r, res);
        break;
    case CMAP_CMD_ADD_SPACE:
        rc = apply_add_space(m, &r, res);
        break;
    case CMAP_CMD_DROP_SPACE:
        rc = apply_drop_space(m, &r, res);
        break;
    case CMAP_CMD_ADD_DAEMON:
        rc = apply_add_daemon(m, &r, res);
        break;
    case CMAP_CMD_SET_DAEMON_STATE:
        rc = apply_set_daemon_state(m, &r, res);
        break;
    case CMAP_CMD_ADD_COORDINATOR:
        rc = apply_add_coordinator(m, &r, res);
        break;
    case CMAP_CMD_REMOVE_COORDINATOR:
        rc = apply_remove_coordinator(m, &r, res);
        break;
    case CMAP_CMD_REPLICA_FAILED:
        rc = apply_replica_failed(m, &r, res);
        break;
    case CMAP_CMD_ADD_REPLICA:
        rc = apply_add_replica(m, &r, res);
        break;
    case CMAP_CMD_REPLICA_IN_SYNC:
        rc = apply_replica_in_sync(m, &r, res);
        break;
    case CMAP_CMD_HANDOFF:
        rc = apply_handoff(m, &r, res);
        break;
    case CMAP_CMD_REMOVE_BACKUPS:
        rc = apply_remove_backups(m, &r, res);
        break;
    default:
        return malformed(res);
    }
    if (rc == 0) m->version++;
    res->status = rc;
    return rc;
}

void cmap_cmd_bootstrap(buf *out, uint64_t cluster_id, bool single_node)
{
    cmd_head(out, CMAP_CMD_BOOTSTRAP);
    buf_put_u64be(out, cluster_id);
    buf_putc(out, single_node ? 1 : 0);
}

void cmap_cmd_set_config(buf *out, const char *name, const char *value)
{
    cmd_head(out, CMAP_CMD_SET_CONFIG);
    put_str(out, name, strlen(name));
    put_str(out, value, strlen(value));
}

void cmap_cmd_add_space(buf *out, const char *text, size_t len)
{
    cmd_head(out, CMAP_CMD_ADD_SPACE);
    put_str(out, text, len);
}

void cmap_cmd_drop_space(buf *out, const char *name, size_t len)
{
    cmd_head(out, CMAP_CMD_DROP_SPACE);
    put_str(out, name, len);
}

void cmap_cmd_add_daemon(buf *out, const char *host, uint16_t port, uint16_t peer_port,
                         uint64_t now_ms)
{
    cmd_head(out, CMAP_CMD_ADD_DAEMON);
    put_str(out, host, strlen(host));
    buf_put_u16be(out, port);
    buf_put_u16be(out, peer_port);
    buf_put_u64be(out, now_ms);
}

/* A state outside the enum (negative included) encodes as a u32 that
 * cmap_apply refuses as malformed. */
void cmap_cmd_set_daemon_state(buf *out, uint64_t daemon_id, int state, uint64_t now_ms)
{
    cmd_head(out, CMAP_CMD_SET_DAEMON_STATE);
    buf_put_u64be(out, daemon_id);
    buf_put_u32be(out, (uint32_t)state);
    buf_put_u64be(out, now_ms);
}

void cmap_cmd_add_coordinator(buf *out, const char *host, uint16_t port, const char *peer_host,
                              uint16_t peer_port)
{
    cmd_head(out, CMAP_CMD_ADD_COORDINATOR);
    put_str(out, host, strlen(host));
    buf_put_u16be(out, port);
    put_str(out, peer_host, strlen(peer_host));
    buf_put_u16be(out, peer_port);
}

void cmap_cmd_remove_coordinator(buf *out, uint64_t id)
{
    cmd_head(out, CMAP_CMD_REMOVE_COORDINATOR);
    buf_put_u64be(out, id);
}

void cmap_cmd_replica_failed(buf *out, uint64_t daemon_id)
{
    cmd_head(out, CMAP_CMD_REPLICA_FAILED);
    buf_put_u64be(out, daemon_id);
}

static void part_cmd(buf *out, enum cmap_cmd_type type, uint32_t space_id, uint32_t part,
                     uint64_t daemon_id)
{
    cmd_head(out, type);
    buf_put_u32be(out, space_id);
    buf_put_u32be(out, part);
    buf_put_u64be(out, daemon_id);
}

void cmap_cmd_add_replica(buf *out, uint32_t space_id, uint32_t part, uint64_t daemon_id)
{
    part_cmd(out, CMAP_CMD_ADD_REPLICA, space_id, part, daemon_id);
}

void cmap_cmd_replica_in_sync(buf *out, uint32_t space_id, uint32_t part, uint64_t daemon_id,
                              uint64_t epoch)
{
    part_cmd(out, CMAP_CMD_REPLICA_IN_SYNC, space_id, part, daemon_id);
    buf_put_u64be(out, epoch);
}

void cmap_cmd_handoff(buf *out, uint32_t space_id, uint32_t part, uint64_t new_primary)
{
    part_cmd(out, CMAP_CMD_HANDOFF, space_id, part, new_primary);
}

void cmap_cmd_remove_backups(buf *out, uint64_t daemon_id)
{
    cmd_head(out, CMAP_CMD_REMOVE_BACKUPS);
    buf_put_u64be(out, daemon_id);
}

const cmap_coordinator *cmap_coordinator_find(const cmap *m, uint64_t id)
{
    for (uint32_t i = 0; i < m->ncoords; i++)
        if (m->coords[i].id == id) return &m->coords[i];
    return NULL;
}

const cmap_space *cmap_space_find(const cmap *m, const char *name, size_t len)
{
    uint32_t i = space_index(m, name, len);
    return i == UINT32_MAX ? NULL : &m->spaces[i];
}

const cmap_space *cmap_space_by_id(const cmap *m, uint32_t id)
{
    for (uint32_t i = 0; i < m->nspaces; i++)
        if (m->spaces[i].id == id) return &m->spaces[i];
    return NULL;
}

const cmap_daemon *cmap_daemon_find(const cmap *m, uint64_t id)
{
    uint32_t lo = 0, hi = m->ndaemons; /* daemons[] is sorted by id (invariant 9) */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->daemons[mid].id == id) return &m->daemons[mid];
        if (m->daemons[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

uint32_t cmap_partition_of(const cmap_space *sp, const void *key, size_t len)
{
    return (uint32_t)(XXH64(key, len, 0) % sp->schema->partitions);
}

int cmap_config_get(const cmap *m, const char *name, buf *out)
{
    int i = setting_find(name, strlen(name));
    if (i < 0) return -1;
    if (i == S_SYNC)
        buf_puts(out, cmap_sync_name(m->settings.sync_required));
    else
        buf_printf(out, "%" PRIu64, setting_get(&m->settings, i));
    return 0;
}

const char *const *cmap_config_names(void)
{
    return setting_names;
}

const char *cmap_daemon_state_name(int state)
{
    switch (state) {
    case CMAP_D_ONLINE:
        return "ONLINE";
    case CMAP_D_SUSPECT:
        return "SUSPECT";
    case CMAP_D_OFFLINE:
        return "OFFLINE";
    case CMAP_D_SHUTDOWN:
        return "SHUTDOWN";
    case CMAP_D_RETIRED:
        return "RETIRED";
    default:
        return "UNKNOWN";
    }
}

const char *cmap_replica_state_name(int state)
{
    switch (state) {
    case CMAP_R_IN_SYNC:
        return "IN_SYNC";
    case CMAP_R_CATCHING_UP:
        return "CATCHING_UP";
    default:
        return "UNKNOWN";
    }
}

const char *cmap_health_name(int health)
{
    switch (health) {
    case CMAP_H_PROTECTED:
        return "PROTECTED";
    case CMAP_H_DEGRADED:
        return "DEGRADED";
    case CMAP_H_UNAVAILABLE:
        return "UNAVAILABLE";
    default:
        return "UNKNOWN";
    }
}

void cmap_encode(const cmap *m, buf *out)
{
    buf_putc(out, (char)CMAP_FORMAT_VERSION);
    buf_put_u64be(out, m->cluster_id);
    buf_put_u64be(out, m->version);
    buf_put_u32be(out, m->settings.heartbeat_ms);
    buf_put_u32be(out, m->settings.ping_timeout_ms);
    buf_put_u32be(out, m->settings.reprotect_delay_s);
    buf_put_u64be(out, m->settings.log_retention);
    buf_putc(out, m->settings.single_node ? 1 : 0);
    buf_put_u32be(out, m->next_space_id);
    buf_put_u64be(out, m->next_daemon_id);

    buf_put_u32be(out, m->ndaemons);
    for (uint32_t i = 0; i < m->ndaemons; i++) {
        const cmap_daemon *d = &m->daemons[i];
        buf_put_u64be(out, d->id);
        put_str(out, d->host, strlen(d->host));
        buf_put_u16be(out, d->port);
        buf_put_u16be(out, d->peer_port);
        buf_putc(out, (char)d->state);
        buf_put_u64be(out, d->since_ms);
    }

    buf_put_u32be(out, m->nspaces);
    buf schema;
    buf_init(&schema);
    for (uint32_t i = 0; i < m->nspaces; i++) {
        const cmap_space *sp = &m->spaces[i];
        buf_put_u32be(out, sp->id);
        buf_reset(&schema);
        space_encode(sp->schema, &schema);
        put_str(out, schema.data, schema.len);
        buf_put_u32be(out, sp->schema->partitions);
        for (uint32_t p = 0; p < sp->schema->partitions; p++) {
            const cmap_partition *pt = &sp->parts[p];
            buf_put_u64be(out, pt->epoch);
            buf_putc(out, (char)pt->health);
            buf_put_u32be(out, pt->nreplicas);
            for (uint32_t j = 0; j < pt->nreplicas; j++) {
                buf_put_u64be(out, pt->replicas[j].daemon);
                buf_putc(out, (char)pt->replicas[j].state);
            }
            /* format 3: departed daemons */
            buf_put_u32be(out, pt->ndeparted);
            for (uint32_t j = 0; j < pt->ndeparted; j++)
                buf_put_u64be(out, pt->departed[j]);
        }
    }
    buf_free(&schema);

    /* format 2: coordinators */
    buf_put_u64be(out, m->next_coord_id);
    buf_put_u32be(out, m->ncoords);
    for (uint32_t i = 0; i < m->ncoords; i++) {
        const cmap_coordinator *c = &m->coords[i];
        buf_put_u64be(out, c->id);
        put_str(out, c->host, strlen(c->host));
        buf_put_u16be(out, c->port);
        put_str(out, c->peer_host, strlen(c->peer_host));
        buf_put_u16be(out, c->peer_port);
    }
    /* format 4: the sync requirement */
    buf_putc(out, (char)m->settings.sync_required);
}

static bool decode_host(rd *r, char *dst)
{
    size_t len;
    const char *h = rd_str(r, &len);
    if (r->bad || len == 0 || len > CMAP_MAX_HOST || !host_chars_valid(h, len)) return false;
    memcpy(dst, h, len);
    dst[len] = '\0';
    return true;
}

static bool decode_coordinators(rd *r, cmap *m)
{
    m->next_coord_id = rd_u64(r);
    uint32_t n = rd_u32(r);
    if (r->bad || n > CMAP_MAX_COORDINATORS) return false;
    if (m->cluster_id == 0 ? (m->next_coord_id || n) : m->next_coord_id == 0) return false;
    if (n) m->coords = xcalloc(n, sizeof *m->coords);
    for (uint32_t i = 0; i < n; i++) {
        cmap_coordinator *c = &m->coords[i];
        c->id = rd_u64(r);
        if (!decode_host(r, c->host)) return false;
        c->port = rd_u16(r);
        if (!decode_host(r, c->peer_host)) return false;
        c->peer_port = rd_u16(r);
        if (r->bad || c->port == 0 || c->peer_port == 0) return false;
        if (c->id <= (i ? m->coords[i - 1].id : 0) || c->id >= m->next_coord_id) return false;
        m->ncoords = i + 1;
    }
    return true;
}

/* Decodes one daemon; checks its own fields and its order after `prev_id`. */
static bool decode_daemon(rd *r, const cmap *m, uint64_t prev_id, cmap_daemon *d)
{
    d->id = rd_u64(r);
    size_t hlen;
    const char *host = rd_str(r, &hlen);
    d->port = rd_u16(r);
    d->peer_port = rd_u16(r);
    d->state = rd_u8(r);
    d->since_ms = rd_u64(r);
    if (r->bad) return false;
    if (d->id <= prev_id || d->id >= m->next_daemon_id) return false;
    if (hlen == 0 || hlen > CMAP_MAX_HOST || !host_chars_valid(host, hlen)) return false;
    memcpy(d->host, host, hlen);
    d->host[hlen] = '\0';
    if (d->port == 0 || d->peer_port == 0) return false;
    return d->state >= CMAP_D_ONLINE && d->state <= CMAP_D_RETIRED;
}

static bool decode_partition(rd *r, const cmap *m, const space_schema *schema, int format,
                             cmap_partition *pt)
{
    pt->epoch = rd_u64(r);
    pt->health = rd_u8(r);
    uint32_t nrep = rd_u32(r);
    if (r->bad || pt->epoch == 0 || nrep > CMAP_MAX_REPLICAS) return false;
    pt->nreplicas = nrep;
    for (uint32_t j = 0; j < nrep; j++) {
        cmap_replica *rep = &pt->replicas[j];
        rep->daemon = rd_u64(r);
        rep->state = rd_u8(r);
        if (r->bad) return false;
        if (rep->state != CMAP_R_IN_SYNC && rep->state != CMAP_R_CATCHING_UP) return false;
        if (!cmap_daemon_find(m, rep->daemon)) return false;
        for (uint32_t q = 0; q < j; q++)
            if (pt->replicas[q].daemon == rep->daemon) return false;
    }
    /* cmap.h invariant 3: the primary is IN_SYNC whenever any replica is */
    if (has_in_sync(pt) && pt->replicas[0].state != CMAP_R_IN_SYNC) return false;
    if (format < FORMAT_DEPARTED) {
        if (pt->health != health_v2(pt, schema->tolerate)) return false;
        pt->health = health_of(m, pt, schema->tolerate);
        return true;
    }
    uint32_t ndep = rd_u32(r);
    if (r->bad || ndep > CMAP_MAX_REPLICAS) return false;
    for (uint32_t j = 0; j < ndep; j++) {
        uint64_t id = rd_u64(r);
        if (r->bad || !cmap_daemon_find(m, id) || replica_index(pt, id) >= 0) return false;
        for (uint32_t q = 0; q < j; q++)
            if (pt->departed[q] == id) return false;
        pt->departed[j] = id;
        pt->ndeparted = j + 1;
    }
    if (pt->health != health_of(m, pt, schema->tolerate)) return false;
    return pt->health != CMAP_H_PROTECTED || pt->ndeparted == 0; /* invariant 7 */
}

/* Decodes one space into m->spaces[m->nspaces] and counts it once its
 * schema is owned, so cmap_free releases whatever was decoded so far. */
static bool decode_space(rd *r, cmap *m, uint32_t prev_id, int format)
{
    cmap_space *sp = &m->spaces[m->nspaces];
    sp->id = rd_u32(r);
    size_t slen;
    const char *sbytes = rd_str(r, &slen);
    if (r->bad || sp->id <= prev_id || sp->id >= m->next_space_id) return false;
    if (space_decode(sbytes, slen, &sp->schema) != 0 || !sp->schema) {
        sp->schema = NULL;
        return false;
    }
    m->nspaces++;
    const space_schema *schema = sp->schema;
    if (!memchr(schema->name, '\0', sizeof schema->name)) return false;
    if (schema->partitions < 1 || schema->partitions > SPACE_MAX_PARTITIONS) return false;
    if (schema->tolerate > SPACE_MAX_TOLERATE) return false;
    if (space_index(m, schema->name, strlen(schema->name)) != m->nspaces - 1) return false;

    uint32_t nparts = rd_u32(r);
    if (r->bad || nparts != schema->partitions) return false;
    if (r->left / PARTITION_MIN_ENCODED < nparts) return false;
    sp->parts = xcalloc(nparts, sizeof *sp->parts);
    for (uint32_t p = 0; p < nparts; p++)
        if (!decode_partition(r, m, schema, format, &sp->parts[p])) return false;
    return true;
}

int cmap_decode(const void *data, size_t len, cmap **out)
{
    *out = NULL;
    if (!data) return -1;
    rd r = {data, len, false};
    cmap *m = cmap_new();

    uint8_t format = rd_u8(&r);
    if (format < 1 || format > CMAP_FORMAT_VERSION) goto err_after_map;
    m->cluster_id = rd_u64(&r);
    m->version = rd_u64(&r);
    m->settings.heartbeat_ms = rd_u32(&r);
    m->settings.ping_timeout_ms = rd_u32(&r);
    m->settings.reprotect_delay_s = rd_u32(&r);
    m->settings.log_retention = rd_u64(&r);
    uint8_t single = rd_u8(&r);
    m->next_space_id = rd_u32(&r);
    m->next_daemon_id = rd_u64(&r);
    if (r.bad || single > 1) goto err_after_map;
    m->settings.single_node = single == 1;

    if (m->cluster_id == 0) {
        /* invariant 10: the only unbootstrapped map is cmap_new() */
        const cmap_settings *s = &m->settings;
        if (s->heartbeat_ms || s->ping_timeout_ms || s->reprotect_delay_s || s->log_retention ||
            s->single_node)
            goto err_after_map;
        if (m->version || m->next_space_id || m->next_daemon_id) goto err_after_map;
    } else {
        if (m->version == 0 || !settings_valid(&m->settings)) goto err_after_map;
        if (m->next_space_id == 0 || m->next_daemon_id == 0) goto err_after_map;
    }

    uint32_t nd = rd_u32(&r);
    if (r.bad || nd > CMAP_MAX_DAEMONS || r.left / DAEMON_MIN_ENCODED < nd) goto err_after_map;
    if (nd) m->daemons = xcalloc(nd, sizeof *m->daemons);
    for (uint32_t i = 0; i < nd; i++) {
        uint64_t prev = i ? m->daemons[i - 1].id : 0;
        if (!decode_daemon(&r, m, prev, &m->daemons[i])) goto err_after_map;
        m->ndaemons = i + 1;
        const cmap_daemon *d = &m->daemons[i];
        if (daemon_live(d->state) && live_at(m, d->host, strlen(d->host), d->port, d->id))
            goto err_after_map; /* invariant 8 */
    }

    uint32_t ns = rd_u32(&r);
    if (r.bad || ns > CMAP_MAX_SPACES || r.left / SPACE_MIN_ENCODED < ns) goto err_after_map;
    if (ns) m->spaces = xcalloc(ns, sizeof *m->spaces);
    for (uint32_t i = 0; i < ns; i++) {
        uint32_t prev = i ? m->spaces[i - 1].id : 0;
        if (!decode_space(&r, m, prev, format)) goto err_after_map;
    }
    if (format >= 2 && !decode_coordinators(&r, m)) goto err_after_map;
    if (format == 1 && m->cluster_id) m->next_coord_id = 1;
    if (format >= 4) {
        m->settings.sync_required = rd_u8(&r);
        if (r.bad || m->settings.sync_required > CMAP_SYNC_NONE ||
            (m->cluster_id == 0 && m->settings.sync_required))
            goto err_after_map;
    }
    if (!rd_done(&r)) goto err_after_map;

    *out = m;
    return 0;

err_after_map:
    cmap_free(m);
    return -1;
}
