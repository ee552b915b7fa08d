/* Unit tests for src/space.c: the space language parser and its error
 * messages, the canonical description, and the binary schema encoding
 * (round trips, truncation, garbage). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "space.h"

static const char phonebook[] = "space phonebook\n"
                                "key username\n"
                                "attributes first, last, int phone\n"
                                "subspace first, last, phone\n"
                                "create 8 partitions\n"
                                "tolerate 2 failures\n";

/* ---- helpers ------------------------------------------------------------ */

static space_schema *parse_ok(const char *text)
{
    space_schema *s = (space_schema *)0x1;
    char err[256] = "";
    int rc = space_parse(text, strlen(text), &s, err, sizeof err);
    if (rc != 0) fail_msg("parse of [%s] failed: %s", text, err);
    assert_non_null(s);
    return s;
}

static void parse_err(const char *text, const char *want)
{
    space_schema *s = (space_schema *)0x1;
    char err[256] = "";
    int rc = space_parse(text, strlen(text), &s, err, sizeof err);
    if (rc != -1) fail_msg("parse of [%s] succeeded, expected [%s]", text, want);
    assert_null(s);
    assert_string_equal(err, want);
}

/* Field-by-field equality, covering everything a schema means. */
static void assert_schema_equal(const space_schema *a, const space_schema *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->key_name, b->key_name);
    assert_int_equal(a->partitions, b->partitions);
    assert_int_equal(a->tolerate, b->tolerate);
    assert_int_equal(a->nattrs, b->nattrs);
    for (uint32_t i = 0; i < a->nattrs; i++) {
        assert_string_equal(a->attrs[i].name, b->attrs[i].name);
        assert_int_equal(a->attrs[i].type, b->attrs[i].type);
        assert_int_equal(a->attrs[i].indexed, b->attrs[i].indexed);
    }
    assert_int_equal(a->nsubspaces, b->nsubspaces);
    for (uint32_t k = 0; k < a->nsubspaces; k++) {
        assert_int_equal(a->subspaces[k].nattrs, b->subspaces[k].nattrs);
        for (uint32_t j = 0; j < a->subspaces[k].nattrs; j++)
            assert_int_equal(a->subspaces[k].attrs[j], b->subspaces[k].attrs[j]);
    }
}

static char *describe(const space_schema *s)
{
    buf b;
    buf_init(&b);
    space_describe(s, &b);
    buf_putc(&b, '\0');
    return b.data; /* caller frees */
}

static void check_describe_roundtrip(const space_schema *s)
{
    char *text = describe(s);
    space_schema *again = parse_ok(text);
    assert_schema_equal(s, again);
    char *text2 = describe(again);
    assert_string_equal(text, text2);
    free(text);
    free(text2);
    space_free(again);
}

static void check_encode_roundtrip(const space_schema *s)
{
    buf b;
    buf_init(&b);
    space_encode(s, &b);
    space_schema *d = NULL;
    assert_int_equal(space_decode(b.data, b.len, &d), 0);
    assert_non_null(d);
    assert_schema_equal(s, d);
    assert_memory_equal(s, d, sizeof *s); /* both zero-initialised (invariant 2) */
    space_free(d);
    buf_free(&b);
}

/* ---- parsing ------------------------------------------------------------ */

