/* json: a strict, bounded JSON reader (see json.h for the contract).
 *
 * Design note
 * -----------
 * A recursive-descent parser over text[0, len) builds the tree in an arena
 * owned by the json_doc: values and decoded strings are carved out of large
 * chunks, so the tree costs few allocations and json_free releases it in one
 * walk over the chunk list. A container's children are linked in order as
 * they are read (a tail pointer per open container), so no array is ever
 * resized.
 *
 * Invariants:
 *   1. The parser never reads outside text[0, len): every access goes through
 *      peek()/`p < end` checks; the input needs no terminating NUL.
 *   2. Recursion depth is at most lim.max_depth + 1 <= JSON_DEPTH_CAP + 1
 *      frames, whatever the input, so the stack is bounded.
 *   3. Memory is bounded by the input: at most max_nodes values, and every
 *      decoded string is no longer than its quoted source (escapes only
 *      shrink), so the arena holds at most len bytes of text.
 *   4. On failure nothing is handed out: the partial tree is freed and *out
 *      is NULL. The first error wins; later code never overwrites it.
 */
#include "json.h"

#include <errno.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * Types and constants
 * ------------------------------------------------------------------------- */

#define CHUNK_MIN (64u * 1024) /* arena chunk size, unless one piece is bigger */
#define NUM_STACK                                                                                  \
    64 /* number literals shorter than this are copied                                             \
          to the stack for strtod */

/* One arena chunk; data is maximally aligned. */
typedef struct chunk {
    struct chunk *next;
    size_t used;
    size_t cap;
    max_align_t data[];
} chunk;

struct json_doc {
    chunk *chunks;    /* newest first */
    json_value *root; /* in the arena */
};

typedef struct parser {
    const char *start; /* text[0] */
    const char *p;     /* next byte to read */
    const char *end;   /* text + len */
    json_limits lim;
    size_t nodes; /* values allocated so far */
    json_doc *doc;
    json_error *err;
    int status; /* JSON_OK until the first error (invariant 4) */
} parser;

/* ---------------------------------------------------------------------------
 * Forward declarations
 * ------------------------------------------------------------------------- */

static json_value *parse_value(parser *ps, size_t depth);

/* ---------------------------------------------------------------------------
 * Public API
 * ------------------------------------------------------------------------- */

static void skip_ws(parser *ps);
static void fail(parser *ps, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const char *describe(const parser *ps, char *tmp, size_t n);

int json_parse(const char *text, size_t len, const json_limits *lim, json_doc **out,
               json_error *err)
{
    if (out) *out = NULL;
    if (err) {
        err->offset = 0;
        err->msg[0] = '\0';
    }
    if (!out || (!text && len)) {
        if (err) snprintf(err->msg, sizeof err->msg, "no input or no place for the result");
        return JSON_ESYNTAX;
    }
    parser ps = {.start = text, .p = text, .end = text + len, .err = err, .status = JSON_OK};
    ps.lim.max_bytes = lim && lim->max_bytes ? lim->max_bytes : JSON_DEFAULT_MAX_BYTES;
    ps.lim.max_depth = lim && lim->max_depth ? lim->max_depth : JSON_DEFAULT_MAX_DEPTH;
    ps.lim.max_nodes = lim && lim->max_nodes ? lim->max_nodes : JSON_DEFAULT_MAX_NODES;
    if (ps.lim.max_depth > JSON_DEPTH_CAP) ps.lim.max_depth = JSON_DEPTH_CAP;
    if (len > ps.lim.max_bytes) {
        fail(&ps, JSON_ELIMIT, "document is %zu bytes, more than the limit of %zu", len,
             ps.lim.max_bytes);
        return ps.status;
    }
    ps.doc = calloc(1, sizeof *ps.doc);
    if (!ps.doc) {
        fail(&ps, JSON_ENOMEM, "out of memory");
        return ps.status;
    }
    skip_ws(&ps);
    json_value *root = parse_value(&ps, 0);
    if (root) {
        skip_ws(&ps);
        if (ps.p < ps.end) {
            char tmp[16];
            fail(&ps, JSON_ESYNTAX, "unexpected %s after the document",
                 describe(&ps, tmp, sizeof tmp));
        }
    }
    if (ps.status != JSON_OK) {
        json_free(ps.doc);
        return ps.status;
    }
    ps.doc->root = root;
    *out = ps.doc;
    return JSON_OK;
}

void json_free(json_doc *d)
{
    if (!d) return;
    chunk *c = d->chunks;
    while (c) {
        chunk *next = c->next;
        free(c);
        c = next;
    }
    free(d);
}

const json_value *json_root(const json_doc *d)
{
    return d ? d->root : NULL;
}

const json_value *json_get(const json_value *obj, const char *name)
{
    if (!obj || !name || obj->type != JSON_OBJECT) return NULL;
    size_t n = strlen(name);
    for (const json_value *m = obj->child; m; m = m->next) {
        if (m->key_len == n && memcmp(m->key, name, n) == 0) return m;
    }
    return NULL;
}

const json_value *json_at(const json_value *arr, size_t i)
{
    if (!arr || arr->type != JSON_ARRAY || i >= arr->count) return NULL;
    const json_value *e = arr->child;
    while (e && i--)
        e = e->next;
    return e;
}

const char *json_type_name(json_type t)
{
    switch (t) {
    case JSON_NULL:
        return "null";
    case JSON_FALSE:
        return "false";
    case JSON_TRUE:
        return "true";
    case JSON_NUMBER:
        return "number";
    case JSON_STRING:
        return "string";
    case JSON_ARRAY:
        return "array";
    case JSON_OBJECT:
        return "object";
    }
    return "?";
}

/* ---------------------------------------------------------------------------
 * Errors and the arena
 * ------------------------------------------------------------------------- */

/* Records the first error at the current position (invariant 4). */
static void fail(parser *ps, int status, const char *fmt, ...)
{
    if (ps->status != JSON_OK) return;
    ps->status = status;
    if (!ps->err) return;
    ps->err->offset = (size_t)(ps->p - ps->start);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err->msg, sizeof ps->err->msg, fmt, ap);
    va_end(ap);
}

