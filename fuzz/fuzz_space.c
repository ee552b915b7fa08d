/* fuzz_space: libFuzzer target for the space language and both binary
 * encodings (src/space.c, src/obj.c).
 *
 * Every input is fed to space_parse, space_decode and (against a fixed
 * schema with every type) obj_decode. Invariants checked, abort() on any
 * violation:
 *   1. A parsed schema obeys space.h's invariants, describes to text that
 *      parses to an identical schema and the identical text, and encodes to
 *      bytes that decode to an identical schema.
 *   2. A decoded schema obeys the same invariants and round-trips the same way.
 *   3. A decoded object re-encodes to exactly its input bytes; its int and
 *      float values format to text that parses back to the same value, and
 *      its index keys have the documented width and agree with obj_compare.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "obj.h"
#include "space.h"

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_space: invariant violated: %s\n", what);
        abort();
    }
}

static int schema_equal(const space_schema *a, const space_schema *b)
{
    if (strcmp(a->name, b->name) || strcmp(a->key_name, b->key_name)) return 0;
    if (a->partitions != b->partitions || a->tolerate != b->tolerate) return 0;
    if (a->nattrs != b->nattrs || a->nsubspaces != b->nsubspaces) return 0;
    for (uint32_t i = 0; i < a->nattrs; i++) {
        if (strcmp(a->attrs[i].name, b->attrs[i].name)) return 0;
        if (a->attrs[i].type != b->attrs[i].type) return 0;
        if (a->attrs[i].indexed != b->attrs[i].indexed) return 0;
    }
    for (uint32_t k = 0; k < a->nsubspaces; k++) {
        if (a->subspaces[k].nattrs != b->subspaces[k].nattrs) return 0;
        for (uint32_t j = 0; j < a->subspaces[k].nattrs; j++)
            if (a->subspaces[k].attrs[j] != b->subspaces[k].attrs[j]) return 0;
    }
    /* Both sides are zero-initialised (space.c invariant 2): bytes agree too. */
    return memcmp(a, b, sizeof *a) == 0;
}

static void check_invariants(const space_schema *s)
{
    check(s->name[0] && s->key_name[0], "empty name");
    check(s->partitions >= 1 && s->partitions <= SPACE_MAX_PARTITIONS, "partitions");
    check(s->tolerate <= SPACE_MAX_TOLERATE, "tolerate");
    check(s->nattrs <= SPACE_MAX_ATTRS && s->nsubspaces <= SPACE_MAX_SUBSPACES, "counts");
    int indexed[SPACE_MAX_ATTRS] = {0};
    for (uint32_t i = 0; i < s->nattrs; i++) {
        check(strcmp(s->attrs[i].name, s->key_name) != 0, "attribute named like the key");
        check(space_attr_find(s, s->attrs[i].name, strlen(s->attrs[i].name)) == (int)i,
              "duplicate attribute");
    }
    for (uint32_t k = 0; k < s->nsubspaces; k++) {
        check(s->subspaces[k].nattrs >= 1 && s->subspaces[k].nattrs <= s->nattrs, "subspace size");
        for (uint32_t j = 0; j < s->subspaces[k].nattrs; j++) {
            check(s->subspaces[k].attrs[j] < s->nattrs, "subspace index");
            indexed[s->subspaces[k].attrs[j]] = 1;
        }
    }
    for (uint32_t i = 0; i < s->nattrs; i++)
        check(indexed[i] == (int)s->attrs[i].indexed, "indexed flag");
}

static void check_roundtrips(const space_schema *s)
{
    check_invariants(s);

    buf text;
    buf_init(&text);
    space_describe(s, &text);
    space_schema *again = NULL;
    char err[256];
    check(space_parse(text.data, text.len, &again, err, sizeof err) == 0, "describe parses");
    check(schema_equal(s, again), "describe round trip");
    buf text2;
    buf_init(&text2);
    space_describe(again, &text2);
    check(text.len == text2.len && memcmp(text.data, text2.data, text.len) == 0,
          "describe is canonical");
    space_free(again);
    buf_free(&text2);
    buf_free(&text);

    buf bin;
    buf_init(&bin);
    space_encode(s, &bin);
    space_schema *dec = NULL;
    check(space_decode(bin.data, bin.len, &dec) == 0, "encoding decodes");
    check(schema_equal(s, dec), "encode round trip");
    space_free(dec);
    buf_free(&bin);

    space_schema *dup = space_dup(s);
    check(schema_equal(s, dup), "dup");
    space_free(dup);
}

static void check_value(const obj_value *v)
{
    buf t;
    buf_init(&t);
    obj_format_value(v, &t);
    obj_value back;
    check(obj_parse_value(v->type, t.data ? t.data : "", t.len, &back) == 0, "format parses");
    check(obj_compare(v, &back) == 0, "format round trip");
    if (v->type == SPACE_FLOAT) check(isfinite(v->u.f), "finite float");

    buf k1, k2;
    buf_init(&k1);
    buf_init(&k2);
    obj_index_key(v, &k1);
    obj_index_key(&back, &k2);
    check(k1.len == obj_index_width(v->type), "index width");
    check(k1.len == k2.len && memcmp(k1.data, k2.data, k1.len) == 0, "index key of equal values");
    buf_free(&k1);
    buf_free(&k2);
    buf_free(&t); /* a string `back` points into t */
}

static space_schema *fixed_schema(void)
{
    static space_schema *s;
    if (!s) {
        const char *text = "space f key k attributes s, int i, float f, string t subspace i, f";
        check(space_parse(text, strlen(text), &s, NULL, 0) == 0, "fixed schema");
    }
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    space_schema *s = NULL;
    if (space_parse((const char *)data, size, &s, err, sizeof err) == 0) {
        check_roundtrips(s);
        space_free(s);
    } else {
        check(s == NULL && err[0] != '\0', "parse error reported");
        for (const char *p = err; *p; p++)
            check((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f, "printable error");
    }

    s = NULL;
    if (space_decode(data, size, &s) == 0) {
        check_roundtrips(s);
        space_free(s);
    } else {
        check(s == NULL, "decode failure leaves NULL");
    }

    const space_schema *fs = fixed_schema();
    obj_value vals[4];
    if (obj_decode(fs, data, size, vals) == 0) {
        buf b;
        buf_init(&b);
        obj_encode(fs, vals, &b);
        check(b.len == size && memcmp(b.data, data, size) == 0, "object re-encodes to input");
        buf_free(&b);
        for (int i = 0; i < 4; i++)
            check_value(&vals[i]);
        int c = obj_compare(&vals[1], &vals[1]);
        check(c == 0, "compare reflexive");
    }

    /* The input as a value of each type: accepted text formats and reparses. */
    for (int t = SPACE_STRING; t <= SPACE_FLOAT; t++) {
        obj_value v;
        if (obj_parse_value((space_type)t, (const char *)data, size, &v) == 0) check_value(&v);
    }
    return 0;
}
