/* buf: a growable byte buffer.
 *
 * Used for reply encoding, object encoding and connection I/O. A buf owns its
 * memory; buf_free releases it. Appending never fails silently: on
 * out-of-memory the process aborts (keel treats OOM as fatal, like Redis).
 *
 * Invariant: len <= cap; data is NULL only while cap == 0.
 */
#ifndef KEEL_BUF_H
#define KEEL_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct buf {
    char *data; /* owned; valid bytes are [0, len) */
    size_t len;
    size_t cap;
} buf;

void buf_init(buf *b);
void buf_free(buf *b);
/* Ensures room for at least `extra` more bytes. */
void buf_reserve(buf *b, size_t extra);
void buf_append(buf *b, const void *p, size_t n);
void buf_putc(buf *b, char c);
void buf_puts(buf *b, const char *s);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Fixed-width little/big endian helpers for binary encodings. */
void buf_put_u16be(buf *b, uint16_t v);
void buf_put_u32be(buf *b, uint32_t v);
void buf_put_u64be(buf *b, uint64_t v);
void buf_put_u32le(buf *b, uint32_t v);
void buf_put_u64le(buf *b, uint64_t v);
/* Removes the first n bytes (n <= len). */
void buf_consume(buf *b, size_t n);
void buf_reset(buf *b);

uint16_t get_u16be(const void *p);
uint32_t get_u32be(const void *p);
uint64_t get_u64be(const void *p);
uint32_t get_u32le(const void *p);
uint64_t get_u64le(const void *p);

#endif
