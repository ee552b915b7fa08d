/* kroute: the pure parts of libkeel's cluster mode (kroute.h). */
#include "kroute.h"

#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

static const char *const state_names[] = {"", "ONLINE", "SUSPECT", "OFFLINE", "SHUTDOWN",
                                          "RETIRED"};

static int state_of(const resp_reply *r)
{
    for (int i = 1; i < (int)(sizeof state_names / sizeof state_names[0]); i++) {
        if (r->len == strlen(state_names[i]) && memcmp(r->str, state_names[i], r->len) == 0)
            return i;
    }
    return KROUTE_UNKNOWN;
}

void kroute_free(kroute_table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->nspaces; i++) {
        free(t->spaces[i].name);
        free(t->spaces[i].primary);
    }
    free(t->spaces);
    free(t->daemons);
    memset(t, 0, sizeof *t);
}

static int is_type(const resp_reply *r, int type)
{
    return r && r->type == type;
}

int kroute_parse(const resp_reply *r, kroute_table *t)
{
    memset(t, 0, sizeof *t);
    if (!is_type(r, RESP_R_ARRAY) || r->elements != 3) return -1;
    const resp_reply *ver = r->element[0], *ds = r->element[1], *ss = r->element[2];
    if (!is_type(ver, RESP_R_INT) || ver->integer < 0 || !is_type(ds, RESP_R_ARRAY) ||
        !is_type(ss, RESP_R_ARRAY))
        return -1;
    t->version = (uint64_t)ver->integer;
    int rc = -1;
    if (ds->elements) {
        t->daemons = calloc(ds->elements, sizeof *t->daemons);
        if (!t->daemons) goto err_nomem;
    }
    for (size_t i = 0; i < ds->elements; i++) {
        const resp_reply *e = ds->element[i];
        if (!is_type(e, RESP_R_ARRAY) || e->elements != 4) goto err;
        const resp_reply *id = e->element[0], *host = e->element[1], *port = e->element[2],
                         *st = e->element[3];
        if (!is_type(id, RESP_R_INT) || id->integer <= 0 || !is_type(host, RESP_R_BULK) ||
            host->len == 0 || host->len >= KROUTE_HOST_MAX || memchr(host->str, 0, host->len) ||
            !is_type(port, RESP_R_INT) || port->integer < 1 || port->integer > 65535 ||
            !(is_type(st, RESP_R_BULK) || is_type(st, RESP_R_STATUS)))
            goto err;
        kroute_daemon *d = &t->daemons[i];
        d->id = (uint64_t)id->integer;
        memcpy(d->host, host->str, host->len);
        d->host[host->len] = '\0';
        d->port = (int)port->integer;
        d->state = state_of(st);
        t->ndaemons++;
    }
    if (ss->elements) {
        t->spaces = calloc(ss->elements, sizeof *t->spaces);
        if (!t->spaces) goto err_nomem;
    }
    for (size_t i = 0; i < ss->elements; i++) {
        const resp_reply *e = ss->element[i];
        if (!is_type(e, RESP_R_ARRAY) || e->elements != 3) goto err;
        const resp_reply *name = e->element[0], *np = e->element[1], *ps = e->element[2];
        if (!is_type(name, RESP_R_BULK) || name->len == 0 || memchr(name->str, 0, name->len) ||
            !is_type(np, RESP_R_INT) || np->integer < 1 || np->integer > UINT32_MAX ||
            !is_type(ps, RESP_R_ARRAY) || ps->elements != (size_t)np->integer)
            goto err;
        for (size_t p = 0; p < ps->elements; p++) {
            if (!is_type(ps->element[p], RESP_R_INT) || ps->element[p]->integer < 0) goto err;
        }
        kroute_space *s = &t->spaces[i];
        s->name = malloc(name->len + 1);
        s->primary = malloc(ps->elements * sizeof *s->primary);
        t->nspaces++; /* counted now, so kroute_free releases what was made */
        if (!s->name || !s->primary) goto err_nomem;
        memcpy(s->name, name->str, name->len);
        s->name[name->len] = '\0';
        s->partitions = (uint32_t)np->integer;
        for (size_t p = 0; p < ps->elements; p++)
            s->primary[p] = (uint64_t)ps->element[p]->integer;
    }
    return 0;

err_nomem:
    rc = -2;
err:
    kroute_free(t);
    return rc;
}

uint32_t kroute_partition(const void *key, size_t len, uint32_t partitions)
{
    if (!partitions) return 0;
    return (uint32_t)(XXH64(key, len, 0) % partitions);
}

const kroute_space *kroute_space_find(const kroute_table *t, const char *name)
{
    for (size_t i = 0; i < t->nspaces; i++) {
        if (strcmp(t->spaces[i].name, name) == 0) return &t->spaces[i];
    }
    return NULL;
}

const kroute_daemon *kroute_daemon_find(const kroute_table *t, uint64_t id)
{
    for (size_t i = 0; i < t->ndaemons; i++) {
        if (t->daemons[i].id == id) return &t->daemons[i];
    }
    return NULL;
}