static void test_phonebook(void **state)
{
    (void)state;
    space_schema *s = parse_ok(phonebook);
    assert_string_equal(s->name, "phonebook");
    assert_string_equal(s->key_name, "username");
    assert_int_equal(s->nattrs, 3);
    assert_string_equal(s->attrs[0].name, "first");
    assert_int_equal(s->attrs[0].type, SPACE_STRING);
    assert_string_equal(s->attrs[1].name, "last");
    assert_int_equal(s->attrs[1].type, SPACE_STRING);
    assert_string_equal(s->attrs[2].name, "phone");
    assert_int_equal(s->attrs[2].type, SPACE_INT);
    for (int i = 0; i < 3; i++)
        assert_true(s->attrs[i].indexed);
    assert_int_equal(s->nsubspaces, 1);
    assert_int_equal(s->subspaces[0].nattrs, 3);
    assert_int_equal(s->subspaces[0].attrs[0], 0);
    assert_int_equal(s->subspaces[0].attrs[1], 1);
    assert_int_equal(s->subspaces[0].attrs[2], 2);
    assert_int_equal(s->partitions, 8);
    assert_int_equal(s->tolerate, 2);
    assert_int_equal(space_attr_find(s, "phone", 5), 2);
    assert_int_equal(space_attr_find(s, "phon", 4), -1);
    assert_int_equal(space_attr_find(s, "username", 8), -1);

    char *text = describe(s);
    assert_string_equal(text, "space phonebook\nkey username\n"
                              "attributes string first, string last, int phone\n"
                              "subspace first, last, phone\n"
                              "create 8 partitions\ntolerate 2 failures\n");
    free(text);
    space_free(s);
}

static void test_one_line(void **state)
{
    (void)state;
    space_schema *a = parse_ok(phonebook);
    space_schema *b =
        parse_ok("space phonebook key username attributes first, last, int phone "
                 "subspace first, last, phone create 8 partitions tolerate 2 failures");
    assert_schema_equal(a, b);
    space_free(a);
    space_free(b);

    /* The redis-cli form, with defaults. */
    space_schema *kv = parse_ok("space kv key k attributes v");
    assert_string_equal(kv->name, "kv");
    assert_string_equal(kv->key_name, "k");
    assert_int_equal(kv->nattrs, 1);
    assert_string_equal(kv->attrs[0].name, "v");
    assert_int_equal(kv->attrs[0].type, SPACE_STRING);
    assert_false(kv->attrs[0].indexed);
    assert_int_equal(kv->nsubspaces, 0);
    assert_int_equal(kv->partitions, SPACE_DEFAULT_PARTITIONS);
    assert_int_equal(kv->tolerate, SPACE_DEFAULT_TOLERATE);
    space_free(kv);
}

static void test_layout_variants(void **state)
{
    (void)state;
    /* Comments, blank lines, CRLF, tabs, any clause order after space, commas
     * without spaces, singular units, several subspaces, float type. */
    space_schema *s = parse_ok("# a comment\n"
                               "\n"
                               "space  people\r\n"
                               "   # indented comment\n"
                               "tolerate 0 failure\n"
                               "subspace age\n"
                               "attributes\tfloat height,int age,name\n"
                               "subspace height, name\n"
                               "create 1 partition\n"
                               "key id\n");
    assert_string_equal(s->name, "people");
    assert_string_equal(s->key_name, "id");
    assert_int_equal(s->partitions, 1);
    assert_int_equal(s->tolerate, 0);
    assert_int_equal(s->nattrs, 3);
    assert_int_equal(s->attrs[0].type, SPACE_FLOAT);
    assert_int_equal(s->attrs[1].type, SPACE_INT);
    assert_int_equal(s->attrs[2].type, SPACE_STRING);
    assert_int_equal(s->nsubspaces, 2);
    assert_int_equal(s->subspaces[0].nattrs, 1);
    assert_int_equal(s->subspaces[0].attrs[0], 1);
    assert_int_equal(s->subspaces[1].nattrs, 2);
    assert_int_equal(s->subspaces[1].attrs[0], 0);
    assert_int_equal(s->subspaces[1].attrs[1], 2);
    check_describe_roundtrip(s);
    check_encode_roundtrip(s);
    space_free(s);

    /* No attributes at all: describe omits the line. */
    s = parse_ok("space bare\nkey k\n");
    assert_int_equal(s->nattrs, 0);
    char *text = describe(s);
    assert_string_equal(text, "space bare\nkey k\ncreate 8 partitions\ntolerate 1 failures\n");
    free(text);
    check_describe_roundtrip(s);
    check_encode_roundtrip(s);
    space_free(s);

    /* Type names are not reserved: an attribute may be called int. */
    s = parse_ok("space t key k attributes int, float int64, int float");
    assert_string_equal(s->attrs[0].name, "int");
    assert_int_equal(s->attrs[0].type, SPACE_STRING);
    assert_string_equal(s->attrs[1].name, "int64");
    assert_int_equal(s->attrs[1].type, SPACE_FLOAT);
    assert_string_equal(s->attrs[2].name, "float");
    assert_int_equal(s->attrs[2].type, SPACE_INT);
    check_describe_roundtrip(s);
    space_free(s);

    /* Limits exactly at the maximum are accepted. */
    s = parse_ok("space t key k create 1024 partitions tolerate 7 failures");
    assert_int_equal(s->partitions, 1024);
    assert_int_equal(s->tolerate, 7);
    space_free(s);
    s = parse_ok("space t key k create 0008 partitions");
    assert_int_equal(s->partitions, 8);
    space_free(s);
}

