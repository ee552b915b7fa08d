/* local: `keel local` — a whole cluster on loopback as child processes of
 * one foreground command (local.h; docs/local.md).
 *
 * Design note
 * -----------
 * keel local is a small supervisor with no event loop: every signal it cares
 * about (SIGINT, SIGTERM, SIGHUP, SIGCHLD) is blocked and taken with
 * sigtimedwait, so all of its work happens in one thread in program order and
 * no signal handler touches its state. Children are `/proc/self/exe
 * coordinator|daemon -f ...` (the very binary that runs, even if the file was
 * rebuilt meanwhile), each with stdin from /dev/null and stdout and stderr
 * appended to DIR/<name>.log.
 *
 *   start:   check DIR, its layout and every port  (prepare)
 *            coordinators: a fresh cluster's first one, then the joiners
 *            (all at once on a restart), then the daemons (start_all)
 *            poll CLUSTER.STATUS on coordinator-1 until ready  (wait_ready)
 *   run:     report any child that dies; keep the others  (run_foreground)
 *   stop:    daemons one by one, then the coordinators together: SIGTERM,
 *            a bounded wait, SIGKILL  (stop_all)
 *
 * Invariants:
 *   1. Nothing is started unless DIR is new, empty, or a keel local cluster
 *      whose recorded layout (DIR/local.conf) the flags agree with, no child
 *      data directory is in use, and every port the cluster needs (client
 *      and peer ports of every member) can be bound on 127.0.0.1.
 *   2. Every child runs in its own process group, so a Ctrl-C on the terminal
 *      reaches keel local alone and the stop order (daemons, then
 *      coordinators) is its decision; every child has PR_SET_PDEATHSIG
 *      SIGTERM, so if keel local itself is killed the children still stop
 *      cleanly instead of lingering.
 *   3. Every wait is bounded: start-up (--ready-timeout), each stop
 *      (--stop-timeout, then SIGKILL), each status request.
 *   4. keel local returns only after every child it started has been reaped
 *      (a child that survives SIGKILL for LOCAL_KILL_MS is reported, since
 *      then nothing more can be done).
 */
#include "local.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <dirent.h>

#include "buf.h"
#include "daemon.h"
#include "json.h"
#include "proc.h"
#include "resp.h"
#include "rstore.h"

/* ---- constants --------------------------------------------------------------------- */

#define LOCAL_HOST "127.0.0.1"
#define LOCAL_DEFAULT_DIR "keel-local"
#define LOCAL_DEFAULT_BASE_PORT 1982
#define LOCAL_DAEMON_PORT_GAP 30 /* 1982 -> 2012, as in the HyperDex tutorial */
#define LOCAL_CONF "local.conf"
#define LOCAL_CONF_MAX 1024      /* bytes; a longer local.conf is corrupt */
#define LOCAL_FIRST_UP_MS 10000  /* the first coordinator must answer PING by then */
#define LOCAL_POLL_MS 100        /* between status polls */
#define LOCAL_RPC_MS 1000        /* one status request */
#define LOCAL_RPC_MAX (1u << 24) /* bytes of one reply */
#define LOCAL_KILL_MS 5000       /* SIGKILL -> give up waiting */
#define LOCAL_TAIL_LINES 10      /* log lines shown for a dead child */
#define LOCAL_TAIL_BYTES 4096
#define LOCAL_MAX_ARGS 24

enum child_kind { KIND_COORD, KIND_DAEMON };

/* One child process (a coordinator or a daemon) and what keel local knows of it. */
typedef struct child {
    int kind;           /* enum child_kind */
    int index;          /* 1-based within its kind */
    char name[32];      /* "coordinator-1", "daemon-2" */
    int port;           /* client port */
    char dir[PATH_MAX]; /* its data directory */
    char log[PATH_MAX]; /* DIR/<name>.log */
    bool has_data;      /* its data directory already belongs to a cluster */
    pid_t pid;          /* > 0 while running (not yet reaped) */
    bool started;       /* was started in this run */
    bool stop_sent;     /* keel local sent SIGTERM: its exit is expected */
    bool kill_sent;     /* ... and then SIGKILL */
    int wstatus;        /* waitpid status, once reaped */
} child;

/* The cluster's shape: what DIR/local.conf records. */
typedef struct layout {
    int coords;
    int daemons;
    int base_port;
    int daemon_base_port;
} layout;

/* The supervisor's whole state. */
typedef struct local {
    local_opts o;
    layout lay;
    char dir[PATH_MAX];  /* DIR made absolute */
    char exe[PATH_MAX];  /* how to show this binary to the user */
    bool restart;        /* DIR held a cluster already */
    uint64_t cluster_id; /* from coordinator-1's identity or CLUSTER.STATUS; 0 unknown */
    child kids[LOCAL_MAX_COORDS + LOCAL_MAX_DAEMONS];
    int nkids;
    sigset_t sigs;         /* blocked and taken with sigtimedwait */
    sigset_t oldmask;      /* restored in children */
    bool stop_requested;   /* SIGINT/SIGTERM/SIGHUP seen */
    bool force;            /* a second one seen while stopping */
    bool stopping;         /* stop_all is running */
    int died_unexpectedly; /* children that exited without being asked to */
    int lock_fd;           /* DIR/keel.lock */
} local;

/* ---- small helpers ---------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("keel local: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

static void complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void complain(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fputs("keel local: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static bool path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* How a waitpid status reads in a sentence: "exited with status 1". */
static void describe_status(int ws, char *out, size_t outlen)
{
    if (WIFEXITED(ws))
        snprintf(out, outlen, "exited with status %d", WEXITSTATUS(ws));
    else if (WIFSIGNALED(ws))
        snprintf(out, outlen, "was killed by signal %d (%s)%s", WTERMSIG(ws),
                 strsignal(WTERMSIG(ws)), WCOREDUMP(ws) ? ", core dumped" : "");
    else
        snprintf(out, outlen, "ended with wait status 0x%x", (unsigned)ws);
}

/* ---- arguments ---------------------------------------------------------------------- */

