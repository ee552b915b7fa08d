/* cli: the `keel` command-line client subcommands (put, get, del, search,
 * count, add-space, rm-space, list-spaces, describe-space, status,
 * rm-coordinator, shell), built on the public libkeel API (include/keel.h);
 * `keel status` also reads the coordinator's JSON with json.h.
 *
 * Invariants:
 *   1. Every argument is checked before connecting, so a usage error exits 2
 *      whether or not a server is running.
 *   2. Exit status: 0 success; 1 the server answered an error, the object was
 *      not found (get), a local input (file) could not be read, or a reply
 *      could not be understood (protocol error, a status that is not a JSON
 *      object); 2 usage error; 3 cannot connect, or the connection was lost.
 *   3. Results go to stdout, diagnostics to stderr. In the shell everything,
 *      error replies included, goes to stdout, as redis-cli does.
 *   4. Text from the server is printed so it cannot be mistaken: a value that
 *      is empty or holds a space, a quote, a backslash or a byte outside
 *      printable ASCII is printed in double quotes with C escapes, the same
 *      escapes the shell accepts when reading a line.
 *   5. Only administrative commands are retried (status, rm-coordinator,
 *      add-space, rm-space), only after -TRYAGAIN (the coordinators are
 *      electing a leader, so nothing was applied), for at most RETRY_TOTAL_MS,
 *      with a growing pause; "leader is HOST:PORT" in the error moves the next
 *      attempt to that address. Data commands are never retried.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <editline/readline.h>

#include "buf.h"
#include "json.h"
#include "keel.h"

/* ---------------------------------------------------------------------------
 * Types and constants
 * ------------------------------------------------------------------------- */

#define DEFAULT_HOST "127.0.0.1"
#define CLI_TIMEOUT_MS 60000 /* no answer for a minute: the server is stuck */
#define HISTORY_FILE ".keel_history"
#define HISTORY_MAX 1000
#define MAX_INPUT_BYTES (64u * 1024 * 1024) /* add-space description cap */
#define RETRY_TOTAL_MS 5000                 /* give up retrying -TRYAGAIN after this long */
#define RETRY_FIRST_MS 50                   /* first pause; doubled after every attempt */
#define RETRY_MAX_MS 1000                   /* longest pause */
#define TABLE_MAX_COLS 8

enum exit_code { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_CONN = 3 };

/* Parsed command line of one subcommand. */
typedef struct cli_opts {
    const char *host;
    int port;
    const char *expr; /* add-space -e TEXT */
    uint64_t limit;   /* search --limit N (0: none) */
    int json;         /* status --json */
    int stale;        /* status --stale */
    int npos;         /* positional arguments */
    char **pos;
} cli_opts;

typedef struct cli_cmd {
    const char *name;
    const char *args; /* usage after the common options */
    const char *help; /* one sentence */
    int (*run)(const cli_opts *o);
    int port; /* default port; 0: KEEL_DEFAULT_PORT */
} cli_cmd;

/* ---------------------------------------------------------------------------
 * Forward declarations
 * ------------------------------------------------------------------------- */

static int run_put(const cli_opts *o);
static int run_get(const cli_opts *o);
static int run_del(const cli_opts *o);
static int run_search(const cli_opts *o);
static int run_count(const cli_opts *o);
static int run_add_space(const cli_opts *o);
static int run_rm_space(const cli_opts *o);
static int run_list_spaces(const cli_opts *o);
static int run_describe_space(const cli_opts *o);
static int run_status(const cli_opts *o);
static int run_rm_coordinator(const cli_opts *o);
static int run_shell(const cli_opts *o);

static const cli_cmd commands[] = {
    {"put", "SPACE KEY [ATTR VALUE]...", "create an object or update the named attributes",
     run_put},
    {"get", "SPACE KEY", "print an object, one 'attr: value' per line", run_get},
    {"del", "SPACE KEY", "delete an object", run_del},
    {"search", "SPACE [ATTR OP VALUE]... [--limit N]",
     "print the objects matching every predicate (OP: = < <= > >=)", run_search},
    {"count", "SPACE [ATTR OP VALUE]...", "print how many objects match", run_count},
    {"add-space", "[FILE|-] | -e TEXT",
     "create a space from its description (a file, stdin, or TEXT)", run_add_space},
    {"rm-space", "NAME", "remove a space and all its objects", run_rm_space},
    {"list-spaces", "", "print the name of every space", run_list_spaces},
    {"describe-space", "NAME", "print a space's description", run_describe_space},
    {"status", "[--json] [--stale]",
     "print the cluster's coordinators, daemons, spaces and settings (ask a coordinator)",
     run_status, KEEL_DEFAULT_COORDINATOR_PORT},
    {"rm-coordinator", "ID", "remove coordinator ID from the cluster (ask a coordinator)",
     run_rm_coordinator, KEEL_DEFAULT_COORDINATOR_PORT},
    {"shell", "", "interactive shell; reads commands from stdin when it is not a terminal",
     run_shell},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

/* ---------------------------------------------------------------------------
 * Public API
 * ------------------------------------------------------------------------- */

static const cli_cmd *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    }
    return NULL;
}

int cli_is_command(const char *name)
{
    return name && find_command(name) != NULL;
}

void cli_usage(void)
{
    /* main.c frames these lines with text on stderr: keep the order when
     * both streams go to one pipe. */
    fflush(stderr);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        printf("  keel %s [-h HOST] [-p PORT]%s%s\n", commands[i].name,
               commands[i].args[0] ? " " : "", commands[i].args);
    }
    fflush(stdout);
}

static void command_usage(FILE *f, const cli_cmd *cmd)
{
    fprintf(f, "usage: keel %s [-h HOST] [-p PORT]%s%s\n", cmd->name, cmd->args[0] ? " " : "",
            cmd->args);
}

static int default_port(const cli_cmd *cmd)
{
    return cmd->port ? cmd->port : KEEL_DEFAULT_PORT;
}

/* True for the subcommands retried after -TRYAGAIN (invariant 5). */
static int is_retried(const cli_cmd *cmd)
{
    return cmd->run == run_status || cmd->run == run_rm_coordinator || cmd->run == run_add_space ||
           cmd->run == run_rm_space;
}