static void test_limits_max(void **state)
{
    (void)state;
    /* 64 attributes, 16 subspaces, 64-byte names: all accepted and round trip. */
    buf b;
    buf_init(&b);
    char name64[SPACE_MAX_NAME + 1];
    memset(name64, 'n', SPACE_MAX_NAME);
    name64[SPACE_MAX_NAME] = '\0';
    buf_printf(&b, "space %s\nkey k%s\nattributes ", name64, name64 + 1);
    for (int i = 0; i < SPACE_MAX_ATTRS; i++)
        buf_printf(&b, "%sint a%d", i ? ", " : "", i);
    buf_putc(&b, '\n');
    for (int k = 0; k < SPACE_MAX_SUBSPACES; k++)
        buf_printf(&b, "subspace a%d, a%d\n", k, 63 - k);
    buf_putc(&b, '\0');
    space_schema *s = parse_ok(b.data);
    assert_string_equal(s->name, name64);
    assert_int_equal(strlen(s->key_name), SPACE_MAX_NAME);
    assert_int_equal(s->nattrs, SPACE_MAX_ATTRS);
    assert_int_equal(s->nsubspaces, SPACE_MAX_SUBSPACES);
    assert_true(s->attrs[0].indexed);
    assert_false(s->attrs[20].indexed);
    check_describe_roundtrip(s);
    check_encode_roundtrip(s);

    space_schema *d = space_dup(s);
    assert_schema_equal(s, d);
    space_free(d);
    space_free(s);
    buf_free(&b);
}