void local_usage(void)
{
    printf("usage: keel local [-c N] [-d M] [-D DIR] [--base-port P] [--daemon-base-port Q]\n"
           "                  [--tick-ms T] [--ready-timeout S] [--stop-timeout S]\n"
           "Starts a whole keel cluster on 127.0.0.1 as child processes, prints how to\n"
           "connect, and stops it on Ctrl-C (daemons first, then coordinators).\n"
           "  -c, --coordinators N      coordinators (default 3; 1..%d)\n"
           "  -d, --daemons M           daemons (default 3; 0..%d)\n"
           "  -D, --data DIR            data and logs (default ./%s); running keel local\n"
           "                            again with the same DIR restarts that cluster\n"
           "  --base-port P             coordinator client ports P, P+1, ... (default %d)\n"
           "  --daemon-base-port Q      daemon ports Q, Q+1, ... (default P+%d)\n"
           "  --tick-ms T               the coordinators' Raft tick (default theirs: 100)\n"
           "  --ready-timeout S         give up starting after S seconds (default 20)\n"
           "  --stop-timeout S          SIGKILL a process S seconds after SIGTERM (default 10)\n"
           "Peer ports are the client ports + %d. Exit status: 0 clean stop, 1 failure,\n"
           "2 usage error.\n",
           LOCAL_MAX_COORDS, LOCAL_MAX_DAEMONS, LOCAL_DEFAULT_DIR, LOCAL_DEFAULT_BASE_PORT,
           LOCAL_DAEMON_PORT_GAP, LOCAL_PEER_OFFSET);
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || v[0] == '+' || v[0] == ' ' || n < lo || n > hi) {
        fprintf(stderr, "keel local: %s needs a number in %ld..%ld, got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = n;
    return 0;
}

int local_parse_args(int argc, char **argv, local_opts *o)
{
    *o = (local_opts){.coords = 3,
                      .daemons = 3,
                      .dir = LOCAL_DEFAULT_DIR,
                      .base_port = LOCAL_DEFAULT_BASE_PORT,
                      .daemon_base_port = LOCAL_DEFAULT_BASE_PORT + LOCAL_DAEMON_PORT_GAP,
                      .ready_timeout_s = 20,
                      .stop_timeout_s = 10};
    enum { OPT_BASE = 1000, OPT_DBASE, OPT_TICK, OPT_READY, OPT_STOP, OPT_HELP };
    static const struct option lo[] = {{"coordinators", required_argument, 0, 'c'},
                                       {"daemons", required_argument, 0, 'd'},
                                       {"data", required_argument, 0, 'D'},
                                       {"base-port", required_argument, 0, OPT_BASE},
                                       {"daemon-base-port", required_argument, 0, OPT_DBASE},
                                       {"tick-ms", required_argument, 0, OPT_TICK},
                                       {"ready-timeout", required_argument, 0, OPT_READY},
                                       {"stop-timeout", required_argument, 0, OPT_STOP},
                                       {"help", no_argument, 0, OPT_HELP},
                                       {0, 0, 0, 0}};
    optind = 0; /* full re-initialisation: the parser may run more than once */
    opterr = 0; /* our own messages below */
    int ch;
    long n;
    while ((ch = getopt_long(argc, argv, "+:c:d:D:", lo, NULL)) != -1) {
        switch (ch) {
        case 'c':
            if (parse_int("--coordinators", optarg, 1, LOCAL_MAX_COORDS, &n)) return 2;
            o->coords = (int)n;
            o->coords_set = true;
            break;
        case 'd':
            if (parse_int("--daemons", optarg, 0, LOCAL_MAX_DAEMONS, &n)) return 2;
            o->daemons = (int)n;
            o->daemons_set = true;
            break;
        case 'D':
            if (!optarg[0]) {
                fprintf(stderr, "keel local: --data needs a directory\n");
                return 2;
            }
            o->dir = optarg;
            break;
        case OPT_BASE:
            if (parse_int("--base-port", optarg, 1, 65535, &n)) return 2;
            o->base_port = (int)n;
            o->base_port_set = true;
            break;
        case OPT_DBASE:
            if (parse_int("--daemon-base-port", optarg, 1, 65535, &n)) return 2;
            o->daemon_base_port = (int)n;
            o->daemon_base_port_set = true;
            break;
        case OPT_TICK:
            if (parse_int("--tick-ms", optarg, 1, 10000, &n)) return 2;
            o->tick_ms = (unsigned)n;
            break;
        case OPT_READY:
            if (parse_int("--ready-timeout", optarg, 1, 3600, &n)) return 2;
            o->ready_timeout_s = (unsigned)n;
            break;
        case OPT_STOP:
            if (parse_int("--stop-timeout", optarg, 1, 3600, &n)) return 2;
            o->stop_timeout_s = (unsigned)n;
            break;
        case OPT_HELP:
            o->help = true;
            return 0;
        case ':':
            fprintf(stderr, "keel local: %s needs a value\n", argv[optind - 1]);
            local_usage();
            return 2;
        default:
            if (optopt)
                fprintf(stderr, "keel local: unknown option '-%c'\n", optopt);
            else
                fprintf(stderr, "keel local: unknown option '%s'\n", argv[optind - 1]);
            local_usage();
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "keel local: unexpected argument '%s'\n", argv[optind]);
        local_usage();
        return 2;
    }
    if (o->base_port_set && !o->daemon_base_port_set)
        o->daemon_base_port = o->base_port + LOCAL_DAEMON_PORT_GAP;
    return 0;
}

/* ---- the layout and DIR/local.conf ----------------------------------------------- */

/* Checks that every port of lay (client and peer, both roles) is a port and
 * that no two coincide. Returns 0, or -1 with a message in err. */
static int layout_check_ports(const layout *lay, char *err, size_t errlen)
{
    struct {
        int first, count;
        const char *what;
    } r[4] = {{lay->base_port, lay->coords, "coordinator client"},
              {lay->base_port + LOCAL_PEER_OFFSET, lay->coords, "coordinator peer"},
              {lay->daemon_base_port, lay->daemons, "daemon client"},
              {lay->daemon_base_port + LOCAL_PEER_OFFSET, lay->daemons, "daemon peer"}};
    for (int i = 0; i < 4; i++) {
        if (r[i].count == 0) continue;
        if (r[i].first + r[i].count - 1 > 65535) {
            snprintf(err, errlen,
                     "the %s ports would be %d..%d, past 65535 (peer ports are the client "
                     "ports + %d); choose a lower %s",
                     r[i].what, r[i].first, r[i].first + r[i].count - 1, LOCAL_PEER_OFFSET,
                     i < 2 ? "--base-port" : "--daemon-base-port");
            return -1;
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++) {
            if (!r[i].count || !r[j].count) continue;
            int lo = r[i].first > r[j].first ? r[i].first : r[j].first;
            int hi_i = r[i].first + r[i].count - 1, hi_j = r[j].first + r[j].count - 1;
            int hi = hi_i < hi_j ? hi_i : hi_j;
            if (lo <= hi) {
                snprintf(err, errlen,
                         "the %s ports %d..%d and the %s ports %d..%d overlap (at %d); choose "
                         "another --base-port or --daemon-base-port",
                         r[i].what, r[i].first, hi_i, r[j].what, r[j].first, hi_j, lo);
                return -1;
            }
        }
    return 0;
}

/* Reads DIR/local.conf. Returns 1 and *lay if present and well formed, 0 if
 * absent, -1 with a message in err if unreadable or corrupt. */
static int conf_load(const char *dir, layout *lay, char *err, size_t errlen)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", dir, LOCAL_CONF);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char text[LOCAL_CONF_MAX + 1];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, text + len, sizeof text - 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (n == 0) break;
        len += (size_t)n;
        if (len == sizeof text - 1) {
            snprintf(err, errlen, "%s is corrupt: longer than %d bytes", path, LOCAL_CONF_MAX);
            close(fd);
            return -1;
        }
    }
    close(fd);
    text[len] = '\0';
    struct {
        const char *key;
        int *val;
        long lo, hi;
        bool seen;
    } keys[] = {{"version", NULL, 1, 1, false},
                {"coordinators", &lay->coords, 1, LOCAL_MAX_COORDS, false},
                {"daemons", &lay->daemons, 0, LOCAL_MAX_DAEMONS, false},
                {"base_port", &lay->base_port, 1, 65535, false},
                {"daemon_base_port", &lay->daemon_base_port, 1, 65535, false}};
    const size_t nkeys = sizeof keys / sizeof keys[0];
    int lineno = 0;
    for (char *line = text, *next; line; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (line[0] == '#' || line[0] == '\0') continue;
        char *eq = strchr(line, '=');
        size_t k = nkeys;
        if (eq) {
            *eq = '\0';
            for (k = 0; k < nkeys && strcmp(keys[k].key, line) != 0; k++) {
            }
        }
        char *end = NULL;
        long v = 0;
        if (k < nkeys) {
            errno = 0;
            v = strtol(eq + 1, &end, 10);
        }
        if (k == nkeys || keys[k].seen || errno || end == eq + 1 || *end || v < keys[k].lo ||
            v > keys[k].hi) {
            snprintf(err, errlen,
                     "%s is corrupt at line %d (expected version=1, coordinators=N, daemons=M, "
                     "base_port=P, daemon_base_port=Q, each once)",
                     path, lineno);
            return -1;
        }
        keys[k].seen = true;
        if (keys[k].val) *keys[k].val = (int)v;
    }
    for (size_t k = 0; k < nkeys; k++)
        if (!keys[k].seen) {
            snprintf(err, errlen, "%s is corrupt: it has no %s line", path, keys[k].key);
            return -1;
        }
    return 1;
}

