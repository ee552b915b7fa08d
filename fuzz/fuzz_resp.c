/* fuzz_resp: libFuzzer target for the RESP2 codec (src/resp.c).
 *
 * Request parser: the input (after a control byte) is fed to resp_parse
 * whole, in two pieces cut where the control byte says, and (for short
 * inputs) one byte at a time, with small limits and, depending on a control
 * bit, compaction plus resp_parser_shift after every piece. Every feeding must
 * return the same requests and the same final status and error text
 * (invariant 3 of resp.c). Invariants checked with abort(): every argument
 * lies inside the consumed part of the buffer, consumed never goes backwards,
 * 1 <= argc <= max_args, every argument <= max_bulk, a poisoned parser stays
 * poisoned, and every request re-encoded with resp_add_command parses back to
 * the same arguments.
 *
 * Reply parser: the input is parsed as a sequence of replies; each result is
 * freed; used must be within the input, and the prefix just short of a
 * complete reply must be RESP_MORE.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "resp.h"

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_resp: invariant broken: %s\n", what);
        abort();
    }
}

/* Parses one encoded request with a fresh parser and compares it to req. */
static void check_roundtrip(const resp_request *req, const resp_limits *lim)
{
    buf enc;
    buf_init(&enc);
    resp_add_command(&enc, (int)req->argc, (const char *const *)req->argv, req->argvlen);
    resp_limits big = *lim;
    big.max_request = enc.len; /* the encoding may be longer than the inline form */
    resp_parser p;
    resp_request back;
    resp_parser_init(&p, &big);
    check(resp_parse(&p, enc.data, enc.len, &back) == RESP_OK, "roundtrip parses");
    check(back.argc == req->argc, "roundtrip argc");
    for (size_t i = 0; i < back.argc; i++) {
        check(back.argvlen[i] == req->argvlen[i], "roundtrip arg length");
        check(memcmp(back.argv[i], req->argv[i], back.argvlen[i]) == 0, "roundtrip arg bytes");
    }
    check(resp_parser_consumed(&p) == enc.len, "roundtrip consumed");
    resp_parser_free(&p);
    buf_free(&enc);
}

/* Feeds in[0, n) in pieces ending at cuts[] and logs what comes out. */
static void run(const char *in, size_t n, const resp_limits *lim, const size_t *cuts, size_t ncuts, int compact,
                int roundtrip, buf *log)
{
    resp_parser p;
    buf b;
    buf_init(&b);
    resp_parser_init(&p, lim);
    size_t fed = 0, shifted = 0, last = 0;
    int st = RESP_MORE;
    for (size_t c = 0; c <= ncuts && st != RESP_ERROR; c++) {
        size_t end = c < ncuts ? cuts[c] : n;
        if (end < fed || end > n) continue;
        buf_append(&b, in + fed, end - fed);
        fed = end;
        if (b.len == 0) continue;
        for (;;) {
            resp_request req;
            st = resp_parse(&p, b.data, b.len, &req);
            size_t consumed = resp_parser_consumed(&p);
            check(consumed <= b.len, "consumed within buffer");
            check(consumed + shifted >= last, "consumed never decreases");
            last = consumed + shifted;
            if (st != RESP_OK) break;
            check(req.argc >= 1 && req.argc <= lim->max_args, "1 <= argc <= max_args");
            buf_append(log, &req.argc, sizeof req.argc);
            for (size_t i = 0; i < req.argc; i++) {
                check(req.argv[i] >= b.data && req.argvlen[i] <= consumed &&
                          req.argv[i] + req.argvlen[i] <= b.data + consumed,
                      "argument inside the consumed buffer");
                check(req.argvlen[i] <= lim->max_bulk, "argument <= max_bulk");
                buf_append(log, &req.argvlen[i], sizeof req.argvlen[i]);
                buf_append(log, req.argv[i], req.argvlen[i]);
            }
            if (roundtrip) check_roundtrip(&req, lim);
        }
        check(st == RESP_MORE || st == RESP_ERROR, "status is MORE or ERROR");
        if (compact && st == RESP_MORE) {
            size_t k = resp_parser_consumed(&p);
            buf_consume(&b, k);
            resp_parser_shift(&p, k);
            shifted += k;
        }
    }
    if (st == RESP_ERROR) {
        check(strncmp(p.err, "ERR ", 4) == 0, "error text starts with ERR");
        check(strchr(p.err, '\r') == NULL && strchr(p.err, '\n') == NULL, "error text is one line");
        buf_puts(log, "ERROR ");
        buf_puts(log, p.err);
        resp_request req;
        buf_append(&b, "*1\r\n$4\r\nPING\r\n", 14);
        check(resp_parse(&p, b.data, b.len, &req) == RESP_ERROR, "poisoned parser stays poisoned");
    } else {
        buf_puts(log, "MORE");
    }
    size_t total = resp_parser_consumed(&p) + shifted;
    buf_append(log, &total, sizeof total);
    resp_parser_free(&p);
    buf_free(&b);
}

static void fuzz_requests(const uint8_t *data, size_t size)
{
    uint8_t ctl = data[0];
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    resp_limits lim = {.max_request = 256, .max_args = 8, .max_bulk = 64};
    if (ctl & 0x80) lim = (resp_limits){.max_request = 1u << 20, .max_args = 64, .max_bulk = 1u << 16};
    int compact = (ctl & 0x40) != 0;

    buf whole, split, bytes;
    buf_init(&whole);
    buf_init(&split);
    buf_init(&bytes);
    run(in, n, &lim, NULL, 0, 0, 1, &whole);

    size_t cut = n ? (size_t)(ctl & 0x3f) * n / 0x3f : 0;
    run(in, n, &lim, &cut, 1, compact, 0, &split);
    check(split.len == whole.len && memcmp(split.data, whole.data, whole.len) == 0, "split feeding agrees");

    if (n <= 512) {
        size_t cuts[512];
        for (size_t i = 0; i < n; i++) cuts[i] = i + 1;
        run(in, n, &lim, cuts, n, !compact, 0, &bytes);
        check(bytes.len == whole.len && memcmp(bytes.data, whole.data, whole.len) == 0, "byte feeding agrees");
    }
    buf_free(&whole);
    buf_free(&split);
    buf_free(&bytes);
}

static void fuzz_replies(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    size_t pos = 0;
    while (pos < size) {
        resp_reply *r = NULL;
        size_t used = 0;
        int st = resp_reply_parse(in + pos, size - pos, &used, &r);
        if (st != RESP_OK) {
            check(r == NULL, "no reply on MORE/ERROR");
            break;
        }
        check(r != NULL && used >= 3 && used <= size - pos, "used within input");
        resp_reply *again = NULL;
        size_t used2 = 0;
        check(resp_reply_parse(in + pos, used - 1, &used2, &again) == RESP_MORE && again == NULL,
              "prefix of a reply is MORE");
        resp_reply_free(r);
        pos += used;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    fuzz_requests(data, size);
    fuzz_replies(data, size);
    return 0;
}
