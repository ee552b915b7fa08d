/* json: a small, strict, bounded JSON reader (RFC 8259) that parses a
 * document into a read-only tree.
 *
 * keel's servers answer a few commands with JSON (CLUSTER.STATUS); this is
 * how the C side reads them. It reads only: there is no writer and no
 * in-place editing.
 *
 * Strict: exactly the grammar of RFC 8259, nothing more. No comments, no
 * trailing commas, no single quotes, no leading zeros or '+' signs, no NaN or
 * Infinity, no byte order mark, no control characters inside strings, valid
 * UTF-8 only (no overlong forms, no encoded surrogates, nothing above
 * U+10FFFF), and \u escapes that pair surrogates correctly. Any value may be
 * the root; only whitespace may surround it. A number whose magnitude does not
 * fit a double is refused (one that underflows reads as its nearest double).
 *
 * Bounded: the input size, the nesting depth and the number of values are
 * limited (json_limits), so a hostile document costs at most a known amount
 * of memory and stack. Input is never trusted: any byte sequence yields
 * either a tree or an error with the byte offset where reading stopped,
 * never a crash.
 *
 * Ownership: json_parse hands out one json_doc; every value, string and name
 * in it lives in the document's own memory and stays valid until json_free.
 * The input buffer is only read during the call and need not be
 * NUL-terminated.
 *
 * Objects keep their members in document order. Duplicate names are kept
 * (RFC 8259 leaves their meaning open); json_get returns the first.
 */
#ifndef KEEL_JSON_H
#define KEEL_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum json_type {
    JSON_NULL = 1,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT
} json_type;

enum json_status {
    JSON_OK = 0,
    JSON_ESYNTAX = -1, /* not JSON */
    JSON_ELIMIT = -2,  /* valid so far, but over a limit of json_limits */
    JSON_ENOMEM = -3   /* out of memory building the tree */
};

/* Limits on one document. A zero field means its default. */
typedef struct json_limits {
    size_t max_bytes; /* input length */
    size_t max_depth; /* arrays and objects nested in each other; capped at
                         JSON_DEPTH_CAP whatever the caller asks */
    size_t max_nodes; /* values in the document: the root, every element
                         and every member value */
} json_limits;

#define JSON_DEFAULT_MAX_BYTES (16u * 1024 * 1024)
#define JSON_DEFAULT_MAX_DEPTH 64u
#define JSON_DEFAULT_MAX_NODES (1u << 20)
#define JSON_DEPTH_CAP 512u

/* One value of the tree. Read-only for users; all pointers lead into the
 * owning json_doc. */
typedef struct json_value json_value;
struct json_value {
    json_type type;
    /* JSON_NUMBER */
    double number;   /* the value as a double (an integer may be rounded) */
    int is_int;      /* 1 if written without fraction or exponent and it fits
                        int64_t; then integer holds it exactly */
    int64_t integer; /* valid when is_int */
    /* JSON_STRING: the decoded text, len bytes plus a terminating NUL (a
     * \u0000 escape puts a NUL inside: trust len). NULL for other types. */
    const char *str;
    size_t len;
    /* Member name, when this value is a member of an object (decoded like a
     * string, key_len bytes plus a NUL); NULL for elements and the root. */
    const char *key;
    size_t key_len;
    /* JSON_ARRAY, JSON_OBJECT: count children, first at child, each linked
     * to the following one by next (NULL after the last). */
    size_t count;
    const json_value *child;
    const json_value *next;
};

/* A parsed document (opaque). */
typedef struct json_doc json_doc;

/* Where and why json_parse failed. msg is one line of English. */
typedef struct json_error {
    size_t offset; /* byte offset in the input where reading stopped */
    char msg[112];
} json_error;

/* Parses text[0, len) as one JSON document. lim may be NULL (all defaults);
 * err may be NULL.
 *
 * On JSON_OK *out is the document (the caller frees it with json_free). On
 * any other status *out is set to NULL and, when err is not NULL, *err says
 * where and why. */
int json_parse(const char *text, size_t len, const json_limits *lim, json_doc **out,
               json_error *err);

/* Frees a document and every value in it. NULL is a no-op. */
void json_free(json_doc *d);

/* The root value of d (never NULL for a document json_parse returned). */
const json_value *json_root(const json_doc *d);

/* The value of the first member of obj named name (a NUL-terminated name
 * that matches only a member name of the same length and bytes). NULL if obj
 * is NULL, not an object, or has no such member. */
const json_value *json_get(const json_value *obj, const char *name);

/* Element i of array arr (walks the list: O(i)). NULL if arr is NULL, not an
 * array, or i >= arr->count. */
const json_value *json_at(const json_value *arr, size_t i);

/* Static name of a type ("object", ...); "?" for a value outside the enum. */
const char *json_type_name(json_type t);

#endif