/* Names the byte at the current position for a message: "'x'", "byte 0x01"
 * or "end of input". */
static const char *describe(const parser *ps, char *tmp, size_t n)
{
    if (ps->p >= ps->end) return "end of input";
    unsigned char ch = (unsigned char)*ps->p;
    if (ch > ' ' && ch < 0x7f)
        snprintf(tmp, n, "'%c'", ch);
    else
        snprintf(tmp, n, "byte 0x%02x", ch);
    return tmp;
}

/* n bytes from the arena, maximally aligned; NULL (error recorded) on
 * out-of-memory. */
static void *arena_alloc(parser *ps, size_t n)
{
    const size_t a = alignof(max_align_t);
    n = (n + a - 1) / a * a;
    chunk *c = ps->doc->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > CHUNK_MIN ? n : CHUNK_MIN;
        c = malloc(sizeof *c + cap);
        if (!c) {
            fail(ps, JSON_ENOMEM, "out of memory");
            return NULL;
        }
        c->used = 0;
        c->cap = cap;
        c->next = ps->doc->chunks;
        ps->doc->chunks = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

/* A new zeroed value of type t, counted against max_nodes. */
static json_value *new_value(parser *ps, json_type t)
{
    if (ps->nodes >= ps->lim.max_nodes) {
        fail(ps, JSON_ELIMIT, "more than %zu values", ps->lim.max_nodes);
        return NULL;
    }
    json_value *v = arena_alloc(ps, sizeof *v);
    if (!v) return NULL;
    memset(v, 0, sizeof *v);
    v->type = t;
    ps->nodes++;
    return v;
}

/* ---------------------------------------------------------------------------
 * Scalars
 * ------------------------------------------------------------------------- */

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

/* Reads the literal word (true, false, null) or fails. */
static json_value *parse_literal(parser *ps, const char *word, json_type t)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) {
        fail(ps, JSON_ESYNTAX, "bad literal: expected '%s'", word);
        return NULL;
    }
    json_value *v = new_value(ps, t);
    if (v) ps->p += n;
    return v;
}