static void command_help(const cli_cmd *cmd)
{
    command_usage(stdout, cmd);
    printf("\n%s.\n\n"
           "  -h, --host HOST   server address (default %s)\n"
           "  -p, --port PORT   server port (default %d)\n"
           "      --help        print this help\n",
           cmd->help, DEFAULT_HOST, default_port(cmd));
    if (strcmp(cmd->name, "search") == 0) printf("      --limit N     print at most N objects\n");
    if (strcmp(cmd->name, "add-space") == 0)
        printf("  -e, --expr TEXT   the description itself instead of a file\n");
    if (cmd->run == run_status)
        printf("      --json        print the coordinator's JSON document as received\n"
               "      --stale       let any coordinator answer from its own copy of the\n"
               "                    map, which may be stale (works without a leader)\n");
    if (is_retried(cmd))
        printf("\nWhile the coordinators elect a leader (-TRYAGAIN) the command is retried\n"
               "for up to %d s, following \"leader is HOST:PORT\" when the error names it.\n",
               RETRY_TOTAL_MS / 1000);
    printf("\nExit status: 0 ok, 1 error from the server%s, 2 usage error, 3 cannot "
           "connect.\n",
           strcmp(cmd->name, "get") == 0 ? " or not found" : "");
}

/* Reports a usage error for cmd and returns EXIT_USAGE. */
static int usage_error(const cli_cmd *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const cli_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "keel %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    command_usage(stderr, cmd);
    return EXIT_USAGE;
}

static int parse_port(const char *s, int *port)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > 65535) return -1;
    *port = (int)v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (*s < '0' || *s > '9') return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* If argv[*i] is option `name` (short form `s`, or NULL), stores its value
 * (from "--name=V" or the next argument) and advances *i. Returns 1 matched,
 * 0 not this option, -1 value missing. */
static int take_value(int argc, char **argv, int *i, const char *s, const char *name,
                      const char **value)
{
    const char *a = argv[*i];
    size_t nl = strlen(name);
    if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, name, nl) == 0 && a[2 + nl] == '=') {
        *value = a + 3 + nl;
        return 1;
    }
    if ((s && strcmp(a, s) == 0) || (strncmp(a, "--", 2) == 0 && strcmp(a + 2, name) == 0)) {
        if (*i + 1 >= argc) return -1;
        *value = argv[++*i];
        return 1;
    }
    return 0;
}

int cli_main(int argc, char **argv)
{
    if (argc < 1 || !cli_is_command(argv[0])) {
        fprintf(stderr, "keel: unknown command '%s'\n", argc >= 1 ? argv[0] : "");
        return EXIT_USAGE;
    }
    const cli_cmd *cmd = find_command(argv[0]);
    cli_opts o = {.host = DEFAULT_HOST, .port = default_port(cmd)};
    int is_search = strcmp(cmd->name, "search") == 0;
    int is_add = strcmp(cmd->name, "add-space") == 0;
    int is_status = cmd->run == run_status;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int m;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "--help") == 0) {
            command_help(cmd);
            return EXIT_OK;
        }
        if (a[0] != '-' || a[1] == '\0') break; /* first positional ("-" is stdin) */
        if ((m = take_value(argc, argv, &i, "-h", "host", &v)) != 0) {
            if (m < 0 || !*v) return usage_error(cmd, "%s needs a host", a);
            o.host = v;
        } else if ((m = take_value(argc, argv, &i, "-p", "port", &v)) != 0) {
            if (m < 0) return usage_error(cmd, "%s needs a port", a);
            if (parse_port(v, &o.port) < 0) return usage_error(cmd, "bad port '%s' (1-65535)", v);
        } else if (is_add && (m = take_value(argc, argv, &i, "-e", "expr", &v)) != 0) {
            if (m < 0) return usage_error(cmd, "%s needs the description text", a);
            o.expr = v;
        } else if (is_search && (m = take_value(argc, argv, &i, NULL, "limit", &v)) != 0) {
            if (m < 0 || parse_u64(v, &o.limit) < 0)
                return usage_error(cmd, "--limit needs a number");
        } else if (is_status && strcmp(a, "--json") == 0) {
            o.json = 1;
        } else if (is_status && strcmp(a, "--stale") == 0) {
            o.stale = 1;
        } else {
            return usage_error(cmd, "unknown option '%s'", a);
        }
    }
    o.npos = argc - i;
    o.pos = argv + i;
    return cmd->run(&o);
}

/* ---------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------- */

/* True if s[0, n) must be quoted to be read back unambiguously (inv. 4). */
static int needs_quotes(const char *s, size_t n)
{
    if (n == 0) return 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch >= 0x7f || ch == '"' || ch == '\'' || ch == '\\') return 1;
    }
    return 0;
}

/* Appends s[0, n) to b in double quotes with C escapes. */
static void quote_into(buf *b, const char *s, size_t n)
{
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"':
            buf_puts(b, "\\\"");
            break;
        case '\\':
            buf_puts(b, "\\\\");
            break;
        case '\n':
            buf_puts(b, "\\n");
            break;
        case '\r':
            buf_puts(b, "\\r");
            break;
        case '\t':
            buf_puts(b, "\\t");
            break;
        case '\a':
            buf_puts(b, "\\a");
            break;
        case '\b':
            buf_puts(b, "\\b");
            break;
        default:
            if (ch < ' ' || ch >= 0x7f)
                buf_printf(b, "\\x%02x", ch);
            else
                buf_putc(b, (char)ch);
        }
    }
    buf_putc(b, '"');
}

/* Appends a value to b bare if that is unambiguous, else quoted (inv. 4). */
static void value_into(buf *b, const char *s, size_t n)
{
    if (needs_quotes(s, n))
        quote_into(b, s, n);
    else
        buf_append(b, s, n);
}

/* Prints s[0, n) in double quotes with C escapes. */
static void print_quoted(FILE *f, const char *s, size_t n)
{
    buf b;
    buf_init(&b);
    quote_into(&b, s, n);
    fwrite(b.data, 1, b.len, f);
    buf_free(&b);
}

/* Prints a value bare if that is unambiguous, else quoted. */
static void print_value(FILE *f, const char *s, size_t n)
{
    if (needs_quotes(s, n))
        print_quoted(f, s, n);
    else
        fwrite(s, 1, n, f);
}

static void print_object(const keel_object *obj, int with_key)
{
    if (with_key && obj->key_name) {
        printf("%s: ", obj->key_name);
        print_value(stdout, obj->key, obj->key_len);
        putchar('\n');
    }
    for (size_t i = 0; i < obj->nattrs; i++) {
        printf("%s: ", obj->attrs[i].name);
        print_value(stdout, obj->attrs[i].value, obj->attrs[i].value_len);
        putchar('\n');
    }
}

