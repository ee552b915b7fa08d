/* obj: typed attribute values, their text form, their order, and the
 * versioned object encoding (layout and invariants in obj.h).
 *
 * Design note.
 *
 *   1. obj_decode reads through a bounds-checked cursor; every length is
 *      checked against the bytes left before it is used, and floats that are
 *      not finite are refused like any other malformed field, so a decoded
 *      object obeys the same rules as one built from parsed client text.
 *   2. The encoding is canonical: obj_decode accepts exactly the byte strings
 *      obj_encode produces, so encode(decode(x)) == x.
 *   3. obj_format_value's float text parses back (strtod) to the same bits,
 *      and obj_parse_value accepts it.
 *   4. obj_index_key images compare with memcmp the way obj_compare orders
 *      the values (strictly for int and float, weakly for strings longer
 *      than OBJ_INDEX_STRING_PREFIX bytes).
 */
#include "obj.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLOAT_TEXT_MAX 64 /* longest float text obj_parse_value accepts */

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

void obj_zero(const space_schema *s, obj_value *vals)
{
    for (uint32_t i = 0; i < s->nattrs; i++) {
        memset(&vals[i], 0, sizeof vals[i]);
        vals[i].type = s->attrs[i].type;
        switch (vals[i].type) {
        case SPACE_STRING:
            vals[i].u.s.p = "";
            vals[i].u.s.len = 0;
            break;
        case SPACE_INT:
            vals[i].u.i = 0;
            break;
        case SPACE_FLOAT:
            vals[i].u.f = 0.0;
            break;
        }
    }
}

void obj_encode(const space_schema *s, const obj_value *vals, buf *out)
{
    buf_putc(out, OBJ_FORMAT_VERSION);
    buf_put_u16be(out, (uint16_t)s->nattrs);
    for (uint32_t i = 0; i < s->nattrs; i++) {
        const obj_value *v = &vals[i];
        assert(v->type == s->attrs[i].type);
        buf_putc(out, (char)v->type);
        switch (v->type) {
        case SPACE_STRING:
            assert(v->u.s.len <= UINT32_MAX);
            buf_put_u32be(out, (uint32_t)v->u.s.len);
            buf_append(out, v->u.s.p, v->u.s.len);
            break;
        case SPACE_INT:
            buf_put_u64be(out, (uint64_t)v->u.i);
            break;
        case SPACE_FLOAT:
            buf_put_u64be(out, double_bits(v->u.f));
            break;
        }
    }
}

int obj_decode(const space_schema *s, const void *data, size_t len, obj_value *vals)
{
    const unsigned char *p = data;
    if (!p || len < 3 || p[0] != OBJ_FORMAT_VERSION) return -1;
    if (get_u16be(p + 1) != s->nattrs) return -1;
    size_t off = 3;
    for (uint32_t i = 0; i < s->nattrs; i++) {
        obj_value *v = &vals[i];
        if (len - off < 1 || p[off] != (unsigned char)s->attrs[i].type) return -1;
        v->type = s->attrs[i].type;
        off++;
        switch (v->type) {
        case SPACE_STRING: {
            if (len - off < 4) return -1;
            uint32_t n = get_u32be(p + off);
            off += 4;
            if (len - off < n) return -1;
            v->u.s.p = (const char *)p + off;
            v->u.s.len = n;
            off += n;
            break;
        }
        case SPACE_INT:
            if (len - off < 8) return -1;
            v->u.i = (int64_t)get_u64be(p + off);
            off += 8;
            break;
        case SPACE_FLOAT:
            if (len - off < 8) return -1;
            v->u.f = bits_double(get_u64be(p + off));
            if (!isfinite(v->u.f)) return -1;
            off += 8;
            break;
        default:
            return -1;
        }
    }
    return off == len ? 0 : -1;
}

