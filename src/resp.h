/* resp: the RESP2 codec (requests in, replies out; replies in for clients).
 *
 * Request parser (server side)
 * ----------------------------
 * An incremental parser for the two request forms Redis accepts:
 *   - multibulk: "*<argc>\r\n" then argc times "$<len>\r\n<bytes>\r\n"
 *   - inline:    a line of words ended by "\n" (optionally "\r\n"), split on
 *                spaces/tabs, with "double quoted" (C escapes \n \r \t \\ \"
 *                \xHH) and 'single quoted' words, as redis-cli and telnet send.
 *
 * The caller owns one input buffer per connection and appends bytes to it as
 * they arrive; resp_parse is called with the whole buffer each time. The parser
 * remembers how far it got, so a request split into any number of pieces is
 * scanned once (no quadratic re-scan of large bulk payloads).
 *
 * Zero copy: a parsed request's arguments point into the caller's buffer.
 * They stay valid until the caller changes the buffer (appends that realloc,
 * or resp_parser_shift). Inline arguments are unescaped in place (the result
 * is never longer than the input), which is why the buffer is not const.
 *
 * Invariants:
 *   1. After RESP_OK, the bytes [0, resp_parser_consumed(p)) hold only
 *      complete requests already returned; the caller may discard them with
 *      memmove and must then call resp_parser_shift(p, n).
 *   2. After RESP_ERROR the parser is poisoned: every later call returns
 *      RESP_ERROR. The caller answers p->err and closes the connection.
 *   3. Limits are checked as soon as the header that announces a size is read,
 *      before any payload is buffered: a client announcing a 10 GB bulk is
 *      refused at once.
 *   4. An empty inline line and "*0\r\n" / "*-1\r\n" are skipped (Redis does
 *      the same), never returned as a zero-argument request.
 */
#ifndef KEEL_RESP_H
#define KEEL_RESP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct resp_limits {
    size_t max_request; /* bytes of one whole request, headers included */
    size_t max_args;    /* arguments of one request */
    size_t max_bulk;    /* bytes of one argument */
} resp_limits;

#define RESP_DEFAULT_MAX_REQUEST (64u * 1024 * 1024)
#define RESP_DEFAULT_MAX_ARGS 4096u
#define RESP_DEFAULT_MAX_BULK (16u * 1024 * 1024)

enum resp_status {
    RESP_MORE = 0,  /* need more bytes; nothing returned */
    RESP_OK = 1,    /* one complete request returned in *req */
    RESP_ERROR = -1 /* protocol error or limit broken; p->err says which */
};

typedef struct resp_request {
    size_t argc;
    char **argv; /* argv[i] points into the caller's buffer */
    size_t *argvlen;
} resp_request;

typedef struct resp_parser {
    /* read-only for callers */
    char err[160]; /* after RESP_ERROR: a reply line without the leading '-',
                      e.g. "ERR Protocol error: expected '$', got 'x'" or
                      "ERR request exceeds max_bulk_bytes (16777216)" */
    /* private */
    resp_limits lim;
    int state;
    size_t start;    /* offset where the current request begins */
    size_t pos;      /* offset of the next unexamined byte */
    size_t consumed; /* end offset of the last returned request */
    long long argc;  /* announced argument count of current multibulk */
    long long argi;  /* arguments parsed so far */
    long long bulklen;
    size_t *off; /* argument offsets (relative to buffer start) */
    size_t *len;
    size_t cap;
    char **argv; /* scratch handed out in resp_request */
    size_t argv_cap;
} resp_parser;

void resp_parser_init(resp_parser *p, const resp_limits *lim);
void resp_parser_free(resp_parser *p);
/* Parses the next request from buf[0, len). See enum resp_status. */
int resp_parse(resp_parser *p, char *buf, size_t len, resp_request *req);
/* Offset just past the last request returned. */
size_t resp_parser_consumed(const resp_parser *p);
/* The caller removed the first n bytes (n <= consumed) from its buffer. */
void resp_parser_shift(resp_parser *p, size_t n);

/* Reply encoder: appends one RESP2 value to out. */
void resp_add_simple(buf *out, const char *s);  /* +s\r\n */
void resp_add_error(buf *out, const char *msg); /* -msg\r\n (CR/LF in msg replaced) */
void resp_add_errorf(buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void resp_add_int(buf *out, long long v);              /* :v\r\n */
void resp_add_bulk(buf *out, const void *p, size_t n); /* $n\r\n...\r\n */
void resp_add_bulk_str(buf *out, const char *s);
void resp_add_nil(buf *out);                /* $-1\r\n */
void resp_add_array(buf *out, long long n); /* *n\r\n (n = -1: nil array) */
/* Encodes a whole request as a multibulk array (used by clients). */
void resp_add_command(buf *out, int argc, const char *const *argv, const size_t *argvlen);

/* Reply parser (client side)
 * --------------------------
 * Parses one complete RESP2 reply from buf[0, len) into a tree the caller
 * frees with resp_reply_free. Returns RESP_OK and sets *used, RESP_MORE if
 * the reply is not complete yet (nothing allocated), RESP_ERROR on malformed
 * input. Nesting deeper than RESP_REPLY_MAX_DEPTH is an error. */
enum resp_reply_type {
    RESP_R_STATUS = 1, /* +... */
    RESP_R_ERROR,      /* -... */
    RESP_R_INT,        /* :... */
    RESP_R_BULK,       /* $... */
    RESP_R_NIL,        /* $-1 or *-1 */
    RESP_R_ARRAY       /* *... */
};

#define RESP_REPLY_MAX_DEPTH 16

typedef struct resp_reply {
    int type;          /* enum resp_reply_type */
    long long integer; /* RESP_R_INT */
    char *str;         /* STATUS, ERROR, BULK: owned, NUL-terminated */
    size_t len;        /* length of str */
    size_t elements;   /* ARRAY */
    struct resp_reply **element;
} resp_reply;

int resp_reply_parse(const char *buf, size_t len, size_t *used, resp_reply **out);
void resp_reply_free(resp_reply *r);
/* Appends r encoded as RESP2 again (relaying a reply unchanged). */
void resp_reply_encode(buf *out, const resp_reply *r);

/* Copies a request's arguments into one allocation (the arguments, then
 * their lengths, then their bytes), so the request outlives the connection
 * buffer it was parsed from. *argv_out and *len_out point into the block,
 * which the caller frees with free(*argv_out). */
void resp_argv_copy(int argc, char *const *argv, const size_t *argvlen, char ***argv_out,
                    size_t **len_out);

#endif