static void test_errors(void **state)
{
    (void)state;
    parse_err("space phonebook\nkey username\nattributes first, last, integer phone\n",
              "line 3: unknown type 'integer' for attribute 'phone'");
    parse_err("spaec phonebook\nkey username\n", "line 1: expected 'space NAME', got 'spaec'");
    parse_err("space p\nattributes first, first\nkey k\n", "line 2: duplicate attribute 'first'");
    parse_err("space p\nkey k\nattributes first\nsubspace first, age\n",
              "line 4: subspace names unknown attribute 'age'");
    parse_err("space p\nkey k\n\n\ncreate 0 partitions\n",
              "line 5: partition count '0' out of range (1..1024)");
    parse_err("space p\nkey k\n\n\n\ntolerate 9 failures\n",
              "line 6: failure count '9' out of range (0..7)");
    parse_err("space p\nattributes a\n", "missing 'key' clause");
    parse_err("space p\nfoo bar\n", "line 2: unexpected word 'foo'");
    parse_err("", "description is empty");
    parse_err("\n  \n# only a comment\n", "description is empty");

    /* Text size limit. */
    size_t big = SPACE_MAX_TEXT + 1;
    char *text = malloc(big + 1);
    memset(text, ' ', big);
    text[big] = '\0';
    parse_err(text, "description exceeds 8192 bytes");
    free(text);

    /* Names. */
    parse_err("space 1abc key k",
              "line 1: invalid space name '1abc' (names are [A-Za-z_][A-Za-z0-9_]*, at most 64 "
              "bytes)");
    parse_err("space p key my-key",
              "line 1: invalid key name 'my-key' (names are [A-Za-z_][A-Za-z0-9_]*, at most 64 "
              "bytes)");
    parse_err("space p\nkey k\nattributes int ph.one\n",
              "line 3: invalid attribute name 'ph.one' (names are [A-Za-z_][A-Za-z0-9_]*, at "
              "most 64 bytes)");
    char longname[200];
    memset(longname, 'x', 65);
    longname[65] = '\0';
    char longtext[300];
    snprintf(longtext, sizeof longtext, "space %s key k", longname);
    parse_err(longtext, "line 1: invalid space name "
                        "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' "
                        "(names are [A-Za-z_][A-Za-z0-9_]*, at most 64 bytes)");
    /* Non-printable bytes are shown as '?'. */
    parse_err("space a\x01\x7f key k",
              "line 1: invalid space name 'a?\?' (names are [A-Za-z_][A-Za-z0-9_]*, at most 64 "
              "bytes)");

    /* Cross-clause rules. */
    parse_err("space p\nkey username\nattributes first, username\n",
              "line 3: attribute 'username' has the same name as the key");
    parse_err("space p\nattributes username\nkey username\n",
              "line 2: attribute 'username' has the same name as the key");
    parse_err("space p\nkey k\nattributes a, b\nsubspace a, b, a\n",
              "line 4: subspace lists attribute 'a' twice");
    parse_err("space p\nkey k\nattributes a\nsubspace a, k\n",
              "line 4: subspace names the key 'k' (the key is always indexed)");

    /* Counts: too many attributes and subspaces. */
    buf b;
    buf_init(&b);
    buf_puts(&b, "space p\nkey k\nattributes ");
    for (int i = 0; i <= SPACE_MAX_ATTRS; i++)
        buf_printf(&b, "%sa%d", i ? ", " : "", i);
    buf_putc(&b, '\0');
    parse_err(b.data, "line 3: more than 64 attributes");
    buf_reset(&b);
    buf_puts(&b, "space p\nkey k\nattributes a\n");
    for (int k = 0; k <= SPACE_MAX_SUBSPACES; k++)
        buf_puts(&b, "subspace a\n");
    buf_putc(&b, '\0');
    parse_err(b.data, "line 20: more than 16 subspaces");
    buf_reset(&b);
    buf_puts(&b, "space p\nkey k\nattributes a\nsubspace a");
    for (int k = 0; k < SPACE_MAX_ATTRS; k++)
        buf_puts(&b, ", a");
    buf_putc(&b, '\0');
    parse_err(b.data, "line 4: subspace lists more than 64 attributes");
    buf_free(&b);

    /* Duplicate clauses. */
    parse_err("space p\nkey k\nkey j\n", "line 3: duplicate 'key' clause");
    parse_err("space p key k space q", "line 1: duplicate 'space' clause");
    parse_err("space p key k attributes a attributes b", "line 1: duplicate 'attributes' clause");
    parse_err("space p key k create 2 partitions create 3 partitions",
              "line 1: duplicate 'create' clause");
    parse_err("space p key k tolerate 2 failures tolerate 3 failures",
              "line 1: duplicate 'tolerate' clause");

    /* Clause shapes. */
    parse_err("key k\nspace p\n", "line 1: expected 'space NAME', got 'key'");
    parse_err(", space p", "line 1: expected 'space NAME', got ','");
    parse_err("space\nkey k\n", "line 1: expected 'space NAME', got end of line");
    parse_err("space key k", "line 1: expected 'space NAME', got 'key'");
    parse_err("space p q\nkey k\n", "line 1: unexpected word 'q'");
    parse_err("space p,\nkey k\n", "line 1: unexpected ','");
    parse_err("space p\nkey\n", "line 2: expected 'key NAME', got end of line");
    parse_err("space p\nkey k\n, a\n", "line 3: unexpected ','");
    parse_err("space p\nkey k\nattributes\n",
              "line 3: expected '[type] name' in attributes, got end of line");
    parse_err("space p\nkey k\nattributes a,\n",
              "line 3: expected '[type] name' in attributes, got end of line");
    parse_err("space p\nkey k\nattributes a,,b\n",
              "line 3: expected '[type] name' in attributes, got ','");
    parse_err("space p key k attributes a, create 8 partitions",
              "line 1: expected '[type] name' in attributes, got 'create'");
    parse_err("space p\nkey k\nattributes int a b\n", "line 3: unexpected word 'b'");
    parse_err("space p\nkey k\nattributes a\nsubspace\n",
              "line 4: expected attribute name in subspace, got end of line");
    parse_err("space p\nkey k\nattributes a\nsubspace a b\n", "line 4: unexpected word 'b'");
    parse_err("space p\nkey k\ncreate\n",
              "line 3: expected 'create N partitions', got end of line");
    parse_err("space p\nkey k\ncreate 8\n",
              "line 3: expected 'partitions' after '8', got end of line");
    parse_err("space p\nkey k\ncreate 8 parts\n",
              "line 3: expected 'partitions' after '8', got 'parts'");
    parse_err("space p\nkey k\ncreate 8 partitions now\n", "line 3: unexpected word 'now'");
    parse_err("space p\nkey k\ntolerate\n",
              "line 3: expected 'tolerate N failures', got end of line");
    parse_err("space p\nkey k\ntolerate 1 fails\n",
              "line 3: expected 'failures' after '1', got 'fails'");

    /* Numbers: plain decimal, no sign, no overflow. */
    parse_err("space p key k create abc partitions",
              "line 1: partition count 'abc' is not a decimal number");
    parse_err("space p key k create +8 partitions",
              "line 1: partition count '+8' is not a decimal number");
    parse_err("space p key k create -1 partitions",
              "line 1: partition count '-1' is not a decimal number");
    parse_err("space p key k create 0x10 partitions",
              "line 1: partition count '0x10' is not a decimal number");
    parse_err("space p key k create 1025 partitions",
              "line 1: partition count '1025' out of range (1..1024)");
    parse_err("space p key k create 4294967297 partitions",
              "line 1: partition count '4294967297' out of range (1..1024)");
    parse_err("space p key k create 99999999999999999999999999 partitions",
              "line 1: partition count '99999999999999999999999999' out of range (1..1024)");
    parse_err("space p key k tolerate 8 failures", "line 1: failure count '8' out of range (0..7)");
    parse_err("space p key k tolerate 1.5 failures",
              "line 1: failure count '1.5' is not a decimal number");
}

