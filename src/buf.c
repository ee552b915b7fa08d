/* buf: a growable byte buffer (see buf.h). */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void buf_free(buf *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reserve(buf *b, size_t extra)
{
    if (b->cap - b->len >= extra) return;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        fprintf(stderr, "keel: out of memory (%zu bytes)\n", cap);
        abort();
    }
    b->data = p;
    b->cap = cap;
}

void buf_append(buf *b, const void *p, size_t n)
{
    if (n == 0) return;
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void buf_putc(buf *b, char c)
{
    buf_reserve(b, 1);
    b->data[b->len++] = c;
}

void buf_puts(buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        buf_append(b, tmp, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void buf_put_u16be(buf *b, uint16_t v)
{
    unsigned char t[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    buf_append(b, t, 2);
}

void buf_put_u32be(buf *b, uint32_t v)
{
    unsigned char t[4];
    for (int i = 0; i < 4; i++)
        t[i] = (unsigned char)(v >> (24 - 8 * i));
    buf_append(b, t, 4);
}

void buf_put_u64be(buf *b, uint64_t v)
{
    unsigned char t[8];
    for (int i = 0; i < 8; i++)
        t[i] = (unsigned char)(v >> (56 - 8 * i));
    buf_append(b, t, 8);
}

void buf_put_u32le(buf *b, uint32_t v)
{
    unsigned char t[4];
    for (int i = 0; i < 4; i++)
        t[i] = (unsigned char)(v >> (8 * i));
    buf_append(b, t, 4);
}

void buf_put_u64le(buf *b, uint64_t v)
{
    unsigned char t[8];
    for (int i = 0; i < 8; i++)
        t[i] = (unsigned char)(v >> (8 * i));
    buf_append(b, t, 8);
}

void buf_consume(buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void buf_reset(buf *b)
{
    b->len = 0;
}

uint16_t get_u16be(const void *p)
{
    const unsigned char *s = p;
    return (uint16_t)((s[0] << 8) | s[1]);
}

uint32_t get_u32be(const void *p)
{
    const unsigned char *s = p;
    return ((uint32_t)s[0] << 24) | ((uint32_t)s[1] << 16) | ((uint32_t)s[2] << 8) | s[3];
}

uint64_t get_u64be(const void *p)
{
    return ((uint64_t)get_u32be(p) << 32) | get_u32be((const char *)p + 4);
}

uint32_t get_u32le(const void *p)
{
    const unsigned char *s = p;
    return ((uint32_t)s[3] << 24) | ((uint32_t)s[2] << 16) | ((uint32_t)s[1] << 8) | s[0];
}

uint64_t get_u64le(const void *p)
{
    return ((uint64_t)get_u32le((const char *)p + 4) << 32) | get_u32le(p);
}
