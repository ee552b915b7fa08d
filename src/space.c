/* space: the space language parser, the canonical description, and the
 * binary schema encoding (see space.h for the language and the invariants of
 * a parsed schema).
 *
 * Design note.
 *
 * Parsing is a lexer plus one small function per clause. The lexer yields
 * words (runs of bytes other than blanks, newlines and commas) and commas,
 * each tagged with its line; blank lines and lines whose first non-blank byte
 * is '#' are skipped. A clause runs from its keyword to the first of: the end
 * of its line, the next keyword, the end of the text. That is what lets the
 * whole description be given on one line.
 *
 * Clause keywords: space key attributes subspace create tolerate.
 *
 * Invariants:
 *   1. Keywords are reserved: a keyword always starts a new clause, so it can
 *      never be a name. space_decode refuses them as names too, so every
 *      schema this module hands out round-trips through space_describe and
 *      space_parse.
 *   2. Every schema returned by space_parse, space_decode and space_dup was
 *      allocated zeroed and only its fields were written, so unused bytes
 *      (name tails, unused array slots) are zero.
 *   3. Cross-clause rules (an attribute named like the key, subspace names)
 *      are checked only after the whole text is read, because clauses may
 *      come in any order after `space`.
 *   4. Error messages quote user words sanitised (non-printable bytes become
 *      '?', at most 64 bytes), so a message is always printable text.
 *
 * Binary layout, format version 1 (all integers big endian):
 *
 *     u8  version (= 1)
 *     u8  name length, name bytes
 *     u8  key name length, key name bytes
 *     u32 partitions
 *     u32 tolerate
 *     u16 nattrs
 *     nattrs times: u8 type (0 string, 1 int, 2 float), u8 name length, bytes
 *     u16 nsubspaces
 *     nsubspaces times: u16 count, count times u16 attribute index
 *
 * `indexed` is not stored: space_decode derives it from the subspaces. No
 * bytes may follow the last subspace.
 */
#include "space.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- constants ---------------------------------------------------------- */

#define SPACE_FORMAT_VERSION 1
#define QUOTE_MAX 64 /* bytes of a user word shown in an error */

enum clause { CL_SPACE, CL_KEY, CL_ATTRIBUTES, CL_SUBSPACE, CL_CREATE, CL_TOLERATE, CL_COUNT };

static const char *const clause_words[CL_COUNT] = {
    "space", "key", "attributes", "subspace", "create", "tolerate",
};

static const char *const type_names[] = {"string", "int", "float"};
#define NTYPES (sizeof type_names / sizeof type_names[0])

/* ---- lexer -------------------------------------------------------------- */

enum tok_kind { TOK_END, TOK_WORD, TOK_COMMA };

typedef struct tok {
    enum tok_kind kind;
    const char *p; /* word bytes (TOK_WORD), points into the text */
    size_t len;
    unsigned line; /* 1-based line the token is on */
} tok;

typedef struct lexer {
    const char *p;   /* next unread byte */
    const char *end; /* one past the last byte */
    unsigned line;   /* line of p */
    bool line_start; /* p is at the start of a line (only blanks before it) */
    bool peeked;     /* `next` holds the next token */
    tok next;
} lexer;

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static tok lex_scan(lexer *lx)
{
    for (;;) {
        while (lx->p < lx->end && is_blank(*lx->p))
            lx->p++;
        if (lx->p == lx->end) return (tok){TOK_END, NULL, 0, lx->line};
        if (*lx->p == '\n') {
            lx->p++;
            lx->line++;
            lx->line_start = true;
            continue;
        }
        if (lx->line_start && *lx->p == '#') {
            while (lx->p < lx->end && *lx->p != '\n')
                lx->p++;
            continue;
        }
        break;
    }
    lx->line_start = false;
    if (*lx->p == ',') {
        lx->p++;
        return (tok){TOK_COMMA, lx->p - 1, 1, lx->line};
    }
    const char *start = lx->p;
    while (lx->p < lx->end && !is_blank(*lx->p) && *lx->p != '\n' && *lx->p != ',')
        lx->p++;
    return (tok){TOK_WORD, start, (size_t)(lx->p - start), lx->line};
}