static void test_errors_nul_and_null_err(void **state)
{
    (void)state;
    /* Embedded NUL bytes are part of a word and rejected as a name. */
    const char text[] = "space p\0q key k";
    space_schema *s = NULL;
    char err[256];
    assert_int_equal(space_parse(text, sizeof text - 1, &s, err, sizeof err), -1);
    assert_null(s);
    assert_string_equal(err, "line 1: invalid space name 'p?q' (names are [A-Za-z_][A-Za-z0-9_]*, "
                             "at most 64 bytes)");
    /* A NULL or tiny error buffer is allowed. */
    assert_int_equal(space_parse("spaec", 5, &s, NULL, 0), -1);
    char tiny[8];
    assert_int_equal(space_parse("spaec", 5, &s, tiny, sizeof tiny), -1);
    assert_string_equal(tiny, "line 1:");
    /* The length is honoured: text beyond len is not read. */
    assert_int_equal(space_parse("space p key kXXXX", 13, &s, err, sizeof err), 0);
    assert_string_equal(s->key_name, "k");
    space_free(s);
}

static void test_type_name(void **state)
{
    (void)state;
    assert_string_equal(space_type_name(SPACE_STRING), "string");
    assert_string_equal(space_type_name(SPACE_INT), "int");
    assert_string_equal(space_type_name(SPACE_FLOAT), "float");
}

/* ---- round trips -------------------------------------------------------- */

