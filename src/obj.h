/* obj: typed attribute values and the versioned object encoding.
 *
 * An object is the vector of its attribute values in schema order (the key is
 * stored separately, as the storage key). Encoding, format version 1:
 *
 *     u8  version (= 1)
 *     u16 count (big endian)  number of values that follow
 *     count times:
 *         u8 type (0 string, 1 int, 2 float)
 *         string: u32 length (big endian), bytes
 *         int:    8 bytes, two's complement, big endian
 *         float:  8 bytes, IEEE-754 binary64 bits, big endian
 *
 * Invariants:
 *   1. obj_decode never trusts its input: a truncated buffer, a wrong version,
 *      a count different from the schema's attribute count, a type that does
 *      not match the schema, or trailing bytes all return -1.
 *   2. Decoded string values point into the encoded buffer (zero copy) and
 *      live as long as it does.
 *   3. Floats are finite: obj_parse_value refuses nan and inf, so ordering and
 *      equality are total.
 *   4. obj_index_key orders like obj_compare (for strings: a 32-byte
 *      zero-padded prefix, so it is monotone but not injective; callers always
 *      re-check predicates against the object).
 */
#ifndef KEEL_OBJ_H
#define KEEL_OBJ_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "space.h"

#define OBJ_FORMAT_VERSION 1
#define OBJ_INDEX_STRING_PREFIX 32

typedef struct obj_value {
    space_type type;
    union {
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t len;
        } s;
    } u;
} obj_value;

/* Sets every value to its type's zero value ("", 0, 0.0). vals has
 * s->nattrs slots. */
void obj_zero(const space_schema *s, obj_value *vals);

/* Appends the encoding of vals (s->nattrs values) to out. */
void obj_encode(const space_schema *s, const obj_value *vals, buf *out);

/* Decodes data into vals (s->nattrs slots). 0 on success, -1 if malformed. */
int obj_decode(const space_schema *s, const void *data, size_t len, obj_value *vals);

/* Parses client text as a value of type t. Strings are taken as they are
 * (pointing at text). int: optional sign and decimal digits, no spaces, must
 * fit int64. float: strtod syntax, whole string consumed, finite.
 * Returns 0, or -1 if the text is not a valid value of that type. */
int obj_parse_value(space_type t, const char *text, size_t len, obj_value *out);

/* Appends the value as text: strings raw, ints in decimal, floats in the
 * shortest form that parses back to the same double ("1.5", "0.1", "1e+300"). */
void obj_format_value(const obj_value *v, buf *out);

/* Total order within one type: <0, 0, >0. Strings compare as unsigned bytes
 * (shorter prefix first). Both values must have the same type. */
int obj_compare(const obj_value *a, const obj_value *b);

/* Appends an order-preserving fixed-width image of v, for index keys:
 * int: 8 bytes big endian with the sign bit flipped; float: 8 bytes (sign
 * flipped for positives, all bits flipped for negatives; -0.0 encoded as 0.0);
 * string: the first OBJ_INDEX_STRING_PREFIX bytes, zero padded. */
void obj_index_key(const obj_value *v, buf *out);
/* Width in bytes of obj_index_key's output for type t. */
size_t obj_index_width(space_type t);

#endif
