/* Unit tests for src/obj.c: the object encoding (round trips, truncation,
 * malformed input), value parsing and formatting, comparison, and the
 * order-preserving index keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "obj.h"

/* A schema with every type: string s, int i, float f, string t. */
static space_schema *mk_schema(void)
{
    space_schema *s = NULL;
    char err[128];
    const char *text = "space t key k attributes s, int i, float f, string t";
    if (space_parse(text, strlen(text), &s, err, sizeof err)) fail_msg("%s", err);
    return s;
}

static obj_value sval(const char *p, size_t len)
{
    obj_value v = {.type = SPACE_STRING};
    v.u.s.p = p;
    v.u.s.len = len;
    return v;
}

static obj_value ival(int64_t i)
{
    obj_value v = {.type = SPACE_INT};
    v.u.i = i;
    return v;
}

static obj_value fval(double f)
{
    obj_value v = {.type = SPACE_FLOAT};
    v.u.f = f;
    return v;
}

static uint64_t bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static void assert_value_equal(const obj_value *a, const obj_value *b)
{
    assert_int_equal(a->type, b->type);
    switch (a->type) {
    case SPACE_STRING:
        assert_int_equal(a->u.s.len, b->u.s.len);
        if (a->u.s.len) assert_memory_equal(a->u.s.p, b->u.s.p, a->u.s.len);
        break;
    case SPACE_INT:
        assert_int_equal(a->u.i, b->u.i);
        break;
    case SPACE_FLOAT:
        assert_int_equal(bits(a->u.f), bits(b->u.f));
        break;
    }
}

/* ---- encoding ----------------------------------------------------------- */

static void roundtrip(const space_schema *s, const obj_value *vals)
{
    buf b;
    buf_init(&b);
    obj_encode(s, vals, &b);
    obj_value out[4];
    assert_int_equal(obj_decode(s, b.data, b.len, out), 0);
    for (uint32_t i = 0; i < s->nattrs; i++)
        assert_value_equal(&vals[i], &out[i]);
    /* Zero copy: strings point into the encoded buffer. */
    assert_true(out[0].u.s.p >= b.data && out[0].u.s.p <= b.data + b.len);
    /* Canonical: re-encoding the decoded values gives the same bytes. */
    buf b2;
    buf_init(&b2);
    obj_encode(s, out, &b2);
    assert_int_equal(b.len, b2.len);
    assert_memory_equal(b.data, b2.data, b.len);
    buf_free(&b2);
    buf_free(&b);
}