/* ---------------------------------------------------------------------------
 * Subcommands
 * ------------------------------------------------------------------------- */

/* Connects for a subcommand; on failure prints why and returns NULL. */
static keel_client *cli_connect(const cli_opts *o)
{
    keel_client *c = NULL;
    int rc = keel_client_connect(o->host, o->port, CLI_TIMEOUT_MS, &c);
    if (rc == KEEL_OK) return c;
    fprintf(stderr, "keel: %s\n",
            c && *keel_client_errmsg(c) ? keel_client_errmsg(c) : keel_strerror(rc));
    keel_client_close(c);
    return NULL;
}

/* Reports a failed call and returns the exit status for it (inv. 2). */
static int report(keel_client *c, int rc)
{
    const char *msg = keel_client_errmsg(c);
    fprintf(stderr, "keel: %s\n", *msg ? msg : keel_strerror(rc));
    return rc == KEEL_ERR_IO || rc == KEEL_ERR_CONNECT ? EXIT_CONN : EXIT_FAIL;
}

/* Ends a subcommand: closes the client, turns rc into an exit status. */
static int finish(keel_client *c, int rc)
{
    int code = rc == KEEL_OK ? EXIT_OK : report(c, rc);
    keel_client_close(c);
    return code;
}

static const cli_cmd *cmd_named(const char *name)
{
    return find_command(name);
}

/* ---------------------------------------------------------------------------
 * Retrying administrative commands (invariant 5)
 * ------------------------------------------------------------------------- */

/* One attempt of a retried command: issues the call on c and keeps any
 * result in arg. Returns the libkeel status. */
typedef int (*attempt_fn)(keel_client *c, void *arg);

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Finds "leader is HOST:PORT" in a -TRYAGAIN line and stores HOST (without
 * the brackets of an IPv6 address) and PORT. Returns 0, or -1 if the line
 * names no usable address. */
static int leader_hint(const char *msg, char *host, size_t hostcap, int *port)
{
    static const char mark[] = "leader is ";
    const char *p = strstr(msg, mark);
    if (!p) return -1;
    p += sizeof mark - 1;
    size_t n = strcspn(p, " \t\r\n");
    const char *colon = NULL;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ':') colon = p + i;
    }
    if (!colon) return -1;
    const char *h = p, *hend = colon;
    if (*h == '[' && hend > h + 1 && hend[-1] == ']') {
        h++;
        hend--;
    }
    size_t hl = (size_t)(hend - h);
    size_t pl = (size_t)(p + n - colon - 1);
    char portstr[8];
    if (hl == 0 || hl >= hostcap || pl == 0 || pl >= sizeof portstr) return -1;
    memcpy(portstr, colon + 1, pl);
    portstr[pl] = '\0';
    if (parse_port(portstr, port) < 0) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    return 0;
}

/* Connects to o's address and runs fn, again after -TRYAGAIN with a growing
 * pause for at most RETRY_TOTAL_MS, moving to the leader an error names.
 * Reports any failure (the last one, after retries) and returns the exit
 * status; on EXIT_OK fn's result is in arg. */
static int run_retrying(const cli_opts *o, attempt_fn fn, void *arg)
{
    keel_client *c = cli_connect(o);
    if (!c) return EXIT_CONN;
    char host[256];
    snprintf(host, sizeof host, "%s", o->host);
    int port = o->port;
    int64_t deadline = mono_ms() + RETRY_TOTAL_MS;
    int64_t pause = RETRY_FIRST_MS;
    for (;;) {
        int rc = fn(c, arg);
        int64_t left = deadline - mono_ms();
        if (rc != KEEL_ERR_TRYAGAIN || left <= 0) return finish(c, rc);
        char lhost[256];
        int lport = 0;
        int moved = leader_hint(keel_client_errmsg(c), lhost, sizeof lhost, &lport) == 0 &&
                    (strcmp(lhost, host) != 0 || lport != port);
        sleep_ms(pause < left ? pause : left);
        pause = pause * 2 < RETRY_MAX_MS ? pause * 2 : RETRY_MAX_MS;
        if (!moved) continue;
        /* A leader we cannot reach from here: stay where we are. */
        keel_client *n = NULL;
        if (keel_client_connect(lhost, lport, CLI_TIMEOUT_MS, &n) == KEEL_OK) {
            keel_client_close(c);
            c = n;
            snprintf(host, sizeof host, "%s", lhost);
            port = lport;
        } else {
            keel_client_close(n);
        }
    }
}

static int run_put(const cli_opts *o)
{
    const cli_cmd *cmd = cmd_named("put");
    if (o->npos < 2) return usage_error(cmd, "needs SPACE and KEY");
    if (o->npos % 2) return usage_error(cmd, "attribute '%s' has no value", o->pos[o->npos - 1]);
    size_t n = (size_t)(o->npos - 2) / 2;
    keel_attr *attrs = n ? calloc(n, sizeof *attrs) : NULL;
    if (n && !attrs) {
        fprintf(stderr, "keel: out of memory\n");
        return EXIT_FAIL;
    }
    for (size_t i = 0; i < n; i++) {
        attrs[i].name = o->pos[2 + 2 * i];
        attrs[i].value = o->pos[3 + 2 * i];
        attrs[i].value_len = strlen(attrs[i].value);
    }
    keel_client *c = cli_connect(o);
    if (!c) {
        free(attrs);
        return EXIT_CONN;
    }
    int rc = keel_put(c, o->pos[0], o->pos[1], strlen(o->pos[1]), attrs, n);
    free(attrs);
    return finish(c, rc);
}

static int run_get(const cli_opts *o)
{
    if (o->npos != 2) return usage_error(cmd_named("get"), "needs exactly SPACE and KEY");
    keel_client *c = cli_connect(o);
    if (!c) return EXIT_CONN;
    keel_object *obj = NULL;
    int rc = keel_get(c, o->pos[0], o->pos[1], strlen(o->pos[1]), &obj);
    if (rc != KEEL_OK) return finish(c, rc);
    keel_client_close(c);
    if (!obj) {
        printf("(not found)\n");
        return EXIT_FAIL;
    }
    print_object(obj, 0);
    keel_object_free(obj);
    return EXIT_OK;
}

static int run_del(const cli_opts *o)
{
    if (o->npos != 2) return usage_error(cmd_named("del"), "needs exactly SPACE and KEY");
    keel_client *c = cli_connect(o);
    if (!c) return EXIT_CONN;
    int existed = 0;
    int rc = keel_del(c, o->pos[0], o->pos[1], strlen(o->pos[1]), &existed);
    if (rc == KEEL_OK) printf("%s\n", existed ? "deleted" : "(not found)");
    return finish(c, rc);
}

