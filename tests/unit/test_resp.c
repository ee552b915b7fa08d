/* test_resp: unit tests for the RESP2 codec (src/resp.c).
 *
 * Request parser: every request form, every split of a stream (all one- and
 * two-cut splits, byte at a time, with and without compaction), pipelining,
 * shifting, inline quoting, each limit and protocol error with its exact
 * message, poisoning, buffer reuse, and a large bulk whose payload pages are
 * made unreadable to prove the parser never scans a payload it waits for.
 * Encoder: byte-for-byte output. Reply parser: every type, nesting, every
 * prefix of a valid reply, malformed and hostile input, the depth limit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf.h"
#include "resp.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static const resp_limits small_limits = {.max_request = 100, .max_args = 4, .max_bulk = 10};

/* Feeds s[0, n) to a fresh parser the way a server would: the buffer grows
 * chunk by chunk (chunk ends at cuts[]), resp_parse is called until it stops
 * returning RESP_OK, and with `compact` the consumed prefix is dropped and
 * shifted after every chunk. Appends to `log` one line per request
 * ("argc|len:bytes|..."), then "ERROR <err>" or "MORE", then the absolute
 * consumed offset. Checks the API invariants on the way. */
static void run_stream(const char *s, size_t n, const resp_limits *lim, const size_t *cuts, size_t ncuts,
                       int compact, buf *log)
{
    resp_parser p;
    buf b;
    buf_init(&b);
    resp_parser_init(&p, lim);
    size_t fed = 0, shifted = 0, last = 0;
    int status = RESP_MORE;
    for (size_t c = 0; c <= ncuts && status != RESP_ERROR; c++) {
        size_t end = c < ncuts ? cuts[c] : n;
        if (end < fed || end > n) continue;
        buf_append(&b, s + fed, end - fed);
        fed = end;
        if (b.len == 0) continue;
        for (;;) {
            resp_request req;
            status = resp_parse(&p, b.data, b.len, &req);
            size_t consumed = resp_parser_consumed(&p);
            assert_true(consumed + shifted >= last);
            assert_true(consumed <= b.len);
            last = consumed + shifted;
            if (status != RESP_OK) break;
            assert_true(req.argc >= 1);
            if (lim) assert_true(req.argc <= lim->max_args);
            buf_printf(log, "%zu", req.argc);
            for (size_t i = 0; i < req.argc; i++) {
                assert_true(req.argv[i] >= b.data);
                assert_true(req.argv[i] + req.argvlen[i] <= b.data + consumed);
                if (lim) assert_true(req.argvlen[i] <= lim->max_bulk);
                buf_printf(log, "|%zu:", req.argvlen[i]);
                buf_append(log, req.argv[i], req.argvlen[i]);
            }
            buf_putc(log, '\n');
        }
        if (compact && status != RESP_ERROR) {
            size_t k = resp_parser_consumed(&p);
            buf_consume(&b, k);
            resp_parser_shift(&p, k);
            shifted += k;
        }
    }
    if (status == RESP_ERROR) {
        buf_printf(log, "ERROR %s\n", p.err);
        /* Poisoned: more bytes change nothing. */
        buf_append(&b, "*1\r\n$4\r\nPING\r\n", 14);
        resp_request req;
        assert_int_equal(resp_parse(&p, b.data, b.len, &req), RESP_ERROR);
    } else {
        buf_puts(log, "MORE\n");
    }
    buf_printf(log, "consumed %zu\n", resp_parser_consumed(&p) + shifted);
    resp_parser_free(&p);
    buf_free(&b);
}

/* The log of feeding s whole; NUL-terminated, *outlen excludes the NUL. */
static char *log_whole(const char *s, size_t n, const resp_limits *lim, size_t *outlen)
{
    buf log;
    buf_init(&log);
    run_stream(s, n, lim, NULL, 0, 0, &log);
    if (outlen) *outlen = log.len;
    buf_putc(&log, '\0');
    return log.data;
}

/* Asserts every split of s gives the same log as feeding it whole: all single
 * cuts, all pairs of cuts, byte at a time; each with and without compaction. */