static void test_encode_roundtrip(void **state)
{
    (void)state;
    space_schema *s = mk_schema();
    obj_value vals[4];
    obj_zero(s, vals);
    assert_int_equal(vals[0].type, SPACE_STRING);
    assert_int_equal(vals[0].u.s.len, 0);
    assert_int_equal(vals[1].type, SPACE_INT);
    assert_int_equal(vals[1].u.i, 0);
    assert_int_equal(vals[2].type, SPACE_FLOAT);
    assert_int_equal(bits(vals[2].u.f), 0);
    assert_int_equal(vals[3].type, SPACE_STRING);
    roundtrip(s, vals);

    /* Exact layout of the zero object. */
    buf b;
    buf_init(&b);
    obj_encode(s, vals, &b);
    const unsigned char want[] = {1, 0, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                                  0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    buf_free(&b);

    static const char binary[] = {'a', 0, 'b', (char)0xff, 0, 0};
    vals[0] = sval(binary, sizeof binary);
    vals[1] = ival(INT64_MIN);
    vals[2] = fval(-0.0);
    vals[3] = sval("hello", 5);
    roundtrip(s, vals);
    vals[1] = ival(INT64_MAX);
    vals[2] = fval(5e-324);
    roundtrip(s, vals);
    vals[1] = ival(-1);
    vals[2] = fval(-1.7976931348623157e308);
    roundtrip(s, vals);
    space_free(s);
}

static void encode_sample(const space_schema *s, buf *b)
{
    obj_value vals[4] = {sval("abc", 3), ival(-42), fval(2.5), sval("", 0)};
    buf_init(b);
    obj_encode(s, vals, b);
}

static void test_decode_truncated(void **state)
{
    (void)state;
    space_schema *s = mk_schema();
    buf b;
    encode_sample(s, &b);
    obj_value out[4];
    assert_int_equal(obj_decode(s, b.data, b.len, out), 0);
    for (size_t n = 0; n < b.len; n++) {
        char *p = malloc(n ? n : 1); /* exact size: ASan catches over-reads */
        memcpy(p, b.data, n);
        assert_int_equal(obj_decode(s, p, n, out), -1);
        free(p);
    }
    assert_int_equal(obj_decode(s, NULL, 0, out), -1);
    buf_free(&b);
    space_free(s);
}

static int decode_patched(const space_schema *s, const buf *b, size_t at, unsigned char val)
{
    char *p = malloc(b->len);
    memcpy(p, b->data, b->len);
    p[at] = (char)val;
    obj_value out[4];
    int rc = obj_decode(s, p, b->len, out);
    free(p);
    return rc;
}

static void test_decode_malformed(void **state)
{
    (void)state;
    space_schema *s = mk_schema();
    buf b;
    encode_sample(s, &b);
    /* Layout: 0 ver | 1 count(2) | 3 type 4 len(4) 8 "abc" | 11 type 12 int(8)
     * | 20 type 21 float(8) | 29 type 30 len(4) | 34 end */
    assert_int_equal(b.len, 34);
    assert_int_equal(decode_patched(s, &b, 0, 1), 0);  /* unchanged byte: still fine */
    assert_int_equal(decode_patched(s, &b, 0, 2), -1); /* version */
    assert_int_equal(decode_patched(s, &b, 0, 0), -1);
    assert_int_equal(decode_patched(s, &b, 2, 3), -1);  /* count below the schema's */
    assert_int_equal(decode_patched(s, &b, 2, 5), -1);  /* count above the schema's */
    assert_int_equal(decode_patched(s, &b, 1, 1), -1);  /* count 260 */
    assert_int_equal(decode_patched(s, &b, 3, 1), -1);  /* string slot typed int */
    assert_int_equal(decode_patched(s, &b, 11, 2), -1); /* int slot typed float */
    assert_int_equal(decode_patched(s, &b, 20, 0), -1); /* float slot typed string */
    assert_int_equal(decode_patched(s, &b, 29, 3), -1); /* unknown type */
    assert_int_equal(decode_patched(s, &b, 7, 4), -1);  /* string length past the end */
    assert_int_equal(decode_patched(s, &b, 4, 0xff), -1);
    assert_int_equal(decode_patched(s, &b, 33, 1), -1); /* last string length past the end */
    /* Non-finite floats: exponent all ones. */
    assert_int_equal(decode_patched(s, &b, 21, 0x7f), 0); /* 0x7f04... is finite */
    char *p = malloc(b.len);
    memcpy(p, b.data, b.len);
    memcpy(p + 21, "\x7f\xf0\0\0\0\0\0\0", 8); /* +inf */
    obj_value out[4];
    assert_int_equal(obj_decode(s, p, b.len, out), -1);
    memcpy(p + 21, "\x7f\xf8\0\0\0\0\0\0", 8); /* nan */
    assert_int_equal(obj_decode(s, p, b.len, out), -1);
    memcpy(p + 21, "\xff\xf0\0\0\0\0\0\0", 8); /* -inf */
    assert_int_equal(obj_decode(s, p, b.len, out), -1);
    free(p);
    /* Trailing bytes. */
    buf_putc(&b, 0);
    assert_int_equal(obj_decode(s, b.data, b.len, out), -1);
    buf_free(&b);

    /* A schema with no attributes: exactly {1, 0, 0}. */
    space_schema *e = NULL;
    assert_int_equal(space_parse("space e key k", 13, &e, NULL, 0), 0);
    assert_int_equal(obj_decode(e, "\x01\x00\x00", 3, out), 0);
    assert_int_equal(obj_decode(e, "\x01\x00\x00\x00", 4, out), -1);
    assert_int_equal(obj_decode(e, "\x01\x00", 2, out), -1);
    space_free(e);
    space_free(s);
}

static void test_decode_random(void **state)
{
    (void)state;
    space_schema *s = mk_schema();
    buf b;
    encode_sample(s, &b);
    srand(777);
    obj_value out[4];
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = b.len + (size_t)(rand() % 4) - 2;
        char *p = malloc(len);
        memcpy(p, b.data, len < b.len ? len : b.len);
        if (len > b.len) memset(p + b.len, 0, len - b.len);
        int flips = rand() % 4;
        for (int f = 0; f < flips; f++)
            p[rand() % len] ^= (char)(1 + rand() % 255);
        if (obj_decode(s, p, len, out) == 0) {
            /* Anything accepted re-encodes to the same bytes. */
            buf b2;
            buf_init(&b2);
            obj_encode(s, out, &b2);
            assert_int_equal(b2.len, len);
            assert_memory_equal(b2.data, p, len);
            assert_true(isfinite(out[2].u.f));
            buf_free(&b2);
        }
        free(p);
    }
    buf_free(&b);
    space_free(s);
}