static int parse_int(const char *text, size_t len, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (len > 0 && (text[0] == '-' || text[0] == '+')) {
        neg = text[0] == '-';
        i = 1;
    }
    if (i == len) return -1;
    /* Accumulate the magnitude as unsigned; the limit is 2^63 for negatives. */
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t v = 0;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < '0' || c > '9') return -1;
        unsigned d = c - '0';
        if (v > (limit - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (neg)
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    else
        *out = (int64_t)v;
    return 0;
}

static int parse_float(const char *text, size_t len, double *out)
{
    char tmp[FLOAT_TEXT_MAX + 1];
    if (len == 0 || len > FLOAT_TEXT_MAX) return -1;
    /* strtod skips leading white space; the text must be the number alone. */
    unsigned char c0 = (unsigned char)text[0];
    if (c0 == ' ' || (c0 >= '\t' && c0 <= '\r')) return -1;
    memcpy(tmp, text, len);
    tmp[len] = '\0';
    char *end;
    double d = strtod(tmp, &end);
    if (end != tmp + len || !isfinite(d)) return -1;
    *out = d;
    return 0;
}

int obj_parse_value(space_type t, const char *text, size_t len, obj_value *out)
{
    assert(text || len == 0);
    obj_value v;
    memset(&v, 0, sizeof v);
    v.type = t;
    switch (t) {
    case SPACE_STRING:
        v.u.s.p = text ? text : "";
        v.u.s.len = len;
        break;
    case SPACE_INT:
        if (parse_int(text, len, &v.u.i)) return -1;
        break;
    case SPACE_FLOAT:
        if (parse_float(text, len, &v.u.f)) return -1;
        break;
    default:
        return -1;
    }
    *out = v;
    return 0;
}

/* Shortest %.Ng text of d that strtod maps back to the same bits. Normal
 * numbers start at 15 significant digits (fewer would switch integers such as
 * 100 to exponent form, and %g drops trailing zeros anyway); subnormals, which
 * carry fewer digits, start at 1 so 5e-324 prints as "5e-324". */
static void format_double(double d, buf *out)
{
    char tmp[40];
    int start = fpclassify(d) == FP_SUBNORMAL ? 1 : 15;
    for (int prec = start; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (double_bits(strtod(tmp, NULL)) == double_bits(d)) break;
    }
    buf_puts(out, tmp);
}

void obj_format_value(const obj_value *v, buf *out)
{
    switch (v->type) {
    case SPACE_STRING:
        buf_append(out, v->u.s.p, v->u.s.len);
        break;
    case SPACE_INT:
        buf_printf(out, "%" PRId64, v->u.i);
        break;
    case SPACE_FLOAT:
        format_double(v->u.f, out);
        break;
    default:
        assert(!"bad value type");
    }
}

int obj_compare(const obj_value *a, const obj_value *b)
{
    assert(a->type == b->type);
    switch (a->type) {
    case SPACE_STRING: {
        size_t n = a->u.s.len < b->u.s.len ? a->u.s.len : b->u.s.len;
        int c = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
        if (c) return c < 0 ? -1 : 1;
        return (a->u.s.len > b->u.s.len) - (a->u.s.len < b->u.s.len);
    }
    case SPACE_INT:
        return (a->u.i > b->u.i) - (a->u.i < b->u.i);
    case SPACE_FLOAT:
        return (a->u.f > b->u.f) - (a->u.f < b->u.f);
    default:
        assert(!"bad value type");
        return 0;
    }
}

void obj_index_key(const obj_value *v, buf *out)
{
    switch (v->type) {
    case SPACE_STRING: {
        unsigned char tmp[OBJ_INDEX_STRING_PREFIX] = {0};
        size_t n = v->u.s.len < sizeof tmp ? v->u.s.len : sizeof tmp;
        if (n) memcpy(tmp, v->u.s.p, n);
        buf_append(out, tmp, sizeof tmp);
        break;
    }
    case SPACE_INT:
        buf_put_u64be(out, (uint64_t)v->u.i ^ (UINT64_C(1) << 63));
        break;
    case SPACE_FLOAT: {
        uint64_t u = v->u.f == 0.0 ? 0 : double_bits(v->u.f); /* -0.0 sorts as 0.0 */
        u = (u >> 63) ? ~u : u ^ (UINT64_C(1) << 63);
        buf_put_u64be(out, u);
        break;
    }
    default:
        assert(!"bad value type");
    }
}

size_t obj_index_width(space_type t)
{
    switch (t) {
    case SPACE_STRING:
        return OBJ_INDEX_STRING_PREFIX;
    case SPACE_INT:
    case SPACE_FLOAT:
        return 8;
    }
    assert(!"bad value type");
    return 0;
}