const kroute_daemon *kroute_daemon_at(const kroute_table *t, const char *host, int port)
{
    for (size_t i = 0; i < t->ndaemons; i++) {
        if (t->daemons[i].port == port && strcmp(t->daemons[i].host, host) == 0)
            return &t->daemons[i];
    }
    return NULL;
}

int kroute_lookup(const kroute_table *t, const char *space, const void *key, size_t keylen,
                  uint32_t *part, const kroute_daemon **d)
{
    const kroute_space *s = kroute_space_find(t, space);
    if (!s) return KROUTE_NO_SPACE;
    uint32_t p = kroute_partition(key, keylen, s->partitions);
    *part = p;
    if (!s->primary[p]) return KROUTE_NO_PRIMARY;
    const kroute_daemon *dd = kroute_daemon_find(t, s->primary[p]);
    if (!dd) return KROUTE_NO_DAEMON;
    *d = dd;
    return KROUTE_FOUND;
}

int kroute_patch(kroute_table *t, const char *space, uint32_t part, const char *host, int port)
{
    const kroute_daemon *d = kroute_daemon_at(t, host, port);
    if (!d) return 0;
    for (size_t i = 0; i < t->nspaces; i++) {
        kroute_space *s = &t->spaces[i];
        if (strcmp(s->name, space) != 0 || part >= s->partitions) continue;
        if (s->primary[part] == d->id) return 0;
        s->primary[part] = d->id;
        return 1;
    }
    return 0;
}

int kroute_parse_addr(const char *text, size_t len, char *host, size_t hostcap, int *port)
{
    size_t colon = len;
    for (size_t i = len; i > 0; i--) {
        if (text[i - 1] == ':') {
            colon = i - 1;
            break;
        }
    }
    if (colon == len) return -1;
    const char *h = text;
    size_t hl = colon;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    size_t pl = len - colon - 1;
    if (hl == 0 || hl >= hostcap || pl == 0 || pl > 5 || memchr(h, 0, hl)) return -1;
    int p = 0;
    for (size_t i = colon + 1; i < len; i++) {
        if (text[i] < '0' || text[i] > '9') return -1;
        p = p * 10 + (text[i] - '0');
    }
    if (p < 1 || p > 65535) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = p;
    return 0;
}

/* Splits msg[0, len) into words separated by single or repeated spaces:
 * returns the start and length of word i, or -1. */
static int word(const char *msg, size_t len, int i, const char **w, size_t *wl)
{
    size_t pos = 0;
    for (int k = 0;; k++) {
        while (pos < len && msg[pos] == ' ')
            pos++;
        if (pos >= len) return -1;
        size_t start = pos;
        while (pos < len && msg[pos] != ' ' && msg[pos] != '\r' && msg[pos] != '\n')
            pos++;
        if (k == i) {
            *w = msg + start;
            *wl = pos - start;
            return 0;
        }
        if (pos < len && msg[pos] != ' ') return -1;
    }
}

static int parse_u64(const char *p, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        uint64_t d = (uint64_t)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int word_is(const char *msg, size_t len, int i, const char *want)
{
    const char *w;
    size_t wl;
    return word(msg, len, i, &w, &wl) == 0 && wl == strlen(want) && memcmp(w, want, wl) == 0;
}

int kroute_parse_moved(const char *msg, size_t len, kroute_moved *m)
{
    const char *w;
    size_t wl;
    uint64_t part, ver;
    if (!word_is(msg, len, 0, "MOVED")) return -1;
    if (word(msg, len, 1, &w, &wl) || parse_u64(w, wl, &part) || part > UINT32_MAX) return -1;
    kroute_moved t;
    t.partition = (uint32_t)part;
    if (word(msg, len, 2, &w, &wl) || kroute_parse_addr(w, wl, t.host, sizeof t.host, &t.port))
        return -1;
    if (word(msg, len, 3, &w, &wl) || parse_u64(w, wl, &ver)) return -1;
    t.version = ver;
    *m = t;
    return 0;
}

int kroute_leader_hint(const char *msg, size_t len, char *host, size_t hostcap, int *port)
{
    const char *w;
    size_t wl;
    if (!word_is(msg, len, 0, "TRYAGAIN") || !word_is(msg, len, 1, "leader") ||
        !word_is(msg, len, 2, "is") || word(msg, len, 3, &w, &wl))
        return -1;
    return kroute_parse_addr(w, wl, host, hostcap, port);
}

int kroute_info_field(const char *text, size_t len, const char *name, char *out, size_t outcap)
{
    size_t nl = strlen(name);
    size_t pos = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && text[end] != '\n')
            end++;
        size_t le = end;
        while (le > pos && (text[le - 1] == '\r' || text[le - 1] == ' '))
            le--;
        if (le - pos > nl && memcmp(text + pos, name, nl) == 0 && text[pos + nl] == ':') {
            size_t v = pos + nl + 1;
            while (v < le && text[v] == ' ')
                v++;
            if (le - v >= outcap) return -1;
            memcpy(out, text + v, le - v);
            out[le - v] = '\0';
            return 0;
        }
        pos = end + 1;
    }
    return -1;
}

int kroute_backoff_next(int ms)
{
    int n = ms * 2;
    return n > KROUTE_BACKOFF_MAX_MS ? KROUTE_BACKOFF_MAX_MS : n;
}