/* ---- parse and format --------------------------------------------------- */

static int parse(space_type t, const char *text, obj_value *v)
{
    /* Exact-size heap copy, no NUL: the parser must honour len. */
    size_t n = strlen(text);
    char *p = malloc(n ? n : 1);
    memcpy(p, text, n);
    int rc = obj_parse_value(t, p, n, v);
    free(p);
    return rc;
}

static void test_parse_int(void **state)
{
    (void)state;
    obj_value v;
    struct {
        const char *text;
        int64_t want;
    } ok[] = {
        {"0", 0},
        {"42", 42},
        {"-42", -42},
        {"+7", 7},
        {"-0", 0},
        {"007", 7},
        {"9223372036854775807", INT64_MAX},
        {"-9223372036854775808", INT64_MIN},
        {"+9223372036854775807", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (parse(SPACE_INT, ok[i].text, &v)) fail_msg("rejected %s", ok[i].text);
        assert_int_equal(v.type, SPACE_INT);
        assert_int_equal(v.u.i, ok[i].want);
    }
    const char *bad[] = {"",
                         " 1",
                         "1 ",
                         "0x10",
                         "9223372036854775808",
                         "-9223372036854775809",
                         "99999999999999999999",
                         "-",
                         "+",
                         "--1",
                         "+-1",
                         "1.0",
                         "1e3",
                         "abc",
                         "12a",
                         "\t1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = ival(12345);
        if (parse(SPACE_INT, bad[i], &v) != -1) fail_msg("accepted '%s'", bad[i]);
        assert_int_equal(v.u.i, 12345); /* untouched on error */
    }
    const char nul[] = "1\0002";
    assert_int_equal(obj_parse_value(SPACE_INT, nul, 3, &v), -1);
    assert_int_equal(obj_parse_value(SPACE_INT, "123", 2, &v), 0);
    assert_int_equal(v.u.i, 12);
}

static void test_parse_float(void **state)
{
    (void)state;
    obj_value v;
    struct {
        const char *text;
        double want;
    } ok[] = {
        {"0", 0.0},       {"1.5", 1.5},       {"-2.25", -2.25},
        {"1e300", 1e300}, {"0.1", 0.1},       {"+3", 3.0},
        {".5", 0.5},      {"5e-324", 5e-324}, {"-0.0", -0.0},
        {"0x1p3", 8.0},   {"1E2", 100.0},     {"123456789012345678", 123456789012345678.0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (parse(SPACE_FLOAT, ok[i].text, &v)) fail_msg("rejected %s", ok[i].text);
        assert_int_equal(v.type, SPACE_FLOAT);
        assert_int_equal(bits(v.u.f), bits(ok[i].want));
    }
    const char *bad[] = {"",      " 1",     "1 ",  "nan",  "NaN", "inf", "-inf", "infinity",
                         "1e999", "-1e999", "abc", "1.5x", "\n1", "1,5", "e5",   "."};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = fval(7.0);
        if (parse(SPACE_FLOAT, bad[i], &v) != -1) fail_msg("accepted '%s'", bad[i]);
        assert_true(v.u.f == 7.0);
    }
    /* Length limit: 64 bytes accepted, 65 refused. */
    char longnum[80];
    memset(longnum, '0', sizeof longnum);
    longnum[0] = '1';
    longnum[64] = '\0';
    assert_int_equal(parse(SPACE_FLOAT, longnum, &v), 0);
    assert_true(v.u.f == 1e63);
    longnum[64] = '0';
    longnum[65] = '\0';
    assert_int_equal(parse(SPACE_FLOAT, longnum, &v), -1);
    /* Embedded NUL and a length shorter than the text. */
    assert_int_equal(obj_parse_value(SPACE_FLOAT, "1\0002", 3, &v), -1);
    assert_int_equal(obj_parse_value(SPACE_FLOAT, "2.5e1", 3, &v), 0);
    assert_true(v.u.f == 2.5);
}

static void test_parse_string(void **state)
{
    (void)state;
    obj_value v;
    const char text[] = " any\0thing ";
    assert_int_equal(obj_parse_value(SPACE_STRING, text, sizeof text - 1, &v), 0);
    assert_int_equal(v.type, SPACE_STRING);
    assert_ptr_equal(v.u.s.p, text);
    assert_int_equal(v.u.s.len, sizeof text - 1);
    assert_int_equal(obj_parse_value(SPACE_STRING, "", 0, &v), 0);
    assert_int_equal(v.u.s.len, 0);
}

static char *fmt(const obj_value *v)
{
    buf b;
    buf_init(&b);
    obj_format_value(v, &b);
    buf_putc(&b, '\0');
    return b.data;
}

static void check_format(double d, const char *want)
{
    obj_value v = fval(d);
    char *s = fmt(&v);
    if (want) assert_string_equal(s, want);
    /* Round trip through obj_parse_value to the same bits. */
    obj_value back;
    assert_int_equal(obj_parse_value(SPACE_FLOAT, s, strlen(s), &back), 0);
    assert_int_equal(bits(back.u.f), bits(d));
    free(s);
}

static void test_format(void **state)
{
    (void)state;
    check_format(0.1, "0.1");
    check_format(1.5, "1.5");
    check_format(2.5, "2.5");
    check_format(1e300, "1e+300");
    check_format(-0.0, "-0");
    check_format(0.0, "0");
    check_format(100.0, "100");
    check_format(5e-324, "5e-324");
    check_format(123456789012345678.0, "1.2345678901234568e+17");
    check_format(0.1 + 0.2, "0.30000000000000004");
    check_format(1.7976931348623157e308, "1.7976931348623157e+308");
    check_format(2.2250738585072014e-308, "2.2250738585072014e-308"); /* smallest normal */
    check_format(2.225073858507201e-308, "2.225073858507201e-308");   /* largest subnormal */
    srand(99);
    for (int i = 0; i < 100000; i++) {
        uint64_t u = ((uint64_t)rand() << 42) ^ ((uint64_t)rand() << 21) ^ (uint64_t)rand();
        double d;
        memcpy(&d, &u, sizeof d);
        if (!isfinite(d)) continue;
        check_format(d, NULL);
    }

    obj_value v = ival(INT64_MIN);
    char *s = fmt(&v);
    assert_string_equal(s, "-9223372036854775808");
    free(s);
    v = ival(INT64_MAX);
    s = fmt(&v);
    assert_string_equal(s, "9223372036854775807");
    free(s);
    v = ival(0);
    s = fmt(&v);
    assert_string_equal(s, "0");
    free(s);

    buf b;
    buf_init(&b);
    v = sval("a\0b", 3);
    obj_format_value(&v, &b);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "a\0b", 3);
    buf_free(&b);
}

