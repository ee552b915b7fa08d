/*
 * bench/redis_wait.c — a closed-loop RESP load generator for
 * bench/replication_compare.sh: N connections, one request outstanding on
 * each (pipeline 1), random keys, fixed-size values; prints throughput and
 * p50/p99 latency. Plain sockets and one epoll loop, like redis-benchmark,
 * so it needs no client library.
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
 * Connections are spread over the given ports round-robin (connection i goes
 * to port i mod nports), so a keel run can address every daemon.
 *
 * Output, one line on stdout (the script parses it):
 *   requests=N errors=E seconds=S rps=R p50_ms=A p99_ms=B max_ms=C
 * and up to 5 of the error replies on stderr.
 *
 * Invariants:
 *   1. At most one request is outstanding per connection; a request's
 *      latency runs from just before its first byte is written to the moment
 *      its last expected reply is fully parsed.
 *   2. Every reply is parsed completely (nested arrays, bulk strings split
 *      over reads); bytes that are not RESP end the run with status 1.
 *   3. The run is bounded: after TIMEOUT seconds (-T) it stops with status 1.
 *   4. Exit status 0 only if every request completed; an error reply counts
 *      in errors= and makes the status 3, so the script can refuse the run.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_SETWAIT, M_SET, M_PUT, M_GET };

typedef struct {
    int fd;
    uint64_t rng;
    char *out;          /* the request being written */
    size_t outlen, outoff;
    char *in;           /* unparsed reply bytes */
    size_t inlen, incap;
    int want;           /* replies still expected for the current request */
    bool busy;
    uint64_t t0;        /* ns, when the current request was started */
} conn;

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

static void die(const char *what)
{
    fprintf(stderr, "redis_wait: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
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

/* Builds the next request into c->out and sets how many replies it needs. */
static void build(conn *c)
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
static bool flush_out(conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) return true;
            return false;
        }
        c->outoff += (size_t)w;
    }
    return true;
}

static void start(conn *c)
{
    build(c);
    c->busy = true;
    c->t0 = now_ns();
    if (!flush_out(c)) die("write");
}

/* Consumes complete replies; finishes the request when all have arrived. */
static void consume(conn *c)
{
    size_t off = 0;
    while (c->busy && off < c->inlen) {
        char kind;
        long iv = 0;
        bool nil;
        long r = parse(c->in + off, c->inlen - off, &kind, &iv, &nil);
        if (r == 0) break;
        if (r < 0) {
            fprintf(stderr, "redis_wait: malformed reply from the server\n");
            exit(1);
        }
        const char *p = c->in + off;
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
    if (c->inlen > off && !c->busy) {
        fprintf(stderr, "redis_wait: unexpected bytes from the server\n");
        exit(1);
    }
    memmove(c->in, c->in + off, c->inlen - off);
    c->inlen -= off;
}

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
            "usage: redis_wait -m setwait|set|put|get -p PORT[,PORT...] [-h HOST] [-c CONNS]\n"
            "                  [-n REQUESTS] [-r KEYSPACE] [-d DATA] [-s SPACE] [-w REPLICAS]\n"
            "                  [-S] [-T TIMEOUT_S]\n"
            "  put needs -s SPACE; get with -s sends GET SPACE key (keel)\n"
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
    const char *host = "127.0.0.1", *ports = NULL, *mode = NULL;
    long conns = 50, timeout_s = 600;
    g_total = 100000;
    int opt;
    while ((opt = getopt(argc, argv, "h:p:c:n:r:d:s:m:w:ST:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': ports = optarg; break;
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
    if (!ports || !mode || optind != argc || g_data > 1 << 20) {
        usage(stderr);
        return 2;
    }
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
    if (g_space && strlen(g_space) > 200) {
        fprintf(stderr, "redis_wait: space name too long\n");
        return 2;
    }
    if (conns > g_total) conns = g_total;

    long port_list[64];
    int nports = 0;
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

    g_value = xmalloc(g_data);
    memset(g_value, 'x', g_data);
    g_lat = xmalloc(sizeof *g_lat * (size_t)g_total);

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    conn *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs) die("calloc");
    size_t outcap = g_data + 512;
    for (long i = 0; i < conns; i++) {
        conn *c = &cs[i];
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)port_list[i % nports])};
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
            fprintf(stderr, "redis_wait: bad IPv4 address '%s'\n", host);
            return 2;
        }
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0) die("socket");
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa)) die("connect");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        c->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) ^ now_ns();
        if (!c->rng) c->rng = 1;
        c->out = xmalloc(outcap);
        c->incap = 65536;
        c->in = xmalloc(c->incap);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev)) die("epoll_ctl");
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
            conn *c = evs[i].data.ptr;
            if (evs[i].events & EPOLLOUT && c->busy && !flush_out(c)) die("write");
            if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            for (;;) {
                if (c->inlen == c->incap) {
                    c->incap *= 2;
                    c->in = realloc(c->in, c->incap);
                    if (!c->in) die("realloc");
                }
                ssize_t r = read(c->fd, c->in + c->inlen, c->incap - c->inlen);
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    if (errno == EINTR) continue;
                    die("read");
                }
                if (r == 0) {
                    fprintf(stderr, "redis_wait: the server closed a connection\n");
                    return 1;
                }
                c->inlen += (size_t)r;
                consume(c);
            }
        }
    }
    double secs = (double)(now_ns() - t_start) / 1e9;
    qsort(g_lat, (size_t)g_done, sizeof *g_lat, cmp_u32);
    printf("requests=%ld errors=%ld seconds=%.3f rps=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
           g_done, g_errors, secs, (double)g_done / secs, pct(g_done, 50), pct(g_done, 99),
           g_lat[g_done - 1] / 1000.0);
    for (long i = 0; i < conns; i++) {
        close(cs[i].fd);
        free(cs[i].out);
        free(cs[i].in);
    }
    free(cs);
    free(g_lat);
    free(g_value);
    close(ep);
    return g_errors ? 3 : 0;
}