static const tok *lex_peek(lexer *lx)
{
    if (!lx->peeked) {
        lx->next = lex_scan(lx);
        lx->peeked = true;
    }
    return &lx->next;
}

static tok lex_next(lexer *lx)
{
    lex_peek(lx);
    lx->peeked = false;
    return lx->next;
}

static bool word_is(const tok *t, const char *w)
{
    size_t n = strlen(w);
    return t->kind == TOK_WORD && t->len == n && memcmp(t->p, w, n) == 0;
}

/* The clause a word starts, or CL_COUNT if it is not a keyword. */
static enum clause keyword_of(const char *p, size_t len)
{
    for (int i = 0; i < CL_COUNT; i++) {
        if (strlen(clause_words[i]) == len && memcmp(clause_words[i], p, len) == 0)
            return (enum clause)i;
    }
    return CL_COUNT;
}

/* ---- names -------------------------------------------------------------- */

static bool valid_name(const char *p, size_t len)
{
    if (len == 0 || len > SPACE_MAX_NAME) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        bool digit = c >= '0' && c <= '9';
        if (!alpha && !(digit && i > 0)) return false;
    }
    return keyword_of(p, len) == CL_COUNT;
}

static void set_name(char *dst, const char *p, size_t len)
{
    assert(len <= SPACE_MAX_NAME);
    memcpy(dst, p, len);
    dst[len] = '\0';
}

static bool name_eq(const char *name, const char *p, size_t len)
{
    return strlen(name) == len && memcmp(name, p, len) == 0;
}

/* ---- parser ------------------------------------------------------------- */

typedef struct span {
    const char *p;
    size_t len;
} span;

typedef struct pending_subspace {
    unsigned line;
    uint32_t n;
    span names[SPACE_MAX_ATTRS];
} pending_subspace;

typedef struct parser {
    lexer lx;
    space_schema *s;
    char *err;
    size_t errlen;
    bool seen[CL_COUNT];
    unsigned attr_line[SPACE_MAX_ATTRS];
    uint32_t nsubs;
    pending_subspace subs[SPACE_MAX_SUBSPACES]; /* resolved after the text is read */
} parser;