/* ---- order -------------------------------------------------------------- */

static void test_compare(void **state)
{
    (void)state;
    obj_value a, b;
    a = ival(-1), b = ival(1);
    assert_true(obj_compare(&a, &b) < 0);
    assert_true(obj_compare(&b, &a) > 0);
    assert_int_equal(obj_compare(&a, &a), 0);
    a = ival(INT64_MIN), b = ival(INT64_MAX);
    assert_true(obj_compare(&a, &b) < 0);
    a = fval(-0.0), b = fval(0.0);
    assert_int_equal(obj_compare(&a, &b), 0);
    a = fval(-1e300), b = fval(5e-324);
    assert_true(obj_compare(&a, &b) < 0);
    a = sval("ab", 2), b = sval("abc", 3);
    assert_true(obj_compare(&a, &b) < 0);
    assert_true(obj_compare(&b, &a) > 0);
    a = sval("\xff", 1), b = sval("a", 1);
    assert_true(obj_compare(&a, &b) > 0); /* unsigned bytes */
    a = sval("", 0), b = sval("\0", 1);
    assert_true(obj_compare(&a, &b) < 0);
    a = sval(NULL, 0), b = sval("", 0);
    assert_int_equal(obj_compare(&a, &b), 0);
}

static int sign(int x)
{
    return (x > 0) - (x < 0);
}

static int key_cmp(const obj_value *a, const obj_value *b)
{
    buf ka, kb;
    buf_init(&ka);
    buf_init(&kb);
    obj_index_key(a, &ka);
    obj_index_key(b, &kb);
    assert_int_equal(ka.len, obj_index_width(a->type));
    assert_int_equal(kb.len, obj_index_width(b->type));
    int c = memcmp(ka.data, kb.data, ka.len);
    buf_free(&ka);
    buf_free(&kb);
    return sign(c);
}