static void check_all_splits(const char *s, size_t n, const resp_limits *lim)
{
    size_t wantlen;
    char *want = log_whole(s, n, lim, &wantlen);
    size_t *cuts = malloc((n + 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (int compact = 0; compact <= 1; compact++) {
        for (size_t i = 0; i <= n; i++) {
            for (size_t j = i; j <= n; j++) {
                buf log;
                buf_init(&log);
                cuts[0] = i;
                cuts[1] = j;
                run_stream(s, n, lim, cuts, 2, compact, &log);
                buf_putc(&log, '\0');
                if (log.len != wantlen + 1 || memcmp(log.data, want, wantlen) != 0) fail_msg("split %zu,%zu compact %d:\n%s\nwant:\n%s", i, j, compact, log.data, want);
                buf_free(&log);
            }
        }
        for (size_t i = 0; i < n; i++) cuts[i] = i + 1;
        buf log;
        buf_init(&log);
        run_stream(s, n, lim, cuts, n, compact, &log);
        assert_int_equal(log.len, wantlen);
        assert_memory_equal(log.data, want, wantlen);
        buf_free(&log);
    }
    free(cuts);
    free(want);
}

static void expect_log(const char *s, const resp_limits *lim, const char *want)
{
    size_t n = strlen(s);
    char *got = log_whole(s, n, lim, NULL);
    assert_string_equal(got, want);
    free(got);
    check_all_splits(s, n, lim);
}

/* Parses one request from s (copied into a writable buffer). */
static int parse_one(const char *s, size_t n, const resp_limits *lim, resp_parser *p, char **copy, resp_request *req)
{
    *copy = malloc(n ? n : 1);
    assert_non_null(*copy);
    memcpy(*copy, s, n);
    resp_parser_init(p, lim);
    return resp_parse(p, *copy, n, req);
}

/* Asserts s, fed whole, fails with exactly `err`, and so does every split. */
static void expect_error(const char *s, size_t n, const resp_limits *lim, const char *err)
{
    resp_parser p;
    resp_request req;
    char *copy;
    assert_int_equal(parse_one(s, n, lim, &p, &copy, &req), RESP_ERROR);
    assert_string_equal(p.err, err);
    resp_parser_free(&p);
    free(copy);
    if (n <= 200) check_all_splits(s, n, lim);
}

static void expect_error_str(const char *s, const resp_limits *lim, const char *err)
{
    expect_error(s, strlen(s), lim, err);
}

/* ------------------------------------------------------------------------ */
/* Request forms                                                            */
/* ------------------------------------------------------------------------ */

static void test_multibulk(void **state)
{
    (void)state;
    const char *s = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
    resp_parser p;
    resp_request req;
    char *copy;
    assert_int_equal(parse_one(s, strlen(s), NULL, &p, &copy, &req), RESP_OK);
    assert_int_equal(req.argc, 3);
    assert_int_equal(req.argvlen[0], 3);
    assert_memory_equal(req.argv[0], "SET", 3);
    assert_ptr_equal(req.argv[0], copy + 8); /* zero copy */
    assert_int_equal(req.argvlen[1], 1);
    assert_memory_equal(req.argv[1], "k", 1);
    assert_int_equal(req.argvlen[2], 5);
    assert_memory_equal(req.argv[2], "hello", 5);
    assert_int_equal(resp_parser_consumed(&p), strlen(s));
    /* The multibulk bytes are left exactly as they were. */
    assert_memory_equal(copy, s, strlen(s));
    assert_int_equal(resp_parse(&p, copy, strlen(s), &req), RESP_MORE);
    resp_parser_free(&p);
    free(copy);
}

static void test_multibulk_binary_and_empty(void **state)
{
    (void)state;
    static const char s[] = "*3\r\n$0\r\n\r\n$6\r\na\r\n\0\nb\r\n$2\r\n\r\n\r\n";
    static const char want[] = "3|0:|6:a\r\n\0\nb|2:\r\n\nMORE\nconsumed 30\n";
    size_t gotlen;
    char *got = log_whole(s, sizeof s - 1, NULL, &gotlen);
    assert_int_equal(gotlen, sizeof want - 1);
    assert_memory_equal(got, want, sizeof want - 1);
    free(got);
    check_all_splits(s, sizeof s - 1, NULL);
}

static void test_inline(void **state)
{
    (void)state;
    expect_log("GET a b\r\n", NULL, "3|3:GET|1:a|1:b\nMORE\nconsumed 9\n");
    expect_log("PING\n", NULL, "1|4:PING\nMORE\nconsumed 5\n");
    expect_log("  \t SET\tk  \t v \t\r\n", NULL, "3|3:SET|1:k|1:v\nMORE\nconsumed 18\n");
    /* A line starting with '$' is inline too (as in Redis). */
    expect_log("$x y\n", NULL, "2|2:$x|1:y\nMORE\nconsumed 5\n");
    /* Only the last '\r' belongs to the line ending; an inner one separates. */
    expect_log("a\rb\r\r\n", NULL, "2|1:a|1:b\nMORE\nconsumed 6\n");
    /* Incomplete line: nothing yet. */
    expect_log("GET a", NULL, "MORE\nconsumed 0\n");
}

static void test_inline_zero_copy_in_place(void **state)
{
    (void)state;
    const char *s = "SET \"a\\x41\" 'it\\'s'\n";
    resp_parser p;
    resp_request req;
    char *copy;
    assert_int_equal(parse_one(s, strlen(s), NULL, &p, &copy, &req), RESP_OK);
    assert_int_equal(req.argc, 3);
    assert_ptr_equal(req.argv[0], copy);
    assert_ptr_equal(req.argv[1], copy + 4); /* written from the opening quote */
    assert_int_equal(req.argvlen[1], 2);
    assert_memory_equal(req.argv[1], "aA", 2);
    assert_ptr_equal(req.argv[2], copy + 12);
    assert_int_equal(req.argvlen[2], 4);
    assert_memory_equal(req.argv[2], "it's", 4);
    resp_parser_free(&p);
    free(copy);
}

static void test_skipped_requests(void **state)
{
    (void)state;
    expect_log("*0\r\n*-1\r\n\r\n   \n\n*1\r\n$4\r\nPING\r\n", NULL, "1|4:PING\nMORE\nconsumed 30\n");
    /* Skipped bytes count as consumed even when nothing is returned. */
    expect_log("*0\r\n\n*1\r\n$4\r\nPI", NULL, "MORE\nconsumed 5\n");
    resp_parser p;
    resp_request req;
    char *copy;
    assert_int_equal(parse_one("*0\r\n*-1\r\n\r\n", 11, NULL, &p, &copy, &req), RESP_MORE);
    assert_int_equal(resp_parser_consumed(&p), 11);
    resp_parser_free(&p);
    free(copy);
}

static void test_pipelined(void **state)
{
    (void)state;
    const char *s = "*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n*1\r\n$4\r\nQUIT\r\nECHO \"x y\"\n*2\r\n$3\r\nGET";
    resp_parser p;
    resp_request req;
    char *copy;
    size_t n = strlen(s);
    assert_int_equal(parse_one(s, n, NULL, &p, &copy, &req), RESP_OK);
    assert_int_equal(req.argc, 2);
    assert_int_equal(resp_parser_consumed(&p), 20);
    assert_int_equal(resp_parse(&p, copy, n, &req), RESP_OK);
    assert_int_equal(req.argc, 1);
    assert_memory_equal(req.argv[0], "PING", 4);
    assert_int_equal(resp_parser_consumed(&p), 26);
    assert_int_equal(resp_parse(&p, copy, n, &req), RESP_OK);
    assert_memory_equal(req.argv[0], "QUIT", 4);
    assert_int_equal(resp_parser_consumed(&p), 40);
    assert_int_equal(resp_parse(&p, copy, n, &req), RESP_OK);
    assert_int_equal(req.argc, 2);
    assert_int_equal(req.argvlen[1], 3);
    assert_memory_equal(req.argv[1], "x y", 3);
    assert_int_equal(resp_parser_consumed(&p), 51);
    assert_int_equal(resp_parse(&p, copy, n, &req), RESP_MORE);
    assert_int_equal(resp_parser_consumed(&p), 51);
    resp_parser_free(&p);
    free(copy);
}

/* A mixed stream: every split, byte at a time, with and without compaction. */
static void test_every_split(void **state)
{
    (void)state;
    const char *s = "*2\r\n$3\r\nGET\r\n$2\r\nab\r\n"
                    "SET \"k\\n\" 'v w'\r\n"
                    "*0\r\n\n"
                    "*3\r\n$1\r\nx\r\n$0\r\n\r\n$3\r\n\r\n\r\r\n"
                    "PING\n"
                    "*1\r\n$5\r\nhel";
    expect_log(s, NULL,
               "2|3:GET|2:ab\n"
               "3|3:SET|2:k\n|3:v w\n"
               "3|1:x|0:|3:\r\n\r\n"
               "1|4:PING\n"
               "MORE\nconsumed 74\n");
}

static void test_shift(void **state)
{
    (void)state;
    /* Shift while waiting in each state, then finish the request. */
    const char *parts[] = {
        "*1\r\n$4\r\nPING\r\n*2\r\n",         /* ends in BULK_HDR (before '$') */
        "*1\r\n$4\r\nPING\r\n*2\r\n$3",       /* ends in BULK_HDR (mid-header) */
        "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nG",  /* ends in BULK_DATA */
        "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\n", /* second argument */
        "*1\r\n$4\r\nPING\r\nGE",             /* ends in INLINE */
        "*1\r\n$4\r\nPING\r\n*",              /* ends in MB_HDR */
    };
    const char *full_multi = "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    const char *full_inline = "*1\r\n$4\r\nPING\r\nGET k\n";
    for (size_t t = 0; t < sizeof parts / sizeof parts[0]; t++) {
        const char *full = strncmp(parts[t] + 14, "GE", 2) == 0 ? full_inline : full_multi;
        resp_parser p;
        resp_request req;
        buf b;
        buf_init(&b);
        resp_parser_init(&p, NULL);
        buf_puts(&b, parts[t]);
        assert_int_equal(resp_parse(&p, b.data, b.len, &req), RESP_OK);
        assert_int_equal(resp_parse(&p, b.data, b.len, &req), RESP_MORE);
        assert_int_equal(resp_parser_consumed(&p), 14);
        buf_consume(&b, 14);
        resp_parser_shift(&p, 14);
        assert_int_equal(resp_parser_consumed(&p), 0);
        buf_puts(&b, full + strlen(parts[t]));
        assert_int_equal(resp_parse(&p, b.data, b.len, &req), RESP_OK);
        assert_int_equal(req.argc, 2);
        assert_ptr_equal(req.argv[0], b.data + (full == full_inline ? 0 : 8));
        assert_memory_equal(req.argv[0], "GET", 3);
        assert_memory_equal(req.argv[1], "k", 1);
        assert_int_equal(resp_parser_consumed(&p), b.len);
        resp_parser_free(&p);
        buf_free(&b);
    }
}

/* The argument arrays are reused: the steady state allocates nothing. */
static void test_reuse(void **state)
{
    (void)state;
    const char *get = "*3\r\n$3\r\nGET\r\n$2\r\nkv\r\n$3\r\nkey\r\n";
    resp_parser p;
    resp_request req;
    buf b;
    buf_init(&b);
    resp_parser_init(&p, NULL);
    char **argv0 = NULL;
    size_t cap0 = 0;
    for (int i = 0; i < 1000; i++) {
        buf_puts(&b, get);
        assert_int_equal(resp_parse(&p, b.data, b.len, &req), RESP_OK);
        assert_int_equal(req.argc, 3);
        if (i == 0) {
            argv0 = req.argv;
            cap0 = p.cap;
        }
        assert_ptr_equal(req.argv, argv0);
        assert_int_equal(p.cap, cap0);
        buf_consume(&b, resp_parser_consumed(&p));
        resp_parser_shift(&p, resp_parser_consumed(&p));
    }
    assert_int_equal(b.len, 0);
    resp_parser_free(&p);
    buf_free(&b);
}

/* A 10 MB bulk arriving in 4 KB pieces: the payload pages are unreadable, so
 * the test crashes if the parser looks at payload bytes it is waiting for. */
static void test_large_bulk_not_rescanned(void **state)
{
    (void)state;
    const size_t payload = 10u * 1024 * 1024;
    const char *hdr = "*1\r\n$10485760\r\n";
    size_t h = strlen(hdr);
    size_t total = h + payload + 2;
    long pg = sysconf(_SC_PAGESIZE);
    size_t maplen = (total + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
    char *m = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m != MAP_FAILED);
    memcpy(m, hdr, h);
    memset(m + h, 'x', payload);
    memcpy(m + h + payload, "\r\n", 2);
    /* Pages wholly inside the payload become unreadable. */
    size_t lo = (h + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
    size_t hi = (h + payload) / (size_t)pg * (size_t)pg;
    assert_true(hi > lo);
    assert_int_equal(mprotect(m + lo, hi - lo, PROT_NONE), 0);
    resp_parser p;
    resp_request req;
    resp_parser_init(&p, NULL);
    size_t len;
    for (len = 1; len < total; len += 4096) assert_int_equal(resp_parse(&p, m, len, &req), RESP_MORE);
    assert_int_equal(resp_parse(&p, m, total - 1, &req), RESP_MORE);
    assert_int_equal(resp_parse(&p, m, total, &req), RESP_OK);
    assert_int_equal(req.argc, 1);
    assert_ptr_equal(req.argv[0], m + h);
    assert_int_equal(req.argvlen[0], payload);
    resp_parser_free(&p);
    assert_int_equal(munmap(m, maplen), 0);
}

/* ------------------------------------------------------------------------ */
/* Inline quoting                                                           */
/* ------------------------------------------------------------------------ */

static void test_inline_quoting(void **state)
{
    (void)state;
    struct {
        const char *in;
        const char *want;
    } cases[] = {
        {"\"a b\" c\n", "2|3:a b|1:c\n"},
        {"\"\\n\\r\\t\\b\\a\\\\\\\"\\q\"\n", "1|8:\n\r\t\b\a\\\"q\n"},
        {"\"\\x41\\x7a\\x4G\"\n", "1|5:Azx4G\n"},
        {"\"\\x\"\n", "1|1:x\n"},
        {"'a \"b\" \\n'\n", "1|8:a \"b\" \\n\n"},
        {"'it\\'s' x\n", "2|4:it's|1:x\n"},
        {"'a\\\\b'\n", "1|4:a\\\\b\n"},
        {"'\\\\'\n", "UNBAL"}, /* the second backslash escapes the quote, as in redis-cli */
        {"\"\" ''\n", "2|0:|0:\n"},
        {"foo\"bar baz\"qux\n", "UNBAL"},
        {"foo\"bar baz\" qux\n", "2|10:foobar baz|3:qux\n"},
        {"a'b c'\n", "1|4:ab c\n"},
        {"\"end\"\r\n", "1|3:end\n"},
        {"\"tab\"\tx\n", "2|3:tab|1:x\n"},
        {"\"\\x00\"\n", "1|1:\0\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].in), gotlen;
        char *got = log_whole(cases[i].in, n, NULL, &gotlen);
        if (strcmp(cases[i].want, "UNBAL") == 0) {
            assert_string_equal(got, "ERROR ERR Protocol error: unbalanced quotes in request\nconsumed 0\n");
        } else {
            buf want;
            buf_init(&want);
            /* "\0" in a C literal ends it, so the NUL case is spelled out. */
            if (strcmp(cases[i].in, "\"\\x00\"\n") == 0) buf_append(&want, "1|1:\0\n", 6);
            else buf_puts(&want, cases[i].want);
            buf_printf(&want, "MORE\nconsumed %zu\n", n);
            if (gotlen != want.len || memcmp(got, want.data, want.len) != 0) fail_msg("case %zu: got\n%s\nwant\n%.*s", i, got, (int)want.len, want.data);
            buf_free(&want);
        }
        free(got);
        check_all_splits(cases[i].in, n, NULL);
    }
}

static void test_inline_unbalanced(void **state)
{
    (void)state;
    const char *bad[] = {
        "\"abc\n", "'abc\n", "\"abc\"def\n", "'abc'def\n", "\"abc\\\"\n", "x \"a\\\n", "'a\\'\n", "\"\"\"\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(bad[i], strlen(bad[i]), NULL, "ERR Protocol error: unbalanced quotes in request");
}

/* ------------------------------------------------------------------------ */
/* Limits                                                                   */
/* ------------------------------------------------------------------------ */

static void test_limit_args(void **state)
{
    (void)state;
    /* Refused at the header, before any argument arrives. */
    expect_error_str("*5\r\n", &small_limits, "ERR request exceeds max_args (4)");
    expect_error_str("*5000\r\n", NULL, "ERR request exceeds max_args (4096)");
    expect_error_str("a b c d e\n", &small_limits, "ERR request exceeds max_args (4)");
    /* At the limit is fine. */
    expect_log("a b c d\n*4\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n", &small_limits,
               "4|1:a|1:b|1:c|1:d\n4|1:a|1:b|1:c|1:d\nMORE\nconsumed 40\n");
    resp_limits zero = {.max_request = 100, .max_args = 0, .max_bulk = 10};
    expect_error_str("PING\n", &zero, "ERR request exceeds max_args (0)");
    expect_error_str("*1\r\n", &zero, "ERR request exceeds max_args (0)");
}

static void test_limit_bulk(void **state)
{
    (void)state;
    /* Refused at the "$" header, before the payload. */
    expect_error_str("*1\r\n$11\r\n", &small_limits, "ERR request exceeds max_bulk_bytes (10)");
    expect_error_str("*1\r\n$99999999999\r\n", NULL, "ERR request exceeds max_bulk_bytes (16777216)");
    expect_error_str("*1\r\n$9223372036854775807\r\n", NULL, "ERR request exceeds max_bulk_bytes (16777216)");
    expect_error_str("x 01234567890\n", &small_limits, "ERR request exceeds max_bulk_bytes (10)");
    /* The unescaped length counts: 12 bytes of input, 10 of argument. */
    expect_log("\"012345678\\n\"\n", &small_limits, "1|10:012345678\n\nMORE\nconsumed 14\n");
    expect_log("*1\r\n$10\r\n0123456789\r\n", &small_limits, "1|10:0123456789\nMORE\nconsumed 21\n");
}

static void test_limit_request(void **state)
{
    (void)state;
    resp_limits lim = {.max_request = 30, .max_args = 100, .max_bulk = 100};
    const char *exact = "*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
    assert_int_equal(strlen(exact), 30);
    expect_log(exact, &lim, "2|3:GET|10:0123456789\nMORE\nconsumed 30\n");
    /* One byte more, known from the "$" header. */
    expect_error_str("*2\r\n$3\r\nGET\r\n$11\r\n", &lim, "ERR request exceeds max_request_bytes (30)");
    /* The announced sizes of the arguments add up past the limit. */
    expect_error_str("*3\r\n$9\r\n123456789\r\n$9\r\n", &lim, "ERR request exceeds max_request_bytes (30)");
    /* A request that reaches the limit exactly but announces another argument. */
    expect_error_str("*3\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n", &lim, "ERR request exceeds max_request_bytes (30)");
    /* An inline line: 29 bytes plus '\n' is fine; 30 without a '\n' is not. */
    expect_log("0123456789 0123456789 0123456\n", &lim, "3|10:0123456789|10:0123456789|7:0123456\nMORE\nconsumed 30\n");
    expect_error_str("0123456789 0123456789 01234567", &lim, "ERR request exceeds max_request_bytes (30)");
    expect_error_str("0123456789 0123456789 01234567\n", &lim, "ERR request exceeds max_request_bytes (30)");
    /* A growing inline line with no newline yet is refused once it reaches the limit. */
    resp_parser p;
    resp_request req;
    char line[64];
    memset(line, 'a', sizeof line);
    resp_parser_init(&p, &lim);
    assert_int_equal(resp_parse(&p, line, 29, &req), RESP_MORE);
    assert_int_equal(resp_parse(&p, line, 30, &req), RESP_ERROR);
    assert_string_equal(p.err, "ERR request exceeds max_request_bytes (30)");
    resp_parser_free(&p);
    /* A header line that never ends is refused at the exact byte too. */
    char hdr[64];
    memset(hdr, '1', sizeof hdr);
    hdr[0] = '*';
    resp_parser_init(&p, &lim);
    assert_int_equal(resp_parse(&p, hdr, 29, &req), RESP_MORE);
    assert_int_equal(resp_parse(&p, hdr, 30, &req), RESP_ERROR);
    assert_string_equal(p.err, "ERR request exceeds max_request_bytes (30)");
    resp_parser_free(&p);
    memcpy(hdr, "*1\r\n$", 5);
    resp_parser_init(&p, &lim);
    assert_int_equal(resp_parse(&p, hdr, 29, &req), RESP_MORE);
    assert_int_equal(resp_parse(&p, hdr, 30, &req), RESP_ERROR);
    assert_string_equal(p.err, "ERR request exceeds max_request_bytes (30)");
    resp_parser_free(&p);
    expect_error_str("*1\r\n$1111111111111111111111111111", &lim, "ERR request exceeds max_request_bytes (30)");
    expect_error_str("*111111111111111111111111111111", &lim, "ERR request exceeds max_request_bytes (30)");
    /* The limit applies per request, not per buffer. */
    expect_log("*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n", &lim,
               "2|3:GET|10:0123456789\n2|3:GET|10:0123456789\nMORE\nconsumed 60\n");
}

/* ------------------------------------------------------------------------ */
/* Protocol errors                                                          */
/* ------------------------------------------------------------------------ */

static void test_protocol_errors(void **state)
{
    (void)state;
    struct {
        const char *in;
        const char *err;
    } cases[] = {
        {"*1\r\nx", "ERR Protocol error: expected '$', got 'x'"},
        {"*2\r\n$1\r\na\r\n:1\r\n", "ERR Protocol error: expected '$', got ':'"},
        {"*1\r\n\r\n", "ERR Protocol error: expected '$', got '\\x0d'"},
        {"*x\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*-2\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*1x\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*01\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*-0\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*+1\r\n", "ERR Protocol error: invalid multibulk length"},
        {"* 1\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*\n", "ERR Protocol error: invalid multibulk length"},
        {"*1\n", "ERR Protocol error: invalid multibulk length"},
        {"*99999999999999999999\r\n", "ERR Protocol error: invalid multibulk length"},
        {"*1\r\n$-1\r\n", "ERR Protocol error: invalid bulk length"},
        {"*1\r\n$x\r\n", "ERR Protocol error: invalid bulk length"},
        {"*1\r\n$\r\n", "ERR Protocol error: invalid bulk length"},
        {"*1\r\n$01\r\n", "ERR Protocol error: invalid bulk length"},
        {"*1\r\n$1\n", "ERR Protocol error: invalid bulk length"},
        {"*1\r\n$99999999999999999999\r\n", "ERR Protocol error: invalid bulk length"},
        {"*1\r\n$1\r\nab\r\n", "ERR Protocol error: expected CRLF after bulk"},
        {"*1\r\n$1\r\na\n\r", "ERR Protocol error: expected CRLF after bulk"},
        {"\"unterminated\n", "ERR Protocol error: unbalanced quotes in request"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].in, strlen(cases[i].in), NULL, cases[i].err);
    expect_error("*1\r\n\0", 5, NULL, "ERR Protocol error: expected '$', got '\\x00'");
}

static void test_header_too_long(void **state)
{
    (void)state;
    size_t n = 70 * 1024;
    char *s = malloc(n + 2);
    assert_non_null(s);
    /* "*" then 70 KiB of digits: refused after 64 KiB without a newline. */
    s[0] = '*';
    memset(s + 1, '1', n - 1);
    expect_error(s, n, NULL, "ERR Protocol error: too big multibulk count string");
    /* Same verdict when the newline is already there (split-independent). */
    memcpy(s + n, "\r\n", 2);
    expect_error(s, n + 2, NULL, "ERR Protocol error: too big multibulk count string");
    /* Byte exactly at the limit: 65536 bytes with no newline wait, 65537 fail. */
    resp_parser p;
    resp_request req;
    resp_parser_init(&p, NULL);
    assert_int_equal(resp_parse(&p, s, 65536, &req), RESP_MORE);
    assert_int_equal(resp_parse(&p, s, 65537, &req), RESP_ERROR);
    assert_string_equal(p.err, "ERR Protocol error: too big multibulk count string");
    resp_parser_free(&p);
    /* The same for a bulk header. */
    memcpy(s, "*1\r\n$", 5);
    memset(s + 5, '1', n - 5);
    expect_error(s, n, NULL, "ERR Protocol error: too big bulk count string");
    /* With a small max_request, whichever limit is reached first wins. */
    resp_limits lim = {.max_request = 1000, .max_args = 10, .max_bulk = 10};
    expect_error(s, n, &lim, "ERR request exceeds max_request_bytes (1000)");
    free(s);
}

static void test_poisoned(void **state)
{
    (void)state;
    resp_parser p;
    resp_request req;
    char bad[] = "*1\r\n?\r\nPING\r\n";
    resp_parser_init(&p, NULL);
    assert_int_equal(resp_parse(&p, bad, sizeof bad - 1, &req), RESP_ERROR);
    assert_string_equal(p.err, "ERR Protocol error: expected '$', got '?'");
    char good[] = "*1\r\n$4\r\nPING\r\n";
    for (int i = 0; i < 3; i++) {
        assert_int_equal(resp_parse(&p, bad, sizeof bad - 1, &req), RESP_ERROR);
        assert_string_equal(p.err, "ERR Protocol error: expected '$', got '?'");
    }
    resp_parser_free(&p);
    /* A request before the bad bytes is still returned first. */
    char mixed[] = "*1\r\n$4\r\nPING\r\n*1\r\n?";
    resp_parser_init(&p, NULL);
    assert_int_equal(resp_parse(&p, mixed, sizeof mixed - 1, &req), RESP_OK);
    assert_memory_equal(req.argv[0], "PING", 4);
    assert_int_equal(resp_parse(&p, mixed, sizeof mixed - 1, &req), RESP_ERROR);
    assert_int_equal(resp_parser_consumed(&p), 14);
    assert_int_equal(resp_parse(&p, good, sizeof good - 1, &req), RESP_ERROR);
    resp_parser_free(&p);
}

/* Random streams of valid and invalid pieces: every split agrees with the
 * whole (a deterministic cousin of the fuzz target). */
static void test_random_streams(void **state)
{
    (void)state;
    static const char *pieces[] = {
        "*1\r\n$4\r\nPING\r\n", "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "GET a\r\n", "\"x\\ty\" 'z'\n", "*0\r\n",
        "*-1\r\n", "\n", "*2\r\n$0\r\n\r\n$2\r\n\r\n\r\n", "*1\r\n$1", "\r\n", "$", "x", "\"", "*", "*3\r\n",
        "$3\r\n", "abc", "*1\r\n$11\r\nhello world\r\n", "a b c d e f\n", " ", "'q\\'", "\\x41",
    };
    const resp_limits *lims[] = {NULL, &small_limits};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 300; iter++) {
        buf s;
        buf_init(&s);
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int k = 1 + (int)((seed >> 33) % 6);
        for (int j = 0; j < k; j++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            buf_puts(&s, pieces[(seed >> 33) % (sizeof pieces / sizeof pieces[0])]);
        }
        check_all_splits(s.data, s.len, lims[iter % 2]);
        buf_free(&s);
    }
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                  */
/* ------------------------------------------------------------------------ */

static void expect_buf(buf *b, const char *want, size_t n)
{
    assert_int_equal(b->len, n);
    assert_memory_equal(b->data, want, n);
    buf_reset(b);
}

static void test_encoder(void **state)
{
    (void)state;
    buf b;
    buf_init(&b);
    resp_add_simple(&b, "OK");
    expect_buf(&b, "+OK\r\n", 5);
    resp_add_simple(&b, "a\r\nb");
    expect_buf(&b, "+a  b\r\n", 7);
    resp_add_error(&b, "ERR bad\r\nthing\n");
    expect_buf(&b, "-ERR bad  thing \r\n", 18);
    resp_add_error(&b, "");
    expect_buf(&b, "-\r\n", 3);
    resp_add_errorf(&b, "NOSPACE no such space '%s' (%d)", "x\ny", 7);
    expect_buf(&b, "-NOSPACE no such space 'x y' (7)\r\n", 34);
    char longmsg[600];
    memset(longmsg, 'e', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = '\0';
    longmsg[300] = '\r';
    resp_add_errorf(&b, "ERR %s", longmsg);
    assert_int_equal(b.len, 1 + 4 + 599 + 2);
    assert_memory_equal(b.data, "-ERR eee", 8);
    assert_int_equal(b.data[5 + 300], ' ');
    assert_memory_equal(b.data + b.len - 3, "e\r\n", 3);
    buf_reset(&b);
    resp_add_int(&b, 0);
    expect_buf(&b, ":0\r\n", 4);
    resp_add_int(&b, -1);
    expect_buf(&b, ":-1\r\n", 5);
    resp_add_int(&b, 9223372036854775807LL);
    expect_buf(&b, ":9223372036854775807\r\n", 22);
    resp_add_int(&b, -9223372036854775807LL - 1);
    expect_buf(&b, ":-9223372036854775808\r\n", 23);
    resp_add_bulk(&b, "a\r\n\0b", 5);
    expect_buf(&b, "$5\r\na\r\n\0b\r\n", 11);
    resp_add_bulk(&b, NULL, 0);
    expect_buf(&b, "$0\r\n\r\n", 6);
    resp_add_bulk_str(&b, "hello");
    expect_buf(&b, "$5\r\nhello\r\n", 11);
    resp_add_nil(&b);
    expect_buf(&b, "$-1\r\n", 5);
    resp_add_array(&b, -1);
    expect_buf(&b, "*-1\r\n", 5);
    resp_add_array(&b, 0);
    expect_buf(&b, "*0\r\n", 4);
    resp_add_array(&b, 12);
    expect_buf(&b, "*12\r\n", 5);
    const char *argv[] = {"SET", "k", "v\0w"};
    const size_t lens[] = {3, 1, 3};
    resp_add_command(&b, 3, argv, lens);
    expect_buf(&b, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\0w\r\n", 29);
    resp_add_command(&b, 2, argv, NULL);
    expect_buf(&b, "*2\r\n$3\r\nSET\r\n$1\r\nk\r\n", 20);
    /* Appends, never overwrites. */
    resp_add_simple(&b, "A");
    resp_add_int(&b, 5);
    expect_buf(&b, "+A\r\n:5\r\n", 8);
    /* A large bulk. */
    char *big = malloc(100000);
    assert_non_null(big);
    memset(big, 'z', 100000);
    resp_add_bulk(&b, big, 100000);
    assert_int_equal(b.len, 100000 + 11);
    assert_memory_equal(b.data, "$100000\r\nzz", 11);
    assert_memory_equal(b.data + b.len - 3, "z\r\n", 3);
    free(big);
    buf_free(&b);
}

/* The encoder and the request parser agree. */
static void test_command_roundtrip(void **state)
{
    (void)state;
    const char *argv[] = {"PUT", "space", "k\r\ney", "", "v\n"};
    const size_t lens[] = {3, 5, 5, 0, 2};
    buf b;
    buf_init(&b);
    resp_add_command(&b, 5, argv, lens);
    resp_parser p;
    resp_request req;
    resp_parser_init(&p, NULL);
    assert_int_equal(resp_parse(&p, b.data, b.len, &req), RESP_OK);
    assert_int_equal(req.argc, 5);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(req.argvlen[i], lens[i]);
        assert_memory_equal(req.argv[i], argv[i], lens[i]);
    }
    assert_int_equal(resp_parser_consumed(&p), b.len);
    resp_parser_free(&p);
    buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* Reply parser                                                             */
/* ------------------------------------------------------------------------ */

static resp_reply *reply_ok(const char *s, size_t n, size_t want_used)
{
    resp_reply *r = (resp_reply *)0x1;
    size_t used = 0;
    assert_int_equal(resp_reply_parse(s, n, &used, &r), RESP_OK);
    assert_non_null(r);
    assert_int_equal(used, want_used);
    return r;
}

/* Every proper prefix of a complete reply is RESP_MORE with nothing out. */
static void check_prefixes(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        resp_reply *r = (resp_reply *)0x1;
        size_t used = 12345;
        int st = resp_reply_parse(s, i, &used, &r);
        if (st != RESP_MORE) fail_msg("prefix %zu of %zu: status %d", i, n, st);
        assert_null(r);
        assert_int_equal(used, 12345);
    }
}

static void test_reply_scalars(void **state)
{
    (void)state;
    resp_reply *r = reply_ok("+OK\r\n", 5, 5);
    assert_int_equal(r->type, RESP_R_STATUS);
    assert_int_equal(r->len, 2);
    assert_string_equal(r->str, "OK");
    resp_reply_free(r);
    r = reply_ok("-ERR no such thing\r\n+OK\r\n", 25, 20);
    assert_int_equal(r->type, RESP_R_ERROR);
    assert_string_equal(r->str, "ERR no such thing");
    resp_reply_free(r);
    r = reply_ok("+\r\n", 3, 3);
    assert_int_equal(r->len, 0);
    assert_string_equal(r->str, "");
    resp_reply_free(r);
    r = reply_ok(":-9223372036854775808\r\n", 23, 23);
    assert_int_equal(r->type, RESP_R_INT);
    assert_true(r->integer == -9223372036854775807LL - 1);
    resp_reply_free(r);
    r = reply_ok(":42\r\n", 5, 5);
    assert_int_equal(r->integer, 42);
    resp_reply_free(r);
    r = reply_ok("$5\r\na\r\n\0b\r\n", 11, 11);
    assert_int_equal(r->type, RESP_R_BULK);
    assert_int_equal(r->len, 5);
    assert_memory_equal(r->str, "a\r\n\0b", 6); /* NUL-terminated */
    resp_reply_free(r);
    r = reply_ok("$0\r\n\r\n", 6, 6);
    assert_int_equal(r->type, RESP_R_BULK);
    assert_int_equal(r->len, 0);
    assert_string_equal(r->str, "");
    resp_reply_free(r);
    r = reply_ok("$-1\r\n", 5, 5);
    assert_int_equal(r->type, RESP_R_NIL);
    resp_reply_free(r);
    r = reply_ok("*-1\r\n", 5, 5);
    assert_int_equal(r->type, RESP_R_NIL);
    resp_reply_free(r);
    r = reply_ok("*0\r\n", 4, 4);
    assert_int_equal(r->type, RESP_R_ARRAY);
    assert_int_equal(r->elements, 0);
    resp_reply_free(r);
    const char *all[] = {"+OK\r\n", "-ERR x\r\n", ":-12\r\n", "$5\r\na\r\n\r\n\r\n", "$-1\r\n", "*-1\r\n", "*0\r\n"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) check_prefixes(all[i], strlen(all[i]));
    resp_reply_free(NULL);
}

static void test_reply_arrays(void **state)
{
    (void)state;
    const char *s = "*4\r\n$5\r\nfirst\r\n:1\r\n*2\r\n$-1\r\n*1\r\n+deep\r\n*0\r\n:9\r\n";
    size_t n = strlen(s);
    resp_reply *r = reply_ok(s, n, n - 4);
    assert_int_equal(r->type, RESP_R_ARRAY);
    assert_int_equal(r->elements, 4);
    assert_int_equal(r->element[0]->type, RESP_R_BULK);
    assert_string_equal(r->element[0]->str, "first");
    assert_int_equal(r->element[1]->integer, 1);
    resp_reply *a = r->element[2];
    assert_int_equal(a->type, RESP_R_ARRAY);
    assert_int_equal(a->elements, 2);
    assert_int_equal(a->element[0]->type, RESP_R_NIL);
    assert_int_equal(a->element[1]->type, RESP_R_ARRAY);
    assert_int_equal(a->element[1]->elements, 1);
    assert_int_equal(a->element[1]->element[0]->type, RESP_R_STATUS);
    assert_string_equal(a->element[1]->element[0]->str, "deep");
    assert_int_equal(r->element[3]->type, RESP_R_ARRAY);
    assert_int_equal(r->element[3]->elements, 0);
    resp_reply_free(r);
    check_prefixes(s, n - 4);
}

static void test_reply_depth(void **state)
{
    (void)state;
    buf b;
    buf_init(&b);
    for (int i = 0; i < RESP_REPLY_MAX_DEPTH; i++) buf_puts(&b, "*1\r\n");
    buf_puts(&b, ":7\r\n");
    resp_reply *r = reply_ok(b.data, b.len, b.len);
    resp_reply *x = r;
    for (int i = 0; i < RESP_REPLY_MAX_DEPTH; i++) {
        assert_int_equal(x->type, RESP_R_ARRAY);
        x = x->element[0];
    }
    assert_int_equal(x->integer, 7);
    resp_reply_free(r);
    check_prefixes(b.data, b.len);
    /* One level more is refused, even before the rest arrives. */
    buf_reset(&b);
    for (int i = 0; i <= RESP_REPLY_MAX_DEPTH; i++) buf_puts(&b, "*1\r\n");
    size_t used = 0;
    assert_int_equal(resp_reply_parse(b.data, b.len, &used, &r), RESP_ERROR);
    assert_null(r);
    buf_puts(&b, "*0\r\n");
    assert_int_equal(resp_reply_parse(b.data, b.len, &used, &r), RESP_ERROR);
    buf_free(&b);
}

static void test_reply_malformed(void **state)
{
    (void)state;
    const char *bad[] = {
        "?x\r\n",          "+OK\n",          "+O\rK\r\n",         "-E\n",        ":\r\n",      ":abc\r\n",
        ":1x\r\n",         ": 1\r\n",        ":01\r\n",           ":-0\r\n",     ":9223372036854775808\r\n",
        ":-9223372036854775809\r\n",         ":123456789012345678901",          "$-2\r\n",     "$x\r\n",
        "$\r\n",           "$1\r\nab\r\n",   "$2\r\nab\n\r",      "$2\n",        "*-2\r\n",    "*x\r\n",
        "*1\r\n?\r\n",     "*2\r\n:1\r\n$1\r\nab\r\n", "$99999999999999999999\r\n", "*1\r\n+a\n", "\r\n",
        "*1\r\n*1\r\n$-5\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        resp_reply *r = (resp_reply *)0x1;
        size_t used = 777;
        int st = resp_reply_parse(bad[i], strlen(bad[i]), &used, &r);
        if (st != RESP_ERROR) fail_msg("case %zu (%s): status %d", i, bad[i], st);
        assert_null(r);
        assert_int_equal(used, 777);
    }
}

/* Lengths a hostile server announces are only believed once the bytes exist. */
static void test_reply_hostile_lengths(void **state)
{
    (void)state;
    const char *more[] = {
        "$9223372036854775807\r\n",
        "$9223372036854775806\r\nab",
        "*9223372036854775807\r\n:1\r\n:2\r\n",
        "*1000000000\r\n*1000000000\r\n*1000000000\r\n",
        "+no end yet",
        ":12",
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        resp_reply *r = (resp_reply *)0x1;
        size_t used = 0;
        assert_int_equal(resp_reply_parse(more[i], strlen(more[i]), &used, &r), RESP_MORE);
        assert_null(r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multibulk),
        cmocka_unit_test(test_multibulk_binary_and_empty),
        cmocka_unit_test(test_inline),
        cmocka_unit_test(test_inline_zero_copy_in_place),
        cmocka_unit_test(test_skipped_requests),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_shift),
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_large_bulk_not_rescanned),
        cmocka_unit_test(test_inline_quoting),
        cmocka_unit_test(test_inline_unbalanced),
        cmocka_unit_test(test_limit_args),
        cmocka_unit_test(test_limit_bulk),
        cmocka_unit_test(test_limit_request),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_header_too_long),
        cmocka_unit_test(test_poisoned),
        cmocka_unit_test(test_random_streams),
        cmocka_unit_test(test_encoder),
        cmocka_unit_test(test_command_roundtrip),
        cmocka_unit_test(test_reply_scalars),
        cmocka_unit_test(test_reply_arrays),
        cmocka_unit_test(test_reply_depth),
        cmocka_unit_test(test_reply_malformed),
        cmocka_unit_test(test_reply_hostile_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