/* Parses pos[1..] as ATTR OP VALUE triples (search also takes --limit N
 * among them). Returns the predicate count, or -1 after a usage error. */
static int parse_preds(const cli_cmd *cmd, const cli_opts *o, int allow_limit, keel_pred *preds,
                       uint64_t *limit)
{
    int n = 0;
    for (int i = 1; i < o->npos;) {
        if (allow_limit && strcmp(o->pos[i], "--limit") == 0) {
            if (i + 1 >= o->npos || parse_u64(o->pos[i + 1], limit) < 0) {
                usage_error(cmd, "--limit needs a number");
                return -1;
            }
            i += 2;
            continue;
        }
        if (i + 2 >= o->npos) {
            usage_error(cmd, "predicate '%s' is incomplete: use ATTR OP VALUE", o->pos[i]);
            return -1;
        }
        keel_op op;
        if (keel_op_parse(o->pos[i + 1], &op) != KEEL_OK) {
            usage_error(cmd, "unknown operator '%s' (use = < <= > >=)", o->pos[i + 1]);
            return -1;
        }
        preds[n].name = o->pos[i];
        preds[n].op = op;
        preds[n].value = o->pos[i + 2];
        preds[n].value_len = strlen(o->pos[i + 2]);
        n++;
        i += 3;
    }
    return n;
}

static int run_search(const cli_opts *o)
{
    const cli_cmd *cmd = cmd_named("search");
    if (o->npos < 1) return usage_error(cmd, "needs SPACE");
    keel_pred *preds = calloc((size_t)o->npos, sizeof *preds);
    if (!preds) {
        fprintf(stderr, "keel: out of memory\n");
        return EXIT_FAIL;
    }
    uint64_t limit = o->limit;
    int n = parse_preds(cmd, o, 1, preds, &limit);
    if (n < 0) {
        free(preds);
        return EXIT_USAGE;
    }
    keel_client *c = cli_connect(o);
    if (!c) {
        free(preds);
        return EXIT_CONN;
    }
    keel_object **objs = NULL;
    size_t count = 0;
    int rc = keel_search(c, o->pos[0], preds, (size_t)n, limit, &objs, &count);
    free(preds);
    if (rc == KEEL_OK) {
        for (size_t i = 0; i < count; i++) {
            if (i) putchar('\n');
            print_object(objs[i], 1);
        }
        keel_objects_free(objs, count);
    }
    return finish(c, rc);
}

static int run_count(const cli_opts *o)
{
    const cli_cmd *cmd = cmd_named("count");
    if (o->npos < 1) return usage_error(cmd, "needs SPACE");
    keel_pred *preds = calloc((size_t)o->npos, sizeof *preds);
    if (!preds) {
        fprintf(stderr, "keel: out of memory\n");
        return EXIT_FAIL;
    }
    uint64_t unused = 0;
    int n = parse_preds(cmd, o, 0, preds, &unused);
    if (n < 0) {
        free(preds);
        return EXIT_USAGE;
    }
    keel_client *c = cli_connect(o);
    if (!c) {
        free(preds);
        return EXIT_CONN;
    }
    uint64_t count = 0;
    int rc = keel_count(c, o->pos[0], preds, (size_t)n, &count);
    free(preds);
    if (rc == KEEL_OK) printf("%llu\n", (unsigned long long)count);
    return finish(c, rc);
}

/* Reads all of f into a NUL-terminated string. NULL on error (errno set). */
static char *read_all(FILE *f)
{
    size_t len = 0, cap = 4096;
    char *s = malloc(cap);
    if (!s) return NULL;
    for (;;) {
        if (cap - len < 2) {
            if (cap >= MAX_INPUT_BYTES) {
                free(s);
                errno = EFBIG;
                return NULL;
            }
            char *t = realloc(s, cap * 2);
            if (!t) {
                free(s);
                return NULL;
            }
            s = t;
            cap *= 2;
        }
        size_t n = fread(s + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                free(s);
                errno = EIO;
                return NULL;
            }
            break;
        }
    }
    s[len] = '\0';
    return s;
}

static int attempt_add_space(keel_client *c, void *text)
{
    return keel_space_add(c, text);
}

static int run_add_space(const cli_opts *o)
{
    const cli_cmd *cmd = cmd_named("add-space");
    if (o->expr && o->npos) return usage_error(cmd, "give either -e TEXT or a FILE, not both");
    if (o->npos > 1) return usage_error(cmd, "takes at most one FILE");
    char *text = NULL;
    if (o->expr) {
        text = strdup(o->expr);
    } else if (o->npos == 0 || strcmp(o->pos[0], "-") == 0) {
        if (isatty(STDIN_FILENO))
            fprintf(stderr, "keel: reading the space description from stdin (end with Ctrl-D)\n");
        text = read_all(stdin);
        if (!text) {
            fprintf(stderr, "keel: cannot read stdin: %s\n", strerror(errno));
            return EXIT_FAIL;
        }
    } else {
        FILE *f = fopen(o->pos[0], "r");
        if (!f) {
            fprintf(stderr, "keel: cannot open %s: %s\n", o->pos[0], strerror(errno));
            return EXIT_FAIL;
        }
        text = read_all(f);
        int saved = errno;
        fclose(f);
        if (!text) {
            fprintf(stderr, "keel: cannot read %s: %s\n", o->pos[0], strerror(saved));
            return EXIT_FAIL;
        }
    }
    if (!text) {
        fprintf(stderr, "keel: out of memory\n");
        return EXIT_FAIL;
    }
    int code = run_retrying(o, attempt_add_space, text);
    free(text);
    return code;
}

static int attempt_rm_space(keel_client *c, void *name)
{
    return keel_space_drop(c, name);
}

static int run_rm_space(const cli_opts *o)
{
    if (o->npos != 1) return usage_error(cmd_named("rm-space"), "needs exactly one NAME");
    return run_retrying(o, attempt_rm_space, o->pos[0]);
}

static int run_list_spaces(const cli_opts *o)
{
    if (o->npos != 0) return usage_error(cmd_named("list-spaces"), "takes no arguments");
    keel_client *c = cli_connect(o);
    if (!c) return EXIT_CONN;
    char **names = NULL;
    size_t n = 0;
    int rc = keel_space_list(c, &names, &n);
    if (rc == KEEL_OK) {
        for (size_t i = 0; i < n; i++) {
            print_value(stdout, names[i], strlen(names[i]));
            putchar('\n');
        }
        keel_strings_free(names, n);
    }
    return finish(c, rc);
}