/* Writes DIR/local.conf atomically and durably (temporary file, fsync,
 * rename, fsync of DIR). Returns 0, or -1 with a message in err. */
static int conf_store(const char *dir, const layout *lay, char *err, size_t errlen)
{
    char path[PATH_MAX + 32], tmp[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", dir, LOCAL_CONF);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, LOCAL_CONF);
    char text[LOCAL_CONF_MAX];
    int len = snprintf(text, sizeof text,
                       "# the layout of the cluster `keel local` runs in this directory\n"
                       "version=1\ncoordinators=%d\ndaemons=%d\nbase_port=%d\n"
                       "daemon_base_port=%d\n",
                       lay->coords, lay->daemons, lay->base_port, lay->daemon_base_port);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) goto err_open;
    if (write(fd, text, (size_t)len) != len || fsync(fd) != 0) goto err_after_open;
    if (close(fd) != 0) {
        fd = -1;
        goto err_after_open;
    }
    if (rename(tmp, path) != 0) goto err_open;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        int rc = fsync(dfd);
        close(dfd);
        if (rc != 0) goto err_open;
    }
    return 0;

err_after_open:
    if (fd >= 0) close(fd);
err_open:
    snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
    return -1;
}

/* 1 if DIR holds nothing but what keel local itself puts there before the
 * first start (its lock, a local.conf.tmp left by a crash), 0 if it holds
 * more, -1 with a message in err if it cannot be read. */
static int dir_is_fresh(const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "cannot read directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int fresh = 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
            !strcmp(e->d_name, "keel.lock") || !strcmp(e->d_name, LOCAL_CONF ".tmp"))
            continue;
        fresh = 0;
        break;
    }
    closedir(d);
    return fresh;
}

/* ---- preparing a start ------------------------------------------------------------- */

/* The layout to run: the flags, checked against DIR/local.conf on a restart.
 * Returns 0, 1 (refused: message printed) or 2 (usage: message printed). */
static int resolve_layout(local *l)
{
    char err[PATH_MAX + 256];
    layout rec;
    int have = conf_load(l->dir, &rec, err, sizeof err);
    if (have < 0) {
        complain("%s", err);
        return 1;
    }
    if (have == 0) {
        int fresh = dir_is_fresh(l->dir, err, sizeof err);
        if (fresh < 0) {
            complain("%s", err);
            return 1;
        }
        if (!fresh) {
            complain("%s is not empty and holds no keel local cluster (no %s); choose a new "
                     "or empty directory with -D",
                     l->dir, LOCAL_CONF);
            return 1;
        }
        l->lay = (layout){l->o.coords, l->o.daemons, l->o.base_port, l->o.daemon_base_port};
    } else {
        l->restart = true;
        if (l->o.base_port_set && l->o.base_port != rec.base_port) {
            complain("the cluster in %s uses --base-port %d (its coordinators know each other "
                     "by those ports); drop --base-port %d or use another -D",
                     l->dir, rec.base_port, l->o.base_port);
            return 1;
        }
        if (l->o.daemon_base_port_set && l->o.daemon_base_port != rec.daemon_base_port) {
            complain("the cluster in %s uses --daemon-base-port %d; drop --daemon-base-port %d "
                     "or use another -D",
                     l->dir, rec.daemon_base_port, l->o.daemon_base_port);
            return 1;
        }
        if (l->o.coords_set && l->o.coords < rec.coords) {
            complain("the cluster in %s has %d coordinators; keel local restarts all of them "
                     "(-c %d or more), or use another -D",
                     l->dir, rec.coords, rec.coords);
            return 1;
        }
        if (l->o.daemons_set && l->o.daemons < rec.daemons) {
            complain("the cluster in %s has %d daemons; keel local restarts all of them "
                     "(-d %d or more), or use another -D",
                     l->dir, rec.daemons, rec.daemons);
            return 1;
        }
        l->lay = rec;
        if (l->o.coords_set) l->lay.coords = l->o.coords;
        if (l->o.daemons_set) l->lay.daemons = l->o.daemons;
    }
    if (layout_check_ports(&l->lay, err, sizeof err)) {
        complain("%s", err);
        return 2;
    }
    return 0;
}