static int is_digit(const char *p, const char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* number = [ "-" ] int [ frac ] [ exp ] (RFC 8259 section 6). */
static json_value *parse_number(parser *ps)
{
    const char *s = ps->p, *q = ps->p, *end = ps->end;
    int integral = 1;
    if (q < end && *q == '-') q++;
    if (!is_digit(q, end)) {
        ps->p = q;
        fail(ps, JSON_ESYNTAX, "bad number: expected a digit");
        return NULL;
    }
    if (*q == '0') {
        q++;
        if (is_digit(q, end)) {
            ps->p = q;
            fail(ps, JSON_ESYNTAX, "bad number: leading zero");
            return NULL;
        }
    } else {
        while (is_digit(q, end))
            q++;
    }
    if (q < end && *q == '.') {
        integral = 0;
        q++;
        if (!is_digit(q, end)) {
            ps->p = q;
            fail(ps, JSON_ESYNTAX, "bad number: expected a digit after '.'");
            return NULL;
        }
        while (is_digit(q, end))
            q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        integral = 0;
        q++;
        if (q < end && (*q == '+' || *q == '-')) q++;
        if (!is_digit(q, end)) {
            ps->p = q;
            fail(ps, JSON_ESYNTAX, "bad number: expected a digit in the exponent");
            return NULL;
        }
        while (is_digit(q, end))
            q++;
    }

    /* strtod/strtoll need a NUL-terminated copy (invariant 1). */
    size_t n = (size_t)(q - s);
    char small[NUM_STACK];
    char *copy = n < sizeof small ? small : malloc(n + 1);
    if (!copy) {
        fail(ps, JSON_ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(copy, s, n);
    copy[n] = '\0';
    errno = 0;
    double d = strtod(copy, NULL);
    int range = errno == ERANGE && (d > 1.0 || d < -1.0); /* overflow, not underflow */
    long long ll = 0;
    int fits = 0;
    if (integral) {
        errno = 0;
        ll = strtoll(copy, NULL, 10);
        fits = errno == 0;
    }
    if (copy != small) free(copy);
    if (range) {
        fail(ps, JSON_ESYNTAX, "number out of range");
        return NULL;
    }
    json_value *v = new_value(ps, JSON_NUMBER);
    if (!v) return NULL;
    v->number = d;
    v->is_int = fits;
    v->integer = fits ? (int64_t)ll : 0;
    ps->p = q;
    return v;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            v |= (unsigned)(ch - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one
 * (overlong, surrogate, above U+10FFFF, truncated). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) return 0;
    }
    return n;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Reads a string at ps->p (on its opening quote) into the arena: *out is the
 * decoded text with a NUL after it, *outlen its length. Returns 0, or -1 with
 * the error recorded. */
static int parse_string(parser *ps, const char **out, size_t *outlen)
{
    const char *end = ps->end;
    const char *q = ps->p + 1;
    /* Find the closing quote first: the decoded text is never longer than
     * the source (invariant 3), so one allocation holds it. */
    const char *close = q;
    while (close < end && *close != '"') {
        if (*close == '\\' && close + 1 < end) close++;
        close++;
    }
    if (close >= end) {
        ps->p = end;
        fail(ps, JSON_ESYNTAX, "unterminated string");
        return -1;
    }
    char *o = arena_alloc(ps, (size_t)(close - q) + 1);
    if (!o) return -1;
    size_t n = 0;
    while (q < close) {
        unsigned char ch = (unsigned char)*q;
        if (ch < 0x20) {
            ps->p = q;
            fail(ps, JSON_ESYNTAX, "control character 0x%02x in a string", ch);
            return -1;
        }
        if (ch != '\\') {
            size_t k = utf8_len((const unsigned char *)q, (const unsigned char *)close);
            if (k == 0) {
                ps->p = q;
                fail(ps, JSON_ESYNTAX, "invalid UTF-8 in a string");
                return -1;
            }
            memcpy(o + n, q, k);
            n += k;
            q += k;
            continue;
        }
        const char *esc = q;
        q++; /* q < close: the scan above never stops on a lone backslash */
        switch (*q) {
        case '"':
        case '\\':
        case '/':
            o[n++] = *q++;
            continue;
        case 'b':
            o[n++] = '\b';
            q++;
            continue;
        case 'f':
            o[n++] = '\f';
            q++;
            continue;
        case 'n':
            o[n++] = '\n';
            q++;
            continue;
        case 'r':
            o[n++] = '\r';
            q++;
            continue;
        case 't':
            o[n++] = '\t';
            q++;
            continue;
        case 'u':
            break;
        default:
            ps->p = esc;
            fail(ps, JSON_ESYNTAX, "bad escape in a string");
            return -1;
        }
        unsigned cp = 0, lo = 0;
        if (hex4(q + 1, close, &cp) < 0) {
            ps->p = esc;
            fail(ps, JSON_ESYNTAX, "bad \\u escape: expected 4 hex digits");
            return -1;
        }
        q += 5;
        if (cp >= 0xdc00 && cp <= 0xdfff) {
            ps->p = esc;
            fail(ps, JSON_ESYNTAX, "lone low surrogate in a \\u escape");
            return -1;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (close - q < 6 || q[0] != '\\' || q[1] != 'u' || hex4(q + 2, close, &lo) < 0 ||
                lo < 0xdc00 || lo > 0xdfff) {
                ps->p = esc;
                fail(ps, JSON_ESYNTAX, "high surrogate not followed by a low one");
                return -1;
            }
            q += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        n += put_utf8(o + n, cp);
    }
    o[n] = '\0';
    *out = o;
    *outlen = n;
    ps->p = close + 1;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Containers
 * ------------------------------------------------------------------------- */

/* Appends child to the list of v, whose last child is *tail. */
static void link_child(json_value *v, json_value **tail, json_value *child)
{
    if (*tail)
        (*tail)->next = child;
    else
        v->child = child;
    *tail = child;
    v->count++;
}

static json_value *parse_array(parser *ps, size_t depth)
{
    json_value *v = new_value(ps, JSON_ARRAY);
    if (!v) return NULL;
    json_value *tail = NULL;
    ps->p++; /* '[' */
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return v;
    }
    for (;;) {
        json_value *e = parse_value(ps, depth + 1);
        if (!e) return NULL;
        link_child(v, &tail, e);
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            skip_ws(ps);
            continue;
        }
        if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            return v;
        }
        char tmp[16];
        fail(ps, JSON_ESYNTAX, "expected ',' or ']' in an array, got %s",
             describe(ps, tmp, sizeof tmp));
        return NULL;
    }
}

static json_value *parse_object(parser *ps, size_t depth)
{
    json_value *v = new_value(ps, JSON_OBJECT);
    if (!v) return NULL;
    json_value *tail = NULL;
    char tmp[16];
    ps->p++; /* '{' */
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return v;
    }
    for (;;) {
        if (ps->p >= ps->end || *ps->p != '"') {
            fail(ps, JSON_ESYNTAX, "expected a member name in quotes, got %s",
                 describe(ps, tmp, sizeof tmp));
            return NULL;
        }
        const char *key = NULL;
        size_t key_len = 0;
        if (parse_string(ps, &key, &key_len) < 0) return NULL;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            fail(ps, JSON_ESYNTAX, "expected ':' after a member name, got %s",
                 describe(ps, tmp, sizeof tmp));
            return NULL;
        }
        ps->p++;
        skip_ws(ps);
        json_value *m = parse_value(ps, depth + 1);
        if (!m) return NULL;
        m->key = key;
        m->key_len = key_len;
        link_child(v, &tail, m);
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            skip_ws(ps);
            continue;
        }
        if (ps->p < ps->end && *ps->p == '}') {
            ps->p++;
            return v;
        }
        fail(ps, JSON_ESYNTAX, "expected ',' or '}' in an object, got %s",
             describe(ps, tmp, sizeof tmp));
        return NULL;
    }
}

/* Reads one value at ps->p (whitespace already skipped). depth is the number
 * of containers around it (invariant 2). */
static json_value *parse_value(parser *ps, size_t depth)
{
    char tmp[16];
    if (ps->p >= ps->end) {
        fail(ps, JSON_ESYNTAX, "expected a value, got end of input");
        return NULL;
    }
    switch (*ps->p) {
    case '{':
    case '[':
        if (depth >= ps->lim.max_depth) {
            fail(ps, JSON_ELIMIT, "nested deeper than %zu", ps->lim.max_depth);
            return NULL;
        }
        return *ps->p == '{' ? parse_object(ps, depth) : parse_array(ps, depth);
    case '"': {
        json_value *v = new_value(ps, JSON_STRING);
        if (!v) return NULL;
        if (parse_string(ps, &v->str, &v->len) < 0) return NULL;
        return v;
    }
    case 't':
        return parse_literal(ps, "true", JSON_TRUE);
    case 'f':
        return parse_literal(ps, "false", JSON_FALSE);
    case 'n':
        return parse_literal(ps, "null", JSON_NULL);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps);
        fail(ps, JSON_ESYNTAX, "expected a value, got %s", describe(ps, tmp, sizeof tmp));
        return NULL;
    }
}