static double rand_double(void)
{
    for (;;) {
        uint64_t u = ((uint64_t)rand() << 42) ^ ((uint64_t)rand() << 21) ^ (uint64_t)rand();
        if (rand() % 4 == 0) u &= 0x800fffffffffffffu; /* zero exponent: subnormals, zeros */
        double d;
        memcpy(&d, &u, sizeof d);
        if (isfinite(d)) return d;
    }
}

static void test_index_key(void **state)
{
    (void)state;
    assert_int_equal(obj_index_width(SPACE_INT), 8);
    assert_int_equal(obj_index_width(SPACE_FLOAT), 8);
    assert_int_equal(obj_index_width(SPACE_STRING), OBJ_INDEX_STRING_PREFIX);

    /* Exact images. */
    buf k;
    buf_init(&k);
    obj_value v = ival(0);
    obj_index_key(&v, &k);
    assert_memory_equal(k.data, "\x80\0\0\0\0\0\0\0", 8);
    buf_reset(&k);
    v = ival(-1);
    obj_index_key(&v, &k);
    assert_memory_equal(k.data, "\x7f\xff\xff\xff\xff\xff\xff\xff", 8);
    buf_reset(&k);
    v = fval(-0.0);
    obj_index_key(&v, &k);
    assert_memory_equal(k.data, "\x80\0\0\0\0\0\0\0", 8);
    buf_reset(&k);
    v = sval("ab", 2);
    obj_index_key(&v, &k);
    assert_int_equal(k.len, 32);
    assert_memory_equal(k.data, "ab\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
                        32);
    buf_free(&k);

    obj_value a, b;
    a = fval(-0.0), b = fval(0.0);
    assert_int_equal(key_cmp(&a, &b), 0);

    srand(4242);
    for (int i = 0; i < 100000; i++) {
        /* ints: mix of full-range and small values so equal pairs happen */
        int64_t x =
            (int64_t)(((uint64_t)rand() << 42) ^ ((uint64_t)rand() << 21) ^ (uint64_t)rand());
        int64_t y =
            (int64_t)(((uint64_t)rand() << 42) ^ ((uint64_t)rand() << 21) ^ (uint64_t)rand());
        if (i % 3 == 0) x = rand() % 5 - 2, y = rand() % 5 - 2;
        a = ival(x), b = ival(y);
        assert_int_equal(key_cmp(&a, &b), obj_compare(&a, &b));

        double f = rand_double(), g = rand_double();
        if (i % 5 == 0) g = -f;
        if (i % 7 == 0) f = 0.0, g = -0.0;
        a = fval(f), b = fval(g);
        assert_int_equal(key_cmp(&a, &b), obj_compare(&a, &b));

        /* strings: short ones order exactly, long ones weakly */
        char s1[48], s2[48];
        size_t n1 = (size_t)(rand() % 40), n2 = (size_t)(rand() % 40);
        const char alphabet[] = {0, 1, 'a', 'b', (char)0x7f, (char)0x80, (char)0xff};
        for (size_t j = 0; j < n1; j++)
            s1[j] = alphabet[rand() % 7];
        for (size_t j = 0; j < n2; j++)
            s2[j] = i % 2 && j < n1 ? s1[j] : alphabet[rand() % 7];
        a = sval(s1, n1), b = sval(s2, n2);
        int c = obj_compare(&a, &b), kc = key_cmp(&a, &b);
        if (c < 0) assert_true(kc <= 0);
        if (c > 0) assert_true(kc >= 0);
        if (c == 0) assert_int_equal(kc, 0);
        /* Without NUL bytes and within the prefix the order is exact. */
        bool exact = n1 <= OBJ_INDEX_STRING_PREFIX && n2 <= OBJ_INDEX_STRING_PREFIX &&
                     !memchr(s1, 0, n1) && !memchr(s2, 0, n2);
        if (exact) assert_int_equal(kc, c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_roundtrip), cmocka_unit_test(test_decode_truncated),
        cmocka_unit_test(test_decode_malformed), cmocka_unit_test(test_decode_random),
        cmocka_unit_test(test_parse_int),        cmocka_unit_test(test_parse_float),
        cmocka_unit_test(test_parse_string),     cmocka_unit_test(test_format),
        cmocka_unit_test(test_compare),          cmocka_unit_test(test_index_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