/* Fills l->kids from the layout and learns which data directories already
 * belong to a cluster. Refuses a data directory another process holds.
 * Returns 0 or 1 (message printed). */
static int plan_children(local *l)
{
    char err[PATH_MAX + 256];
    l->nkids = 0;
    for (int k = 0; k < 2; k++) {
        int n = k == KIND_COORD ? l->lay.coords : l->lay.daemons;
        for (int i = 1; i <= n; i++) {
            child *c = &l->kids[l->nkids++];
            memset(c, 0, sizeof *c);
            c->kind = k;
            c->index = i;
            snprintf(c->name, sizeof c->name, "%s-%d", k == KIND_COORD ? "coordinator" : "daemon",
                     i);
            c->port = (k == KIND_COORD ? l->lay.base_port : l->lay.daemon_base_port) + i - 1;
            if ((size_t)snprintf(c->dir, sizeof c->dir, "%s/%s", l->dir, c->name) >=
                    sizeof c->dir ||
                (size_t)snprintf(c->log, sizeof c->log, "%s/%s.log", l->dir, c->name) >=
                    sizeof c->log) {
                complain("the path %s is too long", l->dir);
                return 1;
            }
            if (!path_exists(c->dir)) continue;
            int fd = proc_lock_dir(c->dir, err, sizeof err);
            if (fd < 0) {
                complain("%s (is another keel local, or a %s started by one, still running?)", err,
                         c->name);
                return 1;
            }
            if (k == KIND_COORD) {
                char mdb[PATH_MAX + 16];
                snprintf(mdb, sizeof mdb, "%s/data.mdb", c->dir);
                if (path_exists(mdb)) {
                    rstore *rs;
                    uint64_t cid, nid;
                    if (rstore_open(&rs, c->dir, err, sizeof err)) {
                        complain("%s: %s", c->name, err);
                        close(fd);
                        return 1;
                    }
                    int have = rstore_identity_get(rs, &cid, &nid);
                    rstore_close(rs);
                    if (have < 0) {
                        complain("cannot read the identity of %s in %s", c->name, c->dir);
                        close(fd);
                        return 1;
                    }
                    if (have == 0) {
                        c->has_data = true;
                        if (!l->cluster_id) l->cluster_id = cid;
                    }
                }
            } else {
                daemon_identity id;
                int have = daemon_identity_load(c->dir, &id, err, sizeof err);
                if (have < 0) {
                    complain("%s: %s", c->name, err);
                    close(fd);
                    return 1;
                }
                c->has_data = have == 1;
            }
            close(fd);
        }
    }
    return 0;
}

/* Binds every port the cluster needs on 127.0.0.1 (as the servers will,
 * with SO_REUSEADDR) and names each one that is taken. Returns 0 or 1. */
static int check_ports(local *l)
{
    int busy = 0;
    for (int i = 0; i < l->nkids; i++) {
        const child *c = &l->kids[i];
        for (int peer = 0; peer < 2; peer++) {
            int port = c->port + (peer ? LOCAL_PEER_OFFSET : 0);
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                complain("cannot create a socket: %s", strerror(errno));
                return 1;
            }
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
            inet_pton(AF_INET, LOCAL_HOST, &a.sin_addr);
            if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
                complain("port %d (%s's %s port) on %s is not free: %s", port, c->name,
                         peer ? "peer" : "client", LOCAL_HOST, strerror(errno));
                busy++;
            }
            close(fd);
        }
    }
    if (busy) {
        complain("%d port%s in use; stop what holds %s, or choose other ports with --base-port "
                 "and --daemon-base-port (a new cluster needs a new -D)",
                 busy, busy == 1 ? " is" : "s are", busy == 1 ? "it" : "them");
        return 1;
    }
    return 0;
}

/* How to show this binary in the hints: relative to the working directory
 * when it lies below it ("build/keel"), else its absolute path. */
static void find_exe(local *l)
{
    char exe[PATH_MAX], cwd[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(l->exe, sizeof l->exe, "keel");
        return;
    }
    exe[n] = '\0';
    size_t cl;
    if (getcwd(cwd, sizeof cwd) && (cl = strlen(cwd)) > 1 && !strncmp(exe, cwd, cl) &&
        exe[cl] == '/')
        snprintf(l->exe, sizeof l->exe, "%s%s", strchr(exe + cl + 1, '/') ? "" : "./",
                 exe + cl + 1);
    else
        snprintf(l->exe, sizeof l->exe, "%s", exe);
}

/* ---- children --------------------------------------------------------------------- */

static child *find_kid(local *l, pid_t pid)
{
    for (int i = 0; i < l->nkids; i++)
        if (l->kids[i].pid == pid) return &l->kids[i];
    return NULL;
}

/* Prints the last lines of c's log, indented. */
static void print_log_tail(const child *c, FILE *to)
{
    int fd = open(c->log, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    char text[LOCAL_TAIL_BYTES + 1];
    ssize_t n = -1;
    off_t from = 0;
    if (fstat(fd, &st) == 0) {
        from = st.st_size > LOCAL_TAIL_BYTES ? st.st_size - LOCAL_TAIL_BYTES : 0;
        n = pread(fd, text, LOCAL_TAIL_BYTES, from);
    }
    close(fd);
    if (n <= 0) {
        fprintf(to, "    (%s is empty)\n", c->log);
        return;
    }
    text[n] = '\0';
    char *p = text;
    if (from > 0) { /* skip the partial first line */
        char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : p + n;
    }
    int lines = 0;
    char *end = text + n;
    char *q = end;
    if (q > p && q[-1] == '\n') q--;
    while (q > p && lines < LOCAL_TAIL_LINES) {
        q--;
        if (*q == '\n') {
            lines++;
            if (lines == LOCAL_TAIL_LINES) {
                q++;
                break;
            }
        }
    }
    fprintf(to, "    last lines of %s:\n", c->log);
    for (char *line = q, *nl; line < end && *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) nl = end;
        fprintf(to, "    | %.*s\n", (int)(nl - line), line);
        if (nl == end) break;
    }
    fflush(to);
}