static int run_describe_space(const cli_opts *o)
{
    if (o->npos != 1) return usage_error(cmd_named("describe-space"), "needs exactly one NAME");
    keel_client *c = cli_connect(o);
    if (!c) return EXIT_CONN;
    char *text = NULL;
    int rc = keel_space_describe(c, o->pos[0], &text);
    if (rc == KEEL_OK) {
        size_t n = strlen(text);
        fputs(text, stdout);
        if (n == 0 || text[n - 1] != '\n') putchar('\n');
        keel_free(text);
    }
    return finish(c, rc);
}

/* ---------------------------------------------------------------------------
 * Cluster administration: status, rm-coordinator
 * ------------------------------------------------------------------------- */

/* A text table: an optional header row and rows of ncols cells, printed
 * with each column as wide as its widest cell. Cells hold only printable
 * ASCII (server text goes through value_into), so a byte is a column. */
typedef struct table {
    int ncols;
    const char *const *head; /* ncols titles, or NULL: no header row */
    buf text;                /* every cell, NUL-terminated, row by row */
    buf offs;                /* the offset in text of each cell (size_t) */
    size_t ncells;
} table;

static void table_init(table *t, int ncols, const char *const *head)
{
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
    t->head = head;
    buf_init(&t->text);
    buf_init(&t->offs);
}

static void table_free(table *t)
{
    buf_free(&t->text);
    buf_free(&t->offs);
}

/* A cell is the bytes appended to t->text between cell_begin and cell_end. */
static void cell_begin(table *t)
{
    size_t off = t->text.len;
    buf_append(&t->offs, &off, sizeof off);
}

static void cell_end(table *t)
{
    buf_putc(&t->text, '\0');
    t->ncells++;
}

static void cell_str(table *t, const char *s)
{
    cell_begin(t);
    buf_puts(&t->text, s);
    cell_end(t);
}

/* A cell showing a JSON value: "-" when absent or null, yes/no for
 * booleans, numbers as written, strings bare or quoted (invariant 4). */
static void cell_json(table *t, const json_value *v)
{
    cell_begin(t);
    if (!v || v->type == JSON_NULL)
        buf_putc(&t->text, '-');
    else if (v->type == JSON_TRUE || v->type == JSON_FALSE)
        buf_puts(&t->text, v->type == JSON_TRUE ? "yes" : "no");
    else if (v->type == JSON_NUMBER && v->is_int)
        buf_printf(&t->text, "%lld", (long long)v->integer);
    else if (v->type == JSON_NUMBER)
        buf_printf(&t->text, "%.17g", v->number);
    else if (v->type == JSON_STRING)
        value_into(&t->text, v->str, v->len);
    else
        buf_puts(&t->text, v->type == JSON_ARRAY ? "[...]" : "{...}");
    cell_end(t);
}

static const char *table_cell(const table *t, size_t i)
{
    size_t off;
    memcpy(&off, t->offs.data + i * sizeof off, sizeof off);
    return t->text.data + off;
}

/* Prints t, every line indented by `indent` spaces, columns two spaces
 * apart, no trailing blanks. */
static void table_print(const table *t, int indent)
{
    size_t width[TABLE_MAX_COLS] = {0};
    int nc = t->ncols;
    for (int c = 0; c < nc && t->head; c++)
        width[c] = strlen(t->head[c]);
    for (size_t i = 0; i < t->ncells; i++) {
        size_t w = strlen(table_cell(t, i));
        if (w > width[i % (size_t)nc]) width[i % (size_t)nc] = w;
    }
    size_t rows = t->ncells / (size_t)nc;
    for (size_t r = t->head ? 0 : 1; r <= rows; r++) {
        printf("%*s", indent, "");
        for (int c = 0; c < nc; c++) {
            const char *cell =
                r == 0 ? t->head[c] : table_cell(t, (r - 1) * (size_t)nc + (size_t)c);
            if (c + 1 < nc)
                printf("%-*s  ", (int)width[c], cell);
            else
                printf("%s\n", cell);
        }
    }
}

/* Appends "12s ago", "5m03s ago", "2h07m ago", "3d04h ago" (or "in 3s" for
 * a time ahead of this machine's clock). */
static void age_into(buf *b, int64_t secs)
{
    uint64_t s = secs < 0 ? (uint64_t)0 - (uint64_t)secs : (uint64_t)secs;
    char span[48];
    if (s < 60)
        snprintf(span, sizeof span, "%llus", (unsigned long long)s);
    else if (s < 3600)
        snprintf(span, sizeof span, "%llum%02llus", (unsigned long long)(s / 60),
                 (unsigned long long)(s % 60));
    else if (s < 86400)
        snprintf(span, sizeof span, "%lluh%02llum", (unsigned long long)(s / 3600),
                 (unsigned long long)(s % 3600 / 60));
    else
        snprintf(span, sizeof span, "%llud%02lluh", (unsigned long long)(s / 86400),
                 (unsigned long long)(s % 86400 / 3600));
    buf_printf(b, secs < 0 ? "in %s" : "%s ago", span);
}

/* A cell for a wall-clock time in ms since the epoch: local time and how
 * long ago, e.g. "2026-11-20 14:05:07 (12s ago)". */
static void cell_since(table *t, const json_value *v)
{
    if (!v || v->type != JSON_NUMBER || !v->is_int || v->integer <= 0) {
        cell_json(t, v);
        return;
    }
    int64_t ms = v->integer;
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char when[64];
    if (!localtime_r(&secs, &tm) || strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm) == 0) {
        cell_json(t, v);
        return;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    cell_begin(t);
    buf_printf(&t->text, "%s (", when);
    age_into(&t->text, (now_ms - ms) / 1000);
    buf_putc(&t->text, ')');
    cell_end(t);
}

/* The list under name in root, or NULL when absent or not an array. */
static const json_value *list_of(const json_value *root, const char *name)
{
    const json_value *v = json_get(root, name);
    return v && v->type == JSON_ARRAY ? v : NULL;
}

/* Prints a section title, then t or "(none)". */
static void print_section(const char *title, const table *t, size_t n)
{
    printf("\n%s (%zu)\n", title, n);
    if (n)
        table_print(t, 2);
    else
        printf("  (none)\n");
}

