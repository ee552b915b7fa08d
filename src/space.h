/* space: the space language, schemas, and their binary encoding.
 *
 * A space is declared with the HyperDex space language (DESIGN section 2):
 *
 *     space phonebook
 *     key username
 *     attributes first, last, int phone
 *     subspace first, last, phone
 *     create 8 partitions
 *     tolerate 2 failures
 *
 * Lines may come in any order after `space`; `space` and `key` are required;
 * words are separated by spaces/tabs, commas separate list items; blank lines
 * and lines starting with '#' are ignored; the whole text may also be given on
 * one line (redis-cli users type it that way): then each keyword starts a new
 * clause. Types: `string` (default), `int` (64-bit signed), `float` (double).
 * `subspace` may be given several times; each names attributes declared in
 * `attributes`. Defaults: 8 partitions, tolerate 1 failure.
 *
 * Invariants of a parsed schema (space_parse guarantees them):
 *   1. name and key_name are non-empty identifiers ([A-Za-z_][A-Za-z0-9_]*,
 *      at most SPACE_MAX_NAME bytes); attribute names are distinct and differ
 *      from the key name.
 *   2. 1 <= partitions <= SPACE_MAX_PARTITIONS; tolerate <= SPACE_MAX_TOLERATE.
 *   3. nattrs <= SPACE_MAX_ATTRS; every subspace attribute index < nattrs and
 *      attrs[i].indexed is true exactly for attributes named in a subspace.
 *   4. A schema is immutable once parsed and may be shared between threads.
 */
#ifndef KEEL_SPACE_H
#define KEEL_SPACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define SPACE_MAX_NAME 64
#define SPACE_MAX_ATTRS 64
#define SPACE_MAX_PARTITIONS 1024
#define SPACE_MAX_TOLERATE 7
#define SPACE_MAX_SUBSPACES 16
#define SPACE_MAX_TEXT 8192 /* bytes of a space description */
#define SPACE_DEFAULT_PARTITIONS 8
#define SPACE_DEFAULT_TOLERATE 1

typedef enum space_type { SPACE_STRING = 0, SPACE_INT = 1, SPACE_FLOAT = 2 } space_type;

typedef struct space_attr {
    char name[SPACE_MAX_NAME + 1];
    space_type type;
    bool indexed; /* named in some subspace */
} space_attr;

typedef struct space_subspace {
    uint32_t nattrs;
    uint32_t attrs[SPACE_MAX_ATTRS]; /* indexes into schema->attrs */
} space_subspace;

typedef struct space_schema {
    char name[SPACE_MAX_NAME + 1];
    char key_name[SPACE_MAX_NAME + 1];
    uint32_t nattrs;
    space_attr attrs[SPACE_MAX_ATTRS];
    uint32_t nsubspaces;
    space_subspace subspaces[SPACE_MAX_SUBSPACES];
    uint32_t partitions;
    uint32_t tolerate;
} space_schema;

/* Parses a space description. On success returns 0 and *out (caller frees
 * with space_free). On error returns -1, *out is NULL, and err holds a message
 * naming the line and the word, e.g.
 *   "line 3: unknown type 'integer' for attribute 'phone'"
 *   "line 1: expected 'space NAME', got 'spaec'"
 *   "line 2: duplicate attribute 'first'"
 *   "line 5: partition count '0' out of range (1..1024)" */
int space_parse(const char *text, size_t len, space_schema **out, char *err, size_t errlen);
void space_free(space_schema *s);
space_schema *space_dup(const space_schema *s);

/* Canonical description, one clause per line, that space_parse accepts and
 * that round-trips to an identical schema. Appended to out. Types are always
 * spelled out (`string first, string last, int phone`). */
void space_describe(const space_schema *s, buf *out);

/* Index of the attribute named (name, len), or -1. */
int space_attr_find(const space_schema *s, const char *name, size_t len);
const char *space_type_name(space_type t);

/* Versioned binary encoding of a schema (for the cluster map and its
 * snapshots). Format version 1; see space.c for the layout. space_decode
 * validates everything (it may be fed garbage) and returns -1 on any error. */
void space_encode(const space_schema *s, buf *out);
int space_decode(const void *data, size_t len, space_schema **out);

#endif
