/* resp: the RESP2 codec (see resp.h for the API and its contract).
 *
 * Design note
 * -----------
 * The request parser is a small state machine over byte offsets into the
 * caller's buffer. It keeps offsets, never pointers, between calls because the
 * caller may realloc the buffer; pointers are made only when a request is
 * handed out (argv[i] = buf + off[i]).
 *
 *   START --'*'--> MB_HDR --"*N\r\n", N > 0 (parse_mb_hdr)--> BULK_HDR <--+
 *    ^  ^             |                                            |        |
 *    |  +-------------+ "*0" / "*-1": skipped (finish_request)     | "$L\r\n" |
 *    |                                    (parse_bulk_hdr)         v        |
 *    +---- last argument: RESP_OK (emit) ------------------- BULK_DATA -----+
 *                                          more arguments (parse_bulk_data)
 *   START --other byte--> INLINE --'\n' (parse_inline)--> START: RESP_OK (emit),
 *                                                         or skipped if empty
 *   any state --malformed input or broken limit (fail)--> ERROR (sticky)
 *
 * Invariants:
 *   1. consumed <= start <= pos <= len of the last buffer seen; every offset
 *      in off[] of the current request lies in [start, pos]. START is entered
 *      only with start == pos == consumed, so resp_parser_shift can subtract
 *      n <= consumed from every offset without underflow.
 *   2. Every byte is examined a bounded number of times over the life of a
 *      request: line searches resume at pos (the next unexamined byte) and a
 *      bulk payload of known length is waited for with one length comparison,
 *      so parsing a request costs O(its size) however it is split.
 *   3. The outcome (the requests returned, and the error text if any) depends
 *      only on the byte stream, never on how it was split: every error is
 *      decided from a prefix whose extent does not depend on the split, and
 *      errors decided at the same byte are checked in one fixed order
 *      (entry over-size, then "expected '$'", then over-long header line, then
 *      the header's value).
 *   4. Bytes of skipped requests ("*0", "*-1", empty inline lines) count as
 *      consumed even when the call then returns RESP_MORE.
 *   5. While in BULK_HDR, off[argi] holds the offset of the '$'; in BULK_DATA
 *      it holds the payload offset. Both are shifted with the rest.
 *   6. Memory: off/len/argv grow by doubling up to the largest argc seen
 *      (bounded by max_args) and are reused, so a steady stream of requests
 *      allocates nothing.
 *   7. Multibulk bytes are never written; inline lines are unescaped in place
 *      (output never longer than input: each argument is written starting at
 *      its own first byte).
 *
 * The reply parser (client side) is stateless: one pass validates the reply
 * and finds its end without allocating (so RESP_MORE and RESP_ERROR allocate
 * nothing), a second pass over the now known-good bytes builds the tree. Each
 * element consumes at least three bytes, so validation is linear in the input
 * whatever counts a hostile server announces, and arrays are allocated only
 * for elements actually present.
 *
 * Out of memory aborts the process, as buf does (keel treats OOM as fatal).
 */
#include "resp.h"

#include <assert.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Constants                                                                */
/* ------------------------------------------------------------------------ */

enum parser_state {
    ST_START = 0,
    ST_MB_HDR,    /* read '*', looking for the end of "*N\r\n" */
    ST_BULK_HDR,  /* expecting "$L\r\n" of argument argi */
    ST_BULK_DATA, /* waiting for L bytes and CRLF of argument argi */
    ST_INLINE,    /* looking for the '\n' ending an inline line */
    ST_ERROR      /* poisoned */
};

/* Bytes a "*N" or "$L" header line may hold before its '\n' (Redis' limit). */
#define HDR_MAX (64u * 1024)

/* Longest decimal long long: "-9223372036854775808". */
#define LL_MAX_DIGITS 20

/* ------------------------------------------------------------------------ */
/* Local helpers                                                            */
/* ------------------------------------------------------------------------ */