static void print_summary(const json_value *root)
{
    table t;
    table_init(&t, 2, NULL);
    cell_str(&t, "cluster");
    cell_json(&t, json_get(root, "cluster_id"));
    cell_str(&t, "map version");
    cell_json(&t, json_get(root, "map_version"));
    cell_str(&t, "term");
    cell_json(&t, json_get(root, "term"));
    cell_str(&t, "leader");
    const json_value *leader = json_get(root, "leader");
    if (!leader || leader->type != JSON_NUMBER || !leader->is_int || leader->integer <= 0) {
        cell_str(&t, "none (no leader known)");
    } else {
        /* The leader's id and, when listed, its address. */
        const json_value *coords = list_of(root, "coordinators"), *addr = NULL;
        for (const json_value *e = coords ? coords->child : NULL; e && !addr; e = e->next) {
            const json_value *id = json_get(e, "id");
            if (id && id->type == JSON_NUMBER && id->is_int && id->integer == leader->integer)
                addr = json_get(e, "address");
        }
        cell_begin(&t);
        buf_printf(&t.text, "%lld", (long long)leader->integer);
        if (addr && addr->type == JSON_STRING) {
            buf_puts(&t.text, " (");
            value_into(&t.text, addr->str, addr->len);
            buf_putc(&t.text, ')');
        }
        cell_end(&t);
    }
    cell_str(&t, "commit index");
    cell_json(&t, json_get(root, "commit_index"));
    table_print(&t, 0);
    table_free(&t);
}

static void print_coordinators(const json_value *list)
{
    static const char *const head[] = {"ID", "ADDRESS", "ROLE", "VOTER", "MATCH", "REACHABLE"};
    table t;
    table_init(&t, 6, head);
    for (const json_value *e = list ? list->child : NULL; e; e = e->next) {
        cell_json(&t, json_get(e, "id"));
        cell_json(&t, json_get(e, "address"));
        cell_json(&t, json_get(e, "role"));
        cell_json(&t, json_get(e, "voter"));
        cell_json(&t, json_get(e, "match_index"));
        cell_json(&t, json_get(e, "reachable"));
    }
    print_section("coordinators", &t, list ? list->count : 0);
    table_free(&t);
}

static void print_daemons(const json_value *list)
{
    static const char *const head[] = {"ID", "ADDRESS", "STATE", "SINCE"};
    table t;
    table_init(&t, 4, head);
    for (const json_value *e = list ? list->child : NULL; e; e = e->next) {
        cell_json(&t, json_get(e, "id"));
        cell_json(&t, json_get(e, "address"));
        cell_json(&t, json_get(e, "state"));
        cell_since(&t, json_get(e, "since_ms"));
    }
    print_section("daemons", &t, list ? list->count : 0);
    table_free(&t);
}

static void print_spaces(const json_value *list)
{
    static const char *const head[] = {"NAME",      "PARTITIONS", "TOLERATE",
                                       "PROTECTED", "DEGRADED",   "UNAVAILABLE"};
    table t;
    table_init(&t, 6, head);
    for (const json_value *e = list ? list->child : NULL; e; e = e->next) {
        const json_value *health = json_get(e, "health");
        cell_json(&t, json_get(e, "name"));
        cell_json(&t, json_get(e, "partitions"));
        cell_json(&t, json_get(e, "tolerate"));
        cell_json(&t, json_get(health, "PROTECTED"));
        cell_json(&t, json_get(health, "DEGRADED"));
        cell_json(&t, json_get(health, "UNAVAILABLE"));
    }
    print_section("spaces", &t, list ? list->count : 0);
    table_free(&t);
}

/* A JSON object as a two-column table under a title (settings, protection). */
static void print_json_object(const char *title, const json_value *settings)
{
    table t;
    table_init(&t, 2, NULL);
    size_t n = 0;
    if (settings && settings->type == JSON_OBJECT) {
        for (const json_value *m = settings->child; m; m = m->next, n++) {
            cell_begin(&t);
            value_into(&t.text, m->key, m->key_len);
            cell_end(&t);
            cell_json(&t, m);
        }
    }
    printf("\n%s\n", title);
    if (n)
        table_print(&t, 2);
    else
        printf("  (none)\n");
    table_free(&t);
}

/* Prints the CLUSTER.STATUS document as tables. Returns the exit status: a
 * reply that is not a JSON object is an error (1). */
static int print_status(const char *text, size_t len)
{
    json_doc *doc = NULL;
    json_error err;
    if (json_parse(text, len, NULL, &doc, &err) != JSON_OK) {
        fprintf(stderr, "keel: the CLUSTER.STATUS reply is not valid JSON: byte %zu: %s\n",
                err.offset, err.msg);
        return EXIT_FAIL;
    }
    const json_value *root = json_root(doc);
    if (root->type != JSON_OBJECT) {
        fprintf(stderr, "keel: the CLUSTER.STATUS reply is a JSON %s, not an object\n",
                json_type_name(root->type));
        json_free(doc);
        return EXIT_FAIL;
    }
    print_summary(root);
    print_coordinators(list_of(root, "coordinators"));
    print_daemons(list_of(root, "daemons"));
    print_spaces(list_of(root, "spaces"));
    /* re-protection progress: partitions degraded, being copied, waiting
     * for a returning daemon, or without a place to go */
    if (json_get(root, "protection")) print_json_object("protection", json_get(root, "protection"));
    print_json_object("settings", json_get(root, "settings"));
    json_free(doc);
    return EXIT_OK;
}

/* The request and result of one `keel status`. */
typedef struct status_call {
    int stale;  /* send STALE */
    char *json; /* the reply, once an attempt succeeded (keel_free) */
} status_call;

static int attempt_status(keel_client *c, void *arg)
{
    status_call *sc = arg;
    return keel_cluster_status(c, sc->stale, &sc->json);
}

static int run_status(const cli_opts *o)
{
    if (o->npos != 0) return usage_error(cmd_named("status"), "takes no arguments");
    status_call sc = {.stale = o->stale};
    int code = run_retrying(o, attempt_status, &sc);
    if (code != EXIT_OK) return code;
    size_t len = strlen(sc.json);
    if (o->json) {
        fputs(sc.json, stdout);
        if (len == 0 || sc.json[len - 1] != '\n') putchar('\n');
    } else {
        code = print_status(sc.json, len);
    }
    keel_free(sc.json);
    return code;
}

static int attempt_rm_coordinator(keel_client *c, void *id)
{
    return keel_coordinator_remove(c, *(const uint64_t *)id);
}