/* Records the end of a reaped child; reports it if nobody asked it to stop. */
static void child_ended(local *l, child *c, int ws)
{
    c->pid = 0;
    c->wstatus = ws;
    char how[128];
    describe_status(ws, how, sizeof how);
    if (c->stop_sent) {
        bool clean = WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
        if (!clean && !c->kill_sent) say("%s %s while stopping", c->name, how);
        return;
    }
    l->died_unexpectedly++;
    fflush(stdout);
    fprintf(stderr, "keel local: %s (%s:%d) %s\n", c->name, LOCAL_HOST, c->port, how);
    print_log_tail(c, stderr);
    if (!l->stopping) {
        int alive = 0;
        for (int i = 0; i < l->nkids; i++)
            alive += l->kids[i].pid > 0;
        if (alive)
            fprintf(stderr,
                    "keel local: the other %d process%s keep running; run %s local -D %s "
                    "again after Ctrl-C to bring %s back\n",
                    alive, alive == 1 ? "" : "es", l->exe, l->dir, c->name);
    }
}

/* Reaps every child that has ended. */
static void reap(local *l)
{
    for (;;) {
        int ws;
        pid_t pid = waitpid(-1, &ws, WNOHANG);
        if (pid <= 0) return;
        child *c = find_kid(l, pid);
        if (c) child_ended(l, c, ws);
    }
}

/* Takes the pending signals, waiting at most timeout_ms for the first. */
static void take_signals(local *l, int timeout_ms)
{
    if (timeout_ms < 0) timeout_ms = 0;
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    for (;;) {
        int sig = sigtimedwait(&l->sigs, NULL, &ts);
        if (sig < 0) {
            if (errno == EINTR) continue;
            break; /* EAGAIN: nothing (more) pending */
        }
        if (sig == SIGCHLD) {
            reap(l);
        } else if (l->stop_requested) {
            if (!l->force) say("%s again: killing what is left now (SIGKILL)", strsignal(sig));
            l->force = true;
        } else {
            l->stop_requested = true;
            say("%s: stopping the cluster", strsignal(sig));
        }
        ts = (struct timespec){0, 0};
    }
    reap(l); /* a SIGCHLD merged with one taken earlier loses nothing */
}

/* Starts c: `/proc/self/exe <role> -f ...` with its output in c->log.
 * join_port > 0 adds -c/-P (coordinators). Returns 0 or -1 (message printed). */
static int start_child(local *l, child *c, int join_port)
{
    char store[LOCAL_MAX_ARGS][PATH_MAX + 32];
    char *argv[LOCAL_MAX_ARGS + 1];
    int argc = 0;
#define ARG(...)                                                                                   \
    do {                                                                                           \
        assert(argc < LOCAL_MAX_ARGS);                                                             \
        snprintf(store[argc], sizeof store[argc], __VA_ARGS__);                                    \
        argv[argc] = store[argc];                                                                  \
        argc++;                                                                                    \
    } while (0)
    ARG("keel");
    if (c->kind == KIND_COORD) {
        ARG("coordinator");
        ARG("-f");
        ARG("-l");
        ARG(LOCAL_HOST);
        ARG("-p");
        ARG("%d", c->port);
        ARG("-D");
        ARG("%s", c->dir);
        if (l->o.tick_ms) {
            ARG("--tick-ms");
            ARG("%u", l->o.tick_ms);
        }
        if (join_port > 0) {
            ARG("-c");
            ARG(LOCAL_HOST);
            ARG("-P");
            ARG("%d", join_port);
        }
    } else {
        ARG("daemon");
        ARG("-f");
        ARG("--listen=%s", LOCAL_HOST);
        ARG("--listen-port=%d", c->port);
        ARG("--coordinator=%s", LOCAL_HOST);
        ARG("--coordinator-port=%d", l->lay.base_port);
        ARG("--data=%s", c->dir);
    }
#undef ARG
    argv[argc] = NULL;

    int logfd = open(c->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0) {
        complain("cannot open %s: %s", c->log, strerror(errno));
        return -1;
    }
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nullfd < 0) {
        complain("cannot open /dev/null: %s", strerror(errno));
        close(logfd);
        return -1;
    }
    /* a header line in the log, so that each start is easy to find */
    {
        char line[PATH_MAX * 2];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        size_t off = strftime(line, sizeof line, "==== %Y-%m-%dT%H:%M:%SZ keel local starts:", &tm);
        for (int i = 0; i < argc && off < sizeof line; i++)
            off += (size_t)snprintf(line + off, sizeof line - off, " %s", argv[i]);
        if (off < sizeof line) off += (size_t)snprintf(line + off, sizeof line - off, "\n");
        if (off > sizeof line) off = sizeof line;
        ssize_t w = write(logfd, line, off);
        (void)w;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        complain("cannot start %s: fork: %s", c->name, strerror(errno));
        close(logfd);
        close(nullfd);
        return -1;
    }
    if (pid == 0) {
        /* the child: only async-signal-safe calls until exec */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(1); /* keel local is already gone */
        dup2(nullfd, STDIN_FILENO);
        dup2(logfd, STDOUT_FILENO);
        dup2(logfd, STDERR_FILENO);
        /* a Ctrl-C that reached the terminal's group before setpgid is
         * keel local's to handle: ignoring discards it if pending here */
        struct sigaction ign = {.sa_handler = SIG_IGN}, dfl = {.sa_handler = SIG_DFL};
        sigaction(SIGINT, &ign, NULL);
        sigaction(SIGHUP, &ign, NULL);
        sigprocmask(SIG_SETMASK, &l->oldmask, NULL);
        sigaction(SIGINT, &dfl, NULL);
        sigaction(SIGHUP, &dfl, NULL);
        execv("/proc/self/exe", argv);
        static const char msg[] = "keel local: cannot execute /proc/self/exe\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    close(logfd);
    close(nullfd);
    c->pid = pid;
    c->started = true;
    c->stop_sent = c->kill_sent = false;
    return 0;
}

/* ---- talking to the cluster --------------------------------------------------------- */

/* One request to 127.0.0.1:port, blocking at most timeout_ms in all. Returns
 * 0 and *out (the caller frees it with resp_reply_free), or -1 with a
 * message in err. */
