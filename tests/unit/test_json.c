/* test_json: the strict, bounded JSON reader (src/json.c).
 *
 * Covers every value type, the tree and its accessors, each rule of the
 * strict grammar (a table of documents that must be refused, with the status
 * and the byte offset where reading stops), UTF-8 and \u escape handling,
 * each limit (bytes, depth, the depth cap, values), input that is not
 * NUL-terminated, large documents spanning many arena chunks, and running out
 * of memory (in a child process with a capped address space).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "json.h"

/* Parses a NUL-terminated document that must be valid. */
static json_doc *parse_ok(const char *text)
{
    json_doc *d = NULL;
    json_error e;
    int rc = json_parse(text, strlen(text), NULL, &d, &e);
    if (rc != JSON_OK) fprintf(stderr, "unexpected error for %s: %zu: %s\n", text, e.offset, e.msg);
    assert_int_equal(rc, JSON_OK);
    assert_non_null(d);
    assert_non_null(json_root(d));
    return d;
}

/* Parses text[0, len) that must be refused with status; returns the error. */
static json_error parse_bad_n(const char *text, size_t len, const json_limits *lim, int status)
{
    json_doc *d = (json_doc *)(uintptr_t)1;
    json_error e;
    int rc = json_parse(text, len, lim, &d, &e);
    if (rc != status)
        fprintf(stderr, "status %d (want %d) for '%.*s'\n", rc, status, (int)len, text);
    assert_int_equal(rc, status);
    assert_null(d);
    assert_true(e.msg[0] != '\0');
    assert_true(e.offset <= len);
    return e;
}

/* ---------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------- */

static void test_literals(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        json_type type;
    } cases[] = {{"null", JSON_NULL},           {"true", JSON_TRUE},   {"false", JSON_FALSE},
                 {" \t\r\nnull \n", JSON_NULL}, {"\"\"", JSON_STRING}, {"[]", JSON_ARRAY},
                 {"{}", JSON_OBJECT},           {" [ ] ", JSON_ARRAY}, {"{ }", JSON_OBJECT}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_doc *d = parse_ok(cases[i].text);
        const json_value *v = json_root(d);
        assert_int_equal(v->type, cases[i].type);
        assert_int_equal(v->count, 0);
        assert_null(v->child);
        assert_null(v->next);
        assert_null(v->key);
        json_free(d);
    }
}

static void test_numbers(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int is_int;
        int64_t integer;
        double number;
    } cases[] = {
        {"0", 1, 0, 0.0},
        {"-0", 1, 0, -0.0},
        {"42", 1, 42, 42.0},
        {"-17", 1, -17, -17.0},
        {"9223372036854775807", 1, INT64_MAX, 9223372036854775807.0},
        {"-9223372036854775808", 1, INT64_MIN, -9223372036854775808.0},
        {"9223372036854775808", 0, 0, 9223372036854775808.0}, /* too big for int64 */
        {"1.5", 0, 0, 1.5},
        {"-0.25", 0, 0, -0.25},
        {"1e3", 0, 0, 1000.0},
        {"1E+3", 0, 0, 1000.0},
        {"25e-1", 0, 0, 2.5},
        {"1.7976931348623157e308", 0, 0, 1.7976931348623157e308},
        {"1e-400", 0, 0, 0.0}, /* underflow reads as the nearest double */
        {"1795412345678", 1, 1795412345678LL, 1795412345678.0},
        /* longer than the stack copy: the heap path */
        {"100000000000000000000000000000000000000000000000000000000000000000000000", 0, 0, 1e71},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_doc *d = parse_ok(cases[i].text);
        const json_value *v = json_root(d);
        assert_int_equal(v->type, JSON_NUMBER);
        assert_int_equal(v->is_int, cases[i].is_int);
        if (cases[i].is_int) assert_true(v->integer == cases[i].integer);
        assert_true(v->number == cases[i].number);
        json_free(d);
    }
    json_doc *d = parse_ok("-0");
    assert_true(signbit(json_root(d)->number));
    json_free(d);
}