static void test_roundtrips(void **state)
{
    (void)state;
    const char *texts[] = {
        phonebook,
        "space kv key k attributes v",
        "space a key b",
        "space m key id attributes float x, float y, int z, s subspace x subspace y, z "
        "subspace z, x, s create 1 partitions tolerate 0 failures",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        space_schema *s = parse_ok(texts[i]);
        check_describe_roundtrip(s);
        check_encode_roundtrip(s);
        space_schema *d = space_dup(s);
        assert_memory_equal(s, d, sizeof *s);
        space_free(d);
        space_free(s);
    }
}

static void encode_text(const char *text, buf *b)
{
    space_schema *s = parse_ok(text);
    buf_init(b);
    space_encode(s, b);
    space_free(s);
}

static void test_decode_prefixes(void **state)
{
    (void)state;
    buf b;
    encode_text(phonebook, &b);
    for (size_t n = 0; n < b.len; n++) {
        /* Copy to an exact-size heap block so ASan catches any over-read. */
        char *p = malloc(n ? n : 1);
        memcpy(p, b.data, n);
        space_schema *s = (space_schema *)0x1;
        assert_int_equal(space_decode(p, n, &s), -1);
        assert_null(s);
        free(p);
    }
    /* Trailing bytes. */
    buf_putc(&b, 0);
    space_schema *s = NULL;
    assert_int_equal(space_decode(b.data, b.len, &s), -1);
    assert_int_equal(space_decode(NULL, 0, &s), -1);
    buf_free(&b);
}

/* Decodes data with byte `at` replaced by `val` and expects failure. */
static void expect_bad(const buf *b, size_t at, unsigned char val)
{
    char *p = malloc(b->len);
    memcpy(p, b->data, b->len);
    p[at] = (char)val;
    space_schema *s = (space_schema *)0x1;
    assert_int_equal(space_decode(p, b->len, &s), -1);
    assert_null(s);
    free(p);
}

static void test_decode_invalid_fields(void **state)
{
    (void)state;
    /* "space ab key cd attributes int ef, gh subspace ef, gh" laid out:
     *  0 ver | 1 len 'a' 'b' | 4 len 'c' 'd' | 7 partitions(4) | 11 tolerate(4)
     * 15 nattrs(2) | 17 type 18 len 19 'e' 20 'f' | 21 type 22 len 23 'g' 24 'h'
     * 25 nsubs(2) | 27 count(2) | 29 idx(2) | 31 idx(2) | 33 end */
    buf b;
    encode_text("space ab key cd attributes int ef, gh subspace ef, gh", &b);
    assert_int_equal(b.len, 33);
    space_schema *s = NULL;
    assert_int_equal(space_decode(b.data, b.len, &s), 0);
    space_free(s);

    expect_bad(&b, 0, 2);    /* version */
    expect_bad(&b, 0, 0);    /* version */
    expect_bad(&b, 1, 0);    /* empty space name (length 0 then garbage) */
    expect_bad(&b, 2, '1');  /* space name starts with a digit */
    expect_bad(&b, 5, '-');  /* key name character */
    expect_bad(&b, 10, 0);   /* partitions 0 */
    expect_bad(&b, 9, 4);    /* partitions 1024 + 8 */
    expect_bad(&b, 7, 0x80); /* partitions huge */
    expect_bad(&b, 14, 8);   /* tolerate 8 */
    expect_bad(&b, 16, 65);  /* nattrs 65 */
    expect_bad(&b, 16, 3);   /* nattrs 3: runs into the subspace bytes */
    expect_bad(&b, 17, 3);   /* unknown type */
    expect_bad(&b, 18, 65);  /* attribute name length beyond the data */
    expect_bad(&b, 26, 17);  /* 17 subspaces */
    expect_bad(&b, 28, 0);   /* empty subspace */
    expect_bad(&b, 28, 3);   /* subspace longer than nattrs */
    expect_bad(&b, 30, 2);   /* attribute index out of range */
    expect_bad(&b, 32, 0);   /* same attribute twice in a subspace */
    buf_free(&b);
}