static int rpc(int port, int argc, const char *const *argv, int timeout_ms, resp_reply **out,
               char *err, size_t errlen)
{
    int64_t deadline = mono_ms() + timeout_ms;
    *out = NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, LOCAL_HOST, &a.sin_addr);
    buf out_b, in_b;
    buf_init(&out_b);
    buf_init(&in_b);
    int rc = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
        snprintf(err, errlen, "cannot connect to %s:%d: %s", LOCAL_HOST, port, strerror(errno));
        goto out;
    }
    resp_add_command(&out_b, argc, argv, NULL);
    size_t sent = 0;
    for (;;) {
        int left = (int)(deadline - mono_ms());
        if (left <= 0) {
            snprintf(err, errlen, "no answer from %s:%d within %d ms", LOCAL_HOST, port,
                     timeout_ms);
            goto out;
        }
        struct pollfd p = {.fd = fd, .events = sent < out_b.len ? POLLOUT : POLLIN};
        int pr = poll(&p, 1, left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) {
            snprintf(err, errlen, "poll: %s", strerror(errno));
            goto out;
        }
        if (pr == 0) continue;
        if (sent < out_b.len) {
            ssize_t n = send(fd, out_b.data + sent, out_b.len - sent, MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (n < 0) {
                snprintf(err, errlen, "cannot talk to %s:%d: %s", LOCAL_HOST, port,
                         strerror(errno));
                goto out;
            }
            sent += (size_t)n;
            continue;
        }
        buf_reserve(&in_b, 65536);
        ssize_t n = recv(fd, in_b.data + in_b.len, in_b.cap - in_b.len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) {
            snprintf(err, errlen, "%s:%d closed the connection%s%s", LOCAL_HOST, port,
                     n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
            goto out;
        }
        in_b.len += (size_t)n;
        size_t used;
        int pr2 = resp_reply_parse(in_b.data, in_b.len, &used, out);
        if (pr2 == RESP_OK) {
            rc = 0;
            goto out;
        }
        if (pr2 == RESP_ERROR || in_b.len > LOCAL_RPC_MAX) {
            snprintf(err, errlen, "%s:%d sent a malformed or oversized reply", LOCAL_HOST, port);
            goto out;
        }
    }
out:
    buf_free(&out_b);
    buf_free(&in_b);
    close(fd);
    return rc;
}

/* What one CLUSTER.STATUS says about our children. */
typedef struct readiness {
    bool answered; /* a well-formed status came back */
    uint64_t cluster_id;
    int voters; /* of our coordinators */
    int online; /* of our started daemons */
    bool voter[LOCAL_MAX_COORDS];
    bool up[LOCAL_MAX_DAEMONS];
    char last_err[256]; /* why the last poll did not answer */
} readiness;

static const child *kid_at(const local *l, int kind, const char *addr, size_t len)
{
    for (int i = 0; i < l->nkids; i++) {
        const child *c = &l->kids[i];
        if (c->kind != kind) continue;
        char a[64];
        int n = snprintf(a, sizeof a, "%s:%d", LOCAL_HOST, c->port);
        if ((size_t)n == len && !memcmp(a, addr, len)) return c;
    }
    return NULL;
}

/* Asks coordinator-1 for CLUSTER.STATUS and fills *r. */
static void poll_status(local *l, readiness *r)
{
    char err[256];
    memset(r->voter, 0, sizeof r->voter);
    memset(r->up, 0, sizeof r->up);
    r->answered = false;
    r->voters = r->online = 0;
    const char *argv[] = {"CLUSTER.STATUS"};
    resp_reply *rep;
    if (rpc(l->lay.base_port, 1, argv, LOCAL_RPC_MS, &rep, err, sizeof err)) {
        snprintf(r->last_err, sizeof r->last_err, "%s", err);
        return;
    }
    if (rep->type == RESP_R_ERROR) {
        snprintf(r->last_err, sizeof r->last_err, "coordinator-1 answered -%s", rep->str);
        resp_reply_free(rep);
        return;
    }
    json_doc *doc = NULL;
    json_error je;
    if (rep->type != RESP_R_BULK || json_parse(rep->str, rep->len, NULL, &doc, &je) != JSON_OK) {
        snprintf(r->last_err, sizeof r->last_err,
                 "coordinator-1 answered CLUSTER.STATUS with something other than JSON");
        resp_reply_free(rep);
        return;
    }
    resp_reply_free(rep);
    const json_value *root = json_root(doc);
    const json_value *cid = json_get(root, "cluster_id");
    const json_value *cs = json_get(root, "coordinators");
    const json_value *ds = json_get(root, "daemons");
    if (!cid || cid->type != JSON_STRING || !cs || cs->type != JSON_ARRAY || !ds ||
        ds->type != JSON_ARRAY) {
        snprintf(r->last_err, sizeof r->last_err,
                 "CLUSTER.STATUS lacks cluster_id, coordinators or daemons");
        json_free(doc);
        return;
    }
    char *end;
    errno = 0;
    unsigned long long id = strtoull(cid->str, &end, 16);
    r->cluster_id = errno || *end ? 0 : (uint64_t)id;
    for (const json_value *e = cs->child; e; e = e->next) {
        const json_value *addr = json_get(e, "address"), *v = json_get(e, "voter");
        if (!addr || addr->type != JSON_STRING || !v || v->type != JSON_TRUE) continue;
        const child *c = kid_at(l, KIND_COORD, addr->str, addr->len);
        if (c && !r->voter[c->index - 1]) {
            r->voter[c->index - 1] = true;
            r->voters++;
        }
    }
    for (const json_value *e = ds->child; e; e = e->next) {
        const json_value *addr = json_get(e, "address"), *st = json_get(e, "state");
        if (!addr || addr->type != JSON_STRING || !st || st->type != JSON_STRING ||
            strcmp(st->str, "ONLINE") != 0)
            continue;
        const child *c = kid_at(l, KIND_DAEMON, addr->str, addr->len);
        if (c && !r->up[c->index - 1]) {
            r->up[c->index - 1] = true;
            r->online++;
        }
    }
    json_free(doc);
    r->answered = true;
}

/* Waits until coordinator-1 answers PING; false if it died, a stop was
 * requested, or LOCAL_FIRST_UP_MS passed (a message is printed for the last). */
static bool wait_first_up(local *l, const child *first)
{
    int64_t deadline = mono_ms() + LOCAL_FIRST_UP_MS;
    char err[256] = "";
    for (;;) {
        take_signals(l, 0);
        if (l->stop_requested || l->died_unexpectedly || first->pid <= 0) return false;
        const char *argv[] = {"PING"};
        resp_reply *rep;
        if (rpc(first->port, 1, argv, LOCAL_RPC_MS, &rep, err, sizeof err) == 0) {
            bool pong = rep->type == RESP_R_STATUS && !strcmp(rep->str, "PONG");
            resp_reply_free(rep);
            if (pong) return true;
            snprintf(err, sizeof err, "it did not answer PING with PONG");
        }
        if (mono_ms() >= deadline) {
            complain("%s did not answer within %d s (%s); see %s", first->name,
                     LOCAL_FIRST_UP_MS / 1000, err, first->log);
            return false;
        }
        take_signals(l, LOCAL_POLL_MS);
    }
}

/* ---- stopping --------------------------------------------------------------------- */

/* Waits until none of the children selected by kind and index (-1: any)
 * runs, or until deadline; when interruptible, a forced stop (second Ctrl-C)
 * ends the wait at once. True if they are all gone. */
static bool wait_gone(local *l, int kind, int index, int64_t deadline, bool interruptible)
{
    for (;;) {
        bool any = false;
        for (int i = 0; i < l->nkids; i++) {
            const child *c = &l->kids[i];
            if (c->pid > 0 && (kind < 0 || c->kind == kind) && (index < 0 || c->index == index))
                any = true;
        }
        if (!any) return true;
        int64_t left = deadline - mono_ms();
        if (left <= 0 || (interruptible && l->force)) return false;
        take_signals(l, left > LOCAL_POLL_MS ? LOCAL_POLL_MS : (int)left);
    }
}

/* SIGKILLs the selected running children, says so, and waits for them. */
static void kill_left(local *l, int kind, int index, const char *why)
{
    for (int i = 0; i < l->nkids; i++) {
        child *c = &l->kids[i];
        if (c->pid <= 0 || (kind >= 0 && c->kind != kind) || (index >= 0 && c->index != index))
            continue;
        say("%s (pid %d) %s; killing it (SIGKILL)", c->name, (int)c->pid, why);
        c->stop_sent = c->kill_sent = true;
        kill(c->pid, SIGKILL);
    }
    if (!wait_gone(l, kind, index, mono_ms() + LOCAL_KILL_MS, false)) {
        for (int i = 0; i < l->nkids; i++) {
            child *c = &l->kids[i];
            if (c->pid > 0 && (kind < 0 || c->kind == kind) && (index < 0 || c->index == index))
                complain("%s (pid %d) is still there %d s after SIGKILL; giving up on it", c->name,
                         (int)c->pid, LOCAL_KILL_MS / 1000);
        }
    }
}

/* Stops everything: the daemons one at a time (each may hand its partitions
 * off to the others), then every coordinator at once. Returns true if every
 * child that was asked to stop exited 0 by itself. */
static bool stop_all(local *l)
{
    l->stopping = true;
    take_signals(l, 0);
    int running = 0;
    for (int i = 0; i < l->nkids; i++)
        running += l->kids[i].pid > 0;
    if (running)
        say("stopping %d process%s: daemons first, then coordinators", running,
            running == 1 ? "" : "es");
    for (int i = l->nkids - 1; i >= 0; i--) {
        child *c = &l->kids[i];
        if (c->kind != KIND_DAEMON || c->pid <= 0) continue;
        if (l->force) break;
        c->stop_sent = true;
        kill(c->pid, SIGTERM);
        int64_t deadline = mono_ms() + (int64_t)l->o.stop_timeout_s * 1000;
        if (!wait_gone(l, KIND_DAEMON, c->index, deadline, true) && !l->force) {
            char why[64];
            snprintf(why, sizeof why, "did not stop within %d s of SIGTERM",
                     (int)l->o.stop_timeout_s);
            kill_left(l, KIND_DAEMON, c->index, why);
        }
    }
    if (l->force) kill_left(l, KIND_DAEMON, -1, "is still running");
    for (int i = 0; i < l->nkids; i++) {
        child *c = &l->kids[i];
        if (c->kind != KIND_COORD || c->pid <= 0 || l->force) continue;
        c->stop_sent = true;
        kill(c->pid, SIGTERM);
    }
    if (!wait_gone(l, KIND_COORD, -1, mono_ms() + (int64_t)l->o.stop_timeout_s * 1000, true)) {
        char why[64];
        if (l->force)
            snprintf(why, sizeof why, "is still running");
        else
            snprintf(why, sizeof why, "did not stop within %d s of SIGTERM",
                     (int)l->o.stop_timeout_s);
        kill_left(l, KIND_COORD, -1, why);
    }
    bool clean = true;
    for (int i = 0; i < l->nkids; i++) {
        const child *c = &l->kids[i];
        if (!c->stop_sent) continue;
        if (c->kill_sent || !WIFEXITED(c->wstatus) || WEXITSTATUS(c->wstatus) != 0) clean = false;
    }
    return clean;
}

/* ---- the run ------------------------------------------------------------------------ */

/* Starts the coordinators, then the daemons. Returns 0 or -1 (reported). */
static int start_all(local *l)
{
    int seed = 0; /* the coordinator newcomers join: the first one with data */
    for (int i = 0; i < l->nkids && !seed; i++)
        if (l->kids[i].kind == KIND_COORD && l->kids[i].has_data) seed = l->kids[i].port;
    child *first = &l->kids[0];
    if (!seed) {
        /* a new cluster: coordinator-1 bootstraps it, the others join it */
        if (start_child(l, first, 0)) return -1;
        say("started %s (pid %d) on %s:%d: bootstraps a new cluster", first->name, (int)first->pid,
            LOCAL_HOST, first->port);
        if (!wait_first_up(l, first)) return -1;
        seed = first->port;
    }
    for (int i = 0; i < l->nkids; i++) {
        child *c = &l->kids[i];
        if (c->kind != KIND_COORD || c->started) continue;
        if (start_child(l, c, c->has_data ? 0 : seed)) return -1;
        if (c->has_data)
            say("started %s (pid %d) on %s:%d: resumes from %s", c->name, (int)c->pid, LOCAL_HOST,
                c->port, c->dir);
        else
            say("started %s (pid %d) on %s:%d: joins via %s:%d", c->name, (int)c->pid, LOCAL_HOST,
                c->port, LOCAL_HOST, seed);
    }
    for (int i = 0; i < l->nkids; i++) {
        child *c = &l->kids[i];
        if (c->kind != KIND_DAEMON) continue;
        if (start_child(l, c, 0)) return -1;
        say("started %s (pid %d) on %s:%d: %s", c->name, (int)c->pid, LOCAL_HOST, c->port,
            c->has_data ? "rejoins with its id" : "registers as a new daemon");
    }
    return 0;
}

/* Polls CLUSTER.STATUS until every coordinator is a voter and every daemon
 * is ONLINE. Returns true when ready; false on a death, a stop request or
 * the timeout (reported). */
static bool wait_ready(local *l)
{
    int64_t deadline = mono_ms() + (int64_t)l->o.ready_timeout_s * 1000;
    readiness r = {.last_err = "no answer yet"};
    for (;;) {
        take_signals(l, 0);
        if (l->stop_requested || l->died_unexpectedly) return false;
        poll_status(l, &r);
        if (r.answered && r.voters == l->lay.coords && r.online == l->lay.daemons) {
            l->cluster_id = r.cluster_id;
            return true;
        }
        if (mono_ms() >= deadline) break;
        take_signals(l, LOCAL_POLL_MS);
    }
    complain("the cluster is not ready after %d s:", (int)l->o.ready_timeout_s);
    if (!r.answered) {
        complain("  coordinator-1 gives no status: %s", r.last_err);
        print_log_tail(&l->kids[0], stderr);
        return false;
    }
    complain("  %d of %d coordinators are voters, %d of %d daemons are ONLINE", r.voters,
             l->lay.coords, r.online, l->lay.daemons);
    for (int i = 0; i < l->nkids; i++) {
        const child *c = &l->kids[i];
        bool ok = c->kind == KIND_COORD ? r.voter[c->index - 1] : r.up[c->index - 1];
        if (ok) continue;
        complain("  %s (%s:%d) is not %s yet", c->name, LOCAL_HOST, c->port,
                 c->kind == KIND_COORD ? "a voter" : "ONLINE");
        print_log_tail(c, stderr);
    }
    return false;
}

static void print_ready(local *l)
{
    say("ready: cluster %016" PRIx64 " with %d coordinator%s and %d daemon%s", l->cluster_id,
        l->lay.coords, l->lay.coords == 1 ? "" : "s", l->lay.daemons,
        l->lay.daemons == 1 ? "" : "s");
    printf("\n  coordinators:");
    for (int i = 0; i < l->nkids; i++)
        if (l->kids[i].kind == KIND_COORD) printf(" %s:%d", LOCAL_HOST, l->kids[i].port);
    printf("\n  daemons:     ");
    if (!l->lay.daemons) printf(" (none)");
    for (int i = 0; i < l->nkids; i++)
        if (l->kids[i].kind == KIND_DAEMON) printf(" %s:%d", LOCAL_HOST, l->kids[i].port);
    printf("\n  data & logs:  %s\n\n", l->dir);
    int p = l->lay.base_port;
    char sport[24] = ""; /* keel status asks port 1982 unless told otherwise */
    if (p != LOCAL_DEFAULT_BASE_PORT) snprintf(sport, sizeof sport, " -p %d", p);
    printf("Connect with:\n"
           "  redis-cli -p %d CLUSTER.STATUS\n"
           "  %s status%s\n"
           "  python3: import keel; c = keel.Client('%s', %d)   (keel is in clients/python)\n\n"
           "Ctrl-C stops the cluster (daemons first, then coordinators); running\n"
           "%s local -D %s again restarts it.\n",
           p, l->exe, sport, LOCAL_HOST, p, l->exe, l->dir);
    fflush(stdout);
}

/* Stays in the foreground until a stop is requested (true) or every child
 * has died (false); deaths are reported as they happen. */
static bool run_foreground(local *l)
{
    while (!l->stop_requested) {
        take_signals(l, 1000);
        int alive = 0;
        for (int i = 0; i < l->nkids; i++)
            alive += l->kids[i].pid > 0;
        if (!alive) {
            complain("every process of the cluster has exited; nothing is left to run");
            return false;
        }
    }
    return true;
}

int local_main(int argc, char **argv)
{
    local *l = calloc(1, sizeof *l);
    if (!l) {
        complain("out of memory");
        return 1;
    }
    l->lock_fd = -1;
    int status = local_parse_args(argc, argv, &l->o);
    if (status) goto out;
    if (l->o.help) {
        local_usage();
        goto out;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    status = 1;
    if (mkdir(l->o.dir, 0755) != 0 && errno != EEXIST) {
        complain("cannot create %s: %s", l->o.dir, strerror(errno));
        goto out;
    }
    if (!realpath(l->o.dir, l->dir)) {
        complain("cannot resolve %s: %s", l->o.dir, strerror(errno));
        goto out;
    }
    char err[PATH_MAX + 256];
    if ((l->lock_fd = proc_lock_dir(l->dir, err, sizeof err)) < 0) {
        complain("%s (another keel local runs on it)", err);
        goto out;
    }
    if ((status = resolve_layout(l))) goto out;
    status = 1;
    if (plan_children(l) || check_ports(l)) goto out;
    if (conf_store(l->dir, &l->lay, err, sizeof err)) {
        complain("%s", err);
        goto out;
    }
    find_exe(l);
    if (l->restart) {
        if (l->cluster_id)
            say("restarting the cluster %016" PRIx64 " in %s", l->cluster_id, l->dir);
        else
            say("restarting the cluster in %s", l->dir);
    } else {
        say("creating a new cluster in %s", l->dir);
    }
    if (l->lay.coords % 2 == 0)
        say("note: %d coordinators tolerate no more failures than %d", l->lay.coords,
            l->lay.coords - 1);

    sigemptyset(&l->sigs);
    sigaddset(&l->sigs, SIGINT);
    sigaddset(&l->sigs, SIGTERM);
    sigaddset(&l->sigs, SIGHUP);
    sigaddset(&l->sigs, SIGCHLD);
    sigprocmask(SIG_BLOCK, &l->sigs, &l->oldmask);

    bool ready = start_all(l) == 0 && wait_ready(l);
    if (ready) {
        print_ready(l);
        bool asked = run_foreground(l);
        status = stop_all(l) && asked ? 0 : 1;
    } else {
        bool asked = l->stop_requested;
        if (!asked) complain("could not start the cluster; stopping what was started");
        bool clean = stop_all(l);
        status = asked && clean && !l->died_unexpectedly ? 0 : 1;
    }
    say("stopped; the data stays in %s", l->dir);
    sigprocmask(SIG_SETMASK, &l->oldmask, NULL);

out:
    if (l->lock_fd >= 0) close(l->lock_fd);
    free(l);
    return status;
}