static void test_strings(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *want;
        size_t len;
    } cases[] = {
        {"\"abc\"", "abc", 3},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8},
        {"\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac", 6},
        {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4}, /* surrogate pair */
        {"\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf", 4}, /* U+10FFFF */
        {"\"a\\u0000b\"", "a\0b", 3},                  /* NUL inside */
        {"\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"",
         "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf", 19},
        {"\"\x7f\"", "\x7f", 1}, /* DEL is not a control character in JSON */
        {"\"'single' {[]}:,\"", "'single' {[]}:,", 15},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_doc *d = parse_ok(cases[i].text);
        const json_value *v = json_root(d);
        assert_int_equal(v->type, JSON_STRING);
        assert_int_equal(v->len, cases[i].len);
        assert_memory_equal(v->str, cases[i].want, cases[i].len);
        assert_int_equal(v->str[v->len], '\0');
        json_free(d);
    }
}

/* ---------------------------------------------------------------------------
 * Trees
 * ------------------------------------------------------------------------- */

static const char STATUS_DOC[] =
    "{\"cluster_id\": \"9f2c\", \"map_version\": 12, \"leader\": 1, \"term\": 3,\n"
    " \"coordinators\": [{\"id\": 1, \"address\": \"127.0.0.1:1982\", \"voter\": true,\n"
    "                   \"role\": \"leader\", \"match_index\": 40, \"reachable\": true},\n"
    "                  {\"id\": 2, \"address\": \"127.0.0.1:1983\", \"voter\": false,\n"
    "                   \"role\": \"learner\", \"match_index\": 0, \"reachable\": false}],\n"
    " \"daemons\": [],\n"
    " \"spaces\": [{\"name\": \"phonebook\", \"partitions\": 8,\n"
    "             \"health\": {\"PROTECTED\": 0, \"DEGRADED\": 8, \"UNAVAILABLE\": 0}}],\n"
    " \"settings\": {\"heartbeat_ms\": 250, \"ratio\": 0.5, \"note\": null}}";

static void test_tree(void **state)
{
    (void)state;
    json_doc *d = parse_ok(STATUS_DOC);
    const json_value *root = json_root(d);
    assert_int_equal(root->type, JSON_OBJECT);
    assert_int_equal(root->count, 8);
    /* Members in document order, each with its name. */
    static const char *const names[] = {"cluster_id", "map_version",  "leader",
                                        "term",       "coordinators", "daemons",
                                        "spaces",     "settings",     NULL};
    size_t i = 0;
    for (const json_value *m = root->child; m; m = m->next, i++) {
        assert_non_null(names[i]);
        assert_string_equal(m->key, names[i]);
        assert_int_equal(m->key_len, strlen(names[i]));
    }
    assert_int_equal(i, root->count);
    const json_value *cid = json_get(root, "cluster_id");
    assert_non_null(cid);
    assert_int_equal(cid->type, JSON_STRING);
    assert_string_equal(cid->str, "9f2c");
    assert_true(json_get(root, "term")->is_int);
    assert_int_equal(json_get(root, "term")->integer, 3);

    const json_value *coords = json_get(root, "coordinators");
    assert_int_equal(coords->type, JSON_ARRAY);
    assert_int_equal(coords->count, 2);
    const json_value *c2 = json_at(coords, 1);
    assert_non_null(c2);
    assert_null(c2->key); /* elements have no name */
    assert_int_equal(json_get(c2, "id")->integer, 2);
    assert_int_equal(json_get(c2, "voter")->type, JSON_FALSE);
    assert_string_equal(json_get(c2, "role")->str, "learner");
    assert_int_equal(json_get(json_at(coords, 0), "reachable")->type, JSON_TRUE);
    assert_null(json_at(coords, 2));

    const json_value *daemons = json_get(root, "daemons");
    assert_int_equal(daemons->type, JSON_ARRAY);
    assert_int_equal(daemons->count, 0);
    assert_null(json_at(daemons, 0));

    const json_value *h = json_get(json_at(json_get(root, "spaces"), 0), "health");
    assert_int_equal(json_get(h, "DEGRADED")->integer, 8);
    const json_value *settings = json_get(root, "settings");
    assert_true(json_get(settings, "ratio")->number == 0.5);
    assert_false(json_get(settings, "ratio")->is_int);
    assert_int_equal(json_get(settings, "note")->type, JSON_NULL);

    /* Lookups that find nothing. */
    assert_null(json_get(root, "missing"));
    assert_null(json_get(root, "cluster"));      /* a prefix of a name */
    assert_null(json_get(root, "cluster_id_x")); /* longer than a name */
    assert_null(json_get(coords, "id"));         /* not an object */
    assert_null(json_at(root, 0));               /* not an array */
    assert_null(json_get(NULL, "x"));
    assert_null(json_get(root, NULL));
    assert_null(json_at(NULL, 0));
    json_free(d);
}

