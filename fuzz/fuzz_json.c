/* fuzz_json: libFuzzer target for the JSON reader (src/json.c).
 *
 * The input (after a control byte choosing small or default limits) is
 * parsed twice; both runs must agree on the status, the error offset and
 * message. On an error, the offset lies within the input and the message is
 * one non-empty line. On success the tree is checked with abort():
 *   - every container's count equals the length of its child list; object
 *     members have names, array elements and the root do not;
 *   - nesting stays within max_depth and the values within max_nodes;
 *   - every string and name is NUL-terminated at its length and, NULs from
 *     \u0000 aside, valid UTF-8;
 *   - an integer number's double agrees with its integer;
 * and the tree is written back as JSON, parsed again and compared: same
 * shape, same names, same strings, same numbers (the round trip).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "json.h"

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_json: invariant broken: %s\n", what);
        abort();
    }
}

/* True if s[0, n) is UTF-8 with NUL bytes allowed. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < k) return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += k;
    }
    return 1;
}

/* Checks the tree under v; returns the number of values in it. */
static size_t walk(const json_value *v, size_t depth, const json_limits *lim, int member)
{
    check(member ? v->key != NULL : v->key == NULL, "names exactly on object members");
    if (v->key) {
        check(v->key[v->key_len] == '\0', "name NUL-terminated");
        check(valid_utf8((const unsigned char *)v->key, v->key_len), "name is UTF-8");
    }
    size_t nodes = 1;
    switch (v->type) {
    case JSON_NULL:
    case JSON_TRUE:
    case JSON_FALSE:
        check(v->count == 0 && v->child == NULL && v->str == NULL, "literal is a leaf");
        break;
    case JSON_NUMBER:
        check(v->count == 0 && v->child == NULL && v->str == NULL, "number is a leaf");
        if (v->is_int) check(v->number == (double)v->integer, "integer agrees with double");
        break;
    case JSON_STRING:
        check(v->str != NULL && v->str[v->len] == '\0', "string NUL-terminated");
        check(valid_utf8((const unsigned char *)v->str, v->len), "string is UTF-8");
        check(v->count == 0 && v->child == NULL, "string is a leaf");
        break;
    case JSON_ARRAY:
    case JSON_OBJECT: {
        check(depth < lim->max_depth, "depth within max_depth");
        size_t n = 0;
        for (const json_value *c = v->child; c; c = c->next, n++)
            nodes += walk(c, depth + 1, lim, v->type == JSON_OBJECT);
        check(n == v->count, "count equals the child list");
        break;
    }
    default:
        check(0, "known type");
    }
    return nodes;
}

static void put_string(buf *b, const char *s, size_t n)
{
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            buf_printf(b, "\\%c", c);
        else if (c < 0x20)
            buf_printf(b, "\\u%04x", c);
        else
            buf_putc(b, (char)c);
    }
    buf_putc(b, '"');
}

/* Writes v as JSON. Non-integers get an exponent so they read back as
 * non-integers. */
static void write_value(buf *b, const json_value *v)
{
    switch (v->type) {
    case JSON_NULL:
        buf_puts(b, "null");
        break;
    case JSON_TRUE:
        buf_puts(b, "true");
        break;
    case JSON_FALSE:
        buf_puts(b, "false");
        break;
    case JSON_NUMBER:
        if (v->is_int)
            buf_printf(b, "%" PRId64, v->integer);
        else
            buf_printf(b, "%.17e", v->number);
        break;
    case JSON_STRING:
        put_string(b, v->str, v->len);
        break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        buf_putc(b, v->type == JSON_ARRAY ? '[' : '{');
        for (const json_value *c = v->child; c; c = c->next) {
            if (c != v->child) buf_putc(b, ',');
            if (v->type == JSON_OBJECT) {
                put_string(b, c->key, c->key_len);
                buf_putc(b, ':');
            }
            write_value(b, c);
        }
        buf_putc(b, v->type == JSON_ARRAY ? ']' : '}');
        break;
    }
}

static void same(const json_value *a, const json_value *b)
{
    check(a->type == b->type, "round trip: type");
    check(a->key_len == b->key_len && (!a->key || memcmp(a->key, b->key, a->key_len) == 0),
          "round trip: name");
    switch (a->type) {
    case JSON_NUMBER:
        check(a->is_int == b->is_int, "round trip: is_int");
        check(a->is_int ? a->integer == b->integer : a->number == b->number, "round trip: number");
        break;
    case JSON_STRING:
        check(a->len == b->len && memcmp(a->str, b->str, a->len) == 0, "round trip: string");
        break;
    case JSON_ARRAY:
    case JSON_OBJECT: {
        check(a->count == b->count, "round trip: count");
        const json_value *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next)
            same(x, y);
        check(!x && !y, "round trip: children");
        break;
    }
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    json_limits lim = {.max_bytes = 1u << 20, .max_depth = 16, .max_nodes = 512};
    if (data[0] & 1)
        lim = (json_limits){JSON_DEFAULT_MAX_BYTES, JSON_DEFAULT_MAX_DEPTH, JSON_DEFAULT_MAX_NODES};
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    json_doc *d1 = NULL, *d2 = NULL;
    json_error e1, e2;
    int rc1 = json_parse(text, len, &lim, &d1, &e1);
    int rc2 = json_parse(text, len, &lim, &d2, &e2);
    check(rc1 == rc2, "deterministic status");
    if (rc1 != JSON_OK) {
        check(rc1 == JSON_ESYNTAX || rc1 == JSON_ELIMIT || rc1 == JSON_ENOMEM, "known status");
        check(d1 == NULL && d2 == NULL, "no document on error");
        check(e1.offset == e2.offset && strcmp(e1.msg, e2.msg) == 0, "deterministic error");
        check(e1.offset <= len, "error offset within the input");
        check(e1.msg[0] && !strchr(e1.msg, '\n'), "error message is one line");
        return 0;
    }
    const json_value *root = json_root(d1);
    check(root != NULL, "root");
    size_t nodes = walk(root, 0, &lim, 0);
    check(nodes <= lim.max_nodes, "values within max_nodes");

    buf out;
    buf_init(&out);
    write_value(&out, root);
    json_doc *d3 = NULL;
    json_error e3;
    json_limits big = lim;
    big.max_bytes = out.len ? out.len : 1;
    int rc3 = json_parse(out.data, out.len, &big, &d3, &e3);
    if (rc3 != JSON_OK) fprintf(stderr, "reparse: %zu: %s\n", e3.offset, e3.msg);
    check(rc3 == JSON_OK, "round trip parses");
    same(root, json_root(d3));
    json_free(d3);
    buf_free(&out);
    json_free(d1);
    json_free(d2);
    return 0;
}