static int run_rm_coordinator(const cli_opts *o)
{
    const cli_cmd *cmd = cmd_named("rm-coordinator");
    if (o->npos != 1) return usage_error(cmd, "needs exactly one ID");
    uint64_t id = 0;
    if (parse_u64(o->pos[0], &id) < 0 || id == 0)
        return usage_error(cmd, "bad coordinator id '%s' (a number from 1)", o->pos[0]);
    return run_retrying(o, attempt_rm_coordinator, &id);
}

/* ---------------------------------------------------------------------------
 * Shell: line splitting
 * ------------------------------------------------------------------------- */

/* The words of one shell line. */
typedef struct words {
    int argc;
    char **argv; /* each word, NUL-terminated (may hold NUL bytes) */
    size_t *argvlen;
} words;

static void words_free(words *w)
{
    for (int i = 0; i < w->argc; i++)
        free(w->argv[i]);
    free(w->argv);
    free(w->argvlen);
    memset(w, 0, sizeof *w);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Splits line into words: blanks separate words; "double quotes" take the
 * escapes \n \r \t \a \b \\ \" \xHH (any other escaped character stands for
 * itself); 'single quotes' take only \' and \\. Quoted and bare parts next to
 * each other join into one word, as in a POSIX shell. Returns 0, or -1 with
 * *why set for an unbalanced quote (or out of memory). */
static int split_line(const char *line, words *w, const char **why)
{
    memset(w, 0, sizeof *w);
    size_t len = strlen(line);
    /* No word is longer than the line. */
    char *cur = malloc(len + 1);
    if (!cur) {
        *why = "out of memory";
        return -1;
    }
    const char *p = line;
    int cap = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p) break;
        size_t n = 0;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            if (*p == '"') {
                p++;
                for (;;) {
                    if (!*p) goto err_unbalanced;
                    if (*p == '"') {
                        p++;
                        break;
                    }
                    if (*p == '\\' && p[1]) {
                        p++;
                        int h1, h2;
                        switch (*p) {
                        case 'n':
                            cur[n++] = '\n';
                            break;
                        case 'r':
                            cur[n++] = '\r';
                            break;
                        case 't':
                            cur[n++] = '\t';
                            break;
                        case 'a':
                            cur[n++] = '\a';
                            break;
                        case 'b':
                            cur[n++] = '\b';
                            break;
                        case 'x':
                            if ((h1 = hexval(p[1])) >= 0 && (h2 = hexval(p[2])) >= 0) {
                                cur[n++] = (char)(h1 * 16 + h2);
                                p += 2;
                            } else {
                                cur[n++] = 'x';
                            }
                            break;
                        default:
                            cur[n++] = *p;
                            break;
                        }
                        p++;
                        continue;
                    }
                    cur[n++] = *p++;
                }
            } else if (*p == '\'') {
                p++;
                for (;;) {
                    if (!*p) goto err_unbalanced;
                    if (*p == '\'') {
                        p++;
                        break;
                    }
                    if (*p == '\\' && (p[1] == '\'' || p[1] == '\\')) p++;
                    cur[n++] = *p++;
                }
            } else {
                cur[n++] = *p++;
            }
        }
        if (w->argc == cap) {
            int ncap = cap ? cap * 2 : 8;
            char **av = realloc(w->argv, (size_t)ncap * sizeof *av);
            if (!av) goto err_nomem;
            w->argv = av;
            size_t *al = realloc(w->argvlen, (size_t)ncap * sizeof *al);
            if (!al) goto err_nomem;
            w->argvlen = al;
            cap = ncap;
        }
        char *word = malloc(n + 1);
        if (!word) goto err_nomem;
        memcpy(word, cur, n);
        word[n] = '\0';
        w->argv[w->argc] = word;
        w->argvlen[w->argc] = n;
        w->argc++;
    }
    free(cur);
    return 0;

err_unbalanced:
    *why = "unbalanced quotes";
    goto err_after_cur;
err_nomem:
    *why = "out of memory";
err_after_cur:
    free(cur);
    words_free(w);
    return -1;
}

/* ---------------------------------------------------------------------------
 * Shell: printing replies
 * ------------------------------------------------------------------------- */

static void indent(int n)
{
    for (int i = 0; i < n; i++)
        putchar(' ');
}

/* True if a bulk reply is multi-line printable text (INFO, SPACE.DESCRIBE,
 * CLUSTER.STATUS): printed as is rather than quoted. */
static int is_text_block(const keel_reply *r)
{
    if (r->type != KEEL_REPLY_BULK || !memchr(r->str, '\n', r->len)) return 0;
    for (size_t i = 0; i < r->len; i++) {
        unsigned char ch = (unsigned char)r->str[i];
        if ((ch < ' ' && ch != '\n' && ch != '\r' && ch != '\t') || ch == 0x7f) return 0;
    }
    return 1;
}

/* Prints r the way redis-cli does; the first line is already positioned,
 * later lines of nested arrays are indented by `col` columns. */
static void print_reply(const keel_reply *r, int col)
{
    switch (r->type) {
    case KEEL_REPLY_STATUS:
        fwrite(r->str, 1, r->len, stdout);
        putchar('\n');
        break;
    case KEEL_REPLY_ERROR:
        printf("(error) ");
        fwrite(r->str, 1, r->len, stdout);
        putchar('\n');
        break;
    case KEEL_REPLY_INT:
        printf("(integer) %lld\n", (long long)r->integer);
        break;
    case KEEL_REPLY_BULK:
        print_quoted(stdout, r->str, r->len);
        putchar('\n');
        break;
    case KEEL_REPLY_NIL:
        printf("(nil)\n");
        break;
    case KEEL_REPLY_ARRAY: {
        if (r->elements == 0) {
            printf("(empty array)\n");
            break;
        }
        int width = snprintf(NULL, 0, "%zu", r->elements);
        for (size_t i = 0; i < r->elements; i++) {
            if (i) indent(col);
            int label = printf("%*zu) ", width, i + 1);
            print_reply(r->element[i], col + label);
        }
        break;
    }
    }
}

/* True if r is a flat array of bulk name / value pairs from index first. */
static int is_pairs(const keel_reply *r)
{
    if (r->type != KEEL_REPLY_ARRAY || r->elements % 2) return 0;
    for (size_t i = 0; i < r->elements; i += 2) {
        const keel_reply *v = r->element[i + 1];
        if (r->element[i]->type != KEEL_REPLY_BULK) return 0;
        if (v->type != KEEL_REPLY_BULK && v->type != KEEL_REPLY_INT) return 0;
    }
    return 1;
}