static void test_duplicates_and_odd_names(void **state)
{
    (void)state;
    json_doc *d = parse_ok("{\"a\": 1, \"a\": 2, \"\": 3, \"x\\u0000y\": 4, \"\\u00e9\": 5}");
    const json_value *root = json_root(d);
    assert_int_equal(root->count, 5);
    /* Duplicates are kept; json_get returns the first. */
    assert_int_equal(json_get(root, "a")->integer, 1);
    assert_int_equal(root->child->next->integer, 2);
    assert_int_equal(json_get(root, "")->integer, 3);
    /* A name holding a NUL matches no C string. */
    assert_null(json_get(root, "x"));
    const json_value *m = json_at(root, 0);
    assert_null(m); /* json_at is for arrays */
    m = root->child->next->next->next;
    assert_int_equal(m->key_len, 3);
    assert_memory_equal(m->key, "x\0y", 3);
    assert_int_equal(json_get(root, "\xc3\xa9")->integer, 5);
    json_free(d);
}

static void test_not_nul_terminated(void **state)
{
    (void)state;
    /* Only the first len bytes are read; what follows is not looked at. */
    static const char buf[] = "[1,2]garbage";
    json_doc *d = NULL;
    assert_int_equal(json_parse(buf, 5, NULL, &d, NULL), JSON_OK);
    assert_int_equal(json_root(d)->count, 2);
    json_free(d);
    /* A document cut short ends at len, even if the next bytes would close it. */
    json_error e = parse_bad_n("[1,2]", 4, NULL, JSON_ESYNTAX);
    assert_int_equal(e.offset, 4);
    e = parse_bad_n("\"abc\"", 4, NULL, JSON_ESYNTAX);
    assert_non_null(strstr(e.msg, "unterminated"));
    e = parse_bad_n("12", 0, NULL, JSON_ESYNTAX);
    assert_int_equal(e.offset, 0);
    /* A number cut short is still a number, the rest is not read. */
    assert_int_equal(json_parse("123", 2, NULL, &d, NULL), JSON_OK);
    assert_int_equal(json_root(d)->integer, 12);
    json_free(d);
}

static void test_large(void **state)
{
    (void)state;
    /* 200000 elements and a 300 KB string: many arena chunks, one bigger
     * than a chunk. */
    enum { N = 200000, S = 300 * 1024 };
    size_t cap = (size_t)N * 8 + S + 64;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t n = 0;
    text[n++] = '[';
    for (int i = 0; i < N; i++)
        n += (size_t)snprintf(text + n, cap - n, "%d,", i);
    text[n++] = '"';
    for (int i = 0; i < S; i++)
        text[n++] = (char)('a' + i % 26);
    text[n++] = '"';
    text[n++] = ']';
    json_doc *d = NULL;
    assert_int_equal(json_parse(text, n, NULL, &d, NULL), JSON_OK);
    const json_value *root = json_root(d);
    assert_int_equal(root->count, N + 1);
    int64_t want = 0;
    const json_value *e = root->child;
    for (; e && e->type == JSON_NUMBER; e = e->next)
        assert_true(e->integer == want++);
    assert_int_equal(want, N);
    assert_non_null(e);
    assert_int_equal(e->type, JSON_STRING);
    assert_int_equal(e->len, S);
    assert_int_equal(e->str[S - 1], 'a' + (S - 1) % 26);
    assert_null(e->next);
    json_free(d);
    free(text);
}