/* Writes a sanitised, quoted copy of a word into out (at least QUOTE_MAX+6). */
static void quote(const char *p, size_t len, char *out)
{
    size_t n = len > QUOTE_MAX ? QUOTE_MAX : len, o = 0;
    out[o++] = '\'';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (n < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '\'';
    out[o] = '\0';
}

typedef struct qword {
    char s[QUOTE_MAX + 8];
} qword;

static qword q(const char *p, size_t len)
{
    qword w;
    quote(p, len, w.s);
    return w;
}

static qword qtok(const tok *t)
{
    return q(t->p, t->len);
}

static int fail(parser *ps, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats "line N: <message>" (or only the message when line is 0) into the
 * caller's error buffer. Always returns -1. */
static int fail(parser *ps, unsigned line, const char *fmt, ...)
{
    if (!ps->err || ps->errlen == 0) return -1;
    int n = 0;
    if (line) n = snprintf(ps->err, ps->errlen, "line %u: ", line);
    if (n < 0 || (size_t)n >= ps->errlen) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* True if the clause that started on `line` has no more tokens. */
static bool clause_end(parser *ps, unsigned line)
{
    const tok *t = lex_peek(&ps->lx);
    if (t->kind == TOK_END || t->line != line) return true;
    return t->kind == TOK_WORD && keyword_of(t->p, t->len) != CL_COUNT;
}

/* What was found where something else was expected: the next token of the
 * clause, a keyword on the same line, or the end of the line. */
static qword got(parser *ps, unsigned line)
{
    const tok *t = lex_peek(&ps->lx);
    if (t->kind == TOK_END || t->line != line) {
        qword w;
        snprintf(w.s, sizeof w.s, "end of line");
        return w;
    }
    return qtok(t);
}

/* Fails unless the clause on `line` is over. */
static int expect_clause_end(parser *ps, unsigned line)
{
    if (clause_end(ps, line)) return 0;
    tok t = lex_next(&ps->lx);
    if (t.kind == TOK_COMMA) return fail(ps, line, "unexpected ','");
    return fail(ps, line, "unexpected word %s", qtok(&t).s);
}

/* space NAME / key NAME */
static int parse_name_clause(parser *ps, const tok *kw, char *dst, const char *what)
{
    unsigned line = kw->line;
    if (clause_end(ps, line) || lex_peek(&ps->lx)->kind != TOK_WORD)
        return fail(ps, line, "expected '%s NAME', got %s", what, got(ps, line).s);
    tok name = lex_next(&ps->lx);
    if (!valid_name(name.p, name.len))
        return fail(ps, line,
                    "invalid %s name %s (names are [A-Za-z_][A-Za-z0-9_]*, at most %d bytes)", what,
                    qtok(&name).s, SPACE_MAX_NAME);
    set_name(dst, name.p, name.len);
    return expect_clause_end(ps, line);
}

/* attributes [type] name, [type] name, ... */
static int parse_attributes(parser *ps, const tok *kw)
{
    unsigned line = kw->line;
    space_schema *s = ps->s;
    for (;;) {
        if (clause_end(ps, line) || lex_peek(&ps->lx)->kind != TOK_WORD)
            return fail(ps, line, "expected '[type] name' in attributes, got %s", got(ps, line).s);
        tok first = lex_next(&ps->lx);
        tok name = first;
        int type = SPACE_STRING;
        bool typed = false;
        if (!clause_end(ps, line) && lex_peek(&ps->lx)->kind == TOK_WORD) {
            name = lex_next(&ps->lx);
            typed = true;
        }
        if (!valid_name(name.p, name.len))
            return fail(ps, line,
                        "invalid attribute name %s (names are [A-Za-z_][A-Za-z0-9_]*, at most "
                        "%d bytes)",
                        qtok(&name).s, SPACE_MAX_NAME);
        if (typed) {
            type = -1;
            for (size_t i = 0; i < NTYPES; i++) {
                if (word_is(&first, type_names[i])) type = (int)i;
            }
            if (type < 0)
                return fail(ps, line, "unknown type %s for attribute %s", qtok(&first).s,
                            qtok(&name).s);
        }
        if (space_attr_find(s, name.p, name.len) >= 0)
            return fail(ps, line, "duplicate attribute %s", qtok(&name).s);
        if (s->nattrs == SPACE_MAX_ATTRS)
            return fail(ps, line, "more than %d attributes", SPACE_MAX_ATTRS);
        space_attr *a = &s->attrs[s->nattrs];
        set_name(a->name, name.p, name.len);
        a->type = (space_type)type;
        ps->attr_line[s->nattrs] = line;
        s->nattrs++;
        if (clause_end(ps, line)) return 0;
        tok sep = lex_next(&ps->lx);
        if (sep.kind != TOK_COMMA) return fail(ps, line, "unexpected word %s", qtok(&sep).s);
    }
}

/* subspace a, b, ... (names are resolved in resolve_subspaces) */
static int parse_subspace(parser *ps, const tok *kw)
{
    unsigned line = kw->line;
    if (ps->nsubs == SPACE_MAX_SUBSPACES)
        return fail(ps, line, "more than %d subspaces", SPACE_MAX_SUBSPACES);
    pending_subspace *sub = &ps->subs[ps->nsubs++];
    sub->line = line;
    for (;;) {
        if (clause_end(ps, line) || lex_peek(&ps->lx)->kind != TOK_WORD)
            return fail(ps, line, "expected attribute name in subspace, got %s", got(ps, line).s);
        tok name = lex_next(&ps->lx);
        if (sub->n == SPACE_MAX_ATTRS)
            return fail(ps, line, "subspace lists more than %d attributes", SPACE_MAX_ATTRS);
        sub->names[sub->n++] = (span){name.p, name.len};
        if (clause_end(ps, line)) return 0;
        tok sep = lex_next(&ps->lx);
        if (sep.kind != TOK_COMMA) return fail(ps, line, "unexpected word %s", qtok(&sep).s);
    }
}

/* Parses plain decimal digits; values above `max` saturate to max + 1. */
static bool parse_count_word(const tok *t, uint32_t max, uint32_t *out)
{
    if (t->len == 0) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < t->len; i++) {
        unsigned char c = (unsigned char)t->p[i];
        if (c < '0' || c > '9') return false;
        v = v * 10 + (c - '0');
        if (v > max) v = (uint64_t)max + 1;
    }
    *out = (uint32_t)v;
    return true;
}

/* create N partitions / tolerate F failures. `unit` is the plural the
 * canonical form uses; `what` is its singular, also accepted. */
static int parse_count_clause(parser *ps, const tok *kw, const char *unit, const char *what,
                              uint32_t min, uint32_t max, uint32_t *dst)
{
    unsigned line = kw->line;
    if (clause_end(ps, line) || lex_peek(&ps->lx)->kind != TOK_WORD)
        return fail(ps, line, "expected '%.*s N %s', got %s", (int)kw->len, kw->p, unit,
                    got(ps, line).s);
    tok num = lex_next(&ps->lx);
    uint32_t v;
    if (!parse_count_word(&num, max, &v))
        return fail(ps, line, "%s count %s is not a decimal number", what, qtok(&num).s);
    if (v < min || v > max)
        return fail(ps, line, "%s count %s out of range (%u..%u)", what, qtok(&num).s,
                    (unsigned)min, (unsigned)max);
    if (clause_end(ps, line) || lex_peek(&ps->lx)->kind != TOK_WORD)
        return fail(ps, line, "expected '%s' after %s, got %s", unit, qtok(&num).s,
                    got(ps, line).s);
    tok u = lex_next(&ps->lx);
    if (!word_is(&u, unit) && !word_is(&u, what))
        return fail(ps, line, "expected '%s' after %s, got %s", unit, qtok(&num).s, qtok(&u).s);
    *dst = v;
    return expect_clause_end(ps, line);
}

/* Checks the rules that span clauses, once the whole text is read. */
static int finish(parser *ps)
{
    space_schema *s = ps->s;
    if (!ps->seen[CL_KEY]) return fail(ps, 0, "missing 'key' clause");
    for (uint32_t i = 0; i < s->nattrs; i++) {
        if (strcmp(s->attrs[i].name, s->key_name) == 0)
            return fail(ps, ps->attr_line[i], "attribute %s has the same name as the key",
                        q(s->attrs[i].name, strlen(s->attrs[i].name)).s);
    }
    for (uint32_t k = 0; k < ps->nsubs; k++) {
        const pending_subspace *sub = &ps->subs[k];
        space_subspace *out = &s->subspaces[k];
        for (uint32_t j = 0; j < sub->n; j++) {
            span nm = sub->names[j];
            if (name_eq(s->key_name, nm.p, nm.len))
                return fail(ps, sub->line, "subspace names the key %s (the key is always indexed)",
                            q(nm.p, nm.len).s);
            int idx = space_attr_find(s, nm.p, nm.len);
            if (idx < 0)
                return fail(ps, sub->line, "subspace names unknown attribute %s",
                            q(nm.p, nm.len).s);
            for (uint32_t m = 0; m < j; m++) {
                if (out->attrs[m] == (uint32_t)idx)
                    return fail(ps, sub->line, "subspace lists attribute %s twice",
                                q(nm.p, nm.len).s);
            }
            out->attrs[j] = (uint32_t)idx;
            s->attrs[idx].indexed = true;
        }
        out->nattrs = sub->n;
    }
    s->nsubspaces = ps->nsubs;
    return 0;
}

static int parse_all(parser *ps)
{
    space_schema *s = ps->s;
    for (;;) {
        tok t = lex_next(&ps->lx);
        if (t.kind == TOK_END) break;
        if (!ps->seen[CL_SPACE] && !word_is(&t, "space"))
            return fail(ps, t.line, "expected 'space NAME', got %s", qtok(&t).s);
        if (t.kind == TOK_COMMA) return fail(ps, t.line, "unexpected ','");
        enum clause c = keyword_of(t.p, t.len);
        if (c == CL_COUNT) return fail(ps, t.line, "unexpected word %s", qtok(&t).s);
        if (ps->seen[c] && c != CL_SUBSPACE)
            return fail(ps, t.line, "duplicate '%s' clause", clause_words[c]);
        ps->seen[c] = true;
        int rc = 0;
        switch (c) {
        case CL_SPACE:
            rc = parse_name_clause(ps, &t, s->name, "space");
            break;
        case CL_KEY:
            rc = parse_name_clause(ps, &t, s->key_name, "key");
            break;
        case CL_ATTRIBUTES:
            rc = parse_attributes(ps, &t);
            break;
        case CL_SUBSPACE:
            rc = parse_subspace(ps, &t);
            break;
        case CL_CREATE:
            rc = parse_count_clause(ps, &t, "partitions", "partition", 1, SPACE_MAX_PARTITIONS,
                                    &s->partitions);
            break;
        case CL_TOLERATE:
            rc = parse_count_clause(ps, &t, "failures", "failure", 0, SPACE_MAX_TOLERATE,
                                    &s->tolerate);
            break;
        case CL_COUNT:
            assert(!"unreachable");
            break;
        }
        if (rc) return rc;
    }
    if (!ps->seen[CL_SPACE]) return fail(ps, 0, "description is empty");
    return finish(ps);
}

/* ---- public API --------------------------------------------------------- */

int space_parse(const char *text, size_t len, space_schema **out, char *err, size_t errlen)
{
    assert(out);
    assert(text || len == 0);
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    parser *ps = calloc(1, sizeof *ps);
    space_schema *s = calloc(1, sizeof *s);
    if (!ps || !s) {
        fprintf(stderr, "keel: out of memory\n");
        abort();
    }
    ps->err = err;
    ps->errlen = errlen;
    ps->s = s;
    s->partitions = SPACE_DEFAULT_PARTITIONS;
    s->tolerate = SPACE_DEFAULT_TOLERATE;

    int rc;
    if (len == 0) {
        rc = fail(ps, 0, "description is empty");
    } else if (len > SPACE_MAX_TEXT) {
        rc = fail(ps, 0, "description exceeds %d bytes", SPACE_MAX_TEXT);
    } else {
        ps->lx = (lexer){.p = text, .end = text + len, .line = 1, .line_start = true};
        rc = parse_all(ps);
    }
    free(ps);
    if (rc) {
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void space_free(space_schema *s)
{
    free(s);
}

space_schema *space_dup(const space_schema *s)
{
    space_schema *d = malloc(sizeof *d);
    if (!d) {
        fprintf(stderr, "keel: out of memory\n");
        abort();
    }
    memcpy(d, s, sizeof *d);
    return d;
}

const char *space_type_name(space_type t)
{
    assert((unsigned)t < NTYPES);
    return (unsigned)t < NTYPES ? type_names[t] : "unknown";
}

int space_attr_find(const space_schema *s, const char *name, size_t len)
{
    for (uint32_t i = 0; i < s->nattrs; i++) {
        if (name_eq(s->attrs[i].name, name, len)) return (int)i;
    }
    return -1;
}

void space_describe(const space_schema *s, buf *out)
{
    buf_printf(out, "space %s\nkey %s\n", s->name, s->key_name);
    if (s->nattrs) {
        buf_puts(out, "attributes ");
        for (uint32_t i = 0; i < s->nattrs; i++) {
            if (i) buf_puts(out, ", ");
            buf_printf(out, "%s %s", space_type_name(s->attrs[i].type), s->attrs[i].name);
        }
        buf_putc(out, '\n');
    }
    for (uint32_t k = 0; k < s->nsubspaces; k++) {
        const space_subspace *sub = &s->subspaces[k];
        buf_puts(out, "subspace ");
        for (uint32_t j = 0; j < sub->nattrs; j++) {
            if (j) buf_puts(out, ", ");
            buf_puts(out, s->attrs[sub->attrs[j]].name);
        }
        buf_putc(out, '\n');
    }
    buf_printf(out, "create %u partitions\ntolerate %u failures\n", (unsigned)s->partitions,
               (unsigned)s->tolerate);
}

/* ---- binary encoding ---------------------------------------------------- */

static void put_name(buf *out, const char *name)
{
    size_t n = strlen(name);
    assert(n <= SPACE_MAX_NAME);
    buf_putc(out, (char)n);
    buf_append(out, name, n);
}

void space_encode(const space_schema *s, buf *out)
{
    buf_putc(out, SPACE_FORMAT_VERSION);
    put_name(out, s->name);
    put_name(out, s->key_name);
    buf_put_u32be(out, s->partitions);
    buf_put_u32be(out, s->tolerate);
    buf_put_u16be(out, (uint16_t)s->nattrs);
    for (uint32_t i = 0; i < s->nattrs; i++) {
        buf_putc(out, (char)s->attrs[i].type);
        put_name(out, s->attrs[i].name);
    }
    buf_put_u16be(out, (uint16_t)s->nsubspaces);
    for (uint32_t k = 0; k < s->nsubspaces; k++) {
        buf_put_u16be(out, (uint16_t)s->subspaces[k].nattrs);
        for (uint32_t j = 0; j < s->subspaces[k].nattrs; j++)
            buf_put_u16be(out, (uint16_t)s->subspaces[k].attrs[j]);
    }
}

typedef struct reader {
    const unsigned char *p;
    size_t left;
} reader;

static bool rd_u8(reader *r, uint32_t *v)
{
    if (r->left < 1) return false;
    *v = r->p[0];
    r->p++;
    r->left--;
    return true;
}

static bool rd_u16(reader *r, uint32_t *v)
{
    if (r->left < 2) return false;
    *v = get_u16be(r->p);
    r->p += 2;
    r->left -= 2;
    return true;
}

static bool rd_u32(reader *r, uint32_t *v)
{
    if (r->left < 4) return false;
    *v = get_u32be(r->p);
    r->p += 4;
    r->left -= 4;
    return true;
}

static bool rd_name(reader *r, char *dst)
{
    uint32_t n;
    if (!rd_u8(r, &n) || n > r->left) return false;
    if (!valid_name((const char *)r->p, n)) return false;
    set_name(dst, (const char *)r->p, n);
    r->p += n;
    r->left -= n;
    return true;
}

static bool decode_into(reader *r, space_schema *s)
{
    uint32_t v;
    if (!rd_u8(r, &v) || v != SPACE_FORMAT_VERSION) return false;
    if (!rd_name(r, s->name) || !rd_name(r, s->key_name)) return false;
    if (!rd_u32(r, &s->partitions) || s->partitions < 1 || s->partitions > SPACE_MAX_PARTITIONS)
        return false;
    if (!rd_u32(r, &s->tolerate) || s->tolerate > SPACE_MAX_TOLERATE) return false;
    if (!rd_u16(r, &v) || v > SPACE_MAX_ATTRS) return false;
    uint32_t nattrs = v;
    for (uint32_t i = 0; i < nattrs; i++) {
        space_attr *a = &s->attrs[i];
        if (!rd_u8(r, &v) || v >= NTYPES) return false;
        a->type = (space_type)v;
        if (!rd_name(r, a->name)) return false;
        if (strcmp(a->name, s->key_name) == 0) return false;
        if (space_attr_find(s, a->name, strlen(a->name)) >= 0) return false;
        s->nattrs = i + 1; /* attrs[0..i] are now searchable */
    }
    if (!rd_u16(r, &v) || v > SPACE_MAX_SUBSPACES) return false;
    uint32_t nsubs = v;
    for (uint32_t k = 0; k < nsubs; k++) {
        space_subspace *sub = &s->subspaces[k];
        if (!rd_u16(r, &v) || v == 0 || v > nattrs) return false;
        sub->nattrs = v;
        for (uint32_t j = 0; j < sub->nattrs; j++) {
            if (!rd_u16(r, &v) || v >= nattrs) return false;
            for (uint32_t m = 0; m < j; m++) {
                if (sub->attrs[m] == v) return false;
            }
            sub->attrs[j] = v;
            s->attrs[v].indexed = true;
        }
    }
    s->nsubspaces = nsubs;
    return r->left == 0;
}

int space_decode(const void *data, size_t len, space_schema **out)
{
    assert(out);
    *out = NULL;
    space_schema *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "keel: out of memory\n");
        abort();
    }
    reader r = {data, len};
    if (!data || !decode_into(&r, s)) {
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}