static void print_pairs(const keel_reply *r)
{
    for (size_t i = 0; i < r->elements; i += 2) {
        const keel_reply *v = r->element[i + 1];
        fwrite(r->element[i]->str, 1, r->element[i]->len, stdout);
        printf(": ");
        if (v->type == KEEL_REPLY_INT)
            printf("%lld", (long long)v->integer);
        else
            print_value(stdout, v->str, v->len);
        putchar('\n');
    }
}

/* Prints the reply to command argv[0], readably for GET and SEARCH. */
static void shell_print(const char *cmd, const keel_reply *r)
{
    if (strcasecmp(cmd, "GET") == 0 && is_pairs(r) && r->elements) {
        print_pairs(r);
        return;
    }
    if (strcasecmp(cmd, "SEARCH") == 0 && r->type == KEEL_REPLY_ARRAY) {
        int ok = 1;
        for (size_t i = 0; i < r->elements && ok; i++)
            ok = is_pairs(r->element[i]);
        if (ok) {
            if (r->elements == 0) printf("(no objects)\n");
            for (size_t i = 0; i < r->elements; i++) {
                if (i) putchar('\n');
                print_pairs(r->element[i]);
            }
            return;
        }
    }
    if (is_text_block(r)) {
        fwrite(r->str, 1, r->len, stdout);
        if (r->str[r->len - 1] != '\n') putchar('\n');
        return;
    }
    print_reply(r, 0);
}

/* ---------------------------------------------------------------------------
 * Shell: the loop
 * ------------------------------------------------------------------------- */

static void shell_help(void)
{
    printf("Commands are sent to the server as typed; words are split on blanks,\n"
           "\"double\" and 'single' quotes keep blanks (\"\\n\", \"\\x00\" escapes work).\n"
           "\n"
           "  PUT space key [attr value]...          create or update an object\n"
           "  GET space key                          read an object\n"
           "  DEL space key                          delete an object\n"
           "  CPUT space key IF [attr value]... SET [attr value]...\n"
           "  ADD space key attr delta               add to an int attribute\n"
           "  SEARCH space [attr op value]... [LIMIT n]\n"
           "  COUNT space [attr op value]...\n"
           "  SPACE.ADD \"description\"  SPACE.DROP name  SPACE.LIST  SPACE.DESCRIBE name\n"
           "  CLUSTER.STATUS [STALE]  CLUSTER.MAP  CLUSTER.CONFIG GET|SET name [value]\n"
           "  COORD.REMOVE id                        remove a coordinator\n"
           "  PING  ECHO message  INFO [section]\n"
           "\n"
           "  help                                   this text\n"
           "  quit, exit (or end of input)           leave the shell\n");
}

/* Shell state across lines. */
typedef struct shell {
    const cli_opts *o;
    keel_client *c; /* NULL after the connection was lost */
    int failures;   /* commands that failed (for the exit status when batch) */
} shell;

/* Runs one input line. Returns 1 to leave the shell. */
static int shell_line(shell *sh, const char *line)
{
    words w;
    const char *why = NULL;
    if (split_line(line, &w, &why) < 0) {
        printf("(error) %s\n", why);
        sh->failures++;
        return 0;
    }
    if (w.argc == 0) return 0;
    int leave = 0;
    if (strcasecmp(w.argv[0], "quit") == 0 || strcasecmp(w.argv[0], "exit") == 0) {
        leave = 1;
        goto done;
    }
    if (strcasecmp(w.argv[0], "help") == 0 && w.argc == 1) {
        shell_help();
        goto done;
    }
    if (!sh->c) {
        /* The connection was lost: try once more for this command. */
        keel_client *c = NULL;
        if (keel_client_connect(sh->o->host, sh->o->port, CLI_TIMEOUT_MS, &c) != KEEL_OK) {
            printf("(error) %s\n", keel_client_errmsg(c));
            keel_client_close(c);
            sh->failures++;
            goto done;
        }
        sh->c = c;
    }
    keel_reply *r = NULL;
    int rc = keel_command(sh->c, w.argc, (const char *const *)w.argv, w.argvlen, &r);
    if (rc != KEEL_OK) {
        printf("(error) %s\n",
               *keel_client_errmsg(sh->c) ? keel_client_errmsg(sh->c) : keel_strerror(rc));
        sh->failures++;
        if (rc == KEEL_ERR_IO || rc == KEEL_ERR_PROTOCOL) {
            keel_client_close(sh->c);
            sh->c = NULL;
        }
        goto done;
    }
    if (r->type == KEEL_REPLY_ERROR) sh->failures++;
    shell_print(w.argv[0], r);
    keel_reply_free(r);
done:
    fflush(stdout);
    words_free(&w);
    return leave;
}

/* Path of the history file in $HOME, or NULL (no history). Caller frees. */
static char *history_path(void)
{
    const char *home = getenv("HOME");
    if (!home || !*home) return NULL;
    size_t n = strlen(home) + sizeof HISTORY_FILE + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", home, HISTORY_FILE);
    return p;
}

static int run_shell(const cli_opts *o)
{
    if (o->npos != 0) return usage_error(cmd_named("shell"), "takes no arguments");
    shell sh = {.o = o};
    sh.c = cli_connect(o);
    if (!sh.c) return EXIT_CONN;

    if (isatty(STDIN_FILENO)) {
        char prompt[320];
        if (strchr(o->host, ':'))
            snprintf(prompt, sizeof prompt, "keel [%.256s]:%d> ", o->host, o->port);
        else
            snprintf(prompt, sizeof prompt, "keel %.256s:%d> ", o->host, o->port);
        char *hist = history_path();
        rl_readline_name = "keel";
        using_history();
        stifle_history(HISTORY_MAX);
        if (hist) read_history(hist);
        char *last = NULL; /* the previous line, so repeats are stored once */
        for (;;) {
            char *line = readline(prompt);
            if (!line) {
                putchar('\n');
                break;
            }
            if (line[strspn(line, " \t")] && (!last || strcmp(last, line) != 0)) {
                add_history(line);
                free(last);
                last = strdup(line);
            }
            int leave = shell_line(&sh, line);
            free(line);
            if (leave) break;
        }
        free(last);
        if (hist) write_history(hist);
        free(hist);
        keel_client_close(sh.c);
        return EXIT_OK;
    }

    /* Batch mode: lines from a pipe or file; exit 1 if any command failed. */
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (shell_line(&sh, line)) break;
    }
    free(line);
    keel_client_close(sh.c);
    return sh.failures ? EXIT_FAIL : EXIT_OK;
}