/* ---------------------------------------------------------------------------
 * Refusals
 * ------------------------------------------------------------------------- */

static void test_syntax_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t offset;   /* where reading stops */
        const char *msg; /* a part of the message */
    } cases[] = {
        {"", 0, "expected a value, got end of input"},
        {"   ", 3, "end of input"},
        {"nul", 0, "expected 'null'"},
        {"tru", 0, "expected 'true'"},
        {"falsy", 0, "expected 'false'"},
        {"True", 0, "expected a value, got 'T'"},
        {"NaN", 0, "expected a value"},
        {"Infinity", 0, "expected a value"},
        {"-Infinity", 1, "expected a digit"},
        {"01", 1, "leading zero"},
        {"-01", 2, "leading zero"},
        {"+1", 0, "expected a value, got '+'"},
        {".5", 0, "expected a value"},
        {"1.", 2, "after '.'"},
        {"1.e3", 2, "after '.'"},
        {"1e", 2, "exponent"},
        {"1e+", 3, "exponent"},
        {"-", 1, "expected a digit"},
        {"0x10", 1, "after the document"},
        {"1e400", 0, "out of range"},
        {"-1e400", 0, "out of range"},
        {"1 2", 2, "unexpected '2' after the document"},
        {"{} x", 3, "after the document"},
        {"[1]]", 3, "after the document"},
        {"[1,]", 3, "expected a value, got ']'"},
        {"[,1]", 1, "expected a value, got ','"},
        {"[1 2]", 3, "expected ',' or ']'"},
        {"[1,2", 4, "expected ',' or ']' in an array, got end of input"},
        {"[", 1, "end of input"},
        {"{\"a\":1,}", 7, "member name"},
        {"{a:1}", 1, "member name in quotes, got 'a'"},
        {"{'a':1}", 1, "member name"},
        {"{\"a\" 1}", 5, "expected ':'"},
        {"{\"a\":}", 5, "expected a value"},
        {"{\"a\":", 5, "end of input"},
        {"{\"a\":1 \"b\":2}", 7, "expected ',' or '}'"},
        {"{\"a\":1", 6, "end of input"},
        {"'a'", 0, "expected a value, got '''"},
        {"\"abc", 4, "unterminated string"},
        {"\"abc\\\"", 6, "unterminated string"},
        {"\"a\\x\"", 2, "bad escape"},
        {"\"a\\'\"", 2, "bad escape"},
        {"\"\\u12\"", 1, "4 hex digits"},
        {"\"\\u12g4\"", 1, "4 hex digits"},
        {"\"\\ud800\"", 1, "high surrogate"},
        {"\"\\ud800\\u0041\"", 1, "high surrogate"},
        {"\"\\ud800\\ud800\"", 1, "high surrogate"},
        {"\"\\ud800\\ue000\"", 1, "high surrogate"},
        {"\"\\ud800x\"", 1, "high surrogate"},
        {"\"\\udc00\"", 1, "lone low surrogate"},
        {"\"a\tb\"", 2, "control character 0x09"},
        {"\"a\nb\"", 2, "control character 0x0a"},
        {"\"a\x1f\"", 2, "control character 0x1f"},
        {"\"\xc0\xaf\"", 1, "invalid UTF-8"},         /* overlong '/' */
        {"\"\xe0\x80\xaf\"", 1, "invalid UTF-8"},     /* overlong, 3 bytes */
        {"\"\xf0\x8f\xbf\xbf\"", 1, "invalid UTF-8"}, /* overlong, 4 bytes */
        {"\"\xed\xa0\x80\"", 1, "invalid UTF-8"},     /* UTF-8 encoded surrogate */
        {"\"\xf4\x90\x80\x80\"", 1, "invalid UTF-8"}, /* above U+10FFFF */
        {"\"\xf5\x80\x80\x80\"", 1, "invalid UTF-8"},
        {"\"ab\xe2\x82\"", 3, "invalid UTF-8"}, /* truncated */
        {"\"\x80\"", 1, "invalid UTF-8"},       /* lone continuation */
        {"\"\xff\"", 1, "invalid UTF-8"},
        {"\xef\xbb\xbf{}", 0, "byte 0xef"}, /* byte order mark */
        {"/* c */ 1", 0, "got '/'"},
        {"[1] // c", 4, "after the document"},
        {"{\"a\":1}\x01", 7, "byte 0x01"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_error e = parse_bad_n(cases[i].text, strlen(cases[i].text), NULL, JSON_ESYNTAX);
        if (e.offset != cases[i].offset || !strstr(e.msg, cases[i].msg))
            fprintf(stderr, "case '%s': got offset %zu '%s'\n", cases[i].text, e.offset, e.msg);
        assert_int_equal(e.offset, cases[i].offset);
        assert_non_null(strstr(e.msg, cases[i].msg));
    }
    /* A NUL byte outside and inside a string. */
    json_error e = parse_bad_n("[1,\0]", 5, NULL, JSON_ESYNTAX);
    assert_int_equal(e.offset, 3);
    assert_non_null(strstr(e.msg, "byte 0x00"));
    e = parse_bad_n("\"a\0\"", 4, NULL, JSON_ESYNTAX);
    assert_int_equal(e.offset, 2);
    assert_non_null(strstr(e.msg, "control character 0x00"));
}