static void test_decode_names(void **state)
{
    (void)state;
    /* Built by hand: duplicate attribute, attribute == key, reserved word. */
    struct {
        const char *attr0, *attr1, *key;
    } cases[] = {
        {"ef", "ef", "cd"},
        {"cd", "ef", "cd"},
        {"ef", "key", "cd"},
        {"ef", "gh", "space"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf b;
        buf_init(&b);
        buf_putc(&b, 1);
        buf_putc(&b, 2);
        buf_puts(&b, "ab");
        buf_putc(&b, (char)strlen(cases[i].key));
        buf_puts(&b, cases[i].key);
        buf_put_u32be(&b, 8);
        buf_put_u32be(&b, 1);
        buf_put_u16be(&b, 2);
        buf_putc(&b, 0);
        buf_putc(&b, (char)strlen(cases[i].attr0));
        buf_puts(&b, cases[i].attr0);
        buf_putc(&b, 0);
        buf_putc(&b, (char)strlen(cases[i].attr1));
        buf_puts(&b, cases[i].attr1);
        buf_put_u16be(&b, 0);
        space_schema *s = (space_schema *)0x1;
        assert_int_equal(space_decode(b.data, b.len, &s), -1);
        assert_null(s);
        buf_free(&b);
    }
    /* The same layout with valid names decodes, so the names are what fail. */
    buf b;
    buf_init(&b);
    buf_putc(&b, 1);
    buf_putc(&b, 2);
    buf_puts(&b, "ab");
    buf_putc(&b, 2);
    buf_puts(&b, "cd");
    buf_put_u32be(&b, 8);
    buf_put_u32be(&b, 1);
    buf_put_u16be(&b, 2);
    buf_putc(&b, 0);
    buf_putc(&b, 2);
    buf_puts(&b, "ef");
    buf_putc(&b, 0);
    buf_putc(&b, 2);
    buf_puts(&b, "gh");
    buf_put_u16be(&b, 0);
    space_schema *s = NULL;
    assert_int_equal(space_decode(b.data, b.len, &s), 0);
    assert_string_equal(s->attrs[1].name, "gh");
    space_free(s);
    buf_free(&b);
}

static void test_decode_random_flips(void **state)
{
    (void)state;
    buf b;
    encode_text("space m key id attributes float x, float y, int z, s subspace x subspace y, z "
                "subspace z, x, s create 3 partitions tolerate 2 failures",
                &b);
    srand(12345);
    for (int iter = 0; iter < 20000; iter++) {
        char *p = malloc(b.len);
        memcpy(p, b.data, b.len);
        int flips = 1 + rand() % 4;
        for (int f = 0; f < flips; f++)
            p[rand() % b.len] ^= (char)(1 + rand() % 255);
        size_t len = b.len - (size_t)(rand() % 3 == 0 ? rand() % (int)b.len : 0);
        space_schema *s = NULL;
        if (space_decode(p, len, &s) == 0) {
            /* Whatever decodes must satisfy the schema invariants. */
            assert_true(s->partitions >= 1 && s->partitions <= SPACE_MAX_PARTITIONS);
            assert_true(s->tolerate <= SPACE_MAX_TOLERATE);
            for (uint32_t k = 0; k < s->nsubspaces; k++)
                for (uint32_t j = 0; j < s->subspaces[k].nattrs; j++)
                    assert_true(s->subspaces[k].attrs[j] < s->nattrs);
            check_describe_roundtrip(s);
            space_free(s);
        } else {
            assert_null(s);
        }
        free(p);
    }
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phonebook),       cmocka_unit_test(test_one_line),
        cmocka_unit_test(test_layout_variants), cmocka_unit_test(test_limits_max),
        cmocka_unit_test(test_errors),          cmocka_unit_test(test_errors_nul_and_null_err),
        cmocka_unit_test(test_type_name),       cmocka_unit_test(test_roundtrips),
        cmocka_unit_test(test_decode_prefixes), cmocka_unit_test(test_decode_invalid_fields),
        cmocka_unit_test(test_decode_names),    cmocka_unit_test(test_decode_random_flips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