static void *xrealloc(void *ptr, size_t n)
{
    void *q = realloc(ptr, n ? n : 1);
    if (!q) {
        fprintf(stderr, "keel: out of memory (%zu bytes)\n", n);
        abort();
    }
    return q;
}

static void *xcalloc(size_t n, size_t size)
{
    void *q = calloc(n ? n : 1, size ? size : 1);
    if (!q) {
        fprintf(stderr, "keel: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return q;
}

/* Parses s[0, n) as a decimal long long the way Redis' string2ll does: an
 * optional '-', then digits without leading zeros ("0" alone is fine, "-0" is
 * not), no sign '+', no spaces, no overflow. Returns 1 on success. */
static int parse_ll(const char *s, size_t n, long long *out)
{
    size_t i = 0;
    int neg = 0;
    if (n == 0) return 0;
    if (n == 1 && s[0] == '0') {
        *out = 0;
        return 1;
    }
    if (s[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n || s[i] < '1' || s[i] > '9') return 0;
    unsigned long long v = 0;
    const unsigned long long limit =
        neg ? (unsigned long long)LLONG_MAX + 1ull : (unsigned long long)LLONG_MAX;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (limit - d) / 10) return 0;
        v = v * 10 + d;
    }
    if (neg)
        *out = v == (unsigned long long)LLONG_MAX + 1ull ? LLONG_MIN : -(long long)v;
    else
        *out = (long long)v;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Request parser                                                           */
/* ------------------------------------------------------------------------ */

static int fail(resp_parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(resp_parser *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    p->state = ST_ERROR;
    return RESP_ERROR;
}

static int fail_request_size(resp_parser *p)
{
    return fail(p, "ERR request exceeds max_request_bytes (%zu)", p->lim.max_request);
}

/* Makes room for at least `need` arguments in off/len/argv. */
static void grow(resp_parser *p, size_t need)
{
    if (need <= p->cap) return;
    size_t cap = p->cap ? p->cap : 16;
    while (cap < need)
        cap *= 2;
    p->off = xrealloc(p->off, cap * sizeof *p->off);
    p->len = xrealloc(p->len, cap * sizeof *p->len);
    p->argv = xrealloc(p->argv, cap * sizeof *p->argv);
    p->cap = p->argv_cap = cap;
}

/* Marks [consumed, pos) as done and returns to START (invariant 1). */
static void finish_request(resp_parser *p)
{
    p->consumed = p->pos;
    p->start = p->pos;
    p->argc = p->argi = 0;
    p->bulklen = 0;
    p->state = ST_START;
}

static int emit(resp_parser *p, char *data, size_t argc, resp_request *req)
{
    assert(argc <= p->cap);
    for (size_t i = 0; i < argc; i++)
        p->argv[i] = data + p->off[i];
    req->argc = argc;
    req->argv = p->argv;
    req->argvlen = p->len;
    finish_request(p);
    return RESP_OK;
}

/* Looks for the '\n' ending the header line that starts at offset h (the '*'
 * or '$'), resuming at p->pos. RESP_OK sets *nl; RESP_MORE leaves p->pos at
 * len; RESP_ERROR when the line is too long or the request grew past
 * max_request. The two size checks fire at the byte where each is decided, the
 * earlier first, so the outcome does not depend on the split (invariant 3). */
static int scan_header(resp_parser *p, const char *data, size_t len, size_t h, const char *what,
                       size_t *nl)
{
    const char *q = memchr(data + p->pos, '\n', len - p->pos);
    size_t end = q ? (size_t)(q - data) : len;
    size_t m = end - h; /* bytes of the line seen without its '\n' */
    size_t used = h - p->start;
    size_t ex_at = used < p->lim.max_request ? p->lim.max_request - used : 0;
    if (m >= ex_at && ex_at <= (size_t)HDR_MAX + 1) return fail_request_size(p);
    if (m > HDR_MAX) return fail(p, "ERR Protocol error: too big %s count string", what);
    if (!q) {
        p->pos = len;
        return RESP_MORE;
    }
    *nl = end;
    p->pos = end + 1;
    return RESP_OK;
}

/* Parses the number in header line [h, nl): prefix byte, digits, '\r'. */
static int header_value(const char *data, size_t h, size_t nl, long long *v)
{
    if (nl - h < 3 || data[nl - 1] != '\r') return 0;
    return parse_ll(data + h + 1, nl - 1 - (h + 1), v);
}

/* MB_HDR: "*N\r\n" seen up to p->pos. */
static int parse_mb_hdr(resp_parser *p, char *data, size_t len)
{
    size_t nl;
    long long n;
    int r = scan_header(p, data, len, p->start, "multibulk", &nl);
    if (r != RESP_OK) return r;
    if (!header_value(data, p->start, nl, &n) || n < -1)
        return fail(p, "ERR Protocol error: invalid multibulk length");
    if (n <= 0) { /* "*0" and "*-1": nothing to run (invariant 4) */
        finish_request(p);
        return RESP_OK;
    }
    if ((unsigned long long)n > p->lim.max_args)
        return fail(p, "ERR request exceeds max_args (%zu)", p->lim.max_args);
    p->argc = n;
    p->argi = 0;
    grow(p, 1);
    p->off[0] = p->pos;
    p->state = ST_BULK_HDR;
    return RESP_OK;
}

/* BULK_HDR: off[argi] is the offset where "$L\r\n" must start. */
static int parse_bulk_hdr(resp_parser *p, char *data, size_t len)
{
    size_t h = p->off[p->argi];
    size_t nl;
    long long n;
    /* The previous argument ended exactly at the limit and another is due. */
    if (h - p->start >= p->lim.max_request) return fail_request_size(p);
    if (len == h) return RESP_MORE;
    if (data[h] != '$') {
        unsigned char c = (unsigned char)data[h];
        if (c >= 0x20 && c < 0x7f) return fail(p, "ERR Protocol error: expected '$', got '%c'", c);
        return fail(p, "ERR Protocol error: expected '$', got '\\x%02x'", c);
    }
    if (p->pos == h) p->pos = h + 1;
    int r = scan_header(p, data, len, h, "bulk", &nl);
    if (r != RESP_OK) return r;
    if (!header_value(data, h, nl, &n) || n < 0)
        return fail(p, "ERR Protocol error: invalid bulk length");
    if ((unsigned long long)n > p->lim.max_bulk)
        return fail(p, "ERR request exceeds max_bulk_bytes (%zu)", p->lim.max_bulk);
    size_t d = nl + 1;
    size_t used = d - p->start; /* <= max_request: scan_header checked it */
    if (used > p->lim.max_request || (unsigned long long)n + 2 > p->lim.max_request - used)
        return fail_request_size(p);
    p->bulklen = n;
    p->off[p->argi] = d;
    p->pos = d;
    p->state = ST_BULK_DATA;
    return RESP_OK;
}

/* BULK_DATA: waits for bulklen bytes and CRLF at off[argi] (one comparison,
 * no scanning: invariant 2). */
static int parse_bulk_data(resp_parser *p, char *data, size_t len, resp_request *req, int *done)
{
    size_t d = p->off[p->argi];
    size_t n = (size_t)p->bulklen;
    if (len - d < n + 2) return RESP_MORE;
    if (data[d + n] != '\r' || data[d + n + 1] != '\n')
        return fail(p, "ERR Protocol error: expected CRLF after bulk");
    p->len[p->argi] = n;
    p->argi++;
    p->pos = d + n + 2;
    if (p->argi == p->argc) {
        *done = 1;
        return emit(p, data, (size_t)p->argc, req);
    }
    grow(p, (size_t)p->argi + 1);
    p->off[p->argi] = p->pos;
    p->state = ST_BULK_HDR;
    return RESP_OK;
}

static int is_sep(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Splits the inline line [s, e) into words, unescaping in place (invariant 7).
 * Quoting follows redis-cli: "..." takes \n \r \t \b \a \xHH and \<c> for c;
 * '...' takes \' only; a quote may open mid-word; a closing quote must be
 * followed by a separator or the end of the line. */
static int split_inline(resp_parser *p, char *data, size_t s, size_t e, size_t *argc)
{
    size_t r = s, n = 0;
    for (;;) {
        while (r < e && is_sep(data[r]))
            r++;
        if (r == e) break;
        if (n == p->lim.max_args)
            return fail(p, "ERR request exceeds max_args (%zu)", p->lim.max_args);
        size_t a = r, w = r;
        enum { PLAIN, DQUOTE, SQUOTE } mode = PLAIN;
        for (;;) {
            if (mode == PLAIN) {
                if (r == e || is_sep(data[r])) break;
                if (data[r] == '"')
                    mode = DQUOTE;
                else if (data[r] == '\'')
                    mode = SQUOTE;
                else
                    data[w++] = data[r];
                r++;
                continue;
            }
            if (r == e) return fail(p, "ERR Protocol error: unbalanced quotes in request");
            char c = data[r];
            if (mode == DQUOTE && c == '\\' && e - r >= 4 && data[r + 1] == 'x' &&
                hexval(data[r + 2]) >= 0 && hexval(data[r + 3]) >= 0) {
                data[w++] = (char)(hexval(data[r + 2]) * 16 + hexval(data[r + 3]));
                r += 4;
            } else if (mode == DQUOTE && c == '\\' && e - r >= 2) {
                char x = data[r + 1];
                switch (x) {
                case 'n':
                    x = '\n';
                    break;
                case 'r':
                    x = '\r';
                    break;
                case 't':
                    x = '\t';
                    break;
                case 'b':
                    x = '\b';
                    break;
                case 'a':
                    x = '\a';
                    break;
                default:
                    break;
                }
                data[w++] = x;
                r += 2;
            } else if (mode == SQUOTE && c == '\\' && e - r >= 2 && data[r + 1] == '\'') {
                data[w++] = '\'';
                r += 2;
            } else if ((mode == DQUOTE && c == '"') || (mode == SQUOTE && c == '\'')) {
                r++;
                if (r < e && !is_sep(data[r]))
                    return fail(p, "ERR Protocol error: unbalanced quotes in request");
                break;
            } else {
                data[w++] = c;
                r++;
            }
        }
        if (w - a > p->lim.max_bulk)
            return fail(p, "ERR request exceeds max_bulk_bytes (%zu)", p->lim.max_bulk);
        grow(p, n + 1);
        p->off[n] = a;
        p->len[n] = w - a;
        n++;
    }
    *argc = n;
    return RESP_OK;
}

/* INLINE: a line from p->start, searched for '\n' from p->pos. */
static int parse_inline(resp_parser *p, char *data, size_t len, resp_request *req, int *done)
{
    const char *q = memchr(data + p->pos, '\n', len - p->pos);
    size_t end = q ? (size_t)(q - data) : len;
    if (end - p->start >= p->lim.max_request) return fail_request_size(p);
    if (!q) {
        p->pos = len;
        return RESP_MORE;
    }
    size_t e = end;
    if (e > p->start && data[e - 1] == '\r') e--;
    size_t argc = 0;
    if (split_inline(p, data, p->start, e, &argc) != RESP_OK) return RESP_ERROR;
    p->pos = end + 1;
    if (argc == 0) { /* empty line: skipped (invariant 4) */
        finish_request(p);
        return RESP_OK;
    }
    *done = 1;
    return emit(p, data, argc, req);
}

/* lim may be NULL: the RESP_DEFAULT_* limits apply. */
void resp_parser_init(resp_parser *p, const resp_limits *lim)
{
    memset(p, 0, sizeof *p);
    if (lim) {
        p->lim = *lim;
    } else {
        p->lim.max_request = RESP_DEFAULT_MAX_REQUEST;
        p->lim.max_args = RESP_DEFAULT_MAX_ARGS;
        p->lim.max_bulk = RESP_DEFAULT_MAX_BULK;
    }
    p->state = ST_START;
}

void resp_parser_free(resp_parser *p)
{
    free(p->off);
    free(p->len);
    free(p->argv);
    p->off = p->len = NULL;
    p->argv = NULL;
    p->cap = p->argv_cap = 0;
}

int resp_parse(resp_parser *p, char *data, size_t len, resp_request *req)
{
    if (p->state == ST_ERROR) return RESP_ERROR;
    assert(len >= p->pos); /* the caller only appends, or shifts what was consumed */
    for (;;) {
        int r = RESP_OK, done = 0;
        switch (p->state) {
        case ST_ERROR:
            return RESP_ERROR;
        case ST_START:
            if (p->pos == len) return RESP_MORE;
            p->start = p->pos;
            if (data[p->pos] == '*') {
                p->pos++;
                p->state = ST_MB_HDR;
            } else {
                p->state = ST_INLINE;
            }
            break;
        case ST_MB_HDR:
            r = parse_mb_hdr(p, data, len);
            break;
        case ST_BULK_HDR:
            r = parse_bulk_hdr(p, data, len);
            break;
        case ST_BULK_DATA:
            r = parse_bulk_data(p, data, len, req, &done);
            break;
        case ST_INLINE:
            r = parse_inline(p, data, len, req, &done);
            break;
        default:
            assert(0 && "bad parser state");
            return RESP_ERROR;
        }
        if (r != RESP_OK || done) return r;
    }
}

size_t resp_parser_consumed(const resp_parser *p)
{
    return p->consumed;
}

void resp_parser_shift(resp_parser *p, size_t n)
{
    assert(n <= p->consumed);
    p->consumed -= n;
    p->start -= n;
    p->pos -= n;
    size_t k = (size_t)p->argi;
    if (p->state == ST_BULK_HDR || p->state == ST_BULK_DATA) k++; /* invariant 5 */
    for (size_t i = 0; i < k; i++)
        p->off[i] -= n;
}

/* ------------------------------------------------------------------------ */
/* Reply encoder                                                            */
/* ------------------------------------------------------------------------ */

/* Writes v in decimal to dst (room for 20 bytes); returns the length. */
static size_t fmt_ull(char *dst, unsigned long long v)
{
    char tmp[24];
    size_t n = 0, k = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        dst[k++] = tmp[--n];
    return k;
}

static void add_header_ll(buf *out, char prefix, long long v)
{
    char t[32];
    size_t k = 0;
    t[k++] = prefix;
    if (v < 0) {
        t[k++] = '-';
        k += fmt_ull(t + k, 0ull - (unsigned long long)v);
    } else {
        k += fmt_ull(t + k, (unsigned long long)v);
    }
    t[k++] = '\r';
    t[k++] = '\n';
    buf_append(out, t, k);
}

/* Appends prefix, s with CR/LF replaced by spaces, CRLF: a line that can
 * never break the framing. */
static void add_line(buf *out, char prefix, const char *s)
{
    size_t n = strlen(s);
    buf_reserve(out, n + 3);
    char *d = out->data + out->len;
    d[0] = prefix;
    for (size_t i = 0; i < n; i++)
        d[i + 1] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
    d[n + 1] = '\r';
    d[n + 2] = '\n';
    out->len += n + 3;
}

void resp_add_simple(buf *out, const char *s)
{
    add_line(out, '+', s);
}

void resp_add_error(buf *out, const char *msg)
{
    add_line(out, '-', msg);
}

void resp_add_errorf(buf *out, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        resp_add_error(out, "ERR error message could not be formatted");
        return;
    }
    if ((size_t)n < sizeof tmp) {
        resp_add_error(out, tmp);
        return;
    }
    char *big = xrealloc(NULL, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    resp_add_error(out, big);
    free(big);
}

void resp_add_int(buf *out, long long v)
{
    add_header_ll(out, ':', v);
}

void resp_add_bulk(buf *out, const void *p, size_t n)
{
    buf_reserve(out, n + 32);
    char *d = out->data + out->len;
    size_t k = 0;
    d[k++] = '$';
    k += fmt_ull(d + k, n);
    d[k++] = '\r';
    d[k++] = '\n';
    if (n) memcpy(d + k, p, n);
    k += n;
    d[k++] = '\r';
    d[k++] = '\n';
    out->len += k;
}

void resp_add_bulk_str(buf *out, const char *s)
{
    resp_add_bulk(out, s, strlen(s));
}

void resp_add_nil(buf *out)
{
    buf_append(out, "$-1\r\n", 5);
}

void resp_add_array(buf *out, long long n)
{
    assert(n >= -1);
    add_header_ll(out, '*', n);
}

/* argvlen may be NULL: the arguments are then NUL-terminated strings. */
void resp_add_command(buf *out, int argc, const char *const *argv, const size_t *argvlen)
{
    assert(argc >= 0);
    add_header_ll(out, '*', argc);
    for (int i = 0; i < argc; i++)
        resp_add_bulk(out, argv[i], argvlen ? argvlen[i] : strlen(argv[i]));
}

/* ------------------------------------------------------------------------ */
/* Reply parser                                                             */
/* ------------------------------------------------------------------------ */

/* Finds the CRLF ending the line that starts at pos. A bare '\n', or a '\r'
 * not followed by '\n', is malformed. A numeric line may hold only '-' and
 * digits, at most LL_MAX_DIGITS of them, so garbage is refused at once rather
 * than waited on. RESP_OK sets *cr to the offset of the '\r'. */
static int reply_line(const char *data, size_t len, size_t pos, int numeric, size_t *cr)
{
    for (size_t i = pos; i < len; i++) {
        char c = data[i];
        if (c == '\r') {
            if (i + 1 == len) return RESP_MORE;
            if (data[i + 1] != '\n') return RESP_ERROR;
            *cr = i;
            return RESP_OK;
        }
        if (c == '\n') return RESP_ERROR;
        if (numeric && ((c != '-' && (c < '0' || c > '9')) || i - pos >= LL_MAX_DIGITS))
            return RESP_ERROR;
    }
    return RESP_MORE;
}

static char *dup_bytes(const char *s, size_t n)
{
    char *d = xrealloc(NULL, n + 1);
    if (n) memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* Walks one reply at *pos. With out == NULL it only validates (allocates
 * nothing); otherwise it builds the node (the bytes were validated first). */
static int reply_walk(const char *data, size_t len, size_t *pos, int depth, resp_reply **out)
{
    size_t at = *pos, cr;
    long long n;
    int r;
    if (at == len) return RESP_MORE;
    char t = data[at];
    switch (t) {
    case '+':
    case '-':
        r = reply_line(data, len, at + 1, 0, &cr);
        if (r != RESP_OK) return r;
        if (out) {
            resp_reply *x = xcalloc(1, sizeof *x);
            x->type = t == '+' ? RESP_R_STATUS : RESP_R_ERROR;
            x->len = cr - at - 1;
            x->str = dup_bytes(data + at + 1, x->len);
            *out = x;
        }
        *pos = cr + 2;
        return RESP_OK;
    case ':':
        r = reply_line(data, len, at + 1, 1, &cr);
        if (r != RESP_OK) return r;
        if (!parse_ll(data + at + 1, cr - at - 1, &n)) return RESP_ERROR;
        if (out) {
            resp_reply *x = xcalloc(1, sizeof *x);
            x->type = RESP_R_INT;
            x->integer = n;
            *out = x;
        }
        *pos = cr + 2;
        return RESP_OK;
    case '$': {
        r = reply_line(data, len, at + 1, 1, &cr);
        if (r != RESP_OK) return r;
        if (!parse_ll(data + at + 1, cr - at - 1, &n) || n < -1) return RESP_ERROR;
        size_t d = cr + 2;
        if (n == -1) {
            if (out) {
                *out = xcalloc(1, sizeof **out);
                (*out)->type = RESP_R_NIL;
            }
            *pos = d;
            return RESP_OK;
        }
        size_t avail = len - d; /* overflow-safe: compare against what is there */
        if (avail < 2 || (unsigned long long)n > avail - 2) return RESP_MORE;
        size_t e = d + (size_t)n;
        if (data[e] != '\r' || data[e + 1] != '\n') return RESP_ERROR;
        if (out) {
            resp_reply *x = xcalloc(1, sizeof *x);
            x->type = RESP_R_BULK;
            x->len = (size_t)n;
            x->str = dup_bytes(data + d, x->len);
            *out = x;
        }
        *pos = e + 2;
        return RESP_OK;
    }
    case '*': {
        if (depth >= RESP_REPLY_MAX_DEPTH) return RESP_ERROR;
        r = reply_line(data, len, at + 1, 1, &cr);
        if (r != RESP_OK) return r;
        if (!parse_ll(data + at + 1, cr - at - 1, &n) || n < -1) return RESP_ERROR;
        size_t q = cr + 2;
        if (n == -1) {
            if (out) {
                *out = xcalloc(1, sizeof **out);
                (*out)->type = RESP_R_NIL;
            }
            *pos = q;
            return RESP_OK;
        }
        resp_reply *x = NULL;
        if (out) {
            /* Validated: all n elements are present, so n <= len / 3. */
            x = xcalloc(1, sizeof *x);
            x->type = RESP_R_ARRAY;
            x->elements = (size_t)n;
            if (n) x->element = xcalloc((size_t)n, sizeof *x->element);
        }
        for (long long i = 0; i < n; i++) {
            r = reply_walk(data, len, &q, depth + 1, x ? &x->element[i] : NULL);
            if (r != RESP_OK) {
                resp_reply_free(x);
                return r;
            }
        }
        if (out) *out = x;
        *pos = q;
        return RESP_OK;
    }
    default:
        return RESP_ERROR;
    }
}

int resp_reply_parse(const char *data, size_t len, size_t *used, resp_reply **out)
{
    size_t end = 0, pos = 0;
    *out = NULL;
    int r = reply_walk(data, len, &end, 0, NULL);
    if (r != RESP_OK) return r;
    r = reply_walk(data, len, &pos, 0, out);
    assert(r == RESP_OK && pos == end); /* the same bytes validated just above */
    if (r != RESP_OK) {
        *out = NULL;
        return RESP_ERROR;
    }
    *used = end;
    return RESP_OK;
}

void resp_reply_free(resp_reply *r)
{
    if (!r) return;
    if (r->element)
        for (size_t i = 0; i < r->elements; i++)
            resp_reply_free(r->element[i]);
    free(r->element);
    free(r->str);
    free(r);
}

void resp_reply_encode(buf *out, const resp_reply *r)
{
    switch (r->type) {
    case RESP_R_STATUS:
        resp_add_simple(out, r->str);
        break;
    case RESP_R_ERROR:
        resp_add_error(out, r->str);
        break;
    case RESP_R_INT:
        resp_add_int(out, r->integer);
        break;
    case RESP_R_BULK:
        resp_add_bulk(out, r->str, r->len);
        break;
    case RESP_R_NIL:
        resp_add_nil(out);
        break;
    case RESP_R_ARRAY:
        resp_add_array(out, (long long)r->elements);
        for (size_t i = 0; i < r->elements; i++)
            resp_reply_encode(out, r->element[i]);
        break;
    }
}

void resp_argv_copy(int argc, char *const *argv, const size_t *argvlen, char ***argv_out,
                    size_t **len_out)
{
    size_t bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += argvlen[i];
    size_t head = (sizeof(char *) + sizeof(size_t)) * (size_t)argc;
    char *mem = malloc(head + bytes + 1);
    if (!mem) abort();
    char **av = (char **)mem;
    size_t *al = (size_t *)(mem + sizeof(char *) * (size_t)argc);
    char *p = mem + head;
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], argvlen[i]);
        av[i] = p;
        al[i] = argvlen[i];
        p += argvlen[i];
    }
    *argv_out = av;
    *len_out = al;
}