static void test_bad_arguments(void **state)
{
    (void)state;
    json_error e;
    assert_int_equal(json_parse("1", 1, NULL, NULL, &e), JSON_ESYNTAX);
    assert_true(e.msg[0] != '\0');
    json_doc *d = (json_doc *)(uintptr_t)1;
    assert_int_equal(json_parse(NULL, 3, NULL, &d, NULL), JSON_ESYNTAX);
    assert_null(d);
    /* NULL with length 0 is the empty document: not JSON. */
    assert_int_equal(json_parse(NULL, 0, NULL, &d, &e), JSON_ESYNTAX);
    assert_non_null(strstr(e.msg, "end of input"));
    json_free(NULL);
    assert_null(json_root(NULL));
    assert_string_equal(json_type_name(JSON_OBJECT), "object");
    assert_string_equal(json_type_name(JSON_NULL), "null");
    assert_string_equal(json_type_name((json_type)0), "?");
    assert_string_equal(json_type_name((json_type)99), "?");
}

/* ---------------------------------------------------------------------------
 * Limits
 * ------------------------------------------------------------------------- */

/* n '[' then n ']'. Caller frees. */
static char *nested(size_t n)
{
    char *s = malloc(2 * n + 1);
    assert_non_null(s);
    memset(s, '[', n);
    memset(s + n, ']', n);
    s[2 * n] = '\0';
    return s;
}

static void test_limit_depth(void **state)
{
    (void)state;
    char *s = nested(JSON_DEFAULT_MAX_DEPTH);
    json_doc *d = parse_ok(s);
    json_free(d);
    free(s);

    s = nested(JSON_DEFAULT_MAX_DEPTH + 1);
    json_error e = parse_bad_n(s, strlen(s), NULL, JSON_ELIMIT);
    assert_int_equal(e.offset, JSON_DEFAULT_MAX_DEPTH);
    assert_non_null(strstr(e.msg, "nested deeper than 64"));
    free(s);

    /* Objects count too; a custom limit. */
    json_limits lim = {.max_depth = 2};
    assert_int_equal(json_parse("{\"a\":[1]}", 9, &lim, &d, NULL), JSON_OK);
    json_free(d);
    e = parse_bad_n("{\"a\":[{}]}", 10, &lim, JSON_ELIMIT);
    assert_int_equal(e.offset, 6);
    /* Scalars do not nest. */
    lim.max_depth = 1;
    assert_int_equal(json_parse("[1,\"x\",null]", 12, &lim, &d, NULL), JSON_OK);
    json_free(d);

    /* However deep the caller allows, the stack stays bounded by the cap. */
    lim.max_depth = 1000000;
    s = nested(JSON_DEPTH_CAP);
    assert_int_equal(json_parse(s, strlen(s), &lim, &d, NULL), JSON_OK);
    json_free(d);
    free(s);
    s = nested(200000);
    e = parse_bad_n(s, strlen(s), &lim, JSON_ELIMIT);
    assert_int_equal(e.offset, JSON_DEPTH_CAP);
    free(s);
}

static void test_limit_nodes_and_bytes(void **state)
{
    (void)state;
    json_limits lim = {.max_nodes = 4};
    json_doc *d = NULL;
    /* The array and three elements: four values. */
    assert_int_equal(json_parse("[1,2,3]", 7, &lim, &d, NULL), JSON_OK);
    json_free(d);
    json_error e = parse_bad_n("[1,2,3,4]", 9, &lim, JSON_ELIMIT);
    assert_int_equal(e.offset, 7);
    assert_non_null(strstr(e.msg, "more than 4 values"));
    /* Member values count, names do not. */
    assert_int_equal(json_parse("{\"a\":1,\"b\":2,\"c\":3}", 19, &lim, &d, NULL), JSON_OK);
    json_free(d);
    e = parse_bad_n("{\"a\":{\"b\":{\"c\":{\"d\":1}}}}", 25, &lim, JSON_ELIMIT);

    json_limits small = {.max_bytes = 8};
    assert_int_equal(json_parse("[1,2,34]", 8, &small, &d, NULL), JSON_OK);
    json_free(d);
    e = parse_bad_n("[1,2,345]", 9, &small, JSON_ELIMIT);
    assert_int_equal(e.offset, 0);
    assert_non_null(strstr(e.msg, "9 bytes, more than the limit of 8"));
}

/* Runs out of memory in a child whose address space is capped just above
 * what it uses: the parser must report JSON_ENOMEM, not crash. The sanitizers
 * reserve their own huge mappings, so this test runs only without them. */
#if defined(__SANITIZE_ADDRESS__)
#define NO_RLIMIT_TEST 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NO_RLIMIT_TEST 1
#endif
#endif

static void test_out_of_memory(void **state)
{
    (void)state;
#ifdef NO_RLIMIT_TEST
    skip();
#else
    /* A million small values need ~100 MB of tree; the child gets 24 MB. */
    enum { N = 1000000 };
    size_t cap = (size_t)N * 2 + 2;
    char *text = malloc(cap);
    assert_non_null(text);
    text[0] = '[';
    for (size_t i = 0; i < N; i++) {
        text[1 + 2 * i] = '0';
        text[2 + 2 * i] = i + 1 < N ? ',' : ']';
    }
    size_t len = (size_t)N * 2 + 1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        long pages = 0, page = sysconf(_SC_PAGESIZE);
        FILE *f = fopen("/proc/self/statm", "r");
        if (!f || fscanf(f, "%ld", &pages) != 1) _exit(10);
        fclose(f);
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max = (rlim_t)pages * (rlim_t)page + 24u * 1024 * 1024;
        if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(11);
        json_doc *d = (json_doc *)(uintptr_t)1;
        json_error e;
        int rc = json_parse(text, len, NULL, &d, &e);
        if (rc != JSON_ENOMEM) _exit(12);
        if (d != NULL || strcmp(e.msg, "out of memory") != 0) _exit(13);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* With memory to spare the same document parses. */
    json_doc *d = NULL;
    assert_int_equal(json_parse(text, len, NULL, &d, NULL), JSON_OK);
    assert_int_equal(json_root(d)->count, N);
    json_free(d);
    free(text);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literals),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_tree),
        cmocka_unit_test(test_duplicates_and_odd_names),
        cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_large),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_limit_depth),
        cmocka_unit_test(test_limit_nodes_and_bytes),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
